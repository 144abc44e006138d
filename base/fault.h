/* Fault-injection points (SQLite's sqlite3FaultSim). A point is a name used
 * at a place that can fail (an fsync, a write, a rename). Unarmed, a point
 * costs one relaxed load of a global counter. Tests arm a point to fail
 * after `countdown` further hits, `repeat` times, with a chosen errno. */
#ifndef PAXFS_BASE_FAULT_H
#define PAXFS_BASE_FAULT_H

#include <stdatomic.h>

extern atomic_int fault_armed_count;

/* Returns 0, or the negative errno the armed point injects. */
int fault_hit_slow(const char *name);

static inline int fault_hit(const char *name)
{
    if (__builtin_expect(atomic_load_explicit(&fault_armed_count, memory_order_relaxed) == 0, 1))
        return 0;
    return fault_hit_slow(name);
}

/* Arms `name`: after `countdown` passing hits, the next `repeat` hits return
 * -err (repeat < 0: forever). Re-arming a name replaces it. */
void fault_arm(const char *name, int countdown, int repeat, int err);
void fault_disarm_all(void);

#define FAULT(name) fault_hit(name)

#endif
