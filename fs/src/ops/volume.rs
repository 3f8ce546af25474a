//! The whole filesystem: access, statfs, volume name, times, shutdown.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::time::SystemTime;

use fuser::Errno;

use crate::errno::errno;

use super::*;

impl Core {
    pub(crate) fn do_access(&self, ino: u64) -> Result<(), Errno> {
        // With default_permissions the kernel checks modes itself; this only
        // says whether the node still exists.
        self.state(self.node_of(ino)?).map(|_| ())
    }

    // ---- filesystem --------------------------------------------------

    pub(crate) fn do_statfs(&self) -> Result<StatFs, Errno> {
        let stats = self.tree.stats().map_err(|e| errno(&e))?;
        let path = CString::new(self.tree.data_dir().as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
        // SAFETY: `path` is a valid NUL-terminated string and `vfs` a plain
        // C struct that statvfs fills in.
        let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut vfs) };
        if rc != 0 {
            return Err(Errno::from(std::io::Error::last_os_error()));
        }
        #[allow(clippy::unnecessary_cast)] // statvfs fields are 32-bit on some targets
        let total = (vfs.f_blocks as u64).saturating_mul(vfs.f_frsize as u64);
        let reserve = engine::blob::reserve_on(self.tree.config().reserve, total);
        Ok(statfs_from(&vfs, stats.logical_bytes, stats.nodes, reserve))
    }

    #[cfg_attr(not(target_os = "macos"), allow(dead_code))]
    pub(crate) fn do_setvolname(&self, name: &OsStr) -> Result<(), Errno> {
        self.live()?.set_volname(name_bytes(name)).map_err(|e| errno(&e))
    }

    #[cfg_attr(not(target_os = "macos"), allow(dead_code))]
    pub(crate) fn do_getxtimes(&self, ino: u64) -> Result<(SystemTime, SystemTime), Errno> {
        let st = self.state(self.node_of(ino)?)?;
        Ok(crate::attr::xtimes(&st))
    }

    /// Commits every buffered write and makes it durable (`engine.close()`:
    /// sync, plus a durable index so the next open need not catch up).
    pub(crate) fn shutdown_flush(&self) -> Result<(), Errno> {
        let flushed = match self.wb.flush_all() {
            // The disk had no room for them: their writers were told so
            // already (every handle was flushed or fsynced, and closed, and
            // got the error), so they are dropped, as a program that got
            // ENOSPC expects, and the unmount is clean.
            Err(e) if crate::writeback::is_no_space(e) => {
                tracing::warn!("dropping writes the disk had no room for ({e:?}); their writers were told");
                Ok(())
            }
            other => other,
        };
        let synced = self.live.as_ref().map_or(Ok(()), |l| l.close()).map_err(|e| errno(&e));
        flushed.and(synced)
    }
}

/// The statfs answer: the data dir's filesystem, grown so that used space
/// covers the collection's logical size, less the data dir's `reserve`
/// (free space new data never uses: `df` shows the room before it), and
/// file counts from the tree.
// The casts matter on targets where statvfs fields are 32-bit.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn statfs_from(vfs: &libc::statvfs, logical_bytes: u64, nodes: u64, reserve: u64) -> StatFs {
    let frsize = (vfs.f_frsize as u64).max(512);
    let kept = reserve.div_ceil(frsize);
    let bavail = (vfs.f_bavail as u64).saturating_sub(kept);
    let bfree = (vfs.f_bfree as u64).saturating_sub(kept).max(bavail);
    let blocks = (vfs.f_blocks as u64).max(bfree + logical_bytes.div_ceil(frsize));
    let ffree = vfs.f_ffree as u64;
    StatFs {
        blocks,
        bfree,
        bavail,
        files: nodes.saturating_add(ffree),
        ffree,
        bsize: u32::try_from(frsize).unwrap_or(4096),
        namelen: 255,
        frsize: u32::try_from(frsize).unwrap_or(4096),
    }
}
