//! Windowed segment reads read exactly like whole-file reads.

use super::*;
use crate::clock::VectorClock;
use crate::event::Change;
use crate::ids::NodeId;
use crate::storage::FsStorage;
use proptest::prelude::*;

const M: MachineId = MachineId(0x5eed);

fn ev(seq: u64, value_len: usize) -> Event {
    Event {
        node: NodeId::new(seq, M),
        machine: M,
        seq,
        time: Timestamp(1_700_000_000_000_000_000 + seq as i64),
        clock: VectorClock::from_entries([(M, seq)]),
        change: Change::SetXattr { name: b"user.k".to_vec(), value: vec![seq as u8; value_len] },
        base: None,
    }
}

/// What a read gives: every record's (offset, seq), and how it ended.
fn read_all(path: &Path, start: u64, window: usize) -> Result<(Vec<(u64, u64)>, SegmentEnd)> {
    let mut got = Vec::new();
    let end = read_segment_windows(
        &FsStorage,
        path,
        M,
        0,
        ReadMode::Recover,
        start,
        (start <= SEGMENT_HEADER_LEN).then_some((0, Timestamp(i64::MIN))),
        window,
        &mut |item| {
            if let Item::Record(r) = item {
                got.push((r.offset, r.event.seq));
            }
            Ok(())
        },
    )?;
    Ok((got, end))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Windows of any size read what one read of the whole file reads:
    /// the same records, the same end, the same torn tail or damage.
    #[test]
    fn windows_read_like_the_whole_file(
        lens in proptest::collection::vec(0usize..700, 1..30),
        window in 1usize..900,
        tail in 0usize..4,
        skip in 0usize..30,
    ) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("log");
        let (mut w, _) = LogWriter::open(Arc::new(FsStorage), &root, M, 1 << 30).expect("open");
        let events: Vec<Event> = lens.iter().enumerate().map(|(i, &l)| ev(i as u64 + 1, l)).collect();
        let positions = w.append(&events).expect("append");
        w.sync().expect("sync");
        drop(w);
        let path = segment_path(&root, M, 0);
        let mut bytes = std::fs::read(&path).expect("read");
        match tail {
            // A torn tail: half a record more.
            1 => {
                let rec = record::encode(&ev(lens.len() as u64 + 1, 300)).expect("encode");
                bytes.extend_from_slice(&rec[..rec.len() / 2]);
            }
            // Zeros at the end.
            2 => bytes.extend_from_slice(&[0; 200]),
            // Damage in the middle: a flipped byte in a record's payload.
            3 => {
                let at = positions[positions.len() / 2].offset as usize + 20;
                if at < bytes.len() {
                    bytes[at] ^= 0x55;
                }
            }
            _ => {}
        }
        std::fs::write(&path, &bytes).expect("write");
        let start = positions.get(skip).map_or(SEGMENT_HEADER_LEN, |p| p.offset);
        let whole = read_all(&path, start, usize::MAX);
        let windowed = read_all(&path, start, window);
        match (whole, windowed) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
            (a, b) => prop_assert!(false, "whole read {a:?}, windowed {b:?}"),
        }
    }
}
