/* The transport; the protocol, threading and guarantees are in net.h.
 *
 * Ownership: the event loop thread owns every connection, the epoll set and
 * every peer field marked "loop" below. Senders touch only a peer's queue,
 * under the peer's mutex. A connection closed during a loop round is unlinked
 * at once and freed at the end of the round, so an epoll event later in the
 * same batch never points at freed memory (it sees state C_CLOSED).
 *
 * Connection states (net.h has the picture with both ends):
 *
 *   C_CONNECTING ─▶ C_HANDSHAKE ─▶ C_HELLO_WAIT ─▶ C_OPEN
 *   (dialer only)        │               │            │
 *                        └───────────────┴────────────┴──▶ C_CLOSED
 *
 * Every state before C_OPEN has a deadline (handshake_timeout_ms); an open
 * operator client connection has one too (client_idle_ms after its last
 * activity, rechecked lazily when it passes). A client connection is
 * inbound, never a peer's `in`. It owns one client slot (struct
 * client_slot, in the net, guarded by clients_mu) while it is open: the
 * slot's queue carries every reply to it, status replies queued by the loop
 * and CLIENT_REPLYs queued by net_client_reply from any thread, so they go
 * out in the order they were made. A slot's handle (id) is never reused, so
 * a reply can only ever reach the connection that asked. Work per
 * connection per round is bounded (ROUND_BYTES, ROUND_FRAMES); a connection
 * that still has work sets `more` and the loop comes back to it without
 * sleeping, so one busy peer cannot starve the others. */
#include "net/net.h"

#include "base/assert.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/prng.h"
#include "consensus/px_msg.h"
#include "net/pki.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define WBUF_BYTES (16u << 10)   /* small frames coalesce here into one TLS record */
#define ROUND_BYTES (4u << 20)   /* per connection per loop round, each way */
#define ROUND_FRAMES 1024u
#define ACCEPTS_PER_ROUND 32
#define EVENTS_MAX 64
#define INBOUND_LIMIT 256u       /* bound on cfg.inbound_max */
#define STABLE_NS 1000000000ull  /* an outbound connection open this long resets backoff */
#define LISTEN_PAUSE_NS 100000000ull /* after EMFILE: let descriptors free up */
#define ADDR_TEXT_BYTES (CONFIG_HOST_BYTES + 16)
#define REFUSAL_LOGS_PER_S 20

/* A frame waiting in a peer's send queue: header and payload, contiguous. */
struct out_frame {
    struct out_frame *next;
    uint8_t *data;
    size_t len;
    uint8_t *own; /* a separate allocation that data points into, or NULL */
    uint8_t inline_data[];
};

/* Frames waiting to be written to one connection. */
struct out_queue {
    struct out_frame *head, *tail;
    size_t bytes;
    uint32_t frames;
};

/* An open operator client's replies and request count; every field is
 * guarded by net.clients_mu. */
struct client_slot {
    uint64_t id;            /* the client's handle; 0: the slot is free */
    struct conn *conn;      /* set and cleared by the loop */
    struct out_queue q;     /* replies not yet taken by the loop */
    size_t inflight;        /* bytes of a reply the loop writes from its own buffer */
    uint32_t outstanding;   /* CLIENT_REQs not answered yet */
    uint32_t status_queued; /* STATUS_REPLY frames in q */
    bool kick;              /* the loop has been woken for q */
};

enum conn_state { C_CONNECTING, C_HANDSHAKE, C_HELLO_WAIT, C_OPEN, C_CLOSED };

struct conn {
    struct net *net;
    struct conn *next_dead;
    int fd;
    SSL *ssl;
    bool outbound;
    bool client;          /* the operator client (net.h, Clients), never a peer */
    bool ssl_failed;      /* fatal TLS error: SSL_shutdown must not be called */
    bool more;            /* work left after this round's budget */
    bool hs_wants_write;  /* handshake waits for POLLOUT */
    bool rd_wants_write;  /* SSL_read returned WANT_WRITE */
    bool wr_wants_read;   /* SSL_write returned WANT_READ */
    bool wr_blocked;      /* SSL_write returned WANT_WRITE */
    bool ended_by_peer;   /* it failed because the peer closed it or died */
    enum conn_state state;
    uint32_t peer;        /* dialer: the node dialed; acceptor: from the certificate */
    uint32_t events;      /* registered epoll interest */
    uint64_t deadline_ns; /* 0 once OPEN (but a client's idle deadline) */
    uint64_t opened_ns;
    uint64_t active_ns;   /* a client's last request, reply or write progress */
    struct client_slot *slot; /* an open client's */
    char remote[ADDR_TEXT_BYTES];
    struct net_frame_rx rx;
    uint8_t *wbuf;        /* WBUF_BYTES staging */
    size_t woff, wlen;
    struct out_frame *cur; /* a large frame written from its own buffer */
    size_t cur_off;
};

struct peer {
    uint32_t id;
    /* guarded by mu */
    pthread_mutex_t mu;
    struct out_queue q;
    bool up;
    bool kick; /* the loop has been woken for this queue */
    /* loop */
    bool have_addr;
    struct sockaddr_storage addr;
    socklen_t addr_len;
    char addr_text[ADDR_TEXT_BYTES];
    struct conn *out;
    struct conn *in;
    uint64_t dial_at_ns;
    uint32_t backoff_ms;
    bool logged_down; /* one INFO line per outage, then DEBUG */
};

struct net {
    struct net_config cfg;
    SSL_CTX *ssl_ctx;
    int ep, listen_fd, wake_fd;
    atomic_bool wake_pending; /* wake_fd was written since the loop drained it */
    atomic_bool wake_owed;    /* a deferred send kicked a queue: net_flush wakes */
    uint16_t port;
    pthread_t thread;
    bool started, joined;
    atomic_bool stopping;
    struct peer peers[NET_NODES_MAX + 1];
    struct conn *inbound[INBOUND_LIMIT];
    uint32_t n_inbound;
    struct conn *dead;
    bool any_more;
    uint64_t refusal_window_ns; /* log_refusal's rate limit */
    uint32_t refusal_logs;
    uint64_t refusals_unlogged;
    bool listen_paused;
    uint64_t listen_resume_ns;
    struct prng prng;
    pthread_mutex_t clients_mu;
    struct client_slot clients[NET_CLIENTS_MAX];
    uint64_t next_client_id; /* guarded by clients_mu; handles start at 1 */
    struct {
        atomic_uint_fast64_t frames_sent, bytes_sent, frames_received, bytes_received;
        atomic_uint_fast64_t connects, accepts, disconnects, refused, protocol_errors, dropped;
        atomic_uint_fast64_t clients, status_replies, client_requests, client_replies;
        atomic_uint_fast64_t clients_closed;
    } st;
};

#define STAT_ADD(n, field, v) atomic_fetch_add_explicit(&(n)->st.field, (v), memory_order_relaxed)

static int conn_read(struct conn *c);
static int conn_flush(struct conn *c);

/* ---- configuration -------------------------------------------------------- */

void net_config_defaults(struct net_config *c)
{
    memset(c, 0, sizeof *c);
    c->queue_bytes_max = (size_t)64 << 20;
    c->queue_frames_max = 65536;
    c->backoff_min_ms = 10;
    c->backoff_max_ms = 2000;
    c->handshake_timeout_ms = 5000;
    c->inbound_max = 64;
    c->client_idle_ms = NET_CLIENT_IDLE_MS;
}

int net_config_from_cluster(struct net_config *c, const struct cluster_config *cc,
                            const char *dir, uint32_t id)
{
    if (id < 1 || id > cc->n_nodes || cc->n_nodes > NET_NODES_MAX)
        return -EINVAL;
    struct net_config nc;
    net_config_defaults(&nc);
    nc.id = id;
    nc.n_nodes = cc->n_nodes;
    for (uint32_t k = 1; k <= cc->n_nodes; k++)
        nc.addrs[k] = cc->nodes[k];
    memcpy(nc.cluster_id, cc->cluster_id, sizeof nc.cluster_id);
    int a = snprintf(nc.ca_path, sizeof nc.ca_path, "%s/ca.crt", dir);
    int b = snprintf(nc.cert_path, sizeof nc.cert_path, "%s/node%u.crt", dir, id);
    int k = snprintf(nc.key_path, sizeof nc.key_path, "%s/node%u.key", dir, id);
    if (a < 0 || b < 0 || k < 0 || (size_t)a >= sizeof nc.ca_path ||
        (size_t)b >= sizeof nc.cert_path || (size_t)k >= sizeof nc.key_path)
        return -EINVAL;
    *c = nc;
    return 0;
}

/* ---- small helpers -------------------------------------------------------- */

static uint64_t ms_to_ns(uint64_t ms) { return ms * 1000000ull; }

static void sockaddr_text(const struct sockaddr *sa, char *out, size_t outlen)
{
    char host[INET6_ADDRSTRLEN] = "?";
    uint16_t port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        port = ntohs(in->sin_port);
        snprintf(out, outlen, "%s:%u", host, port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        port = ntohs(in6->sin6_port);
        snprintf(out, outlen, "[%s]:%u", host, port);
    } else {
        snprintf(out, outlen, "?");
    }
}

static int resolve(const char *host, uint16_t port, bool passive,
                   struct sockaddr_storage *out, socklen_t *out_len)
{
    char serv[8];
    snprintf(serv, sizeof serv, "%u", port);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
    int rc = getaddrinfo(host, serv, &hints, &res);
    if (rc != 0 || !res)
        return -EHOSTUNREACH;
    ASSERT(res->ai_addrlen <= sizeof *out);
    memcpy(out, res->ai_addr, res->ai_addrlen);
    *out_len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* Latency matters more than segment count for consensus; keepalive and a
 * user timeout make a silently dead peer visible within seconds instead of
 * the kernel's default of many minutes. */
static void tune_socket(int fd)
{
    int one = 1, idle = 5, intvl = 2, cnt = 3;
    unsigned user_timeout_ms = 15000;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof user_timeout_ms);
}

static void out_frame_free(struct out_frame *f)
{
    if (!f)
        return;
    free(f->own);
    free(f);
}

/* Drops a queue; the caller holds its mutex. Returns the frames dropped. */
static uint32_t queue_drop_locked(struct out_queue *q)
{
    uint32_t dropped = q->frames;
    struct out_frame *f = q->head;
    for (uint32_t i = 0; f && i <= dropped; i++) {
        struct out_frame *next = f->next;
        out_frame_free(f);
        f = next;
    }
    q->head = q->tail = NULL;
    q->bytes = 0;
    q->frames = 0;
    return dropped;
}

/* Appends f; the caller holds the queue's mutex. */
static void queue_append_locked(struct out_queue *q, struct out_frame *f)
{
    f->next = NULL;
    if (q->tail)
        q->tail->next = f;
    else
        q->head = f;
    q->tail = f;
    q->bytes += f->len;
    q->frames++;
}

/* A frame of `type` holding a copy of payload, header encoded. */
static struct out_frame *out_frame_new(uint8_t type, const void *payload, size_t len)
{
    struct out_frame *f = malloc(sizeof *f + NET_FRAME_HEADER_BYTES + len);
    ASSERT(f != NULL);
    f->next = NULL;
    f->data = f->inline_data;
    f->len = NET_FRAME_HEADER_BYTES + len;
    f->own = NULL;
    net_frame_header_encode(f->data, type, (uint32_t)len);
    if (len)
        memcpy(f->data + NET_FRAME_HEADER_BYTES, payload, len);
    return f;
}

/* ---- connection lifecycle ------------------------------------------------- */

static void conn_set_interest(struct conn *c, uint32_t events)
{
    if (c->events == events || c->fd < 0)
        return;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    int rc = epoll_ctl(c->net->ep, EPOLL_CTL_MOD, c->fd, &ev);
    ASSERT(rc == 0);
    c->events = events;
}

static void conn_update_interest(struct conn *c)
{
    uint32_t ev;
    if (c->state == C_CONNECTING)
        ev = EPOLLOUT;
    else if (c->state == C_HANDSHAKE)
        ev = EPOLLIN | (c->hs_wants_write ? EPOLLOUT : 0);
    else
        ev = EPOLLIN | EPOLLRDHUP | (c->wr_blocked || c->rd_wants_write ? EPOLLOUT : 0);
    conn_set_interest(c, ev);
}

static struct conn *conn_new(struct net *n, int fd, bool outbound, uint32_t peer,
                             const char *remote, uint32_t events)
{
    struct conn *c = calloc(1, sizeof *c);
    ASSERT(c != NULL);
    c->net = n;
    c->fd = fd;
    c->outbound = outbound;
    c->peer = peer;
    c->state = outbound ? C_CONNECTING : C_HANDSHAKE;
    c->deadline_ns = clock_now_ns() + ms_to_ns(n->cfg.handshake_timeout_ms);
    snprintf(c->remote, sizeof c->remote, "%s", remote);
    net_frame_rx_init(&c->rx);
    net_frame_rx_set_payload_max(&c->rx, NET_HELLO_BYTES);
    c->wbuf = malloc(WBUF_BYTES);
    ASSERT(c->wbuf != NULL);
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(n->ep, EPOLL_CTL_ADD, fd, &ev) != 0) { /* ENOMEM, ENOSPC: out of watches */
        LOG_W("net epoll_ctl failed node=%u peer=%s reason=\"%s\"", n->cfg.id, remote,
              strerror(errno));
        net_frame_rx_deinit(&c->rx);
        free(c->wbuf);
        free(c);
        return NULL;
    }
    c->events = events;
    return c;
}

static void conn_free(struct conn *c)
{
    SSL_free(c->ssl);
    net_frame_rx_deinit(&c->rx);
    free(c->wbuf);
    out_frame_free(c->cur);
    free(c);
}

static void inbound_remove(struct net *n, struct conn *c)
{
    for (uint32_t i = 0; i < n->n_inbound; i++)
        if (n->inbound[i] == c) {
            n->inbound[i] = n->inbound[--n->n_inbound];
            return;
        }
}

/* Frees c's client slot: its queued replies are dropped and its handle is
 * gone for good, so a late net_client_reply finds nothing (-ENOTCONN). */
static void client_slot_release(struct conn *c)
{
    struct net *n = c->net;
    struct client_slot *s = c->slot;
    pthread_mutex_lock(&n->clients_mu);
    queue_drop_locked(&s->q);
    s->id = 0;
    s->conn = NULL;
    s->inflight = 0;
    s->outstanding = 0;
    s->status_queued = 0;
    s->kick = false;
    pthread_mutex_unlock(&n->clients_mu);
    c->slot = NULL;
    STAT_ADD(n, clients_closed, 1);
}

static void schedule_dial(struct net *n, struct peer *p)
{
    uint64_t ms = p->backoff_ms;
    /* ±25% jitter, so peers that lost each other at once do not redial in step */
    uint64_t jittered = ms * 3 / 4 + prng_below(&n->prng, ms / 2 + 1);
    p->dial_at_ns = clock_now_ns() + ms_to_ns(jittered);
    p->backoff_ms = (uint32_t)MIN((uint64_t)p->backoff_ms * 2, (uint64_t)n->cfg.backoff_max_ms);
}

/* Closes c now and frees it at the end of the round. `quiet` skips the
 * peer-down callback (shutdown). */
static void conn_close(struct conn *c, bool quiet)
{
    struct net *n = c->net;
    if (c->state == C_CLOSED)
        return;
    bool was_open = c->state == C_OPEN;
    struct peer *p = c->peer ? &n->peers[c->peer] : NULL;
    if (c->outbound) {
        ASSERT(p && p->out == c);
        p->out = NULL;
        if (was_open) {
            pthread_mutex_lock(&p->mu);
            p->up = false;
            uint32_t dropped = queue_drop_locked(&p->q);
            pthread_mutex_unlock(&p->mu);
            STAT_ADD(n, dropped, dropped + (c->cur ? 1 : 0));
            STAT_ADD(n, disconnects, 1);
            if (clock_now_ns() - c->opened_ns >= STABLE_NS)
                p->backoff_ms = n->cfg.backoff_min_ms;
            LOG_I("net peer down node=%u peer=%u addr=%s dropped=%u", n->cfg.id, c->peer,
                  c->remote, dropped);
            p->logged_down = true;
        }
        if (!quiet)
            schedule_dial(n, p);
    } else {
        inbound_remove(n, c);
        if (p && p->in == c)
            p->in = NULL;
        if (was_open && !c->client)
            STAT_ADD(n, disconnects, 1);
    }
    if (c->slot)
        client_slot_release(c);
    /* Before this side closes, so the listener hears of it before the peer
     * can (px_peer_lost relies on that). */
    if (was_open && p && !c->client && !quiet && n->cfg.on_peer)
        n->cfg.on_peer(n->cfg.ctx, c->peer, c->ended_by_peer ? NET_PEER_ENDED : NET_PEER_LOST);
    if (c->ssl && !c->ssl_failed && SSL_is_init_finished(c->ssl)) {
        ERR_clear_error();
        SSL_shutdown(c->ssl); /* best effort close_notify; never waits */
    }
    ERR_clear_error();
    epoll_ctl(n->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->state = C_CLOSED;
    c->next_dead = n->dead;
    n->dead = c;
}

/* One WARN line per refusal, at most REFUSAL_LOGS_PER_S a second: anyone
 * who can reach the port can cause refusals, and must not be able to flood
 * the log. What was left out is counted in the next line. */
static void log_refusal(struct net *n, const char *remote, const char *dir, uint32_t claimed,
                        const char *reason)
{
    uint64_t now = clock_now_ns();
    if (now - n->refusal_window_ns >= 1000000000ull) {
        n->refusal_window_ns = now;
        n->refusal_logs = 0;
    }
    if (n->refusal_logs >= REFUSAL_LOGS_PER_S) {
        n->refusals_unlogged++;
        return;
    }
    n->refusal_logs++;
    LOG_W("net refused node=%u peer=%s dir=%s claimed=%u reason=\"%s\" unlogged=%llu",
          n->cfg.id, remote, dir, claimed, reason, (unsigned long long)n->refusals_unlogged);
    n->refusals_unlogged = 0;
}

__attribute__((format(printf, 2, 3)))
static void conn_refuse(struct conn *c, const char *fmt, ...)
{
    struct net *n = c->net;
    char reason[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    /* Logged before counted: whoever sees the count finds the reason. */
    log_refusal(n, c->remote, c->outbound ? "out" : "in", c->peer, reason);
    STAT_ADD(n, refused, 1);
    conn_close(c, false);
}

__attribute__((format(printf, 2, 3)))
static void conn_protocol_error(struct conn *c, const char *fmt, ...)
{
    struct net *n = c->net;
    char reason[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    LOG_W("net protocol error node=%u peer=%u addr=%s dir=%s reason=\"%s\"", n->cfg.id, c->peer,
          c->remote, c->outbound ? "out" : "in", reason);
    STAT_ADD(n, protocol_errors, 1);
    conn_close(c, false);
}

/* An outbound attempt that failed for a reason that is not authentication
 * (refused, reset, timeout): expected while a peer is down, so quiet. */
static void conn_dial_failed(struct conn *c, const char *reason)
{
    struct net *n = c->net;
    struct peer *p = &n->peers[c->peer];
    if (!p->logged_down)
        LOG_I("net dial failed node=%u peer=%u addr=%s reason=\"%s\"", n->cfg.id, c->peer,
              c->remote, reason);
    else
        LOG_D("net dial failed node=%u peer=%u addr=%s reason=\"%s\"", n->cfg.id, c->peer,
              c->remote, reason);
    p->logged_down = true;
    conn_close(c, false);
}

/* Whether the TLS operation that returned `err` failed because the peer
 * ended the connection (close_notify, end of stream, reset), not because
 * of an error found here. Read errno right after the call. */
static bool ended_by_peer(int err)
{
    if (err == SSL_ERROR_SSL) /* OpenSSL 3 reports an end without close_notify so */
        return ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING;
    return err == SSL_ERROR_ZERO_RETURN ||
           (err == SSL_ERROR_SYSCALL && (errno == 0 || errno == ECONNRESET || errno == EPIPE));
}

/* Why the TLS operation that returned `err` failed. */
static void tls_reason(struct conn *c, int err, char *out, size_t outlen)
{
    long verify = SSL_get_verify_result(c->ssl);
    unsigned long e = ERR_peek_error();
    if (verify != X509_V_OK) {
        snprintf(out, outlen, "certificate rejected: %s", X509_verify_cert_error_string(verify));
    } else if (err == SSL_ERROR_SSL && e) {
        const char *r = ERR_reason_error_string(e);
        snprintf(out, outlen, "tls: %s", r ? r : "error");
    } else if (err == SSL_ERROR_ZERO_RETURN) {
        snprintf(out, outlen, "closed by peer");
    } else if (err == SSL_ERROR_SYSCALL) {
        snprintf(out, outlen, "connection lost: %s", errno ? strerror(errno) : "unexpected eof");
    } else {
        snprintf(out, outlen, "tls error %d", err);
    }
    ERR_clear_error();
}

/* ---- the write side ------------------------------------------------------- */

static void put_hello(struct conn *c)
{
    struct net *n = c->net;
    ASSERT(c->wlen == 0 && WBUF_BYTES >= NET_FRAME_HEADER_BYTES + NET_HELLO_BYTES);
    struct net_hello h = {.node = n->cfg.id};
    memcpy(h.cluster_id, n->cfg.cluster_id, sizeof h.cluster_id);
    net_frame_header_encode(c->wbuf, NET_FRAME_HELLO, NET_HELLO_BYTES);
    net_hello_encode(&h, c->wbuf + NET_FRAME_HEADER_BYTES);
    c->woff = 0;
    c->wlen = NET_FRAME_HEADER_BYTES + NET_HELLO_BYTES;
}

/* Moves queued frames to the connection: small ones are copied into the
 * staging buffer (up to a full record), a large one becomes `cur` and is
 * written from its own buffer. The queue is the peer's for an outbound
 * connection, the client slot's for a client. Returns false if there was
 * nothing to take. */
static bool take_from_queue(struct conn *c)
{
    struct net *n = c->net;
    struct client_slot *slot = c->client ? c->slot : NULL;
    pthread_mutex_t *mu = slot ? &n->clients_mu : &n->peers[c->peer].mu;
    struct out_frame *done = NULL;
    uint64_t frames = 0, bytes = 0;
    pthread_mutex_lock(mu);
    struct out_queue *q = slot ? &slot->q : &n->peers[c->peer].q;
    for (uint32_t i = 0; q->head && i < ROUND_FRAMES; i++) {
        struct out_frame *f = q->head;
        bool small = f->len < WBUF_BYTES;
        if (small && f->len > WBUF_BYTES - c->wlen)
            break;
        if (!small && (c->wlen > 0 || c->cur))
            break;
        q->head = f->next;
        if (!q->head)
            q->tail = NULL;
        q->bytes -= f->len;
        q->frames--;
        frames++;
        bytes += f->len - NET_FRAME_HEADER_BYTES;
        if (slot && f->data[5] == NET_FRAME_STATUS_REPLY) /* header byte 5: the type */
            slot->status_queued--;
        if (!small) {
            f->next = NULL;
            c->cur = f;
            c->cur_off = 0;
            if (slot)
                slot->inflight = f->len;
            break;
        }
        memcpy(c->wbuf + c->wlen, f->data, f->len);
        c->wlen += f->len;
        f->next = done;
        done = f;
    }
    pthread_mutex_unlock(mu);
    for (uint64_t i = 0; done && i < frames; i++) {
        struct out_frame *next = done->next;
        out_frame_free(done);
        done = next;
    }
    if (!slot) { /* replies to clients are counted when they are made */
        STAT_ADD(n, frames_sent, frames);
        STAT_ADD(n, bytes_sent, bytes);
    }
    return frames > 0;
}

/* A client's reply written from its own buffer is done: it no longer
 * counts against the client's pending bytes. */
static void client_inflight_done(struct conn *c)
{
    pthread_mutex_lock(&c->net->clients_mu);
    c->slot->inflight = 0;
    pthread_mutex_unlock(&c->net->clients_mu);
}

/* One SSL_write; >0 bytes written, 0 blocked (flags set), -1 closed. */
static int conn_write_some(struct conn *c, const uint8_t *p, size_t len)
{
    int want = len > INT_MAX ? INT_MAX : (int)len;
    ERR_clear_error();
    errno = 0;
    int r = SSL_write(c->ssl, p, want);
    if (r > 0)
        return r;
    int err = SSL_get_error(c->ssl, r);
    if (err == SSL_ERROR_WANT_WRITE) {
        c->wr_blocked = true;
        return 0;
    }
    if (err == SSL_ERROR_WANT_READ) {
        c->wr_wants_read = true;
        return 0;
    }
    char reason[200];
    c->ssl_failed = err == SSL_ERROR_SSL || err == SSL_ERROR_SYSCALL;
    c->ended_by_peer = ended_by_peer(err);
    tls_reason(c, err, reason, sizeof reason);
    if (c->state == C_OPEN || !c->outbound)
        conn_protocol_error(c, "write failed: %s", reason);
    else
        conn_dial_failed(c, reason);
    return -1;
}

/* Writes staged and queued bytes until blocked, empty or over budget.
 * 0, or -1 if c was closed. */
static int conn_flush(struct conn *c)
{
    c->wr_blocked = false;
    c->wr_wants_read = false;
    size_t budget = ROUND_BYTES;
    while (budget > 0) {
        const uint8_t *p;
        size_t len;
        if (c->woff < c->wlen) {
            p = c->wbuf + c->woff;
            len = c->wlen - c->woff;
        } else if (c->cur) {
            p = c->cur->data + c->cur_off;
            len = c->cur->len - c->cur_off;
        } else if (!((c->outbound || c->slot) && c->state == C_OPEN && take_from_queue(c))) {
            return 0;
        } else {
            continue;
        }
        int w = conn_write_some(c, p, MIN(len, budget));
        if (w <= 0)
            return w;
        budget -= (size_t)w;
        if (c->client)
            c->active_ns = clock_now_ns(); /* a client reading slowly is not idle */
        if (c->woff < c->wlen) {
            c->woff += (size_t)w;
            if (c->woff == c->wlen)
                c->woff = c->wlen = 0;
        } else {
            c->cur_off += (size_t)w;
            if (c->cur_off == c->cur->len) {
                out_frame_free(c->cur);
                c->cur = NULL;
                if (c->slot)
                    client_inflight_done(c);
            }
        }
    }
    c->more = true;
    c->net->any_more = true;
    return 0;
}

/* ---- the read side -------------------------------------------------------- */

static int conn_open_inbound(struct conn *c)
{
    struct net *n = c->net;
    struct peer *p = &n->peers[c->peer];
    if (p->in && p->in != c) {
        LOG_I("net replacing inbound node=%u peer=%u old=%s new=%s", n->cfg.id, c->peer,
              p->in->remote, c->remote);
        conn_close(p->in, false);
    }
    p->in = c;
    c->state = C_OPEN;
    c->deadline_ns = 0;
    c->opened_ns = clock_now_ns();
    net_frame_rx_set_payload_max(&c->rx, NET_FRAME_PAYLOAD_MAX);
    STAT_ADD(n, accepts, 1);
    LOG_I("net accepted node=%u peer=%u addr=%s", n->cfg.id, c->peer, c->remote);
    put_hello(c);
    return conn_flush(c);
}

static void conn_open_outbound(struct conn *c)
{
    struct net *n = c->net;
    struct peer *p = &n->peers[c->peer];
    c->state = C_OPEN;
    c->deadline_ns = 0;
    c->opened_ns = clock_now_ns();
    pthread_mutex_lock(&p->mu);
    p->up = true;
    p->kick = false;
    pthread_mutex_unlock(&p->mu);
    p->logged_down = false;
    STAT_ADD(n, connects, 1);
    LOG_I("net peer up node=%u peer=%u addr=%s", n->cfg.id, c->peer, c->remote);
    if (n->cfg.on_peer)
        n->cfg.on_peer(n->cfg.ctx, c->peer, NET_PEER_UP);
}

/* True if a CLIENT_REQ of open client c is waiting for its answer. */
static bool client_waiting(struct conn *c)
{
    pthread_mutex_lock(&c->net->clients_mu);
    bool waiting = c->slot->outstanding > 0;
    pthread_mutex_unlock(&c->net->clients_mu);
    return waiting;
}

/* Open client connections beyond NET_CLIENTS_MAX - 1 close to make room for
 * one more: the oldest that waits for no answer first (a status query is
 * cheap to repeat, a long request is not), else the oldest. */
static void clients_make_room(struct net *n)
{
    for (int round = 0; round < NET_CLIENTS_MAX + 1; round++) {
        struct conn *oldest = NULL, *oldest_idle = NULL;
        uint32_t open = 0;
        for (uint32_t i = 0; i < n->n_inbound; i++) {
            struct conn *o = n->inbound[i];
            if (!o->client || o->state != C_OPEN)
                continue;
            open++;
            if (!oldest || o->opened_ns < oldest->opened_ns)
                oldest = o;
            if (!client_waiting(o) && (!oldest_idle || o->opened_ns < oldest_idle->opened_ns))
                oldest_idle = o;
        }
        if (open < NET_CLIENTS_MAX || !oldest)
            return;
        struct conn *victim = oldest_idle ? oldest_idle : oldest;
        LOG_D("net client evicted node=%u addr=%s reason=\"%u clients open\"", n->cfg.id,
              victim->remote, open);
        conn_close(victim, false);
    }
}

/* A free client slot for c, with a new handle. clients_make_room has left
 * at most NET_CLIENTS_MAX - 1 clients open, and an open client holds
 * exactly one slot, so there is one. */
static void client_slot_take(struct conn *c)
{
    struct net *n = c->net;
    pthread_mutex_lock(&n->clients_mu);
    struct client_slot *s = NULL;
    for (uint32_t i = 0; !s && i < NET_CLIENTS_MAX; i++)
        if (n->clients[i].id == 0)
            s = &n->clients[i];
    ASSERT(s != NULL);
    s->id = ++n->next_client_id;
    s->conn = c;
    pthread_mutex_unlock(&n->clients_mu);
    c->slot = s;
}

static int conn_open_client(struct conn *c)
{
    struct net *n = c->net;
    clients_make_room(n);
    c->state = C_OPEN;
    c->opened_ns = c->active_ns = clock_now_ns();
    c->deadline_ns = c->opened_ns + ms_to_ns(n->cfg.client_idle_ms);
    client_slot_take(c);
    net_frame_rx_set_payload_max(&c->rx, n->cfg.on_client_req
                                              ? MAX(NET_CLIENT_REQ_MAX, NET_STATUS_REQ_BYTES)
                                              : NET_STATUS_REQ_BYTES);
    STAT_ADD(n, clients, 1);
    LOG_D("net client accepted node=%u addr=%s", n->cfg.id, c->remote);
    put_hello(c);
    return conn_flush(c);
}

/* STATUS_REQ: answered at once with what on_status reports, in the newest
 * reply version the client understands (status.h), through the client's
 * queue so that it keeps its place among the CLIENT_REPLYs. A client that
 * pipelines requests without reading is cut off once
 * NET_CLIENT_REPLIES_MAX status replies wait in its queue, so it cannot
 * make this node buffer for it. */
static int on_status_req(struct conn *c, const struct net_frame *f)
{
    struct net *n = c->net;
    uint32_t version;
    if (!n->cfg.on_status || net_status_req_decode(f->payload, f->len, &version) != 0) {
        conn_protocol_error(c, "client sent %s STATUS_REQ of %zu bytes",
                            n->cfg.on_status ? "a malformed" : "an unserved", f->len);
        return -1;
    }
    pthread_mutex_lock(&n->clients_mu);
    uint32_t queued = c->slot->status_queued;
    pthread_mutex_unlock(&n->clients_mu);
    if (queued >= NET_CLIENT_REPLIES_MAX) {
        conn_protocol_error(c, "client does not read its replies (%u unread)", queued);
        return -1;
    }
    struct net_status_reply r;
    memset(&r, 0, sizeof r);
    int rc = n->cfg.on_status(n->cfg.ctx, &r);
    if (rc) {
        LOG_W("net status unavailable node=%u addr=%s reason=\"%s\"", n->cfg.id, c->remote,
              strerror(-rc));
        conn_close(c, false);
        return -1;
    }
    r.node = n->cfg.id;
    uint8_t payload[NET_STATUS_REPLY_BYTES];
    size_t len = net_status_reply_encode(&r, MIN(version, NET_STATUS_VERSION), payload);
    struct out_frame *frame = out_frame_new(NET_FRAME_STATUS_REPLY, payload, len);
    pthread_mutex_lock(&n->clients_mu);
    queue_append_locked(&c->slot->q, frame);
    c->slot->status_queued++;
    pthread_mutex_unlock(&n->clients_mu);
    c->active_ns = clock_now_ns();
    STAT_ADD(n, status_replies, 1);
    return conn_flush(c);
}

/* CLIENT_REQ: counted as outstanding, then handed to on_client_req; the
 * answer comes later through net_client_reply. */
static int on_client_req(struct conn *c, const struct net_frame *f)
{
    struct net *n = c->net;
    if (!n->cfg.on_client_req) {
        conn_protocol_error(c, "client sent a CLIENT_REQ, which this node does not serve");
        return -1;
    }
    pthread_mutex_lock(&n->clients_mu);
    uint32_t outstanding = c->slot->outstanding;
    if (outstanding < NET_CLIENT_REQS_MAX)
        c->slot->outstanding++;
    uint64_t id = c->slot->id;
    pthread_mutex_unlock(&n->clients_mu);
    if (outstanding >= NET_CLIENT_REQS_MAX) {
        conn_protocol_error(c, "client sent a request while %u are outstanding", outstanding);
        return -1;
    }
    c->active_ns = clock_now_ns();
    STAT_ADD(n, client_requests, 1);
    n->cfg.on_client_req(n->cfg.ctx, id, f->payload, f->len);
    return 0;
}

/* A client may send STATUS_REQ and CLIENT_REQ and nothing else. */
static int on_client_frame(struct conn *c, const struct net_frame *f)
{
    if (f->type == NET_FRAME_STATUS_REQ)
        return on_status_req(c, f);
    if (f->type == NET_FRAME_CLIENT_REQ)
        return on_client_req(c, f);
    conn_protocol_error(c, "client sent frame type %u of %zu bytes; only STATUS_REQ and "
                        "CLIENT_REQ are allowed", f->type, f->len);
    return -1;
}

static int on_hello(struct conn *c, const struct net_frame *f)
{
    struct net *n = c->net;
    struct net_hello h;
    if (f->type != NET_FRAME_HELLO || net_hello_decode(f->payload, f->len, &h) != 0) {
        conn_refuse(c, "first frame is not a valid HELLO (type %u)", f->type);
        return -1;
    }
    if (h.node != c->peer) {
        conn_refuse(c, "HELLO claims node %u but the certificate names node %u", h.node, c->peer);
        return -1;
    }
    if (memcmp(h.cluster_id, n->cfg.cluster_id, sizeof h.cluster_id) != 0) {
        conn_refuse(c, "HELLO names another cluster");
        return -1;
    }
    if (!c->outbound)
        return c->client ? conn_open_client(c) : conn_open_inbound(c);
    conn_open_outbound(c);
    return c->state == C_OPEN ? 0 : -1;
}

static int deliver(struct conn *c, const struct net_frame *f)
{
    struct net *n = c->net;
    STAT_ADD(n, frames_received, 1);
    STAT_ADD(n, bytes_received, f->len);
    if (f->type == NET_FRAME_PX && n->cfg.on_msg) {
        struct px_msg m;
        if (px_msg_decode(f->payload, f->len, &m) != 0) {
            conn_protocol_error(c, "undecodable consensus message (%zu bytes)", f->len);
            return -1;
        }
        if (m.from != c->peer || m.to != n->cfg.id) {
            conn_protocol_error(c, "message from=%u to=%u on a connection from node %u", m.from,
                                m.to, c->peer);
            px_msg_clear(&m);
            return -1;
        }
        n->cfg.on_msg(n->cfg.ctx, c->peer, &m);
        px_msg_clear(&m);
    } else if (n->cfg.on_frame) {
        n->cfg.on_frame(n->cfg.ctx, c->peer, f->type, f->payload, f->len);
    }
    return 0;
}

static int on_frame(struct conn *c, const struct net_frame *f)
{
    if (c->state == C_HELLO_WAIT)
        return on_hello(c, f);
    ASSERT(c->state == C_OPEN);
    if (c->client)
        return on_client_frame(c, f);
    if (c->outbound || f->type == NET_FRAME_HELLO || f->type > NET_FRAME_BULK) {
        conn_protocol_error(c, "unexpected frame type %u on %s connection", f->type,
                            c->outbound ? "an outbound" : "a peer's");
        return -1;
    }
    return deliver(c, f);
}

/* Reads and dispatches until blocked or over budget. 0, or -1 if closed. */
static int conn_read(struct conn *c)
{
    c->rd_wants_write = false;
    size_t budget = ROUND_BYTES;
    uint32_t frames = 0;
    while (budget > 0 && frames < ROUND_FRAMES) {
        uint8_t *p;
        size_t room;
        net_frame_rx_space(&c->rx, &p, &room);
        ERR_clear_error();
        errno = 0;
        int r = SSL_read(c->ssl, p, room > INT_MAX ? INT_MAX : (int)room);
        if (r <= 0) {
            int err = SSL_get_error(c->ssl, r);
            if (err == SSL_ERROR_WANT_READ)
                return 0;
            if (err == SSL_ERROR_WANT_WRITE) {
                c->rd_wants_write = true;
                return 0;
            }
            c->ssl_failed = err == SSL_ERROR_SSL || err == SSL_ERROR_SYSCALL;
            c->ended_by_peer = ended_by_peer(err);
            char reason[200];
            tls_reason(c, err, reason, sizeof reason);
            bool mid_frame = net_frame_rx_partial(&c->rx);
            if (c->state != C_OPEN && (err == SSL_ERROR_SSL || !c->outbound))
                conn_refuse(c, "%s", reason);
            else if (c->state != C_OPEN)
                conn_dial_failed(c, reason);
            else if (mid_frame)
                conn_protocol_error(c, "%s in the middle of a frame", reason);
            else if (c->client) { /* every `paxfs status` ends so: not news */
                LOG_D("net client closed node=%u addr=%s reason=\"%s\"", c->net->cfg.id,
                      c->remote, reason);
                conn_close(c, false);
            } else {
                LOG_I("net closed node=%u peer=%u addr=%s dir=%s reason=\"%s\"", c->net->cfg.id,
                      c->peer, c->remote, c->outbound ? "out" : "in", reason);
                conn_close(c, false);
            }
            return -1;
        }
        net_frame_rx_commit(&c->rx, (size_t)r);
        budget -= MIN(budget, (size_t)r);
        for (;;) {
            struct net_frame f;
            int rc = net_frame_rx_next(&c->rx, &f);
            if (rc == 0)
                break;
            if (rc < 0) {
                if (c->state == C_OPEN)
                    conn_protocol_error(c, "malformed frame header");
                else
                    conn_refuse(c, "malformed frame before HELLO");
                return -1;
            }
            frames++;
            if (on_frame(c, &f) < 0)
                return -1;
        }
    }
    c->more = true;
    c->net->any_more = true;
    return 0;
}

/* ---- handshake ------------------------------------------------------------ */

static void handshake_done(struct conn *c)
{
    struct net *n = c->net;
    X509 *cert = SSL_get0_peer_certificate(c->ssl);
    if (!cert || SSL_get_verify_result(c->ssl) != X509_V_OK) {
        conn_refuse(c, "no verified certificate");
        return;
    }
    uint32_t node;
    uint8_t cluster[PKI_CLUSTER_ID_BYTES];
    bool client = false;
    if (pki_cert_identity(cert, &node, cluster) != 0) {
        /* not a node: an acceptor also admits the operator client */
        if (c->outbound || pki_cert_client_identity(cert, cluster) != 0) {
            conn_refuse(c, "certificate names no paxfs node identity");
            return;
        }
        client = true;
        node = NET_HELLO_NODE_CLIENT;
    }
    if (memcmp(cluster, n->cfg.cluster_id, sizeof cluster) != 0) {
        if (client)
            conn_refuse(c, "client certificate of another cluster");
        else
            conn_refuse(c, "certificate names node %u of another cluster", node);
        return;
    }
    if (client && !n->cfg.on_status && !n->cfg.on_client_req) {
        conn_refuse(c, "client certificate, but this node serves no status or requests");
        return;
    }
    if (c->outbound && node != c->peer) {
        conn_refuse(c, "dialed node %u but its certificate names node %u", c->peer, node);
        return;
    }
    if (!c->outbound) {
        if (!client && (node > n->cfg.n_nodes || node == n->cfg.id)) {
            conn_refuse(c, "certificate names node %u, not a peer of node %u", node, n->cfg.id);
            return;
        }
        c->peer = node;
        c->client = client;
    }
    c->state = C_HELLO_WAIT;
    if (c->outbound) {
        put_hello(c);
        if (conn_flush(c) < 0)
            return;
    }
    if (conn_read(c) < 0) /* the HELLO may already be buffered */
        return;
    conn_update_interest(c);
}

static void handshake_step(struct conn *c)
{
    ERR_clear_error();
    errno = 0;
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        c->hs_wants_write = false;
        handshake_done(c);
        return;
    }
    int err = SSL_get_error(c->ssl, r);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        c->hs_wants_write = err == SSL_ERROR_WANT_WRITE;
        conn_update_interest(c);
        return;
    }
    c->ssl_failed = true;
    char reason[200];
    tls_reason(c, err, reason, sizeof reason);
    if (err == SSL_ERROR_SSL || !c->outbound)
        conn_refuse(c, "%s", reason);
    else
        conn_dial_failed(c, reason);
}

static bool conn_start_tls(struct conn *c)
{
    c->ssl = SSL_new(c->net->ssl_ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) {
        char e[160];
        LOG_E("net tls setup failed node=%u reason=\"%s\"", c->net->cfg.id,
              pki_ssl_error(e, sizeof e));
        return false;
    }
    if (c->outbound)
        SSL_set_connect_state(c->ssl);
    else
        SSL_set_accept_state(c->ssl);
    c->state = C_HANDSHAKE;
    return true;
}

static void connect_done(struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
    if (err) {
        conn_dial_failed(c, strerror(err));
        return;
    }
    if (!conn_start_tls(c)) {
        conn_dial_failed(c, "tls setup failed");
        return;
    }
    handshake_step(c);
}

static void conn_event(struct conn *c, uint32_t ev)
{
    if (c->state == C_CLOSED)
        return;
    if (c->state == C_CONNECTING) {
        connect_done(c);
        return;
    }
    if (c->state == C_HANDSHAKE) {
        handshake_step(c);
        return;
    }
    bool readable = ev & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP);
    bool writable = ev & (EPOLLOUT | EPOLLERR | EPOLLHUP);
    if (readable || (writable && c->rd_wants_write))
        if (conn_read(c) < 0)
            return;
    if (writable || (readable && c->wr_wants_read))
        if (conn_flush(c) < 0)
            return;
    conn_update_interest(c);
}

/* ---- dialing and accepting ------------------------------------------------ */

static void peer_dial(struct net *n, struct peer *p)
{
    int fd = socket(p->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        LOG_W("net socket failed node=%u peer=%u reason=\"%s\"", n->cfg.id, p->id, strerror(errno));
        schedule_dial(n, p);
        return;
    }
    tune_socket(fd);
    if (connect(fd, (struct sockaddr *)&p->addr, p->addr_len) != 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        LOG_D("net dial failed node=%u peer=%u addr=%s reason=\"%s\"", n->cfg.id, p->id,
              p->addr_text, strerror(e));
        schedule_dial(n, p);
        return;
    }
    p->out = conn_new(n, fd, true, p->id, p->addr_text, EPOLLOUT);
    if (!p->out) {
        close(fd);
        schedule_dial(n, p);
    }
}

/* At the inbound limit, the oldest connection that has not authenticated
 * yet makes room, or else the oldest open operator client: a flood of idle
 * or slow connections, or of clients, can then only delay a real peer's
 * handshake, never lock it out. Peers' authenticated connections are at most
 * one per peer and are never evicted. */
static bool evict_unauthenticated(struct net *n)
{
    struct conn *oldest = NULL, *client = NULL;
    for (uint32_t i = 0; i < n->n_inbound; i++) {
        struct conn *c = n->inbound[i];
        if (c->state != C_OPEN && (!oldest || c->deadline_ns < oldest->deadline_ns))
            oldest = c;
        if (c->state == C_OPEN && c->client && (!client || c->opened_ns < client->opened_ns))
            client = c;
    }
    if (!oldest && client) {
        LOG_D("net client evicted node=%u addr=%s reason=\"inbound limit\"", n->cfg.id,
              client->remote);
        conn_close(client, false);
        return true;
    }
    if (!oldest)
        return false;
    conn_refuse(oldest, "evicted: %u inbound connections, the oldest unauthenticated goes",
                n->cfg.inbound_max);
    return true;
}

static void listen_accept(struct net *n)
{
    for (int i = 0; i < ACCEPTS_PER_ROUND; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(n->listen_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* level-triggered: stop listening for a moment rather than spin */
                LOG_W("net accept failed node=%u reason=\"%s\"", n->cfg.id, strerror(errno));
                struct epoll_event ev = {.events = 0, .data.ptr = &n->listen_fd};
                epoll_ctl(n->ep, EPOLL_CTL_MOD, n->listen_fd, &ev);
                n->listen_paused = true;
                n->listen_resume_ns = clock_now_ns() + LISTEN_PAUSE_NS;
                return;
            }
            continue; /* ECONNABORTED, EINTR, a network error on the new socket */
        }
        char remote[ADDR_TEXT_BYTES];
        sockaddr_text((struct sockaddr *)&ss, remote, sizeof remote);
        if (n->n_inbound >= n->cfg.inbound_max && !evict_unauthenticated(n)) {
            close(fd);
            log_refusal(n, remote, "in", 0, "too many inbound connections");
            STAT_ADD(n, refused, 1);
            continue;
        }
        tune_socket(fd);
        struct conn *c = conn_new(n, fd, false, 0, remote, EPOLLIN);
        if (!c) {
            close(fd);
            continue;
        }
        n->inbound[n->n_inbound++] = c;
        if (!conn_start_tls(c))
            conn_refuse(c, "tls setup failed");
    }
}

/* ---- the loop ------------------------------------------------------------- */

static void wake_drain(struct net *n)
{
    uint64_t v;
    ssize_t r = read(n->wake_fd, &v, sizeof v); /* one read resets the counter */
    (void)r; /* EAGAIN: a wake already drained in this round */
    /* Cleared before the kicks are read: a kick set after this point
     * writes wake_fd again, one set before it is seen below. */
    atomic_store(&n->wake_pending, false);
    for (uint32_t k = 1; k <= n->cfg.n_nodes; k++) {
        struct peer *p = &n->peers[k];
        if (k == n->cfg.id)
            continue;
        pthread_mutex_lock(&p->mu);
        bool kick = p->kick;
        p->kick = false;
        pthread_mutex_unlock(&p->mu);
        struct conn *c = p->out;
        if (kick && c && c->state == C_OPEN && !c->wr_blocked && !c->wr_wants_read)
            if (conn_flush(c) == 0)
                conn_update_interest(c);
    }
    /* Clients with new replies: collected under the lock, flushed outside
     * it (a flush that fails closes the connection, which takes the lock). */
    struct conn *kicked[NET_CLIENTS_MAX];
    uint32_t n_kicked = 0;
    pthread_mutex_lock(&n->clients_mu);
    for (uint32_t i = 0; i < NET_CLIENTS_MAX; i++) {
        struct client_slot *s = &n->clients[i];
        if (s->kick && s->conn)
            kicked[n_kicked++] = s->conn;
        s->kick = false;
    }
    pthread_mutex_unlock(&n->clients_mu);
    uint64_t now = clock_now_ns();
    for (uint32_t i = 0; i < n_kicked; i++) {
        struct conn *c = kicked[i];
        c->active_ns = now; /* a reply was made: the idle time counts from here */
        if (c->state == C_OPEN && !c->wr_blocked && !c->wr_wants_read)
            if (conn_flush(c) == 0)
                conn_update_interest(c);
    }
}

/* A client's idle deadline passed: it is closed unless a request of it is
 * outstanding (the node is still working for it), a reply to it was just
 * made, or it was active since (then the deadline moves). Evaluated here rather than on every activity,
 * so activity costs no timer bookkeeping. */
static void client_deadline(struct conn *c, uint64_t now)
{
    struct net *n = c->net;
    uint64_t idle_ns = ms_to_ns(n->cfg.client_idle_ms);
    pthread_mutex_lock(&n->clients_mu);
    /* kick: a reply was made that the loop has not seen yet (it counts as
     * activity once it has) */
    bool busy = c->slot->outstanding > 0 || c->slot->kick;
    pthread_mutex_unlock(&n->clients_mu);
    if (busy) {
        c->deadline_ns = now + idle_ns;
    } else if (c->active_ns + idle_ns > now) {
        c->deadline_ns = c->active_ns + idle_ns;
    } else {
        LOG_D("net client idle node=%u addr=%s", n->cfg.id, c->remote);
        conn_close(c, false);
    }
}

static void run_timers(struct net *n, uint64_t now)
{
    for (uint32_t k = 1; k <= n->cfg.n_nodes; k++) {
        struct peer *p = &n->peers[k];
        if (k == n->cfg.id)
            continue;
        if (!p->out && now >= p->dial_at_ns)
            peer_dial(n, p);
        else if (p->out && p->out->deadline_ns && now >= p->out->deadline_ns)
            conn_dial_failed(p->out, "timed out before the connection was authenticated");
    }
    for (uint32_t i = n->n_inbound; i-- > 0;) {
        struct conn *c = n->inbound[i];
        if (!c->deadline_ns || now < c->deadline_ns)
            continue;
        if (c->client && c->state == C_OPEN) {
            client_deadline(c, now);
        } else {
            conn_refuse(c, "did not authenticate within %u ms", n->cfg.handshake_timeout_ms);
        }
    }
    if (n->listen_paused && now >= n->listen_resume_ns) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &n->listen_fd};
        epoll_ctl(n->ep, EPOLL_CTL_MOD, n->listen_fd, &ev);
        n->listen_paused = false;
    }
}

static int next_timeout_ms(struct net *n, uint64_t now)
{
    if (n->any_more)
        return 0;
    uint64_t next = now + ms_to_ns(1000);
    for (uint32_t k = 1; k <= n->cfg.n_nodes; k++) {
        struct peer *p = &n->peers[k];
        if (k == n->cfg.id)
            continue;
        if (!p->out)
            next = MIN(next, p->dial_at_ns);
        else if (p->out->deadline_ns)
            next = MIN(next, p->out->deadline_ns);
    }
    for (uint32_t i = 0; i < n->n_inbound; i++)
        if (n->inbound[i]->deadline_ns)
            next = MIN(next, n->inbound[i]->deadline_ns);
    if (n->listen_paused)
        next = MIN(next, n->listen_resume_ns);
    if (next <= now)
        return 0;
    return (int)((next - now + 999999) / 1000000);
}

static void conn_continue(struct conn *c)
{
    if (c->state != C_OPEN && c->state != C_HELLO_WAIT)
        return;
    if (!c->more)
        return;
    c->more = false;
    if (conn_read(c) < 0 || conn_flush(c) < 0)
        return;
    conn_update_interest(c);
}

static void run_more(struct net *n)
{
    n->any_more = false;
    for (uint32_t k = 1; k <= n->cfg.n_nodes; k++)
        if (n->peers[k].out)
            conn_continue(n->peers[k].out);
    for (uint32_t i = n->n_inbound; i-- > 0;)
        if (i < n->n_inbound)
            conn_continue(n->inbound[i]);
}

static void free_dead(struct net *n)
{
    while (n->dead) {
        struct conn *c = n->dead;
        n->dead = c->next_dead;
        conn_free(c);
    }
}

static void close_all(struct net *n)
{
    for (uint32_t k = 1; k <= n->cfg.n_nodes; k++)
        if (n->peers[k].out)
            conn_close(n->peers[k].out, true);
    while (n->n_inbound > 0)
        conn_close(n->inbound[n->n_inbound - 1], true);
    for (uint32_t k = 1; k <= n->cfg.n_nodes; k++) {
        struct peer *p = &n->peers[k];
        pthread_mutex_lock(&p->mu);
        p->up = false;
        queue_drop_locked(&p->q);
        pthread_mutex_unlock(&p->mu);
    }
    free_dead(n);
}

static void *loop_main(void *arg)
{
    struct net *n = arg;
    pthread_setname_np(pthread_self(), "paxfs-net");
    /* A write to a socket the peer reset raises SIGPIPE in the writing
     * thread; blocked here, the write just fails with EPIPE, and the
     * process's own handling of SIGPIPE is left alone. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    struct epoll_event evs[EVENTS_MAX];
    while (!atomic_load(&n->stopping)) {
        int timeout = next_timeout_ms(n, clock_now_ns());
        int k = epoll_wait(n->ep, evs, EVENTS_MAX, timeout);
        if (k < 0 && errno != EINTR) {
            LOG_E("net epoll_wait failed node=%u reason=\"%s\"", n->cfg.id, strerror(errno));
            break;
        }
        for (int i = 0; i < k; i++) {
            void *ptr = evs[i].data.ptr;
            if (ptr == &n->listen_fd)
                listen_accept(n);
            else if (ptr == &n->wake_fd)
                wake_drain(n);
            else
                conn_event(ptr, evs[i].events);
        }
        if (n->any_more)
            run_more(n);
        run_timers(n, clock_now_ns());
        free_dead(n);
    }
    close_all(n);
    return NULL;
}

/* ---- setup ---------------------------------------------------------------- */

/* This node's own certificate must chain to the CA and name (id, cluster):
 * a wrong file is a clear error at start-up, not a refusal by every peer. */
static int check_own_cert(struct net *n)
{
    X509 *cert = SSL_CTX_get0_certificate(n->ssl_ctx);
    uint32_t node;
    uint8_t cluster[PKI_CLUSTER_ID_BYTES];
    if (!cert || pki_cert_identity(cert, &node, cluster) != 0) {
        LOG_E("net bad certificate node=%u file=%s reason=\"names no paxfs node identity\"",
              n->cfg.id, n->cfg.cert_path);
        return -EACCES;
    }
    if (node != n->cfg.id || memcmp(cluster, n->cfg.cluster_id, sizeof cluster) != 0) {
        LOG_E("net bad certificate node=%u file=%s reason=\"names node %u%s\"", n->cfg.id,
              n->cfg.cert_path, node,
              memcmp(cluster, n->cfg.cluster_id, sizeof cluster) ? " of another cluster" : "");
        return -EACCES;
    }
    X509_STORE_CTX *vctx = X509_STORE_CTX_new();
    int ok = vctx && X509_STORE_CTX_init(vctx, SSL_CTX_get_cert_store(n->ssl_ctx), cert, NULL) == 1
             && X509_verify_cert(vctx) == 1;
    int verr = vctx ? X509_STORE_CTX_get_error(vctx) : X509_V_ERR_UNSPECIFIED;
    X509_STORE_CTX_free(vctx);
    if (!ok) {
        LOG_E("net bad certificate node=%u file=%s reason=\"does not verify against %s: %s\"",
              n->cfg.id, n->cfg.cert_path, n->cfg.ca_path, X509_verify_cert_error_string(verr));
        ERR_clear_error();
        return -EACCES;
    }
    return 0;
}

static int tls_setup(struct net *n)
{
    const struct net_config *c = &n->cfg;
    char e[200];
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());
    if (!ctx) {
        LOG_E("net tls init failed node=%u reason=\"%s\"", c->id, pki_ssl_error(e, sizeof e));
        return -ENOMEM;
    }
    n->ssl_ctx = ctx;
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    /* Full handshake with full certificate checks on every connection. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* read ahead up to four full records per recv(): fewer syscalls for
     * large frames; the loop drains SSL_pending data before sleeping */
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_default_read_buffer_len(ctx, 4 * (16384 + 512));
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    SSL_CTX_set_verify_depth(ctx, 2);
    const char *what = NULL, *file = NULL;
    if (SSL_CTX_load_verify_locations(ctx, c->ca_path, NULL) != 1)
        what = "cannot load the CA certificate", file = c->ca_path;
    else if (SSL_CTX_use_certificate_chain_file(ctx, c->cert_path) != 1)
        what = "cannot load the node certificate", file = c->cert_path;
    else if (SSL_CTX_use_PrivateKey_file(ctx, c->key_path, SSL_FILETYPE_PEM) != 1)
        what = "cannot load the node key", file = c->key_path;
    else if (SSL_CTX_check_private_key(ctx) != 1)
        what = "the key does not match the certificate", file = c->key_path;
    if (what) {
        LOG_E("net bad tls files node=%u file=%s reason=\"%s: %s\"", c->id, file, what,
              pki_ssl_error(e, sizeof e));
        return -EACCES;
    }
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(c->ca_path);
    if (names)
        SSL_CTX_set_client_CA_list(ctx, names);
    struct stat st;
    if (stat(c->key_path, &st) == 0 && (st.st_mode & 077))
        LOG_W("net key readable by others node=%u file=%s mode=%o (chmod 600 it)", c->id,
              c->key_path, (unsigned)(st.st_mode & 0777));
    ERR_clear_error();
    return check_own_cert(n);
}

static int listen_setup(struct net *n)
{
    const struct config_node *a = &n->cfg.addrs[n->cfg.id];
    struct sockaddr_storage ss;
    socklen_t sl;
    if (resolve(a->host, a->port, true, &ss, &sl) != 0) {
        LOG_E("net cannot resolve node=%u host=%s", n->cfg.id, a->host);
        return -EHOSTUNREACH;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, sl) != 0 || listen(fd, 128) != 0) {
        int e = errno;
        LOG_E("net cannot listen node=%u addr=%s:%u reason=\"%s\"", n->cfg.id, a->host, a->port,
              strerror(e));
        close(fd);
        return -e;
    }
    struct sockaddr_storage bound;
    socklen_t bl = sizeof bound;
    getsockname(fd, (struct sockaddr *)&bound, &bl);
    n->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                : ((struct sockaddr_in *)&bound)->sin_port);
    n->listen_fd = fd;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &n->listen_fd};
    if (epoll_ctl(n->ep, EPOLL_CTL_ADD, fd, &ev) != 0)
        return -errno;
    return 0;
}

static bool config_valid(const struct net_config *c)
{
    return c->n_nodes >= 1 && c->n_nodes <= NET_NODES_MAX && c->id >= 1 && c->id <= c->n_nodes &&
           c->queue_bytes_max > 0 && c->queue_frames_max > 0 && c->backoff_min_ms > 0 &&
           c->backoff_max_ms >= c->backoff_min_ms && c->handshake_timeout_ms > 0 &&
           c->inbound_max > 0 && c->inbound_max <= INBOUND_LIMIT && c->client_idle_ms > 0;
}

int net_new(const struct net_config *cfg, struct net **out)
{
    if (!config_valid(cfg)) {
        LOG_E("net bad config node=%u n_nodes=%u", cfg->id, cfg->n_nodes);
        return -EINVAL;
    }
    struct net *n = calloc(1, sizeof *n);
    ASSERT(n != NULL);
    n->cfg = *cfg;
    n->ep = n->listen_fd = n->wake_fd = -1;
    prng_seed(&n->prng, clock_now_ns() ^ ((uint64_t)cfg->id << 48) ^ (uint64_t)getpid());
    for (uint32_t k = 0; k <= NET_NODES_MAX; k++) {
        struct peer *p = &n->peers[k];
        p->id = k;
        pthread_mutex_init(&p->mu, NULL);
        p->backoff_ms = cfg->backoff_min_ms;
    }
    pthread_mutex_init(&n->clients_mu, NULL);
    int rc = tls_setup(n);
    if (rc == 0) {
        n->ep = epoll_create1(EPOLL_CLOEXEC);
        n->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        rc = n->ep < 0 || n->wake_fd < 0 ? -errno : 0;
    }
    if (rc == 0) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &n->wake_fd};
        rc = epoll_ctl(n->ep, EPOLL_CTL_ADD, n->wake_fd, &ev) == 0 ? 0 : -errno;
    }
    if (rc == 0)
        rc = listen_setup(n);
    for (uint32_t k = 1; rc == 0 && k <= cfg->n_nodes; k++)
        if (k != cfg->id && cfg->addrs[k].port != 0)
            rc = net_set_peer_addr(n, k, cfg->addrs[k].host, cfg->addrs[k].port);
    if (rc) {
        net_free(n);
        return rc;
    }
    *out = n;
    return 0;
}

uint16_t net_port(const struct net *n) { return n->port; }

int net_set_peer_addr(struct net *n, uint32_t peer, const char *host, uint16_t port)
{
    if (peer < 1 || peer > n->cfg.n_nodes || peer == n->cfg.id || n->started || port == 0)
        return -EINVAL;
    struct peer *p = &n->peers[peer];
    if (resolve(host, port, false, &p->addr, &p->addr_len) != 0) {
        LOG_E("net cannot resolve node=%u peer=%u host=%s", n->cfg.id, peer, host);
        return -EHOSTUNREACH;
    }
    sockaddr_text((struct sockaddr *)&p->addr, p->addr_text, sizeof p->addr_text);
    p->have_addr = true;
    return 0;
}

int net_start(struct net *n)
{
    ASSERT(!n->started);
    for (uint32_t k = 1; k <= n->cfg.n_nodes; k++)
        if (k != n->cfg.id && !n->peers[k].have_addr)
            return -EDESTADDRREQ;
    uint64_t now = clock_now_ns();
    for (uint32_t k = 1; k <= n->cfg.n_nodes; k++)
        n->peers[k].dial_at_ns = now;
    int rc = pthread_create(&n->thread, NULL, loop_main, n);
    if (rc)
        return -rc;
    n->started = true;
    return 0;
}

/* One write per loop round at most: a proposer's message to every peer, or
 * many replies, cost the loop one wakeup and the senders one syscall. */
static void wake(struct net *n)
{
    if (atomic_exchange(&n->wake_pending, true))
        return;
    uint64_t one = 1;
    ssize_t w = write(n->wake_fd, &one, sizeof one);
    (void)w; /* EAGAIN: the counter is saturated, the loop is awake anyway */
}

void net_stop(struct net *n)
{
    if (!n->started || n->joined)
        return;
    atomic_store(&n->stopping, true);
    wake(n);
    pthread_join(n->thread, NULL);
    n->joined = true;
}

void net_free(struct net *n)
{
    if (!n)
        return;
    net_stop(n);
    for (uint32_t k = 0; k <= NET_NODES_MAX; k++) {
        queue_drop_locked(&n->peers[k].q);
        pthread_mutex_destroy(&n->peers[k].mu);
    }
    for (uint32_t i = 0; i < NET_CLIENTS_MAX; i++)
        queue_drop_locked(&n->clients[i].q);
    pthread_mutex_destroy(&n->clients_mu);
    if (n->listen_fd >= 0)
        close(n->listen_fd);
    if (n->wake_fd >= 0)
        close(n->wake_fd);
    if (n->ep >= 0)
        close(n->ep);
    SSL_CTX_free(n->ssl_ctx);
    free(n);
}

/* ---- sending -------------------------------------------------------------- */

static int check_dest(struct net *n, uint32_t to, uint8_t type, size_t len)
{
    if (to < 1 || to > n->cfg.n_nodes || to == n->cfg.id)
        return -EINVAL;
    if (type < NET_FRAME_PX || type > NET_FRAME_BULK) /* HELLO and client frames are not a peer's */
        return -EINVAL;
    if (len > NET_FRAME_PAYLOAD_MAX)
        return -EMSGSIZE;
    return 0;
}

/* The admission rule: room for len more bytes and one more frame, except
 * that an empty queue takes any single frame. Caller holds p->mu. */
static int admit_locked(const struct net *n, const struct peer *p, size_t len)
{
    if (!p->up)
        return -ENOTCONN;
    if (p->q.frames >= n->cfg.queue_frames_max)
        return -EAGAIN;
    if (p->q.frames > 0 && len > n->cfg.queue_bytes_max - MIN(p->q.bytes, n->cfg.queue_bytes_max))
        return -EAGAIN;
    return 0;
}

static int peek_admit(struct net *n, uint32_t to, size_t len)
{
    struct peer *p = &n->peers[to];
    pthread_mutex_lock(&p->mu);
    int rc = admit_locked(n, p, len);
    pthread_mutex_unlock(&p->mu);
    return rc;
}

/* Appends f (taking it on 0) to peer to's queue and wakes the loop, or
 * with `defer` leaves the wake to net_flush. */
static int enqueue(struct net *n, uint32_t to, struct out_frame *f, bool defer)
{
    struct peer *p = &n->peers[to];
    bool need_wake = false;
    pthread_mutex_lock(&p->mu);
    int rc = admit_locked(n, p, f->len);
    if (rc == 0) {
        queue_append_locked(&p->q, f);
        need_wake = !p->kick;
        p->kick = true;
    }
    pthread_mutex_unlock(&p->mu);
    if (need_wake && defer)
        atomic_store(&n->wake_owed, true);
    else if (need_wake)
        wake(n);
    return rc;
}

int net_send_frame(struct net *n, uint32_t to, uint8_t type, const void *payload, size_t len)
{
    int rc = check_dest(n, to, type, len);
    if (rc)
        return rc;
    /* Refuse before copying: a caller retrying on -EAGAIN costs no memcpy. */
    rc = peek_admit(n, to, len + NET_FRAME_HEADER_BYTES);
    if (rc)
        return rc;
    struct out_frame *f = out_frame_new(type, payload, len);
    rc = enqueue(n, to, f, false);
    if (rc)
        out_frame_free(f);
    return rc;
}

static int send_frame_buf(struct net *n, uint32_t to, uint8_t type, struct buf *frame,
                          bool defer)
{
    ASSERT(frame->len >= NET_FRAME_HEADER_BYTES);
    size_t len = frame->len - NET_FRAME_HEADER_BYTES;
    int rc = check_dest(n, to, type, len);
    if (rc)
        return rc;
    rc = peek_admit(n, to, frame->len);
    if (rc)
        return rc;
    net_frame_header_encode(frame->data, type, (uint32_t)len);
    struct out_frame *f = malloc(sizeof *f);
    ASSERT(f != NULL);
    f->next = NULL;
    f->data = f->own = frame->data; /* the caller's buffer becomes the frame */
    f->len = frame->len;
    rc = enqueue(n, to, f, defer);
    if (rc) {
        free(f); /* the bytes stay the caller's */
        return rc;
    }
    buf_init(frame);
    return 0;
}

int net_send_frame_buf(struct net *n, uint32_t to, uint8_t type, struct buf *frame)
{
    return send_frame_buf(n, to, type, frame, false);
}

int net_send(struct net *n, uint32_t to, const void *payload, size_t len)
{
    return net_send_frame(n, to, NET_FRAME_PX, payload, len);
}

static int send_msg(struct net *n, const struct px_msg *m, bool defer)
{
    int rc = check_dest(n, m->to, NET_FRAME_PX, 0);
    if (rc)
        return rc;
    /* Refused before encoding when the queue is full. */
    rc = peek_admit(n, m->to, NET_FRAME_HEADER_BYTES + PX_MSG_HEADER_BYTES);
    if (rc)
        return rc;
    struct buf b;
    buf_init(&b);
    buf_append_space(&b, NET_FRAME_HEADER_BYTES);
    rc = px_msg_encode(m, &b);
    if (rc == 0)
        rc = send_frame_buf(n, m->to, NET_FRAME_PX, &b, defer);
    buf_deinit(&b); /* empty if the net took it */
    return rc;
}

int net_send_msg(struct net *n, const struct px_msg *m)
{
    return send_msg(n, m, false);
}

int net_send_msg_deferred(struct net *n, const struct px_msg *m)
{
    return send_msg(n, m, true);
}

void net_flush(struct net *n)
{
    if (atomic_exchange(&n->wake_owed, false))
        wake(n);
}

/* The open client with handle `client`, or NULL; the caller holds
 * clients_mu. */
static struct client_slot *client_find_locked(struct net *n, uint64_t client)
{
    for (uint32_t i = 0; client != 0 && i < NET_CLIENTS_MAX; i++)
        if (n->clients[i].id == client)
            return &n->clients[i];
    return NULL;
}

/* The admission rule for a reply of `bytes` (header included): the client is
 * open, has a request to answer, and has room, except that a client with
 * nothing pending takes any one reply. Caller holds clients_mu. */
static int client_admit_locked(struct net *n, uint64_t client, size_t bytes,
                               struct client_slot **out)
{
    struct client_slot *s = client_find_locked(n, client);
    if (!s)
        return -ENOTCONN;
    if (s->outstanding == 0)
        return -EINVAL;
    size_t pending = s->q.bytes + s->inflight;
    if (pending > 0 && bytes > NET_CLIENT_PENDING_BYTES - MIN(pending, NET_CLIENT_PENDING_BYTES))
        return -EAGAIN;
    *out = s;
    return 0;
}

int net_client_reply(struct net *n, uint64_t client, const void *payload, size_t len)
{
    if (len > NET_CLIENT_REPLY_MAX)
        return -EMSGSIZE;
    struct client_slot *s;
    /* Refuse before copying up to 8 MiB; admit again when appending, the
     * client may have gone in between. */
    pthread_mutex_lock(&n->clients_mu);
    int rc = client_admit_locked(n, client, NET_FRAME_HEADER_BYTES + len, &s);
    pthread_mutex_unlock(&n->clients_mu);
    if (rc)
        return rc;
    struct out_frame *f = out_frame_new(NET_FRAME_CLIENT_REPLY, payload, len);
    bool need_wake = false;
    pthread_mutex_lock(&n->clients_mu);
    rc = client_admit_locked(n, client, f->len, &s);
    if (rc == 0) {
        queue_append_locked(&s->q, f);
        s->outstanding--;
        need_wake = !s->kick;
        s->kick = true;
    }
    pthread_mutex_unlock(&n->clients_mu);
    if (rc) {
        out_frame_free(f);
        return rc;
    }
    STAT_ADD(n, client_replies, 1);
    if (need_wake)
        wake(n);
    return 0;
}

bool net_peer_up(struct net *n, uint32_t peer)
{
    if (peer < 1 || peer > n->cfg.n_nodes || peer == n->cfg.id)
        return false;
    struct peer *p = &n->peers[peer];
    pthread_mutex_lock(&p->mu);
    bool up = p->up;
    pthread_mutex_unlock(&p->mu);
    return up;
}

void net_get_stats(struct net *n, struct net_stats *out)
{
#define LOAD(f) out->f = atomic_load_explicit(&n->st.f, memory_order_relaxed)
    LOAD(frames_sent);
    LOAD(bytes_sent);
    LOAD(frames_received);
    LOAD(bytes_received);
    LOAD(connects);
    LOAD(accepts);
    LOAD(disconnects);
    LOAD(refused);
    LOAD(protocol_errors);
    LOAD(dropped);
    LOAD(clients);
    LOAD(status_replies);
    LOAD(client_requests);
    LOAD(client_replies);
    LOAD(clients_closed);
#undef LOAD
}
