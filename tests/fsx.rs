//! fsx (asomers' File System eXerciser, `cargo install fsx`) against a file
//! in a real `syncer mount`: 100,000 random operations (reads, writes,
//! truncates, mmap reads and writes, msync(MS_INVALIDATE), fsync,
//! fdatasync, close/reopen, fallocate, sendfile, fadvise,
//! copy_file_range), every read checked against fsx's model of the file.
//!
//! Mapped writes reach syncer through the kernel's writeback (at fsync,
//! close or its timer), not through an msync after every one: each msync
//! is a FUSE fsync, a durable commit, and with them the run takes about
//! three times as long. `SYNCER_FSX_MSYNC=1` turns them on.
//!
//! Hole punching (`FALLOC_FL_PUNCH_HOLE`) is not exercised: syncer answers
//! EOPNOTSUPP for it, and fsx treats that as a failure.
//!
//! `SYNCER_FSX_OPS` overrides the number of operations, `SYNCER_FSX_SEED`
//! the seed (a failure prints both, so it can be replayed). Needs root,
//! /dev/fuse and fsx (scripts/deps.sh --with-fsx); fails without them.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_syncer");

/// The fsx configuration (see fsx's doc/fsx.toml): a 256 KiB file, ops of
/// up to 64 KiB at any alignment, so writes straddle the 16 KiB blocks.
const CONFIG: &str = "\
flen = 262144
nomsyncafterwrite = true
[opsize]
max = 65536
min = 0
align = 1
[weights]
close_open = 1
read = 10
write = 10
mapread = 10
mapwrite = 10
invalidate = 1
truncate = 5
fsync = 1
fdatasync = 1
posix_fallocate = 1
punch_hole = 0
sendfile = 1
posix_fadvise = 1
copy_file_range = 1
";

fn fsx_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("fsx"))
        .find(|p| p.is_file());
    let in_cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map(|c| c.join("bin/fsx"))
        .filter(|p| p.is_file());
    on_path.or(in_cargo_home).expect("fsx is not installed: run scripts/deps.sh --with-fsx")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn syncer(args: &[&OsStr]) -> String {
    let o = Command::new(BIN).args(args).stdin(Stdio::null()).output().expect("run syncer");
    assert!(o.status.success(), "syncer {args:?}: {}", text(&o));
    text(&o)
}

/// Detaches the mount lazily if the test fails while it is mounted.
struct Guard(PathBuf);

impl Drop for Guard {
    fn drop(&mut self) {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mnt = self.0.display().to_string();
        if mounts.lines().any(|l| l.split(' ').nth(1) == Some(mnt.as_str())) {
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.0).status();
        }
    }
}

#[test]
fn fsx_100k_operations_on_a_mounted_file() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(root && Path::new("/dev/fuse").exists(), "fsx needs root and /dev/fuse (scripts/deps.sh)");
    let fsx = fsx_binary();
    let ops: u64 = std::env::var("SYNCER_FSX_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let seed: u64 = std::env::var("SYNCER_FSX_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20_261_125);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, mnt, artifacts) = (tmp.path().join("data"), tmp.path().join("mnt"), tmp.path().join("fsx"));
    std::fs::create_dir(&mnt).expect("mkdir");
    std::fs::create_dir(&artifacts).expect("mkdir");
    let config = tmp.path().join("fsx.toml");
    let msync = std::env::var("SYNCER_FSX_MSYNC").is_ok_and(|v| v == "1");
    let config_text =
        if msync { CONFIG.replace("nomsyncafterwrite = true", "nomsyncafterwrite = false") } else { CONFIG.into() };
    std::fs::write(&config, config_text).expect("write fsx.toml");
    syncer(&[OsStr::new("init"), data.as_os_str(), OsStr::new("--block-size"), OsStr::new("16KiB")]);
    let guard = Guard(mnt.clone());
    syncer(&[OsStr::new("mount"), data.as_os_str(), mnt.as_os_str()]);
    let started = std::time::Instant::now();
    let o = Command::new(&fsx)
        .arg("-f")
        .arg(&config)
        .arg("-N")
        .arg(ops.to_string())
        .arg("-S")
        .arg(seed.to_string())
        .arg("-P")
        .arg(&artifacts)
        .arg(mnt.join("fsx.file"))
        .stdin(Stdio::null())
        .output()
        .expect("run fsx");
    let out = text(&o);
    eprintln!("fsx: {ops} operations in {:.1?}", started.elapsed());
    let tail: String = out.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    assert!(
        o.status.success() && out.contains("All operations completed A-OK"),
        "fsx failed ({}) after {:.1?}; replay with SYNCER_FSX_OPS={ops} SYNCER_FSX_SEED={seed} \
         SYNCER_FSX_MSYNC={}:\n{tail}",
        o.status,
        started.elapsed(),
        u8::from(msync)
    );
    syncer(&[OsStr::new("unmount"), mnt.as_os_str()]);
    drop(guard);
    let verify = syncer(&[OsStr::new("log"), OsStr::new("verify"), data.as_os_str()]);
    assert!(!verify.contains("DAMAGE"), "{verify}");
}
