//! The merge: the tree that a set of events from any number of machines
//! describes, as a pure function of that set. This is the reference model
//! of convergence; property tests drive it with random replicas, delivery
//! orders and duplicates.
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

use crate::clock::{Causality, VectorClock};
use crate::event::{BlockRef, Change, Event, NodeKind};
use crate::ids::{MachineId, NodeId, Timestamp};
use crate::tree::{self, NodeRecord};

/// A node of the merged tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedNode {
    /// Its state (parent and name are where it is, or was when removed).
    pub record: NodeRecord,
    /// Stored blocks by index (holes absent).
    pub blocks: BTreeMap<u64, BlockRef>,
    /// The clock of the remove that took it out of the tree, if it is out.
    removed_by: Option<VectorClock>,
}

/// A name collision and how it was resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The node that was renamed.
    pub node: NodeId,
    /// The directory.
    pub parent: NodeId,
    /// The name it wanted.
    pub wanted: Vec<u8>,
    /// The name it got.
    pub given: Vec<u8>,
    /// The node that kept the name.
    pub winner: NodeId,
    /// The event that placed it: `(machine, seq)`.
    pub event: (MachineId, u64),
}

/// The merged tree.
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
        id == NodeId::ROOT || self.nodes.get(&id).is_some_and(|n| !n.record.removed)
    }

    /// The state of `id` (the root always exists).
    pub fn node(&self, id: NodeId) -> Option<&MergedNode> {
        self.nodes.get(&id)
    }
}

/// The sort key of an event in the merge order.
pub fn order_key(e: &Event) -> (Timestamp, MachineId, u64) {
    (e.time, e.machine, e.seq)
}

/// Merges a set of events (any order, duplicates allowed).
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
    m.nodes.insert(NodeId::ROOT, MergedNode { record: NodeRecord::root(), blocks: BTreeMap::new(), removed_by: None });
    for e in sorted {
        if let Err(reason) = step(&mut m, e, block_size) {
            m.ignored.push(((e.machine, e.seq), reason));
        }
    }
    m
}

fn tie_rank(e: &Event) -> (Timestamp, String) {
    (e.time, format!("{e:?}"))
}

/// Applies one event in merge order.
fn step(m: &mut Merged, e: &Event, block_size: u64) -> Result<(), &'static str> {
    if e.node == NodeId::ROOT && matches!(e.change, Change::Create { .. } | Change::Move { .. } | Change::Remove) {
        return Err("the root cannot be created, moved or removed");
    }
    match &e.change {
        Change::Create { parent, name, kind, attrs, target } => {
            if m.nodes.contains_key(&e.node) {
                return Err("create of a node that exists");
            }
            let size = if *kind == NodeKind::Symlink { target.len() as u64 } else { 0 };
            let record = NodeRecord {
                kind: *kind,
                parent: *parent,
                name: name.clone(),
                attrs: *attrs,
                size,
                target: target.clone(),
                xattrs: Vec::new(),
                pinned: false,
                // Not in the tree until `place` puts it there.
                removed: true,
                clock: e.clock.clone(),
                volname: Vec::new(),
            };
            m.nodes.insert(e.node, MergedNode { record, blocks: BTreeMap::new(), removed_by: None });
            let parent = usable_parent(m, *parent, e);
            place(m, e.node, parent, name, e);
            Ok(())
        }
        Change::Move { parent, name } => {
            let node = m.nodes.get(&e.node).ok_or("move of a node never created")?;
            if node.record.removed && !revives(node, e) {
                return Err("move of a node removed before it");
            }
            if !m.nodes.get(parent).is_some_and(|p| p.record.kind == NodeKind::Dir) {
                return Err("move into a node that is not a directory");
            }
            if is_ancestor_or_self(m, e.node, *parent) {
                return Err("move would make a node its own ancestor");
            }
            unplace(m, e.node, e.time);
            let parent = usable_parent(m, *parent, e);
            place(m, e.node, parent, name, e);
            if let Some(n) = m.nodes.get_mut(&e.node) {
                n.record.attrs.ctime = e.time;
            }
            Ok(())
        }
        Change::Remove => {
            let node = m.nodes.get(&e.node).ok_or("remove of a node never created")?;
            if node.record.removed {
                return Err("remove of a removed node");
            }
            let has_live_children =
                m.dirents.range((e.node, Vec::new())..).next().is_some_and(|((d, _), _)| *d == e.node);
            if has_live_children {
                return Err("remove of a directory that gained entries concurrently");
            }
            unplace(m, e.node, e.time);
            if let Some(n) = m.nodes.get_mut(&e.node) {
                n.record.removed = true;
                n.removed_by = Some(e.clock.clone());
                n.record.attrs.ctime = e.time;
                n.record.clock = n.record.clock.join(&e.clock);
            }
            Ok(())
        }
        _ => {
            let node = m.nodes.get(&e.node).ok_or("change to a node never created")?;
            if node.record.removed && revives(node, e) {
                revive(m, e.node, e);
            }
            let n = m.nodes.get_mut(&e.node).ok_or("change to a node never created")?;
            apply_content(n, e, block_size)
        }
    }
}

/// Whether `e` did not see the removal of `node` (so it brings it back).
fn revives(node: &MergedNode, e: &Event) -> bool {
    match &node.removed_by {
        Some(rc) => !matches!(rc.compare(&e.clock), Causality::Before | Causality::Equal),
        None => false,
    }
}

/// Field-level changes of one node (not its place in the tree).
fn apply_content(n: &mut MergedNode, e: &Event, block_size: u64) -> Result<(), &'static str> {
    let fx = tree::apply(Some(&n.record), e, block_size);
    if let Some(reason) = fx.ignored {
        return Err(reason);
    }
    let mut record = fx.node;
    match &e.change {
        Change::Content { size, blocks } => {
            record.size = n.record.size.max(*size);
            for b in blocks {
                set_block(&mut n.blocks, b.index, b.block);
            }
        }
        Change::Truncate { size, tail } => {
            let keep = tree::block_count(*size, block_size);
            n.blocks.retain(|&i, _| i < keep);
            if let Some(t) = tail {
                set_block(&mut n.blocks, t.index, t.block);
            }
        }
        _ => {}
    }
    n.record = record;
    Ok(())
}

fn set_block(blocks: &mut BTreeMap<u64, BlockRef>, index: u64, block: Option<BlockRef>) {
    match block {
        Some(b) => {
            blocks.insert(index, b);
        }
        None => {
            blocks.remove(&index);
        }
    }
}

/// Brings a removed node back at its last place, and its parents with it.
fn revive(m: &mut Merged, id: NodeId, e: &Event) {
    let mut chain = Vec::new();
    let mut cur = id;
    // The chain of removed ancestors, bounded by the number of nodes since
    // the parent links never form a cycle.
    for _ in 0..=m.nodes.len() {
        match m.nodes.get(&cur) {
            Some(n) if cur != NodeId::ROOT && n.record.removed => {
                chain.push(cur);
                cur = n.record.parent;
            }
            _ => break,
        }
    }
    for node in chain.into_iter().rev() {
        let Some(n) = m.nodes.get_mut(&node) else { continue };
        n.removed_by = None;
        let (parent, name) = (n.record.parent, n.record.name.clone());
        let parent = usable_parent(m, parent, e);
        place(m, node, parent, &name, e);
    }
}

/// `parent` if it can hold entries now, else the root (a node never gets lost).
fn usable_parent(m: &mut Merged, parent: NodeId, e: &Event) -> NodeId {
    match m.nodes.get(&parent) {
        Some(p) if p.record.kind == NodeKind::Dir => {
            if p.record.removed {
                revive(m, parent, e);
            }
            parent
        }
        _ => NodeId::ROOT,
    }
}

/// Whether `a` is `b` or one of its ancestors.
fn is_ancestor_or_self(m: &Merged, a: NodeId, b: NodeId) -> bool {
    let mut cur = b;
    for _ in 0..=m.nodes.len() {
        if cur == a {
            return true;
        }
        if cur == NodeId::ROOT {
            return false;
        }
        match m.nodes.get(&cur) {
            Some(n) => cur = n.record.parent,
            None => return false,
        }
    }
    false
}

/// Takes `id` out of its directory's listing (if it is there).
fn unplace(m: &mut Merged, id: NodeId, time: Timestamp) {
    let Some(n) = m.nodes.get(&id) else { return };
    if n.record.removed {
        return;
    }
    let key = (n.record.parent, n.record.name.clone());
    if m.dirents.get(&key) == Some(&id) {
        m.dirents.remove(&key);
        touch(m, key.0, time);
    }
}

/// Puts `id` at `parent/name`, renaming it if a different live node has it.
fn place(m: &mut Merged, id: NodeId, parent: NodeId, name: &[u8], e: &Event) {
    let mut given = name.to_vec();
    if let Some(&winner) = m.dirents.get(&(parent, given.clone())) {
        if winner != id {
            given = free_conflict_name(m, parent, name, e);
            m.conflicts.push(Conflict {
                node: id,
                parent,
                wanted: name.to_vec(),
                given: given.clone(),
                winner,
                event: (e.machine, e.seq),
            });
        }
    }
    m.dirents.insert((parent, given.clone()), id);
    if let Some(n) = m.nodes.get_mut(&id) {
        n.record.parent = parent;
        n.record.name = given;
        n.record.removed = false;
        n.record.clock = n.record.clock.join(&e.clock);
    }
    touch(m, parent, e.time);
}

/// A directory's mtime and ctime follow changes to its listing.
fn touch(m: &mut Merged, dir: NodeId, time: Timestamp) {
    if let Some(n) = m.nodes.get_mut(&dir) {
        if n.record.kind == NodeKind::Dir {
            tree::touch_dir(&mut n.record, time);
        }
    }
}

/// `stem (conflict from <machine> <yyyy-mm-dd>).ext`, with ` 2`, ` 3`, ...
/// inside the parentheses if that is taken too.
fn free_conflict_name(m: &Merged, parent: NodeId, name: &[u8], e: &Event) -> Vec<u8> {
    let (stem, ext) = match name.iter().rposition(|&b| b == b'.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, &b""[..]),
    };
    let (y, mo, d) = civil_date(e.time);
    for n in 1u32.. {
        let tag = if n == 1 { String::new() } else { format!(" {n}") };
        let mut out = stem.to_vec();
        out.extend_from_slice(format!(" (conflict from {} {y:04}-{mo:02}-{d:02}{tag})", e.machine).as_bytes());
        out.extend_from_slice(ext);
        // Names are at most 255 bytes: keep the suffix, shorten the stem.
        if out.len() > crate::engine::NAME_MAX {
            let over = out.len() - crate::engine::NAME_MAX;
            let cut = stem.len().saturating_sub(over);
            out.drain(cut..stem.len());
        }
        if !m.dirents.contains_key(&(parent, out.clone())) {
            return out;
        }
    }
    name.to_vec()
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
