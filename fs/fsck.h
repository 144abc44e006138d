/* fsck — verifying replicas: offline, one data directory; online, the
 * whole cluster through its nodes.
 *
 * Offline (fsck_offline, `paxfs fsck --data DATADIR`): with the replica
 * stopped, rebuild its state the way a start would (newest snapshot, then
 * the committed log after it), then check that every snapshot file and the
 * WAL decode, that the tree is a tree (fsm_check: reachability, no cycles,
 * link counts, orphans, block accounting and reference counts), and that
 * every block file on disk decompresses and hashes to its name and every
 * block the state maps is there.
 *
 * Online (`paxfs fsck --config`): the operator client asks a node to put a
 * MARK in the log; every replica, when it applies the mark, records its
 * state digest and per-inode digests at that slot, so the digests compare
 * states at exactly the same point of the history. The client then asks
 * every node for its digest (and, where they differ, the per-inode digests,
 * to name the diverging inodes), and to verify (and with --repair, repair
 * from peers) its block store. A replica whose state diverged is rebuilt
 * (REBUILD) from a healthy peer's fresh snapshot (SNAPSHOT).
 *
 * Requests are CLIENT_REQ payloads (net.h), little-endian, each answered by
 * one CLIENT_REPLY whose first field is an i32 status (0 or -errno):
 *   MARK     u8 1, u64 id           → status, u64 slot
 *   DIGEST   u8 2, u64 id           → status (-EAGAIN: not applied yet), u64 slot,
 *                                     u64 digest, u64 inodes, u64 applied
 *   INODES   u8 3, u64 id, u64 after, u32 max
 *                                   → status, u32 n, n × (u64 ino, digest[16])
 *   BLOCKS   u8 4, u8 repair        → status, u64 checked, u64 missing,
 *                                     u64 corrupt, u64 repaired, u32 n,
 *                                     n × (u64 ino, u64 index, name[32],
 *                                     i32 -ENOENT|-EBADMSG, u8 repaired)
 *            (every block file is verified; ino 0: a file nothing maps,
 *            which repair moves aside)
 *   SNAPSHOT u8 5                   → status, u64 slot
 *   REBUILD  u8 6, u32 from, u64 min_slot → status
 *   DIVERGE  u8 7, u64 ino          → status   (test hook: fsm_test_diverge;
 *                                               refused unless the daemon runs
 *                                               with PAXFS_TEST_HOOKS=1)
 * The mark itself is a log record: FSCK_MARK_MAGIC then u64 id. */
#ifndef PAXFS_FS_FSCK_H
#define PAXFS_FS_FSCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "fs/fsm.h"
#include "fs/store.h"

struct replica;
struct xfer;

enum fsck_op {
    FSCK_OP_MARK = 1,
    FSCK_OP_DIGEST = 2,
    FSCK_OP_INODES = 3,
    FSCK_OP_BLOCKS = 4,
    FSCK_OP_SNAPSHOT = 5,
    FSCK_OP_REBUILD = 6,
    FSCK_OP_DIVERGE = 7,
};

#define FSCK_MARK_MAGIC 0x314d4b4353465850ull /* the bytes "PXFSCKM1" */
#define FSCK_MARK_BYTES 16u
#define FSCK_INODES_MAX 4096u     /* per INODES reply */
#define FSCK_BAD_BLOCKS_MAX 64u   /* named per BLOCKS reply */

enum fsck_kind {
    FSCK_BLOCK_MISSING,   /* mapped, not in the store */
    FSCK_BLOCK_CORRUPT,   /* fails decompression or its hash */
    FSCK_TREE,            /* fsm_check found the namespace inconsistent */
    FSCK_SNAPSHOT_BAD,    /* a snapshot file that does not decode */
    FSCK_LOG_BAD,         /* the WAL or the snapshots cannot be loaded */
    FSCK_DIVERGED,        /* online: an inode whose digest differs from the majority's */
    FSCK_UNREACHABLE,     /* online: a node that did not answer */
};
const char *fsck_kind_name(enum fsck_kind k);

struct fsck_finding {
    enum fsck_kind kind;
    uint32_t node;        /* online: which replica; offline: this one */
    uint64_t ino;         /* 0: none */
    uint64_t index;       /* block index in the file, for block findings */
    bool has_block;
    struct store_name block;
    char what[256];       /* one line, for people */
};
typedef void (*fsck_report_fn)(void *ctx, const struct fsck_finding *f);

struct fsck_summary {
    uint32_t node, n_nodes;
    uint64_t snapshot_slot;     /* the snapshot the state was loaded from */
    uint64_t applied;           /* the state checked is as of this slot */
    uint64_t inodes;
    uint64_t blocks_mapped;     /* mappings in block maps */
    uint64_t blocks_on_disk;    /* block files verified */
    uint64_t blocks_unreferenced; /* on disk, mapped by no named file (garbage
                                     GC will free, or an orphan's) */
    uint64_t findings;
    uint64_t digest;            /* fsm_digest of the state checked */
};

/* Checks the stopped replica in data_dir, reporting each finding to fn (may
 * be NULL). 0 when the check ran (clean or not: see out->findings); a
 * negative errno with a one-line reason in err when the input is unusable
 * (not a data directory, in use by a running mount, unreadable). */
int fsck_offline(const char *data_dir, fsck_report_fn fn, void *ctx, struct fsck_summary *out,
                 char *err, size_t errlen);

/* A decoded request. */
struct fsck_request {
    uint8_t op;          /* enum fsck_op */
    uint64_t id;         /* MARK, DIGEST, INODES */
    uint64_t after;      /* INODES */
    uint32_t max;        /* INODES */
    bool repair;         /* BLOCKS */
    uint32_t from;       /* REBUILD */
    uint64_t min_slot;   /* REBUILD */
    uint64_t ino;        /* DIVERGE */
};
/* Decodes exactly len bytes; -EBADMSG on an unknown op, a wrong length or
 * a bad field. */
int fsck_request_decode(const uint8_t *p, size_t len, struct fsck_request *out);

/* ---- the node's side of online fsck ---- */

struct fsck_server;
struct fsck_server_options {
    uint32_t node;
    struct fsm *fsm;
    struct store *store;
    struct replica *replica;
    struct xfer *xfer;
    /* answers client (net_client_reply) */
    int (*reply)(void *ctx, uint64_t client, const void *payload, size_t len);
    void *reply_ctx;
    bool test_hooks; /* DIVERGE allowed */
};
int fsck_server_new(const struct fsck_server_options *o, struct fsck_server **out);
/* Stops the worker (a request in progress finishes first: stop the replica
 * and the transfers before, so that it does not wait). Requests that arrive
 * after are answered -EBUSY. Idempotent. */
void fsck_server_stop(struct fsck_server *s);
/* Stops if needed and frees. NULL ok. */
void fsck_server_free(struct fsck_server *s);
/* A CLIENT_REQ (the net thread: copied and queued for the worker). */
void fsck_server_request(struct fsck_server *s, uint64_t client, const uint8_t *p, size_t len);
/* If data is a mark record: records this replica's digests for it (the
 * replica thread, in apply) and returns true. s may be NULL (the record is
 * still recognized and skipped). */
bool fsck_server_apply(struct fsck_server *s, uint64_t slot, const uint8_t *data, size_t len);
/* The mark record for id (FSCK_MARK_BYTES). */
void fsck_mark_encode(uint64_t id, uint8_t out[FSCK_MARK_BYTES]);

#endif
