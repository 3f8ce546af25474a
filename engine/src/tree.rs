//! The fold from events to node state: pure, no I/O, so property tests and
//! fuzzers can drive it and the index can apply it the same way live, on
//! catch-up and on rebuild.
//!
//! Always true:
//! - a node's state is `apply` of its events, in log order, starting from
//!   nothing (the root starts from [`NodeRecord::root`]);
//! - `apply` never fails: an event that does not fit the state it lands on
//!   (e.g. a change to a node never created, a second create) is recorded in
//!   the returned [`Effects::ignored`] with the reason, and changes nothing,
//!   so the fold is total and deterministic over any sequence of events;
//! - it is about one node's own fields; where a node sits in the tree (its
//!   directory entry, name collisions, cycles) is the merge's business (see
//!   `merge`), which calls this for each event.

use crate::clock::VectorClock;
use crate::event::{Attrs, BlockRef, Change, Event, NodeKind};
use crate::ids::{EventId, NodeId, Timestamp};

/// The content version a file shows: the event that made it, and that
/// event's own entry in its clock (`tick`), so that "did event `x` see this
/// version" is `x.clock.get(event.machine) >= tick`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ContentHead {
    /// The event that made the version.
    pub event: EventId,
    /// `event`'s clock entry for its own machine.
    pub tick: u64,
}

impl ContentHead {
    /// The version `e` makes.
    pub fn of(e: &Event) -> Self {
        ContentHead { event: e.id(), tick: e.clock.get(e.machine) }
    }

    /// Whether `e` was made by a writer that had seen this version.
    pub(crate) fn seen_by(&self, e: &Event) -> bool {
        e.clock.get(self.event.machine) >= self.tick
    }
}

/// The state of one node as the index stores it.
#[derive(Clone, PartialEq, Eq, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct NodeRecord {
    /// What it is.
    pub kind: NodeKind,
    /// Parent directory (the root is its own parent).
    pub parent: NodeId,
    /// Name in the parent.
    pub name: Vec<u8>,
    /// Attributes.
    pub attrs: Attrs,
    /// Size in bytes (files), target length (symlinks), 0 otherwise.
    pub size: u64,
    /// Symlink target.
    pub target: Vec<u8>,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Kept local by `syncer pin`.
    pub pinned: bool,
    /// Removed from the tree (kept for history and for open handles).
    pub removed: bool,
    /// The clock of the remove that took it out of the tree: a later change
    /// that did not see it brings the node back (see `merge`).
    pub removed_by: Option<VectorClock>,
    /// Vector clock after the last event.
    pub clock: VectorClock,
    /// Volume name (root only).
    pub volname: Vec<u8>,
    /// Files: the content version shown (see `merge`); `None` for other
    /// kinds.
    pub head: Option<ContentHead>,
    /// A conflict copy not yet resolved: the file whose concurrent version
    /// it holds (see `merge`).
    pub conflict_of: Option<NodeId>,
    /// A conflict copy, resolved or not: the file it was made beside. A
    /// content change is routed only within one such family.
    pub copy_of: Option<NodeId>,
    /// Directories: how many live directories it holds (its link count is
    /// 2 plus this); 0 for other kinds. Kept by the merge as entries come
    /// and go (see `merge`), never by [`apply`].
    pub subdirs: u64,
    /// Files: the bytes of its stored blocks (holes are free), what
    /// `st_blocks` counts; 0 for other kinds. Kept by the merge as blocks
    /// change (see `merge`), never by [`apply`].
    pub stored: u64,
}

impl NodeRecord {
    /// A new node as its create event describes it.
    pub fn new(kind: NodeKind, parent: NodeId, name: Vec<u8>, attrs: Attrs, target: Vec<u8>) -> Self {
        let size = if kind == NodeKind::Symlink { target.len() as u64 } else { 0 };
        NodeRecord {
            kind,
            parent,
            name,
            attrs,
            size,
            target,
            xattrs: Vec::new(),
            pinned: false,
            removed: false,
            removed_by: None,
            clock: VectorClock::new(),
            volname: Vec::new(),
            head: None,
            conflict_of: None,
            copy_of: None,
            subdirs: 0,
            stored: 0,
        }
    }

    /// The root directory as it is before any event: mode 0755, owned by root.
    pub fn root() -> Self {
        Self::new(NodeKind::Dir, NodeId::ROOT, Vec::new(), Attrs { mode: 0o755, ..Attrs::default() }, Vec::new())
    }

    /// The value of extended attribute `name`.
    pub fn xattr(&self, name: &[u8]) -> Option<&[u8]> {
        self.xattrs.binary_search_by(|(k, _)| k.as_slice().cmp(name)).ok().map(|i| self.xattrs[i].1.as_slice())
    }
}

/// What one event does to its node.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Effects {
    /// The node's state after the event.
    pub node: NodeRecord,
    /// Why the event changed nothing, if it did not fit.
    pub ignored: Option<&'static str>,
}

/// Number of blocks a file of `size` bytes spans.
pub fn block_count(size: u64, block_size: u64) -> u64 {
    size.div_ceil(block_size.max(1))
}

/// Applies `event` to `prev` (the node's state before it, if any).
pub fn apply(prev: Option<&NodeRecord>, event: &Event) -> Effects {
    let time = event.time;
    let ignore =
        |reason: &'static str| Effects { node: prev.cloned().unwrap_or_else(NodeRecord::root), ignored: Some(reason) };
    let mut fx = match (&event.change, prev) {
        (Change::Create { parent, name, kind, attrs, target }, None) => {
            let mut node = NodeRecord::new(*kind, *parent, name.clone(), *attrs, target.clone());
            if *kind == NodeKind::File {
                node.head = Some(ContentHead::of(event));
            }
            Effects { node, ignored: None }
        }
        (_, None) => return ignore("change to a node that was never created"),
        (change, Some(prev)) => {
            // An unlinked node stays writable through open handles; only
            // changes to its place in the tree are meaningless once removed.
            if prev.removed && matches!(change, Change::Move { .. } | Change::Remove | Change::Exchange { .. }) {
                return ignore("move or remove of a removed node");
            }
            let mut node = prev.clone();
            match change {
                Change::Create { .. } => return ignore("create of a node that exists"),
                Change::SetAttrs(c) => {
                    let a = &mut node.attrs;
                    a.mode = c.mode.map_or(a.mode, |m| m & 0o7777);
                    a.uid = c.uid.unwrap_or(a.uid);
                    a.gid = c.gid.unwrap_or(a.gid);
                    a.flags = c.flags.unwrap_or(a.flags);
                    a.atime = c.atime.unwrap_or(a.atime);
                    a.mtime = c.mtime.unwrap_or(a.mtime);
                    a.crtime = c.crtime.unwrap_or(a.crtime);
                    a.bkuptime = c.bkuptime.unwrap_or(a.bkuptime);
                    a.ctime = time;
                }
                Change::Content { size, .. } => {
                    if node.kind != NodeKind::File {
                        return ignore("content change to a non-file");
                    }
                    // A change made on a known version sets the size its
                    // writer saw; one without (read from version 2 records)
                    // never shrinks the file, as version 2 merged it.
                    node.size = if event.base.is_some() { *size } else { node.size.max(*size) };
                    node.attrs.mtime = time;
                    node.attrs.ctime = time;
                    node.head = Some(ContentHead::of(event));
                }
                Change::Truncate { size, .. } => {
                    if node.kind != NodeKind::File {
                        return ignore("truncate of a non-file");
                    }
                    node.size = *size;
                    node.attrs.mtime = time;
                    node.attrs.ctime = time;
                    node.head = Some(ContentHead::of(event));
                }
                Change::Move { parent, name } => {
                    node.parent = *parent;
                    node.name = name.clone();
                    node.attrs.ctime = time;
                }
                Change::Remove => {
                    node.removed = true;
                    node.removed_by = Some(event.clock.clone());
                    node.attrs.ctime = time;
                }
                Change::SetXattr { name, value } => {
                    match node.xattrs.binary_search_by(|(k, _)| k.cmp(name)) {
                        Ok(i) => node.xattrs[i].1 = value.clone(),
                        Err(i) => node.xattrs.insert(i, (name.clone(), value.clone())),
                    }
                    node.attrs.ctime = time;
                }
                Change::RemoveXattr { name } => {
                    if let Ok(i) = node.xattrs.binary_search_by(|(k, _)| k.cmp(name)) {
                        node.xattrs.remove(i);
                    }
                    node.attrs.ctime = time;
                }
                Change::SetTarget { target } => {
                    if node.kind != NodeKind::Symlink {
                        return ignore("symlink target change on a non-symlink");
                    }
                    node.target = target.clone();
                    node.size = target.len() as u64;
                    node.attrs.ctime = time;
                }
                // Where the node lands depends on the other node: the merge
                // places both; here only the status change is recorded.
                Change::Exchange { .. } => node.attrs.ctime = time,
                Change::SetVolname { name } => node.volname = name.clone(),
                Change::SetPinned { pinned } => node.pinned = *pinned,
                Change::Resolve => {
                    node.conflict_of = None;
                    node.attrs.ctime = time;
                }
            }
            Effects { node, ignored: None }
        }
    };
    fx.node.clock = match prev {
        Some(p) => p.clock.join(&event.clock),
        None => event.clock.clone(),
    };
    fx
}

/// Bumps a directory's mtime and ctime to `time` (its listing changed).
pub(crate) fn touch_dir(dir: &mut NodeRecord, time: Timestamp) {
    dir.attrs.mtime = time;
    dir.attrs.ctime = time;
}

/// The bytes of a block reference as the index stores them: `len` u32 LE,
/// then the hash's significant bytes. An empty value is a hole.
pub(crate) fn encode_block_ref(b: Option<&BlockRef>) -> Vec<u8> {
    match b {
        None => Vec::new(),
        Some(b) => {
            let mut v = Vec::with_capacity(4 + b.hash.as_bytes().len());
            v.extend_from_slice(&b.len.to_le_bytes());
            v.extend_from_slice(b.hash.as_bytes());
            v
        }
    }
}

/// Inverse of [`encode_block_ref`]; `None` for a hole, `Err` for garbage.
pub(crate) fn decode_block_ref(v: &[u8]) -> Result<Option<BlockRef>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    let (len, hash) = v.split_at_checked(4).ok_or("block ref shorter than 4 bytes")?;
    let len = u32::from_le_bytes(len.try_into().map_err(|_| "block ref length")?);
    let hash = crate::ids::BlockHash::from_bytes(hash).map_err(|e| e.to_string())?;
    Ok(Some(BlockRef { hash, len }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AttrChange, BlockChange};
    use crate::ids::{BlockHash, MachineId};

    fn ev(node: NodeId, seq: u64, change: Change) -> Event {
        let m = MachineId(7);
        let mut clock = VectorClock::new();
        for _ in 0..seq {
            clock.tick(m);
        }
        Event { node, machine: m, seq, time: Timestamp(seq as i64 * 1000), clock, change, base: None }
    }

    fn create(parent: NodeId, name: &str, kind: NodeKind) -> Change {
        Change::Create { parent, name: name.into(), kind, attrs: Attrs::default(), target: Vec::new() }
    }

    #[test]
    fn create_move_remove_update_place_and_removal() {
        let n = NodeId::new(1, MachineId(7));
        let fx = apply(None, &ev(n, 1, create(NodeId::ROOT, "a", NodeKind::File)));
        assert_eq!((fx.node.parent, fx.node.name.as_slice()), (NodeId::ROOT, &b"a"[..]));
        let d = NodeId::new(2, MachineId(7));
        let fx2 = apply(Some(&fx.node), &ev(n, 2, Change::Move { parent: d, name: b"b".to_vec() }));
        assert_eq!((fx2.node.parent, fx2.node.name.as_slice()), (d, &b"b"[..]));
        let fx3 = apply(Some(&fx2.node), &ev(n, 3, Change::Remove));
        assert!(fx3.node.removed);
        let fx4 = apply(Some(&fx3.node), &ev(n, 4, Change::Move { parent: d, name: b"c".to_vec() }));
        assert_eq!(fx4.ignored, Some("move or remove of a removed node"));
        assert_eq!(fx4.node, fx3.node);
        let fx5 = apply(
            Some(&fx3.node),
            &ev(n, 5, Change::SetAttrs(AttrChange { mode: Some(0o600), ..AttrChange::default() })),
        );
        assert_eq!(fx5.node.attrs.mode, 0o600);
        assert!(fx5.node.removed);
    }

    #[test]
    fn writes_never_shrink_and_truncate_sets_the_size() {
        let n = NodeId::new(1, MachineId(7));
        let fx = apply(None, &ev(n, 1, create(NodeId::ROOT, "f", NodeKind::File)));
        let b = BlockRef { hash: BlockHash::of(b"x", 32), len: 4096 };
        let w = Change::Content { size: 3 * 4096, blocks: vec![BlockChange { index: 2, block: Some(b) }] };
        let fx = apply(Some(&fx.node), &ev(n, 2, w));
        let small = Change::Content { size: 10, blocks: vec![BlockChange { index: 0, block: Some(b) }] };
        let fx = apply(Some(&fx.node), &ev(n, 3, small));
        assert_eq!(fx.node.size, 3 * 4096);
        let fx = apply(Some(&fx.node), &ev(n, 4, Change::Truncate { size: 5000, tail: None }));
        assert_eq!(fx.node.size, 5000);
    }

    #[test]
    fn block_ref_codec_round_trips_and_refuses_garbage() {
        let b = BlockRef { hash: BlockHash::of(b"abc", 20), len: 77 };
        assert_eq!(decode_block_ref(&encode_block_ref(Some(&b))), Ok(Some(b)));
        assert_eq!(decode_block_ref(&encode_block_ref(None)), Ok(None));
        assert!(decode_block_ref(&[1, 2, 3]).is_err());
        assert!(decode_block_ref(&[1, 2, 3, 4, 5]).is_err());
    }

    #[test]
    fn changes_before_create_are_ignored_not_fatal() {
        let n = NodeId::new(9, MachineId(7));
        let fx = apply(None, &ev(n, 1, Change::Remove));
        assert_eq!(fx.ignored, Some("change to a node that was never created"));
    }
}
