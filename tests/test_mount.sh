#!/usr/bin/env bash
# tests/test_mount.sh — a 3-node paxfs cluster mounted through FUSE on
# loopback, checked from all three mounts. Prints TAP (`ok N - name`).
#
# mnt1 and mnt2 use the default consistency (close-to-open), mnt3 is strict:
# a change made through one mount must show in mnt3 at once, and in mnt1 and
# mnt2 at once for anything that opens (cat, cmp, ls), or within the 1 s
# cache timeout for a bare stat.
#
# Needs root (or a user allowed to mount FUSE), /dev/fuse and fusermount3;
# skips otherwise. Environment (set by tests/meson.build):
#   PAXFS_BIN        the paxfs command (init; mount once it dispatches it)
#   PAXFS_MOUNT_DEV  `paxfs mount` alone, used while PAXFS_BIN has no mount
# Everything lives in one mktemp directory; the EXIT trap unmounts and stops
# the daemons this script started (by PID), also when a check fails. Every
# wait is bounded. The cluster, its cleanup and the TAP helpers are
# tests/lib_cluster.sh's.
set -u
export LC_ALL=C
# shellcheck source=SCRIPTDIR/lib_cluster.sh
. "$(dirname "$0")/lib_cluster.sh"

[ -n "${PAXFS_BIN:-}" ] || skip_all "PAXFS_BIN not set"
fuse_prereqs "chown checks, mknod"

if "$PAXFS_BIN" mount --help 2>/dev/null | grep -q 'paxfs mount'; then
    MOUNT=("$PAXFS_BIN" mount)
elif [ -n "${PAXFS_MOUNT_DEV:-}" ]; then
    MOUNT=("$PAXFS_MOUNT_DEV" mount)
else
    skip_all "PAXFS_BIN has no mount command and PAXFS_MOUNT_DEV is not set"
fi

T=$(mktemp -d /tmp/paxfs-test-mount.XXXXXX)
# mnt1's op_timeout is short for the no-quorum check of its write-behind.
OPTS=("" "-o op_timeout=5" "" "-o consistency=strict")
cluster_traps
cluster_up
M1=$(mnt 1) M2=$(mnt 2) M3=$(mnt 3)

# ---- check helpers -------------------------------------------------------

# same_content FILE REF: FILE is byte-identical to REF on every mount.
same_content() {
    local rel=$1 ref=$2 rc=0
    for m in "$M1" "$M2" "$M3"; do cmp "$ref" "$m/$rel" || rc=1; done
    return $rc
}
equals() { # EXPECTED CMD...: CMD prints EXPECTED
    local want=$1 got
    shift
    got=$("$@") || return 1
    [ "$got" = "$want" ] || { echo "want '$want' got '$got'"; return 1; }
}
# fails_with MESSAGE CMD...: CMD fails, its output naming MESSAGE (the
# LC_ALL=C strerror text).
fails_with() {
    local msg=$1 out
    shift
    if out=$("$@" 2>&1); then echo "succeeded: $out"; return 1; fi
    case $out in *"$msg"*) return 0 ;; esac
    echo "want '$msg' got '$out'"
    return 1
}
ref=$T/ref
mkdir -p "$ref"

# ---- basic operations, seen from all mounts -------------------------------

printf 'hello paxfs\n' >"$M1/hello"
printf 'hello paxfs\n' >"$ref/hello"
check "create + write on mnt1, same bytes on all mounts" same_content hello "$ref/hello"

printf 'XY' | dd of="$M1/hello" bs=1 seek=3 conv=notrunc status=none
printf 'XY' | dd of="$ref/hello" bs=1 seek=3 conv=notrunc status=none
check "overwrite in place, same bytes on all mounts" same_content hello "$ref/hello"

printf 'appended\n' >>"$M1/hello"
printf 'appended\n' >>"$ref/hello"
check "append, same bytes on all mounts" same_content hello "$ref/hello"

truncate -s 5 "$M1/hello"
truncate -s 5 "$ref/hello"
check "truncate shrinks; strict mnt3 sees size 5 at once" equals 5 stat -c %s "$M3/hello"
check "truncate, same bytes on all mounts" same_content hello "$ref/hello"
truncate -s 20 "$M1/hello"
truncate -s 20 "$ref/hello"
check "truncate grows with zeros, same bytes on all mounts" same_content hello "$ref/hello"

mkdir "$M1/dir"
check "mkdir on mnt1, strict mnt3 sees it at once" test -d "$M3/dir"
check "mkdir, mnt2 lists it" bash -c "ls '$M2' | grep -qx dir"
mkdir "$M1/gone"
rmdir "$M1/gone"
check "rmdir on mnt1, strict mnt3 has no such name" test ! -e "$M3/gone"
eventually "rmdir, mnt2 has no such name" test ! -e "$M2/gone"

printf 'move me\n' >"$M1/dir/a"
mv "$M1/dir/a" "$M1/dir/b"
check "rename on mnt1: strict mnt3 sees the new name only" \
    bash -c "test ! -e '$M3/dir/a' && test -f '$M3/dir/b'"
check "rename: mnt2 reads the file under its new name" equals "move me" cat "$M2/dir/b"

ln "$M1/dir/b" "$M1/dir/hard"
check "link: nlink 2 on strict mnt3" equals 2 stat -c %h "$M3/dir/b"
check "link: same inode under both names on mnt2" \
    bash -c "test \$(stat -c %i '$M2/dir/b') = \$(stat -c %i '$M2/dir/hard')"

ln -s b "$M1/dir/sym"
check "symlink: target on strict mnt3" equals b readlink "$M3/dir/sym"
check "symlink: followed on mnt2" equals "move me" cat "$M2/dir/sym"

chmod 640 "$M1/dir/b"
check "chmod on mnt1, strict mnt3 sees 640" equals 640 stat -c %a "$M3/dir/b"
eventually "chmod, mnt2 sees 640" equals 640 stat -c %a "$M2/dir/b"

chown 1234:5678 "$M1/dir/b"
check "chown on mnt1, strict mnt3 sees 1234:5678" equals 1234:5678 stat -c %u:%g "$M3/dir/b"

touch -m -d '2001-02-03 04:05:06 UTC' "$M1/dir/b"
check "utimes on mnt1, strict mnt3 sees the mtime" equals 981173106 stat -c %Y "$M3/dir/b"
touch "$M1/dir/b"
check "utimes now: mtime within 60 s of this host's clock" \
    bash -c "d=\$(( \$(date +%s) - \$(stat -c %Y '$M3/dir/b') )); [ \$d -ge -60 ] && [ \$d -le 60 ]"

if command -v python3 >/dev/null; then
    xattr_set() { python3 -c 'import os,sys; os.setxattr(sys.argv[1], "user.color", b"blue")' "$1"; }
    xattr_get() { python3 -c 'import os,sys; print(os.getxattr(sys.argv[1], "user.color").decode())' "$1"; }
    xattr_list() { python3 -c 'import os,sys; print(",".join(sorted(os.listxattr(sys.argv[1]))))' "$1"; }
    xattr_rm() { python3 -c 'import os,sys; os.removexattr(sys.argv[1], "user.color")' "$1"; }
    xattr_set "$M1/dir/b"
    check "setxattr on mnt1, getxattr on strict mnt3" equals blue xattr_get "$M3/dir/b"
    eventually "listxattr on mnt2" equals user.color xattr_list "$M2/dir/b"
    xattr_rm "$M1/dir/b"
    check "removexattr on mnt1, gone on strict mnt3 (ENODATA)" fails_with "No data available" \
        xattr_get "$M3/dir/b"
else
    for name in "setxattr/getxattr" "listxattr" "removexattr"; do
        skip "$name" "no python3"
    done
fi

mkfifo "$M1/fifo"
check "mkfifo on mnt1: a fifo on strict mnt3" test -p "$M3/fifo"
mknod "$M1/null" c 1 3
check "mknod c 1 3 on mnt1: char device 1,3 on strict mnt3" \
    equals "character special file 1 3" stat -c '%F %t %T' "$M3/null"

# ---- error codes ---------------------------------------------------------

check "mkdir of an existing name is EEXIST" fails_with "File exists" mkdir "$M1/dir"
check "rmdir of a non-empty directory is ENOTEMPTY" fails_with "Directory not empty" rmdir "$M2/dir"
check "reading a missing file is ENOENT" fails_with "No such file or directory" cat "$M3/nothing"
check "rmdir of a file is ENOTDIR" fails_with "Not a directory" rmdir "$M1/hello"

# ---- cross-mount visibility ---------------------------------------------

head -c 100000 /dev/urandom >"$ref/x2"
cp "$ref/x2" "$M2/x2"
check "written and closed on mnt2: mnt1 and mnt3 read it at once" same_content x2 "$ref/x2"

printf 'v1\n' >"$M2/vis"
mv "$M2/vis" "$M2/vis2"
check "rename on mnt2 seen on strict mnt3 at once" \
    bash -c "test ! -e '$M3/vis' && test -e '$M3/vis2'"
chmod 600 "$M2/vis2"
check "chmod on mnt2 seen on strict mnt3 at once" equals 600 stat -c %a "$M3/vis2"
truncate -s 1 "$M2/vis2"
check "truncate on mnt2 seen on strict mnt3 at once" equals 1 stat -c %s "$M3/vis2"
rm "$M2/vis2"
check "unlink on mnt2 seen on strict mnt3 at once" test ! -e "$M3/vis2"
eventually "unlink on mnt2 seen on mnt1" test ! -e "$M1/vis2"

# ---- concurrent O_APPEND from two mounts ---------------------------------

appender() { # MOUNT TAG COUNT
    local i
    for i in $(seq "$3"); do echo "$2 line $i" >>"$1/applog" || return 1; done
}
appender "$M1" one 200 &
a1=$!
appender "$M2" two 200 &
a2=$!
wait $a1; r1=$?
wait $a2; r2=$?
check "two mounts appending concurrently: both loops succeed" test $r1 = 0 -a $r2 = 0
for k in 1 2 3; do
    check "concurrent appends: 400 distinct lines on mnt$k" \
        bash -c "test \$(sort -u '$(mnt $k)/applog' | wc -l) = 400 && test \$(wc -l < '$(mnt $k)/applog') = 400"
done

# ---- a 16 MiB file, a sparse file -----------------------------------------

head -c $((16 << 20)) /dev/urandom >"$ref/big"
cp "$ref/big" "$M1/big"
check "16 MiB file copied into mnt1 is identical on all mounts" same_content big "$ref/big"

truncate -s 5G "$M1/sparse"
check "sparse 5 GiB file: size on strict mnt3" equals 5368709120 stat -c %s "$M3/sparse"
check "sparse 5 GiB file: du under 1 MiB" bash -c "test \$(du -k '$M1/sparse' | cut -f1) -lt 1024"
check "sparse file: a hole reads as zeros on mnt2" \
    bash -c "dd if='$M2/sparse' bs=1M skip=4096 count=1 status=none | cmp - <(head -c 1048576 /dev/zero)"
printf 'tail' | dd of="$M1/sparse" bs=1 seek=$((5 << 30)) conv=notrunc status=none
check "sparse file: a write past the hole, read on mnt3" \
    equals tail bash -c "dd if='$M3/sparse' bs=1 skip=$((5 << 30)) status=none"

# ---- unlinked while open -------------------------------------------------

printf 'still here\n' >"$M1/open-unlinked"
exec 3<"$M1/open-unlinked"
rm "$M1/open-unlinked"
check "unlinked file: the name is gone on strict mnt3" test ! -e "$M3/open-unlinked"
sleep 0.5 # the orphan thread runs every 200 ms: it must not release what is open
check "unlinked while open: still readable through the fd" equals "still here" cat <&3
exec 3<&-

# ---- a follower killed while writing, restarted --------------------------

writer() {
    local i
    for i in $(seq 100); do echo "w $i" >"$M1/during-$i" || return 1; done
}
writer &
w=$!
sleep 0.3
kill_node 3
wait $w
check "writes on mnt1 go on while node 3 is killed" test $? = 0
# This time as a daemon: paxfs mount returns 0 only once the mount is up.
# Its PID is the process whose command line names our (unique) data dir.
start_daemon() { # K
    local k=$1 p
    # shellcheck disable=SC2046 # node_opts prints words to split
    "${MOUNT[@]}" --config "$CONF" --node "$k" --data "$(data "$k")" \
        $(node_opts "$k") "$(mnt "$k")" || return 1
    is_mounted "$(mnt "$k")" || { echo "returned before the mount was up"; return 1; }
    for p in /proc/[0-9]*; do
        if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q -- "--data $T/data$k "; then
            PIDS[$k]=${p#/proc/}
        fi
    done
    [ "${PIDS[$k]}" != 0 ] || { echo "daemon pid not found"; return 1; }
}
check "node 3 restarts as a daemon: exit 0 once mounted" start_daemon 3
check "restarted node 3 shows the files written meanwhile" \
    bash -c "test \$(ls '$M3' | grep -c '^during-') = 100"
check "restarted node 3 reads the 16 MiB file identically" cmp "$ref/big" "$M3/big"

# ---- bad input -----------------------------------------------------------

# bad_input NAME ARGS...: exit 2, one line on stderr, nothing created.
bad_input() {
    local name=$1
    shift
    local before after rc s=$T/scratch
    mkdir -p "$s"
    before=$(ls "$T")
    "${MOUNT[@]}" "$@" >"$s/bad.out" 2>"$s/bad.err"
    rc=$?
    after=$(ls "$T")
    [ "$before" = "$after" ] || echo "$T changed: $after" >>"$s/bad.err"
    if [ $rc = 2 ] && [ "$(wc -l <"$s/bad.err")" = 1 ] && [ ! -s "$s/bad.out" ]; then
        ok "$name"
        echo "#   $(cat "$s/bad.err")"
    else
        cp "$s/bad.err" "$T/out"
        echo "exit $rc" >>"$T/out"
        not_ok "$name"
    fi
}
"$PAXFS_BIN" init --nodes 3 --port $((port + 10)) "$T/other" >/dev/null
mkdir "$T/spare"
bad_input "bad input: missing mountpoint is exit 2" --config "$CONF" --node 1 --data "$T/newdata" "$T/no-such-dir"
bad_input "bad input: node 9 not in the cluster is exit 2" --config "$CONF" --node 9 --data "$T/newdata" "$T/spare"
bad_input "bad input: unreadable config is exit 2" --config "$T/no/cluster.conf" --node 1 --data "$T/newdata" "$T/spare"
bad_input "bad input: data dir of another cluster is exit 2" --config "$T/other/cluster.conf" --node 1 --data "$T/data1" "$T/spare"
bad_input "bad input: busy mountpoint is exit 2" --config "$CONF" --node 1 --data "$T/newdata" "$M1"
bad_input "bad input: unknown -o option is exit 2" --config "$CONF" --node 1 --data "$T/newdata" -o bogus "$T/spare"
bad_input "bad input: bad consistency mode is exit 2" --config "$CONF" --node 1 --data "$T/newdata" -o consistency=sometimes "$T/spare"
bad_input "bad input: a cache_timeout of 0 is exit 2" --config "$CONF" --node 1 --data "$T/newdata" -o cache_timeout=0 "$T/spare"
bad_input "bad input: missing --node is exit 2" --config "$CONF" --data "$T/newdata" "$T/spare"
# A block store of another format version (1 named blocks by SHA-256) or
# block size is refused before anything in it is touched.
mkdir -p "$T/oldstore/store"
printf 'paxfs-store\nformat=1\nblock_size=%s\n' "$(sed -n 's/^block_size *= *//p' "$CONF")" >"$T/oldstore/store/FORMAT"
bad_input "bad input: a block store of another format version is exit 2" --config "$CONF" --node 1 --data "$T/oldstore" "$T/spare"
printf 'paxfs-store\nformat=2\nblock_size=4096\n' >"$T/oldstore/store/FORMAT"
bad_input "bad input: a block store of another block size is exit 2" --config "$CONF" --node 1 --data "$T/oldstore" "$T/spare"
check "bad input: the refused block store is untouched (no LOCK, nothing else)" \
    test "$(find "$T/oldstore" | wc -l)" = 3

# ---- write-behind ----------------------------------------------------------

# A write not yet closed: this host sees it at once (stat, read, append
# after it), another host at the latest once it is closed.
exec 4>"$M1/behind"
printf 'first ' >&4
check "write-behind: an unclosed write's size shows at once on its host" \
    equals 6 stat -c %s "$M1/behind"
check "write-behind: an unclosed write reads back at once on its host" \
    equals "first " cat "$M1/behind"
# A listing hands the kernel each entry's attributes (READDIRPLUS), but not
# the size of a file whose writes still wait in this host's write-behind
# (up to 20 ms): the kernel must keep the size it knows. Each round's writer
# keeps the file open (a close would flush the write), says it wrote by
# creating a file outside the mount (on fd 3: redirecting its fd 1, the
# file's, would close it), and the directory is listed right after; a round
# that lists after the 20 ms proves nothing, and passes.
listing_keeps_pending_size() {
    local i f wp got
    mkdir -p "$M1/listed"
    for i in $(seq 10); do
        f="$M1/listed/f$i"
        rm -f "$T/written"
        sh -c 'exec >"$1"; printf first; : 3>"$2"; exec sleep 5' sh "$f" "$T/written" &
        wp=$!
        for _ in $(seq 3000); do [ -e "$T/written" ] && break; sleep 0.001; done
        ls -l "$M1/listed" >/dev/null
        got=$(stat -c %s "$f")
        kill "$wp"
        wait "$wp" 2>/dev/null
        [ "$got" = 5 ] || { echo "round $i: size $got after a listing, want 5"; return 1; }
    done
}
check "write-behind: listing its directory keeps an unclosed write's size on its host" \
    listing_keeps_pending_size
printf 'second' >&4
exec 4>&-
check "write-behind: closed, the file is whole on strict mnt3" equals "first second" cat "$M3/behind"
check "write-behind: closed, the file is whole on mnt2" equals "first second" cat "$M2/behind"

# A setattr of a file whose writes wait in this host's write-behind travels
# in the log entry of the last of them (FSM_WRITE_SETATTR), as tar's
# write, utimensat, chmod does: it still lands after them.
exec 4>"$M1/carried"
printf '%s' "$(seq 1000)" >&4
touch -m -d '2001-02-03 04:05:06 UTC' "$M1/carried"
chmod 604 "$M1/carried"
exec 4>&-
check "write-behind: utimes after an unclosed write: strict mnt3 has the bytes" \
    equals "$(printf '%s' "$(seq 1000)" | cksum)" sh -c "cksum <'$M3/carried'"
check "write-behind: utimes after an unclosed write: its mtime, not the write's, on mnt3" \
    equals "981173106 604" stat -c '%Y %a' "$M3/carried"
exec 4>"$M1/cut"
printf '0123456789abcdef' >&4
truncate -s 10 "$M1/cut"
exec 4>&-
check "write-behind: a truncate after an unclosed write cuts it, on mnt2" \
    equals 0123456789 cat "$M2/cut"

# Not closed, not synced: other hosts still see a write soon (its extent
# is proposed 20 ms after it was written).
shows_soon() { # up to 10 s
    for _ in $(seq 100); do
        [ "$(cat "$M2/unclosed" 2>/dev/null)" = "not closed" ] && return 0
        sleep 0.1
    done
    return 1
}
exec 4>"$M1/unclosed"
printf 'not closed' >&4
check "write-behind: an unclosed write shows on mnt2 without a close" shows_soon
exec 4>&-

# No quorum (both peers frozen): the writes are taken, fsync fails with EIO
# once mnt1's op_timeout (5 s) ran out, and the cluster goes on after. The
# file is opened before the freeze: an open needs a quorum too (its read
# barrier), and failed with EIO before any write was taken. 32 MiB are 32
# extents for 8 workers: the fsync fails after one op_timeout, not four
# (the extents behind the first failure fail unproposed).
noquorum_fsync() {
    local rc t0 took
    exec 5<>"$M1/noquorum" || return 1
    kill -STOP "${PIDS[2]}" "${PIDS[3]}"
    t0=$(now)
    dd if=/dev/zero bs=1M count=32 conv=fsync status=none >&5 2>"$T/noquorum.err"
    rc=$?
    took=$(since "$t0")
    kill -CONT "${PIDS[2]}" "${PIDS[3]}"
    exec 5>&-
    cat "$T/noquorum.err"
    echo "fsync failed after $took s"
    [ $rc != 0 ] && grep -q "fsync failed.*Input/output error" "$T/noquorum.err" &&
        awk -v t="$took" 'BEGIN { exit !(t < 14) }'
}
check "write-behind: with no quorum, an fsync of 32 MiB taken fails with EIO after about op_timeout" noquorum_fsync
write_again() { # up to 30 s: the thawed peers may hold an election first
    for _ in $(seq 60); do
        echo again >"$M1/after-noquorum" 2>/dev/null && [ "$(cat "$M3/after-noquorum")" = again ] &&
            return 0
        sleep 0.5
    done
    return 1
}
check "write-behind: after the quorum is back, writes on mnt1 work again" write_again

# ---- all three mounts agree ----------------------------------------------

rm -f "$M1/fifo" "$M1/null" # diff would open them
for k in 2 3; do
    eventually "mnt1 and mnt$k hold the same tree (diff -r)" diff -r --no-dereference "$M1" "$(mnt $k)"
    eventually "mnt1 and mnt$k hold the same metadata" \
        diff <(tree_meta "$M1") <(tree_meta "$(mnt $k)")
done

# ---- clean shutdown ------------------------------------------------------

# SIGTERM for node 1, fusermount3 -u for nodes 2 and 3: each daemon exits 0,
# its sanitizers silent.
check "SIGTERM unmounts node 1; exit 0, sanitizers silent" shutdown_ok 1 term
check "fusermount3 -u stops node 2; exit 0, sanitizers silent" shutdown_ok 2 umount
check "fusermount3 -u stops node 3; exit 0, sanitizers silent" shutdown_ok 3 umount

echo "1..$n"
[ $failed = 0 ]
