/* transfer — snapshot transfer and block repair; see transfer.h.
 *
 * Threads: the net thread only copies frames (xfer_on_frame): requests go
 * to the server's queue, replies to the waiter that asked (matched by id).
 * The server thread answers requests; the receiver thread runs snapshot
 * transfers; any thread may call xfer_fetch_block. Everything shared is
 * under x->lock. */
#include "fs/transfer.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/assert.h"
#include "base/clock.h"
#include "base/log.h"
#include "consensus/replica.h"
#include "consensus/snapfile.h"
#include "fs/fsm.h"
#include "net/frame.h"

#define SERVER_QUEUE_MAX 64
#define SEND_RETRY_MS 10000u

/* ---- codec --------------------------------------------------------------- */

void xfer_msg_encode(const struct xfer_msg *m, struct buf *out)
{
    buf_put_u8(out, m->kind);
    buf_put_u64(out, m->id);
    switch (m->kind) {
    case XFER_IMG_REQ:
        buf_put_u64(out, m->min_slot);
        buf_put_u64(out, m->slot);
        buf_put_u64(out, m->offset);
        buf_put_u32(out, m->max_len);
        break;
    case XFER_IMG_DATA:
        buf_put_u32(out, (uint32_t)m->status);
        buf_put_u64(out, m->slot);
        buf_put_u64(out, m->total);
        buf_put_u64(out, m->offset);
        buf_put(out, m->data, m->data_len);
        break;
    case XFER_BLK_REQ:
        buf_put_u32(out, m->count);
        buf_put(out, m->names, (size_t)m->count * STORE_NAME_LEN);
        break;
    case XFER_BLK_DATA:
        buf_put_u32(out, (uint32_t)m->status);
        buf_put(out, m->name.b, STORE_NAME_LEN);
        buf_put(out, m->data, m->data_len);
        break;
    default:
        ASSERT(!"unknown transfer message kind");
    }
}

static bool status_ok(int32_t st)
{
    return st <= 0 && st > -4096;
}

int xfer_msg_decode(const uint8_t *p, size_t len, struct xfer_msg *out)
{
    struct reader rd;
    reader_init(&rd, p, len);
    struct xfer_msg m = {0};
    m.kind = get_u8(&rd);
    m.id = get_u64(&rd);
    switch (m.kind) {
    case XFER_IMG_REQ:
        m.min_slot = get_u64(&rd);
        m.slot = get_u64(&rd);
        m.offset = get_u64(&rd);
        m.max_len = get_u32(&rd);
        if (reader_left(&rd) != 0 || m.max_len == 0 || m.max_len > XFER_CHUNK_BYTES)
            return -EBADMSG;
        break;
    case XFER_IMG_DATA:
        m.status = (int32_t)get_u32(&rd);
        m.slot = get_u64(&rd);
        m.total = get_u64(&rd);
        m.offset = get_u64(&rd);
        m.data_len = reader_left(&rd);
        m.data = get_bytes(&rd, m.data_len);
        if (!status_ok(m.status) || m.data_len > XFER_CHUNK_BYTES ||
            m.total > SNAPFILE_BYTES_MAX || m.offset > m.total ||
            m.data_len > m.total - m.offset || (m.status != 0 && m.data_len != 0))
            return -EBADMSG;
        break;
    case XFER_BLK_REQ:
        m.count = get_u32(&rd);
        if (m.count == 0 || m.count > XFER_BLOCKS_PER_REQ)
            return -EBADMSG;
        m.names = get_bytes(&rd, (size_t)m.count * STORE_NAME_LEN);
        if (reader_left(&rd) != 0)
            return -EBADMSG;
        break;
    case XFER_BLK_DATA: {
        m.status = (int32_t)get_u32(&rd);
        const uint8_t *n = get_bytes(&rd, STORE_NAME_LEN);
        if (n)
            memcpy(m.name.b, n, STORE_NAME_LEN);
        m.data_len = reader_left(&rd);
        m.data = get_bytes(&rd, m.data_len);
        if (!status_ok(m.status) || (m.status != 0 && m.data_len != 0) ||
            (m.status == 0 && m.data_len == 0))
            return -EBADMSG;
        break;
    }
    default:
        return -EBADMSG;
    }
    if (!reader_ok(&rd))
        return -EBADMSG;
    *out = m;
    return 0;
}

/* ---- state --------------------------------------------------------------- */

struct frame {
    struct frame *next;
    uint32_t from;
    size_t len;
    uint8_t data[];
};

/* Replies to one request id, collected for the thread that asked. */
struct wait {
    uint64_t id;
    struct frame *head, **tail;
    size_t n;
    struct wait *next;
};

struct xfer {
    struct xfer_options o;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stop;
    uint64_t next_id;
    struct wait *waits;
    struct frame *srv_head, **srv_tail;
    size_t srv_n;
    pthread_t server, receiver;
    bool server_running, receiver_running;
    pthread_mutex_t run_lock; /* one transfer at a time */
    /* the receiver's job */
    bool need;
    uint32_t need_from;
    uint64_t need_slot;
    struct xfer_progress prog;
    uint64_t started_ns;
    /* throttle (the receiver's) */
    uint64_t tb_start_ns, tb_bytes;
};

static void frames_free(struct frame *f)
{
    while (f) {
        struct frame *next = f->next;
        free(f);
        f = next;
    }
}

void xfer_on_frame(struct xfer *x, uint32_t from, const uint8_t *p, size_t len)
{
    if (len < 9)
        return;
    uint8_t kind = p[0];
    uint64_t id = le_get_u64(p + 1);
    struct frame *f = malloc(sizeof *f + len);
    if (!f)
        return;
    f->next = NULL;
    f->from = from;
    f->len = len;
    memcpy(f->data, p, len);
    pthread_mutex_lock(&x->lock);
    if (kind == XFER_IMG_REQ || kind == XFER_BLK_REQ) {
        if (x->srv_n >= SERVER_QUEUE_MAX) { /* the asker times out and asks again */
            pthread_mutex_unlock(&x->lock);
            free(f);
            return;
        }
        *x->srv_tail = f;
        x->srv_tail = &f->next;
        x->srv_n++;
        f = NULL;
    } else {
        for (struct wait *w = x->waits; w; w = w->next) {
            if (w->id == id) {
                *w->tail = f;
                w->tail = &f->next;
                w->n++;
                f = NULL;
                break;
            }
        }
    }
    if (!f)
        pthread_cond_broadcast(&x->cond);
    pthread_mutex_unlock(&x->lock);
    free(f); /* a reply nobody waits for any more */
}

static void wait_open(struct xfer *x, struct wait *w)
{
    memset(w, 0, sizeof *w);
    w->tail = &w->head;
    pthread_mutex_lock(&x->lock);
    w->id = ++x->next_id;
    w->next = x->waits;
    x->waits = w;
    pthread_mutex_unlock(&x->lock);
}

static void wait_close(struct xfer *x, struct wait *w)
{
    pthread_mutex_lock(&x->lock);
    for (struct wait **p = &x->waits; *p; p = &(*p)->next) {
        if (*p == w) {
            *p = w->next;
            break;
        }
    }
    pthread_mutex_unlock(&x->lock);
    frames_free(w->head);
    w->head = NULL;
}

/* The next reply for w, or NULL after timeout_ms (or at stop). */
static struct frame *wait_next(struct xfer *x, struct wait *w, uint32_t timeout_ms)
{
    struct timespec dl;
    deadline_in_ms(&dl, timeout_ms);
    pthread_mutex_lock(&x->lock);
    while (!w->head && !x->stop)
        if (pthread_cond_timedwait(&x->cond, &x->lock, &dl) == ETIMEDOUT)
            break;
    struct frame *f = w->head;
    if (f) {
        w->head = f->next;
        if (!w->head)
            w->tail = &w->head;
        w->n--;
    }
    pthread_mutex_unlock(&x->lock);
    return f;
}

/* Sends a frame made by frame_start and filled since to peer `to`,
 * waiting out a full queue (bounded). The net takes the bytes or they are
 * freed here. */
static int send_frame(struct xfer *x, uint32_t to, struct buf *frame)
{
    int rc;
    uint64_t until = clock_now_ns() + (uint64_t)SEND_RETRY_MS * 1000000ull;
    for (;;) {
        rc = x->o.send(x->o.send_ctx, to, frame);
        if (rc != -EAGAIN || clock_now_ns() > until)
            break;
        pthread_mutex_lock(&x->lock);
        bool stop = x->stop;
        pthread_mutex_unlock(&x->lock);
        if (stop)
            break;
        usleep(2000);
    }
    buf_deinit(frame);
    return rc;
}

/* A frame's buffer: room for the net's header, then the message goes in. */
static void frame_start(struct buf *frame)
{
    buf_init(frame);
    buf_append_space(frame, NET_FRAME_HEADER_BYTES);
}

/* Sends one message to peer `to`, waiting out a full queue (bounded). */
static int send_msg(struct xfer *x, uint32_t to, const struct xfer_msg *m)
{
    struct buf b;
    frame_start(&b);
    xfer_msg_encode(m, &b);
    return send_frame(x, to, &b);
}

static bool stopping(struct xfer *x)
{
    pthread_mutex_lock(&x->lock);
    bool stop = x->stop;
    pthread_mutex_unlock(&x->lock);
    return stop;
}

/* Sleeps as long as it takes to keep the receiver under rate_max. Any
 * receiving thread may call it. */
static void throttle(struct xfer *x, size_t bytes)
{
    if (!x->o.rate_max)
        return;
    uint64_t now = clock_now_ns(), wait_us = 0;
    pthread_mutex_lock(&x->lock);
    if (!x->tb_start_ns || now - x->tb_start_ns > 1000000000ull) {
        x->tb_start_ns = now;
        x->tb_bytes = 0;
    }
    x->tb_bytes += bytes;
    uint64_t allowed_ns = x->tb_bytes * 1000000000ull / x->o.rate_max;
    if (allowed_ns > now - x->tb_start_ns)
        wait_us = MIN((allowed_ns - (now - x->tb_start_ns)) / 1000, 1000000ull);
    pthread_mutex_unlock(&x->lock);
    if (wait_us)
        usleep((useconds_t)wait_us);
}

/* ---- server ---------------------------------------------------------------- */

static void serve_image(struct xfer *x, uint32_t from, const struct xfer_msg *q)
{
    const char *dir = replica_snap_dir(x->o.replica);
    struct xfer_msg a = {.kind = XFER_IMG_DATA, .id = q->id};
    uint64_t slot = q->slot;
    if (slot == 0) {
        uint64_t newest;
        if (snapfile_list(dir, &newest, 1) == 0 || newest < q->min_slot)
            a.status = -ENOENT;
        else
            slot = newest;
    }
    uint8_t *chunk = NULL;
    if (a.status == 0) {
        char path[SNAPFILE_PATH_MAX];
        snapfile_path(dir, slot, path);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0) {
            a.status = q->slot ? -ESTALE : -ENOENT;
        } else if ((uint64_t)st.st_size < q->offset) {
            a.status = -ESTALE;
        } else {
            size_t n = (size_t)MIN((uint64_t)q->max_len, (uint64_t)st.st_size - q->offset);
            chunk = malloc(n ? n : 1);
            ssize_t got = chunk ? pread(fd, chunk, n, (off_t)q->offset) : -1;
            if (got != (ssize_t)n) {
                a.status = -EIO;
            } else {
                a.slot = slot;
                a.total = (uint64_t)st.st_size;
                a.offset = q->offset;
                a.data = chunk;
                a.data_len = n;
            }
        }
        if (fd >= 0)
            close(fd);
    }
    send_msg(x, from, &a);
    free(chunk);
}

/* One BLK_DATA per name. Each block file is read straight into its frame,
 * after the room for the message header, which is written once the read
 * tells the status: the bytes are not copied again on the way to TLS. */
static void serve_blocks(struct xfer *x, uint32_t from, const struct xfer_msg *q)
{
    size_t cap = store_file_max(store_block_size(x->o.store));
    for (uint32_t i = 0; i < q->count && !stopping(x); i++) {
        struct xfer_msg a = {.kind = XFER_BLK_DATA, .id = q->id};
        memcpy(a.name.b, q->names + (size_t)i * STORE_NAME_LEN, STORE_NAME_LEN);
        struct buf b;
        buf_init(&b);
        buf_reserve(&b, NET_FRAME_HEADER_BYTES + XFER_BLK_DATA_HEADER_BYTES + cap);
        size_t len = 0;
        /* Shipped as stored; the receiver verifies every byte against the
         * name before it keeps the block, and asks another peer if not. */
        int rc = store_read_file(x->o.store, &a.name,
                                 b.data + NET_FRAME_HEADER_BYTES + XFER_BLK_DATA_HEADER_BYTES,
                                 cap, &len);
        if (rc != 0) {
            a.status = rc == -EBADMSG ? -EBADMSG : -ENOENT;
            len = 0;
        }
        buf_append_space(&b, NET_FRAME_HEADER_BYTES);
        xfer_msg_encode(&a, &b); /* the header alone: a.data_len is 0 */
        ASSERT(b.len == NET_FRAME_HEADER_BYTES + XFER_BLK_DATA_HEADER_BYTES);
        b.len += len; /* the file, already in place after it */
        send_frame(x, from, &b);
    }
}

static void *server_main(void *arg)
{
    struct xfer *x = arg;
    pthread_mutex_lock(&x->lock);
    while (!x->stop) {
        if (!x->srv_head) {
            pthread_cond_wait(&x->cond, &x->lock);
            continue;
        }
        struct frame *f = x->srv_head;
        x->srv_head = f->next;
        if (!x->srv_head)
            x->srv_tail = &x->srv_head;
        x->srv_n--;
        pthread_mutex_unlock(&x->lock);
        struct xfer_msg q;
        if (xfer_msg_decode(f->data, f->len, &q) != 0)
            LOG_W("node=%u event=xfer_bad_request from=%u bytes=%zu", x->o.node, f->from, f->len);
        else if (q.kind == XFER_IMG_REQ)
            serve_image(x, f->from, &q);
        else if (q.kind == XFER_BLK_REQ)
            serve_blocks(x, f->from, &q);
        free(f);
        pthread_mutex_lock(&x->lock);
    }
    pthread_mutex_unlock(&x->lock);
    return NULL;
}

/* ---- block fetch ------------------------------------------------------------- */

/* One BLK_REQ in flight: names[0..n) asked of peer. */
struct batch {
    struct wait w;
    uint32_t peer;
    const struct store_name *names;
    size_t n;
    bool *got;
    bool sent;
};

static void batch_send(struct xfer *x, struct batch *b, uint32_t peer,
                       const struct store_name *names, size_t n, bool *got)
{
    b->peer = peer;
    b->names = names;
    b->n = n;
    b->got = got;
    wait_open(x, &b->w);
    struct xfer_msg q = {.kind = XFER_BLK_REQ, .id = b->w.id, .count = (uint32_t)n,
                         .names = (const uint8_t *)names};
    b->sent = send_msg(x, peer, &q) == 0;
}

/* Stores every good answer to b (verified on the way in) and sets got[i];
 * the references the puts added are appended to held. Returns the wire
 * bytes received; *plain_bytes grows by the blocks' plain size. */
static uint64_t batch_collect(struct xfer *x, struct batch *b, struct store_name *held,
                              size_t *n_held, uint64_t *plain_bytes)
{
    uint64_t bytes = 0;
    for (size_t answered = 0; b->sent && answered < b->n;) {
        struct frame *f = wait_next(x, &b->w, XFER_TIMEOUT_MS);
        if (!f)
            break;
        answered++;
        struct xfer_msg a;
        if (f->from == b->peer && xfer_msg_decode(f->data, f->len, &a) == 0 &&
            a.kind == XFER_BLK_DATA && a.status == 0) {
            bytes += a.data_len;
            for (size_t i = 0; i < b->n; i++) {
                if (b->got[i] || !store_name_eq(&b->names[i], &a.name))
                    continue;
                int prc = store_put_encoded(x->o.store, &a.name, a.data, a.data_len);
                if (prc == 0) {
                    b->got[i] = true;
                    held[(*n_held)++] = a.name;
                    struct store_block_hdr h;
                    if (store_block_hdr_decode(a.data, a.data_len, &h) == 0)
                        *plain_bytes += h.plain_len;
                } else {
                    LOG_W("node=%u event=xfer_block_rejected from=%u error=\"%s\"", x->o.node,
                          b->peer, strerror(-prc));
                }
                break;
            }
        }
        free(f);
    }
    wait_close(x, &b->w);
    return bytes;
}

int xfer_fetch_block(void *ctx, const struct store_name *name)
{
    struct xfer *x = ctx;
    for (uint32_t peer = 1; peer <= x->o.n_nodes; peer++) {
        if (peer == x->o.node)
            continue;
        bool got = false;
        struct store_name held;
        size_t n_held = 0;
        uint64_t plain = 0;
        struct batch b;
        batch_send(x, &b, peer, name, 1, &got);
        batch_collect(x, &b, &held, &n_held, &plain);
        if (n_held)
            store_unref(x->o.store, &held);
        if (got)
            return 0;
    }
    return -ENOENT;
}

/* ---- the receiver ----------------------------------------------------------- */

static void set_progress(struct xfer *x, enum xfer_state st, uint64_t done, uint64_t total)
{
    pthread_mutex_lock(&x->lock);
    x->prog.state = st;
    x->prog.bytes_done = done;
    x->prog.bytes_total = total;
    uint64_t el = clock_now_ns() - x->started_ns;
    x->prog.rate = el > 0 ? (uint64_t)((double)done * 1e9 / (double)el) : 0;
    pthread_mutex_unlock(&x->lock);
}

/* An incoming part file in dir, if any: its slot and length. Others go. */
static bool find_part(const char *dir, uint64_t *slot, uint64_t *len)
{
    DIR *d = opendir(dir);
    if (!d)
        return false;
    bool found = false;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        unsigned long long s;
        char tail[8];
        if (sscanf(de->d_name, "incoming-%llu%7s", &s, tail) != 2 || strcmp(tail, ".part") != 0)
            continue;
        char path[SNAPFILE_PATH_MAX + 64];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        struct stat st;
        if (!found && stat(path, &st) == 0) {
            *slot = s;
            *len = (uint64_t)st.st_size;
            found = true;
        } else {
            unlink(path);
        }
    }
    closedir(d);
    return found;
}

static void part_path(const char *dir, uint64_t slot, char *out, size_t cap)
{
    snprintf(out, cap, "%s/incoming-%llu.part", dir, (unsigned long long)slot);
}

/* Step 1: the image, into the part file. 0 when whole; -ESTALE start over;
 * -ENOENT this peer has nothing new enough; -ETIMEDOUT. */
static int fetch_image(struct xfer *x, uint32_t peer, uint64_t want, char *path, size_t cap,
                       uint64_t *slot_out)
{
    const char *dir = replica_snap_dir(x->o.replica);
    uint64_t slot = 0, off = 0, total = 0;
    if (find_part(dir, &slot, &off) && slot < want) {
        part_path(dir, slot, path, cap);
        unlink(path);
        slot = off = 0;
    }
    int fd = -1;
    if (slot) {
        part_path(dir, slot, path, cap);
        fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0)
            slot = off = 0;
    }
    int rc = 0;
    for (;;) {
        struct wait w;
        wait_open(x, &w);
        struct xfer_msg q = {.kind = XFER_IMG_REQ, .id = w.id, .min_slot = want, .slot = slot,
                             .offset = off, .max_len = XFER_CHUNK_BYTES};
        rc = send_msg(x, peer, &q);
        struct frame *f = rc == 0 ? wait_next(x, &w, XFER_TIMEOUT_MS) : NULL;
        wait_close(x, &w);
        if (!f) {
            rc = rc ? rc : -ETIMEDOUT;
            break;
        }
        struct xfer_msg a;
        rc = xfer_msg_decode(f->data, f->len, &a);
        if (rc == 0 && a.kind != XFER_IMG_DATA)
            rc = -EBADMSG;
        if (rc == 0 && a.status != 0)
            rc = a.status;
        if (rc == 0 && ((slot && a.slot != slot) || a.offset != off || a.slot < want))
            rc = -EBADMSG;
        if (rc == 0 && !slot) {
            slot = a.slot;
            part_path(dir, slot, path, cap);
            fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
            if (fd < 0)
                rc = -errno;
        }
        if (rc == 0 && pwrite(fd, a.data, a.data_len, (off_t)off) != (ssize_t)a.data_len)
            rc = -EIO;
        if (rc == 0) {
            off += a.data_len;
            total = a.total;
            pthread_mutex_lock(&x->lock);
            x->prog.bytes_received += a.data_len;
            pthread_mutex_unlock(&x->lock);
            set_progress(x, XFER_IMAGE, off, total);
            throttle(x, a.data_len);
        }
        free(f);
        if (rc != 0 || off == total || stopping(x))
            break;
    }
    if (rc == 0 && stopping(x))
        rc = -ECANCELED;
    if (fd >= 0) {
        if (rc == 0 && fsync(fd) != 0)
            rc = -errno;
        close(fd);
    }
    if (rc == -ESTALE || rc == -EBADMSG) {
        if (slot) {
            part_path(dir, slot, path, cap);
            unlink(path); /* start the image over */
        }
    }
    *slot_out = slot;
    return rc;
}

struct name_list {
    struct store_name *v;
    size_t n, cap;
    uint64_t plain_bytes;
    struct store *store;
};

static int collect_missing(void *ctx, uint64_t ino, uint64_t index, const struct store_name *name,
                           uint32_t len)
{
    (void)ino;
    (void)index;
    struct name_list *l = ctx;
    if (store_has(l->store, name) == 1)
        return 0;
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 256;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
        ASSERT(l->v != NULL);
    }
    l->v[l->n++] = *name;
    l->plain_bytes += len;
    return 0;
}

static int cmp_name(const void *a, const void *b)
{
    return memcmp(a, b, STORE_NAME_LEN);
}

/* Step 2: every block the image names that the store lacks. The references
 * the puts added go to *held. */
/* One of the threads fetching blocks: batches index, index + XFER_STREAMS,
 * ... of names, XFER_BATCHES_IN_FLIGHT requests in flight (the peer reads
 * the next batch while this one is verified). */
struct stream {
    struct xfer *x;
    uint32_t peer;
    const struct store_name *names;
    size_t n;
    bool *got;             /* shared; each stream writes only its batches */
    uint32_t index;
    uint64_t *done, total; /* *done under x->lock */
    struct name_list held; /* references the puts added */
};

static void *stream_main(void *arg)
{
    struct stream *s = arg;
    struct xfer *x = s->x;
    const size_t per = XFER_BLOCKS_PER_REQ, step = per * XFER_STREAMS;
    struct batch inflight[XFER_BATCHES_IN_FLIGHT];
    size_t next = s->index * per, head = 0, n_inflight = 0;
    while ((next < s->n || n_inflight > 0) && !stopping(x)) {
        while (next < s->n && n_inflight < XFER_BATCHES_IN_FLIGHT) {
            size_t n = MIN(per, s->n - next);
            batch_send(x, &inflight[(head + n_inflight) % XFER_BATCHES_IN_FLIGHT], s->peer,
                       s->names + next, n, s->got + next);
            next += step;
            n_inflight++;
        }
        uint64_t plain = 0;
        uint64_t bytes = batch_collect(x, &inflight[head], s->held.v, &s->held.n, &plain);
        head = (head + 1) % XFER_BATCHES_IN_FLIGHT;
        n_inflight--;
        throttle(x, (size_t)bytes);
        pthread_mutex_lock(&x->lock);
        x->prog.bytes_received += bytes;
        *s->done += plain;
        uint64_t done = *s->done;
        pthread_mutex_unlock(&x->lock);
        set_progress(x, XFER_BLOCKS, done, s->total);
    }
    while (n_inflight > 0) { /* stopped early */
        wait_close(x, &inflight[head].w);
        head = (head + 1) % XFER_BATCHES_IN_FLIGHT;
        n_inflight--;
    }
    return NULL;
}

static int fetch_blocks(struct xfer *x, uint32_t first_peer, const struct snapfile *sf,
                        uint64_t image_bytes, struct name_list *held)
{
    struct name_list need = {.store = x->o.store};
    /* Blocks of files that still have a name: an orphan's are kept by the
     * peers for handles open there, and read repair fetches one here if a
     * handle of ours ever needs it (after a rebuild). */
    int rc = fsm_image_linked_blocks(sf->sm, sf->sm_len, collect_missing, &need);
    if (rc != 0) {
        free(need.v);
        return rc;
    }
    /* A block mapped twice is fetched once. */
    if (need.n > 1)
        qsort(need.v, need.n, sizeof *need.v, cmp_name);
    size_t u = 0;
    for (size_t i = 0; i < need.n; i++)
        if (u == 0 || memcmp(&need.v[u - 1], &need.v[i], STORE_NAME_LEN) != 0)
            need.v[u++] = need.v[i];
    need.n = u;
    held->v = realloc(held->v, (need.n ? need.n : 1) * sizeof *held->v);
    ASSERT(held->v != NULL);
    uint64_t total = image_bytes + need.plain_bytes, done = image_bytes;
    set_progress(x, XFER_BLOCKS, done, total);
    bool *got = calloc(need.n ? need.n : 1, sizeof *got);
    ASSERT(got != NULL);
    /* From the peer that sent us here, in XFER_STREAMS threads (verifying
     * blocks is the receiver's main cost: a hash of every byte). */
    struct stream st[XFER_STREAMS];
    pthread_t th[XFER_STREAMS];
    bool started[XFER_STREAMS] = {false};
    for (uint32_t i = 0; i < XFER_STREAMS; i++) {
        st[i] = (struct stream){.x = x, .peer = first_peer, .names = need.v, .n = need.n,
                                .got = got, .index = i, .done = &done, .total = total};
        st[i].held.v = malloc((need.n ? need.n : 1) * sizeof *st[i].held.v);
        ASSERT(st[i].held.v != NULL);
        if (i > 0)
            started[i] = pthread_create(&th[i], NULL, stream_main, &st[i]) == 0;
    }
    stream_main(&st[0]);
    for (uint32_t i = 1; i < XFER_STREAMS; i++) {
        if (started[i])
            pthread_join(th[i], NULL);
        else
            stream_main(&st[i]); /* no thread: run it here */
    }
    for (uint32_t i = 0; i < XFER_STREAMS; i++) {
        memcpy(held->v + held->n, st[i].held.v, st[i].held.n * sizeof *held->v);
        held->n += st[i].held.n;
        free(st[i].held.v);
    }
    rc = stopping(x) ? -ECANCELED : 0;
    /* What the first peer did not give: the others, one batch at a time. */
    for (size_t start = 0; start < need.n && rc == 0; start += XFER_BLOCKS_PER_REQ) {
        size_t n = MIN((size_t)XFER_BLOCKS_PER_REQ, need.n - start);
        for (uint32_t k = 1; k < x->o.n_nodes; k++) {
            uint32_t peer = (first_peer - 1 + k) % x->o.n_nodes + 1;
            size_t missing = 0;
            for (size_t i = 0; i < n; i++)
                missing += !got[start + i];
            if (!missing)
                break;
            if (peer == x->o.node)
                continue;
            uint64_t plain = 0;
            struct batch b;
            batch_send(x, &b, peer, need.v + start, n, got + start);
            batch_collect(x, &b, held->v, &held->n, &plain);
            done += plain;
            set_progress(x, XFER_BLOCKS, done, total);
        }
        for (size_t i = 0; i < n; i++)
            if (!got[start + i])
                rc = -ENOENT; /* no peer has it now: try the whole transfer later */
    }
    free(got);
    free(need.v);
    return rc;
}

static int run_transfer(struct xfer *x, uint32_t peer, uint64_t want, bool rebuild)
{
    char path[SNAPFILE_PATH_MAX + 64];
    uint64_t slot = 0;
    x->started_ns = clock_now_ns();
    set_progress(x, XFER_IMAGE, 0, 0);
    int rc = fetch_image(x, peer, want, path, sizeof path, &slot);
    if (rc != 0)
        return rc;
    uint8_t *img;
    size_t len;
    rc = snapfile_read(path, &img, &len);
    if (rc != 0)
        return rc;
    struct snapfile sf;
    rc = snapfile_decode(img, len, &sf);
    if (rc != 0) {
        LOG_W("node=%u event=xfer_image_bad slot=%llu: starting over", x->o.node,
              (unsigned long long)slot);
        free(img);
        unlink(path);
        return rc;
    }
    struct name_list held = {0};
    rc = fetch_blocks(x, peer, &sf, len, &held);
    free(img);
    if (rc == 0)
        rc = store_sync(x->o.store); /* blocks durable before the snapshot names them */
    if (rc == 0) {
        set_progress(x, XFER_INSTALL, x->prog.bytes_total, x->prog.bytes_total);
        rc = replica_install_snapshot(x->o.replica, path, rebuild);
        if (rc == -EALREADY) {
            unlink(path);
            rc = 0;
        } else if (rc == -EBADMSG || rc == -EINVAL) {
            unlink(path);
        }
    }
    /* The state holds its own references now (or the transfer failed and
     * the blocks stay on disk for the next try, unreferenced). */
    for (size_t i = 0; i < held.n; i++)
        store_unref(x->o.store, &held.v[i]);
    free(held.v);
    if (rc == 0) {
        pthread_mutex_lock(&x->lock);
        x->prog.transfers++;
        pthread_mutex_unlock(&x->lock);
        LOG_I("node=%u event=xfer_done slot=%llu bytes=%llu rate=%llu", x->o.node,
              (unsigned long long)slot, (unsigned long long)x->prog.bytes_done,
              (unsigned long long)x->prog.rate);
    }
    return rc;
}

static void *receiver_main(void *arg)
{
    struct xfer *x = arg;
    uint32_t attempt = 0;
    pthread_mutex_lock(&x->lock);
    while (!x->stop) {
        if (!x->need) {
            pthread_cond_wait(&x->cond, &x->lock);
            continue;
        }
        uint32_t from = x->need_from;
        uint64_t want = x->need_slot;
        pthread_mutex_unlock(&x->lock);
        /* The peer that sent us, then the others in turn. */
        uint32_t peer = (from - 1 + attempt) % x->o.n_nodes + 1;
        if (peer == x->o.node)
            peer = peer % x->o.n_nodes + 1;
        LOG_I("node=%u event=xfer_start from=%u slot=%llu", x->o.node, peer,
              (unsigned long long)want);
        pthread_mutex_lock(&x->run_lock);
        int rc = run_transfer(x, peer, want, false);
        pthread_mutex_unlock(&x->run_lock);
        struct replica_status st;
        replica_status(x->o.replica, &st);
        pthread_mutex_lock(&x->lock);
        x->prog.state = XFER_IDLE;
        if (rc == 0 || st.applied >= want) {
            /* Installed (or caught up from the log meanwhile). A newer
             * snapshot announced during the transfer is not chased: the
             * log after ours may still be there, and if not the core
             * announces again. */
            x->need = false;
            x->need_slot = 0;
            attempt = 0;
            continue;
        }
        LOG_W("node=%u event=xfer_failed from=%u error=\"%s\": retrying", x->o.node, peer,
              strerror(-rc));
        attempt++;
        struct timespec dl;
        deadline_in_ms(&dl, 1000);
        while (!x->stop && pthread_cond_timedwait(&x->cond, &x->lock, &dl) != ETIMEDOUT) {
        }
    }
    pthread_mutex_unlock(&x->lock);
    return NULL;
}

int xfer_rebuild(struct xfer *x, uint32_t from, uint64_t min_slot)
{
    if (from < 1 || from > x->o.n_nodes || from == x->o.node)
        return -EINVAL;
    pthread_mutex_lock(&x->run_lock);
    int rc = run_transfer(x, from, min_slot, true);
    pthread_mutex_unlock(&x->run_lock);
    pthread_mutex_lock(&x->lock);
    x->prog.state = XFER_IDLE;
    pthread_mutex_unlock(&x->lock);
    return rc;
}

void xfer_snapshot_needed(struct xfer *x, uint32_t from, uint64_t slot)
{
    if (from < 1 || from > x->o.n_nodes || from == x->o.node)
        return;
    pthread_mutex_lock(&x->lock);
    if (!x->need || slot > x->need_slot) {
        x->need_slot = MAX(x->need_slot, slot);
        x->need_from = from;
    }
    x->need = true;
    pthread_cond_broadcast(&x->cond);
    pthread_mutex_unlock(&x->lock);
}

void xfer_get_progress(struct xfer *x, struct xfer_progress *out)
{
    pthread_mutex_lock(&x->lock);
    *out = x->prog;
    pthread_mutex_unlock(&x->lock);
}

int xfer_new(const struct xfer_options *o, struct xfer **out)
{
    struct xfer *x = calloc(1, sizeof *x);
    if (!x)
        return -ENOMEM;
    x->o = *o;
    pthread_mutex_init(&x->lock, NULL);
    pthread_mutex_init(&x->run_lock, NULL);
    cond_init_monotonic(&x->cond);
    x->srv_tail = &x->srv_head;
    int rc = pthread_create(&x->server, NULL, server_main, x);
    if (rc == 0) {
        x->server_running = true;
        rc = pthread_create(&x->receiver, NULL, receiver_main, x);
        x->receiver_running = rc == 0;
    }
    if (rc != 0) {
        xfer_free(x);
        return -rc;
    }
    *out = x;
    return 0;
}

void xfer_stop(struct xfer *x)
{
    pthread_mutex_lock(&x->lock);
    x->stop = true;
    pthread_cond_broadcast(&x->cond);
    pthread_mutex_unlock(&x->lock);
    if (x->server_running)
        pthread_join(x->server, NULL);
    if (x->receiver_running)
        pthread_join(x->receiver, NULL);
    x->server_running = x->receiver_running = false;
}

void xfer_free(struct xfer *x)
{
    if (!x)
        return;
    xfer_stop(x);
    frames_free(x->srv_head);
    pthread_cond_destroy(&x->cond);
    pthread_mutex_destroy(&x->run_lock);
    pthread_mutex_destroy(&x->lock);
    free(x);
}
