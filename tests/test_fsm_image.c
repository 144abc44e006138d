/* Tests of the filesystem state machine's snapshots (fs/fsm.h, "snapshots"):
 * the image of a populated tree (directories with renamed entries, files
 * with blocks and holes, a sparse file past 4 GiB, symlinks, devices,
 * xattrs, hard links, orphans with a partial release mask) restores to the
 * same state, digests and readdir cookies; restore moves store references;
 * corrupted, truncated and mismatched images are refused without changing
 * anything; block lists of the image and of the live state agree; fsm_check
 * names the inode of each broken invariant in images patched to be
 * well-formed but inconsistent; and the divergence hook changes exactly one
 * inode's digest. All on a real block store in a mkdtemp dir. */
#include "fs/fsm.h"

#include "fs/store.h"

#include "fsm_fixture.h"

#include "base/assert.h"
#include "base/buf.h"
#include "base/crc32c.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#define BS (64u * 1024u)
#define NODES 3

static struct fixture fx;
static struct store *st;
static struct fsm *fs;
static int64_t now_ns = 1000;

static void setup(void)
{
    fixture_quiet_log();
    const struct fixture_config cfg = {
        .dir_name = "paxfs-test-fsm-image", .block_size = BS, .cache_bytes = 0, .nodes = NODES};
    cr_assert_eq(fixture_open(&fx, &cfg, &st, &fs), 0);
}

static void teardown(void)
{
    fixture_close(&fx, st, fs);
}

TestSuite(fsm_image, .init = setup, .fini = teardown, .timeout = 120);

/* ---- helpers: build, encode and apply one op ---- */

/* The caller of every op: not root, so that permission rules apply. */
#define UID 1000
#define GID 1000

static int64_t apply_to(struct fsm *f, struct fsm_op *op)
{
    fixture_stamp(op, UID, GID, ++now_ns);
    int64_t res = 0;
    int rc = fixture_apply(f, op, NULL, &res);
    cr_assert_eq(rc, 0, "encode type %d: %d", op->type, rc);
    return res;
}

static uint64_t mk(struct fsm *f, uint8_t type, uint64_t parent, const char *name, uint32_t mode,
                   uint64_t rdev, const char *target)
{
    struct fsm_op op = {.type = type, .parent = parent, .name = name,
                        .name_len = (uint32_t)strlen(name), .mode = mode, .rdev = rdev};
    if (target) {
        op.data = (const uint8_t *)target;
        op.data_len = (uint32_t)strlen(target);
    }
    int64_t ino = apply_to(f, &op);
    cr_assert_gt(ino, 0, "create %s: %lld", name, (long long)ino);
    return (uint64_t)ino;
}

static uint64_t mkfile(struct fsm *f, uint64_t parent, const char *name)
{
    return mk(f, FSM_OP_MKNOD, parent, name, S_IFREG | 0644, 0, NULL);
}

static uint64_t mkdir_(struct fsm *f, uint64_t parent, const char *name)
{
    return mk(f, FSM_OP_MKDIR, parent, name, 0755, 0, NULL);
}

static void ok(int64_t res)
{
    cr_assert_geq(res, 0, "op failed: %lld", (long long)res);
}

static void write_(struct fsm *f, uint64_t ino, uint64_t off, const void *p, size_t n)
{
    struct fsm_op op = {.type = FSM_OP_WRITE, .ino = ino, .offset = off, .data = p,
                        .data_len = (uint32_t)n};
    cr_assert_eq(apply_to(f, &op), (int64_t)n);
}

static void fill(struct fsm *f, uint64_t ino, uint64_t off, int byte, size_t n)
{
    uint8_t *p = malloc(n);
    memset(p, byte, n);
    write_(f, ino, off, p, n);
    free(p);
}

static void unlink_(struct fsm *f, uint8_t type, uint64_t parent, const char *name)
{
    struct fsm_op op = {.type = type, .parent = parent, .name = name,
                        .name_len = (uint32_t)strlen(name)};
    ok(apply_to(f, &op));
}

static void rename_(struct fsm *f, uint64_t p, const char *n, uint64_t np, const char *nn)
{
    struct fsm_op op = {.type = FSM_OP_RENAME, .parent = p, .name = n,
                        .name_len = (uint32_t)strlen(n), .new_parent = np, .new_name = nn,
                        .new_name_len = (uint32_t)strlen(nn)};
    ok(apply_to(f, &op));
}

static void link_(struct fsm *f, uint64_t ino, uint64_t parent, const char *name)
{
    struct fsm_op op = {.type = FSM_OP_LINK, .ino = ino, .new_parent = parent,
                        .new_name = name, .new_name_len = (uint32_t)strlen(name)};
    ok(apply_to(f, &op));
}

static void setxattr_(struct fsm *f, uint64_t ino, const char *name, const char *value)
{
    struct fsm_op op = {.type = FSM_OP_SETXATTR, .ino = ino, .name = name,
                        .name_len = (uint32_t)strlen(name), .data = (const uint8_t *)value,
                        .data_len = (uint32_t)strlen(value)};
    ok(apply_to(f, &op));
}

static void release_(struct fsm *f, uint32_t node, uint64_t ino)
{
    uint8_t raw[8];
    le_put_u64(raw, ino);
    struct fsm_op op = {.type = FSM_OP_RELEASE, .node = node, .data = raw, .data_len = 8};
    ok(apply_to(f, &op));
}

static void chmod_(struct fsm *f, uint64_t ino, uint32_t mode)
{
    struct fsm_op op = {.type = FSM_OP_SETATTR, .ino = ino, .flags = FSM_SET_MODE,
                        .attr = {.mode = mode}};
    ok(apply_to(f, &op));
}

/* The inodes of the populated tree, for the tests to poke at. */
struct tree {
    uint64_t a, b, c, f, big, link, orphan, dead_dir, x1, y2, fifo, chr, dup;
};

/* Builds every kind of state the image holds. */
static struct tree populate(struct fsm *f)
{
    struct tree t;
    t.a = mkdir_(f, FSM_ROOT_INO, "a");
    t.b = mkdir_(f, t.a, "b");
    t.c = mkdir_(f, FSM_ROOT_INO, "c");
    /* A file with blocks and a hole between them, a partial last block. */
    t.f = mkfile(f, t.a, "f");
    fill(f, t.f, 0, 'p', BS);
    fill(f, t.f, 3 * BS + 100, 'q', 1000);
    setxattr_(f, t.f, "user.zz", "last");
    setxattr_(f, t.f, "user.a", "first");
    setxattr_(f, t.a, "user.empty", "");
    link_(f, t.f, t.c, "f-link");
    /* Sparse, past 4 GiB. */
    t.big = mkfile(f, FSM_ROOT_INO, "big");
    write_(f, t.big, (5ull << 30) + 7, "tail", 4);
    write_(f, t.big, 0, "head", 4);
    t.link = mk(f, FSM_OP_SYMLINK, t.b, "s", 0, 0, "../f");
    t.fifo = mk(f, FSM_OP_MKNOD, t.b, "fifo", S_IFIFO | 0600, 0, NULL);
    t.chr = mk(f, FSM_OP_MKNOD, t.b, "null", S_IFCHR | 0666, makedev(1, 3), NULL);
    chmod_(f, t.fifo, 04710);
    /* Renames and unlinks leave gaps in the cookies. */
    t.x1 = mkfile(f, FSM_ROOT_INO, "x1");
    uint64_t x2 = mkfile(f, FSM_ROOT_INO, "x2");
    mkfile(f, FSM_ROOT_INO, "x3");
    mkfile(f, FSM_ROOT_INO, "x4");
    rename_(f, FSM_ROOT_INO, "x2", FSM_ROOT_INO, "y2");
    t.y2 = x2;
    unlink_(f, FSM_OP_UNLINK, FSM_ROOT_INO, "x3");
    rename_(f, FSM_ROOT_INO, "x4", t.c, "x4");
    /* Two files with the same content: one block mapped twice. */
    t.dup = mkfile(f, t.c, "dup");
    fill(f, t.dup, 0, 'p', BS);
    /* An orphan that node 1 released and nodes 2 and 3 still hold open. */
    t.orphan = mkfile(f, t.b, "o");
    fill(f, t.orphan, BS, 'o', 10);
    unlink_(f, FSM_OP_UNLINK, t.b, "o");
    release_(f, 1, t.orphan);
    /* An rmdir'd directory is an orphan too. */
    t.dead_dir = mkdir_(f, t.c, "dead");
    unlink_(f, FSM_OP_RMDIR, t.c, "dead");
    /* x3 is an orphan with the full mask. */
    return t;
}

/* Further ops, applied to two states that must stay equal. */
static void more_ops(struct fsm *f, const struct tree *t)
{
    fill(f, t->f, BS + 5, 'z', 3 * BS);
    rename_(f, FSM_ROOT_INO, "y2", t->b, "y2");
    unlink_(f, FSM_OP_UNLINK, t->c, "f-link");
    for (uint32_t node = 1; node <= NODES; node++)
        release_(f, node, t->orphan);
    uint64_t n = mkfile(f, t->a, "new");
    fill(f, n, 0, 'n', 100);
    setxattr_(f, t->big, "user.x", "y");
}

static void encode(struct fsm *f, struct buf *out)
{
    buf_init(out);
    cr_assert_eq(fsm_image_encode(f, out), 0);
}

static struct fsm *fresh(void)
{
    struct fsm *g;
    cr_assert_eq(fsm_new(st, NODES, &g), 0);
    return g;
}

/* Rewrites the CRC after a patch. */
static void recrc(uint8_t *p, size_t len)
{
    le_put_u32(p + len - 4, crc32c(0, p, len - 4));
}

/* Per-inode digests as one byte string: ino, digest, ino, digest... */
static int digest_cb(void *ctx, uint64_t ino, const uint8_t d[FSM_INODE_DIGEST_BYTES])
{
    struct buf *b = ctx;
    buf_put_u64(b, ino);
    buf_put(b, d, FSM_INODE_DIGEST_BYTES);
    return 0;
}

static void digests(struct fsm *f, struct buf *out)
{
    buf_init(out);
    cr_assert_eq(fsm_inode_digests(f, digest_cb, out), 0);
}

static int dirent_cb(void *ctx, const char *name, const struct fsm_attr *a, uint64_t cookie)
{
    char line[FSM_NAME_MAX + 64];
    int n = snprintf(line, sizeof line, "%s %llu %o %llu\n", name, (unsigned long long)a->ino,
                     a->mode, (unsigned long long)cookie);
    buf_put(ctx, line, (size_t)n);
    return 0;
}

/* Every directory's listing with cookies, and every inode's attributes. */
static void listing(struct fsm *f, struct buf *out)
{
    buf_init(out);
    for (uint64_t ino = 1; ino < 200; ino++) {
        struct fsm_attr a;
        if (fsm_getattr(f, ino, &a) != 0)
            continue;
        buf_put(out, &a, sizeof a);
        if (S_ISDIR(a.mode))
            cr_assert_eq(fsm_readdir(f, ino, 0, dirent_cb, out), 0);
    }
}

static void bufs_equal(const struct buf *a, const struct buf *b, const char *what)
{
    cr_assert_eq(a->len, b->len, "%s: %zu vs %zu bytes", what, a->len, b->len);
    cr_assert_eq(memcmp(a->data, b->data, a->len), 0, "%s differ", what);
}

/* Findings, collected. */
struct findings {
    size_t n;
    uint64_t ino[32];
    char what[32][200];
};

static void finding_cb(void *ctx, uint64_t ino, const char *what)
{
    struct findings *fd = ctx;
    if (fd->n < 32) {
        fd->ino[fd->n] = ino;
        snprintf(fd->what[fd->n], sizeof fd->what[0], "%s", what);
    }
    fd->n++;
}

static void check_clean(struct fsm *f)
{
    struct findings fd = {0};
    size_t n = fsm_check(f, finding_cb, &fd);
    cr_assert_eq(n, 0, "%zu findings, first: ino=%llu %s", n, (unsigned long long)fd.ino[0],
                 fd.what[0]);
}

/* True if some finding names ino and contains word. */
static bool found(const struct findings *fd, uint64_t ino, const char *word)
{
    for (size_t i = 0; i < MIN(fd->n, (size_t)32); i++)
        if (fd->ino[i] == ino && strstr(fd->what[i], word))
            return true;
    return false;
}

/* Offset of inode ino's record in an image: its number then its mode, found
 * exactly once. */
static size_t rec_off(const struct buf *img, uint64_t ino, uint32_t mode)
{
    uint8_t pat[12];
    le_put_u64(pat, ino);
    le_put_u32(pat + 8, mode);
    size_t at = 0, hits = 0;
    for (size_t i = 29; i + sizeof pat <= img->len; i++)
        if (memcmp(img->data + i, pat, sizeof pat) == 0) {
            at = i;
            hits++;
        }
    cr_assert_eq(hits, 1, "record of %llu found %zu times", (unsigned long long)ino, hits);
    return at;
}

/* Offset of the ino field of the entry (ino, name) of some directory. */
static size_t entry_off(const struct buf *img, uint64_t ino, const char *name)
{
    size_t len = strlen(name);
    uint8_t pat[8 + 1 + FSM_NAME_MAX];
    le_put_u64(pat, ino);
    pat[8] = (uint8_t)len;
    memcpy(pat + 9, name, len);
    size_t at = 0, hits = 0;
    for (size_t i = 29; i + 9 + len <= img->len; i++)
        if (memcmp(img->data + i, pat, 9 + len) == 0) {
            at = i;
            hits++;
        }
    cr_assert_eq(hits, 1, "entry %s found %zu times", name, hits);
    return at;
}

static uint32_t mode_of(struct fsm *f, uint64_t ino)
{
    struct fsm_attr a;
    cr_assert_eq(fsm_getattr(f, ino, &a), 0);
    return a.mode;
}

/* ---- round trips ---- */

Test(fsm_image, a_populated_tree_restores_to_the_same_state)
{
    int64_t t0 = now_ns;
    struct tree t = populate(fs);
    check_clean(fs);
    struct buf img, img2, d1, d2, l1, l2;
    encode(fs, &img);
    uint32_t nodes = 0, bs = 0;
    cr_assert_eq(fsm_image_info(img.data, img.len, &nodes, &bs), 0);
    cr_assert_eq(nodes, NODES);
    cr_assert_eq(bs, BS);

    struct fsm *g = fresh();
    cr_assert_eq(fsm_image_restore(g, img.data, img.len), 0);
    cr_assert_eq(fsm_digest(g), fsm_digest(fs));
    digests(fs, &d1);
    digests(g, &d2);
    bufs_equal(&d1, &d2, "per-inode digests");
    encode(g, &img2);
    bufs_equal(&img, &img2, "re-encoded image");
    listing(fs, &l1);
    listing(g, &l2);
    bufs_equal(&l1, &l2, "listings with cookies");
    check_clean(g);

    /* Data, holes and the sparse tail read back through the restored map. */
    uint8_t buf[8];
    size_t got = 0;
    cr_assert_eq(fsm_read(g, t.big, (5ull << 30) + 7, 4, buf, &got), 0);
    cr_assert_eq(got, 4);
    cr_assert_eq(memcmp(buf, "tail", 4), 0);
    cr_assert_eq(fsm_read(g, t.f, 2 * BS, 8, buf, &got), 0);
    cr_assert_eq(memcmp(buf, "\0\0\0\0\0\0\0\0", 8), 0, "the hole");
    char target[16];
    size_t tlen = 0;
    cr_assert_eq(fsm_readlink(g, t.link, target, sizeof target, &tlen), 0);
    cr_assert_eq(tlen, 4);
    cr_assert_str_eq(target, "../f");
    uint64_t held[4];
    cr_assert_eq(fsm_orphans_held(g, 1, held, 4), 2, "x3 and the removed directory");
    cr_assert_eq(fsm_orphans_held(g, 2, held, 4), 3);
    cr_assert_eq(held[1], t.orphan);
    struct fsm_statfs s1, s2;
    fsm_statfs(fs, &s1);
    fsm_statfs(g, &s2);
    cr_assert_eq(s1.inodes, s2.inodes);
    cr_assert_eq(s1.bytes_stored, s2.bytes_stored);

    /* A replica built by the same ops encodes byte-identically. */
    struct fsm *r = fresh();
    int64_t t1 = now_ns;
    now_ns = t0;
    populate(r);
    cr_assert_eq(now_ns, t1);
    buf_deinit(&img2);
    encode(r, &img2);
    bufs_equal(&img, &img2, "image of a replica");
    fsm_free(r);

    /* The same further ops keep them equal (cookies and next_ino carried over). */
    int64_t t2 = now_ns;
    more_ops(fs, &t);
    now_ns = t2;
    more_ops(g, &t);
    cr_assert_eq(fsm_digest(g), fsm_digest(fs));
    buf_deinit(&l1);
    buf_deinit(&l2);
    listing(fs, &l1);
    listing(g, &l2);
    bufs_equal(&l1, &l2, "listings after more ops");
    check_clean(fs);
    check_clean(g);
    fsm_free(g);
    buf_deinit(&img);
    buf_deinit(&img2);
    buf_deinit(&d1);
    buf_deinit(&d2);
    buf_deinit(&l1);
    buf_deinit(&l2);
}

Test(fsm_image, an_empty_fs_round_trips)
{
    struct buf img, img2;
    encode(fs, &img);
    struct fsm *g = fresh();
    mkfile(g, FSM_ROOT_INO, "gone");
    cr_assert_eq(fsm_image_restore(g, img.data, img.len), 0);
    cr_assert_eq(fsm_digest(g), fsm_digest(fs));
    encode(g, &img2);
    bufs_equal(&img, &img2, "image");
    /* next_ino came back too: the next number is 2 again. */
    cr_assert_eq(mkfile(g, FSM_ROOT_INO, "x"), 2);
    fsm_free(g);
    buf_deinit(&img);
    buf_deinit(&img2);
}

static struct store_name name_of_fill(int byte, size_t n)
{
    uint8_t *p = malloc(n);
    memset(p, byte, n);
    struct store_name name;
    cr_assert_eq(store_name_of(p, n, &name), 0);
    free(p);
    return name;
}

Test(fsm_image, restore_replaces_a_non_empty_state_and_moves_the_references)
{
    /* fs maps P and Q; g maps Q and R. */
    uint64_t f1 = mkfile(fs, FSM_ROOT_INO, "one");
    fill(fs, f1, 0, 'P', BS);
    fill(fs, f1, BS, 'Q', BS);
    struct fsm *g = fresh();
    uint64_t g1 = mkfile(g, FSM_ROOT_INO, "other");
    mkdir_(g, FSM_ROOT_INO, "d");
    fill(g, g1, 0, 'Q', BS);
    fill(g, g1, 4 * BS, 'R', BS);
    struct store_name p = name_of_fill('P', BS), q = name_of_fill('Q', BS),
                      r = name_of_fill('R', BS);
    cr_assert_eq(store_refcount(st, &p), 1);
    cr_assert_eq(store_refcount(st, &q), 2);
    cr_assert_eq(store_refcount(st, &r), 1);

    struct buf img;
    encode(fs, &img);
    cr_assert_eq(fsm_image_restore(g, img.data, img.len), 0);
    cr_assert_eq(store_refcount(st, &p), 2, "the new state's blocks are referenced");
    cr_assert_eq(store_refcount(st, &q), 2, "a block both map: one dropped, one taken");
    cr_assert_eq(store_refcount(st, &r), 0, "the old state's blocks are let go");
    cr_assert_eq(fsm_digest(g), fsm_digest(fs));
    struct fsm_attr a;
    cr_assert_eq(fsm_lookup(g, FSM_ROOT_INO, "d", &a), -ENOENT);
    cr_assert_eq(fsm_lookup(g, FSM_ROOT_INO, "one", &a), 0);
    uint8_t b[2];
    size_t got = 0;
    cr_assert_eq(fsm_read(g, f1, BS - 1, 2, b, &got), 0);
    cr_assert_eq(b[0], 'P');
    cr_assert_eq(b[1], 'Q');
    check_clean(g);
    fsm_free(g);
    cr_assert_eq(store_refcount(st, &p), 1);
    cr_assert_eq(store_refcount(st, &q), 1);
    buf_deinit(&img);
}

/* What fsm_image_restore_changes reports: inodes and entries. */
struct reported {
    uint64_t inos[64];
    size_t n_inos;
    struct {
        uint64_t parent;
        char name[32];
    } entries[64];
    size_t n_entries;
};

static void reported_cb(void *ctx, uint64_t ino, const char *name, size_t len)
{
    struct reported *r = ctx;
    if (!name) {
        cr_assert_lt(r->n_inos, ARRAY_LEN(r->inos));
        r->inos[r->n_inos++] = ino;
        return;
    }
    cr_assert_lt(r->n_entries, ARRAY_LEN(r->entries));
    cr_assert_lt(len, sizeof r->entries[0].name);
    r->entries[r->n_entries].parent = ino;
    memcpy(r->entries[r->n_entries].name, name, len);
    r->entries[r->n_entries].name[len] = 0;
    r->n_entries++;
}

static bool reported_ino(const struct reported *r, uint64_t ino)
{
    for (size_t i = 0; i < r->n_inos; i++)
        if (r->inos[i] == ino)
            return true;
    return false;
}

static bool reported_entry(const struct reported *r, uint64_t parent, const char *name)
{
    for (size_t i = 0; i < r->n_entries; i++)
        if (r->entries[i].parent == parent && strcmp(r->entries[i].name, name) == 0)
            return true;
    return false;
}

Test(fsm_image, a_restore_reports_what_the_old_state_had_differently)
{
    /* g holds the populated tree; fs goes on with more ops; g then
     * restores fs's image, as a lagging replica installs a snapshot. */
    struct tree t = populate(fs);
    struct buf old_img, new_img;
    encode(fs, &old_img);
    struct fsm *g = fresh();
    cr_assert_eq(fsm_image_restore(g, old_img.data, old_img.len), 0);

    struct reported same = {0};
    cr_assert_eq(fsm_image_restore_changes(g, old_img.data, old_img.len, reported_cb, &same), 0);
    cr_assert_eq(same.n_inos + same.n_entries, 0, "an identical image changes nothing");

    more_ops(fs, &t);
    encode(fs, &new_img);
    struct reported r = {0};
    cr_assert_eq(fsm_image_restore_changes(g, new_img.data, new_img.len, reported_cb, &r), 0);
    cr_assert_eq(fsm_digest(g), fsm_digest(fs));

    cr_assert(reported_ino(&r, t.f), "written, and a link of it gone");
    cr_assert(reported_ino(&r, t.orphan), "released everywhere: gone");
    cr_assert(reported_ino(&r, t.big), "an xattr set: its ctime");
    cr_assert(reported_ino(&r, t.a), "an entry added");
    cr_assert(reported_ino(&r, t.c), "an entry removed");
    cr_assert(reported_ino(&r, FSM_ROOT_INO), "y2 moved out");
    cr_assert(!reported_ino(&r, t.link) && !reported_ino(&r, t.fifo) &&
              !reported_ino(&r, t.chr) && !reported_ino(&r, t.dup) && !reported_ino(&r, t.x1),
              "untouched inodes are not reported");
    cr_assert(reported_entry(&r, FSM_ROOT_INO, "y2"), "a name moved away");
    cr_assert(reported_entry(&r, t.c, "f-link"), "a name removed");
    cr_assert_eq(r.n_entries, 2, "unchanged and new names are not reported (%zu)", r.n_entries);
    buf_deinit(&old_img);
    buf_deinit(&new_img);
    fsm_free(g);
}

Test(fsm_image, restore_references_blocks_the_store_does_not_have)
{
    uint64_t f1 = mkfile(fs, FSM_ROOT_INO, "f");
    fill(fs, f1, 0, 'P', BS);
    struct buf img;
    encode(fs, &img);
    /* Another replica's empty store. */
    char root2[160];
    snprintf(root2, sizeof root2, "%s/store2", fx.dir);
    struct store_config cfg;
    store_config_init(&cfg, root2);
    cfg.block_size = BS;
    struct store *st2;
    cr_assert_eq(store_open(&cfg, &st2), 0);
    struct fsm *g;
    cr_assert_eq(fsm_new(st2, NODES, &g), 0);
    cr_assert_eq(fsm_image_restore(g, img.data, img.len), 0);
    struct store_name p = name_of_fill('P', BS);
    cr_assert_eq(store_has(st2, &p), 0);
    cr_assert_eq(store_refcount(st2, &p), 1);
    uint8_t b[4];
    size_t got = 0;
    cr_assert_eq(fsm_read(g, f1, 0, 4, b, &got), -EIO, "the block must still be fetched");
    /* GC keeps a referenced name, even absent. */
    cr_assert_eq(store_gc(st2, NULL), 0);
    cr_assert_eq(store_refcount(st2, &p), 1);
    fsm_free(g);
    cr_assert_eq(store_refcount(st2, &p), 0);
    store_close(st2);
    buf_deinit(&img);
}

/* ---- refused images ---- */

Test(fsm_image, every_byte_flip_is_refused_and_changes_nothing)
{
    populate(fs);
    struct buf img;
    encode(fs, &img);
    struct fsm *g = fresh();
    mkfile(g, FSM_ROOT_INO, "keep");
    uint64_t before = fsm_digest(g);
    uint8_t *p = malloc(img.len);
    static const uint8_t masks[] = {0x01, 0x80, 0xff};
    for (size_t i = 0; i < img.len; i++)
        for (size_t m = 0; m < ARRAY_LEN(masks); m++) {
            memcpy(p, img.data, img.len);
            p[i] ^= masks[m];
            /* CRC32C catches every error burst up to 32 bits. */
            cr_assert_eq(fsm_image_restore(g, p, img.len), -EBADMSG, "flip at %zu", i);
            uint32_t a, b;
            cr_assert_eq(fsm_image_info(p, img.len, &a, &b), -EBADMSG);
        }
    cr_assert_eq(fsm_digest(g), before);
    free(p);
    fsm_free(g);
    buf_deinit(&img);
}

static int count_cb(void *ctx, uint64_t ino, uint64_t index, const struct store_name *name,
                    uint32_t len)
{
    (void)ino, (void)index, (void)name, (void)len;
    ++*(size_t *)ctx;
    return 0;
}

/* The decoder behind the CRC: every flip with the CRC made right again is
 * refused (and changes nothing) or yields a state that checks, encodes
 * back to exactly those bytes, and survives more ops. */
Test(fsm_image, byte_flips_behind_a_good_crc_are_refused_or_canonical)
{
    populate(fs);
    struct buf img;
    encode(fs, &img);
    struct fsm *g = fresh();
    uint8_t *p = malloc(img.len);
    static const uint8_t masks[] = {0x01, 0x02, 0x10, 0x80, 0xff};
    size_t accepted = 0;
    for (size_t i = 0; i + 4 < img.len; i++)
        for (size_t m = 0; m < ARRAY_LEN(masks); m++) {
            memcpy(p, img.data, img.len);
            p[i] ^= masks[m];
            recrc(p, img.len);
            uint64_t before = fsm_digest(g);
            int rc = fsm_image_restore(g, p, img.len);
            size_t blocks = 0;
            int brc = fsm_image_blocks(p, img.len, count_cb, &blocks);
            cr_assert(brc == 0 || brc == -EBADMSG);
            if (rc != 0) {
                cr_assert(rc == -EBADMSG || rc == -EINVAL, "flip at %zu: %d", i, rc);
                cr_assert_eq(fsm_digest(g), before, "a refused image changes nothing");
                continue;
            }
            accepted++;
            cr_assert_eq(brc, 0, "restore accepted what image_blocks refused at %zu", i);
            fsm_check(g, NULL, NULL);
            struct buf again;
            encode(g, &again);
            cr_assert_eq(again.len, img.len);
            cr_assert_eq(memcmp(again.data, p, img.len), 0, "not canonical at %zu", i);
            buf_deinit(&again);
            /* Apply what the state allows: it must not trip an assertion. */
            struct fsm_op op = {.type = FSM_OP_UNLINK, .parent = FSM_ROOT_INO, .name = "x1",
                                .name_len = 2};
            apply_to(g, &op);
            struct fsm_op rn = {.type = FSM_OP_RENAME, .parent = FSM_ROOT_INO, .name = "a",
                                .name_len = 1, .new_parent = FSM_ROOT_INO, .new_name = "c",
                                .new_name_len = 1, .flags = RENAME_EXCHANGE};
            apply_to(g, &rn);
        }
    cr_assert_gt(accepted, 0, "some fields take any value (times, uids)");
    free(p);
    fsm_free(g);
    buf_deinit(&img);
}

Test(fsm_image, every_truncation_is_ebadmsg)
{
    populate(fs);
    struct buf img;
    encode(fs, &img);
    struct fsm *g = fresh();
    uint64_t before = fsm_digest(g);
    uint8_t *p = malloc(img.len);
    for (size_t len = 0; len < img.len; len++) {
        memcpy(p, img.data, len);
        cr_assert_eq(fsm_image_restore(g, p, len), -EBADMSG, "cut at %zu", len);
        size_t n = 0;
        cr_assert_eq(fsm_image_blocks(p, len, count_cb, &n), -EBADMSG);
        /* The body cut short under a CRC that matches it. */
        if (len >= 4 && len + 4 < img.len) {
            memcpy(p, img.data, len);
            le_put_u32(p + len, crc32c(0, p, len));
            cr_assert_eq(fsm_image_restore(g, p, len + 4), -EBADMSG, "body cut at %zu", len);
        }
    }
    /* A byte too many. */
    uint8_t *q = malloc(img.len + 1);
    memcpy(q, img.data, img.len - 4);
    q[img.len - 4] = 0;
    recrc(q, img.len + 1);
    cr_assert_eq(fsm_image_restore(g, q, img.len + 1), -EBADMSG);
    cr_assert_eq(fsm_image_restore(g, NULL, 0), -EBADMSG);
    cr_assert_eq(fsm_digest(g), before);
    free(p);
    free(q);
    fsm_free(g);
    buf_deinit(&img);
}

Test(fsm_image, another_node_count_or_block_size_is_einval)
{
    populate(fs);
    struct buf img;
    encode(fs, &img);
    struct fsm *g;
    cr_assert_eq(fsm_new(st, NODES + 1, &g), 0);
    cr_assert_eq(fsm_image_restore(g, img.data, img.len), -EINVAL);
    fsm_free(g);

    char root2[160];
    snprintf(root2, sizeof root2, "%s/store-bs", fx.dir);
    struct store_config cfg;
    store_config_init(&cfg, root2);
    cfg.block_size = BS * 2;
    struct store *st2;
    cr_assert_eq(store_open(&cfg, &st2), 0);
    cr_assert_eq(fsm_new(st2, NODES, &g), 0);
    uint64_t before = fsm_digest(g);
    cr_assert_eq(fsm_image_restore(g, img.data, img.len), -EINVAL);
    cr_assert_eq(fsm_digest(g), before);
    fsm_free(g);
    store_close(st2);
    buf_deinit(&img);
}

/* Patches a copy of img (at off, n bytes of v, little-endian), fixes the
 * CRC and restores it into a fresh fsm: the result and the fsm. */
static int patched_restore(const struct buf *img, size_t off, uint64_t v, size_t n,
                           struct fsm **out)
{
    uint8_t *p = malloc(img->len);
    memcpy(p, img->data, img->len);
    for (size_t i = 0; i < n; i++)
        p[off + i] = (uint8_t)(v >> (8 * i));
    recrc(p, img->len);
    struct fsm *g = fresh();
    uint64_t before = fsm_digest(g);
    int rc = fsm_image_restore(g, p, img->len);
    if (rc != 0)
        cr_assert_eq(fsm_digest(g), before);
    free(p);
    *out = g;
    return rc;
}

/* Field offsets inside an inode record (fsm.h). */
#define REC_NLINK 12
#define REC_FLAGS 48
#define REC_FILE_SIZE 51 /* a regular file without xattrs, not an orphan */

/* Offset of a directory's parent field in its record. */
static size_t dir_parent_off(const struct buf *img, size_t rec)
{
    size_t off = rec + REC_FLAGS + 1;
    cr_assert_eq(img->data[rec + REC_FLAGS], 0, "not an orphan");
    uint32_t n = img->data[off] | (uint32_t)img->data[off + 1] << 8;
    off += 2;
    for (uint32_t i = 0; i < n; i++) {
        off += 1 + img->data[off];
        off += 4 + le_get_u32(img->data + off);
    }
    return off;
}

Test(fsm_image, the_decoder_refuses_states_apply_would_trip_on)
{
    struct tree t = populate(fs);
    /* Free x3 so that its number is a gap. */
    uint64_t x3 = t.y2 + 1;
    for (uint32_t node = 1; node <= NODES; node++)
        release_(fs, node, x3);
    struct fsm_attr a;
    cr_assert_eq(fsm_getattr(fs, x3, &a), -ENOENT);
    struct buf img;
    encode(fs, &img);
    struct fsm *g;
    /* An entry naming a number past next_ino, a freed number, the root,
     * a second name for a directory. */
    size_t e = entry_off(&img, t.x1, "x1");
    const uint64_t bad[] = {t.x1 + 1000, x3, FSM_ROOT_INO, t.b};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        cr_assert_eq(patched_restore(&img, e, bad[i], 8, &g), -EBADMSG, "entry -> %llu",
                     (unsigned long long)bad[i]);
        fsm_free(g);
    }
    /* A named file marked orphan (unlinking it would orphan it twice). */
    size_t r = rec_off(&img, t.x1, mode_of(fs, t.x1));
    cr_assert_eq(patched_restore(&img, r + REC_FLAGS, 1, 1, &g), -EBADMSG);
    fsm_free(g);
    /* Fewer links than names (unlinking one would free what the other names). */
    size_t rf = rec_off(&img, t.f, mode_of(fs, t.f));
    cr_assert_eq(patched_restore(&img, rf + REC_NLINK, 1, 4, &g), -EBADMSG);
    fsm_free(g);
    /* A directory whose ".." is not the directory naming it. */
    size_t rb = rec_off(&img, t.b, mode_of(fs, t.b));
    cr_assert_eq(patched_restore(&img, dir_parent_off(&img, rb), FSM_ROOT_INO, 8, &g), -EBADMSG);
    fsm_free(g);
    /* A cycle: a and b name each other and each other's parents, each with
     * one name, out of the root's reach. The root's "a" now names f (one
     * link more) and b's "s" names a. */
    uint8_t *p = malloc(img.len);
    memcpy(p, img.data, img.len);
    le_put_u64(p + entry_off(&img, t.a, "a"), t.f);
    le_put_u32(p + rf + REC_NLINK, 3);
    le_put_u64(p + entry_off(&img, t.link, "s"), t.a);
    size_t ra = rec_off(&img, t.a, mode_of(fs, t.a));
    le_put_u64(p + dir_parent_off(&img, ra), t.b);
    recrc(p, img.len);
    g = fresh();
    cr_assert_eq(fsm_image_restore(g, p, img.len), -EBADMSG);
    fsm_free(g);
    /* Undoing the patches gives back the image, which restores. */
    le_put_u64(p + dir_parent_off(&img, ra), FSM_ROOT_INO);
    le_put_u64(p + entry_off(&img, t.link, "s"), t.link);
    le_put_u64(p + entry_off(&img, t.a, "a"), t.a);
    le_put_u32(p + rf + REC_NLINK, 2);
    recrc(p, img.len);
    cr_assert_eq(memcmp(p, img.data, img.len), 0);
    g = fresh();
    cr_assert_eq(fsm_image_restore(g, p, img.len), 0);
    fsm_free(g);
    free(p);
    buf_deinit(&img);
}

/* ---- block lists ---- */

struct blist {
    size_t n;
    uint64_t ino[64], index[64];
    struct store_name name[64];
    uint32_t len[64];
    size_t stop_at;
};

static int blist_cb(void *ctx, uint64_t ino, uint64_t index, const struct store_name *name,
                    uint32_t len)
{
    struct blist *b = ctx;
    cr_assert_lt(b->n, 64);
    b->ino[b->n] = ino;
    b->index[b->n] = index;
    b->name[b->n] = *name;
    b->len[b->n] = len;
    b->n++;
    return b->stop_at && b->n == b->stop_at ? 7 : 0;
}

Test(fsm_image, image_blocks_list_what_the_live_state_maps)
{
    struct tree t = populate(fs);
    struct buf img;
    encode(fs, &img);
    struct blist *live = calloc(1, sizeof *live), *im = calloc(1, sizeof *im);
    cr_assert_eq(fsm_blocks(fs, blist_cb, live), 0);
    cr_assert_eq(fsm_image_blocks(img.data, img.len, blist_cb, im), 0);
    cr_assert_eq(live->n, im->n);
    /* f: 2 blocks, big: 2, dup: 1 (same as f's first), orphan: 1. */
    cr_assert_eq(live->n, 6);
    for (size_t i = 0; i < live->n; i++) {
        cr_assert_eq(live->ino[i], im->ino[i]);
        cr_assert_eq(live->index[i], im->index[i]);
        cr_assert(store_name_eq(&live->name[i], &im->name[i]));
        cr_assert_eq(live->len[i], im->len[i]);
        if (i > 0)
            cr_assert(live->ino[i] > live->ino[i - 1] ||
                      (live->ino[i] == live->ino[i - 1] && live->index[i] > live->index[i - 1]));
    }
    /* The block f and dup share is listed once per mapping. */
    struct store_name p = name_of_fill('p', BS);
    size_t pn = 0;
    for (size_t i = 0; i < live->n; i++)
        pn += store_name_eq(&live->name[i], &p);
    cr_assert_eq(pn, 2);
    cr_assert_eq(store_refcount(st, &p), 2);
    size_t big_blocks = 0;
    for (size_t i = 0; i < live->n; i++)
        if (live->ino[i] == t.big) {
            big_blocks++;
            cr_assert(live->index[i] == 0 || live->index[i] == ((5ull << 30) + 7) / BS);
        }
    cr_assert_eq(big_blocks, 2);
    /* A non-zero return stops the walk and is returned. */
    memset(im, 0, sizeof *im);
    im->stop_at = 2;
    cr_assert_eq(fsm_image_blocks(img.data, img.len, blist_cb, im), 7);
    cr_assert_eq(im->n, 2);
    memset(live, 0, sizeof *live);
    live->stop_at = 3;
    cr_assert_eq(fsm_blocks(fs, blist_cb, live), 7);
    cr_assert_eq(live->n, 3);
    free(live);
    free(im);
    buf_deinit(&img);
}

/* ---- fsm_check on well-formed but inconsistent images ---- */

static struct findings *check_of(struct fsm *g)
{
    struct findings *fd = calloc(1, sizeof *fd);
    size_t n = fsm_check(g, finding_cb, fd);
    cr_assert_eq(n, fd->n);
    return fd;
}

Test(fsm_image, check_names_a_file_with_too_many_links)
{
    struct tree t = populate(fs);
    struct buf img;
    encode(fs, &img);
    struct fsm *g;
    size_t r = rec_off(&img, t.x1, mode_of(fs, t.x1));
    cr_assert_eq(patched_restore(&img, r + REC_NLINK, 3, 4, &g), 0);
    struct findings *fd = check_of(g);
    cr_assert_eq(fd->n, 1, "%zu findings: %s", fd->n, fd->what[0]);
    cr_assert(found(fd, t.x1, "nlink 3, expected 1"), "%s", fd->what[0]);
    free(fd);
    fsm_free(g);
    buf_deinit(&img);
}

Test(fsm_image, check_names_a_directory_with_a_wrong_link_count)
{
    struct tree t = populate(fs);
    struct buf img;
    encode(fs, &img);
    struct fsm *g;
    size_t r = rec_off(&img, t.a, mode_of(fs, t.a));
    cr_assert_eq(patched_restore(&img, r + REC_NLINK, 7, 4, &g), 0);
    struct findings *fd = check_of(g);
    cr_assert_eq(fd->n, 1, "%zu findings: %s", fd->n, fd->what[0]);
    cr_assert(found(fd, t.a, "nlink 7, expected 3"), "%s", fd->what[0]);
    free(fd);
    fsm_free(g);
    buf_deinit(&img);
}

Test(fsm_image, check_names_a_block_past_the_size)
{
    populate(fs);
    uint64_t plain = mkfile(fs, FSM_ROOT_INO, "plain");
    fill(fs, plain, 0, 'k', BS);
    struct buf img;
    encode(fs, &img);
    struct fsm *g;
    size_t r = rec_off(&img, plain, mode_of(fs, plain));
    cr_assert_eq(le_get_u64(img.data + r + REC_FILE_SIZE), BS);
    cr_assert_eq(patched_restore(&img, r + REC_FILE_SIZE, 10, 8, &g), 0);
    struct findings *fd = check_of(g);
    cr_assert_eq(fd->n, 1, "%zu findings: %s", fd->n, fd->what[0]);
    cr_assert(found(fd, plain, "past the size"), "%s", fd->what[0]);
    free(fd);
    fsm_free(g);
    buf_deinit(&img);
}

Test(fsm_image, check_names_an_unreachable_inode_that_is_not_an_orphan)
{
    struct tree t = populate(fs);
    struct buf img;
    encode(fs, &img);
    /* The root's entry "x1" now names f, whose nlink 3 matches its three
     * names; x1 is left with no name and nlink 0, but is not an orphan. */
    uint8_t *p = malloc(img.len);
    memcpy(p, img.data, img.len);
    le_put_u64(p + entry_off(&img, t.x1, "x1"), t.f);
    size_t rf = rec_off(&img, t.f, mode_of(fs, t.f));
    le_put_u32(p + rf + REC_NLINK, 3);
    size_t rx = rec_off(&img, t.x1, mode_of(fs, t.x1));
    le_put_u32(p + rx + REC_NLINK, 0);
    recrc(p, img.len);
    struct fsm *g = fresh();
    cr_assert_eq(fsm_image_restore(g, p, img.len), 0);
    struct findings *fd = check_of(g);
    cr_assert_eq(fd->n, 2, "%zu findings: %s / %s", fd->n, fd->what[0], fd->what[1]);
    cr_assert(found(fd, t.x1, "nlink 0 but not an orphan"));
    cr_assert(found(fd, t.x1, "not reachable"));
    free(fd);
    fsm_free(g);
    free(p);
    buf_deinit(&img);
}

Test(fsm_image, check_names_a_block_with_too_few_references)
{
    struct tree t = populate(fs);
    struct fsm *g = fresh();
    struct buf img;
    encode(fs, &img);
    cr_assert_eq(fsm_image_restore(g, img.data, img.len), 0);
    check_clean(g);
    /* The block only big's tail maps. */
    uint8_t *blk = calloc(1, BS);
    memcpy(blk + ((5ull << 30) + 7) % BS, "tail", 4);
    struct store_name tail;
    cr_assert_eq(store_name_of(blk, ((5ull << 30) + 11) % BS, &tail), 0);
    cr_assert_eq(store_refcount(st, &tail), 2, "fs and g");
    cr_assert_eq(store_unref(st, &tail), 0);
    cr_assert_eq(store_unref(st, &tail), 0);
    struct findings *fd = check_of(g);
    cr_assert_eq(fd->n, 1, "%zu findings: %s", fd->n, fd->what[0]);
    cr_assert(found(fd, t.big, "0 references for 1 mappings"), "%s", fd->what[0]);
    store_ref(st, &tail);
    store_ref(st, &tail);
    check_clean(g);
    free(fd);
    free(blk);
    fsm_free(g);
    buf_deinit(&img);
}

/* ---- divergence ---- */

Test(fsm_image, diverge_changes_one_inode_digest_and_the_state_digest)
{
    struct tree t = populate(fs);
    struct buf d1, d2;
    digests(fs, &d1);
    uint64_t before = fsm_digest(fs);
    struct fsm_attr a;
    cr_assert_eq(fsm_getattr(fs, t.f, &a), 0);
    cr_assert_eq(fsm_test_diverge(fs, t.f), 0);
    struct fsm_attr b;
    cr_assert_eq(fsm_getattr(fs, t.f, &b), 0);
    cr_assert_eq(b.mtime_ns, a.mtime_ns + 1);
    digests(fs, &d2);
    cr_assert_eq(d1.len, d2.len);
    size_t rec = 8 + FSM_INODE_DIGEST_BYTES, changed = 0;
    for (size_t off = 0; off < d1.len; off += rec) {
        cr_assert_eq(le_get_u64(d1.data + off), le_get_u64(d2.data + off));
        if (memcmp(d1.data + off, d2.data + off, rec) != 0) {
            changed++;
            cr_assert_eq(le_get_u64(d1.data + off), t.f);
        }
    }
    cr_assert_eq(changed, 1);
    cr_assert_neq(fsm_digest(fs), before);
    check_clean(fs); /* a divergence is not an invariant break */
    cr_assert_eq(fsm_test_diverge(fs, 9999), -ENOENT);
    buf_deinit(&d1);
    buf_deinit(&d2);
}

static int stop_cb(void *ctx, uint64_t ino, const uint8_t d[FSM_INODE_DIGEST_BYTES])
{
    (void)d;
    ++*(int *)ctx;
    return ino == 2 ? -42 : 0;
}

Test(fsm_image, inode_digests_stop_when_fn_says_so)
{
    populate(fs);
    int calls = 0;
    cr_assert_eq(fsm_inode_digests(fs, stop_cb, &calls), -42);
    cr_assert_eq(calls, 2);
}

/* ---- concurrency ---- */

static atomic_bool readers_stop;

static void *reader_main(void *arg)
{
    struct fsm *f = arg;
    for (int i = 0; i < 100000 && !atomic_load(&readers_stop); i++) {
        struct buf b;
        buf_init(&b);
        cr_assert_eq(fsm_readdir(f, FSM_ROOT_INO, 0, dirent_cb, &b), 0);
        buf_deinit(&b);
        struct fsm_attr a;
        fsm_getattr(f, (uint64_t)(i % 30) + 1, &a);
    }
    return NULL;
}

Test(fsm_image, restores_run_while_readers_read)
{
    struct buf full, empty;
    encode(fs, &empty);
    populate(fs);
    encode(fs, &full);
    struct fsm *g = fresh();
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, reader_main, g), 0);
    for (int i = 0; i < 40; i++) {
        const struct buf *b = i % 2 ? &empty : &full;
        cr_assert_eq(fsm_image_restore(g, b->data, b->len), 0);
    }
    atomic_store(&readers_stop, true);
    pthread_join(th, NULL);
    /* The last restore was of the empty image. */
    struct fsm *e = fresh();
    cr_assert_eq(fsm_digest(g), fsm_digest(e));
    check_clean(g);
    fsm_free(e);
    fsm_free(g);
    buf_deinit(&full);
    buf_deinit(&empty);
}

/* ---- images made while applies go on (fsm_image_begin / _finish) ---- */

/* Applies op and returns its result; a failed op is fine here (the churn
 * tries things that may not apply any more), only the state matters. */
static int64_t try_(struct fsm *f, struct fsm_op op)
{
    return apply_to(f, &op);
}

/* Round r of changes of every kind an apply makes, to the populated tree t
 * and to the files files[0..n): each inode the image holds gets changed,
 * renamed, unlinked or freed by one of them. */
static void churn(struct fsm *f, const struct tree *t, const uint64_t *files, size_t n, unsigned r)
{
    char name[32], other[32];
    uint64_t ino = files[r % n];
    snprintf(name, sizeof name, "m%zu", (size_t)(r % n));
    snprintf(other, sizeof other, "n%u", r);
    switch (r % 14) {
    case 0: /* a write inside a block, and one past the end */
        try_(f, (struct fsm_op){.type = FSM_OP_WRITE, .ino = ino, .offset = r % BS,
                                .data = (const uint8_t *)"written", .data_len = 7});
        try_(f, (struct fsm_op){.type = FSM_OP_WRITE, .ino = ino, .offset = 2 * BS,
                                .data = (const uint8_t *)"past", .data_len = 4});
        break;
    case 1: /* truncate down and up, chmod, chown, times */
        try_(f, (struct fsm_op){.type = FSM_OP_SETATTR, .ino = ino, .flags = FSM_SET_SIZE,
                                .attr = {.size = 7}});
        try_(f, (struct fsm_op){.type = FSM_OP_SETATTR, .ino = ino,
                                .flags = FSM_SET_MODE | FSM_SET_UID | FSM_SET_MTIME,
                                .attr = {.mode = 0600, .uid = 7, .mtime_ns = 99}});
        break;
    case 2: /* punch a hole, extend by fallocate */
        try_(f, (struct fsm_op){.type = FSM_OP_FALLOCATE, .ino = ino,
                                .flags = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                .offset = 0, .length = 50});
        try_(f, (struct fsm_op){.type = FSM_OP_FALLOCATE, .ino = ino, .offset = 0,
                                .length = 9 * BS});
        break;
    case 3:
        try_(f, (struct fsm_op){.type = FSM_OP_SETXATTR, .ino = ino, .name = "user.new",
                                .name_len = 8, .data = (const uint8_t *)"v", .data_len = 1});
        try_(f, (struct fsm_op){.type = FSM_OP_REMOVEXATTR, .ino = t->f, .name = "user.a",
                                .name_len = 6});
        break;
    case 4: /* another name in another directory */
        try_(f, (struct fsm_op){.type = FSM_OP_LINK, .ino = ino, .new_parent = t->c,
                                .new_name = other, .new_name_len = (uint32_t)strlen(other)});
        break;
    case 5: /* a rename across directories, replacing nothing */
        try_(f, (struct fsm_op){.type = FSM_OP_RENAME, .parent = FSM_ROOT_INO, .name = name,
                                .name_len = (uint32_t)strlen(name), .new_parent = t->b,
                                .new_name = name, .new_name_len = (uint32_t)strlen(name)});
        break;
    case 6: /* an exchange of a directory and a file */
        try_(f, (struct fsm_op){.type = FSM_OP_RENAME, .parent = FSM_ROOT_INO, .name = "c",
                                .name_len = 1, .new_parent = t->a, .new_name = "f",
                                .new_name_len = 1, .flags = RENAME_EXCHANGE});
        break;
    case 7: /* unlinked, then released by every node: freed */
        try_(f, (struct fsm_op){.type = FSM_OP_UNLINK, .parent = FSM_ROOT_INO, .name = name,
                                .name_len = (uint32_t)strlen(name)});
        try_(f, (struct fsm_op){.type = FSM_OP_UNLINK, .parent = t->b, .name = name,
                                .name_len = (uint32_t)strlen(name)});
        for (uint32_t node = 1; node <= NODES; node++)
            release_(f, node, ino); /* a no-op for a linked inode */
        break;
    case 8: /* the orphans of the populated tree go */
        for (uint32_t node = 1; node <= NODES; node++) {
            release_(f, node, t->orphan);
            release_(f, node, t->dead_dir);
        }
        break;
    case 9: /* new inodes: not in the image */
        try_(f, (struct fsm_op){.type = FSM_OP_MKDIR, .parent = t->b, .name = other,
                                .name_len = (uint32_t)strlen(other), .mode = 0755});
        strcat(other, "s");
        try_(f, (struct fsm_op){.type = FSM_OP_SYMLINK, .parent = t->b, .name = other,
                                .name_len = (uint32_t)strlen(other),
                                .data = (const uint8_t *)"t", .data_len = 1});
        break;
    case 10: /* a directory emptied and removed */
        try_(f, (struct fsm_op){.type = FSM_OP_UNLINK, .parent = t->b, .name = "fifo",
                                .name_len = 4});
        try_(f, (struct fsm_op){.type = FSM_OP_UNLINK, .parent = t->b, .name = "null",
                                .name_len = 4});
        try_(f, (struct fsm_op){.type = FSM_OP_UNLINK, .parent = t->b, .name = "s",
                                .name_len = 1});
        break;
    case 11: /* a replacing rename: the victim is orphaned */
        try_(f, (struct fsm_op){.type = FSM_OP_RENAME, .parent = FSM_ROOT_INO, .name = "x1",
                                .name_len = 2, .new_parent = FSM_ROOT_INO, .new_name = name,
                                .new_name_len = (uint32_t)strlen(name)});
        break;
    case 12:
        try_(f, (struct fsm_op){.type = FSM_OP_WRITE, .ino = t->big, .offset = (5ull << 30) + 9,
                                .data = (const uint8_t *)"tail", .data_len = 4});
        try_(f, (struct fsm_op){.type = FSM_OP_SETATTR, .ino = t->link, .flags = FSM_SET_MODE,
                                .attr = {.mode = 0700}});
        break;
    default: /* the divergence hook changes an inode outside apply */
        cr_assert_eq(fsm_test_diverge(f, t->y2), 0);
        break;
    }
}

/* A populated tree with `n` more files in the root, for a longer encode. */
static struct tree populate_many(struct fsm *f, uint64_t *files, size_t n)
{
    struct tree t = populate(f);
    for (size_t i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof name, "m%zu", i);
        files[i] = mkfile(f, FSM_ROOT_INO, name);
        fill(f, files[i], 0, (int)('a' + i % 26), 10);
        setxattr_(f, files[i], "user.k", "v");
    }
    return t;
}

Test(fsm_image, an_image_shows_the_state_at_begin_whatever_applies_do_before_finish)
{
    uint64_t files[64];
    struct tree t = populate_many(fs, files, 64);
    struct buf want, got;
    encode(fs, &want);
    cr_assert_eq(fsm_image_begin(fs), 0);
    cr_assert_eq(fsm_image_begin(fs), -EBUSY, "one image at a time");
    for (unsigned r = 0; r < 3 * 64; r++)
        churn(fs, &t, files, 64, r);
    buf_init(&got);
    cr_assert_eq(fsm_image_finish(fs, &got), 0);
    bufs_equal(&want, &got, "image begun before the changes");
    cr_assert_eq(fsm_image_finish(fs, &got), -EINVAL, "none in the making");
    /* The image restores to the state as of begin, and the live state is
     * whole (every saved inode was freed once, at the right time). */
    struct fsm *g = fresh();
    cr_assert_eq(fsm_image_restore(g, got.data, got.len), 0);
    check_clean(g);
    check_clean(fs);
    fsm_free(g);
    /* And the next image shows the changes. */
    buf_deinit(&got);
    encode(fs, &got);
    cr_assert(want.len != got.len || memcmp(want.data, got.data, want.len) != 0);
    buf_deinit(&want);
    buf_deinit(&got);
}

struct finisher {
    struct fsm *f;
    struct buf out;
    int rc;
    atomic_bool done;
};

static void *finisher_main(void *arg)
{
    struct finisher *fin = arg;
    buf_init(&fin->out);
    fin->rc = fsm_image_finish(fin->f, &fin->out);
    atomic_store(&fin->done, true);
    return NULL;
}

Test(fsm_image, an_image_encoded_on_another_thread_while_applies_go_on_is_the_state_at_begin)
{
    enum { FILES = 6000 };
    uint64_t *files = malloc(FILES * sizeof *files);
    struct tree t = populate_many(fs, files, FILES);
    struct buf want;
    encode(fs, &want);
    for (int round = 0; round < 4; round++) {
        cr_assert_eq(fsm_image_begin(fs), 0);
        struct finisher fin = {.f = fs};
        pthread_t th;
        cr_assert_eq(pthread_create(&th, NULL, finisher_main, &fin), 0);
        unsigned r = (unsigned)round * 997;
        for (unsigned k = 0; k < 20000 && !atomic_load(&fin.done); k++)
            churn(fs, &t, files, FILES, r++);
        pthread_join(th, NULL);
        cr_assert_eq(fin.rc, 0);
        bufs_equal(&want, &fin.out, "image begun before the changes");
        buf_deinit(&fin.out);
        check_clean(fs);
        buf_deinit(&want);
        encode(fs, &want); /* the next round's state */
    }
    buf_deinit(&want);
    free(files);
}

Test(fsm_image, a_restore_before_finish_leaves_the_image_as_begun)
{
    uint64_t files[8];
    populate_many(fs, files, 8);
    struct buf want, empty, got;
    encode(fs, &want);
    struct fsm *e = fresh();
    encode(e, &empty);
    fsm_free(e);
    cr_assert_eq(fsm_image_begin(fs), 0);
    cr_assert_eq(fsm_image_restore(fs, empty.data, empty.len), 0);
    mkfile(fs, FSM_ROOT_INO, "after"); /* reuses the freed inodes' memory */
    buf_init(&got);
    cr_assert_eq(fsm_image_finish(fs, &got), 0);
    bufs_equal(&want, &got, "image begun before the restore");
    buf_deinit(&want);
    buf_deinit(&empty);
    buf_deinit(&got);
}

/* Holds the encoder after its first batch until the test lets it go. */
static sem_t encoder_held, encoder_go;

static void hold_after_first_batch(uint64_t encoded)
{
    (void)encoded;
    fsm_test_image_batch_hook = NULL;
    sem_post(&encoder_held);
    sem_wait(&encoder_go);
}

Test(fsm_image, a_restore_while_another_thread_encodes_leaves_the_image_as_begun)
{
    enum { FILES = 3000 };
    uint64_t *files = malloc(FILES * sizeof *files);
    populate_many(fs, files, FILES);
    struct buf want, empty;
    encode(fs, &want);
    struct fsm *e = fresh();
    encode(e, &empty);
    fsm_free(e);
    cr_assert_eq(sem_init(&encoder_held, 0, 0), 0);
    cr_assert_eq(sem_init(&encoder_go, 0, 0), 0);
    fsm_test_image_batch_hook = hold_after_first_batch;
    cr_assert_eq(fsm_image_begin(fs), 0);
    struct finisher fin = {.f = fs};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, finisher_main, &fin), 0);
    sem_wait(&encoder_held);
    /* The first files are encoded now: freed, nothing need keep them, but
     * the restore below must not follow their addresses; later files are
     * saved as they go. */
    for (size_t k = 0; k < FILES / 2; k++) {
        char name[32];
        snprintf(name, sizeof name, "m%zu", k);
        try_(fs, (struct fsm_op){.type = FSM_OP_UNLINK, .parent = FSM_ROOT_INO, .name = name,
                                 .name_len = (uint32_t)strlen(name)});
        for (uint32_t node = 1; node <= NODES; node++)
            release_(fs, node, files[k]);
    }
    cr_assert_eq(fsm_image_restore(fs, empty.data, empty.len), 0);
    mkfile(fs, FSM_ROOT_INO, "after");
    sem_post(&encoder_go);
    pthread_join(th, NULL);
    cr_assert_eq(fin.rc, 0);
    bufs_equal(&want, &fin.out, "image begun before the frees and the restore");
    buf_deinit(&fin.out);
    buf_deinit(&want);
    buf_deinit(&empty);
    free(files);
}
