//! The merge: the tree that a set of events from any number of machines
//! describes, as a function of that set alone. The rules live in [`step`],
//! written once against the small [`TreeStore`] trait: the in-memory
//! [`Merged`] (the reference model that property tests drive with random
//! replicas, delivery orders and duplicates) and the redb index both
//! implement it, so the mounted tree follows exactly the tested rules.
//!
//! How it works. Event times are a hybrid logical clock (see `event`), so
//! sorting events by `(time, machine, seq)` gives one total order that
//! extends causality. The tree is the fold of the events in that order, with
//! these rules:
//!
//! - Field by field: an attribute change sets only the fields it names, an
//!   xattr change only its key, a write only the blocks it lists. A field
//!   that only one side changed keeps that change; when both changed it
//!   concurrently, the later in the order (newer time, then higher machine
//!   id) wins. This is the three-way merge against the common ancestor of
//!   DESIGN.md, computed without finding the ancestor.
//! - Writes never shrink a file (size is the larger of the file's and the
//!   write's end); only a truncate shrinks it.
//! - Moves follow Kleppmann et al. (2021): applied in the total order, and a
//!   move that would make a node its own ancestor is skipped, so the tree
//!   never has a cycle and no subtree is orphaned.
//! - Remove vs concurrent change: the change wins. A change to a removed
//!   node that did not see the removal (its clock does not include the
//!   remove's) brings the node back, with its parents if needed; a remove of
//!   a directory that has live children (added concurrently) is skipped.
//!   Changes that did see the removal (writes through a handle opened
//!   before an unlink) apply to the unlinked node without bringing it back.
//! - Names: two live nodes that end with one name in one directory both stay
//!   visible; the one placed later in the order gets a deterministic
//!   conflict name, `stem (conflict from <machine> <date>).ext`, and the
//!   resolution is recorded as a [`Conflict`].
//!
//! Always true of the result: every live node is reachable from the root,
//! there is no cycle, names are unique per directory, and the result
//! depends only on the set of events (not their order, not duplicates).

use std::collections::BTreeMap;

use crate::clock::Causality;
use crate::event::{BlockRef, Change, Event, NodeKind};
use crate::ids::{MachineId, NodeId, Timestamp};
use crate::tree::{self, NodeRecord};

/// Deepest tree walked when looking for ancestors. Trees are acyclic (this
/// module keeps them so); the bound only guards against a damaged index.
const MAX_DEPTH: usize = 1 << 20;

/// What kind of conflict the merge resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConflictKind {
    /// Two live nodes ended with one name in one directory: `node` got
    /// `given` instead of `wanted`; `winner` kept the name.
    Name,
    /// `event` changed `node` without having seen the changes of `others`
    /// to it: merged field by field; where both sides changed one field,
    /// the later in merge order won, and the other value stays in history.
    Concurrent {
        /// Machines whose changes the event had not seen.
        others: Vec<MachineId>,
    },
}

/// A conflict and how it was resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// Which kind.
    pub kind: ConflictKind,
    /// The node concerned.
    pub node: NodeId,
    /// Its directory.
    pub parent: NodeId,
    /// The name it wanted (its name, for a concurrent change).
    pub wanted: Vec<u8>,
    /// The name it got (its name, for a concurrent change).
    pub given: Vec<u8>,
    /// The node that kept the name (the node itself, for a concurrent change).
    pub winner: NodeId,
    /// The event that placed or changed it: `(machine, seq)`.
    pub event: (MachineId, u64),
    /// That event's time.
    pub time: Timestamp,
}

/// Where the merged tree lives. Reads see every earlier write.
pub trait TreeStore {
    /// The store's error.
    type Error;
    /// A node's state (the root exists before any event).
    fn node(&self, id: NodeId) -> Result<Option<NodeRecord>, Self::Error>;
    /// Replaces a node's state.
    fn set_node(&mut self, id: NodeId, record: &NodeRecord, e: &Event) -> Result<(), Self::Error>;
    /// The live node named `name` in `dir`.
    fn entry(&self, dir: NodeId, name: &[u8]) -> Result<Option<NodeId>, Self::Error>;
    /// Whether `dir` has a live entry.
    fn has_entries(&self, dir: NodeId) -> Result<bool, Self::Error>;
    /// Sets (`Some`) or deletes (`None`) the entry `dir/name`, because of `e`.
    fn set_entry(
        &mut self,
        dir: NodeId,
        name: &[u8],
        child: Option<(NodeId, NodeKind)>,
        e: &Event,
    ) -> Result<(), Self::Error>;
    /// Block `index` of `node` now holds `block` (`None`: a hole), because of `e`.
    fn set_block(&mut self, node: NodeId, index: u64, block: Option<BlockRef>, e: &Event) -> Result<(), Self::Error>;
    /// Every block of `node` from `from` on is gone, because of `e`.
    fn clear_blocks_from(&mut self, node: NodeId, from: u64, e: &Event) -> Result<(), Self::Error>;
    /// A name collision was resolved.
    fn conflict(&mut self, c: Conflict) -> Result<(), Self::Error>;
    /// `e` changed nothing, for `reason`.
    fn ignored(&mut self, e: &Event, reason: &'static str) -> Result<(), Self::Error>;
}

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
    fn set_block(&mut self, node: NodeId, index: u64, block: Option<BlockRef>, _: &Event) -> Result<(), Self::Error> {
        if let Some(n) = self.nodes.get_mut(&node) {
            match block {
                Some(b) => n.blocks.insert(index, b),
                None => n.blocks.remove(&index),
            };
        }
        Ok(())
    }
    fn clear_blocks_from(&mut self, node: NodeId, from: u64, _: &Event) -> Result<(), Self::Error> {
        if let Some(n) = self.nodes.get_mut(&node) {
            n.blocks.retain(|&i, _| i < from);
        }
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

/// The sort key of an event in the merge order.
pub fn order_key(e: &Event) -> (Timestamp, MachineId, u64) {
    (e.time, e.machine, e.seq)
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

/// A refusal: the event changes nothing.
type Refused = &'static str;

/// Applies one event, in merge order, to `s`. An event that does not fit is
/// reported through [`TreeStore::ignored`] and changes nothing.
pub fn step<S: TreeStore>(s: &mut S, e: &Event, block_size: u64) -> Result<(), S::Error> {
    match apply_step(s, e, block_size)? {
        Ok(()) => Ok(()),
        Err(reason) => s.ignored(e, reason),
    }
}

fn node_or_root<S: TreeStore>(s: &S, id: NodeId) -> Result<Option<NodeRecord>, S::Error> {
    Ok(match s.node(id)? {
        Some(n) => Some(n),
        None if id == NodeId::ROOT => Some(NodeRecord::root()),
        None => None,
    })
}

fn apply_step<S: TreeStore>(s: &mut S, e: &Event, block_size: u64) -> Result<Result<(), Refused>, S::Error> {
    if e.node == NodeId::ROOT
        && matches!(e.change, Change::Create { .. } | Change::Move { .. } | Change::Remove | Change::Exchange { .. })
    {
        return Ok(Err("the root cannot be created, moved or removed"));
    }
    match &e.change {
        Change::Create { parent, name, .. } => {
            if s.node(e.node)?.is_some() {
                return Ok(Err("create of a node that exists"));
            }
            if *parent == e.node {
                return Ok(Err("create of a node inside itself"));
            }
            if !valid_name(name) {
                return Ok(Err("create with an invalid name"));
            }
            let mut record = tree::apply(None, e).node;
            // Not in the tree until `place` puts it there.
            record.removed = true;
            s.set_node(e.node, &record, e)?;
            let parent = usable_parent(s, *parent, e)?;
            place(s, e.node, parent, name, e)?;
        }
        Change::Move { parent, name } => {
            let Some(node) = s.node(e.node)? else { return Ok(Err("move of a node never created")) };
            if !valid_name(name) {
                return Ok(Err("move to an invalid name"));
            }
            if node.removed && !revives(&node, e) {
                return Ok(Err("move of a node removed before it"));
            }
            if !node_or_root(s, *parent)?.is_some_and(|p| p.kind == NodeKind::Dir) {
                return Ok(Err("move into a node that is not a directory"));
            }
            if is_ancestor_or_self(s, e.node, *parent)? {
                return Ok(Err("move would make a node its own ancestor"));
            }
            record_concurrent(s, e.node, &node, e)?;
            unplace(s, e.node, e)?;
            let parent = usable_parent(s, *parent, e)?;
            place(s, e.node, parent, name, e)?;
            if let Some(mut n) = s.node(e.node)? {
                n.attrs.ctime = e.time;
                s.set_node(e.node, &n, e)?;
            }
        }
        Change::Exchange { with } => {
            let (Some(a), Some(b)) = (s.node(e.node)?, s.node(*with)?) else {
                return Ok(Err("exchange with a node never created"));
            };
            if a.removed || b.removed || *with == NodeId::ROOT {
                return Ok(Err("exchange with a node not in the tree"));
            }
            if is_ancestor_or_self(s, e.node, b.parent)? || is_ancestor_or_self(s, *with, a.parent)? {
                return Ok(Err("exchange would make a node its own ancestor"));
            }
            for (id, mut n, parent, name) in
                [(e.node, a.clone(), b.parent, b.name.clone()), (*with, b, a.parent, a.name)]
            {
                s.set_entry(parent, &name, Some((id, n.kind)), e)?;
                n.parent = parent;
                n.name = name;
                n.attrs.ctime = e.time;
                n.clock = n.clock.join(&e.clock);
                s.set_node(id, &n, e)?;
                touch(s, parent, e)?;
            }
        }
        Change::Remove => {
            let Some(node) = s.node(e.node)? else { return Ok(Err("remove of a node never created")) };
            if node.removed {
                return Ok(Err("remove of a removed node"));
            }
            // Only directories hold entries (every placement goes through a
            // directory), and asking costs a table scan.
            if node.kind == NodeKind::Dir && s.has_entries(e.node)? {
                return Ok(Err("remove of a directory that gained entries concurrently"));
            }
            unplace(s, e.node, e)?;
            let fx = tree::apply(Some(&node), e);
            s.set_node(e.node, &fx.node, e)?;
        }
        _ => {
            let Some(node) = node_or_root(s, e.node)? else { return Ok(Err("change to a node never created")) };
            if node.removed && revives(&node, e) {
                revive(s, e.node, e)?;
            }
            let Some(node) = node_or_root(s, e.node)? else { return Ok(Err("change to a node never created")) };
            let fx = tree::apply(Some(&node), e);
            if fx.ignored.is_none() {
                record_concurrent(s, e.node, &node, e)?;
            }
            if let Some(reason) = fx.ignored {
                return Ok(Err(reason));
            }
            let mut record = fx.node;
            match &e.change {
                Change::Content { size, blocks } => {
                    // Writes never shrink a file; only a truncate does.
                    record.size = node.size.max(*size);
                    for b in blocks {
                        s.set_block(e.node, b.index, b.block, e)?;
                    }
                }
                Change::Truncate { size, tail } => {
                    if *size < node.size {
                        s.clear_blocks_from(e.node, tree::block_count(*size, block_size), e)?;
                    }
                    if let Some(t) = tail {
                        s.set_block(e.node, t.index, t.block, e)?;
                    }
                }
                _ => {}
            }
            s.set_node(e.node, &record, e)?;
        }
    }
    Ok(Ok(()))
}

/// Whether `name` can be a directory entry: 1..=255 bytes, no `/` or NUL,
/// not `.` or `..`. Local operations are refused such names; a peer's event
/// that carries one is ignored.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= crate::engine::NAME_MAX
        && name != b"."
        && name != b".."
        && !name.iter().any(|&b| b == b'/' || b == 0)
}

/// Records that `e` changes `id` without having seen every change to it
/// (its clock is concurrent with the node's).
fn record_concurrent<S: TreeStore>(s: &mut S, id: NodeId, node: &NodeRecord, e: &Event) -> Result<(), S::Error> {
    if node.clock.compare(&e.clock) != Causality::Concurrent {
        return Ok(());
    }
    let others = node.clock.entries().iter().filter(|(m, n)| *n > e.clock.get(*m)).map(|(m, _)| *m).collect();
    s.conflict(Conflict {
        kind: ConflictKind::Concurrent { others },
        node: id,
        parent: node.parent,
        wanted: node.name.clone(),
        given: node.name.clone(),
        winner: id,
        event: (e.machine, e.seq),
        time: e.time,
    })
}

/// Whether `e` did not see the removal of `node` (so it brings it back).
fn revives(node: &NodeRecord, e: &Event) -> bool {
    match &node.removed_by {
        Some(rc) => !matches!(rc.compare(&e.clock), Causality::Before | Causality::Equal),
        None => false,
    }
}

/// Brings a removed node back at its last place, and its parents with it.
fn revive<S: TreeStore>(s: &mut S, id: NodeId, e: &Event) -> Result<(), S::Error> {
    let mut chain = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut cur = id;
    for _ in 0..MAX_DEPTH {
        match s.node(cur)? {
            // A node met twice would be a cycle of removed nodes: stop there.
            Some(n) if cur != NodeId::ROOT && n.removed && seen.insert(cur) => {
                chain.push((cur, n.parent, n.name));
                cur = chain.last().map_or(NodeId::ROOT, |c| c.1);
            }
            _ => break,
        }
    }
    for (node, parent, name) in chain.into_iter().rev() {
        let parent = usable_parent(s, parent, e)?;
        place(s, node, parent, &name, e)?;
    }
    Ok(())
}

/// `parent` if it can hold entries (brought back if removed), else the
/// root: a node is never lost.
fn usable_parent<S: TreeStore>(s: &mut S, parent: NodeId, e: &Event) -> Result<NodeId, S::Error> {
    match node_or_root(s, parent)? {
        Some(p) if p.kind == NodeKind::Dir => {
            if p.removed {
                revive(s, parent, e)?;
            }
            Ok(parent)
        }
        _ => Ok(NodeId::ROOT),
    }
}

/// Whether `a` is `b` or one of its ancestors.
fn is_ancestor_or_self<S: TreeStore>(s: &S, a: NodeId, b: NodeId) -> Result<bool, S::Error> {
    let mut cur = b;
    for _ in 0..MAX_DEPTH {
        if cur == a {
            return Ok(true);
        }
        if cur == NodeId::ROOT {
            return Ok(false);
        }
        match s.node(cur)? {
            Some(n) => cur = n.parent,
            None => return Ok(false),
        }
    }
    // Deeper than any real tree: refuse the move rather than risk a cycle.
    Ok(true)
}

/// Takes `id` out of its directory's listing (if it is there).
fn unplace<S: TreeStore>(s: &mut S, id: NodeId, e: &Event) -> Result<(), S::Error> {
    let Some(n) = s.node(id)? else { return Ok(()) };
    if n.removed || s.entry(n.parent, &n.name)? != Some(id) {
        return Ok(());
    }
    s.set_entry(n.parent, &n.name, None, e)?;
    touch(s, n.parent, e)
}

/// Puts `id` at `parent/name`, renaming it if a different live node has it.
fn place<S: TreeStore>(s: &mut S, id: NodeId, parent: NodeId, name: &[u8], e: &Event) -> Result<(), S::Error> {
    let Some(mut n) = s.node(id)? else { return Ok(()) };
    let mut given = name.to_vec();
    if let Some(winner) = s.entry(parent, name)? {
        if winner != id {
            given = free_conflict_name(s, parent, name, e)?;
            s.conflict(Conflict {
                kind: ConflictKind::Name,
                node: id,
                parent,
                wanted: name.to_vec(),
                given: given.clone(),
                winner,
                event: (e.machine, e.seq),
                time: e.time,
            })?;
        }
    }
    s.set_entry(parent, &given, Some((id, n.kind)), e)?;
    n.parent = parent;
    n.name = given;
    n.removed = false;
    n.removed_by = None;
    n.clock = n.clock.join(&e.clock);
    s.set_node(id, &n, e)?;
    touch(s, parent, e)
}

/// A directory's mtime and ctime follow changes to its listing.
fn touch<S: TreeStore>(s: &mut S, dir: NodeId, e: &Event) -> Result<(), S::Error> {
    if let Some(mut n) = node_or_root(s, dir)? {
        if n.kind == NodeKind::Dir {
            tree::touch_dir(&mut n, e.time);
            s.set_node(dir, &n, e)?;
        }
    }
    Ok(())
}

/// `stem (conflict from <machine> <yyyy-mm-dd>).ext`, with ` 2`, ` 3`, ...
/// inside the parentheses if that is taken too.
fn free_conflict_name<S: TreeStore>(s: &S, parent: NodeId, name: &[u8], e: &Event) -> Result<Vec<u8>, S::Error> {
    let (stem, ext) = match name.iter().rposition(|&b| b == b'.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, &b""[..]),
    };
    let (y, mo, d) = civil_date(e.time);
    let mut n = 1u64;
    loop {
        let tag = if n == 1 { String::new() } else { format!(" {n}") };
        let suffix = format!(" (conflict from {} {y:04}-{mo:02}-{d:02}{tag})", e.machine);
        // Names are at most 255 bytes: keep the suffix, shorten the stem.
        let room = crate::engine::NAME_MAX.saturating_sub(suffix.len() + ext.len());
        let mut out = stem[..stem.len().min(room)].to_vec();
        out.extend_from_slice(suffix.as_bytes());
        out.extend_from_slice(ext);
        if s.entry(parent, &out)?.is_none() {
            return Ok(out);
        }
        n += 1;
    }
}

/// The UTC calendar date of a timestamp (Hinnant's days-to-civil).
pub fn civil_date(t: Timestamp) -> (i64, u32, u32) {
    let days = t.secs().div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(mo <= 2);
    (y, mo, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_date_matches_known_days() {
        assert_eq!(civil_date(Timestamp(0)), (1970, 1, 1));
        assert_eq!(civil_date(Timestamp::from_secs_nanos(1_795_600_000, 0)), (2026, 11, 25));
        assert_eq!(civil_date(Timestamp::from_secs_nanos(951_782_400, 0)), (2000, 2, 29));
        assert_eq!(civil_date(Timestamp::from_secs_nanos(-86_400, 0)), (1969, 12, 31));
    }
}
