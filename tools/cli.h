/* cli — small pieces the paxfs subcommands share: one-line usage errors,
 * "--name VALUE" parsing, JSON string output, asking every node for its
 * status at once. */
#ifndef PAXFS_TOOLS_CLI_H
#define PAXFS_TOOLS_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "net/status.h"

#define EXIT_USAGE 2
#define EXIT_FINDING 1

/* Prints "paxfs <cmd>: <message>" and returns EXIT_USAGE. */
__attribute__((format(printf, 2, 3)))
int cli_usage_error(const char *cmd, const char *fmt, ...);
/* Matches "--name VALUE" and "--name=VALUE"; advances *i past the value.
 * 1 matched, 0 not this option, -1 the value is missing. */
int cli_option_value(int argc, char **argv, int *i, const char *name, const char **value);
/* Writes s as a JSON string (quotes, escapes) to out. */
void cli_json_string(FILE *out, const char *s);

/* One node's answer to a status query: rc 0 and reply, or rc < 0 and err. */
struct cli_status {
    int rc;
    struct net_status_reply reply;
    char err[256];
};
/* Asks nodes 1..n at once (a thread each; inline if one cannot start), so
 * that the whole takes about one timeout_ms even with several nodes down.
 * out[k] is node k's answer. */
void cli_status_all(struct net_status_client *client, uint32_t n, unsigned timeout_ms,
                    struct cli_status *out);
/* The answering leader with the highest ballot (a deposed leader may still
 * think it leads for a moment), or 0. */
uint32_t cli_status_leader(uint32_t n, const struct cli_status *st);

#endif
