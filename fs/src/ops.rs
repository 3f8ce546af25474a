//! The filesystem's logic, as plain methods returning `Result<_, Errno>`.
//! The `fuser::Filesystem` impl in `adapter` only unpacks requests and
//! sends replies.
//!
//! Locks (none is held across another's engine call, and none is global to
//! all files except for map look-ups):
//! - `Inodes` mutex: the ino <-> node maps (see `inodes`);
//! - `dirs` mutex: the map of open directory handles; each handle has its
//!   own mutex over its cookies, held for one reply;
//! - the write-back locks (see `writeback`), per file.
//!
//! The engine serializes mutations on its own short writer mutex; reads are
//! lock-free snapshots, except within a group commit's window (at most
//! 20 ms after a change) when they read through the writer's transaction
//! under that mutex. So two FUSE threads working on different files only
//! meet in hash-map look-ups and in that writer mutex, never across an
//! fsync or a disk read.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use engine::event::{AttrChange, Attrs, NodeKind};
use engine::ids::{NodeId, Timestamp};
use engine::{LiveTree, NodeState, RenameFlags, TreeRead};
use fuser::{Errno, FileAttr, FileType, TimeOrNow};
use parking_lot::Mutex;

use crate::attr::{file_attr, kind_from_mode};
use crate::errno::errno;
use crate::inodes::Inodes;
use crate::writeback::WriteBack;

/// One entry of a directory listing.
#[derive(Clone, Debug)]
pub(crate) struct Listed {
    pub name: Vec<u8>,
    pub node: NodeId,
    pub kind: FileType,
}

/// An open directory: its node and the cookies handed out for its names
/// (see `dircursor`: offsets are cookies, each reply reads a page).
#[derive(Debug)]
struct DirHandle {
    node: NodeId,
    cookies: crate::dircursor::Cookies,
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
}

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

mod dir;
mod file;
#[cfg(test)]
mod tests;
mod volume;
mod xattr;
