/* Fuzz target for the consensus message codec (consensus/px_msg.h).
 *
 * Arbitrary bytes go to px_msg_decode, which must either reject them with
 * -EBADMSG or decode them; a decoded message must re-encode to exactly the
 * input (the encoding is canonical) and decode again to an equal message. */
#include "consensus/px_msg.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(bool ok)
{
    if (!ok)
        abort();
}

static bool entries_equal(const struct px_msg *a, const struct px_msg *b)
{
    for (uint32_t i = 0; i < a->n_entries; i++) {
        const struct px_entry *x = &a->entries[i], *y = &b->entries[i];
        if (x->slot != y->slot || x->ballot != y->ballot)
            return false;
        if ((x->value == NULL) != (y->value == NULL))
            return false;
        if (x->value && (x->value->len != y->value->len ||
                         memcmp(x->value->data, y->value->data, x->value->len) != 0))
            return false;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct px_msg m;
    int rc = px_msg_decode(data, size, &m);
    check(rc == 0 || rc == -EBADMSG);
    if (rc)
        return 0;
    check(px_msg_type_has_entries(m.type) || m.n_entries == 0);
    for (uint32_t i = 0; i < m.n_entries; i++)
        check((m.entries[i].value != NULL) == px_msg_type_has_values(m.type));

    struct buf b;
    buf_init(&b);
    check(px_msg_encode(&m, &b) == 0);
    check(b.len == size && b.len == px_msg_encoded_len(&m));
    check(memcmp(b.data, data, size) == 0);

    struct px_msg m2;
    check(px_msg_decode(b.data, b.len, &m2) == 0);
    check(m2.type == m.type && m2.from == m.from && m2.to == m.to &&
          m2.ballot == m.ballot && m2.commit == m.commit && m2.slot == m.slot &&
          m2.aux == m.aux && m2.n_entries == m.n_entries);
    check(entries_equal(&m, &m2));

    /* A truncated copy never decodes. */
    struct px_msg m3;
    if (size > 0)
        check(px_msg_decode(b.data, size - 1, &m3) == -EBADMSG);

    px_msg_clear(&m2);
    px_msg_clear(&m);
    buf_deinit(&b);
    return 0;
}
