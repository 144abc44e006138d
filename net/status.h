/* status — what `paxfs status` asks a node and what the node answers: the
 * STATUS_REQ / STATUS_REPLY payloads (frame.h types 3 and 4), and the small
 * blocking client that asks, which also carries the operator's opaque
 * requests (CLIENT_REQ / CLIENT_REPLY, types 6 and 7: `paxfs fsck`).
 *
 * Who may ask. Only the cluster's operator client: a TLS client presenting
 * client.crt (identity paxfs:client:cluster:<C>, pki.h) signed by the
 * cluster CA. It dials a node, sends HELLO(node 0, C), gets the node's
 * HELLO(K, C) back, then sends STATUS_REQ frames, each answered by one
 * STATUS_REPLY on that same connection, or CLIENT_REQ frames, each answered
 * by one CLIENT_REPLY (net.h, "Clients").
 *
 *   client                                      node K
 *   TLS (client.crt) ─────────────────────────▶ cert = client of C
 *   HELLO(0, C), STATUS_REQ ──────────────────▶ HELLO(K, C), STATUS_REPLY
 *   checks cert = node K, HELLO = K, reply.node = K
 *
 * Versions. A STATUS_REQ names the newest reply version the client
 * understands; the node answers with the newest version it has that is not
 * newer. So a new client reads old nodes (v1 replies) and an old client gets
 * v1 from new nodes. Version 2 appends snapshot and transfer fields.
 *
 * Wire format, little-endian:
 *
 *   STATUS_REQ (4 bytes)      STATUS_REPLY (v1: 52 bytes, v2: 104 bytes)
 *     0 version u32 >= 1        0 version u32  1 or 2
 *                               4 node    u32  >= 1
 *                               8 role    u32  enum net_status_role
 *                              12 leader  u32  0 = unknown
 *                              16 ballot  u64
 *                              24 commit  u64  highest chosen slot known
 *                              32 applied u64  highest slot applied
 *                              40 session u64
 *                              48 flags   u32  bit 0: the replica failed
 *                             -- version 2 --
 *                              52 xfer_state       u32  enum net_status_xfer
 *                              56 snapshot_slot    u64  newest snapshot held, 0 none
 *                              64 log_first        u64  first slot still in the log
 *                              72 xfer_bytes_done  u64  of the running transfer
 *                              80 xfer_bytes_total u64  (0: not known yet)
 *                              88 xfer_rate        u64  bytes/s, recent
 *                              96 blocks_repaired  u64  fetched from peers on read
 *
 * Decoders check the exact length for the version, the version, the role,
 * the transfer state and that no unknown flag is set; anything else is
 * -EBADMSG. Counters are taken as they come (TLS authenticates the bytes). */
#ifndef PAXFS_NET_STATUS_H
#define PAXFS_NET_STATUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "consensus/replica.h"
#include "net/config.h"

#define NET_STATUS_VERSION 2u         /* the newest reply version */
#define NET_STATUS_REQ_BYTES 4u
#define NET_STATUS_REPLY_V1_BYTES 52u
#define NET_STATUS_REPLY_V2_BYTES 104u
#define NET_STATUS_REPLY_BYTES NET_STATUS_REPLY_V2_BYTES /* the largest */
#define NET_STATUS_FLAG_FAILED 1u

enum net_status_role {
    NET_STATUS_FOLLOWER = 0,
    NET_STATUS_CANDIDATE = 1,
    NET_STATUS_LEADER = 2,
};

/* What a replica's snapshot transfer is doing (fs/ reports it). */
enum net_status_xfer {
    NET_STATUS_XFER_IDLE = 0,
    NET_STATUS_XFER_IMAGE = 1,   /* receiving the metadata image */
    NET_STATUS_XFER_BLOCKS = 2,  /* receiving the blocks it lacks */
    NET_STATUS_XFER_INSTALL = 3, /* installing what it received */
};

struct net_status_reply {
    uint32_t version; /* decoded: the reply's version; v2 fields are 0 in a v1 reply */
    uint32_t node;
    enum net_status_role role;
    uint32_t leader;
    uint64_t ballot;
    uint64_t commit;
    uint64_t applied;
    uint64_t session;
    bool failed; /* the replica stopped on an error (it serves nothing) */
    /* version 2 */
    uint64_t snapshot_slot;
    uint64_t log_first;
    enum net_status_xfer xfer_state;
    uint64_t xfer_bytes_done;
    uint64_t xfer_bytes_total;
    uint64_t xfer_rate; /* bytes/s */
    uint64_t blocks_repaired;
};

void net_status_req_encode(uint32_t version, uint8_t out[NET_STATUS_REQ_BYTES]);
/* 0 and *version (>= 1), or -EBADMSG. */
int net_status_req_decode(const uint8_t *p, size_t len, uint32_t *version);
/* Encodes r (r->version is ignored) as a reply of `version` (1 or 2: a v1
 * reply leaves the v2 fields out) and returns its length. */
size_t net_status_reply_encode(const struct net_status_reply *r, uint32_t version,
                               uint8_t out[NET_STATUS_REPLY_BYTES]);
/* 0 and *out filled (out->version is the reply's), or -EBADMSG. */
int net_status_reply_decode(const uint8_t *p, size_t len, struct net_status_reply *out);

/* "follower", "candidate", "leader". */
const char *net_status_role_name(enum net_status_role role);
/* "idle", "receiving-image", "receiving-blocks", "installing". */
const char *net_status_xfer_name(enum net_status_xfer x);
/* The note `paxfs status` prints for a running transfer, e.g.
 * "transfer 123/456 MiB 210 MiB/s" ("?" for a total not known yet); "" when
 * r is idle or a v1 reply. */
void net_status_xfer_note(const struct net_status_reply *r, char *out, size_t outlen);
/* A replica's status (replica_status()) as a reply of node `node`; the
 * transfer fields are 0 (the filesystem fills them, host.h status_extra). */
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

/* Sends node `node` one CLIENT_REQ carrying req (len <= NET_CLIENT_REQ_MAX)
 * and waits for its CLIENT_REPLY, whose payload (up to NET_CLIENT_REPLY_MAX
 * bytes) is appended to *reply; blocks at most about timeout_ms in all. Each
 * call is its own connection. Thread-safe like net_status_query. 0 and
 * *reply appended; -ECONNREFUSED nothing listens there; -EHOSTUNREACH the
 * host does not resolve or cannot be reached; -ECONNRESET the node closed
 * the connection before answering (it serves no requests, refused this one,
 * or stopped); -ETIMEDOUT; -EACCES authentication failed (either side);
 * -EBADMSG a malformed answer; -EMSGSIZE req too large; -EINVAL bad node.
 * *reply is untouched on failure. */
int net_status_client_request(struct net_status_client *c, uint32_t node, uint32_t timeout_ms,
                              const void *req, size_t len, struct buf *reply);
/* net_status_client_request, with a one-line reason in err on failure. */
int net_status_client_request_err(struct net_status_client *c, uint32_t node,
                                  uint32_t timeout_ms, const void *req, size_t len,
                                  struct buf *reply, char *err, size_t errlen);

#endif
