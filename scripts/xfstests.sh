#!/usr/bin/env bash
# Runs xfstests (https://github.com/kdave/xfstests) against syncer, opt-in:
# the `generic` quick group through the mount helper (FSTYP=fuse,
# FUSE_SUBTYP=.syncer), then fsstress from the same build on a fresh mount,
# an unmount, a remount, a comparison of the tree with what it was before,
# and `syncer log verify`. docs/XFSTESTS.md lists the results and why each
# failure and skip happens.
#
#   XFSTESTS_DIR=/path/to/xfstests scripts/xfstests.sh [options] [TEST...]
#
# XFSTESTS_DIR is a checkout of the xfstests repository (this script builds
# it there with make, but never copies its code into this repository).
# TESTs are xfstests names (generic/001 ...); none means `-g generic/quick`.
#
# Options:
#   --deps          install the build and run dependencies first
#                   (scripts/deps.sh --with-xfstests-deps; Debian, as root)
#   --no-build      use target/release/syncer as it is (or $SYNCER)
#   --no-xfstests   skip the xfstests run (fsstress and verify only)
#   --no-fsstress   skip the fsstress run
#
# Environment:
#   XFSTESTS_DIR      the xfstests checkout (required)
#   XFSTESTS_WORK     data dirs, mountpoints, results (default /var/tmp/syncer-xfstests;
#                     emptied at the start)
#   XFSTESTS_TIMEOUT  seconds one test may run before it is killed and counted
#                     as failed (default 600; the slowest passing test, generic/069,
#                     took 311 s on a busy 2-core machine)
#   XFSTESTS_SHIMS    auto (default), yes or no: the harness shims described below
#   FSSTRESS_ARGS     default "-n 10000 -p 4 -f link=0" (link=0: syncer refuses hard links)
#   FSSTRESS_SEED     fsstress seed (default: the current time; printed)
#   SYNCER            the syncer binary (default target/release/syncer, built here)
#
# Exit status: 0 when the xfstests run got to its end and fsstress +
# remount + verify were clean (test failures are reported, not an error);
# 1 otherwise.
#
# Harness shims (XFSTESTS_SHIMS): two places where the harness expects
# something of every filesystem that is not about the filesystem under test.
# Each is installed only when a probe shows it is needed (or when forced
# with yes), on the PATH of the harness only, and the summary says which:
# - df: the harness compares the type column of `df -T` with FSTYP ("fuse"),
#   but a syncer mount's type is "fuse.syncer" (FUSE's subtype); the shim
#   prints "fuse" there, as the harness itself does for fuse.glusterfs and
#   fuse.ceph-fuse.
# - umount: the harness unmounts with `umount DATA_DIR` (its TEST_DEV) and
#   mounts again at once. When plain umount(8) cannot do that (the source
#   is not found, or the next mount finds the previous process still
#   committing), the shim turns `umount X`, X the test or scratch data dir
#   or mountpoint, into `syncer unmount MOUNTPOINT`, which returns once the
#   process has committed and exited. Anything else goes to umount(8).
set -euo pipefail

# All of the script is in main, so that bash has read it whole before it
# runs: editing the file during a long run does not change the run.
main() {
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"

deps=no build=yes run_xfstests=yes run_fsstress=yes
tests=()
while [ $# -gt 0 ]; do
    case "$1" in
        --deps) deps=yes ;;
        --no-build) build=no ;;
        --no-xfstests) run_xfstests=no ;;
        --no-fsstress) run_fsstress=no ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "xfstests.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) tests+=("$1") ;;
    esac
    shift
done

die() { echo "xfstests.sh: $*" >&2; exit 1; }
say() { echo "== $*"; }

[ "$(id -u)" = 0 ] || die "must run as root (it mounts filesystems and adds the fsgqa users)"
: "${XFSTESTS_DIR:?set XFSTESTS_DIR to a checkout of https://github.com/kdave/xfstests}"
XFSTESTS_DIR="$(cd "$XFSTESTS_DIR" && pwd)"
[ -f "$XFSTESTS_DIR/check" ] || die "XFSTESTS_DIR=$XFSTESTS_DIR is not an xfstests checkout (no ./check)"
work="${XFSTESTS_WORK:-/var/tmp/syncer-xfstests}"
timeout_s="${XFSTESTS_TIMEOUT:-600}"
shims="${XFSTESTS_SHIMS:-auto}"
case "$shims" in auto|yes|no) ;; *) die "XFSTESTS_SHIMS=$shims: expected auto, yes or no" ;; esac
fsstress_args="${FSSTRESS_ARGS:--n 10000 -p 4 -f link=0}"
fsstress_seed="${FSSTRESS_SEED:-$(date +%s)}"

if [ "$deps" = yes ]; then
    "$here/deps.sh" --with-xfstests-deps
fi

# --- syncer -----------------------------------------------------------------
if [ -z "${SYNCER:-}" ]; then
    if [ "$build" = yes ]; then
        say "building syncer (release)"
        (cd "$repo" && cargo build --release --quiet)
    fi
    SYNCER="$repo/target/release/syncer"
fi
[ -x "$SYNCER" ] || die "no syncer binary at $SYNCER (build it, or set SYNCER)"
SYNCER="$(cd "$(dirname "$SYNCER")" && pwd)/$(basename "$SYNCER")"
# The mount helper runs "$SYNCER" (mount(8) keeps root's environment).
export SYNCER
if ! cmp -s "$here/mount.fuse.syncer" /sbin/mount.fuse.syncer; then
    install -m 755 "$here/mount.fuse.syncer" /sbin/mount.fuse.syncer
fi
command -v fusermount3 >/dev/null || die "fusermount3 missing (scripts/deps.sh installs fuse3)"

# --- xfstests build ---------------------------------------------------------
say "building xfstests in $XFSTESTS_DIR"
if ! (cd "$XFSTESTS_DIR" && make -j"$(nproc)" >"${TMPDIR:-/tmp}/syncer-xfstests-build.log" 2>&1); then
    tail -20 "${TMPDIR:-/tmp}/syncer-xfstests-build.log" >&2
    die "building xfstests failed (log: ${TMPDIR:-/tmp}/syncer-xfstests-build.log; missing packages? try --deps)"
fi
fsstress="$XFSTESTS_DIR/ltp/fsstress"
[ -x "$fsstress" ] || die "the xfstests build has no ltp/fsstress"

# The users and group several tests switch to (see xfstests' README).
getent group fsgqa >/dev/null || groupadd fsgqa
getent group fsgqa2 >/dev/null || groupadd fsgqa2
id fsgqa >/dev/null 2>&1 || useradd -m -g fsgqa fsgqa
id fsgqa2 >/dev/null 2>&1 || useradd -m -g fsgqa2 fsgqa2
id 123456-fsgqa >/dev/null 2>&1 || useradd -m -g fsgqa 123456-fsgqa

# --- the work dir -----------------------------------------------------------
# Unmounts whatever a previous run left mounted under $work, waiting for
# syncer's processes to commit.
unmount_leftovers() {
    local m
    [ -d "$work" ] || return 0
    awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
        "$SYNCER" unmount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
}
unmount_leftovers
mkdir -p "$work"
work="$(cd "$work" && pwd -P)"
rm -rf "${work:?}"/*
mkdir -p "$work"/{test,scratch,stress,shims,results}

is_mounted() { awk -v m="$1" '$2 == m { f = 1 } END { exit !f }' /proc/mounts; }

# --- shims ------------------------------------------------------------------
shim_df=no shim_umount=no
probe_notes=()
probe() {
    local d="$work/probe.data" m="$work/probe"
    mkdir -p "$m"
    "$SYNCER" init "$d" >/dev/null
    mount -t fuse.syncer "$d" "$m" || die "mount -t fuse.syncer $d $m failed: the mount helper does not work"
    local type
    type="$(df -T -P "$m" | awk 'NR == 2 { print $2 }')"
    if [ "$type" != fuse ]; then
        shim_df=yes
        probe_notes+=("df -T reports type '$type', the harness wants 'fuse'")
    fi
    echo probe >"$m/f"
    # Buffered writes that the unmount has to commit, so that a mount at
    # once finds the previous process still at work unless it waits for it.
    dd if=/dev/urandom of="$m/big" bs=1M count=64 status=none
    if umount "$d" 2>"$work/probe.err"; then
        if ! mount -t fuse.syncer "$d" "$m" 2>>"$work/probe.err"; then
            shim_umount=yes
            probe_notes+=("after umount DATA_DIR, an immediate mount fails: $(tail -1 "$work/probe.err")")
        fi
    else
        shim_umount=yes
        probe_notes+=("umount DATA_DIR fails: $(tail -1 "$work/probe.err")")
    fi
    if is_mounted "$m"; then
        "$SYNCER" unmount "$m"
    fi
    # The probe's write must have survived whichever way it was unmounted.
    mount -t fuse.syncer "$d" "$m"
    [ "$(cat "$m/f")" = probe ] || die "the probe's file did not survive unmount and mount"
    "$SYNCER" unmount "$m"
    rm -rf "$d" "$m"
}
say "probing what the harness needs"
if [ "$shims" = auto ]; then
    probe
elif [ "$shims" = yes ]; then
    shim_df=yes shim_umount=yes
    probe_notes+=("forced by XFSTESTS_SHIMS=yes")
fi
real_df="$(type -P df)"
real_umount="$(type -P umount)"
if [ "$shim_df" = yes ]; then
    cat >"$work/shims/df" <<EOF
#!/bin/bash
# xfstests.sh shim: the type column says fuse for fuse.syncer (see scripts/xfstests.sh).
set -o pipefail
"$real_df" "\$@" | sed -E 's/^([^ ]+ +)fuse\.syncer /\1fuse        /'
EOF
    chmod 755 "$work/shims/df"
fi
if [ "$shim_umount" = yes ]; then
    cat >"$work/shims/umount" <<EOF
#!/bin/bash
# xfstests.sh shim: umount of a syncer mount's source or mountpoint waits for
# its process to commit and exit (see scripts/xfstests.sh).
# Only the harness's own two mounts: a bind mount of a file or directory of
# a syncer mount (generic/306 makes one) has the same source and type, and
# syncer unmount would wait for a process that goes on serving the original.
if [ \$# -eq 1 ] && [ -e "\$1" ]; then
    p="\$(realpath -- "\$1")"
    case "\$p" in
        "$work/test.data"|"$work/test") m="$work/test" ;;
        "$work/scratch.data"|"$work/scratch") m="$work/scratch" ;;
        *) m="" ;;
    esac
    if [ -n "\$m" ] && awk -v m="\$m" '\$2 == m && \$3 == "fuse.syncer" { f = 1 } END { exit !f }' /proc/mounts; then
        echo "\$(date +%T) syncer unmount \$m (for umount \$1)" >>"$work/shims/umount.log"
        exec "$SYNCER" unmount "\$m"
    fi
fi
exec "$real_umount" "\$@"
EOF
    chmod 755 "$work/shims/umount"
fi
for n in "${probe_notes[@]}"; do echo "   $n"; done
echo "   shims: df=$shim_df umount=$shim_umount"

# --- xfstests ---------------------------------------------------------------
# Kills a test that has run longer than $timeout_s (and everything it
# started). check is stopped meanwhile, so that no test runs on a mount
# being repaired. A test stuck in a FUSE request cannot die while the
# request runs, so if any of its processes is still there after SIGKILL,
# the syncer processes of the test and scratch mounts are killed too (the
# kernel then fails their requests), the mounts are detached, and the test
# mount is mounted again so that the run goes on. Each timeout is recorded
# in $work/timeouts.
descendants() {
    local p
    for p in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$p"
        descendants "$p"
    done
}
mount_holders() {
    # The processes holding a data dir's writer lock: its mount process.
    fuser "$1/lock" 2>/dev/null | tr -s ' ' '\n' | grep -E '^[0-9]+$' || true
}
# The pids of $@ that are still alive (a zombie has died: it only waits for
# its parent, which is stopped).
alive() {
    local p s
    for p in "$@"; do
        s="$(ps -o stat= -p "$p" 2>/dev/null)"
        [ -n "$s" ] && [ "${s:0:1}" != Z ] && echo "$p"
    done
}
watchdog() {
    set +e
    local check_pid=$1 pid age name d procs stuck _
    while kill -0 "$check_pid" 2>/dev/null; do
        sleep 5
        for pid in $(descendants "$check_pid"); do
            name="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" |
                sed -nE 's#^/bin/bash (\S*/)?tests/([a-z]+/[0-9]+) .*#\2#p')"
            [ -n "$name" ] || continue
            age="$(ps -o etimes= -p "$pid" 2>/dev/null | tr -d ' ')"
            if [ -z "$age" ] || [ "$age" -le "$timeout_s" ]; then
                continue
            fi
            echo "$(date +%T) $name: still running after ${timeout_s}s, killed" | tee -a "$work/timeouts" >&2
            kill -STOP "$check_pid"
            procs="$pid $(descendants "$pid")"
            # shellcheck disable=SC2086 # a list of pids
            kill -KILL $procs 2>/dev/null
            for _ in 1 2 3 4 5 6 7 8 9 10; do
                # shellcheck disable=SC2086
                stuck="$(alive $procs)"
                [ -z "$stuck" ] && break
                sleep 1
            done
            if [ -n "$stuck" ]; then
                echo "$(date +%T) $name: stuck in the filesystem after SIGKILL (${stuck//$'\n'/ }); killing the mount processes" |
                    tee -a "$work/timeouts" >&2
                for d in "$work/test.data" "$work/scratch.data"; do
                    # shellcheck disable=SC2046
                    kill -KILL $(mount_holders "$d") 2>/dev/null
                done
                for _ in 1 2 3 4 5 6 7 8 9 10; do
                    # shellcheck disable=SC2086
                    [ -z "$(alive $procs)" ] && break
                    sleep 1
                done
                for d in "$work/test" "$work/scratch"; do
                    is_mounted "$d" && umount -l "$d"
                done
                mount -t fuse.syncer -o allow_other,dev,suid "$work/test.data" "$work/test" ||
                    echo "$(date +%T) remounting the test fs failed" | tee -a "$work/timeouts" >&2
            fi
            kill -CONT "$check_pid"
        done
    done
}

summarize() {
    local res="$1"
    python3 - "$res" "$work/timeouts" <<'EOF'
import sys, os, re
res, timeouts = sys.argv[1], sys.argv[2]
log = open(os.path.join(res, "check.out"), errors="replace").read().splitlines()
status = {}
for line in log:
    m = re.match(r"^([a-z]+/\d+)\s+(.*)$", line)
    if not m:
        continue
    name, rest = m.groups()
    if "[not run]" in rest:
        status[name] = ("notrun", rest.split("[not run]", 1)[1].strip())
    elif "[expunged]" in rest:
        status[name] = ("expunged", "")
    elif re.search(r"output mismatch|\[failed|_check_|- no such test", rest):
        status[name] = ("fail", rest.strip())
    elif re.search(r"\d+s\s*$", rest):
        status[name] = ("pass", "")
    else:
        status[name] = ("fail", rest.strip() or "no result (killed?)")
# A test the harness reported as failed in its summary counts as failed.
for line in log:
    if line.startswith("Failures:"):
        for name in line.split()[1:]:
            if status.get(name, ("",))[0] != "fail":
                status[name] = ("fail", "listed under Failures")
timed = set()
if os.path.exists(timeouts):
    for line in open(timeouts):
        m = re.match(r"^\S+ ([a-z]+/\d+): still running", line)
        if m:
            timed.add(m.group(1))
for t in timed:
    status[t] = ("fail", "timed out (killed by xfstests.sh)")
count = {k: 0 for k in ("pass", "fail", "notrun", "expunged")}
for s, _ in status.values():
    count[s] += 1
total = sum(count.values())
print(f"tests: {total}  pass: {count['pass']}  fail: {count['fail']}  not run: {count['notrun']}")
fails = sorted(n for n, (s, _) in status.items() if s == "fail")
print("failed:", " ".join(fails) if fails else "none")
for n in fails:
    print(f"  {n}: {status[n][1]}")
by_reason = {}
for n in sorted(n for n, (s, _) in status.items() if s == "notrun"):
    by_reason.setdefault(status[n][1], []).append(n)
with open(os.path.join(res, "notrun.txt"), "w") as f:
    for reason, names in sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        f.write(f"{len(names):4} {reason}: {' '.join(names)}\n")
EOF
}

xfstests_status=0
if [ "$run_xfstests" = yes ]; then
    "$SYNCER" init "$work/test.data" >/dev/null
    "$SYNCER" init "$work/scratch.data" >/dev/null
    # TEST_DEV and SCRATCH_DEV are the data dirs: that is the source mount(8)
    # shows for a syncer mount, and what the harness looks for in df. The
    # harness "makes" a fuse scratch filesystem by emptying it; the data dir
    # itself is made once by `syncer init` above.
    cat >"$work/local.config" <<EOF
export FSTYP=fuse
export FUSE_SUBTYP=.syncer
export TEST_DEV=$work/test.data
export TEST_DIR=$work/test
export SCRATCH_DEV=$work/scratch.data
export SCRATCH_MNT=$work/scratch
export TEST_FS_MOUNT_OPTS="-o allow_other,dev,suid"
export MOUNT_OPTIONS="-o allow_other,dev,suid"
export RESULT_BASE=$work/results
EOF
    if [ "${#tests[@]}" -eq 0 ]; then
        tests=(-g generic/quick)
    fi
    say "running xfstests ${tests[*]} (per-test timeout ${timeout_s}s; log: $work/results/check.out)"
    : >"$work/results/check.out"
    (
        cd "$XFSTESTS_DIR"
        export HOST_OPTIONS="$work/local.config" PATH="$work/shims:$PATH"
        exec ./check "${tests[@]}"
    ) >"$work/results/check.out" 2>&1 &
    check_pid=$!
    watchdog "$check_pid" &
    watchdog_pid=$!
    tail -n +1 -f --pid="$check_pid" "$work/results/check.out" || true
    check_rc=0
    wait "$check_pid" || check_rc=$?
    wait "$watchdog_pid" || true
    unmount_leftovers
    # check exits 1 when a test fails; the run is whole when it got to its summary.
    grep -qE '^(Passed all|Failed [0-9]+ of)' "$work/results/check.out" || xfstests_status=1
    say "xfstests result (check exited $check_rc$([ "$xfstests_status" = 0 ] || echo ', without its summary: incomplete'))"
    summarize "$work/results" | tee "$work/results/summary.txt"
    echo "   not run, by reason: $work/results/notrun.txt; per-test output: $work/results/<test>.{out.bad,full}"
fi

# --- fsstress, unmount, remount, verify ------------------------------------
stress_ok=yes
if [ "$run_fsstress" = yes ]; then
    d="$work/stress.data" m="$work/stress"
    "$SYNCER" init "$d" >/dev/null
    mount -t fuse.syncer -o allow_other,dev,suid "$d" "$m"
    say "fsstress $fsstress_args -s $fsstress_seed on $m"
    start=$(date +%s)
    # shellcheck disable=SC2086 # the arguments are words
    if ! "$fsstress" -d "$m/fss" $fsstress_args -s "$fsstress_seed" >"$work/fsstress.out" 2>&1; then
        stress_ok=no
        echo "fsstress exited with an error (output: $work/fsstress.out)" >&2
    fi
    echo "   fsstress took $(($(date +%s) - start))s"
    # What the tree holds, to compare after the remount: every name with its
    # type, mode, owner, mtime, size, link target and xattrs, and every regular
    # file's content. Content is read through SEEK_DATA/SEEK_HOLE and
    # all-zero 64 KiB pages are left out, so that files with holes of
    # gigabytes (as fsstress makes) cost what they store, and the digest
    # does not depend on where the filesystem reports holes.
    snapshot() {
        python3 - "$m" <<'EOF'
import hashlib, os, stat, sys
PAGE = 65536
ZERO = bytes(PAGE)
def digest(path):
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        size, pos = os.fstat(fd).st_size, 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            off = start - start % PAGE
            while off < end:
                buf = os.pread(fd, PAGE, off)
                if not buf:
                    break
                if buf != ZERO[: len(buf)]:
                    h.update(off.to_bytes(8, "little") + buf)
                off += len(buf)
            pos = max(end, off)
    finally:
        os.close(fd)
    return h.hexdigest()
root = sys.argv[1]
out = []
for d, dirs, files in os.walk(root):
    for n in dirs + files:
        p = os.path.join(d, n)
        st = os.lstat(p)
        rel = os.path.relpath(p, root)
        names = os.listxattr(p, follow_symlinks=False)
        xattrs = sorted((a, os.getxattr(p, a, follow_symlinks=False)) for a in names)
        line = f"{rel} mode={st.st_mode:o} uid={st.st_uid} gid={st.st_gid} mtime={st.st_mtime_ns} xattrs={xattrs!r}"
        if stat.S_ISREG(st.st_mode):
            line += f" size={st.st_size} sha256={digest(p)}"
        elif stat.S_ISLNK(st.st_mode):
            line += f" -> {os.readlink(p)!r}"
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            line += f" rdev={st.st_rdev}"
        out.append(line)
print("\n".join(sorted(out)))
EOF
    }
    snapshot >"$work/stress.before" || { stress_ok=no; echo "   reading the tree failed" >&2; }
    say "unmount, mount again"
    "$SYNCER" unmount "$m"
    mount -t fuse.syncer -o allow_other,dev,suid "$d" "$m"
    snapshot >"$work/stress.after" || { stress_ok=no; echo "   reading the tree after the remount failed" >&2; }
    if cmp -s "$work/stress.before" "$work/stress.after"; then
        echo "   the tree after the remount is the tree before it ($(grep -c '' "$work/stress.before") lines)"
    else
        stress_ok=no
        echo "   the tree changed across the remount:" >&2
        diff "$work/stress.before" "$work/stress.after" | head -20 >&2
    fi
    say "syncer log verify"
    if ! "$SYNCER" log verify "$d"; then
        stress_ok=no
    fi
    "$SYNCER" unmount "$m"
    if ! "$SYNCER" log verify "$d" >/dev/null; then
        echo "   log verify after the final unmount failed" >&2
        stress_ok=no
    fi
    echo "   fsstress + remount + verify: $([ "$stress_ok" = yes ] && echo clean || echo NOT CLEAN)"
fi

[ "$stress_ok" = yes ] && [ "$xfstests_status" -eq 0 ] || exit 1
}

# On one line, so that bash never reads past it (see main).
main "$@"; exit $?
