//! Shared by the root integration tests: the helpers of every test suite
//! (from `testkit`: mounts, syscall helpers, test data) and the ones tied to
//! this package (checked-in fixtures, the `syncer` binary's config).
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};

use engine::config::Config;
use engine::ids::MachineId;
use engine::Store;

pub use testkit::mount::{require_fuse, MountGuard, Mounted, Tmpfs};
pub use testkit::sys::*;

/// A new data dir for a checked-in fixture at `dir` (4 KiB blocks), made
/// by `machine`; refuses to overwrite one (fixtures are never regenerated).
pub fn init_fixture(dir: &Path, machine: MachineId) {
    assert!(!dir.exists(), "{} exists; the fixture is never regenerated", dir.display());
    let mut config = Config::new_default(machine);
    config.block_size = 4096;
    config.small_block = 1024;
    Store::init(dir, config).expect("init");
}

/// The checked-in fixture `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// `len` bytes: byte `j` is `j * i` (wrapping), the content the fixture
/// data dirs were written with.
pub fn multiples(i: u8, len: u32) -> Vec<u8> {
    (0..len).map(|j| (j as u8).wrapping_mul(i)).collect()
}

/// The record versions of log segment `seg` of `machine`, checking that the
/// first record written after its first `before` bytes is of the current
/// version (an upgraded data dir appends only current-version records).
pub fn record_versions(seg: &Path, machine: MachineId, before: usize) -> Vec<u8> {
    let bytes = std::fs::read(seg).expect("read the segment");
    assert_eq!(bytes[before..before + 4], [b'S', b'Y', b'R', engine::record::CURRENT_VERSION]);
    let scan =
        engine::log::SegmentReader::new(&bytes, seg, machine, 0, engine::log::ReadMode::Strict).scan().expect("scan");
    scan.records.iter().map(|r| r.version).collect()
}

/// Makes the mounts of the data dir `data` push an hour after a change and
/// look for peers' changes hourly (its `config.toml`), so a mount's edits
/// stay offline, as if the machine were, until `syncer sync`. A mount
/// still pushes and pulls once when it starts.
pub fn offline(data: &Path) {
    let path = data.join("config.toml");
    let text = std::fs::read_to_string(&path).expect("read config.toml");
    let keys = ["push_delay", "push_max_delay", "poll_interval", "poll_interval_ssh"];
    let mut kept: String = text
        .lines()
        .filter(|l| !keys.iter().any(|k| l.split('=').next().is_some_and(|key| key.trim() == *k)))
        .map(|l| format!("{l}\n"))
        .collect();
    for k in keys {
        kept.push_str(&format!("{k} = \"1h\"\n"));
    }
    std::fs::write(&path, kept).expect("write config.toml");
}

/// A fresh data dir made by the `syncer` binary (`syncer init DATA` plus
/// `init_args`) and an empty mountpoint, in a temp dir: `(tmp, data, mnt)`.
pub fn initialized(init_args: &[&str]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    require_fuse();
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir mnt");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_syncer"))
        .arg("init")
        .arg(&data)
        .args(init_args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run syncer init");
    assert!(
        o.status.success(),
        "syncer init: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (tmp, data, mnt)
}
