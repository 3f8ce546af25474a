//! [`BlobStore`]: puts, reads, syncs and removals of blob files.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::codec::{
    decode_blob, decode_blob_window, decode_header, encode_blob, worth_compressing, BlobHeader, Codec, MAX_RAW_LEN,
};
use super::deferral::{Costs, Deferral, DeferralStats};
use super::room::{disk_space, reserve_on, ROOM_RECHECK};
use super::{DEFERRED_MAX, KNOWN_CAPACITY, SAMPLE_ABOVE, TEMP_PREFIX};
use crate::error::{Error, Result};
use crate::event::BlockRef;
use crate::ids::{BlockHash, MAX_HASH_SIZE, MIN_HASH_SIZE};
use crate::storage::{ByteWindow, Storage};

/// What [`BlobStore::put`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PutOutcome {
    /// The block's address and uncompressed length.
    pub block: BlockRef,
    /// Size of the blob file (header included).
    pub stored_len: u64,
    /// `true` if this call wrote the file; `false` on a dedupe hit.
    pub new: bool,
}

#[derive(Clone, Copy, Debug)]
struct KnownState {
    stored_len: u64,
    /// Synced by this process's `sync_pending`.
    durable: bool,
}

/// A bounded set of hashes whose files were verified (or written) by this
/// process; evicted first in, first out.
#[derive(Default)]
struct Known {
    map: HashMap<BlockHash, KnownState>,
    order: VecDeque<BlockHash>,
    /// Bumped by every [`BlobStore::remove`]: a read that began before an
    /// eviction must not record as present a blob the eviction deleted.
    evictions: u64,
}

impl Known {
    fn get(&self, h: &BlockHash) -> Option<KnownState> {
        self.map.get(h).copied()
    }

    fn insert(&mut self, h: BlockHash, stored_len: u64, durable: bool) {
        match self.map.get_mut(&h) {
            Some(s) => {
                s.stored_len = stored_len;
                s.durable |= durable;
            }
            None => {
                self.map.insert(h, KnownState { stored_len, durable });
                self.order.push_back(h);
                while self.order.len() > KNOWN_CAPACITY {
                    if let Some(old) = self.order.pop_front() {
                        self.map.remove(&old);
                    }
                }
            }
        }
    }
}

/// Blobs put but not yet synced.
#[derive(Default)]
struct Pending {
    blobs: HashSet<BlockHash>,
    /// Fan-out folders created since the last sync (their entry in `blobs/`
    /// must be synced too).
    new_dirs: bool,
}

/// called from many threads at once.
/// The block store. `Send + Sync`: every method takes `&self` and may be
pub struct BlobStore {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    hash_size: usize,
    level: i32,
    /// Fan-out folders known to exist, by first hash byte.
    dirs_ok: Vec<AtomicBool>,
    known: Mutex<Known>,
    pending: Mutex<Pending>,
    /// Held for a whole `sync_pending`, so a caller never returns from it
    /// while another call is still syncing blobs it took over.
    sync_lock: Mutex<()>,
    /// Compression now or later (see *Compressing under load*).
    deferral: Deferral,
    /// Free disk space that a new blob never uses (see [`BlobStore::put`]).
    reserve: AtomicU64,
    /// Bytes that may still be stored before the free space is looked at
    /// again (see `check_room`).
    unchecked: AtomicU64,
    /// What changed since the cache bookkeeping last took it (see
    /// [`BlobStore::take_changes`]).
    changes: Mutex<StoreChanges>,
}

/// How the store changed since [`BlobStore::take_changes`] was last called:
/// what the cache bookkeeping (`cache`) needs to keep its byte counter and
/// its eviction candidates without listing the store.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoreChanges {
    /// Net change of the bytes of all blob files (writes, recompressions,
    /// removals).
    pub bytes: i64,
    /// Blobs written, oldest first, at most [`CHANGES_WRITTEN_MAX`].
    pub written: Vec<BlockHash>,
    /// More blobs were written than `written` holds.
    pub overflowed: bool,
}

/// Most written blobs [`StoreChanges`] names between two takes (bounded
/// memory; past it only the byte count is kept).
pub const CHANGES_WRITTEN_MAX: usize = 16_384;

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStore")
            .field("dir", &self.dir)
            .field("hash_size", &self.hash_size)
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data are caches and sets that stay consistent on panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Where the blob `hash` lives under the blob folder:
/// `<first two hex digits>/<hex>`.
pub(crate) fn relative_path(hash: &BlockHash) -> PathBuf {
    let hex = hash.to_hex();
    Path::new(&hex[..2]).join(&hex)
}

impl BlobStore {
    /// Opens (creating if missing) the store in `blobs_dir` for a data dir
    /// with `hash_size`-byte hashes, compressing at zstd `level` (0 = off).
    pub fn open(
        storage: Arc<dyn Storage>,
        blobs_dir: impl Into<PathBuf>,
        hash_size: usize,
        level: i32,
    ) -> Result<Self> {
        let dir = blobs_dir.into();
        if !(MIN_HASH_SIZE..=MAX_HASH_SIZE).contains(&hash_size) {
            return Err(Error::Invalid(format!(
                "blob store {}: hash size {hash_size} is not within {MIN_HASH_SIZE}..={MAX_HASH_SIZE}",
                dir.display()
            )));
        }
        if !storage.exists(&dir) {
            storage.create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                storage.sync_dir(parent).map_err(|e| Error::io("sync", parent, e))?;
            }
        }
        Ok(BlobStore {
            storage,
            dir,
            hash_size,
            level,
            dirs_ok: (0..256).map(|_| AtomicBool::new(false)).collect(),
            known: Mutex::default(),
            pending: Mutex::default(),
            sync_lock: Mutex::new(()),
            deferral: Deferral::new(),
            reserve: AtomicU64::new(0),
            unchecked: AtomicU64::new(0),
            changes: Mutex::default(),
        })
    }

    /// The folder holding the fan-out folders.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data dir's hash size in bytes.
    pub fn hash_size(&self) -> usize {
        self.hash_size
    }

    /// Where the blob `hash` lives (whether or not it exists).
    pub fn path_of(&self, hash: &BlockHash) -> PathBuf {
        self.dir.join(relative_path(hash))
    }

    /// A new temp file name in the fan-out folder of `hash`.
    fn temp_path(&self, hash: &BlockHash) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.fanout_of(hash).join(format!("{TEMP_PREFIX}{}-{n}", std::process::id()))
    }

    fn fanout_of(&self, hash: &BlockHash) -> PathBuf {
        let hex = hash.to_hex();
        self.dir.join(&hex[..2])
    }

    fn corrupt(&self, hash: &BlockHash, reason: impl fmt::Display) -> Error {
        Error::CorruptBlob { hash: *hash, path: self.path_of(hash), reason: reason.to_string() }
    }

    /// Refuses a hash of another size than the store's.
    fn check_hash(&self, hash: &BlockHash) -> Result<()> {
        if hash.as_bytes().len() != self.hash_size {
            return Err(Error::Invalid(format!(
                "blob {hash}: {}-byte hash in a store of {}-byte hashes",
                hash.as_bytes().len(),
                self.hash_size
            )));
        }
        Ok(())
    }

    /// Stores `data` (a block of at most [`MAX_RAW_LEN`] bytes) and returns
    /// its address. An existing valid blob is not rewritten. Not synced: see
    /// [`BlobStore::sync_pending`].
    pub fn put(&self, data: &[u8]) -> Result<PutOutcome> {
        let len = u32::try_from(data.len())
            .ok()
            .filter(|l| *l <= MAX_RAW_LEN)
            .ok_or_else(|| Error::Invalid(format!("block of {} bytes is larger than {MAX_RAW_LEN}", data.len())))?;
        self.deferral.touch();
        let hash = BlockHash::of(data, self.hash_size);
        let block = BlockRef { hash, len };
        if let Some(stored_len) = self.existing(&hash)? {
            return Ok(PutOutcome { block, stored_len, new: false });
        }
        let (stored, deferred) = self.encode_under_load(data);
        self.check_room(stored.len() as u64)?;
        self.write(&hash, &stored)?;
        if deferred {
            self.defer(hash);
        }
        Ok(PutOutcome { block, stored_len: stored.len() as u64, new: true })
    }

    /// How the store changed since the last call (see [`StoreChanges`]).
    pub fn take_changes(&self) -> StoreChanges {
        std::mem::take(&mut *lock(&self.changes))
    }

    /// Puts back changes taken by [`BlobStore::take_changes`] that the
    /// taker could not record (they count again at the next take).
    pub fn give_back(&self, back: StoreChanges) {
        let mut c = lock(&self.changes);
        c.bytes += back.bytes;
        c.overflowed |= back.overflowed;
        let room = CHANGES_WRITTEN_MAX.saturating_sub(c.written.len());
        c.overflowed |= back.written.len() > room;
        c.written.extend(back.written.into_iter().take(room));
    }

    fn note_change(&self, bytes: i64, written: Option<&BlockHash>) {
        let mut c = lock(&self.changes);
        c.bytes += bytes;
        if let Some(h) = written {
            if c.written.len() < CHANGES_WRITTEN_MAX {
                c.written.push(*h);
            } else {
                c.overflowed = true;
            }
        }
    }

    /// Sets the free disk space that new blobs never use (0: none).
    pub(crate) fn set_reserve(&self, bytes: u64) {
        self.reserve.store(bytes, Ordering::Relaxed);
    }

    /// Free bytes on the store's filesystem above the reserve (`None`: the
    /// filesystem cannot be asked).
    pub fn room(&self) -> Option<u64> {
        let (free, total) = disk_space(&self.dir)?;
        Some(free.saturating_sub(reserve_on(self.reserve.load(Ordering::Relaxed), total)))
    }

    /// Fails with ENOSPC when writing `bytes` would leave less free space on
    /// the store's filesystem than the reserve: the log, the index and a
    /// clean unmount keep that room, so a full disk refuses new data early
    /// and cleanly instead of failing in the middle of an index commit.
    ///
    /// The free space is not asked for every block: a look leaves a budget
    /// of half the room above the reserve (at most [`ROOM_RECHECK`]), since
    /// other writers and programs use the disk too, and puts spend it.
    fn check_room(&self, bytes: u64) -> Result<()> {
        let reserve = self.reserve.load(Ordering::Relaxed);
        if reserve == 0 {
            return Ok(());
        }
        let spent = self.unchecked.fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| left.checked_sub(bytes));
        if spent.is_ok() {
            return Ok(());
        }
        let Some((free, total)) = disk_space(&self.dir) else { return Ok(()) };
        let keep = reserve_on(reserve, total).saturating_add(bytes);
        if free < keep {
            self.unchecked.store(0, Ordering::Release);
            return Err(Error::Io {
                op: "store a block: free space is down to the data dir's reserve; free some (see README, A full disk)",
                path: self.dir.clone(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            });
        }
        self.unchecked.store(((free - keep) / 2).min(ROOM_RECHECK), Ordering::Release);
        Ok(())
    }

    /// Encodes a block for a put: compressed if it is small (no sample
    /// would tell, and it is quick), or if compressing pays now and a
    /// compression slot is free; else raw, and then `true` if its sample
    /// says it is worth compressing later.
    fn encode_under_load(&self, data: &[u8]) -> (Vec<u8>, bool) {
        let d = &self.deferral;
        if data.len() <= SAMPLE_ABOVE {
            return (encode_blob(data, self.level), false);
        }
        if self.level <= 0 {
            return (encode_blob(data, 0), false);
        }
        if d.costs.compress_pays_now() {
            let slots = d.slots.load(Ordering::Relaxed);
            let slot_free = d.compressing.fetch_add(1, Ordering::AcqRel) < slots;
            let out = slot_free.then(|| self.encode_timed(data));
            d.compressing.fetch_sub(1, Ordering::AcqRel);
            if let Some(out) = out {
                return (out, false);
            }
        }
        (encode_blob(data, 0), worth_compressing(data, self.level))
    }

    /// [`encode_blob`] at the store's level, its time noted in the costs.
    fn encode_timed(&self, data: &[u8]) -> Vec<u8> {
        let t = Instant::now();
        let out = encode_blob(data, self.level);
        Costs::note(&self.deferral.costs.compress_ns, t.elapsed().as_nanos(), data.len());
        out
    }

    fn defer(&self, hash: BlockHash) {
        let mut q = lock(&self.deferral.queue);
        if q.len() < DEFERRED_MAX {
            q.push_back(hash);
            self.deferral.deferred.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many puts may compress at once (see *Compressing under load*).
    pub fn compress_slots(&self) -> usize {
        self.deferral.slots.load(Ordering::Relaxed)
    }

    /// Sets [`BlobStore::compress_slots`]: 0 defers every compressible block
    /// (tests), a large number compresses every block as it comes.
    pub fn set_compress_slots(&self, slots: usize) {
        self.deferral.slots.store(slots, Ordering::Relaxed);
    }

    /// Counters of compression under load.
    pub fn deferral_stats(&self) -> DeferralStats {
        let d = &self.deferral;
        DeferralStats {
            deferred: d.deferred.load(Ordering::Relaxed),
            compressed_later: d.compressed_later.load(Ordering::Relaxed),
            queued: lock(&d.queue).len() as u64 + d.in_hand.load(Ordering::Relaxed),
        }
    }

    /// How long since a put or a read last began.
    pub(crate) fn idle_for(&self) -> Duration {
        let d = &self.deferral;
        Duration::from_millis(d.now_ms().saturating_sub(d.last_use_ms.load(Ordering::Relaxed)))
    }

    /// Compresses blobs queued by puts under load, oldest first, while
    /// `go_on` says so (asked before each blob) and the queue lasts.
    /// Returns how many it replaced. A blob gone (evicted) or already
    /// compressed is skipped; one that does not read back as its block is
    /// left alone for reads to report.
    pub fn compress_deferred(&self, mut go_on: impl FnMut() -> bool) -> Result<u64> {
        let mut replaced = 0;
        let d = &self.deferral;
        while go_on() {
            let hash = {
                let mut q = lock(&d.queue);
                let Some(hash) = q.pop_front() else { break };
                d.in_hand.fetch_add(1, Ordering::Relaxed);
                hash
            };
            let done = self.compress_one(&hash);
            if matches!(done, Ok(true)) {
                replaced += 1;
                d.compressed_later.fetch_add(1, Ordering::Relaxed);
            }
            d.in_hand.fetch_sub(1, Ordering::Relaxed);
            done?;
        }
        Ok(replaced)
    }

    /// Replaces the raw blob `hash` by a compressed one, if it still
    /// exists and compressing pays. Whether it did.
    fn compress_one(&self, hash: &BlockHash) -> Result<bool> {
        let path = self.path_of(hash);
        let stored = match self.storage.read(&path) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("read", path, e)),
        };
        if !matches!(decode_header(&stored), Ok(BlobHeader { codec: Codec::Raw, .. })) {
            return Ok(false);
        }
        let data = match decode_blob(&stored, hash) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(blob = %hash, path = %path.display(), "not compressing a damaged blob: {e}");
                return Ok(false);
            }
        };
        let packed = self.encode_timed(&data);
        if !matches!(decode_header(&packed), Ok(BlobHeader { codec: Codec::Zstd, .. })) {
            return Ok(false);
        }
        let tmp = self.temp_path(hash);
        let written = self
            .storage
            .write_streaming(&tmp, &packed)
            .and_then(|()| self.storage.sync_file(&tmp))
            .map_err(|e| Error::io("write", &tmp, e));
        // Under the sync lock, so that an eviction (which takes it too)
        // either happens first, and the blob is not brought back, or after.
        let _sync = lock(&self.sync_lock);
        let replaced = written.and_then(|()| {
            if !self.storage.exists(&path) {
                return Ok(false);
            }
            self.storage.rename(&tmp, &path).map_err(|e| Error::io("rename", &tmp, e))?;
            // The old blob may be durable and referenced by the durable log:
            // its replacement must be as durable before anyone moves on.
            let fanout = self.fanout_of(hash);
            self.storage.sync_dir(&fanout).map_err(|e| Error::io("sync", &fanout, e))?;
            Ok(true)
        });
        if !matches!(replaced, Ok(true)) {
            let _ = self.storage.remove_file(&tmp);
        }
        if matches!(replaced, Ok(true)) {
            self.note_change(packed.len() as i64 - stored.len() as i64, None);
            let mut known = lock(&self.known);
            if let Some(k) = known.get(hash) {
                known.map.insert(*hash, KnownState { stored_len: packed.len() as u64, ..k });
            }
        }
        replaced
    }

    /// Stores a blob file fetched from elsewhere (a remote) as is, after
    /// checking that it decodes to `hash`. Not synced, like [`BlobStore::put`].
    pub fn put_raw_verified(&self, hash: &BlockHash, stored: &[u8]) -> Result<PutOutcome> {
        self.put_raw_verified_data(hash, stored).map(|(outcome, _)| outcome)
    }

    /// [`BlobStore::put_raw_verified`], also handing back the decoded bytes
    /// (a fetch that reads the block decodes it once, not twice).
    pub(crate) fn put_raw_verified_data(&self, hash: &BlockHash, stored: &[u8]) -> Result<(PutOutcome, Vec<u8>)> {
        self.check_hash(hash)?;
        let data = decode_blob(stored, hash).map_err(|e| self.corrupt(hash, format!("fetched copy: {e}")))?;
        let block = BlockRef { hash: *hash, len: data.len() as u32 };
        if let Some(stored_len) = self.existing(hash)? {
            return Ok((PutOutcome { block, stored_len, new: false }, data));
        }
        self.write(hash, stored)?;
        Ok((PutOutcome { block, stored_len: stored.len() as u64, new: true }, data))
    }

    /// On a dedupe hit, the stored length of the valid existing blob (and
    /// the blob is queued for the next sync unless this process synced it).
    /// `None` if it must be written: absent, or a damaged leftover.
    fn existing(&self, hash: &BlockHash) -> Result<Option<u64>> {
        if let Some(k) = lock(&self.known).get(hash) {
            if !k.durable {
                lock(&self.pending).blobs.insert(*hash);
            }
            return Ok(Some(k.stored_len));
        }
        let path = self.path_of(hash);
        if !self.storage.exists(&path) {
            return Ok(None);
        }
        let stored = match self.storage.read(&path) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", path, e)),
        };
        match decode_blob(&stored, hash) {
            Ok(_) => {
                // Valid, but maybe only in the page cache of a process that
                // died before syncing it: sync it before anyone relies on it.
                lock(&self.known).insert(*hash, stored.len() as u64, false);
                lock(&self.pending).blobs.insert(*hash);
                Ok(Some(stored.len() as u64))
            }
            Err(e) => {
                tracing::warn!(blob = %hash, path = %path.display(), "replacing damaged blob: {e}");
                Ok(None)
            }
        }
    }

    /// Writes a blob file through a temp file and a rename; queues it for sync.
    fn write(&self, hash: &BlockHash, stored: &[u8]) -> Result<()> {
        let fanout = self.fanout_of(hash);
        let first = usize::from(hash.as_bytes()[0]);
        if !self.dirs_ok[first].load(Ordering::Acquire) {
            if !self.storage.exists(&fanout) {
                self.storage.create_dir_all(&fanout).map_err(|e| Error::io("create", &fanout, e))?;
                lock(&self.pending).new_dirs = true;
            }
            self.dirs_ok[first].store(true, Ordering::Release);
        }
        let tmp = self.temp_path(hash);
        let path = self.path_of(hash);
        let t = Instant::now();
        self.storage.write_streaming(&tmp, stored).map_err(|e| Error::io("write", &tmp, e))?;
        Costs::note(&self.deferral.costs.write_ns, t.elapsed().as_nanos(), stored.len());
        // A damaged leftover being replaced no longer counts.
        let replaced = self.storage.file_len(&path).unwrap_or(0);
        if let Err(e) = self.storage.rename(&tmp, &path) {
            let _ = self.storage.remove_file(&tmp);
            return Err(Error::io("rename", &tmp, e));
        }
        self.note_change(stored.len() as i64 - replaced as i64, Some(hash));
        // Pending before known: whoever sees it known finds it queued.
        lock(&self.pending).blobs.insert(*hash);
        lock(&self.known).insert(*hash, stored.len() as u64, false);
        Ok(())
    }

    /// Makes every blob put (or found unsynced) since the last call durable:
    /// syncs each file, then each fan-out folder holding one, then `blobs/`
    /// itself if a fan-out folder was created. Call it before committing a
    /// log event that references those blobs. On error, the blobs stay queued.
    pub fn sync_pending(&self) -> Result<()> {
        let _sync = lock(&self.sync_lock);
        let (mut blobs, new_dirs) = {
            let mut p = lock(&self.pending);
            (std::mem::take(&mut p.blobs), std::mem::take(&mut p.new_dirs))
        };
        if blobs.is_empty() && !new_dirs {
            return Ok(());
        }
        let missing = Mutex::new(Vec::new());
        let res = self.sync_batch(&blobs, new_dirs, &missing);
        let missing = missing.into_inner().unwrap_or_else(|e| e.into_inner());
        if res.is_err() {
            // A missing blob is not queued again (it would fail every later
            // sync) and is forgotten, so that the next put writes it again.
            let mut known = lock(&self.known);
            for h in &missing {
                blobs.remove(h);
                known.map.remove(h);
            }
            drop(known);
            let mut p = lock(&self.pending);
            p.blobs.extend(blobs);
            p.new_dirs |= new_dirs;
        } else {
            let mut known = lock(&self.known);
            for h in &blobs {
                if let Some(k) = known.get(h) {
                    known.insert(*h, k.stored_len, true);
                }
            }
        }
        res
    }

    /// Syncs `blobs` and their folders. A blob whose file is gone is added
    /// to `missing` and fails the batch with [`Error::MissingBlob`]: an event
    /// that refers to it must not become durable.
    fn sync_batch(&self, blobs: &HashSet<BlockHash>, new_dirs: bool, missing: &Mutex<Vec<BlockHash>>) -> Result<()> {
        let files: Vec<(BlockHash, PathBuf)> = blobs.iter().map(|h| (*h, self.path_of(h))).collect();
        let sync_files = |chunk: &[(BlockHash, PathBuf)]| -> Result<()> {
            let mut gone = None;
            for (h, p) in chunk {
                match self.storage.sync_file(p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        lock(missing).push(*h);
                        gone = Some(*h);
                    }
                    Err(e) => return Err(Error::io("sync", p, e)),
                }
            }
            gone.map_or(Ok(()), |h| Err(Error::MissingBlob(h)))
        };
        // fsyncs are latency-bound: spread a big batch over a few threads.
        const PER_THREAD: usize = 32;
        if files.len() > PER_THREAD {
            let threads = files.len().div_ceil(PER_THREAD).min(8);
            let chunk = files.len().div_ceil(threads);
            std::thread::scope(|s| {
                let handles: Vec<_> = files.chunks(chunk).map(|c| s.spawn(move || sync_files(c))).collect();
                handles.into_iter().try_for_each(|h| {
                    h.join().unwrap_or_else(|_| Err(Error::Invalid("blob sync thread panicked".into())))
                })
            })?;
        } else {
            sync_files(&files)?;
        }
        let dirs: HashSet<PathBuf> = blobs.iter().map(|h| self.fanout_of(h)).collect();
        for d in &dirs {
            self.storage.sync_dir(d).map_err(|e| Error::io("sync", d, e))?;
        }
        if new_dirs {
            self.storage.sync_dir(&self.dir).map_err(|e| Error::io("sync", &self.dir, e))?;
        }
        Ok(())
    }

    /// The block `hash`, verified. [`Error::MissingBlob`] if it is not stored
    /// here; [`Error::CorruptBlob`] naming the file if it does not decode to
    /// its address.
    pub fn get(&self, hash: &BlockHash) -> Result<Vec<u8>> {
        self.get_window(hash, false).map(ByteWindow::into_vec)
    }

    /// [`BlobStore::get`], handed back in the buffer the blob was read into
    /// (a raw block is not copied past its header). `streaming`: a block
    /// read once (ahead of a sequential reader), read past the OS's cache
    /// where it can be (see [`Storage::read_streaming`]).
    pub(crate) fn get_window(&self, hash: &BlockHash, streaming: bool) -> Result<ByteWindow> {
        self.deferral.touch();
        let evictions = lock(&self.known).evictions;
        let stored = if streaming {
            self.read_file(hash, |p| self.storage.read_streaming(p))?
        } else {
            self.read_file(hash, |p| self.storage.read(p))?.into()
        };
        let stored_len = stored.len() as u64;
        let data = decode_blob_window(stored, hash).map_err(|e| self.corrupt(hash, e))?;
        self.note_read(hash, stored_len, evictions);
        Ok(data)
    }

    /// Records that a read found a valid blob `hash` of `stored_len` bytes,
    /// unless an eviction ran since the read began (`evictions` then): the
    /// file may be gone, and a put trusting this would not write it again.
    fn note_read(&self, hash: &BlockHash, stored_len: u64, evictions: u64) {
        let mut known = lock(&self.known);
        if known.evictions == evictions {
            known.insert(*hash, stored_len, false);
        }
    }

    /// The blob file of `hash` read with `read`; [`Error::MissingBlob`] if
    /// there is none.
    fn read_file<T>(&self, hash: &BlockHash, read: impl FnOnce(&Path) -> io::Result<T>) -> Result<T> {
        let path = self.path_of(hash);
        match read(&path) {
            Ok(s) => Ok(s),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::MissingBlob(*hash)),
            Err(e) => Err(Error::io("read", path, e)),
        }
    }

    /// Whether a file for `hash` exists (not verified).
    pub fn contains(&self, hash: &BlockHash) -> bool {
        self.storage.exists(&self.path_of(hash))
    }

    /// Size of the blob file for `hash` (header included).
    pub fn stored_len(&self, hash: &BlockHash) -> Result<u64> {
        let path = self.path_of(hash);
        match self.storage.file_len(&path) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::MissingBlob(*hash)),
            Err(e) => Err(Error::io("stat", path, e)),
        }
    }

    /// Deletes the blob `hash` (cache eviction). Returns whether it existed.
    /// Not synced: a crash may bring it back, which is harmless.
    pub fn remove(&self, hash: &BlockHash) -> Result<bool> {
        // Never while a sync runs: it may have taken this blob off the
        // pending set and would then find its file gone.
        let _sync = lock(&self.sync_lock);
        let path = self.path_of(hash);
        {
            let mut known = lock(&self.known);
            known.map.remove(hash);
            known.evictions += 1;
        }
        lock(&self.pending).blobs.remove(hash);
        let len = self.storage.file_len(&path).unwrap_or(0);
        match self.storage.remove_file(&path) {
            Ok(()) => {
                self.note_change(-(len as i64), None);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("remove", path, e)),
        }
    }

    /// Every stored blob's address (unverified), in no particular order.
    /// Names that are not blobs of this store are skipped with a warning;
    /// temp files are ignored.
    pub fn list(&self) -> Result<Vec<BlockHash>> {
        let mut out = Vec::new();
        let top = match self.storage.list_dir(&self.dir) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io("list", &self.dir, e)),
        };
        for fan in top {
            let Some(fan_name) = fan.to_str().filter(|n| is_fanout_name(n)) else {
                tracing::warn!(path = %self.dir.join(&fan).display(), "not a blob folder; skipped");
                continue;
            };
            let fan_dir = self.dir.join(fan_name);
            let names = match self.storage.list_dir(&fan_dir) {
                Ok(n) => n,
                Err(e) => return Err(Error::io("list", &fan_dir, e)),
            };
            for name in names {
                if is_temp(&name) {
                    continue;
                }
                match self.parse_name(fan_name, &name) {
                    Some(h) => out.push(h),
                    None => {
                        tracing::warn!(path = %fan_dir.join(&name).display(), "not a blob file name; skipped")
                    }
                }
            }
        }
        Ok(out)
    }

    fn parse_name(&self, fan: &str, name: &OsStr) -> Option<BlockHash> {
        let name = name.to_str()?;
        if name.len() != 2 * self.hash_size || !name.starts_with(fan) {
            return None;
        }
        name.parse().ok()
    }

    /// Deletes temp files left by an interrupted put (e.g. a crash). Call it
    /// only while no put runs (at open, before serving). Returns how many.
    pub fn remove_temp_files(&self) -> Result<usize> {
        let mut removed = 0;
        let top = match self.storage.list_dir(&self.dir) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io("list", &self.dir, e)),
        };
        for fan in top.iter().filter_map(|f| f.to_str()).filter(|f| is_fanout_name(f)) {
            let fan_dir = self.dir.join(fan);
            let names = self.storage.list_dir(&fan_dir).map_err(|e| Error::io("list", &fan_dir, e))?;
            for name in names.iter().filter(|n| is_temp(n)) {
                let p = fan_dir.join(name);
                match self.storage.remove_file(&p) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("remove", p, e)),
                }
            }
        }
        Ok(removed)
    }
}

fn is_fanout_name(n: &str) -> bool {
    n.len() == 2 && n.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_temp(name: &OsStr) -> bool {
    name.as_encoded_bytes().starts_with(TEMP_PREFIX.as_bytes())
}

#[cfg(test)]
mod tests;
