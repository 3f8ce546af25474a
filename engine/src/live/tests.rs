//! Tests of the live tree's group commits.

use super::*;
use crate::config::Config;
use crate::event::{Attrs, NodeKind};
use crate::ids::MachineId;
use crate::store::Store;
use std::sync::atomic::Ordering::SeqCst;

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
    e.index.fail_next_background.store(true, SeqCst);
    // Until a group has gone to the background (and failed), then more.
    while e.index.fail_next_background.load(SeqCst) {
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
