/* The cluster.conf parser and writer; the format is in config.h.
 *
 * The parser walks the text once, line by line, with every loop bounded by
 * the input length. It keeps the line number where each key was first seen
 * so that a duplicate names both lines, and checks what involves several
 * keys (required keys, node numbering, timing ratios, duplicate addresses)
 * once at the end. The result is written to *out only when everything
 * passed. */
#include "net/config.h"

#include "base/assert.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Refuse to read something that is obviously not a config file. */
#define CONFIG_FILE_BYTES_MAX (1u << 20)

enum key_id {
    KEY_CLUSTER_ID,
    KEY_BLOCK_SIZE,
    KEY_TICK_MS,
    KEY_ELECTION_TICKS,
    KEY_HEARTBEAT_TICKS,
    KEY_OP_TIMEOUT_S,
    KEY_COUNT,
};

struct int_key {
    const char *name;
    uint64_t min, max;
    size_t offset; /* of the uint32_t in struct cluster_config */
};

static const struct int_key int_keys[KEY_COUNT] = {
    [KEY_BLOCK_SIZE] = {"block_size", CONFIG_BLOCK_SIZE_MIN, CONFIG_BLOCK_SIZE_MAX,
                        offsetof(struct cluster_config, block_size)},
    [KEY_TICK_MS] = {"tick_ms", 1, 1000, offsetof(struct cluster_config, tick_ms)},
    [KEY_ELECTION_TICKS] = {"election_ticks", 2, 100000,
                            offsetof(struct cluster_config, election_ticks)},
    [KEY_HEARTBEAT_TICKS] = {"heartbeat_ticks", 1, 10000,
                             offsetof(struct cluster_config, heartbeat_ticks)},
    [KEY_OP_TIMEOUT_S] = {"op_timeout_s", 1, 86400,
                          offsetof(struct cluster_config, op_timeout_s)},
};

struct parser {
    struct cluster_config c;
    unsigned key_line[KEY_COUNT];               /* 0: not seen */
    unsigned node_line[CONFIG_NODES_MAX + 1];   /* 0: not seen */
    unsigned line;
    char *err;
    size_t errlen;
};

__attribute__((format(printf, 2, 3)))
static int fail(struct parser *p, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (p->errlen) {
        if (p->line)
            snprintf(p->err, p->errlen, "%u: %s", p->line, msg);
        else
            snprintf(p->err, p->errlen, "%s", msg);
    }
    return -EINVAL;
}

/* A printable, bounded copy of untrusted text for an error message. */
static void quote(const char *s, size_t n, char *out, size_t outlen)
{
    ASSERT(outlen >= 8);
    size_t k = 0, limit = outlen - 4;
    for (size_t i = 0; i < n && k < limit; i++)
        out[k++] = isprint((unsigned char)s[i]) ? s[i] : '?';
    if (n > limit) {
        memcpy(out + limit, "...", 3);
        k = limit + 3;
    }
    out[k] = '\0';
}

static bool parse_uint(const char *s, size_t n, uint64_t *out)
{
    if (n == 0 || n > 10)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (n > 1 && s[0] == '0') /* one spelling per number */
        return false;
    *out = v;
    return true;
}

static int hex_digit(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

static int set_cluster_id(struct parser *p, const char *v, size_t n)
{
    char q[80];
    quote(v, n, q, sizeof q);
    if (n != 2 * CONFIG_CLUSTER_ID_BYTES)
        return fail(p, "cluster_id must be 32 hex digits, got '%s'", q);
    uint8_t id[CONFIG_CLUSTER_ID_BYTES];
    bool zero = true;
    for (size_t i = 0; i < CONFIG_CLUSTER_ID_BYTES; i++) {
        int hi = hex_digit(v[2 * i]), lo = hex_digit(v[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return fail(p, "cluster_id must be 32 hex digits, got '%s'", q);
        id[i] = (uint8_t)(hi << 4 | lo);
        zero = zero && id[i] == 0;
    }
    if (zero)
        return fail(p, "cluster_id must not be all zeros");
    memcpy(p->c.cluster_id, id, sizeof id);
    return 0;
}

static int set_int(struct parser *p, enum key_id k, const char *v, size_t n)
{
    const struct int_key *ik = &int_keys[k];
    uint64_t x;
    if (!parse_uint(v, n, &x) || x < ik->min || x > ik->max) {
        char q[80];
        quote(v, n, q, sizeof q);
        return fail(p, "%s must be an integer in %llu..%llu, got '%s'", ik->name,
                    (unsigned long long)ik->min, (unsigned long long)ik->max, q);
    }
    if (k == KEY_BLOCK_SIZE && (x & (x - 1)) != 0)
        return fail(p, "block_size must be a power of two, got %llu", (unsigned long long)x);
    *(uint32_t *)((char *)&p->c + ik->offset) = (uint32_t)x;
    return 0;
}

static bool host_name_char(char ch)
{
    return isalnum((unsigned char)ch) || ch == '.' || ch == '-' || ch == '_';
}

static bool host_v6_char(char ch)
{
    return hex_digit(ch) >= 0 || ch == ':' || ch == '.';
}

/* "host:port" or "[v6]:port". */
static int set_node(struct parser *p, uint32_t k, const char *v, size_t n)
{
    char q[160];
    quote(v, n, q, sizeof q);
    const char *host, *port;
    size_t host_n;
    if (n > 0 && v[0] == '[') {
        const char *close = memchr(v, ']', n);
        if (!close || close + 1 >= v + n || close[1] != ':')
            return fail(p, "node.%u: expected '[ipv6]:port', got '%s'", k, q);
        host = v + 1;
        host_n = (size_t)(close - host);
        port = close + 2;
        for (size_t i = 0; i < host_n; i++)
            if (!host_v6_char(host[i]))
                return fail(p, "node.%u: bad IPv6 address in '%s'", k, q);
        if (!memchr(host, ':', host_n))
            return fail(p, "node.%u: bad IPv6 address in '%s'", k, q);
    } else {
        const char *colon = memchr(v, ':', n);
        if (!colon)
            return fail(p, "node.%u: expected 'host:port', got '%s'", k, q);
        if (memchr(colon + 1, ':', (size_t)(v + n - colon - 1)))
            return fail(p, "node.%u: write an IPv6 address in brackets, as in "
                           "'[::1]:7400', got '%s'", k, q);
        host = v;
        host_n = (size_t)(colon - v);
        port = colon + 1;
        for (size_t i = 0; i < host_n; i++)
            if (!host_name_char(host[i]))
                return fail(p, "node.%u: bad host name in '%s' (IPv6 goes in brackets)", k, q);
    }
    if (host_n == 0 || host_n >= CONFIG_HOST_BYTES)
        return fail(p, "node.%u: host must be 1..%d characters in '%s'", k,
                    CONFIG_HOST_BYTES - 1, q);
    uint64_t port_v;
    if (!parse_uint(port, (size_t)(v + n - port), &port_v) || port_v < 1 || port_v > 65535)
        return fail(p, "node.%u: port must be an integer in 1..65535 in '%s'", k, q);
    struct config_node *node = &p->c.nodes[k];
    memcpy(node->host, host, host_n);
    node->host[host_n] = '\0';
    node->port = (uint16_t)port_v;
    return 0;
}

static void trim(const char **s, size_t *n)
{
    while (*n && isspace((unsigned char)**s)) {
        (*s)++;
        (*n)--;
    }
    while (*n && isspace((unsigned char)(*s)[*n - 1]))
        (*n)--;
}

static bool key_is(const char *k, size_t n, const char *name)
{
    return strlen(name) == n && memcmp(k, name, n) == 0;
}

static int parse_line(struct parser *p, const char *s, size_t n)
{
    const char *hash = memchr(s, '#', n);
    if (hash)
        n = (size_t)(hash - s);
    trim(&s, &n);
    if (n == 0)
        return 0;
    const char *eq = memchr(s, '=', n);
    char q[80];
    if (!eq) {
        quote(s, n, q, sizeof q);
        return fail(p, "expected 'key = value', got '%s'", q);
    }
    const char *key = s, *val = eq + 1;
    size_t key_n = (size_t)(eq - s), val_n = n - key_n - 1;
    trim(&key, &key_n);
    trim(&val, &val_n);
    quote(key, key_n, q, sizeof q);
    if (key_n == 0)
        return fail(p, "missing key before '='");
    if (val_n == 0)
        return fail(p, "no value for '%s'", q);

    if (key_n > 5 && memcmp(key, "node.", 5) == 0) {
        uint64_t k;
        if (!parse_uint(key + 5, key_n - 5, &k) || k < 1 || k > CONFIG_NODES_MAX)
            return fail(p, "node number in '%s' must be an integer in 1..%u", q,
                        CONFIG_NODES_MAX);
        if (p->node_line[k])
            return fail(p, "duplicate key '%s' (first on line %u)", q, p->node_line[k]);
        p->node_line[k] = p->line;
        return set_node(p, (uint32_t)k, val, val_n);
    }
    enum key_id id = KEY_COUNT;
    if (key_is(key, key_n, "cluster_id"))
        id = KEY_CLUSTER_ID;
    for (int i = 0; i < KEY_COUNT; i++)
        if (int_keys[i].name && key_is(key, key_n, int_keys[i].name))
            id = (enum key_id)i;
    if (id == KEY_COUNT)
        return fail(p, "unknown key '%s' (known: cluster_id, block_size, tick_ms, "
                       "election_ticks, heartbeat_ticks, op_timeout_s, node.<K>)", q);
    if (p->key_line[id])
        return fail(p, "duplicate key '%s' (first on line %u)", q, p->key_line[id]);
    p->key_line[id] = p->line;
    if (id == KEY_CLUSTER_ID)
        return set_cluster_id(p, val, val_n);
    return set_int(p, id, val, val_n);
}

/* Checks that involve several keys, after the last line. */
static int check_whole(struct parser *p)
{
    p->line = 0;
    if (!p->key_line[KEY_CLUSTER_ID])
        return fail(p, "missing cluster_id (the file written by paxfs init has one)");
    if (!p->key_line[KEY_BLOCK_SIZE])
        return fail(p, "missing block_size (fixed when the cluster was created)");
    uint32_t n = 0;
    for (uint32_t k = 1; k <= CONFIG_NODES_MAX; k++)
        if (p->node_line[k])
            n = k;
    if (n == 0)
        return fail(p, "no nodes: add lines 'node.1 = host:port', 'node.2 = ...'");
    for (uint32_t k = 1; k <= n; k++)
        if (!p->node_line[k])
            return fail(p, "missing node.%u (nodes are numbered 1..N without gaps, "
                           "and node.%u exists)", k, n);
    for (uint32_t k = 2; k <= n; k++)
        for (uint32_t j = 1; j < k; j++)
            if (p->c.nodes[k].port == p->c.nodes[j].port &&
                strcasecmp(p->c.nodes[k].host, p->c.nodes[j].host) == 0) {
                p->line = p->node_line[k];
                return fail(p, "node.%u has the same address as node.%u (line %u)", k, j,
                            p->node_line[j]);
            }
    if (p->c.election_ticks <= 2 * p->c.heartbeat_ticks)
        return fail(p, "election_ticks (%u) must be more than twice heartbeat_ticks (%u)",
                    p->c.election_ticks, p->c.heartbeat_ticks);
    p->c.n_nodes = n;
    return 0;
}

int config_parse(const char *text, size_t len, struct cluster_config *out,
                 char *err, size_t errlen)
{
    struct parser *p = calloc(1, sizeof *p);
    ASSERT(p != NULL);
    p->err = err;
    p->errlen = errlen;
    p->c.tick_ms = CONFIG_TICK_MS_DEFAULT;
    p->c.election_ticks = CONFIG_ELECTION_TICKS_DEFAULT;
    p->c.heartbeat_ticks = CONFIG_HEARTBEAT_TICKS_DEFAULT;
    p->c.op_timeout_s = CONFIG_OP_TIMEOUT_S_DEFAULT;
    int rc = 0;
    size_t off = 0;
    while (off < len && rc == 0) {
        p->line++;
        const char *s = text + off;
        const char *nl = memchr(s, '\n', len - off);
        size_t n = nl ? (size_t)(nl - s) : len - off;
        off += n + (nl ? 1 : 0);
        if (n > CONFIG_LINE_MAX)
            rc = fail(p, "line longer than %d characters", CONFIG_LINE_MAX);
        else if (memchr(s, '\0', n))
            rc = fail(p, "contains a NUL byte (not a text file?)");
        else
            rc = parse_line(p, s, n);
    }
    if (rc == 0)
        rc = check_whole(p);
    if (rc == 0)
        *out = p->c;
    free(p);
    return rc;
}

int config_load(const char *path, struct cluster_config *out, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "%s: %s", path, strerror(e));
        return -e;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > CONFIG_FILE_BYTES_MAX) {
        close(fd);
        snprintf(err, errlen, "%s: not a regular file of at most %u bytes", path,
                 CONFIG_FILE_BYTES_MAX);
        return -EINVAL;
    }
    size_t size = (size_t)st.st_size;
    char *text = malloc(size + 1);
    ASSERT(text != NULL);
    size_t got = 0;
    while (got < size) { /* bounded: each pass reads >= 1 byte or stops */
        ssize_t r = read(fd, text + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            snprintf(err, errlen, "%s: read: %s", path, strerror(e));
            close(fd);
            free(text);
            return -e;
        }
        got += (size_t)r;
    }
    close(fd);
    char msg[512];
    int rc = config_parse(text, size, out, msg, sizeof msg);
    free(text);
    if (rc)
        snprintf(err, errlen, "%s:%s%s", path, msg[0] >= '0' && msg[0] <= '9' ? "" : " ", msg);
    return rc;
}

void config_cluster_id_hex(const uint8_t id[CONFIG_CLUSTER_ID_BYTES], char out[33])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < CONFIG_CLUSTER_ID_BYTES; i++) {
        out[2 * i] = digits[id[i] >> 4];
        out[2 * i + 1] = digits[id[i] & 15];
    }
    out[32] = '\0';
}

void config_node_addr(const struct config_node *n, char *out, size_t outlen)
{
    if (strchr(n->host, ':'))
        snprintf(out, outlen, "[%s]:%u", n->host, n->port);
    else
        snprintf(out, outlen, "%s:%u", n->host, n->port);
}

__attribute__((format(printf, 2, 3)))
static void put_fmt(struct buf *b, const char *fmt, ...)
{
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    ASSERT(n >= 0);
    char *dst = buf_append_space(b, (size_t)n + 1);
    vsnprintf(dst, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    b->len--; /* drop the NUL */
}

void config_format(const struct cluster_config *c, struct buf *out)
{
    char id[33];
    config_cluster_id_hex(c->cluster_id, id);
    put_fmt(out,
        "# paxfs cluster configuration, written by `paxfs init`.\n"
        "#\n"
        "# Every node of the cluster uses an identical copy of this file.\n"
        "# Format: one 'key = value' per line; '#' starts a comment; blank lines\n"
        "# are ignored; keys may come in any order, each once.\n"
        "#\n"
        "# Files next to this one: ca.crt (the cluster CA, every node needs it),\n"
        "# node<K>.crt and node<K>.key (node K's certificate and private key; a\n"
        "# host needs only its own). ca.key signs node certificates: it is needed\n"
        "# only to add nodes; move it offline.\n"
        "\n"
        "# The cluster's identity. Node certificates name it and peers from\n"
        "# another cluster are refused. Never change it.\n"
        "cluster_id = %s\n"
        "\n"
        "# File data is stored in blocks of this many bytes (a power of two,\n"
        "# 4096..16777216). Fixed when the cluster is created.\n"
        "block_size = %u\n"
        "\n"
        "# Timing. The consensus core advances one tick every tick_ms\n"
        "# milliseconds (1..1000). A follower that hears no leader for\n"
        "# election_ticks ticks (more than twice heartbeat_ticks) starts an\n"
        "# election; the leader sends a heartbeat every heartbeat_ticks ticks.\n"
        "# An operation that cannot reach a quorum fails with EIO after\n"
        "# op_timeout_s seconds.\n"
        "tick_ms = %u\n"
        "election_ticks = %u\n"
        "heartbeat_ticks = %u\n"
        "op_timeout_s = %u\n"
        "\n"
        "# The nodes, numbered 1..N without gaps: node.<K> = <host>:<port>, where\n"
        "# node K listens for its peers (TLS 1.3, mutually authenticated). host is\n"
        "# a name or an address; write IPv6 addresses in brackets: [::1]:7400.\n",
        id, c->block_size, c->tick_ms, c->election_ticks, c->heartbeat_ticks,
        c->op_timeout_s);
    for (uint32_t k = 1; k <= c->n_nodes; k++) {
        char addr[CONFIG_HOST_BYTES + 16];
        config_node_addr(&c->nodes[k], addr, sizeof addr);
        put_fmt(out, "node.%u = %s\n", k, addr);
    }
}
