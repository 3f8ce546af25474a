//! The values the engine hands out and takes: node states, rename and
//! xattr flags, counters and the reports of `open` and `import`. Plain data,
//! the same for the live tree and a point-in-time view.

use std::collections::BTreeMap;

use crate::event::{Attrs, BlockRef, NodeKind};
use crate::ids::NodeId;
use crate::index::Counts;
use crate::tree::NodeRecord;

/// A node as the engine hands it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    /// Its id.
    pub id: NodeId,
    /// What it is.
    pub kind: NodeKind,
    /// Parent directory.
    pub parent: NodeId,
    /// Name in the parent.
    pub name: Vec<u8>,
    /// Attributes.
    pub attrs: Attrs,
    /// Size in bytes.
    pub size: u64,
    /// Symlink target.
    pub target: Vec<u8>,
    /// Extended attributes.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Kept local.
    pub pinned: bool,
    /// Unlinked (still readable through open handles).
    pub removed: bool,
    /// Bytes counted for `st_blocks`: for a file, those of its stored
    /// blocks (holes are free); for others, the size.
    pub stored_bytes: u64,
    /// Directories: how many directories it holds (a directory's link
    /// count is 2 plus this); 0 for other kinds.
    pub subdirs: u64,
    /// Volume name (root only).
    pub volname: Vec<u8>,
    /// A conflict copy not yet resolved: the file it is a copy of.
    pub conflict_of: Option<NodeId>,
}

impl NodeState {
    pub(crate) fn from_record(id: NodeId, r: NodeRecord) -> Self {
        NodeState {
            id,
            kind: r.kind,
            parent: r.parent,
            name: r.name,
            attrs: r.attrs,
            size: r.size,
            stored_bytes: if r.kind == NodeKind::File { r.stored } else { r.size },
            subdirs: r.subdirs,
            target: r.target,
            xattrs: r.xattrs.into_iter().collect(),
            pinned: r.pinned,
            removed: r.removed,
            volname: r.volname,
            conflict_of: r.conflict_of,
        }
    }
}

/// One node of [`TreeRead::dump_tree`](crate::TreeRead::dump_tree): its path, state and stored blocks.
pub type TreeEntry = (Vec<u8>, NodeState, Vec<(u64, BlockRef)>);

/// Rename flags (renameat2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    /// Fail with EEXIST if the target exists.
    pub noreplace: bool,
    /// Swap source and target (both must exist).
    pub exchange: bool,
}

/// What a rename moved: the node that was at the old name, and for an
/// exchange the node that was at the new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renamed {
    /// Now at the new name.
    pub moved: NodeId,
    /// Now at the old name (an exchange only).
    pub swapped: Option<NodeId>,
}

/// How `set_xattr` treats an existing attribute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XattrMode {
    /// Create or replace.
    #[default]
    Any,
    /// Fail if it exists (XATTR_CREATE).
    Create,
    /// Fail if it is missing (XATTR_REPLACE).
    Replace,
}

/// Sizes and counts for `status` and `statfs`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live nodes.
    pub nodes: u64,
    /// Live files.
    pub files: u64,
    /// Live directories.
    pub dirs: u64,
    /// Sum of live file sizes.
    pub logical_bytes: u64,
    /// Uncompressed bytes of all distinct blocks ever referenced.
    pub local_blob_bytes: u64,
    /// Configured cache limit.
    pub cache_limit: u64,
    /// Events in the index.
    pub events: u64,
}

impl Stats {
    /// The counters of an index (which leave out the root).
    pub(crate) fn from_counts(c: &Counts, cache_limit: u64) -> Stats {
        Stats {
            nodes: c.nodes + 1,
            files: c.files,
            dirs: c.dirs + 1,
            logical_bytes: c.logical_bytes,
            local_blob_bytes: c.block_bytes,
            cache_limit,
            events: c.events,
        }
    }
}

/// What [`LiveTree::import`](crate::LiveTree::import) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Events applied to the index.
    pub applied: u64,
    /// Older events arrived after newer ones, so the index was replayed.
    pub replayed: bool,
}

/// What `open` found and fixed.
#[derive(Clone, Debug, Default)]
pub struct OpenReport {
    /// The FORMAT file was upgraded from this version.
    pub upgraded_from: Option<String>,
    /// A torn tail was cut from our log.
    pub torn_tail: Option<String>,
    /// The index was rebuilt from scratch.
    pub index_rebuilt: bool,
    /// Events applied to the index while catching up.
    pub caught_up: u64,
    /// The last writer did not close cleanly.
    pub unclean: bool,
    /// Older events arrived after newer ones were applied, so the index was
    /// replayed in merge order.
    pub replayed: bool,
    /// Unacknowledged events cut from our log because their blocks were
    /// lost in the crash.
    pub cut_unacknowledged: Option<String>,
    /// A point-in-time view could not update `history.redb` (other views
    /// hold it) and shows the log as of its last update.
    pub stale_history: Option<String>,
}
