/* write_behind — see write_behind.h.
 *
 * One mutex guards everything; the work done under it is bookkeeping and
 * the copy of a write's bytes (at most a FUSE write, 1 MiB). Proposals run
 * unlocked, on the workers or on the thread that waits for them (below).
 *
 * An extent's life:
 *
 *   wb_write ──▶ BUFFERED ──submit()──▶ QUEUED ──worker──▶ PROPOSING ──▶ freed
 *                (s->buffered)          (s->inflight and w->queue)  (s->inflight)
 *
 * submit() is called by wb_write (chunk full, or a write elsewhere in the
 * file), by the timer (delay_ms), by wb_close, and by wb_drain/wb_sync while
 * some of the file is in flight; when none is, they take the BUFFERED
 * extent straight to PROPOSING on their caller's thread, as wb_carry does:
 * the caller waits for it anyway. wb_carry always does so. An inode's record
 * lives while it has a buffered extent, an in-flight one, a kept error or a
 * waiter.
 *
 * The timer is whichever one worker waits with a timeout, and only while an
 * inode has a record: an idle write-behind wakes nobody, and a busy one
 * wakes one worker per delay_ms, not all of them. */
#include "fs/write_behind.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/assert.h"
#include "base/clock.h"
#include "base/log.h"

#define WB_BUCKETS 256

struct wb_ext {
    uint64_t offset;
    uint8_t *data;
    size_t len, cap;
    uint32_t uid, gid;
    uint64_t born_ns;          /* when its first byte was buffered */
    struct wb_inode *inode;
    struct wb_ext *next_inflight; /* the inode's in-flight list */
    struct wb_ext *next_queued;   /* the workers' queue */
};

struct wb_inode {
    uint64_t ino;
    struct wb_ext *buffered;
    struct wb_ext *inflight;
    int error;          /* invariant 3 */
    unsigned waiters;
    struct wb_inode *next; /* hash chain */
};

struct wb {
    struct wb_config cfg;
    pthread_mutex_t lock;
    pthread_cond_t work_cond; /* queued work, or stop */
    pthread_cond_t done_cond; /* an extent finished */
    struct wb_inode *buckets[WB_BUCKETS];
    _Atomic size_t inodes;     /* records in buckets; read unlocked as a hint */
    struct wb_ext *queue_head, *queue_tail;
    size_t bytes;              /* buffered + in flight */
    uint64_t last_scan_ns;
    bool timer_armed;          /* a worker waits with a timeout */
    bool stop;
    pthread_t *workers;
    unsigned workers_started;
    struct wb_stats stats;
};

/* ---- records ------------------------------------------------------------- */

static size_t bucket_of(uint64_t ino)
{
    return (size_t)((ino * 0x9E3779B97F4A7C15ull) >> 56) % WB_BUCKETS;
}

static struct wb_inode *inode_find(struct wb *w, uint64_t ino)
{
    for (struct wb_inode *s = w->buckets[bucket_of(ino)]; s; s = s->next)
        if (s->ino == ino)
            return s;
    return NULL;
}

static struct wb_inode *inode_get(struct wb *w, uint64_t ino)
{
    struct wb_inode *s = inode_find(w, ino);
    if (s)
        return s;
    s = calloc(1, sizeof *s);
    ASSERT(s != NULL);
    s->ino = ino;
    size_t b = bucket_of(ino);
    s->next = w->buckets[b];
    w->buckets[b] = s;
    w->inodes++;
    return s;
}

/* Frees s once nothing refers to it. */
static void inode_put(struct wb *w, struct wb_inode *s)
{
    if (s->buffered || s->inflight || s->error || s->waiters)
        return;
    struct wb_inode **pp = &w->buckets[bucket_of(s->ino)];
    while (*pp != s)
        pp = &(*pp)->next;
    *pp = s->next;
    w->inodes--;
    free(s);
}

static void ext_free(struct wb_ext *e)
{
    free(e->data);
    free(e);
}

static bool ranges_overlap(uint64_t a, size_t alen, uint64_t b, size_t blen)
{
    return a < b + blen && b < a + alen;
}

static bool overlaps_inflight(const struct wb_inode *s, uint64_t offset, size_t len)
{
    for (const struct wb_ext *e = s->inflight; e; e = e->next_inflight)
        if (ranges_overlap(offset, len, e->offset, e->len))
            return true;
    return false;
}

/* ---- submitting ---------------------------------------------------------- */

static void inflight_add(struct wb_ext *e)
{
    struct wb_inode *s = e->inode;
    e->next_inflight = s->inflight;
    s->inflight = e;
}

static void enqueue(struct wb *w, struct wb_ext *e)
{
    inflight_add(e);
    e->next_queued = NULL;
    if (w->queue_tail)
        w->queue_tail->next_queued = e;
    else
        w->queue_head = e;
    w->queue_tail = e;
    pthread_cond_signal(&w->work_cond);
}

/* Moves s's buffered extent, whole, to the queue. */
static void submit(struct wb *w, struct wb_inode *s)
{
    struct wb_ext *e = s->buffered;
    if (!e)
        return;
    s->buffered = NULL;
    enqueue(w, e);
}

/* Submits the whole blocks of s's buffered extent and keeps the partial
 * last block buffered: the next write most likely continues it. */
static void submit_whole_blocks(struct wb *w, struct wb_inode *s)
{
    struct wb_ext *e = s->buffered;
    uint64_t end = e->offset + e->len;
    uint64_t cut = end - end % w->cfg.block_size;
    if (cut <= e->offset || cut == end) {
        submit(w, s);
        return;
    }
    size_t tail = (size_t)(end - cut);
    struct wb_ext *rest = calloc(1, sizeof *rest);
    ASSERT(rest != NULL);
    *rest = *e;
    rest->offset = cut;
    rest->len = tail;
    rest->born_ns = clock_now_ns(); /* not aged out before the writer goes on */
    rest->cap = MAX(tail, (size_t)w->cfg.block_size);
    rest->data = malloc(rest->cap);
    ASSERT(rest->data != NULL);
    memcpy(rest->data, e->data + (cut - e->offset), tail);
    e->len -= tail;
    s->buffered = rest;
    enqueue(w, e);
}

/* Submits every buffered extent older than delay_ms; at most once per
 * delay_ms, whichever worker wakes first. */
static void submit_aged(struct wb *w)
{
    uint64_t now = clock_now_ns();
    uint64_t delay = (uint64_t)w->cfg.delay_ms * 1000000u;
    if (now - w->last_scan_ns < delay || w->inodes == 0)
        return;
    w->last_scan_ns = now;
    for (size_t b = 0; b < WB_BUCKETS; b++)
        for (struct wb_inode *s = w->buckets[b]; s; s = s->next)
            if (s->buffered && now - s->buffered->born_ns >= delay)
                submit(w, s);
}

/* Takes s's buffered extent (if any) out of BUFFERED into flight, for the
 * calling thread to propose. */
static struct wb_ext *take_buffered(struct wb_inode *s)
{
    struct wb_ext *e = s->buffered;
    if (e) {
        s->buffered = NULL;
        inflight_add(e);
    }
    return e;
}

static void finish(struct wb *w, struct wb_ext *e, int rc, bool proposed);

/* Whether e, in flight, is not to be proposed: when its inode already has
 * an error, e fails with it unproposed (finished here). That error reaches
 * the next fsync anyway (invariant 3), and with a lost quorum each proposal
 * would first wait out op_timeout. Every path that proposes an extent asks
 * this first. */
static bool failed_unproposed(struct wb *w, struct wb_ext *e)
{
    if (!e->inode->error)
        return false;
    finish(w, e, e->inode->error, false);
    return true;
}

/* Proposes e, in flight, with w->lock released meanwhile (held on entry and
 * on return), then finishes it. */
static void propose_unlocked(struct wb *w, struct wb_ext *e)
{
    if (failed_unproposed(w, e))
        return;
    struct wb_extent_view v = {e->inode->ino, e->offset, e->data, e->len, e->uid, e->gid};
    pthread_mutex_unlock(&w->lock);
    int rc = w->cfg.propose(w->cfg.ctx, &v);
    pthread_mutex_lock(&w->lock);
    finish(w, e, rc, true);
}

/* ---- workers ------------------------------------------------------------- */

static void timed_wait(pthread_cond_t *c, pthread_mutex_t *m, unsigned ms)
{
    struct timespec ts;
    deadline_in_ms(&ts, ms);
    pthread_cond_timedwait(c, m, &ts);
}

/* Ends e's flight with rc (0 or a negative errno); proposed says whether it
 * was proposed at all, for the stats. */
static void finish(struct wb *w, struct wb_ext *e, int rc, bool proposed)
{
    struct wb_inode *s = e->inode;
    struct wb_ext **pp = &s->inflight;
    while (*pp != e)
        pp = &(*pp)->next_inflight;
    *pp = e->next_inflight;
    w->bytes -= e->len;
    if (proposed)
        w->stats.proposals++;
    if (rc < 0) {
        w->stats.errors++;
        if (s->error == 0)
            s->error = rc;
        LOG_W("event=write_behind_failed ino=%llu offset=%llu len=%zu error=%d",
              (unsigned long long)s->ino, (unsigned long long)e->offset, e->len, rc);
    }
    ext_free(e);
    inode_put(w, s);
    pthread_cond_broadcast(&w->done_cond);
}

static void *worker_main(void *arg)
{
    struct wb *w = arg;
    pthread_setname_np(pthread_self(), "paxfs-writeback");
    pthread_mutex_lock(&w->lock);
    for (;;) {
        submit_aged(w);
        struct wb_ext *e = w->queue_head;
        if (!e) {
            if (w->stop)
                break;
            if (w->inodes > 0 && !w->timer_armed) {
                w->timer_armed = true;
                timed_wait(&w->work_cond, &w->lock, w->cfg.delay_ms);
                w->timer_armed = false;
            } else {
                pthread_cond_wait(&w->work_cond, &w->lock);
            }
            continue;
        }
        w->queue_head = e->next_queued;
        if (!w->queue_head)
            w->queue_tail = NULL;
        propose_unlocked(w, e);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

/* ---- the API ------------------------------------------------------------- */

struct wb *wb_open(const struct wb_config *cfg)
{
    ASSERT(cfg->propose && cfg->block_size > 0 && cfg->threads > 0 && cfg->delay_ms > 0);
    ASSERT(cfg->chunk_bytes >= cfg->block_size && cfg->bytes_max >= cfg->chunk_bytes);
    struct wb *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->cfg = *cfg;
    pthread_mutex_init(&w->lock, NULL);
    cond_init_monotonic(&w->work_cond);
    pthread_cond_init(&w->done_cond, NULL);
    w->last_scan_ns = clock_now_ns();
    w->workers = calloc(cfg->threads, sizeof *w->workers);
    if (!w->workers) {
        wb_close(w);
        return NULL;
    }
    for (unsigned i = 0; i < cfg->threads; i++) {
        if (pthread_create(&w->workers[i], NULL, worker_main, w) != 0) {
            wb_close(w);
            return NULL;
        }
        w->workers_started++;
    }
    return w;
}

void wb_close(struct wb *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    for (size_t b = 0; b < WB_BUCKETS; b++)
        for (struct wb_inode *s = w->buckets[b]; s; s = s->next)
            submit(w, s);
    /* Without workers (wb_open failed) nothing was ever written. */
    while (w->workers_started > 0 && w->bytes > 0)
        pthread_cond_wait(&w->done_cond, &w->lock);
    w->stop = true;
    pthread_cond_broadcast(&w->work_cond);
    pthread_mutex_unlock(&w->lock);
    for (unsigned i = 0; i < w->workers_started; i++)
        pthread_join(w->workers[i], NULL);
    for (size_t b = 0; b < WB_BUCKETS; b++) {
        while (w->buckets[b]) {
            struct wb_inode *s = w->buckets[b];
            w->buckets[b] = s->next;
            if (s->error)
                LOG_W("event=write_behind_unreported ino=%llu error=%d",
                      (unsigned long long)s->ino, s->error);
            free(s);
        }
    }
    free(w->workers);
    pthread_cond_destroy(&w->work_cond);
    pthread_cond_destroy(&w->done_cond);
    pthread_mutex_destroy(&w->lock);
    free(w);
}

/* Waits on done_cond with s kept alive. */
static void wait_done(struct wb *w, struct wb_inode *s)
{
    s->waiters++;
    pthread_cond_wait(&w->done_cond, &w->lock);
    s->waiters--;
}

/* Copies the write into s's buffered extent, which the caller made sure it
 * continues or overlaps (or there is none). */
static void buffer_write(struct wb *w, struct wb_inode *s, uint64_t offset, const void *data,
                         size_t len, uint32_t uid, uint32_t gid)
{
    struct wb_ext *e = s->buffered;
    if (!e) {
        e = calloc(1, sizeof *e);
        ASSERT(e != NULL);
        e->offset = offset;
        e->uid = uid;
        e->gid = gid;
        e->inode = s;
        e->born_ns = clock_now_ns();
        s->buffered = e;
        if (!w->timer_armed)
            pthread_cond_signal(&w->work_cond); /* a worker becomes the timer */
    }
    size_t at = (size_t)(offset - e->offset);
    size_t end = MAX(e->len, at + len);
    if (end > e->cap) {
        size_t cap = MAX(end, MIN(w->cfg.chunk_bytes, 2 * e->cap));
        uint8_t *p = realloc(e->data, cap);
        ASSERT(p != NULL);
        e->data = p;
        e->cap = cap;
    }
    memcpy(e->data + at, data, len);
    w->bytes += end - e->len;
    e->len = end;
    w->stats.writes++;
}

int wb_write(struct wb *w, uint64_t ino, uint64_t offset, const void *data, size_t len,
             uint32_t uid, uint32_t gid)
{
    ASSERT(len > 0);
    pthread_mutex_lock(&w->lock);
    struct wb_inode *s = inode_get(w, ino);
    int rc = 0;
    for (;;) {
        if (s->error) {
            rc = s->error;
            break;
        }
        struct wb_ext *b = s->buffered;
        if (b && (offset < b->offset || offset > b->offset + b->len || b->uid != uid ||
                  b->gid != gid || b->len + len > w->cfg.chunk_bytes + w->cfg.block_size)) {
            submit(w, s); /* not a continuation: the log gets it first */
            continue;
        }
        if (overlaps_inflight(s, offset, len)) {
            wait_done(w, s); /* invariant 1 */
            continue;
        }
        if (w->bytes > 0 && w->bytes + len > w->cfg.bytes_max) {
            submit(w, s); /* our own bytes may be what holds the room */
            wait_done(w, s);
            continue;
        }
        buffer_write(w, s, offset, data, len, uid, gid);
        if (s->buffered->len >= w->cfg.chunk_bytes)
            submit_whole_blocks(w, s);
        break;
    }
    inode_put(w, s);
    pthread_mutex_unlock(&w->lock);
    return rc;
}

/* Submits ino's buffered extent and waits until none of its extents is in
 * flight; then returns the kept error, and forgets it if asked. */
static int drain(struct wb *w, uint64_t ino, bool forget_error)
{
    if (atomic_load_explicit(&w->inodes, memory_order_relaxed) == 0)
        return 0; /* nothing of any inode: the common case of a read */
    pthread_mutex_lock(&w->lock);
    int rc = 0;
    struct wb_inode *s = inode_find(w, ino);
    if (s) {
        /* With nothing of the file in flight, proposed here, not by a
         * worker: a hand-off to a worker and back cost every close of a
         * small file two thread switches. Otherwise queued behind what is
         * in flight, so that the file's extents keep their order. */
        struct wb_ext *e = s->inflight ? NULL : take_buffered(s);
        if (e) {
            s->waiters++; /* s outlives e's finish */
            propose_unlocked(w, e);
            s->waiters--;
        } else {
            submit(w, s);
        }
        while (s->inflight)
            wait_done(w, s);
        rc = s->error;
        if (forget_error)
            s->error = 0;
        inode_put(w, s);
    }
    pthread_mutex_unlock(&w->lock);
    return rc;
}

int wb_drain(struct wb *w, uint64_t ino)
{
    return drain(w, ino, false);
}

int wb_sync(struct wb *w, uint64_t ino)
{
    return drain(w, ino, true);
}

int64_t wb_carry(struct wb *w, uint64_t ino, wb_carry_fn fn, void *arg)
{
    struct wb_ext *e = NULL;
    if (atomic_load_explicit(&w->inodes, memory_order_relaxed) != 0) {
        pthread_mutex_lock(&w->lock);
        struct wb_inode *s = inode_find(w, ino);
        if (s) {
            while (s->inflight)
                wait_done(w, s);
            e = take_buffered(s); /* proposed by fn, not by a worker */
            if (e && failed_unproposed(w, e))
                e = NULL; /* the request alone */
            if (!e)
                inode_put(w, s);
        }
        pthread_mutex_unlock(&w->lock);
    }
    int write_rc = 0;
    if (!e)
        return fn(arg, NULL, &write_rc);
    struct wb_extent_view v = {ino, e->offset, e->data, e->len, e->uid, e->gid};
    int64_t rc = fn(arg, &v, &write_rc);
    pthread_mutex_lock(&w->lock);
    finish(w, e, write_rc, true);
    pthread_mutex_unlock(&w->lock);
    return rc;
}

bool wb_pending(struct wb *w, uint64_t ino)
{
    if (atomic_load_explicit(&w->inodes, memory_order_relaxed) == 0)
        return false;
    pthread_mutex_lock(&w->lock);
    bool pending = inode_find(w, ino) != NULL;
    pthread_mutex_unlock(&w->lock);
    return pending;
}

void wb_stats(struct wb *w, struct wb_stats *out)
{
    pthread_mutex_lock(&w->lock);
    *out = w->stats;
    out->bytes_pending = w->bytes;
    pthread_mutex_unlock(&w->lock);
}
