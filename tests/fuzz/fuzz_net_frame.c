/* Fuzz target for the frame decoder (net/frame.h).
 *
 * The first input byte picks the payload bound (as before and after HELLO)
 * and how the rest of the input is cut into reads; the rest is the byte
 * stream a peer sent. Every frame handed out must be within the bounds, the
 * decoder must never read or write outside its buffers, and once it fails it
 * stays failed. HELLO, STATUS_REQ and STATUS_REPLY payloads (net/status.h,
 * replies of versions 1 and 2) go through their decoders too. The same bytes fed in one piece must give the same frames. */
#include "net/frame.h"
#include "net/status.h"

#include "base/crc32c.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(bool ok)
{
    if (!ok)
        abort();
}

/* A status reply decodes only when it is canonical: encoding what was
 * decoded gives back the same bytes. */
static void check_status_reply(const uint8_t *p, size_t len)
{
    struct net_status_reply r;
    int rc = net_status_reply_decode(p, len, &r);
    check(rc == 0 || rc == -EBADMSG);
    if (rc == 0) {
        uint8_t again[NET_STATUS_REPLY_BYTES];
        check((r.version == 1 && len == NET_STATUS_REPLY_V1_BYTES) ||
              (r.version == 2 && len == NET_STATUS_REPLY_V2_BYTES));
        check(r.node != 0 && r.role <= NET_STATUS_LEADER && r.xfer_state <= NET_STATUS_XFER_INSTALL);
        check(net_status_reply_encode(&r, r.version, again) == len);
        check(memcmp(again, p, len) == 0);
        char note[128];
        net_status_xfer_note(&r, note, sizeof note);
    }
}

/* Feeds the stream in pieces of at most `chunk` bytes (0: as large as the
 * decoder allows); returns a digest of the frames seen and their count. */
static uint32_t run(const uint8_t *p, size_t n, size_t payload_max, size_t chunk,
                    uint32_t *frames, bool *failed)
{
    struct net_frame_rx rx;
    net_frame_rx_init(&rx);
    net_frame_rx_set_payload_max(&rx, payload_max);
    uint32_t digest = 0;
    *frames = 0;
    *failed = false;
    size_t off = 0;
    while (!*failed) {
        struct net_frame f;
        int rc;
        while ((rc = net_frame_rx_next(&rx, &f)) == 1) {
            check(f.type >= NET_FRAME_HELLO && f.type <= NET_FRAME_TYPE_MAX);
            check(f.len <= payload_max);
            digest = crc32c(digest, &f.type, 1);
            digest = crc32c(digest, f.payload, f.len);
            (*frames)++;
            if (f.type == NET_FRAME_HELLO) {
                struct net_hello h;
                int hr = net_hello_decode(f.payload, f.len, &h);
                check(hr == 0 || hr == -EBADMSG);
            } else if (f.type == NET_FRAME_STATUS_REQ) {
                uint32_t v;
                int sr = net_status_req_decode(f.payload, f.len, &v);
                check(sr == -EBADMSG || (sr == 0 && v >= 1));
            } else if (f.type == NET_FRAME_STATUS_REPLY) {
                check_status_reply(f.payload, f.len);
            }
        }
        if (rc < 0) {
            check(rc == -EBADMSG);
            check(net_frame_rx_next(&rx, &f) == -EBADMSG);
            *failed = true;
            break;
        }
        if (off == n)
            break;
        uint8_t *dst;
        size_t room;
        net_frame_rx_space(&rx, &dst, &room);
        check(room > 0);
        size_t take = n - off;
        if (take > room)
            take = room;
        if (chunk && take > chunk)
            take = chunk;
        memcpy(dst, p + off, take);
        net_frame_rx_commit(&rx, take);
        off += take;
    }
    net_frame_rx_deinit(&rx);
    return digest;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    static const size_t maxes[4] = {NET_HELLO_BYTES, 4096, 256u << 10, 1u << 20};
    size_t payload_max = maxes[data[0] & 3];
    size_t chunk = (size_t)(data[0] >> 2) * 7 + 1; /* 1..442 */
    const uint8_t *p = data + 1;
    size_t n = size - 1;

    if (n >= NET_FRAME_HEADER_BYTES) {
        struct net_frame_header h;
        int rc = net_frame_header_decode(p, &h);
        check(rc == 0 || rc == -EBADMSG);
        if (rc == 0) {
            uint8_t again[NET_FRAME_HEADER_BYTES];
            net_frame_header_encode(again, h.type, h.length);
            check(memcmp(again, p, NET_FRAME_HEADER_BYTES) == 0); /* canonical */
        }
    }

    uint32_t frames_a, frames_b;
    bool failed_a, failed_b;
    uint32_t da = run(p, n, payload_max, chunk, &frames_a, &failed_a);
    uint32_t db = run(p, n, payload_max, 0, &frames_b, &failed_b);
    check(da == db && frames_a == frames_b && failed_a == failed_b);
    return 0;
}
