//! The fuzz targets' bodies (`testkit::fuzz`) as ordinary tests:
//!
//! - every input a fuzz run found crashing is a named test here, with the
//!   bytes inline, so the fix stays fixed on the stable toolchain;
//! - a few seeds per target that reach each body's success paths (a valid
//!   record, segment, blob, config), so the properties the bodies check are
//!   exercised on every `cargo test`;
//! - `replay_local_fuzz_corpora` (opt-in, `-- --ignored`) replays every file
//!   under `fuzz/corpus/<target>/` and `fuzz/artifacts/<target>/`.

use engine::config::Config;
use engine::event::{Attrs, Change, Event, NodeKind};
use engine::ids::{MachineId, NodeId, Timestamp};
use engine::{blob, log, record};
use testkit::fuzz as fb;

type Body = fn(&[u8]);

const TARGETS: [(&str, Body); 7] = [
    ("record_decode", fb::record_decode),
    ("segment_scan", fb::segment_scan),
    ("blob_decode", fb::blob_decode),
    ("config_parse", fb::config_parse),
    ("tree_fold", fb::tree_fold),
    ("merge_converge", fb::merge_converge),
    ("peer_import", fb::peer_import),
];

fn event(seq: u64) -> Event {
    Event {
        node: NodeId::new(seq, MachineId(1)),
        machine: MachineId(1),
        seq,
        time: Timestamp(seq as i64 * 10),
        clock: engine::clock::VectorClock::from_entries([(MachineId(1), seq)]),
        change: Change::Create {
            parent: NodeId::ROOT,
            name: format!("f{seq}").into_bytes(),
            kind: NodeKind::File,
            attrs: Attrs::default(),
            target: Vec::new(),
        },
        base: None,
    }
}

#[test]
fn every_body_takes_empty_and_tiny_inputs() {
    for (name, body) in TARGETS {
        for input in [&[][..], &[0], &[1], &[0xff], &[0x80, 0, 0, 0], &[0xff; 64]] {
            std::panic::catch_unwind(|| body(input)).unwrap_or_else(|_| panic!("{name} panicked on {input:02x?}"));
        }
    }
    fb::peer_import_cleanup();
}

#[test]
fn record_seeds() {
    let frame = record::encode(&event(1)).expect("encode");
    // Raw mode: a valid frame, then every prefix of it (torn), then a flipped bit.
    for cut in 0..=frame.len() {
        fb::record_decode(&[[0u8].as_slice(), &frame[..cut]].concat());
    }
    let mut flipped = frame.clone();
    flipped[30] ^= 4;
    fb::record_decode(&[[0u8].as_slice(), &flipped].concat());
    // Framed mode: the payload of a valid record, as v2 and as v1.
    fb::record_decode(&[[0x80u8].as_slice(), &frame[record::HEADER_LEN..]].concat());
    fb::record_decode(&[[0x81u8].as_slice(), &frame[record::HEADER_LEN..]].concat());
    assert!(record::decode(&fb::frame_with_checksum(record::CURRENT_VERSION, &frame[record::HEADER_LEN..])).is_ok());
}

#[test]
fn segment_seeds() {
    let mut seg = log::segment_header(MachineId(1), 0).to_vec();
    for seq in 1..4 {
        seg.extend_from_slice(&record::encode(&event(seq)).expect("encode"));
    }
    // Raw mode (machine 1, segment 0), every prefix: the crash cases.
    for cut in 0..=seg.len() {
        fb::segment_scan(&[[0u8, 0, 0].as_slice(), &seg[..cut]].concat());
    }
    // Structured mode: built and damaged from the input.
    for i in 0..=255u8 {
        fb::segment_scan(&[1, 0, 0, 5, i, 7, 3, 1, i, 0, 0, 9, 2, i, 1, 4, 4, 0, 1, 0, 0, 3]);
    }
}

#[test]
fn blob_seeds() {
    for data in [&b""[..], b"hello", &[0u8; 5000], &(0..=255u8).cycle().take(70_000).collect::<Vec<_>>()] {
        for level in [0, 1, 3] {
            let stored = blob::encode_blob(data, level);
            fb::blob_decode(&[[0u8].as_slice(), &stored].concat());
            fb::blob_decode(&[[0x80u8].as_slice(), &stored].concat());
        }
    }
}

#[test]
fn config_seeds() {
    let c = Config::new_default(MachineId(0xabc));
    fb::config_parse(c.to_toml().as_bytes());
    for s in ["syncer-data 1.1.0\n", "syncer-data 01.1.0", "10GiB", "1.5 GB", "4096", "0.5KiB", "18446744073709551615"]
    {
        fb::config_parse(s.as_bytes());
    }
    assert_eq!(Config::from_toml(&c.to_toml()), Ok(c));
}

#[test]
fn fold_and_merge_seeds() {
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0x2545_f491_4f6c_dd1d);
    for _ in 0..200 {
        let bytes = seeded_bytes(&mut rng, 300);
        fb::tree_fold(&bytes);
        fb::merge_converge(&bytes);
    }
}

/// Input bytes that make `testkit::fuzz::event` build three events of a peer:
/// each is node, machine, seq, time (three fields the segment builder
/// overwrites), an empty clock, the change, then the builder's time step.
const PEER_EVENTS: [&[u8]; 3] = [
    // Node 1 of machine 2 (node code 4): create (0) in the root (0), named
    // "b" (name code 9), a directory (1), mode 0o755, no target.
    &[4, 0, 0, 0, 0, 0, 0, 0, 9, 1, 0xed, 0x01, 0, 10],
    // Node 2 of machine 2 (5): create in node 1 of machine 2 (4), named
    // "c" (10), a file (0), mode 0o644, no target.
    &[5, 0, 0, 0, 0, 0, 0, 4, 10, 0, 0xa4, 0x01, 0, 10],
    // Node 2 of machine 2: a write (3) of one block (1) at index 0, present
    // (1), hash of byte 7, 100 bytes long; an ordinary size (1) of 100.
    &[5, 0, 0, 0, 0, 0, 3, 1, 0, 1, 7, 100, 0, 1, 100, 0, 10],
];

/// A `peer_import` input: one peer (machine 2) with one segment of the three
/// [`PEER_EVENTS`]. `present` 1: the first import sees all of it; 0: only
/// the first `cut` bytes. `damage` follows the events (a built segment with
/// mode 0 reads it, mode 1 has none). No hostile entries.
fn one_peer(present: u8, mode: u8, damage: &[u8], cut: Option<u16>) -> Vec<u8> {
    let mut input = vec![1, 0, 0, present, 0xf4, 0x01, mode, 3];
    input.extend(PEER_EVENTS.concat());
    input.extend_from_slice(damage);
    input.extend(cut.map(u16::to_le_bytes).unwrap_or_default());
    input.push(0);
    input
}

#[test]
fn peer_import_seeds() {
    let nothing = fb::peer_import_outcome(&[]);
    assert_eq!(nothing, fb::PeerImportOutcome::default());

    // A clean segment, whole at the first import, then again in two parts
    // (a record cut in half at the first import: a torn tail, no damage).
    let whole = fb::peer_import_outcome(&one_peer(1, 1, &[], None));
    assert_eq!((whole.peer_events, whole.problems.len()), (3, 0), "{whole:?}");
    let in_parts = fb::peer_import_outcome(&one_peer(0, 1, &[], Some(100)));
    assert_eq!((in_parts.peer_events, in_parts.problems.len()), (3, 0), "{in_parts:?}");

    // Cut short for good (damage: once, at byte 150, truncate): a torn tail
    // of a log still arriving, so its whole records import and nothing is
    // reported.
    let torn = fb::peer_import_outcome(&one_peer(1, 0, &[1, 150, 0, 0], None));
    assert!(torn.peer_events < 3 && torn.problems.is_empty(), "{torn:?}");

    // A flipped byte inside the first record, with records after it:
    // damage, reported naming the peer's folder, and nothing imported.
    let flipped = fb::peer_import_outcome(&one_peer(1, 0, &[1, 40, 0, 2, 0xff], None));
    assert_eq!(flipped.peer_events, 0, "{flipped:?}");
    assert!(matches!(&flipped.problems[..], [p] if p.contains("/log/0000000000000002/")), "{flipped:?}");

    // Hostile entries: no peers (0); one entry (1) of kind 0 (a folder whose
    // name is no machine id, named by the next byte) or kind 2 (a folder
    // named as a segment); each is reported by name.
    for (name_code, name) in [(0u8, "0000000000000002x"), (6, "00000000000000\\xFF\\xFE"), (7, "+000000000000002")] {
        let hostile = fb::peer_import_outcome(&[0, 1, 0, name_code]);
        assert!(matches!(&hostile.problems[..], [p] if p.contains(name)), "{name}: {hostile:?}");
    }
    let dir_as_segment = fb::peer_import_outcome(&[0, 1, 2]);
    assert!(
        matches!(&dir_as_segment.problems[..], [p] if p.contains("0000000000000010/0000000000000000.seg")),
        "{dir_as_segment:?}"
    );

    // Random inputs, to reach the rest (replays, conflicts, hostile events).
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0x9e37_79b9_7f4a_7c15);
    for _ in 0..40 {
        fb::peer_import(&seeded_bytes(&mut rng, 400));
    }
    fb::peer_import_cleanup();
}

#[test]
#[ignore = "opt-in: replays the local fuzz corpora (fuzz/corpus, fuzz/artifacts)"]
fn replay_local_fuzz_corpora() {
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0;
    for (name, body) in TARGETS {
        for dir in ["corpus", "artifacts"] {
            let Ok(rd) = std::fs::read_dir(fuzz.join(dir).join(name)) else { continue };
            for f in rd {
                let path = f.expect("entry").path();
                let input = std::fs::read(&path).expect("read input");
                std::panic::catch_unwind(|| body(&input))
                    .unwrap_or_else(|_| panic!("{name}: {} fails", path.display()));
                replayed += 1;
            }
        }
    }
    fb::peer_import_cleanup();
    println!("replayed {replayed} inputs");
}

/// segment_scan, found in the first run: the body's crash model zero-filled
/// a segment from inside its header, leaving a valid prefix then zeros — a
/// state no crash makes (the header is one write at the start of a page),
/// which the engine rightly refuses. The body now zero-fills whole headers.
#[test]
fn segment_scan_zeroed_header_suffix() {
    fb::segment_scan(&[0x2b, 0xff, 0xff, 0x00, 0x00, 0xf4, 0xff, 0x2b, 0xfb, 0x00, 0x8d]);
}

/// A crash that kept the first page of an append and zero-filled the rest:
/// the last complete record, then a record whose payload turns to zeros
/// part way, then zeros where later records were. That is a torn tail (it
/// was once called damage, so the writer refused to open its own log).
#[test]
fn segment_zero_filled_from_inside_a_record_is_a_torn_tail() {
    let m = MachineId(1);
    let mut seg = log::segment_header(m, 0).to_vec();
    let mut ends = Vec::new();
    for seq in 1..4 {
        seg.extend_from_slice(&record::encode(&event(seq)).expect("encode"));
        ends.push(seg.len());
    }
    let cut = ends[0] + 30;
    seg[cut..].fill(0);
    let scan = log::SegmentReader::new(&seg, std::path::Path::new("x.seg"), m, 0, log::ReadMode::Recover)
        .scan()
        .expect("a torn tail, not damage");
    assert_eq!(scan.records.len(), 1);
    assert_eq!(scan.torn_tail, Some(ends[0] as u64));
}

/// Found by `segment_scan` (10-minute run): see docs/RELIABILITY.md.
#[test]
fn segment_scan_fuzz_crash_40613ff2() {
    fb::segment_scan(&[65, 55, 49, 55, 55, 55, 1, 55, 85, 199, 85, 65, 199, 199, 199, 199, 50, 199, 26, 83, 89, 78]);
}

/// `n` bytes from a seeded generator: deterministic seed inputs.
fn seeded_bytes(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    rand::RngCore::fill_bytes(rng, &mut out);
    out
}
