//! POSIX behaviour of a real mount: names, attributes, errors, xattrs,
//! renames, readdir, statfs.

// Test code, helpers included: a panic here is a failed test, not a lost file.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use testkit::mount::*;
use testkit::sys::*;

#[test]
fn files_directories_and_their_errors() {
    require_fuse();
    let m = Mounted::new();
    fs::write(m.p("a.txt"), b"hello").unwrap();
    assert_eq!(fs::read(m.p("a.txt")).unwrap(), b"hello");
    assert_eq!(fs::metadata(m.p("a.txt")).unwrap().len(), 5);

    fs::create_dir(m.p("d")).unwrap();
    assert_eq!(err_of(fs::create_dir(m.p("d"))), libc::EEXIST);
    assert_eq!(err_of(fs::metadata(m.p("missing"))), libc::ENOENT);
    assert_eq!(err_of(fs::read(m.p("d/missing"))), libc::ENOENT);
    fs::write(m.p("d/inner"), b"x").unwrap();
    assert_eq!(err_of(fs::remove_dir(m.p("d"))), libc::ENOTEMPTY);
    assert_eq!(err_of(fs::remove_file(m.p("d"))), libc::EISDIR);
    assert_eq!(err_of(fs::remove_dir(m.p("a.txt"))), libc::ENOTDIR);
    assert_eq!(err_of(fs::metadata(m.p("a.txt/x"))), libc::ENOTDIR);
    assert_eq!(err_of(File::create(m.p("d"))), libc::EISDIR);
    assert_eq!(err_of(fs::hard_link(m.p("a.txt"), m.p("hl"))), libc::EPERM);
    let long = "n".repeat(256);
    assert_eq!(err_of(fs::write(m.p(&long), b"")), libc::ENAMETOOLONG);

    // O_EXCL on an existing name.
    let excl = OpenOptions::new().write(true).create_new(true).open(m.p("a.txt"));
    assert_eq!(err_of(excl), libc::EEXIST);

    fs::remove_file(m.p("d/inner")).unwrap();
    fs::remove_dir(m.p("d")).unwrap();
    assert_eq!(err_of(fs::metadata(m.p("d"))), libc::ENOENT);

    // Symlinks.
    std::os::unix::fs::symlink("a.txt", m.p("ln")).unwrap();
    assert_eq!(fs::read_link(m.p("ln")).unwrap().to_str(), Some("a.txt"));
    assert_eq!(fs::read(m.p("ln")).unwrap(), b"hello");
    assert!(fs::symlink_metadata(m.p("ln")).unwrap().file_type().is_symlink());
    assert_eq!(fs::symlink_metadata(m.p("ln")).unwrap().len(), 5);
    assert_eq!(err_of(fs::read_link(m.p("a.txt"))), libc::EINVAL);
}

#[test]
fn special_nodes_and_attributes() {
    require_fuse();
    let m = Mounted::new();
    let fifo = cstr(&m.p("fifo"));
    let dev = cstr(&m.p("dev"));
    // SAFETY: valid C strings.
    unsafe {
        assert_eq!(libc::mkfifo(fifo.as_ptr(), 0o640), 0, "mkfifo: {}", last_errno());
        assert_eq!(libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)), 0, "mknod: {}", last_errno());
    }
    let md = fs::symlink_metadata(m.p("fifo")).unwrap();
    assert!(md.file_type().is_fifo());
    let md = fs::symlink_metadata(m.p("dev")).unwrap();
    assert!(md.file_type().is_char_device());
    assert_eq!(md.rdev(), libc::makedev(1, 3));

    // chmod, chown, utimens with explicit, NOW and OMIT times.
    fs::write(m.p("f"), b"data").unwrap();
    fs::set_permissions(m.p("f"), fs::Permissions::from_mode(0o4711)).unwrap();
    assert_eq!(fs::metadata(m.p("f")).unwrap().mode() & 0o7777, 0o4711);
    std::os::unix::fs::chown(m.p("f"), Some(1234), Some(5678)).unwrap();
    let md = fs::metadata(m.p("f")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));

    let f = cstr(&m.p("f"));
    let times = [libc::timespec { tv_sec: 1_000_000, tv_nsec: 5 }, libc::timespec { tv_sec: 2_000_000, tv_nsec: 7 }];
    // SAFETY: valid path and two timespecs.
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, f.as_ptr(), times.as_ptr(), 0) }, 0);
    let md = fs::metadata(m.p("f")).unwrap();
    assert_eq!((md.atime(), md.atime_nsec(), md.mtime(), md.mtime_nsec()), (1_000_000, 5, 2_000_000, 7));
    let omit_now = [
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
    ];
    // SAFETY: as above.
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, f.as_ptr(), omit_now.as_ptr(), 0) }, 0);
    let md = fs::metadata(m.p("f")).unwrap();
    assert_eq!(md.atime(), 1_000_000, "UTIME_OMIT kept atime");
    assert!(md.mtime() > 2_000_000, "UTIME_NOW set mtime");

    // Truncate through setattr, shrinking and growing.
    let file = OpenOptions::new().write(true).open(m.p("f")).unwrap();
    file.set_len(2).unwrap();
    assert_eq!(fs::read(m.p("f")).unwrap(), b"da");
    file.set_len(6).unwrap();
    assert_eq!(fs::read(m.p("f")).unwrap(), b"da\0\0\0\0");
    drop(file);

    // O_TRUNC and O_APPEND.
    let mut t = OpenOptions::new().write(true).truncate(true).open(m.p("f")).unwrap();
    t.write_all(b"abc").unwrap();
    drop(t);
    let mut a = OpenOptions::new().append(true).open(m.p("f")).unwrap();
    a.write_all(b"def").unwrap();
    a.write_all(b"gh").unwrap();
    drop(a);
    assert_eq!(fs::read(m.p("f")).unwrap(), b"abcdefgh");

    // A write moves mtime forward.
    let before = fs::metadata(m.p("f")).unwrap().modified().unwrap();
    let mut w = OpenOptions::new().write(true).open(m.p("f")).unwrap();
    w.write_all(b"Z").unwrap();
    drop(w);
    assert!(fs::metadata(m.p("f")).unwrap().modified().unwrap() >= before);
    assert_eq!(fs::read(m.p("f")).unwrap(), b"Zbcdefgh");
}

fn renameat2(from: &std::path::Path, to: &std::path::Path, flags: u32) -> i32 {
    let (a, b) = (cstr(from), cstr(to));
    // SAFETY: valid C strings.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), flags) };
    if rc == 0 {
        0
    } else {
        last_errno()
    }
}

#[test]
fn renames_with_flags_and_errors() {
    require_fuse();
    let m = Mounted::new();
    fs::write(m.p("a"), b"A").unwrap();
    fs::write(m.p("b"), b"B").unwrap();
    assert_eq!(renameat2(&m.p("a"), &m.p("b"), libc::RENAME_NOREPLACE), libc::EEXIST);
    assert_eq!(renameat2(&m.p("a"), &m.p("b"), libc::RENAME_EXCHANGE), 0);
    assert_eq!(fs::read(m.p("a")).unwrap(), b"B");
    assert_eq!(fs::read(m.p("b")).unwrap(), b"A");
    assert_eq!(renameat2(&m.p("a"), &m.p("nope"), libc::RENAME_EXCHANGE), libc::ENOENT);
    assert_eq!(renameat2(&m.p("a"), &m.p("c"), libc::RENAME_NOREPLACE), 0);
    assert_eq!(fs::read(m.p("c")).unwrap(), b"B");

    // Plain rename replaces a file.
    fs::rename(m.p("c"), m.p("b")).unwrap();
    assert_eq!(fs::read(m.p("b")).unwrap(), b"B");
    assert_eq!(err_of(fs::metadata(m.p("c"))), libc::ENOENT);

    fs::create_dir_all(m.p("d1/sub")).unwrap();
    fs::create_dir(m.p("d2")).unwrap();
    fs::write(m.p("d2/x"), b"x").unwrap();
    assert_eq!(err_of(fs::rename(m.p("d1"), m.p("d2"))), libc::ENOTEMPTY);
    assert_eq!(err_of(fs::rename(m.p("d1"), m.p("b"))), libc::ENOTDIR);
    assert_eq!(err_of(fs::rename(m.p("b"), m.p("d1"))), libc::EISDIR);
    assert_eq!(err_of(fs::rename(m.p("d1"), m.p("d1/sub/in"))), libc::EINVAL);
    assert_eq!(err_of(fs::rename(m.p("missing"), m.p("z"))), libc::ENOENT);
    // Moving a directory across directories keeps its content.
    fs::rename(m.p("d2"), m.p("d1/sub/d2")).unwrap();
    assert_eq!(fs::read(m.p("d1/sub/d2/x")).unwrap(), b"x");
    // Replacing an empty directory works.
    fs::create_dir(m.p("empty")).unwrap();
    fs::rename(m.p("d1/sub/d2"), m.p("empty")).unwrap();
    assert_eq!(fs::read(m.p("empty/x")).unwrap(), b"x");
}

fn setxattr(p: &std::path::Path, name: &str, value: &[u8], flags: i32) -> i32 {
    let (p, n) = (cstr(p), std::ffi::CString::new(name).unwrap());
    // SAFETY: valid C strings and buffer.
    let rc = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), flags) };
    if rc == 0 {
        0
    } else {
        last_errno()
    }
}

fn getxattr(p: &std::path::Path, name: &str, size: usize) -> Result<(usize, Vec<u8>), i32> {
    let (p, n) = (cstr(p), std::ffi::CString::new(name).unwrap());
    let mut buf = vec![0u8; size];
    // SAFETY: buffer of `size` bytes (a null pointer when 0 is allowed, but a
    // dangling empty Vec pointer is never written to).
    let rc = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), size) };
    if rc < 0 {
        Err(last_errno())
    } else {
        buf.truncate(if size == 0 { 0 } else { rc as usize });
        Ok((rc as usize, buf))
    }
}

fn listxattr(p: &std::path::Path, size: usize) -> Result<(usize, Vec<u8>), i32> {
    let p = cstr(p);
    let mut buf = vec![0u8; size];
    // SAFETY: as for getxattr.
    let rc = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), size) };
    if rc < 0 {
        Err(last_errno())
    } else {
        buf.truncate(if size == 0 { 0 } else { rc as usize });
        Ok((rc as usize, buf))
    }
}

#[test]
fn xattrs_with_flags_and_size_protocol() {
    require_fuse();
    let m = Mounted::new();
    let f = m.p("f");
    fs::write(&f, b"").unwrap();
    assert_eq!(getxattr(&f, "user.a", 100), Err(libc::ENODATA));
    assert_eq!(setxattr(&f, "user.a", b"12345", 0), 0);
    assert_eq!(setxattr(&f, "user.a", b"x", libc::XATTR_CREATE), libc::EEXIST);
    assert_eq!(setxattr(&f, "user.b", b"x", libc::XATTR_REPLACE), libc::ENODATA);
    assert_eq!(setxattr(&f, "user.b", b"bee", libc::XATTR_CREATE), 0);
    assert_eq!(setxattr(&f, "user.b", b"BEE", libc::XATTR_REPLACE), 0);
    assert_eq!(getxattr(&f, "user.a", 0), Ok((5, vec![])));
    assert_eq!(getxattr(&f, "user.a", 4), Err(libc::ERANGE));
    assert_eq!(getxattr(&f, "user.a", 5), Ok((5, b"12345".to_vec())));
    assert_eq!(getxattr(&f, "user.b", 64), Ok((3, b"BEE".to_vec())));
    assert_eq!(listxattr(&f, 0), Ok((14, vec![])));
    assert_eq!(listxattr(&f, 3), Err(libc::ERANGE));
    assert_eq!(listxattr(&f, 100), Ok((14, b"user.a\0user.b\0".to_vec())));
    let p = cstr(&f);
    let n = std::ffi::CString::new("user.a").unwrap();
    // SAFETY: valid C strings.
    assert_eq!(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) }, 0);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) }, -1);
    assert_eq!(last_errno(), libc::ENODATA);
    assert_eq!(listxattr(&f, 100), Ok((7, b"user.b\0".to_vec())));
    // Directories carry xattrs too.
    fs::create_dir(m.p("d")).unwrap();
    assert_eq!(setxattr(&m.p("d"), "user.dir", b"v", 0), 0);
    assert_eq!(getxattr(&m.p("d"), "user.dir", 10), Ok((1, b"v".to_vec())));
}

/// Every name of a directory through libc readdir, "." and ".." included.
fn raw_listing(dir: &std::path::Path) -> Vec<String> {
    let c = cstr(dir);
    let mut out = Vec::new();
    // SAFETY: valid path; the DIR stream is closed below; entries are read
    // before the next readdir call.
    unsafe {
        let d = libc::opendir(c.as_ptr());
        assert!(!d.is_null());
        loop {
            let e = libc::readdir(d);
            if e.is_null() {
                break;
            }
            let name = std::ffi::CStr::from_ptr((*e).d_name.as_ptr());
            out.push(name.to_string_lossy().into_owned());
        }
        libc::closedir(d);
    }
    out
}

#[test]
fn readdir_is_stable_while_entries_come_and_go() {
    require_fuse();
    let m = Mounted::new();
    fs::create_dir(m.p("d")).unwrap();
    let n = 600;
    for i in 0..n {
        fs::write(m.p(&format!("d/f{i:04}")), b"").unwrap();
    }
    let all = raw_listing(&m.p("d"));
    assert_eq!(all.len(), n + 2);
    assert!(all.contains(&".".to_string()) && all.contains(&"..".to_string()));

    // Read part of the listing, then change the directory, then read on.
    let mut it = fs::read_dir(m.p("d")).unwrap();
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen.push(it.next().unwrap().unwrap().file_name().into_string().unwrap());
    }
    for i in 0..n {
        if i % 3 == 0 {
            fs::remove_file(m.p(&format!("d/f{i:04}"))).unwrap();
        }
    }
    for i in 0..200 {
        fs::write(m.p(&format!("d/g{i:04}")), b"").unwrap();
    }
    for e in it {
        seen.push(e.unwrap().file_name().into_string().unwrap());
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no entry is returned twice");
    for i in 0..n {
        if i % 3 != 0 {
            let name = format!("f{i:04}");
            assert!(unique.contains(&name), "{name} existed throughout and must be listed");
        }
    }
    // A fresh listing sees the new state exactly.
    let now: BTreeSet<String> =
        fs::read_dir(m.p("d")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(now.len(), n - n.div_ceil(3) + 200);
    assert!(now.contains("g0199") && !now.contains("f0000"));

    // Entries carry inode numbers consistent with stat.
    for e in fs::read_dir(m.p("d")).unwrap().take(20) {
        let e = e.unwrap();
        assert_eq!(std::os::unix::fs::DirEntryExt::ino(&e), fs::metadata(e.path()).unwrap().ino());
    }
}

#[test]
fn statfs_and_mount_table() {
    require_fuse();
    let m = Mounted::new();
    fs::write(m.p("f"), vec![7u8; 100_000]).unwrap();
    let c = cstr(&m.mnt);
    // SAFETY: valid path and an out struct.
    let mut v: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut v) }, 0);
    assert!(v.f_blocks > 0 && v.f_bsize > 0);
    assert!(v.f_files >= 2, "files counts nodes");
    assert!((v.f_blocks - v.f_bfree) * v.f_frsize >= 100_000, "used covers logical bytes");
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    let line = mounts.lines().find(|l| l.split(' ').nth(1) == Some(m.mnt.to_str().unwrap())).expect("mount listed");
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields[0], m.data.to_str().unwrap());
    assert_eq!(fields[2], "fuse.syncer");
    assert!(fields[3].contains("default_permissions"), "{line}");
}

#[test]
fn metadata_survives_remount() {
    require_fuse();
    let mut m = Mounted::new();
    fs::create_dir_all(m.p("a/b")).unwrap();
    fs::write(m.p("a/b/f"), b"persist me").unwrap();
    std::os::unix::fs::symlink("b/f", m.p("a/ln")).unwrap();
    fs::set_permissions(m.p("a/b/f"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(setxattr(&m.p("a/b/f"), "user.k", b"v", 0), 0);
    m.remount();
    assert_eq!(fs::read(m.p("a/b/f")).unwrap(), b"persist me");
    assert_eq!(fs::read(m.p("a/ln")).unwrap(), b"persist me");
    assert_eq!(fs::metadata(m.p("a/b/f")).unwrap().mode() & 0o7777, 0o600);
    assert_eq!(getxattr(&m.p("a/b/f"), "user.k", 10), Ok((1, b"v".to_vec())));
}

#[test]
fn read_only_mount_refuses_changes() {
    require_fuse();
    let mut m = Mounted::new();
    fs::write(m.p("f"), b"x").unwrap();
    m.unmount();
    m.opts.read_only = true;
    m.mount();
    assert_eq!(fs::read(m.p("f")).unwrap(), b"x");
    assert_eq!(err_of(fs::write(m.p("g"), b"y")), libc::EROFS);
    assert_eq!(err_of(OpenOptions::new().write(true).open(m.p("f"))), libc::EROFS);
    assert_eq!(err_of(fs::create_dir(m.p("d"))), libc::EROFS);
}

#[test]
fn open_unlinked_file_stays_readable() {
    require_fuse();
    let m = Mounted::new();
    let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(m.p("tmp")).unwrap();
    f.write_all(b"before").unwrap();
    f.sync_all().unwrap();
    fs::remove_file(m.p("tmp")).unwrap();
    f.write_all(b" after").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "before after");
    assert_eq!(f.metadata().unwrap().nlink(), 0);
}
