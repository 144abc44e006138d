/* The shared fixture of the fsm and store tests and fuzz targets: see
 * fsm_fixture.h. */
#include "fsm_fixture.h"

#include "base/buf.h"
#include "base/log.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* nftw's limit on open directory descriptors: the scratch trees are a few
 * levels deep (dir/store/blocks/xx). */
#define RM_FDS_MAX 16

static void quiet_sink(void *ctx, enum log_level level, const char *line)
{
    (void)ctx, (void)level, (void)line;
}

void fixture_quiet_log(void)
{
    log_set_sink(quiet_sink, NULL);
}

int fixture_make_dir(struct fixture *fx, const char *dir_name, bool prefer_shm)
{
    const char *base = prefer_shm && access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    int n = snprintf(fx->dir, sizeof fx->dir, "%s/%s-XXXXXX", base, dir_name);
    if (n < 0 || (size_t)n >= sizeof fx->dir)
        return -ENAMETOOLONG;
    if (!mkdtemp(fx->dir))
        return -errno;
    /* Cannot truncate: root holds dir and 6 more bytes. */
    snprintf(fx->root, sizeof fx->root, "%s/store", fx->dir);
    return 0;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

void fixture_remove_dir(const struct fixture *fx)
{
    /* Depth first, so that each directory is empty when it is removed;
     * without following links, so that nothing outside dir is touched. */
    nftw(fx->dir, rm_entry, RM_FDS_MAX, FTW_DEPTH | FTW_PHYS);
}

int fixture_open(struct fixture *fx, const struct fixture_config *cfg, struct store **st,
                 struct fsm **fs)
{
    int rc = fixture_make_dir(fx, cfg->dir_name, cfg->prefer_shm);
    if (rc != 0)
        return rc;
    struct store_config store_cfg;
    store_config_init(&store_cfg, fx->root);
    store_cfg.block_size = cfg->block_size;
    store_cfg.cache_bytes = cfg->cache_bytes;
    store_cfg.defer_sync = cfg->defer_sync;
    struct store *s = NULL;
    struct fsm *f = NULL;
    rc = store_open(&store_cfg, &s);
    if (rc == 0 && fs)
        rc = fsm_new(s, cfg->nodes, &f);
    if (rc != 0) {
        fixture_close(fx, s, NULL);
        return rc;
    }
    *st = s;
    if (fs)
        *fs = f;
    return 0;
}

void fixture_close(const struct fixture *fx, struct store *st, struct fsm *fs)
{
    /* The fsm holds references in the store: it goes first. */
    fsm_free(fs);
    store_close(st);
    fixture_remove_dir(fx);
}

void fixture_stamp(struct fsm_op *op, uint32_t uid, uint32_t gid, int64_t now_ns)
{
    if (op->type != FSM_OP_RELEASE && op->node == 0)
        op->node = 1;
    op->uid = uid;
    op->gid = gid;
    op->now_ns = now_ns;
}

int fixture_apply(struct fsm *f, const struct fsm_op *op, struct fsm_changes *changes,
                  int64_t *result)
{
    struct buf b;
    buf_init(&b);
    int rc = fsm_op_encode(op, &b);
    if (rc == 0)
        *result = fsm_apply(f, b.data, b.len, changes);
    buf_deinit(&b);
    return rc;
}
