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
//! mutations stay meaningful.
//!
//! `peer_import` is the one body with I/O: it imports into a real data dir
//! that each thread makes once (under `/dev/shm` when there is one) and
//! resets between inputs.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::blob::{self, BlobError};
use crate::clock::VectorClock;
use crate::config::{self, Config};
use crate::event::{AttrChange, Attrs, BlockChange, BlockRef, Change, Event, NodeKind};
use crate::format;
use crate::ids::{BlockHash, MachineId, NodeId, Timestamp};
use crate::log;
use crate::merge::{self, Merged};
use crate::record::{self, RecordError};
use crate::tree::{self, NodeRecord};

/// Block size the fold and merge bodies use.
const BLOCK_SIZE: u64 = 4096;

/// A cursor over fuzz input that builds values from it; past the end every
/// read is zero.
#[derive(Debug)]
pub struct Unstructured<'a> {
    data: &'a [u8],
}

impl<'a> Unstructured<'a> {
    /// A cursor over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Unstructured { data }
    }

    /// Whether the input is used up.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte.
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// The next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// The next little-endian u64.
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        u64::from_le_bytes(b)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u8) -> u8 {
        self.byte() % n.max(1)
    }

    /// Up to `max` bytes, length first.
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = usize::from(self.byte()).min(max).min(self.data.len());
        let (head, rest) = self.data.split_at(len);
        self.data = rest;
        head.to_vec()
    }

    /// Up to `max` bytes, a 16-bit length first.
    pub fn long_bytes(&mut self, max: usize) -> &'a [u8] {
        let len = usize::from(self.u16()).min(max).min(self.data.len());
        let (head, rest) = self.data.split_at(len);
        self.data = rest;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Names a hostile peer could send: valid ones that collide, and invalid
/// ones (empty, `.`, `..`, with `/` or NUL, too long).
fn name(u: &mut Unstructured) -> Vec<u8> {
    match u.below(12) {
        0 => Vec::new(),
        1 => b".".to_vec(),
        2 => b"..".to_vec(),
        3 => b"a/b".to_vec(),
        4 => b"n\0ul".to_vec(),
        5 => vec![b'x'; 256],
        6 => b"f.txt".to_vec(),
        n => vec![b'a' + n % 4],
    }
}

fn machine(u: &mut Unstructured) -> MachineId {
    MachineId(u64::from(u.below(3)) + 1)
}

fn node(u: &mut Unstructured) -> NodeId {
    match u.below(8) {
        0 => NodeId::ROOT,
        n => NodeId::new(u64::from(n % 4) + 1, MachineId(u64::from(n / 4) + 1)),
    }
}

fn time(u: &mut Unstructured) -> Timestamp {
    Timestamp(i64::from(u.u16()))
}

fn clock(u: &mut Unstructured) -> VectorClock {
    let n = u.below(4);
    VectorClock::from_entries((0..n).map(|_| (machine(u), u64::from(u.below(6)))))
}

fn kind(u: &mut Unstructured) -> NodeKind {
    [NodeKind::File, NodeKind::Dir, NodeKind::Symlink, NodeKind::Fifo, NodeKind::Socket][usize::from(u.below(5))]
}

fn block(u: &mut Unstructured) -> Option<BlockRef> {
    (u.below(4) != 0).then(|| BlockRef { hash: BlockHash::of(&[u.byte()], 16), len: u32::from(u.u16()) })
}

fn opt<T>(u: &mut Unstructured, f: impl FnOnce(&mut Unstructured) -> T) -> Option<T> {
    (u.below(2) == 1).then(|| f(u))
}

fn change(u: &mut Unstructured) -> Change {
    match u.below(12) {
        0 | 1 => Change::Create {
            parent: node(u),
            name: name(u),
            kind: kind(u),
            attrs: Attrs { mode: u32::from(u.u16()), ..Attrs::default() },
            target: u.bytes(8),
        },
        2 => Change::SetAttrs(AttrChange {
            mode: opt(u, |u| u32::from(u.u16())),
            uid: opt(u, |u| u32::from(u.byte())),
            mtime: opt(u, time),
            ..AttrChange::default()
        }),
        3 => {
            let blocks =
                (0..u.below(4)).map(|_| BlockChange { index: u64::from(u.below(8)), block: block(u) }).collect();
            // Sizes near u64::MAX too: a hostile peer is not bound by what a disk holds.
            let size = if u.below(8) == 0 { u64::MAX - u64::from(u.byte()) } else { u64::from(u.u16()) };
            Change::Content { size, blocks }
        }
        4 => Change::Truncate {
            size: u64::from(u.u16()),
            tail: opt(u, |u| BlockChange { index: u64::from(u.below(8)), block: block(u) }),
        },
        5 | 6 => Change::Move { parent: node(u), name: name(u) },
        7 => Change::Remove,
        8 => Change::SetXattr { name: name(u), value: u.bytes(4) },
        9 => Change::RemoveXattr { name: name(u) },
        10 => Change::SetTarget { target: u.bytes(8) },
        _ => match u.below(3) {
            0 => Change::Exchange { with: node(u) },
            1 => Change::SetPinned { pinned: u.below(2) == 1 },
            _ => Change::SetVolname { name: u.bytes(8) },
        },
    }
}

/// An arbitrary event over a small world (3 machines, 8 node ids, short
/// names including invalid ones), with arbitrary seq, time and clock.
///
/// A content change's base is drawn from the fields already drawn (the
/// event before it from the same machine), so that the checked-in seeds,
/// written before events had a base, still build the same events.
pub fn event(u: &mut Unstructured) -> Event {
    let (node, machine, seq, time, clock, change) =
        (node(u), machine(u), u64::from(u.below(16)), time(u), clock(u), change(u));
    let base = change.is_content().then_some(crate::ids::EventId { machine, seq: seq.saturating_sub(1) });
    Event { node, machine, seq, time, clock, change, base }
}

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
    let window = crate::storage::ByteWindow::from(padded).skip(pad);
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

/// Our machine in the data dir of [`peer_import`]. Machine 1's node ids are
/// the ones [`event`] names, so peers' events hit our nodes.
const US: MachineId = MachineId(1);

/// Machine ids the peers of [`peer_import`] take: small ones and extremes.
const PEER_IDS: [MachineId; 4] = [MachineId(2), MachineId(3), MachineId(u64::MAX), MachineId(0x00ab_cdef_0000_0002)];

/// Names under `log/` that are not machine folders. All but the last three
/// start with a lowercase hex digit, so the pull's rsync filter lets them in.
const HOSTILE_FOLDERS: [&[u8]; 10] = [
    b"0000000000000002x",
    b"000000000000000A",
    b"00000000000002",
    b"00000000000000002",
    b"0000000000000002 ",
    b"0x00000000000002",
    b"00000000000000\xff\xfe",
    b"+000000000000002",
    b".0000000000000002.tmp",
    b"log",
];

/// Names beside segment 0 in a machine folder that are not segment names.
const HOSTILE_SEGMENTS: [&[u8]; 6] = [
    b"0000000000000001x.seg",
    b"000000000000000A.seg",
    b"0000000000000001.SEG",
    b".0000000000000001.seg.Ab12Cd",
    b"0000000000000001.seg.partial",
    b"00000000000000\xff.seg",
];

/// Prefix of the data dirs [`peer_import`] makes (one per thread), followed
/// by the process id: a dir whose process is gone is removed by the next run.
const PEER_DIR_PREFIX: &str = "syncer-fuzz-peer-import-";

/// The copy of our index (our events only) that each input starts from.
const PEER_INDEX_TEMPLATE: &str = "index.redb.fuzz-template";

/// One file or folder under `log/` that the peers' pull brings.
#[derive(Debug)]
struct PulledEntry {
    /// Path under `log/`.
    path: std::path::PathBuf,
    /// A file's bytes, or `None` for a folder.
    bytes: Option<Vec<u8>>,
    /// What the first import sees: `None` nothing, `Some(n)` the first `n`
    /// bytes (a folder: the folder).
    first: Option<usize>,
}

/// What a peer's log was built from, for the properties that know it.
#[derive(Debug)]
struct PeerLog {
    machine: MachineId,
    /// The events built into its segments, in order.
    written: Vec<Event>,
    /// Every segment was built (none raw) and every damage was one a crash
    /// can do: what is accepted is a prefix of `written`.
    crash_only: bool,
    /// Besides that, only the last segment was damaged: the log is clean
    /// with at most a torn tail (a segment still arriving), so it must never
    /// be reported as damaged.
    clean: bool,
}

/// The peers' logs and hostile entries one input describes.
#[derive(Debug, Default)]
struct PeerPlan {
    entries: Vec<PulledEntry>,
    peers: Vec<PeerLog>,
}

impl PeerPlan {
    fn new(u: &mut Unstructured) -> Self {
        let mut plan = PeerPlan::default();
        for _ in 0..u.below(4) {
            let machine = PEER_IDS[usize::from(u.below(4))];
            if plan.peers.iter().all(|p| p.machine != machine) {
                plan.add_peer(u, machine);
            }
        }
        for i in 0..u64::from(u.below(3)) {
            plan.add_hostile(u, MachineId(0x10 + i));
        }
        plan
    }

    /// 1 to 3 segments of `machine`, each built (then damaged or not) or
    /// raw; the first import sees the segments before a chosen one, and a
    /// prefix of that one (how `rsync --append` delivers a log).
    fn add_peer(&mut self, u: &mut Unstructured, machine: MachineId) {
        let segments = u64::from(u.below(3)) + 1;
        let present = u64::from(u.below(segments as u8 + 1));
        let mut t = i64::from(u.u16() % 12_000);
        let mut peer = PeerLog { machine, written: Vec::new(), crash_only: true, clean: true };
        for n in 0..segments {
            let bytes = match u.below(4) {
                mode @ (0 | 1) => {
                    let first_seq = peer.written.len() as u64 + 1;
                    let (mut bytes, written, last) = built_segment(u, machine, n, first_seq, t);
                    t = last;
                    peer.written.extend(written);
                    if mode == 0 {
                        let before = bytes.clone();
                        peer.crash_only &= damage(u, &mut bytes);
                        if bytes != before && n + 1 != segments {
                            peer.clean = false;
                        }
                    }
                    bytes
                }
                mode => {
                    peer.crash_only = false;
                    let raw = u.long_bytes(4096);
                    if mode == 2 {
                        [&log::segment_header(machine, n)[..], raw].concat()
                    } else {
                        raw.to_vec()
                    }
                }
            };
            let first = match n.cmp(&present) {
                std::cmp::Ordering::Less => Some(bytes.len()),
                std::cmp::Ordering::Equal => Some(usize::from(u.u16()) % (bytes.len() + 1)),
                std::cmp::Ordering::Greater => None,
            };
            let path = Path::new(&machine.to_string()).join(log::segment_file_name(n));
            self.entries.push(PulledEntry { path, bytes: Some(bytes), first });
        }
        peer.clean &= peer.crash_only;
        self.peers.push(peer);
    }

    /// Something under `log/` that is no well-formed machine log, in a
    /// folder of its own (`spare` names it when it is a machine id). Its
    /// files are there but empty at the first import, whole at the second.
    fn add_hostile(&mut self, u: &mut Unstructured, spare: MachineId) {
        let folder = Path::new(&spare.to_string()).to_path_buf();
        let segment = |n: u64| folder.join(log::segment_file_name(n));
        let file = |path: std::path::PathBuf, bytes: Vec<u8>| PulledEntry { path, bytes: Some(bytes), first: Some(0) };
        let header = |m: MachineId, n: u64| log::segment_header(m, n).to_vec();
        match u.below(7) {
            0 => {
                let name = HOSTILE_FOLDERS[usize::from(u.below(HOSTILE_FOLDERS.len() as u8))];
                let path = Path::new(std::ffi::OsStr::from_bytes(name)).join(log::segment_file_name(0));
                self.entries.push(file(path, built_segment(u, PEER_IDS[0], 0, 1, 0).0));
            }
            1 => {
                let name = HOSTILE_SEGMENTS[usize::from(u.below(HOSTILE_SEGMENTS.len() as u8))];
                self.entries.push(file(segment(0), built_segment(u, spare, 0, 1, 0).0));
                self.entries.push(file(folder.join(std::ffi::OsStr::from_bytes(name)), header(spare, 1)));
            }
            // A folder named like a segment (the pull's filter lets it in).
            2 => self.entries.push(PulledEntry { path: segment(0), bytes: None, first: Some(0) }),
            // A file where a machine folder should be.
            3 => self.entries.push(file(folder, header(spare, 0))),
            // A machine folder with no segment yet: no damage.
            4 => self.entries.push(PulledEntry { path: folder, bytes: None, first: Some(0) }),
            // A gap: segment 1 without segment 0.
            5 => self.entries.push(file(segment(1), header(spare, 1))),
            // Segments that belong to another machine, or another number.
            _ => {
                self.entries.push(file(segment(0), header(US, 0)));
                self.entries.push(file(segment(1), header(spare, 2)));
            }
        }
    }

    /// Puts what the first import sees (`full` false) or everything under
    /// `log_root`.
    fn write(&self, log_root: &Path, full: bool) {
        for e in &self.entries {
            let Some(first) = e.first.or(full.then_some(usize::MAX)) else { continue };
            let path = log_root.join(&e.path);
            let done = match &e.bytes {
                None => std::fs::create_dir_all(&path),
                Some(bytes) => {
                    let n = if full { bytes.len() } else { first.min(bytes.len()) };
                    path.parent()
                        .map_or(Ok(()), std::fs::create_dir_all)
                        .and_then(|()| std::fs::write(&path, &bytes[..n]))
                }
            };
            done.unwrap_or_else(|err| panic!("peer_import harness: writing {}: {err}", path.display()));
        }
    }
}

/// The data dir [`peer_import`] imports into, made once per thread: our own
/// log of [`our_events`], then whatever each input pulls beside it.
#[derive(Debug)]
struct PeerHarness {
    dir: std::path::PathBuf,
    ours: Vec<Event>,
    our_segment: Vec<u8>,
    /// The tree of our events alone.
    our_tree: Merged,
    /// Our nodes grouped by every directory relation our events ever made:
    /// a peer event that touches one of a group may move the others.
    groups: std::collections::BTreeMap<NodeId, usize>,
}

thread_local! {
    static PEER_HARNESS: std::cell::RefCell<Option<PeerHarness>> = const { std::cell::RefCell::new(None) };
}

/// Our events: a small tree with a file moved between directories, a
/// removed directory, a symlink, and a group (`d/x`) whose node ids no
/// generated peer event names, so the "untouched" property gets checked.
fn our_events(hash_size: usize) -> Vec<Event> {
    let [a, b, f, c, e, d, x] = [1, 2, 3, 4, 5, 6, 7].map(|n| NodeId::new(n, US));
    let create = |parent, name: &[u8], kind, target: &[u8]| Change::Create {
        parent,
        name: name.to_vec(),
        kind,
        attrs: Attrs { mode: 0o755, ..Attrs::default() },
        target: target.to_vec(),
    };
    let block = |index, data: &[u8]| BlockChange {
        index,
        block: Some(BlockRef { hash: BlockHash::of(data, hash_size), len: data.len() as u32 }),
    };
    let changes = [
        (a, create(NodeId::ROOT, b"a", NodeKind::Dir, b"")),
        (b, create(a, b"b", NodeKind::File, b"")),
        (b, Change::Content { size: 10, blocks: vec![block(0, b"0123456789")] }),
        (f, create(NodeId::ROOT, b"f.txt", NodeKind::File, b"")),
        (f, Change::SetXattr { name: b"user.k".to_vec(), value: b"v".to_vec() }),
        (c, create(NodeId::ROOT, b"c", NodeKind::Dir, b"")),
        (b, Change::Move { parent: c, name: b"b2".to_vec() }),
        (e, create(c, b"e", NodeKind::Symlink, b"../f.txt")),
        (d, create(NodeId::ROOT, b"d", NodeKind::Dir, b"")),
        (x, create(d, b"x", NodeKind::File, b"")),
        (x, Change::Content { size: 3, blocks: vec![block(0, b"xyz")] }),
        (f, Change::Truncate { size: 4, tail: None }),
        (a, Change::Remove),
    ];
    changes
        .into_iter()
        .zip(1u64..)
        .map(|((node, change), seq)| Event {
            node,
            machine: US,
            seq,
            time: Timestamp(seq as i64 * 1000),
            clock: VectorClock::from_entries([(US, seq)]),
            change,
            base: None,
        })
        .collect()
}

/// Every node an event names: its own, and the directory or node it
/// places it in or swaps it with.
fn named_nodes(e: &Event) -> impl Iterator<Item = NodeId> {
    let other = match &e.change {
        Change::Create { parent, .. } | Change::Move { parent, .. } => Some(*parent),
        Change::Exchange { with } => Some(*with),
        _ => None,
    };
    std::iter::once(e.node).chain(other)
}

impl PeerHarness {
    fn new() -> Self {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() { base.to_path_buf() } else { std::env::temp_dir() };
        remove_stale_dirs(&base);
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = base.join(format!("{PEER_DIR_PREFIX}{}-{n}", std::process::id()));
        let fail = |what: &str, err: &dyn std::fmt::Display| -> ! {
            panic!("peer_import harness: {what} {}: {err}", dir.display())
        };
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap_or_else(|e| fail("removing", &e));
        }
        let config = Config::new_default(US);
        let ours = our_events(config.hash_size);
        crate::Engine::init(&dir, config.clone()).unwrap_or_else(|e| fail("init", &e));
        let storage = std::sync::Arc::new(crate::storage::FsStorage);
        let (mut w, _) = log::LogWriter::open(storage, &dir.join("log"), US, config.segment_size)
            .unwrap_or_else(|e| fail("opening our log in", &e));
        w.append(&ours).unwrap_or_else(|e| fail("appending to our log in", &e));
        w.sync().unwrap_or_else(|e| fail("syncing our log in", &e));
        let our_segment = std::fs::read(log::segment_path(&dir.join("log"), US, 0))
            .unwrap_or_else(|e| fail("reading our log in", &e));
        drop(w);
        // Our index as a data dir has it before a pull, copied back for each
        // input: cheaper than building it again every time.
        let e = crate::Engine::open(&dir).unwrap_or_else(|e| fail("opening", &e));
        e.close().unwrap_or_else(|e| fail("closing", &e));
        drop(e);
        std::fs::copy(dir.join("index.redb"), dir.join(PEER_INDEX_TEMPLATE))
            .unwrap_or_else(|e| fail("copying the index in", &e));
        let our_tree = merge::merge(&ours, config.block_size);
        let mut groups = std::collections::BTreeMap::new();
        for (i, e) in ours.iter().enumerate() {
            let joined: Vec<NodeId> = named_nodes(e).filter(|n| *n != NodeId::ROOT).collect();
            let into = joined.iter().find_map(|n| groups.get(n).copied()).unwrap_or(i);
            let merged: Vec<usize> = joined.iter().filter_map(|n| groups.get(n).copied()).collect();
            for g in groups.values_mut() {
                if merged.contains(g) {
                    *g = into;
                }
            }
            for n in joined {
                groups.insert(n, into);
            }
        }
        PeerHarness { dir, ours, our_segment, our_tree, groups }
    }

    fn log_root(&self) -> std::path::PathBuf {
        self.dir.join("log")
    }

    /// Back to our log alone, with no index.
    fn reset(&self) {
        let log_root = self.log_root();
        let ours = std::ffi::OsString::from(US.to_string());
        let fail =
            |p: &Path, err: std::io::Error| -> ! { panic!("peer_import harness: resetting {}: {err}", p.display()) };
        for entry in std::fs::read_dir(&log_root).unwrap_or_else(|e| fail(&log_root, e)) {
            let entry = entry.unwrap_or_else(|e| fail(&log_root, e));
            if entry.file_name() == ours {
                continue;
            }
            let p = entry.path();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or_else(|e| fail(&p, e));
            let r = if is_dir { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            r.unwrap_or_else(|e| fail(&p, e));
        }
        let seg = log::segment_path(&log_root, US, 0);
        std::fs::write(&seg, &self.our_segment).unwrap_or_else(|e| fail(&seg, e));
        for name in ["history.redb", "dirty"] {
            let p = self.dir.join(name);
            if p.exists() {
                std::fs::remove_file(&p).unwrap_or_else(|e| fail(&p, e));
            }
        }
        let index = self.dir.join("index.redb");
        // libFuzzer's timer signal can interrupt the copy (seen as EINTR
        // from copy_file_range): that is the harness's, not a find.
        let copy = || std::fs::copy(self.dir.join(PEER_INDEX_TEMPLATE), &index);
        let mut copied = copy();
        while matches!(&copied, Err(e) if e.kind() == std::io::ErrorKind::Interrupted) {
            copied = copy();
        }
        copied.unwrap_or_else(|e| fail(&index, e));
    }

    fn open(&self, when: &str) -> crate::Engine {
        crate::Engine::open(&self.dir).unwrap_or_else(|e| panic!("opening our data dir {when} failed: {e}"))
    }

    /// What the logs under `log/` hold now, read with the same functions the
    /// engine uses: every peer's events up to its first damage, and the
    /// damage each peer's log (and each name that is no machine folder)
    /// must be reported with.
    fn observe(&self) -> Observed {
        let log_root = self.log_root();
        let storage = crate::storage::FsStorage;
        let (machines, bad) = log::list_machines_tolerant(&storage, &log_root)
            .unwrap_or_else(|e| panic!("peer_import harness: listing {}: {e}", log_root.display()));
        let mut seen = Observed { problems: bad.iter().map(ToString::to_string).collect(), ..Observed::default() };
        for m in machines {
            let mut events = Vec::new();
            let read = log::for_each_record(&storage, &log_root, log::log_start(m), |_, r| {
                events.push(r.event.clone());
                Ok(())
            });
            match read {
                Ok(_) => {}
                Err(e) if m == US => panic!("our own log does not read back: {e}"),
                Err(e) => {
                    let text = e.to_string();
                    let folder = log::machine_dir(&log_root, m);
                    assert!(
                        text.contains(&folder.display().to_string()),
                        "damage in the log of {m} is reported without naming its folder: {text}"
                    );
                    seen.problems.push(text);
                }
            }
            if m != US {
                seen.accepted.insert(m, events);
            }
        }
        seen
    }

    /// Every property that must hold of `e` after an import of what
    /// `seen` observed.
    fn check(&self, e: &crate::Engine, plan: &PeerPlan, seen: &Observed, when: &str) {
        let peers: Vec<&Event> = seen.accepted.values().flatten().collect();
        let model = merge::merge(self.ours.iter().chain(peers.iter().copied()), e.block_size());
        if let Err(why) = check_tree(&model) {
            panic!("{when}: the merge of the imported events is not a tree: {why}");
        }
        if let Err(why) = engine_matches(e, &model) {
            panic!("{when}: the index is not the merge of our events and the peers' accepted ones: {why}");
        }
        let problems = e.peer_problems();
        for p in &seen.problems {
            assert!(problems.contains(p), "{when}: damage not reported through peer_problems: {p}\ngot {problems:?}");
        }
        for peer in &plan.peers {
            let got = seen.accepted.get(&peer.machine).map_or(&[][..], Vec::as_slice);
            if peer.crash_only {
                assert!(
                    got.len() <= peer.written.len() && got == &peer.written[..got.len()],
                    "{when}: {} accepted events it never wrote: {got:?}",
                    peer.machine
                );
            }
            if peer.clean {
                let folder = format!("{}/", log::machine_dir(&self.log_root(), peer.machine).display());
                if let Some(p) = problems.iter().find(|p| p.contains(&folder)) {
                    panic!("{when}: a clean log (at most a torn tail) of {} is reported as damaged: {p}", peer.machine);
                }
            }
        }
        self.check_untouched(e, &peers, when);
    }

    /// Our nodes in a group no accepted peer event names (and no name
    /// conflict involves) are exactly what our events alone make them.
    fn check_untouched(&self, e: &crate::Engine, peers: &[&Event], when: &str) {
        let ix = e.index().unwrap_or_else(|err| panic!("{when}: reading the index: {err}"));
        let conflicts = ix.conflicts().unwrap_or_else(|err| panic!("{when}: reading conflicts: {err}"));
        let touched: std::collections::BTreeSet<usize> = peers
            .iter()
            .flat_map(|p| named_nodes(p))
            .chain(conflicts.iter().flat_map(|c| [c.node, c.winner]))
            .filter_map(|n| self.groups.get(&n).copied())
            .collect();
        for (id, want) in &self.our_tree.nodes {
            if self.groups.get(id).is_none_or(|g| touched.contains(g)) {
                continue;
            }
            let got = ix.node(*id).unwrap_or_else(|err| panic!("{when}: reading {id}: {err}"));
            assert_eq!(got.as_ref(), Some(&want.record), "{when}: import changed our node {id}, which no peer touched");
            let blocks = ix.blocks(*id, 0, u64::MAX).unwrap_or_else(|err| panic!("{when}: reading {id}: {err}"));
            assert!(
                blocks.into_iter().eq(want.blocks.iter().map(|(i, b)| (*i, *b))),
                "{when}: import changed {id}'s blocks"
            );
        }
    }
}

/// See [`PeerHarness::observe`].
#[derive(Debug, Default)]
struct Observed {
    accepted: std::collections::BTreeMap<MachineId, Vec<Event>>,
    problems: Vec<String>,
}

/// Removes the data dirs of [`peer_import`] runs whose process is gone.
fn remove_stale_dirs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PEER_DIR_PREFIX)).and_then(|r| r.split('-').next())
        else {
            continue;
        };
        if Path::new("/proc/self").exists() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether the live index of `e` holds exactly the tree `model`: every
/// node's record and blocks, every entry, the live count and the conflicts.
pub fn engine_matches(e: &crate::Engine, model: &Merged) -> Result<(), String> {
    let ix = e.index().map_err(|err| err.to_string())?;
    let s = |err: crate::Error| err.to_string();
    for (id, want) in &model.nodes {
        let got = ix.node(*id).map_err(s)?;
        if got.as_ref() != Some(&want.record) {
            return Err(format!("node {id}: the index has {got:?}, the merge {:?}", want.record));
        }
        let blocks = ix.blocks(*id, 0, u64::MAX).map_err(s)?;
        if !blocks.iter().copied().eq(want.blocks.iter().map(|(i, b)| (*i, *b))) {
            return Err(format!("node {id}: the index has blocks {blocks:?}, the merge {:?}", want.blocks));
        }
    }
    for ((dir, name), child) in &model.dirents {
        let got = ix.lookup(*dir, name).map_err(s)?.map(|(c, _)| c);
        if got != Some(*child) {
            return Err(format!("entry {dir}/{name:?}: the index has {got:?}, the merge {child}"));
        }
    }
    // Counted without the root (`Engine::stats` adds it).
    let live = model.nodes.iter().filter(|(id, n)| **id != NodeId::ROOT && !n.record.removed).count() as u64;
    let counts = ix.counts().map_err(s)?;
    if counts.nodes != live {
        return Err(format!("the index counts {} live nodes, the merge has {live}", counts.nodes));
    }
    // The index lists conflicts by event, node and kind; the merge in the
    // order it resolved them: compare as sorted lists.
    let key = |c: &merge::Conflict| (c.time, c.event, c.node, matches!(c.kind, merge::ConflictKind::Concurrent { .. }));
    let mut got = ix.conflicts().map_err(s)?;
    let mut want = model.conflicts.clone();
    got.sort_by_key(key);
    want.sort_by_key(key);
    if got != want {
        return Err(format!("conflicts differ: the index has {got:?}, the merge {want:?}"));
    }
    Ok(())
}

/// Target `peer_import`: peers' logs pulled into a real data dir (made once
/// per thread under `/dev/shm`, reset between inputs) and imported by a
/// live [`crate::Engine`], the way `syncer sync` does: the input builds 0
/// to 3 peers' logs of 1 to 3 segments each (built from events with hostile
/// names, clocks and sizes, then maybe damaged, or raw bytes) and up to 2
/// hostile entries (folders that are no machine id, bad segment names,
/// folders named as segments, gaps, segments of another machine); the
/// first import sees a prefix of each peer's log (as `rsync --append`
/// delivers it), the second all of it, the third nothing new.
///
/// Properties: never panics; opening and importing never fail because of
/// a peer; after each import the index is exactly the merge of our events
/// and every peer event before its log's first damage; every damage (and
/// every name that is no machine folder) is in `peer_problems`, naming the
/// peer's folder, and a clean log with at most a torn tail never is; a log
/// damaged only as a crash damages it yields a prefix of what was written;
/// our log's bytes never change, nor do our nodes that no accepted peer
/// event (or name conflict) touches; a repeated import applies nothing and
/// changes nothing; the index rebuilt from the logs equals the live one,
/// and reports exactly the damage there is.
pub fn peer_import(data: &[u8]) {
    peer_import_outcome(data);
}

/// What [`peer_import`] ended with, for tests that check an input reaches
/// the path it was written for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerImportOutcome {
    /// Peer events in the index after the last import.
    pub peer_events: usize,
    /// `peer_problems` of the data dir reopened with a rebuilt index, sorted.
    pub problems: Vec<String>,
    /// Whether the first or second import replayed the index.
    pub replayed: bool,
}

/// [`peer_import`], returning what it ended with.
pub fn peer_import_outcome(data: &[u8]) -> PeerImportOutcome {
    let plan = PeerPlan::new(&mut Unstructured::new(data));
    PEER_HARNESS.with(|h| {
        let mut h = h.borrow_mut();
        let h = h.get_or_insert_with(PeerHarness::new);
        h.reset();
        run_peer_import(h, &plan)
    })
}

/// Removes this thread's [`peer_import`] data dir (tests call it when done;
/// a fuzz run's dir is removed by the next run, see `PEER_DIR_PREFIX`).
pub fn peer_import_cleanup() {
    PEER_HARNESS.with(|h| {
        if let Some(h) = h.borrow_mut().take() {
            let _ = std::fs::remove_dir_all(&h.dir);
        }
    });
}

fn run_peer_import(h: &PeerHarness, plan: &PeerPlan) -> PeerImportOutcome {
    let e = h.open("before the pull");
    let mut before = 0;
    let mut replayed = false;
    for (full, when) in [(false, "first import"), (true, "second import")] {
        plan.write(&h.log_root(), full);
        let report = e.import().unwrap_or_else(|err| panic!("{when} failed (a peer's log must never stop it): {err}"));
        let seen = h.observe();
        let now: usize = seen.accepted.values().map(Vec::len).sum();
        let want = if report.replayed { h.ours.len() + now } else { now - before.min(now) };
        assert_eq!(report.applied, want as u64, "{when}: applied count (replayed: {})", report.replayed);
        h.check(&e, plan, &seen, when);
        before = now;
        replayed |= report.replayed;
    }
    let dump = |e: &crate::Engine, when: &str| e.dump_tree().unwrap_or_else(|err| panic!("{when}: dump_tree: {err}"));
    let live = dump(&e, "after the second import");
    let again = e.import().unwrap_or_else(|err| panic!("third import failed: {err}"));
    assert_eq!((again.applied, again.replayed), (0, false), "a repeated import applied events");
    assert_eq!(dump(&e, "after the third import"), live, "a repeated import changed the tree");
    let counts = e.index().and_then(|ix| ix.counts()).unwrap_or_else(|err| panic!("counts: {err}"));
    drop(e);
    let seg = log::segment_path(&h.log_root(), US, 0);
    assert!(std::fs::read(&seg).ok() == Some(h.our_segment.clone()), "importing changed our own log");
    let index = h.dir.join("index.redb");
    std::fs::remove_file(&index).unwrap_or_else(|err| panic!("peer_import harness: removing the index: {err}"));
    let rebuilt = h.open("with the peers' logs (index rebuilt)");
    let seen = h.observe();
    h.check(&rebuilt, plan, &seen, "rebuild");
    assert_eq!(dump(&rebuilt, "rebuild"), live, "the index rebuilt from the logs differs from the live one");
    let rebuilt_counts = rebuilt.index().and_then(|ix| ix.counts()).unwrap_or_else(|err| panic!("counts: {err}"));
    assert_eq!(rebuilt_counts, counts, "the rebuilt index counts differently");
    let mut got = rebuilt.peer_problems();
    let mut want = seen.problems.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "a fresh open reports other damage than there is");
    PeerImportOutcome { peer_events: before, problems: got, replayed }
}
