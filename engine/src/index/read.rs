//! Every query of the index, written once over redb's [`ReadableTable`].
//! A read snapshot ([`IndexReader`]) and a write transaction
//! ([`IndexWriter`]) both hand out their tables through [`Tables`], as
//! `ReadOnlyTable`s and `Table`s respectively; the functions here are
//! generic over that, and the two types' methods call them.
//!
//! Always true: a query of a table that a writer buffers writes for first
//! writes that buffer out ([`Tables::flush`]), so it answers as if every
//! change of the transaction were in the table; counters are read through
//! [`Tables::meta`], which a writer answers with its changes not yet
//! written.
//!
//! [`IndexReader`]: super::IndexReader
//! [`IndexWriter`]: super::IndexWriter

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Key, ReadableTable, TableDefinition, TableHandle, Value};

use super::error::ix;
use super::schema::*;
use super::{Counts, DirEntry, EventLocation};
use crate::error::IndexError;
use crate::error::Result;
use crate::event::{BlockRef, NodeKind};
use crate::ids::{EventId, LogPos, MachineId, NodeId, Timestamp};
use crate::merge::{self, Conflict, OrderKey, VersionLoc};
use crate::tree::{self, NodeRecord};

/// The tables a writer buffers writes for (see `WriteBuffer`).
#[derive(Clone, Copy, Debug)]
pub enum Buffered {
    History,
    Versions,
    Events,
    Applied,
    Dirents,
    DirentHistory,
}

/// Where queries find their tables: a read snapshot or a write
/// transaction. `nodes`, `dirents`, `history` and `meta`, which every
/// event reads, are held open (opening a redb table costs more than a
/// lookup, and a write transaction cannot open one twice); the others are
/// opened for each query. Each `op` names what is being done, for errors.
pub trait Tables {
    /// An open table: a `ReadOnlyTable` of a snapshot, a `Table` of a
    /// write transaction.
    type Table<'t, K: Key + 'static, V: Value + 'static>: ReadableTable<K, V>;

    /// The index file, for errors.
    fn path(&self) -> &Path;

    /// Writes what is buffered for `table` to it (readers buffer nothing).
    fn flush(&self, table: Buffered) -> Result<()>;

    /// A counter as this side sees it (0 if unset): a writer answers with
    /// the changes it has not yet written.
    fn meta(&self, key: &str) -> Result<u64>;

    /// Runs `f` on `nodes`.
    fn with_nodes<R>(
        &self,
        op: &'static str,
        f: impl for<'t> FnOnce(&Self::Table<'t, NodeKey, &'static [u8]>) -> Result<R>,
    ) -> Result<R>;

    /// Runs `f` on `dirents`.
    fn with_dirents<R>(
        &self,
        op: &'static str,
        f: impl for<'t> FnOnce(&Self::Table<'t, DirentKey, (NodeKey, u8)>) -> Result<R>,
    ) -> Result<R>;

    /// Runs `f` on `history`.
    fn with_history<R>(
        &self,
        op: &'static str,
        f: impl for<'t> FnOnce(&Self::Table<'t, HistoryKey, (u64, u64)>) -> Result<R>,
    ) -> Result<R>;

    /// Runs `f` on `meta`; `R::default()` if a snapshot has no such table.
    fn with_meta<R: Default>(
        &self,
        op: &'static str,
        f: impl for<'t> FnOnce(&Self::Table<'t, &'static str, u64>) -> Result<R>,
    ) -> Result<R>;

    /// Runs `f` on table `def` (never one of the four held open); `None`
    /// if a snapshot has no such table (an index of an older layout).
    fn with_table<K: Key + 'static, V: Value + 'static, R>(
        &self,
        def: TableDefinition<K, V>,
        op: &'static str,
        f: impl for<'t> FnOnce(&Self::Table<'t, K, V>) -> Result<R>,
    ) -> Result<Option<R>>;

    /// [`Tables::with_table`], failing if there is no such table.
    fn with_existing<K: Key + 'static, V: Value + 'static, R>(
        &self,
        def: TableDefinition<K, V>,
        op: &'static str,
        f: impl for<'t> FnOnce(&Self::Table<'t, K, V>) -> Result<R>,
    ) -> Result<R> {
        self.with_table(def, op, f)?
            .ok_or_else(|| ix(self.path(), op, redb::Error::TableDoesNotExist(def.name().to_string())))
    }
}

/// A counter as stored in the `meta` table (0 if unset).
pub(super) fn stored_meta(s: &impl Tables, key: &str) -> Result<u64> {
    let op = "read `meta`";
    s.with_meta(op, |t| Ok(t.get(key).map_err(|e| ix(s.path(), op, e))?.map_or(0, |v| v.value())))
}

/// Events in `node`'s history from its last checkpoint on (that
/// checkpoint's own event included, when it is one of the node's), up to
/// `CHECKPOINT_EVERY + 1`, and whether it has a checkpoint.
pub(super) fn count_since_checkpoint(s: &impl Tables, node: NodeId) -> Result<(usize, bool)> {
    let all = (node.0, i64::MIN, 0, 0)..=(node.0, i64::MAX, u64::MAX, u64::MAX);
    let count = |from: HistoryKey| {
        let op = "count `history`";
        s.with_history(op, |h| {
            Ok(h.range(from..=*all.end()).map_err(|e| ix(s.path(), op, e))?.take(CHECKPOINT_EVERY + 1).count())
        })
    };
    let total = count(*all.start())?;
    // A checkpoint is only ever taken after that many events, so a
    // shorter history has none (most nodes: no second table to read).
    if total < CHECKPOINT_EVERY {
        return Ok((total, false));
    }
    let op = "read `checkpoints`";
    let last = s.with_table(CHECKPOINTS, op, |c| {
        let err = |e| ix(s.path(), op, e);
        match c.range(all.clone()).map_err(err)?.next_back() {
            Some(item) => Ok(Some(item.map_err(err)?.0.value())),
            None => Ok(None),
        }
    })?;
    let last = last.flatten();
    let since = count(last.unwrap_or(*all.start()))?;
    Ok((since, last.is_some()))
}

/// A node's state as stored in `nodes` (removed nodes included; the root
/// exists before any event).
pub(super) fn stored_node(s: &impl Tables, id: NodeId) -> Result<Option<NodeRecord>> {
    let op = "read `nodes`";
    s.with_nodes(op, |t| match t.get(id.0).map_err(|e| ix(s.path(), op, e))? {
        Some(v) => decode_node("nodes", id, v.value()).map(Some).map_err(|e| e.at(s.path())),
        None if id == NodeId::ROOT => Ok(Some(NodeRecord::root())),
        None => Ok(None),
    })
}

/// The node named `name` in `dir`, as stored in `dirents` (a writer asks
/// its `entries` cache, which holds every buffered entry, first).
pub(super) fn stored_lookup(s: &impl Tables, dir: NodeId, name: &[u8]) -> Result<Option<(NodeId, NodeKind)>> {
    let op = "read `dirents`";
    s.with_dirents(op, |t| {
        let v = t.get((dir.0, name)).map_err(|e| ix(s.path(), op, e))?;
        Ok(v.and_then(|v| {
            let (child, kind) = v.value();
            kind_from_code(kind).map(|k| (NodeId(child), k))
        }))
    })
}

/// Up to `limit` entries of `dir` with names after `after`, by name.
pub(super) fn read_dir(s: &impl Tables, dir: NodeId, after: Option<&[u8]>, limit: usize) -> Result<Vec<DirEntry>> {
    s.flush(Buffered::Dirents)?;
    let op = "list `dirents`";
    s.with_dirents(op, |t| {
        let err = |e| ix(s.path(), op, e);
        let start: (NodeKey, &[u8]) = (dir.0, after.unwrap_or(&[]));
        let mut out = Vec::new();
        for item in t.range(start..).map_err(err)? {
            let (k, v) = item.map_err(err)?;
            let (d, name) = k.value();
            if d != dir.0 {
                break;
            }
            if after.is_some_and(|a| a == name) {
                continue;
            }
            let (child, kind) = v.value();
            let Some(kind) = kind_from_code(kind) else {
                let what = format!("directory {dir}: entry with kind code {kind}");
                return Err(IndexError::Corrupt { table: "dirents", what }.at(s.path()));
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
pub(super) fn has_entries(s: &impl Tables, dir: NodeId) -> Result<bool> {
    Ok(!read_dir(s, dir, None, 1)?.is_empty())
}

/// A block ref stored in `table` (`None`: a hole).
fn decode_ref(s: &impl Tables, table: &'static str, bytes: &[u8]) -> Result<Option<BlockRef>> {
    tree::decode_block_ref(bytes).map_err(|what| IndexError::Corrupt { table, what }.at(s.path()))
}

/// Stored (non-hole) blocks of `node` with index in `first..first+count`.
pub(super) fn blocks(s: &impl Tables, node: NodeId, first: u64, count: u64) -> Result<Vec<(u64, BlockRef)>> {
    blocks_limited(s, node, first, count, usize::MAX)
}

/// Up to `limit` stored blocks of `node` with index in
/// `first..first+count`, in index order.
pub(super) fn blocks_limited(
    s: &impl Tables,
    node: NodeId,
    first: u64,
    count: u64,
    limit: usize,
) -> Result<Vec<(u64, BlockRef)>> {
    let op = "read `blocks`";
    s.with_existing(BLOCKS, op, |t| {
        let err = |e| ix(s.path(), op, e);
        let end = first.saturating_add(count);
        let mut out = Vec::new();
        for item in t.range((node.0, first)..(node.0, end)).map_err(err)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(err)?;
            if let Some(b) = decode_ref(s, "blocks", v.value())? {
                out.push((k.value().1, b));
            }
        }
        Ok(out)
    })
}

/// The first stored (non-hole) block of `node` with index at least
/// `from`, if any: one range query, whatever the size of the hole.
pub(super) fn next_block(s: &impl Tables, node: NodeId, from: u64) -> Result<Option<u64>> {
    let op = "read `blocks`";
    s.with_existing(BLOCKS, op, |t| {
        let err = |e| ix(s.path(), op, e);
        for item in t.range((node.0, from)..=(node.0, u64::MAX)).map_err(err)? {
            let (k, v) = item.map_err(err)?;
            if decode_ref(s, "blocks", v.value())?.is_some() {
                return Ok(Some(k.value().1));
            }
        }
        Ok(None)
    })
}

/// [`next_block`] as of `at`: a scan of the block history of `node` from
/// `from` on, which stops at the first block stored at `at` (its cost is
/// that history's, never the hole's).
pub(super) fn next_block_at(s: &impl Tables, node: NodeId, from: u64, at: Timestamp) -> Result<Option<u64>> {
    let op = "read `block_history`";
    s.with_existing(BLOCK_HISTORY, op, |t| {
        let err = |e| ix(s.path(), op, e);
        let range =
            t.range((node.0, from, i64::MIN, 0, 0)..=(node.0, u64::MAX, i64::MAX, u64::MAX, u64::MAX)).map_err(err)?;
        // The latest change at or before `at` of the index being read.
        let mut current: Option<(u64, bool)> = None;
        for item in range {
            let (k, v) = item.map_err(err)?;
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
    })
}

/// The last applied record of machine `m`: (segment, offset, seq).
pub(super) fn applied(s: &impl Tables, m: MachineId) -> Result<Option<(u64, u64, u64)>> {
    s.flush(Buffered::Applied)?;
    let op = "read `applied`";
    s.with_existing(APPLIED, op, |t| Ok(t.get(m.0).map_err(|e| ix(s.path(), op, e))?.map(|v| v.value())))
}

/// Every machine with applied events.
pub(super) fn machines(s: &impl Tables) -> Result<Vec<MachineId>> {
    s.flush(Buffered::Applied)?;
    let op = "list `applied`";
    s.with_existing(APPLIED, op, |t| {
        let err = |e| ix(s.path(), op, e);
        let mut out = Vec::new();
        for item in t.iter().map_err(err)? {
            let (k, _) = item.map_err(err)?;
            out.push(MachineId(k.value()));
        }
        Ok(out)
    })
}

/// The counters.
pub(super) fn counts(s: &impl Tables) -> Result<Counts> {
    Ok(Counts {
        nodes: s.meta(META_NODES)?,
        files: s.meta(META_FILES)?,
        dirs: s.meta(META_DIRS)?,
        logical_bytes: s.meta(META_BYTES)?,
        blocks: s.meta(META_BLOCKS)?,
        block_bytes: s.meta(META_BLOCK_BYTES)?,
        events: s.meta(META_EVENTS)?,
        ignored_events: s.meta(META_IGNORED)?,
    })
}

/// The merge-order key of the last applied event, if any.
pub(super) fn frontier(s: &impl Tables) -> Result<Option<(Timestamp, MachineId, u64)>> {
    if s.meta(META_EVENTS)? == 0 {
        return Ok(None);
    }
    Ok(Some((
        Timestamp(s.meta(META_FRONTIER_TIME)? as i64),
        MachineId(s.meta(META_FRONTIER_MACHINE)?),
        s.meta(META_FRONTIER_SEQ)?,
    )))
}

/// Every conflict resolved so far, by event (merge order), node and kind.
pub(super) fn conflicts(s: &impl Tables) -> Result<Vec<Conflict>> {
    let op = "list `conflicts`";
    s.with_existing(CONFLICTS, op, |t| {
        let err = |e| ix(s.path(), op, e);
        let mut out = Vec::new();
        for item in t.iter().map_err(err)? {
            let (k, v) = item.map_err(err)?;
            let (time, machine, seq, node, kind) = k.value();
            let c = decode_conflict(v.value(), kind, Timestamp(time), (MachineId(machine), seq), NodeId(node))
                .map_err(|what| IndexError::Corrupt { table: "conflicts", what }.at(s.path()))?;
            out.push(c);
        }
        Ok(out)
    })
}

/// The latest event time of any machine (zero before any event).
pub(super) fn max_event_time(s: &impl Tables) -> Result<Timestamp> {
    Ok(Timestamp(s.meta(META_MAX_TIME)? as i64))
}

/// The highest node counter that machine `m` has used.
pub(super) fn max_counter(s: &impl Tables, m: MachineId) -> Result<u64> {
    s.meta(&counter_key(m))
}

/// Log positions of `node`'s events up to and including `until`, in time order.
pub(super) fn history(s: &impl Tables, node: NodeId, until: Timestamp) -> Result<Vec<(LogPos, Timestamp)>> {
    s.flush(Buffered::History)?;
    let op = "read `history`";
    s.with_history(op, |t| {
        let err = |e| ix(s.path(), op, e);
        let mut out = Vec::new();
        for item in t.range((node.0, i64::MIN, 0, 0)..=(node.0, until.0, u64::MAX, u64::MAX)).map_err(err)? {
            let (k, v) = item.map_err(err)?;
            let (_, time, machine, _) = k.value();
            let (segment, offset) = v.value();
            out.push((LogPos { machine: MachineId(machine), segment, offset }, Timestamp(time)));
        }
        Ok(out)
    })
}

/// A checkpoint: its event's merge-order key and the merged record after it.
type Checkpoint = ((Timestamp, MachineId, u64), NodeRecord);

/// The latest checkpoint of `node` at or before `until`.
pub(super) fn checkpoint_at(s: &impl Tables, node: NodeId, until: Timestamp) -> Result<Option<Checkpoint>> {
    let op = "read `checkpoints`";
    let found = s.with_table(CHECKPOINTS, op, |t| {
        let err = |e| ix(s.path(), op, e);
        let mut range = t.range((node.0, i64::MIN, 0, 0)..=(node.0, until.0, u64::MAX, u64::MAX)).map_err(err)?;
        let Some(item) = range.next_back() else { return Ok(None) };
        let (k, v) = item.map_err(err)?;
        let (_, time, machine, seq) = k.value();
        let record = decode_node("checkpoints", node, v.value()).map_err(|e| e.at(s.path()))?;
        Ok(Some(((Timestamp(time), MachineId(machine), seq), record)))
    })?;
    Ok(found.flatten())
}

/// Log positions of `node`'s events after the one with merge-order key
/// `after` (all when `None`) up to and including `until`.
pub(super) fn history_after(
    s: &impl Tables,
    node: NodeId,
    after: Option<(Timestamp, MachineId, u64)>,
    until: Timestamp,
) -> Result<Vec<LogPos>> {
    s.flush(Buffered::History)?;
    let op = "read `history`";
    s.with_history(op, |t| {
        let err = |e| ix(s.path(), op, e);
        let after = after.map(|(t, m, s)| (node.0, t.0, m.0, s));
        let lo = after.unwrap_or((node.0, i64::MIN, 0, 0));
        let mut out = Vec::new();
        for item in t.range(lo..=(node.0, until.0, u64::MAX, u64::MAX)).map_err(err)? {
            let (k, v) = item.map_err(err)?;
            if Some(k.value()) == after {
                continue;
            }
            let (segment, offset) = v.value();
            out.push(LogPos { machine: MachineId(k.value().2), segment, offset });
        }
        Ok(out)
    })
}

/// The node named `name` in `dir` as of `at`.
pub(super) fn lookup_at(
    s: &impl Tables,
    dir: NodeId,
    name: &[u8],
    at: Timestamp,
) -> Result<Option<(NodeId, NodeKind)>> {
    s.flush(Buffered::DirentHistory)?;
    let op = "read `dirent_history`";
    s.with_existing(DIRENT_HISTORY, op, |t| {
        let err = |e| ix(s.path(), op, e);
        // From the end: one seek, however many versions the name has.
        let mut range =
            t.range((dir.0, name, i64::MIN, 0, 0)..=(dir.0, name, at.0, u64::MAX, u64::MAX)).map_err(err)?;
        Ok(match range.next_back() {
            Some(item) => item.map_err(err)?.1.value().and_then(|(c, k)| kind_from_code(k).map(|k| (NodeId(c), k))),
            None => None,
        })
    })
}

/// Up to `limit` entries of `dir` as of `at` with names after `after`, by
/// name: each name's latest version at or before `at`, a name whose latest
/// version is a removal (or whose first one is later) left out.
///
/// Cost: two seeks per name looked at (the next name's first key, then its
/// latest version at `at`), so O((limit + names left out) · log n), never
/// the directory's whole history, and memory for the page only.
pub(super) fn read_dir_page_at(
    s: &impl Tables,
    dir: NodeId,
    after: Option<&[u8]>,
    limit: usize,
    at: Timestamp,
) -> Result<Vec<DirEntry>> {
    use std::ops::Bound;
    s.flush(Buffered::DirentHistory)?;
    let op = "list `dirent_history`";
    s.with_existing(DIRENT_HISTORY, op, |t| {
        let err = |e| ix(s.path(), op, e);
        let mut out = Vec::new();
        let mut cur: Option<Vec<u8>> = after.map(<[u8]>::to_vec);
        while out.len() < limit {
            // The first key after every version of `cur`: the next name's.
            let lower: (Bound<DirentHistoryKey>, Bound<DirentHistoryKey>) = match &cur {
                Some(n) => (Bound::Excluded((dir.0, n.as_slice(), i64::MAX, u64::MAX, u64::MAX)), Bound::Unbounded),
                None => (Bound::Included((dir.0, &[], i64::MIN, 0, 0)), Bound::Unbounded),
            };
            let name = match t.range(lower).map_err(err)?.next() {
                Some(item) => {
                    let (k, _) = item.map_err(err)?;
                    let (d, name, _, _, _) = k.value();
                    if d != dir.0 {
                        break;
                    }
                    name.to_vec()
                }
                None => break,
            };
            let versions =
                (dir.0, name.as_slice(), i64::MIN, 0, 0)..=(dir.0, name.as_slice(), at.0, u64::MAX, u64::MAX);
            if let Some(item) = t.range(versions).map_err(err)?.next_back() {
                if let Some((child, code)) = item.map_err(err)?.1.value() {
                    let Some(kind) = kind_from_code(code) else {
                        let what = format!("directory {dir}: entry with kind code {code}");
                        return Err(IndexError::Corrupt { table: "dirent_history", what }.at(s.path()));
                    };
                    out.push(DirEntry { name: name.clone(), node: NodeId(child), kind });
                }
            }
            cur = Some(name);
        }
        Ok(out)
    })
}

/// How many directories `dir` holds as of `at`: one pass over its
/// `dirent_history` keys in order, holding one name's latest version at a
/// time (memory does not grow with the directory).
pub(super) fn subdirs_at(s: &impl Tables, dir: NodeId, at: Timestamp) -> Result<u64> {
    s.flush(Buffered::DirentHistory)?;
    let op = "count `dirent_history`";
    s.with_existing(DIRENT_HISTORY, op, |t| {
        let err = |e| ix(s.path(), op, e);
        let lo: DirentHistoryKey = (dir.0, &[], i64::MIN, 0, 0);
        let is_dir = |v: Option<(NodeKey, u8)>| v.and_then(|(_, k)| kind_from_code(k)) == Some(NodeKind::Dir);
        let mut count = 0u64;
        // The name in hand and its latest version at or before `at` so far.
        let mut current: Option<(Vec<u8>, bool)> = None;
        for item in t.range(lo..).map_err(err)? {
            let (k, v) = item.map_err(err)?;
            let (d, name, time, _, _) = k.value();
            if d != dir.0 {
                break;
            }
            if current.as_ref().is_none_or(|(n, _)| n.as_slice() != name) {
                if let Some((_, true)) = current.take() {
                    count += 1;
                }
                current = Some((name.to_vec(), false));
            }
            if time <= at.0 {
                if let Some((_, latest)) = current.as_mut() {
                    *latest = is_dir(v.value());
                }
            }
        }
        if let Some((_, true)) = current {
            count += 1;
        }
        Ok(count)
    })
}

/// Entries of `dir` as of `at`, by name.
pub(super) fn read_dir_at(s: &impl Tables, dir: NodeId, at: Timestamp) -> Result<Vec<DirEntry>> {
    s.flush(Buffered::DirentHistory)?;
    let op = "list `dirent_history`";
    s.with_existing(DIRENT_HISTORY, op, |t| {
        let err = |e| ix(s.path(), op, e);
        let lo: DirentHistoryKey = (dir.0, &[], i64::MIN, 0, 0);
        let mut latest: BTreeMap<Vec<u8>, Option<(NodeKey, u8)>> = BTreeMap::new();
        for item in t.range(lo..).map_err(err)? {
            let (k, v) = item.map_err(err)?;
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
    })
}

/// Stored blocks of `node` with index in `first..first+count` as of `at`.
pub(super) fn blocks_at(
    s: &impl Tables,
    node: NodeId,
    first: u64,
    count: u64,
    at: Timestamp,
) -> Result<Vec<(u64, BlockRef)>> {
    let op = "read `block_history`";
    s.with_existing(BLOCK_HISTORY, op, |t| {
        let err = |e| ix(s.path(), op, e);
        let end = first.saturating_add(count);
        let mut latest: BTreeMap<u64, Option<BlockRef>> = BTreeMap::new();
        for item in t.range((node.0, first, i64::MIN, 0, 0)..(node.0, end, i64::MIN, 0, 0)).map_err(err)? {
            let (k, v) = item.map_err(err)?;
            let (_, index, time, _, _) = k.value();
            if time <= at.0 {
                latest.insert(index, decode_ref(s, "block_history", v.value())?);
            }
        }
        Ok(latest.into_iter().filter_map(|(i, b)| b.map(|b| (i, b))).collect())
    })
}

/// Where content version `v` was applied (see `merge`).
pub(super) fn version(s: &impl Tables, v: EventId) -> Result<Option<VersionLoc>> {
    s.flush(Buffered::Versions)?;
    let op = "read `versions`";
    s.with_existing(VERSIONS, op, |t| {
        Ok(t.get((v.machine.0, v.seq)).map_err(|e| ix(s.path(), op, e))?.map(|x| {
            let (node, time, size) = x.value();
            VersionLoc { node: NodeId(node), key: (Timestamp(time), v.machine, v.seq), size }
        }))
    })
}

/// The stored blocks of `node` right after the event with merge key `key`
/// ([`merge::LATEST`]: now).
pub(super) fn blocks_after(s: &impl Tables, node: NodeId, key: OrderKey) -> Result<BTreeMap<u64, BlockRef>> {
    if key == merge::LATEST {
        return Ok(blocks(s, node, 0, u64::MAX)?.into_iter().collect());
    }
    let op = "read `block_history`";
    s.with_existing(BLOCK_HISTORY, op, |t| {
        let err = |e| ix(s.path(), op, e);
        let mut out = BTreeMap::new();
        let range =
            t.range((node.0, 0, i64::MIN, 0, 0)..=(node.0, u64::MAX, i64::MAX, u64::MAX, u64::MAX)).map_err(err)?;
        for item in range {
            let (k, v) = item.map_err(err)?;
            let (_, index, time, m, seq) = k.value();
            if (Timestamp(time), MachineId(m), seq) <= key {
                match decode_ref(s, "block_history", v.value())? {
                    Some(b) => out.insert(index, b),
                    None => out.remove(&index),
                };
            }
        }
        Ok(out)
    })
}

/// Where event `seq` of machine `m` is.
pub(super) fn event_location(s: &impl Tables, m: MachineId, seq: u64) -> Result<Option<EventLocation>> {
    s.flush(Buffered::Events)?;
    let op = "read `events`";
    s.with_existing(EVENTS, op, |t| {
        Ok(t.get((m.0, seq)).map_err(|e| ix(s.path(), op, e))?.map(|v| {
            let (segment, offset, time, node) = v.value();
            EventLocation { pos: LogPos { machine: m, segment, offset }, time: Timestamp(time), node: NodeId(node) }
        }))
    })
}

/// The queries of the index, written once over [`Tables`]: a read snapshot
/// ([`IndexReader`](super::IndexReader)) and a write transaction
/// ([`IndexWriter`](super::IndexWriter), which answers as if every change
/// made in it were in the tables) both have them. Each is documented at
/// its function in this module. Only the index's own two sides implement
/// [`Tables`], so no other type has these.
pub trait Queries: Tables + Sized {
    /// Up to `limit` entries of `dir` with names after `after`, by name.
    fn read_dir(&self, dir: NodeId, after: Option<&[u8]>, limit: usize) -> Result<Vec<DirEntry>> {
        read_dir(self, dir, after, limit)
    }

    /// Whether `dir` has any entry.
    fn has_entries(&self, dir: NodeId) -> Result<bool> {
        has_entries(self, dir)
    }

    /// Stored (non-hole) blocks of `node` with index in `first..first+count`.
    fn blocks(&self, node: NodeId, first: u64, count: u64) -> Result<Vec<(u64, BlockRef)>> {
        blocks(self, node, first, count)
    }

    /// The first stored block of `node` with index at least `from`, if any.
    fn next_block(&self, node: NodeId, from: u64) -> Result<Option<u64>> {
        next_block(self, node, from)
    }

    /// Up to `limit` stored blocks of `node` with index in `first..first+count`.
    fn blocks_limited(&self, node: NodeId, first: u64, count: u64, limit: usize) -> Result<Vec<(u64, BlockRef)>> {
        blocks_limited(self, node, first, count, limit)
    }

    /// [`next_block`](Self::next_block) as of `at`.
    fn next_block_at(&self, node: NodeId, from: u64, at: Timestamp) -> Result<Option<u64>> {
        next_block_at(self, node, from, at)
    }

    /// The last applied record of machine `m`: (segment, offset, seq).
    fn applied(&self, m: MachineId) -> Result<Option<(u64, u64, u64)>> {
        applied(self, m)
    }

    /// Every machine with applied events.
    fn machines(&self) -> Result<Vec<MachineId>> {
        machines(self)
    }

    /// The counters.
    fn counts(&self) -> Result<Counts> {
        counts(self)
    }

    /// The merge-order key of the last applied event, if any.
    fn frontier(&self) -> Result<Option<(Timestamp, MachineId, u64)>> {
        frontier(self)
    }

    /// Every conflict resolved so far, by event (merge order), node and kind.
    fn conflicts(&self) -> Result<Vec<Conflict>> {
        conflicts(self)
    }

    /// The latest event time of any machine (zero before any event).
    fn max_event_time(&self) -> Result<Timestamp> {
        max_event_time(self)
    }

    /// The highest node counter that machine `m` has used.
    fn max_counter(&self, m: MachineId) -> Result<u64> {
        max_counter(self, m)
    }

    /// Log positions of `node`'s events up to and including `until`, in time order.
    fn history(&self, node: NodeId, until: Timestamp) -> Result<Vec<(LogPos, Timestamp)>> {
        history(self, node, until)
    }

    /// The latest checkpoint of `node` at or before `until`: its event's
    /// merge-order key and the merged record after it.
    #[allow(clippy::type_complexity)]
    fn checkpoint_at(
        &self,
        node: NodeId,
        until: Timestamp,
    ) -> Result<Option<((Timestamp, MachineId, u64), NodeRecord)>> {
        checkpoint_at(self, node, until)
    }

    /// Log positions of `node`'s events after the one with merge-order key
    /// `after` (all when `None`) up to and including `until`.
    fn history_after(
        &self,
        node: NodeId,
        after: Option<(Timestamp, MachineId, u64)>,
        until: Timestamp,
    ) -> Result<Vec<LogPos>> {
        history_after(self, node, after, until)
    }

    /// The node named `name` in `dir` as of `at`.
    fn lookup_at(&self, dir: NodeId, name: &[u8], at: Timestamp) -> Result<Option<(NodeId, NodeKind)>> {
        lookup_at(self, dir, name, at)
    }

    /// Entries of `dir` as of `at`, by name.
    fn read_dir_at(&self, dir: NodeId, at: Timestamp) -> Result<Vec<DirEntry>> {
        read_dir_at(self, dir, at)
    }

    /// Up to `limit` entries of `dir` as of `at` with names after `after`,
    /// by name, at O((limit + names left out) · log n).
    fn read_dir_page_at(
        &self,
        dir: NodeId,
        after: Option<&[u8]>,
        limit: usize,
        at: Timestamp,
    ) -> Result<Vec<DirEntry>> {
        read_dir_page_at(self, dir, after, limit, at)
    }

    /// How many directories `dir` holds as of `at`, in memory that does
    /// not grow with the directory.
    fn subdirs_at(&self, dir: NodeId, at: Timestamp) -> Result<u64> {
        subdirs_at(self, dir, at)
    }

    /// Stored blocks of `node` with index in `first..first+count` as of `at`.
    fn blocks_at(&self, node: NodeId, first: u64, count: u64, at: Timestamp) -> Result<Vec<(u64, BlockRef)>> {
        blocks_at(self, node, first, count, at)
    }

    /// Where content version `v` was applied (see `merge`).
    fn version(&self, v: EventId) -> Result<Option<VersionLoc>> {
        version(self, v)
    }

    /// The stored blocks of `node` right after the event with merge key
    /// `key` ([`crate::merge::LATEST`]: now).
    fn blocks_after(&self, node: NodeId, key: OrderKey) -> Result<BTreeMap<u64, BlockRef>> {
        blocks_after(self, node, key)
    }

    /// Where event `seq` of machine `m` is.
    fn event_location(&self, m: MachineId, seq: u64) -> Result<Option<EventLocation>> {
        event_location(self, m, seq)
    }
}

impl<T: Tables> Queries for T {}
