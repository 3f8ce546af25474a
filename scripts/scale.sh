#!/usr/bin/env bash
# The scale benchmark (tests/scale.rs, docs/SCALE.md), opt-in: builds a
# collection of small files and one big directory through a real mount of
# the `syncer` binary, then times every stage of issue 18's goal (mount,
# ls -lR, --at, eviction, status, push, a peer's import, log verify,
# inspect, history, big-directory create/lookup/stat/readdir) and measures
# each stage's peak resident memory. Prints one table. Needs root,
# /dev/fuse, fusermount3 and rsync (scripts/deps.sh); installs nothing.
#
#   scripts/scale.sh [FILES]          # default 100000
#
# Environment: SCALE_BIGDIR (entries of the big directory, default
# min(FILES, 1000000)), SCALE_VERIFY (files read back per local view,
# default 10000, 0 = all), SCALE_FETCH (files read back where each read
# fetches from the remote, default 200), SCALE_DIR (the disk, default
# $TMPDIR or /tmp; needs about 3 KiB per file four times over).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export SCALE_FILES="${1:-${SCALE_FILES:-100000}}"
exec cargo test --release --test scale -- --ignored --nocapture
