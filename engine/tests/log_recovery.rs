//! Torn tails are cut on open; every other kind of damage is an error naming
//! the segment file and byte offset (rules 2 and 4 of `docs/DESIGN.md`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::clock::VectorClock;
use engine::event::{Change, Event};
use engine::ids::{LogPos, MachineId, NodeId, Timestamp};
use engine::log::{self, LogWriter, Recovery, SEGMENT_HEADER_LEN};
use engine::record;
use engine::storage::{FsStorage, Storage};
use engine::Error;

const M: MachineId = MachineId(0x1234_5678_9abc_def0);

fn ev(machine: MachineId, seq: u64, value_len: usize) -> Event {
    Event {
        node: NodeId::new(seq, machine),
        machine,
        seq,
        time: Timestamp(1_700_000_000_000_000_000 + seq as i64),
        clock: VectorClock::from_entries([(machine, seq)]),
        change: Change::SetXattr { name: b"user.k".to_vec(), value: vec![seq as u8; value_len] },
        base: None,
    }
}

fn fs() -> Arc<dyn Storage> {
    Arc::new(FsStorage)
}

/// A log of `n` events in one segment, synced; returns the positions.
fn build(root: &Path, n: u64) -> Vec<LogPos> {
    let (mut w, rec) = LogWriter::open(fs(), root, M, log::DEFAULT_SEGMENT_LIMIT).expect("open");
    assert!(rec.is_clean());
    let events: Vec<Event> = (1..=n).map(|s| ev(M, s, 10 + s as usize)).collect();
    let pos = w.append(&events).expect("append");
    w.sync().expect("sync");
    pos
}

fn seg0(root: &Path) -> PathBuf {
    log::segment_path(root, M, 0)
}

fn events_of(root: &Path) -> Vec<Event> {
    let (evs, end) = log::read_events(&FsStorage, root, log::log_start(M)).expect("read");
    assert_eq!(end.torn_tail, None);
    evs.into_iter().map(|(_, e)| e).collect()
}

fn open(root: &Path) -> Result<(LogWriter, Recovery), Error> {
    LogWriter::open(fs(), root, M, log::DEFAULT_SEGMENT_LIMIT)
}

#[test]
fn torn_last_record_is_cut_at_every_offset() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let good_root = tmp.path().join("good");
    let pos = build(&good_root, 4);
    let original = std::fs::read(seg0(&good_root)).expect("read");
    let last = pos[3].offset;
    for cut in last + 1..original.len() as u64 {
        let root = tmp.path().join(format!("cut{cut}"));
        std::fs::create_dir_all(log::machine_dir(&root, M)).expect("mkdir");
        std::fs::write(seg0(&root), &original[..cut as usize]).expect("write");

        // A peer-style read stops cleanly before the torn record.
        let (evs, end) = log::read_events(&FsStorage, &root, log::log_start(M)).expect("read torn");
        assert_eq!(evs.len(), 3, "cut {cut}");
        assert_eq!(end.torn_tail, Some(pos[3]));
        assert_eq!(end.next, pos[3]);

        let (w, rec) = open(&root).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        let torn = rec.cut.as_ref().expect("a torn tail was cut");
        assert_eq!((torn.segment, torn.offset, torn.bytes), (0, last, cut - last), "cut {cut}");
        assert!(!torn.header_rewritten);
        assert!(rec.describe().is_some_and(|d| d.contains(&last.to_string())));
        assert_eq!(w.last_seq(), 3);
        assert_eq!(w.last_time(), ev(M, 3, 0).time);
        assert_eq!(w.position(), pos[3]);
        drop(w);
        let after_first = std::fs::read(seg0(&root)).expect("read");
        assert_eq!(after_first, &original[..last as usize]);

        // Recovery is idempotent.
        let (mut w, rec) = open(&root).expect("reopen");
        assert!(rec.is_clean(), "cut {cut}: second recovery did {rec:?}");
        assert_eq!(std::fs::read(seg0(&root)).expect("read"), after_first);

        // And the log takes the next event where the torn one was.
        let again = ev(M, 4, 3);
        assert_eq!(w.append(std::slice::from_ref(&again)).expect("append"), vec![pos[3]]);
        w.sync().expect("sync");
        let evs = events_of(&root);
        assert_eq!(evs.len(), 4);
        assert_eq!(evs[..3], (1..=3).map(|s| ev(M, s, 10 + s as usize)).collect::<Vec<_>>()[..]);
        assert_eq!(evs[3], again);
    }
}

#[test]
fn zeros_and_bad_checksum_at_eof_are_torn() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let pos = build(root, 3);
    let clean = std::fs::read(seg0(root)).expect("read");

    // Zeros after the last record (a filesystem that grew the file but lost the data).
    let mut zeros = clean.clone();
    zeros.extend_from_slice(&[0; 100]);
    std::fs::write(seg0(root), &zeros).expect("write");
    let (w, rec) = open(root).expect("open");
    let cut = rec.cut.expect("cut");
    assert_eq!((cut.offset, cut.bytes), (clean.len() as u64, 100));
    assert_eq!(w.last_seq(), 3);
    drop(w);
    assert_eq!(std::fs::read(seg0(root)).expect("read"), clean);

    // A complete last frame whose checksum fails, ending at EOF.
    let mut flipped = clean.clone();
    let n = flipped.len();
    flipped[n - 2] ^= 0x40;
    std::fs::write(seg0(root), &flipped).expect("write");
    let (w, rec) = open(root).expect("open");
    assert_eq!(rec.cut.map(|c| c.offset), Some(pos[2].offset));
    assert_eq!(w.last_seq(), 2);
}

#[test]
fn torn_segment_header_is_rewritten() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    build(root, 2);
    let header = log::segment_header(M, 1);
    for keep in 0..SEGMENT_HEADER_LEN as usize {
        std::fs::write(log::segment_path(root, M, 1), &header[..keep]).expect("write");
        let (w, rec) = open(root).expect("open");
        let cut = rec.cut.expect("repaired");
        assert_eq!((cut.segment, cut.offset, cut.bytes), (1, 0, keep as u64));
        assert!(cut.header_rewritten);
        // seq/time come from the previous segment.
        assert_eq!(w.last_seq(), 2);
        assert_eq!(w.position(), LogPos { machine: M, segment: 1, offset: SEGMENT_HEADER_LEN });
        drop(w);
        assert_eq!(std::fs::read(log::segment_path(root, M, 1)).expect("read"), header);
        let (mut w, rec) = open(root).expect("reopen");
        assert!(rec.is_clean());
        if keep == SEGMENT_HEADER_LEN as usize - 1 {
            w.append(&[ev(M, 3, 1)]).expect("append");
            w.sync().expect("sync");
        }
    }
    assert_eq!(events_of(root).len(), 3);

    // An all-zero last segment is a torn header too.
    std::fs::write(log::segment_path(root, M, 2), [0u8; 64]).expect("write");
    let (w, rec) = open(root).expect("open");
    assert!(rec.cut.expect("repaired").header_rewritten);
    assert_eq!(w.last_seq(), 3);
}

fn expect_corrupt(r: Result<impl std::fmt::Debug, Error>, path: &Path, offset: u64) -> String {
    match r {
        Err(Error::CorruptRecord { path: p, offset: o, reason }) => {
            assert_eq!((p.as_path(), o), (path, offset), "{reason}");
            reason
        }
        // A frame that does not decode keeps the decoder's typed error.
        Err(Error::Record { path: p, offset: o, source, context }) => {
            assert_eq!((p.as_path(), o), (path, offset), "{source}{context}");
            format!("{source}{context}")
        }
        other => panic!("expected CorruptRecord or Record at {} byte {offset}, got {other:?}", path.display()),
    }
}

fn expect_bad_segment(r: Result<impl std::fmt::Debug, Error>, path: &Path) -> String {
    match r {
        Err(Error::BadSegment { path: p, reason }) => {
            assert_eq!(p.as_path(), path, "{reason}");
            reason
        }
        other => panic!("expected BadSegment {}, got {other:?}", path.display()),
    }
}

#[test]
fn damage_in_a_middle_record_is_an_error_naming_the_offset() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let pos = build(root, 4);
    let path = seg0(root);
    let original = std::fs::read(&path).expect("read");
    // Any byte of record 2 (header or payload).
    for i in pos[1].offset..pos[2].offset {
        let mut bytes = original.clone();
        bytes[i as usize] ^= 0x01;
        std::fs::write(&path, &bytes).expect("write");
        expect_corrupt(open(root).map(|_| ()), &path, pos[1].offset);
        expect_corrupt(log::read_events(&FsStorage, root, log::log_start(M)), &path, pos[1].offset);
        expect_corrupt(
            log::SegmentReader::new(&bytes, &path, M, 0, log::ReadMode::Recover).scan(),
            &path,
            pos[1].offset,
        );
        // Nothing was repaired.
        assert_eq!(std::fs::read(&path).expect("read"), bytes);
    }
    // The message says what is wrong and where.
    let mut bytes = original.clone();
    bytes[pos[1].offset as usize + 25] ^= 0xff;
    std::fs::write(&path, &bytes).expect("write");
    let msg = open(root).map(|_| ()).expect_err("corrupt").to_string();
    assert!(msg.contains(&path.display().to_string()) && msg.contains(&pos[1].offset.to_string()), "{msg}");
    assert!(msg.contains("checksum"), "{msg}");
}

#[test]
fn damaged_segment_header_is_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    build(root, 2);
    let path = seg0(root);
    let original = std::fs::read(&path).expect("read");
    for i in 0..SEGMENT_HEADER_LEN as usize {
        let mut bytes = original.clone();
        bytes[i] ^= 0x10;
        std::fs::write(&path, &bytes).expect("write");
        let why = expect_bad_segment(open(root).map(|_| ()), &path);
        match i {
            7 => assert!(why.contains("newer syncer"), "{why}"),
            8..=15 => assert!(why.contains("machine"), "{why}"),
            _ => {}
        }
        expect_bad_segment(log::read_events(&FsStorage, root, log::log_start(M)), &path);
        assert_eq!(std::fs::read(&path).expect("read"), bytes);
    }
}

#[test]
fn event_of_another_machine_is_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let path = seg0(root);
    std::fs::create_dir_all(log::machine_dir(root, M)).expect("mkdir");
    let mut bytes = log::segment_header(M, 0).to_vec();
    bytes.extend(record::encode(&ev(M, 1, 1)).expect("encode"));
    let stranger_at = bytes.len() as u64;
    bytes.extend(record::encode(&ev(MachineId(99), 2, 1)).expect("encode"));
    std::fs::write(&path, &bytes).expect("write");
    let why = expect_corrupt(open(root).map(|_| ()), &path, stranger_at);
    assert!(why.contains("machine"), "{why}");
    expect_corrupt(log::read_events(&FsStorage, root, log::log_start(M)), &path, stranger_at);
    let pos = LogPos { machine: M, segment: 0, offset: stranger_at };
    expect_corrupt(log::read_record_at(&FsStorage, root, pos), &path, stranger_at);
}

#[test]
fn seq_gap_is_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let path = seg0(root);
    std::fs::create_dir_all(log::machine_dir(root, M)).expect("mkdir");
    let mut bytes = log::segment_header(M, 0).to_vec();
    bytes.extend(record::encode(&ev(M, 1, 1)).expect("encode"));
    let gap_at = bytes.len() as u64;
    bytes.extend(record::encode(&ev(M, 3, 1)).expect("encode"));
    std::fs::write(&path, &bytes).expect("write");
    let why = expect_corrupt(open(root).map(|_| ()), &path, gap_at);
    assert!(why.contains("seq"), "{why}");
}

#[test]
fn torn_sealed_segment_is_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let (mut w, _) = LogWriter::open(fs(), root, M, 200).expect("open");
    let evs: Vec<Event> = (1..=6).map(|s| ev(M, s, 60)).collect();
    w.append(&evs).expect("append");
    w.sync().expect("sync");
    drop(w);
    assert!(log::list_segments(&FsStorage, root, M).expect("list").len() >= 2);
    let path = seg0(root);
    let bytes = std::fs::read(&path).expect("read");
    let short = &bytes[..bytes.len() - 3];
    std::fs::write(&path, short).expect("write");
    let scan = log::SegmentReader::new(short, &path, M, 0, log::ReadMode::Recover).scan().expect("tolerated as last");
    let torn_at = scan.torn_tail.expect("torn");
    // Segment 0 is sealed, so the same bytes are damage there.
    expect_corrupt(log::read_events(&FsStorage, root, log::log_start(M)), &path, torn_at);
    expect_corrupt(log::SegmentReader::new(short, &path, M, 0, log::ReadMode::Strict).scan(), &path, torn_at);
}

#[test]
fn hostile_names_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    build(root, 1);
    let dir = log::machine_dir(root, M);
    for bad in ["0000000000000000.SEG", "000000000000000.seg", "00000000000000001.seg", "000000000000000G.seg", "x"] {
        std::fs::write(dir.join(bad), b"").expect("write");
        let why = expect_bad_segment(log::list_segments(&FsStorage, root, M), &dir.join(bad));
        assert!(why.contains("segment name"), "{why}");
        std::fs::remove_file(dir.join(bad)).expect("rm");
    }
    // A gap in the numbering names the missing segment.
    std::fs::write(log::segment_path(root, M, 2), log::segment_header(M, 2)).expect("write");
    expect_bad_segment(log::list_segments(&FsStorage, root, M), &log::segment_path(root, M, 1));
    std::fs::remove_file(log::segment_path(root, M, 2)).expect("rm");

    for bad in ["ABCDEF0123456789", "..", "peer"] {
        let p = root.join(bad);
        if bad != ".." {
            std::fs::create_dir(&p).expect("mkdir");
            expect_bad_segment(log::list_machines(&FsStorage, root), &p);
            std::fs::remove_dir(&p).expect("rmdir");
        }
    }
    assert_eq!(log::list_machines(&FsStorage, root).expect("list"), vec![M]);
    assert_eq!(log::parse_segment_name("00000000000000ff.seg".as_ref()).expect("parse"), 255);
}

#[test]
fn length_damaged_past_eof_is_not_mistaken_for_a_torn_tail() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let pos = build(root, 4);
    let path = seg0(root);
    let mut bytes = std::fs::read(&path).expect("read");
    // Record 2 now claims a payload running past the end of the file.
    let len_at = pos[1].offset as usize + 8;
    bytes[len_at + 2] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    let why = expect_corrupt(open(root).map(|_| ()), &path, pos[1].offset);
    assert!(why.contains("damaged length"), "{why}");
    assert_eq!(std::fs::read(&path).expect("read"), bytes, "nothing was cut");
}

#[test]
fn torn_record_embedding_a_frame_is_still_torn() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let pos = build(root, 2);
    // A user xattr whose value is itself a valid record frame.
    let embedded = record::encode(&ev(M, 9, 4)).expect("encode");
    let mut third = ev(M, 3, 0);
    third.change = Change::SetXattr { name: b"user.frame".to_vec(), value: embedded.clone() };
    let (mut w, _) = open(root).expect("open");
    let p3 = w.append(std::slice::from_ref(&third)).expect("append")[0];
    w.sync().expect("sync");
    drop(w);
    let path = seg0(root);
    let bytes = std::fs::read(&path).expect("read");
    let inner = bytes.windows(embedded.len()).position(|x| x == embedded).expect("embedded frame");
    // Torn just after the embedded frame.
    std::fs::write(&path, &bytes[..inner + embedded.len()]).expect("write");
    let (w, rec) = open(root).expect("open torn");
    assert_eq!(rec.cut.map(|c| c.offset), Some(p3.offset));
    assert_eq!(w.last_seq(), 2);
    assert_eq!(w.position().offset, p3.offset);
    assert!(pos[1] < p3);
}
