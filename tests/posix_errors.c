/* posix_errors — one system call from the command line, its result printed
 * as a word, for the checks of tests/test_workloads.sh that the shell cannot
 * express (renameat2 flags, O_EXCL, O_APPEND after a seek, pwrite at an
 * offset, xattr flags, a minimal POSIX ACL, a call made as another uid).
 *
 *   posix_errors [--as UID:GID] OP ARGS...
 *
 * prints exactly one line: `OK` when the call succeeded (or, for the reads,
 * what it read), else the errno's name (`EEXIST`, `ENOTEMPTY`, ...; `E<n>`
 * for a number this table does not know). The exit code is 0 whenever the
 * call was made, whatever it returned, so that the script compares the
 * printed word; 2 is bad usage, 3 a failed setup (setresuid, a helper open).
 *
 * --as drops to UID:GID (supplementary groups cleared) with setresgid and
 * setresuid before the call: this process is the script's child, so the
 * script's own credentials are untouched. The mount must allow other users
 * (-o allow_other) for such a call to reach it at all. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>

#define EXIT_USAGE 2
#define EXIT_SETUP 3
#define READ_MAX 4096

struct errno_name {
    int err;
    const char *name;
};

/* EOPNOTSUPP == ENOTSUP and EWOULDBLOCK == EAGAIN on Linux: one name each. */
static const struct errno_name errno_names[] = {
    {EPERM, "EPERM"},     {ENOENT, "ENOENT"},   {EIO, "EIO"},
    {EBADF, "EBADF"},     {EAGAIN, "EAGAIN"},   {ENOMEM, "ENOMEM"},
    {EACCES, "EACCES"},   {EFAULT, "EFAULT"},   {EBUSY, "EBUSY"},
    {EEXIST, "EEXIST"},   {EXDEV, "EXDEV"},     {ENODEV, "ENODEV"},
    {ENOTDIR, "ENOTDIR"}, {EISDIR, "EISDIR"},   {EINVAL, "EINVAL"},
    {ETXTBSY, "ETXTBSY"}, {EFBIG, "EFBIG"},     {ENOSPC, "ENOSPC"},
    {EROFS, "EROFS"},     {EMLINK, "EMLINK"},   {ERANGE, "ERANGE"},
    {E2BIG, "E2BIG"},     {ENAMETOOLONG, "ENAMETOOLONG"},
    {ENOSYS, "ENOSYS"},   {ENOTEMPTY, "ENOTEMPTY"},
    {ELOOP, "ELOOP"},     {ENODATA, "ENODATA"}, {EOVERFLOW, "EOVERFLOW"},
    {EOPNOTSUPP, "EOPNOTSUPP"},                 {ENOTCONN, "ENOTCONN"},
};

static void print_result(int rc)
{
    if (rc == 0) {
        puts("OK");
        return;
    }
    for (size_t i = 0; i < sizeof errno_names / sizeof errno_names[0]; i++) {
        if (errno_names[i].err == errno) {
            puts(errno_names[i].name);
            return;
        }
    }
    printf("E%d\n", errno);
}

static int usage(void)
{
    fprintf(stderr,
            "usage: posix_errors [--as UID:GID] OP ARGS...\n"
            "  rename OLD NEW [0|noreplace|exchange|noreplace,exchange]\n"
            "  unlink PATH | rmdir PATH | mkdir PATH MODE | link OLD NEW\n"
            "  symlink TARGET PATH | creat PATH | creat-excl PATH | open-write PATH\n"
            "  append PATH DATA (seeks to 0 first) | pwrite PATH OFFSET DATA\n"
            "  pread PATH OFFSET LEN | truncate PATH LEN | chmod PATH MODE\n"
            "  chown PATH UID GID | utimes PATH SECONDS\n"
            "  setxattr PATH NAME VALUE [0|create|replace] | getxattr PATH NAME\n"
            "  acl-mode PATH MODE (a minimal system.posix_acl_access ACL)\n");
    return EXIT_USAGE;
}

/* A number from the command line, whole string in base BASE, else -1. */
static int parse_u64(const char *s, int base, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, base);
    if (errno || end == s || *end || s[0] == '-')
        return -1;
    *out = v;
    return 0;
}

static int parse_flags(const char *s, unsigned *out)
{
    if (strcmp(s, "0") == 0)
        *out = 0;
    else if (strcmp(s, "noreplace") == 0)
        *out = RENAME_NOREPLACE;
    else if (strcmp(s, "exchange") == 0)
        *out = RENAME_EXCHANGE;
    else if (strcmp(s, "noreplace,exchange") == 0)
        *out = RENAME_NOREPLACE | RENAME_EXCHANGE;
    else
        return -1;
    return 0;
}

static int drop_to(const char *spec)
{
    unsigned uid, gid;
    char tail;
    if (sscanf(spec, "%u:%u%c", &uid, &gid, &tail) != 2)
        return -1;
    if (setgroups(0, NULL) != 0 || setresgid(gid, gid, gid) != 0 ||
        setresuid(uid, uid, uid) != 0) {
        perror("posix_errors: dropping privileges");
        return -1;
    }
    return 0;
}

/* open + one call on the descriptor + close; the call's errno survives. */
static int open_and(const char *path, int flags, int (*fn)(int fd, void *arg), void *arg)
{
    int fd = open(path, flags, 0644);
    if (fd < 0)
        return -1;
    int rc = fn(fd, arg);
    int saved = errno;
    if (close(fd) != 0 && rc == 0)
        return -1; /* close reports a failed flush: that is the write's result */
    errno = saved;
    return rc;
}

struct io {
    uint64_t off;
    const char *data;
    size_t len;
};

static int do_write_all(int fd, const struct io *io, int positioned)
{
    ssize_t n = positioned ? pwrite(fd, io->data, io->len, (off_t)io->off)
                           : write(fd, io->data, io->len);
    if (n < 0)
        return -1;
    if ((size_t)n != io->len) {
        errno = EIO; /* a short write to a regular file is itself the bug */
        return -1;
    }
    return 0;
}

static int append_fn(int fd, void *arg)
{
    /* O_APPEND must write at the end whatever the file offset says. */
    if (lseek(fd, 0, SEEK_SET) != 0)
        return -1;
    return do_write_all(fd, arg, 0);
}

static int pwrite_fn(int fd, void *arg)
{
    return do_write_all(fd, arg, 1);
}

static int noop_fn(int fd, void *arg)
{
    (void)fd;
    (void)arg;
    return 0;
}

static int do_pread(const char *path, const char *off_s, const char *len_s)
{
    uint64_t off, len;
    if (parse_u64(off_s, 0, &off) || parse_u64(len_s, 0, &len) || len > READ_MAX)
        return usage();
    char buf[READ_MAX];
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        print_result(-1);
        return 0;
    }
    ssize_t n = pread(fd, buf, (size_t)len, (off_t)off);
    if (n < 0) {
        print_result(-1);
    } else {
        fwrite(buf, 1, (size_t)n, stdout);
        putchar('\n');
    }
    close(fd);
    return 0;
}

/* A minimal POSIX ACL (owner, group, other: the mode's rwx bits) set as the
 * system.posix_acl_access xattr, the way `cp -a` and `setfacl` set modes on
 * a filesystem with ACLs (linux/posix_acl_xattr.h: version 2, then entries
 * of le16 tag, le16 perm, le32 id). */
static int set_acl_mode(const char *path, unsigned mode)
{
    static const uint16_t tags[3] = {0x01 /* USER_OBJ */, 0x04 /* GROUP_OBJ */,
                                     0x20 /* OTHER */};
    uint8_t v[4 + 3 * 8];
    uint8_t *p = v;
    p[0] = 2, p[1] = p[2] = p[3] = 0;
    p += 4;
    for (int i = 0; i < 3; i++, p += 8) {
        unsigned perm = (mode >> (6 - 3 * i)) & 7;
        p[0] = (uint8_t)tags[i], p[1] = (uint8_t)(tags[i] >> 8);
        p[2] = (uint8_t)perm, p[3] = 0;
        p[4] = p[5] = p[6] = p[7] = 0xff; /* ACL_UNDEFINED_ID */
    }
    return setxattr(path, "system.posix_acl_access", v, sizeof v, 0);
}

static int do_getxattr(const char *path, const char *name)
{
    char buf[READ_MAX];
    ssize_t n = getxattr(path, name, buf, sizeof buf);
    if (n < 0) {
        print_result(-1);
    } else {
        fwrite(buf, 1, (size_t)n, stdout);
        putchar('\n');
    }
    return 0;
}

static int run(int argc, char **argv)
{
    const char *op = argv[0];
    int rc;
#define NEED(n)                                                                                    \
    do {                                                                                           \
        if (argc != (n) + 1)                                                                       \
            return usage();                                                                        \
    } while (0)
    if (strcmp(op, "rename") == 0) {
        unsigned fl = 0;
        if (argc != 3 && argc != 4)
            return usage();
        if (argc == 4 && parse_flags(argv[3], &fl))
            return usage();
        rc = renameat2(AT_FDCWD, argv[1], AT_FDCWD, argv[2], fl);
    } else if (strcmp(op, "unlink") == 0) {
        NEED(1);
        rc = unlink(argv[1]);
    } else if (strcmp(op, "rmdir") == 0) {
        NEED(1);
        rc = rmdir(argv[1]);
    } else if (strcmp(op, "mkdir") == 0) {
        uint64_t mode;
        NEED(2);
        if (parse_u64(argv[2], 8, &mode) || mode > 07777)
            return usage();
        rc = mkdir(argv[1], (mode_t)mode);
    } else if (strcmp(op, "link") == 0) {
        NEED(2);
        rc = link(argv[1], argv[2]);
    } else if (strcmp(op, "symlink") == 0) {
        NEED(2);
        rc = symlink(argv[1], argv[2]);
    } else if (strcmp(op, "creat") == 0 || strcmp(op, "creat-excl") == 0) {
        NEED(1);
        int fl = O_CREAT | O_WRONLY | (strcmp(op, "creat-excl") == 0 ? O_EXCL : 0);
        rc = open_and(argv[1], fl, noop_fn, NULL);
    } else if (strcmp(op, "open-write") == 0) {
        NEED(1);
        rc = open_and(argv[1], O_WRONLY, noop_fn, NULL);
    } else if (strcmp(op, "append") == 0) {
        NEED(2);
        struct io io = {0, argv[2], strlen(argv[2])};
        rc = open_and(argv[1], O_WRONLY | O_APPEND, append_fn, &io);
    } else if (strcmp(op, "pwrite") == 0) {
        NEED(3);
        struct io io = {0, argv[3], strlen(argv[3])};
        if (parse_u64(argv[2], 0, &io.off) || io.off > INT64_MAX)
            return usage();
        rc = open_and(argv[1], O_WRONLY | O_CREAT, pwrite_fn, &io);
    } else if (strcmp(op, "pread") == 0) {
        NEED(3);
        return do_pread(argv[1], argv[2], argv[3]);
    } else if (strcmp(op, "truncate") == 0) {
        uint64_t len;
        NEED(2);
        if (parse_u64(argv[2], 0, &len) || len > INT64_MAX)
            return usage();
        rc = truncate(argv[1], (off_t)len);
    } else if (strcmp(op, "chmod") == 0) {
        uint64_t mode;
        NEED(2);
        if (parse_u64(argv[2], 8, &mode) || mode > 07777)
            return usage();
        rc = chmod(argv[1], (mode_t)mode);
    } else if (strcmp(op, "chown") == 0) {
        uint64_t uid, gid;
        NEED(3);
        if (parse_u64(argv[2], 10, &uid) || parse_u64(argv[3], 10, &gid) || uid > UINT32_MAX ||
            gid > UINT32_MAX)
            return usage();
        rc = chown(argv[1], (uid_t)uid, (gid_t)gid);
    } else if (strcmp(op, "utimes") == 0) {
        uint64_t sec;
        NEED(2);
        if (parse_u64(argv[2], 10, &sec) || sec > INT32_MAX)
            return usage();
        struct timespec ts[2] = {{(time_t)sec, 0}, {(time_t)sec, 0}};
        rc = utimensat(AT_FDCWD, argv[1], ts, 0);
    } else if (strcmp(op, "setxattr") == 0) {
        int fl = 0;
        if (argc != 4 && argc != 5)
            return usage();
        if (argc == 5) {
            if (strcmp(argv[4], "create") == 0)
                fl = XATTR_CREATE;
            else if (strcmp(argv[4], "replace") == 0)
                fl = XATTR_REPLACE;
            else if (strcmp(argv[4], "0") != 0)
                return usage();
        }
        rc = setxattr(argv[1], argv[2], argv[3], strlen(argv[3]), fl);
    } else if (strcmp(op, "acl-mode") == 0) {
        uint64_t mode;
        NEED(2);
        if (parse_u64(argv[2], 8, &mode) || mode > 0777)
            return usage();
        rc = set_acl_mode(argv[1], (unsigned)mode);
    } else if (strcmp(op, "getxattr") == 0) {
        NEED(2);
        return do_getxattr(argv[1], argv[2]);
    } else {
        return usage();
    }
#undef NEED
    print_result(rc);
    return 0;
}

int main(int argc, char **argv)
{
    int i = 1;
    if (i < argc && strcmp(argv[i], "--as") == 0) {
        if (i + 1 >= argc)
            return usage();
        if (drop_to(argv[i + 1]) != 0)
            return EXIT_SETUP;
        i += 2;
    }
    if (i >= argc)
        return usage();
    return run(argc - i, argv + i);
}
