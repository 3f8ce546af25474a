//! The merge: the tree that a set of events from any number of machines
//! describes, as a function of that set alone. The rules live in [`step`],
//! written once against the small [`TreeStore`] trait: the in-memory
//! [`Merged`] (the reference model that property tests drive with random
//! replicas, delivery orders and duplicates) and the redb index both
//! implement it, so the mounted tree follows exactly the tested rules.
//!
//! How it works. Event times are a hybrid logical clock (see `event`), so
//! sorting events by `(time, machine, seq)` gives one total order that
//! extends causality. The tree is the fold of the events in that order, with
//! these rules:
//!
//! - Metadata field by field: an attribute change sets only the fields it
//!   names, an xattr change only its key. A field that only one side
//!   changed keeps that change; when both changed it concurrently, the later
//!   in the order (newer time, then higher machine id) wins. This is the
//!   three-way merge against the common ancestor of `docs/DESIGN.md`, computed
//!   without finding the ancestor.
//! - Content as one value, never block by block (see *Content versions*).
//! - Moves follow Kleppmann et al. (2021): applied in the total order, and a
//!   move that would make a node its own ancestor is skipped, so the tree
//!   never has a cycle and no subtree is orphaned.
//! - Remove vs concurrent change: the change wins. A change to a removed
//!   node that did not see the removal (its clock does not include the
//!   remove's) brings the node back, with its parents if needed; a remove of
//!   a directory that has live children (added concurrently) is skipped,
//!   and so is a remove of a file whose content version its writer had not
//!   seen. Changes that did see the removal (writes through a handle opened
//!   before an unlink) apply to the unlinked node without bringing it back.
//! - Names: two live nodes that end with one name in one directory both stay
//!   visible; the one placed later in the order gets a deterministic
//!   conflict name, `stem (conflict from <machine> <date>).ext`, and the
//!   resolution is recorded as a [`Conflict`].
//!
//! Always true of the result: every live node is reachable from the root,
//! there is no cycle, names are unique per directory, every visible file
//! shows exactly one writer's version, and the result depends only on the
//! set of events (not their order, not duplicates).
//!
//! # Content versions
//!
//! A file's content (its size and block list) is one value. Every event that
//! makes content (a file's `Create`, `Content`, `Truncate`) makes a *version*
//! named by the event's id, and every content change names in `base` the
//! version its writer saw under the file. [`TreeStore::version`] knows, for
//! every version, the node it was applied to and its size, so its blocks can
//! be read back from the block history whatever happened since. Each file
//! node shows one version, its `head`. A content change `e` on node `X` with
//! base `b`:
//!
//! 1. *On the head.* Some file node `Y` shows `b` (`X` itself, or the
//!    conflict copy that `b`'s line was moved to): `e` is applied to `Y`, on
//!    top of exactly `b`. This is every change on a machine that saw the
//!    latest version.
//! 2. *The other side did not change the content.* `b` is no longer shown
//!    (another change was made on it first in the order), but the node `T`
//!    that `b` was applied to shows the same size and blocks as `b` (a side
//!    that wrote the original bytes back, or wrote what was there): `e` is
//!    applied to `T` on top of that content. Nothing is lost: the two are
//!    the same bytes.
//! 3. *A conflict.* Otherwise two writers changed the content concurrently.
//!    `T` keeps its version and its name (it was first in the order), and
//!    `e`'s whole version, `b`'s content with `e`'s change, becomes a new
//!    node beside `T`: the conflict copy, id [`NodeId::conflict_copy`] of
//!    `e`, named `stem (conflict from <e's machine> <date>).ext`, with `T`'s
//!    attributes and xattrs as the merge has them, `e`'s size and times,
//!    and `conflict_of = T`. Its blocks are `b`'s block references plus
//!    `e`'s: nothing is read or written but the list. The writer's later
//!    changes on `e` then follow that line to the copy by rule 1.
//!
//! A base no node can show (an event whose base has not arrived: a peer's
//! log missing part of its history), or a version of another file (only a
//! damaged or hostile peer names one; copies and the file they were made
//! beside are one family, `copy_of`), is treated as a conflict made on
//! `X`'s current content; a missing base is made whole when it arrives and
//! the index is replayed in order. A change read from a version 2 record
//! has no base: it is applied to its node field by field, as version 2
//! merged it (writes never shrink the file there).
//!
//! So a file's visible content is always one writer's version, never a
//! splice of two concurrent ones, and every concurrent version is visible
//! in some node. The cases, all consequences of the rules:
//!
//! - edit vs delete: the remove of a file is refused when its writer had not
//!   seen the version the file shows (the edit survives, in either order);
//!   an edit that did not see a remove brings the file back;
//! - edit vs rename: both apply (the rename moves the node, the edit
//!   changes its content);
//! - edits on both sides, one side also renamed: the version first in the
//!   order keeps the node (and so follows the rename); the other becomes a
//!   copy beside the node, where the node was when the copy was made;
//! - three machines editing concurrently: the first in the order keeps the
//!   name, each other one gets its own copy named after its machine;
//! - append vs truncate: two content versions, so a copy;
//! - a concurrent edit of a conflict copy: the copy is a file like any
//!   other, so a copy of the copy (`name (conflict …) (conflict …).ext`);
//! - a side that wrote the original bytes back: rule 2 when the other side's
//!   change comes later in the order; when it comes first, the rewriting
//!   side's version (the original bytes) becomes the copy: both stay visible;
//! - a copy is listed as a conflict until it is removed or resolved
//!   ([`Change::Resolve`], `syncer resolve`).

use std::collections::BTreeMap;

use crate::calendar::civil_date;
use crate::clock::Causality;
use crate::event::{BlockChange, BlockRef, Change, Event, NodeKind};
use crate::ids::{EventId, MachineId, NodeId, Timestamp};
use crate::tree::{self, ContentHead, NodeRecord};

/// An event's place in the merge order: `(time, machine, seq)`.
pub type OrderKey = (Timestamp, MachineId, u64);

/// Where a content version lives (see *Content versions*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionLoc {
    /// The node the version was applied to.
    pub node: NodeId,
    /// The merge-order key of the event that made it: that node's blocks
    /// right after it are the version's blocks.
    pub key: OrderKey,
    /// The version's size.
    pub size: u64,
}

/// A file's content: size and stored blocks by index (holes absent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Content {
    /// Size in bytes.
    pub size: u64,
    /// Stored blocks by index.
    pub blocks: BTreeMap<u64, BlockRef>,
}

impl Content {
    /// This content with `change` (a content change) applied.
    pub fn with(mut self, change: &Change, block_size: u64) -> Content {
        match change {
            Change::Content { size, blocks } => {
                if *size < self.size {
                    let keep = tree::block_count(*size, block_size);
                    self.blocks.retain(|&i, _| i < keep);
                }
                self.set(blocks);
                self.size = *size;
            }
            Change::Truncate { size, tail } => {
                let keep = tree::block_count(*size, block_size);
                self.blocks.retain(|&i, _| i < keep);
                self.set(tail.iter());
                self.size = *size;
            }
            _ => {}
        }
        self
    }

    fn set<'a>(&mut self, changes: impl IntoIterator<Item = &'a BlockChange>) {
        for c in changes {
            match c.block {
                Some(b) => self.blocks.insert(c.index, b),
                None => self.blocks.remove(&c.index),
            };
        }
    }
}

/// The largest merge-order key: "now", for the current blocks of a node.
pub const LATEST: OrderKey = (Timestamp(i64::MAX), MachineId(u64::MAX), u64::MAX);

/// Deepest tree walked when looking for ancestors. Trees are acyclic (this
/// module keeps them so); the bound only guards against a damaged index.
const MAX_DEPTH: usize = 1 << 20;

/// What kind of conflict the merge resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConflictKind {
    /// Two live nodes ended with one name in one directory: `node` got
    /// `given` instead of `wanted`; `winner` kept the name.
    Name,
    /// `event` changed `node` without having seen the changes of `others`
    /// to it: merged field by field; where both sides changed one field,
    /// the later in merge order won, and the other value stays in history.
    Concurrent {
        /// Machines whose changes the event had not seen.
        others: Vec<MachineId>,
    },
    /// `event` changed the content of `winner` concurrently with the version
    /// `kept` that `winner` shows: `event`'s whole version became the
    /// conflict copy `node`, named `given` beside `winner` (then named
    /// `wanted`).
    Content {
        /// The version that kept the name.
        kept: EventId,
        /// When it was made.
        kept_time: Timestamp,
    },
}

/// A conflict and how it was resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// Which kind.
    pub kind: ConflictKind,
    /// The node concerned.
    pub node: NodeId,
    /// Its directory.
    pub parent: NodeId,
    /// The name it wanted (its name, for a concurrent change).
    pub wanted: Vec<u8>,
    /// The name it got (its name, for a concurrent change).
    pub given: Vec<u8>,
    /// The node that kept the name (the node itself, for a concurrent change).
    pub winner: NodeId,
    /// The event that placed or changed it: `(machine, seq)`.
    pub event: (MachineId, u64),
    /// That event's time.
    pub time: Timestamp,
}

/// Where the merged tree lives. Reads see every earlier write.
pub trait TreeStore {
    /// The store's error.
    type Error;
    /// A node's state (the root exists before any event).
    fn node(&self, id: NodeId) -> Result<Option<NodeRecord>, Self::Error>;
    /// Replaces a node's state.
    fn set_node(&mut self, id: NodeId, record: &NodeRecord, e: &Event) -> Result<(), Self::Error>;
    /// The live node named `name` in `dir`.
    fn entry(&self, dir: NodeId, name: &[u8]) -> Result<Option<NodeId>, Self::Error>;
    /// Whether `dir` has a live entry.
    fn has_entries(&self, dir: NodeId) -> Result<bool, Self::Error>;
    /// Sets (`Some`) or deletes (`None`) the entry `dir/name`, because of `e`.
    fn set_entry(
        &mut self,
        dir: NodeId,
        name: &[u8],
        child: Option<(NodeId, NodeKind)>,
        e: &Event,
    ) -> Result<(), Self::Error>;
    /// Block `index` of `node` now holds `block` (`None`: a hole), because
    /// of `e`. Returns the block it held before (`None`: a hole).
    fn set_block(
        &mut self,
        node: NodeId,
        index: u64,
        block: Option<BlockRef>,
        e: &Event,
    ) -> Result<Option<BlockRef>, Self::Error>;
    /// Every block of `node` from `from` on is gone, because of `e`.
    /// Returns the bytes they held (their uncompressed lengths).
    fn clear_blocks_from(&mut self, node: NodeId, from: u64, e: &Event) -> Result<u64, Self::Error>;
    /// A name collision was resolved.
    fn conflict(&mut self, c: Conflict) -> Result<(), Self::Error>;
    /// `e` changed nothing, for `reason`.
    fn ignored(&mut self, e: &Event, reason: &'static str) -> Result<(), Self::Error>;
    /// Where content version `v` lives, if it was applied.
    fn version(&self, v: EventId) -> Result<Option<VersionLoc>, Self::Error>;
    /// Content version `e` was applied to `node` (not always `e.node`: see
    /// *Content versions*), and has `size` bytes.
    fn set_version(&mut self, e: &Event, node: NodeId, size: u64) -> Result<(), Self::Error>;
    /// The stored blocks of `node` right after the event with key `key`.
    fn blocks_after(&self, node: NodeId, key: OrderKey) -> Result<BTreeMap<u64, BlockRef>, Self::Error>;
    /// The merge made conflict copy `id`, now in state `record`, because of
    /// `e`. Such a node has no create event of its own: its state at `e`
    /// must be kept whole (the index checkpoints it).
    fn copy_made(&mut self, id: NodeId, record: &NodeRecord, e: &Event) -> Result<(), Self::Error>;
}

/// A node of the in-memory merged tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedNode {
    /// Its state (parent and name are where it is, or was when removed).
    pub record: NodeRecord,
    /// Stored blocks by index (holes absent).
    pub blocks: BTreeMap<u64, BlockRef>,
}

/// The in-memory merged tree: the reference model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Merged {
    /// Every node ever created (removed ones included), by id.
    pub nodes: BTreeMap<NodeId, MergedNode>,
    /// Live directory entries: `(dir, name) -> child`.
    pub dirents: BTreeMap<(NodeId, Vec<u8>), NodeId>,
    /// Name collisions, in the order they were resolved.
    pub conflicts: Vec<Conflict>,
    /// Events that changed nothing, with the reason.
    pub ignored: Vec<((MachineId, u64), &'static str)>,
    /// Every content version applied (see *Content versions*).
    pub versions: BTreeMap<EventId, VersionLoc>,
    /// Every block change: `(node, index, key) -> block` (`None`: a hole).
    pub block_history: BTreeMap<(NodeId, u64, OrderKey), Option<BlockRef>>,
}

impl Merged {
    /// The live node named `name` in `dir`.
    pub fn lookup(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        self.dirents.get(&(dir, name.to_vec())).copied()
    }

    /// Whether `id` is in the tree (not removed).
    pub fn is_live(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| !n.record.removed)
    }

    /// The state of `id`.
    pub fn node(&self, id: NodeId) -> Option<&MergedNode> {
        self.nodes.get(&id)
    }
}

impl TreeStore for Merged {
    type Error = std::convert::Infallible;

    fn node(&self, id: NodeId) -> Result<Option<NodeRecord>, Self::Error> {
        Ok(self.nodes.get(&id).map(|n| n.record.clone()))
    }
    fn set_node(&mut self, id: NodeId, record: &NodeRecord, _: &Event) -> Result<(), Self::Error> {
        let n = self.nodes.entry(id).or_insert_with(|| MergedNode { record: record.clone(), blocks: BTreeMap::new() });
        n.record = record.clone();
        Ok(())
    }
    fn entry(&self, dir: NodeId, name: &[u8]) -> Result<Option<NodeId>, Self::Error> {
        Ok(self.lookup(dir, name))
    }
    fn has_entries(&self, dir: NodeId) -> Result<bool, Self::Error> {
        Ok(self.dirents.range((dir, Vec::new())..).next().is_some_and(|((d, _), _)| *d == dir))
    }
    fn set_entry(
        &mut self,
        dir: NodeId,
        name: &[u8],
        child: Option<(NodeId, NodeKind)>,
        _: &Event,
    ) -> Result<(), Self::Error> {
        match child {
            Some((c, _)) => self.dirents.insert((dir, name.to_vec()), c),
            None => self.dirents.remove(&(dir, name.to_vec())),
        };
        Ok(())
    }
    fn set_block(
        &mut self,
        node: NodeId,
        index: u64,
        block: Option<BlockRef>,
        e: &Event,
    ) -> Result<Option<BlockRef>, Self::Error> {
        let Some(n) = self.nodes.get_mut(&node) else { return Ok(None) };
        let old = match block {
            Some(b) => n.blocks.insert(index, b),
            None => n.blocks.remove(&index),
        };
        self.block_history.insert((node, index, order_key(e)), block);
        Ok(old)
    }
    fn clear_blocks_from(&mut self, node: NodeId, from: u64, e: &Event) -> Result<u64, Self::Error> {
        let Some(n) = self.nodes.get_mut(&node) else { return Ok(0) };
        let gone: Vec<(u64, u32)> = n.blocks.range(from..).map(|(i, b)| (*i, b.len)).collect();
        n.blocks.retain(|&i, _| i < from);
        let mut bytes = 0;
        for (i, len) in gone {
            bytes += u64::from(len);
            self.block_history.insert((node, i, order_key(e)), None);
        }
        Ok(bytes)
    }
    fn version(&self, v: EventId) -> Result<Option<VersionLoc>, Self::Error> {
        Ok(self.versions.get(&v).copied())
    }
    fn set_version(&mut self, e: &Event, node: NodeId, size: u64) -> Result<(), Self::Error> {
        self.versions.insert(e.id(), VersionLoc { node, key: order_key(e), size });
        Ok(())
    }
    fn blocks_after(&self, node: NodeId, key: OrderKey) -> Result<BTreeMap<u64, BlockRef>, Self::Error> {
        let mut out = BTreeMap::new();
        let from = (node, 0, (Timestamp(i64::MIN), MachineId(0), 0));
        for ((n, index, k), b) in self.block_history.range(from..) {
            if *n != node {
                break;
            }
            if *k <= key {
                match b {
                    Some(b) => out.insert(*index, *b),
                    None => out.remove(index),
                };
            }
        }
        Ok(out)
    }
    fn copy_made(&mut self, _: NodeId, _: &NodeRecord, _: &Event) -> Result<(), Self::Error> {
        Ok(())
    }
    fn conflict(&mut self, c: Conflict) -> Result<(), Self::Error> {
        self.conflicts.push(c);
        Ok(())
    }
    fn ignored(&mut self, e: &Event, reason: &'static str) -> Result<(), Self::Error> {
        self.ignored.push(((e.machine, e.seq), reason));
        Ok(())
    }
}

/// The sort key of an event in the merge order.
pub fn order_key(e: &Event) -> OrderKey {
    (e.time, e.machine, e.seq)
}

/// Merges a set of events (any order, duplicates allowed) in memory.
pub fn merge<'a>(events: impl IntoIterator<Item = &'a Event>, block_size: u64) -> Merged {
    // One event per (machine, seq). Two different events under one name can
    // only come from damage or a hostile peer; the smaller one wins so that
    // the choice does not depend on arrival order.
    let mut unique: BTreeMap<(MachineId, u64), &Event> = BTreeMap::new();
    for e in events {
        match unique.get(&(e.machine, e.seq)) {
            Some(old) if tie_rank(old) <= tie_rank(e) => {}
            _ => {
                unique.insert((e.machine, e.seq), e);
            }
        }
    }
    let mut sorted: Vec<&Event> = unique.into_values().collect();
    sorted.sort_by_key(|e| order_key(e));
    let mut m = Merged::default();
    m.nodes.insert(NodeId::ROOT, MergedNode { record: NodeRecord::root(), blocks: BTreeMap::new() });
    for e in sorted {
        match step(&mut m, e, block_size) {
            Ok(()) => {}
            Err(never) => match never {},
        }
    }
    m
}

fn tie_rank(e: &Event) -> (Timestamp, String) {
    (e.time, format!("{e:?}"))
}

/// A refusal: the event changes nothing.
type Refused = &'static str;

/// Applies one event, in merge order, to `s`. An event that does not fit is
/// reported through [`TreeStore::ignored`] and changes nothing.
pub fn step<S: TreeStore>(s: &mut S, e: &Event, block_size: u64) -> Result<(), S::Error> {
    match apply_step(s, e, block_size)? {
        Ok(()) => Ok(()),
        Err(reason) => s.ignored(e, reason),
    }
}

fn node_or_root<S: TreeStore>(s: &S, id: NodeId) -> Result<Option<NodeRecord>, S::Error> {
    Ok(match s.node(id)? {
        Some(n) => Some(n),
        None if id == NodeId::ROOT => Some(NodeRecord::root()),
        None => None,
    })
}

fn apply_step<S: TreeStore>(s: &mut S, e: &Event, block_size: u64) -> Result<Result<(), Refused>, S::Error> {
    if e.node == NodeId::ROOT
        && matches!(e.change, Change::Create { .. } | Change::Move { .. } | Change::Remove | Change::Exchange { .. })
    {
        return Ok(Err("the root cannot be created, moved or removed"));
    }
    match &e.change {
        Change::Create { parent, name, .. } => {
            if s.node(e.node)?.is_some() {
                return Ok(Err("create of a node that exists"));
            }
            if *parent == e.node {
                return Ok(Err("create of a node inside itself"));
            }
            if !valid_name(name) {
                return Ok(Err("create with an invalid name"));
            }
            let mut record = tree::apply(None, e).node;
            // Not in the tree until `place` puts it there.
            record.removed = true;
            let is_file = record.kind == NodeKind::File;
            s.set_node(e.node, &record, e)?;
            if is_file {
                s.set_version(e, e.node, 0)?;
            }
            let parent = usable_parent(s, *parent, e)?;
            place(s, e.node, parent, name, e)?;
        }
        Change::Move { parent, name } => {
            let Some(node) = s.node(e.node)? else { return Ok(Err("move of a node never created")) };
            if !valid_name(name) {
                return Ok(Err("move to an invalid name"));
            }
            if node.removed && !revives(&node, e) {
                return Ok(Err("move of a node removed before it"));
            }
            if !node_or_root(s, *parent)?.is_some_and(|p| p.kind == NodeKind::Dir) {
                return Ok(Err("move into a node that is not a directory"));
            }
            if is_ancestor_or_self(s, e.node, *parent)? {
                return Ok(Err("move would make a node its own ancestor"));
            }
            record_concurrent(s, e.node, &node, e)?;
            unplace(s, e.node, e)?;
            let parent = usable_parent(s, *parent, e)?;
            place(s, e.node, parent, name, e)?;
            if let Some(mut n) = s.node(e.node)? {
                n.attrs.ctime = e.time;
                s.set_node(e.node, &n, e)?;
            }
        }
        Change::Exchange { with } => {
            let (Some(a), Some(b)) = (s.node(e.node)?, s.node(*with)?) else {
                return Ok(Err("exchange with a node never created"));
            };
            if a.removed || b.removed || *with == NodeId::ROOT {
                return Ok(Err("exchange with a node not in the tree"));
            }
            if is_ancestor_or_self(s, e.node, b.parent)? || is_ancestor_or_self(s, *with, a.parent)? {
                return Ok(Err("exchange would make a node its own ancestor"));
            }
            for (id, mut n, parent, name) in
                [(e.node, a.clone(), b.parent, b.name.clone()), (*with, b, a.parent, a.name)]
            {
                set_entry_counted(s, parent, &name, Some((id, n.kind)), e)?;
                n.parent = parent;
                n.name = name;
                n.attrs.ctime = e.time;
                n.clock = n.clock.join(&e.clock);
                s.set_node(id, &n, e)?;
                touch(s, parent, e)?;
            }
        }
        Change::Remove => {
            let Some(node) = s.node(e.node)? else { return Ok(Err("remove of a node never created")) };
            if node.removed {
                return Ok(Err("remove of a removed node"));
            }
            // Only directories hold entries (every placement goes through a
            // directory), and asking costs a table scan.
            if node.kind == NodeKind::Dir && s.has_entries(e.node)? {
                return Ok(Err("remove of a directory that gained entries concurrently"));
            }
            if node.head.is_some_and(|h| !h.seen_by(e)) {
                return Ok(Err("remove of a file whose content changed concurrently (the edit survives)"));
            }
            unplace(s, e.node, e)?;
            let fx = tree::apply(Some(&node), e);
            s.set_node(e.node, &fx.node, e)?;
        }
        _ => {
            let target = match (e.base, e.change.is_content()) {
                (Some(base), true) => match content_target(s, e, base)? {
                    Target::Node(t) => t,
                    Target::Copy { of, content } => return make_copy(s, e, of, content, block_size).map(Ok),
                },
                _ => e.node,
            };
            let Some(node) = node_or_root(s, target)? else { return Ok(Err("change to a node never created")) };
            if node.removed && revives(&node, e) {
                revive(s, target, e)?;
            }
            let Some(node) = node_or_root(s, target)? else { return Ok(Err("change to a node never created")) };
            let fx = tree::apply(Some(&node), e);
            // A content change on a known base is never merged field by
            // field: it is its writer's whole version (see above).
            if fx.ignored.is_none() && e.base.is_none() {
                record_concurrent(s, target, &node, e)?;
            }
            if let Some(reason) = fx.ignored {
                return Ok(Err(reason));
            }
            let mut record = fx.node;
            match &e.change {
                Change::Content { blocks, .. } => {
                    // Bytes past the end are never stored: a version that
                    // ends before the one it replaces drops the blocks past
                    // its end, which an extension would otherwise show.
                    if record.size < node.size {
                        cut_past(s, target, &mut record, block_size, e)?;
                    }
                    for b in blocks {
                        let old = s.set_block(target, b.index, b.block, e)?;
                        record.stored = restored(record.stored, old, b.block);
                    }
                }
                Change::Truncate { size, tail } => {
                    if *size < node.size {
                        cut_past(s, target, &mut record, block_size, e)?;
                    }
                    if let Some(t) = tail {
                        let old = s.set_block(target, t.index, t.block, e)?;
                        record.stored = restored(record.stored, old, t.block);
                    }
                }
                _ => {}
            }
            if e.change.is_content() {
                s.set_version(e, target, record.size)?;
            }
            s.set_node(target, &record, e)?;
        }
    }
    Ok(Ok(()))
}

/// Where a content change with a known base goes (see *Content versions*).
enum Target {
    /// Applied to this node, on top of the content it shows.
    Node(NodeId),
    /// A conflict: a copy beside `of`, holding `content` (the base's) with
    /// the change applied.
    Copy { of: NodeId, content: Content },
}

fn content_target<S: TreeStore>(s: &S, e: &Event, base: EventId) -> Result<Target, S::Error> {
    let shows = |n: &NodeRecord| n.kind == NodeKind::File && n.head.map(|h| h.event) == Some(base);
    let Some(x) = s.node(e.node)? else { return Ok(Target::Node(e.node)) };
    if x.kind != NodeKind::File || shows(&x) {
        // Not a file: `tree::apply` refuses the change as it always has.
        return Ok(Target::Node(e.node));
    }
    let mut loc = s.version(base)?.filter(|l| l.key < order_key(e));
    if let Some(l) = loc {
        // A base of another file (a damaged or hostile peer) is no base.
        if l.node != e.node && family(s, l.node)? != family(s, e.node)? {
            loc = None;
        }
    }
    let Some(loc) = loc else {
        // The base is not known here (yet): a conflict made on what `X` shows.
        let content = Content { size: x.size, blocks: s.blocks_after(e.node, LATEST)? };
        return Ok(Target::Copy { of: e.node, content });
    };
    // The node the base was applied to, while it is a file.
    let (t, tn) = match s.node(loc.node)? {
        Some(n) if n.kind == NodeKind::File => (loc.node, n),
        _ => (e.node, x),
    };
    if shows(&tn) {
        return Ok(Target::Node(t));
    }
    let base_content = Content { size: loc.size, blocks: s.blocks_after(loc.node, loc.key)? };
    if tn.size == base_content.size && s.blocks_after(t, LATEST)? == base_content.blocks {
        return Ok(Target::Node(t));
    }
    Ok(Target::Copy { of: t, content: base_content })
}

/// The file a family of conflict copies was made from (`id` itself for a
/// file that is no copy).
fn family<S: TreeStore>(s: &S, id: NodeId) -> Result<NodeId, S::Error> {
    let mut cur = id;
    for _ in 0..MAX_DEPTH {
        match s.node(cur)?.and_then(|n| n.copy_of) {
            Some(up) if up != cur => cur = up,
            _ => break,
        }
    }
    Ok(cur)
}

/// Makes `e`'s whole version a conflict copy beside `of` (see *Content
/// versions*, rule 3).
fn make_copy<S: TreeStore>(s: &mut S, e: &Event, of: NodeId, base: Content, block_size: u64) -> Result<(), S::Error> {
    let Some(t) = s.node(of)? else { return s.ignored(e, "content change to a node never created") };
    let id = NodeId::conflict_copy(e.id());
    if s.node(id)?.is_some() {
        return s.ignored(e, "a conflict copy of this event exists");
    }
    let content = base.with(&e.change, block_size);
    let mut record = t.clone();
    record.size = content.size;
    record.attrs.mtime = e.time;
    record.attrs.ctime = e.time;
    record.head = Some(ContentHead::of(e));
    record.clock = e.clock.clone();
    record.conflict_of = Some(of);
    record.copy_of = Some(of);
    record.stored = content.blocks.values().map(|b| u64::from(b.len)).sum();
    // Not in the tree until `place_named` puts it there.
    record.removed = true;
    record.removed_by = None;
    s.set_node(id, &record, e)?;
    for (index, block) in &content.blocks {
        s.set_block(id, *index, Some(*block), e)?;
    }
    s.set_version(e, id, content.size)?;
    let kept = t.head.map_or(e.id(), |h| h.event);
    let kept_time = s.version(kept)?.map_or(t.attrs.mtime, |l| l.key.0);
    let parent = usable_parent(s, t.parent, e)?;
    let name = free_conflict_name(s, parent, &t.name, e)?;
    place_named(s, id, parent, &name, e)?;
    if let Some(placed) = s.node(id)? {
        s.copy_made(id, &placed, e)?;
    }
    s.conflict(Conflict {
        kind: ConflictKind::Content { kept, kept_time },
        node: id,
        parent,
        wanted: t.name.clone(),
        given: name,
        winner: of,
        event: (e.machine, e.seq),
        time: e.time,
    })
}

/// Whether `name` can be a directory entry: 1..=255 bytes, no `/` or NUL,
/// not `.` or `..`. Local operations are refused such names; a peer's event
/// that carries one is ignored.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= crate::engine::NAME_MAX
        && name != b"."
        && name != b".."
        && !name.iter().any(|&b| b == b'/' || b == 0)
}

/// Records that `e` changes `id` without having seen every change to it
/// (its clock is concurrent with the node's).
fn record_concurrent<S: TreeStore>(s: &mut S, id: NodeId, node: &NodeRecord, e: &Event) -> Result<(), S::Error> {
    if node.clock.compare(&e.clock) != Causality::Concurrent {
        return Ok(());
    }
    let others = node.clock.entries().iter().filter(|(m, n)| *n > e.clock.get(*m)).map(|(m, _)| *m).collect();
    s.conflict(Conflict {
        kind: ConflictKind::Concurrent { others },
        node: id,
        parent: node.parent,
        wanted: node.name.clone(),
        given: node.name.clone(),
        winner: id,
        event: (e.machine, e.seq),
        time: e.time,
    })
}

/// Whether `e` did not see the removal of `node` (so it brings it back).
fn revives(node: &NodeRecord, e: &Event) -> bool {
    match &node.removed_by {
        Some(rc) => !matches!(rc.compare(&e.clock), Causality::Before | Causality::Equal),
        None => false,
    }
}

/// Brings a removed node back at its last place, and its parents with it.
fn revive<S: TreeStore>(s: &mut S, id: NodeId, e: &Event) -> Result<(), S::Error> {
    let mut chain = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut cur = id;
    for _ in 0..MAX_DEPTH {
        match s.node(cur)? {
            // A node met twice would be a cycle of removed nodes: stop there.
            Some(n) if cur != NodeId::ROOT && n.removed && seen.insert(cur) => {
                chain.push((cur, n.parent, n.name));
                cur = chain.last().map_or(NodeId::ROOT, |c| c.1);
            }
            _ => break,
        }
    }
    for (node, parent, name) in chain.into_iter().rev() {
        let parent = usable_parent(s, parent, e)?;
        place(s, node, parent, &name, e)?;
    }
    Ok(())
}

/// `parent` if it can hold entries (brought back if removed), else the
/// root: a node is never lost.
fn usable_parent<S: TreeStore>(s: &mut S, parent: NodeId, e: &Event) -> Result<NodeId, S::Error> {
    match node_or_root(s, parent)? {
        Some(p) if p.kind == NodeKind::Dir => {
            if p.removed {
                revive(s, parent, e)?;
            }
            Ok(parent)
        }
        _ => Ok(NodeId::ROOT),
    }
}

/// Whether `a` is `b` or one of its ancestors.
fn is_ancestor_or_self<S: TreeStore>(s: &S, a: NodeId, b: NodeId) -> Result<bool, S::Error> {
    let mut cur = b;
    for _ in 0..MAX_DEPTH {
        if cur == a {
            return Ok(true);
        }
        if cur == NodeId::ROOT {
            return Ok(false);
        }
        match s.node(cur)? {
            Some(n) => cur = n.parent,
            None => return Ok(false),
        }
    }
    // Deeper than any real tree: refuse the move rather than risk a cycle.
    Ok(true)
}

/// Takes `id` out of its directory's listing (if it is there).
fn unplace<S: TreeStore>(s: &mut S, id: NodeId, e: &Event) -> Result<(), S::Error> {
    let Some(n) = s.node(id)? else { return Ok(()) };
    if n.removed || s.entry(n.parent, &n.name)? != Some(id) {
        return Ok(());
    }
    set_entry_counted(s, n.parent, &n.name, None, e)?;
    touch(s, n.parent, e)
}

/// Puts `id` at `parent/name`, a name known to be free.
fn place_named<S: TreeStore>(s: &mut S, id: NodeId, parent: NodeId, name: &[u8], e: &Event) -> Result<(), S::Error> {
    let Some(mut n) = s.node(id)? else { return Ok(()) };
    set_entry_counted(s, parent, name, Some((id, n.kind)), e)?;
    n.parent = parent;
    n.name = name.to_vec();
    n.removed = false;
    n.removed_by = None;
    s.set_node(id, &n, e)?;
    touch(s, parent, e)
}

/// Puts `id` at `parent/name`, renaming it if a different live node has it.
fn place<S: TreeStore>(s: &mut S, id: NodeId, parent: NodeId, name: &[u8], e: &Event) -> Result<(), S::Error> {
    let Some(mut n) = s.node(id)? else { return Ok(()) };
    let mut given = name.to_vec();
    if let Some(winner) = s.entry(parent, name)? {
        if winner != id {
            given = free_conflict_name(s, parent, name, e)?;
            s.conflict(Conflict {
                kind: ConflictKind::Name,
                node: id,
                parent,
                wanted: name.to_vec(),
                given: given.clone(),
                winner,
                event: (e.machine, e.seq),
                time: e.time,
            })?;
        }
    }
    set_entry_counted(s, parent, &given, Some((id, n.kind)), e)?;
    n.parent = parent;
    n.name = given;
    n.removed = false;
    n.removed_by = None;
    n.clock = n.clock.join(&e.clock);
    s.set_node(id, &n, e)?;
    touch(s, parent, e)
}

/// [`TreeStore::set_entry`], keeping `dir`'s count of subdirectories
/// ([`NodeRecord::subdirs`]): every entry the merge makes or takes away goes
/// through here, so the count is that of the live directories listed.
fn set_entry_counted<S: TreeStore>(
    s: &mut S,
    dir: NodeId,
    name: &[u8],
    child: Option<(NodeId, NodeKind)>,
    e: &Event,
) -> Result<(), S::Error> {
    let was_dir = match s.entry(dir, name)? {
        Some(old) => s.node(old)?.is_some_and(|n| n.kind == NodeKind::Dir),
        None => false,
    };
    let is_dir = child.is_some_and(|(_, k)| k == NodeKind::Dir);
    s.set_entry(dir, name, child, e)?;
    if was_dir != is_dir {
        if let Some(mut d) = node_or_root(s, dir)? {
            d.subdirs = if is_dir { d.subdirs.saturating_add(1) } else { d.subdirs.saturating_sub(1) };
            s.set_node(dir, &d, e)?;
        }
    }
    Ok(())
}

/// Drops the blocks of `node` past the end of `record` (its new size),
/// and their bytes from its `stored` count.
fn cut_past<S: TreeStore>(
    s: &mut S,
    node: NodeId,
    record: &mut NodeRecord,
    block_size: u64,
    e: &Event,
) -> Result<(), S::Error> {
    let gone = s.clear_blocks_from(node, tree::block_count(record.size, block_size), e)?;
    record.stored = record.stored.saturating_sub(gone);
    Ok(())
}

/// `stored` bytes after a block `old` was replaced by `new`.
fn restored(stored: u64, old: Option<BlockRef>, new: Option<BlockRef>) -> u64 {
    let len = |b: Option<BlockRef>| b.map_or(0, |b| u64::from(b.len));
    stored.saturating_sub(len(old)).saturating_add(len(new))
}

/// A directory's mtime and ctime follow changes to its listing.
fn touch<S: TreeStore>(s: &mut S, dir: NodeId, e: &Event) -> Result<(), S::Error> {
    if let Some(mut n) = node_or_root(s, dir)? {
        if n.kind == NodeKind::Dir {
            tree::touch_dir(&mut n, e.time);
            s.set_node(dir, &n, e)?;
        }
    }
    Ok(())
}

/// `stem (conflict from <machine> <yyyy-mm-dd>).ext`, with ` 2`, ` 3`, ...
/// inside the parentheses if that is taken too.
fn free_conflict_name<S: TreeStore>(s: &S, parent: NodeId, name: &[u8], e: &Event) -> Result<Vec<u8>, S::Error> {
    let (stem, ext) = match name.iter().rposition(|&b| b == b'.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, &b""[..]),
    };
    let (y, mo, d) = civil_date(e.time);
    let mut n = 1u64;
    loop {
        let tag = if n == 1 { String::new() } else { format!(" {n}") };
        let suffix = format!(" (conflict from {} {y:04}-{mo:02}-{d:02}{tag})", e.machine);
        // Names are at most 255 bytes: keep the suffix, shorten the stem.
        let room = crate::engine::NAME_MAX.saturating_sub(suffix.len() + ext.len());
        let mut out = stem[..stem.len().min(room)].to_vec();
        out.extend_from_slice(suffix.as_bytes());
        out.extend_from_slice(ext);
        if s.entry(parent, &out)?.is_none() {
            return Ok(out);
        }
        n += 1;
    }
}
