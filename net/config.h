/* cluster.conf: the one file every node of a cluster shares.
 *
 * A human-editable text file written by `paxfs init`:
 *
 *   # comments start with '#', anywhere on a line; blank lines are ignored
 *   cluster_id = 5f0c...        32 hex digits, required
 *   block_size = 262144         bytes, power of two in [4 KiB, 16 MiB], required
 *   tick_ms = 10                optional, 1..1000
 *   election_ticks = 20         optional, 2..100000, > 2 * heartbeat_ticks
 *   heartbeat_ticks = 2         optional, 1..10000
 *   op_timeout_s = 30           optional, 1..86400
 *   node.1 = 127.0.0.1:7400     one per node, K = 1..N without gaps,
 *   node.2 = [::1]:7401         N <= CONFIG_NODES_MAX; host is a name, an
 *                               IPv4 address or a bracketed IPv6 address
 *
 * Keys may appear in any order, each once. Node K's certificate and key live
 * next to the file as node<K>.crt and node<K>.key, the CA as ca.crt.
 *
 * Every rejection is one line, "LINE: what is wrong" (config_load prefixes
 * the path), so an operator can fix the file without reading code. The parser
 * takes arbitrary bytes (it has a fuzz target) and config_format writes a
 * file that parses back to the same struct. */
#ifndef PAXFS_NET_CONFIG_H
#define PAXFS_NET_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "consensus/px.h"

#define CONFIG_NODES_MAX PX_NODES_MAX
#define CONFIG_HOST_BYTES 256 /* includes the NUL */
#define CONFIG_CLUSTER_ID_BYTES 16
#define CONFIG_BLOCK_SIZE_MIN (4u * 1024u)
#define CONFIG_BLOCK_SIZE_MAX (16u * 1024u * 1024u)
#define CONFIG_TICK_MS_DEFAULT 10u
#define CONFIG_ELECTION_TICKS_DEFAULT 20u
#define CONFIG_HEARTBEAT_TICKS_DEFAULT 2u
#define CONFIG_OP_TIMEOUT_S_DEFAULT 30u
/* Longest line the parser accepts; longer is an error, never a truncation. */
#define CONFIG_LINE_MAX 1024

struct config_node {
    char host[CONFIG_HOST_BYTES]; /* without brackets for IPv6 */
    uint16_t port;
};

struct cluster_config {
    uint8_t cluster_id[CONFIG_CLUSTER_ID_BYTES];
    uint32_t block_size;
    uint32_t tick_ms;
    uint32_t election_ticks;
    uint32_t heartbeat_ticks;
    uint32_t op_timeout_s;
    uint32_t n_nodes;
    struct config_node nodes[CONFIG_NODES_MAX + 1]; /* [1..n_nodes] */
};

/* Parses len bytes of text. 0 and *out filled, or -EINVAL and a one-line
 * message "LINE: what is wrong" (or "what is missing") in err. */
int config_parse(const char *text, size_t len, struct cluster_config *out,
                 char *err, size_t errlen);
/* Reads and parses path; errors are "PATH:LINE: ..." or "PATH: <errno text>".
 * -EINVAL for a bad file, -errno if it cannot be read. */
int config_load(const char *path, struct cluster_config *out, char *err,
                size_t errlen);
/* Appends the documented text form of c (what paxfs init writes). c must be
 * valid (config_parse of the output succeeds and gives back c). */
void config_format(const struct cluster_config *c, struct buf *out);

/* 32 lowercase hex digits; out has room for 33 bytes. */
void config_cluster_id_hex(const uint8_t id[CONFIG_CLUSTER_ID_BYTES], char out[33]);
/* "host:port", or "[host]:port" for an IPv6 address. */
void config_node_addr(const struct config_node *n, char *out, size_t outlen);

#endif
