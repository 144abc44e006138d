/* Tests of base/: buffers and bounded decoding, CRC32C, the PRNG, fault
 * points and the log sink. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/crc32c.h"
#include "base/fault.h"
#include "base/log.h"
#include "base/prng.h"

Test(buf, round_trips_integers_little_endian)
{
    struct buf b;
    buf_init(&b);
    buf_put_u8(&b, 0xab);
    buf_put_u16(&b, 0x1234);
    buf_put_u32(&b, 0xdeadbeef);
    buf_put_u64(&b, 0x0102030405060708ull);
    cr_assert_eq(b.len, 15);
    cr_assert_eq(b.data[1], 0x34); /* little-endian on the wire */
    struct reader r;
    reader_init(&r, b.data, b.len);
    cr_assert_eq(get_u8(&r), 0xab);
    cr_assert_eq(get_u16(&r), 0x1234);
    cr_assert_eq(get_u32(&r), 0xdeadbeef);
    cr_assert_eq(get_u64(&r), 0x0102030405060708ull);
    cr_assert(reader_ok(&r));
    cr_assert_eq(reader_left(&r), 0);
    buf_deinit(&b);
}

Test(buf, short_read_fails_and_stays_failed)
{
    uint8_t bytes[3] = {1, 2, 3};
    struct reader r;
    reader_init(&r, bytes, sizeof bytes);
    cr_assert_eq(get_u32(&r), 0);
    cr_assert_not(reader_ok(&r));
    cr_assert_eq(get_u8(&r), 0, "a failed reader returns nothing more");
    cr_assert_null(get_bytes(&r, 1));
}

Test(buf, get_bytes_never_overflows_on_huge_length)
{
    uint8_t bytes[8] = {0};
    struct reader r;
    reader_init(&r, bytes, sizeof bytes);
    get_u32(&r);
    cr_assert_null(get_bytes(&r, SIZE_MAX - 2));
    cr_assert_not(reader_ok(&r));
}

Test(buf, patch_overwrites_earlier_length)
{
    struct buf b;
    buf_init(&b);
    buf_put_u32(&b, 0);
    buf_put(&b, "abc", 3);
    buf_patch_u32(&b, 0, 3);
    cr_assert_eq(le_get_u32(b.data), 3);
    buf_deinit(&b);
}

Test(buf, mem_is_zero_finds_a_single_nonzero_byte_anywhere)
{
    uint8_t b[100] = {0};
    cr_assert(mem_is_zero(b, sizeof b));
    cr_assert(mem_is_zero(b, 0));
    for (size_t i = 0; i < sizeof b; i++) {
        b[i] = 1;
        cr_assert_not(mem_is_zero(b, sizeof b), "byte %zu", i);
        b[i] = 0;
    }
}

Test(crc32c, matches_the_standard_check_value)
{
    cr_assert_eq(crc32c(0, "123456789", 9), 0xe3069283u);
    cr_assert_eq(crc32c_sw(0, "123456789", 9), 0xe3069283u);
    cr_assert_eq(crc32c(0, "", 0), 0);
}

Test(crc32c, hardware_and_table_agree_on_every_length_and_alignment)
{
    uint8_t data[300];
    struct prng r;
    prng_seed(&r, 42);
    prng_fill(&r, data, sizeof data);
    for (size_t off = 0; off < 9; off++)
        for (size_t len = 0; len + off <= sizeof data; len += 7)
            cr_assert_eq(crc32c(0, data + off, len), crc32c_sw(0, data + off, len));
}

/* The hardware path joins three chains over lanes of 256 and 8192 bytes:
 * lengths around every lane boundary, at every alignment. */
Test(crc32c, hardware_and_table_agree_across_the_interleaved_lanes)
{
    const size_t lens[] = {767, 768, 769, 1000, 3 * 8192 - 1, 3 * 8192, 3 * 8192 + 1,
                           3 * 8192 + 3 * 256 + 7, 100003, 1 << 20};
    size_t cap = (1 << 20) + 16;
    uint8_t *data = malloc(cap);
    cr_assert_not_null(data);
    struct prng r;
    prng_seed(&r, 7);
    prng_fill(&r, data, cap);
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++)
        for (size_t off = 0; off < 9; off++) {
            cr_assert_eq(crc32c(0, data + off, lens[i]), crc32c_sw(0, data + off, lens[i]),
                         "len %zu off %zu", lens[i], off);
            cr_assert_eq(crc32c(0x12345678u, data + off, lens[i]),
                         crc32c_sw(0x12345678u, data + off, lens[i]));
        }
    free(data);
}

Test(crc32c, extends_incrementally)
{
    const char *s = "hello, replicated world";
    size_t n = strlen(s);
    uint32_t whole = crc32c(0, s, n);
    uint32_t part = crc32c(crc32c(0, s, 5), s + 5, n - 5);
    cr_assert_eq(whole, part);
}

Test(prng, is_deterministic_per_seed)
{
    struct prng a, b, c;
    prng_seed(&a, 7);
    prng_seed(&b, 7);
    prng_seed(&c, 8);
    bool differs = false;
    for (int i = 0; i < 100; i++) {
        uint64_t x = prng_next(&a);
        cr_assert_eq(x, prng_next(&b));
        differs |= x != prng_next(&c);
    }
    cr_assert(differs);
}

Test(prng, range_stays_in_bounds_and_hits_both_ends)
{
    struct prng r;
    prng_seed(&r, 1);
    bool lo = false, hi = false;
    for (int i = 0; i < 10000; i++) {
        uint64_t v = prng_range(&r, 3, 9);
        cr_assert(v >= 3 && v <= 9);
        lo |= v == 3;
        hi |= v == 9;
    }
    cr_assert(lo && hi);
}

Test(fault, armed_point_fails_after_countdown_then_recovers)
{
    fault_disarm_all();
    cr_assert_eq(FAULT("test.point"), 0);
    fault_arm("test.point", 2, 1, EIO);
    cr_assert_eq(FAULT("test.point"), 0);
    cr_assert_eq(FAULT("test.point"), 0);
    cr_assert_eq(FAULT("test.point"), -EIO);
    cr_assert_eq(FAULT("test.point"), 0);
    cr_assert_eq(FAULT("other.point"), 0);
    fault_disarm_all();
}

static char last_line[256];
static void capture(void *ctx, enum log_level level, const char *line)
{
    (void)ctx;
    (void)level;
    snprintf(last_line, sizeof last_line, "%s", line);
}

Test(log, sink_receives_formatted_lines_above_the_level)
{
    log_set_sink(capture, NULL);
    log_set_level(LOG_INFO);
    LOG_I("node=%d event=%s", 3, "start");
    cr_assert_str_eq(last_line, "node=3 event=start");
    LOG_D("node=%d event=hidden", 3);
    cr_assert_str_eq(last_line, "node=3 event=start");
    log_set_sink(NULL, NULL);
}
