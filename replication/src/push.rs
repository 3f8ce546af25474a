//! Pushing our blocks and log to the remote, in the order that keeps the
//! remote consistent.
//!
//! One push:
//! 1. notes where our log ends, then syncs the engine, so everything before
//!    that point is durable (a crash can never take back a pushed event);
//! 2. reads our events from where the last push stopped to that point,
//!    gathering their blocks that are not yet on the remote into a round;
//! 3. whenever a round is full (see *Rounds* below) and once at the end,
//!    sends its blocks in one rsync run (`--files-from`) and records them
//!    as on the remote, then reads on;
//! 4. only once every block up to that point is on the remote, lists the lengths of our segments on the remote (one
//!    `rsync --list-only` run) and compares them with our log up to that
//!    point (see *Our segments on the remote* below);
//! 5. extends a staged copy of each segment to send to that point and sends
//!    them; the staged copy (not the live segment, which may already hold
//!    newer events whose blocks are not on the remote) is what rsync reads;
//! 6. records the point in `push.pos`.
//!
//! A failure at any step leaves the remote holding blocks without events
//! (harmless) but never an event without its blocks. The rounds sent before
//! a failure stay recorded as on the remote, so the next push goes on from
//! there.
//!
//! # Rounds
//!
//! A round holds at most [`BLOCKS_PER_RUN`] blocks or [`ROUND_BYTES`] stored
//! bytes ([`RoundLimits::default`]): it ends with the event that reaches
//! either bound (so it may exceed them by that one event's blocks). The
//! block bound is what bounds memory; the byte bound only makes a push of
//! large blocks record its progress (and report it) now and then: a round
//! that failed is sent again with `--ignore-existing`, so the blocks it had
//! already sent do not go twice either way. Memory for a push is one round
//! and one segment of our log, however many blocks the push sends: a first
//! push of millions of files never holds all their hashes. A block is sent
//! once per push: within a round it is gathered once, and a later round
//! skips it as already on the remote.
//!
//! [`plan`] reads the same way without sending, so it too holds one round;
//! the price is that a block referenced in two rounds counts twice in
//! [`PushPlan::blocks`] and [`PushPlan::bytes`], which are therefore exact
//! when the pending blocks fit one round and an upper bound otherwise.
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

use engine::{LiveTree, Replication, TreeRead};
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use engine::ids::{BlockHash, LogPos, MachineId};
use engine::replication::{log_start, segment_file_name, SEGMENT_EXT};

use crate::remote::{parse_segment_listing, Rsync};
use crate::{RemoteError, Result};

/// Most blocks of one round, sent in one rsync run (see *Rounds* in the
/// module docs).
pub const BLOCKS_PER_RUN: usize = 20_000;

/// Most stored bytes of one round (see *Rounds* in the module docs).
pub const ROUND_BYTES: u64 = 1 << 30;

/// The bounds of a push's rounds (see *Rounds* in the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundLimits {
    /// Most blocks of a round.
    pub blocks: usize,
    /// Most stored bytes of a round.
    pub bytes: u64,
}

impl Default for RoundLimits {
    fn default() -> Self {
        RoundLimits { blocks: BLOCKS_PER_RUN, bytes: ROUND_BYTES }
    }
}

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushPlan {
    /// Where the last push stopped.
    pub from: LogPos,
    /// Where this one stops.
    pub to: LogPos,
    /// Blocks to send: exact when they fit one round, else an upper bound
    /// (see *Rounds* in the module docs).
    pub blocks: u64,
    /// Their stored bytes (as exact as `blocks`).
    pub bytes: u64,
}

/// Progress of a push, for a progress bar.
#[derive(Clone, Copy, Debug)]
pub enum Progress {
    /// Blocks sent so far, of those found so far: a push reads its range
    /// as it sends (see *Rounds* in the module docs), so `total` grows
    /// until the last round.
    Blocks {
        /// Sent.
        done: u64,
        /// Found so far.
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
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(log_start(machine)),
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

/// Where a push now goes from and to: from where the last one stopped to
/// the end of our log, which is durable once this returns.
fn range(engine: &LiveTree) -> Result<(LogPos, LogPos)> {
    let from = load_pos(engine)?;
    let to = engine.log_position();
    // Everything before `to` is durable once this returns.
    engine.sync()?;
    Ok((from, to.max(from)))
}

/// Syncs the engine and works out what a push would send, holding one
/// round at a time (see *Rounds* in the module docs).
pub fn plan(engine: &LiveTree) -> Result<PushPlan> {
    let (from, to) = range(engine)?;
    let mut plan = PushPlan { from, to, blocks: 0, bytes: 0 };
    for_each_round(&engine.replication(), from, to, RoundLimits::default(), |round| {
        plan.blocks += round.blocks.len() as u64;
        plan.bytes += round.bytes;
        Ok(())
    })?;
    Ok(plan)
}

/// The blocks of one round: distinct, not on the remote when gathered, in
/// the order our log references them.
#[derive(Debug, Default)]
struct Round {
    seen: HashSet<BlockHash>,
    blocks: Vec<BlockHash>,
    /// Their stored bytes.
    bytes: u64,
}

impl Round {
    /// Adds block `hash` of `stored` bytes, unless the round has it.
    fn add(&mut self, hash: BlockHash, stored: u64) {
        if self.seen.insert(hash) {
            self.blocks.push(hash);
            self.bytes += stored;
        }
    }

    fn has(&self, hash: &BlockHash) -> bool {
        self.seen.contains(hash)
    }

    /// Whether it has reached a bound (see *Rounds* in the module docs).
    fn is_full(&self, limits: RoundLimits) -> bool {
        self.blocks.len() >= limits.blocks || self.bytes >= limits.bytes
    }

    fn clear(&mut self) {
        self.seen.clear();
        self.blocks.clear();
        self.bytes = 0;
    }
}

/// Reads our events in `from..to` and calls `f` with each round of their
/// blocks not on the remote (see *Rounds* in the module docs): when a round
/// is full, after the event that filled it, and once at the end if the last
/// one has blocks. A block of ours stored neither here nor on the remote
/// fails the read, naming the event.
fn for_each_round(
    rep: &Replication<'_>,
    from: LogPos,
    to: LogPos,
    limits: RoundLimits,
    mut f: impl FnMut(&Round) -> Result<()>,
) -> Result<()> {
    let mut round = Round::default();
    rep.events_since(from, to, |pos, event| {
        for b in event.change.blocks() {
            if round.has(&b.hash) || rep.is_on_remote(&b.hash) {
                continue;
            }
            match rep.blob_len(&b.hash) {
                Ok(n) => round.add(b.hash, n),
                Err(engine::Error::MissingBlob(h)) => {
                    return Err(RemoteError::BadState {
                        path: rep.blob_files_dir().join(rep.blob_file(&h)),
                        reason: format!("block {h} of our event at {pos} is neither local nor known on the remote"),
                    })
                }
                Err(e) => return Err(e.into()),
            }
        }
        if round.is_full(limits) {
            f(&round)?;
            round.clear();
        }
        Ok(())
    })?;
    if !round.blocks.is_empty() {
        f(&round)?;
    }
    Ok(())
}

/// Pushes our new blocks, round by round, then our log up to the point
/// where all its blocks are on the remote (see the module docs).
pub fn push(engine: &LiveTree, rsync: &Rsync, progress: &mut dyn FnMut(Progress)) -> Result<PushReport> {
    push_in_rounds(engine, rsync, RoundLimits::default(), progress)
}

/// [`push`] with rounds of other bounds than the default ones.
pub fn push_in_rounds(
    engine: &LiveTree,
    rsync: &Rsync,
    limits: RoundLimits,
    progress: &mut dyn FnMut(Progress),
) -> Result<PushReport> {
    let runs_before = rsync.invocations();
    let staging = staging_dir(engine);
    std::fs::create_dir_all(&staging).map_err(RemoteError::io("create", &staging))?;
    ensure_layout(engine, rsync, &staging)?;
    let (from, to) = range(engine)?;
    let mut report = PushReport::default();
    let rep = engine.replication();
    for_each_round(&rep, from, to, limits, |round| send_round(&rep, rsync, &staging, round, &mut report, progress))?;
    if to > from {
        progress(Progress::Log);
        let (log_bytes, repaired) = send_log(&rep, rsync, &staging, from, to)?;
        report.log_bytes = log_bytes;
        report.repaired = repaired;
        save_pos(engine, to)?;
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
    let config = engine.replication().config_file();
    let args: Vec<OsString> =
        vec!["--ignore-existing".into(), config.into_os_string(), rsync.remote().spec("config.toml")];
    rsync.run_ok("sending config.toml", &args, None)?;
    rsync.layout_ok.store(true, Ordering::Relaxed);
    Ok(())
}

/// Sends the blocks of `round` from the local store in one rsync run, and
/// records them as on the remote.
fn send_round(
    rep: &Replication<'_>,
    rsync: &Rsync,
    staging: &Path,
    round: &Round,
    report: &mut PushReport,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    let list = staging.join("push-list");
    let mut src = rep.blob_files_dir().as_os_str().to_owned();
    src.push("/");
    let mut text = Vec::with_capacity(round.blocks.len() * 68);
    for h in &round.blocks {
        text.extend_from_slice(rep.blob_file(h).as_os_str().as_encoded_bytes());
        text.push(b'\n');
    }
    std::fs::write(&list, text).map_err(RemoteError::io("write", &list))?;
    let mut files_from = OsString::from("--files-from=");
    files_from.push(&list);
    let args = vec![files_from, "--ignore-existing".into(), src, rsync.remote().spec("blobs/")];
    let total = report.blocks + round.blocks.len() as u64;
    rsync.run_ok(&format!("sending {} blocks", round.blocks.len()), &args, None)?;
    rep.mark_on_remote(&round.blocks)?;
    report.blocks = total;
    report.block_bytes += round.bytes;
    progress(Progress::Blocks { done: report.blocks, total, bytes: report.block_bytes });
    Ok(())
}

/// Checks our segments on the remote against our log up to `to`, stages
/// those to send and sends them (see the module docs). Returns the log bytes
/// newly staged and how many remote segments were repaired.
fn send_log(rep: &Replication<'_>, rsync: &Rsync, staging: &Path, from: LogPos, to: LogPos) -> Result<(u64, u64)> {
    let machine = rep.machine();
    let remote_lens = remote_segment_lens(rsync, machine)?;
    let files = rep.segment_files(to)?;
    let ours: Vec<(u64, u64)> = files.iter().map(|f| (f.number, f.len)).collect();
    let dest = format!("log/{machine}/");
    let plan = plan_segments(&ours, &remote_lens, from.segment).map_err(|l| RemoteError::RemoteSegmentLonger {
        remote: rsync.remote().to_string(),
        path: rsync.remote().spec(&format!("{dest}{}", segment_file_name(l.segment))).to_string_lossy().into(),
        machine,
        remote_len: l.remote_len,
        local_len: l.local_len,
    })?;

    let stage = staging.join("log").join(machine.to_string());
    std::fs::create_dir_all(&stage).map_err(RemoteError::io("create", &stage))?;
    let mut staged_bytes = 0;
    for &number in plan.append.iter().chain(&plan.compare) {
        let file = &files[number as usize];
        let staged = stage.join(segment_file_name(number));
        staged_bytes += extend_copy(&file.path, &staged, file.len)?;
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
        let names: Vec<String> = numbers.iter().map(|&n| segment_file_name(n)).collect();
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
        let _ = std::fs::remove_file(stage.join(segment_file_name(number)));
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
        format!("--include=/log/{machine}/*{SEGMENT_EXT}").into(),
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
    fn a_round_keeps_each_block_once_and_fills_at_either_bound() {
        let h = |i: u32| BlockHash::of(&i.to_le_bytes(), 32);
        let mut round = Round::default();
        round.add(h(1), 10);
        round.add(h(2), 20);
        round.add(h(1), 10);
        assert_eq!((round.blocks.clone(), round.bytes), (vec![h(1), h(2)], 30), "a block once, in log order");
        assert!(round.has(&h(2)) && !round.has(&h(3)));
        let limits = RoundLimits::default();
        assert!(!round.is_full(limits));
        round.add(h(3), ROUND_BYTES - 31);
        assert!(!round.is_full(limits), "a byte short");
        round.add(h(4), 1);
        assert!(round.is_full(limits), "full at the byte bound");
        round.clear();
        assert!(round.blocks.is_empty() && !round.has(&h(1)) && round.bytes == 0);
        for i in 0..BLOCKS_PER_RUN as u32 {
            assert!(!round.is_full(limits), "not full before {BLOCKS_PER_RUN} blocks");
            round.add(h(i), 1);
        }
        assert!(round.is_full(limits), "full at the block bound");
        assert!(round.is_full(RoundLimits { blocks: 3, bytes: u64::MAX }), "other bounds");
    }

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
