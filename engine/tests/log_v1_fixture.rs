//! A checked-in log written with record version 1 (time in whole seconds)
//! still reads, upgraded, and new appends on top of it are of the current version
//! (rule 5 of `docs/DESIGN.md`).
//!
//! The fixture is `tests/fixtures/v1/log/00000000000000a1/0000000000000000.seg`.
//! It was produced once by `generate_v1_fixture` (ignored); never regenerate
//! it to make a test pass: if it stops decoding, the on-disk layout of
//! `EventV1` or `Change` changed, and old logs would no longer read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::clock::VectorClock;
use engine::event::{AttrChange, Attrs, BlockChange, BlockRef, Change, Event, EventV1, NodeKind};
use engine::ids::{BlockHash, LogPos, MachineId, NodeId, Timestamp};
use engine::log::{self, LogWriter};
use engine::record;
use engine::storage::FsStorage;

const M: MachineId = MachineId(0x0000_0000_0000_00a1);
const T0: i64 = 1_600_000_000;

fn fixture_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1/log")
}

/// The five v1 events in the fixture: mkdir, create, write, chmod, rename.
fn fixture_events() -> Vec<EventV1> {
    let dir = NodeId::new(1, M);
    let file = NodeId::new(2, M);
    let clock = |n| VectorClock::from_entries([(M, n)]);
    let attrs = |mode| Attrs {
        mode,
        uid: 1000,
        gid: 1000,
        atime: Timestamp::from_secs_nanos(T0, 0),
        mtime: Timestamp::from_secs_nanos(T0, 0),
        ctime: Timestamp::from_secs_nanos(T0, 0),
        crtime: Timestamp::from_secs_nanos(T0, 0),
        ..Attrs::default()
    };
    let block = |data: &[u8], len| Some(BlockRef { hash: BlockHash::of(data, 32), len });
    let changes = [
        (
            dir,
            1,
            Change::Create {
                parent: NodeId::ROOT,
                name: b"docs".to_vec(),
                kind: NodeKind::Dir,
                attrs: attrs(0o755),
                target: Vec::new(),
            },
        ),
        (
            file,
            1,
            Change::Create {
                parent: dir,
                name: b"a.txt".to_vec(),
                kind: NodeKind::File,
                attrs: attrs(0o644),
                target: Vec::new(),
            },
        ),
        (
            file,
            2,
            Change::Content {
                size: 10_000,
                blocks: vec![
                    BlockChange { index: 0, block: block(b"block zero", 4096) },
                    BlockChange { index: 1, block: None },
                    BlockChange { index: 2, block: block(b"block two", 1808) },
                ],
            },
        ),
        (file, 3, Change::SetAttrs(AttrChange { mode: Some(0o600), ..AttrChange::default() })),
        (file, 4, Change::Move { parent: NodeId::ROOT, name: b"b.txt".to_vec() }),
    ];
    changes
        .into_iter()
        .enumerate()
        .map(|(i, (node, n, change))| EventV1 {
            node,
            machine: M,
            seq: i as u64 + 1,
            time_secs: T0 + i as i64,
            clock: clock(n),
            change,
        })
        .collect()
}

fn fixture_bytes() -> Vec<u8> {
    let mut bytes = log::segment_header(M, 0).to_vec();
    for e in fixture_events() {
        bytes.extend(record::encode_v1(&e).expect("encode v1"));
    }
    bytes
}

/// Writes the fixture. Run once with `cargo test -p syncer-engine --test
/// log_v1_fixture -- --ignored generate_v1_fixture`, then check the file in.
#[test]
#[ignore]
fn generate_v1_fixture() {
    let path = log::segment_path(&fixture_root(), M, 0);
    std::fs::create_dir_all(log::machine_dir(&fixture_root(), M)).expect("mkdir");
    std::fs::write(&path, fixture_bytes()).expect("write fixture");
}

#[test]
fn v1_fixture_reads_as_current_events() {
    let root = fixture_root();
    let path = log::segment_path(&root, M, 0);
    let bytes = std::fs::read(&path).expect("fixture is checked in");
    let expected: Vec<Event> = fixture_events().into_iter().map(Event::from).collect();

    for (i, e) in expected.iter().enumerate() {
        assert_eq!(e.time, Timestamp((T0 + i as i64) * 1_000_000_000));
    }

    let scan = log::SegmentReader::new(&bytes, &path, M, 0, log::ReadMode::Strict).scan().expect("scan");
    assert_eq!(scan.torn_tail, None);
    assert_eq!(scan.valid_len, bytes.len() as u64);
    assert!(scan.records.iter().all(|r| r.version == 1));
    assert_eq!(scan.records.iter().map(|r| r.event.clone()).collect::<Vec<_>>(), expected);

    let mut seen = Vec::new();
    let end = log::for_each_record(&FsStorage, &root, log::log_start(M), |pos, r| {
        assert_eq!(pos.offset, r.offset);
        seen.push((r.version, r.event.clone()));
        Ok(())
    })
    .expect("for_each_record");
    assert_eq!(seen, expected.iter().map(|e| (1, e.clone())).collect::<Vec<_>>());
    assert_eq!(end.next.offset, bytes.len() as u64);
    assert_eq!(log::list_machines(&FsStorage, &root).expect("machines"), vec![M]);

    // Random access upgrades too.
    let d = log::read_record_at(&FsStorage, &root, LogPos { machine: M, segment: 0, offset: scan.records[2].offset })
        .expect("read at");
    assert_eq!((d.version, &d.event), (1, &expected[2]));

    // The archived layout of v1 events has not moved: re-encoding gives the
    // checked-in bytes. If this fails, `EventV1`/`Change` changed layout and
    // existing logs no longer read: add a new record version instead.
    assert!(bytes == fixture_bytes(), "v1 record layout changed");
}

#[test]
fn appends_on_a_v1_log_are_of_the_current_version() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("log");
    std::fs::create_dir_all(log::machine_dir(&root, M)).expect("mkdir");
    let src = log::segment_path(&fixture_root(), M, 0);
    let dst = log::segment_path(&root, M, 0);
    std::fs::copy(&src, &dst).expect("copy fixture");

    let (mut w, rec) = LogWriter::open(Arc::new(FsStorage), &root, M, log::DEFAULT_SEGMENT_LIMIT).expect("open");
    assert!(rec.is_clean());
    assert_eq!(w.last_seq(), 5);
    assert_eq!(w.last_time(), Timestamp((T0 + 4) * 1_000_000_000));
    let next = Event {
        node: NodeId::new(2, M),
        machine: M,
        seq: 6,
        time: Timestamp((T0 + 4) * 1_000_000_000 + 1),
        clock: VectorClock::from_entries([(M, 5)]),
        change: Change::Remove,
        base: None,
    };
    let pos = w.append(std::slice::from_ref(&next)).expect("append")[0];
    w.sync().expect("sync");

    let bytes = std::fs::read(&dst).expect("read");
    let old = std::fs::read(&src).expect("read fixture");
    assert_eq!(bytes[..old.len()], old[..], "old records untouched");
    assert_eq!(pos.offset, old.len() as u64);
    assert_eq!(&bytes[old.len()..old.len() + 4], b"SYR\x03");
    assert_eq!(&bytes[32..36], b"SYR\x01");

    let (evs, _) = log::read_events(&FsStorage, &root, log::log_start(M)).expect("read");
    assert_eq!(evs.len(), 6);
    assert_eq!(evs[5], (pos, next));
    let versions: Vec<u8> = log::SegmentReader::new(&bytes, &dst, M, 0, log::ReadMode::Strict)
        .scan()
        .expect("scan")
        .records
        .iter()
        .map(|r| r.version)
        .collect();
    assert_eq!(versions, [1, 1, 1, 1, 1, 3]);
}
