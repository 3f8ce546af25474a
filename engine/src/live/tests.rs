//! Tests of the live tree: group commits and the full-disk path.

use super::*;
use crate::config::Config;
use crate::event::{Attrs, NodeKind};
use crate::ids::MachineId;
use crate::store::Store;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

fn listed(e: &LiveTree) -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> =
        e.read_dir(NodeId::ROOT, None, usize::MAX).expect("read_dir").into_iter().map(|d| d.name).collect();
    names.sort();
    names
}

/// The changes of a group whose background commit failed are applied
/// again from the log: every file created before, in and after that
/// group is in the live tree, and after a reopen.
#[test]
fn a_group_that_failed_in_the_background_is_applied_again_from_the_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    Store::init(&dir, Config::new_default(MachineId::random())).expect("init");
    let e = LiveTree::open(&dir).expect("open");
    let mut names = Vec::new();
    let create = |e: &LiveTree, i: usize| {
        let name = format!("f{i:04}").into_bytes();
        e.create(NodeId::ROOT, &name, NodeKind::File, Attrs::default(), b"").expect("create");
        name
    };
    names.extend((0..10).map(|i| create(&e, i)));
    e.pipeline.index().fail_next_background.store(true, SeqCst);
    // Until a group has gone to the background (and failed), then more.
    while e.pipeline.index().fail_next_background.load(SeqCst) {
        names.push(create(&e, names.len()));
        std::thread::sleep(Duration::from_millis(1));
    }
    for _ in 0..20 {
        names.push(create(&e, names.len()));
    }
    names.sort();
    assert_eq!(listed(&e), names);
    drop(e);
    let e = LiveTree::open(&dir).expect("reopen");
    assert_eq!(listed(&e), names);
}

/// A block write that meets a full disk asks the room maker the layer
/// above installed, then tries again; with none installed it fails with
/// ENOSPC, and nothing is evicted from inside the engine.
#[test]
fn a_full_disk_asks_the_installed_room_maker_then_retries() {
    use crate::faults::{Fault, Faults, FaultyStorage};
    use crate::storage::FsStorage;
    use std::sync::atomic::AtomicU32;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut c = Config::new_default(MachineId::random());
    c.remote = Some(tmp.path().join("remote").display().to_string());
    Store::init(&dir, c).expect("init");
    let faults = Faults::new();
    let storage = Arc::new(FaultyStorage::new(Arc::new(FsStorage), faults.clone()));
    let e = LiveTree::open_with(storage, &dir).expect("open");
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    faults.fail_only(Fault::NoSpace, "blobs");
    let err = e.put_block(&data).expect_err("the disk is full and nothing makes room");
    assert_eq!(err.os_error(), Some(libc::ENOSPC), "{err}");
    let calls = Arc::new(AtomicU32::new(0));
    let (counted, freed) = (calls.clone(), faults.clone());
    e.set_room_maker(Some(Arc::new(move |_: &LiveTree| {
        counted.fetch_add(1, SeqCst);
        freed.stop();
        Ok(true)
    })));
    let block = e.put_block(&data).expect("stored once room was made");
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(e.read_block(&block).expect("read back"), data);
}
