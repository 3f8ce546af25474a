//! The filesystem's logic, as plain methods returning `Result<_, Errno>`.
//! The `fuser::Filesystem` impl in `adapter` only unpacks requests and
//! sends replies.
//!
//! Locks (none is held across another's engine call, and none is global to
//! all files except for map look-ups):
//! - `Inodes` mutex: the ino <-> node maps (see `inodes`);
//! - `dirs` mutex: the map of open directory handles; each handle has its
//!   own mutex over its listing snapshot;
//! - the write-back locks (see `writeback`), per file.
//!
//! The engine serializes mutations on its own short writer mutex; reads are
//! lock-free snapshots, except within a group commit's window (at most
//! 20 ms after a change) when they read through the writer's transaction
//! under that mutex. So two FUSE threads working on different files only
//! meet in hash-map look-ups and in that writer mutex, never across an
//! fsync or a disk read.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use engine::event::{AttrChange, Attrs, NodeKind};
use engine::ids::{NodeId, Timestamp};
use engine::{LiveTree, NodeState, RenameFlags, TreeRead, XattrMode};
use fuser::{Errno, FileAttr, FileType, TimeOrNow};
use parking_lot::Mutex;

use crate::attr::{file_attr, file_type, kind_from_mode};
use crate::errno::errno;
use crate::inodes::Inodes;
use crate::writeback::WriteBack;

/// Entries fetched from the engine per `read_dir` call.
const DIR_PAGE: usize = 1024;

/// One entry of a directory listing snapshot.
#[derive(Clone, Debug)]
pub(crate) struct Listed {
    pub name: Vec<u8>,
    pub node: NodeId,
    pub kind: FileType,
}

/// An open directory: the listing taken at offset 0; offsets are positions
/// in it, so entries added or removed while reading neither repeat nor
/// vanish from the listing in progress.
#[derive(Debug)]
struct DirHandle {
    node: NodeId,
    listing: Option<Arc<Vec<Listed>>>,
}

/// What `setattr` asks for.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    pub crtime: Option<SystemTime>,
    pub bkuptime: Option<SystemTime>,
    pub flags: Option<u32>,
}

/// `statfs` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// The state of one mount.
pub(crate) struct Core {
    /// What every read goes through: the live tree or a point-in-time view.
    pub(crate) tree: Arc<dyn TreeRead>,
    /// What every change goes through; `None` for a view (read-only).
    pub(crate) live: Option<Arc<LiveTree>>,
    pub(crate) inodes: Inodes,
    pub(crate) wb: WriteBack,
    dirs: Mutex<HashMap<u64, Arc<Mutex<DirHandle>>>>,
    next_fh: AtomicU64,
    /// Bumped by the import invalidation (`crate::spawn_invalidator`) as
    /// each pass begins, before it reads the inode table's names: a lookup
    /// that read the tree before the bump may record its name after the
    /// pass read them, so it is redone (see [`Core::remembered`]).
    pub(crate) import_epoch: AtomicU64,
    /// The kernel enforces POSIX ACLs (see `acl`): set once at init.
    pub(crate) acl: AtomicBool,
}

fn now() -> Timestamp {
    Timestamp::now()
}

fn to_ts(t: TimeOrNow) -> Timestamp {
    match t {
        TimeOrNow::Now => now(),
        TimeOrNow::SpecificTime(t) => Timestamp::from_system_time(t),
    }
}

fn name_bytes(name: &OsStr) -> &[u8] {
    name.as_bytes()
}

impl Core {
    pub(crate) fn new(tree: crate::Tree, dirty_limit: u64, workers: usize) -> std::io::Result<Self> {
        let wb = WriteBack::new(tree.clone(), dirty_limit, workers)?;
        Ok(Core {
            tree: tree.reads(),
            live: tree.live(),
            inodes: Inodes::new(),
            wb,
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            import_epoch: AtomicU64::new(0),
            acl: AtomicBool::new(false),
        })
    }

    /// The live tree, for a change; EROFS on a point-in-time view.
    pub(crate) fn live(&self) -> Result<&LiveTree, Errno> {
        self.live.as_deref().ok_or(Errno::EROFS)
    }

    /// Whether changes are refused (a point-in-time view).
    fn is_read_only(&self) -> bool {
        self.live.is_none()
    }

    fn node_of(&self, ino: u64) -> Result<NodeId, Errno> {
        self.inodes.node(ino)
    }

    fn state(&self, node: NodeId) -> Result<NodeState, Errno> {
        self.tree.node(node).map_err(|e| errno(&e))
    }

    /// Attributes of `state` as the kernel should see them (buffered writes
    /// included).
    fn attr_of(&self, ino: u64, state: &NodeState) -> FileAttr {
        let dirty = if state.kind == NodeKind::File { self.wb.dirty_view(state.id) } else { None };
        let mut attr = file_attr(ino, state, dirty, self.wb.block_size());
        if let Some(access) = state.xattrs.get(crate::acl::ACCESS) {
            attr.perm = crate::acl::mode_with_acl(u32::from(attr.perm), Some(access)) as u16;
        }
        attr
    }

    /// Whether `ino` is a file with writes not yet committed (its mtime and
    /// ctime will change at the commit).
    pub(crate) fn has_buffered_writes(&self, ino: u64) -> bool {
        self.inodes.node(ino).is_ok_and(|node| self.wb.dirty_view(node).is_some())
    }

    /// Resolves `name` in the directory `parent` with `resolve` and
    /// registers the kernel's lookup of the result, redoing both if an
    /// import's invalidation pass began meanwhile (the pass may have read
    /// the names before this one was recorded, and the result may be from
    /// before the import).
    fn remembered(
        &self,
        parent: u64,
        name: &[u8],
        resolve: impl Fn() -> Result<NodeState, Errno>,
    ) -> Result<FileAttr, Errno> {
        loop {
            let epoch = self.import_epoch.load(Ordering::SeqCst);
            let st = resolve()?;
            let attr = self.entry(parent, name, &st);
            if self.import_epoch.load(Ordering::SeqCst) == epoch {
                return Ok(attr);
            }
            self.inodes.forget(attr.ino.0, 1);
        }
    }

    /// Registers a kernel lookup of `state` as `name` in `parent` and
    /// returns its attributes.
    fn entry(&self, parent: u64, name: &[u8], state: &NodeState) -> FileAttr {
        let ino = self.inodes.remember(state.id, parent, name);
        self.attr_of(ino, state)
    }

    fn fresh_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    // ---- names -------------------------------------------------------

    pub(crate) fn do_lookup(&self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        let p = self.node_of(parent)?;
        self.remembered(parent, name_bytes(name), || self.tree.lookup(p, name_bytes(name)).map_err(|e| errno(&e)))
    }

    pub(crate) fn do_forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
    }

    pub(crate) fn do_getattr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let node = self.node_of(ino)?;
        let st = self.state(node)?;
        Ok(self.attr_of(ino, &st))
    }

    pub(crate) fn do_setattr(&self, ino: u64, req: SetAttr) -> Result<FileAttr, Errno> {
        let node = self.node_of(ino)?;
        if let Some(size) = req.size {
            let st = self.state(node)?;
            match st.kind {
                NodeKind::Dir => return Err(Errno::EISDIR),
                NodeKind::File => {}
                _ => return Err(Errno::EINVAL),
            }
            self.wb.truncate(node, size)?;
        }
        let change = AttrChange {
            mode: req.mode.map(|m| m & 0o7777),
            uid: req.uid,
            gid: req.gid,
            flags: req.flags,
            atime: req.atime.map(to_ts),
            mtime: req.mtime.map(to_ts),
            crtime: req.crtime.map(Timestamp::from_system_time),
            bkuptime: req.bkuptime.map(Timestamp::from_system_time),
        };
        if change != AttrChange::default() {
            if change.mtime.is_some() {
                // Buffered writes must not land after (and so override) an
                // explicit mtime.
                self.wb.flush(node)?;
            }
            self.set_attrs_with_acl(node, change)?;
        }
        self.do_getattr(ino)
    }

    /// Attributes for a new node made by the caller, honouring a set-group-id
    /// parent (the new node takes its group; new directories inherit the bit).
    #[allow(clippy::too_many_arguments)]
    fn new_attrs(
        &self,
        parent: NodeId,
        kind: NodeKind,
        mode: u32,
        umask: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
    ) -> Result<(Attrs, crate::acl::Xattrs), Errno> {
        let p = self.state(parent)?;
        if p.kind != NodeKind::Dir {
            return Err(Errno::ENOTDIR);
        }
        // A parent's default ACL replaces the umask (the kernel sends both
        // unapplied when ACLs are on).
        let inherited = if self.acls() { crate::acl::inherited(&p, kind, mode & 0o7777) } else { None };
        let (mut mode, xattrs) = inherited.unwrap_or((mode & !umask & 0o7777, Vec::new()));
        let mut gid = gid;
        if p.attrs.mode & libc::S_ISGID != 0 {
            gid = p.attrs.gid;
            if kind == NodeKind::Dir {
                mode |= libc::S_ISGID;
            }
        }
        let t = now();
        let attrs = Attrs {
            mode,
            uid,
            gid,
            rdev,
            flags: 0,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            bkuptime: Timestamp::default(),
        };
        Ok((attrs, xattrs))
    }

    #[allow(clippy::too_many_arguments)]
    fn make(
        &self,
        parent: u64,
        name: &OsStr,
        kind: NodeKind,
        mode: u32,
        umask: u32,
        rdev: u32,
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<FileAttr, Errno> {
        let p = self.node_of(parent)?;
        let (attrs, xattrs) = self.new_attrs(p, kind, mode, umask, uid, gid, rdev)?;
        let st = self
            .live()?
            .create_with_xattrs(p, name_bytes(name), kind, attrs, target, &xattrs)
            .map_err(|e| errno(&e))?;
        Ok(self.entry(parent, name_bytes(name), &st))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn do_mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
    ) -> Result<FileAttr, Errno> {
        let kind = kind_from_mode(mode).ok_or(Errno::EINVAL)?;
        let rdev = if matches!(kind, NodeKind::CharDev | NodeKind::BlockDev) { rdev } else { 0 };
        self.make(parent, name, kind, mode, umask, rdev, b"", uid, gid)
    }

    pub(crate) fn do_mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        uid: u32,
        gid: u32,
    ) -> Result<FileAttr, Errno> {
        self.make(parent, name, NodeKind::Dir, mode, umask, 0, b"", uid, gid)
    }

    pub(crate) fn do_symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &Path,
        uid: u32,
        gid: u32,
    ) -> Result<FileAttr, Errno> {
        let target = target.as_os_str().as_bytes();
        if target.is_empty() {
            return Err(Errno::ENOENT);
        }
        if target.len() >= libc::PATH_MAX as usize {
            return Err(Errno::ENAMETOOLONG);
        }
        self.make(parent, name, NodeKind::Symlink, 0o777, 0, 0, target, uid, gid)
    }

    pub(crate) fn do_readlink(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let st = self.state(self.node_of(ino)?)?;
        if st.kind != NodeKind::Symlink {
            return Err(Errno::EINVAL);
        }
        Ok(st.target)
    }

    pub(crate) fn do_unlink(&self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let p = self.node_of(parent)?;
        self.live()?.unlink(p, name_bytes(name)).map_err(|e| errno(&e))
    }

    pub(crate) fn do_rmdir(&self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let p = self.node_of(parent)?;
        self.live()?.rmdir(p, name_bytes(name)).map_err(|e| errno(&e))
    }

    pub(crate) fn do_rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<(), Errno> {
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 || (noreplace && exchange) {
            return Err(Errno::EINVAL);
        }
        let p = self.node_of(parent)?;
        let np = self.node_of(new_parent)?;
        let (name, new_name) = (name_bytes(name), name_bytes(new_name));
        let r =
            self.live()?.rename(p, name, np, new_name, RenameFlags { noreplace, exchange }).map_err(|e| errno(&e))?;
        // The kernel moves its dentries as the engine moved the nodes; the
        // inode table's name lists (what the import invalidation checks)
        // follow.
        self.inodes.renamed(r.moved, (parent, name), (new_parent, new_name));
        if let Some(swapped) = r.swapped {
            self.inodes.renamed(swapped, (new_parent, new_name), (parent, name));
        }
        Ok(())
    }

    pub(crate) fn do_link(&self) -> Result<FileAttr, Errno> {
        // Every node has exactly one parent: that is what makes renames
        // mergeable across machines (docs/DESIGN.md).
        Err(Errno::EPERM)
    }

    // ---- files -------------------------------------------------------

    pub(crate) fn do_open(&self, ino: u64, flags: i32) -> Result<u64, Errno> {
        let node = self.node_of(ino)?;
        let st = self.state(node)?;
        match st.kind {
            NodeKind::Dir => return Err(Errno::EISDIR),
            NodeKind::Symlink => return Err(Errno::ELOOP),
            _ => {}
        }
        if flags & libc::O_ACCMODE != libc::O_RDONLY && self.is_read_only() {
            return Err(Errno::EROFS);
        }
        if flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY && st.kind == NodeKind::File {
            self.wb.truncate(node, 0)?;
        }
        self.inodes.open(ino);
        if st.kind == NodeKind::File && writes(flags) {
            self.wb.begin_line(node);
        }
        Ok(self.fresh_fh())
    }

    /// `create`: a new regular file, opened. Returns its attributes and handle.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn do_create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        uid: u32,
        gid: u32,
    ) -> Result<(FileAttr, u64), Errno> {
        let made = self.make(parent, name, NodeKind::File, mode, umask, 0, b"", uid, gid);
        let attr = match made {
            Ok(a) => a,
            Err(e) if e == Errno::EEXIST && flags & libc::O_EXCL == 0 => {
                // Lost a race with another creator: open what is there.
                let a = self.do_lookup(parent, name)?;
                if a.kind != FileType::RegularFile {
                    self.inodes.forget(a.ino.0, 1);
                    return Err(Errno::EEXIST);
                }
                let fh = self.do_open(a.ino.0, flags)?;
                return Ok((self.do_getattr(a.ino.0)?, fh));
            }
            Err(e) => return Err(e),
        };
        self.inodes.open(attr.ino.0);
        match self.node_of(attr.ino.0) {
            Ok(node) if writes(flags) => self.wb.begin_new_line(node),
            _ => {}
        }
        Ok((attr, self.fresh_fh()))
    }

    pub(crate) fn do_read(&self, ino: u64, offset: u64, size: u32) -> Result<crate::writeback::ReadBuf, Errno> {
        let node = self.node_of(ino)?;
        self.wb.read(node, offset, size)
    }

    pub(crate) fn do_write(&self, ino: u64, offset: u64, data: &[u8], open_flags: i32) -> Result<u32, Errno> {
        if self.is_read_only() {
            return Err(Errno::EROFS);
        }
        let node = self.node_of(ino)?;
        self.wb.write(node, offset, data, open_flags & libc::O_APPEND != 0)
    }

    pub(crate) fn do_flush(&self, ino: u64) -> Result<(), Errno> {
        let node = self.node_of(ino)?;
        self.wb.flush(node)
    }

    /// A handle opened with `flags` is released.
    pub(crate) fn do_release(&self, ino: u64, flags: i32) -> Result<(), Errno> {
        let node = self.node_of(ino);
        let res = match node {
            Ok(node) => self.wb.flush(node),
            Err(e) => Err(e),
        };
        if let (Ok(node), true) = (node, writes(flags)) {
            self.wb.end_line(node);
        }
        self.inodes.close(ino);
        res
    }

    pub(crate) fn do_fsync(&self, ino: u64) -> Result<(), Errno> {
        let node = self.node_of(ino)?;
        self.wb.flush(node)?;
        self.live.as_ref().map_or(Ok(()), |l| l.sync()).map_err(|e| errno(&e))
    }

    pub(crate) fn do_fsyncdir(&self, ino: u64) -> Result<(), Errno> {
        self.node_of(ino)?;
        self.live.as_ref().map_or(Ok(()), |l| l.sync()).map_err(|e| errno(&e))
    }

    /// `fallocate`: `mode` 0 extends the file (nothing is set aside:
    /// blocks are content-addressed and zeros are holes, but the part of
    /// the range past the end of the file must fit on the local disk, or
    /// ENOSPC); `KEEP_SIZE` leaves the size; `PUNCH_HOLE` (with
    /// `KEEP_SIZE`, as Linux requires) and `ZERO_RANGE` zero the range as
    /// a content change (see `LiveTree::zero_range_on`). Set-user-id and
    /// set-group-id go as a write by `caller` would take them; the answer
    /// says whether any went (the kernel's cached mode is then stale: it
    /// takes set-group-id off only with group-execute, see
    /// [`privs_to_kill`]). Work is in proportion to the blocks stored in
    /// the range, never to its length.
    pub(crate) fn do_fallocate(
        &self,
        ino: u64,
        offset: u64,
        length: u64,
        mode: i32,
        caller: Caller,
    ) -> Result<bool, Errno> {
        let node = self.node_of(ino)?;
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        let known = libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 || (punch && (!keep || zero)) {
            return Err(Errno::EOPNOTSUPP);
        }
        if length == 0 {
            return Err(Errno::EINVAL);
        }
        let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
        if end > i64::MAX as u64 {
            return Err(Errno::EFBIG);
        }
        let st = self.state(node)?;
        match st.kind {
            NodeKind::File => {}
            NodeKind::Dir => return Err(Errno::EISDIR),
            _ => return Err(Errno::ENODEV),
        }
        if self.is_read_only() {
            return Err(Errno::EROFS);
        }
        if punch || zero {
            let killed = self.kill_privs(node, &st, caller)?;
            self.wb.zero_range(node, offset, length, keep)?;
            return Ok(killed);
        }
        let size = self.wb.dirty_view(node).map_or(st.size, |d| d.size);
        self.live()?.check_room(end.saturating_sub(size.max(offset))).map_err(|e| errno(&e))?;
        let killed = self.kill_privs(node, &st, caller)?;
        if keep {
            return Ok(killed);
        }
        self.wb.with_committed(node, || {
            let size = self.state(node)?.size;
            if end > size {
                self.wb.truncate_committed(node, end)?;
            }
            Ok(())
        })?;
        Ok(killed)
    }

    /// Takes set-user-id and set-group-id off file `node` (state `st`) as
    /// a write by `caller` would (see [`privs_to_kill`]); whether any went.
    fn kill_privs(&self, node: NodeId, st: &NodeState, caller: Caller) -> Result<bool, Errno> {
        let kill = privs_to_kill(st.kind, st.attrs.mode, st.attrs.gid, caller.uid, |gid| caller.in_group(gid));
        if kill == 0 {
            return Ok(false);
        }
        let change = AttrChange { mode: Some(st.attrs.mode & !kill & 0o7777), ..AttrChange::default() };
        self.live()?.set_attrs(node, change).map(|_| true).map_err(|e| errno(&e))
    }

    /// `SEEK_DATA` / `SEEK_HOLE`: holes are blocks the file does not store.
    /// Buffered writes are committed first; then the next stored block (or
    /// the end of a run of them) is found through the index, so the cost
    /// depends on the blocks stored, never on the size of a hole.
    pub(crate) fn do_lseek(&self, ino: u64, offset: i64, whence: i32) -> Result<i64, Errno> {
        let node = self.node_of(ino)?;
        if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
            return Err(Errno::EINVAL);
        }
        let offset = u64::try_from(offset).map_err(|_| Errno::ENXIO)?;
        let bs = self.wb.block_size();
        self.wb.with_committed(node, || {
            let size = self.state(node)?.size;
            if offset >= size {
                return Err(Errno::ENXIO);
            }
            let index = offset / bs;
            let found = if whence == libc::SEEK_DATA {
                match self.tree.next_data(node, index).map_err(|e| errno(&e))? {
                    Some(i) if i.saturating_mul(bs) < size => offset.max(i * bs),
                    _ => return Err(Errno::ENXIO),
                }
            } else {
                let hole = self.tree.next_hole(node, index).map_err(|e| errno(&e))?;
                offset.max(hole.saturating_mul(bs)).min(size)
            };
            i64::try_from(found).map_err(|_| Errno::EOVERFLOW)
        })
    }

    /// `copy_file_range`: whole blocks at the same place within a block on
    /// both sides share the source's blocks (no byte read or written, no
    /// room taken: the references are copied); the rest is read and
    /// written. Copies up to the end of the source, at most
    /// [`COPY_MAX`] bytes a call (fewer when the range holds many stored
    /// blocks); the caller asks again for the rest, as for a short write.
    pub(crate) fn do_copy_file_range(
        &self,
        ino_in: u64,
        off_in: u64,
        ino_out: u64,
        off_out: u64,
        len: u64,
        flags: u64,
    ) -> Result<u32, Errno> {
        if flags != 0 {
            return Err(Errno::EINVAL);
        }
        if self.is_read_only() {
            return Err(Errno::EROFS);
        }
        let (src, dst) = (self.node_of(ino_in)?, self.node_of(ino_out)?);
        for n in [src, dst] {
            match self.state(n)?.kind {
                NodeKind::File => {}
                NodeKind::Dir => return Err(Errno::EISDIR),
                _ => return Err(Errno::EINVAL),
            }
        }
        self.wb.flush(src)?;
        let src_size = self.state(src)?.size;
        if off_in >= src_size || len == 0 {
            return Ok(0);
        }
        let len = len.min(src_size - off_in).min(COPY_MAX);
        if src == dst && off_in < off_out.saturating_add(len) && off_out < off_in + len {
            return Err(Errno::EINVAL);
        }
        let end = off_out.checked_add(len).ok_or(Errno::EFBIG)?;
        if end > i64::MAX as u64 {
            return Err(Errno::EFBIG);
        }
        let bs = self.wb.block_size();
        let plan = copy_plan(off_in, off_out, len, bs);
        let mut done = self.copy_bytes(src, off_in, dst, off_out, plan.head)?;
        if done < plan.head {
            return Ok(done as u32);
        }
        if plan.blocks > 0 {
            let first_in = (off_in + plan.head) / bs;
            let first_out = (off_out + plan.head) / bs;
            let shared = self.wb.share_blocks(src, first_in, dst, first_out, plan.blocks)?;
            done += shared * bs;
            if shared < plan.blocks {
                return Ok(done as u32);
            }
        }
        done += self.copy_bytes(src, off_in + done, dst, off_out + done, plan.tail)?;
        Ok(done as u32)
    }

    /// Copies `len` bytes of `src` at `off_in` to `dst` at `off_out`
    /// through the write-back (as a program's read and write would);
    /// returns how many (fewer at the end of the source).
    fn copy_bytes(&self, src: NodeId, off_in: u64, dst: NodeId, off_out: u64, len: u64) -> Result<u64, Errno> {
        const CHUNK: u64 = 1 << 20;
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK) as u32;
            let data = self.wb.read(src, off_in + done, n)?;
            if data.is_empty() {
                break;
            }
            self.wb.write(dst, off_out + done, &data, false)?;
            done += data.len() as u64;
        }
        Ok(done)
    }

    // ---- directories -------------------------------------------------

    pub(crate) fn do_opendir(&self, ino: u64) -> Result<u64, Errno> {
        let node = self.node_of(ino)?;
        let st = self.state(node)?;
        if st.kind != NodeKind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let fh = self.fresh_fh();
        self.dirs.lock().insert(fh, Arc::new(Mutex::new(DirHandle { node, listing: None })));
        self.inodes.open(ino);
        Ok(fh)
    }

    pub(crate) fn do_releasedir(&self, ino: u64, fh: u64) {
        self.dirs.lock().remove(&fh);
        self.inodes.close(ino);
    }

    fn snapshot(&self, dir: NodeId) -> Result<Vec<Listed>, Errno> {
        let st = self.state(dir)?;
        let mut out = vec![
            Listed { name: b".".to_vec(), node: dir, kind: FileType::Directory },
            Listed {
                name: b"..".to_vec(),
                node: if dir == NodeId::ROOT { dir } else { st.parent },
                kind: FileType::Directory,
            },
        ];
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.tree.read_dir(dir, after.as_deref(), DIR_PAGE).map_err(|e| errno(&e))?;
            let n = page.len();
            for e in page {
                after = Some(e.name.clone());
                out.push(Listed { name: e.name, node: e.node, kind: file_type(e.kind) });
            }
            if n < DIR_PAGE {
                break;
            }
        }
        Ok(out)
    }

    /// The listing of handle `fh` from position `offset` on. Position 0
    /// (re)takes the snapshot, so `rewinddir` sees new entries.
    pub(crate) fn listing(&self, ino: u64, fh: u64, offset: u64) -> Result<(Arc<Vec<Listed>>, usize), Errno> {
        let handle = self.dirs.lock().get(&fh).cloned();
        let handle = match handle {
            Some(h) => h,
            None => {
                // No handle (opendir not seen): list statelessly.
                let node = self.node_of(ino)?;
                return Ok((Arc::new(self.snapshot(node)?), offset as usize));
            }
        };
        let mut h = handle.lock();
        let listing = match (&h.listing, offset) {
            (Some(l), o) if o != 0 => l.clone(),
            _ => {
                let l = Arc::new(self.snapshot(h.node)?);
                h.listing = Some(l.clone());
                l
            }
        };
        Ok((listing, usize::try_from(offset).unwrap_or(usize::MAX)))
    }

    /// The inode number to show for a listed entry without a lookup.
    pub(crate) fn d_ino(&self, entry: &Listed) -> u64 {
        self.inodes.d_ino(entry.node)
    }

    /// For readdirplus: the entry's attributes, with a lookup registered
    /// (`.` and `..` get none, as the kernel takes none for them). `None` if
    /// the name no longer leads to the node listed in the snapshot (the
    /// snapshot serves every request of one listing, and the kernel would
    /// keep a dentry it hands out for the TTL).
    pub(crate) fn plus_entry(&self, dir: u64, entry: &Listed) -> Option<(FileAttr, bool)> {
        let dots = entry.name == b"." || entry.name == b"..";
        if dots {
            let st = self.tree.node(entry.node).ok()?;
            let ino = self.inodes.d_ino(entry.node);
            return Some((self.attr_of(ino, &st), false));
        }
        let parent = self.node_of(dir).ok()?;
        let resolve = || match self.tree.lookup(parent, &entry.name) {
            Ok(st) if st.id == entry.node => Ok(st),
            _ => Err(Errno::ENOENT),
        };
        self.remembered(dir, &entry.name, resolve).ok().map(|attr| (attr, true))
    }

    /// Undo the lookup of [`Core::plus_entry`] when the entry did not fit.
    pub(crate) fn unplus(&self, ino: u64) {
        self.inodes.forget(ino, 1);
    }

    // ---- xattrs ------------------------------------------------------

    /// `setxattr` of `name` by `caller` (who matters for an access ACL,
    /// see `Core::set_acl`).
    pub(crate) fn do_setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        caller: Caller,
    ) -> Result<(), Errno> {
        if position != 0 {
            return Err(Errno::EINVAL);
        }
        let mode = match flags & (libc::XATTR_CREATE | libc::XATTR_REPLACE) {
            0 => XattrMode::Any,
            libc::XATTR_CREATE => XattrMode::Create,
            libc::XATTR_REPLACE => XattrMode::Replace,
            _ => return Err(Errno::EINVAL),
        };
        let node = self.node_of(ino)?;
        if let Some(kind) = crate::acl::kind_of(name_bytes(name)) {
            return self.set_acl(node, kind, value, mode, caller);
        }
        self.live()?.set_xattr(node, name_bytes(name), value, mode).map_err(|e| errno(&e))
    }

    /// The value of xattr `name`; the adapter applies the size protocol.
    pub(crate) fn do_getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>, Errno> {
        let st = self.state(self.node_of(ino)?)?;
        if crate::acl::kind_of(name_bytes(name)).is_some() && !self.acls() {
            return Err(Errno::EOPNOTSUPP);
        }
        st.xattrs.get(name_bytes(name)).cloned().ok_or(Errno::NO_XATTR)
    }

    /// Every xattr name, each followed by NUL.
    pub(crate) fn do_listxattr(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let st = self.state(self.node_of(ino)?)?;
        let mut out = Vec::new();
        // Without ACLs on the mount their names are as absent as on a
        // filesystem without them (still in the log, and shown by mounts
        // that have them).
        for name in st.xattrs.keys().filter(|n| self.acls() || crate::acl::kind_of(n).is_none()) {
            out.extend_from_slice(name);
            out.push(0);
        }
        Ok(out)
    }

    pub(crate) fn do_removexattr(&self, ino: u64, name: &OsStr) -> Result<(), Errno> {
        let node = self.node_of(ino)?;
        if let Some(kind) = crate::acl::kind_of(name_bytes(name)) {
            return self.remove_acl(node, kind);
        }
        self.live()?.remove_xattr(node, name_bytes(name)).map_err(|e| errno(&e))
    }

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

/// Most bytes one `copy_file_range` request copies (it answers with a
/// `u32` count; shared blocks cost nothing, bytes copied through the
/// write-back do).
pub(crate) const COPY_MAX: u64 = 1 << 30;

/// Most bytes one `copy_file_range` request copies through the write-back
/// when no block can be shared (the offsets are not at the same place
/// within a block).
const COPY_BYTES_MAX: u64 = 16 << 20;

/// Who made a request: what `fallocate` and `setxattr` of an access ACL
/// need to take set-user-id and set-group-id off as the kernel would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Caller {
    /// Whether `gid` is the caller's group or one of its supplementary
    /// groups (read from `/proc/<pid>/status`: FUSE requests carry only
    /// the fsuid and fsgid).
    pub(crate) fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || caller_groups(self.pid).contains(&gid)
    }
}

/// How a `copy_file_range` of `len` bytes from `off_in` to `off_out` is
/// split: `head` bytes copied, then `blocks` whole blocks shared, then
/// `tail` bytes copied. Blocks are shared only when both offsets are at
/// the same place within a block; otherwise everything is copied (at most
/// [`COPY_BYTES_MAX`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CopyPlan {
    pub head: u64,
    pub blocks: u64,
    pub tail: u64,
}

pub(crate) fn copy_plan(off_in: u64, off_out: u64, len: u64, bs: u64) -> CopyPlan {
    if off_in % bs != off_out % bs {
        return CopyPlan { head: len.min(COPY_BYTES_MAX), blocks: 0, tail: 0 };
    }
    let head = ((bs - off_in % bs) % bs).min(len);
    let blocks = (len - head) / bs;
    CopyPlan { head, blocks, tail: len - head - blocks * bs }
}

/// The bits of `mode` (a node of `kind` with group `gid`) that a write by
/// `uid` takes off, as the kernel's VFS does: none for root (who has
/// `CAP_FSETID`) or for other than regular files; set-user-id always;
/// set-group-id when group-execute is set (else it marks mandatory
/// locking) or when the writer is not in the file's group.
pub(crate) fn privs_to_kill(kind: NodeKind, mode: u32, gid: u32, uid: u32, in_group: impl Fn(u32) -> bool) -> u32 {
    if uid == 0 || kind != NodeKind::File {
        return 0;
    }
    let mut kill = mode & libc::S_ISUID;
    if mode & libc::S_ISGID != 0 && (mode & libc::S_IXGRP != 0 || !in_group(gid)) {
        kill |= libc::S_ISGID;
    }
    kill
}

/// The supplementary groups of process `pid` (empty if it cannot be read).
fn caller_groups(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status")).map(|s| parse_groups(&s)).unwrap_or_default()
}

/// The `Groups:` line of a `/proc/<pid>/status`.
pub(crate) fn parse_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default()
}

/// Whether a handle opened with `flags` may write.
fn writes(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statfs_covers_logical_bytes() {
        // SAFETY: all-zero is a valid statvfs.
        let mut v: libc::statvfs = unsafe { std::mem::zeroed() };
        v.f_frsize = 4096;
        v.f_blocks = 100;
        v.f_bfree = 50;
        v.f_bavail = 40;
        v.f_ffree = 7;
        let s = statfs_from(&v, 4096 * 1000, 12, 0);
        assert_eq!(s.blocks, 1050);
        assert_eq!((s.bfree, s.bavail, s.files, s.ffree, s.frsize), (50, 40, 19, 7, 4096));
        let s = statfs_from(&v, 4096, 12, 0);
        assert_eq!(s.blocks, 100);
        // The reserve is not room for data.
        let s = statfs_from(&v, 4096, 12, 10 * 4096);
        assert_eq!((s.bfree, s.bavail), (40, 30));
        let s = statfs_from(&v, 4096, 12, 1 << 30);
        assert_eq!((s.bfree, s.bavail), (0, 0));
    }

    use engine::config::Config;
    use engine::ids::MachineId;
    use std::ffi::OsString;

    fn core(bs: u64) -> (tempfile::TempDir, Core) {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let mut c = Config::new_default(MachineId::random());
        c.block_size = bs;
        c.small_block = c.small_block.min(bs);
        engine::Store::init(&data, c).unwrap();
        let engine = Arc::new(LiveTree::open(&data).unwrap());
        (tmp, Core::new(engine.into(), 0, 2).unwrap())
    }

    fn os(s: &str) -> OsString {
        OsString::from(s)
    }

    #[test]
    fn buffered_writes_show_in_getattr_and_reads_before_commit() {
        let (_t, c) = core(4096);
        let (a, _fh) = c.do_create(1, &os("f"), 0o644, 0o022, libc::O_WRONLY, 0, 0).unwrap();
        let ino = a.ino.0;
        assert_eq!(a.perm, 0o644);
        c.do_write(ino, 10_000, b"xyz", libc::O_WRONLY).unwrap();
        c.do_write(ino, 1, b"ab", libc::O_WRONLY).unwrap();
        assert_eq!(c.do_getattr(ino).unwrap().size, 10_003);
        let node = c.inodes.node(ino).unwrap();
        assert_eq!(c.tree.node(node).unwrap().size, 0, "nothing committed yet");
        let back = c.do_read(ino, 0, 20_000).unwrap();
        let mut want = vec![0u8; 10_003];
        want[1..3].copy_from_slice(b"ab");
        want[10_000..].copy_from_slice(b"xyz");
        assert_eq!(back, want);
        // Appends go to the (buffered) end.
        c.do_write(ino, 0, b"!", libc::O_WRONLY | libc::O_APPEND).unwrap();
        c.do_flush(ino).unwrap();
        want.push(b'!');
        assert_eq!(c.tree.node(node).unwrap().size, 10_004);
        assert_eq!(c.do_read(ino, 0, 20_000).unwrap(), want);
        // The middle blocks were never written: holes, nothing stored.
        assert_eq!(c.tree.file_blocks(node, 0, 3).unwrap().iter().map(|b| b.0).collect::<Vec<_>>(), vec![0, 2]);
        c.do_release(ino, libc::O_RDWR).unwrap();
        assert_eq!(c.wb.dirty_bytes(), 0);
    }

    #[test]
    fn tiny_memory_bound_still_round_trips() {
        let (_t, c) = core(4096);
        let (a, _fh) = c.do_create(1, &os("f"), 0o644, 0, libc::O_RDWR, 0, 0).unwrap();
        let ino = a.ino.0;
        let mut model = Vec::new();
        for i in 0..300u32 {
            let chunk: Vec<u8> = (0..1500).map(|j| (i * 7 + j) as u8).collect();
            c.do_write(ino, model.len() as u64, &chunk, libc::O_RDWR).unwrap();
            model.extend_from_slice(&chunk);
            assert!(c.wb.dirty_bytes() <= 4 * 4096 + 8 * 4096, "bounded: {}", c.wb.dirty_bytes());
        }
        assert_eq!(c.do_read(ino, 0, model.len() as u32).unwrap(), model);
        c.do_fsync(ino).unwrap();
        c.do_release(ino, libc::O_RDWR).unwrap();
        assert_eq!(c.do_read(ino, 0, model.len() as u32).unwrap(), model);
    }

    #[test]
    fn sequential_reads_with_read_ahead_see_the_newest_blocks() {
        let (_t, c) = core(4096);
        let (a, _fh) = c.do_create(1, &os("f"), 0o644, 0, libc::O_RDWR, 0, 0).unwrap();
        let ino = a.ino.0;
        let mut model: Vec<u8> = (0..64 * 4096u32).map(|i| (i / 4096 * 31 + i % 251) as u8).collect();
        c.do_write(ino, 0, &model, libc::O_RDWR).unwrap();
        c.do_release(ino, libc::O_RDWR).unwrap();
        let read_all = |c: &Core| {
            let mut back = Vec::new();
            loop {
                let chunk = c.do_read(ino, back.len() as u64, 1024).unwrap();
                if chunk.is_empty() {
                    return back;
                }
                back.extend_from_slice(&chunk);
            }
        };
        assert_eq!(read_all(&c), model);
        // Blocks read ahead before this overwrite must not be served after it.
        c.do_open(ino, libc::O_RDWR).unwrap();
        c.do_write(ino, 10 * 4096 + 5, b"new", libc::O_RDWR).unwrap();
        model[10 * 4096 + 5..10 * 4096 + 8].copy_from_slice(b"new");
        assert_eq!(read_all(&c), model, "buffered");
        c.do_release(ino, libc::O_RDWR).unwrap();
        assert_eq!(read_all(&c), model, "committed");
    }

    #[test]
    fn truncate_commits_first_and_zero_fills_on_extension() {
        let (_t, c) = core(4096);
        let (a, _fh) = c.do_create(1, &os("f"), 0o644, 0, libc::O_RDWR, 0, 0).unwrap();
        let ino = a.ino.0;
        c.do_write(ino, 0, &[9u8; 9000], libc::O_RDWR).unwrap();
        let attr = c.do_setattr(ino, SetAttr { size: Some(5000), ..SetAttr::default() }).unwrap();
        assert_eq!(attr.size, 5000);
        c.do_setattr(ino, SetAttr { size: Some(9000), ..SetAttr::default() }).unwrap();
        let back = c.do_read(ino, 0, 9000).unwrap();
        assert!(back[..5000].iter().all(|&b| b == 9) && back[5000..].iter().all(|&b| b == 0));
    }

    #[test]
    fn directory_listing_offsets_are_positions_in_a_snapshot() {
        let (_t, c) = core(4096);
        for n in ["a", "b", "c"] {
            c.do_mkdir(1, &os(n), 0o755, 0, 0, 0).unwrap();
        }
        let fh = c.do_opendir(1).unwrap();
        let (l, start) = c.listing(1, fh, 0).unwrap();
        let names: Vec<&[u8]> = l.iter().map(|e| e.name.as_slice()).collect();
        assert_eq!(names, vec![&b"."[..], b"..", b"a", b"b", b"c"]);
        assert_eq!(start, 0);
        c.do_rmdir(1, &os("a")).unwrap();
        c.do_mkdir(1, &os("0"), 0o755, 0, 0, 0).unwrap();
        let (l2, start) = c.listing(1, fh, 3).unwrap();
        assert!(Arc::ptr_eq(&l, &l2));
        assert_eq!(start, 3);
        let (l3, _) = c.listing(1, fh, 0).unwrap();
        assert_eq!(l3.iter().map(|e| e.name.as_slice()).collect::<Vec<_>>(), vec![&b"."[..], b"..", b"0", b"b", b"c"]);
        c.do_releasedir(1, fh);
    }

    #[test]
    fn lookups_are_counted_and_forgotten() {
        let (_t, c) = core(4096);
        c.do_mkdir(1, &os("d"), 0o755, 0, 0, 0).unwrap();
        let before = c.inodes.len();
        let a = c.do_lookup(1, &os("d")).unwrap();
        c.do_lookup(1, &os("d")).unwrap();
        c.do_forget(a.ino.0, 2);
        assert_eq!(c.inodes.len(), before);
        c.do_forget(a.ino.0, 1);
        assert_eq!(c.inodes.len(), before - 1);
        assert_eq!(c.do_getattr(a.ino.0).unwrap_err().code(), libc::ESTALE);
    }

    #[test]
    fn macos_volname_and_xtimes_helpers() {
        let (_t, c) = core(4096);
        c.do_setvolname(&os("Vol")).unwrap();
        assert_eq!(c.tree.node(NodeId::ROOT).unwrap().volname, b"Vol");
        let a = c.do_mkdir(1, &os("d"), 0o755, 0, 0, 0).unwrap();
        let (crtime, _bkup) = c.do_getxtimes(a.ino.0).unwrap();
        assert_eq!(crtime, a.crtime);
    }

    #[test]
    fn copy_plans_share_only_blocks_at_the_same_place() {
        let bs = 4096;
        assert_eq!(copy_plan(0, 0, 3 * bs, bs), CopyPlan { head: 0, blocks: 3, tail: 0 });
        assert_eq!(copy_plan(100, 2 * bs + 100, 3 * bs, bs), CopyPlan { head: bs - 100, blocks: 2, tail: 100 });
        assert_eq!(copy_plan(100, 100, 50, bs), CopyPlan { head: 50, blocks: 0, tail: 0 });
        assert_eq!(copy_plan(1, 2, 10, bs), CopyPlan { head: 10, blocks: 0, tail: 0 });
        assert_eq!(copy_plan(1, 2, 1 << 30, bs).head, COPY_BYTES_MAX);
        for (a, b, len) in [(0u64, 0u64, 1u64), (5, 5, 3 * bs + 7), (bs - 1, 2 * bs - 1, bs + 2)] {
            let p = copy_plan(a, b, len, bs);
            assert_eq!(p.head + p.blocks * bs + p.tail, len);
            if p.blocks > 0 {
                assert_eq!((a + p.head) % bs, 0);
            }
        }
    }

    #[test]
    fn privileges_go_as_the_kernel_takes_them_on_write() {
        let f = NodeKind::File;
        let member = |_: u32| true;
        let stranger = |_: u32| false;
        assert_eq!(privs_to_kill(f, 0o6777, 5, 0, stranger), 0, "root keeps them");
        assert_eq!(privs_to_kill(NodeKind::Dir, 0o6777, 5, 7, stranger), 0);
        assert_eq!(privs_to_kill(f, 0o4666, 5, 7, member), libc::S_ISUID);
        assert_eq!(privs_to_kill(f, 0o2666, 5, 7, member), 0, "mandatory locking mark, writer in the group");
        assert_eq!(privs_to_kill(f, 0o2666, 5, 7, stranger), libc::S_ISGID);
        assert_eq!(privs_to_kill(f, 0o2676, 5, 7, member), libc::S_ISGID);
        assert_eq!(privs_to_kill(f, 0o6777, 5, 7, member), libc::S_ISUID | libc::S_ISGID);
        assert_eq!(parse_groups("Name:\tx\nGroups:\t4 24 27 \nNgid: 0\n"), vec![4, 24, 27]);
        assert_eq!(parse_groups("Groups:\n"), Vec::<u32>::new());
    }

    #[test]
    fn an_aligned_copy_shares_blocks_without_buffering_bytes() {
        let (_t, c) = core(4096);
        let (a, _) = c.do_create(1, &os("src"), 0o644, 0, libc::O_RDWR, 0, 0).unwrap();
        let data: Vec<u8> = (0..10 * 4096u32).map(|i| (i % 251) as u8).collect();
        c.do_write(a.ino.0, 0, &data, libc::O_RDWR).unwrap();
        let (b, _) = c.do_create(1, &os("dst"), 0o644, 0, libc::O_RDWR, 0, 0).unwrap();
        assert_eq!(c.do_copy_file_range(a.ino.0, 4096, b.ino.0, 0, 8 * 4096, 0).unwrap(), 8 * 4096);
        let (src, dst) = (c.inodes.node(a.ino.0).unwrap(), c.inodes.node(b.ino.0).unwrap());
        assert!(c.wb.dirty_view(dst).is_none(), "no byte went through the write-back");
        let shared: Vec<_> = c.tree.file_blocks(src, 1, 8).unwrap().into_iter().map(|(_, b)| b).collect();
        let copied: Vec<_> = c.tree.file_blocks(dst, 0, 8).unwrap().into_iter().map(|(_, b)| b).collect();
        assert_eq!(shared, copied);
        assert_eq!(c.do_read(b.ino.0, 0, 8 * 4096).unwrap(), data[4096..9 * 4096].to_vec());
        // Overlapping ranges of one file are refused, as Linux does.
        assert_eq!(c.do_copy_file_range(a.ino.0, 0, a.ino.0, 4096, 8192, 0).unwrap_err(), Errno::EINVAL);
    }

    #[test]
    fn punched_and_zeroed_ranges_read_as_zeros_and_free_blocks() {
        let (_t, c) = core(4096);
        let root = Caller { uid: 0, gid: 0, pid: 0 };
        let (a, _) = c.do_create(1, &os("f"), 0o644, 0, libc::O_RDWR, 0, 0).unwrap();
        let ino = a.ino.0;
        let mut model: Vec<u8> = (0..8 * 4096u32).map(|i| (i % 13 + 1) as u8).collect();
        c.do_write(ino, 0, &model, libc::O_RDWR).unwrap();
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        c.do_fallocate(ino, 100, 3 * 4096, punch, root).unwrap();
        model[100..100 + 3 * 4096].fill(0);
        c.do_fallocate(ino, 7 * 4096 + 5, 10 * 4096, libc::FALLOC_FL_ZERO_RANGE, root).unwrap();
        model[7 * 4096 + 5..].fill(0);
        model.resize(17 * 4096 + 5, 0);
        assert_eq!(c.do_read(ino, 0, 1 << 20).unwrap(), model);
        let node = c.inodes.node(ino).unwrap();
        let stored: Vec<u64> = c.tree.file_blocks(node, 0, 100).unwrap().into_iter().map(|(i, _)| i).collect();
        assert_eq!(stored, vec![0, 3, 4, 5, 6, 7], "blocks 1 and 2 are holes now");
        assert_eq!(c.tree.node(node).unwrap().stored_bytes, 6 * 4096);
        assert_eq!(c.do_lseek(ino, 4096, libc::SEEK_DATA).unwrap(), 3 * 4096);
        assert_eq!(c.do_lseek(ino, 7 * 4096, libc::SEEK_HOLE).unwrap(), 8 * 4096);
    }

    /// After any mix of writes, truncates and fallocates, the stored bytes
    /// a file reports are those of its stored blocks.
    #[test]
    fn stored_bytes_follow_the_blocks() {
        let (_t, c) = core(4096);
        let root = Caller { uid: 0, gid: 0, pid: 0 };
        let (a, _) = c.do_create(1, &os("f"), 0o644, 0, libc::O_RDWR, 0, 0).unwrap();
        let ino = a.ino.0;
        let node = c.inodes.node(ino).unwrap();
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut below = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n.max(1)
        };
        let modes = [libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, libc::FALLOC_FL_ZERO_RANGE, 0];
        for step in 0..400u64 {
            let size = c.do_getattr(ino).unwrap().size;
            let span = size + 3 * 4096;
            let (off, len) = (below(span), 1 + below(3 * 4096));
            let what = match below(4) {
                0 | 1 => {
                    let data: Vec<u8> = (0..len).map(|i| (i % 7 + 1) as u8).collect();
                    c.do_write(ino, off, &data, libc::O_RDWR).unwrap();
                    "write"
                }
                2 => {
                    c.do_setattr(ino, SetAttr { size: Some(off), ..SetAttr::default() }).unwrap();
                    "truncate"
                }
                _ => {
                    let mode = modes[below(3) as usize];
                    c.do_fallocate(ino, off, len, mode, root).unwrap();
                    "fallocate"
                }
            };
            c.do_fsync(ino).unwrap();
            let blocks: u64 =
                c.tree.file_blocks(node, 0, u64::MAX).unwrap().iter().map(|(_, b)| u64::from(b.len)).sum();
            assert_eq!(c.tree.node(node).unwrap().stored_bytes, blocks, "step {step}: {what} {off}+{len}");
        }
    }

    #[test]
    fn errors_of_node_operations() {
        let (_t, c) = core(4096);
        assert_eq!(c.do_mknod(1, &os("x"), libc::S_IFDIR | 0o755, 0, 0, 0, 0).unwrap_err(), Errno::EINVAL);
        assert_eq!(c.do_link().unwrap_err(), Errno::EPERM);
        assert_eq!(c.do_rename(1, &os("a"), 1, &os("b"), libc::RENAME_WHITEOUT).unwrap_err(), Errno::EINVAL);
        let f = c.do_mknod(1, &os("f"), libc::S_IFREG | 0o644, 0, 0, 0, 0).unwrap();
        let root = Caller { uid: 0, gid: 0, pid: 0 };
        assert_eq!(c.do_fallocate(f.ino.0, 0, 10, libc::FALLOC_FL_PUNCH_HOLE, root).unwrap_err(), Errno::EOPNOTSUPP);
        assert_eq!(
            c.do_fallocate(f.ino.0, 0, 10, libc::FALLOC_FL_COLLAPSE_RANGE, root).unwrap_err(),
            Errno::EOPNOTSUPP
        );
        assert_eq!(c.do_fallocate(f.ino.0, 0, 0, 0, root).unwrap_err(), Errno::EINVAL);
        assert_eq!(c.do_lseek(f.ino.0, 0, libc::SEEK_DATA).unwrap_err(), Errno::ENXIO);
        assert_eq!(c.do_opendir(f.ino.0).unwrap_err(), Errno::ENOTDIR);
        assert_eq!(c.do_open(1, libc::O_RDONLY).unwrap_err(), Errno::EISDIR);
    }
}
