//! Pushing our blocks and log to the remote, in the order that keeps the
//! remote consistent.
//!
//! One push:
//! 1. notes where our log ends, then syncs the engine, so everything before
//!    that point is durable (a crash can never take back a pushed event);
//! 2. reads our events from where the last push stopped to that point and
//!    collects their blocks that are not yet on the remote;
//! 3. sends those blocks, many per rsync run (`--files-from`), and records
//!    them in the pushed set after each successful run;
//! 4. only then lists the lengths of our segments on the remote (one
//!    `rsync --list-only` run) and compares them with our log up to that
//!    point (see *Our segments on the remote* below);
//! 5. extends a staged copy of each segment to send to that point and sends
//!    them; the staged copy (not the live segment, which may already hold
//!    newer events whose blocks are not on the remote) is what rsync reads;
//! 6. records the point in `push.pos`.
//!
//! A failure at any step leaves the remote holding blocks without events
//! (harmless) but never an event without its blocks.
//!
//! # Our segments on the remote
//!
//! Our `log/<machine>/` on the remote is written by our pushes only, so each
//! of its segments should be a prefix of ours. The listing of step 4 decides,
//! segment by segment (our length being the length up to the push point):
//! - **longer on the remote than here** (or a segment we never wrote): junk
//!   was appended on the remote, or another machine uses our machine id (a
//!   copied or restored data dir). The push stops with
//!   [`RemoteError::RemoteSegmentLonger`] before any log byte is sent; the
//!   remote file is left as it is (it may be another machine's data) and our
//!   log is not touched. Once the extra bytes are gone, a push goes through.
//! - **shorter or missing**: sent with `rsync --append-verify`: rsync appends
//!   the bytes the remote lacks, then compares whole-file checksums, and if
//!   the remote's existing bytes differ from ours (junk in place of our
//!   bytes, or our bytes appended after junk) re-sends the whole segment in
//!   place. Segments in this push's range always take this path, as do older
//!   ones the remote lost bytes of.
//! - **as long, in this push's range** (the sealed segment at a rotation, or
//!   a segment sent by a push that stopped before step 6): compared with
//!   `rsync --checksum --inplace`, which replaces it only if it differs.
//! - **as long, before this push's range**: left alone; sealed segments are
//!   checked by length only.
//!
//! A segment replaced for differing content counts in
//! [`PushReport::repaired`] and is logged as a warning naming it: the remote
//! copy of our own log is repaired from the log (the truth), never silently.
//!
//! Cost: the listing is one more rsync run per push that has log bytes to
//! send (pushes with none start no log run at all); the checksum pass is one
//! more, only for a push with a same-length segment in range (once per
//! rotation). `--append-verify` reads the whole of every segment it sends
//! on both sides, every push: up to the segment size (64 MiB by default)
//! twice for the active segment, which stays cheap next to the blocks it
//! follows, and over ssh only a checksum crosses the wire.
//!
//! The listing and the send are separate runs: a writer appending to our
//! remote segment between them (a second machine with our id pushing at
//! that moment) could still be overwritten by a re-send. The length check
//! catches such a machine at the latest on the push after.
//!
//! # `push.pos` file format (version 1)
//!
//! ```text
//! offset  size  field
//!      0     6  magic    b"SYNPPS"
//!      6     1  version  u8, 1
//!      7     1  reserved zero
//!      8     8  segment  u64 LE: segment of our log pushed up to
//!     16     8  offset   u64 LE: byte offset in it (a record boundary)
//! ```
//!
//! Written through a temp file and a rename. Missing means nothing was
//! pushed. Version history: v1 (current); any other version is refused.

use engine::{LiveTree, TreeRead};
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use engine::ids::{BlockHash, LogPos, MachineId};
use engine::log;

use crate::remote::{parse_segment_listing, Rsync};
use crate::{RemoteError, Result};

/// Blocks per rsync run.
pub const BLOCKS_PER_RUN: usize = 20_000;

const POS_MAGIC: &[u8; 6] = b"SYNPPS";
const POS_VERSION: u8 = 1;

/// What a push did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Blocks sent.
    pub blocks: u64,
    /// Their stored bytes.
    pub block_bytes: u64,
    /// Log bytes newly covered.
    pub log_bytes: u64,
    /// rsync runs.
    pub runs: u64,
    /// Our segments whose copy on the remote differed from ours and was
    /// replaced with ours (see the module docs).
    pub repaired: u64,
}

/// What a push would send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushPlan {
    /// Where the last push stopped.
    pub from: LogPos,
    /// Where this one stops.
    pub to: LogPos,
    /// Blocks to send.
    pub blocks: Vec<BlockHash>,
    /// Their stored bytes.
    pub bytes: u64,
}

/// Progress of a push, for a progress bar.
#[derive(Clone, Copy, Debug)]
pub enum Progress {
    /// Blocks sent so far, of a total.
    Blocks {
        /// Sent.
        done: u64,
        /// All.
        total: u64,
        /// Stored bytes sent.
        bytes: u64,
    },
    /// Log segments being sent.
    Log,
}

/// Folder for files staged for rsync (never inside `log/`).
pub fn staging_dir(engine: &LiveTree) -> PathBuf {
    engine.data_dir().join("remote-staging")
}

fn pos_path(engine: &LiveTree) -> PathBuf {
    engine.data_dir().join("push.pos")
}

/// Where the last push stopped (the start of our log if none did).
pub fn load_pos(engine: &LiveTree) -> Result<LogPos> {
    let path = pos_path(engine);
    let machine = engine.machine();
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(log::log_start(machine)),
        Err(e) => return Err(RemoteError::io("read", &path)(e)),
    };
    let bad = |reason: String| RemoteError::BadState { path: path.clone(), reason };
    if bytes.len() != 24 || &bytes[..6] != POS_MAGIC {
        return Err(bad(format!("{} bytes without the SYNPPS header: not a push position file", bytes.len())));
    }
    if bytes[6] != POS_VERSION {
        return Err(bad(format!("version {} is not {POS_VERSION}", bytes[6])));
    }
    let u = |r: std::ops::Range<usize>| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&bytes[r]);
        u64::from_le_bytes(a)
    };
    Ok(LogPos { machine, segment: u(8..16), offset: u(16..24) })
}

fn save_pos(engine: &LiveTree, pos: LogPos) -> Result<()> {
    let path = pos_path(engine);
    let tmp = path.with_extension("pos.tmp");
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(POS_MAGIC);
    b.extend_from_slice(&[POS_VERSION, 0]);
    b.extend_from_slice(&pos.segment.to_le_bytes());
    b.extend_from_slice(&pos.offset.to_le_bytes());
    std::fs::write(&tmp, &b).map_err(RemoteError::io("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(RemoteError::io("rename", &tmp))
}

/// Syncs the engine and works out what a push would send.
pub fn plan(engine: &LiveTree) -> Result<PushPlan> {
    let from = load_pos(engine)?;
    let to = engine.log_position();
    // Everything before `to` is durable once this returns.
    engine.sync()?;
    let storage = engine.storage().as_ref();
    let log_root = engine.layout().log();
    let mut seen = HashSet::new();
    let mut blocks = Vec::new();
    let mut bytes = 0;
    if to > from && !log::list_segments(storage, &log_root, engine.machine())?.is_empty() {
        let mut missing = None;
        log::for_each_record(storage, &log_root, from, |pos, r| {
            if pos >= to || missing.is_some() {
                return Ok(());
            }
            for b in r.event.change.blocks() {
                if engine.cache().is_pushed(&b.hash) || !seen.insert(b.hash) {
                    continue;
                }
                match engine.blobs().stored_len(&b.hash) {
                    Ok(n) => {
                        bytes += n;
                        blocks.push(b.hash);
                    }
                    Err(engine::Error::MissingBlob(h)) => missing = Some((h, pos)),
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })?;
        if let Some((h, pos)) = missing {
            return Err(RemoteError::BadState {
                path: engine.blobs().path_of(&h),
                reason: format!("block {h} of our event at {pos} is neither local nor known on the remote"),
            });
        }
    }
    Ok(PushPlan { from, to: to.max(from), blocks, bytes })
}

/// Pushes our new blocks, then our log up to the point where all its
/// blocks are on the remote (see the module docs).
pub fn push(engine: &LiveTree, rsync: &Rsync, progress: &mut dyn FnMut(Progress)) -> Result<PushReport> {
    let runs_before = rsync.invocations();
    let staging = staging_dir(engine);
    std::fs::create_dir_all(&staging).map_err(RemoteError::io("create", &staging))?;
    ensure_layout(engine, rsync, &staging)?;
    let plan = plan(engine)?;
    let mut report = PushReport::default();
    send_blocks(engine, rsync, &staging, &plan.blocks, &mut report, progress)?;
    if plan.to > plan.from {
        progress(Progress::Log);
        let (log_bytes, repaired) = send_log(engine, rsync, &staging, plan.from, plan.to)?;
        report.log_bytes = log_bytes;
        report.repaired = repaired;
        save_pos(engine, plan.to)?;
    }
    report.runs = rsync.invocations() - runs_before;
    Ok(report)
}

fn ensure_layout(engine: &LiveTree, rsync: &Rsync, staging: &Path) -> Result<()> {
    if rsync.layout_ok.load(Ordering::Relaxed) && pos_path(engine).exists() {
        return Ok(());
    }
    rsync.ensure_layout(staging, engine.machine())?;
    // The first machine's settings, for clones; never overwritten.
    let args: Vec<OsString> =
        vec!["--ignore-existing".into(), engine.layout().config().into_os_string(), rsync.remote().spec("config.toml")];
    rsync.run_ok("sending config.toml", &args, None)?;
    rsync.layout_ok.store(true, Ordering::Relaxed);
    Ok(())
}

/// Sends `blocks` from the local store, [`BLOCKS_PER_RUN`] per rsync run.
pub fn send_blocks(
    engine: &LiveTree,
    rsync: &Rsync,
    staging: &Path,
    blocks: &[BlockHash],
    report: &mut PushReport,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    let total = blocks.len() as u64;
    let list = staging.join("push-list");
    let mut src = engine.blobs().dir().as_os_str().to_owned();
    src.push("/");
    for chunk in blocks.chunks(BLOCKS_PER_RUN) {
        let mut text = String::with_capacity(chunk.len() * 68);
        let mut bytes = 0;
        for h in chunk {
            let hex = h.to_hex();
            text.push_str(&hex[..2]);
            text.push('/');
            text.push_str(&hex);
            text.push('\n');
            bytes += engine.blobs().stored_len(h).unwrap_or(0);
        }
        std::fs::write(&list, text).map_err(RemoteError::io("write", &list))?;
        let mut files_from = OsString::from("--files-from=");
        files_from.push(&list);
        let args = vec![files_from, "--ignore-existing".into(), src.clone(), rsync.remote().spec("blobs/")];
        rsync.run_ok(&format!("sending {} blocks", chunk.len()), &args, None)?;
        engine.cache().mark_pushed(chunk)?;
        report.blocks += chunk.len() as u64;
        report.block_bytes += bytes;
        progress(Progress::Blocks { done: report.blocks, total, bytes: report.block_bytes });
    }
    Ok(())
}

/// Checks our segments on the remote against our log up to `to`, stages
/// those to send and sends them (see the module docs). Returns the log bytes
/// newly staged and how many remote segments were repaired.
fn send_log(engine: &LiveTree, rsync: &Rsync, staging: &Path, from: LogPos, to: LogPos) -> Result<(u64, u64)> {
    let machine = engine.machine();
    let log_root = engine.layout().log();
    let remote_lens = remote_segment_lens(rsync, machine)?;
    let mut ours = Vec::new();
    for number in 0..=to.segment {
        let live = log::segment_path(&log_root, machine, number);
        let live_len = std::fs::metadata(&live).map_err(RemoteError::io("stat", &live))?.len();
        ours.push((number, if number == to.segment { to.offset.min(live_len) } else { live_len }));
    }
    let dest = format!("log/{machine}/");
    let plan = plan_segments(&ours, &remote_lens, from.segment).map_err(|l| RemoteError::RemoteSegmentLonger {
        remote: rsync.remote().to_string(),
        path: rsync.remote().spec(&format!("{dest}{}", log::segment_file_name(l.segment))).to_string_lossy().into(),
        machine,
        remote_len: l.remote_len,
        local_len: l.local_len,
    })?;

    let stage = staging.join("log").join(machine.to_string());
    std::fs::create_dir_all(&stage).map_err(RemoteError::io("create", &stage))?;
    let mut staged_bytes = 0;
    for &number in plan.append.iter().chain(&plan.compare) {
        let live = log::segment_path(&log_root, machine, number);
        let staged = stage.join(log::segment_file_name(number));
        staged_bytes += extend_copy(&live, &staged, ours[number as usize].1)?;
    }
    let mut src = stage.clone().into_os_string();
    src.push("/");
    let mut repaired = Vec::new();
    let passes: [(&[u64], &[&str], usize); 2] = [
        // A name printed twice was re-sent whole after a failed verification.
        (&plan.append, &["--append-verify"], 2),
        // Only segments that differ are sent (and so printed).
        (&plan.compare, &["--checksum", "--inplace"], 1),
    ];
    for (numbers, options, times) in passes {
        if numbers.is_empty() {
            continue;
        }
        let names: Vec<String> = numbers.iter().map(|&n| log::segment_file_name(n)).collect();
        let list = staging.join("log-list");
        std::fs::write(&list, names.iter().map(|n| format!("{n}\n")).collect::<String>())
            .map_err(RemoteError::io("write", &list))?;
        let mut files_from = OsString::from("--files-from=");
        files_from.push(&list);
        let mut args: Vec<OsString> = options.iter().map(OsString::from).collect();
        args.extend([files_from, "--out-format=%n".into(), src.clone(), rsync.remote().spec(&dest)]);
        let out = rsync.run_stdout(&format!("sending log segments ({})", options.join(" ")), &args, None)?;
        for name in names {
            if out.lines().filter(|l| *l == name).count() >= times {
                repaired.push(name);
            }
        }
    }
    for name in &repaired {
        tracing::warn!(
            "remote {}: our log segment {dest}{name} there differed from ours (junk on the remote?); replaced it \
             with ours",
            rsync.remote()
        );
    }
    // Sealed segments are on the remote in full now: their staged copies
    // are no longer needed.
    for &number in plan.append.iter().chain(&plan.compare).filter(|&&n| n < to.segment) {
        let _ = std::fs::remove_file(stage.join(log::segment_file_name(number)));
    }
    Ok((staged_bytes, repaired.len() as u64))
}

/// The lengths of `machine`'s segments on the remote, by number, from one
/// `rsync --list-only` run over the remote's root (so a missing
/// `log/<machine>/` lists as empty rather than failing).
fn remote_segment_lens(rsync: &Rsync, machine: MachineId) -> Result<BTreeMap<u64, u64>> {
    let what = "listing our log segments";
    let mut root = rsync.remote().spec("");
    root.push("/");
    let args: Vec<OsString> = vec![
        "-r".into(),
        "--list-only".into(),
        // Plain digits, no thousands separators.
        "--no-human-readable".into(),
        "--include=/log/".into(),
        format!("--include=/log/{machine}/").into(),
        format!("--include=/log/{machine}/*{}", log::SEGMENT_EXT).into(),
        "--exclude=*".into(),
        root,
    ];
    let text = rsync.run_stdout(what, &args, None)?;
    parse_listing(&text, machine).map_err(|(line, reason)| RemoteError::BadOutput {
        remote: rsync.remote().to_string(),
        what: what.to_string(),
        line,
        reason,
    })
}

/// The lengths of `machine`'s segments in an `rsync --list-only` listing
/// (see [`parse_segment_listing`]). Fails with the line and why on one that
/// is not a regular file or whose size is not a number.
fn parse_listing(text: &str, machine: MachineId) -> std::result::Result<BTreeMap<u64, u64>, (String, String)> {
    let mut lens = BTreeMap::new();
    for seg in parse_segment_listing(text)?.into_iter().filter(|s| s.machine == machine) {
        if !seg.regular {
            return Err((seg.line.to_string(), "our segment's path on the remote is not a regular file".to_string()));
        }
        lens.insert(seg.number, seg.len);
    }
    Ok(lens)
}

/// What to do with our segments on the remote.
#[derive(Debug, Default, PartialEq, Eq)]
struct SegmentPlan {
    /// Shorter or missing on the remote: send with `--append-verify`.
    append: Vec<u64>,
    /// As long on the remote, in this push's range: compare by checksum.
    compare: Vec<u64>,
}

/// A segment longer on the remote than here.
#[derive(Debug, PartialEq, Eq)]
struct Longer {
    segment: u64,
    remote_len: u64,
    local_len: u64,
}

/// Decides per segment from `ours` (number and length up to the push point,
/// for every segment up to it) and the remote's lengths; `from_segment` is
/// where this push's range starts. See the module docs.
fn plan_segments(
    ours: &[(u64, u64)],
    remote: &BTreeMap<u64, u64>,
    from_segment: u64,
) -> std::result::Result<SegmentPlan, Longer> {
    let local: BTreeMap<u64, u64> = ours.iter().copied().collect();
    for (&segment, &remote_len) in remote {
        let local_len = local.get(&segment).copied().unwrap_or(0);
        if remote_len > local_len {
            return Err(Longer { segment, remote_len, local_len });
        }
    }
    let mut plan = SegmentPlan::default();
    for &(segment, len) in ours {
        match remote.get(&segment).copied().unwrap_or(0) {
            r if r < len => plan.append.push(segment),
            _ if segment >= from_segment => plan.compare.push(segment),
            _ => {}
        }
    }
    Ok(plan)
}

/// Makes `staged` hold the first `want` bytes of `live`, copying only what
/// it lacks. Returns the bytes copied.
fn extend_copy(live: &Path, staged: &Path, want: u64) -> Result<u64> {
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(staged)
        .map_err(RemoteError::io("open", staged))?;
    let have = out.metadata().map_err(RemoteError::io("stat", staged))?.len();
    if have > want {
        // A staged copy longer than what may go out (a push that failed
        // after a crash cut the log): start over from the live segment.
        out.set_len(0).map_err(RemoteError::io("truncate", staged))?;
        return extend_copy(live, staged, want);
    }
    if have == want {
        return Ok(0);
    }
    let mut input = std::fs::File::open(live).map_err(RemoteError::io("open", live))?;
    input.seek(SeekFrom::Start(have)).map_err(RemoteError::io("seek", live))?;
    let mut buf = Vec::new();
    input.take(want - have).read_to_end(&mut buf).map_err(RemoteError::io("read", live))?;
    out.seek(SeekFrom::Start(have)).map_err(RemoteError::io("seek", staged))?;
    out.write_all(&buf).map_err(RemoteError::io("write", staged))?;
    Ok(buf.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: MachineId = MachineId(0xab);

    #[test]
    fn listing_gives_our_segment_lengths() {
        let text = "drwxr-xr-x        4096 2026/11/25 12:09:38 .\n\
                    drwxr-xr-x        4096 2026/11/25 12:09:38 log\n\
                    drwxr-xr-x        4096 2026/11/25 12:09:38 log/00000000000000ab\n\
                    -rw-r--r--     1234567 2026/11/25 12:09:38 log/00000000000000ab/0000000000000000.seg\n\
                    -rw-r--r--   1,234,568 2026/11/25 12:09:38 log/00000000000000ab/0000000000000001.seg\n\
                    -rw-r--r--          99 2026/11/25 12:09:38 log/00000000000000ab/notes.seg\n\
                    -rw-r--r--          99 2026/11/25 12:09:38 log/00000000000000cd/0000000000000002.seg\n";
        let lens = parse_listing(text, M).expect("parses");
        assert_eq!(lens, BTreeMap::from([(0, 1_234_567), (1, 1_234_568)]));
        assert_eq!(parse_listing("", M).expect("empty"), BTreeMap::new());
    }

    #[test]
    fn listing_refuses_what_it_cannot_read() {
        let dir = "drwxr-xr-x 4096 2026/11/25 12:09:38 log/00000000000000ab/0000000000000000.seg";
        let (line, reason) = parse_listing(dir, M).expect_err("a folder at a segment's path");
        assert_eq!(line, dir);
        assert!(reason.contains("not a regular file"), "{reason}");
        let human = "-rw-r--r-- 1.23M 2026/11/25 12:09:38 log/00000000000000ab/0000000000000000.seg";
        let (_, reason) = parse_listing(human, M).expect_err("not a byte count");
        assert!(reason.contains("not a number"), "{reason}");
    }

    #[test]
    fn segments_are_appended_compared_or_refused_by_length() {
        let ours = [(0, 100), (1, 200), (2, 50)];
        let remote = |entries: &[(u64, u64)]| entries.iter().copied().collect::<BTreeMap<_, _>>();
        // A normal push: sealed segments whole, the range's start shorter.
        let plan = plan_segments(&ours, &remote(&[(0, 100), (1, 120)]), 1).expect("plan");
        assert_eq!(plan, SegmentPlan { append: vec![1, 2], compare: vec![] });
        // A sealed segment of the range as long as ours is compared; one
        // before the range is trusted; one the remote lost bytes of is sent.
        let plan = plan_segments(&ours, &remote(&[(0, 100), (1, 200)]), 1).expect("plan");
        assert_eq!(plan, SegmentPlan { append: vec![2], compare: vec![1] });
        let plan = plan_segments(&ours, &remote(&[(0, 60), (1, 200), (2, 50)]), 2).expect("plan");
        assert_eq!(plan, SegmentPlan { append: vec![0], compare: vec![2] });
        // Longer anywhere, or a segment we never wrote: refused.
        let err = plan_segments(&ours, &remote(&[(0, 100), (1, 201)]), 1).expect_err("longer");
        assert_eq!(err, Longer { segment: 1, remote_len: 201, local_len: 200 });
        let err = plan_segments(&ours, &remote(&[(0, 100), (3, 40)]), 1).expect_err("never ours");
        assert_eq!(err, Longer { segment: 3, remote_len: 40, local_len: 0 });
    }
}
