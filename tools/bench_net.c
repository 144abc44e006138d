/* paxfs-bench-net — the transport between two endpoints over loopback TLS.
 *
 *   paxfs-bench-net [--runs R] [--seconds S] [--only rtt|rtt-window|stream-1m]
 *
 * Makes a throwaway PKI in a mkdtemp directory, starts nodes 1 and 2 in this
 * process (each with its own event loop thread, as two replicas would have),
 * and measures, R times each (median printed):
 *   rtt         100-byte ping-pong, one in flight: round trips/s, median µs
 *   rtt-window  100-byte round trips with 256 in flight: round trips/s
 *   stream-1m   1 MiB frames one way as fast as the queue takes them: MB/s
 * Node 2 echoes every 100-byte frame back to node 1 from its loop thread,
 * as a replica answers an ACCEPT. */
#include "base/clock.h"
#include "base/log.h"
#include "net/net.h"
#include "net/pki.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SMALL 100
#define LARGE (1u << 20)
#define WINDOW 256
#define RUNS_MAX 21

static char root[64];
static const uint8_t cluster_id[16] = {0xbe, 0x9c, 0x4e, 0x70, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};

struct bench {
    struct net *a, *b;
    atomic_uint_fast64_t echoed;    /* round trips completed at node 1 */
    atomic_uint_fast64_t large_got; /* 1 MiB frames received at node 2 */
    atomic_uint_fast64_t rtt_sent_ns;
    uint64_t *rtt_ns;
    size_t rtt_n, rtt_cap;
};

static struct bench B;

static void quiet(void *ctx, enum log_level level, const char *line)
{
    (void)ctx;
    if (level >= LOG_WARN)
        fprintf(stderr, "%s\n", line);
}

static void on_a(void *ctx, uint32_t from, uint8_t type, const uint8_t *p, size_t len)
{
    (void)ctx, (void)from, (void)type, (void)p, (void)len;
    atomic_fetch_add(&B.echoed, 1);
}

static void on_b(void *ctx, uint32_t from, uint8_t type, const uint8_t *p, size_t len)
{
    (void)ctx, (void)type;
    if (len == LARGE) {
        atomic_fetch_add(&B.large_got, 1);
        return;
    }
    while (net_send(B.b, from, p, len) == -EAGAIN) /* bounded by the window */
        sched_yield();
}

static int make_pki(void)
{
    snprintf(root, sizeof root, "/tmp/paxfs-bench-net.XXXXXX");
    if (!mkdtemp(root))
        return -errno;
    time_t now = time(NULL);
    EVP_PKEY *ca_key = pki_key_new();
    X509 *ca = pki_ca_new(ca_key, cluster_id, now - 3600, now + 86400);
    char path[256];
    snprintf(path, sizeof path, "%s/ca.crt", root);
    int rc = ca ? pki_write_cert(path, ca, 0644) : -EIO;
    for (uint32_t k = 1; rc == 0 && k <= 2; k++) {
        EVP_PKEY *key = pki_key_new();
        X509 *cert = pki_node_cert_new(ca, ca_key, key, k, cluster_id, now - 3600, now + 86400);
        snprintf(path, sizeof path, "%s/node%u.crt", root, k);
        rc = cert ? pki_write_cert(path, cert, 0644) : -EIO;
        snprintf(path, sizeof path, "%s/node%u.key", root, k);
        if (rc == 0)
            rc = pki_write_key(path, key, 0600);
        X509_free(cert);
        EVP_PKEY_free(key);
    }
    X509_free(ca);
    EVP_PKEY_free(ca_key);
    return rc;
}

static int endpoint(uint32_t id, net_frame_fn fn, struct net **out)
{
    struct net_config c;
    net_config_defaults(&c);
    c.id = id;
    c.n_nodes = 2;
    snprintf(c.addrs[1].host, sizeof c.addrs[1].host, "127.0.0.1");
    snprintf(c.addrs[2].host, sizeof c.addrs[2].host, "127.0.0.1");
    memcpy(c.cluster_id, cluster_id, 16);
    snprintf(c.ca_path, sizeof c.ca_path, "%s/ca.crt", root);
    snprintf(c.cert_path, sizeof c.cert_path, "%s/node%u.crt", root, id);
    snprintf(c.key_path, sizeof c.key_path, "%s/node%u.key", root, id);
    c.on_frame = fn;
    return net_new(&c, out);
}

static int cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

static double median(double *v, int n)
{
    for (int i = 1; i < n; i++) /* insertion sort: n <= RUNS_MAX */
        for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return v[n / 2];
}

static void wait_echoed(uint64_t want)
{
    uint64_t deadline = clock_now_ns() + 10000000000ull;
    for (uint64_t spins = 0; atomic_load(&B.echoed) < want; spins++)
        if ((spins & 1023) == 0 && clock_now_ns() > deadline) {
            fprintf(stderr, "paxfs-bench-net: an echo never came back\n");
            exit(1);
        }
}

/* One in flight; returns round trips/s and the median round trip in µs. */
static double run_rtt(double seconds, double *median_us)
{
    uint8_t msg[SMALL];
    memset(msg, 1, sizeof msg);
    B.rtt_n = 0;
    uint64_t t0 = clock_now_ns(), end = t0 + (uint64_t)(seconds * 1e9), done = 0;
    uint64_t base = atomic_load(&B.echoed);
    while (clock_now_ns() < end && B.rtt_n < B.rtt_cap) {
        uint64_t s = clock_now_ns();
        if (net_send(B.a, 2, msg, sizeof msg) != 0)
            continue;
        wait_echoed(base + done + 1);
        done++;
        B.rtt_ns[B.rtt_n++] = clock_now_ns() - s;
    }
    double elapsed = (double)(clock_now_ns() - t0) / 1e9;
    qsort(B.rtt_ns, B.rtt_n, sizeof *B.rtt_ns, cmp_u64);
    *median_us = B.rtt_n ? (double)B.rtt_ns[B.rtt_n / 2] / 1e3 : 0;
    return (double)done / elapsed;
}

static double run_window(double seconds)
{
    uint8_t msg[SMALL];
    memset(msg, 2, sizeof msg);
    uint64_t base = atomic_load(&B.echoed), sent = 0;
    uint64_t t0 = clock_now_ns(), end = t0 + (uint64_t)(seconds * 1e9);
    while (clock_now_ns() < end) {
        if (sent - (atomic_load(&B.echoed) - base) >= WINDOW) {
            sched_yield();
            continue;
        }
        if (net_send(B.a, 2, msg, sizeof msg) == 0)
            sent++;
    }
    wait_echoed(base + sent);
    double elapsed = (double)(clock_now_ns() - t0) / 1e9;
    return (double)sent / elapsed;
}

static double run_stream(double seconds)
{
    uint8_t *big = malloc(LARGE);
    memset(big, 3, LARGE);
    uint64_t base = atomic_load(&B.large_got), sent = 0;
    uint64_t t0 = clock_now_ns(), end = t0 + (uint64_t)(seconds * 1e9);
    while (clock_now_ns() < end) {
        int rc = net_send(B.a, 2, big, LARGE);
        if (rc == 0)
            sent++;
        else
            usleep(50); /* -EAGAIN: the queue is full, the backpressure works */
    }
    for (int i = 0; atomic_load(&B.large_got) < base + sent; i++) {
        if (i > 100000) {
            fprintf(stderr, "paxfs-bench-net: 1 MiB frames went missing\n");
            exit(1);
        }
        usleep(100);
    }
    double elapsed = (double)(clock_now_ns() - t0) / 1e9;
    free(big);
    return (double)sent * LARGE / 1e6 / elapsed;
}

int main(int argc, char **argv)
{
    int runs = 5;
    double seconds = 1.0;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc)
            runs = atoi(argv[++i]);
        else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc)
            only = argv[++i];
        else {
            fprintf(stderr, "usage: paxfs-bench-net [--runs R] [--seconds S] "
                            "[--only rtt|rtt-window|stream-1m]\n");
            return 2;
        }
    }
    if (runs < 1 || runs > RUNS_MAX || seconds <= 0 || seconds > 60) {
        fprintf(stderr, "paxfs-bench-net: --runs 1..%d, --seconds in (0, 60]\n", RUNS_MAX);
        return 2;
    }
    log_set_sink(quiet, NULL);
    if (make_pki() != 0 || endpoint(1, on_a, &B.a) != 0 || endpoint(2, on_b, &B.b) != 0) {
        fprintf(stderr, "paxfs-bench-net: setup failed\n");
        return 1;
    }
    net_set_peer_addr(B.a, 2, "127.0.0.1", net_port(B.b));
    net_set_peer_addr(B.b, 1, "127.0.0.1", net_port(B.a));
    net_start(B.a);
    net_start(B.b);
    uint64_t deadline = clock_now_ns() + 10000000000ull;
    while (!(net_peer_up(B.a, 2) && net_peer_up(B.b, 1)) && clock_now_ns() < deadline)
        usleep(1000);
    if (!net_peer_up(B.a, 2)) {
        fprintf(stderr, "paxfs-bench-net: the endpoints never connected\n");
        return 1;
    }
    B.rtt_cap = 4000000;
    B.rtt_ns = malloc(B.rtt_cap * sizeof *B.rtt_ns);

    double rtt[RUNS_MAX], lat[RUNS_MAX], win[RUNS_MAX], mbs[RUNS_MAX];
    bool do_rtt = !only || strcmp(only, "rtt") == 0;
    bool do_win = !only || strcmp(only, "rtt-window") == 0;
    bool do_stream = !only || strcmp(only, "stream-1m") == 0;
    for (int r = 0; r < runs; r++) {
        if (do_rtt)
            rtt[r] = run_rtt(seconds, &lat[r]);
        if (do_win)
            win[r] = run_window(seconds);
        if (do_stream)
            mbs[r] = run_stream(seconds);
    }
    if (do_rtt)
        printf("net rtt        %10.0f round trips/s  (100 B, 1 in flight, median %.1f us)\n",
               median(rtt, runs), median(lat, runs));
    if (do_win)
        printf("net rtt-window %10.0f round trips/s  (100 B, %d in flight)\n",
               median(win, runs), WINDOW);
    if (do_stream)
        printf("net stream-1m  %10.0f MB/s           (1 MiB frames, one way)\n",
               median(mbs, runs));
    printf("(medians of %d runs of %.1f s; TLS 1.3 over loopback, two loop threads)\n", runs,
           seconds);

    net_free(B.a);
    net_free(B.b);
    free(B.rtt_ns);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    return system(cmd) == 0 ? 0 : 1;
}
