/* See fault.h. A small fixed table; arming is test-only and rare. */
#include "base/fault.h"
#include "base/assert.h"

#include <pthread.h>
#include <string.h>

#define FAULT_SLOTS 16

struct fault_point {
    char name[48];
    int countdown;
    int repeat;
    int err;
};

atomic_int fault_armed_count;
static struct fault_point points[FAULT_SLOTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

int fault_hit_slow(const char *name)
{
    int rc = 0;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < FAULT_SLOTS; i++) {
        struct fault_point *f = &points[i];
        if (!f->name[0] || strcmp(f->name, name) != 0)
            continue;
        if (f->countdown > 0) {
            f->countdown--;
        } else if (f->repeat != 0) {
            if (f->repeat > 0)
                f->repeat--;
            rc = -f->err;
        }
        break;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

void fault_arm(const char *name, int countdown, int repeat, int err)
{
    ASSERT(strlen(name) < sizeof points[0].name && err > 0);
    pthread_mutex_lock(&lock);
    int free_slot = -1;
    for (int i = 0; i < FAULT_SLOTS; i++) {
        if (points[i].name[0] && strcmp(points[i].name, name) == 0) {
            free_slot = i;
            break;
        }
        if (!points[i].name[0] && free_slot < 0)
            free_slot = i;
    }
    ASSERT(free_slot >= 0);
    struct fault_point *f = &points[free_slot];
    if (!f->name[0])
        atomic_fetch_add(&fault_armed_count, 1);
    strcpy(f->name, name);
    f->countdown = countdown;
    f->repeat = repeat;
    f->err = err;
    pthread_mutex_unlock(&lock);
}

void fault_disarm_all(void)
{
    pthread_mutex_lock(&lock);
    memset(points, 0, sizeof points);
    atomic_store(&fault_armed_count, 0);
    pthread_mutex_unlock(&lock);
}
