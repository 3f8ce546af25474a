//! Holes, fallocate, copy_file_range and directory link counts through a
//! real mount: SEEK_DATA/SEEK_HOLE in a 512 PiB sparse file return at once;
//! `st_blocks` counts stored bytes; punch hole, zero range and keep size
//! behave as on the plain disk; fallocate refuses what the disk cannot
//! hold and takes set-user-id/set-group-id off as a write does;
//! copy_file_range copies exactly and shares blocks; a directory has 2
//! links plus one per subdirectory, live, after a remount, in a
//! point-in-time view and after two replicas merge.

// Test code, helpers included: a panic here is a failed test, not a lost file.
#![allow(clippy::unwrap_used)]

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use engine::ids::Timestamp;
use engine::{LiveTree, PastView, Store};
use testkit::mount::*;
use testkit::sys::*;

const BS: u64 = 64 << 10;

/// Runs `f` on a thread and fails the test if it takes longer than
/// `secs` (a hang fails the test instead of wedging the suite).
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(_) => panic!("{what} did not return within {secs} s"),
    }
}

/// `lseek(fd, off, whence)`, or the errno.
fn seek(fd: i32, off: u64, whence: i32) -> Result<u64, i32> {
    // SAFETY: plain syscall on a valid fd.
    let r = unsafe { libc::lseek(fd, off as i64, whence) };
    if r < 0 {
        Err(last_errno())
    } else {
        Ok(r as u64)
    }
}

fn falloc(f: &File, mode: i32, off: u64, len: u64) -> Result<(), i32> {
    // SAFETY: plain syscall on a valid fd.
    match unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) } {
        0 => Ok(()),
        _ => Err(last_errno()),
    }
}

#[test]
fn seek_data_and_hole_in_a_512_pib_sparse_file_return_at_once() {
    require_fuse();
    let m = Mounted::small_blocks();
    let far = 1u64 << 59;
    let path = m.p("huge");
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(b"mid", 1 << 40).unwrap();
    f.write_all_at(b"end", far).unwrap();
    let fd = f.as_raw_fd();
    let size = far + 3;
    // Uncommitted writes are found too (lseek commits them first).
    let got = within(60, "lseek in a 512 PiB file", move || {
        [
            seek(fd, 1, libc::SEEK_DATA),
            seek(fd, 0, libc::SEEK_HOLE),
            seek(fd, BS, libc::SEEK_DATA),
            seek(fd, (1 << 40) + BS, libc::SEEK_DATA),
            seek(fd, 1 << 40, libc::SEEK_HOLE),
            seek(fd, far, libc::SEEK_HOLE),
            seek(fd, far + 1, libc::SEEK_DATA),
            seek(fd, size, libc::SEEK_DATA),
            seek(fd, size, libc::SEEK_HOLE),
        ]
    });
    assert_eq!(
        got,
        [
            Ok(1),
            Ok(BS),
            Ok(1 << 40),
            Ok(far),
            Ok((1 << 40) + BS),
            Ok(size),
            Ok(far + 1),
            Err(libc::ENXIO),
            Err(libc::ENXIO)
        ]
    );
    assert_eq!(f.metadata().unwrap().len(), size);
    // A file of holes only.
    let g = File::create(m.p("empty")).unwrap();
    g.set_len(far).unwrap();
    let gfd = g.as_raw_fd();
    let got = within(60, "lseek in a file of holes", move || {
        [seek(gfd, 0, libc::SEEK_DATA), seek(gfd, 12345, libc::SEEK_HOLE), seek(gfd, far - 1, libc::SEEK_HOLE)]
    });
    assert_eq!(got, [Err(libc::ENXIO), Ok(12345), Ok(far - 1)]);
    drop((f, g));
    // `cp --sparse` style reading of the whole file is quick too: the
    // kernel's SEEK_DATA loop visits three blocks.
    let f = File::open(&path).unwrap();
    let fd = f.as_raw_fd();
    let runs = within(60, "walking the data of a 512 PiB file", move || {
        let mut runs = Vec::new();
        let mut at = 0;
        while let Ok(d) = seek(fd, at, libc::SEEK_DATA) {
            let h = seek(fd, d, libc::SEEK_HOLE).expect("a hole follows data");
            runs.push((d, h));
            at = h;
        }
        runs
    });
    assert_eq!(runs, vec![(0, BS), (1 << 40, (1 << 40) + BS), (far, size)]);
}

/// Bytes `st_blocks` says a file holds.
fn allocated(p: &Path) -> u64 {
    fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn st_blocks_counts_stored_bytes_and_holes_are_free() {
    require_fuse();
    let mut m = Mounted::small_blocks();
    let p = m.p("sparse");
    let f = OpenOptions::new().write(true).create(true).truncate(true).open(&p).unwrap();
    f.write_all_at(&pattern(1, BS as usize), 10 << 30).unwrap();
    f.write_all_at(b"x", 0).unwrap();
    // Buffered: at most the blocks written.
    assert!(allocated(&p) <= 2 * BS, "{}", allocated(&p));
    f.sync_all().unwrap();
    drop(f);
    // Block 0 holds "x" and zeros up to the next block: stored whole.
    let want = 2 * BS;
    assert_eq!(fs::metadata(&p).unwrap().len(), (10 << 30) + BS);
    assert_eq!(allocated(&p), want.div_ceil(512) * 512);
    m.remount();
    assert_eq!(allocated(&p), want.div_ceil(512) * 512, "after a remount");
    // A truncate that cuts the data frees it.
    File::options().write(true).open(&p).unwrap().set_len(1 << 30).unwrap();
    assert_eq!(allocated(&p), BS);
}

/// A tiny xorshift for the operation sequence.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Same operations on a file in the mount and on the plain disk (ext4
/// under the temp dir): punch hole, zero range (with and without keep
/// size), allocate (with and without keep size), writes and truncates at
/// random places; sizes and every byte must agree after each, and after a
/// remount.
#[test]
fn punch_hole_zero_range_and_keep_size_match_the_plain_disk() {
    require_fuse();
    let mut m = Mounted::small_blocks();
    let reference = m.tmp.path().join("reference");
    let ours = m.p("f");
    let open = |p: &Path| OpenOptions::new().read(true).write(true).create(true).truncate(false).open(p).unwrap();
    let (mut a, mut b) = (open(&ours), open(&reference));
    let mut rng = Rng(0x5eed_1234_5678_9abc);
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let zero = libc::FALLOC_FL_ZERO_RANGE;
    let keep = libc::FALLOC_FL_KEEP_SIZE;
    let mut punched_whole = false;
    for step in 0..300u64 {
        let size = b.metadata().unwrap().len();
        let span = (size + 3 * BS).max(BS);
        let off = rng.below(span);
        let len = 1 + rng.below(3 * BS);
        let what = match rng.below(8) {
            0 | 1 => {
                let data = pattern(step, len as usize);
                a.write_all_at(&data, off).unwrap();
                b.write_all_at(&data, off).unwrap();
                "write"
            }
            2 => {
                let new = rng.below(span);
                a.set_len(new).unwrap();
                b.set_len(new).unwrap();
                "truncate"
            }
            mode => {
                let mode = [punch, punch, zero, zero | keep, 0, keep][(mode - 3) as usize % 6];
                let r = falloc(&b, mode, off, len);
                assert_eq!(falloc(&a, mode, off, len), r, "fallocate mode {mode:#x} {off}+{len}");
                if mode == punch && off.div_ceil(BS) * BS + BS <= (off + len).min(size) {
                    punched_whole = true;
                }
                "fallocate"
            }
        };
        if std::env::var("HOLES_TRACE").is_ok() {
            eprintln!("step {step}: {what} at {off}+{len} -> {}", b.metadata().unwrap().len());
        }
        let (x, y) = (a.metadata().unwrap().len(), b.metadata().unwrap().len());
        assert_eq!(x, y, "size after step {step} ({what} at {off}+{len})");
        let (mut da, mut db) = (vec![0u8; x as usize], vec![0u8; y as usize]);
        a.read_exact_at(&mut da, 0).unwrap();
        b.read_exact_at(&mut db, 0).unwrap();
        assert!(da == db, "bytes after step {step} ({what} at {off}+{len})");
        // Stored bytes never exceed what the reference allocates plus a
        // block per edge: holes are free.
        a.sync_all().unwrap();
        assert!(
            allocated(&ours) <= x.div_ceil(BS) * BS,
            "st_blocks {} for {x} bytes after step {step}",
            allocated(&ours)
        );
    }
    assert!(punched_whole, "the sequence punched whole blocks");
    // A whole-block punch frees what it covers.
    a.write_all_at(&pattern(7, (4 * BS) as usize), 0).unwrap();
    b.write_all_at(&pattern(7, (4 * BS) as usize), 0).unwrap();
    a.sync_all().unwrap();
    let before = allocated(&ours);
    falloc(&a, punch, BS, 2 * BS).unwrap();
    falloc(&b, punch, BS, 2 * BS).unwrap();
    assert_eq!(allocated(&ours), before - 2 * BS, "punching two blocks frees them");
    assert_eq!(seek(a.as_raw_fd(), BS, libc::SEEK_DATA), Ok(3 * BS));
    drop((a, b));
    m.remount();
    assert!(fs::read(&ours).unwrap() == fs::read(&reference).unwrap(), "after a remount");
    a = open(&ours);
    b = open(&reference);
    assert_eq!(a.metadata().unwrap().len(), b.metadata().unwrap().len());
    // Modes Linux refuses are refused alike.
    assert_eq!(falloc(&a, libc::FALLOC_FL_PUNCH_HOLE, 0, 10), Err(libc::EOPNOTSUPP));
    assert_eq!(falloc(&a, 0, 0, 0), Err(libc::EINVAL));
}

#[test]
fn fallocate_beyond_the_free_space_is_enospc() {
    require_fuse();
    let tmp = tempfile::tempdir().unwrap();
    let disk = Tmpfs::new(&tmp.path().join("disk"), 32);
    let data = disk.0.join("data");
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mut config = engine::config::Config::new_default(engine::ids::MachineId::random());
    config.block_size = BS;
    Store::init(&data, config).unwrap();
    let engine = Arc::new(LiveTree::open(&data).unwrap());
    let handle = syncer_fs::spawn(engine, &mnt, syncer_fs::MountOptions::new(data.display().to_string())).unwrap();
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(mnt.join("f")).unwrap();
    f.write_all_at(b"kept", 0).unwrap();
    assert_eq!(falloc(&f, 0, 0, 1 << 30), Err(libc::ENOSPC));
    assert_eq!(falloc(&f, libc::FALLOC_FL_KEEP_SIZE, 4, 64 << 20), Err(libc::ENOSPC));
    assert_eq!(f.metadata().unwrap().len(), 4, "a refused fallocate changes nothing");
    // What fits is granted.
    assert_eq!(falloc(&f, 0, 0, 4 << 20), Ok(()));
    assert_eq!(f.metadata().unwrap().len(), 4 << 20);
    let mut head = [0u8; 4];
    f.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(&head, b"kept");
    // Inside the file nothing more is asked for.
    assert_eq!(falloc(&f, 0, 0, 4 << 20), Ok(()));
    drop(f);
    handle.unmount().unwrap();
}

/// Mode of `p` (permission bits).
fn mode_of(p: &Path) -> u32 {
    fs::metadata(p).unwrap().mode() & 0o7777
}

/// Mode of `p` as `stat -c %a` shows it: a statx for the mode alone.
fn mode_by_stat(p: &Path) -> u32 {
    let o = Command::new("stat").args(["-c", "%a"]).arg(p).output().expect("run stat");
    assert!(o.status.success(), "stat {}", p.display());
    u32::from_str_radix(String::from_utf8_lossy(&o.stdout).trim(), 8).expect("octal mode from stat")
}

/// fallocate, punch hole and zero range by a user who is not root and
/// not in the file's group take set-user-id and set-group-id off as a
/// write by that user does on the plain disk (the kernel's rule: set-id
/// always, set-group-id too for a stranger to the group), and `stat` shows
/// it at once, also to a statx for the mode alone, even when the kernel
/// caches the attributes for the live TTL (the file's writes are committed
/// first); root's keep them.
#[test]
fn fallocate_takes_setuid_and_setgid_off_as_a_write_does() {
    require_fuse();
    let m = Mounted::with(|c| c.block_size = BS, |o| o.allow_other = true);
    fs::set_permissions(m.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&m.mnt, fs::Permissions::from_mode(0o777)).unwrap();
    let plain = m.tmp.path().join("plain");
    fs::create_dir(&plain).unwrap();
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o777)).unwrap();
    let as_nobody = |args: &[&str], file: &Path| {
        let st =
            Command::new(args[0]).args(&args[1..]).arg(file).uid(65534).gid(65534).status().expect("run as nobody");
        assert!(st.success(), "{args:?} {} as nobody", file.display());
    };
    let ops: [&[&str]; 3] = [
        &["fallocate", "-l", "16384"],
        &["fallocate", "-p", "-o", "0", "-l", "4096"],
        &["fallocate", "-z", "-l", "4096"],
    ];
    for (i, mode) in [0o4666u32, 0o2666, 0o2676, 0o2766, 0o6766, 0o6777, 0o6666].into_iter().enumerate() {
        let disk_written = plain.join(format!("w{i}"));
        let disk_fallocated = plain.join(format!("a{i}"));
        for p in [&disk_written, &disk_fallocated] {
            fs::write(p, b"x").unwrap();
            fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(mode_of(p), mode);
        }
        as_nobody(&["sh", "-c", "printf y >> \"$0\""], &disk_written);
        as_nobody(&["fallocate", "-l", "8192"], &disk_fallocated);
        let want = mode_of(&disk_written);
        assert_eq!(want, mode_of(&disk_fallocated), "mode {mode:o}: fallocate and a write on the plain disk");
        assert_eq!(want & libc::S_ISUID, 0, "mode {mode:o}");
        for (j, op) in ops.iter().enumerate() {
            let ours = m.p(&format!("f{i}-{j}"));
            fs::write(&ours, vec![b'x'; 8192]).unwrap();
            fs::set_permissions(&ours, fs::Permissions::from_mode(mode)).unwrap();
            File::open(&ours).unwrap().sync_all().unwrap();
            assert_eq!(mode_of(&ours), mode);
            as_nobody(op, &ours);
            // stat(1) asks for the mode alone, which the kernel answers
            // from its cache unless told it is stale.
            assert_eq!(mode_by_stat(&ours), want, "mode {mode:o}, {op:?}: as a write on the plain disk");
            assert_eq!(mode_of(&ours), want, "mode {mode:o}, {op:?}");
        }
        // Root keeps them (CAP_FSETID).
        let root = m.p(&format!("r{i}"));
        fs::write(&root, b"x").unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(mode)).unwrap();
        falloc(&File::options().write(true).open(&root).unwrap(), 0, 0, 8192).unwrap();
        assert_eq!(mode_of(&root), mode, "root's fallocate keeps mode {mode:o}");
    }
}

/// `copy_file_range(2)` itself (std may choose other ways).
fn copy_range(from: &File, off_in: u64, to: &File, off_out: u64, len: u64) -> u64 {
    let (mut i, mut o) = (off_in as i64, off_out as i64);
    let mut done = 0u64;
    while done < len {
        // SAFETY: valid fds and offsets.
        let n = unsafe {
            libc::copy_file_range(from.as_raw_fd(), &mut i, to.as_raw_fd(), &mut o, (len - done) as usize, 0)
        };
        assert!(n >= 0, "copy_file_range: errno {}", last_errno());
        if n == 0 {
            break;
        }
        done += n as u64;
    }
    done
}

/// Bytes under `dir` (the data dir's blobs).
fn du(dir: &Path) -> u64 {
    let mut total = 0;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = e.metadata().unwrap();
        total += if md.is_dir() { du(&e.path()) } else { md.len() };
    }
    total
}

#[test]
fn copy_file_range_copies_exactly_and_shares_blocks() {
    require_fuse();
    let mut m = Mounted::with(|c| c.block_size = BS, |_| {});
    let src_data = {
        let mut d = pattern(3, (40 * BS + 777) as usize);
        // A hole in the source.
        d[(10 * BS) as usize..(14 * BS) as usize].fill(0);
        d
    };
    fs::write(m.p("src"), &src_data).unwrap();
    File::open(m.p("src")).unwrap().sync_all().unwrap();
    m.remount();
    let blobs = m.data.join("blobs");
    let before = du(&blobs);
    // Aligned, whole file: every block shared.
    let src = File::open(m.p("src")).unwrap();
    let dst = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(m.p("dst")).unwrap();
    assert_eq!(copy_range(&src, 0, &dst, 0, 1 << 40), src_data.len() as u64);
    dst.sync_all().unwrap();
    assert!(fs::read(m.p("dst")).unwrap() == src_data);
    assert_eq!(du(&blobs), before, "a copy of whole blocks takes no room");
    assert_eq!(seek(dst.as_raw_fd(), 10 * BS, libc::SEEK_DATA), Ok(14 * BS), "the hole is copied as a hole");
    // Into the middle of a file with data, at the same place in a block
    // (shares the middle, copies the edges), and at another (copies all).
    let mut model = pattern(4, (30 * BS) as usize);
    let other = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(m.p("other")).unwrap();
    other.write_all_at(&model, 0).unwrap();
    for (off_in, off_out, len) in
        [(5 * BS + 100, 2 * BS + 100, 12 * BS), (7, 3 * BS + 9, 3 * BS), (BS, 29 * BS, 20 * BS)]
    {
        let n = copy_range(&src, off_in, &other, off_out, len);
        assert_eq!(n, len);
        let end = (off_out + len) as usize;
        if model.len() < end {
            model.resize(end, 0);
        }
        model[off_out as usize..end].copy_from_slice(&src_data[off_in as usize..(off_in + len) as usize]);
        let mut back = vec![0u8; model.len()];
        other.read_exact_at(&mut back, 0).unwrap();
        assert!(back == model, "after copying {len} bytes from {off_in} to {off_out}");
        assert_eq!(other.metadata().unwrap().len(), model.len() as u64);
    }
    // Past the end of the source: nothing.
    assert_eq!(copy_range(&src, src_data.len() as u64, &other, 0, 100), 0);
    drop((src, dst, other));
    m.remount();
    assert!(fs::read(m.p("dst")).unwrap() == src_data, "after a remount");
    assert!(fs::read(m.p("other")).unwrap() == model, "after a remount");
}

fn nlink(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap().nlink()
}

/// Every directory under `root` has 2 links plus one per subdirectory.
fn link_counts_hold(root: &Path) {
    let mut subdirs = 0;
    for e in fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            subdirs += 1;
            link_counts_hold(&e.path());
        }
    }
    assert_eq!(nlink(root), 2 + subdirs, "{}", root.display());
}

/// renameat2(2) with `flags`; the errno if it fails.
fn renameat2(a: &Path, b: &Path, flags: libc::c_uint) -> Result<(), i32> {
    let (a, b) = (cstr(a), cstr(b));
    // SAFETY: valid C strings.
    let r =
        unsafe { libc::syscall(libc::SYS_renameat2, libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(last_errno())
    }
}

fn rename_exchange(a: &Path, b: &Path) {
    renameat2(a, b, libc::RENAME_EXCHANGE).unwrap_or_else(|e| panic!("renameat2 exchange: errno {e}"));
}

#[test]
fn directory_link_counts_follow_subdirectories() {
    require_fuse();
    let mut m = Mounted::small_blocks();
    assert_eq!(nlink(&m.mnt), 2);
    for d in ["a", "a/b", "a/c", "a/c/d", "p", "q"] {
        fs::create_dir(m.p(d)).unwrap();
    }
    fs::write(m.p("a/file"), b"f").unwrap();
    fs::write(m.p("q/file"), b"f").unwrap();
    assert_eq!((nlink(&m.mnt), nlink(&m.p("a")), nlink(&m.p("a/c")), nlink(&m.p("a/b"))), (5, 4, 3, 2));
    std::thread::sleep(Duration::from_millis(20));
    let t1 = Timestamp::now();
    std::thread::sleep(Duration::from_millis(20));
    fs::remove_dir(m.p("a/c/d")).unwrap();
    assert_eq!(nlink(&m.p("a/c")), 2, "rmdir");
    fs::rename(m.p("a/c"), m.p("p/c")).unwrap();
    assert_eq!((nlink(&m.p("a")), nlink(&m.p("p"))), (3, 3), "rename into another parent");
    fs::rename(m.p("a/b"), m.p("a/b2")).unwrap();
    assert_eq!(nlink(&m.p("a")), 3, "rename within a parent");
    // Exchange a directory with a file in another directory.
    rename_exchange(&m.p("p/c"), &m.p("q/file"));
    assert_eq!((nlink(&m.p("p")), nlink(&m.p("q"))), (2, 3), "exchange");
    // Rename over an empty directory.
    fs::create_dir(m.p("p/empty")).unwrap();
    fs::rename(m.p("a/b2"), m.p("p/empty")).unwrap();
    assert_eq!((nlink(&m.p("a")), nlink(&m.p("p"))), (2, 3), "rename over an empty directory");
    link_counts_hold(&m.mnt);
    m.remount();
    assert_eq!((nlink(&m.mnt), nlink(&m.p("a")), nlink(&m.p("p")), nlink(&m.p("q"))), (5, 2, 3, 3), "after a remount");
    link_counts_hold(&m.mnt);
    // The same from an index rebuilt from the log.
    m.unmount();
    fs::remove_file(m.data.join("index.redb")).unwrap();
    m.mount();
    link_counts_hold(&m.mnt);

    // A point-in-time view at t1 counts as the tree was then.
    let at_mnt = m.tmp.path().join("at");
    fs::create_dir(&at_mnt).unwrap();
    let view = Arc::new(PastView::open(&m.data, t1).unwrap());
    let handle = syncer_fs::spawn(view, &at_mnt, syncer_fs::MountOptions::new("at".to_string())).unwrap();
    assert_eq!(
        (nlink(&at_mnt), nlink(&at_mnt.join("a")), nlink(&at_mnt.join("a/c")), nlink(&at_mnt.join("p"))),
        (5, 4, 3, 2),
        "in the view at t1"
    );
    link_counts_hold(&at_mnt);
    handle.unmount().unwrap();
}

/// Copies every peer log folder of `from`'s data dir into `to`'s.
fn ship_logs(from: &Path, to: &Path) {
    for e in fs::read_dir(from.join("log")).unwrap() {
        let e = e.unwrap();
        let dst = to.join("log").join(e.file_name());
        fs::create_dir_all(&dst).unwrap();
        for seg in fs::read_dir(e.path()).unwrap() {
            let seg = seg.unwrap();
            let target = dst.join(seg.file_name());
            let theirs = fs::read(seg.path()).unwrap();
            let ours = fs::read(&target).unwrap_or_default();
            if theirs.len() > ours.len() {
                fs::write(&target, theirs).unwrap();
            }
        }
    }
}

/// Mounts `m` once the last mount's engine has let go of the data dir
/// (an unmount returns before its engine is dropped).
fn mount_when_free(m: &mut Mounted) {
    let lock = File::options().read(true).write(true).open(m.data.join("lock")).unwrap();
    for _ in 0..200 {
        // SAFETY: flock on a valid fd.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            // SAFETY: as above.
            unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_UN) };
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(lock);
    m.mount();
}

#[test]
fn link_counts_after_two_replicas_merge_concurrent_changes() {
    require_fuse();
    let mut a = Mounted::small_blocks();
    let mut b = Mounted::small_blocks();
    fs::create_dir(a.p("d")).unwrap();
    fs::create_dir(a.p("d/gone")).unwrap();
    fs::create_dir(a.p("e")).unwrap();
    a.unmount();
    b.unmount();
    ship_logs(&a.data, &b.data);
    mount_when_free(&mut a);
    mount_when_free(&mut b);
    assert_eq!(nlink(&b.p("d")), 3);
    // Concurrently: a adds d/x and moves e into d; b adds d/y, removes
    // d/gone, and adds e/z.
    fs::create_dir(a.p("d/x")).unwrap();
    fs::rename(a.p("e"), a.p("d/e")).unwrap();
    fs::create_dir(b.p("d/y")).unwrap();
    fs::remove_dir(b.p("d/gone")).unwrap();
    fs::create_dir(b.p("e/z")).unwrap();
    a.unmount();
    b.unmount();
    ship_logs(&a.data, &b.data);
    ship_logs(&b.data, &a.data);
    mount_when_free(&mut a);
    mount_when_free(&mut b);
    for m in [&a, &b] {
        assert_eq!((nlink(&m.mnt), nlink(&m.p("d")), nlink(&m.p("d/e"))), (3, 5, 3), "{}", m.mnt.display());
        link_counts_hold(&m.mnt);
    }
}

/// The two refusals README.md documents as choices.
#[test]
fn o_tmpfile_and_rename_whiteout_are_refused_clearly() {
    require_fuse();
    let m = Mounted::small_blocks();
    let dir = cstr(&m.mnt);
    // SAFETY: valid C string.
    let fd = unsafe { libc::open(dir.as_ptr(), libc::O_TMPFILE | libc::O_RDWR, 0o600) };
    assert_eq!((fd, last_errno()), (-1, libc::EOPNOTSUPP), "O_TMPFILE");
    fs::write(m.p("a"), b"a").unwrap();
    assert_eq!(renameat2(&m.p("a"), &m.p("b"), libc::RENAME_WHITEOUT), Err(libc::EINVAL), "RENAME_WHITEOUT");
    assert_eq!(fs::read(m.p("a")).unwrap(), b"a");
}
