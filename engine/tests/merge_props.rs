//! Property tests of the merge (engine::merge): random operations on 2 to 4
//! simulated replicas with skewed clocks, random partial syncs between them,
//! then full delivery in any order with duplicates. Every replica must end
//! with the same tree, the tree must always be a tree, and a field that only
//! one side changed must keep that change.
//!
//! Case count: `PROPTEST_CASES` (default 256 here); the opt-in long run is
//! `PROPTEST_CASES=100000 cargo test --release -p syncer-engine --test merge_props`.

mod sim;

use std::collections::BTreeMap;

use engine::event::{Event, NodeKind};
use engine::ids::NodeId;
use engine::merge::merge;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use sim::*;

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
    shuffled.shuffle(&mut StdRng::seed_from_u64(order_seed));
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

/// Two machines change one file concurrently: the merge records it, naming
/// the event and the machine whose change it had not seen.
#[test]
fn concurrent_changes_are_recorded() {
    let mut reps = vec![Replica::new(0), Replica::new(1)];
    perform(&mut reps, &Action::Create { r: 0, dir: 0, name: 0, is_dir: false });
    perform(&mut reps, &Action::Sync { from: 0, to: 1 });
    perform(&mut reps, &Action::Chmod { r: 0, node: 1, mode: 0o600 });
    perform(&mut reps, &Action::Chmod { r: 1, node: 1, mode: 0o640 });
    perform(&mut reps, &Action::Sync { from: 0, to: 1 });
    perform(&mut reps, &Action::Sync { from: 1, to: 0 });
    let s = reps[0].state();
    assert_eq!(s, reps[1].state());
    let file = s.lookup(NodeId::ROOT, b"a").expect("file");
    assert_eq!(s.node(file).expect("node").record.attrs.mode, 0o640, "the later change wins");
    let recorded: Vec<_> = s.conflicts.iter().filter(|c| c.node == file).collect();
    assert_eq!(recorded.len(), 1, "{:?}", s.conflicts);
    assert_eq!(recorded[0].kind, engine::merge::ConflictKind::Concurrent { others: vec![reps[0].machine] });
    assert_eq!(recorded[0].event, (reps[1].machine, 1));
}
