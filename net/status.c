/* The status payloads and the blocking status client; see status.h.
 *
 * The client is deliberately not the event loop: one query is one short
 * blocking conversation (connect, TLS, HELLOs, one request, one reply), so
 * it uses a non-blocking socket only to put one deadline on every step. Every
 * wait is a poll() bounded by that deadline, and the read loop is bounded in
 * rounds as well, so a node that trickles bytes cannot hold the client. */
#include "net/status.h"

#include "base/assert.h"
#include "base/buf.h"
#include "base/clock.h"
#include "net/frame.h"
#include "net/pki.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* ---- payloads -------------------------------------------------------------- */

void net_status_req_encode(uint32_t version, uint8_t out[NET_STATUS_REQ_BYTES])
{
    le_put_u32(out, version);
}

int net_status_req_decode(const uint8_t *p, size_t len, uint32_t *version)
{
    if (len != NET_STATUS_REQ_BYTES || le_get_u32(p) == 0)
        return -EBADMSG;
    *version = le_get_u32(p);
    return 0;
}

size_t net_status_reply_encode(const struct net_status_reply *r, uint32_t version,
                               uint8_t out[NET_STATUS_REPLY_BYTES])
{
    ASSERT(version == 1 || version == 2);
    le_put_u32(out, version);
    le_put_u32(out + 4, r->node);
    le_put_u32(out + 8, (uint32_t)r->role);
    le_put_u32(out + 12, r->leader);
    le_put_u64(out + 16, r->ballot);
    le_put_u64(out + 24, r->commit);
    le_put_u64(out + 32, r->applied);
    le_put_u64(out + 40, r->session);
    le_put_u32(out + 48, r->failed ? NET_STATUS_FLAG_FAILED : 0);
    if (version == 1)
        return NET_STATUS_REPLY_V1_BYTES;
    le_put_u32(out + 52, (uint32_t)r->xfer_state);
    le_put_u64(out + 56, r->snapshot_slot);
    le_put_u64(out + 64, r->log_first);
    le_put_u64(out + 72, r->xfer_bytes_done);
    le_put_u64(out + 80, r->xfer_bytes_total);
    le_put_u64(out + 88, r->xfer_rate);
    le_put_u64(out + 96, r->blocks_repaired);
    return NET_STATUS_REPLY_V2_BYTES;
}

int net_status_reply_decode(const uint8_t *p, size_t len, struct net_status_reply *out)
{
    if (len < NET_STATUS_REPLY_V1_BYTES)
        return -EBADMSG;
    uint32_t version = le_get_u32(p);
    if (!(version == 1 && len == NET_STATUS_REPLY_V1_BYTES) &&
        !(version == 2 && len == NET_STATUS_REPLY_V2_BYTES))
        return -EBADMSG;
    uint32_t node = le_get_u32(p + 4), role = le_get_u32(p + 8), flags = le_get_u32(p + 48);
    if (node == 0 || role > NET_STATUS_LEADER || (flags & ~NET_STATUS_FLAG_FAILED) != 0)
        return -EBADMSG;
    uint32_t xfer = version >= 2 ? le_get_u32(p + 52) : NET_STATUS_XFER_IDLE;
    if (xfer > NET_STATUS_XFER_INSTALL)
        return -EBADMSG;
    struct net_status_reply r;
    memset(&r, 0, sizeof r);
    r.version = version;
    r.node = node;
    r.role = (enum net_status_role)role;
    r.leader = le_get_u32(p + 12);
    r.ballot = le_get_u64(p + 16);
    r.commit = le_get_u64(p + 24);
    r.applied = le_get_u64(p + 32);
    r.session = le_get_u64(p + 40);
    r.failed = (flags & NET_STATUS_FLAG_FAILED) != 0;
    r.xfer_state = (enum net_status_xfer)xfer;
    if (version >= 2) {
        r.snapshot_slot = le_get_u64(p + 56);
        r.log_first = le_get_u64(p + 64);
        r.xfer_bytes_done = le_get_u64(p + 72);
        r.xfer_bytes_total = le_get_u64(p + 80);
        r.xfer_rate = le_get_u64(p + 88);
        r.blocks_repaired = le_get_u64(p + 96);
    }
    *out = r;
    return 0;
}

const char *net_status_role_name(enum net_status_role role)
{
    switch (role) {
    case NET_STATUS_FOLLOWER: return "follower";
    case NET_STATUS_CANDIDATE: return "candidate";
    case NET_STATUS_LEADER: return "leader";
    }
    return "unknown";
}

const char *net_status_xfer_name(enum net_status_xfer x)
{
    switch (x) {
    case NET_STATUS_XFER_IDLE: return "idle";
    case NET_STATUS_XFER_IMAGE: return "receiving-image";
    case NET_STATUS_XFER_BLOCKS: return "receiving-blocks";
    case NET_STATUS_XFER_INSTALL: return "installing";
    }
    return "unknown";
}

void net_status_xfer_note(const struct net_status_reply *r, char *out, size_t outlen)
{
    if (outlen == 0)
        return;
    out[0] = 0;
    if (r->version < 2 || r->xfer_state == NET_STATUS_XFER_IDLE)
        return;
    const uint64_t mib = 1u << 20;
    char total[32];
    if (r->xfer_bytes_total)
        snprintf(total, sizeof total, "%llu", (unsigned long long)(r->xfer_bytes_total / mib));
    else
        snprintf(total, sizeof total, "?");
    snprintf(out, outlen, "transfer %llu/%s MiB %llu MiB/s%s",
             (unsigned long long)(r->xfer_bytes_done / mib), total,
             (unsigned long long)(r->xfer_rate / mib),
             r->xfer_state == NET_STATUS_XFER_INSTALL ? " (installing)" : "");
}

void net_status_from_replica(const struct replica_status *st, uint32_t node,
                             struct net_status_reply *out)
{
    memset(out, 0, sizeof *out);
    out->node = node;
    out->role = st->role == PX_LEADER      ? NET_STATUS_LEADER
                : st->role == PX_CANDIDATE ? NET_STATUS_CANDIDATE
                                           : NET_STATUS_FOLLOWER;
    out->leader = st->leader;
    out->ballot = st->ballot;
    out->commit = st->commit;
    out->applied = st->applied;
    out->session = st->session;
    out->failed = st->failed;
    out->version = NET_STATUS_VERSION;
    out->snapshot_slot = st->snapshot_slot;
    out->log_first = st->log_first;
}

/* ---- the client ------------------------------------------------------------ */

/* SSL_read calls per conversation: HELLO and a status reply need 1 or 2; a
 * CLIENT_REPLY of up to 8 MiB one per TLS record (16 KiB), and the bound
 * allows records four times smaller than that. */
#define READ_ROUNDS_MAX 64
#define READ_ROUND_BYTES_MIN 4096u

struct net_status_client {
    struct cluster_config cc;
    SSL_CTX *ctx;
};

__attribute__((format(printf, 3, 4)))
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* client.crt must name this cluster's client and chain to the CA: a wrong
 * file is one clear local error rather than a refusal by every node. */
static int check_client_cert(struct net_status_client *c, const char *cert_path,
                             const char *ca_path, char *err, size_t errlen)
{
    X509 *cert = SSL_CTX_get0_certificate(c->ctx);
    uint8_t cluster[PKI_CLUSTER_ID_BYTES];
    if (!cert || pki_cert_client_identity(cert, cluster) != 0) {
        set_err(err, errlen, "%s is not a paxfs client certificate: use the client.crt that "
                "paxfs init wrote", cert_path);
        return -EACCES;
    }
    if (memcmp(cluster, c->cc.cluster_id, sizeof cluster) != 0) {
        set_err(err, errlen, "%s belongs to another cluster: use the client.crt made with this "
                "cluster.conf", cert_path);
        return -EACCES;
    }
    X509_STORE_CTX *vctx = X509_STORE_CTX_new();
    int ok = vctx && X509_STORE_CTX_init(vctx, SSL_CTX_get_cert_store(c->ctx), cert, NULL) == 1 &&
             X509_verify_cert(vctx) == 1;
    int verr = vctx ? X509_STORE_CTX_get_error(vctx) : X509_V_ERR_UNSPECIFIED;
    X509_STORE_CTX_free(vctx);
    ERR_clear_error();
    if (!ok) {
        set_err(err, errlen, "%s does not verify against %s (%s): use the files of one "
                "paxfs init", cert_path, ca_path, X509_verify_cert_error_string(verr));
        return -EACCES;
    }
    return 0;
}

int net_status_client_new(const struct cluster_config *cc, const char *dir,
                          struct net_status_client **out, char *err, size_t errlen)
{
    char ca[PATH_MAX], crt[PATH_MAX], key[PATH_MAX];
    int a = snprintf(ca, sizeof ca, "%s/ca.crt", dir);
    int b = snprintf(crt, sizeof crt, "%s/client.crt", dir);
    int k = snprintf(key, sizeof key, "%s/client.key", dir);
    if (a < 0 || b < 0 || k < 0 || (size_t)a >= sizeof ca || (size_t)b >= sizeof crt ||
        (size_t)k >= sizeof key) {
        set_err(err, errlen, "directory path %s is too long", dir);
        return -EINVAL;
    }
    struct stat st;
    const char *missing = stat(crt, &st) != 0 ? crt : stat(key, &st) != 0 ? key : NULL;
    if (missing) {
        int e = errno;
        if (e == ENOENT) {
            set_err(err, errlen, "no client certificate in %s: %s is missing (clusters made by "
                    "an older paxfs init have none; sign one with ca.key for the URI "
                    "paxfs:client:cluster:<id>, or create the cluster again)", dir, missing);
            return -ENOENT;
        }
        set_err(err, errlen, "cannot read %s: %s", missing, strerror(e));
        return -e;
    }
    struct net_status_client *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->cc = *cc;
    c->ctx = SSL_CTX_new(TLS_client_method());
    if (!c->ctx) {
        free(c);
        set_err(err, errlen, "cannot initialise TLS (OpenSSL)");
        return -ENOMEM;
    }
    SSL_CTX_set_min_proto_version(c->ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(c->ctx, TLS1_3_VERSION);
    SSL_CTX_set_session_cache_mode(c->ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_verify_depth(c->ctx, 2);
    char e[200];
    const char *what = NULL, *file = NULL;
    if (SSL_CTX_load_verify_locations(c->ctx, ca, NULL) != 1)
        what = "cannot load the CA certificate", file = ca;
    else if (SSL_CTX_use_certificate_chain_file(c->ctx, crt) != 1)
        what = "cannot load the client certificate", file = crt;
    else if (SSL_CTX_use_PrivateKey_file(c->ctx, key, SSL_FILETYPE_PEM) != 1)
        what = "cannot load the client key", file = key;
    else if (SSL_CTX_check_private_key(c->ctx) != 1)
        what = "the key does not match client.crt", file = key;
    int rc = 0;
    if (what) {
        set_err(err, errlen, "%s %s (%s): use the files paxfs init wrote", what, file,
                pki_ssl_error(e, sizeof e));
        rc = -EACCES;
    }
    if (rc == 0)
        rc = check_client_cert(c, crt, ca, err, errlen);
    if (rc) {
        net_status_client_free(c);
        return rc;
    }
    ERR_clear_error();
    *out = c;
    return 0;
}

void net_status_client_free(struct net_status_client *c)
{
    if (!c)
        return;
    SSL_CTX_free(c->ctx);
    free(c);
}

/* One conversation: its socket, TLS and deadline. */
struct query {
    int fd;
    SSL *ssl;
    uint64_t deadline_ns;
    uint32_t timeout_ms;
    char *err;
    size_t errlen;
};

/* Waits until fd is ready for `events` or the deadline passes. */
static int wait_fd(struct query *q, short events)
{
    for (int i = 0; i < 1000; i++) { /* EINTR retries; the deadline bounds the time */
        uint64_t now = clock_now_ns();
        if (now >= q->deadline_ns)
            break;
        uint64_t ms = (q->deadline_ns - now + 999999) / 1000000;
        struct pollfd p = {.fd = q->fd, .events = events};
        int r = poll(&p, 1, ms > INT_MAX ? INT_MAX : (int)ms);
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -errno;
    }
    set_err(q->err, q->errlen, "no answer within %u ms", q->timeout_ms);
    return -ETIMEDOUT;
}

static int dial(struct query *q, const struct config_node *addr)
{
    char serv[8];
    snprintf(serv, sizeof serv, "%u", addr->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    if (getaddrinfo(addr->host, serv, &hints, &res) != 0 || !res) {
        set_err(q->err, q->errlen, "cannot resolve host %s", addr->host);
        return -EHOSTUNREACH;
    }
    q->fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int rc = q->fd < 0 ? -errno : 0;
    if (rc == 0 && connect(q->fd, res->ai_addr, res->ai_addrlen) != 0 && errno != EINPROGRESS)
        rc = -errno;
    freeaddrinfo(res);
    if (rc == 0) {
        rc = wait_fd(q, POLLOUT);
        if (rc == -ETIMEDOUT)
            return rc;
    }
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (rc == 0 && getsockopt(q->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr)
        rc = -soerr;
    if (rc) {
        set_err(q->err, q->errlen, "cannot connect: %s", strerror(-rc));
        return rc == -ECONNREFUSED ? -ECONNREFUSED : -EHOSTUNREACH;
    }
    return 0;
}

/* Why TLS operation result r failed, and the errno it maps to. */
static int tls_failure(struct query *q, int r, const char *during)
{
    int err = SSL_get_error(q->ssl, r);
    long verify = SSL_get_verify_result(q->ssl);
    unsigned long e = ERR_peek_error();
    int rc;
    if (verify != X509_V_OK) {
        set_err(q->err, q->errlen, "the node's certificate is rejected: %s",
                X509_verify_cert_error_string(verify));
        rc = -EACCES;
    } else if (err == SSL_ERROR_SSL) {
        const char *why = e ? ERR_reason_error_string(e) : NULL;
        set_err(q->err, q->errlen, "TLS failed %s: %s (does the node accept this client.crt?)",
                during, why ? why : "error");
        rc = -EACCES;
    } else {
        set_err(q->err, q->errlen, "connection closed %s", during);
        rc = -ENOTCONN;
    }
    ERR_clear_error();
    return rc;
}

/* Drives one TLS operation (handshake, write or read) through WANT_*
 * waits until it makes progress, fails or the deadline passes. */
static int tls_op(struct query *q, int (*op)(SSL *, void *, int), void *p, int len,
                  const char *during)
{
    for (int i = 0; i < 10000; i++) {
        ERR_clear_error();
        errno = 0;
        int r = op(q->ssl, p, len);
        if (r > 0)
            return r;
        int err = SSL_get_error(q->ssl, r);
        if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE)
            return tls_failure(q, r, during);
        int w = wait_fd(q, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT);
        if (w)
            return w;
    }
    set_err(q->err, q->errlen, "TLS made no progress %s", during);
    return -ETIMEDOUT;
}

static int op_handshake(SSL *ssl, void *p, int len)
{
    (void)p, (void)len;
    return SSL_do_handshake(ssl);
}
static int op_write(SSL *ssl, void *p, int len) { return SSL_write(ssl, p, len); }
static int op_read(SSL *ssl, void *p, int len) { return SSL_read(ssl, p, len); }

/* The node's certificate must name node `node` of this cluster. */
static int check_node_cert(struct net_status_client *c, struct query *q, uint32_t node)
{
    X509 *cert = SSL_get0_peer_certificate(q->ssl);
    uint32_t k;
    uint8_t cluster[PKI_CLUSTER_ID_BYTES];
    if (!cert || SSL_get_verify_result(q->ssl) != X509_V_OK ||
        pki_cert_identity(cert, &k, cluster) != 0) {
        set_err(q->err, q->errlen, "the node presents no paxfs node certificate");
        return -EACCES;
    }
    if (k != node || memcmp(cluster, c->cc.cluster_id, sizeof cluster) != 0) {
        set_err(q->err, q->errlen, "the node at this address is node %u%s, not node %u", k,
                memcmp(cluster, c->cc.cluster_id, sizeof cluster) ? " of another cluster" : "",
                node);
        return -EACCES;
    }
    return 0;
}

/* What one conversation sends and what answer it waits for. */
struct exchange {
    uint8_t req_type;
    const void *req;
    size_t req_len;
    uint8_t reply_type;
    size_t reply_max;
    /* Takes the reply frame's payload: 0 done, -EBADMSG (with err set). */
    int (*take)(struct query *q, const uint8_t *p, size_t len, void *arg);
    void *arg;
};

/* Reads frames until the node's HELLO and then its answer arrive. */
static int read_answer(struct net_status_client *c, struct query *q, uint32_t node,
                       const struct exchange *x)
{
    struct net_frame_rx rx;
    net_frame_rx_init(&rx);
    net_frame_rx_set_payload_max(&rx, x->reply_max);
    bool hello = false;
    int rc = 1; /* 1: still waiting */
    const int rounds = READ_ROUNDS_MAX + (int)(x->reply_max / READ_ROUND_BYTES_MIN);
    for (int round = 0; rc == 1 && round < rounds; round++) {
        uint8_t *p;
        size_t room;
        net_frame_rx_space(&rx, &p, &room);
        int r = tls_op(q, op_read, p, room > INT_MAX ? INT_MAX : (int)room,
                       hello ? "before the answer" : "before the node's HELLO");
        if (r < 0) {
            /* Closed before HELLO: the node refused this client. */
            rc = !hello && r == -ENOTCONN ? -EACCES : r;
            if (!hello && r == -ENOTCONN)
                set_err(q->err, q->errlen, "the node closed the connection before its HELLO "
                        "(it refused this client: is client.crt of this cluster?)");
            break;
        }
        net_frame_rx_commit(&rx, (size_t)r);
        struct net_frame f;
        int got = 0;
        while (rc == 1 && (got = net_frame_rx_next(&rx, &f)) == 1) {
            struct net_hello h;
            if (!hello) {
                if (f.type != NET_FRAME_HELLO || net_hello_decode(f.payload, f.len, &h) != 0 ||
                    h.node != node ||
                    memcmp(h.cluster_id, c->cc.cluster_id, sizeof h.cluster_id) != 0) {
                    set_err(q->err, q->errlen, "the node's first frame is not its HELLO");
                    rc = -EBADMSG;
                    break;
                }
                hello = true;
                continue;
            }
            if (f.type != x->reply_type) {
                set_err(q->err, q->errlen, "the node answered with frame type %u, not %u",
                        f.type, x->reply_type);
                rc = -EBADMSG;
                break;
            }
            rc = x->take(q, f.payload, f.len, x->arg);
        }
        if (rc == 1 && got < 0) {
            set_err(q->err, q->errlen, "malformed frame from the node (or an answer over "
                    "%zu bytes)", x->reply_max);
            rc = -EBADMSG;
        }
    }
    net_frame_rx_deinit(&rx);
    if (rc == 1) {
        set_err(q->err, q->errlen, "the node sent no answer within %d reads", rounds);
        rc = -EBADMSG;
    }
    return rc;
}

/* Dial, TLS, the node's certificate, then HELLO(0) and the request in one
 * write (one round trip after TLS), then the answer. */
static int converse(struct net_status_client *c, struct query *q, uint32_t node,
                    const struct exchange *x)
{
    int rc = dial(q, &c->cc.nodes[node]);
    if (rc)
        return rc;
    q->ssl = SSL_new(c->ctx);
    if (!q->ssl || SSL_set_fd(q->ssl, q->fd) != 1) {
        set_err(q->err, q->errlen, "cannot set up TLS (OpenSSL)");
        return -ENOMEM;
    }
    SSL_set_connect_state(q->ssl);
    rc = tls_op(q, op_handshake, NULL, 0, "during the handshake");
    if (rc < 0)
        return rc;
    rc = check_node_cert(c, q, node);
    if (rc)
        return rc;
    struct buf msg;
    buf_init(&msg);
    struct net_hello h = {.node = NET_HELLO_NODE_CLIENT};
    memcpy(h.cluster_id, c->cc.cluster_id, sizeof h.cluster_id);
    uint8_t *p = buf_append_space(&msg, 2 * NET_FRAME_HEADER_BYTES + NET_HELLO_BYTES);
    net_frame_header_encode(p, NET_FRAME_HELLO, NET_HELLO_BYTES);
    net_hello_encode(&h, p + NET_FRAME_HEADER_BYTES);
    net_frame_header_encode(p + NET_FRAME_HEADER_BYTES + NET_HELLO_BYTES, x->req_type,
                            (uint32_t)x->req_len);
    buf_put(&msg, x->req, x->req_len);
    size_t off = 0;
    rc = 0;
    /* without SSL_MODE_ENABLE_PARTIAL_WRITE a write is all or nothing */
    for (int i = 0; rc == 0 && off < msg.len && i < 16; i++) {
        size_t chunk = MIN(msg.len - off, (size_t)INT_MAX);
        int w = tls_op(q, op_write, msg.data + off, (int)chunk, "while asking");
        if (w < 0)
            rc = w;
        else
            off += (size_t)w;
    }
    bool sent = off == msg.len;
    buf_deinit(&msg);
    if (rc < 0)
        return rc;
    if (!sent) {
        set_err(q->err, q->errlen, "cannot send the request");
        return -ENOTCONN;
    }
    return read_answer(c, q, node, x);
}

/* Runs one conversation with the node, from dial to close. */
static int conversation(struct net_status_client *c, uint32_t node, uint32_t timeout_ms,
                        const struct exchange *x, char *err, size_t errlen)
{
    if (node < 1 || node > c->cc.n_nodes) {
        set_err(err, errlen, "node %u is not in the cluster (it has nodes 1..%u)", node,
                c->cc.n_nodes);
        return -EINVAL;
    }
    /* A write to a connection the node reset would raise SIGPIPE: block it
     * in this thread for the call, and take back one that we caused. */
    sigset_t pipe_set, old_set, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
    sigpending(&pending);
    bool was_pending = sigismember(&pending, SIGPIPE) == 1;

    struct query q = {.fd = -1, .deadline_ns = clock_now_ns() + (uint64_t)timeout_ms * 1000000ull,
                      .timeout_ms = timeout_ms, .err = err, .errlen = errlen};
    int rc = converse(c, &q, node, x);
    if (q.ssl && rc == 0) {
        ERR_clear_error();
        SSL_shutdown(q.ssl); /* best effort close_notify; never waits */
    }
    SSL_free(q.ssl);
    if (q.fd >= 0)
        close(q.fd);
    ERR_clear_error();

    sigpending(&pending);
    if (!was_pending && sigismember(&pending, SIGPIPE) == 1) {
        struct timespec zero = {0, 0};
        sigtimedwait(&pipe_set, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &old_set, NULL);
    return rc;
}

struct status_take {
    uint32_t node;
    struct net_status_reply rep;
};

static int take_status(struct query *q, const uint8_t *p, size_t len, void *arg)
{
    struct status_take *t = arg;
    struct net_status_reply rep;
    if (net_status_reply_decode(p, len, &rep) != 0 || rep.node != t->node ||
        rep.version > NET_STATUS_VERSION) {
        set_err(q->err, q->errlen, "malformed status reply (%zu bytes)", len);
        return -EBADMSG;
    }
    t->rep = rep;
    return 0;
}

int net_status_query(struct net_status_client *c, uint32_t node, uint32_t timeout_ms,
                     struct net_status_reply *out, char *err, size_t errlen)
{
    uint8_t req[NET_STATUS_REQ_BYTES];
    net_status_req_encode(NET_STATUS_VERSION, req);
    struct status_take t = {.node = node};
    struct exchange x = {.req_type = NET_FRAME_STATUS_REQ, .req = req, .req_len = sizeof req,
                         .reply_type = NET_FRAME_STATUS_REPLY,
                         .reply_max = NET_STATUS_REPLY_BYTES, .take = take_status, .arg = &t};
    int rc = conversation(c, node, timeout_ms, &x, err, errlen);
    if (rc == -ECONNREFUSED || rc == -EHOSTUNREACH)
        rc = -ENOTCONN; /* this call's contract predates the finer codes */
    if (rc == 0)
        *out = t.rep;
    return rc;
}

static int take_reply(struct query *q, const uint8_t *p, size_t len, void *arg)
{
    (void)q;
    buf_put(arg, p, len);
    return 0;
}

int net_status_client_request_err(struct net_status_client *c, uint32_t node,
                                  uint32_t timeout_ms, const void *req, size_t len,
                                  struct buf *reply, char *err, size_t errlen)
{
    if (len > NET_CLIENT_REQ_MAX) {
        set_err(err, errlen, "request of %zu bytes is over the limit of %u", len,
                NET_CLIENT_REQ_MAX);
        return -EMSGSIZE;
    }
    struct exchange x = {.req_type = NET_FRAME_CLIENT_REQ, .req = req, .req_len = len,
                         .reply_type = NET_FRAME_CLIENT_REPLY,
                         .reply_max = NET_CLIENT_REPLY_MAX, .take = take_reply, .arg = reply};
    int rc = conversation(c, node, timeout_ms, &x, err, errlen);
    if (rc == -ENOTCONN) /* connected, authenticated, then closed on us */
        rc = -ECONNRESET;
    return rc;
}

int net_status_client_request(struct net_status_client *c, uint32_t node, uint32_t timeout_ms,
                              const void *req, size_t len, struct buf *reply)
{
    return net_status_client_request_err(c, node, timeout_ms, req, len, reply, NULL, 0);
}
