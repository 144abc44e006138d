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
    const uint8_t *data;
    uint32_t data_len;
};

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
 * calling fn until it returns non-zero; each entry's cookie resumes after
 * it. Cookies stay valid while entries come and go: "." is 1, ".." is 2 and
 * every entry gets the next per-directory number when it is created (a
 * renamed entry gets a new one), so a walk resumed from any cookie lists
 * every entry that existed throughout exactly once. Entries come in cookie
 * order. An entry for which fn returned non-zero counts as not listed: the
 * caller resumes from the cookie of the last entry it kept. fn runs under
 * the fsm's read lock and must not call back into the fsm. 0, or -ENOENT,
 * -ENOTDIR. */
typedef int (*fsm_dirent_fn)(void *ctx, const char *name, uint64_t ino, uint32_t mode,
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

/* A digest of the whole state, equal on replicas that applied the same ops. */
uint64_t fsm_digest(struct fsm *f);

#endif
