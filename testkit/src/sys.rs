//! Raw syscall helpers for tests (errno, xattrs), deterministic test data,
//! and walks and copies of trees.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `p` as a C string.
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

/// `Ok(ret)` or `Err(errno)` of a libc call that returns -1 on failure.
pub fn check(ret: isize) -> Result<isize, i32> {
    if ret < 0 {
        Err(last_errno())
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

/// `lsetxattr(p, name, value, flags)`, or its errno.
pub fn setxattr(p: &Path, name: &[u8], value: &[u8], flags: i32) -> Result<(), i32> {
    let n = CString::new(name).expect("no NUL in xattr name");
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe { libc::lsetxattr(cstr(p).as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), flags) };
    check(r as isize).map(|_| ())
}

/// `lgetxattr(p, name)` into a buffer of `cap` bytes, or its errno.
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

/// Copies the folder `from` to `to`, recursively (fixtures into temp dirs,
/// snapshots of data dirs). Only folders and regular files are copied: a
/// data dir's control socket, left behind by a killed mount, is no data.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let dst = to.join(e.file_name());
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            copy_dir(&e.path(), &dst);
        } else if kind.is_file() {
            std::fs::copy(e.path(), &dst).unwrap_or_else(|err| panic!("copy {}: {err}", e.path().display()));
        }
    }
}

/// One node found by [`walk`].
#[derive(Debug)]
pub struct Found {
    /// Its path below the root.
    pub rel: String,
    /// Its metadata (lstat).
    pub md: std::fs::Metadata,
    /// Its kind: `'d'`, `'l'` or `'f'`.
    pub kind: char,
    /// Its content (files) or link target (symlinks).
    pub body: Vec<u8>,
    /// Its xattrs.
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
