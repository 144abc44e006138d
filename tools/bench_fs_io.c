/* paxfs-bench-fs-io — the I/O patterns of tools/bench_fs.sh that dd and the
 * shell cannot produce, each printing key=value lines:
 *
 *   gen BYTES                        pseudo-random bytes (incompressible, no
 *                                    two blocks alike) on stdout, for dd
 *   randwrite FILE FILE_MB SECONDS   4 KiB writes at random aligned offsets
 *                                    of FILE (made FILE_MB long first), each
 *                                    followed by fsync: iops=
 *   create DIR FILES WRITERS SECONDS FILES files of 4 KiB, spread over
 *                                    WRITERS threads each in its own
 *                                    subdirectory DIR/wK: files_per_s=
 *   stall FILE SECONDS               4 KiB pwrite + fsync in a loop, timing
 *                                    each completion: the longest gap
 *                                    between two completions (max_gap_ms=)
 *                                    and when it started
 *
 * Every loop stops after SECONDS (or its count): a stuck filesystem makes
 * a slow number, never a benchmark that does not end. A failed call is
 * reported on stderr and exits 1. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/prng.h"

#define IO_SIZE 4096u

static double now_s(void)
{
    return (double)clock_now_ns() / 1e9;
}

static void die(const char *what, const char *path)
{
    fprintf(stderr, "paxfs-bench-fs-io: %s %s: %s\n", what, path, strerror(errno));
    exit(1);
}

static int cmd_gen(uint64_t bytes)
{
    static uint8_t buf[1u << 20];
    struct prng p;
    prng_seed(&p, (uint64_t)clock_now_ns());
    for (uint64_t done = 0; done < bytes;) {
        size_t n = (size_t)(bytes - done < sizeof buf ? bytes - done : sizeof buf);
        prng_fill(&p, buf, sizeof buf);
        for (size_t off = 0; off < n;) {
            ssize_t w = write(1, buf + off, n - off);
            if (w < 0)
                die("write", "stdout");
            off += (size_t)w;
        }
        done += n;
    }
    return 0;
}

static int cmd_randwrite(const char *path, uint64_t file_mb, double seconds)
{
    uint8_t buf[IO_SIZE];
    struct prng p;
    prng_seed(&p, 42);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        die("open", path);
    /* Written, not a hole, so every random write overwrites a real block. */
    uint64_t blocks = file_mb * (1u << 20) / IO_SIZE;
    static uint8_t big[1u << 20];
    prng_fill(&p, big, sizeof big);
    for (uint64_t i = 0; i < file_mb; i++)
        if (pwrite(fd, big, sizeof big, (off_t)(i << 20)) != (ssize_t)sizeof big)
            die("pwrite", path);
    if (fsync(fd) != 0)
        die("fsync", path);
    double t0 = now_s(), t = t0;
    uint64_t n = 0;
    for (; t - t0 < seconds && n < 10000000; n++) {
        prng_fill(&p, buf, sizeof buf);
        off_t off = (off_t)(prng_next(&p) % blocks * IO_SIZE);
        if (pwrite(fd, buf, sizeof buf, off) != (ssize_t)sizeof buf)
            die("pwrite", path);
        if (fsync(fd) != 0)
            die("fsync", path);
        t = now_s();
    }
    close(fd);
    printf("iops=%.0f writes=%" PRIu64 " seconds=%.2f\n", (double)n / (t - t0), n, t - t0);
    return 0;
}

struct creator {
    pthread_t th;
    char dir[4096];
    uint64_t files;
    uint64_t done;
    double deadline;
    int err;
};

static void *creator_main(void *arg)
{
    struct creator *c = arg;
    uint8_t buf[IO_SIZE];
    struct prng p;
    prng_seed(&p, (uint64_t)(uintptr_t)c);
    char path[4200];
    for (uint64_t i = 0; i < c->files && now_s() < c->deadline; i++) {
        prng_fill(&p, buf, sizeof buf);
        snprintf(path, sizeof path, "%s/f%06" PRIu64, c->dir, i);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) {
            c->err = errno;
            return NULL;
        }
        ssize_t w = write(fd, buf, sizeof buf);
        int e = errno;
        if (close(fd) != 0 || w != (ssize_t)sizeof buf) {
            c->err = w < 0 ? e : EIO;
            return NULL;
        }
        c->done++;
    }
    return NULL;
}

static int cmd_create(const char *dir, uint64_t files, unsigned writers, double seconds)
{
    if (writers == 0 || writers > 64)
        writers = 1;
    struct creator *c = calloc(writers, sizeof *c);
    if (!c)
        die("calloc", "");
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        die("mkdir", dir);
    double t0 = now_s();
    for (unsigned k = 0; k < writers; k++) {
        snprintf(c[k].dir, sizeof c[k].dir, "%s/w%u", dir, k);
        if (mkdir(c[k].dir, 0755) != 0 && errno != EEXIST)
            die("mkdir", c[k].dir);
        c[k].files = files / writers + (k < files % writers);
        c[k].deadline = t0 + seconds;
    }
    for (unsigned k = 0; k < writers; k++)
        if (pthread_create(&c[k].th, NULL, creator_main, &c[k]) != 0)
            die("pthread_create", "");
    uint64_t done = 0;
    int err = 0;
    for (unsigned k = 0; k < writers; k++) {
        pthread_join(c[k].th, NULL);
        done += c[k].done;
        if (c[k].err)
            err = c[k].err;
    }
    double t = now_s() - t0;
    free(c);
    if (err) {
        errno = err;
        die("create in", dir);
    }
    printf("files_per_s=%.0f files=%" PRIu64 " seconds=%.2f\n", (double)done / t, done, t);
    return 0;
}

static int cmd_stall(const char *path, double seconds)
{
    uint8_t buf[IO_SIZE];
    memset(buf, 0xa5, sizeof buf);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        die("open", path);
    double t0 = now_s(), last = t0, gap = 0, gap_at = 0;
    uint64_t n = 0;
    for (; last - t0 < seconds && n < 100000000; n++) {
        buf[0] = (uint8_t)n;
        if (pwrite(fd, buf, sizeof buf, (off_t)(n % 256 * IO_SIZE)) != (ssize_t)sizeof buf)
            die("pwrite", path);
        if (fsync(fd) != 0)
            die("fsync", path);
        double t = now_s();
        if (t - last > gap) {
            gap = t - last;
            gap_at = last - t0;
        }
        last = t;
    }
    close(fd);
    printf("max_gap_ms=%.0f gap_started_at_s=%.2f writes=%" PRIu64 "\n", gap * 1e3, gap_at, n);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "gen") == 0)
        return cmd_gen(strtoull(argv[2], NULL, 10));
    if (argc == 5 && strcmp(argv[1], "randwrite") == 0)
        return cmd_randwrite(argv[2], strtoull(argv[3], NULL, 10), atof(argv[4]));
    if (argc == 6 && strcmp(argv[1], "create") == 0)
        return cmd_create(argv[2], strtoull(argv[3], NULL, 10), (unsigned)atoi(argv[4]),
                          atof(argv[5]));
    if (argc == 4 && strcmp(argv[1], "stall") == 0)
        return cmd_stall(argv[2], atof(argv[3]));
    fprintf(stderr, "usage: paxfs-bench-fs-io gen BYTES | randwrite FILE FILE_MB SECONDS |\n"
                    "       create DIR FILES WRITERS SECONDS | stall FILE SECONDS\n");
    return 2;
}
