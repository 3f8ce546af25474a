//! Mount options and unmount/remount of the `syncer` binary through real
//! mounts: `mount -o remount,ro` and `remount,rw` (through mount(8) and the
//! helper), `dev`, `suid`, `noexec`, the access-time options, a mount that
//! waits for a previous mount still holding the data dir, `umount MNT`
//! followed at once by a new mount, and `syncer unmount DATA_DIR`.
//! Needs root, /dev/fuse, fusermount3, setpriv and the helper installed by
//! scripts/deps.sh.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::{initialized, MountGuard};

const BIN: &str = env!("CARGO_BIN_EXE_syncer");

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn run<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(BIN).args(args).stdin(Stdio::null()).output().expect("run syncer")
}

fn syncer<S: AsRef<OsStr>>(args: &[S]) -> String {
    let o = run(args);
    assert!(o.status.success(), "syncer {:?}: {}", args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(), text(&o));
    text(&o)
}

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    initialized(&[])
}

fn mount(data: &Path, mnt: &Path, opts: &str) -> Output {
    let mut args = vec![OsStr::new("mount"), data.as_os_str(), mnt.as_os_str()];
    if !opts.is_empty() {
        args.extend([OsStr::new("-o"), OsStr::new(opts)]);
    }
    run(&args)
}

/// The mount's own options in /proc/self/mountinfo.
fn mount_flags(mnt: &Path) -> Option<Vec<String>> {
    syncer_fs::mountinfo::read().expect("mountinfo").into_iter().rev().find(|m| m.mountpoint == mnt).map(|m| m.options)
}

fn errno_of(r: std::io::Result<()>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

/// mount(8) with the installed helper (SYNCER names our binary).
fn mount8(args: &[&OsStr]) -> Output {
    Command::new("mount").args(args).env("SYNCER", BIN).stdin(Stdio::null()).output().expect("run mount(8)")
}

#[test]
fn remount_ro_and_rw_through_mount8() {
    let (_tmp, data, mnt) = setup();
    let helper = Path::new("/sbin/mount.fuse.syncer");
    assert!(helper.exists(), "run scripts/deps.sh: {} is missing", helper.display());
    let o = mount(&data, &mnt, "");
    assert!(o.status.success(), "{}", text(&o));
    let _g = MountGuard(&mnt);
    std::fs::write(mnt.join("before"), b"1").expect("write");
    let o = mount8(&[OsStr::new("-o"), OsStr::new("remount,ro"), mnt.as_os_str()]);
    assert!(o.status.success(), "mount -o remount,ro: {}", text(&o));
    let flags = mount_flags(&mnt).expect("still mounted");
    assert!(flags.contains(&"ro".into()), "{flags:?}");
    assert!(flags.contains(&"nosuid".into()) && flags.contains(&"nodev".into()), "kept: {flags:?}");
    assert_eq!(errno_of(std::fs::write(mnt.join("after"), b"2")), libc::EROFS);
    assert_eq!(std::fs::read(mnt.join("before")).expect("read"), b"1");
    let o = mount8(&[OsStr::new("-o"), OsStr::new("remount,rw"), mnt.as_os_str()]);
    assert!(o.status.success(), "mount -o remount,rw: {}", text(&o));
    assert!(mount_flags(&mnt).expect("mounted").contains(&"rw".into()));
    std::fs::write(mnt.join("after"), b"2").expect("write after remount,rw");
    // Read-only again, then `syncer unmount` still waits for the commit.
    let o = run(&[OsStr::new("mount"), data.as_os_str(), mnt.as_os_str(), OsStr::new("-o"), OsStr::new("remount,ro")]);
    assert!(o.status.success(), "syncer mount -o remount,ro: {}", text(&o));
    syncer(&[OsStr::new("unmount"), mnt.as_os_str()]);
    std::fs::File::open(data.join("lock")).expect("lock").try_lock().expect("the lock is free after unmount");
    let o = mount(&data, &mnt, "");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(mnt.join("after")).expect("read"), b"2");
    syncer(&[OsStr::new("unmount"), mnt.as_os_str()]);

    // A read-only mount's process cannot write: remount,rw is refused by name.
    let o = mount(&data, &mnt, "ro");
    assert!(o.status.success(), "{}", text(&o));
    let o = mount8(&[OsStr::new("-o"), OsStr::new("remount,rw"), mnt.as_os_str()]);
    assert!(!o.status.success(), "remount,rw of a ro mount succeeded");
    assert!(text(&o).contains("mounted read-only"), "{}", text(&o));
    assert!(mount_flags(&mnt).expect("mounted").contains(&"ro".into()));
    syncer(&[OsStr::new("unmount"), mnt.as_os_str()]);
}

#[test]
fn dev_suid_noexec_and_atime_options() {
    let (tmp, data, mnt) = setup();
    // Default nodev: a device node cannot be opened. With dev it can.
    let o = mount(&data, &mnt, "");
    assert!(o.status.success(), "{}", text(&o));
    let g = MountGuard(&mnt);
    let null = mnt.join("null");
    let c = std::ffi::CString::new(null.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a valid C string.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
    assert_eq!(errno_of(std::fs::write(&null, b"x")), libc::EACCES, "nodev by default");
    // A set-user-id copy of id(1), owned by root.
    std::fs::copy("/usr/bin/id", mnt.join("id")).expect("copy id");
    std::fs::set_permissions(mnt.join("id"), std::fs::Permissions::from_mode(0o4755)).expect("chmod");
    syncer(&[OsStr::new("unmount"), mnt.as_os_str()]);
    drop(g);

    let euid_of_id = |mnt: &Path| {
        let o = Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(mnt.join("id"))
            .arg("-u")
            .output()
            .expect("setpriv");
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let o = mount(&data, &mnt, "allow_other");
    assert!(o.status.success(), "{}", text(&o));
    let g = MountGuard(&mnt);
    assert_eq!(euid_of_id(&mnt), "65534", "nosuid by default");
    syncer(&[OsStr::new("unmount"), mnt.as_os_str()]);
    drop(g);

    let o = mount(&data, &mnt, "allow_other,dev,suid");
    assert!(o.status.success(), "{}", text(&o));
    let g = MountGuard(&mnt);
    let flags = mount_flags(&mnt).expect("mounted");
    assert!(!flags.contains(&"nodev".into()) && !flags.contains(&"nosuid".into()), "{flags:?}");
    std::fs::write(&null, b"into /dev/null").expect("write to the device with dev");
    assert_eq!(std::fs::read(&null).expect("read the device"), b"");
    assert_eq!(euid_of_id(&mnt), "0", "suid");
    syncer(&[OsStr::new("unmount"), mnt.as_os_str()]);
    drop(g);

    // noexec is honoured (it used to be accepted and ignored).
    let o = mount(&data, &mnt, "noexec,nodiratime,noatime");
    assert!(o.status.success(), "{}", text(&o));
    let g = MountGuard(&mnt);
    let e = Command::new(mnt.join("id")).output().expect_err("exec on a noexec mount");
    assert_eq!(e.raw_os_error(), Some(libc::EACCES));
    syncer(&[OsStr::new("unmount"), mnt.as_os_str()]);
    drop(g);

    // Access-time modes other than noatime are refused by name, before anything starts.
    for opt in ["relatime", "strictatime", "atime"] {
        let o = mount(&data, &mnt, opt);
        assert!(!o.status.success(), "-o {opt} accepted");
        assert!(text(&o).contains(opt) && text(&o).contains("noatime"), "{}", text(&o));
        assert_eq!(mount_flags(&mnt), None);
    }
    drop(tmp);
}

#[test]
fn a_mount_waits_for_the_previous_holder_of_the_data_dir() {
    let (_tmp, data, mnt) = setup();
    // Someone holds the writer lock for a while (as an unmounted mount
    // still committing does): the new mount waits, says so, then mounts.
    let lock = std::fs::File::open(data.join("lock")).or_else(|_| std::fs::File::create(data.join("lock")));
    let lock = lock.expect("lock file");
    lock.lock().expect("flock");
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        drop(lock);
    });
    let start = Instant::now();
    let o = mount(&data, &mnt, "");
    let _g = MountGuard(&mnt);
    assert!(o.status.success(), "{}", text(&o));
    assert!(start.elapsed() >= Duration::from_millis(1400), "did not wait: {:?}", start.elapsed());
    assert!(text(&o).contains("waiting"), "says that it waits: {}", text(&o));
    release.join().expect("thread");
    std::fs::write(mnt.join("f"), b"x").expect("write");

    // umount(8) returns before the process has committed; a mount at once
    // after it succeeds (it waits if it must), every time.
    for i in 0..5 {
        std::fs::write(mnt.join(format!("g{i}")), vec![i as u8; 3 << 20]).expect("write");
        let o = Command::new("umount").arg(&mnt).output().expect("umount");
        assert!(o.status.success(), "umount: {}", text(&o));
        let o = mount(&data, &mnt, "");
        assert!(o.status.success(), "mount right after umount ({i}): {}", text(&o));
        assert_eq!(std::fs::read(mnt.join(format!("g{i}"))).expect("read"), vec![i as u8; 3 << 20]);
    }
    // An unmount in the background and a mount 10 ms later (xfstests
    // generic/604): the old mount may still be in the table; the new one
    // waits for it to leave.
    for i in 0..500 {
        std::fs::write(mnt.join(format!("s{i}")), [1u8; 4096]).expect("write");
    }
    let mut umount =
        Command::new(env!("CARGO_BIN_EXE_syncer")).arg("unmount").arg(&mnt).spawn().expect("syncer unmount &");
    std::thread::sleep(Duration::from_millis(10));
    let o = mount(&data, &mnt, "");
    assert!(umount.wait().expect("unmount").success(), "unmount");
    assert!(o.status.success(), "mount 10 ms after an unmount in the background: {}", text(&o));
    assert_eq!(std::fs::read(mnt.join("s499")).expect("read"), [1u8; 4096]);
    // A second read-write mount is still refused (after a short grace).
    let mnt2 = mnt.with_file_name("mnt2");
    std::fs::create_dir(&mnt2).expect("mkdir");
    let start = Instant::now();
    let o = mount(&data, &mnt2, "");
    assert!(!o.status.success() && text(&o).contains("already mounted on"), "{}", text(&o));
    assert!(start.elapsed() < Duration::from_secs(10));

    // `syncer unmount DATA_DIR`, and umount(8) with the data dir's relative
    // path (an absolute one reaches util-linux's statfs shortcut: see README).
    syncer(&[OsStr::new("unmount"), data.as_os_str()]);
    assert_eq!(mount_flags(&mnt), None);
    let o = mount(&data, &mnt, "");
    assert!(o.status.success(), "{}", text(&o));
    let parent = data.parent().expect("parent");
    let o = Command::new("umount").arg("data").current_dir(parent).output().expect("umount");
    assert!(o.status.success(), "umount data: {}", text(&o));
    assert_eq!(mount_flags(&mnt), None);
    let o = mount(&data, &mnt, "");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(mnt.join("f")).expect("read"), b"x");
    syncer(&[OsStr::new("unmount"), mnt.as_os_str()]);
}
