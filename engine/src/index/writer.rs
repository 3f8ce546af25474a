//! [`IndexWriter`]: a write transaction on the index, its caches and its
//! write buffer (see the module root for what is always true of them). Its
//! queries are in `read`; what it changes is in `write`.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::{Database, Durability, Key, ReadableDatabase, Table, TableDefinition, Value, WriteTransaction};

use super::background::{lock_carried, Background, Carried};
use super::error::ix;
use super::read::{self, Buffered, Tables};
use super::schema::*;
use super::{HashMap, IndexReader};
use crate::error::IndexError;
use crate::error::{Error, Result};
use crate::event::NodeKind;
use crate::ids::NodeId;
use crate::tree::NodeRecord;

/// A write transaction on the index. Dropping it without [`commit`] discards it.
///
/// [`commit`]: IndexWriter::commit
pub struct IndexWriter {
    /// The transaction and its [`Hot`] tables, begun when first needed
    /// (see [`IndexWriter::held`]).
    pub(super) txn: OnceCell<HeldTxn>,
    /// Set if clearing the index failed halfway: every later call fails.
    pub(super) lost: Cell<bool>,
    pub(super) db: Arc<Database>,
    /// The group committing in the background that this writer's caches
    /// are ahead of: the transaction begins only after it, and not at all
    /// if it failed.
    pub(super) after: Option<Arc<Background>>,
    /// With `after`: the index's commit count once that group committed;
    /// any other count means another commit came between, and the caches
    /// may be stale.
    pub(super) after_commits: u64,
    pub(super) commits: Arc<std::sync::atomic::AtomicU64>,
    /// Until the transaction begins: a snapshot for what the caches miss.
    pub(super) snapshot: OnceCell<IndexReader>,
    /// Whether the caches hold every key written in this transaction (and
    /// in a group before it still committing): they do until a cache is
    /// emptied, and only then may a snapshot answer for them.
    pub(super) covering: Cell<bool>,
    /// Whether the caches go to `carry_to` at commit (a group committed in
    /// the background gave them to the next writer at once).
    pub(super) carries: bool,
    pub(super) path: PathBuf,
    /// Counters changed in this transaction, written to `meta` at commit:
    /// every event changes several, and a table update each would cost
    /// more than the rest of applying it.
    pub(super) meta_changed: HashMap<String, u64>,
    /// Most entries of each cache below, and a quarter of the most in the
    /// write buffer (see [`Index::set_writer_cache`](super::Index)).
    pub(super) cache_max: usize,
    /// Node states read or written in this transaction: applying one event
    /// reads a node several times, and decoding costs more than a lookup.
    /// Written states reach `nodes` at commit (a directory's state changes
    /// with every entry made in it: one write per transaction, not per
    /// entry); every read of `nodes` in the transaction goes through here.
    pub(super) nodes: RefCell<HashMap<NodeId, Option<NodeRecord>>>,
    /// The nodes written in this transaction and not yet in the `nodes`
    /// table; every one is in `nodes` (emptied only after they are written).
    pub(super) dirty_nodes: RefCell<std::collections::HashSet<NodeId, foldhash::fast::RandomState>>,
    /// For nodes seen in this transaction: events in their history since
    /// their last checkpoint, and whether they have one (what
    /// `needs_checkpoint` would count).
    pub(super) since_checkpoint: HashMap<NodeId, (usize, bool)>,
    /// Directory entries read or written in this transaction; holds
    /// every entry in `buffer.dirents`.
    pub(super) entries: RefCell<HashMap<(NodeId, Vec<u8>), Entry>>,
    /// Where `nodes`, `since_checkpoint` and `entries` go when the commit
    /// succeeds, for the next writer (see [`Carried`]); they started from
    /// there, so they hold the committed index as well as this transaction.
    pub(super) carry_to: Arc<Mutex<Option<Carried>>>,
    /// Writes not yet in their tables (see [`WriteBuffer`]).
    pub(super) buffer: RefCell<WriteBuffer>,
    /// Set when writing the buffer out failed: some buffered writes may be
    /// lost, so this transaction must never commit (the engine then redoes
    /// the work from the log). A query that wrote the buffer out may have
    /// failed where its caller treats errors as harmless reads.
    pub(super) flush_failed: Cell<bool>,
}

/// The tables every event reads, held open for the life of a writer's
/// transaction: opening a redb table costs some 7,000 instructions, more
/// than the read itself. redb refuses to open a table twice, so the writer
/// reaches these four only through here.
pub(super) struct Hot<'t> {
    pub(super) nodes: Table<'t, NodeKey, &'static [u8]>,
    pub(super) dirents: Table<'t, DirentKey, (NodeKey, u8)>,
    pub(super) history: Table<'t, HistoryKey, (u64, u64)>,
    pub(super) meta: Table<'t, &'static str, u64>,
}

/// [`Hot`] behind a `RefCell`: reads and the buffer's write-out both come
/// through `&IndexWriter`.
type HotCell<'t> = RefCell<Hot<'t>>;

self_cell::self_cell!(
    /// A write transaction with its [`Hot`] tables open.
    pub(super) struct HeldTxn {
        owner: WriteTransaction,
        #[not_covariant]
        dependent: HotCell,
    }
);

impl HeldTxn {
    pub(super) fn open(txn: WriteTransaction) -> std::result::Result<HeldTxn, redb::TableError> {
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

/// Writes to `history`, `versions`, `events`, `applied`, `dirents` and
/// `dirent_history`, in key order, until commit or until the transaction
/// queries that table. A value of `None` in `dirents` removes the entry.
/// Every node with buffered `history` has a `since_checkpoint` count, and
/// every buffered `dirents` key is in the `entries` cache: those two
/// caches are what the transaction reads instead of the tables, so they
/// are emptied only after the buffer is written.
#[derive(Default)]
pub(super) struct WriteBuffer {
    pub(super) history: BTreeMap<HistoryKey, (u64, u64)>,
    pub(super) versions: BTreeMap<(u64, u64), (NodeKey, i64, u64)>,
    pub(super) events: BTreeMap<(u64, u64), (u64, u64, i64, NodeKey)>,
    pub(super) applied: BTreeMap<u64, (u64, u64, u64)>,
    pub(super) dirents: BTreeMap<(NodeKey, Vec<u8>), StoredEntry>,
    pub(super) dirent_history: BTreeMap<(NodeKey, Vec<u8>, i64, u64, u64), StoredEntry>,
}

/// A `dirents` or `dirent_history` value: (child, kind code), or `None`
/// for no entry.
pub(super) type StoredEntry = Option<(NodeKey, u8)>;

impl WriteBuffer {
    pub(super) fn len(&self) -> usize {
        self.history.len()
            + self.versions.len()
            + self.events.len()
            + self.applied.len()
            + self.dirents.len()
            + self.dirent_history.len()
    }
}

/// What a directory entry names, if anything.
pub(super) type Entry = Option<(NodeId, NodeKind)>;

/// Most entries of a writer's caches unless its index says fewer, and a
/// quarter of the most in its write buffer (five or so entries per
/// event); a long replay empties them when full. Small in unit tests, so
/// that they empty the caches and write the buffer out many times within
/// one transaction.
pub(super) const WRITER_CACHE_MAX: usize = if cfg!(test) { 64 } else { 1 << 16 };

impl Tables for IndexWriter {
    type Table<'t, K: Key + 'static, V: Value + 'static> = Table<'t, K, V>;

    fn path(&self) -> &Path {
        &self.path
    }

    fn flush(&self, table: Buffered) -> Result<()> {
        self.flush_buffered(table)
    }

    fn meta(&self, key: &str) -> Result<u64> {
        IndexWriter::meta(self, key)
    }

    fn with_nodes<R>(
        &self,
        _: &'static str,
        f: impl for<'t> FnOnce(&Table<'t, NodeKey, &'static [u8]>) -> Result<R>,
    ) -> Result<R> {
        self.hot(|h| f(&h.nodes))
    }

    fn with_dirents<R>(
        &self,
        _: &'static str,
        f: impl for<'t> FnOnce(&Table<'t, DirentKey, (NodeKey, u8)>) -> Result<R>,
    ) -> Result<R> {
        self.hot(|h| f(&h.dirents))
    }

    fn with_history<R>(
        &self,
        _: &'static str,
        f: impl for<'t> FnOnce(&Table<'t, HistoryKey, (u64, u64)>) -> Result<R>,
    ) -> Result<R> {
        self.hot(|h| f(&h.history))
    }

    fn with_meta<R: Default>(
        &self,
        _: &'static str,
        f: impl for<'t> FnOnce(&Table<'t, &'static str, u64>) -> Result<R>,
    ) -> Result<R> {
        self.hot(|h| f(&h.meta))
    }

    fn with_table<K: Key + 'static, V: Value + 'static, R>(
        &self,
        def: TableDefinition<K, V>,
        op: &'static str,
        f: impl for<'t> FnOnce(&Table<'t, K, V>) -> Result<R>,
    ) -> Result<Option<R>> {
        let t = self.tx()?.open_table(def).map_err(|e| ix(&self.path, op, e))?;
        f(&t).map(Some)
    }
}

impl IndexWriter {
    /// The current state of a node (removed nodes included; the root
    /// exists before any event), as changed in this transaction.
    pub fn node(&self, id: NodeId) -> Result<Option<NodeRecord>> {
        if let Some(n) = self.nodes.borrow().get(&id) {
            return Ok(n.clone());
        }
        let n = match self.detached()? {
            Some(r) => r.node(id)?,
            None => read::stored_node(self, id)?,
        };
        if self.nodes.borrow().len() >= self.cache_max {
            self.before_emptying_a_cache()?;
            self.flush_nodes()?;
            self.nodes.borrow_mut().clear();
        }
        self.nodes.borrow_mut().insert(id, n.clone());
        Ok(n)
    }

    /// Writes the node states changed in this transaction to `nodes`.
    pub(super) fn flush_nodes(&self) -> Result<()> {
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
                    h.nodes.insert(id.0, encode_node(record).as_slice()).map_err(|e| self.err("write `nodes`", e))?;
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
            None => read::stored_lookup(self, dir, name)?,
        };
        if self.entries.borrow().len() >= self.cache_max {
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
            None => read::stored_meta(self, key),
        }
    }

    /// Events in `node`'s history since its last checkpoint, and whether
    /// it has one, as the tables (or the snapshot) say.
    pub(super) fn count_since_checkpoint(&self, node: NodeId) -> Result<(usize, bool)> {
        match self.detached()? {
            Some(r) => r.count_since_checkpoint(node),
            None => read::count_since_checkpoint(self, node),
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
        let txn = self.db.begin_read().map_err(|e| self.err("begin a read", e))?;
        Ok(Some(self.snapshot.get_or_init(|| IndexReader::new(txn, self.path.clone()))))
    }

    /// Begins the transaction (a snapshot no longer answers for keys the
    /// caches drop) and notes that the caches no longer hold every key
    /// written.
    pub(super) fn before_emptying_a_cache(&self) -> Result<()> {
        self.held()?;
        self.covering.set(false);
        Ok(())
    }

    /// Whether this writer's caches are ahead of a group committed in the
    /// background (dropping it would drop what shows that group's changes).
    pub fn follows_background_commit(&self) -> bool {
        self.after.is_some()
    }

    /// Whether [`Index::commit_in_background`](super::Index::commit_in_background)
    /// may take this writer: its transaction has not failed, and its caches
    /// hold every key it wrote.
    pub fn can_commit_in_background(&self) -> bool {
        self.covering.get() && !self.lost.get() && !self.flush_failed.get()
    }

    /// A failure of redb doing `op`.
    pub(super) fn err(&self, op: &'static str, e: impl Into<redb::Error>) -> Error {
        ix(&self.path, op, e)
    }

    /// This error, on this writer's index.
    pub(super) fn fail(&self, e: IndexError) -> Error {
        e.at(&self.path)
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
        let held = self.txn.take().ok_or_else(|| self.fail(IndexError::TransactionLost))?;
        let txn = held.into_owner();
        reset_tables(&txn).map_err(|e| self.err("reset the tables", e))?;
        let held = HeldTxn::open(txn).map_err(|e| self.err("open the tables", e))?;
        self.txn = OnceCell::from(held);
        self.lost.set(false);
        self.set_meta(META_VERSION, INDEX_VERSION)
    }

    /// The transaction, begun if it has not been: after the group this
    /// writer follows has committed, refused if that group failed.
    pub(super) fn held(&self) -> Result<&HeldTxn> {
        if let Some(h) = self.txn.get() {
            return Ok(h);
        }
        if self.lost.get() {
            return Err(self.fail(IndexError::TransactionLost));
        }
        if let Some(after) = &self.after {
            let refused = match after.wait() {
                Err(why) => Some(IndexError::GroupBeforeFailed { why }),
                Ok(()) if self.commits.load(std::sync::atomic::Ordering::SeqCst) != self.after_commits => {
                    Some(IndexError::CommitBetween)
                }
                Ok(()) => None,
            };
            if let Some(e) = refused {
                self.flush_failed.set(true);
                return Err(self.fail(e));
            }
        }
        let txn = self.db.begin_write().map_err(|e| self.err("begin a write", e))?;
        let held = HeldTxn::open(txn).map_err(|e| self.err("open the tables", e))?;
        Ok(self.txn.get_or_init(|| held))
    }

    /// The transaction, for the tables that are not [`Hot`].
    pub(super) fn tx(&self) -> Result<&WriteTransaction> {
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
    pub(super) fn hot_mut<R>(&self, f: impl FnOnce(&mut Hot<'_>) -> Result<R>) -> Result<R> {
        self.held()?.with_dependent(|_, h| match h.try_borrow_mut() {
            Ok(mut h) => f(&mut h),
            Err(_) => Err(Error::Invalid("index tables reached while being read".into())),
        })
    }

    /// Writes what is buffered for `table` to it (see [`WriteBuffer`]).
    pub(super) fn flush_buffered(&self, table: Buffered) -> Result<()> {
        let out = self.write_out(table);
        if out.is_err() {
            self.flush_failed.set(true);
        }
        out
    }

    fn write_out(&self, table: Buffered) -> Result<()> {
        let mut b = self.buffer.borrow_mut();
        match table {
            Buffered::History if !b.history.is_empty() => self.hot_mut(|h| {
                for (k, v) in std::mem::take(&mut b.history) {
                    h.history.insert(k, v).map_err(|e| self.err("write `history`", e))?;
                }
                Ok(())
            })?,
            Buffered::Versions if !b.versions.is_empty() => {
                let op = "write `versions`";
                let mut t = self.tx()?.open_table(VERSIONS).map_err(|e| self.err(op, e))?;
                for (k, v) in std::mem::take(&mut b.versions) {
                    t.insert(k, v).map_err(|e| self.err(op, e))?;
                }
            }
            Buffered::Events if !b.events.is_empty() => {
                let op = "write `events`";
                let mut t = self.tx()?.open_table(EVENTS).map_err(|e| self.err(op, e))?;
                for (k, v) in std::mem::take(&mut b.events) {
                    t.insert(k, v).map_err(|e| self.err(op, e))?;
                }
            }
            Buffered::Applied if !b.applied.is_empty() => {
                let op = "write `applied`";
                let mut t = self.tx()?.open_table(APPLIED).map_err(|e| self.err(op, e))?;
                for (k, v) in std::mem::take(&mut b.applied) {
                    t.insert(k, v).map_err(|e| self.err(op, e))?;
                }
            }
            Buffered::Dirents if !b.dirents.is_empty() => self.hot_mut(|h| {
                let err = |e| self.err("write `dirents`", e);
                for ((dir, name), v) in std::mem::take(&mut b.dirents) {
                    match v {
                        Some(v) => h.dirents.insert((dir, name.as_slice()), v).map_err(err)?,
                        None => h.dirents.remove((dir, name.as_slice())).map_err(err)?,
                    };
                }
                Ok(())
            })?,
            Buffered::DirentHistory if !b.dirent_history.is_empty() => {
                let op = "write `dirent_history`";
                let mut t = self.tx()?.open_table(DIRENT_HISTORY).map_err(|e| self.err(op, e))?;
                for ((dir, name, time, m, seq), v) in std::mem::take(&mut b.dirent_history) {
                    t.insert((dir, name.as_slice(), time, m, seq), v).map_err(|e| self.err(op, e))?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Writes every buffered table.
    pub(super) fn flush_all_buffered(&self) -> Result<()> {
        use Buffered::*;
        for table in [History, Versions, Events, Applied, Dirents, DirentHistory] {
            self.flush_buffered(table)?;
        }
        Ok(())
    }

    /// Sets a counter, written to `meta` at commit.
    pub(super) fn set_meta(&mut self, key: &str, value: u64) -> Result<()> {
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
                h.meta.insert(key.as_str(), value).map_err(|e| self.err("write `meta`", e))?;
            }
            Ok(())
        })
    }

    /// Commits; `durable` makes it survive a crash (slow: one fsync).
    pub fn commit(mut self, durable: bool) -> Result<()> {
        self.flush_all_buffered()?;
        if self.flush_failed.get() {
            return Err(self.fail(IndexError::FlushFailed));
        }
        self.flush_nodes()?;
        self.flush_meta()?;
        self.held()?;
        let mut txn = self.txn.take().ok_or_else(|| self.fail(IndexError::TransactionLost))?.into_owner();
        let d = if durable { Durability::Immediate } else { Durability::None };
        txn.set_durability(d).map_err(|e| self.err("set the durability", e))?;
        txn.commit().map_err(|e| self.err("commit", e))?;
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
