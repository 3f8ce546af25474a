//! The in-memory merge: the reference model every other tree store must
//! agree with.

use std::collections::BTreeMap;

use super::{order_key, step, Conflict, OrderKey, TreeStore, VersionLoc};
use crate::event::{BlockRef, Event, NodeKind};
use crate::ids::{EventId, MachineId, NodeId, Timestamp};
use crate::tree::NodeRecord;

/// A node of the in-memory merged tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedNode {
    /// Its state (parent and name are where it is, or was when removed).
    pub record: NodeRecord,
    /// Stored blocks by index (holes absent).
    pub blocks: BTreeMap<u64, BlockRef>,
}

/// The in-memory merged tree: the reference model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Merged {
    /// Every node ever created (removed ones included), by id.
    pub nodes: BTreeMap<NodeId, MergedNode>,
    /// Live directory entries: `(dir, name) -> child`.
    pub dirents: BTreeMap<(NodeId, Vec<u8>), NodeId>,
    /// Name collisions, in the order they were resolved.
    pub conflicts: Vec<Conflict>,
    /// Events that changed nothing, with the reason.
    pub ignored: Vec<((MachineId, u64), &'static str)>,
    /// Every content version applied (see *Content versions*).
    pub versions: BTreeMap<EventId, VersionLoc>,
    /// Every block change: `(node, index, key) -> block` (`None`: a hole).
    pub block_history: BTreeMap<(NodeId, u64, OrderKey), Option<BlockRef>>,
}

impl Merged {
    /// The live node named `name` in `dir`.
    pub fn lookup(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        self.dirents.get(&(dir, name.to_vec())).copied()
    }

    /// Whether `id` is in the tree (not removed).
    pub fn is_live(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| !n.record.removed)
    }

    /// The state of `id`.
    pub fn node(&self, id: NodeId) -> Option<&MergedNode> {
        self.nodes.get(&id)
    }
}

impl TreeStore for Merged {
    type Error = std::convert::Infallible;

    fn node(&self, id: NodeId) -> Result<Option<NodeRecord>, Self::Error> {
        Ok(self.nodes.get(&id).map(|n| n.record.clone()))
    }
    fn set_node(&mut self, id: NodeId, record: &NodeRecord, _: &Event) -> Result<(), Self::Error> {
        let n = self.nodes.entry(id).or_insert_with(|| MergedNode { record: record.clone(), blocks: BTreeMap::new() });
        n.record = record.clone();
        Ok(())
    }
    fn entry(&self, dir: NodeId, name: &[u8]) -> Result<Option<NodeId>, Self::Error> {
        Ok(self.lookup(dir, name))
    }
    fn has_entries(&self, dir: NodeId) -> Result<bool, Self::Error> {
        Ok(self.dirents.range((dir, Vec::new())..).next().is_some_and(|((d, _), _)| *d == dir))
    }
    fn set_entry(
        &mut self,
        dir: NodeId,
        name: &[u8],
        child: Option<(NodeId, NodeKind)>,
        _: &Event,
    ) -> Result<(), Self::Error> {
        match child {
            Some((c, _)) => self.dirents.insert((dir, name.to_vec()), c),
            None => self.dirents.remove(&(dir, name.to_vec())),
        };
        Ok(())
    }
    fn set_block(
        &mut self,
        node: NodeId,
        index: u64,
        block: Option<BlockRef>,
        e: &Event,
    ) -> Result<Option<BlockRef>, Self::Error> {
        let Some(n) = self.nodes.get_mut(&node) else { return Ok(None) };
        let old = match block {
            Some(b) => n.blocks.insert(index, b),
            None => n.blocks.remove(&index),
        };
        self.block_history.insert((node, index, order_key(e)), block);
        Ok(old)
    }
    fn clear_blocks_from(&mut self, node: NodeId, from: u64, e: &Event) -> Result<u64, Self::Error> {
        let Some(n) = self.nodes.get_mut(&node) else { return Ok(0) };
        let gone: Vec<(u64, u32)> = n.blocks.range(from..).map(|(i, b)| (*i, b.len)).collect();
        n.blocks.retain(|&i, _| i < from);
        let mut bytes = 0;
        for (i, len) in gone {
            bytes += u64::from(len);
            self.block_history.insert((node, i, order_key(e)), None);
        }
        Ok(bytes)
    }
    fn version(&self, v: EventId) -> Result<Option<VersionLoc>, Self::Error> {
        Ok(self.versions.get(&v).copied())
    }
    fn set_version(&mut self, e: &Event, node: NodeId, size: u64) -> Result<(), Self::Error> {
        self.versions.insert(e.id(), VersionLoc { node, key: order_key(e), size });
        Ok(())
    }
    fn blocks_after(&self, node: NodeId, key: OrderKey) -> Result<BTreeMap<u64, BlockRef>, Self::Error> {
        let mut out = BTreeMap::new();
        let from = (node, 0, (Timestamp(i64::MIN), MachineId(0), 0));
        for ((n, index, k), b) in self.block_history.range(from..) {
            if *n != node {
                break;
            }
            if *k <= key {
                match b {
                    Some(b) => out.insert(*index, *b),
                    None => out.remove(index),
                };
            }
        }
        Ok(out)
    }
    fn copy_made(&mut self, _: NodeId, _: &NodeRecord, _: &Event) -> Result<(), Self::Error> {
        Ok(())
    }
    fn conflict(&mut self, c: Conflict) -> Result<(), Self::Error> {
        self.conflicts.push(c);
        Ok(())
    }
    fn ignored(&mut self, e: &Event, reason: &'static str) -> Result<(), Self::Error> {
        self.ignored.push(((e.machine, e.seq), reason));
        Ok(())
    }
}

/// Merges a set of events (any order, duplicates allowed) in memory.
pub fn merge<'a>(events: impl IntoIterator<Item = &'a Event>, block_size: u64) -> Merged {
    // One event per (machine, seq). Two different events under one name can
    // only come from damage or a hostile peer; the smaller one wins so that
    // the choice does not depend on arrival order.
    let mut unique: BTreeMap<(MachineId, u64), &Event> = BTreeMap::new();
    for e in events {
        match unique.get(&(e.machine, e.seq)) {
            Some(old) if tie_rank(old) <= tie_rank(e) => {}
            _ => {
                unique.insert((e.machine, e.seq), e);
            }
        }
    }
    let mut sorted: Vec<&Event> = unique.into_values().collect();
    sorted.sort_by_key(|e| order_key(e));
    let mut m = Merged::default();
    m.nodes.insert(NodeId::ROOT, MergedNode { record: NodeRecord::root(), blocks: BTreeMap::new() });
    for e in sorted {
        match step(&mut m, e, block_size) {
            Ok(()) => {}
            Err(never) => match never {},
        }
    }
    m
}

fn tie_rank(e: &Event) -> (Timestamp, String) {
    (e.time, format!("{e:?}"))
}
