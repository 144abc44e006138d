/* Tests of the replica driver (consensus/replica.c) in one process: three
 * replicas with real WALs in a temporary directory, real threads, joined by
 * an in-memory transport that can cut a node off. The multi-process tests
 * over mutual TLS are in test_cluster.c. */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/log.h"
#include "consensus/replica.h"

#define N 3

/* The state machine: a chain hash over everything applied, and a count. */
struct chain_sm {
    pthread_mutex_t lock;
    uint64_t hash;
    uint64_t count;
    uint64_t last_slot;
};

struct node {
    struct replica *r;
    struct chain_sm sm;
    char dir[256];
};

static struct node nodes[N + 1];
static atomic_bool cut[N + 1];
static char root[] = "/tmp/paxfs-test-replica-XXXXXX";

static int64_t sm_apply(void *ctx, uint64_t slot, const uint8_t *data, size_t len)
{
    struct chain_sm *sm = ctx;
    pthread_mutex_lock(&sm->lock);
    for (size_t i = 0; i < len; i++)
        sm->hash = (sm->hash ^ data[i]) * 0x100000001b3ull;
    sm->hash ^= slot;
    sm->count++;
    sm->last_slot = slot;
    int64_t result = (int64_t)sm->count;
    pthread_mutex_unlock(&sm->lock);
    return result;
}

static int mem_send(void *ctx, const struct px_msg *m)
{
    (void)ctx;
    if (m->to < 1 || m->to > N || cut[m->from] || cut[m->to] || !nodes[m->to].r)
        return -ENOTCONN;
    replica_receive(nodes[m->to].r, m);
    return 0;
}

static void quiet(void *ctx, enum log_level level, const char *line)
{
    (void)ctx;
    if (level >= LOG_ERROR || getenv("PAXFS_TEST_LOG"))
        fprintf(stderr, "%s\n", line);
}

static void node_open(int id)
{
    struct node *nd = &nodes[id];
    memset(&nd->sm, 0, sizeof nd->sm);
    pthread_mutex_init(&nd->sm.lock, NULL);
    struct replica_config c;
    replica_config_defaults(&c);
    c.id = (uint32_t)id;
    c.n_nodes = N;
    c.tick_ms = 5;
    c.op_timeout_ms = 3000;
    snprintf(c.wal_dir, sizeof c.wal_dir, "%s/wal", nd->dir);
    c.sm = (struct replica_sm){&nd->sm, sm_apply};
    c.transport = (struct replica_transport){NULL, mem_send};
    struct replica *r;
    int rc = replica_open(&c, &r);
    cr_assert_eq(rc, 0, "replica_open: %s", strerror(-rc));
    cr_assert_eq(replica_start(r), 0);
    nd->r = r;
}

static void node_close(int id)
{
    struct replica *r = nodes[id].r;
    nodes[id].r = NULL;
    usleep(20000); /* let in-flight sends to it finish */
    replica_close(r);
}

static void setup(void)
{
    log_set_sink(quiet, NULL);
    cr_assert_not_null(mkdtemp(root));
    for (int i = 1; i <= N; i++) {
        snprintf(nodes[i].dir, sizeof nodes[i].dir, "%s/n%d", root, i);
        cr_assert_eq(mkdir(nodes[i].dir, 0700), 0);
        cut[i] = false;
    }
    for (int i = 1; i <= N; i++)
        node_open(i);
}

static void teardown(void)
{
    for (int i = 1; i <= N; i++)
        if (nodes[i].r)
            node_close(i);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    cr_assert_eq(system(cmd), 0);
    log_set_sink(NULL, NULL);
}

/* Waits (bounded) until every open node applied the same number of
 * proposals with the same hash. */
static void await_equal(uint64_t count)
{
    for (int k = 0; k < 1000; k++) {
        bool same = true;
        for (int i = 1; i <= N; i++) {
            if (!nodes[i].r)
                continue;
            pthread_mutex_lock(&nodes[i].sm.lock);
            same &= nodes[i].sm.count == count && nodes[i].sm.hash == nodes[1].sm.hash;
            pthread_mutex_unlock(&nodes[i].sm.lock);
        }
        if (same)
            return;
        usleep(5000);
    }
    cr_assert_fail("replicas did not converge to %llu proposals", (unsigned long long)count);
}

TestSuite(replica, .init = setup, .fini = teardown, .timeout = 60);

Test(replica, proposals_on_every_node_apply_everywhere_in_one_order)
{
    int64_t result;
    for (int k = 0; k < 30; k++) {
        char v[32];
        snprintf(v, sizeof v, "value-%d", k);
        cr_assert_eq(replica_propose(nodes[k % N + 1].r, v, strlen(v), &result), 0);
        cr_assert_gt(result, 0);
    }
    await_equal(30);
}

struct writer_arg {
    int node;
    int count;
    int ok;
};

static void *writer(void *p)
{
    struct writer_arg *a = p;
    for (int k = 0; k < a->count; k++) {
        char v[48];
        snprintf(v, sizeof v, "w%d-%d", a->node, k);
        int64_t result;
        if (replica_propose(nodes[a->node].r, v, strlen(v), &result) == 0)
            a->ok++;
    }
    return NULL;
}

Test(replica, concurrent_proposers_lose_nothing_and_apply_once)
{
    pthread_t t[6];
    struct writer_arg a[6];
    for (int i = 0; i < 6; i++) {
        a[i] = (struct writer_arg){i % N + 1, 100, 0};
        pthread_create(&t[i], NULL, writer, &a[i]);
    }
    for (int i = 0; i < 6; i++) {
        pthread_join(t[i], NULL);
        cr_assert_eq(a[i].ok, 100);
    }
    await_equal(600);
}

Test(replica, restarted_replica_rebuilds_from_its_wal_and_catches_up)
{
    int64_t result;
    for (int k = 0; k < 10; k++)
        cr_assert_eq(replica_propose(nodes[1].r, "a", 1, &result), 0);
    await_equal(10);
    node_close(3);
    for (int k = 0; k < 10; k++)
        cr_assert_eq(replica_propose(nodes[1].r, "b", 1, &result), 0);
    node_open(3);
    await_equal(20);
}

Test(replica, majority_goes_on_without_a_cut_off_node_and_it_catches_up)
{
    int64_t result;
    cut[2] = true;
    for (int k = 0; k < 10; k++)
        cr_assert_eq(replica_propose(nodes[1].r, "x", 1, &result), 0);
    cut[2] = false;
    cr_assert_eq(replica_propose(nodes[2].r, "y", 1, &result), 0);
    await_equal(11);
}

Test(replica, no_quorum_fails_with_eio_after_the_op_timeout)
{
    int64_t result;
    cr_assert_eq(replica_propose(nodes[1].r, "warm", 4, &result), 0);
    cut[2] = true;
    cut[3] = true;
    cr_assert_eq(replica_propose(nodes[1].r, "lost", 4, &result), -EIO);
    cut[2] = false;
    cut[3] = false;
}

Test(replica, read_barrier_sees_every_earlier_write)
{
    int64_t result;
    cr_assert_eq(replica_propose(nodes[1].r, "w", 1, &result), 0);
    cr_assert_eq(replica_read_barrier(nodes[2].r), 0);
    pthread_mutex_lock(&nodes[2].sm.lock);
    uint64_t count = nodes[2].sm.count;
    pthread_mutex_unlock(&nodes[2].sm.lock);
    cr_assert_geq(count, 1, "a read after the write returned sees it on another node");
}

Test(replica, read_barrier_on_a_fresh_cluster_returns)
{
    /* Regression: a read index of 0 (nothing chosen yet) was taken for
     * "unknown" and the barrier waited for slot 1 until op_timeout; the
     * first `ls` on a new mount hung for 30 s. */
    cr_assert_eq(replica_read_barrier(nodes[1].r), 0);
    cr_assert_eq(replica_read_barrier(nodes[2].r), 0);
}
