//! The `syncer` binary mounted for real: `mount` (daemon and foreground),
//! `unmount`, signals, the engine lock against a second mount, concurrent
//! writers, and `mount -t fuse.syncer` through scripts/mount.fuse.syncer.
//! Needs root, /dev/fuse and fusermount3 (scripts/deps.sh); fails without them.
//!
//! Every mount is watched by a [`Guard`] that detaches it lazily if a test
//! fails half way, so a failing test never leaves a stale mount behind.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::{initialized, pattern, setxattr, xattrs};

const BIN: &str = env!("CARGO_BIN_EXE_syncer");

fn syncer<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(BIN).args(args).stdin(Stdio::null()).output().expect("run syncer")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn ok(o: Output, what: &str) -> String {
    assert!(o.status.success(), "{what}: {}", text(&o));
    text(&o)
}

/// A fresh data dir (64 KiB blocks, so multi-block paths run on small data)
/// and an empty mountpoint in a temp dir.
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    initialized(&["--block-size", "64KiB"])
}

/// The `/proc/mounts` entry at `mnt`: (source, type).
fn mount_entry(mnt: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    text.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(1).map(Path::new) == Some(mnt)).then(|| (f[0].to_string(), f[2].to_string()))
    })
}

/// Detaches `mnt` lazily on drop if it is still mounted, and kills a
/// foreground mount process it owns.
struct Guard {
    mnt: PathBuf,
    child: Option<Child>,
}

impl Guard {
    fn new(mnt: &Path) -> Self {
        Guard { mnt: mnt.to_path_buf(), child: None }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if mount_entry(&self.mnt).is_some() {
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.mnt).status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn mount(data: &Path, mnt: &Path) -> Guard {
    let g = Guard::new(mnt);
    ok(syncer([OsStr::new("mount"), data.as_os_str(), mnt.as_os_str()]), "mount");
    let (source, fstype) = mount_entry(mnt).expect("mounted when `mount` returns");
    assert_eq!(Path::new(&source), data.canonicalize().expect("canonical data dir"));
    assert_eq!(fstype, "fuse.syncer");
    g
}

fn unmount(mnt: &Path) {
    ok(syncer([OsStr::new("unmount"), mnt.as_os_str()]), "unmount");
    assert_eq!(mount_entry(mnt), None, "still mounted after `unmount` returned");
}

/// The data dir is free again: nobody holds its writer lock.
fn assert_lock_free(data: &Path) {
    let f = std::fs::File::open(data.join("lock")).expect("open lock");
    f.try_lock().expect("the writer lock is free once `unmount` has returned");
}

fn verify_and_rebuild(data: &Path) {
    let out = ok(syncer([OsStr::new("log"), OsStr::new("verify"), data.as_os_str()]), "log verify");
    assert!(!out.contains("DAMAGE"), "{out}");
    ok(syncer([OsStr::new("index"), OsStr::new("rebuild"), data.as_os_str()]), "index rebuild");
}

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    /// File content, or a symlink's target.
    content: Vec<u8>,
    xattrs: support::Xattrs,
}

/// The whole tree under `root`: content and metadata of every entry.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("dir entry").path();
            let m = std::fs::symlink_metadata(&p).expect("lstat");
            let content = if m.file_type().is_symlink() {
                std::fs::read_link(&p).expect("readlink").as_os_str().as_bytes().to_vec()
            } else if m.is_file() {
                std::fs::read(&p).expect("read")
            } else {
                Vec::new()
            };
            let entry = Entry {
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                size: if m.is_dir() { 0 } else { m.size() },
                mtime: (m.mtime(), m.mtime_nsec()),
                content,
                xattrs: xattrs(&p).unwrap_or_else(|e| panic!("xattrs of {}: errno {e}", p.display())),
            };
            out.insert(p.strip_prefix(root).expect("under root").to_path_buf(), entry);
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Files of several sizes (empty, small, multi-block, sparse), nested
/// directories, symlinks, xattrs, modes, owners and times.
fn populate(mnt: &Path) {
    std::fs::create_dir_all(mnt.join("docs/deep/er")).expect("mkdir");
    std::fs::write(mnt.join("empty"), b"").expect("write");
    std::fs::write(mnt.join("small.txt"), b"hello, syncer\n").expect("write");
    std::fs::write(mnt.join("docs/multi.bin"), pattern(1, 300_000)).expect("write");
    std::fs::write(mnt.join("docs/deep/er/leaf"), pattern(2, 65_536)).expect("write");
    {
        let mut f = std::fs::File::create(mnt.join("sparse")).expect("create");
        f.write_all(b"head").expect("write");
        f.set_len(1 << 20).expect("extend");
        std::os::unix::fs::FileExt::write_at(&f, b"tail", (1 << 20) - 4).expect("write tail");
    }
    {
        // Appends in several writes to one open file.
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(mnt.join("log.txt")).expect("open");
        for i in 0..100 {
            writeln!(f, "line {i}").expect("append");
        }
    }
    std::os::unix::fs::symlink("small.txt", mnt.join("link")).expect("symlink");
    std::os::unix::fs::symlink("../../multi.bin", mnt.join("docs/deep/up")).expect("symlink");
    std::os::unix::fs::symlink("/nowhere/at/all", mnt.join("dangling")).expect("symlink");
    setxattr(&mnt.join("small.txt"), b"user.color", b"blue", 0).expect("setxattr");
    setxattr(&mnt.join("small.txt"), b"user.empty", b"", 0).expect("setxattr");
    setxattr(&mnt.join("docs"), b"user.dir", &pattern(3, 300), 0).expect("setxattr");
    std::fs::set_permissions(mnt.join("docs/multi.bin"), std::fs::Permissions::from_mode(0o640)).expect("chmod");
    std::fs::set_permissions(mnt.join("docs/deep"), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::chown(mnt.join("empty"), Some(1234), Some(5678)).expect("chown");
    let old = std::time::UNIX_EPOCH + Duration::new(1_000_000_000, 123_456_789);
    let f = std::fs::File::options().write(true).open(mnt.join("docs/deep/er/leaf")).expect("open");
    f.set_times(std::fs::FileTimes::new().set_modified(old)).expect("utimens");
}

#[test]
fn daemon_roundtrip_unmount_verify_remount() {
    let (_tmp, data, mnt) = setup();
    let g = mount(&data, &mnt);
    populate(&mnt);
    let before = snapshot(&mnt);
    assert_eq!(before.len(), 12, "{:?}", before.keys().collect::<Vec<_>>());
    unmount(&mnt);
    assert_lock_free(&data);
    assert!(!data.join("dirty").exists(), "a clean unmount leaves no `dirty` marker");
    verify_and_rebuild(&data);
    drop(g);
    let g = mount(&data, &mnt);
    let after = snapshot(&mnt);
    for (p, e) in &before {
        assert_eq!(after.get(p), Some(e), "{} differs after remount", p.display());
    }
    assert_eq!(after.len(), before.len());
    unmount(&mnt);
    drop(g);
    let o = syncer([OsStr::new("unmount"), mnt.as_os_str()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("is not mounted"), "{}", text(&o));
}

#[test]
fn sigterm_to_foreground_mount_commits_buffered_writes() {
    let (tmp, data, mnt) = setup();
    let mut g = Guard::new(&mnt);
    let log = std::fs::File::create(tmp.path().join("fg.log")).expect("log");
    let child = Command::new(BIN)
        .arg("mount")
        .arg(&data)
        .arg(&mnt)
        .arg("--foreground")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn foreground mount");
    let pid = i32::try_from(child.id()).expect("pid");
    g.child = Some(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while mount_entry(&mnt).is_none() {
        assert!(Instant::now() < deadline, "foreground mount did not appear");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Closed files, each written in many small writes (buffered until release).
    for i in 0..20u64 {
        let mut f = std::fs::File::create(mnt.join(format!("f{i}"))).expect("create");
        for chunk in pattern(i, 100_000 + 777 * i as usize).chunks(4096) {
            f.write_all(chunk).expect("write");
        }
    }
    // One file still open (and unflushed) when the signal comes: the mount
    // is detached lazily and its writes are committed once it is closed.
    let mut open = std::fs::File::create(mnt.join("open")).expect("create");
    open.write_all(&pattern(99, 200_000)).expect("write");
    // SAFETY: kill has no memory preconditions; pid is our child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while mount_entry(&mnt).is_some() {
        assert!(Instant::now() < deadline, "SIGTERM did not detach the mount");
        std::thread::sleep(Duration::from_millis(10));
    }
    open.write_all(b"after the signal").expect("write after detach");
    drop(open);
    let status = loop {
        if let Some(s) = g.child.as_mut().expect("child").try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "foreground mount did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    g.child = None;
    let out = std::fs::read_to_string(tmp.path().join("fg.log")).expect("read log");
    assert!(status.success(), "foreground mount: {status}: {out}");
    assert!(out.contains("unmounted cleanly"), "{out}");
    assert_lock_free(&data);
    verify_and_rebuild(&data);
    drop(g);
    let g = mount(&data, &mnt);
    for i in 0..20u64 {
        let got = std::fs::read(mnt.join(format!("f{i}"))).expect("read");
        assert!(got == pattern(i, 100_000 + 777 * i as usize), "f{i} differs after SIGTERM and remount");
    }
    let mut want = pattern(99, 200_000);
    want.extend_from_slice(b"after the signal");
    assert!(std::fs::read(mnt.join("open")).expect("read") == want, "the file open at SIGTERM differs");
    unmount(&mnt);
    drop(g);
}

#[test]
fn second_mount_of_a_data_dir_is_refused() {
    let (tmp, data, mnt) = setup();
    let mnt2 = tmp.path().join("mnt2");
    std::fs::create_dir(&mnt2).expect("mkdir");
    let g = mount(&data, &mnt);
    std::fs::write(mnt.join("before"), b"1").expect("write");
    let _g2 = Guard::new(&mnt2);
    // Elsewhere, on the same place, and in the foreground (straight to the engine lock).
    for (target, fg) in [(&mnt2, false), (&mnt, false), (&mnt2, true)] {
        let mut args = vec![OsStr::new("mount"), data.as_os_str(), target.as_os_str()];
        if fg {
            args.push(OsStr::new("--foreground"));
        }
        let o = syncer(args);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let msg = text(&o);
        assert!(
            msg.contains("already mounted on") || msg.contains("already a syncer mount") || msg.contains("lock"),
            "{msg}"
        );
        assert!(msg.contains(data.to_str().expect("utf8")), "the error names the data dir: {msg}");
    }
    assert_eq!(mount_entry(&mnt2), None);
    // The first mount is undisturbed.
    std::fs::write(mnt.join("after"), b"2").expect("write");
    assert_eq!(std::fs::read(mnt.join("before")).expect("read"), b"1");
    unmount(&mnt);
    verify_and_rebuild(&data);
    drop(g);
    let g = mount(&data, &mnt);
    assert_eq!(std::fs::read(mnt.join("after")).expect("read"), b"2");
    unmount(&mnt);
    drop(g);
}

#[test]
fn concurrent_writers_from_threads() {
    let (_tmp, data, mnt) = setup();
    let g = mount(&data, &mnt);
    let size = |i: usize| 1_000_000 + 12_345 * i;
    std::thread::scope(|s| {
        for i in 0..8usize {
            let p = mnt.join(format!("w{i}"));
            s.spawn(move || {
                let want = pattern(i as u64 + 100, size(i));
                let mut f = std::fs::File::create(&p).expect("create");
                // Odd write sizes so that writes straddle block boundaries.
                for chunk in want.chunks(10_000 + 1_111 * i) {
                    f.write_all(chunk).expect("write");
                }
                if i % 2 == 0 {
                    f.sync_all().expect("fsync");
                }
                drop(f);
                let mut got = Vec::new();
                std::fs::File::open(&p).expect("open").read_to_end(&mut got).expect("read");
                assert!(got == want, "w{i} differs while mounted");
            });
        }
    });
    unmount(&mnt);
    verify_and_rebuild(&data);
    drop(g);
    let g = mount(&data, &mnt);
    for i in 0..8usize {
        assert!(std::fs::read(mnt.join(format!("w{i}"))).expect("read") == pattern(i as u64 + 100, size(i)), "w{i}");
    }
    unmount(&mnt);
    drop(g);
}

#[test]
fn mount_t_fuse_syncer_through_the_helper() {
    let (_tmp, data, mnt) = setup();
    let helper = Path::new("/sbin/mount.fuse.syncer");
    let ours = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mount.fuse.syncer");
    let installed = std::fs::read(helper).ok();
    assert!(
        installed == Some(std::fs::read(&ours).expect("read scripts/mount.fuse.syncer")),
        "{} is missing or differs from {}: run scripts/deps.sh",
        helper.display(),
        ours.display()
    );
    let mount_t = |opts: &str| {
        let mut cmd = Command::new("mount");
        cmd.arg("-t").arg("fuse.syncer");
        if !opts.is_empty() {
            cmd.arg("-o").arg(opts);
        }
        // The helper finds `syncer` on PATH unless SYNCER names it.
        let o = cmd.arg(&data).arg(&mnt).env("SYNCER", BIN).stdin(Stdio::null()).output().expect("run mount(8)");
        assert!(o.status.success(), "mount -t fuse.syncer: {}", text(&o));
        let (source, fstype) = mount_entry(&mnt).expect("mounted when mount(8) returns");
        assert_eq!(Path::new(&source), data.canonicalize().expect("canonical"));
        assert_eq!(fstype, "fuse.syncer");
    };
    // This mount's kernel flags, from the mount table.
    let flags = || {
        let table = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
        let at = mnt.display().to_string();
        let line = table.lines().find(|l| l.split(' ').nth(1) == Some(at.as_str())).expect("in the table").to_string();
        line.split(' ').nth(3).unwrap_or_default().split(',').map(str::to_string).collect::<Vec<_>>()
    };
    let g = Guard::new(&mnt);
    mount_t("");
    // mount(8)'s defaults hold through it, as for any filesystem it mounts.
    let f = flags();
    assert!(!f.iter().any(|o| o == "nodev" || o == "nosuid"), "{f:?}");
    std::fs::write(mnt.join("via-helper"), b"fstab").expect("write");
    unmount(&mnt);
    mount_t("nodev,nosuid");
    let f = flags();
    assert!(f.iter().any(|o| o == "nodev") && f.iter().any(|o| o == "nosuid"), "{f:?}");
    unmount(&mnt);
    // fstab-style generic options are accepted.
    mount_t("defaults,nofail,noatime");
    assert_eq!(std::fs::read(mnt.join("via-helper")).expect("read"), b"fstab");
    unmount(&mnt);
    drop(g);
    verify_and_rebuild(&data);
}
