//! The redb index over the log and the blobs. It is derived data: every table
//! is a function of the log, written only by [`IndexWriter::apply`], so
//! deleting `index.redb` and replaying the log gives the same index
//! (`syncer index rebuild`).
//!
//! Tables (keys sort as tuples; `time` is [`Timestamp`] nanoseconds):
//!
//! | table            | key                                   | value                                  |
//! |------------------|---------------------------------------|----------------------------------------|
//! | `nodes`          | node                                  | rkyv [`NodeRecord`] (current state)    |
//! | `dirents`        | (dir, name)                           | (child, kind code)                     |
//! | `blocks`         | (node, block index)                   | block ref (see `tree::encode_block_ref`) |
//! | `history`        | (node, time, machine, seq)            | (segment, offset): the event's record  |
//! | `dirent_history` | (dir, name, time, machine, seq)       | (child, kind code), or `None` when the name went away |
//! | `block_history`  | (node, index, time, machine, seq)     | block ref (empty = hole)               |
//! | `events`         | (machine, seq)                        | (segment, offset, time, node)          |
//! | `blobs`          | hash bytes                            | (uncompressed len, first use time)     |
//! | `applied`        | machine                               | (segment, offset, seq) of the last applied record |
//! | `meta`           | name                                  | u64 counters (see `META_*`)            |
//! | `conflicts`      | (time, machine, seq, node, kind)      | a resolved conflict (see `encode_conflict`) |
//! | `checkpoints`    | (node, time, machine, seq)            | rkyv [`NodeRecord`]: the merged state after that event |
//! | `versions`       | (machine, seq)                        | (node, time, size): where a content version was applied (see `merge`) |
//!
//! Always true after a commit: `applied[m]` names the last record of machine
//! `m`'s log whose event (and every one before it) is reflected in every
//! other table; catching up resumes there and skips that record. Commits are
//! non-durable except every few seconds and at close (and a writer keeps
//! one transaction open for a group of changes): after a crash the index
//! may lag the log, and [`IndexWriter::applied`] says where to resume.
//!
//! An [`IndexWriter`] caches, for the life of its transaction, the node
//! records, directory entries and `meta` counters it reads or writes, and
//! each node's count of events since its last checkpoint. It writes
//! `nodes`, `meta`, `dirents`, `history`, `dirent_history`, `events` and
//! `applied` at commit, in key order (opening a redb table costs more than
//! the insert, and one event writes five of them); a query of one of those
//! tables in the transaction first writes what is buffered for it, and the
//! lookups that skip that go through caches that hold every buffered key.
//! It holds `nodes`, `dirents`, `history` and `meta` open for the life of
//! its transaction (see `Hot`); a reader opens each of those on its first
//! query and holds it.
//!
//! A writer's caches outlive its transaction: a successful commit hands
//! them to the next writer (see `Carried`), and a group committed in the
//! background ([`Index::commit_in_background`]) hands them to the writer of
//! the next group at once, which begins its own transaction only when it
//! needs one, after that commit. Until then it reads what its caches miss
//! from a snapshot. Always true: a writer's caches hold every key written by
//! a group still committing (they are never emptied without the transaction
//! begun, which waits for that commit), so a snapshot from before or after
//! that commit answers the same for every key they miss. At most one group
//! commits in the background; a writer after one that failed, or after
//! one that another commit followed before it (its caches may be stale),
//! cannot begin its transaction or commit, and a failure stays until the
//! engine takes it ([`Index::take_failure`]) to apply those changes again
//! from the log.
//!
//! Point-in-time queries (`*_at`) read the history tables up to a time; they
//! cost a scan of the history of the one node, name or directory asked
//! about, never a replay of the whole log. A node's state at a time is its
//! latest checkpoint before it plus the fold of its few events since:
//! `checkpoints` holds a node's merged record after every
//! [`CHECKPOINT_EVERY`]th event of its own history (counted from its last
//! checkpoint), so a node is never folded over more than that many events.
//!
//! A content change is in the `history` of the node it was applied to,
//! which for a change routed to a conflict copy is not the node it names
//! (see `merge`, *Content versions*); a conflict copy has a checkpoint at
//! the event that made it, since no create event of its own does.
//!
//! Version history ([`INDEX_VERSION`]): 3 added `checkpoints`; 5 added
//! `versions` and the content head and conflict mark of [`NodeRecord`]; 6
//! added a directory's count of subdirectories and a file's stored bytes
//! to [`NodeRecord`] (link counts and `st_blocks`); an index of another
//! version is rebuilt from the log on open.

pub(crate) mod pipeline;
use std::cell::{Cell, OnceCell, RefCell};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::{
    Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition,
    WriteTransaction,
};

use crate::error::{Error, Result};
use crate::event::{BlockRef, Event, NodeKind};
use crate::ids::{EventId, LogPos, MachineId, NodeId, Timestamp};
use crate::merge::{self, Conflict, ConflictKind, OrderKey, TreeStore, VersionLoc};
use crate::storage::Storage;
use crate::tree::{self, NodeRecord};

type NodeKey = u128;

/// The writer's caches are asked several times per event: a fast hash
/// (seeded per process, so names from peers cannot be chosen to collide).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
const NODES: TableDefinition<NodeKey, &[u8]> = TableDefinition::new("nodes");
/// `(dir, name)`.
type DirentKey = (NodeKey, &'static [u8]);
const DIRENTS: TableDefinition<DirentKey, (NodeKey, u8)> = TableDefinition::new("dirents");
const BLOCKS: TableDefinition<(NodeKey, u64), &[u8]> = TableDefinition::new("blocks");
/// `(node, time, machine, seq)`.
type HistoryKey = (NodeKey, i64, u64, u64);
const HISTORY: TableDefinition<HistoryKey, (u64, u64)> = TableDefinition::new("history");
/// `(dir, name, time, machine, seq)`.
type DirentHistoryKey<'a> = (NodeKey, &'a [u8], i64, u64, u64);
const DIRENT_HISTORY: TableDefinition<DirentHistoryKey, Option<(NodeKey, u8)>> = TableDefinition::new("dirent_history");
const BLOCK_HISTORY: TableDefinition<(NodeKey, u64, i64, u64, u64), &[u8]> = TableDefinition::new("block_history");
const EVENTS: TableDefinition<(u64, u64), (u64, u64, i64, NodeKey)> = TableDefinition::new("events");
const BLOBS: TableDefinition<&[u8], (u32, i64)> = TableDefinition::new("blobs");
const APPLIED: TableDefinition<u64, (u64, u64, u64)> = TableDefinition::new("applied");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const CONFLICTS: TableDefinition<(i64, u64, u64, NodeKey, u8), &[u8]> = TableDefinition::new("conflicts");
const CHECKPOINTS: TableDefinition<(NodeKey, i64, u64, u64), &[u8]> = TableDefinition::new("checkpoints");
/// `(machine, seq) -> (node, time, size)`.
const VERSIONS: TableDefinition<(u64, u64), (NodeKey, i64, u64)> = TableDefinition::new("versions");

/// Most events of one node folded on top of a checkpoint.
pub const CHECKPOINT_EVERY: usize = 32;

/// Version of the index layout above. An index of another version is
/// deleted and rebuilt from the log on open (it is derived data).
pub const INDEX_VERSION: u64 = 6;

/// How long [`Index::reopen`] waits for the transactions on the old handle.
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Free bytes [`Index::reopen`] wants before it gives up a failed handle:
/// opening a file that was not closed cleanly writes to it.
const REOPEN_ROOM: u64 = 4 << 20;

const META_VERSION: &str = "index_version";
const META_NODES: &str = "nodes";
const META_FILES: &str = "files";
const META_DIRS: &str = "dirs";
const META_BYTES: &str = "logical_bytes";
const META_BLOCK_BYTES: &str = "block_bytes";
const META_BLOCKS: &str = "block_count";
const META_EVENTS: &str = "events";
const META_IGNORED: &str = "ignored_events";
/// Latest event time seen from any machine (as `u64` bits of the `i64`).
const META_MAX_TIME: &str = "max_event_time";
/// The merge-order key of the last applied event: (time, machine, seq).
const META_FRONTIER_TIME: &str = "frontier_time";
const META_FRONTIER_MACHINE: &str = "frontier_machine";
const META_FRONTIER_SEQ: &str = "frontier_seq";

/// Counters kept by the index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Live nodes, the root not included (`Engine::stats` counts it).
    pub nodes: u64,
    /// Live regular files.
    pub files: u64,
    /// Live directories (root included).
    pub dirs: u64,
    /// Sum of live files' sizes.
    pub logical_bytes: u64,
    /// Distinct blocks ever referenced.
    pub blocks: u64,
    /// Their uncompressed bytes.
    pub block_bytes: u64,
    /// Events applied.
    pub events: u64,
    /// Events that did not fit the state they landed on (see `tree`).
    pub ignored_events: u64,
}

/// One directory entry.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DirEntry {
    /// Entry name.
    pub name: Vec<u8>,
    /// The node it names.
    pub node: NodeId,
    /// That node's kind.
    pub kind: NodeKind,
}

/// Where an event is in the log, as the `events` table knows it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EventLocation {
    /// Record position.
    pub pos: LogPos,
    /// Event time.
    pub time: Timestamp,
    /// Node changed.
    pub node: NodeId,
}

/// The redb index file.
#[derive(Debug)]
pub struct Index {
    /// Replaced whole only by [`Index::reopen`] (after an I/O failure) and
    /// [`Index::reopen_read_only`].
    db: std::sync::RwLock<Db>,
    path: PathBuf,
    /// The caches of the last writer that committed (see [`Carried`]).
    carried: Arc<Mutex<Option<Carried>>>,
    /// The group being committed in the background, if any (see
    /// [`Index::commit_in_background`]).
    in_flight: Mutex<Option<Arc<Background>>>,
    /// Why a group committed in the background failed, until the engine
    /// takes it ([`Index::take_failure`]) to apply that group again from
    /// the log: whoever notices the failure first, it is not lost.
    failed: Arc<Mutex<Option<String>>>,
    /// Commits so far: a writer after a background group checks that the
    /// next commit after its hand-off was that group's (see
    /// [`IndexWriter::held`]).
    commits: Arc<std::sync::atomic::AtomicU64>,
    /// Where the file is opened through, when not by redb itself (fault
    /// injection; see [`Storage::index_database`]).
    storage: Option<Arc<dyn Storage>>,
    /// Unit tests: the next background commit fails without writing.
    #[cfg(test)]
    pub(crate) fail_next_background: std::sync::atomic::AtomicBool,
}

/// How a group committed in the background ended: the next writer begins
/// its transaction only after it, and not at all if it failed (its caches
/// then claim changes the index lacks).
#[derive(Debug, Default)]
pub struct Background {
    outcome: Mutex<Option<std::result::Result<(), String>>>,
    done: std::sync::Condvar,
}

impl Background {
    fn finish(&self, outcome: std::result::Result<(), String>) {
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
        self.done.notify_all();
    }

    /// Waits for the commit; its error, if it failed.
    fn wait(&self) -> std::result::Result<(), String> {
        let mut outcome = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(o) = &*outcome {
                return o.clone();
            }
            outcome = self.done.wait(outcome).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A writer's caches of nodes, directory entries and checkpoint counts,
/// handed on to the next writer at commit: the engine commits a group every
/// few milliseconds, and a node created in one group is mostly stat'ed,
/// changed or removed in the next.
///
/// Always true: when set, they describe the index as its last commit left
/// it, and no group is committing in the background. Every change to the
/// index goes through an [`IndexWriter`]; a writer takes them when it opens
/// and gives them back only when its own commit succeeds, so a transaction
/// that is dropped or fails takes its caches with it, and the next writer
/// starts empty. A group committed in the background hands its caches
/// straight to the next writer instead (see
/// [`Index::commit_in_background`]). [`Index::clear`] and a failed
/// background commit drop them.
#[derive(Default)]
struct Carried {
    nodes: HashMap<NodeId, Option<NodeRecord>>,
    since_checkpoint: HashMap<NodeId, (usize, bool)>,
    entries: HashMap<(NodeId, Vec<u8>), Entry>,
}

impl std::fmt::Debug for Carried {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Carried")
            .field("nodes", &self.nodes.len())
            .field("since_checkpoint", &self.since_checkpoint.len())
            .field("entries", &self.entries.len())
            .finish()
    }
}

fn lock_carried(m: &Mutex<Option<Carried>>) -> std::sync::MutexGuard<'_, Option<Carried>> {
    // Only ever replaced whole: a panic cannot leave it half-changed.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How the file is open: for writing (one process holds it exclusively), or
/// read-only (shared with other read-only openers; see [`Index::open_read_only`]).
enum Db {
    Rw(Arc<Database>),
    Ro(redb::ReadOnlyDatabase),
    /// Between closing one handle and opening the next.
    Closed,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Db::Rw(_) => "read-write",
            Db::Ro(_) => "read-only",
            Db::Closed => "closed",
        })
    }
}

fn kind_code(k: NodeKind) -> u8 {
    match k {
        NodeKind::File => 0,
        NodeKind::Dir => 1,
        NodeKind::Symlink => 2,
        NodeKind::Fifo => 3,
        NodeKind::Socket => 4,
        NodeKind::CharDev => 5,
        NodeKind::BlockDev => 6,
    }
}

fn kind_from_code(c: u8) -> Option<NodeKind> {
    Some(match c {
        0 => NodeKind::File,
        1 => NodeKind::Dir,
        2 => NodeKind::Symlink,
        3 => NodeKind::Fifo,
        4 => NodeKind::Socket,
        5 => NodeKind::CharDev,
        6 => NodeKind::BlockDev,
        _ => return None,
    })
}

/// Encodes a node record for the `nodes` table.
fn encode_node(n: &NodeRecord) -> Vec<u8> {
    // Serializing plain owned data into a Vec cannot fail; an error here
    // would be a bug in rkyv, surfaced as an empty value that decode refuses.
    rkyv::to_bytes::<rkyv::rancor::Error>(n).map(|v| v.to_vec()).unwrap_or_default()
}

impl Index {
    fn on(db: Db, path: &Path) -> Index {
        Index {
            storage: None,
            db: std::sync::RwLock::new(db),
            path: path.to_path_buf(),
            carried: Arc::default(),
            in_flight: Mutex::default(),
            failed: Arc::default(),
            commits: Arc::default(),
            #[cfg(test)]
            fail_next_background: Default::default(),
        }
    }

    /// Opens (creating if missing) the index at `path`. Returns whether it
    /// must be rebuilt: new file, or a layout version this build does not write.
    pub fn open(path: &Path) -> Result<(Index, bool)> {
        Index::open_with(path, None)
    }

    /// [`Index::open`], through `storage` if it opens indexes itself.
    pub fn open_with(path: &Path, storage: Option<Arc<dyn Storage>>) -> Result<(Index, bool)> {
        let fresh = !path.exists();
        let create = || create_db(path, storage.as_deref());
        let db = match create() {
            Ok(db) => db,
            // Held by another process: not damage, and not ours to replace.
            Err(e) if !fresh && !matches!(e, redb::DatabaseError::DatabaseAlreadyOpen) => {
                // The index is derived: a damaged one is replaced, and the log
                // it came from is replayed by the caller.
                tracing::warn!("index {} unreadable ({e}); rebuilding it from the log", path.display());
                std::fs::remove_file(path).map_err(|e| Error::io("remove", path, e))?;
                create().map_err(|e| ix_err(path, e))?
            }
            Err(e) => return Err(ix_err(path, e)),
        };
        let mut index = Index::on(Db::Rw(Arc::new(db)), path);
        index.storage = storage;
        let version = index.read()?.meta(META_VERSION)?;
        let rebuild = fresh || version != INDEX_VERSION;
        if rebuild {
            index.clear()?;
        }
        Ok((index, rebuild))
    }

    /// Empties every table and stamps the current layout version. The
    /// tables are deleted before a writer opens any: an index of another
    /// layout may hold a table under the same name with other key or value
    /// types, which redb refuses to open.
    pub fn clear(&self) -> Result<()> {
        let txn = self.begin_write()?;
        *lock_carried(&self.carried) = None;
        reset_tables(&txn).map_err(|e| self.err(e))?;
        let mut w = self.writer(txn)?;
        w.set_meta(META_VERSION, INDEX_VERSION)?;
        w.commit(true)
    }

    /// Opens an existing, cleanly closed index read-only. Any number of
    /// processes may hold it so at once; none may hold it for writing then.
    pub fn open_read_only(path: &Path) -> Result<Index> {
        let db = redb::ReadOnlyDatabase::open(path).map_err(|e| ix_err(path, e))?;
        Ok(Index::on(Db::Ro(db), path))
    }

    /// Closes a writable handle cleanly and reopens the file read-only.
    pub fn reopen_read_only(&mut self) -> Result<()> {
        let _ = self.wait_in_flight();
        let slot = self.db.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Db::Rw(db) = std::mem::replace(slot, Db::Closed) {
            let db = Arc::try_unwrap(db).map_err(|_| Error::Index {
                path: self.path.clone(),
                reason: "still in use by a writer; cannot reopen it read-only".into(),
            })?;
            db.close().map_err(|e| ix_err(&self.path, e))?;
        }
        *slot = Db::Ro(redb::ReadOnlyDatabase::open(&self.path).map_err(|e| ix_err(&self.path, e))?);
        Ok(())
    }

    /// Drops the writable handle and opens the file again. After an I/O
    /// failure (a full disk, EIO) redb refuses every later transaction
    /// until the database is reopened; reopening finds the file as its last
    /// durable commit left it, and the caller applies what the index lacks
    /// again from the log. The handle is shared with writers and read
    /// transactions in flight: the file is reopened once they are gone,
    /// which takes at most `REOPEN_WAIT` (their operations are short), else
    /// the index stays closed and a later call tries again.
    pub fn reopen(&self) -> Result<()> {
        let _ = self.wait_in_flight();
        *lock_carried(&self.carried) = None;
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        if matches!(&*slot, Db::Ro(_)) {
            return Err(Error::Index { path: self.path.clone(), reason: "open read-only; not reopened".into() });
        }
        // On a disk that would refuse the reopen (read-only, or full) the
        // failed handle is kept: redb still reads through it, so readers go
        // on; a later call reopens once the disk takes writes again.
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if matches!(&*slot, Db::Rw(_)) {
            if let Some(e) = crate::blob::refuses_writes(dir, REOPEN_ROOM) {
                return Err(Error::io("reopen", &self.path, e));
            }
        }
        // Dropped here; the file closes with the last transaction on it.
        *slot = Db::Closed;
        let deadline = std::time::Instant::now() + REOPEN_WAIT;
        loop {
            match create_db(&self.path, self.storage.as_deref()) {
                Ok(db) => {
                    *slot = Db::Rw(Arc::new(db));
                    tracing::info!("index {} reopened", self.path.display());
                    return Ok(());
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(ix_err(&self.path, e)),
            }
        }
    }

    /// Starts a write transaction, after any group still committing in the
    /// background.
    pub fn write(&self) -> Result<IndexWriter> {
        let _ = self.wait_in_flight();
        self.refuse_after_failure()?;
        self.writer(self.begin_write()?)
    }

    /// A writer on top of a group that failed in the background would
    /// commit its `applied` positions past that group's events, which
    /// would then never be applied: the failure must be taken first.
    fn refuse_after_failure(&self) -> Result<()> {
        match &*self.failed.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(why) => Err(Error::Index {
                path: self.path.clone(),
                reason: format!("a group committed in the background failed ({why}) and is not yet applied again"),
            }),
            None => Ok(()),
        }
    }

    /// A writer whose transaction begins only when it first needs one: until
    /// then it reads what its caches miss from a snapshot, so it can take
    /// changes while the group before it commits in the background (see
    /// [`Index::commit_in_background`]).
    pub fn write_detached(&self) -> Result<IndexWriter> {
        // Carried caches are never set while a group commits in the
        // background; if one is, they are not trusted.
        let in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        let carried = lock_carried(&self.carried).take().filter(|_| !in_flight);
        if carried.is_none() {
            // Empty caches cover nothing: a snapshot must hold everything.
            let _ = self.wait_in_flight();
        }
        self.refuse_after_failure()?;
        Ok(self.new_writer(self.rw()?, OnceCell::new(), carried.unwrap_or_default()))
    }

    fn rw(&self) -> Result<Arc<Database>> {
        match &*self.db.read().unwrap_or_else(|e| e.into_inner()) {
            Db::Rw(db) => Ok(db.clone()),
            Db::Ro(_) => Err(Error::Index { path: self.path.clone(), reason: "index is open read-only".into() }),
            Db::Closed => Err(self.closed()),
        }
    }

    fn closed(&self) -> Error {
        Error::Index { path: self.path.clone(), reason: "index is closed (reopening it after a failure failed)".into() }
    }

    fn begin_write(&self) -> Result<WriteTransaction> {
        self.rw()?.begin_write().map_err(|e| self.err(e))
    }

    fn writer(&self, txn: WriteTransaction) -> Result<IndexWriter> {
        let held = HeldTxn::open(txn).map_err(|e| self.err(e))?;
        let carried = lock_carried(&self.carried).take().unwrap_or_default();
        Ok(self.new_writer(self.rw()?, OnceCell::from(held), carried))
    }

    fn new_writer(&self, db: Arc<Database>, txn: OnceCell<HeldTxn>, carried: Carried) -> IndexWriter {
        IndexWriter {
            txn,
            lost: Cell::new(false),
            db,
            after: None,
            after_commits: 0,
            commits: Arc::clone(&self.commits),
            snapshot: OnceCell::new(),
            covering: Cell::new(true),
            carries: true,
            path: self.path.clone(),
            meta_changed: HashMap::default(),
            nodes: RefCell::new(carried.nodes),
            since_checkpoint: carried.since_checkpoint,
            entries: RefCell::new(carried.entries),
            dirty_nodes: RefCell::default(),
            carry_to: Arc::clone(&self.carried),
            buffer: RefCell::new(WriteBuffer::default()),
            flush_failed: Cell::new(false),
        }
    }

    /// Why a group committed in the background failed, if one did since
    /// the last call: the caller must apply its changes again from the log.
    pub fn take_failure(&self) -> Option<String> {
        self.failed.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Waits for the group committing in the background, if any; its error
    /// if it failed (also kept for [`Index::take_failure`]).
    pub fn wait_in_flight(&self) -> std::result::Result<(), String> {
        let job = self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(job) = job else { return Ok(()) };
        let outcome = job.wait();
        let mut slot = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|j| Arc::ptr_eq(j, &job)) {
            *slot = None;
        }
        if outcome.is_err() {
            *lock_carried(&self.carried) = None;
        }
        outcome
    }

    /// Commits `w`'s group on a thread of its own and returns the writer
    /// for the next group, which takes `w`'s caches (clean: what they hold
    /// is `w`'s to write). The next writer reads what its caches miss from
    /// a snapshot taken before or after this commit, which gives the same
    /// answer for every key this group wrote, since those are all in the
    /// caches ([`IndexWriter::can_commit_in_background`]); it begins its own
    /// transaction only after this commit, and fails if this one failed.
    ///
    /// One group at a time: the caller waits for the last one first
    /// ([`Index::wait_in_flight`]).
    pub fn commit_in_background(&self, mut w: IndexWriter) -> Result<IndexWriter> {
        if !w.can_commit_in_background() {
            return Err(Error::Invalid("this group cannot be committed in the background".into()));
        }
        let job = Arc::new(Background::default());
        // The group writes its dirty nodes; the next writer takes the cache.
        let nodes = w.nodes.take();
        let dirty: HashMap<NodeId, Option<NodeRecord>> =
            w.dirty_nodes.get_mut().iter().map(|id| (*id, nodes.get(id).cloned().flatten())).collect();
        let carried =
            Carried { nodes, since_checkpoint: std::mem::take(&mut w.since_checkpoint), entries: w.entries.take() };
        let mut next = self.new_writer(w.db.clone(), OnceCell::new(), carried);
        next.after = Some(job.clone());
        // No group is in flight (the caller waited): this one's commit is
        // the next.
        next.after_commits = self.commits.load(std::sync::atomic::Ordering::SeqCst) + 1;
        next.meta_changed = w.meta_changed.clone();
        *w.nodes.get_mut() = dirty;
        w.carries = false;
        w.snapshot = OnceCell::new();
        *self.in_flight.lock().unwrap_or_else(|e| e.into_inner()) = Some(job.clone());
        let (done, failed) = (job.clone(), self.failed.clone());
        #[cfg(test)]
        let injected = self.fail_next_background.swap(false, std::sync::atomic::Ordering::SeqCst);
        #[cfg(not(test))]
        let injected = false;
        let spawned = std::thread::Builder::new().name("syncer-index".into()).spawn(move || {
            // A panic must still end the wait of the writer after this one.
            let commit = std::panic::AssertUnwindSafe(move || w.commit(false).map_err(|e| e.to_string()));
            let outcome = match injected {
                true => {
                    drop(commit);
                    Err("injected failure".into())
                }
                false => std::panic::catch_unwind(commit).unwrap_or_else(|_| Err("the commit panicked".into())),
            };
            if let Err(why) = &outcome {
                *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
            }
            done.finish(outcome)
        });
        if let Err(e) = spawned {
            // The group is gone with the closure: the caller applies it
            // again from the log.
            let reason = format!("cannot start the commit thread: {e}");
            job.finish(Err(reason.clone()));
            return Err(Error::Index { path: self.path.clone(), reason });
        }
        Ok(next)
    }

    /// Starts a read transaction (a consistent snapshot), after any group
    /// still committing in the background.
    pub fn read(&self) -> Result<IndexReader> {
        let _ = self.wait_in_flight();
        let txn = match &*self.db.read().unwrap_or_else(|e| e.into_inner()) {
            Db::Rw(db) => db.begin_read(),
            Db::Ro(db) => db.begin_read(),
            Db::Closed => return Err(self.closed()),
        };
        let txn = txn.map_err(|e| self.err(e))?;
        Ok(IndexReader::new(txn, self.path.clone()))
    }

    fn err(&self, e: impl Into<redb::Error>) -> Error {
        ix_err(&self.path, e)
    }
}

/// Deletes every table of the layout by name, whatever types it was
/// stored with, and creates them empty (`nodes`, `dirents`, `history` and
/// `meta` are created by [`HeldTxn::open`]).
fn reset_tables(txn: &WriteTransaction) -> std::result::Result<(), redb::TableError> {
    for name in [
        "nodes",
        "dirents",
        "blocks",
        "history",
        "dirent_history",
        "block_history",
        "events",
        "blobs",
        "applied",
        "meta",
        "conflicts",
        "checkpoints",
        "versions",
    ] {
        let def: TableDefinition<&[u8], &[u8]> = TableDefinition::new(name);
        txn.delete_table(def)?;
    }
    txn.open_table(BLOCKS)?;
    txn.open_table(DIRENT_HISTORY)?;
    txn.open_table(BLOCK_HISTORY)?;
    txn.open_table(EVENTS)?;
    txn.open_table(BLOBS)?;
    txn.open_table(APPLIED)?;
    txn.open_table(CONFLICTS)?;
    txn.open_table(CHECKPOINTS)?;
    txn.open_table(VERSIONS)?;
    Ok(())
}

/// Opens (creating if missing) the redb file at `path`, through `storage`
/// if it opens indexes itself.
fn create_db(path: &Path, storage: Option<&dyn Storage>) -> std::result::Result<Database, redb::DatabaseError> {
    match storage.and_then(|s| s.index_database(path)) {
        Some(opened) => opened,
        None => Database::create(path),
    }
}

/// An index failure; one the OS caused (a full disk) keeps its I/O error,
/// so the caller can tell ENOSPC from damage.
fn ix_err(path: &Path, e: impl Into<redb::Error>) -> Error {
    match e.into() {
        redb::Error::Io(source) => Error::Io { op: "index", path: path.to_path_buf(), source },
        e => Error::Index { path: path.to_path_buf(), reason: e.to_string() },
    }
}

fn decode_node(path: &Path, id: NodeId, bytes: &[u8]) -> Result<NodeRecord> {
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<NodeRecord, rkyv::rancor::Error>(&aligned)
        .map_err(|e| Error::Index { path: path.to_path_buf(), reason: format!("node {id}: bad record: {e}") })
}

fn decode_ref(path: &Path, bytes: &[u8]) -> Result<Option<BlockRef>> {
    tree::decode_block_ref(bytes).map_err(|reason| Error::Index { path: path.to_path_buf(), reason })
}

/// Read queries shared by readers and writers; `$t` is the transaction.
macro_rules! queries {
    () => {
        /// A counter as stored in the `meta` table (0 if unset).
        fn stored_meta(&self, key: &str) -> Result<u64> {
            self.with_meta(|t| Ok(t.get(key).map_err(|e| ix_err(&self.path, e))?.map_or(0, |v| v.value())))
        }

        /// Events in `node`'s history from its last checkpoint on (that
        /// checkpoint's own event included, when it is one of the node's), up
        /// to `CHECKPOINT_EVERY + 1`, and whether it has a checkpoint.
        fn count_since_checkpoint(&self, node: NodeId) -> Result<(usize, bool)> {
            let all = (node.0, i64::MIN, 0, 0)..=(node.0, i64::MAX, u64::MAX, u64::MAX);
            let err = |e: redb::StorageError| ix_err(&self.path, e);
            let count = |from: HistoryKey| {
                self.with_history(|h| Ok(h.range(from..=*all.end()).map_err(err)?.take(CHECKPOINT_EVERY + 1).count()))
            };
            let total = count(*all.start())?;
            // A checkpoint is only ever taken after that many events, so a
            // shorter history has none (most nodes: no second table to read).
            if total < CHECKPOINT_EVERY {
                return Ok((total, false));
            }
            let last = match self.tx()?.open_table(CHECKPOINTS) {
                Ok(c) => match c.range(all.clone()).map_err(err)?.next_back() {
                    Some(item) => Some(item.map_err(err)?.0.value()),
                    None => None,
                },
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(ix_err(&self.path, e)),
            };
            let since = count(last.unwrap_or(*all.start()))?;
            Ok((since, last.is_some()))
        }

        /// A node's state as stored in `nodes` (removed nodes included; the
        /// root exists before any event).
        fn stored_node(&self, id: NodeId) -> Result<Option<NodeRecord>> {
            self.with_nodes(|t| match t.get(id.0).map_err(|e| ix_err(&self.path, e))? {
                Some(v) => decode_node(&self.path, id, v.value()).map(Some),
                None if id == NodeId::ROOT => Ok(Some(NodeRecord::root())),
                None => Ok(None),
            })
        }

        /// The node named `name` in `dir`, as stored in `dirents` (for a
        /// writer: its `entries` cache holds every buffered entry, and is
        /// asked first).
        fn stored_lookup(&self, dir: NodeId, name: &[u8]) -> Result<Option<(NodeId, NodeKind)>> {
            self.with_dirents(|t| {
                let v = t.get((dir.0, name)).map_err(|e| ix_err(&self.path, e))?;
                Ok(v.and_then(|v| {
                    let (child, kind) = v.value();
                    kind_from_code(kind).map(|k| (NodeId(child), k))
                }))
            })
        }

        /// Up to `limit` entries of `dir` with names after `after`, by name.
        pub fn read_dir(&self, dir: NodeId, after: Option<&[u8]>, limit: usize) -> Result<Vec<DirEntry>> {
            self.flush_buffered(Buffered::Dirents)?;
            self.with_dirents(|t| {
                let start: (NodeKey, &[u8]) = (dir.0, after.unwrap_or(&[]));
                let mut out = Vec::new();
                let range = t.range(start..).map_err(|e| ix_err(&self.path, e))?;
                for item in range {
                    let (k, v) = item.map_err(|e| ix_err(&self.path, e))?;
                    let (d, name) = k.value();
                    if d != dir.0 {
                        break;
                    }
                    if after.is_some_and(|a| a == name) {
                        continue;
                    }
                    let (child, kind) = v.value();
                    let Some(kind) = kind_from_code(kind) else {
                        return Err(Error::Index {
                            path: self.path.clone(),
                            reason: format!("directory {dir}: entry with kind code {kind}"),
                        });
                    };
                    out.push(DirEntry { name: name.to_vec(), node: NodeId(child), kind });
                    if out.len() >= limit {
                        break;
                    }
                }
                Ok(out)
            })
        }

        /// Whether `dir` has any entry.
        pub fn has_entries(&self, dir: NodeId) -> Result<bool> {
            Ok(!self.read_dir(dir, None, 1)?.is_empty())
        }

        /// Stored (non-hole) blocks of `node` with index in `first..first+count`.
        pub fn blocks(&self, node: NodeId, first: u64, count: u64) -> Result<Vec<(u64, BlockRef)>> {
            let t = self.tx()?.open_table(BLOCKS).map_err(|e| ix_err(&self.path, e))?;
            let end = first.saturating_add(count);
            let mut out = Vec::new();
            for item in t.range((node.0, first)..(node.0, end)).map_err(|e| ix_err(&self.path, e))? {
                let (k, v) = item.map_err(|e| ix_err(&self.path, e))?;
                if let Some(b) = decode_ref(&self.path, v.value())? {
                    out.push((k.value().1, b));
                }
            }
            Ok(out)
        }

        /// The first stored (non-hole) block of `node` with index at least
        /// `from`, if any: one range query, whatever the size of the hole.
        pub fn next_block(&self, node: NodeId, from: u64) -> Result<Option<u64>> {
            let t = self.tx()?.open_table(BLOCKS).map_err(|e| ix_err(&self.path, e))?;
            for item in t.range((node.0, from)..=(node.0, u64::MAX)).map_err(|e| ix_err(&self.path, e))? {
                let (k, v) = item.map_err(|e| ix_err(&self.path, e))?;
                if decode_ref(&self.path, v.value())?.is_some() {
                    return Ok(Some(k.value().1));
                }
            }
            Ok(None)
        }

        /// Up to `limit` stored blocks of `node` with index in
        /// `first..first+count`, in index order.
        pub fn blocks_limited(
            &self,
            node: NodeId,
            first: u64,
            count: u64,
            limit: usize,
        ) -> Result<Vec<(u64, BlockRef)>> {
            let t = self.tx()?.open_table(BLOCKS).map_err(|e| ix_err(&self.path, e))?;
            let end = first.saturating_add(count);
            let mut out = Vec::new();
            for item in t.range((node.0, first)..(node.0, end)).map_err(|e| ix_err(&self.path, e))? {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = item.map_err(|e| ix_err(&self.path, e))?;
                if let Some(b) = decode_ref(&self.path, v.value())? {
                    out.push((k.value().1, b));
                }
            }
            Ok(out)
        }

        /// [`next_block`](Self::next_block) as of `at`: a scan of the block
        /// history of `node` from `from` on, which stops at the first block
        /// stored at `at` (its cost is that history's, never the hole's).
        pub fn next_block_at(&self, node: NodeId, from: u64, at: Timestamp) -> Result<Option<u64>> {
            let t = self.tx()?.open_table(BLOCK_HISTORY).map_err(|e| ix_err(&self.path, e))?;
            let range = t
                .range((node.0, from, i64::MIN, 0, 0)..=(node.0, u64::MAX, i64::MAX, u64::MAX, u64::MAX))
                .map_err(|e| ix_err(&self.path, e))?;
            // The latest change at or before `at` of the index being read.
            let mut current: Option<(u64, bool)> = None;
            for item in range {
                let (k, v) = item.map_err(|e| ix_err(&self.path, e))?;
                let (_, index, time, _, _) = k.value();
                if let Some((i, stored)) = current {
                    if i != index && stored {
                        return Ok(Some(i));
                    }
                    if i != index {
                        current = None;
                    }
                }
                if time <= at.0 {
                    current = Some((index, !v.value().is_empty()));
                }
            }
            Ok(current.and_then(|(i, stored)| stored.then_some(i)))
        }

        /// The last applied record of machine `m`: (segment, offset, seq).
        pub fn applied(&self, m: MachineId) -> Result<Option<(u64, u64, u64)>> {
            self.flush_buffered(Buffered::Applied)?;
            let t = self.tx()?.open_table(APPLIED).map_err(|e| ix_err(&self.path, e))?;
            let v = t.get(m.0).map_err(|e| ix_err(&self.path, e))?.map(|v| v.value());
            Ok(v)
        }

        /// Every machine with applied events.
        pub fn machines(&self) -> Result<Vec<MachineId>> {
            self.flush_buffered(Buffered::Applied)?;
            let t = self.tx()?.open_table(APPLIED).map_err(|e| ix_err(&self.path, e))?;
            let mut out = Vec::new();
            for item in t.iter().map_err(|e| ix_err(&self.path, e))? {
                let (k, _) = item.map_err(|e| ix_err(&self.path, e))?;
                out.push(MachineId(k.value()));
            }
            Ok(out)
        }

        /// The counters.
        pub fn counts(&self) -> Result<Counts> {
            Ok(Counts {
                nodes: self.meta(META_NODES)?,
                files: self.meta(META_FILES)?,
                dirs: self.meta(META_DIRS)?,
                logical_bytes: self.meta(META_BYTES)?,
                blocks: self.meta(META_BLOCKS)?,
                block_bytes: self.meta(META_BLOCK_BYTES)?,
                events: self.meta(META_EVENTS)?,
                ignored_events: self.meta(META_IGNORED)?,
            })
        }

        /// The merge-order key of the last applied event, if any.
        pub fn frontier(&self) -> Result<Option<(Timestamp, MachineId, u64)>> {
            if self.meta(META_EVENTS)? == 0 {
                return Ok(None);
            }
            Ok(Some((
                Timestamp(self.meta(META_FRONTIER_TIME)? as i64),
                MachineId(self.meta(META_FRONTIER_MACHINE)?),
                self.meta(META_FRONTIER_SEQ)?,
            )))
        }

        /// Every conflict resolved so far, by event (merge order), node and kind.
        pub fn conflicts(&self) -> Result<Vec<Conflict>> {
            let t = self.tx()?.open_table(CONFLICTS).map_err(|e| ix_err(&self.path, e))?;
            let mut out = Vec::new();
            for item in t.iter().map_err(|e| ix_err(&self.path, e))? {
                let (k, v) = item.map_err(|e| ix_err(&self.path, e))?;
                let (time, machine, seq, node, kind) = k.value();
                let c = decode_conflict(v.value(), kind, Timestamp(time), (MachineId(machine), seq), NodeId(node))
                    .map_err(|reason| Error::Index { path: self.path.clone(), reason })?;
                out.push(c);
            }
            Ok(out)
        }

        /// The latest event time of any machine (zero before any event).
        pub fn max_event_time(&self) -> Result<Timestamp> {
            Ok(Timestamp(self.meta(META_MAX_TIME)? as i64))
        }

        /// The highest node counter that machine `m` has used.
        pub fn max_counter(&self, m: MachineId) -> Result<u64> {
            self.meta(&counter_key(m))
        }

        /// Log positions of `node`'s events up to and including `until`, in time order.
        pub fn history(&self, node: NodeId, until: Timestamp) -> Result<Vec<(LogPos, Timestamp)>> {
            self.flush_buffered(Buffered::History)?;
            self.with_history(|t| {
                let mut out = Vec::new();
                let range = t
                    .range((node.0, i64::MIN, 0, 0)..=(node.0, until.0, u64::MAX, u64::MAX))
                    .map_err(|e| ix_err(&self.path, e))?;
                for item in range {
                    let (k, v) = item.map_err(|e| ix_err(&self.path, e))?;
                    let (_, time, machine, _) = k.value();
                    let (segment, offset) = v.value();
                    out.push((LogPos { machine: MachineId(machine), segment, offset }, Timestamp(time)));
                }
                Ok(out)
            })
        }

        /// The latest checkpoint of `node` at or before `until`: its event's
        /// merge-order key and the merged record after it.
        #[allow(clippy::type_complexity)]
        pub fn checkpoint_at(
            &self,
            node: NodeId,
            until: Timestamp,
        ) -> Result<Option<((Timestamp, MachineId, u64), NodeRecord)>> {
            let t = match self.tx()?.open_table(CHECKPOINTS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(ix_err(&self.path, e)),
            };
            let range = t
                .range((node.0, i64::MIN, 0, 0)..=(node.0, until.0, u64::MAX, u64::MAX))
                .map_err(|e| ix_err(&self.path, e))?;
            let Some(item) = range.rev().next() else { return Ok(None) };
            let (k, v) = item.map_err(|e| ix_err(&self.path, e))?;
            let (_, time, machine, seq) = k.value();
            let record = decode_node(&self.path, node, v.value())?;
            Ok(Some(((Timestamp(time), MachineId(machine), seq), record)))
        }

        /// Log positions of `node`'s events after the one with merge-order
        /// key `after` (all when `None`) up to and including `until`.
        pub fn history_after(
            &self,
            node: NodeId,
            after: Option<(Timestamp, MachineId, u64)>,
            until: Timestamp,
        ) -> Result<Vec<LogPos>> {
            self.flush_buffered(Buffered::History)?;
            self.with_history(|t| {
                let lo = after.map_or((node.0, i64::MIN, 0, 0), |(t, m, s)| (node.0, t.0, m.0, s));
                let mut out = Vec::new();
                let range = t.range(lo..=(node.0, until.0, u64::MAX, u64::MAX)).map_err(|e| ix_err(&self.path, e))?;
                for item in range {
                    let (k, v) = item.map_err(|e| ix_err(&self.path, e))?;
                    if Some(k.value()) == after.map(|(t, m, s)| (node.0, t.0, m.0, s)) {
                        continue;
                    }
                    let (segment, offset) = v.value();
                    out.push(LogPos { machine: MachineId(k.value().2), segment, offset });
                }
                Ok(out)
            })
        }

        /// The node named `name` in `dir` as of `at`.
        pub fn lookup_at(&self, dir: NodeId, name: &[u8], at: Timestamp) -> Result<Option<(NodeId, NodeKind)>> {
            self.flush_buffered(Buffered::DirentHistory)?;
            let t = self.tx()?.open_table(DIRENT_HISTORY).map_err(|e| ix_err(&self.path, e))?;
            let range = t
                .range((dir.0, name, i64::MIN, 0, 0)..=(dir.0, name, at.0, u64::MAX, u64::MAX))
                .map_err(|e| ix_err(&self.path, e))?;
            let found = match range.last() {
                Some(item) => item
                    .map_err(|e| ix_err(&self.path, e))?
                    .1
                    .value()
                    .and_then(|(c, k)| kind_from_code(k).map(|k| (NodeId(c), k))),
                None => None,
            };
            Ok(found)
        }

        /// Entries of `dir` as of `at`, by name.
        pub fn read_dir_at(&self, dir: NodeId, at: Timestamp) -> Result<Vec<DirEntry>> {
            self.flush_buffered(Buffered::DirentHistory)?;
            let t = self.tx()?.open_table(DIRENT_HISTORY).map_err(|e| ix_err(&self.path, e))?;
            let lo: (NodeKey, &[u8], i64, u64, u64) = (dir.0, &[], i64::MIN, 0, 0);
            let mut latest: BTreeMap<Vec<u8>, Option<(NodeKey, u8)>> = BTreeMap::new();
            for item in t.range(lo..).map_err(|e| ix_err(&self.path, e))? {
                let (k, v) = item.map_err(|e| ix_err(&self.path, e))?;
                let (d, name, time, _, _) = k.value();
                if d != dir.0 {
                    break;
                }
                if time <= at.0 {
                    latest.insert(name.to_vec(), v.value());
                }
            }
            Ok(latest
                .into_iter()
                .filter_map(|(name, v)| {
                    let (c, k) = v?;
                    Some(DirEntry { name, node: NodeId(c), kind: kind_from_code(k)? })
                })
                .collect())
        }

        /// Stored blocks of `node` with index in `first..first+count` as of `at`.
        pub fn blocks_at(&self, node: NodeId, first: u64, count: u64, at: Timestamp) -> Result<Vec<(u64, BlockRef)>> {
            let t = self.tx()?.open_table(BLOCK_HISTORY).map_err(|e| ix_err(&self.path, e))?;
            let end = first.saturating_add(count);
            let mut latest: BTreeMap<u64, Option<BlockRef>> = BTreeMap::new();
            let range = t
                .range((node.0, first, i64::MIN, 0, 0)..(node.0, end, i64::MIN, 0, 0))
                .map_err(|e| ix_err(&self.path, e))?;
            for item in range {
                let (k, v) = item.map_err(|e| ix_err(&self.path, e))?;
                let (_, index, time, _, _) = k.value();
                if time <= at.0 {
                    latest.insert(index, decode_ref(&self.path, v.value())?);
                }
            }
            Ok(latest.into_iter().filter_map(|(i, b)| b.map(|b| (i, b))).collect())
        }

        /// Where content version `v` was applied (see `merge`).
        pub fn version(&self, v: EventId) -> Result<Option<VersionLoc>> {
            self.flush_buffered(Buffered::Versions)?;
            let t = self.tx()?.open_table(VERSIONS).map_err(|e| ix_err(&self.path, e))?;
            let found = t.get((v.machine.0, v.seq)).map_err(|e| ix_err(&self.path, e))?.map(|x| {
                let (node, time, size) = x.value();
                VersionLoc { node: NodeId(node), key: (Timestamp(time), v.machine, v.seq), size }
            });
            Ok(found)
        }

        /// The stored blocks of `node` right after the event with merge
        /// key `key` ([`merge::LATEST`]: now).
        pub fn blocks_after(&self, node: NodeId, key: OrderKey) -> Result<BTreeMap<u64, BlockRef>> {
            if key == merge::LATEST {
                return Ok(self.blocks(node, 0, u64::MAX)?.into_iter().collect());
            }
            let t = self.tx()?.open_table(BLOCK_HISTORY).map_err(|e| ix_err(&self.path, e))?;
            let mut out = BTreeMap::new();
            let range = t
                .range((node.0, 0, i64::MIN, 0, 0)..=(node.0, u64::MAX, i64::MAX, u64::MAX, u64::MAX))
                .map_err(|e| ix_err(&self.path, e))?;
            for item in range {
                let (k, v) = item.map_err(|e| ix_err(&self.path, e))?;
                let (_, index, time, m, seq) = k.value();
                if (Timestamp(time), MachineId(m), seq) <= key {
                    match decode_ref(&self.path, v.value())? {
                        Some(b) => out.insert(index, b),
                        None => out.remove(&index),
                    };
                }
            }
            Ok(out)
        }

        /// Where event `seq` of machine `m` is.
        pub fn event_location(&self, m: MachineId, seq: u64) -> Result<Option<EventLocation>> {
            self.flush_buffered(Buffered::Events)?;
            let t = self.tx()?.open_table(EVENTS).map_err(|e| ix_err(&self.path, e))?;
            let found = t.get((m.0, seq)).map_err(|e| ix_err(&self.path, e))?.map(|v| {
                let (segment, offset, time, node) = v.value();
                EventLocation { pos: LogPos { machine: m, segment, offset }, time: Timestamp(time), node: NodeId(node) }
            });
            Ok(found)
        }
    };
}

fn counter_key(m: MachineId) -> String {
    format!("max_counter/{m}")
}

/// A read snapshot of the index. The tables every event reads are opened
/// on first use and then held (opening a table costs more than a lookup).
pub struct IndexReader {
    txn: ReadTransaction,
    path: PathBuf,
    nodes: OnceCell<ReadOnlyTable<NodeKey, &'static [u8]>>,
    dirents: OnceCell<ReadOnlyTable<DirentKey, (NodeKey, u8)>>,
    history: OnceCell<ReadOnlyTable<HistoryKey, (u64, u64)>>,
    /// `None`: the index has no `meta` table.
    meta: OnceCell<Option<ReadOnlyTable<&'static str, u64>>>,
}

impl IndexReader {
    queries!();

    /// Readers buffer nothing (see [`IndexWriter::flush_buffered`]).
    fn flush_buffered(&self, _: Buffered) -> Result<()> {
        Ok(())
    }

    fn tx(&self) -> Result<&ReadTransaction> {
        Ok(&self.txn)
    }

    fn new(txn: ReadTransaction, path: PathBuf) -> IndexReader {
        IndexReader {
            txn,
            path,
            nodes: OnceCell::new(),
            dirents: OnceCell::new(),
            history: OnceCell::new(),
            meta: OnceCell::new(),
        }
    }

    /// Runs `f` on the table of `def`, opened once and held in `cell`.
    fn with_held<K: redb::Key + 'static, V: redb::Value + 'static, R>(
        &self,
        cell: &OnceCell<ReadOnlyTable<K, V>>,
        def: TableDefinition<K, V>,
        f: impl FnOnce(&ReadOnlyTable<K, V>) -> Result<R>,
    ) -> Result<R> {
        if let Some(t) = cell.get() {
            return f(t);
        }
        let t = self.txn.open_table(def).map_err(|e| ix_err(&self.path, e))?;
        f(cell.get_or_init(|| t))
    }

    fn with_nodes<R>(&self, f: impl FnOnce(&ReadOnlyTable<NodeKey, &'static [u8]>) -> Result<R>) -> Result<R> {
        self.with_held(&self.nodes, NODES, f)
    }

    fn with_dirents<R>(&self, f: impl FnOnce(&ReadOnlyTable<DirentKey, (NodeKey, u8)>) -> Result<R>) -> Result<R> {
        self.with_held(&self.dirents, DIRENTS, f)
    }

    fn with_history<R>(&self, f: impl FnOnce(&ReadOnlyTable<HistoryKey, (u64, u64)>) -> Result<R>) -> Result<R> {
        self.with_held(&self.history, HISTORY, f)
    }

    /// `meta`, or `R::default()` if the index has no such table.
    fn with_meta<R: Default>(&self, f: impl FnOnce(&ReadOnlyTable<&'static str, u64>) -> Result<R>) -> Result<R> {
        if self.meta.get().is_none() {
            let t = match self.txn.open_table(META) {
                Ok(t) => Some(t),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(ix_err(&self.path, e)),
            };
            let _ = self.meta.set(t);
        }
        match self.meta.get() {
            Some(Some(t)) => f(t),
            _ => Ok(R::default()),
        }
    }

    /// A counter from `meta` (0 if unset).
    pub fn meta(&self, key: &str) -> Result<u64> {
        self.stored_meta(key)
    }

    /// The current state of a node (removed nodes included; the root
    /// exists before any event).
    pub fn node(&self, id: NodeId) -> Result<Option<NodeRecord>> {
        self.stored_node(id)
    }

    /// The node named `name` in `dir` now.
    pub fn lookup(&self, dir: NodeId, name: &[u8]) -> Result<Option<(NodeId, NodeKind)>> {
        self.stored_lookup(dir, name)
    }
}

/// What a live read goes through: a committed snapshot, or the writer of
/// the pending group while it holds changes not yet committed (the engine
/// commits its changes in groups; a read must still see every change made
/// before it).
// Built on the stack for one read and dropped: boxing the large variant
// would cost an allocation per read for nothing.
#[allow(clippy::large_enum_variant)]
pub enum IndexView<'a> {
    /// A committed snapshot.
    Snapshot(IndexReader),
    /// The writer of the pending group (its caches, then its snapshot or
    /// its transaction).
    Pending(&'a IndexWriter),
}

/// Gives [`IndexView`] the queries of readers and writers.
macro_rules! view_queries {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        impl IndexView<'_> {
            $(
                #[doc = concat!("As [`IndexReader::", stringify!($name), "`].")]
                pub fn $name(&self, $($arg: $ty),*) -> Result<$ret> {
                    match self {
                        IndexView::Snapshot(r) => r.$name($($arg),*),
                        IndexView::Pending(w) => w.$name($($arg),*),
                    }
                }
            )*
        }
    };
}

view_queries! {
    node(id: NodeId) -> Option<NodeRecord>;
    lookup(dir: NodeId, name: &[u8]) -> Option<(NodeId, NodeKind)>;
    read_dir(dir: NodeId, after: Option<&[u8]>, limit: usize) -> Vec<DirEntry>;
    blocks(node: NodeId, first: u64, count: u64) -> Vec<(u64, BlockRef)>;
    next_block(node: NodeId, from: u64) -> Option<u64>;
    blocks_limited(node: NodeId, first: u64, count: u64, limit: usize) -> Vec<(u64, BlockRef)>;
    counts() -> Counts;
    version(v: EventId) -> Option<VersionLoc>;
    blocks_after(node: NodeId, key: OrderKey) -> BTreeMap<u64, BlockRef>;
}

/// A write transaction on the index. Dropping it without [`commit`] discards it.
///
/// [`commit`]: IndexWriter::commit
pub struct IndexWriter {
    /// The transaction and its [`Hot`] tables, begun when first needed
    /// (see [`IndexWriter::held`]).
    txn: OnceCell<HeldTxn>,
    /// Set if clearing the index failed halfway: every later call fails.
    lost: Cell<bool>,
    db: Arc<Database>,
    /// The group committing in the background that this writer's caches
    /// are ahead of: the transaction begins only after it, and not at all
    /// if it failed.
    after: Option<Arc<Background>>,
    /// With `after`: the index's commit count once that group committed;
    /// any other count means another commit came between, and the caches
    /// may be stale.
    after_commits: u64,
    commits: Arc<std::sync::atomic::AtomicU64>,
    /// Until the transaction begins: a snapshot for what the caches miss.
    snapshot: OnceCell<IndexReader>,
    /// Whether the caches hold every key written in this transaction (and
    /// in a group before it still committing): they do until a cache is
    /// emptied, and only then may a snapshot answer for them.
    covering: Cell<bool>,
    /// Whether the caches go to `carry_to` at commit (a group committed in
    /// the background gave them to the next writer at once).
    carries: bool,
    path: PathBuf,
    /// Counters changed in this transaction, written to `meta` at commit:
    /// every event changes several, and a table update each would cost
    /// more than the rest of applying it.
    meta_changed: HashMap<String, u64>,
    /// Node states read or written in this transaction: applying one event
    /// reads a node several times, and decoding costs more than a lookup.
    /// Written states reach `nodes` at commit (a directory's state changes
    /// with every entry made in it: one write per transaction, not per
    /// entry); every read of `nodes` in the transaction goes through here.
    nodes: RefCell<HashMap<NodeId, Option<NodeRecord>>>,
    /// The nodes written in this transaction and not yet in the `nodes`
    /// table; every one is in `nodes` (emptied only after they are written).
    dirty_nodes: RefCell<std::collections::HashSet<NodeId, foldhash::fast::RandomState>>,
    /// For nodes seen in this transaction: events in their history since
    /// their last checkpoint, and whether they have one (what
    /// `needs_checkpoint` would count).
    since_checkpoint: HashMap<NodeId, (usize, bool)>,
    /// Directory entries read or written in this transaction; holds
    /// every entry in `buffer.dirents`.
    entries: RefCell<HashMap<(NodeId, Vec<u8>), Entry>>,
    /// Where `nodes`, `since_checkpoint` and `entries` go when the commit
    /// succeeds, for the next writer (see [`Carried`]); they started from
    /// there, so they hold the committed index as well as this transaction.
    carry_to: Arc<Mutex<Option<Carried>>>,
    /// Writes not yet in their tables (see [`WriteBuffer`]).
    buffer: RefCell<WriteBuffer>,
    /// Set when writing the buffer out failed: some buffered writes may be
    /// lost, so this transaction must never commit (the engine then redoes
    /// the work from the log). A query that wrote the buffer out may have
    /// failed where its caller treats errors as harmless reads.
    flush_failed: Cell<bool>,
}

/// The tables every event reads, held open for the life of a writer's
/// transaction: opening a redb table costs some 7,000 instructions, more
/// than the read itself. redb refuses to open a table twice, so the writer
/// reaches these four only through here.
struct Hot<'t> {
    nodes: Table<'t, NodeKey, &'static [u8]>,
    dirents: Table<'t, DirentKey, (NodeKey, u8)>,
    history: Table<'t, HistoryKey, (u64, u64)>,
    meta: Table<'t, &'static str, u64>,
}

/// [`Hot`] behind a `RefCell`: reads and the buffer's write-out both come
/// through `&IndexWriter`.
type HotCell<'t> = RefCell<Hot<'t>>;

self_cell::self_cell!(
    /// A write transaction with its [`Hot`] tables open.
    struct HeldTxn {
        owner: WriteTransaction,
        #[not_covariant]
        dependent: HotCell,
    }
);

impl HeldTxn {
    fn open(txn: WriteTransaction) -> std::result::Result<HeldTxn, redb::TableError> {
        HeldTxn::try_new(txn, |t| {
            Ok(RefCell::new(Hot {
                nodes: t.open_table(NODES)?,
                dirents: t.open_table(DIRENTS)?,
                history: t.open_table(HISTORY)?,
                meta: t.open_table(META)?,
            }))
        })
    }
}

/// The tables an [`IndexWriter`] buffers writes for.
#[derive(Clone, Copy, Debug)]
enum Buffered {
    History,
    Versions,
    Events,
    Applied,
    Dirents,
    DirentHistory,
}

/// Writes to `history`, `events`, `applied`, `dirents` and
/// `dirent_history`, in key order, until commit or until the transaction
/// queries that table. A value of `None` in `dirents` removes the entry.
/// Every node with buffered `history` has a `since_checkpoint` count, and
/// every buffered `dirents` key is in the `entries` cache: those two
/// caches are what the transaction reads instead of the tables, so they
/// are emptied only after the buffer is written.
#[derive(Default)]
struct WriteBuffer {
    history: BTreeMap<HistoryKey, (u64, u64)>,
    versions: BTreeMap<(u64, u64), (NodeKey, i64, u64)>,
    events: BTreeMap<(u64, u64), (u64, u64, i64, NodeKey)>,
    applied: BTreeMap<u64, (u64, u64, u64)>,
    dirents: BTreeMap<(NodeKey, Vec<u8>), StoredEntry>,
    dirent_history: BTreeMap<(NodeKey, Vec<u8>, i64, u64, u64), StoredEntry>,
}

/// A `dirents` or `dirent_history` value: (child, kind code), or `None`
/// for no entry.
type StoredEntry = Option<(NodeKey, u8)>;

impl WriteBuffer {
    fn len(&self) -> usize {
        self.history.len()
            + self.versions.len()
            + self.events.len()
            + self.applied.len()
            + self.dirents.len()
            + self.dirent_history.len()
    }
}

/// What a directory entry names, if anything.
type Entry = Option<(NodeId, NodeKind)>;

/// Most entries of the writer's caches and of its write buffer; a long
/// replay empties them when full. Small in unit tests, so that they empty
/// the caches and write the buffer out many times within one transaction.
const WRITER_CACHE_MAX: usize = if cfg!(test) { 64 } else { 1 << 16 };

/// Most entries of the writer's buffer (five or so per event).
const WRITE_BUFFER_MAX: usize = 4 * WRITER_CACHE_MAX;

impl IndexWriter {
    queries!();

    /// The current state of a node (removed nodes included; the root
    /// exists before any event), as changed in this transaction.
    pub fn node(&self, id: NodeId) -> Result<Option<NodeRecord>> {
        if let Some(n) = self.nodes.borrow().get(&id) {
            return Ok(n.clone());
        }
        let n = match self.detached()? {
            Some(r) => r.node(id)?,
            None => self.stored_node(id)?,
        };
        if self.nodes.borrow().len() >= WRITER_CACHE_MAX {
            self.before_emptying_a_cache()?;
            self.flush_nodes()?;
            self.nodes.borrow_mut().clear();
        }
        self.nodes.borrow_mut().insert(id, n.clone());
        Ok(n)
    }

    /// Writes the node states changed in this transaction to `nodes`.
    fn flush_nodes(&self) -> Result<()> {
        let mut dirty = self.dirty_nodes.borrow_mut();
        if dirty.is_empty() {
            return Ok(());
        }
        // In key order: neighbouring inserts land on the same B-tree pages.
        let mut ids: Vec<NodeId> = dirty.drain().collect();
        ids.sort_unstable();
        let nodes = self.nodes.borrow();
        let written = self.hot_mut(|h| {
            for id in ids {
                if let Some(Some(record)) = nodes.get(&id) {
                    h.nodes.insert(id.0, encode_node(record).as_slice()).map_err(|e| ix_err(&self.path, e))?;
                }
            }
            Ok(())
        });
        if written.is_err() {
            // The dirty set is gone: this transaction must not commit.
            self.flush_failed.set(true);
        }
        written
    }

    /// The node named `name` in `dir`, as changed in this transaction.
    pub fn lookup(&self, dir: NodeId, name: &[u8]) -> Result<Option<(NodeId, NodeKind)>> {
        let key = (dir, name.to_vec());
        if let Some(e) = self.entries.borrow().get(&key) {
            return Ok(*e);
        }
        let e = match self.detached()? {
            Some(r) => r.lookup(dir, name)?,
            None => self.stored_lookup(dir, name)?,
        };
        if self.entries.borrow().len() >= WRITER_CACHE_MAX {
            self.before_emptying_a_cache()?;
            self.flush_buffered(Buffered::Dirents)?;
            self.entries.borrow_mut().clear();
        }
        let mut entries = self.entries.borrow_mut();
        entries.insert(key, e);
        Ok(e)
    }

    /// A counter from `meta` (0 if unset), as changed in this transaction.
    pub fn meta(&self, key: &str) -> Result<u64> {
        if let Some(v) = self.meta_changed.get(key) {
            return Ok(*v);
        }
        match self.detached()? {
            Some(r) => r.meta(key),
            None => self.stored_meta(key),
        }
    }

    /// The snapshot to read what the caches miss, while the transaction
    /// has not begun (`None` once it has).
    fn detached(&self) -> Result<Option<&IndexReader>> {
        if self.txn.get().is_some() || self.lost.get() {
            return Ok(None);
        }
        if let Some(r) = self.snapshot.get() {
            return Ok(Some(r));
        }
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        Ok(Some(self.snapshot.get_or_init(|| IndexReader::new(txn, self.path.clone()))))
    }

    /// Begins the transaction (a snapshot no longer answers for keys the
    /// caches drop) and notes that the caches no longer hold every key
    /// written.
    fn before_emptying_a_cache(&self) -> Result<()> {
        self.held()?;
        self.covering.set(false);
        Ok(())
    }

    /// Whether this writer's caches are ahead of a group committed in the
    /// background (dropping it would drop what shows that group's changes).
    pub fn follows_background_commit(&self) -> bool {
        self.after.is_some()
    }

    /// Whether [`Index::commit_in_background`] may take this writer: its
    /// transaction has not failed, and its caches hold every key it wrote.
    pub fn can_commit_in_background(&self) -> bool {
        self.covering.get() && !self.lost.get() && !self.flush_failed.get()
    }

    fn err(&self, e: impl Into<redb::Error>) -> Error {
        ix_err(&self.path, e)
    }

    /// Empties every table and stamps the current layout version, inside
    /// this transaction (readers keep seeing the old index until commit).
    pub fn clear_all(&mut self) -> Result<()> {
        self.held()?;
        self.meta_changed.clear();
        self.nodes.get_mut().clear();
        self.dirty_nodes.get_mut().clear();
        self.since_checkpoint.clear();
        self.entries.get_mut().clear();
        *self.buffer.get_mut() = WriteBuffer::default();
        self.covering.set(false);
        // redb deletes only closed tables: the hot ones are closed, and
        // opened again on the fresh tables.
        self.lost.set(true);
        let held = self.txn.take().ok_or_else(|| self.lost())?;
        let txn = held.into_owner();
        reset_tables(&txn).map_err(|e| self.err(e))?;
        let held = HeldTxn::open(txn).map_err(|e| self.err(e))?;
        self.txn = OnceCell::from(held);
        self.lost.set(false);
        self.set_meta(META_VERSION, INDEX_VERSION)
    }

    fn lost(&self) -> Error {
        Error::Index { path: self.path.clone(), reason: "the write transaction was lost by a failed clear".into() }
    }

    /// The transaction, begun if it has not been: after the group this
    /// writer follows has committed, refused if that group failed.
    fn held(&self) -> Result<&HeldTxn> {
        if let Some(h) = self.txn.get() {
            return Ok(h);
        }
        if self.lost.get() {
            return Err(self.lost());
        }
        if let Some(after) = &self.after {
            let reason = match after.wait() {
                Err(why) => Some(format!("the group before this one failed to commit: {why}")),
                Ok(()) if self.commits.load(std::sync::atomic::Ordering::SeqCst) != self.after_commits => {
                    Some("another commit came between the group before this one and this writer".to_string())
                }
                Ok(()) => None,
            };
            if let Some(reason) = reason {
                self.flush_failed.set(true);
                return Err(Error::Index { path: self.path.clone(), reason });
            }
        }
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        let held = HeldTxn::open(txn).map_err(|e| self.err(e))?;
        Ok(self.txn.get_or_init(|| held))
    }

    /// The transaction, for the tables that are not [`Hot`].
    fn tx(&self) -> Result<&WriteTransaction> {
        Ok(self.held()?.borrow_owner())
    }

    /// Runs `f` on the [`Hot`] tables. `f` must not reach them again.
    fn hot<R>(&self, f: impl FnOnce(&Hot<'_>) -> Result<R>) -> Result<R> {
        self.held()?.with_dependent(|_, h| match h.try_borrow() {
            Ok(h) => f(&h),
            Err(_) => Err(Error::Invalid("index tables reached while being written".into())),
        })
    }

    /// Runs `f` on the [`Hot`] tables, to write. `f` must not reach them again.
    fn hot_mut<R>(&self, f: impl FnOnce(&mut Hot<'_>) -> Result<R>) -> Result<R> {
        self.held()?.with_dependent(|_, h| match h.try_borrow_mut() {
            Ok(mut h) => f(&mut h),
            Err(_) => Err(Error::Invalid("index tables reached while being read".into())),
        })
    }

    fn with_nodes<R>(&self, f: impl FnOnce(&Table<'_, NodeKey, &'static [u8]>) -> Result<R>) -> Result<R> {
        self.hot(|h| f(&h.nodes))
    }

    fn with_dirents<R>(&self, f: impl FnOnce(&Table<'_, DirentKey, (NodeKey, u8)>) -> Result<R>) -> Result<R> {
        self.hot(|h| f(&h.dirents))
    }

    fn with_history<R>(&self, f: impl FnOnce(&Table<'_, HistoryKey, (u64, u64)>) -> Result<R>) -> Result<R> {
        self.hot(|h| f(&h.history))
    }

    fn with_meta<R: Default>(&self, f: impl FnOnce(&Table<'_, &'static str, u64>) -> Result<R>) -> Result<R> {
        self.hot(|h| f(&h.meta))
    }

    /// Writes what is buffered for `table` to it (see [`WriteBuffer`]).
    fn flush_buffered(&self, table: Buffered) -> Result<()> {
        let out = self.write_out(table);
        if out.is_err() {
            self.flush_failed.set(true);
        }
        out
    }

    fn write_out(&self, table: Buffered) -> Result<()> {
        let mut b = self.buffer.borrow_mut();
        let err = |e: redb::StorageError| ix_err(&self.path, e);
        match table {
            Buffered::History if !b.history.is_empty() => self.hot_mut(|h| {
                for (k, v) in std::mem::take(&mut b.history) {
                    h.history.insert(k, v).map_err(err)?;
                }
                Ok(())
            })?,
            Buffered::Versions if !b.versions.is_empty() => {
                let mut t = self.tx()?.open_table(VERSIONS).map_err(|e| self.err(e))?;
                for (k, v) in std::mem::take(&mut b.versions) {
                    t.insert(k, v).map_err(err)?;
                }
            }
            Buffered::Events if !b.events.is_empty() => {
                let mut t = self.tx()?.open_table(EVENTS).map_err(|e| self.err(e))?;
                for (k, v) in std::mem::take(&mut b.events) {
                    t.insert(k, v).map_err(err)?;
                }
            }
            Buffered::Applied if !b.applied.is_empty() => {
                let mut t = self.tx()?.open_table(APPLIED).map_err(|e| self.err(e))?;
                for (k, v) in std::mem::take(&mut b.applied) {
                    t.insert(k, v).map_err(err)?;
                }
            }
            Buffered::Dirents if !b.dirents.is_empty() => self.hot_mut(|h| {
                for ((dir, name), v) in std::mem::take(&mut b.dirents) {
                    match v {
                        Some(v) => h.dirents.insert((dir, name.as_slice()), v).map_err(err)?,
                        None => h.dirents.remove((dir, name.as_slice())).map_err(err)?,
                    };
                }
                Ok(())
            })?,
            Buffered::DirentHistory if !b.dirent_history.is_empty() => {
                let mut t = self.tx()?.open_table(DIRENT_HISTORY).map_err(|e| self.err(e))?;
                for ((dir, name, time, m, seq), v) in std::mem::take(&mut b.dirent_history) {
                    t.insert((dir, name.as_slice(), time, m, seq), v).map_err(err)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Writes every buffered table.
    fn flush_all_buffered(&self) -> Result<()> {
        use Buffered::*;
        for table in [History, Versions, Events, Applied, Dirents, DirentHistory] {
            self.flush_buffered(table)?;
        }
        Ok(())
    }

    fn set_meta(&mut self, key: &str, value: u64) -> Result<()> {
        match self.meta_changed.get_mut(key) {
            Some(v) => *v = value,
            None => {
                self.meta_changed.insert(key.to_owned(), value);
            }
        }
        Ok(())
    }

    fn flush_meta(&mut self) -> Result<()> {
        if self.meta_changed.is_empty() {
            return Ok(());
        }
        let changed = std::mem::take(&mut self.meta_changed);
        self.hot_mut(|h| {
            for (key, value) in changed {
                h.meta.insert(key.as_str(), value).map_err(|e| ix_err(&self.path, e))?;
            }
            Ok(())
        })
    }

    fn add_meta(&mut self, key: &str, delta: i128) -> Result<()> {
        let v = i128::from(self.meta(key)?) + delta;
        self.set_meta(key, u64::try_from(v.max(0)).unwrap_or(u64::MAX))
    }

    /// Applies one event found at `pos`. Events must come in merge order
    /// (`merge::order_key`): the caller sorts them, and replays everything
    /// when an event arrives that sorts before the frontier.
    pub fn apply(&mut self, pos: LogPos, event: &Event, block_size: u64) -> Result<()> {
        let (m, seq, time) = (event.machine.0, event.seq, event.time.0);
        if self.buffer.get_mut().len() >= WRITE_BUFFER_MAX {
            self.flush_all_buffered()?;
        }
        for n in in_history_of(event) {
            // Counted from the table before the event is buffered (the
            // count's invariant, see `WriteBuffer`), then the event.
            self.since_checkpoint(n)?.0 += 1;
            self.buffer.get_mut().history.insert((n.0, time, m, seq), (pos.segment, pos.offset));
        }
        let b = self.buffer.get_mut();
        b.events.insert((m, seq), (pos.segment, pos.offset, time, event.node.0));
        b.applied.insert(m, (pos.segment, pos.offset, seq));
        self.add_meta(META_EVENTS, 1)?;
        if event.time > self.max_event_time()? {
            self.set_meta(META_MAX_TIME, event.time.0 as u64)?;
        }
        let key = merge::order_key(event);
        if Some(key) > self.frontier()? {
            self.set_meta(META_FRONTIER_TIME, key.0 .0 as u64)?;
            self.set_meta(META_FRONTIER_MACHINE, key.1 .0)?;
            self.set_meta(META_FRONTIER_SEQ, key.2)?;
        }
        if event.node.machine() == event.machine
            && !event.node.is_conflict_copy()
            && event.node.counter() > self.max_counter(event.machine)?
        {
            self.set_meta(&counter_key(event.machine), event.node.counter())?;
        }
        merge::step(self, event, block_size)
    }

    fn update_counts(&mut self, prev: Option<&NodeRecord>, next: &NodeRecord) -> Result<()> {
        let weight = |n: Option<&NodeRecord>| -> [i128; 4] {
            match n {
                Some(n) if !n.removed => [
                    1,
                    i128::from(n.kind == NodeKind::File),
                    i128::from(n.kind == NodeKind::Dir),
                    if n.kind == NodeKind::File { i128::from(n.size) } else { 0 },
                ],
                _ => [0; 4],
            }
        };
        let (before, after) = (weight(prev), weight(Some(next)));
        for (key, (a, b)) in [META_NODES, META_FILES, META_DIRS, META_BYTES].iter().zip(after.iter().zip(before)) {
            if *a != b {
                self.add_meta(key, a - b)?;
            }
        }
        Ok(())
    }

    /// Whether `node` has [`CHECKPOINT_EVERY`] events in its history since
    /// its last checkpoint: counted once per transaction (a bounded scan),
    /// then kept up to date as events and checkpoints are added.
    fn needs_checkpoint(&mut self, node: NodeId) -> Result<bool> {
        let (since, has) = *self.since_checkpoint(node)?;
        Ok(since >= CHECKPOINT_EVERY + usize::from(has))
    }

    /// `node`'s entry in `since_checkpoint`, counted from the tables if
    /// this transaction has not seen it yet.
    fn since_checkpoint(&mut self, node: NodeId) -> Result<&mut (usize, bool)> {
        if !self.since_checkpoint.contains_key(&node) {
            let v = match self.detached()? {
                Some(r) => r.count_since_checkpoint(node)?,
                None => self.count_since_checkpoint(node)?,
            };
            if self.since_checkpoint.len() >= WRITER_CACHE_MAX {
                self.before_emptying_a_cache()?;
                // Buffered history is counted only here.
                self.flush_buffered(Buffered::History)?;
                self.since_checkpoint.clear();
            }
            self.since_checkpoint.insert(node, v);
        }
        Ok(self.since_checkpoint.entry(node).or_default())
    }

    /// Commits; `durable` makes it survive a crash (slow: one fsync).
    pub fn commit(mut self, durable: bool) -> Result<()> {
        self.flush_all_buffered()?;
        if self.flush_failed.get() {
            return Err(Error::Index {
                path: self.path.clone(),
                reason: "writing buffered index changes failed earlier in this transaction".into(),
            });
        }
        self.flush_nodes()?;
        self.flush_meta()?;
        self.held()?;
        let mut txn = self.txn.take().ok_or_else(|| self.lost())?.into_owner();
        let d = if durable { Durability::Immediate } else { Durability::None };
        txn.set_durability(d).map_err(|e| Error::Index { path: self.path.clone(), reason: e.to_string() })?;
        txn.commit().map_err(|e| ix_err(&self.path, e))?;
        self.commits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if !self.carries {
            return Ok(());
        }
        // Every buffered write and dirty node is in the committed tables now.
        *lock_carried(&self.carry_to) = Some(Carried {
            nodes: self.nodes.take(),
            since_checkpoint: std::mem::take(&mut self.since_checkpoint),
            entries: self.entries.take(),
        });
        Ok(())
    }
}

/// The nodes whose history holds `e`: its node, and for an exchange the
/// other node too.
fn in_history_of(e: &Event) -> impl Iterator<Item = NodeId> {
    let other = match &e.change {
        crate::event::Change::Exchange { with } if *with != e.node => Some(*with),
        _ => None,
    };
    std::iter::once(e.node).chain(other)
}

/// `conflicts` values: parent u128 LE, winner u128 LE, wanted length u16
/// LE and bytes, given length u16 LE and bytes, then for a concurrent
/// change the other machines, u64 LE each, to the end; for a content
/// conflict the kept version's machine u64 LE, seq u64 LE and time i64 LE.
/// The kind is the last element of the key (0 name, 1 concurrent change,
/// 2 content).
fn encode_conflict(c: &Conflict) -> Vec<u8> {
    let mut v = Vec::with_capacity(40 + c.wanted.len() + c.given.len());
    v.extend_from_slice(&c.parent.0.to_le_bytes());
    v.extend_from_slice(&c.winner.0.to_le_bytes());
    for name in [&c.wanted, &c.given] {
        let n = name.len().min(usize::from(u16::MAX));
        v.extend_from_slice(&(n as u16).to_le_bytes());
        v.extend_from_slice(&name[..n]);
    }
    match &c.kind {
        ConflictKind::Concurrent { others } => {
            for m in others {
                v.extend_from_slice(&m.0.to_le_bytes());
            }
        }
        ConflictKind::Content { kept, kept_time } => {
            v.extend_from_slice(&kept.machine.0.to_le_bytes());
            v.extend_from_slice(&kept.seq.to_le_bytes());
            v.extend_from_slice(&kept_time.0.to_le_bytes());
        }
        ConflictKind::Name => {}
    }
    v
}

fn conflict_kind_code(k: &ConflictKind) -> u8 {
    match k {
        ConflictKind::Name => 0,
        ConflictKind::Concurrent { .. } => 1,
        ConflictKind::Content { .. } => 2,
    }
}

fn decode_conflict(
    v: &[u8],
    kind: u8,
    time: Timestamp,
    event: (MachineId, u64),
    node: NodeId,
) -> Result<Conflict, String> {
    let short = "conflict record too short";
    let u128_at = |i: usize| -> Result<u128, String> {
        let b: [u8; 16] = v.get(i..i + 16).and_then(|b| b.try_into().ok()).ok_or(short)?;
        Ok(u128::from_le_bytes(b))
    };
    let (parent, winner) = (u128_at(0)?, u128_at(16)?);
    let mut at = 32;
    let mut name = || -> Result<Vec<u8>, String> {
        let len: [u8; 2] = v.get(at..at + 2).and_then(|b| b.try_into().ok()).ok_or(short)?;
        let end = at + 2 + usize::from(u16::from_le_bytes(len));
        let out = v.get(at + 2..end).ok_or("conflict record: name runs past the end")?.to_vec();
        at = end;
        Ok(out)
    };
    let (wanted, given) = (name()?, name()?);
    let kind = match kind {
        0 => ConflictKind::Name,
        1 => {
            let rest = &v[at..];
            if !rest.len().is_multiple_of(8) {
                return Err("conflict record: machine list is not whole u64s".into());
            }
            let others =
                rest.chunks_exact(8).map(|c| MachineId(u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))).collect();
            ConflictKind::Concurrent { others }
        }
        2 => {
            let word = |i: usize| -> Result<[u8; 8], String> {
                v.get(at + 8 * i..at + 8 * (i + 1))
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| "content conflict record too short".to_string())
            };
            let kept = EventId { machine: MachineId(u64::from_le_bytes(word(0)?)), seq: u64::from_le_bytes(word(1)?) };
            ConflictKind::Content { kept, kept_time: Timestamp(i64::from_le_bytes(word(2)?)) }
        }
        k => return Err(format!("conflict record of unknown kind {k}")),
    };
    Ok(Conflict { kind, node, parent: NodeId(parent), wanted, given, winner: NodeId(winner), event, time })
}

/// The index is where the live tree is merged: the same rules as the
/// in-memory reference model, written to redb with their history.
impl TreeStore for IndexWriter {
    type Error = Error;

    fn node(&self, id: NodeId) -> Result<Option<NodeRecord>> {
        IndexWriter::node(self, id)
    }

    fn set_node(&mut self, id: NodeId, record: &NodeRecord, e: &Event) -> Result<()> {
        let prev = IndexWriter::node(self, id)?;
        self.update_counts(prev.as_ref(), record)?;
        self.nodes.get_mut().insert(id, Some(record.clone()));
        self.dirty_nodes.get_mut().insert(id);
        if self.needs_checkpoint(id)? {
            {
                let mut c = self.tx()?.open_table(CHECKPOINTS).map_err(|e| self.err(e))?;
                let bytes = encode_node(record);
                c.insert((id.0, e.time.0, e.machine.0, e.seq), bytes.as_slice()).map_err(|e| self.err(e))?;
            }
            // Counted from the checkpoint's own key on, as the scan counts.
            let own = usize::from(in_history_of(e).any(|n| n == id));
            self.since_checkpoint.insert(id, (own, true));
        }
        Ok(())
    }

    fn entry(&self, dir: NodeId, name: &[u8]) -> Result<Option<NodeId>> {
        Ok(self.lookup(dir, name)?.map(|(c, _)| c))
    }

    fn has_entries(&self, dir: NodeId) -> Result<bool> {
        IndexWriter::has_entries(self, dir)
    }

    fn set_entry(&mut self, dir: NodeId, name: &[u8], child: Option<(NodeId, NodeKind)>, e: &Event) -> Result<()> {
        let value = child.map(|(c, k)| (c.0, kind_code(k)));
        self.entries.get_mut().insert((dir, name.to_vec()), child);
        let b = self.buffer.get_mut();
        b.dirents.insert((dir.0, name.to_vec()), value);
        b.dirent_history.insert((dir.0, name.to_vec(), e.time.0, e.machine.0, e.seq), value);
        Ok(())
    }

    fn set_block(&mut self, node: NodeId, index: u64, block: Option<BlockRef>, e: &Event) -> Result<Option<BlockRef>> {
        let bytes = tree::encode_block_ref(block.as_ref());
        let old = {
            let mut t = self.tx()?.open_table(BLOCKS).map_err(|e| self.err(e))?;
            let old = if block.is_some() {
                t.insert((node.0, index), bytes.as_slice()).map_err(|e| self.err(e))?
            } else {
                t.remove((node.0, index)).map_err(|e| self.err(e))?
            };
            let old = match old {
                Some(v) => decode_ref(&self.path, v.value())?,
                None => None,
            };
            let mut h = self.tx()?.open_table(BLOCK_HISTORY).map_err(|e| self.err(e))?;
            h.insert((node.0, index, e.time.0, e.machine.0, e.seq), bytes.as_slice()).map_err(|e| self.err(e))?;
            old
        };
        if let Some(b) = block {
            let new = {
                let mut t = self.tx()?.open_table(BLOBS).map_err(|e| self.err(e))?;
                let seen = t.get(b.hash.as_bytes()).map_err(|e| self.err(e))?.is_some();
                if !seen {
                    t.insert(b.hash.as_bytes(), (b.len, e.time.0)).map_err(|e| self.err(e))?;
                }
                !seen
            };
            if new {
                self.add_meta(META_BLOCKS, 1)?;
                self.add_meta(META_BLOCK_BYTES, i128::from(b.len))?;
            }
        }
        Ok(old)
    }

    fn clear_blocks_from(&mut self, node: NodeId, from: u64, e: &Event) -> Result<u64> {
        let mut gone = Vec::new();
        let mut bytes = 0u64;
        {
            let mut t = self.tx()?.open_table(BLOCKS).map_err(|e| self.err(e))?;
            t.retain_in((node.0, from)..=(node.0, u64::MAX), |k, v| {
                gone.push(k.1);
                // `len` u32 LE leads every stored ref (see `encode_block_ref`).
                if let Some(len) = v.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
                    bytes += u64::from(u32::from_le_bytes(len));
                }
                false
            })
            .map_err(|e| self.err(e))?;
        }
        let mut h = self.tx()?.open_table(BLOCK_HISTORY).map_err(|e| self.err(e))?;
        for index in gone {
            h.insert((node.0, index, e.time.0, e.machine.0, e.seq), &[][..]).map_err(|e| self.err(e))?;
        }
        Ok(bytes)
    }

    fn conflict(&mut self, c: Conflict) -> Result<()> {
        tracing::info!(node = %c.node, kind = ?c.kind, "conflict resolved in {}", c.parent);
        let mut t = self.tx()?.open_table(CONFLICTS).map_err(|e| self.err(e))?;
        let key = (c.time.0, c.event.0 .0, c.event.1, c.node.0, conflict_kind_code(&c.kind));
        t.insert(key, encode_conflict(&c).as_slice()).map_err(|e| self.err(e))?;
        Ok(())
    }

    fn ignored(&mut self, e: &Event, reason: &'static str) -> Result<()> {
        tracing::warn!(node = %e.node, machine = %e.machine, seq = e.seq, "event ignored: {reason}");
        // It changed nothing: a node's state at a time is the fold of its
        // history, which must not have it (`syncer log inspect` still
        // shows it, from the log).
        for n in in_history_of(e) {
            self.take_history(n, e)?;
        }
        self.add_meta(META_IGNORED, 1)
    }

    fn version(&self, v: EventId) -> Result<Option<VersionLoc>> {
        IndexWriter::version(self, v)
    }

    fn set_version(&mut self, e: &Event, node: NodeId, size: u64) -> Result<()> {
        self.buffer.get_mut().versions.insert((e.machine.0, e.seq), (node.0, e.time.0, size));
        if node != e.node {
            self.move_history(e, node)?;
        }
        Ok(())
    }

    fn blocks_after(&self, node: NodeId, key: OrderKey) -> Result<BTreeMap<u64, BlockRef>> {
        IndexWriter::blocks_after(self, node, key)
    }

    fn copy_made(&mut self, id: NodeId, record: &NodeRecord, e: &Event) -> Result<()> {
        {
            let mut c = self.tx()?.open_table(CHECKPOINTS).map_err(|e| self.err(e))?;
            let bytes = encode_node(record);
            c.insert((id.0, e.time.0, e.machine.0, e.seq), bytes.as_slice()).map_err(|e| self.err(e))?;
        }
        // The checkpoint is at `e`, which is in the copy's history.
        *self.since_checkpoint(id)? = (1, true);
        Ok(())
    }
}

impl IndexWriter {
    /// Moves `e`'s `history` entry from the node it names to `to`, the node
    /// it was applied to.
    fn move_history(&mut self, e: &Event, to: NodeId) -> Result<()> {
        let Some(pos) = self.take_history(e.node, e)? else { return Ok(()) };
        self.since_checkpoint(to)?.0 += 1;
        self.buffer.get_mut().history.insert((to.0, e.time.0, e.machine.0, e.seq), pos);
        Ok(())
    }

    /// Removes `e`'s entry from `node`'s `history`, returning its position.
    fn take_history(&mut self, node: NodeId, e: &Event) -> Result<Option<(u64, u64)>> {
        let key = (node.0, e.time.0, e.machine.0, e.seq);
        let pos = match self.buffer.get_mut().history.remove(&key) {
            Some(pos) => Some(pos),
            None => self.hot_mut(|h| {
                let old = h.history.remove(key).map_err(|e| ix_err(&self.path, e))?;
                Ok(old.map(|v| v.value()))
            })?,
        };
        if pos.is_some() {
            let c = self.since_checkpoint(node)?;
            c.0 = c.0.saturating_sub(1);
        }
        Ok(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::VectorClock;
    use crate::event::{AttrChange, Attrs, Change};

    const M: MachineId = MachineId(7);

    /// 400 events over one directory: creates, renames, removes, and one
    /// file changed after each, for several checkpoints.
    fn events() -> Vec<(LogPos, Event)> {
        let dir = NodeId::new(1, M);
        let mut out = Vec::new();
        let mut clock = VectorClock::default();
        let mut push = |node: NodeId, change: Change| {
            clock.tick(M);
            let seq = out.len() as u64 + 1;
            let event = Event {
                node,
                machine: M,
                seq,
                time: Timestamp(1_000 * seq as i64),
                clock: clock.clone(),
                change,
                base: None,
            };
            out.push((LogPos { machine: M, segment: 0, offset: seq * 100 }, event));
        };
        let create = |parent, name: String, kind| Change::Create {
            parent,
            name: name.into_bytes(),
            kind,
            attrs: Attrs::default(),
            target: Vec::new(),
        };
        push(dir, create(NodeId::ROOT, "d".into(), NodeKind::Dir));
        for i in 2..150u64 {
            let f = NodeId::new(i, M);
            push(f, create(dir, format!("f{i}"), NodeKind::File));
            match i % 3 {
                0 => push(f, Change::Move { parent: NodeId::ROOT, name: format!("moved{i}").into_bytes() }),
                1 => push(f, Change::Remove),
                _ => {}
            }
            push(NodeId::new(2, M), Change::SetAttrs(AttrChange { mode: Some(i as u32), ..Default::default() }));
        }
        out
    }

    /// What every query that reads a buffered table answers, plus nodes,
    /// lookups, counters and checkpoints.
    /// Applies `events` through `w`.
    fn apply_all(w: &mut IndexWriter, events: &[(LogPos, Event)]) {
        for (pos, e) in events {
            w.apply(*pos, e, 4096).expect("apply");
        }
    }

    /// A new index at `path` holding `events`, committed in one transaction.
    fn committed(path: &Path, events: &[(LogPos, Event)]) -> Index {
        let (index, _) = Index::open(path).expect("open");
        let mut w = index.write().expect("write");
        apply_all(&mut w, events);
        w.commit(false).expect("commit");
        index
    }

    macro_rules! answers {
        ($ix:expr, $events:expr) => {{
            let ix = $ix;
            let mut out: Vec<String> = Vec::new();
            let dir = NodeId::new(1, M);
            let mid = Timestamp(1_000 * ($events.len() as i64 / 2));
            // Lookups first: `read_dir` writes the buffered entries out.
            for (_, e) in $events.iter() {
                if let Change::Create { parent, name, .. } | Change::Move { parent, name } = &e.change {
                    out.push(format!("{:?}", ix.lookup(*parent, name).expect("lookup")));
                    out.push(format!("{:?}", ix.lookup_at(*parent, name, mid).expect("lookup_at")));
                }
            }
            for d in [NodeId::ROOT, dir] {
                out.push(format!("{:?}", ix.read_dir(d, None, usize::MAX).expect("read_dir")));
                out.push(format!("{:?}", ix.read_dir_at(d, mid).expect("read_dir_at")));
            }
            for (_, e) in $events.iter() {
                let n = e.node;
                out.push(format!("{:?}", ix.node(n).expect("node")));
                out.push(format!("{:?}", ix.history(n, Timestamp(i64::MAX)).expect("history")));
                out.push(format!("{:?}", ix.history_after(n, None, mid).expect("history_after")));
                out.push(format!("{:?}", ix.checkpoint_at(n, Timestamp(i64::MAX)).expect("checkpoint")));
                out.push(format!("{:?}", ix.event_location(M, e.seq).expect("event_location")));
            }
            out.push(format!("{:?} {:?}", ix.applied(M).expect("applied"), ix.machines().expect("machines")));
            out.push(format!("{:?}", ix.counts().expect("counts")));
            out
        }};
    }

    /// The writer's queries see its buffered writes, and buffering changes
    /// nothing: one transaction for all events answers, before and after
    /// its commit, what a transaction per event does.
    /// The test events; an index at `dir` holding their first half,
    /// committed; and the answers of a second index holding only that half.
    fn half_committed(dir: &Path) -> (Vec<(LogPos, Event)>, Index, Vec<String>) {
        let events = events();
        let first = &events[..events.len() / 2];
        let reference = committed(&dir.join("reference.redb"), first);
        let after_first = answers!(reference.read().expect("read"), events);
        let index = committed(&dir.join("index.redb"), first);
        (events, index, after_first)
    }

    #[test]
    fn buffered_writes_answer_like_committed_ones() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let events = events();
        let (one, _) = Index::open(&tmp.path().join("one.redb")).expect("open");
        let mut w = one.write().expect("write");
        apply_all(&mut w, &events);
        let before_commit = answers!(&w, events);
        w.commit(false).expect("commit");
        let after_commit = answers!(one.read().expect("read"), events);

        let (each, _) = Index::open(&tmp.path().join("each.redb")).expect("open");
        for (pos, e) in &events {
            let mut w = each.write().expect("write");
            w.apply(*pos, e, 4096).expect("apply");
            w.commit(false).expect("commit");
        }
        let per_event = answers!(each.read().expect("read"), events);

        assert_eq!(before_commit, per_event);
        assert_eq!(after_commit, per_event);
        let checkpoints = per_event.iter().filter(|a| a.starts_with("Some(((")).count();
        assert!(checkpoints > 0, "the often-changed file has checkpoints");
    }

    /// A writer's caches go on to the next writer only when it commits: the
    /// changes of a transaction dropped halfway (as the engine drops one
    /// whose work failed) are not seen by the next one, even through caches.
    #[test]
    fn a_dropped_transaction_leaves_nothing_in_the_next_writers_caches() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (events, index, after_first) = half_committed(tmp.path());
        let rest = &events[events.len() / 2..];
        let mut w = index.write().expect("write");
        apply_all(&mut w, rest);
        assert_ne!(answers!(&w, events), after_first, "the second half changes the answers");
        drop(w);
        let mut w = index.write().expect("write");
        assert_eq!(answers!(&w, events), after_first, "the next writer sees only what was committed");
        apply_all(&mut w, rest);
        w.commit(false).expect("commit");

        let whole = committed(&tmp.path().join("whole.redb"), &events);
        assert_eq!(answers!(index.read().expect("read"), events), answers!(whole.read().expect("read"), events));
    }

    /// Applies `events` in groups of `group`, each committed in the
    /// background while the next one is applied (or inline when its caches
    /// were emptied), reading every answer through each new writer while
    /// the group before it may still be committing; the answers through the
    /// last writer, and after its commit, are those of one transaction.
    #[test]
    fn groups_committed_in_the_background_answer_like_one_transaction() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let events = events();
        let whole = committed(&tmp.path().join("whole.redb"), &events);
        let want = answers!(whole.read().expect("read"), events);

        for group in [1, 7, 40] {
            let (index, _) = Index::open(&tmp.path().join(format!("bg{group}.redb"))).expect("open");
            let (alongside, _) = Index::open(&tmp.path().join(format!("one{group}.redb"))).expect("open");
            let mut one = alongside.write().expect("write");
            let mut w = index.write_detached().expect("write");
            let (mut background, mut inline) = (0, 0);
            for chunk in events.chunks(group) {
                for (pos, e) in chunk {
                    w.apply(*pos, e, 4096).expect("apply");
                    one.apply(*pos, e, 4096).expect("apply");
                }
                w = if w.can_commit_in_background() {
                    background += 1;
                    index.commit_in_background(w).expect("hand off")
                } else {
                    inline += 1;
                    w.commit(false).expect("commit");
                    index.write_detached().expect("write")
                };
                // Through the caches and the snapshot, without waiting for
                // the commit: as the one transaction answers at this point.
                for (_, e) in &events {
                    assert_eq!(w.node(e.node).expect("node"), one.node(e.node).expect("node"), "{}", e.node);
                    if let Change::Create { parent, name, .. } = &e.change {
                        assert_eq!(
                            w.lookup(*parent, name).expect("lookup"),
                            one.lookup(*parent, name).expect("lookup")
                        );
                    }
                }
            }
            assert!(background > 0 && inline > 0, "both ways taken: {background} in the background, {inline} inline");
            assert_eq!(answers!(&w, events), want, "through the last writer, groups of {group}");
            w.commit(false).expect("commit");
            assert_eq!(answers!(index.read().expect("read"), events), want, "committed, groups of {group}");
        }
    }

    /// A commit that comes between a group committed in the background and
    /// the writer after it (the engine never makes one) leaves that
    /// writer's caches possibly stale: it refuses to begin its transaction.
    #[test]
    fn a_commit_between_a_background_group_and_the_next_writer_is_caught() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let events = events();
        let (index, _) = Index::open(&tmp.path().join("index.redb")).expect("open");
        let mut w = index.write_detached().expect("write");
        apply_all(&mut w, &events[..10]);
        let mut next = index.commit_in_background(w).expect("hand off");
        index.write().expect("another writer").commit(false).expect("commit");
        for (pos, e) in &events[10..20] {
            next.apply(*pos, e, 4096).expect("apply on the caches");
        }
        let refused = next.commit(false);
        assert!(
            matches!(&refused, Err(Error::Index { reason, .. }) if reason.contains("another commit came between")),
            "{refused:?}"
        );
    }

    /// When a group committed in the background fails, the writer after it
    /// (whose caches claim that group's changes) can neither begin its
    /// transaction nor commit, and the next writer starts from the index as
    /// the last good commit left it.
    #[test]
    fn a_failed_background_commit_fails_the_writer_after_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (events, index, after_first) = half_committed(tmp.path());
        let rest = &events[events.len() / 2..];
        let mut w = index.write_detached().expect("write");
        let (doomed, after) = rest.split_at(5);
        apply_all(&mut w, doomed);
        assert!(w.can_commit_in_background());
        index.fail_next_background.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut next = index.commit_in_background(w).expect("hand off");
        for (pos, e) in &after[..5] {
            next.apply(*pos, e, 4096).expect("apply on the caches");
        }
        assert!(next.commit(false).is_err(), "a writer after a failed group must not commit");
        assert!(index.wait_in_flight().is_err());
        assert!(index.write().is_err(), "no writer until the failure is taken");
        assert!(index.write_detached().is_err(), "no writer until the failure is taken");
        assert_eq!(index.take_failure().as_deref(), Some("injected failure"));
        assert_eq!(index.take_failure(), None);
        assert_eq!(answers!(&index.write().expect("write"), events), after_first);
        assert_eq!(answers!(index.read().expect("read"), events), after_first);
    }

    /// An index of another layout version whose tables have other types
    /// (redb refuses to open those) is wiped and rebuilt, not refused.
    #[test]
    fn an_index_of_another_layout_with_other_table_types_is_rebuilt() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("index.redb");
        {
            let db = Database::create(&path).expect("create");
            let txn = db.begin_write().expect("write");
            for name in ["nodes", "dirents", "history"] {
                let def: TableDefinition<u64, u64> = TableDefinition::new(name);
                txn.open_table(def).expect("table").insert(1, 2).expect("insert");
            }
            let meta: TableDefinition<&str, u64> = TableDefinition::new("meta");
            txn.open_table(meta).expect("meta").insert(META_VERSION, INDEX_VERSION + 1).expect("insert");
            txn.commit().expect("commit");
        }
        let (index, rebuild) = Index::open(&path).expect("an old layout is rebuilt");
        assert!(rebuild);
        assert_eq!(index.read().expect("read").meta(META_VERSION).expect("version"), INDEX_VERSION);
        let mut w = index.write().expect("a writer opens the new tables");
        let (pos, e) = &events()[0];
        w.apply(*pos, e, 4096).expect("apply");
        w.commit(false).expect("commit");
        assert!(index.read().expect("read").node(e.node).expect("node").is_some());
    }
}
