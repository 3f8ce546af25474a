//! Residency bookkeeping of the bounded local block cache: which blocks are
//! on the remote (the pushed set) and when this process last read each.
//! The policy that chooses what to evict is above the engine, in `evict`;
//! the store keeps only these facts for it.
//!
//! Always true:
//! - a block is recorded as pushed only after the rsync that sent it
//!   succeeded, or after it was fetched from the remote and verified;
//! - reads are not persisted: after a restart the last use of a block is
//!   its blob file's mtime (coarse, never unsafe).
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

use crate::error::{Error, Result};
use crate::ids::BlockHash;

/// Magic bytes of the pushed-set file.
pub(crate) const PUSHED_MAGIC: &[u8; 6] = b"SYNPSH";
/// Version of the pushed-set file this build writes.
pub(crate) const PUSHED_VERSION: u8 = 1;
const PUSHED_HEADER_LEN: u64 = 8;

/// Where [`TreeRead::read_block`](crate::TreeRead::read_block) gets a block that is not in the local
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
pub(crate) struct PushedSet {
    path: PathBuf,
    hash_size: usize,
    set: HashSet<BlockHash>,
    /// Length of the file's valid part (header + whole records).
    valid_len: u64,
}

impl PushedSet {
    /// Loads `path` (an empty set if it does not exist).
    pub(crate) fn load(path: &Path, hash_size: usize) -> Result<PushedSet> {
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
    pub(crate) fn contains(&self, hash: &BlockHash) -> bool {
        self.set.contains(hash)
    }

    /// How many blocks are recorded.
    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }

    /// Records `hashes` as pushed (appends the new ones to the file).
    pub(crate) fn insert_all(&mut self, hashes: &[BlockHash]) -> Result<()> {
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

    /// When this process last read `hash`, in seconds since the epoch.
    pub(crate) fn last_read(&self, hash: &BlockHash) -> Option<u64> {
        lock(&self.last_read).get(hash).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u8) -> BlockHash {
        BlockHash::of(&[i], 32)
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
}
