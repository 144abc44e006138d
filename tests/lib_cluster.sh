# tests/lib_cluster.sh — the shell the cluster test scripts share, so that a
# fix to a wait, a cleanup or a TAP helper is made once. Sourced, not run:
#     . "$(dirname "$0")/lib_cluster.sh"
# (meson runs the scripts by their path in the source directory, next to
# this file). Sourcing only defines functions and the globals below; nothing
# starts, no trap is set.
#
# For every script:
#   skip_all REASON     TAP plan "1..0 # SKIP REASON", exit 0
#   reap PID...         SIGCONT, SIGKILL and wait: those processes are gone
# For the FUSE scripts (test_mount.sh, test_recovery.sh, test_workloads.sh):
# a 3-node paxfs cluster on 127.0.0.1, node K mounted on $T/mntK, its data
# directory $T/dataK, its output appended to $T/logK.
#   fuse_prereqs WHY    skips unless /dev/fuse, fusermount3 and root (WHY:
#                       what the script needs root for)
#   cluster_traps       the EXIT trap (cleanup) and exit on INT/TERM
#   cluster_up          paxfs init on a random base port (sets port, CONF),
#                       the three nodes started and mounted, or Bail out
#   mnt K, data K, is_mounted DIR, unmount DIR
#   start_node K, wait_mounted K [SECS], stop_node K, kill_node K, stop_all
#   node_opts K         the mount options of node K: ${OPTS[K]}; a script may
#                       redefine it after sourcing
#   wait_bounded PID SECS, shutdown_ok K term|umount
#   TAP: ok, not_ok, skip, note, check, eventually, within (counting in n
#   and failed); now, since; tree_meta DIR [FORMAT]
# The sourcing script sets, before cluster_traps and cluster_up:
#   PAXFS_BIN       the paxfs command (init)
#   T               its mktemp -d directory: everything lives there, and the
#                   EXIT trap removes it
#   MOUNT           the `paxfs mount` command, an array (a prefix such as
#                   `env VAR=1` is fine: env execs, the PID stays the daemon's)
#   OPTS            per node (index 1..3), unquoted words added to the mount
#                   command; or a node_opts of its own
#   FAIL_LOG_LINES  optional, or from the environment: when a check failed
#                   (or KEEP_LOGS=1), the EXIT trap prints this many last
#                   lines of each daemon's log (default 0: the sanitizer
#                   reports only)
# and appends to BG the PIDs of other background jobs it starts (writers),
# which the EXIT trap kills.
#
# The rules these keep: every wait is bounded in count and time; the EXIT
# trap unmounts what the script mounted and stops only the PIDs it started,
# also when a check fails; the network is 127.0.0.1 only.

# shellcheck shell=bash

declare -a PIDS=(0 0 0 0) # the daemon of node K, 0 when none
declare -a BG=()          # other background jobs, killed on exit
n=0                       # TAP checks so far
failed=0                  # of which failed
FAIL_LOG_LINES=${FAIL_LOG_LINES:-0} # log lines per daemon that cleanup shows after a failure

skip_all() {
    echo "1..0 # SKIP $1"
    exit 0
}

reap() { # PID...: SIGCONT first, in case a check froze it
    local p
    for p in "$@"; do
        kill -CONT "$p" 2>/dev/null
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    return 0
}

fuse_prereqs() { # WHY: what the script needs root for, for the skip line
    [ -e /dev/fuse ] || skip_all "no /dev/fuse"
    command -v fusermount3 >/dev/null || skip_all "no fusermount3"
    [ "$(id -u)" -eq 0 ] || skip_all "needs root ($1)"
}

# ---- nodes -----------------------------------------------------------------

mnt() { echo "$T/mnt$1"; }
data() { echo "$T/data$1"; }

is_mounted() { # DIR
    awk -v m="$1" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo
}

# unmount DIR, if mounted; lazily when that fails (busy, or its daemon is
# dead and a process still holds a file open there).
unmount() {
    is_mounted "$1" || return 0
    fusermount3 -u "$1" 2>/dev/null || fusermount3 -u -z "$1"
}

node_opts() { # K
    echo "${OPTS[$1]:-}"
}

start_node() { # K: the foreground daemon of node K, in the background
    local k=$1
    mkdir -p "$(mnt "$k")"
    # A restarted node appends to the same log: mark where each run begins.
    echo "=== start $(date +%T.%N)" >>"$T/log$k"
    # shellcheck disable=SC2046 # node_opts prints words to split
    "${MOUNT[@]}" --config "$CONF" --node "$k" --data "$(data "$k")" -f \
        $(node_opts "$k") "$(mnt "$k")" >>"$T/log$k" 2>&1 &
    PIDS[k]=$!
}

wait_mounted() { # K [SECS]: default 30 s; fails at once if the daemon exits
    local k=$1 i
    for ((i = 0; i < ${2:-30} * 10; i++)); do
        is_mounted "$(mnt "$k")" && return 0
        kill -0 "${PIDS[$k]}" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

stop_node() { # K: unmount, then stop the daemon we started
    local k=$1 pid=${PIDS[$1]}
    if [ "$pid" != 0 ]; then kill -CONT "$pid" 2>/dev/null; fi # in case a check froze it
    unmount "$(mnt "$k")"
    if [ "$pid" != 0 ]; then
        # Unmounted, the daemon exits by itself: 10 s for that, then
        # SIGTERM, 5 s, SIGKILL.
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        PIDS[k]=0
    fi
}

stop_all() {
    local k
    for k in 1 2 3; do stop_node "$k"; done
}

kill_node() { # K: SIGKILL the daemon, then drop its dead mount
    local k=$1
    if [ "${PIDS[$k]}" != 0 ]; then
        reap "${PIDS[$k]}"
        PIDS[k]=0
    fi
    unmount "$(mnt "$k")"
}

# Waits (bounded) for a process we started to exit; SIGKILL after SECS.
# Returns its exit code (127: not our child), 124 if it had to be killed.
wait_bounded() { # PID SECS
    local pid=$1 secs=$2 i
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        return 124
    fi
    wait "$pid" 2>/dev/null
}

sanitizer_reports() { # prints any sanitizer report in the daemons' logs
    local k log
    for k in 1 2 3; do
        for log in "$T/log$k" "$T/data$k/mount.log"; do
            if grep -q 'Sanitizer' "$log" 2>/dev/null; then
                echo "# sanitizer report in ${log#"$T"/}:"
                grep -A 30 'Sanitizer' "$log" | sed 's/^/#   /' | head -40
            fi
        done
    done
}

cleanup() {
    local k
    reap "${BG[@]}"
    stop_all
    sanitizer_reports
    if [ "$FAIL_LOG_LINES" -gt 0 ] && { [ "$failed" != 0 ] || [ "${KEEP_LOGS:-0}" = 1 ]; }; then
        for k in 1 2 3; do
            [ -s "$T/log$k" ] || continue
            echo "# last lines of log$k:"
            grep -v ' level=D' "$T/log$k" | tail -n "$FAIL_LOG_LINES" | sed 's/^/#   /'
        done
    fi
    rm -rf "$T"
}

cluster_traps() {
    trap cleanup EXIT
    trap 'exit 130' INT TERM # so that the EXIT trap runs on a meson timeout too
}

# cluster_up: a port taken by someone else shows as a daemon that exits at
# start: try another base.
cluster_up() {
    local attempt k up
    CONF=$T/cluster/cluster.conf
    for attempt in 1 2 3 4 5; do
        port=$((20000 + RANDOM % 40000))
        rm -rf "$T/cluster" "$T"/data? "$T"/log?
        "$PAXFS_BIN" init --nodes 3 --host 127.0.0.1 --port "$port" "$T/cluster" >/dev/null ||
            { echo "Bail out! paxfs init failed"; exit 1; }
        for k in 1 2 3; do start_node "$k"; done
        up=1
        for k in 1 2 3; do wait_mounted "$k" || up=0; done
        [ $up = 1 ] && return 0
        echo "# attempt $attempt (port $port) did not come up:"
        tail -n 3 "$T"/log? 2>/dev/null | sed 's/^/#   /'
        stop_all
    done
    echo "Bail out! the mounts did not come up"
    exit 1
}

# shutdown_ok K HOW: node K stopped by SIGTERM (HOW=term) or by fusermount3
# -u (umount) exits 0 within 30 s, unmounted, its sanitizers silent.
shutdown_ok() {
    local k=$1 pid=${PIDS[$1]} rc log
    if [ "$2" = term ]; then
        kill -TERM "$pid"
    else
        fusermount3 -u "$(mnt "$k")" || return 1
    fi
    wait_bounded "$pid" 30
    rc=$?
    [ $rc = 127 ] && rc=0 # not our child (a daemon): its exit code is not ours to see
    PIDS[k]=0
    for log in "$T/log$k" "$T/data$k/mount.log"; do
        if grep -q Sanitizer "$log" 2>/dev/null; then grep -A 12 Sanitizer "$log"; return 1; fi
    done
    is_mounted "$(mnt "$k")" && { echo "still mounted"; return 1; }
    [ $rc = 0 ] || { echo "exit $rc"; tail -n 5 "$T/log$k"; return 1; }
}

# ---- TAP -------------------------------------------------------------------
# A check's output goes to $T/out, shown under its line only when it fails.

ok() {
    n=$((n + 1))
    echo "ok $n - $1"
}
not_ok() {
    n=$((n + 1))
    failed=$((failed + 1))
    echo "not ok $n - $1"
    [ -s "$T/out" ] && sed 's/^/#   /' "$T/out" | head -30
}
skip() { # NAME REASON
    n=$((n + 1))
    echo "ok $n - $1 # SKIP $2"
}
note() { echo "# $*"; }

# check NAME CMD...: CMD must succeed now.
check() {
    local name=$1
    shift
    if "$@" >"$T/out" 2>&1; then ok "$name"; else not_ok "$name"; fi
}
# eventually NAME CMD...: CMD must succeed within 3 s (a close-to-open
# mount's kernel caches that nothing invalidated yet live 1 s).
eventually() {
    local name=$1
    shift
    for _ in $(seq 30); do
        if "$@" >"$T/out" 2>&1; then ok "$name"; return 0; fi
        sleep 0.1
    done
    not_ok "$name"
    return 1
}
# within SECS NAME CMD...: CMD must succeed within SECS (by the clock, and
# at most SECS x 5 tries); says how long it took when not at once.
within() {
    local secs=$1 name=$2 end=$((SECONDS + $1)) t i
    shift 2
    t=$(now)
    for ((i = 0; i < secs * 5; i++)); do
        if "$@" >"$T/out" 2>&1; then
            ok "$name"
            [ $i = 0 ] || echo "#   (after $(since "$t") s)"
            return 0
        fi
        [ $SECONDS -lt $end ] || break
        sleep 0.2
    done
    not_ok "$name"
    return 1
}

now() { date +%s.%N; }
since() { echo "$(now) $1" | awk '{ printf "%.1f", $1 - $2 }'; } # T0: seconds since

# tree_meta DIR [FORMAT]: the metadata of a whole tree as a sorted listing,
# by default with no atime: reads on one host do not update it on the others.
tree_meta() {
    (cd "$1" && find . -printf "${2:-%p %y %s %m %U %G %n %T@ %l\n}" | sort)
}
