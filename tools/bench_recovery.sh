#!/usr/bin/env bash
# tools/bench_recovery.sh BUILD SCRATCH — the `recovery` workload of
# tools/bench.sh: how fast a replica comes back, and what that costs the
# writers, on a 3-node paxfs cluster mounted through FUSE on loopback.
# Prints key=value lines:
#
#   xfer_mb_s              snapshot transfer of 1 GiB of live data (random
#                          content, 64 MiB files) to a follower whose data
#                          directory was wiped: the receiver's own figure
#                          (xfer_done rate=, image + blocks over the
#                          transfer's time), median of 3
#   xfer_catchup_s         from starting the wiped follower to its applied
#                          slot reaching the leader's commit, median of 3
#   raw_seq_write_mb_s     this disk's sequential write speed, dd of 1 GiB
#                          with conv=fdatasync in the same filesystem, same run
#   restart_snap_s         restart of a follower with a long history (at
#                          least HISTORY_SLOTS committed slots of small file
#                          creates), snapshots every SNAP_EVERY slots: from
#                          start to its applied slot reaching the commit it
#                          had, median of 3 (also _mount_s: until mounted)
#   restart_nosnap_s       the same with snapshot_every=1000000000, i.e. the
#                          whole log replayed at start
#   stall_snapshot_ms      the longest gap between completions of a writer
#                          doing 4 KiB pwrite+fsync in a loop on mnt1 for
#                          STALL_S seconds while the replicas snapshot every
#                          SNAP_EVERY slots (its own writes trigger them),
#                          next to stall_nosnap_ms, the same with snapshots
#                          off (medians of 3)
#   stall_transfer_ms      the same writer while a wiped follower receives
#                          the 1 GiB snapshot transfer, next to
#                          stall_idle_ms, the writer alone just before
# PAXFS_BENCH_RECOVERY_MB (default 1024) and PAXFS_BENCH_RECOVERY_SLOTS
# (default 50000) shrink the live data and the history for a quick run.
# Every step runs under `timeout` or a bounded loop; the EXIT trap unmounts
# the mounts and stops the daemons this script started, by PID.
set -euo pipefail
export LC_ALL=C

build=$1
dir=$2
paxfs=$build/tools/paxfs
io=$build/tools/paxfs-bench-fs-io
LIVE_MB=${PAXFS_BENCH_RECOVERY_MB:-1024}
HISTORY_SLOTS=${PAXFS_BENCH_RECOVERY_SLOTS:-50000}
SNAP_EVERY=2000
STALL_S=15
STEP_TIMEOUT=600

command -v jq >/dev/null || { echo "bench_recovery.sh: needs jq" >&2; exit 2; }
mkdir -p "$dir"
declare -a pids=(0 0 0 0)
declare -a opts=("" "" "" "")

is_mounted() { awk -v m="$1" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; }

stop_node() {
    local k=$1 pid=${pids[$1]}
    if is_mounted "$dir/m$k"; then
        fusermount3 -u "$dir/m$k" 2>/dev/null || fusermount3 -u -z "$dir/m$k" 2>/dev/null || true
    fi
    [ "$pid" != 0 ] || return 0
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pids[k]=0
}
stop_all() { local k; for k in 1 2 3; do stop_node "$k"; done; }
trap 'stop_all; rm -rf "$dir"' EXIT
trap 'exit 130' INT TERM

# set_aside PATH...: moves what a step is done with into $dir/old, which
# the EXIT trap deletes, instead of deleting it now. This disk is ext4
# without a journal, where allocating an inode skips, one by one, every
# inode freed in the last minutes (ext4's recently_deleted): an `rm -rf` of
# a 1 GiB data directory (4,000 block files) just before a step made that
# step's file creates pay for the wipe, up to a third more CPU in the
# receiver of a transfer. The steps measure paxfs, not the wipe before them.
set_aside() {
    local p into
    mkdir -p "$dir/old"
    into=$(mktemp -d "$dir/old/XXXXXX") # unique: callers run in subshells too
    for p in "$@"; do
        if [ -e "$p" ]; then mv "$p" "$into/"; fi
    done
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
median3() { sort -g | sed -n 2p; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "nan" }'; }

start_node() { # K: the foreground daemon, logging to log<K>
    local k=$1
    mkdir -p "$dir/m$k"
    "$paxfs" mount --config "$dir/conf/cluster.conf" --node "$k" --data "$dir/d$k" -f \
        ${opts[$k]} "$dir/m$k" >>"$dir/log$k" 2>&1 &
    pids[k]=$!
}
wait_mounted() { # K: up to 60 s
    local k=$1
    for _ in $(seq 600); do
        is_mounted "$dir/m$k" && return 0
        kill -0 "${pids[$k]}" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

status() { timeout 20 "$paxfs" status --config "$dir/conf/cluster.conf" --json 2>/dev/null || true; }
leader=0
find_leader() { # sets leader, 20 s at most
    local l
    for _ in $(seq 100); do
        l=$(status | jq -r '.leader // 0')
        if [ -n "$l" ] && [ "$l" != 0 ]; then leader=$l; return 0; fi
        sleep 0.2
    done
    leader=0
    return 1
}
commit_of_leader() { find_leader && status | jq -r ".nodes[$((leader - 1))].commit"; }
applied_of() { status | jq -r ".nodes[$(($1 - 1))].applied // 0"; }
# wait_applied K SLOT SECONDS: until node K applied SLOT
wait_applied() {
    local k=$1 want=$2 end=$((SECONDS + $3)) a
    while [ $SECONDS -lt $end ]; do
        a=$(applied_of "$k")
        [ "$a" != null ] && [ "$a" -ge "$want" ] && return 0
        sleep 0.05
    done
    echo "bench_recovery.sh: node $k did not reach slot $want in $3 s" >&2
    return 1
}

# start_cluster OPTS: a fresh cluster, every node mounted with OPTS
start_cluster() {
    local k port up
    stop_all
    for _ in 1 2 3 4 5; do
        set_aside "$dir/conf" "$dir"/d? "$dir"/m? "$dir"/log?
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 39990))
        "$paxfs" init --nodes 3 --port "$port" "$dir/conf" >/dev/null
        for k in 1 2 3; do opts[k]=$1; start_node "$k"; done
        up=1
        for k in 1 2 3; do wait_mounted "$k" || up=0; done
        if [ $up = 1 ] && find_leader; then return 0; fi
        stop_all
    done
    echo "bench_recovery.sh: the cluster did not come up: $(tail -n 3 "$dir"/log? 2>/dev/null)" >&2
    return 1
}

# a follower that is not node 1 (the writers use mnt1)
pick_follower() {
    find_leader || return 1
    if [ "$leader" = 3 ]; then echo 2; else echo 3; fi
}

# stall_run FILE SECONDS: prints the writer's max_gap_ms
stall_run() {
    local line
    line=$(timeout $STEP_TIMEOUT "$io" stall "$1" "$2")
    sed -n 's/^max_gap_ms=\([0-9.]*\).*/\1/p' <<<"$line"
}

# wipe_and_transfer K: gives node K a new, empty data directory (the old
# one set aside), restarts it, and waits for the snapshot to be installed
# and the node to catch up; prints "RATE_MB_S CATCHUP_S BYTES".
wipe_and_transfer() {
    local k=$1 target t0 mark line rate bytes
    stop_node "$k"
    set_aside "$dir/d$k"
    target=$(commit_of_leader)
    mark=$(wc -l <"$dir/log$k")
    t0=$(now)
    start_node "$k"
    wait_mounted "$k" || { echo "bench_recovery.sh: node $k did not mount" >&2; return 1; }
    wait_applied "$k" "$target" $STEP_TIMEOUT || return 1
    for _ in $(seq 50); do # the line follows the install at once
        tail -n +$((mark + 1)) "$dir/log$k" | grep -q 'event=xfer_done' && break
        sleep 0.1
    done
    # The first transfer is the one that counts (a second one, of the image
    # only, may follow right after the install).
    line=$(tail -n +$((mark + 1)) "$dir/log$k" | grep 'event=xfer_done' | head -n 1)
    [ -n "$line" ] || { echo "bench_recovery.sh: node $k caught up without a transfer" >&2; return 1; }
    rate=$(sed -n 's/.* rate=\([0-9]*\).*/\1/p' <<<"$line")
    bytes=$(sed -n 's/.* bytes=\([0-9]*\).*/\1/p' <<<"$line")
    echo "$(awk -v r="$rate" 'BEGIN { printf "%.1f", r / 1e6 }') $(elapsed "$t0") $bytes"
}

declare -A res
echo "loadavg_before=$(cut -d' ' -f1 /proc/loadavg) (other work on this machine skews every number below)"

# ---- (a) snapshot transfer of LIVE_MB MiB, and the writer's stall during one --
# About one slot per MiB written: snapshots every LIVE_MB/4 slots, so the
# peers have compacted their logs well past slot 1.
xfer_every=$((LIVE_MB / 4 > 16 ? LIVE_MB / 4 : 16))
start_cluster "-o snapshot_every=$xfer_every,log_slack=$((xfer_every / 4))"
mkdir -p "$dir/m1/live"
for ((i = 0; i < LIVE_MB / 64; i++)); do
    "$io" gen $((64 << 20)) | timeout $STEP_TIMEOUT dd of="$dir/m1/live/f$i" bs=1M iflag=fullblock conv=fsync status=none
done
# Small ops after the data, so that the peers' newest snapshot holds all of
# it: the follower then gets it by transfer, not from the log.
mkdir -p "$dir/m1/tick"
for ((i = 0; i < 2 * xfer_every; i++)); do : >"$dir/m1/tick/t$i"; done
echo "live_data_mb=$LIVE_MB written, leader commit $(commit_of_leader)"
declare -a rates catch
for run in 1 2 3; do
    f=$(pick_follower)
    out=$(wipe_and_transfer "$f")
    read -r rate secs bytes <<<"$out"
    echo "run=$run xfer node=$f bytes=$bytes rate_mb_s=$rate catchup_s=$secs"
    rates+=("$rate")
    catch+=("$secs")
done
res[xfer_mb_s]=$(printf '%s\n' "${rates[@]}" | median3)
res[xfer_catchup_s]=$(printf '%s\n' "${catch[@]}" | median3)

res[stall_idle_ms]=$(stall_run "$dir/m1/stall_idle" 5)
# The writer runs for twice the transfer's usual time, so it spans all of it.
wsecs=$(awk -v c="${res[xfer_catchup_s]}" 'BEGIN { printf "%d", 2 * c + 5 }')
f=$(pick_follower)
"$io" stall "$dir/m1/stall_xfer" "$wsecs" >"$dir/stall.out" &
wp=$!
sleep 1
out=$(wipe_and_transfer "$f")
read -r rate secs bytes <<<"$out"
wait "$wp" || true
res[stall_transfer_ms]=$(sed -n 's/^max_gap_ms=\([0-9.]*\).*/\1/p' "$dir/stall.out")
echo "stall_transfer node=$f xfer_rate_mb_s=$rate catchup_s=$secs $(cat "$dir/stall.out") (writer ran $wsecs s from 1 s before the transfer)"

seq_mb=$(dd if=/dev/zero of="$dir/seq.bin" bs=1M count=1024 conv=fdatasync 2>&1 |
    awk '/copied/ { for (i = 1; i <= NF; i++) if ($i == "s,") s = $(i - 1); print 1073.741824 / s }')
rm -f "$dir/seq.bin"
res[raw_seq_write_mb_s]=$seq_mb

# ---- (b) restart with a long history, (c) the stall while snapshotting --------
# history MODE_OPTS: a fresh cluster and HISTORY_SLOTS slots of small creates
history() {
    local c=0 round=0 line
    start_cluster "$1"
    while [ "$c" -lt "$HISTORY_SLOTS" ] && [ $round -lt 40 ]; do
        round=$((round + 1))
        line=$(timeout $STEP_TIMEOUT "$io" create "$dir/m1/h$round" 5000 4 300)
        c=$(commit_of_leader)
        echo "history round=$round $line commit=$c"
    done
}
# restart_times: restarts a follower 3 times; sets r_applied, r_mount
restart_times() {
    local run f target t0 m
    local -a ta tm
    for run in 1 2 3; do
        f=$(pick_follower)
        target=$(commit_of_leader)
        stop_node "$f"
        t0=$(now)
        start_node "$f"
        wait_mounted "$f" || { echo "bench_recovery.sh: node $f did not remount" >&2; return 1; }
        m=$(elapsed "$t0")
        wait_applied "$f" "$target" $STEP_TIMEOUT || return 1
        ta+=("$(elapsed "$t0")")
        tm+=("$m")
        echo "run=$run restart node=$f slots=$target mount_s=$m applied_s=${ta[-1]} $(grep 'event=replica_open' "$dir/log$f" | tail -n 1 | sed 's/.*event=replica_open //')"
    done
    r_applied=$(printf '%s\n' "${ta[@]}" | median3)
    r_mount=$(printf '%s\n' "${tm[@]}" | median3)
}

for mode in snap nosnap; do
    if [ $mode = snap ]; then history "-o snapshot_every=$SNAP_EVERY"; else history "-o snapshot_every=1000000000"; fi
    restart_times
    res[restart_${mode}_s]=$r_applied
    res[restart_${mode}_mount_s]=$r_mount
    gaps=()
    for run in 1 2 3; do
        before=$(cat "$dir"/log? | grep -c 'event=snapshot slot=' || true)
        gaps+=("$(stall_run "$dir/m1/stall_$mode" $STALL_S)")
        after=$(cat "$dir"/log? | grep -c 'event=snapshot slot=' || true)
        echo "run=$run stall_$mode max_gap_ms=${gaps[-1]} snapshots_during=$((after - before)) (all nodes, ${STALL_S} s)"
    done
    res[stall_${mode}_ms]=$(printf '%s\n' "${gaps[@]}" | median3)
done
stop_all
echo "loadavg_after=$(cut -d' ' -f1 /proc/loadavg)"

echo "xfer_mb_s=${res[xfer_mb_s]} raw_seq_write_mb_s=${res[raw_seq_write_mb_s]} ratio_xfer_vs_seq_write=$(ratio "${res[xfer_mb_s]}" "${res[raw_seq_write_mb_s]}") ratio_xfer_vs_goal_200mib_s=$(ratio "${res[xfer_mb_s]}" 209.7152)"
echo "xfer_catchup_s=${res[xfer_catchup_s]} (${LIVE_MB} MiB live, wiped follower, median of 3)"
echo "restart_snap_s=${res[restart_snap_s]} restart_nosnap_s=${res[restart_nosnap_s]} ratio_restart_snap_vs_nosnap=$(ratio "${res[restart_snap_s]}" "${res[restart_nosnap_s]}") (history >= $HISTORY_SLOTS slots, snapshot_every=$SNAP_EVERY)"
echo "restart_snap_mount_s=${res[restart_snap_mount_s]} restart_nosnap_mount_s=${res[restart_nosnap_mount_s]}"
echo "stall_snapshot_ms=${res[stall_snap_ms]} stall_nosnap_ms=${res[stall_nosnap_ms]} (4 KiB write+fsync on mnt1, ${STALL_S} s)"
echo "stall_transfer_ms=${res[stall_transfer_ms]} stall_idle_ms=${res[stall_idle_ms]}"
