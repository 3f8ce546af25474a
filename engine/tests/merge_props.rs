//! Property tests of the merge (engine::merge): random operations on 2 to 4
//! simulated replicas with skewed clocks, random partial syncs between them,
//! then full delivery in any order with duplicates. Every replica must end
//! with the same tree, the tree must always be a tree, a field that only
//! one side changed must keep that change, every visible file is exactly one
//! writer's version (never a splice of two), and every version no one built
//! on is still visible (or was removed by someone who saw it).
//!
//! Case count: `PROPTEST_CASES` (default 256 here); the opt-in long run is
//! `PROPTEST_CASES=100000 cargo test --release -p syncer-engine --test merge_props`.

use std::collections::BTreeMap;

use engine::event::{Event, NodeKind};
use engine::ids::{EventId, NodeId};
use engine::merge::{merge, ConflictKind, Content, Merged};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use testkit::sim::*;

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
    let written: BTreeMap<EventId, Content> = reps.iter().flat_map(|r| r.written.clone()).collect();
    one_writers_version_each(&reference, &written)?;
    every_final_version_visible(&reference, &all, &written)?;
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

fn content_of(m: &Merged, id: NodeId) -> Content {
    let n = &m.nodes[&id];
    Content { size: n.record.size, blocks: n.blocks.clone() }
}

/// Every visible file shows content that one writer made, as that writer
/// saw it: never a mix of two concurrent writers' blocks.
fn one_writers_version_each(m: &Merged, written: &BTreeMap<EventId, Content>) -> Result<(), TestCaseError> {
    for id in live_nodes(m, Some(NodeKind::File)) {
        let head = m.nodes[&id].record.head.expect("a file has a head").event;
        let content = content_of(m, id);
        prop_assert_eq!(
            written.get(&head),
            Some(&content),
            "file {} shows other content than its version {}",
            id,
            head
        );
    }
    Ok(())
}

/// Every content version that no later change was made on is still shown
/// by the node it was applied to, or that node was removed by someone who
/// had seen it, or a change on equal content (a side that had not changed
/// the bytes) replaced it.
fn every_final_version_visible(
    m: &Merged,
    all: &[Event],
    written: &BTreeMap<EventId, Content>,
) -> Result<(), TestCaseError> {
    let bases: std::collections::BTreeSet<EventId> = all.iter().filter_map(|e| e.base).collect();
    let by_id: BTreeMap<EventId, &Event> = all.iter().map(|e| (e.id(), e)).collect();
    for (v, content) in written {
        if bases.contains(v) {
            continue;
        }
        let loc = m.versions.get(v).copied();
        prop_assert!(loc.is_some(), "version {} was never applied", v);
        let loc = loc.expect("checked");
        let node = &m.nodes[&loc.node];
        let shown = node.record.head.map(|h| h.event) == Some(*v);
        if !shown {
            let replaced_by_same_bytes = all.iter().any(|w| {
                w.base.is_some_and(|b| b != *v && written.get(&b) == Some(content))
                    && m.versions.get(&w.id()).is_some_and(|l| l.node == loc.node)
            });
            prop_assert!(
                replaced_by_same_bytes,
                "version {} is not shown by {} (head {:?})",
                v,
                loc.node,
                node.record.head
            );
            continue;
        }
        if node.record.removed {
            let ev = by_id[v];
            let tick = ev.clock.get(ev.machine);
            let saw = node.record.removed_by.as_ref().is_some_and(|rc| rc.get(ev.machine) >= tick);
            prop_assert!(
                saw || ev_saw_removal(m, loc.node, ev),
                "version {} was hidden by a remove that had not seen it",
                v
            );
        }
    }
    Ok(())
}

/// Whether `ev` was made after its writer saw `node` removed (a write
/// through a handle opened before the unlink).
fn ev_saw_removal(m: &Merged, node: NodeId, ev: &Event) -> bool {
    m.nodes[&node].record.removed_by.as_ref().is_some_and(|rc| {
        matches!(rc.compare(&ev.clock), engine::clock::Causality::Before | engine::clock::Causality::Equal)
    })
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

/// Two replicas that share file `a` (node 1 of replica 0, empty).
fn shared_file() -> (Vec<Replica>, NodeId) {
    let mut reps = vec![Replica::new(0), Replica::new(1)];
    perform(&mut reps, &Action::Create { r: 0, dir: 0, name: 0, is_dir: false });
    perform(&mut reps, &Action::Sync { from: 0, to: 1 });
    let a = reps[0].state().lookup(NodeId::ROOT, b"a").expect("a");
    (reps, a)
}

fn sync_all(reps: &mut [Replica]) {
    for _ in 0..2 {
        for from in 0..reps.len() {
            for to in 0..reps.len() {
                perform(reps, &Action::Sync { from, to });
            }
        }
    }
}

/// The converged state (asserted equal on every replica) and its names.
fn converged(reps: &[Replica]) -> (Merged, Vec<String>) {
    let s = reps[0].state();
    for r in reps {
        assert_eq!(r.state(), s, "replica {} did not converge", r.machine);
    }
    let names = s.dirents.keys().map(|(_, n)| String::from_utf8_lossy(n).into_owned()).collect();
    (s, names)
}

fn blocks(m: &Merged, id: NodeId) -> Vec<(u64, u8)> {
    let byte = |b: &engine::event::BlockRef| (0..=255u8).find(|x| block(*x) == *b).expect("a sim block");
    m.nodes[&id].blocks.iter().map(|(i, b)| (*i, byte(b))).collect()
}

fn write(reps: &mut [Replica], r: usize, index: u8, byte: u8) {
    perform(reps, &Action::Write { r, node: 0, index, byte });
}

/// Both machines write one file offline: the first in merge order keeps the
/// name with exactly its blocks; the other's whole version, with its later
/// writes, is a conflict copy named after its machine, with the same id on
/// every replica.
#[test]
fn concurrent_writes_keep_both_whole_versions() {
    let (mut reps, a) = shared_file();
    write(&mut reps, 0, 0, 1);
    write(&mut reps, 1, 1, 2);
    write(&mut reps, 1, 2, 3);
    let first_of_1 = EventId { machine: reps[1].machine, seq: 1 };
    sync_all(&mut reps);
    let (s, names) = converged(&reps);
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(blocks(&s, a), [(0, 1)]);
    let copy = NodeId::conflict_copy(first_of_1);
    let c = &s.nodes[&copy];
    assert!(!c.record.removed);
    assert!(String::from_utf8_lossy(&c.record.name).starts_with("a (conflict from 0000000000001001 "), "{names:?}");
    assert_eq!(blocks(&s, copy), [(1, 2), (2, 3)]);
    assert_eq!(c.record.size, 2 * BS + 1);
    assert_eq!(c.record.conflict_of, Some(a));
    assert_eq!(s.conflicts.iter().filter(|c| matches!(c.kind, ConflictKind::Content { .. })).count(), 1);
}

/// Three machines write one file at once: two copies, one per machine.
#[test]
fn three_machines_make_two_copies() {
    let mut reps = vec![Replica::new(0), Replica::new(1), Replica::new(2)];
    perform(&mut reps, &Action::Create { r: 0, dir: 0, name: 2, is_dir: false });
    sync_all(&mut reps);
    for r in 0..3 {
        write(&mut reps, r, r as u8, 10 + r as u8);
    }
    sync_all(&mut reps);
    let (s, names) = converged(&reps);
    assert_eq!(names.len(), 3, "{names:?}");
    for (r, rep) in reps.iter().enumerate().skip(1) {
        let want = format!("c (conflict from {} ", rep.machine);
        let copy = names.iter().find(|n| n.starts_with(&want)).unwrap_or_else(|| panic!("{want} in {names:?}"));
        assert!(copy.ends_with(").txt"), "{copy}");
        let id = s.lookup(NodeId::ROOT, copy.as_bytes()).expect("copy");
        assert_eq!(blocks(&s, id), [(r as u64, 10 + r as u8)]);
    }
}

/// One machine appends, the other truncates: two versions, so a copy.
#[test]
fn append_vs_truncate_keeps_both() {
    let (mut reps, a) = shared_file();
    write(&mut reps, 0, 0, 1);
    sync_all(&mut reps);
    write(&mut reps, 0, 1, 2);
    perform(&mut reps, &Action::Truncate { r: 1, node: 0, size: 0 });
    sync_all(&mut reps);
    let (s, names) = converged(&reps);
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(blocks(&s, a), [(0, 1), (1, 2)]);
    let copy = s.nodes.keys().copied().find(|id| id.is_conflict_copy()).expect("a copy");
    assert_eq!((s.nodes[&copy].record.size, blocks(&s, copy)), (0, vec![]));
}

/// Edit on one machine, delete on the other: the edit survives whichever
/// comes first in the order.
#[test]
fn edit_vs_delete_keeps_the_edit_in_either_order() {
    for remove_first in [true, false] {
        let (mut reps, a) = shared_file();
        if remove_first {
            perform(&mut reps, &Action::Remove { r: 0, node: 0 });
            write(&mut reps, 1, 0, 9);
        } else {
            write(&mut reps, 1, 0, 9);
            perform(&mut reps, &Action::Skew { r: 0, by: 30_000 });
            perform(&mut reps, &Action::Remove { r: 0, node: 0 });
        }
        sync_all(&mut reps);
        let (s, names) = converged(&reps);
        assert_eq!(names, ["a"], "remove first: {remove_first}");
        assert_eq!(blocks(&s, a), [(0, 9)], "remove first: {remove_first}");
    }
}

/// Edit on one machine, rename on the other: both apply, no copy.
#[test]
fn edit_vs_rename_applies_both() {
    let (mut reps, a) = shared_file();
    perform(&mut reps, &Action::Move { r: 0, node: 0, dir: 0, name: 1 });
    write(&mut reps, 1, 0, 4);
    sync_all(&mut reps);
    let (s, names) = converged(&reps);
    assert_eq!(names, ["b"]);
    assert_eq!(blocks(&s, a), [(0, 4)]);
}

/// Both edit, one also renames: the version first in the order keeps the
/// node (which follows the rename); the other is a copy beside the node,
/// named after the name the node had when the copy was made (here after the
/// rename, which came first).
#[test]
fn both_edit_and_one_renames() {
    let (mut reps, a) = shared_file();
    write(&mut reps, 0, 0, 1);
    perform(&mut reps, &Action::Move { r: 0, node: 0, dir: 0, name: 1 });
    write(&mut reps, 1, 0, 2);
    sync_all(&mut reps);
    let (s, names) = converged(&reps);
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(s.lookup(NodeId::ROOT, b"b"), Some(a));
    assert_eq!(blocks(&s, a), [(0, 1)]);
    let copy = names.iter().find(|n| n.starts_with("b (conflict from 0000000000001001 ")).expect("copy");
    assert_eq!(blocks(&s, s.lookup(NodeId::ROOT, copy.as_bytes()).expect("copy")), [(0, 2)]);
}

/// A conflict copy is a file like any other: edited on both machines at
/// once, it gets a copy of its own.
#[test]
fn concurrent_edit_of_a_copy_copies_the_copy() {
    let (mut reps, _) = shared_file();
    write(&mut reps, 0, 0, 1);
    write(&mut reps, 1, 0, 2);
    sync_all(&mut reps);
    let (s, _) = converged(&reps);
    let copy = s.nodes.keys().copied().find(|id| id.is_conflict_copy()).expect("copy");
    let files = live_nodes(&s, Some(NodeKind::File));
    let sel = files.iter().position(|f| *f == copy).expect("listed") as u8;
    perform(&mut reps, &Action::Write { r: 0, node: sel, index: 1, byte: 5 });
    perform(&mut reps, &Action::Write { r: 1, node: sel, index: 1, byte: 6 });
    sync_all(&mut reps);
    let (s, names) = converged(&reps);
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.iter().any(|n| n.matches("(conflict from").count() == 2), "{names:?}");
    assert_eq!(blocks(&s, copy), [(0, 2), (1, 5)]);
}

/// A side that wrote the original bytes back changed nothing: when the
/// other side's change comes later in the order, it is taken with no copy;
/// when it comes first, the rewriting side's version (the original bytes)
/// becomes the copy, so both stay visible.
#[test]
fn a_side_that_wrote_the_original_back() {
    for rewrite_first in [true, false] {
        let (mut reps, a) = shared_file();
        if !rewrite_first {
            write(&mut reps, 1, 0, 7);
            perform(&mut reps, &Action::Skew { r: 0, by: 30_000 });
        }
        write(&mut reps, 0, 0, 5);
        perform(&mut reps, &Action::Truncate { r: 0, node: 0, size: 0 });
        if rewrite_first {
            write(&mut reps, 1, 0, 7);
        }
        sync_all(&mut reps);
        let (s, names) = converged(&reps);
        assert_eq!(blocks(&s, a), [(0, 7)], "rewrite first: {rewrite_first}");
        let copies: Vec<NodeId> =
            live_nodes(&s, Some(NodeKind::File)).into_iter().filter(|n| n.is_conflict_copy()).collect();
        if rewrite_first {
            assert!(copies.is_empty(), "{names:?}");
        } else {
            assert_eq!(copies.len(), 1, "{names:?}");
            assert_eq!((s.nodes[&copies[0]].record.size, blocks(&s, copies[0])), (0, vec![]));
        }
    }
}

/// proptest find (the seed in merge_props.proptest-regressions): a write
/// below a file's end keeps its size (the size a change carries is the
/// file's, not the write's end), so a truncate after it cuts every block
/// past the new end.
#[test]
fn a_truncate_after_a_write_inside_the_file_cuts_the_blocks_past_the_end() {
    let (mut reps, a) = shared_file();
    write(&mut reps, 0, 2, 1);
    write(&mut reps, 0, 0, 2);
    assert_eq!(reps[0].state().nodes[&a].record.size, 2 * BS + 1);
    perform(&mut reps, &Action::Truncate { r: 0, node: 0, size: 1 });
    let s = reps[0].state();
    assert_eq!((s.nodes[&a].record.size, blocks(&s, a)), (1, vec![(0, 2)]));
}

/// A change that names a version of another file as its base (only a
/// damaged or hostile peer writes one) never touches that other file: it
/// becomes a copy beside its own file.
#[test]
fn a_base_of_another_file_never_routes_a_change_there() {
    let mut reps = vec![Replica::new(0)];
    perform(&mut reps, &Action::Create { r: 0, dir: 0, name: 0, is_dir: false });
    perform(&mut reps, &Action::Create { r: 0, dir: 0, name: 1, is_dir: false });
    write(&mut reps, 0, 0, 1);
    let s = reps[0].state();
    let (a, b) = (s.lookup(NodeId::ROOT, b"a").expect("a"), s.lookup(NodeId::ROOT, b"b").expect("b"));
    let b_version = s.nodes[&b].record.head.expect("head").event;
    let mut clock = s.nodes[&a].record.clock.clone();
    let hostile = engine::ids::MachineId(0xbad);
    clock.tick(hostile);
    let change = vec![engine::event::BlockChange { index: 0, block: Some(block(9)) }];
    let ev = Event {
        node: a,
        machine: hostile,
        seq: 1,
        time: engine::ids::Timestamp(i64::MAX / 2),
        clock,
        change: engine::event::Change::Content { size: 1, blocks: change },
        base: Some(b_version),
    };
    let all: Vec<Event> = reps[0].known.values().cloned().chain([ev.clone()]).collect();
    let m = merge(&all, BS);
    assert_eq!(blocks(&m, b), blocks(&s, b), "the other file is untouched");
    let copy = NodeId::conflict_copy(ev.id());
    assert_eq!(m.nodes[&copy].record.copy_of, Some(a));
    assert_eq!(blocks(&m, copy), [(0, 9)]);
    assert_is_tree(&m);
}
