/* Tests of the filesystem state machine (fs/fsm.h) on a real block store in
 * a mkdtemp dir: every op's success path and its errors, link counts, sizes
 * and timestamps after each op, set-id rules, the rename matrix, sparse and
 * large files, random writes against a shadow buffer, O_APPEND, a directory
 * of 100,000 entries, readdir cookies under deletion, the orphan life cycle,
 * digests, the op codec, and corruption and store errors. */
#include "fs/fsm.h"

#include "fs/store.h"

#include "fsm_fixture.h"

#include "base/assert.h"
#include "base/buf.h"
#include "base/fault.h"
#include "base/prng.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#define BS (64u * 1024u)
#define NODES 3
#define UID 1000
#define GID 1000

static struct fixture fx;
static struct store *st;
static struct fsm *fs;
static int64_t now_ns = 1000;
static uint32_t cur_uid = UID, cur_gid = GID;
static struct fsm_changes changes;

static void setup(void)
{
    fixture_quiet_log();
    const struct fixture_config cfg = {
        .dir_name = "paxfs-test-fsm",
        .block_size = BS,
        .cache_bytes = 0, /* every read goes to disk: corruption is seen */
        .nodes = NODES,
    };
    cr_assert_eq(fixture_open(&fx, &cfg, &st, &fs), 0);
}

static void teardown(void)
{
    fixture_close(&fx, st, fs);
}

TestSuite(fsm, .init = setup, .fini = teardown, .timeout = 60);

/* ---- helpers: build, encode and apply one op ---- */

static int64_t apply_to(struct fsm *f, struct fsm_op *op)
{
    fixture_stamp(op, cur_uid, cur_gid, ++now_ns);
    int64_t res = 0;
    int rc = fixture_apply(f, op, &changes, &res);
    cr_assert_eq(rc, 0, "encode type %d: %d", op->type, rc);
    return res;
}

static int64_t apply(struct fsm_op *op)
{
    return apply_to(fs, op);
}

static int64_t do_mknod(uint64_t parent, const char *name, uint32_t mode)
{
    struct fsm_op op = {.type = FSM_OP_MKNOD, .parent = parent, .name = name,
                        .name_len = (uint32_t)strlen(name), .mode = mode};
    return apply(&op);
}

static int64_t do_create(uint64_t parent, const char *name)
{
    return do_mknod(parent, name, S_IFREG | 0644);
}

static int64_t do_mkdir(uint64_t parent, const char *name)
{
    struct fsm_op op = {.type = FSM_OP_MKDIR, .parent = parent, .name = name,
                        .name_len = (uint32_t)strlen(name), .mode = 0755};
    return apply(&op);
}

static int64_t do_symlink(uint64_t parent, const char *name, const char *target)
{
    struct fsm_op op = {.type = FSM_OP_SYMLINK, .parent = parent, .name = name,
                        .name_len = (uint32_t)strlen(name), .data = (const uint8_t *)target,
                        .data_len = (uint32_t)strlen(target)};
    return apply(&op);
}

static int64_t do_link(uint64_t ino, uint64_t parent, const char *name)
{
    struct fsm_op op = {.type = FSM_OP_LINK, .ino = ino, .new_parent = parent,
                        .new_name = name, .new_name_len = (uint32_t)strlen(name)};
    return apply(&op);
}

static int64_t do_remove(uint8_t type, uint64_t parent, const char *name)
{
    struct fsm_op op = {.type = type, .parent = parent, .name = name,
                        .name_len = (uint32_t)strlen(name)};
    return apply(&op);
}

static int64_t do_rename(uint64_t p, const char *n, uint64_t np, const char *nn, uint32_t flags)
{
    struct fsm_op op = {.type = FSM_OP_RENAME, .parent = p, .name = n,
                        .name_len = (uint32_t)strlen(n), .new_parent = np, .new_name = nn,
                        .new_name_len = (uint32_t)strlen(nn), .flags = flags};
    return apply(&op);
}

static int64_t do_write_to(struct fsm *f, uint64_t ino, uint64_t off, const void *p, size_t n,
                           uint32_t flags)
{
    struct fsm_op op = {.type = FSM_OP_WRITE, .ino = ino, .offset = off,
                        .data = p, .data_len = (uint32_t)n, .flags = flags};
    return apply_to(f, &op);
}

static int64_t do_write(uint64_t ino, uint64_t off, const void *p, size_t n)
{
    return do_write_to(fs, ino, off, p, n, 0);
}

static int64_t do_setattr(uint64_t ino, uint32_t mask, const struct fsm_attr *a)
{
    struct fsm_op op = {.type = FSM_OP_SETATTR, .ino = ino, .flags = mask, .attr = *a};
    return apply(&op);
}

static int64_t do_truncate(uint64_t ino, uint64_t size)
{
    struct fsm_attr a = {.size = size};
    return do_setattr(ino, FSM_SET_SIZE, &a);
}

static int64_t do_fallocate(uint64_t ino, uint32_t mode, uint64_t off, uint64_t len)
{
    struct fsm_op op = {.type = FSM_OP_FALLOCATE, .ino = ino, .flags = mode, .offset = off,
                        .length = len};
    return apply(&op);
}

static int64_t do_setxattr(uint64_t ino, const char *name, const char *value, uint32_t flags)
{
    struct fsm_op op = {.type = FSM_OP_SETXATTR, .ino = ino, .name = name,
                        .name_len = (uint32_t)strlen(name), .data = (const uint8_t *)value,
                        .data_len = (uint32_t)strlen(value), .flags = flags};
    return apply(&op);
}

static int64_t do_removexattr(uint64_t ino, const char *name)
{
    struct fsm_op op = {.type = FSM_OP_REMOVEXATTR, .ino = ino, .name = name,
                        .name_len = (uint32_t)strlen(name)};
    return apply(&op);
}

static int64_t do_release(uint32_t node, const uint64_t *inos, size_t n)
{
    uint8_t raw[8 * 16];
    cr_assert(n <= 16);
    for (size_t i = 0; i < n; i++)
        le_put_u64(raw + 8 * i, inos[i]);
    struct fsm_op op = {.type = FSM_OP_RELEASE, .node = node, .data = raw,
                        .data_len = (uint32_t)(8 * n)};
    return apply(&op);
}

static struct fsm_attr attr_of(uint64_t ino)
{
    struct fsm_attr a;
    cr_assert_eq(fsm_getattr(fs, ino, &a), 0, "getattr %llu", (unsigned long long)ino);
    return a;
}

static struct fsm_attr lookup_ok(uint64_t parent, const char *name)
{
    struct fsm_attr a;
    cr_assert_eq(fsm_lookup(fs, parent, name, &a), 0, "lookup %s", name);
    return a;
}

static int lookup_rc(uint64_t parent, const char *name)
{
    struct fsm_attr a;
    return fsm_lookup(fs, parent, name, &a);
}

static void read_exact(uint64_t ino, uint64_t off, size_t n, void *out)
{
    size_t got = 0;
    cr_assert_eq(fsm_read(fs, ino, off, n, out, &got), 0);
    cr_assert_eq(got, n, "read got %zu of %zu", got, n);
}

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

/* ---- creation ---- */

Test(fsm, root_is_an_empty_directory_owned_by_root)
{
    struct fsm_attr a = attr_of(FSM_ROOT_INO);
    cr_assert(S_ISDIR(a.mode));
    cr_assert_eq(a.mode & 07777, 0755);
    cr_assert_eq(a.nlink, 2);
    cr_assert_eq(a.uid, 0);
    cr_assert_eq(a.size, 0);
    cr_assert_eq(a.gen, 1);
    struct fsm_attr d = lookup_ok(FSM_ROOT_INO, "..");
    cr_assert_eq(d.ino, FSM_ROOT_INO);
}

Test(fsm, mknod_creates_a_file_owned_by_the_caller_and_touches_the_parent)
{
    int64_t ino = do_create(FSM_ROOT_INO, "a");
    cr_assert_eq(ino, 2);
    int64_t t = now_ns;
    struct fsm_attr a = lookup_ok(FSM_ROOT_INO, "a");
    cr_assert_eq(a.ino, 2);
    cr_assert_eq(a.mode, S_IFREG | 0644);
    cr_assert_eq(a.nlink, 1);
    cr_assert_eq(a.uid, UID);
    cr_assert_eq(a.gid, GID);
    cr_assert_eq(a.size, 0);
    cr_assert_eq(a.mtime_ns, t);
    cr_assert_eq(a.ctime_ns, t);
    cr_assert_eq(a.atime_ns, t);
    struct fsm_attr r = attr_of(FSM_ROOT_INO);
    cr_assert_eq(r.mtime_ns, t);
    cr_assert_eq(r.ctime_ns, t);
    cr_assert_eq(r.size, 1, "directory size is its number of entries");
    cr_assert_eq(r.nlink, 2);
    cr_assert_eq(changes.n_entries, 1);
    cr_assert_str_eq(changes.entries[0].name, "a");
    cr_assert_eq(changes.entries[0].ino, 2);
    cr_assert_eq(do_create(FSM_ROOT_INO, "b"), 3, "numbers come from a counter");
}

Test(fsm, mknod_of_fifo_and_device_keeps_type_and_rdev)
{
    int64_t fifo = do_mknod(FSM_ROOT_INO, "p", S_IFIFO | 0600);
    cr_assert(S_ISFIFO(attr_of((uint64_t)fifo).mode));
    struct fsm_op op = {.type = FSM_OP_MKNOD, .parent = FSM_ROOT_INO, .name = "c", .name_len = 1,
                        .mode = S_IFCHR | 0600, .rdev = 0x0501};
    int64_t chr = apply(&op);
    cr_assert_eq(attr_of((uint64_t)chr).rdev, 0x0501);
    cr_assert_eq(do_mknod(FSM_ROOT_INO, "d", S_IFDIR | 0755), -EINVAL);
    cr_assert_eq(do_mknod(FSM_ROOT_INO, "z", 0644), 4, "type 0 is a regular file");
    cr_assert(S_ISREG(attr_of(4).mode));
}

Test(fsm, mknod_of_an_existing_name_is_eexist)
{
    cr_assert_gt(do_create(FSM_ROOT_INO, "a"), 0);
    uint64_t d = fsm_digest(fs);
    cr_assert_eq(do_create(FSM_ROOT_INO, "a"), -EEXIST);
    cr_assert_eq(do_mkdir(FSM_ROOT_INO, "a"), -EEXIST);
    cr_assert_eq(do_symlink(FSM_ROOT_INO, "a", "x"), -EEXIST);
    cr_assert_eq(fsm_digest(fs), d, "a failed op changes nothing");
    cr_assert_eq(changes.n_inodes, 0);
}

Test(fsm, create_in_a_missing_parent_is_enoent)
{
    cr_assert_eq(do_create(77, "a"), -ENOENT);
    cr_assert_eq(lookup_rc(77, "a"), -ENOENT);
}

Test(fsm, create_under_a_file_is_enotdir)
{
    int64_t f = do_create(FSM_ROOT_INO, "f");
    cr_assert_eq(do_create((uint64_t)f, "a"), -ENOTDIR);
    cr_assert_eq(lookup_rc((uint64_t)f, "a"), -ENOTDIR);
}

Test(fsm, create_in_a_removed_directory_is_enoent)
{
    int64_t d = do_mkdir(FSM_ROOT_INO, "d");
    cr_assert_eq(do_remove(FSM_OP_RMDIR, FSM_ROOT_INO, "d"), 0);
    cr_assert_eq(do_create((uint64_t)d, "a"), -ENOENT);
}

Test(fsm, mkdir_counts_links_of_child_and_parent)
{
    int64_t d = do_mkdir(FSM_ROOT_INO, "d");
    struct fsm_attr a = attr_of((uint64_t)d);
    cr_assert(S_ISDIR(a.mode));
    cr_assert_eq(a.nlink, 2);
    cr_assert_eq(attr_of(FSM_ROOT_INO).nlink, 3);
    do_mkdir((uint64_t)d, "e");
    cr_assert_eq(attr_of((uint64_t)d).nlink, 3);
    cr_assert_eq(attr_of(FSM_ROOT_INO).nlink, 3);
    cr_assert_eq(lookup_ok((uint64_t)d, "..").ino, FSM_ROOT_INO);
    cr_assert_eq(lookup_ok((uint64_t)d, ".").ino, (uint64_t)d);
}

Test(fsm, mkdir_ignores_setid_bits_of_its_mode)
{
    struct fsm_op op = {.type = FSM_OP_MKDIR, .parent = FSM_ROOT_INO, .name = "d", .name_len = 1,
                        .mode = 06777};
    int64_t d = apply(&op);
    cr_assert_eq(attr_of((uint64_t)d).mode, S_IFDIR | 0777);
}

Test(fsm, setgid_directory_is_inherited)
{
    int64_t d = do_mkdir(FSM_ROOT_INO, "shared");
    struct fsm_attr a = {.mode = 02775, .gid = 500};
    cr_assert_eq(do_setattr((uint64_t)d, FSM_SET_MODE | FSM_SET_GID, &a), 0);
    int64_t f = do_create((uint64_t)d, "f");
    int64_t sub = do_mkdir((uint64_t)d, "sub");
    int64_t l = do_symlink((uint64_t)d, "l", "f");
    cr_assert_eq(attr_of((uint64_t)f).gid, 500);
    cr_assert_eq(attr_of((uint64_t)f).mode & S_ISGID, 0);
    cr_assert_eq(attr_of((uint64_t)sub).gid, 500);
    cr_assert_eq(attr_of((uint64_t)sub).mode & S_ISGID, S_ISGID, "subdirs inherit S_ISGID");
    cr_assert_eq(attr_of((uint64_t)l).gid, 500);
    /* Outside the setgid directory the caller's gid applies. */
    int64_t g = do_create(FSM_ROOT_INO, "g");
    cr_assert_eq(attr_of((uint64_t)g).gid, GID);
    int64_t sub2 = do_mkdir((uint64_t)sub, "deeper");
    cr_assert_eq(attr_of((uint64_t)sub2).gid, 500);
    cr_assert_eq(attr_of((uint64_t)sub2).mode & S_ISGID, S_ISGID);
}

/* ---- symlinks ---- */

Test(fsm, symlink_reads_back_its_target)
{
    int64_t l = do_symlink(FSM_ROOT_INO, "l", "../some/where");
    struct fsm_attr a = attr_of((uint64_t)l);
    cr_assert(S_ISLNK(a.mode));
    cr_assert_eq(a.mode & 0777, 0777);
    cr_assert_eq(a.size, 13);
    char buf[64];
    size_t n = 0;
    cr_assert_eq(fsm_readlink(fs, (uint64_t)l, buf, sizeof buf, &n), 0);
    cr_assert_eq(n, 13);
    cr_assert_str_eq(buf, "../some/where");
    cr_assert_eq(fsm_readlink(fs, (uint64_t)l, buf, 12, &n), -ERANGE);
    memset(buf, 'x', sizeof buf);
    cr_assert_eq(fsm_readlink(fs, (uint64_t)l, buf, 13, &n), 0, "no room for the NUL is fine");
    cr_assert_eq(memcmp(buf, "../some/where", 13), 0);
    cr_assert_eq(buf[13], 'x');
    int64_t f = do_create(FSM_ROOT_INO, "f");
    cr_assert_eq(fsm_readlink(fs, (uint64_t)f, buf, sizeof buf, &n), -EINVAL);
}

Test(fsm, symlink_targets_are_bounded_by_the_codec)
{
    struct buf b;
    buf_init(&b);
    struct fsm_op op = {.type = FSM_OP_SYMLINK, .parent = 1, .name = "l", .name_len = 1};
    cr_assert_eq(fsm_op_encode(&op, &b), -EINVAL, "empty target");
    static char big[FSM_SYMLINK_MAX + 1];
    memset(big, 'x', sizeof big);
    op.data = (const uint8_t *)big;
    op.data_len = FSM_SYMLINK_MAX + 1;
    cr_assert_eq(fsm_op_encode(&op, &b), -EINVAL);
    op.data_len = FSM_SYMLINK_MAX;
    cr_assert_eq(fsm_op_encode(&op, &b), 0);
    cr_assert_gt(fsm_apply(fs, b.data, b.len, NULL), 0);
    buf_deinit(&b);
}

/* ---- link, unlink, rmdir ---- */

Test(fsm, link_adds_a_name_and_a_link)
{
    int64_t f = do_create(FSM_ROOT_INO, "a");
    int64_t d = do_mkdir(FSM_ROOT_INO, "d");
    cr_assert_eq(do_link((uint64_t)f, (uint64_t)d, "b"), 0);
    int64_t t = now_ns;
    struct fsm_attr a = attr_of((uint64_t)f);
    cr_assert_eq(a.nlink, 2);
    cr_assert_eq(a.ctime_ns, t);
    cr_assert_eq(lookup_ok((uint64_t)d, "b").ino, (uint64_t)f);
    cr_assert_eq(attr_of((uint64_t)d).mtime_ns, t);
    cr_assert_eq(attr_of((uint64_t)d).size, 1);
}

Test(fsm, link_to_a_directory_is_eperm)
{
    int64_t d = do_mkdir(FSM_ROOT_INO, "d");
    cr_assert_eq(do_link((uint64_t)d, FSM_ROOT_INO, "d2"), -EPERM);
}

Test(fsm, link_over_an_existing_name_is_eexist)
{
    int64_t f = do_create(FSM_ROOT_INO, "a");
    do_create(FSM_ROOT_INO, "b");
    cr_assert_eq(do_link((uint64_t)f, FSM_ROOT_INO, "b"), -EEXIST);
}

Test(fsm, link_of_an_unlinked_file_is_enoent)
{
    int64_t f = do_create(FSM_ROOT_INO, "a");
    do_remove(FSM_OP_UNLINK, FSM_ROOT_INO, "a");
    cr_assert_eq(do_link((uint64_t)f, FSM_ROOT_INO, "b"), -ENOENT);
    cr_assert_eq(do_link(999, FSM_ROOT_INO, "b"), -ENOENT);
}

Test(fsm, unlink_drops_a_link_and_touches_parent_and_inode)
{
    int64_t f = do_create(FSM_ROOT_INO, "a");
    do_link((uint64_t)f, FSM_ROOT_INO, "b");
    cr_assert_eq(do_remove(FSM_OP_UNLINK, FSM_ROOT_INO, "a"), 0);
    int64_t t = now_ns;
    cr_assert_eq(lookup_rc(FSM_ROOT_INO, "a"), -ENOENT);
    struct fsm_attr a = attr_of((uint64_t)f);
    cr_assert_eq(a.nlink, 1);
    cr_assert_eq(a.ctime_ns, t);
    struct fsm_attr r = attr_of(FSM_ROOT_INO);
    cr_assert_eq(r.mtime_ns, t);
    cr_assert_eq(r.ctime_ns, t);
    cr_assert_eq(r.size, 1);
    cr_assert_eq(changes.n_entries, 1);
    cr_assert_eq(changes.entries[0].ino, 0);
    cr_assert_str_eq(changes.entries[0].name, "a");
    uint64_t held[4];
    cr_assert_eq(fsm_orphans_held(fs, 1, held, 4), 0, "still has a name");
}

Test(fsm, unlink_of_a_directory_is_eisdir)
{
    do_mkdir(FSM_ROOT_INO, "d");
    cr_assert_eq(do_remove(FSM_OP_UNLINK, FSM_ROOT_INO, "d"), -EISDIR);
}

Test(fsm, unlink_of_a_missing_name_is_enoent)
{
    cr_assert_eq(do_remove(FSM_OP_UNLINK, FSM_ROOT_INO, "nope"), -ENOENT);
    cr_assert_eq(do_remove(FSM_OP_RMDIR, FSM_ROOT_INO, "nope"), -ENOENT);
}

Test(fsm, rmdir_of_a_non_empty_directory_is_enotempty)
{
    int64_t d = do_mkdir(FSM_ROOT_INO, "d");
    do_create((uint64_t)d, "f");
    cr_assert_eq(do_remove(FSM_OP_RMDIR, FSM_ROOT_INO, "d"), -ENOTEMPTY);
}

Test(fsm, rmdir_of_a_file_is_enotdir)
{
    do_create(FSM_ROOT_INO, "f");
    cr_assert_eq(do_remove(FSM_OP_RMDIR, FSM_ROOT_INO, "f"), -ENOTDIR);
}

Test(fsm, rmdir_drops_the_parent_link_and_orphans_the_directory)
{
    int64_t d = do_mkdir(FSM_ROOT_INO, "d");
    cr_assert_eq(do_remove(FSM_OP_RMDIR, FSM_ROOT_INO, "d"), 0);
    cr_assert_eq(attr_of(FSM_ROOT_INO).nlink, 2);
    cr_assert_eq(attr_of(FSM_ROOT_INO).size, 0);
    cr_assert_eq(attr_of((uint64_t)d).nlink, 0);
    uint64_t held[4];
    cr_assert_eq(fsm_orphans_held(fs, 2, held, 4), 1);
    cr_assert_eq(held[0], (uint64_t)d);
}

Test(fsm, name_over_255_is_enametoolong)
{
    char name[300];
    memset(name, 'n', sizeof name);
    name[256] = '\0';
    struct buf b;
    buf_init(&b);
    struct fsm_op op = {.type = FSM_OP_MKNOD, .parent = 1, .name = name, .name_len = 256,
                        .mode = S_IFREG | 0644};
    cr_assert_eq(fsm_op_encode(&op, &b), -ENAMETOOLONG);
    cr_assert_eq(b.len, 0, "nothing appended on error");
    cr_assert_eq(lookup_rc(FSM_ROOT_INO, name), -ENAMETOOLONG);
    name[255] = '\0';
    cr_assert_eq(do_create(FSM_ROOT_INO, name), 2, "255 is fine");
    cr_assert_eq(lookup_ok(FSM_ROOT_INO, name).ino, 2);
    buf_deinit(&b);
}

Test(fsm, rename_of_dot_or_dotdot_is_einval)
{
    struct buf b;
    buf_init(&b);
    struct fsm_op op = {.type = FSM_OP_RENAME, .parent = 1, .name = ".", .name_len = 1,
                        .new_parent = 1, .new_name = "x", .new_name_len = 1};
    cr_assert_eq(fsm_op_encode(&op, &b), -EINVAL);
    op.name = "..";
    op.name_len = 2;
    cr_assert_eq(fsm_op_encode(&op, &b), -EINVAL);
    op.name = "x";
    op.name_len = 1;
    op.new_name = "..";
    op.new_name_len = 2;
    cr_assert_eq(fsm_op_encode(&op, &b), -EINVAL);
    op.new_name = "a/b";
    op.new_name_len = 3;
    cr_assert_eq(fsm_op_encode(&op, &b), -EINVAL, "a name holds no slash");
    op.new_name = "a\0b";
    cr_assert_eq(fsm_op_encode(&op, &b), -EINVAL, "a name holds no NUL");
    buf_deinit(&b);
}

/* ---- rename matrix ---- */

Test(fsm, rename_file_over_file_replaces_and_orphans_the_target)
{
    int64_t a = do_create(FSM_ROOT_INO, "a");
    int64_t b = do_create(FSM_ROOT_INO, "b");
    int64_t d = do_mkdir(FSM_ROOT_INO, "d");
    cr_assert_eq(do_rename(FSM_ROOT_INO, "a", (uint64_t)d, "b", 0), 0);
    do_rename(FSM_ROOT_INO, "b", (uint64_t)d, "b", 0);
    int64_t t = now_ns;
    cr_assert_eq(lookup_ok((uint64_t)d, "b").ino, (uint64_t)b);
    cr_assert_eq(lookup_rc(FSM_ROOT_INO, "a"), -ENOENT);
    cr_assert_eq(lookup_rc(FSM_ROOT_INO, "b"), -ENOENT);
    cr_assert_eq(attr_of((uint64_t)a).nlink, 0, "the replaced file lost its name");
    cr_assert_eq(attr_of((uint64_t)b).ctime_ns, t);
    cr_assert_eq(attr_of(FSM_ROOT_INO).mtime_ns, t);
    cr_assert_eq(attr_of((uint64_t)d).mtime_ns, t);
    cr_assert_eq(attr_of((uint64_t)d).size, 1);
    uint64_t held[4];
    cr_assert_eq(fsm_orphans_held(fs, 1, held, 4), 1);
    cr_assert_eq(held[0], (uint64_t)a);
}

Test(fsm, rename_dir_over_empty_dir_replaces_it)
{
    int64_t a = do_mkdir(FSM_ROOT_INO, "a");
    int64_t b = do_mkdir(FSM_ROOT_INO, "b");
    do_create((uint64_t)a, "inside");
    cr_assert_eq(attr_of(FSM_ROOT_INO).nlink, 4);
    cr_assert_eq(do_rename(FSM_ROOT_INO, "a", FSM_ROOT_INO, "b", 0), 0);
    cr_assert_eq(lookup_ok(FSM_ROOT_INO, "b").ino, (uint64_t)a);
    cr_assert_eq(attr_of((uint64_t)b).nlink, 0);
    cr_assert_eq(attr_of(FSM_ROOT_INO).nlink, 3);
    cr_assert_eq(lookup_ok((uint64_t)a, "inside").nlink, 1);
}

Test(fsm, rename_dir_over_non_empty_dir_is_enotempty)
{
    do_mkdir(FSM_ROOT_INO, "a");
    int64_t b = do_mkdir(FSM_ROOT_INO, "b");
    do_create((uint64_t)b, "f");
    cr_assert_eq(do_rename(FSM_ROOT_INO, "a", FSM_ROOT_INO, "b", 0), -ENOTEMPTY);
}

Test(fsm, rename_file_over_dir_is_eisdir)
{
    do_create(FSM_ROOT_INO, "f");
    do_mkdir(FSM_ROOT_INO, "d");
    cr_assert_eq(do_rename(FSM_ROOT_INO, "f", FSM_ROOT_INO, "d", 0), -EISDIR);
}

Test(fsm, rename_dir_over_file_is_enotdir)
{
    do_create(FSM_ROOT_INO, "f");
    do_mkdir(FSM_ROOT_INO, "d");
    cr_assert_eq(do_rename(FSM_ROOT_INO, "d", FSM_ROOT_INO, "f", 0), -ENOTDIR);
}

Test(fsm, rename_noreplace_over_existing_is_eexist)
{
    do_create(FSM_ROOT_INO, "a");
    do_create(FSM_ROOT_INO, "b");
    cr_assert_eq(do_rename(FSM_ROOT_INO, "a", FSM_ROOT_INO, "b", RENAME_NOREPLACE), -EEXIST);
    cr_assert_eq(do_rename(FSM_ROOT_INO, "a", FSM_ROOT_INO, "c", RENAME_NOREPLACE), 0);
}

Test(fsm, rename_with_both_flags_or_unknown_flags_is_einval)
{
    do_create(FSM_ROOT_INO, "a");
    do_create(FSM_ROOT_INO, "b");
    cr_assert_eq(do_rename(FSM_ROOT_INO, "a", FSM_ROOT_INO, "b",
                           RENAME_NOREPLACE | RENAME_EXCHANGE), -EINVAL);
    cr_assert_eq(do_rename(FSM_ROOT_INO, "a", FSM_ROOT_INO, "b", 1u << 20), -EINVAL);
}

Test(fsm, rename_exchange_swaps_a_file_and_a_dir)
{
    int64_t d1 = do_mkdir(FSM_ROOT_INO, "d1");
    int64_t f = do_create(FSM_ROOT_INO, "f");
    int64_t d = do_mkdir((uint64_t)d1, "d");
    cr_assert_eq(attr_of((uint64_t)d1).nlink, 3);
    cr_assert_eq(attr_of(FSM_ROOT_INO).nlink, 3);
    cr_assert_eq(do_rename(FSM_ROOT_INO, "f", (uint64_t)d1, "d", RENAME_EXCHANGE), 0);
    cr_assert_eq(lookup_ok(FSM_ROOT_INO, "f").ino, (uint64_t)d);
    cr_assert_eq(lookup_ok((uint64_t)d1, "d").ino, (uint64_t)f);
    cr_assert_eq(lookup_ok((uint64_t)d, "..").ino, FSM_ROOT_INO);
    cr_assert_eq(attr_of((uint64_t)d1).nlink, 2);
    cr_assert_eq(attr_of(FSM_ROOT_INO).nlink, 4);
    cr_assert_eq(attr_of((uint64_t)f).nlink, 1);
    cr_assert_eq(attr_of((uint64_t)d).ctime_ns, now_ns);
    cr_assert_eq(attr_of((uint64_t)f).ctime_ns, now_ns);
}

Test(fsm, rename_exchange_with_a_missing_target_is_enoent)
{
    do_create(FSM_ROOT_INO, "a");
    cr_assert_eq(do_rename(FSM_ROOT_INO, "a", FSM_ROOT_INO, "b", RENAME_EXCHANGE), -ENOENT);
}

Test(fsm, rename_dir_into_its_own_subtree_is_einval)
{
    int64_t a = do_mkdir(FSM_ROOT_INO, "a");
    int64_t b = do_mkdir((uint64_t)a, "b");
    int64_t c = do_mkdir((uint64_t)b, "c");
    cr_assert_eq(do_rename(FSM_ROOT_INO, "a", (uint64_t)c, "a", 0), -EINVAL);
    cr_assert_eq(do_rename(FSM_ROOT_INO, "a", (uint64_t)a, "x", 0), -EINVAL);
    /* Exchanging a dir with something inside it is the same loop. */
    cr_assert_eq(do_rename((uint64_t)b, "c", FSM_ROOT_INO, "a", RENAME_EXCHANGE), -EINVAL);
    /* Moving it up is fine. */
    cr_assert_eq(do_rename((uint64_t)b, "c", FSM_ROOT_INO, "c", 0), 0);
}

Test(fsm, rename_onto_itself_is_a_noop)
{
    int64_t f = do_create(FSM_ROOT_INO, "a");
    do_link((uint64_t)f, FSM_ROOT_INO, "b");
    uint64_t d = fsm_digest(fs);
    cr_assert_eq(do_rename(FSM_ROOT_INO, "a", FSM_ROOT_INO, "a", 0), 0);
    cr_assert_eq(do_rename(FSM_ROOT_INO, "a", FSM_ROOT_INO, "b", 0), 0);
    cr_assert_eq(fsm_digest(fs), d);
    cr_assert_eq(attr_of((uint64_t)f).nlink, 2);
}

Test(fsm, rename_of_a_missing_name_is_enoent)
{
    cr_assert_eq(do_rename(FSM_ROOT_INO, "nope", FSM_ROOT_INO, "b", 0), -ENOENT);
}

Test(fsm, rename_moves_a_dir_and_updates_dotdot_and_links)
{
    int64_t a = do_mkdir(FSM_ROOT_INO, "a");
    int64_t b = do_mkdir(FSM_ROOT_INO, "b");
    int64_t c = do_mkdir((uint64_t)a, "c");
    cr_assert_eq(attr_of((uint64_t)a).nlink, 3);
    cr_assert_eq(do_rename((uint64_t)a, "c", (uint64_t)b, "c2", 0), 0);
    int64_t t = now_ns;
    cr_assert_eq(attr_of((uint64_t)a).nlink, 2);
    cr_assert_eq(attr_of((uint64_t)b).nlink, 3);
    cr_assert_eq(lookup_ok((uint64_t)c, "..").ino, (uint64_t)b);
    cr_assert_eq(attr_of((uint64_t)c).ctime_ns, t);
    cr_assert_eq(attr_of((uint64_t)a).mtime_ns, t);
    cr_assert_eq(attr_of((uint64_t)b).ctime_ns, t);
    /* Within one directory nothing about links changes. */
    cr_assert_eq(do_rename((uint64_t)b, "c2", (uint64_t)b, "c3", 0), 0);
    cr_assert_eq(attr_of((uint64_t)b).nlink, 3);
    cr_assert_eq(attr_of((uint64_t)b).size, 1);
}

/* ---- setattr ---- */

Test(fsm, setattr_mode_keeps_the_type_and_sets_ctime)
{
    int64_t f = do_create(FSM_ROOT_INO, "f");
    struct fsm_attr a = {.mode = S_IFDIR | 0600};
    cr_assert_eq(do_setattr((uint64_t)f, FSM_SET_MODE, &a), 0);
    struct fsm_attr got = attr_of((uint64_t)f);
    cr_assert_eq(got.mode, S_IFREG | 0600);
    cr_assert_eq(got.ctime_ns, now_ns);
    cr_assert_eq(changes.n_inodes, 1);
    cr_assert_eq(changes.inodes[0], (uint64_t)f);
}

Test(fsm, setattr_sets_times_explicitly_or_to_now)
{
    int64_t f = do_create(FSM_ROOT_INO, "f");
    struct fsm_attr a = {.atime_ns = 11, .mtime_ns = 22, .ctime_ns = 33};
    cr_assert_eq(do_setattr((uint64_t)f, FSM_SET_ATIME | FSM_SET_MTIME, &a), 0);
    struct fsm_attr got = attr_of((uint64_t)f);
    cr_assert_eq(got.atime_ns, 11);
    cr_assert_eq(got.mtime_ns, 22);
    cr_assert_eq(got.ctime_ns, now_ns);
    cr_assert_eq(do_setattr((uint64_t)f, FSM_SET_ATIME_NOW | FSM_SET_MTIME_NOW | FSM_SET_CTIME, &a),
                 0);
    got = attr_of((uint64_t)f);
    cr_assert_eq(got.atime_ns, now_ns);
    cr_assert_eq(got.mtime_ns, now_ns);
    cr_assert_eq(got.ctime_ns, 33);
}

Test(fsm, setattr_of_unknown_bits_or_missing_inode_fails)
{
    int64_t f = do_create(FSM_ROOT_INO, "f");
    struct fsm_attr a = {0};
    cr_assert_eq(do_setattr((uint64_t)f, 1u << 30, &a), -EINVAL);
    cr_assert_eq(do_setattr(999, FSM_SET_MODE, &a), -ENOENT);
}

static int64_t do_write_setattr(uint64_t ino, uint64_t off, const char *p, uint32_t set,
                                const struct fsm_attr *a)
{
    struct fsm_op op = {.type = FSM_OP_WRITE, .ino = ino, .offset = off,
                        .data = (const uint8_t *)p, .data_len = (uint32_t)strlen(p),
                        .flags = FSM_WRITE_SETATTR, .then_set = set, .attr = *a};
    return apply(&op);
}

Test(fsm, a_write_carrying_a_setattr_applies_the_bytes_then_the_attributes)
{
    int64_t f = do_create(FSM_ROOT_INO, "f");
    struct fsm_attr a = {.mode = 0640, .mtime_ns = 22};
    int64_t r = do_write_setattr((uint64_t)f, 3, "abc", FSM_SET_MTIME | FSM_SET_MODE, &a);
    cr_assert_eq(r, 0, "both parts succeed: %lld", (long long)r);
    struct fsm_attr got = attr_of((uint64_t)f);
    cr_assert_eq(got.size, 6);
    cr_assert_eq(got.mode, S_IFREG | 0640);
    cr_assert_eq(got.mtime_ns, 22, "the setattr's mtime, not the write's");
    cr_assert_eq(got.ctime_ns, now_ns);
    cr_assert_eq(changes.n_inodes, 1);
    cr_assert_eq(changes.inodes[0], (uint64_t)f);
    uint8_t buf[6];
    read_exact((uint64_t)f, 0, 6, buf);
    cr_assert_eq(memcmp(buf, "\0\0\0abc", 6), 0);
    /* A truncate carried after the bytes cuts them. */
    a.size = 4;
    cr_assert_eq(do_write_setattr((uint64_t)f, 6, "def", FSM_SET_SIZE, &a), 0);
    cr_assert_eq(attr_of((uint64_t)f).size, 4);
}

Test(fsm, a_carried_setattr_is_applied_even_when_its_write_fails_and_each_result_is_kept)
{
    int64_t f = do_create(FSM_ROOT_INO, "f");
    struct fsm_attr a = {.mtime_ns = 22};
    int64_t r = do_write_setattr((uint64_t)f, FSM_FILE_SIZE_MAX, "abc", FSM_SET_MTIME, &a);
    cr_assert_eq(fsm_carried_write_rc(r), -EFBIG);
    cr_assert_eq(fsm_carried_setattr_rc(r), 0);
    cr_assert_eq(attr_of((uint64_t)f).size, 0);
    cr_assert_eq(attr_of((uint64_t)f).mtime_ns, 22);
    a.size = FSM_FILE_SIZE_MAX + 1;
    r = do_write_setattr((uint64_t)f, 0, "abc", FSM_SET_SIZE, &a);
    cr_assert_eq(fsm_carried_write_rc(r), 0);
    cr_assert_eq(fsm_carried_setattr_rc(r), -EFBIG);
    cr_assert_eq(attr_of((uint64_t)f).size, 3);
    r = do_write_setattr(999, 0, "abc", FSM_SET_MTIME, &a);
    cr_assert_eq(fsm_carried_write_rc(r), -ENOENT);
    cr_assert_eq(fsm_carried_setattr_rc(r), -ENOENT);
    cr_assert_eq(changes.n_inodes, 0);
    cr_assert_eq(fsm_carried_write_rc(-EBADMSG), -EBADMSG);
    cr_assert_eq(fsm_carried_setattr_rc(-EBADMSG), -EBADMSG);
}

/* Appends the FSM_WRITE_BLOCKS entry of one block to b: encoded by the
 * store as a proposer does, or a hole (NULL). */
static void put_block_entry(struct buf *b, const uint8_t *block)
{
    struct store_name name = STORE_NAME_NONE;
    size_t fmax = store_file_max(BS), len = 0;
    uint8_t *file = malloc(fmax);
    if (block)
        cr_assert_eq(store_encode(st, block, BS, &name, file, fmax, &len), 0);
    buf_put(b, name.b, STORE_NAME_LEN);
    buf_put_u32(b, (uint32_t)len);
    if (len)
        buf_put(b, file, len);
    free(file);
}

Test(fsm, an_encoded_blocks_write_carries_a_setattr_too)
{
    int64_t f = do_create(FSM_ROOT_INO, "f");
    uint8_t *block = malloc(BS), *got = malloc(2 * BS);
    for (uint32_t i = 0; i < BS; i++)
        block[i] = (uint8_t)(i * 7 + 1);
    struct buf b;
    buf_init(&b);
    put_block_entry(&b, NULL);
    put_block_entry(&b, block);
    struct fsm_op op = {.type = FSM_OP_WRITE, .ino = (uint64_t)f, .offset = BS,
                        .data = b.data, .data_len = (uint32_t)b.len,
                        .flags = FSM_WRITE_BLOCKS | FSM_WRITE_SETATTR,
                        .then_set = FSM_SET_MTIME | FSM_SET_MODE,
                        .attr = {.mode = 0604, .mtime_ns = 33}};
    cr_assert_eq(apply(&op), 0);
    struct fsm_attr a = attr_of((uint64_t)f);
    cr_assert_eq(a.size, 3 * BS);
    cr_assert_eq(a.mode, S_IFREG | 0604);
    cr_assert_eq(a.mtime_ns, 33);
    read_exact((uint64_t)f, BS, 2 * BS, got);
    cr_assert(all_zero(got, BS), "the hole entry reads as zeros");
    cr_assert_eq(memcmp(got + BS, block, BS), 0);
    buf_deinit(&b);
    free(block);
    free(got);
}

Test(fsm, a_carried_setattr_must_have_a_mask_of_known_bits_and_no_append)
{
    struct fsm_op op = {.type = FSM_OP_WRITE, .ino = 2, .data = (const uint8_t *)"x",
                        .data_len = 1, .flags = FSM_WRITE_SETATTR};
    struct buf b;
    buf_init(&b);
    cr_assert_eq(fsm_op_encode(&op, &b), -EINVAL, "empty mask");
    op.then_set = 1u << 30;
    cr_assert_eq(fsm_op_encode(&op, &b), -EINVAL, "unknown bit");
    op.then_set = FSM_SET_MODE;
    op.flags |= FSM_WRITE_APPEND;
    cr_assert_eq(fsm_op_encode(&op, &b), -EINVAL, "append");
    cr_assert_eq(b.len, 0);
    buf_deinit(&b);
}

Test(fsm, truncate_of_a_directory_is_eisdir_and_of_a_huge_size_efbig)
{
    int64_t d = do_mkdir(FSM_ROOT_INO, "d");
    cr_assert_eq(do_truncate((uint64_t)d, 0), -EISDIR);
    int64_t l = do_symlink(FSM_ROOT_INO, "l", "x");
    cr_assert_eq(do_truncate((uint64_t)l, 0), -EINVAL);
    int64_t f = do_create(FSM_ROOT_INO, "f");
    cr_assert_eq(do_truncate((uint64_t)f, FSM_FILE_SIZE_MAX + 1), -EFBIG);
    cr_assert_eq(do_truncate((uint64_t)f, FSM_FILE_SIZE_MAX), 0);
}

Test(fsm, chown_clears_suid_and_sgid_on_files)
{
    int64_t f = do_create(FSM_ROOT_INO, "f");
    struct fsm_attr a = {.mode = 06755};
    do_setattr((uint64_t)f, FSM_SET_MODE, &a);
    a.uid = 0;
    cr_assert_eq(do_setattr((uint64_t)f, FSM_SET_UID, &a), 0);
    struct fsm_attr got = attr_of((uint64_t)f);
    cr_assert_eq(got.uid, 0);
    cr_assert_eq(got.mode, S_IFREG | 0755);
    /* S_ISGID without group-exec is left alone, as Linux does. */
    a.mode = 06745;
    do_setattr((uint64_t)f, FSM_SET_MODE, &a);
    a.gid = 7;
    cr_assert_eq(do_setattr((uint64_t)f, FSM_SET_GID, &a), 0);
    got = attr_of((uint64_t)f);
    cr_assert_eq(got.gid, 7);
    cr_assert_eq(got.mode, S_IFREG | 02745);
    /* Directories keep theirs. */
    int64_t d = do_mkdir(FSM_ROOT_INO, "d");
    a.mode = 02755;
    do_setattr((uint64_t)d, FSM_SET_MODE, &a);
    do_setattr((uint64_t)d, FSM_SET_GID, &a);
    cr_assert_eq(attr_of((uint64_t)d).mode, S_IFDIR | 02755);
}

Test(fsm, write_by_non_root_clears_suid_and_sgid)
{
    int64_t f = do_create(FSM_ROOT_INO, "f");
    struct fsm_attr a = {.mode = 06755};
    do_setattr((uint64_t)f, FSM_SET_MODE, &a);
    cr_assert_eq(do_write((uint64_t)f, 0, "x", 1), 1);
    cr_assert_eq(attr_of((uint64_t)f).mode, S_IFREG | 0755);
    /* Root's writes keep them. */
    do_setattr((uint64_t)f, FSM_SET_MODE, &a);
    cur_uid = 0;
    cr_assert_eq(do_write((uint64_t)f, 0, "y", 1), 1);
    cr_assert_eq(attr_of((uint64_t)f).mode, S_IFREG | 06755);
    /* Without group-exec, S_ISGID stays. */
    cur_uid = UID;
    a.mode = 06744;
    do_setattr((uint64_t)f, FSM_SET_MODE, &a);
    do_write((uint64_t)f, 0, "z", 1);
    cr_assert_eq(attr_of((uint64_t)f).mode, S_IFREG | 02744);
}

/* ---- data ---- */

Test(fsm, write_then_read_back_and_times_and_size)
{
    int64_t f = do_create(FSM_ROOT_INO, "f");
    cr_assert_eq(do_write((uint64_t)f, 0, "hello", 5), 5);
    struct fsm_attr a = attr_of((uint64_t)f);
    cr_assert_eq(a.size, 5);
    cr_assert_eq(a.mtime_ns, now_ns);
    cr_assert_eq(a.ctime_ns, now_ns);
    cr_assert_eq(a.blocks, 1);
    char buf[16];
    size_t got = 0;
    cr_assert_eq(fsm_read(fs, (uint64_t)f, 0, sizeof buf, buf, &got), 0);
    cr_assert_eq(got, 5);
    cr_assert_eq(memcmp(buf, "hello", 5), 0);
    cr_assert_eq(fsm_read(fs, (uint64_t)f, 5, sizeof buf, buf, &got), 0);
    cr_assert_eq(got, 0, "at EOF");
    cr_assert_eq(fsm_read(fs, (uint64_t)f, 1ull << 40, sizeof buf, buf, &got), 0);
    cr_assert_eq(got, 0);
    struct fsm_statfs s;
    fsm_statfs(fs, &s);
    cr_assert_eq(s.bytes_stored, 5);
    cr_assert_eq(s.inodes, 2);
}

Test(fsm, write_to_a_directory_is_eisdir)
{
    int64_t d = do_mkdir(FSM_ROOT_INO, "d");
    cr_assert_eq(do_write((uint64_t)d, 0, "x", 1), -EISDIR);
    char b[4];
    size_t got;
    cr_assert_eq(fsm_read(fs, (uint64_t)d, 0, 4, b, &got), -EISDIR);
    cr_assert_eq(do_write(999, 0, "x", 1), -ENOENT);
}

Test(fsm, write_past_the_maximum_size_is_efbig)
{
    int64_t f = do_create(FSM_ROOT_INO, "f");
    cr_assert_eq(do_write((uint64_t)f, FSM_FILE_SIZE_MAX, "x", 1), -EFBIG);
    cr_assert_eq(do_write((uint64_t)f, FSM_FILE_SIZE_MAX - 1, "x", 1), 1);
}

Test(fsm, all_zero_writes_store_no_block)
{
    int64_t f = do_create(FSM_ROOT_INO, "f");
    static uint8_t zeros[3 * BS];
    cr_assert_eq(do_write((uint64_t)f, 0, zeros, sizeof zeros), (int64_t)sizeof zeros);
    struct fsm_attr a = attr_of((uint64_t)f);
    cr_assert_eq(a.size, sizeof zeros);
    cr_assert_eq(a.blocks, 0);
    /* Overwriting data with zeros turns the block back into a hole. */
    cr_assert_eq(do_write((uint64_t)f, 10, "abc", 3), 3);
    cr_assert_gt(attr_of((uint64_t)f).blocks, 0);
    cr_assert_eq(do_write((uint64_t)f, 10, zeros, 3), 3);
    cr_assert_eq(attr_of((uint64_t)f).blocks, 0);
}

Test(fsm, sparse_file_of_8_gib_holds_two_blocks)
{
    int64_t f = do_create(FSM_ROOT_INO, "f");
    uint64_t big = 8ull << 30;
    cr_assert_eq(do_truncate((uint64_t)f, big), 0);
    cr_assert_eq(do_write((uint64_t)f, 0, "first", 5), 5);
    cr_assert_eq(do_write((uint64_t)f, big - 4, "last", 4), 4);
    struct fsm_attr a = attr_of((uint64_t)f);
    cr_assert_eq(a.size, big);
    cr_assert_leq(a.blocks, 2 * BS / 512, "blocks: %llu", (unsigned long long)a.blocks);
    uint8_t *buf = malloc(3 * BS);
    read_exact((uint64_t)f, 5ull << 30, 3 * BS, buf);
    cr_assert(all_zero(buf, 3 * BS), "a hole reads as zeros");
    read_exact((uint64_t)f, big - 4, 4, buf);
    cr_assert_eq(memcmp(buf, "last", 4), 0);
    read_exact((uint64_t)f, big - BS, BS, buf);
    cr_assert(all_zero(buf, BS - 4));
    cr_assert_eq(memcmp(buf + BS - 4, "last", 4), 0);
    /* Across the 4 GiB line. */
    uint64_t g4 = 4ull << 30;
    cr_assert_eq(do_write((uint64_t)f, g4 - 3, "straddle", 8), 8);
    read_exact((uint64_t)f, g4 - 3, 8, buf);
    cr_assert_eq(memcmp(buf, "straddle", 8), 0);
    free(buf);
}

Test(fsm, random_writes_and_truncates_match_a_shadow_buffer)
{
    enum { MAXSZ = 5 * BS + 777, ROUNDS = 300 };
    uint8_t *shadow = calloc(1, MAXSZ), *buf = malloc(MAXSZ), *data = malloc(MAXSZ);
    uint64_t size = 0;
    int64_t f = do_create(FSM_ROOT_INO, "f");
    struct prng r;
    prng_seed(&r, 42);
    for (int i = 0; i < ROUNDS; i++) {
        uint64_t kind = prng_below(&r, 10);
        if (kind < 7) {
            uint64_t off = prng_below(&r, MAXSZ - 1);
            uint64_t n = 1 + prng_below(&r, MIN((uint64_t)MAXSZ - off, 2 * BS + 100));
            if (prng_chance(&r, 200000))
                memset(data, 0, n);
            else
                prng_fill(&r, data, n);
            cr_assert_eq(do_write((uint64_t)f, off, data, n), (int64_t)n);
            memcpy(shadow + off, data, n);
            size = MAX(size, off + n);
        } else {
            uint64_t ns = prng_below(&r, MAXSZ);
            cr_assert_eq(do_truncate((uint64_t)f, ns), 0);
            if (ns > size)
                memset(shadow + size, 0, ns - size);
            else
                memset(shadow + ns, 0, size - ns);
            size = ns;
        }
        cr_assert_eq(attr_of((uint64_t)f).size, size, "round %d", i);
        if (i % 10 == 0 || i == ROUNDS - 1) {
            read_exact((uint64_t)f, 0, size, buf);
            cr_assert_eq(memcmp(buf, shadow, size), 0, "round %d", i);
            /* And an unaligned window. */
            if (size > 10) {
                uint64_t o = prng_below(&r, size - 1);
                uint64_t n = 1 + prng_below(&r, size - o);
                read_exact((uint64_t)f, o, n, buf);
                cr_assert_eq(memcmp(buf, shadow + o, n), 0, "round %d", i);
            }
        }
    }
    free(shadow);
    free(buf);
    free(data);
}

Test(fsm, truncate_down_then_up_reads_zeros)
{
    int64_t f = do_create(FSM_ROOT_INO, "f");
    uint8_t *data = malloc(3 * BS), *buf = malloc(3 * BS);
    memset(data, 0xab, 3 * BS);
    do_write((uint64_t)f, 0, data, 3 * BS);
    cr_assert_eq(attr_of((uint64_t)f).blocks, 3 * BS / 512);
    cr_assert_eq(do_truncate((uint64_t)f, BS + 100), 0);
    cr_assert_eq(attr_of((uint64_t)f).mtime_ns, now_ns);
    cr_assert_eq(attr_of((uint64_t)f).blocks, (BS + 100 + 511) / 512);
    cr_assert_eq(do_truncate((uint64_t)f, 3 * BS), 0);
    read_exact((uint64_t)f, 0, 3 * BS, buf);
    for (size_t i = 0; i < 3 * BS; i++)
        cr_assert_eq(buf[i], i < BS + 100 ? 0xab : 0, "byte %zu", i);
    free(data);
    free(buf);
}

Test(fsm, append_writes_land_at_the_size_at_apply)
{
    int64_t f = do_create(FSM_ROOT_INO, "log");
    /* Two hosts both saw size 0 and both append: neither overwrites. */
    struct fsm_op a = {.type = FSM_OP_WRITE, .ino = (uint64_t)f, .offset = 0,
                       .data = (const uint8_t *)"AAAA", .data_len = 4, .flags = FSM_WRITE_APPEND};
    struct fsm_op b = a;
    b.data = (const uint8_t *)"BBB";
    b.data_len = 3;
    b.node = 2;
    cr_assert_eq(apply(&a), 4);
    cr_assert_eq(apply(&b), 3);
    char buf[8];
    read_exact((uint64_t)f, 0, 7, buf);
    cr_assert_eq(memcmp(buf, "AAAABBB", 7), 0);
    struct fsm_op c = a;
    c.flags = 1u << 5;
    cr_assert_eq(apply(&c), -EINVAL);
}

/* ---- fallocate ---- */

Test(fsm, fallocate_extends_the_size_without_blocks)
{
    int64_t f = do_create(FSM_ROOT_INO, "f");
    cr_assert_eq(do_fallocate((uint64_t)f, 0, 100, 10 * BS), 0);
    struct fsm_attr a = attr_of((uint64_t)f);
    cr_assert_eq(a.size, 100 + 10 * BS);
    cr_assert_eq(a.blocks, 0);
    cr_assert_eq(do_fallocate((uint64_t)f, 0, 0, 10), 0);
    cr_assert_eq(attr_of((uint64_t)f).size, 100 + 10 * BS, "never shrinks");
    cr_assert_eq(do_fallocate((uint64_t)f, FALLOC_FL_KEEP_SIZE, 0, 100 * BS), 0);
    cr_assert_eq(attr_of((uint64_t)f).size, 100 + 10 * BS);
    cr_assert_eq(do_fallocate((uint64_t)f, FALLOC_FL_ZERO_RANGE, 0, 10), -EOPNOTSUPP);
    cr_assert_eq(do_fallocate((uint64_t)f, FALLOC_FL_PUNCH_HOLE, 0, 10), -EOPNOTSUPP);
    cr_assert_eq(do_fallocate((uint64_t)f, 0, 0, 0), -EINVAL);
}

Test(fsm, punch_hole_zeroes_the_range_and_frees_whole_blocks)
{
    int64_t f = do_create(FSM_ROOT_INO, "f");
    uint8_t *data = malloc(4 * BS), *buf = malloc(4 * BS);
    memset(data, 0x5a, 4 * BS);
    do_write((uint64_t)f, 0, data, 4 * BS);
    uint64_t off = BS / 2, len = 2 * BS;
    cr_assert_eq(do_fallocate((uint64_t)f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len),
                 0);
    struct fsm_attr a = attr_of((uint64_t)f);
    cr_assert_eq(a.size, 4 * BS);
    /* Block 1 is gone; blocks 0 and 2 are half data. */
    cr_assert_eq(a.blocks, 3 * BS / 512);
    read_exact((uint64_t)f, 0, 4 * BS, buf);
    for (size_t i = 0; i < 4 * BS; i++)
        cr_assert_eq(buf[i], (i >= off && i < off + len) ? 0 : 0x5a, "byte %zu", i);
    /* Punching past EOF leaves the size alone. */
    cr_assert_eq(do_fallocate((uint64_t)f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 3 * BS,
                              100 * BS), 0);
    cr_assert_eq(attr_of((uint64_t)f).size, 4 * BS);
    cr_assert_eq(attr_of((uint64_t)f).blocks, 2 * BS / 512);
    free(data);
    free(buf);
}

/* ---- xattrs ---- */

Test(fsm, xattrs_set_get_list_and_remove)
{
    int64_t f = do_create(FSM_ROOT_INO, "f");
    cr_assert_eq(do_setxattr((uint64_t)f, "user.b", "two", 0), 0);
    cr_assert_eq(do_setxattr((uint64_t)f, "user.a", "one", 0), 0);
    cr_assert_eq(attr_of((uint64_t)f).ctime_ns, now_ns);
    char buf[64];
    size_t n = 0;
    cr_assert_eq(fsm_getxattr(fs, (uint64_t)f, "user.a", buf, 0, &n), 0);
    cr_assert_eq(n, 3, "cap 0 asks the size");
    cr_assert_eq(fsm_getxattr(fs, (uint64_t)f, "user.a", buf, 2, &n), -ERANGE);
    cr_assert_eq(fsm_getxattr(fs, (uint64_t)f, "user.a", buf, sizeof buf, &n), 0);
    cr_assert_eq(memcmp(buf, "one", 3), 0);
    cr_assert_eq(fsm_getxattr(fs, (uint64_t)f, "user.c", buf, sizeof buf, &n), -ENODATA);
    cr_assert_eq(fsm_listxattr(fs, (uint64_t)f, buf, 0, &n), 0);
    cr_assert_eq(n, 14);
    cr_assert_eq(fsm_listxattr(fs, (uint64_t)f, buf, 13, &n), -ERANGE);
    cr_assert_eq(fsm_listxattr(fs, (uint64_t)f, buf, sizeof buf, &n), 0);
    cr_assert_eq(memcmp(buf, "user.a\0user.b\0", 14), 0, "sorted, NUL-separated");
    cr_assert_eq(do_setxattr((uint64_t)f, "user.a", "uno", 0), 0, "no flag replaces");
    cr_assert_eq(fsm_getxattr(fs, (uint64_t)f, "user.a", buf, sizeof buf, &n), 0);
    cr_assert_eq(memcmp(buf, "uno", 3), 0);
    cr_assert_eq(do_removexattr((uint64_t)f, "user.a"), 0);
    cr_assert_eq(do_removexattr((uint64_t)f, "user.a"), -ENODATA);
    cr_assert_eq(fsm_listxattr(fs, (uint64_t)f, buf, sizeof buf, &n), 0);
    cr_assert_eq(n, 7);
    cr_assert_eq(do_setxattr((uint64_t)f, "user.e", "", 0), 0, "empty values are values");
    cr_assert_eq(fsm_getxattr(fs, (uint64_t)f, "user.e", buf, sizeof buf, &n), 0);
    cr_assert_eq(n, 0);
}

Test(fsm, setxattr_create_of_existing_is_eexist)
{
    int64_t f = do_create(FSM_ROOT_INO, "f");
    cr_assert_eq(do_setxattr((uint64_t)f, "user.a", "1", XATTR_CREATE), 0);
    cr_assert_eq(do_setxattr((uint64_t)f, "user.a", "2", XATTR_CREATE), -EEXIST);
}

Test(fsm, setxattr_replace_of_missing_is_enodata)
{
    int64_t f = do_create(FSM_ROOT_INO, "f");
    cr_assert_eq(do_setxattr((uint64_t)f, "user.a", "1", XATTR_REPLACE), -ENODATA);
    do_setxattr((uint64_t)f, "user.a", "1", 0);
    cr_assert_eq(do_setxattr((uint64_t)f, "user.a", "2", XATTR_REPLACE), 0);
}

Test(fsm, xattr_values_over_the_limit_are_refused_by_the_codec)
{
    static uint8_t big[FSM_XATTR_VALUE_MAX + 1];
    struct buf b;
    buf_init(&b);
    struct fsm_op op = {.type = FSM_OP_SETXATTR, .ino = 1, .name = "user.x", .name_len = 6,
                        .data = big, .data_len = sizeof big};
    cr_assert_eq(fsm_op_encode(&op, &b), -EINVAL);
    op.data_len = FSM_XATTR_VALUE_MAX;
    cr_assert_eq(fsm_op_encode(&op, &b), 0);
    cr_assert_eq(fsm_apply(fs, b.data, b.len, NULL), 0);
    buf_deinit(&b);
}

/* ---- directories ---- */

struct collect {
    uint64_t *cookies;
    char (*names)[32];
    size_t n, cap, stop_after;
    struct fsm_attr *attrs; /* NULL: not kept */
};

static int collect_fn(void *ctx, const char *name, const struct fsm_attr *a, uint64_t cookie)
{
    struct collect *c = ctx;
    if (c->stop_after && c->n >= c->stop_after)
        return 1;
    cr_assert_lt(c->n, c->cap);
    c->cookies[c->n] = cookie;
    if (c->attrs)
        c->attrs[c->n] = *a;
    snprintf(c->names[c->n], sizeof c->names[0], "%s", name);
    c->n++;
    return 0;
}

Test(fsm, readdir_lists_dot_dotdot_and_entries_in_creation_order)
{
    int64_t d = do_mkdir(FSM_ROOT_INO, "d");
    do_create((uint64_t)d, "z");
    do_mkdir((uint64_t)d, "a");
    do_symlink((uint64_t)d, "m", "t");
    uint64_t cookies[8];
    char names[8][32];
    struct fsm_attr attrs[8];
    struct collect c = {cookies, names, 0, 8, 0, attrs};
    cr_assert_eq(fsm_readdir(fs, (uint64_t)d, 0, collect_fn, &c), 0);
    cr_assert_eq(c.n, 5);
    const char *want[] = {".", "..", "z", "a", "m"};
    for (int i = 0; i < 5; i++)
        cr_assert_str_eq(names[i], want[i]);
    cr_assert_eq(cookies[0], 1);
    cr_assert_eq(cookies[1], 2);
    /* Each entry comes with its inode's attributes, as a lookup gives them
     * (what READDIRPLUS hands the kernel). */
    cr_assert_eq(attrs[0].ino, (uint64_t)d);
    cr_assert_eq(attrs[1].ino, FSM_ROOT_INO);
    for (int i = 0; i < 5; i++) {
        struct fsm_attr want_attr = attr_of(attrs[i].ino);
        cr_assert_eq(memcmp(&attrs[i], &want_attr, sizeof want_attr), 0, "entry %s", names[i]);
    }
    cr_assert(S_ISLNK(attrs[4].mode) && attrs[4].size == 1);
    c.n = 0;
    c.attrs = NULL;
    cr_assert_eq(fsm_readdir(fs, (uint64_t)d, cookies[2], collect_fn, &c), 0);
    cr_assert_eq(c.n, 2);
    cr_assert_str_eq(names[0], "a");
    int64_t f = do_create(FSM_ROOT_INO, "f");
    cr_assert_eq(fsm_readdir(fs, (uint64_t)f, 0, collect_fn, &c), -ENOTDIR);
    cr_assert_eq(fsm_readdir(fs, 999, 0, collect_fn, &c), -ENOENT);
}

Test(fsm, hundred_thousand_entries_in_one_directory)
{
    enum { N = 100000 };
    int64_t d = do_mkdir(FSM_ROOT_INO, "big");
    char name[32];
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "file-%06d", i);
        cr_assert_gt(do_create((uint64_t)d, name), 0);
    }
    cr_assert_eq(attr_of((uint64_t)d).size, N);
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "file-%06d", i);
        struct fsm_attr a;
        cr_assert_eq(fsm_lookup(fs, (uint64_t)d, name, &a), 0);
    }
    cr_assert_eq(lookup_rc((uint64_t)d, "file-x"), -ENOENT);
    uint64_t *cookies = malloc((N + 2) * sizeof *cookies);
    char(*names)[32] = malloc((size_t)(N + 2) * 32);
    struct collect c = {cookies, names, 0, N + 2, 0};
    cr_assert_eq(fsm_readdir(fs, (uint64_t)d, 0, collect_fn, &c), 0);
    cr_assert_eq(c.n, N + 2);
    for (size_t i = 1; i < c.n; i++)
        cr_assert_gt(cookies[i], cookies[i - 1]);
    /* And they all go away. */
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "file-%06d", i);
        cr_assert_eq(do_remove(FSM_OP_UNLINK, (uint64_t)d, name), 0);
    }
    cr_assert_eq(attr_of((uint64_t)d).size, 0);
    cr_assert_eq(do_remove(FSM_OP_RMDIR, FSM_ROOT_INO, "big"), 0);
    free(cookies);
    free(names);
}

Test(fsm, readdir_cookies_stay_stable_while_entries_are_deleted)
{
    enum { N = 2000, CHUNK = 97 };
    int64_t d = do_mkdir(FSM_ROOT_INO, "d");
    char name[32];
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "e%d", i);
        do_create((uint64_t)d, name);
    }
    static bool deleted[N], seen[N];
    uint64_t cookies[CHUNK];
    char names[CHUNK][32];
    uint64_t cookie = 0;
    struct prng r;
    prng_seed(&r, 7);
    for (int round = 0; round < 1000; round++) {
        struct collect c = {cookies, names, 0, CHUNK, CHUNK};
        cr_assert_eq(fsm_readdir(fs, (uint64_t)d, cookie, collect_fn, &c), 0);
        if (c.n == 0)
            break;
        for (size_t i = 0; i < c.n; i++) {
            if (names[i][0] == '.')
                continue;
            int k = atoi(names[i] + 1);
            cr_assert(!seen[k], "entry %d listed twice", k);
            cr_assert(!deleted[k], "deleted entry %d listed", k);
            seen[k] = true;
        }
        cookie = cookies[c.n - 1];
        /* Delete some entries, seen and unseen, between two calls. */
        for (int j = 0; j < 30; j++) {
            int k = (int)prng_below(&r, N);
            if (deleted[k])
                continue;
            snprintf(name, sizeof name, "e%d", k);
            cr_assert_eq(do_remove(FSM_OP_UNLINK, (uint64_t)d, name), 0);
            deleted[k] = true;
        }
    }
    for (int k = 0; k < N; k++)
        cr_assert(seen[k] || deleted[k], "entry %d never listed", k);
}

/* ---- orphans ---- */

Test(fsm, orphan_is_kept_until_every_node_releases_it)
{
    int64_t f = do_create(FSM_ROOT_INO, "f");
    uint8_t *data = malloc(2 * BS);
    memset(data, 'q', BS);
    memset(data + BS, 'r', BS);
    do_write((uint64_t)f, 0, data, 2 * BS);
    struct store_name n0, n1;
    store_name_of(data, BS, &n0);
    store_name_of(data + BS, BS, &n1);
    cr_assert_eq(store_refcount(st, &n0), 1);
    cr_assert_eq(store_refcount(st, &n1), 1);
    cr_assert_eq(do_remove(FSM_OP_UNLINK, FSM_ROOT_INO, "f"), 0);
    uint64_t held[4];
    for (uint32_t node = 1; node <= NODES; node++) {
        cr_assert_eq(fsm_orphans_held(fs, node, held, 4), 1);
        cr_assert_eq(held[0], (uint64_t)f);
    }
    /* An open orphan still reads and writes. */
    cr_assert_eq(attr_of((uint64_t)f).nlink, 0);
    uint8_t b[4];
    read_exact((uint64_t)f, BS, 4, b);
    cr_assert_eq(b[0], 'r');
    cr_assert_eq(do_write((uint64_t)f, 0, "xyz", 3), 3);
    cr_assert_eq(store_refcount(st, &n0), 0, "rewritten block 0 let go of the old one");
    uint64_t ino = (uint64_t)f;
    cr_assert_eq(do_release(1, &ino, 1), 0);
    cr_assert_eq(fsm_orphans_held(fs, 1, held, 4), 0);
    cr_assert_eq(fsm_orphans_held(fs, 2, held, 4), 1);
    cr_assert_eq(do_release(1, &ino, 1), 0, "a duplicate release is harmless");
    cr_assert_eq(do_release(2, &ino, 1), 0);
    cr_assert_eq(attr_of((uint64_t)f).nlink, 0);
    cr_assert_eq(do_release(3, &ino, 1), 0);
    struct fsm_attr a;
    cr_assert_eq(fsm_getattr(fs, ino, &a), -ENOENT, "freed");
    cr_assert_eq(store_refcount(st, &n1), 0);
    struct fsm_statfs s;
    fsm_statfs(fs, &s);
    cr_assert_eq(s.bytes_stored, 0);
    cr_assert_eq(s.inodes, 1);
    cr_assert_eq(do_release(0, &ino, 1), -EINVAL);
    cr_assert_eq(do_release(NODES + 1, &ino, 1), -EINVAL);
    /* Numbers are never reused. */
    cr_assert_eq(do_create(FSM_ROOT_INO, "g"), (int64_t)ino + 1);
    free(data);
}

Test(fsm, orphans_held_lists_in_inode_order_and_counts_past_cap)
{
    for (int i = 0; i < 5; i++) {
        char name[8];
        snprintf(name, sizeof name, "f%d", i);
        do_create(FSM_ROOT_INO, name);
    }
    do_remove(FSM_OP_UNLINK, FSM_ROOT_INO, "f3");
    do_remove(FSM_OP_UNLINK, FSM_ROOT_INO, "f0");
    do_remove(FSM_OP_UNLINK, FSM_ROOT_INO, "f4");
    uint64_t held[2];
    cr_assert_eq(fsm_orphans_held(fs, 1, held, 2), 3);
    cr_assert_eq(held[0], 2);
    cr_assert_eq(held[1], 5);
}

/* ---- digest, codec, changes ---- */

static void feed(struct fsm *f, int variant)
{
    struct fsm_op op = {.type = FSM_OP_MKDIR, .parent = 1, .name = "d", .name_len = 1,
                        .mode = 0755};
    apply_to(f, &op);
    struct fsm_op c = {.type = FSM_OP_MKNOD, .parent = 2, .name = "f", .name_len = 1,
                       .mode = S_IFREG | 0644};
    apply_to(f, &c);
    do_write_to(f, 3, 100, "payload", 7, 0);
    struct fsm_op x = {.type = FSM_OP_SETXATTR, .ino = 3, .name = "user.k", .name_len = 6,
                       .data = (const uint8_t *)"v", .data_len = 1};
    apply_to(f, &x);
    struct fsm_op rn = {.type = FSM_OP_RENAME, .parent = 2, .name = "f", .name_len = 1,
                        .new_parent = 1, .new_name = variant ? "h" : "g", .new_name_len = 1};
    apply_to(f, &rn);
}

Test(fsm, digests_match_for_the_same_ops_and_differ_after_a_different_one)
{
    struct fsm *a, *b;
    cr_assert_eq(fsm_new(st, NODES, &a), 0);
    cr_assert_eq(fsm_new(st, NODES, &b), 0);
    cr_assert_eq(fsm_digest(a), fsm_digest(b));
    int64_t saved = now_ns;
    feed(a, 0);
    now_ns = saved;
    feed(b, 0);
    cr_assert_eq(fsm_digest(a), fsm_digest(b));
    now_ns = saved;
    struct fsm *c;
    cr_assert_eq(fsm_new(st, NODES, &c), 0);
    feed(c, 1);
    cr_assert_neq(fsm_digest(a), fsm_digest(c));
    /* One more op on one side only. */
    do_write_to(b, 3, 0, "x", 1, 0);
    cr_assert_neq(fsm_digest(a), fsm_digest(b));
    fsm_free(a);
    fsm_free(b);
    fsm_free(c);
}

Test(fsm, every_op_type_round_trips_through_the_codec)
{
    uint8_t rel[16] = {2};
    struct fsm_op ops[] = {
        {.type = FSM_OP_MKNOD, .parent = 1, .name = "a", .name_len = 1, .mode = 0100644, .rdev = 9},
        {.type = FSM_OP_MKDIR, .parent = 1, .name = "d", .name_len = 1, .mode = 0755},
        {.type = FSM_OP_SYMLINK, .parent = 1, .name = "l", .name_len = 1,
         .data = (const uint8_t *)"t", .data_len = 1},
        {.type = FSM_OP_LINK, .ino = 2, .new_parent = 1, .new_name = "b", .new_name_len = 1},
        {.type = FSM_OP_UNLINK, .parent = 1, .name = "a", .name_len = 1},
        {.type = FSM_OP_RMDIR, .parent = 1, .name = "d", .name_len = 1},
        {.type = FSM_OP_RENAME, .parent = 1, .name = "a", .name_len = 1, .new_parent = 3,
         .new_name = "bb", .new_name_len = 2, .flags = RENAME_EXCHANGE},
        {.type = FSM_OP_SETATTR, .ino = 2, .flags = FSM_SET_SIZE | FSM_SET_MODE,
         .attr = {.mode = 0600, .uid = 5, .gid = 6, .size = 1ull << 40, .atime_ns = -1,
                  .mtime_ns = 2, .ctime_ns = 3}},
        {.type = FSM_OP_WRITE, .ino = 2, .offset = 1ull << 33, .data = (const uint8_t *)"xyz",
         .data_len = 3, .flags = FSM_WRITE_APPEND},
        {.type = FSM_OP_WRITE, .ino = 2, .offset = 7, .data = (const uint8_t *)"xyz",
         .data_len = 3, .flags = FSM_WRITE_SETATTR, .then_set = FSM_SET_MTIME | FSM_SET_UID,
         .attr = {.uid = 5, .mtime_ns = -2, .size = 9}},
        {.type = FSM_OP_FALLOCATE, .ino = 2, .flags = 3, .offset = 5, .length = 6},
        {.type = FSM_OP_SETXATTR, .ino = 2, .name = "user.a/b", .name_len = 8,
         .data = (const uint8_t *)"v", .data_len = 1, .flags = XATTR_CREATE},
        {.type = FSM_OP_REMOVEXATTR, .ino = 2, .name = "user.a", .name_len = 6},
        {.type = FSM_OP_RELEASE, .node = 2, .data = rel, .data_len = 16},
    };
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        struct fsm_op *op = &ops[i];
        op->uid = 77;
        op->gid = 88;
        op->now_ns = -12345;
        op->node = op->node ? op->node : 3;
        struct buf b, b2;
        buf_init(&b);
        buf_init(&b2);
        cr_assert_eq(fsm_op_encode(op, &b), 0, "op %zu", i);
        struct fsm_op d;
        cr_assert_eq(fsm_op_decode(b.data, b.len, &d), 0, "op %zu", i);
        cr_assert_eq(d.type, op->type);
        cr_assert_eq(d.uid, 77);
        cr_assert_eq(d.gid, 88);
        cr_assert_eq(d.now_ns, -12345);
        cr_assert_eq(d.ino, op->ino);
        cr_assert_eq(d.parent, op->parent);
        cr_assert_eq(d.new_parent, op->new_parent);
        cr_assert_eq(d.name_len, op->name_len);
        cr_assert_eq(d.flags, op->flags);
        cr_assert_eq(d.data_len, op->data_len);
        cr_assert_eq(d.attr.size, op->attr.size);
        cr_assert_eq(d.attr.mtime_ns, op->attr.mtime_ns);
        cr_assert_eq(d.then_set, op->then_set);
        cr_assert_eq(fsm_op_encode(&d, &b2), 0);
        cr_assert_eq(b.len, b2.len);
        cr_assert_eq(memcmp(b.data, b2.data, b.len), 0, "op %zu", i);
        /* Every strict prefix and every one-byte extension is refused. */
        for (size_t k = 0; k < b.len; k++)
            cr_assert_eq(fsm_op_decode(b.data, k, &d), -EBADMSG, "op %zu prefix %zu", i, k);
        buf_put_u8(&b, 0);
        cr_assert_eq(fsm_op_decode(b.data, b.len, &d), -EBADMSG);
        buf_deinit(&b);
        buf_deinit(&b2);
    }
}

Test(fsm, decode_refuses_bad_versions_types_and_names)
{
    struct buf b;
    buf_init(&b);
    struct fsm_op op = {.type = FSM_OP_UNLINK, .parent = 1, .name = "abc", .name_len = 3};
    cr_assert_eq(fsm_op_encode(&op, &b), 0);
    struct fsm_op d;
    b.data[0] = 2;
    cr_assert_eq(fsm_op_decode(b.data, b.len, &d), -EBADMSG, "unknown version");
    b.data[0] = 1;
    b.data[1] = 0;
    cr_assert_eq(fsm_op_decode(b.data, b.len, &d), -EBADMSG, "type 0");
    b.data[1] = FSM_OP_TYPE_MAX + 1;
    cr_assert_eq(fsm_op_decode(b.data, b.len, &d), -EBADMSG, "type past the end");
    b.data[1] = FSM_OP_UNLINK;
    b.data[b.len - 2] = '/';
    cr_assert_eq(fsm_op_decode(b.data, b.len, &d), -EBADMSG, "slash in a name");
    b.data[b.len - 2] = '\0';
    cr_assert_eq(fsm_op_decode(b.data, b.len, &d), -EBADMSG, "NUL in a name");
    b.data[b.len - 3] = '.';
    b.data[b.len - 2] = '.';
    b.data[b.len - 1] = '.';
    cr_assert_eq(fsm_op_decode(b.data, b.len, &d), 0, "'...' is a fine name");
    cr_assert_eq(fsm_apply(fs, b.data, 3, NULL), -EBADMSG);
    /* A name length field of 256 with 256 bytes behind it. */
    buf_reset(&b);
    buf_put_u8(&b, 1);
    buf_put_u8(&b, FSM_OP_UNLINK);
    for (int i = 0; i < 3; i++)
        buf_put_u32(&b, 0);
    buf_put_u64(&b, 0);
    buf_put_u64(&b, 1);
    buf_put_u32(&b, 256);
    memset(buf_append_space(&b, 256), 'a', 256);
    cr_assert_eq(fsm_op_decode(b.data, b.len, &d), -EBADMSG);
    /* Data bigger than FSM_DATA_MAX is refused from its length alone. */
    buf_reset(&b);
    buf_put_u8(&b, 1);
    buf_put_u8(&b, FSM_OP_WRITE);
    for (int i = 0; i < 3; i++)
        buf_put_u32(&b, 0);
    buf_put_u64(&b, 0);
    buf_put_u64(&b, 2);
    buf_put_u32(&b, 0);
    buf_put_u64(&b, 0);
    buf_put_u32(&b, FSM_DATA_MAX + 1);
    cr_assert_eq(fsm_op_decode(b.data, b.len, &d), -EBADMSG);
    buf_deinit(&b);
}

Test(fsm, rename_reports_both_entries_as_changed)
{
    int64_t f = do_create(FSM_ROOT_INO, "a");
    int64_t d = do_mkdir(FSM_ROOT_INO, "d");
    do_rename(FSM_ROOT_INO, "a", (uint64_t)d, "b", 0);
    cr_assert_eq(changes.n_entries, 2);
    cr_assert_eq(changes.entries[0].parent, FSM_ROOT_INO);
    cr_assert_str_eq(changes.entries[0].name, "a");
    cr_assert_eq(changes.entries[0].ino, 0);
    cr_assert_eq(changes.entries[1].parent, (uint64_t)d);
    cr_assert_str_eq(changes.entries[1].name, "b");
    cr_assert_eq(changes.entries[1].ino, (uint64_t)f);
    cr_assert_eq(changes.n_inodes, 3);
    cr_assert(!changes.overflow);
}

/* ---- concurrency ---- */

static atomic_bool readers_stop;

static void *reader_main(void *arg)
{
    uint64_t ino = *(uint64_t *)arg;
    uint8_t *buf = malloc(2 * BS);
    unsigned long rounds = 0;
    while (!atomic_load(&readers_stop) || rounds < 10) {
        struct fsm_attr a;
        size_t got = 0;
        if (fsm_getattr(fs, ino, &a) == 0) {
            int rc = fsm_read(fs, ino, 0, 2 * BS, buf, &got);
            if (rc != 0 || got > 2 * BS)
                abort();
            /* A read sees one whole write or another, never a mix. */
            for (size_t i = 1; i < got; i++)
                if (buf[i] != buf[0])
                    abort();
        }
        uint64_t cookies[4];
        char names[4][32];
        struct collect c = {cookies, names, 0, 4, 4};
        fsm_readdir(fs, FSM_ROOT_INO, 0, collect_fn, &c);
        fsm_digest(fs);
        rounds++;
    }
    free(buf);
    return NULL;
}

Test(fsm, reads_run_concurrently_with_apply)
{
    uint64_t ino = (uint64_t)do_create(FSM_ROOT_INO, "f");
    uint8_t *data = malloc(2 * BS);
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, reader_main, &ino), 0);
    for (int i = 0; i < 60; i++) {
        memset(data, 'a' + i % 26, 2 * BS);
        cr_assert_eq(do_write(ino, 0, data, 2 * BS), 2 * BS);
        char name[16];
        snprintf(name, sizeof name, "n%d", i);
        do_create(FSM_ROOT_INO, name);
        if (i % 2)
            do_remove(FSM_OP_UNLINK, FSM_ROOT_INO, name);
    }
    atomic_store(&readers_stop, true);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    free(data);
}

/* ---- faults ---- */

static void block_path(const struct store_name *n, char *out, size_t cap)
{
    char hex[STORE_NAME_HEX_LEN + 1];
    store_name_hex(n, hex);
    snprintf(out, cap, "%s/blocks/%.2s/%s", fx.root, hex, hex);
}

Test(fsm, a_corrupted_block_reads_as_eio)
{
    int64_t f = do_create(FSM_ROOT_INO, "f");
    uint8_t *data = malloc(BS), *buf = malloc(BS);
    struct prng r;
    prng_seed(&r, 3);
    prng_fill(&r, data, BS); /* incompressible: stored raw */
    do_write((uint64_t)f, 0, data, BS);
    struct store_name n;
    store_name_of(data, BS, &n);
    char path[512];
    block_path(&n, path, sizeof path);
    FILE *fp = fopen(path, "r+b");
    cr_assert_not_null(fp, "%s", path);
    fseek(fp, STORE_HDR_LEN + 1000, SEEK_SET);
    int c = fgetc(fp);
    fseek(fp, STORE_HDR_LEN + 1000, SEEK_SET);
    fputc(c ^ 0x40, fp);
    fclose(fp);
    size_t got = 0;
    cr_assert_eq(fsm_read(fs, (uint64_t)f, 0, BS, buf, &got), -EIO);
    cr_assert_eq(fsm_read(fs, (uint64_t)f, 10, 10, buf, &got), -EIO);
    /* A partial rewrite of that block cannot proceed either, and changes
     * nothing. */
    uint64_t d = fsm_digest(fs);
    cr_assert_eq(do_write((uint64_t)f, 5, "x", 1), -EIO);
    cr_assert_eq(fsm_digest(fs), d);
    free(data);
    free(buf);
}

Test(fsm, a_store_error_at_apply_changes_nothing)
{
    int64_t f = do_create(FSM_ROOT_INO, "f");
    uint8_t *data = malloc(3 * BS);
    memset(data, 1, 3 * BS);
    do_write((uint64_t)f, 0, data, BS);
    uint64_t d = fsm_digest(fs);
    memset(data, 2, BS);
    memset(data + BS, 3, BS);
    memset(data + 2 * BS, 4, BS);
    /* The third put of the write fails (distinct blocks: no dedup hits). */
    fault_arm("store.write", 2, 1, EIO);
    cr_assert_eq(do_write((uint64_t)f, 0, data, 3 * BS), -EIO);
    fault_disarm_all();
    cr_assert_eq(fsm_digest(fs), d);
    cr_assert_eq(attr_of((uint64_t)f).size, BS);
    struct store_name n2;
    store_name_of(data, BS, &n2);
    cr_assert_eq(store_refcount(st, &n2), 0, "the blocks already put were let go");
    uint8_t b[4];
    read_exact((uint64_t)f, 0, 4, b);
    cr_assert_eq(b[0], 1);
    free(data);
}

Test(fsm, freeing_the_fsm_drops_its_block_references)
{
    int64_t f = do_create(FSM_ROOT_INO, "f");
    do_write((uint64_t)f, 0, "data", 4);
    struct store_name n;
    store_name_of("data", 4, &n);
    cr_assert_eq(store_refcount(st, &n), 1);
    fsm_free(fs);
    fs = NULL;
    cr_assert_eq(store_refcount(st, &n), 0);
}
