//! A simulator of replicas for merge tests: machines with skewed clocks
//! doing only what the engine would allow, syncing subsets of events.

use std::collections::BTreeMap;

use engine::event::{AttrChange, Attrs, BlockChange, BlockRef, Change, Event, NodeKind};
use engine::ids::{BlockHash, EventId, MachineId, NodeId, Timestamp};
use engine::merge::{merge, Content, Merged};
use proptest::prelude::*;

/// Block size of the simulated data dirs.
pub const BS: u64 = 4096;
/// The names the simulated machines give nodes (few, so they collide).
pub const NAMES: [&str; 6] = ["a", "b", "c.txt", "d", "e", "f.jpg"];

/// One step of a simulation: a replica `r` changes a node (picked by a
/// selector byte among the live ones), or events go `from` one replica `to`
/// another, or a replica's clock jumps `by` milliseconds.
// The fields are selectors named as what they pick; the variants say the rest.
#[allow(missing_docs)]
#[derive(Clone, Debug)]
pub enum Action {
    Create { r: usize, dir: u8, name: u8, is_dir: bool },
    Write { r: usize, node: u8, index: u8, byte: u8 },
    Truncate { r: usize, node: u8, size: u16 },
    Chmod { r: usize, node: u8, mode: u16 },
    Xattr { r: usize, node: u8, key: u8, value: Option<u8> },
    Move { r: usize, node: u8, dir: u8, name: u8 },
    Remove { r: usize, node: u8 },
    Exchange { r: usize, a: u8, b: u8 },
    Sync { from: usize, to: usize },
    Skew { r: usize, by: i16 },
}

/// The proptest strategy of [`Action`]s among `replicas` replicas.
pub fn action(replicas: usize) -> impl Strategy<Value = Action> {
    let r = 0..replicas;
    prop_oneof![
        3 => (r.clone(), any::<u8>(), 0..NAMES.len() as u8, any::<bool>())
            .prop_map(|(r, dir, name, is_dir)| Action::Create { r, dir, name, is_dir }),
        3 => (r.clone(), any::<u8>(), 0u8..4, any::<u8>()).prop_map(|(r, node, index, byte)| Action::Write { r, node, index, byte }),
        1 => (r.clone(), any::<u8>(), 0u16..(4 * BS as u16)).prop_map(|(r, node, size)| Action::Truncate { r, node, size }),
        2 => (r.clone(), any::<u8>(), 0u16..0o777).prop_map(|(r, node, mode)| Action::Chmod { r, node, mode }),
        2 => (r.clone(), any::<u8>(), 0u8..3, proptest::option::of(any::<u8>()))
            .prop_map(|(r, node, key, value)| Action::Xattr { r, node, key, value }),
        2 => (r.clone(), any::<u8>(), any::<u8>(), 0..NAMES.len() as u8)
            .prop_map(|(r, node, dir, name)| Action::Move { r, node, dir, name }),
        1 => (r.clone(), any::<u8>()).prop_map(|(r, node)| Action::Remove { r, node }),
        1 => (r.clone(), any::<u8>(), any::<u8>()).prop_map(|(r, a, b)| Action::Exchange { r, a, b }),
        3 => (r.clone(), 0..replicas).prop_map(|(from, to)| Action::Sync { from, to }),
        1 => (r, any::<i16>()).prop_map(|(r, by)| Action::Skew { r, by }),
    ]
}

/// A simulated machine: its own clock, counters and the events it knows.
pub struct Replica {
    /// Its machine id.
    pub machine: MachineId,
    /// Its wall clock (skewed by [`Action::Skew`]).
    pub wall: i64,
    /// Seq of its last event.
    pub seq: u64,
    /// Its node counter.
    pub counter: u64,
    /// Every event it knows, by (machine, seq).
    pub known: BTreeMap<(MachineId, u64), Event>,
    /// The content each content change of this machine made, as the
    /// machine saw it right after making it (a file's create: empty).
    pub written: BTreeMap<EventId, Content>,
}

impl Replica {
    /// Replica number `i`: its own machine id and clock.
    pub fn new(i: usize) -> Self {
        Replica {
            machine: MachineId(0x1000 + i as u64),
            wall: 1_000_000 * (i as i64 + 1),
            seq: 0,
            counter: 0,
            known: BTreeMap::new(),
            written: BTreeMap::new(),
        }
    }

    /// The merge of every event it knows.
    pub fn state(&self) -> Merged {
        merge(self.known.values(), BS)
    }

    /// Records a local change of `node` (validated by the caller).
    pub fn emit(&mut self, state: &Merged, node: NodeId, change: Change) {
        self.wall += 1000;
        let seen = self.known.values().map(|e| e.time.0).max().unwrap_or(0);
        let time = Timestamp(self.wall.max(seen + 1));
        self.wall = time.0;
        let mut clock = state.node(node).map(|n| n.record.clock.clone()).unwrap_or_default();
        clock.tick(self.machine);
        self.seq += 1;
        // As the engine does: a content change names the version it was made on.
        let base =
            if change.is_content() { state.node(node).and_then(|n| n.record.head).map(|h| h.event) } else { None };
        let e = Event { node, machine: self.machine, seq: self.seq, time, clock, change, base };
        let made = match &e.change {
            Change::Create { kind: NodeKind::File, .. } => Some(Content::default()),
            c if c.is_content() => {
                state.node(node).map(|n| Content { size: n.record.size, blocks: n.blocks.clone() }.with(c, BS))
            }
            _ => None,
        };
        if let Some(made) = made {
            self.written.insert(e.id(), made);
        }
        self.known.insert((e.machine, e.seq), e);
    }
}

/// The live nodes of `m`, of `kind` when given.
pub fn live_nodes(m: &Merged, kind: Option<NodeKind>) -> Vec<NodeId> {
    m.nodes
        .iter()
        .filter(|(id, n)| m.is_live(**id) && kind.is_none_or(|k| n.record.kind == k))
        .map(|(id, _)| *id)
        .collect()
}

/// The node `sel` picks among `v`, if any.
pub fn pick(v: &[NodeId], sel: u8) -> Option<NodeId> {
    (!v.is_empty()).then(|| v[sel as usize % v.len()])
}

/// A block reference named by `byte`.
pub fn block(byte: u8) -> BlockRef {
    BlockRef { hash: BlockHash::of(&[byte], 16), len: 1 }
}

/// Performs `a` on the replicas the way the engine would: only valid operations.
pub fn perform(reps: &mut [Replica], a: &Action) {
    match *a {
        Action::Sync { from, to } => {
            let events: Vec<Event> = reps[from].known.values().cloned().collect();
            for e in events {
                reps[to].known.insert((e.machine, e.seq), e);
            }
        }
        Action::Skew { r, by } => reps[r].wall += i64::from(by) * 1000,
        Action::Create { r, dir, name, is_dir } => {
            let s = reps[r].state();
            let Some(parent) = pick(&live_nodes(&s, Some(NodeKind::Dir)), dir) else { return };
            let name = NAMES[name as usize].as_bytes();
            if s.lookup(parent, name).is_some() {
                return;
            }
            reps[r].counter += 1;
            let id = NodeId::new(reps[r].counter, reps[r].machine);
            let kind = if is_dir { NodeKind::Dir } else { NodeKind::File };
            let attrs = Attrs { mode: 0o644, ..Attrs::default() };
            let change = Change::Create { parent, name: name.to_vec(), kind, attrs, target: Vec::new() };
            reps[r].emit(&s, id, change);
        }
        Action::Write { r, node, index, byte } => {
            let s = reps[r].state();
            let Some(n) = pick(&live_nodes(&s, Some(NodeKind::File)), node) else { return };
            // As the engine writes: the file's size after the write.
            let size = (u64::from(index) * BS + 1).max(s.node(n).map_or(0, |x| x.record.size));
            let blocks = vec![BlockChange { index: u64::from(index), block: Some(block(byte)) }];
            reps[r].emit(&s, n, Change::Content { size, blocks });
        }
        Action::Truncate { r, node, size } => {
            let s = reps[r].state();
            let Some(n) = pick(&live_nodes(&s, Some(NodeKind::File)), node) else { return };
            reps[r].emit(&s, n, Change::Truncate { size: u64::from(size), tail: None });
        }
        Action::Chmod { r, node, mode } => {
            let s = reps[r].state();
            let Some(n) = pick(&live_nodes(&s, None), node) else { return };
            let change = AttrChange { mode: Some(u32::from(mode)), ..AttrChange::default() };
            reps[r].emit(&s, n, Change::SetAttrs(change));
        }
        Action::Xattr { r, node, key, value } => {
            let s = reps[r].state();
            let Some(n) = pick(&live_nodes(&s, None), node) else { return };
            let name = format!("user.k{key}").into_bytes();
            let change = match value {
                Some(v) => Change::SetXattr { name, value: vec![v] },
                None if s.node(n).is_some_and(|x| x.record.xattr(&name).is_some()) => Change::RemoveXattr { name },
                None => return,
            };
            reps[r].emit(&s, n, change);
        }
        Action::Move { r, node, dir, name } => {
            let s = reps[r].state();
            let movable: Vec<NodeId> = live_nodes(&s, None).into_iter().filter(|n| *n != NodeId::ROOT).collect();
            let Some(n) = pick(&movable, node) else { return };
            let Some(parent) = pick(&live_nodes(&s, Some(NodeKind::Dir)), dir) else { return };
            let name = NAMES[name as usize].as_bytes();
            if s.lookup(parent, name).is_some() || is_under(&s, n, parent) {
                return;
            }
            reps[r].emit(&s, n, Change::Move { parent, name: name.to_vec() });
        }
        Action::Exchange { r, a, b } => {
            let s = reps[r].state();
            let movable: Vec<NodeId> = live_nodes(&s, None).into_iter().filter(|n| *n != NodeId::ROOT).collect();
            let (Some(x), Some(y)) = (pick(&movable, a), pick(&movable, b)) else { return };
            let (px, py) = (s.nodes[&x].record.parent, s.nodes[&y].record.parent);
            if x == y || is_under(&s, x, py) || is_under(&s, y, px) {
                return;
            }
            reps[r].emit(&s, x, Change::Exchange { with: y });
        }
        Action::Remove { r, node } => {
            let s = reps[r].state();
            let removable: Vec<NodeId> = live_nodes(&s, None).into_iter().filter(|n| *n != NodeId::ROOT).collect();
            let Some(n) = pick(&removable, node) else { return };
            if s.dirents.keys().any(|(d, _)| *d == n) {
                return;
            }
            reps[r].emit(&s, n, Change::Remove);
        }
    }
}

/// Whether `dir` is `node` or inside it.
pub fn is_under(m: &Merged, node: NodeId, dir: NodeId) -> bool {
    let mut cur = dir;
    for _ in 0..=m.nodes.len() {
        if cur == node {
            return true;
        }
        if cur == NodeId::ROOT {
            return false;
        }
        cur = m.nodes[&cur].record.parent;
    }
    panic!("cycle above {dir}");
}

/// The tree invariants: reachable, acyclic, listing and records agree, unique names.
pub fn assert_is_tree(m: &Merged) {
    for ((dir, name), child) in &m.dirents {
        let c = &m.nodes[child];
        assert!(!c.record.removed, "listed node {child} is removed");
        assert_eq!((c.record.parent, &c.record.name), (*dir, name), "listing and record of {child} disagree");
        assert!(m.is_live(*dir), "{child} is listed in removed directory {dir}");
        assert_eq!(m.nodes[dir].record.kind, NodeKind::Dir);
    }
    for (id, n) in &m.nodes {
        if *id == NodeId::ROOT || n.record.removed {
            continue;
        }
        assert_eq!(m.lookup(n.record.parent, &n.record.name), Some(*id), "live node {id} is not listed");
        assert!(!is_under(m, *id, n.record.parent), "{id} is its own ancestor");
    }
    // The counts the merge keeps in the records: a directory's listed
    // subdirectories (its link count), a file's stored bytes (st_blocks).
    let mut subdirs: std::collections::BTreeMap<NodeId, u64> = std::collections::BTreeMap::new();
    for ((dir, _), child) in &m.dirents {
        if m.nodes[child].record.kind == NodeKind::Dir {
            *subdirs.entry(*dir).or_default() += 1;
        }
    }
    for (id, n) in &m.nodes {
        match n.record.kind {
            NodeKind::Dir => {
                assert_eq!(n.record.subdirs, subdirs.get(id).copied().unwrap_or(0), "subdirectories of {id}")
            }
            NodeKind::File => {
                let stored: u64 = n.blocks.values().map(|b| u64::from(b.len)).sum();
                assert_eq!(n.record.stored, stored, "stored bytes of {id}");
            }
            _ => {}
        }
    }
}
