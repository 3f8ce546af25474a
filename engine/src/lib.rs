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

pub mod blob;
mod cache;
mod calendar;
mod catchup;
pub mod clock;
pub mod config;
pub mod conflicts;
pub mod error;
pub mod event;
pub mod evict;
pub mod faults;
pub mod format;
pub mod history;
pub mod ids;
mod index;
mod limits;
mod live;
pub mod log;
pub mod merge;
mod past;
mod read;
pub mod record;
mod state;
pub mod storage;
mod store;
pub mod tree;
pub mod verify;

pub use cache::{BlockSource, Cache};
pub use calendar::civil_date;
pub use error::IndexError;
pub use error::{Error, FsError, Result};
pub use index::{Counts, DirEntry, IndexReader, IndexView};
pub use limits::{NAME_MAX, XATTR_VALUE_MAX};
pub use live::{LiveTree, RoomMaker, SHARE_BATCH, ZERO_RANGE_BATCH};
pub use past::{PastView, NODE_CACHE_BYTES};
pub use read::TreeRead;
pub use state::{ImportReport, NodeState, OpenReport, RenameFlags, Renamed, Stats, TreeEntry, XattrMode};
pub use store::{Layout, Store};
