#!/usr/bin/env bash
# tools/bench_fs.sh BUILD SCRATCH — the `fs` workload of tools/bench.sh.
#
# A 3-node paxfs cluster mounted through FUSE on loopback and, in the same
# run, a plain directory on the same disk, put through the same workloads.
# Prints key=value lines: the paxfs figure, the local figure and their ratio
# (paxfs / local: above 1 is better for rates, worse for times).
#
#   seq_write_mb_s     1 GiB of incompressible bytes, dd bs=1M conv=fsync
#   seq_read_mb_s      reading it back with cold caches (drop_caches when
#                      permitted; on paxfs through another node's mount)
#   rand_write_iops    4 KiB writes at random offsets, fsync after each
#   create_files_per_s 10,000 files of 4 KiB: one writer, then 4 writers in
#                      4 directories
#   untar_s            extracting a tar of /usr/include
#   find_stat_s        cold `find | xargs stat` over it (another mount)
#   rm_s               rm -rf of it
#   stall_*_ms         paxfs only: the longest gap between completions of a
#                      writer doing 4 KiB fsync'd writes on a follower's
#                      mount while the leader is frozen (SIGSTOP for 3 s) and
#                      while it is killed (SIGKILL)
# Medians of 3 runs for the write, read and IOPS figures; one run for the
# rest. Every step runs under `timeout`; the EXIT trap unmounts the mounts
# and stops the daemons this script started, by PID.
set -euo pipefail
export LC_ALL=C

build=$1
dir=$2
paxfs=$build/tools/paxfs
io=$build/tools/paxfs-bench-fs-io
SEQ_MB=${PAXFS_BENCH_FS_SEQ_MB:-1024}
CREATE_FILES=${PAXFS_BENCH_FS_FILES:-10000}
STEP_TIMEOUT=600

mkdir -p "$dir"
declare -a pids=(0 0 0 0)

is_mounted() { awk -v m="$1" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; }

stop_all() {
    local k pid
    for k in 1 2 3; do
        pid=${pids[$k]}
        [ "$pid" != 0 ] && kill -CONT "$pid" 2>/dev/null || true
        if is_mounted "$dir/m$k"; then
            fusermount3 -u "$dir/m$k" 2>/dev/null || fusermount3 -u -z "$dir/m$k" 2>/dev/null || true
        fi
        [ "$pid" != 0 ] || continue
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pids[k]=0
    done
}
trap 'stop_all; rm -rf "$dir"' EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
median3() { sort -g | sed -n 2p; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "nan" }'; }

can_drop=no
if sync && echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then can_drop=yes; fi
drop_caches() { if [ $can_drop = yes ]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi; }

# ---- the cluster ---------------------------------------------------------
leader=0
find_leader() { # sets leader (the node all reachable nodes agree on), 20 s at most
    local j
    for _ in $(seq 100); do
        j=$(timeout 10 "$paxfs" status --config "$dir/conf/cluster.conf" --json 2>/dev/null || true)
        leader=$(sed -n 's/^{[^[]*"leader":\([0-9]*\).*/\1/p' <<<"$j")
        [ -n "$leader" ] && [ "$leader" != 0 ] && return 0
        sleep 0.2
    done
    leader=0
    return 1
}

start_cluster() {
    local try k port up
    for try in 1 2 3 4 5; do
        rm -rf "$dir/conf" "$dir"/d? "$dir"/m? "$dir"/log?
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 39990))
        "$paxfs" init --nodes 3 --port "$port" "$dir/conf" >/dev/null
        for k in 1 2 3; do
            mkdir -p "$dir/m$k"
            "$paxfs" mount --config "$dir/conf/cluster.conf" --node "$k" --data "$dir/d$k" -f \
                "$dir/m$k" >"$dir/log$k" 2>&1 &
            pids[k]=$!
        done
        up=1
        for k in 1 2 3; do
            for _ in $(seq 300); do
                is_mounted "$dir/m$k" && break
                kill -0 "${pids[$k]}" 2>/dev/null || break
                sleep 0.1
            done
            is_mounted "$dir/m$k" || up=0
        done
        if [ $up = 1 ] && find_leader; then return 0; fi
        stop_all
    done
    echo "bench_fs.sh: the cluster did not come up: $(tail -n 3 "$dir"/log? 2>/dev/null)" >&2
    return 1
}

# ---- one workload on one directory -----------------------------------------
# run_all NAME WRITE_DIR READ_DIR: READ_DIR sees WRITE_DIR's files (on paxfs,
# the same directory through another node's mount).
run_all() {
    local name=$1 w=$2 r=$3 run line t0
    local -a ws rs ios
    for run in 1 2 3; do
        rm -f "$w/seq"
        line=$(set -o pipefail; "$io" gen $((SEQ_MB << 20)) |
            timeout $STEP_TIMEOUT dd of="$w/seq" bs=1M iflag=fullblock conv=fsync 2>&1 | grep copied)
        ws+=("$(awk '{ for (i = 1; i <= NF; i++) if ($i == "s,") s = $(i - 1); print '"$SEQ_MB"' * 1.048576 / s }' <<<"$line")")
        drop_caches
        line=$(timeout $STEP_TIMEOUT dd if="$r/seq" of=/dev/null bs=1M 2>&1 | grep copied)
        rs+=("$(awk '{ for (i = 1; i <= NF; i++) if ($i == "s,") s = $(i - 1); print '"$SEQ_MB"' * 1.048576 / s }' <<<"$line")")
        echo "run=$run $name seq_write_mb_s=${ws[-1]} seq_read_mb_s=${rs[-1]}"
    done
    rm -f "$w/seq"
    for run in 1 2 3; do
        line=$(timeout $STEP_TIMEOUT "$io" randwrite "$w/rand" 64 5)
        ios+=("$(sed -n 's/^iops=\([0-9.]*\).*/\1/p' <<<"$line")")
        echo "run=$run $name rand_write $line"
    done
    rm -f "$w/rand"
    res[${name}_seq_write_mb_s]=$(printf '%s\n' "${ws[@]}" | median3)
    res[${name}_seq_read_mb_s]=$(printf '%s\n' "${rs[@]}" | median3)
    res[${name}_rand_write_iops]=$(printf '%s\n' "${ios[@]}" | median3)

    line=$(timeout $STEP_TIMEOUT "$io" create "$w/c1" "$CREATE_FILES" 1 120)
    echo "$name create_1_writer $line"
    res[${name}_create_files_per_s_1]=$(sed -n 's/^files_per_s=\([0-9.]*\).*/\1/p' <<<"$line")
    line=$(timeout $STEP_TIMEOUT "$io" create "$w/c4" "$CREATE_FILES" 4 120)
    echo "$name create_4_writers $line"
    res[${name}_create_files_per_s_4]=$(sed -n 's/^files_per_s=\([0-9.]*\).*/\1/p' <<<"$line")
    rm -rf "$w/c1" "$w/c4"

    t0=$(now)
    timeout $STEP_TIMEOUT tar -C "$w" -xf "$dir/include.tar"
    res[${name}_untar_s]=$(elapsed "$t0")
    drop_caches
    t0=$(now)
    timeout $STEP_TIMEOUT find "$r/usr" -print0 | timeout $STEP_TIMEOUT xargs -0 stat >/dev/null
    res[${name}_find_stat_s]=$(elapsed "$t0")
    t0=$(now)
    timeout $STEP_TIMEOUT rm -rf "$w/usr"
    res[${name}_rm_s]=$(elapsed "$t0")
    echo "$name untar_s=${res[${name}_untar_s]} find_stat_s=${res[${name}_find_stat_s]} rm_s=${res[${name}_rm_s]}"
}

# stall SIGNAL: the writer on a follower, the leader signalled 2 s in.
stall() {
    local sig=$1 f wp line
    find_leader || { echo "bench_fs.sh: no leader" >&2; return 1; }
    f=$((leader % 3 + 1))
    "$io" stall "$dir/m$f/stall_$sig" 9 >"$dir/stall.out" &
    wp=$!
    sleep 2
    kill -"$sig" "${pids[$leader]}"
    if [ "$sig" = STOP ]; then
        sleep 3
        kill -CONT "${pids[$leader]}"
    fi
    wait "$wp" || true
    line=$(cat "$dir/stall.out")
    echo "stall_$sig leader=$leader writer_node=$f $line"
    res[stall_$sig]=$(sed -n 's/^max_gap_ms=\([0-9.]*\).*/\1/p' <<<"$line")
}

declare -A res
echo "drop_caches=$can_drop loadavg_before=$(cut -d' ' -f1 /proc/loadavg)"
tar -C / -cf "$dir/include.tar" usr/include
start_cluster
mkdir -p "$dir/local"
run_all paxfs "$dir/m1" "$dir/m2"
run_all local "$dir/local" "$dir/local"
rm -rf "$dir/local"
stall STOP
stall KILL
echo "loadavg_after=$(cut -d' ' -f1 /proc/loadavg)"

for k in seq_write_mb_s seq_read_mb_s rand_write_iops create_files_per_s_1 \
    create_files_per_s_4 untar_s find_stat_s rm_s; do
    p=${res[paxfs_$k]:-nan} l=${res[local_$k]:-nan}
    echo "${k}_paxfs=$p ${k}_local=$l ratio_$k=$(ratio "$p" "$l")"
done
echo "stall_frozen_leader_3s_ms=${res[stall_STOP]:-nan} (goal <= 1000)"
echo "stall_killed_leader_ms=${res[stall_KILL]:-nan} (goal <= 200)"
