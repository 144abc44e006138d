/* transfer — moving state between replicas: snapshot transfer to a replica
 * that fell behind its peers' logs, and single blocks to a replica whose
 * copy is missing or corrupt (read repair, fsck --repair).
 *
 * A receiver (one thread per node) asks a peer for its newest snapshot file
 * (consensus/snapfile.h) in chunks, assembling it as
 * SNAPDIR/incoming-<slot>.part; then asks for the blocks the image names
 * that the local store lacks, verifying each against its name as it is
 * stored (store_put_encoded); then syncs the store and hands the file to
 * replica_install_snapshot. Resumable: after an interruption of either side
 * the part file's length says how much of the image is here (the peer keeps
 * its previous snapshot file too, and answers -ESTALE once that is gone, so
 * the receiver starts the image over), and blocks already stored are not
 * asked for again. Throttled: at most rate_max bytes/s (0: unlimited) and
 * XFER_STREAMS * XFER_BATCHES_IN_FLIGHT requests of XFER_BLOCKS_PER_REQ
 * blocks in flight, so foreground traffic keeps its share.
 *
 * A server (one thread per node) answers peers' requests from its snapshot
 * directory and its store.
 *
 * Wire format: the payload of NET_FRAME_BULK frames, little-endian, first
 * byte the kind:
 *   IMG_REQ   id u64, min_slot u64, slot u64 (0: the newest), offset u64, max_len u32
 *   IMG_DATA  id u64, status i32, slot u64, total u64, offset u64, bytes...
 *   BLK_REQ   id u64, count u32 (1..XFER_BLOCKS_PER_REQ), names[count] (32 bytes each)
 *   BLK_DATA  id u64, status i32, name[32], block file bytes... (one per name)
 * status is 0 or a negative errno: -ENOENT no snapshot that new / no such
 * block, -ESTALE the asked slot's file is gone, -EBADMSG the block is
 * corrupt there too. Every decoder checks every length (fuzz target
 * xfer_msg). */
#ifndef PAXFS_FS_TRANSFER_H
#define PAXFS_FS_TRANSFER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "fs/store.h"

struct replica;

#define XFER_CHUNK_BYTES (4u << 20)
#define XFER_BLOCKS_PER_REQ 32u
#define XFER_BATCHES_IN_FLIGHT 2u /* per stream */
#define XFER_STREAMS 2u           /* receiver threads verifying blocks */
#define XFER_TIMEOUT_MS 10000u
/* A BLK_DATA message before its block bytes: kind, id, status, name. */
#define XFER_BLK_DATA_HEADER_BYTES (1u + 8u + 4u + 32u)

enum xfer_kind {
    XFER_IMG_REQ = 1,
    XFER_IMG_DATA = 2,
    XFER_BLK_REQ = 3,
    XFER_BLK_DATA = 4,
};

struct xfer_msg {
    uint8_t kind;
    uint64_t id;
    int32_t status;
    uint64_t min_slot, slot, total, offset;
    uint32_t max_len;
    uint32_t count;             /* BLK_REQ */
    const uint8_t *names;       /* BLK_REQ: count * STORE_NAME_LEN bytes */
    struct store_name name;     /* BLK_DATA */
    const uint8_t *data;        /* IMG_DATA, BLK_DATA: borrowed */
    size_t data_len;
};

/* Appends the encoding of m (fields of its kind only). */
void xfer_msg_encode(const struct xfer_msg *m, struct buf *out);
/* Decodes exactly len bytes; -EBADMSG on anything malformed. */
int xfer_msg_decode(const uint8_t *p, size_t len, struct xfer_msg *out);

enum xfer_state {
    XFER_IDLE = 0,
    XFER_IMAGE = 1,
    XFER_BLOCKS = 2,
    XFER_INSTALL = 3,
};

struct xfer_progress {
    enum xfer_state state;
    uint64_t bytes_done;  /* image bytes + plain bytes of the blocks fetched */
    uint64_t bytes_total; /* the same, of what this transfer needs */
    uint64_t rate;        /* bytes/s since the transfer started */
    uint64_t transfers;   /* snapshots installed since start */
    uint64_t bytes_received; /* wire bytes received, all transfers */
};

struct xfer_options {
    uint32_t node;
    uint32_t n_nodes;
    /* sends one NET_FRAME_BULK frame to peer `to` (host_send_frame):
     * frame holds NET_FRAME_HEADER_BYTES (reserved) and then the payload;
     * 0: taken (frame left empty), -EAGAIN queue full, other -errno (the
     * bytes stay the caller's) */
    int (*send)(void *ctx, uint32_t to, struct buf *frame);
    void *send_ctx;
    struct store *store;
    struct replica *replica; /* installs, and its snapshot directory */
    uint64_t rate_max;       /* bytes/s a transfer may take; 0 unlimited */
};

struct xfer;

/* Starts the server and receiver threads. */
int xfer_new(const struct xfer_options *o, struct xfer **out);
/* Stops the threads (a transfer in progress stops where it is, to resume
 * at the next start). xfer_on_frame stays safe to call until xfer_free.
 * Idempotent. */
void xfer_stop(struct xfer *x);
/* Stops if needed and frees. NULL ok. */
void xfer_free(struct xfer *x);

/* A NET_FRAME_BULK payload from peer `from` (the net thread): copied and
 * handed to the thread it is for. */
void xfer_on_frame(struct xfer *x, uint32_t from, const uint8_t *p, size_t len);
/* The replica needs a snapshot at or after slot; peer `from` has one.
 * Starts the receiver (or lets the running transfer go on). Never blocks. */
void xfer_snapshot_needed(struct xfer *x, uint32_t from, uint64_t slot);
/* Fetches the block called name from a peer that has a good copy and
 * stores it (verified); the store's references are unchanged. 0, -ENOENT
 * if no peer could give it. Blocks up to XFER_TIMEOUT_MS per peer. A
 * store_repair_fn (store.h). */
int xfer_fetch_block(void *x, const struct store_name *name);
/* fsck --repair: replaces this replica's diverged state with peer from's
 * snapshot at or after min_slot (and our own log after it), fetching the
 * blocks it lacks. Blocks until done; 0 or -errno. */
int xfer_rebuild(struct xfer *x, uint32_t from, uint64_t min_slot);
void xfer_get_progress(struct xfer *x, struct xfer_progress *out);

#endif
