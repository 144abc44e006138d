/* status — what `paxfs status` asks a node and what the node answers: the
 * STATUS_REQ / STATUS_REPLY payloads (frame.h types 3 and 4), and the small
 * blocking client that asks.
 *
 * Who may ask. Only the cluster's operator client: a TLS client presenting
 * client.crt (identity paxfs:client:cluster:<C>, pki.h) signed by the
 * cluster CA. It dials a node, sends HELLO(node 0, C), gets the node's
 * HELLO(K, C) back, then sends STATUS_REQ frames, each answered by one
 * STATUS_REPLY on that same connection (net.h, "Clients").
 *
 *   client                                      node K
 *   TLS (client.crt) ─────────────────────────▶ cert = client of C
 *   HELLO(0, C), STATUS_REQ ──────────────────▶ HELLO(K, C), STATUS_REPLY
 *   checks cert = node K, HELLO = K, reply.node = K
 *
 * Wire format, little-endian:
 *
 *   STATUS_REQ (4 bytes)        STATUS_REPLY (52 bytes, version 1)
 *     0 version u32  >= 1         0 version u32  = 1
 *       (the newest reply         4 node    u32  >= 1
 *        version the client       8 role    u32  enum net_status_role
 *        understands; the node   12 leader  u32  0 = unknown
 *        answers with the        16 ballot  u64
 *        newest it has that      24 commit  u64  highest chosen slot known
 *        is not newer)           32 applied u64  highest slot applied
 *                                40 session u64
 *                                48 flags   u32  bit 0: the replica failed
 *
 * Decoders check the exact length, the version, the role and that no
 * unknown flag is set; anything else is -EBADMSG. */
#ifndef PAXFS_NET_STATUS_H
#define PAXFS_NET_STATUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "consensus/replica.h"
#include "net/config.h"

#define NET_STATUS_VERSION 1u
#define NET_STATUS_REQ_BYTES 4u
#define NET_STATUS_REPLY_BYTES 52u
#define NET_STATUS_FLAG_FAILED 1u

enum net_status_role {
    NET_STATUS_FOLLOWER = 0,
    NET_STATUS_CANDIDATE = 1,
    NET_STATUS_LEADER = 2,
};

struct net_status_reply {
    uint32_t node;
    enum net_status_role role;
    uint32_t leader;
    uint64_t ballot;
    uint64_t commit;
    uint64_t applied;
    uint64_t session;
    bool failed; /* the replica stopped on an error (it serves nothing) */
};

void net_status_req_encode(uint32_t version, uint8_t out[NET_STATUS_REQ_BYTES]);
/* 0 and *version (>= 1), or -EBADMSG. */
int net_status_req_decode(const uint8_t *p, size_t len, uint32_t *version);
void net_status_reply_encode(const struct net_status_reply *r,
                             uint8_t out[NET_STATUS_REPLY_BYTES]);
/* 0 and *out filled, or -EBADMSG. */
int net_status_reply_decode(const uint8_t *p, size_t len, struct net_status_reply *out);

/* "follower", "candidate", "leader". */
const char *net_status_role_name(enum net_status_role role);
/* A replica's status (replica_status()) as a reply of node `node`. */
void net_status_from_replica(const struct replica_status *st, uint32_t node,
                             struct net_status_reply *out);

/* ---- the client ------------------------------------------------------------ */

struct net_status_client;

/* Loads DIR/ca.crt, DIR/client.crt and DIR/client.key for cluster cc and
 * checks that the certificate is this cluster's client identity and verifies
 * against the CA. -ENOENT when client.crt or client.key is missing (a
 * cluster made before `paxfs init` wrote them); -EACCES for a bad or foreign
 * file; -EINVAL if a path does not fit. On failure a one-line reason (what
 * and what to do) is in err. */
int net_status_client_new(const struct cluster_config *cc, const char *dir,
                          struct net_status_client **out, char *err, size_t errlen);
void net_status_client_free(struct net_status_client *c);

/* Asks node `node` of the cluster for its status over mutual TLS; blocks at
 * most about timeout_ms in all (name resolution aside). Thread-safe: several
 * threads may query different nodes with one client at once. 0 and *out
 * filled; -ENOTCONN cannot connect (refused, unreachable, closed);
 * -ETIMEDOUT; -EACCES authentication failed (either side); -EBADMSG a
 * malformed or mismatching answer; -EINVAL bad node. A one-line reason is in
 * err on failure. */
int net_status_query(struct net_status_client *c, uint32_t node, uint32_t timeout_ms,
                     struct net_status_reply *out, char *err, size_t errlen);

#endif
