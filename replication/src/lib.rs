//! syncer's remote: an rsync destination (a local path or `[user@]host:path`
//! over ssh) shared by every machine of a collection.
//!
//! # Remote layout
//!
//! ```text
//! <remote>/
//!   config.toml                 the first machine's config (clone takes block
//!                               size, hash size and codec settings from it)
//!   blobs/<2 hex>/<full hex>    blocks, in the local blob file format
//!   log/<machine>/<n>.seg       each machine's log segments, byte for byte
//! ```
//!
//! Always true:
//! - push order: a log record reaches the remote only after every block it
//!   references is there (see [`push`]); so no machine ever reads an event
//!   whose content is missing on the remote;
//! - segments travel with `rsync --append` (pushes use `--append-verify`,
//!   after checking the remote's lengths of our segments: see [`push`]; only
//!   new bytes move; sealed segments never change); blocks many per rsync
//!   invocation;
//! - every fetched block is verified against its hash by the engine before
//!   use; a wrong block is an error naming the blob, never data;
//! - every rsync run has an I/O timeout, and fetches a hard deadline after
//!   which rsync (and its ssh) are killed: an unreachable remote gives an
//!   error in bounded time, never a hang;
//! - rsync never writes temp files into a local `log/<machine>/` folder:
//!   peers' segments are pulled with `--append` (in place).
//!
//! The rsync binary is `$SYNCER_RSYNC` (default `rsync`), the ssh command
//! `$SYNCER_SSH` (default `ssh`), so tests can inject failures and point ssh
//! at their own sshd.
//!
//! How this crate fits with the others, and the rules every change keeps:
//! `docs/DESIGN.md` at the repository root.

pub mod daemon;
pub mod fetch;
pub mod pull;
pub mod push;
pub mod remote;
pub mod status;

pub use daemon::{Daemon, DaemonOptions};
pub use fetch::RemoteSource;
pub use push::{push, PushReport};
pub use remote::{Remote, Rsync};

use std::path::PathBuf;

/// What went wrong talking to the remote.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The remote string is not usable.
    #[error("remote {remote:?}: {reason}")]
    BadRemote {
        /// As given.
        remote: String,
        /// Why.
        reason: String,
    },
    /// rsync could not be started.
    #[error("starting {program:?}: {source} (apt-get install rsync)")]
    Spawn {
        /// The binary.
        program: String,
        /// The error.
        source: std::io::Error,
    },
    /// rsync failed.
    #[error("remote {remote}: {what}: rsync exited with {status}: {stderr}")]
    Rsync {
        /// The remote.
        remote: String,
        /// What was being done.
        what: String,
        /// Exit status.
        status: String,
        /// rsync's last words.
        stderr: String,
    },
    /// rsync did not finish in time and was killed.
    #[error("remote {remote}: {what}: no answer within {secs} s; rsync killed (remote unreachable or too slow)")]
    Timeout {
        /// The remote.
        remote: String,
        /// What was being done.
        what: String,
        /// The deadline.
        secs: u64,
    },
    /// A local file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A local state file is damaged.
    #[error("{path}: {reason}")]
    BadState {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Our own log segment on the remote holds more bytes than we have
    /// pushed: junk was appended to it, or another machine uses our machine
    /// id. Nothing of our log was sent; the remote file is left as it is.
    #[error(
        "remote {remote}: our log segment {path} is {remote_len} bytes there but only {local_len} bytes here: \
         junk was appended to it on the remote, or another machine uses our machine id {machine} (a copied or \
         restored data dir); not pushing our log over it. Remove the extra bytes (or the file) on the remote \
         if it is junk; give the other data dir a new machine id if it is not"
    )]
    RemoteSegmentLonger {
        /// The remote.
        remote: String,
        /// The segment, as rsync names it on the remote.
        path: String,
        /// Our machine id.
        machine: engine::ids::MachineId,
        /// Its length on the remote.
        remote_len: u64,
        /// Its length in our log, up to the point being pushed.
        local_len: u64,
    },
    /// rsync printed something we could not read.
    #[error("remote {remote}: {what}: cannot read rsync's output line {line:?}: {reason}")]
    BadOutput {
        /// The remote.
        remote: String,
        /// What was being done.
        what: String,
        /// The line.
        line: String,
        /// Why.
        reason: String,
    },
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] engine::Error),
}

impl RemoteError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RemoteError {
        let path = path.into();
        move |source| RemoteError::Io { op, path, source }
    }
}

/// Result with [`RemoteError`].
pub type Result<T, E = RemoteError> = std::result::Result<T, E>;
