/* Fuzz target for the WAL's disk decoders: the segment header decoder, the
 * record frame decoder and the segment scan that recovery runs (which
 * decides torn tail vs. corruption). The input is taken as a whole segment
 * image. Beyond "no crash, no read past the end", it checks that what
 * decodes re-encodes to the same bytes and that the scan's verdict agrees
 * with the decoder. */
#include "consensus/wal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

enum { MAX_RECORD = 1 << 20 };

static void fuzz_header(const uint8_t *data, size_t size, uint64_t *first)
{
    uint64_t lsn = 0;
    int rc = wal_segment_header_decode(data, size, &lsn);
    CHECK(rc == 0 || rc == -ENODATA || rc == -EBADMSG || rc == -EPROTONOSUPPORT);
    if (rc != 0)
        return;
    CHECK(lsn != 0);
    uint8_t again[WAL_SEGMENT_HEADER_BYTES];
    wal_segment_header_encode(again, lsn);
    CHECK(memcmp(again, data, sizeof again) == 0);
    *first = lsn;
}

/* Decodes frames back to back from the start of the input. */
static void fuzz_records(const uint8_t *data, size_t size)
{
    size_t off = 0;
    /* Bounded: each pass consumes at least a header or stops. */
    while (off < size) {
        struct wal_record rec;
        ssize_t n = wal_record_decode(data + off, size - off, MAX_RECORD, &rec);
        if (n < 0) {
            CHECK(n == -ENODATA || n == -EMSGSIZE || n == -EBADMSG);
            return;
        }
        CHECK((size_t)n == WAL_RECORD_HEADER_BYTES + rec.len && (size_t)n <= size - off);
        CHECK(rec.lsn != 0 && rec.type != 0 && rec.len <= MAX_RECORD);
        CHECK(rec.data == data + off + WAL_RECORD_HEADER_BYTES);
        uint8_t hdr[WAL_RECORD_HEADER_BYTES];
        wal_record_frame(hdr, rec.lsn, rec.type, rec.data, rec.len);
        CHECK(memcmp(hdr, data + off, sizeof hdr) == 0);
        off += (size_t)n;
    }
}

static void fuzz_scan(const uint8_t *data, size_t size, uint64_t first)
{
    struct wal_scan s;
    wal_segment_scan(data, size, first, MAX_RECORD, &s);
    if (size < WAL_SEGMENT_HEADER_BYTES) {
        CHECK(s.result == WAL_SCAN_TORN && s.records == 0);
        return;
    }
    CHECK(s.end >= WAL_SEGMENT_HEADER_BYTES && s.end <= size);
    /* The good records are exactly what the decoder walks to `end`. */
    size_t off = WAL_SEGMENT_HEADER_BYTES;
    for (uint64_t i = 0; i < s.records; i++) {
        struct wal_record rec;
        ssize_t n = wal_record_decode(data + off, size - off, MAX_RECORD, &rec);
        CHECK(n > 0 && rec.lsn == first + i);
        off += (size_t)n;
    }
    CHECK(off == s.end);
    struct wal_record rec;
    switch (s.result) {
    case WAL_SCAN_CLEAN:
        CHECK(s.end == size);
        break;
    case WAL_SCAN_LSN:
        CHECK(wal_record_decode(data + s.end, size - s.end, MAX_RECORD, &rec) > 0);
        CHECK(rec.lsn == s.bad_lsn && rec.lsn != first + s.records && rec.lsn >= first);
        break;
    case WAL_SCAN_TORN: {
        CHECK(s.end < size && s.bad_rc < 0);
        ssize_t n = wal_record_decode(data + s.end, size - s.end, MAX_RECORD, &rec);
        /* A whole record older than the segment (a recycled file's earlier
         * life) ends the segment as a bad record does. */
        CHECK(s.bad_rc == -ESTALE ? n > 0 && rec.lsn < first : n == s.bad_rc);
        break;
    }
    case WAL_SCAN_CORRUPT:
        CHECK(s.end < size && s.bad_rc < 0 && s.valid_off > s.end && s.valid_off < size);
        CHECK(wal_record_decode(data + s.valid_off, size - s.valid_off, MAX_RECORD, &rec) > 0);
        break;
    default:
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A header that does not decode still gets its records scanned, as
     * recovery does for a last segment with a torn header: from the LSN
     * its name would carry (here 1). */
    uint64_t first = 1;
    fuzz_header(data, size, &first);
    fuzz_records(data, size);
    if (size >= WAL_SEGMENT_HEADER_BYTES)
        fuzz_records(data + WAL_SEGMENT_HEADER_BYTES, size - WAL_SEGMENT_HEADER_BYTES);
    fuzz_scan(data, size, first);
    return 0;
}
