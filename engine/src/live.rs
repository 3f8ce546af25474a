//! The live tree: a data dir opened for reading and writing. It validates
//! each tree operation the way POSIX does, turns it into events, appends
//! them to our log and applies them to the index.
//!
//! Always true:
//! - an operation's events reach the log before the index (the log is the
//!   truth; on open the index catches up from where it stopped);
//! - [`LiveTree::sync`] makes blocks durable before the log records that
//!   reference them, so a durable event never points at a lost block;
//! - index changes are committed in groups, by the index's group-commit
//!   pipeline (`index::pipeline`, whose module doc states why that is
//!   safe): every read sees every change made before it, and a group that
//!   was lost is applied again from the log before the next change or read
//!   goes on;
//! - mutations serialize on one short mutex (validate, append, index); the
//!   slow parts of a write (hashing, compression, blob I/O) run in
//!   [`LiveTree::put_block`], outside it, on the caller's thread.
//!
//! The parts: this module opens the tree, imports and serves reads;
//! `group` is the writer, which lends our log to the pipeline; `ops` and
//! `content` are the tree operations and content changes built on it.

mod content;
mod group;
mod ops;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::catchup::{CatchUp, PeerProblems};
use crate::error::{Error, FsError, Result};
use crate::event::BlockRef;
use crate::ids::{EventId, LogPos, NodeId, Timestamp};
use crate::index::pipeline::{Group, Pipeline};
use crate::index::Queries;
use crate::index::{DirEntry, Index, IndexReader, IndexView};
use crate::log::LogWriter;
use crate::read::TreeRead;
use crate::state::{ImportReport, NodeState, OpenReport, Stats};
use crate::storage::{FsStorage, Storage};
use crate::store::{Access, Store};

pub use content::{SHARE_BATCH, ZERO_RANGE_BATCH};

struct Writer {
    log: LogWriter,
    next_counter: u64,
    last_time: Timestamp,
    /// The content version the next content change of this node is made
    /// on, when the caller continues a line of its own (see
    /// [`LiveTree::write_blocks_on`]); taken by that change.
    line: Option<(NodeId, EventId)>,
    /// Where the operation whose append failed began: what it appended
    /// (some of its events, and part of one) is cut before the log is used
    /// or read again, so an operation is in the log whole or not at all
    /// (see `LogSide::reopen_failed`).
    cut_to: Option<(LogPos, u64)>,
    /// Told (without blocking: each channel holds one wake-up) after every
    /// operation that appended to our log; see [`LiveTree::watch_log`].
    log_watchers: Vec<std::sync::mpsc::SyncSender<()>>,
}

/// What the writer's mutex guards: our log's writer and the group of index
/// changes not yet committed.
struct Locked {
    w: Writer,
    group: Group,
}

/// Makes room on a full disk for [`LiveTree::put_block`] (see
/// [`LiveTree::set_room_maker`]): whether the disk has room now or it made
/// some.
pub type RoomMaker = dyn Fn(&LiveTree) -> Result<bool> + Send + Sync;

/// A data dir open for reading and writing: the tree as every event known
/// makes it. `Send + Sync`.
pub struct LiveTree {
    /// The index and its group commits.
    pipeline: Pipeline,
    writer: Mutex<Locked>,
    report: OpenReport,
    /// Set by [`LiveTree::abandon`]: drop without syncing.
    abandoned: bool,
    /// Told about every import that changed the tree (the mount
    /// invalidates the kernel's caches on it).
    watchers: Mutex<Vec<std::sync::mpsc::Sender<ImportReport>>>,
    /// Damage found in peers' logs (see [`LiveTree::peer_problems`]).
    problems: PeerProblems,
    /// What a write that finds the disk full asks to make room.
    room_maker: RwLock<Option<Arc<RoomMaker>>>,
    /// Last, so the writer lock it holds goes after the index.
    store: Store,
}

impl std::fmt::Debug for LiveTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTree").field("dir", &self.store.data_dir()).finish_non_exhaustive()
    }
}

impl LiveTree {
    /// Opens `dir` for reading and writing: checks FORMAT (upgrading older
    /// data dirs in place), takes the writer lock, cuts a torn log tail and
    /// brings the index up to date with every machine's log.
    pub fn open(dir: &Path) -> Result<LiveTree> {
        Self::open_with(Arc::new(FsStorage), dir)
    }

    /// [`LiveTree::open`] with the log, blobs, FORMAT and config going through
    /// `storage` (crash tests); the index and the lock file stay on the real
    /// filesystem under `dir`, which must exist.
    pub fn open_with(storage: Arc<dyn Storage>, dir: &Path) -> Result<LiveTree> {
        let (store, upgraded_from) = Store::open(dir, storage.clone(), Access::Write)?;
        let mut report = OpenReport { upgraded_from, ..OpenReport::default() };
        let layout = store.layout().clone();
        let config = store.config().clone();
        let (log, recovery) = LogWriter::open(storage.clone(), &layout.log(), config.machine, config.segment_size)?;
        if let Some(cut) = recovery.cut {
            let what =
                format!("cut a torn tail of {} bytes at byte {} of {}", cut.bytes, cut.offset, cut.path.display());
            tracing::warn!("{what}");
            report.torn_tail = Some(what);
        }
        let last_time = log.last_time();
        let log_seq = log.last_seq();
        let writer = Mutex::new(Locked {
            w: Writer { log, next_counter: 1, last_time, line: None, cut_to: None, log_watchers: Vec::new() },
            group: Group::new(),
        });
        report.unclean = storage.exists(&layout.dirty());
        storage.write_file(&layout.dirty(), b"").map_err(|e| Error::io("write", layout.dirty(), e))?;
        storage.sync_dir(dir).map_err(|e| Error::io("sync", dir, e))?;
        let (index, mut rebuilt) = Index::open_with(&layout.index(), Some(storage.clone()))?;
        // The index must never be ahead of our log (a crash can cut the
        // log's unsynced tail); if it is, it is rebuilt from the log.
        let index_seq = index.read()?.applied(config.machine)?.map_or(0, |a| a.2);
        if index_seq > log_seq {
            tracing::warn!(
                "{}: index has our events up to {index_seq} but the log only to {log_seq}; rebuilding it",
                dir.display()
            );
            index.clear()?;
            rebuilt = true;
        }
        report.index_rebuilt = rebuilt;
        let problems = PeerProblems::default();
        let check_blocks = report.unclean;
        let catch_up = CatchUp { store: &store, index: &index, problems: &problems, stop: None };
        report.caught_up = catch_up.catch_up(check_blocks, &mut report)?;
        let tree = LiveTree {
            pipeline: Pipeline::new(index, layout.index()),
            writer,
            report,
            abandoned: false,
            watchers: Mutex::new(Vec::new()),
            problems,
            room_maker: RwLock::new(None),
            store,
        };
        if tree.report.cut_unacknowledged.is_some() {
            // Reopen our log past the cut.
            let (log, _) = LogWriter::open(storage, &layout.log(), config.machine, config.segment_size)?;
            lock_writer(&tree.writer).w.log = log;
        }
        {
            let ix = tree.pipeline.index().read()?;
            let w = &mut lock_writer(&tree.writer).w;
            w.next_counter = ix.max_counter(config.machine)? + 1;
            // Event times form a hybrid logical clock: never below any event
            // seen from any machine, so (time, machine, seq) orders every
            // event after everything it could have depended on.
            w.last_time = w.last_time.max(ix.max_event_time()?);
        }
        Ok(tree)
    }

    /// Imports whatever peers' logs (fetched into `log/<machine>/` by the
    /// replication layer) hold that the index has not seen: the tree is
    /// merged again and our clock moves past every imported event. Safe
    /// while mounted: it serializes with local changes on the writer lock.
    pub fn import(&self) -> Result<ImportReport> {
        let mut locked = lock_writer(&self.writer);
        let Locked { w, group } = &mut *locked;
        // The import writes the index in a transaction of its own.
        self.pipeline.commit_pending(group, &mut self.side(w))?;
        let report = self.import_locked(w)?;
        self.pipeline.caught_up(group);
        Ok(report)
    }

    /// Applies every event of every log that the index lacks (our own
    /// included), moves our clock past them, and tells the watchers. No
    /// group may be pending.
    fn import_locked(&self, w: &mut Writer) -> Result<ImportReport> {
        let (applied, replayed, _) = self.catch_up().apply_new_events(false)?;
        w.last_time = w.last_time.max(self.pipeline.index().read()?.max_event_time()?);
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

    /// Damage found in peers' logs (each names the segment and offset), as
    /// of the last open or import. Their events from the damage on are not
    /// imported; nothing of ours depends on them.
    pub fn peer_problems(&self) -> Vec<String> {
        self.problems.list()
    }

    /// The catch-up of the live index with the logs.
    fn catch_up(&self) -> CatchUp<'_> {
        CatchUp { store: &self.store, index: self.pipeline.index(), problems: &self.problems, stop: None }
    }

    /// Fails with ENOSPC when the local disk cannot take `bytes` more
    /// (above the data dir's reserve): what `fallocate` reserves is checked
    /// here. Nothing is set aside (blocks are content-addressed and zeros
    /// are holes), so a later write can still find the disk full.
    pub fn check_room(&self, bytes: u64) -> Result<()> {
        match self.store.blobs().room() {
            Some(room) if room < bytes => Err(Error::Io {
                op: "reserve space: the disk has less room than asked for above the data dir's reserve",
                path: self.store.blobs().dir().to_path_buf(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            }),
            _ => Ok(()),
        }
    }

    /// Stores a block (hash, compress, write; not yet durable). Takes no
    /// engine lock: call it from many threads.
    ///
    /// When the disk has no room (or only the data dir's reserve), there
    /// is a remote and a room maker is installed (see
    /// [`LiveTree::set_room_maker`]), it is asked to make room (evicting
    /// blocks already pushed), and the put is tried again.
    pub fn put_block(&self, data: &[u8]) -> Result<BlockRef> {
        // Other writers may take the room made before this one's next try:
        // a few passes, while they evict something.
        for _ in 0..4 {
            match self.store.blobs().put(data) {
                Err(e) if e.os_error() == Some(libc::ENOSPC) && self.store.config().remote.is_some() => {
                    if !self.make_room()? {
                        return Err(e);
                    }
                }
                put => return Ok(put?.block),
            }
        }
        Ok(self.store.blobs().put(data)?.block)
    }

    /// Installs (or removes) what a write that finds the disk full asks to
    /// make room: the eviction policy, which lives above the engine
    /// (`evict::make_room`). It returns whether the disk has room now or it
    /// made some; the write is then tried again.
    pub fn set_room_maker(&self, maker: Option<Arc<RoomMaker>>) {
        *self.room_maker.write().unwrap_or_else(|e| e.into_inner()) = maker;
    }

    /// Asks the room maker, if one is installed, to make room.
    fn make_room(&self) -> Result<bool> {
        let maker = self.room_maker.read().unwrap_or_else(|e| e.into_inner()).clone();
        maker.map_or(Ok(false), |make| make(self))
    }

    /// Makes everything committed so far durable: blocks first, then the
    /// log records that reference them.
    pub fn sync(&self) -> Result<()> {
        let mut locked = lock_writer(&self.writer);
        let Locked { w, group } = &mut *locked;
        self.pipeline.reopen_log(group, &mut self.side(w))?;
        self.store.blobs().sync_pending()?;
        w.log.sync()
    }

    /// Syncs and makes the index durable too (at unmount and exit), then
    /// marks the shutdown clean.
    pub fn close(&self) -> Result<()> {
        let mut locked = lock_writer(&self.writer);
        let Locked { w, group } = &mut *locked;
        // Making the index durable syncs the blocks, then the log, first.
        let mut side = self.side(w);
        self.pipeline.commit_pending(group, &mut side)?;
        self.pipeline.make_durable(group, &mut side)?;
        let dirty = self.store.layout().dirty();
        let storage = self.store.storage();
        if storage.exists(&dirty) {
            let dir = self.store.data_dir();
            storage.remove_file(&dirty).map_err(|e| Error::io("remove", &dirty, e))?;
            storage.sync_dir(dir).map_err(|e| Error::io("sync", dir, e))?;
        }
        Ok(())
    }

    /// Sends `()` on `tx` (with `try_send`: never blocking a change, so
    /// give it a channel of capacity 1) after every operation that appends
    /// to our log, once its records are written (not yet synced: a reader
    /// makes them durable with [`LiveTree::sync`]). Dropping the receiver ends the watch.
    pub fn watch_log(&self, tx: std::sync::mpsc::SyncSender<()>) {
        lock_writer(&self.writer).w.log_watchers.push(tx);
    }

    /// Where the next record of our log will go.
    pub fn log_position(&self) -> LogPos {
        // A cut pending (see `Writer::cut_to`) starts there: nothing past it
        // may be pushed.
        let w = &lock_writer(&self.writer).w;
        w.cut_to.map_or_else(|| w.log.position(), |(pos, _)| pos)
    }
}

impl LiveTree {
    /// Drops the tree without syncing anything, as a crash would (crash
    /// tests; with [`crate::storage::CrashStorage`] the unsynced writes can
    /// then be thrown away).
    pub fn abandon(mut self) {
        self.abandoned = true;
    }
}

impl Drop for LiveTree {
    fn drop(&mut self) {
        self.store.stop_compressor();
        if !self.abandoned {
            if let Err(e) = self.close() {
                tracing::error!("{}: closing: {e}", self.store.data_dir().display());
            }
        }
        // An uncommitted group is dropped (as a crash would) before the
        // database it belongs to.
        lock_writer(&self.writer).group.abandon();
        // Before the database goes: a group may still be committing.
        self.pipeline.wait_in_flight();
    }
}

impl TreeRead for LiveTree {
    fn store(&self) -> &Store {
        &self.store
    }

    fn at(&self) -> Option<Timestamp> {
        None
    }

    fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// A read snapshot of the index (a pending group is committed first;
    /// with none, no lock is taken, as in every live read).
    fn index(&self) -> Result<IndexReader> {
        if self.pipeline.has_pending() {
            let mut locked = lock_writer(&self.writer);
            let Locked { w, group } = &mut *locked;
            self.pipeline.commit_pending(group, &mut self.side(w))?;
        }
        self.pipeline.index().read()
    }

    fn node(&self, id: NodeId) -> Result<NodeState> {
        let record = self.read_live(|ix| ix.node(id))?;
        record.map(|r| NodeState::from_record(id, r)).ok_or(Error::fs(id, FsError::NotFound))
    }

    fn lookup(&self, dir: NodeId, name: &[u8]) -> Result<NodeState> {
        self.read_live(|ix| {
            live_dir(ix, dir)?;
            let (child, _) = ix.lookup(dir, name)?.ok_or(Error::fs(dir, FsError::NotFound))?;
            let r = ix.node(child)?.ok_or(Error::fs(child, FsError::NotFound))?;
            Ok(NodeState::from_record(child, r))
        })
    }

    fn read_dir(&self, dir: NodeId, after: Option<&[u8]>, limit: usize) -> Result<Vec<DirEntry>> {
        self.read_live(|ix| {
            live_dir(ix, dir)?;
            ix.read_dir(dir, after, limit)
        })
    }

    fn file_blocks(&self, node: NodeId, first: u64, count: u64) -> Result<Vec<(u64, BlockRef)>> {
        self.read_live(|ix| ix.blocks(node, first, count))
    }

    fn next_data(&self, node: NodeId, from: u64) -> Result<Option<u64>> {
        self.read_live(|ix| ix.next_block(node, from))
    }

    fn stats(&self) -> Result<Stats> {
        let c = self.read_live(|ix| ix.counts())?;
        Ok(Stats::from_counts(&c, self.store.config().cache_size))
    }
}

/// Fails unless `dir` is a directory in the tree.
fn live_dir(ix: &IndexView<'_>, dir: NodeId) -> Result<()> {
    match ix.node(dir)? {
        Some(n) if n.removed => Err(Error::fs(dir, FsError::NotFound)),
        Some(n) if n.kind != crate::event::NodeKind::Dir => Err(Error::fs(dir, FsError::NotDir)),
        Some(_) => Ok(()),
        None => Err(Error::fs(dir, FsError::NotFound)),
    }
}

fn lock_writer(w: &Mutex<Locked>) -> MutexGuard<'_, Locked> {
    // A panic while holding the writer leaves the log and the index as they
    // were at the last append, which open() can always recover from.
    w.lock().unwrap_or_else(|e| e.into_inner())
}
