//! syncer's storage engine: the event log, the blob store, the redb index and
//! the tree materialized from them. It knows nothing of FUSE or rsync.
//!
//! The parts: a [`Store`] (layout, config, storage, blobs, locks) shared by
//! the [`LiveTree`] (the writer, its group commits and imports) and a
//! [`PastView`] (a read-only view at a past time, over the history index);
//! both implement [`TreeRead`], the reads the mount and the tools use.
//!
//! Always true (see `docs/DESIGN.md` at the repository root for the rules
//! behind these):
//! - the log is the truth: node state exists only as events; the index is
//!   derived and can be rebuilt from the log;
//! - durable I/O goes through [`storage::Storage`], so crash tests can drop
//!   unsynced writes;
//! - every on-disk format carries magic bytes with its version inside, and is
//!   documented beside its code.

// The public surface, by what other crates use it for. Everything else is
// private; `tests/module_graph.rs` checks that no two modules import each
// other, directly or round a cycle.
//
// The trees: opened by the mount and the CLI.
mod live;
mod past;
mod read;
mod state;
mod store;
pub use live::{LiveTree, RoomMaker, SHARE_BATCH, ZERO_RANGE_BATCH};
pub use past::{HistoryKeeper, PastView, HISTORY_REFRESH_EVERY, NODE_CACHE_BYTES};
pub use read::TreeRead;
pub use state::{ImportReport, NodeState, OpenReport, RenameFlags, Renamed, Stats, TreeEntry, XattrMode};
pub use store::{Layout, Store};

// The vocabulary every caller speaks: ids, events, clocks, errors, limits.
pub mod clock;
pub mod error;
pub mod event;
pub mod ids;
mod limits;
pub use error::{Error, FsError, IndexError, Result};
pub use limits::{NAME_MAX, XATTR_VALUE_MAX};

// On-disk formats, each documented beside its code, with the decoders the
// fuzz targets drive: blobs, records, log segments, the FORMAT file and
// config.toml.
pub mod blob;
pub mod config;
pub mod format;
pub mod log;
pub mod record;

// Pure logic, apart from I/O so that property tests and fuzzers drive it:
// the fold of one node's events and the merge of many machines' events.
pub mod merge;
pub mod tree;

// The entry points replication ships and imports through: our events
// since a position, our segment files, blob files, and the record of which
// blocks are on the remote.
pub mod replication;
pub use replication::{Replication, SegmentFile};

// Policies and tools above the trees: eviction (the mount's daemon and
// `syncer evict`), conflicts and their resolution, and the entry points of
// the forensic reads (`syncer log inspect`/`graph`/`verify`, `history`,
// `restore`) over the private history and verify modules.
pub mod conflicts;
pub mod evict;
pub mod forensics;
mod history;
mod verify;

// Durable I/O behind a trait, and a fault-injecting implementation of it
// for the crash and full-disk tests.
pub mod faults;
pub mod storage;

// Internals.
mod cache;
mod calendar;
mod catchup;
mod index;
pub use cache::{BlockSource, Cache, CacheCounts, LruEntry, Recount};
pub use calendar::civil_date;
#[doc(hidden)]
pub use catchup::set_chunk as set_catch_up_chunk;
pub use index::{Counts, DirEntry, IndexReader, IndexView, PinQueries, Queries};
