/* paxfs — the command line (DESIGN.md, Command line contract).
 *
 * This build implements `paxfs init` and `paxfs status`; the other commands
 * are listed in the usage and answer honestly that they are not available
 * yet.
 *
 * `paxfs init` creates a new cluster directory: the cluster CA (ca.crt,
 * ca.key), one certificate and key per node (node<K>.crt, node<K>.key), the
 * operator client's (client.crt, client.key: what `paxfs status` presents,
 * net/pki.h), and cluster.conf (net/config.h), written last and with O_EXCL, so its
 * presence means "a complete cluster lives here" and init never overwrites
 * one. Every file is created with its final mode (keys 0600) and fsynced. If
 * anything fails, the files this run created are removed again.
 *
 * `paxfs status` asks every node at once (one thread per node, each query
 * bounded by STATUS_TIMEOUT_MS) over mutual TLS with client.crt, and prints
 * one row per node. Lag is the leader's commit slot minus the node's applied
 * slot, 0 when the node is ahead of it; with no reachable leader (several
 * claiming it: the highest ballot wins) it is unknown ("-", null in JSON).
 *
 * Exit codes: 0 success; 1 a finding (status: a node unreachable, or its
 * replica stopped on an error); 2 bad usage or bad input or a failure to
 * create the cluster, always with one line on stderr saying what and what
 * to do. */
#include "base/buf.h"
#include "consensus/ballot.h"
#include "fs/mount.h"
#include "tools/cli.h"
#include "tools/fsck_cmd.h"
#include "fs/store.h"
#include "net/config.h"
#include "net/pki.h"
#include "net/status.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

_Static_assert(STORE_BLOCK_SIZE_MIN == CONFIG_BLOCK_SIZE_MIN &&
               STORE_BLOCK_SIZE_MAX == CONFIG_BLOCK_SIZE_MAX,
               "cluster.conf and the block store must agree on block sizes");

#define PORT_BASE_DEFAULT 7400u
#define NODES_DEFAULT 3u
#define PATH_BYTES 4096
#define FILES_MAX (2 * CONFIG_NODES_MAX + 5)
#define STATUS_TIMEOUT_MS 2000u

static const char usage_text[] =
    "usage: paxfs <command> [options]\n"
    "\n"
    "commands:\n"
    "  init [--nodes N] [--host ADDR]... [--port BASE] [--block-size BYTES] DIR\n"
    "        create a cluster in DIR: cluster.conf, the cluster CA (ca.crt, ca.key),\n"
    "        node<K>.crt, node<K>.key for K = 1..N and client.crt, client.key\n"
    "  mount --config DIR/cluster.conf --node K --data DATADIR [-f] [-o OPT,...] MOUNTPOINT\n"
    "  status --config DIR/cluster.conf [--json]\n"
    "        per node: reachable, role, ballot, commit and applied slot, lag\n"
    "  fsck --config DIR/cluster.conf [--json] [--repair]\n"
    "  fsck --data DATADIR [--json]\n"
    "\n"
    "Run 'paxfs <command> --help' for a command's options.\n";

static const char init_usage_text[] =
    "usage: paxfs init [--nodes N] [--host ADDR]... [--port BASE] [--block-size BYTES] DIR\n"
    "\n"
    "Creates a new cluster in DIR (created if missing; never overwritten).\n"
    "  --nodes N          number of nodes, 1..16 (default 3)\n"
    "  --host ADDR        the nodes' host name or address: once for all nodes,\n"
    "                     or N times, one per node in order (default 127.0.0.1)\n"
    "  --port BASE        node K listens on BASE+K-1 (default 7400)\n"
    "  --block-size BYTES file data block size, a power of two in 4096..16777216;\n"
    "                     K and M suffixes allowed (default 262144)\n"
    "\n"
    "Writes DIR/cluster.conf, DIR/ca.crt, DIR/ca.key, DIR/node<K>.crt,\n"
    "DIR/node<K>.key and DIR/client.crt, DIR/client.key (the operator's identity\n"
    "for 'paxfs status'). Copy cluster.conf, ca.crt and its own node<K>.* to each\n"
    "host; keep ca.key offline (it is only needed to add nodes).\n";

static const char status_usage_text[] =
    "usage: paxfs status --config DIR/cluster.conf [--json]\n"
    "\n"
    "Asks every node of the cluster for its state over mutual TLS, presenting\n"
    "DIR/client.crt and DIR/client.key, and prints one row per node: reachable,\n"
    "role, ballot, commit (highest chosen slot), applied slot, lag (the leader's\n"
    "commit minus the node's applied slot) and its newest snapshot's slot, with a\n"
    "note while it receives a snapshot transfer (MiB done/total, rate). A node\n"
    "that does not answer within 2 s is unreachable.\n"
    "  --json    one JSON object: {\"nodes\":[{\"node\":1,\"reachable\":true,...}]}\n"
    "\n"
    "Exit status: 0 every node answered, 1 a node is unreachable or its replica\n"
    "failed, 2 bad usage or input.\n";

__attribute__((format(printf, 1, 2)))
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("paxfs: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return EXIT_USAGE;
}

/* ---- option parsing --------------------------------------------------------- */

struct init_opts {
    uint32_t nodes;
    uint32_t port_base;
    uint32_t block_size;
    const char *hosts[CONFIG_NODES_MAX];
    uint32_t n_hosts;
    const char *dir;
};

static bool parse_u32(const char *s, uint32_t *out)
{
    if (!*s || strlen(s) > 10)
        return false;
    uint64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (v > UINT32_MAX)
        return false;
    *out = (uint32_t)v;
    return true;
}

/* BYTES, BYTESK or BYTESM (binary units). */
static bool parse_size(const char *s, uint32_t *out)
{
    char num[16];
    size_t n = strlen(s);
    uint64_t mult = 1;
    if (n > 0 && (s[n - 1] == 'K' || s[n - 1] == 'k'))
        mult = 1024, n--;
    else if (n > 0 && (s[n - 1] == 'M' || s[n - 1] == 'm'))
        mult = 1024 * 1024, n--;
    if (n == 0 || n >= sizeof num)
        return false;
    memcpy(num, s, n);
    num[n] = '\0';
    uint32_t v;
    if (!parse_u32(num, &v) || (uint64_t)v * mult > UINT32_MAX)
        return false;
    *out = (uint32_t)(v * mult);
    return true;
}


/* 0 parsed, 1 help printed, or an exit code after printing the error. */
static int init_parse(int argc, char **argv, struct init_opts *o)
{
    o->nodes = NODES_DEFAULT;
    o->port_base = PORT_BASE_DEFAULT;
    o->block_size = STORE_BLOCK_SIZE_DEFAULT;
    o->n_hosts = 0;
    o->dir = NULL;
    bool nodes_given = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        int m;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(init_usage_text, stdout);
            return 1;
        }
        if ((m = cli_option_value(argc, argv, &i, "--nodes", &v)) != 0) {
            if (m < 0 || !parse_u32(v, &o->nodes) || o->nodes < 1 || o->nodes > CONFIG_NODES_MAX)
                return usage_error("init: --nodes needs an integer in 1..%u, got '%s'",
                                   CONFIG_NODES_MAX, m < 0 ? "" : v);
            nodes_given = true;
        } else if ((m = cli_option_value(argc, argv, &i, "--host", &v)) != 0) {
            if (m < 0 || !*v)
                return usage_error("init: --host needs a host name or address");
            if (o->n_hosts == CONFIG_NODES_MAX)
                return usage_error("init: --host given more than %u times", CONFIG_NODES_MAX);
            o->hosts[o->n_hosts++] = v;
        } else if ((m = cli_option_value(argc, argv, &i, "--port", &v)) != 0) {
            if (m < 0 || !parse_u32(v, &o->port_base) || o->port_base < 1 || o->port_base > 65535)
                return usage_error("init: --port needs a port number in 1..65535, got '%s'",
                                   m < 0 ? "" : v);
        } else if ((m = cli_option_value(argc, argv, &i, "--block-size", &v)) != 0) {
            if (m < 0 || !parse_size(v, &o->block_size) || o->block_size < CONFIG_BLOCK_SIZE_MIN ||
                o->block_size > CONFIG_BLOCK_SIZE_MAX || (o->block_size & (o->block_size - 1)))
                return usage_error("init: --block-size needs a power of two in 4096..16777216 "
                                   "(K/M suffixes allowed), got '%s'", m < 0 ? "" : v);
        } else if (a[0] == '-' && a[1] != '\0') {
            return usage_error("init: unknown option '%s'; see 'paxfs init --help'", a);
        } else if (o->dir) {
            return usage_error("init: more than one DIR ('%s' and '%s')", o->dir, a);
        } else {
            o->dir = a;
        }
    }
    if (!o->dir)
        return usage_error("init: missing DIR; usage: paxfs init [--nodes N] [--host ADDR]... "
                           "[--port BASE] [--block-size BYTES] DIR");
    if (o->n_hosts > 1 && !nodes_given)
        o->nodes = o->n_hosts; /* one --host per node says how many nodes */
    if (o->n_hosts > 1 && o->n_hosts != o->nodes)
        return usage_error("init: --host given %u times for %u nodes; give it once (all nodes) "
                           "or once per node", o->n_hosts, o->nodes);
    if (o->port_base + o->nodes - 1 > 65535)
        return usage_error("init: ports %u..%u do not fit below 65536; lower --port",
                           o->port_base, o->port_base + o->nodes - 1);
    return 0;
}

/* Builds the configuration and checks it the way every node will read it. */
static int init_config(const struct init_opts *o, struct cluster_config *c)
{
    memset(c, 0, sizeof *c);
    do {
        if (RAND_bytes(c->cluster_id, sizeof c->cluster_id) != 1)
            return usage_error("init: no randomness for the cluster id (OpenSSL RAND_bytes)");
    } while (c->cluster_id[0] == 0 && c->cluster_id[1] == 0); /* never all zeros */
    c->block_size = o->block_size;
    c->tick_ms = CONFIG_TICK_MS_DEFAULT;
    c->election_ticks = CONFIG_ELECTION_TICKS_DEFAULT;
    c->heartbeat_ticks = CONFIG_HEARTBEAT_TICKS_DEFAULT;
    c->op_timeout_s = CONFIG_OP_TIMEOUT_S_DEFAULT;
    c->n_nodes = o->nodes;
    for (uint32_t k = 1; k <= o->nodes; k++) {
        const char *h = o->n_hosts == 0 ? "127.0.0.1" : o->hosts[o->n_hosts == 1 ? 0 : k - 1];
        size_t n = strlen(h);
        if (n >= 2 && h[0] == '[' && h[n - 1] == ']') /* [v6] is fine on the command line */
            h++, n -= 2;
        if (n == 0 || n >= CONFIG_HOST_BYTES)
            return usage_error("init: --host '%s' is empty or too long", h);
        memcpy(c->nodes[k].host, h, n);
        c->nodes[k].host[n] = '\0';
        struct in6_addr a6;
        if (strchr(c->nodes[k].host, ':') && inet_pton(AF_INET6, c->nodes[k].host, &a6) != 1)
            return usage_error("init: --host '%s' is not a host name or address (no port "
                               "here: ports come from --port)", c->nodes[k].host);
        c->nodes[k].port = (uint16_t)(o->port_base + k - 1);
    }
    struct buf b;
    buf_init(&b);
    config_format(c, &b);
    struct cluster_config check;
    char err[512];
    int rc = config_parse((const char *)b.data, b.len, &check, err, sizeof err);
    buf_deinit(&b);
    if (rc) {
        const char *msg = err;
        while (*msg >= '0' && *msg <= '9') /* drop the line number of generated text */
            msg++;
        if (*msg == ':')
            msg += 2;
        return usage_error("init: %s", msg);
    }
    return 0;
}

/* ---- writing the cluster ---------------------------------------------------- */

struct created {
    char paths[FILES_MAX][PATH_BYTES];
    int n;
    bool made_dir;
};

static bool join(char *out, const char *dir, const char *name)
{
    int n = snprintf(out, PATH_BYTES, "%s/%s", dir, name);
    return n > 0 && n < PATH_BYTES;
}

static void undo(const struct created *cr, const char *dir)
{
    for (int i = cr->n - 1; i >= 0; i--)
        unlink(cr->paths[i]);
    if (cr->made_dir)
        rmdir(dir);
}

static int fsync_path(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

static int write_text(const char *path, const struct buf *b, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0)
        return -errno;
    int rc = fchmod(fd, mode) == 0 ? 0 : -errno;
    size_t off = 0;
    while (rc == 0 && off < b->len) {
        ssize_t w = write(fd, b->data + off, b->len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            rc = w < 0 ? -errno : -EIO;
        else
            off += (size_t)w;
    }
    if (rc == 0 && fsync(fd) != 0)
        rc = -errno;
    if (close(fd) != 0 && rc == 0)
        rc = -errno;
    if (rc)
        unlink(path);
    return rc;
}

/* Every file init writes, in order; cluster.conf last. */
static int plan_files(const char *dir, uint32_t nodes, struct created *plan)
{
    plan->n = 0;
    if (!join(plan->paths[plan->n++], dir, "ca.key") || !join(plan->paths[plan->n++], dir, "ca.crt"))
        return -ENAMETOOLONG;
    for (uint32_t k = 1; k <= nodes; k++) {
        char name[32];
        snprintf(name, sizeof name, "node%u.key", k);
        if (!join(plan->paths[plan->n++], dir, name))
            return -ENAMETOOLONG;
        snprintf(name, sizeof name, "node%u.crt", k);
        if (!join(plan->paths[plan->n++], dir, name))
            return -ENAMETOOLONG;
    }
    if (!join(plan->paths[plan->n++], dir, "client.key") ||
        !join(plan->paths[plan->n++], dir, "client.crt"))
        return -ENAMETOOLONG;
    if (!join(plan->paths[plan->n++], dir, "cluster.conf"))
        return -ENAMETOOLONG;
    return 0;
}

static int init_write(const struct init_opts *o, const struct cluster_config *c)
{
    static struct created plan, done; /* large: keep them off the stack */
    if (plan_files(o->dir, o->nodes, &plan) != 0)
        return usage_error("init: DIR path '%s' is too long", o->dir);
    const char *conf_path = plan.paths[plan.n - 1];
    struct stat st;
    if (stat(conf_path, &st) == 0)
        return usage_error("init: %s already exists; refusing to overwrite a cluster "
                           "(choose another DIR)", conf_path);
    memset(&done, 0, sizeof done);
    if (stat(o->dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            return usage_error("init: %s exists and is not a directory", o->dir);
    } else if (mkdir(o->dir, 0755) == 0) {
        done.made_dir = true;
    } else {
        return usage_error("init: cannot create directory %s: %s", o->dir, strerror(errno));
    }
    for (int i = 0; i < plan.n; i++)
        if (lstat(plan.paths[i], &st) == 0) {
            undo(&done, o->dir);
            return usage_error("init: %s already exists (left by an interrupted init?); remove "
                               "it or choose another DIR", plan.paths[i]);
        }

    time_t now = time(NULL);
    time_t not_before = now - 3600, not_after = now + (time_t)PKI_VALID_DAYS * 86400;
    EVP_PKEY *ca_key = pki_key_new();
    X509 *ca = ca_key ? pki_ca_new(ca_key, c->cluster_id, not_before, not_after) : NULL;
    int rc = 0, at = 0;
    const char *failed = NULL;
    char why[200] = "";
    if (!ca) {
        failed = "the cluster CA";
        pki_ssl_error(why, sizeof why);
        rc = -EIO;
    }
    if (rc == 0 && (rc = pki_write_key(plan.paths[at], ca_key, 0600)) == 0)
        memcpy(done.paths[done.n++], plan.paths[at++], PATH_BYTES);
    if (rc == 0 && (rc = pki_write_cert(plan.paths[at], ca, 0644)) == 0)
        memcpy(done.paths[done.n++], plan.paths[at++], PATH_BYTES);
    for (uint32_t k = 1; rc == 0 && k <= o->nodes; k++) {
        EVP_PKEY *key = pki_key_new();
        X509 *cert = key ? pki_node_cert_new(ca, ca_key, key, k, c->cluster_id, not_before,
                                             not_after) : NULL;
        if (!cert) {
            failed = "a node certificate";
            pki_ssl_error(why, sizeof why);
            rc = -EIO;
        }
        if (rc == 0 && (rc = pki_write_key(plan.paths[at], key, 0600)) == 0)
            memcpy(done.paths[done.n++], plan.paths[at++], PATH_BYTES);
        if (rc == 0 && (rc = pki_write_cert(plan.paths[at], cert, 0644)) == 0)
            memcpy(done.paths[done.n++], plan.paths[at++], PATH_BYTES);
        X509_free(cert);
        EVP_PKEY_free(key);
    }
    if (rc == 0) {
        EVP_PKEY *key = pki_key_new();
        X509 *cert = key ? pki_client_cert_new(ca, ca_key, key, c->cluster_id, not_before,
                                               not_after) : NULL;
        if (!cert) {
            failed = "the client certificate";
            pki_ssl_error(why, sizeof why);
            rc = -EIO;
        }
        if (rc == 0 && (rc = pki_write_key(plan.paths[at], key, 0600)) == 0)
            memcpy(done.paths[done.n++], plan.paths[at++], PATH_BYTES);
        if (rc == 0 && (rc = pki_write_cert(plan.paths[at], cert, 0644)) == 0)
            memcpy(done.paths[done.n++], plan.paths[at++], PATH_BYTES);
        X509_free(cert);
        EVP_PKEY_free(key);
    }
    X509_free(ca);
    EVP_PKEY_free(ca_key);
    if (rc == 0) {
        struct buf b;
        buf_init(&b);
        config_format(c, &b);
        rc = write_text(plan.paths[at], &b, 0644);
        buf_deinit(&b);
        if (rc == 0)
            memcpy(done.paths[done.n++], plan.paths[at++], PATH_BYTES);
    }
    if (rc == 0)
        rc = fsync_path(o->dir);
    if (rc) {
        undo(&done, o->dir);
        if (failed)
            return usage_error("init: cannot create %s: %s", failed, why);
        return usage_error("init: cannot write %s: %s", plan.paths[at < plan.n ? at : plan.n - 1],
                           strerror(-rc));
    }
    return 0;
}

static int cmd_init(int argc, char **argv)
{
    struct init_opts o;
    int rc = init_parse(argc, argv, &o);
    if (rc)
        return rc == 1 ? 0 : rc;
    struct cluster_config c;
    rc = init_config(&o, &c);
    if (rc)
        return rc;
    rc = init_write(&o, &c);
    if (rc)
        return rc;
    char id[33];
    config_cluster_id_hex(c.cluster_id, id);
    printf("paxfs: created cluster %s with %u node%s in %s\n", id, c.n_nodes,
           c.n_nodes == 1 ? "" : "s", o.dir);
    printf("  each host needs cluster.conf, ca.crt and its own node<K>.crt + node<K>.key\n");
    printf("  %s/ca.key only signs new node certificates: move it offline\n", o.dir);
    printf("  client.crt + client.key are the operator's: paxfs status --config "
           "%s/cluster.conf\n", o.dir);
    printf("  start node K: paxfs mount --config %s/cluster.conf --node K --data DATADIR "
           "MOUNTPOINT\n", o.dir);
    return 0;
}

/* ---- status ----------------------------------------------------------------- */

struct status_opts {
    const char *config;
    bool json;
};

/* 0 parsed, 1 help printed, or an exit code after printing the error. */
static int status_parse(int argc, char **argv, struct status_opts *o)
{
    o->config = NULL;
    o->json = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        int m;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(status_usage_text, stdout);
            return 1;
        }
        if (strcmp(a, "--json") == 0) {
            o->json = true;
        } else if ((m = cli_option_value(argc, argv, &i, "--config", &v)) != 0) {
            if (m < 0 || !*v)
                return usage_error("status: --config needs the path of cluster.conf");
            if (o->config)
                return usage_error("status: --config given twice");
            o->config = v;
        } else if (a[0] == '-') {
            return usage_error("status: unknown option '%s'; see 'paxfs status --help'", a);
        } else {
            return usage_error("status: unexpected argument '%s'; usage: paxfs status "
                               "--config DIR/cluster.conf [--json]", a);
        }
    }
    if (!o->config)
        return usage_error("status: missing --config; usage: paxfs status --config "
                           "DIR/cluster.conf [--json]");
    return 0;
}

static uint64_t lag_of(const struct cli_status *qs, uint32_t leader, uint32_t k)
{
    uint64_t commit = qs[leader].reply.commit, applied = qs[k].reply.applied;
    return commit > applied ? commit - applied : 0;
}

static void print_json(const struct cluster_config *cc, const struct cli_status *qs,
                       uint32_t leader)
{
    char id[33];
    config_cluster_id_hex(cc->cluster_id, id);
    printf("{\"cluster\":\"%s\",\"leader\":", id);
    if (leader)
        printf("%u", leader);
    else
        printf("null");
    printf(",\"nodes\":[");
    for (uint32_t k = 1; k <= cc->n_nodes; k++) {
        const struct cli_status *q = &qs[k];
        const struct net_status_reply *r = &q->reply;
        char addr[CONFIG_HOST_BYTES + 16];
        config_node_addr(&cc->nodes[k], addr, sizeof addr);
        printf("%s{\"node\":%u,\"address\":", k > 1 ? "," : "", k);
        cli_json_string(stdout, addr);
        if (q->rc != 0) {
            printf(",\"reachable\":false,\"role\":null,\"leader\":null,\"ballot\":null,"
                   "\"commit\":null,\"applied\":null,\"lag\":null,\"failed\":null,"
                   "\"snapshot_slot\":null,\"log_first\":null,\"xfer_state\":null,"
                   "\"xfer_bytes_done\":null,\"xfer_bytes_total\":null,\"xfer_rate\":null,"
                   "\"blocks_repaired\":null,\"error\":");
            cli_json_string(stdout, q->err);
            putchar('}');
            continue;
        }
        printf(",\"reachable\":true,\"role\":\"%s\",\"leader\":", net_status_role_name(r->role));
        if (r->leader)
            printf("%u", r->leader);
        else
            printf("null");
        printf(",\"ballot\":%" PRIu64 ",\"commit\":%" PRIu64 ",\"applied\":%" PRIu64 ",\"lag\":",
               r->ballot, r->commit, r->applied);
        if (leader)
            printf("%" PRIu64, lag_of(qs, leader, k));
        else
            printf("null");
        printf(",\"failed\":%s", r->failed ? "true" : "false");
        if (r->version >= 2) /* a node of an older paxfs answers version 1: no such fields */
            printf(",\"snapshot_slot\":%" PRIu64 ",\"log_first\":%" PRIu64
                   ",\"xfer_state\":\"%s\",\"xfer_bytes_done\":%" PRIu64
                   ",\"xfer_bytes_total\":%" PRIu64 ",\"xfer_rate\":%" PRIu64
                   ",\"blocks_repaired\":%" PRIu64, r->snapshot_slot, r->log_first,
                   net_status_xfer_name(r->xfer_state), r->xfer_bytes_done, r->xfer_bytes_total,
                   r->xfer_rate, r->blocks_repaired);
        else
            printf(",\"snapshot_slot\":null,\"log_first\":null,\"xfer_state\":null,"
                   "\"xfer_bytes_done\":null,\"xfer_bytes_total\":null,\"xfer_rate\":null,"
                   "\"blocks_repaired\":null");
        printf(",\"error\":null}");
    }
    printf("]}\n");
}

static void print_table(const struct cluster_config *cc, const struct cli_status *qs,
                        uint32_t leader)
{
    printf("%-5s %-22s %-10s %-10s %-10s %-10s %-10s %-10s %s\n", "NODE", "ADDRESS",
           "REACHABLE", "ROLE", "BALLOT", "COMMIT", "APPLIED", "LAG", "SNAPSHOT");
    uint32_t up = 0;
    for (uint32_t k = 1; k <= cc->n_nodes; k++) {
        const struct cli_status *q = &qs[k];
        const struct net_status_reply *r = &q->reply;
        char addr[CONFIG_HOST_BYTES + 16];
        config_node_addr(&cc->nodes[k], addr, sizeof addr);
        if (q->rc != 0) {
            printf("%-5u %-22s %-10s %-10s %-10s %-10s %-10s %-10s %-8s %s\n", k, addr, "no", "-",
                   "-", "-", "-", "-", "-", q->err);
            continue;
        }
        up++;
        char ballot[48], lag[24], snap[24], note[96];
        /* a ballot is (round, node): round.node reads better than the packed integer */
        snprintf(ballot, sizeof ballot, "%" PRIu64 ".%u", ballot_round(r->ballot),
                 ballot_node(r->ballot));
        if (leader)
            snprintf(lag, sizeof lag, "%" PRIu64, lag_of(qs, leader, k));
        else
            snprintf(lag, sizeof lag, "-");
        if (r->snapshot_slot)
            snprintf(snap, sizeof snap, "%" PRIu64, r->snapshot_slot);
        else
            snprintf(snap, sizeof snap, "-");
        net_status_xfer_note(r, note, sizeof note);
        printf("%-5u %-22s %-10s %-10s %-10s %-10" PRIu64 " %-10" PRIu64 " %-10s %s%s%s%s\n", k,
               addr, "yes", net_status_role_name(r->role), ballot, r->commit, r->applied, lag,
               snap, note[0] ? "  " : "", note,
               r->failed ? "  FAILED: the replica stopped on an error, see its log" : "");
    }
    if (leader)
        printf("%u of %u nodes reachable; leader: node %u\n", up, cc->n_nodes, leader);
    else
        printf("%u of %u nodes reachable; no leader reachable\n", up, cc->n_nodes);
}

static int cmd_status(int argc, char **argv)
{
    struct status_opts o;
    int rc = status_parse(argc, argv, &o);
    if (rc)
        return rc == 1 ? 0 : rc;
    static struct cluster_config cc; /* large: off the stack */
    char err[1024];
    if (config_load(o.config, &cc, err, sizeof err) != 0)
        return usage_error("status: %s", err);
    char dir[PATH_BYTES];
    if (strlen(o.config) >= sizeof dir)
        return usage_error("status: --config path is too long");
    snprintf(dir, sizeof dir, "%s", o.config);
    struct net_status_client *client;
    if (net_status_client_new(&cc, dirname(dir), &client, err, sizeof err) != 0)
        return usage_error("status: %s", err);
    signal(SIGPIPE, SIG_IGN);
    static struct cli_status qs[CONFIG_NODES_MAX + 1];
    memset(qs, 0, sizeof qs);
    cli_status_all(client, cc.n_nodes, STATUS_TIMEOUT_MS, qs);
    net_status_client_free(client);
    uint32_t leader = cli_status_leader(cc.n_nodes, qs);
    if (o.json)
        print_json(&cc, qs, leader);
    else
        print_table(&cc, qs, leader);
    fflush(stdout);
    for (uint32_t k = 1; k <= cc.n_nodes; k++)
        if (qs[k].rc != 0 || qs[k].reply.failed)
            return EXIT_FINDING;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(usage_text, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--version") == 0) {
        printf("paxfs 0.1.0\n");
        return 0;
    }
    if (strcmp(cmd, "init") == 0)
        return cmd_init(argc - 1, argv + 1);
    if (strcmp(cmd, "status") == 0)
        return cmd_status(argc - 1, argv + 1);
    if (strcmp(cmd, "mount") == 0)
        return mnt_main(argc - 1, argv + 1);
    if (strcmp(cmd, "fsck") == 0)
        return fsck_main(argc - 1, argv + 1);
    return usage_error("unknown command '%s'; run 'paxfs --help' for the list", cmd);
}
