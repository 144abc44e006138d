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
 * reading. The store is thread-safe on its own.
 *
 * Snapshots: fsm_image_begin and _finish write the state as an image
 * (layout in fsm.h) in inode order, copy-on-write per inode (struct
 * capture), so applies go on while it is encoded. fsm_image_restore decodes an
 * image into a separate state with no lock held, checks it, and only then
 * swaps it in under the write lock. The decoder refuses every state that
 * apply asserts on or silently relies on (the tree shape of invariant 2,
 * the orphan rules of invariant 5, no fewer links than names), so a restored
 * state can never crash a later apply; link counts that are merely wrong it
 * accepts, and fsm_check, which re-checks every invariant above, reports
 * them. fsm_digest hashes the per-inode digests, which hash each inode's
 * image record: one encoding defines what replicas must agree on. */
#include "fs/fsm.h"

#include "fs/store.h"

#include "base/assert.h"
#include "base/buf.h"
#include "base/crc32c.h"
#include "base/log.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
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
    uint64_t image_gen;  /* == capture.gen: this inode's record is taken */
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

/* An image in the making (fsm_image_begin .. fsm_image_finish): the state
 * as of begin, kept copy-on-write per inode while applies go on. Begin
 * copies the inode table (its pointers only) and the header. Before an
 * apply changes or frees an inode of that table whose record is not taken
 * yet, capture_save writes the record as it was into `records`. The
 * encoder takes each inode's record from there if it is there, else from
 * the inode itself, which then has not changed since begin. Every inode an
 * apply may change comes from changing(), which does this. */
struct saved {
    const struct inode *in; /* its address as of begin: the key; NULL empty */
    uint64_t ino;
    size_t off, len;        /* its record in capture.records */
};

struct capture {
    bool active;
    bool all_saved;         /* a restore saved every inode: nothing to watch */
    uint64_t gen;           /* one per image; inodes start at 0 */
    uint64_t next_ino, n_inodes;
    uint64_t *orphans;
    size_t n_orphans;
    struct inode **tab;     /* the inode table as of begin (with empty slots) */
    uint64_t tab_cap;
    struct buf records;
    struct saved *saved;    /* open addressing by address */
    size_t saved_cap, n_saved;
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
    struct capture cap;  /* guarded by lock; the encoder reads it under the read lock */
};

static void capture_save(struct fsm *f, struct inode *in, bool freeing);

static void capture_end(struct capture *c)
{
    free(c->tab);
    free(c->orphans);
    free(c->saved);
    buf_deinit(&c->records);
    uint64_t gen = c->gen;
    *c = (struct capture){.gen = gen};
}

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

/* Adds an entry with the given cookie, which must be above every cookie in
 * d (apply passes next_cookie; the image decoder the recorded one). */
static void dir_add_at(struct dir *d, const char *name, size_t len, uint64_t ino,
                       uint64_t cookie)
{
    ASSERT(len >= 1 && len <= FSM_NAME_MAX);
    ASSERT(d->order_len == 0 || d->order[d->order_len - 1].cookie < cookie);
    struct dent *e = xmalloc(sizeof *e + len + 1);
    e->ino = ino;
    e->cookie = cookie;
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

static void dir_add(struct dir *d, const char *name, size_t len, uint64_t ino)
{
    dir_add_at(d, name, len, ino, d->next_cookie++);
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

/* Frees the inode's memory only (its store references are the caller's). */
static void inode_free(struct inode *in)
{
    if (S_ISDIR(in->mode)) {
        dir_deinit(&in->u.dir);
    } else if (S_ISREG(in->mode)) {
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

/* Frees the inode's memory and drops its store references. */
static void inode_destroy(struct fsm *f, struct inode *in)
{
    if (S_ISREG(in->mode)) {
        for (uint32_t i = 0; i < in->u.file.n; i++)
            block_unref(f, &in->u.file.map[i].name);
        f->bytes_stored -= in->u.file.bytes;
    }
    inode_free(in);
}

static void inode_release_free(struct fsm *f, struct inode *in)
{
    ASSERT(in->orphan);
    size_t pos = orphans_pos(f, in->ino);
    ASSERT(pos < f->n_orphans && f->orphans[pos] == in->ino);
    memmove(f->orphans + pos, f->orphans + pos + 1,
            (f->n_orphans - pos - 1) * sizeof *f->orphans);
    f->n_orphans--;
    capture_save(f, in, true);
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
            int rc = store_get_to_rewrite(f->store, &e->name, b, f->bs, &got);
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
    if (mem_is_zero(data, new_len)) {
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

#define SET_ALL                                                                          \
    (FSM_SET_MODE | FSM_SET_UID | FSM_SET_GID | FSM_SET_SIZE | FSM_SET_ATIME | FSM_SET_MTIME | \
     FSM_SET_CTIME | FSM_SET_ATIME_NOW | FSM_SET_MTIME_NOW)

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

static bool carries_setattr(const struct fsm_op *op)
{
    return op->type == FSM_OP_WRITE && (op->flags & FSM_WRITE_SETATTR);
}

static void put_attr(struct buf *out, const struct fsm_attr *a)
{
    buf_put_u32(out, a->mode);
    buf_put_u32(out, a->uid);
    buf_put_u32(out, a->gid);
    buf_put_u64(out, a->size);
    buf_put_u64(out, (uint64_t)a->atime_ns);
    buf_put_u64(out, (uint64_t)a->mtime_ns);
    buf_put_u64(out, (uint64_t)a->ctime_ns);
}

static void get_attr(struct reader *r, struct fsm_attr *a)
{
    a->mode = get_u32(r);
    a->uid = get_u32(r);
    a->gid = get_u32(r);
    a->size = get_u64(r);
    a->atime_ns = (int64_t)get_u64(r);
    a->mtime_ns = (int64_t)get_u64(r);
    a->ctime_ns = (int64_t)get_u64(r);
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
    if (carries_setattr(op) &&
        (op->then_set == 0 || (op->then_set & ~(uint32_t)SET_ALL) || (op->flags & FSM_WRITE_APPEND)))
        return -EINVAL;
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
    if (fl & F_ATTR)
        put_attr(out, &op->attr);
    if (fl & F_DATA)
        put_str(out, op->data, op->data_len);
    if (carries_setattr(op)) {
        buf_put_u32(out, op->then_set);
        put_attr(out, &op->attr);
    }
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
    if (fl & F_ATTR)
        get_attr(&r, &op.attr);
    if (fl & F_DATA)
        op.data = get_str(&r, FSM_DATA_MAX, &op.data_len);
    if (carries_setattr(&op)) {
        op.then_set = get_u32(&r);
        get_attr(&r, &op.attr);
    }
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
/* An inode an apply may change: its record is saved first while an image is
 * in the making (struct capture). Apply gets every inode it may change here;
 * looking one up that it then leaves alone costs only a copy of its record. */
static struct inode *changing(struct fsm *f, uint64_t ino)
{
    struct inode *in = itab_get(f, ino);
    if (in)
        capture_save(f, in, false);
    return in;
}

static int live_dir(struct fsm *f, uint64_t ino, struct inode **out)
{
    struct inode *d = changing(f, ino);
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
    struct inode *in = changing(f, op->ino);
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
    struct inode *in = changing(f, e->ino);
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
    struct inode *src = changing(f, se->ino);
    struct inode *dst = de ? changing(f, de->ino) : NULL;
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

static int64_t op_setattr(struct fsm *f, const struct fsm_op *op, struct fsm_changes *ch)
{
    struct inode *in = changing(f, op->ino);
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
    struct inode *in = changing(f, ino);
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

/* WRITE with FSM_WRITE_SETATTR (fsm.h): the write, then the setattr, each
 * as if alone. Each records its changes only when it succeeds. */
static int64_t op_write_setattr(struct fsm *f, const struct fsm_op *op, struct fsm_changes *ch)
{
    struct fsm_op part = *op;
    part.flags &= ~FSM_WRITE_SETATTR;
    int64_t write_rc = op_write(f, &part, ch);
    part.type = FSM_OP_SETATTR; /* which reads ino, flags, attr, uid and now_ns */
    part.flags = op->then_set;
    int64_t setattr_rc = op_setattr(f, &part, ch);
    return fsm_carried_result(write_rc, setattr_rc);
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
    struct inode *in = changing(f, op->ino);
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
    struct inode *in = changing(f, op->ino);
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
        struct inode *in = changing(f, le_get_u64(op->data + i * 8));
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
    /* Writers first: glibc's default lets a reader in while a writer
     * waits, so the snapshot's image encoder, which takes the read lock
     * batch after batch for 25-50 ms, could keep an apply waiting behind
     * more than one batch. No reader takes the lock twice or waits,
     * holding it, for a thread that needs it, so this cannot deadlock. */
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    int rc = pthread_rwlock_init(&f->lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    if (rc != 0) {
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
    if (f->cap.active)
        capture_end(&f->cap);
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
        return carries_setattr(op) ? op_write_setattr(f, op, ch) : op_write(f, op, ch);
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
    struct fsm_attr a;
    if (cookie < COOKIE_DOT) {
        attr_fill(d, &a);
        if (fn(ctx, ".", &a, COOKIE_DOT) != 0)
            goto out;
    }
    if (cookie < COOKIE_DOTDOT) {
        const struct inode *p = itab_get(f, d->parent);
        attr_fill(p ? p : d, &a); /* d: an rmdir'd directory whose parent is gone too */
        if (fn(ctx, "..", &a, COOKIE_DOTDOT) != 0)
            goto out;
    }
    const struct dir *dd = &d->u.dir;
    for (uint32_t i = dir_order_after(dd, cookie); i < dd->order_len; i++) {
        const struct dent *e = dd->order[i].d;
        if (!e)
            continue;
        const struct inode *in = itab_get(f, e->ino);
        ASSERT(in);
        attr_fill(in, &a);
        if (fn(ctx, e->name, &a, e->cookie) != 0)
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
/* the image: one inode's record (fsm.h has the layout)                */

#define IMG_MAGIC "PXIM"
#define IMG_VERSION 1
/* magic, version, n_nodes, block_size, next_ino, n_inodes */
#define IMG_HDR_LEN (4u + 1u + 4u + 4u + 8u + 8u)
#define IMG_CRC_LEN 4u
#define IMG_F_ORPHAN 1u
/* The smallest record of each kind: a count is checked against the bytes
 * left before anything is allocated for it, so a forged count costs
 * nothing. */
#define IMG_INODE_MIN (8u + 4u * 4u + 3u * 8u + 1u + 2u)
#define IMG_XATTR_MIN (1u + 1u + 4u)
#define IMG_DENT_MIN (8u + 8u + 1u + 1u)
#define IMG_BENT_LEN (8u + STORE_NAME_LEN + 4u)
/* Far above any cookie a directory can reach, far below the wrap of
 * next_cookie++ (after which cookies would not ascend). */
#define IMG_COOKIE_MAX (UINT64_MAX / 2)
/* Far above any directory, far below the doubling limits of the tables. */
#define IMG_DIR_ENTRIES_MAX (1u << 30)
/* Far above any number a replica can reach, far below where the int64_t
 * result of a create (fsm_apply) would turn negative. */
#define IMG_NEXT_INO_MAX (1ull << 62)

_Static_assert(FSM_NODES_MAX <= 16, "release masks travel as u16");
_Static_assert(FSM_SYMLINK_MAX <= UINT16_MAX, "symlink targets travel with a u16 length");
_Static_assert(FSM_NAME_MAX <= UINT8_MAX && FSM_XATTR_NAME_MAX <= UINT8_MAX,
               "names travel with a u8 length");
/* Each xattr name takes at least 2 bytes of the list (a byte and its NUL). */
_Static_assert(XATTR_LIST_BYTES_MAX / 2 <= UINT16_MAX, "xattr counts travel as u16");

struct ikey {
    uint64_t ino;
    struct inode *in;
};

/* Sorts a[0..n) by inode number (none above max); returns the sorted
 * array, which is a or a new one (a is then freed). An LSD radix sort, one
 * pass per byte of the largest: a comparison sort chasing inode pointers
 * was most of an image's encode time (cache misses). */
static struct ikey *ikeys_sort(struct ikey *a, uint64_t n, uint64_t max)
{
    struct ikey *b = xmalloc(MAX(n, 1) * sizeof *b);
    for (unsigned shift = 0; shift < 64 && (max >> shift) != 0; shift += 8) {
        uint64_t count[257] = {0};
        for (uint64_t i = 0; i < n; i++)
            count[((a[i].ino >> shift) & 0xff) + 1]++;
        for (unsigned d = 1; d <= 256; d++)
            count[d] += count[d - 1];
        for (uint64_t i = 0; i < n; i++)
            b[count[(a[i].ino >> shift) & 0xff]++] = a[i];
        struct ikey *t = a;
        a = b;
        b = t;
    }
    free(b);
    return a;
}

/* Every inode, in ascending inode order, and (if inos is not NULL) their
 * numbers in a parallel array for inodes_find; the caller frees both. The
 * caller holds the lock. */
static struct inode **inodes_sorted(const struct fsm *f, uint64_t **inos)
{
    uint64_t n = f->n_inodes;
    struct ikey *a = xmalloc(MAX(n, 1) * sizeof *a);
    uint64_t k = 0, max = 0;
    for (uint64_t i = 0; i < f->itab_cap; i++)
        if (f->itab[i]) {
            a[k++] = (struct ikey){.ino = f->itab[i]->ino, .in = f->itab[i]};
            max = MAX(max, f->itab[i]->ino);
        }
    ASSERT(k == n);
    a = ikeys_sort(a, n, max);
    struct inode **all = xmalloc(n * sizeof *all);
    uint64_t *keys = inos ? xmalloc(n * sizeof *keys) : NULL;
    for (uint64_t i = 0; i < n; i++) {
        all[i] = a[i].in;
        if (keys)
            keys[i] = a[i].ino;
    }
    free(a);
    if (inos)
        *inos = keys;
    return all;
}

/* Position of ino in inos[0..n) (ascending), or n. */
static uint64_t inodes_find(const uint64_t *inos, uint64_t n, uint64_t ino)
{
    uint64_t lo = 0, hi = n;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (inos[mid] < ino)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && inos[lo] == ino ? lo : n;
}

static uint32_t nodes_mask(uint32_t n_nodes)
{
    return n_nodes >= 32 ? UINT32_MAX : (uint32_t)((1ull << n_nodes) - 1);
}

/* One inode's record: what the image holds for it and what its digest
 * covers. Fields a type never sets (rdev but for devices, parent but for
 * directories, size but for regular files: a directory's is its entry
 * count, a symlink's its target's length) are not written. */
static void img_put_inode(struct buf *b, const struct inode *in)
{
    buf_put_u64(b, in->ino);
    buf_put_u32(b, in->mode);
    buf_put_u32(b, in->nlink);
    buf_put_u32(b, in->uid);
    buf_put_u32(b, in->gid);
    buf_put_u64(b, (uint64_t)in->atime_ns);
    buf_put_u64(b, (uint64_t)in->mtime_ns);
    buf_put_u64(b, (uint64_t)in->ctime_ns);
    buf_put_u8(b, in->orphan ? IMG_F_ORPHAN : 0);
    if (in->orphan)
        buf_put_u16(b, (uint16_t)in->release_mask);
    buf_put_u16(b, (uint16_t)in->n_xattrs);
    for (uint32_t i = 0; i < in->n_xattrs; i++) {
        const struct xattr *x = &in->xattrs[i];
        buf_put_u8(b, (uint8_t)x->name_len);
        buf_put(b, x->name, x->name_len);
        buf_put_u32(b, x->value_len);
        if (x->value_len)
            buf_put(b, x->value, x->value_len);
    }
    switch (in->mode & S_IFMT) {
    case S_IFDIR: {
        const struct dir *d = &in->u.dir;
        buf_put_u64(b, in->parent);
        buf_put_u64(b, d->next_cookie);
        buf_put_u32(b, d->n);
        for (uint32_t i = 0; i < d->order_len; i++) {
            const struct dent *e = d->order[i].d;
            if (!e)
                continue;
            buf_put_u64(b, e->cookie);
            buf_put_u64(b, e->ino);
            buf_put_u8(b, (uint8_t)e->name_len);
            buf_put(b, e->name, e->name_len);
        }
        break;
    }
    case S_IFREG:
        buf_put_u64(b, in->size);
        buf_put_u32(b, in->u.file.n);
        for (uint32_t i = 0; i < in->u.file.n; i++) {
            const struct bent *e = &in->u.file.map[i];
            buf_put_u64(b, e->index);
            buf_put(b, e->name.b, STORE_NAME_LEN);
            buf_put_u32(b, e->len);
        }
        break;
    case S_IFLNK:
        buf_put_u16(b, (uint16_t)in->size);
        buf_put(b, in->u.link.target, in->size);
        break;
    case S_IFCHR:
    case S_IFBLK:
        buf_put_u64(b, in->rdev);
        break;
    default:
        break;
    }
}

static bool img_mode_ok(uint32_t mode)
{
    if (mode & ~(uint32_t)(S_IFMT | 07777))
        return false;
    switch (mode & S_IFMT) {
    case S_IFREG:
    case S_IFDIR:
    case S_IFLNK:
    case S_IFCHR:
    case S_IFBLK:
    case S_IFIFO:
    case S_IFSOCK:
        return true;
    default:
        return false;
    }
}

/* An image being read: its header, and a reader over the bytes between the
 * header and the CRC. */
struct img {
    struct reader r;
    uint32_t n_nodes, bs;
    uint64_t next_ino, n_inodes;
};

/* Checks the CRC and the header and positions the reader on the first
 * inode. -EBADMSG. */
static int img_open(struct img *im, const uint8_t *p, size_t len)
{
    if (!p || len < IMG_HDR_LEN + 8u + IMG_CRC_LEN)
        return -EBADMSG;
    if (crc32c(0, p, len - IMG_CRC_LEN) != le_get_u32(p + len - IMG_CRC_LEN))
        return -EBADMSG;
    struct img m;
    reader_init(&m.r, p, len - IMG_CRC_LEN);
    const uint8_t *magic = get_bytes(&m.r, 4);
    uint8_t version = get_u8(&m.r);
    m.n_nodes = get_u32(&m.r);
    m.bs = get_u32(&m.r);
    m.next_ino = get_u64(&m.r);
    m.n_inodes = get_u64(&m.r);
    if (!reader_ok(&m.r) || memcmp(magic, IMG_MAGIC, 4) != 0 || version != IMG_VERSION)
        return -EBADMSG;
    if (m.n_nodes < 1 || m.n_nodes > FSM_NODES_MAX)
        return -EBADMSG;
    if (m.bs < STORE_BLOCK_SIZE_MIN || m.bs > STORE_BLOCK_SIZE_MAX || (m.bs & (m.bs - 1)))
        return -EBADMSG;
    /* At least the root; every number below next_ino (which starts at 2). */
    if (m.next_ino <= FSM_ROOT_INO || m.next_ino > IMG_NEXT_INO_MAX || m.n_inodes < 1 ||
        m.n_inodes >= m.next_ino ||
        m.n_inodes > reader_left(&m.r) / IMG_INODE_MIN)
        return -EBADMSG;
    *im = m;
    return 0;
}

static int img_get_xattrs(struct img *im, struct inode *in)
{
    struct reader *r = &im->r;
    uint32_t n = get_u16(r);
    if (!reader_ok(r) || n > reader_left(r) / IMG_XATTR_MIN)
        return -EBADMSG;
    if (n)
        in->xattrs = xcalloc(n, sizeof *in->xattrs);
    uint64_t names = 0, values = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t nlen = get_u8(r);
        const char *name = (const char *)get_bytes(r, nlen);
        uint32_t vlen = get_u32(r);
        if (!reader_ok(r) || nlen == 0 || memchr(name, '\0', nlen) || vlen > FSM_XATTR_VALUE_MAX)
            return -EBADMSG;
        const uint8_t *value = get_bytes(r, vlen);
        if (!reader_ok(r))
            return -EBADMSG;
        /* Strictly ascending: sorted and no name twice (xattr_pos). */
        if (i > 0 && xattr_cmp(in->xattrs[i - 1].name, in->xattrs[i - 1].name_len, name, nlen) >= 0)
            return -EBADMSG;
        names += nlen + 1;
        values += vlen;
        if (names > XATTR_LIST_BYTES_MAX || values > XATTR_VALUE_BYTES_MAX)
            return -EBADMSG;
        struct xattr *x = &in->xattrs[i];
        x->name = xmalloc(nlen + 1);
        memcpy(x->name, name, nlen);
        x->name[nlen] = '\0';
        x->name_len = nlen;
        x->value = xmalloc(vlen);
        if (vlen)
            memcpy(x->value, value, vlen);
        x->value_len = vlen;
        in->n_xattrs = i + 1;
    }
    return 0;
}

static int img_get_dir(struct img *im, struct inode *in)
{
    struct reader *r = &im->r;
    struct dir *d = &in->u.dir;
    in->parent = get_u64(r);
    uint64_t next_cookie = get_u64(r);
    uint32_t n = get_u32(r);
    if (!reader_ok(r) || in->parent < FSM_ROOT_INO || in->parent >= im->next_ino ||
        n > IMG_DIR_ENTRIES_MAX || n > reader_left(r) / IMG_DENT_MIN)
        return -EBADMSG;
    uint64_t prev = COOKIE_DOTDOT;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t cookie = get_u64(r);
        uint64_t ino = get_u64(r);
        uint32_t nlen = get_u8(r);
        const char *name = (const char *)get_bytes(r, nlen);
        if (!reader_ok(r) || cookie <= prev || ino < FSM_ROOT_INO || ino >= im->next_ino ||
            check_entry_name(name, nlen) != 0 || dir_find(d, name, nlen))
            return -EBADMSG;
        dir_add_at(d, name, nlen, ino, cookie);
        prev = cookie;
    }
    if (next_cookie <= prev || next_cookie > IMG_COOKIE_MAX)
        return -EBADMSG;
    d->next_cookie = next_cookie;
    return 0;
}

static int img_get_file(struct img *im, struct inode *in)
{
    struct reader *r = &im->r;
    in->size = get_u64(r);
    uint32_t n = get_u32(r);
    if (!reader_ok(r) || in->size > FSM_FILE_SIZE_MAX || n > reader_left(r) / IMG_BENT_LEN)
        return -EBADMSG;
    if (n) {
        in->u.file.map = xmalloc((size_t)n * sizeof *in->u.file.map);
        in->u.file.cap = n;
    }
    /* Indexes stay below the largest file, so index * bs never wraps; a
     * block past the size is fsm_check's to report. */
    uint64_t index_max = (FSM_FILE_SIZE_MAX - 1) / im->bs;
    for (uint32_t i = 0; i < n; i++) {
        struct bent e;
        e.index = get_u64(r);
        const uint8_t *name = get_bytes(r, STORE_NAME_LEN);
        e.len = get_u32(r);
        if (!reader_ok(r))
            return -EBADMSG;
        memcpy(e.name.b, name, STORE_NAME_LEN);
        if ((i > 0 && e.index <= in->u.file.map[i - 1].index) || e.index > index_max ||
            e.len == 0 || e.len > im->bs || store_name_is_none(&e.name))
            return -EBADMSG;
        in->u.file.map[i] = e;
        in->u.file.n = i + 1;
        in->u.file.bytes += e.len;
    }
    return 0;
}

static int img_get_link(struct img *im, struct inode *in)
{
    struct reader *r = &im->r;
    uint32_t len = get_u16(r);
    const uint8_t *target = get_bytes(r, len);
    if (!reader_ok(r) || len == 0 || len > FSM_SYMLINK_MAX || memchr(target, '\0', len))
        return -EBADMSG;
    in->u.link.target = xmalloc(len + 1);
    memcpy(in->u.link.target, target, len);
    in->u.link.target[len] = '\0';
    in->size = len;
    return 0;
}

/* Reads one inode record, whose number must be above prev_ino, into a new
 * inode (no store references taken). Checks the record alone; the
 * cross-references are img_check_tree's. -EBADMSG. */
static int img_get_inode(struct img *im, uint64_t prev_ino, struct inode **out)
{
    struct reader *r = &im->r;
    struct inode *in = xcalloc(1, sizeof *in);
    in->ino = get_u64(r);
    in->mode = get_u32(r);
    in->nlink = get_u32(r);
    in->uid = get_u32(r);
    in->gid = get_u32(r);
    in->atime_ns = (int64_t)get_u64(r);
    in->mtime_ns = (int64_t)get_u64(r);
    in->ctime_ns = (int64_t)get_u64(r);
    uint8_t flags = get_u8(r);
    int rc = -EBADMSG;
    if (!reader_ok(r) || !img_mode_ok(in->mode)) {
        in->mode = S_IFIFO; /* owns nothing: inode_free frees just the inode */
        goto bad;
    }
    if (in->ino <= prev_ino || in->ino >= im->next_ino || (flags & ~IMG_F_ORPHAN))
        goto bad;
    if (flags & IMG_F_ORPHAN) {
        /* An orphan has no name (nlink 0) and a node that has not released
         * it yet (else it would have been freed). */
        in->orphan = true;
        in->release_mask = get_u16(r);
        if (!reader_ok(r) || in->nlink != 0 || in->release_mask == 0 ||
            (in->release_mask & ~nodes_mask(im->n_nodes)))
            goto bad;
    }
    rc = img_get_xattrs(im, in);
    if (rc != 0)
        goto bad;
    switch (in->mode & S_IFMT) {
    case S_IFDIR:
        rc = img_get_dir(im, in);
        break;
    case S_IFREG:
        rc = img_get_file(im, in);
        break;
    case S_IFLNK:
        rc = img_get_link(im, in);
        break;
    case S_IFCHR:
    case S_IFBLK:
        in->rdev = get_u64(r);
        rc = reader_ok(r) ? 0 : -EBADMSG;
        break;
    default:
        rc = 0;
        break;
    }
    if (rc != 0)
        goto bad;
    *out = in;
    return 0;
bad:
    inode_free(in);
    return -EBADMSG;
}

/* Frees a state that holds no store references (a decoded image, or an old
 * state whose references were dropped). */
static void state_free(struct fsm *s)
{
    for (uint64_t i = 0; i < s->itab_cap; i++)
        if (s->itab[i])
            inode_free(s->itab[i]);
    free(s->itab);
    free(s->orphans);
    free(s);
}

/* The cross-references of a decoded state whose inodes are all[0..n), in
 * ascending order, numbered inos[0..n): what apply relies on without checking (fsm.h,
 * fsm_image_restore). -EBADMSG. */
static int img_check_tree(struct inode *const *all, const uint64_t *inos, uint64_t n)
{
    struct inode *root = all[0];
    if (root->ino != FSM_ROOT_INO || !S_ISDIR(root->mode) || root->orphan ||
        root->parent != FSM_ROOT_INO)
        return -EBADMSG;
    int rc = -EBADMSG;
    uint64_t *names = xcalloc(n, sizeof *names); /* entries naming each inode */
    struct inode **queue = xmalloc(n * sizeof *queue);
    uint64_t live_dirs = 0;
    for (uint64_t i = 0; i < n; i++) {
        const struct inode *d = all[i];
        if (!S_ISDIR(d->mode))
            continue;
        if (!d->orphan)
            live_dirs++;
        for (uint32_t k = 0; k < d->u.dir.order_len; k++) {
            const struct dent *e = d->u.dir.order[k].d;
            uint64_t t = inodes_find(inos, n, e->ino);
            if (t == n)
                goto out; /* names a missing inode */
            /* A directory's ".." is the directory that names it. */
            if (S_ISDIR(all[t]->mode) && all[t]->parent != d->ino)
                goto out;
            names[t]++;
        }
    }
    for (uint64_t i = 0; i < n; i++) {
        const struct inode *in = all[i];
        if (i == 0) {
            if (names[i] != 0)
                goto out;
        } else if (S_ISDIR(in->mode)) {
            /* Orphaned directories are empty and nameless (rmdir), live ones
             * have exactly one name: no hard links to directories. */
            if (in->orphan ? names[i] != 0 || in->u.dir.n != 0 : names[i] != 1)
                goto out;
        } else if (names[i] > in->nlink) {
            /* Fewer links than names: unlinking would orphan (and later
             * free) an inode that another entry still names. */
            goto out;
        }
    }
    /* Every live directory has one name in the directory its parent
     * names; reaching them all from the root rules out parent cycles. */
    uint64_t head = 0, tail = 0, reached = 1;
    queue[tail++] = root;
    while (head < tail) {
        const struct dir *d = &queue[head++]->u.dir;
        for (uint32_t k = 0; k < d->order_len; k++) {
            uint64_t t = inodes_find(inos, n, d->order[k].d->ino);
            if (!S_ISDIR(all[t]->mode))
                continue;
            ASSERT(tail < n); /* each live directory has one name */
            queue[tail++] = all[t];
            reached++;
        }
    }
    if (reached == live_dirs)
        rc = 0;
out:
    free(names);
    free(queue);
    return rc;
}

/* Builds a new state from the inodes and orphan list of im (its header
 * already checked). No store references are taken. -EBADMSG. */
static int img_build(struct img *im, struct fsm **out)
{
    struct reader *r = &im->r;
    struct fsm *s = xcalloc(1, sizeof *s);
    s->n_nodes = im->n_nodes;
    s->bs = im->bs;
    s->next_ino = im->next_ino;
    s->itab_cap = 64;
    while (s->itab_cap < im->n_inodes * 2)
        s->itab_cap *= 2;
    s->itab = xcalloc(s->itab_cap, sizeof *s->itab);
    uint64_t n = im->n_inodes;
    struct inode **all = xmalloc(n * sizeof *all);
    uint64_t *inos = xmalloc(n * sizeof *inos);
    uint64_t prev = 0, n_marked = 0;
    int rc = 0;
    for (uint64_t i = 0; i < n; i++) {
        rc = img_get_inode(im, prev, &all[i]);
        if (rc != 0)
            goto fail;
        prev = inos[i] = all[i]->ino;
        itab_insert(s, all[i]);
        if (S_ISREG(all[i]->mode))
            s->bytes_stored += all[i]->u.file.bytes;
        n_marked += all[i]->orphan;
    }
    uint64_t n_orphans = get_u64(r);
    rc = -EBADMSG;
    if (!reader_ok(r) || n_orphans != n_marked || n_orphans != reader_left(r) / 8)
        goto fail;
    s->orphans = xmalloc(n_orphans * sizeof *s->orphans);
    s->orphans_cap = n_orphans;
    for (uint64_t i = 0; i < n_orphans; i++) {
        uint64_t ino = get_u64(r);
        const struct inode *in = itab_get(s, ino);
        if (!reader_ok(r) || !in || !in->orphan || (i > 0 && ino <= s->orphans[i - 1]))
            goto fail;
        s->orphans[s->n_orphans++] = ino;
    }
    if (reader_left(r) != 0)
        goto fail;
    rc = img_check_tree(all, inos, n);
    if (rc != 0)
        goto fail;
    free(all);
    free(inos);
    *out = s;
    return 0;
fail:
    free(all);
    free(inos);
    state_free(s);
    return -EBADMSG;
}

/* ------------------------------------------------------------------ */
/* public: snapshots                                                   */

/* ---- images made while applies go on (struct capture) ---- */

/* How many inodes the encoder handles per hold of the read lock: an apply
 * waits for one batch at most (well under a millisecond). */
#define CAPTURE_BATCH 1024

void (*fsm_test_image_batch_hook)(uint64_t encoded);

static size_t saved_slot(const struct capture *c, const struct inode *in)
{
    size_t mask = c->saved_cap - 1;
    size_t i = (size_t)mix64((uint64_t)(uintptr_t)in) & mask;
    while (c->saved[i].in && c->saved[i].in != in)
        i = (i + 1) & mask;
    return i;
}

static const struct saved *saved_find(const struct capture *c, const struct inode *in)
{
    const struct saved *e = &c->saved[saved_slot(c, in)];
    return e->in ? e : NULL;
}

static void saved_add(struct capture *c, const struct saved *e)
{
    if (2 * (c->n_saved + 1) > c->saved_cap) {
        struct saved *old = c->saved;
        size_t old_cap = c->saved_cap;
        c->saved_cap *= 2;
        c->saved = xcalloc(c->saved_cap, sizeof *c->saved);
        for (size_t i = 0; i < old_cap; i++)
            if (old[i].in)
                c->saved[saved_slot(c, old[i].in)] = old[i];
        free(old);
    }
    c->saved[saved_slot(c, e->in)] = *e;
    c->n_saved++;
}

/* Keeps in's record as it is now. */
static void capture_record(struct capture *c, const struct inode *in)
{
    struct saved e = {.in = in, .ino = in->ino, .off = c->records.len};
    img_put_inode(&c->records, in);
    e.len = c->records.len - e.off;
    saved_add(c, &e);
}

/* Under the write lock, before in changes (or, freeing, goes): keeps its
 * record as of fsm_image_begin unless the encoder has it already. An inode
 * freed is always entered, whatever the encoder did, so that nothing
 * follows its address again. Inodes made since begin are not in the image. */
static void capture_save(struct fsm *f, struct inode *in, bool freeing)
{
    struct capture *c = &f->cap;
    if (!c->active || c->all_saved || in->ino >= c->next_ino)
        return;
    if (in->image_gen == c->gen && (!freeing || saved_find(c, in)))
        return;
    capture_record(c, in);
    in->image_gen = c->gen;
}

/* Under the write lock, before the whole state is replaced: every inode of
 * the image is saved, and the image no longer looks at the live state. */
static void capture_save_all(struct fsm *f)
{
    struct capture *c = &f->cap;
    if (!c->active || c->all_saved)
        return;
    for (uint64_t i = 0; i < c->tab_cap; i++) {
        struct inode *in = c->tab[i];
        /* Not saved: never freed, so its address is still that inode. */
        if (in && !saved_find(c, in) && in->image_gen != c->gen)
            capture_record(c, in);
    }
    c->all_saved = true;
}

int fsm_image_begin(struct fsm *f)
{
    pthread_rwlock_wrlock(&f->lock);
    struct capture *c = &f->cap;
    if (c->active) {
        pthread_rwlock_unlock(&f->lock);
        return -EBUSY;
    }
    c->active = true;
    c->all_saved = false;
    c->gen++;
    c->next_ino = f->next_ino;
    c->n_inodes = f->n_inodes;
    c->n_orphans = f->n_orphans;
    c->orphans = xmalloc(MAX(f->n_orphans, 1) * sizeof *c->orphans);
    if (f->n_orphans)
        memcpy(c->orphans, f->orphans, f->n_orphans * sizeof *c->orphans);
    c->tab_cap = f->itab_cap;
    c->tab = xmalloc(f->itab_cap * sizeof *c->tab);
    memcpy(c->tab, f->itab, f->itab_cap * sizeof *c->tab);
    buf_init(&c->records);
    c->saved_cap = 64;
    c->saved = xcalloc(c->saved_cap, sizeof *c->saved);
    c->n_saved = 0;
    pthread_rwlock_unlock(&f->lock);
    return 0;
}

int fsm_image_finish(struct fsm *f, struct buf *out)
{
    struct capture *c = &f->cap;
    pthread_rwlock_rdlock(&f->lock);
    bool active = c->active;
    uint64_t n = c->n_inodes, tab_cap = c->tab_cap;
    pthread_rwlock_unlock(&f->lock);
    if (!active)
        return -EINVAL;
    /* The image's inodes by number: a saved record knows its number, any
     * other inode is as it was at begin. */
    struct ikey *a = xmalloc(MAX(n, 1) * sizeof *a);
    uint64_t k = 0, max = 0;
    for (uint64_t i = 0; i < tab_cap; i += CAPTURE_BATCH) {
        pthread_rwlock_rdlock(&f->lock);
        for (uint64_t j = i; j < MIN(tab_cap, i + CAPTURE_BATCH); j++) {
            struct inode *in = c->tab[j];
            if (!in)
                continue;
            const struct saved *e = saved_find(c, in);
            uint64_t ino = e ? e->ino : in->ino;
            ASSERT(k < n);
            a[k++] = (struct ikey){.ino = ino, .in = in};
            max = MAX(max, ino);
        }
        pthread_rwlock_unlock(&f->lock);
    }
    ASSERT(k == n);
    a = ikeys_sort(a, n, max);

    size_t start = out->len;
    buf_reserve(out, IMG_HDR_LEN + n * (IMG_INODE_MIN + 24) + 8 * c->n_orphans + 12);
    buf_put(out, IMG_MAGIC, 4);
    buf_put_u8(out, IMG_VERSION);
    buf_put_u32(out, f->n_nodes);
    buf_put_u32(out, f->bs);
    buf_put_u64(out, c->next_ino);
    buf_put_u64(out, n);
    for (uint64_t i = 0; i < n; i += CAPTURE_BATCH) {
        pthread_rwlock_rdlock(&f->lock);
        for (uint64_t j = i; j < MIN(n, i + CAPTURE_BATCH); j++) {
            const struct saved *e = saved_find(c, a[j].in);
            if (e) {
                buf_put(out, c->records.data + e->off, e->len);
            } else {
                img_put_inode(out, a[j].in);
                /* Only this thread writes image_gen under the read lock;
                 * readers never look at it. */
                a[j].in->image_gen = c->gen;
            }
        }
        pthread_rwlock_unlock(&f->lock);
        if (fsm_test_image_batch_hook)
            fsm_test_image_batch_hook(MIN(n, i + CAPTURE_BATCH));
    }
    free(a);
    buf_put_u64(out, c->n_orphans);
    for (size_t i = 0; i < c->n_orphans; i++)
        buf_put_u64(out, c->orphans[i]);
    buf_put_u32(out, crc32c(0, out->data + start, out->len - start));
    pthread_rwlock_wrlock(&f->lock);
    capture_end(c);
    pthread_rwlock_unlock(&f->lock);
    return 0;
}

int fsm_image_encode(struct fsm *f, struct buf *out)
{
    int rc = fsm_image_begin(f);
    return rc != 0 ? rc : fsm_image_finish(f, out);
}

/* Whether a cache of `was` still describes `now` (same ino). */
static bool inode_unchanged(const struct inode *was, const struct inode *now)
{
    if (was->mode != now->mode || was->nlink != now->nlink || was->uid != now->uid ||
        was->gid != now->gid || was->rdev != now->rdev || was->size != now->size ||
        was->atime_ns != now->atime_ns || was->mtime_ns != now->mtime_ns ||
        was->ctime_ns != now->ctime_ns)
        return false;
    if (!S_ISREG(was->mode))
        return true;
    if (was->u.file.n != now->u.file.n)
        return false;
    for (uint32_t k = 0; k < was->u.file.n; k++)
        if (was->u.file.map[k].index != now->u.file.map[k].index ||
            !store_name_eq(&was->u.file.map[k].name, &now->u.file.map[k].name))
            return false;
    return true;
}

/* Reports to fn what differs between the old state and f's (new) one. */
static void restore_report(const struct fsm *old, const struct fsm *f, fsm_restore_fn fn,
                           void *ctx)
{
    for (uint64_t i = 0; i < old->itab_cap; i++) {
        const struct inode *was = old->itab[i];
        if (!was)
            continue;
        const struct inode *now = itab_get(f, was->ino);
        if (!now || !inode_unchanged(was, now))
            fn(ctx, was->ino, NULL, 0);
        if (!S_ISDIR(was->mode))
            continue;
        const struct dir *d = &was->u.dir;
        for (uint32_t k = 0; k < d->tab_cap; k++) {
            const struct dent *e = d->tab[k];
            if (!e)
                continue;
            const struct dent *ne =
                now && S_ISDIR(now->mode) ? dir_find(&now->u.dir, e->name, e->name_len) : NULL;
            if (!ne || ne->ino != e->ino)
                fn(ctx, was->ino, e->name, e->name_len);
        }
    }
}

int fsm_image_restore(struct fsm *f, const uint8_t *p, size_t len)
{
    return fsm_image_restore_changes(f, p, len, NULL, NULL);
}

int fsm_image_restore_changes(struct fsm *f, const uint8_t *p, size_t len, fsm_restore_fn fn,
                              void *ctx)
{
    struct img im;
    int rc = img_open(&im, p, len);
    if (rc != 0)
        return rc;
    /* n_nodes and bs never change after fsm_new: no lock needed. */
    if (im.n_nodes != f->n_nodes || im.bs != f->bs)
        return -EINVAL;
    struct fsm *s;
    rc = img_build(&im, &s);
    if (rc != 0)
        return rc;
    pthread_rwlock_wrlock(&f->lock);
    capture_save_all(f); /* the old inodes go below */
    /* The new references first, so that a block both states map never
     * drops to zero references (where a concurrent store_gc could take it). */
    for (uint64_t i = 0; i < s->itab_cap; i++) {
        const struct inode *in = s->itab[i];
        if (in && S_ISREG(in->mode))
            for (uint32_t k = 0; k < in->u.file.n; k++)
                store_ref(f->store, &in->u.file.map[k].name);
    }
#define SWAP(field)                    \
    do {                               \
        __typeof__(f->field) t_ = f->field; \
        f->field = s->field;           \
        s->field = t_;                 \
    } while (0)
    SWAP(next_ino);
    SWAP(itab);
    SWAP(itab_cap);
    SWAP(n_inodes);
    SWAP(orphans);
    SWAP(n_orphans);
    SWAP(orphans_cap);
    SWAP(bytes_stored);
#undef SWAP
    for (uint64_t i = 0; i < s->itab_cap; i++) {
        const struct inode *in = s->itab[i];
        if (in && S_ISREG(in->mode))
            for (uint32_t k = 0; k < in->u.file.n; k++)
                block_unref(f, &in->u.file.map[k].name);
    }
    if (fn)
        restore_report(s, f, fn, ctx);
    uint64_t n_inodes = f->n_inodes, next_ino = f->next_ino;
    pthread_rwlock_unlock(&f->lock);
    state_free(s); /* the old state's memory, outside the lock */
    LOG_I("fsm: image restored bytes=%zu inodes=%llu next_ino=%llu", len,
          (unsigned long long)n_inodes, (unsigned long long)next_ino);
    return 0;
}

int fsm_image_info(const uint8_t *p, size_t len, uint32_t *n_nodes, uint32_t *block_size)
{
    struct img im;
    int rc = img_open(&im, p, len);
    if (rc != 0)
        return rc;
    *n_nodes = im.n_nodes;
    *block_size = im.bs;
    return 0;
}

static int image_blocks(const uint8_t *p, size_t len, bool linked_only, fsm_block_fn fn,
                        void *ctx)
{
    struct img im;
    int rc = img_open(&im, p, len);
    if (rc != 0)
        return rc;
    uint64_t prev = 0;
    for (uint64_t i = 0; i < im.n_inodes; i++) {
        struct inode *in;
        rc = img_get_inode(&im, prev, &in);
        if (rc != 0)
            return rc;
        prev = in->ino;
        if (S_ISREG(in->mode) && !(linked_only && in->orphan))
            for (uint32_t k = 0; k < in->u.file.n && rc == 0; k++) {
                const struct bent *e = &in->u.file.map[k];
                rc = fn(ctx, in->ino, e->index, &e->name, e->len);
            }
        inode_free(in);
        if (rc != 0)
            return rc;
    }
    /* The orphan list's shape; what it names is fsm_image_restore's. */
    uint64_t n_orphans = get_u64(&im.r);
    if (!reader_ok(&im.r) || n_orphans > im.n_inodes || n_orphans != reader_left(&im.r) / 8 ||
        reader_left(&im.r) % 8 != 0)
        return -EBADMSG;
    return 0;
}

int fsm_image_blocks(const uint8_t *p, size_t len, fsm_block_fn fn, void *ctx)
{
    return image_blocks(p, len, false, fn, ctx);
}

int fsm_image_linked_blocks(const uint8_t *p, size_t len, fsm_block_fn fn, void *ctx)
{
    return image_blocks(p, len, true, fn, ctx);
}

static int live_blocks(struct fsm *f, bool linked_only, fsm_block_fn fn, void *ctx)
{
    int rc = 0;
    pthread_rwlock_rdlock(&f->lock);
    struct inode **all = inodes_sorted(f, NULL);
    for (uint64_t i = 0; i < f->n_inodes && rc == 0; i++) {
        const struct inode *in = all[i];
        if (!S_ISREG(in->mode) || (linked_only && in->orphan))
            continue;
        for (uint32_t k = 0; k < in->u.file.n && rc == 0; k++) {
            const struct bent *e = &in->u.file.map[k];
            rc = fn(ctx, in->ino, e->index, &e->name, e->len);
        }
    }
    pthread_rwlock_unlock(&f->lock);
    free(all);
    return rc;
}

int fsm_blocks(struct fsm *f, fsm_block_fn fn, void *ctx)
{
    return live_blocks(f, false, fn, ctx);
}

int fsm_linked_blocks(struct fsm *f, fsm_block_fn fn, void *ctx)
{
    return live_blocks(f, true, fn, ctx);
}

int fsm_test_diverge(struct fsm *f, uint64_t ino)
{
    pthread_rwlock_wrlock(&f->lock);
    struct inode *in = changing(f, ino);
    if (in)
        in->mtime_ns++;
    pthread_rwlock_unlock(&f->lock);
    return in ? 0 : -ENOENT;
}

/* ------------------------------------------------------------------ */
/* digests                                                             */

/* Hashes inodes under the caller's lock. */
struct hasher {
    EVP_MD_CTX *ctx;
    struct buf rec;
};

static int hasher_init(struct hasher *h)
{
    if (!store_hash())
        return -EIO;
    h->ctx = EVP_MD_CTX_new();
    if (!h->ctx)
        return -ENOMEM;
    buf_init(&h->rec);
    return 0;
}

static void hasher_deinit(struct hasher *h)
{
    EVP_MD_CTX_free(h->ctx);
    buf_deinit(&h->rec);
}

static int hasher_inode(struct hasher *h, const struct inode *in,
                        uint8_t out[FSM_INODE_DIGEST_BYTES])
{
    buf_reset(&h->rec);
    img_put_inode(&h->rec, in);
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    if (EVP_DigestInit_ex(h->ctx, store_hash(), NULL) != 1 ||
        EVP_DigestUpdate(h->ctx, h->rec.data, h->rec.len) != 1 ||
        EVP_DigestFinal_ex(h->ctx, md, &md_len) != 1 || md_len < FSM_INODE_DIGEST_BYTES)
        return -ENOMEM;
    memcpy(out, md, FSM_INODE_DIGEST_BYTES);
    return 0;
}

/* Every inode's number and digest, in inode order, into new arrays (the
 * caller frees them). Under the caller's lock. */
static int digests_compute(struct fsm *f, uint64_t **inos_out, uint8_t **digests_out)
{
    struct hasher h;
    int rc = hasher_init(&h);
    if (rc != 0)
        return rc;
    struct inode **all = inodes_sorted(f, NULL);
    uint64_t *inos = xmalloc(f->n_inodes * sizeof *inos);
    uint8_t *digests = xmalloc(f->n_inodes * FSM_INODE_DIGEST_BYTES);
    for (uint64_t i = 0; i < f->n_inodes && rc == 0; i++) {
        inos[i] = all[i]->ino;
        rc = hasher_inode(&h, all[i], digests + i * FSM_INODE_DIGEST_BYTES);
    }
    free(all);
    hasher_deinit(&h);
    if (rc != 0) {
        free(inos);
        free(digests);
        return rc;
    }
    *inos_out = inos;
    *digests_out = digests;
    return 0;
}

int fsm_inode_digests(struct fsm *f, fsm_inode_digest_fn fn, void *ctx)
{
    uint64_t *inos;
    uint8_t *digests;
    pthread_rwlock_rdlock(&f->lock);
    uint64_t n = f->n_inodes;
    int rc = digests_compute(f, &inos, &digests);
    pthread_rwlock_unlock(&f->lock);
    if (rc != 0)
        return rc;
    for (uint64_t i = 0; i < n && rc == 0; i++)
        rc = fn(ctx, inos[i], digests + i * FSM_INODE_DIGEST_BYTES);
    free(inos);
    free(digests);
    return rc;
}

static void hash_u64(EVP_MD_CTX *ctx, uint64_t v, bool *ok)
{
    uint8_t b[8];
    le_put_u64(b, v);
    *ok = *ok && EVP_DigestUpdate(ctx, b, sizeof b) == 1;
}

uint64_t fsm_digest(struct fsm *f)
{
    uint64_t *inos;
    uint8_t *digests;
    pthread_rwlock_rdlock(&f->lock);
    uint64_t n = f->n_inodes;
    int rc = digests_compute(f, &inos, &digests);
    /* OpenSSL hashing memory fails only when memory runs out, which
     * xmalloc treats as fatal too. */
    ASSERT(rc == 0);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    ASSERT(ctx);
    bool ok = EVP_DigestInit_ex(ctx, store_hash(), NULL) == 1;
    ok = ok && EVP_DigestUpdate(ctx, "paxfs-fsm", 9) == 1;
    hash_u64(ctx, f->n_nodes, &ok);
    hash_u64(ctx, f->next_ino, &ok);
    hash_u64(ctx, n, &ok);
    for (uint64_t i = 0; i < n; i++) {
        hash_u64(ctx, inos[i], &ok);
        ok = ok && EVP_DigestUpdate(ctx, digests + i * FSM_INODE_DIGEST_BYTES,
                                    FSM_INODE_DIGEST_BYTES) == 1;
    }
    hash_u64(ctx, f->n_orphans, &ok);
    for (size_t i = 0; i < f->n_orphans; i++)
        hash_u64(ctx, f->orphans[i], &ok);
    pthread_rwlock_unlock(&f->lock);
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    ok = ok && EVP_DigestFinal_ex(ctx, md, &md_len) == 1 && md_len >= 8;
    ASSERT(ok);
    EVP_MD_CTX_free(ctx);
    free(inos);
    free(digests);
    return le_get_u64(md);
}

/* ------------------------------------------------------------------ */
/* consistency check                                                   */

struct chk {
    fsm_finding_fn fn;
    void *ctx;
    size_t n;
};

__attribute__((format(printf, 3, 4)))
static void finding(struct chk *c, uint64_t ino, const char *fmt, ...)
{
    char what[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    c->n++;
    if (c->fn)
        c->fn(c->ctx, ino, what);
}

/* Counts per inode (by position in the sorted array). */
struct chk_counts {
    uint64_t *inos;    /* the sorted inode numbers */
    uint64_t *names;   /* entries naming it */
    uint64_t *subdirs; /* directories: entries naming a directory */
    uint8_t *state;    /* parent walk: 0 unseen, 1 on the path, 2 reaches the root, 3 does not */
    bool *reached;     /* from the root through entries */
};

static void check_attrs(const struct fsm *f, struct chk *c, const struct inode *in)
{
    if (in->ino < FSM_ROOT_INO || in->ino >= f->next_ino)
        finding(c, in->ino, "inode number is not below next_ino %llu",
                (unsigned long long)f->next_ino);
    for (uint32_t i = 1; i < in->n_xattrs; i++)
        if (xattr_cmp(in->xattrs[i - 1].name, in->xattrs[i - 1].name_len, in->xattrs[i].name,
                      in->xattrs[i].name_len) >= 0)
            finding(c, in->ino, "xattr '%s' out of order", in->xattrs[i].name);
    size_t pos = orphans_pos(f, in->ino);
    bool listed = pos < f->n_orphans && f->orphans[pos] == in->ino;
    if (in->orphan) {
        if (!listed)
            finding(c, in->ino, "marked orphan but not in the orphan list");
        if (in->nlink != 0)
            finding(c, in->ino, "orphan with nlink %u", in->nlink);
        if (in->release_mask == 0 || (in->release_mask & ~all_nodes_mask(f)))
            finding(c, in->ino, "orphan with release mask 0x%x", in->release_mask);
    } else {
        if (listed)
            finding(c, in->ino, "in the orphan list but not marked orphan");
        if (in->nlink == 0)
            finding(c, in->ino, "nlink 0 but not an orphan");
    }
}

static void check_dir(const struct fsm *f, struct chk *c, struct inode *const *all, uint64_t i,
                      struct chk_counts *k)
{
    const struct inode *in = all[i];
    const struct dir *d = &in->u.dir;
    uint64_t n = f->n_inodes, live = 0, prev = COOKIE_DOTDOT;
    for (uint32_t s = 0; s < d->order_len; s++) {
        const struct dent *e = d->order[s].d;
        if (d->order[s].cookie <= prev)
            finding(c, in->ino, "entry cookies out of order at %llu",
                    (unsigned long long)d->order[s].cookie);
        prev = d->order[s].cookie;
        if (!e)
            continue;
        live++;
        if (e->cookie != d->order[s].cookie || e->cookie >= d->next_cookie)
            finding(c, in->ino, "entry '%s' has cookie %llu (next %llu)", e->name,
                    (unsigned long long)e->cookie, (unsigned long long)d->next_cookie);
        if (dir_find(d, e->name, e->name_len) != e)
            finding(c, in->ino, "entry '%s' is not found by its name", e->name);
        uint64_t t = inodes_find(k->inos, n, e->ino);
        if (t == n) {
            finding(c, in->ino, "entry '%s' names missing inode %llu", e->name,
                    (unsigned long long)e->ino);
            continue;
        }
        k->names[t]++;
        if (all[t]->orphan)
            finding(c, in->ino, "entry '%s' names orphan %llu", e->name,
                    (unsigned long long)e->ino);
        if (S_ISDIR(all[t]->mode)) {
            k->subdirs[i]++;
            if (all[t]->parent != in->ino)
                finding(c, e->ino, "directory named in %llu has parent %llu",
                        (unsigned long long)in->ino, (unsigned long long)all[t]->parent);
        }
    }
    if (live != d->n)
        finding(c, in->ino, "directory size %u but %llu entries", d->n, (unsigned long long)live);
}

static void check_file(const struct fsm *f, struct chk *c, const struct inode *in,
                       uint64_t *bytes)
{
    uint64_t sum = 0;
    for (uint32_t s = 0; s < in->u.file.n; s++) {
        const struct bent *e = &in->u.file.map[s];
        if (s > 0 && e->index <= in->u.file.map[s - 1].index)
            finding(c, in->ino, "block map out of order at index %llu",
                    (unsigned long long)e->index);
        if (e->len == 0 || e->len > f->bs)
            finding(c, in->ino, "block %llu has length %u", (unsigned long long)e->index, e->len);
        else if (e->index >= FSM_FILE_SIZE_MAX / f->bs || e->index * f->bs + e->len > in->size)
            finding(c, in->ino, "block %llu ends past the size %llu",
                    (unsigned long long)e->index, (unsigned long long)in->size);
        if (store_name_is_none(&e->name))
            finding(c, in->ino, "block %llu has no name", (unsigned long long)e->index);
        sum += e->len;
    }
    if (sum != in->u.file.bytes)
        finding(c, in->ino, "stored bytes %llu but the blocks hold %llu",
                (unsigned long long)in->u.file.bytes, (unsigned long long)sum);
    *bytes += sum;
}

static void check_links(struct chk *c, struct inode *const *all, uint64_t i,
                        const struct chk_counts *k)
{
    const struct inode *in = all[i];
    uint64_t want = k->names[i];
    if (S_ISDIR(in->mode)) {
        uint64_t names_want = in->ino == FSM_ROOT_INO || in->orphan ? 0 : 1;
        if (k->names[i] != names_want)
            finding(c, in->ino, "directory has %llu names", (unsigned long long)k->names[i]);
        want = in->orphan ? 0 : 2 + k->subdirs[i];
    }
    if (in->nlink != want)
        finding(c, in->ino, "nlink %u, expected %llu", in->nlink, (unsigned long long)want);
}

/* Walks the parent chain of live directory all[i] up to the root, marking
 * every directory on the way (k->state), in linear total time. */
static void check_parents(struct chk *c, struct inode *const *all, uint64_t n, uint64_t i,
                          struct chk_counts *k, uint64_t *path)
{
    uint64_t len = 0, cur = i;
    const char *why = NULL;
    uint64_t why_ino = 0;
    for (uint64_t steps = 0; steps <= n; steps++) {
        if (k->state[cur] == 2)
            break;
        if (k->state[cur] == 3) {
            why = "joins a broken one at";
            why_ino = all[cur]->ino;
            break;
        }
        if (k->state[cur] == 1) {
            why = "has a cycle through";
            why_ino = all[cur]->ino;
            break;
        }
        if (all[cur]->ino == FSM_ROOT_INO) {
            k->state[cur] = 2;
            break;
        }
        k->state[cur] = 1;
        path[len++] = cur;
        uint64_t p = inodes_find(k->inos, n, all[cur]->parent);
        if (p == n || !S_ISDIR(all[p]->mode) || all[p]->orphan) {
            why = "reaches a missing, non-directory or orphan parent";
            why_ino = all[cur]->parent;
            break;
        }
        cur = p;
    }
    for (uint64_t j = 0; j < len; j++) {
        k->state[path[j]] = why ? 3 : 2;
        if (why)
            finding(c, all[path[j]]->ino, "parent chain %s %llu", why, (unsigned long long)why_ino);
    }
}

/* Marks everything reachable from the root through entries. */
static void check_reach(const struct fsm *f, struct inode *const *all, struct chk_counts *k,
                        uint64_t *queue)
{
    uint64_t n = f->n_inodes;
    uint64_t r = inodes_find(k->inos, n, FSM_ROOT_INO);
    if (r == n)
        return;
    uint64_t head = 0, tail = 0;
    k->reached[r] = true;
    queue[tail++] = r;
    while (head < tail) {
        const struct dir *d = &all[queue[head++]]->u.dir;
        for (uint32_t s = 0; s < d->order_len; s++) {
            const struct dent *e = d->order[s].d;
            if (!e)
                continue;
            uint64_t t = inodes_find(k->inos, n, e->ino);
            if (t == n || k->reached[t])
                continue;
            k->reached[t] = true;
            if (S_ISDIR(all[t]->mode))
                queue[tail++] = t; /* each inode once: tail <= n */
        }
    }
}

struct chk_block {
    struct store_name name;
    uint64_t ino;
};

static int chk_block_cmp(const void *a, const void *b)
{
    const struct chk_block *x = a, *y = b;
    int c = memcmp(x->name.b, y->name.b, STORE_NAME_LEN);
    if (c != 0)
        return c;
    return x->ino < y->ino ? -1 : x->ino > y->ino;
}

/* Each block's store_refcount against the number of mappings of it. */
static void check_refs(const struct fsm *f, struct chk *c, struct inode *const *all)
{
    size_t count = 0;
    for (uint64_t i = 0; i < f->n_inodes; i++)
        if (S_ISREG(all[i]->mode))
            count += all[i]->u.file.n;
    struct chk_block *v = xmalloc(count * sizeof *v);
    size_t w = 0;
    for (uint64_t i = 0; i < f->n_inodes; i++)
        if (S_ISREG(all[i]->mode))
            for (uint32_t s = 0; s < all[i]->u.file.n; s++)
                v[w++] = (struct chk_block){.name = all[i]->u.file.map[s].name, .ino = all[i]->ino};
    qsort(v, count, sizeof *v, chk_block_cmp);
    for (size_t a = 0, b; a < count; a = b) {
        for (b = a + 1; b < count && store_name_eq(&v[a].name, &v[b].name); b++)
            ;
        uint64_t refs = store_refcount(f->store, &v[a].name);
        if (refs < b - a) {
            char hex[STORE_NAME_HEX_LEN + 1];
            store_name_hex(&v[a].name, hex);
            finding(c, v[a].ino, "block %.16s has %llu references for %zu mappings", hex,
                    (unsigned long long)refs, b - a);
        }
    }
    free(v);
}

size_t fsm_check(struct fsm *f, fsm_finding_fn fn, void *ctx)
{
    struct chk c = {.fn = fn, .ctx = ctx};
    pthread_rwlock_rdlock(&f->lock);
    uint64_t n = f->n_inodes;
    struct chk_counts k;
    struct inode **all = inodes_sorted(f, &k.inos);
    k = (struct chk_counts){
        .inos = k.inos,
        .names = xcalloc(n, sizeof *k.names),
        .subdirs = xcalloc(n, sizeof *k.subdirs),
        .state = xcalloc(n, sizeof *k.state),
        .reached = xcalloc(n, sizeof *k.reached),
    };
    uint64_t *scratch = xmalloc(n * sizeof *scratch);
    uint64_t r = inodes_find(k.inos, n, FSM_ROOT_INO);
    if (r == n || !S_ISDIR(all[r]->mode))
        finding(&c, FSM_ROOT_INO, "the root is missing or not a directory");
    else if (all[r]->parent != FSM_ROOT_INO || all[r]->orphan)
        finding(&c, FSM_ROOT_INO, "the root is not its own parent or is an orphan");
    uint64_t bytes = 0;
    for (uint64_t i = 0; i < n; i++) {
        check_attrs(f, &c, all[i]);
        if (S_ISDIR(all[i]->mode))
            check_dir(f, &c, all, i, &k);
        else if (S_ISREG(all[i]->mode))
            check_file(f, &c, all[i], &bytes);
        else if (S_ISLNK(all[i]->mode) &&
                 (!all[i]->u.link.target || strlen(all[i]->u.link.target) != all[i]->size))
            finding(&c, all[i]->ino, "symlink target length is not its size");
    }
    if (bytes != f->bytes_stored)
        finding(&c, 0, "bytes_stored %llu but the block maps hold %llu",
                (unsigned long long)f->bytes_stored, (unsigned long long)bytes);
    for (size_t i = 0; i < f->n_orphans; i++) {
        if (i > 0 && f->orphans[i] <= f->orphans[i - 1])
            finding(&c, f->orphans[i], "orphan list out of order");
        uint64_t t = inodes_find(k.inos, n, f->orphans[i]);
        if (t == n)
            finding(&c, f->orphans[i], "the orphan list names a missing inode");
    }
    for (uint64_t i = 0; i < n; i++) {
        check_links(&c, all, i, &k);
        if (S_ISDIR(all[i]->mode) && !all[i]->orphan)
            check_parents(&c, all, n, i, &k, scratch);
    }
    check_reach(f, all, &k, scratch);
    for (uint64_t i = 0; i < n; i++)
        if (!k.reached[i] && !all[i]->orphan)
            finding(&c, all[i]->ino, "not reachable from the root and not an orphan");
    check_refs(f, &c, all);
    pthread_rwlock_unlock(&f->lock);
    free(all);
    free(k.inos);
    free(k.names);
    free(k.subdirs);
    free(k.state);
    free(k.reached);
    free(scratch);
    return c.n;
}
