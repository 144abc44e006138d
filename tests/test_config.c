/* Tests of cluster.conf (net/config.h) and of `paxfs init` (tools/paxfs.c).
 *
 * The parser is checked on good files and on one bad file per rule, each
 * rejection being one line that names the line and the problem. `paxfs init`
 * is run as the built binary (found through PAXFS_BIN) in mkdtemp
 * directories: the files, their modes, that every certificate verifies
 * against the CA and names its node and the cluster, that an existing
 * cluster is never overwritten, that bad arguments exit 2 with one line, and
 * that two transports built from init's output authenticate each other. */
#include "net/config.h"
#include "net/net.h"
#include "net/pki.h"

#include "base/buf.h"
#include "base/clock.h"
#include "base/log.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/x509_vfy.h>

extern char **environ;

/* ------------------------------------------------------------ helpers */

static const char good_text[] =
    "# a cluster\n"
    "cluster_id = 00112233445566778899aabbccddeeff\n"
    "block_size = 262144   # trailing comment\n"
    "\n"
    "node.2 = host-b.example:7401\n"
    "node.1 = 10.0.0.1:7400\n"
    "node.3 = [::1]:7402\n"
    "tick_ms = 5\n";

static int parse(const char *text, struct cluster_config *c, char *err, size_t errlen)
{
    return config_parse(text, strlen(text), c, err, errlen);
}

static char tmp_root[64];

static void make_root(void)
{
    snprintf(tmp_root, sizeof tmp_root, "/tmp/paxfs-test-config.XXXXXX");
    cr_assert_not_null(mkdtemp(tmp_root));
}

static void remove_tree(const char *dir)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

/* Runs the paxfs binary with args; returns its exit code, stderr in err. */
static int run_paxfs(const char *const *args, char *err, size_t errlen)
{
    const char *bin = getenv("PAXFS_BIN");
    cr_assert_not_null(bin, "PAXFS_BIN must name the built paxfs binary");
    char errpath[128];
    snprintf(errpath, sizeof errpath, "%s/stderr.txt", tmp_root);
    char *argv[32];
    int argc = 0;
    argv[argc++] = (char *)bin;
    for (int i = 0; args[i]; i++)
        argv[argc++] = (char *)args[i];
    argv[argc] = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    pid_t pid;
    cr_assert_eq(posix_spawn(&pid, bin, &fa, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status), "paxfs died of a signal");
    FILE *f = fopen(errpath, "r");
    cr_assert_not_null(f);
    size_t n = fread(err, 1, errlen - 1, f);
    err[n] = '\0';
    fclose(f);
    unlink(errpath);
    return WEXITSTATUS(status);
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static mode_t file_mode(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "%s missing", path);
    return st.st_mode & 07777;
}

/* ------------------------------------------------------------ parser */

Test(config, parses_comments_blank_lines_any_order_and_defaults)
{
    struct cluster_config c;
    char err[256] = "";
    cr_assert_eq(parse(good_text, &c, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.n_nodes, 3);
    cr_assert_eq(c.cluster_id[0], 0x00);
    cr_assert_eq(c.cluster_id[15], 0xff);
    cr_assert_eq(c.block_size, 262144);
    cr_assert_eq(c.tick_ms, 5);
    cr_assert_eq(c.election_ticks, CONFIG_ELECTION_TICKS_DEFAULT);
    cr_assert_eq(c.heartbeat_ticks, CONFIG_HEARTBEAT_TICKS_DEFAULT);
    cr_assert_eq(c.op_timeout_s, CONFIG_OP_TIMEOUT_S_DEFAULT);
    cr_assert_str_eq(c.nodes[1].host, "10.0.0.1");
    cr_assert_eq(c.nodes[1].port, 7400);
    cr_assert_str_eq(c.nodes[2].host, "host-b.example");
    cr_assert_str_eq(c.nodes[3].host, "::1");
    cr_assert_eq(c.nodes[3].port, 7402);
}

Test(config, format_writes_a_file_that_parses_back_to_the_same_config)
{
    struct cluster_config c, back;
    char err[256] = "";
    cr_assert_eq(parse(good_text, &c, err, sizeof err), 0, "%s", err);
    struct buf b;
    buf_init(&b);
    config_format(&c, &b);
    cr_assert_eq(config_parse((const char *)b.data, b.len, &back, err, sizeof err), 0, "%s", err);
    cr_assert_eq(memcmp(back.cluster_id, c.cluster_id, sizeof c.cluster_id), 0);
    cr_assert_eq(back.n_nodes, 3);
    cr_assert_eq(back.tick_ms, 5);
    for (uint32_t k = 1; k <= 3; k++) {
        cr_assert_str_eq(back.nodes[k].host, c.nodes[k].host);
        cr_assert_eq(back.nodes[k].port, c.nodes[k].port);
    }
    buf_put_u8(&b, 0);
    cr_assert_not_null(strstr((const char *)b.data, "node.3 = [::1]:7402\n"));
    cr_assert_not_null(strstr((const char *)b.data, "move it offline"));
    buf_deinit(&b);
}

struct bad_case {
    const char *text;
    const char *expect; /* substring of the error */
};

#define HEAD "cluster_id = 00112233445566778899aabbccddeeff\nblock_size = 4096\n"
#define NODES "node.1 = a:1\nnode.2 = b:2\n"

static const struct bad_case bad_cases[] = {
    {HEAD NODES "colour = blue\n", "5: unknown key 'colour'"},
    {HEAD NODES "tick_ms = 10\ntick_ms = 20\n", "6: duplicate key 'tick_ms' (first on line 5)"},
    {HEAD NODES "node.1 = c:3\n", "5: duplicate key 'node.1'"},
    {"cluster_id = 0011\nblock_size = 4096\n" NODES, "1: cluster_id must be 32 hex digits"},
    {"cluster_id = 0011223344556677889900aabbccddzz\nblock_size = 4096\n" NODES, "1: cluster_id must be 32 hex"},
    {"cluster_id = 00000000000000000000000000000000\nblock_size = 4096\n" NODES, "must not be all zeros"},
    {"block_size = 4096\n" NODES, "missing cluster_id"},
    {"cluster_id = 00112233445566778899aabbccddeeff\n" NODES, "missing block_size"},
    {"cluster_id = 00112233445566778899aabbccddeeff\nblock_size = 5000\n" NODES, "2: block_size must be a power of two"},
    {"cluster_id = 00112233445566778899aabbccddeeff\nblock_size = 1024\n" NODES, "2: block_size must be an integer in 4096..16777216"},
    {"cluster_id = 00112233445566778899aabbccddeeff\nblock_size = 4k\n" NODES, "got '4k'"},
    {HEAD "node.1 = a:1\nnode.3 = c:3\n", "missing node.2"},
    {HEAD "node.0 = a:1\n", "3: node number in 'node.0' must be an integer in 1..16"},
    {HEAD "node.17 = a:1\n", "node number in 'node.17'"},
    {HEAD "node.01 = a:1\n", "node number in 'node.01'"},
    {HEAD "node.1 = a:0\n", "3: node.1: port must be an integer in 1..65535"},
    {HEAD "node.1 = a:65536\n", "port must be an integer"},
    {HEAD "node.1 = a\n", "3: node.1: expected 'host:port'"},
    {HEAD "node.1 = ::1:7400\n", "write an IPv6 address in brackets"},
    {HEAD "node.1 = [::1\n", "expected '[ipv6]:port'"},
    {HEAD "node.1 = [zz]:1\n", "bad IPv6 address"},
    {HEAD "node.1 = a b:1\n", "bad host name"},
    {HEAD "node.1 = :1\n", "host must be 1..255 characters"},
    {HEAD "node.1 = a:1\nnode.2 = A:1\n", "4: node.2 has the same address as node.1 (line 3)"},
    {HEAD NODES "just some words\n", "5: expected 'key = value', got 'just some words'"},
    {HEAD NODES "= 3\n", "5: missing key before '='"},
    {HEAD NODES "tick_ms =\n", "5: no value for 'tick_ms'"},
    {HEAD NODES "tick_ms = -1\n", "tick_ms must be an integer in 1..1000, got '-1'"},
    {HEAD NODES "tick_ms = 99999999999999\n", "tick_ms must be an integer"},
    {HEAD NODES "election_ticks = 4\n", "election_ticks (4) must be more than twice heartbeat_ticks (2)"},
    {HEAD, "no nodes"},
    {"", "missing cluster_id"},
};

Test(config, every_bad_file_is_rejected_with_one_line_naming_the_problem)
{
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        struct cluster_config c;
        memset(&c, 0x5a, sizeof c);
        char err[512] = "";
        int rc = parse(bad_cases[i].text, &c, err, sizeof err);
        cr_assert_eq(rc, -EINVAL, "case %zu accepted", i);
        cr_assert_not_null(strstr(err, bad_cases[i].expect), "case %zu: got '%s', want '%s'", i,
                           err, bad_cases[i].expect);
        cr_assert_null(strchr(err, '\n'), "case %zu: error is not one line: %s", i, err);
        cr_assert_eq(c.block_size, 0x5a5a5a5a, "case %zu wrote the output on failure", i);
    }
}

Test(config, rejects_nul_bytes_and_overlong_lines)
{
    struct cluster_config c;
    char err[256];
    const char nul[] = HEAD "node.1 = a:1\0\n";
    cr_assert_eq(config_parse(nul, sizeof nul - 1, &c, err, sizeof err), -EINVAL);
    cr_assert_not_null(strstr(err, "3: contains a NUL byte"), "%s", err);

    size_t n = CONFIG_LINE_MAX + 100;
    char *text = malloc(n + 1);
    memset(text, '#', n);
    text[n] = '\0';
    cr_assert_eq(config_parse(text, n, &c, err, sizeof err), -EINVAL);
    cr_assert_not_null(strstr(err, "1: line longer than"), "%s", err);
    free(text);
}

Test(config, load_prefixes_the_path_and_reports_a_missing_file)
{
    make_root();
    char path[256], err[512];
    snprintf(path, sizeof path, "%s/cluster.conf", tmp_root);
    struct cluster_config c;
    cr_assert_eq(config_load(path, &c, err, sizeof err), -ENOENT);
    cr_assert_not_null(strstr(err, "cluster.conf: No such file"), "%s", err);

    FILE *f = fopen(path, "w");
    fputs(HEAD "node.1 = a:1\nbogus\n", f);
    fclose(f);
    cr_assert_eq(config_load(path, &c, err, sizeof err), -EINVAL);
    char want[300];
    snprintf(want, sizeof want, "%s:4: expected 'key = value'", path);
    cr_assert_not_null(strstr(err, want), "%s", err);

    f = fopen(path, "w");
    fputs(HEAD, f);
    fclose(f);
    cr_assert_eq(config_load(path, &c, err, sizeof err), -EINVAL);
    snprintf(want, sizeof want, "%s: no nodes", path);
    cr_assert_not_null(strstr(err, want), "%s", err);

    f = fopen(path, "w");
    fputs(good_text, f);
    fclose(f);
    cr_assert_eq(config_load(path, &c, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.n_nodes, 3);
    remove_tree(tmp_root);
}

/* ------------------------------------------------------------ paxfs init */

/* The certificate in dir/name verifies against dir/ca.crt and names node k
 * of cluster id. */
static void check_node_cert(const char *dir, uint32_t k, const uint8_t id[16])
{
    char path[512];
    snprintf(path, sizeof path, "%s/ca.crt", dir);
    X509 *ca = pki_read_cert(path);
    cr_assert_not_null(ca);
    snprintf(path, sizeof path, "%s/node%u.crt", dir, k);
    X509 *cert = pki_read_cert(path);
    cr_assert_not_null(cert, "%s", path);
    snprintf(path, sizeof path, "%s/node%u.key", dir, k);
    EVP_PKEY *key = pki_read_key(path);
    cr_assert_not_null(key);
    cr_assert_eq(X509_check_private_key(cert, key), 1, "node%u.key does not match its cert", k);

    X509_STORE *store = X509_STORE_new();
    X509_STORE_add_cert(store, ca);
    X509_STORE_CTX *vctx = X509_STORE_CTX_new();
    X509_STORE_CTX_init(vctx, store, cert, NULL);
    cr_assert_eq(X509_verify_cert(vctx), 1, "node%u.crt: %s", k,
                 X509_verify_cert_error_string(X509_STORE_CTX_get_error(vctx)));
    X509_STORE_CTX_free(vctx);
    X509_STORE_free(store);

    uint32_t node;
    uint8_t cid[16];
    cr_assert_eq(pki_cert_identity(cert, &node, cid), 0);
    cr_assert_eq(node, k);
    cr_assert_eq(memcmp(cid, id, 16), 0);
    char cn[64];
    X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn);
    char want[64];
    snprintf(want, sizeof want, "paxfs-node-%u", k);
    cr_assert_str_eq(cn, want);
    EVP_PKEY *pub = X509_get0_pubkey(cert);
    cr_assert_eq(EVP_PKEY_get_base_id(pub), EVP_PKEY_EC);
    cr_assert_eq(EVP_PKEY_get_bits(pub), 256);
    /* ten years, give or take the hour of clock-skew allowance */
    int days, secs;
    ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(cert), X509_get0_notAfter(cert));
    cr_assert(days >= PKI_VALID_DAYS && days <= PKI_VALID_DAYS + 1, "validity %d days", days);
    EVP_PKEY_free(key);
    X509_free(cert);
    X509_free(ca);
}

Test(init, creates_config_ca_and_node_certificates_with_the_right_modes)
{
    make_root();
    char dir[128], err[1024];
    snprintf(dir, sizeof dir, "%s/cluster", tmp_root);
    const char *args[] = {"init", dir, NULL};
    cr_assert_eq(run_paxfs(args, err, sizeof err), 0, "%s", err);

    cr_assert_eq(file_mode(dir, "ca.key"), 0600);
    cr_assert_eq(file_mode(dir, "ca.crt"), 0644);
    cr_assert_eq(file_mode(dir, "cluster.conf"), 0644);
    for (int k = 1; k <= 3; k++) {
        char name[32];
        snprintf(name, sizeof name, "node%d.key", k);
        cr_assert_eq(file_mode(dir, name), 0600, "%s", name);
        snprintf(name, sizeof name, "node%d.crt", k);
        cr_assert_eq(file_mode(dir, name), 0644, "%s", name);
    }
    char path[256];
    snprintf(path, sizeof path, "%s/node4.crt", dir);
    cr_assert_neq(access(path, F_OK), 0, "only 3 nodes by default");

    struct cluster_config c;
    snprintf(path, sizeof path, "%s/cluster.conf", dir);
    cr_assert_eq(config_load(path, &c, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.n_nodes, 3);
    cr_assert_eq(c.block_size, 262144); /* STORE_BLOCK_SIZE_DEFAULT */
    cr_assert_eq(c.tick_ms, 10);
    cr_assert_eq(c.election_ticks, 20);
    cr_assert_eq(c.heartbeat_ticks, 2);
    cr_assert_eq(c.op_timeout_s, 30);
    for (uint32_t k = 1; k <= 3; k++) {
        cr_assert_str_eq(c.nodes[k].host, "127.0.0.1");
        cr_assert_eq(c.nodes[k].port, 7400 + k - 1);
        check_node_cert(dir, k, c.cluster_id);
    }
    remove_tree(tmp_root);
}

Test(init, honours_nodes_hosts_port_and_block_size)
{
    make_root();
    char dir[128], path[256], err[1024];
    snprintf(dir, sizeof dir, "%s/c5", tmp_root);
    const char *args[] = {"init", "--nodes", "5", "--host=db.example", "--port", "9000",
                          "--block-size", "1M", dir, NULL};
    cr_assert_eq(run_paxfs(args, err, sizeof err), 0, "%s", err);
    struct cluster_config c;
    snprintf(path, sizeof path, "%s/cluster.conf", dir);
    cr_assert_eq(config_load(path, &c, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.n_nodes, 5);
    cr_assert_eq(c.block_size, 1u << 20);
    for (uint32_t k = 1; k <= 5; k++) {
        cr_assert_str_eq(c.nodes[k].host, "db.example");
        cr_assert_eq(c.nodes[k].port, 9000 + k - 1);
    }
    check_node_cert(dir, 5, c.cluster_id);

    snprintf(dir, sizeof dir, "%s/c2", tmp_root);
    const char *args2[] = {"init", "--host", "10.0.0.1", "--host", "[::1]", dir, NULL};
    cr_assert_eq(run_paxfs(args2, err, sizeof err), 0, "%s", err);
    snprintf(path, sizeof path, "%s/cluster.conf", dir);
    cr_assert_eq(config_load(path, &c, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c.n_nodes, 2, "one --host per node sets the node count");
    cr_assert_str_eq(c.nodes[1].host, "10.0.0.1");
    cr_assert_str_eq(c.nodes[2].host, "::1");
    remove_tree(tmp_root);
}

Test(init, refuses_to_overwrite_an_existing_cluster)
{
    make_root();
    char dir[128], path[256], err[1024];
    snprintf(dir, sizeof dir, "%s/cluster", tmp_root);
    const char *args[] = {"init", dir, NULL};
    cr_assert_eq(run_paxfs(args, err, sizeof err), 0, "%s", err);
    snprintf(path, sizeof path, "%s/cluster.conf", dir);
    struct cluster_config before, after;
    cr_assert_eq(config_load(path, &before, err, sizeof err), 0);

    cr_assert_eq(run_paxfs(args, err, sizeof err), 2);
    cr_assert_eq(count_lines(err), 1, "%s", err);
    cr_assert_not_null(strstr(err, "already exists"), "%s", err);
    cr_assert_eq(config_load(path, &after, err, sizeof err), 0);
    cr_assert_eq(memcmp(before.cluster_id, after.cluster_id, 16), 0, "cluster was overwritten");

    /* a leftover key from an interrupted init is not overwritten either */
    snprintf(dir, sizeof dir, "%s/partial", tmp_root);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/node2.key", dir);
    FILE *f = fopen(path, "w");
    fputs("keep me\n", f);
    fclose(f);
    const char *args2[] = {"init", dir, NULL};
    cr_assert_eq(run_paxfs(args2, err, sizeof err), 2);
    cr_assert_not_null(strstr(err, "node2.key already exists"), "%s", err);
    snprintf(path, sizeof path, "%s/ca.key", dir);
    cr_assert_neq(access(path, F_OK), 0, "init left files behind after refusing");
    remove_tree(tmp_root);
}

Test(init, bad_arguments_exit_2_with_one_line)
{
    make_root();
    char dir[128], err[2048];
    snprintf(dir, sizeof dir, "%s/x", tmp_root);
    const char *cases[][10] = {
        {"init", NULL},
        {"init", "--nodes", "0", dir, NULL},
        {"init", "--nodes", "17", dir, NULL},
        {"init", "--nodes", dir, NULL},
        {"init", "--port", "70000", dir, NULL},
        {"init", "--port", "65535", "--nodes", "2", dir, NULL},
        {"init", "--block-size", "1000", dir, NULL},
        {"init", "--block-size", "32M", dir, NULL},
        {"init", "--host", "a", "--host", "b", "--nodes", "3", dir, NULL},
        {"init", "--host", "bad host", dir, NULL},
        {"init", "--host", "db.example:7400", dir, NULL},
        {"init", "--frobnicate", dir, NULL},
        {"init", dir, "other", NULL},
        {"mount", "--config", "x", NULL},
        {"status", NULL},
        {"fsck", NULL},
        {"launch", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = run_paxfs(cases[i], err, sizeof err);
        cr_assert_eq(rc, 2, "case %zu (%s %s) exited %d", i, cases[i][0],
                     cases[i][1] ? cases[i][1] : "", rc);
        cr_assert_eq(count_lines(err), 1, "case %zu: not one line: %s", i, err);
        cr_assert_eq(strncmp(err, "paxfs", 5), 0, "case %zu: %s", i, err);
    }
    cr_assert_neq(access(dir, F_OK), 0, "a refused init created its DIR");

    const char *mount[] = {"mount", NULL};
    cr_assert_eq(run_paxfs(mount, err, sizeof err), 2);
    cr_assert_not_null(strstr(err, "--config"), "mount without arguments names what is missing: %s", err);

    const char *none[] = {NULL};
    cr_assert_eq(run_paxfs(none, err, sizeof err), 2);
    cr_assert_not_null(strstr(err, "init"), "usage lists the commands: %s", err);
    const char *help[] = {"--help", NULL};
    cr_assert_eq(run_paxfs(help, err, sizeof err), 0);
    const char *init_help[] = {"init", "--help", NULL};
    cr_assert_eq(run_paxfs(init_help, err, sizeof err), 0);
    remove_tree(tmp_root);
}

/* ------------------------------------------------------------ init + net */

static atomic_int got_frames;

static void count_frame(void *ctx, uint32_t from, uint8_t type, const uint8_t *p, size_t len)
{
    (void)ctx, (void)type, (void)p;
    if (from == 1 && len == 5 && memcmp(p, "hello", 5) == 0)
        atomic_fetch_add(&got_frames, 1);
}

static void quiet_sink(void *ctx, enum log_level level, const char *line)
{
    (void)ctx, (void)level, (void)line;
}

Test(init, its_certificates_let_two_nodes_authenticate_each_other)
{
    log_set_sink(quiet_sink, NULL);
    make_root();
    char dir[128], path[256], err[1024];
    snprintf(dir, sizeof dir, "%s/cluster", tmp_root);
    const char *args[] = {"init", "--nodes", "2", dir, NULL};
    cr_assert_eq(run_paxfs(args, err, sizeof err), 0, "%s", err);
    snprintf(path, sizeof path, "%s/cluster.conf", dir);
    struct cluster_config cc;
    cr_assert_eq(config_load(path, &cc, err, sizeof err), 0, "%s", err);

    struct net *n[3];
    for (uint32_t k = 1; k <= 2; k++) {
        struct net_config nc;
        cr_assert_eq(net_config_from_cluster(&nc, &cc, dir, k), 0);
        for (uint32_t j = 1; j <= 2; j++) /* loopback, free ports: never 7400.. */
            nc.addrs[j].port = 0;
        nc.on_frame = count_frame;
        cr_assert_eq(net_new(&nc, &n[k]), 0);
    }
    cr_assert_eq(net_set_peer_addr(n[1], 2, "127.0.0.1", net_port(n[2])), 0);
    cr_assert_eq(net_set_peer_addr(n[2], 1, "127.0.0.1", net_port(n[1])), 0);
    cr_assert_eq(net_start(n[1]), 0);
    cr_assert_eq(net_start(n[2]), 0);
    uint64_t deadline = clock_now_ns() + 10000000000ull;
    while (atomic_load(&got_frames) == 0 && clock_now_ns() < deadline) {
        if (net_peer_up(n[1], 2))
            net_send(n[1], 2, "hello", 5);
        usleep(2000);
    }
    cr_assert_gt(atomic_load(&got_frames), 0, "no frame made it from node 1 to node 2");
    net_free(n[1]);
    net_free(n[2]);
    remove_tree(tmp_root);
    log_set_sink(NULL, NULL);
}
