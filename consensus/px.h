/* px — the Multi-Paxos core.
 *
 * A pure state machine: no sockets, no files, no clock, no threads, no global
 * randomness (its PRNG is seeded from px_config). It is driven by three
 * inputs and drained through one output:
 *
 *   px_step(msg)      a message from a peer
 *   px_tick()         one unit of logical time (the driver ticks it on a timer)
 *   px_propose(data)  a client proposal on this node
 *   px_ready(&rd)     what must now be persisted, sent and applied
 *   px_advance(&rd)   the caller has done all of that
 *
 * The caller's order for one ready batch is fixed (etcd-io/raft doc.go):
 *   1. send the messages that promise nothing (px_msg_after_persist() is
 *      false: requests such as ACCEPT, PREPARE, HEARTBEAT), so that peers
 *      write to their disks while this node writes to its own (Raft thesis
 *      §10.2.1);
 *   2. persist rd.promised (if changed), rd.persist[] and rd.commit, and
 *      sync them to stable storage;
 *   3. only then send the messages that promise what step 2 stored
 *      (PROMISE, ACCEPTED, HEARTBEAT_ACK, REJECT);
 *   4. apply rd.apply[] in order, install rd.snapshot if asked, complete
 *      rd.reads[];
 *   5. call px_advance(). Between px_ready and px_advance, call nothing else
 *      on this node: in particular no reply to a step-1 message may be
 *      stepped before step 2 is durable (the core counts its own acceptance
 *      and its own promise at once, which is safe only because of this).
 *
 * Every node is acceptor and learner; the proposer role is one of follower,
 * candidate or leader (the role's step handler is a function pointer):
 *
 *            election timeout              quorum of promises
 *   FOLLOWER ────────────────▶ CANDIDATE ─────────────────────▶ LEADER
 *      ▲  ▲    higher ballot seen │  ▲ timeout (doubling, up to   │
 *      │  └───────────────────────┘  └──────┘ 8x): new ballot      │
 *      └─────────── higher ballot seen, or no quorum heard ────────┘
 *                   for two election timeouts (step down)
 *
 * Invariants (Paxos Made Simple §2; checked by the simulator in tests/):
 *   P1  an acceptor accepts (b, v) at a slot only if it has not promised a
 *       ballot above b, and it promises only ballots above its promise;
 *   P2  a leader proposes at a slot the value of the highest ballot reported
 *       by a quorum of promises for that slot, or a no-op if none reports one;
 *   P3  a slot is chosen when a quorum accepted the same ballot; a node marks
 *       a slot chosen only when it holds the value of that ballot (its own
 *       acceptance at the announcing leader's ballot, or a CHOSEN reply);
 *   P4  commit is the highest slot such that every slot up to it is chosen and
 *       its value known; slots are applied in order up to commit, once each.
 *
 * Values are refcounted immutable byte strings (struct px_value) so that a
 * value travels from a proposal to the log, the wire and the apply list
 * without being copied. A slot's value is a batch of proposals, each tagged
 * with (origin node, session, sequence) so the state machine applies each at
 * most once (see px_dedup below). An empty batch is a no-op. */
#ifndef PAXFS_CONSENSUS_PX_H
#define PAXFS_CONSENSUS_PX_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "consensus/ballot.h"

struct buf;

#define PX_NODES_MAX 16
/* Bound on how far a session's proposals may run ahead of its oldest
 * unapplied one; px_dedup keeps exactly this window per session. */
#define PX_SESSION_WINDOW 4096u

/* ---- values ---------------------------------------------------------- */

struct px_value {
    atomic_uint refs;
    uint32_t len;
    uint8_t data[];
};

/* A new value holding a copy of data, with one reference. */
struct px_value *px_value_new(const void *data, size_t len);
/* A new value of len bytes for the caller to fill before sharing it. */
struct px_value *px_value_alloc(size_t len);
struct px_value *px_value_ref(struct px_value *v);
void px_value_unref(struct px_value *v); /* NULL is fine */

/* ---- batches of proposals ---------------------------------------------- */

/* One proposal inside a slot's batch. data is borrowed from the batch. */
struct px_proposal {
    uint32_t origin;
    uint64_t session;
    uint64_t seq;
    const uint8_t *data;
    uint32_t len;
};

/* Batch layout: u32 count, then per proposal
 *   u32 origin, u64 session, u64 seq, u32 len, len bytes.
 * A batch of count 0 is a no-op. */
#define PX_PROPOSAL_HEADER 24u

struct px_batch_iter {
    const uint8_t *p;
    size_t left;
    uint32_t remaining;
};

/* Starts iterating; -EBADMSG if the batch header is malformed. */
int px_batch_iter_init(struct px_batch_iter *it, const struct px_value *batch);
/* 1 and *out filled, 0 at the end, -EBADMSG on a malformed batch. */
int px_batch_next(struct px_batch_iter *it, struct px_proposal *out);
uint32_t px_batch_count(const struct px_value *batch);

/* ---- messages ---------------------------------------------------------- */

enum px_msg_type {
    PX_MSG_PREPARE = 1,      /* ballot, slot = first slot asked, commit */
    PX_MSG_PROMISE,          /* ballot, commit, entries = accepted (slot, ballot, value) */
    PX_MSG_ACCEPT,           /* ballot, commit, entries = (slot, ballot, value) */
    PX_MSG_ACCEPTED,         /* ballot, entries = slots accepted (no values) */
    PX_MSG_REJECT,           /* ballot = rejecter's promise, commit, aux = reason */
    PX_MSG_HEARTBEAT,        /* ballot, commit, aux = heartbeat sequence */
    PX_MSG_HEARTBEAT_ACK,    /* ballot, commit of the follower, aux = heartbeat sequence */
    PX_MSG_FORWARD,          /* entries = proposals (value = one proposal record) */
    PX_MSG_FETCH,            /* slot = first slot wanted */
    PX_MSG_CHOSEN,           /* commit, entries = chosen (slot, ballot, value) */
    PX_MSG_SNAPSHOT_NEEDED,  /* slot = the sender's snapshot slot */
    PX_MSG_READ_INDEX,       /* aux = read id */
    PX_MSG_READ_INDEX_REPLY, /* aux = read id, slot = read index, ballot = the confirming
                              * leader's ballot, 0 = refused: ask again */
    PX_MSG_TYPE_MAX = PX_MSG_READ_INDEX_REPLY,
};

/* Reasons carried in a REJECT's aux. */
enum px_reject_reason {
    PX_REJECT_BALLOT = 1, /* a higher ballot was promised */
    PX_REJECT_LEASE = 2,  /* the rejecter hears a live leader */
    PX_REJECT_BEHIND = 3, /* the candidate's commit is behind the rejecter's */
};

struct px_entry {
    uint64_t slot;
    uint64_t ballot;
    struct px_value *value; /* NULL in ACCEPTED */
};

struct px_msg {
    uint8_t type;
    uint32_t from;
    uint32_t to;
    uint64_t ballot;
    uint64_t commit;
    uint64_t slot;
    uint64_t aux;
    uint32_t n_entries;
    struct px_entry *entries;
};

/* Bounds every decoder and the core enforce. The core splits ACCEPT,
 * CHOSEN and FORWARD so that one message carries at most
 * PX_MSG_VALUE_BYTES_MAX of values (more only for a single value), which
 * keeps every message inside one transport frame. A PROMISE cannot be cut
 * short safely: an acceptor that would report more than
 * PX_MSG_PROMISE_BYTES_MAX refuses the candidate as too far behind. */
#define PX_MSG_ENTRIES_MAX 65536u
#define PX_VALUE_BYTES_MAX (64u << 20)
#define PX_MSG_VALUE_BYTES_MAX (16u << 20)
#define PX_MSG_PROMISE_BYTES_MAX (64u << 20)

const char *px_msg_type_name(uint8_t type);
/* True for the message types that speak for state persisted in the same
 * ready batch, and so must wait until it is durable (see the order above). */
bool px_msg_after_persist(uint8_t type);
/* Frees the entries array and drops the values' references. */
void px_msg_clear(struct px_msg *m);
/* A deep-enough copy: new entries array, values shared by reference. */
void px_msg_copy(struct px_msg *dst, const struct px_msg *src);

/* ---- the node ---------------------------------------------------------- */

struct px_config {
    uint32_t id;                /* 1..n_nodes */
    uint32_t n_nodes;           /* 1..PX_NODES_MAX */
    uint64_t seed;              /* election-timeout randomness */
    uint64_t session;           /* this incarnation's session id, > 0, increasing per restart */
    uint32_t ticks_heartbeat;   /* leader heartbeat period, default 1 */
    uint32_t ticks_election;    /* election timeout lower bound, default 10 */
    uint32_t window;            /* slots in flight beyond commit, default 32 */
    uint32_t window_bytes;      /* their values: a new slot only below this, default
                                 * 32 MiB; with batch_bytes_max at most
                                 * PX_MSG_PROMISE_BYTES_MAX, so that one PROMISE
                                 * can report them all */
    uint32_t batch_count_max;   /* proposals per slot, default 4096 */
    uint32_t batch_bytes_max;   /* bytes per slot, default 4 MiB */
    uint32_t pending_max;       /* own proposals not yet chosen, <= PX_SESSION_WINDOW */
    uint32_t queue_bytes_max;   /* leader's queue of unslotted proposals, default 64 MiB */
    uint32_t fetch_entries_max; /* slots per CHOSEN reply, default 256 */
    uint32_t apply_entries_max; /* slots per ready batch, default 1024 */
};

void px_config_defaults(struct px_config *c, uint32_t id, uint32_t n_nodes);

enum px_role { PX_FOLLOWER, PX_CANDIDATE, PX_LEADER };
const char *px_role_name(enum px_role role);

struct px_read {
    uint64_t id;
    uint64_t index; /* apply up to here, then read */
    int status;     /* 0, or -EAGAIN: no leader confirmed it; retry */
};

struct px_ready {
    /* 1. persist, then sync */
    bool promised_changed;
    uint64_t promised;
    struct px_entry *persist; /* accepted or learned (slot, ballot, value) */
    size_t n_persist;
    bool commit_changed;
    uint64_t commit;
    /* 2. then send */
    struct px_msg *msgs;
    size_t n_msgs;
    /* 3. then apply */
    struct px_entry *apply; /* chosen slots applied+1.., in order */
    size_t n_apply;
    bool snapshot_needed;       /* install a snapshot from snapshot_from ... */
    uint32_t snapshot_from;
    uint64_t snapshot_slot;     /* ... taken at or after this slot */
    struct px_read *reads;
    size_t n_reads;
};

struct px_status {
    enum px_role role;
    uint32_t leader;     /* 0 if unknown */
    uint64_t ballot;     /* the proposer's ballot (candidate/leader) */
    uint64_t promised;
    uint64_t commit;
    uint64_t applied;
    uint64_t log_first;  /* first slot still held (after compaction) */
    uint64_t log_last;   /* highest slot with an accepted value */
    uint32_t pending;    /* own proposals not yet chosen */
    uint64_t next_seq;
};

struct px_node;

struct px_node *px_new(const struct px_config *cfg);
void px_free(struct px_node *n);

/* Restore, before the first step/tick/propose, from what the caller persisted:
 * the snapshot slot the state machine was restored to (0: none), the promise,
 * the accepted entries, and the commit index. Entries at or below the
 * snapshot slot are ignored; the value is referenced, not taken. */
void px_restore_snapshot(struct px_node *n, uint64_t slot);
void px_restore_promised(struct px_node *n, uint64_t ballot);
void px_restore_entry(struct px_node *n, uint64_t slot, uint64_t ballot, struct px_value *value);
void px_restore_commit(struct px_node *n, uint64_t commit);

/* A message from a peer. m is borrowed. -EINVAL for a message that is not
 * addressed to this node or names an unknown sender (ignored). */
int px_step(struct px_node *n, const struct px_msg *m);
void px_tick(struct px_node *n);
/* Proposes data (copied). On 0, *seq is its sequence in this node's session.
 * -EAGAIN if too many of this node's proposals are pending; -EMSGSIZE if
 * larger than a batch may be. */
int px_propose(struct px_node *n, const void *data, size_t len, uint64_t *seq);
/* Asks for a read index; the answer arrives in a later ready's reads[]. */
void px_read_index(struct px_node *n, uint64_t id);
/* The transport lost a connection to peer. Call it before this node's side
 * of the connection closes: a leader stops counting peer in its lease.
 * by_peer: the peer's side ended it (its process closed it, or died), not
 * this node (an error it found, a timeout); then, if peer is the leader,
 * this node does not wait out the lease (fast failover). */
void px_peer_lost(struct px_node *n, uint32_t peer, bool by_peer);
/* The caller's ticks fell behind real time (it stalled): a lease the core
 * holds is void until heartbeats sent from now on renew it. The lease is
 * safe only if the caller says so whenever it is a tick or more behind,
 * and reads the clock for that just before it asks for read indexes. */
void px_clock_stalled(struct px_node *n);
/* The state machine took a snapshot covering every slot <= slot (<= applied):
 * the core may forget those slots, and sends peers that need them to a
 * snapshot instead. */
void px_compact(struct px_node *n, uint64_t slot);
/* The value chosen at slot, borrowed until the next call into the core, or
 * NULL if the core does not hold slot as chosen (compacted away, or not
 * chosen yet). For re-applying a log tail over an older snapshot. */
const struct px_value *px_chosen_value(struct px_node *n, uint64_t slot);
/* A snapshot taken at slot was installed into the state machine. */
void px_snapshot_installed(struct px_node *n, uint64_t slot);

bool px_has_ready(const struct px_node *n);
void px_ready(struct px_node *n, struct px_ready *rd);
void px_advance(struct px_node *n, struct px_ready *rd);

void px_status(const struct px_node *n, struct px_status *st);

/* ---- exactly-once ------------------------------------------------------ */

/* The state machine's table of applied (origin, session, seq) with each
 * one's result, so a retried proposal is applied at most once and gets the
 * original result. Per (origin, session) it keeps a watermark below which
 * every seq was applied, and the window above it. It is part of the
 * replicated state: every replica builds the same table by applying the same
 * slots. Keeps the newest PX_DEDUP_SESSIONS sessions per origin. */
#define PX_DEDUP_SESSIONS 4

struct px_dedup;

struct px_dedup *px_dedup_new(void);
void px_dedup_free(struct px_dedup *d);
/* 1 if (origin, session, seq) was applied (its result in *result), 0 if not,
 * -ESTALE if it is too old to tell (its session was evicted or seq fell below
 * the window): treat as applied, result unknown. */
int px_dedup_check(const struct px_dedup *d, uint32_t origin, uint64_t session,
                   uint64_t seq, int64_t *result);
void px_dedup_record(struct px_dedup *d, uint32_t origin, uint64_t session,
                     uint64_t seq, int64_t result);
/* The newest session of origin the table holds, 0 if none. */
uint64_t px_dedup_newest_session(const struct px_dedup *d, uint32_t origin);
/* Appends the table to out (for snapshots); decode rebuilds one from bytes
 * written by encode, or fails with -EBADMSG without touching *out. */
void px_dedup_encode(const struct px_dedup *d, struct buf *out);
int px_dedup_decode(const uint8_t *p, size_t len, struct px_dedup **out);
/* A digest of the table, equal on replicas that applied the same slots. */
uint64_t px_dedup_digest(const struct px_dedup *d);

#endif
