/* Tests of the write-behind (fs/write_behind.h) against a fake proposer
 * that applies extents to in-memory files, optionally slowly, in whatever
 * order the workers reach it, or failing. The fake checks invariant 1 on
 * every call: no two in-flight extents of one inode overlap. */
#include "fs/write_behind.h"

#include "base/prng.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FILES 16
#define FILE_BYTES (512u * 1024u)
#define INFLIGHT_MAX 64

struct fake {
    pthread_mutex_t lock;
    uint8_t data[FILES][FILE_BYTES];
    uint64_t size[FILES];
    struct {
        uint64_t ino, offset;
        size_t len;
        bool used;
    } inflight[INFLIGHT_MAX];
    unsigned delay_us_max; /* each proposal sleeps a random 0..max */
    uint64_t fail_ino;     /* proposals for it fail with -EIO; 0: none */
    bool hold_failures;    /* ... once the test clears this (a lost quorum's op_timeout) */
    pthread_cond_t released;
    size_t failed;         /* proposals that failed */
    struct prng rng;
    struct wb *w;
    size_t proposals;
    size_t misaligned; /* proposals not of whole aligned blocks */
    uint32_t block_size;
    uint64_t pending_max;
    uint32_t last_uid;
    pthread_t last_thread; /* that made the last proposal */
    bool overlap_seen;
};

static struct fake fk;

static int fake_propose(void *ctx, const struct wb_extent_view *e)
{
    struct fake *f = ctx;
    cr_assert_lt(e->ino, FILES);
    cr_assert_leq(e->offset + e->len, FILE_BYTES);
    pthread_mutex_lock(&f->lock);
    int slot = -1;
    for (int i = 0; i < INFLIGHT_MAX; i++) {
        if (f->inflight[i].used && f->inflight[i].ino == e->ino &&
            e->offset < f->inflight[i].offset + f->inflight[i].len &&
            f->inflight[i].offset < e->offset + e->len)
            f->overlap_seen = true;
        if (!f->inflight[i].used && slot < 0)
            slot = i;
    }
    cr_assert_geq(slot, 0);
    f->inflight[slot].used = true;
    f->inflight[slot].ino = e->ino;
    f->inflight[slot].offset = e->offset;
    f->inflight[slot].len = e->len;
    unsigned sleep_us = f->delay_us_max ? (unsigned)prng_below(&f->rng, f->delay_us_max + 1) : 0;
    struct wb_stats st;
    pthread_mutex_unlock(&f->lock);
    if (f->w) {
        wb_stats(f->w, &st);
        pthread_mutex_lock(&f->lock);
        if (st.bytes_pending > f->pending_max)
            f->pending_max = st.bytes_pending;
        pthread_mutex_unlock(&f->lock);
    }
    if (sleep_us)
        usleep(sleep_us);
    pthread_mutex_lock(&f->lock);
    int rc = 0;
    if (e->ino == f->fail_ino) {
        while (f->hold_failures)
            pthread_cond_wait(&f->released, &f->lock);
        rc = -EIO;
        f->failed++;
    } else {
        memcpy(f->data[e->ino] + e->offset, e->data, e->len);
        if (e->offset + e->len > f->size[e->ino])
            f->size[e->ino] = e->offset + e->len;
        f->proposals++;
        if (e->offset % f->block_size || e->len % f->block_size)
            f->misaligned++;
        f->last_uid = e->uid;
        f->last_thread = pthread_self();
    }
    f->inflight[slot].used = false;
    pthread_mutex_unlock(&f->lock);
    return rc;
}

static void fake_init(void)
{
    memset(&fk, 0, sizeof fk);
    pthread_mutex_init(&fk.lock, NULL);
    pthread_cond_init(&fk.released, NULL);
    prng_seed(&fk.rng, 42);
}

static struct wb *open_wb(uint32_t block_size, size_t chunk, size_t bytes_max, unsigned delay_ms,
                          unsigned threads)
{
    struct wb_config c = {
        .block_size = block_size,
        .chunk_bytes = chunk,
        .bytes_max = bytes_max,
        .delay_ms = delay_ms,
        .threads = threads,
        .propose = fake_propose,
        .ctx = &fk,
    };
    fk.block_size = block_size;
    struct wb *w = wb_open(&c);
    cr_assert_not_null(w);
    fk.w = w;
    return w;
}

static void close_wb(struct wb *w)
{
    fk.w = NULL;
    wb_close(w);
}

static void fill(uint8_t *p, size_t n, uint64_t seed)
{
    struct prng r;
    prng_seed(&r, seed);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)prng_next(&r);
}

TestSuite(write_behind, .init = fake_init, .timeout = 60);

Test(write_behind, small_sequential_writes_are_proposed_as_few_whole_blocks)
{
    struct wb *w = open_wb(4096, 16384, 1 << 20, 10000, 4);
    static uint8_t want[65536];
    fill(want, sizeof want, 1);
    for (size_t off = 0; off < sizeof want; off += 512)
        cr_assert_eq(wb_write(w, 3, off, want + off, 512, 0, 0), 0);
    cr_assert_eq(wb_sync(w, 3), 0);
    cr_assert_eq(fk.size[3], sizeof want);
    cr_assert_eq(memcmp(fk.data[3], want, sizeof want), 0);
    cr_assert_leq(fk.proposals, 5, "%zu proposals for 4 chunks", fk.proposals);
    cr_assert_eq(fk.misaligned, 0);
    struct wb_stats st;
    wb_stats(w, &st);
    cr_assert_eq(st.writes, sizeof want / 512);
    cr_assert_eq(st.bytes_pending, 0);
    close_wb(w);
}

Test(write_behind, overlapping_writes_end_as_if_applied_in_write_order)
{
    /* Slow proposals on 4 workers reorder whatever the write-behind lets
     * them: only disjoint extents may be in flight together. */
    struct wb *w = open_wb(4096, 16384, 256 * 1024, 5, 4);
    fk.delay_us_max = 2000;
    static uint8_t want[FILE_BYTES], chunk[8192];
    struct prng r;
    prng_seed(&r, 7);
    uint64_t size = 0;
    for (int i = 0; i < 600; i++) {
        uint64_t off = prng_below(&r, 65536);
        size_t len = 1 + (size_t)prng_below(&r, sizeof chunk);
        fill(chunk, len, (uint64_t)i + 100);
        cr_assert_eq(wb_write(w, 5, off, chunk, len, 0, 0), 0);
        memcpy(want + off, chunk, len);
        if (off + len > size)
            size = off + len;
        if (i % 97 == 0)
            cr_assert_eq(wb_drain(w, 5), 0);
    }
    cr_assert_eq(wb_sync(w, 5), 0);
    cr_assert_not(fk.overlap_seen, "two overlapping extents were in flight together");
    cr_assert_eq(fk.size[5], size);
    cr_assert_eq(memcmp(fk.data[5], want, size), 0);
    close_wb(w);
}

Test(write_behind, a_failed_proposal_fails_later_writes_and_sync_reports_it_once)
{
    struct wb *w = open_wb(4096, 16384, 1 << 20, 1000, 2);
    uint8_t b[100];
    memset(b, 'x', sizeof b);
    fk.fail_ino = 7;
    cr_assert_eq(wb_write(w, 7, 0, b, sizeof b, 0, 0), 0, "a write is taken before it fails");
    cr_assert_eq(wb_drain(w, 7), -EIO);
    cr_assert(wb_pending(w, 7), "the kept error keeps the inode's record");
    cr_assert_eq(wb_write(w, 7, 100, b, sizeof b, 0, 0), -EIO);
    cr_assert_eq(wb_write(w, 8, 0, b, sizeof b, 0, 0), 0, "other inodes are not affected");
    cr_assert_eq(wb_sync(w, 7), -EIO);
    cr_assert_eq(wb_sync(w, 7), 0, "reported once");
    fk.fail_ino = 0;
    cr_assert_eq(wb_write(w, 7, 0, b, sizeof b, 0, 0), 0);
    cr_assert_eq(wb_sync(w, 7), 0);
    cr_assert_eq(wb_sync(w, 8), 0);
    cr_assert_eq(memcmp(fk.data[7], b, sizeof b), 0);
    cr_assert_not(wb_pending(w, 7));
    close_wb(w);
}

/* Once an inode's proposal failed, its extents still queued fail with that
 * error without being proposed: the error reaches the next fsync anyway
 * (invariant 3), and with a lost quorum each would wait out op_timeout, so
 * an fsync of 32 MiB took minutes to fail, and an unmount as long. */
Test(write_behind, after_a_failure_the_inodes_queued_extents_fail_without_a_proposal)
{
    struct wb *w = open_wb(4096, 16384, 1 << 20, 1000, 1);
    fk.fail_ino = 7;
    fk.hold_failures = true;
    uint8_t b[16384];
    memset(b, 'q', sizeof b);
    for (int k = 0; k < 16; k++) /* one chunk each: all queued behind the first */
        cr_assert_eq(wb_write(w, 7, (uint64_t)k * sizeof b, b, sizeof b, 0, 0), 0);
    pthread_mutex_lock(&fk.lock); /* now the first proposal fails */
    fk.hold_failures = false;
    pthread_cond_broadcast(&fk.released);
    pthread_mutex_unlock(&fk.lock);
    cr_assert_eq(wb_sync(w, 7), -EIO);
    cr_assert_eq(fk.failed, 1, "%zu proposals failed, one expected", fk.failed);
    cr_assert_eq(fk.proposals, 0);
    struct wb_stats st;
    wb_stats(w, &st);
    cr_assert_eq(st.proposals, 1, "only the first was proposed");
    cr_assert_eq(st.errors, 16, "and all 16 failed");
    close_wb(w);
}

struct writer_arg {
    struct wb *w;
    uint64_t ino;
};

static void *writer_main(void *arg)
{
    struct writer_arg *a = arg;
    uint8_t b[4096];
    fill(b, sizeof b, a->ino);
    for (uint64_t off = 0; off < 256 * 1024; off += sizeof b)
        cr_assert_eq(wb_write(a->w, a->ino, off, b, sizeof b, 0, 0), 0);
    cr_assert_eq(wb_sync(a->w, a->ino), 0);
    return NULL;
}

Test(write_behind, pending_bytes_stay_within_bytes_max)
{
    struct wb *w = open_wb(4096, 16384, 65536, 5, 4);
    fk.delay_us_max = 1000;
    pthread_t t[8];
    struct writer_arg a[8];
    for (int i = 0; i < 8; i++) {
        a[i] = (struct writer_arg){w, (uint64_t)i + 1};
        pthread_create(&t[i], NULL, writer_main, &a[i]);
    }
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    cr_assert_leq(fk.pending_max, 65536, "%llu bytes pending",
                  (unsigned long long)fk.pending_max);
    cr_assert_gt(fk.pending_max, 0);
    for (int i = 1; i <= 8; i++)
        cr_assert_eq(fk.size[i], 256 * 1024);
    close_wb(w);
}

Test(write_behind, a_buffered_write_is_proposed_after_the_delay_without_a_sync)
{
    struct wb *w = open_wb(4096, 16384, 1 << 20, 20, 2);
    cr_assert_eq(wb_write(w, 2, 10, "hello", 5, 0, 0), 0);
    bool seen = false;
    for (int i = 0; i < 400 && !seen; i++) {
        usleep(5000);
        pthread_mutex_lock(&fk.lock);
        seen = fk.size[2] == 15;
        pthread_mutex_unlock(&fk.lock);
    }
    cr_assert(seen, "not proposed within 2 s");
    cr_assert_eq(memcmp(fk.data[2] + 10, "hello", 5), 0);
    close_wb(w);
}

Test(write_behind, close_proposes_everything_buffered)
{
    struct wb *w = open_wb(4096, 16384, 1 << 20, 10000, 2);
    cr_assert_eq(wb_write(w, 4, 0, "abc", 3, 0, 0), 0);
    cr_assert_eq(wb_write(w, 9, 4096, "def", 3, 0, 0), 0);
    close_wb(w);
    cr_assert_eq(memcmp(fk.data[4], "abc", 3), 0);
    cr_assert_eq(memcmp(fk.data[9] + 4096, "def", 3), 0);
}

Test(write_behind, a_sync_with_nothing_in_flight_proposes_on_the_callers_thread)
{
    struct wb *w = open_wb(4096, 16384, 1 << 20, 10000, 2);
    cr_assert_eq(wb_write(w, 5, 0, "small file", 10, 0, 0), 0);
    cr_assert_eq(wb_sync(w, 5), 0);
    cr_assert_eq(fk.proposals, 1);
    cr_assert(pthread_equal(fk.last_thread, pthread_self()), "no hand-off to a worker");
    cr_assert_eq(memcmp(fk.data[5], "small file", 10), 0);
    struct wb_stats st;
    wb_stats(w, &st);
    cr_assert_eq(st.bytes_pending, 0);
    close_wb(w);
}

Test(write_behind, writes_of_another_uid_are_proposed_apart)
{
    struct wb *w = open_wb(4096, 16384, 1 << 20, 10000, 1);
    cr_assert_eq(wb_write(w, 6, 0, "aaaa", 4, 1000, 1000), 0);
    cr_assert_eq(wb_write(w, 6, 4, "bbbb", 4, 2000, 2000), 0);
    cr_assert_eq(wb_sync(w, 6), 0);
    cr_assert_eq(fk.proposals, 2);
    cr_assert_eq(fk.last_uid, 2000, "the later write's extent carries its own uid");
    cr_assert_eq(memcmp(fk.data[6], "aaaabbbb", 8), 0);
    close_wb(w);
}

/* A carrier for wb_carry: proposes the extent through the fake (so the
 * overlap check sees it) and records what it was handed. */
struct carry_arg {
    bool called, had_extent;
    uint64_t offset;
    size_t len;
    int64_t request_rc;
};

static int64_t fake_carry(void *arg, const struct wb_extent_view *e, int *write_rc)
{
    struct carry_arg *c = arg;
    c->called = true;
    c->had_extent = e != NULL;
    if (e) {
        c->offset = e->offset;
        c->len = e->len;
        *write_rc = fake_propose(&fk, e);
    }
    return c->request_rc;
}

Test(write_behind, carry_hands_over_the_buffered_extent_after_the_inflight_ones)
{
    struct wb *w = open_wb(4096, 16384, 1 << 20, 10000, 2);
    fk.delay_us_max = 3000;
    static uint8_t want[16384 + 100];
    fill(want, sizeof want, 3);
    /* A whole chunk goes in flight on a worker; the 100 bytes after it stay
     * buffered, and are carried only once the chunk is applied. */
    cr_assert_eq(wb_write(w, 3, 0, want, sizeof want, 0, 0), 0);
    struct carry_arg c = {.request_rc = 42};
    cr_assert_eq(wb_carry(w, 3, fake_carry, &c), 42);
    cr_assert(c.had_extent);
    cr_assert_eq(c.offset, 16384);
    cr_assert_eq(c.len, 100);
    cr_assert_not(fk.overlap_seen);
    cr_assert_eq(fk.size[3], sizeof want);
    cr_assert_eq(memcmp(fk.data[3], want, sizeof want), 0);
    cr_assert_not(wb_pending(w, 3), "nothing left buffered, in flight or kept");
    struct wb_stats st;
    wb_stats(w, &st);
    cr_assert_eq(st.bytes_pending, 0);
    /* Nothing buffered: the request alone. */
    c = (struct carry_arg){.request_rc = -EPERM};
    cr_assert_eq(wb_carry(w, 3, fake_carry, &c), -EPERM);
    cr_assert(c.called);
    cr_assert_not(c.had_extent);
    close_wb(w);
}

/* The same rule when a setattr would carry the buffered extent: after the
 * file's earlier proposal failed, the extent fails unproposed and the
 * setattr goes alone. */
Test(write_behind, after_a_failure_a_buffered_extent_is_not_carried)
{
    struct wb *w = open_wb(4096, 16384, 1 << 20, 10000, 2);
    fk.fail_ino = 7;
    fk.hold_failures = true;
    static uint8_t b[16384 + 100];
    memset(b, 'c', sizeof b);
    /* A whole chunk goes in flight (and fails once released); the 100 bytes
     * after it stay buffered. */
    cr_assert_eq(wb_write(w, 7, 0, b, sizeof b, 0, 0), 0);
    pthread_mutex_lock(&fk.lock);
    fk.hold_failures = false;
    pthread_cond_broadcast(&fk.released);
    pthread_mutex_unlock(&fk.lock);
    struct carry_arg c = {.request_rc = 0};
    cr_assert_eq(wb_carry(w, 7, fake_carry, &c), 0, "the request's own result");
    cr_assert(c.called);
    cr_assert_not(c.had_extent, "the buffered extent was carried after the failure");
    cr_assert_eq(fk.failed, 1, "%zu proposals failed, one expected", fk.failed);
    cr_assert_eq(wb_sync(w, 7), -EIO);
    cr_assert_not(wb_pending(w, 7));
    close_wb(w);
}

Test(write_behind, a_carried_extent_that_fails_is_kept_for_sync)
{
    struct wb *w = open_wb(4096, 16384, 1 << 20, 10000, 2);
    fk.fail_ino = 7;
    cr_assert_eq(wb_write(w, 7, 0, "abc", 3, 0, 0), 0);
    struct carry_arg c = {.request_rc = 0};
    cr_assert_eq(wb_carry(w, 7, fake_carry, &c), 0, "the request's own result");
    cr_assert(c.had_extent);
    cr_assert_eq(wb_write(w, 7, 3, "d", 1, 0, 0), -EIO, "later writes fail");
    cr_assert_eq(wb_sync(w, 7), -EIO, "and fsync reports it");
    cr_assert_eq(wb_sync(w, 7), 0);
    close_wb(w);
}
