//! Shared by the integration tests: a fresh data dir mounted in-process,
//! a guard for mounts made by the `syncer` binary, a recursive copy for
//! checked-in fixtures, and errno helpers for raw syscalls.
#![allow(dead_code)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::config::Config;
use engine::ids::MachineId;
use engine::Engine;
use syncer_fs::{MountHandle, MountOptions};

/// FUSE tests mount for real: they need root and /dev/fuse, and fail (never
/// skip) without them.
pub fn require_fuse() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(root && Path::new("/dev/fuse").exists(), "FUSE tests need root and /dev/fuse (scripts/deps.sh)");
}

/// A fresh data dir (64 KiB blocks) mounted on a temp dir. Unmounts on drop.
pub struct Mounted {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub mnt: PathBuf,
    handle: Option<MountHandle>,
}

impl Mounted {
    pub fn new() -> Self {
        require_fuse();
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir mnt");
        let mut config = Config::new_default(MachineId::random());
        config.block_size = 64 << 10;
        config.small_block = 64 << 10;
        Engine::init(&data, config).expect("init");
        let mut m = Mounted { tmp, data, mnt, handle: None };
        m.mount();
        m
    }

    pub fn mount(&mut self) {
        let engine = Arc::new(Engine::open(&self.data).expect("open"));
        let opts = MountOptions::new(self.data.display().to_string());
        self.handle = Some(syncer_fs::spawn(engine, &self.mnt, opts).expect("mount"));
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

/// `Ok(ret)` or `Err(errno)` of a libc call that returns -1 on failure.
pub fn check(ret: isize) -> Result<isize, i32> {
    if ret < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(ret)
    }
}

/// The errno of a std I/O result (0 for success).
pub fn errno_of<T>(r: &std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

pub fn setxattr(p: &Path, name: &[u8], value: &[u8], flags: i32) -> Result<(), i32> {
    let n = CString::new(name).expect("no NUL in xattr name");
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe { libc::lsetxattr(cstr(p).as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), flags) };
    check(r as isize).map(|_| ())
}

pub fn getxattr(p: &Path, name: &[u8], cap: usize) -> Result<Vec<u8>, i32> {
    let n = CString::new(name).expect("no NUL in xattr name");
    let mut buf = vec![0u8; cap];
    // SAFETY: valid C strings and a buffer of `cap` bytes.
    let r = unsafe { libc::lgetxattr(cstr(p).as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), cap) };
    let len = check(r)?;
    buf.truncate(len as usize);
    Ok(buf)
}

/// Extended attributes as `(name, value)` pairs, sorted by name.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Every xattr of `p` (names sorted) with its value.
pub fn xattrs(p: &Path) -> Result<Xattrs, i32> {
    let mut buf = vec![0u8; 1 << 16];
    // SAFETY: valid C string and a buffer of the given length.
    let r = unsafe { libc::llistxattr(cstr(p).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let len = check(r)? as usize;
    let mut out = Vec::new();
    for name in buf[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        out.push((name.to_vec(), getxattr(p, name, 1 << 16)?));
    }
    out.sort();
    Ok(out)
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

/// Unmounts `0` (lazily, as a last resort) if a test fails while it is
/// mounted by the `syncer` binary.
pub struct MountGuard<'a>(pub &'a Path);

impl Drop for MountGuard<'_> {
    fn drop(&mut self) {
        if std::fs::read_to_string("/proc/mounts").unwrap_or_default().contains(&self.0.display().to_string()) {
            let _ = std::process::Command::new("fusermount3").arg("-u").arg("-z").arg(self.0).status();
        }
    }
}

/// Copies the folder `from` to `to`, recursively (fixtures into temp dirs).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let dst = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).expect("copy");
        }
    }
}

/// One node found by [`walk`]: its path below the root, its metadata, its
/// kind (`'d'`, `'l'` or `'f'`), its content or link target, its xattrs.
pub struct Found {
    pub rel: String,
    pub md: std::fs::Metadata,
    pub kind: char,
    pub body: Vec<u8>,
    pub xattrs: Xattrs,
}

/// Every node below `root` (a mountpoint), depth first.
pub fn walk(root: &Path) -> Vec<Found> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).expect("readdir") {
            let path = e.expect("entry").path();
            let md = std::fs::symlink_metadata(&path).expect("lstat");
            let rel = path.strip_prefix(root).expect("under root").display().to_string();
            let (kind, body) = if md.is_dir() {
                dirs.push(path.clone());
                ('d', Vec::new())
            } else if md.file_type().is_symlink() {
                ('l', std::fs::read_link(&path).expect("readlink").into_os_string().into_encoded_bytes())
            } else {
                ('f', std::fs::read(&path).expect("read"))
            };
            let xattrs = xattrs(&path).expect("xattrs");
            out.push(Found { rel, md, kind, body, xattrs });
        }
    }
    out
}

/// A new data dir for a checked-in fixture at `dir` (4 KiB blocks), made
/// by `machine`; refuses to overwrite one (fixtures are never regenerated).
pub fn init_fixture(dir: &Path, machine: MachineId) {
    assert!(!dir.exists(), "{} exists; the fixture is never regenerated", dir.display());
    let mut config = Config::new_default(machine);
    config.block_size = 4096;
    config.small_block = 1024;
    Engine::init(dir, config).expect("init");
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

/// A tmpfs of `mib` MiB mounted at the path it holds (a small disk to
/// fill), unmounted (lazily) on drop.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
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
