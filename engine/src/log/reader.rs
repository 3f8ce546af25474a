//! The one segment reader: every read of a segment's bytes goes through
//! [`SegmentReader`], in one of three [`ReadMode`]s. The segment layout is in
//! the parent module (`log`), the frame layout in `record`.
//!
//! # Torn tail
//!
//! Rule 2 of `docs/DESIGN.md`: a crash keeps a prefix of what was appended,
//! so only the *last* segment of a log may end in a torn record. From a
//! record's offset to end of file, the bytes are torn ([`TornCause`]) when
//! they are
//!
//! - (a) an incomplete frame (header or payload runs past EOF), unless a
//!   complete, checksum-valid record that could be its successor (same
//!   machine, next seq but one) follows somewhere: nothing follows a tear, so
//!   that is a damaged length field;
//! - (b) a complete frame whose checksum fails and which ends exactly at EOF,
//!   or after which only zeros follow;
//! - (c) all zeros, or any bad frame after which only zeros follow (a crash
//!   that kept the start of an append and the rest reads as zeros);
//! - (d) a segment header that is cut short or all zeros (the whole segment
//!   is then torn, from byte 0).
//!
//! Anything else — a bad record followed by more data, a bad segment header,
//! a record of another machine — is damage. The definition is
//! [`classify`], written once; every mode uses it.
//!
//! # Hashing budget
//!
//! Telling (a) from damage, and the forensic resync after damage, look for
//! later frames and verify their checksums. A hostile segment full of fake
//! headers that each claim a long payload could make that quadratic, so one
//! read of a segment hashes at most about twice the segment plus 1 MiB in
//! this search ([`Budget`]). Past it, the search answers "nothing found":
//! (a) is then judged by the framing alone (torn), and a forensic read
//! stops with [`Stop::GaveUp`].
//!
//! # Modes
//!
//! | mode                  | torn tail                    | damage                                      |
//! |-----------------------|------------------------------|---------------------------------------------|
//! | [`ReadMode::Strict`]   | error (a sealed segment)     | error naming the file and offset            |
//! | [`ReadMode::Recover`]  | clean stop, [`Stop::Torn`]    | error naming the file and offset            |
//! | [`ReadMode::Forensic`] | reported, then [`Stop::Torn`] | reported as [`Item::Damaged`], then resync |
//!
//! Strict and recover also check that records follow each other (machine,
//! seq + 1, time never going back); forensic checks only the machine, and
//! never fails: it reports every record in place, good or damaged, and after
//! damage resyncs at the next frame of the segment's machine that decodes.

use std::fmt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::ids::{MachineId, Timestamp};
use crate::record::{self, RecordError};

use super::{bad_segment, corrupt, header_problem, record_error, ScannedRecord, SEGMENT_HEADER_LEN};

/// How a [`SegmentReader`] treats a torn tail and damage (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// A sealed segment: a torn tail is damage, and damage is an error.
    Strict,
    /// The last segment of a log: a torn tail stops the read cleanly.
    Recover,
    /// `log inspect`: never fails; damage is reported in place.
    Forensic,
}

/// Why the bytes from some offset to the end of the segment are a torn tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TornCause {
    /// The segment header is cut short (`have` of 32 bytes) or all zeros.
    Header {
        /// Bytes in the file.
        have: u64,
    },
    /// Only zeros remain.
    Zeros {
        /// How many.
        len: u64,
    },
    /// The last frame runs past the end of the file.
    Incomplete(RecordError),
    /// The last frame is whole but its checksum fails.
    Checksum(RecordError),
    /// The frame is bad and only zeros follow it.
    ThenZeros(RecordError),
}

impl fmt::Display for TornCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TornCause::Header { have } if *have >= SEGMENT_HEADER_LEN => write!(f, "segment header all zeros"),
            TornCause::Header { have } => write!(f, "segment header cut short ({have} of {SEGMENT_HEADER_LEN} bytes)"),
            TornCause::Zeros { len } => write!(f, "{len} zero bytes"),
            TornCause::Incomplete(e) | TornCause::Checksum(e) => write!(f, "{e}"),
            TornCause::ThenZeros(e) => write!(f, "{e}, then only zeros"),
        }
    }
}

/// What one read of a segment hands its caller, in file order.
// Handed over by value once and never stored in bulk: boxing the record
// would cost an allocation per record on every read of the log.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A good record.
    Record(ScannedRecord),
    /// Damage at `offset` ([`ReadMode::Forensic`] only; other modes fail).
    Damaged {
        /// Byte offset of the damage in the segment.
        offset: u64,
        /// What is wrong, and how the read went on.
        why: String,
    },
}

/// Why a read of a segment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// At the end of the file, after a whole record (or the header).
    End,
    /// At a torn tail starting at `offset` (see the module docs).
    Torn {
        /// Where the torn bytes start.
        offset: u64,
        /// Why they are torn.
        cause: TornCause,
    },
    /// Forensic only: after damage at `offset`, nothing more could be read
    /// (nothing decodes further on, or the hashing budget is spent).
    GaveUp {
        /// Where the unreadable bytes start.
        offset: u64,
    },
}

/// Where and why a read of a segment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentEnd {
    /// Bytes up to the end of the last good record read in order (at least
    /// the header), or 0 when the header itself is torn. A forensic read
    /// counts only the good records before the first damage.
    pub valid_len: u64,
    /// Why the read ended.
    pub stop: Stop,
    /// `(seq, time)` of the last good record, when known.
    pub last: Option<(u64, Timestamp)>,
}

impl SegmentEnd {
    /// Where a torn tail starts, if the read ended at one.
    pub fn torn_tail(&self) -> Option<u64> {
        match self.stop {
            Stop::Torn { offset, .. } => Some(offset),
            _ => None,
        }
    }
}

/// The result of reading a whole segment ([`SegmentReader::scan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    /// Every good record, in order.
    pub records: Vec<ScannedRecord>,
    /// Every damage found, in order (forensic reads only).
    pub damage: Vec<(u64, String)>,
    /// Bytes up to the end of the last good record (at least the header), or
    /// 0 when the header itself is missing or torn.
    pub valid_len: u64,
    /// Where torn bytes start (always `valid_len` outside forensic reads),
    /// when there are any.
    pub torn_tail: Option<u64>,
    /// Why the read ended.
    pub stop: Stop,
}

/// How much hashing one read may still spend searching for later frames
/// (see the module docs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget(usize);

impl Budget {
    /// The budget for a segment of `len` bytes: about twice it, plus 1 MiB.
    pub(crate) fn for_len(len: usize) -> Budget {
        Budget(len.saturating_mul(2).saturating_add(1 << 20))
    }

    /// Takes `n` bytes of hashing from the budget; `false` when it is spent.
    fn take(&mut self, n: usize) -> bool {
        match self.0.checked_sub(n) {
            Some(left) => {
                self.0 = left;
                true
            }
            None => {
                self.0 = 0;
                false
            }
        }
    }
}

/// Reads one segment (its content, already in memory: the whole file, or
/// its header and a window of it). Pure: no I/O.
#[derive(Debug, Clone, Copy)]
pub struct SegmentReader<'a> {
    /// The file's bytes from `base` on.
    bytes: &'a [u8],
    /// File offset of `bytes[0]`.
    base: u64,
    /// Length of the file (`bytes` may end before it: a window).
    file_len: u64,
    /// The file's first bytes, up to the header's length.
    head: &'a [u8],
    path: &'a Path,
    machine: MachineId,
    number: u64,
    mode: ReadMode,
    start: u64,
    prev: Option<(u64, Timestamp)>,
}

impl<'a> SegmentReader<'a> {
    /// A reader of segment `number` of `machine`, whose bytes are `bytes`,
    /// read from `path` (which errors name), from its first record on.
    pub fn new(bytes: &'a [u8], path: &'a Path, machine: MachineId, number: u64, mode: ReadMode) -> Self {
        let prev = (number == 0).then_some((0, Timestamp(i64::MIN)));
        let head = &bytes[..bytes.len().min(SEGMENT_HEADER_LEN as usize)];
        let file_len = bytes.len() as u64;
        SegmentReader { bytes, base: 0, file_len, head, path, machine, number, mode, start: SEGMENT_HEADER_LEN, prev }
    }

    /// A reader of a window of a segment of `file_len` bytes: `head` is its
    /// header (not all zeros), `body` its bytes from `base` on, where the
    /// read starts (a record boundary). A frame that does not decode before
    /// the window ends short of the file ends the read there, with
    /// [`Stop::End`] and `valid_len` at that frame: the caller reads on from
    /// it with a window that reaches further (only the file's end can tell a
    /// torn tail from damage).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn window(
        head: &'a [u8],
        body: &'a [u8],
        base: u64,
        file_len: u64,
        path: &'a Path,
        machine: MachineId,
        number: u64,
        mode: ReadMode,
    ) -> Self {
        let start = base.max(SEGMENT_HEADER_LEN);
        SegmentReader { bytes: body, base, file_len, head, path, machine, number, mode, start, prev: None }
    }

    /// Starts at `offset` instead (a record boundary; an offset inside the
    /// header means the first record), after a record `(seq, time)` when
    /// known.
    pub(crate) fn starting_at(mut self, offset: u64, prev: Option<(u64, Timestamp)>) -> Self {
        self.start = offset.max(SEGMENT_HEADER_LEN);
        self.prev = prev;
        self
    }

    /// Reads the whole segment and collects what it found.
    pub fn scan(&self) -> Result<SegmentScan> {
        let (mut records, mut damage) = (Vec::new(), Vec::new());
        let end = self.read(&mut |item| {
            match item {
                Item::Record(r) => records.push(r),
                Item::Damaged { offset, why } => damage.push((offset, why)),
            }
            Ok(())
        })?;
        let torn_tail = end.torn_tail();
        Ok(SegmentScan { records, damage, valid_len: end.valid_len, torn_tail, stop: end.stop })
    }

    /// Checks the header, then hands every record (and, in forensic mode,
    /// every damage) to `f` in file order. An error of `f` ends the read
    /// and is returned; a forensic read fails in no other way.
    pub fn read(&self, f: &mut dyn FnMut(Item) -> Result<()>) -> Result<SegmentEnd> {
        let forensic = self.mode == ReadMode::Forensic;
        let bytes = self.bytes;
        let len = self.file_len;
        // The window ends before the file does.
        let end = self.base + bytes.len() as u64;
        let cut_short = end < len;
        let mut budget = Budget::for_len(bytes.len());
        // The header: cut short, or all zeros where a tail may be torn, is
        // torn; anything else that is not the expected header is damage.
        // (A window's header is never all zeros: see `window`.)
        let all_zero = self.base == 0 && !cut_short && bytes.iter().all(|&b| b == 0);
        let torn_header = len < SEGMENT_HEADER_LEN || (all_zero && self.mode != ReadMode::Strict);
        let head = self.head;
        let problem = if torn_header && all_zero { None } else { header_problem(head, self.machine, self.number) };
        if let Some(problem) = &problem {
            if !forensic {
                return Err(bad_segment(self.path, problem));
            }
            f(Item::Damaged { offset: 0, why: format!("bad segment header: {problem}") })?;
        } else if torn_header {
            let cause = TornCause::Header { have: len };
            match self.mode {
                ReadMode::Strict => return Err(bad_segment(self.path, format!("{cause} in a sealed segment"))),
                ReadMode::Recover => {
                    let stop = if len > 0 { Stop::Torn { offset: 0, cause } } else { Stop::End };
                    return Ok(SegmentEnd { valid_len: 0, stop, last: None });
                }
                ReadMode::Forensic if len == 0 => {
                    return Ok(SegmentEnd { valid_len: 0, stop: Stop::End, last: None });
                }
                ReadMode::Forensic => {
                    f(Item::Damaged { offset: 0, why: format!("torn tail: {cause}") })?;
                    return Ok(SegmentEnd { valid_len: 0, stop: Stop::Torn { offset: 0, cause }, last: None });
                }
            }
        }
        let mut pos = self.start;
        if pos < self.base {
            return Err(Error::Invalid(format!(
                "{}: position {pos} is before the bytes read (from {})",
                self.path.display(),
                self.base
            )));
        }
        if pos > len {
            if forensic {
                return Ok(SegmentEnd { valid_len: len, stop: Stop::End, last: None });
            }
            return Err(Error::Invalid(format!(
                "{}: position {pos} is past the end of the segment ({len} bytes)",
                self.path.display()
            )));
        }
        let mut prev = self.prev;
        let mut valid_len = if problem.is_some() { None } else { Some(pos) };
        // The records.
        while pos < end {
            // In bounds: base <= pos < end = base + bytes.len().
            let rest = &bytes[(pos - self.base) as usize..];
            let err = match record::decode(rest) {
                Ok(d) => {
                    let ev = &d.event;
                    let frame_len = d.frame_len as u64;
                    match self.sequence_problem(ev.machine, ev.seq, ev.time, prev) {
                        Some(why) if forensic && ev.machine != self.machine => {
                            f(Item::Damaged { offset: pos, why })?;
                            valid_len = None;
                        }
                        Some(why) if !forensic => return Err(corrupt(self.path, pos, why)),
                        _ => {
                            prev = Some((ev.seq, ev.time));
                            let r = ScannedRecord { offset: pos, frame_len, version: d.version, event: d.event };
                            f(Item::Record(r))?;
                            valid_len = valid_len.map(|_| pos + frame_len);
                        }
                    }
                    pos += frame_len;
                    continue;
                }
                // More of the file follows: the caller reads on from here.
                Err(_) if cut_short => break,
                Err(e) => e,
            };
            let verdict = classify(rest, pos, err, self.machine, prev.map(|p| p.0), &mut budget);
            let valid = valid_len.unwrap_or(pos);
            match (verdict, self.mode) {
                (Ok(cause), ReadMode::Recover) => {
                    return Ok(SegmentEnd { valid_len: valid, stop: Stop::Torn { offset: pos, cause }, last: prev });
                }
                (Ok(cause), ReadMode::Strict) => {
                    const SEALED: &str = "only the last segment may end torn";
                    return Err(match cause {
                        TornCause::Incomplete(e) | TornCause::Checksum(e) | TornCause::ThenZeros(e) => {
                            record_error(self.path, pos, e, format!(" (a torn record in a sealed segment: {SEALED})"))
                        }
                        cause => {
                            corrupt(self.path, pos, format!("torn record ({cause}) in a sealed segment: {SEALED}"))
                        }
                    });
                }
                (Ok(cause), ReadMode::Forensic) => {
                    f(Item::Damaged { offset: pos, why: format!("torn tail: {cause}") })?;
                    return Ok(SegmentEnd { valid_len: valid, stop: Stop::Torn { offset: pos, cause }, last: prev });
                }
                (Err((e, why)), ReadMode::Strict | ReadMode::Recover) => {
                    return Err(record_error(self.path, pos, e, why));
                }
                (Err((e, why)), ReadMode::Forensic) => {
                    let why = format!("{e}{why}");
                    valid_len = None;
                    let machine = self.machine;
                    match find_frame(rest, &mut budget, |ev| ev.machine == machine) {
                        Found::At(n) => {
                            f(Item::Damaged { offset: pos, why: format!("{why}; resynced {n} bytes on") })?;
                            pos += n as u64;
                        }
                        Found::Nothing | Found::OverBudget => {
                            let why = format!("{why}; nothing readable follows in this segment");
                            f(Item::Damaged { offset: pos, why })?;
                            return Ok(SegmentEnd { valid_len: valid, stop: Stop::GaveUp { offset: pos }, last: prev });
                        }
                    }
                }
            }
        }
        Ok(SegmentEnd { valid_len: valid_len.unwrap_or(pos), stop: Stop::End, last: prev })
    }

    /// What is wrong with a decoded event of `machine` with `seq` and
    /// `time` following `prev`, if anything. Forensic reads check only the
    /// machine.
    fn sequence_problem(
        &self,
        machine: MachineId,
        seq: u64,
        time: Timestamp,
        prev: Option<(u64, Timestamp)>,
    ) -> Option<String> {
        if machine != self.machine {
            return Some(format!("event of machine {machine} in the log of machine {}", self.machine));
        }
        if self.mode == ReadMode::Forensic {
            return None;
        }
        match prev {
            Some((p, _)) if seq != p.wrapping_add(1) => {
                Some(format!("event seq {seq} where seq {} was expected", p.wrapping_add(1)))
            }
            Some((_, t)) if time < t => Some(format!("event time {time:?} is before the previous event's {t:?}")),
            None if seq == 0 => Some("event seq 0 (seqs start at 1)".into()),
            _ => None,
        }
    }
}

/// The torn-tail definition (see the module docs), applied to a frame at
/// byte `pos`, the start of `rest`, that failed to decode with `err`: `Ok` when `rest` is a
/// torn tail, `Err` with the decoder's error and why it is damage (empty, or
/// starting with a separator) when it is damage. `prev_seq` is the seq of
/// the record before, when known.
pub(crate) fn classify(
    rest: &[u8],
    pos: u64,
    err: RecordError,
    machine: MachineId,
    prev_seq: Option<u64>,
    budget: &mut Budget,
) -> std::result::Result<TornCause, (RecordError, String)> {
    if rest.iter().all(|&b| b == 0) {
        return Ok(TornCause::Zeros { len: rest.len() as u64 });
    }
    match err {
        RecordError::Incomplete { .. } => {
            // A crash keeps a prefix of what was appended, so nothing valid
            // can follow a torn record. If something does, the record's
            // length field is damaged: that is no torn tail.
            let successor = |ev: &crate::event::Event| {
                ev.machine == machine && prev_seq.is_none_or(|s| ev.seq == s.wrapping_add(2))
            };
            match find_frame(rest, budget, successor) {
                Found::At(at) => {
                    let why = format!(", yet a valid record follows at byte {}: damaged length", pos + at as u64);
                    Err((err, why))
                }
                Found::Nothing | Found::OverBudget => Ok(TornCause::Incomplete(err)),
            }
        }
        RecordError::BadChecksum { .. } => {
            let at_eof = record::parse_header(rest).is_ok_and(|h| h.frame_len() == rest.len());
            if at_eof || zero_filled(rest) {
                Ok(TornCause::Checksum(err))
            } else {
                Err((err, "; more data follows, so it is not a torn tail".into()))
            }
        }
        e if zero_filled(rest) => Ok(TornCause::ThenZeros(e)),
        e => Err((e, String::new())),
    }
}

/// Whether `rest` (starting at a record's frame) is what a crash leaves
/// when it keeps the start of an append and the rest of the file reads as
/// zeros: nothing but zeros after a point inside this one frame (inside
/// its header, when the header itself is cut).
fn zero_filled(rest: &[u8]) -> bool {
    let frame = record::parse_header(rest).map_or(record::HEADER_LEN, |h| h.frame_len().max(record::HEADER_LEN));
    rest.iter().rposition(|&b| b != 0).is_none_or(|i| i < frame)
}

/// What [`find_frame`] found.
enum Found {
    /// A frame at this offset.
    At(usize),
    /// No frame.
    Nothing,
    /// The budget ran out before the search was done.
    OverBudget,
}

/// The offset in `rest` (after its first byte) of the first complete,
/// checksum-valid frame whose event `accept`s, hashing within `budget`.
fn find_frame(rest: &[u8], budget: &mut Budget, accept: impl Fn(&crate::event::Event) -> bool) -> Found {
    let mut from = 1;
    while let Some(found) =
        rest.get(from..).and_then(|r| r.windows(record::MAGIC.len()).position(|w| w == record::MAGIC))
    {
        let at = from + found;
        let candidate = &rest[at..];
        if let Ok(h) = record::parse_header(candidate) {
            if h.frame_len() <= candidate.len() {
                if !budget.take(h.frame_len()) {
                    return Found::OverBudget;
                }
                if record::decode(candidate).is_ok_and(|d| accept(&d.event)) {
                    return Found::At(at);
                }
            }
        }
        from = at + 1;
    }
    Found::Nothing
}
