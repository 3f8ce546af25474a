//! A whole data dir written by format 1.0 (records of version 1, time in
//! whole seconds) opens without user action: FORMAT is upgraded to the
//! current version, every old event reads as current, the tree and its
//! content are there, and new events are written in the current version only.
//!
//! The fixture `tests/fixtures/v1-datadir/` was made once by
//! `generate_v1_datadir` (ignored). Never regenerate it to make a test pass:
//! if it stops opening, old data dirs in the field would too.

use engine::TreeRead;
use std::process::Command;

use engine::clock::VectorClock;
use engine::event::{AttrChange, Attrs, BlockChange, Change, EventV1, NodeKind};
use engine::ids::{MachineId, NodeId, Timestamp};

mod support;

const M: MachineId = MachineId(0x0000_0000_0000_00b7);
const T0: i64 = 1_700_000_000;

#[test]
#[ignore = "writes the checked-in fixture; run once by hand"]
fn generate_v1_datadir() {
    let dir = support::fixture("v1-datadir");
    support::init_fixture(&dir, M);
    let storage = std::sync::Arc::new(engine::storage::FsStorage);
    let blobs = engine::blob::BlobStore::open(storage, dir.join("blobs"), 32, 1).expect("blobs");
    let docs = NodeId::new(1, M);
    let photo = NodeId::new(2, M);
    let attrs = |mode| Attrs { mode, uid: 0, gid: 0, ..Attrs::default() };
    let data = support::multiples(3, 5000);
    let b0 = blobs.put(&data[..4096]).expect("put").block;
    let b1 = blobs.put(&data[4096..]).expect("put").block;
    blobs.sync_pending().expect("sync");
    let changes = vec![
        (
            docs,
            Change::Create {
                parent: NodeId::ROOT,
                name: b"docs".to_vec(),
                kind: NodeKind::Dir,
                attrs: attrs(0o755),
                target: vec![],
            },
        ),
        (
            photo,
            Change::Create {
                parent: docs,
                name: b"photo.raw".to_vec(),
                kind: NodeKind::File,
                attrs: attrs(0o644),
                target: vec![],
            },
        ),
        (
            photo,
            Change::Content {
                size: 5000,
                blocks: vec![BlockChange { index: 0, block: Some(b0) }, BlockChange { index: 1, block: Some(b1) }],
            },
        ),
        (photo, Change::SetAttrs(AttrChange { mode: Some(0o600), ..AttrChange::default() })),
        (photo, Change::SetXattr { name: b"user.camera".to_vec(), value: b"x100".to_vec() }),
        (
            NodeId::new(3, M),
            Change::Create {
                parent: NodeId::ROOT,
                name: b"link".to_vec(),
                kind: NodeKind::Symlink,
                attrs: attrs(0o777),
                target: b"docs/photo.raw".to_vec(),
            },
        ),
    ];
    let mut clocks: std::collections::BTreeMap<NodeId, VectorClock> = Default::default();
    let mut bytes = engine::log::segment_header(M, 0).to_vec();
    for (i, (node, change)) in changes.into_iter().enumerate() {
        let clock = clocks.entry(node).or_default();
        clock.tick(M);
        let ev =
            EventV1 { node, machine: M, seq: i as u64 + 1, time_secs: T0 + i as i64, clock: clock.clone(), change };
        bytes.extend(engine::record::encode_v1(&ev).expect("encode"));
    }
    let seg = engine::log::segment_path(&dir.join("log"), M, 0);
    std::fs::create_dir_all(seg.parent().expect("parent")).expect("mkdir");
    std::fs::write(&seg, bytes).expect("write segment");
    std::fs::write(dir.join("FORMAT"), b"syncer-data 1.0.0\n").expect("format");
    for derived in ["index.redb", "lock", "dirty"] {
        let _ = std::fs::remove_file(dir.join(derived));
    }
}

#[test]
fn a_format_1_0_data_dir_opens_upgraded_and_never_gets_v1_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    support::copy_dir(&support::fixture("v1-datadir"), &data);
    // The CLI opens it without user action.
    let out = Command::new(env!("CARGO_BIN_EXE_syncer")).arg("status").arg(&data).output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(std::fs::read(data.join("FORMAT")).expect("FORMAT"), b"syncer-data 2.0.0\n");
    assert!(text.contains("nodes:        4 (1 files, 2 dirs)"), "{text}");

    let e = engine::LiveTree::open(&data).expect("open");
    let docs = e.lookup(NodeId::ROOT, b"docs").expect("docs");
    let photo = e.lookup(docs.id, b"photo.raw").expect("photo");
    assert_eq!((photo.size, photo.attrs.mode), (5000, 0o600));
    assert_eq!(photo.xattrs.get(&b"user.camera"[..]).map(Vec::as_slice), Some(&b"x100"[..]));
    assert_eq!(photo.attrs.ctime, Timestamp::from_secs_nanos(T0 + 4, 0), "v1 seconds read as nanoseconds");
    let mut bytes = Vec::new();
    for (_, b) in e.file_blocks(photo.id, 0, 2).expect("blocks") {
        bytes.extend(e.read_block(&b).expect("read"));
    }
    assert_eq!(bytes, support::multiples(3, 5000));
    assert_eq!(e.lookup(NodeId::ROOT, b"link").expect("link").target, b"docs/photo.raw");

    // New events go on as current-version frames; the old ones stay as they were.
    let seg = engine::log::segment_path(&data.join("log"), M, 0);
    let before = std::fs::read(&seg).expect("read").len();
    e.set_attrs(photo.id, AttrChange { mode: Some(0o640), ..AttrChange::default() }).expect("chmod");
    e.sync().expect("sync");
    drop(e);
    let versions = support::record_versions(&seg, M, before);
    assert_eq!(versions, [1, 1, 1, 1, 1, 1, engine::record::CURRENT_VERSION]);
    let verify = engine::forensics::verify(&data).expect("verify");
    assert!(verify.is_clean(), "{:?}", verify.problems);
}
