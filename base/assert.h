/* Assertions for programmer errors. They stay on in release builds: a broken
 * invariant in a replicated filesystem must stop the process, never go on to
 * corrupt a replica. Bad input and I/O faults are returned errors, not
 * assertions (STYLE.md, Errors). */
#ifndef PAXFS_BASE_ASSERT_H
#define PAXFS_BASE_ASSERT_H

#include <stdio.h>
#include <stdlib.h>

_Noreturn void assert_fail(const char *expr, const char *file, int line,
                           const char *func);

#define ASSERT(cond)                                                     \
    do {                                                                 \
        if (__builtin_expect(!(cond), 0))                                \
            assert_fail(#cond, __FILE__, __LINE__, __func__);            \
    } while (0)

/* Marks a branch that should be impossible; in a release build it still
 * returns the error path rather than crashing (SQLite's NEVER()). */
#define NEVER(cond) __builtin_expect(!!(cond), 0)

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
