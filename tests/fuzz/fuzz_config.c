/* Fuzz target for the cluster.conf parser (net/config.h).
 *
 * Arbitrary bytes go to config_parse. A rejection must come with a non-empty
 * one-line message; an accepted file must survive config_format and parse
 * back to the same configuration. */
#include "net/config.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(bool ok)
{
    if (!ok)
        abort();
}

static bool same(const struct cluster_config *a, const struct cluster_config *b)
{
    if (memcmp(a->cluster_id, b->cluster_id, sizeof a->cluster_id) != 0 ||
        a->block_size != b->block_size || a->tick_ms != b->tick_ms ||
        a->election_ticks != b->election_ticks || a->heartbeat_ticks != b->heartbeat_ticks ||
        a->op_timeout_s != b->op_timeout_s || a->n_nodes != b->n_nodes)
        return false;
    for (uint32_t k = 1; k <= a->n_nodes; k++)
        if (strcmp(a->nodes[k].host, b->nodes[k].host) != 0 || a->nodes[k].port != b->nodes[k].port)
            return false;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct cluster_config c, back;
    char err[512] = "";
    int rc = config_parse((const char *)data, size, &c, err, sizeof err);
    if (rc != 0) {
        check(err[0] != '\0' && strchr(err, '\n') == NULL);
        return 0;
    }
    check(c.n_nodes >= 1 && c.n_nodes <= CONFIG_NODES_MAX);
    struct buf b;
    buf_init(&b);
    config_format(&c, &b);
    check(config_parse((const char *)b.data, b.len, &back, err, sizeof err) == 0);
    check(same(&c, &back));
    buf_deinit(&b);
    return 0;
}
