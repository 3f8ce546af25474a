//! The engine's errors. Each says what failed and where (file, offset, id),
//! so a user can act on it; `Fs` errors are the POSIX conditions that the
//! FUSE adapter maps to errno in one place.
//!
//! An error that wraps a typed cause from another layer keeps it as its
//! [`source`](std::error::Error::source) (a [`RecordError`], a remote's
//! failure), so callers can match on it; its message also ends with the
//! cause's, so a bare `{}` says everything. Printers that walk the source
//! chain skip a cause whose message is already printed (the CLI does).

use std::path::{Path, PathBuf};

use crate::ids::{BlockHash, NodeId};
use crate::record::RecordError;

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A POSIX-level refusal of a tree operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// No such node or name (ENOENT).
    #[error("no such file or directory")]
    NotFound,
    /// The name is taken (EEXIST).
    #[error("file exists")]
    Exists,
    /// A directory was needed (ENOTDIR).
    #[error("not a directory")]
    NotDir,
    /// A non-directory was needed (EISDIR).
    #[error("is a directory")]
    IsDir,
    /// The directory has entries (ENOTEMPTY).
    #[error("directory not empty")]
    NotEmpty,
    /// The name is empty, `.`, `..`, or has `/` or NUL (EINVAL).
    #[error("invalid name")]
    InvalidName,
    /// The name is longer than 255 bytes (ENAMETOOLONG).
    #[error("name too long")]
    NameTooLong,
    /// A directory would be moved into itself (EINVAL).
    #[error("a directory cannot be moved into itself")]
    MoveIntoSelf,
    /// The view is read-only, e.g. a point-in-time mount (EROFS).
    #[error("read-only view")]
    ReadOnly,
    /// Hardlinks are refused by design (EPERM).
    #[error("operation not permitted")]
    NotPermitted,
    /// An argument is out of range (EINVAL).
    #[error("invalid argument")]
    Invalid,
    /// An xattr was missing (ENODATA).
    #[error("no such attribute")]
    NoAttr,
    /// The operation does not apply to this node (e.g. readlink on a file).
    #[error("not supported for this node")]
    WrongKind,
}

/// Every failure of the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O call failed on `path`.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("read", "append", ...).
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The `FORMAT` file is missing or garbled.
    #[error("{path}: {reason}")]
    BadFormatFile {
        /// The FORMAT file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The data dir was written by a newer syncer.
    #[error("{path}: data dir format {found} is newer than this syncer supports ({supported}); upgrade syncer")]
    NewerFormat {
        /// The FORMAT file.
        path: PathBuf,
        /// Version found.
        found: String,
        /// Newest version this build reads.
        supported: String,
    },
    /// `config.toml` is missing, garbled or out of range.
    #[error("{path}: {reason}")]
    BadConfig {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A log record is damaged (not a torn tail: those are cut off on open).
    #[error("{path} at byte {offset}: {reason}")]
    CorruptRecord {
        /// The segment file.
        path: PathBuf,
        /// Offset of the damaged record's frame.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A log record's frame does not decode (header, checksum or payload)
    /// and it is not a torn tail (those are cut off on open).
    #[error("{path} at byte {offset}: {source}{context}")]
    Record {
        /// The segment file.
        path: PathBuf,
        /// Offset of the damaged record's frame.
        offset: u64,
        /// What the frame decoder found.
        #[source]
        source: RecordError,
        /// Why it is damage and not a torn tail, when that needs saying
        /// (empty, or starting with a separator: `; more data follows ...`).
        context: String,
    },
    /// A segment file's header is damaged or does not belong where it is.
    #[error("{path}: {reason}")]
    BadSegment {
        /// The segment file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A stored blob is damaged: bad header, bad codec, or hash mismatch.
    #[error("blob {hash} ({path}): {reason}")]
    CorruptBlob {
        /// The blob's address.
        hash: BlockHash,
        /// Its file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A blob is referenced but not stored locally.
    #[error("blob {0} is not stored locally")]
    MissingBlob(BlockHash),
    /// The redb index failed.
    #[error("index {path}: {source}")]
    Index {
        /// The index file.
        path: PathBuf,
        /// What failed (redb's own error, when redb failed).
        #[source]
        source: IndexError,
    },
    /// Another process holds the data dir's writer lock.
    #[error("{path}: data dir is in use by another syncer process ({reason})")]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// Details.
        reason: String,
    },
    /// A tree operation is refused with a POSIX condition.
    #[error("{node}: {err}")]
    Fs {
        /// The node (or parent) the operation was on.
        node: NodeId,
        /// The condition.
        err: FsError,
    },
    /// The remote that holds blocks not stored locally did not deliver them:
    /// unreachable, too slow, or failing. Local data is untouched.
    #[error("{what}: {source}")]
    RemoteUnavailable {
        /// What was being fetched.
        what: String,
        /// The transport's own error (for rsync, a `RemoteError`).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A caller passed an invalid argument (e.g. an unknown log position).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// The OS error number behind this error, when the OS refused an I/O
    /// call (ENOSPC, EDQUOT, EROFS, EIO, ...).
    pub fn os_error(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            Error::Index { source, .. } => source.os_error(),
            _ => None,
        }
    }

    /// Shorthand for an [`Error::Io`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { op, path: path.into(), source }
    }

    /// Shorthand for an [`Error::Fs`].
    pub fn fs(node: NodeId, err: FsError) -> Self {
        Error::Fs { node, err }
    }

    /// The POSIX condition, if this is one.
    pub fn fs_error(&self) -> Option<FsError> {
        match self {
            Error::Fs { err, .. } => Some(*err),
            _ => None,
        }
    }
}

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
