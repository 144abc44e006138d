#!/usr/bin/env bash
# run_fuzz.sh FUZZER SEED_CORPUS_DIR SECONDS
# Runs one libFuzzer target for a bounded time on a scratch copy of its seed
# corpus (the source tree is never written). A crash fails the test and
# leaves the input in the scratch dir, whose path is printed.
set -euo pipefail
fuzzer=$(realpath "$1") seeds=$(realpath -m "$2") seconds=$3
work=$(mktemp -d /tmp/paxfs-fuzz.XXXXXX)
mkdir -p "$work/corpus"
[ -d "$seeds" ] && cp -r "$seeds"/. "$work/corpus/" 2>/dev/null || true
cd "$work"
if "$fuzzer" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 "$work/corpus" 2>"$work/log"; then
    tail -n 15 "$work/log"
    rm -rf "$work"
else
    tail -n 60 "$work/log"
    echo "fuzzer failed; inputs and log kept in $work"
    exit 1
fi
