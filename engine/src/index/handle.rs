//! [`Index`]: the index file, its handle (for writing, read-only, or closed
//! between the two), and the transactions begun on it.

use std::cell::{Cell, OnceCell, RefCell};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, WriteTransaction};

use super::background::{lock_carried, Background, Carried};
use super::error::ix;
use super::schema::{self, create_db, reset_tables, META_VERSION};
use super::writer::{HeldTxn, WriteBuffer, WRITER_CACHE_MAX};
use super::{HashMap, IndexReader, IndexWriter, INDEX_VERSION};
use crate::error::IndexError;
use crate::error::{Error, Result};
use crate::storage::Storage;

/// How long [`Index::reopen`] waits for the transactions on the old handle.
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Free bytes [`Index::reopen`] wants before it gives up a failed handle:
/// opening a file that was not closed cleanly writes to it.
const REOPEN_ROOM: u64 = 4 << 20;

/// The redb index file.
#[derive(Debug)]
pub(crate) struct Index {
    /// Replaced whole only by [`Index::reopen`] (after an I/O failure) and
    /// [`Index::reopen_read_only`].
    db: std::sync::RwLock<Db>,
    pub(super) path: PathBuf,
    /// The caches of the last writer that committed (see [`Carried`]).
    pub(super) carried: Arc<Mutex<Option<Carried>>>,
    /// The group being committed in the background, if any (see
    /// [`Index::commit_in_background`]).
    pub(super) in_flight: Mutex<Option<Arc<Background>>>,
    /// Why a group committed in the background failed, until the engine
    /// takes it ([`Index::take_failure`]) to apply that group again from
    /// the log: whoever notices the failure first, it is not lost.
    pub(super) failed: Arc<Mutex<Option<String>>>,
    /// Commits so far: a writer after a background group checks that the
    /// next commit after its hand-off was that group's (see
    /// `IndexWriter::held`).
    pub(super) commits: Arc<std::sync::atomic::AtomicU64>,
    /// Most entries of each cache of this index's writers (see
    /// [`Index::set_writer_cache`]).
    pub(super) writer_cache: std::sync::atomic::AtomicUsize,
    /// Where the file is opened through, when not by redb itself (fault
    /// injection; see [`Storage::index_database`]).
    storage: Option<Arc<dyn Storage>>,
    /// Unit tests: the next background commit fails without writing.
    #[cfg(test)]
    pub(crate) fail_next_background: std::sync::atomic::AtomicBool,
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
            writer_cache: std::sync::atomic::AtomicUsize::new(WRITER_CACHE_MAX),
            #[cfg(test)]
            fail_next_background: Default::default(),
        }
    }

    /// Opens (creating if missing) the index at `path`. Returns whether it
    /// must be rebuilt: new file, or a layout version this build does not write.
    pub(crate) fn open(path: &Path) -> Result<(Index, bool)> {
        Index::open_with(path, None)
    }

    /// [`Index::open`], through `storage` if it opens indexes itself.
    pub(crate) fn open_with(path: &Path, storage: Option<Arc<dyn Storage>>) -> Result<(Index, bool)> {
        let (db, fresh) = schema::open_file(path, storage.as_deref())?;
        let mut index = Index::on(Db::Rw(Arc::new(db)), path);
        index.storage = storage;
        let rebuild = schema::needs_rebuild(fresh, index.read()?.meta(META_VERSION)?);
        if rebuild {
            index.clear()?;
        }
        Ok((index, rebuild))
    }

    /// Empties every table and stamps the current layout version. The
    /// tables are deleted before a writer opens any: an index of another
    /// layout may hold a table under the same name with other key or value
    /// types, which redb refuses to open.
    pub(crate) fn clear(&self) -> Result<()> {
        let txn = self.begin_write()?;
        *lock_carried(&self.carried) = None;
        reset_tables(&txn).map_err(|e| ix(&self.path, "reset the tables", e))?;
        let mut w = self.writer(txn)?;
        w.set_meta(META_VERSION, INDEX_VERSION)?;
        w.commit(true)
    }

    /// Bounds each cache of this index's later writers to `entries` (at
    /// least 64; [`WRITER_CACHE_MAX`] unless set): a background catch-up,
    /// whose speed matters less than the memory it holds beside the live
    /// index's, sets a smaller one.
    pub(crate) fn set_writer_cache(&self, entries: usize) {
        self.writer_cache.store(entries.max(64), std::sync::atomic::Ordering::Relaxed);
    }

    /// Opens an existing, cleanly closed index read-only. Any number of
    /// processes may hold it so at once; none may hold it for writing then.
    pub(crate) fn open_read_only(path: &Path) -> Result<Index> {
        let db = schema::builder().open_read_only(path).map_err(|e| ix(path, "open read-only", e))?;
        Ok(Index::on(Db::Ro(db), path))
    }

    /// Closes a writable handle cleanly and reopens the file read-only.
    pub(crate) fn reopen_read_only(&mut self) -> Result<()> {
        let _ = self.wait_in_flight();
        // No writer follows: the caches it would take are dropped.
        *lock_carried(&self.carried) = None;
        let slot = self.db.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Db::Rw(db) = std::mem::replace(slot, Db::Closed) {
            let db = Arc::try_unwrap(db).map_err(|_| IndexError::InUse.at(&self.path))?;
            db.close().map_err(|e| ix(&self.path, "close", e))?;
        }
        *slot = Db::Ro(schema::builder().open_read_only(&self.path).map_err(|e| ix(&self.path, "open read-only", e))?);
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
    pub(crate) fn reopen(&self) -> Result<()> {
        let _ = self.wait_in_flight();
        *lock_carried(&self.carried) = None;
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        if matches!(&*slot, Db::Ro(_)) {
            return Err(IndexError::ReadOnly.at(&self.path));
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
                Err(e) => return Err(ix(&self.path, "reopen", e)),
            }
        }
    }

    /// Starts a write transaction, after any group still committing in the
    /// background.
    pub(crate) fn write(&self) -> Result<IndexWriter> {
        let _ = self.wait_in_flight();
        self.refuse_after_failure()?;
        self.writer(self.begin_write()?)
    }

    /// A writer whose transaction begins only when it first needs one: until
    /// then it reads what its caches miss from a snapshot, so it can take
    /// changes while the group before it commits in the background (see
    /// [`Index::commit_in_background`]).
    pub(crate) fn write_detached(&self) -> Result<IndexWriter> {
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
            Db::Ro(_) => Err(IndexError::ReadOnly.at(&self.path)),
            Db::Closed => Err(IndexError::Closed.at(&self.path)),
        }
    }

    fn begin_write(&self) -> Result<WriteTransaction> {
        self.rw()?.begin_write().map_err(|e| ix(&self.path, "begin a write", e))
    }

    fn writer(&self, txn: WriteTransaction) -> Result<IndexWriter> {
        let held = HeldTxn::open(txn).map_err(|e| ix(&self.path, "open the tables", e))?;
        let carried = lock_carried(&self.carried).take().unwrap_or_default();
        Ok(self.new_writer(self.rw()?, OnceCell::from(held), carried))
    }

    pub(super) fn new_writer(&self, db: Arc<Database>, txn: OnceCell<HeldTxn>, carried: Carried) -> IndexWriter {
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
            cache_max: self.writer_cache.load(std::sync::atomic::Ordering::Relaxed),
            nodes: RefCell::new(carried.nodes),
            since_checkpoint: carried.since_checkpoint,
            entries: RefCell::new(carried.entries),
            dirty_nodes: RefCell::default(),
            carry_to: Arc::clone(&self.carried),
            buffer: RefCell::new(WriteBuffer::default()),
            flush_failed: Cell::new(false),
        }
    }

    /// Starts a read transaction (a consistent snapshot), after any group
    /// still committing in the background.
    pub(crate) fn read(&self) -> Result<IndexReader> {
        let _ = self.wait_in_flight();
        let txn = match &*self.db.read().unwrap_or_else(|e| e.into_inner()) {
            Db::Rw(db) => db.begin_read(),
            Db::Ro(db) => db.begin_read(),
            Db::Closed => return Err(IndexError::Closed.at(&self.path)),
        };
        let txn = txn.map_err(|e| ix(&self.path, "begin a read", e))?;
        Ok(IndexReader::new(txn, self.path.clone()))
    }
}
