//! Mounts made by tests: a fresh data dir mounted in-process
//! ([`Mounted`]), a guard for mounts made by the `syncer` binary
//! ([`MountGuard`]) and a small tmpfs disk to fill ([`Tmpfs`]). Every one
//! is undone on drop, so a failing test leaves no mount behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::config::Config;
use engine::ids::MachineId;
use engine::{LiveTree, Store};
use syncer_fs::{MountHandle, MountOptions};

/// FUSE tests mount for real: they need root and /dev/fuse, and fail (never
/// skip) without them.
pub fn require_fuse() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root && Path::new("/dev/fuse").exists(),
        "FUSE tests need root and /dev/fuse (install fuse3: scripts/deps.sh)"
    );
}

/// A fresh data dir mounted on a temp dir through `syncer_fs::spawn`.
/// Unmounts on drop.
#[derive(Debug)]
pub struct Mounted {
    /// The temp dir holding `data` and `mnt`.
    pub tmp: tempfile::TempDir,
    /// The data dir.
    pub data: PathBuf,
    /// The mountpoint.
    pub mnt: PathBuf,
    /// The options of the next [`Mounted::mount`].
    pub opts: MountOptions,
    handle: Option<MountHandle>,
}

impl Mounted {
    /// Default config (1 MiB blocks).
    pub fn new() -> Self {
        Self::with(|_| {}, |_| {})
    }

    /// 64 KiB blocks (and small blocks, the default 64 KiB), so that
    /// multi-block paths run on small data.
    pub fn small_blocks() -> Self {
        Self::with(|c| c.block_size = 64 << 10, |_| {})
    }

    /// A data dir made with the default config changed by `cfg`, mounted
    /// with 4 threads and the options changed by `opts`.
    pub fn with(cfg: impl FnOnce(&mut Config), opts: impl FnOnce(&mut MountOptions)) -> Self {
        require_fuse();
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

    /// Mounts the data dir again (after [`Mounted::unmount`]).
    pub fn mount(&mut self) {
        let engine = Arc::new(open_when_free(&self.data));
        self.handle = Some(syncer_fs::spawn(engine, &self.mnt, self.opts.clone()).expect("mount"));
    }

    /// Unmounts, if mounted.
    pub fn unmount(&mut self) {
        if let Some(h) = self.handle.take() {
            h.unmount().expect("unmount");
        }
    }

    /// Unmounts and mounts again.
    pub fn remount(&mut self) {
        self.unmount();
        self.mount();
    }

    /// The handle of the mount; panics when unmounted.
    pub fn handle(&self) -> &MountHandle {
        self.handle.as_ref().expect("mounted")
    }

    /// `rel` under the mountpoint.
    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

impl Default for Mounted {
    fn default() -> Self {
        Self::new()
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

/// Unmounts `0` (lazily, as a last resort) if a test fails while it is
/// mounted by the `syncer` binary.
#[derive(Debug)]
pub struct MountGuard<'a>(pub &'a Path);

impl Drop for MountGuard<'_> {
    fn drop(&mut self) {
        if std::fs::read_to_string("/proc/mounts").unwrap_or_default().contains(&self.0.display().to_string()) {
            let _ = std::process::Command::new("fusermount3").arg("-u").arg("-z").arg(self.0).status();
        }
    }
}

/// A tmpfs of `mib` MiB mounted at the path it holds (a small disk to
/// fill), unmounted (lazily) on drop.
#[derive(Debug)]
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB at `at` (made if missing); needs root.
    pub fn new(at: &Path, mib: u32) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mkdir");
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(st.success(), "mounting a tmpfs needs root");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Opens the live tree of `data`, waiting up to 2 s while its lock is
/// held: right after an unmount in this process, a child that another test
/// thread forked may still hold a copy of the lock's descriptor until it
/// execs (the descriptor is close-on-exec, but the fork copies it first).
pub fn open_when_free(data: &Path) -> LiveTree {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match LiveTree::open(data) {
            Err(engine::Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r.expect("open"),
        }
    }
}
