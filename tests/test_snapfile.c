/* Tests of the snapshot file (consensus/snapfile.c): the codec, which must
 * refuse every damaged or truncated file with -EBADMSG (a snapshot is read
 * back from disk and received from peers), and the directory operations
 * (durable write, list, load the newest good one, prune). Each test works
 * in its own temporary directory under /tmp. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/assert.h"
#include "base/buf.h"
#include "base/crc32c.h"
#include "base/fault.h"
#include "base/log.h"
#include "consensus/snapfile.h"

static char dir[] = "/tmp/paxfs-test-snapfile-XXXXXX";

static void quiet(void *ctx, enum log_level level, const char *line)
{
    (void)ctx;
    if (getenv("PAXFS_TEST_LOG"))
        fprintf(stderr, "%d %s\n", (int)level, line);
}

static void setup(void)
{
    log_set_sink(quiet, NULL);
    strcpy(dir, "/tmp/paxfs-test-snapfile-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void)
{
    fault_disarm_all();
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
    log_set_sink(NULL, NULL);
}

TestSuite(snapfile, .init = setup, .fini = teardown, .timeout = 60);

static const uint8_t dedup_bytes[] = "dedup-table-bytes";
static const uint8_t sm_bytes[] = "the state machine image, a little longer";

/* A small valid file at slot. */
static void make_file(uint64_t slot, struct buf *out)
{
    buf_init(out);
    snapfile_encode(slot, dedup_bytes, sizeof dedup_bytes, sm_bytes, sizeof sm_bytes, out);
}

static void write_raw(const char *name, const void *p, size_t len)
{
    char path[SNAPFILE_PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "fopen %s", path);
    if (len)
        cr_assert_eq(fwrite(p, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
}

static bool exists(const char *name)
{
    char path[SNAPFILE_PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

static size_t count_entries(void)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

/* ---- codec ---------------------------------------------------------------- */

Test(snapfile, encode_then_decode_gives_the_slot_and_both_parts_back)
{
    struct buf b;
    make_file(4242, &b);
    cr_assert_eq(b.len, SNAPFILE_HEADER_BYTES + sizeof dedup_bytes + sizeof sm_bytes +
                            SNAPFILE_TRAILER_BYTES);
    struct snapfile sf;
    cr_assert_eq(snapfile_decode(b.data, b.len, &sf), 0);
    cr_assert_eq(sf.slot, 4242);
    cr_assert_eq(sf.dedup_len, sizeof dedup_bytes);
    cr_assert_eq(sf.sm_len, sizeof sm_bytes);
    cr_assert_eq(memcmp(sf.dedup, dedup_bytes, sf.dedup_len), 0);
    cr_assert_eq(memcmp(sf.sm, sm_bytes, sf.sm_len), 0);
    /* The parts are borrowed from the bytes decoded. */
    cr_assert(sf.dedup >= b.data && sf.sm + sf.sm_len <= b.data + b.len);
    buf_deinit(&b);
}

Test(snapfile, empty_dedup_and_empty_image_round_trip)
{
    struct buf b;
    buf_init(&b);
    snapfile_encode(7, NULL, 0, NULL, 0, &b);
    cr_assert_eq(b.len, SNAPFILE_HEADER_BYTES + SNAPFILE_TRAILER_BYTES);
    struct snapfile sf;
    cr_assert_eq(snapfile_decode(b.data, b.len, &sf), 0);
    cr_assert_eq(sf.slot, 7);
    cr_assert_eq(sf.dedup_len, 0);
    cr_assert_eq(sf.sm_len, 0);
    buf_deinit(&b);

    buf_init(&b);
    snapfile_encode(8, dedup_bytes, sizeof dedup_bytes, NULL, 0, &b);
    cr_assert_eq(snapfile_decode(b.data, b.len, &sf), 0);
    cr_assert_eq(sf.dedup_len, sizeof dedup_bytes);
    cr_assert_eq(sf.sm_len, 0);
    buf_deinit(&b);

    buf_init(&b);
    snapfile_encode(9, NULL, 0, sm_bytes, sizeof sm_bytes, &b);
    cr_assert_eq(snapfile_decode(b.data, b.len, &sf), 0);
    cr_assert_eq(sf.dedup_len, 0);
    cr_assert_eq(sf.sm_len, sizeof sm_bytes);
    cr_assert_eq(memcmp(sf.sm, sm_bytes, sf.sm_len), 0);
    buf_deinit(&b);
}

Test(snapfile, encode_appends_after_what_the_buffer_holds)
{
    struct buf b;
    buf_init(&b);
    buf_put(&b, "prefix", 6);
    snapfile_encode(3, dedup_bytes, sizeof dedup_bytes, sm_bytes, sizeof sm_bytes, &b);
    struct snapfile sf;
    cr_assert_eq(snapfile_decode(b.data + 6, b.len - 6, &sf), 0);
    cr_assert_eq(sf.slot, 3);
    buf_deinit(&b);
}

Test(snapfile, every_single_byte_flip_is_rejected)
{
    struct buf b;
    make_file(99, &b);
    for (size_t i = 0; i < b.len; i++) {
        for (int bit = 0; bit < 8; bit++) {
            b.data[i] ^= (uint8_t)(1u << bit);
            struct snapfile sf = {.slot = 12345};
            cr_assert_eq(snapfile_decode(b.data, b.len, &sf), -EBADMSG,
                         "flip of bit %d of byte %zu accepted", bit, i);
            cr_assert_eq(sf.slot, 12345, "out-param written on failure");
            b.data[i] ^= (uint8_t)(1u << bit);
        }
        b.data[i] ^= 0xff;
        struct snapfile sf;
        cr_assert_eq(snapfile_decode(b.data, b.len, &sf), -EBADMSG, "byte %zu inverted", i);
        b.data[i] ^= 0xff;
    }
    struct snapfile sf;
    cr_assert_eq(snapfile_decode(b.data, b.len, &sf), 0);
    buf_deinit(&b);
}

Test(snapfile, every_truncation_and_an_extra_byte_are_rejected)
{
    struct buf b;
    make_file(5, &b);
    for (size_t n = 0; n < b.len; n++) {
        struct snapfile sf;
        cr_assert_eq(snapfile_decode(b.data, n, &sf), -EBADMSG, "truncated to %zu accepted", n);
    }
    buf_put_u8(&b, 0);
    struct snapfile sf;
    cr_assert_eq(snapfile_decode(b.data, b.len, &sf), -EBADMSG, "a trailing byte accepted");
    cr_assert_eq(snapfile_decode(NULL, 0, &sf), -EBADMSG);
    buf_deinit(&b);
}

/* A header with the given lengths and a correct CRC over what there is. */
static void make_lying_header(uint64_t dedup_len, uint64_t sm_len, struct buf *b)
{
    buf_init(b);
    buf_put_u64(b, SNAPFILE_MAGIC);
    buf_put_u64(b, 1);
    buf_put_u64(b, dedup_len);
    buf_put_u64(b, sm_len);
    buf_put(b, "some bytes", 10);
    buf_put_u32(b, crc32c(0, b->data, b->len));
}

Test(snapfile, a_huge_length_in_the_header_is_rejected)
{
    const uint64_t limit = SNAPFILE_BYTES_MAX - SNAPFILE_HEADER_BYTES - SNAPFILE_TRAILER_BYTES;
    const uint64_t lens[][2] = {
        {UINT64_MAX, 0},        {0, UINT64_MAX},          {UINT64_MAX, UINT64_MAX},
        {1ull << 63, 1ull << 63}, /* the sum wraps to 0 */
        {limit + 1, 0},         {0, limit + 1},           {limit, 1},
        {SNAPFILE_BYTES_MAX, 0}, {UINT64_MAX - 10, 20}, /* wraps to a small total */
    };
    for (size_t i = 0; i < ARRAY_LEN(lens); i++) {
        struct buf b;
        make_lying_header(lens[i][0], lens[i][1], &b);
        struct snapfile sf;
        cr_assert_eq(snapfile_decode(b.data, b.len, &sf), -EBADMSG, "lengths #%zu", i);
        uint64_t slot = 77, total = 77;
        cr_assert_eq(snapfile_header(b.data, b.len, &slot, &total), -EBADMSG, "lengths #%zu", i);
        cr_assert_eq(slot, 77);
        cr_assert_eq(total, 77);
        buf_deinit(&b);
    }
    /* At the limit the header is fine (a transfer may announce it); the
     * short file is not. */
    struct buf b;
    make_lying_header(limit, 0, &b);
    uint64_t slot, total;
    cr_assert_eq(snapfile_header(b.data, b.len, &slot, &total), 0);
    cr_assert_eq(total, SNAPFILE_BYTES_MAX);
    struct snapfile sf;
    cr_assert_eq(snapfile_decode(b.data, b.len, &sf), -EBADMSG);
    buf_deinit(&b);
}

Test(snapfile, a_file_with_a_huge_length_is_skipped_on_load_without_allocating_it)
{
    /* The read allocates what the file holds, not what its header says:
     * under ASan a 2^63 allocation would abort the test. */
    struct buf b;
    make_lying_header(1ull << 62, 1ull << 62, &b);
    cr_assert_eq(snapfile_write(dir, 3, b.data, b.len), 0);
    buf_deinit(&b);
    uint8_t *p = (uint8_t *)"untouched";
    size_t len = 1;
    uint64_t slot = 1;
    cr_assert_eq(snapfile_load_newest(dir, &p, &len, &slot), -ENOENT);
    cr_assert_str_eq((const char *)p, "untouched");
    cr_assert_eq(len, 1);
    cr_assert_eq(slot, 1);
}

Test(snapfile, header_reads_slot_and_total_from_the_first_bytes_only)
{
    struct buf b;
    make_file(31337, &b);
    uint64_t slot, total;
    cr_assert_eq(snapfile_header(b.data, SNAPFILE_HEADER_BYTES, &slot, &total), 0);
    cr_assert_eq(slot, 31337);
    cr_assert_eq(total, b.len);
    cr_assert_eq(snapfile_header(b.data, b.len, &slot, &total), 0);
    cr_assert_eq(total, b.len);
    cr_assert_eq(snapfile_header(b.data, SNAPFILE_HEADER_BYTES - 1, &slot, &total), -EBADMSG);
    b.data[0] ^= 1;
    cr_assert_eq(snapfile_header(b.data, b.len, &slot, &total), -EBADMSG);
    buf_deinit(&b);
}

/* ---- files ---------------------------------------------------------------- */

Test(snapfile, write_then_read_gives_the_bytes_back_and_leaves_no_temporary)
{
    struct buf b;
    make_file(12, &b);
    cr_assert_eq(snapfile_write(dir, 12, b.data, b.len), 0);
    char path[SNAPFILE_PATH_MAX];
    snapfile_path(dir, 12, path);
    char want[SNAPFILE_PATH_MAX];
    snprintf(want, sizeof want, "%s/snap-00000000000000000012", dir);
    cr_assert_str_eq(path, want);
    uint8_t *p;
    size_t len;
    cr_assert_eq(snapfile_read(path, &p, &len), 0);
    cr_assert_eq(len, b.len);
    cr_assert_eq(memcmp(p, b.data, len), 0);
    free(p);
    cr_assert_eq(count_entries(), 1, "only the snapshot itself is left");
    cr_assert(!exists("snap-00000000000000000012.tmp"));
    /* Writing the same slot again replaces it whole. */
    struct buf b2;
    buf_init(&b2);
    snapfile_encode(12, NULL, 0, sm_bytes, 5, &b2);
    cr_assert_eq(snapfile_write(dir, 12, b2.data, b2.len), 0);
    cr_assert_eq(snapfile_read(path, &p, &len), 0);
    cr_assert_eq(len, b2.len);
    cr_assert_eq(memcmp(p, b2.data, len), 0);
    free(p);
    cr_assert_eq(count_entries(), 1);
    buf_deinit(&b);
    buf_deinit(&b2);
}

Test(snapfile, read_of_an_empty_file_gives_zero_bytes_and_of_a_missing_one_enoent)
{
    write_raw("empty", NULL, 0);
    char path[SNAPFILE_PATH_MAX];
    snprintf(path, sizeof path, "%s/empty", dir);
    uint8_t *p;
    size_t len = 99;
    cr_assert_eq(snapfile_read(path, &p, &len), 0);
    cr_assert_eq(len, 0);
    free(p);
    snprintf(path, sizeof path, "%s/missing", dir);
    p = NULL;
    cr_assert_eq(snapfile_read(path, &p, &len), -ENOENT);
    cr_assert_null(p);
}

Test(snapfile, a_failed_fsync_leaves_neither_the_file_nor_a_temporary)
{
    struct buf b;
    make_file(40, &b);
    fault_arm("snapfile.fsync", 0, 1, EIO);
    cr_assert_eq(snapfile_write(dir, 40, b.data, b.len), -EIO);
    cr_assert_eq(count_entries(), 0);
    /* The next try works. */
    cr_assert_eq(snapfile_write(dir, 40, b.data, b.len), 0);
    cr_assert(exists("snap-00000000000000000040"));
    buf_deinit(&b);
}

Test(snapfile, write_into_a_missing_directory_fails_cleanly)
{
    char missing[SNAPFILE_PATH_MAX];
    snprintf(missing, sizeof missing, "%s/nope", dir);
    struct buf b;
    make_file(1, &b);
    cr_assert_eq(snapfile_write(missing, 1, b.data, b.len), -ENOENT);
    buf_deinit(&b);
}

Test(snapfile, list_is_newest_first_and_ignores_other_names)
{
    struct buf b;
    const uint64_t slots[] = {5, 100, 20, 18446744073709551615ull, 0};
    for (size_t i = 0; i < ARRAY_LEN(slots); i++) {
        make_file(slots[i], &b);
        cr_assert_eq(snapfile_write(dir, slots[i], b.data, b.len), 0);
        buf_deinit(&b);
    }
    /* Names that are not snapshots: short, long, non-digits, parts,
     * temporaries, and random files. */
    const char *others[] = {
        "snap-123",
        "snap-0000000000000000007x",
        "snap-000000000000000000077",
        "snap--0000000000000000007",
        "snap-+0000000000000000007",
        "snap- 0000000000000000007",
        "snap-00000000000000000009.tmp",
        "incoming-5.part",
        "incoming-500.part",
        "Snap-00000000000000000001",
        "random",
        "snap-",
    };
    for (size_t i = 0; i < ARRAY_LEN(others); i++)
        write_raw(others[i], "x", 1);
    uint64_t out[16];
    memset(out, 0xee, sizeof out);
    cr_assert_eq(snapfile_list(dir, out, 16), 5);
    const uint64_t want[] = {18446744073709551615ull, 100, 20, 5, 0};
    for (size_t i = 0; i < 5; i++)
        cr_assert_eq(out[i], want[i], "out[%zu] = %llu", i, (unsigned long long)out[i]);
    cr_assert_eq(out[5], 0xeeeeeeeeeeeeeeeeull, "nothing written past the count");
    /* cap bounds what is written, not the count. */
    uint64_t two[3] = {0, 0, 0xabc};
    cr_assert_eq(snapfile_list(dir, two, 2), 5);
    cr_assert_eq(two[0], want[0]);
    cr_assert_eq(two[1], want[1]);
    cr_assert_eq(two[2], 0xabc);
    cr_assert_eq(snapfile_list(dir, NULL, 0), 5);
}

Test(snapfile, list_of_an_empty_or_missing_directory_is_empty)
{
    uint64_t out[4];
    cr_assert_eq(snapfile_list(dir, out, 4), 0);
    char missing[SNAPFILE_PATH_MAX];
    snprintf(missing, sizeof missing, "%s/nope", dir);
    cr_assert_eq(snapfile_list(missing, out, 4), 0);
}

Test(snapfile, load_newest_returns_the_newest_valid_file)
{
    struct buf b;
    for (uint64_t s = 10; s <= 30; s += 10) {
        make_file(s, &b);
        cr_assert_eq(snapfile_write(dir, s, b.data, b.len), 0);
        buf_deinit(&b);
    }
    uint8_t *p;
    size_t len;
    uint64_t slot;
    cr_assert_eq(snapfile_load_newest(dir, &p, &len, &slot), 0);
    cr_assert_eq(slot, 30);
    struct snapfile sf;
    cr_assert_eq(snapfile_decode(p, len, &sf), 0);
    cr_assert_eq(sf.slot, 30);
    free(p);
}

Test(snapfile, load_newest_skips_a_corrupt_newest_file_for_the_older_valid_one)
{
    struct buf b;
    make_file(10, &b);
    cr_assert_eq(snapfile_write(dir, 10, b.data, b.len), 0);
    buf_deinit(&b);
    /* 30: one flipped byte. 20: cut short. */
    make_file(30, &b);
    b.data[b.len / 2] ^= 0x40;
    cr_assert_eq(snapfile_write(dir, 30, b.data, b.len), 0);
    buf_deinit(&b);
    make_file(20, &b);
    cr_assert_eq(snapfile_write(dir, 20, b.data, b.len - 3), 0);
    buf_deinit(&b);
    uint8_t *p;
    size_t len;
    uint64_t slot;
    cr_assert_eq(snapfile_load_newest(dir, &p, &len, &slot), 0);
    cr_assert_eq(slot, 10);
    struct snapfile sf;
    cr_assert_eq(snapfile_decode(p, len, &sf), 0);
    cr_assert_eq(sf.slot, 10);
    free(p);
    /* Nothing was deleted: the operator (or fsck) sees the bad files. */
    cr_assert_eq(count_entries(), 3);
}

Test(snapfile, load_newest_skips_a_file_whose_name_and_header_disagree)
{
    struct buf b;
    make_file(10, &b);
    cr_assert_eq(snapfile_write(dir, 10, b.data, b.len), 0);
    buf_deinit(&b);
    /* A valid file for slot 50 stored under the name of slot 60. */
    make_file(50, &b);
    cr_assert_eq(snapfile_write(dir, 60, b.data, b.len), 0);
    buf_deinit(&b);
    uint8_t *p;
    size_t len;
    uint64_t slot;
    cr_assert_eq(snapfile_load_newest(dir, &p, &len, &slot), 0);
    cr_assert_eq(slot, 10);
    free(p);
}

Test(snapfile, load_newest_is_enoent_when_no_file_is_valid_or_there_is_none)
{
    uint8_t *p = NULL;
    size_t len = 0;
    uint64_t slot = 0;
    cr_assert_eq(snapfile_load_newest(dir, &p, &len, &slot), -ENOENT);
    char missing[SNAPFILE_PATH_MAX];
    snprintf(missing, sizeof missing, "%s/nope", dir);
    cr_assert_eq(snapfile_load_newest(missing, &p, &len, &slot), -ENOENT);
    write_raw("snap-00000000000000000004", "garbage", 7);
    write_raw("snap-00000000000000000003", NULL, 0);
    write_raw("incoming-9.part", "x", 1);
    cr_assert_eq(snapfile_load_newest(dir, &p, &len, &slot), -ENOENT);
    cr_assert_null(p);
    cr_assert_eq(len, 0);
    cr_assert_eq(slot, 0);
}

/* A pruned file is kept as the spare, and the next write fills it in place:
 * freeing disk space makes the disk's other writes wait where the
 * filesystem discards. Whatever the spare held, longer or shorter, the new
 * file holds exactly its own bytes. */
Test(snapfile, a_pruned_snapshot_is_the_spare_that_the_next_write_overwrites)
{
    uint8_t big[100000];
    memset(big, 0xee, sizeof big);
    write_raw("snap-00000000000000000001", big, sizeof big);
    snapfile_prune(dir, 2, true);
    cr_assert(!exists("snap-00000000000000000001"));
    cr_assert(exists("spare"));
    for (uint64_t slot = 2; slot <= 3; slot++) {
        struct buf b;
        make_file(slot, &b);
        cr_assert_lt(b.len, sizeof big);
        cr_assert_eq(snapfile_write(dir, slot, b.data, b.len), 0);
        cr_assert(!exists("spare"), "the write took the spare");
        uint8_t *p;
        size_t len;
        cr_assert_eq(snapfile_load(dir, slot, &p, &len), 0);
        cr_assert_eq(len, b.len);
        cr_assert_arr_eq(p, b.data, b.len);
        free(p);
        buf_deinit(&b);
        /* Then a spare shorter than the next file. */
        write_raw("spare", "x", 1);
    }
    uint64_t out[4];
    cr_assert_eq(snapfile_list(dir, out, 4), 2);
}

Test(snapfile, prune_deletes_older_snapshots_parts_and_temporaries_and_keeps_the_rest)
{
    struct buf b;
    const uint64_t slots[] = {5, 10, 20, 30};
    for (size_t i = 0; i < ARRAY_LEN(slots); i++) {
        make_file(slots[i], &b);
        cr_assert_eq(snapfile_write(dir, slots[i], b.data, b.len), 0);
        buf_deinit(&b);
    }
    write_raw("incoming-7.part", "x", 1);
    write_raw("incoming-20.part", "x", 1);
    write_raw("incoming-25.part", "x", 1);
    write_raw("snap-123", "x", 1);
    write_raw("snap-00000000000000000001.tmp", "x", 1);
    write_raw("random", "x", 1);
    snapfile_prune(dir, 20, false);
    cr_assert(exists("snap-00000000000000000001.tmp"), "temporaries only when asked");
    /* The first pass kept one of 5 and 10 as the spare and deleted the
     * other; this one deletes the spare no more. */
    cr_assert(exists("spare"));
    snapfile_prune(dir, 20, true);
    cr_assert(exists("spare"));
    cr_assert(!exists("snap-00000000000000000005"));
    cr_assert(!exists("snap-00000000000000000010"));
    cr_assert(!exists("incoming-7.part"));
    cr_assert(exists("snap-00000000000000000020"), "keep_from itself stays");
    cr_assert(exists("snap-00000000000000000030"));
    cr_assert(exists("incoming-20.part"));
    cr_assert(exists("incoming-25.part"));
    cr_assert(exists("snap-123"), "not a snapshot name: left alone");
    cr_assert(!exists("snap-00000000000000000001.tmp"), "a crash's temporary goes");
    cr_assert(exists("random"));
    uint64_t out[8];
    cr_assert_eq(snapfile_list(dir, out, 8), 2);
    cr_assert_eq(out[0], 30);
    cr_assert_eq(out[1], 20);
    /* keep_from 0 deletes nothing; a missing directory is no error. */
    snapfile_prune(dir, 0, true);
    cr_assert_eq(snapfile_list(dir, out, 8), 2);
    char missing[SNAPFILE_PATH_MAX];
    snprintf(missing, sizeof missing, "%s/nope", dir);
    snapfile_prune(missing, 100, true);
}
