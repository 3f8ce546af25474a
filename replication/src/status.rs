//! What the replication daemon reports: remote health and `status.toml`.
//!
//! # `<data>/status.toml` (version 1)
//!
//! Written (temp file + rename) by a mounted data dir's daemon after every
//! push, eviction pass, and pull of peers' changes (or failed look for
//! them), so `syncer status` can show it while the mount holds the data
//! dir. TOML with these keys (all but `version` and `updated` optional):
//!
//! ```text
//! version         = 1           newer: refused by `syncer status`
//! updated         = <unix s>    when it was written
//! remote          = "<remote>"
//! reachable       = bool        outcome of the last talk with the remote
//! last_error      = "<text>"    the last failure (cleared by a success)
//! last_push       = <unix s>    the last successful push
//! pending_blocks  = n           blocks not yet on the remote
//! pending_bytes   = n           their stored bytes
//! local_bytes     = n           bytes of the local blob store
//! cache_limit     = n           the configured limit
//! over_limit      = bool        unpushed and pinned blocks alone exceed it
//! pins            = ["/path"]   pinned nodes
//! rsync_runs      = n           rsync runs started by this mount so far
//! ```

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{RemoteError, Result};

/// Version of `status.toml` this build writes.
pub const STATUS_VERSION: u32 = 1;

/// Unix seconds now.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The contents of `status.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusFile {
    /// Format version.
    pub version: u32,
    /// When written.
    pub updated: u64,
    /// The remote.
    pub remote: Option<String>,
    /// Whether the last talk with the remote worked.
    pub reachable: Option<bool>,
    /// The last failure.
    pub last_error: Option<String>,
    /// The last successful push.
    pub last_push: Option<u64>,
    /// Blocks not yet pushed.
    pub pending_blocks: Option<u64>,
    /// Their stored bytes.
    pub pending_bytes: Option<u64>,
    /// Bytes of the local blob store.
    pub local_bytes: Option<u64>,
    /// The cache limit.
    pub cache_limit: Option<u64>,
    /// What must stay local exceeds the limit.
    pub over_limit: Option<bool>,
    /// Pinned nodes.
    #[serde(default)]
    pub pins: Vec<String>,
    /// rsync runs started by this mount so far (the idle cost of polling
    /// shows as its growth).
    pub rsync_runs: Option<u64>,
}

impl StatusFile {
    /// Writes `<dir>/status.toml`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join("status.toml");
        let tmp = dir.join("status.toml.tmp");
        let text = toml::to_string(self)
            .map_err(|e| RemoteError::BadState { path: path.clone(), reason: format!("encoding: {e}") })?;
        std::fs::write(&tmp, text).map_err(RemoteError::io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(RemoteError::io("rename", &tmp))
    }

    /// Reads `<dir>/status.toml`, if there is one.
    pub fn load(dir: &Path) -> Result<Option<StatusFile>> {
        let path = dir.join("status.toml");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RemoteError::io("read", &path)(e)),
        };
        let s: StatusFile =
            toml::from_str(&text).map_err(|e| RemoteError::BadState { path: path.clone(), reason: e.to_string() })?;
        if s.version > STATUS_VERSION {
            return Err(RemoteError::BadState {
                path,
                reason: format!("version {} is newer than this syncer's {STATUS_VERSION}", s.version),
            });
        }
        Ok(Some(s))
    }
}

/// The remote's health as seen by the last runs.
#[derive(Debug, Default)]
pub struct Health {
    inner: Mutex<(Option<bool>, Option<String>)>,
}

impl Health {
    /// The remote answered.
    pub fn ok(&self) {
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = (Some(true), None);
    }

    /// A talk with the remote failed.
    pub fn failed(&self, error: String) {
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = (Some(false), Some(error));
    }

    /// (reachable, last error).
    pub fn get(&self) -> (Option<bool>, Option<String>) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_file_round_trips_and_refuses_newer() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(StatusFile::load(dir.path()).expect("load"), None);
        let s = StatusFile {
            version: STATUS_VERSION,
            updated: 5,
            reachable: Some(false),
            last_error: Some("boom".into()),
            pins: vec!["/a".into()],
            ..Default::default()
        };
        s.save(dir.path()).expect("save");
        assert_eq!(StatusFile::load(dir.path()).expect("load"), Some(s.clone()));
        StatusFile { version: 9, ..s }.save(dir.path()).expect("save");
        assert!(matches!(StatusFile::load(dir.path()), Err(RemoteError::BadState { .. })));
    }
}
