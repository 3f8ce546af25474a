//! Time travel and forensics: the pure parts of `mount --at`, `log inspect`,
//! `log graph`, `history` and `restore`, plus the few reads they need.
//!
//! - [`parse_when`] turns a WHEN argument into a [`When`]; [`resolve_when`]
//!   turns that into the [`Timestamp`] a point-in-time view is cut at. A
//!   point-in-time view ([`PastView::open`]) shows every event of every
//!   machine with `time <= T`. A log position or an event number resolves
//!   to that event's time, so the view shows that event and everything of
//!   any machine not later than it. A WHEN before the first event gives the
//!   empty tree (the root alone); a WHEN in the future gives the current
//!   tree. Both are valid views, not errors.
//! - [`inspect_segment`] reads a segment whatever its state, with the log's
//!   one segment reader in forensic mode: every record is reported in place,
//!   good or damaged, and after a damaged one the read resyncs at the next
//!   frame that decodes. It never fails and never panics.
//! - [`Filter`] selects events for `log inspect`; [`describe`] prints a
//!   change; [`causal_dot`] draws a node's causal history from the vector
//!   clocks as Graphviz DOT.
//!
//! [`PastView::open`]: crate::PastView::open

use std::path::Path;

use crate::calendar::{civil_from_days, days_from_civil, days_in_month};
use crate::clock::Causality;
use crate::error::{Error, Result};
use crate::event::{BlockChange, Change, Event};
use crate::ids::{LogPos, MachineId, NodeId, Timestamp};
use crate::index::IndexReader;
use crate::index::Queries;
use crate::log;
use crate::read::TreeRead;
use crate::storage::Storage;
use crate::tree;

/// A WHEN argument, parsed but not yet resolved against a data dir.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// A wall-clock time.
    Time(Timestamp),
    /// The record at this log position (`@<machine>:<segment>:<offset>`).
    Position(LogPos),
    /// Event `seq` of `machine` (`<machine>#<seq>`), or of this data dir's
    /// own machine when `None` (`#<seq>`).
    Seq {
        /// Whose event.
        machine: Option<MachineId>,
        /// Its number in that machine's log.
        seq: u64,
    },
}

const NANOS: i64 = 1_000_000_000;

/// Parses WHEN. Accepted forms (`now` is the reference for relative ones):
///
/// - RFC 3339: `2026-11-25T10:00:00Z`, `2026-11-25 10:00:00.5+01:00`;
/// - relative: `2h ago`, `3d`, `90 min ago`, `1w` (units s, m/min, h, d, w);
/// - a unix timestamp in seconds, optionally with a fraction: `1764064800.25`;
/// - `now`;
/// - a log position `@<machine>:<segment>:<offset>` as `log inspect` prints it;
/// - an event number `<machine>#<seq>` as `log inspect` prints it, or `#<seq>`
///   for this machine's own log.
pub fn parse_when(s: &str, now: Timestamp) -> std::result::Result<When, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty WHEN".into());
    }
    if s == "now" {
        return Ok(When::Time(now));
    }
    if let Some(rest) = s.strip_prefix('@') {
        let parts: Vec<&str> = rest.split(':').collect();
        let [m, seg, off] = parts.as_slice() else {
            return Err(format!("{s:?}: a log position is @<machine>:<segment>:<offset>"));
        };
        let machine = m.parse::<MachineId>().map_err(|e| format!("{s:?}: {e}"))?;
        let segment = seg.parse::<u64>().map_err(|e| format!("{s:?}: segment {seg:?}: {e}"))?;
        let offset = off.parse::<u64>().map_err(|e| format!("{s:?}: offset {off:?}: {e}"))?;
        return Ok(When::Position(LogPos { machine, segment, offset }));
    }
    if let Some((m, seq)) = s.split_once('#') {
        let machine =
            if m.is_empty() { None } else { Some(m.parse::<MachineId>().map_err(|e| format!("{s:?}: {e}"))?) };
        let seq = seq.parse::<u64>().map_err(|e| format!("{s:?}: event number {seq:?}: {e}"))?;
        if seq == 0 {
            return Err(format!("{s:?}: event numbers start at 1"));
        }
        return Ok(When::Seq { machine, seq });
    }
    if s.bytes().next().is_some_and(|b| b.is_ascii_digit()) && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return parse_unix(s).map(When::Time);
    }
    if let Some(ago) = parse_relative(s)? {
        return Ok(When::Time(Timestamp(now.0.saturating_sub(ago))));
    }
    parse_rfc3339(s).map(When::Time)
}

fn parse_unix(s: &str) -> std::result::Result<Timestamp, String> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().map_err(|e| format!("{s:?}: unix time: {e}"))?;
    let nanos = parse_fraction(frac).ok_or_else(|| format!("{s:?}: bad fraction of a second"))?;
    secs.checked_mul(NANOS)
        .and_then(|n| n.checked_add(i64::from(nanos)))
        .map(Timestamp)
        .ok_or_else(|| format!("{s:?}: unix time out of range"))
}

/// Nanoseconds of a decimal fraction (`"5"` is 500 ms); at most 9 digits.
fn parse_fraction(frac: &str) -> Option<u32> {
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits = frac.to_string();
    while digits.len() < 9 {
        digits.push('0');
    }
    digits.parse().ok()
}

/// `Some(nanoseconds)` for a relative time (`3d`, `2h ago`), `None` when
/// `s` does not look like one.
fn parse_relative(s: &str) -> std::result::Result<Option<i64>, String> {
    let body = s.strip_suffix("ago").map(str::trim_end).unwrap_or(s);
    let split = body.find(|c: char| !c.is_ascii_digit()).unwrap_or(body.len());
    let (num, unit) = body.split_at(split);
    if num.is_empty() {
        return Ok(None);
    }
    let unit_nanos: i64 = match unit.trim() {
        "s" | "sec" | "secs" | "second" | "seconds" => NANOS,
        "m" | "min" | "mins" | "minute" | "minutes" => 60 * NANOS,
        "h" | "hr" | "hour" | "hours" => 3600 * NANOS,
        "d" | "day" | "days" => 86_400 * NANOS,
        "w" | "week" | "weeks" => 7 * 86_400 * NANOS,
        // Digits first, then something else: a date, not a relative time.
        _ if unit.starts_with('-') || unit.starts_with(':') => return Ok(None),
        other => return Err(format!("{s:?}: unknown time unit {other:?} (s, m, h, d, w)")),
    };
    let n: i64 = num.parse().map_err(|e| format!("{s:?}: {e}"))?;
    n.checked_mul(unit_nanos).map(Some).ok_or_else(|| format!("{s:?}: too far back"))
}

/// Parses an RFC 3339 time (`T` or a space between date and time; `Z`,
/// `z` or `±HH:MM`).
pub(crate) fn parse_rfc3339(s: &str) -> std::result::Result<Timestamp, String> {
    let bad = |why: &str| {
        format!("{s:?}: not a time ({why}); expected RFC 3339 like 2026-11-25T10:00:00Z, a relative time like \"2h ago\", a unix timestamp, @<machine>:<segment>:<offset> or <machine>#<seq>")
    };
    if !s.is_ascii() {
        return Err(bad("non-ASCII characters"));
    }
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad("layout"));
    }
    let num = |r: std::ops::Range<usize>| -> std::result::Result<u32, String> {
        let t = &s[r];
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad("digits"));
        }
        t.parse::<u32>().map_err(|_| bad("digits"))
    };
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d == 0 || d > days_in_month(i64::from(y), mo) || h > 23 || mi > 59 || sec > 60 {
        return Err(bad("field out of range"));
    }
    let mut rest = &s[19..];
    let mut nanos = 0;
    if let Some(r) = rest.strip_prefix('.') {
        let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        nanos = parse_fraction(&r[..end]).ok_or_else(|| bad("fraction"))?;
        rest = &r[end..];
    }
    let offset_secs: i64 = match rest {
        "Z" | "z" => 0,
        r if r.len() == 6 && (r.starts_with('+') || r.starts_with('-')) && &r[3..4] == ":" => {
            let hh: i64 = r[1..3].parse().map_err(|_| bad("offset"))?;
            let mm: i64 = r[4..6].parse().map_err(|_| bad("offset"))?;
            let v = hh * 3600 + mm * 60;
            if r.starts_with('-') {
                -v
            } else {
                v
            }
        }
        _ => return Err(bad("time zone")),
    };
    // A leap second reads as the second after it.
    let days = days_from_civil(i64::from(y), mo, d);
    let secs = days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(sec) - offset_secs;
    Ok(Timestamp(secs * NANOS + i64::from(nanos)))
}

/// `2026-11-25T10:00:00.123456789Z` (fraction only when not zero).
pub fn format_time(t: Timestamp) -> String {
    let secs = t.0.div_euclid(NANOS);
    let nanos = t.0.rem_euclid(NANOS);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let base = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", sod / 3600, sod % 3600 / 60, sod % 60);
    if nanos == 0 {
        format!("{base}Z")
    } else {
        format!("{base}.{nanos:09}Z")
    }
}

/// The timestamp a point-in-time view of `when` is cut at. `ix` is any
/// index of the data dir (the live one or `history.redb`); `local` is this
/// data dir's machine (for `#<seq>`).
pub fn resolve_when(
    storage: &dyn Storage,
    log_root: &Path,
    ix: &IndexReader,
    local: MachineId,
    when: When,
) -> Result<Timestamp> {
    match when {
        When::Time(t) => Ok(t),
        When::Position(pos) => log::read_record_at(storage, log_root, pos).map(|d| d.event.time),
        When::Seq { machine, seq } => {
            let m = machine.unwrap_or(local);
            match ix.event_location(m, seq)? {
                Some(loc) => Ok(loc.time),
                None => Err(Error::Invalid(format!("no event {m}#{seq} in the log (or not yet indexed)"))),
            }
        }
    }
}

/// The node at `path` (`/a/b`; `/` is the root) in `engine`'s view.
pub fn node_at_path<T: TreeRead + ?Sized>(engine: &T, path: &[u8]) -> Result<NodeId> {
    let mut cur = NodeId::ROOT;
    for part in path.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
        cur = engine.lookup(cur, part)?.id;
    }
    Ok(cur)
}

// ---- log inspect ------------------------------------------------------------

/// One record as `log inspect` found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspected {
    /// Where its frame starts.
    pub pos: LogPos,
    /// The event, when the record decoded and passed its checksum.
    pub event: Option<Event>,
    /// What is wrong with it, when it did not.
    pub damage: Option<String>,
}

/// Every record of segment `number` of `machine` (its bytes in `bytes`),
/// good and damaged, in file order: the forensic read of
/// [`log::SegmentReader`] ([`log::ReadMode::Forensic`]). A damaged record
/// is reported at its offset and the read resyncs at the next frame of
/// `machine` that decodes; a torn tail (as the log defines it) is reported
/// as one damaged entry starting "torn tail". Pure; never panics.
pub fn inspect_segment(bytes: &[u8], machine: MachineId, number: u64) -> Vec<Inspected> {
    let mut out = Vec::new();
    // The callback never fails.
    let _ = inspect_segment_each(bytes, machine, number, &mut |r| {
        out.push(r);
        Ok(())
    });
    out
}

/// [`inspect_segment`], handing each record to `f` as it is read; only an
/// error of `f` ends the read early.
pub(crate) fn inspect_segment_each(
    bytes: &[u8],
    machine: MachineId,
    number: u64,
    f: &mut dyn FnMut(Inspected) -> Result<()>,
) -> Result<()> {
    let at = |offset: u64| LogPos { machine, segment: number, offset };
    let name = log::segment_file_name(number);
    let reader = log::SegmentReader::new(bytes, Path::new(&name), machine, number, log::ReadMode::Forensic);
    // A forensic read fails only when the callback does.
    reader
        .read(&mut |item| {
            f(match item {
                log::Item::Record(r) => Inspected { pos: at(r.offset), event: Some(r.event), damage: None },
                log::Item::Damaged { offset, why } => Inspected { pos: at(offset), event: None, damage: Some(why) },
            })
        })
        .map(|_| ())
}

/// Hands every record of every machine's log to `f`, in log order (machine
/// by machine), damaged ones included, one segment in memory at a time.
/// Only an unreadable log folder, or an error of `f`, is an error.
pub fn for_each_inspected(
    storage: &dyn Storage,
    log_root: &Path,
    f: &mut dyn FnMut(Inspected) -> Result<()>,
) -> Result<()> {
    for m in log::list_machines(storage, log_root)? {
        let dir = log::machine_dir(log_root, m);
        let mut numbers = Vec::new();
        for name in storage.list_dir(&dir).map_err(|e| Error::io("list", &dir, e))? {
            match log::parse_segment_name(&name) {
                Ok(n) => numbers.push(n),
                Err(e) => f(Inspected {
                    pos: LogPos { machine: m, segment: u64::MAX, offset: 0 },
                    event: None,
                    damage: Some(format!("{}: {}", dir.join(&name).display(), e.0)),
                })?,
            }
        }
        numbers.sort_unstable();
        for n in numbers {
            let path = log::segment_path(log_root, m, n);
            match storage.read(&path) {
                Ok(bytes) => inspect_segment_each(&bytes, m, n, f)?,
                Err(e) => f(Inspected {
                    pos: LogPos { machine: m, segment: n, offset: 0 },
                    event: None,
                    damage: Some(format!("{}: unreadable: {e}", path.display())),
                })?,
            }
        }
    }
    Ok(())
}

/// Which events `log inspect` shows. Empty lists match everything. Damaged
/// records have no known node, time or kind: only `machine` filters them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Events of any of these nodes (an exchange belongs to both nodes).
    pub nodes: Vec<NodeId>,
    /// Events of this machine.
    pub machine: Option<MachineId>,
    /// Events at or after this time.
    pub since: Option<Timestamp>,
    /// Events at or before this time.
    pub until: Option<Timestamp>,
    /// Events of these kinds ([`Change::kind_name`]).
    pub kinds: Vec<String>,
}

impl Filter {
    /// Whether `r` passes.
    pub fn matches(&self, r: &Inspected) -> bool {
        if self.machine.is_some_and(|m| m != r.pos.machine) {
            return false;
        }
        let Some(e) = &r.event else { return true };
        let other = match &e.change {
            Change::Exchange { with } => Some(*with),
            _ => None,
        };
        (self.nodes.is_empty() || self.nodes.iter().any(|n| *n == e.node || Some(*n) == other))
            && self.since.is_none_or(|t| e.time >= t)
            && self.until.is_none_or(|t| e.time <= t)
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| k == e.change.kind_name()))
    }
}

/// Every kind name `--kind` accepts.
pub const KINDS: &[&str] = &[
    "create",
    "attrs",
    "write",
    "truncate",
    "move",
    "remove",
    "setxattr",
    "removexattr",
    "symlink",
    "volname",
    "pin",
    "exchange",
    "resolve",
];

fn name(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

fn block_change(c: &BlockChange) -> String {
    match &c.block {
        Some(b) => format!("{}={}({})", c.index, b.hash.to_hex(), b.len),
        None => format!("{}=hole", c.index),
    }
}

/// A one-line description of a change: names, sizes, changed block indexes
/// and hashes.
pub fn describe(change: &Change) -> String {
    match change {
        Change::Create { parent, name: n, kind, attrs, target } => {
            let t = if target.is_empty() { String::new() } else { format!(" -> {}", name(target)) };
            format!("{kind:?} {} in {parent} mode {:o}{t}", name(n), attrs.mode)
        }
        Change::SetAttrs(a) => format!("{a:?}"),
        Change::Content { size, blocks } => {
            let list: Vec<String> = blocks.iter().map(block_change).collect();
            format!("size {size} blocks [{}]", list.join(" "))
        }
        Change::Truncate { size, tail } => match tail {
            Some(t) => format!("size {size} tail {}", block_change(t)),
            None => format!("size {size}"),
        },
        Change::Move { parent, name: n } => format!("to {} in {parent}", name(n)),
        Change::Remove => "removed".into(),
        Change::Resolve => "conflict copy kept as an ordinary file".into(),
        Change::SetXattr { name: n, value } => format!("{} = {} bytes", name(n), value.len()),
        Change::RemoveXattr { name: n } => name(n),
        Change::SetTarget { target } => format!("-> {}", name(target)),
        Change::SetVolname { name: n } => name(n),
        Change::SetPinned { pinned } => format!("pinned {pinned}"),
        Change::Exchange { with } => format!("with {with}"),
    }
}

/// `<machine>#<seq>`: how `log inspect` names an event (a valid WHEN).
pub fn event_name(e: &Event) -> String {
    e.id().to_string()
}

/// The vector clock as `machine:count,...`.
pub fn clock_text(e: &Event) -> String {
    let parts: Vec<String> = e.clock.entries().iter().map(|(m, c)| format!("{m}:{c}")).collect();
    parts.join(",")
}

// ---- log graph --------------------------------------------------------------

/// Graphviz DOT of the causal history of `node` from its `events`: an arrow
/// from each event to the events that directly follow it causally (their
/// vector clocks say it happened before, with nothing in between), a dashed
/// red line between concurrent events, and merge points (events that
/// directly follow two or more others) drawn as double octagons.
pub fn causal_dot(node: NodeId, events: &[Event]) -> String {
    let mut out = format!("digraph \"{node}\" {{\n  rankdir=TB;\n  node [shape=box, fontname=monospace];\n");
    let id = |e: &Event| format!("\"{}\"", event_name(e));
    let before = |a: &Event, b: &Event| a.clock.compare(&b.clock) == Causality::Before;
    let mut edges = String::new();
    let mut merges = vec![false; events.len()];
    for (j, b) in events.iter().enumerate() {
        let direct: Vec<usize> = (0..events.len())
            .filter(|&i| before(&events[i], b))
            .filter(|&i| !events.iter().any(|c| before(&events[i], c) && before(c, b)))
            .collect();
        merges[j] = direct.len() > 1;
        for i in direct {
            edges.push_str(&format!("  {} -> {};\n", id(&events[i]), id(b)));
        }
    }
    for (i, e) in events.iter().enumerate() {
        let shape = if merges[i] { ", shape=doubleoctagon" } else { "" };
        let label = format!("{}\\n{} {}\\n{}", event_name(e), e.change.kind_name(), format_time(e.time), clock_text(e));
        out.push_str(&format!("  {} [label=\"{label}\"{shape}];\n", id(e)));
    }
    out.push_str(&edges);
    for (i, a) in events.iter().enumerate() {
        for b in &events[i + 1..] {
            if a.clock.compare(&b.clock) == Causality::Concurrent {
                out.push_str(&format!(
                    "  {} -> {} [dir=none, style=dashed, color=red, constraint=false, label=\"concurrent\"];\n",
                    id(a),
                    id(b)
                ));
            }
        }
    }
    out.push_str("}\n");
    out
}

// ---- history of one node ----------------------------------------------------

/// One version of a node: the state after one of its events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// The event's record.
    pub pos: LogPos,
    /// The event.
    pub event: Event,
    /// Size after it.
    pub size: u64,
    /// Removed after it.
    pub removed: bool,
}

/// Every version of `node` in `engine`'s view, oldest first (the fold of its
/// events in merge order, as point-in-time views fold them).
pub fn versions<T: TreeRead + ?Sized>(engine: &T, node: NodeId) -> Result<Vec<Version>> {
    let until = engine.at().unwrap_or(Timestamp(i64::MAX));
    let history = engine.index()?.history(node, until)?;
    let mut state = (node == NodeId::ROOT).then(tree::NodeRecord::root);
    let mut out = Vec::with_capacity(history.len());
    for (pos, _) in history {
        let event = log::read_event_at(engine.storage().as_ref(), &engine.layout().log(), pos)?;
        let next = tree::apply(state.as_ref(), &event).node;
        out.push(Version { pos, event, size: next.size, removed: next.removed });
        state = Some(next);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::VectorClock;
    use crate::record;
    use proptest::prelude::*;

    const NOW: Timestamp = Timestamp(1_764_064_800 * NANOS);

    #[test]
    fn rfc3339_forms() {
        assert_eq!(parse_when("2025-11-25T10:00:00Z", NOW), Ok(When::Time(Timestamp(1_764_064_800 * NANOS))));
        assert_eq!(parse_when("2025-11-25 11:00:00+01:00", NOW), Ok(When::Time(Timestamp(1_764_064_800 * NANOS))));
        assert_eq!(
            parse_when("2025-11-25T10:00:00.5Z", NOW),
            Ok(When::Time(Timestamp(1_764_064_800 * NANOS + 500_000_000)))
        );
        assert_eq!(parse_when("1970-01-01T00:00:00Z", NOW), Ok(When::Time(Timestamp(0))));
        assert!(parse_when("2025-02-30T10:00:00Z", NOW).is_err());
        assert!(parse_when("2025-11-25T10:00:00", NOW).is_err());
        assert!(parse_when("yesterday", NOW).is_err());
    }

    #[test]
    fn relative_and_unix_forms() {
        assert_eq!(parse_when("2h ago", NOW), Ok(When::Time(Timestamp(NOW.0 - 7200 * NANOS))));
        assert_eq!(parse_when("3d", NOW), Ok(When::Time(Timestamp(NOW.0 - 3 * 86_400 * NANOS))));
        assert_eq!(parse_when("90 min ago", NOW), Ok(When::Time(Timestamp(NOW.0 - 5400 * NANOS))));
        assert_eq!(parse_when("now", NOW), Ok(When::Time(NOW)));
        assert_eq!(parse_when("1764064800", NOW), Ok(When::Time(NOW)));
        assert_eq!(parse_when("1764064800.25", NOW), Ok(When::Time(Timestamp(NOW.0 + 250_000_000))));
        assert!(parse_when("3 fortnights ago", NOW).is_err());
    }

    #[test]
    fn positions_and_seqs() {
        let m = MachineId(0xab);
        assert_eq!(
            parse_when("@00000000000000ab:2:96", NOW),
            Ok(When::Position(LogPos { machine: m, segment: 2, offset: 96 }))
        );
        assert_eq!(parse_when("00000000000000ab#7", NOW), Ok(When::Seq { machine: Some(m), seq: 7 }));
        assert_eq!(parse_when("#7", NOW), Ok(When::Seq { machine: None, seq: 7 }));
        assert!(parse_when("#0", NOW).is_err());
        assert!(parse_when("@ab:2", NOW).is_err());
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(t in -(200 * 365 * 86_400 * NANOS)..(250 * 365 * 86_400 * NANOS)) {
            let s = format_time(Timestamp(t));
            prop_assert_eq!(parse_rfc3339(&s), Ok(Timestamp(t)));
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}", t in "[0-9T:Z+ .-]{19,26}", u in "[0-9]{4}-[0-9]{2}-[0-9]{2}T.{9,14}") {
            let _ = parse_when(&s, NOW);
            let _ = parse_when(&t, NOW);
            let _ = parse_when(&u, NOW);
        }

        #[test]
        fn inspect_segment_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = inspect_segment(&bytes, MachineId(1), 0);
        }
    }

    fn ev(machine: u64, seq: u64, clock: &[(u64, u64)], change: Change) -> Event {
        Event {
            node: NodeId::new(1, MachineId(1)),
            machine: MachineId(machine),
            seq,
            time: Timestamp(seq as i64),
            clock: VectorClock::from_entries(clock.iter().map(|&(m, c)| (MachineId(m), c))),
            change,
            base: None,
        }
    }

    fn segment(events: &[Event]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = log::segment_header(MachineId(1), 0).to_vec();
        let mut offsets = Vec::new();
        for e in events {
            offsets.push(bytes.len());
            bytes.extend(record::encode(e).expect("encode"));
        }
        (bytes, offsets)
    }

    #[test]
    fn damaged_middle_record_is_reported_and_scan_resyncs() {
        let events: Vec<Event> = (1..=3).map(|s| ev(1, s, &[(1, s)], Change::Remove)).collect();
        let (mut bytes, offsets) = segment(&events);
        bytes[offsets[1] + record::HEADER_LEN + 2] ^= 0xff;
        let got = inspect_segment(&bytes, MachineId(1), 0);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].event.as_ref(), Some(&events[0]));
        assert!(got[1].event.is_none());
        assert!(got[1].damage.as_deref().is_some_and(|d| d.contains("checksum")), "{got:?}");
        assert_eq!(got[1].pos.offset, offsets[1] as u64);
        assert_eq!(got[2].event.as_ref(), Some(&events[2]));
    }

    #[test]
    fn torn_tail_is_reported() {
        let events: Vec<Event> = (1..=2).map(|s| ev(1, s, &[(1, s)], Change::Remove)).collect();
        let (mut bytes, _) = segment(&events);
        bytes.truncate(bytes.len() - 3);
        let got = inspect_segment(&bytes, MachineId(1), 0);
        assert_eq!(got.len(), 2);
        assert!(got[1].damage.as_deref().is_some_and(|d| d.starts_with("torn tail")), "{got:?}");
    }

    #[test]
    fn filters_select_exactly() {
        let a = Inspected {
            pos: log::log_start(MachineId(1)),
            event: Some(ev(1, 5, &[(1, 5)], Change::Remove)),
            damage: None,
        };
        let damaged = Inspected { pos: log::log_start(MachineId(2)), event: None, damage: Some("x".into()) };
        assert!(Filter::default().matches(&a));
        assert!(Filter { kinds: vec!["remove".into()], ..Filter::default() }.matches(&a));
        assert!(!Filter { kinds: vec!["write".into()], ..Filter::default() }.matches(&a));
        assert!(!Filter { since: Some(Timestamp(6)), ..Filter::default() }.matches(&a));
        assert!(Filter { until: Some(Timestamp(5)), ..Filter::default() }.matches(&a));
        assert!(!Filter { nodes: vec![NodeId::ROOT], ..Filter::default() }.matches(&a));
        assert!(!Filter { machine: Some(MachineId(1)), ..Filter::default() }.matches(&damaged));
        assert!(Filter { kinds: vec!["write".into()], ..Filter::default() }.matches(&damaged));
        assert!(KINDS.contains(&a.event.as_ref().map_or("", |e| e.change.kind_name())));
    }

    #[test]
    fn dot_shows_concurrency_and_merges() {
        let base = ev(1, 1, &[(1, 1)], Change::Remove);
        let left = ev(1, 2, &[(1, 2)], Change::Remove);
        let right = ev(2, 1, &[(1, 1), (2, 1)], Change::Remove);
        let merge = ev(1, 3, &[(1, 3), (2, 1)], Change::Remove);
        let dot = causal_dot(NodeId::ROOT, &[base.clone(), left.clone(), right.clone(), merge.clone()]);
        let edge = |a: &Event, b: &Event| format!("\"{}\" -> \"{}\";", event_name(a), event_name(b));
        assert!(dot.contains(&edge(&base, &left)), "{dot}");
        assert!(dot.contains(&edge(&base, &right)), "{dot}");
        assert!(dot.contains(&edge(&left, &merge)) && dot.contains(&edge(&right, &merge)), "{dot}");
        assert!(!dot.contains(&edge(&base, &merge)), "{dot}");
        assert!(dot.contains("concurrent") && dot.contains("doubleoctagon"), "{dot}");
    }
}
