/* Logging: one line per event, key=value, through an injectable sink so that
 * the deterministic simulator can capture or silence it (STYLE.md, Logs).
 *
 * The default sink writes to stderr with a wall-clock timestamp. A sink may
 * be replaced at any time; the level filter is a single global. */
#ifndef PAXFS_BASE_LOG_H
#define PAXFS_BASE_LOG_H

#include <stdarg.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3, LOG_OFF = 4 };

typedef void (*log_sink_fn)(void *ctx, enum log_level level, const char *line);

/* Replaces the sink; NULL restores the stderr sink. */
void log_set_sink(log_sink_fn fn, void *ctx);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);

/* Formats one line (no trailing newline needed) and hands it to the sink. */
void log_write(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void log_vwrite(enum log_level level, const char *fmt, va_list ap);

#define LOG_D(...) do { if (log_get_level() <= LOG_DEBUG) log_write(LOG_DEBUG, __VA_ARGS__); } while (0)
#define LOG_I(...) log_write(LOG_INFO, __VA_ARGS__)
#define LOG_W(...) log_write(LOG_WARN, __VA_ARGS__)
#define LOG_E(...) log_write(LOG_ERROR, __VA_ARGS__)

#endif
