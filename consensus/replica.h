/* replica — the driver that makes a consensus core a running replica.
 *
 * It ties together the pure core (px.h), the write-ahead log (wal.h), a
 * transport (an interface: the network lives in net/, which this module
 * does not depend on), a clock that produces ticks, and a state machine
 * (apply one proposal). It is the one place that orders, for every ready
 * batch of the core:
 *
 *   persist (WAL append + one group fsync)  →  send  →  apply  →  advance
 *
 * Threading. One replica thread owns the core and the WAL's write side;
 * nothing else touches them. Other threads talk to it through an inbox
 * under r->lock: the transport's thread hands in messages
 * (replica_receive) and peer failures (replica_peer_down); client threads
 * hand in proposals (replica_propose) and read barriers
 * (replica_read_barrier) and sleep on their own condition variable until
 * the replica thread completes them or op_timeout passes. The state
 * machine's apply runs on the replica thread, in slot order, once per
 * proposal (exactly once: the driver keeps the px_dedup table and skips
 * retried proposals, returning the first result to the retrying client).
 *
 *   client threads ──propose/read──▶ inbox ◀──receive/peer_down── transport
 *                                      │ (r->lock, r->wake)
 *                                      ▼
 *                     replica thread: step / propose / tick → ready
 *                        → wal append + sync → transport.send → sm.apply
 *                        → complete waiters → px_advance
 *
 * Durability. WAL records: PROMISE (ballot), ENTRY (slot, ballot, value),
 * COMMIT (slot), SESSION (incarnation). At open, the WAL is replayed into
 * the core; the state machine is rebuilt by re-applying the committed log
 * from the start (no snapshots yet: the log and the core's memory grow
 * until log compaction arrives with the snapshot work). Each start takes a
 * new session number, persisted before the replica says anything, so the
 * (origin, session, seq) of its proposals never repeats.
 *
 * A WAL that fails (fsync error) stops the replica: it answers nothing more
 * and every waiter gets -EIO. A replica that cannot persist must not speak. */
#ifndef PAXFS_CONSENSUS_REPLICA_H
#define PAXFS_CONSENSUS_REPLICA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "consensus/px.h"

struct replica_sm {
    void *ctx;
    /* Applies one chosen proposal; returns its result (>= 0, or -errno),
     * which is handed to the proposing client and remembered for retries.
     * Must be deterministic: a function of the state and the bytes only. */
    int64_t (*apply)(void *ctx, uint64_t slot, const uint8_t *data, size_t len);
};

struct replica_transport {
    void *ctx;
    /* Queues m for m->to; may fail (peer down, queue full): the core
     * retransmits what matters. Called on the replica thread. */
    int (*send)(void *ctx, const struct px_msg *m);
};

struct replica_config {
    uint32_t id;
    uint32_t n_nodes;
    char wal_dir[4096];
    uint32_t tick_ms;         /* default 10 */
    uint32_t ticks_election;  /* default 20 */
    uint32_t ticks_heartbeat; /* default 2 */
    uint32_t op_timeout_ms;   /* default 30000 */
    uint32_t window;          /* slots in flight, default 32 */
    struct replica_sm sm;
    struct replica_transport transport;
};

struct replica_status {
    enum px_role role;
    uint32_t leader;
    uint64_t ballot;
    uint64_t commit;
    uint64_t applied;
    uint64_t session;
    bool failed;
};

struct replica;

void replica_config_defaults(struct replica_config *c);
/* Opens the WAL, replays it into a new core, and persists a new session.
 * Starts no thread. -EBADMSG: the WAL is damaged (rebuild from peers);
 * other -errno from the WAL. */
int replica_open(const struct replica_config *cfg, struct replica **out);
/* Starts the replica thread (which first re-applies the committed log). */
int replica_start(struct replica *r);
/* Stops the thread; waiters still waiting get -ESHUTDOWN. Idempotent. */
void replica_stop(struct replica *r);
/* Stops if needed, closes the WAL (synced), frees. NULL is fine. */
void replica_close(struct replica *r);

/* From the transport's thread: a message for this node (copied). */
void replica_receive(struct replica *r, const struct px_msg *m);
/* From the transport's thread: the connection to peer broke. */
void replica_peer_down(struct replica *r, uint32_t peer);

/* Proposes data and waits until it is chosen and applied on this node;
 * *result is the state machine's result. -EIO after op_timeout (no quorum;
 * the proposal may still be chosen later: its result is then discarded),
 * -EMSGSIZE if too large, -ESHUTDOWN if the replica stops, -EIO if failed. */
int replica_propose(struct replica *r, const void *data, size_t len, int64_t *result);
/* Waits until this node has applied everything chosen before the call
 * (a read index confirmed by a quorum). -EIO after op_timeout. */
int replica_read_barrier(struct replica *r);

void replica_status(struct replica *r, struct replica_status *st);

#endif
