#!/usr/bin/env bash
# Installs what syncer needs on a Debian machine (idempotent): fuse3 for
# fusermount3, rsync for the remote, bindfs for the benchmark baseline, and
# fsx (the File System eXerciser) for the test suite.
set -euo pipefail
need_apt=()
command -v fusermount3 >/dev/null || need_apt+=(fuse3)
command -v rsync >/dev/null || need_apt+=(rsync)
command -v bindfs >/dev/null || need_apt+=(bindfs)
if [ "${#need_apt[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [ "${1:-}" = "--with-fsx" ] && ! command -v fsx >/dev/null; then
    cargo install fsx --locked --quiet
fi
