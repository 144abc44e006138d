/* Fuzz target for the snapshot-transfer wire codec (fs/transfer.h), which
 * decodes NET_FRAME_BULK payloads from peers. Beyond "no crash, no read
 * past the end": a message that decodes satisfies the format's bounds,
 * re-encodes to exactly the input, and decodes again to the same fields. */
#include "fs/transfer.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "consensus/snapfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

static void check_bounds(const struct xfer_msg *m)
{
    switch (m->kind) {
    case XFER_IMG_REQ:
        CHECK(m->max_len >= 1 && m->max_len <= XFER_CHUNK_BYTES);
        break;
    case XFER_IMG_DATA:
        CHECK(m->status <= 0 && m->total <= SNAPFILE_BYTES_MAX && m->offset <= m->total);
        CHECK(m->data_len <= XFER_CHUNK_BYTES && m->data_len <= m->total - m->offset);
        CHECK(m->status == 0 || m->data_len == 0);
        break;
    case XFER_BLK_REQ:
        CHECK(m->count >= 1 && m->count <= XFER_BLOCKS_PER_REQ && m->names);
        break;
    case XFER_BLK_DATA:
        CHECK(m->status <= 0 && (m->status == 0) == (m->data_len != 0));
        break;
    default:
        abort();
    }
}

static bool same(const struct xfer_msg *a, const struct xfer_msg *b)
{
    if (a->kind != b->kind || a->id != b->id || a->status != b->status ||
        a->min_slot != b->min_slot || a->slot != b->slot || a->total != b->total ||
        a->offset != b->offset || a->max_len != b->max_len || a->count != b->count ||
        a->data_len != b->data_len || memcmp(a->name.b, b->name.b, STORE_NAME_LEN) != 0)
        return false;
    if (a->count && memcmp(a->names, b->names, (size_t)a->count * STORE_NAME_LEN) != 0)
        return false;
    return a->data_len == 0 || memcmp(a->data, b->data, a->data_len) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct xfer_msg m;
    int rc = xfer_msg_decode(data, size, &m);
    CHECK(rc == 0 || rc == -EBADMSG);
    if (rc != 0)
        return 0;
    check_bounds(&m);
    struct buf b;
    buf_init(&b);
    xfer_msg_encode(&m, &b);
    CHECK(b.len == size && memcmp(b.data, data, size) == 0);
    struct xfer_msg again;
    CHECK(xfer_msg_decode(b.data, b.len, &again) == 0);
    CHECK(same(&m, &again));
    buf_deinit(&b);
    return 0;
}
