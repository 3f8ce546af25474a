//! The record codec over generated events: every event round-trips in the
//! current format and in the older ones it still reads, and every damaged
//! or cut frame is an error. The events come from the test kit's one
//! generator (`testkit::gen`), over the whole domain of each field.

use engine::event::{Change, Event, EventV2};
use engine::ids::Timestamp;
use engine::record::{decode, encode, encode_v1, encode_v2, RecordError, CURRENT_VERSION, V1};
use proptest::prelude::*;
use testkit::gen::strategy::{any_event, any_event_v1};
use testkit::gen::Unstructured;

/// Record version 2 (an event without a base).
const V2: u8 = 2;

proptest! {
    #[test]
    fn round_trip(ev in any_event(), trailing in proptest::collection::vec(any::<u8>(), 0..8)) {
        let mut frame = encode(&ev).expect("encode");
        let len = frame.len();
        prop_assert_eq!(&frame[..4], b"SYR\x03");
        frame.extend_from_slice(&trailing);
        let d = decode(&frame).expect("decode");
        prop_assert_eq!(d.version, CURRENT_VERSION);
        prop_assert_eq!(d.frame_len, len);
        prop_assert_eq!(d.event, ev);
    }

    #[test]
    fn v1_round_trip_upgrades_time(ev in any_event_v1()) {
        let frame = encode_v1(&ev).expect("encode");
        prop_assert_eq!(&frame[..4], b"SYR\x01");
        let d = decode(&frame).expect("decode");
        prop_assert_eq!(d.version, V1);
        prop_assert_eq!(d.frame_len, frame.len());
        prop_assert_eq!(d.event.time, Timestamp(ev.time_secs * 1_000_000_000));
        prop_assert_eq!(d.event, Event::from(ev));
    }

    #[test]
    fn v2_round_trip_upgrades_with_no_base(ev in any_event()) {
        let v2 = EventV2 { node: ev.node, machine: ev.machine, seq: ev.seq, time: ev.time, clock: ev.clock, change: ev.change };
        let frame = encode_v2(&v2).expect("encode");
        prop_assert_eq!(&frame[..4], b"SYR\x02");
        let d = decode(&frame).expect("decode");
        prop_assert_eq!(d.version, V2);
        prop_assert_eq!(d.event.base, None);
        prop_assert_eq!(d.event, Event::from(v2));
    }

    #[test]
    fn any_flipped_byte_is_an_error(ev in any_event(), at in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let mut frame = encode(&ev).expect("encode");
        let i = at.index(frame.len());
        frame[i] ^= mask;
        prop_assert!(decode(&frame).is_err(), "flip at {} with {:#x} decoded", i, mask);
    }

    #[test]
    fn every_truncation_is_incomplete(ev in any_event()) {
        let frame = encode(&ev).expect("encode");
        for cut in 0..frame.len() {
            let err = decode(&frame[..cut]).expect_err("truncated frame decoded");
            let incomplete = matches!(err, RecordError::Incomplete { have, .. } if have == cut);
            prop_assert!(incomplete, "cut {}: {:?}", cut, err);
        }
    }
}

/// The round trips above cover every kind of change: random bytes reach
/// each variant, with and without a base.
#[test]
fn the_generator_reaches_every_change_and_a_base() {
    // Every kind `log inspect --kind` names, and no other.
    let mut want = engine::forensics::KINDS.to_vec();
    want.sort_unstable();
    let mut seen = std::collections::BTreeSet::new();
    let (mut with_base, mut without) = (0, 0);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..2000 {
        let bytes: Vec<u8> = (0..256)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let ev = testkit::gen::any_event(&mut Unstructured::new(&bytes));
        seen.insert(ev.change.kind_name());
        if ev.base.is_some() {
            with_base += 1;
        } else {
            without += 1;
        }
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), want);
    assert!(with_base > 0 && without > 0);
    // Zero bytes build the simplest event, so shrinking ends there.
    let zero = testkit::gen::any_event(&mut Unstructured::new(&[]));
    assert!(matches!(zero.change, Change::Create { ref name, .. } if name.is_empty()), "{zero:?}");
}
