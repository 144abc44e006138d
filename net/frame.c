/* Frame headers, HELLO payloads and the incremental frame decoder; the
 * layout is in frame.h.
 *
 * Decoder states (net_frame_rx):
 *
 *            16 header bytes buffered, header valid
 *   HEADER ───────────────────────────────────────▶ SMALL  (16 + length <= buf)
 *      ▲                                       └───▶ BIG    (own allocation)
 *      │ frame delivered by _next                        │
 *      └─────────────────────────────────────────────────┘
 *   any state ── bad header ──▶ FAILED (sticky)
 *
 * A SMALL frame stays in buf, header included, until it is complete and
 * delivered; a BIG frame's payload is malloc'd once at its announced length
 * (bounded by payload_max; untouched pages of a large malloc cost no memory
 * until bytes arrive) and the stream is then read straight into it. */
#include "net/frame.h"

#include "base/assert.h"
#include "base/buf.h"
#include "base/crc32c.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void net_frame_header_encode(uint8_t out[NET_FRAME_HEADER_BYTES], uint8_t type,
                             uint32_t length)
{
    le_put_u32(out, NET_FRAME_MAGIC);
    out[4] = NET_FRAME_VERSION;
    out[5] = type;
    out[6] = 0;
    out[7] = 0;
    le_put_u32(out + 8, length);
    le_put_u32(out + 12, crc32c(0, out, 12));
}

int net_frame_header_decode(const uint8_t in[NET_FRAME_HEADER_BYTES],
                            struct net_frame_header *out)
{
    if (le_get_u32(in) != NET_FRAME_MAGIC || in[4] != NET_FRAME_VERSION)
        return -EBADMSG;
    if (le_get_u32(in + 12) != crc32c(0, in, 12))
        return -EBADMSG;
    uint8_t type = in[5];
    uint32_t length = le_get_u32(in + 8);
    if (type < NET_FRAME_HELLO || type > NET_FRAME_TYPE_MAX)
        return -EBADMSG;
    if (in[6] != 0 || in[7] != 0 || length > NET_FRAME_PAYLOAD_MAX)
        return -EBADMSG;
    out->type = type;
    out->length = length;
    return 0;
}

void net_hello_encode(const struct net_hello *h, uint8_t out[NET_HELLO_BYTES])
{
    le_put_u32(out, h->node);
    memcpy(out + 4, h->cluster_id, NET_CLUSTER_ID_BYTES);
}

int net_hello_decode(const uint8_t *p, size_t len, struct net_hello *out)
{
    if (len != NET_HELLO_BYTES)
        return -EBADMSG;
    out->node = le_get_u32(p);
    memcpy(out->cluster_id, p + 4, NET_CLUSTER_ID_BYTES);
    return 0;
}

void net_frame_rx_init(struct net_frame_rx *rx)
{
    memset(rx, 0, sizeof *rx);
    rx->buf = malloc(NET_FRAME_RX_BUF_BYTES);
    ASSERT(rx->buf != NULL);
    rx->payload_max = NET_FRAME_PAYLOAD_MAX;
}

void net_frame_rx_deinit(struct net_frame_rx *rx)
{
    free(rx->buf);
    free(rx->big);
    memset(rx, 0, sizeof *rx);
}

void net_frame_rx_set_payload_max(struct net_frame_rx *rx, size_t max)
{
    rx->payload_max = MIN(max, (size_t)NET_FRAME_PAYLOAD_MAX);
}

static bool in_big(const struct net_frame_rx *rx) { return rx->big != NULL; }

void net_frame_rx_space(struct net_frame_rx *rx, uint8_t **p, size_t *n)
{
    ASSERT(!rx->delivered_big); /* call _next until it returns 0 first */
    if (in_big(rx)) {
        ASSERT(rx->big_have < rx->hdr.length);
        *p = rx->big + rx->big_have;
        *n = rx->hdr.length - rx->big_have;
        return;
    }
    size_t want = NET_FRAME_HEADER_BYTES + (rx->have_header ? rx->hdr.length : 0);
    if (rx->start == rx->end) {
        rx->start = rx->end = 0;
    } else if (rx->start > 0 &&
               (rx->end == NET_FRAME_RX_BUF_BYTES || NET_FRAME_RX_BUF_BYTES - rx->start < want)) {
        memmove(rx->buf, rx->buf + rx->start, rx->end - rx->start);
        rx->end -= rx->start;
        rx->start = 0;
    }
    ASSERT(rx->end < NET_FRAME_RX_BUF_BYTES);
    *p = rx->buf + rx->end;
    *n = NET_FRAME_RX_BUF_BYTES - rx->end;
}

void net_frame_rx_commit(struct net_frame_rx *rx, size_t n)
{
    if (in_big(rx)) {
        ASSERT(n <= rx->hdr.length - rx->big_have);
        rx->big_have += n;
    } else {
        ASSERT(n <= NET_FRAME_RX_BUF_BYTES - rx->end);
        rx->end += n;
    }
}

/* Decodes the buffered header and moves to SMALL or BIG. */
static int take_header(struct net_frame_rx *rx)
{
    struct net_frame_header h;
    if (net_frame_header_decode(rx->buf + rx->start, &h) != 0 || h.length > rx->payload_max)
        return -EBADMSG;
    rx->hdr = h;
    rx->have_header = true;
    if (NET_FRAME_HEADER_BYTES + (size_t)h.length <= NET_FRAME_RX_BUF_BYTES)
        return 0;
    /* BIG: what already arrived moves once into the payload's own buffer;
     * everything after it is read there directly. */
    rx->big = malloc(h.length);
    ASSERT(rx->big != NULL);
    size_t avail = rx->end - rx->start - NET_FRAME_HEADER_BYTES;
    size_t take = MIN(avail, (size_t)h.length);
    memcpy(rx->big, rx->buf + rx->start + NET_FRAME_HEADER_BYTES, take);
    rx->big_have = take;
    rx->start += NET_FRAME_HEADER_BYTES + take;
    return 0;
}

int net_frame_rx_next(struct net_frame_rx *rx, struct net_frame *f)
{
    if (rx->failed)
        return -EBADMSG;
    if (rx->delivered_big) {
        free(rx->big);
        rx->big = NULL;
        rx->big_have = 0;
        rx->have_header = false;
        rx->delivered_big = false;
    }
    if (!rx->have_header) {
        if (rx->end - rx->start < NET_FRAME_HEADER_BYTES)
            return 0;
        if (take_header(rx) != 0) {
            rx->failed = true;
            return -EBADMSG;
        }
    }
    if (in_big(rx)) {
        if (rx->big_have < rx->hdr.length)
            return 0;
        f->type = rx->hdr.type;
        f->payload = rx->big;
        f->len = rx->hdr.length;
        rx->delivered_big = true;
        return 1;
    }
    size_t need = NET_FRAME_HEADER_BYTES + (size_t)rx->hdr.length;
    if (rx->end - rx->start < need)
        return 0;
    f->type = rx->hdr.type;
    f->payload = rx->buf + rx->start + NET_FRAME_HEADER_BYTES;
    f->len = rx->hdr.length;
    rx->start += need;
    rx->have_header = false;
    return 1;
}

bool net_frame_rx_partial(const struct net_frame_rx *rx)
{
    return (rx->have_header && !rx->delivered_big) || rx->end > rx->start;
}
