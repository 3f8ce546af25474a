//! `syncer log verify`: checks every record of every segment and every
//! block the log references (a block evicted after it was pushed, or a
//! peer's block not fetched yet, counts as on the remote, not as damage), without the index and without the writer lock
//! (so it runs on a mounted data dir). It reads and never repairs. While a
//! mount holds the cache bookkeeping (`cache.redb`), which blocks were
//! pushed cannot be read: a block missing locally then counts as on the
//! remote when the data dir has one.

use std::collections::BTreeMap;
use std::path::Path;

use crate::blob::BlobStore;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::event::BlockRef;
use crate::ids::BlockHash;
use crate::storage::FsStorage;
use crate::store::Layout;
use crate::{format, log};

/// What `verify` found.
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    /// Machines whose logs were read.
    pub machines: usize,
    /// Segment files read.
    pub segments: usize,
    /// Records whose checksum and payload are good.
    pub records: u64,
    /// Distinct blocks referenced by those records.
    pub blocks: usize,
    /// Referenced blocks stored locally and matching their hash.
    pub blocks_ok: usize,
    /// Referenced blocks not stored locally but on the remote: recorded as
    /// pushed (evicted from the cache), or a peer's not fetched yet.
    pub blocks_remote: usize,
    /// Every problem, one line each, naming what and where.
    pub problems: Vec<String>,
    /// A torn tail at the end of a log (not damage: cut off on next open).
    pub torn_tails: Vec<String>,
}

impl VerifyReport {
    /// Whether nothing is damaged.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies the data dir at `dir`.
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    let storage = FsStorage;
    let layout = Layout { dir: dir.to_path_buf() };
    let version = format::read(&storage, dir)?;
    if version.major > format::CURRENT.major {
        return Err(Error::NewerFormat {
            path: format::path_in(dir),
            found: version.to_line().trim().to_string(),
            supported: format::CURRENT.to_line().trim().to_string(),
        });
    }
    let config = Config::load(&storage, &layout.config())?;
    let mut report = VerifyReport::default();
    // Each referenced block, and whether a peer's event references it.
    let mut blocks: BTreeMap<BlockHash, (BlockRef, bool)> = BTreeMap::new();
    let log_root = layout.log();
    for machine in log::list_machines(&storage, &log_root)? {
        report.machines += 1;
        let segments = match log::list_segments(&storage, &log_root, machine) {
            Ok(s) => s,
            Err(e) => {
                report.problems.push(e.to_string());
                continue;
            }
        };
        let last = segments.last().copied();
        for number in segments {
            report.segments += 1;
            let path = log::segment_path(&log_root, machine, number);
            let mode = if Some(number) == last { log::ReadMode::Recover } else { log::ReadMode::Strict };
            let peer = machine != config.machine;
            // Read in windows: one record at a time is held, not the segment.
            let first = (number == 0).then_some((0, crate::ids::Timestamp(i64::MIN)));
            let mut each = |item: log::Item| {
                if let log::Item::Record(r) = item {
                    report.records += 1;
                    for b in r.event.change.blocks() {
                        blocks.entry(b.hash).or_insert((*b, peer)).1 |= peer;
                    }
                }
                Ok(())
            };
            let read = log::read_segment_windows(
                &storage,
                &path,
                machine,
                number,
                mode,
                log::SEGMENT_HEADER_LEN,
                first,
                log::READ_WINDOW,
                &mut each,
            );
            match read {
                Ok(end) => {
                    if let Some(at) = end.torn_tail() {
                        report.torn_tails.push(format!("{} at byte {at}: torn tail", path.display()));
                    }
                }
                Err(e) => report.problems.push(e.to_string()),
            }
        }
    }
    let store =
        BlobStore::open(std::sync::Arc::new(storage), layout.blobs(), config.hash_size, config.compression_level)?;
    report.blocks = blocks.len();
    let pushed = crate::cache::PushedView::open(dir, config.hash_size)?;
    for (hash, (block, peer)) in blocks {
        // Not local but on the remote: evicted after a push, or a peer's
        // block never fetched (content comes on demand). While a mount
        // holds the cache bookkeeping, whether it was pushed is unknown: a
        // data dir with a remote is taken to have pushed it.
        let on_remote = |h| -> Result<bool> {
            Ok(pushed.contains(h)?.unwrap_or(config.remote.is_some()) || (peer && config.remote.is_some()))
        };
        if !store.contains(&hash) && on_remote(&hash)? {
            report.blocks_remote += 1;
            continue;
        }
        match store.get(&hash) {
            Ok(data) if data.len() == block.len as usize => report.blocks_ok += 1,
            Ok(data) => report.problems.push(format!(
                "blob {hash} ({}): holds {} bytes, the log says {}",
                store.path_of(&hash).display(),
                data.len(),
                block.len
            )),
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    Ok(report)
}
