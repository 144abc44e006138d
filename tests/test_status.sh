#!/usr/bin/env bash
# test_status.sh — `paxfs status` against a running cluster (TAP).
#
# Environment (set by meson): PAXFS_BIN, the paxfs command; PAXFS_KV, the
# test replica (tests/kv_replica.c). Starts three paxfs-kv replicas on
# 127.0.0.1 (ports from a random base in 20000-60000) and checks:
#   1. status prints one row per node, exactly one leader, and exits 0
#   2. --json prints one object with three reachable nodes and one leader
#   3. the table has a SNAPSHOT column ("-": none yet) and --json the status
#      v2 fields (snapshot_slot, log_first, xfer_*, blocks_repaired)
#   4. a committed put shows up as commit >= 1 and lag 0 on every node
#   5. with one replica SIGKILLed, status exits 1 and marks it unreachable
#   6. --json marks it "reachable":false with an error and null v2 fields
#   7. bad usage and a cluster directory without client.crt exit 2, one line
# Every process this script starts is killed by PID on exit (also when a
# check fails) and the temporary directory removed. Every wait is bounded.
set -u
trap '' PIPE
# shellcheck source=SCRIPTDIR/lib_cluster.sh
. "$(dirname "$0")/lib_cluster.sh" # skip_all, reap (its FUSE and TAP parts are not for this script)

PAXFS=${PAXFS_BIN:-}
KV=${PAXFS_KV:-}
if [ ! -x "$PAXFS" ] || [ ! -x "$KV" ]; then
    skip_all "PAXFS_BIN and PAXFS_KV must name the built paxfs and paxfs-kv"
fi
T=$(mktemp -d "${TMPDIR:-/tmp}/paxfs-status.XXXXXX") || exit 2
declare -A PID WFD

cleanup() {
    reap "${PID[@]}"
    rm -rf "$T"
}
trap cleanup EXIT

n_check=0
echo "1..7"
diag() { printf '%s\n' "$@" | sed 's/^/# /'; }
check() { # check DESCRIPTION COMMAND...: ok if COMMAND succeeds
    local what=$1
    shift
    n_check=$((n_check + 1))
    if "$@"; then
        echo "ok $n_check - $what"
    else
        echo "not ok $n_check - $what"
    fi
}

# node_start K: starts replica K and waits (<= 30 s) for its "ready" line.
# Its stdin is a fifo this shell holds open read-write, so no open blocks.
node_start() {
    local k=$1 w
    mkfifo "$T/in$k" || return 1
    exec {w}<>"$T/in$k"
    WFD[$k]=$w
    "$KV" --config "$T/c/cluster.conf" --node "$k" --data "$T/d$k" \
        <"$T/in$k" >"$T/out$k" 2>"$T/err$k" &
    PID[$k]=$!
    local i
    for ((i = 0; i < 300; i++)); do
        grep -q '^ready' "$T/out$k" 2>/dev/null && return 0
        kill -0 "${PID[$k]}" 2>/dev/null || break
        sleep 0.1
    done
    diag "node $k did not start:" "$(tail -n 3 "$T/err$k")"
    return 1
}

node_kill() {
    reap "${PID[$1]}"
    unset "PID[$1]"
}

# status ARGS...: runs paxfs status; output in $T/status.out, code in $rc.
rc=0
status() {
    "$PAXFS" status --config "$T/c/cluster.conf" "$@" >"$T/status.out" 2>"$T/status.err"
    rc=$?
}

rows() { grep -cE '^[0-9]+ +[^ ]+ +(yes|no) ' "$T/status.out"; }
leaders() { grep -cE '^[0-9]+ +[^ ]+ +yes +leader ' "$T/status.out"; }

# ---- a running cluster --------------------------------------------------

PORT=$((20000 + RANDOM % 39000))
if ! "$PAXFS" init --nodes 3 --port "$PORT" "$T/c" >/dev/null 2>"$T/init.err"; then
    diag "paxfs init failed: $(cat "$T/init.err")"
    exit 1
fi
started=1
for k in 1 2 3; do
    node_start "$k" || started=0
done

# 1. wait (<= 30 s) for an election, then one row per node and one leader
one_leader() {
    local i
    for ((i = 0; i < 60; i++)); do
        status
        [ "$rc" = 0 ] && [ "$(rows)" = 3 ] && [ "$(leaders)" = 1 ] && return 0
        sleep 0.5
    done
    diag "last status (exit $rc):" "$(cat "$T/status.out" "$T/status.err")"
    return 1
}
check "status shows 3 reachable nodes, one leader, and exits 0" \
    eval '[ "$started" = 1 ] && one_leader'

# 2. the JSON form
json_ok() {
    status --json
    [ "$rc" = 0 ] || return 1
    [ "$(wc -l <"$T/status.out")" = 1 ] || return 1
    [ "$(grep -o '"reachable":true' "$T/status.out" | wc -l)" = 3 ] || return 1
    [ "$(grep -o '"role":"leader"' "$T/status.out" | wc -l)" = 1 ] || return 1
    grep -q '^{"cluster":"[0-9a-f]\{32\}","leader":[123],"nodes":\[{"node":1,' "$T/status.out" ||
        return 1
    if command -v python3 >/dev/null; then
        python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert len(d["nodes"])==3' \
            "$T/status.out" || return 1
    fi
}
check "status --json prints one object with 3 reachable nodes and one leader" json_ok

# 3. the snapshot column and the v2 fields (these replicas take no snapshots)
v2_fields() {
    status
    [ "$rc" = 0 ] || return 1
    head -n 1 "$T/status.out" | grep -qE '^NODE +ADDRESS +REACHABLE +ROLE +BALLOT +COMMIT +APPLIED +LAG +SNAPSHOT$' ||
        { diag "header: $(head -n 1 "$T/status.out")"; return 1; }
    [ "$(grep -cE '^[123] +[^ ]+ +yes +[a-z]+ +[0-9.]+ +[0-9]+ +[0-9]+ +[0-9-]+ +- *$' \
        "$T/status.out")" = 3 ] || { diag "$(cat "$T/status.out")"; return 1; }
    status --json
    [ "$rc" = 0 ] || return 1
    [ "$(grep -o '"snapshot_slot":0,"log_first":[0-9]*,"xfer_state":"idle","xfer_bytes_done":0,"xfer_bytes_total":0,"xfer_rate":0,"blocks_repaired":0,"error":null' \
        "$T/status.out" | wc -l)" = 3 ] || { diag "$(cat "$T/status.out")"; return 1; }
}
check "status shows a SNAPSHOT column and --json the v2 fields" v2_fields

# 4. a put commits everywhere: commit >= 1, lag 0 (<= 20 s)
committed() {
    echo "put status-key v" >&"${WFD[1]}"
    local i
    for ((i = 0; i < 200; i++)); do
        grep -q '^ok' "$T/out1" && break
        sleep 0.1
    done
    grep -q '^ok' "$T/out1" || { diag "put not acknowledged: $(tail -n 2 "$T/out1")"; return 1; }
    for ((i = 0; i < 40; i++)); do
        status --json
        if [ "$rc" = 0 ] && [ "$(grep -o '"lag":0,' "$T/status.out" | wc -l)" = 3 ] &&
            ! grep -q '"commit":0,' "$T/status.out"; then
            return 0
        fi
        sleep 0.5
    done
    diag "last status: $(cat "$T/status.out")"
    return 1
}
check "a committed put shows as commit >= 1 and lag 0 on every node" committed

# 5. one replica killed: exit 1, its row says unreachable
node_kill 3
killed_shown() {
    status
    [ "$rc" = 1 ] || { diag "exit $rc"; return 1; }
    [ "$(rows)" = 3 ] || return 1
    grep -qE '^3 +[^ ]+ +no +- ' "$T/status.out" || return 1
    [ "$(grep -cE '^[12] +[^ ]+ +yes ' "$T/status.out")" = 2 ] || return 1
    # the two survivors elect (or keep) a leader (<= 30 s); exit stays 1
    local i
    for ((i = 0; i < 60; i++)); do
        status
        [ "$rc" = 1 ] && [ "$(leaders)" = 1 ] && return 0
        sleep 0.5
    done
    diag "last status (exit $rc): $(cat "$T/status.out")"
    return 1
}
check "with node 3 killed, status exits 1 and marks it unreachable" killed_shown

json_killed() {
    status --json
    [ "$rc" = 1 ] || return 1
    grep -q '{"node":3,"address":"127.0.0.1:[0-9]*","reachable":false,"role":null,' \
        "$T/status.out" || return 1
    grep -q '"blocks_repaired":null,"error":"cannot connect' "$T/status.out"
}
check "status --json marks node 3 reachable:false with the reason" json_killed

# 7. bad usage and an old cluster directory: exit 2 with one line on stderr
usage_errors() {
    "$PAXFS" status >/dev/null 2>"$T/e1"
    [ $? = 2 ] && [ "$(wc -l <"$T/e1")" = 1 ] && grep -q 'missing --config' "$T/e1" || return 1
    "$PAXFS" status --config "$T/nonexistent.conf" >/dev/null 2>"$T/e2"
    [ $? = 2 ] && [ "$(wc -l <"$T/e2")" = 1 ] || return 1
    "$PAXFS" status --config "$T/c/cluster.conf" --verbose >/dev/null 2>"$T/e3"
    [ $? = 2 ] && grep -q "unknown option '--verbose'" "$T/e3" || return 1
    mkdir "$T/old" && cp "$T/c/cluster.conf" "$T/c/ca.crt" "$T/old/" || return 1
    "$PAXFS" status --config "$T/old/cluster.conf" >/dev/null 2>"$T/e4"
    [ $? = 2 ] && [ "$(wc -l <"$T/e4")" = 1 ] && grep -q 'no client certificate in' "$T/e4" ||
        { diag "$(cat "$T/e4")"; return 1; }
    "$PAXFS" status --help >/dev/null 2>&1
}
check "bad usage and a directory without client.crt exit 2 with one line" usage_errors

for k in 1 2; do
    echo quit >&"${WFD[$k]}"
done
exit 0
