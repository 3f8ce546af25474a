//! The fuzz targets' bodies (`engine::fuzz_bodies`) as ordinary tests:
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
use engine::fuzz_bodies as fb;
use engine::ids::{MachineId, NodeId, Timestamp};
use engine::{blob, log, record};

type Body = fn(&[u8]);

const TARGETS: [(&str, Body); 6] = [
    ("record_decode", fb::record_decode),
    ("segment_scan", fb::segment_scan),
    ("blob_decode", fb::blob_decode),
    ("config_parse", fb::config_parse),
    ("tree_fold", fb::tree_fold),
    ("merge_converge", fb::merge_converge),
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
    }
}

#[test]
fn every_body_takes_empty_and_tiny_inputs() {
    for (name, body) in TARGETS {
        for input in [&[][..], &[0], &[1], &[0xff], &[0x80, 0, 0, 0], &[0xff; 64]] {
            std::panic::catch_unwind(|| body(input)).unwrap_or_else(|_| panic!("{name} panicked on {input:02x?}"));
        }
    }
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
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..200 {
        let bytes: Vec<u8> = (0..300)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        fb::tree_fold(&bytes);
        fb::merge_converge(&bytes);
    }
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
    let scan = log::scan_segment(&seg, std::path::Path::new("x.seg"), m, 0, true).expect("a torn tail, not damage");
    assert_eq!(scan.records.len(), 1);
    assert_eq!(scan.torn_tail, Some(ends[0] as u64));
}

/// Found by `segment_scan` (10-minute run): see docs/RELIABILITY.md.
#[test]
fn segment_scan_fuzz_crash_40613ff2() {
    fb::segment_scan(&[65, 55, 49, 55, 55, 55, 1, 55, 85, 199, 85, 65, 199, 199, 199, 199, 50, 199, 26, 83, 89, 78]);
}
