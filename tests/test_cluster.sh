#!/usr/bin/env bash
# test_cluster.sh PAXFS PAXFS_KV — replicas on the wire, as real processes.
#
# Starts clusters of paxfs-kv replicas (tests/kv_replica.c: WAL, mutual TLS,
# the consensus core, a key-value map) on 127.0.0.1 and drives each through
# its stdin/stdout, one command line and one answer line at a time, over a
# pair of named pipes. Checks (TAP, one line each):
#   1. 3 replicas elect one leader; a load on a follower commits; digests agree
#   2. the same with 5 replicas
#   3. the leader is SIGKILLed under load: no acknowledged entry lost, none
#      applied twice, proposals resume under a new leader, and the killed node
#      restarted on its data directory catches up
#   4. a follower frozen (SIGSTOP) for 3 s under load catches up after SIGCONT
#   5. a partitioned leader: the majority elects a new leader and commits, the
#      old leader steps down, and after healing every digest agrees
#   6. restarting every replica on its data directory keeps the state
#   7. a replica refuses (exit 2, one line) a data directory of another cluster
#
# Everything lives in one mktemp -d directory; every process this script
# starts is killed by PID and the directory removed on exit, also when a
# check fails. Every wait is bounded. PAXFS_SANITIZE (set by meson) makes the
# loads smaller for the slower sanitizer builds.
set -u
trap '' PIPE
# shellcheck source=SCRIPTDIR/lib_cluster.sh
. "$(dirname "$0")/lib_cluster.sh" # reap (its FUSE and TAP parts are not for this script)

if [ $# -ne 2 ] || [ ! -x "$1" ] || [ ! -x "$2" ]; then
    echo "usage: test_cluster.sh PATH/TO/paxfs PATH/TO/paxfs-kv" >&2
    exit 2
fi
PAXFS=$1
KV=$2
T=$(mktemp -d "${TMPDIR:-/tmp}/paxfs-cluster.XXXXXX") || exit 2
SLOW=0
case "${PAXFS_SANITIZE:-none}" in none|"") ;; *) SLOW=1 ;; esac
OP_TIMEOUT_S=10

declare -A PID WFD RFD   # keyed "CLUSTER:NODE" while the process runs
declare -A NODES         # keyed by cluster name

cleanup() {
    reap "${PID[@]}"
    rm -rf "$T"
}
trap cleanup EXIT

n_check=0
n_failed=0
echo "1..7"
diag() { printf '# %s\n' "$@"; }
ok()     { n_check=$((n_check + 1)); echo "ok $n_check - $1"; }
not_ok() { n_check=$((n_check + 1)); n_failed=$((n_failed + 1)); echo "not ok $n_check - $1"; }

# field NAME LINE: the value of NAME=... in LINE (empty if absent).
field() {
    local re="(^| )$1=([^ ]*)"
    [[ $2 =~ $re ]] && printf '%s' "${BASH_REMATCH[2]}"
}

# ---- one replica --------------------------------------------------------

conf_of() { printf '%s/%s/conf/cluster.conf' "$T" "$1"; }
data_of() { printf '%s/%s/d%s' "$T" "$1" "$2"; }

# node_start C K [DATADIR]: starts node K of cluster C and waits (<= 30 s)
# for its "ready" line. The pipes are opened read-write by this shell, so no
# open ever blocks, whatever the child does.
node_start() {
    local c=$1 k=$2 data=${3:-$(data_of "$1" "$2")}
    local in="$T/$c/in$k" out="$T/$c/out$k" w r line
    rm -f "$in" "$out"
    mkfifo "$in" "$out" || return 1
    "$KV" --config "$(conf_of "$c")" --node "$k" --data "$data" \
        <"$in" >"$out" 2>>"$T/$c/err$k" &
    PID[$c:$k]=$!
    exec {w}<>"$in" {r}<>"$out"
    WFD[$c:$k]=$w
    RFD[$c:$k]=$r
    local i
    for ((i = 0; i < 60; i++)); do
        if read -r -t 0.5 -u "$r" line; then
            [ "$line" = "ready node=$k" ] && return 0
            diag "node $c:$k said '$line' instead of ready"
            node_kill "$c" "$k"
            return 1
        fi
        kill -0 "${PID[$c:$k]}" 2>/dev/null || break
    done
    node_kill "$c" "$k"
    return 1
}

node_forget() {
    local c=$1 k=$2 w=${WFD[$1:$2]} r=${RFD[$1:$2]}
    exec {w}>&- {r}<&-
    unset "PID[$c:$k]" "WFD[$c:$k]" "RFD[$c:$k]"
}

node_alive() { [ -n "${PID[$1:$2]:-}" ] && kill -0 "${PID[$1:$2]}" 2>/dev/null; }

# node_kill C K: SIGKILL, reaped.
node_kill() {
    local c=$1 k=$2
    [ -n "${PID[$c:$k]:-}" ] || return 0
    reap "${PID[$c:$k]}"
    node_forget "$c" "$k"
}

# node_quit C K: asks the node to quit; waits up to 20 s, then kills it.
# Returns the exit status (non-zero also for a leak report under ASan).
node_quit() {
    local c=$1 k=$2 i rc
    [ -n "${PID[$c:$k]:-}" ] || return 0
    printf 'quit\n' >&"${WFD[$c:$k]}"
    for ((i = 0; i < 200; i++)); do
        kill -0 "${PID[$c:$k]}" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "${PID[$c:$k]}" 2>/dev/null; then
        diag "node $c:$k did not quit within 20 s"
        node_kill "$c" "$k"
        return 1
    fi
    wait "${PID[$c:$k]}"
    rc=$?
    node_forget "$c" "$k"
    return $rc
}

# ask C K CMD [TIMEOUT_S]: sends CMD, reads one answer line into ANS.
# Lines left over from an earlier command that timed out are dropped first.
ANS=
ask_send() {
    local r=${RFD[$1:$2]:-}
    [ -n "$r" ] || return 1
    while read -r -t 0 -u "$r"; do read -r -t 1 -u "$r" _ || break; done
    printf '%s\n' "$3" >&"${WFD[$1:$2]}"
}
ask_recv() {
    ANS=
    local r=${RFD[$1:$2]:-}
    [ -n "$r" ] || return 1
    read -r -t "${3:-10}" -u "$r" ANS
}
ask() { ask_send "$1" "$2" "$3" && ask_recv "$1" "$2" "${4:-10}"; }

# ---- a cluster ----------------------------------------------------------

# cluster_start C N: `paxfs init` on a random base port in 20000..60000 with
# op_timeout_s lowered, then starts nodes 1..N; a new port if one was taken.
cluster_start() {
    local c=$1 n=$2 try k port
    NODES[$c]=$n
    for ((try = 0; try < 5; try++)); do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % (40000 - n)))
        rm -rf "${T:?}/$c"
        mkdir -p "$T/$c"
        if ! "$PAXFS" init --nodes "$n" --port "$port" "$T/$c/conf" >"$T/$c/init.out" 2>&1; then
            diag "paxfs init failed:" "$(cat "$T/$c/init.out")"
            return 1
        fi
        sed -i "s/^op_timeout_s = .*/op_timeout_s = $OP_TIMEOUT_S/" "$(conf_of "$c")"
        local started=1
        for ((k = 1; k <= n; k++)); do
            node_start "$c" "$k" || { started=0; break; }
        done
        [ $started = 1 ] && return 0
        diag "cluster $c did not start on ports $port..$((port + n - 1)) (try $((try + 1)))"
        cluster_logs "$c"
        for ((k = 1; k <= n; k++)); do node_kill "$c" "$k"; done
        # Only a port someone else holds is worth another try.
        cat "$T/$c"/err* 2>/dev/null | grep -q "port" || break
    done
    return 1
}

# cluster_quit C: asks every running node of C to quit, waits up to 10 s
# for all of them together, then kills what is left.
cluster_quit() {
    local c=$1 k end=$((SECONDS + 10)) left
    for ((k = 1; k <= ${NODES[$c]:-0}; k++)); do
        [ -n "${PID[$c:$k]:-}" ] && printf 'quit\n' >&"${WFD[$c:$k]}"
    done
    while [ $SECONDS -lt $end ]; do
        left=0
        for ((k = 1; k <= ${NODES[$c]:-0}; k++)); do node_alive "$c" "$k" && left=1; done
        [ $left = 0 ] && break
        sleep 0.1
    done
    for ((k = 1; k <= ${NODES[$c]:-0}; k++)); do node_kill "$c" "$k"; done
}

# cluster_kill C: SIGKILLs every node of C (after a failed check).
cluster_kill() {
    local c=$1 k
    for ((k = 1; k <= ${NODES[$c]:-0}; k++)); do node_kill "$c" "$k"; done
}

# Prints the tail of every node's stderr of cluster C (after a failure).
cluster_logs() {
    local f
    for f in "$T/$1"/err*; do
        [ -s "$f" ] && diag "--- ${f##*/}:" && tail -n 15 "$f" | sed 's/^/#   /'
    done
}

# wait_leader C K...: polls `status` on nodes K... (~20 s) until they all
# name the same leader L, L is one of them, and exactly one says role=leader.
# Sets LEADER.
LEADER=0
wait_leader() {
    local c=$1 k l leaders agree end=$((SECONDS + 20))
    shift
    while [ $SECONDS -lt $end ]; do
        l=
        leaders=0
        agree=1
        for k in "$@"; do
            ask "$c" "$k" status 5 || { agree=0; break; }
            [ "$(field role "$ANS")" = leader ] && leaders=$((leaders + 1))
            [ -z "$l" ] && l=$(field leader "$ANS")
            [ "$(field leader "$ANS")" = "$l" ] || agree=0
        done
        if [ $agree = 1 ] && [ $leaders = 1 ] && [[ " $* " == *" $l "* ]]; then
            LEADER=$l
            return 0
        fi
        sleep 0.2
    done
    diag "no single agreed leader among $c:{$*} within 20 s (last: $ANS)"
    return 1
}

# digests_agree C K...: polls (~30 s) barrier + digest on nodes K... until
# every digest (hash, keys, applied, dups) is equal and dups=0. Sets DIGEST.
DIGEST=
digests_agree() {
    local c=$1 k first same end=$((SECONDS + 30))
    shift
    while [ $SECONDS -lt $end ]; do
        first=
        same=1
        for k in "$@"; do
            ask "$c" "$k" barrier $((OP_TIMEOUT_S + 5)) || { same=0; break; }
            ask "$c" "$k" digest 5 || { same=0; break; }
            [ -z "$first" ] && first=$ANS
            [ "$ANS" = "$first" ] || same=0
        done
        if [ $same = 1 ]; then
            DIGEST=$first
            if [ "$(field dups "$DIGEST")" != 0 ]; then
                diag "applied twice: $DIGEST"
                return 1
            fi
            return 0
        fi
        sleep 0.5
    done
    diag "digests of $c:{$*} still differ after 30 s:"
    for k in "$@"; do ask "$c" "$k" digest 5; diag "  node $k: $ANS"; done
    return 1
}

others() { # others N K...: the nodes 1..N not listed
    local n=$1 k
    shift
    for ((k = 1; k <= n; k++)); do [[ " $* " == *" $k "* ]] || printf '%s ' "$k"; done
}

# ---- the checks ---------------------------------------------------------

# check_load_on_follower C N: the common part of checks 1 and 2.
check_load_on_follower() {
    local c=$1 n=$2 all f
    all=$(seq -s ' ' 1 "$n")
    cluster_start "$c" "$n" || return 1
    # shellcheck disable=SC2086
    wait_leader "$c" $all || return 1
    diag "leader=$LEADER"
    f=$(others "$n" "$LEADER" | cut -d' ' -f1)
    ask "$c" "$f" "load 2000 100 8 a" 120 || { diag "no answer to load"; return 1; }
    diag "node $f: $ANS"
    [ "$(field ok "$ANS")" = 2000 ] && [ "$(field failed "$ANS")" = 0 ] || return 1
    # shellcheck disable=SC2086
    digests_agree "$c" $all || return 1
    diag "$DIGEST"
    [ "$(field keys "$DIGEST")" = 2000 ]
}

check_3_nodes() {
    if check_load_on_follower a 3; then ok "3 replicas: one leader, a follower's load commits, digests agree"
    else not_ok "3 replicas: one leader, a follower's load commits, digests agree"; cluster_logs a; cluster_kill a; fi
    cluster_quit a
}

check_5_nodes() {
    if check_load_on_follower b 5; then ok "5 replicas: one leader, a follower's load commits, digests agree"
    else not_ok "5 replicas: one leader, a follower's load commits, digests agree"; cluster_logs b; cluster_kill b; fi
    cluster_quit b
}

# The leader is SIGKILLed while a follower's load (4 proposers) runs: it is
# killed once the other follower has applied 10% of the load (or after 1 s),
# so it dies mid-load in fast and slow builds alike.
leader_killed() {
    local c=c n=3000 threads=4 l f g i keys=0 ok_n failed_n
    cluster_start $c 3 || return 1
    wait_leader $c 1 2 3 || return 1
    l=$LEADER
    read -r f g <<<"$(others 3 "$l")"
    ask_send $c "$f" "load $n 100 $threads b" || return 1
    for ((i = 0; i < 50; i++)); do
        sleep 0.02
        ask $c "$g" digest 5 && keys=$(field keys "$ANS")
        [ "${keys:-0}" -ge $((n / 10)) ] && break
    done
    if read -r -t 0 -u "${RFD[$c:$f]}"; then
        diag "the load ended before the leader could be killed"
        return 1
    fi
    kill -KILL "${PID[$c:$l]}"
    diag "killed leader $l (pid ${PID[$c:$l]}) when node $g had applied $keys keys"
    node_kill $c "$l"
    ask_recv $c "$f" $((OP_TIMEOUT_S * 3 + 120)) || { diag "no answer to the load"; return 1; }
    diag "node $f: $ANS"
    ok_n=$(field ok "$ANS")
    failed_n=$(field failed "$ANS")
    [ -n "$ok_n" ] && [ $((ok_n + failed_n)) = $n ] || return 1
    # A proposer waits for one proposal at a time, so only the proposals in
    # flight when the leader died may have timed out.
    if [ "$failed_n" -gt $threads ]; then
        diag "failed=$failed_n > $threads proposals in flight"
        return 1
    fi
    wait_leader $c "$f" "$g" || return 1
    diag "new leader=$LEADER"
    [ "$LEADER" != "$l" ] || return 1
    ask $c "$f" "verify b" 30 || return 1
    diag "node $f: $ANS"
    [ "$(field acked "$ANS")" = "$ok_n" ] && [ "$(field missing "$ANS")" = 0 ] || return 1
    digests_agree $c "$f" "$g" || return 1
    diag "survivors: $DIGEST"
    # Every acknowledged key is on both survivors (same digest, no dups) and
    # nothing unacknowledged beyond the in-flight proposals got in.
    keys=$(field keys "$DIGEST")
    if [ "$keys" -lt "$ok_n" ] || [ "$keys" -gt $n ]; then
        diag "keys=$keys ok=$ok_n"
        return 1
    fi
    node_start $c "$l" || { diag "the killed node did not restart"; return 1; }
    digests_agree $c 1 2 3 || return 1
    diag "after restart of node $l: $DIGEST"
}

check_leader_killed() {
    if leader_killed; then ok "leader SIGKILLed under load: nothing lost or doubled, load resumes, it catches up"
    else not_ok "leader SIGKILLed under load: nothing lost or doubled, load resumes, it catches up"; cluster_logs c; cluster_kill c; fi
    cluster_quit c
}

follower_frozen() {
    local c=d n=6000 l f
    [ $SLOW = 1 ] && n=3000
    cluster_start $c 3 || return 1
    wait_leader $c 1 2 3 || return 1
    l=$LEADER
    f=$(others 3 "$l" | cut -d' ' -f1)
    ask_send $c "$l" "load $n 100 8 c" || return 1
    sleep 0.1
    kill -STOP "${PID[$c:$f]}"
    sleep 3
    kill -CONT "${PID[$c:$f]}"
    diag "froze follower $f for 3 s"
    ask_recv $c "$l" $((OP_TIMEOUT_S + 120)) || { diag "no answer to the load"; return 1; }
    diag "leader $l: $ANS"
    [ "$(field ok "$ANS")" = $n ] && [ "$(field failed "$ANS")" = 0 ] || return 1
    # The thawed follower proposes again, and catches up.
    ask $c "$f" "load 400 100 8 c2" $((OP_TIMEOUT_S + 60)) || return 1
    diag "follower $f: $ANS"
    [ "$(field ok "$ANS")" = 400 ] || return 1
    digests_agree $c 1 2 3 || return 1
    diag "$DIGEST"
    [ "$(field keys "$DIGEST")" = $((n + 400)) ]
}

check_follower_frozen() {
    if follower_frozen; then ok "a follower frozen 3 s under load catches up after SIGCONT"
    else not_ok "a follower frozen 3 s under load catches up after SIGCONT"; cluster_logs d; cluster_kill d; fi
    cluster_quit d
}

leader_partitioned() {
    local c=e l f g i role t0
    cluster_start $c 3 || return 1
    wait_leader $c 1 2 3 || return 1
    l=$LEADER
    read -r f g <<<"$(others 3 "$l")"
    ask $c "$l" "load 400 100 8 e" 60 && diag "before: $ANS"
    ask $c "$l" "isolate on" 5 || return 1
    t0=$(date +%s%N)
    wait_leader $c "$f" "$g" || return 1
    diag "isolated leader $l; majority elected $LEADER in $((($(date +%s%N) - t0) / 1000000)) ms"
    [ "$LEADER" != "$l" ] || return 1
    ask $c "$f" "put partition-key v" $((OP_TIMEOUT_S + 5)) || return 1
    diag "put on node $f: $ANS"
    [[ $ANS == "ok "* ]] || return 1
    for ((i = 0; i < 50; i++)); do
        ask $c "$l" status 5 || return 1
        role=$(field role "$ANS")
        [ "$role" != leader ] && break
        sleep 0.1
    done
    diag "isolated old leader after $((($(date +%s%N) - t0) / 1000000)) ms: $ANS"
    [ "$role" = follower ] || [ "$role" = candidate ] || return 1
    ask $c "$l" "isolate off" 5 || return 1
    wait_leader $c 1 2 3 || return 1
    digests_agree $c 1 2 3 || return 1
    diag "healed: $DIGEST"
    [ "$(field keys "$DIGEST")" = 401 ]
}

check_leader_partitioned() {
    if leader_partitioned; then ok "partitioned leader: majority elects and commits, old leader steps down, heals"
    else not_ok "partitioned leader: majority elects and commits, old leader steps down, heals"; cluster_logs e; cluster_kill e; fi
    # cluster e stays up for the restart check
}

# Check 6 restarts cluster e (its log has a partition and a leader change in
# it); if check 5 left it broken, a fresh cluster with a load stands in.
restart_all() {
    local c=e k before after
    if ! node_alive $c 1 || ! node_alive $c 2 || ! node_alive $c 3; then
        cluster_quit $c
        cluster_start $c 3 || return 1
        wait_leader $c 1 2 3 || return 1
        ask $c "$LEADER" "load 400 100 8 f" 60 || return 1
    fi
    digests_agree $c 1 2 3 || return 1
    before=$DIGEST
    diag "before: $before"
    for k in 1 2 3; do
        node_quit $c $k || { diag "node $k: quit exited $?"; return 1; }
    done
    for k in 1 2 3; do node_start $c $k || return 1; done
    wait_leader $c 1 2 3 || return 1
    digests_agree $c 1 2 3 || return 1
    after=$DIGEST
    diag "after:  $after"
    [ "$(field hash "$after")" = "$(field hash "$before")" ] &&
        [ "$(field keys "$after")" = "$(field keys "$before")" ] &&
        [ "$(field applied "$after")" -ge "$(field applied "$before")" ]
}

check_restart_all() {
    if restart_all; then ok "all replicas restarted on their data directories keep the state"
    else not_ok "all replicas restarted on their data directories keep the state"; cluster_logs e; cluster_kill e; fi
    cluster_quit e
}

# Cluster g's config with a data directory of cluster a (check 1), or of a
# cluster started here for the purpose.
foreign_data_dir() {
    local data rc lines before
    data=$(data_of a 1)
    if [ ! -f "$data/CLUSTER" ]; then
        cluster_start h 1 || return 1
        cluster_quit h
        data=$(data_of h 1)
        [ -f "$data/CLUSTER" ] || { diag "no data directory to use"; return 1; }
    fi
    before=$(cat "$data/CLUSTER")
    mkdir -p "$T/g"
    "$PAXFS" init --nodes 3 --port 20000 "$T/g/conf" >/dev/null 2>&1 || return 1
    timeout -k 5 30 "$KV" --config "$(conf_of g)" --node 1 --data "$data" \
        </dev/null >"$T/g/out" 2>"$T/g/err"
    rc=$?
    lines=$(wc -l <"$T/g/err")
    diag "exit=$rc stderr: $(cat "$T/g/err")"
    [ $rc = 2 ] && [ "$lines" = 1 ] && [ ! -s "$T/g/out" ] &&
        [ "$(cat "$data/CLUSTER")" = "$before" ] && [ ! -e "$data/CLUSTER.tmp" ]
}

check_foreign_data_dir() {
    if foreign_data_dir; then ok "a data directory of another cluster is refused with exit 2 and one line"
    else not_ok "a data directory of another cluster is refused with exit 2 and one line"; fi
}

t_start=$SECONDS
check_3_nodes
check_5_nodes
check_leader_killed
check_follower_frozen
check_leader_partitioned
check_restart_all
check_foreign_data_dir
diag "$n_check checks, $n_failed failed, $((SECONDS - t_start)) s"
[ $n_failed = 0 ]
