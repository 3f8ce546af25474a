#!/usr/bin/env bash
# syncer's main job on a sensible default: a data dir under
# ~/.local/share/syncer/data, a local-directory remote beside it, and the
# tree mounted on ~/syncer. Run it again to remount after a reboot.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release --quiet
base="${SYNCER_HOME:-$HOME/.local/share/syncer}"
data="$base/data"
remote="$base/remote"
mnt="${SYNCER_MOUNT:-$HOME/syncer}"
mkdir -p "$remote" "$mnt"
if [ ! -e "$data/FORMAT" ]; then
    target/release/syncer init "$data" --remote "$remote"
fi
if mountpoint -q "$mnt"; then
    echo "already mounted on $mnt"
else
    target/release/syncer mount "$data" "$mnt"
    echo "mounted $data on $mnt (unmount: target/release/syncer unmount $mnt)"
fi
# sed, not head: head would close the pipe early, and pipefail would fail the script.
target/release/syncer status "$data" | sed -n 1,4p
