/* replica — the replica driver; the contract and the threading model are in
 * replica.h. */
#include "consensus/replica.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>

#include "base/assert.h"
#include "base/buf.h"
#include "base/log.h"
#include "consensus/wal.h"

enum wal_record_type {
    REC_PROMISE = 1, /* u64 ballot */
    REC_ENTRY = 2,   /* u64 slot, u64 ballot, value bytes */
    REC_COMMIT = 3,  /* u64 slot */
    REC_SESSION = 4, /* u64 session */
};

/* A client thread waiting for a proposal or a read barrier. Lives on that
 * thread's stack; every field is guarded by r->lock. */
struct waiter {
    pthread_cond_t cond;
    bool done;
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
    uint64_t applied;

    pthread_t thread;
    bool running;

    pthread_mutex_t lock;
    pthread_cond_t wake;
    bool stop;
    bool failed;
    /* inbox, guarded by lock */
    struct px_msg *in_msgs;
    size_t n_in, cap_in;
    uint32_t peers_down; /* bitmask */
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
}

/* ---- WAL replay -------------------------------------------------------- */

struct replay_state {
    struct px_node *px; /* NULL in the first pass */
    uint64_t promised, commit, session;
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

int replica_open(const struct replica_config *cfg, struct replica **out)
{
    ASSERT(cfg->sm.apply && cfg->transport.send);
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
    /* Pass 1 learns the session; pass 2 restores the core. */
    struct replay_state st = {0};
    rc = wal_replay(r->wal, 0, replay_record, &st);
    if (rc == 0) {
        r->session = st.session + 1;
        struct px_config pc;
        px_config_defaults(&pc, cfg->id, cfg->n_nodes);
        pc.seed = ((uint64_t)cfg->id << 40) ^ r->session ^ (uint64_t)time(NULL);
        pc.session = r->session;
        pc.ticks_election = cfg->ticks_election ? cfg->ticks_election : 20;
        pc.ticks_heartbeat = cfg->ticks_heartbeat ? cfg->ticks_heartbeat : 2;
        pc.window = cfg->window ? cfg->window : 32;
        r->px = px_new(&pc);
        struct replay_state st2 = {.px = r->px};
        rc = wal_replay(r->wal, 0, replay_record, &st2);
        px_restore_promised(r->px, st2.promised);
        px_restore_commit(r->px, st2.commit);
    }
    uint64_t lsn;
    if (rc == 0)
        rc = wal_put_u64(r->wal, REC_SESSION, r->session, &lsn);
    if (rc == 0)
        rc = wal_sync(r->wal, lsn);
    if (rc != 0) {
        px_free(r->px);
        wal_close(r->wal);
        free(r);
        return rc;
    }
    r->dedup = px_dedup_new();
    pthread_mutex_init(&r->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->wake, &ca);
    pthread_condattr_destroy(&ca);
    r->status.session = r->session;
    LOG_I("node=%u event=replica_open session=%llu commit=%llu", cfg->id,
          (unsigned long long)r->session, (unsigned long long)st.commit);
    *out = r;
    return 0;
}

/* ---- waiters ----------------------------------------------------------- */

static void complete(struct waiter *w, int status, int64_t result)
{
    w->done = true;
    w->status = status;
    w->result = result;
    pthread_cond_signal(&w->cond);
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

static void deadline_after(struct timespec *ts, uint32_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Waits (r->lock held) until w completes or the op timeout passes; on
 * timeout w is taken out of whatever list holds it. */
static int wait_done(struct replica *r, struct waiter *w, struct waiter **lists[], size_t n_lists)
{
    struct timespec dl;
    deadline_after(&dl, r->cfg.op_timeout_ms ? r->cfg.op_timeout_ms : 30000);
    while (!w->done) {
        if (pthread_cond_timedwait(&w->cond, &r->lock, &dl) == ETIMEDOUT && !w->done) {
            for (size_t i = 0; i < n_lists; i++)
                list_remove(lists[i], w);
            if (w->seq)
                list_remove(&r->proposed[w->seq % PX_SESSION_WINDOW], w);
            return -EIO;
        }
    }
    return w->status;
}

static void waiter_init(struct waiter *w)
{
    memset(w, 0, sizeof *w);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cond, &ca);
    pthread_condattr_destroy(&ca);
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
    } else {
        w.next = r->new_props;
        r->new_props = &w;
        pthread_cond_signal(&r->wake);
        struct waiter **lists[] = {&r->new_props, &r->backlog};
        rc = wait_done(r, &w, lists, ARRAY_LEN(lists));
    }
    pthread_mutex_unlock(&r->lock);
    pthread_cond_destroy(&w.cond);
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
    } else {
        w.next = r->new_reads;
        r->new_reads = &w;
        pthread_cond_signal(&r->wake);
        struct waiter **lists[] = {&r->new_reads, &r->reading};
        rc = wait_done(r, &w, lists, ARRAY_LEN(lists));
    }
    pthread_mutex_unlock(&r->lock);
    pthread_cond_destroy(&w.cond);
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
    pthread_cond_signal(&r->wake);
    pthread_mutex_unlock(&r->lock);
}

void replica_peer_down(struct replica *r, uint32_t peer)
{
    if (peer < 1 || peer > PX_NODES_MAX)
        return;
    pthread_mutex_lock(&r->lock);
    r->peers_down |= 1u << (peer - 1);
    pthread_cond_signal(&r->wake);
    pthread_mutex_unlock(&r->lock);
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
    }
    if (rc == 0 && rd->commit_changed)
        rc = wal_put_u64(r->wal, REC_COMMIT, rd->commit, &lsn);
    if (rc == 0 && lsn)
        rc = wal_sync(r->wal, lsn);
    return rc;
}

/* Applies one chosen slot: each proposal once, results to their waiters. */
static void apply_slot(struct replica *r, const struct px_entry *e)
{
    struct px_batch_iter it;
    struct px_proposal p;
    if (px_batch_iter_init(&it, e->value) != 0) {
        LOG_E("node=%u slot=%llu event=apply error=\"malformed batch\"", r->cfg.id,
              (unsigned long long)e->slot);
        return;
    }
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
        if (p.origin != r->cfg.id || p.session != r->session)
            continue;
        pthread_mutex_lock(&r->lock);
        struct waiter **chain = &r->proposed[p.seq % PX_SESSION_WINDOW];
        for (struct waiter *w = *chain; w; w = w->next) {
            if (w->seq == p.seq) {
                list_remove(chain, w);
                complete(w, 0, result);
                break;
            }
        }
        pthread_mutex_unlock(&r->lock);
    }
    if (rc < 0)
        LOG_E("node=%u slot=%llu event=apply error=\"malformed proposal\"", r->cfg.id,
              (unsigned long long)e->slot);
    r->applied = e->slot;
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

static int process_ready(struct replica *r)
{
    while (px_has_ready(r->px)) {
        struct px_ready rd;
        px_ready(r->px, &rd);
        /* Requests go out first, so followers fsync while we do. */
        for (size_t i = 0; i < rd.n_msgs; i++)
            if (!px_msg_after_persist(rd.msgs[i].type))
                r->cfg.transport.send(r->cfg.transport.ctx, &rd.msgs[i]);
        int rc = persist(r, &rd);
        if (rc != 0) {
            LOG_E("node=%u event=wal_failed error=%d: the replica stops; restart it "
                  "(or rebuild it from its peers)", r->cfg.id, rc);
            px_advance(r->px, &rd);
            return rc;
        }
        for (size_t i = 0; i < rd.n_msgs; i++)
            if (px_msg_after_persist(rd.msgs[i].type))
                r->cfg.transport.send(r->cfg.transport.ctx, &rd.msgs[i]);
        for (size_t i = 0; i < rd.n_apply; i++)
            apply_slot(r, &rd.apply[i]);
        reads_progress(r, &rd);
        if (rd.snapshot_needed)
            LOG_W("node=%u event=snapshot_needed from=%u slot=%llu: snapshot transfer is "
                  "not available yet", r->cfg.id, rd.snapshot_from,
                  (unsigned long long)rd.snapshot_slot);
        px_advance(r->px, &rd);
    }
    return 0;
}

/* Feeds the core from the inbox (r->lock held on entry and exit). */
static void take_inbox(struct replica *r, struct px_msg **msgs, size_t *n_msgs, uint32_t *down)
{
    *msgs = r->in_msgs;
    *n_msgs = r->n_in;
    r->in_msgs = NULL;
    r->n_in = r->cap_in = 0;
    *down = r->peers_down;
    r->peers_down = 0;
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
}

static void *replica_main(void *arg)
{
    struct replica *r = arg;
    struct timespec next_tick;
    deadline_after(&next_tick, r->cfg.tick_ms);
    /* The committed log comes back first: the state machine is rebuilt. */
    int rc = process_ready(r);
    pthread_mutex_lock(&r->lock);
    while (!r->stop && rc == 0) {
        if (!r->n_in && !r->peers_down && !r->new_props && !r->new_reads)
            pthread_cond_timedwait(&r->wake, &r->lock, &next_tick);
        struct px_msg *msgs;
        size_t n_msgs;
        uint32_t down;
        take_inbox(r, &msgs, &n_msgs, &down);
        /* The core is this thread's alone: the lock is only for the inbox
         * and the waiter lists, so step outside it, except for the lists. */
        pthread_mutex_unlock(&r->lock);
        for (size_t i = 0; i < n_msgs; i++) {
            px_step(r->px, &msgs[i]);
            px_msg_clear(&msgs[i]);
        }
        free(msgs);
        for (uint32_t p = 1; p <= PX_NODES_MAX; p++)
            if (down & (1u << (p - 1)))
                px_peer_unreachable(r->px, p);
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        bool tick = now.tv_sec > next_tick.tv_sec ||
                    (now.tv_sec == next_tick.tv_sec && now.tv_nsec >= next_tick.tv_nsec);
        if (tick) {
            px_tick(r->px);
            deadline_after(&next_tick, r->cfg.tick_ms);
        }
        pthread_mutex_lock(&r->lock);
        propose_backlog(r);
        ask_read_indexes(r);
        pthread_mutex_unlock(&r->lock);
        rc = process_ready(r);
        pthread_mutex_lock(&r->lock);
        propose_backlog(r); /* the window may have opened */
        pthread_mutex_unlock(&r->lock);
        if (rc == 0)
            rc = process_ready(r);
        pthread_mutex_lock(&r->lock);
        publish_status(r);
    }
    if (rc != 0) {
        r->failed = true;
        fail_all(r, -EIO);
    } else {
        fail_all(r, -ESHUTDOWN);
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
    return 0;
}

void replica_stop(struct replica *r)
{
    if (!r->running)
        return;
    pthread_mutex_lock(&r->lock);
    r->stop = true;
    pthread_cond_signal(&r->wake);
    pthread_mutex_unlock(&r->lock);
    pthread_join(r->thread, NULL);
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
    pthread_cond_destroy(&r->wake);
    pthread_mutex_destroy(&r->lock);
    free(r);
}
