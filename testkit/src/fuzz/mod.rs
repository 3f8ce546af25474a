//! The bodies of the cargo-fuzz targets in `fuzz/`, as plain functions, so
//! that every input the fuzzer ever saved replays as an ordinary `#[test]`
//! (see `engine/tests/fuzz_regressions.rs`) on the stable toolchain.
//!
//! Always true:
//! - each body takes arbitrary bytes, never panics on them unless it found a
//!   bug, and checks more than "no panic": what a decoder accepts must
//!   round-trip, recovery must be idempotent, a merge must not depend on
//!   delivery order;
//! - a body panics (with a message naming the broken property) exactly when
//!   it found a bug, which is how libFuzzer and `#[test]` both see a failure.
//!
//! Bodies that need structure (events, segments of valid records) build it
//! from the input bytes with [`Unstructured`], a small cursor that returns
//! zeros once the input runs out, so every input is valid and the fuzzer's
//! mutations stay meaningful. Events come from [`crate::gen`], the test
//! kit's one event generator, which the property tests use too.
//!
//! `peer_import` (in [`peer`]) is the one body with I/O: it imports into a
//! real data dir that each thread makes once (under `/dev/shm` when there is
//! one) and resets between inputs.

mod peer;

pub use peer::{engine_matches, peer_import, peer_import_cleanup, peer_import_outcome, PeerImportOutcome};

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub use crate::gen::{event, Unstructured};

use engine::blob::{self, BlobError};
use engine::clock::VectorClock;
use engine::config::{self, Config};
use engine::event::{Attrs, BlockChange, BlockRef, Change, Event, NodeKind};
use engine::format;
use engine::ids::{BlockHash, MachineId, NodeId, Timestamp};
use engine::log;
use engine::merge::{self, Merged};
use engine::record::{self, RecordError};
use engine::tree::{self, NodeRecord};

/// Block size the fold and merge bodies use.
const BLOCK_SIZE: u64 = 4096;

/// Frames `payload` as a record of `version` with a correct checksum, so
/// that fuzzing reaches the payload decoder behind the checksum.
pub fn frame_with_checksum(version: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(record::HEADER_LEN + payload.len());
    out.extend_from_slice(&record::MAGIC);
    out.push(version);
    out.push(record::KIND_EVENT);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_le_bytes());
    let mut h = blake3::Hasher::new();
    h.update(&out[..12]);
    h.update(payload);
    out.extend_from_slice(&h.finalize().as_bytes()[..8]);
    out.extend_from_slice(payload);
    out
}

/// Target `record_decode`: `record::decode` on raw bytes (first byte 0..=127),
/// or on a payload framed with a valid checksum as record version 1 or 2
/// (first byte 128..=255), which is what reaches rkyv's bytecheck.
///
/// Properties: never panics; an accepted frame is no longer than the input,
/// its event re-encodes and decodes to the same event; `Incomplete` only
/// for inputs shorter than the frame.
pub fn record_decode(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let framed;
    let input = if mode < 128 {
        rest
    } else {
        framed = frame_with_checksum(if mode & 1 == 0 { record::CURRENT_VERSION } else { record::V1 }, rest);
        &framed
    };
    match record::decode(input) {
        Ok(d) => {
            assert!(d.frame_len <= input.len(), "frame of {} bytes in {} bytes of input", d.frame_len, input.len());
            assert!(d.event.clock.is_canonical(), "accepted a non-canonical clock");
            let again = record::encode(&d.event).expect("an accepted event re-encodes");
            let back = record::decode(&again).expect("a re-encoded event decodes");
            assert_eq!(back.event, d.event, "decode(encode(e)) != e");
        }
        Err(RecordError::Incomplete { have, need }) => {
            assert_eq!(have, input.len());
            assert!(need > have, "Incomplete with need {need} <= have {have}");
        }
        Err(_) => {}
    }
}

/// Target `segment_scan`: `log::SegmentReader` in every mode, on
/// raw bytes (first byte even) or on a well-formed segment of events built
/// from the input, then damaged by truncation, zeroing, byte flips or junk
/// (first byte odd).
///
/// Properties: never panics; a forensic read never fails; a strict read
/// that succeeds gives the same answer in recover mode; a recover read that
/// succeeds gives the same records and torn tail in forensic mode, with the
/// torn tail as its only damage; records are back to back from the
/// header on and `valid_len` ends the last one; a torn tail is only ever
/// reported when tolerated, and at `valid_len`; recovery is idempotent
/// (scanning the first `valid_len` bytes finds the same records and no
/// tail); a well-formed segment cut short or zero-filled at any point (what
/// a crash does) scans cleanly with the tail tolerated, and its records are
/// a prefix of the ones written.
pub fn segment_scan(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mode = u.byte();
    let machine = MachineId(u64::from(u.below(2)) + 1);
    let number = u64::from(u.below(2));
    let path = Path::new("fuzz.seg");
    let (bytes, written, crash_only) = if mode & 1 == 0 {
        let mut b = Vec::new();
        if mode & 2 != 0 {
            b.extend_from_slice(&log::segment_header(machine, number));
        }
        b.extend_from_slice(u.rest());
        (b, None, false)
    } else {
        let (b, written, crash_only) = damaged_segment(&mut u, machine, number);
        (b, Some(written), crash_only)
    };
    let read = |bytes, mode| log::SegmentReader::new(bytes, path, machine, number, mode).scan();
    let strict = read(&bytes, log::ReadMode::Strict);
    let tolerant = read(&bytes, log::ReadMode::Recover);
    let forensic = read(&bytes, log::ReadMode::Forensic).unwrap_or_else(|e| panic!("a forensic read failed: {e}"));
    if let Ok(s) = &tolerant {
        assert_eq!(forensic.records, s.records, "forensic and recover reads disagree on the records");
        assert_eq!(forensic.torn_tail, s.torn_tail, "forensic and recover reads disagree on the torn tail");
        assert_eq!(forensic.damage.len(), usize::from(s.torn_tail.is_some()), "{:?}", forensic.damage);
    }
    if let Ok(s) = &strict {
        assert!(s.torn_tail.is_none(), "torn tail reported when not tolerated");
        assert_eq!(tolerant.as_ref().ok(), Some(s), "tolerating a tail changed a clean scan");
    }
    if crash_only {
        let s = tolerant.as_ref().unwrap_or_else(|e| panic!("a crash-damaged segment does not recover: {e}"));
        let written = written.as_deref().unwrap_or(&[]);
        assert!(s.records.len() <= written.len(), "more records than written");
        for (r, w) in s.records.iter().zip(written) {
            assert_eq!(&r.event, w, "recovered a record that was not written");
        }
    }
    if let Ok(s) = &tolerant {
        let mut at = log::SEGMENT_HEADER_LEN;
        for r in &s.records {
            assert_eq!(r.offset, at, "records are not back to back");
            at += r.frame_len;
        }
        if s.valid_len != 0 {
            assert_eq!(s.valid_len, at, "valid_len is not the end of the last record");
        } else {
            assert!(s.records.is_empty());
        }
        assert!(s.valid_len <= bytes.len() as u64);
        if let Some(t) = s.torn_tail {
            assert_eq!(t, s.valid_len, "torn tail not at valid_len");
        }
        let cut = &bytes[..usize::try_from(s.valid_len).unwrap_or(usize::MAX).min(bytes.len())];
        let mode = if s.valid_len == 0 { log::ReadMode::Recover } else { log::ReadMode::Strict };
        let again = read(cut, mode).unwrap_or_else(|e| panic!("the recovered prefix does not scan: {e}"));
        assert_eq!(again.records, s.records, "recovery is not idempotent");
        assert_eq!(again.torn_tail, None, "the recovered prefix still has a torn tail");
    }
}

/// A segment of events of `machine` with valid seqs and times, damaged as
/// the input says. Returns the bytes, the events written, and whether every
/// damage was one a crash can do (cut short, zero-filled tail).
fn damaged_segment(u: &mut Unstructured, machine: MachineId, number: u64) -> (Vec<u8>, Vec<Event>, bool) {
    let first_seq = if number == 0 { 1 } else { 1 + u64::from(u.below(4)) };
    let (mut bytes, written, _) = built_segment(u, machine, number, first_seq, 0);
    let crash_only = damage(u, &mut bytes);
    (bytes, written, crash_only)
}

/// Segment `number` of `machine`: its header, then up to 5 events built
/// from the input, owned by `machine`, with seqs from `first_seq` on and
/// times from `t0` on, never going back. Returns the bytes, the events and
/// the time of the last one (`t0` if none).
fn built_segment(
    u: &mut Unstructured,
    machine: MachineId,
    number: u64,
    first_seq: u64,
    t0: i64,
) -> (Vec<u8>, Vec<Event>, i64) {
    let mut bytes = log::segment_header(machine, number).to_vec();
    let mut written = Vec::new();
    let mut t = t0;
    for i in 0..u64::from(u.below(6)) {
        let mut e = event(u);
        e.machine = machine;
        e.seq = first_seq + i;
        t += i64::from(u.byte());
        e.time = Timestamp(t);
        match record::encode(&e) {
            Ok(frame) => bytes.extend_from_slice(&frame),
            Err(err) => panic!("encoding a small event failed: {err}"),
        }
        written.push(e);
    }
    (bytes, written, t)
}

/// Damages `bytes` (a segment) up to twice, as the input says: cut short,
/// zero-filled from a point, a byte flipped, junk or a stray record
/// appended. Returns whether every damage was one a crash can do (cut
/// short, zero-filled tail).
fn damage(u: &mut Unstructured, bytes: &mut Vec<u8>) -> bool {
    let mut crash_only = true;
    for _ in 0..u.below(3) {
        let len = bytes.len();
        let at = usize::from(u.u16()) % (len + 1);
        match u.below(5) {
            0 => bytes.truncate(at),
            // A crash can leave zeros past the last page written, from any
            // point on; the header (the start of the first page) is then all
            // there or all zeros.
            1 => {
                let from = if at < log::SEGMENT_HEADER_LEN as usize { 0 } else { at };
                bytes[from.min(len)..].fill(0);
            }
            2 => {
                crash_only = false;
                if let Some(b) = bytes.get_mut(at) {
                    *b ^= u.byte() | 1;
                }
            }
            3 => {
                crash_only = false;
                let junk = u.bytes(64);
                bytes.extend_from_slice(&junk);
            }
            _ => {
                crash_only = false;
                let e = event(u);
                bytes.extend_from_slice(&record::encode(&e).unwrap_or_default());
            }
        }
    }
    crash_only
}

/// Target `blob_decode`: `blob::decode_header` and `blob::decode_blob` on
/// raw bytes, against the hash of the payload (so the raw codec can
/// succeed) or of nothing, plus the round trip of `encode_blob` on the
/// input.
///
/// Properties: never panics; a decoded blob has the header's length and
/// hashes to its address; `decode_blob_window` (on the bytes at an offset of
/// a larger buffer, as a direct read leaves them) gives what `decode_blob`
/// gives, or the same error; `encode_blob` output always decodes to its input.
pub fn blob_decode(data: &[u8]) {
    let Some((&mode, stored)) = data.split_first() else { return };
    let header = blob::decode_header(stored);
    let hash_size = 16 + usize::from(mode % 17);
    let expected = match mode & 0x80 {
        0 => BlockHash::of(stored.get(blob::HEADER_LEN..).unwrap_or(&[]), hash_size),
        _ => BlockHash::of(b"", hash_size),
    };
    match blob::decode_blob(stored, &expected) {
        Ok(content) => {
            let h = header.expect("decode_blob accepted a blob whose header does not decode");
            assert_eq!(content.len() as u64, u64::from(h.raw_len), "content length differs from the header");
            assert_eq!(BlockHash::of(&content, hash_size), expected, "content does not hash to its address");
        }
        Err(BlobError::HashMismatch { .. }) => assert!(header.is_ok()),
        Err(_) => {}
    }
    let pad = usize::from(mode % 7);
    let mut padded = vec![0xA5u8; pad];
    padded.extend_from_slice(stored);
    let window = engine::storage::ByteWindow::from(padded).skip(pad);
    match (blob::decode_blob(stored, &expected), blob::decode_blob_window(window, &expected)) {
        (Ok(a), Ok(b)) => assert!(a == *b, "decode_blob_window gave other bytes than decode_blob"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "the two decoders disagree on the error"),
        (a, b) => panic!("decode_blob gave {:?}, decode_blob_window {:?}", a.map(|v| v.len()), b.map(|v| v.len())),
    }
    let level = i32::from(mode % 4);
    let encoded = blob::encode_blob(stored, level);
    let back = blob::decode_blob(&encoded, &BlockHash::of(stored, hash_size))
        .unwrap_or_else(|e| panic!("encode_blob output (level {level}) does not decode: {e}"));
    assert!(back == stored, "encode_blob/decode_blob changed the content");
}

/// Target `config_parse`: `Config::from_toml`, `config::parse_size` and
/// `format::parse` on the same text.
///
/// Properties: never panics; what is accepted is printed back in a form
/// that parses to the same value (`to_toml`, `format_size`, `to_line`).
pub fn config_parse(data: &[u8]) {
    if let Ok(v) = format::parse(data) {
        assert_eq!(format::parse(v.to_line().as_bytes()), Ok(v), "FORMAT line does not round-trip");
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = Config::from_toml(text) {
        assert_eq!(Config::from_toml(&c.to_toml()).as_ref(), Ok(&c), "config.toml does not round-trip");
    }
    if let Ok(n) = config::parse_size(text) {
        assert_eq!(config::parse_size(&config::format_size(n)), Ok(n), "size does not round-trip");
        let _ = config::format_size_human(n);
    }
}

/// Target `tree_fold`: random event sequences for one node through
/// `tree::apply`, from nothing and from the root.
///
/// Properties: never panics; an ignored event changes nothing; an applied
/// one leaves the node's clock at the join of the old clock and the event's.
pub fn tree_fold(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut state: Option<NodeRecord> = (u.below(2) == 1).then(NodeRecord::root);
    while !u.is_empty() {
        let e = event(&mut u);
        let fx = tree::apply(state.as_ref(), &e);
        if fx.ignored.is_some() {
            let before = state.clone().unwrap_or_else(NodeRecord::root);
            assert_eq!(fx.node, before, "an ignored event changed the node");
        } else {
            let expect = state.as_ref().map_or_else(|| e.clock.clone(), |p| p.clock.join(&e.clock));
            assert_eq!(fx.node.clock, expect, "clock is not the join");
            state = Some(fx.node);
        }
    }
}

/// Target `merge_converge`: a random event set (hostile names, arbitrary
/// clocks, duplicate `(machine, seq)` with different content) merged in
/// input order and in a shuffled order with duplicates.
///
/// Properties: never panics; both orders give the same tree; merging a set
/// with itself changes nothing; the result is a tree (see [`check_tree`]).
pub fn merge_converge(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let seed = u.u64();
    let mut events = Vec::new();
    while !u.is_empty() && events.len() < 64 {
        let e = event(&mut u);
        events.push(e);
    }
    let reference = merge::merge(&events, BLOCK_SIZE);
    if let Err(why) = check_tree(&reference) {
        panic!("merge result is not a tree: {why}");
    }
    let mut shuffled: Vec<&Event> = events.iter().chain(events.iter().step_by(2)).collect();
    let mut x = seed | 1;
    for i in (1..shuffled.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        shuffled.swap(i, (x % (i as u64 + 1)) as usize);
    }
    assert_eq!(merge::merge(shuffled.iter().copied(), BLOCK_SIZE), reference, "delivery order changed the merge");
    assert_eq!(merge::merge(events.iter().chain(&events), BLOCK_SIZE), reference, "merge is not idempotent");
}

/// Checks that a merged tree is a tree: every directory entry names a live
/// node that records that place, every live node is reachable from the
/// root through live directories, without a cycle.
pub fn check_tree(m: &Merged) -> Result<(), String> {
    for ((dir, name), child) in &m.dirents {
        let n = m.nodes.get(child).ok_or_else(|| format!("entry {name:?} in {dir} names unknown node {child}"))?;
        if n.record.removed || n.record.parent != *dir || n.record.name != *name {
            return Err(format!("entry {name:?} in {dir} -> {child}, but the node says {:?}", n.record));
        }
    }
    for (id, n) in &m.nodes {
        if *id == NodeId::ROOT || n.record.removed {
            continue;
        }
        let (mut cur, mut steps) = (*id, 0usize);
        while cur != NodeId::ROOT {
            let c = m.nodes.get(&cur).ok_or_else(|| format!("{id}: ancestor {cur} unknown"))?;
            if c.record.removed {
                return Err(format!("live {id} under removed {cur}"));
            }
            if m.lookup(c.record.parent, &c.record.name) != Some(cur) {
                return Err(format!("{cur} is not in its parent's entries"));
            }
            let p = m.nodes.get(&c.record.parent).ok_or_else(|| format!("{cur}: parent unknown"))?;
            if p.record.kind != NodeKind::Dir {
                return Err(format!("{cur} is under non-directory {}", c.record.parent));
            }
            cur = c.record.parent;
            steps += 1;
            if steps > m.nodes.len() {
                return Err(format!("cycle above {id}"));
            }
        }
    }
    Ok(())
}
