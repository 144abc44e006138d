/* Tests for single-decree Paxos (consensus/paxos.h): the founding design's
 * three runs replayed message by message, unit tests of each rule, and a
 * randomized safety property (never two values chosen).
 *
 * Cast: acceptors A, B, C are indices 0, 1, 2; proposers A and B are nodes 1
 * and 2. The founding design numbers the ballots 1, 2, 3, 4; here "ballot k"
 * is round k of the proposer that uses it (ballot_make(k, node)). Proposers
 * pick their rounds themselves, so each scenario hands a proposer the
 * previous ballot as `seen_ballot`, as if it had heard of it.
 *
 * Run 1, a higher prepare pre-empts a lower accept:
 *   proposer A prepares ballot 1 (value X=3), proposer B ballot 2 (value 5).
 *   acceptors A, B get prepare(1) first: promise. Acceptor C gets prepare(2)
 *   first: promise, then refuses prepare(1). Acceptors A, B get prepare(2):
 *   promise. Proposer A has 2 promises (a quorum), proposer B 3, none with an
 *   accepted value. A's accept(1, 3) is refused by all three (they return
 *   ballot 2): A goes back to prepare. B's accept(2, 5) is accepted by all:
 *   5 is chosen.
 *
 * Run 2, a value accepted by a minority is carried forward:
 *   proposer B prepares ballot 3, promised by all; its accept(3, 6) reaches
 *   acceptor A only. Proposer A prepares ballot 4 (own value 7); it reaches
 *   acceptors B and C before B's accept does, so they refuse accept(3, 6);
 *   it reaches acceptor A too, whose promise reports accepted (3, 6).
 *   Proposer A's quorum {A, B} contains that report, so it must propose 6,
 *   not 7, and (4, 6) is chosen.
 *
 * Run 3, duelling proposers livelock (§2.4 "Progress"): each one's prepare
 * is promised, then the other's higher prepare lands before its accept, so
 * the accept is refused and it re-prepares higher at once, forever. Random
 * backoff breaks the tie. */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "base/assert.h"
#include "base/prng.h"
#include "consensus/paxos.h"

#define ACC_A 0u
#define ACC_B 1u
#define ACC_C 2u
#define NODE_A 1u
#define NODE_B 2u

/* ---- helpers: deliver one message, check one reply ------------------- */

static struct paxos_msg prepare_at(struct paxos_acceptor *a, uint64_t ballot)
{
    struct paxos_msg r;
    paxos_acceptor_on_prepare(a, ballot, &r);
    return r;
}

static struct paxos_msg accept_at(struct paxos_acceptor *a, uint64_t ballot,
                                  int64_t value)
{
    struct paxos_msg r;
    paxos_acceptor_on_accept(a, ballot, value, &r);
    return r;
}

static void expect_promise(struct paxos_msg r, uint32_t from, uint64_t ballot,
                           uint64_t accepted_ballot, int64_t value)
{
    cr_assert_eq(r.type, PAXOS_PROMISE, "acceptor %u: expected a promise", from);
    cr_assert_eq(r.from, from);
    cr_assert_eq(r.ballot, ballot);
    cr_assert_eq(r.accepted_ballot, accepted_ballot);
    cr_assert_eq(r.value, value);
}

static void expect_reject(struct paxos_msg r, uint32_t from, uint64_t ballot,
                          uint64_t promised)
{
    cr_assert_eq(r.type, PAXOS_REJECT, "acceptor %u: expected a reject", from);
    cr_assert_eq(r.from, from);
    cr_assert_eq(r.ballot, ballot);
    cr_assert_eq(r.promised, promised);
}

static void expect_accepted(struct paxos_msg r, uint32_t from, uint64_t ballot,
                            int64_t value)
{
    cr_assert_eq(r.type, PAXOS_ACCEPTED, "acceptor %u: expected accepted", from);
    cr_assert_eq(r.from, from);
    cr_assert_eq(r.ballot, ballot);
    cr_assert_eq(r.value, value);
}

static uint32_t count(uint32_t set) { return (uint32_t)__builtin_popcount(set); }

/* ---- the founding design's runs 1 and 2 ------------------------------ */

Test(paxos, higher_prepare_preempts_lower_accept_and_5_is_chosen)
{
    struct paxos_acceptor acc[3];
    for (uint32_t i = 0; i < 3; i++)
        paxos_acceptor_init(&acc[i], i);
    struct paxos_proposer pa, pb;
    paxos_proposer_init(&pa, NODE_A, 3, 3);
    paxos_proposer_init(&pb, NODE_B, 3, 5);
    struct paxos_learner learner;
    paxos_learner_init(&learner, 3);
    struct paxos_msg prep_a, prep_b, acc_a, acc_b;
    uint64_t b1 = ballot_make(1, NODE_A), b2 = ballot_make(2, NODE_B);

    paxos_proposer_prepare(&pa, BALLOT_NONE, &prep_a);
    paxos_proposer_prepare(&pb, b1, &prep_b);
    cr_assert_eq(prep_a.type, PAXOS_PREPARE);
    cr_assert_eq(prep_a.ballot, b1);
    cr_assert_eq(prep_b.ballot, b2);

    /* Acceptors A and B hear proposer A first; C hears proposer B first. */
    struct paxos_msg p1_a = prepare_at(&acc[ACC_A], b1);
    struct paxos_msg p1_b = prepare_at(&acc[ACC_B], b1);
    struct paxos_msg p2_c = prepare_at(&acc[ACC_C], b2);
    struct paxos_msg p1_c = prepare_at(&acc[ACC_C], b1);
    struct paxos_msg p2_a = prepare_at(&acc[ACC_A], b2);
    struct paxos_msg p2_b = prepare_at(&acc[ACC_B], b2);
    expect_promise(p1_a, ACC_A, b1, BALLOT_NONE, 0);
    expect_promise(p1_b, ACC_B, b1, BALLOT_NONE, 0);
    expect_promise(p2_c, ACC_C, b2, BALLOT_NONE, 0);
    expect_reject(p1_c, ACC_C, b1, b2);
    expect_promise(p2_a, ACC_A, b2, BALLOT_NONE, 0);
    expect_promise(p2_b, ACC_B, b2, BALLOT_NONE, 0);

    /* Proposer A: two promises are a quorum of three; none reports a value,
     * so it proposes its own X=3. C's refusal is still in flight. */
    cr_assert_eq(paxos_proposer_on_promise(&pa, &p1_a, &acc_a), PAXOS_NOTHING);
    cr_assert_eq(paxos_proposer_on_promise(&pa, &p1_b, &acc_a), PAXOS_SEND_ACCEPT);
    cr_assert_eq(acc_a.type, PAXOS_ACCEPT);
    cr_assert_eq(acc_a.ballot, b1);
    cr_assert_eq(acc_a.value, 3);
    cr_assert_eq(count(pa.promised_by), 2);

    /* Proposer B: three promises, none with a value: it proposes 5. */
    cr_assert_eq(paxos_proposer_on_promise(&pb, &p2_c, &acc_b), PAXOS_NOTHING);
    cr_assert_eq(paxos_proposer_on_promise(&pb, &p2_a, &acc_b), PAXOS_SEND_ACCEPT);
    cr_assert_eq(paxos_proposer_on_promise(&pb, &p2_b, &acc_b), PAXOS_NOTHING);
    cr_assert_eq(count(pb.promised_by), 3);
    cr_assert_eq(acc_b.ballot, b2);
    cr_assert_eq(acc_b.value, 5);

    /* A's accept(1, 3) is refused by all three: each has promised 2. */
    struct paxos_msg r_a = accept_at(&acc[ACC_A], b1, 3);
    struct paxos_msg r_b = accept_at(&acc[ACC_B], b1, 3);
    struct paxos_msg r_c = accept_at(&acc[ACC_C], b1, 3);
    expect_reject(r_a, ACC_A, b1, b2);
    expect_reject(r_b, ACC_B, b1, b2);
    expect_reject(r_c, ACC_C, b1, b2);

    /* The first refusal sends A back to prepare; the rest, and C's late
     * refusal of prepare(1), find it already there. */
    cr_assert_eq(paxos_proposer_on_reject(&pa, &r_a), PAXOS_RETRY);
    cr_assert_eq(pa.state, PAXOS_IDLE);
    cr_assert_eq(paxos_proposer_on_reject(&pa, &r_b), PAXOS_NOTHING);
    cr_assert_eq(paxos_proposer_on_reject(&pa, &r_c), PAXOS_NOTHING);
    cr_assert_eq(paxos_proposer_on_reject(&pa, &p1_c), PAXOS_NOTHING);
    cr_assert_eq(pa.seen, b2, "A remembers the ballot that beat it");

    /* B's accept(2, 5) is accepted by all three: 5 is chosen. */
    struct paxos_msg ok_a = accept_at(&acc[ACC_A], b2, 5);
    struct paxos_msg ok_b = accept_at(&acc[ACC_B], b2, 5);
    struct paxos_msg ok_c = accept_at(&acc[ACC_C], b2, 5);
    expect_accepted(ok_a, ACC_A, b2, 5);
    expect_accepted(ok_b, ACC_B, b2, 5);
    expect_accepted(ok_c, ACC_C, b2, 5);
    cr_assert_eq(paxos_proposer_on_accepted(&pb, &ok_a), PAXOS_NOTHING);
    cr_assert_eq(paxos_proposer_on_accepted(&pb, &ok_b), PAXOS_CHOSEN_NOW);
    cr_assert_eq(paxos_proposer_on_accepted(&pb, &ok_c), PAXOS_NOTHING);
    cr_assert_eq(paxos_learner_on_accepted(&learner, &ok_a), 0);
    cr_assert_eq(paxos_learner_on_accepted(&learner, &ok_b), 1);
    cr_assert_eq(paxos_learner_on_accepted(&learner, &ok_c), 0);

    int64_t value;
    uint64_t ballot;
    cr_assert(paxos_learner_chosen(&learner, &value, &ballot));
    cr_assert_eq(value, 5);
    cr_assert_eq(ballot, b2);
    cr_assert(paxos_proposer_chosen(&pb, &value, &ballot));
    cr_assert_eq(value, 5);
    cr_assert(!paxos_proposer_chosen(&pa, &value, &ballot));

    /* A's next try goes above ballot 2 at once. */
    struct paxos_msg again;
    paxos_proposer_prepare(&pa, BALLOT_NONE, &again);
    cr_assert_eq(again.ballot, ballot_make(3, NODE_A));
}

Test(paxos, value_accepted_by_a_minority_is_carried_forward)
{
    struct paxos_acceptor acc[3];
    for (uint32_t i = 0; i < 3; i++)
        paxos_acceptor_init(&acc[i], i);
    struct paxos_proposer pa, pb;
    paxos_proposer_init(&pa, NODE_A, 3, 7);
    paxos_proposer_init(&pb, NODE_B, 3, 6);
    struct paxos_learner learner;
    paxos_learner_init(&learner, 3);
    struct paxos_msg prep, accept_b, accept_a;
    uint64_t b3 = ballot_make(3, NODE_B), b4 = ballot_make(4, NODE_A);
    int64_t value;
    uint64_t ballot;

    /* Setup: B's prepare(3) is promised by all; two promises make B send
     * accept(3, 6). */
    paxos_proposer_prepare(&pb, ballot_make(2, NODE_A), &prep);
    cr_assert_eq(prep.ballot, b3);
    struct paxos_msg p3[3];
    for (uint32_t i = 0; i < 3; i++) {
        p3[i] = prepare_at(&acc[i], b3);
        expect_promise(p3[i], i, b3, BALLOT_NONE, 0);
    }
    cr_assert_eq(paxos_proposer_on_promise(&pb, &p3[ACC_A], &accept_b), PAXOS_NOTHING);
    cr_assert_eq(paxos_proposer_on_promise(&pb, &p3[ACC_B], &accept_b), PAXOS_SEND_ACCEPT);
    cr_assert_eq(accept_b.ballot, b3);
    cr_assert_eq(accept_b.value, 6);

    /* B's accept(3, 6) reaches acceptor A only: a minority, not chosen. */
    struct paxos_msg ok3_a = accept_at(&acc[ACC_A], b3, 6);
    expect_accepted(ok3_a, ACC_A, b3, 6);
    cr_assert_eq(paxos_proposer_on_accepted(&pb, &ok3_a), PAXOS_NOTHING);
    cr_assert_eq(paxos_learner_on_accepted(&learner, &ok3_a), 0);
    cr_assert(!paxos_learner_chosen(&learner, &value, &ballot));

    /* A prepares ballot 4; it reaches B and C before B's accept, and A. */
    paxos_proposer_prepare(&pa, b3, &prep);
    cr_assert_eq(prep.ballot, b4);
    struct paxos_msg p4_b = prepare_at(&acc[ACC_B], b4);
    struct paxos_msg p4_c = prepare_at(&acc[ACC_C], b4);
    struct paxos_msg p4_a = prepare_at(&acc[ACC_A], b4);
    expect_promise(p4_b, ACC_B, b4, BALLOT_NONE, 0);
    expect_promise(p4_c, ACC_C, b4, BALLOT_NONE, 0);
    expect_promise(p4_a, ACC_A, b4, b3, 6); /* reports its accepted (3, 6) */

    /* B's accept(3, 6) now reaches B and C: refused, they promised 4. */
    struct paxos_msg r_b = accept_at(&acc[ACC_B], b3, 6);
    struct paxos_msg r_c = accept_at(&acc[ACC_C], b3, 6);
    expect_reject(r_b, ACC_B, b3, b4);
    expect_reject(r_c, ACC_C, b3, b4);
    cr_assert_eq(paxos_proposer_on_reject(&pb, &r_b), PAXOS_RETRY);
    cr_assert_eq(paxos_proposer_on_reject(&pb, &r_c), PAXOS_NOTHING);

    /* Proposer A's quorum {A, B} contains the report of (3, 6): phase 2a
     * forces 6, not A's own 7. C's promise comes after the quorum. */
    cr_assert_eq(paxos_proposer_on_promise(&pa, &p4_a, &accept_a), PAXOS_NOTHING);
    cr_assert_eq(paxos_proposer_on_promise(&pa, &p4_b, &accept_a), PAXOS_SEND_ACCEPT);
    cr_assert_eq(paxos_proposer_on_promise(&pa, &p4_c, &accept_a), PAXOS_NOTHING);
    cr_assert_eq(accept_a.ballot, b4);
    cr_assert_eq(accept_a.value, 6);

    /* (4, 6) is accepted by all three and chosen. */
    struct paxos_msg ok4[3];
    for (uint32_t i = 0; i < 3; i++) {
        ok4[i] = accept_at(&acc[i], b4, 6);
        expect_accepted(ok4[i], i, b4, 6);
    }
    cr_assert_eq(paxos_proposer_on_accepted(&pa, &ok4[ACC_A]), PAXOS_NOTHING);
    cr_assert_eq(paxos_proposer_on_accepted(&pa, &ok4[ACC_B]), PAXOS_CHOSEN_NOW);
    /* The learner counts ballot 4 afresh: A's earlier (3, 6) does not add. */
    cr_assert_eq(paxos_learner_on_accepted(&learner, &ok4[ACC_B]), 0);
    cr_assert_eq(paxos_learner_on_accepted(&learner, &ok4[ACC_C]), 1);
    cr_assert(paxos_learner_chosen(&learner, &value, &ballot));
    cr_assert_eq(value, 6);
    cr_assert_eq(ballot, b4);
    cr_assert(paxos_proposer_chosen(&pa, &value, &ballot));
    cr_assert_eq(value, 6);
    cr_assert_eq(ballot, b4);
}

/* ---- run 3: a tiny deterministic event scheduler --------------------- */

/* Virtual time in ticks; every message takes exactly 1 tick. Within a tick
 * the network delivers prepares before anything else, then in send order:
 * a legal (adversarial) order, and the one that keeps the duel going, since
 * a prepare and the other proposer's accept land in the same tick. */
#define DUEL_ACCEPTORS 3u
#define DUEL_PROPOSERS 2u
#define DUEL_EVENTS_MAX 256u
#define DUEL_BACKOFF_CAP 6u /* delays at most 2^6 ticks */

enum ev_kind { EV_ACCEPTOR, EV_PROPOSER, EV_LEARNER, EV_TIMER };

struct event {
    uint64_t tick;
    uint64_t seq;
    enum ev_kind kind;
    uint32_t to; /* acceptor index, proposer index or learner index */
    struct paxos_msg msg;
};

struct duel {
    struct event ev[DUEL_EVENTS_MAX];
    uint32_t n_ev;
    uint64_t seq;
    uint64_t now;
    bool backoff;
    struct prng rng;
    struct paxos_acceptor acc[DUEL_ACCEPTORS];
    struct paxos_proposer prop[DUEL_PROPOSERS];
    struct paxos_learner learner[DUEL_ACCEPTORS];
};

static void duel_post(struct duel *d, uint64_t delay, enum ev_kind kind,
                      uint32_t to, const struct paxos_msg *m)
{
    cr_assert_lt(d->n_ev, DUEL_EVENTS_MAX, "event queue full");
    struct event *e = &d->ev[d->n_ev++];
    memset(e, 0, sizeof(*e));
    e->tick = d->now + delay;
    e->seq = d->seq++;
    e->kind = kind;
    e->to = to;
    if (m)
        e->msg = *m;
}

static bool duel_before(const struct event *x, const struct event *y)
{
    if (x->tick != y->tick)
        return x->tick < y->tick;
    bool xp = x->kind == EV_ACCEPTOR && x->msg.type == PAXOS_PREPARE;
    bool yp = y->kind == EV_ACCEPTOR && y->msg.type == PAXOS_PREPARE;
    if (xp != yp)
        return xp;
    return x->seq < y->seq;
}

/* Removes the next event into *e; false when the queue is empty. */
static bool duel_pop(struct duel *d, struct event *e)
{
    if (d->n_ev == 0)
        return false;
    uint32_t best = 0;
    for (uint32_t i = 1; i < d->n_ev; i++)
        if (duel_before(&d->ev[i], &d->ev[best]))
            best = i;
    *e = d->ev[best];
    d->ev[best] = d->ev[--d->n_ev];
    d->now = e->tick;
    return true;
}

static void duel_broadcast(struct duel *d, const struct paxos_msg *m)
{
    for (uint32_t i = 0; i < DUEL_ACCEPTORS; i++)
        duel_post(d, 1, EV_ACCEPTOR, i, m);
}

static void duel_prepare(struct duel *d, uint32_t who)
{
    struct paxos_msg out;
    if (d->prop[who].state == PAXOS_CHOSEN)
        return; /* it knows the outcome: nothing left to propose */
    paxos_proposer_prepare(&d->prop[who], BALLOT_NONE, &out);
    duel_broadcast(d, &out);
}

static void duel_on_retry(struct duel *d, uint32_t who)
{
    if (!d->backoff) {
        duel_prepare(d, who); /* at once: the livelock */
        return;
    }
    /* Randomized exponential backoff: uniform in [1, 2^attempt] ticks,
     * attempt capped so the wait stays bounded. */
    uint32_t attempt = MIN(d->prop[who].attempts, DUEL_BACKOFF_CAP);
    duel_post(d, prng_range(&d->rng, 1, 1ull << attempt), EV_TIMER, who, NULL);
}

static void duel_deliver(struct duel *d, const struct event *e)
{
    struct paxos_msg reply;
    switch (e->kind) {
    case EV_ACCEPTOR:
        cr_assert_eq(paxos_acceptor_step(&d->acc[e->to], &e->msg, &reply), 0);
        duel_post(d, 1, EV_PROPOSER, e->msg.from - 1, &reply);
        if (reply.type == PAXOS_ACCEPTED)
            for (uint32_t i = 0; i < DUEL_ACCEPTORS; i++)
                duel_post(d, 1, EV_LEARNER, i, &reply);
        break;
    case EV_PROPOSER: {
        int rc = paxos_proposer_step(&d->prop[e->to], &e->msg, &reply);
        cr_assert_geq(rc, 0);
        if (rc == PAXOS_SEND_ACCEPT)
            duel_broadcast(d, &reply);
        else if (rc == PAXOS_RETRY)
            duel_on_retry(d, e->to);
        break;
    }
    case EV_LEARNER:
        cr_assert_geq(paxos_learner_on_accepted(&d->learner[e->to], &e->msg), 0);
        break;
    case EV_TIMER:
        duel_prepare(d, e->to);
        break;
    }
}

/* Proposer 0 (node A, value 3) starts at tick 0, proposer 1 (node B, value
 * 5) at tick 2: just when A's promises are back and its accept leaves, so
 * B's prepare lands in the same tick as A's accept. Runs until every
 * proposer has made `rounds` attempts or knows the outcome, or `ticks_max`. */
static void duel_run(struct duel *d, bool backoff, uint64_t seed,
                     uint32_t rounds, uint64_t ticks_max)
{
    memset(d, 0, sizeof(*d));
    d->backoff = backoff;
    prng_seed(&d->rng, seed);
    for (uint32_t i = 0; i < DUEL_ACCEPTORS; i++) {
        paxos_acceptor_init(&d->acc[i], i);
        paxos_learner_init(&d->learner[i], DUEL_ACCEPTORS);
    }
    paxos_proposer_init(&d->prop[0], NODE_A, DUEL_ACCEPTORS, 3);
    paxos_proposer_init(&d->prop[1], NODE_B, DUEL_ACCEPTORS, 5);
    duel_post(d, 0, EV_TIMER, 0, NULL);
    duel_post(d, 2, EV_TIMER, 1, NULL);

    struct event e;
    while (duel_pop(d, &e) && d->now <= ticks_max) {
        duel_deliver(d, &e);
        bool done = true;
        for (uint32_t i = 0; i < DUEL_PROPOSERS; i++)
            done = done && (d->prop[i].state == PAXOS_CHOSEN ||
                            d->prop[i].attempts >= rounds);
        if (done)
            return;
    }
}

Test(paxos, duelling_proposers_livelock_without_backoff)
{
    static struct duel d;
    duel_run(&d, false, 1, 50, 1000);
    int64_t value;
    uint64_t ballot;
    for (uint32_t i = 0; i < DUEL_PROPOSERS; i++) {
        cr_assert_geq(d.prop[i].attempts, 50, "proposer %u: %u ballots", i,
                      d.prop[i].attempts);
        cr_assert(!paxos_proposer_chosen(&d.prop[i], &value, &ballot));
    }
    for (uint32_t i = 0; i < DUEL_ACCEPTORS; i++) {
        cr_assert(!paxos_learner_chosen(&d.learner[i], &value, &ballot),
                  "learner %u learned %ld", i, (long)value);
        cr_assert_eq(d.acc[i].accepted_ballot, BALLOT_NONE,
                     "every accept was pre-empted");
    }
}

Test(paxos, random_backoff_ends_the_duel_for_every_seed)
{
    static struct duel d;
    for (uint64_t seed = 1; seed <= 100; seed++) {
        duel_run(&d, true, seed, UINT32_MAX, 10000);
        int64_t first = 0, value;
        uint64_t ballot;
        for (uint32_t i = 0; i < DUEL_ACCEPTORS; i++) {
            cr_assert(paxos_learner_chosen(&d.learner[i], &value, &ballot),
                      "seed=%lu learner %u learned nothing", (unsigned long)seed, i);
            if (i == 0)
                first = value;
            cr_assert_eq(value, first, "seed=%lu learners disagree", (unsigned long)seed);
        }
        for (uint32_t i = 0; i < DUEL_PROPOSERS; i++) {
            cr_assert(paxos_proposer_chosen(&d.prop[i], &value, &ballot),
                      "seed=%lu proposer %u", (unsigned long)seed, i);
            cr_assert_eq(value, first, "seed=%lu proposer %u disagrees",
                         (unsigned long)seed, i);
            cr_assert_leq(d.prop[i].attempts, 8, "seed=%lu proposer %u: %u ballots",
                          (unsigned long)seed, i, d.prop[i].attempts);
        }
    }
}

/* ---- unit tests of each rule ----------------------------------------- */

Test(paxos, acceptor_refuses_lower_and_equal_prepare)
{
    struct paxos_acceptor a;
    paxos_acceptor_init(&a, 0);
    uint64_t b5 = ballot_make(5, NODE_A);
    expect_promise(prepare_at(&a, b5), 0, b5, BALLOT_NONE, 0);
    /* Phase 1b answers only a number greater than any answered before. */
    expect_reject(prepare_at(&a, b5), 0, b5, b5);
    expect_reject(prepare_at(&a, ballot_make(4, NODE_B)), 0, ballot_make(4, NODE_B), b5);
    cr_assert_eq(a.promised, b5);
    /* Same round, lower node id: a lower ballot. */
    expect_reject(prepare_at(&a, ballot_make(5, 0)), 0, ballot_make(5, 0), b5);
    /* Nobody may prepare ballot "none". */
    struct paxos_acceptor fresh;
    paxos_acceptor_init(&fresh, 1);
    expect_reject(prepare_at(&fresh, BALLOT_NONE), 1, BALLOT_NONE, BALLOT_NONE);
}

Test(paxos, acceptor_accepts_equal_ballot_after_promise)
{
    struct paxos_acceptor a;
    paxos_acceptor_init(&a, 2);
    uint64_t b = ballot_make(3, NODE_B);
    expect_promise(prepare_at(&a, b), 2, b, BALLOT_NONE, 0);
    expect_accepted(accept_at(&a, b, 9), 2, b, 9);
    cr_assert_eq(a.promised, b);
    cr_assert_eq(a.accepted_ballot, b);
    cr_assert_eq(a.accepted_value, 9);
}

Test(paxos, acceptor_refuses_accept_below_promise)
{
    struct paxos_acceptor a;
    paxos_acceptor_init(&a, 0);
    uint64_t lo = ballot_make(1, NODE_A), hi = ballot_make(2, NODE_A);
    expect_promise(prepare_at(&a, hi), 0, hi, BALLOT_NONE, 0);
    expect_reject(accept_at(&a, lo, 1), 0, lo, hi);
    cr_assert_eq(a.accepted_ballot, BALLOT_NONE);
    /* A fresh acceptor still refuses ballot "none". */
    struct paxos_acceptor fresh;
    paxos_acceptor_init(&fresh, 1);
    expect_reject(accept_at(&fresh, BALLOT_NONE, 1), 1, BALLOT_NONE, BALLOT_NONE);
}

Test(paxos, accept_without_prepare_raises_the_promise)
{
    /* Phase 2b needs no prior promise; accepting n then refuses prepare(n)
     * and anything lower, keeping accepted <= promised. */
    struct paxos_acceptor a;
    paxos_acceptor_init(&a, 0);
    uint64_t b = ballot_make(2, NODE_B);
    expect_accepted(accept_at(&a, b, 4), 0, b, 4);
    cr_assert_eq(a.promised, b);
    expect_reject(prepare_at(&a, b), 0, b, b);
    expect_reject(accept_at(&a, ballot_make(1, NODE_B), 5), 0, ballot_make(1, NODE_B), b);
}

Test(paxos, promise_reports_the_highest_accepted)
{
    struct paxos_acceptor a;
    paxos_acceptor_init(&a, 1);
    uint64_t b1 = ballot_make(1, NODE_A), b2 = ballot_make(2, NODE_B);
    uint64_t b3 = ballot_make(3, NODE_A);
    expect_accepted(accept_at(&a, b1, 10), 1, b1, 10);
    expect_accepted(accept_at(&a, b2, 20), 1, b2, 20);
    expect_promise(prepare_at(&a, b3), 1, b3, b2, 20);
}

Test(paxos, proposer_proposes_the_value_of_the_highest_accepted_ballot)
{
    struct paxos_proposer p;
    paxos_proposer_init(&p, NODE_A, 5, 99);
    struct paxos_msg prep, out;
    paxos_proposer_prepare(&p, ballot_make(6, NODE_B), &prep);
    uint64_t b = prep.ballot;
    cr_assert_eq(b, ballot_make(7, NODE_A));
    struct paxos_msg pr[3] = {
        {.type = PAXOS_PROMISE, .from = 0, .ballot = b,
         .accepted_ballot = ballot_make(2, NODE_B), .value = 20},
        {.type = PAXOS_PROMISE, .from = 3, .ballot = b,
         .accepted_ballot = ballot_make(5, NODE_B), .value = 50},
        {.type = PAXOS_PROMISE, .from = 4, .ballot = b,
         .accepted_ballot = BALLOT_NONE},
    };
    cr_assert_eq(paxos_proposer_on_promise(&p, &pr[0], &out), PAXOS_NOTHING);
    cr_assert_eq(paxos_proposer_on_promise(&p, &pr[1], &out), PAXOS_NOTHING);
    cr_assert_eq(paxos_proposer_on_promise(&p, &pr[2], &out), PAXOS_SEND_ACCEPT);
    cr_assert_eq(out.type, PAXOS_ACCEPT);
    cr_assert_eq(out.from, NODE_A);
    cr_assert_eq(out.ballot, b);
    cr_assert_eq(out.value, 50);
}

Test(paxos, proposer_ignores_duplicate_promises)
{
    struct paxos_proposer p;
    paxos_proposer_init(&p, NODE_B, 3, 1);
    struct paxos_msg prep, out;
    paxos_proposer_prepare(&p, BALLOT_NONE, &prep);
    struct paxos_msg from_a = {.type = PAXOS_PROMISE, .from = ACC_A, .ballot = prep.ballot};
    struct paxos_msg from_c = {.type = PAXOS_PROMISE, .from = ACC_C, .ballot = prep.ballot};
    cr_assert_eq(paxos_proposer_on_promise(&p, &from_a, &out), PAXOS_NOTHING);
    cr_assert_eq(paxos_proposer_on_promise(&p, &from_a, &out), PAXOS_NOTHING);
    cr_assert_eq(paxos_proposer_on_promise(&p, &from_a, &out), PAXOS_NOTHING);
    cr_assert_eq(p.state, PAXOS_PREPARING, "one acceptor thrice is not a quorum");
    cr_assert_eq(paxos_proposer_on_promise(&p, &from_c, &out), PAXOS_SEND_ACCEPT);
    /* Duplicate acceptances count once too. */
    struct paxos_msg ok_a = {.type = PAXOS_ACCEPTED, .from = ACC_A, .ballot = prep.ballot, .value = 1};
    cr_assert_eq(paxos_proposer_on_accepted(&p, &ok_a), PAXOS_NOTHING);
    cr_assert_eq(paxos_proposer_on_accepted(&p, &ok_a), PAXOS_NOTHING);
    cr_assert_eq(p.state, PAXOS_ACCEPTING);
}

Test(paxos, proposer_ignores_replies_for_an_abandoned_ballot)
{
    struct paxos_proposer p;
    paxos_proposer_init(&p, NODE_A, 3, 1);
    struct paxos_msg prep1, prep2, out;
    paxos_proposer_prepare(&p, BALLOT_NONE, &prep1);
    paxos_proposer_prepare(&p, BALLOT_NONE, &prep2); /* a timeout: next ballot */
    cr_assert_gt(prep2.ballot, prep1.ballot);
    struct paxos_msg old = {.type = PAXOS_PROMISE, .ballot = prep1.ballot};
    for (uint32_t i = 0; i < 3; i++) {
        old.from = i;
        cr_assert_eq(paxos_proposer_on_promise(&p, &old, &out), PAXOS_NOTHING);
    }
    /* A stale reject does not abandon the new ballot, but its higher ballot
     * is remembered for the next prepare. */
    uint64_t high = ballot_make(9, NODE_B);
    struct paxos_msg rej = {.type = PAXOS_REJECT, .from = ACC_B,
                            .ballot = prep1.ballot, .promised = high};
    cr_assert_eq(paxos_proposer_on_reject(&p, &rej), PAXOS_NOTHING);
    cr_assert_eq(p.state, PAXOS_PREPARING);
    /* A reject that carries our own ballot (a duplicated prepare) is no
     * reason to give up either. */
    struct paxos_msg dup = {.type = PAXOS_REJECT, .from = ACC_C,
                            .ballot = prep2.ballot, .promised = prep2.ballot};
    cr_assert_eq(paxos_proposer_on_reject(&p, &dup), PAXOS_NOTHING);
    struct paxos_msg prep3;
    paxos_proposer_prepare(&p, BALLOT_NONE, &prep3);
    cr_assert_eq(prep3.ballot, ballot_make(10, NODE_A));
    cr_assert_eq(p.attempts, 3);
}

Test(paxos, proposer_refuses_malformed_messages)
{
    struct paxos_proposer p;
    paxos_proposer_init(&p, NODE_A, 3, 1);
    struct paxos_msg prep, out = {0}, before;
    paxos_proposer_prepare(&p, BALLOT_NONE, &prep);
    before = out;
    struct paxos_msg stranger = {.type = PAXOS_PROMISE, .from = 3, .ballot = prep.ballot};
    cr_assert_eq(paxos_proposer_on_promise(&p, &stranger, &out), -EBADMSG);
    cr_assert_eq(memcmp(&out, &before, sizeof(out)), 0, "out untouched");
    struct paxos_msg wrong = {.type = PAXOS_ACCEPT, .from = 0, .ballot = prep.ballot};
    cr_assert_eq(paxos_proposer_step(&p, &wrong, &out), -EBADMSG);
    cr_assert_eq(paxos_proposer_on_accepted(&p, &stranger), -EBADMSG);
    cr_assert_eq(paxos_proposer_on_reject(&p, &stranger), -EBADMSG);
    struct paxos_acceptor a;
    paxos_acceptor_init(&a, 0);
    cr_assert_eq(paxos_acceptor_step(&a, &stranger, &out), -EBADMSG);
    struct paxos_learner l;
    paxos_learner_init(&l, 3);
    struct paxos_msg far = {.type = PAXOS_ACCEPTED, .from = 7, .ballot = prep.ballot};
    cr_assert_eq(paxos_learner_on_accepted(&l, &far), -EBADMSG);
    cr_assert_eq(p.state, PAXOS_PREPARING);
}

Test(paxos, learner_needs_a_majority_of_the_same_ballot)
{
    struct paxos_learner l;
    paxos_learner_init(&l, 3);
    uint64_t b1 = ballot_make(1, NODE_A), b2 = ballot_make(2, NODE_B);
    int64_t value;
    uint64_t ballot;
    struct paxos_msg a1 = {.type = PAXOS_ACCEPTED, .from = ACC_A, .ballot = b1, .value = 7};
    struct paxos_msg b2m = {.type = PAXOS_ACCEPTED, .from = ACC_B, .ballot = b2, .value = 7};
    struct paxos_msg c2 = {.type = PAXOS_ACCEPTED, .from = ACC_C, .ballot = b2, .value = 7};
    /* Same value under two ballots is not a majority of one proposal. */
    cr_assert_eq(paxos_learner_on_accepted(&l, &a1), 0);
    cr_assert_eq(paxos_learner_on_accepted(&l, &b2m), 0);
    cr_assert(!paxos_learner_chosen(&l, &value, &ballot));
    /* One acceptor reporting twice is one vote. */
    cr_assert_eq(paxos_learner_on_accepted(&l, &b2m), 0);
    cr_assert(!paxos_learner_chosen(&l, &value, &ballot));
    cr_assert_eq(paxos_learner_on_accepted(&l, &c2), 1);
    cr_assert(paxos_learner_chosen(&l, &value, &ballot));
    cr_assert_eq(value, 7);
    cr_assert_eq(ballot, b2);
}

/* ---- property: never two values chosen ------------------------------- */

/* A lossy network as a bag of in-flight messages: each step delivers a
 * random one (sometimes leaving a copy behind: a duplicate), drops one, or
 * makes a random proposer start a new ballot (a timeout). The checker sits
 * outside the code under test: it records every ACCEPTED an acceptor sends
 * and computes from them which (ballot, value) got a majority. */
#define BAG_MAX 128u
#define PROP_STEPS 600u
#define PROP_SEEDS 2000u
#define PROP_MAX_PROPOSERS 3u
#define PROP_MAX_ACCEPTORS 5u
#define LOG_MAX 512u

struct bag_msg {
    enum ev_kind kind; /* EV_ACCEPTOR, EV_PROPOSER or EV_LEARNER */
    uint32_t to;
    struct paxos_msg msg;
};

struct log_row {
    uint64_t ballot;
    int64_t value;
    uint32_t by; /* acceptors that accepted it */
};

struct world {
    struct prng rng;
    uint32_t n_acc, n_prop;
    struct paxos_acceptor acc[PROP_MAX_ACCEPTORS];
    struct paxos_proposer prop[PROP_MAX_PROPOSERS];
    struct paxos_learner learner[PROP_MAX_PROPOSERS];
    struct bag_msg bag[BAG_MAX];
    uint32_t n_bag;
    /* checker: one row per ballot that any acceptor accepted */
    struct log_row log[LOG_MAX];
    uint32_t n_log;
    bool chosen;
    int64_t chosen_value;
    uint64_t seed;
};

static void bag_put(struct world *w, enum ev_kind kind, uint32_t to,
                    const struct paxos_msg *m)
{
    if (w->n_bag == BAG_MAX)
        return; /* the network is lossy: a full link drops */
    w->bag[w->n_bag++] = (struct bag_msg){.kind = kind, .to = to, .msg = *m};
}

static void world_broadcast(struct world *w, const struct paxos_msg *m)
{
    for (uint32_t i = 0; i < w->n_acc; i++)
        bag_put(w, EV_ACCEPTOR, i, m);
}

static void check_accepted(struct world *w, const struct paxos_msg *m)
{
    uint32_t i = 0;
    while (i < w->n_log && w->log[i].ballot != m->ballot)
        i++;
    if (i == w->n_log) {
        cr_assert_lt(w->n_log, LOG_MAX);
        w->log[w->n_log++] = (struct log_row){.ballot = m->ballot, .value = m->value};
    }
    cr_assert_eq(w->log[i].value, m->value, "seed=%lu: two values under one ballot",
                 (unsigned long)w->seed);
    w->log[i].by |= 1u << m->from;
    if (count(w->log[i].by) < w->n_acc / 2 + 1)
        return;
    if (w->chosen)
        cr_assert_eq(w->chosen_value, m->value, "seed=%lu: %ld and %ld both chosen",
                     (unsigned long)w->seed, (long)w->chosen_value, (long)m->value);
    w->chosen = true;
    w->chosen_value = m->value;
}

static void world_prepare(struct world *w, uint32_t who)
{
    struct paxos_msg out;
    if (w->prop[who].state == PAXOS_CHOSEN)
        return;
    paxos_proposer_prepare(&w->prop[who], BALLOT_NONE, &out);
    world_broadcast(w, &out);
}

static void world_deliver(struct world *w, const struct bag_msg *b)
{
    struct paxos_msg reply;
    int rc;
    switch (b->kind) {
    case EV_ACCEPTOR:
        cr_assert_eq(paxos_acceptor_step(&w->acc[b->to], &b->msg, &reply), 0);
        cr_assert_leq(w->acc[b->to].accepted_ballot, w->acc[b->to].promised);
        bag_put(w, EV_PROPOSER, b->msg.from - 1, &reply);
        if (reply.type != PAXOS_ACCEPTED)
            break;
        check_accepted(w, &reply);
        for (uint32_t i = 0; i < w->n_prop; i++)
            bag_put(w, EV_LEARNER, i, &reply);
        break;
    case EV_PROPOSER:
        rc = paxos_proposer_step(&w->prop[b->to], &b->msg, &reply);
        cr_assert_geq(rc, 0);
        if (rc == PAXOS_SEND_ACCEPT)
            world_broadcast(w, &reply);
        else if (rc == PAXOS_RETRY && prng_chance(&w->rng, 500000))
            world_prepare(w, b->to);
        break;
    case EV_LEARNER:
        cr_assert_geq(paxos_learner_on_accepted(&w->learner[b->to], &b->msg), 0);
        break;
    case EV_TIMER:
        cr_assert_fail("no timers in the bag");
    }
}

/* One seeded run; returns whether anything was chosen. */
static bool world_run(struct world *w, uint64_t seed)
{
    memset(w, 0, sizeof(*w));
    w->seed = seed;
    prng_seed(&w->rng, seed);
    w->n_acc = prng_chance(&w->rng, 500000) ? 3 : 5;
    w->n_prop = (uint32_t)prng_range(&w->rng, 2, PROP_MAX_PROPOSERS);
    for (uint32_t i = 0; i < w->n_acc; i++)
        paxos_acceptor_init(&w->acc[i], i);
    for (uint32_t i = 0; i < w->n_prop; i++) {
        paxos_proposer_init(&w->prop[i], i + 1, w->n_acc, 100 + i);
        paxos_learner_init(&w->learner[i], w->n_acc);
    }
    for (uint32_t step = 0; step < PROP_STEPS; step++) {
        uint64_t r = prng_below(&w->rng, 100);
        if (r < 8 || w->n_bag == 0) {
            world_prepare(w, (uint32_t)prng_below(&w->rng, w->n_prop));
        } else if (r < 20) {
            uint32_t i = (uint32_t)prng_below(&w->rng, w->n_bag);
            w->bag[i] = w->bag[--w->n_bag];
        } else {
            uint32_t i = (uint32_t)prng_below(&w->rng, w->n_bag);
            struct bag_msg b = w->bag[i];
            if (!prng_chance(&w->rng, 100000))
                w->bag[i] = w->bag[--w->n_bag]; /* else: a duplicate stays */
            world_deliver(w, &b);
        }
    }
    /* Whoever thinks a value is chosen agrees with the checker. */
    int64_t value;
    uint64_t ballot;
    for (uint32_t i = 0; i < w->n_prop; i++) {
        if (paxos_learner_chosen(&w->learner[i], &value, &ballot)) {
            cr_assert(w->chosen, "seed=%lu: learner %u learned too early", (unsigned long)seed, i);
            cr_assert_eq(value, w->chosen_value, "seed=%lu: learner %u", (unsigned long)seed, i);
        }
        if (paxos_proposer_chosen(&w->prop[i], &value, &ballot)) {
            cr_assert(w->chosen, "seed=%lu: proposer %u too early", (unsigned long)seed, i);
            cr_assert_eq(value, w->chosen_value, "seed=%lu: proposer %u", (unsigned long)seed, i);
        }
    }
    return w->chosen;
}

Test(paxos, never_two_values_chosen_under_random_schedules)
{
    static struct world w;
    uint32_t decided = 0;
    for (uint64_t seed = 1; seed <= PROP_SEEDS; seed++)
        decided += world_run(&w, seed);
    /* The property means something only if most runs decide at all. */
    cr_assert_geq(decided, PROP_SEEDS / 2, "only %u of %u runs decided", decided,
                  PROP_SEEDS);
    cr_log_info("paxos property: %u of %u runs chose a value\n", decided, PROP_SEEDS);
}
