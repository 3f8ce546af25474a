//! syncer's storage engine: the event log, the blob store, the redb index and
//! the tree materialized from them. It knows nothing of FUSE or rsync.
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
pub mod cache;
pub mod calendar;
pub mod clock;
pub mod config;
pub mod conflicts;
pub mod engine;
pub mod error;
pub mod event;
pub mod faults;
pub mod format;
pub mod history;
pub mod ids;
pub mod index;
pub mod log;
pub mod merge;
pub mod record;
pub mod storage;
pub mod tree;
pub mod verify;

pub use engine::{Engine, NodeState, RenameFlags, Renamed, Stats, XattrMode};
pub use error::{Error, FsError, Result};
pub use index::DirEntry;
