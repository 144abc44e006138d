#!/usr/bin/env bash
# tests/test_workloads.sh — what users do to a paxfs mount, on a 3-node
# cluster mounted through FUSE on loopback. Prints TAP (`ok N - name`).
#
#  1. POSIX error codes: each call made through posix_errors on mnt1 and on a
#     local ext4 reference directory, expecting one errno name; afterwards
#     the tree is the same on all three mounts and the same as the reference.
#  2. Real workloads: a tar of part of /usr/include extracted into mnt1,
#     `cp -a` of it on mnt2, git init/add/commit on mnt3, cc compiling
#     against the extracted headers and the binary run from all mounts;
#     afterwards the three mounts hold the same tree (diff -r, find
#     listing, sha256sum).
#  3. Concurrent writers on three hosts: one 8 MiB file each, and O_APPEND
#     records into one shared file: nothing lost, nothing torn, each
#     writer's records in its order.
#  4. A writer that survives a SIGKILLed leader, a SIGKILLed follower and a
#     leader frozen (SIGSTOP) for 5 s; the killed node restarts from its
#     data dir and serves the same bytes. Stall times are printed, not
#     asserted.
# Bad input for `paxfs mount` is test_mount.sh's.
#
# mnt1 and mnt2 use close-to-open consistency, mnt3 strict; all three are
# mounted allow_other so that the calls made as other uids (sticky bit,
# chmod by a non-owner) reach paxfs at all.
#
# Needs root, /dev/fuse and fusermount3; skips otherwise. Environment (set by
# tests/meson.build):
#   PAXFS_BIN        the paxfs command (init, mount, status)
#   POSIX_ERRORS     tests/posix_errors
#   PAXFS_BUILDTYPE, PAXFS_SANITIZE   a debug or sanitizer build gets the
#                    smaller loads (see WL_SLOW)
#   WORKLOADS_SECTIONS  optional, e.g. "1 3": run only these sections
#   WORKLOADS_TREE      optional, the directories (relative to /) section 2
#                    tars up, e.g. "usr/include" for the whole benchmark tree
# Everything lives in one mktemp directory; the EXIT trap unmounts and stops
# the daemons this script started (by PID), also when a check fails. Every
# wait is bounded. The cluster, its cleanup and the TAP helpers are
# tests/lib_cluster.sh's.
set -u
export LC_ALL=C
# shellcheck source=SCRIPTDIR/lib_cluster.sh
. "$(dirname "$0")/lib_cluster.sh"

[ -n "${PAXFS_BIN:-}" ] || skip_all "PAXFS_BIN not set"
[ -n "${POSIX_ERRORS:-}" ] || skip_all "POSIX_ERRORS not set"
fuse_prereqs "other uids, chown, allow_other"
"$PAXFS_BIN" mount --help 2>/dev/null | grep -q 'paxfs mount' ||
    skip_all "PAXFS_BIN has no mount command"

SECTIONS=${WORKLOADS_SECTIONS:-1 2 3 4}
want() { case " $SECTIONS " in *" $1 "*) return 0 ;; esac; return 1; }

# A sanitizer or unoptimized build runs paxfs several times slower: smaller
# trees and files keep the script within its time budget there.
WL_SLOW=0
case "${PAXFS_SANITIZE:-none}" in none | "") ;; *) WL_SLOW=1 ;; esac
[ "${PAXFS_BUILDTYPE:-}" = debug ] && WL_SLOW=1
# The workload tree is a part of /usr/include: the whole of it (~9000
# entries, ~130 MB) took 14 minutes of section 2 in a release build (tar -x
# 115 s, cp -a 51 s, git add+commit 285 s, the rest comparing the mounts),
# far over this script's budget. WORKLOADS_TREE="usr/include" runs it all.
if [ $WL_SLOW = 1 ]; then
    FAIL_MIB=32
    INCLUDE_DIRS=(usr/include/linux usr/include/openssl) # ~930 entries
else
    FAIL_MIB=256
    INCLUDE_DIRS=(usr/include/linux usr/include/openssl usr/include/x86_64-linux-gnu
        usr/include/asm-generic) # ~1400 entries
fi
# shellcheck disable=SC2206
[ -n "${WORKLOADS_TREE:-}" ] && INCLUDE_DIRS=($WORKLOADS_TREE)
APPEND_LINES=1000 # records per appender
RECORD=64         # bytes per record, newline included

PE=$POSIX_ERRORS
T=$(mktemp -d /tmp/paxfs-test-workloads.XXXXXX)
chmod 711 "$T" # the calls made as other uids must reach the mounts and ref
MOUNT=("$PAXFS_BIN" mount)
OPTS=("" "-o allow_other" "-o allow_other" "-o allow_other,consistency=strict")
cluster_traps
cluster_up
M1=$(mnt 1) M2=$(mnt 2) M3=$(mnt 3)
exec 3>&1 # the TAP stream, for timings printed from inside a check
echo "# cluster up on base port $port in $T (slow build: $WL_SLOW)"

# ---- check helpers -------------------------------------------------------

tree_sums() { # DIR: sha256 of every regular file (the sparse 4 GiB ones
    # are read back piecewise by their own checks: reading their holes
    # through FUSE would cost minutes)
    # (-size -1G would mean "0 GiB rounded up", i.e. empty files only.)
    (cd "$1" && find . -type f -size -1073741824c -print0 | sort -z | xargs -0 -r sha256sum)
}
# same_meta A B FORMAT: the tree_meta listings (find -printf FORMAT) of A
# and B are the same; on a difference, prints the first differing lines side
# by side (A | B).
same_meta() {
    tree_meta "$1" "$3" >"$T/meta.a" && tree_meta "$2" "$3" >"$T/meta.b" || return 1
    cmp -s "$T/meta.a" "$T/meta.b" && return 0
    echo "$(diff "$T/meta.a" "$T/meta.b" | grep -c '^[<>]') lines differ; A = $1 | B = $2:"
    diff -y --suppress-common-lines -W 200 "$T/meta.a" "$T/meta.b" | head -12
    return 1
}
same_sums() { diff <(tree_sums "$1") <(tree_sums "$2"); }

# ---- 1. POSIX error codes ------------------------------------------------
#
# errno_is NAME EXPECTED [--as U:G] OP ARGS...: runs `posix_errors ARGS` with
# its working directory in mnt1/px and in the local reference directory; the
# word printed on the mount must be EXPECTED, and the same as on the local
# filesystem under /tmp (named "ext4" in the messages).

REF=$T/ref
PX1=$M1/px
errno_is() {
    local name=$1 want=$2 got ref
    shift 2
    ref=$(cd "$REF" && "$PE" "$@" 2>&1)
    got=$(cd "$PX1" && "$PE" "$@" 2>&1)
    if [ "$got" = "$want" ] && [ "$ref" = "$want" ]; then
        ok "$name"
    else
        echo "posix_errors $*: want $want, got $got on paxfs, $ref on ext4" >"$T/out"
        not_ok "$name"
    fi
}
# on_both CMD...: a setup step run the same way in mnt1/px and in ref.
on_both() {
    (cd "$REF" && "$@") && (cd "$PX1" && "$@")
}
# same_on_all REL CMD...: CMD REL prints the same on all three mounts and
# on the reference.
same_on_all() {
    local rel=$1 want k got
    shift
    want=$(cd "$REF" && "$@" "$rel" 2>&1)
    for k in 1 2 3; do
        got=$(cd "$(mnt $k)/px" && "$@" "$rel" 2>&1)
        [ "$got" = "$want" ] || { echo "mnt$k: '$got', ext4: '$want'"; return 1; }
    done
}

same_on_all_each() { # CMD REL...: same_on_all for each REL (CMD one word)
    local cmd=$1 rel
    shift
    # shellcheck disable=SC2086 # CMD is one word, unquoted on purpose
    for rel in "$@"; do same_on_all "$rel" $cmd || return 1; done
}
# equals_all_each WANT 'CMD ARGS' REL...: CMD REL prints WANT on all mounts
equals_all_each() {
    local want=$1 cmd=$2 rel k got
    shift 2
    for rel in "$@"; do
        for k in 1 2 3; do
            # shellcheck disable=SC2086
            got=$(cd "$(mnt $k)/px" && $cmd "$rel" 2>&1)
            [ "$got" = "$want" ] || { echo "mnt$k $rel: '$got', want '$want'"; return 1; }
        done
    done
}

acl_sets_mode() { # REL MODE
    local rel=$1 mode=$2 got want m k
    want=$(cd "$REF" && "$PE" acl-mode "$rel" "$mode" && stat -c %a "$rel")
    want=${want//$'\n'/, mode }
    got=$(cd "$PX1" && "$PE" acl-mode "$rel" "$mode") || return 1
    case $got in
    EOPNOTSUPP) chmod "$mode" "$PX1/$rel" ;; # what cp does then; keeps the trees alike
    OK) ;;
    *) echo "acl-mode: $got"; return 1 ;;
    esac
    for k in 1 2 3; do
        m=$(stat -c %a "$(mnt $k)/px/$rel")
        [ "$m" = "$mode" ] || { echo "ext4: $want; paxfs said $got, then mode $m on mnt$k"; return 1; }
    done
}

section1() {
    local t0 n255 n256 G4
    t0=$(now)
    mkdir -p "$REF" "$PX1"
    chmod 755 "$REF" "$PX1"
    n255=$(printf 'n%.0s' $(seq 255))
    n256=$(printf 'n%.0s' $(seq 256))

    # creation
    errno_is "open O_CREAT|O_EXCL of a new name succeeds" OK creat-excl excl
    errno_is "open O_CREAT|O_EXCL of an existing name is EEXIST" EEXIST creat-excl excl
    errno_is "a 255-byte name can be created" OK creat "$n255"
    errno_is "a 256-byte name is ENAMETOOLONG (creat)" ENAMETOOLONG creat "$n256"
    errno_is "a 256-byte name is ENAMETOOLONG (mkdir)" ENAMETOOLONG mkdir "$n256" 755
    errno_is "a 256-byte name is ENAMETOOLONG (symlink)" ENAMETOOLONG symlink excl "$n256"
    errno_is "a 256-byte name is ENAMETOOLONG (rename target)" ENAMETOOLONG rename excl "$n256"
    errno_is "creat under a missing directory is ENOENT" ENOENT creat nodir/x
    errno_is "creat under a regular file is ENOTDIR" ENOTDIR creat excl/x
    check "a 255-byte name is listed on mnt2 and strict mnt3" \
        bash -c "ls '$M2/px' | grep -qx '$n255' && ls '$M3/px' | grep -qx '$n255'"

    # renameat2 flags
    on_both sh -c 'echo a >a; echo b >b'
    errno_is "RENAME_NOREPLACE onto an existing name is EEXIST" EEXIST rename a b noreplace
    errno_is "RENAME_NOREPLACE onto a free name succeeds" OK rename a a2 noreplace
    errno_is "RENAME_EXCHANGE swaps two files" OK rename a2 b exchange
    check "RENAME_EXCHANGE: the swapped contents read the same on all mounts" \
        same_on_all_each cat a2 b
    errno_is "RENAME_EXCHANGE with a missing target is ENOENT" ENOENT rename a2 missing exchange
    errno_is "RENAME_NOREPLACE|RENAME_EXCHANGE is EINVAL" EINVAL rename a2 b noreplace,exchange
    on_both mkdir -p d/sub/deeper e/full f
    on_both touch e/full/x
    errno_is "rename of a directory into its own subtree is EINVAL" EINVAL rename d d/sub/deeper/d
    errno_is "rename of a directory onto a non-empty directory is ENOTEMPTY" \
        ENOTEMPTY rename f e
    errno_is "rename of a directory onto a file is ENOTDIR" ENOTDIR rename f b
    errno_is "rename of a file onto a directory is EISDIR" EISDIR rename b f
    errno_is "rename of a directory onto an empty directory succeeds" OK rename f d/sub/deeper
    errno_is "RENAME_EXCHANGE of a file and a directory succeeds" OK rename b d exchange

    # unlink, rmdir, link, loops
    errno_is "unlink of a directory is EISDIR" EISDIR unlink e
    errno_is "rmdir of a file is ENOTDIR" ENOTDIR rmdir a2
    errno_is "rmdir of a non-empty directory is ENOTEMPTY" ENOTEMPTY rmdir e
    errno_is "link to a directory is EPERM" EPERM link e e-link
    errno_is "link onto an existing name is EEXIST" EEXIST link a2 excl
    errno_is "link of a file succeeds" OK link a2 a2-link
    errno_is "open of a directory for writing is EISDIR" EISDIR open-write e
    on_both ln -s loop1 loop2
    on_both ln -s loop2 loop1
    errno_is "open through a symlink loop is ELOOP" ELOOP open-write loop1

    # writes at odd places
    on_both sh -c 'printf abc >app'
    errno_is "O_APPEND writes at the end after a seek to 0" OK append app def
    check "O_APPEND: abcdef on all mounts" same_on_all app cat
    G4=$((4 << 30))
    errno_is "pwrite beyond 4 GiB succeeds" OK pwrite big $((G4 + 5)) beyond
    errno_is "pwrite across the 4 GiB boundary succeeds" OK pwrite big $((G4 - 2)) XYZW
    eventually "pwrite beyond 4 GiB: size on all mounts" same_on_all big stat -c %s
    check "pwrite beyond 4 GiB: strict mnt3 reads the bytes back" \
        bash -c "cd '$M3/px' && test \"\$('$PE' pread big $((G4 - 2)) 13)\" = \"XYZW\$(printf '\\0')beyond\""
    check "pwrite beyond 4 GiB: mnt2 reads the bytes back" \
        bash -c "cd '$M2/px' && test \"\$('$PE' pread big $((G4 + 5)) 6)\" = beyond"
    check "pwrite beyond 4 GiB: the low 4 GiB are untouched (zeros at offset 5)" \
        bash -c "cd '$M2/px' && test \"\$('$PE' pread big 5 6 | od -An -tx1 | tr -d ' ')\" = 0000000000000a"

    # xattr flags
    errno_is "setxattr of a new name succeeds" OK setxattr a2 user.k v1
    errno_is "setxattr XATTR_CREATE of an existing name is EEXIST" EEXIST setxattr a2 user.k v2 create
    errno_is "setxattr XATTR_REPLACE of a missing name is ENODATA" ENODATA setxattr a2 user.none v2 replace
    errno_is "setxattr XATTR_REPLACE of an existing name succeeds" OK setxattr a2 user.k v3 replace
    check "xattr: v3 on all mounts" same_on_all a2 "$PE" getxattr user.k

    # A minimal POSIX ACL is how `cp -a` (and setfacl) set a mode where the
    # filesystem takes ACLs: it must either set the mode, as on ext4, or be
    # refused (EOPNOTSUPP, and cp falls back to chmod) -- never be stored
    # as an opaque xattr that leaves the mode as it was.
    on_both touch acl
    on_both chmod 600 acl
    eventually "a minimal POSIX ACL (cp -a's chmod) sets the mode or is EOPNOTSUPP" acl_sets_mode acl 754

    # permissions, as other uids: 2001 and 2002 (no such users needed)
    on_both mkdir tmp
    on_both chmod 1777 tmp
    errno_is "uid 2001 creates a file in a sticky directory" OK --as 2001:2001 creat tmp/mine
    errno_is "uid 2002 creates a file in a sticky directory" OK --as 2002:2002 creat tmp/theirs
    errno_is "sticky bit: uid 2002 cannot unlink uid 2001's file (EPERM)" \
        EPERM --as 2002:2002 unlink tmp/mine
    errno_is "sticky bit: uid 2002 cannot rename uid 2001's file (EPERM)" \
        EPERM --as 2002:2002 rename tmp/mine tmp/stolen
    errno_is "sticky bit: the owner unlinks its own file" OK --as 2002:2002 unlink tmp/theirs
    errno_is "chmod by a non-owner is EPERM" EPERM --as 2002:2002 chmod tmp/mine 777
    errno_is "chown by a non-root user is EPERM" EPERM --as 2001:2001 chown tmp/mine 2002 2001
    errno_is "explicit utimes by a non-owner is EPERM" EPERM --as 2002:2002 utimes tmp/mine 1000
    errno_is "open for writing without write permission is EACCES" \
        EACCES --as 2002:2002 open-write tmp/mine
    errno_is "the owner chmods its file" OK --as 2001:2001 chmod tmp/mine 600
    errno_is "reading a 0600 file of another uid is EACCES" EACCES --as 2002:2002 pread tmp/mine 0 1
    on_both mkdir sgid
    on_both chown 0:4321 sgid
    on_both chmod 2777 sgid
    errno_is "a file created in a setgid directory" OK creat sgid/file
    errno_is "a directory created in a setgid directory" OK mkdir sgid/sub 755
    errno_is "a file created by uid 2001 in a setgid directory" OK --as 2001:2001 creat sgid/u2001
    eventually "setgid directory: new entries take group 4321 on all mounts" \
        equals_all_each 4321 'stat -c %g' sgid/file sgid/sub sgid/u2001
    eventually "setgid directory: the new subdirectory is setgid too (mode 2755)" \
        equals_all_each 2755 'stat -c %a' sgid/sub

    # the resulting state, the same everywhere
    rm -f "$REF/loop1" "$REF/loop2" "$PX1/loop1" "$PX1/loop2"
    for k in 2 3; do
        eventually "errors section: mnt1 and mnt$k hold the same metadata" \
            same_meta "$PX1" "$(mnt $k)/px" '%p %y %s %m %U %G %n %l %T@ %C@ %i\n'
        eventually "errors section: mnt1 and mnt$k hold the same bytes" \
            same_sums "$PX1" "$(mnt $k)/px"
    done
    # (a directory's size is the filesystem's own business; no times: the
    # reference directory's are its own)
    local fmt='%p %y %s %m %U %G %n %l\n'
    check "errors section: the tree is the one ext4 ends with (names, types, sizes, modes, owners, links)" \
        diff <(tree_meta "$REF" "$fmt" | sed 's/^\([^ ]* d\) [0-9]*/\1 -/') \
        <(tree_meta "$PX1" "$fmt" | sed 's/^\([^ ]* d\) [0-9]*/\1 -/')
    check "errors section: the bytes are the ones ext4 ends with" same_sums "$REF" "$PX1"
    echo "# section 1 took $(since "$t0") s"
}

# ---- 2. real workloads ---------------------------------------------------

HELLO_C='#include <stdio.h>
#include <string.h>
#include <linux/limits.h>
#include <openssl/sha.h>

/* Built from headers read off the mount; prints what the test expects. */
int main(void)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    const char *msg = "paxfs";
    SHA256((const unsigned char *)msg, strlen(msg), md);
    printf("NAME_MAX=%d sha256=", NAME_MAX);
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++)
        printf("%02x", md[i]);
    printf("\n");
    return 0;
}
'

timed() { # LABEL CMD...: runs CMD, prints its time as a TAP comment
    local label=$1 t rc
    shift
    t=$(now)
    "$@"
    rc=$?
    echo "# $label: $(since "$t") s" >&3
    return $rc
}

git_commit_all() { # DIR
    (cd "$1" && git init -q && git config user.name "paxfs test" &&
        git config user.email "test@paxfs.invalid" && git add -A &&
        git commit -q -m "the extracted tree")
}
git_clean_on() { # DIR: one commit, nothing modified or untracked
    local st cnt
    cnt=$(git -C "$1" rev-list --count HEAD) || return 1
    [ "$cnt" = 1 ] || { echo "commits: $cnt"; return 1; }
    st=$(git -C "$1" status --porcelain) || return 1
    [ -z "$st" ] || { echo "$st" | head; return 1; }
}
hello_runs_on() { # K: the binary built on mnt1 runs from mnt K
    local want got
    want="NAME_MAX=255 sha256=$(printf paxfs | sha256sum | cut -d' ' -f1)"
    got=$("$(mnt "$1")/wl/src/hello") || return 1
    [ "$got" = "$want" ] || { echo "got '$got' want '$want'"; return 1; }
}
tree_is_source() { # DIR: DIR/usr/include... equals the host's
    local d rc=0
    for d in "${INCLUDE_DIRS[@]}"; do
        diff -r --no-dereference "/$d" "$1/$d" || rc=1
    done
    return $rc
}

meta_is_source() { # DIR: DIR/usr/include... has the host's modes, owners
    # (when root extracted it) and mtimes, in whole seconds as tar keeps them
    local d rc=0 fmt='%p %y %m %Ts %l\n'
    [ "$(id -u)" = 0 ] && fmt='%p %y %m %U %G %Ts %l\n'
    for d in "${INCLUDE_DIRS[@]}"; do
        diff <(tree_meta "/$d" "$fmt") <(tree_meta "$1/$d" "$fmt") || rc=1
    done
    return $rc
}

section2() {
    local t0 nfiles k
    t0=$(now)
    tar -C / -cf "$T/include.tar" "${INCLUDE_DIRS[@]}" ||
        { echo "Bail out! cannot tar ${INCLUDE_DIRS[*]}"; exit 1; }
    nfiles=$(tar -tf "$T/include.tar" | wc -l)
    echo "# the tree: ${INCLUDE_DIRS[*]}, $nfiles entries, $(du -h "$T/include.tar" | cut -f1)"
    mkdir -p "$M1/wl/tree"
    check "tar extracts ${INCLUDE_DIRS[*]} into mnt1" \
        timed "tar -x on mnt1" tar -C "$M1/wl/tree" -xf "$T/include.tar"
    check "the extracted tree equals the source (diff -r on mnt1)" tree_is_source "$M1/wl/tree"
    check "tar kept the source's modes, owners and mtimes (seen on mnt3)" \
        meta_is_source "$M3/wl/tree"
    check "cp -a of the tree on mnt2 into a new directory" \
        timed "cp -a on mnt2" cp -a "$M2/wl/tree" "$M2/wl/copy"
    check "the copy equals the source (diff -r on mnt2)" tree_is_source "$M2/wl/copy"
    check "cp -a kept modes, owners, mtimes and symlinks" \
        same_meta "$M2/wl/tree" "$M2/wl/copy" '%p %y %s %m %U %G %T@ %l\n'
    if command -v git >/dev/null; then
        check "git init + add + commit of the tree on mnt3" \
            timed "git on mnt3" git_commit_all "$M3/wl/tree"
        check "git fsck --strict on mnt3" git -C "$M3/wl/tree" fsck --strict --no-progress
        check "git status on mnt3: one commit, clean" git_clean_on "$M3/wl/tree"
        check "git status on mnt1 (another host): one commit, clean" git_clean_on "$M1/wl/tree"
    else
        for name in "git init + add + commit" "git fsck" "git status on mnt3" "git status on mnt1"; do
            skip "$name" "no git"
        done
    fi
    mkdir -p "$M1/wl/src"
    printf '%s' "$HELLO_C" >"$M1/wl/src/hello.c"
    if command -v cc >/dev/null; then
        check "cc compiles on mnt1 against the headers extracted there" \
            timed "cc on mnt1" cc -std=c11 -Wall -Werror -I "$M1/wl/tree/usr/include" \
            -o "$M1/wl/src/hello" "$M1/wl/src/hello.c" -lcrypto
        check "cc read its headers from the mount (-H)" \
            bash -c "cc -std=c11 -H -fsyntax-only -I '$M1/wl/tree/usr/include' '$M1/wl/src/hello.c' 2>&1 |
                     grep -q '$M1/wl/tree/usr/include/openssl/sha.h'"
        for k in 1 2 3; do check "the compiled program runs from mnt$k" hello_runs_on "$k"; done
    else
        skip "cc compiles on mnt1" "no cc"
        skip "cc read its headers from the mount" "no cc"
        for k in 1 2 3; do skip "the compiled program runs from mnt$k" "no cc"; done
    fi
    for k in 2 3; do
        eventually "workloads: mnt1 and mnt$k hold the same tree (diff -r)" \
            diff -r --no-dereference "$M1/wl" "$(mnt $k)/wl"
        eventually "workloads: mnt1 and mnt$k list the same (find %p %s %m %n %y %l)" \
            same_meta "$M1/wl" "$(mnt $k)/wl" '%p %s %m %n %y %l\n'
        eventually "workloads: mnt1 and mnt$k hold the same bytes (sha256sum)" \
            same_sums "$M1/wl" "$(mnt $k)/wl"
    done
    echo "# section 2 took $(since "$t0") s"
}

# ---- 3. concurrent writers on three hosts --------------------------------
#
# Writer k (one per mount) copies its own 8 MiB file; appender k writes
# APPEND_LINES records of RECORD bytes, one write(2) each (dd bs=RECORD from
# a regular file), O_APPEND, to one shared file. A record of writer k is
# "w<k> <6-digit sequence> <padding of the letter a, b or c>\n".

make_records() { # K FILE
    awk -v k="$1" -v n="$APPEND_LINES" -v rl="$RECORD" 'BEGIN {
        pad = ""
        for (i = 0; i < rl - 11; i++) pad = pad substr("abc", k, 1)
        for (i = 1; i <= n; i++) printf "w%d %06d %s\n", k, i, pad
    }' >"$2"
}
# appends_intact FILE: every record whole, each exactly once, each writer's
# records in the order it wrote them.
appends_intact() {
    local size want=$((3 * APPEND_LINES * RECORD))
    size=$(stat -c %s "$1") || return 1
    [ "$size" = "$want" ] || echo "size $size, want $want"
    awk -v n="$APPEND_LINES" -v rl="$RECORD" '
        BEGIN { for (k = 1; k <= 3; k++) { p = ""; for (i = 0; i < rl - 11; i++) p = p substr("abc", k, 1); pad[k] = p } }
        {
            k = substr($0, 2, 1) + 0; s = substr($0, 4, 6)
            if (length($0) != rl - 1 || substr($0, 1, 1) != "w" || k < 1 || k > 3 ||
                substr($0, 3, 1) != " " || s !~ /^[0-9][0-9][0-9][0-9][0-9][0-9]$/ ||
                substr($0, 10, 1) != " " || substr($0, 11) != pad[k]) {
                if (torn++ < 5) printf "torn record at line %d: %s\n", NR, substr($0, 1, 80)
                next
            }
            s += 0
            if (s != last[k] + 1 && disorder++ < 5)
                printf "writer %d: record %d after %d\n", k, s, last[k]
            last[k] = s; count[k]++
        }
        END {
            bad = torn + disorder
            for (k = 1; k <= 3; k++) if (count[k] != n) { printf "writer %d: %d records\n", k, count[k]; bad++ }
            exit bad != 0
        }' "$1" && [ "$size" = "$want" ]
}
files_intact() { # K: file1..3 written from the three mounts, read on mnt K
    local w rc=0
    for w in 1 2 3; do cmp "$T/data-$w" "$(mnt "$1")/cw/file$w" || rc=1; done
    return $rc
}

section3() {
    local t0 k rc_files=0 rc_appends=0
    local -a fw=() aw=()
    t0=$(now)
    for k in 1 2 3; do
        head -c $((8 << 20)) /dev/urandom >"$T/data-$k"
        make_records "$k" "$T/records-$k"
    done
    mkdir "$M1/cw"
    : >"$M1/cw/shared"
    for k in 1 2 3; do
        dd if="$T/data-$k" of="$(mnt $k)/cw/file$k" bs=1M conv=fsync status=none &
        fw+=($!)
        dd if="$T/records-$k" of="$(mnt $k)/cw/shared" bs="$RECORD" oflag=append \
            conv=notrunc,fsync status=none &
        aw+=($!)
    done
    BG+=("${fw[@]}" "${aw[@]}")
    for k in 0 1 2; do
        wait_bounded "${fw[$k]}" 300 || rc_files=1
        wait_bounded "${aw[$k]}" 300 || rc_appends=1
    done
    BG=()
    echo "# 3 x 8 MiB files and 3 x $APPEND_LINES appends from three mounts: $(since "$t0") s"
    check "three writers, one per mount, each wrote its 8 MiB file" test $rc_files = 0
    check "three appenders, one per mount, appended to one file" test $rc_appends = 0
    for k in 1 2 3; do
        check "the three 8 MiB files read back identically on mnt$k" files_intact "$k"
        check "shared O_APPEND file on mnt$k: every record once, intact, in writer order" \
            appends_intact "$(mnt $k)/cw/shared"
    done
    echo "# section 3 took $(since "$t0") s"
}

# ---- 4. a writer that survives node failures -----------------------------
#
# The writer (dd from a pre-generated file, conv=fsync) runs on mnt2, or on
# mnt1 when node 2 is the victim; the victim is the leader that
# `paxfs status --json` names, or a follower other than the writer's node.

status_json() { "$PAXFS_BIN" status --config "$CONF" --json 2>/dev/null; }
# wait_cluster: up to 60 s until all three nodes answer and one leads;
# prints the leader's node id.
wait_cluster() {
    local js l
    for _ in $(seq 300); do
        js=$(status_json)
        l=$(sed -n 's/^{"cluster":"[^"]*","leader":\([0-9][0-9]*\),.*/\1/p' <<<"$js")
        if [ -n "$l" ] && [ "$(grep -o '"reachable":true' <<<"$js" | wc -l)" = 3 ]; then
            echo "$l"
            return 0
        fi
        sleep 0.2
    done
    echo "no leader with all nodes up: $js" >&2
    return 1
}

same_everywhere() { # REL NODES...: mnt K/REL equals the source, K in NODES
    local rel=$1 k rc=0
    shift
    for k in "$@"; do cmp "$T/src.bin" "$(mnt "$k")/$rel" || rc=1; done
    return $rc
}

# write_file K REL: dd the source into mnt K/REL in the background: DD_PID
# is dd's own (so that the EXIT trap stops it), DD_T0 when it started.
write_file() {
    DD_T0=$(now)
    dd if="$T/src.bin" of="$(mnt "$1")/$2" bs=1M conv=fsync status=none &
    DD_PID=$!
    BG=("$DD_PID")
}

BASELINE=0
fault_run() { # NAME KIND(leader|follower) HOW(kill|stop)
    local name=$1 kind=$2 how=$3 leader victim w k rc elapsed others=() was_running=1
    leader=$(wait_cluster) || { check "$name: cluster ready" false; return; }
    if [ "$kind" = leader ]; then
        victim=$leader
    else
        for k in 3 1 2; do [ "$k" != "$leader" ] && { victim=$k; break; }; done
    fi
    w=2
    [ "$victim" = 2 ] && w=1
    for k in 1 2 3; do [ "$k" != "$victim" ] && others+=("$k"); done
    echo "# $name: leader node $leader, victim node $victim (pid ${PIDS[$victim]}), writer on mnt$w"
    write_file "$w" "fail-$how-$kind"
    sleep "$FAULT_DELAY"
    kill -0 "$DD_PID" 2>/dev/null || was_running=0
    if [ "$how" = kill ]; then
        kill_node "$victim"
    else
        kill -STOP "${PIDS[$victim]}"
        sleep 5
        kill -0 "$DD_PID" 2>/dev/null ||
            echo "# $name: the write ended while node $victim was still frozen"
        kill -CONT "${PIDS[$victim]}"
    fi
    wait_bounded "$DD_PID" 300
    rc=$?
    elapsed=$(since "$DD_T0") # to within wait_bounded's 0.1 s polls
    BG=()
    # (Stalls are bench.sh fs's to measure: with the write-behind and a warm
    # heap a write often takes less than the first, fault-free one.)
    echo "# $name: the write took $elapsed s (the fault-free one $BASELINE s)"
    [ $was_running = 1 ] || echo "# $name: the write had finished before the fault ($FAULT_DELAY s): the fault hit nothing"
    check "$name: the write on mnt$w completes without an error" test "$rc" = 0
    if [ "$how" = kill ]; then
        check "$name: the file equals its source on the surviving mounts" \
            same_everywhere "fail-$how-$kind" "${others[@]}"
        start_node "$victim"
        check "$name: node $victim restarts from its data dir" wait_mounted "$victim"
        # At once: the mount is up, and a file whose write returned before
        # must open on it (close-to-open).
        check "$name: restarted node $victim reads the same bytes at once" \
            same_everywhere "fail-$how-$kind" "$victim"
        # And within 60 s, to tell a node still catching up from lost data.
        within 60 "$name: restarted node $victim reads the same bytes after catching up" \
            same_everywhere "fail-$how-$kind" "$victim"
    else
        check "$name: the file equals its source on all mounts, the thawed one too" \
            same_everywhere "fail-$how-$kind" 1 2 3
    fi
}

section4() {
    local t0 t
    t0=$(now)
    head -c $((FAIL_MIB << 20)) /dev/urandom >"$T/src.bin"
    wait_cluster >/dev/null || { check "section 4: cluster ready" false; return; }
    t=$(now)
    dd if="$T/src.bin" of="$M2/fail-none" bs=1M conv=fsync status=none
    check "baseline: $FAIL_MIB MiB written on mnt2 without failures" test $? = 0
    BASELINE=$(since "$t")
    check "baseline: the file equals its source on all mounts" same_everywhere fail-none 1 2 3
    # ~1 s into the write, or a third of it when the write takes less.
    FAULT_DELAY=$(echo "$BASELINE" | awk '{ d = $1 / 3; if (d > 1) d = 1; if (d < 0.2) d = 0.2; printf "%.1f", d }')
    echo "# baseline: $FAIL_MIB MiB in $BASELINE s; faults come $FAULT_DELAY s into a write"
    fault_run "leader SIGKILLed" leader kill
    fault_run "follower SIGKILLed" follower kill
    fault_run "leader SIGSTOPped for 5 s" leader stop
    echo "# section 4 took $(since "$t0") s"
}

# ---- the end: every daemon stops cleanly, its sanitizers silent ----------

T_ALL=$(now)
want 1 && section1
want 2 && section2
want 3 && section3
want 4 && section4
for k in 1 2 3; do
    check "fusermount3 -u stops node $k: exit 0, sanitizers silent" shutdown_ok "$k" umount
done
echo "# all sections took $(since "$T_ALL") s"

echo "1..$n"
[ $failed = 0 ]
