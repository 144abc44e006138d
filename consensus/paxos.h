/* Single-decree Paxos ("Paxos Made Simple", Lamport 2001): the three roles
 * that agree on ONE value, as pure state machines. No sockets, no clock, no
 * threads, no malloc: the caller delivers a message to a role and gets back
 * the reply or the next message to broadcast. It is the founding design in
 * its smallest form, kept as the readable reference for the rules the
 * Multi-Paxos core (px.h) applies per slot; it is not on the data path.
 *
 * Ballots are consensus/ballot.h ballots: (round << 16 | node id), so two
 * proposers never share one and BALLOT_NONE (0) means "none". Values are
 * int64_t. Acceptors are numbered 0 .. n_acceptors-1; a proposer's node id is
 * the one in its ballots. Quorums are majorities: n_acceptors / 2 + 1.
 *
 * Invariants (checked by the property test in tests/test_paxos.c):
 *   1. An acceptor's promised ballot never decreases, and
 *      accepted_ballot <= promised.
 *   2. A proposer sends at most one accept per ballot, and its value is the
 *      value of the highest-numbered proposal reported by a quorum of
 *      promises, or its own value if they reported none (§2.2, phase 2a).
 *   3. Hence at most one value is ever chosen (§2.2, P2).
 *
 * Durability: an acceptor "must remember this information even if it fails
 * and then restarts" (§2.5). The caller persists struct paxos_acceptor
 * before it sends the reply an on_* call wrote. */
#ifndef PAXFS_CONSENSUS_PAXOS_H
#define PAXFS_CONSENSUS_PAXOS_H

#include <stdbool.h>
#include <stdint.h>

#include "consensus/ballot.h"

/* Acceptor sets are bitmasks in a uint32_t. */
#define PAXOS_ACCEPTORS_MAX 16u

enum paxos_msg_type {
    PAXOS_PREPARE = 1, /* phase 1a, proposer -> acceptors: ballot */
    PAXOS_PROMISE,     /* phase 1b, acceptor -> proposer: ballot, accepted_ballot, value */
    PAXOS_ACCEPT,      /* phase 2a, proposer -> acceptors: ballot, value */
    PAXOS_ACCEPTED,    /* phase 2b, acceptor -> proposer and learners: ballot, value */
    PAXOS_REJECT,      /* acceptor -> proposer: ballot refused, promised */
};

/* One message. `from` is the sender: a proposer's node id, or an acceptor's
 * index. `ballot` is always the ballot the message is about: the one
 * proposed (PREPARE, ACCEPT) or the one answered (PROMISE, ACCEPTED,
 * REJECT). Fields a type does not use are zero. */
struct paxos_msg {
    enum paxos_msg_type type;
    uint32_t from;
    uint64_t ballot;
    /* PROMISE: the highest ballot this acceptor has accepted, BALLOT_NONE if
     * it has accepted nothing (then `value` is 0). */
    uint64_t accepted_ballot;
    /* REJECT: the higher ballot the acceptor has promised. */
    uint64_t promised;
    /* ACCEPT, ACCEPTED: the proposed value. PROMISE: the accepted value. */
    int64_t value;
};

/* ---- acceptor -------------------------------------------------------- */

struct paxos_acceptor {
    uint32_t id;              /* index in 0 .. n_acceptors-1 */
    uint64_t promised;        /* highest ballot promised; never decreases */
    uint64_t accepted_ballot; /* BALLOT_NONE until a value is accepted */
    int64_t accepted_value;   /* meaningful only if accepted_ballot != NONE */
};

void paxos_acceptor_init(struct paxos_acceptor *a, uint32_t id);
/* Phase 1b. Writes *reply: a PROMISE carrying the highest accepted proposal
 * (if any) when ballot > promised, else a REJECT carrying promised. */
void paxos_acceptor_on_prepare(struct paxos_acceptor *a, uint64_t ballot,
                               struct paxos_msg *reply);
/* Phase 2b. Writes *reply: ACCEPTED when ballot >= promised (and then
 * promised = ballot), else a REJECT carrying promised. */
void paxos_acceptor_on_accept(struct paxos_acceptor *a, uint64_t ballot,
                              int64_t value, struct paxos_msg *reply);
/* Dispatches a PREPARE or an ACCEPT to the two calls above. Returns 0 and
 * writes *reply, or -EBADMSG (reply untouched) for any other type. */
int paxos_acceptor_step(struct paxos_acceptor *a, const struct paxos_msg *m,
                        struct paxos_msg *reply);

/* ---- proposer -------------------------------------------------------- */

/* The proposer's life, and the call that makes each move:
 *
 *             paxos_proposer_prepare()       quorum of PROMISE
 *     IDLE ----------------------------> PREPARING -----------------> ACCEPTING
 *      ^                                     |   (on_promise:              |
 *      |   REJECT with a higher ballot       |    PAXOS_SEND_ACCEPT)       |
 *      +----------- (on_reject: PAXOS_RETRY) +-----------------------------+
 *                                                                          |
 *                                    quorum of ACCEPTED (on_accepted:      v
 *                                    PAXOS_CHOSEN)                      CHOSEN
 *
 * paxos_proposer_prepare() may also be called in PREPARING or ACCEPTING (a
 * timeout): it abandons the current ballot for a higher one. Never after
 * CHOSEN: the decision is made. */
enum paxos_proposer_state {
    PAXOS_IDLE = 0,
    PAXOS_PREPARING,
    PAXOS_ACCEPTING,
    PAXOS_CHOSEN,
};

/* What the caller must do after a message was handed to the proposer. */
enum paxos_action {
    PAXOS_NOTHING = 0, /* stale, duplicate, or not yet a quorum */
    PAXOS_SEND_ACCEPT, /* *out holds the ACCEPT to send to every acceptor */
    PAXOS_RETRY,       /* pre-empted: call paxos_proposer_prepare() again */
    PAXOS_CHOSEN_NOW,  /* a quorum accepted: paxos_proposer_chosen() says what */
};

struct paxos_proposer {
    uint32_t node_id;
    uint32_t n_acceptors;
    enum paxos_proposer_state state;
    int64_t own_value;        /* what this proposer would like chosen */
    uint64_t ballot;          /* current ballot, BALLOT_NONE before prepare */
    uint64_t seen;            /* highest ballot seen: own or from a REJECT */
    uint32_t attempts;        /* prepares so far: one per ballot */
    uint32_t promised_by;     /* acceptors that promised `ballot` */
    uint32_t accepted_by;     /* acceptors that accepted `ballot` */
    uint64_t max_accepted;    /* highest accepted ballot among the promises */
    int64_t max_value;        /* its value */
    int64_t proposal;         /* value sent in phase 2 for `ballot` */
};

void paxos_proposer_init(struct paxos_proposer *p, uint32_t node_id,
                         uint32_t n_acceptors, int64_t own_value);
/* Phase 1a: picks the smallest ballot of this node above every ballot seen
 * (its own, those carried by rejects, and `seen_ballot`, which the caller may
 * know of from elsewhere; BALLOT_NONE if nothing), forgets the old round and
 * writes the PREPARE to send to every acceptor into *out. */
void paxos_proposer_prepare(struct paxos_proposer *p, uint64_t seen_ballot,
                            struct paxos_msg *out);
/* Each returns a paxos_action (>= 0), or -EBADMSG if the message has the
 * wrong type or comes from an acceptor index >= n_acceptors; *out is written
 * only with PAXOS_SEND_ACCEPT. */
int paxos_proposer_on_promise(struct paxos_proposer *p,
                              const struct paxos_msg *m, struct paxos_msg *out);
int paxos_proposer_on_accepted(struct paxos_proposer *p,
                               const struct paxos_msg *m);
int paxos_proposer_on_reject(struct paxos_proposer *p,
                             const struct paxos_msg *m);
/* Dispatches PROMISE, ACCEPTED and REJECT to the three calls above. */
int paxos_proposer_step(struct paxos_proposer *p, const struct paxos_msg *m,
                        struct paxos_msg *out);
/* True, with *value and *ballot written, once a quorum accepted its proposal. */
bool paxos_proposer_chosen(const struct paxos_proposer *p, int64_t *value,
                           uint64_t *ballot);

/* ---- learner --------------------------------------------------------- */

/* Remembers, per acceptor, the highest ballot it reported accepting. A
 * value is chosen when a majority reported the SAME ballot (§2.3): reports
 * of different ballots never add up, even with equal values. Keeping only
 * the latest ballot per acceptor bounds the state; it can only delay
 * learning (a reordered older report is dropped), never learn a wrong value. */
struct paxos_learner {
    uint32_t n_acceptors;
    uint64_t ballot[PAXOS_ACCEPTORS_MAX];
    int64_t value[PAXOS_ACCEPTORS_MAX];
    bool chosen;
    uint64_t chosen_ballot;
    int64_t chosen_value;
};

void paxos_learner_init(struct paxos_learner *l, uint32_t n_acceptors);
/* Takes one ACCEPTED. Returns 1 if this report made the value chosen, 0 if
 * not (or it was already chosen), -EBADMSG for a wrong type or sender. */
int paxos_learner_on_accepted(struct paxos_learner *l, const struct paxos_msg *m);
/* True, with *value and *ballot written, once a majority accepted one ballot. */
bool paxos_learner_chosen(const struct paxos_learner *l, int64_t *value,
                          uint64_t *ballot);

#endif
