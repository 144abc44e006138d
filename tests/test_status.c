/* Tests of the operator's status query (net/status.h): the client identity
 * (net/pki.h), the STATUS_REQ/STATUS_REPLY codec, the acceptor's handling of
 * client connections (net/net.h, Clients) and `paxfs init`'s client.crt.
 *
 * Two real transports (nodes 1 and 2) run over loopback TLS on kernel-picked
 * ports with a fixed on_status; the honest client is net_status_query, the
 * dishonest ones are written here with plain OpenSSL: a client certificate
 * of another cluster or another CA, a client that lies in its HELLO, sends a
 * consensus frame or garbage, or never reads its replies. After each attack
 * the two nodes must still talk to each other and answer an honest query.
 * tests/test_status.sh checks `paxfs status` against running replicas. */
#include "net/net.h"
#include "net/frame.h"
#include "net/pki.h"
#include "net/status.h"

#include "base/clock.h"
#include "base/log.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

extern char **environ;

#define SEC 1000000000ull

/* ------------------------------------------------------------ log capture */

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char logbuf[1 << 16];
static size_t loglen;

static void capture_sink(void *ctx, enum log_level level, const char *line)
{
    (void)ctx, (void)level;
    pthread_mutex_lock(&log_mu);
    size_t n = strlen(line);
    if (loglen + n + 2 > sizeof logbuf)
        loglen = 0;
    memcpy(logbuf + loglen, line, n);
    logbuf[loglen + n] = '\n';
    loglen += n + 1;
    logbuf[loglen] = '\0';
    pthread_mutex_unlock(&log_mu);
    if (getenv("STATUS_TEST_VERBOSE"))
        fprintf(stderr, "%s\n", line);
}

static bool log_has(const char *s)
{
    pthread_mutex_lock(&log_mu);
    bool found = strstr(logbuf, s) != NULL;
    pthread_mutex_unlock(&log_mu);
    return found;
}

/* ------------------------------------------------------------ PKI fixture */

static char root[64];
static uint8_t cluster_id[16] = {0x73, 0x74, 0x61, 0x74, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
static uint8_t alien_id[16];

static void write_pair(const char *dir, const char *stem, X509 *cert, EVP_PKEY *key)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s.crt", dir, stem);
    cr_assert_eq(pki_write_cert(path, cert, 0644), 0);
    snprintf(path, sizeof path, "%s/%s.key", dir, stem);
    cr_assert_eq(pki_write_key(path, key, 0600), 0);
}

/* node > 0: a node certificate; 0: a client certificate. */
static void make_cert(const char *stem, X509 *ca, EVP_PKEY *ca_key, uint32_t node,
                      const uint8_t *cid)
{
    time_t now = time(NULL);
    EVP_PKEY *key = pki_key_new();
    cr_assert_not_null(key);
    X509 *cert = node ? pki_node_cert_new(ca, ca_key, key, node, cid, now - 3600, now + 86400)
                      : pki_client_cert_new(ca, ca_key, key, cid, now - 3600, now + 86400);
    cr_assert_not_null(cert);
    write_pair(root, stem, cert, key);
    X509_free(cert);
    EVP_PKEY_free(key);
}

/* root/: ca, node1, node2, client (the cluster); alien-client (our CA,
 * another cluster id); foreign-client (another CA, our cluster id). */
static void setup(void)
{
    signal(SIGPIPE, SIG_IGN);
    log_set_sink(capture_sink, NULL);
    snprintf(root, sizeof root, "/tmp/paxfs-test-status.XXXXXX");
    cr_assert_not_null(mkdtemp(root));
    memcpy(alien_id, cluster_id, 16);
    alien_id[15] ^= 0xff;
    time_t now = time(NULL);
    EVP_PKEY *ca_key = pki_key_new();
    X509 *ca = pki_ca_new(ca_key, cluster_id, now - 3600, now + 86400);
    cr_assert_not_null(ca);
    write_pair(root, "ca", ca, ca_key);
    make_cert("node1", ca, ca_key, 1, cluster_id);
    make_cert("node2", ca, ca_key, 2, cluster_id);
    make_cert("client", ca, ca_key, 0, cluster_id);
    make_cert("alien-client", ca, ca_key, 0, alien_id);
    EVP_PKEY *other_key = pki_key_new();
    X509 *other = pki_ca_new(other_key, cluster_id, now - 3600, now + 86400);
    make_cert("foreign-client", other, other_key, 0, cluster_id);
    X509_free(other);
    EVP_PKEY_free(other_key);
    X509_free(ca);
    EVP_PKEY_free(ca_key);
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", root);
    log_set_sink(NULL, NULL);
}

TestSuite(status, .init = setup, .fini = teardown, .timeout = 90);

/* ------------------------------------------------------------ two nodes */

struct node {
    struct net *net;
    uint32_t id;
    pthread_mutex_t mu;
    uint64_t frames; /* PX frames received from the other node */
};

static int fixed_status(void *ctx, struct net_status_reply *out)
{
    struct node *nd = ctx;
    out->node = 99; /* net overwrites it with the real id */
    out->role = nd->id == 1 ? NET_STATUS_LEADER : NET_STATUS_FOLLOWER;
    out->leader = 1;
    out->ballot = (7ull << 16) | 1;
    out->commit = 42;
    out->applied = 40 + nd->id;
    out->session = 1000 + nd->id;
    out->snapshot_slot = 40;
    out->log_first = 31;
    out->xfer_state = NET_STATUS_XFER_IMAGE;
    out->xfer_bytes_done = 5u << 20;
    out->xfer_bytes_total = 50u << 20;
    out->xfer_rate = 1u << 20;
    out->blocks_repaired = 2;
    return 0;
}

static void count_frame(void *ctx, uint32_t from, uint8_t type, const uint8_t *p, size_t len)
{
    struct node *nd = ctx;
    (void)from, (void)p, (void)len;
    pthread_mutex_lock(&nd->mu);
    nd->frames += type == NET_FRAME_PX;
    pthread_mutex_unlock(&nd->mu);
}

static struct node nodes[3];
static struct cluster_config cc; /* what the client dials */

/* Nodes 1 and 2 running; on_status NULL on node 2 when `serve2` is false. */
static void start_nodes(bool serve2)
{
    for (uint32_t k = 1; k <= 2; k++) {
        struct node *nd = &nodes[k];
        memset(nd, 0, sizeof *nd);
        pthread_mutex_init(&nd->mu, NULL);
        nd->id = k;
        struct net_config c;
        net_config_defaults(&c);
        c.id = k;
        c.n_nodes = 2;
        for (uint32_t j = 1; j <= 2; j++)
            snprintf(c.addrs[j].host, sizeof c.addrs[j].host, "127.0.0.1");
        memcpy(c.cluster_id, cluster_id, 16);
        snprintf(c.ca_path, sizeof c.ca_path, "%s/ca.crt", root);
        snprintf(c.cert_path, sizeof c.cert_path, "%s/node%u.crt", root, k);
        snprintf(c.key_path, sizeof c.key_path, "%s/node%u.key", root, k);
        c.handshake_timeout_ms = 2000;
        c.on_frame = count_frame;
        c.on_status = (k == 1 || serve2) ? fixed_status : NULL;
        c.ctx = nd;
        cr_assert_eq(net_new(&c, &nd->net), 0);
    }
    memset(&cc, 0, sizeof cc);
    memcpy(cc.cluster_id, cluster_id, 16);
    cc.n_nodes = 2;
    for (uint32_t k = 1; k <= 2; k++) {
        snprintf(cc.nodes[k].host, sizeof cc.nodes[k].host, "127.0.0.1");
        cc.nodes[k].port = net_port(nodes[k].net);
    }
    cr_assert_eq(net_set_peer_addr(nodes[1].net, 2, "127.0.0.1", cc.nodes[2].port), 0);
    cr_assert_eq(net_set_peer_addr(nodes[2].net, 1, "127.0.0.1", cc.nodes[1].port), 0);
    cr_assert_eq(net_start(nodes[1].net), 0);
    cr_assert_eq(net_start(nodes[2].net), 0);
}

static void stop_nodes(void)
{
    for (uint32_t k = 1; k <= 2; k++) {
        net_free(nodes[k].net);
        nodes[k].net = NULL;
        pthread_mutex_destroy(&nodes[k].mu);
    }
}

static struct net_stats stats_of(uint32_t k)
{
    struct net_stats s;
    net_get_stats(nodes[k].net, &s);
    return s;
}

static uint64_t frames_of(uint32_t k)
{
    pthread_mutex_lock(&nodes[k].mu);
    uint64_t n = nodes[k].frames;
    pthread_mutex_unlock(&nodes[k].mu);
    return n;
}

/* Node 1 sends node 2 one frame once the link is up; true if it arrives. */
static bool peers_still_talk(void)
{
    uint64_t deadline = clock_now_ns() + 10 * SEC;
    while (!net_peer_up(nodes[1].net, 2) && clock_now_ns() < deadline)
        usleep(2000);
    uint64_t before = frames_of(2);
    uint8_t payload[32] = {1};
    if (net_send(nodes[1].net, 2, payload, sizeof payload) != 0)
        return false;
    while (frames_of(2) == before && clock_now_ns() < deadline)
        usleep(2000);
    return frames_of(2) > before;
}

static struct net_status_client *honest_client(void)
{
    struct net_status_client *c;
    char err[512];
    int rc = net_status_client_new(&cc, root, &c, err, sizeof err);
    cr_assert_eq(rc, 0, "%s", err);
    return c;
}

static void expect_status(struct net_status_client *c, uint32_t k)
{
    struct net_status_reply r;
    char err[256] = "";
    int rc = net_status_query(c, k, 3000, &r, err, sizeof err);
    cr_assert_eq(rc, 0, "node %u: %d %s", k, rc, err);
    cr_assert_eq(r.node, k);
    cr_assert_eq(r.role, k == 1 ? NET_STATUS_LEADER : NET_STATUS_FOLLOWER);
    cr_assert_eq(r.leader, 1);
    cr_assert_eq(r.ballot, (7ull << 16) | 1);
    cr_assert_eq(r.commit, 42);
    cr_assert_eq(r.applied, 40 + k);
    cr_assert_eq(r.session, 1000 + k);
    cr_assert(!r.failed);
    cr_assert_eq(r.version, NET_STATUS_VERSION);
    cr_assert_eq(r.snapshot_slot, 40);
    cr_assert_eq(r.log_first, 31);
    cr_assert_eq(r.xfer_state, NET_STATUS_XFER_IMAGE);
    cr_assert_eq(r.xfer_bytes_done, 5u << 20);
    cr_assert_eq(r.xfer_bytes_total, 50u << 20);
    cr_assert_eq(r.xfer_rate, 1u << 20);
    cr_assert_eq(r.blocks_repaired, 2);
}

/* ------------------------------------------------------------ raw clients */

struct raw {
    SSL_CTX *ctx;
    SSL *ssl;
    int fd;
};

/* A TLS 1.3 client presenting stem's certificate that checks nothing of
 * the node: it wants to reach the node's checks. rcvbuf: the client's
 * receive buffer, set before it connects so that TCP sizes the window it
 * offers from it (0: the default). Shrunk after the
 * connection is up, it left both ends believing the other's window closed
 * now and then (seen on a loaded machine: the node had read everything,
 * the client's writes stalled for seconds between zero-window probes). */
static bool raw_dial_rcvbuf(struct raw *t, uint16_t port, const char *stem, int rcvbuf)
{
    t->ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(t->ctx, TLS1_3_VERSION);
    SSL_CTX_set_verify(t->ctx, SSL_VERIFY_NONE, NULL);
    char path[256];
    snprintf(path, sizeof path, "%s/%s.crt", root, stem);
    cr_assert_eq(SSL_CTX_use_certificate_file(t->ctx, path, SSL_FILETYPE_PEM), 1);
    snprintf(path, sizeof path, "%s/%s.key", root, stem);
    cr_assert_eq(SSL_CTX_use_PrivateKey_file(t->ctx, path, SSL_FILETYPE_PEM), 1);
    t->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(t->fd, 0);
    struct timeval tv = {.tv_sec = 3};
    setsockopt(t->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(t->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (rcvbuf > 0)
        setsockopt(t->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(t->fd, (struct sockaddr *)&a, sizeof a), 0);
    t->ssl = SSL_new(t->ctx);
    SSL_set_fd(t->ssl, t->fd);
    return SSL_connect(t->ssl) == 1;
}

static bool raw_dial(struct raw *t, uint16_t port, const char *stem)
{
    return raw_dial_rcvbuf(t, port, stem, 0);
}

static void raw_close(struct raw *t)
{
    SSL_free(t->ssl);
    SSL_CTX_free(t->ctx);
    close(t->fd);
    ERR_clear_error();
}

static bool raw_write(struct raw *t, const void *p, size_t len)
{
    return SSL_write(t->ssl, p, (int)len) == (int)len; /* the node may have hung up */
}

static void raw_frame(struct raw *t, uint8_t type, const void *payload, size_t len)
{
    uint8_t f[NET_FRAME_HEADER_BYTES + 256];
    cr_assert_leq(len, 256u);
    net_frame_header_encode(f, type, (uint32_t)len);
    memcpy(f + NET_FRAME_HEADER_BYTES, payload, len);
    raw_write(t, f, NET_FRAME_HEADER_BYTES + len);
}

static void raw_hello(struct raw *t, uint32_t node, const uint8_t *cid)
{
    uint8_t h[NET_HELLO_BYTES];
    struct net_hello hello = {.node = node};
    memcpy(hello.cluster_id, cid, 16);
    net_hello_encode(&hello, h);
    raw_frame(t, NET_FRAME_HELLO, h, sizeof h);
}

/* Reads until the node closes (or 3 s pass); true if it closed. */
static bool raw_until_closed(struct raw *t)
{
    uint8_t b[4096];
    for (int i = 0; i < 1000; i++) {
        int r = SSL_read(t->ssl, b, sizeof b);
        if (r <= 0) {
            int err = SSL_get_error(t->ssl, r);
            return !(err == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EWOULDBLOCK));
        }
    }
    return false;
}

static bool wait_stat(uint32_t k, uint64_t refused, uint64_t protocol_errors)
{
    uint64_t deadline = clock_now_ns() + 5 * SEC;
    for (;;) {
        struct net_stats s = stats_of(k);
        if (s.refused >= refused && s.protocol_errors >= protocol_errors)
            return true;
        if (clock_now_ns() >= deadline)
            return false;
        usleep(2000);
    }
}

/* ------------------------------------------------------------ the codec */

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static struct net_status_reply sample_v2(void)
{
    return (struct net_status_reply){
        .node = 3, .role = NET_STATUS_CANDIDATE, .leader = 0, .ballot = UINT64_MAX,
        .commit = 5, .applied = 4, .session = 77, .failed = true,
        .snapshot_slot = 1000, .log_first = 901, .xfer_state = NET_STATUS_XFER_BLOCKS,
        .xfer_bytes_done = 123ull << 20, .xfer_bytes_total = 456ull << 20,
        .xfer_rate = 210ull << 20, .blocks_repaired = 9};
}

Test(status, reply_round_trips_and_the_decoders_reject_bad_bytes)
{
    struct net_status_reply r = sample_v2();
    uint8_t b[NET_STATUS_REPLY_BYTES];
    cr_assert_eq(net_status_reply_encode(&r, 1, b), NET_STATUS_REPLY_V1_BYTES);
    struct net_status_reply d;
    cr_assert_eq(net_status_reply_decode(b, NET_STATUS_REPLY_V1_BYTES, &d), 0);
    cr_assert_eq(d.version, 1);
    cr_assert_eq(d.node, 3);
    cr_assert_eq(d.role, NET_STATUS_CANDIDATE);
    cr_assert_eq(d.ballot, UINT64_MAX);
    cr_assert_eq(d.commit, 5);
    cr_assert_eq(d.applied, 4);
    cr_assert_eq(d.session, 77);
    cr_assert(d.failed);
    cr_assert_eq(d.snapshot_slot, 0, "a v1 reply has no snapshot fields");
    cr_assert_eq(d.xfer_state, NET_STATUS_XFER_IDLE);

    const size_t v1 = NET_STATUS_REPLY_V1_BYTES;
    cr_assert_eq(net_status_reply_decode(b, v1 - 1, &d), -EBADMSG, "short");
    uint8_t longer[NET_STATUS_REPLY_BYTES + 1] = {0};
    memcpy(longer, b, v1);
    cr_assert_eq(net_status_reply_decode(longer, v1 + 1, &d), -EBADMSG, "long");
    cr_assert_eq(net_status_reply_decode(longer, NET_STATUS_REPLY_V2_BYTES, &d), -EBADMSG,
                 "a v1 reply with v2's length");
    uint8_t bad[NET_STATUS_REPLY_BYTES];
    memcpy(bad, b, v1);
    bad[0] = 3; /* version */
    cr_assert_eq(net_status_reply_decode(bad, v1, &d), -EBADMSG);
    bad[0] = 2; /* v2 needs v2's length */
    cr_assert_eq(net_status_reply_decode(bad, v1, &d), -EBADMSG);
    memcpy(bad, b, v1);
    memset(bad + 4, 0, 4); /* node 0 */
    cr_assert_eq(net_status_reply_decode(bad, v1, &d), -EBADMSG);
    memcpy(bad, b, v1);
    bad[8] = 3; /* role */
    cr_assert_eq(net_status_reply_decode(bad, v1, &d), -EBADMSG);
    memcpy(bad, b, v1);
    bad[48] |= 2; /* unknown flag */
    cr_assert_eq(net_status_reply_decode(bad, v1, &d), -EBADMSG);

    uint8_t q[NET_STATUS_REQ_BYTES];
    uint32_t v;
    net_status_req_encode(1, q);
    cr_assert_eq(net_status_req_decode(q, sizeof q, &v), 0);
    cr_assert_eq(v, 1);
    cr_assert_eq(net_status_req_decode(q, 3, &v), -EBADMSG);
    net_status_req_encode(0, q);
    cr_assert_eq(net_status_req_decode(q, sizeof q, &v), -EBADMSG);
}

Test(status, a_v2_reply_round_trips_with_its_snapshot_and_transfer_fields)
{
    struct net_status_reply r = sample_v2();
    uint8_t b[NET_STATUS_REPLY_BYTES];
    cr_assert_eq(net_status_reply_encode(&r, 2, b), NET_STATUS_REPLY_V2_BYTES);
    struct net_status_reply d;
    cr_assert_eq(net_status_reply_decode(b, NET_STATUS_REPLY_V2_BYTES, &d), 0);
    cr_assert_eq(d.version, 2);
    cr_assert_eq(d.node, 3);
    cr_assert_eq(d.ballot, UINT64_MAX);
    cr_assert(d.failed);
    cr_assert_eq(d.snapshot_slot, 1000);
    cr_assert_eq(d.log_first, 901);
    cr_assert_eq(d.xfer_state, NET_STATUS_XFER_BLOCKS);
    cr_assert_eq(d.xfer_bytes_done, 123ull << 20);
    cr_assert_eq(d.xfer_bytes_total, 456ull << 20);
    cr_assert_eq(d.xfer_rate, 210ull << 20);
    cr_assert_eq(d.blocks_repaired, 9);
    /* and encodes back to the same bytes: the fuzz target's canonical check */
    uint8_t again[NET_STATUS_REPLY_BYTES];
    cr_assert_eq(net_status_reply_encode(&d, d.version, again), NET_STATUS_REPLY_V2_BYTES);
    cr_assert_eq(memcmp(again, b, NET_STATUS_REPLY_V2_BYTES), 0);

    char note[96];
    net_status_xfer_note(&d, note, sizeof note);
    cr_assert_str_eq(note, "transfer 123/456 MiB 210 MiB/s");
    d.xfer_bytes_total = 0;
    net_status_xfer_note(&d, note, sizeof note);
    cr_assert_str_eq(note, "transfer 123/? MiB 210 MiB/s");
    d.xfer_state = NET_STATUS_XFER_IDLE;
    net_status_xfer_note(&d, note, sizeof note);
    cr_assert_str_eq(note, "");
    cr_assert_str_eq(net_status_xfer_name(NET_STATUS_XFER_IMAGE), "receiving-image");
}

Test(status, v2_decoder_rejects_flipped_checked_bytes_and_wrong_lengths)
{
    struct net_status_reply r = sample_v2();
    uint8_t b[NET_STATUS_REPLY_BYTES], bad[NET_STATUS_REPLY_BYTES + 1];
    const size_t v2 = NET_STATUS_REPLY_V2_BYTES;
    net_status_reply_encode(&r, 2, b);
    struct net_status_reply d;
    /* every bit of the checked fields (version, role, flags, transfer
     * state): rejected unless the flip happens to make another valid value
     * (a flipped counter is a different valid value: TLS guards those) */
    static const size_t checked[] = {0, 1, 2, 3, 8, 9, 10, 11, 48, 49, 50, 51, 52, 53, 54, 55};
    int rejected = 0;
    for (size_t i = 0; i < sizeof checked / sizeof checked[0]; i++)
        for (int bit = 0; bit < 8; bit++) {
            memcpy(bad, b, v2);
            bad[checked[i]] ^= (uint8_t)(1u << bit);
            uint32_t version = le32(bad), role = le32(bad + 8), flags = le32(bad + 48),
                     xfer = le32(bad + 52);
            bool valid = version == 2 && role <= NET_STATUS_LEADER &&
                         (flags & ~NET_STATUS_FLAG_FAILED) == 0 && xfer <= NET_STATUS_XFER_INSTALL;
            int rc = net_status_reply_decode(bad, v2, &d);
            cr_assert_eq(rc, valid ? 0 : -EBADMSG, "byte %zu bit %d", checked[i], bit);
            rejected += rc != 0;
        }
    cr_assert_geq(rejected, 16 * 8 - 4);
    memcpy(bad, b, v2);
    memset(bad + 4, 0, 4);
    cr_assert_eq(net_status_reply_decode(bad, v2, &d), -EBADMSG, "node 0");
    cr_assert_eq(net_status_reply_decode(b, v2 - 1, &d), -EBADMSG, "short");
    memcpy(bad, b, v2);
    bad[v2] = 0;
    cr_assert_eq(net_status_reply_decode(bad, v2 + 1, &d), -EBADMSG, "long");
    cr_assert_eq(net_status_reply_decode(b, NET_STATUS_REPLY_V1_BYTES, &d), -EBADMSG,
                 "a v2 reply cut to v1's length");
}

Test(status, a_client_identity_is_never_a_node_identity_and_back)
{
    char path[256];
    snprintf(path, sizeof path, "%s/client.crt", root);
    X509 *client = pki_read_cert(path);
    snprintf(path, sizeof path, "%s/node1.crt", root);
    X509 *node = pki_read_cert(path);
    cr_assert(client && node);
    uint32_t k;
    uint8_t cid[16];
    cr_assert_eq(pki_cert_identity(client, &k, cid), -EACCES);
    cr_assert_eq(pki_cert_client_identity(node, cid), -EACCES);
    cr_assert_eq(pki_cert_client_identity(client, cid), 0);
    cr_assert_eq(memcmp(cid, cluster_id, 16), 0);
    char uri[PKI_URI_BYTES];
    pki_client_uri(cluster_id, uri);
    cr_assert_str_eq(uri, "paxfs:client:cluster:737461740102030405060708090a0b0c");
    X509_free(client);
    X509_free(node);
}

/* ------------------------------------------------------------ the node */

Test(status, a_node_answers_the_client_identity_with_its_status)
{
    start_nodes(true);
    struct net_status_client *c = honest_client();
    expect_status(c, 1);
    expect_status(c, 2);
    /* more queries than NET_CLIENTS_MAX: each is its own connection */
    for (int i = 0; i < 2 * NET_CLIENTS_MAX; i++)
        expect_status(c, 1);
    net_status_client_free(c);
    struct net_stats s = stats_of(1);
    cr_assert_eq(s.clients, 1 + 2 * NET_CLIENTS_MAX);
    cr_assert_eq(s.status_replies, 1 + 2 * NET_CLIENTS_MAX);
    cr_assert_eq(s.refused, 0);
    cr_assert_eq(s.protocol_errors, 0);
    cr_assert(peers_still_talk());
    stop_nodes();
}

Test(status, a_client_connection_is_not_mistaken_for_a_peer)
{
    /* The reason for the client identity: a connection claiming node 2 would
     * replace node 2's own. A client answers as node 0, and node 2 stays. */
    start_nodes(true);
    cr_assert(peers_still_talk());
    struct net_stats before = stats_of(2);
    struct net_status_client *c = honest_client();
    expect_status(c, 2);
    net_status_client_free(c);
    cr_assert(peers_still_talk());
    struct net_stats after = stats_of(2);
    cr_assert_eq(after.accepts, before.accepts, "the client counted as a peer accept");
    cr_assert_eq(after.disconnects, before.disconnects);
    cr_assert(!log_has("replacing inbound"));
    stop_nodes();
}

Test(status, refuses_a_client_certificate_of_another_cluster_or_ca)
{
    start_nodes(true);
    struct raw t;
    raw_dial(&t, cc.nodes[1].port, "alien-client");
    raw_hello(&t, 0, alien_id);
    cr_assert(raw_until_closed(&t));
    raw_close(&t);
    cr_assert(wait_stat(1, 1, 0));
    cr_assert(log_has("client certificate of another cluster"));

    raw_dial(&t, cc.nodes[1].port, "foreign-client"); /* may fail here or at the node */
    raw_hello(&t, 0, cluster_id);
    cr_assert(raw_until_closed(&t));
    raw_close(&t);
    cr_assert(wait_stat(1, 2, 0));

    /* and the honest client, pointed at a foreign identity, refuses itself */
    char dir[128], err[512];
    snprintf(dir, sizeof dir, "%s/alien", root);
    cr_assert_eq(mkdir(dir, 0700), 0);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cp %s/ca.crt %s/ && cp %s/alien-client.crt %s/client.crt && "
             "cp %s/alien-client.key %s/client.key", root, dir, root, dir, root, dir);
    cr_assert_eq(system(cmd), 0);
    struct net_status_client *c;
    cr_assert_eq(net_status_client_new(&cc, dir, &c, err, sizeof err), -EACCES);
    cr_assert(strstr(err, "another cluster"), "%s", err);

    cr_assert_eq(stats_of(1).status_replies, 0);
    cr_assert(peers_still_talk());
    struct net_status_client *honest = honest_client();
    expect_status(honest, 1);
    net_status_client_free(honest);
    stop_nodes();
}

Test(status, a_node_without_on_status_refuses_clients)
{
    start_nodes(false);
    struct net_status_client *c = honest_client();
    struct net_status_reply r;
    char err[256];
    cr_assert_eq(net_status_query(c, 2, 3000, &r, err, sizeof err), -EACCES, "%s", err);
    net_status_client_free(c);
    cr_assert(wait_stat(2, 1, 0));
    cr_assert(log_has("serves no status"));
    stop_nodes();
}

/* The next frame from the node through rx: 1 and *f, or 0 if the stream
 * ended or broke. */
static int raw_next_frame(struct raw *t, struct net_frame_rx *rx, struct net_frame *f)
{
    for (int i = 0; i < 1000; i++) {
        int rc = net_frame_rx_next(rx, f);
        if (rc != 0)
            return rc == 1;
        uint8_t *p;
        size_t room;
        net_frame_rx_space(rx, &p, &room);
        int r = SSL_read(t->ssl, p, room > 65536 ? 65536 : (int)room);
        if (r <= 0)
            return 0;
        net_frame_rx_commit(rx, (size_t)r);
    }
    return 0;
}

Test(status, a_node_answers_each_client_in_the_newest_version_it_understands)
{
    /* an old client (v1) gets the 52-byte reply it knows; a newer one (v3)
     * gets this node's newest, v2 */
    start_nodes(true);
    static const uint32_t asked[3] = {1, 2, 3};
    static const uint32_t got[3] = {1, 2, 2};
    for (int i = 0; i < 3; i++) {
        struct raw t;
        cr_assert(raw_dial(&t, cc.nodes[1].port, "client"));
        raw_hello(&t, 0, cluster_id);
        uint8_t req[NET_STATUS_REQ_BYTES];
        net_status_req_encode(asked[i], req);
        raw_frame(&t, NET_FRAME_STATUS_REQ, req, sizeof req);
        struct net_frame_rx rx;
        net_frame_rx_init(&rx);
        struct net_frame f;
        cr_assert(raw_next_frame(&t, &rx, &f));
        cr_assert_eq(f.type, NET_FRAME_HELLO);
        cr_assert(raw_next_frame(&t, &rx, &f));
        cr_assert_eq(f.type, NET_FRAME_STATUS_REPLY);
        struct net_status_reply r;
        cr_assert_eq(net_status_reply_decode(f.payload, f.len, &r), 0);
        cr_assert_eq(r.version, got[i], "asked %u", asked[i]);
        cr_assert_eq(f.len, got[i] == 1 ? NET_STATUS_REPLY_V1_BYTES : NET_STATUS_REPLY_V2_BYTES);
        cr_assert_eq(r.commit, 42);
        if (got[i] == 2)
            cr_assert_eq(r.snapshot_slot, 40, "the v2 fields on_status filled");
        net_frame_rx_deinit(&rx);
        raw_close(&t);
    }
    struct net_status_client *c = honest_client();
    expect_status(c, 1);
    net_status_client_free(c);
    stop_nodes();
}

/* One misbehaving client: connects with client.crt, says HELLO(hello_node)
 * then sends `bytes`; the node must close it. */
static void misbehave(uint32_t hello_node, uint8_t type, const void *bytes, size_t len,
                      bool framed)
{
    struct raw t;
    cr_assert(raw_dial(&t, cc.nodes[1].port, "client"));
    raw_hello(&t, hello_node, cluster_id);
    if (framed)
        raw_frame(&t, type, bytes, len);
    else
        raw_write(&t, bytes, len);
    cr_assert(raw_until_closed(&t), "the node kept a misbehaving client");
    raw_close(&t);
}

Test(status, closes_a_client_sending_a_consensus_frame_or_garbage_and_keeps_serving)
{
    start_nodes(true);
    uint8_t px[64];
    memset(px, 0xab, sizeof px);
    struct net_stats s0 = stats_of(1);

    misbehave(0, NET_FRAME_PX, px, sizeof px, true); /* over the client's payload bound */
    cr_assert(wait_stat(1, s0.refused, s0.protocol_errors + 1));
    misbehave(0, NET_FRAME_PX, px, 4, true);         /* a PX frame within it */
    cr_assert(wait_stat(1, s0.refused, s0.protocol_errors + 2));
    uint8_t req[NET_STATUS_REQ_BYTES] = {0};         /* version 0 */
    misbehave(0, NET_FRAME_STATUS_REQ, req, sizeof req, true);
    cr_assert(wait_stat(1, s0.refused, s0.protocol_errors + 3));
    misbehave(0, NET_FRAME_HELLO, px, NET_HELLO_BYTES, true); /* a second HELLO */
    cr_assert(wait_stat(1, s0.refused, s0.protocol_errors + 4));
    uint8_t garbage[300];
    for (size_t i = 0; i < sizeof garbage; i++)
        garbage[i] = (uint8_t)(i * 37 + 11);
    misbehave(0, 0, garbage, sizeof garbage, false);
    cr_assert(wait_stat(1, s0.refused, s0.protocol_errors + 5));

    /* before HELLO, or claiming a node: refused, not served */
    misbehave(1, NET_FRAME_STATUS_REQ, req, sizeof req, true);
    cr_assert(wait_stat(1, s0.refused + 1, 0));
    misbehave(2, NET_FRAME_STATUS_REQ, req, sizeof req, true);
    cr_assert(wait_stat(1, s0.refused + 2, 0));
    struct raw t;
    cr_assert(raw_dial(&t, cc.nodes[1].port, "client"));
    net_status_req_encode(1, req);
    raw_frame(&t, NET_FRAME_STATUS_REQ, req, sizeof req);
    cr_assert(raw_until_closed(&t));
    raw_close(&t);
    cr_assert(wait_stat(1, s0.refused + 3, 0));

    cr_assert_eq(stats_of(1).status_replies, 0);
    cr_assert(peers_still_talk());
    struct net_status_client *c = honest_client();
    expect_status(c, 1);
    net_status_client_free(c);
    stop_nodes();
}

Test(status, a_client_that_never_reads_its_replies_is_cut_off)
{
    start_nodes(true);
    struct net_stats s0 = stats_of(1);
    struct raw t;
    cr_assert(raw_dial_rcvbuf(&t, cc.nodes[1].port, "client", 4096));
    raw_hello(&t, 0, cluster_id);
    /* requests in batches, never reading: the kernel buffers fill, then
     * the node's bounded staging, then the node hangs up */
    uint8_t batch[256 * (NET_FRAME_HEADER_BYTES + NET_STATUS_REQ_BYTES)];
    for (int i = 0; i < 256; i++) {
        uint8_t *f = batch + i * (NET_FRAME_HEADER_BYTES + NET_STATUS_REQ_BYTES);
        net_frame_header_encode(f, NET_FRAME_STATUS_REQ, NET_STATUS_REQ_BYTES);
        net_status_req_encode(1, f + NET_FRAME_HEADER_BYTES);
    }
    bool cut = false;
    for (int i = 0; i < 2000 && !cut; i++) { /* at most ~10 MB of requests */
        if (!raw_write(&t, batch, sizeof batch))
            cut = true;
        else if (stats_of(1).protocol_errors > s0.protocol_errors)
            cut = true;
    }
    cr_assert(cut, "the node never cut off a client that does not read");
    cr_assert(wait_stat(1, 0, s0.protocol_errors + 1));
    cr_assert(log_has("does not read its replies"));
    raw_close(&t);
    cr_assert(peers_still_talk());
    struct net_status_client *c = honest_client();
    expect_status(c, 1);
    net_status_client_free(c);
    stop_nodes();
}

/* ------------------------------------------------------------ the client */

Test(status, the_client_reports_missing_files_and_unreachable_nodes)
{
    char dir[128], err[512];
    snprintf(dir, sizeof dir, "%s/old", root);
    cr_assert_eq(mkdir(dir, 0700), 0);
    memset(&cc, 0, sizeof cc);
    memcpy(cc.cluster_id, cluster_id, 16);
    cc.n_nodes = 2;
    struct net_status_client *c;
    cr_assert_eq(net_status_client_new(&cc, dir, &c, err, sizeof err), -ENOENT);
    cr_assert(strstr(err, "no client certificate in"), "%s", err);

    /* node 1: nothing listens; node 2: listens but never speaks */
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t al = sizeof a;
    getsockname(lfd, (struct sockaddr *)&a, &al);
    int dead = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0); /* bound, not listening */
    struct sockaddr_in b = {.sin_family = AF_INET};
    b.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(dead, (struct sockaddr *)&b, sizeof b), 0);
    socklen_t bl = sizeof b;
    getsockname(dead, (struct sockaddr *)&b, &bl);
    cr_assert_eq(listen(lfd, 4), 0);
    snprintf(cc.nodes[1].host, sizeof cc.nodes[1].host, "127.0.0.1");
    cc.nodes[1].port = ntohs(b.sin_port);
    snprintf(cc.nodes[2].host, sizeof cc.nodes[2].host, "127.0.0.1");
    cc.nodes[2].port = ntohs(a.sin_port);

    c = honest_client();
    struct net_status_reply r;
    cr_assert_eq(net_status_query(c, 1, 1000, &r, err, sizeof err), -ENOTCONN, "%s", err);
    uint64_t t0 = clock_now_ns();
    cr_assert_eq(net_status_query(c, 2, 300, &r, err, sizeof err), -ETIMEDOUT, "%s", err);
    uint64_t took = clock_now_ns() - t0;
    cr_assert(took >= 250000000ull && took < 2 * SEC, "took %llu ns", (unsigned long long)took);
    cr_assert_eq(net_status_query(c, 3, 300, &r, err, sizeof err), -EINVAL);
    net_status_client_free(c);
    close(lfd);
    close(dead);
}

/* ------------------------------------------------------------ paxfs init */

static int run_paxfs(const char *const *args)
{
    const char *bin = getenv("PAXFS_BIN");
    cr_assert_not_null(bin, "PAXFS_BIN must name the built paxfs binary");
    char *argv[16];
    int argc = 0;
    argv[argc++] = (char *)bin;
    for (int i = 0; args[i] && argc < 15; i++)
        argv[argc++] = (char *)args[i];
    argv[argc] = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    cr_assert_eq(posix_spawn(&pid, bin, &fa, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st));
    return WEXITSTATUS(st);
}

Test(status, init_writes_a_client_certificate_that_verifies)
{
    char dir[128], path[256], err[512];
    snprintf(dir, sizeof dir, "%s/cluster", root);
    const char *args[] = {"init", "--nodes", "2", dir, NULL};
    cr_assert_eq(run_paxfs(args), 0);
    struct stat st;
    snprintf(path, sizeof path, "%s/client.key", dir);
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_mode & 07777, 0600);
    EVP_PKEY *key = pki_read_key(path);
    snprintf(path, sizeof path, "%s/client.crt", dir);
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_mode & 07777, 0644);
    X509 *cert = pki_read_cert(path);
    cr_assert(key && cert);
    cr_assert_eq(X509_check_private_key(cert, key), 1);

    struct cluster_config c;
    snprintf(path, sizeof path, "%s/cluster.conf", dir);
    cr_assert_eq(config_load(path, &c, err, sizeof err), 0, "%s", err);
    uint8_t cid[16];
    cr_assert_eq(pki_cert_client_identity(cert, cid), 0);
    cr_assert_eq(memcmp(cid, c.cluster_id, 16), 0);
    uint32_t k;
    cr_assert_eq(pki_cert_identity(cert, &k, cid), -EACCES, "a client is no node");

    snprintf(path, sizeof path, "%s/ca.crt", dir);
    X509 *ca = pki_read_cert(path);
    X509_STORE *store = X509_STORE_new();
    X509_STORE_add_cert(store, ca);
    X509_STORE_CTX *v = X509_STORE_CTX_new();
    X509_STORE_CTX_init(v, store, cert, NULL);
    X509_STORE_CTX_set_purpose(v, X509_PURPOSE_SSL_CLIENT);
    cr_assert_eq(X509_verify_cert(v), 1, "%s",
                 X509_verify_cert_error_string(X509_STORE_CTX_get_error(v)));
    X509_STORE_CTX_free(v);
    /* clientAuth only: it cannot serve as a node (TLS server) */
    v = X509_STORE_CTX_new();
    X509_STORE_CTX_init(v, store, cert, NULL);
    X509_STORE_CTX_set_purpose(v, X509_PURPOSE_SSL_SERVER);
    cr_assert_neq(X509_verify_cert(v), 1);
    X509_STORE_CTX_free(v);
    X509_STORE_free(store);
    X509_free(ca);
    X509_free(cert);
    EVP_PKEY_free(key);

    /* and the status client takes the directory as it is */
    struct net_status_client *client;
    cr_assert_eq(net_status_client_new(&c, dir, &client, err, sizeof err), 0, "%s", err);
    net_status_client_free(client);
}
