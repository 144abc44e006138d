/* Ballots: (round, node id), totally ordered, packed into one uint64_t so
 * that comparing ballots is comparing integers. The node id sits in the low
 * 16 bits, so two proposers never share a ballot; ballot 0 means "none". */
#ifndef PAXFS_CONSENSUS_BALLOT_H
#define PAXFS_CONSENSUS_BALLOT_H

#include <stdint.h>

#define BALLOT_NONE 0ull
#define BALLOT_NODE_BITS 16
#define BALLOT_NODE_MAX 0xffffu

static inline uint64_t ballot_make(uint64_t round, uint32_t node)
{
    return round << BALLOT_NODE_BITS | (node & BALLOT_NODE_MAX);
}
static inline uint64_t ballot_round(uint64_t ballot) { return ballot >> BALLOT_NODE_BITS; }
static inline uint32_t ballot_node(uint64_t ballot) { return (uint32_t)(ballot & BALLOT_NODE_MAX); }
/* The smallest ballot of `node` greater than `seen`. */
static inline uint64_t ballot_next(uint64_t seen, uint32_t node)
{
    return ballot_make(ballot_round(seen) + 1, node);
}

#endif
