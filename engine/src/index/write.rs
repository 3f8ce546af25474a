//! What an [`IndexWriter`] changes: applying an event (its bookkeeping
//! here, its effect on the tree through `merge`, which calls back into
//! the [`TreeStore`] below), the counters and the checkpoints.

use std::collections::BTreeMap;

use redb::ReadableTable;

use super::read::Queries;
use super::read::{self, Buffered};
use super::schema::*;
use super::IndexWriter;
use crate::error::{Error, Result};
use crate::event::{BlockRef, Event, NodeKind};
use crate::ids::{BlockHash, EventId, LogPos, NodeId};
use crate::merge::{self, Conflict, OrderKey, TreeStore, VersionLoc};
use crate::tree::{self, NodeRecord};

impl IndexWriter {
    /// Applies one event found at `pos`. Events must come in merge order
    /// (`merge::order_key`): the caller sorts them, and replays everything
    /// when an event arrives that sorts before the frontier.
    pub fn apply(&mut self, pos: LogPos, event: &Event, block_size: u64) -> Result<()> {
        let (m, seq, time) = (event.machine.0, event.seq, event.time.0);
        if self.buffer.get_mut().len() >= 4 * self.cache_max {
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

    fn add_meta(&mut self, key: &str, delta: i128) -> Result<()> {
        let v = i128::from(self.meta(key)?) + delta;
        self.set_meta(key, u64::try_from(v.max(0)).unwrap_or(u64::MAX))
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

    /// Keeps `pins` (see `schema`): a live pinned node is in it.
    fn update_pins(&mut self, id: NodeId, prev: Option<&NodeRecord>, next: &NodeRecord) -> Result<()> {
        let pinned = |n: Option<&NodeRecord>| n.is_some_and(|n| n.pinned && !n.removed);
        let now = pinned(Some(next));
        if pinned(prev) == now {
            return Ok(());
        }
        let op = "write `pins`";
        let mut t = self.tx()?.open_table(PINS).map_err(|err| self.err(op, err))?;
        if now {
            t.insert(id.0, ()).map_err(|err| self.err(op, err))?;
        } else {
            t.remove(id.0).map_err(|err| self.err(op, err))?;
        }
        Ok(())
    }

    /// Keeps `block_nodes` (see `schema`): adds each `(hash, delta)` to the
    /// count of `hash` in `node`, dropping rows that reach 0.
    fn count_block_nodes(&mut self, node: NodeId, changes: impl IntoIterator<Item = (BlockHash, i64)>) -> Result<()> {
        let mut changes = changes.into_iter().peekable();
        if changes.peek().is_none() {
            return Ok(());
        }
        let op = "write `block_nodes`";
        let mut t = self.tx()?.open_table(BLOCK_NODES).map_err(|err| self.err(op, err))?;
        for (hash, delta) in changes {
            let key = (hash.as_bytes(), node.0);
            let old = t.get(key).map_err(|err| self.err(op, err))?.map_or(0, |v| v.value());
            let new =
                if delta >= 0 { old.saturating_add(delta as u64) } else { old.saturating_sub(delta.unsigned_abs()) };
            if new == 0 {
                t.remove(key).map_err(|err| self.err(op, err))?;
            } else {
                t.insert(key, new).map_err(|err| self.err(op, err))?;
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
            let v = self.count_since_checkpoint(node)?;
            if self.since_checkpoint.len() >= self.cache_max {
                self.before_emptying_a_cache()?;
                // Buffered history is counted only here.
                self.flush_buffered(Buffered::History)?;
                self.since_checkpoint.clear();
            }
            self.since_checkpoint.insert(node, v);
        }
        Ok(self.since_checkpoint.entry(node).or_default())
    }

    /// Writes `record` as `id`'s checkpoint at `e`.
    fn put_checkpoint(&mut self, id: NodeId, record: &NodeRecord, e: &Event) -> Result<()> {
        let op = "write `checkpoints`";
        let mut c = self.tx()?.open_table(CHECKPOINTS).map_err(|err| self.err(op, err))?;
        let bytes = encode_node(record);
        c.insert((id.0, e.time.0, e.machine.0, e.seq), bytes.as_slice()).map_err(|err| self.err(op, err))?;
        Ok(())
    }

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
                let old = h.history.remove(key).map_err(|err| self.err("write `history`", err))?;
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

/// The nodes whose history holds `e`: its node, and for an exchange the
/// other node too.
fn in_history_of(e: &Event) -> impl Iterator<Item = NodeId> {
    let other = match &e.change {
        crate::event::Change::Exchange { with } if *with != e.node => Some(*with),
        _ => None,
    };
    std::iter::once(e.node).chain(other)
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
        self.update_pins(id, prev.as_ref(), record)?;
        self.nodes.get_mut().insert(id, Some(record.clone()));
        self.dirty_nodes.get_mut().insert(id);
        if self.needs_checkpoint(id)? {
            self.put_checkpoint(id, record, e)?;
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
        read::has_entries(self, dir)
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
            let op = "write `blocks`";
            let mut t = self.tx()?.open_table(BLOCKS).map_err(|err| self.err(op, err))?;
            let old = if block.is_some() {
                t.insert((node.0, index), bytes.as_slice()).map_err(|err| self.err(op, err))?
            } else {
                t.remove((node.0, index)).map_err(|err| self.err(op, err))?
            };
            let old = match old {
                Some(v) => tree::decode_block_ref(v.value())
                    .map_err(|what| self.fail(super::IndexError::Corrupt { table: "blocks", what }))?,
                None => None,
            };
            let op = "write `block_history`";
            let mut h = self.tx()?.open_table(BLOCK_HISTORY).map_err(|err| self.err(op, err))?;
            h.insert((node.0, index, e.time.0, e.machine.0, e.seq), bytes.as_slice())
                .map_err(|err| self.err(op, err))?;
            old
        };
        if old.map(|b| b.hash) != block.map(|b| b.hash) {
            let old = old.map(|b| (b.hash, -1));
            self.count_block_nodes(node, old.into_iter().chain(block.map(|b| (b.hash, 1))))?;
        }
        if let Some(b) = block {
            let new = {
                let op = "write `blobs`";
                let mut t = self.tx()?.open_table(BLOBS).map_err(|err| self.err(op, err))?;
                let seen = t.get(b.hash.as_bytes()).map_err(|err| self.err(op, err))?.is_some();
                if !seen {
                    t.insert(b.hash.as_bytes(), (b.len, e.time.0)).map_err(|err| self.err(op, err))?;
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
        let mut hashes = Vec::new();
        let mut bytes = 0u64;
        {
            let op = "write `blocks`";
            let mut t = self.tx()?.open_table(BLOCKS).map_err(|err| self.err(op, err))?;
            t.retain_in((node.0, from)..=(node.0, u64::MAX), |k, v| {
                gone.push(k.1);
                if let Ok(Some(b)) = tree::decode_block_ref(v) {
                    hashes.push((b.hash, -1));
                }
                // `len` u32 LE leads every stored ref (see `encode_block_ref`).
                if let Some(len) = v.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
                    bytes += u64::from(u32::from_le_bytes(len));
                }
                false
            })
            .map_err(|err| self.err(op, err))?;
        }
        self.count_block_nodes(node, hashes)?;
        let op = "write `block_history`";
        let mut h = self.tx()?.open_table(BLOCK_HISTORY).map_err(|err| self.err(op, err))?;
        for index in gone {
            h.insert((node.0, index, e.time.0, e.machine.0, e.seq), &[][..]).map_err(|err| self.err(op, err))?;
        }
        Ok(bytes)
    }

    fn conflict(&mut self, c: Conflict) -> Result<()> {
        tracing::info!(node = %c.node, kind = ?c.kind, "conflict resolved in {}", c.parent);
        let op = "write `conflicts`";
        let mut t = self.tx()?.open_table(CONFLICTS).map_err(|err| self.err(op, err))?;
        let key = (c.time.0, c.event.0 .0, c.event.1, c.node.0, conflict_kind_code(&c.kind));
        t.insert(key, encode_conflict(&c).as_slice()).map_err(|err| self.err(op, err))?;
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
        read::version(self, v)
    }

    fn set_version(&mut self, e: &Event, node: NodeId, size: u64) -> Result<()> {
        self.buffer.get_mut().versions.insert((e.machine.0, e.seq), (node.0, e.time.0, size));
        if node != e.node {
            self.move_history(e, node)?;
        }
        Ok(())
    }

    fn blocks_after(&self, node: NodeId, key: OrderKey) -> Result<BTreeMap<u64, BlockRef>> {
        read::blocks_after(self, node, key)
    }

    fn copy_made(&mut self, id: NodeId, record: &NodeRecord, e: &Event) -> Result<()> {
        self.put_checkpoint(id, record, e)?;
        // The checkpoint is at `e`, which is in the copy's history.
        *self.since_checkpoint(id)? = (1, true);
        Ok(())
    }
}
