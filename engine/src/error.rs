//! The engine's errors. Each says what failed and where (file, offset, id),
//! so a user can act on it; `Fs` errors are the POSIX conditions that the
//! FUSE adapter maps to errno in one place.
//!
//! An error that wraps a typed cause from another layer keeps it as its
//! [`source`](std::error::Error::source) (a [`RecordError`], a remote's
//! failure), so callers can match on it; its message also ends with the
//! cause's, so a bare `{}` says everything. Printers that walk the source
//! chain skip a cause whose message is already printed (the CLI does).

use std::path::PathBuf;

use crate::ids::{BlockHash, NodeId};
use crate::index::IndexError;
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
