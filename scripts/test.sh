#!/usr/bin/env bash
# The whole test suite: installs its tools, then runs every test of every
# crate (FUSE tests mount for real and need root and /dev/fuse).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh --with-fsx
export PATH="$HOME/.cargo/bin:$PATH"
cargo test --workspace --release --no-fail-fast
