/* replica — the replica driver; the contract and the threading model are in
 * replica.h. */
#include "consensus/replica.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "base/assert.h"
#include "base/buf.h"
#include "base/clock.h"
#include "base/log.h"
#include "consensus/snapfile.h"
#include "consensus/wal.h"

enum wal_record_type {
    REC_PROMISE = 1, /* u64 ballot */
    REC_ENTRY = 2,   /* u64 slot, u64 ballot, value bytes */
    REC_COMMIT = 3,  /* u64 slot */
    REC_SESSION = 4, /* u64 session */
    REC_SNAPSHOT = 5, /* u64 slot: a snapshot at or after it must exist */
};

/* A WAL position and the highest slot of any entry logged before it: the
 * log before lsn may go once every slot <= max_slot is in a snapshot. */
struct checkpoint {
    uint64_t lsn;
    uint64_t max_slot;
};
#define CHECKPOINTS_MAX 16

/* A blocking request to the replica thread (install, snapshot now). */
struct call {
    pthread_cond_t cond;
    bool done;
    int status;
    const char *path;  /* install */
    bool rebuild;      /* install over a diverged state */
    uint64_t slot;     /* result */
};

/* A client thread waiting for a proposal or a read barrier. Lives on that
 * thread's stack; its fields are guarded by r->lock, except that the
 * waiter reads status and result without it once `posted` was posted. */
struct waiter {
    sem_t posted; /* posted once, by complete() */
    bool done;    /* under r->lock */
    int status;
    int64_t result;
    /* proposal */
    const void *data;
    size_t len;
    uint64_t seq;   /* 0 until proposed */
    /* read barrier */
    uint64_t read_id;
    uint64_t index;   /* the read index, once index_known */
    bool index_known;
    struct waiter *next;
};

struct replica {
    struct replica_config cfg;
    struct px_node *px;
    struct wal *wal;
    struct px_dedup *dedup;
    uint64_t session;
    bool session_behind_logged; /* a newer session of ours was seen: said once */
    uint64_t applied;
    uint64_t max_entry_slot;    /* highest slot of an ENTRY in the WAL */

    /* snapshots (replica thread, except where noted) */
    uint64_t snap_slot;         /* newest snapshot on disk */
    uint64_t snap_applied_bytes; /* value bytes applied since it (or since open, plus
                                    the head start snapshot_shift gives) */
    struct checkpoint checkpoints[CHECKPOINTS_MAX];
    size_t n_checkpoints;
    pthread_t snapper;
    bool snapper_running;
    /* the snapshot thread's job and result, guarded by lock */
    bool snap_busy;             /* a job is with the snapshot thread */
    struct buf snap_dedup;      /* the job's exactly-once table, encoded */
    struct buf snap_job;        /* the file, made by the snapshot thread */
    uint64_t snap_job_slot;
    uint64_t snap_job_keep;     /* older snapshots than this go after it */
    bool snap_result_ready;
    int snap_result;
    pthread_cond_t snap_wake;
    uint64_t wal_cut_lsn;       /* the snapshot thread drops the WAL before it */
    int wal_cut_rc;             /* and fails the replica with this if it could not */
    struct call *snap_call;     /* replica_snapshot_now */
    struct call *install_call;  /* replica_install_snapshot */
    bool snap_force;            /* take a snapshot at the next chance */

    pthread_t thread;
    bool running;

    pthread_mutex_t lock;
    pthread_cond_t wake;
    bool asleep; /* the replica thread waits on wake: see wake_replica_locked */
    bool stop;
    bool failed;
    /* inbox, guarded by lock */
    struct px_msg *in_msgs;
    size_t n_in, cap_in;
    uint32_t peers_lost;  /* bitmask: connections lost (px_peer_lost) */
    uint32_t peers_ended; /* bitmask: of those, ended by the peer */
    struct waiter *new_props, *new_reads;
    /* in progress, guarded by lock; only the replica thread moves them */
    struct waiter *backlog;         /* proposals the core had no room for */
    /* proposed, waiting to be applied: hash chains by seq */
    struct waiter *proposed[PX_SESSION_WINDOW];
    struct waiter *reading;         /* read index asked or being waited on */
    uint64_t next_read_id;
    struct replica_status status;
};

void replica_config_defaults(struct replica_config *c)
{
    memset(c, 0, sizeof *c);
    c->tick_ms = 10;
    c->ticks_election = 20;
    c->ticks_heartbeat = 2;
    c->op_timeout_ms = 30000;
    c->window = 32;
    c->snapshot_every_slots = 10000;
    c->snapshot_every_bytes = 256ull << 20;
    c->log_slack_slots = 1000;
    c->log_slack_bytes = 64ull << 20;
}

static uint64_t every_slots(const struct replica *r)
{
    return r->cfg.snapshot_every_slots ? r->cfg.snapshot_every_slots : 10000;
}

static uint64_t every_bytes(const struct replica *r)
{
    return r->cfg.snapshot_every_bytes ? r->cfg.snapshot_every_bytes : 256ull << 20;
}

/* This node's share of a snapshot interval, every / n_nodes * (id - 1):
 * see next_snapshot_slot for why. */
static uint64_t snapshot_shift(const struct replica *r, uint64_t every)
{
    uint32_t n = r->cfg.n_nodes ? r->cfg.n_nodes : 1;
    return every / n * ((r->cfg.id - 1) % n);
}

/* ---- WAL replay -------------------------------------------------------- */

struct replay_state {
    struct px_node *px; /* NULL in the first pass */
    uint64_t promised, commit, session, snapshot_marker, max_entry_slot;
};

static int replay_record(void *ctx, uint64_t lsn, uint8_t type, const void *data, size_t len)
{
    struct replay_state *st = ctx;
    struct reader rd;
    reader_init(&rd, data, len);
    uint64_t v;
    switch (type) {
    case REC_PROMISE:
        v = get_u64(&rd);
        st->promised = MAX(st->promised, v);
        break;
    case REC_ENTRY: {
        uint64_t slot = get_u64(&rd), ballot = get_u64(&rd);
        if (!reader_ok(&rd))
            break;
        st->max_entry_slot = MAX(st->max_entry_slot, slot);
        if (st->px) {
            struct px_value *val = px_value_new(rd.p + rd.off, reader_left(&rd));
            px_restore_entry(st->px, slot, ballot, val);
            px_value_unref(val);
        }
        return 0;
    }
    case REC_COMMIT:
        v = get_u64(&rd);
        st->commit = MAX(st->commit, v);
        break;
    case REC_SESSION:
        v = get_u64(&rd);
        st->session = MAX(st->session, v);
        break;
    case REC_SNAPSHOT:
        v = get_u64(&rd);
        st->snapshot_marker = MAX(st->snapshot_marker, v);
        break;
    default:
        LOG_E("event=wal_replay lsn=%llu error=\"unknown record type %u\"",
              (unsigned long long)lsn, type);
        return -EBADMSG;
    }
    if (!reader_ok(&rd)) {
        LOG_E("event=wal_replay lsn=%llu error=\"short record of type %u\"",
              (unsigned long long)lsn, type);
        return -EBADMSG;
    }
    return 0;
}

static int wal_put_u64(struct wal *w, uint8_t type, uint64_t v, uint64_t *lsn)
{
    uint8_t b[8];
    le_put_u64(b, v);
    return wal_append(w, type, b, sizeof b, lsn);
}

/* Restores the newest valid snapshot into the state machine and r->dedup.
 * The WAL's marker says how new it must at least be: the log before the
 * marker may be gone, so an older snapshot would leave a hole. */
static int load_snapshot(struct replica *r, uint64_t marker)
{
    if (!r->cfg.sm.restore || !r->cfg.snap_dir[0])
        return 0;
    if (mkdir(r->cfg.snap_dir, 0700) != 0 && errno != EEXIST) {
        int rc = -errno;
        LOG_E("node=%u event=snapshot_dir path=%s error=\"%s\"", r->cfg.id, r->cfg.snap_dir,
              strerror(-rc));
        return rc;
    }
    uint8_t *p;
    size_t len;
    uint64_t slot;
    int rc = snapfile_load_newest(r->cfg.snap_dir, &p, &len, &slot);
    if (rc == -ENOENT) {
        if (marker == 0)
            return 0;
        LOG_E("node=%u event=snapshot_missing marker=%llu: the log before that slot is gone "
              "and no snapshot covers it; empty the data directory to rebuild this replica "
              "from its peers", r->cfg.id, (unsigned long long)marker);
        return -EBADMSG;
    }
    if (rc != 0)
        return rc;
    struct snapfile sf;
    rc = snapfile_decode(p, len, &sf);
    ASSERT(rc == 0); /* load_newest decoded it */
    if (sf.slot < marker) {
        LOG_E("node=%u event=snapshot_missing newest=%llu marker=%llu: the log before the "
              "marker is gone; empty the data directory to rebuild this replica from its "
              "peers", r->cfg.id, (unsigned long long)sf.slot, (unsigned long long)marker);
        free(p);
        return -EBADMSG;
    }
    struct px_dedup *d = NULL;
    rc = px_dedup_decode(sf.dedup, sf.dedup_len, &d);
    if (rc == 0)
        rc = r->cfg.sm.restore(r->cfg.sm.ctx, sf.sm, sf.sm_len);
    if (rc != 0) {
        LOG_E("node=%u event=snapshot_restore slot=%llu error=\"%s\"", r->cfg.id,
              (unsigned long long)sf.slot, strerror(-rc));
        px_dedup_free(d);
        free(p);
        return rc == -EINVAL ? -EINVAL : -EBADMSG;
    }
    r->dedup = d;
    r->snap_slot = sf.slot;
    free(p);
    return 0;
}

static void publish_status(struct replica *r);

/* Opens the WAL and the newest snapshot and restores the core; online, a
 * new session is persisted too (offline nothing is written but what
 * wal_open's recovery cuts). */
static int open_replica(const struct replica_config *cfg, bool online, struct replica **out)
{
    /* The two halves of a snapshot come together (replica.h). */
    ASSERT(!cfg->sm.snapshot_begin == !cfg->sm.snapshot_image);
    struct replica *r = calloc(1, sizeof *r);
    ASSERT(r != NULL);
    r->cfg = *cfg;
    if (!r->cfg.tick_ms)
        r->cfg.tick_ms = 10;
    struct wal_options wo = {.node = cfg->id};
    int rc = wal_open(cfg->wal_dir, &wo, &r->wal);
    if (rc != 0) {
        free(r);
        return rc;
    }
    /* Pass 1 learns the session; then the snapshot; pass 2 restores the core. */
    struct replay_state st = {0};
    rc = wal_replay(r->wal, 0, replay_record, &st);
    if (rc == 0)
        rc = load_snapshot(r, st.snapshot_marker);
    if (rc == 0) {
        /* A session id this node never used: above the one its WAL names
         * and its own newest in the snapshot's dedup table, and not below
         * the wall clock in microseconds. The clock is for a node whose data
         * directory was emptied: nothing local remembers its last session
         * then, and the cluster's dedup table would take the proposals of a
         * reused one for its earlier life's (never applied, or answered
         * with an old result). It assumes the clock has not gone back by
         * more than the time since that earlier life began. */
        r->session = st.session + 1;
        if (r->dedup)
            r->session = MAX(r->session, px_dedup_newest_session(r->dedup, cfg->id) + 1);
        r->session = MAX(r->session, clock_wall_ns() / 1000);
        struct px_config pc;
        px_config_defaults(&pc, cfg->id, cfg->n_nodes);
        pc.seed = ((uint64_t)cfg->id << 40) ^ r->session ^ (uint64_t)time(NULL);
        pc.session = r->session;
        pc.ticks_election = cfg->ticks_election ? cfg->ticks_election : 20;
        pc.ticks_heartbeat = cfg->ticks_heartbeat ? cfg->ticks_heartbeat : 2;
        pc.window = cfg->window ? cfg->window : 32;
        r->px = px_new(&pc);
        px_restore_snapshot(r->px, r->snap_slot);
        r->applied = r->snap_slot;
        struct replay_state st2 = {.px = r->px};
        rc = wal_replay(r->wal, 0, replay_record, &st2);
        px_restore_promised(r->px, st2.promised);
        px_restore_commit(r->px, st2.commit);
        r->max_entry_slot = st2.max_entry_slot;
    }
    uint64_t lsn;
    if (rc == 0 && online)
        rc = wal_put_u64(r->wal, REC_SESSION, r->session, &lsn);
    if (rc == 0 && online)
        rc = wal_sync(r->wal, lsn);
    if (rc != 0) {
        px_free(r->px);
        px_dedup_free(r->dedup);
        wal_close(r->wal);
        free(r);
        return rc;
    }
    if (!r->dedup)
        r->dedup = px_dedup_new();
    buf_init(&r->snap_job);
    buf_init(&r->snap_dedup);
    pthread_cond_init(&r->snap_wake, NULL);
    r->status.snapshot_slot = r->snap_slot;
    r->snap_applied_bytes = snapshot_shift(r, every_bytes(r));
    pthread_mutex_init(&r->lock, NULL);
    cond_init_monotonic(&r->wake);
    publish_status(r); /* what start-up will replay up to is known now */
    LOG_I("node=%u event=replica_open session=%llu snapshot=%llu commit=%llu", cfg->id,
          (unsigned long long)r->session, (unsigned long long)r->snap_slot,
          (unsigned long long)st.commit);
    *out = r;
    return 0;
}

int replica_open(const struct replica_config *cfg, struct replica **out)
{
    ASSERT(cfg->sm.apply && cfg->transport.send);
    return open_replica(cfg, true, out);
}

static void apply_slot(struct replica *r, const struct px_entry *e);

int replica_load_offline(const struct replica_config *cfg, uint64_t *snapshot_slot,
                         uint64_t *applied)
{
    ASSERT(cfg->sm.apply);
    struct replica *r;
    int rc = open_replica(cfg, false, &r);
    if (rc != 0)
        return rc;
    *snapshot_slot = r->snap_slot;
    /* The committed entries come out of the core in slot order; nothing
     * else of a ready batch matters offline (no peers, nothing to persist). */
    while (px_has_ready(r->px)) {
        struct px_ready rd;
        px_ready(r->px, &rd);
        for (size_t i = 0; i < rd.n_apply; i++)
            apply_slot(r, &rd.apply[i]);
        px_advance(r->px, &rd);
        struct px_status ps;
        px_status(r->px, &ps);
        if (ps.applied >= ps.commit)
            break;
    }
    *applied = r->applied;
    replica_close(r);
    return 0;
}

/* ---- waiters ----------------------------------------------------------- */

/* Called with r->lock held. The waiter sleeps on its own semaphore, not on
 * a condition variable of r->lock: woken, it returns without taking r->lock
 * again, so a completion costs one wakeup, not a wakeup and then a handoff
 * of the lock that the replica thread and every other proposer contend for.
 * The fields are written before the post, which orders them for the
 * waiter. */
static void complete(struct waiter *w, int status, int64_t result)
{
    w->done = true;
    w->status = status;
    w->result = result;
    sem_post(&w->posted);
}

static void list_remove(struct waiter **head, struct waiter *w)
{
    for (struct waiter **p = head; *p; p = &(*p)->next) {
        if (*p == w) {
            *p = w->next;
            return;
        }
    }
}

static void fail_all(struct replica *r, int status)
{
    for (size_t i = 0; i < PX_SESSION_WINDOW; i++) {
        while (r->proposed[i]) {
            struct waiter *w = r->proposed[i];
            r->proposed[i] = w->next;
            complete(w, status, 0);
        }
    }
    struct waiter **lists[] = {&r->new_props, &r->new_reads, &r->backlog, &r->reading};
    for (size_t i = 0; i < ARRAY_LEN(lists); i++) {
        while (*lists[i]) {
            struct waiter *w = *lists[i];
            *lists[i] = w->next;
            complete(w, status, 0);
        }
    }
}

/* Called with r->lock held, which it releases (then wakes the replica
 * thread if `wake` says so): waits until w completes or the op timeout
 * passes; on timeout w is taken out of whatever list holds it. Destroying
 * w after a completed wait is safe: glibc's sem_post no longer touches the
 * semaphore once a sem_wait can have returned (glibc bug 12674, fixed in
 * 2.21). */
static int wait_done(struct replica *r, struct waiter *w, struct waiter **lists[], size_t n_lists,
                     bool wake)
{
    struct timespec dl;
    deadline_in_ms(&dl, r->cfg.op_timeout_ms ? r->cfg.op_timeout_ms : 30000);
    pthread_mutex_unlock(&r->lock);
    if (wake)
        pthread_cond_signal(&r->wake);
    int rc;
    while ((rc = sem_clockwait(&w->posted, CLOCK_MONOTONIC, &dl)) != 0 && errno == EINTR)
        continue;
    if (rc == 0)
        return w->status;
    ASSERT(errno == ETIMEDOUT);
    pthread_mutex_lock(&r->lock);
    /* Completed after the timeout but before the lock: done then. */
    rc = w->done ? w->status : -EIO;
    if (!w->done) {
        for (size_t i = 0; i < n_lists; i++)
            list_remove(lists[i], w);
        if (w->seq)
            list_remove(&r->proposed[w->seq % PX_SESSION_WINDOW], w);
    }
    pthread_mutex_unlock(&r->lock);
    return rc;
}

/* Called with r->lock held, after adding work for the replica thread: true
 * if the thread must be woken, which the caller does after unlocking. Only
 * the first producer since the thread went to sleep wakes it, and outside
 * the lock: a thread woken under the lock would at once block on it, and
 * cost a second wakeup when it is released. */
static bool wake_replica_locked(struct replica *r)
{
    bool wake = r->asleep;
    r->asleep = false;
    return wake;
}

static void waiter_init(struct waiter *w)
{
    memset(w, 0, sizeof *w);
    sem_init(&w->posted, 0, 0);
}

int replica_propose(struct replica *r, const void *data, size_t len, int64_t *result)
{
    struct waiter w;
    waiter_init(&w);
    w.data = data;
    w.len = len;
    pthread_mutex_lock(&r->lock);
    int rc;
    if (r->failed || r->stop) {
        rc = r->failed ? -EIO : -ESHUTDOWN;
        pthread_mutex_unlock(&r->lock);
    } else {
        w.next = r->new_props;
        r->new_props = &w;
        bool wake = wake_replica_locked(r);
        struct waiter **lists[] = {&r->new_props, &r->backlog};
        rc = wait_done(r, &w, lists, ARRAY_LEN(lists), wake);
    }
    sem_destroy(&w.posted);
    if (rc == 0)
        *result = w.result;
    return rc;
}

int replica_read_barrier(struct replica *r)
{
    struct waiter w;
    waiter_init(&w);
    pthread_mutex_lock(&r->lock);
    int rc;
    if (r->failed || r->stop) {
        rc = r->failed ? -EIO : -ESHUTDOWN;
        pthread_mutex_unlock(&r->lock);
    } else {
        w.next = r->new_reads;
        r->new_reads = &w;
        bool wake = wake_replica_locked(r);
        struct waiter **lists[] = {&r->new_reads, &r->reading};
        rc = wait_done(r, &w, lists, ARRAY_LEN(lists), wake);
    }
    sem_destroy(&w.posted);
    return rc;
}

void replica_receive(struct replica *r, const struct px_msg *m)
{
    pthread_mutex_lock(&r->lock);
    if (r->n_in == r->cap_in) {
        r->cap_in = r->cap_in ? r->cap_in * 2 : 256;
        r->in_msgs = realloc(r->in_msgs, sizeof *r->in_msgs * r->cap_in);
        ASSERT(r->in_msgs != NULL);
    }
    px_msg_copy(&r->in_msgs[r->n_in++], m);
    bool wake = wake_replica_locked(r);
    pthread_mutex_unlock(&r->lock);
    if (wake)
        pthread_cond_signal(&r->wake);
}

void replica_peer_lost(struct replica *r, uint32_t peer, bool by_peer)
{
    if (peer < 1 || peer > PX_NODES_MAX)
        return;
    pthread_mutex_lock(&r->lock);
    r->peers_lost |= 1u << (peer - 1);
    if (by_peer)
        r->peers_ended |= 1u << (peer - 1);
    bool wake = wake_replica_locked(r);
    pthread_mutex_unlock(&r->lock);
    if (wake)
        pthread_cond_signal(&r->wake);
}

void replica_status(struct replica *r, struct replica_status *st)
{
    pthread_mutex_lock(&r->lock);
    *st = r->status;
    st->failed = r->failed;
    pthread_mutex_unlock(&r->lock);
}

/* ---- the replica thread ------------------------------------------------ */

/* Persists what the ready batch asks, then makes it durable with one
 * (group) fsync. Nothing of this batch is sent before this returns 0. */
static int persist(struct replica *r, const struct px_ready *rd)
{
    uint64_t lsn = 0;
    int rc = 0;
    if (rd->promised_changed)
        rc = wal_put_u64(r->wal, REC_PROMISE, rd->promised, &lsn);
    for (size_t i = 0; rc == 0 && i < rd->n_persist; i++) {
        const struct px_entry *e = &rd->persist[i];
        uint8_t head[16];
        le_put_u64(head, e->slot);
        le_put_u64(head + 8, e->ballot);
        struct iovec iov[2] = {{head, sizeof head}, {e->value->data, e->value->len}};
        rc = wal_appendv(r->wal, REC_ENTRY, iov, 2, &lsn);
        r->max_entry_slot = MAX(r->max_entry_slot, e->slot);
    }
    /* Promises and accepted entries are what replies depend on: they are
     * synced before anything that depends on them leaves. The commit index
     * is a hint for the replay at start-up (what is chosen is a property
     * of a majority's entries, which are durable): it goes to disk with the
     * next sync, and a commit alone costs no fsync before its apply. */
    bool must_sync = lsn != 0;
    if (rc == 0 && rd->commit_changed)
        rc = wal_put_u64(r->wal, REC_COMMIT, rd->commit, &lsn);
    if (rc == 0 && must_sync)
        rc = wal_sync(r->wal, lsn);
    return rc;
}

/* Results of this replica's own proposals, handed to their waiters. */
struct own_result {
    uint64_t seq;
    int64_t result;
};

static void complete_own(struct replica *r, const struct own_result *done, size_t n)
{
    if (n == 0)
        return;
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; i < n; i++) {
        struct waiter **chain = &r->proposed[done[i].seq % PX_SESSION_WINDOW];
        for (struct waiter *w = *chain; w; w = w->next) {
            if (w->seq == done[i].seq) {
                list_remove(chain, w);
                complete(w, 0, done[i].result);
                break;
            }
        }
    }
    pthread_mutex_unlock(&r->lock);
}

/* Applies one chosen slot: each proposal once, results to their waiters.
 * The waiters are completed in groups under one hold of r->lock, not one
 * lock round per proposal: the proposers contend for that lock. */
static void apply_slot(struct replica *r, const struct px_entry *e)
{
    struct px_batch_iter it;
    struct px_proposal p;
    if (px_batch_iter_init(&it, e->value) != 0) {
        LOG_E("node=%u slot=%llu event=apply error=\"malformed batch\"", r->cfg.id,
              (unsigned long long)e->slot);
        return;
    }
    struct own_result done[64];
    size_t n_done = 0;
    int rc;
    while ((rc = px_batch_next(&it, &p)) == 1) {
        int64_t result = 0;
        int seen = px_dedup_check(r->dedup, p.origin, p.session, p.seq, &result);
        if (seen == 0) {
            result = r->cfg.sm.apply(r->cfg.sm.ctx, e->slot, p.data, p.len);
            px_dedup_record(r->dedup, p.origin, p.session, p.seq, result);
        } else if (seen < 0) {
            continue; /* too old to tell: never applied again */
        }
        if (p.origin == r->cfg.id && p.session > r->session && !r->session_behind_logged) {
            /* An earlier life of this node used a newer session: the clock
             * went back (open_replica). Our proposals may then be taken for
             * that life's and not be applied; say why, once. */
            r->session_behind_logged = true;
            LOG_E("node=%u event=session_behind session=%llu seen=%llu: an earlier life of "
                  "this node used a newer session (was the clock set back?); its proposals may "
                  "be taken for that life's: restart it once the clock is right",
                  r->cfg.id, (unsigned long long)r->session, (unsigned long long)p.session);
        }
        if (p.origin != r->cfg.id || p.session != r->session)
            continue;
        done[n_done++] = (struct own_result){p.seq, result};
        if (n_done == ARRAY_LEN(done)) {
            complete_own(r, done, n_done);
            n_done = 0;
        }
    }
    complete_own(r, done, n_done);
    if (rc < 0)
        LOG_E("node=%u slot=%llu event=apply error=\"malformed proposal\"", r->cfg.id,
              (unsigned long long)e->slot);
    r->applied = e->slot;
    r->snap_applied_bytes += e->value->len;
}

/* Read waiters whose index is now applied are done; refused ones ask again. */
static void reads_progress(struct replica *r, const struct px_ready *rd)
{
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; i < rd->n_reads; i++) {
        for (struct waiter *w = r->reading; w; w = w->next) {
            if (w->read_id != rd->reads[i].id)
                continue;
            if (rd->reads[i].status == 0) {
                w->index = rd->reads[i].index;
                w->index_known = true;
            } else
                w->read_id = 0; /* ask again on the next tick */
            break;
        }
    }
    for (struct waiter *w = r->reading, *next; w; w = next) {
        next = w->next;
        if (w->index_known && w->index <= r->applied) {
            list_remove(&r->reading, w);
            complete(w, 0, 0);
        }
    }
    pthread_mutex_unlock(&r->lock);
}

/* Sends rd's messages that go out after the persist (after_persist) or
 * before it, then flushes the transport once for all of them. */
static void send_msgs(struct replica *r, const struct px_ready *rd, bool after_persist)
{
    bool sent = false;
    for (size_t i = 0; i < rd->n_msgs; i++) {
        if (px_msg_after_persist(rd->msgs[i].type) != after_persist)
            continue;
        r->cfg.transport.send(r->cfg.transport.ctx, &rd->msgs[i]);
        sent = true;
    }
    if (sent && r->cfg.transport.flush)
        r->cfg.transport.flush(r->cfg.transport.ctx);
}

static int process_ready(struct replica *r)
{
    while (px_has_ready(r->px)) {
        struct px_ready rd;
        px_ready(r->px, &rd);
        /* Requests go out first, so followers fsync while we do. */
        send_msgs(r, &rd, false);
        int rc = persist(r, &rd);
        if (rc != 0) {
            LOG_E("node=%u event=wal_failed error=%d: the replica stops; restart it "
                  "(or rebuild it from its peers)", r->cfg.id, rc);
            px_advance(r->px, &rd);
            return rc;
        }
        send_msgs(r, &rd, true);
        for (size_t i = 0; i < rd.n_apply; i++)
            apply_slot(r, &rd.apply[i]);
        reads_progress(r, &rd);
        if (rd.snapshot_needed) {
            LOG_I("node=%u event=snapshot_needed from=%u slot=%llu", r->cfg.id,
                  rd.snapshot_from, (unsigned long long)rd.snapshot_slot);
            if (r->cfg.sm.snapshot_needed)
                r->cfg.sm.snapshot_needed(r->cfg.sm.ctx, rd.snapshot_from, rd.snapshot_slot);
        }
        px_advance(r->px, &rd);
    }
    return 0;
}

/* ---- snapshots ---------------------------------------------------------- */

static void call_complete(struct call *c, int status, uint64_t slot)
{
    c->done = true;
    c->status = status;
    c->slot = slot;
    pthread_cond_signal(&c->cond);
}

/* The snapshot thread: the image begun on the replica thread, sm.sync, then
 * the file, durably; older files go (the newest two stay: the previous one
 * is a fallback until the log is truncated past it). And the WAL's
 * truncation once a snapshot is on disk: its fsyncs and unlinks would
 * otherwise stall the replica thread. */
static void *snapper_main(void *arg)
{
    struct replica *r = arg;
    pthread_setname_np(pthread_self(), "paxfs-snapshot");
    pthread_mutex_lock(&r->lock);
    for (;;) {
        while (!r->stop && !(r->snap_busy && !r->snap_result_ready) && !r->wal_cut_lsn)
            pthread_cond_wait(&r->snap_wake, &r->lock);
        if (r->stop)
            break;
        if (r->wal_cut_lsn) {
            uint64_t lsn = r->wal_cut_lsn;
            r->wal_cut_lsn = 0;
            pthread_mutex_unlock(&r->lock);
            int rc = wal_truncate_before(r->wal, lsn);
            pthread_mutex_lock(&r->lock);
            if (rc != 0 && !r->wal_cut_rc) {
                r->wal_cut_rc = rc;
                pthread_cond_signal(&r->wake);
            }
            continue;
        }
        uint64_t slot = r->snap_job_slot, previous = r->snap_job_keep;
        pthread_mutex_unlock(&r->lock);
        struct buf sm;
        buf_init(&sm);
        int rc = r->cfg.sm.snapshot_image(r->cfg.sm.ctx, &sm);
        buf_reset(&r->snap_job);
        if (rc == 0) {
            snapfile_encode(slot, r->snap_dedup.data, r->snap_dedup.len, sm.data, sm.len,
                            &r->snap_job);
            if (r->cfg.sm.sync)
                rc = r->cfg.sm.sync(r->cfg.sm.ctx,
                                    r->snap_job.data + SNAPFILE_HEADER_BYTES + r->snap_dedup.len,
                                    sm.len);
        }
        buf_deinit(&sm);
        if (rc == 0)
            rc = snapfile_write(r->cfg.snap_dir, slot, r->snap_job.data, r->snap_job.len);
        if (rc == 0)
            snapfile_prune(r->cfg.snap_dir, previous, true);
        pthread_mutex_lock(&r->lock);
        r->snap_result = rc;
        r->snap_result_ready = true;
        pthread_cond_signal(&r->wake);
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

/* Appends what the log before a cut must not take with it. Here, on the
 * replica thread, in order with every other record (a promise re-logged
 * later would undo a newer one); wal_truncate_before syncs it before it
 * deletes anything. */
static int wal_relog_state(struct replica *r, uint64_t snapshot_slot)
{
    struct px_status ps;
    px_status(r->px, &ps);
    uint64_t lsn;
    int rc = wal_put_u64(r->wal, REC_PROMISE, ps.promised, &lsn);
    if (rc == 0)
        rc = wal_put_u64(r->wal, REC_SESSION, r->session, &lsn);
    if (rc == 0)
        rc = wal_put_u64(r->wal, REC_COMMIT, ps.commit, &lsn);
    if (rc == 0)
        rc = wal_put_u64(r->wal, REC_SNAPSHOT, snapshot_slot, &lsn);
    return rc;
}

/* The last slot a snapshot at slot lets the core forget: log_slack_slots
 * before it, or later if those slots' values (all in memory) add up to
 * more than log_slack_bytes. Looks at log_slack_slots slots at most. */
static uint64_t slack_start(struct replica *r, uint64_t slot)
{
    uint64_t slack = r->cfg.log_slack_slots;
    uint64_t keep = slot > slack ? slot - slack : 0;
    uint64_t bytes = 0;
    for (uint64_t s = slot; s > keep; s--) {
        const struct px_value *v = px_chosen_value(r->px, s);
        bytes += v ? v->len : 0;
        if (bytes > r->cfg.log_slack_bytes)
            return s;
    }
    return keep;
}

/* A snapshot at slot is on disk: forget what it covers, but the slack. */
static int compact(struct replica *r, uint64_t slot)
{
    r->snap_slot = slot;
    uint64_t keep = slack_start(r, slot);
    if (keep == 0)
        return 0;
    px_compact(r->px, keep);
    /* The newest checkpoint whose entries are all covered. */
    size_t k = r->n_checkpoints;
    for (size_t i = 0; i < r->n_checkpoints; i++)
        if (r->checkpoints[i].max_slot <= keep)
            k = i;
    if (k == r->n_checkpoints)
        return 0;
    uint64_t lsn = r->checkpoints[k].lsn;
    memmove(r->checkpoints, r->checkpoints + k + 1,
            (r->n_checkpoints - k - 1) * sizeof r->checkpoints[0]);
    r->n_checkpoints -= k + 1;
    if (lsn <= wal_first_lsn(r->wal))
        return 0;
    int rc = wal_relog_state(r, slot);
    if (rc == 0) {
        pthread_mutex_lock(&r->lock);
        r->wal_cut_lsn = MAX(r->wal_cut_lsn, lsn);
        pthread_cond_signal(&r->snap_wake);
        pthread_mutex_unlock(&r->lock);
    }
    return rc;
}

/* The slot at which this node's next scheduled snapshot is due: the first
 * after its newest one on a grid of snapshot_every_slots, shifted by
 * (id - 1) / n_nodes of an interval (snapshot_shift). Why shifted: all
 * replicas apply the same slots, so unshifted they would all snapshot at
 * once, and a snapshot costs its node CPU and disk for a while; shifted,
 * while one node takes one, the others of a majority are at full speed.
 * The byte rule is shifted the same way: each node's count of applied
 * bytes starts with a head start of its shift (open_replica). */
static uint64_t next_snapshot_slot(const struct replica *r)
{
    uint64_t every = every_slots(r);
    uint64_t shift = snapshot_shift(r, every);
    /* The smallest s > snap_slot with s = shift (mod every). */
    uint64_t s = r->snap_slot - r->snap_slot % every + shift;
    return s > r->snap_slot ? s : s + every;
}

/* Hands a snapshot to the snapshot thread when one is due (or asked). The
 * image is begun and the table encoded here, between applies, so both
 * match r->applied exactly; the snapshot thread encodes the image. */
static void maybe_snapshot(struct replica *r)
{
    if (!r->cfg.sm.snapshot_begin || !r->cfg.snap_dir[0])
        return;
    pthread_mutex_lock(&r->lock);
    bool busy = r->snap_busy, asked = r->snap_call != NULL;
    if (asked && !busy && r->applied <= r->snap_slot) {
        call_complete(r->snap_call, -EALREADY, r->snap_slot);
        r->snap_call = NULL;
        asked = false;
    }
    pthread_mutex_unlock(&r->lock);
    bool due = asked || r->snap_force || r->applied >= next_snapshot_slot(r) ||
               r->snap_applied_bytes >= every_bytes(r);
    if (busy || !due || r->applied <= r->snap_slot)
        return;
    uint64_t t0 = clock_now_ns();
    int rc = r->cfg.sm.snapshot_begin(r->cfg.sm.ctx);
    if (rc == 0) {
        buf_reset(&r->snap_dedup);
        px_dedup_encode(r->dedup, &r->snap_dedup);
    }
    uint64_t stall = clock_now_ns() - t0;
    if (rc != 0) {
        LOG_E("node=%u event=snapshot slot=%llu error=\"%s\"", r->cfg.id,
              (unsigned long long)r->applied, strerror(-rc));
        r->snap_applied_bytes = 0; /* retry after another interval, not at once */
        return;
    }
    if (r->n_checkpoints == CHECKPOINTS_MAX) {
        memmove(r->checkpoints, r->checkpoints + 1, (CHECKPOINTS_MAX - 1) * sizeof r->checkpoints[0]);
        r->n_checkpoints--;
    }
    r->checkpoints[r->n_checkpoints++] = (struct checkpoint){wal_last_lsn(r->wal) + 1, r->max_entry_slot};
    r->snap_applied_bytes = 0;
    r->snap_force = false;
    pthread_mutex_lock(&r->lock);
    r->snap_job_slot = r->applied;
    r->snap_job_keep = r->snap_slot;
    r->snap_busy = true;
    r->snap_result_ready = false;
    r->status.snapshot_stall_ns_max = MAX(r->status.snapshot_stall_ns_max, stall);
    pthread_cond_signal(&r->snap_wake);
    pthread_mutex_unlock(&r->lock);
    LOG_D("node=%u event=snapshot_start slot=%llu stall_us=%llu", r->cfg.id,
          (unsigned long long)r->snap_job_slot, (unsigned long long)(stall / 1000));
}

/* The snapshot thread finished: compact, and answer replica_snapshot_now. */
static int snapshot_finished(struct replica *r)
{
    pthread_mutex_lock(&r->lock);
    if (r->wal_cut_rc) {
        int cut_rc = r->wal_cut_rc;
        pthread_mutex_unlock(&r->lock);
        LOG_E("node=%u event=wal_truncate error=\"%s\": stopping", r->cfg.id, strerror(-cut_rc));
        return cut_rc;
    }
    if (!r->snap_busy || !r->snap_result_ready) {
        pthread_mutex_unlock(&r->lock);
        return 0;
    }
    int rc = r->snap_result;
    uint64_t slot = r->snap_job_slot;
    r->snap_busy = false;
    r->snap_result_ready = false;
    pthread_mutex_unlock(&r->lock);
    int wal_rc = 0;
    bool stale = rc == 0 && slot <= r->snap_slot; /* an install overtook it */
    if (stale) {
        LOG_D("node=%u event=snapshot slot=%llu: older than the installed %llu", r->cfg.id,
              (unsigned long long)slot, (unsigned long long)r->snap_slot);
    } else if (rc == 0) {
        wal_rc = compact(r, slot);
        LOG_I("node=%u event=snapshot slot=%llu log_first_lsn=%llu", r->cfg.id,
              (unsigned long long)slot, (unsigned long long)wal_first_lsn(r->wal));
    } else {
        LOG_E("node=%u event=snapshot slot=%llu error=\"%s\": keeping the log", r->cfg.id,
              (unsigned long long)slot, strerror(-rc));
    }
    pthread_mutex_lock(&r->lock);
    if (rc == 0 && !stale) {
        r->status.snapshot_slot = slot;
        r->status.snapshots++;
    }
    if (r->snap_call) {
        call_complete(r->snap_call, rc ? rc : wal_rc, slot);
        r->snap_call = NULL;
    }
    pthread_mutex_unlock(&r->lock);
    return wal_rc; /* a WAL that failed stops the replica */
}

static int fsync_path(const char *path, int flags)
{
    int fd = open(path, flags | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

/* A rebuild replaces a diverged state: a snapshot of it that the snapshot
 * thread is still writing must not survive. Waits for it (the thread
 * finishes a file in bounded time) and deletes what it wrote. */
static void discard_snapshot_in_flight(struct replica *r)
{
    pthread_mutex_lock(&r->lock);
    while (r->snap_busy && !r->snap_result_ready && !r->stop)
        pthread_cond_wait(&r->wake, &r->lock);
    bool wrote = r->snap_busy && r->snap_result_ready && r->snap_result == 0;
    uint64_t slot = r->snap_job_slot;
    if (r->snap_busy && r->snap_result_ready) {
        /* A replica_snapshot_now waiting for it gets the one taken after
         * the rebuild instead. */
        r->snap_busy = false;
        r->snap_result_ready = false;
    }
    pthread_mutex_unlock(&r->lock);
    if (wrote) {
        char path[SNAPFILE_PATH_MAX];
        snapfile_path(r->cfg.snap_dir, slot, path);
        unlink(path);
    }
}

/* replica_install_snapshot's work, on the replica thread between readies. */
static int install(struct replica *r, const char *path, bool rebuild, uint64_t *slot_out,
                   int *wal_rc)
{
    if (rebuild)
        discard_snapshot_in_flight(r); /* first: its prune could take our file */
    uint8_t *p;
    size_t len;
    int rc = snapfile_read(path, &p, &len);
    if (rc != 0)
        return rc;
    struct snapfile sf;
    struct px_dedup *d = NULL;
    rc = snapfile_decode(p, len, &sf);
    if (rc == 0 && sf.slot <= r->applied && !rebuild)
        rc = -EALREADY;
    /* A rebuild to an older slot re-applies our log after it: all of it
     * must still be here. */
    bool replay_tail = rc == 0 && sf.slot <= r->applied;
    for (uint64_t s = sf.slot + 1; replay_tail && rc == 0 && s <= r->applied; s++)
        if (!px_chosen_value(r->px, s))
            rc = -ERANGE;
    if (rc == 0)
        rc = px_dedup_decode(sf.dedup, sf.dedup_len, &d);
    if (rc == 0)
        rc = fsync_path(path, O_RDONLY);
    if (rc == 0)
        rc = r->cfg.sm.restore(r->cfg.sm.ctx, sf.sm, sf.sm_len);
    if (rc != 0) {
        px_dedup_free(d);
        free(p);
        return rc;
    }
    uint64_t slot = sf.slot;
    free(p);
    px_dedup_free(r->dedup);
    r->dedup = d;
    if (replay_tail) {
        uint64_t upto = r->applied;
        for (uint64_t s = slot + 1; s <= upto; s++) {
            struct px_entry e = {s, 0, (struct px_value *)px_chosen_value(r->px, s)};
            apply_slot(r, &e);
        }
        /* Our own snapshots hold the diverged state: only the installed
         * one stays, and a fresh one is taken next. */
        uint64_t slots[64];
        size_t n = snapfile_list(r->cfg.snap_dir, slots, 64);
        for (size_t i = 0; i < n && i < 64; i++) {
            char old[SNAPFILE_PATH_MAX];
            snapfile_path(r->cfg.snap_dir, slots[i], old);
            if (slots[i] != slot)
                unlink(old);
        }
        r->snap_slot = 0;
        r->snap_force = true;
    } else {
        px_snapshot_installed(r->px, slot);
        r->applied = slot;
    }
    r->snap_applied_bytes = 0;
    char final[SNAPFILE_PATH_MAX];
    snapfile_path(r->cfg.snap_dir, slot, final);
    if (rename(path, final) != 0 || fsync_path(r->cfg.snap_dir, O_RDONLY | O_DIRECTORY) != 0) {
        LOG_W("node=%u event=snapshot_install slot=%llu error=\"cannot keep the file: %s\"",
              r->cfg.id, (unsigned long long)slot, strerror(errno));
    } else {
        snapfile_prune(r->cfg.snap_dir, MIN(r->snap_slot, slot), false); /* the newest two stay */
        r->snap_slot = slot;
    }
    /* The log may hold nothing before slot now: say a snapshot covers it. */
    uint64_t lsn;
    *wal_rc = wal_put_u64(r->wal, REC_SNAPSHOT, r->snap_slot, &lsn);
    if (*wal_rc == 0)
        *wal_rc = wal_sync(r->wal, lsn);
    /* Our own proposals that the snapshot applied are done. */
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; i < PX_SESSION_WINDOW; i++) {
        for (struct waiter *w = r->proposed[i], *next; w; w = next) {
            next = w->next;
            int64_t result;
            if (px_dedup_check(r->dedup, r->cfg.id, r->session, w->seq, &result) == 1) {
                list_remove(&r->proposed[i], w);
                complete(w, 0, result);
            }
        }
    }
    r->status.snapshot_slot = r->snap_slot;
    r->status.applied = r->applied;
    pthread_mutex_unlock(&r->lock);
    LOG_I("node=%u event=snapshot_installed slot=%llu rebuild=%d", r->cfg.id,
          (unsigned long long)slot, replay_tail);
    *slot_out = slot;
    return 0;
}

static int serve_install(struct replica *r)
{
    pthread_mutex_lock(&r->lock);
    struct call *c = r->install_call;
    r->install_call = NULL;
    pthread_mutex_unlock(&r->lock);
    if (!c)
        return 0;
    uint64_t slot = 0;
    int wal_rc = 0;
    int rc = install(r, c->path, c->rebuild, &slot, &wal_rc);
    pthread_mutex_lock(&r->lock);
    call_complete(c, rc ? rc : wal_rc, slot);
    pthread_mutex_unlock(&r->lock);
    /* Only a WAL failure stops the replica; a bad file is the caller's. */
    return wal_rc;
}

int replica_install_snapshot(struct replica *r, const char *path, bool rebuild)
{
    if (!r->cfg.sm.restore || !r->cfg.snap_dir[0])
        return -ENOTSUP;
    struct call c = {.path = path, .rebuild = rebuild};
    pthread_cond_init(&c.cond, NULL);
    pthread_mutex_lock(&r->lock);
    int rc;
    if (r->failed || r->stop) {
        rc = r->failed ? -EIO : -ESHUTDOWN;
    } else if (r->install_call) {
        rc = -EBUSY;
    } else {
        r->install_call = &c;
        pthread_cond_signal(&r->wake);
        while (!c.done && !r->stop && !r->failed)
            pthread_cond_wait(&c.cond, &r->lock);
        if (!c.done && r->install_call == &c)
            r->install_call = NULL;
        rc = c.done ? c.status : r->failed ? -EIO : -ESHUTDOWN;
    }
    pthread_mutex_unlock(&r->lock);
    pthread_cond_destroy(&c.cond);
    return rc;
}

int replica_snapshot_now(struct replica *r, uint64_t *slot)
{
    if (!r->cfg.sm.snapshot_begin || !r->cfg.snap_dir[0])
        return -ENOTSUP;
    struct call c = {0};
    pthread_cond_init(&c.cond, NULL);
    pthread_mutex_lock(&r->lock);
    int rc;
    if (r->failed || r->stop) {
        rc = r->failed ? -EIO : -ESHUTDOWN;
    } else if (r->snap_call) {
        rc = -EBUSY;
    } else {
        r->snap_call = &c;
        pthread_cond_signal(&r->wake);
        while (!c.done && !r->stop && !r->failed)
            pthread_cond_wait(&c.cond, &r->lock);
        if (!c.done && r->snap_call == &c)
            r->snap_call = NULL;
        rc = c.done ? c.status : r->failed ? -EIO : -ESHUTDOWN;
    }
    pthread_mutex_unlock(&r->lock);
    pthread_cond_destroy(&c.cond);
    if (rc == 0 && slot)
        *slot = c.slot;
    return rc;
}

const char *replica_snap_dir(const struct replica *r)
{
    return r->cfg.snap_dir;
}

/* Feeds the core from the inbox (r->lock held on entry and exit). */
static void take_inbox(struct replica *r, struct px_msg **msgs, size_t *n_msgs, uint32_t *lost,
                       uint32_t *ended)
{
    *msgs = r->in_msgs;
    *n_msgs = r->n_in;
    r->in_msgs = NULL;
    r->n_in = r->cap_in = 0;
    *lost = r->peers_lost;
    *ended = r->peers_ended;
    r->peers_lost = r->peers_ended = 0;
    /* New proposals go behind any backlog, in arrival order. */
    struct waiter *rev = NULL;
    while (r->new_props) {
        struct waiter *w = r->new_props;
        r->new_props = w->next;
        w->next = rev;
        rev = w;
    }
    struct waiter **tail = &r->backlog;
    while (*tail)
        tail = &(*tail)->next;
    *tail = rev;
    while (r->new_reads) {
        struct waiter *w = r->new_reads;
        r->new_reads = w->next;
        w->next = r->reading;
        r->reading = w;
    }
}

static void propose_backlog(struct replica *r)
{
    while (r->backlog) {
        struct waiter *w = r->backlog;
        uint64_t seq;
        int rc = px_propose(r->px, w->data, w->len, &seq);
        if (rc == -EAGAIN)
            return; /* the core's window is full: later */
        r->backlog = w->next;
        if (rc != 0) {
            complete(w, rc, 0);
            continue;
        }
        w->seq = seq;
        w->next = r->proposed[seq % PX_SESSION_WINDOW];
        r->proposed[seq % PX_SESSION_WINDOW] = w;
    }
}

static void ask_read_indexes(struct replica *r)
{
    for (struct waiter *w = r->reading; w; w = w->next) {
        if (w->read_id == 0 && !w->index_known) {
            w->read_id = ++r->next_read_id;
            px_read_index(r->px, w->read_id);
        }
    }
}

static void publish_status(struct replica *r)
{
    struct px_status ps;
    px_status(r->px, &ps);
    r->status.role = ps.role;
    r->status.leader = ps.leader;
    r->status.ballot = ps.ballot;
    r->status.commit = ps.commit;
    r->status.applied = r->applied;
    r->status.session = r->session;
    r->status.log_first = ps.log_first;
}

/* Ticks keep to the clock: each is due tick_ms after the one before, not
 * after the moment it ran, so that small delays do not add up. When the
 * thread falls a whole tick behind (a slow fsync, the scheduler, SIGSTOP)
 * the core is told: its lease counts ticks, and may not count a stall as
 * no time. The missed ticks are not made up: the core's timers would take
 * the stall for silence from its peers, whose messages wait in the inbox. */
static uint64_t tick_ns(const struct replica *r)
{
    return (uint64_t)r->cfg.tick_ms * 1000000u;
}

static void tick_if_due(struct replica *r, uint64_t *next_tick_ns)
{
    uint64_t now = clock_now_ns();
    if (now < *next_tick_ns)
        return;
    px_tick(r->px);
    *next_tick_ns += tick_ns(r);
    if (now >= *next_tick_ns) {
        px_clock_stalled(r->px);
        *next_tick_ns = now + tick_ns(r);
    }
}

/* Just before the core answers reads from its lease: a tick that fell due
 * since tick_if_due means the thread stalled in between. */
static void check_stall(struct replica *r, uint64_t next_tick_ns)
{
    if (clock_now_ns() > next_tick_ns)
        px_clock_stalled(r->px);
}

static void *replica_main(void *arg)
{
    struct replica *r = arg;
    pthread_setname_np(pthread_self(), "paxfs-replica");
    uint64_t next_tick_ns = clock_now_ns() + tick_ns(r);
    /* The committed log comes back first: the state machine is rebuilt. */
    int rc = process_ready(r);
    pthread_mutex_lock(&r->lock);
    while (!r->stop && rc == 0) {
        if (!r->n_in && !r->peers_lost && !r->new_props && !r->new_reads &&
            !r->install_call && !(r->snap_call && !r->snap_busy) && !r->snap_result_ready &&
            !r->wal_cut_rc) {
            struct timespec until = {(time_t)(next_tick_ns / 1000000000u),
                                     (long)(next_tick_ns % 1000000000u)};
            r->asleep = true;
            pthread_cond_timedwait(&r->wake, &r->lock, &until);
            r->asleep = false;
        }
        struct px_msg *msgs;
        size_t n_msgs;
        uint32_t lost, ended;
        take_inbox(r, &msgs, &n_msgs, &lost, &ended);
        /* The core is this thread's alone: the lock is only for the inbox
         * and the waiter lists, so step outside it, except for the lists. */
        pthread_mutex_unlock(&r->lock);
        for (size_t i = 0; i < n_msgs; i++) {
            px_step(r->px, &msgs[i]);
            px_msg_clear(&msgs[i]);
        }
        free(msgs);
        for (uint32_t p = 1; p <= PX_NODES_MAX; p++)
            if (lost & (1u << (p - 1)))
                px_peer_lost(r->px, p, ended & (1u << (p - 1)));
        tick_if_due(r, &next_tick_ns);
        pthread_mutex_lock(&r->lock);
        propose_backlog(r);
        check_stall(r, next_tick_ns);
        ask_read_indexes(r);
        pthread_mutex_unlock(&r->lock);
        rc = process_ready(r);
        pthread_mutex_lock(&r->lock);
        propose_backlog(r); /* the window may have opened */
        pthread_mutex_unlock(&r->lock);
        if (rc == 0)
            rc = process_ready(r);
        if (rc == 0)
            rc = serve_install(r);
        if (rc == 0)
            rc = snapshot_finished(r);
        if (rc == 0)
            maybe_snapshot(r);
        pthread_mutex_lock(&r->lock);
        publish_status(r);
    }
    if (rc != 0) {
        r->failed = true;
        fail_all(r, -EIO);
    } else {
        fail_all(r, -ESHUTDOWN);
    }
    if (r->install_call) {
        call_complete(r->install_call, rc ? -EIO : -ESHUTDOWN, 0);
        r->install_call = NULL;
    }
    if (r->snap_call) {
        call_complete(r->snap_call, rc ? -EIO : -ESHUTDOWN, 0);
        r->snap_call = NULL;
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

int replica_start(struct replica *r)
{
    ASSERT(!r->running);
    int rc = pthread_create(&r->thread, NULL, replica_main, r);
    if (rc != 0)
        return -rc;
    r->running = true;
    if (r->cfg.sm.snapshot_begin && r->cfg.snap_dir[0]) {
        rc = pthread_create(&r->snapper, NULL, snapper_main, r);
        if (rc != 0) {
            replica_stop(r);
            return -rc;
        }
        r->snapper_running = true;
    }
    return 0;
}

void replica_stop(struct replica *r)
{
    if (!r->running)
        return;
    pthread_mutex_lock(&r->lock);
    r->stop = true;
    pthread_cond_signal(&r->wake);
    pthread_cond_signal(&r->snap_wake);
    pthread_mutex_unlock(&r->lock);
    pthread_join(r->thread, NULL);
    if (r->snapper_running)
        pthread_join(r->snapper, NULL); /* a file being written is finished first */
    r->snapper_running = false;
    r->running = false;
}

void replica_close(struct replica *r)
{
    if (!r)
        return;
    replica_stop(r);
    wal_close(r->wal);
    px_free(r->px);
    px_dedup_free(r->dedup);
    for (size_t i = 0; i < r->n_in; i++)
        px_msg_clear(&r->in_msgs[i]);
    free(r->in_msgs);
    buf_deinit(&r->snap_job);
    buf_deinit(&r->snap_dedup);
    pthread_cond_destroy(&r->snap_wake);
    pthread_cond_destroy(&r->wake);
    pthread_mutex_destroy(&r->lock);
    free(r);
}
