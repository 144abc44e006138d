/* px — the Multi-Paxos core; the contract is in px.h.
 *
 * Layout of this file: values and batches; the log (a ring of slot records);
 * output helpers (messages, persist list); the acceptor and learner, which
 * every node runs whatever its role; the three proposer roles, each a step
 * and a tick function installed through n->step_role / n->tick_role (etcd's
 * r.step = stepFollower); own proposals and read index; the public API.
 *
 * Elections run in two rounds. A follower that hears no leader for its
 * randomized election timeout first *probes* (a PREPARE with aux=1 that no
 * acceptor records): only if a quorum says it would promise does it raise
 * its ballot and run the real Phase 1. A node cut off from the majority so
 * never raises its ballot, and when it comes back it follows the leader
 * instead of deposing it (the Raft thesis §9.6 pre-vote, in Paxos terms).
 * Acceptors that heard a leader within ticks_election refuse both rounds to
 * anyone else (the leader's lease), and so does an acceptor for its first
 * ticks_election after it starts: before a crash it may have honoured a
 * lease that it no longer remembers.
 *
 * Lease reads. The leader counts a heartbeat acknowledged by a quorum as a
 * lease for lease_ticks (ticks_election / 2) from the tick it was *sent*:
 * every acceptor of that quorum received it later and refuses other
 * candidates for ticks_election of its own ticks after that, so no other
 * leader can be chosen, nor anything committed without this leader, while
 * the lease runs. A read index asked while it runs is answered at once with
 * the commit index (Raft thesis §6.4.1), with no heartbeat round. Safe while
 * the nodes' tick periods differ by less than about 2x, and while the
 * leader's ticks keep up with real time: the driver calls px_clock_stalled
 * whenever they fell a tick behind (a stalled thread), which voids the
 * lease until heartbeats sent after it are acknowledged. A follower that loses its
 * connection to the leader by the leader's doing (px_peer_lost, by_peer)
 * stops honouring the lease at once (fast failover): the leader drops that
 * follower from its lease before its side closes, and counts from it only
 * heartbeats sent after that. */
#include "consensus/px.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/assert.h"
#include "base/buf.h"
#include "base/log.h"
#include "base/prng.h"

/* ---- values ------------------------------------------------------------ */

struct px_value *px_value_alloc(size_t len)
{
    ASSERT(len <= UINT32_MAX);
    struct px_value *v = malloc(sizeof *v + len);
    ASSERT(v != NULL);
    atomic_init(&v->refs, 1);
    v->len = (uint32_t)len;
    return v;
}

struct px_value *px_value_new(const void *data, size_t len)
{
    struct px_value *v = px_value_alloc(len);
    if (len)
        memcpy(v->data, data, len);
    return v;
}

struct px_value *px_value_ref(struct px_value *v)
{
    if (v)
        atomic_fetch_add_explicit(&v->refs, 1, memory_order_relaxed);
    return v;
}

void px_value_unref(struct px_value *v)
{
    if (v && atomic_fetch_sub_explicit(&v->refs, 1, memory_order_acq_rel) == 1)
        free(v);
}

/* ---- batches ----------------------------------------------------------- */

int px_batch_iter_init(struct px_batch_iter *it, const struct px_value *batch)
{
    if (!batch || batch->len < 4)
        return -EBADMSG;
    it->remaining = le_get_u32(batch->data);
    it->p = batch->data + 4;
    it->left = batch->len - 4;
    return 0;
}

int px_batch_next(struct px_batch_iter *it, struct px_proposal *out)
{
    if (it->remaining == 0)
        return it->left == 0 ? 0 : -EBADMSG;
    if (it->left < PX_PROPOSAL_HEADER)
        return -EBADMSG;
    uint32_t len = le_get_u32(it->p + 20);
    if (len > it->left - PX_PROPOSAL_HEADER)
        return -EBADMSG;
    out->origin = le_get_u32(it->p);
    out->session = le_get_u64(it->p + 4);
    out->seq = le_get_u64(it->p + 12);
    out->len = len;
    out->data = it->p + PX_PROPOSAL_HEADER;
    it->p += PX_PROPOSAL_HEADER + len;
    it->left -= PX_PROPOSAL_HEADER + len;
    it->remaining--;
    return 1;
}

uint32_t px_batch_count(const struct px_value *batch)
{
    return batch && batch->len >= 4 ? le_get_u32(batch->data) : 0;
}

/* A forwarded proposal is one record of the batch layout; it is valid when
 * its length field matches its size exactly. */
static bool proposal_record_valid(const struct px_value *v)
{
    return v && v->len >= PX_PROPOSAL_HEADER &&
           le_get_u32(v->data + 20) == v->len - PX_PROPOSAL_HEADER;
}

static struct px_value *noop_value(void)
{
    struct px_value *v = px_value_alloc(4);
    le_put_u32(v->data, 0);
    return v;
}

/* ---- messages ---------------------------------------------------------- */

const char *px_msg_type_name(uint8_t type)
{
    static const char *names[] = {
        "none",      "prepare",   "promise",       "accept", "accepted",
        "reject",    "heartbeat", "heartbeat_ack", "forward", "fetch",
        "chosen",    "snapshot_needed", "read_index", "read_index_reply",
    };
    return type <= PX_MSG_TYPE_MAX ? names[type] : "unknown";
}

bool px_msg_after_persist(uint8_t type)
{
    return type == PX_MSG_PROMISE || type == PX_MSG_ACCEPTED || type == PX_MSG_HEARTBEAT_ACK ||
           type == PX_MSG_REJECT;
}

void px_msg_clear(struct px_msg *m)
{
    for (uint32_t i = 0; i < m->n_entries; i++)
        px_value_unref(m->entries[i].value);
    free(m->entries);
    m->entries = NULL;
    m->n_entries = 0;
}

void px_msg_copy(struct px_msg *dst, const struct px_msg *src)
{
    *dst = *src;
    dst->entries = NULL;
    if (src->n_entries) {
        dst->entries = malloc(sizeof *dst->entries * src->n_entries);
        ASSERT(dst->entries != NULL);
        for (uint32_t i = 0; i < src->n_entries; i++) {
            dst->entries[i] = src->entries[i];
            px_value_ref(dst->entries[i].value);
        }
    }
}

const char *px_role_name(enum px_role role)
{
    switch (role) {
    case PX_FOLLOWER: return "follower";
    case PX_CANDIDATE: return "candidate";
    case PX_LEADER: return "leader";
    }
    return "unknown";
}

/* ---- the node ---------------------------------------------------------- */

/* One slot of the log. The acceptor part (ballot, value) is what this node
 * accepted or learned; chosen says the value is known to be chosen. The
 * leader part (acks, sent_tick) is meaningful only while this node leads
 * with the ballot in `ballot`. */
struct slot_rec {
    uint64_t ballot;
    struct px_value *value;
    uint32_t acks;      /* bit k-1: node k accepted it at the leader's ballot */
    bool chosen;
    uint64_t sent_tick; /* leader: when ACCEPT was last sent */
};

/* The candidate's merge of the promises: per slot, the highest-ballot value
 * reported (Paxos Made Simple §2.2, phase 2a). */
struct merge_rec {
    uint64_t ballot;
    struct px_value *value;
};

enum pending_state { PENDING_FREE = 0, PENDING_WAITING, PENDING_DONE };

struct pending {
    struct px_value *value; /* the proposal record */
    uint64_t sent_tick;     /* 0: not sent yet */
    uint8_t state;
    uint8_t retries;        /* since the last leader change; backs off */
};

/* A read index asked of the leader; given up (-EAGAIN, so the caller asks
 * again) if no answer comes within an election timeout: the request or its
 * answer may have been lost. */
struct fwd_read {
    uint64_t id;
    uint64_t asked_tick;
};

/* Heartbeats whose send tick the leader remembers for its lease: more than
 * are in flight at once, with acks answered within a few ticks. */
#define PX_HB_RING 32

struct read_req {
    uint64_t id;
    uint32_t from;     /* 0: this node asked */
    uint64_t index;
    uint64_t need_seq; /* heartbeat sequence a quorum must ack; 0 = not yet set */
};

/* The leader's set of proposals it holds in its queue or in unchosen slots,
 * keyed by (origin, session, seq): a retry of one of them is not queued
 * again, so retries cannot snowball into a backlog of duplicates. Linear
 * probing with backward-shift deletion; at most half full. */
struct id_key {
    uint32_t origin;
    uint64_t session;
    uint64_t seq;
};

struct idset {
    struct id_key *keys;
    uint8_t *used;
    size_t cap, n;
};

struct px_node {
    struct px_config cfg;
    uint32_t quorum;
    struct prng rng;
    uint64_t now; /* ticks since start */

    enum px_role role;
    int (*step_role)(struct px_node *n, const struct px_msg *m);
    void (*tick_role)(struct px_node *n);

    /* acceptor */
    uint64_t promised;
    bool promised_dirty;
    uint64_t max_seen; /* highest ballot seen anywhere */

    /* log: slots [log_first, log_end) live in recs[slot & (cap-1)] */
    struct slot_rec *recs;
    uint64_t cap;
    uint64_t log_first;
    uint64_t log_end;
    uint64_t commit;
    bool commit_dirty;
    uint64_t applied;
    uint64_t snapshot_slot;

    /* who leads, as far as this node knows */
    uint32_t leader;
    uint64_t leader_ballot;
    uint64_t leader_commit;
    uint32_t ticks_since_leader;
    uint32_t election_timeout;
    uint32_t ticks_waiting; /* follower/candidate: ticks since the timer reset */
    uint32_t elections;     /* started since this node last followed or led */
    uint64_t fetch_tick;    /* last FETCH sent */
    uint64_t snapshot_tick; /* last snapshot request handed out */
    bool snapshot_pending;  /* asked the caller for a snapshot, not installed yet */
    bool snapshot_announce; /* the request is yet to go out in a ready */
    uint32_t snapshot_from;
    uint64_t snapshot_want;
    /* bitmask: peers that said they compacted away the slot after
     * fetch_tried_commit, or that were asked for it after such an answer */
    uint32_t fetch_tried;
    uint64_t fetch_tried_commit;

    /* proposer */
    uint64_t ballot;
    bool probing;
    uint32_t votes; /* candidate: bitmask of probe replies or promises */
    uint64_t cand_from;
    struct merge_rec *merge;
    size_t merge_len;
    uint64_t lead_start_tick;
    uint64_t next_slot;
    uint64_t recovery_end;
    uint32_t hb_elapsed;
    uint64_t hb_seq;
    bool hb_now;
    uint64_t commit_sent;
    uint64_t peer_heard[PX_NODES_MAX + 1];
    uint64_t peer_hb_acked[PX_NODES_MAX + 1];
    /* the lease: the tick each recent heartbeat went out at, and per peer
     * the tick its share of the lease runs out at (0: none) and the last
     * heartbeat sent before the connection to it was lost (acks of that one
     * and earlier no longer count) */
    struct hb_sent {
        uint64_t seq, tick;
    } hb_sent[PX_HB_RING];
    uint32_t lease_ticks;
    uint64_t lease_until[PX_NODES_MAX + 1];
    uint64_t lease_floor_seq[PX_NODES_MAX + 1];

    /* leader's queue of proposals not yet in a slot */
    struct px_value **queue;
    size_t q_head, q_len, q_cap;
    size_t q_bytes;
    struct idset in_flight;

    /* reads */
    struct read_req *reads;
    size_t n_reads, cap_reads;
    struct fwd_read *fwd_reads; /* follower: reads asked of the leader */
    size_t n_fwd_reads, cap_fwd_reads;

    /* own proposals, seq in [pending_low, next_seq) */
    uint64_t next_seq;
    uint64_t pending_low;
    uint32_t n_pending;
    struct pending *pending; /* PX_SESSION_WINDOW entries, by seq % window */
    struct px_value **fwd;   /* to forward to the leader in the next ready */
    size_t n_fwd, cap_fwd;

    /* output, drained by px_ready/px_advance */
    struct px_msg *out;
    size_t n_out, cap_out;
    struct px_entry *persist;
    size_t n_persist, cap_persist;
    struct px_read *done_reads;
    size_t n_done_reads, cap_done_reads;
    struct px_entry *apply;
    size_t n_apply, cap_apply;
    bool in_ready;
};

#define GROW(arr, n, cap)                                                     \
    do {                                                                      \
        if ((n) == (cap)) {                                                   \
            size_t new_cap_ = (cap) ? (cap) * 2 : 16;                         \
            void *p_ = realloc((arr), sizeof *(arr) * new_cap_);              \
            ASSERT(p_ != NULL);                                               \
            (arr) = p_;                                                       \
            (cap) = new_cap_;                                                 \
        }                                                                     \
    } while (0)

/* The log keeps at most this many slots beyond its first; a node further
 * behind catches up by fetching or by a snapshot rather than holding more. */
#define LOG_SLOTS_MAX (1ull << 22)

static int step_follower(struct px_node *n, const struct px_msg *m);
static int step_candidate(struct px_node *n, const struct px_msg *m);
static int step_leader(struct px_node *n, const struct px_msg *m);
static void tick_follower(struct px_node *n);
static void tick_candidate(struct px_node *n);
static void tick_leader(struct px_node *n);
static void become_follower(struct px_node *n);
static void lease_clear(struct px_node *n);

static inline uint32_t node_bit(uint32_t id) { return 1u << (id - 1); }

static inline bool is_peer(const struct px_node *n, uint32_t id)
{
    return id >= 1 && id <= n->cfg.n_nodes && id != n->cfg.id;
}

void px_config_defaults(struct px_config *c, uint32_t id, uint32_t n_nodes)
{
    memset(c, 0, sizeof *c);
    c->id = id;
    c->n_nodes = n_nodes;
    c->seed = id;
    c->session = 1;
    c->ticks_heartbeat = 1;
    c->ticks_election = 10;
    c->window = 32;
    c->window_bytes = 32u << 20;
    c->batch_count_max = 4096;
    c->batch_bytes_max = 4u << 20;
    c->pending_max = PX_SESSION_WINDOW;
    c->queue_bytes_max = 64u << 20;
    c->fetch_entries_max = 256;
    c->apply_entries_max = 1024;
}

/* ---- the log ----------------------------------------------------------- */

static struct slot_rec *rec_get(struct px_node *n, uint64_t slot)
{
    if (slot < n->log_first || slot >= n->log_end)
        return NULL;
    return &n->recs[slot & (n->cap - 1)];
}

/* Returns the record for slot, extending the log to hold it; NULL if the
 * slot is compacted away or too far ahead to hold. */
static struct slot_rec *rec_put(struct px_node *n, uint64_t slot)
{
    if (slot < n->log_first || slot >= n->log_first + LOG_SLOTS_MAX)
        return NULL;
    if (slot >= n->log_end) {
        uint64_t need = slot - n->log_first + 1;
        if (need > n->cap) {
            uint64_t cap = n->cap;
            while (cap < need)
                cap *= 2;
            struct slot_rec *recs = calloc(cap, sizeof *recs);
            ASSERT(recs != NULL);
            for (uint64_t s = n->log_first; s < n->log_end; s++)
                recs[s & (cap - 1)] = n->recs[s & (n->cap - 1)];
            free(n->recs);
            n->recs = recs;
            n->cap = cap;
        }
        for (uint64_t s = n->log_end; s <= slot; s++)
            memset(&n->recs[s & (n->cap - 1)], 0, sizeof(struct slot_rec));
        n->log_end = slot + 1;
    }
    return &n->recs[slot & (n->cap - 1)];
}

static void rec_set(struct slot_rec *r, uint64_t ballot, struct px_value *v)
{
    px_value_ref(v);
    px_value_unref(r->value);
    r->value = v;
    r->ballot = ballot;
}

/* Forgets every slot <= slot. */
static void log_drop_through(struct px_node *n, uint64_t slot)
{
    while (n->log_first <= slot && n->log_first < n->log_end) {
        struct slot_rec *r = &n->recs[n->log_first & (n->cap - 1)];
        px_value_unref(r->value);
        memset(r, 0, sizeof *r);
        n->log_first++;
    }
    if (n->log_first <= slot) {
        n->log_first = slot + 1;
        n->log_end = slot + 1;
    }
}

/* ---- output helpers ---------------------------------------------------- */

static struct px_msg *emit(struct px_node *n, uint8_t type, uint32_t to)
{
    GROW(n->out, n->n_out, n->cap_out);
    struct px_msg *m = &n->out[n->n_out++];
    memset(m, 0, sizeof *m);
    m->type = type;
    m->from = n->cfg.id;
    m->to = to;
    m->commit = n->commit;
    return m;
}

static struct px_entry *msg_entries(struct px_msg *m, size_t count)
{
    ASSERT(m->entries == NULL && count <= PX_MSG_ENTRIES_MAX);
    m->n_entries = (uint32_t)count;
    if (count == 0)
        return NULL;
    m->entries = calloc(count, sizeof *m->entries);
    ASSERT(m->entries != NULL);
    return m->entries;
}

static void persist_push(struct px_node *n, uint64_t slot, uint64_t ballot, struct px_value *v)
{
    GROW(n->persist, n->n_persist, n->cap_persist);
    n->persist[n->n_persist++] = (struct px_entry){slot, ballot, px_value_ref(v)};
}

static void set_promised(struct px_node *n, uint64_t ballot)
{
    ASSERT(ballot >= n->promised);
    if (ballot != n->promised) {
        n->promised = ballot;
        n->promised_dirty = true;
    }
    n->max_seen = MAX(n->max_seen, ballot);
}

static void read_done(struct px_node *n, uint64_t id, uint64_t index, int status)
{
    GROW(n->done_reads, n->n_done_reads, n->cap_done_reads);
    n->done_reads[n->n_done_reads++] = (struct px_read){id, index, status};
}

/* A random timeout in [t, 2t) ticks, t the election timeout doubled for
 * each election after the first that this node started without following
 * or leading in between, up to 8 times: candidates whose rounds take longer
 * than one timeout (slow disks, megabytes of accepted values to report)
 * stop pre-empting each other (randomized exponential backoff). */
static void reset_election_timer(struct px_node *n)
{
    uint32_t shift = n->elections < 2 ? 0 : MIN(n->elections - 1, 3u);
    uint64_t t = (uint64_t)n->cfg.ticks_election << shift;
    n->election_timeout = (uint32_t)prng_range(&n->rng, t, 2 * t - 1);
    n->ticks_waiting = 0;
}

/* ---- own proposals ----------------------------------------------------- */

static struct pending *pending_at(struct px_node *n, uint64_t seq)
{
    return &n->pending[seq % PX_SESSION_WINDOW];
}

static size_t idset_slot(const struct idset *s, const struct id_key *k)
{
    uint64_t h = k->seq * 0x9e3779b97f4a7c15ull ^ k->session * 0xc2b2ae3d27d4eb4full ^ k->origin;
    h ^= h >> 29;
    return (size_t)(h * 0xbf58476d1ce4e5b9ull >> 7) & (s->cap - 1);
}

static bool id_eq(const struct id_key *a, const struct id_key *b)
{
    return a->origin == b->origin && a->session == b->session && a->seq == b->seq;
}

static void idset_clear(struct idset *s)
{
    if (s->used)
        memset(s->used, 0, s->cap);
    s->n = 0;
}

static void idset_free(struct idset *s)
{
    free(s->keys);
    free(s->used);
    memset(s, 0, sizeof *s);
}

/* Adds k; false if it was there already. */
static bool idset_add(struct idset *s, const struct id_key *k)
{
    if ((s->n + 1) * 2 > s->cap) {
        struct idset big = {0};
        big.cap = s->cap ? s->cap * 2 : 256;
        big.keys = malloc(sizeof *big.keys * big.cap);
        big.used = calloc(big.cap, 1);
        ASSERT(big.keys && big.used);
        for (size_t i = 0; i < s->cap; i++)
            if (s->used[i])
                idset_add(&big, &s->keys[i]);
        idset_free(s);
        *s = big;
    }
    size_t i = idset_slot(s, k);
    for (; s->used[i]; i = (i + 1) & (s->cap - 1))
        if (id_eq(&s->keys[i], k))
            return false;
    s->used[i] = 1;
    s->keys[i] = *k;
    s->n++;
    return true;
}

static void idset_del(struct idset *s, const struct id_key *k)
{
    if (s->n == 0)
        return;
    size_t i = idset_slot(s, k);
    for (; s->used[i]; i = (i + 1) & (s->cap - 1))
        if (id_eq(&s->keys[i], k))
            break;
    if (!s->used[i])
        return;
    s->used[i] = 0;
    s->n--;
    /* Backward shift: move later members of the probe run into the hole. */
    size_t hole = i;
    for (size_t j = (i + 1) & (s->cap - 1); s->used[j]; j = (j + 1) & (s->cap - 1)) {
        size_t home = idset_slot(s, &s->keys[j]);
        bool movable = hole <= j ? (home <= hole || home > j) : (home <= hole && home > j);
        if (movable) {
            s->keys[hole] = s->keys[j];
            s->used[hole] = 1;
            s->used[j] = 0;
            hole = j;
        }
    }
}

static struct id_key proposal_key(const struct px_value *record)
{
    return (struct id_key){le_get_u32(record->data), le_get_u64(record->data + 4),
                           le_get_u64(record->data + 12)};
}

/* A slot's batch was chosen: its proposals leave the leader's set. */
static void leader_forget_chosen(struct px_node *n, const struct px_value *batch)
{
    struct px_batch_iter it;
    struct px_proposal p;
    if (n->in_flight.n == 0 || px_batch_iter_init(&it, batch) != 0)
        return;
    while (px_batch_next(&it, &p) == 1)
        idset_del(&n->in_flight, &(struct id_key){p.origin, p.session, p.seq});
}

static void leader_enqueue(struct px_node *n, struct px_value *v)
{
    if (n->q_bytes + v->len > n->cfg.queue_bytes_max)
        return; /* dropped: its origin retries */
    struct id_key key = proposal_key(v);
    if (!idset_add(&n->in_flight, &key))
        return; /* already queued or in a slot: this is a retry */
    if (n->q_len == n->q_cap) {
        size_t cap = n->q_cap ? n->q_cap * 2 : 64;
        struct px_value **q = malloc(sizeof *q * cap);
        ASSERT(q != NULL);
        for (size_t i = 0; i < n->q_len; i++)
            q[i] = n->queue[(n->q_head + i) % n->q_cap];
        free(n->queue);
        n->queue = q;
        n->q_cap = cap;
        n->q_head = 0;
    }
    n->queue[(n->q_head + n->q_len) % n->q_cap] = px_value_ref(v);
    n->q_len++;
    n->q_bytes += v->len;
}

static void queue_clear(struct px_node *n)
{
    for (size_t i = 0; i < n->q_len; i++)
        px_value_unref(n->queue[(n->q_head + i) % n->q_cap]);
    n->q_head = n->q_len = n->q_bytes = 0;
    idset_clear(&n->in_flight);
}

/* Sends (or, on the leader, queues) one of this node's pending proposals. */
static void pending_send(struct px_node *n, struct pending *p)
{
    if (n->role == PX_LEADER) {
        leader_enqueue(n, p->value);
    } else if (n->leader) {
        GROW(n->fwd, n->n_fwd, n->cap_fwd);
        n->fwd[n->n_fwd++] = px_value_ref(p->value);
    } else {
        return; /* no leader known: wait */
    }
    p->sent_tick = n->now ? n->now : 1;
}

/* After a leader change, every pending proposal goes to the new leader: its
 * fate under the old one is unknown, and px_dedup makes a duplicate harmless. */
static void pending_resend_all(struct px_node *n)
{
    for (uint64_t s = n->pending_low; s < n->next_seq; s++) {
        struct pending *p = pending_at(n, s);
        if (p->state == PENDING_WAITING) {
            p->retries = 0;
            pending_send(n, p);
        }
    }
}

/* A proposal not seen chosen is sent again after 2, 4, 8, 16 election
 * timeouts: under a backlog it may just be waiting its turn. */
static void pending_retry_tick(struct px_node *n)
{
    for (uint64_t s = n->pending_low; s < n->next_seq; s++) {
        struct pending *p = pending_at(n, s);
        if (p->state != PENDING_WAITING)
            continue;
        uint64_t retry_ticks = (2 * (uint64_t)n->cfg.ticks_election) << MIN(p->retries, 3);
        if (p->sent_tick == 0 || n->now - p->sent_tick >= retry_ticks) {
            if (p->sent_tick != 0 && p->retries < UINT8_MAX)
                p->retries++;
            pending_send(n, p);
        }
    }
}

/* A chosen batch may hold proposals of this node: they are no longer
 * pending. Proposals of earlier sessions are some other incarnation's. */
static void pending_observe_chosen(struct px_node *n, const struct px_value *batch)
{
    if (n->n_pending == 0)
        return;
    struct px_batch_iter it;
    struct px_proposal p;
    if (px_batch_iter_init(&it, batch) != 0)
        return;
    while (px_batch_next(&it, &p) == 1) {
        if (p.origin != n->cfg.id || p.session != n->cfg.session ||
            p.seq < n->pending_low || p.seq >= n->next_seq)
            continue;
        struct pending *q = pending_at(n, p.seq);
        if (q->state != PENDING_WAITING)
            continue;
        q->state = PENDING_DONE;
        px_value_unref(q->value);
        q->value = NULL;
        n->n_pending--;
    }
    while (n->pending_low < n->next_seq && pending_at(n, n->pending_low)->state == PENDING_DONE) {
        pending_at(n, n->pending_low)->state = PENDING_FREE;
        n->pending_low++;
    }
}

/* ---- the learner ------------------------------------------------------- */

/* Moves commit forward over slots whose value is known chosen (P4). */
static void commit_advance(struct px_node *n)
{
    for (;;) {
        struct slot_rec *r = rec_get(n, n->commit + 1);
        if (!r || !r->chosen || !r->value)
            break;
        n->commit++;
        n->commit_dirty = true;
        pending_observe_chosen(n, r->value);
        if (n->role == PX_LEADER)
            leader_forget_chosen(n, r->value);
    }
}

static void send_fetch(struct px_node *n, uint32_t to)
{
    if (!is_peer(n, to) || n->snapshot_pending)
        return;
    struct px_msg *m = emit(n, PX_MSG_FETCH, to);
    m->slot = n->commit + 1;
    n->fetch_tick = n->now;
}

/* A leader at `ballot` says every slot <= commit is chosen. A slot this node
 * accepted at that very ballot holds the chosen value (the leader proposes
 * one value per slot per ballot, and counts only acceptances of it); any
 * other slot's value must be fetched (P3). */
static void learn_commit(struct px_node *n, uint32_t from, uint64_t ballot, uint64_t commit)
{
    n->leader_commit = MAX(n->leader_commit, commit);
    while (n->commit < commit) {
        struct slot_rec *r = rec_get(n, n->commit + 1);
        if (!r || !r->value || (!r->chosen && r->ballot != ballot))
            break;
        r->chosen = true;
        commit_advance(n);
    }
    if (n->commit < commit && n->now - n->fetch_tick >= 2 * (uint64_t)n->cfg.ticks_heartbeat)
        send_fetch(n, from);
}

/* ---- the acceptor (every role) ----------------------------------------- */

/* A live leader other than `who` holds a lease on this node, or may hold
 * one that this node promised before it restarted. */
static bool lease_held_against(const struct px_node *n, uint32_t who)
{
    if (who != n->cfg.id && n->now < n->cfg.ticks_election)
        return true;
    return n->leader != 0 && n->leader != who &&
           n->ticks_since_leader < n->cfg.ticks_election;
}

static void reject(struct px_node *n, const struct px_msg *m, enum px_reject_reason why)
{
    struct px_msg *r = emit(n, PX_MSG_REJECT, m->from);
    r->ballot = n->promised;
    r->slot = m->ballot; /* the ballot being rejected, so stale rejects are told apart */
    r->aux = why;
}

/* Phase 1b (Paxos Made Simple §2.2): promise never to accept a ballot below
 * m->ballot, and report what was accepted from m->slot on. A probe (aux=1)
 * asks only whether this node would promise, and changes nothing. */
static void on_prepare(struct px_node *n, const struct px_msg *m)
{
    bool probe = m->aux == 1;
    if (lease_held_against(n, m->from)) {
        reject(n, m, PX_REJECT_LEASE);
        return;
    }
    if (m->commit < n->commit) {
        reject(n, m, PX_REJECT_BEHIND);
        return;
    }
    if (!probe && m->ballot <= n->promised) {
        reject(n, m, PX_REJECT_BALLOT);
        return;
    }
    uint64_t from = MAX(m->slot, n->log_first);
    size_t count = 0, bytes = 0;
    for (uint64_t s = from; s < n->log_end; s++) {
        struct slot_rec *rr = rec_get(n, s);
        count += rr->value != NULL;
        bytes += rr->value ? rr->value->len : 0;
    }
    if (count > PX_MSG_ENTRIES_MAX || bytes > PX_MSG_PROMISE_BYTES_MAX) {
        /* Cutting the report short would hide accepted values from the
         * candidate (unsafe); a candidate this far behind must catch up. */
        reject(n, m, PX_REJECT_BEHIND);
        return;
    }
    if (!probe) {
        set_promised(n, m->ballot);
        if (n->role != PX_FOLLOWER)
            become_follower(n);
        reset_election_timer(n);
    }
    /* emit() may move n->out: take the pointer after any other emit. */
    struct px_msg *r = emit(n, PX_MSG_PROMISE, m->from);
    r->ballot = m->ballot;
    r->aux = probe;
    if (probe) {
        r->slot = n->promised; /* lets the prober pick a ballot above it */
        return;
    }
    struct px_entry *e = msg_entries(r, count);
    size_t i = 0;
    for (uint64_t s = from; s < n->log_end && i < count; s++) {
        struct slot_rec *rr = rec_get(n, s);
        if (rr->value)
            e[i++] = (struct px_entry){s, rr->ballot, px_value_ref(rr->value)};
    }
}

/* A message from a leader at a ballot this node may follow. */
static void follow_leader(struct px_node *n, uint32_t from, uint64_t ballot)
{
    set_promised(n, ballot);
    bool changed = n->leader != from || n->leader_ballot != ballot;
    if (n->role != PX_FOLLOWER && from != n->cfg.id)
        become_follower(n);
    n->leader = from;
    n->leader_ballot = ballot;
    n->ticks_since_leader = 0;
    n->elections = 0;
    reset_election_timer(n);
    if (changed) {
        LOG_D("node=%u event=follow leader=%u ballot=%llu", n->cfg.id, from,
              (unsigned long long)ballot);
        pending_resend_all(n);
        /* reads asked of an earlier leader will never be answered */
        for (size_t i = 0; i < n->n_fwd_reads; i++)
            read_done(n, n->fwd_reads[i].id, 0, -EAGAIN);
        n->n_fwd_reads = 0;
    }
}

/* Phase 2b: accept unless a higher ballot was promised. */
static void on_accept(struct px_node *n, const struct px_msg *m)
{
    if (m->ballot < n->promised) {
        reject(n, m, PX_REJECT_BALLOT);
        return;
    }
    follow_leader(n, m->from, m->ballot);
    struct px_msg *r = emit(n, PX_MSG_ACCEPTED, m->from);
    r->ballot = m->ballot;
    struct px_entry *acked = msg_entries(r, m->n_entries);
    uint32_t k = 0;
    for (uint32_t i = 0; i < m->n_entries; i++) {
        const struct px_entry *e = &m->entries[i];
        if (!e->value)
            continue;
        if (e->slot <= n->commit || e->slot < n->log_first) {
            acked[k++].slot = e->slot; /* already chosen: the same value (P2) */
            continue;
        }
        struct slot_rec *rr = rec_put(n, e->slot);
        if (!rr)
            continue; /* too far ahead: catch up first */
        /* A retransmission of what this node accepted at this ballot (one
         * value per slot and ballot) is acknowledged, not written again:
         * the first copy went out in this batch or an earlier one, and this
         * ack leaves after the batch is durable. */
        bool held = rr->value && rr->ballot == m->ballot;
        if (!rr->chosen && !held) {
            rec_set(rr, m->ballot, e->value);
            persist_push(n, e->slot, m->ballot, e->value);
        }
        acked[k++].slot = e->slot;
    }
    r->n_entries = k;
    if (k == 0) {
        free(r->entries);
        r->entries = NULL;
    }
    learn_commit(n, m->from, m->ballot, m->commit);
}

static void on_heartbeat(struct px_node *n, const struct px_msg *m)
{
    if (m->ballot < n->promised) {
        reject(n, m, PX_REJECT_BALLOT);
        return;
    }
    follow_leader(n, m->from, m->ballot);
    learn_commit(n, m->from, m->ballot, m->commit);
    struct px_msg *r = emit(n, PX_MSG_HEARTBEAT_ACK, m->from);
    r->ballot = m->ballot;
    r->aux = m->aux;
}

/* Any node answers a fetch with the chosen slots it holds, or sends the
 * fetcher to a snapshot when it compacted them away. */
static void on_fetch(struct px_node *n, const struct px_msg *m)
{
    if (m->slot < n->log_first && n->snapshot_slot > 0) {
        struct px_msg *r = emit(n, PX_MSG_SNAPSHOT_NEEDED, m->from);
        r->slot = n->snapshot_slot;
        return;
    }
    uint64_t first = MAX(m->slot, n->log_first);
    uint64_t last = n->commit;
    if (last >= first && last - first >= n->cfg.fetch_entries_max)
        last = first + n->cfg.fetch_entries_max - 1;
    /* A reply carries at most PX_MSG_VALUE_BYTES_MAX of values (and at least
     * one slot); the fetcher asks again for the rest. */
    size_t bytes = 0;
    for (uint64_t s = first; s <= last; s++) {
        bytes += rec_get(n, s)->value->len;
        if (s > first && bytes > PX_MSG_VALUE_BYTES_MAX) {
            last = s - 1;
            break;
        }
    }
    struct px_msg *r = emit(n, PX_MSG_CHOSEN, m->from);
    size_t count = last >= first ? (size_t)(last - first + 1) : 0;
    struct px_entry *e = msg_entries(r, count);
    for (size_t i = 0; i < count; i++) {
        struct slot_rec *rr = rec_get(n, first + i);
        ASSERT(rr && rr->chosen && rr->value);
        e[i] = (struct px_entry){first + i, rr->ballot, px_value_ref(rr->value)};
    }
}

static void on_chosen(struct px_node *n, const struct px_msg *m)
{
    for (uint32_t i = 0; i < m->n_entries; i++) {
        const struct px_entry *e = &m->entries[i];
        if (!e->value || e->slot <= n->commit)
            continue;
        struct slot_rec *rr = rec_put(n, e->slot);
        if (!rr || rr->chosen)
            continue;
        /* A chosen value is the value of every higher ballot at that slot
         * (P2), so keeping the higher ballot with it stays truthful. */
        uint64_t ballot = MAX(rr->ballot, e->ballot);
        rec_set(rr, ballot, e->value);
        rr->chosen = true;
        persist_push(n, e->slot, ballot, e->value);
    }
    commit_advance(n);
    n->leader_commit = MAX(n->leader_commit, m->commit);
    if (n->commit < m->commit && m->n_entries > 0)
        send_fetch(n, m->from); /* more to come: keep going */
}

/* A peer compacted away what this node lacks. The others may still hold
 * it (each node compacts at its own slots), and a fetch costs far less than
 * a whole snapshot: each other peer, the leader first, is asked once before
 * the snapshot is (once per commit: progress starts the round again). A
 * peer that does not answer is not waited for: the next "no" from anyone
 * then finds no peer left to ask. */
static void on_snapshot_needed(struct px_node *n, const struct px_msg *m)
{
    if (m->slot <= n->commit || n->snapshot_pending)
        return;
    if (n->fetch_tried_commit != n->commit) {
        n->fetch_tried = 0;
        n->fetch_tried_commit = n->commit;
    }
    n->fetch_tried |= node_bit(m->from);
    uint32_t next = 0;
    if (is_peer(n, n->leader) && !(n->fetch_tried & node_bit(n->leader)))
        next = n->leader;
    for (uint32_t p = 1; p <= n->cfg.n_nodes && !next; p++)
        if (is_peer(n, p) && !(n->fetch_tried & node_bit(p)))
            next = p;
    if (next) {
        n->fetch_tried |= node_bit(next);
        send_fetch(n, next);
        return;
    }
    n->snapshot_pending = true;
    n->snapshot_announce = true;
    n->snapshot_from = m->from;
    n->snapshot_want = m->slot;
    n->snapshot_tick = n->now;
}

static void on_read_index_reply(struct px_node *n, const struct px_msg *m)
{
    for (size_t i = 0; i < n->n_fwd_reads; i++) {
        if (n->fwd_reads[i].id != m->aux)
            continue;
        read_done(n, m->aux, m->slot, m->ballot ? 0 : -EAGAIN);
        n->fwd_reads[i] = n->fwd_reads[--n->n_fwd_reads];
        return;
    }
}

/* ---- follower ---------------------------------------------------------- */

static int step_follower(struct px_node *n, const struct px_msg *m)
{
    (void)n;
    (void)m;
    return 0; /* promises, acks and rejects are for proposers */
}

static void start_probe(struct px_node *n);

static void tick_follower(struct px_node *n)
{
    n->ticks_waiting++;
    if (n->ticks_waiting >= n->election_timeout)
        start_probe(n);
}

static void become_follower(struct px_node *n)
{
    lease_clear(n);
    if (n->role == PX_LEADER) {
        LOG_D("node=%u event=step_down ballot=%llu", n->cfg.id, (unsigned long long)n->ballot);
        queue_clear(n);
        for (size_t i = 0; i < n->n_reads; i++) {
            if (n->reads[i].from == 0)
                read_done(n, n->reads[i].id, 0, -EAGAIN);
            else {
                struct px_msg *r = emit(n, PX_MSG_READ_INDEX_REPLY, n->reads[i].from);
                r->aux = n->reads[i].id;
            }
        }
        n->n_reads = 0;
        n->leader = 0;
    }
    n->role = PX_FOLLOWER;
    n->step_role = step_follower;
    n->tick_role = tick_follower;
    n->probing = false;
    reset_election_timer(n);
}

/* ---- candidate --------------------------------------------------------- */

static void merge_clear(struct px_node *n)
{
    for (size_t i = 0; i < n->merge_len; i++)
        px_value_unref(n->merge[i].value);
    free(n->merge);
    n->merge = NULL;
    n->merge_len = 0;
}

static void merge_entry(struct px_node *n, uint64_t slot, uint64_t ballot, struct px_value *v)
{
    if (slot < n->cand_from || !v || slot - n->cand_from >= LOG_SLOTS_MAX)
        return;
    size_t idx = (size_t)(slot - n->cand_from);
    if (idx >= n->merge_len) {
        size_t len = idx + 1;
        struct merge_rec *mr = realloc(n->merge, sizeof *mr * len);
        ASSERT(mr != NULL);
        memset(mr + n->merge_len, 0, sizeof *mr * (len - n->merge_len));
        n->merge = mr;
        n->merge_len = len;
    }
    struct merge_rec *r = &n->merge[idx];
    if (!r->value || ballot > r->ballot) {
        px_value_ref(v);
        px_value_unref(r->value);
        r->value = v;
        r->ballot = ballot;
    }
}

static void broadcast_prepare(struct px_node *n, bool probe)
{
    for (uint32_t p = 1; p <= n->cfg.n_nodes; p++) {
        if (!is_peer(n, p))
            continue;
        struct px_msg *m = emit(n, PX_MSG_PREPARE, p);
        m->ballot = n->ballot;
        m->slot = n->commit + 1;
        m->aux = probe;
    }
}

static void become_leader(struct px_node *n);
static void start_phase1(struct px_node *n);

/* The pre-vote round: ask, without changing anyone's state, whether a
 * quorum would promise. */
static void start_probe(struct px_node *n)
{
    n->role = PX_CANDIDATE;
    n->step_role = step_candidate;
    n->tick_role = tick_candidate;
    n->probing = true;
    n->leader = 0;
    n->ballot = ballot_next(MAX(n->promised, n->max_seen), n->cfg.id);
    n->votes = node_bit(n->cfg.id);
    n->elections++;
    reset_election_timer(n);
    if (n->quorum == 1) {
        start_phase1(n);
        return;
    }
    broadcast_prepare(n, true);
}

/* Phase 1a for every slot from the first unchosen one. */
static void start_phase1(struct px_node *n)
{
    n->probing = false;
    n->ballot = ballot_next(MAX(n->promised, n->max_seen), n->cfg.id);
    set_promised(n, n->ballot);
    n->votes = node_bit(n->cfg.id);
    merge_clear(n);
    n->cand_from = n->commit + 1;
    for (uint64_t s = n->cand_from; s < n->log_end; s++) {
        struct slot_rec *r = rec_get(n, s);
        merge_entry(n, s, r->ballot, r->value);
    }
    LOG_D("node=%u event=phase1 ballot=%llu from_slot=%llu", n->cfg.id,
          (unsigned long long)n->ballot, (unsigned long long)n->cand_from);
    reset_election_timer(n);
    if (n->quorum == 1) {
        become_leader(n);
        return;
    }
    broadcast_prepare(n, false);
}

static int step_candidate(struct px_node *n, const struct px_msg *m)
{
    switch (m->type) {
    case PX_MSG_PROMISE:
        if (m->ballot != n->ballot || (bool)m->aux != n->probing)
            return 0;
        if (n->probing)
            n->max_seen = MAX(n->max_seen, m->slot);
        if (n->votes & node_bit(m->from))
            return 0;
        n->votes |= node_bit(m->from);
        if (!n->probing)
            for (uint32_t i = 0; i < m->n_entries; i++)
                merge_entry(n, m->entries[i].slot, m->entries[i].ballot, m->entries[i].value);
        if ((uint32_t)__builtin_popcount(n->votes) >= n->quorum) {
            if (n->probing)
                start_phase1(n);
            else
                become_leader(n);
        }
        return 0;
    case PX_MSG_REJECT:
        if (m->slot != n->ballot)
            return 0; /* about an earlier ballot */
        n->max_seen = MAX(n->max_seen, m->ballot);
        if (m->aux == PX_REJECT_BEHIND) {
            become_follower(n);
            send_fetch(n, m->from);
        } else if (m->aux == PX_REJECT_BALLOT && m->ballot > n->ballot) {
            become_follower(n);
        }
        /* a lease refusal: wait for the timer; the leader may be dead */
        return 0;
    default:
        return 0;
    }
}

static void tick_candidate(struct px_node *n)
{
    n->ticks_waiting++;
    if (n->ticks_waiting >= n->election_timeout)
        start_probe(n); /* randomized backoff, then try again from the probe */
}

/* ---- leader ------------------------------------------------------------ */

/* Sends ACCEPTs for the slots in [first, last] (only those `to` has not
 * acknowledged, if only_unacked), split so that no message carries more than
 * PX_MSG_VALUE_BYTES_MAX of values or PX_MSG_ENTRIES_MAX entries. */
static void send_accepts(struct px_node *n, uint32_t to, uint64_t first, uint64_t last,
                         bool only_unacked)
{
    uint64_t s = first;
    while (s <= last) {
        size_t count = 0, bytes = 0;
        uint64_t end = s;
        for (; end <= last && count < PX_MSG_ENTRIES_MAX; end++) {
            struct slot_rec *r = rec_get(n, end);
            if (!r || !r->value || (only_unacked && (r->acks & node_bit(to))))
                continue;
            if (count > 0 && bytes + r->value->len > PX_MSG_VALUE_BYTES_MAX)
                break;
            bytes += r->value->len;
            count++;
        }
        if (count > 0) {
            struct px_msg *m = emit(n, PX_MSG_ACCEPT, to);
            m->ballot = n->ballot;
            struct px_entry *e = msg_entries(m, count);
            size_t i = 0;
            for (uint64_t k = s; k < end && i < count; k++) {
                struct slot_rec *r = rec_get(n, k);
                if (r && r->value && !(only_unacked && (r->acks & node_bit(to))))
                    e[i++] = (struct px_entry){k, n->ballot, px_value_ref(r->value)};
            }
        }
        s = end;
    }
    n->commit_sent = MAX(n->commit_sent, n->commit);
}

static void broadcast_accepts(struct px_node *n, uint64_t first, uint64_t last)
{
    for (uint32_t p = 1; p <= n->cfg.n_nodes; p++)
        if (is_peer(n, p))
            send_accepts(n, p, first, last, false);
    for (uint64_t s = first; s <= last; s++)
        rec_get(n, s)->sent_tick = n->now;
}

/* The leader's own acceptance of (ballot, v) at slot. It is persisted in the
 * same ready batch that sends the ACCEPTs, and the driver persists before it
 * sends, so no peer's acceptance can be counted before this one is durable. */
static void leader_accept_own(struct px_node *n, uint64_t slot, struct px_value *v)
{
    struct slot_rec *r = rec_put(n, slot);
    ASSERT(r != NULL);
    rec_set(r, n->ballot, v);
    r->acks = node_bit(n->cfg.id);
    r->chosen = n->quorum == 1;
    persist_push(n, slot, n->ballot, v);
}

static void become_leader(struct px_node *n)
{
    n->role = PX_LEADER;
    n->step_role = step_leader;
    n->tick_role = tick_leader;
    n->leader = n->cfg.id;
    n->leader_ballot = n->ballot;
    n->ticks_since_leader = 0;
    n->elections = 0;
    n->lead_start_tick = n->now;
    for (uint32_t p = 1; p <= n->cfg.n_nodes; p++) {
        n->peer_heard[p] = n->now;
        n->peer_hb_acked[p] = 0;
    }
    lease_clear(n);
    /* Phase 2a for every slot the promises spoke of (P2): the highest
     * ballot's value, or a no-op to fill a gap. */
    uint64_t first = n->commit + 1;
    uint64_t last = n->cand_from + n->merge_len - 1;
    if (n->merge_len == 0)
        last = n->commit;
    for (uint64_t s = first; s <= last; s++) {
        struct merge_rec *mr = s >= n->cand_from ? &n->merge[s - n->cand_from] : NULL;
        struct px_value *v = mr && mr->value ? px_value_ref(mr->value) : noop_value();
        leader_accept_own(n, s, v);
        px_value_unref(v);
    }
    merge_clear(n);
    n->next_slot = last + 1;
    n->recovery_end = last;
    n->commit_sent = 0;
    LOG_D("node=%u event=leader ballot=%llu recover_from=%llu recover_to=%llu",
          n->cfg.id, (unsigned long long)n->ballot, (unsigned long long)first,
          (unsigned long long)last);
    if (last >= first) {
        /* Chunked so no message exceeds the entry bound. */
        for (uint64_t s = first; s <= last; s += 1024)
            broadcast_accepts(n, s, MIN(last, s + 1023));
    }
    commit_advance(n);
    n->hb_now = true;
    /* Own proposals whose fate is unknown go into this leader's queue. */
    for (size_t i = 0; i < n->n_fwd; i++)
        px_value_unref(n->fwd[i]);
    n->n_fwd = 0;
    pending_resend_all(n);
}

static bool leader_recovered(const struct px_node *n)
{
    return n->commit >= n->recovery_end;
}

/* The bytes of the values proposed and not yet chosen (at most window
 * slots: cheaper to add up than to keep up to date). */
static uint64_t bytes_in_flight(const struct px_node *n)
{
    uint64_t bytes = 0;
    for (uint64_t s = MAX(n->commit + 1, n->log_first); s < n->next_slot && s < n->log_end; s++) {
        const struct slot_rec *r = &n->recs[s & (n->cap - 1)];
        bytes += r->value ? r->value->len : 0;
    }
    return bytes;
}

/* The window has room for another slot: fewer than window slots and
 * window_bytes of values in flight. */
static bool window_open(const struct px_node *n, uint64_t in_flight)
{
    return n->next_slot - n->commit - 1 < n->cfg.window && in_flight < n->cfg.window_bytes;
}

/* Cuts batches from the queue into new slots while the window has room. */
static void leader_flush(struct px_node *n)
{
    uint64_t first = n->next_slot;
    uint64_t in_flight = bytes_in_flight(n);
    while (n->q_len > 0 && window_open(n, in_flight)) {
        size_t count = 0, bytes = 4;
        while (count < n->q_len && count < n->cfg.batch_count_max) {
            struct px_value *v = n->queue[(n->q_head + count) % n->q_cap];
            if (count > 0 && bytes + v->len > n->cfg.batch_bytes_max)
                break;
            bytes += v->len;
            count++;
        }
        struct px_value *batch = px_value_alloc(bytes);
        le_put_u32(batch->data, (uint32_t)count);
        size_t off = 4;
        for (size_t i = 0; i < count; i++) {
            struct px_value *v = n->queue[n->q_head];
            memcpy(batch->data + off, v->data, v->len);
            off += v->len;
            n->q_bytes -= v->len;
            px_value_unref(v);
            n->q_head = (n->q_head + 1) % n->q_cap;
            n->q_len--;
        }
        leader_accept_own(n, n->next_slot, batch);
        px_value_unref(batch);
        n->next_slot++;
        in_flight += bytes;
    }
    if (n->next_slot > first) {
        broadcast_accepts(n, first, n->next_slot - 1);
        commit_advance(n);
    }
}

static void broadcast_heartbeat(struct px_node *n)
{
    n->hb_seq++;
    n->hb_sent[n->hb_seq % PX_HB_RING] = (struct hb_sent){n->hb_seq, n->now};
    for (uint32_t p = 1; p <= n->cfg.n_nodes; p++) {
        if (!is_peer(n, p))
            continue;
        struct px_msg *m = emit(n, PX_MSG_HEARTBEAT, p);
        m->ballot = n->ballot;
        m->aux = n->hb_seq;
    }
    n->commit_sent = MAX(n->commit_sent, n->commit);
    n->hb_elapsed = 0;
    n->hb_now = false;
}

/* A peer acknowledged heartbeat seq: its share of the lease runs from the
 * tick that heartbeat was sent. */
static void lease_extend(struct px_node *n, uint32_t peer, uint64_t seq)
{
    const struct hb_sent *h = &n->hb_sent[seq % PX_HB_RING];
    if (h->seq != seq || seq <= n->lease_floor_seq[peer])
        return;
    n->lease_until[peer] = MAX(n->lease_until[peer], h->tick + n->lease_ticks);
}

/* The leader holds the lease: a quorum (itself included) acknowledged
 * heartbeats sent less than lease_ticks ago. */
static bool lease_valid(const struct px_node *n)
{
    uint32_t holders = 1;
    for (uint32_t p = 1; p <= n->cfg.n_nodes; p++)
        if (is_peer(n, p) && n->now < n->lease_until[p])
            holders++;
    return n->lease_ticks > 0 && holders >= n->quorum;
}

/* Peer p holds no share of the lease until it acknowledges a heartbeat
 * sent from now on. */
static void lease_drop(struct px_node *n, uint32_t p)
{
    n->lease_until[p] = 0;
    n->lease_floor_seq[p] = n->hb_seq;
}

static void lease_clear(struct px_node *n)
{
    for (uint32_t p = 1; p <= n->cfg.n_nodes; p++)
        lease_drop(n, p);
}

/* Read index (Raft thesis §6.4): the commit index at the time of the request
 * is safe to read at once a quorum has answered a heartbeat sent after it,
 * proving no other leader had been chosen meanwhile; or at once, while the
 * leader holds its lease (§6.4.1; the top of this file). A new leader first
 * finishes recovering the slots it inherited. */
static void leader_reads_progress(struct px_node *n)
{
    size_t k = 0;
    for (size_t i = 0; i < n->n_reads; i++) {
        struct read_req *rq = &n->reads[i];
        bool confirmed = false;
        if (rq->need_seq == 0 && leader_recovered(n)) {
            rq->index = n->commit;
            if (lease_valid(n)) {
                confirmed = true;
            } else {
                rq->need_seq = n->hb_seq + 1;
                n->hb_now = true;
            }
        } else if (rq->need_seq != 0) {
            uint32_t acks = 1;
            for (uint32_t p = 1; p <= n->cfg.n_nodes; p++)
                if (is_peer(n, p) && n->peer_hb_acked[p] >= rq->need_seq)
                    acks++;
            confirmed = acks >= n->quorum;
        }
        if (!confirmed) {
            n->reads[k++] = *rq;
            continue;
        }
        if (rq->from == 0) {
            read_done(n, rq->id, rq->index, 0);
        } else {
            struct px_msg *r = emit(n, PX_MSG_READ_INDEX_REPLY, rq->from);
            r->aux = rq->id;
            r->slot = rq->index;
            r->ballot = n->ballot; /* confirmed at this ballot; 0 means refused */
        }
    }
    n->n_reads = k;
}

static void leader_add_read(struct px_node *n, uint64_t id, uint32_t from)
{
    GROW(n->reads, n->n_reads, n->cap_reads);
    n->reads[n->n_reads++] = (struct read_req){id, from, 0, 0};
    leader_reads_progress(n);
}

static int step_leader(struct px_node *n, const struct px_msg *m)
{
    switch (m->type) {
    case PX_MSG_ACCEPTED:
        if (m->ballot != n->ballot)
            return 0;
        for (uint32_t i = 0; i < m->n_entries; i++) {
            struct slot_rec *r = rec_get(n, m->entries[i].slot);
            if (!r || r->ballot != n->ballot || m->entries[i].slot <= n->commit)
                continue;
            r->acks |= node_bit(m->from);
            if ((uint32_t)__builtin_popcount(r->acks) >= n->quorum)
                r->chosen = true; /* P3 */
        }
        commit_advance(n);
        leader_reads_progress(n);
        return 0;
    case PX_MSG_HEARTBEAT_ACK:
        if (m->ballot != n->ballot)
            return 0;
        n->peer_hb_acked[m->from] = MAX(n->peer_hb_acked[m->from], m->aux);
        lease_extend(n, m->from, m->aux);
        leader_reads_progress(n);
        return 0;
    case PX_MSG_REJECT:
        if (m->slot != n->ballot || m->ballot <= n->ballot)
            return 0;
        /* Someone promised a higher ballot: this leadership is over. */
        n->max_seen = MAX(n->max_seen, m->ballot);
        become_follower(n);
        return 0;
    case PX_MSG_FORWARD:
        for (uint32_t i = 0; i < m->n_entries; i++)
            if (proposal_record_valid(m->entries[i].value))
                leader_enqueue(n, m->entries[i].value);
        return 0;
    case PX_MSG_READ_INDEX:
        if (n->n_reads >= 4 * PX_SESSION_WINDOW) {
            struct px_msg *r = emit(n, PX_MSG_READ_INDEX_REPLY, m->from);
            r->aux = m->aux;
            return 0;
        }
        leader_add_read(n, m->aux, m->from);
        return 0;
    default:
        return 0;
    }
}

static void tick_leader(struct px_node *n)
{
    n->ticks_since_leader = 0;
    /* Step down when a quorum has not been heard for two election timeouts:
     * a partitioned leader must not keep clients waiting on it. Not after
     * one: a follower that is slow, not gone (a long fsync, no CPU), would
     * depose a leader that the followers never stopped hearing. */
    uint64_t silence = 2 * (uint64_t)n->cfg.ticks_election;
    if (n->now - n->lead_start_tick >= silence) {
        uint32_t heard = 1;
        for (uint32_t p = 1; p <= n->cfg.n_nodes; p++)
            if (is_peer(n, p) && n->now - n->peer_heard[p] < silence)
                heard++;
        if (heard < n->quorum) {
            become_follower(n);
            return;
        }
    }
    if (++n->hb_elapsed >= n->cfg.ticks_heartbeat) {
        broadcast_heartbeat(n);
        /* Retransmit accepts that a peer has not acknowledged for half an
         * election timeout. The stream to a peer loses frames only when its
         * connection drops or its queue is full; a slow disk delays acks
         * for longer than a few heartbeats, and retransmitting megabytes
         * to a follower that is still writing them only slows it down. */
        uint64_t stale = MAX(2 * (uint64_t)n->cfg.ticks_heartbeat + 1, n->cfg.ticks_election / 2);
        uint64_t first = n->commit + 1, last = 0;
        for (uint64_t s = first; s < n->next_slot; s++) {
            struct slot_rec *r = rec_get(n, s);
            if (r && !r->chosen && n->now - r->sent_tick >= stale)
                last = s;
        }
        if (last >= first) {
            for (uint32_t p = 1; p <= n->cfg.n_nodes; p++)
                if (is_peer(n, p))
                    send_accepts(n, p, first, MIN(last, first + 1023), true);
            for (uint64_t s = first; s <= last; s++)
                rec_get(n, s)->sent_tick = n->now;
        }
    }
}

/* ---- public API -------------------------------------------------------- */

struct px_node *px_new(const struct px_config *cfg)
{
    ASSERT(cfg->n_nodes >= 1 && cfg->n_nodes <= PX_NODES_MAX);
    ASSERT(cfg->id >= 1 && cfg->id <= cfg->n_nodes);
    ASSERT(cfg->ticks_election >= 2 && cfg->ticks_heartbeat >= 1);
    ASSERT(cfg->window >= 1 && cfg->pending_max >= 1 && cfg->pending_max <= PX_SESSION_WINDOW);
    ASSERT(cfg->window_bytes >= 1 &&
           (uint64_t)cfg->window_bytes + cfg->batch_bytes_max <= PX_MSG_PROMISE_BYTES_MAX);
    ASSERT(cfg->session > 0 && cfg->batch_count_max >= 1 && cfg->fetch_entries_max >= 1);
    ASSERT(cfg->apply_entries_max >= 1);
    struct px_node *n = calloc(1, sizeof *n);
    ASSERT(n != NULL);
    n->cfg = *cfg;
    n->quorum = cfg->n_nodes / 2 + 1;
    n->lease_ticks = cfg->ticks_election / 2;
    prng_seed(&n->rng, cfg->seed ^ ((uint64_t)cfg->id << 32));
    n->cap = 1024;
    n->recs = calloc(n->cap, sizeof *n->recs);
    ASSERT(n->recs != NULL);
    n->log_first = n->log_end = 1;
    n->pending = calloc(PX_SESSION_WINDOW, sizeof *n->pending);
    ASSERT(n->pending != NULL);
    n->next_seq = n->pending_low = 1;
    become_follower(n);
    return n;
}

void px_free(struct px_node *n)
{
    if (!n)
        return;
    for (uint64_t s = n->log_first; s < n->log_end; s++)
        px_value_unref(rec_get(n, s)->value);
    free(n->recs);
    merge_clear(n);
    queue_clear(n);
    free(n->queue);
    idset_free(&n->in_flight);
    for (uint64_t s = n->pending_low; s < n->next_seq; s++)
        px_value_unref(pending_at(n, s)->value);
    free(n->pending);
    for (size_t i = 0; i < n->n_fwd; i++)
        px_value_unref(n->fwd[i]);
    free(n->fwd);
    for (size_t i = 0; i < n->n_out; i++)
        px_msg_clear(&n->out[i]);
    free(n->out);
    for (size_t i = 0; i < n->n_persist; i++)
        px_value_unref(n->persist[i].value);
    free(n->persist);
    for (size_t i = 0; i < n->n_apply; i++)
        px_value_unref(n->apply[i].value);
    free(n->apply);
    free(n->reads);
    free(n->fwd_reads);
    free(n->done_reads);
    free(n);
}

void px_restore_snapshot(struct px_node *n, uint64_t slot)
{
    log_drop_through(n, slot);
    n->snapshot_slot = slot;
    n->commit = MAX(n->commit, slot);
    n->applied = MAX(n->applied, slot);
}

void px_restore_promised(struct px_node *n, uint64_t ballot)
{
    n->promised = MAX(n->promised, ballot);
    n->max_seen = MAX(n->max_seen, ballot);
}

void px_restore_entry(struct px_node *n, uint64_t slot, uint64_t ballot, struct px_value *value)
{
    struct slot_rec *r = rec_put(n, slot);
    if (!r || !value)
        return;
    rec_set(r, ballot, value);
    n->max_seen = MAX(n->max_seen, ballot);
}

void px_restore_commit(struct px_node *n, uint64_t commit)
{
    /* Slots up to the persisted commit were persisted with their chosen
     * value before the commit record was; stop at any hole regardless. */
    while (n->commit < commit) {
        struct slot_rec *r = rec_get(n, n->commit + 1);
        if (!r || !r->value)
            break;
        r->chosen = true;
        n->commit++;
    }
}

int px_step(struct px_node *n, const struct px_msg *m)
{
    ASSERT(!n->in_ready);
    if (m->to != n->cfg.id || !is_peer(n, m->from) || m->type < 1 || m->type > PX_MSG_TYPE_MAX)
        return -EINVAL;
    n->max_seen = MAX(n->max_seen, m->ballot);
    /* Any message shows the peer alive and connected (the leader's
     * step-down counts this): a follower's acks can wait in its stream
     * behind megabytes of forwarded proposals. */
    n->peer_heard[m->from] = n->now;
    switch (m->type) {
    case PX_MSG_PREPARE:
        on_prepare(n, m);
        return 0;
    case PX_MSG_ACCEPT:
        on_accept(n, m);
        return 0;
    case PX_MSG_HEARTBEAT:
        on_heartbeat(n, m);
        return 0;
    case PX_MSG_FETCH:
        on_fetch(n, m);
        return 0;
    case PX_MSG_CHOSEN:
        on_chosen(n, m);
        return 0;
    case PX_MSG_SNAPSHOT_NEEDED:
        on_snapshot_needed(n, m);
        return 0;
    case PX_MSG_READ_INDEX_REPLY:
        on_read_index_reply(n, m);
        return 0;
    case PX_MSG_READ_INDEX:
        if (n->role != PX_LEADER) {
            struct px_msg *r = emit(n, PX_MSG_READ_INDEX_REPLY, m->from);
            r->aux = m->aux; /* slot 0: refused, ask again */
            return 0;
        }
        return n->step_role(n, m);
    default:
        return n->step_role(n, m);
    }
}

void px_tick(struct px_node *n)
{
    ASSERT(!n->in_ready);
    n->now++;
    if (n->ticks_since_leader < UINT32_MAX)
        n->ticks_since_leader++;
    n->tick_role(n);
    pending_retry_tick(n);
    /* A follower that knows it is behind and got no answer asks again. */
    if (n->role != PX_LEADER && n->commit < n->leader_commit &&
        n->now - n->fetch_tick >= 4 * (uint64_t)n->cfg.ticks_heartbeat)
        send_fetch(n, n->leader ? n->leader : 0);
    for (size_t i = 0; i < n->n_fwd_reads;) {
        if (n->now - n->fwd_reads[i].asked_tick >= n->cfg.ticks_election) {
            read_done(n, n->fwd_reads[i].id, 0, -EAGAIN);
            n->fwd_reads[i] = n->fwd_reads[--n->n_fwd_reads];
        } else {
            i++;
        }
    }
    /* A snapshot request that led nowhere may be asked again. */
    if (n->snapshot_pending && n->now - n->snapshot_tick >= 20 * (uint64_t)n->cfg.ticks_election)
        n->snapshot_pending = false;
}

int px_propose(struct px_node *n, const void *data, size_t len, uint64_t *seq)
{
    ASSERT(!n->in_ready);
    if (len > PX_VALUE_BYTES_MAX - 4 - PX_PROPOSAL_HEADER ||
        len + 4 + PX_PROPOSAL_HEADER > MAX(n->cfg.batch_bytes_max, 4 + PX_PROPOSAL_HEADER))
        return -EMSGSIZE;
    if (n->next_seq - n->pending_low >= n->cfg.pending_max)
        return -EAGAIN;
    uint64_t s = n->next_seq++;
    struct px_value *v = px_value_alloc(PX_PROPOSAL_HEADER + len);
    le_put_u32(v->data, n->cfg.id);
    le_put_u64(v->data + 4, n->cfg.session);
    le_put_u64(v->data + 12, s);
    le_put_u32(v->data + 20, (uint32_t)len);
    if (len)
        memcpy(v->data + PX_PROPOSAL_HEADER, data, len);
    struct pending *p = pending_at(n, s);
    ASSERT(p->state == PENDING_FREE);
    *p = (struct pending){v, 0, PENDING_WAITING, 0};
    n->n_pending++;
    pending_send(n, p);
    *seq = s;
    return 0;
}

void px_read_index(struct px_node *n, uint64_t id)
{
    ASSERT(!n->in_ready);
    if (n->role == PX_LEADER) {
        leader_add_read(n, id, 0);
    } else if (n->leader && n->n_fwd_reads < 4 * PX_SESSION_WINDOW) {
        GROW(n->fwd_reads, n->n_fwd_reads, n->cap_fwd_reads);
        n->fwd_reads[n->n_fwd_reads++] = (struct fwd_read){id, n->now};
        struct px_msg *m = emit(n, PX_MSG_READ_INDEX, n->leader);
        m->aux = id;
    } else {
        read_done(n, id, 0, -EAGAIN);
    }
}

void px_clock_stalled(struct px_node *n)
{
    lease_clear(n);
}

void px_peer_lost(struct px_node *n, uint32_t peer, bool by_peer)
{
    if (!is_peer(n, peer))
        return;
    /* The peer may stop honouring the lease (below, on its side): not
     * counted in it again before it acknowledges a later heartbeat. */
    lease_drop(n, peer);
    if (!by_peer || n->leader != peer || n->role != PX_FOLLOWER)
        return;
    /* The lease protects a live leader; the leader's process closing the
     * connection (or dying) says it is not, and a live leader stopped
     * counting this node in its lease before it closed (above). Probe after
     * a short random delay instead of a full timeout. A connection this
     * node gave up on (an error, a timeout) says nothing of the kind: the
     * lease is waited out. */
    n->ticks_since_leader = n->cfg.ticks_election;
    n->leader = 0;
    n->election_timeout = (uint32_t)prng_range(&n->rng, 1, MAX(2u, n->cfg.ticks_election / 4));
    n->ticks_waiting = 0;
}

const struct px_value *px_chosen_value(struct px_node *n, uint64_t slot)
{
    if (slot > n->commit)
        return NULL;
    struct slot_rec *r = rec_get(n, slot);
    return r && r->chosen ? r->value : NULL;
}

void px_compact(struct px_node *n, uint64_t slot)
{
    ASSERT(slot <= n->applied);
    if (slot <= n->snapshot_slot)
        return;
    log_drop_through(n, slot);
    n->snapshot_slot = slot;
}

void px_snapshot_installed(struct px_node *n, uint64_t slot)
{
    ASSERT(!n->in_ready);
    n->snapshot_pending = false;
    if (slot <= n->applied)
        return;
    log_drop_through(n, slot);
    n->snapshot_slot = slot;
    if (slot > n->commit) {
        n->commit = slot;
        n->commit_dirty = true;
    }
    n->applied = slot;
    commit_advance(n);
}

bool px_has_ready(const struct px_node *n)
{
    return n->n_out || n->n_persist || n->promised_dirty || n->commit_dirty ||
           n->applied < n->commit || n->n_done_reads || n->n_fwd ||
           n->hb_now || n->snapshot_announce ||
           (n->role == PX_LEADER &&
            (n->commit > n->commit_sent ||
             (n->q_len && window_open(n, bytes_in_flight(n)))));
}

void px_ready(struct px_node *n, struct px_ready *rd)
{
    ASSERT(!n->in_ready);
    if (n->role == PX_LEADER) {
        leader_flush(n);
        leader_reads_progress(n);
        /* Tell followers about new commits now rather than at the next tick,
         * so proposals made on them complete without waiting a heartbeat. */
        if (n->hb_now || n->commit > n->commit_sent)
            broadcast_heartbeat(n);
    }
    if (n->n_fwd && n->leader && n->leader != n->cfg.id) {
        /* As many FORWARDs as the byte and entry bounds need. */
        size_t i = 0;
        while (i < n->n_fwd) {
            size_t count = 0, bytes = 0;
            while (i + count < n->n_fwd && count < PX_MSG_ENTRIES_MAX &&
                   (count == 0 || bytes + n->fwd[i + count]->len <= PX_MSG_VALUE_BYTES_MAX))
                bytes += n->fwd[i + count++]->len;
            struct px_msg *m = emit(n, PX_MSG_FORWARD, n->leader);
            struct px_entry *e = msg_entries(m, count);
            for (size_t k = 0; k < count; k++)
                e[k].value = n->fwd[i + k]; /* the reference moves into the message */
            i += count;
        }
        n->n_fwd = 0;
    } else {
        for (size_t i = 0; i < n->n_fwd; i++)
            px_value_unref(n->fwd[i]);
        n->n_fwd = 0;
    }
    memset(rd, 0, sizeof *rd);
    rd->promised_changed = n->promised_dirty;
    rd->promised = n->promised;
    rd->persist = n->persist;
    rd->n_persist = n->n_persist;
    rd->commit_changed = n->commit_dirty;
    rd->commit = n->commit;
    rd->msgs = n->out;
    rd->n_msgs = n->n_out;
    n->n_apply = 0;
    for (uint64_t s = n->applied + 1; s <= n->commit && n->n_apply < n->cfg.apply_entries_max; s++) {
        struct slot_rec *r = rec_get(n, s);
        ASSERT(r && r->chosen && r->value);
        GROW(n->apply, n->n_apply, n->cap_apply);
        n->apply[n->n_apply++] = (struct px_entry){s, r->ballot, px_value_ref(r->value)};
    }
    rd->apply = n->apply;
    rd->n_apply = n->n_apply;
    if (n->snapshot_announce) {
        rd->snapshot_needed = true;
        rd->snapshot_from = n->snapshot_from;
        rd->snapshot_slot = n->snapshot_want;
        n->snapshot_announce = false; /* handed out once per request */
    }
    rd->reads = n->done_reads;
    rd->n_reads = n->n_done_reads;
    n->in_ready = true;
}

void px_advance(struct px_node *n, struct px_ready *rd)
{
    ASSERT(n->in_ready);
    n->in_ready = false;
    n->promised_dirty = false;
    n->commit_dirty = false;
    for (size_t i = 0; i < n->n_persist; i++)
        px_value_unref(n->persist[i].value);
    n->n_persist = 0;
    for (size_t i = 0; i < n->n_out; i++)
        px_msg_clear(&n->out[i]);
    n->n_out = 0;
    if (n->n_apply)
        n->applied = n->apply[n->n_apply - 1].slot;
    for (size_t i = 0; i < n->n_apply; i++)
        px_value_unref(n->apply[i].value);
    n->n_apply = 0;
    n->n_done_reads = 0;
    memset(rd, 0, sizeof *rd);
}

void px_status(const struct px_node *n, struct px_status *st)
{
    st->role = n->role;
    st->leader = n->role == PX_LEADER ? n->cfg.id : n->leader;
    st->ballot = n->role == PX_FOLLOWER ? n->leader_ballot : n->ballot;
    st->promised = n->promised;
    st->commit = n->commit;
    st->applied = n->applied;
    st->log_first = n->log_first;
    st->log_last = n->log_end - 1;
    st->pending = n->n_pending;
    st->next_seq = n->next_seq;
}
