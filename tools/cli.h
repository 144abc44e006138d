/* cli — small pieces the paxfs subcommands share: one-line usage errors,
 * "--name VALUE" parsing, JSON string output. */
#ifndef PAXFS_TOOLS_CLI_H
#define PAXFS_TOOLS_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

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

#endif
