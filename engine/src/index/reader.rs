//! Read snapshots of the index ([`IndexReader`]) and what a live read goes
//! through ([`IndexView`]). The queries themselves are in `read`.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{Key, ReadOnlyTable, ReadTransaction, TableDefinition, Value};

use super::error::ix;
use super::read::Queries;
use super::read::{self, Buffered, Tables};
use super::schema::*;
use super::{Counts, DirEntry, IndexWriter};
use crate::error::Result;
use crate::event::{BlockRef, NodeKind};
use crate::ids::{EventId, NodeId};
use crate::merge::{OrderKey, VersionLoc};
use crate::tree::NodeRecord;

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
    pub(super) fn new(txn: ReadTransaction, path: PathBuf) -> IndexReader {
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
    fn with_held<K: Key + 'static, V: Value + 'static, R>(
        &self,
        cell: &OnceCell<ReadOnlyTable<K, V>>,
        def: TableDefinition<K, V>,
        op: &'static str,
        f: impl FnOnce(&ReadOnlyTable<K, V>) -> Result<R>,
    ) -> Result<R> {
        if let Some(t) = cell.get() {
            return f(t);
        }
        let t = self.txn.open_table(def).map_err(|e| ix(&self.path, op, e))?;
        f(cell.get_or_init(|| t))
    }
}

impl Tables for IndexReader {
    type Table<'t, K: Key + 'static, V: Value + 'static> = ReadOnlyTable<K, V>;

    fn path(&self) -> &Path {
        &self.path
    }

    fn flush(&self, _: Buffered) -> Result<()> {
        Ok(())
    }

    fn meta(&self, key: &str) -> Result<u64> {
        read::stored_meta(self, key)
    }

    fn with_nodes<R>(
        &self,
        op: &'static str,
        f: impl FnOnce(&ReadOnlyTable<NodeKey, &'static [u8]>) -> Result<R>,
    ) -> Result<R> {
        self.with_held(&self.nodes, NODES, op, f)
    }

    fn with_dirents<R>(
        &self,
        op: &'static str,
        f: impl FnOnce(&ReadOnlyTable<DirentKey, (NodeKey, u8)>) -> Result<R>,
    ) -> Result<R> {
        self.with_held(&self.dirents, DIRENTS, op, f)
    }

    fn with_history<R>(
        &self,
        op: &'static str,
        f: impl FnOnce(&ReadOnlyTable<HistoryKey, (u64, u64)>) -> Result<R>,
    ) -> Result<R> {
        self.with_held(&self.history, HISTORY, op, f)
    }

    fn with_meta<R: Default>(
        &self,
        op: &'static str,
        f: impl FnOnce(&ReadOnlyTable<&'static str, u64>) -> Result<R>,
    ) -> Result<R> {
        if self.meta.get().is_none() {
            let t = match self.txn.open_table(META) {
                Ok(t) => Some(t),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(ix(&self.path, op, e)),
            };
            let _ = self.meta.set(t);
        }
        match self.meta.get() {
            Some(Some(t)) => f(t),
            _ => Ok(R::default()),
        }
    }

    fn with_table<K: Key + 'static, V: Value + 'static, R>(
        &self,
        def: TableDefinition<K, V>,
        op: &'static str,
        f: impl FnOnce(&ReadOnlyTable<K, V>) -> Result<R>,
    ) -> Result<Option<R>> {
        match self.txn.open_table(def) {
            Ok(t) => f(&t).map(Some),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(ix(&self.path, op, e)),
        }
    }
}

/// The queries of a snapshot; each is documented at its function in `read`.
impl IndexReader {
    /// A counter from `meta` (0 if unset).
    pub fn meta(&self, key: &str) -> Result<u64> {
        read::stored_meta(self, key)
    }

    /// The current state of a node (removed nodes included; the root
    /// exists before any event).
    pub fn node(&self, id: NodeId) -> Result<Option<NodeRecord>> {
        read::stored_node(self, id)
    }

    /// The node named `name` in `dir` now.
    pub fn lookup(&self, dir: NodeId, name: &[u8]) -> Result<Option<(NodeId, NodeKind)>> {
        read::stored_lookup(self, dir, name)
    }

    /// Events in `node`'s history since its last checkpoint (see `read`).
    pub(super) fn count_since_checkpoint(&self, node: NodeId) -> Result<(usize, bool)> {
        read::count_since_checkpoint(self, node)
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

impl IndexView<'_> {
    /// As [`IndexReader::node`].
    pub fn node(&self, id: NodeId) -> Result<Option<NodeRecord>> {
        match self {
            IndexView::Snapshot(r) => r.node(id),
            IndexView::Pending(w) => w.node(id),
        }
    }

    /// As [`IndexReader::lookup`].
    pub fn lookup(&self, dir: NodeId, name: &[u8]) -> Result<Option<(NodeId, NodeKind)>> {
        match self {
            IndexView::Snapshot(r) => r.lookup(dir, name),
            IndexView::Pending(w) => w.lookup(dir, name),
        }
    }

    /// As [`IndexReader::counts`].
    pub fn counts(&self) -> Result<Counts> {
        match self {
            IndexView::Snapshot(r) => r.counts(),
            IndexView::Pending(w) => w.counts(),
        }
    }

    /// As [`IndexReader::read_dir`].
    pub fn read_dir(&self, dir: NodeId, after: Option<&[u8]>, limit: usize) -> Result<Vec<DirEntry>> {
        match self {
            IndexView::Snapshot(r) => read::read_dir(r, dir, after, limit),
            IndexView::Pending(w) => read::read_dir(*w, dir, after, limit),
        }
    }

    /// As [`IndexReader::blocks`].
    pub fn blocks(&self, node: NodeId, first: u64, count: u64) -> Result<Vec<(u64, BlockRef)>> {
        match self {
            IndexView::Snapshot(r) => read::blocks(r, node, first, count),
            IndexView::Pending(w) => read::blocks(*w, node, first, count),
        }
    }

    /// As [`IndexReader::next_block`].
    pub fn next_block(&self, node: NodeId, from: u64) -> Result<Option<u64>> {
        match self {
            IndexView::Snapshot(r) => read::next_block(r, node, from),
            IndexView::Pending(w) => read::next_block(*w, node, from),
        }
    }

    /// As [`IndexReader::blocks_limited`].
    pub fn blocks_limited(&self, node: NodeId, first: u64, count: u64, limit: usize) -> Result<Vec<(u64, BlockRef)>> {
        match self {
            IndexView::Snapshot(r) => read::blocks_limited(r, node, first, count, limit),
            IndexView::Pending(w) => read::blocks_limited(*w, node, first, count, limit),
        }
    }

    /// As [`IndexReader::version`].
    pub fn version(&self, v: EventId) -> Result<Option<VersionLoc>> {
        match self {
            IndexView::Snapshot(r) => read::version(r, v),
            IndexView::Pending(w) => read::version(*w, v),
        }
    }

    /// As [`IndexReader::blocks_after`].
    pub fn blocks_after(&self, node: NodeId, key: OrderKey) -> Result<BTreeMap<u64, BlockRef>> {
        match self {
            IndexView::Snapshot(r) => read::blocks_after(r, node, key),
            IndexView::Pending(w) => read::blocks_after(*w, node, key),
        }
    }
}
