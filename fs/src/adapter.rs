//! The thin `fuser::Filesystem` adapter: unpack a request, call the matching
//! `Core::do_*`, send the reply. No logic lives here.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};

use crate::dircursor::Add;
use crate::ops::{Caller, Core, SetAttr};

/// How long the kernel may cache entries and attributes of a live mount.
/// Changes made through the mount update the kernel's caches as they are
/// made; changes from peers arrive only through an import, after which every
/// dentry they made stale and every known inode is invalidated
/// (`crate::spawn_invalidator`). So the TTL only bounds how long a failed
/// invalidation could show stale state; short TTLs cost a lookup round trip
/// for every path resolved after they run out. Files with buffered writes
/// get a 1 s TTL for their attributes (`BUFFERED_ATTR_TTL`).
pub const LIVE_TTL: Duration = Duration::from_secs(60);

/// How long the kernel may cache a point-in-time mount, whose tree never
/// changes.
const SNAPSHOT_TTL: Duration = Duration::from_secs(24 * 3600);

/// How long the kernel may cache the attributes of a file with buffered
/// writes: its commit sets mtime and ctime to the commit's time, which the
/// kernel is not told of.
const BUFFERED_ATTR_TTL: Duration = Duration::from_secs(1);

/// Largest write request we ask the kernel for.
pub(crate) const MAX_WRITE: u32 = 1 << 20;

/// Readahead we ask the kernel for.
const MAX_READAHEAD: u32 = 1 << 20;

/// The filesystem handed to fuser.
pub(crate) struct SyncerFs {
    pub(crate) core: Arc<Core>,
    /// [`LIVE_TTL`] or [`SNAPSHOT_TTL`].
    ttl: Duration,
    /// Ask the kernel for POSIX ACLs at init.
    want_acl: bool,
    /// The session's notifier, set once the session exists (it is made
    /// from the session, which owns this filesystem).
    pub(crate) notifier: Arc<OnceLock<fuser::Notifier>>,
}

impl SyncerFs {
    pub(crate) fn new(core: Arc<Core>, want_acl: bool) -> Self {
        let ttl = if core.tree.at().is_some() { SNAPSHOT_TTL } else { LIVE_TTL };
        SyncerFs { core, ttl, want_acl, notifier: Arc::new(OnceLock::new()) }
    }

    /// Drops the kernel's cached attributes of `ino` (not its pages), for
    /// a change the reply to the request cannot carry. A failure leaves
    /// them stale for the TTL at most, so it is only logged.
    fn forget_attrs(&self, ino: INodeNo) {
        if let Some(n) = self.notifier.get() {
            if let Err(e) = n.inval_inode(ino, -1, 0) {
                tracing::debug!("cannot invalidate the attributes of inode {}: {e}", ino.0);
            }
        }
    }

    /// The TTL for `attr`: [`BUFFERED_ATTR_TTL`] while the file has
    /// buffered writes, else the mount's.
    fn attr_ttl(&self, attr: &fuser::FileAttr) -> Duration {
        if attr.kind == fuser::FileType::RegularFile && self.core.has_buffered_writes(attr.ino.0) {
            self.ttl.min(BUFFERED_ATTR_TTL)
        } else {
            self.ttl
        }
    }

    /// Replies with the attributes `r` of `ino`, got after checking
    /// whether it had buffered writes (`buffered_before`). Checked before,
    /// not after: a commit during the call would otherwise let pre-commit
    /// times be cached for the live TTL, while a write during the call makes
    /// the kernel drop these attributes itself.
    fn attr_reply(&self, reply: ReplyAttr, buffered_before: bool, r: Result<fuser::FileAttr, Errno>) {
        let ttl = if buffered_before { self.ttl.min(BUFFERED_ATTR_TTL) } else { self.ttl };
        match r {
            Ok(a) => reply.attr(&ttl, &a),
            Err(e) => reply.error(e),
        }
    }

    fn entry_reply(&self, reply: ReplyEntry, r: Result<fuser::FileAttr, Errno>) {
        match r {
            Ok(a) => reply.entry_with_ttls(&self.attr_ttl(&a), &self.ttl, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }
}

fn empty_reply(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// The xattr size protocol: size 0 asks for the length; too small a buffer
/// is `ERANGE`.
fn xattr_reply(reply: ReplyXattr, size: u32, r: Result<Vec<u8>, Errno>) {
    match r {
        Ok(v) => match xattr_answer(size, v.len()) {
            XattrAnswer::Size(n) => reply.size(n),
            XattrAnswer::Data => reply.data(&v),
            XattrAnswer::Range => reply.error(Errno::ERANGE),
        },
        Err(e) => reply.error(e),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum XattrAnswer {
    Size(u32),
    Data,
    Range,
}

pub(crate) fn xattr_answer(size: u32, len: usize) -> XattrAnswer {
    match u32::try_from(len) {
        Err(_) => XattrAnswer::Range,
        Ok(n) if size == 0 => XattrAnswer::Size(n),
        Ok(n) if n > size => XattrAnswer::Range,
        Ok(_) => XattrAnswer::Data,
    }
}

impl Filesystem for SyncerFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(nearest) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(nearest);
        }
        if let Err(nearest) = config.set_max_readahead(MAX_READAHEAD) {
            let _ = config.set_max_readahead(nearest);
        }
        let _ = config.set_max_background(64);
        for cap in [InitFlags::FUSE_DO_READDIRPLUS, InitFlags::FUSE_PARALLEL_DIROPS] {
            if let Err(missing) = config.add_capabilities(cap) {
                tracing::debug!("kernel lacks FUSE capability {missing:?}");
            }
        }
        // ACLs: the kernel enforces them (turning on default_permissions)
        // and sends modes without the umask applied, for the filesystem to
        // apply it or a parent's default ACL (see `acl`).
        if self.want_acl {
            match config.add_capabilities(InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK) {
                Ok(()) => self.core.acl.store(true, std::sync::atomic::Ordering::Relaxed),
                Err(missing) => {
                    tracing::warn!("the kernel lacks {missing:?}: POSIX ACLs are refused (EOPNOTSUPP) on this mount")
                }
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.core.shutdown_flush() {
            tracing::error!("committing buffered writes at unmount failed: {e:?}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.entry_reply(reply, self.core.do_lookup(parent.0, name));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.do_forget(ino.0, nlookup);
    }

    // batch_forget: fuser's default calls `forget` per entry (its
    // `ForgetOne` type is not exported, so it cannot be overridden).

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let buffered = self.core.has_buffered_writes(ino.0);
        self.attr_reply(reply, buffered, self.core.do_getattr(ino.0));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        bkuptime: Option<SystemTime>,
        flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let req = SetAttr { mode, uid, gid, size, atime, mtime, crtime, bkuptime, flags: flags.map(|f| f.bits()) };
        let buffered = self.core.has_buffered_writes(ino.0);
        self.attr_reply(reply, buffered, self.core.do_setattr(ino.0, req));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.core.do_readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        self.entry_reply(reply, self.core.do_mknod(parent.0, name, mode, umask, rdev, req.uid(), req.gid()));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        self.entry_reply(reply, self.core.do_mkdir(parent.0, name, mode, umask, req.uid(), req.gid()));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty_reply(reply, self.core.do_unlink(parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty_reply(reply, self.core.do_rmdir(parent.0, name));
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        self.entry_reply(reply, self.core.do_symlink(parent.0, link_name, target, req.uid(), req.gid()));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        empty_reply(reply, self.core.do_rename(parent.0, name, newparent.0, newname, flags.bits()));
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        self.entry_reply(reply, self.core.do_link());
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.core.do_open(ino.0, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.core.do_read(ino.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.core.do_write(ino.0, offset, data, flags.0) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        empty_reply(reply, self.core.do_flush(ino.0));
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        empty_reply(reply, self.core.do_release(ino.0, flags.0));
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        empty_reply(reply, self.core.do_fsync(ino.0));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.core.do_opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let filled = self.core.fill_dir(ino.0, fh.0, offset, |cookie, e| {
            let name = OsStr::from_bytes(&e.name);
            match reply.add(INodeNo(self.core.d_ino(e)), cookie, e.kind, name) {
                true => Add::Full,
                false => Add::Added,
            }
        });
        match filled {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let filled = self.core.fill_dir(ino.0, fh.0, offset, |cookie, e| {
            let Some((attr, counted)) = self.core.plus_entry(ino.0, e) else {
                return Add::Skipped;
            };
            let name = OsStr::from_bytes(&e.name);
            // One TTL for the entry and its attributes here.
            if reply.add(attr.ino, cookie, name, &self.attr_ttl(&attr), &attr, Generation(0)) {
                if counted {
                    self.core.unplus(attr.ino.0);
                }
                return Add::Full;
            }
            Add::Added
        });
        match filled {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.core.do_releasedir(ino.0, fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        empty_reply(reply, self.core.do_fsyncdir(ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.core.do_statfs() {
            Ok(s) => reply.statfs(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        let caller = Caller { uid: req.uid(), gid: req.gid(), pid: req.pid() };
        empty_reply(reply, self.core.do_setxattr(ino.0, name, value, flags, position, caller));
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        xattr_reply(reply, size, self.core.do_getxattr(ino.0, name));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        xattr_reply(reply, size, self.core.do_listxattr(ino.0));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty_reply(reply, self.core.do_removexattr(ino.0, name));
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        empty_reply(reply, self.core.do_access(ino.0));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.core.do_create(parent.0, name, mode, umask, flags, req.uid(), req.gid()) {
            Ok((attr, fh)) => {
                reply.created(&self.attr_ttl(&attr), &attr, Generation(0), FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    /// No ioctl is supported: ENOTTY, as a regular file on a local disk
    /// answers (programs ask each file they open whether it is a terminal).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let caller = Caller { uid: req.uid(), gid: req.gid(), pid: req.pid() };
        let r = self.core.do_fallocate(ino.0, offset, length, mode, caller);
        // Taking set-id bits off changes the mode behind the kernel's back
        // (it only invalidates size and times after a fallocate).
        if r == Ok(true) {
            self.forget_attrs(ino);
        }
        empty_reply(reply, r.map(|_| ()));
    }

    fn lseek(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        match self.core.do_lseek(ino.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        match self.core.do_copy_file_range(ino_in.0, offset_in, ino_out.0, offset_out, len, flags.bits()) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    #[cfg(target_os = "macos")]
    fn setvolname(&self, _req: &Request, name: &OsStr, reply: ReplyEmpty) {
        empty_reply(reply, self.core.do_setvolname(name));
    }

    #[cfg(target_os = "macos")]
    fn getxtimes(&self, _req: &Request, ino: INodeNo, reply: fuser::ReplyXTimes) {
        match self.core.do_getxtimes(ino.0) {
            Ok((crtime, bkuptime)) => reply.xtimes(bkuptime, crtime),
            Err(e) => reply.error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattr_size_protocol() {
        assert_eq!(xattr_answer(0, 5), XattrAnswer::Size(5));
        assert_eq!(xattr_answer(4, 5), XattrAnswer::Range);
        assert_eq!(xattr_answer(5, 5), XattrAnswer::Data);
        assert_eq!(xattr_answer(100, 5), XattrAnswer::Data);
        assert_eq!(xattr_answer(0, 0), XattrAnswer::Size(0));
    }
}
