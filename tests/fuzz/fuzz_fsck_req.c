/* Fuzz target for the online fsck request decoder (fs/fsck.h), which reads
 * CLIENT_REQ payloads from the operator's client, and for the recognizer
 * of the fsck mark record that every replica runs on every applied value.
 * Beyond "no crash, no read past the end": a request that decodes has its
 * op's exact length, and the recognizer says yes exactly to the 16 bytes
 * fsck_mark_encode writes. */
#include "fs/fsck.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

static size_t op_length(uint8_t op)
{
    switch (op) {
    case FSCK_OP_MARK:
    case FSCK_OP_DIGEST:
    case FSCK_OP_DIVERGE:
        return 9;
    case FSCK_OP_INODES:
        return 21;
    case FSCK_OP_BLOCKS:
        return 2;
    case FSCK_OP_SNAPSHOT:
        return 1;
    case FSCK_OP_REBUILD:
        return 13;
    default:
        return 0;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fsck_request q;
    int rc = fsck_request_decode(data, size, &q);
    CHECK(rc == 0 || rc == -EBADMSG);
    if (rc == 0) {
        CHECK(size >= 1 && q.op == data[0] && op_length(q.op) == size);
        if (q.op == FSCK_OP_BLOCKS)
            CHECK(data[1] <= 1 && q.repair == (data[1] == 1));
    } else {
        CHECK(size == 0 || op_length(data[0]) != size ||
              (data[0] == FSCK_OP_BLOCKS && data[1] > 1));
    }
    bool mark = fsck_server_apply(NULL, 1, data, size);
    bool want = false;
    if (size == FSCK_MARK_BYTES) {
        uint8_t rec[FSCK_MARK_BYTES];
        uint64_t id = 0;
        for (int i = 7; i >= 0; i--)
            id = id << 8 | data[8 + i];
        fsck_mark_encode(id, rec);
        want = memcmp(rec, data, FSCK_MARK_BYTES) == 0;
    }
    CHECK(mark == want);
    return 0;
}
