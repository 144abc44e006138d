/* The write-ahead log: the durable state of a consensus replica.
 *
 * The WAL stores typed opaque records (a type byte and up to
 * record_bytes_max payload bytes); the replica driver decides what goes in
 * them (acceptor promises, accepted values, commit and snapshot markers).
 * Each record gets a log sequence number (LSN): a u64 that starts at 1 and
 * grows by exactly one per record, for the life of the WAL.
 *
 * On disk: a directory of append-only segment files, each named by the LSN
 * of its first record, zero padded: DIR/00000000000000000001.seg. A segment
 * is a 32-byte header then records, back to back:
 *
 *   segment header   magic "PXFSWAL\0" | version u32 | flags u32 (0)
 *                    | first_lsn u64 | reserved u32 (0) | crc32c u32
 *                    (the crc covers the 28 bytes before it)
 *   record           len u32 | type u8 (1..255) | reserved u8[3] (0)
 *                    | lsn u64 | crc32c u32 | payload[len]
 *                    (the crc covers the 16 header bytes before it and the
 *                    payload)
 *
 * All integers are little-endian. A writer rolls to a new segment when the
 * next record would take the current one past segment_bytes. Records of up
 * to 64 KiB are written over zeros written ahead of them, a MiB at a time
 * (wal.c, zero_ahead: an fdatasync then has no journal to commit), so the
 * live segment's file usually ends in zeros; a roll and wal_close cut them.
 *
 * Recycled segments: wal_truncate_before renames up to two of the segments
 * it cuts off to DIR/spare-<their first LSN>, and a later roll reuses such
 * a file: its header is rewritten and made durable, then it is renamed to
 * the new segment's name and the directory fsynced. Why: deleting a 64 MiB
 * segment frees (and, on a file system mounted with `discard`, discards)
 * its blocks while the WAL's fdatasync queues behind on the same disk; on
 * this project's machine an unlink took 98-182 ms and a concurrent
 * fdatasync waited as long. Appends into a recycled file overwrite blocks
 * it already has, so nothing is freed or allocated. Past the new records
 * such a file still holds its earlier life's records, whose LSNs are below
 * the segment's first: recovery reads them as the end of the segment, like
 * a torn tail. A roll and wal_close cut a recycled file at its last record,
 * so only a crash leaves such a tail behind.
 *
 * Invariants (the recovery at wal_open checks every one of them):
 *   1. The LSNs in the WAL are contiguous: each segment's first_lsn is the
 *      previous segment's last LSN + 1 and records inside a segment go up by
 *      one. Only a prefix may be missing (wal_truncate_before).
 *   2. Every segment but the last is complete and durable: a segment is
 *      fdatasynced before the next one is created, and a new segment is
 *      created with its header durable (file and directory fsynced) before a
 *      record goes into it. So damage anywhere but at the end of the last
 *      segment cannot be the effect of a crash: it is a disk fault.
 *   3. wal_sync(w, lsn) returns 0 only when every record <= lsn is on
 *      stable storage; wal_durable_lsn() never runs ahead of that.
 *
 * Recovery (wal_open), per segment in LSN order:
 *   - The end of the last segment may be torn by a crash: a record that does
 *     not decode (or an earlier life's record in a recycled file), after
 *     which no valid record of this segment can be found anywhere in the
 *     rest of the file (a zero-filled tail counts as torn). It is cut at the
 *     last good record (ftruncate + fdatasync) and logged: with LOG_I if
 *     what was cut is all zeros (what every crash leaves), else LOG_W.
 *   - A last segment whose header is torn or short and that holds no valid
 *     record (a crash while creating it) is rewritten as an empty segment.
 *   - Anything else that is wrong is a disk fault: a bad record followed by
 *     a valid one, a bad record or header in a segment that is not the last,
 *     a gap or a non-monotonic LSN, a header that disagrees with its file
 *     name. wal_open then fails with -EBADMSG and logs one LOG_E line
 *     (file, offset, what) telling the operator to rebuild this replica from
 *     its peers. Nothing is ever skipped silently.
 *
 * Life cycle of a handle:
 *
 *   wal_open ──▶ OPEN ──(append/sync/replay/truncate)──▶ OPEN ──wal_close──▶ freed
 *                 │ an fdatasync fails (or a roll cannot be made durable)
 *                 ▼
 *               FAILED: every append/sync/truncate returns -EIO, durable_lsn
 *               stays where it was; wal_close frees. Reopen to recover.
 *
 * FAILED is sticky on purpose: after a failed fdatasync, Linux may have
 * dropped the dirty pages and marked them clean, so a retry that "succeeds"
 * proves nothing (the PostgreSQL fsync lesson). A failed write() is not
 * sticky: the file is cut back to its previous end and the LSN is not used.
 *
 * Threads: every function may be called from any number of threads at once,
 * except wal_open/wal_close (one owner) and wal_replay's callback, which
 * must not call back into the WAL. Concurrent wal_sync calls share one
 * fdatasync (group commit, leader/follower: one waiter syncs for everybody,
 * the others wait on a condition variable).
 *
 * Fault-injection points: "wal.write" (a segment or record write) and
 * "wal.fsync" (every fdatasync/fsync). */
#ifndef PAXFS_CONSENSUS_WAL_H
#define PAXFS_CONSENSUS_WAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#define WAL_SEGMENT_HEADER_BYTES 32
#define WAL_RECORD_HEADER_BYTES 20
#define WAL_FORMAT_VERSION 1
#define WAL_SEGMENT_BYTES_DEFAULT (64u << 20)
#define WAL_RECORD_BYTES_DEFAULT (64u << 20)
/* Upper bound of record_bytes_max, so that a frame length fits everywhere. */
#define WAL_RECORD_BYTES_LIMIT (1u << 30)
/* Most iovecs one wal_appendv takes. */
#define WAL_IOV_MAX 8

struct wal;

struct wal_options {
    /* Roll to a new segment when the next record would pass this size.
     * 0: WAL_SEGMENT_BYTES_DEFAULT. At least 64. */
    uint64_t segment_bytes;
    /* Largest payload: bigger is -EINVAL on append, and a larger length
     * field on disk is corruption. It must not shrink across restarts.
     * 0: WAL_RECORD_BYTES_DEFAULT. At most WAL_RECORD_BYTES_LIMIT. */
    uint32_t record_bytes_max;
    /* Only for log lines (node=). */
    uint32_t node;
};

struct wal_stats {
    uint64_t appends;          /* records appended since open */
    uint64_t append_bytes;     /* bytes written for them, framing included */
    uint64_t sync_calls;       /* wal_sync calls */
    uint64_t fsyncs;           /* fdatasync/fsync issued, directories too */
    uint64_t segments_created; /* since open (rolls; not the one at init) */
    uint64_t segments_deleted; /* by wal_truncate_before since open */
    uint64_t segments_recycled; /* rolls into a spare file (counted in created too) */
    uint64_t recovered_records;        /* records found by wal_open */
    uint64_t recovered_cut_bytes;      /* torn tail bytes cut by wal_open */
    uint64_t first_lsn;   /* oldest LSN still held (may be > last_lsn: empty) */
    uint64_t last_lsn;    /* newest appended, 0 if none ever */
    uint64_t durable_lsn; /* every record <= this is on stable storage */
};

/* Opens the WAL in `dir` (created, with its parent fsynced, if missing),
 * recovers it as described above, and writes the handle to *out. Records
 * are not handed out here: call wal_replay after open, before appending.
 * Appends continue at the last recovered LSN + 1.
 * opts may be NULL (defaults). The directory is locked (flock) for the life
 * of the handle: a second open of the same directory gets -EBUSY.
 * Returns 0, -EBADMSG (disk fault: rebuild from peers, see above),
 * -EPROTONOSUPPORT (a segment of an unknown format version), -EINVAL (bad
 * options), -EBUSY, or another negative errno from the file system. */
int wal_open(const char *dir, const struct wal_options *opts, struct wal **out);

/* Makes every appended record durable (wal_sync up to the last LSN), then
 * closes and frees the handle, whatever happened. Returns 0, or -EIO if the
 * final sync failed or the WAL was FAILED (the records after durable_lsn
 * may then be lost). No other call may be in flight on w. */
int wal_close(struct wal *w);

/* Appends one record and writes its LSN to *lsn_out. The record is written
 * to the file (the page cache) but NOT yet durable: nothing that depends on
 * it may leave this process before wal_sync(w, lsn) has returned 0.
 * type is 1..255 (0 is reserved: it is what a zero-filled tail reads as).
 * Returns 0, -EINVAL (type 0 or len > record_bytes_max), or -EIO (the write
 * failed: nothing was appended; or the WAL is FAILED). */
int wal_append(struct wal *w, uint8_t type, const void *data, size_t len,
               uint64_t *lsn_out);
/* The same with the payload gathered from iovcnt <= WAL_IOV_MAX pieces. */
int wal_appendv(struct wal *w, uint8_t type, const struct iovec *iov,
                int iovcnt, uint64_t *lsn_out);

/* Returns 0 once every record <= lsn is on stable storage (fdatasync; new
 * segments also fsync the directory). Concurrent callers share fdatasyncs.
 * Returns -EINVAL if lsn was never appended, -EIO if the WAL is FAILED or
 * the fdatasync failed (those records are then not durable, and will never
 * be reported durable by this handle). lsn 0 returns 0 at once. */
int wal_sync(struct wal *w, uint64_t lsn);

/* Every record <= the returned LSN is on stable storage. */
uint64_t wal_durable_lsn(struct wal *w);
/* The newest appended LSN (0 if the WAL has never held a record). */
uint64_t wal_last_lsn(struct wal *w);
/* The oldest LSN still held: wal_last_lsn(w) + 1 if the WAL holds none. */
uint64_t wal_first_lsn(struct wal *w);

/* Calls fn once per record with lsn >= from_lsn, in LSN order, with the
 * payload borrowed for the call. A non-zero return from fn stops the replay
 * and is returned. Records before wal_first_lsn are gone; replay starts at
 * the first one held. Appends wait while a replay runs; fn must not call
 * into the WAL. Returns 0, fn's value, -EBADMSG if a record no longer
 * verifies (the disk changed since open), or another negative errno. */
typedef int (*wal_replay_fn)(void *ctx, uint64_t lsn, uint8_t type,
                             const void *data, size_t len);
int wal_replay(struct wal *w, uint64_t from_lsn, wal_replay_fn fn, void *ctx);

/* Deletes every whole segment all of whose records are < lsn. The caller
 * must first have re-logged at >= lsn every piece of state it still needs
 * from older records (e.g. the acceptor's promise and a snapshot marker);
 * this call first makes everything appended durable, so that re-logged state
 * is on disk before the old copies go. If the live segment holds only
 * records < lsn, a new segment is rolled first so it can go too. Segments
 * are deleted oldest first, each deletion made durable before the next, so
 * a crash leaves a contiguous suffix that wal_open accepts. Returns 0 or a
 * negative errno (-EIO on FAILED). */
int wal_truncate_before(struct wal *w, uint64_t lsn);

/* A consistent snapshot of the counters. */
void wal_get_stats(struct wal *w, struct wal_stats *out);

/* --- Codec, exposed for recovery, the tests and the fuzz target. --- */

struct wal_record {
    uint64_t lsn;
    uint8_t type;
    const uint8_t *data; /* borrowed from the decoded buffer */
    uint32_t len;
};

/* Writes the 20-byte frame header (with the CRC over it and the payload)
 * of a record into hdr. */
void wal_record_frame(uint8_t hdr[WAL_RECORD_HEADER_BYTES], uint64_t lsn,
                      uint8_t type, const void *data, size_t len);

/* Decodes the record frame at the start of p[0..len). Returns the bytes it
 * takes (header + payload) and fills *out, or:
 *   -ENODATA   the buffer ends inside the frame (a short, torn record)
 *   -EMSGSIZE  the length field is above record_bytes_max
 *   -EBADMSG   a reserved field is not zero, type or lsn is 0, or the CRC
 *              does not match. */
ssize_t wal_record_decode(const uint8_t *p, size_t len,
                          uint32_t record_bytes_max, struct wal_record *out);

void wal_segment_header_encode(uint8_t out[WAL_SEGMENT_HEADER_BYTES],
                               uint64_t first_lsn);
/* Returns 0 and the first LSN, or -ENODATA (short), -EBADMSG (bad magic,
 * CRC, or reserved field, or first_lsn 0), -EPROTONOSUPPORT (a well-formed
 * header of another format version). */
int wal_segment_header_decode(const uint8_t *p, size_t len,
                              uint64_t *first_lsn);

enum wal_scan_end {
    WAL_SCAN_CLEAN,   /* every byte is a good record */
    WAL_SCAN_TORN,    /* a bad record at `end`, nothing valid after it */
    WAL_SCAN_CORRUPT, /* a bad record at `end`, a valid record at `valid_off` */
    WAL_SCAN_LSN,     /* a valid record at `end` whose LSN is out of order */
};

struct wal_scan {
    enum wal_scan_end result;
    uint64_t records;  /* good records, LSNs first_lsn .. first_lsn+records-1 */
    size_t end;        /* offset just past the last good record */
    int bad_rc;        /* TORN/CORRUPT: the decode error at `end` */
    size_t valid_off;  /* CORRUPT: offset of the valid record found later */
    uint64_t bad_lsn;  /* LSN: the out-of-order LSN found at `end` */
};

/* Scans the records of a segment image p[0..len) (its header included; the
 * header itself is not checked here), which must start at first_lsn. Pure:
 * no I/O; recovery runs it on each segment and the fuzz target on anything.
 * Work is linear in len in practice: after a bad record, only offsets whose
 * LSN field is plausible for that position get a CRC check. */
void wal_segment_scan(const uint8_t *p, size_t len, uint64_t first_lsn,
                      uint32_t record_bytes_max, struct wal_scan *out);

/* A short description of a decode error, for log lines. */
const char *wal_decode_strerror(int rc);

#endif
