/* host — one replica on the network: a cluster.conf, a node id and a data
 * directory become a running replica (consensus/replica.h) whose transport is
 * the mutual-TLS net (net.h). This is the wiring that `paxfs mount` and the
 * test and benchmark replicas share; it owns no policy of its own.
 *
 *   net thread ──on_msg──▶ replica_receive      replica thread ──send──▶ net_send_msg
 *              ──on_peer(lost)──▶ replica_peer_lost
 *              ──on_frame(BULK)──▶ o->on_peer_frame  (fs: snapshot and block transfer)
 *              ──on_client_req──▶ o->on_client_req   (fs: `paxfs fsck` requests)
 *              ──on_status──▶ replica_status, then o->status_extra (fs: v2 fields)
 *
 * The filesystem's callbacks run on the net thread and must be quick; they
 * may be called as soon as host_open starts the transport, and never after
 * host_close stopped it. Their answers go out through host_net (net_send_frame
 * with NET_FRAME_BULK, net_client_reply), which must not be used once
 * host_close has begun.
 *
 * Data directory layout: DATADIR/wal/ (the WAL), DATADIR/CLUSTER holding the
 * cluster id in hex, written at first start and checked at every start so
 * that a data directory of another cluster is refused, never mixed. */
#ifndef PAXFS_NET_HOST_H
#define PAXFS_NET_HOST_H

#include <stdbool.h>
#include <stddef.h>

#include "consensus/replica.h"
#include "net/config.h"
#include "net/net.h"

struct host;

struct host_options {
    const char *config_path; /* DIR/cluster.conf; certificates are read from DIR */
    uint32_t node;
    const char *data_dir;    /* created if missing */
    struct replica_sm sm;
    uint32_t op_timeout_ms;  /* 0: the cluster's op_timeout_s */
    /* Snapshots (replica.h; 0: its defaults), taken into DATADIR/snap when
     * sm.snapshot_begin is set. */
    uint64_t snapshot_every_slots;
    uint64_t snapshot_every_bytes;
    uint64_t log_slack_slots;
    /* Optional (NULL: as without them), called with ctx on the net thread: */
    /* a peer's NET_FRAME_BULK frame (payload borrowed for the call) */
    void (*on_peer_frame)(void *ctx, uint32_t from, uint8_t type, const uint8_t *payload,
                          size_t len);
    /* an operator client's CLIENT_REQ; answer with net_client_reply(host_net(h), client, ..) */
    void (*on_client_req)(void *ctx, uint64_t client, const uint8_t *payload, size_t len);
    /* fills the status reply's version 2 fields (snapshot and transfer) after
     * the replica's fields are in */
    void (*status_extra)(void *ctx, struct net_status_reply *out);
    void *ctx;
};

/* Loads the config, checks the data directory, opens the replica and the
 * transport and starts both. On failure returns a negative errno and writes
 * a one-line reason (what was wrong, what to do) into err. */
int host_open(const struct host_options *o, struct host **out, char *err, size_t errlen);
/* Stops the transport and the replica (WAL synced) and frees. */
void host_close(struct host *h);

struct replica *host_replica(struct host *h);
/* The transport, for net_send_frame(.., NET_FRAME_BULK, ..) and
 * net_client_reply. */
struct net *host_net(struct host *h);
/* net_send_frame_buf, except that while the host is isolated the frame is
 * dropped (-ENOTCONN), as consensus messages are. */
int host_send_frame(struct host *h, uint32_t to, uint8_t type, struct buf *frame);
const struct cluster_config *host_cluster(const struct host *h);

/* Test hook: while isolated, every message to or from this node is dropped,
 * as if its network were cut (a partition the test controls): consensus
 * messages, and BULK frames received or sent with host_send_frame. */
void host_set_isolated(struct host *h, bool isolated);

#endif
