/* Tests of the replica driver (consensus/replica.c) in one process: three
 * replicas with real WALs in a temporary directory, real threads, joined by
 * an in-memory transport that can cut a node off. The multi-process tests
 * over mutual TLS are in test_cluster.c.
 *
 * Suite replica_snap runs the same replicas with snapshots on (every 20
 * slots, 5 slots of slack) over a state machine that can snapshot, restore
 * and sync, and plays snapshot transfer by hand (the network part is
 * fs/transfer.c's): it copies a live node's snapshot file into a lagging
 * node's snapshot directory and calls replica_install_snapshot. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/clock.h"
#include "base/log.h"
#include "consensus/replica.h"
#include "consensus/snapfile.h"

#define N 3

/* The state machine: a chain hash over everything applied, a count, and
 * the last few values applied (so a restore that mixed up its fields, or
 * applied a value twice, shows). The image is all of it; the counters
 * below the line are this process's observations, not state. */
#define RING 4
#define RING_VALUE_MAX 24
#define IMAGE_MAGIC 0x4e49414843545345ull /* "ESTCHAIN" */
#define IMAGE_BYTES (4 * 8 + RING * (1 + RING_VALUE_MAX))
struct chain_sm {
    pthread_mutex_t lock;
    uint64_t hash;
    uint64_t count;
    uint64_t last_slot;
    uint8_t ring_len[RING];
    uint8_t ring[RING][RING_VALUE_MAX];
    /* -- not in the image -- */
    uint8_t begun[IMAGE_BYTES]; /* the image sm_snapshot_begin fixed */
    uint64_t applies;        /* apply calls since open */
    uint64_t restores;       /* restore calls that succeeded since open */
    uint64_t restored_count; /* count of the last image restored */
    uint64_t syncs;
    uint64_t begun_slots[64]; /* the slot of each snapshot begun since open, */
    size_t n_begun;           /* the first 64 */
    pthread_cond_t begun_cond; /* broadcast with lock held when n_begun grows */
    atomic_uint needed;      /* snapshot_needed calls */
    atomic_uint needed_from;
    atomic_uint_fast64_t needed_slot;
    /* sync_gate: the next sync waits (bounded) for sync_release, to hold a
     * snapshot on the snapshot thread. */
    atomic_bool sync_gate, sync_entered, sync_release;
};

struct node {
    struct replica *r;
    struct chain_sm sm;
    char dir[256];
    char snap_dir[300];
};

static struct node nodes[N + 1];
/* Guards nodes[i].r against the senders (mem_send, on every replica's
 * thread) while the test thread opens or closes node i. */
static pthread_rwlock_t nodes_lock = PTHREAD_RWLOCK_INITIALIZER;
/* cut[i]: node i neither sends nor receives. deaf[i]: it sends, but
 * nothing reaches it. */
static atomic_bool cut[N + 1];
static atomic_bool deaf[N + 1];
static bool with_snapshots; /* the suite's replicas take snapshots */
static uint64_t log_slack_bytes; /* 0: the default; a test sets it before the nodes open */
/* 0: the default; else snapshots by bytes only (the slot rule far away) */
static uint64_t snapshot_every_bytes;
/* The snapshot= of each node's last replica_open log line (-1: none). */
static atomic_int_fast64_t open_snapshot[N + 1];
static char root[64];

static int64_t sm_apply(void *ctx, uint64_t slot, const uint8_t *data, size_t len)
{
    struct chain_sm *sm = ctx;
    pthread_mutex_lock(&sm->lock);
    for (size_t i = 0; i < len; i++)
        sm->hash = (sm->hash ^ data[i]) * 0x100000001b3ull;
    sm->hash ^= slot;
    size_t k = sm->count % RING;
    sm->ring_len[k] = (uint8_t)(len < RING_VALUE_MAX ? len : RING_VALUE_MAX);
    memset(sm->ring[k], 0, RING_VALUE_MAX);
    memcpy(sm->ring[k], data, sm->ring_len[k]);
    sm->count++;
    sm->last_slot = slot;
    sm->applies++;
    int64_t result = (int64_t)sm->count;
    pthread_mutex_unlock(&sm->lock);
    return result;
}


/* The image, lock held. */
static void image_of(const struct chain_sm *sm, struct buf *out)
{
    buf_put_u64(out, IMAGE_MAGIC);
    buf_put_u64(out, sm->hash);
    buf_put_u64(out, sm->count);
    buf_put_u64(out, sm->last_slot);
    for (size_t i = 0; i < RING; i++) {
        buf_put_u8(out, sm->ring_len[i]);
        buf_put(out, sm->ring[i], RING_VALUE_MAX);
    }
}

static int sm_snapshot_begin(void *ctx)
{
    struct chain_sm *sm = ctx;
    struct buf b;
    buf_init(&b);
    pthread_mutex_lock(&sm->lock);
    image_of(sm, &b);
    if (sm->n_begun < 64)
        sm->begun_slots[sm->n_begun++] = sm->last_slot;
    pthread_cond_broadcast(&sm->begun_cond);
    pthread_mutex_unlock(&sm->lock);
    cr_assert_eq(b.len, IMAGE_BYTES);
    memcpy(sm->begun, b.data, IMAGE_BYTES);
    buf_deinit(&b);
    return 0;
}

static int sm_snapshot_image(void *ctx, struct buf *out)
{
    struct chain_sm *sm = ctx;
    buf_put(out, sm->begun, IMAGE_BYTES);
    return 0;
}

static int sm_restore(void *ctx, const uint8_t *image, size_t len)
{
    struct chain_sm *sm = ctx;
    struct reader rd;
    reader_init(&rd, image, len);
    if (get_u64(&rd) != IMAGE_MAGIC || len != IMAGE_BYTES)
        return -EINVAL;
    pthread_mutex_lock(&sm->lock);
    sm->hash = get_u64(&rd);
    sm->count = get_u64(&rd);
    sm->last_slot = get_u64(&rd);
    for (size_t i = 0; i < RING; i++) {
        sm->ring_len[i] = get_u8(&rd);
        memcpy(sm->ring[i], get_bytes(&rd, RING_VALUE_MAX), RING_VALUE_MAX);
    }
    sm->restores++;
    sm->restored_count = sm->count;
    pthread_mutex_unlock(&sm->lock);
    return 0;
}

static int sm_sync(void *ctx, const uint8_t *image, size_t len)
{
    (void)image;
    (void)len;
    struct chain_sm *sm = ctx;
    if (atomic_exchange(&sm->sync_gate, false)) {
        atomic_store(&sm->sync_entered, true);
        for (int k = 0; k < 2000 && !atomic_load(&sm->sync_release); k++)
            usleep(5000);
    }
    pthread_mutex_lock(&sm->lock);
    sm->syncs++;
    pthread_mutex_unlock(&sm->lock);
    return 0;
}

static void sm_snapshot_needed(void *ctx, uint32_t from, uint64_t slot)
{
    struct chain_sm *sm = ctx;
    atomic_store(&sm->needed_from, from);
    atomic_store(&sm->needed_slot, slot);
    atomic_fetch_add(&sm->needed, 1);
}

static int mem_send(void *ctx, const struct px_msg *m)
{
    (void)ctx;
    if (m->to < 1 || m->to > N || cut[m->from] || cut[m->to] || deaf[m->to])
        return -ENOTCONN;
    pthread_rwlock_rdlock(&nodes_lock);
    struct replica *to = nodes[m->to].r;
    if (to)
        replica_receive(to, m);
    pthread_rwlock_unlock(&nodes_lock);
    return to ? 0 : -ENOTCONN;
}

static void quiet(void *ctx, enum log_level level, const char *line)
{
    (void)ctx;
    const char *open = strstr(line, "event=replica_open");
    const char *node = strstr(line, "node=");
    const char *snap = strstr(line, " snapshot=");
    if (open && node && snap) {
        long id = strtol(node + 5, NULL, 10);
        if (id >= 1 && id <= N)
            open_snapshot[id] = (int_fast64_t)strtoull(snap + 10, NULL, 10);
    }
    if (level >= LOG_ERROR || getenv("PAXFS_TEST_LOG"))
        fprintf(stderr, "%s\n", line);
}

static void node_config(int id, struct chain_sm *sm, struct replica_config *c)
{
    struct node *nd = &nodes[id];
    replica_config_defaults(c);
    c->id = (uint32_t)id;
    c->n_nodes = N;
    c->tick_ms = 5;
    c->op_timeout_ms = 3000;
    snprintf(c->wal_dir, sizeof c->wal_dir, "%s/wal", nd->dir);
    c->sm = (struct replica_sm){sm, sm_apply};
    if (with_snapshots) {
        c->op_timeout_ms = 20000; /* a proposal in flight outlives a transfer */
        snprintf(c->snap_dir, sizeof c->snap_dir, "%s", nd->snap_dir);
        c->snapshot_every_slots = 20;
        c->log_slack_slots = 5;
        if (log_slack_bytes)
            c->log_slack_bytes = log_slack_bytes;
        if (snapshot_every_bytes) {
            c->snapshot_every_bytes = snapshot_every_bytes;
            c->snapshot_every_slots = 1000000;
        }
        c->sm.snapshot_begin = sm_snapshot_begin;
        c->sm.snapshot_image = sm_snapshot_image;
        c->sm.restore = sm_restore;
        c->sm.sync = sm_sync;
        c->sm.snapshot_needed = sm_snapshot_needed;
    }
    c->transport = (struct replica_transport){NULL, mem_send};
}

static void node_open(int id)
{
    struct node *nd = &nodes[id];
    pthread_mutex_destroy(&nd->sm.lock);
    pthread_cond_destroy(&nd->sm.begun_cond);
    memset(&nd->sm, 0, sizeof nd->sm);
    pthread_mutex_init(&nd->sm.lock, NULL);
    cond_init_monotonic(&nd->sm.begun_cond);
    struct replica_config c;
    node_config(id, &nd->sm, &c);
    struct replica *r;
    int rc = replica_open(&c, &r);
    cr_assert_eq(rc, 0, "replica_open: %s", strerror(-rc));
    cr_assert_eq(replica_start(r), 0);
    pthread_rwlock_wrlock(&nodes_lock);
    nd->r = r;
    pthread_rwlock_unlock(&nodes_lock);
}

static void node_close(int id)
{
    /* Once the pointer is gone under the lock, no sender holds it. */
    pthread_rwlock_wrlock(&nodes_lock);
    struct replica *r = nodes[id].r;
    nodes[id].r = NULL;
    pthread_rwlock_unlock(&nodes_lock);
    replica_close(r);
}

static void setup(void)
{
    log_set_sink(quiet, NULL);
    snprintf(root, sizeof root, "/tmp/paxfs-test-replica-XXXXXX");
    cr_assert_not_null(mkdtemp(root));
    for (int i = 1; i <= N; i++) {
        snprintf(nodes[i].dir, sizeof nodes[i].dir, "%s/n%d", root, i);
        snprintf(nodes[i].snap_dir, sizeof nodes[i].snap_dir, "%s/n%d/snap", root, i);
        cr_assert_eq(mkdir(nodes[i].dir, 0700), 0);
        cut[i] = false;
        deaf[i] = false;
        open_snapshot[i] = -1;
        pthread_mutex_init(&nodes[i].sm.lock, NULL);
        cond_init_monotonic(&nodes[i].sm.begun_cond);
    }
    for (int i = 1; i <= N; i++)
        node_open(i);
}

static void setup_snap(void)
{
    with_snapshots = true;
    log_slack_bytes = 0;
    snapshot_every_bytes = 0;
    setup();
}

/* Entries of about 1 KiB and a slack of 1.5 KiB: one slot's value fits in
 * it, two do not. */
static void setup_snap_byte_slack(void)
{
    with_snapshots = true;
    log_slack_bytes = 1536;
    snapshot_every_bytes = 0;
    setup();
}

/* A snapshot every 3,000 bytes of applied values, none by slots. */
static void setup_snap_every_bytes(void)
{
    with_snapshots = true;
    log_slack_bytes = 0;
    snapshot_every_bytes = 3000;
    setup();
}

static void teardown(void)
{
    for (int i = 1; i <= N; i++)
        if (nodes[i].r)
            node_close(i);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    cr_assert_eq(system(cmd), 0);
    for (int i = 1; i <= N; i++) {
        pthread_mutex_destroy(&nodes[i].sm.lock);
        pthread_cond_destroy(&nodes[i].sm.begun_cond);
    }
    log_set_sink(NULL, NULL);
    with_snapshots = false;
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

/* Its WAL gone, a node knows nothing of the sessions it used, but the
 * others' dedup tables do: its new proposals must not be taken for its
 * earlier life's (answered with their old results, never applied). */
Test(replica, a_node_whose_wal_was_wiped_proposes_in_a_new_session)
{
    int64_t result;
    for (int k = 0; k < 10; k++)
        cr_assert_eq(replica_propose(nodes[3].r, "a", 1, &result), 0);
    await_equal(10);
    struct replica_status st;
    replica_status(nodes[3].r, &st);
    uint64_t old_session = st.session;
    node_close(3);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s/wal", nodes[3].dir);
    cr_assert_eq(system(cmd), 0);
    node_open(3);
    replica_status(nodes[3].r, &st);
    cr_assert_gt(st.session, old_session);
    for (int k = 0; k < 10; k++)
        cr_assert_eq(replica_propose(nodes[3].r, "c", 1, &result), 0);
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

Test(replica, snapshot_calls_without_a_snapshotting_state_machine_are_enotsup)
{
    uint64_t slot = 77;
    cr_assert_eq(replica_snapshot_now(nodes[1].r, &slot), -ENOTSUP);
    cr_assert_eq(slot, 77);
    cr_assert_eq(replica_install_snapshot(nodes[1].r, "/nonexistent", false), -ENOTSUP);
}

/* ---- snapshots, compaction, install, rebuild ------------------------------ */

/* Bounded waits poll every 5 ms for up to 30 s: generous, because the
 * disk (every snapshot and WAL record is fsynced) may be shared with other
 * test runs. */
#define WAIT_STEPS 6000

static void propose_n(int id, int n, const char *prefix)
{
    for (int k = 0; k < n; k++) {
        char v[RING_VALUE_MAX];
        snprintf(v, sizeof v, "%s-%d", prefix, k);
        int64_t result;
        int rc = replica_propose(nodes[id].r, v, strlen(v), &result);
        cr_assert_eq(rc, 0, "propose %s on node %d: %s", v, id, strerror(-rc));
    }
}

static struct replica_status status_of(int id)
{
    struct replica_status st;
    replica_status(nodes[id].r, &st);
    return st;
}

/* The state machine's image (its whole state), into out (initialized). */
static void state_of(struct chain_sm *sm, struct buf *out)
{
    buf_init(out);
    pthread_mutex_lock(&sm->lock);
    image_of(sm, out);
    pthread_mutex_unlock(&sm->lock);
}

static bool same_state(struct chain_sm *a, struct chain_sm *b)
{
    struct buf x, y;
    state_of(a, &x);
    state_of(b, &y);
    bool same = x.len == y.len && memcmp(x.data, y.data, x.len) == 0;
    buf_deinit(&x);
    buf_deinit(&y);
    return same;
}

static uint64_t count_of(int id)
{
    pthread_mutex_lock(&nodes[id].sm.lock);
    uint64_t c = nodes[id].sm.count;
    pthread_mutex_unlock(&nodes[id].sm.lock);
    return c;
}

/* Waits (bounded) until every open node applied count proposals and holds
 * the same whole state. */
static void await_same(uint64_t count)
{
    int first = 0;
    for (int i = 1; i <= N && !first; i++)
        if (nodes[i].r)
            first = i;
    for (int k = 0; k < WAIT_STEPS; k++) {
        bool same = true;
        for (int i = 1; i <= N; i++)
            if (nodes[i].r)
                same &= count_of(i) == count && same_state(&nodes[i].sm, &nodes[first].sm);
        if (same)
            return;
        usleep(5000);
    }
    for (int i = 1; i <= N; i++)
        if (nodes[i].r)
            cr_log_error("node %d: count %llu", i, (unsigned long long)count_of(i));
    cr_assert_fail("replicas did not converge to the same state at %llu proposals",
                   (unsigned long long)count);
}

/* Waits (bounded) until node id's newest snapshot is at or after slot and
 * the core compacted the log to it (log_first = snapshot - slack + 1). */
static struct replica_status await_snapshot(int id, uint64_t slot)
{
    struct replica_status st;
    for (int k = 0; k < WAIT_STEPS; k++) {
        st = status_of(id);
        if (st.snapshot_slot >= slot && st.snapshot_slot > 5 &&
            st.log_first == st.snapshot_slot - 5 + 1)
            return st;
        usleep(5000);
    }
    cr_assert_fail("node %d: no snapshot at or after %llu (snapshot %llu, log_first %llu)", id,
                   (unsigned long long)slot, (unsigned long long)st.snapshot_slot,
                   (unsigned long long)st.log_first);
    return st;
}

/* Waits (30 s at most) until node id began a snapshot, the replica
 * thread's next step after an apply that made one due: returns its slot. */
static uint64_t first_snapshot_begun(int id)
{
    struct chain_sm *sm = &nodes[id].sm;
    struct timespec until;
    deadline_in_ms(&until, 30000);
    pthread_mutex_lock(&sm->lock);
    int rc = 0;
    while (sm->n_begun == 0 && rc == 0)
        rc = pthread_cond_timedwait(&sm->begun_cond, &sm->lock, &until);
    size_t n = sm->n_begun;
    uint64_t slot = sm->begun_slots[0];
    pthread_mutex_unlock(&sm->lock);
    cr_assert_gt(n, 0, "node %d began no snapshot in 30 s", id);
    return slot;
}

static uint64_t newest_snapshot_file(int id)
{
    uint64_t slots[8];
    size_t n = snapfile_list(nodes[id].snap_dir, slots, 8);
    cr_assert_gt(n, 0, "node %d has no snapshot file", id);
    return slots[0];
}

static void copy_file(const char *from, const char *to)
{
    uint8_t *p;
    size_t len;
    cr_assert_eq(snapfile_read(from, &p, &len), 0, "read %s", from);
    FILE *f = fopen(to, "wb");
    cr_assert_not_null(f, "fopen %s", to);
    cr_assert_eq(fwrite(p, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
    free(p);
}

/* Plays the transfer: copies node from's snapshot file at slot into node
 * to's snapshot directory as the part file a transfer assembles; path
 * gets its name. */
static void hand_over(int from, uint64_t slot, int to, char path[SNAPFILE_PATH_MAX])
{
    char src[SNAPFILE_PATH_MAX];
    snapfile_path(nodes[from].snap_dir, slot, src);
    snprintf(path, SNAPFILE_PATH_MAX, "%s/incoming-%" PRIu64 ".part", nodes[to].snap_dir, slot);
    copy_file(src, path);
}

static bool file_exists(const char *path)
{
    return access(path, F_OK) == 0;
}

/* Waits until node id took every snapshot its schedule asks for (the
 * newest less than 20 slots behind what it applied), so that the peers'
 * logs stop moving before a lagging node is handed a snapshot. */
static void await_snapshots_settled(int id)
{
    pthread_mutex_lock(&nodes[id].sm.lock);
    uint64_t last = nodes[id].sm.last_slot;
    pthread_mutex_unlock(&nodes[id].sm.lock);
    await_snapshot(id, last > 19 ? last - 19 : 0);
}

/* The live peer (1 or 2) with the newest snapshot file: a lagging node
 * that installs it can fetch the rest from either peer's log. */
static int donor(uint64_t *slot)
{
    uint64_t s1 = newest_snapshot_file(1), s2 = newest_snapshot_file(2);
    *slot = s1 >= s2 ? s1 : s2;
    return s1 >= s2 ? 1 : 2;
}

TestSuite(replica_snap, .init = setup_snap, .fini = teardown, .timeout = 120);

Test(replica_snap, snapshots_are_taken_on_schedule_and_the_log_is_compacted)
{
    propose_n(1, 100, "s");
    await_same(100);
    for (int i = 1; i <= N; i++) {
        /* Every 20 applied slots: the newest is less than 20 behind. */
        struct replica_status st = await_snapshot(i, status_of(i).applied - 19);
        cr_assert_geq(st.snapshots, 2, "node %d took %llu snapshots", i,
                      (unsigned long long)st.snapshots);
        cr_assert_geq(st.snapshot_slot, 80);
        cr_assert_gt(st.log_first, 1, "node %d kept its whole log", i);
        /* The file is on disk; older ones are pruned (the previous one
         * stays as a fallback). */
        uint64_t slots[8];
        size_t n = snapfile_list(nodes[i].snap_dir, slots, 8);
        cr_assert(n >= 1 && n <= 2, "node %d has %zu snapshot files", i, n);
        cr_assert_eq(slots[0], st.snapshot_slot);
        /* The state machine's deferred writes were made durable first. */
        pthread_mutex_lock(&nodes[i].sm.lock);
        uint64_t syncs = nodes[i].sm.syncs;
        pthread_mutex_unlock(&nodes[i].sm.lock);
        cr_assert_geq(syncs, st.snapshots);
    }
}

/* The replicas apply the same slots; on one schedule they would all take
 * their snapshots at once and slow the whole majority together. Node k's
 * grid is shifted by (k - 1) / 3 of the interval: with snapshots every 20
 * slots, node 1 takes them at 20, 40, ..., node 2 at 6, 26, ..., node 3 at
 * 12, 32, .... Every node applies one slot at a time here (a follower
 * learns the commit in batches otherwise, and a snapshot comes at the
 * first apply at or past its turn); a slot more is allowed for a no-op of
 * the leader's. */
Test(replica_snap, the_nodes_take_their_snapshots_at_shifted_slots)
{
    for (int k = 1; k <= 100; k++) {
        propose_n(1, 1, "t");
        await_same((uint64_t)k);
    }
    for (int i = 1; i <= N; i++) {
        await_snapshot(i, status_of(i).applied - 19);
        uint64_t shift = (uint64_t)(20 / N * (i - 1));
        pthread_mutex_lock(&nodes[i].sm.lock);
        size_t n = nodes[i].sm.n_begun;
        uint64_t slots[64];
        memcpy(slots, nodes[i].sm.begun_slots, sizeof slots);
        pthread_mutex_unlock(&nodes[i].sm.lock);
        cr_assert_geq(n, 4, "node %d took %zu snapshots of 100 slots", i, n);
        uint64_t first = shift ? shift : 20;
        cr_assert(slots[0] >= first && slots[0] <= first + 1,
                  "node %d: first snapshot at %llu, its first turn is %llu", i,
                  (unsigned long long)slots[0], (unsigned long long)first);
        for (size_t k = 0; k < n; k++)
            cr_assert_leq((slots[k] + 20 - shift) % 20, 1,
                         "node %d: snapshot %zu at slot %llu, its grid is %llu mod 20", i, k,
                         (unsigned long long)slots[k], (unsigned long long)shift);
    }
}

/* The core keeps the slack in memory: 1,000 slots of 4 MiB batches made
 * each daemon of a 3-node cluster hold 2 GiB after a sequential write.
 * Its own suite: Criterion runs a suite's .init as well as a test's, and
 * two setups would leave the first cluster running and its directory
 * behind. */
TestSuite(replica_snap_bytes, .init = setup_snap_byte_slack, .fini = teardown, .timeout = 120);

Test(replica_snap_bytes, the_log_slack_is_bounded_in_bytes_too)
{
    char big[1000];
    memset(big, 'b', sizeof big);
    for (int i = 0; i < 60; i++) {
        int64_t result;
        big[0] = (char)('a' + i % 26);
        cr_assert_eq(replica_propose(nodes[1].r, big, sizeof big, &result), 0);
    }
    await_same(60);
    for (int i = 1; i <= N; i++) {
        struct replica_status st;
        int k = 0;
        for (; k < WAIT_STEPS; k++) {
            st = status_of(i);
            if (st.snapshot_slot >= 40 && st.log_first == st.snapshot_slot)
                break;
            usleep(5000);
        }
        cr_assert_lt(k, WAIT_STEPS, "node %d: snapshot %llu, log_first %llu (want one slot kept)",
                     i, (unsigned long long)st.snapshot_slot, (unsigned long long)st.log_first);
    }
}

/* The byte rule is shifted too: node k starts counting with a head start
 * of (k - 1) / 3 of the interval, so with values of about 1 KiB and a
 * snapshot every 3,000 bytes node 3 takes its first one a value before
 * node 2, and node 2 a value before node 1. (A large sequential write
 * would otherwise have every node snapshot at the same slot.) Every node
 * applies one slot at a time here. */
TestSuite(replica_snap_every_bytes, .init = setup_snap_every_bytes, .fini = teardown,
          .timeout = 120);

Test(replica_snap_every_bytes, the_nodes_take_their_byte_snapshots_at_shifted_slots)
{
    char value[1000];
    memset(value, 'v', sizeof value);
    for (int k = 1; k <= 4; k++) {
        int64_t result;
        cr_assert_eq(replica_propose(nodes[1].r, value, sizeof value, &result), 0);
        await_same((uint64_t)k);
    }
    uint64_t first[N + 1];
    for (int i = 1; i <= N; i++)
        first[i] = first_snapshot_begun(i);
    cr_assert(first[3] + 1 == first[2] && first[2] + 1 == first[1],
              "first snapshots at slots %llu, %llu, %llu (nodes 1, 2, 3)",
              (unsigned long long)first[1], (unsigned long long)first[2],
              (unsigned long long)first[3]);
}

Test(replica_snap, a_restarted_node_restores_its_snapshot_and_replays_only_the_tail)
{
    propose_n(1, 60, "a");
    await_same(60);
    for (int i = 1; i <= N; i++)
        await_snapshots_settled(i); /* the peers still hold what it lacks */
    node_close(3);
    propose_n(1, 10, "b");
    node_open(3);
    struct replica_status st = status_of(3);
    cr_assert_geq(st.snapshot_slot, 40, "replica_open restored no snapshot");
    cr_assert_eq(open_snapshot[3], (int_fast64_t)st.snapshot_slot,
                 "the replica_open line says snapshot=%lld", (long long)open_snapshot[3]);
    await_same(70);
    pthread_mutex_lock(&nodes[3].sm.lock);
    uint64_t restores = nodes[3].sm.restores, restored = nodes[3].sm.restored_count;
    uint64_t applies = nodes[3].sm.applies;
    pthread_mutex_unlock(&nodes[3].sm.lock);
    cr_assert_eq(restores, 1);
    cr_assert_geq(restored, 40);
    cr_assert_eq(applies, 70 - restored, "applied %llu after restoring %llu of 70",
                 (unsigned long long)applies, (unsigned long long)restored);
    /* And it goes on. */
    propose_n(3, 5, "c");
    await_same(75);
}

/* Cuts node 3 off while the others write far past their compaction, then
 * reconnects it: returns once its core asked for a snapshot. */
static void lag_node_3(int before, int during)
{
    propose_n(1, before, "w");
    await_same((uint64_t)before);
    cut[3] = true;
    propose_n(1, during, "x");
    uint64_t lag = status_of(3).applied;
    for (int k = 0; k < WAIT_STEPS && count_of(2) < (uint64_t)(before + during); k++)
        usleep(5000);
    await_snapshots_settled(1);
    await_snapshots_settled(2);
    cr_assert_gt(status_of(1).log_first, lag + 1, "node 1 still holds what node 3 lacks");
    cr_assert_gt(status_of(2).log_first, lag + 1);
    cut[3] = false;
    for (int k = 0; k < WAIT_STEPS && atomic_load(&nodes[3].sm.needed) == 0; k++)
        usleep(5000);
    cr_assert_gt(atomic_load(&nodes[3].sm.needed), 0, "node 3 was never told to get a snapshot");
}

Test(replica_snap, a_node_behind_the_compaction_installs_a_peers_snapshot_and_goes_on)
{
    lag_node_3(10, 80);
    uint32_t from = atomic_load(&nodes[3].sm.needed_from);
    uint64_t want = atomic_load(&nodes[3].sm.needed_slot);
    cr_assert(from == 1 || from == 2, "snapshot needed from node %u", from);
    cr_assert_gt(want, 10);
    cr_assert_geq(newest_snapshot_file((int)from), want,
                  "the peer's newest file is older than it said (%llu)", (unsigned long long)want);
    uint64_t slot;
    int peer = donor(&slot);
    char part[SNAPFILE_PATH_MAX];
    hand_over(peer, slot, 3, part);
    int rc = replica_install_snapshot(nodes[3].r, part, false);
    cr_assert_eq(rc, 0, "install: %s", strerror(-rc));
    /* The part file became the node's own snapshot. */
    cr_assert(!file_exists(part));
    char final[SNAPFILE_PATH_MAX];
    snapfile_path(nodes[3].snap_dir, slot, final);
    cr_assert(file_exists(final));
    /* status is published at the end of the replica thread's loop. */
    struct replica_status st = status_of(3);
    for (int k = 0; k < WAIT_STEPS && st.applied < slot; k++) {
        usleep(5000);
        st = status_of(3);
    }
    cr_assert_eq(st.snapshot_slot, slot);
    cr_assert_geq(st.applied, slot);
    await_same(90);
    propose_n(3, 5, "after");
    await_same(95);
    /* A restart after the install starts from the installed snapshot. */
    node_close(3);
    node_open(3);
    cr_assert_geq(open_snapshot[3], (int_fast64_t)slot);
    await_same(95);
    propose_n(3, 1, "again");
    await_same(96);
}

Test(replica_snap, install_of_a_slot_already_applied_is_ealready_and_does_nothing)
{
    propose_n(1, 30, "a");
    await_same(30);
    uint64_t slot;
    cr_assert_eq(replica_snapshot_now(nodes[1].r, &slot), 0);
    char part[SNAPFILE_PATH_MAX];
    hand_over(1, slot, 2, part);
    struct replica_status before = status_of(2);
    cr_assert_eq(replica_install_snapshot(nodes[2].r, part, false), -EALREADY);
    cr_assert(file_exists(part), "the caller's file is left alone");
    struct replica_status after = status_of(2);
    cr_assert_eq(after.snapshot_slot, before.snapshot_slot);
    cr_assert_eq(after.applied, before.applied);
    pthread_mutex_lock(&nodes[2].sm.lock);
    uint64_t restores = nodes[2].sm.restores;
    pthread_mutex_unlock(&nodes[2].sm.lock);
    cr_assert_eq(restores, 0);
    propose_n(2, 2, "b");
    await_same(32);
}

Test(replica_snap, install_of_a_corrupt_or_missing_file_fails_and_changes_nothing)
{
    /* Node 3 lags, so the snapshot is one it would take: only the damage
     * may stop it. */
    lag_node_3(10, 60);
    uint64_t slot;
    int peer = donor(&slot);
    char part[SNAPFILE_PATH_MAX];
    hand_over(peer, slot, 3, part);
    /* Flip one byte in the image. */
    uint8_t *p;
    size_t len;
    cr_assert_eq(snapfile_read(part, &p, &len), 0);
    p[len / 2] ^= 0x10;
    FILE *f = fopen(part, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(p, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
    free(p);
    struct buf state_before;
    state_of(&nodes[3].sm, &state_before);
    struct replica_status before = status_of(3);
    uint64_t files_before[8], files_after[8];
    size_t n_before = snapfile_list(nodes[3].snap_dir, files_before, 8);
    cr_assert_eq(replica_install_snapshot(nodes[3].r, part, false), -EBADMSG);
    /* A truncated file and a missing one. */
    cr_assert_eq(truncate(part, SNAPFILE_HEADER_BYTES + 3), 0);
    cr_assert_eq(replica_install_snapshot(nodes[3].r, part, false), -EBADMSG);
    char missing[SNAPFILE_PATH_MAX];
    snprintf(missing, sizeof missing, "%s/incoming-1.part", nodes[3].snap_dir);
    cr_assert_eq(replica_install_snapshot(nodes[3].r, missing, false), -ENOENT);
    struct replica_status after = status_of(3);
    cr_assert_eq(after.snapshot_slot, before.snapshot_slot);
    cr_assert_eq(after.applied, before.applied);
    cr_assert(!after.failed);
    struct buf state_after;
    state_of(&nodes[3].sm, &state_after);
    cr_assert_eq(state_after.len, state_before.len);
    cr_assert_eq(memcmp(state_after.data, state_before.data, state_after.len), 0);
    buf_deinit(&state_before);
    buf_deinit(&state_after);
    cr_assert_eq(snapfile_list(nodes[3].snap_dir, files_after, 8), n_before);
    for (size_t i = 0; i < n_before && i < 8; i++)
        cr_assert_eq(files_after[i], files_before[i]);
    /* A good copy still installs afterwards. */
    hand_over(peer, slot, 3, part);
    cr_assert_eq(replica_install_snapshot(nodes[3].r, part, false), 0);
    await_same(70);
}

Test(replica_snap, rebuild_replaces_a_diverged_state_and_reapplies_the_log_tail)
{
    propose_n(1, 30, "a");
    await_same(30);
    uint64_t slot;
    cr_assert_eq(replica_snapshot_now(nodes[1].r, &slot), 0);
    propose_n(1, 4, "b");
    await_same(34);
    /* A test-only write: node 2's state no longer follows from the log. */
    pthread_mutex_lock(&nodes[2].sm.lock);
    nodes[2].sm.hash ^= 0xbadbadbadull;
    pthread_mutex_unlock(&nodes[2].sm.lock);
    cr_assert(!same_state(&nodes[1].sm, &nodes[2].sm));
    /* What node 2 applied, from its state machine: the status is published
     * a little after an apply. */
    pthread_mutex_lock(&nodes[2].sm.lock);
    uint64_t applied = nodes[2].sm.last_slot;
    pthread_mutex_unlock(&nodes[2].sm.lock);
    cr_assert_gt(applied, slot);
    char part[SNAPFILE_PATH_MAX];
    hand_over(1, slot, 2, part);
    /* Without rebuild the snapshot is old news. */
    cr_assert_eq(replica_install_snapshot(nodes[2].r, part, false), -EALREADY);
    int rc = replica_install_snapshot(nodes[2].r, part, true);
    cr_assert_eq(rc, 0, "rebuild: %s", strerror(-rc));
    cr_assert(same_state(&nodes[1].sm, &nodes[2].sm), "node 2 still diverges");
    struct replica_status st = status_of(2);
    cr_assert_eq(st.applied, applied, "the log tail was re-applied up to %llu, not to %llu",
                 (unsigned long long)st.applied, (unsigned long long)applied);
    /* Only the installed snapshot is left of node 2's own (they held the
     * diverged state), and a fresh one follows. */
    uint64_t slots[8];
    size_t n = snapfile_list(nodes[2].snap_dir, slots, 8);
    cr_assert_geq(n, 1);
    for (size_t i = 0; i < n && i < 8; i++)
        cr_assert_geq(slots[i], slot);
    await_snapshot(2, applied);
    propose_n(2, 3, "c");
    await_same(37);
    /* A restart rebuilds the repaired state from disk. */
    node_close(2);
    node_open(2);
    await_same(37);
}

Test(replica_snap, rebuild_past_the_log_slack_is_erange_and_changes_nothing)
{
    propose_n(1, 30, "a");
    await_same(30);
    uint64_t slot;
    cr_assert_eq(replica_snapshot_now(nodes[1].r, &slot), 0);
    char keep[SNAPFILE_PATH_MAX], src[SNAPFILE_PATH_MAX];
    snprintf(keep, sizeof keep, "%s/kept-snapshot", root);
    snapfile_path(nodes[1].snap_dir, slot, src);
    copy_file(src, keep);
    /* Node 2 compacts well past slot + 1. */
    propose_n(1, 60, "b");
    await_same(90);
    await_snapshot(2, slot + 40);
    cr_assert_gt(status_of(2).log_first, slot + 1);
    pthread_mutex_lock(&nodes[2].sm.lock);
    nodes[2].sm.hash ^= 0xbadull;
    pthread_mutex_unlock(&nodes[2].sm.lock);
    struct buf before;
    state_of(&nodes[2].sm, &before);
    char part[SNAPFILE_PATH_MAX];
    snprintf(part, sizeof part, "%s/incoming-%" PRIu64 ".part", nodes[2].snap_dir, slot);
    copy_file(keep, part);
    cr_assert_eq(replica_install_snapshot(nodes[2].r, part, true), -ERANGE);
    struct buf after;
    state_of(&nodes[2].sm, &after);
    cr_assert_eq(after.len, before.len);
    cr_assert_eq(memcmp(after.data, before.data, after.len), 0);
    buf_deinit(&before);
    buf_deinit(&after);
    cr_assert(!status_of(2).failed);
}

Test(replica_snap, snapshot_now_returns_its_slot_and_again_without_applies_is_ealready)
{
    propose_n(1, 3, "a");
    await_same(3);
    uint64_t slot = 0;
    cr_assert_eq(replica_snapshot_now(nodes[2].r, &slot), 0);
    struct replica_status st = status_of(2);
    cr_assert_eq(slot, st.applied);
    cr_assert_eq(st.snapshot_slot, slot);
    char path[SNAPFILE_PATH_MAX];
    snapfile_path(nodes[2].snap_dir, slot, path);
    cr_assert(file_exists(path));
    uint64_t again = 12345;
    cr_assert_eq(replica_snapshot_now(nodes[2].r, &again), -EALREADY);
    cr_assert_eq(again, 12345);
    cr_assert_eq(replica_snapshot_now(nodes[2].r, NULL), -EALREADY);
    propose_n(1, 1, "b");
    await_same(4);
    uint64_t next;
    cr_assert_eq(replica_snapshot_now(nodes[2].r, &next), 0);
    cr_assert_gt(next, slot);
}

struct inflight {
    int node;
    int rc;
    int64_t result;
    atomic_bool done;
};

static void *propose_one(void *p)
{
    struct inflight *a = p;
    a->rc = replica_propose(nodes[a->node].r, "inflight", 8, &a->result);
    atomic_store(&a->done, true);
    return NULL;
}

Test(replica_snap, a_proposal_in_flight_that_a_snapshot_covers_completes)
{
    propose_n(1, 10, "w");
    await_same(10);
    /* Node 3 can still send (its proposal reaches the leader and is
     * chosen) but hears nothing back. */
    deaf[3] = true;
    struct inflight a = {.node = 3};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, propose_one, &a), 0);
    for (int k = 0; k < WAIT_STEPS && count_of(1) < 11; k++)
        usleep(5000);
    cr_assert_eq(count_of(1), 11, "the proposal from node 3 was not chosen");
    cr_assert(!atomic_load(&a.done));
    propose_n(1, 60, "x");
    uint64_t lag = status_of(3).applied;
    for (int k = 0; k < WAIT_STEPS && count_of(2) < 71; k++)
        usleep(5000);
    await_snapshots_settled(1);
    await_snapshots_settled(2);
    cr_assert_gt(status_of(1).log_first, lag + 1);
    deaf[3] = false;
    for (int k = 0; k < WAIT_STEPS && atomic_load(&nodes[3].sm.needed) == 0; k++)
        usleep(5000);
    cr_assert_gt(atomic_load(&nodes[3].sm.needed), 0);
    uint64_t slot;
    int peer = donor(&slot);
    char part[SNAPFILE_PATH_MAX];
    hand_over(peer, slot, 3, part);
    cr_assert_eq(replica_install_snapshot(nodes[3].r, part, false), 0);
    /* Well before the 20 s op timeout. */
    for (int k = 0; k < 2000 && !atomic_load(&a.done); k++)
        usleep(5000);
    cr_assert(atomic_load(&a.done), "the proposal still waits after the install");
    pthread_join(t, NULL);
    cr_assert_eq(a.rc, 0, "propose: %s", strerror(-a.rc));
    cr_assert_eq(a.result, 11, "the result is the one the first apply gave");
    await_same(71);
}

static uint64_t dir_bytes(const char *dir, size_t *files)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "ls -l %s", dir);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    uint64_t sum = 0;
    *files = 0;
    char line[512];
    while (fgets(line, sizeof line, p)) {
        unsigned long long size;
        char perms[16];
        if (sscanf(line, "%15s %*s %*s %*s %llu", perms, &size) == 2 && perms[0] == '-') {
            sum += size;
            (*files)++;
        }
    }
    pclose(p);
    return sum;
}

Test(replica_snap, load_offline_rebuilds_the_state_the_live_node_had)
{
    propose_n(1, 50, "a");
    await_same(50);
    await_snapshot(2, 30);
    struct buf live;
    state_of(&nodes[2].sm, &live);
    /* status is published at the end of the replica thread's loop. */
    pthread_mutex_lock(&nodes[2].sm.lock);
    uint64_t last_slot = nodes[2].sm.last_slot;
    pthread_mutex_unlock(&nodes[2].sm.lock);
    for (int k = 0; k < WAIT_STEPS && status_of(2).applied < last_slot; k++)
        usleep(5000);
    uint64_t applied = status_of(2).applied;
    node_close(2);
    char wal_dir[300];
    snprintf(wal_dir, sizeof wal_dir, "%s/wal", nodes[2].dir);
    size_t files_before, files_after;
    uint64_t bytes_before = dir_bytes(wal_dir, &files_before);
    struct chain_sm offline;
    memset(&offline, 0, sizeof offline);
    pthread_mutex_init(&offline.lock, NULL);
    struct replica_config c;
    node_config(2, &offline, &c);
    uint64_t snap = 0, last = 0;
    int rc = replica_load_offline(&c, &snap, &last);
    cr_assert_eq(rc, 0, "load_offline: %s", strerror(-rc));
    cr_assert_geq(snap, 30);
    cr_assert_eq(last, applied);
    cr_assert_eq(offline.restores, 1);
    cr_assert_eq(offline.applies, 50 - offline.restored_count, "only the tail is applied");
    struct buf off;
    state_of(&offline, &off);
    cr_assert_eq(off.len, live.len);
    cr_assert_eq(memcmp(off.data, live.data, off.len), 0, "offline state differs from live");
    buf_deinit(&off);
    buf_deinit(&live);
    pthread_mutex_destroy(&offline.lock);
    /* It wrote nothing: the WAL is as the node left it. */
    uint64_t bytes_after = dir_bytes(wal_dir, &files_after);
    cr_assert_eq(files_after, files_before);
    cr_assert_eq(bytes_after, bytes_before);
    cr_assert_eq(atomic_load(&offline.needed), 0);
    /* And the node starts again from the same directories. */
    node_open(2);
    propose_n(2, 2, "b");
    await_same(52);
}

static void *release_sync_later(void *p)
{
    struct chain_sm *sm = p;
    usleep(200000);
    atomic_store(&sm->sync_release, true);
    return NULL;
}

struct snap_now_arg {
    int node;
    int rc;
    uint64_t slot;
};

static void *snapshot_now_thread(void *p)
{
    struct snap_now_arg *a = p;
    a->rc = replica_snapshot_now(nodes[a->node].r, &a->slot);
    return NULL;
}

Test(replica_snap, a_snapshot_in_progress_during_a_rebuild_does_not_bring_back_the_diverged_state)
{
    /* Regression: a rebuild served while the snapshot thread was still
     * writing a snapshot of the diverged state let that file land after the
     * rebuild (snap-34 over the installed snap-30); nothing new was applied,
     * so no fresh snapshot replaced it, and the next start restored the
     * divergence. */
    propose_n(1, 30, "a");
    await_same(30);
    uint64_t slot;
    cr_assert_eq(replica_snapshot_now(nodes[1].r, &slot), 0);
    propose_n(1, 4, "b");
    await_same(34);
    pthread_mutex_lock(&nodes[2].sm.lock);
    nodes[2].sm.hash ^= 0xbadbadbadull;
    pthread_mutex_unlock(&nodes[2].sm.lock);
    /* Node 2 starts a snapshot of the diverged state; it stops in sync. */
    atomic_store(&nodes[2].sm.sync_gate, true);
    struct snap_now_arg a = {.node = 2};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, snapshot_now_thread, &a), 0);
    for (int k = 0; k < WAIT_STEPS && !atomic_load(&nodes[2].sm.sync_entered); k++)
        usleep(5000);
    cr_assert(atomic_load(&nodes[2].sm.sync_entered), "no snapshot started on node 2");
    char part[SNAPFILE_PATH_MAX];
    hand_over(1, slot, 2, part);
    /* The rebuild may wait for the snapshot in progress (release it after
     * a while from here) or go first; either way it must end well. */
    pthread_t releaser;
    cr_assert_eq(pthread_create(&releaser, NULL, release_sync_later, &nodes[2].sm), 0);
    int rc = replica_install_snapshot(nodes[2].r, part, true);
    cr_assert_eq(rc, 0, "rebuild: %s", strerror(-rc));
    pthread_join(releaser, NULL);
    pthread_join(t, NULL);
    cr_assert(a.rc == 0 || a.rc == -EALREADY, "snapshot_now: %s", strerror(-a.rc));
    cr_assert(same_state(&nodes[1].sm, &nodes[2].sm), "node 2 still diverges");
    /* Whatever the newest snapshot file on node 2 is, it holds the repaired
     * state: a restart must come back equal. */
    node_close(2);
    node_open(2);
    await_same(34);
}

Test(replica_snap, an_install_during_a_snapshot_in_progress_keeps_the_installed_slot)
{
    /* The snapshot thread finishes an older snapshot (of the lagging
     * state) after a newer one was installed: the replica's snapshot slot
     * must not go back to the older one. */
    lag_node_3(10, 60);
    atomic_store(&nodes[3].sm.sync_gate, true);
    struct snap_now_arg a = {.node = 3};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, snapshot_now_thread, &a), 0);
    for (int k = 0; k < WAIT_STEPS && !atomic_load(&nodes[3].sm.sync_entered); k++)
        usleep(5000);
    cr_assert(atomic_load(&nodes[3].sm.sync_entered), "no snapshot started on node 3");
    uint64_t slot;
    int peer = donor(&slot);
    char part[SNAPFILE_PATH_MAX];
    hand_over(peer, slot, 3, part);
    pthread_t releaser;
    cr_assert_eq(pthread_create(&releaser, NULL, release_sync_later, &nodes[3].sm), 0);
    int rc = replica_install_snapshot(nodes[3].r, part, false);
    cr_assert_eq(rc, 0, "install: %s", strerror(-rc));
    pthread_join(releaser, NULL);
    pthread_join(t, NULL);
    cr_assert(a.rc == 0 || a.rc == -EALREADY, "snapshot_now: %s", strerror(-a.rc));
    struct replica_status st = status_of(3);
    cr_assert_geq(st.snapshot_slot, slot, "snapshot slot went back from %llu to %llu",
                  (unsigned long long)slot, (unsigned long long)st.snapshot_slot);
    cr_assert_geq(newest_snapshot_file(3), slot);
    await_same(70);
    node_close(3);
    node_open(3);
    cr_assert_geq(open_snapshot[3], (int_fast64_t)slot);
    await_same(70);
}
