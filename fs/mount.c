/* mount — `paxfs mount`: the libfuse low-level adapter; see mount.h.
 *
 * Threads:
 *
 *   FUSE workers (up to MNT_THREADS_MAX) ── reads: fsm_* after the barrier
 *        │ mutations: fsm_op_encode → replica_propose (blocks until applied)
 *        ▼
 *   replica thread ── sm_apply → fsm_apply → changes of other hosts' ops
 *        │                                    pushed into the inval queue
 *        ▼                                    (bounded; full = drop + count)
 *   notifier thread ── fuse_lowlevel_notify_inval_inode / _inval_entry
 *   orphan thread   ── every MNT_ORPHAN_PERIOD_MS: orphans this node still
 *                      holds and has no open handle on → FSM_OP_RELEASE
 *
 * Invariants:
 *  1. Every request handler ends in exactly one fuse_reply_*.
 *  2. No handler and no apply calls fuse_lowlevel_notify_*: the kernel may
 *     hold the very locks a notification needs while it waits for a reply
 *     (libfuse, notify_inval_entry). Only the notifier thread does, holding
 *     no lock of ours. The one exception is open_attr's attribute-only
 *     invalidation, which needs no such lock.
 *  3. The FUSE inode number is the fsm's inode number (FSM_ROOT_INO ==
 *     FUSE_ROOT_ID) and the generation is the fsm's; the kernel's lookup
 *     counts are not tracked (forget is a no-op).
 *  4. An inode with a local open handle is never released by this node; the
 *     open count is taken before the open reply and dropped at release (or
 *     when the open reply fails, since then no release will come).
 *  5. Kernel caches live at most -o cache_timeout (MNT_CACHE_TIMEOUT_S; 0
 *     in strict mode); invalidations make other hosts' changes, and what a
 *     snapshot install changed, visible sooner, and a lost invalidation
 *     (queue full) costs only that timeout.
 *
 * Consistency modes (-o consistency=):
 *   close-to-open  open and opendir run the read barrier and then wait (a
 *                  bounded time) until the notifier has sent every
 *                  invalidation queued so far, and drop the kernel's
 *                  attributes of the inode they open, so the attributes the
 *                  kernel uses after the open are not older than the
 *                  barrier. The page cache is dropped at every open (no
 *                  keep_cache).
 *   strict         the barrier before every read-type request; the kernel
 *                  caches nothing (timeouts 0, direct I/O on files).
 *   local          never a barrier: reads may be stale, and go on without
 *                  a quorum.
 * Writes (fs/write_behind.h): in close-to-open and local mode a write is
 * acknowledged at once and proposed in the background; close and fsync
 * wait until this host's writes of the file are applied, and every request
 * that must see them (getattr, read, lookup, setattr, truncation,
 * fallocate, an append) waits for that inode's first. In strict mode a
 * write returns once applied. The kernel's writeback cache stays off in
 * every mode: with it the kernel trusts its own file sizes over ours, and a
 * file another host extended would keep its old size here. */
#define FUSE_USE_VERSION 312

#include "fs/mount.h"
#include "fs/fsck.h"
#include "fs/transfer.h"
#include "fs/write_behind.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse3/fuse_lowlevel.h>
#include <inttypes.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "base/assert.h"
#include "base/buf.h"
#include "base/clock.h"
#include "base/log.h"
#include "fs/fsm.h"
#include "fs/store.h"
#include "net/config.h"
#include "net/host.h"

#define EXIT_RUNTIME 1
#define EXIT_USAGE 2

#define MNT_THREADS_MAX 64
#define MNT_IDLE_THREADS 16
#define MNT_CACHE_TIMEOUT_S 1.0
#define MNT_MAX_WRITE (1u << 20)
/* A FUSE write is at most MNT_MAX_WRITE; a longer one (never, today) would
 * be cut into ops of this size so each stays well inside a consensus batch. */
#define MNT_WRITE_OP_MAX (4u << 20)
/* Write-behind (fs/write_behind.h): a host's writes to one file are
 * proposed in extents of MNT_WB_CHUNK bytes (4 blocks of the default size),
 * MNT_WB_THREADS at a time, within MNT_WB_BYTES_MAX acknowledged but not yet
 * applied, each at most MNT_WB_DELAY_MS after it was written. */
#define MNT_WB_CHUNK (1u << 20)
#define MNT_WB_THREADS 8
#define MNT_WB_BYTES_MAX (64u << 20)
#define MNT_WB_DELAY_MS 20
#define MNT_INVAL_QUEUE_MAX 4096
#define MNT_INVAL_DRAIN_MS 200
#define MNT_ORPHAN_PERIOD_MS 200
#define MNT_ORPHANS_PER_RELEASE 1024
#define MNT_OPEN_BUCKETS 1024
#define MNT_REPLAY_WAIT_S 600
#define MNT_READDIR_MAX (1u << 20)

enum mnt_consistency { MNT_CLOSE_TO_OPEN, MNT_STRICT, MNT_LOCAL };

struct mnt_options {
    const char *config_path;
    uint32_t node;
    const char *data_dir;
    const char *mountpoint;
    bool foreground;
    enum mnt_consistency consistency;
    bool allow_other;
    bool debug;
    size_t cache_bytes;
    uint32_t op_timeout_ms; /* 0: the cluster's op_timeout_s */
    uint64_t snapshot_every_slots; /* 0: the replica's default */
    uint64_t log_slack_slots;      /* 0: the replica's default */
    uint64_t transfer_rate_max;    /* bytes/s of a snapshot transfer, 0: unlimited */
    uint32_t cache_timeout_s;      /* 0: MNT_CACHE_TIMEOUT_S */
};

/* One queued invalidation: an inode (attributes and data) or an entry. */
struct inval {
    bool entry;
    uint64_t ino;    /* the inode, or the entry's parent */
    uint16_t name_len;
    char name[FSM_NAME_MAX + 1];
};

struct open_ref {
    uint64_t ino;
    uint32_t count;
    struct open_ref *next;
};

struct mnt {
    struct mnt_options opt;
    uint32_t node;
    uint32_t block_size;
    double timeout_s; /* entry and attribute cache timeouts */
    struct store *store;
    struct fsm *fsm;
    struct host *host;
    struct replica *replica;
    struct xfer *_Atomic xfer; /* set once the host is up */
    struct fsck_server *_Atomic fsck;
    /* Blocks of the two newest snapshot images hold a store reference each
     * (pins), so that garbage collection keeps what a restart from either
     * snapshot, or a peer's transfer of it, needs. Under pins_lock. */
    struct pins {
        struct store_name *v;
        size_t n, cap;
    } pins[2];
    pthread_mutex_t pins_lock;
    struct fuse_session *se;
    struct wb *wb; /* this host's writes not yet applied; NULL in strict mode */

    /* open handles per inode (invariant 4) */
    pthread_mutex_t open_lock;
    struct open_ref *open[MNT_OPEN_BUCKETS];

    /* invalidation queue, a ring under q_lock */
    atomic_bool notify_on;
    pthread_mutex_t q_lock;
    pthread_cond_t q_cond;      /* items queued or stop */
    pthread_cond_t q_done_cond; /* q_done advanced */
    struct inval *q;
    size_t q_head, q_len;
    uint64_t q_enq, q_done, q_dropped;
    bool q_stop;
    bool q_asleep;              /* the notifier waits on q_cond */
    bool notifier_running;
    pthread_t notifier;

    /* orphan release thread */
    pthread_mutex_t stop_lock;
    pthread_cond_t stop_cond;
    bool stop;
    bool orphan_running;
    pthread_t orphan_thread;

    atomic_uint_fast64_t proposals, proposal_errors;
};

/* ---- small helpers ------------------------------------------------------ */

static struct mnt *req_mnt(fuse_req_t req)
{
    return fuse_req_userdata(req);
}

static struct timespec ns_to_ts(int64_t ns)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    if (ts.tv_nsec < 0) {
        ts.tv_sec -= 1;
        ts.tv_nsec += 1000000000;
    }
    return ts;
}

static int64_t ts_to_ns(struct timespec ts)
{
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void attr_to_stat(const struct mnt *m, const struct fsm_attr *a, struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_ino = a->ino;
    st->st_mode = a->mode;
    st->st_nlink = a->nlink;
    st->st_uid = a->uid;
    st->st_gid = a->gid;
    st->st_rdev = a->rdev;
    st->st_size = (off_t)a->size;
    st->st_blocks = (blkcnt_t)a->blocks;
    st->st_blksize = (blksize_t)MIN(m->block_size, MNT_MAX_WRITE);
    st->st_atim = ns_to_ts(a->atime_ns);
    st->st_mtim = ns_to_ts(a->mtime_ns);
    st->st_ctim = ns_to_ts(a->ctime_ns);
}

static void fill_entry(const struct mnt *m, const struct fsm_attr *a, struct fuse_entry_param *e)
{
    memset(e, 0, sizeof *e);
    e->ino = a->ino;
    e->generation = a->gen;
    attr_to_stat(m, a, &e->attr);
    e->attr_timeout = m->timeout_s;
    e->entry_timeout = m->timeout_s;
}

/* Replies with a positive errno from a negative one; ESHUTDOWN (the replica
 * is stopping) means nothing to an application, EIO does. */
static void reply_rc(fuse_req_t req, int64_t rc)
{
    int e = rc < 0 ? (int)-rc : 0;
    if (e == ESHUTDOWN || e == EMSGSIZE || e == EBADMSG)
        e = EIO;
    fuse_reply_err(req, e);
}

static void reply_entry_of(fuse_req_t req, uint64_t ino)
{
    struct mnt *m = req_mnt(req);
    struct fsm_attr a;
    int rc = fsm_getattr(m->fsm, ino, &a);
    if (rc != 0) {
        reply_rc(req, rc);
        return;
    }
    struct fuse_entry_param e;
    fill_entry(m, &a, &e);
    fuse_reply_entry(req, &e);
}

/* The barrier a read-type request needs: strict asks it for every read. */
static int read_barrier(struct mnt *m)
{
    if (m->opt.consistency != MNT_STRICT)
        return 0;
    return replica_read_barrier(m->replica);
}

static void wait_invalidations(struct mnt *m);

/* The barrier of open/opendir (close-to-open and strict). */
static int open_barrier(struct mnt *m)
{
    if (m->opt.consistency == MNT_LOCAL)
        return 0;
    int rc = replica_read_barrier(m->replica);
    if (rc == 0)
        wait_invalidations(m);
    return rc;
}

/* Waits until this host's pending writes of ino (fs/write_behind.h) are
 * applied, for a request that must see them: its size, its bytes, or an op
 * that the log must order after them. A failed write's error stays kept
 * for the file's next fsync or close. */
static void settle(struct mnt *m, uint64_t ino)
{
    if (m->wb)
        (void)wb_drain(m->wb, ino);
}

/* *a, read again after settle() if this host has writes of it pending: the
 * size the kernel learns from a lookup must include them. */
static int settle_attr(struct mnt *m, struct fsm_attr *a)
{
    if (!m->wb || !wb_pending(m->wb, a->ino))
        return 0;
    settle(m, a->ino);
    return fsm_getattr(m->fsm, a->ino, a);
}

/* ---- proposing ---------------------------------------------------------- */

/* An op of this node, made on behalf of uid/gid now. */
static struct fsm_op op_for(const struct mnt *m, uint8_t type, uint32_t uid, uint32_t gid)
{
    struct fsm_op op;
    memset(&op, 0, sizeof op);
    op.type = type;
    op.node = m->node;
    op.uid = uid;
    op.gid = gid;
    op.now_ns = (int64_t)clock_wall_ns();
    return op;
}

static struct fsm_op op_new(fuse_req_t req, uint8_t type)
{
    const struct fuse_ctx *c = fuse_req_ctx(req);
    return op_for(req_mnt(req), type, c->uid, c->gid);
}

/* Encodes op, proposes it and waits until it is applied here. Returns the
 * op's result (>= 0) or a negative errno (the op's, or the replica's:
 * -EIO when there is no quorum within op_timeout). */
static int64_t mnt_propose(struct mnt *m, const struct fsm_op *op)
{
    struct buf b;
    buf_init(&b);
    int64_t result;
    int rc = fsm_op_encode(op, &b);
    if (rc == 0)
        rc = replica_propose(m->replica, b.data, b.len, &result);
    buf_deinit(&b);
    atomic_fetch_add(&m->proposals, 1);
    if (rc != 0) {
        atomic_fetch_add(&m->proposal_errors, 1);
        LOG_W("node=%u event=propose op=%u error=%d", m->node, op->type, rc);
        return rc;
    }
    return result;
}

static int check_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0)
        return -ENOENT;
    if (n > FSM_NAME_MAX)
        return -ENAMETOOLONG;
    return 0;
}

static void set_name(struct fsm_op *op, const char *name)
{
    op->name = name;
    op->name_len = (uint32_t)strlen(name);
}

static void set_new_name(struct fsm_op *op, const char *name)
{
    op->new_name = name;
    op->new_name_len = (uint32_t)strlen(name);
}

/* ---- open handles (invariant 4) ----------------------------------------- */

static size_t open_bucket(uint64_t ino)
{
    return (size_t)((ino * 0x9e3779b97f4a7c15ull) >> 54) % MNT_OPEN_BUCKETS;
}

static void open_ref(struct mnt *m, uint64_t ino)
{
    pthread_mutex_lock(&m->open_lock);
    struct open_ref **pp = &m->open[open_bucket(ino)];
    struct open_ref *o = *pp;
    while (o && o->ino != ino)
        o = o->next;
    if (!o) {
        o = calloc(1, sizeof *o);
        ASSERT(o != NULL);
        o->ino = ino;
        o->next = *pp;
        *pp = o;
    }
    o->count++;
    pthread_mutex_unlock(&m->open_lock);
}

static void open_unref(struct mnt *m, uint64_t ino)
{
    pthread_mutex_lock(&m->open_lock);
    struct open_ref **pp = &m->open[open_bucket(ino)];
    while (*pp && (*pp)->ino != ino)
        pp = &(*pp)->next;
    struct open_ref *o = *pp;
    if (NEVER(!o)) {
        pthread_mutex_unlock(&m->open_lock);
        LOG_E("node=%u event=release ino=%" PRIu64 " error=\"not open\"", m->node, ino);
        return;
    }
    if (--o->count == 0) {
        *pp = o->next;
        free(o);
    }
    pthread_mutex_unlock(&m->open_lock);
}

static bool open_held(struct mnt *m, uint64_t ino)
{
    pthread_mutex_lock(&m->open_lock);
    struct open_ref *o = m->open[open_bucket(ino)];
    while (o && o->ino != ino)
        o = o->next;
    pthread_mutex_unlock(&m->open_lock);
    return o != NULL;
}

static void open_free_all(struct mnt *m)
{
    for (size_t i = 0; i < MNT_OPEN_BUCKETS; i++) {
        while (m->open[i]) {
            struct open_ref *o = m->open[i];
            m->open[i] = o->next;
            free(o);
        }
    }
}

/* ---- the invalidation queue and the notifier thread --------------------- */

/* Called on the replica thread (from apply): never blocks on the kernel. */
static void inval_push(struct mnt *m, bool entry, uint64_t ino, const char *name, size_t len)
{
    if (ino == 0 || len > FSM_NAME_MAX)
        return;
    pthread_mutex_lock(&m->q_lock);
    if (m->q_len == MNT_INVAL_QUEUE_MAX) {
        m->q_dropped++;
        pthread_mutex_unlock(&m->q_lock);
        return;
    }
    struct inval *it = &m->q[(m->q_head + m->q_len) % MNT_INVAL_QUEUE_MAX];
    it->entry = entry;
    it->ino = ino;
    it->name_len = (uint16_t)len;
    if (len)
        memcpy(it->name, name, len);
    it->name[len] = 0;
    m->q_len++;
    m->q_enq++;
    /* Woken once per batch, and outside the lock: woken under it, the
     * notifier would block on the lock at once and need a second wakeup. */
    bool wake = m->q_asleep;
    m->q_asleep = false;
    pthread_mutex_unlock(&m->q_lock);
    if (wake)
        pthread_cond_signal(&m->q_cond);
}

/* After one apply: tells the kernel about what changed, unless this node
 * proposed the op (the kernel learnt the result from our reply). An append
 * is the exception: the kernel guessed the offset from its cached size. */
static void queue_changes(struct mnt *m, const uint8_t *data, size_t len,
                          const struct fsm_changes *ch)
{
    struct fsm_op op;
    if (fsm_op_decode(data, len, &op) != 0)
        return; /* changed nothing */
    bool local = op.node == m->node;
    if (local && !(op.type == FSM_OP_WRITE && (op.flags & FSM_WRITE_APPEND)))
        return;
    if (local) {
        inval_push(m, false, op.ino, NULL, 0);
        return;
    }
    for (uint32_t i = 0; i < ch->n_inodes && i < FSM_CHANGES_MAX; i++)
        inval_push(m, false, ch->inodes[i], NULL, 0);
    for (uint32_t i = 0; i < ch->n_entries && i < ARRAY_LEN(ch->entries); i++)
        inval_push(m, true, ch->entries[i].parent, ch->entries[i].name,
                   strnlen(ch->entries[i].name, FSM_NAME_MAX));
    if (ch->overflow) {
        /* More changed than the record holds: everything the op names. */
        inval_push(m, false, op.ino, NULL, 0);
        inval_push(m, false, op.parent, NULL, 0);
        inval_push(m, false, op.new_parent, NULL, 0);
        if (op.name_len)
            inval_push(m, true, op.parent, op.name, op.name_len);
        if (op.new_name_len)
            inval_push(m, true, op.new_parent ? op.new_parent : op.parent, op.new_name,
                       op.new_name_len);
    }
}

static void *notifier_main(void *arg)
{
    struct mnt *m = arg;
    pthread_setname_np(pthread_self(), "paxfs-inval");
    struct inval it;
    pthread_mutex_lock(&m->q_lock);
    while (!m->q_stop) {
        if (m->q_len == 0) {
            m->q_asleep = true;
            pthread_cond_wait(&m->q_cond, &m->q_lock);
            m->q_asleep = false;
            continue;
        }
        it = m->q[m->q_head];
        m->q_head = (m->q_head + 1) % MNT_INVAL_QUEUE_MAX;
        m->q_len--;
        pthread_mutex_unlock(&m->q_lock);
        /* -ENOENT: the kernel does not cache it; nothing to do. */
        int rc = it.entry
            ? fuse_lowlevel_notify_inval_entry(m->se, it.ino, it.name, it.name_len)
            : fuse_lowlevel_notify_inval_inode(m->se, it.ino, 0, 0);
        if (rc != 0 && rc != -ENOENT)
            LOG_D("node=%u event=inval ino=%" PRIu64 " entry=%d error=%d", m->node, it.ino,
                  it.entry, rc);
        pthread_mutex_lock(&m->q_lock);
        m->q_done++;
        pthread_cond_broadcast(&m->q_done_cond);
    }
    pthread_mutex_unlock(&m->q_lock);
    return NULL;
}

/* Waits, at most MNT_INVAL_DRAIN_MS, until every invalidation queued before
 * the call has been sent. Bounded because a notification can wait for a
 * kernel lock that an unrelated request in flight holds. */
static void wait_invalidations(struct mnt *m)
{
    struct timespec until;
    deadline_in_ms(&until, MNT_INVAL_DRAIN_MS);
    pthread_mutex_lock(&m->q_lock);
    uint64_t target = m->q_enq;
    while (m->notifier_running && m->q_done < target && !m->q_stop)
        if (pthread_cond_timedwait(&m->q_done_cond, &m->q_lock, &until) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&m->q_lock);
}

/* ---- the state machine the replica drives ------------------------------- */

static int64_t sm_apply(void *ctx, uint64_t slot, const uint8_t *data, size_t len)
{
    struct mnt *m = ctx;
    if (fsck_server_apply(atomic_load(&m->fsck), slot, data, len))
        return 0; /* an fsck mark: digests recorded, the state unchanged */
    struct fsm_changes ch;
    memset(&ch, 0, sizeof ch);
    int64_t result = fsm_apply(m->fsm, data, len, &ch);
    if (atomic_load(&m->notify_on))
        queue_changes(m, data, len, &ch);
    return result;
}

/* ---- snapshots ------------------------------------------------------------ */

static int pin_block(void *ctx, uint64_t ino, uint64_t index, const struct store_name *name,
                     uint32_t len)
{
    (void)ino;
    (void)index;
    (void)len;
    struct pins *p = ctx;
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 256;
        p->v = realloc(p->v, p->cap * sizeof *p->v);
        ASSERT(p->v != NULL);
    }
    p->v[p->n++] = *name;
    return 0;
}

static void pins_drop(struct mnt *m, struct pins *p)
{
    for (size_t i = 0; i < p->n; i++)
        store_unref(m->store, &p->v[i]);
    free(p->v);
    memset(p, 0, sizeof *p);
}

/* The image is the newest snapshot's: pin its blocks, unpin the oldest.
 * The snapshot thread and (for an install) the replica thread call it. */
static void pin_image(struct mnt *m, const uint8_t *image, size_t len)
{
    struct pins p = {0};
    if (fsm_image_blocks(image, len, pin_block, &p) != 0) {
        free(p.v);
        return;
    }
    for (size_t i = 0; i < p.n; i++)
        store_ref(m->store, &p.v[i]);
    pthread_mutex_lock(&m->pins_lock);
    struct pins oldest = m->pins[1];
    m->pins[1] = m->pins[0];
    m->pins[0] = p;
    pthread_mutex_unlock(&m->pins_lock);
    pins_drop(m, &oldest);
}

static int sm_snapshot_begin(void *ctx)
{
    struct mnt *m = ctx;
    return fsm_image_begin(m->fsm);
}

static int sm_snapshot_image(void *ctx, struct buf *out)
{
    struct mnt *m = ctx;
    return fsm_image_finish(m->fsm, out);
}

/* A restore's change (fsm_restore_fn): the kernel may cache the old one. */
static void restore_changed(void *ctx, uint64_t ino, const char *name, size_t len)
{
    struct mnt *m = ctx;
    if (atomic_load(&m->notify_on))
        inval_push(m, name != NULL, ino, name, len);
}

static int sm_restore(void *ctx, const uint8_t *image, size_t len)
{
    struct mnt *m = ctx;
    int rc = fsm_image_restore_changes(m->fsm, image, len, restore_changed, m);
    if (rc != 0)
        return rc;
    pin_image(m, image, len);
    return 0;
}

/* Before the snapshot of image is written (the snapshot thread; the log
 * that could redo the deferred block writes goes after it): the image's
 * blocks are pinned (applies meanwhile may drop their references, but only
 * the store_gc below frees anything), the deferred writes become durable,
 * and blocks nothing references any more (neither the state nor the two
 * newest snapshots) are collected. */
static int sm_sync(void *ctx, const uint8_t *image, size_t len)
{
    struct mnt *m = ctx;
    pin_image(m, image, len);
    int rc = store_sync(m->store);
    if (rc == 0)
        rc = store_gc(m->store, NULL);
    return rc;
}

static void sm_snapshot_needed(void *ctx, uint32_t from, uint64_t slot)
{
    struct mnt *m = ctx;
    struct xfer *x = atomic_load(&m->xfer);
    if (x)
        xfer_snapshot_needed(x, from, slot);
}

static void on_peer_frame(void *ctx, uint32_t from, uint8_t type, const uint8_t *payload,
                          size_t len)
{
    struct mnt *m = ctx;
    struct xfer *x = atomic_load(&m->xfer);
    if (x && type == NET_FRAME_BULK)
        xfer_on_frame(x, from, payload, len);
}

static int fsck_reply(void *ctx, uint64_t client, const void *payload, size_t len)
{
    struct mnt *m = ctx;
    return net_client_reply(host_net(m->host), client, payload, len);
}

static void on_client_req(void *ctx, uint64_t client, const uint8_t *payload, size_t len)
{
    struct mnt *m = ctx;
    struct fsck_server *f = atomic_load(&m->fsck);
    if (f) {
        fsck_server_request(f, client, payload, len);
    } else {
        uint8_t busy[4];
        le_put_u32(busy, (uint32_t)-EBUSY); /* starting or stopping */
        fsck_reply(m, client, busy, sizeof busy);
    }
}

static int send_bulk(void *ctx, uint32_t to, struct buf *frame)
{
    struct mnt *m = ctx;
    return host_send_frame(m->host, to, NET_FRAME_BULK, frame);
}

static void status_extra(void *ctx, struct net_status_reply *out)
{
    struct mnt *m = ctx;
    struct xfer *x = atomic_load(&m->xfer);
    if (x) {
        struct xfer_progress p;
        xfer_get_progress(x, &p);
        out->xfer_state = (enum net_status_xfer)p.state;
        out->xfer_bytes_done = p.bytes_done;
        out->xfer_bytes_total = p.bytes_total;
        out->xfer_rate = p.rate;
    }
    struct store_stats st;
    store_get_stats(m->store, &st);
    out->blocks_repaired = st.repaired;
}

/* ---- orphan release ----------------------------------------------------- */

/* One pass: releases the orphans this node holds and has not open. */
static void release_orphans(struct mnt *m, uint64_t *held)
{
    size_t n = fsm_orphans_held(m->fsm, m->node, held, MNT_ORPHANS_PER_RELEASE);
    if (n > MNT_ORPHANS_PER_RELEASE)
        n = MNT_ORPHANS_PER_RELEASE;
    struct buf ids;
    buf_init(&ids);
    uint32_t count = 0;
    for (size_t i = 0; i < n; i++) {
        if (open_held(m, held[i]))
            continue;
        buf_put_u64(&ids, held[i]);
        count++;
    }
    if (count) {
        struct fsm_op op;
        memset(&op, 0, sizeof op);
        op.type = FSM_OP_RELEASE;
        op.node = m->node;
        op.now_ns = (int64_t)clock_wall_ns();
        op.data = ids.data;
        op.data_len = (uint32_t)ids.len;
        int64_t rc = mnt_propose(m, &op);
        LOG_D("node=%u event=release_orphans count=%u rc=%" PRId64, m->node, count, rc);
    }
    buf_deinit(&ids);
}

static void *orphan_main(void *arg)
{
    struct mnt *m = arg;
    pthread_setname_np(pthread_self(), "paxfs-orphans");
    uint64_t *held = calloc(MNT_ORPHANS_PER_RELEASE, sizeof *held);
    ASSERT(held != NULL);
    pthread_mutex_lock(&m->stop_lock);
    while (!m->stop) {
        pthread_mutex_unlock(&m->stop_lock);
        release_orphans(m, held);
        struct timespec until;
        deadline_in_ms(&until, MNT_ORPHAN_PERIOD_MS);
        pthread_mutex_lock(&m->stop_lock);
        if (!m->stop)
            pthread_cond_timedwait(&m->stop_cond, &m->stop_lock, &until);
    }
    pthread_mutex_unlock(&m->stop_lock);
    free(held);
    return NULL;
}

/* ---- FUSE: session ------------------------------------------------------ */

static void mnt_init(void *userdata, struct fuse_conn_info *conn)
{
    struct mnt *m = userdata;
    conn->max_write = MNT_MAX_WRITE; /* libfuse caps it to its buffer size */
    /* Writeback caching would acknowledge writes before they are committed. */
    conn->want &= ~(unsigned)FUSE_CAP_WRITEBACK_CACHE;
    /* Open with O_TRUNC arrives as one open (one op), not setattr + open. */
    if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
        conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
    conn->time_gran = 1;
    LOG_I("node=%u event=fuse_init max_write=%u proto=%u.%u", m->node, conn->max_write,
          conn->proto_major, conn->proto_minor);
}

/* ---- FUSE: reads -------------------------------------------------------- */

static void mnt_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct mnt *m = req_mnt(req);
    int rc = check_name(name);
    if (rc == 0)
        rc = read_barrier(m);
    struct fsm_attr a;
    if (rc == 0)
        rc = fsm_lookup(m->fsm, parent, name, &a);
    if (rc == -ENOENT && m->opt.consistency == MNT_CLOSE_TO_OPEN) {
        /* This replica may lag (it just restarted, or a create elsewhere
         * has not been applied here yet): a name is absent only once this
         * node has applied everything chosen before the lookup. Otherwise
         * open("path") of a file another host created and closed could
         * fail, and close-to-open promises it does not. */
        rc = replica_read_barrier(m->replica);
        if (rc == 0)
            rc = fsm_lookup(m->fsm, parent, name, &a);
    }
    if (rc != 0) {
        /* No negative entry: a name created elsewhere must show at once. */
        reply_rc(req, rc);
        return;
    }
    rc = settle_attr(m, &a);
    if (rc != 0) {
        reply_rc(req, rc);
        return;
    }
    struct fuse_entry_param e;
    fill_entry(m, &a, &e);
    fuse_reply_entry(req, &e);
}

static void mnt_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
    (void)ino;
    (void)nlookup;
    fuse_reply_none(req); /* invariant 3: lookup counts are not tracked */
}

static void mnt_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
    (void)count;
    (void)forgets;
    fuse_reply_none(req);
}

static void reply_attr_of(fuse_req_t req, uint64_t ino)
{
    struct mnt *m = req_mnt(req);
    struct fsm_attr a;
    int rc = fsm_getattr(m->fsm, ino, &a);
    if (rc != 0) {
        reply_rc(req, rc);
        return;
    }
    struct stat st;
    attr_to_stat(m, &a, &st);
    fuse_reply_attr(req, &st, m->timeout_s);
}

static void mnt_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)fi;
    struct mnt *m = req_mnt(req);
    settle(m, ino);
    int rc = read_barrier(m);
    if (rc != 0) {
        reply_rc(req, rc);
        return;
    }
    reply_attr_of(req, ino);
}

static void mnt_readlink(fuse_req_t req, fuse_ino_t ino)
{
    struct mnt *m = req_mnt(req);
    char target[FSM_SYMLINK_MAX + 1];
    size_t len = 0;
    int rc = read_barrier(m);
    if (rc == 0)
        rc = fsm_readlink(m->fsm, ino, target, sizeof target - 1, &len);
    if (rc != 0) {
        reply_rc(req, rc);
        return;
    }
    target[MIN(len, sizeof target - 1)] = 0;
    fuse_reply_readlink(req, target);
}

static void mnt_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
    (void)fi;
    struct mnt *m = req_mnt(req);
    if (off < 0) {
        fuse_reply_err(req, EINVAL);
        return;
    }
    settle(m, ino);
    int rc = read_barrier(m);
    if (rc != 0) {
        reply_rc(req, rc);
        return;
    }
    size = MIN(size, (size_t)MNT_MAX_WRITE * 4);
    char *buf = malloc(size ? size : 1);
    if (!buf) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    size_t got = 0;
    rc = fsm_read(m->fsm, ino, (uint64_t)off, size, buf, &got);
    if (rc != 0)
        reply_rc(req, rc);
    else
        fuse_reply_buf(req, buf, got);
    free(buf);
}

struct dir_fill {
    fuse_req_t req;
    struct mnt *m;
    bool plus;
    char *buf;
    size_t cap, used;
};

/* One entry into a READDIR or READDIRPLUS reply. READDIRPLUS hands the
 * kernel each entry's attributes as a lookup of it would, so that `ls -l`
 * or `find | stat` need no lookup per entry; the kernel's copies are kept
 * fresh by the same invalidations as a lookup's. A file with writes of this
 * host still pending goes without them (node id 0): its size must include
 * those writes, which only a lookup waits for (settle_attr), and nothing
 * may wait here, under the fsm's read lock. */
static int dir_fill_one(void *ctx, const char *name, const struct fsm_attr *a, uint64_t cookie)
{
    struct dir_fill *d = ctx;
    char *at = d->buf + d->used;
    size_t room = d->cap - d->used, need;
    if (d->plus) {
        struct fuse_entry_param e;
        fill_entry(d->m, a, &e);
        if (d->m->wb && wb_pending(d->m->wb, a->ino))
            e.ino = 0;
        need = fuse_add_direntry_plus(d->req, at, room, name, &e, (off_t)cookie);
    } else {
        struct stat st;
        memset(&st, 0, sizeof st);
        st.st_ino = a->ino;
        st.st_mode = a->mode;
        need = fuse_add_direntry(d->req, at, room, name, &st, (off_t)cookie);
    }
    if (need > room)
        return 1; /* full (nothing written): the kernel asks again from the last cookie */
    d->used += need;
    return 0;
}

static void reply_dir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus)
{
    struct mnt *m = req_mnt(req);
    int rc = read_barrier(m);
    if (rc != 0) {
        reply_rc(req, rc);
        return;
    }
    struct dir_fill d = {req, m, plus, NULL, MIN(size, (size_t)MNT_READDIR_MAX), 0};
    d.buf = malloc(d.cap ? d.cap : 1);
    if (!d.buf) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    rc = fsm_readdir(m->fsm, ino, (uint64_t)off, dir_fill_one, &d);
    if (rc < 0)
        reply_rc(req, rc);
    else
        fuse_reply_buf(req, d.buf, d.used);
    free(d.buf);
}

static void mnt_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                        struct fuse_file_info *fi)
{
    (void)fi;
    reply_dir(req, ino, size, off, false);
}

static void mnt_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                            struct fuse_file_info *fi)
{
    (void)fi;
    reply_dir(req, ino, size, off, true);
}

static void mnt_statfs(fuse_req_t req, fuse_ino_t ino)
{
    (void)ino;
    struct mnt *m = req_mnt(req);
    struct fsm_statfs fs;
    fsm_statfs(m->fsm, &fs);
    /* Space is what this replica's disk has: every replica stores every block. */
    struct statvfs disk;
    if (statvfs(m->opt.data_dir, &disk) != 0)
        memset(&disk, 0, sizeof disk);
    struct statvfs sv;
    memset(&sv, 0, sizeof sv);
    sv.f_bsize = MIN(m->block_size, MNT_MAX_WRITE);
    sv.f_frsize = disk.f_frsize ? disk.f_frsize : 4096;
    sv.f_blocks = disk.f_blocks;
    sv.f_bfree = disk.f_bfree;
    sv.f_bavail = disk.f_bavail;
    sv.f_ffree = (fsblkcnt_t)1 << 32;
    sv.f_favail = sv.f_ffree;
    sv.f_files = fs.inodes + sv.f_ffree;
    sv.f_namemax = FSM_NAME_MAX;
    fuse_reply_statfs(req, &sv);
}

static void mnt_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
    struct mnt *m = req_mnt(req);
    int rc = read_barrier(m);
    if (rc != 0) {
        reply_rc(req, rc);
        return;
    }
    size_t len = 0;
    if (size == 0) {
        rc = fsm_getxattr(m->fsm, ino, name, NULL, 0, &len);
        if (rc != 0)
            reply_rc(req, rc);
        else
            fuse_reply_xattr(req, len);
        return;
    }
    size = MIN(size, (size_t)FSM_XATTR_VALUE_MAX);
    char *buf = malloc(size);
    if (!buf) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    rc = fsm_getxattr(m->fsm, ino, name, buf, size, &len);
    if (rc != 0)
        reply_rc(req, rc);
    else
        fuse_reply_buf(req, buf, len);
    free(buf);
}

static void mnt_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
    struct mnt *m = req_mnt(req);
    int rc = read_barrier(m);
    if (rc != 0) {
        reply_rc(req, rc);
        return;
    }
    size_t len = 0;
    if (size == 0) {
        rc = fsm_listxattr(m->fsm, ino, NULL, 0, &len);
        if (rc != 0)
            reply_rc(req, rc);
        else
            fuse_reply_xattr(req, len);
        return;
    }
    size = MIN(size, (size_t)XATTR_LIST_MAX);
    char *buf = malloc(size);
    if (!buf) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    rc = fsm_listxattr(m->fsm, ino, buf, size, &len);
    if (rc != 0)
        reply_rc(req, rc);
    else
        fuse_reply_buf(req, buf, len);
    free(buf);
}

/* ---- FUSE: opens -------------------------------------------------------- */

static int truncate_to_zero(fuse_req_t req, uint64_t ino)
{
    settle(req_mnt(req), ino); /* the truncation comes after our writes */
    struct fsm_op op = op_new(req, FSM_OP_SETATTR);
    op.ino = ino;
    op.flags = FSM_SET_SIZE;
    op.attr.size = 0;
    int64_t rc = mnt_propose(req_mnt(req), &op);
    return rc < 0 ? (int)rc : 0;
}

/* Takes the open reference (invariant 4) and replies; fi->fh keeps the open
 * flags, for O_APPEND at write time. */
static void reply_opened(fuse_req_t req, uint64_t ino, struct fuse_file_info *fi,
                         const struct fuse_entry_param *created)
{
    struct mnt *m = req_mnt(req);
    fi->fh = (uint64_t)(unsigned)fi->flags;
    fi->keep_cache = 0; /* close-to-open: drop the page cache at every open */
    /* strict: every read reaches read() and its barrier, none is served
     * from the page cache (mmap then needs MAP_PRIVATE). */
    fi->direct_io = m->opt.consistency == MNT_STRICT;
    open_ref(m, ino);
    int rc = created ? fuse_reply_create(req, created, fi) : fuse_reply_open(req, fi);
    if (rc != 0)
        open_unref(m, ino); /* the open never reached the kernel: no release */
}

/* After open's barrier: the inode's attributes now, and in close-to-open
 * mode the kernel's cached ones dropped, so that the size it reads up to
 * is not older than the barrier even if an invalidation was lost (a full
 * queue, or one that reached the kernel before a lookup's reply made the
 * inode there). Attributes only: that takes no kernel lock a request may
 * hold, so the handler sends it itself (invariant 2's one exception). An
 * inode that is gone is -ESTALE: the kernel then looks the path up again
 * instead of failing on the stale entry it opened by. */
static int open_attr(struct mnt *m, uint64_t ino, struct fsm_attr *a)
{
    int rc = fsm_getattr(m->fsm, ino, a);
    if (rc == -ENOENT)
        return -ESTALE;
    if (rc == 0 && m->opt.consistency == MNT_CLOSE_TO_OPEN)
        (void)fuse_lowlevel_notify_inval_inode(m->se, ino, -1, 0);
    return rc;
}

static void mnt_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct mnt *m = req_mnt(req);
    int rc = open_barrier(m);
    struct fsm_attr a;
    if (rc == 0)
        rc = open_attr(m, ino, &a);
    if (rc == 0 && S_ISDIR(a.mode) && (fi->flags & O_ACCMODE) != O_RDONLY)
        rc = -EISDIR;
    if (rc == 0 && (fi->flags & O_TRUNC) && (fi->flags & O_ACCMODE) != O_RDONLY &&
        S_ISREG(a.mode) && a.size != 0)
        rc = truncate_to_zero(req, ino);
    if (rc != 0) {
        reply_rc(req, rc);
        return;
    }
    reply_opened(req, ino, fi, NULL);
}

static void mnt_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)fi;
    struct mnt *m = req_mnt(req);
    settle(m, ino); /* (mmap writes may come after the last flush) */
    open_unref(m, ino);
    fuse_reply_err(req, 0);
}

/* close() and fsync() return once every earlier write of the file from
 * this host is committed and applied, with the first error of those
 * writes not yet reported (DESIGN.md, durability). Applied means in a
 * majority's WAL, so there is nothing more for fsync to sync. */
static void sync_reply(fuse_req_t req, fuse_ino_t ino)
{
    struct mnt *m = req_mnt(req);
    int rc = m->wb ? wb_sync(m->wb, ino) : 0;
    reply_rc(req, rc);
}

static void mnt_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)fi;
    sync_reply(req, ino);
}

static void mnt_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    (void)datasync;
    (void)fi;
    sync_reply(req, ino);
}

static void mnt_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct mnt *m = req_mnt(req);
    int rc = open_barrier(m);
    struct fsm_attr a;
    if (rc == 0)
        rc = open_attr(m, ino, &a);
    if (rc == 0 && !S_ISDIR(a.mode))
        rc = -ENOTDIR;
    if (rc != 0) {
        reply_rc(req, rc);
        return;
    }
    fi->fh = 0;
    fuse_reply_open(req, fi);
}

static void mnt_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    (void)fi;
    fuse_reply_err(req, 0);
}

static void mnt_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync,
                         struct fuse_file_info *fi)
{
    (void)ino;
    (void)datasync;
    (void)fi;
    fuse_reply_err(req, 0);
}

/* ---- FUSE: mutations ---------------------------------------------------- */

/* Proposes an op that creates an inode and replies with its entry. */
static void propose_entry(fuse_req_t req, const struct fsm_op *op)
{
    int64_t rc = mnt_propose(req_mnt(req), op);
    if (rc <= 0) {
        reply_rc(req, rc < 0 ? rc : -EIO);
        return;
    }
    reply_entry_of(req, (uint64_t)rc);
}

static void mnt_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      dev_t rdev)
{
    int rc = check_name(name);
    if (rc != 0) {
        reply_rc(req, rc);
        return;
    }
    if (S_ISDIR(mode) || S_ISLNK(mode)) {
        fuse_reply_err(req, EINVAL);
        return;
    }
    struct fsm_op op = op_new(req, FSM_OP_MKNOD);
    op.parent = parent;
    set_name(&op, name);
    op.mode = mode & ~(fuse_req_ctx(req)->umask & 0777);
    if (!(op.mode & S_IFMT))
        op.mode |= S_IFREG;
    op.rdev = rdev;
    propose_entry(req, &op);
}

static void mnt_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    int rc = check_name(name);
    if (rc != 0) {
        reply_rc(req, rc);
        return;
    }
    struct fsm_op op = op_new(req, FSM_OP_MKDIR);
    op.parent = parent;
    set_name(&op, name);
    op.mode = S_IFDIR | (mode & ~(fuse_req_ctx(req)->umask & 0777) & 07777);
    propose_entry(req, &op);
}

static void mnt_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
    int rc = check_name(name);
    size_t n = strlen(link);
    if (rc == 0 && (n == 0 || n > FSM_SYMLINK_MAX))
        rc = n ? -ENAMETOOLONG : -ENOENT;
    if (rc != 0) {
        reply_rc(req, rc);
        return;
    }
    struct fsm_op op = op_new(req, FSM_OP_SYMLINK);
    op.parent = parent;
    set_name(&op, name);
    op.data = (const uint8_t *)link;
    op.data_len = (uint32_t)n;
    propose_entry(req, &op);
}

static void mnt_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
    int rc = check_name(newname);
    if (rc != 0) {
        reply_rc(req, rc);
        return;
    }
    struct fsm_op op = op_new(req, FSM_OP_LINK);
    op.ino = ino;
    op.new_parent = newparent;
    set_new_name(&op, newname);
    int64_t r = mnt_propose(req_mnt(req), &op);
    if (r < 0) {
        reply_rc(req, r);
        return;
    }
    reply_entry_of(req, ino);
}

static void propose_reply_err(fuse_req_t req, const struct fsm_op *op)
{
    int64_t rc = mnt_propose(req_mnt(req), op);
    reply_rc(req, rc < 0 ? rc : 0);
}

static void mnt_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    int rc = check_name(name);
    if (rc != 0) {
        reply_rc(req, rc);
        return;
    }
    struct fsm_op op = op_new(req, FSM_OP_UNLINK);
    op.parent = parent;
    set_name(&op, name);
    propose_reply_err(req, &op);
}

static void mnt_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    int rc = check_name(name);
    if (rc != 0) {
        reply_rc(req, rc);
        return;
    }
    struct fsm_op op = op_new(req, FSM_OP_RMDIR);
    op.parent = parent;
    set_name(&op, name);
    propose_reply_err(req, &op);
}

static void mnt_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                       const char *newname, unsigned int flags)
{
    int rc = check_name(name);
    if (rc == 0)
        rc = check_name(newname);
    if (rc == 0 && (flags & ~(unsigned)(RENAME_NOREPLACE | RENAME_EXCHANGE)))
        rc = -EINVAL; /* RENAME_WHITEOUT is for overlay filesystems */
    if (rc != 0) {
        reply_rc(req, rc);
        return;
    }
    struct fsm_op op = op_new(req, FSM_OP_RENAME);
    op.parent = parent;
    set_name(&op, name);
    op.new_parent = newparent;
    set_new_name(&op, newname);
    op.flags = flags;
    propose_reply_err(req, &op);
}

/* Proposes [off, off + size) of ino as whole aligned blocks, hashed and
 * compressed here, once, and shipped encoded (FSM_WRITE_BLOCKS), so that no
 * replica hashes or compresses them again at apply. The blocks' bytes are
 * in the op either way; encoded, they are often fewer. Returns the op's
 * result; *proposed false (nothing proposed) if a block could not be
 * encoded: the caller sends plain bytes then, and reports what that does. */
static int64_t propose_blocks(struct mnt *m, const struct fsm_op *proto, const uint8_t *buf,
                              size_t size, bool *proposed)
{
    size_t bs = m->block_size;
    size_t count = size / bs;
    size_t fmax = store_file_max(m->block_size);
    struct buf b;
    buf_init(&b);
    buf_reserve(&b, count * (FSM_WRITE_BLOCK_ENTRY_HDR + fmax));
    *proposed = false;
    for (size_t k = 0; k < count; k++) {
        const uint8_t *p = buf + k * bs;
        struct store_name name = STORE_NAME_NONE;
        size_t len = 0;
        size_t at = b.len;
        buf_append_space(&b, FSM_WRITE_BLOCK_ENTRY_HDR + fmax);
        if (!mem_is_zero(p, bs) &&
            store_encode(m->store, p, bs, &name, b.data + at + FSM_WRITE_BLOCK_ENTRY_HDR, fmax,
                         &len) != 0) {
            buf_deinit(&b);
            return 0;
        }
        memcpy(b.data + at, name.b, STORE_NAME_LEN);
        uint8_t le[4] = {(uint8_t)len, (uint8_t)(len >> 8), (uint8_t)(len >> 16),
                         (uint8_t)(len >> 24)};
        memcpy(b.data + at + STORE_NAME_LEN, le, 4);
        b.len = at + FSM_WRITE_BLOCK_ENTRY_HDR + len;
    }
    struct fsm_op op = *proto;
    op.flags = FSM_WRITE_BLOCKS | (proto->flags & FSM_WRITE_SETATTR);
    op.data = b.data;
    op.data_len = (uint32_t)b.len;
    *proposed = true;
    int64_t rc = mnt_propose(m, &op);
    buf_deinit(&b);
    return rc;
}

/* Proposes [off, off + size) of proto->ino as write ops of at most
 * MNT_WRITE_OP_MAX bytes each: whole aligned blocks encoded here
 * (propose_blocks), an unaligned head and tail, and anything that could not
 * be encoded, as plain bytes. With FSM_WRITE_APPEND in proto->flags, plain
 * ops that the log places at the end of the file. With FSM_WRITE_SETATTR,
 * the last op carries proto's setattr and *setattr_rc gets its result; it
 * stays 1 (not proposed) if an earlier op failed. Returns the bytes written
 * (short after an error once some went in) or a negative errno. */
static int64_t propose_write(struct mnt *m, const struct fsm_op *proto, const uint8_t *buf,
                             size_t size, uint64_t off, int *setattr_rc)
{
    bool append = (proto->flags & FSM_WRITE_APPEND) != 0;
    size_t bs = m->block_size;
    size_t done = 0;
    int64_t rc = 0;
    if (setattr_rc)
        *setattr_rc = 1;
    /* Each pass writes at least one byte: bounded by size. */
    while (done < size) {
        uint64_t at = off + done;
        size_t n = MIN(size - done, (size_t)MNT_WRITE_OP_MAX);
        size_t head = at % bs ? (size_t)(bs - at % bs) : 0;
        bool blocks = !append && head == 0 && n >= bs;
        if (blocks)
            n -= n % bs;
        else if (!append && head > 0)
            n = MIN(n, head); /* the head alone, so the rest is aligned */
        struct fsm_op op = *proto;
        op.offset = at;
        if (done + n < size)
            op.flags &= ~FSM_WRITE_SETATTR; /* it rides on the last op */
        bool proposed = false;
        if (blocks)
            rc = propose_blocks(m, &op, buf + done, n, &proposed);
        if (!proposed) {
            op.data = buf + done;
            op.data_len = (uint32_t)n;
            rc = mnt_propose(m, &op);
        }
        if (op.flags & FSM_WRITE_SETATTR) {
            int write_rc = fsm_carried_write_rc(rc);
            *setattr_rc = fsm_carried_setattr_rc(rc);
            rc = write_rc < 0 ? write_rc : (int64_t)n;
        }
        if (rc < 0)
            break;
        done += MIN((size_t)rc, n);
        if ((size_t)rc < n)
            break;
    }
    if (done == 0 && rc < 0)
        return rc;
    return (int64_t)done;
}

/* The write-behind's proposer (fs/write_behind.h). */
static int wb_propose(void *ctx, const struct wb_extent_view *e)
{
    struct mnt *m = ctx;
    struct fsm_op op = op_for(m, FSM_OP_WRITE, e->uid, e->gid);
    op.ino = e->ino;
    int64_t rc = propose_write(m, &op, e->data, e->len, e->offset, NULL);
    if (rc < 0)
        return (int)rc;
    return (size_t)rc < e->len ? -EIO : 0;
}

/* wb_carry's proposer for a setattr (fs/write_behind.h): the buffered
 * extent's last write op carries the setattr (FSM_WRITE_SETATTR) when both
 * are of the same caller, since one op has one uid and gid; otherwise, or
 * if the write failed before its last op, the setattr goes alone after. */
struct carried_setattr {
    struct mnt *m;
    const struct fsm_op *op;
};

static int64_t propose_carried_setattr(void *arg, const struct wb_extent_view *e, int *write_rc)
{
    struct carried_setattr *c = arg;
    struct mnt *m = c->m;
    const struct fsm_op *sa = c->op;
    int setattr_rc = 1;
    if (e && e->uid == sa->uid && e->gid == sa->gid) {
        struct fsm_op op = *sa; /* node, uid, gid, now_ns, ino, attr */
        op.type = FSM_OP_WRITE;
        op.flags = FSM_WRITE_SETATTR;
        op.then_set = sa->flags;
        int64_t rc = propose_write(m, &op, e->data, e->len, e->offset, &setattr_rc);
        *write_rc = rc < 0 ? (int)rc : (size_t)rc < e->len ? -EIO : 0;
    } else if (e) {
        *write_rc = wb_propose(m, e);
    }
    return setattr_rc <= 0 ? setattr_rc : mnt_propose(m, sa);
}

/* Writes go to the write-behind (fs/write_behind.h) and are acknowledged
 * at once; fsync and close wait for them. Two kinds are proposed here and
 * acknowledged once applied: appends, whose place only the log decides (after
 * this host's earlier writes of the file), and every write in strict mode,
 * which promises other hosts see a write once it returns. */
static void mnt_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                      struct fuse_file_info *fi)
{
    struct mnt *m = req_mnt(req);
    bool append = ((unsigned)fi->fh & O_APPEND) != 0;
    if (off < 0 || (uint64_t)off + size > FSM_FILE_SIZE_MAX) {
        fuse_reply_err(req, off < 0 ? EINVAL : EFBIG);
        return;
    }
    if (size == 0) {
        fuse_reply_write(req, 0);
        return;
    }
    int64_t rc;
    if (m->wb && !append) {
        const struct fuse_ctx *c = fuse_req_ctx(req);
        rc = wb_write(m->wb, ino, (uint64_t)off, buf, size, c->uid, c->gid);
        if (rc == 0)
            rc = (int64_t)size;
    } else {
        rc = m->wb ? wb_drain(m->wb, ino) : 0;
        if (rc == 0) {
            struct fsm_op op = op_new(req, FSM_OP_WRITE);
            op.ino = ino;
            op.flags = append ? FSM_WRITE_APPEND : 0;
            rc = propose_write(m, &op, (const uint8_t *)buf, size, (uint64_t)off, NULL);
        }
    }
    if (rc < 0)
        reply_rc(req, rc);
    else
        fuse_reply_write(req, (size_t)rc);
}

static void mnt_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                        struct fuse_file_info *fi)
{
    (void)fi;
    struct mnt *m = req_mnt(req);
    struct fsm_op op = op_new(req, FSM_OP_SETATTR);
    op.ino = ino;
    if (to_set & FUSE_SET_ATTR_MODE) {
        op.flags |= FSM_SET_MODE;
        op.attr.mode = attr->st_mode;
    }
    if (to_set & FUSE_SET_ATTR_UID) {
        op.flags |= FSM_SET_UID;
        op.attr.uid = attr->st_uid;
    }
    if (to_set & FUSE_SET_ATTR_GID) {
        op.flags |= FSM_SET_GID;
        op.attr.gid = attr->st_gid;
    }
    if (to_set & FUSE_SET_ATTR_SIZE) {
        if (attr->st_size < 0) {
            fuse_reply_err(req, EINVAL);
            return;
        }
        op.flags |= FSM_SET_SIZE;
        op.attr.size = (uint64_t)attr->st_size;
    }
    if (to_set & FUSE_SET_ATTR_ATIME_NOW) {
        op.flags |= FSM_SET_ATIME_NOW;
    } else if (to_set & FUSE_SET_ATTR_ATIME) {
        op.flags |= FSM_SET_ATIME;
        op.attr.atime_ns = ts_to_ns(attr->st_atim);
    }
    if (to_set & FUSE_SET_ATTR_MTIME_NOW) {
        op.flags |= FSM_SET_MTIME_NOW;
    } else if (to_set & FUSE_SET_ATTR_MTIME) {
        op.flags |= FSM_SET_MTIME;
        op.attr.mtime_ns = ts_to_ns(attr->st_mtim);
    }
    if (to_set & FUSE_SET_ATTR_CTIME) {
        op.flags |= FSM_SET_CTIME;
        op.attr.ctime_ns = ts_to_ns(attr->st_ctim);
    }
    /* A truncate or a chmod lands after this host's writes of the file:
     * carried in the same op as the last of them (wb_carry). */
    int64_t rc = 0;
    if (op.flags == 0) {
        settle(m, ino);
    } else if (m->wb) {
        struct carried_setattr c = {m, &op};
        rc = wb_carry(m->wb, ino, propose_carried_setattr, &c);
    } else {
        rc = mnt_propose(m, &op);
    }
    if (rc < 0) {
        reply_rc(req, rc);
        return;
    }
    reply_attr_of(req, ino);
}

static void mnt_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                       struct fuse_file_info *fi)
{
    struct mnt *m = req_mnt(req);
    int rc = check_name(name);
    if (rc != 0) {
        reply_rc(req, rc);
        return;
    }
    struct fsm_op op = op_new(req, FSM_OP_MKNOD);
    op.parent = parent;
    set_name(&op, name);
    op.mode = S_IFREG | (mode & ~(fuse_req_ctx(req)->umask & 0777) & 07777);
    int64_t r = mnt_propose(m, &op);
    struct fsm_attr a;
    if (r == -EEXIST && !(fi->flags & O_EXCL)) {
        /* Created elsewhere since the kernel's lookup: open that one. */
        rc = fsm_lookup(m->fsm, parent, name, &a);
        if (rc == 0)
            rc = settle_attr(m, &a);
        if (rc == 0 && S_ISDIR(a.mode))
            rc = -EISDIR;
        if (rc == 0 && (fi->flags & O_TRUNC) && S_ISREG(a.mode) && a.size != 0) {
            rc = truncate_to_zero(req, a.ino);
            if (rc == 0)
                rc = fsm_getattr(m->fsm, a.ino, &a);
        }
    } else if (r <= 0) {
        rc = r < 0 ? (int)r : -EIO;
    } else {
        rc = fsm_getattr(m->fsm, (uint64_t)r, &a);
    }
    if (rc != 0) {
        reply_rc(req, rc);
        return;
    }
    struct fuse_entry_param e;
    fill_entry(m, &a, &e);
    reply_opened(req, a.ino, fi, &e);
}

static void mnt_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                          struct fuse_file_info *fi)
{
    (void)fi;
    if (offset < 0 || length <= 0) {
        fuse_reply_err(req, EINVAL);
        return;
    }
    settle(req_mnt(req), ino);
    struct fsm_op op = op_new(req, FSM_OP_FALLOCATE);
    op.ino = ino;
    op.flags = (uint32_t)mode;
    op.offset = (uint64_t)offset;
    op.length = (uint64_t)length;
    propose_reply_err(req, &op);
}

/* system.* attributes (POSIX ACLs above all) mean something to the kernel;
 * paxfs does not implement them, and storing them as opaque bytes would make
 * tools like cp -a believe permissions were set when they were not. With
 * EOPNOTSUPP they fall back to chmod. */
static bool xattr_unsupported(const char *name)
{
    return strncmp(name, "system.", 7) == 0;
}

static void mnt_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                         size_t size, int flags)
{
    if (xattr_unsupported(name)) {
        fuse_reply_err(req, EOPNOTSUPP);
        return;
    }
    size_t n = strlen(name);
    if (n == 0 || n > FSM_XATTR_NAME_MAX) {
        fuse_reply_err(req, n ? ERANGE : EINVAL);
        return;
    }
    if (size > FSM_XATTR_VALUE_MAX) {
        fuse_reply_err(req, E2BIG);
        return;
    }
    struct fsm_op op = op_new(req, FSM_OP_SETXATTR);
    op.ino = ino;
    set_name(&op, name);
    op.data = (const uint8_t *)value;
    op.data_len = (uint32_t)size;
    op.flags = (uint32_t)flags;
    propose_reply_err(req, &op);
}

static void mnt_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
    if (xattr_unsupported(name)) {
        fuse_reply_err(req, EOPNOTSUPP);
        return;
    }
    size_t n = strlen(name);
    if (n == 0 || n > FSM_XATTR_NAME_MAX) {
        fuse_reply_err(req, n ? ERANGE : EINVAL);
        return;
    }
    struct fsm_op op = op_new(req, FSM_OP_REMOVEXATTR);
    op.ino = ino;
    set_name(&op, name);
    propose_reply_err(req, &op);
}

static const struct fuse_lowlevel_ops mnt_ops = {
    .init = mnt_init,
    .lookup = mnt_lookup,
    .forget = mnt_forget,
    .forget_multi = mnt_forget_multi,
    .getattr = mnt_getattr,
    .setattr = mnt_setattr,
    .readlink = mnt_readlink,
    .mknod = mnt_mknod,
    .mkdir = mnt_mkdir,
    .unlink = mnt_unlink,
    .rmdir = mnt_rmdir,
    .symlink = mnt_symlink,
    .rename = mnt_rename,
    .link = mnt_link,
    .open = mnt_open,
    .read = mnt_read,
    .write = mnt_write,
    .flush = mnt_flush,
    .release = mnt_release,
    .fsync = mnt_fsync,
    .opendir = mnt_opendir,
    .readdir = mnt_readdir,
    .readdirplus = mnt_readdirplus,
    .releasedir = mnt_releasedir,
    .fsyncdir = mnt_fsyncdir,
    .statfs = mnt_statfs,
    .setxattr = mnt_setxattr,
    .getxattr = mnt_getxattr,
    .listxattr = mnt_listxattr,
    .removexattr = mnt_removexattr,
    .create = mnt_create,
    .fallocate = mnt_fallocate,
};

/* ---- the command line --------------------------------------------------- */

static const char mnt_usage_text[] =
    "usage: paxfs mount --config DIR/cluster.conf --node K --data DATADIR [-f]\n"
    "                   [-o OPT,...] MOUNTPOINT\n"
    "\n"
    "Mounts the cluster's shared directory at MOUNTPOINT, served by node K.\n"
    "  --config PATH   the cluster.conf written by paxfs init (certificates next to it)\n"
    "  --node K        this node's id in cluster.conf\n"
    "  --data DATADIR  this node's data directory (created if missing)\n"
    "  -f              stay in the foreground, log to stderr (else: daemonize once\n"
    "                  mounted, log to DATADIR/mount.log)\n"
    "  -o OPT,...      consistency=close-to-open|strict|local (default close-to-open)\n"
    "                  allow_other            let other users access the mount\n"
    "                  default_permissions    the kernel checks permissions (always on)\n"
    "                  cache_mb=N             block cache in MiB (default 64)\n"
    "                  cache_timeout=SECONDS  how long the kernel may cache entries and\n"
    "                                         attributes (default 1; not in strict mode)\n"
    "                  op_timeout=SECONDS     mutations fail with EIO after this long\n"
    "                                         without a quorum (default: cluster.conf)\n"
    "                  snapshot_every=SLOTS   snapshot and compact the log every SLOTS\n"
    "                                         applied entries (default 10000)\n"
    "                  log_slack=SLOTS        entries kept before a snapshot for briefly\n"
    "                                         lagging peers (default 1000)\n"
    "                  transfer_mb_s=N        cap a snapshot transfer to this node at N\n"
    "                                         MB/s (default 0: no cap)\n"
    "                  debug                  debug log lines\n"
    "\n"
    "Stop with fusermount3 -u MOUNTPOINT, or SIGTERM/SIGINT to the daemon.\n";

__attribute__((format(printf, 1, 2))) static int mnt_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("paxfs mount: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return EXIT_USAGE;
}

static int parse_u32(const char *s, uint32_t min, uint32_t max, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < min || v > max)
        return -EINVAL;
    *out = (uint32_t)v;
    return 0;
}

/* One -o option. */
static int parse_one_option(struct mnt_options *o, const char *opt)
{
    const char *eq = strchr(opt, '=');
    size_t klen = eq ? (size_t)(eq - opt) : strlen(opt);
    const char *val = eq ? eq + 1 : NULL;
#define KEY_IS(k) (klen == strlen(k) && strncmp(opt, k, klen) == 0)
    if (KEY_IS("consistency") && val) {
        if (strcmp(val, "close-to-open") == 0)
            o->consistency = MNT_CLOSE_TO_OPEN;
        else if (strcmp(val, "strict") == 0)
            o->consistency = MNT_STRICT;
        else if (strcmp(val, "local") == 0)
            o->consistency = MNT_LOCAL;
        else
            return mnt_usage_error("bad -o consistency=%s: use close-to-open, strict or local",
                                   val);
        return 0;
    }
    if (KEY_IS("allow_other") && !val) {
        o->allow_other = true;
        return 0;
    }
    if (KEY_IS("default_permissions") && !val)
        return 0; /* always on: the state machine trusts the kernel's checks */
    if (KEY_IS("debug") && !val) {
        o->debug = true;
        return 0;
    }
    if (KEY_IS("cache_mb") && val) {
        uint32_t mb;
        if (parse_u32(val, 0, 1u << 20, &mb) != 0)
            return mnt_usage_error("bad -o cache_mb=%s: use a number of MiB, 0..1048576", val);
        o->cache_bytes = (size_t)mb << 20;
        return 0;
    }
    if (KEY_IS("cache_timeout") && val) {
        uint32_t secs;
        if (parse_u32(val, 1, 3600, &secs) != 0)
            return mnt_usage_error("bad -o cache_timeout=%s: use a number of seconds, 1..3600",
                                   val);
        o->cache_timeout_s = secs;
        return 0;
    }
    if (KEY_IS("op_timeout") && val) {
        uint32_t secs;
        if (parse_u32(val, 1, 86400, &secs) != 0)
            return mnt_usage_error("bad -o op_timeout=%s: use a number of seconds, 1..86400", val);
        o->op_timeout_ms = secs * 1000;
        return 0;
    }
    if (KEY_IS("snapshot_every") && val) {
        uint32_t v;
        if (parse_u32(val, 1, 1u << 30, &v) != 0)
            return mnt_usage_error("bad -o snapshot_every=%s: use a number of log entries, "
                                   "1..1073741824", val);
        o->snapshot_every_slots = v;
        return 0;
    }
    if (KEY_IS("log_slack") && val) {
        uint32_t v;
        if (parse_u32(val, 1, 1u << 30, &v) != 0)
            return mnt_usage_error("bad -o log_slack=%s: use a number of log entries, "
                                   "1..1073741824", val);
        o->log_slack_slots = v;
        return 0;
    }
    if (KEY_IS("transfer_mb_s") && val) {
        uint32_t v;
        if (parse_u32(val, 0, 1u << 20, &v) != 0)
            return mnt_usage_error("bad -o transfer_mb_s=%s: use a number of MB/s, 0..1048576",
                                   val);
        o->transfer_rate_max = (uint64_t)v * 1000000u;
        return 0;
    }
#undef KEY_IS
    return mnt_usage_error("unknown or malformed mount option '%s': valid are consistency=MODE, "
                           "allow_other, default_permissions, cache_mb=N, cache_timeout=SECONDS, "
                           "op_timeout=SECONDS, "
                           "snapshot_every=SLOTS, log_slack=SLOTS, transfer_mb_s=N, debug", opt);
}

static int parse_options(struct mnt_options *o, const char *list)
{
    char *copy = strdup(list);
    ASSERT(copy != NULL);
    int rc = 0;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok && rc == 0; tok = strtok_r(NULL, ",", &save))
        rc = parse_one_option(o, tok);
    free(copy);
    return rc;
}

/* Returns 0 and fills o, or an exit code (usage printed). 1 = --help. */
static int parse_args(int argc, char **argv, struct mnt_options *o)
{
    memset(o, 0, sizeof *o);
    o->consistency = MNT_CLOSE_TO_OPEN;
    o->cache_bytes = STORE_CACHE_BYTES_DEFAULT;
    const char *node = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = NULL;
        const char *inline_val = NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(mnt_usage_text, stdout);
            return -1;
        }
        if (strcmp(a, "-f") == 0 || strcmp(a, "--foreground") == 0) {
            o->foreground = true;
            continue;
        }
        if (strncmp(a, "--config", 8) == 0 && (a[8] == 0 || a[8] == '=')) {
            slot = &o->config_path;
            inline_val = a[8] ? a + 9 : NULL;
        } else if (strncmp(a, "--node", 6) == 0 && (a[6] == 0 || a[6] == '=')) {
            slot = &node;
            inline_val = a[6] ? a + 7 : NULL;
        } else if (strncmp(a, "--data", 6) == 0 && (a[6] == 0 || a[6] == '=')) {
            slot = &o->data_dir;
            inline_val = a[6] ? a + 7 : NULL;
        } else if (strncmp(a, "-o", 2) == 0) {
            const char *list = a[2] ? a + 2 : (i + 1 < argc ? argv[++i] : NULL);
            if (!list)
                return mnt_usage_error("-o needs a list of options (see paxfs mount --help)");
            int rc = parse_options(o, list);
            if (rc != 0)
                return rc;
            continue;
        } else if (a[0] == '-' && a[1] != 0) {
            return mnt_usage_error("unknown option '%s' (see paxfs mount --help)", a);
        } else {
            if (o->mountpoint)
                return mnt_usage_error("one MOUNTPOINT only, got '%s' and '%s'", o->mountpoint, a);
            o->mountpoint = a;
            continue;
        }
        if (!inline_val) {
            if (i + 1 >= argc)
                return mnt_usage_error("%s needs a value (see paxfs mount --help)", a);
            inline_val = argv[++i];
        }
        *slot = inline_val;
    }
    if (!o->config_path)
        return mnt_usage_error("missing --config DIR/cluster.conf (written by paxfs init)");
    if (!node)
        return mnt_usage_error("missing --node K (this node's id in %s)", o->config_path);
    if (!o->data_dir)
        return mnt_usage_error("missing --data DATADIR (this node's data directory)");
    if (!o->mountpoint)
        return mnt_usage_error("missing MOUNTPOINT (an empty directory to mount on)");
    if (parse_u32(node, 1, CONFIG_NODES_MAX, &o->node) != 0)
        return mnt_usage_error("bad --node '%s': use a node id from %s (1..%u)", node,
                               o->config_path, CONFIG_NODES_MAX);
    return 0;
}

/* Undoes the \ooo escapes of /proc/self/mountinfo in place. */
static void unescape_mountinfo(char *s)
{
    char *w = s;
    for (const char *r = s; *r;) {
        if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' && r[2] <= '7' &&
            r[3] >= '0' && r[3] <= '7') {
            *w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
            r += 4;
        } else {
            *w++ = *r++;
        }
    }
    *w = 0;
}

/* 1 if path (absolute, resolved) is a mount point, 0 if not, -errno. */
static int is_mount_point(const char *path)
{
    FILE *f = fopen("/proc/self/mountinfo", "r");
    if (!f)
        return -errno;
    char line[8192];
    int found = 0;
    for (int n = 0; n < 1000000 && !found && fgets(line, sizeof line, f); n++) {
        /* id parent major:minor root MOUNTPOINT ... */
        char *save = NULL, *tok = strtok_r(line, " ", &save);
        for (int field = 0; tok && field < 4; field++)
            tok = strtok_r(NULL, " ", &save);
        if (!tok)
            continue;
        unescape_mountinfo(tok);
        found = strcmp(tok, path) == 0;
    }
    fclose(f);
    return found;
}

/* Checks the mount point; on success writes its resolved path. */
static int check_mountpoint(const char *mp, char *resolved)
{
    struct stat st;
    if (stat(mp, &st) != 0) {
        if (errno == ENOTCONN)
            return mnt_usage_error("mountpoint %s is a dead FUSE mount: unmount it with "
                                   "fusermount3 -u %s", mp, mp);
        if (errno == ENOENT)
            return mnt_usage_error("mountpoint %s does not exist: create it with mkdir -p %s",
                                   mp, mp);
        return mnt_usage_error("cannot use mountpoint %s: %s", mp, strerror(errno));
    }
    if (!S_ISDIR(st.st_mode))
        return mnt_usage_error("mountpoint %s is not a directory: mount on an empty directory", mp);
    if (!realpath(mp, resolved))
        return mnt_usage_error("cannot resolve mountpoint %s: %s", mp, strerror(errno));
    int rc = is_mount_point(resolved);
    if (rc < 0)
        return mnt_usage_error("cannot read /proc/self/mountinfo to check %s: %s", mp,
                               strerror(-rc));
    if (rc > 0)
        return mnt_usage_error("mountpoint %s is already a mount point: unmount it first "
                               "(fusermount3 -u %s) or choose another directory", mp, mp);
    return 0;
}

/* The data directory's owner, from its CLUSTER file (none yet is fine). */
static int check_data_dir_owner(const char *data_dir, const struct cluster_config *cc,
                                uint32_t node)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/CLUSTER", data_dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return errno == ENOENT ? 0
                               : mnt_usage_error("cannot read %s: %s", path, strerror(errno));
    char have[64] = "";
    unsigned have_node = 0, have_n = 0;
    if (!fgets(have, sizeof have, f))
        have[0] = 0;
    if (fscanf(f, "node %u of %u", &have_node, &have_n) != 2)
        have_node = 0; /* a directory from before the line existed */
    fclose(f);
    have[strcspn(have, "\n")] = 0;
    char want[33];
    config_cluster_id_hex(cc->cluster_id, want);
    if (strcmp(have, want) != 0)
        return mnt_usage_error("data directory %s belongs to cluster %s, not %s: use an empty "
                               "directory for this cluster", data_dir, have, want);
    if (have_node && have_node != node)
        return mnt_usage_error("data directory %s belongs to node %u, not node %u: use that "
                               "node's data directory, or an empty one", data_dir, have_node, node);
    return 0;
}

/* A data directory of another cluster, or whose block store this build
 * cannot use, is refused before anything in it is touched (host_open and
 * store_open check too, but only once the daemon runs). */
static int check_data_dir(const char *data_dir, const struct cluster_config *cc, uint32_t node)
{
    struct stat st;
    if (stat(data_dir, &st) != 0) {
        if (errno == ENOENT)
            return 0; /* created at start */
        return mnt_usage_error("cannot use data directory %s: %s", data_dir, strerror(errno));
    }
    if (!S_ISDIR(st.st_mode))
        return mnt_usage_error("data directory %s is not a directory", data_dir);
    int rc = check_data_dir_owner(data_dir, cc, node);
    if (rc != 0)
        return rc;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/store", data_dir);
    rc = store_format_check(path, cc->block_size);
    if (rc != 0) {
        char msg[PATH_MAX + 200];
        store_open_error(rc, path, msg, sizeof msg);
        return mnt_usage_error("%s", msg);
    }
    return 0;
}

/* An absolute form of path (the daemon leaves the working directory). */
static char *absolute(const char *path)
{
    if (path[0] == '/')
        return strdup(path);
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd))
        return NULL;
    size_t n = strlen(cwd) + strlen(path) + 2;
    char *out = malloc(n);
    if (out)
        snprintf(out, n, "%s/%s", cwd, path);
    return out;
}

/* ---- running ------------------------------------------------------------ */

/* Reports the startup outcome to the waiting parent (daemon mode) or to
 * stderr (foreground); fd < 0 means foreground. */
static void report(int fd, const char *line)
{
    if (fd < 0) {
        if (strcmp(line, "ok") != 0)
            fprintf(stderr, "paxfs mount: %s\n", line);
        return;
    }
    char msg[1100];
    int n = snprintf(msg, sizeof msg, "%s\n", line);
    if (n > 0 && write(fd, msg, (size_t)MIN((size_t)n, sizeof msg - 1)) < 0)
        LOG_W("event=report error=%d", errno);
}

/* Waits until this node has re-applied the log it had committed when it
 * started, so that the first reads see at least what it acknowledged. */
static void wait_replay(struct mnt *m)
{
    struct replica_status st;
    uint64_t target = UINT64_MAX;
    for (int i = 0; i < MNT_REPLAY_WAIT_S * 100; i++) {
        replica_status(m->replica, &st);
        if (st.failed)
            return;
        if (st.session != 0 && target == UINT64_MAX)
            target = st.commit;
        if (target != UINT64_MAX && st.applied >= target) {
            LOG_I("node=%u event=replayed applied=%" PRIu64, m->node, st.applied);
            return;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    LOG_W("node=%u event=replay_slow applied=%" PRIu64 " target=%" PRIu64, m->node,
          st.applied, target);
}

/* Stops the notifier before the session's fd goes (it writes to it).
 * Bounded: a notification can wait on a kernel lock held by a request that
 * no worker will answer any more. Returns false if the thread is still in
 * such a call; it then touches only m->q* and m->se when it returns, so
 * those must outlive this process's remaining work (they are leaked). */
static bool stop_notifier(struct mnt *m)
{
    atomic_store(&m->notify_on, false);
    if (!m->notifier_running)
        return true;
    pthread_mutex_lock(&m->q_lock);
    m->q_stop = true;
    pthread_cond_broadcast(&m->q_cond);
    pthread_mutex_unlock(&m->q_lock);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 2;
    if (pthread_timedjoin_np(m->notifier, NULL, &until) != 0) {
        LOG_W("node=%u event=shutdown error=\"notifier stuck in the kernel\"", m->node);
        return false;
    }
    m->notifier_running = false;
    return true;
}

/* Stops the orphan thread and the replica, closes the WAL (synced), the
 * state machine and the store. The notifier must be stopped already. */
static void mnt_teardown(struct mnt *m)
{
    /* Writes already acknowledged go into the log before the replica stops. */
    wb_close(m->wb);
    m->wb = NULL;
    if (m->orphan_running) {
        pthread_mutex_lock(&m->stop_lock);
        m->stop = true;
        pthread_cond_broadcast(&m->stop_cond);
        pthread_mutex_unlock(&m->stop_lock);
        /* A release in flight waits for the replica: stopping it wakes it. */
        if (m->replica)
            replica_stop(m->replica);
        pthread_join(m->orphan_thread, NULL);
        m->orphan_running = false;
    }
    /* Nothing new reaches fsck or the transfers; what runs there ends once
     * the replica stops; the net thread may still be inside a callback
     * until host_close, so the memory goes only after that. */
    struct fsck_server *f = atomic_exchange(&m->fsck, NULL);
    struct xfer *x = atomic_exchange(&m->xfer, NULL);
    if (m->replica)
        replica_stop(m->replica);
    if (x)
        xfer_stop(x); /* a transfer stops where it is; it resumes at the next start */
    if (f)
        fsck_server_stop(f);
    host_close(m->host); /* stops the replica, syncs the WAL */
    fsck_server_free(f);
    m->host = NULL;
    m->replica = NULL;
    if (m->store)
        store_set_repair(m->store, NULL, NULL);
    xfer_free(x);
    pins_drop(m, &m->pins[0]);
    pins_drop(m, &m->pins[1]);
    fsm_free(m->fsm);
    m->fsm = NULL;
    store_close(m->store);
    m->store = NULL;
    open_free_all(m);
}

static void mnt_init_struct(struct mnt *m, const struct mnt_options *o)
{
    memset(m, 0, sizeof *m);
    m->opt = *o;
    m->node = o->node;
    m->timeout_s = o->consistency == MNT_STRICT ? 0.0
                   : o->cache_timeout_s           ? o->cache_timeout_s
                                                  : MNT_CACHE_TIMEOUT_S;
    pthread_mutex_init(&m->open_lock, NULL);
    pthread_mutex_init(&m->pins_lock, NULL);
    pthread_mutex_init(&m->q_lock, NULL);
    pthread_cond_init(&m->q_cond, NULL);
    cond_init_monotonic(&m->q_done_cond);
    pthread_mutex_init(&m->stop_lock, NULL);
    cond_init_monotonic(&m->stop_cond);
    m->q = calloc(MNT_INVAL_QUEUE_MAX, sizeof *m->q);
    ASSERT(m->q != NULL);
}

static void mnt_destroy_struct(struct mnt *m)
{
    free(m->q);
    m->q = NULL;
    pthread_mutex_destroy(&m->open_lock);
    pthread_mutex_destroy(&m->pins_lock);
    pthread_mutex_destroy(&m->q_lock);
    pthread_cond_destroy(&m->q_cond);
    pthread_cond_destroy(&m->q_done_cond);
    pthread_mutex_destroy(&m->stop_lock);
    pthread_cond_destroy(&m->stop_cond);
}

/* Opens store, state machine and replica. On failure writes a one-line
 * reason into err. */
static int open_node(struct mnt *m, const struct cluster_config *cc, char *err, size_t errlen)
{
    const struct mnt_options *o = &m->opt;
    if (mkdir(o->data_dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create data directory %s: %s", o->data_dir,
                 strerror(errno));
        return -errno;
    }
    char store_root[PATH_MAX];
    snprintf(store_root, sizeof store_root, "%s/store", o->data_dir);
    struct store_config sc;
    store_config_init(&sc, store_root);
    sc.block_size = cc->block_size;
    sc.cache_bytes = o->cache_bytes;
    sc.node_id = o->node;
    /* Blocks are put only by apply, from ops already durable in the WAL,
     * and the whole log is re-applied at start-up: a block a crash loses is
     * written again (store.h, defer_sync). Saves two syncs per block. */
    sc.defer_sync = true;
    int rc = store_open(&sc, &m->store);
    if (rc != 0) {
        store_open_error(rc, store_root, err, errlen);
        return rc;
    }
    m->block_size = store_block_size(m->store);
    rc = fsm_new(m->store, cc->n_nodes, &m->fsm);
    if (rc != 0) {
        snprintf(err, errlen, "cannot create the filesystem state: %s", strerror(-rc));
        return rc;
    }
    struct host_options ho = {
        .config_path = o->config_path,
        .node = o->node,
        .data_dir = o->data_dir,
        .sm = {m, sm_apply, sm_snapshot_begin, sm_snapshot_image, sm_restore, sm_sync,
               sm_snapshot_needed},
        .op_timeout_ms = o->op_timeout_ms,
        .snapshot_every_slots = o->snapshot_every_slots,
        .log_slack_slots = o->log_slack_slots,
        .on_peer_frame = on_peer_frame,
        .on_client_req = on_client_req,
        .status_extra = status_extra,
        .ctx = m,
    };
    rc = host_open(&ho, &m->host, err, errlen);
    if (rc != 0)
        return rc;
    m->replica = host_replica(m->host);
    struct xfer_options xo = {
        .node = o->node,
        .n_nodes = cc->n_nodes,
        .send = send_bulk,
        .send_ctx = m,
        .store = m->store,
        .replica = m->replica,
        .rate_max = o->transfer_rate_max,
    };
    struct xfer *x;
    rc = xfer_new(&xo, &x);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the snapshot transfer threads: %s", strerror(-rc));
        return rc;
    }
    atomic_store(&m->xfer, x);
    store_set_repair(m->store, xfer_fetch_block, x);
    const char *hooks = getenv("PAXFS_TEST_HOOKS");
    struct fsck_server_options fo = {
        .node = o->node,
        .fsm = m->fsm,
        .store = m->store,
        .replica = m->replica,
        .xfer = x,
        .reply = fsck_reply,
        .reply_ctx = m,
        .test_hooks = hooks && strcmp(hooks, "1") == 0,
    };
    struct fsck_server *f;
    rc = fsck_server_new(&fo, &f);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the fsck thread: %s", strerror(-rc));
        return rc;
    }
    atomic_store(&m->fsck, f);
    return 0;
}

static int start_threads(struct mnt *m)
{
    int rc = pthread_create(&m->notifier, NULL, notifier_main, m);
    if (rc != 0)
        return -rc;
    m->notifier_running = true;
    rc = pthread_create(&m->orphan_thread, NULL, orphan_main, m);
    if (rc != 0)
        return -rc;
    m->orphan_running = true;
    if (m->opt.consistency != MNT_STRICT) {
        struct wb_config wc = {
            .block_size = m->block_size,
            .chunk_bytes = MAX((size_t)MNT_WB_CHUNK, (size_t)m->block_size),
            .bytes_max = MAX((size_t)MNT_WB_BYTES_MAX, 2 * (size_t)MNT_WRITE_OP_MAX),
            .delay_ms = MNT_WB_DELAY_MS,
            .threads = MNT_WB_THREADS,
            .propose = wb_propose,
            .ctx = m,
        };
        m->wb = wb_open(&wc);
        if (!m->wb)
            return -ENOMEM;
    }
    return 0;
}

static struct fuse_session *session_new(struct mnt *m, char *err, size_t errlen)
{
    char opts[256];
    snprintf(opts, sizeof opts, "-odefault_permissions,fsname=paxfs,subtype=paxfs%s",
             m->opt.allow_other ? ",allow_other" : "");
    char *argv[] = {(char *)"paxfs", opts, NULL};
    struct fuse_args args = FUSE_ARGS_INIT(2, argv);
    struct fuse_session *se = fuse_session_new(&args, &mnt_ops, sizeof mnt_ops, m);
    fuse_opt_free_args(&args); /* libfuse may have copied the arguments */
    if (!se)
        snprintf(err, errlen, "cannot create the FUSE session (is the fuse module loaded and "
                 "/dev/fuse accessible?)");
    return se;
}

/* Everything after the checks: runs in the daemon child or in the
 * foreground. ready_fd (or -1) receives the one-line outcome. */
static int mnt_run(const struct mnt_options *o, const struct cluster_config *cc, int ready_fd)
{
    struct mnt *m = calloc(1, sizeof *m);
    ASSERT(m != NULL);
    mnt_init_struct(m, o);
    char err[1024] = "";
    int exit_code = EXIT_USAGE;

    /* Only FUSE's threads take the signals that end the session. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    signal(SIGPIPE, SIG_IGN);

    int rc = open_node(m, cc, err, sizeof err);
    if (rc == 0) {
        wait_replay(m);
        rc = start_threads(m);
        if (rc != 0)
            snprintf(err, sizeof err, "cannot start threads: %s", strerror(-rc));
    }
    if (rc == 0) {
        m->se = session_new(m, err, sizeof err);
        rc = m->se ? 0 : -EIO;
    }
    if (rc == 0 && fuse_session_mount(m->se, o->mountpoint) != 0) {
        snprintf(err, sizeof err, "cannot mount on %s (see the fuse message above; is it "
                 "busy, or do you need allow_other in /etc/fuse.conf?)", o->mountpoint);
        rc = -EIO;
    }
    if (rc == 0 && fuse_set_signal_handlers(m->se) != 0) {
        snprintf(err, sizeof err, "cannot install signal handlers");
        fuse_session_unmount(m->se);
        rc = -EIO;
    }
    if (rc != 0) {
        report(ready_fd, err);
        bool stopped = stop_notifier(m); /* nothing was queued: it stops */
        mnt_teardown(m);
        if (stopped) {
            if (m->se)
                fuse_session_destroy(m->se);
            mnt_destroy_struct(m);
            free(m);
        }
        return EXIT_USAGE;
    }
    atomic_store(&m->notify_on, true);
    LOG_I("node=%u event=mounted mountpoint=%s consistency=%s", m->node, o->mountpoint,
          o->consistency == MNT_STRICT ? "strict"
          : o->consistency == MNT_LOCAL ? "local" : "close-to-open");
    report(ready_fd, "ok");
    if (ready_fd >= 0)
        close(ready_fd);
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    struct fuse_loop_config *lc = fuse_loop_cfg_create();
    ASSERT(lc != NULL);
    fuse_loop_cfg_set_max_threads(lc, MNT_THREADS_MAX);
    fuse_loop_cfg_set_idle_threads(lc, MNT_IDLE_THREADS);
    fuse_loop_cfg_set_clone_fd(lc, 0);
    rc = fuse_session_loop_mt(m->se, lc);
    fuse_loop_cfg_destroy(lc);
    exit_code = rc == 0 || rc == SIGTERM || rc == SIGINT || rc == SIGHUP ? 0 : EXIT_RUNTIME;

    LOG_I("node=%u event=unmounting loop=%d proposals=%" PRIu64 " errors=%" PRIu64
          " inval_sent=%" PRIu64 " inval_dropped=%" PRIu64, m->node, rc,
          (uint64_t)atomic_load(&m->proposals), (uint64_t)atomic_load(&m->proposal_errors),
          m->q_done, m->q_dropped);
    fuse_remove_signal_handlers(m->se);
    bool stopped = stop_notifier(m);
    /* Unmount first: applications get ENOTCONN instead of waiting for the
     * replica to close. */
    fuse_session_unmount(m->se);
    mnt_teardown(m);
    if (stopped) {
        fuse_session_destroy(m->se);
        mnt_destroy_struct(m);
        free(m);
    }
    return exit_code;
}

/* Forks the daemon; the parent returns only once the child reported. */
static int daemonize_and_run(const struct mnt_options *o, const struct cluster_config *cc)
{
    int fds[2];
    if (pipe(fds) != 0)
        return mnt_usage_error("cannot create a pipe: %s", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return mnt_usage_error("cannot fork: %s", strerror(errno));
    if (pid > 0) {
        close(fds[1]);
        char line[1100];
        size_t n = 0;
        for (int i = 0; i < 1100 && n < sizeof line - 1; i++) {
            ssize_t r = read(fds[0], line + n, sizeof line - 1 - n);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                break;
            n += (size_t)r;
            if (memchr(line, '\n', n))
                break;
        }
        close(fds[0]);
        line[n] = 0;
        line[strcspn(line, "\n")] = 0;
        if (strcmp(line, "ok") == 0)
            return 0;
        if (n == 0) {
            int status;
            waitpid(pid, &status, WNOHANG);
            fprintf(stderr, "paxfs mount: the mount daemon exited before the mount was ready: "
                    "see %s/mount.log\n", o->data_dir);
        } else {
            fprintf(stderr, "paxfs mount: %s\n", line);
        }
        return EXIT_USAGE;
    }
    close(fds[0]);
    setsid();
    /* The daemon's stderr (its log) goes to DATADIR/mount.log. */
    if (mkdir(o->data_dir, 0700) != 0 && errno != EEXIST) {
        char err[512];
        snprintf(err, sizeof err, "cannot create data directory %s: %s", o->data_dir,
                 strerror(errno));
        report(fds[1], err);
        _exit(EXIT_USAGE);
    }
    char logpath[PATH_MAX];
    snprintf(logpath, sizeof logpath, "%s/mount.log", o->data_dir);
    int logfd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    int nullfd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (nullfd >= 0) {
        dup2(nullfd, STDIN_FILENO);
        dup2(nullfd, STDOUT_FILENO);
        close(nullfd);
    }
    if (logfd >= 0) {
        dup2(logfd, STDERR_FILENO);
        close(logfd);
    }
    if (chdir("/") != 0)
        LOG_W("event=chdir error=%d", errno);
    int code = mnt_run(o, cc, fds[1]);
    _exit(code);
}

int mnt_main(int argc, char **argv)
{
    /* Write ops carry up to MNT_WRITE_OP_MAX bytes through several buffers
     * each. Kept in the heap rather than mmap()ed afresh each time, their
     * pages are not faulted in and zeroed again for every write: 256 MiB
     * through dd bs=1M, 88-94 -> 103-119 MB/s and 5.0 -> 4.1-4.5 s of the
     * cluster's CPU. (One arena, M_ARENA_MAX 1, made no difference.) */
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 128 << 20);
    struct mnt_options o;
    int rc = parse_args(argc, argv, &o);
    if (rc < 0)
        return 0; /* --help */
    if (rc != 0)
        return rc;
    struct cluster_config cc;
    char err[512];
    if (config_load(o.config_path, &cc, err, sizeof err) != 0)
        return mnt_usage_error("%s: check --config (the cluster.conf written by paxfs init)",
                               err);
    if (o.node > cc.n_nodes)
        return mnt_usage_error("node %u is not in %s (it has nodes 1..%u): check --node",
                               o.node, o.config_path, cc.n_nodes);
    char mp[PATH_MAX];
    rc = check_mountpoint(o.mountpoint, mp);
    if (rc != 0)
        return rc;
    rc = check_data_dir(o.data_dir, &cc, o.node);
    if (rc != 0)
        return rc;
    char *config_abs = absolute(o.config_path), *data_abs = absolute(o.data_dir);
    if (!config_abs || !data_abs) {
        free(config_abs);
        free(data_abs);
        return mnt_usage_error("cannot resolve paths: %s", strerror(errno));
    }
    o.config_path = config_abs;
    o.data_dir = data_abs;
    o.mountpoint = mp;
    log_set_level(o.debug ? LOG_DEBUG : LOG_INFO);
    rc = o.foreground ? mnt_run(&o, &cc, -1) : daemonize_and_run(&o, &cc);
    free(config_abs);
    free(data_abs);
    return rc;
}
