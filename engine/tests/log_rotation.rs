//! Segment rotation, random access by position, resume after reopen, and
//! crash safety under `CrashStorage` (rule 2 of `docs/DESIGN.md`).

use std::path::Path;
use std::sync::Arc;

use engine::clock::VectorClock;
use engine::event::{Change, Event};
use engine::ids::{LogPos, MachineId, NodeId, Timestamp};
use engine::log::{self, LogWriter, SEGMENT_HEADER_LEN};
use engine::storage::{CrashStorage, FsStorage, Storage};
use engine::Error;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const M: MachineId = MachineId(0x00c0_ffee_0000_0001);

fn ev(seq: u64, value_len: usize) -> Event {
    Event {
        node: NodeId::new(seq % 7 + 1, M),
        machine: M,
        seq,
        time: Timestamp(1_700_000_000_000_000_000 + 1000 * seq as i64),
        clock: VectorClock::from_entries([(M, seq), (MachineId(5), 2)]),
        change: Change::SetXattr { name: b"user.k".to_vec(), value: vec![seq as u8; value_len] },
        base: None,
    }
}

fn all_events(storage: &dyn Storage, root: &Path) -> Vec<Event> {
    let (evs, end) = log::read_events(storage, root, log::log_start(M)).expect("read");
    assert_eq!(end.torn_tail, None);
    evs.into_iter().map(|(_, e)| e).collect()
}

#[test]
fn rotation_positions_and_resume() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let limit = 400;
    let storage: Arc<dyn Storage> = Arc::new(FsStorage);
    let (mut w, rec) = LogWriter::open(storage.clone(), root, M, limit).expect("open");
    assert!(rec.is_clean());
    assert_eq!((w.last_seq(), w.last_time()), (0, Timestamp(0)));
    assert_eq!(w.position(), log::log_start(M));

    let mut expected = Vec::new();
    let mut positions: Vec<LogPos> = Vec::new();
    let mut seq = 0;
    // Batches of varied sizes, one event larger than the whole limit.
    for (batch, value_len) in [(1, 10), (5, 40), (3, 120), (1, 1000), (4, 7), (2, 300), (6, 50)] {
        let evs: Vec<Event> = (0..batch)
            .map(|_| {
                seq += 1;
                ev(seq, value_len)
            })
            .collect();
        let pos = w.append(&evs).expect("append");
        assert_eq!(pos.len(), evs.len());
        positions.extend(pos);
        expected.extend(evs);
        if seq % 2 == 0 {
            w.sync().expect("sync");
        }
    }
    w.sync().expect("sync");
    assert_eq!(w.last_seq(), seq);
    let end_pos = w.position();
    drop(w);

    // Positions read back at random.
    for (pos, e) in positions.iter().zip(&expected) {
        let d = log::read_record_at(&FsStorage, root, *pos).expect("read at");
        assert_eq!(&d.event, e);
        assert_eq!(d.version, engine::record::CURRENT_VERSION);
        assert_eq!(&log::read_event_at(&FsStorage, root, *pos).expect("read at"), e);
    }
    // Positions are strictly increasing.
    assert!(positions.windows(2).all(|p| p[0] < p[1]));

    // Segments: contiguous, each under the limit unless it holds one record.
    let segs = log::list_segments(&FsStorage, root, M).expect("list");
    assert!(segs.len() > 3, "{segs:?}");
    for &n in &segs {
        let len = std::fs::metadata(log::segment_path(root, M, n)).expect("stat").len();
        let records = positions.iter().filter(|p| p.segment == n).count();
        assert!(records >= 1, "segment {n} is empty");
        assert!(len <= limit || records == 1, "segment {n}: {len} bytes, {records} records");
        let path = log::segment_path(root, M, n);
        let bytes = std::fs::read(&path).expect("read");
        let scan = log::SegmentReader::new(&bytes, &path, M, n, log::ReadMode::Strict).scan().expect("scan");
        assert_eq!(scan.records.len(), records);
        assert_eq!(scan.valid_len, len);
    }
    // The oversized event sits alone.
    let big = expected.iter().position(|e| matches!(&e.change, Change::SetXattr { value, .. } if value.len() == 1000));
    let big_pos = positions[big.expect("big event")];
    assert_eq!(positions.iter().filter(|p| p.segment == big_pos.segment).count(), 1);
    assert_eq!(big_pos.offset, SEGMENT_HEADER_LEN);

    // Reading everything, and reading from any position on.
    let (all, end) = log::read_events(&FsStorage, root, log::log_start(M)).expect("read");
    assert_eq!(all.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(), expected);
    assert_eq!(all.iter().map(|(p, _)| *p).collect::<Vec<_>>(), positions);
    assert_eq!(end.next, end_pos);
    for k in [0, 3, 7, positions.len() - 1] {
        let (tail, _) = log::read_events(&FsStorage, root, positions[k]).expect("read from");
        assert_eq!(tail.len(), positions.len() - k);
        assert_eq!(tail[0].1, expected[k]);
    }
    let (none, end2) = log::read_events(&FsStorage, root, end_pos).expect("read at end");
    assert!(none.is_empty());
    assert_eq!(end2.next, end_pos);

    // The catch-up form: end offsets line up with the next position.
    let mut ends = Vec::new();
    log::for_each_event(&FsStorage, root, M, (0, 0), |pos, end, _| {
        ends.push((pos, end));
        Ok(())
    })
    .expect("for_each_event");
    for (i, (pos, end)) in ends.iter().enumerate() {
        match positions.get(i + 1) {
            Some(next) if next.segment == pos.segment => assert_eq!(*end, next.offset),
            _ => assert!(*end > pos.offset),
        }
    }

    // Resume after reopen.
    let (mut w, rec) = LogWriter::open(storage, root, M, limit).expect("reopen");
    assert!(rec.is_clean());
    assert_eq!(w.last_seq(), seq);
    assert_eq!(w.last_time(), expected.last().expect("events").time);
    assert_eq!(w.position(), end_pos);
    let next = ev(seq + 1, 5);
    w.append(std::slice::from_ref(&next)).expect("append after reopen");
    w.sync().expect("sync");
    expected.push(next);
    assert_eq!(all_events(&FsStorage, root), expected);
}

#[test]
fn invalid_appends_write_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let (mut w, _) = LogWriter::open(Arc::new(FsStorage), root, M, 1000).expect("open");
    w.append(&[ev(1, 1)]).expect("append");
    let before = w.position();
    let other = Event { machine: MachineId(3), ..ev(2, 1) };
    let back_in_time = Event { time: Timestamp(0), ..ev(2, 1) };
    for bad in [vec![ev(3, 1)], vec![ev(1, 1)], vec![ev(2, 1), ev(4, 1)], vec![other], vec![back_in_time]] {
        match w.append(&bad) {
            Err(Error::Invalid(_)) => {}
            other => panic!("{bad:?} was accepted: {other:?}"),
        }
        assert_eq!(w.position(), before);
        assert_eq!(w.last_seq(), 1);
    }
    assert!(w.append(&[]).expect("empty append").is_empty());
    w.append(&[ev(2, 1)]).expect("append");
    assert!(LogWriter::open(Arc::new(FsStorage), root, M, SEGMENT_HEADER_LEN).is_err());
}

#[test]
fn crash_keeps_exactly_synced_plus_intact_later_events() {
    let mut rng = StdRng::seed_from_u64(0x5eed_2024);
    let root = Path::new("/data/log");
    let (mut torn_seen, mut rotated_seen) = (0, 0);
    for iteration in 0..200 {
        let store = CrashStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(store.clone());
        // Half the logs rotate often; in the others the tail is in an old segment.
        let limit = if rng.random_bool(0.5) { rng.random_range(150..600) } else { log::DEFAULT_SEGMENT_LIMIT };
        let (mut w, _) = LogWriter::open(storage.clone(), root, M, limit).expect("open");
        let mut appended: Vec<Event> = Vec::new();
        let mut synced = 0;
        let rounds = rng.random_range(1..8);
        for round in 0..rounds {
            let n = rng.random_range(1..5);
            let evs: Vec<Event> = (0..n).map(|i| ev(appended.len() as u64 + 1 + i, rng.random_range(0..200))).collect();
            w.append(&evs).expect("append");
            appended.extend(evs);
            // The last round is always left unsynced, so the crash can bite.
            if round + 1 < rounds && rng.random_bool(0.5) {
                w.sync().expect("sync");
                synced = appended.len();
            }
        }
        drop(w);
        let unsynced = store.unsynced_bytes();
        store.crash(|_, synced_len, len| rng.random_range(synced_len..=len));

        let (mut w, rec) = LogWriter::open(storage.clone(), root, M, limit)
            .unwrap_or_else(|e| panic!("iteration {iteration}: reopen after crash: {e}"));
        let got = all_events(&*storage, root);
        assert!(got.len() >= synced, "iteration {iteration}: lost synced events ({} < {synced})", got.len());
        assert_eq!(got[..], appended[..got.len()], "iteration {iteration}: events differ");
        assert_eq!(w.last_seq(), got.len() as u64);
        if unsynced == 0 {
            assert!(rec.is_clean(), "iteration {iteration}: {rec:?}");
        }
        torn_seen += usize::from(!rec.is_clean());
        rotated_seen += usize::from(w.position().segment > 0);

        // Recovery is idempotent and the log goes on.
        let next = ev(got.len() as u64 + 1, 3);
        w.append(std::slice::from_ref(&next)).expect("append after crash");
        w.sync().expect("sync");
        drop(w);
        store.crash(|_, synced_len, _| synced_len);
        let (w, rec) = LogWriter::open(storage.clone(), root, M, limit).expect("reopen again");
        assert!(rec.is_clean(), "iteration {iteration}: {rec:?}");
        assert_eq!(w.last_seq(), got.len() as u64 + 1);
        let again = all_events(&*storage, root);
        assert_eq!(again.len(), got.len() + 1);
        assert_eq!(again.last(), Some(&next));
    }
    eprintln!("crash test: {torn_seen} torn tails cut, {rotated_seen} multi-segment logs");
    // The crashes did bite: torn tails were cut, and logs spanned segments.
    assert!(torn_seen >= 20 && rotated_seen >= 20, "torn {torn_seen}, rotated {rotated_seen}");
}
