#!/usr/bin/env bash
# tools/test.sh — install what is missing, build, run every test.
#
# Three builds, each a meson build directory under build/:
#   debug    gcc, -O0 -g, AddressSanitizer + UndefinedBehaviorSanitizer
#   release  gcc, -O2, -Wall -Wextra -Werror
#   fuzz     clang, libFuzzer + ASan + UBSan; runs only the fuzz suite, each
#            target for a bounded time
# Ends with one line: "N passed, N failed, N skipped" over every suite run,
# and exits non-zero if anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the build and the tests need; installed only when missing.
packages=(meson ninja-build pkg-config gcc clang libclang-rt-14-dev
          libfuse3-dev fuse3 libssl-dev libzstd-dev libcriterion-dev openssl jq)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "test.sh: installing ${missing[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

jobs=$(nproc 2>/dev/null || echo 2)
passed=0 failed=0 skipped=0

# setup DIR CC MESON_ARGS...: configure once, reconfigure if the dir exists.
setup() {
    local dir=$1 cc=$2
    shift 2
    if [ -f "$dir/build.ninja" ]; then
        CC=$cc meson setup --reconfigure "$dir" "$@" >/dev/null
    else
        CC=$cc meson setup "$dir" "$@" >/dev/null
    fi
}

# run_suite DIR MESON_TEST_ARGS...: runs meson test and adds its counts.
run_suite() {
    local dir=$1
    shift
    local log rc=0
    log=$(mktemp)
    meson test -C "$dir" --print-errorlogs --num-processes "$jobs" "$@" 2>&1 | tee "$log" || rc=$?
    local ok fail skip timeout unexpected
    ok=$(awk '/^Ok:/ {print $2}' "$log" | tail -n1)
    fail=$(awk '/^Fail:/ {print $2}' "$log" | tail -n1)
    skip=$(awk '/^Skipped:/ {print $2}' "$log" | tail -n1)
    timeout=$(awk '/^Timeout:/ {print $2}' "$log" | tail -n1)
    unexpected=$(awk '/^Unexpected Pass:/ {print $3}' "$log" | tail -n1)
    rm -f "$log"
    passed=$((passed + ${ok:-0}))
    failed=$((failed + ${fail:-0} + ${timeout:-0} + ${unexpected:-0}))
    skipped=$((skipped + ${skip:-0}))
    if [ "$rc" -ne 0 ] && [ "${fail:-0}" -eq 0 ] && [ "${timeout:-0}" -eq 0 ]; then
        failed=$((failed + 1)) # meson itself failed
    fi
}

build_failed() {
    echo "test.sh: build $1 failed"
    failed=$((failed + 1))
}

echo "== debug build (ASan + UBSan)"
if setup build/debug gcc -Dbuildtype=debug -Db_sanitize=address,undefined -Db_lundef=false \
    && ninja -C build/debug; then
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        run_suite build/debug --timeout-multiplier 4
else
    build_failed debug
fi

echo "== release build (-Werror)"
if setup build/release gcc -Dbuildtype=release -Dwerror=true && ninja -C build/release; then
    run_suite build/release
else
    build_failed release
fi

echo "== fuzz build (clang, libFuzzer + ASan + UBSan)"
if setup build/fuzz clang -Dbuildtype=debugoptimized -Dfuzz=true -Db_sanitize=address,undefined \
        -Db_lundef=false && ninja -C build/fuzz; then
    run_suite build/fuzz --suite fuzz
else
    build_failed fuzz
fi

echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
