/* fsm — the replicated filesystem state machine.
 *
 * The whole namespace of the shared directory: inodes, directory entries,
 * symlink targets, extended attributes and, for regular files, block maps
 * (block index → content-addressed block in the store, fs/store.h). Every
 * mutation arrives as an op record (struct fsm_op, encoded by fsm_op_encode)
 * that was chosen by consensus, and fsm_apply applies it. fsm_apply is a pure
 * function of (state, op): inode numbers come from a replicated counter,
 * timestamps and the caller's credentials travel in the op, nothing reads a
 * clock, a random source or an iteration order that could differ between
 * replicas. Every replica applying the same ops in the same order holds the
 * same state (fsm_digest), which is what fsck compares.
 *
 * Reads (lookup, getattr, readdir, read, readlink, xattrs, statfs) are
 * served from this replica's state, concurrently with each other; fsm_apply
 * excludes them while it runs (a reader-writer lock inside).
 *
 * Inode life cycle:
 *
 *   CREATE/MKNOD/MKDIR/SYMLINK ──▶ LIVE (nlink >= 1) ──LINK/UNLINK/RENAME──▶ LIVE
 *                                    │ the last name goes (nlink 0)
 *                                    ▼
 *                                  ORPHAN: kept, data and all, because some
 *                                  host may hold it open; every node names the
 *                                  orphans it does not hold open in a
 *                                  RELEASE op, and once every node has
 *                                  released an orphan it is freed (blocks
 *                                  unreferenced, number retired for good:
 *                                  numbers are never reused).
 *
 * Open handles and the kernel's lookup counts are local: they never enter
 * this state.
 *
 * Errors are negative errnos, computed at apply time identically on every
 * replica: -ENOENT, -EEXIST, -ENOTEMPTY, -ENOTDIR, -EISDIR, -ENAMETOOLONG,
 * -EINVAL (e.g. a directory moved into its own subtree), -EXDEV never
 * (one filesystem), -EPERM, -EFBIG, -ENOSPC (inode numbers exhausted),
 * -ENODATA (no such xattr), -ERANGE. */
#ifndef PAXFS_FS_FSM_H
#define PAXFS_FS_FSM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "base/buf.h"

struct store;
struct store_name;

#define FSM_ROOT_INO 1
#define FSM_NAME_MAX 255
#define FSM_SYMLINK_MAX 4095
#define FSM_XATTR_NAME_MAX 255
#define FSM_XATTR_VALUE_MAX 65536
#define FSM_FILE_SIZE_MAX (1ull << 50) /* 1 PiB */
#define FSM_NODES_MAX 16
/* Largest data of one op record (WRITE bytes, RELEASE list). */
#define FSM_DATA_MAX (64u * 1024u * 1024u)

struct fsm_attr {
    uint64_t ino;
    uint64_t gen;     /* 1: numbers are never reused (a u64 counter), so the
                         generation never has to change */
    uint32_t mode;    /* type and permission bits, as st_mode */
    uint32_t nlink;
    uint32_t uid, gid;
    uint64_t rdev;
    uint64_t size;    /* directories: the number of entries, "." and ".." not counted */
    uint64_t blocks;  /* 512-byte units actually stored (holes cost nothing) */
    int64_t atime_ns, mtime_ns, ctime_ns;
};

enum fsm_op_type {
    FSM_OP_MKNOD = 1,    /* parent, name, mode (any type but dir/symlink; type 0 = regular), rdev, umask applied by the proposer */
    FSM_OP_MKDIR,        /* parent, name, mode */
    FSM_OP_SYMLINK,      /* parent, name, data = target */
    FSM_OP_LINK,         /* ino, new_parent, new_name */
    FSM_OP_UNLINK,       /* parent, name */
    FSM_OP_RMDIR,        /* parent, name */
    FSM_OP_RENAME,       /* parent, name, new_parent, new_name, flags: RENAME_NOREPLACE | RENAME_EXCHANGE */
    FSM_OP_SETATTR,      /* ino, flags = FSM_SET_* mask, attr fields */
    FSM_OP_WRITE,        /* ino, offset, data; flags FSM_WRITE_APPEND: offset = size at apply */
    FSM_OP_FALLOCATE,    /* ino, flags = mode (FALLOC_FL_*), offset, length */
    FSM_OP_SETXATTR,     /* ino, name, data = value, flags = XATTR_CREATE | XATTR_REPLACE;
                            -ENOSPC past 64 KiB of names or 1 MiB of values per inode */
    FSM_OP_REMOVEXATTR,  /* ino, name */
    FSM_OP_RELEASE,      /* node = releasing node, data = u64 orphan inode numbers it does not hold open */
    FSM_OP_TYPE_MAX = FSM_OP_RELEASE,
};

/* SETATTR's mask. */
#define FSM_SET_MODE (1u << 0)
#define FSM_SET_UID (1u << 1)
#define FSM_SET_GID (1u << 2)
#define FSM_SET_SIZE (1u << 3)
#define FSM_SET_ATIME (1u << 4)
#define FSM_SET_MTIME (1u << 5)
#define FSM_SET_CTIME (1u << 6)
#define FSM_SET_ATIME_NOW (1u << 7) /* the op's now_ns */
#define FSM_SET_MTIME_NOW (1u << 8)

#define FSM_WRITE_APPEND 1u
/* WRITE of whole blocks already encoded by the proposer (store_encode), so
 * that replicas store them without hashing or compressing them again
 * (store_put_encoded_trusted). offset is a multiple of the block size and
 * data is a list of entries, one per block from offset on:
 *     name[32]  u32 file_len (little-endian)  file[file_len]
 * where each file decodes to exactly one block size of plain bytes, or
 * file_len is 0 and the name is STORE_NAME_NONE for a block of zeros (a
 * hole). The result is the plain bytes written. Not with APPEND; a list
 * that does not parse is -EINVAL at apply. Entry and block checks happen at
 * apply (they need the block size). */
#define FSM_WRITE_BLOCKS 2u
#define FSM_WRITE_BLOCK_ENTRY_HDR 36u
/* WRITE that carries a setattr, applied right after the bytes: then_set
 * (a SETATTR mask, not 0) and attr, as a SETATTR op of the same node, uid,
 * gid and now_ns would. A setattr of a file with writes of this host still
 * buffered sends both in one log entry instead of one round for each. Not
 * with APPEND. The setattr is applied whether the write failed or not, as
 * it would be alone; the result holds both parts' (fsm_carried_*). */
#define FSM_WRITE_SETATTR 4u

/* A decoded op. Strings and data are borrowed from the encoded bytes
 * (decode) or from the caller (encode); strings are NOT NUL-terminated. */
struct fsm_op {
    uint8_t type;
    uint32_t node;       /* proposing node */
    uint32_t uid, gid;   /* the calling process's credentials */
    int64_t now_ns;      /* the proposer's wall clock: every timestamp this op sets */
    uint64_t ino;
    uint64_t parent;
    uint64_t new_parent;
    const char *name;
    uint32_t name_len;
    const char *new_name;
    uint32_t new_name_len;
    uint32_t mode;
    uint64_t rdev;
    uint32_t flags;
    uint64_t offset;
    uint64_t length;
    struct fsm_attr attr; /* SETATTR: mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns */
    uint32_t then_set;    /* WRITE with FSM_WRITE_SETATTR: the carried setattr's mask */
    const uint8_t *data;
    uint32_t data_len;
};

/* The result of a WRITE with FSM_WRITE_SETATTR, never negative: each
 * part's 0 or errno, (write errno << 16) | setattr errno. A negative result
 * (an op that does not decode) is both parts'. */
static inline int64_t fsm_carried_result(int64_t write_rc, int64_t setattr_rc)
{
    return ((write_rc < 0 ? -write_rc : 0) << 16) | (setattr_rc < 0 ? -setattr_rc : 0);
}
static inline int fsm_carried_write_rc(int64_t result)
{
    return result < 0 ? (int)result : -(int)((result >> 16) & 0xffff);
}
static inline int fsm_carried_setattr_rc(int64_t result)
{
    return result < 0 ? (int)result : -(int)(result & 0xffff);
}

/* Appends the op's encoding (versioned, little-endian). -ENAMETOOLONG for
 * a directory-entry name over FSM_NAME_MAX (so a proposer can hand that
 * straight to the kernel); -EINVAL if another field is out of bounds: an
 * unknown type, an empty name or one containing '/' or NUL or equal to "."
 * or "..", data over FSM_DATA_MAX, a symlink target empty, over
 * FSM_SYMLINK_MAX or containing NUL, an xattr name or value over its limit,
 * a RELEASE list that is not whole u64s. Nothing is appended on error. */
int fsm_op_encode(const struct fsm_op *op, struct buf *out);
/* Decodes exactly len bytes; -EBADMSG on anything malformed, including
 * every field that fsm_op_encode would refuse. The result borrows from p;
 * fields the op type does not carry are zero. */
int fsm_op_decode(const uint8_t *p, size_t len, struct fsm_op *out);

/* What one apply changed, for the kernel caches of the other hosts:
 * the inodes whose attributes or data changed and the (parent, name)
 * entries that appeared, changed or went away. Bounded: when more changed
 * than fits, overflow is set and callers invalidate conservatively. */
#define FSM_CHANGES_MAX 8
struct fsm_changes {
    uint32_t n_inodes;
    uint64_t inodes[FSM_CHANGES_MAX];
    uint32_t n_entries;
    struct {
        uint64_t parent;
        uint64_t ino;     /* 0 if the name no longer exists */
        char name[FSM_NAME_MAX + 1];
    } entries[4];
    bool overflow;
};

struct fsm;

/* A new empty filesystem (just the root directory, owned by root, 0755)
 * whose file data lives in store (borrowed for the life of the fsm).
 * n_nodes is the cluster size (for orphan release). */
int fsm_new(struct store *store, uint32_t n_nodes, struct fsm **out);
void fsm_free(struct fsm *f);

/* Applies one op record. Returns the op's result: a new inode number for
 * MKNOD/MKDIR/SYMLINK, 0 for most others, the bytes written for WRITE, or a
 * negative errno. A record that does not decode is -EBADMSG and changes
 * nothing. changes may be NULL. */
int64_t fsm_apply(struct fsm *f, const uint8_t *data, size_t len, struct fsm_changes *changes);

/* -ENOENT, -ENOTDIR, -ENAMETOOLONG (name over FSM_NAME_MAX). "." and ".."
 * resolve to the directory and its parent. */
int fsm_lookup(struct fsm *f, uint64_t parent, const char *name, struct fsm_attr *out);
int fsm_getattr(struct fsm *f, uint64_t ino, struct fsm_attr *out);
/* Lists entries after `cookie` (0: from the start; "." and ".." included),
 * calling fn with each one's name and attributes (as fsm_getattr gives
 * them) until it returns non-zero; each entry's cookie resumes after it.
 * Cookies stay valid while entries come and go: "." is 1, ".." is 2 and
 * every entry gets the next per-directory number when it is created (a
 * renamed entry gets a new one), so a walk resumed from any cookie lists
 * every entry that existed throughout exactly once. Entries come in cookie
 * order. An entry for which fn returned non-zero counts as not listed: the
 * caller resumes from the cookie of the last entry it kept. fn runs under
 * the fsm's read lock and must not call back into the fsm. 0, or -ENOENT,
 * -ENOTDIR. */
typedef int (*fsm_dirent_fn)(void *ctx, const char *name, const struct fsm_attr *a,
                             uint64_t cookie);
int fsm_readdir(struct fsm *f, uint64_t ino, uint64_t cookie, fsm_dirent_fn fn, void *ctx);
/* Reads up to len bytes at off; holes read as zeros; *got may be < len at
 * the end of the file. -EIO if a block is missing or corrupt on this
 * replica (never returns wrong bytes). */
int fsm_read(struct fsm *f, uint64_t ino, uint64_t off, size_t len, void *buf, size_t *got);
/* Copies the target, and a NUL after it when cap > its length; *len = the
 * target's length. -EINVAL if not a symlink, -ERANGE if cap < length. */
int fsm_readlink(struct fsm *f, uint64_t ino, char *buf, size_t cap, size_t *len);
/* -ENODATA if absent; -ERANGE if cap is too small (cap 0 asks the size). */
int fsm_getxattr(struct fsm *f, uint64_t ino, const char *name, void *buf, size_t cap, size_t *len);
int fsm_listxattr(struct fsm *f, uint64_t ino, char *buf, size_t cap, size_t *len);

struct fsm_statfs {
    uint64_t inodes;
    uint64_t bytes_stored; /* plain bytes of all file blocks */
};
void fsm_statfs(struct fsm *f, struct fsm_statfs *out);

/* Orphans (nlink 0, not yet freed) that node (1..n_nodes) has not released
 * yet, in inode order: writes the first min(count, cap) to out and returns
 * the count (which may exceed cap). */
size_t fsm_orphans_held(struct fsm *f, uint32_t node, uint64_t *out, size_t cap);

/* A digest of the whole state, equal on replicas that applied the same ops:
 * the first 8 bytes (little-endian) of a hash (store_hash) over n_nodes,
 * next_ino, every inode's number and per-inode digest (fsm_inode_digests) in
 * inode order, and the orphan list. So two replicas with equal fsm_digest have
 * (but for a 64-bit collision) equal per-inode digests, and two that differ
 * differ in next_ino, the orphans or at least one inode's digest. */
uint64_t fsm_digest(struct fsm *f);

/* ---- snapshots ----
 *
 * The image (fsm_image_encode) is the whole state without the block
 * contents, which it names: a replica that restores it fetches the blocks it
 * lacks separately (fsm_image_blocks lists them). Layout, all little-endian,
 * fixed-width, nothing padded:
 *
 *   "PXIM" u8 version(1) u32 n_nodes u32 block_size u64 next_ino u64 n_inodes
 *   n_inodes × inode, in ascending inode order:
 *     u64 ino u32 mode u32 nlink u32 uid u32 gid i64 atime_ns mtime_ns ctime_ns
 *     u8 flags (bit 0: orphan) [u16 release_mask, orphans only]
 *     u16 n_xattrs × (u8 name_len name  u32 value_len value), sorted by name
 *     directory:  u64 parent u64 next_cookie u32 n × (u64 cookie u64 ino u8 name_len name),
 *                 ascending cookies
 *     regular:    u64 size u32 n × (u64 index name[32] u32 len), ascending indexes
 *     symlink:    u16 target_len target
 *     char/block: u64 rdev
 *     fifo/socket: nothing more
 *   u64 n_orphans × u64 ino (ascending)
 *   u32 CRC32C of every byte before it
 *
 * The format is canonical: an image that restores re-encodes to the same
 * bytes. */

/* Appends an image of the whole state: a versioned, little-endian encoding of
 * n_nodes, block size, next_ino, every inode in inode order (attributes,
 * parent, orphan bit + release mask, xattrs in their sorted order, and per type:
 * directory entries in cookie order with each entry's cookie and the dir's
 * next_cookie; the block map (index, name, len); the symlink target), the orphan
 * list, and a CRC32C (base/crc32c.h) of everything before it as the last 4 bytes.
 * Block contents are not included: blocks are named. Deterministic: two
 * replicas in the same state produce byte-identical images. 0 or -errno.
 *
 * In two steps, so that applies need not wait for the encoding:
 * fsm_image_begin fixes the state the image shows (quick: it copies the
 * inode table's pointers, not the inodes); fsm_image_finish, on any thread
 * and while applies go on, encodes that state. Until finish, an apply saves
 * the record of each inode it changes first (copy-on-write per inode). One
 * image at a time: begin is -EBUSY while one is in the making, finish
 * -EINVAL without one. fsm_image_encode is both steps at once. */
int fsm_image_begin(struct fsm *f);
int fsm_image_finish(struct fsm *f, struct buf *out);
int fsm_image_encode(struct fsm *f, struct buf *out);
/* Tests only (NULL otherwise): called by fsm_image_finish, with no lock
 * held, each time it has encoded another batch of inodes (`encoded` so
 * far), so that a test can hold the encoder at a chosen point. */
extern void (*fsm_test_image_batch_hook)(uint64_t encoded);

/* Replaces f's whole state with the image's. First decodes into a new state,
 * checking every length, count, type, name rule (fsm_op_encode's rules), that
 * entries name existing inodes, that ino numbers are < next_ino, the CRC, and
 * that n_nodes and the block size equal f's (-EINVAL if they differ). Any
 * malformed image is -EBADMSG and f is unchanged. Then, under the write lock,
 * takes one store_ref per mapped block of the new state (blocks need not be
 * present on disk), swaps the state in, and store_unrefs the old state's
 * mapped blocks.
 *
 * Besides the format, the decoder refuses what apply relies on and never
 * re-checks (a state that would later trip an assertion): the root is a
 * directory that is its own parent and no entry names it; every non-orphan
 * directory is named by exactly one entry, in the directory its parent
 * names, and is reachable from the root; orphans have nlink 0 and no name,
 * orphan directories no entries; a non-directory has at least as many links
 * as names; entry names are unique in their directory; the orphan list is
 * exactly the inodes marked orphan. Accounting that apply does not rely on
 * (link counts too high, a block past the size, an unnamed non-orphan) is
 * accepted, and fsm_check reports it. */
int fsm_image_restore(struct fsm *f, const uint8_t *p, size_t len);

/* What a restore changed, for caches of the old state (the kernel's): once
 * per inode of the old state that is gone or whose attributes or block map
 * differ, fn(ctx, ino, NULL, 0); once per entry of the old state that is
 * gone or names another inode now, fn(ctx, parent, name, name_len). Names
 * that only the new state has are not reported (nothing caches them). */
typedef void (*fsm_restore_fn)(void *ctx, uint64_t ino, const char *name, size_t name_len);
/* fsm_image_restore, calling fn (under the write lock: it must not call
 * into the fsm) with every change, after the swap. */
int fsm_image_restore_changes(struct fsm *f, const uint8_t *p, size_t len, fsm_restore_fn fn,
                              void *ctx);

/* Reads an image's header without building it: n_nodes, block size. Checks
 * the magic, version, header fields and the CRC; -EBADMSG. */
int fsm_image_info(const uint8_t *p, size_t len, uint32_t *n_nodes, uint32_t *block_size);

/* Calls fn once per mapped block of the image (per mapping: a block mapped
 * twice is listed twice), in image order, without building a state; a non-zero
 * return of fn stops and is returned. -EBADMSG on a malformed image (fn may have
 * been called for a prefix). Checks the CRC and each inode's format, not the
 * cross-references between inodes (fsm_image_restore does). */
typedef int (*fsm_block_fn)(void *ctx, uint64_t ino, uint64_t index,
                            const struct store_name *name, uint32_t len);
int fsm_image_blocks(const uint8_t *p, size_t len, fsm_block_fn fn, void *ctx);
/* The same, but only blocks of files that still have a name: an orphan's
 * blocks serve only handles open on the hosts that have not released it,
 * and a replica receiving a snapshot holds none (it fetches one on read if
 * it ever needs it). What snapshot transfer ships. */
int fsm_image_linked_blocks(const uint8_t *p, size_t len, fsm_block_fn fn, void *ctx);
/* The same over the live state (under the read lock; fn must not call into the fsm). */
int fsm_blocks(struct fsm *f, fsm_block_fn fn, void *ctx);
/* ... and only files that still have a name (as fsm_image_linked_blocks). */
int fsm_linked_blocks(struct fsm *f, fsm_block_fn fn, void *ctx);

/* Per-inode digests, in inode order: the first 16 bytes of the hash
 * (store_hash) of the inode's record in the image (attributes, parent,
 * orphan state, xattrs, entries with cookies, block map, target), so equal on replicas
 * whose images agree on that inode. Computed under the read lock; fn is
 * called after it is released (it may call into the fsm). fn non-zero
 * stops and is returned. -ENOMEM/-EIO if OpenSSL fails. */
#define FSM_INODE_DIGEST_BYTES 16
typedef int (*fsm_inode_digest_fn)(void *ctx, uint64_t ino, const uint8_t digest[FSM_INODE_DIGEST_BYTES]);
int fsm_inode_digests(struct fsm *f, fsm_inode_digest_fn fn, void *ctx);

/* Checks the state's invariants (the list at the top of fsm.c): every live
 * directory reaches the root through ->parent with no cycle; every entry names
 * a live inode; nlink of each inode equals the number of entries naming it
 * (+2+subdirs rules for directories as fsm.c keeps them); dir size = entry
 * count; no inode with nlink 0 that is not in the orphan list and vice versa;
 * no inode unreachable from the root that is not an orphan; block maps sorted,
 * within size, lengths within the block size, the bytes_stored/blocks
 * accounting right; each mapped block's store_refcount >= its number of
 * mappings. Calls fn (may be NULL) once per finding with the inode (0 for
 * the whole state's accounting) and a short one-line description; returns
 * the number of findings (0 = clean).
 * Read lock; fn must not call into the fsm. */
typedef void (*fsm_finding_fn)(void *ctx, uint64_t ino, const char *what);
size_t fsm_check(struct fsm *f, fsm_finding_fn fn, void *ctx);

/* Test hook for fsck's divergence test: changes inode ino's mtime by +1 ns
 * directly, outside the log, on this replica only. -ENOENT. */
int fsm_test_diverge(struct fsm *f, uint64_t ino);

#endif
