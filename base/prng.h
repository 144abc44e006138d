/* A seeded PRNG (xoshiro256**, seeded through splitmix64). Deterministic for
 * a given seed on every platform: the simulator and the consensus core's
 * election timeouts draw from one, never from rand(). Not for secrets. */
#ifndef PAXFS_BASE_PRNG_H
#define PAXFS_BASE_PRNG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct prng {
    uint64_t s[4];
};

void prng_seed(struct prng *r, uint64_t seed);
uint64_t prng_next(struct prng *r);
/* Uniform in [0, bound); bound > 0. */
uint64_t prng_below(struct prng *r, uint64_t bound);
/* Uniform in [lo, hi]; lo <= hi. */
uint64_t prng_range(struct prng *r, uint64_t lo, uint64_t hi);
/* True with probability per_million / 1e6. */
bool prng_chance(struct prng *r, uint32_t per_million);
void prng_fill(struct prng *r, void *p, size_t n);

#endif
