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
# Each prints key=value lines; ratios against the raw machine are printed by
# the workload itself. Runs on the release build (built if missing), in a
# scratch directory under $PAXFS_BENCH_DIR (default /tmp) that is removed.
# Speed goals live here, never in timed tests.
set -euo pipefail
cd "$(dirname "$0")/.."

all=(core wal store)
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

echo "machine: $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ)"
for w in "${workloads[@]}"; do
    echo "== $w"
    case $w in
        core)  "$build/tools/paxfs-bench-core" --runs 5 --proposals 2000000 --size 16
               "$build/tools/paxfs-bench-core" --runs 3 --proposals 1000000 --size 100 | tail -n 1 ;;
        wal)   mkdir -p "$scratch/wal" && "$build/tools/paxfs-bench-wal" "$scratch/wal" 2 ;;
        store) mkdir -p "$scratch/store" && "$build/tools/paxfs-bench-store" "$scratch/store" ;;
    esac
done
