//! The event log: per-machine folders of append-only segments of framed
//! records (the frame is in `record`). All I/O goes through
//! [`Storage`], never `std::fs`.
//!
//! # Layout
//!
//! ```text
//! <data>/log/<machine>/<segment>.seg
//! ```
//!
//! `<machine>` is the [`MachineId`] as 16 lowercase hex digits; `<segment>` is
//! the segment number as 16 lowercase hex digits. Both are parsed strictly, so
//! a hostile peer folder or file name can never alias another one. Every
//! machine's segments are numbered `0, 1, 2, ...` without gaps.
//!
//! A segment file is a 32-byte header, then records back to back:
//!
//! | offset | size | field    | meaning                                            |
//! |-------:|-----:|----------|----------------------------------------------------|
//! | 0      | 7    | magic    | `b"SYNCSEG"`                                       |
//! | 7      | 1    | version  | segment format version: 1                          |
//! | 8      | 8    | machine  | owner machine id, u64 LE (must match the folder)   |
//! | 16     | 8    | number   | segment number, u64 LE (must match the file name)  |
//! | 24     | 8    | reserved | zero                                               |
//! | 32     | ...  | records  | frames as documented in `record`, back to back     |
//!
//! # Invariants
//!
//! - Segments are append-only. A segment starts a successor when the next
//!   record would take it past the segment limit (default 64 MiB); a record
//!   bigger than the limit still goes in, alone in its segment. Once a
//!   successor exists, a segment is sealed and never changes again, so
//!   `rsync --append` ships exactly the new bytes. A segment is fsynced
//!   before its successor is created, so a sealed segment is never torn.
//! - Every record in `log/<m>/` is an event of machine `m`; its `seq` is the
//!   previous record's plus one (the first record of segment 0 has seq 1) and
//!   its `time` is never before the previous one's.
//! - Torn tail (rule 2 of `docs/DESIGN.md`): only the *last* segment of a
//!   log may end in a torn record; the definition, and the budget that keeps
//!   its search cheap on hostile input, are in [`reader`], the one segment
//!   reader every read goes through. The writer cuts a torn tail off when it
//!   opens its own log (a last segment whose header itself is cut short, or
//!   is all zeros, is cut to 0 and gets its header rewritten); readers of a
//!   peer's log stop before it and resume there later. Anything else — a bad
//!   record followed by more data, damage in a sealed segment, a bad segment
//!   header, a record of another machine — is an error naming the segment
//!   file and byte offset, and nothing is repaired. Recovery is idempotent.
//!
//! # Version history
//!
//! - Segment version 1 (current). Records inside may be record version 1
//!   (legacy, read only) or 2; the writer appends version 2 records even to a
//!   segment that holds version 1 records.
//! - Any other segment version is refused as written by a newer syncer.

use std::ffi::OsStr;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::event::Event;
use crate::ids::{LogPos, MachineId, ParseIdError, Timestamp};
use crate::record::{self, Decoded};
use crate::storage::{AppendFile, Storage};

pub mod reader;

pub use reader::{Item, ReadMode, SegmentEnd, SegmentReader, SegmentScan, Stop, TornCause};

/// Magic bytes at the start of every segment.
pub(crate) const SEGMENT_MAGIC: [u8; 7] = *b"SYNCSEG";
/// The segment format version this build writes and reads.
pub(crate) const SEGMENT_VERSION: u8 = 1;
/// Bytes in a segment header; the first record starts here.
pub const SEGMENT_HEADER_LEN: u64 = 32;
/// Default size at which a segment is sealed and a new one started.
pub const DEFAULT_SEGMENT_LIMIT: u64 = 64 << 20;
/// File name extension of segments.
pub const SEGMENT_EXT: &str = ".seg";

/// `<log_root>/<machine>`: the folder of one machine's segments.
pub fn machine_dir(log_root: &Path, machine: MachineId) -> PathBuf {
    log_root.join(machine.to_string())
}

/// The file name of segment `number`: 16 lowercase hex digits + `.seg`.
pub fn segment_file_name(number: u64) -> String {
    format!("{number:016x}{SEGMENT_EXT}")
}

/// `<log_root>/<machine>/<number>.seg`.
pub fn segment_path(log_root: &Path, machine: MachineId, number: u64) -> PathBuf {
    machine_dir(log_root, machine).join(segment_file_name(number))
}

/// Parses a segment file name strictly: 16 lowercase hex digits + `.seg`.
pub fn parse_segment_name(name: &OsStr) -> Result<u64, ParseIdError> {
    let bad = || ParseIdError(format!("{name:?} is not a segment name (16 lowercase hex digits + {SEGMENT_EXT})"));
    let stem = name.to_str().and_then(|s| s.strip_suffix(SEGMENT_EXT)).ok_or_else(bad)?;
    if stem.len() != 16 || !stem.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(bad());
    }
    u64::from_str_radix(stem, 16).map_err(|_| bad())
}

/// The position of the first record of `machine`'s log.
pub fn log_start(machine: MachineId) -> LogPos {
    LogPos { machine, segment: 0, offset: SEGMENT_HEADER_LEN }
}

/// The header of segment `number` of `machine`.
pub fn segment_header(machine: MachineId, number: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[..7].copy_from_slice(&SEGMENT_MAGIC);
    h[7] = SEGMENT_VERSION;
    h[8..16].copy_from_slice(&machine.0.to_le_bytes());
    h[16..24].copy_from_slice(&number.to_le_bytes());
    h
}

/// What is wrong with the (possibly partial) segment header in `have`, judged
/// field by field on the bytes present. `None` means `have` is a prefix of
/// the expected header.
fn header_problem(have: &[u8], machine: MachineId, number: u64) -> Option<String> {
    let expect = segment_header(machine, number);
    let field = |r: std::ops::Range<usize>| {
        let end = r.end.min(have.len());
        let start = r.start.min(end);
        (&have[start..end], &expect[start..end])
    };
    let (m, em) = field(0..7);
    if m != em {
        return Some(format!("bad segment magic {m:02x?} (not a syncer segment)"));
    }
    if let Some(&v) = have.get(7) {
        if v != SEGMENT_VERSION {
            return Some(format!("unknown segment version {v} (newer syncer?)"));
        }
    }
    let (m, em) = field(8..16);
    if m != em {
        let owner = have.get(8..16).map_or_else(|| format!("{m:02x?}"), |b| format!("{:016x}", le_u64(b)));
        return Some(format!("segment belongs to machine {owner}, but sits in the folder of machine {machine}"));
    }
    let (n, en) = field(16..24);
    if n != en {
        let found = have.get(16..24).map_or_else(|| format!("{n:02x?}"), |b| le_u64(b).to_string());
        return Some(format!("segment header says number {found}, but the file is segment {number}"));
    }
    let (r, _) = field(24..32);
    if r.iter().any(|&b| b != 0) {
        return Some(format!("reserved segment header bytes are not zero: {r:02x?}"));
    }
    None
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[..n].copy_from_slice(&b[..n]);
    u64::from_le_bytes(a)
}

/// One record found by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedRecord {
    /// Byte offset of its frame in the segment.
    pub offset: u64,
    /// Bytes its frame takes.
    pub frame_len: u64,
    /// Record version it was stored with.
    pub version: u8,
    /// The event, upgraded to the current layout.
    pub event: Event,
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> Error {
    Error::CorruptRecord { path: path.to_path_buf(), offset, reason: reason.into() }
}

fn record_error(path: &Path, offset: u64, source: record::RecordError, context: impl Into<String>) -> Error {
    Error::Record { path: path.to_path_buf(), offset, source, context: context.into() }
}

fn bad_segment(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadSegment { path: path.to_path_buf(), reason: reason.into() }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::io(op, path, e)
}

/// The machines that have a folder under `log_root`, sorted. A name that is
/// not 16 lowercase hex digits is an error naming it. A missing `log_root`
/// has no machines.
pub fn list_machines(storage: &dyn Storage, log_root: &Path) -> Result<Vec<MachineId>> {
    if !storage.exists(log_root) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for name in storage.list_dir(log_root).map_err(io("list", log_root))? {
        let machine = name
            .to_str()
            .ok_or_else(|| ParseIdError(format!("{name:?} is not UTF-8")))
            .and_then(str::parse::<MachineId>)
            .map_err(|e| bad_segment(&log_root.join(&name), format!("not a machine folder: {e}")))?;
        out.push(machine);
    }
    out.sort_unstable();
    Ok(out)
}

/// Like [`list_machines`], but a folder whose name is not a machine id is
/// reported (as an error naming it) instead of failing the whole listing,
/// so that one hostile peer folder cannot stop the others from importing.
pub fn list_machines_tolerant(storage: &dyn Storage, log_root: &Path) -> Result<(Vec<MachineId>, Vec<Error>)> {
    if !storage.exists(log_root) {
        return Ok((Vec::new(), Vec::new()));
    }
    let (mut out, mut bad) = (Vec::new(), Vec::new());
    for name in storage.list_dir(log_root).map_err(io("list", log_root))? {
        match name.to_str().ok_or_else(|| ParseIdError(format!("{name:?} is not UTF-8"))).and_then(str::parse) {
            Ok(m) => out.push(m),
            Err(e) => bad.push(bad_segment(&log_root.join(&name), format!("not a machine folder: {e}"))),
        }
    }
    out.sort_unstable();
    Ok((out, bad))
}

/// The segment numbers of `machine`'s log, sorted: always `0..n`. A file name
/// that is not a segment name, or a gap in the numbering, is an error naming
/// the file. A missing folder has no segments.
pub fn list_segments(storage: &dyn Storage, log_root: &Path, machine: MachineId) -> Result<Vec<u64>> {
    let dir = machine_dir(log_root, machine);
    if !storage.exists(&dir) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for name in storage.list_dir(&dir).map_err(io("list", &dir))? {
        let n = parse_segment_name(&name).map_err(|e| bad_segment(&dir.join(&name), e.0))?;
        out.push(n);
    }
    out.sort_unstable();
    for (i, &n) in out.iter().enumerate() {
        if n != i as u64 {
            return Err(bad_segment(
                &segment_path(log_root, machine, i as u64),
                format!("segment missing: the log of machine {machine} has segment {n} but not {i}"),
            ));
        }
    }
    Ok(out)
}

/// Reads the one record at `pos` (random access: header, then payload).
pub fn read_record_at(storage: &dyn Storage, log_root: &Path, pos: LogPos) -> Result<Decoded> {
    let path = segment_path(log_root, pos.machine, pos.segment);
    if pos.offset < SEGMENT_HEADER_LEN {
        return Err(Error::Invalid(format!("{}: no record at {pos} (inside the segment header)", path.display())));
    }
    let head = storage.read_at(&path, pos.offset, record::HEADER_LEN).map_err(io("read", &path))?;
    let header = record::parse_header(&head).map_err(|e| record_error(&path, pos.offset, e, ""))?;
    let frame = storage.read_at(&path, pos.offset, header.frame_len()).map_err(io("read", &path))?;
    let d = record::decode(&frame).map_err(|e| record_error(&path, pos.offset, e, ""))?;
    if d.event.machine != pos.machine {
        return Err(corrupt(
            &path,
            pos.offset,
            format!("event of machine {} in the log of machine {}", d.event.machine, pos.machine),
        ));
    }
    Ok(d)
}

/// The event at `pos` (see [`read_record_at`]).
pub fn read_event_at(storage: &dyn Storage, log_root: &Path, pos: LogPos) -> Result<Event> {
    read_record_at(storage, log_root, pos).map(|d| d.event)
}

/// Where a read of a log ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadEnd {
    /// Where to resume next time: just past the last good record (offset 0
    /// of a segment whose header has not arrived yet).
    pub next: LogPos,
    /// Where torn bytes at the very end of the log start, if any (a peer's
    /// segment still arriving, or our own crash not yet recovered).
    pub torn_tail: Option<LogPos>,
}

/// Calls `f(position, record)` for every record of `from`'s machine from
/// `from` to the end of its log, one segment in memory at a time. A torn
/// tail at the very end of the log stops the read cleanly (see [`ReadEnd`]);
/// any other damage is an error. `from` must be a record boundary (a
/// [`LogWriter::append`] position, a [`ReadEnd::next`], or [`log_start`]); an
/// offset inside the segment header means the segment's first record.
pub fn for_each_record(
    storage: &dyn Storage,
    log_root: &Path,
    from: LogPos,
    mut f: impl FnMut(LogPos, &ScannedRecord) -> Result<()>,
) -> Result<ReadEnd> {
    for_each_record_while(storage, log_root, from, |pos, r| f(pos, r).map(|()| ControlFlow::Continue(())))
}

/// [`for_each_record`], stopping before the first record for which `f`
/// breaks: no segment after that one is read, and the [`ReadEnd`] returned
/// is that record's position.
pub(crate) fn for_each_record_while(
    storage: &dyn Storage,
    log_root: &Path,
    from: LogPos,
    mut f: impl FnMut(LogPos, &ScannedRecord) -> Result<ControlFlow<()>>,
) -> Result<ReadEnd> {
    let machine = from.machine;
    let segments = list_segments(storage, log_root, machine)?;
    let Some(last) = segments.len().checked_sub(1).map(|l| l as u64) else {
        if from.segment == 0 && from.offset <= SEGMENT_HEADER_LEN {
            return Ok(ReadEnd { next: from, torn_tail: None });
        }
        return Err(Error::Invalid(format!("log of machine {machine} is empty; no position {from}")));
    };
    if from.segment > last {
        return Err(Error::Invalid(format!("log of machine {machine} has no segment {}", from.segment)));
    }
    let mut prev = (from.segment == 0 && from.offset <= SEGMENT_HEADER_LEN).then_some((0, Timestamp(i64::MIN)));
    let mut end = ReadEnd { next: from, torn_tail: None };
    for number in from.segment..=last {
        let path = segment_path(log_root, machine, number);
        let start = if number == from.segment { from.offset } else { SEGMENT_HEADER_LEN };
        let mode = if number == last { ReadMode::Recover } else { ReadMode::Strict };
        let mut stopped = None;
        let mut handle = |item: Item| match item {
            Item::Record(r) => {
                let pos = LogPos { machine, segment: number, offset: r.offset };
                match f(pos, &r)? {
                    ControlFlow::Continue(()) => Ok(()),
                    ControlFlow::Break(()) => {
                        stopped = Some(pos);
                        // Ends the read; told apart from a real failure by `stopped`.
                        Err(Error::Invalid(String::new()))
                    }
                }
            }
            // Only forensic reads report damage; others fail on it.
            Item::Damaged { .. } => Ok(()),
        };
        let read = read_segment_windows(storage, &path, machine, number, mode, start, prev, READ_WINDOW, &mut handle);
        if let Some(next) = stopped {
            return Ok(ReadEnd { next, torn_tail: None });
        }
        let scan = read?;
        prev = scan.last;
        end.next = LogPos { machine, segment: number, offset: scan.valid_len };
        end.torn_tail = scan.torn_tail().map(|offset| LogPos { machine, segment: number, offset });
    }
    Ok(end)
}

/// Bytes of a segment held in memory at a time by [`for_each_record`].
pub(crate) const READ_WINDOW: usize = 4 << 20;

/// Reads segment `number` at `path` from `start` (a record boundary) in
/// windows of `window` bytes ([`READ_WINDOW`]), so memory does not grow with the
/// segment; a window grows only to hold a record longer than it, or to
/// reach the end of the file where a frame does not decode (only the end
/// tells a torn tail from damage). The segment is read as long as it was
/// when the read began (a log being appended to grows meanwhile).
#[allow(clippy::too_many_arguments)]
pub(crate) fn read_segment_windows(
    storage: &dyn Storage,
    path: &Path,
    machine: MachineId,
    number: u64,
    mode: ReadMode,
    start: u64,
    prev: Option<(u64, Timestamp)>,
    window: usize,
    f: &mut dyn FnMut(Item) -> Result<()>,
) -> Result<SegmentEnd> {
    let first_window = window.max(1);
    let len = storage.file_len(path).map_err(io("stat", path))?;
    let head = storage.read_at(path, 0, SEGMENT_HEADER_LEN as usize).map_err(io("read", path))?;
    let small = len <= first_window as u64;
    if small || head.len() < SEGMENT_HEADER_LEN as usize || head.iter().all(|&b| b == 0) {
        // A small segment, or one whose header is torn: whole.
        let bytes = storage.read(path).map_err(io("read", path))?;
        return SegmentReader::new(&bytes, path, machine, number, mode).starting_at(start, prev).read(f);
    }
    let mut at = start.max(SEGMENT_HEADER_LEN);
    let mut prev = prev;
    let mut window = first_window;
    loop {
        let want = usize::try_from(len.saturating_sub(at)).unwrap_or(usize::MAX).min(window);
        let body = storage.read_at(path, at, want).map_err(io("read", path))?;
        // The file cannot shrink under a reader (logs are only cut at
        // open); read what is there as its end.
        let file_len = if body.len() < want { at + body.len() as u64 } else { len };
        let reader =
            SegmentReader::window(&head, &body, at, file_len, path, machine, number, mode).starting_at(at, prev);
        let scan = reader.read(f)?;
        let window_end = at + body.len() as u64;
        if window_end >= file_len || scan.stop != Stop::End || scan.valid_len >= file_len {
            return Ok(scan);
        }
        prev = scan.last.or(prev);
        if scan.valid_len > at {
            at = scan.valid_len;
            window = first_window;
        } else {
            window = window.saturating_mul(2);
        }
    }
}

/// [`for_each_record`] for index catch-up: calls `f(position, end offset of
/// the record in its segment, event)` for every event of `machine` from
/// `from = (segment, offset)` on; `(0, 0)` is the start of the log.
pub fn for_each_event(
    storage: &dyn Storage,
    log_root: &Path,
    machine: MachineId,
    from: (u64, u64),
    mut f: impl FnMut(LogPos, u64, &Event) -> Result<()>,
) -> Result<ReadEnd> {
    let from = LogPos { machine, segment: from.0, offset: from.1 };
    for_each_record(storage, log_root, from, |pos, r| f(pos, r.offset + r.frame_len, &r.event))
}

/// [`for_each_record`], collected: every event from `from` on, with its
/// position, and where the read ended.
pub fn read_events(storage: &dyn Storage, log_root: &Path, from: LogPos) -> Result<(Vec<(LogPos, Event)>, ReadEnd)> {
    let mut out = Vec::new();
    let end = for_each_record(storage, log_root, from, |pos, r| {
        out.push((pos, r.event.clone()));
        Ok(())
    })?;
    Ok((out, end))
}

/// What [`LogWriter::open`] had to repair.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovery {
    /// The torn tail that was cut off, if any.
    pub cut: Option<TornTail>,
}

impl Recovery {
    /// Whether nothing had to be repaired.
    pub fn is_clean(&self) -> bool {
        self.cut.is_none()
    }

    /// A one-line account of the repair, for logs and open reports.
    pub fn describe(&self) -> Option<String> {
        self.cut.as_ref().map(|t| {
            let header = if t.header_rewritten { "; segment header rewritten" } else { "" };
            format!("cut a torn tail of {} bytes off {} at byte {}{header}", t.bytes, t.path.display(), t.offset)
        })
    }
}

/// A torn tail cut off the last segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub path: PathBuf,
    /// Its number.
    pub segment: u64,
    /// Where the cut was made (0 when the header itself was torn).
    pub offset: u64,
    /// How many bytes were cut.
    pub bytes: u64,
    /// Whether the segment header had to be written again.
    pub header_rewritten: bool,
}

/// Appends this machine's events to its own log. One writer per log (the
/// data dir lock guarantees that).
#[derive(Debug)]
pub struct LogWriter {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    machine: MachineId,
    segment_limit: u64,
    segment: u64,
    file: Box<dyn AppendFile>,
    len: u64,
    last_seq: u64,
    last_time: Timestamp,
    file_unsynced: bool,
    dir_unsynced: bool,
    failed: Option<String>,
}

impl LogWriter {
    /// Opens (creating if missing) `machine`'s log under `log_root`, cutting
    /// a torn tail off its last segment (see the module docs). Only the last
    /// segment is read, plus earlier ones when it holds no record.
    pub fn open(
        storage: Arc<dyn Storage>,
        log_root: &Path,
        machine: MachineId,
        segment_limit: u64,
    ) -> Result<(LogWriter, Recovery)> {
        if segment_limit <= SEGMENT_HEADER_LEN {
            return Err(Error::Invalid(format!(
                "segment limit {segment_limit} is not above the {SEGMENT_HEADER_LEN}-byte segment header"
            )));
        }
        let dir = machine_dir(log_root, machine);
        if !storage.exists(&dir) {
            let root_existed = storage.exists(log_root);
            storage.create_dir_all(&dir).map_err(io("create", &dir))?;
            storage.sync_dir(log_root).map_err(io("sync", log_root))?;
            if let (false, Some(parent)) = (root_existed, log_root.parent().filter(|p| !p.as_os_str().is_empty())) {
                storage.sync_dir(parent).map_err(io("sync", parent))?;
            }
        }
        let segments = list_segments(&*storage, log_root, machine)?;
        let mut recovery = Recovery::default();
        let (segment, last) = match segments.last() {
            None => (0, None),
            Some(&last) => {
                let path = segment_path(log_root, machine, last);
                // Read in windows: only the last record's (seq, time) and
                // where the good records end are kept.
                let file_len = storage.file_len(&path).map_err(io("stat", &path))?;
                let scan = read_segment_windows(
                    &*storage,
                    &path,
                    machine,
                    last,
                    ReadMode::Recover,
                    SEGMENT_HEADER_LEN,
                    (last == 0).then_some((0, Timestamp(i64::MIN))),
                    READ_WINDOW,
                    &mut |_| Ok(()),
                )?;
                if let Some(offset) = scan.torn_tail() {
                    let cut = file_len.saturating_sub(offset);
                    tracing::warn!(path = %path.display(), offset, bytes = cut, "cutting torn tail off the log");
                    storage.truncate(&path, offset).map_err(io("truncate", &path))?;
                    recovery.cut = Some(TornTail {
                        path: path.clone(),
                        segment: last,
                        offset,
                        bytes: cut,
                        header_rewritten: scan.valid_len == 0,
                    });
                } else if scan.valid_len == 0 {
                    tracing::warn!(path = %path.display(), "empty last segment: writing its header");
                    recovery.cut = Some(TornTail {
                        path: path.clone(),
                        segment: last,
                        offset: 0,
                        bytes: 0,
                        header_rewritten: true,
                    });
                }
                let mut last_event = scan.last.filter(|&(seq, _)| seq != 0);
                for n in (0..last).rev() {
                    if last_event.is_some() {
                        break;
                    }
                    let path = segment_path(log_root, machine, n);
                    let first = (n == 0).then_some((0, Timestamp(i64::MIN)));
                    let scan = read_segment_windows(
                        &*storage,
                        &path,
                        machine,
                        n,
                        ReadMode::Strict,
                        SEGMENT_HEADER_LEN,
                        first,
                        READ_WINDOW,
                        &mut |_| Ok(()),
                    )?;
                    last_event = scan.last.filter(|&(seq, _)| seq != 0);
                }
                (last, Some(last_event))
            }
        };
        let path = dir.join(segment_file_name(segment));
        let file = storage.open_append(&path).map_err(io("open", &path))?;
        let len = file.len();
        let (last_seq, last_time) = last.flatten().unwrap_or((0, Timestamp(0)));
        let mut w = LogWriter {
            storage,
            dir,
            machine,
            segment_limit,
            segment,
            file,
            len,
            last_seq,
            last_time,
            file_unsynced: false,
            dir_unsynced: last.is_none(),
            failed: None,
        };
        if len == 0 {
            w.write(&segment_header(machine, segment))?;
            w.sync()?;
        }
        Ok((w, recovery))
    }

    /// The machine whose log this is.
    pub fn machine(&self) -> MachineId {
        self.machine
    }

    /// Seq of the last event in the log (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Time of the last event in the log (0 if none).
    pub fn last_time(&self) -> Timestamp {
        self.last_time
    }

    /// The end of the log: the next record goes here, or at the start of the
    /// next segment if it does not fit under the segment limit.
    pub fn position(&self) -> LogPos {
        LogPos { machine: self.machine, segment: self.segment, offset: self.len }
    }

    /// Frames and appends `events`, starting new segments as needed, and
    /// returns where each went. Not durable until [`LogWriter::sync`].
    ///
    /// Every event must be ours, carry the next seq (`last_seq() + 1`, then
    /// +1 each), not go back in time, and have a canonical clock; otherwise
    /// nothing is written and the error is [`Error::Invalid`]. After an I/O
    /// error the writer refuses further use: reopen the log to recover.
    pub fn append(&mut self, events: &[Event]) -> Result<Vec<LogPos>> {
        self.usable()?;
        let (mut seq, mut time) = (self.last_seq, self.last_time);
        let mut frames = Vec::with_capacity(events.len());
        for ev in events {
            let what = |why: String| {
                Error::Invalid(format!("cannot append event seq {} to log {}: {why}", ev.seq, self.machine))
            };
            if ev.machine != self.machine {
                return Err(what(format!("it is an event of machine {}", ev.machine)));
            }
            if Some(ev.seq) != seq.checked_add(1) {
                return Err(what(format!("the next seq is {}", seq.wrapping_add(1))));
            }
            if ev.time < time {
                return Err(what(format!("its time {:?} is before the previous event's {time:?}", ev.time)));
            }
            if !ev.clock.is_canonical() {
                return Err(what("its vector clock is not canonical".into()));
            }
            frames.push(record::encode(ev).map_err(|e| what(e.to_string()))?);
            (seq, time) = (ev.seq, ev.time);
        }
        let mut positions = Vec::with_capacity(frames.len());
        let mut buf = Vec::new();
        for frame in frames {
            let end = self.len + buf.len() as u64;
            if end > SEGMENT_HEADER_LEN && end + frame.len() as u64 > self.segment_limit {
                self.write(&buf)?;
                buf.clear();
                self.rotate()?;
            }
            positions.push(LogPos {
                machine: self.machine,
                segment: self.segment,
                offset: self.len + buf.len() as u64,
            });
            buf.extend_from_slice(&frame);
        }
        self.write(&buf)?;
        (self.last_seq, self.last_time) = (seq, time);
        Ok(positions)
    }

    /// Makes everything appended so far durable: fsyncs the current segment,
    /// and its folder when a segment was created since the last sync (sealed
    /// segments were fsynced when their successor was created).
    pub fn sync(&mut self) -> Result<()> {
        self.usable()?;
        if self.file_unsynced {
            let r = self.file.sync();
            self.check(r, "sync")?;
            self.file_unsynced = false;
        }
        if self.dir_unsynced {
            let r = self.storage.sync_dir(&self.dir);
            self.check(r, "sync")?;
            self.dir_unsynced = false;
        }
        Ok(())
    }

    /// Why the writer refuses further use, if an I/O failure made it.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    fn usable(&self) -> Result<()> {
        match &self.failed {
            Some(why) => Err(Error::Invalid(format!(
                "log writer of machine {} failed earlier ({why}); reopen the log to recover",
                self.machine
            ))),
            None => Ok(()),
        }
    }

    fn current_path(&self) -> PathBuf {
        self.dir.join(segment_file_name(self.segment))
    }

    /// Records an I/O failure: the file may now end in a partial frame, so
    /// the writer refuses further use until the log is reopened.
    fn check<T>(&mut self, r: std::io::Result<T>, op: &'static str) -> Result<T> {
        r.map_err(|e| {
            let path = self.current_path();
            self.failed = Some(format!("{op} {}: {e}", path.display()));
            Error::io(op, path, e)
        })
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let r = self.file.append(data);
        self.check(r, "append")?;
        self.len += data.len() as u64;
        self.file_unsynced = true;
        Ok(())
    }

    /// Seals the current segment (fsync) and starts the next one.
    fn rotate(&mut self) -> Result<()> {
        let r = self.file.sync();
        self.check(r, "sync")?;
        self.file_unsynced = false;
        let next = self.segment + 1;
        let path = self.dir.join(segment_file_name(next));
        let r = self.storage.open_append(&path);
        self.segment = next;
        self.file = self.check(r, "open")?;
        self.len = self.file.len();
        self.dir_unsynced = true;
        if self.len != 0 {
            self.failed = Some(format!("{} already exists", path.display()));
            return Err(bad_segment(&path, "a new segment's file already exists (another writer?)"));
        }
        self.write(&segment_header(self.machine, next))
    }
}

/// Cuts our own log at `pos`: the segment is truncated there and every later
/// segment removed. Only for records that recovery proved were never
/// acknowledged (see `LiveTree::open`); returns how many bytes were dropped.
pub fn cut_at(storage: &dyn Storage, log_root: &Path, pos: LogPos) -> Result<u64> {
    let segments = list_segments(storage, log_root, pos.machine)?;
    let mut dropped = 0;
    for &n in segments.iter().rev().take_while(|&&n| n > pos.segment) {
        let path = segment_path(log_root, pos.machine, n);
        dropped += storage.file_len(&path).map_err(io("stat", &path))?;
        storage.remove_file(&path).map_err(io("remove", &path))?;
    }
    let path = segment_path(log_root, pos.machine, pos.segment);
    let len = storage.file_len(&path).map_err(io("stat", &path))?;
    if pos.offset < len {
        storage.truncate(&path, pos.offset).map_err(io("truncate", &path))?;
        dropped += len - pos.offset;
    }
    let dir = machine_dir(log_root, pos.machine);
    storage.sync_dir(&dir).map_err(io("sync", &dir))?;
    Ok(dropped)
}

#[cfg(test)]
mod window_tests;
