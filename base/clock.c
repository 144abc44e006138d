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
