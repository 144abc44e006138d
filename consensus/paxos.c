/* Single-decree Paxos: acceptor, proposer and learner as pure state
 * machines (see paxos.h for the contract, the invariants and the proposer's
 * state diagram). Every branch cites the rule of "Paxos Made Simple"
 * (Lamport 2001) it implements; section numbers are that paper's.
 *
 * Messages come from the network, so a wrong type or an out-of-range sender
 * is a returned -EBADMSG, never an assertion. A stale message (for a ballot
 * the proposer has left) is ignored: Paxos tolerates loss, duplication and
 * reordering, so ignoring one is always safe. */
#include "consensus/paxos.h"

#include <errno.h>
#include <string.h>

#include "base/assert.h"

static uint32_t quorum(uint32_t n_acceptors) { return n_acceptors / 2 + 1; }

static uint32_t count(uint32_t set) { return (uint32_t)__builtin_popcount(set); }

/* ---- acceptor -------------------------------------------------------- */

void paxos_acceptor_init(struct paxos_acceptor *a, uint32_t id)
{
    ASSERT(id < PAXOS_ACCEPTORS_MAX);
    memset(a, 0, sizeof(*a));
    a->id = id;
}

static void reject(const struct paxos_acceptor *a, uint64_t ballot,
                   struct paxos_msg *reply)
{
    /* Paxos Made Simple §2.2: an acceptor that ignores a request "because it
     * has already received a prepare request with a higher number ... should
     * probably inform the proposer, who should then abandon its proposal".
     * The reject carries that higher number so the proposer can jump past it. */
    memset(reply, 0, sizeof(*reply));
    reply->type = PAXOS_REJECT;
    reply->from = a->id;
    reply->ballot = ballot;
    reply->promised = a->promised;
}

void paxos_acceptor_on_prepare(struct paxos_acceptor *a, uint64_t ballot,
                               struct paxos_msg *reply)
{
    /* Phase 1b (§2.2): "If an acceptor receives a prepare request with number
     * n greater than that of any prepare request to which it has already
     * responded, then it responds ... with a promise not to accept any more
     * proposals numbered less than n and with the highest-numbered proposal
     * (if any) that it has accepted." Greater, strictly: an equal ballot was
     * already answered (or is BALLOT_NONE, which nobody may use). */
    if (ballot <= a->promised) {
        reject(a, ballot, reply);
        return;
    }
    a->promised = ballot;
    memset(reply, 0, sizeof(*reply));
    reply->type = PAXOS_PROMISE;
    reply->from = a->id;
    reply->ballot = ballot;
    reply->accepted_ballot = a->accepted_ballot;
    reply->value = a->accepted_ballot != BALLOT_NONE ? a->accepted_value : 0;
}

void paxos_acceptor_on_accept(struct paxos_acceptor *a, uint64_t ballot,
                              int64_t value, struct paxos_msg *reply)
{
    /* Phase 2b (§2.2): "If an acceptor receives an accept request for a
     * proposal numbered n, it accepts the proposal unless it has already
     * responded to a prepare request having a number greater than n" (P1a).
     * So an equal ballot is accepted. BALLOT_NONE is no proposal at all: a
     * fresh acceptor (promised == NONE) must not accept it. */
    if (ballot < a->promised || ballot == BALLOT_NONE) {
        reject(a, ballot, reply);
        return;
    }
    /* Raising promised to the accepted ballot keeps accepted <= promised
     * (invariant 1): accepting n implies refusing anything below n later. */
    a->promised = ballot;
    a->accepted_ballot = ballot;
    a->accepted_value = value;
    memset(reply, 0, sizeof(*reply));
    reply->type = PAXOS_ACCEPTED;
    reply->from = a->id;
    reply->ballot = ballot;
    reply->value = value;
}

int paxos_acceptor_step(struct paxos_acceptor *a, const struct paxos_msg *m,
                        struct paxos_msg *reply)
{
    switch (m->type) {
    case PAXOS_PREPARE:
        paxos_acceptor_on_prepare(a, m->ballot, reply);
        return 0;
    case PAXOS_ACCEPT:
        paxos_acceptor_on_accept(a, m->ballot, m->value, reply);
        return 0;
    default:
        return -EBADMSG;
    }
}

/* ---- proposer -------------------------------------------------------- */

void paxos_proposer_init(struct paxos_proposer *p, uint32_t node_id,
                         uint32_t n_acceptors, int64_t own_value)
{
    ASSERT(node_id <= BALLOT_NODE_MAX);
    ASSERT(n_acceptors >= 1 && n_acceptors <= PAXOS_ACCEPTORS_MAX);
    memset(p, 0, sizeof(*p));
    p->node_id = node_id;
    p->n_acceptors = n_acceptors;
    p->own_value = own_value;
    p->state = PAXOS_IDLE;
}

void paxos_proposer_prepare(struct paxos_proposer *p, uint64_t seen_ballot,
                            struct paxos_msg *out)
{
    ASSERT(p->state != PAXOS_CHOSEN);
    /* Phase 1a (§2.2): "A proposer selects a proposal number n and sends a
     * prepare request with number n to a majority of acceptors." n must be
     * new and, to stand a chance, above every number seen (§2.5: "a proposer
     * ... chooses a larger number than any it has tried or seen"). */
    p->seen = MAX(p->seen, MAX(seen_ballot, p->ballot));
    p->ballot = ballot_next(p->seen, p->node_id);
    ASSERT(p->ballot > p->seen); /* the round counter did not wrap */
    p->seen = p->ballot;
    p->attempts++;
    p->state = PAXOS_PREPARING;
    p->promised_by = 0;
    p->accepted_by = 0;
    p->max_accepted = BALLOT_NONE;
    p->max_value = 0;
    p->proposal = 0;
    memset(out, 0, sizeof(*out));
    out->type = PAXOS_PREPARE;
    out->from = p->node_id;
    out->ballot = p->ballot;
}

static bool from_acceptor(const struct paxos_proposer *p,
                          const struct paxos_msg *m, enum paxos_msg_type type)
{
    return m->type == type && m->from < p->n_acceptors;
}

int paxos_proposer_on_promise(struct paxos_proposer *p,
                              const struct paxos_msg *m, struct paxos_msg *out)
{
    if (!from_acceptor(p, m, PAXOS_PROMISE))
        return -EBADMSG;
    /* Only promises for the current ballot count; any other is for a round
     * we have left. */
    bool in_play = p->state == PAXOS_PREPARING || p->state == PAXOS_ACCEPTING;
    if (!in_play || m->ballot != p->ballot)
        return PAXOS_NOTHING;
    /* A quorum is a set of distinct acceptors: a duplicated promise counts
     * once (the network may deliver a message twice). */
    uint32_t bit = 1u << m->from;
    if (p->promised_by & bit)
        return PAXOS_NOTHING;
    p->promised_by |= bit;
    /* Late promises are still counted (promised_by is the record of who
     * promised), but the value was fixed when the quorum formed: one accept
     * per ballot (invariant 2). */
    if (p->state == PAXOS_ACCEPTING)
        return PAXOS_NOTHING;
    if (m->accepted_ballot != BALLOT_NONE && m->accepted_ballot > p->max_accepted) {
        p->max_accepted = m->accepted_ballot;
        p->max_value = m->value;
    }
    if (count(p->promised_by) < quorum(p->n_acceptors))
        return PAXOS_NOTHING;
    /* Phase 2a (§2.2): with responses from a majority, send an accept request
     * "for a proposal numbered n with a value v, where v is the value of the
     * highest-numbered proposal among the responses, or is any value if the
     * responses reported no proposals". Any value: ours. */
    p->proposal = p->max_accepted != BALLOT_NONE ? p->max_value : p->own_value;
    p->state = PAXOS_ACCEPTING;
    memset(out, 0, sizeof(*out));
    out->type = PAXOS_ACCEPT;
    out->from = p->node_id;
    out->ballot = p->ballot;
    out->value = p->proposal;
    return PAXOS_SEND_ACCEPT;
}

int paxos_proposer_on_accepted(struct paxos_proposer *p,
                               const struct paxos_msg *m)
{
    if (!from_acceptor(p, m, PAXOS_ACCEPTED))
        return -EBADMSG;
    if (p->state != PAXOS_ACCEPTING || m->ballot != p->ballot)
        return PAXOS_NOTHING;
    p->accepted_by |= 1u << m->from; /* a set: duplicates count once */
    if (count(p->accepted_by) < quorum(p->n_acceptors))
        return PAXOS_NOTHING;
    /* §2.3: "A value is chosen when a single proposal with that value has
     * been accepted by a majority of the acceptors." */
    p->state = PAXOS_CHOSEN;
    return PAXOS_CHOSEN_NOW;
}

int paxos_proposer_on_reject(struct paxos_proposer *p, const struct paxos_msg *m)
{
    if (!from_acceptor(p, m, PAXOS_REJECT))
        return -EBADMSG;
    /* Remember the higher ballot even if the reject is stale: the next
     * prepare must go above it or it would be refused too (§2.5). */
    p->seen = MAX(p->seen, m->promised);
    /* §2.2: the proposer "should then abandon its proposal". Only a reject
     * of the current ballot, while it is still in play, does that. */
    bool in_play = p->state == PAXOS_PREPARING || p->state == PAXOS_ACCEPTING;
    if (!in_play || m->ballot != p->ballot || m->promised <= p->ballot)
        return PAXOS_NOTHING;
    p->state = PAXOS_IDLE;
    return PAXOS_RETRY;
}

int paxos_proposer_step(struct paxos_proposer *p, const struct paxos_msg *m,
                        struct paxos_msg *out)
{
    switch (m->type) {
    case PAXOS_PROMISE:
        return paxos_proposer_on_promise(p, m, out);
    case PAXOS_ACCEPTED:
        return paxos_proposer_on_accepted(p, m);
    case PAXOS_REJECT:
        return paxos_proposer_on_reject(p, m);
    default:
        return -EBADMSG;
    }
}

bool paxos_proposer_chosen(const struct paxos_proposer *p, int64_t *value,
                           uint64_t *ballot)
{
    if (p->state != PAXOS_CHOSEN)
        return false;
    *value = p->proposal;
    *ballot = p->ballot;
    return true;
}

/* ---- learner --------------------------------------------------------- */

void paxos_learner_init(struct paxos_learner *l, uint32_t n_acceptors)
{
    ASSERT(n_acceptors >= 1 && n_acceptors <= PAXOS_ACCEPTORS_MAX);
    memset(l, 0, sizeof(*l));
    l->n_acceptors = n_acceptors;
}

int paxos_learner_on_accepted(struct paxos_learner *l, const struct paxos_msg *m)
{
    if (m->type != PAXOS_ACCEPTED || m->from >= l->n_acceptors ||
        m->ballot == BALLOT_NONE)
        return -EBADMSG;
    if (l->chosen)
        return 0;
    /* An acceptor only moves to higher ballots; an older report is stale. */
    if (m->ballot <= l->ballot[m->from])
        return 0;
    l->ballot[m->from] = m->ballot;
    l->value[m->from] = m->value;
    /* §2.3: chosen once a majority accepted the same proposal, i.e. the same
     * ballot (a ballot carries exactly one value, Phase 2a). */
    uint32_t same = 0;
    for (uint32_t i = 0; i < l->n_acceptors; i++)
        same += l->ballot[i] == m->ballot;
    if (same < quorum(l->n_acceptors))
        return 0;
    l->chosen = true;
    l->chosen_ballot = m->ballot;
    l->chosen_value = m->value;
    return 1;
}

bool paxos_learner_chosen(const struct paxos_learner *l, int64_t *value,
                          uint64_t *ballot)
{
    if (!l->chosen)
        return false;
    *value = l->chosen_value;
    *ballot = l->chosen_ballot;
    return true;
}
