//! Fetching blocks from the remote on demand.
//!
//! Always true: fetched files land in a private temp folder under
//! `<data>/remote-staging/`, are read, and are deleted; only the engine's
//! verified `put_raw_verified` puts them into the blob store. A fetch gives
//! up at the runner's hard deadline.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use engine::ids::BlockHash;
use engine::BlockSource;

use crate::remote::Rsync;
use crate::status::Health;
use crate::{RemoteError, Result};

/// The remote as the engine's [`BlockSource`].
#[derive(Debug, Clone)]
pub struct RemoteSource {
    rsync: Arc<Rsync>,
    staging: PathBuf,
    health: Arc<Health>,
    /// Told after every fetch that brought blocks (the evictor listens).
    after_fetch: Option<crossbeam_channel::Sender<()>>,
}

static FETCH_COUNTER: AtomicU64 = AtomicU64::new(0);

impl RemoteSource {
    /// Fetches through `rsync` into temp folders under `staging`, noting
    /// each outcome in `health`.
    pub fn new(rsync: Arc<Rsync>, staging: PathBuf, health: Arc<Health>) -> RemoteSource {
        RemoteSource { rsync, staging, health, after_fetch: None }
    }

    /// Sends `()` on `tx` (without blocking) after every fetch that
    /// brought blocks into the cache.
    pub fn notify_after_fetch(mut self, tx: crossbeam_channel::Sender<()>) -> Self {
        self.after_fetch = Some(tx);
        self
    }

    /// The runner.
    pub fn rsync(&self) -> &Arc<Rsync> {
        &self.rsync
    }

    /// Fetches the blob files of `hashes` in one rsync run. Blocks missing
    /// on the remote are absent from the result.
    pub fn fetch_many(&self, hashes: &[BlockHash]) -> Result<HashMap<BlockHash, Vec<u8>>> {
        let n = FETCH_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = self.staging.join(format!("fetch-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(RemoteError::io("create", &dir))?;
        let result = self.fetch_into(&dir, hashes);
        let _ = std::fs::remove_dir_all(&dir);
        match &result {
            Ok(got) => {
                self.health.ok();
                if let (false, Some(tx)) = (got.is_empty(), &self.after_fetch) {
                    let _ = tx.try_send(());
                }
            }
            Err(e) => self.health.failed(e.to_string()),
        }
        result
    }

    fn fetch_into(&self, dir: &std::path::Path, hashes: &[BlockHash]) -> Result<HashMap<BlockHash, Vec<u8>>> {
        let list = dir.join("list");
        let mut text = String::new();
        for h in hashes {
            let hex = h.to_hex();
            text.push_str(&format!("{}/{hex}\n", &hex[..2]));
        }
        std::fs::write(&list, text).map_err(RemoteError::io("write", &list))?;
        let mut files_from = OsString::from("--files-from=");
        files_from.push(&list);
        let out_dir = dir.join("out");
        let mut dest = out_dir.clone().into_os_string();
        dest.push("/");
        let what = format!("fetching {} blocks", hashes.len());
        let args = vec![files_from, self.rsync.remote().spec("blobs/"), dest];
        let out = self.rsync.run(&what, &args, Some(self.rsync.fetch_deadline))?;
        // 23: some files were missing on the remote; the rest arrived.
        if out.code != Some(0) && out.code != Some(23) {
            return Err(self.rsync.failed(&what, &out));
        }
        let mut got = HashMap::new();
        for h in hashes {
            let hex = h.to_hex();
            let p = out_dir.join(&hex[..2]).join(&hex);
            match std::fs::read(&p) {
                Ok(b) => {
                    got.insert(*h, b);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(RemoteError::io("read", p)(e)),
            }
        }
        if got.is_empty() && !hashes.is_empty() && out.code != Some(0) {
            return Err(self.rsync.failed(&what, &out));
        }
        Ok(got)
    }
}

impl BlockSource for RemoteSource {
    fn fetch_many(&self, hashes: &[BlockHash]) -> engine::Result<Vec<(BlockHash, Vec<u8>)>> {
        match RemoteSource::fetch_many(self, hashes) {
            Ok(got) => Ok(got.into_iter().collect()),
            Err(e) => {
                tracing::error!("fetching {} blocks: {e}", hashes.len());
                Err(engine::Error::RemoteUnavailable {
                    what: format!("fetching {} blocks", hashes.len()),
                    source: Box::new(e),
                })
            }
        }
    }

    fn fetch(&self, hash: &BlockHash) -> engine::Result<Vec<u8>> {
        let what = || format!("fetching block {hash}");
        match RemoteSource::fetch_many(self, std::slice::from_ref(hash)) {
            Ok(mut got) => got.remove(hash).ok_or_else(|| engine::Error::RemoteUnavailable {
                what: what(),
                source: format!("not on the remote {}", self.rsync.remote()).into(),
            }),
            Err(e) => {
                tracing::error!("fetching block {hash}: {e}");
                Err(engine::Error::RemoteUnavailable { what: what(), source: Box::new(e) })
            }
        }
    }
}
