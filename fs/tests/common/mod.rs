//! Test harness: a fresh data dir mounted on a temp dir through `spawn`.
#![allow(dead_code)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::config::Config;
use engine::ids::MachineId;
use engine::{LiveTree, Store};
use syncer_fs::{MountHandle, MountOptions};

/// A mounted fresh data dir. Unmounts on drop.
pub struct Mounted {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub mnt: PathBuf,
    pub opts: MountOptions,
    handle: Option<MountHandle>,
}

/// FUSE tests mount for real: they need root and /dev/fuse, and fail
/// (never skip) without them.
pub fn require_fuse() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root && Path::new("/dev/fuse").exists(),
        "FUSE tests need root and /dev/fuse (install fuse3: scripts/deps.sh)"
    );
}

impl Mounted {
    /// Default config (1 MiB blocks).
    pub fn new() -> Self {
        Self::with(|_| {}, |_| {})
    }

    /// Small blocks so that multi-block paths run on small data.
    pub fn small_blocks() -> Self {
        Self::with(|c| c.block_size = 64 << 10, |_| {})
    }

    pub fn with(cfg: impl FnOnce(&mut Config), opts: impl FnOnce(&mut MountOptions)) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir mnt");
        let mut config = Config::new_default(MachineId::random());
        cfg(&mut config);
        Store::init(&data, config).expect("init");
        let mut o = MountOptions::new(data.display().to_string());
        o.threads = 4;
        opts(&mut o);
        let mut m = Mounted { tmp, data, mnt, opts: o, handle: None };
        m.mount();
        m
    }

    pub fn mount(&mut self) {
        let engine = Arc::new(LiveTree::open(&self.data).expect("open"));
        self.handle = Some(syncer_fs::spawn(engine, &self.mnt, self.opts.clone()).expect("mount"));
    }

    pub fn unmount(&mut self) {
        if let Some(h) = self.handle.take() {
            h.unmount().expect("unmount");
        }
    }

    pub fn remount(&mut self) {
        self.unmount();
        self.mount();
    }

    pub fn handle(&self) -> &MountHandle {
        self.handle.as_ref().expect("mounted")
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            if let Err(e) = h.unmount() {
                eprintln!("unmount at drop: {e}");
            }
        }
    }
}

pub fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in path")
}

/// The errno of the last libc call.
pub fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The raw OS error of a std result that must have failed.
pub fn err_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error").raw_os_error().unwrap_or(0)
}

/// Deterministic pseudo-random bytes (xorshift), distinct per seed.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
