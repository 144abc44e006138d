/* fsck_cmd — `paxfs fsck`, offline (--data) and online (--config); the
 * checks themselves are in fs/fsck.c, this file asks and prints.
 *
 * Online, in order: every node's status (an unreachable node is a finding);
 * a MARK put in the log through the leader; each node's digest at the mark
 * (polled until it applied it); where digests differ, the per-inode digests
 * of every node, compared against the majority's to name the diverging
 * inodes; each node's block store verified (with --repair: bad blocks
 * fetched again from peers). With --repair, a diverged node is then rebuilt
 * from a fresh snapshot of a node in the majority, and the digests are
 * compared once more. */
#include "tools/fsck_cmd.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/log.h"
#include "fs/fsck.h"
#include "net/config.h"
#include "net/status.h"
#include "tools/cli.h"

#define FSCK_STATUS_TIMEOUT_MS 2000u
#define FSCK_MARK_TIMEOUT_MS 30000u
#define FSCK_APPLY_WAIT_MS 60000u
#define FSCK_BLOCKS_TIMEOUT_MS 600000u
#define FSCK_REBUILD_TIMEOUT_MS 900000u
#define FSCK_DIVERGED_LINES_MAX 100

static const char fsck_usage_text[] =
    "usage: paxfs fsck --data DATADIR [--json]\n"
    "       paxfs fsck --config DIR/cluster.conf [--json] [--repair]\n"
    "\n"
    "--data: checks one stopped replica: every snapshot file and the log decode,\n"
    "  the state rebuilt from them is a consistent tree (no cycles, no lost\n"
    "  inodes, right link counts and block accounting), every block file\n"
    "  decompresses and hashes to its name and every block the state maps exists.\n"
    "--config: checks the running cluster: every replica records a digest of its\n"
    "  state at the same log position (a mark put in the log), the digests are\n"
    "  compared and the inodes where a replica differs from the majority are\n"
    "  named; every replica verifies its block store.\n"
    "  --repair  fetches missing or corrupt blocks from healthy peers, and\n"
    "            rebuilds a diverged replica from a healthy one's snapshot.\n"
    "--json      one JSON object on stdout instead of text.\n"
    "\n"
    "Exit status: 0 clean (with --repair: everything found was repaired),\n"
    "1 findings (listed), 2 bad usage or unusable input.\n";

struct fsck_opts {
    const char *data_dir;
    const char *config;
    bool json;
    bool repair;
    const char *test_diverge; /* "K:INO": the test hook, then exit */
};

/* The findings, kept for the JSON output and the summary. */
struct findings {
    struct fsck_finding *v;
    size_t n, cap;
    bool json;
};

static void add_finding(void *ctx, const struct fsck_finding *f)
{
    struct findings *l = ctx;
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
        if (!l->v) {
            fputs("paxfs fsck: out of memory\n", stderr);
            exit(EXIT_USAGE);
        }
    }
    l->v[l->n++] = *f;
    if (!l->json)
        printf("%s node %u: %s\n", fsck_kind_name(f->kind), f->node, f->what);
}

static void print_findings_json(const struct findings *l)
{
    printf("\"findings\":[");
    for (size_t i = 0; i < l->n; i++) {
        const struct fsck_finding *f = &l->v[i];
        printf("%s{\"kind\":\"%s\",\"node\":%u,\"ino\":%" PRIu64 ",\"index\":%" PRIu64
               ",\"block\":", i ? "," : "", fsck_kind_name(f->kind), f->node, f->ino, f->index);
        if (f->has_block) {
            char hex[STORE_NAME_HEX_LEN + 1];
            store_name_hex(&f->block, hex);
            printf("\"%s\"", hex);
        } else {
            printf("null");
        }
        printf(",\"what\":");
        cli_json_string(stdout, f->what);
        putchar('}');
    }
    putchar(']');
}

/* ---- progress on a terminal ----------------------------------------------- */

static bool progress_on;

static void progress(unsigned step, unsigned steps, const char *what)
{
    if (!progress_on)
        return;
    char bar[21];
    unsigned filled = steps ? 20 * step / steps : 0;
    for (unsigned i = 0; i < 20; i++)
        bar[i] = i < filled ? '#' : '.';
    bar[20] = 0;
    fprintf(stderr, "\r\033[K[%s] %u/%u %s", bar, step, steps, what);
    if (step == steps)
        fputc('\n', stderr);
    fflush(stderr);
}

/* ---- offline -------------------------------------------------------------- */

static int fsck_offline_cmd(const struct fsck_opts *o)
{
    struct findings l = {.json = o->json};
    struct fsck_summary s;
    char err[512];
    progress_on = !o->json && isatty(STDERR_FILENO);
    progress(0, 1, "checking the replica");
    int rc = fsck_offline(o->data_dir, add_finding, &l, &s, err, sizeof err);
    if (rc != 0) {
        if (progress_on)
            fputc('\n', stderr);
        free(l.v);
        return cli_usage_error("fsck", "%s", err);
    }
    progress(1, 1, "checked");
    if (o->json) {
        printf("{\"mode\":\"offline\",\"data\":");
        cli_json_string(stdout, o->data_dir);
        printf(",\"node\":%u,\"nodes\":%u,\"snapshot_slot\":%" PRIu64 ",\"applied\":%" PRIu64
               ",\"inodes\":%" PRIu64 ",\"blocks_mapped\":%" PRIu64 ",\"blocks_on_disk\":%" PRIu64
               ",\"blocks_unreferenced\":%" PRIu64 ",\"digest\":\"%016" PRIx64 "\",\"clean\":%s,",
               s.node, s.n_nodes, s.snapshot_slot, s.applied, s.inodes, s.blocks_mapped,
               s.blocks_on_disk, s.blocks_unreferenced, s.digest, l.n ? "false" : "true");
        print_findings_json(&l);
        printf("}\n");
    } else {
        printf("node %u (%s): state at slot %" PRIu64 " (snapshot %" PRIu64 " + log), %" PRIu64
               " inodes, digest %016" PRIx64 "; %" PRIu64 " block mappings, %" PRIu64
               " block files (%" PRIu64 " unreferenced)\n",
               s.node, o->data_dir, s.applied, s.snapshot_slot, s.inodes, s.digest,
               s.blocks_mapped, s.blocks_on_disk, s.blocks_unreferenced);
        if (l.n)
            printf("%zu finding%s\n", l.n, l.n == 1 ? "" : "s");
        else
            printf("clean\n");
    }
    size_t n = l.n;
    free(l.v);
    return n ? EXIT_FINDING : 0;
}

/* ---- online ---------------------------------------------------------------- */

struct node_view {
    bool reachable;
    struct net_status_reply st;
    bool has_digest;
    uint64_t slot, digest, inodes;
    struct inode_digest_list {
        uint64_t *ino;
        uint8_t (*d)[FSM_INODE_DIGEST_BYTES];
        size_t n;
    } list;
    bool diverged;
    uint64_t checked, missing, corrupt, repaired;
};

struct online {
    const struct fsck_opts *o;
    struct cluster_config cc;
    struct net_status_client *client;
    struct node_view nodes[CONFIG_NODES_MAX + 1];
    struct findings l;
    uint64_t mark_id, mark_slot;
    unsigned step, steps;
};

static int request(struct online *on, uint32_t node, uint32_t timeout_ms, const struct buf *req,
                   struct buf *reply, int32_t *status)
{
    buf_reset(reply);
    char err[256];
    int rc = net_status_client_request_err(on->client, node, timeout_ms, req->data, req->len,
                                           reply, err, sizeof err);
    if (rc != 0) {
        if (!on->o->json)
            fprintf(stderr, "paxfs fsck: node %u: %s\n", node, err);
        return rc;
    }
    if (reply->len < 4)
        return -EBADMSG;
    *status = (int32_t)le_get_u32(reply->data);
    return 0;
}

static void finding(struct online *on, enum fsck_kind kind, uint32_t node, uint64_t ino,
                    const struct store_name *block, uint64_t index, const char *what)
{
    struct fsck_finding f = {.kind = kind, .node = node, .ino = ino, .index = index};
    if (block) {
        f.has_block = true;
        f.block = *block;
    }
    size_t n = strnlen(what, sizeof f.what - 1); /* one line, cut if longer */
    memcpy(f.what, what, n);
    f.what[n] = 0;
    add_finding(&on->l, &f);
}

static uint32_t majority(const struct online *on)
{
    return on->cc.n_nodes / 2 + 1;
}

/* Statuses; the leader (or the first reachable node) gets the mark. */
static uint32_t ask_statuses(struct online *on)
{
    static struct cli_status st[CONFIG_NODES_MAX + 1];
    memset(st, 0, sizeof st);
    cli_status_all(on->client, on->cc.n_nodes, FSCK_STATUS_TIMEOUT_MS, st);
    uint32_t any = 0;
    for (uint32_t k = 1; k <= on->cc.n_nodes; k++) {
        struct node_view *v = &on->nodes[k];
        v->reachable = st[k].rc == 0 && !st[k].reply.failed;
        if (!v->reachable) {
            char what[300];
            snprintf(what, sizeof what, "node %u did not answer (%s)", k,
                     st[k].rc == 0 ? "its replica stopped on an error" : st[k].err);
            finding(on, FSCK_UNREACHABLE, k, 0, NULL, 0, what);
            continue;
        }
        v->st = st[k].reply;
        if (!any)
            any = k;
    }
    uint32_t leader = cli_status_leader(on->cc.n_nodes, st);
    return leader ? leader : any;
}

static int put_mark(struct online *on, uint32_t via)
{
    if (getrandom(&on->mark_id, sizeof on->mark_id, 0) != sizeof on->mark_id)
        on->mark_id = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    struct buf req, rep;
    buf_init(&req);
    buf_init(&rep);
    buf_put_u8(&req, FSCK_OP_MARK);
    buf_put_u64(&req, on->mark_id);
    int32_t status = 0;
    int rc = request(on, via, FSCK_MARK_TIMEOUT_MS, &req, &rep, &status);
    if (rc == 0 && status == 0 && rep.len == 12)
        on->mark_slot = le_get_u64(rep.data + 4);
    else if (rc == 0)
        rc = status ? status : -EBADMSG;
    buf_deinit(&req);
    buf_deinit(&rep);
    return rc;
}

/* Polls each reachable node until it applied the mark. */
static void get_digests(struct online *on)
{
    struct buf req, rep;
    buf_init(&req);
    buf_init(&rep);
    buf_put_u8(&req, FSCK_OP_DIGEST);
    buf_put_u64(&req, on->mark_id);
    for (uint32_t k = 1; k <= on->cc.n_nodes; k++) {
        struct node_view *v = &on->nodes[k];
        v->has_digest = false;
        if (!v->reachable)
            continue;
        struct timespec t0, now;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (;;) {
            int32_t status = 0;
            int rc = request(on, k, FSCK_STATUS_TIMEOUT_MS * 5, &req, &rep, &status);
            if (rc == 0 && status == 0 && rep.len == 36) {
                v->slot = le_get_u64(rep.data + 4);
                v->digest = le_get_u64(rep.data + 12);
                v->inodes = le_get_u64(rep.data + 20);
                v->has_digest = true;
                break;
            }
            clock_gettime(CLOCK_MONOTONIC, &now);
            long ms = (now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000;
            if ((rc == 0 && status != -EAGAIN) || ms > (long)FSCK_APPLY_WAIT_MS)
                break;
            usleep(100000);
        }
        if (!v->has_digest) {
            char what[200];
            snprintf(what, sizeof what, "node %u did not report its state at the mark (slot "
                     "%" PRIu64 ") within %u s", k, on->mark_slot, FSCK_APPLY_WAIT_MS / 1000);
            finding(on, FSCK_UNREACHABLE, k, 0, NULL, 0, what);
        }
    }
    buf_deinit(&req);
    buf_deinit(&rep);
}

static void free_list(struct node_view *v)
{
    free(v->list.ino);
    free(v->list.d);
    memset(&v->list, 0, sizeof v->list);
}

static int get_inode_list(struct online *on, uint32_t k)
{
    struct node_view *v = &on->nodes[k];
    free_list(v);
    struct buf req, rep;
    buf_init(&req);
    buf_init(&rep);
    uint64_t after = 0;
    int rc = 0;
    size_t cap = 0;
    for (;;) {
        buf_reset(&req);
        buf_put_u8(&req, FSCK_OP_INODES);
        buf_put_u64(&req, on->mark_id);
        buf_put_u64(&req, after);
        buf_put_u32(&req, FSCK_INODES_MAX);
        int32_t status = 0;
        rc = request(on, k, FSCK_MARK_TIMEOUT_MS, &req, &rep, &status);
        if (rc == 0 && status != 0)
            rc = status;
        if (rc != 0)
            break;
        if (rep.len < 8) {
            rc = -EBADMSG;
            break;
        }
        uint32_t n = le_get_u32(rep.data + 4);
        if (rep.len != 8 + (size_t)n * (8 + FSM_INODE_DIGEST_BYTES) || n > FSCK_INODES_MAX) {
            rc = -EBADMSG;
            break;
        }
        for (uint32_t i = 0; i < n; i++) {
            const uint8_t *e = rep.data + 8 + (size_t)i * (8 + FSM_INODE_DIGEST_BYTES);
            if (v->list.n == cap) {
                cap = cap ? 2 * cap : 4096;
                v->list.ino = realloc(v->list.ino, cap * sizeof *v->list.ino);
                v->list.d = realloc(v->list.d, cap * sizeof *v->list.d);
                if (!v->list.ino || !v->list.d) {
                    fputs("paxfs fsck: out of memory\n", stderr);
                    exit(EXIT_USAGE);
                }
            }
            v->list.ino[v->list.n] = le_get_u64(e);
            memcpy(v->list.d[v->list.n], e + 8, FSM_INODE_DIGEST_BYTES);
            v->list.n++;
            after = le_get_u64(e);
        }
        if (n < FSCK_INODES_MAX)
            break;
    }
    buf_deinit(&req);
    buf_deinit(&rep);
    return rc;
}

/* The digest most nodes have, or 0 and false if no majority agrees. */
static bool majority_digest(const struct online *on, uint64_t *out)
{
    for (uint32_t a = 1; a <= on->cc.n_nodes; a++) {
        if (!on->nodes[a].has_digest)
            continue;
        uint32_t votes = 0;
        for (uint32_t b = 1; b <= on->cc.n_nodes; b++)
            votes += on->nodes[b].has_digest && on->nodes[b].digest == on->nodes[a].digest;
        if (votes >= majority(on)) {
            *out = on->nodes[a].digest;
            return true;
        }
    }
    return false;
}

/* Names the inodes where each diverged node differs from a node holding
 * the majority digest. */
static void name_diverged_inodes(struct online *on, uint32_t good)
{
    if (get_inode_list(on, good) != 0)
        return;
    const struct node_view *g = &on->nodes[good];
    for (uint32_t k = 1; k <= on->cc.n_nodes; k++) {
        struct node_view *v = &on->nodes[k];
        if (!v->diverged || get_inode_list(on, k) != 0)
            continue;
        size_t i = 0, j = 0, lines = 0;
        while ((i < g->list.n || j < v->list.n) && lines < FSCK_DIVERGED_LINES_MAX) {
            char what[200];
            if (j == v->list.n || (i < g->list.n && g->list.ino[i] < v->list.ino[j])) {
                snprintf(what, sizeof what, "inode %" PRIu64 " is missing on node %u", g->list.ino[i], k);
                finding(on, FSCK_DIVERGED, k, g->list.ino[i], NULL, 0, what);
                i++, lines++;
            } else if (i == g->list.n || v->list.ino[j] < g->list.ino[i]) {
                snprintf(what, sizeof what, "inode %" PRIu64 " exists only on node %u", v->list.ino[j], k);
                finding(on, FSCK_DIVERGED, k, v->list.ino[j], NULL, 0, what);
                j++, lines++;
            } else {
                if (memcmp(g->list.d[i], v->list.d[j], FSM_INODE_DIGEST_BYTES) != 0) {
                    snprintf(what, sizeof what, "inode %" PRIu64 " differs on node %u from the "
                             "majority (node %u)", g->list.ino[i], k, good);
                    finding(on, FSCK_DIVERGED, k, g->list.ino[i], NULL, 0, what);
                    lines++;
                }
                i++, j++;
            }
        }
        if (lines == 0) {
            char what[200];
            snprintf(what, sizeof what, "node %u's state digest differs from the majority's "
                     "(its inode list, orphans or inode counter differ)", k);
            finding(on, FSCK_DIVERGED, k, 0, NULL, 0, what);
        }
    }
}

/* Compares the digests at the mark; marks diverged nodes. Returns a node
 * with the majority digest, or 0. */
static uint32_t compare(struct online *on, bool report)
{
    uint64_t want;
    if (!majority_digest(on, &want))
        return 0;
    uint32_t good = 0, bad = 0;
    for (uint32_t k = 1; k <= on->cc.n_nodes; k++) {
        struct node_view *v = &on->nodes[k];
        v->diverged = v->has_digest && v->digest != want;
        bad += v->diverged;
        if (v->has_digest && !v->diverged && !good)
            good = k;
    }
    if (bad && report)
        name_diverged_inodes(on, good);
    return good;
}

static void check_blocks(struct online *on, uint32_t k)
{
    struct node_view *v = &on->nodes[k];
    struct buf req, rep;
    buf_init(&req);
    buf_init(&rep);
    buf_put_u8(&req, FSCK_OP_BLOCKS);
    buf_put_u8(&req, on->o->repair);
    int32_t status = 0;
    int rc = request(on, k, FSCK_BLOCKS_TIMEOUT_MS, &req, &rep, &status);
    const size_t hdr = 4 + 4 * 8 + 4, entry = 8 + 8 + STORE_NAME_LEN + 4 + 1;
    if (rc == 0 && status == 0 && rep.len >= hdr) {
        v->checked = le_get_u64(rep.data + 4);
        v->missing = le_get_u64(rep.data + 12);
        v->corrupt = le_get_u64(rep.data + 20);
        v->repaired = le_get_u64(rep.data + 28);
        uint32_t n = le_get_u32(rep.data + 36);
        if (rep.len == hdr + (size_t)n * entry) {
            for (uint32_t i = 0; i < n; i++) {
                const uint8_t *e = rep.data + hdr + (size_t)i * entry;
                struct store_name name;
                memcpy(name.b, e + 16, STORE_NAME_LEN);
                int32_t state = (int32_t)le_get_u32(e + 16 + STORE_NAME_LEN);
                bool fixed = e[entry - 1] != 0;
                char hex[STORE_NAME_HEX_LEN + 1], what[256];
                store_name_hex(&name, hex);
                if (le_get_u64(e) == 0)
                    snprintf(what, sizeof what, "unreferenced block %s is corrupt%s", hex,
                             fixed ? " (moved aside)" : "");
                else
                    snprintf(what, sizeof what, "inode %" PRIu64 " block %" PRIu64 ": block %s %s%s",
                             le_get_u64(e), le_get_u64(e + 8), hex,
                             state == -ENOENT ? "is missing" : "is corrupt",
                             fixed ? " (repaired from a peer)" : "");
                finding(on, state == -ENOENT ? FSCK_BLOCK_MISSING : FSCK_BLOCK_CORRUPT, k,
                        le_get_u64(e), &name, le_get_u64(e + 8), what);
            }
        }
    } else if (rc == 0 || v->reachable) {
        char what[200];
        snprintf(what, sizeof what, "node %u could not check its blocks (%s)", k,
                 strerror(rc ? -rc : -status));
        finding(on, FSCK_UNREACHABLE, k, 0, NULL, 0, what);
    }
    buf_deinit(&req);
    buf_deinit(&rep);
}

/* Rebuilds diverged node k from node good's fresh snapshot. */
static int rebuild(struct online *on, uint32_t k, uint32_t good)
{
    struct buf req, rep;
    buf_init(&req);
    buf_init(&rep);
    buf_put_u8(&req, FSCK_OP_SNAPSHOT);
    int32_t status = 0;
    int rc = request(on, good, FSCK_BLOCKS_TIMEOUT_MS, &req, &rep, &status);
    uint64_t slot = rc == 0 && status == 0 && rep.len == 12 ? le_get_u64(rep.data + 4) : 0;
    if (rc == 0 && status)
        rc = status;
    if (rc == 0) {
        buf_reset(&req);
        buf_put_u8(&req, FSCK_OP_REBUILD);
        buf_put_u32(&req, good);
        buf_put_u64(&req, slot);
        rc = request(on, k, FSCK_REBUILD_TIMEOUT_MS, &req, &rep, &status);
        if (rc == 0)
            rc = status;
    }
    buf_deinit(&req);
    buf_deinit(&rep);
    if (!on->o->json)
        printf("rebuild node %u from node %u's snapshot at slot %" PRIu64 ": %s\n", k, good,
               slot, rc == 0 ? "done" : strerror(-rc));
    return rc;
}

static void print_online_json(const struct online *on, bool repaired_all)
{
    printf("{\"mode\":\"online\",\"mark_slot\":%" PRIu64 ",\"nodes\":[", on->mark_slot);
    for (uint32_t k = 1; k <= on->cc.n_nodes; k++) {
        const struct node_view *v = &on->nodes[k];
        printf("%s{\"node\":%u,\"reachable\":%s,\"digest\":", k > 1 ? "," : "", k,
               v->reachable ? "true" : "false");
        if (v->has_digest)
            printf("\"%016" PRIx64 "\",\"slot\":%" PRIu64 ",\"inodes\":%" PRIu64, v->digest,
                   v->slot, v->inodes);
        else
            printf("null");
        printf(",\"diverged\":%s,\"blocks_checked\":%" PRIu64 ",\"blocks_missing\":%" PRIu64
               ",\"blocks_corrupt\":%" PRIu64 ",\"blocks_repaired\":%" PRIu64 "}",
               v->diverged ? "true" : "false", v->checked, v->missing, v->corrupt, v->repaired);
    }
    printf("],\"clean\":%s,\"repaired\":%s,", on->l.n ? "false" : "true",
           repaired_all ? "true" : "false");
    print_findings_json(&on->l);
    printf("}\n");
}

/* Test only: makes node K's inode INO diverge (the daemon must run with
 * PAXFS_TEST_HOOKS=1), so that the tests can check that fsck names it. */
static int test_diverge(struct online *on)
{
    unsigned k;
    unsigned long long ino;
    if (sscanf(on->o->test_diverge, "%u:%llu", &k, &ino) != 2 || k < 1 || k > on->cc.n_nodes)
        return cli_usage_error("fsck", "--test-diverge needs NODE:INODE");
    struct buf req, rep;
    buf_init(&req);
    buf_init(&rep);
    buf_put_u8(&req, FSCK_OP_DIVERGE);
    buf_put_u64(&req, ino);
    int32_t status = 0;
    int rc = request(on, k, FSCK_MARK_TIMEOUT_MS, &req, &rep, &status);
    buf_deinit(&req);
    buf_deinit(&rep);
    if (rc == 0)
        rc = status;
    if (rc != 0)
        fprintf(stderr, "paxfs fsck: node %u refused the test hook: %s\n", k, strerror(-rc));
    return rc ? EXIT_FINDING : 0;
}

static int fsck_online_cmd(const struct fsck_opts *o)
{
    struct online *on = calloc(1, sizeof *on);
    if (!on)
        return cli_usage_error("fsck", "out of memory");
    on->o = o;
    on->l.json = o->json;
    char err[512];
    int rc = config_load(o->config, &on->cc, err, sizeof err);
    if (rc != 0) {
        free(on);
        return cli_usage_error("fsck", "%s", err);
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", o->config);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    else
        snprintf(dir, sizeof dir, ".");
    rc = net_status_client_new(&on->cc, dir, &on->client, err, sizeof err);
    if (rc != 0) {
        free(on);
        return cli_usage_error("fsck", "%s", err);
    }
    if (o->test_diverge) {
        int code = test_diverge(on);
        net_status_client_free(on->client);
        free(on);
        return code;
    }
    progress_on = !o->json && isatty(STDERR_FILENO);
    unsigned n = on->cc.n_nodes, steps = 3 + n + (o->repair ? 2 : 0), step = 0;
    progress(step++, steps, "asking every node for its status");
    uint32_t via = ask_statuses(on);
    uint32_t reachable = 0;
    for (uint32_t k = 1; k <= n; k++)
        reachable += on->nodes[k].reachable;
    int exit_code = 0;
    bool repaired_all = false;
    if (reachable < majority(on) || !via) {
        if (progress_on)
            fputc('\n', stderr);
        fprintf(stderr, "paxfs fsck: only %u of %u nodes answer: no quorum to compare at one "
                "log position; start the others or check the network\n", reachable, n);
        exit_code = EXIT_FINDING;
        goto out;
    }
    progress(step++, steps, "putting a mark in the log");
    rc = put_mark(on, via);
    if (rc != 0) {
        if (progress_on)
            fputc('\n', stderr);
        fprintf(stderr, "paxfs fsck: node %u could not put the mark in the log (%s): is there "
                "a quorum?\n", via, strerror(-rc));
        exit_code = EXIT_FINDING;
        goto out;
    }
    progress(step++, steps, "comparing the replicas' digests at the mark");
    get_digests(on);
    uint32_t good = compare(on, true);
    for (uint32_t k = 1; k <= n; k++) {
        char what[64];
        snprintf(what, sizeof what, "verifying node %u's blocks", k);
        progress(step++, steps, what);
        if (on->nodes[k].reachable)
            check_blocks(on, k);
    }
    size_t before_repair = on->l.n;
    if (o->repair) {
        progress(step++, steps, "rebuilding diverged replicas");
        bool rebuilt_ok = true, any = false;
        for (uint32_t k = 1; k <= n; k++) {
            if (on->nodes[k].diverged && good) {
                any = true;
                rebuilt_ok &= rebuild(on, k, good) == 0;
            }
        }
        progress(step++, steps, "verifying again");
        bool still_bad = false;
        if (any) {
            if (put_mark(on, via) == 0) {
                get_digests(on);
                compare(on, false);
                for (uint32_t k = 1; k <= n; k++)
                    still_bad |= on->nodes[k].diverged || !on->nodes[k].has_digest;
            } else {
                still_bad = true;
            }
        }
        /* Findings that repair cannot fix: unreachable nodes, blocks no
         * peer had, a rebuild that failed. */
        bool unfixable = !rebuilt_ok || still_bad || !good;
        for (size_t i = 0; i < before_repair; i++) {
            const struct fsck_finding *f = &on->l.v[i];
            if (f->kind == FSCK_UNREACHABLE || f->kind == FSCK_TREE)
                unfixable = true;
        }
        for (uint32_t k = 1; k <= n; k++)
            if (on->nodes[k].missing + on->nodes[k].corrupt > on->nodes[k].repaired)
                unfixable = true;
        repaired_all = !unfixable;
        exit_code = on->l.n == 0 || repaired_all ? 0 : EXIT_FINDING;
    } else {
        exit_code = on->l.n ? EXIT_FINDING : 0;
    }
    progress(steps, steps, "done");
out:
    if (o->json) {
        print_online_json(on, repaired_all);
    } else {
        for (uint32_t k = 1; k <= n; k++) {
            const struct node_view *v = &on->nodes[k];
            if (!v->reachable) {
                printf("node %u: unreachable\n", k);
                continue;
            }
            printf("node %u: digest %016" PRIx64 " at slot %" PRIu64 ", %" PRIu64
                   " inodes%s; %" PRIu64 " blocks checked, %" PRIu64 " missing, %" PRIu64
                   " corrupt, %" PRIu64 " repaired\n", k, v->digest, v->slot, v->inodes,
                   v->diverged ? " (DIVERGED)" : "", v->checked, v->missing, v->corrupt,
                   v->repaired);
        }
        if (on->l.n == 0)
            printf("clean: all %u replicas agree at slot %" PRIu64 "\n", n, on->mark_slot);
        else if (repaired_all)
            printf("%zu finding%s, all repaired\n", on->l.n, on->l.n == 1 ? "" : "s");
        else
            printf("%zu finding%s\n", on->l.n, on->l.n == 1 ? "" : "s");
    }
    for (uint32_t k = 1; k <= n; k++)
        free_list(&on->nodes[k]);
    free(on->l.v);
    net_status_client_free(on->client);
    free(on);
    return exit_code;
}

int fsck_main(int argc, char **argv)
{
    struct fsck_opts o = {0};
    log_set_level(LOG_ERROR); /* findings are the output, not log lines */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int m;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(fsck_usage_text, stdout);
            return 0;
        }
        if (strcmp(a, "--json") == 0) {
            o.json = true;
        } else if (strcmp(a, "--repair") == 0) {
            o.repair = true;
        } else if ((m = cli_option_value(argc, argv, &i, "--data", &v)) != 0) {
            if (m < 0)
                return cli_usage_error("fsck", "--data needs a directory");
            o.data_dir = v;
        } else if ((m = cli_option_value(argc, argv, &i, "--test-diverge", &v)) != 0) {
            if (m < 0)
                return cli_usage_error("fsck", "--test-diverge needs NODE:INODE");
            o.test_diverge = v;
        } else if ((m = cli_option_value(argc, argv, &i, "--config", &v)) != 0) {
            if (m < 0)
                return cli_usage_error("fsck", "--config needs a path to cluster.conf");
            o.config = v;
        } else {
            return cli_usage_error("fsck", "unknown argument '%s' (see paxfs fsck --help)", a);
        }
    }
    if (!o.data_dir == !o.config)
        return cli_usage_error("fsck", "give either --data DATADIR (one stopped replica) or "
                               "--config DIR/cluster.conf (the running cluster)");
    if (o.data_dir && o.repair)
        return cli_usage_error("fsck", "--repair works on the running cluster (--config): a "
                               "stopped replica repairs itself from its peers when it starts");
    return o.data_dir ? fsck_offline_cmd(&o) : fsck_online_cmd(&o);
}
