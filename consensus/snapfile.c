/* snapfile — snapshot files; the format is in snapfile.h. */
#include "consensus/snapfile.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/crc32c.h"
#include "base/fault.h"
#include "base/log.h"

void snapfile_encode(uint64_t slot, const uint8_t *dedup, size_t dedup_len,
                     const uint8_t *sm, size_t sm_len, struct buf *out)
{
    size_t start = out->len;
    buf_reserve(out, SNAPFILE_HEADER_BYTES + dedup_len + sm_len + SNAPFILE_TRAILER_BYTES);
    buf_put_u64(out, SNAPFILE_MAGIC);
    buf_put_u64(out, slot);
    buf_put_u64(out, dedup_len);
    buf_put_u64(out, sm_len);
    buf_put(out, dedup, dedup_len);
    buf_put(out, sm, sm_len);
    buf_put_u32(out, crc32c(0, out->data + start, out->len - start));
}

int snapfile_header(const uint8_t *p, size_t len, uint64_t *slot, uint64_t *total)
{
    if (len < SNAPFILE_HEADER_BYTES || le_get_u64(p) != SNAPFILE_MAGIC)
        return -EBADMSG;
    uint64_t dedup_len = le_get_u64(p + 16), sm_len = le_get_u64(p + 24);
    uint64_t limit = SNAPFILE_BYTES_MAX - SNAPFILE_HEADER_BYTES - SNAPFILE_TRAILER_BYTES;
    if (dedup_len > limit || sm_len > limit - dedup_len)
        return -EBADMSG;
    *slot = le_get_u64(p + 8);
    *total = SNAPFILE_HEADER_BYTES + dedup_len + sm_len + SNAPFILE_TRAILER_BYTES;
    return 0;
}

int snapfile_decode(const uint8_t *p, size_t len, struct snapfile *out)
{
    uint64_t slot, total;
    if (snapfile_header(p, len, &slot, &total) != 0 || total != len)
        return -EBADMSG;
    if (le_get_u32(p + len - SNAPFILE_TRAILER_BYTES) != crc32c(0, p, len - SNAPFILE_TRAILER_BYTES))
        return -EBADMSG;
    out->slot = slot;
    out->dedup_len = (size_t)le_get_u64(p + 16);
    out->sm_len = (size_t)le_get_u64(p + 24);
    out->dedup = p + SNAPFILE_HEADER_BYTES;
    out->sm = out->dedup + out->dedup_len;
    return 0;
}

void snapfile_path(const char *dir, uint64_t slot, char out[SNAPFILE_PATH_MAX])
{
    snprintf(out, SNAPFILE_PATH_MAX, "%s/snap-%020" PRIu64, dir, slot);
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

static int write_all(int fd, const uint8_t *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* dir/spare: a pruned snapshot file kept for its disk space. Why: deleting
 * a file frees its extents, and on a filesystem mounted with `discard`
 * that is a synchronous discard of the whole file, which the disk's other
 * writes queue behind: unlinking a 5 MiB snapshot took 9-13 ms here, and
 * every WAL fdatasync on the disk waited for it. Overwriting the spare in
 * place frees nothing (but its tail, when the new file is shorter). */
static void spare_path(const char *dir, char out[SNAPFILE_PATH_MAX])
{
    snprintf(out, SNAPFILE_PATH_MAX, "%s/spare", dir);
}

int snapfile_write(const char *dir, uint64_t slot, const uint8_t *p, size_t len)
{
    char path[SNAPFILE_PATH_MAX], tmp[SNAPFILE_PATH_MAX + 8], spare[SNAPFILE_PATH_MAX];
    snapfile_path(dir, slot, path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    spare_path(dir, spare);
    int fd = -1;
    if (rename(spare, tmp) == 0)
        fd = open(tmp, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    int rc = write_all(fd, p, len);
    if (rc == 0 && ftruncate(fd, (off_t)len) != 0)
        rc = -errno;
    if (rc == 0)
        rc = FAULT("snapfile.fsync");
    if (rc == 0 && fsync(fd) != 0)
        rc = -errno;
    close(fd);
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -errno;
    if (rc == 0)
        rc = fsync_dir(dir);
    if (rc != 0)
        unlink(tmp);
    return rc;
}

int snapfile_read(const char *path, uint8_t **p, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    if ((uint64_t)st.st_size > SNAPFILE_BYTES_MAX) {
        close(fd);
        return -EFBIG;
    }
    size_t n = (size_t)st.st_size;
    uint8_t *b = malloc(n ? n : 1);
    if (!b) {
        close(fd);
        return -ENOMEM;
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, b + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int rc = r < 0 ? -errno : -EBADMSG; /* shrank under us */
            free(b);
            close(fd);
            return rc;
        }
        got += (size_t)r;
    }
    close(fd);
    *p = b;
    *len = n;
    return 0;
}

/* "snap-" followed by exactly 20 digits. */
static bool parse_snap_name(const char *name, uint64_t *slot)
{
    if (strncmp(name, "snap-", 5) != 0 || strlen(name) != 25)
        return false;
    uint64_t v = 0;
    for (const char *c = name + 5; *c; c++) {
        if (*c < '0' || *c > '9')
            return false;
        v = v * 10 + (uint64_t)(*c - '0');
    }
    *slot = v;
    return true;
}

/* "incoming-<1..20 digits>.part" */
static bool parse_incoming_name(const char *name, uint64_t *slot)
{
    if (strncmp(name, "incoming-", 9) != 0)
        return false;
    const char *c = name + 9;
    uint64_t v = 0;
    size_t digits = 0;
    for (; *c >= '0' && *c <= '9' && digits < 20; c++, digits++)
        v = v * 10 + (uint64_t)(*c - '0');
    if (digits == 0 || strcmp(c, ".part") != 0)
        return false;
    *slot = v;
    return true;
}

/* "snap-<20 digits>.tmp": left by a crash while writing. */
static bool is_snap_tmp(const char *name)
{
    size_t n = strlen(name);
    return n == 29 && strncmp(name, "snap-", 5) == 0 && strcmp(name + 25, ".tmp") == 0;
}

static int cmp_desc(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

size_t snapfile_list(const char *dir, uint64_t *out, size_t cap)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    uint64_t *all = NULL;
    size_t n = 0, all_cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        uint64_t slot;
        if (!parse_snap_name(de->d_name, &slot))
            continue;
        if (n == all_cap) {
            all_cap = all_cap ? 2 * all_cap : 16;
            uint64_t *grown = realloc(all, all_cap * sizeof *all);
            if (!grown)
                break;
            all = grown;
        }
        all[n++] = slot;
    }
    closedir(d);
    if (n > 1)
        qsort(all, n, sizeof *all, cmp_desc);
    for (size_t i = 0; i < n && i < cap; i++)
        out[i] = all[i];
    free(all);
    return n;
}

int snapfile_load(const char *dir, uint64_t slot, uint8_t **p, size_t *len)
{
    char path[SNAPFILE_PATH_MAX];
    snapfile_path(dir, slot, path);
    uint8_t *b;
    size_t blen;
    int rc = snapfile_read(path, &b, &blen);
    if (rc != 0)
        return rc;
    struct snapfile sf;
    rc = snapfile_decode(b, blen, &sf);
    if (rc == 0 && sf.slot != slot)
        rc = -EBADMSG; /* the name and the header disagree */
    if (rc != 0) {
        free(b);
        return rc;
    }
    *p = b;
    *len = blen;
    return 0;
}

int snapfile_load_newest(const char *dir, uint8_t **p, size_t *len, uint64_t *slot)
{
    uint64_t slots[64];
    size_t n = snapfile_list(dir, slots, 64);
    for (size_t i = 0; i < n && i < 64; i++) {
        int rc = snapfile_load(dir, slots[i], p, len);
        if (rc == 0) {
            *slot = slots[i];
            return 0;
        }
        LOG_E("event=snapshot_unreadable dir=%s slot=%llu error=\"%s\": trying an older one",
              dir, (unsigned long long)slots[i], strerror(-rc));
    }
    return -ENOENT;
}

void snapfile_prune(const char *dir, uint64_t keep_from, bool temporaries)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    char spare[SNAPFILE_PATH_MAX];
    spare_path(dir, spare);
    bool have_spare = access(spare, F_OK) == 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        uint64_t slot;
        bool snap = parse_snap_name(de->d_name, &slot);
        if (((snap || parse_incoming_name(de->d_name, &slot)) && slot < keep_from) ||
            (temporaries && is_snap_tmp(de->d_name))) {
            char path[SNAPFILE_PATH_MAX];
            snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
            if (snap && !have_spare && rename(path, spare) == 0)
                have_spare = true; /* the next snapfile_write reuses it */
            else
                unlink(path);
        }
    }
    closedir(d);
}
