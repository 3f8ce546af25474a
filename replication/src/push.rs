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
//! 4. only then extends a staged copy of each segment to that point and
//!    sends the segments with `rsync --append`; the staged copy (not the
//!    live segment, which may already hold newer events whose blocks are not
//!    on the remote) is what rsync reads;
//! 5. records the point in `push.pos`.
//!
//! A failure at any step leaves the remote holding blocks without events
//! (harmless) but never an event without its blocks.
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

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use engine::ids::{BlockHash, LogPos};
use engine::{log, Engine};

use crate::remote::Rsync;
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
pub fn staging_dir(engine: &Engine) -> PathBuf {
    engine.data_dir().join("remote-staging")
}

fn pos_path(engine: &Engine) -> PathBuf {
    engine.data_dir().join("push.pos")
}

/// Where the last push stopped (the start of our log if none did).
pub fn load_pos(engine: &Engine) -> Result<LogPos> {
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

fn save_pos(engine: &Engine, pos: LogPos) -> Result<()> {
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
pub fn plan(engine: &Engine) -> Result<PushPlan> {
    let from = load_pos(engine)?;
    let Some(to) = engine.log_position() else {
        return Ok(PushPlan { from, to: from, blocks: Vec::new(), bytes: 0 });
    };
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
pub fn push(engine: &Engine, rsync: &Rsync, progress: &mut dyn FnMut(Progress)) -> Result<PushReport> {
    let runs_before = rsync.invocations();
    let staging = staging_dir(engine);
    std::fs::create_dir_all(&staging).map_err(RemoteError::io("create", &staging))?;
    ensure_layout(engine, rsync, &staging)?;
    let plan = plan(engine)?;
    let mut report = PushReport::default();
    send_blocks(engine, rsync, &staging, &plan.blocks, &mut report, progress)?;
    if plan.to > plan.from {
        progress(Progress::Log);
        report.log_bytes = send_log(engine, rsync, &staging, plan.from, plan.to)?;
        save_pos(engine, plan.to)?;
    }
    report.runs = rsync.invocations() - runs_before;
    Ok(report)
}

fn ensure_layout(engine: &Engine, rsync: &Rsync, staging: &Path) -> Result<()> {
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
    engine: &Engine,
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

/// Stages our segments up to `to` and sends them with `--append`. Returns
/// the log bytes newly staged.
fn send_log(engine: &Engine, rsync: &Rsync, staging: &Path, from: LogPos, to: LogPos) -> Result<u64> {
    let machine = engine.machine();
    let log_root = engine.layout().log();
    let stage = staging.join("log").join(machine.to_string());
    std::fs::create_dir_all(&stage).map_err(RemoteError::io("create", &stage))?;
    let mut staged_bytes = 0;
    for number in from.segment..=to.segment {
        let live = log::segment_path(&log_root, machine, number);
        let live_len = std::fs::metadata(&live).map_err(RemoteError::io("stat", &live))?.len();
        let want = if number == to.segment { to.offset.min(live_len) } else { live_len };
        let staged = stage.join(log::segment_file_name(number));
        staged_bytes += extend_copy(&live, &staged, want)?;
    }
    let mut src = stage.clone().into_os_string();
    src.push("/");
    let dest = rsync.remote().spec(&format!("log/{machine}/"));
    let args = vec!["-r".into(), "--append".into(), src, dest];
    rsync.run_ok("sending log segments", &args, None)?;
    // Sealed segments are on the remote in full now: their staged copies
    // are no longer needed.
    for number in from.segment..to.segment {
        let staged = stage.join(log::segment_file_name(number));
        let _ = std::fs::remove_file(staged);
    }
    Ok(staged_bytes)
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
