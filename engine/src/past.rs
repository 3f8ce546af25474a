//! A point-in-time view: a data dir read-only as it stood at a time, over
//! the history index `history.redb` (see [`PastView::open`]).
//!
//! Always true:
//! - a view never opens `index.redb` and never takes the writer lock, so
//!   any number of views run beside one live writer;
//! - what a view shows never changes once it is open: node states are
//!   folded once and kept in a cache bounded by [`NODE_CACHE_BYTES`]
//!   (memory is set by a budget, not by the size of the tree); a state the
//!   cache dropped is folded again, to the same result;
//! - a view has no mutations: it is a [`TreeRead`] and nothing more.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::catchup::{CatchUp, PeerProblems};
use crate::error::{Error, FsError, Result};
use crate::event::{BlockRef, NodeKind};
use crate::ids::{LogPos, NodeId, Timestamp};
use crate::index::Queries;
use crate::index::{DirEntry, Index, IndexReader};
use crate::live::LiveTree;
use crate::log;
use crate::read::TreeRead;
use crate::state::{NodeState, OpenReport};
use crate::storage::{FsStorage, Storage};
use crate::store::{lock_history, open_lock_file, take_lock, Access, Layout, Store};
use crate::tree::{self, NodeRecord};

/// Bytes of folded node states a view keeps (an estimate: each state's
/// names, target and xattrs plus a fixed part). A constant rather than a
/// config key: it bounds memory, and folding a dropped state again costs
/// only the reads of its events since its last checkpoint.
pub const NODE_CACHE_BYTES: usize = 32 << 20;

/// A data dir as it stood at a past time, read-only. `Send + Sync`.
pub struct PastView {
    index: Index,
    at: Timestamp,
    report: OpenReport,
    problems: PeerProblems,
    /// Node states folded once each (see [`NodeCache`]).
    nodes: Mutex<NodeCache>,
    /// Held shared while the view reads `history.redb`.
    _history_lock: File,
    store: Store,
}

impl std::fmt::Debug for PastView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PastView").field("dir", &self.store.data_dir()).field("at", &self.at).finish_non_exhaustive()
    }
}

impl PastView {
    /// Opens `dir` read-only as it stood at `at`.
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
    pub fn open(dir: &Path, at: Timestamp) -> Result<PastView> {
        let storage: Arc<dyn Storage> = Arc::new(FsStorage);
        let (store, upgraded_from) = Store::open(dir, storage, Access::Read)?;
        let mut report = OpenReport { upgraded_from, ..OpenReport::default() };
        let layout = store.layout().clone();
        let (history_lock, exclusive) = lock_history(&layout.history_lock())?;
        // A view that took the lock in the instant another one was
        // turning its exclusive lock into a shared one (flock does
        // not convert atomically) finds the file held: it reads it.
        if exclusive && !layout.history_index().exists() {
            seed_history(&layout);
        }
        let writable = if exclusive { Index::open(&layout.history_index()).ok() } else { None };
        let refresh = writable.is_some();
        let mut index = match writable {
            Some((opened, rebuilt)) => {
                report.index_rebuilt = rebuilt;
                opened
            }
            None => {
                report.stale_history = Some(format!(
                    "{}: other point-in-time views hold it, so events logged since they opened are not shown",
                    layout.history_index().display()
                ));
                Index::open_read_only(&layout.history_index())?
            }
        };
        let problems = PeerProblems::default();
        if refresh {
            bring_up_to_date(&store, &index, &mut report, &problems, None)?;
            index.reopen_read_only()?;
            history_lock.lock_shared().map_err(|e| Error::io("lock", layout.history_lock(), e))?;
        }
        Ok(PastView {
            index,
            at,
            report,
            problems,
            nodes: Mutex::new(NodeCache::new(NODE_CACHE_BYTES)),
            _history_lock: history_lock,
            store,
        })
    }

    /// Damage found in peers' logs (each names the segment and offset)
    /// while this view brought `history.redb` up to date.
    pub fn peer_problems(&self) -> Vec<String> {
        self.problems.list()
    }

    /// Folds `id`'s events up to the view's time, read back from the log
    /// (once per node while the cache keeps it).
    fn node_record(&self, id: NodeId) -> Result<Option<NodeRecord>> {
        if let Some(r) = self.nodes.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            return Ok(r);
        }
        let state = self.fold_node(id)?;
        self.nodes.lock().unwrap_or_else(|e| e.into_inner()).insert(id, state.clone());
        Ok(state)
    }

    /// The latest checkpoint (see `index`) then the node's events since.
    fn fold_node(&self, id: NodeId) -> Result<Option<NodeRecord>> {
        let at = self.at;
        let ix = self.index.read()?;
        let (mut state, after) = match ix.checkpoint_at(id, at)? {
            Some((key, record)) => (Some(record), Some(key)),
            None => ((id == NodeId::ROOT).then(NodeRecord::root), None),
        };
        for pos in ix.history_after(id, after, at)? {
            let ev = log::read_record_at(self.store.storage().as_ref(), &self.store.layout().log(), pos)?.event;
            state = Some(tree::apply(state.as_ref(), &ev).node);
        }
        // The counts the merge keeps change with other nodes' events too
        // (entries made in a directory, blocks of a version routed here):
        // counted from the history tables as of `at`, once per view.
        if let Some(n) = state.as_mut() {
            match n.kind {
                NodeKind::Dir => {
                    n.subdirs = ix.subdirs_at(id, at)?;
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
}

impl TreeRead for PastView {
    fn store(&self) -> &Store {
        &self.store
    }

    fn at(&self) -> Option<Timestamp> {
        Some(self.at)
    }

    fn open_report(&self) -> &OpenReport {
        &self.report
    }

    fn index(&self) -> Result<IndexReader> {
        self.index.read()
    }

    fn node(&self, id: NodeId) -> Result<NodeState> {
        let record = self.node_record(id)?;
        record.map(|r| NodeState::from_record(id, r)).ok_or(Error::fs(id, FsError::NotFound))
    }

    fn lookup(&self, dir: NodeId, name: &[u8]) -> Result<NodeState> {
        let (child, _) = self.index.read()?.lookup_at(dir, name, self.at)?.ok_or(Error::fs(dir, FsError::NotFound))?;
        self.node(child)
    }

    fn read_dir(&self, dir: NodeId, after: Option<&[u8]>, limit: usize) -> Result<Vec<DirEntry>> {
        self.index.read()?.read_dir_page_at(dir, after, limit, self.at)
    }

    fn file_blocks(&self, node: NodeId, first: u64, count: u64) -> Result<Vec<(u64, BlockRef)>> {
        self.index.read()?.blocks_at(node, first, count, self.at)
    }

    fn next_data(&self, node: NodeId, from: u64) -> Result<Option<u64>> {
        self.index.read()?.next_block_at(node, from, self.at)
    }
}

/// Folded node states within a byte budget: two generations, each up to
/// half the budget. New states go into the young one; when it is full it
/// becomes the old one (the old one is dropped) and a new young one
/// starts; a state found in the old one moves back to the young one. So
/// the states in use stay, the others leave, and the cache never holds
/// more than its budget (as estimated by [`record_bytes`]), at O(1) a use.
#[derive(Debug)]
struct NodeCache {
    young: HashMap<NodeId, Option<NodeRecord>>,
    old: HashMap<NodeId, Option<NodeRecord>>,
    young_bytes: usize,
    /// Bytes each generation may hold.
    half: usize,
}

impl NodeCache {
    fn new(budget: usize) -> NodeCache {
        NodeCache { young: HashMap::new(), old: HashMap::new(), young_bytes: 0, half: budget / 2 }
    }

    fn get(&mut self, id: NodeId) -> Option<Option<NodeRecord>> {
        if let Some(r) = self.young.get(&id) {
            return Some(r.clone());
        }
        let r = self.old.remove(&id)?;
        self.insert(id, r.clone());
        Some(r)
    }

    fn insert(&mut self, id: NodeId, record: Option<NodeRecord>) {
        let bytes = record_bytes(record.as_ref());
        if self.young_bytes + bytes > self.half {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
        if self.young.insert(id, record).is_none() {
            self.young_bytes += bytes;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

/// What a cached state costs, roughly: its variable parts and a fixed
/// part for the record, its clocks and the map entry.
fn record_bytes(record: Option<&NodeRecord>) -> usize {
    const FIXED: usize = 512;
    record.map_or(FIXED, |r| {
        FIXED
            + r.name.len()
            + r.target.len()
            + r.volname.len()
            + r.xattrs.iter().map(|(k, v)| k.len() + v.len() + 48).sum::<usize>()
    })
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

/// Brings the writable `history.redb` open as `index` up to date with the
/// logs; replays it from nothing when the log lost events it had indexed.
fn bring_up_to_date(
    store: &Store,
    index: &Index,
    report: &mut OpenReport,
    problems: &PeerProblems,
    stop: Option<&AtomicBool>,
) -> Result<()> {
    let layout = store.layout();
    // It runs beside a live mount's own index writer (the keeper), or
    // before a view's node cache fills: its caches stay small.
    index.set_writer_cache(HISTORY_WRITER_CACHE);
    // A crash can cut a writer's unacknowledged tail after a view indexed
    // it: then the view's index is rebuilt.
    if index_diverged(store.storage().as_ref(), &layout.log(), index)? {
        tracing::warn!("{}: the log lost events it had indexed; rebuilding it", layout.history_index().display());
        index.clear()?;
        report.index_rebuilt = true;
    }
    let catch_up = CatchUp { store, index, problems, stop };
    report.caught_up = catch_up.catch_up(false, report)?;
    Ok(())
}

/// Most entries of each cache of the writer that brings `history.redb` up
/// to date (the live index's writer has up to 65,536).
const HISTORY_WRITER_CACHE: usize = 8192;

/// How often [`HistoryKeeper`] looks for new events.
pub const HISTORY_REFRESH_EVERY: Duration = Duration::from_secs(2);

/// Keeps `history.redb` up to date in the background while a live tree
/// runs (a mount starts one), so that a point-in-time view opens at once
/// instead of first indexing every event logged since the last view.
///
/// Always true:
/// - it updates `history.redb` only while no view holds it, taking
///   `history.lock` exclusively without waiting, and lets it go after each
///   update (a view that opens meanwhile waits for that update only);
/// - its thread runs at a lower CPU priority (nice 10), so the indexing
///   that history needs, the same work as the live index's, yields to the
///   mount's own requests;
/// - dropping the keeper stops its thread: an update in progress stops at
///   its next batch of events, commits what it applied and closes
///   `history.redb` cleanly (the next update resumes from there).
pub struct HistoryKeeper {
    stop: Arc<(Mutex<bool>, Condvar)>,
    /// Set with `stop`: ends an update in progress at its next batch.
    halt: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HistoryKeeper {
    /// Starts keeping `tree`'s `history.redb` current.
    pub fn start(tree: Arc<LiveTree>) -> Result<HistoryKeeper> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let halt = Arc::new(AtomicBool::new(false));
        let halted = Arc::clone(&halt);
        let dir = tree.data_dir().to_path_buf();
        let run = move || {
            lower_priority();
            let mut seen = None;
            loop {
                let (lock, cvar) = &*flag;
                let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                let (guard, _) =
                    cvar.wait_timeout_while(guard, HISTORY_REFRESH_EVERY, |s| !*s).unwrap_or_else(|e| e.into_inner());
                if *guard {
                    return;
                }
                drop(guard);
                // The count of events applied moves with our own changes
                // and with every import.
                let Ok(events) = tree.stats().map(|s| s.events) else { continue };
                if seen == Some(events) {
                    continue;
                }
                match refresh_history(tree.store(), Some(&halted)) {
                    Ok(true) => seen = Some(events),
                    Ok(false) => {}
                    Err(e) => tracing::warn!("keeping {} up to date: {e}", tree.layout().history_index().display()),
                }
            }
        };
        let thread = std::thread::Builder::new()
            .name("syncer-history".into())
            .spawn(run)
            .map_err(|e| Error::io("start the history thread", dir, e))?;
        Ok(HistoryKeeper { stop, halt, thread: Some(thread) })
    }
}

impl Drop for HistoryKeeper {
    fn drop(&mut self) {
        self.halt.store(true, std::sync::atomic::Ordering::Relaxed);
        let (lock, cvar) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cvar.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Lowers the calling thread's CPU priority to nice 10 (best effort).
fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread, no pointers.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

/// Brings `history.redb` up to date with the logs if no view holds it;
/// returns whether it did.
pub(crate) fn refresh_history(store: &Store, stop: Option<&AtomicBool>) -> Result<bool> {
    let layout = store.layout();
    let lock = open_lock_file(&layout.history_lock())?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
        Err(std::fs::TryLockError::Error(e)) => return Err(Error::io("lock", layout.history_lock(), e)),
    }
    let (mut index, rebuilt) = Index::open(&layout.history_index())?;
    let mut report = OpenReport { index_rebuilt: rebuilt, ..OpenReport::default() };
    bring_up_to_date(store, &index, &mut report, &PeerProblems::default(), stop)?;
    // Closes the writable handle cleanly, so the next opener need not
    // repair the file.
    index.reopen_read_only()?;
    Ok(true)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name_len: usize) -> Option<NodeRecord> {
        let mut r = NodeRecord::root();
        r.name = vec![b'x'; name_len];
        Some(r)
    }

    #[test]
    fn the_node_cache_stays_within_its_budget_and_keeps_what_is_used() {
        let budget = 100 * record_bytes(record(10).as_ref());
        let mut c = NodeCache::new(budget);
        let hot = NodeId::new(1, crate::ids::MachineId(7));
        c.insert(hot, record(10));
        for i in 2..10_000u64 {
            c.insert(NodeId::new(i, crate::ids::MachineId(7)), record(10));
            assert!(c.get(hot).is_some(), "a state in use stays (after {i} others)");
            assert!(c.len() <= 100, "{} states over a budget of 100", c.len());
        }
        assert!(c.get(NodeId::new(2, crate::ids::MachineId(7))).is_none(), "an unused state left");
    }
}
