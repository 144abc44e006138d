/* paxfs-sim — the deterministic simulator of the consensus core.
 *
 *   paxfs-sim --seeds N [--first S] [--nodes 3|5] [--steps K]
 *   paxfs-sim --seed S [--nodes 3|5] [--steps K] --trace
 *
 * One seed decides the whole run: the fault probabilities, the schedule,
 * every message delay, every crash (TigerBeetle's VOPR, FoundationDB's
 * simulation). N cores (3 or 5) run over a virtual network that drops,
 * delays, reorders and duplicates messages and partitions nodes (also one
 * way only); nodes crash and restart with only what they had persisted,
 * including crashes in the middle of persisting a ready batch. Each node's
 * clock runs at its own rate (up to 30% apart); a node freezes now and then
 * (a stalled replica thread, SIGSTOP: no ticks, no messages, no clients)
 * and says so when it resumes (px_clock_stalled); connections break, by
 * one side or by a crash, and each side is told as the transport would
 * tell it (px_peer_lost). Clients
 * propose throughout; nodes take snapshots and compact their logs, and a
 * node that fell behind the compaction point installs a peer's snapshot.
 *
 * The checkers sit outside the code under test and run on every apply:
 *   agreement    no two nodes apply different values at one slot, and the
 *                state after each slot is the same everywhere;
 *   validity     every applied proposal was proposed, with those bytes;
 *   durability   a slot once applied anywhere keeps its value forever,
 *                across crashes and snapshot installs (same global table);
 *   exactly-once no (origin, session, seq) is applied at two slots;
 *   read index   a completed read index covers every proposal acknowledged
 *                to a client before the read was asked.
 * Then the liveness phase heals everything and requires, within a bounded
 * number of steps, one leader that every node follows, no proposal pending,
 * and every node applied up to the same commit.
 *
 * Prints one line `seeds=N violations=V chosen=C` and exits 1 on any
 * violation; each violation names its seed, which --seed S --trace replays. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/assert.h"
#include "base/buf.h"
#include "base/log.h"
#include "base/prng.h"
#include "consensus/px.h"
#include "consensus/px_msg.h"

#define NODES_MAX 5

/* ---- a tiny hash ------------------------------------------------------- */

static uint64_t mix64(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 33);
}

static uint64_t hash_bytes(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* ---- the run's parameters, all drawn from the seed ---------------------- */

struct params {
    uint32_t nodes;
    uint32_t steps;
    uint32_t drop_pm;      /* per million, per message */
    uint32_t dup_pm;
    uint32_t delay_max;    /* steps */
    uint32_t tick_pm;      /* slowest clock: ticks per million steps (skew) */
    uint32_t stall_pm;     /* per step, per node: it freezes a while */
    uint32_t reset_pm;     /* per step: a node drops a connection */
    uint32_t propose_pm;   /* chance per step that a client proposes */
    uint32_t crash_pm;     /* per step */
    uint32_t crash_mid_pm; /* per ready batch: crash while persisting */
    uint32_t restart_pm;   /* per step, per down node */
    uint32_t partition_pm; /* per step: change the partition */
    uint32_t snap_every;   /* slots between snapshots, 0 = never */
    uint32_t snap_slack;   /* slots kept behind a snapshot */
    uint32_t window;
    uint32_t batch_count_max;
    uint32_t ticks_election;
    uint32_t ticks_heartbeat;
};

/* ---- global checker state ---------------------------------------------- */

struct slot_truth {
    bool set;
    uint64_t value_hash;
    uint64_t chain; /* the state machine's chain hash after this slot */
};

struct proposal_info {
    bool used;
    uint32_t origin;
    uint64_t session;
    uint64_t seq;
    uint64_t data_hash;
    uint64_t applied_slot; /* 0: not yet */
};

struct world;

/* ---- per node ----------------------------------------------------------- */

struct fsm {
    uint64_t applied;
    uint64_t chain;
    struct px_dedup *dedup;
};

struct stored_entry {
    uint64_t ballot;
    struct px_value *value;
};

/* What a node has on stable storage: all that survives a crash. */
struct storage {
    uint64_t promised;
    uint64_t commit;
    uint64_t base;                /* slots <= base are dropped */
    struct stored_entry *log;     /* log[slot - base - 1] */
    size_t log_len;
    uint64_t snap_slot;           /* the state machine image, 0 = none */
    uint64_t snap_chain;
    struct buf snap_dedup;
};

struct node {
    uint32_t id;
    bool up;
    uint64_t incarnation;
    struct px_node *px;
    struct fsm fsm;
    struct storage st;
    uint64_t reads_asked;
    uint32_t tick_rate;   /* ticks per million steps */
    uint32_t tick_acc;    /* the clock's phase, in millionths of a tick */
    uint64_t stall_until; /* frozen before this step */
};

struct inflight {
    uint64_t at;
    struct px_msg m;
};

struct pending_read {
    uint32_t node;
    uint64_t incarnation;
    uint64_t id;
    uint64_t acked_at_ask;
};

struct world {
    uint64_t seed;
    struct params p;
    struct prng rng;
    uint64_t now;
    bool trace;
    bool healing;
    uint32_t crashed_untold; /* bitmask of nodes whose crash peers are yet to see */
    int violations;
    char first_violation[256];

    struct node nodes[NODES_MAX + 1];
    bool blocked[NODES_MAX + 1][NODES_MAX + 1];
    uint64_t redial_at[NODES_MAX + 1][NODES_MAX + 1]; /* a reset connection is down till then */

    struct inflight *net;
    size_t n_net, cap_net;

    struct slot_truth *truth;
    size_t cap_truth;
    uint64_t max_slot;

    struct proposal_info *props;
    size_t cap_props, n_props;
    uint64_t acked_max; /* highest slot applied at the proposer of one of its proposals */

    struct pending_read *reads;
    size_t n_reads, cap_reads;
    uint64_t next_read_id;
};

#define GROW(arr, n, cap)                                                     \
    do {                                                                      \
        if ((n) == (cap)) {                                                   \
            size_t nc_ = (cap) ? (cap) * 2 : 64;                              \
            void *p_ = realloc((arr), sizeof *(arr) * nc_);                   \
            ASSERT(p_ != NULL);                                               \
            (arr) = p_;                                                       \
            (cap) = nc_;                                                      \
        }                                                                     \
    } while (0)

static void trace(struct world *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void trace(struct world *w, const char *fmt, ...)
{
    if (!w->trace)
        return;
    va_list ap;
    va_start(ap, fmt);
    printf("step=%" PRIu64 " ", w->now);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

static void violation(struct world *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void violation(struct world *w, const char *fmt, ...)
{
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (w->violations == 0)
        snprintf(w->first_violation, sizeof w->first_violation,
                 "seed=%" PRIu64 " step=%" PRIu64 " %s", w->seed, w->now, msg);
    w->violations++;
    trace(w, "VIOLATION %s", msg);
}

/* ---- proposals table (open addressing) ---------------------------------- */

static uint64_t prop_key(uint32_t origin, uint64_t session, uint64_t seq)
{
    return mix64(mix64(mix64(0, origin), session), seq);
}

static struct proposal_info *prop_find(struct world *w, uint32_t origin, uint64_t session,
                                       uint64_t seq, bool insert)
{
    if (insert && (w->n_props + 1) * 2 > w->cap_props) {
        size_t old_cap = w->cap_props;
        struct proposal_info *old = w->props;
        w->cap_props = old_cap ? old_cap * 2 : 1024;
        w->props = calloc(w->cap_props, sizeof *w->props);
        ASSERT(w->props != NULL);
        w->n_props = 0;
        for (size_t i = 0; i < old_cap; i++) {
            if (!old[i].used)
                continue;
            struct proposal_info *q = prop_find(w, old[i].origin, old[i].session, old[i].seq, true);
            *q = old[i];
            w->n_props++;
        }
        free(old);
    }
    if (w->cap_props == 0)
        return NULL;
    size_t mask = w->cap_props - 1;
    for (size_t i = prop_key(origin, session, seq) & mask;; i = (i + 1) & mask) {
        struct proposal_info *q = &w->props[i];
        if (q->used && q->origin == origin && q->session == session && q->seq == seq)
            return q;
        if (!q->used) {
            if (!insert)
                return NULL;
            q->used = true;
            q->origin = origin;
            q->session = session;
            q->seq = seq;
            return q;
        }
    }
}

static struct slot_truth *truth_at(struct world *w, uint64_t slot)
{
    while (slot >= w->cap_truth) {
        size_t cap = w->cap_truth ? w->cap_truth * 2 : 1024;
        w->truth = realloc(w->truth, sizeof *w->truth * cap);
        ASSERT(w->truth != NULL);
        memset(w->truth + w->cap_truth, 0, sizeof *w->truth * (cap - w->cap_truth));
        w->cap_truth = cap;
    }
    return &w->truth[slot];
}

/* ---- the state machine and its checks ----------------------------------- */

static void fsm_apply(struct world *w, struct node *nd, uint64_t slot, const struct px_value *batch)
{
    struct fsm *f = &nd->fsm;
    if (slot != f->applied + 1) {
        violation(w, "node=%u applied slot %" PRIu64 " after %" PRIu64, nd->id, slot, f->applied);
        return;
    }
    uint64_t value_hash = hash_bytes(batch->data, batch->len);
    struct px_batch_iter it;
    struct px_proposal pr;
    if (px_batch_iter_init(&it, batch) != 0) {
        violation(w, "node=%u slot=%" PRIu64 " malformed batch", nd->id, slot);
        return;
    }
    int rc;
    while ((rc = px_batch_next(&it, &pr)) == 1) {
        struct proposal_info *q = prop_find(w, pr.origin, pr.session, pr.seq, false);
        if (!q || q->data_hash != hash_bytes(pr.data, pr.len)) {
            violation(w, "validity: node=%u slot=%" PRIu64 " applies unproposed origin=%u "
                      "session=%" PRIu64 " seq=%" PRIu64, nd->id, slot, pr.origin, pr.session, pr.seq);
            continue;
        }
        int64_t result;
        int seen = px_dedup_check(f->dedup, pr.origin, pr.session, pr.seq, &result);
        trace(w, "node=%u slot=%" PRIu64 " proposal origin=%u session=%" PRIu64 " seq=%" PRIu64
              " seen=%d", nd->id, slot, pr.origin, pr.session, pr.seq, seen);
        if (seen != 0) {
            if (seen == 1 && (uint64_t)result != q->applied_slot)
                violation(w, "exactly-once: node=%u retry of seq=%" PRIu64 " got result %" PRId64
                          " not %" PRIu64, nd->id, pr.seq, result, q->applied_slot);
            continue; /* a retry: applied before, at most once */
        }
        if (q->applied_slot != 0 && q->applied_slot != slot)
            violation(w, "exactly-once: node=%u applies origin=%u seq=%" PRIu64 " at slot %"
                      PRIu64 ", already applied at %" PRIu64, nd->id, pr.origin, pr.seq, slot,
                      q->applied_slot);
        q->applied_slot = slot;
        px_dedup_record(f->dedup, pr.origin, pr.session, pr.seq, (int64_t)slot);
        f->chain = mix64(mix64(mix64(f->chain, pr.origin), pr.seq), q->data_hash);
        if (pr.origin == nd->id && pr.session == nd->incarnation && slot > w->acked_max)
            w->acked_max = slot; /* the client on this node gets its answer now */
    }
    if (rc < 0)
        violation(w, "node=%u slot=%" PRIu64 " malformed proposal", nd->id, slot);
    trace(w, "node=%u apply slot=%" PRIu64 " proposals=%u", nd->id, slot, px_batch_count(batch));
    f->chain = mix64(f->chain, slot);
    f->applied = slot;
    struct slot_truth *t = truth_at(w, slot);
    if (!t->set) {
        t->set = true;
        t->value_hash = value_hash;
        t->chain = f->chain;
        w->max_slot = MAX(w->max_slot, slot);
    } else if (t->value_hash != value_hash) {
        violation(w, "agreement: node=%u slot=%" PRIu64 " applies a different value", nd->id, slot);
    } else if (t->chain != f->chain) {
        violation(w, "agreement: node=%u state after slot=%" PRIu64 " differs", nd->id, slot);
    }
}

/* ---- storage ------------------------------------------------------------ */

static struct stored_entry *storage_slot(struct storage *st, uint64_t slot, bool grow)
{
    if (slot <= st->base)
        return NULL;
    size_t idx = (size_t)(slot - st->base - 1);
    if (idx >= st->log_len) {
        if (!grow)
            return NULL;
        size_t len = idx + 1;
        st->log = realloc(st->log, sizeof *st->log * len);
        ASSERT(st->log != NULL);
        memset(st->log + st->log_len, 0, sizeof *st->log * (len - st->log_len));
        st->log_len = len;
    }
    return &st->log[idx];
}

static void storage_drop_through(struct storage *st, uint64_t slot)
{
    if (slot <= st->base)
        return;
    size_t k = (size_t)MIN(slot - st->base, (uint64_t)st->log_len);
    for (size_t i = 0; i < k; i++)
        px_value_unref(st->log[i].value);
    if (k)
        memmove(st->log, st->log + k, sizeof *st->log * (st->log_len - k));
    st->log_len -= k;
    st->base = slot;
}

static void storage_free(struct storage *st)
{
    storage_drop_through(st, st->base + st->log_len);
    free(st->log);
    buf_deinit(&st->snap_dedup);
}

/* ---- node lifecycle ---------------------------------------------------- */

static void node_start(struct world *w, struct node *nd)
{
    nd->incarnation++;
    struct px_config cfg;
    px_config_defaults(&cfg, nd->id, w->p.nodes);
    cfg.seed = mix64(w->seed, nd->id * 1000003ull + nd->incarnation);
    cfg.session = nd->incarnation;
    cfg.window = w->p.window;
    cfg.ticks_election = w->p.ticks_election;
    cfg.ticks_heartbeat = w->p.ticks_heartbeat;
    cfg.batch_count_max = w->p.batch_count_max;
    cfg.pending_max = 64;
    cfg.fetch_entries_max = 32;
    nd->px = px_new(&cfg);
    nd->up = true;
    nd->stall_until = 0;

    /* The state machine comes back from its snapshot image, the core from
     * its persisted promise, entries and commit. */
    struct storage *st = &nd->st;
    nd->fsm.applied = st->snap_slot;
    nd->fsm.chain = st->snap_chain;
    nd->fsm.dedup = NULL;
    if (st->snap_slot) {
        int rc = px_dedup_decode(st->snap_dedup.data, st->snap_dedup.len, &nd->fsm.dedup);
        ASSERT(rc == 0);
        px_restore_snapshot(nd->px, st->snap_slot);
    } else {
        nd->fsm.dedup = px_dedup_new();
    }
    px_restore_promised(nd->px, st->promised);
    for (size_t i = 0; i < st->log_len; i++)
        if (st->log[i].value)
            px_restore_entry(nd->px, st->base + 1 + i, st->log[i].ballot, st->log[i].value);
    px_restore_commit(nd->px, st->commit);
    trace(w, "node=%u event=start incarnation=%" PRIu64 " snapshot=%" PRIu64 " commit=%" PRIu64,
          nd->id, nd->incarnation, st->snap_slot, st->commit);
}

static void node_crash(struct world *w, struct node *nd, const char *how)
{
    trace(w, "node=%u event=crash how=%s", nd->id, how);
    px_free(nd->px);
    nd->px = NULL;
    px_dedup_free(nd->fsm.dedup);
    nd->fsm.dedup = NULL;
    nd->up = false;
    w->crashed_untold |= 1u << nd->id; /* its peers see its connections end */
}

/* The state machine snapshots itself at its applied slot; the core may then
 * forget all but a slack of slots behind it. */
static void node_maybe_snapshot(struct world *w, struct node *nd)
{
    struct storage *st = &nd->st;
    if (!w->p.snap_every || nd->fsm.applied < st->snap_slot + w->p.snap_every)
        return;
    st->snap_slot = nd->fsm.applied;
    st->snap_chain = nd->fsm.chain;
    buf_reset(&st->snap_dedup);
    px_dedup_encode(nd->fsm.dedup, &st->snap_dedup);
    if (st->snap_slot > w->p.snap_slack) {
        uint64_t upto = st->snap_slot - w->p.snap_slack;
        px_compact(nd->px, upto);
        storage_drop_through(st, MIN(upto, st->snap_slot));
    }
    trace(w, "node=%u event=snapshot slot=%" PRIu64, nd->id, st->snap_slot);
}

/* Copies the source's snapshot image, as the transfer would. */
static void node_install_snapshot(struct world *w, struct node *nd, uint32_t from)
{
    struct node *src = &w->nodes[from];
    struct storage *s = &src->st;
    if (!s->snap_slot || s->snap_slot <= nd->fsm.applied || w->blocked[from][nd->id])
        return; /* nothing newer to take, or unreachable: the core asks again */
    struct px_dedup *d;
    if (px_dedup_decode(s->snap_dedup.data, s->snap_dedup.len, &d) != 0) {
        violation(w, "node=%u snapshot image of node=%u does not decode", nd->id, from);
        return;
    }
    struct slot_truth *t = truth_at(w, s->snap_slot);
    if (t->set && t->chain != s->snap_chain)
        violation(w, "agreement: snapshot of node=%u at slot=%" PRIu64 " differs", from, s->snap_slot);
    px_dedup_free(nd->fsm.dedup);
    nd->fsm.dedup = d;
    nd->fsm.applied = s->snap_slot;
    nd->fsm.chain = s->snap_chain;
    struct storage *st = &nd->st;
    st->snap_slot = s->snap_slot;
    st->snap_chain = s->snap_chain;
    buf_reset(&st->snap_dedup);
    buf_put(&st->snap_dedup, s->snap_dedup.data, s->snap_dedup.len);
    storage_drop_through(st, s->snap_slot);
    st->commit = MAX(st->commit, s->snap_slot);
    px_snapshot_installed(nd->px, s->snap_slot);
    trace(w, "node=%u event=install_snapshot from=%u slot=%" PRIu64, nd->id, from, s->snap_slot);
}

/* ---- the network -------------------------------------------------------- */

static void net_send(struct world *w, const struct px_msg *m)
{
    int copies = 1;
    if (prng_chance(&w->rng, w->p.drop_pm)) {
        trace(w, "drop %s %u->%u", px_msg_type_name(m->type), m->from, m->to);
        return;
    }
    if (prng_chance(&w->rng, w->p.dup_pm))
        copies = 2;
    /* Every message crosses the wire codec, as it would between hosts. */
    struct buf wire;
    buf_init(&wire);
    struct px_msg decoded;
    if (px_msg_encode(m, &wire) != 0 || px_msg_decode(wire.data, wire.len, &decoded) != 0) {
        violation(w, "codec: %s %u->%u does not round-trip", px_msg_type_name(m->type), m->from, m->to);
        buf_deinit(&wire);
        return;
    }
    buf_deinit(&wire);
    for (int c = 0; c < copies; c++) {
        GROW(w->net, w->n_net, w->cap_net);
        struct inflight *f = &w->net[w->n_net++];
        f->at = w->now + prng_range(&w->rng, 0, w->p.delay_max);
        px_msg_copy(&f->m, &decoded);
    }
    px_msg_clear(&decoded);
}

/* ---- driving one node --------------------------------------------------- */

/* The driver's fixed order: send requests, persist, send replies, apply,
 * advance. A crash may strike in the middle of persisting (the requests are
 * out, a prefix of the batch reaches the disk, no reply is sent) or between
 * persisting and replying. */
static void node_drain(struct world *w, struct node *nd)
{
    for (int rounds = 0; nd->up && px_has_ready(nd->px) && rounds < 64; rounds++) {
        struct px_ready rd;
        px_ready(nd->px, &rd);
        struct storage *st = &nd->st;
        for (size_t i = 0; i < rd.n_msgs; i++)
            if (!px_msg_after_persist(rd.msgs[i].type))
                net_send(w, &rd.msgs[i]); /* requests go out before the fsync */

        size_t persist_n = rd.n_persist;
        bool crash_mid = !w->healing && prng_chance(&w->rng, w->p.crash_mid_pm);
        if (crash_mid)
            persist_n = (size_t)prng_below(&w->rng, rd.n_persist + 1);
        if (rd.promised_changed && !(crash_mid && persist_n == 0))
            st->promised = rd.promised;
        for (size_t i = 0; i < persist_n; i++) {
            struct stored_entry *e = storage_slot(st, rd.persist[i].slot, true);
            if (!e)
                continue;
            px_value_ref(rd.persist[i].value);
            px_value_unref(e->value);
            e->value = rd.persist[i].value;
            e->ballot = rd.persist[i].ballot;
        }
        if (crash_mid) {
            px_advance(nd->px, &rd);
            node_crash(w, nd, persist_n < rd.n_persist ? "mid_persist" : "before_send");
            return;
        }
        if (rd.commit_changed)
            st->commit = MAX(st->commit, rd.commit);

        for (size_t i = 0; i < rd.n_msgs; i++)
            if (px_msg_after_persist(rd.msgs[i].type))
                net_send(w, &rd.msgs[i]);
        for (size_t i = 0; i < rd.n_apply; i++)
            fsm_apply(w, nd, rd.apply[i].slot, rd.apply[i].value);
        for (size_t i = 0; i < rd.n_reads; i++) {
            const struct px_read *r = &rd.reads[i];
            for (size_t k = 0; k < w->n_reads; k++) {
                struct pending_read *pr = &w->reads[k];
                if (pr->node != nd->id || pr->incarnation != nd->incarnation || pr->id != r->id)
                    continue;
                if (r->status == 0 && r->index < pr->acked_at_ask)
                    violation(w, "read index: node=%u read %" PRIu64 " got index %" PRIu64
                              " below acknowledged slot %" PRIu64, nd->id, r->id, r->index,
                              pr->acked_at_ask);
                trace(w, "node=%u read=%" PRIu64 " index=%" PRIu64 " status=%d", nd->id, r->id,
                      r->index, r->status);
                w->reads[k] = w->reads[--w->n_reads];
                break;
            }
        }
        bool install = rd.snapshot_needed;
        uint32_t install_from = rd.snapshot_from;
        px_advance(nd->px, &rd);
        if (install)
            node_install_snapshot(w, nd, install_from);
        node_maybe_snapshot(w, nd);
    }
}

/* ---- one step of the world ---------------------------------------------- */

static bool frozen(const struct world *w, uint32_t id)
{
    return w->nodes[id].up && w->now < w->nodes[id].stall_until;
}

static void deliver_due(struct world *w)
{
    /* Take the due messages out, shuffle them (reordering), deliver; those
     * for a frozen node wait in its socket buffer. */
    size_t n_due = 0;
    for (size_t i = 0; i < w->n_net; i++) {
        if (w->net[i].at <= w->now && !frozen(w, w->net[i].m.to)) {
            struct inflight t = w->net[n_due];
            w->net[n_due] = w->net[i];
            w->net[i] = t;
            n_due++;
        }
    }
    for (size_t i = n_due; i > 1; i--) {
        size_t j = (size_t)prng_below(&w->rng, i);
        struct inflight t = w->net[i - 1];
        w->net[i - 1] = w->net[j];
        w->net[j] = t;
    }
    if (n_due == 0)
        return;
    struct inflight *due = malloc(sizeof *due * n_due);
    ASSERT(due != NULL);
    memcpy(due, w->net, sizeof *due * n_due);
    memmove(w->net, w->net + n_due, sizeof *w->net * (w->n_net - n_due));
    w->n_net -= n_due;
    for (size_t i = 0; i < n_due; i++) {
        struct px_msg *m = &due[i].m;
        struct node *to = &w->nodes[m->to];
        if (to->up && !w->blocked[m->from][m->to] && w->now >= w->redial_at[m->from][m->to]) {
            trace(w, "deliver %s %u->%u ballot=%" PRIu64 " slot=%" PRIu64 " commit=%" PRIu64
                  " entries=%u aux=%" PRIu64, px_msg_type_name(m->type), m->from, m->to,
                  m->ballot, m->slot, m->commit, m->n_entries, m->aux);
            px_step(to->px, m);
            node_drain(w, to);
        }
        px_msg_clear(m);
    }
    free(due);
}

static void client_propose(struct world *w)
{
    uint32_t id = (uint32_t)prng_range(&w->rng, 1, w->p.nodes);
    struct node *nd = &w->nodes[id];
    if (!nd->up || frozen(w, id))
        return;
    uint8_t data[64];
    size_t len = (size_t)prng_range(&w->rng, 0, sizeof data);
    prng_fill(&w->rng, data, len);
    uint64_t seq;
    if (px_propose(nd->px, data, len, &seq) != 0)
        return;
    struct proposal_info *q = prop_find(w, id, nd->incarnation, seq, true);
    q->data_hash = hash_bytes(data, len);
    q->applied_slot = 0;
    w->n_props++;
    trace(w, "node=%u propose seq=%" PRIu64 " len=%zu", id, seq, len);
    node_drain(w, nd);
}

static void read_on(struct world *w, struct node *nd)
{
    uint32_t id = nd->id;
    GROW(w->reads, w->n_reads, w->cap_reads);
    w->reads[w->n_reads++] = (struct pending_read){id, nd->incarnation, ++w->next_read_id, w->acked_max};
    px_read_index(nd->px, w->next_read_id);
    node_drain(w, nd);
}

static void client_read(struct world *w)
{
    uint32_t id = (uint32_t)prng_range(&w->rng, 1, w->p.nodes);
    struct node *nd = &w->nodes[id];
    if (nd->up && !frozen(w, id))
        read_on(w, nd);
}

static void change_partition(struct world *w)
{
    memset(w->blocked, 0, sizeof w->blocked);
    uint32_t kind = (uint32_t)prng_below(&w->rng, 4);
    if (kind == 0) {
        trace(w, "partition healed");
        return;
    }
    /* Split the nodes into two sides at random; kind 3 blocks one direction only. */
    bool side[NODES_MAX + 1];
    for (uint32_t i = 1; i <= w->p.nodes; i++)
        side[i] = prng_chance(&w->rng, 500000);
    for (uint32_t a = 1; a <= w->p.nodes; a++)
        for (uint32_t b = 1; b <= w->p.nodes; b++)
            if (side[a] != side[b] && (kind != 3 || side[a]))
                w->blocked[a][b] = true;
    trace(w, "partition kind=%u", kind);
}

/* A crashed node's peers see its connections end (by the peer's side). */
static void tell_crashes(struct world *w)
{
    for (uint32_t x = 1; x <= w->p.nodes; x++) {
        if (!(w->crashed_untold & (1u << x)))
            continue;
        w->crashed_untold &= ~(1u << x);
        for (uint32_t y = 1; y <= w->p.nodes; y++) {
            struct node *nd = &w->nodes[y];
            if (y != x && nd->up && !frozen(w, y)) { /* frozen: it waits the lease out */
                px_peer_lost(nd->px, x, true);
                node_drain(w, nd);
            }
        }
    }
}

/* Node a drops its connection with b (an error it found, a timeout): a is
 * told first, then b sees it end by a's doing, as the transport does. */
static void connection_reset(struct world *w, uint32_t a, uint32_t b)
{
    if (a == b || !w->nodes[a].up || !w->nodes[b].up || frozen(w, a) || frozen(w, b))
        return;
    trace(w, "node=%u event=connection_reset peer=%u", a, b);
    /* What was queued on it is lost, and nothing passes until the redial. */
    uint64_t redial = w->now + prng_range(&w->rng, 1, 2 * (uint64_t)w->p.ticks_election);
    w->redial_at[a][b] = w->redial_at[b][a] = redial;
    px_peer_lost(w->nodes[a].px, b, false);
    node_drain(w, &w->nodes[a]);
    if (!w->nodes[b].up)
        return;
    px_peer_lost(w->nodes[b].px, a, true);
    node_drain(w, &w->nodes[b]);
}

/* A node drops one connection, or all of them at once (its network went
 * away and came back). */
static void connections_reset(struct world *w)
{
    uint32_t a = (uint32_t)prng_range(&w->rng, 1, w->p.nodes);
    if (prng_chance(&w->rng, 500000)) {
        connection_reset(w, a, (uint32_t)prng_range(&w->rng, 1, w->p.nodes));
        return;
    }
    for (uint32_t b = 1; b <= w->p.nodes; b++)
        connection_reset(w, a, b);
}

/* Each clock ticks at its own steady rate, except while its node is frozen;
 * a node that resumes says so before anything else, as the replica does. */
static void tick_clocks(struct world *w)
{
    for (uint32_t i = 1; i <= w->p.nodes; i++) {
        struct node *nd = &w->nodes[i];
        if (!nd->up)
            continue;
        if (w->now < nd->stall_until)
            continue;
        if (nd->stall_until) {
            /* Resumed: what waited in its sockets comes in over the next
             * steps, and a read that waited during the freeze may go first
             * (the network thread and the replica's run concurrently). */
            nd->stall_until = 0;
            px_clock_stalled(nd->px);
            for (size_t k = 0; k < w->n_net; k++)
                if (w->net[k].m.to == nd->id && w->net[k].at <= w->now)
                    w->net[k].at = w->now + prng_below(&w->rng, 4);
            if (prng_chance(&w->rng, 500000))
                read_on(w, nd);
            if (!nd->up)
                continue; /* it crashed persisting */
        }
        nd->tick_acc += nd->tick_rate;
        if (nd->tick_acc >= 1000000) {
            nd->tick_acc -= 1000000;
            px_tick(nd->px);
            node_drain(w, nd);
        }
        if (!w->healing && prng_chance(&w->rng, w->p.stall_pm)) {
            nd->stall_until = w->now + prng_range(&w->rng, 2, 4 * (uint64_t)w->p.ticks_election);
            trace(w, "node=%u event=stall until=%" PRIu64, nd->id, nd->stall_until);
        }
    }
}

static void step_world(struct world *w)
{
    w->now++;
    tell_crashes(w);
    tick_clocks(w);
    deliver_due(w);
    if (!w->healing) {
        if (prng_chance(&w->rng, w->p.propose_pm))
            client_propose(w);
        if (prng_chance(&w->rng, w->p.propose_pm / 8))
            client_read(w);
        if (prng_chance(&w->rng, w->p.crash_pm)) {
            struct node *nd = &w->nodes[prng_range(&w->rng, 1, w->p.nodes)];
            if (nd->up)
                node_crash(w, nd, "step");
        }
        for (uint32_t i = 1; i <= w->p.nodes; i++)
            if (!w->nodes[i].up && prng_chance(&w->rng, w->p.restart_pm))
                node_start(w, &w->nodes[i]);
        if (prng_chance(&w->rng, w->p.partition_pm))
            change_partition(w);
        if (prng_chance(&w->rng, w->p.reset_pm))
            connections_reset(w);
    }
}

/* ---- liveness ------------------------------------------------------------ */

static bool converged(struct world *w, char *why, size_t why_len)
{
    struct px_status st0;
    px_status(w->nodes[1].px, &st0);
    uint32_t leader = st0.leader;
    uint32_t leaders = 0;
    for (uint32_t i = 1; i <= w->p.nodes; i++) {
        struct px_status st;
        px_status(w->nodes[i].px, &st);
        leaders += st.role == PX_LEADER;
        if (st.leader != leader || leader == 0) {
            snprintf(why, why_len, "node=%u follows %u, node=1 follows %u", i, st.leader, leader);
            return false;
        }
        if (st.pending) {
            snprintf(why, why_len, "node=%u has %u proposals pending", i, st.pending);
            return false;
        }
        if (st.applied != st.commit || st.commit != st0.commit || w->nodes[i].fsm.applied != st.applied) {
            snprintf(why, why_len, "node=%u applied=%" PRIu64 " commit=%" PRIu64
                     ", node=1 commit=%" PRIu64, i, st.applied, st.commit, st0.commit);
            return false;
        }
    }
    if (leaders != 1) {
        snprintf(why, why_len, "%u leaders", leaders);
        return false;
    }
    if (st0.commit < w->acked_max) {
        snprintf(why, why_len, "commit %" PRIu64 " below acknowledged %" PRIu64, st0.commit, w->acked_max);
        return false;
    }
    return true;
}

static void heal(struct world *w)
{
    w->healing = true;
    memset(w->blocked, 0, sizeof w->blocked);
    memset(w->redial_at, 0, sizeof w->redial_at);
    w->p.drop_pm = 0;
    w->p.dup_pm = 0;
    w->p.delay_max = MIN(w->p.delay_max, 2u);
    w->p.tick_pm = 1000000;
    for (uint32_t i = 1; i <= w->p.nodes; i++) {
        w->nodes[i].tick_rate = 1000000;
        if (!w->nodes[i].up)
            node_start(w, &w->nodes[i]);
    }
    trace(w, "heal");
}

/* ---- one seed ------------------------------------------------------------ */

static void params_draw(struct params *p, struct prng *r, uint32_t nodes, uint32_t steps)
{
    p->nodes = nodes;
    p->steps = steps;
    /* One seed in eight runs fault-free, so the steady state is covered too. */
    bool calm = prng_below(r, 8) == 0;
    p->drop_pm = calm ? 0 : (uint32_t)prng_range(r, 0, 200000);
    p->dup_pm = calm ? 0 : (uint32_t)prng_range(r, 0, 100000);
    p->delay_max = (uint32_t)prng_range(r, 0, calm ? 1 : 8);
    p->tick_pm = (uint32_t)prng_range(r, 700000, 1000000);
    p->stall_pm = calm ? 0 : (uint32_t)prng_range(r, 0, 3000);
    p->reset_pm = calm ? 0 : (uint32_t)prng_range(r, 0, 5000);
    p->propose_pm = (uint32_t)prng_range(r, 100000, 900000);
    p->crash_pm = calm ? 0 : (uint32_t)prng_range(r, 0, 8000);
    p->crash_mid_pm = calm ? 0 : (uint32_t)prng_range(r, 0, 3000);
    p->restart_pm = (uint32_t)prng_range(r, 5000, 100000);
    p->partition_pm = calm ? 0 : (uint32_t)prng_range(r, 0, 8000);
    p->snap_every = prng_below(r, 3) == 0 ? 0 : (uint32_t)prng_range(r, 8, 64);
    p->snap_slack = (uint32_t)prng_range(r, 0, 8);
    p->window = (uint32_t)prng_range(r, 1, 16);
    p->batch_count_max = (uint32_t)prng_range(r, 1, 8);
    /* Short timeouts against long delays make leaders duel; long ones
     * exercise leases and the steady state. */
    p->ticks_election = (uint32_t)prng_range(r, 3, 20);
    p->ticks_heartbeat = (uint32_t)prng_range(r, 1, MAX(1u, p->ticks_election / 3));
    if (!calm && prng_below(r, 4) == 0) {
        p->crash_pm = (uint32_t)prng_range(r, 10000, 40000);
        p->crash_mid_pm = (uint32_t)prng_range(r, 5000, 20000);
    }
}

struct seed_result {
    int violations;
    uint64_t chosen;
    char first[256];
};

static void run_seed(uint64_t seed, uint32_t nodes, uint32_t steps, bool tracing,
                     struct seed_result *res)
{
    struct world *w = calloc(1, sizeof *w);
    ASSERT(w != NULL);
    w->seed = seed;
    w->trace = tracing;
    prng_seed(&w->rng, seed);
    params_draw(&w->p, &w->rng, nodes, steps);
    trace(w, "seed=%" PRIu64 " nodes=%u drop_pm=%u dup_pm=%u delay_max=%u crash_pm=%u "
          "partition_pm=%u snap_every=%u window=%u ticks_election=%u ticks_heartbeat=%u", seed,
          nodes, w->p.drop_pm, w->p.dup_pm, w->p.delay_max, w->p.crash_pm, w->p.partition_pm,
          w->p.snap_every, w->p.window, w->p.ticks_election, w->p.ticks_heartbeat);
    for (uint32_t i = 1; i <= nodes; i++) {
        w->nodes[i].id = i;
        w->nodes[i].tick_rate = (uint32_t)prng_range(&w->rng, w->p.tick_pm, 1000000);
        w->nodes[i].tick_acc = (uint32_t)prng_below(&w->rng, 1000000);
        buf_init(&w->nodes[i].st.snap_dedup);
        node_start(w, &w->nodes[i]);
    }

    /* Safety phase: faults on. */
    for (uint32_t s = 0; s < steps && w->violations == 0; s++)
        step_world(w);

    /* Liveness phase: faults off, everyone up; converge within the bound. */
    heal(w);
    const uint32_t liveness_steps = 3000;
    char why[160] = "";
    bool ok = false;
    for (uint32_t s = 0; s < liveness_steps && w->violations == 0; s++) {
        step_world(w);
        if (s % 8 == 0 && (ok = converged(w, why, sizeof why)))
            break;
    }
    if (w->violations == 0 && !ok)
        violation(w, "liveness: not converged after %u steps: %s", liveness_steps, why);

    res->violations = w->violations;
    res->chosen = w->max_slot;
    snprintf(res->first, sizeof res->first, "%s", w->first_violation);

    for (uint32_t i = 1; i <= nodes; i++) {
        struct node *nd = &w->nodes[i];
        if (nd->up)
            node_crash(w, nd, "end");
        storage_free(&nd->st);
    }
    for (size_t i = 0; i < w->n_net; i++)
        px_msg_clear(&w->net[i].m);
    free(w->net);
    free(w->truth);
    free(w->props);
    free(w->reads);
    free(w);
}

static void trace_sink(void *ctx, enum log_level level, const char *line)
{
    (void)ctx;
    (void)level;
    printf("  core: %s\n", line);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: paxfs-sim --seeds N [--first S] [--nodes 3|5] [--steps K]\n"
            "       paxfs-sim --seed S [--nodes 3|5] [--steps K] --trace\n");
    exit(2);
}

static uint64_t parse_u64(const char *flag, const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || end == s) {
        fprintf(stderr, "paxfs-sim: %s needs a number, got '%s'\n", flag, s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    uint64_t seeds = 0, first = 1, one_seed = 0;
    bool have_one = false, tracing = false;
    uint32_t nodes = 3, steps = 1500;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--trace") == 0) {
            tracing = true;
            continue;
        }
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (strcmp(a, "--seeds") == 0)
            seeds = parse_u64(a, v);
        else if (strcmp(a, "--first") == 0)
            first = parse_u64(a, v);
        else if (strcmp(a, "--seed") == 0) {
            one_seed = parse_u64(a, v);
            have_one = true;
        } else if (strcmp(a, "--nodes") == 0)
            nodes = (uint32_t)parse_u64(a, v);
        else if (strcmp(a, "--steps") == 0)
            steps = (uint32_t)parse_u64(a, v);
        else
            usage();
    }
    if (nodes != 3 && nodes != 5) {
        fprintf(stderr, "paxfs-sim: --nodes must be 3 or 5\n");
        return 2;
    }
    if (have_one) {
        seeds = 1;
        first = one_seed;
    } else if (seeds == 0) {
        usage();
    }
    if (tracing) {
        log_set_sink(trace_sink, NULL);
        log_set_level(LOG_DEBUG);
    } else {
        log_set_level(LOG_WARN);
    }

    uint64_t violations = 0, chosen = 0, failed_seeds = 0;
    for (uint64_t s = first; s < first + seeds; s++) {
        struct seed_result r;
        run_seed(s, nodes, steps, tracing, &r);
        chosen += r.chosen;
        if (r.violations) {
            violations += (uint64_t)r.violations;
            if (failed_seeds++ < 20)
                fprintf(stderr, "violation: %s (replay: paxfs-sim --seed %" PRIu64
                        " --nodes %u --steps %u --trace)\n", r.first, s, nodes, steps);
        }
    }
    printf("seeds=%" PRIu64 " violations=%" PRIu64 " chosen=%" PRIu64 "\n", seeds, violations, chosen);
    return violations ? 1 : 0;
}
