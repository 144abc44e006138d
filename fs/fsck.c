/* fsck — offline and online verification of replicas; see fsck.h. */
#include "fs/fsck.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/assert.h"
#include "base/log.h"
#include "consensus/replica.h"
#include "consensus/snapfile.h"
#include "fs/transfer.h"

const char *fsck_kind_name(enum fsck_kind k)
{
    switch (k) {
    case FSCK_BLOCK_MISSING: return "block_missing";
    case FSCK_BLOCK_CORRUPT: return "block_corrupt";
    case FSCK_TREE: return "tree";
    case FSCK_SNAPSHOT_BAD: return "snapshot_bad";
    case FSCK_LOG_BAD: return "log_bad";
    case FSCK_DIVERGED: return "diverged";
    case FSCK_UNREACHABLE: return "unreachable";
    }
    return "unknown";
}

/* ---- offline ----------------------------------------------------------- */

struct offline {
    uint32_t node;
    fsck_report_fn fn;
    void *ctx;
    struct fsck_summary *sum;
};

__attribute__((format(printf, 6, 7)))
static void report(struct offline *o, enum fsck_kind kind, uint64_t ino, uint64_t index,
                   const struct store_name *block, const char *fmt, ...)
{
    struct fsck_finding f = {.kind = kind, .node = o->node, .ino = ino, .index = index};
    if (block) {
        f.has_block = true;
        f.block = *block;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f.what, sizeof f.what, fmt, ap);
    va_end(ap);
    o->sum->findings++;
    if (o->fn)
        o->fn(o->ctx, &f);
}

static int64_t apply_op(void *ctx, uint64_t slot, const uint8_t *data, size_t len)
{
    (void)slot;
    if (fsck_server_apply(NULL, slot, data, len))
        return 0;
    return fsm_apply(ctx, data, len, NULL);
}

static int restore_image(void *ctx, const uint8_t *image, size_t len)
{
    return fsm_image_restore(ctx, image, len);
}

static int no_send(void *ctx, const struct px_msg *m)
{
    (void)ctx;
    (void)m;
    return 0;
}

/* One mapping of a block, for matching against the files on disk. */
struct mapping {
    struct store_name name;
    uint64_t ino, index;
};

struct mappings {
    struct mapping *v;
    size_t n, cap;
};

static int collect_mapping(void *ctx, uint64_t ino, uint64_t index,
                           const struct store_name *name, uint32_t len)
{
    (void)len;
    struct mappings *m = ctx;
    if (m->n == m->cap) {
        m->cap = m->cap ? 2 * m->cap : 1024;
        m->v = realloc(m->v, m->cap * sizeof *m->v);
        ASSERT(m->v != NULL);
    }
    m->v[m->n++] = (struct mapping){*name, ino, index};
    return 0;
}

struct names {
    struct store_name *v;
    size_t n, cap;
};

static int collect_name(void *ctx, const struct store_name *name)
{
    struct names *l = ctx;
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 1024;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
        ASSERT(l->v != NULL);
    }
    l->v[l->n++] = *name;
    return 0;
}

static int cmp_names(const void *a, const void *b)
{
    return memcmp(a, b, STORE_NAME_LEN);
}

static void tree_finding(void *ctx, uint64_t ino, const char *what)
{
    report(ctx, FSCK_TREE, ino, 0, NULL, "inode %llu: %s", (unsigned long long)ino, what);
}

static int inode_counter(void *ctx, uint64_t ino, const uint8_t d[FSM_INODE_DIGEST_BYTES])
{
    (void)ino;
    (void)d;
    (*(uint64_t *)ctx)++;
    return 0;
}

/* Reads "node K of N" from DATADIR/CLUSTER (see net/host.c). */
static int read_cluster_file(const char *data_dir, uint32_t *node, uint32_t *n_nodes)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/CLUSTER", data_dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return -errno;
    char line[128];
    unsigned k = 0, n = 0;
    int rc = -EBADMSG;
    if (fgets(line, sizeof line, f) && fscanf(f, "node %u of %u", &k, &n) == 2 && k >= 1 &&
        k <= n && n <= FSM_NODES_MAX) {
        *node = k;
        *n_nodes = n;
        rc = 0;
    }
    fclose(f);
    return rc;
}

/* Block files on disk and block mappings of the state, matched by name:
 * every file is verified once; a mapping whose file is absent or bad is a
 * finding, and so is a bad file nothing maps. Only files that still have a
 * name must have their blocks here: an orphan's serve handles open on
 * other hosts, and a replica that received a snapshot never fetched them. */
static void check_blocks(struct offline *o, struct fsm *f, struct store *st)
{
    struct mappings maps = {0};
    fsm_linked_blocks(f, collect_mapping, &maps);
    if (maps.n > 1)
        qsort(maps.v, maps.n, sizeof *maps.v, cmp_names);
    struct names disk = {0};
    store_list(st, collect_name, &disk);
    if (disk.n > 1)
        qsort(disk.v, disk.n, sizeof *disk.v, cmp_names);
    o->sum->blocks_mapped = maps.n;
    o->sum->blocks_on_disk = disk.n;
    size_t i = 0, j = 0;
    while (i < maps.n || j < disk.n) {
        int c = i == maps.n ? 1 : j == disk.n ? -1 : cmp_names(&maps.v[i].name, &disk.v[j]);
        char hex[STORE_NAME_HEX_LEN + 1];
        if (c < 0) { /* mapped, no file */
            store_name_hex(&maps.v[i].name, hex);
            report(o, FSCK_BLOCK_MISSING, maps.v[i].ino, maps.v[i].index, &maps.v[i].name,
                   "inode %llu block %llu: block %s is missing",
                   (unsigned long long)maps.v[i].ino, (unsigned long long)maps.v[i].index, hex);
            i++;
            continue;
        }
        int rc = store_verify(st, &disk.v[j]);
        store_name_hex(&disk.v[j], hex);
        if (c > 0) { /* a file nothing maps */
            o->sum->blocks_unreferenced++;
            if (rc != 0)
                report(o, FSCK_BLOCK_CORRUPT, 0, 0, &disk.v[j],
                       "unreferenced block %s is corrupt (%s)", hex, strerror(-rc));
            j++;
            continue;
        }
        /* c == 0: every mapping of this name */
        for (; i < maps.n && cmp_names(&maps.v[i].name, &disk.v[j]) == 0; i++) {
            if (rc == 0)
                continue;
            report(o, rc == -ENOENT ? FSCK_BLOCK_MISSING : FSCK_BLOCK_CORRUPT, maps.v[i].ino,
                   maps.v[i].index, &disk.v[j], "inode %llu block %llu: block %s %s",
                   (unsigned long long)maps.v[i].ino, (unsigned long long)maps.v[i].index, hex,
                   rc == -ENOENT ? "is missing" : "is corrupt (fails its hash or decompression)");
        }
        j++;
    }
    free(maps.v);
    free(disk.v);
}

static void check_snapshot_files(struct offline *o, const char *snap_dir)
{
    uint64_t slots[64];
    size_t n = snapfile_list(snap_dir, slots, 64);
    for (size_t i = 0; i < n && i < 64; i++) {
        uint8_t *p;
        size_t len;
        int rc = snapfile_load(snap_dir, slots[i], &p, &len);
        if (rc == 0) {
            struct snapfile sf;
            uint32_t nn, bs;
            snapfile_decode(p, len, &sf); /* it did decode */
            rc = fsm_image_info(sf.sm, sf.sm_len, &nn, &bs);
            free(p);
        }
        if (rc != 0) {
            char path[SNAPFILE_PATH_MAX];
            snapfile_path(snap_dir, slots[i], path);
            report(o, FSCK_SNAPSHOT_BAD, 0, 0, NULL, "snapshot %s does not decode (%s)", path,
                   strerror(-rc));
        }
    }
}

int fsck_offline(const char *data_dir, fsck_report_fn fn, void *ctx, struct fsck_summary *out,
                 char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    struct stat sb;
    if (stat(data_dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        snprintf(err, errlen, "%s is not a directory", data_dir);
        return -ENOTDIR;
    }
    uint32_t node = 0, n_nodes = 0;
    int rc = read_cluster_file(data_dir, &node, &n_nodes);
    if (rc != 0) {
        snprintf(err, errlen, "%s is not a paxfs data directory (its CLUSTER file is %s)",
                 data_dir, rc == -ENOENT ? "missing" : "unreadable or from an older version");
        return rc;
    }
    out->node = node;
    out->n_nodes = n_nodes;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/store", data_dir);
    struct store_config sc;
    store_config_init(&sc, path);
    sc.node_id = node;
    struct store *st;
    rc = store_open(&sc, &st);
    if (rc != 0) {
        if (rc == -EBUSY)
            snprintf(err, errlen, "the block store %s is in use: stop the mount first (or run "
                     "fsck --config against the running cluster)", path);
        else
            store_open_error(rc, path, err, errlen);
        return rc;
    }
    struct fsm *f;
    rc = fsm_new(st, n_nodes, &f);
    if (rc != 0) {
        store_close(st);
        snprintf(err, errlen, "cannot create the filesystem state: %s", strerror(-rc));
        return rc;
    }
    struct offline o = {node, fn, ctx, out};
    struct replica_config rc_cfg;
    replica_config_defaults(&rc_cfg);
    rc_cfg.id = node;
    rc_cfg.n_nodes = n_nodes;
    snprintf(rc_cfg.wal_dir, sizeof rc_cfg.wal_dir, "%s/wal", data_dir);
    snprintf(rc_cfg.snap_dir, sizeof rc_cfg.snap_dir, "%s/snap", data_dir);
    rc_cfg.sm = (struct replica_sm){.ctx = f, .apply = apply_op, .restore = restore_image};
    rc_cfg.transport = (struct replica_transport){NULL, no_send};
    check_snapshot_files(&o, rc_cfg.snap_dir);
    rc = replica_load_offline(&rc_cfg, &out->snapshot_slot, &out->applied);
    if (rc != 0) {
        report(&o, FSCK_LOG_BAD, 0, 0, NULL,
               "cannot rebuild the state from %s/wal and %s/snap (%s): empty the data directory "
               "to rebuild this replica from its peers", data_dir, data_dir, strerror(-rc));
    } else {
        fsm_check(f, tree_finding, &o);
        fsm_inode_digests(f, inode_counter, &out->inodes);
        out->digest = fsm_digest(f);
    }
    check_blocks(&o, f, st);
    fsm_free(f);
    store_close(st);
    return 0;
}

/* ---- online: the node's side --------------------------------------------- */

struct request {
    struct request *next;
    uint64_t client;
    size_t len;
    uint8_t data[];
};

struct inode_digest {
    uint64_t ino;
    uint8_t d[FSM_INODE_DIGEST_BYTES];
};

/* What this replica recorded when it applied the newest mark. */
struct mark {
    uint64_t id, slot, digest;
    struct inode_digest *v;
    size_t n, cap;
};

#define REQUESTS_MAX 16

struct fsck_server {
    struct fsck_server_options o;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stop;
    struct request *head, **tail;
    size_t n_queued;
    pthread_t worker;
    bool worker_running;
    struct mark mark;
};

void fsck_mark_encode(uint64_t id, uint8_t out[FSCK_MARK_BYTES])
{
    le_put_u64(out, FSCK_MARK_MAGIC);
    le_put_u64(out + 8, id);
}

static int add_inode_digest(void *ctx, uint64_t ino, const uint8_t d[FSM_INODE_DIGEST_BYTES])
{
    struct mark *m = ctx;
    if (m->n == m->cap) {
        m->cap = m->cap ? 2 * m->cap : 1024;
        m->v = realloc(m->v, m->cap * sizeof *m->v);
        ASSERT(m->v != NULL);
    }
    m->v[m->n].ino = ino;
    memcpy(m->v[m->n].d, d, FSM_INODE_DIGEST_BYTES);
    m->n++;
    return 0;
}

bool fsck_server_apply(struct fsck_server *s, uint64_t slot, const uint8_t *data, size_t len)
{
    if (len != FSCK_MARK_BYTES || le_get_u64(data) != FSCK_MARK_MAGIC)
        return false;
    if (!s)
        return true;
    /* Every replica applies the mark at the same slot: the digests taken
     * here compare the same point of the history. */
    struct mark m = {.id = le_get_u64(data + 8), .slot = slot};
    if (fsm_inode_digests(s->o.fsm, add_inode_digest, &m) != 0)
        m.n = 0;
    m.digest = fsm_digest(s->o.fsm);
    pthread_mutex_lock(&s->lock);
    free(s->mark.v);
    s->mark = m;
    pthread_mutex_unlock(&s->lock);
    LOG_I("node=%u event=fsck_mark id=%llu slot=%llu digest=%016llx inodes=%zu", s->o.node,
          (unsigned long long)m.id, (unsigned long long)slot, (unsigned long long)m.digest, m.n);
    return true;
}

static void reply(struct fsck_server *s, uint64_t client, struct buf *b)
{
    int rc = s->o.reply(s->o.reply_ctx, client, b->data, b->len);
    if (rc != 0)
        LOG_D("node=%u event=fsck_reply_lost error=\"%s\"", s->o.node, strerror(-rc));
}

static void do_mark(struct fsck_server *s, uint64_t id, struct buf *out)
{
    uint8_t rec[FSCK_MARK_BYTES];
    fsck_mark_encode(id, rec);
    int64_t result;
    int rc = replica_propose(s->o.replica, rec, sizeof rec, &result);
    uint64_t slot = 0;
    pthread_mutex_lock(&s->lock);
    if (rc == 0 && s->mark.id == id)
        slot = s->mark.slot;
    pthread_mutex_unlock(&s->lock);
    buf_put_u32(out, (uint32_t)rc);
    buf_put_u64(out, slot);
}

static void do_digest(struct fsck_server *s, uint64_t id, struct buf *out)
{
    struct replica_status st;
    replica_status(s->o.replica, &st);
    pthread_mutex_lock(&s->lock);
    int rc = s->mark.id == id ? 0 : -EAGAIN;
    buf_put_u32(out, (uint32_t)rc);
    buf_put_u64(out, rc == 0 ? s->mark.slot : 0);
    buf_put_u64(out, rc == 0 ? s->mark.digest : 0);
    buf_put_u64(out, rc == 0 ? s->mark.n : 0);
    buf_put_u64(out, st.applied);
    pthread_mutex_unlock(&s->lock);
}

static void do_inodes(struct fsck_server *s, uint64_t id, uint64_t after, uint32_t max,
                      struct buf *out)
{
    pthread_mutex_lock(&s->lock);
    if (s->mark.id != id) {
        pthread_mutex_unlock(&s->lock);
        buf_put_u32(out, (uint32_t)-ESTALE);
        buf_put_u32(out, 0);
        return;
    }
    size_t lo = 0, hi = s->mark.n; /* first ino > after */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->mark.v[mid].ino <= after)
            lo = mid + 1;
        else
            hi = mid;
    }
    size_t n = MIN((size_t)MIN(max, FSCK_INODES_MAX), s->mark.n - lo);
    buf_put_u32(out, 0);
    buf_put_u32(out, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        buf_put_u64(out, s->mark.v[lo + i].ino);
        buf_put(out, s->mark.v[lo + i].d, FSM_INODE_DIGEST_BYTES);
    }
    pthread_mutex_unlock(&s->lock);
}

/* Verifies every block the state maps for a file with a name (see
 * check_blocks); with repair, a bad one is moved aside and fetched from a
 * peer, then verified again. */
static void do_blocks(struct fsck_server *s, bool repair, struct buf *out)
{
    struct mappings maps = {0};
    int rc = fsm_linked_blocks(s->o.fsm, collect_mapping, &maps);
    if (maps.n > 1)
        qsort(maps.v, maps.n, sizeof *maps.v, cmp_names);
    uint64_t checked = 0, missing = 0, corrupt = 0, repaired = 0;
    struct buf bad;
    buf_init(&bad);
    uint32_t n_bad = 0;
    size_t cap = store_file_max(store_block_size(s->o.store));
    uint8_t *file = malloc(cap);
    ASSERT(file != NULL);
    for (size_t i = 0; rc == 0 && i < maps.n; i++) {
        if (i > 0 && cmp_names(&maps.v[i].name, &maps.v[i - 1].name) == 0)
            continue;
        checked++;
        int vrc = store_verify(s->o.store, &maps.v[i].name);
        if (vrc == 0)
            continue;
        if (vrc == -ENOENT)
            missing++;
        else
            corrupt++;
        bool fixed = false;
        if (repair) {
            size_t len;
            store_get_encoded(s->o.store, &maps.v[i].name, file, cap, &len); /* quarantines */
            fixed = xfer_fetch_block(s->o.xfer, &maps.v[i].name) == 0 &&
                    store_verify(s->o.store, &maps.v[i].name) == 0;
            repaired += fixed;
        }
        if (n_bad < FSCK_BAD_BLOCKS_MAX) {
            buf_put_u64(&bad, maps.v[i].ino);
            buf_put_u64(&bad, maps.v[i].index);
            buf_put(&bad, maps.v[i].name.b, STORE_NAME_LEN);
            buf_put_u32(&bad, (uint32_t)(vrc == -ENOENT ? -ENOENT : -EBADMSG));
            buf_put_u8(&bad, fixed);
            n_bad++;
        }
    }
    /* Block files nothing maps (garbage not collected yet, or a put whose
     * op is being applied): a corrupt one is reported and, with repair,
     * moved aside; nobody needs its bytes. */
    struct names disk = {0};
    if (rc == 0)
        rc = store_list(s->o.store, collect_name, &disk);
    for (size_t i = 0; rc == 0 && i < disk.n; i++) {
        struct mapping key = {.name = disk.v[i]};
        if (maps.n && bsearch(&key, maps.v, maps.n, sizeof *maps.v, cmp_names))
            continue;
        checked++;
        int vrc = store_verify(s->o.store, &disk.v[i]);
        if (vrc != -EBADMSG)
            continue; /* fine, or collected meanwhile */
        corrupt++;
        bool fixed = false;
        if (repair) {
            size_t len;
            fixed = store_get_encoded(s->o.store, &disk.v[i], file, cap, &len) == -EBADMSG;
            repaired += fixed;
        }
        if (n_bad < FSCK_BAD_BLOCKS_MAX) {
            buf_put_u64(&bad, 0);
            buf_put_u64(&bad, 0);
            buf_put(&bad, disk.v[i].b, STORE_NAME_LEN);
            buf_put_u32(&bad, (uint32_t)-EBADMSG);
            buf_put_u8(&bad, fixed);
            n_bad++;
        }
    }
    free(disk.v);
    free(file);
    free(maps.v);
    buf_put_u32(out, (uint32_t)rc);
    buf_put_u64(out, checked);
    buf_put_u64(out, missing);
    buf_put_u64(out, corrupt);
    buf_put_u64(out, repaired);
    buf_put_u32(out, n_bad);
    buf_put(out, bad.data, bad.len);
    buf_deinit(&bad);
}

static void do_snapshot(struct fsck_server *s, struct buf *out)
{
    uint64_t slot = 0;
    int rc = replica_snapshot_now(s->o.replica, &slot);
    if (rc == -EALREADY) {
        struct replica_status st;
        replica_status(s->o.replica, &st);
        slot = st.snapshot_slot;
        rc = 0;
    }
    buf_put_u32(out, (uint32_t)rc);
    buf_put_u64(out, slot);
}

int fsck_request_decode(const uint8_t *p, size_t len, struct fsck_request *out)
{
    struct reader rd;
    reader_init(&rd, p, len);
    struct fsck_request q = {.op = get_u8(&rd)};
    uint8_t repair = 0;
    switch (q.op) {
    case FSCK_OP_MARK:
    case FSCK_OP_DIGEST:
        q.id = get_u64(&rd);
        break;
    case FSCK_OP_INODES:
        q.id = get_u64(&rd);
        q.after = get_u64(&rd);
        q.max = get_u32(&rd);
        break;
    case FSCK_OP_BLOCKS:
        repair = get_u8(&rd);
        q.repair = repair == 1;
        break;
    case FSCK_OP_SNAPSHOT:
        break;
    case FSCK_OP_REBUILD:
        q.from = get_u32(&rd);
        q.min_slot = get_u64(&rd);
        break;
    case FSCK_OP_DIVERGE:
        q.ino = get_u64(&rd);
        break;
    default:
        return -EBADMSG;
    }
    if (!reader_ok(&rd) || reader_left(&rd) != 0 || repair > 1)
        return -EBADMSG;
    *out = q;
    return 0;
}

static void handle(struct fsck_server *s, const struct request *r)
{
    struct fsck_request q;
    struct buf out;
    buf_init(&out);
    if (fsck_request_decode(r->data, r->len, &q) != 0) {
        buf_put_u32(&out, (uint32_t)-EBADMSG); /* a request we do not understand */
        reply(s, r->client, &out);
        buf_deinit(&out);
        return;
    }
    int rc;
    switch (q.op) {
    case FSCK_OP_MARK:
        do_mark(s, q.id, &out);
        break;
    case FSCK_OP_DIGEST:
        do_digest(s, q.id, &out);
        break;
    case FSCK_OP_INODES:
        do_inodes(s, q.id, q.after, q.max, &out);
        break;
    case FSCK_OP_BLOCKS:
        do_blocks(s, q.repair, &out);
        break;
    case FSCK_OP_SNAPSHOT:
        do_snapshot(s, &out);
        break;
    case FSCK_OP_REBUILD:
        rc = xfer_rebuild(s->o.xfer, q.from, q.min_slot);
        LOG_I("node=%u event=fsck_rebuild from=%u rc=%d", s->o.node, q.from, rc);
        buf_put_u32(&out, (uint32_t)rc);
        break;
    case FSCK_OP_DIVERGE:
        rc = s->o.test_hooks ? fsm_test_diverge(s->o.fsm, q.ino) : -EPERM;
        LOG_W("node=%u event=fsck_test_diverge ino=%llu rc=%d", s->o.node,
              (unsigned long long)q.ino, rc);
        buf_put_u32(&out, (uint32_t)rc);
        break;
    }
    reply(s, r->client, &out);
    buf_deinit(&out);
}

static void *worker_main(void *arg)
{
    struct fsck_server *s = arg;
    pthread_mutex_lock(&s->lock);
    while (!s->stop) {
        if (!s->head) {
            pthread_cond_wait(&s->cond, &s->lock);
            continue;
        }
        struct request *q = s->head;
        s->head = q->next;
        if (!s->head)
            s->tail = &s->head;
        s->n_queued--;
        pthread_mutex_unlock(&s->lock);
        handle(s, q);
        free(q);
        pthread_mutex_lock(&s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

void fsck_server_request(struct fsck_server *s, uint64_t client, const uint8_t *p, size_t len)
{
    struct request *q = malloc(sizeof *q + len);
    if (!q)
        return;
    q->next = NULL;
    q->client = client;
    q->len = len;
    memcpy(q->data, p, len);
    pthread_mutex_lock(&s->lock);
    if (s->n_queued >= REQUESTS_MAX || s->stop) {
        pthread_mutex_unlock(&s->lock);
        free(q);
        uint8_t busy[4];
        le_put_u32(busy, (uint32_t)-EBUSY);
        s->o.reply(s->o.reply_ctx, client, busy, sizeof busy);
        return;
    }
    *s->tail = q;
    s->tail = &q->next;
    s->n_queued++;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

int fsck_server_new(const struct fsck_server_options *o, struct fsck_server **out)
{
    struct fsck_server *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->o = *o;
    s->tail = &s->head;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    int rc = pthread_create(&s->worker, NULL, worker_main, s);
    if (rc != 0) {
        fsck_server_free(s);
        return -rc;
    }
    s->worker_running = true;
    *out = s;
    return 0;
}

void fsck_server_stop(struct fsck_server *s)
{
    pthread_mutex_lock(&s->lock);
    s->stop = true;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
    if (s->worker_running)
        pthread_join(s->worker, NULL);
    s->worker_running = false;
}

void fsck_server_free(struct fsck_server *s)
{
    if (!s)
        return;
    fsck_server_stop(s);
    while (s->head) {
        struct request *q = s->head;
        s->head = q->next;
        free(q);
    }
    free(s->mark.v);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    free(s);
}
