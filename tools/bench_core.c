/* paxfs-bench-core — what the consensus core alone costs.
 *
 * Three cores in one thread over a lossless, instant in-memory network;
 * clients on every node keep proposing (followers forward to the leader)
 * and the bench counts proposals applied on all three nodes per second of
 * wall time. Nothing here is I/O: this is the ceiling the core puts on a
 * cluster, not a cluster's speed.
 *
 *   paxfs-bench-core [--proposals N] [--size BYTES] [--runs R]
 * prints key=value lines and the median of R runs. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/assert.h"
#include "base/log.h"
#include "consensus/px.h"

#define NODES 3

struct bench {
    struct px_node *px[NODES + 1];
    struct px_msg *q;
    size_t nq, capq;
    uint64_t applied_props[NODES + 1];
};

static void drain(struct bench *b, int id)
{
    struct px_node *n = b->px[id];
    while (px_has_ready(n)) {
        struct px_ready rd;
        px_ready(n, &rd);
        for (size_t i = 0; i < rd.n_msgs; i++) {
            if (b->nq == b->capq) {
                b->capq = b->capq ? b->capq * 2 : 1024;
                b->q = realloc(b->q, sizeof *b->q * b->capq);
                ASSERT(b->q != NULL);
            }
            px_msg_copy(&b->q[b->nq++], &rd.msgs[i]);
        }
        for (size_t i = 0; i < rd.n_apply; i++)
            b->applied_props[id] += px_batch_count(rd.apply[i].value);
        px_advance(n, &rd);
    }
}

static void deliver_all(struct bench *b)
{
    while (b->nq) {
        size_t n = b->nq;
        struct px_msg *batch = malloc(sizeof *batch * n);
        ASSERT(batch != NULL);
        memcpy(batch, b->q, sizeof *batch * n);
        b->nq = 0;
        for (size_t i = 0; i < n; i++) {
            px_step(b->px[batch[i].to], &batch[i]);
            px_msg_clear(&batch[i]);
        }
        for (int id = 1; id <= NODES; id++)
            drain(b, id);
        free(batch);
    }
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double run_once(uint64_t proposals, size_t size)
{
    struct bench b;
    memset(&b, 0, sizeof b);
    for (int id = 1; id <= NODES; id++) {
        struct px_config cfg;
        px_config_defaults(&cfg, (uint32_t)id, NODES);
        cfg.seed = (uint64_t)id;
        cfg.window = 64;
        cfg.batch_count_max = 4096;
        b.px[id] = px_new(&cfg);
    }
    /* Elect: tick until node 1 or another leads. */
    for (int t = 0; t < 100; t++) {
        for (int id = 1; id <= NODES; id++) {
            px_tick(b.px[id]);
            drain(&b, id);
        }
        deliver_all(&b);
    }
    uint8_t *data = calloc(1, size ? size : 1);
    ASSERT(data != NULL);
    uint64_t proposed = 0;
    double t0 = now_s();
    uint64_t ticks = 0;
    while (b.applied_props[1] < proposals || b.applied_props[2] < proposals ||
           b.applied_props[3] < proposals) {
        /* Each round, every node's clients propose up to 512 more. */
        for (int id = 1; id <= NODES && proposed < proposals; id++) {
            for (int k = 0; k < 512 && proposed < proposals; k++) {
                uint64_t seq;
                if (px_propose(b.px[id], data, size, &seq) != 0)
                    break;
                proposed++;
            }
            drain(&b, id);
        }
        deliver_all(&b);
        if (++ticks % 64 == 0)
            for (int id = 1; id <= NODES; id++) {
                px_tick(b.px[id]);
                drain(&b, id);
            }
    }
    double dt = now_s() - t0;
    for (int id = 1; id <= NODES; id++)
        px_free(b.px[id]);
    free(b.q);
    free(data);
    return (double)proposals / dt;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    uint64_t proposals = 2000000;
    size_t size = 16;
    int runs = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--proposals") == 0)
            proposals = strtoull(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--size") == 0)
            size = strtoull(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--runs") == 0)
            runs = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: paxfs-bench-core [--proposals N] [--size BYTES] [--runs R]\n");
            return 2;
        }
    }
    if (runs < 1 || runs > 99 || proposals == 0) {
        fprintf(stderr, "paxfs-bench-core: --runs must be 1..99 and --proposals > 0\n");
        return 2;
    }
    log_set_level(LOG_WARN);
    double r[99];
    for (int i = 0; i < runs; i++) {
        r[i] = run_once(proposals, size);
        printf("run=%d core_proposals_per_s=%.0f\n", i + 1, r[i]);
    }
    qsort(r, (size_t)runs, sizeof r[0], cmp_double);
    printf("core_nodes=3 proposal_bytes=%zu proposals=%" PRIu64 " runs=%d median_core_proposals_per_s=%.0f\n",
           size, proposals, runs, r[runs / 2]);
    return 0;
}
