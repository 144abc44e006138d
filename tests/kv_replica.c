/* paxfs-kv — a replica of a small replicated key-value map, for the
 * multi-process tests (test_cluster.sh) and the consensus benchmark.
 *
 *   paxfs-kv --config DIR/cluster.conf --node K --data DATADIR
 *
 * It runs a real replica (WAL, mutual TLS, the consensus core) whose state
 * machine is a map of keys, and takes one command per line on stdin,
 * answering one line on stdout:
 *
 *   put KEY VALUE          → ok RESULT | err ERRNO
 *   load N SIZE THREADS P  → load ok=.. failed=.. seconds=.. ops_per_s=..
 *                            mb_per_s=.. p50_us=.. p99_us=..
 *                            (N puts of unique keys P-t-i with SIZE-byte
 *                            values from THREADS threads; each acked key is
 *                            remembered for verify)
 *   verify P               → verify acked=.. missing=..  (acked keys of
 *                            load P absent from this replica's map)
 *   barrier                → ok | err ERRNO   (read barrier)
 *   digest                 → digest hash=.. keys=.. applied=.. dups=..
 *   status                 → status role=.. leader=.. ballot=.. commit=.. applied=..
 *   isolate on|off         → ok   (drop all of this node's traffic)
 *   quit                   → exits 0 after closing cleanly
 *
 * dups counts puts of a key that was already present: loads use unique
 * keys, so a non-zero dups means a proposal was applied twice. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/assert.h"
#include "base/crc32c.h"
#include "base/log.h"
#include "net/host.h"

/* ---- the state machine --------------------------------------------------- */

/* A key with its hash beside it: a probe compares hashes in the table and
 * reads a key only when they match, so an insert into a table of millions
 * of keys costs about one cache miss, not one per probed slot (strlen of
 * every probed key was 7% of the replicas' CPU in bench.sh consensus). */
struct kv_key {
    uint64_t hash;
    char *key; /* NULL: a free slot */
};

struct kv {
    pthread_mutex_t lock;
    struct kv_key *keys;
    size_t cap, n;
    uint64_t hash;
    uint64_t applied;
    uint64_t dups;
};

static struct kv kv = {.lock = PTHREAD_MUTEX_INITIALIZER};

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t kv_hash(const char *key, size_t klen)
{
    return fnv(0xcbf29ce484222325ull, key, klen);
}

/* Open addressing; returns the slot for key (its hash is h). */
static size_t kv_slot(uint64_t h, const char *key, size_t klen)
{
    size_t i = (size_t)h & (kv.cap - 1);
    while (kv.keys[i].key && !(kv.keys[i].hash == h && strncmp(kv.keys[i].key, key, klen) == 0 &&
                               kv.keys[i].key[klen] == '\0'))
        i = (i + 1) & (kv.cap - 1);
    return i;
}

static bool kv_insert(const char *key, size_t klen)
{
    if ((kv.n + 1) * 2 > kv.cap) {
        struct kv_key *old = kv.keys;
        size_t old_cap = kv.cap;
        kv.cap = old_cap ? old_cap * 2 : 1024;
        kv.keys = calloc(kv.cap, sizeof *kv.keys);
        ASSERT(kv.keys != NULL);
        for (size_t i = 0; i < old_cap; i++) {
            if (!old[i].key)
                continue;
            size_t j = (size_t)old[i].hash & (kv.cap - 1);
            while (kv.keys[j].key)
                j = (j + 1) & (kv.cap - 1);
            kv.keys[j] = old[i];
        }
        free(old);
    }
    uint64_t h = kv_hash(key, klen);
    size_t i = kv_slot(h, key, klen);
    if (kv.keys[i].key)
        return false;
    kv.keys[i].key = strndup(key, klen);
    ASSERT(kv.keys[i].key != NULL);
    kv.keys[i].hash = h;
    kv.n++;
    return true;
}

static bool kv_has(const char *key)
{
    pthread_mutex_lock(&kv.lock);
    size_t klen = strlen(key);
    bool has = kv.cap && kv.keys[kv_slot(kv_hash(key, klen), key, klen)].key != NULL;
    pthread_mutex_unlock(&kv.lock);
    return has;
}

/* A proposal is "KEY VALUE": the key up to the first space. */
static int64_t kv_apply(void *ctx, uint64_t slot, const uint8_t *data, size_t len)
{
    (void)ctx;
    const uint8_t *sp = memchr(data, ' ', len);
    size_t klen = sp ? (size_t)(sp - data) : len;
    pthread_mutex_lock(&kv.lock);
    bool fresh = kv_insert((const char *)data, klen);
    kv.dups += !fresh;
    /* The bytes enter the digest through CRC32C (hardware, ~0.1 ns/byte):
     * a byte-wise FNV over 1 MiB values took 29% of the replicas' CPU
     * in the 1 MiB benchmark, billing the test harness to consensus. */
    uint32_t crc = crc32c(0, data, len);
    kv.hash = fnv(fnv(fnv(kv.hash, &slot, sizeof slot), &crc, sizeof crc), &len, sizeof len);
    kv.applied = slot;
    int64_t n = (int64_t)kv.n;
    pthread_mutex_unlock(&kv.lock);
    return n;
}

/* ---- load ------------------------------------------------------------------ */

struct load {
    struct replica *r;
    const char *prefix;
    uint64_t per_thread;
    size_t size;
    int thread;
    uint64_t ok, failed;
    uint64_t *lat_us;
    char **acked;
};

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void *load_thread(void *arg)
{
    struct load *l = arg;
    char *buf = malloc(l->size + 128);
    ASSERT(buf != NULL);
    for (uint64_t i = 0; i < l->per_thread; i++) {
        int k = snprintf(buf, 128, "%s-%d-%" PRIu64, l->prefix, l->thread, i);
        size_t klen = (size_t)k;
        buf[k] = ' ';
        memset(buf + k + 1, 'v', l->size);
        uint64_t t0 = now_us();
        int64_t result;
        int rc = replica_propose(l->r, buf, klen + 1 + l->size, &result);
        uint64_t dt = now_us() - t0;
        if (rc == 0) {
            l->lat_us[l->ok] = dt;
            l->acked[l->ok] = strndup(buf, klen);
            l->ok++;
        } else {
            l->failed++;
        }
    }
    free(buf);
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Acked keys of every load, by prefix, for verify. */
struct acked_set {
    char prefix[64];
    char **keys;
    uint64_t n;
};
static struct acked_set acked_sets[16];
static int n_acked_sets;

static void cmd_load(struct replica *r, uint64_t n, size_t size, int threads, const char *prefix)
{
    if (threads < 1 || threads > 256 || n == 0 || n > 10000000 || size > (8u << 20) ||
        n_acked_sets == 16) {
        printf("err %d\n", EINVAL);
        return;
    }
    struct load *l = calloc((size_t)threads, sizeof *l);
    pthread_t *t = calloc((size_t)threads, sizeof *t);
    ASSERT(l && t);
    /* Exactly n puts: the first n % threads threads take one more. */
    uint64_t per = n / (uint64_t)threads + (n % (uint64_t)threads != 0);
    uint64_t t0 = now_us();
    for (int i = 0; i < threads; i++) {
        uint64_t mine = n / (uint64_t)threads + ((uint64_t)i < n % (uint64_t)threads);
        l[i] = (struct load){r, prefix, mine, size, i, 0, 0, calloc(per, 8), calloc(per, sizeof(char *))};
        ASSERT(l[i].lat_us && l[i].acked);
        pthread_create(&t[i], NULL, load_thread, &l[i]);
    }
    uint64_t ok = 0, failed = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        ok += l[i].ok;
        failed += l[i].failed;
    }
    double secs = (double)(now_us() - t0) / 1e6;
    uint64_t *lat = calloc(ok ? ok : 1, 8);
    struct acked_set *as = &acked_sets[n_acked_sets++];
    snprintf(as->prefix, sizeof as->prefix, "%s", prefix);
    as->keys = calloc(ok ? ok : 1, sizeof(char *));
    ASSERT(lat && as->keys);
    for (int i = 0; i < threads; i++) {
        for (uint64_t k = 0; k < l[i].ok; k++) {
            lat[as->n] = l[i].lat_us[k];
            as->keys[as->n++] = l[i].acked[k];
        }
        free(l[i].lat_us);
        free(l[i].acked);
    }
    qsort(lat, ok, 8, cmp_u64);
    printf("load ok=%" PRIu64 " failed=%" PRIu64 " seconds=%.3f ops_per_s=%.0f mb_per_s=%.1f "
           "p50_us=%" PRIu64 " p99_us=%" PRIu64 "\n", ok, failed, secs, (double)ok / secs,
           (double)ok * (double)size / secs / 1e6, ok ? lat[ok / 2] : 0,
           ok ? lat[(ok * 99) / 100] : 0);
    free(lat);
    free(l);
    free(t);
}

static void cmd_verify(const char *prefix)
{
    for (int i = 0; i < n_acked_sets; i++) {
        struct acked_set *as = &acked_sets[i];
        if (strcmp(as->prefix, prefix) != 0)
            continue;
        uint64_t missing = 0;
        for (uint64_t k = 0; k < as->n; k++)
            missing += !kv_has(as->keys[k]);
        printf("verify acked=%" PRIu64 " missing=%" PRIu64 "\n", as->n, missing);
        return;
    }
    printf("verify acked=0 missing=0\n");
}

static void usage(void)
{
    fprintf(stderr, "usage: paxfs-kv --config DIR/cluster.conf --node K --data DATADIR\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *config = NULL, *data = NULL;
    long node = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--config") == 0)
            config = argv[i + 1];
        else if (strcmp(argv[i], "--data") == 0)
            data = argv[i + 1];
        else if (strcmp(argv[i], "--node") == 0)
            node = strtol(argv[i + 1], NULL, 10);
        else
            usage();
    }
    if (!config || !data || node < 1 || argc != 7)
        usage();
    signal(SIGPIPE, SIG_IGN);
    log_set_level(getenv("PAXFS_KV_DEBUG") ? LOG_DEBUG : LOG_WARN);
    struct host_options o = {config, (uint32_t)node, data, {NULL, kv_apply}};
    struct host *h;
    char err[512];
    int rc = host_open(&o, &h, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "paxfs-kv: %s\n", err);
        return 2;
    }
    struct replica *r = host_replica(h);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready node=%ld\n", node);
    char line[1024];
    while (fgets(line, sizeof line, stdin)) {
        char a[256] = "", b[512] = "", p[64] = "";
        unsigned long long n, size;
        int threads;
        if (sscanf(line, "put %255s %511s", a, b) == 2) {
            char prop[800];
            int len = snprintf(prop, sizeof prop, "%s %s", a, b);
            int64_t result;
            rc = replica_propose(r, prop, (size_t)len, &result);
            if (rc == 0)
                printf("ok %" PRId64 "\n", result);
            else
                printf("err %d\n", -rc);
        } else if (sscanf(line, "load %llu %llu %d %63s", &n, &size, &threads, p) == 4) {
            cmd_load(r, n, (size_t)size, threads, p);
        } else if (sscanf(line, "verify %63s", p) == 1) {
            cmd_verify(p);
        } else if (strncmp(line, "barrier", 7) == 0) {
            rc = replica_read_barrier(r);
            if (rc == 0)
                printf("ok\n");
            else
                printf("err %d\n", -rc);
        } else if (strncmp(line, "digest", 6) == 0) {
            pthread_mutex_lock(&kv.lock);
            printf("digest hash=%016" PRIx64 " keys=%zu applied=%" PRIu64 " dups=%" PRIu64 "\n",
                   kv.hash, kv.n, kv.applied, kv.dups);
            pthread_mutex_unlock(&kv.lock);
        } else if (strncmp(line, "status", 6) == 0) {
            struct replica_status st;
            replica_status(r, &st);
            printf("status role=%s leader=%u ballot=%" PRIu64 " commit=%" PRIu64 " applied=%" PRIu64 "\n",
                   px_role_name(st.role), st.leader, st.ballot, st.commit, st.applied);
        } else if (sscanf(line, "isolate %15s", a) == 1) {
            host_set_isolated(h, strcmp(a, "on") == 0);
            printf("ok\n");
        } else if (strncmp(line, "quit", 4) == 0) {
            break;
        } else {
            printf("err %d\n", EINVAL);
        }
    }
    host_close(h);
    return 0;
}
