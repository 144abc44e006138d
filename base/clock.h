/* The clock seam: the one place that reads time. Code above base/ asks
 * clock_now_ns(); tests may install a fake. The consensus core never reads
 * it: it is driven by tick() from the replica driver. */
#ifndef PAXFS_BASE_CLOCK_H
#define PAXFS_BASE_CLOCK_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

typedef uint64_t (*clock_fn)(void *ctx);

/* Monotonic nanoseconds (CLOCK_MONOTONIC unless a fake is installed). */
uint64_t clock_now_ns(void);
/* Wall-clock nanoseconds since the epoch, for timestamps that land in the
 * replicated state (read by the proposer, never during apply). */
uint64_t clock_wall_ns(void);
/* Installs a fake monotonic clock; NULL restores the real one. */
void clock_set_fake(clock_fn fn, void *ctx);

/* Timed waits. A condition variable waited on with a timeout is made by
 * cond_init_monotonic, so that a step of the wall clock neither cuts a wait
 * short nor stretches it; deadline_in_ms is the absolute time ms from now
 * on that clock, for pthread_cond_timedwait. Both use the real clock, never
 * the fake: the kernel does the waiting. */
int cond_init_monotonic(pthread_cond_t *c);
void deadline_in_ms(struct timespec *ts, uint64_t ms);

#endif
