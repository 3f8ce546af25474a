//! Events: one mutation of one node. The log is a sequence of these, and the
//! tree is their fold (see `tree`).
//!
//! Always true:
//! - `seq` is the machine's own event counter: 1 for its first event, then
//!   +1 per event, across all its segments. `(machine, seq)` names an event
//!   uniquely in every replica.
//! - `time` never goes backwards within one machine's log (the writer takes
//!   `max(now, previous + 1ns)`), so one machine's log is in time order, and
//!   it is above the time of every event the writer had seen from any
//!   machine (a hybrid logical clock): ordering events by `(time, machine,
//!   seq)` puts every event after everything it could have depended on.
//! - `clock` is the node's vector clock *after* this change: the writer ticks
//!   its own entry on top of the clock of the node state it changed.
//! - A content change lists only the blocks it changed: a 4 KiB write into a
//!   10 GiB file records one block reference, never the whole block list.
//! - A content change (`Content`, `Truncate`) names in `base` the content
//!   version it was made on: the event that made the content its writer saw
//!   under that node (a file's `Create` is its first version). The merge
//!   applies it on top of exactly that version, so a file's content is
//!   always one writer's version (see `merge`). Other changes have no base.
//!
//! Version history of the payload (the framing is in `record`):
//! - v1: `time` was whole seconds (`time_secs`). Read by [`EventV1`] and
//!   upgraded on read by multiplying by 10^9; never written again.
//! - v2: `time` in nanoseconds. Read by [`EventV2`] and upgraded on read with
//!   no `base` (the merge applies such a change to the node as it finds it,
//!   as syncer 1.1 did); never written again.
//! - v3 (current): `base` added; [`Change::Resolve`] added (a new last
//!   variant: the archived layout of the others is unchanged).

use crate::clock::VectorClock;
use crate::ids::{BlockHash, EventId, MachineId, NodeId, Timestamp};

/// What kind of node.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum NodeKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
}

/// A node's attributes. `mode` holds permission bits only (`0o7777`); the
/// file type is [`NodeKind`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Attrs {
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number for char/block devices, else 0.
    pub rdev: u32,
    /// BSD/macOS file flags.
    pub flags: u32,
    /// Last access.
    pub atime: Timestamp,
    /// Last content change.
    pub mtime: Timestamp,
    /// Last status change.
    pub ctime: Timestamp,
    /// Creation.
    pub crtime: Timestamp,
    /// Last backup (macOS `getxtimes`).
    pub bkuptime: Timestamp,
}

/// A change of some attributes; `None` leaves a field alone.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct AttrChange {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New flags.
    pub flags: Option<u32>,
    /// New access time.
    pub atime: Option<Timestamp>,
    /// New modification time.
    pub mtime: Option<Timestamp>,
    /// New creation time.
    pub crtime: Option<Timestamp>,
    /// New backup time.
    pub bkuptime: Option<Timestamp>,
}

/// One stored block: its content address and uncompressed length.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct BlockRef {
    /// blake3 of the uncompressed bytes.
    pub hash: BlockHash,
    /// Uncompressed length (at most the data dir's block size).
    pub len: u32,
}

/// Block `index` of a file now holds `block`; `None` is a hole (zeros, nothing stored).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct BlockChange {
    /// Block number (byte offset / block size).
    pub index: u64,
    /// New content of that block.
    pub block: Option<BlockRef>,
}

pub use change::{ArchivedChange, Change, ChangeResolver};

// rkyv's derive gives the variants of `ChangeResolver` fields without docs,
// which `missing_docs` cannot be told to skip item by item; every item here
// is documented by hand.
#[allow(missing_docs)]
mod change {
    use super::{AttrChange, Attrs, BlockChange, NodeId, NodeKind};

    /// The mutation an event records.
    #[derive(Clone, PartialEq, Eq, Hash, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    #[rkyv(derive(Debug))]
    pub enum Change {
        /// A new node named `name` in directory `parent`.
        Create {
            /// Directory it is created in.
            parent: NodeId,
            /// Its name there (no `/`, no NUL, 1..=255 bytes).
            name: Vec<u8>,
            /// What it is.
            kind: NodeKind,
            /// Initial attributes.
            attrs: Attrs,
            /// Symlink target (empty for other kinds).
            target: Vec<u8>,
        },
        /// Some attributes changed.
        SetAttrs(AttrChange),
        /// A write: the file is now `size` bytes and the listed blocks changed.
        Content {
            /// File size after the write.
            size: u64,
            /// Blocks that changed.
            blocks: Vec<BlockChange>,
        },
        /// A truncate to `size`: blocks wholly past `size` are gone, and `tail`,
        /// if given, is the new content of the block that `size` cuts through.
        Truncate {
            /// New size.
            size: u64,
            /// New content of the partial last block.
            tail: Option<BlockChange>,
        },
        /// Moved or renamed: now `name` in `parent`.
        Move {
            /// New parent directory.
            parent: NodeId,
            /// New name.
            name: Vec<u8>,
        },
        /// Removed from the tree (its history stays).
        Remove,
        /// Extended attribute set.
        SetXattr {
            /// Attribute name.
            name: Vec<u8>,
            /// Attribute value.
            value: Vec<u8>,
        },
        /// Extended attribute removed.
        RemoveXattr {
            /// Attribute name.
            name: Vec<u8>,
        },
        /// Symlink target replaced.
        SetTarget {
            /// New target.
            target: Vec<u8>,
        },
        /// The volume name (recorded on the root; macOS `setvolname`).
        SetVolname {
            /// New volume name.
            name: Vec<u8>,
        },
        /// The node is pinned (kept local) or unpinned.
        SetPinned {
            /// Pinned or not.
            pinned: bool,
        },
        /// The node and `with` swap places (renameat2 `RENAME_EXCHANGE`): one
        /// event, because two moves would each land on a name the other holds.
        Exchange {
            /// The other node.
            with: NodeId,
        },
        /// A conflict copy is accepted as an ordinary file: it is no longer
        /// listed as a conflict (`syncer resolve --keep both`).
        Resolve,
    }
}

impl Change {
    /// A short lowercase name for the kind of change (`log inspect --kind`).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Change::Create { .. } => "create",
            Change::SetAttrs(_) => "attrs",
            Change::Content { .. } => "write",
            Change::Truncate { .. } => "truncate",
            Change::Move { .. } => "move",
            Change::Remove => "remove",
            Change::SetXattr { .. } => "setxattr",
            Change::RemoveXattr { .. } => "removexattr",
            Change::SetTarget { .. } => "symlink",
            Change::SetVolname { .. } => "volname",
            Change::SetPinned { .. } => "pin",
            Change::Exchange { .. } => "exchange",
            Change::Resolve => "resolve",
        }
    }

    /// Every block this change references (what must be on a remote before
    /// the event may be).
    pub fn blocks(&self) -> impl Iterator<Item = &BlockRef> {
        let (list, tail): (&[BlockChange], Option<&BlockChange>) = match self {
            Change::Content { blocks, .. } => (blocks.as_slice(), None),
            Change::Truncate { tail, .. } => (&[], tail.as_ref()),
            _ => (&[], None),
        };
        list.iter().chain(tail).filter_map(|c| c.block.as_ref())
    }

    /// Whether it makes a new content version of a file (and so carries a
    /// base).
    pub fn is_content(&self) -> bool {
        matches!(self, Change::Content { .. } | Change::Truncate { .. })
    }
}

/// One mutation of one node (current layout, record version 3).
#[derive(Clone, PartialEq, Eq, Hash, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct Event {
    /// The node changed.
    pub node: NodeId,
    /// The machine that made the change.
    pub machine: MachineId,
    /// That machine's event counter (see module docs).
    pub seq: u64,
    /// Wall-clock time of the change.
    pub time: Timestamp,
    /// The node's vector clock after the change.
    pub clock: VectorClock,
    /// What changed.
    pub change: Change,
    /// For a content change: the content version it was made on (see the
    /// module docs); `None` for other changes and for changes read from
    /// version 2 records.
    pub base: Option<EventId>,
}

impl Event {
    /// Its name in every replica.
    pub fn id(&self) -> EventId {
        EventId { machine: self.machine, seq: self.seq }
    }
}

/// Record version 2 of an event: no `base`. Read only.
#[derive(Clone, PartialEq, Eq, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct EventV2 {
    /// As [`Event::node`].
    pub node: NodeId,
    /// As [`Event::machine`].
    pub machine: MachineId,
    /// As [`Event::seq`].
    pub seq: u64,
    /// As [`Event::time`].
    pub time: Timestamp,
    /// As [`Event::clock`].
    pub clock: VectorClock,
    /// As [`Event::change`].
    pub change: Change,
}

impl From<EventV2> for Event {
    fn from(v2: EventV2) -> Self {
        Event {
            node: v2.node,
            machine: v2.machine,
            seq: v2.seq,
            time: v2.time,
            clock: v2.clock,
            change: v2.change,
            base: None,
        }
    }
}

/// Record version 1 of an event: `time` in whole seconds. Read only.
#[derive(Clone, PartialEq, Eq, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct EventV1 {
    /// As [`Event::node`].
    pub node: NodeId,
    /// As [`Event::machine`].
    pub machine: MachineId,
    /// As [`Event::seq`].
    pub seq: u64,
    /// Seconds since the Unix epoch.
    pub time_secs: i64,
    /// As [`Event::clock`].
    pub clock: VectorClock,
    /// As [`Event::change`].
    pub change: Change,
}

impl From<EventV1> for Event {
    fn from(v1: EventV1) -> Self {
        let time = Timestamp::from_secs_nanos(v1.time_secs, 0);
        EventV2 { node: v1.node, machine: v1.machine, seq: v1.seq, time, clock: v1.clock, change: v1.change }.into()
    }
}
