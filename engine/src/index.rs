//! The redb index over the log and the blobs. It is derived data: every table
//! is a function of the log, written only by [`IndexWriter::apply`], so
//! deleting `index.redb` and replaying the log gives the same index
//! (`syncer index rebuild`). Its tables, counters, value layouts and
//! version are documented in `schema` (engine/src/index/schema.rs).
//!
//! Always true after a commit: `applied[m]` names the last record of machine
//! `m`'s log whose event (and every one before it) is reflected in every
//! other table; catching up resumes there and skips that record. Commits are
//! non-durable except every few seconds and at close (and a writer keeps
//! one transaction open for a group of changes): after a crash the index
//! may lag the log, and [`IndexWriter::applied`] says where to resume.
//!
//! An [`IndexWriter`] caches, for the life of its transaction, the node
//! records, directory entries and `meta` counters it reads or writes, and
//! each node's count of events since its last checkpoint. It writes
//! `nodes`, `meta`, `dirents`, `history`, `dirent_history`, `events`,
//! `versions` and `applied` at commit, in key order (opening a redb table
//! costs more than the insert, and one event writes five of them); a query
//! of one of those tables in the transaction first writes what is buffered
//! for it, and the lookups that skip that go through caches that hold every
//! buffered key. It holds `nodes`, `dirents`, `history` and `meta` open for
//! the life of its transaction; a reader opens each of those on its first
//! query and holds it.
//!
//! A writer's caches outlive its transaction: a successful commit hands
//! them to the next writer, and a group committed in the background
//! ([`Index::commit_in_background`]) hands them to the writer of the next
//! group at once, which begins its own transaction only when it needs one,
//! after that commit. Until then it reads what its caches miss from a
//! snapshot. Always true: a writer's caches hold every key written by a
//! group still committing (they are never emptied without the transaction
//! begun, which waits for that commit), so a snapshot from before or after
//! that commit answers the same for every key they miss. At most one group
//! commits in the background; a writer after one that failed, or after one
//! that another commit followed before it (its caches may be stale),
//! cannot begin its transaction or commit, and a failure stays until the
//! engine takes it ([`Index::take_failure`]) to apply those changes again
//! from the log.
//!
//! Point-in-time queries (`*_at`) read the history tables up to a time; they
//! cost a scan of the history of the one node, name or directory asked
//! about, never a replay of the whole log. A node's state at a time is its
//! latest checkpoint before it plus the fold of its few events since, never
//! more than [`CHECKPOINT_EVERY`] of them.
//!
//! A content change is in the `history` of the node it was applied to,
//! which for a change routed to a conflict copy is not the node it names
//! (see `merge`, *Content versions*); a conflict copy has a checkpoint at
//! the event that made it, since no create event of its own does.
//!
//! Every query is written once, in `read`, over redb's `ReadableTable`;
//! [`IndexReader`] (a snapshot) and [`IndexWriter`] (a transaction) call
//! it. Every failure is an [`Error::Index`](crate::error::Error::Index)
//! naming the file, with an [`IndexError`] (and through it redb's error)
//! as its source.
//!
//! The files: `schema` (layout and opening), `handle` ([`Index`]),
//! `read` (the queries), `reader` ([`IndexReader`], [`IndexView`]),
//! `writer` ([`IndexWriter`]: transaction, caches, buffer), `write`
//! (applying events), `background` (groups committed in the background),
//! `error` (redb failures as [`IndexError`]s, a type defined in `crate::error`).

mod background;
mod error;
mod handle;
pub(crate) mod pipeline;
mod read;
mod reader;
mod schema;
#[cfg(test)]
mod tests;
mod write;
mod writer;

pub(crate) use crate::error::IndexError;
pub(crate) use handle::Index;
pub use read::Queries;
pub use reader::{IndexReader, IndexView};
pub(crate) use schema::{builder, INDEX_VERSION};
pub(crate) use writer::IndexWriter;

use crate::event::NodeKind;
use crate::ids::{LogPos, NodeId, Timestamp};

/// The writer's caches are asked several times per event: a fast hash
/// (seeded per process, so names from peers cannot be chosen to collide).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Counters kept by the index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Live nodes, the root not included (`Engine::stats` counts it).
    pub nodes: u64,
    /// Live regular files.
    pub files: u64,
    /// Live directories (root included).
    pub dirs: u64,
    /// Sum of live files' sizes.
    pub logical_bytes: u64,
    /// Distinct blocks ever referenced.
    pub blocks: u64,
    /// Their uncompressed bytes.
    pub block_bytes: u64,
    /// Events applied.
    pub events: u64,
    /// Events that did not fit the state they landed on (see `tree`).
    pub ignored_events: u64,
}

/// One directory entry.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DirEntry {
    /// Entry name.
    pub name: Vec<u8>,
    /// The node it names.
    pub node: NodeId,
    /// That node's kind.
    pub kind: NodeKind,
}

/// Where an event is in the log, as the `events` table knows it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EventLocation {
    /// Record position.
    pub pos: LogPos,
    /// Event time.
    pub time: Timestamp,
    /// Node changed.
    pub node: NodeId,
}
