/* See clock.h. */
#include "base/clock.h"

#include <time.h>

static clock_fn fake_fn;
static void *fake_ctx;

static uint64_t read_clock(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t clock_now_ns(void)
{
    return fake_fn ? fake_fn(fake_ctx) : read_clock(CLOCK_MONOTONIC);
}

uint64_t clock_wall_ns(void) { return read_clock(CLOCK_REALTIME); }

void clock_set_fake(clock_fn fn, void *ctx)
{
    fake_fn = fn;
    fake_ctx = ctx;
}

int cond_init_monotonic(pthread_cond_t *c)
{
    pthread_condattr_t ca;
    int rc = pthread_condattr_init(&ca);
    if (rc == 0)
        rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(c, &ca);
    pthread_condattr_destroy(&ca);
    return -rc;
}

void deadline_in_ms(struct timespec *ts, uint64_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += (time_t)(ms / 1000);
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}
