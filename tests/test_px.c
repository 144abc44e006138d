/* Tests of the Multi-Paxos core (consensus/px.c) and the exactly-once table,
 * as scripted scenarios: a small in-test cluster whose messages the test
 * delivers, drops or holds explicitly, with each node's persisted state kept
 * so that a node can be restarted from it. The randomized counterpart is the
 * simulator (tests/sim.c). */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "base/assert.h"
#include "base/buf.h"
#include "base/log.h"
#include "consensus/px.h"

#define N_MAX 5
#define APPLIED_MAX 4096

struct persisted {
    uint64_t promised;
    uint64_t commit;
    struct px_value *entries[APPLIED_MAX];
    uint64_t ballots[APPLIED_MAX];
};

struct tnode {
    struct px_node *px;
    bool up;
    uint64_t session;
    struct persisted disk;
    uint32_t persist_count[APPLIED_MAX]; /* times each slot's entry was persisted */
    uint32_t probe_ticks[64];            /* C.ticks when each election probe went out */
    int n_probes;
    /* what the state machine applied, slot by slot (proposal bytes joined) */
    char applied[APPLIED_MAX][64];
    uint64_t applied_to;
    struct px_read reads[64];
    int n_reads;
    bool snapshot_asked;
};

struct cluster {
    int n;
    struct tnode nodes[N_MAX + 1];
    struct px_msg queue[4096];
    int n_queue;
    bool cut[N_MAX + 1][N_MAX + 1]; /* cut[a][b]: messages a->b are dropped */
    uint32_t drop_types;            /* messages of these types (bit 1 << type) are dropped */
    uint32_t window, batch_count_max, window_bytes; /* 0: defaults */
    uint32_t ticks;                   /* tick_all rounds so far */
};

static struct cluster C;

static void quiet(void *ctx, enum log_level level, const char *line)
{
    (void)ctx;
    (void)level;
    (void)line;
}

static void node_boot(int id)
{
    struct tnode *t = &C.nodes[id];
    struct px_config cfg;
    px_config_defaults(&cfg, (uint32_t)id, (uint32_t)C.n);
    cfg.seed = 1000 + (uint64_t)id;
    cfg.session = ++t->session;
    if (C.window)
        cfg.window = C.window;
    if (C.batch_count_max)
        cfg.batch_count_max = C.batch_count_max;
    if (C.window_bytes)
        cfg.window_bytes = C.window_bytes;
    t->px = px_new(&cfg);
    t->up = true;
    px_restore_promised(t->px, t->disk.promised);
    for (uint64_t s = 1; s < APPLIED_MAX; s++)
        if (t->disk.entries[s])
            px_restore_entry(t->px, s, t->disk.ballots[s], t->disk.entries[s]);
    px_restore_commit(t->px, t->disk.commit);
    t->applied_to = 0; /* the state machine replays from slot 1 */
}

static void cluster_init_with(int n, uint32_t window, uint32_t batch_count_max)
{
    memset(&C, 0, sizeof C);
    log_set_sink(quiet, NULL);
    C.n = n;
    C.window = window;
    C.batch_count_max = batch_count_max;
    for (int i = 1; i <= n; i++)
        node_boot(i);
}

static void cluster_init(int n)
{
    cluster_init_with(n, 0, 0);
}

static void node_crash(int id)
{
    px_free(C.nodes[id].px);
    C.nodes[id].px = NULL;
    C.nodes[id].up = false;
}

static void cluster_fini(void)
{
    for (int i = 1; i <= C.n; i++) {
        if (C.nodes[i].up)
            node_crash(i);
        for (int s = 0; s < APPLIED_MAX; s++)
            px_value_unref(C.nodes[i].disk.entries[s]);
    }
    for (int i = 0; i < C.n_queue; i++)
        px_msg_clear(&C.queue[i]);
    log_set_sink(NULL, NULL);
}

/* Persist, send (into the queue), apply, advance: the driver's order. */
static void drain(int id)
{
    struct tnode *t = &C.nodes[id];
    while (t->up && px_has_ready(t->px)) {
        struct px_ready rd;
        px_ready(t->px, &rd);
        if (rd.promised_changed)
            t->disk.promised = rd.promised;
        for (size_t i = 0; i < rd.n_persist; i++) {
            uint64_t s = rd.persist[i].slot;
            cr_assert_lt(s, APPLIED_MAX);
            px_value_unref(t->disk.entries[s]);
            t->disk.entries[s] = px_value_ref(rd.persist[i].value);
            t->disk.ballots[s] = rd.persist[i].ballot;
            t->persist_count[s]++;
        }
        if (rd.commit_changed)
            t->disk.commit = rd.commit;
        for (size_t i = 0; i < rd.n_msgs; i++) {
            bool probe = rd.msgs[i].type == PX_MSG_PREPARE && rd.msgs[i].aux == 1;
            if (probe && (t->n_probes == 0 || t->probe_ticks[t->n_probes - 1] != C.ticks) &&
                t->n_probes < 64)
                t->probe_ticks[t->n_probes++] = C.ticks; /* one per broadcast */
            cr_assert_lt(C.n_queue, 4096);
            px_msg_copy(&C.queue[C.n_queue++], &rd.msgs[i]);
        }
        for (size_t i = 0; i < rd.n_apply; i++) {
            const struct px_entry *e = &rd.apply[i];
            cr_assert_eq(e->slot, t->applied_to + 1, "node %d applies in order", id);
            struct px_batch_iter it;
            struct px_proposal p;
            char *out = t->applied[e->slot];
            out[0] = 0;
            cr_assert_eq(px_batch_iter_init(&it, e->value), 0);
            while (px_batch_next(&it, &p) == 1)
                strncat(out, (const char *)p.data, MIN(p.len, 63 - strlen(out)));
            t->applied_to = e->slot;
        }
        for (size_t i = 0; i < rd.n_reads; i++)
            t->reads[t->n_reads++ % 64] = rd.reads[i];
        if (rd.snapshot_needed)
            t->snapshot_asked = true;
        px_advance(t->px, &rd);
    }
}

static void drain_all(void)
{
    for (int i = 1; i <= C.n; i++)
        drain(i);
}

/* Delivers every queued message (and what they cause) until quiet. */
static void stabilize(void)
{
    for (int round = 0; round < 1000 && C.n_queue > 0; round++) {
        struct px_msg m = C.queue[0];
        memmove(C.queue, C.queue + 1, sizeof C.queue[0] * (size_t)(--C.n_queue));
        if (C.nodes[m.to].up && !C.cut[m.from][m.to] && !(C.drop_types & (1u << m.type))) {
            px_step(C.nodes[m.to].px, &m);
            drain((int)m.to);
        }
        px_msg_clear(&m);
    }
}

static void tick_all(int ticks)
{
    for (int k = 0; k < ticks; k++) {
        C.ticks++;
        for (int i = 1; i <= C.n; i++) {
            if (!C.nodes[i].up)
                continue;
            px_tick(C.nodes[i].px);
            drain(i);
        }
        stabilize();
    }
}

static int leader_of(int id)
{
    struct px_status st;
    px_status(C.nodes[id].px, &st);
    return (int)st.leader;
}

static enum px_role role_of(int id)
{
    struct px_status st;
    px_status(C.nodes[id].px, &st);
    return st.role;
}

static uint64_t commit_of(int id)
{
    struct px_status st;
    px_status(C.nodes[id].px, &st);
    return st.commit;
}

/* Cuts node id off from every node, both ways (cut false: joins it again). */
static void isolate(int id, bool cut)
{
    for (int i = 1; i <= C.n; i++) {
        C.cut[id][i] = cut;
        C.cut[i][id] = cut;
    }
}

/* Ticks until some node leads and every live node follows it. */
static int elect(void)
{
    for (int k = 0; k < 200; k++) {
        tick_all(1);
        int l = 0;
        bool agreed = true;
        for (int i = 1; i <= C.n; i++) {
            if (!C.nodes[i].up)
                continue;
            if (role_of(i) == PX_LEADER)
                l = i;
        }
        for (int i = 1; i <= C.n && l; i++)
            if (C.nodes[i].up && leader_of(i) != l)
                agreed = false;
        if (l && agreed)
            return l;
    }
    cr_assert_fail("no leader elected");
    return 0;
}

static uint64_t propose_str(int id, const char *s)
{
    uint64_t seq = 0;
    cr_assert_eq(px_propose(C.nodes[id].px, s, strlen(s) + 1, &seq), 0);
    drain(id);
    return seq;
}

Test(px, single_node_chooses_at_once)
{
    cluster_init(1);
    int l = elect();
    cr_assert_eq(l, 1);
    propose_str(1, "x");
    drain_all();
    cr_assert_eq(C.nodes[1].applied_to, 1);
    cr_assert_str_eq(C.nodes[1].applied[1], "x");
    cluster_fini();
}

Test(px, three_nodes_elect_one_leader_and_apply_in_the_same_order)
{
    cluster_init(3);
    int l = elect();
    const char *vals[] = {"a", "b", "c", "d"};
    for (int i = 0; i < 4; i++) {
        propose_str(l, vals[i]);
        stabilize();
    }
    tick_all(2);
    for (int i = 1; i <= 3; i++) {
        cr_assert_eq(C.nodes[i].applied_to, 4, "node %d applied all", i);
        for (int s = 1; s <= 4; s++)
            cr_assert_str_eq(C.nodes[i].applied[s], vals[s - 1]);
    }
    cluster_fini();
}

Test(px, proposals_are_batched_into_one_slot)
{
    cluster_init(3);
    int l = elect();
    uint64_t seq;
    for (int i = 0; i < 100; i++)
        cr_assert_eq(px_propose(C.nodes[l].px, "p", 1, &seq), 0);
    drain(l);
    stabilize();
    tick_all(1);
    cr_assert_eq(commit_of(l), 1, "100 proposals made between two ready calls share one slot");
    cluster_fini();
}

Test(px, follower_proposal_is_forwarded_and_no_longer_pending_once_chosen)
{
    cluster_init(3);
    int l = elect();
    int f = l == 1 ? 2 : 1;
    propose_str(f, "from-follower");
    stabilize();
    tick_all(1);
    struct px_status st;
    px_status(C.nodes[f].px, &st);
    cr_assert_eq(st.pending, 0);
    cr_assert_str_eq(C.nodes[f].applied[1], "from-follower");
    cr_assert_str_eq(C.nodes[l].applied[1], "from-follower");
    cluster_fini();
}

Test(px, value_accepted_by_a_minority_survives_leader_crash)
{
    /* The leader's accept reaches one follower only, then the leader dies:
     * the next leader learns the value from that follower's promise and
     * chooses it (Paxos Made Simple §2.2, P2c). */
    cluster_init(3);
    int l = elect();
    int a = l % 3 + 1, b = a % 3 + 1;
    C.cut[l][b] = true;
    propose_str(l, "keep-me");
    stabilize();
    node_crash(l);
    C.cut[l][b] = false;
    int l2 = elect();
    cr_assert_neq(l2, l);
    tick_all(2);
    cr_assert_str_eq(C.nodes[a].applied[1], "keep-me");
    cr_assert_str_eq(C.nodes[b].applied[1], "keep-me");
    cluster_fini();
}

Test(px, restarted_acceptor_keeps_its_promise)
{
    /* Regression guard: a promise that were not persisted would let a
     * restarted acceptor accept a deposed leader's lower ballot. */
    cluster_init(3);
    for (int k = 0; k < 10; k++)
        px_tick(C.nodes[2].px); /* past the quiet time after a start */
    drain(2);
    struct px_msg prep = {.type = PX_MSG_PREPARE, .from = 3, .to = 2,
                          .ballot = ballot_make(1000, 3), .slot = 1};
    cr_assert_eq(px_step(C.nodes[2].px, &prep), 0);
    drain(2);
    cr_assert_eq(C.nodes[2].disk.promised, prep.ballot, "the promise is on disk before the reply");
    node_crash(2);
    node_boot(2);
    struct px_value *v = px_value_new("\0\0\0\0", 4);
    struct px_entry e = {.slot = 1, .ballot = ballot_make(5, 1), .value = v};
    struct px_msg acc = {.type = PX_MSG_ACCEPT, .from = 1, .to = 2,
                         .ballot = ballot_make(5, 1), .n_entries = 1, .entries = &e};
    for (int i = 0; i < C.n_queue; i++)
        px_msg_clear(&C.queue[i]);
    C.n_queue = 0;
    cr_assert_eq(px_step(C.nodes[2].px, &acc), 0);
    drain(2);
    cr_assert_null(C.nodes[2].disk.entries[1], "the lower ballot was not accepted");
    cr_assert_eq(C.n_queue, 1);
    cr_assert_eq(C.queue[0].type, PX_MSG_REJECT);
    cr_assert_eq(C.queue[0].ballot, prep.ballot, "the reject names the promise");
    px_value_unref(v);
    cluster_fini();
}

Test(px, returning_partitioned_node_does_not_depose_a_healthy_leader)
{
    cluster_init(3);
    int l = elect();
    int lone = l % 3 + 1;
    isolate(lone, true);
    tick_all(100); /* the lone node times out again and again */
    cr_assert_neq(role_of(lone), PX_LEADER);
    isolate(lone, false);
    tick_all(30);
    cr_assert_eq(role_of(l), PX_LEADER, "the leader kept its place");
    cr_assert_eq(leader_of(lone), l, "the returning node follows it");
    cluster_fini();
}

Test(px, leader_that_cannot_hear_a_quorum_steps_down)
{
    cluster_init(3);
    int l = elect();
    isolate(l, true);
    tick_all(40);
    cr_assert_neq(role_of(l), PX_LEADER);
    int others[2], k = 0;
    for (int i = 1; i <= 3; i++)
        if (i != l)
            others[k++] = i;
    cr_assert_eq(leader_of(others[0]), leader_of(others[1]));
    cr_assert_neq(leader_of(others[0]), l);
    cr_assert_neq(leader_of(others[0]), 0, "the majority side elected a leader");
    cluster_fini();
}

/* A leader whose followers are slow, not gone, keeps its place: it steps
 * down only after two election timeouts without hearing a quorum. (With
 * one, a follower busy writing a few megabytes under load deposed it, and
 * every election that followed carried those megabytes again.) */
Test(px, leader_steps_down_after_two_election_timeouts_without_a_quorum)
{
    cluster_init(3);
    int l = elect();
    for (int i = 1; i <= 3; i++)
        C.cut[i][l] = true; /* the leader hears no one; they hear it */
    tick_all(15); /* more than one election timeout (10 ticks) */
    cr_assert_eq(role_of(l), PX_LEADER);
    tick_all(10);
    cr_assert_neq(role_of(l), PX_LEADER);
    cluster_fini();
}

/* Any message from a follower shows it alive: a leader that receives its
 * forwarded proposals keeps its place even while its acks are late (in the
 * daemons they queue behind megabytes of forwards in the same stream). */
Test(px, a_leader_that_hears_forwards_but_no_acks_keeps_its_place)
{
    cluster_init(3);
    int l = elect();
    C.drop_types = (1u << PX_MSG_ACCEPTED) | (1u << PX_MSG_HEARTBEAT_ACK);
    for (int k = 0; k < 30; k++) { /* three election timeouts */
        for (int i = 1; i <= 3; i++)
            if (i != l)
                propose_str(i, "fwd");
        stabilize();
        tick_all(1);
    }
    cr_assert_eq(role_of(l), PX_LEADER);
    C.drop_types = 0;
    cluster_fini();
}

/* Each election a node starts without having followed a leader since waits
 * longer before the next (randomized, up to 8 election timeouts), so that
 * two candidates whose rounds take longer than a timeout stop pre-empting
 * each other. Hearing a leader resets it. */
Test(px, failed_elections_back_off_exponentially_and_reset_on_a_leader)
{
    cluster_init(3);
    int l = elect();
    int lone = l % 3 + 1;
    isolate(lone, true);
    int first = C.nodes[lone].n_probes;
    tick_all(400);
    struct tnode *t = &C.nodes[lone];
    cr_assert_geq(t->n_probes - first, 5);
    /* timeout k after the first probe is in [10 << min(k, 3), 20 << min(k, 3)) */
    for (int k = 1; first + k + 1 < t->n_probes; k++) {
        uint32_t gap = t->probe_ticks[first + k + 1] - t->probe_ticks[first + k];
        uint32_t scale = 1u << (k < 3 ? k : 3);
        cr_assert(gap >= 10 * scale && gap < 20 * scale, "probe %d came %u ticks after the one before",
                  k + 1, gap);
    }
    isolate(lone, false);
    tick_all(30);
    cr_assert_eq(leader_of(lone), l);
    isolate(lone, true); /* cut off again: back to one timeout */
    uint32_t cut_at = C.ticks;
    first = t->n_probes;
    tick_all(25);
    cr_assert_gt(t->n_probes, first);
    cr_assert_lt(t->probe_ticks[first] - cut_at, 20u);
    cluster_fini();
}

/* The values a leader has in flight (proposed, not yet chosen) stay within
 * window_bytes plus one batch, however many slots the window allows: a
 * candidate must be told all of them in one PROMISE, and an acceptor holding
 * more than PX_MSG_PROMISE_BYTES_MAX refuses every candidate as behind. */
Test(px, values_in_flight_stay_within_the_byte_window)
{
    cluster_init_with(3, 64, 1);
    C.window_bytes = 1 << 20;
    for (int i = 1; i <= 3; i++) { /* reboot with the byte window */
        node_crash(i);
        node_boot(i);
    }
    int l = elect();
    C.drop_types = 1u << PX_MSG_ACCEPTED; /* nothing is chosen meanwhile */
    static char big[100000];
    uint64_t commit0 = commit_of(l);
    for (int k = 0; k < 40; k++) {
        memset(big, 'a' + k % 26, sizeof big - 1);
        uint64_t seq;
        cr_assert_eq(px_propose(C.nodes[l].px, big, sizeof big, &seq), 0);
        drain(l);
    }
    stabilize();
    struct px_status st;
    px_status(C.nodes[l].px, &st);
    cr_assert_leq(st.log_last - commit0, 11, "%llu slots in flight",
                  (unsigned long long)(st.log_last - commit0));
    C.drop_types = 0;
    tick_all(200);
    for (int i = 1; i <= 3; i++)
        cr_assert_geq(commit_of(i), commit0 + 40, "node %d: everything chosen in the end", i);
    cluster_fini();
}

Test(px, lost_accepts_are_retransmitted)
{
    cluster_init(3);
    int l = elect();
    for (int i = 1; i <= 3; i++)
        C.cut[l][i] = true;
    propose_str(l, "retry");
    stabilize(); /* all accepts dropped */
    for (int i = 1; i <= 3; i++)
        C.cut[l][i] = false;
    tick_all(5);
    for (int i = 1; i <= 3; i++)
        cr_assert_str_eq(C.nodes[i].applied[1], "retry");
    cluster_fini();
}

/* A retransmitted accept that a follower already holds at the same ballot
 * is acknowledged again but not persisted again: with values of megabytes,
 * re-writing each retransmission to the WAL slowed the follower further, so
 * its acks came later still and more retransmissions followed. */
Test(px, a_retransmitted_accept_is_acknowledged_not_persisted_again)
{
    cluster_init(3);
    int l = elect();
    C.drop_types = 1u << PX_MSG_ACCEPTED; /* the leader never hears an ack: it retransmits */
    propose_str(l, "once");
    stabilize();
    tick_all(8); /* several retransmissions, fewer ticks than a step-down takes */
    cr_assert_eq(role_of(l), PX_LEADER);
    for (int i = 1; i <= 3; i++)
        cr_assert_eq(C.nodes[i].persist_count[1], 1, "node %d persisted slot 1 %u times", i,
                     C.nodes[i].persist_count[1]);
    C.drop_types = 0;
    tick_all(10);
    for (int i = 1; i <= 3; i++)
        cr_assert_str_eq(C.nodes[i].applied[1], "once");
    cluster_fini();
}

Test(px, read_index_waits_for_quorum_confirmation)
{
    cluster_init(3);
    int l = elect();
    propose_str(l, "w");
    stabilize();
    for (int i = 1; i <= 3; i++)
        if (i != l)
            C.cut[i][l] = true; /* acks cannot reach the leader */
    for (int k = 0; k < 5; k++) { /* the lease (ticks_election / 2) runs out */
        px_tick(C.nodes[l].px);
        drain(l);
    }
    stabilize();
    cr_assert_eq(role_of(l), PX_LEADER);
    px_read_index(C.nodes[l].px, 7);
    drain(l);
    stabilize();
    cr_assert_eq(C.nodes[l].n_reads, 0, "no quorum confirmed: no answer yet");
    for (int i = 1; i <= 3; i++)
        C.cut[i][l] = false;
    tick_all(2);
    cr_assert_eq(C.nodes[l].n_reads, 1);
    cr_assert_eq(C.nodes[l].reads[0].id, 7);
    cr_assert_eq(C.nodes[l].reads[0].status, 0);
    cr_assert_geq(C.nodes[l].reads[0].index, 1);
    /* and through a follower */
    int f = l % 3 + 1;
    px_read_index(C.nodes[f].px, 8);
    drain(f);
    stabilize();
    tick_all(1);
    cr_assert_eq(C.nodes[f].n_reads, 1);
    cr_assert_eq(C.nodes[f].reads[0].status, 0);
    cr_assert_geq(C.nodes[f].reads[0].index, 1);
    cluster_fini();
}

/* ---- the leader's lease --------------------------------------------------- */

/* Asks node id for a read index and returns whether it was answered within
 * the same call, with no message delivered. */
static bool read_answered_at_once(int id, uint64_t read_id)
{
    int before = C.nodes[id].n_reads;
    px_read_index(C.nodes[id].px, read_id);
    drain(id);
    if (C.nodes[id].n_reads == before)
        return false;
    const struct px_read *r = &C.nodes[id].reads[(C.nodes[id].n_reads - 1) % 64];
    cr_assert_eq(r->id, read_id);
    cr_assert_eq(r->status, 0);
    cr_assert_eq(r->index, commit_of(id), "the commit index at the time of the read");
    return true;
}

/* Drops every queued message undelivered. */
static void queue_drop(void)
{
    for (int i = 0; i < C.n_queue; i++)
        px_msg_clear(&C.queue[i]);
    C.n_queue = 0;
}

static void cut_all(bool cut)
{
    for (int i = 1; i <= C.n; i++)
        for (int j = 1; j <= C.n; j++)
            C.cut[i][j] = cut;
}

Test(px, leader_lease_answers_reads_without_a_round)
{
    cluster_init(3);
    int l = elect();
    propose_str(l, "w");
    stabilize();
    tick_all(2); /* heartbeats acknowledged: the lease */
    cut_all(true);
    cr_assert(read_answered_at_once(l, 7), "no heartbeat round while the lease runs");
    cr_assert_geq(C.nodes[l].reads[0].index, 1);
    cluster_fini();
}

Test(px, lease_runs_out_without_acknowledged_heartbeats)
{
    cluster_init(3);
    int l = elect();
    tick_all(2);
    cut_all(true);
    for (int k = 0; k < 4; k++) {
        px_tick(C.nodes[l].px);
        drain(l);
    }
    cr_assert(read_answered_at_once(l, 1), "4 ticks after the last acknowledged heartbeat");
    px_tick(C.nodes[l].px);
    drain(l);
    cr_assert_not(read_answered_at_once(l, 2), "5 ticks (ticks_election / 2): run out");
    cut_all(false);
    stabilize();
    cr_assert_eq(C.nodes[l].n_reads, 2, "answered once a quorum acknowledged a heartbeat");
    cr_assert(read_answered_at_once(l, 3), "and the lease is back");
    cluster_fini();
}

Test(px, a_stall_voids_the_lease_until_newer_heartbeats_are_acknowledged)
{
    cluster_init(3);
    int l = elect();
    tick_all(2);
    /* A heartbeat goes out, the leader's thread stalls, then its acks come. */
    for (int k = 0; k < 2; k++) { /* ticks_heartbeat */
        px_tick(C.nodes[l].px);
        drain(l);
    }
    cr_assert_gt(C.n_queue, 0, "a heartbeat is on its way");
    px_clock_stalled(C.nodes[l].px);
    stabilize();
    cr_assert_not(read_answered_at_once(l, 1),
                  "acks of a heartbeat sent before the stall do not renew the lease");
    stabilize(); /* the read's own heartbeat round */
    cr_assert_eq(C.nodes[l].n_reads, 1);
    cr_assert(read_answered_at_once(l, 2), "newer heartbeats did");
    cluster_fini();
}

Test(px, leader_drops_a_lost_peer_from_its_lease)
{
    cluster_init(3);
    int l = elect();
    int a = l % 3 + 1, b = a % 3 + 1;
    tick_all(2);
    px_peer_lost(C.nodes[l].px, a, false);
    cr_assert(read_answered_at_once(l, 1), "b still holds the lease with the leader");
    px_peer_lost(C.nodes[l].px, b, true);
    cr_assert_not(read_answered_at_once(l, 2), "no quorum left in the lease");
    stabilize();
    cr_assert_eq(C.nodes[l].n_reads, 2, "a heartbeat round answers it");
    cluster_fini();
}

Test(px, follower_breaks_the_lease_only_when_the_leader_ended_the_connection)
{
    cluster_init(3);
    int l = elect();
    int a = l % 3 + 1, b = a % 3 + 1;
    tick_all(2);
    struct px_msg prep = {.type = PX_MSG_PREPARE, .from = (uint32_t)b, .to = (uint32_t)a,
                          .ballot = ballot_make(1000, (uint32_t)b), .slot = 1,
                          .commit = commit_of(a)};
    /* a found an error on its connection to the leader: the lease holds. */
    px_peer_lost(C.nodes[a].px, (uint32_t)l, false);
    queue_drop();
    px_step(C.nodes[a].px, &prep);
    drain(a);
    cr_assert_eq(C.n_queue, 1);
    cr_assert_eq(C.queue[0].type, PX_MSG_REJECT);
    cr_assert_eq(C.queue[0].aux, PX_REJECT_LEASE);
    queue_drop();
    /* the leader's side ended it (its process closed it, or died): not. */
    px_peer_lost(C.nodes[a].px, (uint32_t)l, true);
    cr_assert_eq(leader_of(a), 0);
    px_step(C.nodes[a].px, &prep);
    drain(a);
    cr_assert_eq(C.n_queue, 1);
    cr_assert_eq(C.queue[0].type, PX_MSG_PROMISE);
    cluster_fini();
}

Test(px, restarted_acceptor_refuses_prepares_for_an_election_timeout)
{
    /* Before a crash it may have acknowledged a heartbeat that a leader
     * counts in its lease; it cannot remember, so it waits the lease out. */
    cluster_init(3);
    struct px_msg prep = {.type = PX_MSG_PREPARE, .from = 3, .to = 2,
                          .ballot = ballot_make(1000, 3), .slot = 1};
    px_step(C.nodes[2].px, &prep);
    drain(2);
    cr_assert_eq(C.n_queue, 1);
    cr_assert_eq(C.queue[0].type, PX_MSG_REJECT);
    cr_assert_eq(C.queue[0].aux, PX_REJECT_LEASE);
    queue_drop();
    for (int k = 0; k < 10; k++) /* ticks_election */
        px_tick(C.nodes[2].px);
    drain(2);
    queue_drop();
    px_step(C.nodes[2].px, &prep);
    drain(2);
    cr_assert_eq(C.n_queue, 1);
    cr_assert_eq(C.queue[0].type, PX_MSG_PROMISE);
    cluster_fini();
}

Test(px, lagging_follower_fetches_chosen_slots)
{
    cluster_init(3);
    int l = elect();
    int lag = l % 3 + 1;
    for (int i = 1; i <= 3; i++)
        C.cut[i][lag] = true;
    for (int k = 0; k < 20; k++) {
        propose_str(l, "v");
        stabilize();
    }
    cr_assert_eq(C.nodes[lag].applied_to, 0);
    for (int i = 1; i <= 3; i++)
        C.cut[i][lag] = false;
    tick_all(10);
    cr_assert_eq(C.nodes[lag].applied_to, commit_of(l));
    cr_assert_geq(commit_of(l), 20);
    cluster_fini();
}

/* Leader l has n values chosen while node lag hears nothing, and every
 * other node learns the commit. */
static void choose_without(int l, int lag, int n)
{
    for (int i = 1; i <= 3; i++)
        C.cut[i][lag] = true;
    for (int k = 0; k < n; k++) {
        propose_str(l, "v");
        stabilize();
    }
    tick_all(1);
}

Test(px, follower_behind_compaction_is_told_to_install_a_snapshot)
{
    cluster_init(3);
    int l = elect();
    int lag = l % 3 + 1;
    choose_without(l, lag, 10);
    for (int i = 1; i <= 3; i++)
        if (i != lag)
            px_compact(C.nodes[i].px, commit_of(i));
    for (int i = 1; i <= 3; i++)
        C.cut[i][lag] = false;
    tick_all(10);
    cr_assert(C.nodes[lag].snapshot_asked);
    uint64_t snap = commit_of(l);
    px_snapshot_installed(C.nodes[lag].px, snap);
    C.nodes[lag].applied_to = snap;
    propose_str(l, "after");
    stabilize();
    tick_all(3);
    cr_assert_str_eq(C.nodes[lag].applied[snap + 1], "after");
    cluster_fini();
}

/* Each node compacts at its own slots: a peer that still holds the log is
 * asked before anyone copies a whole snapshot. */
Test(px, follower_behind_the_leaders_compaction_fetches_from_a_peer_that_kept_the_log)
{
    cluster_init(3);
    int l = elect();
    int lag = l % 3 + 1, other = lag % 3 + 1;
    cr_assert_neq(other, l);
    choose_without(l, lag, 10);
    px_compact(C.nodes[l].px, commit_of(l));
    for (int i = 1; i <= 3; i++)
        C.cut[i][lag] = false;
    tick_all(10);
    cr_assert_not(C.nodes[lag].snapshot_asked, "asked for a snapshot that a peer's log had");
    cr_assert_geq(commit_of(l), 10);
    cr_assert_eq(C.nodes[lag].applied_to, commit_of(l));
    cluster_fini();
}

Test(px, restarted_node_replays_its_committed_log)
{
    cluster_init(3);
    int l = elect();
    for (int k = 0; k < 5; k++) {
        propose_str(l, "r");
        stabilize();
    }
    tick_all(2);
    int f = l % 3 + 1;
    node_crash(f);
    node_boot(f);
    drain(f);
    cr_assert_eq(C.nodes[f].applied_to, 5, "committed slots come back from disk alone");
    cluster_fini();
}

Test(px, propose_refuses_oversized_and_too_many_pending)
{
    cluster_init(3);
    uint64_t seq;
    static char big[(4u << 20) + 1];
    cr_assert_eq(px_propose(C.nodes[1].px, big, sizeof big, &seq), -EMSGSIZE);
    int rc = 0, k;
    for (k = 0; k < (int)PX_SESSION_WINDOW + 1 && rc == 0; k++)
        rc = px_propose(C.nodes[1].px, "x", 1, &seq);
    cr_assert_eq(rc, -EAGAIN, "no leader: proposals pile up until the window is full");
    cr_assert_eq(k, (int)PX_SESSION_WINDOW + 1);
    cluster_fini();
}

Test(px, step_refuses_messages_from_unknown_nodes)
{
    cluster_init(3);
    struct px_msg m = {.type = PX_MSG_HEARTBEAT, .from = 9, .to = 1, .ballot = 99};
    cr_assert_eq(px_step(C.nodes[1].px, &m), -EINVAL);
    m.from = 2;
    m.to = 3;
    cr_assert_eq(px_step(C.nodes[1].px, &m), -EINVAL, "not addressed to node 1");
    m.to = 1;
    m.type = 200;
    cr_assert_eq(px_step(C.nodes[1].px, &m), -EINVAL);
    cluster_fini();
}

Test(px, batch_iterator_rejects_malformed_batches)
{
    uint8_t bad[8] = {2, 0, 0, 0, 1, 2, 3, 4}; /* says 2 proposals, holds 4 bytes */
    struct px_value *v = px_value_new(bad, sizeof bad);
    struct px_batch_iter it;
    struct px_proposal p;
    cr_assert_eq(px_batch_iter_init(&it, v), 0);
    cr_assert_eq(px_batch_next(&it, &p), -EBADMSG);
    px_value_unref(v);
    v = px_value_new(bad, 2);
    cr_assert_eq(px_batch_iter_init(&it, v), -EBADMSG);
    px_value_unref(v);
}


Test(px, retried_proposals_do_not_pile_up_as_duplicates)
{
    /* Regression (found by paxfs-sim, seeds 899/1311/1863/1868 of the first
     * parameter set): with a small window, a follower re-sent its pending
     * proposals every retry period and the leader queued every copy, so the
     * backlog of duplicates outgrew what the log could choose and the
     * proposals never completed. The leader now keeps one copy of each. */
    cluster_init_with(3, 1, 1);
    int l = elect();
    int f = l % 3 + 1;
    C.drop_types = 1u << PX_MSG_ACCEPTED; /* nothing is chosen for a while ... */
    for (int k = 0; k < 30; k++)
        propose_str(f, "p");
    stabilize();
    tick_all(200); /* ... while the follower retries 4 times over */
    cr_assert_eq(role_of(l), PX_LEADER, "heartbeats still flow: the leader stays");
    C.drop_types = 0;
    tick_all(200);
    struct px_status st;
    px_status(C.nodes[f].px, &st);
    cr_assert_eq(st.pending, 0, "every proposal completed");
    cr_assert_eq(commit_of(l), 30, "one slot per proposal: no duplicate was queued");
    cluster_fini();
}


Test(px, lost_read_index_request_is_given_up_so_it_can_be_asked_again)
{
    /* Regression (found by the mount tests): a follower's READ_INDEX that
     * never reached the leader left the read waiting until op_timeout. */
    cluster_init(3);
    int l = elect();
    int f = l % 3 + 1;
    C.drop_types = 1u << PX_MSG_READ_INDEX;
    px_read_index(C.nodes[f].px, 9);
    drain(f);
    stabilize();
    tick_all(25);
    cr_assert_eq(C.nodes[f].n_reads, 1);
    cr_assert_eq(C.nodes[f].reads[0].id, 9);
    cr_assert_eq(C.nodes[f].reads[0].status, -EAGAIN);
    C.drop_types = 0;
    px_read_index(C.nodes[f].px, 10);
    drain(f);
    stabilize();
    cr_assert_eq(C.nodes[f].n_reads, 2);
    cr_assert_eq(C.nodes[f].reads[1].status, 0, "asked again, it is answered (status %d id %llu)", C.nodes[f].reads[1].status, (unsigned long long)C.nodes[f].reads[1].id);
    cluster_fini();
}

/* ---- exactly-once table ---- */

Test(dedup, records_and_reports_results)
{
    struct px_dedup *d = px_dedup_new();
    int64_t r = 0;
    cr_assert_eq(px_dedup_check(d, 1, 1, 5, &r), 0);
    px_dedup_record(d, 1, 1, 5, 42);
    cr_assert_eq(px_dedup_check(d, 1, 1, 5, &r), 1);
    cr_assert_eq(r, 42);
    cr_assert_eq(px_dedup_check(d, 1, 1, 4, &r), 0, "out of order is fine");
    cr_assert_eq(px_dedup_check(d, 1, 2, 5, &r), 0, "sessions are separate");
    cr_assert_eq(px_dedup_check(d, 2, 1, 5, &r), 0, "origins are separate");
    px_dedup_free(d);
}

Test(dedup, watermark_covers_old_sequences)
{
    struct px_dedup *d = px_dedup_new();
    int64_t r;
    for (uint64_t s = 1; s <= 3 * PX_SESSION_WINDOW; s++)
        px_dedup_record(d, 1, 1, s, (int64_t)s);
    cr_assert_eq(px_dedup_check(d, 1, 1, 3, &r), -ESTALE, "applied long ago, result forgotten");
    cr_assert_eq(px_dedup_check(d, 1, 1, 3 * PX_SESSION_WINDOW, &r), 1);
    cr_assert_eq(px_dedup_check(d, 1, 1, 3 * PX_SESSION_WINDOW + 1, &r), 0);
    px_dedup_free(d);
}

Test(dedup, keeps_only_the_newest_sessions_per_origin)
{
    struct px_dedup *d = px_dedup_new();
    int64_t r;
    for (uint64_t sess = 1; sess <= PX_DEDUP_SESSIONS + 2; sess++)
        px_dedup_record(d, 1, sess, 1, 0);
    cr_assert_eq(px_dedup_check(d, 1, 1, 1, &r), -ESTALE);
    cr_assert_eq(px_dedup_check(d, 1, PX_DEDUP_SESSIONS + 2, 1, &r), 1);
    px_dedup_free(d);
}

Test(dedup, encode_decode_round_trip_and_digest)
{
    struct px_dedup *d = px_dedup_new();
    for (uint64_t s = 1; s < 100; s += 3)
        px_dedup_record(d, (uint32_t)(s % 3 + 1), s % 2 + 1, s, -(int64_t)s);
    struct buf b;
    buf_init(&b);
    px_dedup_encode(d, &b);
    struct px_dedup *e = NULL;
    cr_assert_eq(px_dedup_decode(b.data, b.len, &e), 0);
    cr_assert_eq(px_dedup_digest(d), px_dedup_digest(e));
    int64_t r;
    cr_assert_eq(px_dedup_check(e, 2, 1, 1, &r), px_dedup_check(d, 2, 1, 1, &r));
    /* every truncation and a flipped magic are refused */
    for (size_t cut = 0; cut < b.len; cut++) {
        struct px_dedup *x = NULL;
        cr_assert_eq(px_dedup_decode(b.data, cut, &x), -EBADMSG);
        cr_assert_null(x);
    }
    b.data[0] ^= 1;
    cr_assert_eq(px_dedup_decode(b.data, b.len, &e), -EBADMSG);
    buf_deinit(&b);
    px_dedup_free(d);
    px_dedup_free(e);
}
