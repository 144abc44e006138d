#!/usr/bin/env bash
# tools/quickstart.sh [stop] — a 3-node paxfs cluster on this machine, on
# loopback, in a few commands' time.
#
#   tools/quickstart.sh        install what is missing, build build/release,
#                              create the cluster in ./demo (once), mount
#                              node K at demo/mntK (data in demo/dataK, log in
#                              demo/nodeK.log), write a file through mnt1 and
#                              read it back through mnt2 and mnt3, show status
#   tools/quickstart.sh stop   unmount and stop the daemons started here
#                              (their PIDs are in demo/pids; nothing else is
#                              touched); the data stays: start again to remount
#
# PAXFS_DEMO=DIR puts the demo elsewhere; PAXFS_DEMO_PORT=BASE picks the
# ports (BASE, BASE+1, BASE+2; default 7400) when the cluster is created.
# Mounting needs /dev/fuse and root or a user allowed to use fusermount3.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
demo=${PAXFS_DEMO:-$root/demo}
case $demo in /*) ;; *) demo=$root/$demo ;; esac
build=$root/build/release
nodes=(1 2 3)

say() { printf '%s\n' "quickstart: $*"; }
die() { printf '%s\n' "quickstart: $*" >&2; exit 1; }

is_mounted() {
    awk -v m="$1" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo
}

stop_demo() {
    for k in "${nodes[@]}"; do
        local mp=$demo/mnt$k
        if is_mounted "$mp"; then
            fusermount3 -u "$mp" 2>/dev/null || fusermount3 -u -z "$mp" || true
            say "unmounted $mp"
        fi
    done
    [ -f "$demo/pids" ] || return 0
    local pid
    while read -r pid; do
        [ -n "$pid" ] || continue
        # Only our daemons: the PID must still be a paxfs mount process.
        if kill -0 "$pid" 2>/dev/null && grep -qa 'mount' "/proc/$pid/cmdline" 2>/dev/null; then
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
            say "stopped daemon $pid"
        fi
    done <"$demo/pids"
    rm -f "$demo/pids"
}

if [ "${1:-}" = stop ]; then
    stop_demo
    exit 0
elif [ $# -gt 0 ]; then
    die "usage: tools/quickstart.sh [stop]"
fi

# ---- install and build ---------------------------------------------------

# The same list as tools/test.sh; installed only when missing.
packages=(meson ninja-build pkg-config gcc clang libclang-rt-14-dev
          libfuse3-dev fuse3 libssl-dev libzstd-dev libcriterion-dev openssl)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -e /dev/fuse ] || die "/dev/fuse is missing: load the fuse module (modprobe fuse)"

if [ ! -f "$build/build.ninja" ]; then
    say "configuring $build"
    meson setup "$build" -Dbuildtype=release >/dev/null
fi
say "building $build"
ninja -C "$build" >/dev/null

paxfs=$build/tools/paxfs
mount_cmd=("$paxfs" mount)
if ! "$paxfs" mount --help 2>/dev/null | grep -q 'paxfs mount'; then
    # Until the paxfs command dispatches `mount`, the stand-alone build of it.
    mount_cmd=("$build/tests/paxfs-mount-dev" mount)
fi

# ---- the cluster ---------------------------------------------------------

mkdir -p "$demo"
if [ ! -f "$demo/cluster.conf" ]; then
    say "creating a 3-node cluster in $demo"
    rm -rf "$demo/cluster.tmp"
    "$paxfs" init --nodes 3 --host 127.0.0.1 --port "${PAXFS_DEMO_PORT:-7400}" "$demo" >/dev/null
fi

for k in "${nodes[@]}"; do
    mp=$demo/mnt$k
    mkdir -p "$mp"
    if is_mounted "$mp"; then
        say "node $k is already mounted at $mp"
        continue
    fi
    # A daemon killed without unmounting leaves a dead mount: clear it.
    stat "$mp" >/dev/null 2>&1 || fusermount3 -u -z "$mp" 2>/dev/null || true
    setsid "${mount_cmd[@]}" --config "$demo/cluster.conf" --node "$k" --data "$demo/data$k" \
        -f "$mp" >>"$demo/node$k.log" 2>&1 </dev/null &
    echo $! >>"$demo/pids"
    say "started node $k (pid $!), mounting $mp"
done

for k in "${nodes[@]}"; do
    mp=$demo/mnt$k
    for _ in $(seq 300); do is_mounted "$mp" && break; sleep 0.1; done
    is_mounted "$mp" || die "node $k did not mount within 30 s: see $demo/node$k.log (tools/quickstart.sh stop cleans up)"
done
say "all three nodes are mounted"

# ---- show it working -----------------------------------------------------

file=hello-$(date +%H%M%S).txt
{
    echo "written through mnt1 at $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "replicated by Multi-Paxos to every node"
} >"$demo/mnt1/$file"
for k in "${nodes[@]}"; do
    echo "--- $demo/mnt$k/$file"
    cat "$demo/mnt$k/$file"
    sha256sum "$demo/mnt$k/$file" | sed 's/ .*//'
done
echo "--- ls -l $demo/mnt3"
ls -l "$demo/mnt3"

echo "--- paxfs status"
if "$paxfs" status --help >/dev/null 2>&1 || "$paxfs" status --help 2>&1 | grep -q 'usage'; then
    "$paxfs" status --config "$demo/cluster.conf" || true
else
    echo "(paxfs status is not available in this build)"
fi

cat <<EOF

The cluster is up: $demo/mnt1, $demo/mnt2 and $demo/mnt3 are one
shared directory. Try writing in one and reading in another, or stop a node:
  kill \$(sed -n 2p $demo/pids)      # node 2 goes down; mnt1 and mnt3 go on
Stop everything with: tools/quickstart.sh stop
EOF
