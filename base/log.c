/* Logging sink and level; see log.h. */
#include "base/log.h"
#include "base/assert.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static log_sink_fn sink_fn;
static void *sink_ctx;
static enum log_level level_min = LOG_INFO;

static const char *level_name(enum log_level level)
{
    static const char *names[] = {"debug", "info", "warn", "error", "off"};
    return names[level <= LOG_OFF ? level : LOG_OFF];
}

static void stderr_sink(void *ctx, enum log_level level, const char *line)
{
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    fprintf(stderr, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s %s\n",
            tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
            tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, level_name(level),
            line);
}

void log_set_sink(log_sink_fn fn, void *ctx)
{
    sink_fn = fn;
    sink_ctx = ctx;
}

void log_set_level(enum log_level level) { level_min = level; }
enum log_level log_get_level(void) { return level_min; }

void log_vwrite(enum log_level level, const char *fmt, va_list ap)
{
    if (level < level_min)
        return;
    char line[1024];
    vsnprintf(line, sizeof line, fmt, ap);
    if (sink_fn)
        sink_fn(sink_ctx, level, line);
    else
        stderr_sink(NULL, level, line);
}

void log_write(enum log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vwrite(level, fmt, ap);
    va_end(ap);
}

_Noreturn void assert_fail(const char *expr, const char *file, int line,
                           const char *func)
{
    fprintf(stderr, "assertion failed: %s at %s:%d in %s()\n", expr, file,
            line, func);
    fflush(stderr);
    abort();
}
