//! Residency bookkeeping of the bounded local block cache: which blocks are
//! on the remote (the pushed set), which of those are also local with their
//! size and last use (the eviction candidates, in least-recently-used
//! order), and the bytes of the whole local store. The policy that chooses
//! what to evict is above the engine, in `evict`; the store keeps only
//! these facts for it.
//!
//! None of this is derived from the log (the index is, and is rebuilt from
//! it), so it lives in a redb file of its own, `<data>/cache.redb`, with a
//! small page cache ([`CACHE_BUDGET`]): memory does not grow with the
//! collection, and a query costs a B-tree lookup, never a listing.
//!
//! Always true:
//! - a block is recorded as pushed only after the rsync that sent it
//!   succeeded, or after it was fetched from the remote and verified;
//! - `resident` holds exactly the blocks recorded (by this file) as both
//!   pushed and local, and `lru` those of them whose payload is larger than
//!   the data dir's `small_block` (the only ones eviction may take), keyed
//!   by last use; `meta` counts them;
//! - last use is on a coarse clock ([`CLOCK_SECS`]): reads note their
//!   blocks in a bounded buffer ([`TOUCH_BUFFER_MAX`] blocks) that is
//!   written to `lru` when it fills and before each eviction pass, so a
//!   read never writes the file;
//! - the bytes of the store are a counter kept up to date by the blob
//!   store's writes, recompressions and removals
//!   ([`BlobStore::take_changes`]), taken before each eviction pass and
//!   each write of this file.
//!
//! Commits are not durable (redb's `Durability::None`) except at the end
//! of an eviction pass, a recount and a close. A crash may thus lose the
//! latest records: a lost pushed mark makes the next push send the block
//! again (rsync skips it); a lost eviction leaves a row whose blob is gone,
//! which the next pass drops. What a crash can make wrong, and what a
//! read-only store (a point-in-time view, which leaves this file to the
//! writer) does without recording it, is the byte counter and blobs missing
//! from `resident` (local again after an eviction a crash undid, written
//! again locally past the blob store's bounded change list, or fetched by a
//! read-only view): they stay so until [`Cache::recount`] lists the store
//! and sets them right. It runs at the first writable open, and at a
//! writable open after a process that did not close cleanly (`meta`'s
//! `in_use`, set durably at open and cleared at close, says so): a crash
//! costs one listing of the store at the next open, a clean run none.
//!
//! # File format (`<data>/cache.redb`, version 1)
//!
//! A redb database (hashes as their raw bytes, of the data dir's size):
//!
//! | table      | key                 | value                     |
//! |------------|---------------------|---------------------------|
//! | `pushed`   | hash                | `()`                      |
//! | `resident` | hash                | (stored length, last use) |
//! | `lru`      | (last use, hash)    | stored length             |
//! | `meta`     | name                | u64 (see `META_*`)        |
//!
//! Stored lengths are blob file sizes (header included); last use is in
//! [`CLOCK_SECS`] ticks since the Unix epoch. `meta` holds `version`
//! ([`CACHE_VERSION`]), `pushed` (rows of `pushed`), `resident` and
//! `resident_bytes` (rows and bytes of `resident`), `store_bytes` (bytes of
//! every blob file), `counted` (1 once the store was listed into it) and
//! `in_use` (1 while a writable store has it open).
//!
//! Version history: 1 (current) replaced the append-only `<data>/pushed`
//! file (magic `SYNPSH`, version 1: an 8-byte header then raw hashes); a
//! data dir that still has that file is upgraded at the first writable
//! open (its hashes go to `pushed`, then the store is listed to fill
//! `resident`, `lru` and the counters, then the file is removed). A
//! `cache.redb` of a newer version is refused; one redb cannot open is
//! moved to `cache.redb.damaged` and made again from the store (its pushed
//! blocks are then pushed again before any is evicted).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};

use crate::blob::{BlobStore, HEADER_LEN};
use crate::error::{Error, IndexError, Result};
use crate::ids::BlockHash;

/// The bookkeeping file's name in the data dir.
pub const CACHE_FILE: &str = "cache.redb";
/// Version of the layout above that this build writes.
pub(crate) const CACHE_VERSION: u64 = 1;
/// redb's page cache for the file (redb's default is 1 GiB).
pub const CACHE_BUDGET: usize = 16 << 20;
/// Seconds per tick of the last-use clock.
pub const CLOCK_SECS: u64 = 60;
/// Most distinct blocks noted by reads before they are written to `lru`.
pub const TOUCH_BUFFER_MAX: usize = 4096;
/// Rows of `lru` read at once by [`Cache::oldest`]'s callers.
pub(crate) const LRU_PAGE: usize = 256;

/// Magic bytes of the legacy pushed-set file (upgraded from).
const LEGACY_MAGIC: &[u8; 6] = b"SYNPSH";
const LEGACY_VERSION: u8 = 1;
const LEGACY_HEADER_LEN: usize = 8;
const LEGACY_FILE: &str = "pushed";

const PUSHED: TableDefinition<&[u8], ()> = TableDefinition::new("pushed");
const RESIDENT: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("resident");
const LRU: TableDefinition<(u64, &[u8]), u64> = TableDefinition::new("lru");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_VERSION: &str = "version";
const META_PUSHED: &str = "pushed";
const META_RESIDENT: &str = "resident";
const META_RESIDENT_BYTES: &str = "resident_bytes";
const META_STORE_BYTES: &str = "store_bytes";
const META_COUNTED: &str = "counted";
const META_IN_USE: &str = "in_use";

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

/// The counters of the bookkeeping (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheCounts {
    /// Blocks recorded as on the remote.
    pub pushed: u64,
    /// Blocks both pushed and local.
    pub resident: u64,
    /// Bytes of those.
    pub resident_bytes: u64,
    /// Bytes of every local blob file.
    pub store_bytes: u64,
}

/// One row of `lru`: a pushed, local blob larger than the small-block size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LruEntry {
    /// Its address.
    pub hash: BlockHash,
    /// Size of its blob file.
    pub stored_len: u64,
    /// Last use, in [`CLOCK_SECS`] ticks since the epoch.
    pub last_use: u64,
}

/// What [`Cache::recount`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recount {
    /// The counters before.
    pub before: CacheCounts,
    /// The counters after.
    pub after: CacheCounts,
}

/// Residency bookkeeping of one open data dir (see the module docs).
pub struct Cache {
    path: PathBuf,
    /// `None` for a read-only store: the writer owns the file.
    db: Option<Database>,
    blobs: Arc<BlobStore>,
    small_block: u64,
    /// Reads not yet in `lru`: block -> tick.
    touches: Mutex<HashMap<BlockHash, u64>>,
    /// The counters as committed; held for each write transaction.
    counts: Mutex<CacheCounts>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("path", &self.path).field("open", &self.db.is_some()).finish_non_exhaustive()
    }
}

/// The current tick of the last-use clock.
pub fn now_tick() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) / CLOCK_SECS
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters and buffers that stay consistent on panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn db_err(path: &Path, op: &'static str, e: impl Into<redb::Error>) -> Error {
    IndexError::redb(op, e).at(path)
}

/// Whether a blob of `stored_len` bytes is small (never evicted).
fn is_small(stored_len: u64, small_block: u64) -> bool {
    stored_len.saturating_sub(HEADER_LEN as u64) <= small_block
}

fn add(v: &mut u64, delta: i64) {
    *v = if delta >= 0 { v.saturating_add(delta as u64) } else { v.saturating_sub(delta.unsigned_abs()) };
}

impl Cache {
    /// Opens the bookkeeping of the data dir `dir` (creating or upgrading
    /// it when `writable`; a read-only store keeps none, see the module
    /// docs). `small_block`: the data dir's small-block size.
    pub(crate) fn open(dir: &Path, blobs: Arc<BlobStore>, small_block: u64, writable: bool) -> Result<Cache> {
        let path = dir.join(CACHE_FILE);
        let mut cache = Cache {
            path: path.clone(),
            db: None,
            blobs,
            small_block,
            touches: Mutex::new(HashMap::new()),
            counts: Mutex::new(CacheCounts::default()),
        };
        if !writable {
            return Ok(cache);
        }
        let create = || redb::Builder::new().set_cache_size(CACHE_BUDGET).create(&path);
        let db = match create() {
            Ok(db) => db,
            // Not the truth: a damaged file is set aside and made again
            // (blocks are then pushed again before any is evicted).
            Err(e) if path.exists() && !matches!(e, redb::DatabaseError::DatabaseAlreadyOpen) => {
                let aside = dir.join(format!("{CACHE_FILE}.damaged"));
                tracing::warn!("{} unreadable ({e}); moved to {} and made again", path.display(), aside.display());
                std::fs::rename(&path, &aside).map_err(|e| Error::io("rename", &path, e))?;
                create().map_err(|e| db_err(&path, "create", e))?
            }
            Err(e) => return Err(db_err(&path, "open", e)),
        };
        let txn = db.begin_write().map_err(|e| db_err(&path, "begin a write", e))?;
        let (counted, counts) = {
            let mut meta = txn.open_table(META).map_err(|e| db_err(&path, "open `meta`", e))?;
            let get = |k: &str| -> Result<u64> {
                Ok(meta.get(k).map_err(|e| db_err(&path, "read `meta`", e))?.map_or(0, |v| v.value()))
            };
            let version = get(META_VERSION)?;
            if version > CACHE_VERSION {
                return Err(Error::Invalid(format!(
                    "{}: cache bookkeeping version {version} is newer than this syncer's {CACHE_VERSION}; upgrade \
                     syncer",
                    path.display()
                )));
            }
            let counts = CacheCounts {
                pushed: get(META_PUSHED)?,
                resident: get(META_RESIDENT)?,
                resident_bytes: get(META_RESIDENT_BYTES)?,
                store_bytes: get(META_STORE_BYTES)?,
            };
            let counted = get(META_COUNTED)? == 1;
            let crashed = get(META_IN_USE)? == 1;
            if crashed {
                tracing::info!("{}: not closed cleanly; counting the block store again", path.display());
            }
            if version == 0 {
                meta.insert(META_VERSION, CACHE_VERSION).map_err(|e| db_err(&path, "write `meta`", e))?;
            }
            meta.insert(META_IN_USE, 1).map_err(|e| db_err(&path, "write `meta`", e))?;
            let counted = counted && !crashed;
            (counted, counts)
        };
        for op in [txn.open_table(PUSHED).map(drop), txn.open_table(RESIDENT).map(drop), txn.open_table(LRU).map(drop)]
        {
            op.map_err(|e| db_err(&path, "create the tables", e))?;
        }
        txn.commit().map_err(|e| db_err(&path, "commit", e))?;
        cache.db = Some(db);
        *lock(&cache.counts) = counts;
        if !counted {
            let legacy = dir.join(LEGACY_FILE);
            cache.import_legacy(&legacy)?;
            cache.recount()?;
            match std::fs::remove_file(&legacy) {
                Ok(()) => tracing::info!("{}: upgraded to {}", legacy.display(), path.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", legacy, e)),
            }
        }
        Ok(cache)
    }

    fn err(&self, op: &'static str, e: impl Into<redb::Error>) -> Error {
        db_err(&self.path, op, e)
    }

    /// Runs `f` in a write transaction with the store's changes and the
    /// noted reads applied first, then writes the counters and commits.
    fn write<R>(
        &self,
        durable: bool,
        f: impl FnOnce(&WriteTransaction, &mut CacheCounts) -> Result<R>,
    ) -> Result<Option<R>> {
        let Some(db) = &self.db else { return Ok(None) };
        let mut counts = lock(&self.counts);
        let mut next = *counts;
        let mut txn = db.begin_write().map_err(|e| self.err("begin a write", e))?;
        let changes = self.blobs.take_changes();
        let touches = std::mem::take(&mut *lock(&self.touches));
        let applied = (|| {
            add(&mut next.store_bytes, changes.bytes);
            if changes.overflowed {
                tracing::debug!("more blobs written than noted; those pushed before stay local until a recount");
            }
            self.note_local(&txn, &mut next, &changes.written, now_tick())?;
            self.apply_touches(&txn, &touches)?;
            let r = f(&txn, &mut next)?;
            let mut meta = txn.open_table(META).map_err(|e| self.err("open `meta`", e))?;
            for (k, v) in [
                (META_PUSHED, next.pushed),
                (META_RESIDENT, next.resident),
                (META_RESIDENT_BYTES, next.resident_bytes),
                (META_STORE_BYTES, next.store_bytes),
            ] {
                meta.insert(k, v).map_err(|e| self.err("write `meta`", e))?;
            }
            Ok(r)
        })();
        let r = match applied {
            Ok(r) => r,
            Err(e) => {
                // Given back, so that the next write applies them.
                self.blobs.give_back(changes);
                return Err(e);
            }
        };
        txn.set_durability(if durable { Durability::Immediate } else { Durability::None })
            .map_err(|e| self.err("set the durability", e))?;
        txn.commit().map_err(|e| self.err("commit", e))?;
        *counts = next;
        Ok(Some(r))
    }

    /// Adds those of `hashes` that are pushed and local, and not yet in
    /// `resident`, as used at `tick`.
    fn note_local(&self, txn: &WriteTransaction, c: &mut CacheCounts, hashes: &[BlockHash], tick: u64) -> Result<()> {
        if hashes.is_empty() {
            return Ok(());
        }
        let pushed = txn.open_table(PUSHED).map_err(|e| self.err("open `pushed`", e))?;
        let mut resident = txn.open_table(RESIDENT).map_err(|e| self.err("open `resident`", e))?;
        let mut lru = txn.open_table(LRU).map_err(|e| self.err("open `lru`", e))?;
        for h in hashes {
            let k = h.as_bytes();
            if pushed.get(k).map_err(|e| self.err("read `pushed`", e))?.is_none()
                || resident.get(k).map_err(|e| self.err("read `resident`", e))?.is_some()
            {
                continue;
            }
            let len = match self.blobs.stored_len(h) {
                Ok(len) => len,
                Err(Error::MissingBlob(_)) => continue,
                Err(e) => return Err(e),
            };
            resident.insert(k, (len, tick)).map_err(|e| self.err("write `resident`", e))?;
            if !is_small(len, self.small_block) {
                lru.insert((tick, k), len).map_err(|e| self.err("write `lru`", e))?;
            }
            c.resident += 1;
            c.resident_bytes += len;
        }
        Ok(())
    }

    /// Moves the noted reads' blocks in `lru` to their new last use.
    fn apply_touches(&self, txn: &WriteTransaction, touches: &HashMap<BlockHash, u64>) -> Result<()> {
        if touches.is_empty() {
            return Ok(());
        }
        let mut resident = txn.open_table(RESIDENT).map_err(|e| self.err("open `resident`", e))?;
        let mut lru = txn.open_table(LRU).map_err(|e| self.err("open `lru`", e))?;
        for (h, &tick) in touches {
            self.move_to(&mut resident, &mut lru, h, tick)?;
        }
        Ok(())
    }

    fn move_to(
        &self,
        resident: &mut redb::Table<&[u8], (u64, u64)>,
        lru: &mut redb::Table<(u64, &[u8]), u64>,
        h: &BlockHash,
        tick: u64,
    ) -> Result<()> {
        let k = h.as_bytes();
        let Some((len, old)) = resident.get(k).map_err(|e| self.err("read `resident`", e))?.map(|v| v.value()) else {
            return Ok(());
        };
        if old >= tick {
            return Ok(());
        }
        resident.insert(k, (len, tick)).map_err(|e| self.err("write `resident`", e))?;
        if lru.remove((old, k)).map_err(|e| self.err("write `lru`", e))?.is_some() {
            lru.insert((tick, k), len).map_err(|e| self.err("write `lru`", e))?;
        }
        Ok(())
    }

    /// Whether `hash` is on the remote.
    pub fn is_pushed(&self, hash: &BlockHash) -> bool {
        let Some(db) = &self.db else { return false };
        let found = (|| -> Result<bool> {
            let txn = db.begin_read().map_err(|e| self.err("begin a read", e))?;
            let t = txn.open_table(PUSHED).map_err(|e| self.err("open `pushed`", e))?;
            Ok(t.get(hash.as_bytes()).map_err(|e| self.err("read `pushed`", e))?.is_some())
        })();
        found.unwrap_or_else(|e| {
            // Not pushed is the safe answer: it is pushed again, never evicted.
            tracing::warn!("{e}");
            false
        })
    }

    /// Records `hashes` as on the remote (those local become eviction
    /// candidates, used now).
    pub fn mark_pushed(&self, hashes: &[BlockHash]) -> Result<()> {
        let hash_size = self.blobs.hash_size();
        if let Some(h) = hashes.iter().find(|h| h.as_bytes().len() != hash_size) {
            return Err(Error::Invalid(format!(
                "{}: {}-byte hash {h} in a data dir of {hash_size}-byte hashes",
                self.path.display(),
                h.as_bytes().len()
            )));
        }
        if hashes.is_empty() {
            return Ok(());
        }
        self.write(false, |txn, c| {
            {
                let mut pushed = txn.open_table(PUSHED).map_err(|e| self.err("open `pushed`", e))?;
                for h in hashes {
                    if pushed.insert(h.as_bytes(), ()).map_err(|e| self.err("write `pushed`", e))?.is_none() {
                        c.pushed += 1;
                    }
                }
            }
            self.note_local(txn, c, hashes, now_tick())
        })?;
        Ok(())
    }

    /// How many blocks are recorded as pushed.
    pub fn pushed_count(&self) -> usize {
        usize::try_from(lock(&self.counts).pushed).unwrap_or(usize::MAX)
    }

    /// The counters as last written (see [`Cache::flush`]).
    pub fn counts(&self) -> CacheCounts {
        *lock(&self.counts)
    }

    /// Notes a read of `hash` now (written to `lru` later, see the module
    /// docs).
    pub fn touch(&self, hash: &BlockHash) {
        if self.db.is_none() {
            return;
        }
        let tick = now_tick();
        let full = {
            let mut t = lock(&self.touches);
            if t.get(hash) == Some(&tick) {
                return;
            }
            t.insert(*hash, tick);
            t.len() >= TOUCH_BUFFER_MAX
        };
        if full {
            if let Err(e) = self.flush(false) {
                tracing::warn!("noting the blocks read: {e}");
            }
        }
    }

    /// Writes the noted reads and the store's changes to the file (made
    /// durable with `durable`).
    pub fn flush(&self, durable: bool) -> Result<()> {
        if !durable && lock(&self.touches).is_empty() {
            let changes = self.blobs.take_changes();
            if changes == crate::blob::StoreChanges::default() {
                return Ok(());
            }
            self.blobs.give_back(changes);
        }
        self.write(durable, |_, _| Ok(())).map(drop)
    }

    /// Up to `n` rows of `lru` after `after` (from the least recently used
    /// if `None`), least recently used first.
    pub fn oldest(&self, after: Option<&LruEntry>, n: usize) -> Result<Vec<LruEntry>> {
        let Some(db) = &self.db else { return Ok(Vec::new()) };
        let txn = db.begin_read().map_err(|e| self.err("begin a read", e))?;
        let t = txn.open_table(LRU).map_err(|e| self.err("open `lru`", e))?;
        let err = |e| self.err("read `lru`", e);
        let range = match after {
            Some(a) => t.range::<(u64, &[u8])>((Bound::Excluded((a.last_use, a.hash.as_bytes())), Bound::Unbounded)),
            None => t.range::<(u64, &[u8])>(..),
        }
        .map_err(err)?;
        let mut out = Vec::with_capacity(n.min(LRU_PAGE));
        for item in range.take(n) {
            let (k, v) = item.map_err(err)?;
            let (last_use, h) = k.value();
            let hash = BlockHash::from_bytes(h).map_err(|e| {
                IndexError::Corrupt { table: "lru", what: format!("bad hash {h:02x?}: {e}") }.at(&self.path)
            })?;
            out.push(LruEntry { hash, stored_len: v.value(), last_use });
        }
        Ok(out)
    }

    /// The `resident` row of `hash`: (stored length, last use).
    pub fn resident(&self, hash: &BlockHash) -> Result<Option<(u64, u64)>> {
        let Some(db) = &self.db else { return Ok(None) };
        let txn = db.begin_read().map_err(|e| self.err("begin a read", e))?;
        let t = txn.open_table(RESIDENT).map_err(|e| self.err("open `resident`", e))?;
        Ok(t.get(hash.as_bytes()).map_err(|e| self.err("read `resident`", e))?.map(|v| v.value()))
    }

    /// Records the end of an eviction pass, durably: `gone` left the store,
    /// `used` (pinned blobs the pass went by) are used now.
    pub fn evicted(&self, gone: &[LruEntry], used: &[LruEntry]) -> Result<()> {
        if gone.is_empty() && used.is_empty() {
            return Ok(());
        }
        self.write(true, |txn, c| {
            let mut resident = txn.open_table(RESIDENT).map_err(|e| self.err("open `resident`", e))?;
            let mut lru = txn.open_table(LRU).map_err(|e| self.err("open `lru`", e))?;
            for g in gone {
                let k = g.hash.as_bytes();
                if let Some((len, tick)) =
                    resident.remove(k).map_err(|e| self.err("write `resident`", e))?.map(|v| v.value())
                {
                    lru.remove((tick, k)).map_err(|e| self.err("write `lru`", e))?;
                    c.resident = c.resident.saturating_sub(1);
                    c.resident_bytes = c.resident_bytes.saturating_sub(len);
                }
            }
            let tick = now_tick();
            for u in used {
                self.move_to(&mut resident, &mut lru, &u.hash, tick)?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Lists the local store and sets `resident`, `lru` and the counters
    /// from it (see the module docs for when they drift). Costs a listing
    /// and a stat of every blob file (the listing's hashes are held for the
    /// while), and a check of every `resident` row; the rows are rewritten
    /// in one durable transaction. Last uses already recorded are kept; a
    /// blob new to `resident` is used at its file's mtime.
    pub fn recount(&self) -> Result<Recount> {
        let before = self.counts();
        if self.db.is_none() {
            return Ok(Recount { before, after: before });
        }
        // Changes from here on are the listing's; those before are dropped
        // (the listing sees them).
        let _ = self.blobs.take_changes();
        let listed = self.blobs.list()?;
        let after = self.write(true, |txn, c| {
            let pushed = txn.open_table(PUSHED).map_err(|e| self.err("open `pushed`", e))?;
            let mut resident = txn.open_table(RESIDENT).map_err(|e| self.err("open `resident`", e))?;
            let mut lru = txn.open_table(LRU).map_err(|e| self.err("open `lru`", e))?;
            let mut n =
                CacheCounts { pushed: pushed.len().map_err(|e| self.err("read `pushed`", e))?, ..Default::default() };
            for h in &listed {
                let path = self.blobs.path_of(h);
                let meta = match std::fs::metadata(&path) {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io("stat", path, e)),
                };
                let len = meta.len();
                n.store_bytes += len;
                let k = h.as_bytes();
                if pushed.get(k).map_err(|e| self.err("read `pushed`", e))?.is_none() {
                    continue;
                }
                let old = resident.get(k).map_err(|e| self.err("read `resident`", e))?.map(|v| v.value());
                let tick = old.map_or_else(
                    || {
                        meta.modified()
                            .ok()
                            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                            .map_or(0, |d| d.as_secs() / CLOCK_SECS)
                    },
                    |(_, t)| t,
                );
                if old != Some((len, tick)) {
                    resident.insert(k, (len, tick)).map_err(|e| self.err("write `resident`", e))?;
                }
                if is_small(len, self.small_block) {
                    lru.remove((tick, k)).map_err(|e| self.err("write `lru`", e))?;
                } else {
                    lru.insert((tick, k), len).map_err(|e| self.err("write `lru`", e))?;
                }
                n.resident += 1;
                n.resident_bytes += len;
            }
            // Rows of blobs no longer local go.
            let mut gone = Vec::new();
            resident
                .retain(|k, (_, tick)| {
                    let here = BlockHash::from_bytes(k).is_ok_and(|h| self.blobs.contains(&h));
                    if !here {
                        gone.push((tick, k.to_vec()));
                    }
                    here
                })
                .map_err(|e| self.err("write `resident`", e))?;
            for (tick, k) in &gone {
                lru.remove((*tick, k.as_slice())).map_err(|e| self.err("write `lru`", e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| self.err("open `meta`", e))?;
            meta.insert(META_COUNTED, 1).map_err(|e| self.err("write `meta`", e))?;
            *c = n;
            Ok(n)
        })?;
        Ok(Recount { before, after: after.unwrap_or(before) })
    }

    /// Adds the hashes of the legacy pushed-set file at `path` (if any) to
    /// `pushed`, a chunk at a time.
    fn import_legacy(&self, path: &Path) -> Result<()> {
        read_legacy(path, self.blobs.hash_size(), |hashes| {
            self.write(false, |txn, c| {
                let mut pushed = txn.open_table(PUSHED).map_err(|e| self.err("open `pushed`", e))?;
                for h in hashes {
                    if pushed.insert(h.as_bytes(), ()).map_err(|e| self.err("write `pushed`", e))?.is_none() {
                        c.pushed += 1;
                    }
                }
                Ok(())
            })
            .map(drop)
        })
    }
}

/// Calls `f` on the hashes of the legacy pushed-set file at `path` (if
/// any), a chunk at a time: an 8-byte header (magic, version 1, hash size)
/// then raw hashes; a torn header or last record is ignored.
fn read_legacy(path: &Path, hash_size: usize, mut f: impl FnMut(&[BlockHash]) -> Result<()>) -> Result<()> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let mut r = BufReader::new(file);
    let bad = |why: String| Error::Invalid(format!("{}: {why}", path.display()));
    let mut header = [0u8; LEGACY_HEADER_LEN];
    let got = read_full(&mut r, &mut header).map_err(|e| Error::io("read", path, e))?;
    if got < LEGACY_HEADER_LEN {
        return Ok(());
    }
    if &header[..6] != LEGACY_MAGIC {
        return Err(bad(format!("bad magic {:02x?} (not a syncer pushed-set file)", &header[..6])));
    }
    if header[6] != LEGACY_VERSION {
        return Err(bad(format!("version {} is not {LEGACY_VERSION}; written by another syncer", header[6])));
    }
    if usize::from(header[7]) != hash_size {
        return Err(bad(format!("holds {}-byte hashes, the data dir uses {hash_size}", header[7])));
    }
    let mut chunk = vec![0u8; hash_size * 4096];
    loop {
        let got = read_full(&mut r, &mut chunk).map_err(|e| Error::io("read", path, e))?;
        let whole = got / hash_size * hash_size;
        let mut hashes = Vec::with_capacity(whole / hash_size);
        for rec in chunk[..whole].chunks_exact(hash_size) {
            hashes.push(BlockHash::from_bytes(rec).map_err(|e| bad(format!("bad hash record: {e}")))?);
        }
        f(&hashes)?;
        if got < chunk.len() {
            return Ok(());
        }
    }
}

/// The pushed set as `syncer verify` reads it, without the writer lock.
pub(crate) enum PushedView {
    /// `cache.redb`, opened read-only.
    Db(redb::ReadOnlyDatabase, PathBuf),
    /// A data dir not yet upgraded: the legacy file's hashes.
    Legacy(std::collections::HashSet<BlockHash>),
    /// Nothing recorded.
    Empty,
    /// The file is held by the writer (a mount): unknown.
    Unknown,
}

impl PushedView {
    /// Opens the pushed set of the data dir `dir`.
    pub(crate) fn open(dir: &Path, hash_size: usize) -> Result<PushedView> {
        let path = dir.join(CACHE_FILE);
        if path.exists() {
            return Ok(match redb::Builder::new().set_cache_size(CACHE_BUDGET).open_read_only(&path) {
                Ok(db) => PushedView::Db(db, path),
                Err(e) => {
                    tracing::debug!("{}: {e}; pushed blocks unknown", path.display());
                    PushedView::Unknown
                }
            });
        }
        let mut set = std::collections::HashSet::new();
        read_legacy(&dir.join(LEGACY_FILE), hash_size, |hs| {
            set.extend(hs.iter().copied());
            Ok(())
        })?;
        Ok(if set.is_empty() { PushedView::Empty } else { PushedView::Legacy(set) })
    }

    /// Whether `hash` is recorded as pushed; `None` when that is unknown.
    pub(crate) fn contains(&self, hash: &BlockHash) -> Result<Option<bool>> {
        match self {
            PushedView::Db(db, path) => {
                let txn = db.begin_read().map_err(|e| db_err(path, "begin a read", e))?;
                let t = txn.open_table(PUSHED).map_err(|e| db_err(path, "open `pushed`", e))?;
                Ok(Some(t.get(hash.as_bytes()).map_err(|e| db_err(path, "read `pushed`", e))?.is_some()))
            }
            PushedView::Legacy(set) => Ok(Some(set.contains(hash))),
            PushedView::Empty => Ok(Some(false)),
            PushedView::Unknown => Ok(None),
        }
    }
}

/// Reads until `buf` is full or the end; how many bytes it read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl Drop for Cache {
    fn drop(&mut self) {
        let closed = self.write(true, |txn, _| {
            let mut meta = txn.open_table(META).map_err(|e| self.err("open `meta`", e))?;
            meta.insert(META_IN_USE, 0).map_err(|e| self.err("write `meta`", e))?;
            Ok(())
        });
        if let Err(e) = closed {
            tracing::warn!("writing the cache bookkeeping at close: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
