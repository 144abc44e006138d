/* The fixture shared by the tests and fuzz targets of the filesystem state
 * machine (fs/fsm.h) and the block store (fs/store.h): a scratch directory
 * made by mkdtemp, a store in it, an fsm on that store, and the one way an
 * op reaches an fsm (stamped, encoded, applied), so that each test file
 * need not carry its own copy of them.
 *
 * Users: test_fsm.c and test_fsm_image.c (all of it), test_store.c (the
 * directory only: its tests open their own stores), fuzz/fuzz_fsm_op.c and
 * fuzz/fuzz_fsm_image.c (the directory and the store, opened once per
 * process and closed at exit).
 *
 * Criterion-free, so that the fuzz targets can link it: each function
 * returns 0 or a negative errno and the caller asserts in its own way
 * (cr_assert_eq in a test, ASSERT in a fuzz target).
 *
 * Life cycle: fixture_open (or fixture_make_dir alone), then fixture_close
 * (or fixture_remove_dir). Everything the fixture makes lies under fx->dir
 * and the close removes all of it, so a process leaves one directory
 * behind at most, and only if it dies before the close. */
#ifndef PAXFS_TESTS_FSM_FIXTURE_H
#define PAXFS_TESTS_FSM_FIXTURE_H

#include "fs/fsm.h"
#include "fs/store.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct fixture {
    char dir[64];    /* the scratch directory, made by mkdtemp */
    char root[128];  /* dir/store: the store's root (created by store_open) */
};

struct fixture_config {
    const char *dir_name;  /* the scratch directory's name, before mkdtemp's suffix */
    bool prefer_shm;       /* in /dev/shm when it is writable (tmpfs: the store's
                              fsyncs cost nothing there), else in /tmp */
    uint32_t block_size;   /* of the store */
    size_t cache_bytes;    /* of the store; 0: every read goes to disk */
    bool defer_sync;       /* of the store (fs/store.h) */
    uint32_t nodes;        /* of the fsm */
};

/* Drops the log lines of the code under test: the errors the tests and
 * fuzz targets provoke on purpose would drown their output. */
void fixture_quiet_log(void);

/* Makes fx->dir, named dir_name plus a unique suffix, under /tmp (or
 * /dev/shm, see fixture_config), and names fx->root inside it; the store
 * itself is not created. 0 or -errno (-ENAMETOOLONG if dir_name does not
 * fit in fx->dir). */
int fixture_make_dir(struct fixture *fx, const char *dir_name, bool prefer_shm);

/* Removes fx->dir and everything under it. */
void fixture_remove_dir(const struct fixture *fx);

/* fixture_make_dir, then a store at fx->root as cfg says in *st and, if fs
 * is not NULL, a new fsm of cfg->nodes nodes on that store in *fs. 0 or
 * -errno; on error nothing is left open and the directory is removed. */
int fixture_open(struct fixture *fx, const struct fixture_config *cfg, struct store **st,
                 struct fsm **fs);

/* Frees fs, closes st, then removes fx->dir. Either may be NULL (a test
 * that freed its fsm itself leaves NULL in its place). */
void fixture_close(const struct fixture *fx, struct store *st, struct fsm *fs);

/* Fills in what a replica's proposer stamps on an op before proposing it:
 * node 1 unless the op names one, and the caller's uid, gid and clock. A
 * RELEASE keeps its node even when 0: there the node is the releasing one,
 * and 0 is a value the tests send on purpose (-EINVAL). */
void fixture_stamp(struct fsm_op *op, uint32_t uid, uint32_t gid, int64_t now_ns);

/* Encodes op and applies the record to f, the path of every op in a
 * replica: *result is what fsm_apply returned (changes as fsm_apply: NULL
 * for none). 0, or the encoder's -errno with nothing applied and *result
 * not written. */
int fixture_apply(struct fsm *f, const struct fsm_op *op, struct fsm_changes *changes,
                  int64_t *result);

#endif
