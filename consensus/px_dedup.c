/* px_dedup — the exactly-once table; contract in px.h.
 *
 * Per (origin, session) a ring of PX_SESSION_WINDOW cells, each the
 * (seq, result) last recorded in it, and a watermark `low` below which every
 * seq was applied. seq is applied iff its cell holds seq, or seq < low. The
 * proposer never lets a session run PX_SESSION_WINDOW past its oldest
 * unapplied proposal, so a cell is only ever overwritten by a seq that is a
 * full window newer, when the older one is already below the watermark.
 * Should a seq arrive further ahead anyway, the watermark jumps so that the
 * table stays conservative (older seqs count as applied) and deterministic.
 *
 * Sessions are kept in an array ordered by (origin, session); per origin only
 * the newest PX_DEDUP_SESSIONS survive. Everything here is a function of the
 * records applied, in order, so every replica holds the same table. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/assert.h"
#include "base/buf.h"
#include "consensus/px.h"

#define DEDUP_MAGIC 0x50584444u /* "PXDD" */
#define DEDUP_VERSION 1u

struct dedup_cell {
    uint64_t seq;
    int64_t result;
};

struct dedup_session {
    uint32_t origin;
    uint64_t session;
    uint64_t low;
    struct dedup_cell *cells;
};

struct px_dedup {
    struct dedup_session *s;
    size_t n, cap;
};

struct px_dedup *px_dedup_new(void)
{
    struct px_dedup *d = calloc(1, sizeof *d);
    ASSERT(d != NULL);
    return d;
}

void px_dedup_free(struct px_dedup *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->n; i++)
        free(d->s[i].cells);
    free(d->s);
    free(d);
}

static int cmp_key(uint32_t o1, uint64_t s1, uint32_t o2, uint64_t s2)
{
    if (o1 != o2)
        return o1 < o2 ? -1 : 1;
    if (s1 != s2)
        return s1 < s2 ? -1 : 1;
    return 0;
}

/* Index of the first session >= (origin, session). */
static size_t lower_bound(const struct px_dedup *d, uint32_t origin, uint64_t session)
{
    size_t lo = 0, hi = d->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cmp_key(d->s[mid].origin, d->s[mid].session, origin, session) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static size_t origin_sessions(const struct px_dedup *d, uint32_t origin, size_t *first)
{
    size_t i = lower_bound(d, origin, 0), k = 0;
    *first = i;
    while (i + k < d->n && d->s[i + k].origin == origin)
        k++;
    return k;
}

uint64_t px_dedup_newest_session(const struct px_dedup *d, uint32_t origin)
{
    size_t first, k = origin_sessions(d, origin, &first);
    return k ? d->s[first + k - 1].session : 0;
}

int px_dedup_check(const struct px_dedup *d, uint32_t origin, uint64_t session,
                   uint64_t seq, int64_t *result)
{
    size_t i = lower_bound(d, origin, session);
    if (i == d->n || d->s[i].origin != origin || d->s[i].session != session) {
        size_t first, k = origin_sessions(d, origin, &first);
        /* Older than every session kept: it may have been applied. */
        if (k == PX_DEDUP_SESSIONS && session < d->s[first].session)
            return -ESTALE;
        return 0;
    }
    const struct dedup_session *ds = &d->s[i];
    const struct dedup_cell *c = &ds->cells[seq % PX_SESSION_WINDOW];
    if (c->seq == seq) {
        *result = c->result;
        return 1;
    }
    return seq < ds->low ? -ESTALE : 0;
}

static struct dedup_session *session_get(struct px_dedup *d, uint32_t origin, uint64_t session)
{
    size_t i = lower_bound(d, origin, session);
    if (i < d->n && d->s[i].origin == origin && d->s[i].session == session)
        return &d->s[i];
    size_t first, k = origin_sessions(d, origin, &first);
    if (k == PX_DEDUP_SESSIONS) {
        if (session < d->s[first].session)
            return NULL; /* older than all kept: nothing to record */
        free(d->s[first].cells);
        memmove(&d->s[first], &d->s[first + 1], sizeof *d->s * (d->n - first - 1));
        d->n--;
        i = lower_bound(d, origin, session);
    }
    if (d->n == d->cap) {
        d->cap = d->cap ? d->cap * 2 : 8;
        d->s = realloc(d->s, sizeof *d->s * d->cap);
        ASSERT(d->s != NULL);
    }
    memmove(&d->s[i + 1], &d->s[i], sizeof *d->s * (d->n - i));
    d->n++;
    struct dedup_session *ds = &d->s[i];
    ds->origin = origin;
    ds->session = session;
    ds->low = 1;
    ds->cells = calloc(PX_SESSION_WINDOW, sizeof *ds->cells);
    ASSERT(ds->cells != NULL);
    return ds;
}

void px_dedup_record(struct px_dedup *d, uint32_t origin, uint64_t session,
                     uint64_t seq, int64_t result)
{
    struct dedup_session *ds = session_get(d, origin, session);
    if (!ds || seq < ds->low)
        return;
    if (seq >= ds->low + PX_SESSION_WINDOW)
        ds->low = seq - PX_SESSION_WINDOW + 1;
    ds->cells[seq % PX_SESSION_WINDOW] = (struct dedup_cell){seq, result};
    while (ds->cells[ds->low % PX_SESSION_WINDOW].seq == ds->low)
        ds->low++;
}

/* Encoding: u32 magic, u32 version, u32 sessions, then per session
 * u32 origin, u64 session, u64 low, u32 cells, cells x (u64 seq, i64 result)
 * listing only the non-empty cells. */
void px_dedup_encode(const struct px_dedup *d, struct buf *out)
{
    buf_put_u32(out, DEDUP_MAGIC);
    buf_put_u32(out, DEDUP_VERSION);
    buf_put_u32(out, (uint32_t)d->n);
    for (size_t i = 0; i < d->n; i++) {
        const struct dedup_session *ds = &d->s[i];
        buf_put_u32(out, ds->origin);
        buf_put_u64(out, ds->session);
        buf_put_u64(out, ds->low);
        size_t at = out->len;
        buf_put_u32(out, 0);
        uint32_t count = 0;
        for (uint32_t c = 0; c < PX_SESSION_WINDOW; c++) {
            if (ds->cells[c].seq == 0)
                continue;
            buf_put_u64(out, ds->cells[c].seq);
            buf_put_u64(out, (uint64_t)ds->cells[c].result);
            count++;
        }
        buf_patch_u32(out, at, count);
    }
}

int px_dedup_decode(const uint8_t *p, size_t len, struct px_dedup **out)
{
    struct reader r;
    reader_init(&r, p, len);
    if (get_u32(&r) != DEDUP_MAGIC || get_u32(&r) != DEDUP_VERSION)
        return -EBADMSG;
    uint32_t n = get_u32(&r);
    /* Every session takes at least 24 bytes: bound n before allocating. */
    if (!reader_ok(&r) || n > reader_left(&r) / 24)
        return -EBADMSG;
    struct px_dedup *d = px_dedup_new();
    for (uint32_t i = 0; i < n; i++) {
        uint32_t origin = get_u32(&r);
        uint64_t session = get_u64(&r);
        uint64_t low = get_u64(&r);
        uint32_t count = get_u32(&r);
        bool ordered = d->n == 0 ||
                       cmp_key(d->s[d->n - 1].origin, d->s[d->n - 1].session, origin, session) < 0;
        if (!reader_ok(&r) || !ordered || low == 0 || count > PX_SESSION_WINDOW ||
            count > reader_left(&r) / 16)
            goto bad;
        size_t first;
        if (origin_sessions(d, origin, &first) >= PX_DEDUP_SESSIONS)
            goto bad; /* more sessions per origin than are ever kept */
        struct dedup_session *ds = session_get(d, origin, session);
        ds->low = low;
        for (uint32_t c = 0; c < count; c++) {
            uint64_t seq = get_u64(&r);
            int64_t result = (int64_t)get_u64(&r);
            struct dedup_cell *cell = &ds->cells[seq % PX_SESSION_WINDOW];
            if (seq == 0 || cell->seq != 0)
                goto bad;
            *cell = (struct dedup_cell){seq, result};
        }
    }
    if (!reader_ok(&r) || reader_left(&r) != 0)
        goto bad;
    *out = d;
    return 0;
bad:
    px_dedup_free(d);
    return -EBADMSG;
}

uint64_t px_dedup_digest(const struct px_dedup *d)
{
    /* FNV-1a over the encoding's fields; cheap and order-defined. */
    uint64_t h = 0xcbf29ce484222325ull;
#define MIX(v)                                                                 \
    do {                                                                       \
        uint64_t v_ = (uint64_t)(v);                                           \
        for (int b_ = 0; b_ < 8; b_++) {                                       \
            h ^= (v_ >> (8 * b_)) & 0xff;                                      \
            h *= 0x100000001b3ull;                                             \
        }                                                                      \
    } while (0)
    for (size_t i = 0; i < d->n; i++) {
        const struct dedup_session *ds = &d->s[i];
        MIX(ds->origin);
        MIX(ds->session);
        MIX(ds->low);
        for (uint32_t c = 0; c < PX_SESSION_WINDOW; c++) {
            if (ds->cells[c].seq) {
                MIX(ds->cells[c].seq);
                MIX(ds->cells[c].result);
            }
        }
    }
#undef MIX
    return h;
}
