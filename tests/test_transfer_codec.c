/* Tests of two decoders of bytes from the network: the snapshot-transfer
 * messages (fs/transfer.h, xfer_msg_encode/decode, NET_FRAME_BULK payloads)
 * and the online fsck requests (fs/fsck.h, fsck_request_decode), with the
 * fsck mark record that travels through the log (fsck_server_apply). Each
 * must accept exactly what its encoder writes and refuse, with -EBADMSG
 * and without writing its out-parameter, every length or field that is
 * off. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/assert.h"
#include "base/buf.h"
#include "consensus/snapfile.h"
#include "fs/fsck.h"
#include "fs/transfer.h"

/* ---- helpers ---------------------------------------------------------------- */

static uint8_t names[XFER_BLOCKS_PER_REQ * STORE_NAME_LEN];
static const uint8_t payload[] = "some image or block bytes";

static void fill_names(void)
{
    for (size_t i = 0; i < sizeof names; i++)
        names[i] = (uint8_t)(i * 7 + 3);
}

static void encode(const struct xfer_msg *m, struct buf *b)
{
    buf_init(b);
    xfer_msg_encode(m, b);
}

/* A sentinel that a failed decode must leave as it is. */
static struct xfer_msg sentinel(void)
{
    return (struct xfer_msg){.kind = 0xee, .id = 0xdeadbeef, .status = 77};
}

static void assert_untouched(const struct xfer_msg *m)
{
    cr_assert_eq(m->kind, 0xee, "out-param written on failure");
    cr_assert_eq(m->id, 0xdeadbeef);
    cr_assert_eq(m->status, 77);
}

static void assert_rejected(const uint8_t *p, size_t len, const char *what)
{
    struct xfer_msg m = sentinel();
    cr_assert_eq(xfer_msg_decode(p, len, &m), -EBADMSG, "%s: accepted", what);
    assert_untouched(&m);
}

/* Decodes b and checks every field of its kind against want. */
static void assert_round_trip(const struct xfer_msg *want)
{
    struct buf b;
    encode(want, &b);
    struct xfer_msg got = sentinel();
    cr_assert_eq(xfer_msg_decode(b.data, b.len, &got), 0, "kind %u", want->kind);
    cr_assert_eq(got.kind, want->kind);
    cr_assert_eq(got.id, want->id);
    switch (want->kind) {
    case XFER_IMG_REQ:
        cr_assert_eq(got.min_slot, want->min_slot);
        cr_assert_eq(got.slot, want->slot);
        cr_assert_eq(got.offset, want->offset);
        cr_assert_eq(got.max_len, want->max_len);
        break;
    case XFER_IMG_DATA:
        cr_assert_eq(got.status, want->status);
        cr_assert_eq(got.slot, want->slot);
        cr_assert_eq(got.total, want->total);
        cr_assert_eq(got.offset, want->offset);
        cr_assert_eq(got.data_len, want->data_len);
        if (want->data_len)
            cr_assert_eq(memcmp(got.data, want->data, want->data_len), 0);
        break;
    case XFER_BLK_REQ:
        cr_assert_eq(got.count, want->count);
        cr_assert_eq(memcmp(got.names, want->names, (size_t)want->count * STORE_NAME_LEN), 0);
        /* borrowed from the input */
        cr_assert(got.names > b.data && got.names < b.data + b.len);
        break;
    case XFER_BLK_DATA:
        cr_assert_eq(got.status, want->status);
        cr_assert_eq(memcmp(got.name.b, want->name.b, STORE_NAME_LEN), 0);
        cr_assert_eq(got.data_len, want->data_len);
        if (want->data_len)
            cr_assert_eq(memcmp(got.data, want->data, want->data_len), 0);
        break;
    default:
        cr_assert_fail("bad kind in test");
    }
    /* Encoding the decoded message gives the same bytes. */
    struct buf again;
    encode(&got, &again);
    cr_assert_eq(again.len, b.len);
    cr_assert_eq(memcmp(again.data, b.data, b.len), 0);
    buf_deinit(&again);
    buf_deinit(&b);
}

static struct xfer_msg img_req(void)
{
    return (struct xfer_msg){.kind = XFER_IMG_REQ, .id = 0x0102030405060708ull,
                             .min_slot = 1000, .slot = 1234, .offset = 4096,
                             .max_len = XFER_CHUNK_BYTES};
}

static struct xfer_msg img_data(void)
{
    return (struct xfer_msg){.kind = XFER_IMG_DATA, .id = 9, .status = 0, .slot = 1234,
                             .total = 10000, .offset = 4096, .data = payload,
                             .data_len = sizeof payload};
}

static struct xfer_msg blk_req(uint32_t count)
{
    return (struct xfer_msg){.kind = XFER_BLK_REQ, .id = 10, .count = count, .names = names};
}

static struct xfer_msg blk_data(void)
{
    struct xfer_msg m = {.kind = XFER_BLK_DATA, .id = 11, .status = 0, .data = payload,
                         .data_len = sizeof payload};
    memcpy(m.name.b, names + STORE_NAME_LEN, STORE_NAME_LEN);
    return m;
}

/* The fixed part of each kind: kind u8 + id u64 + ... */
#define IMG_REQ_BYTES (1 + 8 + 8 + 8 + 8 + 4)
#define IMG_DATA_HEAD_BYTES (1 + 8 + 4 + 8 + 8 + 8)
#define BLK_REQ_HEAD_BYTES (1 + 8 + 4)

TestSuite(xfer_codec, .init = fill_names, .timeout = 60);

/* ---- transfer messages: round trips ------------------------------------------ */

Test(xfer_codec, an_image_request_round_trips)
{
    struct xfer_msg m = img_req();
    assert_round_trip(&m);
    struct buf b;
    encode(&m, &b);
    cr_assert_eq(b.len, IMG_REQ_BYTES);
    buf_deinit(&b);
    m.slot = 0; /* the newest */
    m.max_len = 1;
    m.min_slot = UINT64_MAX;
    m.offset = UINT64_MAX;
    assert_round_trip(&m);
}

Test(xfer_codec, image_data_round_trips_with_bytes_with_none_and_with_an_error)
{
    struct xfer_msg m = img_data();
    assert_round_trip(&m);
    /* the last chunk: offset + len == total */
    m.offset = m.total - m.data_len;
    assert_round_trip(&m);
    /* an empty chunk at the end */
    m.offset = m.total;
    m.data = NULL;
    m.data_len = 0;
    assert_round_trip(&m);
    m = img_data();
    m.total = SNAPFILE_BYTES_MAX;
    m.offset = SNAPFILE_BYTES_MAX - m.data_len;
    assert_round_trip(&m);
    const int32_t errors[] = {-ENOENT, -ESTALE, -EBADMSG, -1, -4095};
    for (size_t i = 0; i < ARRAY_LEN(errors); i++) {
        m = (struct xfer_msg){.kind = XFER_IMG_DATA, .id = 12, .status = errors[i]};
        assert_round_trip(&m);
    }
}

Test(xfer_codec, a_block_request_round_trips_with_one_to_the_most_names)
{
    for (uint32_t count = 1; count <= XFER_BLOCKS_PER_REQ; count++) {
        struct xfer_msg m = blk_req(count);
        assert_round_trip(&m);
        struct buf b;
        encode(&m, &b);
        cr_assert_eq(b.len, BLK_REQ_HEAD_BYTES + (size_t)count * STORE_NAME_LEN);
        buf_deinit(&b);
    }
}

Test(xfer_codec, block_data_round_trips_with_bytes_and_with_an_error)
{
    struct xfer_msg m = blk_data();
    assert_round_trip(&m);
    m.data = NULL;
    m.data_len = 0;
    m.status = -ENOENT;
    assert_round_trip(&m);
    m.status = -EBADMSG;
    assert_round_trip(&m);
}

/* The server reads a block file straight into its frame after
 * XFER_BLK_DATA_HEADER_BYTES and writes the header before it: the header
 * alone must be exactly that long, and header + bytes the whole message. */
Test(xfer_codec, block_data_is_its_fixed_header_then_the_file_bytes)
{
    struct xfer_msg m = blk_data();
    struct buf whole, head;
    buf_init(&whole);
    buf_init(&head);
    xfer_msg_encode(&m, &whole);
    m.data = NULL;
    m.data_len = 0;
    xfer_msg_encode(&m, &head);
    cr_assert_eq(head.len, XFER_BLK_DATA_HEADER_BYTES);
    cr_assert_eq(whole.len, XFER_BLK_DATA_HEADER_BYTES + sizeof payload);
    cr_assert_eq(memcmp(whole.data, head.data, head.len), 0);
    cr_assert_eq(memcmp(whole.data + head.len, payload, sizeof payload), 0);
    buf_deinit(&whole);
    buf_deinit(&head);
}

/* ---- transfer messages: rejections ------------------------------------------- */

Test(xfer_codec, every_truncation_of_a_request_is_rejected)
{
    struct xfer_msg ms[] = {img_req(), blk_req(1), blk_req(3), blk_req(XFER_BLOCKS_PER_REQ)};
    for (size_t k = 0; k < ARRAY_LEN(ms); k++) {
        struct buf b;
        encode(&ms[k], &b);
        for (size_t n = 0; n < b.len; n++) {
            char what[64];
            snprintf(what, sizeof what, "message %zu cut to %zu of %zu", k, n, b.len);
            assert_rejected(b.data, n, what);
        }
        buf_put_u8(&b, 0);
        assert_rejected(b.data, b.len, "a request with a trailing byte");
        buf_deinit(&b);
    }
    assert_rejected(NULL, 0, "nothing");
}

Test(xfer_codec, every_truncation_of_a_data_header_is_rejected)
{
    /* The bytes after the header run to the end of the frame: a shorter
     * frame is a shorter chunk (the snapshot's CRC and the blocks' names
     * catch a chunk that lost bytes). Cutting into the header itself is
     * always malformed. */
    struct xfer_msg ms[] = {img_data(), blk_data()};
    const size_t heads[] = {IMG_DATA_HEAD_BYTES, XFER_BLK_DATA_HEADER_BYTES};
    for (size_t k = 0; k < ARRAY_LEN(ms); k++) {
        struct buf b;
        encode(&ms[k], &b);
        cr_assert_eq(b.len, heads[k] + sizeof payload);
        for (size_t n = 0; n < heads[k]; n++) {
            char what[64];
            snprintf(what, sizeof what, "data message %zu cut to %zu", k, n);
            assert_rejected(b.data, n, what);
        }
        for (size_t n = heads[k] + 1; n <= b.len; n++) {
            struct xfer_msg m;
            cr_assert_eq(xfer_msg_decode(b.data, n, &m), 0);
            cr_assert_eq(m.data_len, n - heads[k]);
        }
        buf_deinit(&b);
    }
}

Test(xfer_codec, an_unknown_kind_is_rejected)
{
    struct xfer_msg m = img_req();
    struct buf b;
    encode(&m, &b);
    const uint8_t kinds[] = {0, 5, 6, 0x7f, 0x80, 0xff};
    for (size_t i = 0; i < ARRAY_LEN(kinds); i++) {
        b.data[0] = kinds[i];
        assert_rejected(b.data, b.len, "unknown kind");
    }
    buf_deinit(&b);
}

Test(xfer_codec, a_block_request_of_zero_or_too_many_names_is_rejected)
{
    struct buf b;
    /* count 0, with and without name bytes after it */
    buf_init(&b);
    buf_put_u8(&b, XFER_BLK_REQ);
    buf_put_u64(&b, 1);
    buf_put_u32(&b, 0);
    assert_rejected(b.data, b.len, "count 0");
    buf_put(&b, names, STORE_NAME_LEN);
    assert_rejected(b.data, b.len, "count 0 with a name");
    buf_deinit(&b);
    /* one too many, with all the names it claims */
    const uint32_t counts[] = {XFER_BLOCKS_PER_REQ + 1, 1000, UINT32_MAX};
    for (size_t i = 0; i < ARRAY_LEN(counts); i++) {
        buf_init(&b);
        buf_put_u8(&b, XFER_BLK_REQ);
        buf_put_u64(&b, 1);
        buf_put_u32(&b, counts[i]);
        for (uint32_t k = 0; k < XFER_BLOCKS_PER_REQ + 1; k++)
            buf_put(&b, names, STORE_NAME_LEN);
        assert_rejected(b.data, b.len, "too many names");
        buf_deinit(&b);
    }
    /* a count that disagrees with the bytes: one name short, one extra,
     * half a name extra */
    struct xfer_msg m = blk_req(3);
    encode(&m, &b);
    assert_rejected(b.data, b.len - STORE_NAME_LEN, "a name short");
    assert_rejected(b.data, b.len - 1, "a byte short");
    buf_put(&b, names, STORE_NAME_LEN / 2);
    assert_rejected(b.data, b.len, "half a name extra");
    buf_deinit(&b);
}

Test(xfer_codec, an_image_request_for_zero_or_too_many_bytes_is_rejected)
{
    struct xfer_msg m = img_req();
    m.max_len = 0;
    struct buf b;
    encode(&m, &b);
    assert_rejected(b.data, b.len, "max_len 0");
    buf_deinit(&b);
    m.max_len = XFER_CHUNK_BYTES + 1;
    encode(&m, &b);
    assert_rejected(b.data, b.len, "max_len past a chunk");
    buf_deinit(&b);
    m.max_len = UINT32_MAX;
    encode(&m, &b);
    assert_rejected(b.data, b.len, "max_len huge");
    buf_deinit(&b);
}

Test(xfer_codec, image_data_past_its_total_is_rejected)
{
    struct xfer_msg m = img_data();
    struct buf b;
    /* one byte past the end */
    m.offset = m.total - m.data_len + 1;
    encode(&m, &b);
    assert_rejected(b.data, b.len, "offset + len = total + 1");
    buf_deinit(&b);
    /* an offset past the total, and one that would wrap around */
    m.offset = m.total + 1;
    encode(&m, &b);
    assert_rejected(b.data, b.len, "offset past total");
    buf_deinit(&b);
    m.offset = UINT64_MAX - 2;
    encode(&m, &b);
    assert_rejected(b.data, b.len, "offset + len wraps");
    buf_deinit(&b);
    /* a total that no snapshot file may have */
    m.offset = 0;
    m.total = SNAPFILE_BYTES_MAX + 1;
    encode(&m, &b);
    assert_rejected(b.data, b.len, "total too large");
    buf_deinit(&b);
    m.total = UINT64_MAX;
    encode(&m, &b);
    assert_rejected(b.data, b.len, "total huge");
    buf_deinit(&b);
    /* an empty chunk past the end */
    m = img_data();
    m.data_len = 0;
    m.offset = m.total + 1;
    encode(&m, &b);
    assert_rejected(b.data, b.len, "empty chunk past total");
    buf_deinit(&b);
}

Test(xfer_codec, image_data_larger_than_a_chunk_is_rejected)
{
    size_t len = XFER_CHUNK_BYTES + 1;
    uint8_t *big = calloc(1, len);
    cr_assert_not_null(big);
    struct xfer_msg m = img_data();
    m.total = SNAPFILE_BYTES_MAX;
    m.offset = 0;
    m.data = big;
    m.data_len = len;
    struct buf b;
    encode(&m, &b);
    assert_rejected(b.data, b.len, "chunk + 1");
    /* exactly a chunk is fine */
    struct xfer_msg got;
    cr_assert_eq(xfer_msg_decode(b.data, b.len - 1, &got), 0);
    cr_assert_eq(got.data_len, XFER_CHUNK_BYTES);
    buf_deinit(&b);
    free(big);
}

Test(xfer_codec, a_positive_or_out_of_range_status_is_rejected)
{
    const int32_t bad[] = {1, 2, 4096, INT32_MAX, -4096, -100000, INT32_MIN};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        struct xfer_msg m = {.kind = XFER_IMG_DATA, .id = 1, .status = bad[i], .total = 10};
        struct buf b;
        encode(&m, &b);
        assert_rejected(b.data, b.len, "image status");
        buf_deinit(&b);
        m = blk_data();
        m.status = bad[i];
        m.data = NULL;
        m.data_len = 0;
        encode(&m, &b);
        assert_rejected(b.data, b.len, "block status");
        buf_deinit(&b);
    }
}

Test(xfer_codec, data_with_an_error_status_is_rejected)
{
    struct xfer_msg m = img_data();
    m.status = -ENOENT;
    struct buf b;
    encode(&m, &b);
    assert_rejected(b.data, b.len, "image bytes with an error");
    buf_deinit(&b);
    m = blk_data();
    m.status = -EBADMSG;
    encode(&m, &b);
    assert_rejected(b.data, b.len, "block bytes with an error");
    buf_deinit(&b);
}

Test(xfer_codec, a_block_reply_without_bytes_or_error_is_rejected)
{
    struct xfer_msg m = blk_data();
    m.data = NULL;
    m.data_len = 0;
    struct buf b;
    encode(&m, &b);
    assert_rejected(b.data, b.len, "status 0, no block");
    buf_deinit(&b);
}

/* ---- fsck requests ------------------------------------------------------------ */

TestSuite(fsck_codec, .timeout = 60);

/* One valid request of each op, as the operator client writes them. */
struct fsck_case {
    uint8_t op;
    size_t len;
    uint8_t bytes[32];
};

static struct fsck_case fsck_case(uint8_t op)
{
    struct fsck_case c = {.op = op};
    struct buf b;
    buf_init(&b);
    buf_put_u8(&b, op);
    switch (op) {
    case FSCK_OP_MARK:
    case FSCK_OP_DIGEST:
        buf_put_u64(&b, 0x1122334455667788ull);
        break;
    case FSCK_OP_INODES:
        buf_put_u64(&b, 42);
        buf_put_u64(&b, 1000);
        buf_put_u32(&b, 4096);
        break;
    case FSCK_OP_BLOCKS:
        buf_put_u8(&b, 1);
        break;
    case FSCK_OP_SNAPSHOT:
        break;
    case FSCK_OP_REBUILD:
        buf_put_u32(&b, 2);
        buf_put_u64(&b, 777);
        break;
    case FSCK_OP_DIVERGE:
        buf_put_u64(&b, 5);
        break;
    default:
        cr_assert_fail("bad op in test");
    }
    cr_assert_leq(b.len, sizeof c.bytes);
    memcpy(c.bytes, b.data, b.len);
    c.len = b.len;
    buf_deinit(&b);
    return c;
}

static const uint8_t all_ops[] = {FSCK_OP_MARK,     FSCK_OP_DIGEST,  FSCK_OP_INODES,
                                  FSCK_OP_BLOCKS,   FSCK_OP_SNAPSHOT, FSCK_OP_REBUILD,
                                  FSCK_OP_DIVERGE};
static const size_t op_lengths[] = {9, 9, 21, 2, 1, 13, 9};

Test(fsck_codec, each_op_decodes_at_its_exact_length_with_its_fields)
{
    for (size_t i = 0; i < ARRAY_LEN(all_ops); i++) {
        struct fsck_case c = fsck_case(all_ops[i]);
        cr_assert_eq(c.len, op_lengths[i], "op %u is %zu bytes", c.op, c.len);
        struct fsck_request q;
        memset(&q, 0xee, sizeof q);
        cr_assert_eq(fsck_request_decode(c.bytes, c.len, &q), 0, "op %u", c.op);
        cr_assert_eq(q.op, c.op);
        switch (c.op) {
        case FSCK_OP_MARK:
        case FSCK_OP_DIGEST:
            cr_assert_eq(q.id, 0x1122334455667788ull);
            break;
        case FSCK_OP_INODES:
            cr_assert_eq(q.id, 42);
            cr_assert_eq(q.after, 1000);
            cr_assert_eq(q.max, 4096);
            break;
        case FSCK_OP_BLOCKS:
            cr_assert(q.repair);
            break;
        case FSCK_OP_REBUILD:
            cr_assert_eq(q.from, 2);
            cr_assert_eq(q.min_slot, 777);
            break;
        case FSCK_OP_DIVERGE:
            cr_assert_eq(q.ino, 5);
            break;
        default:
            break;
        }
    }
}

Test(fsck_codec, each_op_at_any_other_length_is_rejected)
{
    uint8_t buf[64];
    for (size_t i = 0; i < ARRAY_LEN(all_ops); i++) {
        struct fsck_case c = fsck_case(all_ops[i]);
        memset(buf, 0, sizeof buf);
        memcpy(buf, c.bytes, c.len);
        for (size_t n = 0; n <= c.len + 16; n++) {
            if (n == c.len)
                continue;
            struct fsck_request q = {.op = 0xee, .id = 99};
            cr_assert_eq(fsck_request_decode(buf, n, &q), -EBADMSG, "op %u at %zu bytes", c.op,
                         n);
            cr_assert_eq(q.op, 0xee, "out-param written on failure");
            cr_assert_eq(q.id, 99);
        }
    }
    struct fsck_request q;
    cr_assert_eq(fsck_request_decode(NULL, 0, &q), -EBADMSG);
}

Test(fsck_codec, an_unknown_op_is_rejected)
{
    uint8_t buf[32] = {0};
    const uint8_t ops[] = {0, 8, 9, 0x7f, 0xff};
    for (size_t i = 0; i < ARRAY_LEN(ops); i++) {
        buf[0] = ops[i];
        for (size_t n = 1; n <= sizeof buf; n++) {
            struct fsck_request q;
            cr_assert_eq(fsck_request_decode(buf, n, &q), -EBADMSG, "op %u, %zu bytes", ops[i],
                         n);
        }
    }
}

Test(fsck_codec, blocks_takes_repair_zero_or_one_only)
{
    uint8_t req[2] = {FSCK_OP_BLOCKS, 0};
    struct fsck_request q;
    cr_assert_eq(fsck_request_decode(req, 2, &q), 0);
    cr_assert(!q.repair);
    req[1] = 1;
    cr_assert_eq(fsck_request_decode(req, 2, &q), 0);
    cr_assert(q.repair);
    for (unsigned v = 2; v <= 255; v++) {
        req[1] = (uint8_t)v;
        q.repair = false;
        q.op = 0xee;
        cr_assert_eq(fsck_request_decode(req, 2, &q), -EBADMSG, "repair=%u", v);
        cr_assert_eq(q.op, 0xee);
    }
}

Test(fsck_codec, the_mark_record_is_recognized_and_nothing_else)
{
    uint8_t rec[FSCK_MARK_BYTES];
    const uint64_t ids[] = {0, 1, 0x8000000000000000ull, UINT64_MAX};
    for (size_t i = 0; i < ARRAY_LEN(ids); i++) {
        fsck_mark_encode(ids[i], rec);
        cr_assert(fsck_server_apply(NULL, 10, rec, sizeof rec), "mark %zu", i);
    }
    /* Another length, even with the magic at the front. */
    uint8_t longer[FSCK_MARK_BYTES + 1] = {0};
    memcpy(longer, rec, sizeof rec);
    cr_assert(!fsck_server_apply(NULL, 10, longer, sizeof longer));
    for (size_t n = 0; n < FSCK_MARK_BYTES; n++)
        cr_assert(!fsck_server_apply(NULL, 10, rec, n), "a %zu-byte prefix", n);
    /* Any byte of the magic changed. */
    for (size_t i = 0; i < 8; i++) {
        rec[i] ^= 0x01;
        cr_assert(!fsck_server_apply(NULL, 10, rec, sizeof rec), "magic byte %zu", i);
        rec[i] ^= 0x01;
    }
    /* A filesystem op of the same length is not a mark. */
    uint8_t other[FSCK_MARK_BYTES];
    memset(other, 0, sizeof other);
    cr_assert(!fsck_server_apply(NULL, 10, other, sizeof other));
    memcpy(other, "PXFSCKM1", 8);
    cr_assert(fsck_server_apply(NULL, 10, other, sizeof other), "the magic is \"PXFSCKM1\"");
}
