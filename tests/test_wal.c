/* Tests of the write-ahead log (consensus/wal.h) on real files in a mkdtemp
 * directory: round trips across rolls and reopen, recovery from a cut at
 * every byte offset and from a flipped byte at every position, SIGKILL of a
 * writer, group commit, prefix truncation, and injected I/O faults.
 *
 * Payloads are pure functions of the LSN (model_payload), so replay checks
 * every byte of every record against what was appended. */
#include "consensus/wal.h"

#include "base/assert.h"
#include "base/buf.h"
#include "base/crc32c.h"
#include "base/fault.h"
#include "base/log.h"
#include <stddef.h> /* base/prng.h uses size_t without it */
#include "base/prng.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------ fixture */

static char root[64];
static char dir[128];

/* Captured log lines, so tests can check what recovery reported. */
static char logbuf[1 << 16];
static size_t loglen;

/* Keeps each line as the default sink prints it after the time stamp,
 * "level=NAME line", so that tests can look for a level too. */
static void capture_sink(void *ctx, enum log_level level, const char *line)
{
    (void)ctx;
    static const char *const names[] = {"debug", "info", "warn", "error"};
    char full[1100];
    snprintf(full, sizeof full, "level=%s %s", level < 4 ? names[level] : "off", line);
    size_t n = strlen(full);
    if (loglen + n + 2 > sizeof logbuf)
        loglen = 0; /* keep the newest lines */
    memcpy(logbuf + loglen, full, n);
    logbuf[loglen + n] = '\n';
    loglen += n + 1;
    logbuf[loglen] = 0;
}

static void log_reset(void)
{
    loglen = 0;
    logbuf[0] = 0;
}

static void rm_dir_files(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char p[PATH_MAX];
        if (snprintf(p, sizeof p, "%s/%s", path, e->d_name) < (int)sizeof p)
            unlink(p);
    }
    closedir(d);
}

static void setup(void)
{
    snprintf(root, sizeof root, "/tmp/paxfs-test-wal-XXXXXX");
    cr_assert_not_null(mkdtemp(root));
    snprintf(dir, sizeof dir, "%s/wal", root);
    log_reset();
    log_set_sink(capture_sink, NULL);
    log_set_level(LOG_INFO);
}

static void teardown(void)
{
    fault_disarm_all();
    log_set_sink(NULL, NULL);
    rm_dir_files(dir);
    rmdir(dir);
    rm_dir_files(root);
    rmdir(root);
}

TestSuite(wal, .init = setup, .fini = teardown);

/* --------------------------------------------------------- the model */

static uint8_t model_type(uint64_t lsn) { return (uint8_t)(lsn % 250 + 1); }

static void model_payload(uint64_t lsn, uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)(lsn * 131 + i * 7 + (i >> 9));
}

typedef size_t (*len_fn)(uint64_t lsn);

/* Sizes that cross every interesting boundary, 1 MiB included. */
static size_t len_varied(uint64_t lsn)
{
    static const size_t sizes[] = {0, 1, 7, 100, 4096, 65535, 300, 20, 1 << 20, 12345};
    return sizes[lsn % ARRAY_LEN(sizes)];
}

/* Small records for the every-byte tests; lsn 3 is empty. */
static size_t len_small(uint64_t lsn) { return lsn == 3 ? 0 : (size_t)((lsn * 37) % 61); }

static size_t len_100(uint64_t lsn) { (void)lsn; return 100; }

/* The same pair as in wal_crash_child.c. */
static size_t crash_len(uint64_t lsn)
{
    if (lsn % 61 == 0)
        return 40000 + (size_t)(lsn % 7) * 5000;
    return (size_t)((lsn * 2654435761u) % 1500);
}

static uint8_t *scratch(size_t len)
{
    static uint8_t *buf;
    static size_t cap;
    if (len > cap) {
        free(buf);
        cap = len;
        buf = malloc(cap);
        cr_assert_not_null(buf);
    }
    return buf;
}

static void append_model(struct wal *w, len_fn len_of, uint64_t want)
{
    size_t len = len_of(want);
    uint8_t *p = scratch(len + 1);
    model_payload(want, p, len);
    uint64_t lsn = 0;
    int rc = wal_append(w, model_type(want), p, len, &lsn);
    cr_assert_eq(rc, 0, "append lsn %" PRIu64 ": %d", want, rc);
    cr_assert_eq(lsn, want);
}

static void append_n(struct wal *w, len_fn len_of, int n)
{
    for (int i = 0; i < n; i++)
        append_model(w, len_of, wal_last_lsn(w) + 1);
}

struct check {
    len_fn len_of;
    uint64_t first; /* first LSN seen */
    uint64_t next;  /* expected next LSN; 0 before the first */
    uint64_t count;
    uint64_t stop_at; /* return 7 at this LSN (0: never) */
    char why[160];
};

static int check_record(void *ctx, uint64_t lsn, uint8_t type, const void *data,
                        size_t len)
{
    struct check *c = ctx;
    if (c->next && lsn != c->next) {
        snprintf(c->why, sizeof c->why, "lsn %" PRIu64 " after %" PRIu64, lsn, c->next - 1);
        return 1;
    }
    if (type != model_type(lsn) || len != c->len_of(lsn)) {
        snprintf(c->why, sizeof c->why, "lsn %" PRIu64 " type %u len %zu", lsn, type, len);
        return 2;
    }
    uint8_t *want = scratch(len + 1);
    model_payload(lsn, want, len);
    if (len && memcmp(want, data, len) != 0) {
        snprintf(c->why, sizeof c->why, "lsn %" PRIu64 " payload differs", lsn);
        return 3;
    }
    if (!c->next)
        c->first = lsn;
    c->next = lsn + 1;
    c->count++;
    return c->stop_at && lsn == c->stop_at ? 7 : 0;
}

/* Replays everything and checks it against the model; returns the count. */
static uint64_t replay_check(struct wal *w, len_fn len_of, uint64_t from)
{
    struct check c = {.len_of = len_of};
    int rc = wal_replay(w, from, check_record, &c);
    cr_assert_eq(rc, 0, "replay: rc=%d %s", rc, c.why);
    if (c.count)
        cr_assert_eq(c.next - 1, wal_last_lsn(w), "replay ends at %" PRIu64 " not %" PRIu64,
                     c.next - 1, wal_last_lsn(w));
    return c.count;
}

static struct wal *open_ok(const struct wal_options *o)
{
    struct wal *w = NULL;
    int rc = wal_open(dir, o, &w);
    cr_assert_eq(rc, 0, "wal_open: %d\n%s", rc, logbuf);
    return w;
}

static void seg_path(char *out, size_t cap, uint64_t first_lsn)
{
    snprintf(out, cap, "%s/%020" PRIu64 ".seg", dir, first_lsn);
}

/* The first LSNs of the segment files, sorted; returns how many. */
static size_t list_segs(uint64_t *out, size_t cap)
{
    size_t n = 0;
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *dot = strrchr(e->d_name, '.');
        if (!dot || strcmp(dot, ".seg") != 0)
            continue;
        cr_assert_lt(n, cap);
        out[n++] = strtoull(e->d_name, NULL, 10);
    }
    closedir(d);
    for (size_t i = 1; i < n; i++) /* insertion sort: n is small */
        for (size_t j = i; j > 0 && out[j - 1] > out[j]; j--) {
            uint64_t t = out[j];
            out[j] = out[j - 1];
            out[j - 1] = t;
        }
    return n;
}

static uint8_t *read_all(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    cr_assert_geq(fd, 0, "open %s", path);
    struct stat st;
    cr_assert_eq(fstat(fd, &st), 0);
    uint8_t *p = malloc((size_t)st.st_size + 1);
    cr_assert_not_null(p);
    cr_assert_eq(pread(fd, p, (size_t)st.st_size, 0), st.st_size);
    close(fd);
    *len = (size_t)st.st_size;
    return p;
}

static void write_all(const char *path, const uint8_t *p, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert_geq(fd, 0, "open %s", path);
    cr_assert_eq(write(fd, p, len), (ssize_t)len);
    close(fd);
}

/* Record frame offsets of a one-segment image written from lsn 1 with
 * len_of: ends[i] is the offset just past record i+1. */
static void frame_ends(len_fn len_of, int n, size_t *ends)
{
    size_t off = WAL_SEGMENT_HEADER_BYTES;
    for (int i = 0; i < n; i++) {
        off += WAL_RECORD_HEADER_BYTES + len_of((uint64_t)i + 1);
        ends[i] = off;
    }
}

/* Builds a one-segment WAL of n small records and returns its image. */
static uint8_t *small_image(int n, size_t *len)
{
    struct wal *w = open_ok(NULL);
    append_n(w, len_small, n);
    cr_assert_eq(wal_close(w), 0);
    uint64_t segs[4];
    cr_assert_eq(list_segs(segs, 4), 1);
    char p[PATH_MAX];
    seg_path(p, sizeof p, 1);
    return read_all(p, len);
}

/* -------------------------------------------------------------- codec */

Test(wal, record_frame_round_trips_through_decode)
{
    uint8_t buf[WAL_RECORD_HEADER_BYTES + 300];
    model_payload(9, buf + WAL_RECORD_HEADER_BYTES, 300);
    wal_record_frame(buf, 9, 42, buf + WAL_RECORD_HEADER_BYTES, 300);
    struct wal_record r;
    cr_assert_eq(wal_record_decode(buf, sizeof buf, 1000, &r), (ssize_t)sizeof buf);
    cr_assert_eq(r.lsn, 9);
    cr_assert_eq(r.type, 42);
    cr_assert_eq(r.len, 300);
    cr_assert_eq(r.data, buf + WAL_RECORD_HEADER_BYTES);
    /* Short at every length is -ENODATA, never a read past the end. */
    for (size_t n = 0; n < sizeof buf; n++)
        cr_assert_eq(wal_record_decode(buf, n, 1000, &r), -ENODATA, "n=%zu", n);
    cr_assert_eq(wal_record_decode(buf, sizeof buf, 299, &r), -EMSGSIZE);
    buf[100] ^= 1;
    cr_assert_eq(wal_record_decode(buf, sizeof buf, 1000, &r), -EBADMSG);
}

Test(wal, segment_header_decoder_checks_magic_crc_and_version)
{
    uint8_t h[WAL_SEGMENT_HEADER_BYTES];
    uint64_t first = 0;
    wal_segment_header_encode(h, 77);
    cr_assert_eq(wal_segment_header_decode(h, sizeof h, &first), 0);
    cr_assert_eq(first, 77);
    cr_assert_eq(wal_segment_header_decode(h, sizeof h - 1, &first), -ENODATA);
    for (size_t i = 0; i < sizeof h; i++) {
        h[i] ^= 0x10;
        cr_assert_eq(wal_segment_header_decode(h, sizeof h, &first), -EBADMSG, "i=%zu", i);
        h[i] ^= 0x10;
    }
    /* A well-formed header of another version is not "corrupt". */
    le_put_u32(h + 8, WAL_FORMAT_VERSION + 1);
    le_put_u32(h + 28, crc32c(0, h, 28));
    cr_assert_eq(wal_segment_header_decode(h, sizeof h, &first), -EPROTONOSUPPORT);
}

/* ---------------------------------------------------------- round trip */

Test(wal, round_trip_survives_rolls_and_reopen)
{
    struct wal_options o = {.segment_bytes = 256 << 10};
    struct wal *w = open_ok(&o);
    cr_assert_eq(wal_last_lsn(w), 0);
    cr_assert_eq(wal_first_lsn(w), 1);
    cr_assert_eq(replay_check(w, len_varied, 1), 0);
    append_n(w, len_varied, 60);
    cr_assert_eq(wal_sync(w, 60), 0);
    cr_assert_geq(wal_durable_lsn(w), 60);
    cr_assert_eq(replay_check(w, len_varied, 1), 60);
    struct wal_stats st;
    wal_get_stats(w, &st);
    cr_assert_eq(st.appends, 60);
    cr_assert_gt(st.segments_created, 3, "rolled %" PRIu64 " times", st.segments_created);
    cr_assert_eq(wal_close(w), 0);

    w = open_ok(&o);
    cr_assert_eq(wal_last_lsn(w), 60);
    cr_assert_eq(wal_durable_lsn(w), 60);
    cr_assert_eq(replay_check(w, len_varied, 1), 60);
    /* Appends continue at last + 1, and replay can start in the middle. */
    append_n(w, len_varied, 25);
    cr_assert_eq(replay_check(w, len_varied, 1), 85);
    cr_assert_eq(replay_check(w, len_varied, 41), 45);
    cr_assert_eq(replay_check(w, len_varied, 86), 0);
    cr_assert_eq(wal_close(w), 0);

    w = open_ok(NULL); /* other segment size: reading does not depend on it */
    cr_assert_eq(replay_check(w, len_varied, 1), 85);
    wal_get_stats(w, &st);
    cr_assert_eq(st.recovered_records, 85);
    cr_assert_eq(st.recovered_cut_bytes, 0);
    cr_assert_eq(wal_close(w), 0);
    cr_assert_null(strstr(logbuf, "level=warn"));
    cr_assert_null(strstr(logbuf, "wal_torn"));
}

Test(wal, appendv_writes_the_same_record_as_append)
{
    uint8_t whole[300];
    model_payload(1, whole, sizeof whole);
    struct wal *w = open_ok(NULL);
    struct iovec v[3] = {{whole, 10}, {whole + 10, 0}, {whole + 10, 290}};
    uint64_t lsn = 0;
    cr_assert_eq(wal_appendv(w, model_type(1), v, 3, &lsn), 0);
    cr_assert_eq(lsn, 1);
    cr_assert_eq(wal_appendv(w, model_type(2), NULL, 0, &lsn), 0);
    cr_assert_eq(lsn, 2);
    cr_assert_eq(wal_close(w), 0);
    char p[PATH_MAX];
    seg_path(p, sizeof p, 1);
    size_t len;
    uint8_t *img = read_all(p, &len);
    uint8_t hdr[WAL_RECORD_HEADER_BYTES];
    wal_record_frame(hdr, 1, model_type(1), whole, sizeof whole);
    cr_assert_eq(len, WAL_SEGMENT_HEADER_BYTES + 2 * WAL_RECORD_HEADER_BYTES + sizeof whole);
    cr_assert_arr_eq(img + WAL_SEGMENT_HEADER_BYTES, hdr, sizeof hdr);
    cr_assert_arr_eq(img + WAL_SEGMENT_HEADER_BYTES + sizeof hdr, whole, sizeof whole);
    free(img);
}

Test(wal, replay_stops_at_a_nonzero_callback_return_and_passes_it_up)
{
    struct wal *w = open_ok(NULL);
    append_n(w, len_100, 10);
    struct check c = {.len_of = len_100, .stop_at = 4};
    cr_assert_eq(wal_replay(w, 1, check_record, &c), 7);
    cr_assert_eq(c.count, 4);
    cr_assert_eq(wal_close(w), 0);
}

Test(wal, bad_arguments_are_rejected)
{
    struct wal_options o = {.record_bytes_max = 1000};
    struct wal *w = open_ok(&o);
    uint8_t p[1001] = {0};
    uint64_t lsn = 0;
    cr_assert_eq(wal_append(w, 1, p, 1001, &lsn), -EINVAL);
    cr_assert_eq(wal_append(w, 0, p, 10, &lsn), -EINVAL);
    cr_assert_eq(wal_append(w, 1, p, 1000, &lsn), 0);
    cr_assert_eq(lsn, 1);
    cr_assert_eq(wal_sync(w, 2), -EINVAL);
    cr_assert_eq(wal_sync(w, 0), 0);
    struct wal *again = NULL;
    cr_assert_eq(wal_open(dir, NULL, &again), -EBUSY);
    cr_assert_null(again);
    cr_assert_eq(wal_close(w), 0);
    o.record_bytes_max = WAL_RECORD_BYTES_LIMIT + 1;
    cr_assert_eq(wal_open(dir, &o, &again), -EINVAL);
}

/* ------------------------------------------------- crash and corruption */

Test(wal, recovery_keeps_exactly_the_records_written_before_a_cut_at_every_offset)
{
    enum { N = 20 };
    size_t len;
    uint8_t *img = small_image(N, &len);
    size_t ends[N];
    frame_ends(len_small, N, ends);
    cr_assert_eq(ends[N - 1], len);
    char p[PATH_MAX];
    seg_path(p, sizeof p, 1);

    for (size_t cut = 0; cut <= len; cut++) {
        write_all(p, img, cut);
        log_reset();
        struct wal *w = open_ok(NULL);
        uint64_t kept = 0;
        while (kept < N && ends[kept] <= cut)
            kept++;
        size_t good = kept ? ends[kept - 1] : WAL_SEGMENT_HEADER_BYTES;
        cr_assert_eq(wal_last_lsn(w), kept, "cut=%zu", cut);
        cr_assert_eq(replay_check(w, len_small, 1), kept);
        struct wal_stats st;
        wal_get_stats(w, &st);
        if (cut < WAL_SEGMENT_HEADER_BYTES) {
            cr_assert_not_null(strstr(logbuf, "event=wal_torn_header"), "cut=%zu\n%s", cut, logbuf);
        } else if (cut != good) {
            char want[64];
            snprintf(want, sizeof want, "offset=%zu cut_bytes=%zu", good, cut - good);
            cr_assert_not_null(strstr(logbuf, "event=wal_torn_tail"), "cut=%zu\n%s", cut, logbuf);
            cr_assert_not_null(strstr(logbuf, want), "cut=%zu want %s\n%s", cut, want, logbuf);
            cr_assert_eq(st.recovered_cut_bytes, cut - good);
        } else {
            cr_assert_null(strstr(logbuf, "wal_torn"), "cut=%zu\n%s", cut, logbuf);
        }
        /* The cut is durable and the log goes on from there. */
        if (cut % 5 == 0) {
            append_model(w, len_small, kept + 1);
            cr_assert_eq(wal_close(w), 0);
            w = open_ok(NULL);
            cr_assert_eq(replay_check(w, len_small, 1), kept + 1);
        }
        cr_assert_eq(wal_close(w), 0);
    }
    free(img);
}

/* Flips every byte of a record's frame in turn. A damaged last record is a
 * torn tail (cut); a damaged earlier record, with good records after it,
 * is a disk fault that must refuse to open. */
Test(wal, flipped_byte_in_the_last_record_is_cut_and_elsewhere_refuses_to_open)
{
    enum { N = 20 };
    size_t len;
    uint8_t *img = small_image(N, &len);
    size_t ends[N];
    frame_ends(len_small, N, ends);
    char p[PATH_MAX];
    seg_path(p, sizeof p, 1);
    const int victims[] = {0, 1, 2, 9, 18, 19};

    for (size_t v = 0; v < ARRAY_LEN(victims); v++) {
        int k = victims[v];
        size_t start = k ? ends[k - 1] : WAL_SEGMENT_HEADER_BYTES;
        for (size_t at = start; at < ends[k]; at++) {
            uint8_t flip = (uint8_t)(at % 2 ? 0xff : 0x01);
            img[at] ^= flip;
            write_all(p, img, len);
            img[at] ^= flip;
            log_reset();
            struct wal *w = NULL;
            int rc = wal_open(dir, NULL, &w);
            if (k == N - 1) {
                cr_assert_eq(rc, 0, "record %d byte %zu: %d\n%s", k, at, rc, logbuf);
                cr_assert_eq(replay_check(w, len_small, 1), N - 1);
                char want[64];
                snprintf(want, sizeof want, "offset=%zu cut_bytes=%zu", start, len - start);
                cr_assert_not_null(strstr(logbuf, want), "%s\n%s", want, logbuf);
                cr_assert_eq(wal_close(w), 0);
            } else {
                cr_assert_eq(rc, -EBADMSG, "record %d byte %zu: %d", k, at, rc);
                cr_assert_null(w);
                char want[64];
                snprintf(want, sizeof want, "offset=%zu ", start);
                cr_assert_not_null(strstr(logbuf, "event=wal_disk_fault"), "%s", logbuf);
                cr_assert_not_null(strstr(logbuf, want), "%s\n%s", want, logbuf);
                cr_assert_not_null(strstr(logbuf, "rebuild the replica from its peers"));
            }
        }
    }
    free(img);
}

Test(wal, zero_filled_tail_counts_as_torn)
{
    struct wal *w = open_ok(NULL);
    append_n(w, len_small, 10);
    cr_assert_eq(wal_close(w), 0);
    char p[PATH_MAX];
    seg_path(p, sizeof p, 1);
    size_t len;
    uint8_t *img = read_all(p, &len);
    uint8_t *big = calloc(1, len + 8192);
    memcpy(big, img, len);
    write_all(p, big, len + 8192);
    w = open_ok(NULL);
    cr_assert_eq(replay_check(w, len_small, 1), 10);
    struct wal_stats st;
    wal_get_stats(w, &st);
    cr_assert_eq(st.recovered_cut_bytes, 8192);
    cr_assert_not_null(strstr(logbuf, "event=wal_torn_tail"));
    cr_assert_eq(wal_close(w), 0);
    free(img);
    free(big);
}

static uint64_t file_size(const char *path)
{
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "%s", path);
    return (uint64_t)st.st_size;
}

/* The end of the records 1..n of len_of in the first segment. */
static uint64_t records_end(len_fn len_of, uint64_t n)
{
    uint64_t end = WAL_SEGMENT_HEADER_BYTES;
    for (uint64_t lsn = 1; lsn <= n; lsn++)
        end += WAL_RECORD_HEADER_BYTES + len_of(lsn);
    return end;
}

/* Small records go over zeros written a MiB ahead (wal.c, zero_ahead): the
 * file does not grow with each one. What a crash leaves past the last
 * record is zeros, cut at the next open like any torn tail but logged as
 * info, not as a warning; a clean close cuts them itself. */
Test(wal, small_records_overwrite_zeros_written_ahead)
{
    char p[PATH_MAX];
    seg_path(p, sizeof p, 1);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) { /* appends, syncs, and dies without closing (no cr_assert here) */
        struct wal *w = NULL;
        if (wal_open(dir, NULL, &w) != 0)
            _exit(2);
        uint8_t buf[64];
        for (uint64_t lsn = 1; lsn <= 10; lsn++) {
            uint64_t got = 0;
            model_payload(lsn, buf, len_small(lsn));
            if (wal_append(w, model_type(lsn), buf, len_small(lsn), &got) != 0 || got != lsn)
                _exit(3);
        }
        struct stat sb;
        _exit(wal_sync(w, 10) == 0 && stat(p, &sb) == 0 &&
                      (uint64_t)sb.st_size == records_end(len_small, 1) + (1u << 20)
                  ? 0 : 4);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: status %d", status);
    size_t len;
    uint8_t *img = read_all(p, &len);
    uint64_t end = records_end(len_small, 10);
    for (size_t i = end; i < len; i++)
        cr_assert_eq(img[i], 0, "byte %zu past the records", i);
    free(img);

    log_reset();
    struct wal *w = open_ok(NULL);
    cr_assert_eq(replay_check(w, len_small, 1), 10);
    struct wal_stats st;
    wal_get_stats(w, &st);
    cr_assert_eq(st.recovered_cut_bytes, len - end);
    cr_assert_not_null(strstr(logbuf, "event=wal_torn_tail"));
    cr_assert_null(strstr(logbuf, "level=warn"), "zeros are not news:\n%s", logbuf);
    append_n(w, len_small, 5);
    cr_assert_gt(file_size(p), records_end(len_small, 15));
    cr_assert_eq(wal_close(w), 0);
    cr_assert_eq(file_size(p), records_end(len_small, 15), "close cuts the zeros");

    log_reset();
    w = open_ok(NULL);
    cr_assert_eq(replay_check(w, len_small, 1), 15);
    cr_assert_null(strstr(logbuf, "wal_torn"), "%s", logbuf);
    cr_assert_eq(wal_close(w), 0);
}

/* Zeros never go past segment_bytes, and a record too large to gain from
 * them (more than 64 KiB) is appended as it is. */
static size_t len_big_first(uint64_t lsn) { return lsn == 1 ? 100000 : 50; }

Test(wal, zeros_ahead_stop_at_the_segment_size_and_skip_large_records)
{
    struct wal *w = open_ok(NULL);
    append_n(w, len_big_first, 1);
    char p[PATH_MAX];
    seg_path(p, sizeof p, 1);
    cr_assert_eq(file_size(p), records_end(len_big_first, 1));
    cr_assert_eq(wal_close(w), 0);
    rm_dir_files(dir);

    struct wal_options o = {.segment_bytes = 1000};
    w = open_ok(&o);
    append_n(w, len_100, 3);
    cr_assert_eq(file_size(p), 1000);
    append_n(w, len_100, 20); /* rolls: each full segment is cut at its last record */
    uint64_t segs[64];
    size_t n = list_segs(segs, 64);
    cr_assert_gt(n, 2);
    for (size_t i = 0; i + 1 < n; i++) {
        seg_path(p, sizeof p, segs[i]);
        cr_assert_eq(file_size(p),
                     WAL_SEGMENT_HEADER_BYTES + (segs[i + 1] - segs[i]) * (WAL_RECORD_HEADER_BYTES + 100),
                     "segment %" PRIu64, segs[i]);
    }
    cr_assert_eq(replay_check(w, len_100, 1), 23);
    cr_assert_eq(wal_close(w), 0);
}

/* Builds a WAL of several segments (about 5 records of 100 B each). */
static size_t multi_segment_wal(uint64_t *segs, size_t cap, int records)
{
    struct wal_options o = {.segment_bytes = 600};
    struct wal *w = open_ok(&o);
    append_n(w, len_100, records);
    cr_assert_eq(wal_close(w), 0);
    size_t n = list_segs(segs, cap);
    cr_assert_geq(n, 3);
    return n;
}

Test(wal, flipped_byte_in_a_segment_header_refuses_to_open)
{
    uint64_t segs[32];
    size_t n = multi_segment_wal(segs, 32, 22);
    for (size_t which = 0; which < n; which += n - 1) { /* first and last */
        char p[PATH_MAX];
        seg_path(p, sizeof p, segs[which]);
        size_t len;
        uint8_t *img = read_all(p, &len);
        cr_assert_gt(len, WAL_SEGMENT_HEADER_BYTES, "the last segment holds records");
        for (size_t at = 0; at < WAL_SEGMENT_HEADER_BYTES; at++) {
            img[at] ^= 0x04;
            write_all(p, img, len);
            img[at] ^= 0x04;
            log_reset();
            struct wal *w = NULL;
            cr_assert_eq(wal_open(dir, NULL, &w), -EBADMSG, "segment %zu byte %zu", which, at);
            cr_assert_not_null(strstr(logbuf, "event=wal_disk_fault"), "%s", logbuf);
        }
        write_all(p, img, len);
        free(img);
    }
    struct wal *w = open_ok(NULL);
    cr_assert_eq(replay_check(w, len_100, 1), 22);
    cr_assert_eq(wal_close(w), 0);
}

Test(wal, torn_header_of_an_empty_last_segment_is_rewritten)
{
    uint64_t segs[32];
    size_t n = multi_segment_wal(segs, 32, 22);
    /* What a crash while rolling to segment 23 leaves: a header cut short,
     * or never written at all. */
    char p[PATH_MAX];
    seg_path(p, sizeof p, 23);
    uint8_t h[WAL_SEGMENT_HEADER_BYTES];
    wal_segment_header_encode(h, 23);
    /* i < 32: the header cut short at i bytes; i >= 32: a full-length
     * header with byte i - 32 damaged. */
    for (size_t i = 0; i < 2 * WAL_SEGMENT_HEADER_BYTES; i++) {
        uint8_t bad[WAL_SEGMENT_HEADER_BYTES];
        memcpy(bad, h, sizeof h);
        size_t len = sizeof bad;
        if (i < WAL_SEGMENT_HEADER_BYTES)
            len = i;
        else
            bad[i - WAL_SEGMENT_HEADER_BYTES] ^= 0x80;
        write_all(p, bad, len);
        log_reset();
        struct wal *w = open_ok(NULL);
        cr_assert_eq(replay_check(w, len_100, 1), 22);
        cr_assert_not_null(strstr(logbuf, "event=wal_torn_header"), "i=%zu\n%s", i, logbuf);
        append_model(w, len_100, 23);
        cr_assert_eq(wal_close(w), 0);
        w = open_ok(NULL);
        cr_assert_eq(replay_check(w, len_100, 1), 23);
        cr_assert_eq(wal_close(w), 0);
        cr_assert_eq(list_segs(segs, 32), n + 1);
        cr_assert_eq(unlink(p), 0);
    }
}

Test(wal, a_segment_of_another_format_version_is_refused)
{
    uint64_t segs[32];
    multi_segment_wal(segs, 32, 22);
    char p[PATH_MAX];
    seg_path(p, sizeof p, segs[0]);
    size_t len;
    uint8_t *img = read_all(p, &len);
    le_put_u32(img + 8, WAL_FORMAT_VERSION + 1);
    le_put_u32(img + 28, crc32c(0, img, 28));
    write_all(p, img, len);
    struct wal *w = NULL;
    cr_assert_eq(wal_open(dir, NULL, &w), -EPROTONOSUPPORT);
    free(img);
}

Test(wal, torn_tail_in_a_segment_that_is_not_the_last_refuses_to_open)
{
    uint64_t segs[32];
    multi_segment_wal(segs, 32, 22);
    char p[PATH_MAX];
    seg_path(p, sizeof p, segs[1]);
    size_t len;
    uint8_t *img = read_all(p, &len);
    write_all(p, img, len - 3);
    struct wal *w = NULL;
    cr_assert_eq(wal_open(dir, NULL, &w), -EBADMSG);
    cr_assert_not_null(strstr(logbuf, "not the last"), "%s", logbuf);
    free(img);
}

Test(wal, gap_between_segments_refuses_to_open)
{
    uint64_t segs[32];
    size_t n = multi_segment_wal(segs, 32, 22);
    char p[PATH_MAX];
    seg_path(p, sizeof p, segs[n / 2]);
    cr_assert_eq(unlink(p), 0);
    struct wal *w = NULL;
    cr_assert_eq(wal_open(dir, NULL, &w), -EBADMSG);
    cr_assert_not_null(strstr(logbuf, "gap in the log"), "%s", logbuf);
}

Test(wal, non_monotonic_lsn_refuses_to_open)
{
    /* A segment of valid frames whose LSNs go 1, 2, 4, 5: each record
     * checks out alone, the sequence does not. */
    char p[PATH_MAX];
    cr_assert_eq(mkdir(dir, 0755), 0);
    seg_path(p, sizeof p, 1);
    uint8_t img[WAL_SEGMENT_HEADER_BYTES + 4 * (WAL_RECORD_HEADER_BYTES + 10)];
    wal_segment_header_encode(img, 1);
    const uint64_t lsns[] = {1, 2, 4, 5};
    for (size_t i = 0; i < 4; i++) {
        uint8_t *r = img + WAL_SEGMENT_HEADER_BYTES + i * (WAL_RECORD_HEADER_BYTES + 10);
        memset(r + WAL_RECORD_HEADER_BYTES, (int)i, 10);
        wal_record_frame(r, lsns[i], 1, r + WAL_RECORD_HEADER_BYTES, 10);
    }
    write_all(p, img, sizeof img);
    struct wal *w = NULL;
    cr_assert_eq(wal_open(dir, NULL, &w), -EBADMSG);
    cr_assert_not_null(strstr(logbuf, "has lsn 4, expected 3"), "%s", logbuf);
}

Test(wal, record_above_record_bytes_max_in_the_middle_is_corruption)
{
    struct wal_options big = {.record_bytes_max = 4096};
    struct wal *w = open_ok(&big);
    append_n(w, len_100, 3);
    uint8_t p[2000] = {0};
    uint64_t lsn;
    cr_assert_eq(wal_append(w, model_type(4), p, sizeof p, &lsn), 0);
    append_n(w, len_100, 3);
    cr_assert_eq(wal_close(w), 0);
    struct wal_options small = {.record_bytes_max = 1000};
    cr_assert_eq(wal_open(dir, &small, &w), -EBADMSG);
    cr_assert_not_null(strstr(logbuf, "record_bytes_max"), "%s", logbuf);
}

/* --------------------------------------------------------------- SIGKILL */

static void crash_child_path(char *out, size_t cap)
{
    const char *env = getenv("WAL_CRASH_CHILD");
    if (env) {
        snprintf(out, cap, "%s", env);
        return;
    }
    /* Fall back to the binary next to this one (the build dir). */
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    cr_assert_gt(n, 0);
    self[n] = 0;
    char *slash = strrchr(self, '/');
    cr_assert_not_null(slash);
    *slash = 0;
    cr_assert_lt(snprintf(out, cap, "%s/wal_crash_child", self), (int)cap);
}

/* Runs the crash child and SIGKILLs it ms after it started, or, with
 * after_first_sync, ms after it reported its first synced batch: on a
 * loaded machine starting it (the sanitizers' runtime, opening the WAL) can
 * take longer than the whole window, and a kill before any sync proves
 * nothing about synced records. Returns the highest LSN it reported as
 * synced (0 if none) and checks the reports only go up. */
static uint64_t run_and_kill(const char *child, unsigned ms, bool after_first_sync)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execl(child, child, dir, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    /* The pipe holds at most the lines of one short run (the child blocks
     * on a full pipe, and is killed anyway). */
    static char out[1 << 17];
    size_t got = 0;
    if (after_first_sync) {
        struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
        if (poll(&pfd, 1, 10000) == 1) {
            ssize_t r = read(fds[0], out, sizeof out - 1);
            got = r > 0 ? (size_t)r : 0;
        }
    }
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(!WIFEXITED(status) || WEXITSTATUS(status) == 0,
              "child exited with %d", WEXITSTATUS(status));
    ssize_t r;
    while (got < sizeof out - 1 && (r = read(fds[0], out + got, sizeof out - 1 - got)) > 0)
        got += (size_t)r;
    close(fds[0]);
    out[got] = 0;
    uint64_t max = 0;
    for (char *line = out, *end; *line; line = end + 1) { /* one LSN per line */
        end = strchr(line, '\n');
        if (!end)
            break; /* never: each line is one write, atomic on a pipe */
        uint64_t v = strtoull(line, NULL, 10);
        cr_assert_gt(v, max, "reported %" PRIu64 " after %" PRIu64, v, max);
        max = v;
    }
    return max;
}

/* A SIGKILL keeps the page cache; a power cut does not. After some kills,
 * play a power cut: the unsynced end of the last segment (everything after
 * the last reported record, if that record is in it) is cut at a random
 * offset and sometimes followed by zeros, as a lost or torn write leaves
 * it. Records the child reported as synced are never touched. */
static void lose_unsynced_tail(struct prng *r, uint64_t reported)
{
    uint64_t segs[512];
    size_t n = list_segs(segs, ARRAY_LEN(segs));
    if (n == 0)
        return;
    char p[PATH_MAX];
    seg_path(p, sizeof p, segs[n - 1]);
    size_t len;
    uint8_t *img = read_all(p, &len);
    size_t boundary = WAL_SEGMENT_HEADER_BYTES;
    uint64_t lsn = segs[n - 1];
    /* Bounded: each pass consumes one record. */
    while (lsn <= reported && boundary < len) {
        struct wal_record rec;
        ssize_t k = wal_record_decode(img + boundary, len - boundary, WAL_RECORD_BYTES_DEFAULT, &rec);
        if (k < 0)
            break;
        boundary += (size_t)k;
        lsn++;
    }
    if (boundary < len) {
        size_t cut = (size_t)prng_range(r, boundary, len);
        size_t zeros = prng_chance(r, 500000) ? (size_t)prng_range(r, 1, 8192) : 0;
        uint8_t *out = calloc(1, cut + zeros + 1);
        cr_assert_not_null(out);
        memcpy(out, img, cut);
        write_all(p, out, cut + zeros);
        free(out);
    }
    free(img);
}

Test(wal, every_lsn_reported_synced_survives_sigkill, .timeout = 120)
{
    char child[PATH_MAX];
    crash_child_path(child, sizeof child);
    cr_assert_eq(access(child, X_OK), 0, "no crash child at %s", child);
    struct prng r;
    uint64_t seed = (uint64_t)time(NULL);
    prng_seed(&r, seed);
    cr_log_info("sigkill seed=%" PRIu64, seed);
    uint64_t promised = 0, rounds_with_records = 0, rounds_with_cut = 0;
    for (int round = 0; round < 20; round++) {
        unsigned ms = (unsigned)prng_range(&r, 3, 120);
        /* Half the kills count from the start (they land in start-up and
         * recovery too), half from the first synced batch. */
        uint64_t reported = run_and_kill(child, ms, round % 4 >= 2);
        /* Synced: what this run reported and all that earlier rounds
         * reported or reopened (wal_close syncs). */
        if (round % 2)
            lose_unsynced_tail(&r, MAX(reported, promised));
        log_reset();
        struct wal *w = open_ok(NULL);
        /* The child cuts the log as it goes, so a suffix is left. */
        uint64_t n = replay_check(w, crash_len, 1);
        cr_assert_eq(n, wal_last_lsn(w) + 1 - wal_first_lsn(w));
        cr_assert_geq(wal_last_lsn(w), reported,
                      "seed=%" PRIu64 " round %d: synced lsn %" PRIu64 " lost, WAL ends at %" PRIu64,
                      seed, round, reported, wal_last_lsn(w));
        cr_assert_geq(wal_last_lsn(w), promised, "seed=%" PRIu64 " round %d", seed, round);
        cr_assert_null(strstr(logbuf, "wal_disk_fault"), "%s", logbuf);
        struct wal_stats st;
        wal_get_stats(w, &st);
        if (st.recovered_cut_bytes)
            rounds_with_cut++;
        if (reported > promised)
            rounds_with_records++;
        promised = MAX(promised, wal_last_lsn(w));
        cr_assert_eq(wal_close(w), 0);
    }
    cr_log_info("sigkill: %" PRIu64 " rounds with synced records, %" PRIu64 " with a torn tail cut",
                rounds_with_records, rounds_with_cut);
    cr_assert_gt(rounds_with_records, 5, "the child ran too briefly to prove anything");
}

/* ----------------------------------------------------------- group commit */

enum { GC_THREADS = 16, GC_PER_THREAD = 40 };

struct gc_arg {
    struct wal *w;
    int id;
    int failures;
};

static void *gc_worker(void *p)
{
    struct gc_arg *a = p;
    for (int i = 0; i < GC_PER_THREAD; i++) {
        uint8_t rec[64];
        memset(rec, a->id, sizeof rec);
        le_put_u32(rec, (uint32_t)i);
        uint64_t lsn;
        if (wal_append(a->w, (uint8_t)(a->id + 1), rec, sizeof rec, &lsn) != 0 ||
            wal_sync(a->w, lsn) != 0 || wal_durable_lsn(a->w) < lsn)
            a->failures++;
    }
    return NULL;
}

struct gc_seen {
    uint8_t seen[GC_THREADS][GC_PER_THREAD];
    int bad;
};

static int gc_check(void *ctx, uint64_t lsn, uint8_t type, const void *data, size_t len)
{
    (void)lsn;
    struct gc_seen *s = ctx;
    const uint8_t *p = data;
    int id = type - 1;
    if (len != 64 || id < 0 || id >= GC_THREADS || p[63] != id)
        return ++s->bad, 0;
    uint32_t i = le_get_u32(p);
    if (i >= GC_PER_THREAD || s->seen[id][i]++)
        s->bad++;
    return 0;
}

/* Runs GC_THREADS appenders that each sync every record; returns the WAL. */
static struct wal *run_gc_workers(const struct wal_options *o)
{
    struct wal *w = open_ok(o);
    pthread_t t[GC_THREADS];
    struct gc_arg a[GC_THREADS];
    for (int i = 0; i < GC_THREADS; i++) {
        a[i] = (struct gc_arg){.w = w, .id = i};
        cr_assert_eq(pthread_create(&t[i], NULL, gc_worker, &a[i]), 0);
    }
    for (int i = 0; i < GC_THREADS; i++) {
        pthread_join(t[i], NULL);
        cr_assert_eq(a[i].failures, 0);
    }
    return w;
}

static void check_gc_records(const struct wal_options *o)
{
    struct wal *w = open_ok(o);
    static struct gc_seen s;
    memset(&s, 0, sizeof s);
    cr_assert_eq(wal_replay(w, 1, gc_check, &s), 0);
    cr_assert_eq(s.bad, 0);
    for (int i = 0; i < GC_THREADS; i++)
        for (int j = 0; j < GC_PER_THREAD; j++)
            cr_assert_eq(s.seen[i][j], 1, "thread %d record %d", i, j);
    cr_assert_eq(wal_close(w), 0);
}

/* With segments of a few records, appenders roll the segment while another
 * thread syncs it outside the lock (lead_sync keeps that fd open until it is
 * done): every sync succeeds and nothing is lost. A stress test: the window
 * between taking the fd and syncing it is too short to hit on demand. */
Test(wal, appenders_that_roll_while_others_sync_lose_nothing)
{
    struct wal_options o = {.segment_bytes = 1024};
    struct wal *w = run_gc_workers(&o);
    struct wal_stats st;
    wal_get_stats(w, &st);
    cr_assert_gt(st.segments_created, 20);
    cr_assert_eq(wal_close(w), 0);
    check_gc_records(&o);
}

Test(wal, concurrent_syncs_share_fdatasyncs)
{
    struct wal *w = run_gc_workers(NULL);
    struct wal_stats st;
    wal_get_stats(w, &st);
    cr_log_info("group commit: %" PRIu64 " wal_sync calls, %" PRIu64 " fdatasyncs",
                st.sync_calls, st.fsyncs);
    cr_assert_eq(st.appends, GC_THREADS * GC_PER_THREAD);
    cr_assert_eq(st.sync_calls, GC_THREADS * GC_PER_THREAD);
    cr_assert_lt(st.fsyncs * 2, st.sync_calls, "%" PRIu64 " fdatasyncs for %" PRIu64 " syncs",
                 st.fsyncs, st.sync_calls);
    cr_assert_eq(wal_close(w), 0);
    check_gc_records(NULL);
}

/* ------------------------------------------------------------ truncation */

Test(wal, truncate_before_drops_whole_old_segments_only)
{
    struct wal_options o = {.segment_bytes = 1024};
    struct wal *w = open_ok(&o);
    append_n(w, len_100, 100);
    uint64_t segs[64];
    size_t before = list_segs(segs, 64);
    cr_assert_eq(wal_truncate_before(w, 50), 0);
    uint64_t first = wal_first_lsn(w);
    cr_assert_leq(first, 50);
    cr_assert_gt(first, 40, "a segment holds ~8 records");
    size_t after = list_segs(segs, 64);
    cr_assert_lt(after, before);
    cr_assert_eq(segs[0], first);
    struct check c = {.len_of = len_100};
    cr_assert_eq(wal_replay(w, 1, check_record, &c), 0, "%s", c.why);
    cr_assert_eq(c.first, first);
    cr_assert_eq(c.count, 100 - first + 1);
    cr_assert_eq(wal_close(w), 0);

    w = open_ok(&o);
    cr_assert_eq(wal_first_lsn(w), first);
    cr_assert_eq(replay_check(w, len_100, 1), 100 - first + 1);
    /* Past the end: the live segment goes too, through a roll. */
    cr_assert_eq(wal_truncate_before(w, 101), 0);
    cr_assert_eq(wal_first_lsn(w), 101);
    cr_assert_eq(list_segs(segs, 64), 1);
    cr_assert_eq(segs[0], 101);
    cr_assert_eq(replay_check(w, len_100, 1), 0);
    cr_assert_eq(wal_close(w), 0);

    w = open_ok(&o);
    cr_assert_eq(wal_first_lsn(w), 101);
    cr_assert_eq(wal_last_lsn(w), 100);
    append_model(w, len_100, 101);
    cr_assert_eq(replay_check(w, len_100, 1), 1);
    cr_assert_eq(wal_close(w), 0);
}

/* Counts the spare files in the WAL directory. */
static size_t count_spares(void)
{
    size_t n = 0;
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += strncmp(e->d_name, "spare-", 6) == 0;
    closedir(d);
    return n;
}

Test(wal, truncated_segments_are_recycled_by_later_rolls)
{
    struct wal_options o = {.segment_bytes = 1024};
    struct wal *w = open_ok(&o);
    append_n(w, len_100, 100);
    cr_assert_eq(wal_truncate_before(w, 60), 0);
    cr_assert_eq(count_spares(), 2, "two of the cut segments are kept as spares");
    struct wal_stats st;
    wal_get_stats(w, &st);
    cr_assert_gt(st.segments_deleted, 2);
    cr_assert_eq(st.segments_recycled, 0);
    uint64_t first = wal_first_lsn(w);
    /* 40 more records roll several times: the first two rolls take the
     * spares, the later ones create files. */
    append_n(w, len_100, 40);
    wal_get_stats(w, &st);
    cr_assert_eq(st.segments_recycled, 2);
    cr_assert_eq(count_spares(), 0);
    cr_assert_eq(replay_check(w, len_100, 1), 140 - first + 1);
    cr_assert_eq(wal_close(w), 0);
    /* A clean close leaves nothing of a recycled file's earlier life. */
    log_reset();
    w = open_ok(&o);
    wal_get_stats(w, &st);
    cr_assert_eq(st.recovered_cut_bytes, 0);
    cr_assert_null(strstr(logbuf, "wal_torn_tail"), "%s", logbuf);
    cr_assert_eq(wal_first_lsn(w), first);
    cr_assert_eq(replay_check(w, len_100, 1), 140 - first + 1);
    /* Spares are found again after a reopen. */
    cr_assert_eq(wal_truncate_before(w, 130), 0);
    cr_assert_eq(count_spares(), 2);
    append_n(w, len_100, 20);
    wal_get_stats(w, &st);
    cr_assert_eq(st.segments_recycled, 2);
    cr_assert_eq(wal_close(w), 0);
    w = open_ok(&o);
    cr_assert_eq(replay_check(w, len_100, 1), 160 - wal_first_lsn(w) + 1);
    cr_assert_eq(wal_close(w), 0);
}

Test(wal, spares_beyond_two_are_deleted_at_open_and_garbage_spares_are_never_read)
{
    cr_assert_eq(mkdir(dir, 0755), 0);
    /* Spare files hold whatever an earlier life left: here, garbage. */
    for (int i = 1; i <= 3; i++) {
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s/spare-%020d", dir, i);
        uint8_t junk[3000];
        memset(junk, 0xa5 + i, sizeof junk);
        write_all(p, junk, sizeof junk);
    }
    struct wal_options o = {.segment_bytes = 1024};
    struct wal *w = open_ok(&o);
    cr_assert_eq(count_spares(), 2);
    append_n(w, len_100, 30); /* rolls into both spares, then new files */
    struct wal_stats st;
    wal_get_stats(w, &st);
    cr_assert_eq(st.segments_recycled, 2);
    cr_assert_eq(count_spares(), 0);
    cr_assert_eq(wal_close(w), 0);
    log_reset();
    w = open_ok(&o);
    cr_assert_eq(replay_check(w, len_100, 1), 30);
    cr_assert_null(strstr(logbuf, "wal_torn_tail"), "%s", logbuf);
    cr_assert_eq(wal_close(w), 0);
}

/* Writes 100 + more records, cutting the log before lsn 60 after the
 * first 100 so that later rolls reuse spare files, syncs, and "crashes"
 * (exits without wal_close): the recycled live segment still holds its
 * earlier life after the new records. Then reopens the WAL and checks that
 * every record is there and the earlier life was cut as a torn tail, not
 * taken for a disk fault. Returns the reopened WAL. */
static struct wal *crash_inside_a_recycled_segment(len_fn len_of, int more)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        struct wal_options o = {.segment_bytes = 1024};
        struct wal *w;
        if (wal_open(dir, &o, &w) != 0)
            _exit(1);
        for (int i = 0; i < 100 + more; i++) {
            if (i == 100 && wal_truncate_before(w, 60) != 0)
                _exit(2);
            uint64_t want = wal_last_lsn(w) + 1, lsn;
            size_t len = len_of(want);
            uint8_t *p = scratch(len + 1);
            model_payload(want, p, len);
            if (wal_append(w, model_type(want), p, len, &lsn) != 0)
                _exit(3);
        }
        struct wal_stats st;
        wal_get_stats(w, &st);
        _exit(st.segments_recycled > 0 && wal_sync(w, wal_last_lsn(w)) == 0 ? 0 : 4);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: %d", status);
    struct wal *w = open_ok(NULL);
    uint64_t last = 100 + (uint64_t)more;
    cr_assert_eq(wal_last_lsn(w), last);
    cr_assert_eq(replay_check(w, len_of, 1), last - wal_first_lsn(w) + 1);
    cr_assert_not_null(strstr(logbuf, "wal_torn_tail"), "%s", logbuf);
    cr_assert_null(strstr(logbuf, "wal_disk_fault"), "%s", logbuf);
    return w;
}

Test(wal, a_crash_inside_a_recycled_segment_cuts_its_earlier_life)
{
    /* Equal records: the new ones end exactly where an earlier record
     * starts, which decodes whole but has an older LSN. */
    struct wal *w = crash_inside_a_recycled_segment(len_100, 10);
    cr_assert_not_null(strstr(logbuf, "older than the segment"), "%s", logbuf);
    append_n(w, len_100, 5);
    cr_assert_eq(wal_close(w), 0);
    w = open_ok(NULL);
    cr_assert_eq(replay_check(w, len_100, 1), 115 - wal_first_lsn(w) + 1);
    cr_assert_eq(wal_close(w), 0);
}

Test(wal, a_crash_inside_a_recycled_segment_with_uneven_records_cuts_its_earlier_life)
{
    /* Uneven records: the new ones end inside an earlier record. */
    struct wal *w = crash_inside_a_recycled_segment(len_small, 30);
    cr_assert_eq(wal_close(w), 0);
}

struct truncator {
    struct wal *w;
    atomic_bool stop;
    int failures, cuts;
};

/* Cuts the log 20 records behind its end, over and over, as the replica's
 * snapshot thread does while the replica thread appends. */
static void *truncator_main(void *arg)
{
    struct truncator *t = arg;
    for (int i = 0; i < 100000 && !atomic_load(&t->stop); i++) {
        uint64_t last = wal_last_lsn(t->w);
        if (last > 20) {
            t->failures += wal_truncate_before(t->w, last - 20) != 0;
            t->cuts++;
        }
        usleep(200);
    }
    return NULL;
}

Test(wal, truncation_on_another_thread_while_appends_go_on_keeps_a_whole_suffix)
{
    struct wal_options o = {.segment_bytes = 1024};
    struct wal *w = open_ok(&o);
    struct truncator t = {.w = w};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, truncator_main, &t), 0);
    for (int i = 0; i < 3000; i++) {
        append_n(w, len_100, 1);
        if (i % 7 == 0)
            cr_assert_eq(wal_sync(w, wal_last_lsn(w)), 0);
    }
    atomic_store(&t.stop, true);
    pthread_join(th, NULL);
    cr_assert_eq(t.failures, 0);
    cr_assert_gt(t.cuts, 0);
    uint64_t first = wal_first_lsn(w);
    cr_assert_gt(first, 1, "the truncations dropped segments");
    cr_assert_eq(replay_check(w, len_100, 1), 3000 - first + 1);
    cr_assert_eq(wal_close(w), 0);
    /* What is on disk is what the handle said: a contiguous suffix. */
    w = open_ok(&o);
    cr_assert_eq(wal_first_lsn(w), first);
    cr_assert_eq(wal_last_lsn(w), 3000);
    cr_assert_eq(replay_check(w, len_100, 1), 3000 - first + 1);
    cr_assert_eq(wal_close(w), 0);
}

Test(wal, crash_midway_through_truncation_leaves_an_openable_suffix)
{
    uint64_t segs[32];
    size_t n = multi_segment_wal(segs, 32, 30);
    /* Deleting oldest first means a crash leaves segs[k..n) for some k. */
    for (size_t k = 0; k < n; k++) {
        if (k > 0) {
            char p[PATH_MAX];
            seg_path(p, sizeof p, segs[k - 1]);
            cr_assert_eq(unlink(p), 0);
        }
        struct wal *w = open_ok(NULL);
        cr_assert_eq(wal_first_lsn(w), segs[k]);
        cr_assert_eq(wal_last_lsn(w), 30);
        cr_assert_eq(replay_check(w, len_100, 1), 30 - segs[k] + 1);
        cr_assert_eq(wal_close(w), 0);
    }
}

/* --------------------------------------------------------- fault injection */

Test(wal, failed_fdatasync_returns_eio_and_is_never_reported_durable)
{
    struct wal *w = open_ok(NULL);
    append_n(w, len_100, 5);
    cr_assert_eq(wal_sync(w, 5), 0);
    fault_arm("wal.fsync", 0, -1, EIO);
    append_model(w, len_100, 6);
    cr_assert_eq(wal_sync(w, 6), -EIO);
    cr_assert_eq(wal_durable_lsn(w), 5);
    /* FAILED is sticky: a retry cannot pretend it worked. */
    fault_disarm_all();
    cr_assert_eq(wal_sync(w, 6), -EIO);
    cr_assert_eq(wal_durable_lsn(w), 5);
    uint64_t lsn = 0;
    cr_assert_eq(wal_append(w, 1, "x", 1, &lsn), -EIO);
    cr_assert_eq(wal_sync(w, 5), 0, "what was durable stays durable");
    cr_assert_eq(wal_truncate_before(w, 3), -EIO);
    cr_assert_eq(wal_close(w), -EIO);
    cr_assert_not_null(strstr(logbuf, "event=wal_failed"));

    w = open_ok(NULL);
    cr_assert_geq(replay_check(w, len_100, 1), 5);
    cr_assert_eq(wal_close(w), 0);
}

Test(wal, failed_write_returns_eio_and_the_lsn_is_not_used)
{
    struct wal *w = open_ok(NULL);
    append_n(w, len_100, 3);
    fault_arm("wal.write", 0, 1, ENOSPC);
    uint8_t p[100];
    uint64_t lsn = 0;
    cr_assert_eq(wal_append(w, 1, p, sizeof p, &lsn), -EIO);
    cr_assert_eq(lsn, 0, "out-param untouched on failure");
    cr_assert_eq(wal_last_lsn(w), 3);
    append_model(w, len_100, 4);
    cr_assert_eq(wal_sync(w, 4), 0);
    cr_assert_eq(wal_close(w), 0);
    w = open_ok(NULL);
    cr_assert_eq(replay_check(w, len_100, 1), 4);
    cr_assert_eq(wal_close(w), 0);
}

Test(wal, failed_fdatasync_while_rolling_fails_the_append)
{
    struct wal_options o = {.segment_bytes = 600};
    struct wal *w = open_ok(&o);
    append_n(w, len_100, 4); /* 32 + 4 * 120 = 512: the next one rolls */
    fault_arm("wal.fsync", 0, -1, EIO);
    uint8_t p[100];
    uint64_t lsn = 0;
    cr_assert_eq(wal_append(w, 1, p, sizeof p, &lsn), -EIO);
    cr_assert_eq(wal_durable_lsn(w), 0);
    fault_disarm_all();
    cr_assert_eq(wal_close(w), -EIO);
    w = open_ok(&o);
    cr_assert_eq(replay_check(w, len_100, 1), 4);
    cr_assert_eq(wal_close(w), 0);
}

Test(wal, failed_segment_header_write_leaves_the_wal_usable)
{
    struct wal_options o = {.segment_bytes = 600};
    struct wal *w = open_ok(&o);
    append_n(w, len_100, 4);
    fault_arm("wal.write", 0, 1, EIO); /* the new segment's header */
    uint8_t p[100];
    uint64_t lsn = 0;
    cr_assert_eq(wal_append(w, 1, p, sizeof p, &lsn), -EIO);
    uint64_t segs[4];
    cr_assert_eq(list_segs(segs, 4), 1, "the half-made segment is removed");
    append_model(w, len_100, 5);
    cr_assert_eq(wal_close(w), 0);
    w = open_ok(&o);
    cr_assert_eq(replay_check(w, len_100, 1), 5);
    cr_assert_eq(wal_close(w), 0);
}
