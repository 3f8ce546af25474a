#!/usr/bin/env bash
# Installs what syncer needs on a Debian machine (idempotent): fuse3 for
# fusermount3, rsync for the remote, ssh and sshd for the remote over ssh
# (the test suite starts its own sshd), bindfs for the benchmark baseline,
# fsx (the File System eXerciser) and sqlite3 for the test suite (a real
# database edited on two machines), acl (getfacl/setfacl) for the ACL
# tests, e2fsprogs and util-linux (mkfs.ext4, e2fsck, findmnt) for the
# test of a disk that turns read-only, and a C compiler for
# the crates that build C (zstd, mimalloc). As root it also
# installs the mount(8) helper scripts/mount.fuse.syncer as
# /sbin/mount.fuse.syncer (replaced when it differs), so that
# `mount -t fuse.syncer` and fstab lines work.
# Opt-in flags: --with-fsx installs fsx; --with-xfstests-deps installs what
# building and running xfstests needs (scripts/xfstests.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
need_apt=()
command -v fusermount3 >/dev/null || need_apt+=(fuse3)
command -v rsync >/dev/null || need_apt+=(rsync)
command -v bindfs >/dev/null || need_apt+=(bindfs)
command -v ssh >/dev/null || need_apt+=(openssh-client)
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v cc >/dev/null || need_apt+=(gcc libc6-dev)
command -v sqlite3 >/dev/null || need_apt+=(sqlite3)
command -v setfacl >/dev/null || need_apt+=(acl)
command -v mkfs.ext4 >/dev/null || need_apt+=(e2fsprogs)
command -v findmnt >/dev/null || need_apt+=(util-linux)
# The control socket's permission test makes a throwaway user.
command -v useradd >/dev/null || need_apt+=(passwd)
with_fsx=no
with_xfstests=no
for arg in "$@"; do
    case "$arg" in
        --with-fsx) with_fsx=yes ;;
        --with-xfstests-deps) with_xfstests=yes ;;
        *) echo "deps.sh: unknown option $arg (known: --with-fsx, --with-xfstests-deps)" >&2; exit 2 ;;
    esac
done
if [ "$with_xfstests" = yes ]; then
    # xfstests' README lists these for Debian (minus lvm2 and kernel headers,
    # which the generic group on fuse does not use), plus python3 for
    # xfstests.sh's summary.
    for p in acl attr autoconf automake bc dbench e2fsprogs fio gawk gcc indent \
        libacl1-dev libaio-dev libattr1-dev libcap-dev libgdbm-dev libgdbm-compat-dev \
        libtool libtool-bin liburing-dev make pkg-config psmisc python3 quota sed \
        uuid-dev uuid-runtime xfsprogs xfslibs-dev; do
        dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
    done
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
export PATH="$HOME/.cargo/bin:$PATH"
if [ "$with_fsx" = yes ] && ! command -v fsx >/dev/null; then
    cargo install fsx --locked --quiet
fi
if [ "$(id -u)" = 0 ] && ! cmp -s "$here/mount.fuse.syncer" /sbin/mount.fuse.syncer; then
    install -m 755 "$here/mount.fuse.syncer" /sbin/mount.fuse.syncer
fi
