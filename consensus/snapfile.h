/* snapfile — a replica's snapshot on disk: the state machine's image and
 * the exactly-once table at one applied slot, in one checksummed file.
 *
 * Layout (little-endian):
 *
 *     0  magic      u64  SNAPFILE_MAGIC ("PXSNAP01")
 *     8  slot       u64  every slot <= slot is in the image, none after
 *    16  dedup_len  u64  bytes of the px_dedup table (px_dedup_encode)
 *    24  sm_len     u64  bytes of the state machine's image
 *    32  dedup[dedup_len]  sm[sm_len]
 *   end  crc        u32  CRC32C of every byte before it
 *
 * Files live in the replica's snapshot directory as snap-<slot, 20 digits>;
 * a file is written under a temporary name, fsynced, renamed and the
 * directory fsynced, so a name always holds a whole file. A snapshot being
 * received from a peer is assembled as incoming-<slot>.part in the same
 * directory (resumable: its length is how far the transfer got) and
 * renamed to its final name when installed.
 *
 * The same bytes travel to a lagging replica as they are: the file is the
 * transfer format. */
#ifndef PAXFS_CONSENSUS_SNAPFILE_H
#define PAXFS_CONSENSUS_SNAPFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"

#define SNAPFILE_MAGIC 0x313050414e535850ull /* the bytes "PXSNAP01" */
#define SNAPFILE_HEADER_BYTES 32u
#define SNAPFILE_TRAILER_BYTES 4u
/* The largest file we accept: images beyond this are not a filesystem of
 * the size paxfs is for, and the bound keeps a bad length from turning into
 * a huge allocation. */
#define SNAPFILE_BYTES_MAX (4ull << 30)
#define SNAPFILE_PATH_MAX 4096

struct snapfile {
    uint64_t slot;
    const uint8_t *dedup; /* borrowed from the decoded bytes */
    size_t dedup_len;
    const uint8_t *sm;
    size_t sm_len;
};

/* Appends a whole file. */
void snapfile_encode(uint64_t slot, const uint8_t *dedup, size_t dedup_len,
                     const uint8_t *sm, size_t sm_len, struct buf *out);
/* Checks exactly len bytes (magic, lengths, CRC); -EBADMSG otherwise. */
int snapfile_decode(const uint8_t *p, size_t len, struct snapfile *out);
/* Reads the header only (for a transfer in progress): -EBADMSG if the
 * first SNAPFILE_HEADER_BYTES are not a header; *total = the file's size. */
int snapfile_header(const uint8_t *p, size_t len, uint64_t *slot, uint64_t *total);

/* Writes bytes as dir/snap-<slot> durably (temporary file, fsync, rename,
 * directory fsync). The temporary file is dir/spare, when there is one,
 * overwritten in place. */
int snapfile_write(const char *dir, uint64_t slot, const uint8_t *p, size_t len);
/* Reads a whole file into a malloc'ed buffer (caller frees). -EFBIG past
 * SNAPFILE_BYTES_MAX. */
int snapfile_read(const char *path, uint8_t **p, size_t *len);
/* The path of dir/snap-<slot>. */
void snapfile_path(const char *dir, uint64_t slot, char out[SNAPFILE_PATH_MAX]);
/* Reads dir/snap-<slot> whole and checks it decodes and names that slot:
 * *p and *len (caller frees). -EBADMSG, or the read's error. */
int snapfile_load(const char *dir, uint64_t slot, uint8_t **p, size_t *len);
/* Finds the newest snapshot in dir that reads and decodes whole: *p and *len
 * (caller frees) and *slot. -ENOENT if none; a file that fails to decode is
 * logged and skipped (an older one may serve). */
int snapfile_load_newest(const char *dir, uint8_t **p, size_t *len, uint64_t *slot);
/* Deletes every snapshot file in dir older than keep_from, stale incoming
 * parts of slots < keep_from and, with temporaries, the temporary files a
 * crash left (only the one thread that writes snapshot files may ask).
 * The first such snapshot file, when there is no dir/spare, becomes it
 * instead: deleting frees disk space, which a filesystem mounted with
 * `discard` makes everyone else's writes wait for. */
void snapfile_prune(const char *dir, uint64_t keep_from, bool temporaries);
/* Slots of the snapshot files in dir, newest first: up to cap into out,
 * returns how many there are. */
size_t snapfile_list(const char *dir, uint64_t *out, size_t cap);

#endif
