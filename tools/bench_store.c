/* paxfs-bench-store DIR [MIB]: block store throughput on this machine.
 *
 * For block sizes 64 KiB .. 4 MiB, zstd levels 1 and 3, and two kinds of
 * data (text-like: words from a small dictionary drawn by a seeded PRNG;
 * random: PRNG bytes), it puts MIB MiB (default 32) of distinct blocks into
 * a fresh store under DIR, then measures:
 *   write   store_put of new blocks (hash, compress, write, fdatasync,
 *           rename, fsync of the shard dir) in plain MB/s;
 *   dedup   store_put of the same blocks again (hash + stat);
 *   cold    store_get after dropping the store's LRU and asking the kernel
 *           to drop each block file's clean pages (POSIX_FADV_DONTNEED);
 *           a hypervisor's or disk's own cache may still hold them;
 *   warm    store_get with the files in the OS page cache, LRU dropped;
 * plus, in the same run, the raw sequential write speed of a plain file in
 * DIR (256 MiB in 1 MiB writes, fsync at the end) and the CPU cost of
 * the block-name hash (SHA-512/256) and of zstd alone (no I/O). Everything
 * is single-threaded. Output: key=value lines; write_vs_raw is write MB/s
 * over raw MB/s. At most 256 MiB + 16 * MIB MiB
 * (< 1 GiB at the default) is written per run; every file is deleted. */
#include "fs/store.h"

#include "base/assert.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/prng.h"

#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#define MIB (1024.0 * 1024.0)
#define RAW_BYTES (256u << 20)

static double mb_s(uint64_t bytes, uint64_t ns)
{
    return ns ? (double)bytes / MIB / ((double)ns / 1e9) : 0.0;
}

static void fill_text(uint8_t *p, size_t n, struct prng *r)
{
    static const char *words[] = {
        "the ",     "replica ", "applies ", "each ",   "chosen ",  "slot ",    "in ",
        "order; ",  "a ",       "ballot ",  "wins ",   "when ",    "quorum ",  "accepts ",
        "it.\n",    "inode ",   "block ",   "map ",    "write ",   "read ",    "file ",
        "data ",    "leader ",  "learns ",  "value ",  "proposal ", "commit ", "index ",
        "snapshot ", "log ",    "42 ",      "2024-05-01 "};
    size_t off = 0;
    while (off < n) {
        const char *w = words[prng_below(r, sizeof words / sizeof words[0])];
        size_t k = strlen(w);
        if (k > n - off)
            k = n - off;
        memcpy(p + off, w, k);
        off += k;
    }
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void rm_tree(const char *path) { nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static int raw_write(const char *dir, double *out)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/raw.bin", dir);
    size_t chunk = 1u << 20;
    uint8_t *buf = malloc(chunk);
    struct prng r;
    prng_seed(&r, 1);
    prng_fill(&r, buf, chunk);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        free(buf);
        return -errno;
    }
    uint64_t t0 = clock_now_ns();
    int rc = 0;
    for (size_t done = 0; done < RAW_BYTES && rc == 0; done += chunk)
        if (write(fd, buf, chunk) != (ssize_t)chunk)
            rc = -EIO;
    if (rc == 0 && fsync(fd) != 0)
        rc = -errno;
    uint64_t t1 = clock_now_ns();
    close(fd);
    unlink(path);
    free(buf);
    *out = mb_s(RAW_BYTES, t1 - t0);
    return rc;
}

/* Flushes the file system of dir, so that one measurement's writeback and
 * deletions are not billed to the next. */
static void settle(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        syncfs(fd);
        close(fd);
    }
}

static double name_hash_speed(const uint8_t *data, size_t len)
{
    struct store_name n;
    store_name_of(data, 64, &n); /* the first call loads OpenSSL's provider */
    uint64_t t0 = clock_now_ns();
    for (size_t off = 0; off + (1u << 20) <= len; off += 1u << 20)
        store_name_of(data + off, 1u << 20, &n);
    return mb_s(len / (1u << 20) * (1u << 20), clock_now_ns() - t0);
}

/* CPU only, no I/O: zstd compress and decompress speed of 256 KiB blocks,
 * to separate the level's cost from the disk's noise. */
static void zstd_speed(const char *kind, const uint8_t *data, size_t len, int level)
{
    const size_t bs = 256u << 10;
    size_t cap = ZSTD_compressBound(bs), n = len / bs;
    uint8_t *z = malloc(cap * n), *plain = malloc(bs);
    size_t *zlen = calloc(n, sizeof *zlen);
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    ZSTD_DCtx *dc = ZSTD_createDCtx();
    uint64_t stored = 0, t0 = clock_now_ns();
    for (size_t i = 0; i < n; i++) {
        zlen[i] = ZSTD_compressCCtx(cc, z + i * cap, cap, data + i * bs, bs, level);
        stored += zlen[i];
    }
    uint64_t t1 = clock_now_ns();
    for (size_t i = 0; i < n; i++)
        ZSTD_decompressDCtx(dc, plain, bs, z + i * cap, zlen[i]);
    uint64_t t2 = clock_now_ns();
    printf("cpu_zstd data=%s level=%d bs=%zu compress_mb_s=%.1f decompress_mb_s=%.1f "
           "zstd_over_plain=%.3f\n",
           kind, level, bs, mb_s(n * bs, t1 - t0), mb_s(n * bs, t2 - t1),
           (double)stored / (double)(n * bs));
    ZSTD_freeCCtx(cc);
    ZSTD_freeDCtx(dc);
    free(z);
    free(plain);
    free(zlen);
}

static void drop_page_cache(const char *root, const struct store_name *n)
{
    char hex[STORE_NAME_HEX_LEN + 1], path[4096 + 128];
    store_name_hex(n, hex);
    snprintf(path, sizeof path, "%s/blocks/%.2s/%s", root, hex, hex);
    int fd = open(path, O_RDONLY);
    if (fd >= 0) {
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
    }
}

struct result {
    double write, dedup, cold, warm, ratio;
};

/* One configuration: a fresh store, `total` bytes of blocks from data. */
static int run_one(const char *dir, uint32_t bs, int level, const char *kind, const uint8_t *data,
                   size_t total, double raw, struct result *res, bool print)
{
    char root[4096];
    snprintf(root, sizeof root, "%s/store-%u-%d-%s", dir, bs, level, kind);
    rm_tree(root);
    settle(dir);
    struct store_config cfg;
    store_config_init(&cfg, root);
    cfg.block_size = bs;
    cfg.zstd_level = level;
    cfg.cache_bytes = 0;
    struct store *s = NULL;
    int rc = store_open(&cfg, &s);
    if (rc)
        return rc;
    size_t nblocks = total / bs;
    struct store_name *names = calloc(nblocks, sizeof *names);
    uint8_t *out = malloc(bs);
    uint64_t t0 = clock_now_ns();
    for (size_t i = 0; i < nblocks && rc == 0; i++)
        rc = store_put(s, data + i * bs, bs, &names[i]);
    uint64_t t1 = clock_now_ns();
    for (size_t i = 0; i < nblocks && rc == 0; i++)
        rc = store_put(s, data + i * bs, bs, &names[i]);
    uint64_t t2 = clock_now_ns();
    for (size_t i = 0; i < nblocks; i++)
        drop_page_cache(root, &names[i]);
    size_t len;
    uint64_t t3 = clock_now_ns();
    for (size_t i = 0; i < nblocks && rc == 0; i++)
        rc = store_get(s, &names[i], out, bs, &len);
    uint64_t t4 = clock_now_ns();
    for (size_t i = 0; i < nblocks && rc == 0; i++)
        rc = store_get(s, &names[i], out, bs, &len);
    uint64_t t5 = clock_now_ns();
    struct store_stats st;
    store_get_stats(s, &st);
    store_close(s);
    rm_tree(root);
    free(names);
    free(out);
    if (rc)
        return rc;
    uint64_t bytes = (uint64_t)nblocks * bs;
    *res = (struct result){
        .write = mb_s(bytes, t1 - t0),
        .dedup = mb_s(bytes, t2 - t1),
        .cold = mb_s(bytes, t4 - t3),
        .warm = mb_s(bytes, t5 - t4),
        .ratio = st.bytes_plain ? (double)st.bytes_stored / (double)st.bytes_plain : 0,
    };
    if (!print)
        return 0;
    printf("bs=%u level=%d data=%s write_mb_s=%.1f write_vs_raw=%.2f dedup_put_mb_s=%.1f "
           "read_cold_mb_s=%.1f read_warm_mb_s=%.1f stored_over_plain=%.3f blocks=%zu\n",
           bs, level, kind, res->write, raw > 0 ? res->write / raw : 0, res->dedup, res->cold,
           res->warm, res->ratio, nblocks);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: paxfs-bench-store DIR [MIB_PER_CONFIG (1..48, default 32)]\n");
        return 2;
    }
    const char *dir = argv[1];
    if (strlen(dir) > 3000) {
        fprintf(stderr, "paxfs-bench-store: DIR path too long\n");
        return 2;
    }
    long mib = argc == 3 ? strtol(argv[2], NULL, 10) : 32;
    if (mib < 1 || mib > 48) {
        fprintf(stderr, "paxfs-bench-store: MIB_PER_CONFIG must be 1..48 (bounds the run "
                        "under 1 GiB written)\n");
        return 2;
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "paxfs-bench-store: cannot create %s: %s\n", dir, strerror(errno));
        return 2;
    }
    log_set_level(LOG_WARN);
    /* Block sizes must divide total: MIB MiB is a multiple of 4 MiB only
     * from 4 up; below that the 4 MiB configuration writes what fits. */
    size_t total = (size_t)mib << 20;
    uint8_t *text = malloc(total), *rnd = malloc(total);
    if (!text || !rnd)
        return 1;
    struct prng r;
    prng_seed(&r, 2024);
    fill_text(text, total, &r);
    prng_fill(&r, rnd, total);

    /* The raw write goes first so every ratio has its denominator; then
     * syncfs, so its writeback does not land in the first configuration. */
    double raw = 0;
    int rc = raw_write(dir, &raw);
    if (rc) {
        fprintf(stderr, "paxfs-bench-store: raw write failed: %s\n", strerror(-rc));
        return 1;
    }
    settle(dir);
    printf("raw_seq_write_mb_s=%.1f raw_bytes=%u\n", raw, RAW_BYTES);
    printf("cpu_name_hash_mb_s=%.1f\n", name_hash_speed(rnd, total));
    for (int level = 1; level <= 3; level += 2) {
        zstd_speed("text", text, total, level);
        zstd_speed("random", rnd, total, level);
    }
    printf("mib_per_config=%ld threads=1 page_cache_note=cold_reads_use_fadvise_dontneed\n", mib);

    /* A discarded warm-up, so the first measured configuration does not
     * pay for the process's cold start (page faults, OpenSSL, zstd). */
    struct result warm;
    if ((rc = run_one(dir, 64u << 10, 1, "warmup", rnd, MIN(total, (size_t)2 << 20), 0, &warm,
                      false))) {
        fprintf(stderr, "paxfs-bench-store: warm-up failed: %s\n", strerror(-rc));
        return 1;
    }
    static const uint32_t sizes[] = {64u << 10, 256u << 10, 1u << 20, 4u << 20};
    static const int levels[] = {1, 3};
    for (size_t b = 0; b < sizeof sizes / sizeof sizes[0]; b++) {
        for (size_t l = 0; l < 2; l++) {
            struct result res;
            if (total < sizes[b])
                continue;
            if ((rc = run_one(dir, sizes[b], levels[l], "text", text, total, raw, &res,
                               true)) ||
                (rc = run_one(dir, sizes[b], levels[l], "random", rnd, total, raw, &res, true))) {
                fprintf(stderr, "paxfs-bench-store: bs=%u level=%d failed: %s\n", sizes[b],
                        levels[l], strerror(-rc));
                return 1;
            }
        }
    }
    free(text);
    free(rnd);
    return 0;
}
