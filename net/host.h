/* host — one replica on the network: a cluster.conf, a node id and a data
 * directory become a running replica (consensus/replica.h) whose transport is
 * the mutual-TLS net (net.h). This is the wiring that `paxfs mount` and the
 * test and benchmark replicas share; it owns no policy of its own.
 *
 *   net thread ──on_msg──▶ replica_receive      replica thread ──send──▶ net_send_msg
 *              ──on_peer(down)──▶ replica_peer_down
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

struct host;

struct host_options {
    const char *config_path; /* DIR/cluster.conf; certificates are read from DIR */
    uint32_t node;
    const char *data_dir;    /* created if missing */
    struct replica_sm sm;
    uint32_t op_timeout_ms;  /* 0: the cluster's op_timeout_s */
};

/* Loads the config, checks the data directory, opens the replica and the
 * transport and starts both. On failure returns a negative errno and writes
 * a one-line reason (what was wrong, what to do) into err. */
int host_open(const struct host_options *o, struct host **out, char *err, size_t errlen);
/* Stops the transport and the replica (WAL synced) and frees. */
void host_close(struct host *h);

struct replica *host_replica(struct host *h);
const struct cluster_config *host_cluster(const struct host *h);

/* Test hook: while isolated, every message to or from this node is dropped,
 * as if its network were cut (a partition the test controls). */
void host_set_isolated(struct host *h, bool isolated);

#endif
