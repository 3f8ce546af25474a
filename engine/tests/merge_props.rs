//! Property tests of the merge (engine::merge): random operations on 2 to 4
//! simulated replicas with skewed clocks, random partial syncs between them,
//! then full delivery in any order with duplicates. Every replica must end
//! with the same tree, the tree must always be a tree, and a field that only
//! one side changed must keep that change.
//!
//! Case count: `PROPTEST_CASES` (default 256 here); the opt-in long run is
//! `PROPTEST_CASES=100000 cargo test --release -p syncer-engine --test merge_props`.

use std::collections::BTreeMap;

use engine::event::{AttrChange, Attrs, BlockChange, BlockRef, Change, Event, NodeKind};
use engine::ids::{BlockHash, MachineId, NodeId, Timestamp};
use engine::merge::{merge, Merged};
use proptest::prelude::*;

const BS: u64 = 4096;
const NAMES: [&str; 6] = ["a", "b", "c.txt", "d", "e", "f.jpg"];

#[derive(Clone, Debug)]
enum Action {
    Create { r: usize, dir: u8, name: u8, is_dir: bool },
    Write { r: usize, node: u8, index: u8, byte: u8 },
    Truncate { r: usize, node: u8, size: u16 },
    Chmod { r: usize, node: u8, mode: u16 },
    Xattr { r: usize, node: u8, key: u8, value: Option<u8> },
    Move { r: usize, node: u8, dir: u8, name: u8 },
    Remove { r: usize, node: u8 },
    Sync { from: usize, to: usize },
    Skew { r: usize, by: i16 },
}

fn action(replicas: usize) -> impl Strategy<Value = Action> {
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
        3 => (r.clone(), 0..replicas).prop_map(|(from, to)| Action::Sync { from, to }),
        1 => (r, any::<i16>()).prop_map(|(r, by)| Action::Skew { r, by }),
    ]
}

/// A simulated machine: its own clock, counters and the events it knows.
struct Replica {
    machine: MachineId,
    wall: i64,
    seq: u64,
    counter: u64,
    known: BTreeMap<(MachineId, u64), Event>,
}

impl Replica {
    fn new(i: usize) -> Self {
        Replica {
            machine: MachineId(0x1000 + i as u64),
            wall: 1_000_000 * (i as i64 + 1),
            seq: 0,
            counter: 0,
            known: BTreeMap::new(),
        }
    }

    fn state(&self) -> Merged {
        merge(self.known.values(), BS)
    }

    /// Records a local change of `node` (validated by the caller).
    fn emit(&mut self, state: &Merged, node: NodeId, change: Change) {
        self.wall += 1000;
        let seen = self.known.values().map(|e| e.time.0).max().unwrap_or(0);
        let time = Timestamp(self.wall.max(seen + 1));
        self.wall = time.0;
        let mut clock = state.node(node).map(|n| n.record.clock.clone()).unwrap_or_default();
        clock.tick(self.machine);
        self.seq += 1;
        let e = Event { node, machine: self.machine, seq: self.seq, time, clock, change };
        self.known.insert((e.machine, e.seq), e);
    }
}

fn live_nodes(m: &Merged, kind: Option<NodeKind>) -> Vec<NodeId> {
    m.nodes
        .iter()
        .filter(|(id, n)| m.is_live(**id) && kind.is_none_or(|k| n.record.kind == k))
        .map(|(id, _)| *id)
        .collect()
}

fn pick(v: &[NodeId], sel: u8) -> Option<NodeId> {
    (!v.is_empty()).then(|| v[sel as usize % v.len()])
}

fn block(byte: u8) -> BlockRef {
    BlockRef { hash: BlockHash::of(&[byte], 16), len: 1 }
}

/// Performs `a` on the replicas the way the engine would: only valid operations.
fn perform(reps: &mut [Replica], a: &Action) {
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
            let size = u64::from(index) * BS + 1;
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
fn is_under(m: &Merged, node: NodeId, dir: NodeId) -> bool {
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
fn assert_is_tree(m: &Merged) {
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
}

fn run(replicas: usize, actions: &[Action], order_seed: u64) -> Result<(), TestCaseError> {
    let mut reps: Vec<Replica> = (0..replicas).map(Replica::new).collect();
    for a in actions {
        perform(&mut reps, a);
        for r in &reps {
            assert_is_tree(&r.state());
        }
    }
    let all: Vec<Event> = {
        let mut m = BTreeMap::new();
        for r in &reps {
            m.extend(r.known.iter().map(|(k, v)| (*k, v.clone())));
        }
        m.into_values().collect()
    };
    let reference = merge(&all, BS);
    if std::env::var("MERGE_STATS").is_ok() {
        eprintln!(
            "events {} live {} conflicts {} ignored {}",
            all.len(),
            reference.dirents.len(),
            reference.conflicts.len(),
            reference.ignored.len()
        );
    }
    assert_is_tree(&reference);
    // Any delivery order, with duplicates, gives the same tree.
    let mut shuffled: Vec<&Event> = all.iter().chain(all.iter().step_by(3)).collect();
    let mut seed = order_seed | 1;
    for i in (1..shuffled.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        shuffled.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    prop_assert_eq!(&merge(shuffled.iter().copied(), BS), &reference);
    // Each replica, once it has every event, converges (whatever it merged before).
    for r in &mut reps {
        let mine: Vec<Event> = r.known.values().cloned().collect();
        let before = merge(&mine, BS);
        let joined = merge(mine.iter().chain(all.iter()), BS);
        prop_assert_eq!(&joined, &reference);
        // Idempotent: merging a set with itself changes nothing.
        prop_assert_eq!(merge(mine.iter().chain(mine.iter()), BS), before);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256), ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge(
        (replicas, actions) in (2usize..=4).prop_flat_map(|n| (Just(n), proptest::collection::vec(action(n), 1..60))),
        order_seed: u64,
    ) {
        run(replicas, &actions, order_seed)?;
    }

    #[test]
    fn a_field_only_one_side_changed_is_kept(mode in 0u32..0o777, byte: u8, key in 0u8..3, value: u8) {
        // Both replicas share a file, then change different fields of it concurrently.
        let mut reps = vec![Replica::new(0), Replica::new(1)];
        perform(&mut reps, &Action::Create { r: 0, dir: 0, name: 0, is_dir: false });
        perform(&mut reps, &Action::Sync { from: 0, to: 1 });
        perform(&mut reps, &Action::Chmod { r: 0, node: 1, mode: mode as u16 });
        perform(&mut reps, &Action::Write { r: 1, node: 0, index: 1, byte });
        perform(&mut reps, &Action::Xattr { r: 1, node: 1, key, value: Some(value) });
        perform(&mut reps, &Action::Sync { from: 0, to: 1 });
        perform(&mut reps, &Action::Sync { from: 1, to: 0 });
        for r in &reps {
            let s = r.state();
            let file = s.lookup(NodeId::ROOT, b"a").expect("the file");
            let n = s.node(file).expect("node");
            prop_assert_eq!(n.record.attrs.mode, mode);
            prop_assert_eq!(n.blocks.get(&1), Some(&block(byte)));
            let name = format!("user.k{key}").into_bytes();
            prop_assert_eq!(n.record.xattr(&name), Some(&[value][..]));
        }
    }
}

/// Two machines create the same name offline: both stay visible, the later
/// one under a deterministic conflict name, on every replica.
#[test]
fn same_new_name_on_two_machines_keeps_both() {
    let mut reps = vec![Replica::new(0), Replica::new(1)];
    perform(&mut reps, &Action::Create { r: 0, dir: 0, name: 2, is_dir: false });
    perform(&mut reps, &Action::Create { r: 1, dir: 0, name: 2, is_dir: false });
    perform(&mut reps, &Action::Sync { from: 0, to: 1 });
    perform(&mut reps, &Action::Sync { from: 1, to: 0 });
    let (a, b) = (reps[0].state(), reps[1].state());
    assert_eq!(a, b);
    let names: Vec<String> = a.dirents.keys().map(|(_, n)| String::from_utf8_lossy(n).into_owned()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"c.txt".to_string()), "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("c (conflict from 0000000000001001 ") && n.ends_with(").txt")),
        "{names:?}"
    );
    assert_eq!(a.conflicts.len(), 1);
}

/// Concurrent moves of two directories into each other never make a cycle.
#[test]
fn crossing_moves_do_not_make_a_cycle() {
    let mut reps = vec![Replica::new(0), Replica::new(1)];
    perform(&mut reps, &Action::Create { r: 0, dir: 0, name: 0, is_dir: true });
    perform(&mut reps, &Action::Create { r: 0, dir: 0, name: 1, is_dir: true });
    perform(&mut reps, &Action::Sync { from: 0, to: 1 });
    let s = reps[0].state();
    let (da, db) = (s.lookup(NodeId::ROOT, b"a").expect("a"), s.lookup(NodeId::ROOT, b"b").expect("b"));
    let dirs = live_nodes(&s, Some(NodeKind::Dir));
    let sel = |id: NodeId| dirs.iter().position(|d| *d == id).expect("dir") as u8;
    let all = live_nodes(&s, None).into_iter().filter(|n| *n != NodeId::ROOT).collect::<Vec<_>>();
    let nsel = |id: NodeId| all.iter().position(|d| *d == id).expect("node") as u8;
    perform(&mut reps, &Action::Move { r: 0, node: nsel(da), dir: sel(db), name: 0 });
    perform(&mut reps, &Action::Move { r: 1, node: nsel(db), dir: sel(da), name: 1 });
    perform(&mut reps, &Action::Sync { from: 0, to: 1 });
    perform(&mut reps, &Action::Sync { from: 1, to: 0 });
    let (x, y) = (reps[0].state(), reps[1].state());
    assert_eq!(x, y);
    assert_is_tree(&x);
    assert_eq!(x.ignored.iter().filter(|(_, why)| why.contains("own ancestor")).count(), 1);
}

/// Delete on one machine, edit on the other: the edit wins, the file stays.
#[test]
fn concurrent_edit_brings_a_removed_file_back() {
    let mut reps = vec![Replica::new(0), Replica::new(1)];
    perform(&mut reps, &Action::Create { r: 0, dir: 0, name: 0, is_dir: false });
    perform(&mut reps, &Action::Sync { from: 0, to: 1 });
    perform(&mut reps, &Action::Remove { r: 0, node: 1 });
    perform(&mut reps, &Action::Write { r: 1, node: 0, index: 0, byte: 42 });
    perform(&mut reps, &Action::Sync { from: 0, to: 1 });
    perform(&mut reps, &Action::Sync { from: 1, to: 0 });
    for r in &reps {
        let s = r.state();
        let f = s.lookup(NodeId::ROOT, b"a").expect("the edited file survives");
        assert_eq!(s.node(f).expect("node").blocks.get(&0), Some(&block(42)));
    }
}
