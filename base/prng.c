/* xoshiro256** by Blackman and Vigna (public domain reference); see prng.h. */
#include "base/prng.h"
#include "base/assert.h"

#include <string.h>

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void prng_seed(struct prng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t prng_next(struct prng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t prng_below(struct prng *r, uint64_t bound)
{
    ASSERT(bound > 0);
    /* Lemire's rejection keeps the draw unbiased. */
    uint64_t threshold = -bound % bound;
    for (;;) {
        uint64_t x = prng_next(r);
        if (x >= threshold)
            return x % bound;
    }
}

uint64_t prng_range(struct prng *r, uint64_t lo, uint64_t hi)
{
    ASSERT(lo <= hi);
    if (hi - lo == UINT64_MAX)
        return prng_next(r);
    return lo + prng_below(r, hi - lo + 1);
}

bool prng_chance(struct prng *r, uint32_t per_million)
{
    return prng_below(r, 1000000) < per_million;
}

void prng_fill(struct prng *r, void *p, size_t n)
{
    uint8_t *out = p;
    while (n >= 8) {
        uint64_t v = prng_next(r);
        memcpy(out, &v, 8);
        out += 8;
        n -= 8;
    }
    if (n) {
        uint64_t v = prng_next(r);
        memcpy(out, &v, n);
    }
}
