/* The block store; the on-disk layout, the file format and the invariants
 * are in store.h. This file owns four pieces of in-memory state, each
 * behind its own lock:
 *
 *   ref stripes  name -> {refs, writers}, 64 stripes each with its mutex and
 *                an open-addressing table. An entry exists only while
 *                refs > 0 or writers > 0. The stripe mutex is the lock of
 *                invariant 4: a put's dedup stat + ref, a put's "writers++"
 *                before it writes and "writers--, refs++" after its rename,
 *                GC's lookup + unlink and quarantine's lookup + rename all
 *                happen under it.
 *   cache        LRU of verified plain blocks, one mutex; data is copied in
 *                and out under it (blocks are immutable by name, so an entry
 *                can never be stale).
 *   coder pool   zstd contexts and block-sized scratch buffers, reused
 *                across calls rather than allocated per call.
 *   stats        relaxed atomic counters.
 *
 * Lock order: a stripe mutex may be held while taking nothing else; the
 * cache and pool mutexes are leaves. No lock is held across a write or an
 * fsync; a stat, unlink or rename may run under a stripe mutex.
 *
 * The life of one put of a new block:
 *
 *   hash ──▶ [stripe: stat says absent, writers++] ──▶ encode ──▶ write tmp/
 *        ──▶ fdatasync ──▶ rename into blocks/ab/ ──▶ fsync blocks/ab
 *        ──▶ [stripe: writers--, refs++]
 *
 * and of a dedup hit: hash ──▶ [stripe: stat says present, refs++]. */
#include "fs/store.h"

#include "base/assert.h"
#include "base/buf.h"
#include "base/clock.h"
#include "base/crc32c.h"
#include "base/fault.h"
#include "base/log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <zstd.h>

/* Why STORE_BLOCK_SIZE_DEFAULT is 256 KiB and STORE_ZSTD_LEVEL_DEFAULT 1:
 * tools/bench_store.c on the project's 2-core VM (shared, so +-15% noise),
 * medians of 3 runs, 32 MiB per configuration, MB/s of plain bytes:
 *
 *   block  level  write text/random  cold read text/random  stored/plain
 *   64K    1       68 /  82           192 / 223               0.238
 *   256K   1       89 / 135           184 / 224               0.232
 *   256K   3       91 / 124           217 / 213               0.212
 *   1M     1      131 / 181           203 / 219               0.220
 *   4M     1      149 / 182           209 / 235               0.220
 *   raw sequential write of a plain file, one fsync at the end: 767
 *   SHA-256 alone: 355 (no SHA-NI), SHA-512/256 ~550 (see store_hash):
 *   the ceiling of every put and read
 *
 *   - Each new block pays an fdatasync and a directory fsync (~0.5 ms), so
 *     64 KiB blocks are fsync-bound; 1 MiB writes 1.3-1.5x faster than
 *     256 KiB, 4 MiB little more.
 *   - But a small write rewrites its whole block (read, hash, compress,
 *     fsync, and ship to every replica): 256 KiB for a 4 KiB write, against
 *     1 MiB or 4 MiB; FUSE hands writes over in 128 KiB pieces, so a
 *     sequential write not coalesced by the caller rewrites a 1 MiB block
 *     up to 8 times, a 256 KiB one twice. Dedup is also 4x finer.
 *   - Block maps cost 32 bytes per block: 128 MiB of names per TiB at
 *     256 KiB, 512 MiB at 64 KiB, 32 MiB at 1 MiB; all acceptable from
 *     256 KiB on.
 *   - zstd level 3 stores 5-9% fewer bytes than level 1 (text-like data,
 *     and a tar of /usr/include) but compresses real text ~14% slower
 *     (322 vs 283 MB/s best of 6); decompression is as fast. Level 1 keeps
 *     the write path, which an application waits on, cheapest; the level
 *     is a per-node setting, so it can be raised without any format
 *     change. Random data is stored raw at either level. */

#define BLOCK_MAGIC "PXBK"
#define FORMAT_FILE "FORMAT"
#define FORMAT_HEAD "paxfs-store\nformat="
#define REF_STRIPES 64
#define CODER_IDLE_MAX 8
#define PATH_LEN 68 /* "ab/" + 64 hex + NUL */

/* ---- names ---- */

static EVP_MD *hash_md;
static pthread_once_t hash_once = PTHREAD_ONCE_INIT;

/* Fetched once and kept for the life of the process: fetching per call is
 * OpenSSL 3's slow path. */
static void hash_fetch(void) { hash_md = EVP_MD_fetch(NULL, "SHA512-256", NULL); }

const struct evp_md_st *store_hash(void)
{
    pthread_once(&hash_once, hash_fetch);
    return hash_md;
}

bool store_name_is_none(const struct store_name *n)
{
    return mem_is_zero(n->b, sizeof n->b);
}

bool store_name_eq(const struct store_name *a, const struct store_name *b)
{
    return memcmp(a->b, b->b, sizeof a->b) == 0;
}

void store_name_hex(const struct store_name *n, char out[STORE_NAME_HEX_LEN + 1])
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < STORE_NAME_LEN; i++) {
        out[2 * i] = digits[n->b[i] >> 4];
        out[2 * i + 1] = digits[n->b[i] & 15];
    }
    out[STORE_NAME_HEX_LEN] = '\0';
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

int store_name_parse(const char *hex, size_t len, struct store_name *out)
{
    if (len != STORE_NAME_HEX_LEN)
        return -EINVAL;
    struct store_name n;
    for (size_t i = 0; i < STORE_NAME_LEN; i++) {
        int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -EINVAL;
        n.b[i] = (uint8_t)(hi << 4 | lo);
    }
    *out = n;
    return 0;
}

int store_name_of(const void *p, size_t n, struct store_name *out)
{
    const EVP_MD *md = store_hash();
    if (!md)
        return -EIO;
    struct store_name name;
    unsigned int md_len = 0;
    if (EVP_Digest(p, n, name.b, &md_len, md, NULL) != 1 || md_len != STORE_NAME_LEN)
        return -ENOMEM;
    *out = name;
    return 0;
}

static void block_path(const struct store_name *n, char out[PATH_LEN])
{
    char hex[STORE_NAME_HEX_LEN + 1];
    store_name_hex(n, hex);
    snprintf(out, PATH_LEN, "%.2s/%s", hex, hex);
}

/* ---- the block-file codec ---- */

static void hdr_encode(uint8_t out[STORE_HDR_LEN], enum store_encoding enc, uint32_t plain_len,
                       uint32_t stored_len)
{
    memcpy(out, BLOCK_MAGIC, 4);
    out[4] = STORE_FORMAT_VERSION;
    out[5] = (uint8_t)enc;
    out[6] = 0;
    out[7] = 0;
    le_put_u32(out + 8, plain_len);
    le_put_u32(out + 12, stored_len);
    le_put_u32(out + 16, crc32c(0, out, 16));
}

/* Checks a header alone: CRC, magic, version, encoding, flags, lengths. */
static int hdr_parse(const uint8_t p[STORE_HDR_LEN], struct store_block_hdr *out)
{
    if (le_get_u32(p + 16) != crc32c(0, p, 16))
        return -EBADMSG;
    if (memcmp(p, BLOCK_MAGIC, 4) != 0 || p[4] != STORE_FORMAT_VERSION || p[6] || p[7])
        return -EBADMSG;
    uint32_t plain_len = le_get_u32(p + 8), stored_len = le_get_u32(p + 12);
    if (plain_len == 0 || plain_len > STORE_BLOCK_SIZE_MAX)
        return -EBADMSG;
    if (p[5] == STORE_ENC_RAW) {
        if (stored_len != plain_len)
            return -EBADMSG;
    } else if (p[5] == STORE_ENC_ZSTD) {
        if (stored_len == 0 || stored_len >= plain_len)
            return -EBADMSG;
    } else {
        return -EBADMSG;
    }
    out->encoding = (enum store_encoding)p[5];
    out->plain_len = plain_len;
    out->stored_len = stored_len;
    return 0;
}

int store_block_hdr_decode(const void *file, size_t len, struct store_block_hdr *out)
{
    struct store_block_hdr h;
    if (len < STORE_HDR_LEN || hdr_parse(file, &h) != 0 || len - STORE_HDR_LEN != h.stored_len)
        return -EBADMSG;
    *out = h;
    return 0;
}

/* Decodes the payload of a checked-header file. Raw bytes are used in place
 * (*plain points into file); zstd is decompressed into buf[0..cap). The
 * payload must be exactly one frame that declares, and yields, plain_len. */
static int payload_decode(ZSTD_DCtx *dctx, const uint8_t *file, const struct store_block_hdr *h,
                          uint8_t *buf, size_t cap, const uint8_t **plain)
{
    const uint8_t *payload = file + STORE_HDR_LEN;
    if (h->plain_len > cap)
        return -ENOBUFS;
    if (h->encoding == STORE_ENC_RAW) {
        *plain = payload;
        return 0;
    }
    if (ZSTD_getFrameContentSize(payload, h->stored_len) != h->plain_len)
        return -EBADMSG;
    if (ZSTD_findFrameCompressedSize(payload, h->stored_len) != h->stored_len)
        return -EBADMSG;
    size_t n = dctx ? ZSTD_decompressDCtx(dctx, buf, h->plain_len, payload, h->stored_len)
                    : ZSTD_decompress(buf, h->plain_len, payload, h->stored_len);
    if (ZSTD_isError(n) || n != h->plain_len)
        return -EBADMSG;
    *plain = buf;
    return 0;
}

/* 0 if the hash of p[0..n) is name, -EBADMSG if not, or the hash's own
 * error (which is not corruption). */
static int name_check(const void *p, size_t n, const struct store_name *name)
{
    struct store_name got;
    int rc = store_name_of(p, n, &got);
    if (rc)
        return rc;
    return store_name_eq(&got, name) ? 0 : -EBADMSG;
}

int store_block_decode(const void *file, size_t len, const struct store_name *name, void *out,
                       size_t cap, size_t *out_len)
{
    struct store_block_hdr h;
    int rc = store_block_hdr_decode(file, len, &h);
    if (rc)
        return rc;
    const uint8_t *plain = NULL;
    rc = payload_decode(NULL, file, &h, out, cap, &plain);
    if (rc)
        return rc;
    if (plain != out)
        memcpy(out, plain, h.plain_len);
    if (name && (rc = name_check(out, h.plain_len, name)))
        return rc;
    *out_len = h.plain_len;
    return 0;
}

/* ---- reference table: one stripe ---- */

struct ref_entry {
    struct store_name name;
    uint64_t refs;
    uint32_t writers; /* puts between their dedup lookup and their final ref */
    bool used;
};

struct ref_stripe {
    pthread_mutex_t mu;
    struct ref_entry *slots;
    size_t cap; /* a power of two, or 0 before the first insert */
    size_t count;
    /* Names whose entry left the table (nothing references or writes the
     * block any more) since the last store_gc: what it looks at, instead
     * of every block file. At most dropped_max; past that, or when memory
     * runs out, dropped_overflow makes the next GC walk every shard. */
    struct store_name *dropped;
    size_t n_dropped, cap_dropped, dropped_max;
    bool dropped_overflow;
};

/* Names are hash outputs, uniformly spread: any 8 bytes are a hash. The
 * stripe is picked from byte 1, the slot from bytes 8..15. */
static struct ref_stripe *stripe_of(struct store *s, const struct store_name *n);

static size_t ref_home(const struct ref_stripe *st, const struct store_name *n)
{
    return (size_t)le_get_u64(n->b + 8) & (st->cap - 1);
}

static struct ref_entry *ref_find(struct ref_stripe *st, const struct store_name *n)
{
    if (st->cap == 0)
        return NULL;
    size_t i = ref_home(st, n);
    for (size_t probes = 0; probes < st->cap; probes++, i = (i + 1) & (st->cap - 1)) {
        if (!st->slots[i].used)
            return NULL;
        if (store_name_eq(&st->slots[i].name, n))
            return &st->slots[i];
    }
    return NULL;
}

static void ref_place(struct ref_stripe *st, const struct ref_entry *e)
{
    size_t i = ref_home(st, &e->name);
    for (size_t probes = 0; probes < st->cap; probes++, i = (i + 1) & (st->cap - 1)) {
        if (!st->slots[i].used) {
            st->slots[i] = *e;
            return;
        }
    }
    ASSERT(!"ref stripe full");
}

static void ref_grow(struct ref_stripe *st)
{
    size_t old_cap = st->cap;
    struct ref_entry *old = st->slots;
    st->cap = old_cap ? old_cap * 2 : 64;
    st->slots = calloc(st->cap, sizeof *st->slots);
    ASSERT(st->slots); /* out of memory: like buf.h, we abort */
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].used)
            ref_place(st, &old[i]);
    free(old);
}

/* Finds or inserts (refs = writers = 0) the entry of n. */
static struct ref_entry *ref_get(struct ref_stripe *st, const struct store_name *n)
{
    struct ref_entry *e = ref_find(st, n);
    if (e)
        return e;
    if ((st->count + 1) * 10 > st->cap * 7)
        ref_grow(st);
    struct ref_entry fresh = {.name = *n, .used = true};
    ref_place(st, &fresh);
    st->count++;
    return ref_find(st, n);
}

/* Notes a name whose entry leaves the table, for the next store_gc. */
static void dropped_push(struct ref_stripe *st, const struct store_name *n)
{
    if (st->dropped_overflow)
        return;
    if (st->n_dropped == st->cap_dropped) {
        size_t cap = st->cap_dropped ? st->cap_dropped * 2 : 16;
        if (cap > st->dropped_max)
            cap = st->dropped_max;
        struct store_name *v = cap > st->n_dropped ? realloc(st->dropped, cap * sizeof *v) : NULL;
        if (!v) {
            st->dropped_overflow = true;
            return;
        }
        st->dropped = v;
        st->cap_dropped = cap;
    }
    st->dropped[st->n_dropped++] = *n;
}

/* Removes e if it holds nothing any more; linear probing's backward-shift
 * deletion, so that no tombstones accumulate. */
static void ref_settle(struct ref_stripe *st, struct ref_entry *e)
{
    if (e->refs > 0 || e->writers > 0)
        return;
    dropped_push(st, &e->name);
    size_t mask = st->cap - 1, i = (size_t)(e - st->slots), j = i;
    st->slots[i].used = false;
    st->count--;
    for (size_t probes = 0; probes < st->cap; probes++) {
        j = (j + 1) & mask;
        if (!st->slots[j].used)
            return;
        size_t k = ref_home(st, &st->slots[j].name);
        bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (stays)
            continue;
        st->slots[i] = st->slots[j];
        st->slots[j].used = false;
        i = j;
    }
}

/* ---- LRU cache of verified plain blocks ---- */

/* Two kinds of entry: bytes read from the block file and verified, and
 * bytes a put just hashed and wrote (unread: the file was never read
 * back). Both are right for their name. An unread entry serves only
 * store_get_to_rewrite; store_get reads and verifies the file once
 * first, so rot of a block never read is still found on its first read
 * (and repaired), not hidden until the entry is evicted. */
struct cache_node {
    struct cache_node *hnext; /* bucket chain */
    struct cache_node *prev, *next; /* LRU list, newest first */
    struct store_name name;
    size_t len;
    bool unread;
    uint8_t data[];
};

struct cache {
    pthread_mutex_t mu;
    size_t cap_bytes, used_bytes, count, nbuckets;
    struct cache_node **buckets;
    struct cache_node *head, *tail; /* LRU list: newest, oldest */
};

static size_t cache_cost(size_t len) { return sizeof(struct cache_node) + len; }

static struct cache_node **cache_slot(struct cache *c, const struct store_name *n)
{
    struct cache_node **pp = &c->buckets[le_get_u64(n->b + 16) & (c->nbuckets - 1)];
    for (size_t guard = 0; *pp && guard <= c->count; guard++, pp = &(*pp)->hnext)
        if (store_name_eq(&(*pp)->name, n))
            break;
    return pp;
}

static void lru_unlink(struct cache *c, struct cache_node *x)
{
    if (x->prev)
        x->prev->next = x->next;
    else
        c->head = x->next;
    if (x->next)
        x->next->prev = x->prev;
    else
        c->tail = x->prev;
}

static void lru_push_front(struct cache *c, struct cache_node *x)
{
    x->prev = NULL;
    x->next = c->head;
    if (c->head)
        c->head->prev = x;
    else
        c->tail = x;
    c->head = x;
}

static void cache_init(struct cache *c, size_t cap_bytes)
{
    pthread_mutex_init(&c->mu, NULL);
    c->cap_bytes = cap_bytes;
    c->nbuckets = 64;
    c->buckets = calloc(c->nbuckets, sizeof *c->buckets);
    ASSERT(c->buckets);
}

static void cache_remove_locked(struct cache *c, struct cache_node **pp)
{
    struct cache_node *x = *pp;
    *pp = x->hnext;
    lru_unlink(c, x);
    c->used_bytes -= cache_cost(x->len);
    c->count--;
    free(x);
}

static void cache_clear(struct cache *c)
{
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < c->nbuckets; i++)
        while (c->buckets[i])
            cache_remove_locked(c, &c->buckets[i]);
    pthread_mutex_unlock(&c->mu);
}

static void cache_deinit(struct cache *c)
{
    if (!c->buckets)
        return;
    cache_clear(c);
    free(c->buckets);
    pthread_mutex_destroy(&c->mu);
}

static void cache_grow_locked(struct cache *c)
{
    size_t nb = c->nbuckets * 2;
    struct cache_node **b = calloc(nb, sizeof *b);
    if (!b)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < c->nbuckets; i++) {
        struct cache_node *x = c->buckets[i];
        while (x) {
            struct cache_node *next = x->hnext;
            struct cache_node **head = &b[le_get_u64(x->name.b + 16) & (nb - 1)];
            x->hnext = *head;
            *head = x;
            x = next;
        }
    }
    free(c->buckets);
    c->buckets = b;
    c->nbuckets = nb;
}

/* 0 and the block copied out, -ENOENT if not cached (or only unread and
 * not accepted), -ENOBUFS if too long. */
static int cache_get(struct cache *c, const struct store_name *n, bool accept_unread, void *out,
                     size_t cap, size_t *len)
{
    if (c->cap_bytes == 0)
        return -ENOENT;
    int rc = -ENOENT;
    pthread_mutex_lock(&c->mu);
    struct cache_node *x = *cache_slot(c, n);
    if (x && (accept_unread || !x->unread)) {
        lru_unlink(c, x);
        lru_push_front(c, x);
        rc = -ENOBUFS;
        if (x->len <= cap) {
            memcpy(out, x->data, x->len);
            *len = x->len;
            rc = 0;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

/* Caches a copy of a block: bytes verified against the file, or (unread)
 * bytes a put hashed and wrote. */
static void cache_put(struct cache *c, const struct store_name *n, const void *p, size_t len,
                      bool unread)
{
    if (cache_cost(len) > c->cap_bytes)
        return;
    struct cache_node *x = malloc(cache_cost(len));
    if (!x)
        return; /* a cache may forget */
    x->name = *n;
    x->len = len;
    x->unread = unread;
    memcpy(x->data, p, len);
    pthread_mutex_lock(&c->mu);
    struct cache_node **pp = cache_slot(c, n);
    if (*pp) { /* cached meanwhile: same bytes */
        (*pp)->unread = (*pp)->unread && unread;
        pthread_mutex_unlock(&c->mu);
        free(x);
        return;
    }
    for (size_t guard = 0; c->used_bytes + cache_cost(len) > c->cap_bytes && guard < c->count + 1;
         guard++) {
        struct cache_node *victim = c->tail;
        cache_remove_locked(c, cache_slot(c, &victim->name));
    }
    if (c->count + 1 > c->nbuckets)
        cache_grow_locked(c);
    pp = cache_slot(c, n);
    x->hnext = NULL;
    *pp = x;
    lru_push_front(c, x);
    c->used_bytes += cache_cost(len);
    c->count++;
    pthread_mutex_unlock(&c->mu);
}

static void cache_forget(struct cache *c, const struct store_name *n)
{
    if (c->cap_bytes == 0)
        return;
    pthread_mutex_lock(&c->mu);
    struct cache_node **pp = cache_slot(c, n);
    if (*pp)
        cache_remove_locked(c, pp);
    pthread_mutex_unlock(&c->mu);
}

/* ---- coder pool: zstd contexts and scratch buffers ---- */

struct coder {
    struct coder *next;
    ZSTD_CCtx *cctx;    /* created on first compression */
    ZSTD_DCtx *dctx;    /* created on first decompression */
    uint8_t *file_buf;  /* store_file_max(block_size) bytes */
    uint8_t *plain_buf; /* block_size bytes */
};

struct coder_pool {
    pthread_mutex_t mu;
    struct coder *idle;
    int nidle;
};

static void coder_free(struct coder *c)
{
    if (!c)
        return;
    ZSTD_freeCCtx(c->cctx);
    ZSTD_freeDCtx(c->dctx);
    free(c->file_buf);
    free(c->plain_buf);
    free(c);
}

/* ---- the store ---- */

struct store_counters {
    _Atomic uint64_t puts, dedup_hits, writes, bytes_plain, bytes_stored, gets, cache_hits,
        cache_misses, corrupt_detected, gc_freed, repaired;
};

#define REPAIRS_MAX 64

struct store {
    uint32_t block_size;
    int zstd_level;
    uint32_t node_id;
    bool defer_sync;
    int root_fd, lock_fd, blocks_fd, tmp_fd, corrupt_fd;
    _Atomic uint64_t seq; /* unique suffix of temp and quarantine names */
    struct ref_stripe stripes[REF_STRIPES];
    pthread_mutex_t gc_mu; /* one store_gc at a time */
    bool gc_walked;        /* a GC has walked every shard since open */
    struct cache cache;
    struct coder_pool pool;
    struct store_counters st;
    _Atomic(store_repair_fn) repair; /* set once, after open */
    void *repair_ctx;
    /* Blocks being fetched by a repair: a second reader of one waits for
     * the first instead of fetching it again. */
    pthread_mutex_t repair_mu;
    pthread_cond_t repair_cond;
    struct store_name repairing[REPAIRS_MAX];
    size_t n_repairing;
};

static struct ref_stripe *stripe_of(struct store *s, const struct store_name *n)
{
    return &s->stripes[n->b[1] % REF_STRIPES];
}

static void count(_Atomic uint64_t *c, uint64_t v)
{
    atomic_fetch_add_explicit(c, v, memory_order_relaxed);
}

static int coder_get(struct store *s, struct coder **out)
{
    pthread_mutex_lock(&s->pool.mu);
    struct coder *c = s->pool.idle;
    if (c) {
        s->pool.idle = c->next;
        s->pool.nidle--;
    }
    pthread_mutex_unlock(&s->pool.mu);
    if (!c) {
        c = calloc(1, sizeof *c);
        if (!c)
            return -ENOMEM;
        c->file_buf = malloc(store_file_max(s->block_size));
        c->plain_buf = malloc(s->block_size);
        if (!c->file_buf || !c->plain_buf) {
            coder_free(c);
            return -ENOMEM;
        }
    }
    *out = c;
    return 0;
}

static void coder_put(struct store *s, struct coder *c)
{
    pthread_mutex_lock(&s->pool.mu);
    if (s->pool.nidle < CODER_IDLE_MAX) {
        c->next = s->pool.idle;
        s->pool.idle = c;
        s->pool.nidle++;
        c = NULL;
    }
    pthread_mutex_unlock(&s->pool.mu);
    coder_free(c);
}

void store_config_init(struct store_config *cfg, const char *root)
{
    *cfg = (struct store_config){
        .root = root,
        .block_size = 0,
        .zstd_level = STORE_ZSTD_LEVEL_DEFAULT,
        .cache_bytes = STORE_CACHE_BYTES_DEFAULT,
    };
}

static bool block_size_ok(uint32_t bs)
{
    return bs >= STORE_BLOCK_SIZE_MIN && bs <= STORE_BLOCK_SIZE_MAX && (bs & (bs - 1)) == 0;
}

uint32_t store_block_size(const struct store *s) { return s->block_size; }

/* ---- small I/O helpers ---- */

static int close_checked(int fd)
{
    return close(fd) == 0 || errno == EINTR ? 0 : -errno;
}

static int write_all(int fd, struct iovec *iov, int iovcnt)
{
    int rc = FAULT("store.write");
    if (rc)
        return rc;
    /* Each pass writes at least one byte or fails, so this ends. */
    while (iovcnt > 0) {
        ssize_t n = writev(fd, iov, iovcnt);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return -EIO;
        size_t done = (size_t)n;
        while (iovcnt > 0 && done >= iov->iov_len) {
            done -= iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + done;
            iov->iov_len -= done;
        }
    }
    return 0;
}

/* Reads exactly len bytes from offset 0; -EBADMSG if the file is shorter
 * than its fstat said (it was truncated under us: not a valid block). */
static int read_exact(int fd, uint8_t *p, size_t len)
{
    size_t off = 0;
    while (off < len) {
        ssize_t n = pread(fd, p + off, len - off, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return -EBADMSG;
        off += (size_t)n;
    }
    return 0;
}

static int fsync_dirat(int parent_fd, const char *name)
{
    int fd = openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = FAULT("store.fsync_dir");
    if (rc == 0 && fsync(fd) != 0)
        rc = -errno;
    close(fd);
    return rc;
}

/* ---- put ---- */

/* Moves a block file that failed verification to corrupt/, unless it is no
 * longer the file that was read (st: a repair already replaced it) or a put
 * is writing the name (it will replace it). Under the stripe mutex, so no
 * rename into the name can interleave (writers is raised first). */
static void quarantine_locked(struct store *s, struct ref_stripe *st, const struct store_name *n,
                              const char *path, const struct stat *read_st)
{
    struct ref_entry *e = ref_find(st, n);
    if (e && e->writers > 0)
        return;
    struct stat now;
    if (fstatat(s->blocks_fd, path, &now, AT_SYMLINK_NOFOLLOW) != 0)
        return;
    if (read_st && (now.st_ino != read_st->st_ino || now.st_dev != read_st->st_dev))
        return;
    char dst[PATH_LEN + 24];
    snprintf(dst, sizeof dst, "%s.%llu", path + 3,
             (unsigned long long)atomic_fetch_add(&s->seq, 1));
    if (renameat(s->blocks_fd, path, s->corrupt_fd, dst) != 0) {
        LOG_E("store_quarantine_failed node=%u block=%s errno=%d", s->node_id, path + 3, errno);
        return;
    }
    LOG_W("store_quarantined node=%u block=%s to=corrupt/%s", s->node_id, path + 3, dst);
}

/* The dedup check of a put: 1 if the block file of n looks whole (a
 * regular file whose header checks and whose size is exactly header +
 * stored_len), 0 if there is none or it is torn (then it is moved aside, so
 * the put writes it afresh), or a negative errno. This catches what a crash
 * leaves of a put that was not synced (store.h, defer_sync): an empty,
 * short or never-written file; the bytes themselves are checked on read. */
static int dedup_check_locked(struct store *s, struct ref_stripe *st, const struct store_name *n,
                              const char *path)
{
    int fd = openat(s->blocks_fd, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0 && errno == ENOENT)
        return 0;
    if (fd < 0 && errno != ELOOP) /* ELOOP: a symlink, never a block file */
        return -errno;
    bool whole = false;
    if (fd >= 0) {
        uint8_t hdr[STORE_HDR_LEN];
        struct store_block_hdr h;
        struct stat sb;
        whole = fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) &&
                pread(fd, hdr, sizeof hdr, 0) == (ssize_t)sizeof hdr && hdr_parse(hdr, &h) == 0 &&
                h.plain_len <= s->block_size &&
                (uint64_t)sb.st_size == STORE_HDR_LEN + (uint64_t)h.stored_len;
        close(fd);
    }
    if (whole)
        return 1;
    count(&s->st.corrupt_detected, 1);
    quarantine_locked(s, st, n, path, NULL);
    return 0;
}

/* The locked half of a put's start. Returns 1 if the block is on disk (a
 * reference was added), 0 if the caller must write it (a writer was
 * registered: it must call put_end), or a negative errno. */
static int put_begin(struct store *s, const struct store_name *n, const char *path)
{
    struct ref_stripe *st = stripe_of(s, n);
    pthread_mutex_lock(&st->mu);
    int rc = dedup_check_locked(s, st, n, path);
    if (rc >= 0) {
        struct ref_entry *e = ref_get(st, n);
        if (rc == 1)
            e->refs++;
        else
            e->writers++;
    }
    pthread_mutex_unlock(&st->mu);
    return rc;
}

static void put_end(struct store *s, const struct store_name *n, bool written)
{
    struct ref_stripe *st = stripe_of(s, n);
    pthread_mutex_lock(&st->mu);
    struct ref_entry *e = ref_find(st, n);
    ASSERT(e && e->writers > 0);
    e->writers--;
    if (written)
        e->refs++;
    ref_settle(st, e);
    pthread_mutex_unlock(&st->mu);
}

/* Writes iov as the block file of n (invariant 1). On failure removes the
 * temp file; if only the final directory fsync failed, a complete and valid
 * file is left under the name (never a partial one). */
static int write_block_file(struct store *s, const char *path, struct iovec *iov, int iovcnt)
{
    char tmp[PATH_LEN + 24];
    snprintf(tmp, sizeof tmp, "%s.%llu", path + 3,
             (unsigned long long)atomic_fetch_add(&s->seq, 1));
    int fd = openat(s->tmp_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    int rc = write_all(fd, iov, iovcnt);
    /* Deferred: start the writeback now without waiting for it, so that
     * the store_sync before the next snapshot finds little left to write
     * and does not hold up the WAL's fsyncs behind a burst of block I/O. */
    if (rc == 0 && s->defer_sync)
        sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
    if (rc == 0 && !s->defer_sync)
        rc = FAULT("store.fsync");
    if (rc == 0 && !s->defer_sync && fdatasync(fd) != 0)
        rc = -errno;
    int crc = close_checked(fd);
    if (rc == 0)
        rc = crc;
    if (rc == 0)
        rc = FAULT("store.rename");
    if (rc == 0 && renameat(s->tmp_fd, tmp, s->blocks_fd, path) != 0)
        rc = -errno;
    if (rc) {
        unlinkat(s->tmp_fd, tmp, 0);
        return rc;
    }
    if (s->defer_sync)
        return 0;
    char shard[3] = {path[0], path[1], '\0'};
    return fsync_dirat(s->blocks_fd, shard);
}

/* Encodes data as a block file in c->file_buf (zstd) or as header + the
 * caller's bytes (raw), and fills iov. zstd is kept only if it saves at
 * least 1/64 of the size: below that, decompressing on every read costs
 * more than the disk space it saves. */
static int encode(struct store *s, struct coder *c, const void *data, size_t len,
                  struct iovec iov[2])
{
    size_t limit = len - len / 64; /* zstd output must be < limit */
    if (limit > 1) {
        if (!c->cctx && !(c->cctx = ZSTD_createCCtx()))
            return -ENOMEM;
        size_t n = ZSTD_compressCCtx(c->cctx, c->file_buf + STORE_HDR_LEN, limit - 1, data, len,
                                     s->zstd_level);
        if (!ZSTD_isError(n) && n > 0 && n < limit) {
            hdr_encode(c->file_buf, STORE_ENC_ZSTD, (uint32_t)len, (uint32_t)n);
            iov[0] = (struct iovec){c->file_buf, STORE_HDR_LEN + n};
            return 1;
        }
    }
    hdr_encode(c->file_buf, STORE_ENC_RAW, (uint32_t)len, (uint32_t)len);
    iov[0] = (struct iovec){c->file_buf, STORE_HDR_LEN};
    iov[1] = (struct iovec){(void *)data, len};
    return 2;
}

static void put_done(struct store *s, bool wrote, uint64_t plain, uint64_t stored)
{
    count(&s->st.puts, 1);
    if (!wrote) {
        count(&s->st.dedup_hits, 1);
        return;
    }
    count(&s->st.writes, 1);
    count(&s->st.bytes_plain, plain);
    count(&s->st.bytes_stored, stored);
}

int store_put(struct store *s, const void *data, size_t len, struct store_name *out_name)
{
    if (len == 0 || len > s->block_size)
        return -EINVAL;
    struct store_name n;
    int rc = store_name_of(data, len, &n);
    if (rc)
        return rc;
    char path[PATH_LEN];
    block_path(&n, path);
    rc = put_begin(s, &n, path);
    if (rc < 0)
        return rc;
    if (rc == 1) {
        put_done(s, false, 0, 0);
    } else {
        struct coder *c = NULL;
        rc = coder_get(s, &c);
        if (rc == 0) {
            struct iovec iov[2];
            int iovcnt = encode(s, c, data, len, iov);
            rc = iovcnt < 0 ? iovcnt : write_block_file(s, path, iov, iovcnt);
            if (rc == 0)
                put_done(s, true, len, iov[0].iov_len + (iovcnt == 2 ? iov[1].iov_len : 0));
            coder_put(s, c);
        }
        put_end(s, &n, rc == 0);
        if (rc) {
            LOG_W("store_put_failed node=%u block=%s err=%d", s->node_id, path + 3, rc);
            return rc;
        }
    }
    /* The block's plain bytes go into the cache: a write smaller than a
     * block is applied as a read-modify-write of it, and the next such
     * write to the same block (small sequential or random writes) then
     * reads it from the cache instead of decoding and hashing the file
     * again. */
    cache_put(&s->cache, &n, data, len, true);
    *out_name = n;
    return 0;
}

/* Decodes and verifies a whole block file against n using c's buffers;
 * *plain points into file (raw) or c->plain_buf (zstd). A block longer than
 * this store's block size is corrupt here, whatever the format allows. */
static int verify_file(struct store *s, struct coder *c, const uint8_t *file, size_t len,
                       const struct store_name *n, const uint8_t **plain, size_t *plain_len)
{
    struct store_block_hdr h;
    int rc = store_block_hdr_decode(file, len, &h);
    if (rc)
        return rc;
    if (h.plain_len > s->block_size)
        return -EBADMSG;
    if (h.encoding == STORE_ENC_ZSTD && !c->dctx && !(c->dctx = ZSTD_createDCtx()))
        return -ENOMEM;
    rc = payload_decode(c->dctx, file, &h, c->plain_buf, s->block_size, plain);
    if (rc)
        return rc;
    rc = name_check(*plain, h.plain_len, n);
    if (rc)
        return rc;
    *plain_len = h.plain_len;
    return 0;
}

int store_encode(struct store *s, const void *data, size_t len, struct store_name *out_name,
                 void *out, size_t cap, size_t *out_len)
{
    if (len == 0 || len > s->block_size)
        return -EINVAL;
    if (cap < store_file_max(s->block_size))
        return -ENOBUFS;
    struct store_name n;
    int rc = store_name_of(data, len, &n);
    if (rc)
        return rc;
    struct coder *c = NULL;
    rc = coder_get(s, &c);
    if (rc)
        return rc;
    struct iovec iov[2];
    int iovcnt = encode(s, c, data, len, iov);
    if (iovcnt > 0) {
        memcpy(out, iov[0].iov_base, iov[0].iov_len);
        if (iovcnt == 2)
            memcpy((uint8_t *)out + iov[0].iov_len, iov[1].iov_base, iov[1].iov_len);
        *out_len = iov[0].iov_len + (iovcnt == 2 ? iov[1].iov_len : 0);
        *out_name = n;
    }
    coder_put(s, c);
    return iovcnt < 0 ? iovcnt : 0;
}

static int put_encoded(struct store *s, const struct store_name *name, const void *file,
                       size_t len, bool verify);

int store_put_encoded(struct store *s, const struct store_name *name, const void *file,
                      size_t len)
{
    return put_encoded(s, name, file, len, true);
}

int store_put_encoded_trusted(struct store *s, const struct store_name *name, const void *file,
                              size_t len)
{
    return put_encoded(s, name, file, len, false);
}

static int put_encoded(struct store *s, const struct store_name *name, const void *file,
                       size_t len, bool verify)
{
    /* The cheap header check first, outside any lock. */
    struct store_block_hdr h;
    int rc = store_block_hdr_decode(file, len, &h);
    if (rc)
        return rc;
    if (h.plain_len > s->block_size)
        return -EBADMSG;
    char path[PATH_LEN];
    block_path(name, path);
    rc = put_begin(s, name, path);
    if (rc < 0)
        return rc;
    if (rc == 1) {
        put_done(s, false, 0, 0);
        return 0;
    }
    struct coder *c = NULL;
    rc = coder_get(s, &c);
    if (rc == 0) {
        const uint8_t *plain;
        size_t plain_len = h.plain_len;
        if (verify)
            rc = verify_file(s, c, file, len, name, &plain, &plain_len);
        if (rc == 0) {
            struct iovec iov[1] = {{(void *)file, len}};
            rc = write_block_file(s, path, iov, 1);
        }
        if (rc == 0)
            put_done(s, true, plain_len, len);
        coder_put(s, c);
    }
    put_end(s, name, rc == 0);
    if (rc)
        LOG_W("store_put_failed node=%u block=%s err=%d encoded=1", s->node_id, path + 3, rc);
    return rc;
}

/* ---- get ---- */

/* Reads and verifies the block file of n into c->file_buf. On success
 * *file_len is its length and *plain and *plain_len its verified plain bytes.
 * A file that fails is counted, logged and, if `quarantine`, moved aside. */
/* Reads block file path (relative to blocks/) whole into out[0..cap):
 * -ENOENT, -EBADMSG for a size no block file can have, -ENOBUFS. *sb is
 * the file's stat (for quarantine). */
static int read_block_file(struct store *s, const char *path, uint8_t *out, size_t cap,
                           struct stat *sb)
{
    int fd = openat(s->blocks_fd, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? -ENOENT : -errno;
    int rc = fstat(fd, sb) == 0 ? 0 : -errno;
    if (rc == 0 && (sb->st_size <= STORE_HDR_LEN ||
                    (uint64_t)sb->st_size > store_file_max(s->block_size)))
        rc = -EBADMSG;
    if (rc == 0 && (size_t)sb->st_size > cap)
        rc = -ENOBUFS;
    if (rc == 0)
        rc = read_exact(fd, out, (size_t)sb->st_size);
    close(fd);
    return rc;
}

static int load_verified(struct store *s, struct coder *c, const struct store_name *n,
                         bool quarantine, size_t *file_len, const uint8_t **plain,
                         size_t *plain_len)
{
    char path[PATH_LEN];
    block_path(n, path);
    struct stat sb;
    int rc = read_block_file(s, path, c->file_buf, store_file_max(s->block_size), &sb);
    if (rc == -ENOENT || (rc != 0 && rc != -EBADMSG))
        return rc;
    if (rc == 0)
        rc = verify_file(s, c, c->file_buf, (size_t)sb.st_size, n, plain, plain_len);
    if (rc == -EBADMSG) {
        count(&s->st.corrupt_detected, 1);
        LOG_W("store_corrupt_block node=%u block=%s", s->node_id, path + 3);
        if (quarantine) {
            struct ref_stripe *st = stripe_of(s, n);
            pthread_mutex_lock(&st->mu);
            quarantine_locked(s, st, n, path, &sb);
            pthread_mutex_unlock(&st->mu);
        }
    }
    if (rc == 0)
        *file_len = (size_t)sb.st_size;
    return rc;
}

static int get_once(struct store *s, const struct store_name *name, bool accept_unread,
                    void *out, size_t cap, size_t *len)
{
    int rc = cache_get(&s->cache, name, accept_unread, out, cap, len);
    if (rc == 0 || rc == -ENOBUFS) {
        count(&s->st.cache_hits, 1);
        if (rc == 0)
            count(&s->st.gets, 1);
        return rc;
    }
    count(&s->st.cache_misses, 1);
    struct coder *c = NULL;
    rc = coder_get(s, &c);
    if (rc)
        return rc;
    size_t file_len, plain_len;
    const uint8_t *plain;
    rc = load_verified(s, c, name, true, &file_len, &plain, &plain_len);
    if (rc == 0 && plain_len > cap)
        rc = -ENOBUFS;
    if (rc == 0) {
        memcpy(out, plain, plain_len);
        cache_put(&s->cache, name, plain, plain_len, false);
        count(&s->st.gets, 1);
        *len = plain_len;
    }
    coder_put(s, c);
    return rc;
}

void store_set_repair(struct store *s, store_repair_fn fn, void *ctx)
{
    s->repair_ctx = ctx;
    atomic_store(&s->repair, fn);
}

static bool repairing_has(const struct store *s, const struct store_name *name, size_t *at)
{
    for (size_t i = 0; i < s->n_repairing; i++) {
        if (store_name_eq(&s->repairing[i], name)) {
            *at = i;
            return true;
        }
    }
    return false;
}

/* Fetches name through repair, once however many readers found it bad at
 * the same time: 0 fetched, 1 another reader fetched it meanwhile (read
 * again), or repair's error. */
static int repair_once(struct store *s, const struct store_name *name, store_repair_fn repair)
{
    size_t at;
    pthread_mutex_lock(&s->repair_mu);
    if (repairing_has(s, name, &at)) {
        while (repairing_has(s, name, &at))
            pthread_cond_wait(&s->repair_cond, &s->repair_mu);
        pthread_mutex_unlock(&s->repair_mu);
        return 1;
    }
    bool tracked = s->n_repairing < REPAIRS_MAX; /* else: rare, fetch untracked */
    if (tracked)
        s->repairing[s->n_repairing++] = *name;
    pthread_mutex_unlock(&s->repair_mu);
    int rc = repair(s->repair_ctx, name);
    if (tracked) {
        pthread_mutex_lock(&s->repair_mu);
        if (repairing_has(s, name, &at))
            s->repairing[at] = s->repairing[--s->n_repairing];
        pthread_cond_broadcast(&s->repair_cond);
        pthread_mutex_unlock(&s->repair_mu);
    }
    return rc;
}

static int get_repairing(struct store *s, const struct store_name *name, bool accept_unread,
                         void *out, size_t cap, size_t *len)
{
    int rc = get_once(s, name, accept_unread, out, cap, len);
    store_repair_fn repair = atomic_load(&s->repair);
    if ((rc == -ENOENT || rc == -EBADMSG) && repair) {
        /* Missing, or corrupt and now quarantined: fetch it from a peer
         * (which verifies it against its name) and read again. */
        int fetched = repair_once(s, name, repair);
        if (fetched == 0)
            count(&s->st.repaired, 1);
        if (fetched == 0 || fetched == 1)
            rc = get_once(s, name, accept_unread, out, cap, len);
        char hex[STORE_NAME_HEX_LEN + 1];
        store_name_hex(name, hex);
        LOG_W("store_repair node=%u block=%s fetched=%d rc=%d", s->node_id, hex, fetched, rc);
    }
    return rc;
}

int store_get(struct store *s, const struct store_name *name, void *out, size_t cap, size_t *len)
{
    return get_repairing(s, name, false, out, cap, len);
}

int store_get_to_rewrite(struct store *s, const struct store_name *name, void *out, size_t cap,
                         size_t *len)
{
    return get_repairing(s, name, true, out, cap, len);
}

int store_get_encoded(struct store *s, const struct store_name *name, void *out, size_t cap,
                      size_t *len)
{
    struct coder *c = NULL;
    int rc = coder_get(s, &c);
    if (rc)
        return rc;
    size_t file_len, plain_len;
    const uint8_t *plain;
    rc = load_verified(s, c, name, true, &file_len, &plain, &plain_len);
    if (rc == 0 && file_len > cap)
        rc = -ENOBUFS;
    if (rc == 0) {
        memcpy(out, c->file_buf, file_len);
        *len = file_len;
    }
    coder_put(s, c);
    return rc;
}

int store_read_file(struct store *s, const struct store_name *name, void *out, size_t cap,
                    size_t *len)
{
    char path[PATH_LEN];
    block_path(name, path);
    struct stat sb;
    int rc = read_block_file(s, path, out, cap, &sb);
    struct store_block_hdr h;
    if (rc == 0)
        rc = store_block_hdr_decode(out, (size_t)sb.st_size, &h);
    if (rc == 0)
        *len = (size_t)sb.st_size;
    return rc;
}

int store_verify(struct store *s, const struct store_name *name)
{
    struct coder *c = NULL;
    int rc = coder_get(s, &c);
    if (rc)
        return rc;
    size_t file_len, plain_len;
    const uint8_t *plain;
    rc = load_verified(s, c, name, false, &file_len, &plain, &plain_len);
    coder_put(s, c);
    return rc;
}

int store_has(struct store *s, const struct store_name *name)
{
    char path[PATH_LEN];
    block_path(name, path);
    struct stat sb;
    if (fstatat(s->blocks_fd, path, &sb, AT_SYMLINK_NOFOLLOW) == 0)
        return 1;
    return errno == ENOENT ? 0 : -errno;
}

/* ---- references ---- */

void store_ref(struct store *s, const struct store_name *name)
{
    struct ref_stripe *st = stripe_of(s, name);
    pthread_mutex_lock(&st->mu);
    ref_get(st, name)->refs++;
    pthread_mutex_unlock(&st->mu);
}

int store_unref(struct store *s, const struct store_name *name)
{
    struct ref_stripe *st = stripe_of(s, name);
    pthread_mutex_lock(&st->mu);
    struct ref_entry *e = ref_find(st, name);
    int rc = -ENOENT;
    if (e && e->refs > 0) {
        e->refs--;
        ref_settle(st, e);
        rc = 0;
    }
    pthread_mutex_unlock(&st->mu);
    return rc;
}

uint64_t store_refcount(struct store *s, const struct store_name *name)
{
    struct ref_stripe *st = stripe_of(s, name);
    pthread_mutex_lock(&st->mu);
    struct ref_entry *e = ref_find(st, name);
    uint64_t refs = e ? e->refs : 0;
    pthread_mutex_unlock(&st->mu);
    return refs;
}

/* ---- walking the shards: list and GC ---- */

typedef int (*shard_visit_fn)(struct store *s, DIR *d, const char *file,
                              const struct store_name *n, void *ctx);

/* Calls visit for each well-named block file in each shard. A shard that
 * cannot be opened is an error (the walk would silently miss blocks). */
static int shards_walk(struct store *s, shard_visit_fn visit, void *ctx)
{
    for (unsigned shard = 0; shard < 256; shard++) {
        char dir[3];
        snprintf(dir, sizeof dir, "%02x", shard);
        int fd = openat(s->blocks_fd, dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
            return -errno;
        DIR *d = fdopendir(fd);
        if (!d) {
            int rc = -errno;
            close(fd);
            return rc;
        }
        int rc = 0;
        struct dirent *e;
        /* readdir returns each entry once; the directory is finite. */
        while (rc == 0 && (e = readdir(d)) != NULL) {
            struct store_name n;
            if (store_name_parse(e->d_name, strlen(e->d_name), &n) != 0 || n.b[0] != shard)
                continue;
            rc = visit(s, d, e->d_name, &n, ctx);
        }
        closedir(d);
        if (rc)
            return rc;
    }
    return 0;
}

struct list_ctx {
    store_list_fn fn;
    void *ctx;
};

static int list_visit(struct store *s, DIR *d, const char *file, const struct store_name *n,
                      void *ctx)
{
    (void)s, (void)d, (void)file;
    struct list_ctx *l = ctx;
    return l->fn(l->ctx, n);
}

int store_list(struct store *s, store_list_fn fn, void *ctx)
{
    struct list_ctx l = {fn, ctx};
    return shards_walk(s, list_visit, &l);
}

/* Unlinks block n (dir_fd/file) unless something references it or a put
 * is writing it; counts it in *freed. */
static void gc_one(struct store *s, int dir_fd, const char *file, const struct store_name *n,
                   uint64_t *freed)
{
    struct ref_stripe *st = stripe_of(s, n);
    bool gone = false;
    pthread_mutex_lock(&st->mu);
    /* An entry exists only while refs > 0 or a put is writing the name. */
    if (!ref_find(st, n)) {
        if (unlinkat(dir_fd, file, 0) == 0)
            gone = true;
        else if (errno != ENOENT)
            LOG_W("store_gc_unlink_failed node=%u block=%s errno=%d", s->node_id, file, errno);
    }
    pthread_mutex_unlock(&st->mu);
    if (gone) {
        cache_forget(&s->cache, n);
        (*freed)++;
    }
}

static int gc_visit(struct store *s, DIR *d, const char *file, const struct store_name *n,
                    void *ctx)
{
    gc_one(s, dirfd(d), file, n, ctx);
    return 0;
}

/* The shard directories are not fsynced after unlinking: a crash may bring
 * an unlinked block back, which is harmless (it is unreferenced, so the
 * first GC after the restart, which walks every shard, removes it again).
 * Later GCs look only at the names whose count fell to zero since the one
 * before: the work follows what changed, not the size of the store. */
int store_gc(struct store *s, uint64_t *freed)
{
    pthread_mutex_lock(&s->gc_mu);
    struct store_name *lists[REF_STRIPES];
    size_t counts[REF_STRIPES];
    bool walk = !s->gc_walked;
    for (int i = 0; i < REF_STRIPES; i++) {
        struct ref_stripe *st = &s->stripes[i];
        pthread_mutex_lock(&st->mu);
        lists[i] = st->dropped;
        counts[i] = st->n_dropped;
        walk |= st->dropped_overflow;
        st->dropped = NULL;
        st->n_dropped = st->cap_dropped = 0;
        st->dropped_overflow = false;
        pthread_mutex_unlock(&st->mu);
    }
    uint64_t n = 0;
    int rc = 0;
    if (walk) {
        rc = shards_walk(s, gc_visit, &n);
        s->gc_walked = rc == 0; /* else the next GC walks again */
    } else {
        for (int i = 0; i < REF_STRIPES; i++)
            for (size_t k = 0; k < counts[i]; k++) {
                char path[PATH_LEN];
                block_path(&lists[i][k], path);
                gc_one(s, s->blocks_fd, path, &lists[i][k], &n);
            }
    }
    for (int i = 0; i < REF_STRIPES; i++)
        free(lists[i]);
    pthread_mutex_unlock(&s->gc_mu);
    count(&s->st.gc_freed, n);
    LOG_I("store_gc node=%u freed=%llu walked=%d rc=%d", s->node_id, (unsigned long long)n,
          walk, rc);
    if (freed)
        *freed = n;
    return rc;
}

int store_sync(struct store *s)
{
    int rc = FAULT("store.sync");
    if (rc == 0 && syncfs(s->root_fd) != 0)
        rc = -errno;
    if (rc)
        LOG_E("store_sync_failed node=%u err=%d", s->node_id, rc);
    return rc;
}

void store_get_stats(struct store *s, struct store_stats *out)
{
    struct store_counters *c = &s->st;
    *out = (struct store_stats){
        .puts = atomic_load(&c->puts),
        .dedup_hits = atomic_load(&c->dedup_hits),
        .writes = atomic_load(&c->writes),
        .bytes_plain = atomic_load(&c->bytes_plain),
        .bytes_stored = atomic_load(&c->bytes_stored),
        .gets = atomic_load(&c->gets),
        .cache_hits = atomic_load(&c->cache_hits),
        .cache_misses = atomic_load(&c->cache_misses),
        .corrupt_detected = atomic_load(&c->corrupt_detected),
        .repaired = atomic_load(&c->repaired),
        .gc_freed = atomic_load(&c->gc_freed),
    };
}

void store_cache_drop(struct store *s) { cache_clear(&s->cache); }

/* ---- open and close ---- */

static int mkdirat_ok(int fd, const char *name)
{
    return mkdirat(fd, name, 0755) == 0 || errno == EEXIST ? 0 : -errno;
}

static int open_dir(int parent, const char *name, int *out)
{
    int rc = mkdirat_ok(parent, name);
    if (rc)
        return rc;
    int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    *out = fd;
    return 0;
}

/* Parses "paxfs-store\nformat=V\nblock_size=N\n" exactly. */
static int format_parse(const char *text, uint32_t *block_size)
{
    size_t head = strlen(FORMAT_HEAD);
    if (strncmp(text, FORMAT_HEAD, head) != 0)
        return -EBADMSG;
    char *end;
    errno = 0;
    unsigned long ver = strtoul(text + head, &end, 10);
    if (end == text + head || *end != '\n' || errno)
        return -EBADMSG;
    if (ver != STORE_FORMAT_VERSION)
        return -EPROTO;
    const char *p = end + 1;
    if (strncmp(p, "block_size=", 11) != 0)
        return -EBADMSG;
    p += 11;
    unsigned long bs = strtoul(p, &end, 10);
    if (end == p || strcmp(end, "\n") != 0 || errno || bs > UINT32_MAX ||
        !block_size_ok((uint32_t)bs))
        return -EBADMSG;
    *block_size = (uint32_t)bs;
    return 0;
}

static int format_create(struct store *s, uint32_t block_size)
{
    char text[96];
    int len = snprintf(text, sizeof text, FORMAT_HEAD "%d\nblock_size=%u\n",
                       STORE_FORMAT_VERSION, block_size);
    int fd = openat(s->root_fd, FORMAT_FILE ".tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                    0644);
    if (fd < 0)
        return -errno;
    struct iovec iov = {text, (size_t)len};
    int rc = write_all(fd, &iov, 1);
    if (rc == 0 && fsync(fd) != 0)
        rc = -errno;
    int crc = close_checked(fd);
    if (rc == 0)
        rc = crc;
    if (rc == 0 && renameat(s->root_fd, FORMAT_FILE ".tmp", s->root_fd, FORMAT_FILE) != 0)
        rc = -errno;
    if (rc == 0 && fsync(s->root_fd) != 0)
        rc = -errno;
    return rc;
}

/* Reads and checks root_fd's FORMAT: its block size into *recorded, or
 * -ENOENT if there is none yet. want (0: any) must match it (-EINVAL). */
static int format_read(int root_fd, uint32_t want, uint32_t *recorded)
{
    int fd = openat(root_fd, FORMAT_FILE, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    char text[128];
    ssize_t n = read(fd, text, sizeof text - 1);
    int rc = n < 0 ? -errno : 0;
    close(fd);
    if (rc)
        return rc;
    text[n] = '\0';
    if (strlen(text) != (size_t)n)
        return -EBADMSG;
    rc = format_parse(text, recorded);
    if (rc == 0 && want && want != *recorded)
        rc = -EINVAL;
    return rc;
}

/* Reads ROOT/FORMAT, or creates it for a new store; sets s->block_size. */
static int format_load(struct store *s, uint32_t want)
{
    uint32_t recorded;
    int rc = format_read(s->root_fd, want, &recorded);
    if (rc == -ENOENT) {
        s->block_size = want ? want : STORE_BLOCK_SIZE_DEFAULT;
        return format_create(s, s->block_size);
    }
    if (rc == 0)
        s->block_size = recorded;
    return rc;
}

void store_open_error(int rc, const char *root, char *out, size_t len)
{
    switch (rc) {
    case -EBUSY:
        snprintf(out, len, "the block store %s is in use: a paxfs mount serves this data "
                 "directory", root);
        break;
    case -EINVAL:
        snprintf(out, len, "the block store %s was made with another block size: use an "
                 "empty data directory for this cluster", root);
        break;
    case -EPROTO:
        snprintf(out, len, "the block store %s is of another format version (another paxfs "
                 "release made it): use an empty data directory", root);
        break;
    case -EBADMSG:
        snprintf(out, len, "the block store %s has an unreadable %s file", root, FORMAT_FILE);
        break;
    default:
        snprintf(out, len, "cannot open the block store %s: %s", root, strerror(-rc));
    }
}

int store_format_check(const char *root, uint32_t block_size)
{
    int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -errno;
    uint32_t recorded;
    int rc = format_read(fd, block_size, &recorded);
    close(fd);
    return rc == -ENOENT ? 0 : rc;
}

/* Removes what a crash left in tmp/: puts that never reached their rename. */
static int tmp_clean(struct store *s, unsigned *removed)
{
    int fd = openat(s->tmp_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -ENOMEM;
    }
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (unlinkat(s->tmp_fd, e->d_name, 0) == 0) {
            (*removed)++;
        } else if (errno != ENOENT) {
            rc = -errno;
            LOG_E("store_tmp_clean_failed node=%u file=%s errno=%d", s->node_id, e->d_name, errno);
        }
    }
    closedir(d);
    return rc;
}

static int open_layout(struct store *s)
{
    int rc;
    if ((rc = open_dir(s->root_fd, "blocks", &s->blocks_fd)) ||
        (rc = open_dir(s->root_fd, "tmp", &s->tmp_fd)) ||
        (rc = open_dir(s->root_fd, "corrupt", &s->corrupt_fd)))
        return rc;
    for (unsigned shard = 0; shard < 256; shard++) {
        char dir[3];
        snprintf(dir, sizeof dir, "%02x", shard);
        if ((rc = mkdirat_ok(s->blocks_fd, dir)))
            return rc;
    }
    /* Make the directories themselves durable before any block relies on
     * them; two fsyncs per open. */
    if (fsync(s->blocks_fd) != 0 || fsync(s->root_fd) != 0)
        return -errno;
    return 0;
}

int store_open(const struct store_config *cfg, struct store **out)
{
    if (!cfg->root || (cfg->block_size && !block_size_ok(cfg->block_size)) ||
        cfg->zstd_level < ZSTD_minCLevel() || cfg->zstd_level > ZSTD_maxCLevel())
        return -EINVAL;
    struct store *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->root_fd = s->lock_fd = s->blocks_fd = s->tmp_fd = s->corrupt_fd = -1;
    s->zstd_level = cfg->zstd_level;
    s->node_id = cfg->node_id;
    s->defer_sync = cfg->defer_sync;
    /* Temp names only need to be unique within one open (tmp/ is emptied
     * at open), but quarantined files accumulate across opens. */
    atomic_store(&s->seq, clock_wall_ns());
    for (int i = 0; i < REF_STRIPES; i++)
        pthread_mutex_init(&s->stripes[i].mu, NULL);
    size_t candidates = cfg->gc_candidates_max ? cfg->gc_candidates_max : STORE_GC_CANDIDATES_DEFAULT;
    for (int i = 0; i < REF_STRIPES; i++)
        s->stripes[i].dropped_max = candidates / REF_STRIPES ? candidates / REF_STRIPES : 1;
    pthread_mutex_init(&s->gc_mu, NULL);
    pthread_mutex_init(&s->pool.mu, NULL);
    pthread_mutex_init(&s->repair_mu, NULL);
    pthread_cond_init(&s->repair_cond, NULL);
    cache_init(&s->cache, cfg->cache_bytes);

    int rc = 0;
    unsigned removed = 0;
    if (mkdir(cfg->root, 0755) != 0 && errno != EEXIST)
        rc = -errno;
    if (rc == 0 && (s->root_fd = open(cfg->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
        rc = -errno;
    if (rc == 0 &&
        (s->lock_fd = openat(s->root_fd, "LOCK", O_RDWR | O_CREAT | O_CLOEXEC, 0644)) < 0)
        rc = -errno;
    if (rc == 0 && flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0)
        rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
    if (rc == 0)
        rc = format_load(s, cfg->block_size);
    if (rc == 0)
        rc = open_layout(s);
    if (rc == 0)
        rc = tmp_clean(s, &removed);
    if (rc) {
        LOG_E("store_open_failed node=%u root=%s err=%d", cfg->node_id, cfg->root, rc);
        store_close(s);
        return rc;
    }
    LOG_I("store_open node=%u root=%s block_size=%u zstd_level=%d cache_bytes=%zu "
          "tmp_removed=%u",
          s->node_id, cfg->root, s->block_size, s->zstd_level, cfg->cache_bytes, removed);
    *out = s;
    return 0;
}

void store_close(struct store *s)
{
    if (!s)
        return;
    for (int i = 0; i < REF_STRIPES; i++) {
        free(s->stripes[i].slots);
        free(s->stripes[i].dropped);
        pthread_mutex_destroy(&s->stripes[i].mu);
    }
    pthread_mutex_destroy(&s->gc_mu);
    cache_deinit(&s->cache);
    for (int guard = 0; s->pool.idle && guard <= CODER_IDLE_MAX; guard++) {
        struct coder *c = s->pool.idle;
        s->pool.idle = c->next;
        coder_free(c);
    }
    pthread_mutex_destroy(&s->pool.mu);
    pthread_mutex_destroy(&s->repair_mu);
    pthread_cond_destroy(&s->repair_cond);
    int fds[] = {s->corrupt_fd, s->tmp_fd, s->blocks_fd, s->lock_fd, s->root_fd};
    for (size_t i = 0; i < ARRAY_LEN(fds); i++)
        if (fds[i] >= 0)
            close(fds[i]); /* closing lock_fd releases the flock */
    free(s);
}
