/* wal_crash_child DIR: the victim of test_wal's SIGKILL test.
 *
 * Opens the WAL in DIR, then appends records in a loop: a batch of 1..4
 * records, one wal_sync for the batch, and only after wal_sync has returned
 * 0 it writes the synced LSN on stdout as one line. So every LSN printed is
 * a promise "this record is on stable storage" that the parent checks after
 * killing this process at a random moment.
 *
 * The payload of record `lsn` is a pure function of lsn (crash_payload
 * below; test_wal.c has the same function), so the parent can check every
 * byte. Every 25 batches it cuts the log 300 records behind its end, so
 * that kills also land in recycled segments. Bounded: stops by itself
 * after 5 s or 20000 records. */
#include "consensus/wal.h"

#include "base/log.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Same definitions as in test_wal.c. */
static size_t crash_len(uint64_t lsn)
{
    if (lsn % 61 == 0)
        return 40000 + (size_t)(lsn % 7) * 5000; /* a big one now and then */
    return (size_t)((lsn * 2654435761u) % 1500);
}

static void crash_payload(uint64_t lsn, uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)(lsn * 131 + i * 7 + (i >> 9));
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: wal_crash_child DIR\n");
        return 2;
    }
    log_set_level(LOG_WARN);
    /* Small segments, so that kills also land in rolls. */
    struct wal_options o = {.segment_bytes = 128 << 10};
    struct wal *w;
    int rc = wal_open(argv[1], &o, &w);
    if (rc) {
        fprintf(stderr, "wal_crash_child: wal_open: %s\n", strerror(-rc));
        return 1;
    }
    static uint8_t buf[80000];
    double deadline = now_s() + 5.0;
    for (int i = 0; i < 20000 && now_s() < deadline; i++) {
        uint64_t lsn = 0;
        int batch = 1 + i % 4;
        for (int b = 0; b < batch; b++) {
            uint64_t want = wal_last_lsn(w) + 1;
            size_t len = crash_len(want);
            crash_payload(want, buf, len);
            rc = wal_append(w, (uint8_t)(want % 250 + 1), buf, len, &lsn);
            if (rc || lsn != want) {
                fprintf(stderr, "wal_crash_child: append: rc=%d lsn=%" PRIu64 "\n", rc, lsn);
                return 1;
            }
        }
        rc = wal_sync(w, lsn);
        if (rc) {
            fprintf(stderr, "wal_crash_child: sync: %s\n", strerror(-rc));
            return 1;
        }
        /* Cut the log now and then, as snapshots do, so that rolls also
         * go into recycled segment files. */
        if (i % 25 == 24 && lsn > 300 && wal_truncate_before(w, lsn - 300) != 0) {
            fprintf(stderr, "wal_crash_child: truncate failed\n");
            return 1;
        }
        char line[32];
        int n = snprintf(line, sizeof line, "%" PRIu64 "\n", lsn);
        if (write(1, line, (size_t)n) != n)
            return 1;
    }
    return wal_close(w) == 0 ? 0 : 1;
}
