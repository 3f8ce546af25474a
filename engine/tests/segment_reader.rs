//! The one segment reader (`log::SegmentReader`) in its three modes: they
//! agree on a clean segment, and differ as the `log::reader` docs say on a
//! torn tail, a bad segment header and a hostile flood of fake frame headers.

use std::path::Path;
use std::time::Instant;

use engine::clock::VectorClock;
use engine::event::{Change, Event};
use engine::ids::{MachineId, NodeId, Timestamp};
use engine::log::{self, ReadMode, SegmentReader, SegmentScan, Stop, TornCause};
use engine::record;
use engine::Error;

const M: MachineId = MachineId(0x0bad_cafe_0000_0001);

fn ev(seq: u64) -> Event {
    Event {
        node: NodeId::new(seq, M),
        machine: M,
        seq,
        time: Timestamp(1_700_000_000_000_000_000 + seq as i64),
        clock: VectorClock::from_entries([(M, seq)]),
        change: Change::SetXattr { name: b"user.k".to_vec(), value: vec![seq as u8; 16] },
        base: None,
    }
}

/// Segment 0 holding events `1..=n`, and the offset of each record.
fn segment(n: u64) -> (Vec<u8>, Vec<u64>) {
    let mut bytes = log::segment_header(M, 0).to_vec();
    let mut offsets = Vec::new();
    for s in 1..=n {
        offsets.push(bytes.len() as u64);
        bytes.extend(record::encode(&ev(s)).expect("encode"));
    }
    (bytes, offsets)
}

fn scan(bytes: &[u8], mode: ReadMode) -> Result<SegmentScan, Error> {
    SegmentReader::new(bytes, Path::new("0000000000000000.seg"), M, 0, mode).scan()
}

#[test]
fn modes_agree_on_a_clean_segment() {
    let (bytes, offsets) = segment(5);
    let strict = scan(&bytes, ReadMode::Strict).expect("strict");
    let recover = scan(&bytes, ReadMode::Recover).expect("recover");
    let forensic = scan(&bytes, ReadMode::Forensic).expect("forensic");
    assert_eq!(strict.records.iter().map(|r| r.offset).collect::<Vec<_>>(), offsets);
    assert_eq!(strict.records.iter().map(|r| r.event.clone()).collect::<Vec<_>>(), (1..=5).map(ev).collect::<Vec<_>>());
    assert_eq!(strict, recover);
    assert_eq!(strict, forensic);
    assert_eq!(strict.stop, Stop::End);
    assert_eq!(strict.valid_len, bytes.len() as u64);
    assert!(strict.damage.is_empty());
}

#[test]
fn modes_differ_as_documented_on_a_torn_tail() {
    let (mut bytes, offsets) = segment(3);
    bytes.truncate(bytes.len() - 5);
    let torn_at = offsets[2];
    // Strict: damage in a sealed segment, named by file and offset.
    match scan(&bytes, ReadMode::Strict) {
        Err(Error::Record { offset, source, context, .. }) => {
            assert_eq!(offset, torn_at);
            assert!(matches!(source, record::RecordError::Incomplete { .. }), "{source:?}");
            assert!(context.contains("sealed segment"), "{context}");
        }
        other => panic!("strict read of a torn segment: {other:?}"),
    }
    // Recover: a clean stop at the torn tail.
    let recover = scan(&bytes, ReadMode::Recover).expect("recover");
    assert_eq!(recover.records.len(), 2);
    assert_eq!(recover.valid_len, torn_at);
    assert_eq!(recover.torn_tail, Some(torn_at));
    assert!(
        matches!(recover.stop, Stop::Torn { offset, cause: TornCause::Incomplete(_) } if offset == torn_at),
        "{:?}",
        recover.stop
    );
    assert!(recover.damage.is_empty());
    // Forensic: the same records and the same tail, reported as damage.
    let forensic = scan(&bytes, ReadMode::Forensic).expect("forensic");
    assert_eq!(forensic.records, recover.records);
    assert_eq!(forensic.stop, recover.stop);
    assert_eq!(forensic.damage.len(), 1);
    assert_eq!(forensic.damage[0].0, torn_at);
    assert!(forensic.damage[0].1.starts_with("torn tail"), "{:?}", forensic.damage);
}

#[test]
fn modes_differ_as_documented_on_a_bad_segment_header() {
    let (mut bytes, _) = segment(3);
    // The header claims another machine: a hostile or misplaced segment.
    bytes[8] ^= 0x01;
    for mode in [ReadMode::Strict, ReadMode::Recover] {
        let r = scan(&bytes, mode);
        assert!(matches!(&r, Err(Error::BadSegment { reason, .. }) if reason.contains("machine")), "{mode:?}: {r:?}");
    }
    let forensic = scan(&bytes, ReadMode::Forensic).expect("forensic never fails");
    assert_eq!(forensic.damage.len(), 1, "{:?}", forensic.damage);
    assert_eq!(forensic.damage[0].0, 0);
    assert!(forensic.damage[0].1.contains("segment header"), "{:?}", forensic.damage);
    assert_eq!(forensic.records.len(), 3, "the records after a bad header are still shown");
    assert_eq!(forensic.stop, Stop::End);
}

/// A frame header claiming `payload_len` bytes, with a checksum that fails.
fn fake_header(payload_len: u32) -> Vec<u8> {
    let mut h = record::MAGIC.to_vec();
    h.extend([record::CURRENT_VERSION, record::KIND_EVENT, 0, 0, 0]);
    h.extend(payload_len.to_le_bytes());
    h.extend([0x5a; 8]);
    h
}

/// Two records, then a frame that runs past the end of the file, then
/// `fakes` fake frame headers each claiming `claim` bytes that are there,
/// then filler, then the record that would succeed the cut one (seq 4).
fn hostile_segment(fakes: usize, claim: u32) -> (Vec<u8>, u64, u64) {
    let (mut bytes, _) = segment(2);
    let cut_at = bytes.len() as u64;
    bytes.extend(fake_header(record::MAX_PAYLOAD));
    for _ in 0..fakes {
        bytes.extend(fake_header(claim));
    }
    bytes.extend(std::iter::repeat_n(0xab, claim as usize + 64));
    let successor_at = bytes.len() as u64;
    bytes.extend(record::encode(&ev(4)).expect("encode"));
    (bytes, cut_at, successor_at)
}

#[test]
fn a_successor_after_an_incomplete_frame_is_damage_in_every_mode_but_forensic() {
    // Few fakes: the search finds the successor within the budget, so the
    // incomplete frame has a damaged length, not a torn tail.
    let (bytes, cut_at, successor_at) = hostile_segment(2, 64 << 10);
    for mode in [ReadMode::Strict, ReadMode::Recover] {
        let r = scan(&bytes, mode);
        assert!(
            matches!(&r, Err(Error::Record { offset, source: record::RecordError::Incomplete { .. }, context, .. })
                if *offset == cut_at && context.contains("damaged length")),
            "{mode:?}: {r:?}"
        );
    }
    let forensic = scan(&bytes, ReadMode::Forensic).expect("forensic");
    assert_eq!(forensic.damage.len(), 1, "{:?}", forensic.damage);
    assert_eq!(forensic.damage[0].0, cut_at);
    assert!(forensic.damage[0].1.contains("damaged length"), "{:?}", forensic.damage);
    assert_eq!(forensic.records.len(), 3, "{:?} {:?}", forensic.damage, forensic.stop);
    assert_eq!(forensic.records[2].offset, successor_at, "the forensic read resyncs at the successor");
}

#[test]
fn the_hashing_budget_bounds_the_search_in_every_mode() {
    // Many fakes: each would cost 1 MiB of hashing, far past the budget of
    // about twice the segment, so the search gives up and the incomplete
    // frame is judged by its framing alone: a torn tail, in recover and
    // forensic reads alike.
    let (bytes, cut_at, _) = hostile_segment(4096, 1 << 20);
    let started = Instant::now();
    let recover = scan(&bytes, ReadMode::Recover).expect("recover");
    let forensic = scan(&bytes, ReadMode::Forensic).expect("forensic");
    let elapsed = started.elapsed();
    assert_eq!(recover.torn_tail, Some(cut_at));
    assert_eq!(recover.records.len(), 2);
    assert_eq!(forensic.records, recover.records);
    assert_eq!(forensic.stop, recover.stop);
    let strict = scan(&bytes, ReadMode::Strict);
    assert!(matches!(&strict, Err(Error::Record { offset, .. }) if *offset == cut_at), "{strict:?}");
    // Unbounded, this would hash 4 GiB per read.
    eprintln!("two reads of a {} byte hostile segment took {elapsed:?}", bytes.len());
}
