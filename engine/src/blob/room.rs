//! How much room the filesystem under the store has, and what it keeps back.

/// `(free for an unprivileged writer, total)` bytes of the filesystem
/// holding `path`.
pub fn disk_space(path: &std::path::Path) -> Option<(u64, u64)> {
    let vfs = statvfs(path)?;
    #[allow(clippy::unnecessary_cast)] // statvfs fields are 32-bit on some targets
    let frsize = vfs.f_frsize as u64;
    #[allow(clippy::unnecessary_cast)]
    Some(((vfs.f_bavail as u64).saturating_mul(frsize), (vfs.f_blocks as u64).saturating_mul(frsize)))
}

/// Why the filesystem holding `path` would refuse a write now (mounted
/// read-only: EROFS; less than `room` bytes free: ENOSPC), if it would;
/// `None` also when it cannot be asked.
pub fn refuses_writes(path: &std::path::Path, room: u64) -> Option<std::io::Error> {
    let vfs = statvfs(path)?;
    #[allow(clippy::unnecessary_cast)]
    if vfs.f_flag as u64 & libc::ST_RDONLY as u64 != 0 {
        return Some(std::io::Error::from_raw_os_error(libc::EROFS));
    }
    match disk_space(path) {
        Some((free, _)) if free < room => Some(std::io::Error::from_raw_os_error(libc::ENOSPC)),
        _ => None,
    }
}

pub(super) fn statvfs(path: &std::path::Path) -> Option<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string and `vfs` a plain C
    // struct that statvfs fills in.
    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut vfs) } != 0 {
        return None;
    }
    Some(vfs)
}

/// Most bytes stored between two looks at the free space (see
/// `BlobStore::check_room`).
pub(super) const ROOM_RECHECK: u64 = 1 << 30;

/// The reserve kept on a filesystem of `total` bytes when `configured` is
/// asked for: at most a sixteenth of the disk, so a small disk still holds
/// data.
pub fn reserve_on(configured: u64, total: u64) -> u64 {
    configured.min(total / 16)
}
