/* The block store: a replica's file data as content-addressed blocks.
 *
 * A block is at most block_size plain bytes (a cluster setting recorded in
 * ROOT/FORMAT at the first open). Callers split a file into blocks at aligned
 * offsets; the last block may be shorter, and a hole is an absent block
 * (mem_is_zero() of base/buf.h tells a caller which blocks to skip,
 * STORE_NAME_NONE is the name a block map uses for "no block"). A block is
 * named by the hash of its plain bytes (SHA-512/256, store_hash()) and
 * stored zstd-compressed, or raw where compression saves less than 1/64 of
 * its size.
 *
 * On disk, under ROOT:
 *
 *   FORMAT                 "paxfs-store\nformat=2\nblock_size=N\n"
 *   LOCK                   flock()ed by the one store_open() that owns ROOT
 *   blocks/ab/abcd...(64)  one block file per name, sharded by its first byte
 *   tmp/                   temp files of puts in flight; emptied at open
 *   corrupt/               block files that failed verification, moved aside
 *
 * A block file is a 20-byte header then the payload (all little-endian):
 *
 *   0  magic "PXBK"        8  plain_len  u32 (1 .. STORE_BLOCK_SIZE_MAX)
 *   4  version u8 (1)     12  stored_len u32 (raw: == plain_len,
 *   5  encoding u8                            zstd: < plain_len)
 *      (0 raw, 1 zstd)    16  CRC32C of bytes 0..15
 *   6  flags u16 (0)      20  payload: stored_len bytes, file ends there
 *
 * Invariants:
 *  1. A file appears under its name only complete: it is written to tmp/,
 *     fdatasync()ed, renamed into its shard and the shard dir fsync()ed.
 *     A file under a name is immutable; only GC and quarantine remove it.
 *     With defer_sync (below) the two syncs are skipped: after a crash a
 *     name may then hold an empty, short or torn file, which the dedup
 *     check of the next put of that block detects (header CRC and exact
 *     size) and rewrites, and which a read never serves (invariant 2).
 *  2. Nothing reaches a caller (data, the cache, a peer) unless its header,
 *     lengths, zstd frame and hash all check. A block file that fails is
 *     -EBADMSG and is moved to corrupt/, so that the caller's repair (fetch
 *     from a peer, then store_put/store_put_encoded) can write it afresh:
 *     dedup trusts the existence of a file, never its bytes.
 *  3. Reference counts live only in memory: the filesystem state machine
 *     re-derives them from its block maps at start-up (store_ref for every
 *     block it references). They are never persisted.
 *  4. GC unlinks a block file only while holding the lock that a put's
 *     dedup-lookup-and-ref and write-and-ref also hold, and only if the
 *     name has no reference and no put writing it. A block that a put has
 *     referenced is therefore never unlinked, and a crash mid-GC loses only
 *     unreferenced blocks.
 *
 * All functions are thread-safe (FUSE calls them from many threads), except
 * store_open/store_close.
 *
 * Fault-injection points (base/fault.h) on the put path: "store.write",
 * "store.fsync" (the temp file), "store.rename", "store.fsync_dir". */
#ifndef PAXFS_FS_STORE_H
#define PAXFS_FS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Chosen by tools/bench_store.c (see the comment in store.c near the
 * defaults for the measurements and the reasoning). */
#define STORE_BLOCK_SIZE_DEFAULT (256u * 1024u)
#define STORE_ZSTD_LEVEL_DEFAULT 1
#define STORE_CACHE_BYTES_DEFAULT ((size_t)64 * 1024 * 1024)
/* A block size is a power of two in [MIN, MAX]. */
#define STORE_BLOCK_SIZE_MIN (4u * 1024u)
#define STORE_BLOCK_SIZE_MAX (16u * 1024u * 1024u)

/* 2: blocks are named by SHA-512/256 (1 named them by SHA-256). */
#define STORE_FORMAT_VERSION 2
#define STORE_HDR_LEN 20
#define STORE_NAME_LEN 32
#define STORE_NAME_HEX_LEN 64

struct store_name {
    uint8_t b[STORE_NAME_LEN];
};

/* "No block": all zero bytes, which no hash output is in practice. */
#define STORE_NAME_NONE ((struct store_name){{0}})

bool store_name_is_none(const struct store_name *n);
bool store_name_eq(const struct store_name *a, const struct store_name *b);
/* Lowercase hex, NUL-terminated. */
void store_name_hex(const struct store_name *n, char out[STORE_NAME_HEX_LEN + 1]);
/* Parses exactly 64 lowercase hex digits (the form store_name_hex writes and
 * block files are named by); anything else is -EINVAL. */
int store_name_parse(const char *hex, size_t len, struct store_name *out);
/* paxfs's one hash, SHA-512/256 (FIPS 180-4): it names blocks, and fsm's
 * state digests use it too. Chosen over SHA-256 by speed: this CPU has no
 * SHA extensions, and SHA-512's 64-bit rounds hash 1.8-2.2x faster on a
 * 64-bit core (openssl speed, 256 KiB: ~550 against ~300 MB/s), which every
 * block put, read, transfer and fsck pays; with 32-byte output it is as
 * strong, and `openssl dgst -sha512-256` checks a block by hand. Fetched
 * once; NULL if this OpenSSL lacks it. */
struct evp_md_st;
const struct evp_md_st *store_hash(void);
/* The hash of p[0..n). -ENOMEM or -EIO if OpenSSL fails. */
int store_name_of(const void *p, size_t n, struct store_name *out);


/* ---- the block-file codec (pure; the decoder is a fuzz target) ---- */

enum store_encoding { STORE_ENC_RAW = 0, STORE_ENC_ZSTD = 1 };

struct store_block_hdr {
    enum store_encoding encoding;
    uint32_t plain_len;
    uint32_t stored_len;
};

/* Largest block file for a block size: a header plus the plain bytes (a
 * block never stores zstd bigger than raw). */
static inline size_t store_file_max(uint32_t block_size)
{
    return STORE_HDR_LEN + (size_t)block_size;
}

/* Checks the header of a whole block file file[0..len): CRC, magic,
 * version, encoding, flags, lengths, and that the file is exactly
 * header + stored_len bytes. -EBADMSG if anything is off. */
int store_block_hdr_decode(const void *file, size_t len, struct store_block_hdr *out);

/* Decodes a whole block file into out[0..cap): header, then the zstd frame
 * (exactly one frame of exactly plain_len bytes) or the raw payload, then,
 * if name is not NULL, the hash of the plain bytes against name.
 * -EBADMSG for any bad byte, -ENOBUFS if plain_len > cap. On error, out's
 * bytes are unspecified and *out_len is not written. Allocates a zstd
 * context per call: for tools and the fuzzer; the store pools its own. */
int store_block_decode(const void *file, size_t len, const struct store_name *name,
                       void *out, size_t cap, size_t *out_len);

/* ---- the store ---- */

struct store_config {
    const char *root;     /* created if missing; its parent must exist */
    uint32_t block_size;  /* 0: the one in ROOT/FORMAT, or the default for a
                             new store; else must match ROOT/FORMAT */
    int zstd_level;       /* a per-node setting, not recorded on disk (any
                             level reads any block); 0 is zstd's default */
    size_t cache_bytes;   /* LRU of verified plain blocks; 0 disables it */
    uint32_t node_id;     /* for log lines only */
    bool defer_sync;      /* skip each put's fdatasync and directory fsync
                             (see below); false, the default, keeps them */
    size_t gc_candidates_max; /* names whose count fell to zero, kept for the
                             next store_gc (32 bytes each); past it that GC
                             walks every block file. 0: the default */
};

#define STORE_GC_CANDIDATES_DEFAULT 262144 /* 8 MiB of names */

/* defer_sync is for a caller that can write every block again after a
 * crash, which is the replicated state machine's case: a block is put only
 * when an op is applied, the op's bytes are already durable in this
 * replica's WAL (and on a majority) before apply runs, and at start-up the
 * replica re-applies its whole log, so every put is repeated. A block file
 * that the crash left empty, short or with a bad header fails the dedup
 * check of that repeated put and is written afresh; one whose header and
 * size survived but whose payload did not (the file system wrote the first
 * page and the size but not the rest) is caught by the hash check of
 * every read and repaired from a peer like any other corrupt block. What
 * the caller gives up is only this: before it drops the means of rewriting
 * (truncating the WAL after a snapshot) it must call store_sync. */

/* Fills the defaults for root. */
void store_config_init(struct store_config *cfg, const char *root);

struct store_stats {
    uint64_t puts;             /* successful store_put + store_put_encoded */
    uint64_t dedup_hits;       /* of those, the block already existed */
    uint64_t writes;           /* of those, a block file was written */
    uint64_t bytes_plain;      /* plain bytes of the blocks written */
    uint64_t bytes_stored;     /* file bytes (header + payload) written */
    uint64_t gets;             /* store_get calls that returned data */
    uint64_t cache_hits;
    uint64_t cache_misses;
    uint64_t corrupt_detected; /* block files that failed verification */
    uint64_t gc_freed;         /* block files unlinked by store_gc */
    uint64_t repaired;         /* missing or corrupt blocks store_get fetched */
};

struct store;

/* Opens (creating if needed) the store at cfg->root: takes ROOT/LOCK
 * (-EBUSY if another store_open holds it, in this process or another),
 * creates the directories, writes or checks ROOT/FORMAT and removes every
 * file left in ROOT/tmp by a crash. A FORMAT of another format version is
 * -EPROTO (this code does not know how to read it), a block size other than
 * a non-zero cfg->block_size is -EINVAL (the block maps of the replicated
 * state were cut at the recorded size), an unreadable FORMAT is -EBADMSG.
 * Bad settings are -EINVAL. *out is written only on success. */
int store_open(const struct store_config *cfg, struct store **out);

/* What store_open would say of root's format without touching anything: 0
 * if root or its FORMAT does not exist yet or fits block_size (0: any);
 * -EPROTO for another format version, -EINVAL for another block size,
 * -EBADMSG for an unreadable FORMAT. For a caller that checks its input
 * before it starts. */
int store_format_check(const char *root, uint32_t block_size);
/* A one-line message for an error of store_open or store_format_check on
 * root, naming what is wrong and what to do. */
void store_open_error(int rc, const char *root, char *out, size_t len);

/* No call may be in flight. NULL is a no-op. */
void store_close(struct store *s);

uint32_t store_block_size(const struct store *s);

/* Stores data[0..len) (1 <= len <= block_size) as a block, writes its name
 * to *out_name and adds exactly one reference to it, which the caller keeps
 * (in a block map) or drops with store_unref. If the block is already on
 * disk this costs reading its header, not a write (a dedup hit); a file
 * whose header or size is wrong is moved aside and written afresh. On
 * return 0 the block is durable under its name (with defer_sync: once
 * store_sync returns). On error no reference is added and no partial
 * file is visible under the name. -EINVAL for a bad len, -EIO/-ENOSPC/...
 * from the disk. The bytes stay in the cache for store_get_to_rewrite. */
int store_put(struct store *s, const void *data, size_t len, struct store_name *out_name);

/* Stores a block file file[0..len) received from a peer (as store_get_encoded
 * produced it) under name, adding one reference, like store_put. When the
 * block is new, the bytes are fully verified first (header, decompression,
 * hash against name; -EBADMSG if they fail): verifying costs less than
 * the fsync that follows, and a bad file must never be stored under a name,
 * since dedup trusts existence. On a dedup hit the bytes are not used and not
 * verified. The file is stored as received, not re-encoded. */
int store_put_encoded(struct store *s, const struct store_name *name,
                      const void *file, size_t len);

/* Like store_put_encoded, but a new block's payload is not decompressed or
 * hashed: only its header and length are checked. For block files made by
 * store_encode on the node that proposed them and carried here inside an
 * op chosen by consensus: the bytes crossed only mutually authenticated
 * TLS (an AEAD tag on every record) and this replica's WAL (a CRC32C on
 * every record), so what arrives is what the proposer encoded, and hashing
 * it again on every replica would triple the write path's dominant cost
 * (the hash). The read path still verifies everything (invariant 2). */
int store_put_encoded_trusted(struct store *s, const struct store_name *name,
                              const void *file, size_t len);

/* Encodes data[0..len) (1 <= len <= block_size) as a block file, exactly as
 * store_put would store it, into out[0..cap) (cap >=
 * store_file_max(block_size), else -ENOBUFS) and its name into *out_name;
 * stores nothing. -EINVAL for a bad len. */
int store_encode(struct store *s, const void *data, size_t len, struct store_name *out_name,
                 void *out, size_t cap, size_t *out_len);

/* Where store_get turns for a block that is missing or fails verification
 * (a peer, fs/transfer.h): fn fetches it and stores it under its name
 * (store_put_encoded, which verifies it, then store_unref of the reference
 * that put added) and returns 0, after which store_get reads it again and
 * counts it in `repaired`. Set once, before concurrent use. */
typedef int (*store_repair_fn)(void *ctx, const struct store_name *name);
void store_set_repair(struct store *s, store_repair_fn fn, void *ctx);

/* Reads the block called name into out[0..cap) and its length into *len.
 * -ENOENT: no such block. -EBADMSG: the file failed verification (it is
 * moved to ROOT/corrupt/; a second get returns -ENOENT). Both mean "fetch it
 * from a peer", which store_get does itself when a repair source is set.
 * -ENOBUFS if the block is longer than cap. Served from the LRU cache when
 * it holds the block as read from its file and verified. */
int store_get(struct store *s, const struct store_name *name, void *out, size_t cap,
              size_t *len);
/* Like store_get, for a caller that builds a new block from this one (a
 * write smaller than a block): may also serve the bytes a recent store_put
 * of this block hashed and wrote, without reading its file, which saves a
 * decode and a hash per small write. Those bytes are right for the name
 * whatever became of the file since; store_get still reads and verifies
 * the file the first time. */
int store_get_to_rewrite(struct store *s, const struct store_name *name, void *out, size_t cap,
                         size_t *len);

/* Reads the block file of name as stored (header + payload) for shipping to
 * a peer, after verifying it exactly as store_get does (same errors, same
 * quarantine). cap >= store_file_max(block_size) always suffices. */
int store_get_encoded(struct store *s, const struct store_name *name, void *out,
                      size_t cap, size_t *len);

/* Reads the block file of name as stored, checking only its header and
 * length, not its payload: for shipping to a peer that verifies everything
 * on arrival (store_put_encoded), so the hash is computed once per transfer,
 * not twice. Never use it to return data. -ENOENT, -EBADMSG (bad header or
 * size), -ENOBUFS. */
int store_read_file(struct store *s, const struct store_name *name, void *out, size_t cap,
                    size_t *len);

/* Verifies the block file of name from disk, bypassing the cache: 0,
 * -ENOENT or -EBADMSG. Reports only: moves nothing (for fsck). */
int store_verify(struct store *s, const struct store_name *name);

/* 1 if a block file exists under name, 0 if not, or a negative errno. */
int store_has(struct store *s, const struct store_name *name);

/* Calls fn for every block file on disk (in no particular order); a non-zero
 * return from fn stops the walk and is returned. Files that are not named by
 * a well-formed name in their right shard are skipped. Blocks put or
 * collected during the walk may or may not be listed. */
typedef int (*store_list_fn)(void *ctx, const struct store_name *name);
int store_list(struct store *s, store_list_fn fn, void *ctx);

/* Reference counts (in memory only, see invariant 3). store_ref counts; it
 * does not check that the block exists (at start-up the state machine may
 * reference blocks that must still be fetched): a caller that needs the
 * block present uses store_put. store_unref of a name with no reference is
 * -ENOENT and changes nothing. */
void store_ref(struct store *s, const struct store_name *name);
int store_unref(struct store *s, const struct store_name *name);
uint64_t store_refcount(struct store *s, const struct store_name *name);

/* Unlinks every block file on disk whose reference count is 0 (including
 * names never referenced since open) and that no put is writing, and drops
 * them from the cache; *freed (may be NULL) gets the count. Call it only
 * after the state machine has re-referenced every block it uses: before
 * that, every block is unreferenced and would go. Concurrent puts, refs and
 * unrefs are safe (invariant 4). The first GC after open reads every block
 * file's name; later ones only the names whose count fell to zero since
 * (see gc_candidates_max). */
int store_gc(struct store *s, uint64_t *freed);

/* Makes every block file written so far durable: syncfs() of the file
 * system that holds the store (one call for any number of deferred puts).
 * -EIO (or the errno of syncfs) if the disk failed. Fault point
 * "store.sync". */
int store_sync(struct store *s);

void store_get_stats(struct store *s, struct store_stats *out);
/* Empties the LRU cache (benchmarks, tests). */
void store_cache_drop(struct store *s);

#endif
