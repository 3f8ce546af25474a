//! The store: what the live tree and a point-in-time view share. The
//! layout of a data dir, its FORMAT and config, the storage backend, the
//! blob store with its residency bookkeeping and remote source, the writer
//! lock and the compressor thread.
//!
//! Always true:
//! - a store is opened only after FORMAT was checked (and older data dirs
//!   upgraded) and the config validated;
//! - a store opened for writing holds the writer lock (`<data>/lock`) for
//!   its whole life, so one process writes a data dir; one opened for
//!   reading never takes it;
//! - a block handed out was verified against its hash, whether it was read
//!   locally or fetched from the [`BlockSource`]; a fetched block is stored
//!   and recorded as pushed (it is on the remote) before it is returned;
//! - the store knows nothing of the tree: which blocks belong to which file
//!   is the business of the [`TreeRead`](crate::TreeRead) implementations.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::blob::BlobStore;
use crate::cache::{BlockSource, Cache};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::format;
use crate::ids::{BlockHash, MachineId};
use crate::storage::{ByteWindow, FsStorage, Storage};

/// The files and folders of a data dir.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The data dir.
    pub dir: PathBuf,
}

impl Layout {
    /// `config.toml`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    /// `log/`: one folder per machine.
    pub fn log(&self) -> PathBuf {
        self.dir.join("log")
    }
    /// `blobs/`.
    pub fn blobs(&self) -> PathBuf {
        self.dir.join("blobs")
    }
    /// `index.redb`.
    pub fn index(&self) -> PathBuf {
        self.dir.join("index.redb")
    }
    /// `history.redb`: the index that point-in-time views read (see
    /// [`Engine::open_at`]); derived from the log like `index.redb`.
    pub fn history_index(&self) -> PathBuf {
        self.dir.join("history.redb")
    }
    /// `history.lock`: held shared (flock) by every point-in-time view,
    /// exclusive by the one bringing `history.redb` up to date.
    pub fn history_lock(&self) -> PathBuf {
        self.dir.join("history.lock")
    }
    /// `lock`: held (flock) by the one process that writes.
    pub fn lock(&self) -> PathBuf {
        self.dir.join("lock")
    }
    /// `dirty`: exists while a writer has the data dir open; found at open,
    /// it means the last writer did not close cleanly.
    pub fn dirty(&self) -> PathBuf {
        self.dir.join("dirty")
    }
}

/// Whether a store is opened to write (taking the writer lock) or to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// The one writer: takes `<data>/lock`, compresses in the background.
    Write,
    /// A reader beside it: takes no lock.
    Read,
}

/// The parts of an open data dir both trees share. `Send + Sync`.
pub struct Store {
    layout: Layout,
    config: Config,
    storage: Arc<dyn Storage>,
    blobs: Arc<BlobStore>,
    /// Compresses blobs stored raw under load (writable stores that
    /// compress).
    compressor: Mutex<Option<Compressor>>,
    /// Residency bookkeeping of the bounded block cache.
    cache: Cache,
    /// Where blocks missing locally come from (the remote), if anywhere.
    source: RwLock<Option<Arc<dyn BlockSource>>>,
    /// Told the blocks to fetch ahead of a reader (see
    /// [`Store::request_prefetch`]).
    prefetchers: Mutex<Vec<std::sync::mpsc::Sender<Vec<BlockHash>>>>,
    /// The writer lock, held for the store's life (writable stores).
    _lock: Option<File>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.layout.dir).finish_non_exhaustive()
    }
}

impl Store {
    /// Creates a new data dir at `dir` (which must be missing or empty).
    pub fn init(dir: &Path, config: Config) -> Result<()> {
        if dir.exists() {
            let mut entries = std::fs::read_dir(dir).map_err(|e| Error::io("read", dir, e))?;
            if entries.next().is_some() {
                return Err(Error::Invalid(format!("{}: not empty; refusing to init over it", dir.display())));
            }
        }
        Self::init_with(&FsStorage, dir, config)
    }

    /// [`Store::init`] through another storage backend (crash tests).
    pub fn init_with(storage: &dyn Storage, dir: &Path, config: Config) -> Result<()> {
        config.validate().map_err(|reason| Error::BadConfig { path: dir.join("config.toml"), reason })?;
        storage.create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        let layout = Layout { dir: dir.to_path_buf() };
        config.save(storage, &layout.config())?;
        for sub in [layout.log(), layout.blobs()] {
            storage.create_dir_all(&sub).map_err(|e| Error::io("create", &sub, e))?;
        }
        format::write_new(storage, dir)?;
        storage.sync_dir(dir).map_err(|e| Error::io("sync", dir, e))?;
        Ok(())
    }

    /// Opens the shared parts of `dir`: checks FORMAT (upgrading older data
    /// dirs in place; the version upgraded from is returned), loads the
    /// config, takes the writer lock when `access` writes, and opens the
    /// blob store and the residency bookkeeping.
    pub(crate) fn open(dir: &Path, storage: Arc<dyn Storage>, access: Access) -> Result<(Store, Option<String>)> {
        let layout = Layout { dir: dir.to_path_buf() };
        let mut upgraded = None;
        if let format::Upgrade::UpgradedFrom(v) = format::check_and_upgrade(storage.as_ref(), dir)? {
            tracing::info!("{}: upgraded data dir format from {}", dir.display(), v.to_line().trim());
            upgraded = Some(v.to_line().trim().to_string());
        }
        let config = Config::load(storage.as_ref(), &layout.config())?;
        let lock = match access {
            Access::Write => Some(take_lock(&layout.lock())?),
            Access::Read => None,
        };
        let blobs =
            Arc::new(BlobStore::open(storage.clone(), layout.blobs(), config.hash_size, config.compression_level)?);
        blobs.set_reserve(config.reserve);
        let cache = Cache::open(dir, blobs.clone(), config.small_block, access == Access::Write)?;
        let compresses = access == Access::Write && config.compression_level > 0;
        let store = Store {
            layout,
            config,
            storage,
            compressor: Mutex::new(compresses.then(|| Compressor::start(&blobs))),
            blobs,
            cache,
            source: RwLock::new(None),
            prefetchers: Mutex::new(Vec::new()),
            _lock: lock,
        };
        Ok((store, upgraded))
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        &self.layout.dir
    }

    /// Paths inside the data dir.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This machine.
    pub fn machine(&self) -> MachineId {
        self.config.machine
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.config.block_size
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The storage backend.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Residency bookkeeping of the bounded block cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Sets (or clears) where blocks missing locally are fetched from.
    pub fn set_block_source(&self, source: Option<Arc<dyn BlockSource>>) {
        *self.source.write().unwrap_or_else(|e| e.into_inner()) = source;
    }

    /// A channel that gets the blocks to fetch ahead of a reader (see
    /// [`Store::request_prefetch`]); the replication layer fetches them in
    /// the background.
    pub fn prefetch_requests(&self) -> std::sync::mpsc::Receiver<Vec<BlockHash>> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.prefetchers.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
        rx
    }

    /// Whether anyone takes prefetch requests.
    pub(crate) fn has_prefetchers(&self) -> bool {
        !self.prefetchers.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Asks the prefetchers for those of `hashes` that are not local.
    pub(crate) fn request_prefetch(&self, hashes: impl IntoIterator<Item = BlockHash>) {
        let mut prefetchers = self.prefetchers.lock().unwrap_or_else(|e| e.into_inner());
        if prefetchers.is_empty() {
            return;
        }
        let missing: Vec<BlockHash> = hashes.into_iter().filter(|h| !self.blobs.contains(h)).collect();
        if !missing.is_empty() {
            prefetchers.retain(|tx| tx.send(missing.clone()).is_ok());
        }
    }

    /// A block's bytes from the local store, `None` when it is not there.
    /// `streaming`: a block read once (ahead of a sequential reader), so
    /// read past the OS's cache where possible.
    pub(crate) fn local_block(&self, hash: &BlockHash, streaming: bool) -> Result<Option<ByteWindow>> {
        match self.blobs.get_window(hash, streaming) {
            Err(Error::MissingBlob(_)) => Ok(None),
            other => other.map(Some),
        }
    }

    /// Fetches block `hash` from the [`BlockSource`], verifies and stores
    /// it, and records it as on the remote. Returns its bytes;
    /// [`Error::MissingBlob`] without a source or when the source lacks it,
    /// [`Error::CorruptBlob`] (and nothing stored) when the copy does not
    /// match its hash. Those of `also` not stored here come in the same
    /// round trip (best effort: a refused one is only logged, and its own
    /// read reports it).
    pub(crate) fn fetch(&self, hash: &BlockHash, also: Vec<BlockHash>) -> Result<Vec<u8>> {
        let source = self.source.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(source) = source else { return Err(Error::MissingBlob(*hash)) };
        let mut want = vec![*hash];
        want.extend(also.into_iter().filter(|h| h != hash && !self.blobs.contains(h)));
        let mut found = None;
        let mut on_remote = Vec::new();
        for (h, stored) in source.fetch_many(&want)? {
            if h == *hash {
                // The bytes come from the fetched copy, not the store: the
                // evictor may already have taken the block out again.
                let (_, data) = self.blobs.put_raw_verified_data(hash, &stored)?;
                on_remote.push(h);
                found = Some(data);
            } else if let Err(e) = self.blobs.put_raw_verified(&h, &stored) {
                tracing::error!("a block fetched with {hash} was refused: {e}");
            } else {
                on_remote.push(h);
            }
        }
        // Fetched blocks are on the remote, so the evictor may take them.
        if let Err(e) = self.cache.mark_pushed(&on_remote) {
            tracing::warn!("recording {} fetched blocks as on the remote: {e}", on_remote.len());
        }
        found.ok_or(Error::MissingBlob(*hash))
    }

    /// Fetches those of `hashes` that are not local in one round trip,
    /// best effort (see [`Store::fetch`]): nothing without a source, and a
    /// failure is only logged (the read of each block reports its own).
    pub(crate) fn fetch_missing(&self, hashes: impl IntoIterator<Item = BlockHash>) {
        let missing: Vec<BlockHash> = hashes.into_iter().filter(|h| !self.blobs.contains(h)).collect();
        let source = self.source.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(source) = source else { return };
        if missing.is_empty() {
            return;
        }
        let fetched = match source.fetch_many(&missing) {
            Ok(fetched) => fetched,
            Err(e) => {
                tracing::debug!("fetching {} blocks ahead of a read: {e}", missing.len());
                return;
            }
        };
        let mut on_remote = Vec::new();
        for (h, stored) in fetched {
            match self.blobs.put_raw_verified(&h, &stored) {
                Ok(_) => on_remote.push(h),
                Err(e) => tracing::error!("a block fetched ahead of a read was refused: {e}"),
            }
        }
        // Fetched blocks are on the remote, so the evictor may take them.
        if let Err(e) = self.cache.mark_pushed(&on_remote) {
            tracing::warn!("recording {} fetched blocks as on the remote: {e}", on_remote.len());
        }
    }

    /// Stops the compressor thread (after the blob it is compressing).
    pub(crate) fn stop_compressor(&self) {
        if let Some(c) = self.compressor.lock().unwrap_or_else(|e| e.into_inner()).take() {
            c.stop();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop_compressor();
    }
}

/// How long the block store must have been idle before the blobs it
/// stored raw under load are compressed (see the blob module).
const COMPRESS_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

/// The thread that compresses, while the block store is idle, the blobs it
/// stored raw under load. It holds the store weakly and ends when told to
/// or when the engine is gone.
struct Compressor {
    /// Never sent on: dropped to stop the thread.
    stop: std::sync::mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Compressor {
    fn start(blobs: &Arc<BlobStore>) -> Compressor {
        use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let weak = Arc::downgrade(blobs);
        let run = move || loop {
            if let Err(RecvTimeoutError::Disconnected) = stopped.recv_timeout(COMPRESS_WHEN_IDLE_FOR / 4) {
                return;
            }
            let Some(blobs) = weak.upgrade() else { return };
            let go_on = || {
                blobs.idle_for() >= COMPRESS_WHEN_IDLE_FOR
                    && !matches!(stopped.try_recv(), Err(TryRecvError::Disconnected))
            };
            if let Err(e) = blobs.compress_deferred(go_on) {
                tracing::warn!("{}: compressing blobs stored raw under load: {e}", blobs.dir().display());
            }
        };
        let thread = std::thread::Builder::new().name("syncer-compress".into()).spawn(run);
        if let Err(e) = &thread {
            tracing::warn!("cannot start the compression thread ({e}): blobs stored raw under load stay raw");
        }
        Compressor { stop, thread: thread.ok() }
    }

    /// Stops the thread, after the blob it is compressing: dropping the
    /// sender disconnects the channel, which the thread sees both between
    /// blobs and while it waits.
    fn stop(self) {
        let Compressor { stop, thread } = self;
        drop(stop);
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// Opens (creating it, never emptying it) a file that is only ever locked.
pub(crate) fn open_lock_file(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("open", path, e))
}

/// Takes `history.lock`: exclusive when no view holds it (returns true),
/// else shared, waiting only for a view that is updating `history.redb`.
pub(crate) fn lock_history(path: &Path) -> Result<(File, bool)> {
    let file = open_lock_file(path)?;
    match file.try_lock() {
        Ok(()) => Ok((file, true)),
        Err(std::fs::TryLockError::WouldBlock) => {
            file.lock_shared().map_err(|e| Error::io("lock", path, e))?;
            Ok((file, false))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io("lock", path, e)),
    }
}

/// Takes the lock file at `path`, exclusive, or fails with
/// [`Error::Locked`] at once when another process holds it.
pub(crate) fn take_lock(path: &Path) -> Result<File> {
    let file = open_lock_file(path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(Error::Locked { path: path.to_path_buf(), reason: "another process has it mounted or open".into() })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io("lock", path, e)),
    }
}
