//! The write path: per-inode dirty blocks, a pool of hashing workers, and
//! commits of one content event per flush.
//!
//! Always true:
//! - dirty state is per node (not per handle): every handle on a file sees
//!   the same buffered bytes, and reads overlay them on stored blocks;
//! - a [`Slot`] is the newest content of one block that the log does not
//!   have yet: `Buf` (being written in memory), `Hashing` (handed to a worker
//!   that runs `engine.put_block`, off the FUSE thread) or `Ready` (stored,
//!   waiting for the next commit);
//! - [`Dirty::size`] is `Some` exactly while something is uncommitted; it is
//!   then the file's logical size (what `getattr` reports);
//! - bytes of a block past its buffer's length, up to the file size, are
//!   zeros (holes and regions past an old end of file);
//! - an all-zero block is never stored: it commits as a hole;
//! - while a file is open for writing, its commits are one line of content
//!   versions: each is made on the version the one before made (the first
//!   on the version the file showed when it was first opened for writing),
//!   never on a peer's version imported meanwhile; so a program's writes
//!   never land on top of bytes it did not see, and a concurrent peer change
//!   makes a conflict copy instead (see the engine's `merge`). Handles open
//!   only for reading take no part;
//! - `Shared::dirty_bytes` counts the memory of every `Buf` and every block
//!   in a worker's hands; a writer that pushes it past the configured bound
//!   spills buffers to the workers and waits for them, and the job channel is
//!   bounded, so a 10 GiB sequential write never holds more than the bound
//!   (plus a few in-flight blocks) in RAM.
//!
//! Locks, in the only order they are ever taken:
//! 1. `WriteBack::files` (which nodes have dirty state; held for map
//!    operations only), or `WriteBack::lines` (the same, for open files'
//!    content lines);
//! 2. `FileState::commit` (serializes commits of one file so their events
//!    land in order; held across the engine call);
//! 3. `FileState::st` (the slots; never held while sending to the bounded
//!    channel, because workers need it to post results).
//!
//! Nothing here is global except the map and the memory counter, so writers
//! of different files never wait for each other.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use engine::event::{BlockChange, BlockRef};
use engine::ids::{BlockHash, EventId, NodeId, Timestamp};
use engine::storage::ByteWindow;
use engine::{LiveTree, TreeRead};
use fuser::Errno;
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::attr::DirtyView;
use crate::errno::errno;

/// A file commits on its own once this many blocks wait for a commit, so
/// one event never lists an unbounded number of blocks.
const COMMIT_EVERY: usize = 256;

/// Bytes of decompressed blocks kept for reads that hit the same block
/// again (a 1 MiB block read 128 KiB at a time) or that were read ahead:
/// the read-ahead windows of a few streams at once.
const READ_CACHE_BYTES: usize = 64 << 20;

/// Bytes loaded ahead of a sequential reader, so that reading, verifying
/// and decompressing the next blocks overlaps with the FUSE transfer of
/// this one. A quarter of the cache, so that what is read ahead is still
/// there when the reader comes (see [`ahead_window`]).
const READ_AHEAD_BYTES: u64 = 16 << 20;

/// At most this many blocks ahead, whatever the block size.
const READ_AHEAD_MAX_BLOCKS: u64 = 16;

/// Threads loading blocks ahead of sequential readers. They mostly wait on
/// the disk (the loads bypass the page cache, so nothing else reads ahead
/// for them), so more of them than cores keeps the disk busy. Measured on
/// a cold 2 GiB read (2 cores): with 4 threads and 8 blocks ahead, half the
/// reads found their block still loading and the read ran at 1.4 GB/s; with
/// 8 and 16, a sixth did and it ran at 1.8 GB/s; 16 and 32 gained nothing.
const AHEAD_THREADS: usize = 8;

/// Nodes whose last read block is remembered for read-ahead; the map is
/// cleared when it grows past this, which only costs one missed read-ahead.
const READ_AHEAD_NODES: usize = 1024;

/// One block's uncommitted content.
#[derive(Debug)]
enum Slot {
    /// In memory, being written.
    Buf { data: Vec<u8>, seq: u64 },
    /// Handed to a worker.
    Hashing { data: Arc<Vec<u8>>, seq: u64 },
    /// Stored (or a hole), waiting for a commit.
    Ready { block: Option<BlockRef>, seq: u64 },
}

impl Slot {
    fn seq(&self) -> u64 {
        match self {
            Slot::Buf { seq, .. } | Slot::Hashing { seq, .. } | Slot::Ready { seq, .. } => *seq,
        }
    }
}

#[derive(Debug, Default)]
struct Dirty {
    slots: BTreeMap<u64, Slot>,
    size: Option<u64>,
    mtime: Timestamp,
    next_seq: u64,
    in_flight: usize,
    error: Option<Errno>,
    /// Set when the state left the map: a writer holding a stale `Arc`
    /// must fetch the current one.
    removed: bool,
}

impl Dirty {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn clean(&self) -> bool {
        self.slots.is_empty() && self.size.is_none() && self.in_flight == 0
    }
}

/// What a write goes on: the file's size before it, and the content version
/// of the file's line (see the module docs) its partial blocks are read from.
#[derive(Clone, Copy)]
struct On {
    size: u64,
    version: Option<EventId>,
}

/// A file open for writing (see the module docs).
#[derive(Clone, Copy, Debug)]
struct Line {
    /// Handles open for writing.
    writers: u32,
    /// The version the next commit is made on (`None`: the one the file
    /// shows then).
    version: Option<EventId>,
}

/// Dirty state of one file.
#[derive(Debug)]
pub(crate) struct FileState {
    node: NodeId,
    st: Mutex<Dirty>,
    cond: Condvar,
    commit: Mutex<()>,
}

struct Job {
    file: Arc<FileState>,
    index: u64,
    seq: u64,
    data: Arc<Vec<u8>>,
}

/// What workers and writers share.
struct Shared {
    /// Where reads go: the live tree or a point-in-time view.
    tree: Arc<dyn TreeRead>,
    /// Where changes go; `None` for a view (the mount refuses every write
    /// before it gets here).
    live: Option<Arc<LiveTree>>,
    block_size: u64,
    dirty_limit: u64,
    dirty_bytes: AtomicU64,
    in_flight: AtomicU64,
    mem_lock: Mutex<()>,
    mem_cond: Condvar,
    cache: Mutex<VecDeque<(BlockHash, Arc<ByteWindow>)>>,
    /// Blocks some thread is loading into `cache` right now; others wait
    /// on `loaded` instead of reading the same blob twice.
    loading: Mutex<HashSet<BlockHash>>,
    loaded: Condvar,
    /// Held by the read-ahead thread fetching a block from the remote.
    fetching: Mutex<()>,
    /// Set as the mount ends: queued read-aheads are dropped, not run.
    stopping: AtomicBool,
}

impl Shared {
    fn add_mem(&self, delta: i64) {
        if delta >= 0 {
            self.dirty_bytes.fetch_add(delta as u64, Ordering::AcqRel);
        } else {
            self.dirty_bytes.fetch_sub(delta.unsigned_abs(), Ordering::AcqRel);
            let _g = self.mem_lock.lock();
            self.mem_cond.notify_all();
        }
    }
}

/// The write-back machinery of one mount. See the module docs.
pub(crate) struct WriteBack {
    shared: Arc<Shared>,
    tx: Option<Sender<Job>>,
    ahead_tx: Option<Sender<Ahead>>,
    /// The hashing workers first, then the read-ahead threads.
    workers: Vec<JoinHandle<()>>,
    hashers: usize,
    files: Mutex<HashMap<NodeId, Arc<FileState>>>,
    /// Files open for writing: how many handles, and the content version
    /// their next commit is made on (see the module docs).
    lines: Mutex<HashMap<NodeId, Line>>,
    /// Per node read lately, where its sequential reading stands (see
    /// [`ahead_step`]).
    streams: Mutex<HashMap<NodeId, Stream>>,
}

impl Shared {
    /// The live tree, for a change; EROFS on a point-in-time view.
    fn live(&self) -> Result<&LiveTree, Errno> {
        self.live.as_deref().ok_or(Errno::EROFS)
    }
}

impl WriteBack {
    /// Starts `workers` hashing threads.
    pub(crate) fn new(tree: crate::Tree, dirty_limit: u64, workers: usize) -> std::io::Result<Self> {
        let block_size = tree.reads().block_size().max(4096);
        let workers = workers.max(1);
        let shared = Arc::new(Shared {
            tree: tree.reads(),
            live: tree.live(),
            block_size,
            dirty_limit: dirty_limit.max(block_size * 4),
            dirty_bytes: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            mem_lock: Mutex::new(()),
            mem_cond: Condvar::new(),
            cache: Mutex::new(VecDeque::new()),
            loading: Mutex::new(HashSet::new()),
            loaded: Condvar::new(),
            fetching: Mutex::new(()),
            stopping: AtomicBool::new(false),
        });
        let (tx, rx) = crossbeam_channel::bounded::<Job>(workers * 2);
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let rx = rx.clone();
            let shared = shared.clone();
            handles
                .push(std::thread::Builder::new().name(format!("syncer-hash-{i}")).spawn(move || worker(shared, rx))?);
        }
        // Read-ahead requests are dropped, not queued, when the readers are
        // busy: the reader then loads the block itself.
        let (ahead_tx, ahead_rx) = crossbeam_channel::bounded::<Ahead>(AHEAD_THREADS * READ_AHEAD_MAX_BLOCKS as usize);
        for i in 0..AHEAD_THREADS {
            let rx = ahead_rx.clone();
            let shared = shared.clone();
            handles.push(std::thread::Builder::new().name(format!("syncer-ahead-{i}")).spawn(move || {
                for a in rx {
                    shared.read_ahead(a.node, a.index);
                }
            })?);
        }
        Ok(WriteBack {
            shared,
            tx: Some(tx),
            ahead_tx: Some(ahead_tx),
            workers: handles,
            hashers: workers,
            files: Mutex::new(HashMap::new()),
            lines: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn block_size(&self) -> u64 {
        self.shared.block_size
    }

    /// Whether any hashing worker still runs (they end only when the
    /// write-back is dropped).
    fn workers_alive(&self) -> bool {
        self.tx.is_some() && self.workers.iter().take(self.hashers).any(|h| !h.is_finished())
    }

    /// Memory held by buffered and in-flight blocks (for tests).
    pub(crate) fn dirty_bytes(&self) -> u64 {
        self.shared.dirty_bytes.load(Ordering::Acquire)
    }

    /// The tree reads go through.
    fn tree(&self) -> &dyn TreeRead {
        &*self.shared.tree
    }

    /// The live tree, for a change; EROFS on a point-in-time view.
    fn live(&self) -> Result<&LiveTree, Errno> {
        self.shared.live()
    }

    fn existing(&self, node: NodeId) -> Option<Arc<FileState>> {
        self.files.lock().get(&node).cloned()
    }

    fn get_or_create(&self, node: NodeId) -> Arc<FileState> {
        self.files
            .lock()
            .entry(node)
            .or_insert_with(|| {
                Arc::new(FileState {
                    node,
                    st: Mutex::new(Dirty::default()),
                    cond: Condvar::new(),
                    commit: Mutex::new(()),
                })
            })
            .clone()
    }

    /// Size and mtime of buffered writes, if `node` has any.
    pub(crate) fn dirty_view(&self, node: NodeId) -> Option<DirtyView> {
        let f = self.existing(node)?;
        let st = f.st.lock();
        let buffered = (st.slots.len() as u64).saturating_mul(self.shared.block_size);
        st.size.map(|size| DirtyView { size, mtime: st.mtime, buffered })
    }

    /// Buffers a write of `data` at `offset` (at the end of file if
    /// `append`). Returns the number of bytes taken.
    pub(crate) fn write(&self, node: NodeId, offset: u64, data: &[u8], append: bool) -> Result<u32, Errno> {
        let len = u32::try_from(data.len()).map_err(|_| Errno::EINVAL)?;
        // The version this write goes on: what a partial block keeps of it.
        let base = self.line(node);
        let (file, jobs, commit_now) = loop {
            let file = self.get_or_create(node);
            let mut st = file.st.lock();
            if st.removed {
                continue;
            }
            let (jobs, commit_now) = self.write_locked(&file, &mut st, offset, data, append, base)?;
            break (file.clone(), jobs, commit_now);
        };
        self.submit(jobs)?;
        if commit_now {
            if let Err(e) = self.commit(&file) {
                tracing::warn!(node = %node, "background commit failed ({e:?}); will retry at flush");
            }
        }
        if self.shared.dirty_bytes.load(Ordering::Acquire) > self.shared.dirty_limit {
            self.relieve_pressure(&file)?;
        }
        Ok(len)
    }

    fn write_locked(
        &self,
        file: &Arc<FileState>,
        st: &mut MutexGuard<'_, Dirty>,
        offset: u64,
        data: &[u8],
        append: bool,
        base: Option<EventId>,
    ) -> Result<(Vec<Job>, bool), Errno> {
        let bs = self.shared.block_size;
        let size = match st.size {
            Some(s) => s,
            None => self.live()?.version_size(file.node, base).map_err(|e| errno(&e))?,
        };
        let offset = if append { size } else { offset };
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        if end > i64::MAX as u64 {
            return Err(Errno::EFBIG);
        }
        let new_size = size.max(end);
        let mut full = Vec::new();
        let mut pos = offset;
        while pos < end {
            let index = pos / bs;
            let start = index * bs;
            let in_off = (pos - start) as usize;
            let n = ((bs - (pos - start)).min(end - pos)) as usize;
            let chunk = &data[(pos - offset) as usize..][..n];
            let buf = self.buffer(file, st, index, On { size, version: base }, in_off, n)?;
            let cap_before = buf.capacity();
            let need = in_off + n;
            if buf.len() < need {
                if buf.capacity() < need {
                    let target = need.max(buf.capacity() * 2).min(bs as usize);
                    buf.reserve_exact(target - buf.len());
                }
                buf.resize(need, 0);
            }
            buf[in_off..need].copy_from_slice(chunk);
            let full_block = buf.len() as u64 == bs && need as u64 == bs;
            let delta = buf.capacity() as i64 - cap_before as i64;
            self.shared.add_mem(delta);
            if full_block {
                full.push(index);
            }
            pos += n as u64;
        }
        st.size = Some(new_size);
        st.mtime = Timestamp::now();
        let jobs = full.into_iter().filter_map(|i| self.to_hashing(file, st, i, new_size)).collect();
        let commit_now = st.slots.len() >= COMMIT_EVERY
            && st.slots.values().filter(|s| matches!(s, Slot::Ready { .. })).count() >= COMMIT_EVERY;
        Ok((jobs, commit_now))
    }

    /// The writable buffer of block `index`, made from whatever is newest
    /// (a slot, or the stored block) the first time it is touched. The read
    /// is skipped when the write covers everything the block holds.
    fn buffer<'a>(
        &self,
        file: &FileState,
        st: &'a mut MutexGuard<'_, Dirty>,
        index: u64,
        on: On,
        in_off: usize,
        n: usize,
    ) -> Result<&'a mut Vec<u8>, Errno> {
        let (size, base) = (on.size, on.version);
        let bs = self.shared.block_size;
        let existing = size.saturating_sub(index * bs).min(bs) as usize;
        let covers = in_off == 0 && n >= existing;
        let fresh: Option<Vec<u8>> = match st.slots.get(&index) {
            Some(Slot::Buf { .. }) => None,
            Some(Slot::Hashing { data, .. }) => {
                let v = data.as_ref().clone();
                self.shared.add_mem(v.capacity() as i64);
                Some(v)
            }
            Some(Slot::Ready { block: Some(b), .. }) if !covers => {
                let v = self.shared.load(b)?.to_vec();
                self.shared.add_mem(v.capacity() as i64);
                Some(v)
            }
            Some(Slot::Ready { .. }) => Some(Vec::new()),
            None if covers || existing == 0 => Some(Vec::new()),
            None => match self.live()?.version_block(file.node, base, index).map_err(|e| errno(&e))? {
                Some(b) => {
                    let loaded = self.shared.load(&b)?;
                    let v = loaded[..existing.min(loaded.len())].to_vec();
                    self.shared.add_mem(v.capacity() as i64);
                    Some(v)
                }
                None => Some(Vec::new()),
            },
        };
        if let Some(data) = fresh {
            let seq = st.seq();
            st.slots.insert(index, Slot::Buf { data, seq });
        }
        match st.slots.get_mut(&index) {
            Some(Slot::Buf { data, .. }) => Ok(data),
            _ => Err(Errno::EIO),
        }
    }

    /// Turns the `Buf` of block `index` into a hashing job, padded with
    /// zeros to its full length under `size`.
    fn to_hashing(&self, file: &Arc<FileState>, st: &mut Dirty, index: u64, size: u64) -> Option<Job> {
        let bs = self.shared.block_size;
        let len = size.saturating_sub(index * bs).min(bs) as usize;
        let seq = st.seq();
        let slot = st.slots.get_mut(&index)?;
        let Slot::Buf { data, .. } = slot else {
            return None;
        };
        let mut data = std::mem::take(data);
        if data.len() < len {
            let before = data.capacity();
            data.resize(len, 0);
            self.shared.add_mem(data.capacity() as i64 - before as i64);
        }
        let data = Arc::new(data);
        *slot = Slot::Hashing { data: data.clone(), seq };
        st.in_flight += 1;
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(Job { file: file.clone(), index, seq, data })
    }

    fn submit(&self, jobs: Vec<Job>) -> Result<(), Errno> {
        let Some(tx) = &self.tx else {
            return Err(Errno::EIO);
        };
        for job in jobs {
            if let Err(e) = tx.send(job) {
                tracing::error!("hashing workers are gone; a block could not be stored");
                let job = e.into_inner();
                let mut st = job.file.st.lock();
                st.in_flight -= 1;
                st.error = Some(Errno::EIO);
                return Err(Errno::EIO);
            }
        }
        Ok(())
    }

    /// Hands every `Buf` of `file` to the workers.
    fn spill(&self, file: &Arc<FileState>) -> Result<(), Errno> {
        let jobs: Vec<Job> = {
            let mut st = file.st.lock();
            let Some(size) = st.size else {
                return Ok(());
            };
            let bufs: Vec<u64> =
                st.slots.iter().filter(|(_, s)| matches!(s, Slot::Buf { .. })).map(|(i, _)| *i).collect();
            bufs.into_iter().filter_map(|i| self.to_hashing(file, &mut st, i, size)).collect()
        };
        self.submit(jobs)
    }

    /// Over the memory bound: spill this file, then the others, and wait
    /// for the workers to bring the total back under the bound.
    fn relieve_pressure(&self, file: &Arc<FileState>) -> Result<(), Errno> {
        self.spill(file)?;
        if self.shared.dirty_bytes.load(Ordering::Acquire) > self.shared.dirty_limit {
            let others: Vec<Arc<FileState>> = self.files.lock().values().cloned().collect();
            for other in others.iter().filter(|o| !Arc::ptr_eq(o, file)) {
                self.spill(other)?;
            }
        }
        let mut g = self.shared.mem_lock.lock();
        while self.shared.dirty_bytes.load(Ordering::Acquire) > self.shared.dirty_limit
            && self.shared.in_flight.load(Ordering::Acquire) > 0
        {
            self.shared.mem_cond.wait_for(&mut g, Duration::from_millis(100));
        }
        Ok(())
    }

    /// Commits `node`'s buffered writes as one content event, if it has any.
    pub(crate) fn flush(&self, node: NodeId) -> Result<(), Errno> {
        let Some(file) = self.existing(node) else {
            return Ok(());
        };
        self.commit(&file)?;
        self.forget_if_clean(node);
        Ok(())
    }

    /// Runs `f` with `node`'s writes committed and further commits of it
    /// held off (truncate, fallocate, lseek use this).
    pub(crate) fn with_committed<T>(&self, node: NodeId, f: impl FnOnce() -> Result<T, Errno>) -> Result<T, Errno> {
        let Some(file) = self.existing(node) else {
            return f();
        };
        let _c = file.commit.lock();
        self.commit_locked(&file)?;
        let out = f();
        drop(_c);
        self.forget_if_clean(node);
        out
    }

    fn commit(&self, file: &Arc<FileState>) -> Result<(), Errno> {
        let _c = file.commit.lock();
        self.commit_locked(file)
    }

    fn commit_locked(&self, file: &Arc<FileState>) -> Result<(), Errno> {
        self.spill(file)?;
        let mut st = file.st.lock();
        let waiting: Vec<(u64, u64)> =
            st.slots.iter().filter(|(_, s)| matches!(s, Slot::Hashing { .. })).map(|(i, s)| (*i, s.seq())).collect();
        while waiting.iter().any(|(i, seq)| matches!(st.slots.get(i), Some(Slot::Hashing { seq: s, .. }) if s == seq)) {
            // Every job ends in a notify (a failed or panicking store
            // included); the timeout only guards against workers that are
            // gone, which then can never post the result.
            if file.cond.wait_for(&mut st, Duration::from_secs(1)).timed_out() && !self.workers_alive() {
                tracing::error!(node = %file.node, "the hashing workers are gone; buffered writes cannot be stored");
                return Err(Errno::EIO);
            }
        }
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        let Some(size) = st.size else {
            return Ok(());
        };
        let mut committed = Vec::new();
        let mut changes = Vec::new();
        for (i, s) in &st.slots {
            if let Slot::Ready { block, seq } = s {
                committed.push((*i, *seq));
                changes.push(BlockChange { index: *i, block: *block });
            }
        }
        drop(st);
        let made =
            self.live()?.write_blocks_on(file.node, self.line(file.node), size, changes).map_err(|e| errno(&e))?;
        self.line_made(file.node, made);
        let mut st = file.st.lock();
        for (i, seq) in committed {
            if matches!(st.slots.get(&i), Some(Slot::Ready { seq: s, .. }) if *s == seq) {
                st.slots.remove(&i);
            }
        }
        if st.slots.is_empty() && st.size == Some(size) {
            st.size = None;
        }
        Ok(())
    }

    /// `node` was opened for writing: unless it is open for writing
    /// already, its commits from now on continue the version it shows now.
    pub(crate) fn begin_line(&self, node: NodeId) {
        if let Some(line) = self.lines.lock().get_mut(&node) {
            line.writers += 1;
            return;
        }
        let now = self.shared.live.as_ref().and_then(|l| l.content_version(node).ok().flatten());
        self.lines.lock().entry(node).or_insert(Line { writers: 0, version: now }).writers += 1;
    }

    /// `node` was created here and opened for writing: its line starts at
    /// the version it shows at its first commit (no peer can have changed a
    /// file it has not seen yet), so nothing is asked of the engine.
    pub(crate) fn begin_new_line(&self, node: NodeId) {
        self.lines.lock().entry(node).or_insert(Line { writers: 0, version: None }).writers += 1;
    }

    /// A handle that opened `node` for writing was released; after the
    /// last one, commits (there are none but at unmount) are made on the
    /// version the file shows then.
    pub(crate) fn end_line(&self, node: NodeId) {
        let mut lines = self.lines.lock();
        if let Some(line) = lines.get_mut(&node) {
            line.writers = line.writers.saturating_sub(1);
            if line.writers == 0 {
                lines.remove(&node);
            }
        }
    }

    /// The version `node`'s next change is made on (`None`: the shown one).
    fn line(&self, node: NodeId) -> Option<EventId> {
        self.lines.lock().get(&node).and_then(|l| l.version)
    }

    /// `node`'s line made version `made`.
    fn line_made(&self, node: NodeId, made: EventId) {
        if let Some(line) = self.lines.lock().get_mut(&node) {
            line.version = Some(made);
        }
    }

    /// Truncates `node` to `size` (buffered writes committed first), as
    /// the next version of its line if it is open.
    pub(crate) fn truncate(&self, node: NodeId, size: u64) -> Result<(), Errno> {
        self.with_committed(node, || self.truncate_committed(node, size))
    }

    /// [`WriteBack::truncate`] for a caller already inside
    /// [`WriteBack::with_committed`].
    pub(crate) fn truncate_committed(&self, node: NodeId, size: u64) -> Result<(), Errno> {
        let made = self.live()?.truncate_on(node, self.line(node), size).map_err(|e| errno(&e))?;
        self.line_made(node, made);
        Ok(())
    }

    /// Zeroes `len` bytes of `node` from `offset` (`fallocate` punch hole
    /// and zero range; see `LiveTree::zero_range_on`), buffered writes
    /// committed first, as the next version of its line if it is open.
    pub(crate) fn zero_range(&self, node: NodeId, offset: u64, len: u64, keep_size: bool) -> Result<(), Errno> {
        self.with_committed(node, || {
            let made =
                self.live()?.zero_range_on(node, self.line(node), offset, len, keep_size).map_err(|e| errno(&e))?;
            self.line_made(node, made);
            Ok(())
        })
    }

    /// Makes `count` blocks of `dst` from `dst_first` on share the blocks
    /// of `src` from `src_first` on (`copy_file_range` of whole aligned
    /// blocks; see `LiveTree::share_blocks_on`), buffered writes of both
    /// committed first. Returns how many blocks were copied (from the
    /// first; fewer when the range holds many stored blocks).
    pub(crate) fn share_blocks(
        &self,
        src: NodeId,
        src_first: u64,
        dst: NodeId,
        dst_first: u64,
        count: u64,
    ) -> Result<u64, Errno> {
        self.flush(src)?;
        self.with_committed(dst, || {
            let (done, made) = self
                .live()?
                .share_blocks_on(src, src_first, dst, self.line(dst), dst_first, count)
                .map_err(|e| errno(&e))?;
            self.line_made(dst, made);
            Ok(done)
        })
    }

    fn forget_if_clean(&self, node: NodeId) {
        let mut files = self.files.lock();
        if let Some(f) = files.get(&node) {
            let mut st = f.st.lock();
            if st.clean() && st.error.is_none() {
                st.removed = true;
                drop(st);
                files.remove(&node);
            }
        }
    }

    /// Commits every file's buffered writes (unmount, destroy).
    /// The error returned is a failure other than a full disk or quota if
    /// there was one (see `Core::shutdown_flush`).
    pub(crate) fn flush_all(&self) -> Result<(), Errno> {
        let nodes: Vec<NodeId> = self.files.lock().keys().copied().collect();
        let mut result = Ok(());
        for node in nodes {
            if let Err(e) = self.flush(node) {
                tracing::error!(node = %node, "could not commit buffered writes: {e:?}");
                if result.is_ok() || is_no_space(e) {
                    result = Err(e);
                }
            }
        }
        result
    }
}

impl Drop for WriteBack {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.tx = None;
        self.ahead_tx = None;
        for h in self.workers.drain(..) {
            if h.join().is_err() {
                tracing::error!("a hashing worker panicked");
            }
        }
    }
}

fn is_zero(data: &[u8]) -> bool {
    let mut chunks = data.chunks_exact(64);
    let body = chunks.by_ref().all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0);
    body && chunks.remainder().iter().all(|&b| b == 0)
}

/// Whether `e` says the disk (or the quota) had no room.
pub(crate) fn is_no_space(e: Errno) -> bool {
    e == Errno::ENOSPC || e == Errno::EDQUOT
}

#[cfg(test)]
mod failure_tests;
mod read;
#[cfg(test)]
mod tests;
mod worker;

pub(crate) use read::ReadBuf;
use read::{Ahead, Stream};
use worker::worker;
