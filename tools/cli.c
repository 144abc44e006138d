/* cli — see cli.h. */
#include "tools/cli.h"

#include <pthread.h>
#include <stdarg.h>
#include <string.h>

#include "base/assert.h"
#include "net/config.h"

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "paxfs %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return EXIT_USAGE;
}

int cli_option_value(int argc, char **argv, int *i, const char *name, const char **value)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0)
        return 0;
    if (a[n] == '=') {
        *value = a + n + 1;
        return 1;
    }
    if (a[n] != '\0')
        return 0;
    if (*i + 1 >= argc)
        return -1;
    *value = argv[++*i];
    return 1;
}

void cli_json_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(out, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(out, "\\u%04x", *p);
        else
            fputc(*p, out);
    }
    fputc('"', out);
}

struct status_query {
    struct net_status_client *client;
    uint32_t node;
    unsigned timeout_ms;
    pthread_t thread;
    bool threaded;
    struct cli_status *out;
};

static void *status_query_main(void *arg)
{
    struct status_query *q = arg;
    q->out->rc = net_status_query(q->client, q->node, q->timeout_ms, &q->out->reply, q->out->err,
                                  sizeof q->out->err);
    return NULL;
}

void cli_status_all(struct net_status_client *client, uint32_t n, unsigned timeout_ms,
                    struct cli_status *out)
{
    struct status_query qs[CONFIG_NODES_MAX + 1];
    ASSERT(n <= CONFIG_NODES_MAX);
    for (uint32_t k = 1; k <= n; k++) {
        struct status_query *q = &qs[k];
        *q = (struct status_query){client, k, timeout_ms, 0, false, &out[k]};
        q->threaded = pthread_create(&q->thread, NULL, status_query_main, q) == 0;
        if (!q->threaded)
            status_query_main(q);
    }
    for (uint32_t k = 1; k <= n; k++)
        if (qs[k].threaded)
            pthread_join(qs[k].thread, NULL);
}

uint32_t cli_status_leader(uint32_t n, const struct cli_status *st)
{
    uint32_t best = 0;
    for (uint32_t k = 1; k <= n; k++) {
        const struct net_status_reply *r = &st[k].reply;
        if (st[k].rc == 0 && r->role == NET_STATUS_LEADER && !r->failed &&
            (!best || r->ballot > st[best].reply.ballot))
            best = k;
    }
    return best;
}
