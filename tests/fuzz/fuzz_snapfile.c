/* Fuzz target for the snapshot file decoder (consensus/snapfile.h): the
 * whole-file decoder that start-up and snapshot install run on bytes from
 * disk or from a peer, and the header reader a transfer in progress runs
 * on a prefix. Beyond "no crash, no read past the end": the two agree on
 * the slot and the size, a file that decodes re-encodes to the same bytes,
 * and the borrowed parts lie inside the input. */
#include "consensus/snapfile.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t slot = 0, total = 0;
    int hrc = snapfile_header(data, size, &slot, &total);
    CHECK(hrc == 0 || hrc == -EBADMSG);
    if (hrc == 0)
        CHECK(total >= SNAPFILE_HEADER_BYTES + SNAPFILE_TRAILER_BYTES &&
              total <= SNAPFILE_BYTES_MAX);
    struct snapfile sf;
    int rc = snapfile_decode(data, size, &sf);
    CHECK(rc == 0 || rc == -EBADMSG);
    if (rc != 0)
        return 0;
    CHECK(hrc == 0 && sf.slot == slot && total == size);
    CHECK(sf.dedup == data + SNAPFILE_HEADER_BYTES);
    CHECK(sf.sm == sf.dedup + sf.dedup_len);
    CHECK(SNAPFILE_HEADER_BYTES + sf.dedup_len + sf.sm_len + SNAPFILE_TRAILER_BYTES == size);
    struct buf again;
    buf_init(&again);
    snapfile_encode(sf.slot, sf.dedup, sf.dedup_len, sf.sm, sf.sm_len, &again);
    CHECK(again.len == size && memcmp(again.data, data, size) == 0);
    buf_deinit(&again);
    return 0;
}
