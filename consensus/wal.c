/* The write-ahead log; the format, invariants and state diagram are in
 * wal.h. This file owns the segment files of one directory.
 *
 * Locks (always taken in this order, never the other way):
 *   truncate_mu  one truncation at a time: it deletes segments after it
 *             took them off the list, outside write_mu, and two must not
 *             interleave their deletions.
 *   write_mu  the live segment (fd, size), the segment list and next_lsn:
 *             appends, rolls, replay and truncation hold it.
 *   sync_mu   group commit: `syncing` (a leader is in fdatasync) and
 *             durable_lsn; sync_cv wakes the followers.
 * A sync leader takes write_mu only for a moment, to read the last LSN and
 * dup() the live segment's fd; it runs fdatasync holding neither lock, so
 * appends go on during the sync and form the next group.
 *
 * Why records in older segments never need the leader: a roll fdatasyncs
 * the old segment before the new one is created (wal.h, invariant 2), so
 * everything outside the live segment is already durable. */
#include "consensus/wal.h"

#include "base/assert.h"
#include "base/buf.h"
#include "base/crc32c.h"
#include "base/fault.h"
#include "base/log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const uint8_t seg_magic[8] = {'P', 'X', 'F', 'S', 'W', 'A', 'L', 0};

#define SEG_NAME_DIGITS 20
#define SEG_NAME_LEN (SEG_NAME_DIGITS + 4) /* "%020" PRIu64 ".seg" */
#define SPARE_PREFIX "spare-"
#define SPARE_NAME_LEN (6 + SEG_NAME_DIGITS) /* "spare-%020" PRIu64, the old first LSN */
/* Segments cut off by wal_truncate_before are kept as spares, up to this
 * many, and reused by later rolls instead of deleting and creating files:
 * see "Recycled segments" in wal.h for why. */
#define WAL_SPARES_MAX 2
#define REBUILD_HINT "this replica's WAL is damaged on disk: do not start it; rebuild the replica from its peers"

struct wal_segment {
    uint64_t first_lsn;
    uint64_t bytes; /* its size on disk; the live one grows */
};

struct wal {
    char *dir;
    int dir_fd; /* holds the flock for the life of the handle */
    uint32_t node;
    uint64_t segment_bytes;
    uint32_t record_bytes_max;

    pthread_mutex_t truncate_mu;
    pthread_mutex_t write_mu;
    int fd;                   /* the live segment (segs[nsegs - 1]) */
    int syncing_fd;           /* the fd lead_sync syncs outside write_mu, or -1 */
    int retired_fd;           /* that fd, if a roll replaced it meanwhile: lead_sync closes it */
    uint64_t live_file_bytes; /* its file's size: more than its records when
                                 recycled or written ahead (zero_ahead) */
    struct wal_segment *segs; /* in LSN order; never empty after open */
    size_t nsegs, segs_cap;
    uint64_t next_lsn;
    uint64_t spares[WAL_SPARES_MAX]; /* spare files, by the number in their name */
    size_t nspares;

    pthread_mutex_t sync_mu;
    pthread_cond_t sync_cv;
    bool syncing;

    /* Written under the locks above, read anywhere. */
    _Atomic uint64_t last_lsn;
    _Atomic uint64_t first_lsn;
    _Atomic uint64_t durable_lsn;
    atomic_int failed; /* 0, or -EIO once FAILED (sticky) */

    _Atomic uint64_t n_appends, n_append_bytes, n_sync_calls, n_fsyncs;
    _Atomic uint64_t n_segments_created, n_segments_deleted, n_segments_recycled;
    uint64_t recovered_records, recovered_cut_bytes;
};

/* ------------------------------------------------------------------ codec */

void wal_segment_header_encode(uint8_t out[WAL_SEGMENT_HEADER_BYTES],
                               uint64_t first_lsn)
{
    memcpy(out, seg_magic, 8);
    le_put_u32(out + 8, WAL_FORMAT_VERSION);
    le_put_u32(out + 12, 0);
    le_put_u64(out + 16, first_lsn);
    le_put_u32(out + 24, 0);
    le_put_u32(out + 28, crc32c(0, out, 28));
}

int wal_segment_header_decode(const uint8_t *p, size_t len, uint64_t *first_lsn)
{
    if (len < WAL_SEGMENT_HEADER_BYTES)
        return -ENODATA;
    if (memcmp(p, seg_magic, 8) != 0 || crc32c(0, p, 28) != le_get_u32(p + 28))
        return -EBADMSG;
    /* A header whose CRC holds but whose version differs was written by
     * another format, not damaged: say so rather than calling it corrupt. */
    if (le_get_u32(p + 8) != WAL_FORMAT_VERSION)
        return -EPROTONOSUPPORT;
    uint64_t lsn = le_get_u64(p + 16);
    if (le_get_u32(p + 12) != 0 || le_get_u32(p + 24) != 0 || lsn == 0)
        return -EBADMSG;
    *first_lsn = lsn;
    return 0;
}

static void record_header_fill(uint8_t hdr[WAL_RECORD_HEADER_BYTES],
                               uint64_t lsn, uint8_t type, uint32_t len)
{
    le_put_u32(hdr, len);
    hdr[4] = type;
    hdr[5] = hdr[6] = hdr[7] = 0;
    le_put_u64(hdr + 8, lsn);
}

/* The CRC runs over the payload first, then the 16 header bytes: so the
 * payload's part (the costly one for big values) can be computed before the
 * LSN is known, outside write_mu. */
static uint32_t record_crc(uint32_t payload_crc, const uint8_t *hdr)
{
    return crc32c(payload_crc, hdr, 16);
}

void wal_record_frame(uint8_t hdr[WAL_RECORD_HEADER_BYTES], uint64_t lsn,
                      uint8_t type, const void *data, size_t len)
{
    ASSERT(len <= WAL_RECORD_BYTES_LIMIT);
    record_header_fill(hdr, lsn, type, (uint32_t)len);
    le_put_u32(hdr + 16, record_crc(crc32c(0, data, len), hdr));
}

/* The checks that need no CRC: false for most garbage, cheaply. */
static int record_header_check(const uint8_t *p, size_t len,
                               uint32_t record_bytes_max)
{
    if (len < WAL_RECORD_HEADER_BYTES)
        return -ENODATA;
    uint32_t n = le_get_u32(p);
    if (p[4] == 0 || p[5] || p[6] || p[7] || le_get_u64(p + 8) == 0)
        return -EBADMSG;
    if (n > record_bytes_max)
        return -EMSGSIZE;
    if (n > len - WAL_RECORD_HEADER_BYTES)
        return -ENODATA;
    return 0;
}

ssize_t wal_record_decode(const uint8_t *p, size_t len,
                          uint32_t record_bytes_max, struct wal_record *out)
{
    int rc = record_header_check(p, len, record_bytes_max);
    if (rc)
        return rc;
    uint32_t n = le_get_u32(p);
    const uint8_t *data = p + WAL_RECORD_HEADER_BYTES;
    if (record_crc(crc32c(0, data, n), p) != le_get_u32(p + 16))
        return -EBADMSG;
    out->len = n;
    out->type = p[4];
    out->lsn = le_get_u64(p + 8);
    out->data = data;
    return (ssize_t)(WAL_RECORD_HEADER_BYTES + (size_t)n);
}

const char *wal_decode_strerror(int rc)
{
    switch (rc) {
    case 0: return "ok";
    case -ENODATA: return "short record: the file ends inside the frame";
    case -EMSGSIZE: return "length field above record_bytes_max";
    case -EBADMSG: return "checksum mismatch or malformed frame header";
    case -EPROTONOSUPPORT: return "unknown format version";
    case -ESTALE: return "a record older than the segment: the rest of a recycled file";
    default: return "undecodable";
    }
}

/* Looks for any valid record after a bad one at `bad`. A genuine record at
 * offset o of a segment starting at first_lsn has an LSN in
 * [first_lsn, first_lsn + (o - header) / record header size], since every
 * record takes at least a header; offsets whose LSN field is outside that
 * window are rejected before any CRC is computed, which keeps this linear
 * on garbage and on zero-filled tails. */
static size_t find_valid_record(const uint8_t *p, size_t len, size_t bad,
                                uint64_t first_lsn, uint32_t record_bytes_max)
{
    for (size_t o = bad + 1; o + WAL_RECORD_HEADER_BYTES <= len; o++) {
        if (record_header_check(p + o, len - o, record_bytes_max) != 0)
            continue;
        uint64_t lsn = le_get_u64(p + o + 8);
        uint64_t span = (o - WAL_SEGMENT_HEADER_BYTES) / WAL_RECORD_HEADER_BYTES;
        if (lsn < first_lsn || lsn - first_lsn > span)
            continue;
        struct wal_record rec;
        if (wal_record_decode(p + o, len - o, record_bytes_max, &rec) > 0)
            return o;
    }
    return SIZE_MAX;
}

void wal_segment_scan(const uint8_t *p, size_t len, uint64_t first_lsn,
                      uint32_t record_bytes_max, struct wal_scan *out)
{
    struct wal_scan s = {.result = WAL_SCAN_CLEAN, .valid_off = SIZE_MAX};
    if (len < WAL_SEGMENT_HEADER_BYTES) {
        s.result = WAL_SCAN_TORN;
        s.bad_rc = -ENODATA;
        *out = s;
        return;
    }
    size_t off = WAL_SEGMENT_HEADER_BYTES;
    uint64_t expect = first_lsn;
    /* Bounded: each pass consumes at least one record header. */
    while (off < len) {
        struct wal_record rec;
        ssize_t n = wal_record_decode(p + off, len - off, record_bytes_max, &rec);
        /* A whole record with an LSN below the segment's first was left by
         * the file's earlier life as another segment: to the scan, it is
         * as bad as garbage (a torn tail, or corruption if a record of
         * this segment follows). */
        if (n > 0 && rec.lsn < first_lsn)
            n = -ESTALE;
        if (n < 0) {
            s.bad_rc = (int)n;
            s.valid_off = find_valid_record(p, len, off, first_lsn,
                                            record_bytes_max);
            s.result = s.valid_off == SIZE_MAX ? WAL_SCAN_TORN : WAL_SCAN_CORRUPT;
            break;
        }
        if (rec.lsn != expect) {
            s.result = WAL_SCAN_LSN;
            s.bad_lsn = rec.lsn;
            break;
        }
        off += (size_t)n;
        expect++;
        s.records++;
    }
    s.end = off;
    *out = s;
}

/* ------------------------------------------------------------- file I/O */

static void seg_name(char out[SEG_NAME_LEN + 1], uint64_t first_lsn)
{
    snprintf(out, SEG_NAME_LEN + 1, "%020" PRIu64 ".seg", first_lsn);
}

/* Parses "%020u.seg"; false for any other name. */
static bool seg_name_parse(const char *name, uint64_t *first_lsn)
{
    if (strlen(name) != SEG_NAME_LEN || strcmp(name + SEG_NAME_DIGITS, ".seg") != 0)
        return false;
    uint64_t v = 0;
    for (int i = 0; i < SEG_NAME_DIGITS; i++) {
        if (name[i] < '0' || name[i] > '9')
            return false;
        unsigned d = (unsigned)(name[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    if (v == 0)
        return false;
    *first_lsn = v;
    return true;
}

static void spare_name(char out[SPARE_NAME_LEN + 1], uint64_t old_first_lsn)
{
    snprintf(out, SPARE_NAME_LEN + 1, SPARE_PREFIX "%020" PRIu64, old_first_lsn);
}

/* Parses "spare-%020u"; false for any other name. */
static bool spare_name_parse(const char *name, uint64_t *old_first_lsn)
{
    if (strlen(name) != SPARE_NAME_LEN || strncmp(name, SPARE_PREFIX, 6) != 0)
        return false;
    char seg[SEG_NAME_LEN + 1];
    snprintf(seg, sizeof seg, "%s.seg", name + 6);
    return seg_name_parse(seg, old_first_lsn);
}

static void set_failed(struct wal *w, const char *what, int err)
{
    if (atomic_exchange(&w->failed, -EIO) == 0)
        LOG_E("event=wal_failed node=%u dir=%s what=\"%s\" errno=%d error=\"%s\" "
              "effect=\"no further appends or syncs until the WAL is reopened\"",
              w->node, w->dir, what, -err, strerror(-err));
}

/* fdatasync (or fsync for a directory) through the fault point, counted.
 * Returns 0 or a negative errno; the caller decides whether that fails the
 * WAL. */
static int sync_fd(struct wal *w, int fd, bool is_dir)
{
    atomic_fetch_add_explicit(&w->n_fsyncs, 1, memory_order_relaxed);
    int rc = FAULT("wal.fsync");
    if (rc)
        return rc;
    if ((is_dir ? fsync(fd) : fdatasync(fd)) != 0)
        return -errno;
    return 0;
}

/* Writes all of iov[0..cnt) at off. Bounded: each pass writes at least one
 * byte or returns. iov is consumed. */
static int pwritev_all(int fd, struct iovec *iov, int cnt, off_t off)
{
    int rc = FAULT("wal.write");
    if (rc)
        return rc;
    while (cnt > 0) {
        ssize_t n = pwritev(fd, iov, cnt, off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO;
        off += n;
        while (cnt > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
    return 0;
}

/* Creates segment first_lsn with a durable header and a durable directory
 * entry (wal.h, invariant 2). On a failure before the directory fsync the
 * file is removed and the WAL goes on with its old segment; a failed
 * directory fsync fails the WAL, since the name may or may not survive. */
static int segment_create(struct wal *w, uint64_t first_lsn, int *fd_out)
{
    char name[SEG_NAME_LEN + 1];
    seg_name(name, first_lsn);
    int fd = openat(w->dir_fd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        int err = -errno;
        LOG_E("event=wal_segment_create_failed node=%u file=%s/%s errno=%d error=\"%s\"",
              w->node, w->dir, name, -err, strerror(-err));
        return err == -EEXIST ? -EIO : err;
    }
    uint8_t hdr[WAL_SEGMENT_HEADER_BYTES];
    wal_segment_header_encode(hdr, first_lsn);
    struct iovec iov = {hdr, sizeof hdr};
    int rc = pwritev_all(fd, &iov, 1, 0);
    if (rc == 0)
        rc = sync_fd(w, fd, false);
    if (rc) {
        LOG_E("event=wal_segment_create_failed node=%u file=%s/%s errno=%d error=\"%s\"",
              w->node, w->dir, name, -rc, strerror(-rc));
        close(fd);
        /* The name must be gone for good before more records go into the
         * old segment: left behind, it would read as a later segment. */
        if (unlinkat(w->dir_fd, name, 0) != 0 || sync_fd(w, w->dir_fd, true) != 0)
            set_failed(w, "removing a half-made segment", -EIO);
        return -EIO;
    }
    rc = sync_fd(w, w->dir_fd, true);
    if (rc) {
        set_failed(w, "fsync of the WAL directory after creating a segment", rc);
        close(fd);
        return -EIO;
    }
    *fd_out = fd;
    return 0;
}

/* Turns a spare file into segment first_lsn: its header is rewritten and
 * made durable first, then the file is renamed and the directory fsynced,
 * so that a crash leaves either a spare (whatever its header says) or a
 * segment with a durable header and no record of its own yet. Returns 1
 * when no usable spare was there (the caller creates a new file), 0 with
 * *fd_out and *file_bytes set, or -EIO after a failed directory fsync,
 * which fails the WAL as in segment_create. Called with write_mu held. */
static int segment_recycle(struct wal *w, uint64_t first_lsn, int *fd_out,
                           uint64_t *file_bytes)
{
    while (w->nspares > 0) {
        char spare[SPARE_NAME_LEN + 1], name[SEG_NAME_LEN + 1];
        spare_name(spare, w->spares[--w->nspares]);
        seg_name(name, first_lsn);
        int fd = openat(w->dir_fd, spare, O_RDWR | O_CLOEXEC);
        struct stat st;
        int rc = fd < 0 || fstat(fd, &st) != 0 ? -errno : 0;
        uint8_t hdr[WAL_SEGMENT_HEADER_BYTES];
        wal_segment_header_encode(hdr, first_lsn);
        struct iovec iov = {hdr, sizeof hdr};
        if (rc == 0)
            rc = pwritev_all(fd, &iov, 1, 0);
        if (rc == 0)
            rc = sync_fd(w, fd, false);
        if (rc == 0 && renameat(w->dir_fd, spare, w->dir_fd, name) != 0)
            rc = -errno;
        if (rc) {
            /* This spare is of no use; the next one, or a new file, is. */
            LOG_W("event=wal_spare_dropped node=%u file=%s/%s errno=%d error=\"%s\"",
                  w->node, w->dir, spare, -rc, strerror(-rc));
            if (fd >= 0)
                close(fd);
            unlinkat(w->dir_fd, spare, 0);
            continue;
        }
        rc = sync_fd(w, w->dir_fd, true);
        if (rc) {
            set_failed(w, "fsync of the WAL directory after recycling a segment", rc);
            close(fd);
            return -EIO;
        }
        *fd_out = fd;
        *file_bytes = (uint64_t)st.st_size;
        atomic_fetch_add(&w->n_segments_recycled, 1);
        return 0;
    }
    return 1;
}

static int segs_push(struct wal *w, uint64_t first_lsn, uint64_t bytes)
{
    if (w->nsegs == w->segs_cap) {
        size_t cap = w->segs_cap ? w->segs_cap * 2 : 8;
        struct wal_segment *s = realloc(w->segs, cap * sizeof *s);
        if (!s)
            return -ENOMEM;
        w->segs = s;
        w->segs_cap = cap;
    }
    w->segs[w->nsegs++] = (struct wal_segment){first_lsn, bytes};
    return 0;
}

static void durable_advance(struct wal *w, uint64_t lsn)
{
    pthread_mutex_lock(&w->sync_mu);
    if (lsn > atomic_load(&w->durable_lsn))
        atomic_store(&w->durable_lsn, lsn);
    pthread_cond_broadcast(&w->sync_cv);
    pthread_mutex_unlock(&w->sync_mu);
}

/* Cuts a recycled live segment at its last record: its earlier life goes,
 * as do the zeros written ahead of the records (zero_ahead).
 * Before a roll, because every segment but the last ends at its last record
 * (wal.h, invariant 2); at close, so that a clean restart cuts nothing and
 * logs no torn tail. 1 if it cut (not yet durable), 0 if there was nothing
 * to cut, or -errno. */
static int cut_recycled_tail(struct wal *w)
{
    uint64_t end = w->segs[w->nsegs - 1].bytes;
    if (w->live_file_bytes <= end)
        return 0;
    if (ftruncate(w->fd, (off_t)end) != 0)
        return -errno;
    w->live_file_bytes = end;
    return 1;
}

/* Makes the live segment durable, then starts a new one at next_lsn.
 * Called with write_mu held. */
static int roll(struct wal *w)
{
    int rc = cut_recycled_tail(w);
    if (rc < 0) {
        set_failed(w, "ftruncate of a recycled segment before rolling", rc);
        return -EIO;
    }
    rc = sync_fd(w, w->fd, false);
    if (rc) {
        set_failed(w, "fdatasync of a full segment before rolling", rc);
        return -EIO;
    }
    durable_advance(w, w->next_lsn - 1);
    if (segs_push(w, w->next_lsn, WAL_SEGMENT_HEADER_BYTES) != 0)
        return -ENOMEM;
    int fd;
    uint64_t file_bytes = WAL_SEGMENT_HEADER_BYTES;
    rc = segment_recycle(w, w->next_lsn, &fd, &file_bytes);
    if (rc == 1)
        rc = segment_create(w, w->next_lsn, &fd);
    if (rc) {
        w->nsegs--;
        return rc;
    }
    if (w->fd == w->syncing_fd)
        w->retired_fd = w->fd;
    else
        close(w->fd);
    w->fd = fd;
    w->live_file_bytes = file_bytes;
    atomic_fetch_add(&w->n_segments_created, 1);
    LOG_D("event=wal_roll node=%u first_lsn=%" PRIu64, w->node, w->next_lsn);
    return 0;
}

/* --------------------------------------------------------------- append */

/* Small records overwrite zeros written ahead of them instead of growing
 * the file. An fdatasync after an append that grew the file must commit
 * the file system's journal (the size changed, new blocks were allocated);
 * after an overwrite of written blocks it only flushes the data. With the
 * three replicas of a cluster on one disk, each round's three journal
 * commits queue behind each other: on this project's machine a 4 KiB
 * record + fdatasync took 0.61-0.85 ms in three processes at once when
 * appended, 0.41-0.49 ms when overwritten (0.50-0.58 and 0.39-0.44 ms in
 * one). fallocate() does not help: its unwritten extents are converted,
 * in the journal, at the first write. So the live segment gets
 * ZERO_AHEAD_BYTES of zeros at a time, which the next fdatasync makes
 * durable with one journal commit for the many records that follow.
 * Records too large to amortize that are appended as before. The zeros
 * past the last record are what recovery already takes for a torn tail
 * after a crash; a roll and wal_close cut them off as they do a recycled
 * file's tail. */
#define ZERO_AHEAD_BYTES ((uint64_t)1 << 20)
#define ZERO_AHEAD_RECORD_MAX ((uint64_t)64 << 10)

/* Writes zeros past the live file's end until it is ZERO_AHEAD_BYTES
 * longer than `end` (the end of the record about to be written), or as
 * long as the segment may grow. Called with write_mu held. If the disk
 * refuses (full), the record is appended as it would be without this. */
static void zero_ahead(struct wal *w, uint64_t end)
{
    static const uint8_t zeros[64 << 10];
    uint64_t to = MAX(end, MIN(w->segment_bytes, end + ZERO_AHEAD_BYTES));
    uint64_t at = w->live_file_bytes;
    while (at < to) {
        ssize_t k = pwrite(w->fd, zeros, (size_t)MIN(to - at, (uint64_t)sizeof zeros), (off_t)at);
        if (k <= 0)
            break;
        at += (uint64_t)k;
    }
    w->live_file_bytes = at;
}

int wal_appendv(struct wal *w, uint8_t type, const struct iovec *iov,
                int iovcnt, uint64_t *lsn_out)
{
    ASSERT(iovcnt >= 0 && iovcnt <= WAL_IOV_MAX);
    if (type == 0)
        return -EINVAL;
    size_t len = 0;
    uint32_t payload_crc = 0;
    for (int i = 0; i < iovcnt; i++) {
        if (iov[i].iov_len > w->record_bytes_max - len)
            return -EINVAL;
        len += iov[i].iov_len;
        payload_crc = crc32c(payload_crc, iov[i].iov_base, iov[i].iov_len);
    }
    uint64_t rec_bytes = WAL_RECORD_HEADER_BYTES + len;

    pthread_mutex_lock(&w->write_mu);
    int rc = atomic_load(&w->failed);
    struct wal_segment *live = &w->segs[w->nsegs - 1];
    if (rc == 0 && live->bytes + rec_bytes > w->segment_bytes &&
        w->next_lsn > live->first_lsn) {
        rc = roll(w);
        live = &w->segs[w->nsegs - 1];
    }
    if (rc) {
        pthread_mutex_unlock(&w->write_mu);
        return rc == -ENOMEM ? rc : -EIO;
    }
    if (live->bytes + rec_bytes > w->live_file_bytes && rec_bytes <= ZERO_AHEAD_RECORD_MAX)
        zero_ahead(w, live->bytes + rec_bytes);
    uint64_t lsn = w->next_lsn;
    uint8_t hdr[WAL_RECORD_HEADER_BYTES];
    record_header_fill(hdr, lsn, type, (uint32_t)len);
    le_put_u32(hdr + 16, record_crc(payload_crc, hdr));
    struct iovec v[WAL_IOV_MAX + 1];
    v[0] = (struct iovec){hdr, sizeof hdr};
    if (iovcnt > 0)
        memcpy(v + 1, iov, (size_t)iovcnt * sizeof *iov);
    rc = pwritev_all(w->fd, v, iovcnt + 1, (off_t)live->bytes);
    if (rc) {
        LOG_E("event=wal_write_failed node=%u lsn=%" PRIu64 " errno=%d error=\"%s\"",
              w->node, lsn, -rc, strerror(-rc));
        /* Cut off whatever part did reach the file, so the next record
         * starts where the last good one ended. */
        if (ftruncate(w->fd, (off_t)live->bytes) != 0)
            set_failed(w, "ftruncate after a failed write", -errno);
        w->live_file_bytes = live->bytes;
        pthread_mutex_unlock(&w->write_mu);
        return -EIO;
    }
    live->bytes += rec_bytes;
    if (live->bytes > w->live_file_bytes)
        w->live_file_bytes = live->bytes;
    w->next_lsn = lsn + 1;
    atomic_store(&w->last_lsn, lsn);
    atomic_fetch_add_explicit(&w->n_appends, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->n_append_bytes, rec_bytes, memory_order_relaxed);
    pthread_mutex_unlock(&w->write_mu);
    *lsn_out = lsn;
    return 0;
}

int wal_append(struct wal *w, uint8_t type, const void *data, size_t len,
               uint64_t *lsn_out)
{
    struct iovec v = {(void *)data, len};
    return wal_appendv(w, type, &v, len ? 1 : 0, lsn_out);
}

/* ----------------------------------------------------------------- sync */

/* The leader's part: fdatasync the live segment, which holds every record
 * not yet durable. On success writes the LSN it covered. */
static int lead_sync(struct wal *w, uint64_t *covered)
{
    pthread_mutex_lock(&w->write_mu);
    uint64_t target = w->next_lsn - 1;
    /* Synced outside the lock; a roll meanwhile leaves this fd open for us
     * to close (a dup per sync would cost two more syscalls each time). */
    int fd = w->syncing_fd = w->fd;
    pthread_mutex_unlock(&w->write_mu);
    int rc = sync_fd(w, fd, false);
    pthread_mutex_lock(&w->write_mu);
    w->syncing_fd = -1;
    if (w->retired_fd >= 0) {
        close(w->retired_fd);
        w->retired_fd = -1;
    }
    pthread_mutex_unlock(&w->write_mu);
    if (rc == 0)
        *covered = target;
    return rc;
}

int wal_sync(struct wal *w, uint64_t lsn)
{
    if (lsn == 0)
        return 0;
    atomic_fetch_add_explicit(&w->n_sync_calls, 1, memory_order_relaxed);
    if (lsn > atomic_load(&w->last_lsn))
        return -EINVAL;
    int rc = 0;
    pthread_mutex_lock(&w->sync_mu);
    /* Each pass returns, waits for a leader to finish, or leads; a leader
     * either advances durable_lsn past this lsn (it covers every LSN
     * appended before it started) or fails the WAL. */
    for (;;) {
        if (atomic_load(&w->durable_lsn) >= lsn) {
            rc = 0;
            break;
        }
        if (atomic_load(&w->failed)) {
            rc = -EIO;
            break;
        }
        if (w->syncing) {
            pthread_cond_wait(&w->sync_cv, &w->sync_mu);
            continue;
        }
        w->syncing = true;
        pthread_mutex_unlock(&w->sync_mu);
        uint64_t covered = 0;
        int lrc = lead_sync(w, &covered);
        if (lrc)
            set_failed(w, "fdatasync of the live segment", lrc);
        pthread_mutex_lock(&w->sync_mu);
        w->syncing = false;
        if (lrc == 0 && covered > atomic_load(&w->durable_lsn))
            atomic_store(&w->durable_lsn, covered);
        pthread_cond_broadcast(&w->sync_cv);
    }
    pthread_mutex_unlock(&w->sync_mu);
    return rc;
}

uint64_t wal_durable_lsn(struct wal *w) { return atomic_load(&w->durable_lsn); }
uint64_t wal_last_lsn(struct wal *w) { return atomic_load(&w->last_lsn); }
uint64_t wal_first_lsn(struct wal *w) { return atomic_load(&w->first_lsn); }

void wal_get_stats(struct wal *w, struct wal_stats *out)
{
    *out = (struct wal_stats){
        .appends = atomic_load(&w->n_appends),
        .append_bytes = atomic_load(&w->n_append_bytes),
        .sync_calls = atomic_load(&w->n_sync_calls),
        .fsyncs = atomic_load(&w->n_fsyncs),
        .segments_created = atomic_load(&w->n_segments_created),
        .segments_deleted = atomic_load(&w->n_segments_deleted),
        .segments_recycled = atomic_load(&w->n_segments_recycled),
        .recovered_records = w->recovered_records,
        .recovered_cut_bytes = w->recovered_cut_bytes,
        .first_lsn = atomic_load(&w->first_lsn),
        .last_lsn = atomic_load(&w->last_lsn),
        .durable_lsn = atomic_load(&w->durable_lsn),
    };
}

/* ------------------------------------------------------------- recovery */

/* A segment mapped read-only for scanning or replay. */
struct seg_map {
    int fd;
    const uint8_t *p;
    size_t len;
};

static int seg_map_open(struct wal *w, uint64_t first_lsn, int flags,
                        struct seg_map *m)
{
    char name[SEG_NAME_LEN + 1];
    seg_name(name, first_lsn);
    int fd = openat(w->dir_fd, name, flags | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    m->fd = fd;
    m->len = (size_t)st.st_size;
    m->p = NULL;
    if (m->len > 0) {
        void *p = mmap(NULL, m->len, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            int err = -errno;
            close(fd);
            return err;
        }
        m->p = p;
    }
    return 0;
}

static void seg_unmap(struct seg_map *m)
{
    if (m->p)
        munmap((void *)m->p, m->len);
    m->p = NULL;
}

static int disk_fault(struct wal *w, uint64_t first_lsn, size_t off,
                      const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Logs one LOG_E line naming the file, the offset and what is wrong, and
 * returns -EBADMSG. */
static int disk_fault(struct wal *w, uint64_t first_lsn, size_t off,
                      const char *fmt, ...)
{
    char name[SEG_NAME_LEN + 1], what[256];
    seg_name(name, first_lsn);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    LOG_E("event=wal_disk_fault node=%u file=%s/%s offset=%zu what=\"%s\" action=\"%s\"",
          w->node, w->dir, name, off, what, REBUILD_HINT);
    return -EBADMSG;
}

/* Rewrites the last segment as an empty one: its header was torn while it
 * was being created, and it holds no record. */
static int rewrite_header(struct wal *w, struct seg_map *m, uint64_t first_lsn)
{
    uint8_t hdr[WAL_SEGMENT_HEADER_BYTES];
    wal_segment_header_encode(hdr, first_lsn);
    struct iovec iov = {hdr, sizeof hdr};
    if (ftruncate(m->fd, 0) != 0)
        return -errno;
    int rc = pwritev_all(m->fd, &iov, 1, 0);
    if (rc == 0)
        rc = sync_fd(w, m->fd, false);
    return rc;
}

/* Recovers one segment; *expect is the LSN it must start at (0: any, for
 * the first). On success records its size and, for the last, keeps its fd
 * open as the live segment. */
static int recover_segment(struct wal *w, struct wal_segment *seg, bool last,
                           uint64_t *expect)
{
    struct seg_map m;
    char name[SEG_NAME_LEN + 1];
    seg_name(name, seg->first_lsn);
    int rc = seg_map_open(w, seg->first_lsn, last ? O_RDWR : O_RDONLY, &m);
    if (rc) {
        LOG_E("event=wal_open_failed node=%u file=%s/%s errno=%d error=\"%s\"",
              w->node, w->dir, name, -rc, strerror(-rc));
        return rc;
    }
    if (*expect && seg->first_lsn != *expect) {
        rc = disk_fault(w, seg->first_lsn, 0,
                        "gap in the log: the previous segment ends at lsn %" PRIu64
                        " but this one starts at lsn %" PRIu64,
                        *expect - 1, seg->first_lsn);
        goto out;
    }
    uint64_t hdr_lsn = 0;
    int hrc = wal_segment_header_decode(m.p, m.len, &hdr_lsn);
    if (hrc == -EPROTONOSUPPORT) {
        LOG_E("event=wal_open_failed node=%u file=%s/%s what=\"segment format version %" PRIu32
              " is not %d: written by another paxfs version\"",
              w->node, w->dir, name, le_get_u32(m.p + 8), WAL_FORMAT_VERSION);
        rc = -EPROTONOSUPPORT;
        goto out;
    }
    if (hrc == 0 && hdr_lsn != seg->first_lsn) {
        rc = disk_fault(w, seg->first_lsn, 16,
                        "segment header says first lsn %" PRIu64 ", its name says %" PRIu64,
                        hdr_lsn, seg->first_lsn);
        goto out;
    }
    struct wal_scan s;
    wal_segment_scan(m.p, m.len, seg->first_lsn, w->record_bytes_max, &s);
    if (hrc != 0) {
        if (!last) {
            rc = disk_fault(w, seg->first_lsn, 0,
                            "bad segment header (%s) in a segment that is not the last",
                            m.len < WAL_SEGMENT_HEADER_BYTES ? "short file" : "checksum");
            goto out;
        }
        if (s.records > 0 || s.result == WAL_SCAN_CORRUPT || s.result == WAL_SCAN_LSN) {
            rc = disk_fault(w, seg->first_lsn, 0,
                            "bad segment header but valid records follow it");
            goto out;
        }
        /* Nothing valid in it: a crash while it was being created. */
        LOG_W("event=wal_torn_header node=%u file=%s/%s offset=0 bytes=%zu "
              "what=\"segment header torn (%s), no record in it: rewritten empty\"",
              w->node, w->dir, name, m.len,
              m.len < WAL_SEGMENT_HEADER_BYTES ? "short file" : "checksum");
        seg_unmap(&m);
        rc = rewrite_header(w, &m, seg->first_lsn);
        if (rc) {
            LOG_E("event=wal_open_failed node=%u file=%s/%s what=\"rewriting a torn header\" errno=%d",
                  w->node, w->dir, name, -rc);
            goto out;
        }
        w->recovered_cut_bytes += m.len > WAL_SEGMENT_HEADER_BYTES ?
            m.len - WAL_SEGMENT_HEADER_BYTES : 0;
        s = (struct wal_scan){.result = WAL_SCAN_CLEAN, .end = WAL_SEGMENT_HEADER_BYTES};
        m.len = WAL_SEGMENT_HEADER_BYTES;
    }
    switch (s.result) {
    case WAL_SCAN_CLEAN:
        break;
    case WAL_SCAN_LSN:
        rc = disk_fault(w, seg->first_lsn, s.end,
                        "record has lsn %" PRIu64 ", expected %" PRIu64 " (non-monotonic log)",
                        s.bad_lsn, seg->first_lsn + s.records);
        goto out;
    case WAL_SCAN_CORRUPT:
        rc = disk_fault(w, seg->first_lsn, s.end,
                        "bad record (%s) followed by a valid record at offset %zu: "
                        "corruption in the middle of the log",
                        wal_decode_strerror(s.bad_rc), s.valid_off);
        goto out;
    case WAL_SCAN_TORN:
        if (!last) {
            rc = disk_fault(w, seg->first_lsn, s.end,
                            "bad record (%s) in a segment that is not the last",
                            wal_decode_strerror(s.bad_rc));
            goto out;
        }
        /* Zeros are what a crash leaves of the zeros written ahead of the
         * records (zero_ahead): expected after every crash, so not a
         * warning. Anything else is a record torn in the middle. */
        if (mem_is_zero(m.p + s.end, m.len - s.end))
            LOG_I("event=wal_torn_tail node=%u file=%s/%s offset=%zu cut_bytes=%zu "
                  "records_kept=%" PRIu64 " what=\"zeros past the last record\" "
                  "action=\"cut at the last good record\"",
                  w->node, w->dir, name, s.end, m.len - s.end, s.records);
        else
            LOG_W("event=wal_torn_tail node=%u file=%s/%s offset=%zu cut_bytes=%zu "
                  "records_kept=%" PRIu64 " what=\"%s\" action=\"cut at the last good record\"",
                  w->node, w->dir, name, s.end, m.len - s.end, s.records,
                  wal_decode_strerror(s.bad_rc));
        seg_unmap(&m);
        if (ftruncate(m.fd, (off_t)s.end) != 0) {
            rc = -errno;
            LOG_E("event=wal_open_failed node=%u file=%s/%s what=\"cutting a torn tail\" errno=%d",
                  w->node, w->dir, name, -rc);
            goto out;
        }
        w->recovered_cut_bytes += m.len - s.end;
        break;
    }
    /* What recovery found may still be only in the page cache (the writer
     * died before its wal_sync): make it durable before it is reported
     * durable, and make a cut durable before anything is appended after
     * it. Earlier segments were synced when the writer rolled past them. */
    if (last) {
        rc = sync_fd(w, m.fd, false);
        if (rc) {
            LOG_E("event=wal_open_failed node=%u file=%s/%s what=\"fdatasync of the last segment\" errno=%d",
                  w->node, w->dir, name, -rc);
            goto out;
        }
    }
    seg->bytes = s.end;
    if (last)
        w->live_file_bytes = s.end;
    *expect = seg->first_lsn + s.records;
    w->recovered_records += s.records;
out:
    seg_unmap(&m);
    if (rc == 0 && last)
        w->fd = m.fd;
    else
        close(m.fd);
    return rc;
}

static int cmp_seg(const void *a, const void *b)
{
    uint64_t x = ((const struct wal_segment *)a)->first_lsn;
    uint64_t y = ((const struct wal_segment *)b)->first_lsn;
    return x < y ? -1 : x > y;
}

/* Fills w->segs from the directory listing, in LSN order. */
static int list_segments(struct wal *w)
{
    int fd = openat(w->dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    DIR *d = fdopendir(fd);
    if (!d) {
        int err = -errno;
        close(fd);
        return err;
    }
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        uint64_t first;
        if (e->d_name[0] == '.')
            continue;
        if (spare_name_parse(e->d_name, &first)) {
            if (w->nspares < WAL_SPARES_MAX)
                w->spares[w->nspares++] = first;
            else
                unlinkat(w->dir_fd, e->d_name, 0);
            continue;
        }
        if (!seg_name_parse(e->d_name, &first)) {
            LOG_W("event=wal_ignored_file node=%u file=%s/%s what=\"not a segment name\"",
                  w->node, w->dir, e->d_name);
            continue;
        }
        rc = segs_push(w, first, 0);
    }
    closedir(d);
    if (rc == 0 && w->nsegs > 1)
        qsort(w->segs, w->nsegs, sizeof *w->segs, cmp_seg);
    return rc;
}

static int fsync_parent(const char *dir)
{
    char *copy = strdup(dir);
    if (!copy)
        return -ENOMEM;
    size_t n = strlen(copy);
    while (n > 1 && copy[n - 1] == '/')
        copy[--n] = 0;
    char *slash = strrchr(copy, '/');
    const char *parent = ".";
    if (slash == copy)
        parent = "/";
    else if (slash) {
        *slash = 0;
        parent = copy;
    }
    int fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = 0;
    if (fd < 0 || fsync(fd) != 0)
        rc = -errno;
    if (fd >= 0)
        close(fd);
    free(copy);
    return rc;
}

static int open_dir(struct wal *w)
{
    if (mkdir(w->dir, 0755) == 0) {
        int rc = fsync_parent(w->dir);
        if (rc)
            return rc;
    } else if (errno != EEXIST) {
        return -errno;
    }
    w->dir_fd = open(w->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (w->dir_fd < 0)
        return -errno;
    if (flock(w->dir_fd, LOCK_EX | LOCK_NB) != 0)
        return errno == EWOULDBLOCK ? -EBUSY : -errno;
    return 0;
}

static void wal_free(struct wal *w)
{
    if (w->fd >= 0)
        close(w->fd);
    if (w->dir_fd >= 0)
        close(w->dir_fd);
    pthread_mutex_destroy(&w->truncate_mu);
    pthread_mutex_destroy(&w->write_mu);
    pthread_mutex_destroy(&w->sync_mu);
    pthread_cond_destroy(&w->sync_cv);
    free(w->segs);
    free(w->dir);
    free(w);
}

static int recover(struct wal *w)
{
    int rc = list_segments(w);
    if (rc)
        return rc;
    if (w->nsegs == 0) {
        rc = segment_create(w, 1, &w->fd);
        if (rc)
            return rc;
        w->live_file_bytes = WAL_SEGMENT_HEADER_BYTES;
        w->next_lsn = 1;
        return segs_push(w, 1, WAL_SEGMENT_HEADER_BYTES);
    }
    uint64_t expect = 0;
    for (size_t i = 0; i < w->nsegs; i++) {
        rc = recover_segment(w, &w->segs[i], i + 1 == w->nsegs, &expect);
        if (rc)
            return rc;
    }
    w->next_lsn = expect;
    return 0;
}

int wal_open(const char *dir, const struct wal_options *opts, struct wal **out)
{
    struct wal_options o = opts ? *opts : (struct wal_options){0};
    if (!o.segment_bytes)
        o.segment_bytes = WAL_SEGMENT_BYTES_DEFAULT;
    if (!o.record_bytes_max)
        o.record_bytes_max = WAL_RECORD_BYTES_DEFAULT;
    if (o.segment_bytes < 64 || o.record_bytes_max > WAL_RECORD_BYTES_LIMIT)
        return -EINVAL;

    struct wal *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->dir = strdup(dir);
    w->fd = w->dir_fd = w->syncing_fd = w->retired_fd = -1;
    w->node = o.node;
    w->segment_bytes = o.segment_bytes;
    w->record_bytes_max = o.record_bytes_max;
    pthread_mutex_init(&w->truncate_mu, NULL);
    pthread_mutex_init(&w->write_mu, NULL);
    pthread_mutex_init(&w->sync_mu, NULL);
    pthread_cond_init(&w->sync_cv, NULL);
    if (!w->dir) {
        wal_free(w);
        return -ENOMEM;
    }
    int rc = open_dir(w);
    if (rc == 0)
        rc = recover(w);
    if (rc) {
        if (rc != -EBADMSG && rc != -EPROTONOSUPPORT)
            LOG_E("event=wal_open_failed node=%u dir=%s errno=%d error=\"%s\"",
                  w->node, dir, -rc, strerror(-rc));
        wal_free(w);
        return rc;
    }
    /* Everything recovered is durable: older segments were synced before
     * the roll past them, and recover_segment fdatasynced the last one. */
    atomic_store(&w->last_lsn, w->next_lsn - 1);
    atomic_store(&w->durable_lsn, w->next_lsn - 1);
    atomic_store(&w->first_lsn, w->segs[0].first_lsn);
    LOG_I("event=wal_open node=%u dir=%s segments=%zu first_lsn=%" PRIu64
          " last_lsn=%" PRIu64 " cut_bytes=%" PRIu64,
          w->node, dir, w->nsegs, w->segs[0].first_lsn, w->next_lsn - 1,
          w->recovered_cut_bytes);
    *out = w;
    return 0;
}

int wal_close(struct wal *w)
{
    int rc = atomic_load(&w->failed) ? 0 : cut_recycled_tail(w);
    if (rc < 0 || (rc == 1 && sync_fd(w, w->fd, false) != 0))
        set_failed(w, "cutting a recycled segment at close", -EIO);
    rc = wal_sync(w, atomic_load(&w->last_lsn));
    if (atomic_load(&w->failed))
        rc = -EIO;
    wal_free(w);
    return rc;
}

/* --------------------------------------------------------------- replay */

/* Replays one segment's records >= from_lsn. Called with write_mu held. */
static int replay_segment(struct wal *w, const struct wal_segment *seg,
                          uint64_t from_lsn, wal_replay_fn fn, void *ctx)
{
    struct seg_map m;
    int rc = seg_map_open(w, seg->first_lsn, O_RDONLY, &m);
    if (rc)
        return rc;
    if (m.len < seg->bytes) {
        rc = disk_fault(w, seg->first_lsn, m.len,
                        "segment shrank to %zu bytes since open (expected %" PRIu64 ")",
                        m.len, seg->bytes);
        goto out;
    }
    size_t off = WAL_SEGMENT_HEADER_BYTES;
    uint64_t lsn = seg->first_lsn;
    /* Bounded: each pass consumes one record of at least a header. */
    while (off < seg->bytes) {
        struct wal_record rec;
        ssize_t n = wal_record_decode(m.p + off, seg->bytes - off,
                                      w->record_bytes_max, &rec);
        if (n < 0 || rec.lsn != lsn) {
            rc = disk_fault(w, seg->first_lsn, off, "record no longer verifies at replay (%s)",
                            n < 0 ? wal_decode_strerror((int)n) : "lsn out of order");
            goto out;
        }
        if (lsn >= from_lsn) {
            rc = fn(ctx, lsn, rec.type, rec.data, rec.len);
            if (rc)
                goto out;
        }
        off += (size_t)n;
        lsn++;
    }
out:
    seg_unmap(&m);
    close(m.fd);
    return rc;
}

int wal_replay(struct wal *w, uint64_t from_lsn, wal_replay_fn fn, void *ctx)
{
    int rc = 0;
    pthread_mutex_lock(&w->write_mu);
    for (size_t i = 0; i < w->nsegs && rc == 0; i++) {
        if (i + 1 < w->nsegs && w->segs[i + 1].first_lsn <= from_lsn)
            continue;
        if (w->segs[i].bytes > WAL_SEGMENT_HEADER_BYTES)
            rc = replay_segment(w, &w->segs[i], from_lsn, fn, ctx);
    }
    pthread_mutex_unlock(&w->write_mu);
    return rc;
}

/* ------------------------------------------------------------- truncate */

int wal_truncate_before(struct wal *w, uint64_t lsn)
{
    pthread_mutex_lock(&w->truncate_mu);
    /* Re-logged state must be on disk before the old copies go. */
    int rc = wal_sync(w, atomic_load(&w->last_lsn));
    if (rc) {
        pthread_mutex_unlock(&w->truncate_mu);
        return rc;
    }
    /* The segments leave the list under write_mu; their files are deleted
     * after it, so appends do not wait for the unlinks and fsyncs. Nothing
     * reads a segment off the list: replay runs only before appends. */
    pthread_mutex_lock(&w->write_mu);
    rc = atomic_load(&w->failed);
    const struct wal_segment *live = &w->segs[w->nsegs - 1];
    if (rc == 0 && w->next_lsn > live->first_lsn && w->next_lsn <= lsn)
        rc = roll(w);
    size_t gone = 0;
    while (rc == 0 && gone + 1 < w->nsegs && w->segs[gone + 1].first_lsn <= lsn)
        gone++;
    uint64_t *firsts = NULL;
    if (gone) {
        firsts = malloc(gone * sizeof *firsts);
        if (!firsts) {
            gone = 0;
            rc = -ENOMEM;
        }
    }
    for (size_t i = 0; i < gone; i++)
        firsts[i] = w->segs[i].first_lsn;
    if (gone) {
        memmove(w->segs, w->segs + gone, (w->nsegs - gone) * sizeof *w->segs);
        w->nsegs -= gone;
        atomic_store(&w->first_lsn, w->segs[0].first_lsn);
    }
    pthread_mutex_unlock(&w->write_mu);
    /* Oldest first, each durable before the next: a crash leaves a
     * contiguous suffix. The live segment is never deleted. A segment is
     * renamed to a spare while there is room for one (only this function
     * adds spares, under truncate_mu), otherwise unlinked. */
    size_t deleted = 0;
    for (; rc == 0 && deleted < gone; deleted++) {
        char name[SEG_NAME_LEN + 1], spare[SPARE_NAME_LEN + 1];
        seg_name(name, firsts[deleted]);
        spare_name(spare, firsts[deleted]);
        pthread_mutex_lock(&w->write_mu);
        bool keep = w->nspares < WAL_SPARES_MAX;
        pthread_mutex_unlock(&w->write_mu);
        int err = keep ? renameat(w->dir_fd, name, w->dir_fd, spare) : unlinkat(w->dir_fd, name, 0);
        if (err != 0 && errno != ENOENT) {
            rc = -errno;
            LOG_E("event=wal_truncate_failed node=%u file=%s/%s errno=%d error=\"%s\"",
                  w->node, w->dir, name, -rc, strerror(-rc));
            break;
        }
        atomic_fetch_add(&w->n_segments_deleted, 1);
        rc = sync_fd(w, w->dir_fd, true);
        if (rc) {
            LOG_E("event=wal_truncate_failed node=%u dir=%s what=\"directory fsync after unlink\" errno=%d",
                  w->node, w->dir, -rc);
            rc = -EIO;
        } else if (keep && err == 0) {
            pthread_mutex_lock(&w->write_mu);
            w->spares[w->nspares++] = firsts[deleted];
            pthread_mutex_unlock(&w->write_mu);
        }
    }
    free(firsts);
    if (deleted)
        LOG_I("event=wal_truncate node=%u before_lsn=%" PRIu64 " segments_deleted=%zu first_lsn=%" PRIu64,
              w->node, lsn, deleted, atomic_load(&w->first_lsn));
    pthread_mutex_unlock(&w->truncate_mu);
    return rc == -ENOMEM ? rc : (rc ? -EIO : 0);
}
