/* paxfs-bench-wal DIR [SECONDS]: WAL throughput with a wal_sync per append.
 *
 * Measures, each for SECONDS (default 2) in a fresh directory under DIR:
 *   - the machine's raw fdatasync rate: 4 KiB pwrite (appending) + fdatasync
 *     on a plain file in DIR, one thread;
 *   - WAL appends/s, each followed by wal_sync of its LSN, for 1 writer and
 *     for 16 concurrent writers, with 100 B and with 4 KiB records, and the
 *     fdatasyncs/s the WAL issued (group commit makes 16 writers cost far
 *     fewer fdatasyncs than syncs).
 * Prints one key=value per line; removes what it wrote. Bounded by time. */
#include "consensus/wal.h"

#include "base/clock.h"
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
#include <unistd.h>

enum { WRITERS_MAX = 16 };

static double seconds = 2.0;

static void rm_tree(const char *path)
{
    DIR *d = opendir(path);
    if (d) {
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
    rmdir(path);
}

static double raw_fdatasync_per_s(const char *dir)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/bench-raw-XXXXXX", dir);
    int fd = mkstemp(path);
    if (fd < 0) {
        fprintf(stderr, "paxfs-bench-wal: cannot create a file in %s: %s\n", dir, strerror(errno));
        exit(2);
    }
    static char block[4096];
    memset(block, 0xab, sizeof block);
    uint64_t n = 0, start = clock_now_ns();
    uint64_t end = start + (uint64_t)(seconds * 1e9);
    off_t off = 0;
    while (clock_now_ns() < end) {
        if (pwrite(fd, block, sizeof block, off) != (ssize_t)sizeof block || fdatasync(fd) != 0) {
            fprintf(stderr, "paxfs-bench-wal: raw write/fdatasync failed: %s\n", strerror(errno));
            exit(1);
        }
        off += (off_t)sizeof block;
        n++;
    }
    double secs = (double)(clock_now_ns() - start) / 1e9;
    close(fd);
    unlink(path);
    return (double)n / secs;
}

struct run {
    struct wal *w;
    size_t record_bytes;
    uint64_t deadline_ns;
    atomic_uint_fast64_t appends;
    atomic_int errors;
};

static void *writer(void *p)
{
    struct run *r = p;
    uint8_t buf[4096];
    memset(buf, 0x5a, sizeof buf);
    /* Bounded by the deadline. */
    while (clock_now_ns() < r->deadline_ns) {
        uint64_t lsn;
        if (wal_append(r->w, 1, buf, r->record_bytes, &lsn) != 0 || wal_sync(r->w, lsn) != 0) {
            atomic_fetch_add(&r->errors, 1);
            break;
        }
        atomic_fetch_add_explicit(&r->appends, 1, memory_order_relaxed);
    }
    return NULL;
}

struct result {
    double appends_per_s;
    double fsyncs_per_s;
};

static struct result wal_run(const char *dir, int writers, size_t record_bytes)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/bench-wal-XXXXXX", dir);
    if (!mkdtemp(path)) {
        fprintf(stderr, "paxfs-bench-wal: cannot create a directory in %s: %s\n", dir, strerror(errno));
        exit(2);
    }
    struct run r = {.record_bytes = record_bytes};
    int rc = wal_open(path, NULL, &r.w);
    if (rc) {
        fprintf(stderr, "paxfs-bench-wal: wal_open %s: %s\n", path, strerror(-rc));
        exit(1);
    }
    struct wal_stats before;
    wal_get_stats(r.w, &before);
    uint64_t start = clock_now_ns();
    r.deadline_ns = start + (uint64_t)(seconds * 1e9);
    pthread_t t[WRITERS_MAX];
    for (int i = 0; i < writers; i++)
        pthread_create(&t[i], NULL, writer, &r);
    for (int i = 0; i < writers; i++)
        pthread_join(t[i], NULL);
    double secs = (double)(clock_now_ns() - start) / 1e9;
    struct wal_stats after;
    wal_get_stats(r.w, &after);
    if (wal_close(r.w) != 0 || atomic_load(&r.errors)) {
        fprintf(stderr, "paxfs-bench-wal: WAL errors during the run\n");
        exit(1);
    }
    rm_tree(path);
    return (struct result){
        .appends_per_s = (double)atomic_load(&r.appends) / secs,
        .fsyncs_per_s = (double)(after.fsyncs - before.fsyncs) / secs,
    };
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: paxfs-bench-wal DIR [SECONDS]\n");
        return 2;
    }
    if (argc == 3) {
        seconds = atof(argv[2]);
        if (seconds <= 0 || seconds > 60) {
            fprintf(stderr, "paxfs-bench-wal: SECONDS must be in (0, 60]\n");
            return 2;
        }
    }
    log_set_level(LOG_WARN);
    const char *dir = argv[1];
    double raw = raw_fdatasync_per_s(dir);
    struct result w1 = wal_run(dir, 1, 100);
    struct result w1k = wal_run(dir, 1, 4096);
    struct result w16 = wal_run(dir, 16, 100);
    struct result w16k = wal_run(dir, 16, 4096);
    printf("raw_fdatasync_per_s=%.0f\n", raw);
    printf("wal_1writer_appends_per_s=%.0f\n", w1.appends_per_s);
    printf("wal_1writer_4k_appends_per_s=%.0f\n", w1k.appends_per_s);
    printf("wal_16writers_appends_per_s=%.0f\n", w16.appends_per_s);
    printf("fsyncs_per_s=%.0f\n", w16.fsyncs_per_s);
    printf("wal_16writers_appends_per_fsync=%.1f\n",
           w16.fsyncs_per_s > 0 ? w16.appends_per_s / w16.fsyncs_per_s : 0.0);
    printf("wal_16writers_4k_appends_per_s=%.0f\n", w16k.appends_per_s);
    printf("wal_16writers_4k_fsyncs_per_s=%.0f\n", w16k.fsyncs_per_s);
    printf("ratio_1writer_vs_raw=%.2f\n", raw > 0 ? w1.appends_per_s / raw : 0.0);
    printf("ratio_1writer_4k_vs_raw=%.2f\n", raw > 0 ? w1k.appends_per_s / raw : 0.0);
    return 0;
}
