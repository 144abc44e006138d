/* CRC32C; see crc32c.h. */
#include "base/crc32c.h"

#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#define POLY 0x82f63b78u /* reflected Castagnoli polynomial */

static uint32_t table[8][256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void table_init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ POLY : c >> 1;
        table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int k = 1; k < 8; k++)
            table[k][n] = (table[k - 1][n] >> 8) ^ table[0][table[k - 1][n] & 0xff];
}

uint32_t crc32c_sw(uint32_t crc, const void *data, size_t len)
{
    pthread_once(&table_once, table_init);
    const uint8_t *p = data;
    crc = ~crc;
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= crc; /* little-endian host assumed below (x86-64, aarch64) */
        crc = table[7][w & 0xff] ^ table[6][(w >> 8) & 0xff] ^
              table[5][(w >> 16) & 0xff] ^ table[4][(w >> 24) & 0xff] ^
              table[3][(w >> 32) & 0xff] ^ table[2][(w >> 40) & 0xff] ^
              table[1][(w >> 48) & 0xff] ^ table[0][w >> 56];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
    return ~crc;
}

#if defined(__x86_64__)
/* The crc32 instruction has a latency of 3 cycles and a throughput of 1
 * per cycle, so one dependent chain uses a third of it. Three chains run
 * over three adjacent lanes of a buffer and are then joined: the CRC of
 * A followed by B is the CRC of A moved past len(B) zero bytes, xor the
 * CRC of B started from 0. Moving a CRC past a fixed number of zeros is a
 * linear map, applied with four byte tables (the method of Mark Adler's
 * crc32c.c). Measured on this project's machine, 1 MiB buffers: 17-22 GB/s
 * against 8 GB/s for the single chain. */
#define LANE_LONG 8192
#define LANE_SHORT 256

static uint32_t zeros_long[4][256], zeros_short[4][256];
static pthread_once_t zeros_once = PTHREAD_ONCE_INIT;

/* The product of a 32x32 matrix over GF(2) and a vector. */
static uint32_t gf2_times(const uint32_t *mat, uint32_t vec)
{
    uint32_t sum = 0;
    for (; vec; vec >>= 1, mat++)
        if (vec & 1)
            sum ^= *mat;
    return sum;
}

static void gf2_square(uint32_t *square, const uint32_t *mat)
{
    for (int n = 0; n < 32; n++)
        square[n] = gf2_times(mat, mat[n]);
}

/* The operator that moves a CRC past len zero bytes (len a power of 2). */
static void zeros_op(uint32_t *even, size_t len)
{
    uint32_t odd[32]; /* one zero bit */
    odd[0] = POLY;
    for (int n = 1; n < 32; n++)
        odd[n] = 1u << (n - 1);
    gf2_square(even, odd); /* two zero bits */
    gf2_square(odd, even); /* four */
    /* Each square doubles: the first gives one byte, then 2, 4, ... */
    for (;;) {
        gf2_square(even, odd);
        len >>= 1;
        if (len == 0)
            return;
        gf2_square(odd, even);
        len >>= 1;
        if (len == 0) {
            memcpy(even, odd, sizeof odd);
            return;
        }
    }
}

static void zeros_table(uint32_t zeros[4][256], size_t len)
{
    uint32_t op[32];
    zeros_op(op, len);
    for (uint32_t n = 0; n < 256; n++)
        for (int k = 0; k < 4; k++)
            zeros[k][n] = gf2_times(op, n << (8 * k));
}

static void zeros_init(void)
{
    zeros_table(zeros_long, LANE_LONG);
    zeros_table(zeros_short, LANE_SHORT);
}

static uint32_t shift(uint32_t zeros[4][256], uint32_t crc)
{
    return zeros[0][crc & 0xff] ^ zeros[1][(crc >> 8) & 0xff] ^
           zeros[2][(crc >> 16) & 0xff] ^ zeros[3][crc >> 24];
}

static inline uint64_t load64(const uint8_t *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

/* Runs three chains over lanes of `lane` bytes while 3 lanes are left. */
__attribute__((target("sse4.2"))) static uint64_t crc32c_lanes(
    uint64_t c0, const uint8_t **pp, size_t *lenp, size_t lane, uint32_t zeros[4][256])
{
    const uint8_t *p = *pp;
    size_t len = *lenp;
    while (len >= 3 * lane) {
        uint64_t c1 = 0, c2 = 0;
        for (const uint8_t *end = p + lane; p < end; p += 8) {
            c0 = __builtin_ia32_crc32di(c0, load64(p));
            c1 = __builtin_ia32_crc32di(c1, load64(p + lane));
            c2 = __builtin_ia32_crc32di(c2, load64(p + 2 * lane));
        }
        c0 = shift(zeros, (uint32_t)c0) ^ c1;
        c0 = shift(zeros, (uint32_t)c0) ^ c2;
        p += 2 * lane;
        len -= 3 * lane;
    }
    *pp = p;
    *lenp = len;
    return c0;
}

__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc,
                                                            const void *data,
                                                            size_t len)
{
    const uint8_t *p = data;
    uint64_t c = ~crc;
    if (len >= 3 * LANE_SHORT) {
        pthread_once(&zeros_once, zeros_init);
        c = crc32c_lanes(c, &p, &len, LANE_LONG, zeros_long);
        c = crc32c_lanes(c, &p, &len, LANE_SHORT, zeros_short);
    }
    for (; len >= 8; p += 8, len -= 8)
        c = __builtin_ia32_crc32di(c, load64(p));
    uint32_t c32 = (uint32_t)c;
    while (len--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}

uint32_t crc32c(uint32_t crc, const void *data, size_t len)
{
    static int have_hw = -1;
    if (have_hw < 0)
        have_hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    return have_hw ? crc32c_hw(crc, data, len) : crc32c_sw(crc, data, len);
}
#else
uint32_t crc32c(uint32_t crc, const void *data, size_t len)
{
    return crc32c_sw(crc, data, len);
}
#endif
