/* Byte buffers and bounded encode/decode.
 *
 * struct buf is a growable output buffer; every put_* appends little-endian
 * bytes and aborts only on out-of-memory. struct reader walks borrowed bytes;
 * every get_* checks the remaining length first, and on a short read sets
 * r->err, returns zero bytes and leaves the reader failed for good, so a
 * decoder can read a whole record and test reader_ok() once at the end.
 * Decoders of network and disk bytes are built on reader and never read past
 * the end of their input. */
#ifndef PAXFS_BASE_BUF_H
#define PAXFS_BASE_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct buf {
    uint8_t *data;
    size_t len;
    size_t cap;
};

void buf_init(struct buf *b);
void buf_deinit(struct buf *b);
void buf_reset(struct buf *b);              /* len = 0, keeps memory */
void buf_reserve(struct buf *b, size_t extra);
void *buf_append_space(struct buf *b, size_t n); /* grows len by n, returns start */
void buf_put(struct buf *b, const void *p, size_t n);
void buf_put_u8(struct buf *b, uint8_t v);
void buf_put_u16(struct buf *b, uint16_t v);
void buf_put_u32(struct buf *b, uint32_t v);
void buf_put_u64(struct buf *b, uint64_t v);
/* Overwrites 4 bytes at an earlier offset (for lengths known afterwards). */
void buf_patch_u32(struct buf *b, size_t off, uint32_t v);

/* True if p[0..n) is all zero bytes (also for n == 0). */
bool mem_is_zero(const void *p, size_t n);

struct reader {
    const uint8_t *p;
    size_t len;
    size_t off;
    bool err;
};

void reader_init(struct reader *r, const void *p, size_t len);
static inline bool reader_ok(const struct reader *r) { return !r->err; }
static inline size_t reader_left(const struct reader *r) { return r->err ? 0 : r->len - r->off; }
uint8_t get_u8(struct reader *r);
uint16_t get_u16(struct reader *r);
uint32_t get_u32(struct reader *r);
uint64_t get_u64(struct reader *r);
/* Returns a pointer to the next n borrowed bytes, or NULL (and err) if short. */
const uint8_t *get_bytes(struct reader *r, size_t n);

/* Little-endian loads and stores on raw memory. */
static inline void le_put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline uint32_t le_get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline void le_put_u64(uint8_t *p, uint64_t v)
{
    le_put_u32(p, (uint32_t)v);
    le_put_u32(p + 4, (uint32_t)(v >> 32));
}
static inline uint64_t le_get_u64(const uint8_t *p)
{
    return (uint64_t)le_get_u32(p) | (uint64_t)le_get_u32(p + 4) << 32;
}

#endif
