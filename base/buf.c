/* Byte buffers and bounded decoding; see buf.h. */
#include "base/buf.h"
#include "base/assert.h"

#include <stdlib.h>
#include <string.h>

void buf_init(struct buf *b) { b->data = NULL; b->len = b->cap = 0; }

void buf_deinit(struct buf *b)
{
    free(b->data);
    buf_init(b);
}

void buf_reset(struct buf *b) { b->len = 0; }

void buf_reserve(struct buf *b, size_t extra)
{
    ASSERT(extra <= SIZE_MAX - b->len);
    size_t need = b->len + extra;
    if (need <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    uint8_t *p = realloc(b->data, cap);
    ASSERT(p != NULL); /* out of memory is not recoverable here */
    b->data = p;
    b->cap = cap;
}

void *buf_append_space(struct buf *b, size_t n)
{
    buf_reserve(b, n);
    void *p = b->data + b->len;
    b->len += n;
    return p;
}

void buf_put(struct buf *b, const void *p, size_t n)
{
    if (n)
        memcpy(buf_append_space(b, n), p, n);
}

void buf_put_u8(struct buf *b, uint8_t v) { *(uint8_t *)buf_append_space(b, 1) = v; }

void buf_put_u16(struct buf *b, uint16_t v)
{
    uint8_t *p = buf_append_space(b, 2);
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

void buf_put_u32(struct buf *b, uint32_t v) { le_put_u32(buf_append_space(b, 4), v); }
void buf_put_u64(struct buf *b, uint64_t v) { le_put_u64(buf_append_space(b, 8), v); }

void buf_patch_u32(struct buf *b, size_t off, uint32_t v)
{
    ASSERT(off + 4 <= b->len);
    le_put_u32(b->data + off, v);
}

void reader_init(struct reader *r, const void *p, size_t len)
{
    r->p = p;
    r->len = len;
    r->off = 0;
    r->err = false;
}

const uint8_t *get_bytes(struct reader *r, size_t n)
{
    if (r->err || n > r->len - r->off) {
        r->err = true;
        return NULL;
    }
    const uint8_t *p = r->p + r->off;
    r->off += n;
    return p;
}

uint8_t get_u8(struct reader *r)
{
    const uint8_t *p = get_bytes(r, 1);
    return p ? p[0] : 0;
}

uint16_t get_u16(struct reader *r)
{
    const uint8_t *p = get_bytes(r, 2);
    return p ? (uint16_t)(p[0] | p[1] << 8) : 0;
}

uint32_t get_u32(struct reader *r)
{
    const uint8_t *p = get_bytes(r, 4);
    return p ? le_get_u32(p) : 0;
}

uint64_t get_u64(struct reader *r)
{
    const uint8_t *p = get_bytes(r, 8);
    return p ? le_get_u64(p) : 0;
}

bool mem_is_zero(const void *p, size_t n)
{
    const uint8_t *b = p;
    /* Byte-wise up to 16, then compare the buffer with itself shifted by 16:
     * memcmp is vectorised, a byte loop is not. */
    size_t head = MIN(n, (size_t)16);
    for (size_t i = 0; i < head; i++)
        if (b[i])
            return false;
    return n <= 16 || memcmp(b, b + 16, n - 16) == 0;
}
