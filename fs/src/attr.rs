//! Conversions between engine node state and what FUSE reports.

use std::time::SystemTime;

use engine::event::NodeKind;
use engine::ids::Timestamp;
use engine::NodeState;
use fuser::{FileAttr, FileType, INodeNo};

/// The FUSE file type of a node kind.
pub(crate) fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::Socket => FileType::Socket,
        NodeKind::CharDev => FileType::CharDevice,
        NodeKind::BlockDev => FileType::BlockDevice,
    }
}

/// The node kind a `mknod` mode asks for (`S_IFMT` bits; 0 means a regular
/// file, as for mknod(2)). Directories and unknown types are refused.
pub(crate) fn kind_from_mode(mode: u32) -> Option<NodeKind> {
    match mode & libc::S_IFMT {
        0 => Some(NodeKind::File),
        libc::S_IFREG => Some(NodeKind::File),
        libc::S_IFIFO => Some(NodeKind::Fifo),
        libc::S_IFSOCK => Some(NodeKind::Socket),
        libc::S_IFCHR => Some(NodeKind::CharDev),
        libc::S_IFBLK => Some(NodeKind::BlockDev),
        _ => None,
    }
}

/// What the writer has buffered but not yet committed for a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DirtyView {
    /// Logical size including buffered writes.
    pub size: u64,
    /// Time of the last buffered write.
    pub mtime: Timestamp,
    /// Bytes of the blocks buffered (each counted whole): added to the
    /// stored bytes for `st_blocks` until the commit.
    pub buffered: u64,
}

/// The attributes reported for `node` under inode number `ino`.
///
/// `dirty` overrides size and mtime/ctime with buffered, uncommitted writes.
/// atime is whatever the log says: reads never update it (noatime-like).
/// `st_blocks` counts the bytes stored (holes are free); a directory has
/// 2 links plus one per subdirectory.
pub(crate) fn file_attr(ino: u64, node: &NodeState, dirty: Option<DirtyView>, blksize: u64) -> FileAttr {
    let a = &node.attrs;
    let mut size = node.size;
    let mut mtime = a.mtime;
    let mut ctime = a.ctime;
    let mut blocks = node.stored_bytes.div_ceil(512);
    if let Some(d) = dirty {
        size = d.size;
        mtime = mtime.max(d.mtime);
        ctime = ctime.max(d.mtime);
        // Buffered blocks may replace stored ones: at most the whole file.
        let whole = size.div_ceil(blksize.max(1)).saturating_mul(blksize);
        blocks = node.stored_bytes.saturating_add(d.buffered).min(whole).div_ceil(512);
    }
    if node.kind == NodeKind::Symlink {
        size = node.target.len() as u64;
    }
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks,
        atime: a.atime.to_system_time(),
        mtime: mtime.to_system_time(),
        ctime: ctime.to_system_time(),
        crtime: a.crtime.to_system_time(),
        kind: file_type(node.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: match (node.removed, node.kind) {
            (true, _) => 0,
            (false, NodeKind::Dir) => u32::try_from(node.subdirs.saturating_add(2)).unwrap_or(u32::MAX),
            (false, _) => 1,
        },
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: u32::try_from(blksize).unwrap_or(1 << 20).clamp(512, 1 << 20),
        flags: a.flags,
    }
}

/// macOS extended times: (crtime, bkuptime).
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
pub(crate) fn xtimes(node: &NodeState) -> (SystemTime, SystemTime) {
    (node.attrs.crtime.to_system_time(), node.attrs.bkuptime.to_system_time())
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::event::Attrs;
    use engine::ids::NodeId;
    use std::collections::BTreeMap;

    fn state(kind: NodeKind) -> NodeState {
        NodeState {
            id: NodeId(5),
            kind,
            parent: NodeId::ROOT,
            name: b"x".to_vec(),
            attrs: Attrs {
                mode: 0o4755,
                uid: 7,
                gid: 8,
                rdev: 0,
                flags: 0,
                atime: Timestamp::from_secs_nanos(1, 0),
                mtime: Timestamp::from_secs_nanos(2, 0),
                ctime: Timestamp::from_secs_nanos(3, 0),
                crtime: Timestamp::from_secs_nanos(4, 5),
                bkuptime: Timestamp::from_secs_nanos(6, 7),
            },
            size: 1000,
            target: b"somewhere".to_vec(),
            xattrs: BTreeMap::new(),
            pinned: false,
            removed: false,
            stored_bytes: 1000,
            subdirs: 0,
            volname: Vec::new(),
            conflict_of: None,
        }
    }

    #[test]
    fn attr_of_file_and_dirty_override() {
        let n = state(NodeKind::File);
        let a = file_attr(9, &n, None, 1 << 20);
        assert_eq!((a.ino, a.size, a.perm, a.uid, a.gid, a.nlink), (INodeNo(9), 1000, 0o4755, 7, 8, 1));
        assert_eq!(a.kind, FileType::RegularFile);
        let d = DirtyView { size: 5000, mtime: Timestamp::from_secs_nanos(10, 0), buffered: 4096 };
        let a = file_attr(9, &n, Some(d), 4096);
        assert_eq!(a.size, 5000);
        assert_eq!(a.mtime, Timestamp::from_secs_nanos(10, 0).to_system_time());
        assert_eq!(a.ctime, Timestamp::from_secs_nanos(10, 0).to_system_time());
        assert_eq!(a.blksize, 4096);
        assert_eq!(a.blocks, (1000 + 4096u64).div_ceil(512));
    }

    #[test]
    fn holes_are_free_and_dirs_count_their_subdirs() {
        let mut n = state(NodeKind::File);
        n.size = 1 << 40;
        n.stored_bytes = 4096;
        assert_eq!(file_attr(2, &n, None, 4096).blocks, 8);
        let mut d = state(NodeKind::Dir);
        d.subdirs = 3;
        assert_eq!(file_attr(2, &d, None, 4096).nlink, 5);
        d.removed = true;
        assert_eq!(file_attr(2, &d, None, 4096).nlink, 0);
    }

    #[test]
    fn symlink_size_is_target_length_and_dirs_have_two_links() {
        assert_eq!(file_attr(2, &state(NodeKind::Symlink), None, 4096).size, 9);
        assert_eq!(file_attr(2, &state(NodeKind::Dir), None, 4096).nlink, 2);
    }

    #[test]
    fn mknod_modes() {
        assert_eq!(kind_from_mode(libc::S_IFIFO | 0o644), Some(NodeKind::Fifo));
        assert_eq!(kind_from_mode(0o644), Some(NodeKind::File));
        assert_eq!(kind_from_mode(libc::S_IFCHR), Some(NodeKind::CharDev));
        assert_eq!(kind_from_mode(libc::S_IFBLK), Some(NodeKind::BlockDev));
        assert_eq!(kind_from_mode(libc::S_IFSOCK), Some(NodeKind::Socket));
        assert_eq!(kind_from_mode(libc::S_IFDIR), None);
    }

    #[test]
    fn xtimes_are_crtime_and_bkuptime() {
        let (cr, bk) = xtimes(&state(NodeKind::File));
        assert_eq!(cr, Timestamp::from_secs_nanos(4, 5).to_system_time());
        assert_eq!(bk, Timestamp::from_secs_nanos(6, 7).to_system_time());
    }
}
