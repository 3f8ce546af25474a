//! `syncer log verify`: checks every record of every segment and every
//! block the log references (a block evicted after it was pushed, or a
//! peer's block not fetched yet, counts as on the remote, not as damage), without the index and without the writer lock
//! (so it runs on a mounted data dir). It reads and never repairs. While a
//! mount holds the cache bookkeeping (`cache.redb`), which blocks were
//! pushed cannot be read: a block missing locally then counts as on the
//! remote when the data dir has one.

use std::collections::{BTreeMap, HashSet};
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
    let store =
        BlobStore::open(std::sync::Arc::new(FsStorage), layout.blobs(), config.hash_size, config.compression_level)?;
    let pushed = crate::cache::PushedView::open(dir, config.hash_size)?;
    // Not local but on the remote: evicted after a push, or a peer's block
    // never fetched (content comes on demand). While a mount holds the
    // cache bookkeeping, whether it was pushed is unknown: a data dir with
    // a remote is taken to have pushed it.
    let on_remote = |h: &BlockHash, peer: bool| -> Result<bool> {
        Ok(pushed.contains(h)?.unwrap_or(config.remote.is_some()) || (peer && config.remote.is_some()))
    };
    // Each block is checked when the log first names it. Only the first
    // 16 bytes of each hash seen are kept (about 30 bytes a block), so
    // memory stays small for a million blocks; blocks neither local nor on
    // the remote wait to the end, as a peer's event later in the log may
    // make them a peer's block, fetched on demand.
    let mut seen: HashSet<u128> = HashSet::new();
    let mut missing: BTreeMap<BlockHash, (BlockRef, bool)> = BTreeMap::new();
    let mut failed: Option<Error> = None;
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
                let log::Item::Record(r) = item else { return Ok(()) };
                report.records += 1;
                for b in r.event.change.blocks() {
                    if !seen.insert(prefix(&b.hash)) {
                        if let Some(m) = missing.get_mut(&b.hash) {
                            m.1 |= peer;
                        }
                        continue;
                    }
                    report.blocks += 1;
                    if !store.contains(&b.hash) {
                        match on_remote(&b.hash, peer) {
                            Ok(true) => report.blocks_remote += 1,
                            Ok(false) => {
                                missing.insert(b.hash, (*b, peer));
                            }
                            Err(e) => {
                                failed.get_or_insert(e);
                            }
                        }
                        continue;
                    }
                    check_block(&store, b, &mut report);
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
    if let Some(e) = failed {
        return Err(e);
    }
    for (hash, (block, peer)) in missing {
        if on_remote(&hash, peer)? {
            report.blocks_remote += 1;
        } else {
            check_block(&store, &block, &mut report);
        }
    }
    Ok(report)
}

/// The first 16 bytes of `hash` (hashes are at least that long).
fn prefix(hash: &BlockHash) -> u128 {
    let mut b = [0u8; 16];
    let bytes = hash.as_bytes();
    let n = bytes.len().min(16);
    b[..n].copy_from_slice(&bytes[..n]);
    u128::from_le_bytes(b)
}

/// Reads `block` back: counted good, or its problem recorded.
fn check_block(store: &BlobStore, block: &BlockRef, report: &mut VerifyReport) {
    let hash = block.hash;
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
