//! A disk that fails writes at random points (ENOSPC or EIO, in the log,
//! the blob store and the redb index alike; see `engine::faults`): the
//! engine never panics, never loses a change it acknowledged, keeps every
//! operation whole or absent, and takes changes again as soon as the
//! faults stop, without a restart. A reopen and `verify` then agree.
//!
//! The model is a flat directory of files. An operation that returned Ok
//! is applied to it. One that failed either happened or did not (a change
//! can reach the log and fail only its index work): the faults pause, a
//! probe change must succeed (recovery without a restart), and the names
//! the operation touched must show exactly the state before it or after
//! it, never a mix.

use std::collections::BTreeMap;
use std::sync::Arc;

use engine::config::Config;
use engine::event::{Attrs, BlockChange, NodeKind};
use engine::faults::{Fault, Faults, FaultyStorage};
use engine::ids::{MachineId, NodeId};
use engine::storage::FsStorage;
use engine::RenameFlags;
use engine::{LiveTree, Store, TreeRead};
use proptest::prelude::*;

const BS: u64 = 4096;
const NAMES: u8 = 4;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Clone, Debug)]
enum Op {
    Create { name: u8 },
    Write { name: u8, len: usize, fill: u8 },
    Truncate { name: u8, len: u64 },
    Rename { from: u8, to: u8 },
    Unlink { name: u8 },
    Sync,
    Faults { fault: Fault, one_in: u32, seed: u64 },
    NoFaults,
}

fn op() -> impl Strategy<Value = Op> {
    let name = 0..NAMES;
    prop_oneof![
        4 => (name.clone(), 0..3 * BS as usize, any::<u8>()).prop_map(|(name, len, fill)| Op::Write { name, len, fill }),
        1 => (name.clone(), 0..3 * BS).prop_map(|(name, len)| Op::Truncate { name, len }),
        2 => (name.clone(), name.clone()).prop_map(|(from, to)| Op::Rename { from, to }),
        1 => name.prop_map(|name| Op::Unlink { name }),
        1 => Just(Op::Sync),
        2 => (prop_oneof![Just(Fault::NoSpace), Just(Fault::Io)], 1..6u32, any::<u64>())
            .prop_map(|(fault, one_in, seed)| Op::Faults { fault, one_in, seed }),
        1 => Just(Op::NoFaults),
    ]
}

fn file_name(n: u8) -> Vec<u8> {
    format!("f{n}").into_bytes()
}

/// Content a write of `len` bytes puts in a file: varied per block, so a
/// block from the wrong write shows.
fn content(len: usize, fill: u8) -> Vec<u8> {
    (0..len).map(|i| fill.wrapping_add((i / 97) as u8)).collect()
}

fn lookup(e: &LiveTree, name: &[u8]) -> engine::Result<Option<NodeId>> {
    match e.lookup(NodeId::ROOT, name) {
        Ok(n) => Ok(Some(n.id)),
        Err(err) if err.fs_error() == Some(engine::error::FsError::NotFound) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Writes the whole file `name`, as the mount does: blocks first (a
/// failure there leaves nothing in the log), then one content change.
fn write(e: &LiveTree, name: &[u8], data: &[u8]) -> engine::Result<()> {
    let Some(id) = lookup(e, name)? else { return Ok(()) };
    let mut blocks = Vec::new();
    for (i, chunk) in data.chunks(BS as usize).enumerate() {
        blocks.push(BlockChange { index: i as u64, block: Some(e.put_block(chunk)?) });
    }
    e.write_blocks(id, data.len() as u64, blocks)?;
    Ok(())
}

/// One engine call of an operation: a write creates its file first, in
/// an engine call of its own.
fn steps(op: &Op) -> Vec<Op> {
    match op {
        Op::Write { name, .. } => vec![Op::Create { name: *name }, op.clone()],
        _ => vec![op.clone()],
    }
}

/// Applies `op` (one engine call) to the engine; `Err` if the engine
/// refused it. Model changes are made by the caller.
fn run(e: &LiveTree, op: &Op) -> engine::Result<()> {
    match op {
        Op::Create { name } => match lookup(e, &file_name(*name))? {
            Some(_) => Ok(()),
            None => e
                .create(NodeId::ROOT, &file_name(*name), NodeKind::File, Attrs { mode: 0o644, ..Attrs::default() }, b"")
                .map(|_| ()),
        },
        Op::Write { name, len, fill } => write(e, &file_name(*name), &content(*len, *fill)),
        Op::Truncate { name, len } => match lookup(e, &file_name(*name))? {
            Some(id) => e.truncate(id, *len).map(|_| ()),
            None => Ok(()),
        },
        Op::Rename { from, to } => {
            match e.rename(NodeId::ROOT, &file_name(*from), NodeId::ROOT, &file_name(*to), RenameFlags::default()) {
                Err(err) if err.fs_error() == Some(engine::error::FsError::NotFound) => Ok(()),
                r => r.map(|_| ()),
            }
        }
        Op::Unlink { name } => match e.unlink(NodeId::ROOT, &file_name(*name)) {
            Err(err) if err.fs_error() == Some(engine::error::FsError::NotFound) => Ok(()),
            r => r,
        },
        Op::Sync => e.sync(),
        Op::Faults { .. } | Op::NoFaults => Ok(()),
    }
}

/// The model after `op` succeeded, and the names it touches.
fn apply(model: &Model, op: &Op) -> (Model, Vec<Vec<u8>>) {
    let mut m = model.clone();
    let touched = match op {
        Op::Create { name } => {
            m.entry(file_name(*name)).or_default();
            vec![file_name(*name)]
        }
        Op::Write { name, len, fill } => {
            if let Some(d) = m.get_mut(&file_name(*name)) {
                *d = content(*len, *fill);
            }
            vec![file_name(*name)]
        }
        Op::Truncate { name, len } => {
            if let Some(d) = m.get_mut(&file_name(*name)) {
                d.resize(*len as usize, 0);
            }
            vec![file_name(*name)]
        }
        Op::Rename { from, to } => {
            if let Some(d) = m.remove(&file_name(*from)) {
                m.insert(file_name(*to), d);
            }
            vec![file_name(*from), file_name(*to)]
        }
        Op::Unlink { name } => {
            m.remove(&file_name(*name));
            vec![file_name(*name)]
        }
        Op::Sync | Op::Faults { .. } | Op::NoFaults => vec![],
    };
    (m, touched)
}

fn read(e: &LiveTree, name: &[u8]) -> Option<Vec<u8>> {
    let id = lookup(e, name).expect("lookup with the faults off")?;
    Some(e.read_file(id).expect("read with the faults off"))
}

/// Every file of the root, read back.
fn tree(e: &LiveTree) -> Model {
    let entries = e.read_dir(NodeId::ROOT, None, 1000).expect("read_dir with the faults off");
    entries
        .into_iter()
        .filter(|d| d.name != b"probe")
        .map(|d| (d.name.clone(), e.read_file(d.node).expect("read")))
        .collect()
}

/// Names and sizes, and where the first byte differs: contents are too
/// long to print.
fn same(seen: &Model, model: &Model, when: &str) {
    let shape =
        |m: &Model| m.iter().map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.len())).collect::<Vec<_>>();
    assert_eq!(shape(seen), shape(model), "{when}: names and sizes");
    for (name, data) in seen {
        let first = data.iter().zip(&model[name]).position(|(a, b)| a != b);
        assert_eq!(first, None, "{when}: {} differs from byte", String::from_utf8_lossy(name));
    }
}

/// A change that must succeed once the faults are off: the engine took
/// changes again without a restart.
fn probe(e: &LiveTree) {
    e.create(NodeId::ROOT, b"probe", NodeKind::File, Attrs { mode: 0o644, ..Attrs::default() }, b"")
        .expect("a change succeeds once the faults stop");
    e.unlink(NodeId::ROOT, b"probe").expect("and another");
}

fn check(ops: Vec<Op>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut config = Config::new_default(MachineId::random());
    config.block_size = BS;
    config.small_block = BS;
    Store::init(&dir, config).expect("init");
    let faults = Faults::new();
    let storage = Arc::new(FaultyStorage::new(Arc::new(FsStorage), faults.clone()));
    let e = LiveTree::open_with(storage, &dir).expect("open");
    let mut model = Model::new();
    let mut plan = None;
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Faults { fault, one_in, seed } => {
                plan = Some((*fault, *one_in, *seed));
                faults.fail(*fault, *one_in, *seed);
            }
            Op::NoFaults => {
                plan = None;
                faults.stop();
            }
            _ => {}
        }
        for op in steps(op) {
            let (after, touched) = apply(&model, &op);
            match run(&e, &op) {
                Ok(()) => model = after,
                Err(err) => {
                    assert!(plan.is_some(), "step {step}: {op:?} failed with no fault injected: {err}");
                    faults.stop();
                    probe(&e);
                    let seen: Vec<Option<Vec<u8>>> = touched.iter().map(|n| read(&e, n)).collect();
                    let before: Vec<Option<Vec<u8>>> = touched.iter().map(|n| model.get(n).cloned()).collect();
                    let done: Vec<Option<Vec<u8>>> = touched.iter().map(|n| after.get(n).cloned()).collect();
                    if seen == done {
                        model = after;
                    } else {
                        assert!(
                            seen == before,
                            "step {step}: {op:?} failed ({err}) and left a state that is neither before nor after it"
                        );
                    }
                    if let Some((fault, one_in, seed)) = plan {
                        faults.fail(fault, one_in, seed.wrapping_add(step as u64));
                    }
                }
            }
        }
    }
    faults.stop();
    probe(&e);
    same(&tree(&e), &model, "live tree after the faults stopped");
    e.close().expect("close with the faults off");
    drop(e);
    let e = LiveTree::open(&dir).expect("reopen");
    same(&tree(&e), &model, "after a reopen");
    drop(e);
    let report = engine::forensics::verify(&dir).expect("verify");
    assert!(report.is_clean(), "verify: {report:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn faults_at_random_points_lose_nothing_acknowledged(ops in proptest::collection::vec(op(), 1..40)) {
        check(ops);
    }
}

/// A rename over an existing file is two events (remove the target, move
/// the source): when the second append fails, the first must not stay.
#[test]
fn a_rename_over_a_file_whose_second_event_fails_is_not_half_done() {
    for one_in in [1, 2, 3] {
        for seed in 0..16 {
            check(vec![
                Op::Write { name: 0, len: 5000, fill: 1 },
                Op::Write { name: 1, len: 10, fill: 2 },
                Op::Faults { fault: Fault::NoSpace, one_in, seed },
                Op::Rename { from: 0, to: 1 },
            ]);
        }
    }
}

/// A content change that ends before the content it replaces drops the
/// blocks past its end: extending the file afterwards shows zeros, not the
/// old bytes (found by the property above).
#[test]
fn a_shorter_write_then_an_extension_shows_zeros() {
    check(vec![
        Op::Write { name: 0, len: 4097, fill: 0 },
        Op::Rename { from: 0, to: 1 },
        Op::Write { name: 1, len: 0, fill: 0 },
        Op::Truncate { name: 1, len: 98 },
    ]);
}
