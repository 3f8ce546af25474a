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

use crate::event::{BlockChange, BlockRef, Change, Event, NodeKind};
use crate::ids::{EventId, MachineId, NodeId, Timestamp};
use crate::tree::{self, NodeRecord};

/// An event's place in the merge order: `(time, machine, seq)`.
pub(crate) type OrderKey = (Timestamp, MachineId, u64);

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

/// The sort key of an event in the merge order.
pub(crate) fn order_key(e: &Event) -> OrderKey {
    (e.time, e.machine, e.seq)
}

mod memory;
mod step;

pub use memory::{merge, Merged, MergedNode};
pub use step::{step, valid_name};
