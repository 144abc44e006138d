/* write_behind — a host's file writes, acknowledged at once and proposed in
 * the background, so that a writer does not wait out one consensus round per
 * write(2) and small writes are proposed as few large ones.
 *
 * DESIGN.md's durability rule is the contract: fsync, fdatasync and close
 * return only when every earlier write of that file from this host is
 * committed and applied; write(2) itself may return before. (The kernel's
 * writeback cache would give the same, but it makes the kernel trust its
 * own file sizes over the filesystem's, so a file another host extended
 * would keep its old size here: it stays off.)
 *
 * Per inode, the module keeps at most one buffered extent (bytes written
 * here, not yet proposed) and a list of in-flight extents (queued for, or
 * being proposed by, a worker thread). A write that continues or overlaps
 * the buffered extent is copied into it; any other write first submits it.
 * A buffered extent is submitted once it holds chunk_bytes (its whole
 * blocks; the partial last block stays buffered), when it is delay_ms old,
 * and by wb_drain/wb_sync.
 *
 * Invariants:
 *  1. The in-flight extents of an inode are pairwise disjoint and disjoint
 *     from its buffered extent: a write overlapping an in-flight extent
 *     waits until that extent is applied. The log may therefore order one
 *     inode's in-flight extents any way: disjoint writes commute, also
 *     through the apply's read-modify-write of a shared block.
 *  2. Bytes buffered or in flight, over all inodes, stay at most
 *     bytes_max (a write waits for room), and each in-flight extent is at
 *     most chunk_bytes plus one block.
 *  3. The first error of an inode's proposals is kept until wb_sync
 *     returns it; until then every wb_write to the inode fails with it,
 *     and so do its extents already taken, without being proposed.
 *     An error is never dropped: it reaches the next fsync or close.
 *
 * All functions are thread-safe. */
#ifndef PAXFS_FS_WRITE_BEHIND_H
#define PAXFS_FS_WRITE_BEHIND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* An extent to propose: bytes for [offset, offset + len) of ino, written
 * by uid/gid (the op's caller). Borrowed for the call. */
struct wb_extent_view {
    uint64_t ino;
    uint64_t offset;
    const uint8_t *data;
    size_t len;
    uint32_t uid, gid;
};

/* Proposes one extent and waits until it is applied here. Returns 0 or a
 * negative errno. Called from the module's worker threads. */
typedef int (*wb_propose_fn)(void *ctx, const struct wb_extent_view *e);

struct wb_config {
    uint32_t block_size;  /* the cluster's block size: where extents are cut */
    size_t chunk_bytes;   /* a buffered extent this long is submitted */
    size_t bytes_max;     /* buffered + in flight, all inodes (invariant 2) */
    unsigned delay_ms;    /* a buffered extent this old is submitted */
    unsigned threads;     /* workers: in-flight proposals at a time */
    wb_propose_fn propose;
    void *ctx;
};

struct wb;

/* Starts the workers. NULL if a thread or memory could not be had. */
struct wb *wb_open(const struct wb_config *cfg);
/* Proposes everything buffered, waits for every proposal, stops the
 * workers. Errors not yet reported are logged. */
void wb_close(struct wb *w);

/* Takes len (> 0) bytes at offset for ino: copied, so data is borrowed.
 * Returns 0, or the inode's kept error (invariant 3), without taking the
 * bytes. May wait for room (invariant 2) or for an overlapping extent. */
int wb_write(struct wb *w, uint64_t ino, uint64_t offset, const void *data, size_t len,
             uint32_t uid, uint32_t gid);
/* Submits ino's buffered extent and waits until nothing of ino is in
 * flight; the inode's error stays kept. For requests that must see this
 * host's writes (getattr, read, setattr, an append, ...). Returns the kept
 * error or 0. Cheap when ino has nothing pending. */
int wb_drain(struct wb *w, uint64_t ino);
/* wb_drain, and then returns and forgets the kept error: fsync and flush. */
int wb_sync(struct wb *w, uint64_t ino);

/* Proposes e together with the caller's own request, in one log entry where
 * possible, and returns the request's result; sets *write_rc to e's: 0 or
 * a negative errno. e is NULL when there is nothing to carry, or when the
 * file's earlier proposal failed (invariant 3: the buffered extent then
 * fails unproposed): then the request alone. Called on wb_carry's caller's
 * thread. */
typedef int64_t (*wb_carry_fn)(void *arg, const struct wb_extent_view *e, int *write_rc);
/* wb_drain for a request that changes ino and must follow this host's
 * writes of it (a setattr): waits until none of ino's extents is in flight,
 * then hands the buffered extent, if any, to fn, which proposes it with the
 * request: one consensus round where wb_drain and the request take two.
 * The extent counts as in flight until fn returns (invariants 1 and 2) and
 * its failure is kept (invariant 3). Returns fn's result. */
int64_t wb_carry(struct wb *w, uint64_t ino, wb_carry_fn fn, void *arg);
/* Whether ino has bytes buffered or in flight, or a kept error. A hint:
 * it may change as soon as it returns. */
bool wb_pending(struct wb *w, uint64_t ino);

struct wb_stats {
    uint64_t writes;      /* wb_write calls that took bytes */
    uint64_t proposals;   /* extents proposed */
    uint64_t errors;      /* extents that failed: proposed, or failed unproposed after an
                             earlier error of their file (invariant 3) */
    uint64_t bytes_pending; /* buffered + in flight now */
};
void wb_stats(struct wb *w, struct wb_stats *out);

#endif
