//! The framing of one log record: a pure codec, no I/O. Segments (see `log`)
//! are these frames back to back.
//!
//! # Layout
//!
//! A frame is a 20-byte header followed by the payload. All integers are
//! little endian.
//!
//! | offset | size | field        | meaning                                                        |
//! |-------:|-----:|--------------|----------------------------------------------------------------|
//! | 0      | 3    | magic        | `b"SYR"`                                                       |
//! | 3      | 1    | version      | record version: 3 = current, 2 and 1 = legacy (read only)      |
//! | 4      | 1    | kind         | 1 = event; every other value is refused                        |
//! | 5      | 3    | reserved     | zero                                                           |
//! | 8      | 4    | payload_len  | payload bytes, `u32`, at most [`MAX_PAYLOAD`] (16 MiB)         |
//! | 12     | 8    | checksum     | first 8 bytes of blake3(header bytes `0..12` ‖ payload)        |
//! | 20     | len  | payload      | rkyv 0.8 archive of [`Event`] (v3), [`EventV2`] or [`EventV1`] |
//!
//! # Invariants
//!
//! - The checksum covers everything in the frame except itself, so one flipped
//!   bit anywhere (length included) is detected.
//! - A header is judged from the bytes present: a prefix whose magic, version,
//!   kind, reserved bytes or length are already wrong is refused at once, so a
//!   short buffer is [`RecordError::Incomplete`] only when it is a prefix of a
//!   frame that could still be valid. That is what lets the log tell a torn
//!   tail (a crash kept only a prefix of the last frame) from damage.
//! - The length is checked against [`MAX_PAYLOAD`] before anything is
//!   allocated; decoding never allocates more than the input size.
//! - The payload is validated by rkyv's bytecheck, then the decoded event's
//!   vector clock must be canonical ([`VectorClock::is_canonical`]).
//! - Decoding never panics, whatever the input (this is a fuzz target).
//!
//! # Version history
//!
//! - v1: payload is [`EventV1`] (`time_secs`, whole seconds). Upgraded on read
//!   through `From<EventV1> for Event`. syncer never writes v1 again;
//!   [`encode_v1`] exists only to build test fixtures.
//! - v2: payload is [`EventV2`] (`time` in nanoseconds, no content base).
//!   Upgraded on read through `From<EventV2> for Event`; never written
//!   again ([`encode_v2`] builds test fixtures).
//! - v3 (current): payload is [`Event`] (adds `base`, the content version a
//!   content change was made on, and the `Resolve` change).
//! - Any other version byte after `b"SYR"` is refused as written by a newer
//!   syncer ([`RecordError::UnknownVersion`]).
//!
//! [`VectorClock::is_canonical`]: crate::clock::VectorClock::is_canonical

use crate::event::{Event, EventV1, EventV2};

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 20;
/// The record version [`encode`] writes.
pub const CURRENT_VERSION: u8 = 3;
/// The first legacy record version, read and upgraded, never written.
pub const V1: u8 = 1;
/// The second legacy record version, read and upgraded, never written.
pub(crate) const V2: u8 = 2;
/// Largest payload accepted, in bytes (16 MiB).
pub const MAX_PAYLOAD: u32 = 16 << 20;
/// The magic bytes before the version byte.
pub const MAGIC: [u8; 3] = *b"SYR";
/// The only record kind so far: an [`Event`].
pub const KIND_EVENT: u8 = 1;

const KIND_AT: usize = 4;
const RESERVED: std::ops::Range<usize> = 5..8;
const LEN: std::ops::Range<usize> = 8..12;
const CHECKSUM: std::ops::Range<usize> = 12..20;

/// Why a frame does not decode (or encode).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The buffer ends before the frame does: `need` bytes are needed, only
    /// `have` are there. At the end of a segment this is a torn tail.
    #[error("incomplete record: {have} of {need} bytes")]
    Incomplete {
        /// Bytes available.
        have: usize,
        /// Bytes the frame (or its header) needs.
        need: usize,
    },
    /// The frame does not start with `b"SYR"`.
    #[error("bad record magic {0:02x?} (not a syncer record)")]
    BadMagic(Vec<u8>),
    /// `b"SYR"` followed by a version this build does not know.
    #[error("unknown record version {0} (newer syncer?)")]
    UnknownVersion(u8),
    /// A record kind this build does not know.
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    /// The reserved header bytes are not zero.
    #[error("reserved record header bytes are not zero: {0:02x?}")]
    BadReserved(Vec<u8>),
    /// The payload length is over [`MAX_PAYLOAD`].
    #[error("record payload of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    TooLarge(u64),
    /// The checksum does not match the header and payload.
    #[error("record checksum mismatch: stored {stored:016x}, computed {computed:016x}")]
    BadChecksum {
        /// Checksum in the header (as a little-endian u64).
        stored: u64,
        /// Checksum of the bytes present.
        computed: u64,
    },
    /// The checksum matches but the payload is not a valid archive.
    #[error("record payload does not decode: {0}")]
    BadPayload(String),
    /// The payload decodes but its vector clock breaks the clock invariants.
    #[error("record's vector clock is not canonical (unsorted, duplicate or zero entries)")]
    NonCanonicalClock,
    /// Serializing an event failed (encode side only).
    #[error("cannot encode event: {0}")]
    Encode(String),
}

/// A frame header whose fields passed every check that needs no payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// Record version (1, 2 or 3).
    pub version: u8,
    /// Record kind ([`KIND_EVENT`]).
    pub kind: u8,
    /// Payload length in bytes (at most [`MAX_PAYLOAD`]).
    pub payload_len: u32,
    /// Stored checksum.
    pub checksum: [u8; 8],
}

impl Header {
    /// Length of the whole frame, header included.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.payload_len as usize
    }
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The event, upgraded to the current layout.
    pub event: Event,
    /// The record version it was stored with.
    pub version: u8,
    /// Bytes the frame took (header + payload).
    pub frame_len: usize,
}

/// Frames `event` as a current-version (v3) record.
///
/// Fails only if the payload would be over [`MAX_PAYLOAD`] (such a record
/// could never be read back) or serialization fails.
pub fn encode(event: &Event) -> Result<Vec<u8>, RecordError> {
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(event).map_err(|e| RecordError::Encode(e.to_string()))?;
    frame(CURRENT_VERSION, &payload)
}

/// Frames a legacy v1 record. syncer never writes v1 records; this exists
/// only to build fixtures and tests of the upgrade path.
pub fn encode_v1(event: &EventV1) -> Result<Vec<u8>, RecordError> {
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(event).map_err(|e| RecordError::Encode(e.to_string()))?;
    frame(V1, &payload)
}

/// Frames a legacy v2 record. syncer never writes v2 records; this exists
/// only to build fixtures and tests of the upgrade path.
pub fn encode_v2(event: &EventV2) -> Result<Vec<u8>, RecordError> {
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(event).map_err(|e| RecordError::Encode(e.to_string()))?;
    frame(V2, &payload)
}

fn frame(version: u8, payload: &[u8]) -> Result<Vec<u8>, RecordError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l <= MAX_PAYLOAD)
        .ok_or(RecordError::TooLarge(payload.len() as u64))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(version);
    out.push(KIND_EVENT);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&len.to_le_bytes());
    let sum = checksum(&out[..LEN.end], payload);
    out.extend_from_slice(&sum);
    out.extend_from_slice(payload);
    Ok(out)
}

fn checksum(head: &[u8], payload: &[u8]) -> [u8; 8] {
    let mut h = blake3::Hasher::new();
    h.update(head);
    h.update(payload);
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.finalize().as_bytes()[..8]);
    out
}

/// Checks the header at the start of `buf` as far as the bytes present
/// allow (see the module invariants), and returns it when all 20 bytes are
/// there. The checksum is not verified here.
pub(crate) fn parse_header(buf: &[u8]) -> Result<Header, RecordError> {
    let have = buf.len();
    let magic_have = have.min(MAGIC.len());
    if buf[..magic_have] != MAGIC[..magic_have] {
        return Err(RecordError::BadMagic(buf[..have.min(4)].to_vec()));
    }
    let version = match buf.get(3) {
        Some(&v @ (V1 | V2 | CURRENT_VERSION)) => v,
        Some(&v) => return Err(RecordError::UnknownVersion(v)),
        None => 0,
    };
    let kind = match buf.get(KIND_AT) {
        Some(&KIND_EVENT) => KIND_EVENT,
        Some(&k) => return Err(RecordError::UnknownKind(k)),
        None => 0,
    };
    let reserved = &buf[RESERVED.start.min(have)..RESERVED.end.min(have)];
    if reserved.iter().any(|&b| b != 0) {
        return Err(RecordError::BadReserved(reserved.to_vec()));
    }
    let (Some(len_bytes), Some(sum)) = (buf.get(LEN), buf.get(CHECKSUM)) else {
        // The length field is judged as soon as it is whole.
        if let Some(len_bytes) = buf.get(LEN) {
            check_len(len_bytes)?;
        }
        return Err(RecordError::Incomplete { have, need: HEADER_LEN });
    };
    let payload_len = check_len(len_bytes)?;
    let mut checksum = [0u8; 8];
    checksum.copy_from_slice(sum);
    Ok(Header { version, kind, payload_len, checksum })
}

fn check_len(bytes: &[u8]) -> Result<u32, RecordError> {
    let mut le = [0u8; 4];
    le.copy_from_slice(bytes);
    let len = u32::from_le_bytes(le);
    if len > MAX_PAYLOAD {
        return Err(RecordError::TooLarge(u64::from(len)));
    }
    Ok(len)
}

/// Decodes the frame at the start of `buf` (trailing bytes are ignored).
pub fn decode(buf: &[u8]) -> Result<Decoded, RecordError> {
    let header = parse_header(buf)?;
    let frame_len = header.frame_len();
    let Some(payload) = buf.get(HEADER_LEN..frame_len) else {
        return Err(RecordError::Incomplete { have: buf.len(), need: frame_len });
    };
    let computed = checksum(&buf[..LEN.end], payload);
    if computed != header.checksum {
        return Err(RecordError::BadChecksum {
            stored: u64::from_le_bytes(header.checksum),
            computed: u64::from_le_bytes(computed),
        });
    }
    // rkyv wants its input aligned; a slice of a segment is not.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    let event = match header.version {
        V1 => rkyv::from_bytes::<EventV1, rkyv::rancor::Error>(&aligned).map(Event::from),
        V2 => rkyv::from_bytes::<EventV2, rkyv::rancor::Error>(&aligned).map(Event::from),
        _ => rkyv::from_bytes::<Event, rkyv::rancor::Error>(&aligned),
    }
    .map_err(|e| RecordError::BadPayload(e.to_string()))?;
    if !event.clock.is_canonical() {
        return Err(RecordError::NonCanonicalClock);
    }
    Ok(Decoded { event, version: header.version, frame_len })
}

#[cfg(test)]
mod tests {
    //! The codec's examples and the garbage it must refuse; its round trips
    //! over generated events are in `engine/tests/record_props.rs` (the
    //! event generator lives in the test kit).
    use super::*;
    use crate::clock::VectorClock;
    use crate::event::Change;
    use crate::ids::{MachineId, NodeId, Timestamp};
    use proptest::prelude::*;

    fn sample() -> Event {
        Event {
            node: NodeId::new(7, MachineId(0xa1)),
            machine: MachineId(0xa1),
            seq: 3,
            time: Timestamp(1_700_000_000_123_456_789),
            clock: VectorClock::from_entries([(MachineId(0xa1), 2), (MachineId(0xb2), 1)]),
            change: Change::Move { parent: NodeId::ROOT, name: b"moved".to_vec() },
            base: None,
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..256)) {
            // Never a panic; an accepted frame is as long as it says.
            if let Ok(d) = decode(&buf) {
                prop_assert!(d.frame_len <= buf.len());
            }
        }

        #[test]
        fn garbage_payload_with_good_checksum_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..256), v1 in any::<bool>()) {
            let f = frame(if v1 { V1 } else { CURRENT_VERSION }, &payload).expect("frame");
            // Never a panic; an accepted current-version event re-encodes to the same frame.
            if let Ok(d) = decode(&f) {
                prop_assert_eq!(d.frame_len, f.len());
                if !v1 {
                    prop_assert_eq!(encode(&d.event).expect("encode"), f);
                }
            }
        }
    }

    #[test]
    fn every_single_byte_flip_of_a_sample_is_an_error() {
        let frame = encode(&sample()).expect("encode");
        for i in 0..frame.len() {
            for bit in 0..8 {
                let mut f = frame.clone();
                f[i] ^= 1 << bit;
                assert!(decode(&f).is_err(), "flip of bit {bit} at byte {i} decoded");
            }
        }
    }

    #[test]
    fn header_errors_are_specific() {
        let frame = encode(&sample()).expect("encode");
        let with = |i: usize, b: u8| {
            let mut f = frame.clone();
            f[i] = b;
            decode(&f)
        };
        assert_eq!(with(3, 4), Err(RecordError::UnknownVersion(4)));
        assert_eq!(with(3, 0), Err(RecordError::UnknownVersion(0)));
        assert!(matches!(with(0, b'X'), Err(RecordError::BadMagic(_))));
        assert_eq!(with(4, 2), Err(RecordError::UnknownKind(2)));
        assert!(matches!(with(6, 1), Err(RecordError::BadReserved(_))));
        assert!(matches!(with(30, frame[30] ^ 1), Err(RecordError::BadChecksum { .. })));
        // A newer version is refused even from its first four bytes.
        assert_eq!(decode(b"SYR\x09"), Err(RecordError::UnknownVersion(9)));
        assert!(matches!(decode(b"SY"), Err(RecordError::Incomplete { have: 2, need: HEADER_LEN })));
        assert!(matches!(decode(b"SX"), Err(RecordError::BadMagic(_))));
        assert!(RecordError::UnknownVersion(3).to_string().contains("newer syncer"));
    }

    #[test]
    fn oversized_length_is_refused_without_allocating() {
        let mut f = encode(&sample()).expect("encode");
        f[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&f), Err(RecordError::TooLarge(u64::from(u32::MAX))));
        // Judged as soon as the length field is whole, before the checksum.
        assert_eq!(decode(&f[..12]), Err(RecordError::TooLarge(u64::from(u32::MAX))));
        f[8..12].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        assert_eq!(decode(&f), Err(RecordError::TooLarge(u64::from(MAX_PAYLOAD) + 1)));
    }

    #[test]
    fn encode_refuses_payloads_over_the_limit() {
        let mut ev = sample();
        ev.change = Change::SetXattr { name: b"big".to_vec(), value: vec![0; MAX_PAYLOAD as usize] };
        assert!(matches!(encode(&ev), Err(RecordError::TooLarge(_))));
    }

    /// Same archived layout as `Event`, but the clock is a plain vector, so a
    /// non-canonical clock can be written.
    #[derive(rkyv::Archive, rkyv::Serialize)]
    struct RawEvent {
        node: NodeId,
        machine: MachineId,
        seq: u64,
        time: Timestamp,
        clock: Vec<(MachineId, u64)>,
        change: Change,
        base: Option<crate::ids::EventId>,
    }

    #[test]
    fn non_canonical_clock_is_refused() {
        let raw = |clock: Vec<(MachineId, u64)>| {
            let ev = sample();
            let raw = RawEvent {
                node: ev.node,
                machine: ev.machine,
                seq: ev.seq,
                time: ev.time,
                clock,
                change: ev.change,
                base: None,
            };
            let payload = rkyv::to_bytes::<rkyv::rancor::Error>(&raw).expect("serialize");
            decode(&frame(CURRENT_VERSION, &payload).expect("frame"))
        };
        // The mirror layout is right: a canonical clock decodes.
        let good = raw(vec![(MachineId(1), 1), (MachineId(2), 5)]).expect("canonical clock decodes");
        assert_eq!(good.event.clock, VectorClock::from_entries([(MachineId(1), 1), (MachineId(2), 5)]));
        assert_eq!(raw(vec![(MachineId(2), 1), (MachineId(1), 1)]), Err(RecordError::NonCanonicalClock));
        assert_eq!(raw(vec![(MachineId(1), 0)]), Err(RecordError::NonCanonicalClock));
        assert_eq!(raw(vec![(MachineId(1), 1), (MachineId(1), 2)]), Err(RecordError::NonCanonicalClock));
    }
}
