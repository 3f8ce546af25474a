//! A full local disk: a real detached mount on a small tmpfs that also
//! holds its `mount.log`. Filled through the mount, programs get ENOSPC,
//! never EIO; the daemon stays up (its log cannot kill it); deletes,
//! renames and mkdir go on working; `df` does not count the reserve as
//! room; once space is freed outside the mount, writes succeed again
//! without a remount; an unmount while full is clean; and after a remount
//! every file that `fsync` acknowledged is intact and `syncer log verify`
//! is clean.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

mod support;

fn syncer(args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_syncer")).args(args.iter().map(|a| a.as_ref())).output().expect("run syncer")
}

fn ok(out: std::process::Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    text
}

/// Bytes free for an unprivileged writer on the filesystem at `path`.
fn free_on(path: &Path) -> u64 {
    engine::blob::disk_space(path).expect("statvfs").0
}

/// Writes `data` to `path` and fsyncs it; the errno of the first call that
/// fails.
fn write_synced(path: &Path, data: &[u8]) -> Result<(), i32> {
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(-1);
    let mut f = std::fs::File::create(path).map_err(errno)?;
    f.write_all(data).map_err(errno)?;
    f.sync_all().map_err(errno)?;
    // close(2) reports a failed flush too; std ignores its result, so the
    // fsync above is the acknowledgement.
    Ok(())
}

/// A data dir on a 48 MiB tmpfs (a 4 MiB reserve asked for, 3 MiB kept: a
/// sixteenth of the disk; 8 MiB of ballast beside it), mounted by the
/// binary (detached, its log on the same disk), then filled through the
/// mount with fsynced 1 MiB files until one is refused.
struct Full {
    disk: support::Tmpfs,
    data: PathBuf,
    mnt: PathBuf,
    ballast: PathBuf,
    /// Files whose fsync succeeded, with their content.
    acked: Vec<(String, Vec<u8>)>,
    /// The errno of the write that was refused.
    refused: Option<i32>,
}

impl Full {
    fn new(tmp: &Path) -> Full {
        support::require_fuse();
        let disk = support::Tmpfs::new(&tmp.join("disk"), 48);
        let (data, mnt) = (disk.0.join("data"), tmp.join("mnt"));
        std::fs::create_dir(&mnt).expect("mkdir");
        ok(syncer(&[&"init", &data, &"--block-size", &"64KiB"]));
        let config = std::fs::read_to_string(data.join("config.toml")).expect("config");
        let config: String = config.lines().filter(|l| !l.starts_with("reserve")).map(|l| format!("{l}\n")).collect();
        std::fs::write(data.join("config.toml"), config + "reserve = \"4MiB\"\n").expect("config");
        let ballast = disk.0.join("ballast");
        std::fs::write(&ballast, vec![7u8; 8 << 20]).expect("ballast");
        ok(syncer(&[&"mount", &data, &mnt]));
        let mut full = Full { disk, data, mnt, ballast, acked: Vec::new(), refused: None };
        for i in 0..64u64 {
            let body = support::pattern(i, 1 << 20);
            match write_synced(&full.mnt.join(format!("f{i}")), &body) {
                Ok(()) => full.acked.push((format!("f{i}"), body)),
                Err(code) => {
                    full.refused = Some(code);
                    break;
                }
            }
        }
        full
    }

    /// Unmounts (cleanly), mounts again, and checks every acknowledged file
    /// and the log.
    fn remount_and_check(&self) {
        ok(syncer(&[&"unmount", &self.mnt]));
        let log = std::fs::read_to_string(self.data.join("mount.log")).unwrap_or_default();
        assert!(log.contains("unmounted cleanly"), "{log}");
        ok(syncer(&[&"mount", &self.data, &self.mnt]));
        for (name, body) in &self.acked {
            assert!(std::fs::read(self.mnt.join(name)).expect("read") == *body, "{name} differs after the remount");
        }
        ok(syncer(&[&"unmount", &self.mnt]));
        ok(syncer(&[&"log", &"verify", &self.data]));
    }
}

#[test]
fn a_full_disk_gives_enospc_keeps_the_mount_up_and_recovers_when_space_returns() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut full = Full::new(tmp.path());
    let _guard = support::MountGuard(&full.mnt);
    assert_eq!(full.refused, Some(libc::ENOSPC), "a full disk is ENOSPC (after {} files)", full.acked.len());
    assert!(full.acked.len() >= 10, "only {} files fit", full.acked.len());
    let mnt = full.mnt.clone();

    // The daemon is still up and serves: listing, delete, rename, mkdir.
    let listed = std::fs::read_dir(&mnt).expect("readdir").count();
    assert!(listed > full.acked.len(), "{listed} entries");
    let (gone, _) = full.acked.remove(0);
    std::fs::remove_file(mnt.join(&gone)).expect("delete while full");
    let (old, body) = full.acked.remove(0);
    std::fs::rename(mnt.join(&old), mnt.join("renamed")).expect("rename while full");
    full.acked.push(("renamed".into(), body));
    std::fs::create_dir(mnt.join("dir")).expect("mkdir while full");
    let status = ok(syncer(&[&"status", &full.data]));
    assert!(status.contains("disk room:") && status.contains("before the reserve of 3.0 MiB"), "{status}");
    // df shows no room for data: the reserve is not counted as free.
    let free = free_on(&mnt);
    assert!(free < 2 << 20, "df shows {free} bytes free on a full disk");

    // Space comes back outside the mount: writes succeed again.
    std::fs::remove_file(&full.ballast).expect("free space");
    let body = support::pattern(999, 1 << 20);
    write_synced(&mnt.join("after"), &body).expect("a write once space is back");
    full.acked.push(("after".into(), body));
    full.remount_and_check();
    drop(full.disk);
}

/// Unmounted while still full: the writes the disk refused (and whose
/// writers were told) are dropped, the unmount is clean, and nothing
/// acknowledged is lost.
#[test]
fn an_unmount_on_a_full_disk_is_clean_and_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let full = Full::new(tmp.path());
    let _guard = support::MountGuard(&full.mnt);
    assert_eq!(full.refused, Some(libc::ENOSPC));
    full.remount_and_check();
}

/// An ext4 filesystem in a 64 MiB image on a loop device, mounted with
/// `errors=remount-ro`, so that an error it reports turns it read-only
/// under open files, as a failing disk does; unmounted (lazily) on drop.
struct Ext4 {
    image: PathBuf,
    at: PathBuf,
}

impl Ext4 {
    fn new(dir: &Path) -> Ext4 {
        let (image, at) = (dir.join("ext4.img"), dir.join("ext4"));
        std::fs::create_dir_all(&at).expect("mkdir");
        std::fs::File::create(&image).and_then(|f| f.set_len(64 << 20)).expect("image");
        let run = |cmd: &mut Command| {
            let out = cmd.output().expect("run");
            assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(Command::new("mkfs.ext4").arg("-q").arg(&image));
        let ext4 = Ext4 { image, at };
        ext4.mount();
        ext4
    }

    fn mount(&self) {
        let out = Command::new("mount")
            .args(["-o", "loop,errors=remount-ro"])
            .arg(&self.image)
            .arg(&self.at)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "mount ext4 image: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Makes ext4 report an error: it turns itself read-only.
    fn fail(&self) {
        let out = Command::new("findmnt").args(["-n", "-o", "SOURCE"]).arg(&self.at).output().expect("findmnt");
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let name = dev.rsplit('/').next().unwrap_or_default().to_string();
        std::fs::write(format!("/sys/fs/ext4/{name}/trigger_fs_error"), "syncer test\n").expect("trigger_fs_error");
    }

    /// Unmounts, repairs (as an administrator would) and mounts again.
    fn repair(&self) {
        let st = Command::new("umount").arg(&self.at).status().expect("umount");
        assert!(st.success(), "umount ext4");
        let st = Command::new("e2fsck").arg("-fy").arg(&self.image).output().expect("e2fsck");
        assert!(st.status.code().is_some_and(|c| c <= 1), "e2fsck: {}", String::from_utf8_lossy(&st.stdout));
        self.mount();
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

/// The disk under the data dir turns read-only while mounted (ext4's
/// answer to an I/O error): writes get EROFS, not EIO; the daemon stays
/// up, answers and unmounts; once the disk is repaired, every file
/// `fsync` acknowledged is intact and `log verify` is clean.
#[test]
fn a_disk_that_turns_read_only_gives_erofs_keeps_the_mount_up_and_loses_nothing() {
    support::require_fuse();
    let tmp = tempfile::tempdir().expect("tempdir");
    let disk = Ext4::new(tmp.path());
    let (data, mnt) = (disk.at.join("data"), tmp.path().join("mnt"));
    std::fs::create_dir(&mnt).expect("mkdir");
    ok(syncer(&[&"init", &data, &"--block-size", &"64KiB"]));
    ok(syncer(&[&"mount", &data, &mnt]));
    let guard = support::MountGuard(&mnt);
    let mut acked = Vec::new();
    for i in 0..4u64 {
        let body = support::pattern(i, 300_000);
        write_synced(&mnt.join(format!("f{i}")), &body).expect("write before");
        acked.push((format!("f{i}"), body));
    }
    disk.fail();
    let errs: Vec<i32> = (10..14u64)
        .map(|i| write_synced(&mnt.join(format!("f{i}")), &support::pattern(i, 300_000)).expect_err("read-only disk"))
        .collect();
    assert!(errs.iter().all(|&e| e == libc::EROFS), "errnos {errs:?} (want EROFS)");
    // The daemon answers. A read gives the acknowledged bytes, or EROFS
    // when the index could not commit the last changes before the disk
    // turned read-only (they are in the log): never a missing file or
    // other bytes.
    for (name, body) in &acked {
        match std::fs::read(mnt.join(name)) {
            Ok(got) => assert!(got == *body, "{name}: other bytes while read-only"),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{name}: {e}"),
        }
    }
    match std::fs::read_dir(&mnt) {
        Ok(rd) => assert!(rd.count() >= acked.len(), "a listing lacks acknowledged files"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EROFS), "readdir: {e}"),
    }
    // The unmount cannot make the index durable on a read-only disk, but
    // it unmounts: the log holds everything acknowledged.
    let _ = syncer(&[&"unmount", &mnt]);
    drop(guard);
    disk.repair();
    ok(syncer(&[&"mount", &data, &mnt]));
    let _guard = support::MountGuard(&mnt);
    for (name, body) in &acked {
        assert!(std::fs::read(mnt.join(name)).expect("read after repair") == *body, "{name} after the repair");
    }
    write_synced(&mnt.join("after"), b"writable again").expect("a write after the repair");
    ok(syncer(&[&"unmount", &mnt]));
    ok(syncer(&[&"log", &"verify", &data]));
}

/// With a remote: once blocks are pushed, a copy larger than the disk's
/// free space completes, the blocks on the remote evicted to make room,
/// and every file reads back whole (evicted blocks fetched again).
#[test]
fn with_a_remote_pushed_blocks_are_evicted_to_make_room() {
    support::require_fuse();
    let tmp = tempfile::tempdir().expect("tempdir");
    let disk = support::Tmpfs::new(&tmp.path().join("disk"), 48);
    let (data, mnt, remote) = (disk.0.join("data"), tmp.path().join("mnt"), tmp.path().join("remote"));
    std::fs::create_dir(&mnt).expect("mkdir");
    // Blocks larger than `small_block` (64 KiB), which are never evicted.
    ok(syncer(&[&"init", &data, &"--remote", &remote, &"--block-size", &"128KiB"]));
    let mut written = Vec::new();
    let mut write = |from: u64, to: u64| {
        // With the engine's notes, so that a failure shows the evictions.
        let mut mount = Command::new(env!("CARGO_BIN_EXE_syncer"));
        mount.env("SYNCER_LOG", "info,fuser=error").arg("mount").arg(&data).arg(&mnt);
        ok(mount.output().expect("run syncer"));
        let _guard = support::MountGuard(&mnt);
        for i in from..to {
            let body = support::pattern(i, 1 << 20);
            let path = mnt.join(format!("f{i}"));
            if let Err(code) = write_synced(&path, &body) {
                let log = std::fs::read_to_string(data.join("mount.log")).unwrap_or_default();
                let log: Vec<&str> = log.lines().filter(|l| !l.contains("storing a block failed")).collect();
                let free = engine::blob::disk_space(&data).map(|(free, _)| free);
                panic!("f{i}: errno {code} with a remote to evict to; {free:?} bytes free; log:\n{}", log.join("\n"));
            }
            written.push((path, body));
        }
        ok(syncer(&[&"unmount", &mnt]));
    };
    write(0, 24);
    ok(syncer(&[&"sync", &data]));
    // 24 MiB are on the disk and the remote; 30 more do not fit beside them.
    write(24, 54);
    assert!(free_on(&disk.0) < 24 << 20);

    ok(syncer(&[&"mount", &data, &mnt]));
    let _guard = support::MountGuard(&mnt);
    for (path, body) in &written {
        assert!(std::fs::read(path).expect("read") == *body, "{} differs", path.display());
    }
    ok(syncer(&[&"unmount", &mnt]));
    drop(disk);
}
