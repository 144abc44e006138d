/* Frames: how messages are cut out of a TLS byte stream.
 *
 * Every frame is a 16-byte header followed by `length` payload bytes:
 *
 *   off  field
 *     0  magic    u32  NET_FRAME_MAGIC ("PXNF" on the wire)
 *     4  version  u8   NET_FRAME_VERSION
 *     5  type     u8   enum net_frame_type
 *     6  flags    u16  0 (reserved: a receiver rejects other values)
 *     8  length   u32  payload bytes, <= NET_FRAME_PAYLOAD_MAX
 *    12  hcrc     u32  CRC32C of bytes 0..11
 *
 * The payload carries no checksum of its own: TLS 1.3 AEAD already
 * authenticates every byte between the two endpoints. The header checksum
 * is there for our own bugs: a framing desync is caught before a garbage
 * length is trusted, instead of turning into a hunt for 80 MiB that never
 * comes.
 *
 * struct net_frame_rx is the one incremental decoder, shared by the event
 * loop and the fuzz target: the caller asks where the next bytes should go
 * (net_frame_rx_space), writes them there (SSL_read or memcpy), commits them,
 * then pulls complete frames (net_frame_rx_next). A small frame is decoded in
 * place in a fixed receive buffer; a frame larger than that buffer gets its
 * own allocation that the stream is read into directly, so a 1 MiB payload is
 * never copied between buffers. Any malformed header makes the decoder fail
 * for good (-EBADMSG): the connection is dropped, never resynchronised. */
#ifndef PAXFS_NET_FRAME_H
#define PAXFS_NET_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NET_FRAME_MAGIC 0x464e5850u /* bytes 'P' 'X' 'N' 'F' */
#define NET_FRAME_VERSION 1u
#define NET_FRAME_HEADER_BYTES 16u
/* Above PX_VALUE_BYTES_MAX (64 MiB) plus a message's own header and entries. */
#define NET_FRAME_PAYLOAD_MAX (80u << 20)
/* The receive buffer of one connection: frames up to this size (header
 * included) are decoded in place. */
#define NET_FRAME_RX_BUF_BYTES (128u << 10)

enum net_frame_type {
    NET_FRAME_HELLO = 1,        /* dialer -> acceptor, first frame: who I am;
                                 * acceptor -> dialer, the answer */
    NET_FRAME_PX = 2,           /* one consensus message (consensus/px_msg.h) */
    NET_FRAME_STATUS_REQ = 3,   /* operator client -> node: status query (status.h) */
    NET_FRAME_STATUS_REPLY = 4, /* node -> client, on the client's connection */
    NET_FRAME_BULK = 5,         /* peer -> peer: snapshot and block transfer; the
                                 * payload is fs/'s to define */
    NET_FRAME_CLIENT_REQ = 6,   /* operator client -> node: an opaque request */
    NET_FRAME_CLIENT_REPLY = 7, /* node -> client: the answer to one CLIENT_REQ */
    NET_FRAME_TYPE_MAX = NET_FRAME_CLIENT_REPLY,
};

/* Bounds on the opaque payloads of CLIENT_REQ and CLIENT_REPLY (net.h,
 * Clients): a request is small (a command and its arguments), a reply may
 * carry a report or a digest list. */
#define NET_CLIENT_REQ_MAX (64u << 10)
#define NET_CLIENT_REPLY_MAX (8u << 20)

struct net_frame_header {
    uint8_t type;
    uint32_t length;
};

/* Writes the 16-byte header for a payload of `length` bytes. */
void net_frame_header_encode(uint8_t out[NET_FRAME_HEADER_BYTES], uint8_t type,
                             uint32_t length);
/* 0 and *out filled, or -EBADMSG: wrong magic, version, flags or checksum,
 * unknown type, or a length over NET_FRAME_PAYLOAD_MAX. */
int net_frame_header_decode(const uint8_t in[NET_FRAME_HEADER_BYTES],
                            struct net_frame_header *out);

/* The HELLO payload: the dialer's node id and cluster id. Node 0 is the
 * operator client (paxfs status), whose certificate names no node. */
#define NET_CLUSTER_ID_BYTES 16u
#define NET_HELLO_BYTES 20u

struct net_hello {
    uint32_t node;
    uint8_t cluster_id[NET_CLUSTER_ID_BYTES];
};

void net_hello_encode(const struct net_hello *h, uint8_t out[NET_HELLO_BYTES]);
#define NET_HELLO_NODE_CLIENT 0u
/* -EBADMSG unless len == NET_HELLO_BYTES. Whether the node id fits the
 * certificate (and 0 a client's) is the connection's check, not the codec's. */
int net_hello_decode(const uint8_t *p, size_t len, struct net_hello *out);

/* ---- incremental decoder ------------------------------------------------- */

struct net_frame_rx {
    uint8_t *buf;         /* NET_FRAME_RX_BUF_BYTES */
    size_t start, end;    /* unconsumed bytes are buf[start, end) */
    bool have_header;     /* hdr is decoded; its payload is pending */
    struct net_frame_header hdr;
    uint8_t *big;         /* payload of a frame larger than buf */
    size_t big_have;
    bool delivered_big;   /* big was handed out by the last _next: free it */
    bool failed;
    size_t payload_max;   /* <= NET_FRAME_PAYLOAD_MAX; lowered before HELLO */
};

struct net_frame {
    uint8_t type;
    const uint8_t *payload; /* borrowed until the next call on the rx */
    size_t len;
};

void net_frame_rx_init(struct net_frame_rx *rx);
void net_frame_rx_deinit(struct net_frame_rx *rx);
/* Frames announcing more than max payload bytes are rejected from now on. */
void net_frame_rx_set_payload_max(struct net_frame_rx *rx, size_t max);
/* Where the next stream bytes go: *p, room for *n > 0 bytes. */
void net_frame_rx_space(struct net_frame_rx *rx, uint8_t **p, size_t *n);
/* n bytes were written at the place the last _space returned. */
void net_frame_rx_commit(struct net_frame_rx *rx, size_t n);
/* 1 and *f: the next complete frame, valid until the next call on rx;
 * 0: more bytes are needed; -EBADMSG: the stream is malformed (for good). */
int net_frame_rx_next(struct net_frame_rx *rx, struct net_frame *f);
/* True when bytes of an incomplete frame are buffered (a peer that closes
 * now closed mid-frame). */
bool net_frame_rx_partial(const struct net_frame_rx *rx);

#endif
