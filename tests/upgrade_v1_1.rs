//! A whole data dir written by format 1.1 (records of version 2: no content
//! base) opens without user action: FORMAT is upgraded to the current
//! version, every old event reads as current, the tree and its content are
//! there, new events are written as version 3, and a file written by the
//! old version takes part in content conflicts like any other.
//!
//! The fixture `tests/fixtures/v1.1-datadir/` was made once by
//! `generate_v1_1_datadir` (ignored) with the syncer of format 1.1. Never
//! regenerate it to make a test pass: if it stops opening, old data dirs in
//! the field would too.

use engine::event::{AttrChange, Attrs, BlockChange, NodeKind};
use engine::ids::{MachineId, NodeId};
use engine::TreeRead;

mod support;

const M: MachineId = MachineId(0x0000_0000_0000_00c2);

#[test]
#[ignore = "writes the checked-in fixture; run once by hand"]
fn generate_v1_1_datadir() {
    let dir = support::fixture("v1.1-datadir");
    support::init_fixture(&dir, M);
    let e = engine::LiveTree::open(&dir).expect("open");
    let attrs = |mode| Attrs { mode, ..Attrs::default() };
    let docs = e.create(NodeId::ROOT, b"docs", NodeKind::Dir, attrs(0o755), b"").expect("mkdir").id;
    let f = e.create(docs, b"notes.txt", NodeKind::File, attrs(0o644), b"").expect("create").id;
    let data = support::multiples(3, 9000);
    let mut blocks = Vec::new();
    for (i, chunk) in data.chunks(4096).enumerate() {
        blocks.push(BlockChange { index: i as u64, block: Some(e.put_block(chunk).expect("put")) });
    }
    e.write_blocks(f, data.len() as u64, blocks).expect("write");
    e.truncate(f, 8000).expect("truncate");
    e.set_attrs(f, AttrChange { mode: Some(0o600), ..AttrChange::default() }).expect("chmod");
    e.set_xattr(f, b"user.tag", b"old", engine::XattrMode::Any).expect("xattr");
    e.create(NodeId::ROOT, b"link", NodeKind::Symlink, attrs(0o777), b"docs/notes.txt").expect("symlink");
    let gone = e.create(docs, b"gone", NodeKind::File, attrs(0o644), b"").expect("create").id;
    e.rename(docs, b"gone", NodeId::ROOT, b"moved", engine::RenameFlags::default()).expect("rename");
    e.unlink(NodeId::ROOT, b"moved").expect("unlink");
    let _ = gone;
    e.close().expect("close");
    drop(e);
    for derived in ["index.redb", "history.redb", "lock", "dirty", "history.lock", "mount.log"] {
        let _ = std::fs::remove_file(dir.join(derived));
    }
}

fn read_all(e: &engine::LiveTree, node: NodeId) -> Vec<u8> {
    let size = e.node(node).expect("node").size as usize;
    let mut out = Vec::new();
    for (i, b) in e.file_blocks(node, 0, u64::MAX).expect("blocks") {
        out.resize(i as usize * 4096, 0);
        out.extend(e.read_block(&b).expect("read"));
    }
    out.resize(size, 0);
    out
}

#[test]
fn a_format_1_1_data_dir_opens_upgraded_and_its_files_take_part_in_conflicts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    support::copy_dir(&support::fixture("v1.1-datadir"), &data);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_syncer")).arg("status").arg(&data).output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(std::fs::read(data.join("FORMAT")).expect("FORMAT"), b"syncer-data 2.0.0\n");

    let e = engine::LiveTree::open(&data).expect("open");
    let docs = e.lookup(NodeId::ROOT, b"docs").expect("docs");
    let notes = e.lookup(docs.id, b"notes.txt").expect("notes");
    assert_eq!((notes.size, notes.attrs.mode), (8000, 0o600));
    assert_eq!(notes.xattrs.get(&b"user.tag"[..]).map(Vec::as_slice), Some(&b"old"[..]));
    assert_eq!(read_all(&e, notes.id), support::multiples(3, 9000)[..8000]);
    assert_eq!(e.lookup(NodeId::ROOT, b"link").expect("link").target, b"docs/notes.txt");
    assert!(e.lookup(NodeId::ROOT, b"moved").is_err(), "the unlinked file is gone");

    // The version the old log made is the base of new changes.
    let record = e.index().expect("index").node(notes.id).expect("read").expect("notes record");
    let old_head = record.head.expect("a file written by 1.1 has a content version").event;
    assert_eq!(old_head.machine, M);
    let seg = engine::log::segment_path(&data.join("log"), M, 0);
    let before = std::fs::read(&seg).expect("read").len();
    let mine = e.put_block(b"written after the upgrade").expect("put");
    e.write_blocks(notes.id, 8000, vec![BlockChange { index: 0, block: Some(mine) }]).expect("write");

    // A peer that saw the same old version changes the file concurrently,
    // later in the merge order: its whole version becomes a conflict copy.
    let peer = MachineId(0xd3);
    let theirs = e.put_block(b"the peer's version").expect("put");
    let mut clock = record.clock.clone();
    clock.tick(peer);
    let ev = engine::event::Event {
        node: notes.id,
        machine: peer,
        seq: 1,
        time: engine::ids::Timestamp(engine::ids::Timestamp::now().0 + 1_000_000_000),
        clock,
        change: engine::event::Change::Content {
            size: 5000,
            blocks: vec![BlockChange { index: 0, block: Some(theirs) }],
        },
        base: Some(old_head),
    };
    let storage = std::sync::Arc::new(engine::storage::FsStorage);
    let (mut w, _) = engine::log::LogWriter::open(storage, &data.join("log"), peer, 1 << 20).expect("peer log");
    w.append(&[ev]).expect("append");
    w.sync().expect("sync");
    drop(w);
    e.import().expect("import");
    let ours = read_all(&e, notes.id);
    assert_eq!(&ours[..25], b"written after the upgrade");
    assert_eq!(ours.len(), 8000);
    let copies = e.content_conflicts().expect("conflicts");
    assert_eq!(copies.len(), 1, "{copies:?}");
    let copy = &copies[0];
    assert_eq!((copy.copy_writer, copy.original), (peer, notes.id));
    let theirs_bytes = read_all(&e, copy.copy);
    assert_eq!(theirs_bytes.len(), 5000);
    assert_eq!(&theirs_bytes[..18], b"the peer's version");
    assert_eq!(
        theirs_bytes[4096..],
        support::multiples(3, 9000)[4096..5000],
        "the rest of the copy is the old version's"
    );
    e.sync().expect("sync");
    drop(e);

    // Old records stay version 2; new ones are version 3.
    let versions = support::record_versions(&seg, M, before);
    assert!(versions.iter().take_while(|v| **v == 2).count() >= 9, "{versions:?}");
    assert_eq!(versions.last(), Some(&3), "{versions:?}");
    let verify = engine::forensics::verify(&data).expect("verify");
    assert!(verify.is_clean(), "{:?}", verify.problems);
}
