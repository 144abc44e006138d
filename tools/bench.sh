#!/usr/bin/env bash
# tools/bench.sh [WORKLOAD...] — measure, never guess.
#
# Workloads (default: all of them):
#   core   the consensus core alone: proposals chosen per second, 3 nodes,
#          lossless in-memory network, batching on (median of 5 runs)
#   wal    WAL appends/s with a sync per append, 1 and 16 writers, next to
#          this disk's raw fdatasync rate measured in the same run
#   store  block store write/read MB/s by block size and zstd level, for
#          compressible and random data, next to this disk's raw
#          sequential write speed measured in the same run
#   consensus  3 paxfs-kv replicas (tests/kv_replica.c) on loopback TLS:
#          100 B entries/s with 64 proposers on the leader and on a
#          follower, 1 MiB entries in MB/s, commit latency p50/p99 with one
#          proposer (median of 3 runs, a fresh cluster each), next to this
#          machine's fdatasync rate, sequential write speed and TLS cipher
#          speed measured in the same run
#   fs     a 3-node paxfs cluster mounted through FUSE next to a plain
#          directory on the same disk (tools/bench_fs.sh): sequential write
#          and cold read, fsync'd 4 KiB random writes, file creation with 1
#          and 4 writers, untar/find+stat/rm -rf of /usr/include, and the
#          longest write stall while the leader is frozen or killed
#   recovery  a 3-node paxfs cluster (tools/bench_recovery.sh): snapshot
#          transfer MB/s of 1 GiB of live data to a wiped follower next to
#          the disk's sequential write speed, restart time with a long
#          history with and without snapshots, and the longest write stall
#          while snapshots are taken and while a transfer runs
# Each prints key=value lines; ratios against the raw machine are printed by
# the workload itself. Runs on the release build (built if missing), in a
# scratch directory under $PAXFS_BENCH_DIR (default /tmp) that is removed.
# Speed goals live here, never in timed tests.
set -euo pipefail
cd "$(dirname "$0")/.."

all=(core wal store consensus fs recovery)
workloads=("$@")
[ ${#workloads[@]} -gt 0 ] || workloads=("${all[@]}")
for w in "${workloads[@]}"; do
    case " ${all[*]} " in
        *" $w "*) ;;
        *) echo "bench.sh: unknown workload '$w' (known: ${all[*]})" >&2; exit 2 ;;
    esac
done

build=build/release
if [ ! -f "$build/build.ninja" ]; then
    meson setup "$build" -Dbuildtype=release -Dwerror=true >/dev/null
fi
ninja -C "$build" >/dev/null

scratch=$(mktemp -d "${PAXFS_BENCH_DIR:-/tmp}/paxfs-bench.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

# ---- consensus: a cluster of paxfs-kv processes ----------------------------
# Each replica's stdin and stdout are named pipes held open read-write here,
# so no open blocks; kv_ask sends one command and reads its one answer line.
kv_pid=() kv_w=() kv_r=()
kv_ans=
kv_stop() {
    local k w r
    for k in "${!kv_pid[@]}"; do
        kill -KILL "${kv_pid[$k]}" 2>/dev/null || true
        wait "${kv_pid[$k]}" 2>/dev/null || true
        w=${kv_w[$k]} r=${kv_r[$k]}
        exec {w}>&- {r}<&-
    done
    kv_pid=() kv_w=() kv_r=()
}
kv_ask() { # kv_ask NODE COMMAND TIMEOUT_S
    kv_ans=
    printf '%s\n' "$2" >&"${kv_w[$1]}"
    read -r -t "$3" -u "${kv_r[$1]}" kv_ans
}
kv_field() { # kv_field NAME LINE
    local re="(^| )$1=([^ ]*)"
    [[ $2 =~ $re ]] && printf '%s' "${BASH_REMATCH[2]}"
}
median3() { sort -g | sed -n 2p; }
# CPU time (user + system, clock ticks) the replicas have used so far: the
# machine is shared, so CPU per entry is the number that contention spares.
kv_cpu_ticks() {
    local k t=0 v
    for k in "${!kv_pid[@]}"; do
        v=$(awk '{ print $14 + $15 }' "/proc/${kv_pid[$k]}/stat" 2>/dev/null || echo 0)
        t=$((t + v))
    done
    echo "$t"
}

# kv_cluster DIR: a fresh 3-node cluster on a random base port (another port
# if that one is taken); sets kv_leader and kv_follower.
kv_cluster() {
    local dir=$1 try k i line port ok role leaders w r
    for ((try = 0; try < 5; try++)); do
        rm -rf "$dir" && mkdir -p "$dir"
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 39990))
        "$build/tools/paxfs" init --nodes 3 --port "$port" "$dir/conf" >/dev/null
        ok=1
        for k in 1 2 3; do
            mkfifo "$dir/in$k" "$dir/out$k"
            "$build/tests/paxfs-kv" --config "$dir/conf/cluster.conf" --node "$k" \
                --data "$dir/d$k" <"$dir/in$k" >"$dir/out$k" 2>"$dir/err$k" &
            kv_pid[k]=$!
            exec {w}<>"$dir/in$k" {r}<>"$dir/out$k"
            kv_w[k]=$w kv_r[k]=$r
            if ! read -r -t 20 -u "${kv_r[$k]}" line || [ "$line" != "ready node=$k" ]; then
                ok=0
                break
            fi
        done
        [ $ok = 1 ] && break
        kv_stop
    done
    [ $ok = 1 ] || { echo "bench.sh: cannot start paxfs-kv: $(cat "$dir"/err*)" >&2; return 1; }
    for ((i = 0; i < 100; i++)); do
        leaders=0
        for k in 1 2 3; do
            kv_ask "$k" status 5 || continue
            role=$(kv_field role "$kv_ans")
            if [ "$role" = leader ]; then kv_leader=$k; leaders=$((leaders + 1)); fi
        done
        if [ $leaders = 1 ]; then
            kv_follower=$((kv_leader % 3 + 1))
            return 0
        fi
        sleep 0.2
    done
    echo "bench.sh: no leader elected in 20 s" >&2
    return 1
}

# kv_load NODE N SIZE THREADS PREFIX: runs one load; prints its answer line
# with cpu_us_per_entry (all three replicas' CPU time over N) added, or fails.
kv_load() {
    local node=$1 t0 t1
    shift
    t0=$(kv_cpu_ticks)
    kv_ask "$node" "load $*" 900 || { echo "bench.sh: load $* did not answer" >&2; return 1; }
    [ "$(kv_field failed "$kv_ans")" = 0 ] || { echo "bench.sh: load $*: $kv_ans" >&2; return 1; }
    t1=$(kv_cpu_ticks)
    printf '%s cpu_us_per_entry=%s\n' "$kv_ans" \
        "$(awk -v d=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$1" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')"
}

consensus_bench() {
    local dir=$1 run line
    local -a fsync small_l small_f big p50 p99 cpu_small cpu_big
    trap 'kv_stop; rm -rf "$scratch"' EXIT
    echo "loadavg_before=$(cut -d' ' -f1 /proc/loadavg) (other work on this machine skews every number below)"
    mkdir -p "$dir"
    local cipher
    cipher=$(openssl ciphers -s -tls1_3 2>/dev/null | cut -d: -f1 || true)
    for run in 1 2 3; do
        # The disk's fsync rate, just before each run (the disk is shared).
        mkdir -p "$dir/wal"
        line=$("$build/tools/paxfs-bench-wal" "$dir/wal" 1 | grep '^raw_fdatasync_per_s=')
        rm -rf "$dir/wal"
        fsync+=("${line#*=}")
        kv_cluster "$dir/c$run" || return 1
        if [ "$run" = 1 ]; then
            # The cipher the replicas actually negotiate, asked as node 1.
            local c=$dir/c1/conf port
            port=$(sed -n 's/^node\.2 = .*:\([0-9]*\)$/\1/p' "$c/cluster.conf")
            line=$(timeout 10 openssl s_client -connect "127.0.0.1:$port" -cert "$c/node1.crt" \
                -key "$c/node1.key" -CAfile "$c/ca.crt" -brief </dev/null 2>&1 |
                sed -n 's/^Ciphersuite: *//p' || true)
            [ -n "$line" ] && cipher=$line
        fi
        line=$(kv_load "$kv_leader" 200000 100 64 "x$run") || return 1
        echo "run=$run small_leader $line"
        small_l+=("$(kv_field ops_per_s "$line")")
        cpu_small+=("$(kv_field cpu_us_per_entry "$line")")
        line=$(kv_load "$kv_follower" 200000 100 64 "xf$run") || return 1
        echo "run=$run small_follower $line"
        small_f+=("$(kv_field ops_per_s "$line")")
        line=$(kv_load "$kv_leader" 2000 100 1 "z$run") || return 1
        echo "run=$run latency $line"
        p50+=("$(kv_field p50_us "$line")")
        p99+=("$(kv_field p99_us "$line")")
        line=$(kv_load "$kv_leader" 200 1048576 4 "y$run") || return 1
        echo "run=$run big $line"
        big+=("$(kv_field mb_per_s "$line")")
        cpu_big+=("$(kv_field cpu_us_per_entry "$line")")
        for k in 1 2 3; do kv_ask "$k" quit 1 || true; done
        sleep 0.5
        kv_stop
        rm -rf "$dir/c$run"
    done

    # The machine, measured in the same run.
    local seq_mb cipher_mb evp
    seq_mb=$(dd if=/dev/zero of="$dir/seq.bin" bs=1M count=256 conv=fdatasync 2>&1 |
        awk '/copied/ { for (i = 1; i <= NF; i++) if ($i == "s,") s = $(i - 1); print 268.435456 / s }')
    rm -f "$dir/seq.bin"
    case $cipher in
        TLS_AES_128_GCM_SHA256) evp=aes-128-gcm ;;
        TLS_CHACHA20_POLY1305_SHA256) evp=chacha20-poly1305 ;;
        *) evp=aes-256-gcm ;;
    esac
    cipher_mb=$(openssl speed -evp "$evp" -seconds 1 -bytes 16384 2>/dev/null |
        awk '$1 == "'"$evp"'" || $1 == "'"${evp^^}"'" { v = $NF; sub(/k$/, "", v); print v * 1000 / 1e6 }' | tail -n 1)

    echo "loadavg_after=$(cut -d' ' -f1 /proc/loadavg)"
    local fs sl sf bg l50 l99 cs cb
    fs=$(printf '%s\n' "${fsync[@]}" | median3)
    sl=$(printf '%s\n' "${small_l[@]}" | median3)
    sf=$(printf '%s\n' "${small_f[@]}" | median3)
    bg=$(printf '%s\n' "${big[@]}" | median3)
    l50=$(printf '%s\n' "${p50[@]}" | median3)
    l99=$(printf '%s\n' "${p99[@]}" | median3)
    cs=$(printf '%s\n' "${cpu_small[@]}" | median3)
    cb=$(printf '%s\n' "${cpu_big[@]}" | median3)
    echo "raw_fdatasync_per_s=$fs"
    echo "raw_seq_write_mb_s=$seq_mb"
    echo "tls_cipher=$cipher cipher_${evp//-/_}_16k_mb_s=$cipher_mb"
    echo "small_entries_per_s_leader=$sl small_entries_per_s_follower=$sf (100 B, 64 proposers)"
    echo "big_1mib_mb_s=$bg (4 proposers)"
    echo "commit_latency_p50_us=$l50 commit_latency_p99_us=$l99 (1 proposer)"
    echo "cpu_us_per_small_entry=$cs cpu_us_per_1mib_entry=$cb (3 replicas together, leader load)"
    awk -v fs="$fs" -v sl="$sl" -v sf="$sf" -v bg="$bg" -v l50="$l50" -v seq="$seq_mb" \
        -v cm="$cipher_mb" -v cs="$cs" -v cb="$cb" -v cores="$(nproc)" 'BEGIN {
        printf "ratio_small_leader_entries_per_raw_fdatasync=%.1f\n", sl / fs
        printf "ratio_small_leader_vs_goal_50000=%.3f\n", sl / 50000
        printf "ratio_small_follower_vs_leader=%.2f\n", sf / sl
        printf "ratio_p50_vs_goal_1000us=%.2f\n", l50 / 1000
        printf "ratio_p50_vs_one_fsync=%.2f\n", l50 / (1e6 / fs)
        printf "ratio_big_vs_seq_write_over_3=%.2f (goal >= 0.5)\n", bg / (seq / 3)
        if (cm > 0) printf "ratio_big_vs_cipher=%.3f\n", bg / cm
        printf "cpu_bound_small_entries_per_s=%.0f (all %d cores, nothing else running)\n", cores * 1e6 / cs, cores
        printf "cpu_bound_1mib_mb_s=%.1f\n", cores * 1e6 / cb * 1.048576
    }'
}

echo "machine: $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ)"
for w in "${workloads[@]}"; do
    echo "== $w"
    case $w in
        core)  "$build/tools/paxfs-bench-core" --runs 5 --proposals 2000000 --size 16
               "$build/tools/paxfs-bench-core" --runs 3 --proposals 1000000 --size 100 | tail -n 1 ;;
        wal)   mkdir -p "$scratch/wal" && "$build/tools/paxfs-bench-wal" "$scratch/wal" 2 ;;
        store) mkdir -p "$scratch/store" && "$build/tools/paxfs-bench-store" "$scratch/store" ;;
        consensus) consensus_bench "$scratch/consensus" ;;
        fs)    tools/bench_fs.sh "$build" "$scratch/fs" ;;
        recovery) tools/bench_recovery.sh "$build" "$scratch/recovery" ;;
    esac
done
