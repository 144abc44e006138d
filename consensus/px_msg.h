/* px_msg — the wire codec of the consensus messages (struct px_msg, px.h).
 *
 * One message encodes to one self-contained byte string; the transport
 * carries it as the payload of one frame (net/frame.h), so the codec knows
 * nothing of sockets and is shared by the network, the simulator and tests.
 *
 * Layout, little-endian, version PX_MSG_VERSION:
 *
 *   off  field
 *     0  version     u8   PX_MSG_VERSION
 *     1  type        u8   1..PX_MSG_TYPE_MAX
 *     2  from        u32
 *     6  to          u32
 *    10  ballot      u64
 *    18  commit      u64
 *    26  slot        u64
 *    34  aux         u64
 *    42  n_entries   u32  <= PX_MSG_ENTRIES_MAX
 *    46  entries: per entry
 *          slot u64, ballot u64,
 *          and, only in types that carry values, len u32 (<= PX_VALUE_BYTES_MAX)
 *          followed by len bytes.
 *
 * Which types carry what (px.h, enum px_msg_type):
 *   PROMISE, ACCEPT, CHOSEN, FORWARD   entries, each with a value (never NULL)
 *   ACCEPTED                           entries without values (value NULL)
 *   every other type                   no entries
 *
 * Invariants: the encoding is canonical (every field has one encoding and
 * nothing is optional), so decode(b) succeeding implies encode(decode(b)) == b
 * byte for byte; the fuzz target checks exactly that. px_msg_decode reads
 * only the bytes it is given, accepts exactly one message spanning all of
 * them, and rejects anything else with -EBADMSG. A new field or type means a
 * new version byte: a decoder never guesses at a version it does not know. */
#ifndef PAXFS_CONSENSUS_PX_MSG_H
#define PAXFS_CONSENSUS_PX_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "consensus/px.h"

#define PX_MSG_VERSION 1u
#define PX_MSG_HEADER_BYTES 46u
#define PX_MSG_ENTRY_BYTES 16u        /* slot, ballot */
#define PX_MSG_VALUE_LEN_BYTES 4u     /* len, in types that carry values */

/* Whether a message of this type may carry entries, and whether its entries
 * carry values. Unknown types carry nothing. */
bool px_msg_type_has_entries(uint8_t type);
bool px_msg_type_has_values(uint8_t type);

/* The exact number of bytes px_msg_encode appends for m (m must be valid
 * for px_msg_encode). */
size_t px_msg_encoded_len(const struct px_msg *m);

/* Appends the encoding of m to out. -EINVAL (and out unchanged) if m breaks
 * the rules the decoder enforces: unknown type, more than PX_MSG_ENTRIES_MAX
 * entries, entries in a type without them, a missing value in a type with
 * values, a value in ACCEPTED, or a value over PX_VALUE_BYTES_MAX. m is
 * borrowed. */
int px_msg_encode(const struct px_msg *m, struct buf *out);

/* Decodes exactly one message occupying all len bytes of p. On 0, *out holds
 * a new entries array and new values (px_value_new) that the caller owns and
 * releases with px_msg_clear(). On -EBADMSG (anything malformed, truncated,
 * trailing, of an unknown version or type, or over a bound) *out is
 * untouched and nothing is allocated. p is borrowed. */
int px_msg_decode(const uint8_t *p, size_t len, struct px_msg *out);

#endif
