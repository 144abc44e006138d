/* Fuzz target: the block-file decoder (fs/store.h). Arbitrary bytes go
 * through the header check, the payload decode and the hash check; a file
 * that decodes must decode again under its true name, and must be refused
 * under any other name. Nothing may crash, hang or read out of bounds. */
#include "fs/store.h"

#include "base/assert.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Enough for any input a fuzzer produces; a larger declared plain length
 * must come back -ENOBUFS, which is exercised too. */
#define OUT_CAP (1u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t *out, *again;
    if (!out) {
        out = malloc(OUT_CAP);
        again = malloc(OUT_CAP);
        ASSERT(out && again);
    }
    struct store_block_hdr h;
    int hrc = store_block_hdr_decode(data, size, &h);
    ASSERT(hrc == 0 || hrc == -EBADMSG);

    size_t len = 0;
    int rc = store_block_decode(data, size, NULL, out, OUT_CAP, &len);
    ASSERT(rc == 0 || rc == -EBADMSG || rc == -ENOBUFS);
    if (hrc != 0)
        ASSERT(rc == -EBADMSG);
    if (rc != 0) {
        /* A fixed name can never make a bad file good. */
        struct store_name fixed = STORE_NAME_NONE;
        ASSERT(store_block_decode(data, size, &fixed, again, OUT_CAP, &len) != 0);
        return 0;
    }
    ASSERT(len == h.plain_len && len <= OUT_CAP);

    struct store_name name;
    ASSERT(store_name_of(out, len, &name) == 0);
    size_t len2 = 0;
    ASSERT(store_block_decode(data, size, &name, again, OUT_CAP, &len2) == 0);
    ASSERT(len2 == len && memcmp(out, again, len) == 0);
    name.b[len % STORE_NAME_LEN] ^= 1;
    ASSERT(store_block_decode(data, size, &name, again, OUT_CAP, &len2) == -EBADMSG);
    return 0;
}
