//! The bounded local block cache: which blobs may leave the local store,
//! and the bookkeeping behind that choice.
//!
//! Always true:
//! - a blob is evicted only if it is recorded as pushed (on the remote), is
//!   not referenced by a pinned node (a node is pinned when it or any
//!   ancestor carries the pin), and its stored payload is larger than
//!   `config.small_block`; log and index data are never touched;
//! - among evictable blobs, the least recently used go first, and only as
//!   many as needed to bring the store under its limit: `config.cache_size`,
//!   or less when the disk is short of room (the store then gives up what
//!   the disk lacks to keep the data dir's reserve plus sixteen blocks
//!   free);
//!   if the blobs that must stay exceed the limit, the store stays over it
//!   and [`EvictReport::over_limit`] says so;
//! - "last use" is the later of the blob file's mtime (written or fetched)
//!   and the last read by this process; reads are not persisted, so after a
//!   restart the order is by write/fetch time (coarse, never unsafe).
//!
//! [`plan_eviction`] is the whole policy as a pure function.
//!
//! # Pushed-set file format (`<data>/pushed`, version 1)
//!
//! ```text
//! offset  size       field
//!      0     6       magic      b"SYNPSH"
//!      6     1       version    u8, 1
//!      7     1       hash_size  u8: bytes per hash below (the data dir's)
//!      8     n*hs    hashes     each a block hash that is on the remote
//! ```
//!
//! Append-only; a hash is appended only after the rsync that sent it
//! succeeded, or after the block was fetched from the remote and verified.
//! A torn last record (fewer than `hash_size` bytes) is ignored on load and
//! cut before the next append. Losing the file is harmless: blocks
//! are then pushed again (rsync skips those already there) before any is
//! evicted. Version history: v1 (current). A newer version is refused.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::blob::HEADER_LEN;
use crate::error::{Error, Result};
use crate::ids::BlockHash;
use crate::read::TreeRead;
use crate::state::TreeEntry;

/// Magic bytes of the pushed-set file.
pub const PUSHED_MAGIC: &[u8; 6] = b"SYNPSH";
/// Version of the pushed-set file this build writes.
pub const PUSHED_VERSION: u8 = 1;
const PUSHED_HEADER_LEN: u64 = 8;

/// One local blob as the eviction policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    /// Its address.
    pub hash: BlockHash,
    /// Size of the blob file.
    pub stored_len: u64,
    /// Last use, in seconds since the epoch (larger = more recent).
    pub last_use: u64,
    /// On the remote.
    pub pushed: bool,
    /// Referenced by a pinned node.
    pub pinned: bool,
}

/// What [`plan_eviction`] decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EvictionPlan {
    /// Blobs to delete, least recently used first.
    pub victims: Vec<BlockHash>,
    /// Bytes of the store before.
    pub before: u64,
    /// Bytes of the store once the victims are gone.
    pub after: u64,
    /// Bytes that may not be evicted because they are not pushed yet.
    pub unpushed: u64,
}

/// The eviction policy: which of `entries` to delete so the store fits in
/// `limit` bytes (see the module docs for the rules).
pub fn plan_eviction(entries: &[CacheEntry], limit: u64, small_block: u64) -> EvictionPlan {
    let before: u64 = entries.iter().map(|e| e.stored_len).sum();
    let unpushed = entries.iter().filter(|e| !e.pushed).map(|e| e.stored_len).sum();
    let mut plan = EvictionPlan { victims: Vec::new(), before, after: before, unpushed };
    if before <= limit {
        return plan;
    }
    let mut candidates: Vec<&CacheEntry> = entries
        .iter()
        .filter(|e| e.pushed && !e.pinned && e.stored_len.saturating_sub(HEADER_LEN as u64) > small_block)
        .collect();
    candidates.sort_by_key(|e| (e.last_use, e.hash));
    for e in candidates {
        if plan.after <= limit {
            break;
        }
        plan.after -= e.stored_len;
        plan.victims.push(e.hash);
    }
    plan
}

/// What one eviction pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EvictReport {
    /// Blobs deleted.
    pub evicted: u64,
    /// Bytes of the store before.
    pub before: u64,
    /// Bytes of the store after.
    pub after: u64,
    /// Bytes not yet pushed (never evicted).
    pub unpushed: u64,
    /// The limit this pass evicted down to: `cache_size`, or less when the
    /// disk was short of room.
    pub limit: u64,
    /// The store is still over the limit (what must stay exceeds it).
    pub over_limit: bool,
    /// The disk was short of room before this pass.
    pub short_of_room: bool,
}

/// Where [`TreeRead::read_block`] gets a block that is not in the local
/// store (the replication layer implements it over the remote).
pub trait BlockSource: Send + Sync {
    /// The blob file of `hash` as stored on the remote (header included),
    /// unverified: the engine verifies it before use. Must give up after a
    /// bounded time when the remote is unreachable.
    fn fetch(&self, hash: &BlockHash) -> Result<Vec<u8>>;

    /// The blob files of `hashes` (as [`BlockSource::fetch`]), in one round
    /// trip where the source can; blocks it does not have are left out.
    fn fetch_many(&self, hashes: &[BlockHash]) -> Result<Vec<(BlockHash, Vec<u8>)>> {
        hashes.iter().map(|h| self.fetch(h).map(|b| (*h, b))).collect()
    }
}

/// The persistent set of blocks known to be on the remote.
#[derive(Debug)]
pub struct PushedSet {
    path: PathBuf,
    hash_size: usize,
    set: HashSet<BlockHash>,
    /// Length of the file's valid part (header + whole records).
    valid_len: u64,
}

impl PushedSet {
    /// Loads `path` (an empty set if it does not exist).
    pub fn load(path: &Path, hash_size: usize) -> Result<PushedSet> {
        let mut s = PushedSet { path: path.to_path_buf(), hash_size, set: HashSet::new(), valid_len: 0 };
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => f.read_to_end(&mut bytes).map_err(|e| Error::io("read", path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(s),
            Err(e) => return Err(Error::io("open", path, e)),
        };
        if bytes.len() < PUSHED_HEADER_LEN as usize {
            // A torn header: nothing was recorded yet.
            return Ok(s);
        }
        let bad = |why: String| Error::Invalid(format!("{}: {why}", path.display()));
        if &bytes[..6] != PUSHED_MAGIC {
            return Err(bad(format!("bad magic {:02x?} (not a syncer pushed-set file)", &bytes[..6])));
        }
        if bytes[6] != PUSHED_VERSION {
            return Err(bad(format!("version {} is not {PUSHED_VERSION}; written by another syncer", bytes[6])));
        }
        if usize::from(bytes[7]) != hash_size {
            return Err(bad(format!("holds {}-byte hashes, the data dir uses {hash_size}", bytes[7])));
        }
        let records = &bytes[PUSHED_HEADER_LEN as usize..];
        let whole = records.len() / hash_size * hash_size;
        for r in records[..whole].chunks_exact(hash_size) {
            let h = BlockHash::from_bytes(r).map_err(|e| bad(format!("bad hash record: {e}")))?;
            s.set.insert(h);
        }
        s.valid_len = PUSHED_HEADER_LEN + whole as u64;
        Ok(s)
    }

    /// Whether `hash` is on the remote.
    pub fn contains(&self, hash: &BlockHash) -> bool {
        self.set.contains(hash)
    }

    /// How many blocks are recorded.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether none is recorded.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Records `hashes` as pushed (appends the new ones to the file).
    pub fn insert_all(&mut self, hashes: &[BlockHash]) -> Result<()> {
        let new: Vec<&BlockHash> = hashes.iter().filter(|h| !self.set.contains(h)).collect();
        if new.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(PUSHED_HEADER_LEN as usize + new.len() * self.hash_size);
        if self.valid_len == 0 {
            buf.extend_from_slice(PUSHED_MAGIC);
            buf.push(PUSHED_VERSION);
            buf.push(self.hash_size as u8);
        }
        for h in &new {
            if h.as_bytes().len() != self.hash_size {
                return Err(Error::Invalid(format!(
                    "{}: {}-byte hash {h} in a set of {}-byte hashes",
                    self.path.display(),
                    h.as_bytes().len(),
                    self.hash_size
                )));
            }
            buf.extend_from_slice(h.as_bytes());
        }
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&self.path)
            .map_err(|e| Error::io("open", &self.path, e))?;
        // Cut a torn record (or torn header) before appending.
        f.set_len(self.valid_len).map_err(|e| Error::io("truncate", &self.path, e))?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(self.valid_len))
            .map_err(|e| Error::io("seek", &self.path, e))?;
        f.write_all(&buf).map_err(|e| Error::io("write", &self.path, e))?;
        self.valid_len += buf.len() as u64;
        self.set.extend(new.into_iter().copied());
        Ok(())
    }
}

/// Residency bookkeeping of one open data dir: the pushed set and the
/// last reads of this process.
#[derive(Debug)]
pub struct Cache {
    pushed: Mutex<PushedSet>,
    last_read: Mutex<HashMap<BlockHash, u64>>,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Sets and maps that stay consistent on panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cache {
    /// Opens the bookkeeping of the data dir `dir`.
    pub fn open(dir: &Path, hash_size: usize) -> Result<Cache> {
        Ok(Cache {
            pushed: Mutex::new(PushedSet::load(&dir.join("pushed"), hash_size)?),
            last_read: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `hash` is on the remote.
    pub fn is_pushed(&self, hash: &BlockHash) -> bool {
        lock(&self.pushed).contains(hash)
    }

    /// Records `hashes` as on the remote.
    pub fn mark_pushed(&self, hashes: &[BlockHash]) -> Result<()> {
        lock(&self.pushed).insert_all(hashes)
    }

    /// How many blocks are recorded as pushed.
    pub fn pushed_count(&self) -> usize {
        lock(&self.pushed).len()
    }

    /// Notes a read of `hash` now.
    pub fn touch(&self, hash: &BlockHash) {
        lock(&self.last_read).insert(*hash, now_secs());
    }

    fn last_read(&self, hash: &BlockHash) -> Option<u64> {
        lock(&self.last_read).get(hash).copied()
    }
}

/// Every local blob with its size, last use, pushed and pinned state.
pub fn entries<T: TreeRead + ?Sized>(engine: &T) -> Result<Vec<CacheEntry>> {
    let pinned = pinned_blocks(engine)?;
    let blobs = engine.blobs();
    let mut out = Vec::new();
    for hash in blobs.list()? {
        let path = blobs.path_of(&hash);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            // Removed meanwhile (another eviction pass).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("stat", path, e)),
        };
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
        out.push(CacheEntry {
            hash,
            stored_len: meta.len(),
            last_use: engine.cache().last_read(&hash).map_or(mtime, |r| r.max(mtime)),
            pushed: engine.cache().is_pushed(&hash),
            pinned: pinned.contains(&hash),
        });
    }
    Ok(out)
}

/// Blocks of every file that is pinned or lies under a pinned directory.
pub fn pinned_blocks<T: TreeRead + ?Sized>(engine: &T) -> Result<HashSet<BlockHash>> {
    let mut out = HashSet::new();
    for (_, _, blocks) in pinned_files(engine)? {
        out.extend(blocks.iter().map(|(_, b)| b.hash));
    }
    Ok(out)
}

/// Files that are pinned or lie under a pinned directory, with their blocks.
pub fn pinned_files<T: TreeRead + ?Sized>(engine: &T) -> Result<Vec<TreeEntry>> {
    let tree = engine.dump_tree()?;
    let pinned_dirs: Vec<Vec<u8>> = tree.iter().filter(|(_, n, _)| n.pinned).map(|(p, _, _)| p.clone()).collect();
    let under = |p: &[u8]| {
        pinned_dirs
            .iter()
            .any(|d| p == d.as_slice() || d.as_slice() == b"/" || (p.starts_with(d) && p.get(d.len()) == Some(&b'/')))
    };
    Ok(tree.into_iter().filter(|(p, n, _)| n.pinned || under(p)).collect())
}

/// Nodes carrying a pin, by path.
pub fn pins<T: TreeRead + ?Sized>(engine: &T) -> Result<Vec<Vec<u8>>> {
    Ok(engine.dump_tree()?.into_iter().filter(|(_, n, _)| n.pinned).map(|(p, _, _)| p).collect())
}

/// One eviction pass: deletes the blobs [`plan_eviction`] picks.
pub fn evict<T: TreeRead + ?Sized>(engine: &T) -> Result<EvictReport> {
    let cfg = engine.config();
    let entries = entries(engine)?;
    let room = room_limit(engine, &entries);
    let limit = cfg.cache_size.min(room);
    let plan = plan_eviction(&entries, limit, cfg.small_block);
    let mut evicted = 0;
    for h in &plan.victims {
        if engine.blobs().remove(h)? {
            evicted += 1;
        }
    }
    Ok(EvictReport {
        evicted,
        before: plan.before,
        after: plan.after,
        unpushed: plan.unpushed,
        limit,
        over_limit: plan.after > limit,
        short_of_room: room != u64::MAX,
    })
}

/// The most the store may hold so that the disk keeps the data dir's
/// reserve plus sixteen blocks free (room for the writers at work): what
/// it holds less what the disk lacks (no limit while the disk has that
/// room, or cannot tell).
fn room_limit<T: TreeRead + ?Sized>(engine: &T, entries: &[CacheEntry]) -> u64 {
    let cfg = engine.config();
    let Some((free, total)) = crate::blob::disk_space(&engine.layout().blobs()) else { return u64::MAX };
    let want = crate::blob::reserve_on(cfg.reserve, total).saturating_add(cfg.block_size.saturating_mul(16));
    if free >= want {
        return u64::MAX;
    }
    let held: u64 = entries.iter().map(|e| e.stored_len).sum();
    held.saturating_sub(want - free)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(i: u8) -> BlockHash {
        BlockHash::of(&[i], 32)
    }

    fn entry(i: u8, len: u64, last_use: u64, pushed: bool, pinned: bool) -> CacheEntry {
        CacheEntry { hash: h(i), stored_len: len, last_use, pushed, pinned }
    }

    #[test]
    fn evicts_least_recently_used_pushed_blocks_only() {
        let e = [
            entry(1, 1000, 5, true, false),
            entry(2, 1000, 1, false, false),
            entry(3, 1000, 2, true, true),
            entry(4, 1000, 3, true, false),
            entry(5, 20, 0, true, false),
        ];
        let p = plan_eviction(&e, 2500, 100);
        assert_eq!(p.victims, vec![h(4), h(1)]);
        assert_eq!(p.after, 2020);
        assert_eq!(p.unpushed, 1000);
    }

    #[test]
    fn under_the_limit_nothing_goes() {
        let e = [entry(1, 1000, 5, true, false)];
        assert!(plan_eviction(&e, 1000, 0).victims.is_empty());
    }

    #[test]
    fn pushed_set_survives_reload_and_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pushed");
        let mut s = PushedSet::load(&path, 32).expect("load");
        s.insert_all(&[h(1), h(2)]).expect("insert");
        // A torn record at the end.
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(&[7; 5]).expect("write");
        let mut s = PushedSet::load(&path, 32).expect("reload");
        assert_eq!(s.len(), 2);
        s.insert_all(&[h(3)]).expect("insert after torn");
        let s = PushedSet::load(&path, 32).expect("reload");
        assert!(s.contains(&h(1)) && s.contains(&h(2)) && s.contains(&h(3)));
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), 8 + 3 * 32);
        assert!(matches!(PushedSet::load(&path, 16), Err(Error::Invalid(_))));
    }

    proptest! {
        #[test]
        fn plan_obeys_the_rules(
            spec in proptest::collection::vec((1u64..5000, 0u64..100, any::<bool>(), any::<bool>()), 0..60),
            limit in 0u64..100_000,
            small in 0u64..2000,
        ) {
            let e: Vec<CacheEntry> = spec.iter().enumerate()
                .map(|(i, &(len, lu, pushed, pinned))| CacheEntry {
                    hash: BlockHash::of(&(i as u64).to_le_bytes(), 32), stored_len: len, last_use: lu, pushed, pinned,
                })
                .collect();
            let p = plan_eviction(&e, limit, small);
            let by_hash: HashMap<BlockHash, &CacheEntry> = e.iter().map(|c| (c.hash, c)).collect();
            let mut freed = 0;
            for v in &p.victims {
                let c = by_hash[v];
                prop_assert!(c.pushed && !c.pinned && c.stored_len - (HEADER_LEN as u64).min(c.stored_len) > small);
                freed += c.stored_len;
            }
            prop_assert_eq!(p.after, p.before - freed);
            // Never more than needed: without the last victim it would not fit.
            if let Some(last) = p.victims.last() {
                prop_assert!(p.after + by_hash[last].stored_len > limit);
            }
            // If still over, nothing evictable is left.
            if p.after > limit {
                let left = e.iter().filter(|c| !p.victims.contains(&c.hash))
                    .any(|c| c.pushed && !c.pinned && c.stored_len.saturating_sub(HEADER_LEN as u64) > small);
                prop_assert!(!left);
            }
        }
    }
}
