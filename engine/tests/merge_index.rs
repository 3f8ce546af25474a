//! The redb index merges exactly like the reference model: random events of
//! several simulated machines are written into their own logs in a data
//! dir, in two rounds, and the engine's tree (caught up on open, replayed
//! when older events arrive late) must equal `merge` of the same events.

use std::collections::BTreeMap;
use std::sync::Arc;

use engine::event::Event;
use engine::ids::MachineId;
use engine::log::LogWriter;
use engine::merge::{merge, Merged};
use engine::storage::FsStorage;
use engine::{LiveTree, PastView, Store, TreeRead};
use proptest::prelude::*;
use testkit::sim::*;

/// Appends to each machine's log the events it does not have yet.
fn write_logs(dir: &std::path::Path, events: &[Event], written: &mut BTreeMap<MachineId, u64>) {
    let mut by_machine: BTreeMap<MachineId, Vec<&Event>> = BTreeMap::new();
    for e in events {
        by_machine.entry(e.machine).or_default().push(e);
    }
    for (m, mut evs) in by_machine {
        evs.sort_by_key(|e| e.seq);
        let done = written.entry(m).or_insert(0);
        let new: Vec<Event> = evs.into_iter().filter(|e| e.seq > *done).cloned().collect();
        if new.is_empty() {
            continue;
        }
        let (mut w, _) = LogWriter::open(Arc::new(FsStorage), &dir.join("log"), m, 1 << 20).expect("log");
        w.append(&new).expect("append");
        w.sync().expect("sync");
        *done = new.last().map_or(*done, |e| e.seq);
    }
}

/// The index holds exactly what the model merged: every node record and
/// block list, every entry, the live count and the conflicts
/// (`testkit::fuzz::engine_matches`, shared with the fuzz targets).
fn assert_same(e: &LiveTree, model: &Merged) -> Result<(), TestCaseError> {
    testkit::fuzz::engine_matches(e, model).map_err(TestCaseError::fail)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(32), ..ProptestConfig::default() })]

    #[test]
    fn index_merges_like_the_model(
        (replicas, actions) in (2usize..=3).prop_flat_map(|n| (Just(n), proptest::collection::vec(action(n), 1..40))),
        split in 0usize..40,
        chunk in 1usize..6,
    ) {
        // Catch-up reads each log a few events at a time, so the merge of
        // chunks read from several logs at once is what is checked.
        engine::set_catch_up_chunk(chunk);
        let mut reps: Vec<Replica> = (0..replicas).map(Replica::new).collect();
        let split = split.min(actions.len());
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut config = engine::config::Config::new_default(MachineId(0xfeed));
        config.block_size = BS;
        config.small_block = 1024;
        Store::init(&dir, config).expect("init");
        let mut written = BTreeMap::new();
        let all = |reps: &[Replica]| -> Vec<Event> {
            let mut m = BTreeMap::new();
            for r in reps {
                m.extend(r.known.iter().map(|(k, v)| (*k, v.clone())));
            }
            m.into_values().collect()
        };
        // Round one: what exists at the split point.
        for a in &actions[..split] {
            perform(&mut reps, a);
        }
        let first = all(&reps);
        write_logs(&dir, &first, &mut written);
        let e = LiveTree::open(&dir).expect("open");
        assert_same(&e, &merge(&first, BS))?;
        // Round two, imported into the open engine: the rest, including
        // older events of slow machines.
        for a in &actions[split..] {
            perform(&mut reps, a);
        }
        let everything = all(&reps);
        write_logs(&dir, &everything, &mut written);
        let import = e.import().expect("import");
        if std::env::var("MERGE_STATS").is_ok() {
            eprintln!("replayed {}", import.replayed);
        }
        let model = merge(&everything, BS);
        assert_same(&e, &model)?;
        drop(e);
        // And the same again from the logs alone.
        std::fs::remove_file(dir.join("index.redb")).expect("drop index");
        let e = LiveTree::open(&dir).expect("reopen");
        assert_same(&e, &model)?;
        drop(e);
        // A past moment shows the merge of the events up to it: names, and
        // each file's content (conflict copies included).
        let mut times: Vec<_> = everything.iter().map(|e| e.time).collect();
        times.sort();
        times.dedup();
        for t in times.iter().step_by(times.len().div_ceil(4).max(1)).chain(times.last()) {
            let past: Vec<Event> = everything.iter().filter(|e| e.time <= *t).cloned().collect();
            let view = PastView::open(&dir, *t).expect("open_at");
            view_matches(&view, &merge(&past, BS))?;
        }
    }
}

/// The point-in-time `view` lists what `model` lists, and every file in it
/// has the model's size and blocks.
fn view_matches(view: &PastView, model: &Merged) -> Result<(), TestCaseError> {
    for ((dir, name), child) in &model.dirents {
        let got = view.lookup(*dir, name).map(|n| n.id).ok();
        prop_assert_eq!(got, Some(*child), "entry {}/{:?} at {:?}", dir, String::from_utf8_lossy(name), view.at());
        let want = &model.nodes[child];
        if want.record.kind == engine::event::NodeKind::Dir {
            let n = view.node(*child).expect("node");
            prop_assert_eq!(n.subdirs, want.record.subdirs, "subdirectories of {} at {:?}", child, view.at());
        }
        if want.record.kind == engine::event::NodeKind::File {
            let n = view.node(*child).expect("node");
            prop_assert_eq!(n.stored_bytes, want.record.stored, "stored bytes of {} at {:?}", child, view.at());
            prop_assert_eq!(n.size, want.record.size, "size of {} at {:?}", child, view.at());
            let blocks = view.file_blocks(*child, 0, u64::MAX).expect("blocks");
            prop_assert!(
                blocks.iter().copied().eq(want.blocks.iter().map(|(i, b)| (*i, *b))),
                "blocks of {} at {:?}: {:?} vs {:?}",
                child,
                view.at(),
                blocks,
                want.blocks
            );
        }
    }
    Ok(())
}
