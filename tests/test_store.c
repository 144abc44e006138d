/* Tests of the block store (fs/store.h) on real files in mkdtemp dirs:
 * round trips and encodings, dedup, corruption detection at every header
 * byte and across the payload, crash leftovers, FORMAT checks, GC alone and
 * racing puts/refs/unrefs on threads, listing, and fault injection at each
 * step of a put. Each Criterion test runs in its own process, so armed
 * faults never leak from one test to the next. */
#include "fs/store.h"

#include "fsm_fixture.h"

#include "base/assert.h"
#include "base/buf.h"
#include "base/fault.h"
#include "base/prng.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BS (64u * 1024u) /* the block size of most tests: small, fast */

static struct fixture fx; /* the tests' stores live in fx.root, or beside it in fx.dir */

static void setup(void)
{
    fixture_quiet_log();
    cr_assert_eq(fixture_make_dir(&fx, "paxfs-test-store", /* prefer_shm */ false), 0);
}

static void teardown(void)
{
    fixture_remove_dir(&fx);
}

TestSuite(store, .init = setup, .fini = teardown, .timeout = 60);

static struct store *open_store(uint32_t block_size, size_t cache_bytes)
{
    struct store_config cfg;
    store_config_init(&cfg, fx.root);
    cfg.block_size = block_size;
    cfg.cache_bytes = cache_bytes;
    struct store *s = NULL;
    int rc = store_open(&cfg, &s);
    cr_assert_eq(rc, 0, "store_open: %d", rc);
    return s;
}

/* Text-like bytes: words from a small dictionary, as in a source file. */
static void fill_text(uint8_t *p, size_t n, uint64_t seed)
{
    static const char *words[] = {"replica ", "ballot ", "slot ", "quorum ", "block ",
                                  "inode ",   "paxos\n", "learn ", "accept ", "leader "};
    struct prng r;
    prng_seed(&r, seed);
    size_t off = 0;
    while (off < n) {
        const char *w = words[prng_below(&r, 10)];
        size_t k = strlen(w) < n - off ? strlen(w) : n - off;
        memcpy(p + off, w, k);
        off += k;
    }
}

static void fill_random(uint8_t *p, size_t n, uint64_t seed)
{
    struct prng r;
    prng_seed(&r, seed);
    prng_fill(&r, p, n);
}

static void block_file(const struct store_name *n, char *out, size_t cap)
{
    char hex[STORE_NAME_HEX_LEN + 1];
    store_name_hex(n, hex);
    snprintf(out, cap, "%s/blocks/%.2s/%s", fx.root, hex, hex);
}

static void flip_byte(const struct store_name *n, off_t off)
{
    char path[256];
    block_file(n, path, sizeof path);
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0);
    uint8_t b;
    cr_assert_eq(pread(fd, &b, 1, off), 1);
    b ^= 0xff;
    cr_assert_eq(pwrite(fd, &b, 1, off), 1);
    close(fd);
}

static off_t file_size(const struct store_name *n)
{
    char path[256];
    block_file(n, path, sizeof path);
    struct stat sb;
    cr_assert_eq(stat(path, &sb), 0);
    return sb.st_size;
}

static struct store_block_hdr read_hdr(const struct store_name *n)
{
    char path[256];
    block_file(n, path, sizeof path);
    size_t cap = store_file_max(STORE_BLOCK_SIZE_MAX);
    uint8_t *file = malloc(cap);
    int fd = open(path, O_RDONLY);
    cr_assert_geq(fd, 0);
    ssize_t len = read(fd, file, cap);
    close(fd);
    struct store_block_hdr h;
    cr_assert_eq(store_block_hdr_decode(file, (size_t)len, &h), 0);
    free(file);
    return h;
}

static size_t dir_entries(const char *sub)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", fx.root, sub);
    DIR *d = opendir(path);
    cr_assert_not_null(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static void assert_reads_back(struct store *s, const struct store_name *n, const uint8_t *want,
                              size_t want_len)
{
    uint8_t *got = malloc(store_block_size(s));
    size_t len = 0;
    int rc = store_get(s, n, got, store_block_size(s), &len);
    cr_assert_eq(rc, 0, "store_get: %d", rc);
    cr_assert_eq(len, want_len);
    cr_assert_eq(memcmp(got, want, len), 0);
    free(got);
}

/* ---- names and helpers ---- */

Test(store, name_is_the_sha512_256_of_the_plain_bytes)
{
    struct store_name n, parsed;
    cr_assert_eq(store_name_of("abc", 3, &n), 0);
    char hex[STORE_NAME_HEX_LEN + 1];
    store_name_hex(&n, hex);
    cr_assert_str_eq(hex, "53048e2681941ef99b2e29b76b4c7dabe4c2d0c634fc6d46e0e2f13107e7af23");
    cr_assert_eq(store_name_parse(hex, strlen(hex), &parsed), 0);
    cr_assert(store_name_eq(&n, &parsed));
    cr_assert_eq(store_name_parse(hex, 63, &parsed), -EINVAL);
    hex[5] = 'G';
    cr_assert_eq(store_name_parse(hex, 64, &parsed), -EINVAL);
    hex[5] = 'B'; /* uppercase is not the canonical file name */
    cr_assert_eq(store_name_parse(hex, 64, &parsed), -EINVAL);
    struct store_name none = STORE_NAME_NONE;
    cr_assert(store_name_is_none(&none));
    cr_assert_not(store_name_is_none(&n));
}

/* ---- round trips and encodings ---- */

Test(store, compressible_full_block_round_trips_as_zstd)
{
    struct store *s = open_store(BS, 0);
    uint8_t *data = malloc(BS);
    fill_text(data, BS, 1);
    struct store_name n;
    cr_assert_eq(store_put(s, data, BS, &n), 0);
    struct store_name want;
    store_name_of(data, BS, &want);
    cr_assert(store_name_eq(&n, &want));
    struct store_block_hdr h = read_hdr(&n);
    cr_assert_eq(h.encoding, STORE_ENC_ZSTD);
    cr_assert_eq(h.plain_len, BS);
    cr_assert_lt(h.stored_len, BS / 2);
    assert_reads_back(s, &n, data, BS);
    cr_assert_eq(store_refcount(s, &n), 1);
    free(data);
    store_close(s);
}

Test(store, random_full_block_is_stored_raw)
{
    struct store *s = open_store(BS, 0);
    uint8_t *data = malloc(BS);
    fill_random(data, BS, 2);
    struct store_name n;
    cr_assert_eq(store_put(s, data, BS, &n), 0);
    struct store_block_hdr h = read_hdr(&n);
    cr_assert_eq(h.encoding, STORE_ENC_RAW);
    cr_assert_eq(h.stored_len, BS);
    cr_assert_eq(file_size(&n), STORE_HDR_LEN + BS);
    assert_reads_back(s, &n, data, BS);
    free(data);
    store_close(s);
}

Test(store, short_last_blocks_round_trip)
{
    struct store *s = open_store(BS, 0);
    uint8_t data[5000];
    size_t lens[] = {1, 2, 63, 64, 65, 4095, 5000};
    for (size_t i = 0; i < ARRAY_LEN(lens); i++) {
        fill_text(data, lens[i], 3 + i);
        struct store_name n;
        cr_assert_eq(store_put(s, data, lens[i], &n), 0);
        assert_reads_back(s, &n, data, lens[i]);
        fill_random(data, lens[i], 30 + i);
        cr_assert_eq(store_put(s, data, lens[i], &n), 0);
        cr_assert_eq(read_hdr(&n).encoding, STORE_ENC_RAW);
        assert_reads_back(s, &n, data, lens[i]);
    }
    store_close(s);
}

Test(store, all_zero_block_is_flagged_and_still_round_trips)
{
    struct store *s = open_store(BS, 0);
    uint8_t *data = calloc(1, BS);
    cr_assert(mem_is_zero(data, BS));
    struct store_name n;
    cr_assert_eq(store_put(s, data, BS, &n), 0);
    struct store_block_hdr h = read_hdr(&n);
    cr_assert_eq(h.encoding, STORE_ENC_ZSTD);
    cr_assert_lt(h.stored_len, 100);
    assert_reads_back(s, &n, data, BS);
    free(data);
    store_close(s);
}

Test(store, largest_block_size_round_trips)
{
    struct store *s = open_store(STORE_BLOCK_SIZE_MAX, 0);
    uint8_t *data = malloc(STORE_BLOCK_SIZE_MAX);
    fill_text(data, STORE_BLOCK_SIZE_MAX, 4);
    struct store_name n;
    cr_assert_eq(store_put(s, data, STORE_BLOCK_SIZE_MAX, &n), 0);
    assert_reads_back(s, &n, data, STORE_BLOCK_SIZE_MAX);
    free(data);
    store_close(s);
}

Test(store, put_rejects_empty_and_oversized_blocks)
{
    struct store *s = open_store(BS, 0);
    uint8_t *data = calloc(1, BS + 1);
    struct store_name n;
    cr_assert_eq(store_put(s, data, 0, &n), -EINVAL);
    cr_assert_eq(store_put(s, data, BS + 1, &n), -EINVAL);
    free(data);
    store_close(s);
}

Test(store, get_into_a_short_buffer_is_enobufs)
{
    struct store *s = open_store(BS, 1 << 20);
    uint8_t data[1000], out[999];
    fill_text(data, sizeof data, 5);
    struct store_name n;
    size_t len = 7;
    cr_assert_eq(store_put(s, data, sizeof data, &n), 0);
    cr_assert_eq(store_get(s, &n, out, sizeof out, &len), -ENOBUFS);
    cr_assert_eq(len, 7, "out-param untouched on error");
    assert_reads_back(s, &n, data, sizeof data); /* now cached */
    cr_assert_eq(store_get(s, &n, out, sizeof out, &len), -ENOBUFS);
    store_close(s);
}

/* ---- dedup and references ---- */

Test(store, second_put_of_a_block_is_a_dedup_hit_not_a_write)
{
    struct store *s = open_store(BS, 0);
    uint8_t *data = malloc(BS);
    fill_text(data, BS, 6);
    struct store_name a, b;
    cr_assert_eq(store_put(s, data, BS, &a), 0);
    char path[256];
    block_file(&a, path, sizeof path);
    struct stat before, after;
    cr_assert_eq(stat(path, &before), 0);
    usleep(20000); /* a rewrite would move mtime */
    cr_assert_eq(store_put(s, data, BS, &b), 0);
    cr_assert_eq(stat(path, &after), 0);
    cr_assert(store_name_eq(&a, &b));
    cr_assert_eq(before.st_ino, after.st_ino);
    cr_assert_eq(before.st_mtim.tv_sec, after.st_mtim.tv_sec);
    cr_assert_eq(before.st_mtim.tv_nsec, after.st_mtim.tv_nsec);
    struct store_stats st;
    store_get_stats(s, &st);
    cr_assert_eq(st.puts, 2);
    cr_assert_eq(st.writes, 1);
    cr_assert_eq(st.dedup_hits, 1);
    cr_assert_eq(st.bytes_plain, BS);
    cr_assert_eq(st.bytes_stored, (uint64_t)file_size(&a));
    cr_assert_eq(store_refcount(s, &a), 2, "each put adds one reference");
    free(data);
    store_close(s);
}

Test(store, refs_and_unrefs_count_and_unref_below_zero_is_enoent)
{
    struct store *s = open_store(BS, 0);
    struct store_name n;
    store_name_of("x", 1, &n);
    cr_assert_eq(store_refcount(s, &n), 0);
    cr_assert_eq(store_unref(s, &n), -ENOENT);
    store_ref(s, &n);
    store_ref(s, &n);
    cr_assert_eq(store_refcount(s, &n), 2);
    cr_assert_eq(store_unref(s, &n), 0);
    cr_assert_eq(store_unref(s, &n), 0);
    cr_assert_eq(store_unref(s, &n), -ENOENT);
    cr_assert_eq(store_refcount(s, &n), 0);
    store_close(s);
}

Test(store, ref_table_survives_growth_and_removal_of_many_names)
{
    struct store *s = open_store(BS, 0);
    enum { N = 5000 };
    struct store_name *names = malloc(N * sizeof *names);
    for (uint32_t i = 0; i < N; i++) {
        store_name_of(&i, sizeof i, &names[i]);
        for (uint32_t k = 0; k <= i % 3; k++)
            store_ref(s, &names[i]);
    }
    for (uint32_t i = 0; i < N; i += 2)
        while (store_unref(s, &names[i]) == 0)
            ;
    for (uint32_t i = 0; i < N; i++)
        cr_assert_eq(store_refcount(s, &names[i]), i % 2 ? i % 3 + 1 : 0, "name %u", i);
    free(names);
    store_close(s);
}

/* ---- corruption ---- */

static void put_flip_get(struct store *s, const uint8_t *data, size_t len, off_t off,
                         enum store_encoding want_enc)
{
    struct store_name n;
    cr_assert_eq(store_put(s, data, len, &n), 0);
    cr_assert_eq(read_hdr(&n).encoding, want_enc);
    cr_assert_eq(store_verify(s, &n), 0);
    flip_byte(&n, off);
    uint8_t *out = malloc(BS);
    size_t got = 12345;
    cr_assert_eq(store_verify(s, &n), -EBADMSG, "offset %lld", (long long)off);
    cr_assert_eq(store_get(s, &n, out, BS, &got), -EBADMSG, "offset %lld", (long long)off);
    cr_assert_eq(got, 12345);
    /* Quarantined: the name is free for the repair to write afresh. */
    cr_assert_eq(store_has(s, &n), 0);
    cr_assert_eq(store_get(s, &n, out, BS, &got), -ENOENT);
    cr_assert_eq(store_unref(s, &n), 0);
    free(out);
}

Test(store, flipped_byte_at_every_header_offset_is_detected)
{
    struct store *s = open_store(BS, 1 << 20);
    uint8_t *text = malloc(BS), *rnd = malloc(BS);
    fill_text(text, BS, 7);
    fill_random(rnd, BS, 8);
    for (off_t off = 0; off < STORE_HDR_LEN; off++) {
        put_flip_get(s, text, BS, off, STORE_ENC_ZSTD);
        put_flip_get(s, rnd, BS, off, STORE_ENC_RAW);
    }
    struct store_stats st;
    store_get_stats(s, &st);
    cr_assert_eq(st.corrupt_detected, 4 * STORE_HDR_LEN, "one per verify, one per get");
    cr_assert_eq(dir_entries("corrupt"), 2 * STORE_HDR_LEN);
    free(text);
    free(rnd);
    store_close(s);
}

Test(store, flipped_byte_across_the_payload_is_detected)
{
    struct store *s = open_store(BS, 1 << 20);
    uint8_t *text = malloc(BS), *rnd = malloc(BS);
    fill_text(text, BS, 9);
    fill_random(rnd, BS, 10);
    struct store_name zn;
    cr_assert_eq(store_put(s, text, BS, &zn), 0);
    off_t zlen = file_size(&zn);
    cr_assert_eq(store_unref(s, &zn), 0);
    off_t zoffs[] = {STORE_HDR_LEN, STORE_HDR_LEN + 1, STORE_HDR_LEN + 4, STORE_HDR_LEN + 7,
                     zlen / 2, zlen - 5, zlen - 1};
    for (size_t i = 0; i < ARRAY_LEN(zoffs); i++)
        put_flip_get(s, text, BS, zoffs[i], STORE_ENC_ZSTD);
    off_t roffs[] = {STORE_HDR_LEN, STORE_HDR_LEN + 1000, STORE_HDR_LEN + BS / 2,
                     STORE_HDR_LEN + BS - 1};
    for (size_t i = 0; i < ARRAY_LEN(roffs); i++)
        put_flip_get(s, rnd, BS, roffs[i], STORE_ENC_RAW);
    free(text);
    free(rnd);
    store_close(s);
}

Test(store, truncated_or_extended_block_file_is_detected)
{
    struct store *s = open_store(BS, 0);
    uint8_t data[3000], out[3000];
    fill_text(data, sizeof data, 11);
    struct store_name n;
    char path[256];
    size_t len;
    off_t sizes_delta[] = {-1, +1};
    for (size_t i = 0; i < ARRAY_LEN(sizes_delta); i++) {
        cr_assert_eq(store_put(s, data, sizeof data, &n), 0);
        block_file(&n, path, sizeof path);
        cr_assert_eq(truncate(path, file_size(&n) + sizes_delta[i]), 0);
        cr_assert_eq(store_get(s, &n, out, sizeof out, &len), -EBADMSG);
    }
    /* An empty file under the name: put sees the impossible size for the
     * price of its stat and writes the block afresh. */
    cr_assert_eq(store_put(s, data, sizeof data, &n), 0);
    cr_assert_eq(truncate(path, 0), 0);
    cr_assert_eq(store_put(s, data, sizeof data, &n), 0);
    assert_reads_back(s, &n, data, sizeof data);
    store_close(s);
}

Test(store, missing_block_is_enoent)
{
    struct store *s = open_store(BS, 1 << 20);
    struct store_name n;
    store_name_of("never stored", 12, &n);
    uint8_t out[16];
    size_t len;
    cr_assert_eq(store_get(s, &n, out, sizeof out, &len), -ENOENT);
    cr_assert_eq(store_get_encoded(s, &n, out, sizeof out, &len), -ENOENT);
    cr_assert_eq(store_verify(s, &n), -ENOENT);
    cr_assert_eq(store_has(s, &n), 0);
    store_close(s);
}

/* Fills p[0..n) with text-like bytes from seed and puts it as a block. */
static void put_text(struct store *s, uint8_t *p, size_t n, uint64_t seed,
                     struct store_name *name)
{
    fill_text(p, n, seed);
    cr_assert_eq(store_put(s, p, n, name), 0);
}

Test(store, cache_does_not_mask_corruption_of_a_block_never_read)
{
    struct store *s = open_store(BS, 8 << 20);
    uint8_t a[4000], b[4000], out[4000];
    struct store_name na, nb;
    put_text(s, a, sizeof a, 12, &na);
    put_text(s, b, sizeof b, 13, &nb);
    assert_reads_back(s, &na, a, sizeof a);
    assert_reads_back(s, &na, a, sizeof a);
    flip_byte(&nb, STORE_HDR_LEN + 3);
    size_t len;
    cr_assert_eq(store_get(s, &nb, out, sizeof out, &len), -EBADMSG);
    struct store_stats st;
    store_get_stats(s, &st);
    cr_assert_eq(st.cache_hits, 1);
    cr_assert_eq(st.cache_misses, 2);
    /* A block cached before its file rotted still serves its (verified,
     * content-addressed) bytes; store_verify reads the disk and sees it. */
    flip_byte(&na, STORE_HDR_LEN + 3);
    assert_reads_back(s, &na, a, sizeof a);
    cr_assert_eq(store_verify(s, &na), -EBADMSG);
    store_cache_drop(s);
    cr_assert_eq(store_get(s, &na, out, sizeof out, &len), -EBADMSG);
    store_close(s);
}

Test(store, a_put_block_serves_rewrites_from_the_cache_but_reads_verify_its_file)
{
    struct store *s = open_store(BS, 8 << 20);
    uint8_t a[4000], b[4000], out[4000];
    struct store_name na, nb;
    put_text(s, a, sizeof a, 14, &na);
    put_text(s, b, sizeof b, 15, &nb);
    /* The file of a rots: a rewrite still gets a's bytes, from the cache. */
    flip_byte(&na, STORE_HDR_LEN + 3);
    size_t len = 0;
    cr_assert_eq(store_get_to_rewrite(s, &na, out, sizeof out, &len), 0);
    cr_assert_eq(len, sizeof a);
    cr_assert_eq(memcmp(out, a, sizeof a), 0);
    struct store_stats st;
    store_get_stats(s, &st);
    cr_assert_eq(st.cache_hits, 1);
    cr_assert_eq(st.cache_misses, 0);
    /* A read reads the file the first time, and finds the rot. */
    cr_assert_eq(store_get(s, &na, out, sizeof out, &len), -EBADMSG);
    /* b's file is sound: its first read verifies it, the next is a hit. */
    assert_reads_back(s, &nb, b, sizeof b);
    assert_reads_back(s, &nb, b, sizeof b);
    store_get_stats(s, &st);
    cr_assert_eq(st.cache_misses, 2);
    cr_assert_eq(st.cache_hits, 2);
    store_close(s);
}

Test(store, cache_evicts_least_recently_used_within_its_byte_budget)
{
    /* Room for two 30000-byte blocks, not three. */
    struct store *s = open_store(BS, 2 * 30000 + 2 * 200);
    uint8_t d[3][30000];
    struct store_name n[3];
    for (int i = 0; i < 3; i++) {
        fill_text(d[i], sizeof d[i], 20 + (uint64_t)i);
        cr_assert_eq(store_put(s, d[i], sizeof d[i], &n[i]), 0);
    }
    assert_reads_back(s, &n[0], d[0], sizeof d[0]); /* miss */
    assert_reads_back(s, &n[1], d[1], sizeof d[1]); /* miss */
    assert_reads_back(s, &n[0], d[0], sizeof d[0]); /* hit: 0 is now newest */
    assert_reads_back(s, &n[2], d[2], sizeof d[2]); /* miss, evicts 1 */
    assert_reads_back(s, &n[0], d[0], sizeof d[0]); /* hit */
    assert_reads_back(s, &n[1], d[1], sizeof d[1]); /* miss */
    struct store_stats st;
    store_get_stats(s, &st);
    cr_assert_eq(st.cache_hits, 2);
    cr_assert_eq(st.cache_misses, 4);
    cr_assert_eq(st.gets, 6);
    store_close(s);
}

Test(store, repair_after_corruption_writes_the_block_afresh)
{
    struct store *s = open_store(BS, 0);
    uint8_t data[5000], out[5000];
    fill_text(data, sizeof data, 14);
    struct store_name n;
    cr_assert_eq(store_put(s, data, sizeof data, &n), 0);
    flip_byte(&n, 30);
    size_t len;
    cr_assert_eq(store_get(s, &n, out, sizeof out, &len), -EBADMSG);
    /* The caller fetches the block from a peer and stores it again. */
    cr_assert_eq(store_put(s, data, sizeof data, &n), 0);
    struct store_stats st;
    store_get_stats(s, &st);
    cr_assert_eq(st.writes, 2);
    cr_assert_eq(st.dedup_hits, 0);
    assert_reads_back(s, &n, data, sizeof data);
    cr_assert_eq(store_refcount(s, &n), 2);
    store_close(s);
}

/* ---- shipping blocks between replicas ---- */

Test(store, encoded_block_ships_to_another_store_and_reads_back)
{
    struct store *a = open_store(BS, 0);
    char root_b[160];
    snprintf(root_b, sizeof root_b, "%s/other", fx.dir);
    struct store_config cfg;
    store_config_init(&cfg, root_b);
    cfg.block_size = BS;
    struct store *b = NULL;
    cr_assert_eq(store_open(&cfg, &b), 0);
    uint8_t *data = malloc(BS), *file = malloc(store_file_max(BS));
    for (int kind = 0; kind < 2; kind++) {
        if (kind == 0)
            fill_text(data, BS, 15);
        else
            fill_random(data, BS, 16);
        struct store_name n;
        cr_assert_eq(store_put(a, data, BS, &n), 0);
        size_t len;
        cr_assert_eq(store_get_encoded(a, &n, file, store_file_max(BS), &len), 0);
        cr_assert_eq((off_t)len, file_size(&n));
        size_t plain_len;
        uint8_t *plain = malloc(BS);
        cr_assert_eq(store_block_decode(file, len, &n, plain, BS, &plain_len), 0);
        cr_assert_eq(plain_len, BS);
        cr_assert_eq(memcmp(plain, data, BS), 0);
        free(plain);
        cr_assert_eq(store_put_encoded(b, &n, file, len), 0);
        cr_assert_eq(store_refcount(b, &n), 1);
        assert_reads_back(b, &n, data, BS);
        cr_assert_eq(store_put_encoded(b, &n, file, len), 0); /* dedup */
        cr_assert_eq(store_refcount(b, &n), 2);
    }
    struct store_stats st;
    store_get_stats(b, &st);
    cr_assert_eq(st.writes, 2);
    cr_assert_eq(st.dedup_hits, 2);
    free(data);
    free(file);
    store_close(a);
    store_close(b);
}

Test(store, put_encoded_refuses_bytes_that_do_not_match_the_name)
{
    struct store *s = open_store(BS, 0);
    uint8_t data[4000], file[4000 + STORE_HDR_LEN];
    fill_text(data, sizeof data, 17);
    struct store_name n, other;
    cr_assert_eq(store_put(s, data, sizeof data, &n), 0);
    size_t len;
    cr_assert_eq(store_get_encoded(s, &n, file, sizeof file, &len), 0);
    store_name_of("other", 5, &other);
    cr_assert_eq(store_put_encoded(s, &other, file, len), -EBADMSG);
    cr_assert_eq(store_has(s, &other), 0);
    cr_assert_eq(store_refcount(s, &other), 0);
    file[len - 1] ^= 0x40; /* a payload byte bitten in transit */
    cr_assert_eq(store_unref(s, &n), 0);
    uint64_t freed = 0;
    cr_assert_eq(store_gc(s, &freed), 0);
    cr_assert_eq(freed, 1);
    cr_assert_eq(store_put_encoded(s, &n, file, len), -EBADMSG);
    cr_assert_eq(store_has(s, &n), 0);
    cr_assert_eq(dir_entries("tmp"), 0);
    cr_assert_eq(store_put_encoded(s, &n, file, 3), -EBADMSG);
    store_close(s);
}

Test(store, block_longer_than_this_store_allows_is_refused)
{
    char root_big[160];
    snprintf(root_big, sizeof root_big, "%s/big", fx.dir);
    struct store_config cfg;
    store_config_init(&cfg, root_big);
    cfg.block_size = 2 * BS;
    struct store *big = NULL;
    cr_assert_eq(store_open(&cfg, &big), 0);
    struct store *s = open_store(BS, 0);
    size_t n_plain = BS + 1, len, plain_len;
    uint8_t *data = malloc(n_plain), *file = malloc(store_file_max(2 * BS));
    fill_random(data, n_plain, 18);
    struct store_name n;
    cr_assert_eq(store_put(big, data, n_plain, &n), 0);
    cr_assert_eq(store_get_encoded(big, &n, file, store_file_max(2 * BS), &len), 0);
    cr_assert_eq(store_put_encoded(s, &n, file, len), -EBADMSG);
    cr_assert_eq(store_block_decode(file, len, &n, data, BS, &plain_len), -ENOBUFS);
    cr_assert_eq(store_block_decode(file, len, &n, data, n_plain, &plain_len), 0);
    cr_assert_eq(plain_len, n_plain);
    free(data);
    free(file);
    store_close(s);
    store_close(big);
}

/* ---- open: crash leftovers, FORMAT, exclusivity ---- */

Test(store, dangling_temp_file_from_a_crash_is_removed_at_open)
{
    struct store *s = open_store(BS, 0);
    store_close(s);
    char path[256];
    snprintf(path, sizeof path, "%s/tmp/abcdef.17", fx.root);
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, "half a block", 12), 12);
    close(fd);
    cr_assert_eq(dir_entries("tmp"), 1);
    s = open_store(0, 0);
    cr_assert_eq(dir_entries("tmp"), 0);
    store_close(s);
}

Test(store, second_open_of_one_root_is_busy)
{
    struct store *s = open_store(BS, 0);
    struct store_config cfg;
    store_config_init(&cfg, fx.root);
    struct store *t = NULL;
    cr_assert_eq(store_open(&cfg, &t), -EBUSY);
    cr_assert_null(t);
    store_close(s);
    cr_assert_eq(store_open(&cfg, &t), 0);
    store_close(t);
}

static void write_format(const char *text)
{
    char path[256];
    snprintf(path, sizeof path, "%s/FORMAT", fx.root);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

Test(store, format_records_block_size_and_refuses_mismatches)
{
    struct store *s = open_store(128 * 1024, 0);
    store_close(s);
    s = open_store(0, 0); /* 0: adopt the recorded size */
    cr_assert_eq(store_block_size(s), 128 * 1024);
    store_close(s);
    struct store_config cfg;
    store_config_init(&cfg, fx.root);
    cfg.block_size = 64 * 1024;
    struct store *t = NULL;
    cr_assert_eq(store_open(&cfg, &t), -EINVAL);
    cfg.block_size = 0;
    /* format 1 named blocks by SHA-256 */
    write_format("paxfs-store\nformat=1\nblock_size=131072\n");
    cr_assert_eq(store_open(&cfg, &t), -EPROTO);
    write_format("paxfs-store\nformat=3\nblock_size=131072\n");
    cr_assert_eq(store_open(&cfg, &t), -EPROTO);
    const char *bad[] = {"", "paxfs-store\n", "paxfs-store\nformat=2\nblock_size=1000\n",
                         "paxfs-store\nformat=2\nblock_size=131072\nmore\n",
                         "paxfs-store\nformat=x\nblock_size=131072\n"};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        write_format(bad[i]);
        cr_assert_eq(store_open(&cfg, &t), -EBADMSG, "FORMAT %zu", i);
    }
    cr_assert_null(t);
}

Test(store, new_store_gets_the_default_block_size_and_bad_settings_are_einval)
{
    struct store *s = open_store(0, 0);
    cr_assert_eq(store_block_size(s), STORE_BLOCK_SIZE_DEFAULT);
    store_close(s);
    struct store_config cfg;
    store_config_init(&cfg, fx.root);
    struct store *t = NULL;
    uint32_t bad_sizes[] = {1000, 3 * 65536, STORE_BLOCK_SIZE_MAX * 2, 2048};
    for (size_t i = 0; i < ARRAY_LEN(bad_sizes); i++) {
        cfg.block_size = bad_sizes[i];
        cr_assert_eq(store_open(&cfg, &t), -EINVAL);
    }
    cfg.block_size = 0;
    cfg.zstd_level = 1000;
    cr_assert_eq(store_open(&cfg, &t), -EINVAL);
    cr_assert_null(t);
}

/* ---- has, list ---- */

struct listed {
    struct store_name names[64];
    int n;
};

static int collect(void *ctx, const struct store_name *name)
{
    struct listed *l = ctx;
    cr_assert_lt(l->n, 64);
    l->names[l->n++] = *name;
    return 0;
}

static int stop_at_two(void *ctx, const struct store_name *name)
{
    (void)name;
    return ++*(int *)ctx == 2 ? 42 : 0;
}

static bool listed_has(const struct listed *l, const struct store_name *n)
{
    for (int i = 0; i < l->n; i++)
        if (store_name_eq(&l->names[i], n))
            return true;
    return false;
}

Test(store, has_and_list_report_the_blocks_on_disk)
{
    struct store *s = open_store(BS, 0);
    struct store_name n[10];
    for (uint32_t i = 0; i < 10; i++) {
        uint8_t data[100];
        fill_text(data, sizeof data, 100 + i);
        cr_assert_eq(store_put(s, data, sizeof data, &n[i]), 0);
        cr_assert_eq(store_has(s, &n[i]), 1);
    }
    /* Junk in a shard is not a block. */
    char path[256];
    snprintf(path, sizeof path, "%s/blocks/00/not-a-block", fx.root);
    close(open(path, O_WRONLY | O_CREAT, 0644));
    struct listed l = {.n = 0};
    cr_assert_eq(store_list(s, collect, &l), 0);
    cr_assert_eq(l.n, 10);
    for (int i = 0; i < 10; i++)
        cr_assert(listed_has(&l, &n[i]));
    int calls = 0;
    cr_assert_eq(store_list(s, stop_at_two, &calls), 42);
    cr_assert_eq(calls, 2);
    store_close(s);
}

/* ---- GC ---- */

Test(store, gc_deletes_unreferenced_blocks_and_keeps_referenced_ones)
{
    struct store *s = open_store(BS, 1 << 20);
    struct store_name n[6];
    uint8_t data[6][2000];
    for (int i = 0; i < 6; i++) {
        fill_text(data[i], sizeof data[i], 200 + (uint64_t)i);
        cr_assert_eq(store_put(s, data[i], sizeof data[i], &n[i]), 0);
        assert_reads_back(s, &n[i], data[i], sizeof data[i]); /* cached */
    }
    for (int i = 0; i < 6; i += 2)
        cr_assert_eq(store_unref(s, &n[i]), 0);
    store_ref(s, &n[1]);
    uint64_t freed = 0;
    cr_assert_eq(store_gc(s, &freed), 0);
    cr_assert_eq(freed, 3);
    uint8_t out[2000];
    size_t len;
    for (int i = 0; i < 6; i++) {
        cr_assert_eq(store_has(s, &n[i]), i % 2);
        if (i % 2)
            assert_reads_back(s, &n[i], data[i], sizeof data[i]);
        else /* and not served from the cache either */
            cr_assert_eq(store_get(s, &n[i], out, sizeof out, &len), -ENOENT);
    }
    cr_assert_eq(store_gc(s, &freed), 0);
    cr_assert_eq(freed, 0);
    struct store_stats st;
    store_get_stats(s, &st);
    cr_assert_eq(st.gc_freed, 3);
    store_close(s);
}

/* Puts count blocks of len random bytes (seeds seed, seed + 1, ...). */
static void put_random_blocks(struct store *s, struct store_name *n, uint32_t count, size_t len,
                              uint64_t seed)
{
    uint8_t *data = malloc(len);
    cr_assert_not_null(data);
    for (uint32_t i = 0; i < count; i++) {
        fill_random(data, len, seed + i);
        cr_assert_eq(store_put(s, data, len, &n[i]), 0);
    }
    free(data);
}

/* A copy of block n's file under another well-formed name in the same
 * shard, which nothing references and no put made: what a crash can leave
 * behind. Returns that name. */
static struct store_name plant_stray(const struct store_name *n)
{
    struct store_name stray = *n;
    stray.b[STORE_NAME_LEN - 1] ^= 0xff;
    char from[256], to[256];
    block_file(n, from, sizeof from);
    block_file(&stray, to, sizeof to);
    cr_assert_eq(link(from, to), 0);
    return stray;
}

Test(store, gc_after_the_first_looks_only_at_names_whose_count_fell_to_zero)
{
    struct store *s = open_store(BS, 0);
    struct store_name n[3];
    put_random_blocks(s, n, 3, 500, 700);
    uint64_t freed = 1;
    cr_assert_eq(store_gc(s, &freed), 0);
    cr_assert_eq(freed, 0);
    struct store_name stray = plant_stray(&n[0]);
    cr_assert_eq(store_unref(s, &n[1]), 0);
    cr_assert_eq(store_gc(s, &freed), 0);
    cr_assert_eq(freed, 1, "only the block whose count fell to zero");
    cr_assert_eq(store_has(s, &n[1]), 0);
    cr_assert_eq(store_has(s, &stray), 1, "no shard was walked");
    /* Re-referenced before the GC: a dropped name that came back stays. */
    cr_assert_eq(store_unref(s, &n[2]), 0);
    store_ref(s, &n[2]);
    cr_assert_eq(store_gc(s, &freed), 0);
    cr_assert_eq(freed, 0);
    cr_assert_eq(store_has(s, &n[2]), 1);
    store_close(s);
    /* The first GC after open walks every shard and finds the stray. */
    s = open_store(0, 0);
    store_ref(s, &n[0]);
    store_ref(s, &n[2]);
    cr_assert_eq(store_gc(s, &freed), 0);
    cr_assert_eq(freed, 1);
    cr_assert_eq(store_has(s, &stray), 0);
    cr_assert_eq(store_has(s, &n[0]), 1);
    cr_assert_eq(store_has(s, &n[2]), 1);
    store_close(s);
}

static void gc_many(size_t candidates_max)
{
    struct store_config cfg;
    store_config_init(&cfg, fx.root);
    cfg.block_size = BS;
    cfg.gc_candidates_max = candidates_max;
    struct store *s = NULL;
    cr_assert_eq(store_open(&cfg, &s), 0);
    enum { N = 300 };
    struct store_name n[N];
    put_random_blocks(s, n, N, 100, 900);
    cr_assert_eq(store_gc(s, NULL), 0);
    struct store_name stray = plant_stray(&n[0]);
    for (uint32_t i = 0; i < N; i += 2)
        cr_assert_eq(store_unref(s, &n[i]), 0);
    uint64_t freed = 0;
    cr_assert_eq(store_gc(s, &freed), 0);
    /* Past the bound, the GC walks every shard, and so finds the stray. */
    bool walked = candidates_max != 0 && candidates_max < N / 2; /* 0: the default */
    cr_assert_eq(freed, N / 2 + walked);
    for (uint32_t i = 0; i < N; i++)
        cr_assert_eq(store_has(s, &n[i]), i % 2, "block %u", i);
    cr_assert_eq(store_has(s, &stray), !walked);
    store_close(s);
}

Test(store, gc_of_many_dropped_names_frees_each_once)
{
    gc_many(0);
}

Test(store, gc_past_its_bound_on_dropped_names_walks_every_shard)
{
    gc_many(64); /* one name per stripe */
}

Test(store, after_restart_gc_keeps_only_what_was_re_referenced)
{
    struct store *s = open_store(BS, 0);
    struct store_name n[4];
    put_random_blocks(s, n, 4, 500, 300);
    store_close(s);
    s = open_store(0, 0);
    /* Refcounts are not persisted: the state machine re-references. */
    for (int i = 0; i < 4; i++)
        cr_assert_eq(store_refcount(s, &n[i]), 0);
    store_ref(s, &n[0]);
    store_ref(s, &n[3]);
    uint64_t freed = 0;
    cr_assert_eq(store_gc(s, &freed), 0);
    cr_assert_eq(freed, 2);
    cr_assert_eq(store_has(s, &n[0]), 1);
    cr_assert_eq(store_has(s, &n[1]), 0);
    cr_assert_eq(store_has(s, &n[2]), 0);
    cr_assert_eq(store_has(s, &n[3]), 1);
    store_close(s);
}

/* Threads put, re-ref and unref blocks drawn from a small shared pool (so
 * dedup hits, fresh writes and GC of the same names interleave) while
 * another thread runs GC in a loop. Afterwards each thread's references
 * must all be counted and every block with a reference must read back. */
enum { RACE_THREADS = 3, RACE_ITERS = 300, RACE_POOL = 24, RACE_LEN = 3000 };

struct race {
    struct store *s;
    uint8_t data[RACE_POOL][RACE_LEN];
    struct store_name names[RACE_POOL];
    atomic_bool done;
};

struct racer {
    struct race *r;
    uint64_t seed;
    int held[RACE_POOL];
    int errors;
};

static void *race_worker(void *arg)
{
    struct racer *w = arg;
    struct prng p;
    prng_seed(&p, w->seed);
    for (int it = 0; it < RACE_ITERS; it++) {
        int k = (int)prng_below(&p, RACE_POOL);
        uint64_t op = prng_below(&p, 10);
        if (op < 4) {
            struct store_name n;
            if (store_put(w->r->s, w->r->data[k], RACE_LEN, &n) != 0 ||
                !store_name_eq(&n, &w->r->names[k]))
                w->errors++;
            else
                w->held[k]++;
        } else if (op < 5 && w->held[k] > 0) {
            store_ref(w->r->s, &w->r->names[k]); /* a second block map entry */
            w->held[k]++;
        } else if (w->held[k] > 0) {
            if (store_unref(w->r->s, &w->r->names[k]) != 0)
                w->errors++;
            w->held[k]--;
        }
        if (w->held[k] > 0 && store_has(w->r->s, &w->r->names[k]) != 1)
            w->errors++; /* a block we hold a reference to was collected */
    }
    return NULL;
}

static void *race_gc(void *arg)
{
    struct race *r = arg;
    for (int rounds = 0; rounds < 100000 && !atomic_load(&r->done); rounds++)
        cr_assert_eq(store_gc(r->s, NULL), 0);
    return NULL;
}

Test(store, gc_racing_puts_refs_and_unrefs_keeps_every_referenced_block)
{
    struct race *r = calloc(1, sizeof *r);
    r->s = open_store(BS, 1 << 20);
    for (uint32_t i = 0; i < RACE_POOL; i++) {
        fill_text(r->data[i], RACE_LEN, 400 + i);
        store_name_of(r->data[i], RACE_LEN, &r->names[i]);
    }
    struct racer w[RACE_THREADS];
    pthread_t tid[RACE_THREADS], gc;
    cr_assert_eq(pthread_create(&gc, NULL, race_gc, r), 0);
    for (int t = 0; t < RACE_THREADS; t++) {
        w[t] = (struct racer){.r = r, .seed = 500 + (uint64_t)t};
        cr_assert_eq(pthread_create(&tid[t], NULL, race_worker, &w[t]), 0);
    }
    for (int t = 0; t < RACE_THREADS; t++)
        pthread_join(tid[t], NULL);
    atomic_store(&r->done, true);
    pthread_join(gc, NULL);
    cr_assert_eq(store_gc(r->s, NULL), 0);
    int referenced = 0;
    for (int k = 0; k < RACE_POOL; k++) {
        uint64_t held = 0;
        for (int t = 0; t < RACE_THREADS; t++)
            held += (uint64_t)w[t].held[k];
        cr_assert_eq(store_refcount(r->s, &r->names[k]), held, "block %d", k);
        if (held > 0) {
            referenced++;
            store_cache_drop(r->s);
            assert_reads_back(r->s, &r->names[k], r->data[k], RACE_LEN);
        } else {
            cr_assert_eq(store_has(r->s, &r->names[k]), 0, "block %d not collected", k);
        }
    }
    for (int t = 0; t < RACE_THREADS; t++)
        cr_assert_eq(w[t].errors, 0, "thread %d", t);
    cr_assert_gt(referenced, 0);
    struct store_stats st;
    store_get_stats(r->s, &st);
    cr_assert_gt(st.dedup_hits, 0);
    /* Whether GC freed anything during the race depends on the schedule;
     * once every reference is dropped it must free every block. */
    for (int k = 0; k < RACE_POOL; k++)
        for (int t = 0; t < RACE_THREADS; t++)
            for (uint64_t h = 0; h < (uint64_t)w[t].held[k]; h++)
                cr_assert_eq(store_unref(r->s, &r->names[k]), 0);
    uint64_t freed = 0;
    cr_assert_eq(store_gc(r->s, &freed), 0);
    cr_assert_eq(freed, (uint64_t)referenced);
    for (int k = 0; k < RACE_POOL; k++)
        cr_assert_eq(store_has(r->s, &r->names[k]), 0);
    store_close(r->s);
    free(r);
}

/* Many threads reading and writing the same blocks through the cache. */
struct rw_arg {
    struct store *s;
    uint64_t seed;
    int errors;
};

static void *rw_worker(void *arg)
{
    struct rw_arg *a = arg;
    uint8_t data[8192], out[8192];
    struct prng p;
    prng_seed(&p, a->seed);
    for (int it = 0; it < 200; it++) {
        uint64_t k = prng_below(&p, 8);
        fill_text(data, sizeof data, 600 + k);
        struct store_name n;
        size_t len = 0;
        if (store_put(a->s, data, sizeof data, &n) != 0 ||
            store_get(a->s, &n, out, sizeof out, &len) != 0 || len != sizeof data ||
            memcmp(out, data, len) != 0)
            a->errors++;
    }
    return NULL;
}

Test(store, concurrent_puts_and_gets_of_shared_blocks_stay_consistent)
{
    struct store *s = open_store(BS, 4 * 8192 + 1000); /* smaller than the set */
    struct rw_arg a[4];
    pthread_t tid[4];
    for (int t = 0; t < 4; t++) {
        a[t] = (struct rw_arg){.s = s, .seed = 700 + (uint64_t)t};
        cr_assert_eq(pthread_create(&tid[t], NULL, rw_worker, &a[t]), 0);
    }
    for (int t = 0; t < 4; t++) {
        pthread_join(tid[t], NULL);
        cr_assert_eq(a[t].errors, 0);
    }
    struct store_stats st;
    store_get_stats(s, &st);
    cr_assert_eq(st.puts, 800);
    /* A thread writes a block only while no file is under its name yet, so
     * each of the 8 blocks is written at most once per thread. */
    cr_assert_geq(st.writes, 8);
    cr_assert_leq(st.writes, 8 * 4);
    cr_assert_eq(st.gets, 800);
    store_close(s);
}

/* ---- fault injection ---- */

static void put_fails_cleanly_at(const char *point)
{
    struct store *s = open_store(BS, 0);
    uint8_t data[6000];
    fill_text(data, sizeof data, 800);
    struct store_name n, want;
    store_name_of(data, sizeof data, &want);
    fault_arm(point, 0, 1, EIO);
    cr_assert_eq(store_put(s, data, sizeof data, &n), -EIO, "%s", point);
    cr_assert_eq(store_has(s, &want), 0, "%s left a file under the name", point);
    cr_assert_eq(dir_entries("tmp"), 0, "%s left a temp file", point);
    cr_assert_eq(store_refcount(s, &want), 0);
    uint8_t out[6000];
    size_t len;
    cr_assert_eq(store_get(s, &want, out, sizeof out, &len), -ENOENT);
    /* The fault was one-shot: the retry succeeds. */
    cr_assert_eq(store_put(s, data, sizeof data, &n), 0);
    assert_reads_back(s, &n, data, sizeof data);
    cr_assert_eq(store_refcount(s, &n), 1);
    fault_disarm_all();
    store_close(s);
}

Test(store, fault_at_write_leaves_no_partial_block)
{
    put_fails_cleanly_at("store.write");
}

Test(store, fault_at_fsync_leaves_no_partial_block)
{
    put_fails_cleanly_at("store.fsync");
}

Test(store, fault_at_rename_leaves_no_partial_block)
{
    put_fails_cleanly_at("store.rename");
}

Test(store, fault_at_dir_fsync_fails_the_put_without_a_reference)
{
    struct store *s = open_store(BS, 0);
    uint8_t data[6000];
    fill_text(data, sizeof data, 801);
    struct store_name n;
    fault_arm("store.fsync_dir", 0, 1, EIO);
    cr_assert_eq(store_put(s, data, sizeof data, &n), -EIO);
    /* The file under the name is complete (it was fsynced before rename):
     * only the durability of its directory entry was not confirmed. */
    store_name_of(data, sizeof data, &n);
    cr_assert_eq(store_refcount(s, &n), 0);
    cr_assert_eq(store_verify(s, &n), 0);
    fault_disarm_all();
    store_close(s);
}

Test(store, fault_during_put_encoded_leaves_no_partial_block)
{
    struct store *s = open_store(BS, 0);
    uint8_t data[6000], file[6000 + STORE_HDR_LEN];
    fill_text(data, sizeof data, 802);
    struct store_name n;
    cr_assert_eq(store_put(s, data, sizeof data, &n), 0);
    size_t len;
    cr_assert_eq(store_get_encoded(s, &n, file, sizeof file, &len), 0);
    cr_assert_eq(store_unref(s, &n), 0);
    cr_assert_eq(store_gc(s, NULL), 0);
    fault_arm("store.fsync", 0, 1, ENOSPC);
    cr_assert_eq(store_put_encoded(s, &n, file, len), -ENOSPC);
    cr_assert_eq(store_has(s, &n), 0);
    cr_assert_eq(dir_entries("tmp"), 0);
    cr_assert_eq(store_put_encoded(s, &n, file, len), 0);
    assert_reads_back(s, &n, data, sizeof data);
    fault_disarm_all();
    store_close(s);
}

/* ---- read repair ------------------------------------------------------- */

/* A peer that has the good copy: stores it as put_encoded would and
 * counts the fetches; slow, so that concurrent readers overlap. */
struct peer_copy {
    struct store *s;
    uint8_t file[STORE_BLOCK_SIZE_MAX + 64];
    size_t len;
    atomic_int fetches;
};

static int fetch_from_peer(void *ctx, const struct store_name *name)
{
    struct peer_copy *p = ctx;
    atomic_fetch_add(&p->fetches, 1);
    usleep(200 * 1000);
    int rc = store_put_encoded(p->s, name, p->file, p->len);
    if (rc == 0)
        store_unref(p->s, name);
    return rc;
}

struct reader_arg {
    struct store *s;
    struct store_name name;
    int rc;
    uint8_t out[BS];
};

static void *read_block(void *arg)
{
    struct reader_arg *a = arg;
    size_t len;
    a->rc = store_get(a->s, &a->name, a->out, sizeof a->out, &len);
    return NULL;
}

Test(store, a_corrupt_block_read_by_many_at_once_is_fetched_once_and_counted_once)
{
    struct store *s = open_store(BS, 0); /* no cache: every get reads the file */
    static uint8_t data[BS];
    fill_text(data, BS, 42);
    struct store_name n;
    cr_assert_eq(store_put(s, data, BS, &n), 0);
    static struct peer_copy peer;
    peer.s = s;
    cr_assert_eq(store_get_encoded(s, &n, peer.file, sizeof peer.file, &peer.len), 0);
    atomic_store(&peer.fetches, 0);
    store_set_repair(s, fetch_from_peer, &peer);
    flip_byte(&n, STORE_HDR_LEN + 7);
    static struct reader_arg r[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        r[i].s = s;
        r[i].name = n;
        cr_assert_eq(pthread_create(&th[i], NULL, read_block, &r[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        cr_assert_eq(r[i].rc, 0, "reader %d: %s", i, strerror(-r[i].rc));
        cr_assert_eq(memcmp(r[i].out, data, BS), 0, "reader %d got the right bytes", i);
    }
    cr_assert_eq(atomic_load(&peer.fetches), 1, "fetched %d times", atomic_load(&peer.fetches));
    struct store_stats st;
    store_get_stats(s, &st);
    cr_assert_eq(st.repaired, 1);
    cr_assert_eq(store_verify(s, &n), 0, "the good copy is back on disk");
    store_close(s);
}
