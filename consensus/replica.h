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
 * (replica_receive) and peer failures (replica_peer_lost); client threads
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
 * COMMIT (slot), SESSION (incarnation), SNAPSHOT (slot: a snapshot file at
 * or after this slot must exist, because the log before it may be gone).
 * At open, the newest valid snapshot file (snapfile.h) is restored into the
 * state machine and the exactly-once table, and the WAL is replayed into the
 * core; the committed entries after the snapshot are re-applied when the
 * thread starts, so a restart costs the log tail, not the history. Each
 * start takes a new session number, persisted before the replica says
 * anything, so the (origin, session, seq) of its proposals never repeats:
 * above the one its WAL names and its own newest in the snapshot's
 * exactly-once table, and not below the wall clock in microseconds (a node
 * whose data directory was emptied remembers none of its sessions).
 *
 * Snapshots and compaction. Every snapshot_every_slots applied slots, or
 * after snapshot_every_bytes of applied values (each shifted by
 * (id - 1) / n_nodes of its interval, so the replicas take theirs at
 * different times), the replica thread has the state
 * machine fix the state the snapshot shows (sm.snapshot_begin: quick) and
 * encodes the exactly-once table; the snapshot thread, while applies go on,
 * gets the state machine's image of it (sm.snapshot_image), makes the state
 * machine's deferred writes durable (sm.sync), writes the file durably and
 * deletes older ones. Back on the
 * replica thread the core forgets the slots before (snapshot slot -
 * log_slack_slots), or fewer if those hold more than log_slack_bytes (the
 * core keeps them in memory), so a follower that is only briefly behind
 * still catches up from the log, and the WAL drops every segment whose entries are all
 * that old, after re-logging the promise, the session and a SNAPSHOT marker.
 * Foreground work stalls only for sm.snapshot_begin and the table.
 *
 * Snapshot transfer. A replica that needs slots its peers compacted away
 * learns it from the core (snapshot needed, from peer P) and tells the state
 * machine (sm.snapshot_needed), which fetches P's snapshot file and whatever
 * the image references (fs/transfer.c) and then calls
 * replica_install_snapshot: the replica thread restores the image, installs
 * the table, tells the core, and completes local proposals the snapshot
 * already covers.
 *
 * A WAL that fails (fsync error) stops the replica: it answers nothing more
 * and every waiter gets -EIO. A replica that cannot persist must not speak. */
#ifndef PAXFS_CONSENSUS_REPLICA_H
#define PAXFS_CONSENSUS_REPLICA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "consensus/px.h"

struct replica_sm {
    void *ctx;
    /* Applies one chosen proposal; returns its result (>= 0, or -errno),
     * which is handed to the proposing client and remembered for retries.
     * Must be deterministic: a function of the state and the bytes only. */
    int64_t (*apply)(void *ctx, uint64_t slot, const uint8_t *data, size_t len);
    /* The rest is optional: without the snapshot calls and restore the
     * replica takes no snapshots and keeps its whole log.
     * Fixes the state the next image shows: the state as of the last apply
     * (replica thread, between applies: must be quick, it stalls them). */
    int (*snapshot_begin)(void *ctx);
    /* Appends the image of the state snapshot_begin fixed (the snapshot
     * thread, while applies go on); called once after each snapshot_begin
     * that succeeded. Set both or neither. */
    int (*snapshot_image)(void *ctx, struct buf *out);
    /* Replaces the whole state with an image made by snapshot_image (at open, or
     * a snapshot received from a peer). Nothing changes on error. */
    int (*restore)(void *ctx, const uint8_t *image, size_t len);
    /* Before the snapshot whose image is image[0..len) is written (the
     * snapshot thread, while applies go on): makes durable every effect of
     * the applies so far that the state machine deferred because the log
     * could redo them, and keeps what the image needs from being collected
     * (for the file system: its blocks). Work the image implies belongs here
     * rather than in snapshot, which stalls the applies. NULL: none. */
    int (*sync)(void *ctx, const uint8_t *image, size_t len);
    /* This replica needs a snapshot at or after slot from peer `from`: its
     * peers compacted away the slots it lacks. Replica thread; must not
     * block (start a transfer that ends in replica_install_snapshot). */
    void (*snapshot_needed)(void *ctx, uint32_t from, uint64_t slot);
};

struct replica_transport {
    void *ctx;
    /* Queues m for m->to; may fail (peer down, queue full): the core
     * retransmits what matters. Called on the replica thread. */
    int (*send)(void *ctx, const struct px_msg *m);
    /* Called after each run of send calls: a transport may hold what send
     * queued until then (one wakeup of its sender per run, not per
     * message). NULL: send delivers at once. Replica thread. */
    void (*flush)(void *ctx);
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
    char snap_dir[4096];      /* snapshot files; required with sm.snapshot_begin */
    uint64_t snapshot_every_slots; /* default 10000 */
    uint64_t snapshot_every_bytes; /* of applied values, default 256 MiB */
    uint64_t log_slack_slots;      /* kept before a snapshot, default 1000 */
    uint64_t log_slack_bytes;      /* at most, default 64 MiB */
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
    uint64_t snapshot_slot; /* the newest snapshot file's slot, 0 none */
    uint64_t log_first;     /* the first slot the core still holds */
    uint64_t snapshots;     /* snapshots taken since open */
    uint64_t snapshot_stall_ns_max; /* longest sm.snapshot_begin + table */
    bool failed;
};

struct replica;

void replica_config_defaults(struct replica_config *c);
/* Opens the WAL, replays it into a new core, and persists a new session.
 * Starts no thread. -EBADMSG: the WAL is damaged (rebuild from peers);
 * other -errno from the WAL. */
int replica_open(const struct replica_config *cfg, struct replica **out);
/* Offline (fsck): restores the newest snapshot into cfg->sm and applies
 * every committed entry after it, as a start would, then closes. Writes
 * nothing (but what the WAL's recovery cuts: a torn tail), sends nothing,
 * starts no thread; cfg->transport is not used. *snapshot_slot gets the
 * snapshot's slot (0: none), *applied the last slot applied. Errors as
 * replica_open. */
int replica_load_offline(const struct replica_config *cfg, uint64_t *snapshot_slot,
                         uint64_t *applied);
/* Starts the replica thread (which first re-applies the committed log). */
int replica_start(struct replica *r);
/* Stops the thread; waiters still waiting get -ESHUTDOWN. Idempotent. */
void replica_stop(struct replica *r);
/* Stops if needed, closes the WAL (synced), frees. NULL is fine. */
void replica_close(struct replica *r);

/* From the transport's thread: a message for this node (copied). */
void replica_receive(struct replica *r, const struct px_msg *m);
/* From the transport's thread, before its side of the connection closes:
 * a connection with peer ended; by_peer if the peer's side ended it (see
 * px_peer_lost). */
void replica_peer_lost(struct replica *r, uint32_t peer, bool by_peer);

/* Proposes data and waits until it is chosen and applied on this node;
 * *result is the state machine's result. -EIO after op_timeout (no quorum;
 * the proposal may still be chosen later: its result is then discarded),
 * -EMSGSIZE if too large, -ESHUTDOWN if the replica stops, -EIO if failed. */
int replica_propose(struct replica *r, const void *data, size_t len, int64_t *result);
/* Waits until this node has applied everything chosen before the call
 * (a read index confirmed by a quorum). -EIO after op_timeout. */
int replica_read_barrier(struct replica *r);

void replica_status(struct replica *r, struct replica_status *st);

/* Installs the snapshot file at path (a whole snapfile, e.g. received from
 * a peer, whose state machine image's dependencies are in place) and waits
 * until the replica thread did it; the file is renamed into snap_dir.
 * -EALREADY if this replica already applied that slot (nothing done),
 * -EBADMSG if the file does not decode, the state machine's restore error,
 * -ESHUTDOWN, -EIO.
 * rebuild (fsck --repair of a replica whose state diverged): a snapshot at
 * or before the applied slot replaces the state too, and the chosen log
 * after it is applied again (-ERANGE if the core no longer holds all of
 * it); this replica's own snapshot files are dropped and a new one taken. */
int replica_install_snapshot(struct replica *r, const char *path, bool rebuild);
/* Takes a snapshot now (tests, benchmarks), waits until it is on disk and
 * the log is compacted; *slot (may be NULL) gets its slot. -ENOTSUP without
 * sm.snapshot_begin, -EALREADY if nothing was applied since the last one. */
int replica_snapshot_now(struct replica *r, uint64_t *slot);
/* The snapshot directory (for serving transfers). */
const char *replica_snap_dir(const struct replica *r);

#endif
