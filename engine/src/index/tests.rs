//! Unit tests of the index: buffered writes, carried caches and groups
//! committed in the background answer as plain transactions do, and an
//! index of another layout is rebuilt.

use std::path::Path;

use redb::{Database, TableDefinition};

use super::schema::META_VERSION;
use super::*;
use crate::clock::VectorClock;
use crate::error::Error;
use crate::event::{AttrChange, Attrs, Change, Event, NodeKind};
use crate::ids::{LogPos, MachineId, NodeId, Timestamp};

const M: MachineId = MachineId(7);

/// Events of machine [`M`] in the making, one per microsecond of log time.
#[derive(Default)]
struct Events {
    out: Vec<(LogPos, Event)>,
    clock: VectorClock,
}

impl Events {
    fn push(&mut self, node: NodeId, change: Change) {
        self.clock.tick(M);
        let seq = self.out.len() as u64 + 1;
        let time = Timestamp(1_000 * seq as i64);
        let event = Event { node, machine: M, seq, time, clock: self.clock.clone(), change, base: None };
        self.out.push((LogPos { machine: M, segment: 0, offset: seq * 100 }, event));
    }
}

fn create(parent: NodeId, name: String, kind: NodeKind) -> Change {
    Change::Create { parent, name: name.into_bytes(), kind, attrs: Attrs::default(), target: Vec::new() }
}

/// 400 events over one directory: creates, renames, removes, and one
/// file changed after each, for several checkpoints.
fn events() -> Vec<(LogPos, Event)> {
    let dir = NodeId::new(1, M);
    let mut ev = Events::default();
    ev.push(dir, create(NodeId::ROOT, "d".into(), NodeKind::Dir));
    for i in 2..150u64 {
        let f = NodeId::new(i, M);
        ev.push(f, create(dir, format!("f{i}"), NodeKind::File));
        match i % 3 {
            0 => ev.push(f, Change::Move { parent: NodeId::ROOT, name: format!("moved{i}").into_bytes() }),
            1 => ev.push(f, Change::Remove),
            _ => {}
        }
        ev.push(NodeId::new(2, M), Change::SetAttrs(AttrChange { mode: Some(i as u32), ..Default::default() }));
    }
    ev.out
}

/// What every query that reads a buffered table answers, plus nodes,
/// lookups, counters and checkpoints.
/// Applies `events` through `w`.
fn apply_all(w: &mut IndexWriter, events: &[(LogPos, Event)]) {
    for (pos, e) in events {
        w.apply(*pos, e, 4096).expect("apply");
    }
}

/// A new index at `path` holding `events`, committed in one transaction.
fn committed(path: &Path, events: &[(LogPos, Event)]) -> Index {
    let (index, _) = Index::open(path).expect("open");
    let mut w = index.write().expect("write");
    apply_all(&mut w, events);
    w.commit(false).expect("commit");
    index
}

macro_rules! answers {
    ($ix:expr, $events:expr) => {{
        let ix = $ix;
        let mut out: Vec<String> = Vec::new();
        let dir = NodeId::new(1, M);
        let mid = Timestamp(1_000 * ($events.len() as i64 / 2));
        // Lookups first: `read_dir` writes the buffered entries out.
        for (_, e) in $events.iter() {
            if let Change::Create { parent, name, .. } | Change::Move { parent, name } = &e.change {
                out.push(format!("{:?}", ix.lookup(*parent, name).expect("lookup")));
                out.push(format!("{:?}", ix.lookup_at(*parent, name, mid).expect("lookup_at")));
            }
        }
        for d in [NodeId::ROOT, dir] {
            out.push(format!("{:?}", ix.read_dir(d, None, usize::MAX).expect("read_dir")));
            out.push(format!("{:?}", ix.read_dir_at(d, mid).expect("read_dir_at")));
        }
        for (_, e) in $events.iter() {
            let n = e.node;
            out.push(format!("{:?}", ix.node(n).expect("node")));
            out.push(format!("{:?}", ix.history(n, Timestamp(i64::MAX)).expect("history")));
            out.push(format!("{:?}", ix.history_after(n, None, mid).expect("history_after")));
            out.push(format!("{:?}", ix.checkpoint_at(n, Timestamp(i64::MAX)).expect("checkpoint")));
            out.push(format!("{:?}", ix.event_location(M, e.seq).expect("event_location")));
        }
        out.push(format!("{:?} {:?}", ix.applied(M).expect("applied"), ix.machines().expect("machines")));
        out.push(format!("{:?}", ix.counts().expect("counts")));
        out
    }};
}

/// The writer's queries see its buffered writes, and buffering changes
/// nothing: one transaction for all events answers, before and after
/// its commit, what a transaction per event does.
/// The test events; an index at `dir` holding their first half,
/// committed; and the answers of a second index holding only that half.
fn half_committed(dir: &Path) -> (Vec<(LogPos, Event)>, Index, Vec<String>) {
    let events = events();
    let first = &events[..events.len() / 2];
    let reference = committed(&dir.join("reference.redb"), first);
    let after_first = answers!(reference.read().expect("read"), events);
    let index = committed(&dir.join("index.redb"), first);
    (events, index, after_first)
}

#[test]
fn buffered_writes_answer_like_committed_ones() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let events = events();
    let (one, _) = Index::open(&tmp.path().join("one.redb")).expect("open");
    let mut w = one.write().expect("write");
    apply_all(&mut w, &events);
    let before_commit = answers!(&w, events);
    w.commit(false).expect("commit");
    let after_commit = answers!(one.read().expect("read"), events);

    let (each, _) = Index::open(&tmp.path().join("each.redb")).expect("open");
    for (pos, e) in &events {
        let mut w = each.write().expect("write");
        w.apply(*pos, e, 4096).expect("apply");
        w.commit(false).expect("commit");
    }
    let per_event = answers!(each.read().expect("read"), events);

    assert_eq!(before_commit, per_event);
    assert_eq!(after_commit, per_event);
    let checkpoints = per_event.iter().filter(|a| a.starts_with("Some(((")).count();
    assert!(checkpoints > 0, "the often-changed file has checkpoints");
}

/// A writer's caches go on to the next writer only when it commits: the
/// changes of a transaction dropped halfway (as the engine drops one
/// whose work failed) are not seen by the next one, even through caches.
#[test]
fn a_dropped_transaction_leaves_nothing_in_the_next_writers_caches() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (events, index, after_first) = half_committed(tmp.path());
    let rest = &events[events.len() / 2..];
    let mut w = index.write().expect("write");
    apply_all(&mut w, rest);
    assert_ne!(answers!(&w, events), after_first, "the second half changes the answers");
    drop(w);
    let mut w = index.write().expect("write");
    assert_eq!(answers!(&w, events), after_first, "the next writer sees only what was committed");
    apply_all(&mut w, rest);
    w.commit(false).expect("commit");

    let whole = committed(&tmp.path().join("whole.redb"), &events);
    assert_eq!(answers!(index.read().expect("read"), events), answers!(whole.read().expect("read"), events));
}

/// Applies `events` in groups of `group`, each committed in the
/// background while the next one is applied (or inline when its caches
/// were emptied), reading every answer through each new writer while
/// the group before it may still be committing; the answers through the
/// last writer, and after its commit, are those of one transaction.
#[test]
fn groups_committed_in_the_background_answer_like_one_transaction() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let events = events();
    let whole = committed(&tmp.path().join("whole.redb"), &events);
    let want = answers!(whole.read().expect("read"), events);

    for group in [1, 7, 40] {
        let (index, _) = Index::open(&tmp.path().join(format!("bg{group}.redb"))).expect("open");
        let (alongside, _) = Index::open(&tmp.path().join(format!("one{group}.redb"))).expect("open");
        let mut one = alongside.write().expect("write");
        let mut w = index.write_detached().expect("write");
        let (mut background, mut inline) = (0, 0);
        for chunk in events.chunks(group) {
            for (pos, e) in chunk {
                w.apply(*pos, e, 4096).expect("apply");
                one.apply(*pos, e, 4096).expect("apply");
            }
            w = if w.can_commit_in_background() {
                background += 1;
                index.commit_in_background(w).expect("hand off")
            } else {
                inline += 1;
                w.commit(false).expect("commit");
                index.write_detached().expect("write")
            };
            // Through the caches and the snapshot, without waiting for
            // the commit: as the one transaction answers at this point.
            for (_, e) in &events {
                assert_eq!(w.node(e.node).expect("node"), one.node(e.node).expect("node"), "{}", e.node);
                if let Change::Create { parent, name, .. } = &e.change {
                    assert_eq!(w.lookup(*parent, name).expect("lookup"), one.lookup(*parent, name).expect("lookup"));
                }
            }
        }
        assert!(background > 0 && inline > 0, "both ways taken: {background} in the background, {inline} inline");
        assert_eq!(answers!(&w, events), want, "through the last writer, groups of {group}");
        w.commit(false).expect("commit");
        assert_eq!(answers!(index.read().expect("read"), events), want, "committed, groups of {group}");
    }
}

/// A commit that comes between a group committed in the background and
/// the writer after it (the engine never makes one) leaves that
/// writer's caches possibly stale: it refuses to begin its transaction.
#[test]
fn a_commit_between_a_background_group_and_the_next_writer_is_caught() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let events = events();
    let (index, _) = Index::open(&tmp.path().join("index.redb")).expect("open");
    let mut w = index.write_detached().expect("write");
    apply_all(&mut w, &events[..10]);
    let mut next = index.commit_in_background(w).expect("hand off");
    index.write().expect("another writer").commit(false).expect("commit");
    for (pos, e) in &events[10..20] {
        next.apply(*pos, e, 4096).expect("apply on the caches");
    }
    let refused = next.commit(false);
    assert!(matches!(&refused, Err(Error::Index { source: IndexError::CommitBetween, .. })), "{refused:?}");
}

/// When a group committed in the background fails, the writer after it
/// (whose caches claim that group's changes) can neither begin its
/// transaction nor commit, and the next writer starts from the index as
/// the last good commit left it.
#[test]
fn a_failed_background_commit_fails_the_writer_after_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (events, index, after_first) = half_committed(tmp.path());
    let rest = &events[events.len() / 2..];
    let mut w = index.write_detached().expect("write");
    let (doomed, after) = rest.split_at(5);
    apply_all(&mut w, doomed);
    assert!(w.can_commit_in_background());
    index.fail_next_background.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut next = index.commit_in_background(w).expect("hand off");
    for (pos, e) in &after[..5] {
        next.apply(*pos, e, 4096).expect("apply on the caches");
    }
    assert!(next.commit(false).is_err(), "a writer after a failed group must not commit");
    assert!(index.wait_in_flight().is_err());
    assert!(index.write().is_err(), "no writer until the failure is taken");
    assert!(index.write_detached().is_err(), "no writer until the failure is taken");
    assert_eq!(index.take_failure().as_deref(), Some("injected failure"));
    assert_eq!(index.take_failure(), None);
    assert_eq!(answers!(&index.write().expect("write"), events), after_first);
    assert_eq!(answers!(index.read().expect("read"), events), after_first);
}

/// An index of another layout version whose tables have other types
/// (redb refuses to open those) is wiped and rebuilt, not refused.
#[test]
fn an_index_of_another_layout_with_other_table_types_is_rebuilt() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("index.redb");
    {
        let db = Database::create(&path).expect("create");
        let txn = db.begin_write().expect("write");
        for name in ["nodes", "dirents", "history"] {
            let def: TableDefinition<u64, u64> = TableDefinition::new(name);
            txn.open_table(def).expect("table").insert(1, 2).expect("insert");
        }
        let meta: TableDefinition<&str, u64> = TableDefinition::new("meta");
        txn.open_table(meta).expect("meta").insert(META_VERSION, INDEX_VERSION + 1).expect("insert");
        txn.commit().expect("commit");
    }
    let (index, rebuild) = Index::open(&path).expect("an old layout is rebuilt");
    assert!(rebuild);
    assert_eq!(index.read().expect("read").meta(META_VERSION).expect("version"), INDEX_VERSION);
    let mut w = index.write().expect("a writer opens the new tables");
    let (pos, e) = &events()[0];
    w.apply(*pos, e, 4096).expect("apply");
    w.commit(false).expect("commit");
    assert!(index.read().expect("read").node(e.node).expect("node").is_some());
}

/// A failure of redb keeps redb's error as the source, and the OS error
/// under it: a missing file is ENOENT to the caller, not a string.
#[test]
fn a_redb_failure_keeps_its_type_and_its_os_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("missing.redb");
    let err = Index::open_read_only(&path).expect_err("no such file");
    assert_eq!(err.os_error(), Some(libc::ENOENT), "{err}");
    let Error::Index { path: named, source } = &err else { panic!("not an index error: {err:?}") };
    assert_eq!(named, &path);
    assert!(matches!(source, IndexError::Redb { op: "open read-only", .. }), "{source:?}");
    let IndexError::Redb { source: redb, .. } = source else { unreachable!() };
    assert!(matches!(&**redb, redb::Error::Io(_)), "{redb:?}");
    let chained = std::error::Error::source(source).expect("redb's error is the source");
    assert!(chained.downcast_ref::<Box<redb::Error>>().is_some(), "{chained:?}");
    assert!(err.to_string().starts_with(&format!("index {}: open read-only: ", path.display())), "{err}");
}

/// A stored value that does not decode is reported as damage of the table
/// it is in, with the node it belongs to.
#[test]
fn a_value_that_does_not_decode_names_its_table_and_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("index.redb");
    let node = NodeId::new(9, M);
    drop(Index::open(&path).expect("open"));
    {
        let db = Database::create(&path).expect("create");
        let txn = db.begin_write().expect("write");
        let nodes: TableDefinition<u128, &[u8]> = TableDefinition::new("nodes");
        txn.open_table(nodes).expect("nodes").insert(node.0, &b"not a record"[..]).expect("insert");
        txn.commit().expect("commit");
    }
    let (index, rebuild) = Index::open(&path).expect("open");
    assert!(!rebuild);
    let err = index.read().expect("read").node(node).expect_err("garbage");
    assert!(
        matches!(&err, Error::Index { source: IndexError::Corrupt { table: "nodes", what }, .. } if what.contains(&node.to_string())),
        "{err:?}"
    );
    assert_eq!(err.os_error(), None);
}

/// A full disk under redb reaches the caller as ENOSPC (the FUSE adapter
/// returns it as it is), whichever index operation met it.
#[test]
fn a_full_disk_under_redb_is_enospc() {
    let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
    let err = IndexError::redb("commit", full).at(Path::new("/data/index.redb"));
    assert_eq!(err.os_error(), Some(libc::ENOSPC));
    assert!(err.to_string().starts_with("index /data/index.redb: commit: "), "{err}");
    let refused = IndexError::BackgroundFailed { why: "no room".into() }.at(Path::new("/data/index.redb"));
    assert_eq!(refused.os_error(), None, "a refusal is no OS error");
}

/// Events over one directory where names come, go and come back, some as
/// directories: every name's history has several versions.
fn churn_events() -> Vec<(LogPos, Event)> {
    let dir = NodeId::new(1, M);
    let mut ev = Events::default();
    ev.push(dir, create(NodeId::ROOT, "d".into(), NodeKind::Dir));
    let mut next = 2u64;
    for round in 0..4u64 {
        for i in 0..40u64 {
            let kind = if i % 4 == 0 { NodeKind::Dir } else { NodeKind::File };
            // Each round reuses the names of the rounds before it.
            let name = format!("n{:02}", (i * 7 + round) % 40);
            let node = NodeId::new(next, M);
            next += 1;
            ev.push(node, create(dir, name, kind));
            match (i + round) % 5 {
                0 => ev.push(node, Change::Remove),
                1 => ev.push(node, Change::Move { parent: NodeId::ROOT, name: format!("out{next}").into_bytes() }),
                2 => ev.push(node, Change::Move { parent: dir, name: format!("m{:02}", i % 9).into_bytes() }),
                _ => {}
            }
        }
    }
    ev.out
}

/// A past directory listed a page at a time, from each name on, is the
/// whole listing (`read_dir_at`) cut into pages; its directory count is the
/// listing's; a lookup as of a time finds what the listing shows.
#[test]
fn past_pages_are_the_past_listing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let events = churn_events();
    let index = committed(&tmp.path().join("index.redb"), &events);
    let ix = index.read().expect("read");
    let dir = NodeId::new(1, M);
    let last = events.len() as i64;
    let (mut most, mut most_dirs) = (0, 0);
    for step in (0..=last + 1).step_by(7) {
        let at = Timestamp(1_000 * step);
        for d in [NodeId::ROOT, dir] {
            let whole = ix.read_dir_at(d, at).expect("read_dir_at");
            for limit in [1, 3, 16, usize::MAX] {
                let mut paged = Vec::new();
                let mut after: Option<Vec<u8>> = None;
                loop {
                    let page = ix.read_dir_page_at(d, after.as_deref(), limit, at).expect("page");
                    assert!(page.len() <= limit);
                    let Some(e) = page.last() else { break };
                    after = Some(e.name.clone());
                    paged.extend(page);
                }
                assert_eq!(paged, whole, "dir {d} at {at:?}, pages of {limit}");
            }
            // From a name that is not in the directory: the names after it.
            let from = b"n05x".as_slice();
            let rest: Vec<_> = whole.iter().filter(|e| e.name.as_slice() > from).cloned().collect();
            assert_eq!(ix.read_dir_page_at(d, Some(from), usize::MAX, at).expect("page"), rest);
            let dirs = whole.iter().filter(|e| e.kind == NodeKind::Dir).count() as u64;
            assert_eq!(ix.subdirs_at(d, at).expect("subdirs_at"), dirs, "dir {d} at {at:?}");
            (most, most_dirs) = (most.max(whole.len()), most_dirs.max(dirs));
            for e in &whole {
                assert_eq!(ix.lookup_at(d, &e.name, at).expect("lookup_at"), Some((e.node, e.kind)));
            }
        }
    }
    assert!(most >= 30 && most_dirs >= 5, "the listings compared were not trivial: {most} entries, {most_dirs} dirs");
}
