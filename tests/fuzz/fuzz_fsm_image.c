/* Fuzz target: the snapshot image decoder (fs/fsm.h, fsm_image_*). Each
 * input is tried as it is and again with its last 4 bytes replaced by the
 * right CRC32C, so that mutations reach the decoder behind the checksum.
 * For each: fsm_image_info and fsm_image_blocks must answer 0 or -EBADMSG;
 * fsm_image_restore into a fresh fsm (on a block store in a temp dir
 * created once) must be -EBADMSG or -EINVAL and change nothing, or succeed
 * with a state that encodes back to exactly the input, that fsm_check and
 * the digests walk, and on which renames, exchanges, links, unlinks,
 * rmdirs, creates and orphan releases never trip an assertion: the
 * decoder must refuse every state apply relies on without checking.
 * Nothing may crash, hang, leak or read out of bounds. */
#include "fs/fsm.h"

#include "fs/store.h"

#include "../fsm_fixture.h"

#include "base/assert.h"
#include "base/buf.h"
#include "base/crc32c.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The corpus images are made with these (a smaller block size than the
 * default keeps the store's work small). */
#define NODES 3
#define BLOCK_SIZE STORE_BLOCK_SIZE_MIN
#define ENTRIES_MAX 48

static struct fixture fx;
static struct store *st;

static void cleanup(void)
{
    fixture_close(&fx, st, NULL);
}

static void init(void)
{
    fixture_quiet_log();
    const struct fixture_config cfg = {.dir_name = "paxfs-fuzz-fsm-image",
                                       .prefer_shm = true,
                                       .block_size = BLOCK_SIZE,
                                       .cache_bytes = 0,
                                       .defer_sync = true};
    /* No fsm here: each input restores into a fresh one. */
    ASSERT(fixture_open(&fx, &cfg, &st, NULL) == 0);
    atexit(cleanup);
}

static int count_block(void *ctx, uint64_t ino, uint64_t index, const struct store_name *name,
                       uint32_t len)
{
    (void)index;
    ASSERT(ino >= 1 && name && len >= 1 && len <= STORE_BLOCK_SIZE_MAX);
    ++*(size_t *)ctx;
    return 0;
}

static int count_digest(void *ctx, uint64_t ino, const uint8_t d[FSM_INODE_DIGEST_BYTES])
{
    (void)d;
    ASSERT(ino >= 1);
    ++*(size_t *)ctx;
    return 0;
}

struct ent {
    uint64_t parent, ino;
    uint32_t mode;
    char name[FSM_NAME_MAX + 1];
};

struct ents {
    struct ent e[ENTRIES_MAX];
    size_t n;
    uint64_t parent;
};

static int collect(void *ctx, const char *name, const struct fsm_attr *a, uint64_t cookie)
{
    (void)cookie;
    struct ents *es = ctx;
    if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        return 0;
    if (es->n == ENTRIES_MAX)
        return 1;
    struct ent *e = &es->e[es->n++];
    e->parent = es->parent;
    e->ino = a->ino;
    e->mode = a->mode;
    snprintf(e->name, sizeof e->name, "%s", name);
    return 0;
}

static int64_t apply(struct fsm *f, struct fsm_op *op)
{
    fixture_stamp(op, 0, 0, 42);
    int64_t res;
    if (fixture_apply(f, op, NULL, &res) != 0)
        res = -EINVAL; /* an op the encoder refuses counts as refused */
    ASSERT(res >= -4095);
    return res;
}

static struct fsm_op name_op(uint8_t type, const struct ent *e)
{
    return (struct fsm_op){.type = type, .parent = e->parent, .name = e->name,
                           .name_len = (uint32_t)strlen(e->name)};
}

/* Runs the ops that walk parent chains, link counts and orphan lists over
 * a restored state. Bounded: at most ENTRIES_MAX entries, a few ops each. */
static void exercise(struct fsm *f)
{
    struct ents *es = calloc(1, sizeof *es);
    ASSERT(es);
    /* The tree, breadth first, from the root. */
    es->parent = FSM_ROOT_INO;
    ASSERT(fsm_readdir(f, FSM_ROOT_INO, 0, collect, es) == 0);
    for (size_t i = 0; i < es->n && es->n < ENTRIES_MAX; i++)
        if (S_ISDIR(es->e[i].mode)) {
            es->parent = es->e[i].ino;
            int rc = fsm_readdir(f, es->e[i].ino, 0, collect, es);
            ASSERT(rc == 0);
        }
    size_t n = es->n;
    for (size_t i = 0; i < n; i++) {
        const struct ent *a = &es->e[i], *b = &es->e[(i + 1) % n], *d = &es->e[(i + 7) % n];
        struct fsm_op op = name_op(FSM_OP_RENAME, a);
        op.new_parent = S_ISDIR(d->mode) ? d->ino : FSM_ROOT_INO;
        op.new_name = b->name;
        op.new_name_len = (uint32_t)strlen(b->name);
        op.flags = i % 3 == 0 ? RENAME_EXCHANGE : 0;
        if (op.flags == RENAME_EXCHANGE)
            op.new_parent = b->parent;
        apply(f, &op);
        struct fsm_op ln = {.type = FSM_OP_LINK, .ino = a->ino, .new_parent = FSM_ROOT_INO,
                            .new_name = "fz-link", .new_name_len = 7};
        apply(f, &ln);
        struct fsm_op mk = {.type = FSM_OP_MKDIR, .parent = a->ino, .name = "fz-dir",
                            .name_len = 6, .mode = 0755};
        apply(f, &mk);
        struct fsm_op w = {.type = FSM_OP_WRITE, .ino = a->ino, .offset = 10,
                           .data = (const uint8_t *)"fz", .data_len = 2};
        apply(f, &w);
    }
    /* Then everything goes, deepest names first. */
    for (size_t k = 0; k < 2; k++)
        for (size_t i = n; i-- > 0;) {
            struct fsm_op op = name_op(k ? FSM_OP_RMDIR : FSM_OP_UNLINK, &es->e[i]);
            apply(f, &op);
        }
    struct fsm_op op = {.type = FSM_OP_UNLINK, .parent = FSM_ROOT_INO, .name = "fz-link",
                        .name_len = 7};
    apply(f, &op);
    uint64_t held[ENTRIES_MAX];
    for (uint32_t node = 1; node <= NODES; node++) {
        size_t count = fsm_orphans_held(f, node, held, ENTRIES_MAX);
        uint8_t raw[8 * ENTRIES_MAX];
        count = count < ENTRIES_MAX ? count : ENTRIES_MAX;
        for (size_t i = 0; i < count; i++)
            le_put_u64(raw + 8 * i, held[i]);
        struct fsm_op rel = {.type = FSM_OP_RELEASE, .node = node, .data = raw,
                             .data_len = (uint32_t)(8 * count)};
        apply(f, &rel);
    }
    free(es);
}

static void try_image(const uint8_t *data, size_t size)
{
    uint32_t n_nodes, bs;
    int rc = fsm_image_info(data, size, &n_nodes, &bs);
    ASSERT(rc == 0 || rc == -EBADMSG);
    size_t blocks = 0;
    int brc = fsm_image_blocks(data, size, count_block, &blocks);
    ASSERT(brc == 0 || brc == -EBADMSG);

    struct fsm *f;
    ASSERT(fsm_new(st, NODES, &f) == 0);
    uint64_t before = fsm_digest(f);
    rc = fsm_image_restore(f, data, size);
    if (rc != 0) {
        ASSERT(rc == -EBADMSG || rc == -EINVAL);
        ASSERT(fsm_digest(f) == before);
        fsm_free(f);
        return;
    }
    ASSERT(brc == 0);
    struct buf b;
    buf_init(&b);
    ASSERT(fsm_image_encode(f, &b) == 0);
    ASSERT(b.len == size && memcmp(b.data, data, size) == 0);
    buf_deinit(&b);
    size_t live = 0;
    ASSERT(fsm_blocks(f, count_block, &live) == 0);
    ASSERT(live == blocks);
    fsm_check(f, NULL, NULL);
    size_t digests = 0;
    ASSERT(fsm_inode_digests(f, count_digest, &digests) == 0);
    ASSERT(digests >= 1);
    exercise(f);
    fsm_check(f, NULL, NULL);
    fsm_digest(f);
    fsm_free(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!st)
        init();
    try_image(data, size);
    if (size >= 4) {
        uint8_t *copy = malloc(size);
        ASSERT(copy);
        memcpy(copy, data, size);
        le_put_u32(copy + size - 4, crc32c(0, copy, size - 4));
        if (memcmp(copy, data, size) != 0)
            try_image(copy, size);
        free(copy);
    }
    return 0;
}
