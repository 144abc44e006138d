/* fsm — the replicated filesystem state machine (fs/fsm.h).
 *
 * Owns the namespace: an inode table (open addressing, ino → inode), per
 * directory a name → entry hash plus an array of entries in cookie order,
 * per regular file a sorted block map (index → store name), per symlink its
 * target, per inode a sorted xattr list, and the sorted list of orphans.
 *
 * Invariants:
 *  1. Apply is a pure function of (state, op): inode numbers come from
 *     next_ino (starting at 2, never reused, so gen is always 1), times from
 *     op->now_ns, owners from the op. Hash tables serve lookups only; every
 *     walk whose order can be observed (readdir, digest, listxattr, orphans)
 *     follows cookies, inode numbers or sorted names.
 *  2. A live directory's nlink is 2 + its subdirectories; its size is the
 *     number of its entries ("." and ".." not counted); an rmdir'd one has
 *     nlink 0. Every live directory reaches the root through ->parent.
 *  3. Block i of a regular file, when mapped, holds 1..block_size bytes and
 *     at most size - i*block_size of them; bytes past a block's length (up to
 *     the size) and unmapped blocks read as zeros. All-zero blocks are never
 *     mapped. Each mapped block holds exactly one store reference.
 *  4. A mutation that needs the store does every store_get/store_put first
 *     and changes the state only after all of them succeeded, so an I/O
 *     error leaves the state as it was (-EIO). The other replicas may have
 *     succeeded: a local disk error can make this replica diverge, which the
 *     digest (fsck) detects; repairing it is fsck's job.
 *  5. An inode whose nlink drops to 0 becomes an orphan, whatever its type
 *     (directories and symlinks too: one rule, and a host may have any of
 *     them open), with a bit per node that has not released it; it is freed
 *     (blocks unreferenced) when the last bit goes. An orphan can still be
 *     read, written and setattr'ed (an open file), never linked again.
 *  6. Reads never update atime (replicas must not diverge on reads): atime
 *     changes only through SETATTR.
 *
 * Locking: one rwlock; fsm_apply takes it for writing, every read for
 * reading. The store is thread-safe on its own. */
#include "fs/fsm.h"

#include "fs/store.h"

#include "base/assert.h"
#include "base/log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#define OP_VERSION 1
#define COOKIE_DOT 1
#define COOKIE_DOTDOT 2
#define COOKIE_FIRST 3
/* Per inode: the bytes of all xattr names with their NULs (what listxattr
 * returns, which the kernel caps at 64 KiB) and of all values. */
#define XATTR_LIST_BYTES_MAX 65536u
#define XATTR_VALUE_BYTES_MAX (1u << 20)

/* ------------------------------------------------------------------ */
/* memory                                                              */

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    ASSERT(p); /* out of memory: a replica cannot go on half-applied */
    return p;
}

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    ASSERT(p);
    return p;
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    ASSERT(p);
    return p;
}

/* ------------------------------------------------------------------ */
/* types                                                               */

struct dent {
    uint64_t ino;
    uint64_t cookie;
    uint32_t hash;
    uint32_t name_len;
    char name[]; /* NUL-terminated */
};

struct dslot {
    uint64_t cookie;
    struct dent *d; /* NULL: removed, compacted away later */
};

struct dir {
    struct dent **tab;   /* open addressing, linear probing */
    uint32_t tab_cap;    /* power of two, or 0 */
    uint32_t n;          /* entries */
    struct dslot *order; /* ascending cookies */
    uint32_t order_len, order_cap;
    uint64_t next_cookie;
};

struct bent {
    uint64_t index;
    struct store_name name;
    uint32_t len;
};

struct xattr {
    char *name;
    uint32_t name_len;
    uint32_t value_len;
    uint8_t *value;
};

struct inode {
    uint64_t ino;
    uint32_t mode, nlink, uid, gid;
    uint64_t rdev;
    uint64_t size;       /* regular files and symlinks */
    int64_t atime_ns, mtime_ns, ctime_ns;
    uint64_t parent;     /* directories: what ".." names */
    uint32_t release_mask; /* orphans: bit node-1 set until node releases it */
    bool orphan;
    uint32_t n_xattrs;   /* sorted by (name bytes, length) */
    struct xattr *xattrs;
    union {
        struct dir dir;
        struct {
            struct bent *map; /* ascending index */
            uint32_t n, cap;
            uint64_t bytes;   /* sum of the mapped blocks' lengths */
        } file;
        struct {
            char *target;
        } link;
    } u;
};

struct fsm {
    pthread_rwlock_t lock;
    struct store *store;
    uint32_t n_nodes;
    uint32_t bs;
    uint64_t next_ino;
    struct inode **itab; /* open addressing, linear probing */
    uint64_t itab_cap, n_inodes;
    uint64_t *orphans;   /* ascending inode numbers */
    size_t n_orphans, orphans_cap;
    uint64_t bytes_stored;
    uint8_t *scratch;    /* one block, for apply (under the write lock) */
};

/* A block built by an op before the state changes (invariant 4). */
struct pend {
    uint64_t index;
    struct store_name name; /* NONE: the block becomes a hole */
    uint32_t len;
};

/* ------------------------------------------------------------------ */
/* the inode table                                                     */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

static struct inode *itab_get(const struct fsm *f, uint64_t ino)
{
    uint64_t mask = f->itab_cap - 1;
    uint64_t i = mix64(ino) & mask;
    for (uint64_t k = 0; k < f->itab_cap; k++, i = (i + 1) & mask) {
        struct inode *in = f->itab[i];
        if (!in)
            return NULL;
        if (in->ino == ino)
            return in;
    }
    return NULL;
}

static void itab_put_raw(struct inode **tab, uint64_t cap, struct inode *in)
{
    uint64_t mask = cap - 1;
    uint64_t i = mix64(in->ino) & mask;
    for (uint64_t k = 0; k < cap; k++, i = (i + 1) & mask) {
        if (!tab[i]) {
            tab[i] = in;
            return;
        }
    }
    ASSERT(!"inode table full");
}

static void itab_resize(struct fsm *f, uint64_t cap)
{
    struct inode **tab = xcalloc(cap, sizeof *tab);
    for (uint64_t i = 0; i < f->itab_cap; i++)
        if (f->itab[i])
            itab_put_raw(tab, cap, f->itab[i]);
    free(f->itab);
    f->itab = tab;
    f->itab_cap = cap;
}

static void itab_insert(struct fsm *f, struct inode *in)
{
    if ((f->n_inodes + 1) * 2 > f->itab_cap)
        itab_resize(f, f->itab_cap * 2);
    itab_put_raw(f->itab, f->itab_cap, in);
    f->n_inodes++;
}

static void itab_remove(struct fsm *f, uint64_t ino)
{
    uint64_t mask = f->itab_cap - 1;
    uint64_t i = mix64(ino) & mask;
    uint64_t k;
    for (k = 0; k < f->itab_cap; k++, i = (i + 1) & mask) {
        ASSERT(f->itab[i]);
        if (f->itab[i]->ino == ino)
            break;
    }
    ASSERT(k < f->itab_cap);
    f->itab[i] = NULL;
    f->n_inodes--;
    /* Backward-shift deletion keeps every probe chain unbroken. */
    uint64_t j = (i + 1) & mask;
    for (k = 0; k < f->itab_cap && f->itab[j]; k++, j = (j + 1) & mask) {
        uint64_t home = mix64(f->itab[j]->ino) & mask;
        if (((j - home) & mask) >= ((j - i) & mask)) {
            f->itab[i] = f->itab[j];
            f->itab[j] = NULL;
            i = j;
        }
    }
    if (f->itab_cap > 64 && f->n_inodes * 8 < f->itab_cap)
        itab_resize(f, f->itab_cap / 2);
}

/* ------------------------------------------------------------------ */
/* directories                                                         */

static uint32_t name_hash(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 0x100000001b3ull;
    }
    return (uint32_t)(h ^ (h >> 32));
}

static struct dent *dir_find(const struct dir *d, const char *name, size_t len)
{
    if (!d->tab_cap)
        return NULL;
    uint32_t h = name_hash(name, len);
    uint32_t mask = d->tab_cap - 1;
    uint32_t i = h & mask;
    for (uint32_t k = 0; k < d->tab_cap; k++, i = (i + 1) & mask) {
        struct dent *e = d->tab[i];
        if (!e)
            return NULL;
        if (e->hash == h && e->name_len == len && memcmp(e->name, name, len) == 0)
            return e;
    }
    return NULL;
}

static void dtab_put_raw(struct dent **tab, uint32_t cap, struct dent *e)
{
    uint32_t mask = cap - 1;
    uint32_t i = e->hash & mask;
    for (uint32_t k = 0; k < cap; k++, i = (i + 1) & mask) {
        if (!tab[i]) {
            tab[i] = e;
            return;
        }
    }
    ASSERT(!"directory table full");
}

static void dtab_resize(struct dir *d, uint32_t cap)
{
    struct dent **tab = xcalloc(cap, sizeof *tab);
    for (uint32_t i = 0; i < d->tab_cap; i++)
        if (d->tab[i])
            dtab_put_raw(tab, cap, d->tab[i]);
    free(d->tab);
    d->tab = tab;
    d->tab_cap = cap;
}

static void dir_add(struct dir *d, const char *name, size_t len, uint64_t ino)
{
    ASSERT(len >= 1 && len <= FSM_NAME_MAX);
    struct dent *e = xmalloc(sizeof *e + len + 1);
    e->ino = ino;
    e->cookie = d->next_cookie++;
    e->hash = name_hash(name, len);
    e->name_len = (uint32_t)len;
    memcpy(e->name, name, len);
    e->name[len] = '\0';
    if ((d->n + 1) * 2 > d->tab_cap)
        dtab_resize(d, d->tab_cap ? d->tab_cap * 2 : 8);
    dtab_put_raw(d->tab, d->tab_cap, e);
    d->n++;
    if (d->order_len == d->order_cap) {
        d->order_cap = d->order_cap ? d->order_cap * 2 : 8;
        d->order = xrealloc(d->order, (size_t)d->order_cap * sizeof *d->order);
    }
    d->order[d->order_len++] = (struct dslot){.cookie = e->cookie, .d = e};
}

/* First position in d->order whose cookie is > cookie. */
static uint32_t dir_order_after(const struct dir *d, uint64_t cookie)
{
    uint32_t lo = 0, hi = d->order_len;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (d->order[mid].cookie <= cookie)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void dir_compact(struct dir *d)
{
    uint32_t w = 0;
    for (uint32_t r = 0; r < d->order_len; r++)
        if (d->order[r].d)
            d->order[w++] = d->order[r];
    d->order_len = w;
    if (d->order_cap > 16 && w * 4 < d->order_cap) {
        d->order_cap = MAX(16u, w * 2);
        d->order = xrealloc(d->order, (size_t)d->order_cap * sizeof *d->order);
    }
}

static void dir_del(struct dir *d, struct dent *e)
{
    uint32_t mask = d->tab_cap - 1;
    uint32_t i = e->hash & mask;
    uint32_t k;
    for (k = 0; k < d->tab_cap; k++, i = (i + 1) & mask) {
        ASSERT(d->tab[i]);
        if (d->tab[i] == e)
            break;
    }
    ASSERT(k < d->tab_cap);
    d->tab[i] = NULL;
    uint32_t j = (i + 1) & mask;
    for (k = 0; k < d->tab_cap && d->tab[j]; k++, j = (j + 1) & mask) {
        uint32_t home = d->tab[j]->hash & mask;
        if (((j - home) & mask) >= ((j - i) & mask)) {
            d->tab[i] = d->tab[j];
            d->tab[j] = NULL;
            i = j;
        }
    }
    d->n--;
    uint32_t pos = dir_order_after(d, e->cookie - 1);
    ASSERT(pos < d->order_len && d->order[pos].d == e);
    d->order[pos].d = NULL;
    free(e);
    uint32_t dead = d->order_len - d->n;
    if (dead > 32 && dead > d->n)
        dir_compact(d);
    if (d->tab_cap > 16 && d->n * 8 < d->tab_cap)
        dtab_resize(d, d->tab_cap / 2);
}

static void dir_deinit(struct dir *d)
{
    for (uint32_t i = 0; i < d->order_len; i++)
        free(d->order[i].d);
    free(d->order);
    free(d->tab);
    memset(d, 0, sizeof *d);
}

/* ------------------------------------------------------------------ */
/* inodes                                                              */

static uint32_t all_nodes_mask(const struct fsm *f)
{
    return f->n_nodes >= 32 ? UINT32_MAX : (uint32_t)((1ull << f->n_nodes) - 1);
}

static size_t orphans_pos(const struct fsm *f, uint64_t ino)
{
    size_t lo = 0, hi = f->n_orphans;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (f->orphans[mid] < ino)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void orphan_make(struct fsm *f, struct inode *in)
{
    ASSERT(in->nlink == 0 && !in->orphan);
    in->orphan = true;
    in->release_mask = all_nodes_mask(f);
    if (f->n_orphans == f->orphans_cap) {
        f->orphans_cap = f->orphans_cap ? f->orphans_cap * 2 : 16;
        f->orphans = xrealloc(f->orphans, f->orphans_cap * sizeof *f->orphans);
    }
    size_t pos = orphans_pos(f, in->ino);
    memmove(f->orphans + pos + 1, f->orphans + pos, (f->n_orphans - pos) * sizeof *f->orphans);
    f->orphans[pos] = in->ino;
    f->n_orphans++;
}

static void block_unref(struct fsm *f, const struct store_name *name)
{
    int rc = store_unref(f->store, name);
    if (rc != 0) {
        char hex[STORE_NAME_HEX_LEN + 1];
        store_name_hex(name, hex);
        LOG_E("fsm: unref of an unreferenced block name=%s rc=%d", hex, rc);
    }
}

/* Frees the inode's memory and drops its store references. */
static void inode_destroy(struct fsm *f, struct inode *in)
{
    if (S_ISDIR(in->mode)) {
        dir_deinit(&in->u.dir);
    } else if (S_ISREG(in->mode)) {
        for (uint32_t i = 0; i < in->u.file.n; i++)
            block_unref(f, &in->u.file.map[i].name);
        f->bytes_stored -= in->u.file.bytes;
        free(in->u.file.map);
    } else if (S_ISLNK(in->mode)) {
        free(in->u.link.target);
    }
    for (uint32_t i = 0; i < in->n_xattrs; i++) {
        free(in->xattrs[i].name);
        free(in->xattrs[i].value);
    }
    free(in->xattrs);
    free(in);
}

static void inode_release_free(struct fsm *f, struct inode *in)
{
    ASSERT(in->orphan);
    size_t pos = orphans_pos(f, in->ino);
    ASSERT(pos < f->n_orphans && f->orphans[pos] == in->ino);
    memmove(f->orphans + pos, f->orphans + pos + 1,
            (f->n_orphans - pos - 1) * sizeof *f->orphans);
    f->n_orphans--;
    itab_remove(f, in->ino);
    inode_destroy(f, in);
}

static struct inode *inode_new(struct fsm *f, uint32_t mode, uint32_t uid, uint32_t gid,
                               int64_t now)
{
    struct inode *in = xcalloc(1, sizeof *in);
    in->ino = f->next_ino++;
    in->mode = mode;
    in->uid = uid;
    in->gid = gid;
    in->atime_ns = in->mtime_ns = in->ctime_ns = now;
    if (S_ISDIR(mode))
        in->u.dir.next_cookie = COOKIE_FIRST;
    itab_insert(f, in);
    return in;
}

static uint64_t inode_size(const struct inode *in)
{
    return S_ISDIR(in->mode) ? in->u.dir.n : in->size;
}

static void attr_fill(const struct inode *in, struct fsm_attr *a)
{
    memset(a, 0, sizeof *a);
    a->ino = in->ino;
    a->gen = 1;
    a->mode = in->mode;
    a->nlink = in->nlink;
    a->uid = in->uid;
    a->gid = in->gid;
    a->rdev = in->rdev;
    a->size = inode_size(in);
    a->blocks = S_ISREG(in->mode) ? (in->u.file.bytes + 511) / 512 : 0;
    a->atime_ns = in->atime_ns;
    a->mtime_ns = in->mtime_ns;
    a->ctime_ns = in->ctime_ns;
}

/* Linux kills set-id bits on a write or truncate by a non-root caller and
 * on chown (S_ISGID only with group-exec: without it the bit means
 * mandatory locking, which Linux leaves alone). */
static void kill_suid(struct inode *in)
{
    in->mode &= ~(uint32_t)S_ISUID;
    if (in->mode & S_IXGRP)
        in->mode &= ~(uint32_t)S_ISGID;
}

/* ------------------------------------------------------------------ */
/* block maps                                                          */

/* First position whose index is >= index. */
static uint32_t bmap_lb(const struct inode *in, uint64_t index)
{
    uint32_t lo = 0, hi = in->u.file.n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (in->u.file.map[mid].index < index)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static const struct bent *bmap_find(const struct inode *in, uint64_t index)
{
    uint32_t p = bmap_lb(in, index);
    if (p < in->u.file.n && in->u.file.map[p].index == index)
        return &in->u.file.map[p];
    return NULL;
}

/* Sets block p->index to p's block (or a hole), taking over p's store
 * reference and dropping the old block's. */
static void bmap_set(struct fsm *f, struct inode *in, const struct pend *p)
{
    uint32_t pos = bmap_lb(in, p->index);
    bool have = pos < in->u.file.n && in->u.file.map[pos].index == p->index;
    struct bent *m = in->u.file.map;
    if (have) {
        block_unref(f, &m[pos].name);
        in->u.file.bytes -= m[pos].len;
        f->bytes_stored -= m[pos].len;
    }
    if (store_name_is_none(&p->name)) {
        if (have) {
            memmove(m + pos, m + pos + 1, (in->u.file.n - pos - 1) * sizeof *m);
            in->u.file.n--;
        }
        return;
    }
    if (!have) {
        if (in->u.file.n == in->u.file.cap) {
            in->u.file.cap = in->u.file.cap ? in->u.file.cap * 2 : 4;
            in->u.file.map = xrealloc(in->u.file.map, (size_t)in->u.file.cap * sizeof *m);
            m = in->u.file.map;
        }
        memmove(m + pos + 1, m + pos, (in->u.file.n - pos) * sizeof *m);
        in->u.file.n++;
    }
    m[pos] = (struct bent){.index = p->index, .name = p->name, .len = p->len};
    in->u.file.bytes += p->len;
    f->bytes_stored += p->len;
}

/* Drops (unreferences) every mapped block with first <= index < end. */
static void bmap_drop_range(struct fsm *f, struct inode *in, uint64_t first, uint64_t end)
{
    if (first >= end)
        return;
    uint32_t a = bmap_lb(in, first);
    uint32_t b = end == UINT64_MAX ? in->u.file.n : bmap_lb(in, end);
    if (a >= b)
        return; /* also keeps NULL + 0 away from an empty map */
    struct bent *m = in->u.file.map;
    for (uint32_t i = a; i < b; i++) {
        block_unref(f, &m[i].name);
        in->u.file.bytes -= m[i].len;
        f->bytes_stored -= m[i].len;
    }
    memmove(m + a, m + b, (in->u.file.n - b) * sizeof *m);
    in->u.file.n -= b - a;
}

/* Builds block `index` as it will be: its current bytes (zeros for a hole
 * and past the stored length) cut or padded to new_len, with [lo, lo+n)
 * replaced by src, or by zeros if src is NULL; then stores it. out gets the
 * new name with one reference, or NONE if the block is all zeros. Changes
 * nothing in the state. -EIO if the old block cannot be read or the new one
 * cannot be stored. */
static int block_build(struct fsm *f, const struct inode *in, uint64_t index, uint32_t new_len,
                       uint32_t lo, const uint8_t *src, uint32_t n, struct pend *out)
{
    ASSERT(new_len >= 1 && new_len <= f->bs && lo + n <= new_len);
    const uint8_t *data;
    if (src && lo == 0 && n == new_len) {
        data = src; /* the write covers the whole block: no read needed */
    } else {
        uint8_t *b = f->scratch;
        uint32_t have = 0;
        const struct bent *e = bmap_find(in, index);
        if (e) {
            size_t got = 0;
            int rc = store_get(f->store, &e->name, b, f->bs, &got);
            if (rc != 0 || got != e->len) {
                char hex[STORE_NAME_HEX_LEN + 1];
                store_name_hex(&e->name, hex);
                LOG_E("fsm: cannot read block for rewrite ino=%llu index=%llu name=%s rc=%d "
                      "(this replica may diverge; fsck repairs it)",
                      (unsigned long long)in->ino, (unsigned long long)index, hex, rc);
                return -EIO;
            }
            have = MIN(e->len, new_len);
        }
        memset(b + have, 0, new_len - have);
        if (src)
            memcpy(b + lo, src, n);
        else
            memset(b + lo, 0, n);
        data = b;
    }
    out->index = index;
    if (store_is_zero(data, new_len)) {
        out->name = STORE_NAME_NONE;
        out->len = 0;
        return 0;
    }
    int rc = store_put(f->store, data, new_len, &out->name);
    if (rc != 0) {
        LOG_E("fsm: cannot store block ino=%llu index=%llu rc=%d "
              "(this replica may diverge; fsck repairs it)",
              (unsigned long long)in->ino, (unsigned long long)index, rc);
        return -EIO;
    }
    out->len = new_len;
    return 0;
}

static void pend_undo(struct fsm *f, struct pend *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!store_name_is_none(&p[i].name))
            block_unref(f, &p[i].name);
}

/* Sets the size of a regular file: down drops the blocks past the end and
 * cuts the last partial block; up just sets it (the new bytes are a hole). */
static int file_truncate(struct fsm *f, struct inode *in, uint64_t size)
{
    if (size >= in->size) {
        in->size = size;
        return 0;
    }
    uint64_t k = size / f->bs;
    uint32_t cut = (uint32_t)(size - k * f->bs);
    struct pend p;
    bool rebuilt = false;
    if (cut) {
        const struct bent *e = bmap_find(in, k);
        if (e && e->len > cut) {
            int rc = block_build(f, in, k, cut, 0, NULL, 0, &p);
            if (rc != 0)
                return rc;
            rebuilt = true;
        }
    }
    bmap_drop_range(f, in, cut ? k + 1 : k, UINT64_MAX);
    if (rebuilt)
        bmap_set(f, in, &p);
    in->size = size;
    return 0;
}

/* Zeroes [off, end) inside the file (end <= size): whole blocks become
 * holes, partial ones are rewritten. */
static int file_zero(struct fsm *f, struct inode *in, uint64_t off, uint64_t end)
{
    if (off >= end)
        return 0;
    uint64_t first = off / f->bs, last = (end - 1) / f->bs;
    struct pend p[2];
    size_t np = 0;
    uint64_t edges[2] = {first, last};
    for (int i = 0; i < (first == last ? 1 : 2); i++) {
        const struct bent *e = bmap_find(in, edges[i]);
        if (!e)
            continue;
        uint64_t bstart = edges[i] * f->bs;
        uint32_t lo = (uint32_t)(MAX(off, bstart) - bstart);
        uint32_t hi = (uint32_t)(MIN(end, bstart + f->bs) - bstart);
        if (lo == 0 && hi >= e->len)
            continue; /* fully covered: dropped below */
        if (lo >= e->len)
            continue; /* only bytes that already read as zeros */
        int rc = block_build(f, in, edges[i], e->len, lo, NULL, MIN(hi, e->len) - lo, &p[np]);
        if (rc != 0) {
            pend_undo(f, p, np);
            return rc;
        }
        np++;
    }
    bmap_drop_range(f, in, first, last + 1);
    for (size_t i = 0; i < np; i++)
        bmap_set(f, in, &p[i]);
    return 0;
}

/* ------------------------------------------------------------------ */
/* op codec                                                            */

enum {
    F_INO = 1u << 0,
    F_PARENT = 1u << 1,
    F_NEW_PARENT = 1u << 2,
    F_NAME = 1u << 3,
    F_NEW_NAME = 1u << 4,
    F_MODE = 1u << 5,
    F_RDEV = 1u << 6,
    F_FLAGS = 1u << 7,
    F_OFFSET = 1u << 8,
    F_LENGTH = 1u << 9,
    F_ATTR = 1u << 10,
    F_DATA = 1u << 11,
};

/* The fields each op type carries, in this order on the wire. */
static const uint16_t op_fields[FSM_OP_TYPE_MAX + 1] = {
    [FSM_OP_MKNOD] = F_PARENT | F_NAME | F_MODE | F_RDEV,
    [FSM_OP_MKDIR] = F_PARENT | F_NAME | F_MODE,
    [FSM_OP_SYMLINK] = F_PARENT | F_NAME | F_DATA,
    [FSM_OP_LINK] = F_INO | F_NEW_PARENT | F_NEW_NAME,
    [FSM_OP_UNLINK] = F_PARENT | F_NAME,
    [FSM_OP_RMDIR] = F_PARENT | F_NAME,
    [FSM_OP_RENAME] = F_PARENT | F_NAME | F_NEW_PARENT | F_NEW_NAME | F_FLAGS,
    [FSM_OP_SETATTR] = F_INO | F_FLAGS | F_ATTR,
    [FSM_OP_WRITE] = F_INO | F_FLAGS | F_OFFSET | F_DATA,
    [FSM_OP_FALLOCATE] = F_INO | F_FLAGS | F_OFFSET | F_LENGTH,
    [FSM_OP_SETXATTR] = F_INO | F_NAME | F_FLAGS | F_DATA,
    [FSM_OP_REMOVEXATTR] = F_INO | F_NAME,
    [FSM_OP_RELEASE] = F_DATA,
};

static bool is_xattr_op(uint8_t type)
{
    return type == FSM_OP_SETXATTR || type == FSM_OP_REMOVEXATTR;
}

static int check_entry_name(const char *s, uint32_t len)
{
    if (len > FSM_NAME_MAX)
        return -ENAMETOOLONG;
    if (len == 0 || !s)
        return -EINVAL;
    if (memchr(s, '/', len) || memchr(s, '\0', len))
        return -EINVAL;
    if ((len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.'))
        return -EINVAL;
    return 0;
}

static int op_check(const struct fsm_op *op)
{
    if (op->type < 1 || op->type > FSM_OP_TYPE_MAX)
        return -EINVAL;
    uint16_t fl = op_fields[op->type];
    if (fl & F_NAME) {
        if (is_xattr_op(op->type)) {
            if (op->name_len == 0 || op->name_len > FSM_XATTR_NAME_MAX || !op->name ||
                memchr(op->name, '\0', op->name_len))
                return -EINVAL;
        } else {
            int rc = check_entry_name(op->name, op->name_len);
            if (rc != 0)
                return rc;
        }
    }
    if (fl & F_NEW_NAME) {
        int rc = check_entry_name(op->new_name, op->new_name_len);
        if (rc != 0)
            return rc;
    }
    if (fl & F_DATA) {
        if (op->data_len && !op->data)
            return -EINVAL;
        switch (op->type) {
        case FSM_OP_SYMLINK:
            if (op->data_len == 0 || op->data_len > FSM_SYMLINK_MAX ||
                memchr(op->data, '\0', op->data_len))
                return -EINVAL;
            break;
        case FSM_OP_SETXATTR:
            if (op->data_len > FSM_XATTR_VALUE_MAX)
                return -EINVAL;
            break;
        case FSM_OP_RELEASE:
            if (op->data_len % 8 != 0 || op->data_len > FSM_DATA_MAX)
                return -EINVAL;
            break;
        default:
            if (op->data_len > FSM_DATA_MAX)
                return -EINVAL;
            break;
        }
    }
    return 0;
}

static void put_str(struct buf *out, const void *p, uint32_t len)
{
    buf_put_u32(out, len);
    if (len)
        buf_put(out, p, len);
}

int fsm_op_encode(const struct fsm_op *op, struct buf *out)
{
    int rc = op_check(op);
    if (rc != 0)
        return rc;
    uint16_t fl = op_fields[op->type];
    buf_put_u8(out, OP_VERSION);
    buf_put_u8(out, op->type);
    buf_put_u32(out, op->node);
    buf_put_u32(out, op->uid);
    buf_put_u32(out, op->gid);
    buf_put_u64(out, (uint64_t)op->now_ns);
    if (fl & F_INO)
        buf_put_u64(out, op->ino);
    if (fl & F_PARENT)
        buf_put_u64(out, op->parent);
    if (fl & F_NEW_PARENT)
        buf_put_u64(out, op->new_parent);
    if (fl & F_NAME)
        put_str(out, op->name, op->name_len);
    if (fl & F_NEW_NAME)
        put_str(out, op->new_name, op->new_name_len);
    if (fl & F_MODE)
        buf_put_u32(out, op->mode);
    if (fl & F_RDEV)
        buf_put_u64(out, op->rdev);
    if (fl & F_FLAGS)
        buf_put_u32(out, op->flags);
    if (fl & F_OFFSET)
        buf_put_u64(out, op->offset);
    if (fl & F_LENGTH)
        buf_put_u64(out, op->length);
    if (fl & F_ATTR) {
        buf_put_u32(out, op->attr.mode);
        buf_put_u32(out, op->attr.uid);
        buf_put_u32(out, op->attr.gid);
        buf_put_u64(out, op->attr.size);
        buf_put_u64(out, (uint64_t)op->attr.atime_ns);
        buf_put_u64(out, (uint64_t)op->attr.mtime_ns);
        buf_put_u64(out, (uint64_t)op->attr.ctime_ns);
    }
    if (fl & F_DATA)
        put_str(out, op->data, op->data_len);
    return 0;
}

/* A length-prefixed string of at most max bytes; NULL (and the reader
 * failed) if it is longer or short. */
static const uint8_t *get_str(struct reader *r, uint32_t max, uint32_t *len)
{
    uint32_t n = get_u32(r);
    if (!reader_ok(r) || n > max) {
        r->err = true;
        return NULL;
    }
    *len = n;
    return n ? get_bytes(r, n) : NULL;
}

int fsm_op_decode(const uint8_t *p, size_t len, struct fsm_op *out)
{
    struct reader r;
    reader_init(&r, p, len);
    struct fsm_op op;
    memset(&op, 0, sizeof op);
    if (get_u8(&r) != OP_VERSION || !reader_ok(&r))
        return -EBADMSG;
    op.type = get_u8(&r);
    if (!reader_ok(&r) || op.type < 1 || op.type > FSM_OP_TYPE_MAX)
        return -EBADMSG;
    uint16_t fl = op_fields[op.type];
    op.node = get_u32(&r);
    op.uid = get_u32(&r);
    op.gid = get_u32(&r);
    op.now_ns = (int64_t)get_u64(&r);
    if (fl & F_INO)
        op.ino = get_u64(&r);
    if (fl & F_PARENT)
        op.parent = get_u64(&r);
    if (fl & F_NEW_PARENT)
        op.new_parent = get_u64(&r);
    /* Names are bounded here (past the bound the encoding is refused
     * anyway), so a huge length never reaches get_bytes. */
    if (fl & F_NAME)
        op.name = (const char *)get_str(&r, FSM_NAME_MAX, &op.name_len);
    if (fl & F_NEW_NAME)
        op.new_name = (const char *)get_str(&r, FSM_NAME_MAX, &op.new_name_len);
    if (fl & F_MODE)
        op.mode = get_u32(&r);
    if (fl & F_RDEV)
        op.rdev = get_u64(&r);
    if (fl & F_FLAGS)
        op.flags = get_u32(&r);
    if (fl & F_OFFSET)
        op.offset = get_u64(&r);
    if (fl & F_LENGTH)
        op.length = get_u64(&r);
    if (fl & F_ATTR) {
        op.attr.mode = get_u32(&r);
        op.attr.uid = get_u32(&r);
        op.attr.gid = get_u32(&r);
        op.attr.size = get_u64(&r);
        op.attr.atime_ns = (int64_t)get_u64(&r);
        op.attr.mtime_ns = (int64_t)get_u64(&r);
        op.attr.ctime_ns = (int64_t)get_u64(&r);
    }
    if (fl & F_DATA)
        op.data = get_str(&r, FSM_DATA_MAX, &op.data_len);
    if (!reader_ok(&r) || reader_left(&r) != 0)
        return -EBADMSG;
    if (op_check(&op) != 0)
        return -EBADMSG;
    *out = op;
    return 0;
}

/* ------------------------------------------------------------------ */
/* changes                                                             */

static void ch_inode(struct fsm_changes *c, uint64_t ino)
{
    if (!c)
        return;
    for (uint32_t i = 0; i < c->n_inodes; i++)
        if (c->inodes[i] == ino)
            return;
    if (c->n_inodes < FSM_CHANGES_MAX)
        c->inodes[c->n_inodes++] = ino;
    else
        c->overflow = true;
}

static void ch_entry(struct fsm_changes *c, uint64_t parent, const char *name, uint32_t len,
                     uint64_t ino)
{
    if (!c)
        return;
    if (c->n_entries >= ARRAY_LEN(c->entries)) {
        c->overflow = true;
        return;
    }
    ASSERT(len <= FSM_NAME_MAX);
    c->entries[c->n_entries].parent = parent;
    c->entries[c->n_entries].ino = ino;
    memcpy(c->entries[c->n_entries].name, name, len);
    c->entries[c->n_entries].name[len] = '\0';
    c->n_entries++;
}

/* ------------------------------------------------------------------ */
/* apply: namespace ops                                                */

/* A live directory (ENOENT if missing or removed, ENOTDIR if not a dir). */
static int live_dir(struct fsm *f, uint64_t ino, struct inode **out)
{
    struct inode *d = itab_get(f, ino);
    if (!d)
        return -ENOENT;
    if (!S_ISDIR(d->mode))
        return -ENOTDIR;
    if (d->nlink == 0)
        return -ENOENT;
    *out = d;
    return 0;
}

static void touch_dir(struct inode *d, int64_t now)
{
    d->mtime_ns = d->ctime_ns = now;
}

static int64_t op_create(struct fsm *f, const struct fsm_op *op, struct fsm_changes *ch)
{
    struct inode *dir;
    int rc = live_dir(f, op->parent, &dir);
    if (rc != 0)
        return rc;
    uint32_t mode;
    switch (op->type) {
    case FSM_OP_MKNOD: {
        uint32_t type = op->mode & S_IFMT;
        if (type == 0)
            type = S_IFREG;
        if (type != S_IFREG && type != S_IFCHR && type != S_IFBLK && type != S_IFIFO &&
            type != S_IFSOCK)
            return -EINVAL;
        mode = type | (op->mode & 07777);
        break;
    }
    case FSM_OP_MKDIR:
        /* Linux ignores set-id bits in mkdir's mode; S_ISGID comes from
         * the parent below. */
        mode = S_IFDIR | (op->mode & 01777);
        break;
    default:
        mode = S_IFLNK | 0777;
        break;
    }
    if (dir_find(&dir->u.dir, op->name, op->name_len))
        return -EEXIST;
    if (f->next_ino == UINT64_MAX)
        return -ENOSPC;
    if (S_ISDIR(mode) && dir->nlink == UINT32_MAX)
        return -EMLINK;
    uint32_t gid = op->gid;
    if (dir->mode & S_ISGID) {
        gid = dir->gid;
        if (S_ISDIR(mode))
            mode |= S_ISGID;
    }
    struct inode *in = inode_new(f, mode, op->uid, gid, op->now_ns);
    switch (mode & S_IFMT) {
    case S_IFDIR:
        in->nlink = 2;
        in->parent = dir->ino;
        dir->nlink++;
        break;
    case S_IFLNK:
        in->nlink = 1;
        in->u.link.target = xmalloc(op->data_len + 1);
        memcpy(in->u.link.target, op->data, op->data_len);
        in->u.link.target[op->data_len] = '\0';
        in->size = op->data_len;
        break;
    case S_IFCHR:
    case S_IFBLK:
        in->nlink = 1;
        in->rdev = op->rdev;
        break;
    default:
        in->nlink = 1;
        break;
    }
    dir_add(&dir->u.dir, op->name, op->name_len, in->ino);
    touch_dir(dir, op->now_ns);
    ch_inode(ch, dir->ino);
    ch_entry(ch, dir->ino, op->name, op->name_len, in->ino);
    return (int64_t)in->ino;
}

static int64_t op_link(struct fsm *f, const struct fsm_op *op, struct fsm_changes *ch)
{
    struct inode *in = itab_get(f, op->ino);
    if (!in || in->nlink == 0)
        return -ENOENT;
    if (S_ISDIR(in->mode))
        return -EPERM;
    struct inode *dir;
    int rc = live_dir(f, op->new_parent, &dir);
    if (rc != 0)
        return rc;
    if (dir_find(&dir->u.dir, op->new_name, op->new_name_len))
        return -EEXIST;
    if (in->nlink == UINT32_MAX)
        return -EMLINK;
    in->nlink++;
    in->ctime_ns = op->now_ns;
    dir_add(&dir->u.dir, op->new_name, op->new_name_len, in->ino);
    touch_dir(dir, op->now_ns);
    ch_inode(ch, in->ino);
    ch_inode(ch, dir->ino);
    ch_entry(ch, dir->ino, op->new_name, op->new_name_len, in->ino);
    return 0;
}

/* One name of victim (in parent) is gone: fix the link counts and orphan
 * the victim when it has no name left. */
static void drop_name(struct fsm *f, struct inode *parent, struct inode *victim, int64_t now)
{
    if (S_ISDIR(victim->mode)) {
        victim->nlink = 0;
        parent->nlink--;
    } else {
        victim->nlink--;
    }
    victim->ctime_ns = now;
    if (victim->nlink == 0)
        orphan_make(f, victim);
}

static int64_t op_remove(struct fsm *f, const struct fsm_op *op, struct fsm_changes *ch)
{
    struct inode *dir;
    int rc = live_dir(f, op->parent, &dir);
    if (rc != 0)
        return rc;
    struct dent *e = dir_find(&dir->u.dir, op->name, op->name_len);
    if (!e)
        return -ENOENT;
    struct inode *in = itab_get(f, e->ino);
    ASSERT(in);
    if (op->type == FSM_OP_UNLINK && S_ISDIR(in->mode))
        return -EISDIR;
    if (op->type == FSM_OP_RMDIR) {
        if (!S_ISDIR(in->mode))
            return -ENOTDIR;
        if (in->u.dir.n)
            return -ENOTEMPTY;
    }
    dir_del(&dir->u.dir, e);
    drop_name(f, dir, in, op->now_ns);
    touch_dir(dir, op->now_ns);
    ch_inode(ch, dir->ino);
    ch_inode(ch, in->ino);
    ch_entry(ch, dir->ino, op->name, op->name_len, 0);
    return 0;
}

/* True if anc is dir or one of its ancestors. */
static bool is_ancestor(const struct fsm *f, uint64_t anc, uint64_t dir)
{
    uint64_t cur = dir;
    for (uint64_t k = 0; k <= f->n_inodes; k++) {
        if (cur == anc)
            return true;
        if (cur == FSM_ROOT_INO)
            return false;
        const struct inode *in = itab_get(f, cur);
        if (NEVER(!in))
            return false;
        cur = in->parent;
    }
    ASSERT(!"directory parent chain has a cycle");
    return false;
}

static void rename_exchange(struct inode *sp, struct dent *se, struct inode *src,
                            struct inode *dp, struct dent *de, struct inode *dst)
{
    se->ino = dst->ino;
    de->ino = src->ino;
    if (sp != dp) {
        if (S_ISDIR(src->mode)) {
            sp->nlink--;
            dp->nlink++;
            src->parent = dp->ino;
        }
        if (S_ISDIR(dst->mode)) {
            dp->nlink--;
            sp->nlink++;
            dst->parent = sp->ino;
        }
    }
}

static int64_t op_rename(struct fsm *f, const struct fsm_op *op, struct fsm_changes *ch)
{
    uint32_t fl = op->flags;
    if (fl & ~(uint32_t)(RENAME_NOREPLACE | RENAME_EXCHANGE))
        return -EINVAL;
    if ((fl & RENAME_NOREPLACE) && (fl & RENAME_EXCHANGE))
        return -EINVAL;
    struct inode *sp, *dp;
    int rc = live_dir(f, op->parent, &sp);
    if (rc != 0)
        return rc;
    rc = live_dir(f, op->new_parent, &dp);
    if (rc != 0)
        return rc;
    struct dent *se = dir_find(&sp->u.dir, op->name, op->name_len);
    if (!se)
        return -ENOENT;
    struct dent *de = dir_find(&dp->u.dir, op->new_name, op->new_name_len);
    struct inode *src = itab_get(f, se->ino);
    struct inode *dst = de ? itab_get(f, de->ino) : NULL;
    ASSERT(src && (!de || dst));
    bool exchange = fl & RENAME_EXCHANGE;
    if (exchange && !de)
        return -ENOENT;
    if (!exchange && de && (fl & RENAME_NOREPLACE))
        return -EEXIST;
    if (de && de->ino == se->ino)
        return 0; /* two names of one inode: POSIX says do nothing */
    if (S_ISDIR(src->mode) && is_ancestor(f, src->ino, dp->ino))
        return -EINVAL;
    if (exchange) {
        if (S_ISDIR(dst->mode) && is_ancestor(f, dst->ino, sp->ino))
            return -EINVAL;
        rename_exchange(sp, se, src, dp, de, dst);
        dst->ctime_ns = op->now_ns;
    } else {
        if (dst) {
            if (S_ISDIR(src->mode) && !S_ISDIR(dst->mode))
                return -ENOTDIR;
            if (!S_ISDIR(src->mode) && S_ISDIR(dst->mode))
                return -EISDIR;
            if (S_ISDIR(dst->mode) && dst->u.dir.n)
                return -ENOTEMPTY;
            dir_del(&dp->u.dir, de);
            drop_name(f, dp, dst, op->now_ns);
        }
        dir_del(&sp->u.dir, se);
        dir_add(&dp->u.dir, op->new_name, op->new_name_len, src->ino);
        if (S_ISDIR(src->mode) && sp != dp) {
            sp->nlink--;
            dp->nlink++;
            src->parent = dp->ino;
        }
    }
    src->ctime_ns = op->now_ns;
    touch_dir(sp, op->now_ns);
    touch_dir(dp, op->now_ns);
    ch_inode(ch, sp->ino);
    ch_inode(ch, dp->ino);
    ch_inode(ch, src->ino);
    if (dst)
        ch_inode(ch, dst->ino);
    ch_entry(ch, sp->ino, op->name, op->name_len, exchange ? dst->ino : 0);
    ch_entry(ch, dp->ino, op->new_name, op->new_name_len, src->ino);
    return 0;
}

/* ------------------------------------------------------------------ */
/* apply: attributes and data                                          */

#define SET_ALL                                                                          \
    (FSM_SET_MODE | FSM_SET_UID | FSM_SET_GID | FSM_SET_SIZE | FSM_SET_ATIME | FSM_SET_MTIME | \
     FSM_SET_CTIME | FSM_SET_ATIME_NOW | FSM_SET_MTIME_NOW)

static int64_t op_setattr(struct fsm *f, const struct fsm_op *op, struct fsm_changes *ch)
{
    struct inode *in = itab_get(f, op->ino);
    if (!in)
        return -ENOENT;
    uint32_t m = op->flags;
    if (m & ~(uint32_t)SET_ALL)
        return -EINVAL;
    bool size_changed = false;
    if (m & FSM_SET_SIZE) {
        if (S_ISDIR(in->mode))
            return -EISDIR;
        if (!S_ISREG(in->mode))
            return -EINVAL;
        if (op->attr.size > FSM_FILE_SIZE_MAX)
            return -EFBIG;
        size_changed = op->attr.size != in->size;
        int rc = file_truncate(f, in, op->attr.size); /* the only step that can fail */
        if (rc != 0)
            return rc;
    }
    if (m & FSM_SET_MODE) {
        in->mode = (in->mode & S_IFMT) | (op->attr.mode & 07777);
    } else {
        /* An explicit mode in the same op is what the kernel computed
         * already; otherwise apply Linux's rules here. */
        if ((m & (FSM_SET_UID | FSM_SET_GID)) && !S_ISDIR(in->mode))
            kill_suid(in);
        if ((m & FSM_SET_SIZE) && op->uid != 0)
            kill_suid(in);
    }
    if (m & FSM_SET_UID)
        in->uid = op->attr.uid;
    if (m & FSM_SET_GID)
        in->gid = op->attr.gid;
    if (m & FSM_SET_ATIME_NOW)
        in->atime_ns = op->now_ns;
    else if (m & FSM_SET_ATIME)
        in->atime_ns = op->attr.atime_ns;
    if (m & FSM_SET_MTIME_NOW)
        in->mtime_ns = op->now_ns;
    else if (m & FSM_SET_MTIME)
        in->mtime_ns = op->attr.mtime_ns;
    else if (size_changed)
        in->mtime_ns = op->now_ns;
    in->ctime_ns = (m & FSM_SET_CTIME) ? op->attr.ctime_ns : op->now_ns;
    ch_inode(ch, in->ino);
    return 0;
}

/* A regular file to change the data of. */
static int data_inode(struct fsm *f, uint64_t ino, struct inode **out)
{
    struct inode *in = itab_get(f, ino);
    if (!in)
        return -ENOENT;
    if (S_ISDIR(in->mode))
        return -EISDIR;
    if (!S_ISREG(in->mode))
        return -EINVAL;
    *out = in;
    return 0;
}

/* WRITE with FSM_WRITE_BLOCKS (fsm.h): whole blocks, encoded by the
 * proposer. Parses the whole list first (so a bad one changes nothing),
 * then stores every block, then maps them. */
static int64_t op_write_blocks(struct fsm *f, struct inode *in, const struct fsm_op *op,
                               struct fsm_changes *ch)
{
    if (op->flags != FSM_WRITE_BLOCKS || op->offset % f->bs != 0)
        return -EINVAL;
    struct reader r;
    size_t count = 0;
    reader_init(&r, op->data, op->data_len);
    for (; reader_left(&r) > 0 && count <= FSM_DATA_MAX / FSM_WRITE_BLOCK_ENTRY_HDR; count++) {
        struct store_name name;
        const uint8_t *name_bytes = get_bytes(&r, STORE_NAME_LEN);
        uint32_t len = get_u32(&r);
        const uint8_t *file = get_bytes(&r, len);
        struct store_block_hdr h;
        if (!reader_ok(&r))
            return -EINVAL;
        memcpy(name.b, name_bytes, STORE_NAME_LEN);
        if (len == 0 ? !store_name_is_none(&name)
                     : store_name_is_none(&name) || store_block_hdr_decode(file, len, &h) != 0 ||
                           h.plain_len != f->bs)
            return -EINVAL;
    }
    if (count == 0 || reader_left(&r) > 0)
        return -EINVAL;
    uint64_t n = (uint64_t)count * f->bs;
    if (op->offset > FSM_FILE_SIZE_MAX || n > FSM_FILE_SIZE_MAX - op->offset)
        return -EFBIG;
    struct pend *p = xcalloc(count, sizeof *p);
    reader_init(&r, op->data, op->data_len);
    for (size_t k = 0; k < count; k++) {
        memcpy(p[k].name.b, get_bytes(&r, STORE_NAME_LEN), STORE_NAME_LEN);
        uint32_t len = get_u32(&r);
        const uint8_t *file = get_bytes(&r, len);
        p[k].index = op->offset / f->bs + k;
        p[k].len = len ? f->bs : 0;
        if (len == 0)
            continue;
        int rc = store_put_encoded_trusted(f->store, &p[k].name, file, len);
        if (rc != 0) {
            LOG_E("fsm: cannot store block ino=%llu index=%llu rc=%d "
                  "(this replica may diverge; fsck repairs it)",
                  (unsigned long long)in->ino, (unsigned long long)p[k].index, rc);
            pend_undo(f, p, k);
            free(p);
            return -EIO;
        }
    }
    for (size_t k = 0; k < count; k++)
        bmap_set(f, in, &p[k]);
    free(p);
    in->size = MAX(in->size, op->offset + n);
    in->mtime_ns = in->ctime_ns = op->now_ns;
    if (op->uid != 0)
        kill_suid(in);
    ch_inode(ch, in->ino);
    return (int64_t)n;
}

static int64_t op_write(struct fsm *f, const struct fsm_op *op, struct fsm_changes *ch)
{
    struct inode *in;
    int rc = data_inode(f, op->ino, &in);
    if (rc != 0)
        return rc;
    if (op->flags & FSM_WRITE_BLOCKS)
        return op_write_blocks(f, in, op, ch);
    if (op->flags & ~FSM_WRITE_APPEND)
        return -EINVAL;
    /* O_APPEND takes the size at apply, so appenders on different hosts
     * never overwrite each other. */
    uint64_t off = (op->flags & FSM_WRITE_APPEND) ? in->size : op->offset;
    uint32_t n = op->data_len;
    if (n == 0)
        return 0;
    if (off > FSM_FILE_SIZE_MAX || n > FSM_FILE_SIZE_MAX - off)
        return -EFBIG;
    uint64_t end = off + n;
    uint64_t new_size = MAX(in->size, end);
    uint64_t first = off / f->bs, last = (end - 1) / f->bs;
    size_t count = (size_t)(last - first + 1);
    struct pend *p = xcalloc(count, sizeof *p);
    for (size_t k = 0; k < count; k++) {
        uint64_t idx = first + k;
        uint64_t bstart = idx * f->bs;
        uint32_t lo = idx == first ? (uint32_t)(off - bstart) : 0;
        uint32_t hi = idx == last ? (uint32_t)(end - bstart) : f->bs;
        uint32_t new_len = (uint32_t)MIN((uint64_t)f->bs, new_size - bstart);
        rc = block_build(f, in, idx, new_len, lo, op->data + (bstart + lo - off), hi - lo, &p[k]);
        if (rc != 0) {
            pend_undo(f, p, k);
            free(p);
            return rc;
        }
    }
    for (size_t k = 0; k < count; k++)
        bmap_set(f, in, &p[k]);
    free(p);
    in->size = new_size;
    in->mtime_ns = in->ctime_ns = op->now_ns;
    if (op->uid != 0)
        kill_suid(in);
    ch_inode(ch, in->ino);
    return n;
}

static int64_t op_fallocate(struct fsm *f, const struct fsm_op *op, struct fsm_changes *ch)
{
    struct inode *in;
    int rc = data_inode(f, op->ino, &in);
    if (rc != 0)
        return rc;
    if (op->length == 0)
        return -EINVAL;
    if (op->offset > FSM_FILE_SIZE_MAX || op->length > FSM_FILE_SIZE_MAX - op->offset)
        return -EFBIG;
    uint64_t end = op->offset + op->length;
    switch (op->flags) {
    case 0:
        /* No blocks are reserved: a hole reads as zeros and costs nothing. */
        if (end > in->size) {
            in->size = end;
            in->mtime_ns = in->ctime_ns = op->now_ns;
            ch_inode(ch, in->ino);
        }
        return 0;
    case FALLOC_FL_KEEP_SIZE:
        return 0;
    case FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE:
        if (op->offset >= in->size)
            return 0;
        rc = file_zero(f, in, op->offset, MIN(end, in->size));
        if (rc != 0)
            return rc;
        in->mtime_ns = in->ctime_ns = op->now_ns;
        ch_inode(ch, in->ino);
        return 0;
    default:
        return -EOPNOTSUPP;
    }
}

/* ------------------------------------------------------------------ */
/* apply: xattrs                                                       */

static int xattr_cmp(const char *a, uint32_t alen, const char *b, uint32_t blen)
{
    int c = memcmp(a, b, MIN(alen, blen));
    if (c != 0)
        return c;
    return alen < blen ? -1 : alen > blen ? 1 : 0;
}

/* Position of name in in->xattrs, or where it would go (*found false). */
static uint32_t xattr_pos(const struct inode *in, const char *name, uint32_t len, bool *found)
{
    uint32_t lo = 0, hi = in->n_xattrs;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c = xattr_cmp(in->xattrs[mid].name, in->xattrs[mid].name_len, name, len);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

static int64_t op_setxattr(struct fsm *f, const struct fsm_op *op, struct fsm_changes *ch)
{
    struct inode *in = itab_get(f, op->ino);
    if (!in)
        return -ENOENT;
    if (op->flags & ~(uint32_t)(XATTR_CREATE | XATTR_REPLACE))
        return -EINVAL;
    bool found;
    uint32_t pos = xattr_pos(in, op->name, op->name_len, &found);
    if (found && (op->flags & XATTR_CREATE))
        return -EEXIST;
    if (!found && (op->flags & XATTR_REPLACE))
        return -ENODATA;
    uint64_t names = 0, values = 0;
    for (uint32_t i = 0; i < in->n_xattrs; i++) {
        if (found && i == pos)
            continue;
        names += in->xattrs[i].name_len + 1;
        values += in->xattrs[i].value_len;
    }
    if (names + op->name_len + 1 > XATTR_LIST_BYTES_MAX ||
        values + op->data_len > XATTR_VALUE_BYTES_MAX)
        return -ENOSPC;
    uint8_t *value = xmalloc(op->data_len);
    if (op->data_len)
        memcpy(value, op->data, op->data_len);
    if (found) {
        free(in->xattrs[pos].value);
    } else {
        in->xattrs = xrealloc(in->xattrs, (in->n_xattrs + 1) * sizeof *in->xattrs);
        memmove(in->xattrs + pos + 1, in->xattrs + pos,
                (in->n_xattrs - pos) * sizeof *in->xattrs);
        in->n_xattrs++;
        in->xattrs[pos].name = xmalloc(op->name_len + 1);
        memcpy(in->xattrs[pos].name, op->name, op->name_len);
        in->xattrs[pos].name[op->name_len] = '\0';
        in->xattrs[pos].name_len = op->name_len;
    }
    in->xattrs[pos].value = value;
    in->xattrs[pos].value_len = op->data_len;
    in->ctime_ns = op->now_ns;
    ch_inode(ch, in->ino);
    return 0;
}

static int64_t op_removexattr(struct fsm *f, const struct fsm_op *op, struct fsm_changes *ch)
{
    struct inode *in = itab_get(f, op->ino);
    if (!in)
        return -ENOENT;
    bool found;
    uint32_t pos = xattr_pos(in, op->name, op->name_len, &found);
    if (!found)
        return -ENODATA;
    free(in->xattrs[pos].name);
    free(in->xattrs[pos].value);
    memmove(in->xattrs + pos, in->xattrs + pos + 1,
            (in->n_xattrs - pos - 1) * sizeof *in->xattrs);
    in->n_xattrs--;
    in->ctime_ns = op->now_ns;
    ch_inode(ch, in->ino);
    return 0;
}

/* ------------------------------------------------------------------ */
/* apply: orphan release                                               */

static int64_t op_release(struct fsm *f, const struct fsm_op *op)
{
    if (op->node < 1 || op->node > f->n_nodes)
        return -EINVAL;
    uint32_t bit = 1u << (op->node - 1);
    size_t n = op->data_len / 8;
    for (size_t i = 0; i < n; i++) {
        struct inode *in = itab_get(f, le_get_u64(op->data + i * 8));
        /* Not an orphan (any more): a stale or duplicate release. */
        if (!in || !in->orphan || !(in->release_mask & bit))
            continue;
        in->release_mask &= ~bit;
        if (in->release_mask == 0)
            inode_release_free(f, in);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* public: life cycle and apply                                        */

int fsm_new(struct store *store, uint32_t n_nodes, struct fsm **out)
{
    if (!store || n_nodes < 1 || n_nodes > FSM_NODES_MAX)
        return -EINVAL;
    struct fsm *f = xcalloc(1, sizeof *f);
    if (pthread_rwlock_init(&f->lock, NULL) != 0) {
        free(f);
        return -ENOMEM;
    }
    f->store = store;
    f->n_nodes = n_nodes;
    f->bs = store_block_size(store);
    f->scratch = xmalloc(f->bs);
    f->itab_cap = 64;
    f->itab = xcalloc(f->itab_cap, sizeof *f->itab);
    f->next_ino = FSM_ROOT_INO;
    /* The root: owned by root, 0755, timestamps 0 (no clock at apply). */
    struct inode *root = inode_new(f, S_IFDIR | 0755, 0, 0, 0);
    ASSERT(root->ino == FSM_ROOT_INO);
    root->nlink = 2;
    root->parent = FSM_ROOT_INO;
    *out = f;
    return 0;
}

void fsm_free(struct fsm *f)
{
    if (!f)
        return;
    /* Drops this fsm's store references too, so that the store's counts
     * remain the sum over the fsms that use it. */
    for (uint64_t i = 0; i < f->itab_cap; i++)
        if (f->itab[i])
            inode_destroy(f, f->itab[i]);
    free(f->itab);
    free(f->orphans);
    free(f->scratch);
    pthread_rwlock_destroy(&f->lock);
    free(f);
}

static int64_t apply_op(struct fsm *f, const struct fsm_op *op, struct fsm_changes *ch)
{
    switch (op->type) {
    case FSM_OP_MKNOD:
    case FSM_OP_MKDIR:
    case FSM_OP_SYMLINK:
        return op_create(f, op, ch);
    case FSM_OP_LINK:
        return op_link(f, op, ch);
    case FSM_OP_UNLINK:
    case FSM_OP_RMDIR:
        return op_remove(f, op, ch);
    case FSM_OP_RENAME:
        return op_rename(f, op, ch);
    case FSM_OP_SETATTR:
        return op_setattr(f, op, ch);
    case FSM_OP_WRITE:
        return op_write(f, op, ch);
    case FSM_OP_FALLOCATE:
        return op_fallocate(f, op, ch);
    case FSM_OP_SETXATTR:
        return op_setxattr(f, op, ch);
    case FSM_OP_REMOVEXATTR:
        return op_removexattr(f, op, ch);
    case FSM_OP_RELEASE:
        return op_release(f, op);
    default:
        return -EBADMSG; /* decode refuses these */
    }
}

int64_t fsm_apply(struct fsm *f, const uint8_t *data, size_t len, struct fsm_changes *changes)
{
    if (changes)
        memset(changes, 0, sizeof *changes);
    struct fsm_op op;
    int rc = fsm_op_decode(data, len, &op);
    if (rc != 0)
        return rc;
    pthread_rwlock_wrlock(&f->lock);
    int64_t res = apply_op(f, &op, changes);
    pthread_rwlock_unlock(&f->lock);
    if (res < 0 && changes)
        memset(changes, 0, sizeof *changes);
    return res;
}

/* ------------------------------------------------------------------ */
/* public: reads                                                       */

int fsm_lookup(struct fsm *f, uint64_t parent, const char *name, struct fsm_attr *out)
{
    size_t len = strnlen(name, FSM_NAME_MAX + 1);
    if (len > FSM_NAME_MAX)
        return -ENAMETOOLONG;
    if (len == 0)
        return -ENOENT;
    pthread_rwlock_rdlock(&f->lock);
    int rc = 0;
    const struct inode *d = itab_get(f, parent);
    const struct inode *in = NULL;
    if (!d) {
        rc = -ENOENT;
    } else if (!S_ISDIR(d->mode)) {
        rc = -ENOTDIR;
    } else if (strcmp(name, ".") == 0) {
        in = d;
    } else if (strcmp(name, "..") == 0) {
        in = itab_get(f, d->parent);
        if (!in)
            rc = -ENOENT;
    } else {
        const struct dent *e = dir_find(&d->u.dir, name, len);
        if (!e)
            rc = -ENOENT;
        else
            in = itab_get(f, e->ino);
        ASSERT(rc != 0 || in);
    }
    if (rc == 0)
        attr_fill(in, out);
    pthread_rwlock_unlock(&f->lock);
    return rc;
}

int fsm_getattr(struct fsm *f, uint64_t ino, struct fsm_attr *out)
{
    pthread_rwlock_rdlock(&f->lock);
    const struct inode *in = itab_get(f, ino);
    if (in)
        attr_fill(in, out);
    pthread_rwlock_unlock(&f->lock);
    return in ? 0 : -ENOENT;
}

int fsm_readdir(struct fsm *f, uint64_t ino, uint64_t cookie, fsm_dirent_fn fn, void *ctx)
{
    pthread_rwlock_rdlock(&f->lock);
    int rc = 0;
    const struct inode *d = itab_get(f, ino);
    if (!d) {
        rc = -ENOENT;
        goto out;
    }
    if (!S_ISDIR(d->mode)) {
        rc = -ENOTDIR;
        goto out;
    }
    if (cookie < COOKIE_DOT && fn(ctx, ".", d->ino, d->mode, COOKIE_DOT) != 0)
        goto out;
    if (cookie < COOKIE_DOTDOT) {
        const struct inode *p = itab_get(f, d->parent);
        if (!p)
            p = d; /* an rmdir'd directory whose parent is gone too */
        if (fn(ctx, "..", p->ino, p->mode, COOKIE_DOTDOT) != 0)
            goto out;
    }
    const struct dir *dd = &d->u.dir;
    for (uint32_t i = dir_order_after(dd, cookie); i < dd->order_len; i++) {
        const struct dent *e = dd->order[i].d;
        if (!e)
            continue;
        const struct inode *in = itab_get(f, e->ino);
        ASSERT(in);
        if (fn(ctx, e->name, e->ino, in->mode, e->cookie) != 0)
            break;
    }
out:
    pthread_rwlock_unlock(&f->lock);
    return rc;
}

/* Copies bytes [lo, hi) of block e into dst, zeros past its length. */
static int read_block(struct fsm *f, const struct inode *in, const struct bent *e, uint32_t lo,
                      uint32_t hi, uint8_t *dst, uint8_t **tmp)
{
    uint32_t n = hi - lo;
    if (lo >= e->len) {
        memset(dst, 0, n);
        return 0;
    }
    size_t got = 0;
    int rc;
    uint32_t have;
    if (lo == 0 && n >= e->len) {
        rc = store_get(f->store, &e->name, dst, n, &got);
        have = e->len;
    } else {
        if (!*tmp)
            *tmp = xmalloc(f->bs);
        rc = store_get(f->store, &e->name, *tmp, f->bs, &got);
        have = MIN(e->len, hi) - lo;
        if (rc == 0 && got == e->len)
            memcpy(dst, *tmp + lo, have);
    }
    if (rc != 0 || got != e->len) {
        char hex[STORE_NAME_HEX_LEN + 1];
        store_name_hex(&e->name, hex);
        LOG_E("fsm: block unreadable ino=%llu index=%llu name=%s rc=%d",
              (unsigned long long)in->ino, (unsigned long long)e->index, hex, rc);
        return -EIO;
    }
    memset(dst + have, 0, n - have);
    return 0;
}

int fsm_read(struct fsm *f, uint64_t ino, uint64_t off, size_t len, void *buf, size_t *got)
{
    pthread_rwlock_rdlock(&f->lock);
    int rc = 0;
    uint8_t *tmp = NULL;
    const struct inode *in = itab_get(f, ino);
    if (!in) {
        rc = -ENOENT;
        goto out;
    }
    if (S_ISDIR(in->mode)) {
        rc = -EISDIR;
        goto out;
    }
    if (!S_ISREG(in->mode)) {
        rc = -EINVAL;
        goto out;
    }
    size_t n = off >= in->size ? 0 : (size_t)MIN((uint64_t)len, in->size - off);
    uint8_t *dst = buf;
    uint64_t pos = off, end = off + n;
    while (pos < end) {
        uint64_t idx = pos / f->bs;
        uint64_t bstart = idx * f->bs;
        uint32_t lo = (uint32_t)(pos - bstart);
        uint32_t hi = (uint32_t)MIN((uint64_t)f->bs, end - bstart);
        const struct bent *e = bmap_find(in, idx);
        if (!e) {
            memset(dst, 0, hi - lo);
        } else {
            rc = read_block(f, in, e, lo, hi, dst, &tmp);
            if (rc != 0)
                goto out;
        }
        dst += hi - lo;
        pos += hi - lo;
    }
    *got = n;
out:
    pthread_rwlock_unlock(&f->lock);
    free(tmp);
    return rc;
}

int fsm_readlink(struct fsm *f, uint64_t ino, char *buf, size_t cap, size_t *len)
{
    pthread_rwlock_rdlock(&f->lock);
    int rc = 0;
    const struct inode *in = itab_get(f, ino);
    if (!in)
        rc = -ENOENT;
    else if (!S_ISLNK(in->mode))
        rc = -EINVAL;
    else if (cap < in->size)
        rc = -ERANGE;
    else {
        memcpy(buf, in->u.link.target, in->size);
        if (cap > in->size)
            buf[in->size] = '\0';
        *len = in->size;
    }
    pthread_rwlock_unlock(&f->lock);
    return rc;
}

int fsm_getxattr(struct fsm *f, uint64_t ino, const char *name, void *buf, size_t cap, size_t *len)
{
    size_t nlen = strnlen(name, FSM_XATTR_NAME_MAX + 1);
    if (nlen == 0 || nlen > FSM_XATTR_NAME_MAX)
        return -ENODATA;
    pthread_rwlock_rdlock(&f->lock);
    int rc = 0;
    const struct inode *in = itab_get(f, ino);
    bool found = false;
    uint32_t pos = in ? xattr_pos(in, name, (uint32_t)nlen, &found) : 0;
    if (!in) {
        rc = -ENOENT;
    } else if (!found) {
        rc = -ENODATA;
    } else {
        const struct xattr *x = &in->xattrs[pos];
        if (cap == 0) {
            *len = x->value_len;
        } else if (cap < x->value_len) {
            rc = -ERANGE;
        } else {
            if (x->value_len)
                memcpy(buf, x->value, x->value_len);
            *len = x->value_len;
        }
    }
    pthread_rwlock_unlock(&f->lock);
    return rc;
}

int fsm_listxattr(struct fsm *f, uint64_t ino, char *buf, size_t cap, size_t *len)
{
    pthread_rwlock_rdlock(&f->lock);
    int rc = 0;
    const struct inode *in = itab_get(f, ino);
    if (!in) {
        rc = -ENOENT;
        goto out;
    }
    size_t total = 0;
    for (uint32_t i = 0; i < in->n_xattrs; i++)
        total += in->xattrs[i].name_len + 1;
    if (cap == 0) {
        *len = total;
        goto out;
    }
    if (cap < total) {
        rc = -ERANGE;
        goto out;
    }
    size_t w = 0;
    for (uint32_t i = 0; i < in->n_xattrs; i++) {
        memcpy(buf + w, in->xattrs[i].name, in->xattrs[i].name_len + 1);
        w += in->xattrs[i].name_len + 1;
    }
    *len = total;
out:
    pthread_rwlock_unlock(&f->lock);
    return rc;
}

void fsm_statfs(struct fsm *f, struct fsm_statfs *out)
{
    pthread_rwlock_rdlock(&f->lock);
    out->inodes = f->n_inodes;
    out->bytes_stored = f->bytes_stored;
    pthread_rwlock_unlock(&f->lock);
}

size_t fsm_orphans_held(struct fsm *f, uint32_t node, uint64_t *out, size_t cap)
{
    if (node < 1 || node > FSM_NODES_MAX)
        return 0;
    uint32_t bit = 1u << (node - 1);
    size_t count = 0;
    pthread_rwlock_rdlock(&f->lock);
    for (size_t i = 0; i < f->n_orphans; i++) {
        const struct inode *in = itab_get(f, f->orphans[i]);
        ASSERT(in && in->orphan);
        if (!(in->release_mask & bit))
            continue;
        if (count < cap)
            out[count] = in->ino;
        count++;
    }
    pthread_rwlock_unlock(&f->lock);
    return count;
}

/* ------------------------------------------------------------------ */
/* digest                                                              */

struct dg {
    uint64_t h;
};

static void dg_u64(struct dg *d, uint64_t v)
{
    d->h = mix64(d->h ^ mix64(v + 0x9e3779b97f4a7c15ull));
}

static void dg_bytes(struct dg *d, const void *p, size_t n)
{
    const uint8_t *b = p;
    dg_u64(d, n);
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        dg_u64(d, le_get_u64(b + i));
    if (i < n) {
        uint8_t t[8] = {0};
        memcpy(t, b + i, n - i);
        dg_u64(d, le_get_u64(t));
    }
}

static int ino_cmp(const void *a, const void *b)
{
    uint64_t x = (*(struct inode *const *)a)->ino, y = (*(struct inode *const *)b)->ino;
    return x < y ? -1 : x > y;
}

static void dg_inode(struct dg *d, const struct inode *in)
{
    dg_u64(d, in->ino);
    dg_u64(d, in->mode);
    dg_u64(d, in->nlink);
    dg_u64(d, in->uid);
    dg_u64(d, in->gid);
    dg_u64(d, in->rdev);
    dg_u64(d, in->size);
    dg_u64(d, (uint64_t)in->atime_ns);
    dg_u64(d, (uint64_t)in->mtime_ns);
    dg_u64(d, (uint64_t)in->ctime_ns);
    dg_u64(d, in->parent);
    dg_u64(d, in->orphan);
    dg_u64(d, in->release_mask);
    dg_u64(d, in->n_xattrs);
    for (uint32_t i = 0; i < in->n_xattrs; i++) {
        dg_bytes(d, in->xattrs[i].name, in->xattrs[i].name_len);
        dg_bytes(d, in->xattrs[i].value, in->xattrs[i].value_len);
    }
    if (S_ISDIR(in->mode)) {
        const struct dir *dd = &in->u.dir;
        dg_u64(d, dd->next_cookie);
        dg_u64(d, dd->n);
        for (uint32_t i = 0; i < dd->order_len; i++) {
            const struct dent *e = dd->order[i].d;
            if (!e)
                continue;
            dg_u64(d, e->cookie);
            dg_u64(d, e->ino);
            dg_bytes(d, e->name, e->name_len);
        }
    } else if (S_ISREG(in->mode)) {
        dg_u64(d, in->u.file.n);
        for (uint32_t i = 0; i < in->u.file.n; i++) {
            const struct bent *e = &in->u.file.map[i];
            dg_u64(d, e->index);
            dg_u64(d, e->len);
            dg_bytes(d, e->name.b, STORE_NAME_LEN);
        }
    } else if (S_ISLNK(in->mode)) {
        dg_bytes(d, in->u.link.target, in->size);
    }
}

uint64_t fsm_digest(struct fsm *f)
{
    pthread_rwlock_rdlock(&f->lock);
    struct inode **all = xmalloc(f->n_inodes * sizeof *all);
    uint64_t n = 0;
    for (uint64_t i = 0; i < f->itab_cap; i++)
        if (f->itab[i])
            all[n++] = f->itab[i];
    ASSERT(n == f->n_inodes);
    qsort(all, n, sizeof *all, ino_cmp);
    struct dg d = {.h = 0x7061786673ull}; /* "paxfs" */
    dg_u64(&d, f->next_ino);
    dg_u64(&d, f->n_nodes);
    dg_u64(&d, n);
    for (uint64_t i = 0; i < n; i++)
        dg_inode(&d, all[i]);
    free(all);
    pthread_rwlock_unlock(&f->lock);
    return d.h;
}
