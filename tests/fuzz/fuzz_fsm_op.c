/* Fuzz target: the op-record codec and fsm_apply (fs/fsm.h). Arbitrary
 * bytes are decoded; a record that decodes must encode back to exactly the
 * same bytes, and one that does not must be -EBADMSG from fsm_apply too.
 * Every input is then applied to one long-lived small fsm (so sequences of
 * ops build real trees across inputs) backed by a real block store in a
 * temp dir created on first use, and the reads are exercised on what it
 * touched. The fsm is rebuilt every RESET_EVERY inputs to stay bounded.
 * Nothing may crash, hang, leak or read out of bounds. */
#include "fs/fsm.h"

#include "fs/store.h"

#include "../fsm_fixture.h"

#include "base/assert.h"
#include "base/buf.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define RESET_EVERY 64
#define NODES 3
#define READ_MAX (64u * 1024u)

static struct fixture fx;
static struct store *st;
static struct fsm *fs;
static unsigned inputs;
static uint8_t *rbuf;

static void cleanup(void)
{
    fixture_close(&fx, st, fs);
    free(rbuf);
}

static void init(void)
{
    fixture_quiet_log();
    const struct fixture_config cfg = {.dir_name = "paxfs-fuzz-fsm",
                                       .prefer_shm = true, /* tmpfs makes the fsyncs cheap */
                                       .block_size = STORE_BLOCK_SIZE_MIN,
                                       .cache_bytes = 1u << 20,
                                       .nodes = NODES};
    ASSERT(fixture_open(&fx, &cfg, &st, &fs) == 0);
    rbuf = malloc(READ_MAX);
    ASSERT(rbuf);
    atexit(cleanup);
}

static void reset(void)
{
    fsm_free(fs);
    ASSERT(store_gc(st, NULL) == 0);
    ASSERT(fsm_new(st, NODES, &fs) == 0);
}

static int count_fn(void *ctx, const char *name, const struct fsm_attr *a, uint64_t cookie)
{
    ASSERT(name && name[0] && a->ino && a->mode && cookie);
    return ++*(unsigned *)ctx >= 1000;
}

/* Reads everything about one inode; only the error codes are checked. */
static void poke(uint64_t ino, uint64_t off)
{
    struct fsm_attr a;
    if (fsm_getattr(fs, ino, &a) != 0)
        return;
    ASSERT(a.ino == ino);
    size_t got = 0;
    int rc = fsm_read(fs, ino, off, READ_MAX, rbuf, &got);
    ASSERT(rc == 0 || rc == -EISDIR || rc == -EINVAL);
    if (rc == 0)
        ASSERT(got <= READ_MAX && (off >= a.size ? got == 0 : got == MIN(READ_MAX, a.size - off)));
    unsigned n = 0;
    rc = fsm_readdir(fs, ino, 0, count_fn, &n);
    ASSERT(rc == 0 || rc == -ENOTDIR);
    char link[FSM_SYMLINK_MAX + 1];
    size_t len = 0;
    rc = fsm_readlink(fs, ino, link, sizeof link, &len);
    ASSERT(rc == 0 || rc == -EINVAL);
    char list[256];
    rc = fsm_listxattr(fs, ino, list, sizeof list, &len);
    ASSERT(rc == 0 || rc == -ERANGE);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!fs)
        init();
    if (++inputs % RESET_EVERY == 0)
        reset();

    struct fsm_op op;
    int rc = fsm_op_decode(data, size, &op);
    ASSERT(rc == 0 || rc == -EBADMSG);
    struct fsm_changes ch;
    if (rc != 0) {
        ASSERT(fsm_apply(fs, data, size, &ch) == -EBADMSG);
        ASSERT(ch.n_inodes == 0 && ch.n_entries == 0);
        return 0;
    }
    struct buf b;
    buf_init(&b);
    ASSERT(fsm_op_encode(&op, &b) == 0);
    ASSERT(b.len == size && memcmp(b.data, data, size) == 0);
    buf_deinit(&b);

    uint64_t before = fsm_digest(fs);
    int64_t res = fsm_apply(fs, data, size, &ch);
    ASSERT(res >= -4095);
    ASSERT(ch.n_inodes <= FSM_CHANGES_MAX && ch.n_entries <= 4);
    bool carried = op.type == FSM_OP_WRITE && (op.flags & FSM_WRITE_SETATTR);
    if (res < 0 || (carried && fsm_carried_write_rc(res) < 0 && fsm_carried_setattr_rc(res) < 0))
        ASSERT(fsm_digest(fs) == before); /* a failed op changes nothing */

    poke(FSM_ROOT_INO, 0);
    if (op.ino)
        poke(op.ino, op.offset);
    if (op.parent)
        poke(op.parent, 0);
    if (res > 0 && op.type != FSM_OP_WRITE)
        poke((uint64_t)res, 0);
    uint64_t held[8];
    for (uint32_t node = 1; node <= NODES; node++)
        ASSERT(fsm_orphans_held(fs, node, held, 8) <= 1u << 20);
    struct fsm_statfs s;
    fsm_statfs(fs, &s);
    ASSERT(s.inodes >= 1);
    return 0;
}
