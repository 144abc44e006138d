/* net — a replica's transport: mutual TLS 1.3 between the nodes of one
 * cluster, length-prefixed frames (frame.h), one epoll event loop thread,
 * bounded send queues and reconnection with backoff.
 *
 * Connections. Every node dials every peer for its own outbound traffic and
 * accepts inbound connections for the traffic addressed to it, so each
 * ordered pair (i, j) has its own TCP+TLS connection, dialed by i, on which
 * only i sends frames. There is nothing to "resolve" between simultaneous
 * dials, and a peer's reconnect never disturbs the other direction. Per-peer
 * order is the order of net_send calls, as long as the connection lives; a
 * frame queued or in flight when it breaks is dropped (consensus
 * retransmits), never delivered twice or out of order.
 *
 * Authentication. TLS 1.3 only; both ends present a certificate that must
 * verify against the cluster CA (and nothing else: no system trust store).
 * The certificate's identity URI (pki.h) must name this cluster and:
 *   - on the dialer's side, the node it dialed;
 *   - on the acceptor's side, the node id the dialer claims in its HELLO
 *     frame, the first frame it sends; the acceptor answers with its own
 *     HELLO, and only then does the dialer mark the peer up.
 * Anything else (bad or expired or foreign certificate, none at all, a HELLO
 * that does not match, a handshake that does not finish within
 * handshake_timeout_ms) is refused: the connection is closed before any
 * frame is delivered, a `net refused node=.. peer=.. reason=..` line is
 * logged at WARN (at most 20 a second; the next line says how many were
 * left out), and stats.refused counts it. Host names are not checked: the
 * node identity in the certificate is what is authenticated. At most
 * inbound_max inbound connections are open; when full, the oldest one that
 * has not authenticated yet is evicted, so a flood of idle connections can
 * delay a real peer's handshake but not lock it out.
 *
 *   dialer (i)                                   acceptor (j)
 *   CONNECTING ─tcp─▶ HANDSHAKE ─TLS─▶ HELLO_WAIT ◀─ HANDSHAKE ◀─ accept
 *     sends HELLO(i)  ────────────────────────────▶ checks cert == i
 *     checks HELLO(j) == dialed j ◀──────────────── sends HELLO(j), OPEN
 *   OPEN: peer j up, queue drains                   OPEN: frames delivered
 *
 * Reconnection. A lost or refused outbound connection is retried after a
 * delay that starts at backoff_min_ms and doubles up to backoff_max_ms, each
 * drawn with ±25% jitter; it resets once a connection stayed open for a
 * second. A newer authenticated inbound connection from a peer replaces the
 * older one (the peer has restarted or reconnected).
 *
 * Clients. The cluster's operator client (`paxfs status`, `paxfs fsck`,
 * status.h) dials like a peer but authenticates with the client identity
 * (pki.h) and says HELLO(node 0). It is never a peer: it replaces no one's
 * connection and gets no on_frame/on_msg. It may send two kinds of frames:
 *   - STATUS_REQ (payload bounded to NET_STATUS_REQ_BYTES), answered at once
 *     by one STATUS_REPLY filled by on_status on the loop thread;
 *   - CLIENT_REQ (an opaque payload of at most NET_CLIENT_REQ_MAX bytes),
 *     handed to on_client_req with a handle for the connection; the owner
 *     answers later, from any thread, with net_client_reply, which queues
 *     one CLIENT_REPLY (at most NET_CLIENT_REPLY_MAX bytes). At most
 *     NET_CLIENT_REQS_MAX requests of one client are outstanding.
 * All replies to one client go out in the order they were made. Anything
 * else from a client (another frame type, a bad request, a request of a kind
 * this node does not serve, a fifth outstanding CLIENT_REQ, more than
 * NET_CLIENT_REPLIES_MAX status replies it has not read) closes it as a
 * protocol error. At most NET_CLIENTS_MAX client connections are open (a
 * newer one closes the oldest). A client is closed after client_idle_ms
 * without activity (a request, a reply made, bytes of a reply written), but
 * never while one of its CLIENT_REQs is outstanding. At the inbound limit an
 * open client connection is evicted like an unauthenticated one, so clients
 * can never lock a peer out. A node whose on_status and on_client_req are
 * both NULL refuses clients.
 *
 *   client                      loop thread                 any thread
 *   CLIENT_REQ ──────────────▶ on_client_req(handle) ──▶ (work handed off)
 *   CLIENT_REPLY ◀──────────── queue, wake ◀───────────── net_client_reply
 *
 * A handle is unique for the net's life and never reused, so a late reply
 * to a client that has gone finds nothing (-ENOTCONN) instead of another
 * client's connection.
 *
 * Backpressure. Each peer has a bounded send queue (queue_bytes_max,
 * queue_frames_max): net_send returns -EAGAIN when it is full, -ENOTCONN
 * while the peer is down (nothing is queued for a down peer, and the queue is
 * dropped when its connection breaks), so a slow or dead peer never makes
 * memory grow and never delays traffic to the others. One frame larger than
 * queue_bytes_max is still accepted into an empty queue.
 *
 * Memory. Per connection: a 128 KiB receive buffer, a 16 KiB send staging
 * buffer and OpenSSL's record buffers (about 100 KiB); per peer: its send
 * queue (queue_bytes_max); per authenticated inbound connection: one frame
 * in assembly, at most NET_FRAME_PAYLOAD_MAX and only as much of it as has
 * arrived is touched; per open client: its replies, at most
 * NET_CLIENT_PENDING_BYTES queued plus the one being written.
 *
 * Threading. net_send, net_send_msg, net_client_reply, net_peer_up and
 * net_get_stats are thread-safe. The callbacks run on the event loop thread, one at a time;
 * they must not block for long, may call net_send*, and must not call
 * net_stop/net_free. No callback runs after net_stop returns, and stopping
 * reports no peer down. net_new,
 * net_set_peer_addr, net_start, net_stop and net_free are called from one
 * owner thread, in that order (start and stop at most once).
 *
 * Copies. net_send copies the payload once, into the queued frame; the loop
 * writes large frames to TLS straight from that buffer and coalesces small
 * ones into one TLS record. A received frame of up to 128 KiB is handed to
 * the callback in place in the connection's receive buffer, a larger one in
 * its own buffer that the stream was read into directly. */
#ifndef PAXFS_NET_NET_H
#define PAXFS_NET_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "consensus/px.h"
#include "net/config.h"
#include "net/frame.h"
#include "net/status.h"

#define NET_NODES_MAX PX_NODES_MAX
#define NET_PATH_BYTES 4096
#define NET_CLIENTS_MAX 8           /* open operator client connections */
#define NET_CLIENT_IDLE_MS 10000u   /* a client connection's idle limit (default) */
#define NET_CLIENT_REPLIES_MAX 4    /* status replies queued for a client that does not read */
#define NET_CLIENT_REQS_MAX 4       /* CLIENT_REQs of one client not yet answered */
/* Reply bytes queued for one client before net_client_reply says -EAGAIN:
 * two replies of the largest size, frame headers included. */
#define NET_CLIENT_PENDING_BYTES (2 * ((size_t)NET_FRAME_HEADER_BYTES + NET_CLIENT_REPLY_MAX))

/* A frame of any peer type but HELLO (PX, STATUS_*, BULK) from an
 * authenticated peer. payload is borrowed for the call. */
typedef void (*net_frame_fn)(void *ctx, uint32_t from, uint8_t type,
                             const uint8_t *payload, size_t len);
/* A decoded consensus message from an authenticated peer; m->from is that
 * peer and m->to this node (others are dropped and counted as protocol
 * errors). m and its values are borrowed for the call (px_msg_copy keeps
 * them by reference). */
typedef void (*net_msg_fn)(void *ctx, uint32_t from, const struct px_msg *m);
/* Fills *out (all but node, which net sets) for an operator client's
 * STATUS_REQ; runs on the loop thread and must be quick. 0, or a negative
 * errno to close the client's connection instead. */
typedef int (*net_status_fn)(void *ctx, struct net_status_reply *out);
/* An operator client's CLIENT_REQ; runs on the loop thread and must be
 * quick (hand the work to another thread). client is the connection's
 * handle for net_client_reply; payload is borrowed for the call. */
typedef void (*net_client_req_fn)(void *ctx, uint64_t client, const uint8_t *payload,
                                  size_t len);
/* News of the connections with a peer. Called on the loop's thread; a
 * connection's end is told before this side of it closes (so a listener
 * hears it before the peer can). */
enum net_peer_event {
    NET_PEER_UP,        /* our outbound connection is up (authenticated, HELLOs exchanged) */
    NET_PEER_LOST,      /* a connection with the peer (either way) ended by this node:
                         * an error it found, a timeout, a newer connection */
    NET_PEER_ENDED,     /* ... ended by the peer: its process closed it, or died */
};
typedef void (*net_peer_fn)(void *ctx, uint32_t peer, enum net_peer_event ev);

struct net_config {
    uint32_t id;      /* this node, 1..n_nodes */
    uint32_t n_nodes; /* 1..NET_NODES_MAX */
    /* addrs[id] is where to listen (port 0: any free port, see net_port);
     * addrs[k] where to dial peer k (port 0: set later by net_set_peer_addr). */
    struct config_node addrs[NET_NODES_MAX + 1];
    uint8_t cluster_id[NET_CLUSTER_ID_BYTES];
    char ca_path[NET_PATH_BYTES];
    char cert_path[NET_PATH_BYTES];
    char key_path[NET_PATH_BYTES];
    size_t queue_bytes_max;        /* per peer, default 64 MiB */
    uint32_t queue_frames_max;     /* per peer, default 65536 */
    uint32_t backoff_min_ms;       /* default 10 */
    uint32_t backoff_max_ms;       /* default 2000 */
    uint32_t handshake_timeout_ms; /* connect + TLS + HELLOs, default 5000 */
    uint32_t inbound_max;          /* open inbound connections, default 64 */
    uint32_t client_idle_ms;       /* default NET_CLIENT_IDLE_MS */
    net_frame_fn on_frame;         /* non-PX frames; PX frames too if on_msg is NULL */
    net_msg_fn on_msg;             /* PX frames, decoded; may be NULL */
    net_peer_fn on_peer;           /* may be NULL */
    net_status_fn on_status;       /* NULL: STATUS_REQ is a protocol error */
    net_client_req_fn on_client_req; /* NULL: CLIENT_REQ is a protocol error;
                                      * both NULL: operator clients are refused */
    void *ctx;
};

struct net_stats {
    uint64_t frames_sent, bytes_sent;         /* payload bytes written to TLS */
    uint64_t frames_received, bytes_received; /* payload bytes delivered */
    uint64_t connects;        /* outbound connections that reached OPEN */
    uint64_t accepts;         /* inbound connections that reached OPEN */
    uint64_t disconnects;     /* OPEN connections lost, either direction */
    uint64_t refused;         /* connections refused by authentication */
    uint64_t protocol_errors; /* authenticated connections closed for bad frames */
    uint64_t dropped;         /* frames dropped from a queue when its connection broke */
    uint64_t clients;         /* operator client connections authenticated */
    uint64_t status_replies;  /* STATUS_REPLY frames queued for clients */
    uint64_t client_requests; /* CLIENT_REQ frames handed to on_client_req */
    uint64_t client_replies;  /* CLIENT_REPLY frames queued by net_client_reply */
    uint64_t clients_closed;  /* open client connections closed, for any reason */
};

/* Defaults for everything but id, n_nodes, addrs, cluster id, paths and
 * callbacks. */
void net_config_defaults(struct net_config *c);
/* Defaults, plus node `id`'s view of cluster cc: addresses, cluster id, and
 * the files dir/ca.crt, dir/node<id>.crt, dir/node<id>.key. -EINVAL if id
 * is not a node of cc or a path does not fit. */
int net_config_from_cluster(struct net_config *c, const struct cluster_config *cc,
                            const char *dir, uint32_t id);

struct net;

/* Loads and checks the certificates (this node's certificate must verify
 * against the CA and name (id, cluster_id)), binds and listens. On 0, *out
 * is a stopped transport. -EINVAL bad config, -EACCES bad certificate or
 * key, -errno from the files or the socket; the reason is logged. */
int net_new(const struct net_config *cfg, struct net **out);
/* The port this node listens on (the real one when addrs[id].port was 0). */
uint16_t net_port(const struct net *n);
/* Sets peer's address, before net_start. -EINVAL bad peer, -EHOSTUNREACH
 * if the host does not resolve. */
int net_set_peer_addr(struct net *n, uint32_t peer, const char *host, uint16_t port);
/* Starts the event loop thread. -EDESTADDRREQ if a peer has no address. */
int net_start(struct net *n);
/* Stops the loop thread and closes every connection. Idempotent. */
void net_stop(struct net *n);
/* Stops if needed and frees. NULL is fine. */
void net_free(struct net *n);

/* Queues one frame of `type` (PX, STATUS_REQ, STATUS_REPLY or BULK) with a
 * copy of payload for peer `to`. 0 queued; -ENOTCONN peer down (dropped);
 * -EAGAIN queue full; -EMSGSIZE len > NET_FRAME_PAYLOAD_MAX; -EINVAL bad peer
 * or type (HELLO, or a client frame). */
int net_send_frame(struct net *n, uint32_t to, uint8_t type, const void *payload,
                   size_t len);
/* net_send_frame without the copy: frame holds NET_FRAME_HEADER_BYTES
 * (reserved; the header is written here) and then the payload. On 0 the
 * net took the bytes and frame is left empty; on an error (as
 * net_send_frame) the caller still owns them and may try again. */
int net_send_frame_buf(struct net *n, uint32_t to, uint8_t type, struct buf *frame);
/* net_send_frame(n, to, NET_FRAME_PX, payload, len). */
int net_send(struct net *n, uint32_t to, const void *payload, size_t len);
/* Encodes m (px_msg_encode) straight into a frame for m->to: the encoding is
 * the one copy. Errors as net_send, or -EINVAL if m does not encode. */
int net_send_msg(struct net *n, const struct px_msg *m);
/* net_send_msg that queues m without waking the loop: net_flush does, once
 * for all the messages deferred since the last flush. A sender of several
 * messages in a row (the replica thread: one batch to every peer) costs the
 * loop one wakeup instead of one per message, which it would otherwise pay
 * whenever the loop, running on another core, drains the first wake before
 * the second message is queued. Until the flush, the frames may wait. */
int net_send_msg_deferred(struct net *n, const struct px_msg *m);
void net_flush(struct net *n);

/* Answers one outstanding CLIENT_REQ of client connection `client` (the
 * handle on_client_req got) with a CLIENT_REPLY carrying a copy of payload.
 * Thread-safe, from any thread, also from on_client_req itself; replies go
 * out in call order. 0 queued; -ENOTCONN the client is gone (closed,
 * evicted, or the net stopped); -EINVAL it has no request left to answer;
 * -EMSGSIZE len > NET_CLIENT_REPLY_MAX; -EAGAIN NET_CLIENT_PENDING_BYTES of
 * replies are still unsent to it (it reads slowly): retry later, the request
 * stays outstanding. Not after net_free. */
int net_client_reply(struct net *n, uint64_t client, const void *payload, size_t len);

bool net_peer_up(struct net *n, uint32_t peer);
void net_get_stats(struct net *n, struct net_stats *out);

#endif
