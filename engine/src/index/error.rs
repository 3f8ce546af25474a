//! What went wrong in the index. [`Error::Index`](crate::error::Error::Index)
//! names the file and carries one of these as its source; a failure of redb
//! keeps redb's own error (and through it the OS error, so that a full or
//! read-only disk reaches the caller as ENOSPC or EROFS, never as EIO).

use std::path::Path;

use crate::error::Error;

/// Why an index operation failed (the file is named by [`Error::Index`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// redb failed `op` (an I/O error, a damaged file, a table stored with
    /// other types, an I/O error earlier on the same handle, ...).
    #[error("{op}: {source}")]
    Redb {
        /// What was being done, and on which table ("read `dirents`").
        op: &'static str,
        /// redb's error (boxed: it is large, and every engine result
        /// carries room for it).
        #[source]
        source: Box<redb::Error>,
    },
    /// A stored value does not decode: the index is damaged (it is derived
    /// from the log; `syncer index rebuild` makes it again).
    #[error("table `{table}`: {what}")]
    Corrupt {
        /// The table the value is in.
        table: &'static str,
        /// Which value, and what is wrong with it.
        what: String,
    },
    /// The file is open read-only; writing or reopening it is refused.
    #[error("open read-only")]
    ReadOnly,
    /// The file is closed: reopening it after a failure failed.
    #[error("closed (reopening it after a failure failed)")]
    Closed,
    /// A read-only reopen found the writable handle still shared.
    #[error("still in use by a writer; cannot reopen it read-only")]
    InUse,
    /// A group committed in the background failed (`why`) and its changes
    /// are not yet applied again from the log.
    #[error("a group committed in the background failed ({why}) and is not yet applied again")]
    BackgroundFailed {
        /// Why that commit failed.
        why: String,
    },
    /// This writer's caches claim the changes of a group before it that
    /// failed to commit.
    #[error("the group before this one failed to commit: {why}")]
    GroupBeforeFailed {
        /// Why that commit failed.
        why: String,
    },
    /// Another commit came between a group committed in the background
    /// and the writer after it: that writer's caches may be stale.
    #[error("another commit came between the group before this one and this writer")]
    CommitBetween,
    /// Clearing the index failed halfway and took the transaction with it.
    #[error("the write transaction was lost by a failed clear")]
    TransactionLost,
    /// Writing buffered changes out failed earlier in this transaction,
    /// which therefore never commits.
    #[error("writing buffered index changes failed earlier in this transaction")]
    FlushFailed,
    /// No thread could be started to commit a group in the background.
    #[error("cannot start the commit thread: {source}")]
    NoThread {
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Index work was lost (`why`), and applying it again from the log failed.
    #[error("behind the log after {why}, and catching up failed: {source}")]
    Behind {
        /// How the index work was lost.
        why: String,
        /// Why catching up failed.
        #[source]
        source: Box<Error>,
    },
}

impl IndexError {
    /// An [`IndexError::Redb`].
    pub fn redb(op: &'static str, source: impl Into<redb::Error>) -> Self {
        IndexError::Redb { op, source: Box::new(source.into()) }
    }

    /// This error on the index at `path`.
    pub fn at(self, path: &Path) -> Error {
        Error::Index { path: path.to_path_buf(), source: self }
    }

    /// The OS error number, when an I/O call failed in redb (ENOSPC,
    /// EROFS, EIO, ...).
    pub fn os_error(&self) -> Option<i32> {
        match self {
            IndexError::Redb { source, .. } => match &**source {
                redb::Error::Io(e) => e.raw_os_error(),
                _ => None,
            },
            _ => None,
        }
    }
}

/// `e`, a failure of redb doing `op`, on the index at `path`.
pub(super) fn ix(path: &Path, op: &'static str, e: impl Into<redb::Error>) -> Error {
    IndexError::redb(op, e).at(path)
}
