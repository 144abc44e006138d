/* host — a replica on the network; see host.h. */
#include "net/host.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/log.h"
#include "net/net.h"

struct host {
    struct host_options opts; /* for the callbacks and their ctx (paths not kept) */
    struct cluster_config cluster;
    struct net *net;
    struct replica *replica;
    atomic_bool isolated;
};

static int send_msg(void *ctx, const struct px_msg *m)
{
    struct host *h = ctx;
    if (atomic_load(&h->isolated))
        return -ENOTCONN;
    return net_send_msg_deferred(h->net, m);
}

static void flush_msgs(void *ctx)
{
    struct host *h = ctx;
    net_flush(h->net);
}

static void on_msg(void *ctx, uint32_t from, const struct px_msg *m)
{
    struct host *h = ctx;
    (void)from;
    if (!atomic_load(&h->isolated))
        replica_receive(h->replica, m);
}

static void on_peer(void *ctx, uint32_t peer, enum net_peer_event ev)
{
    struct host *h = ctx;
    if (ev != NET_PEER_UP)
        replica_peer_lost(h->replica, peer, ev == NET_PEER_ENDED);
}

/* An operator client's status query (net thread): replica_status is cheap
 * and thread-safe. net starts after the replica, so h->replica is set. */
static int on_status(void *ctx, struct net_status_reply *out)
{
    struct host *h = ctx;
    struct replica_status st;
    replica_status(h->replica, &st);
    net_status_from_replica(&st, 0, out);
    if (h->opts.status_extra)
        h->opts.status_extra(h->opts.ctx, out);
    return 0;
}

/* Non-consensus frames of peers: BULK goes to the filesystem, the rest
 * (nothing sends it today) is dropped. */
static void on_frame(void *ctx, uint32_t from, uint8_t type, const uint8_t *payload, size_t len)
{
    struct host *h = ctx;
    if (type == NET_FRAME_BULK && h->opts.on_peer_frame && !atomic_load(&h->isolated))
        h->opts.on_peer_frame(h->opts.ctx, from, type, payload, len);
}

static void on_client_req(void *ctx, uint64_t client, const uint8_t *payload, size_t len)
{
    struct host *h = ctx;
    h->opts.on_client_req(h->opts.ctx, client, payload, len);
}

/* DATADIR/CLUSTER names the cluster the directory belongs to (line 1, the
 * id in hex) and the node that owns it (line 2, "node K of N"; `paxfs fsck
 * --data` reads the cluster size from it). */
static int check_cluster_file(const char *data_dir, const char *id_hex, uint32_t node,
                              uint32_t n_nodes, char *err, size_t errlen)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/CLUSTER", data_dir);
    FILE *f = fopen(path, "r");
    if (f) {
        char have[64] = "";
        unsigned have_node = 0, have_n = 0;
        if (!fgets(have, sizeof have, f))
            have[0] = 0;
        if (fscanf(f, "node %u of %u", &have_node, &have_n) != 2)
            have_node = 0; /* written before the line existed */
        fclose(f);
        have[strcspn(have, "\n")] = 0;
        if (strcmp(have, id_hex) != 0) {
            snprintf(err, errlen, "data directory %s belongs to cluster %s, not %s: "
                     "use an empty directory for this cluster", data_dir, have, id_hex);
            return -EINVAL;
        }
        if (have_node && have_node != node) {
            snprintf(err, errlen, "data directory %s belongs to node %u, not node %u: use "
                     "that node's data directory, or an empty one", data_dir, have_node, node);
            return -EINVAL;
        }
        (void)n_nodes;
        return 0;
    }
    if (errno != ENOENT) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return -errno;
    }
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s/CLUSTER.tmp", data_dir);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int rc = 0;
    if (fd < 0 || dprintf(fd, "%s\nnode %u of %u\n", id_hex, node, n_nodes) < 0 ||
        fsync(fd) != 0 || rename(tmp, path) != 0)
        rc = -errno;
    if (fd >= 0)
        close(fd);
    if (rc == 0) {
        int dfd = open(data_dir, O_RDONLY | O_DIRECTORY);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    } else {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(-rc));
    }
    return rc;
}

int host_open(const struct host_options *o, struct host **out, char *err, size_t errlen)
{
    struct host *h = calloc(1, sizeof *h);
    if (!h)
        return -ENOMEM;
    char cerr[256];
    h->opts = *o;
    h->opts.config_path = h->opts.data_dir = NULL; /* borrowed for host_open only */
    int rc = config_load(o->config_path, &h->cluster, cerr, sizeof cerr);
    if (rc != 0) {
        snprintf(err, errlen, "%s", cerr);
        goto fail;
    }
    if (o->node < 1 || o->node > h->cluster.n_nodes) {
        snprintf(err, errlen, "node %u is not in %s (it has nodes 1..%u)", o->node,
                 o->config_path, h->cluster.n_nodes);
        rc = -EINVAL;
        goto fail;
    }
    if (mkdir(o->data_dir, 0700) != 0 && errno != EEXIST) {
        rc = -errno;
        snprintf(err, errlen, "cannot create data directory %s: %s", o->data_dir, strerror(errno));
        goto fail;
    }
    char id_hex[33];
    config_cluster_id_hex(h->cluster.cluster_id, id_hex);
    rc = check_cluster_file(o->data_dir, id_hex, o->node, h->cluster.n_nodes, err, errlen);
    if (rc != 0)
        goto fail;

    char cfgcopy[PATH_MAX];
    snprintf(cfgcopy, sizeof cfgcopy, "%s", o->config_path);
    const char *dir = dirname(cfgcopy);
    struct net_config nc;
    rc = net_config_from_cluster(&nc, &h->cluster, dir, o->node);
    if (rc != 0) {
        snprintf(err, errlen, "cannot use the certificates in %s", dir);
        goto fail;
    }
    nc.on_msg = on_msg;
    nc.on_peer = on_peer;
    nc.on_status = on_status;
    nc.on_frame = on_frame;
    nc.on_client_req = o->on_client_req ? on_client_req : NULL;
    nc.ctx = h;
    rc = net_new(&nc, &h->net);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the transport for node %u (%s): check the "
                 "certificates in %s and that port %u is free", o->node, strerror(-rc), dir,
                 h->cluster.nodes[o->node].port);
        goto fail;
    }

    struct replica_config rcfg;
    replica_config_defaults(&rcfg);
    rcfg.id = o->node;
    rcfg.n_nodes = h->cluster.n_nodes;
    snprintf(rcfg.wal_dir, sizeof rcfg.wal_dir, "%s/wal", o->data_dir);
    snprintf(rcfg.snap_dir, sizeof rcfg.snap_dir, "%s/snap", o->data_dir);
    if (o->snapshot_every_slots)
        rcfg.snapshot_every_slots = o->snapshot_every_slots;
    if (o->snapshot_every_bytes)
        rcfg.snapshot_every_bytes = o->snapshot_every_bytes;
    if (o->log_slack_slots)
        rcfg.log_slack_slots = o->log_slack_slots;
    rcfg.tick_ms = h->cluster.tick_ms;
    rcfg.ticks_election = h->cluster.election_ticks;
    rcfg.ticks_heartbeat = h->cluster.heartbeat_ticks;
    rcfg.op_timeout_ms = o->op_timeout_ms ? o->op_timeout_ms : h->cluster.op_timeout_s * 1000;
    rcfg.sm = o->sm;
    rcfg.transport = (struct replica_transport){h, send_msg, flush_msgs};
    rc = replica_open(&rcfg, &h->replica);
    if (rc != 0) {
        snprintf(err, errlen, rc == -EBADMSG
                 ? "the write-ahead log or the snapshots in %s are damaged: empty the data "
                   "directory to rebuild this replica from its peers"
                 : "cannot open the write-ahead log in %s/wal: %s", o->data_dir, strerror(-rc));
        goto fail;
    }
    rc = replica_start(h->replica);
    if (rc == 0)
        rc = net_start(h->net);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start node %u: %s", o->node, strerror(-rc));
        goto fail;
    }
    *out = h;
    return 0;
fail:
    host_close(h);
    return rc;
}

void host_close(struct host *h)
{
    if (!h)
        return;
    /* The replica thread stops sending first; then the transport stops, so
     * no callback reaches the replica once it is freed. */
    if (h->replica)
        replica_stop(h->replica);
    net_free(h->net);
    replica_close(h->replica);
    free(h);
}

struct replica *host_replica(struct host *h) { return h->replica; }
struct net *host_net(struct host *h) { return h->net; }

int host_send_frame(struct host *h, uint32_t to, uint8_t type, struct buf *frame)
{
    if (atomic_load(&h->isolated))
        return -ENOTCONN;
    return net_send_frame_buf(h->net, to, type, frame);
}
const struct cluster_config *host_cluster(const struct host *h) { return &h->cluster; }
void host_set_isolated(struct host *h, bool isolated) { atomic_store(&h->isolated, isolated); }
