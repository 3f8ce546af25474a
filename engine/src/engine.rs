//! The engine: a data dir opened for reading and writing (or read-only at a
//! past time). It validates each tree operation the way POSIX does, turns it
//! into events, appends them to our log and applies them to the index.
//!
//! Always true:
//! - an operation's events reach the log before the index (the log is the
//!   truth; on open the index catches up from where it stopped);
//! - [`Engine::sync`] makes blocks durable before the log records that
//!   reference them, so a durable event never points at a lost block;
//! - index changes are committed in groups (at most `GROUP_WINDOW` or
//!   `GROUP_MAX` changes apart): one redb commit costs more than applying
//!   a change, and the log, not the index, is what a crash must not lose;
//!   a group is committed on a thread of its own while the next one takes
//!   changes (the index module says why that is safe), and a group that
//!   failed there is applied again from the log before the next change or
//!   read goes on; group commits are not durable; at the first change's group commit
//!   `INDEX_DURABLE_EVERY` after the last durable one (and at close), the
//!   blocks, then the log, then the index are made durable, with no group
//!   pending;
//! - every read sees every change made before it: on a redb read snapshot
//!   without any lock when no group is pending, else through the pending
//!   writer under the writer mutex (a read finding a group older than the
//!   window closes it, so readers go back to snapshots once writes pause);
//! - mutations serialize on one short mutex (validate, append, index); the
//!   slow parts of a write (hashing, compression, blob I/O) run in
//!   [`Engine::put_block`], outside it, on the caller's thread.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::blob::BlobStore;
use crate::config::Config;
use crate::error::{Error, FsError, Result};
use crate::event::{AttrChange, Attrs, BlockChange, BlockRef, Change, Event, NodeKind};
use crate::ids::{BlockHash, EventId, LogPos, MachineId, NodeId, Timestamp};
use crate::index::{Counts, DirEntry, Index, IndexReader, IndexView, IndexWriter};
use crate::log::{self, LogWriter};
use crate::storage::{ByteWindow, FsStorage, Storage};
use crate::tree::{self, NodeRecord};
use crate::{format, merge};

/// Blocks of a file asked for ahead of a block that had to be fetched.
const READ_AHEAD_BLOCKS: u64 = 16;

thread_local! {
    /// The last `file_blocks` query of this thread: a fetch of one of its
    /// blocks reads ahead in that file (the FUSE adapter asks for a file's
    /// blocks, then reads them, on the same thread).
    static LAST_BLOCKS_QUERY: std::cell::Cell<Option<(NodeId, u64, u64)>> = const { std::cell::Cell::new(None) };
}

/// Longest name in a directory, as on most Unix filesystems.
pub const NAME_MAX: usize = 255;

/// Largest extended attribute value, as Linux's `XATTR_SIZE_MAX` (and ext4):
/// a bigger one is refused, never stored (a FUSE mount never passes one on:
/// the kernel answers E2BIG first).
pub const XATTR_VALUE_MAX: usize = 64 << 10;

/// How long non-durable index commits may pile up before one durable commit.
const INDEX_DURABLE_EVERY: Duration = Duration::from_secs(5);

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

/// A node as the engine hands it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    /// Its id.
    pub id: NodeId,
    /// What it is.
    pub kind: NodeKind,
    /// Parent directory.
    pub parent: NodeId,
    /// Name in the parent.
    pub name: Vec<u8>,
    /// Attributes.
    pub attrs: Attrs,
    /// Size in bytes.
    pub size: u64,
    /// Symlink target.
    pub target: Vec<u8>,
    /// Extended attributes.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Kept local.
    pub pinned: bool,
    /// Unlinked (still readable through open handles).
    pub removed: bool,
    /// Bytes counted for `st_blocks`: for a file, those of its stored
    /// blocks (holes are free); for others, the size.
    pub stored_bytes: u64,
    /// Directories: how many directories it holds (a directory's link
    /// count is 2 plus this); 0 for other kinds.
    pub subdirs: u64,
    /// Volume name (root only).
    pub volname: Vec<u8>,
    /// A conflict copy not yet resolved: the file it is a copy of.
    pub conflict_of: Option<NodeId>,
}

impl NodeState {
    fn from_record(id: NodeId, r: NodeRecord) -> Self {
        NodeState {
            id,
            kind: r.kind,
            parent: r.parent,
            name: r.name,
            attrs: r.attrs,
            size: r.size,
            stored_bytes: if r.kind == NodeKind::File { r.stored } else { r.size },
            subdirs: r.subdirs,
            target: r.target,
            xattrs: r.xattrs.into_iter().collect(),
            pinned: r.pinned,
            removed: r.removed,
            volname: r.volname,
            conflict_of: r.conflict_of,
        }
    }
}

/// One node of [`Engine::dump_tree`]: its path, state and stored blocks.
pub type TreeEntry = (Vec<u8>, NodeState, Vec<(u64, BlockRef)>);

/// Rename flags (renameat2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    /// Fail with EEXIST if the target exists.
    pub noreplace: bool,
    /// Swap source and target (both must exist).
    pub exchange: bool,
}

/// What a rename moved: the node that was at the old name, and for an
/// exchange the node that was at the new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renamed {
    /// Now at the new name.
    pub moved: NodeId,
    /// Now at the old name (an exchange only).
    pub swapped: Option<NodeId>,
}

/// How `set_xattr` treats an existing attribute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XattrMode {
    /// Create or replace.
    #[default]
    Any,
    /// Fail if it exists (XATTR_CREATE).
    Create,
    /// Fail if it is missing (XATTR_REPLACE).
    Replace,
}

/// Sizes and counts for `status` and `statfs`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live nodes.
    pub nodes: u64,
    /// Live files.
    pub files: u64,
    /// Live directories.
    pub dirs: u64,
    /// Sum of live file sizes.
    pub logical_bytes: u64,
    /// Uncompressed bytes of all distinct blocks ever referenced.
    pub local_blob_bytes: u64,
    /// Configured cache limit.
    pub cache_limit: u64,
    /// Events in the index.
    pub events: u64,
}

/// What [`Engine::import`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Events applied to the index.
    pub applied: u64,
    /// Older events arrived after newer ones, so the index was replayed.
    pub replayed: bool,
}

/// What `open` found and fixed.
#[derive(Clone, Debug, Default)]
pub struct OpenReport {
    /// The FORMAT file was upgraded from this version.
    pub upgraded_from: Option<String>,
    /// A torn tail was cut from our log.
    pub torn_tail: Option<String>,
    /// The index was rebuilt from scratch.
    pub index_rebuilt: bool,
    /// Events applied to the index while catching up.
    pub caught_up: u64,
    /// The last writer did not close cleanly.
    pub unclean: bool,
    /// Older events arrived after newer ones were applied, so the index was
    /// replayed in merge order.
    pub replayed: bool,
    /// Unacknowledged events cut from our log because their blocks were
    /// lost in the crash.
    pub cut_unacknowledged: Option<String>,
    /// A point-in-time view could not update `history.redb` (other views
    /// hold it) and shows the log as of its last update.
    pub stale_history: Option<String>,
}

struct Writer {
    log: LogWriter,
    next_counter: u64,
    last_time: Timestamp,
    last_durable_index: Instant,
    /// The index transaction holding changes not yet committed.
    pending: Option<Pending>,
    /// The index may lack events of our log: a group was lost (a failed
    /// commit or apply, or a panic while it was out of the writer). Set
    /// while a mutation has the group out; no change is made until the
    /// index has caught up from the log again (see `recover_index`).
    index_behind: bool,
    /// The content version the next content change of this node is made
    /// on, when the caller continues a line of its own (see
    /// [`Engine::write_blocks_on`]); taken by that change.
    line: Option<(NodeId, EventId)>,
    /// Where the operation whose append failed began: what it appended
    /// (some of its events, and part of one) is cut before the log is used
    /// or read again, so an operation is in the log whole or not at all
    /// (see [`Engine::reopen_failed_log`]).
    cut_to: Option<(LogPos, u64)>,
    /// Told (without blocking: each channel holds one wake-up) after every
    /// operation that appended to our log; see [`Engine::watch_log`].
    log_watchers: Vec<std::sync::mpsc::SyncSender<()>>,
}

/// Index changes waiting for their group commit (see [`GROUP_WINDOW`]).
struct Pending {
    ix: IndexWriter,
    since: Instant,
    changes: u32,
}

/// Most blocks one content change of [`Engine::zero_range_on`] lists.
pub const ZERO_RANGE_BATCH: usize = 4096;

/// Most stored blocks of each file one [`Engine::share_blocks_on`] looks at.
pub const SHARE_BATCH: usize = 1024;

/// Longest time index changes wait for a group commit. A redb commit costs
/// more than applying one change, so one commit per change would cap
/// creates far below what the FUSE transport carries; the log, not the
/// index, is what makes a change durable, so waiting risks nothing.
const GROUP_WINDOW: Duration = Duration::from_millis(20);

/// Most changes in one group commit.
const GROUP_MAX: u32 = 2048;

/// An open data dir. `Send + Sync`.
pub struct Engine {
    layout: Layout,
    config: Config,
    storage: Arc<dyn Storage>,
    blobs: Arc<BlobStore>,
    /// Compresses blobs stored raw under load (writable engines that
    /// compress).
    compressor: Option<Compressor>,
    index: Index,
    writer: Option<Mutex<Writer>>,
    /// Whether `writer` holds index changes not yet committed: reads take
    /// the writer mutex only then.
    has_pending: AtomicBool,
    at: Option<Timestamp>,
    report: OpenReport,
    /// Set by [`Engine::abandon`]: drop without syncing.
    abandoned: bool,
    /// Told about every import that changed the tree (the mount
    /// invalidates the kernel's caches on it).
    watchers: Mutex<Vec<std::sync::mpsc::Sender<ImportReport>>>,
    /// Damage found in peers' logs (see [`Engine::peer_problems`]).
    peer_problems: Mutex<Vec<String>>,
    /// Residency bookkeeping of the bounded block cache.
    cache: crate::cache::Cache,
    /// Where blocks missing locally come from (the remote), if anywhere.
    source: std::sync::RwLock<Option<Arc<dyn crate::cache::BlockSource>>>,
    /// Told the next blocks of a file after a block of it had to be fetched.
    prefetchers: Mutex<Vec<std::sync::mpsc::Sender<Vec<BlockHash>>>>,
    /// Node states of a point-in-time view, folded once each: the view
    /// never changes, so they never go stale.
    at_nodes: Mutex<std::collections::HashMap<NodeId, Option<NodeRecord>>>,
    _lock: Option<File>,
    _history_lock: Option<File>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("dir", &self.layout.dir).field("at", &self.at).finish_non_exhaustive()
    }
}

fn validate_name(parent: NodeId, name: &[u8]) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.iter().any(|&b| b == b'/' || b == 0) {
        return Err(Error::fs(parent, FsError::InvalidName));
    }
    if name.len() > NAME_MAX {
        return Err(Error::fs(parent, FsError::NameTooLong));
    }
    Ok(())
}

impl Engine {
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

    /// [`Engine::init`] through another storage backend (crash tests).
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

    /// Opens `dir` for reading and writing: checks FORMAT (upgrading older
    /// data dirs in place), takes the writer lock, cuts a torn log tail and
    /// brings the index up to date with every machine's log.
    pub fn open(dir: &Path) -> Result<Engine> {
        Self::open_inner(dir, Arc::new(FsStorage), None)
    }

    /// Opens `dir` read-only as it stood at `at`. Every mutation fails with
    /// [`FsError::ReadOnly`].
    ///
    /// A view never opens `index.redb` (a live writer in another process
    /// holds it exclusively). It reads `history.redb`, a
    /// second index derived from the log by the same code: the first view to
    /// open while no other view is open brings it up to date (applying only
    /// the events it has not seen, never replaying the whole log unless
    /// events arrived out of order) and then every view reads it read-only,
    /// so any number of views and one live writer run at once. A view opened
    /// while other views hold `history.redb` cannot update it and shows the
    /// log as of the last update ([`OpenReport::stale_history`] says so).
    /// A missing `history.redb` is seeded with a copy of `index.redb` when
    /// no writer has the data dir (taking the writer lock for the copy) and
    /// the last one closed cleanly; otherwise it is built from the log once.
    ///
    /// What a view shows: every name and block as of `at` exactly (from the
    /// history tables); each node's attributes as its latest checkpoint
    /// before `at` (the merged record, see `index`) with its own events
    /// since folded in, in merge order. A directory's times can lag the live
    /// tree's: entries created, renamed or removed after that checkpoint do
    /// not move them in the view.
    pub fn open_at(dir: &Path, at: Timestamp) -> Result<Engine> {
        Self::open_inner(dir, Arc::new(FsStorage), Some(at))
    }

    /// [`Engine::open`] with the log, blobs, FORMAT and config going through
    /// `storage` (crash tests); the index and the lock file stay on the real
    /// filesystem under `dir`, which must exist.
    pub fn open_with(storage: Arc<dyn Storage>, dir: &Path) -> Result<Engine> {
        Self::open_inner(dir, storage, None)
    }

    fn open_inner(dir: &Path, storage: Arc<dyn Storage>, at: Option<Timestamp>) -> Result<Engine> {
        let layout = Layout { dir: dir.to_path_buf() };
        let mut report = OpenReport::default();
        if let format::Upgrade::UpgradedFrom(v) = format::check_and_upgrade(storage.as_ref(), dir)? {
            tracing::info!("{}: upgraded data dir format from {}", dir.display(), v.to_line().trim());
            report.upgraded_from = Some(v.to_line().trim().to_string());
        }
        let config = Config::load(storage.as_ref(), &layout.config())?;
        let lock = if at.is_none() { Some(take_lock(&layout.lock())?) } else { None };
        let blobs =
            Arc::new(BlobStore::open(storage.clone(), layout.blobs(), config.hash_size, config.compression_level)?);
        blobs.set_reserve(config.reserve);
        let writer = match at {
            Some(_) => None,
            None => {
                let (log, recovery) =
                    LogWriter::open(storage.clone(), &layout.log(), config.machine, config.segment_size)?;
                if let Some(cut) = recovery.cut {
                    let what = format!(
                        "cut a torn tail of {} bytes at byte {} of {}",
                        cut.bytes,
                        cut.offset,
                        cut.path.display()
                    );
                    tracing::warn!("{what}");
                    report.torn_tail = Some(what);
                }
                let last_time = log.last_time();
                Some(Mutex::new(Writer {
                    log,
                    next_counter: 1,
                    last_time,
                    last_durable_index: Instant::now(),
                    pending: None,
                    index_behind: false,
                    line: None,
                    cut_to: None,
                    log_watchers: Vec::new(),
                }))
            }
        };
        if at.is_none() {
            report.unclean = storage.exists(&layout.dirty());
            storage.write_file(&layout.dirty(), b"").map_err(|e| Error::io("write", layout.dirty(), e))?;
            storage.sync_dir(dir).map_err(|e| Error::io("sync", dir, e))?;
        }
        let mut history_lock = None;
        let mut refresh_history = false;
        let (index, mut rebuilt) = match at {
            None => Index::open_with(&layout.index(), Some(storage.clone()))?,
            Some(_) => {
                let (lock, exclusive) = lock_history(&layout.history_lock())?;
                history_lock = Some(lock);
                // A view that took the lock in the instant another one was
                // turning its exclusive lock into a shared one (flock does
                // not convert atomically) finds the file held: it reads it.
                if exclusive && !layout.history_index().exists() {
                    seed_history(&layout);
                }
                let writable = if exclusive { Index::open(&layout.history_index()).ok() } else { None };
                refresh_history = writable.is_some();
                if let Some(opened) = writable {
                    // A crash can cut a writer's unacknowledged tail after a
                    // view indexed it: then the view's index is rebuilt.
                    if index_diverged(storage.as_ref(), &layout.log(), &opened.0)? {
                        tracing::warn!(
                            "{}: the log lost events it had indexed; rebuilding it",
                            layout.history_index().display()
                        );
                        opened.0.clear()?;
                        (opened.0, true)
                    } else {
                        opened
                    }
                } else {
                    report.stale_history = Some(format!(
                        "{}: other point-in-time views hold it, so events logged since they opened are not shown",
                        layout.history_index().display()
                    ));
                    (Index::open_read_only(&layout.history_index())?, false)
                }
            }
        };
        if let Some(w) = &writer {
            // The index must never be ahead of our log (a crash can cut the
            // log's unsynced tail); if it is, it is rebuilt from the log.
            let log_seq = lock_writer(w).log.last_seq();
            let index_seq = index.read()?.applied(config.machine)?.map_or(0, |a| a.2);
            if index_seq > log_seq {
                tracing::warn!(
                    "{}: index has our events up to {index_seq} but the log only to {log_seq}; rebuilding it",
                    dir.display()
                );
                index.clear()?;
                rebuilt = true;
            }
        }
        report.index_rebuilt = rebuilt;
        let cache = crate::cache::Cache::open(dir, config.hash_size)?;
        let compresses = at.is_none() && config.compression_level > 0;
        let mut engine = Engine {
            layout,
            config,
            storage,
            compressor: compresses.then(|| Compressor::start(&blobs)),
            blobs,
            index,
            writer,
            has_pending: AtomicBool::new(false),
            at,
            report,
            abandoned: false,
            watchers: Mutex::new(Vec::new()),
            peer_problems: Mutex::new(Vec::new()),
            cache,
            source: std::sync::RwLock::new(None),
            prefetchers: Mutex::new(Vec::new()),
            at_nodes: Mutex::new(std::collections::HashMap::new()),
            _lock: lock,
            _history_lock: None,
        };
        if at.is_none() || refresh_history {
            engine.report.caught_up = engine.catch_up()?;
        }
        if let Some(lock) = history_lock {
            if refresh_history {
                engine.index.reopen_read_only()?;
                lock.lock_shared().map_err(|e| Error::io("lock", engine.layout.history_lock(), e))?;
            }
            engine._history_lock = Some(lock);
        }
        if engine.report.cut_unacknowledged.is_some() {
            // Reopen our log past the cut.
            if let Some(w) = &engine.writer {
                let (log, _) = LogWriter::open(
                    engine.storage.clone(),
                    &engine.layout.log(),
                    engine.config.machine,
                    engine.config.segment_size,
                )?;
                lock_writer(w).log = log;
            }
        }
        if let Some(w) = &engine.writer {
            let ix = engine.index.read()?;
            let mut w = lock_writer(w);
            w.next_counter = ix.max_counter(engine.config.machine)? + 1;
            // Event times form a hybrid logical clock: never below any event
            // seen from any machine, so (time, machine, seq) orders every
            // event after everything it could have depended on.
            w.last_time = w.last_time.max(ix.max_event_time()?);
        }
        Ok(engine)
    }

    /// Applies to the index every record of every machine's log that it
    /// has not seen yet, in merge order (see `merge`). Returns how many
    /// events were applied.
    ///
    /// If a new event sorts before the last one applied (a peer's older
    /// events arriving late), the index is replayed from the start so that
    /// the tree depends only on the set of events. Local events always sort
    /// last (event times are a hybrid logical clock), so this only happens
    /// when peers' logs bring older events.
    ///
    /// After an unclean shutdown, each of our own events being caught up
    /// must find its blocks intact. The index is made durable only after the
    /// log and blobs are synced, so these events include every one that was
    /// never acknowledged; such an event can reach the disk while its blocks
    /// did not. The first event whose blocks are missing or torn was never
    /// acknowledged (a sync would have made them durable first), so it and
    /// everything after it are cut, like a torn tail.
    fn catch_up(&mut self) -> Result<u64> {
        let check_blocks = self.report.unclean && self.writer.is_some();
        let (applied, replayed, cut) = self.apply_new_events(check_blocks)?;
        self.report.replayed = replayed;
        if let Some((pos, why)) = cut {
            let dropped = log::cut_at(self.storage.as_ref(), &self.layout.log(), pos)?;
            let what = format!("cut {dropped} bytes of unacknowledged events from our log at {pos}: {why}");
            tracing::warn!("{}: {what}", self.layout.dir.display());
            self.report.cut_unacknowledged = Some(what);
        }
        Ok(applied)
    }

    /// Applies every event not yet in the index, in merge order, replaying
    /// the index when one sorts before the frontier. Returns how many were
    /// applied, whether the index was replayed, and where our log must be
    /// cut (only when `check_blocks`).
    #[allow(clippy::type_complexity)]
    fn apply_new_events(&self, check_blocks: bool) -> Result<(u64, bool, Option<(LogPos, String)>)> {
        // Problems are those of the logs as they are now: a peer's log that
        // became readable again is no longer reported.
        self.peer_problems.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let (mut events, cut) = self.gather(false, check_blocks)?;
        if events.is_empty() {
            return Ok((0, false, cut));
        }
        events.sort_by_key(|(_, e)| merge::order_key(e));
        let frontier = self.index.read()?.frontier()?;
        let replay = frontier.is_some_and(|f| merge::order_key(&events[0].1) <= f);
        let mut w = self.index.write()?;
        if replay {
            // In one transaction, so readers never see a half-built tree.
            tracing::info!("{}: events arrived out of order; replaying the index", self.layout.dir.display());
            w.clear_all()?;
            events = self.gather(true, check_blocks)?.0;
            events.sort_by_key(|(_, e)| merge::order_key(e));
        }
        let bs = self.block_size();
        for (pos, e) in &events {
            w.apply(*pos, e, bs)?;
        }
        // Not durable: a durable index must not get ahead of the durable log
        // and blocks, which the writer's group commits and `close` see to.
        w.commit(false)?;
        Ok((events.len() as u64, replay, cut))
    }

    /// Imports whatever peers' logs (fetched into `log/<machine>/` by the
    /// replication layer) hold that the index has not seen: the tree is
    /// merged again and our clock moves past every imported event. Safe
    /// while mounted: it serializes with local changes on the writer lock.
    pub fn import(&self) -> Result<ImportReport> {
        let Some(w) = &self.writer else {
            return Err(Error::fs(NodeId::ROOT, FsError::ReadOnly));
        };
        let mut w = lock_writer(w);
        // The import writes the index in a transaction of its own.
        self.commit_pending(&mut w)?;
        let report = self.import_locked(&mut w)?;
        w.index_behind = false;
        Ok(report)
    }

    /// Applies every event of every log that the index lacks (our own
    /// included), moves our clock past them, and tells the watchers. No
    /// group may be pending.
    fn import_locked(&self, w: &mut Writer) -> Result<ImportReport> {
        let (applied, replayed, _) = self.apply_new_events(false)?;
        w.last_time = w.last_time.max(self.index.read()?.max_event_time()?);
        let report = ImportReport { applied, replayed };
        if applied > 0 {
            let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
            watchers.retain(|tx| tx.send(report).is_ok());
        }
        Ok(report)
    }

    /// A channel that gets every [`ImportReport`] that changed the tree.
    pub fn watch_imports(&self) -> std::sync::mpsc::Receiver<ImportReport> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.watchers.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
        rx
    }

    /// Every event of every machine's log not yet in the index (all of
    /// them with `from_start`), and where our log must be cut, if anywhere
    /// (see `catch_up`).
    #[allow(clippy::type_complexity)]
    fn gather(&self, from_start: bool, check_blocks: bool) -> Result<(Vec<(LogPos, Event)>, Option<(LogPos, String)>)> {
        let log_root = self.layout.log();
        let mut out = Vec::new();
        let mut cut: Option<(LogPos, String)> = None;
        let ix = self.index.read()?;
        let (machines, bad) = log::list_machines_tolerant(self.storage.as_ref(), &log_root)?;
        for e in bad {
            self.peer_problem(e.to_string());
        }
        for m in machines {
            let applied = if from_start { None } else { ix.applied(m)? };
            let (start, done_seq) = match applied {
                Some((segment, offset, seq)) => ((segment, offset), seq),
                None => ((0, 0), 0),
            };
            let ours = m == self.config.machine;
            let mut stop = false;
            let walk = log::for_each_event(self.storage.as_ref(), &log_root, m, start, |pos, _end, ev| {
                if ev.seq <= done_seq || stop {
                    return Ok(());
                }
                if check_blocks && ours {
                    if let Some(why) = self.missing_block(ev) {
                        cut = Some((pos, why));
                        stop = true;
                        return Ok(());
                    }
                }
                out.push((pos, ev.clone()));
                Ok(())
            });
            match walk {
                Ok(_) => {}
                // Damage in our own log is fatal: it is the truth we write.
                Err(e) if ours => return Err(e),
                // A peer's damaged log: its events before the damage are
                // imported, the rest is refused (named in the error), and
                // our data dir keeps working.
                Err(e) => self.peer_problem(e.to_string()),
            }
        }
        Ok((out, cut))
    }

    /// Notes damage in a peer's log (logged, and kept for reports).
    fn peer_problem(&self, what: String) {
        tracing::error!("{}: {what}; that peer's later events are not imported", self.layout.dir.display());
        let mut problems = self.peer_problems.lock().unwrap_or_else(|e| e.into_inner());
        if !problems.contains(&what) {
            problems.push(what);
        }
    }

    /// Damage found in peers' logs (each names the segment and offset), as
    /// of the last open or import. Their events from the damage on are not
    /// imported; nothing of ours depends on them.
    pub fn peer_problems(&self) -> Vec<String> {
        self.peer_problems.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Why `ev`'s blocks cannot be read back intact, if they cannot.
    fn missing_block(&self, ev: &Event) -> Option<String> {
        for b in ev.change.blocks() {
            match self.blobs.get(&b.hash) {
                Ok(data) if data.len() == b.len as usize => {}
                // Evicted from the bounded cache: it is on the remote.
                Err(Error::MissingBlob(h)) if self.cache.is_pushed(&h) => {}
                Ok(_) => return Some(format!("block {} has the wrong length", b.hash)),
                Err(e) => return Some(e.to_string()),
            }
        }
        None
    }

    /// What `open` found and fixed.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
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

    /// The time a read-only view shows, if this is one.
    pub fn at(&self) -> Option<Timestamp> {
        self.at
    }

    /// Whether mutations are refused.
    pub fn is_read_only(&self) -> bool {
        self.writer.is_none()
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The storage backend.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// A read snapshot of the index (a pending group is committed first;
    /// with none, no lock is taken, as in every live read).
    pub fn index(&self) -> Result<IndexReader> {
        if let (true, Some(w)) = (self.has_pending.load(Ordering::Acquire), &self.writer) {
            self.commit_pending(&mut lock_writer(w))?;
        }
        self.index.read()
    }

    // ---- queries ---------------------------------------------------------

    /// A node's state (removed nodes included, with `removed` set).
    pub fn node(&self, id: NodeId) -> Result<NodeState> {
        let record = match self.at {
            None => self.read_live(|ix| ix.node(id))?,
            Some(at) => self.node_record_at(id, at)?,
        };
        record.map(|r| NodeState::from_record(id, r)).ok_or(Error::fs(id, FsError::NotFound))
    }

    /// Folds `id`'s events up to `at`, read back from the log (once per
    /// node and view).
    fn node_record_at(&self, id: NodeId, at: Timestamp) -> Result<Option<NodeRecord>> {
        const CACHE_MAX: usize = 1 << 20;
        if let Some(r) = self.at_nodes.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
            return Ok(r.clone());
        }
        let state = self.fold_node_at(id, at)?;
        let mut cache = self.at_nodes.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(id, state.clone());
        Ok(state)
    }

    /// The latest checkpoint (see `index`) then the node's events since.
    fn fold_node_at(&self, id: NodeId, at: Timestamp) -> Result<Option<NodeRecord>> {
        let ix = self.index.read()?;
        let (mut state, after) = match ix.checkpoint_at(id, at)? {
            Some((key, record)) => (Some(record), Some(key)),
            None => ((id == NodeId::ROOT).then(NodeRecord::root), None),
        };
        for pos in ix.history_after(id, after, at)? {
            let ev = log::read_record_at(self.storage.as_ref(), &self.layout.log(), pos)?.event;
            state = Some(tree::apply(state.as_ref(), &ev).node);
        }
        // The counts the merge keeps change with other nodes' events too
        // (entries made in a directory, blocks of a version routed here):
        // counted from the history tables as of `at`, once per view.
        if let Some(n) = state.as_mut() {
            match n.kind {
                NodeKind::Dir => {
                    let entries = ix.read_dir_at(id, at)?;
                    n.subdirs = entries.iter().filter(|e| e.kind == NodeKind::Dir).count() as u64;
                }
                NodeKind::File => {
                    let blocks = ix.blocks_at(id, 0, u64::MAX, at)?;
                    n.stored = blocks.iter().map(|(_, b)| u64::from(b.len)).sum();
                }
                _ => {}
            }
        }
        // A directory's times follow its listing: the checkpoint has them as
        // the merge left them, the fold of the node's own events since does
        // not move them.
        Ok(state)
    }

    fn live_dir(ix: &IndexView<'_>, dir: NodeId) -> Result<()> {
        match ix.node(dir)? {
            Some(n) if n.removed => Err(Error::fs(dir, FsError::NotFound)),
            Some(n) if n.kind != NodeKind::Dir => Err(Error::fs(dir, FsError::NotDir)),
            Some(_) => Ok(()),
            None => Err(Error::fs(dir, FsError::NotFound)),
        }
    }

    /// The node named `name` in `dir`.
    pub fn lookup(&self, dir: NodeId, name: &[u8]) -> Result<NodeState> {
        match self.at {
            None => self.read_live(|ix| {
                Self::live_dir(ix, dir)?;
                let (child, _) = ix.lookup(dir, name)?.ok_or(Error::fs(dir, FsError::NotFound))?;
                let r = ix.node(child)?.ok_or(Error::fs(child, FsError::NotFound))?;
                Ok(NodeState::from_record(child, r))
            }),
            Some(at) => {
                let (child, _) =
                    self.index.read()?.lookup_at(dir, name, at)?.ok_or(Error::fs(dir, FsError::NotFound))?;
                self.node(child)
            }
        }
    }

    /// Up to `limit` entries of `dir` with names after `after`, sorted by name.
    pub fn read_dir(&self, dir: NodeId, after: Option<&[u8]>, limit: usize) -> Result<Vec<DirEntry>> {
        match self.at {
            None => self.read_live(|ix| {
                Self::live_dir(ix, dir)?;
                ix.read_dir(dir, after, limit)
            }),
            Some(at) => {
                let all = self.index.read()?.read_dir_at(dir, at)?;
                Ok(all.into_iter().filter(|e| after.is_none_or(|a| e.name.as_slice() > a)).take(limit).collect())
            }
        }
    }

    /// Stored blocks of `node` with index in `first..first+count` (holes absent).
    pub fn file_blocks(&self, node: NodeId, first: u64, count: u64) -> Result<Vec<(u64, BlockRef)>> {
        LAST_BLOCKS_QUERY.set(Some((node, first, count)));
        match self.at {
            None => self.read_live(|ix| ix.blocks(node, first, count)),
            Some(at) => self.index.read()?.blocks_at(node, first, count, at),
        }
    }

    /// The first stored block of file `node` with index at least `from`
    /// (`None`: only holes from there on). Its cost depends on the blocks
    /// stored (and, in a point-in-time view, on their history), never on
    /// the size of a hole: `lseek(SEEK_DATA)` uses it.
    pub fn next_data(&self, node: NodeId, from: u64) -> Result<Option<u64>> {
        match self.at {
            None => self.read_live(|ix| ix.next_block(node, from)),
            Some(at) => self.index.read()?.next_block_at(node, from, at),
        }
    }

    /// The first block index at least `from` that file `node` does not
    /// store (a hole, or the end of its blocks). Reads the stored blocks
    /// from `from` on a page at a time while they follow each other, so its
    /// cost is the length of that run of stored blocks: `lseek(SEEK_HOLE)`
    /// uses it.
    pub fn next_hole(&self, node: NodeId, from: u64) -> Result<u64> {
        const PAGE: u64 = 1024;
        let mut at = from;
        loop {
            let page = self.file_blocks(node, at, PAGE)?;
            for (i, _) in &page {
                if *i != at {
                    return Ok(at);
                }
                at += 1;
            }
            if (page.len() as u64) < PAGE || at == u64::MAX {
                return Ok(at);
            }
        }
    }

    /// A block's bytes, verified against its hash. A block missing locally
    /// is fetched from the [`BlockSource`](crate::cache::BlockSource), if
    /// one is set, verified and stored; a fetched copy that does not match
    /// its hash is refused with [`Error::CorruptBlob`] and never returned.
    pub fn read_block(&self, block: &BlockRef) -> Result<Vec<u8>> {
        self.read_block_window(block, false).map(ByteWindow::into_vec)
    }

    /// [`Engine::read_block`], handed back in the buffer it was read into.
    /// `streaming`: a block read once (ahead of a sequential reader), so
    /// read past the OS's cache where possible.
    pub fn read_block_window(&self, block: &BlockRef, streaming: bool) -> Result<ByteWindow> {
        let local = self.blobs.get_window(&block.hash, streaming);
        let data = match local {
            Err(Error::MissingBlob(h)) => ByteWindow::from(self.fetch_block(&h)?),
            other => other?,
        };
        self.cache.touch(&block.hash);
        if data.len() != block.len as usize {
            return Err(Error::CorruptBlob {
                hash: block.hash,
                path: self.blobs.path_of(&block.hash),
                reason: format!("holds {} bytes, the log says {}", data.len(), block.len),
            });
        }
        Ok(data)
    }

    fn fetch_block(&self, hash: &BlockHash) -> Result<Vec<u8>> {
        let source = self.source.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(source) = source else { return Err(Error::MissingBlob(*hash)) };
        let context = LAST_BLOCKS_QUERY.get();
        // The next blocks of the same file come in the same fetch, and the
        // ones after them are asked for in the background.
        let mut want = vec![*hash];
        if let Some((node, first, count)) = context {
            want.extend(self.missing_blocks(node, first + count.max(1)).into_iter().filter(|h| h != hash));
        }
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
                tracing::error!("read-ahead refused: {e}");
            } else {
                on_remote.push(h);
            }
        }
        // Fetched blocks are on the remote, so the evictor may take them.
        if let Err(e) = self.cache.mark_pushed(&on_remote) {
            tracing::warn!("recording {} fetched blocks as on the remote: {e}", on_remote.len());
        }
        let Some(data) = found else { return Err(Error::MissingBlob(*hash)) };
        if let Some((node, first, count)) = context {
            self.request_read_ahead(node, first + count.max(1) + READ_AHEAD_BLOCKS);
        }
        Ok(data)
    }

    /// Up to [`READ_AHEAD_BLOCKS`] blocks of `node` from index `from` on
    /// that are not local.
    fn missing_blocks(&self, node: NodeId, from: u64) -> Vec<BlockHash> {
        let saved = LAST_BLOCKS_QUERY.get();
        let next = self.file_blocks(node, from, READ_AHEAD_BLOCKS).unwrap_or_default();
        LAST_BLOCKS_QUERY.set(saved);
        next.iter().map(|(_, b)| b.hash).filter(|h| !self.blobs.contains(h)).collect()
    }

    /// Asks the prefetchers for the blocks of `node` from index `from` on
    /// that are not local.
    fn request_read_ahead(&self, node: NodeId, from: u64) {
        let mut prefetchers = self.prefetchers.lock().unwrap_or_else(|e| e.into_inner());
        if prefetchers.is_empty() {
            return;
        }
        let missing = self.missing_blocks(node, from);
        if !missing.is_empty() {
            prefetchers.retain(|tx| tx.send(missing.clone()).is_ok());
        }
    }

    /// Fails with ENOSPC when the local disk cannot take `bytes` more
    /// (above the data dir's reserve): what `fallocate` reserves is checked
    /// here. Nothing is set aside (blocks are content-addressed and zeros
    /// are holes), so a later write can still find the disk full.
    pub fn check_room(&self, node: NodeId, bytes: u64) -> Result<()> {
        if self.writer.is_none() {
            return Err(Error::fs(node, FsError::ReadOnly));
        }
        match self.blobs.room() {
            Some(room) if room < bytes => Err(Error::Io {
                op: "reserve space: the disk has less room than asked for above the data dir's reserve",
                path: self.blobs.dir().to_path_buf(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            }),
            _ => Ok(()),
        }
    }

    /// Sets (or clears) where blocks missing locally are fetched from.
    pub fn set_block_source(&self, source: Option<Arc<dyn crate::cache::BlockSource>>) {
        *self.source.write().unwrap_or_else(|e| e.into_inner()) = source;
    }

    /// A channel that gets, after each fetch of a block on demand, the next
    /// blocks of the same file that are not local (for read-ahead).
    pub fn prefetch_requests(&self) -> std::sync::mpsc::Receiver<Vec<BlockHash>> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.prefetchers.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
        rx
    }

    /// Residency bookkeeping of the bounded block cache.
    pub fn cache(&self) -> &crate::cache::Cache {
        &self.cache
    }

    /// The whole content of file `node` (holes and the tails of short
    /// blocks read as zeros), for tools and tests; the mount reads by range.
    pub fn read_file(&self, node: NodeId) -> Result<Vec<u8>> {
        let size = self.node(node)?.size;
        let too_big = || Error::Invalid(format!("{node}: {size} bytes do not fit in memory"));
        let mut data = vec![0u8; usize::try_from(size).map_err(|_| too_big())?];
        let bs = self.block_size();
        for (i, b) in self.file_blocks(node, 0, tree::block_count(size, bs))? {
            let bytes = self.read_block(&b)?;
            let start = usize::try_from(i.saturating_mul(bs)).map_err(|_| too_big())?;
            let end = start.saturating_add(bytes.len()).min(data.len());
            if start < end {
                data[start..end].copy_from_slice(&bytes[..end - start]);
            }
        }
        Ok(data)
    }

    /// Counters for `status` and `statfs`.
    pub fn stats(&self) -> Result<Stats> {
        let c: Counts = self.read_live(|ix| ix.counts())?;
        Ok(Stats {
            nodes: c.nodes + 1,
            files: c.files,
            dirs: c.dirs + 1,
            logical_bytes: c.logical_bytes,
            local_blob_bytes: c.block_bytes,
            cache_limit: self.config.cache_size,
            events: c.events,
        })
    }

    // ---- mutations -------------------------------------------------------

    /// Stores a block (hash, compress, write; not yet durable). Takes no
    /// engine lock: call it from many threads.
    ///
    /// When the disk has no room (or only the data dir's reserve) and
    /// there is a remote, blocks already pushed there are evicted to make
    /// room (see `cache`), and the put is tried once more.
    pub fn put_block(&self, data: &[u8]) -> Result<BlockRef> {
        if self.writer.is_none() {
            return Err(Error::fs(NodeId::ROOT, FsError::ReadOnly));
        }
        // Other writers may take the room made before this one's next try:
        // a few passes, while they evict something.
        for _ in 0..4 {
            match self.blobs.put(data) {
                Err(e) if e.os_error() == Some(libc::ENOSPC) && self.config.remote.is_some() => {
                    if !self.make_room()? {
                        return Err(e);
                    }
                }
                put => return Ok(put?.block),
            }
        }
        Ok(self.blobs.put(data)?.block)
    }

    /// One eviction pass, which gives up pushed blocks while the disk is
    /// short of room; one at a time (the writers that found the disk full
    /// at once wait for it, then find the room it made). Returns whether
    /// the disk has room now or the pass made some.
    fn make_room(&self) -> Result<bool> {
        static EVICTING: Mutex<()> = Mutex::new(());
        let _one = EVICTING.lock().unwrap_or_else(|e| e.into_inner());
        let r = crate::cache::evict(self)?;
        if r.evicted > 0 {
            tracing::info!(
                evicted = r.evicted,
                after = r.after,
                "the disk was full: evicted pushed blocks to make room"
            );
        }
        Ok(r.evicted > 0 || !r.short_of_room)
    }

    fn writer(&self, node: NodeId) -> Result<MutexGuard<'_, Writer>> {
        match &self.writer {
            Some(w) => Ok(lock_writer(w)),
            None => Err(Error::fs(node, FsError::ReadOnly)),
        }
    }

    /// Runs `f` with the writer lock and the index transaction; `f`
    /// returns the changes to record, which are appended and applied in
    /// order. The transaction is committed with the group (see
    /// [`GROUP_WINDOW`]).
    ///
    /// Once a change is in the log it is the truth: a later index failure
    /// loses only index work, which is redone from the log at once
    /// (`recover_index`); the operation fails only if that fails too, and
    /// no further change is made until it succeeds.
    fn mutate<T>(
        &self,
        node: NodeId,
        f: impl FnOnce(&mut Writer, &IndexWriter) -> Result<(Vec<(NodeId, Change)>, T)>,
    ) -> Result<T> {
        let mut w = self.writer(node)?;
        self.reopen_failed_log(&mut w)?;
        self.settle_background(&mut w)?;
        if w.index_behind {
            self.recover_index(&mut w, "an earlier change lost its index work")?;
        }
        let mut p = match w.pending.take() {
            Some(p) => p,
            None => Pending { ix: self.index.write_detached()?, since: Instant::now(), changes: 0 },
        };
        // Until the group is back in `w` or committed: a panic here leaves
        // the flag set, and the next change catches the index up first.
        w.index_behind = true;
        let (changes, out) = match f(&mut w, &p.ix) {
            Ok(v) => v,
            Err(e) => {
                // `f` only reads: the group goes on (an empty one is closed,
                // so no idle transaction or snapshot pins the index, unless
                // it follows a group committing in the background: its
                // caches may be all that shows that group's changes).
                w.index_behind = false;
                if p.changes > 0 || p.ix.follows_background_commit() {
                    w.pending = Some(p);
                }
                return Err(e);
            }
        };
        let (before, n) = (w.log.last_seq(), changes.len() as u64);
        if let Err((e, touched)) = self.record(&mut w, &mut p.ix, changes) {
            if !touched {
                // Nothing reached the index: the group goes on, and what
                // reached the log is cut (now, or before the next change).
                w.index_behind = false;
                if p.changes > 0 || p.ix.follows_background_commit() {
                    w.pending = Some(p);
                }
                if let Err(cut) = self.reopen_failed_log(&mut w) {
                    tracing::warn!("{}: {cut}; trying again before the next change", self.layout.dir.display());
                }
                return Err(e);
            }
            // The transaction may hold part of the change: the group is
            // dropped and what of it reached the log is applied again. The
            // operation succeeded if all of it is in the log.
            drop(p);
            let logged = w.log.last_seq().saturating_sub(before) == n;
            self.recover_index(&mut w, &format!("{e}"))?;
            return if logged { Ok(out) } else { Err(e) };
        }
        p.changes += 1;
        self.has_pending.store(true, Ordering::Release);
        let due = p.changes >= GROUP_MAX || p.since.elapsed() >= GROUP_WINDOW;
        w.pending = Some(p);
        w.index_behind = false;
        if due && w.last_durable_index.elapsed() < INDEX_DURABLE_EVERY {
            self.commit_in_background(&mut w)?;
        } else if due {
            self.commit_pending(&mut w)?;
            // The change itself is done (in the log and the index); a
            // durable index only spares a catch-up after a crash, so a
            // failure here is retried at the next interval.
            if let Err(e) = self.make_index_durable(&mut w) {
                tracing::warn!("{}: making the index durable: {e}", self.layout.dir.display());
            }
        }
        Ok(out)
    }

    /// [`Engine::mutate`] for the other modules of the engine: `f` reads
    /// the index and returns the changes to record, as one group.
    pub(crate) fn change<T>(
        &self,
        node: NodeId,
        f: impl FnOnce(&IndexWriter) -> Result<(Vec<(NodeId, Change)>, T)>,
    ) -> Result<T> {
        self.mutate(node, |_, ix| f(ix))
    }

    /// Appends `changes` to our log as events and applies them to `ix`.
    /// Once one fails to apply, the rest are still appended (and applied
    /// as far as they go, for the clocks of the ones after): an operation
    /// is then whole in the log, and the index work is redone from there.
    ///
    /// On failure, also whether `ix` was touched: when the first event's
    /// append fails (a full or read-only disk), nothing was applied and the
    /// group stands.
    fn record(
        &self,
        w: &mut Writer,
        ix: &mut IndexWriter,
        changes: Vec<(NodeId, Change)>,
    ) -> std::result::Result<(), (Error, bool)> {
        let machine = self.config.machine;
        let bs = self.block_size();
        let mut failed = None;
        let start = (w.log.position(), w.log.last_seq());
        for (i, (node, change)) in changes.into_iter().enumerate() {
            let touched = i > 0;
            let prev = ix.node(node).map_err(|e| (e, touched))?;
            // A content change is made on the version the node shows, or
            // on the one its caller's line left off at.
            let line = w.line.filter(|(n, _)| *n == node).map(|(_, b)| b);
            let base = match change.is_content() {
                true if line.is_some() => {
                    w.line = None;
                    line
                }
                true => prev.as_ref().and_then(|p| p.head).map(|h| h.event),
                false => None,
            };
            let mut clock = prev.map(|p| p.clock).unwrap_or_default();
            clock.tick(machine);
            let now = Timestamp::now();
            let time = if now > w.last_time { now } else { Timestamp(w.last_time.0.saturating_add(1)) };
            let event = Event { node, machine, seq: w.log.last_seq() + 1, time, clock, change, base };
            let pos = match w.log.append(std::slice::from_ref(&event)) {
                Ok(pos) => pos,
                Err(e) => {
                    w.cut_to = Some(start);
                    return Err((e, touched));
                }
            };
            let pos = pos
                .first()
                .copied()
                .ok_or_else(|| (Error::Invalid("log append returned no position".into()), touched))?;
            w.last_time = time;
            if let Err(e) = ix.apply(pos, &event, bs) {
                failed.get_or_insert(e);
            }
        }
        w.line = None;
        if w.log.last_seq() != start.1 {
            // `try_send` on a full channel is a check of an atomic: the
            // watcher already has a wake-up waiting, and this one adds
            // nothing to it. A watcher that hung up is dropped.
            w.log_watchers.retain(|tx| !matches!(tx.try_send(()), Err(std::sync::mpsc::TrySendError::Disconnected(_))));
        }
        failed.map_or(Ok(()), |e| Err((e, true)))
    }

    /// A log writer that failed (a full disk, EIO) refuses every later
    /// append, since its file may end in part of a record: it is opened
    /// again. What the failed operation appended is cut first (none of it
    /// was acknowledged); a failed sync cuts nothing, and its records stay
    /// (they were not acknowledged either, but the operations that made them
    /// were, and their index work stands). If the cut or the reopen fails,
    /// the writer stays failed and the next change tries again.
    fn reopen_failed_log(&self, w: &mut Writer) -> Result<()> {
        let Some(why) = w.log.failure().map(str::to_string) else { return Ok(()) };
        tracing::warn!("{}: our log failed earlier ({why}); opening it again", self.layout.dir.display());
        // The seq the reopened log must end at for the index to need no
        // catch-up: where the cut goes, or where the failed writer stood.
        let mut expected = w.log.last_seq();
        if let Some((to, seq)) = w.cut_to {
            let cut = crate::log::cut_at(self.storage.as_ref(), &self.layout.log(), to)?;
            tracing::warn!("cut {cut} bytes a failed operation appended to our log at {to:?}");
            w.cut_to = None;
            expected = seq;
        }
        let (log, recovery) =
            LogWriter::open(self.storage.clone(), &self.layout.log(), self.config.machine, self.config.segment_size)?;
        if let Some(cut) = recovery.cut {
            tracing::warn!(
                "cut {} bytes a failed append left at byte {} of {}",
                cut.bytes,
                cut.offset,
                cut.path.display()
            );
        }
        if log.last_seq() != expected {
            // Its index work is redone from the log with the rest.
            w.pending = None;
            w.index_behind = true;
        }
        w.last_time = w.last_time.max(log.last_time());
        w.log = log;
        Ok(())
    }

    /// Hands the pending group to a thread of its own to commit, after the
    /// group before it, and starts the next group at once on its caches
    /// ([`Index::commit_in_background`]): the redb writes of a commit then
    /// run beside the next changes, not in their way. A group that cannot
    /// go (its caches no longer hold all it wrote) is committed here.
    fn commit_in_background(&self, w: &mut Writer) -> Result<()> {
        let _ = self.index.wait_in_flight();
        self.settle_background(w)?;
        let Some(p) = w.pending.take() else { return Ok(()) };
        if !p.ix.can_commit_in_background() {
            w.pending = Some(p);
            return self.commit_pending(w);
        }
        match self.index.commit_in_background(p.ix) {
            Ok(next) => {
                w.pending = Some(Pending { ix: next, since: Instant::now(), changes: 0 });
                Ok(())
            }
            Err(e) => self.recover_index(w, &format!("{e}")),
        }
    }

    /// If a group committed in the background failed: drops the pending
    /// group (its caches hold the failed one's changes) and applies every
    /// change the index lacks again from the log.
    fn settle_background(&self, w: &mut Writer) -> Result<()> {
        match self.index.take_failure() {
            Some(why) => {
                w.pending = None;
                self.recover_index(w, &format!("a group committed in the background failed: {why}"))
            }
            None => Ok(()),
        }
    }

    /// Commits the pending group of index changes, if any (not durably:
    /// that is quick, and readers go back to lock-free snapshots at once);
    /// if the commit fails, the index catches up from the log instead.
    fn commit_pending(&self, w: &mut Writer) -> Result<()> {
        let Some(p) = w.pending.take() else { return Ok(()) };
        match p.ix.commit(false) {
            Ok(()) => {
                self.has_pending.store(false, Ordering::Release);
                Ok(())
            }
            Err(e) => self.recover_index(w, &format!("{e}")),
        }
    }

    /// Makes every index commit so far durable, after the blocks and the
    /// log they index (a durable index must not get ahead of the durable
    /// log). No group may be pending: redb has one write transaction at a
    /// time.
    fn make_index_durable(&self, w: &mut Writer) -> Result<()> {
        w.last_durable_index = Instant::now();
        self.blobs.sync_pending()?;
        w.log.sync()?;
        self.index.write()?.commit(true)
    }

    /// After index work was lost (`why`): applies again from the logs what
    /// the index lacks, as an import does. Called with the writer held and
    /// no group pending. Until it returns, readers wait on the writer
    /// rather than read a snapshot that lacks acknowledged changes; if it
    /// fails, changes are refused until a later call succeeds.
    fn recover_index(&self, w: &mut Writer, why: &str) -> Result<()> {
        w.index_behind = true;
        // A failed operation's events are cut before anything is imported.
        self.reopen_failed_log(w)?;
        // What a failed background group would report is redone here too.
        let _ = self.index.wait_in_flight();
        let _ = self.index.take_failure();
        tracing::warn!("{}: index changes lost ({why}); applying them again from the log", self.layout.dir.display());
        let mut caught_up = self.import_locked(w);
        if let Err(e) = &caught_up {
            // After an I/O failure redb refuses every transaction until the
            // file is reopened (a full disk that has room again included).
            tracing::warn!("{}: catching the index up failed ({e}); reopening it", self.layout.dir.display());
            caught_up = self.index.reopen().and_then(|()| self.import_locked(w));
        }
        // Until the index has caught up, readers come to the writer (and
        // try again) rather than read a snapshot lacking acknowledged
        // changes: on a disk that refuses writes, reads fail with its errno
        // instead of hiding files.
        self.has_pending.store(caught_up.is_err(), Ordering::Release);
        match caught_up {
            Ok(_) => {
                w.index_behind = false;
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    "{}: the index is behind the log and changes are refused until it catches up: {e}",
                    self.layout.dir.display()
                );
                // A full disk (or EIO, EROFS) reaches the caller as itself.
                if e.os_error().is_some() {
                    return Err(e);
                }
                Err(Error::Index {
                    path: self.layout.index(),
                    source: crate::index::IndexError::Behind { why: why.to_string(), source: Box::new(e) },
                })
            }
        }
    }

    /// Runs a read of the live tree on a snapshot or, while the writer
    /// holds index changes not yet committed, on its transaction (under
    /// the writer mutex), so a read sees every change made before it. A
    /// group older than [`GROUP_WINDOW`] is closed first (committed in the
    /// background, or here if empty), so readers go back to lock-free
    /// snapshots once writes pause.
    fn read_live<T>(&self, f: impl Fn(&IndexView<'_>) -> Result<T>) -> Result<T> {
        if let (true, Some(w)) = (self.has_pending.load(Ordering::Acquire), &self.writer) {
            let mut w = lock_writer(w);
            if let Some(read) = self.read_pending(&mut w, &f)? {
                return read;
            }
        }
        f(&IndexView::Snapshot(self.index.read()?))
    }

    /// [`Engine::read_live`] with a group pending: settles and closes
    /// groups as due; the read, if it must be made on the pending group.
    fn read_pending<T>(&self, w: &mut Writer, f: &impl Fn(&IndexView<'_>) -> Result<T>) -> Result<Option<Result<T>>> {
        self.settle_background(w)?;
        if w.index_behind && w.pending.is_none() {
            // A group was lost (a panic while it was out of the writer).
            self.recover_index(w, "a change was interrupted")?;
        }
        match &w.pending {
            // A group with changes goes to the background, as from a
            // change; an empty one (writes have paused) is closed here.
            Some(p) if p.since.elapsed() >= GROUP_WINDOW && p.changes > 0 => self.commit_in_background(w)?,
            Some(p) if p.since.elapsed() >= GROUP_WINDOW => self.commit_pending(w)?,
            _ => {}
        }
        if let Some(p) = &w.pending {
            let read = f(&IndexView::Pending(&p.ix));
            // A read that needed the transaction fails when the group
            // before it failed in the background: once that group is
            // applied again, it reads the recovered index.
            if read.is_ok() || p.ix.can_commit_in_background() {
                return Ok(Some(read));
            }
            let _ = self.index.wait_in_flight();
            self.settle_background(w)?;
            if w.pending.is_some() {
                return Ok(Some(read));
            }
        }
        Ok(None)
    }

    fn live_node(ix: &IndexWriter, id: NodeId) -> Result<NodeRecord> {
        match ix.node(id)? {
            Some(n) if !n.removed => Ok(n),
            _ => Err(Error::fs(id, FsError::NotFound)),
        }
    }

    /// A node that exists, removed or not: unlinked nodes stay usable
    /// through open handles (fchmod, ftruncate, fsetxattr).
    fn existing_node(ix: &IndexWriter, id: NodeId) -> Result<NodeRecord> {
        ix.node(id)?.ok_or(Error::fs(id, FsError::NotFound))
    }

    fn child(ix: &IndexWriter, dir: NodeId, name: &[u8]) -> Result<Option<(NodeId, NodeRecord)>> {
        let dir_node = Self::live_node(ix, dir)?;
        if dir_node.kind != NodeKind::Dir {
            return Err(Error::fs(dir, FsError::NotDir));
        }
        match ix.lookup(dir, name)? {
            Some((id, _)) => Ok(Some((id, Self::live_node(ix, id)?))),
            None => Ok(None),
        }
    }

    /// Creates `name` in `parent`.
    pub fn create(
        &self,
        parent: NodeId,
        name: &[u8],
        kind: NodeKind,
        attrs: Attrs,
        target: &[u8],
    ) -> Result<NodeState> {
        self.create_with_xattrs(parent, name, kind, attrs, target, &[])
    }

    /// [`Engine::create`] with extended attributes set in the same mutation
    /// (a new node's inherited POSIX ACLs: it never exists without them).
    pub fn create_with_xattrs(
        &self,
        parent: NodeId,
        name: &[u8],
        kind: NodeKind,
        attrs: Attrs,
        target: &[u8],
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<NodeState> {
        validate_name(parent, name)?;
        for (n, v) in xattrs {
            if n.is_empty() || n.len() > NAME_MAX || v.len() > XATTR_VALUE_MAX {
                return Err(Error::fs(parent, FsError::Invalid));
            }
        }
        let id = self.mutate(parent, |w, ix| {
            if Self::child(ix, parent, name)?.is_some() {
                return Err(Error::fs(parent, FsError::Exists));
            }
            let id = NodeId::new(w.next_counter, self.config.machine);
            w.next_counter += 1;
            let mut attrs = attrs;
            attrs.mode &= 0o7777;
            let now = Timestamp::now();
            for t in [&mut attrs.atime, &mut attrs.mtime, &mut attrs.ctime, &mut attrs.crtime] {
                if t.0 == 0 {
                    *t = now;
                }
            }
            let target = if kind == NodeKind::Symlink { target.to_vec() } else { Vec::new() };
            let mut changes = vec![(id, Change::Create { parent, name: name.to_vec(), kind, attrs, target })];
            for (name, value) in xattrs {
                changes.push((id, Change::SetXattr { name: name.clone(), value: value.clone() }));
            }
            Ok((changes, id))
        })?;
        self.node(id)
    }

    /// Changes attributes (ctime follows).
    pub fn set_attrs(&self, node: NodeId, change: AttrChange) -> Result<NodeState> {
        self.mutate(node, |_, ix| {
            Self::existing_node(ix, node)?;
            Ok((vec![(node, Change::SetAttrs(change))], ()))
        })?;
        self.node(node)
    }

    /// Records a write: the file is now `size` bytes and `blocks` changed.
    pub fn write_blocks(&self, node: NodeId, size: u64, blocks: Vec<BlockChange>) -> Result<NodeState> {
        self.write_blocks_on(node, None, size, blocks)?;
        self.node(node)
    }

    /// [`Engine::write_blocks`] made on content version `base` (`None`: the
    /// one the node shows now), returning the version it makes. A caller
    /// that keeps writing one file (the mount, while the file is open)
    /// passes the version its last write made, so that its writes stay one
    /// line: if a peer's concurrent change took the name meanwhile, they go
    /// on in the conflict copy that holds that line (see `merge`), never on
    /// top of the peer's bytes.
    pub fn write_blocks_on(
        &self,
        node: NodeId,
        base: Option<EventId>,
        size: u64,
        blocks: Vec<BlockChange>,
    ) -> Result<EventId> {
        self.content_change(node, base, Change::Content { size, blocks })
    }

    /// Records content change `change` of the file `node`, made on version
    /// `base` (`None`: the one it shows), and returns the version it makes.
    fn content_change(&self, node: NodeId, base: Option<EventId>, change: Change) -> Result<EventId> {
        self.mutate(node, |w, ix| {
            match Self::existing_node(ix, node)?.kind {
                NodeKind::File => {}
                NodeKind::Dir => return Err(Error::fs(node, FsError::IsDir)),
                _ => return Err(Error::fs(node, FsError::WrongKind)),
            }
            w.line = base.map(|b| (node, b));
            let made = EventId { machine: self.config.machine, seq: w.log.last_seq() + 1 };
            Ok((vec![(node, change)], made))
        })
    }

    /// Where content version `base` of `node` lives, when it is known and
    /// not the version `node` shows.
    fn other_version(&self, node: NodeId, base: Option<EventId>) -> Result<Option<crate::merge::VersionLoc>> {
        let Some(b) = base else { return Ok(None) };
        self.read_live(|ix| match ix.node(node)?.and_then(|n| n.head) {
            Some(h) if h.event == b => Ok(None),
            _ => ix.version(b),
        })
    }

    /// The size of content version `base` of `node` (`None`, or a version
    /// not known here: the size it shows).
    pub fn version_size(&self, node: NodeId, base: Option<EventId>) -> Result<u64> {
        self.read_live(|ix| {
            let n = ix.node(node)?.ok_or(Error::fs(node, FsError::NotFound))?;
            match base {
                Some(b) if n.head.map(|h| h.event) != Some(b) => Ok(ix.version(b)?.map_or(n.size, |l| l.size)),
                _ => Ok(n.size),
            }
        })
    }

    /// Block `index` of content version `base` of `node` (`None`, or a
    /// version not known here: of the content it shows); `None` for a hole.
    pub fn version_block(&self, node: NodeId, base: Option<EventId>, index: u64) -> Result<Option<BlockRef>> {
        match self.other_version(node, base)? {
            Some(loc) => Ok(self.read_live(|ix| ix.blocks_after(loc.node, loc.key))?.get(&index).copied()),
            None => Ok(self.file_blocks(node, index, 1)?.into_iter().find(|(i, _)| *i == index).map(|(_, b)| b)),
        }
    }

    /// The content version `node` shows now (`None` for other than files).
    pub fn content_version(&self, node: NodeId) -> Result<Option<EventId>> {
        Ok(self.read_live(|ix| Ok(ix.node(node)?.and_then(|n| n.head)))?.map(|h| h.event))
    }

    /// Truncates or extends a file to `size`.
    pub fn truncate(&self, node: NodeId, size: u64) -> Result<NodeState> {
        self.truncate_on(node, None, size)?;
        self.node(node)
    }

    /// [`Engine::truncate`] made on content version `base` (`None`: the one
    /// the node shows now), returning the version it makes; see
    /// [`Engine::write_blocks_on`].
    pub fn truncate_on(&self, node: NodeId, base: Option<EventId>, size: u64) -> Result<EventId> {
        // The block that `size` cuts through, in the version the truncate
        // is made on, keeps only its bytes before the cut, so that a later
        // extension reads zeros there.
        let bs = self.block_size();
        let (index, keep) = (size / bs, (size % bs) as usize);
        let cuts = keep != 0 && size < self.version_size(node, base)?;
        let tail = match if cuts { self.version_block(node, base, index)? } else { None } {
            Some(b) if b.len as usize > keep => {
                let mut data = self.read_block(&b)?;
                data.truncate(keep);
                let block = if data.iter().all(|&x| x == 0) { None } else { Some(self.put_block(&data)?) };
                Some(BlockChange { index, block })
            }
            _ => None,
        };
        self.content_change(node, base, Change::Truncate { size, tail })
    }

    /// Zeroes `len` bytes of file `node` from `offset` (`fallocate`
    /// `PUNCH_HOLE` and `ZERO_RANGE`), made on content version `base`
    /// (`None`: the one it shows), and returns the version it makes (the
    /// last, when it takes several). Blocks the range covers whole (up to
    /// the end of the file) become holes; the blocks it cuts through keep
    /// their other bytes (a hole if nothing else is left). The file grows
    /// to `offset + len` unless `keep_size`. Recorded as content changes,
    /// each listing at most [`ZERO_RANGE_BATCH`] blocks: the work and the
    /// log grow with the blocks stored in the range, never with its length.
    pub fn zero_range_on(
        &self,
        node: NodeId,
        base: Option<EventId>,
        offset: u64,
        len: u64,
        keep_size: bool,
    ) -> Result<EventId> {
        let bs = self.block_size();
        let end = offset.checked_add(len).ok_or(Error::fs(node, FsError::Invalid))?;
        let size = self.version_size(node, base)?;
        let new_size = if keep_size { size } else { size.max(end) };
        // Past the old end everything reads as zeros already.
        let zend = end.min(size);
        let mut changes = Vec::new();
        if offset < zend {
            let (first, last) = (offset / bs, (zend - 1) / bs);
            // A block is wholly zeroed if the range covers it up to the end
            // of the file; else it keeps its bytes outside the range.
            let whole = |i: u64| offset <= i * bs && zend >= (i + 1).saturating_mul(bs).min(size);
            let mut edges = vec![first];
            if last != first {
                edges.push(last);
            }
            for &i in &edges {
                if whole(i) {
                    continue;
                }
                let Some(b) = self.version_block(node, base, i)? else { continue };
                let mut data = self.read_block(&b)?;
                let from = offset.saturating_sub(i * bs).min(data.len() as u64) as usize;
                let to = (zend - i * bs).min(data.len() as u64) as usize;
                data[from..to].fill(0);
                let block = if data.iter().all(|&x| x == 0) { None } else { Some(self.put_block(&data)?) };
                changes.push(BlockChange { index: i, block });
            }
            // The blocks in between (and the edges covered whole): only
            // those stored need a change.
            let lo = if whole(first) { first } else { first + 1 };
            let hi = if whole(last) { last + 1 } else { last };
            if lo < hi {
                for i in self.version_block_indices(node, base, lo, hi - lo)? {
                    changes.push(BlockChange { index: i, block: None });
                }
            }
            changes.sort_by_key(|c| c.index);
        }
        let mut base = base;
        let mut made = None;
        let mut batches = changes.chunks(ZERO_RANGE_BATCH).peekable();
        if batches.peek().is_none() {
            return self.content_change(node, base, Change::Content { size: new_size, blocks: Vec::new() });
        }
        for batch in batches {
            let m = self.content_change(node, base, Change::Content { size: new_size, blocks: batch.to_vec() })?;
            base = Some(m);
            made = Some(m);
        }
        made.ok_or(Error::fs(node, FsError::Invalid))
    }

    /// Indices of the stored blocks of content version `base` of `node`
    /// (see [`Engine::version_block`]) in `first..first+count`.
    fn version_block_indices(&self, node: NodeId, base: Option<EventId>, first: u64, count: u64) -> Result<Vec<u64>> {
        let end = first.saturating_add(count);
        Ok(match self.other_version(node, base)? {
            Some(loc) => {
                let all = self.read_live(|ix| ix.blocks_after(loc.node, loc.key))?;
                all.range(first..end).map(|(i, _)| *i).collect()
            }
            None => self.file_blocks(node, first, count)?.into_iter().map(|(i, _)| i).collect(),
        })
    }

    /// Makes blocks `dst_first..` of file `dst` share the blocks
    /// `src_first..src_first+count` of file `src` as it shows them
    /// (`copy_file_range` of whole aligned blocks: no byte is read or
    /// written, the block references are copied, so the copy takes no
    /// room), made on content version `base` of `dst`. A hole of `src`
    /// makes a hole in `dst`. The file grows to cover the blocks copied.
    ///
    /// At most [`SHARE_BATCH`] stored blocks of each file are looked at: a
    /// range with more is cut short. Returns how many blocks were copied
    /// (from the first) and the version made.
    pub fn share_blocks_on(
        &self,
        src: NodeId,
        src_first: u64,
        dst: NodeId,
        base: Option<EventId>,
        dst_first: u64,
        count: u64,
    ) -> Result<(u64, EventId)> {
        let bs = self.block_size();
        let from_src = self.read_live(|ix| ix.blocks_limited(src, src_first, count, SHARE_BATCH))?;
        let mut done = count;
        if from_src.len() >= SHARE_BATCH {
            done = done.min(from_src.last().map_or(count, |(i, _)| i - src_first + 1));
        }
        let in_dst = match self.other_version(dst, base)? {
            Some(loc) => {
                let all = self.read_live(|ix| ix.blocks_after(loc.node, loc.key))?;
                let end = dst_first.saturating_add(count);
                all.range(dst_first..end).map(|(i, _)| *i).take(SHARE_BATCH).collect::<Vec<_>>()
            }
            None => self
                .read_live(|ix| ix.blocks_limited(dst, dst_first, count, SHARE_BATCH))?
                .into_iter()
                .map(|(i, _)| i)
                .collect(),
        };
        if in_dst.len() >= SHARE_BATCH {
            done = done.min(in_dst.last().map_or(count, |i| i - dst_first + 1));
        }
        let mut changes: BTreeMap<u64, Option<BlockRef>> = BTreeMap::new();
        for i in in_dst.into_iter().filter(|i| i - dst_first < done) {
            changes.insert(i, None);
        }
        for (i, b) in from_src.into_iter().filter(|(i, _)| i - src_first < done) {
            changes.insert(i - src_first + dst_first, Some(b));
        }
        let blocks = changes.into_iter().map(|(index, block)| BlockChange { index, block }).collect();
        let covered = dst_first.saturating_add(done).saturating_mul(bs);
        let size = self.version_size(dst, base)?.max(covered);
        let made = self.content_change(dst, base, Change::Content { size, blocks })?;
        Ok((done, made))
    }

    /// Renames `parent/name` to `new_parent/new_name`, and says which
    /// nodes moved.
    pub fn rename(
        &self,
        parent: NodeId,
        name: &[u8],
        new_parent: NodeId,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<Renamed> {
        validate_name(new_parent, new_name)?;
        if name.is_empty() || name.len() > NAME_MAX {
            return Err(Error::fs(parent, FsError::NotFound));
        }
        self.mutate(parent, |_, ix| {
            let (src, src_node) = Self::child(ix, parent, name)?.ok_or(Error::fs(parent, FsError::NotFound))?;
            let dst = Self::child(ix, new_parent, new_name)?;
            let moves_into_self = |moved: NodeId, kind: NodeKind, into: NodeId| -> Result<bool> {
                if kind != NodeKind::Dir {
                    return Ok(false);
                }
                let mut cur = into;
                loop {
                    if cur == moved {
                        return Ok(true);
                    }
                    if cur == NodeId::ROOT {
                        return Ok(false);
                    }
                    cur = Self::live_node(ix, cur)?.parent;
                }
            };
            if moves_into_self(src, src_node.kind, new_parent)? {
                return Err(Error::fs(src, FsError::MoveIntoSelf));
            }
            let mv = |id, p: NodeId, n: &[u8]| (id, Change::Move { parent: p, name: n.to_vec() });
            if flags.exchange {
                let (dst, dst_node) = dst.ok_or(Error::fs(new_parent, FsError::NotFound))?;
                if dst == src {
                    return Ok((vec![], Renamed { moved: src, swapped: None }));
                }
                if moves_into_self(dst, dst_node.kind, parent)? {
                    return Err(Error::fs(dst, FsError::MoveIntoSelf));
                }
                return Ok((vec![(src, Change::Exchange { with: dst })], Renamed { moved: src, swapped: Some(dst) }));
            }
            let mut changes = Vec::new();
            if let Some((dst, dst_node)) = dst {
                if flags.noreplace {
                    return Err(Error::fs(new_parent, FsError::Exists));
                }
                if dst == src {
                    return Ok((vec![], Renamed { moved: src, swapped: None }));
                }
                match (src_node.kind == NodeKind::Dir, dst_node.kind == NodeKind::Dir) {
                    (true, false) => return Err(Error::fs(dst, FsError::NotDir)),
                    (false, true) => return Err(Error::fs(dst, FsError::IsDir)),
                    (true, true) if ix.has_entries(dst)? => return Err(Error::fs(dst, FsError::NotEmpty)),
                    _ => {}
                }
                changes.push((dst, Change::Remove));
            }
            changes.push(mv(src, new_parent, new_name));
            Ok((changes, Renamed { moved: src, swapped: None }))
        })
    }

    /// Removes the non-directory `parent/name`.
    pub fn unlink(&self, parent: NodeId, name: &[u8]) -> Result<()> {
        self.mutate(parent, |_, ix| {
            let (id, n) = Self::child(ix, parent, name)?.ok_or(Error::fs(parent, FsError::NotFound))?;
            if n.kind == NodeKind::Dir {
                return Err(Error::fs(id, FsError::IsDir));
            }
            Ok((vec![(id, Change::Remove)], ()))
        })
    }

    /// Removes the empty directory `parent/name`.
    pub fn rmdir(&self, parent: NodeId, name: &[u8]) -> Result<()> {
        self.mutate(parent, |_, ix| {
            let (id, n) = Self::child(ix, parent, name)?.ok_or(Error::fs(parent, FsError::NotFound))?;
            if n.kind != NodeKind::Dir {
                return Err(Error::fs(id, FsError::NotDir));
            }
            if ix.has_entries(id)? {
                return Err(Error::fs(id, FsError::NotEmpty));
            }
            Ok((vec![(id, Change::Remove)], ()))
        })
    }

    /// Sets extended attribute `name`. A name over [`NAME_MAX`] bytes or a
    /// value over [`XATTR_VALUE_MAX`] bytes is [`FsError::Invalid`].
    pub fn set_xattr(&self, node: NodeId, name: &[u8], value: &[u8], mode: XattrMode) -> Result<()> {
        if name.is_empty() || name.len() > NAME_MAX || value.len() > XATTR_VALUE_MAX {
            return Err(Error::fs(node, FsError::Invalid));
        }
        self.mutate(node, |_, ix| {
            let n = Self::existing_node(ix, node)?;
            match (mode, n.xattr(name).is_some()) {
                (XattrMode::Create, true) => return Err(Error::fs(node, FsError::Exists)),
                (XattrMode::Replace, false) => return Err(Error::fs(node, FsError::NoAttr)),
                _ => {}
            }
            Ok((vec![(node, Change::SetXattr { name: name.to_vec(), value: value.to_vec() })], ()))
        })
    }

    /// Removes extended attribute `name`.
    pub fn remove_xattr(&self, node: NodeId, name: &[u8]) -> Result<()> {
        self.mutate(node, |_, ix| {
            if Self::existing_node(ix, node)?.xattr(name).is_none() {
                return Err(Error::fs(node, FsError::NoAttr));
            }
            Ok((vec![(node, Change::RemoveXattr { name: name.to_vec() })], ()))
        })
    }

    /// Changes attributes and extended attributes of one node in one
    /// mutation, so that they land in the log together (a POSIX ACL and the
    /// permission bits it must agree with). `xattrs` are `(name, Some(value))`
    /// to set and `(name, None)` to remove; removing a missing one is no
    /// change. Names and values are checked as in [`Engine::set_xattr`].
    pub fn change_node(
        &self,
        node: NodeId,
        attrs: AttrChange,
        xattrs: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> Result<NodeState> {
        for (name, value) in xattrs {
            if name.is_empty() || name.len() > NAME_MAX || value.as_ref().is_some_and(|v| v.len() > XATTR_VALUE_MAX) {
                return Err(Error::fs(node, FsError::Invalid));
            }
        }
        self.mutate(node, |_, ix| {
            let n = Self::existing_node(ix, node)?;
            let mut changes = Vec::with_capacity(xattrs.len() + 1);
            if attrs != AttrChange::default() {
                changes.push((node, Change::SetAttrs(attrs)));
            }
            for (name, value) in xattrs {
                match value {
                    Some(value) => changes.push((node, Change::SetXattr { name: name.clone(), value: value.clone() })),
                    None if n.xattr(name).is_some() => changes.push((node, Change::RemoveXattr { name: name.clone() })),
                    None => {}
                }
            }
            Ok((changes, ()))
        })?;
        self.node(node)
    }

    /// Sets the volume name (recorded on the root, so it replicates).
    pub fn set_volname(&self, name: &[u8]) -> Result<()> {
        self.mutate(NodeId::ROOT, |_, _| Ok((vec![(NodeId::ROOT, Change::SetVolname { name: name.to_vec() })], ())))
    }

    /// Pins or unpins a node.
    pub fn set_pinned(&self, node: NodeId, pinned: bool) -> Result<()> {
        self.mutate(node, |_, ix| {
            Self::live_node(ix, node)?;
            Ok((vec![(node, Change::SetPinned { pinned })], ()))
        })
    }

    /// Makes everything committed so far durable: blocks first, then the
    /// log records that reference them.
    pub fn sync(&self) -> Result<()> {
        let Some(w) = &self.writer else { return Ok(()) };
        let mut w = lock_writer(w);
        self.reopen_failed_log(&mut w)?;
        self.blobs.sync_pending()?;
        w.log.sync()
    }

    /// Syncs and makes the index durable too (at unmount and exit), then
    /// marks the shutdown clean.
    pub fn close(&self) -> Result<()> {
        // `make_index_durable` syncs the blocks, then the log, first.
        if let Some(w) = &self.writer {
            let mut w = lock_writer(w);
            self.commit_pending(&mut w)?;
            self.make_index_durable(&mut w)?;
            let dirty = self.layout.dirty();
            if self.storage.exists(&dirty) {
                self.storage.remove_file(&dirty).map_err(|e| Error::io("remove", &dirty, e))?;
                self.storage.sync_dir(&self.layout.dir).map_err(|e| Error::io("sync", &self.layout.dir, e))?;
            }
        }
        Ok(())
    }

    /// Sends `()` on `tx` (with `try_send`: never blocking a change, so
    /// give it a channel of capacity 1) after every operation that appends
    /// to our log, once its records are written (not yet synced: a reader
    /// makes them durable with [`Engine::sync`]). A read-only engine never
    /// sends. Dropping the receiver ends the watch.
    pub fn watch_log(&self, tx: std::sync::mpsc::SyncSender<()>) {
        if let Some(w) = &self.writer {
            lock_writer(w).log_watchers.push(tx);
        }
    }

    /// Where the next record of our log will go.
    pub fn log_position(&self) -> Option<LogPos> {
        // A cut pending (see `Writer::cut_to`) starts there: nothing past it
        // may be pushed.
        self.writer.as_ref().map(|w| {
            let w = lock_writer(w);
            w.cut_to.map_or_else(|| w.log.position(), |(pos, _)| pos)
        })
    }

    /// The path of `id` from the root (`/a/b`), as it is now (or at the
    /// view's time); a removed node gives the path it had.
    pub fn path_of(&self, id: NodeId) -> Result<Vec<u8>> {
        let mut parts = Vec::new();
        let mut cur = id;
        while cur != NodeId::ROOT {
            let n = self.node(cur)?;
            parts.push(n.name);
            if parts.len() > 4096 {
                return Err(Error::Invalid(format!("{id}: path deeper than 4096 levels")));
            }
            cur = n.parent;
        }
        let mut path = Vec::new();
        for p in parts.iter().rev() {
            path.push(b'/');
            path.extend_from_slice(p);
        }
        if path.is_empty() {
            path.push(b'/');
        }
        Ok(path)
    }

    /// The whole tree as `(path, state, stored blocks)` in path order: for
    /// comparing trees (rebuild equivalence, replica convergence).
    pub fn dump_tree(&self) -> Result<Vec<TreeEntry>> {
        let mut out = Vec::new();
        let mut stack = vec![(Vec::new(), NodeId::ROOT)];
        while let Some((path, id)) = stack.pop() {
            let node = self.node(id)?;
            let blocks = if node.kind == NodeKind::File {
                self.file_blocks(id, 0, tree::block_count(node.size, self.block_size()))?
            } else {
                Vec::new()
            };
            if node.kind == NodeKind::Dir {
                for e in self.read_dir(id, None, usize::MAX)? {
                    let mut p = path.clone();
                    p.push(b'/');
                    p.extend_from_slice(&e.name);
                    stack.push((p, e.node));
                }
            }
            out.push((path, node, blocks));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

impl Engine {
    /// Drops the engine without syncing anything, as a crash would (crash
    /// tests; with [`crate::storage::CrashStorage`] the unsynced writes can
    /// then be thrown away).
    pub fn abandon(mut self) {
        self.abandoned = true;
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(c) = self.compressor.take() {
            c.stop();
        }
        if self.writer.is_some() && !self.abandoned {
            if let Err(e) = self.close() {
                tracing::error!("{}: closing: {e}", self.layout.dir.display());
            }
        }
        // An uncommitted group is dropped (as a crash would) before the
        // database it belongs to.
        if let Some(w) = &self.writer {
            lock_writer(w).pending = None;
        }
        // Before the database goes: a group may still be committing.
        let _ = self.index.wait_in_flight();
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

fn lock_writer(w: &Mutex<Writer>) -> MutexGuard<'_, Writer> {
    // A panic while holding the writer leaves the log and the index as they
    // were at the last append, which open() can always recover from.
    w.lock().unwrap_or_else(|e| e.into_inner())
}

/// Seeds a missing `history.redb` with a copy of `index.redb` when no writer
/// has the data dir open and the last one closed cleanly: copying is far
/// faster than replaying a long log, and catching up does the rest. Best
/// effort: without a seed, the view builds `history.redb` from the log.
fn seed_history(layout: &Layout) {
    // Held while copying, so no writer changes the file under the copy.
    let Ok(_writer) = take_lock(&layout.lock()) else { return };
    if layout.dirty().exists() || !layout.index().exists() {
        return;
    }
    let tmp = layout.dir.join("history.redb.tmp");
    if std::fs::copy(layout.index(), &tmp).and_then(|_| std::fs::rename(&tmp, layout.history_index())).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Whether `ix` was applied up to an event that the log no longer has where
/// it was (a crash cut it and the writer may have logged another event there).
fn index_diverged(storage: &dyn Storage, log_root: &Path, ix: &Index) -> Result<bool> {
    let r = ix.read()?;
    for m in r.machines()? {
        let Some((segment, offset, seq)) = r.applied(m)? else { continue };
        let known = r.event_location(m, seq)?;
        let found = log::read_record_at(storage, log_root, LogPos { machine: m, segment, offset }).ok();
        let same = match (known, found) {
            (Some(k), Some(d)) => d.event.seq == seq && d.event.time == k.time && d.event.node == k.node,
            _ => false,
        };
        if !same {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Opens (creating it, never emptying it) a file that is only ever locked.
fn open_lock_file(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("open", path, e))
}

/// Takes `history.lock`: exclusive when no view holds it (returns true),
/// else shared, waiting only for a view that is updating `history.redb`.
fn lock_history(path: &Path) -> Result<(File, bool)> {
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

fn take_lock(path: &Path) -> Result<File> {
    let file = open_lock_file(path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(Error::Locked { path: path.to_path_buf(), reason: "another process has it mounted or open".into() })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io("lock", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::SeqCst;

    fn listed(e: &Engine) -> Vec<Vec<u8>> {
        let mut names: Vec<Vec<u8>> =
            e.read_dir(NodeId::ROOT, None, usize::MAX).expect("read_dir").into_iter().map(|d| d.name).collect();
        names.sort();
        names
    }

    /// The changes of a group whose background commit failed are applied
    /// again from the log: every file created before, in and after that
    /// group is in the live tree, and after a reopen.
    #[test]
    fn a_group_that_failed_in_the_background_is_applied_again_from_the_log() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        Engine::init(&dir, Config::new_default(MachineId::random())).expect("init");
        let e = Engine::open(&dir).expect("open");
        let mut names = Vec::new();
        let create = |e: &Engine, i: usize| {
            let name = format!("f{i:04}").into_bytes();
            e.create(NodeId::ROOT, &name, NodeKind::File, Attrs::default(), b"").expect("create");
            name
        };
        names.extend((0..10).map(|i| create(&e, i)));
        e.index.fail_next_background.store(true, SeqCst);
        // Until a group has gone to the background (and failed), then more.
        while e.index.fail_next_background.load(SeqCst) {
            names.push(create(&e, names.len()));
            std::thread::sleep(Duration::from_millis(1));
        }
        for _ in 0..20 {
            names.push(create(&e, names.len()));
        }
        names.sort();
        assert_eq!(listed(&e), names);
        drop(e);
        let e = Engine::open(&dir).expect("reopen");
        assert_eq!(listed(&e), names);
    }
}
