/* The consensus message codec; the layout and its invariants are in
 * px_msg.h. Decoding is built on struct reader (base/buf.h), which never
 * reads past its input; every count and length read from the wire is
 * checked against both its protocol bound and the bytes actually left
 * before anything is allocated for it, so a short hostile input cannot make
 * the decoder allocate much more than its own size. */
#include "consensus/px_msg.h"

#include "base/assert.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

bool px_msg_type_has_entries(uint8_t type)
{
    switch (type) {
    case PX_MSG_PROMISE:
    case PX_MSG_ACCEPT:
    case PX_MSG_ACCEPTED:
    case PX_MSG_FORWARD:
    case PX_MSG_CHOSEN:
        return true;
    default:
        return false;
    }
}

bool px_msg_type_has_values(uint8_t type)
{
    return px_msg_type_has_entries(type) && type != PX_MSG_ACCEPTED;
}

static bool type_known(uint8_t type)
{
    return type >= PX_MSG_PREPARE && type <= PX_MSG_TYPE_MAX;
}

/* The encoder's half of the rules px_msg_decode enforces. */
static bool msg_encodable(const struct px_msg *m)
{
    if (!type_known(m->type) || m->n_entries > PX_MSG_ENTRIES_MAX)
        return false;
    if (!px_msg_type_has_entries(m->type))
        return m->n_entries == 0;
    if (m->n_entries && !m->entries)
        return false;
    bool values = px_msg_type_has_values(m->type);
    for (uint32_t i = 0; i < m->n_entries; i++) {
        const struct px_value *v = m->entries[i].value;
        if (values != (v != NULL))
            return false;
        if (v && v->len > PX_VALUE_BYTES_MAX)
            return false;
    }
    return true;
}

size_t px_msg_encoded_len(const struct px_msg *m)
{
    size_t n = PX_MSG_HEADER_BYTES + (size_t)m->n_entries * PX_MSG_ENTRY_BYTES;
    if (px_msg_type_has_values(m->type))
        for (uint32_t i = 0; i < m->n_entries; i++)
            n += PX_MSG_VALUE_LEN_BYTES + (m->entries[i].value ? m->entries[i].value->len : 0);
    return n;
}

int px_msg_encode(const struct px_msg *m, struct buf *out)
{
    if (!msg_encodable(m))
        return -EINVAL;
    size_t start = out->len;
    buf_reserve(out, px_msg_encoded_len(m));
    buf_put_u8(out, PX_MSG_VERSION);
    buf_put_u8(out, m->type);
    buf_put_u32(out, m->from);
    buf_put_u32(out, m->to);
    buf_put_u64(out, m->ballot);
    buf_put_u64(out, m->commit);
    buf_put_u64(out, m->slot);
    buf_put_u64(out, m->aux);
    buf_put_u32(out, m->n_entries);
    bool values = px_msg_type_has_values(m->type);
    for (uint32_t i = 0; i < m->n_entries; i++) {
        const struct px_entry *e = &m->entries[i];
        buf_put_u64(out, e->slot);
        buf_put_u64(out, e->ballot);
        if (values) {
            buf_put_u32(out, e->value->len);
            buf_put(out, e->value->data, e->value->len);
        }
    }
    ASSERT(out->len - start == px_msg_encoded_len(m));
    return 0;
}

static void entries_free(struct px_entry *entries, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        px_value_unref(entries[i].value);
    free(entries);
}

/* Decodes the n entries that follow the header. On 0, *out is a new array
 * (NULL when n == 0) whose values the caller owns. */
static int entries_decode(struct reader *r, uint8_t type, uint32_t n,
                          struct px_entry **out)
{
    bool values = px_msg_type_has_values(type);
    size_t entry_min = PX_MSG_ENTRY_BYTES + (values ? PX_MSG_VALUE_LEN_BYTES : 0);
    /* The count must fit in what is left before we allocate for it. */
    if (n > reader_left(r) / entry_min)
        return -EBADMSG;
    if (n == 0) {
        *out = NULL;
        return 0;
    }
    struct px_entry *entries = calloc(n, sizeof *entries);
    ASSERT(entries != NULL);
    for (uint32_t i = 0; i < n; i++) {
        struct px_entry *e = &entries[i];
        e->slot = get_u64(r);
        e->ballot = get_u64(r);
        if (!values)
            continue;
        uint32_t len = get_u32(r);
        if (!reader_ok(r) || len > PX_VALUE_BYTES_MAX || len > reader_left(r)) {
            entries_free(entries, i);
            return -EBADMSG;
        }
        e->value = px_value_new(get_bytes(r, len), len);
        ASSERT(e->value != NULL);
    }
    if (!reader_ok(r)) {
        entries_free(entries, n);
        return -EBADMSG;
    }
    *out = entries;
    return 0;
}

int px_msg_decode(const uint8_t *p, size_t len, struct px_msg *out)
{
    struct reader r;
    reader_init(&r, p, len);
    struct px_msg m;
    memset(&m, 0, sizeof m);
    uint8_t version = get_u8(&r);
    m.type = get_u8(&r);
    m.from = get_u32(&r);
    m.to = get_u32(&r);
    m.ballot = get_u64(&r);
    m.commit = get_u64(&r);
    m.slot = get_u64(&r);
    m.aux = get_u64(&r);
    m.n_entries = get_u32(&r);
    if (!reader_ok(&r) || version != PX_MSG_VERSION || !type_known(m.type))
        return -EBADMSG;
    if (m.n_entries > PX_MSG_ENTRIES_MAX)
        return -EBADMSG;
    if (m.n_entries && !px_msg_type_has_entries(m.type))
        return -EBADMSG;
    int rc = entries_decode(&r, m.type, m.n_entries, &m.entries);
    if (rc)
        return rc;
    if (reader_left(&r) != 0) { /* exactly one message, nothing trailing */
        entries_free(m.entries, m.n_entries);
        return -EBADMSG;
    }
    *out = m;
    return 0;
}
