//! Scale: a collection built through a real mount of the `syncer` binary,
//! then every operation the issue "millions of files" (docs/SCALE.md) bounds,
//! each timed and its process's peak resident memory measured.
//!
//! The benchmark is an ignored test (one command; `scripts/scale.sh` runs it):
//!
//! ```text
//! SCALE_FILES=100000 cargo test --release --test scale -- --ignored --nocapture
//! ```
//!
//! Knobs (environment): `SCALE_FILES` small files (default 10,000),
//! `SCALE_BIGDIR` entries of the one big directory (default
//! min(SCALE_FILES, 1,000,000)), `SCALE_VERIFY` files read back and
//! compared per local view (default 10,000, spread evenly; 0 = all),
//! `SCALE_FETCH` the same where reads fetch from the remote, `SCALE_DIR`
//! the disk (default the system temp dir), `SCALE_KEEP=1` keeps the data
//! dirs and the remote afterwards (for a heap profile of a stage; the
//! path is printed). It prints one table, stage |
//! seconds | files/s | peak RSS MiB | process | the 256 MiB goal, and
//! asserts only correctness, as the small twin does.
//!
//! The twin, [`scale_small`], runs the same stages on 2,000 files and a
//! 3,000-entry directory in CI and asserts: every file reads back with its
//! content after a remount and through a `--at now` view; after an
//! eviction pass of every block and on a peer made by `syncer clone`, 300
//! files spread over the collection read back (each read fetches its block
//! from the remote: one rsync round trip per small file, about 60 a second
//! here, so all 2,000 would take minutes) and a walk checks every name and
//! size; readdir of the big directory lists every name exactly once (live,
//! `--at`, peer); `syncer status` counts every file and directory.
//! `SCALE_FETCH` sets the benchmark's number of fetched reads (default 200).
//!
//! Memory: a mount's peak is `VmHWM` of its daemon process (found by its
//! command line in /proc), reset at the start of each stage by writing `5`
//! to `/proc/<pid>/clear_refs`. A command run as its own process is reaped
//! with `wait4`, whose `ru_maxrss` is its peak (or that of a child it ran,
//! such as rsync, if larger). Commands that need the writer (`status`,
//! `evict`, `log verify`) run inside the mount through its control socket
//! while it is mounted, so their memory is the mount's; `sync` (the push)
//! runs unmounted in its own process.
//!
//! After writing, after the big directory and after a mount with a remote
//! starts, the benchmark waits until the mount is idle and shows the wait
//! and its memory as a row of its own.
//!
//! Files are 1 to 4 KiB of distinct content, 1,000 to a directory. The data
//! dir's `small_block` is set to 0 so that the eviction pass may evict
//! every block (by default blocks under 64 KiB always stay local).
//! Needs root, /dev/fuse, fusermount3 and rsync; fails without them.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_syncer");
/// Files per directory of the collection.
const PER_DIR: usize = 1000;
/// The memory goal of the issue, per process, at every moment.
const GOAL_MIB: f64 = 256.0;
/// The big directory, at the root of the tree.
const BIG: &str = "big";

/// How big the run is and how much it reads back.
#[derive(Debug, Clone, Copy)]
struct Params {
    files: usize,
    bigdir: usize,
    /// Files read back per local view (live, `--at`); 0 = every file.
    verify: usize,
    /// Files read back where each read fetches from the remote (after
    /// eviction, on the peer): one rsync round trip per small file.
    fetch: usize,
}

impl Params {
    fn from_env() -> Params {
        let num = |k: &str| {
            std::env::var(k)
                .ok()
                .map(|v| v.replace('_', "").parse::<usize>().unwrap_or_else(|e| panic!("{k}={v}: {e}")))
        };
        let files = num("SCALE_FILES").unwrap_or(10_000);
        Params {
            files,
            bigdir: num("SCALE_BIGDIR").unwrap_or(files.min(1_000_000)),
            verify: num("SCALE_VERIFY").unwrap_or(10_000),
            fetch: num("SCALE_FETCH").unwrap_or(200),
        }
    }

    /// `want` indices of files spread evenly over the collection (all of
    /// them for 0 or more than there are).
    fn spread(&self, want: usize) -> Vec<usize> {
        if want == 0 || want >= self.files {
            return (0..self.files).collect();
        }
        let step = self.files as f64 / want as f64;
        (0..want).map(|k| ((k as f64 * step) as usize).min(self.files - 1)).collect()
    }

    fn dirs(&self) -> usize {
        self.files.div_ceil(PER_DIR)
    }
}

/// File `i` of the collection, relative to the root.
fn rel(i: usize) -> PathBuf {
    PathBuf::from(format!("d{:04}/f{:07}", i / PER_DIR, i))
}

/// The content of file `i`: 1 to 4 KiB, distinct (it starts with `i`).
fn content(i: usize) -> Vec<u8> {
    let len = 1024 + (i.wrapping_mul(2_654_435_761) % 3073);
    let mut v = (i as u64).to_le_bytes().to_vec();
    v.extend(support::pattern(i as u64 + 1, len - 8));
    v
}

fn big_name(j: usize) -> String {
    format!("e{j:07}")
}

// ------------------------------------------------------------- measuring

/// Peak resident memory (`VmHWM`) of process `pid`, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| panic!("status of {pid}: {e}"));
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap_or_else(|| panic!("no VmHWM for {pid}"));
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("bad VmHWM line {line:?}"))
}

/// Resets the peak resident memory of `pid` to its current size.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap_or_else(|e| panic!("clear_refs of {pid}: {e}"));
}

/// A few lines of `/proc/<pid>/smaps_rollup` (where the resident memory is).
fn rollup(pid: u32) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let keep = ["Rss:", "Anonymous:", "Shared_Clean:", "Private_Clean:", "Private_Dirty:"];
    s.lines()
        .filter(|l| keep.iter().any(|k| l.starts_with(k)))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resident memory of a stage, KiB: its peak, and what the process held
/// when the stage began (mounts only; memory a process keeps from one
/// stage to the next counts in the next stage's peak too).
#[derive(Clone, Copy)]
struct Mem {
    peak: u64,
    start: Option<u64>,
}

impl Mem {
    /// A process run for the stage alone.
    fn of(peak: u64) -> Mem {
        Mem { peak, start: None }
    }
}

/// One measured stage.
struct Row {
    stage: String,
    secs: f64,
    /// Files (or entries, events, operations) the stage handled.
    items: Option<u64>,
    rss: Option<Mem>,
    process: &'static str,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    fn add(
        &mut self,
        stage: impl Into<String>,
        secs: f64,
        items: Option<u64>,
        rss: Option<Mem>,
        process: &'static str,
    ) {
        let r = Row { stage: stage.into(), secs, items, rss, process };
        let rate = r.items.map_or(String::new(), |n| format!(" {:.0}/s", n as f64 / r.secs.max(1e-9)));
        let mem = r.rss.map_or(String::new(), |m| format!(" {:.1} MiB", m.peak as f64 / 1024.0));
        eprintln!("scale: {} {:.3}s{rate}{mem} ({})", r.stage, r.secs, r.process);
        self.rows.push(r);
    }

    fn note(&mut self, n: String) {
        eprintln!("scale: note: {n}");
        self.notes.push(n);
    }

    fn table(&self, p: &Params) -> String {
        let mut s = format!(
            "scale: {} files in {} dirs of {PER_DIR}, a directory of {} entries\n\n",
            p.files,
            p.dirs(),
            p.bigdir
        );
        s.push_str("| stage | seconds | files/s | peak RSS MiB | RSS at start MiB | process | 256 MiB goal |\n");
        s.push_str("|---|---:|---:|---:|---:|---|---|\n");
        for r in &self.rows {
            let rate = r.items.map_or("".into(), |n| format!("{:.0}", n as f64 / r.secs.max(1e-9)));
            let (mem, start, goal) = match r.rss {
                Some(m) => {
                    let mib = m.peak as f64 / 1024.0;
                    let start = m.start.map_or("".into(), |k| format!("{:.1}", k as f64 / 1024.0));
                    (format!("{mib:.1}"), start, if mib > GOAL_MIB { "over" } else { "ok" })
                }
                None => ("".into(), "".into(), ""),
            };
            s.push_str(&format!(
                "| {} | {:.3} | {rate} | {mem} | {start} | {} | {goal} |\n",
                r.stage, r.secs, r.process
            ));
        }
        for n in &self.notes {
            s.push_str(&format!("\n- {n}"));
        }
        s
    }
}

/// What a `syncer` command run as its own process did.
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    secs: f64,
    /// `ru_maxrss` from `wait4`, KiB.
    maxrss_kib: u64,
    stdout_lines: u64,
}

/// Runs `syncer ARGS`, its output to files in `scratch`, reaped with
/// `wait4` to get its peak memory. Keeps at most 64 KiB of stdout in
/// memory (`log inspect` prints millions of lines) but counts its lines.
fn run_measured<S: AsRef<OsStr>>(scratch: &Path, args: &[S]) -> Ran {
    let out_path = scratch.join("cmd.stdout");
    let err_path = scratch.join("cmd.stderr");
    let out = File::create(&out_path).expect("create stdout file");
    let err = File::create(&err_path).expect("create stderr file");
    let t = Instant::now();
    let child =
        Command::new(BIN).args(args).stdin(Stdio::null()).stdout(out).stderr(err).spawn().expect("spawn syncer");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value of a plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet reaped (std reaps only in
    // `wait`, which is never called); the pointers are to live locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    let secs = t.elapsed().as_secs_f64();
    drop(child);
    let mut stdout = String::new();
    let mut stdout_lines = 0;
    let f = BufReader::new(File::open(&out_path).expect("open stdout file"));
    for line in f.split(b'\n') {
        let line = line.expect("read stdout file");
        stdout_lines += 1;
        if stdout.len() < 64 << 10 {
            stdout.push_str(&String::from_utf8_lossy(&line));
            stdout.push('\n');
        }
    }
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    Ran { status: ExitStatus::from_raw(status), stdout, stderr, secs, maxrss_kib: ru.ru_maxrss as u64, stdout_lines }
}

/// As [`run_measured`], and panics with its output unless it succeeds.
fn ok_measured<S: AsRef<OsStr>>(scratch: &Path, args: &[S]) -> Ran {
    let r = run_measured(scratch, args);
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
    assert!(r.status.success(), "syncer {shown:?}: {}{}", r.stdout, r.stderr);
    r
}

// ------------------------------------------------------------- mounts

/// The `/proc/mounts` entry at `mnt` exists.
fn is_mounted(mnt: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    let want = mnt.as_os_str().as_bytes();
    text.lines().any(|l| l.split(' ').nth(1).is_some_and(|m| m.as_bytes() == want))
}

/// The pid of the daemon serving `mnt`: the process whose command line is
/// `syncer mount DATA MNT --foreground ...` (what `syncer mount` spawns).
fn daemon_pid(mnt: &Path) -> u32 {
    let want = mnt.as_os_str().as_bytes();
    for e in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args.len() > 4
            && args[1] == b"mount"
            && args[3] == want
            && args.contains(&&b"--foreground"[..])
            && Path::new(OsStr::from_bytes(args[0])).file_name() == Some(OsStr::new("syncer"))
        {
            return pid;
        }
    }
    panic!("no syncer daemon serves {}", mnt.display());
}

/// CPU time (user + system, clock ticks) process `pid` has used.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_else(|e| panic!("stat of {pid}: {e}"));
    // The command name (field 2) may hold spaces; fields after it are plain.
    let rest = &s[s.rfind(')').unwrap_or_else(|| panic!("bad /proc/{pid}/stat: {s}")) + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    let tick = |i: usize| f.get(i).and_then(|n| n.parse::<u64>().ok()).unwrap_or_else(|| panic!("bad stat: {s}"));
    tick(11) + tick(12)
}

/// Resident memory (`VmRSS`) of process `pid` now, in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| panic!("status of {pid}: {e}"));
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or_else(|| panic!("no VmRSS for {pid}"));
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("bad VmRSS line {line:?}"))
}

/// A mount made by `syncer mount`; detached lazily on drop if still there.
struct Mount {
    mnt: PathBuf,
    pid: u32,
    /// Resident memory at the last [`Mount::reset`], KiB.
    start: std::cell::Cell<Option<u64>>,
}

impl Mount {
    /// `syncer mount DATA MNT [--at WHEN]`: the mount and how long the
    /// command took (it returns once the filesystem is mounted).
    fn new(scratch: &Path, data: &Path, mnt: &Path, at: Option<&str>) -> (Mount, f64) {
        let mut args = vec![OsStr::new("mount"), data.as_os_str(), mnt.as_os_str()];
        if let Some(at) = at {
            args.extend([OsStr::new("--at"), OsStr::new(at)]);
        }
        let r = ok_measured(scratch, &args);
        assert!(is_mounted(mnt), "{} not mounted after `syncer mount` returned", mnt.display());
        (Mount { mnt: mnt.to_path_buf(), pid: daemon_pid(mnt), start: Default::default() }, r.secs)
    }

    /// Peak resident memory since the last reset, KiB.
    fn peak(&self) -> u64 {
        vm_hwm_kib(self.pid)
    }

    /// The peak since the last reset and the memory held then.
    fn mem(&self) -> Mem {
        Mem { peak: self.peak(), start: self.start.get() }
    }

    /// Waits until the mount has been idle (under 5% of a core) for a
    /// second, at most 10 minutes: the work a stage left behind
    /// (compressing the blocks a burst stored raw, index commits) is then
    /// not counted in the next stage. Returns the seconds waited.
    fn settle(&self) -> f64 {
        let t = Instant::now();
        let mut last = cpu_ticks(self.pid);
        let mut quiet = 0;
        while quiet < 4 && t.elapsed().as_secs() < 600 {
            std::thread::sleep(std::time::Duration::from_millis(250));
            let now = cpu_ticks(self.pid);
            // 250 ms is 25 ticks at the usual 100 Hz; 1 tick is 4%.
            quiet = if now - last <= 1 { quiet + 1 } else { 0 };
            last = now;
        }
        t.elapsed().as_secs_f64()
    }

    /// Starts a stage: the peak is reset to the memory held now.
    fn reset(&self) {
        self.start.set(Some(vm_rss_kib(self.pid)));
        reset_peak(self.pid);
    }

    /// `syncer unmount MNT`: seconds (it returns once the daemon committed
    /// and exited).
    fn unmount(self, scratch: &Path) -> f64 {
        let r = ok_measured(scratch, &[OsStr::new("unmount"), self.mnt.as_os_str()]);
        assert!(!is_mounted(&self.mnt), "still mounted after `syncer unmount`");
        r.secs
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.mnt).status();
        }
    }
}

// ------------------------------------------------------------- the work

/// Writes the files `0..n` under `root` with `threads` writers, each its
/// own directories.
fn write_files(root: &Path, n: usize) {
    let dirs = n.div_ceil(PER_DIR);
    for d in 0..dirs {
        std::fs::create_dir(root.join(format!("d{d:04}"))).expect("mkdir");
    }
    let threads = 4;
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for d in (t..dirs).step_by(threads) {
                    for i in d * PER_DIR..((d + 1) * PER_DIR).min(n) {
                        std::fs::write(root.join(rel(i)), content(i)).expect("write a file");
                    }
                }
            });
        }
    });
}

/// Every file of `sample` under `root` has its content (4 readers).
/// Returns how many were read.
fn read_back(root: &Path, sample: &[usize], view: &str) -> u64 {
    let readers = 4;
    std::thread::scope(|s| {
        for t in 0..readers {
            s.spawn(move || {
                for &i in sample.iter().skip(t).step_by(readers) {
                    let got =
                        std::fs::read(root.join(rel(i))).unwrap_or_else(|e| panic!("{view}: read {:?}: {e}", rel(i)));
                    assert!(
                        got == content(i),
                        "{view}: {:?} has {} bytes, not its {} bytes of content",
                        rel(i),
                        got.len(),
                        content(i).len()
                    );
                }
            });
        }
    });
    sample.len() as u64
}

/// `ls -lR`: every entry under `root` listed and stat'ed, each file's size
/// checked. Returns (files, dirs).
fn walk(root: &Path) -> (u64, u64) {
    let (mut files, mut dirs) = (0, 0);
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("readdir {}: {e}", d.display())) {
            let p = e.expect("dir entry").path();
            let m = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
            if m.is_dir() {
                dirs += 1;
                todo.push(p);
            } else {
                files += 1;
                let name = p.file_name().and_then(OsStr::to_str).unwrap_or_default();
                let want = match name.strip_prefix('f').and_then(|n| n.parse::<usize>().ok()) {
                    Some(i) => content(i).len() as u64,
                    None => 0,
                };
                assert_eq!(m.len(), want, "size of {}", p.display());
            }
        }
    }
    (files, dirs)
}

/// The names of the big directory, each exactly once and no other.
fn check_big_listing(root: &Path, p: &Params, view: &str) {
    let mut seen = HashSet::with_capacity(p.bigdir);
    for e in std::fs::read_dir(root.join(BIG)).expect("readdir big") {
        let name = e.expect("dir entry").file_name().into_string().expect("utf-8 name");
        let j = name.strip_prefix('e').and_then(|n| n.parse::<usize>().ok());
        assert!(j.is_some_and(|j| j < p.bigdir && name == big_name(j)), "{view}: stray name {name:?} in /{BIG}");
        assert!(seen.insert(name.clone()), "{view}: {name:?} listed twice in /{BIG}");
    }
    assert_eq!(seen.len(), p.bigdir, "{view}: readdir of /{BIG} lists {} of {} names", seen.len(), p.bigdir);
}

/// `syncer status --json`: the counts of files, dirs (the collection's,
/// the big directory and the root) and nodes are the collection's.
fn check_status(json: &str, p: &Params, view: &str) {
    let v: serde_json::Value =
        serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{view}: status json {e}: {json}"));
    let count = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{view}: no {k} in {json}"));
    let (files, dirs) = ((p.files + p.bigdir) as u64, p.dirs() as u64 + 2);
    assert_eq!(count("files"), files, "{view}: status counts files: {json}");
    assert_eq!(count("dirs"), dirs, "{view}: status counts dirs: {json}");
    assert_eq!(count("nodes"), files + dirs, "{view}: status counts nodes: {json}");
}

fn set_config(data: &Path, key: &str, value: &str) {
    let path = data.join("config.toml");
    let text = std::fs::read_to_string(&path).expect("read config.toml");
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.split('=').next().is_none_or(|k| k.trim() != key && k.trim() != format!("# {key}")))
        .map(str::to_string)
        .collect();
    lines.push(format!("{key} = {value}"));
    std::fs::write(&path, lines.join("\n") + "\n").expect("write config.toml");
}

/// The big directory: entries created in ten slices; after each slice,
/// lookups of names that are not there (the kernel does not cache a miss,
/// so each reaches the mount) at that size. Creates go through the
/// kernel's create, lookups through lookup.
fn big_dir(root: &Path, m: &Mount, p: &Params, rep: &mut Report) {
    let dir = root.join(BIG);
    std::fs::create_dir(&dir).expect("mkdir big");
    let slices = 10.min(p.bigdir.max(1));
    let probes = 1000;
    m.reset();
    let t_all = Instant::now();
    let mut made = 0;
    for s in 0..slices {
        let end = p.bigdir * (s + 1) / slices;
        let t = Instant::now();
        for j in made..end {
            File::create(dir.join(big_name(j))).expect("create in big dir");
        }
        let secs = t.elapsed().as_secs_f64();
        let n = (end - made) as u64;
        made = end;
        let t = Instant::now();
        for k in 0..probes {
            let miss = dir.join(format!("absent{s}-{k}"));
            assert!(std::fs::symlink_metadata(&miss).is_err(), "{} exists", miss.display());
        }
        let lsecs = t.elapsed().as_secs_f64();
        if s == 0 || s + 1 == slices {
            let which = if s == 0 { "first" } else { "last" };
            rep.add(format!("big dir: create, {which} 10% (to {end})"), secs, Some(n), Some(m.mem()), "mount");
            rep.add(format!("big dir: lookup (miss) at {end} entries"), lsecs, Some(probes), Some(m.mem()), "mount");
        }
    }
    rep.add(
        format!("big dir: create {} entries in all", p.bigdir),
        t_all.elapsed().as_secs_f64(),
        Some(p.bigdir as u64),
        Some(m.mem()),
        "mount",
    );
}

/// Cold stats of the big directory (a fresh mount: the kernel has none of
/// its names), first and last 10% of the names, then its readdir.
fn big_dir_cold(root: &Path, m: &Mount, p: &Params, rep: &mut Report) {
    let dir = root.join(BIG);
    let tenth = (p.bigdir / 10).max(1).min(p.bigdir);
    m.reset();
    for (which, range) in [("first", 0..tenth), ("last", p.bigdir - tenth..p.bigdir)] {
        let t = Instant::now();
        for j in range.clone() {
            let md = std::fs::symlink_metadata(dir.join(big_name(j))).expect("stat in big dir");
            assert!(md.is_file() && md.len() == 0);
        }
        rep.add(
            format!("big dir: lookup+stat, {which} 10% of names (cold)"),
            t.elapsed().as_secs_f64(),
            Some(range.len() as u64),
            Some(m.mem()),
            "mount",
        );
    }
    m.reset();
    let t = Instant::now();
    check_big_listing(root, p, "live");
    rep.add(
        format!("big dir: readdir of {} entries", p.bigdir),
        t.elapsed().as_secs_f64(),
        Some(p.bigdir as u64),
        Some(m.mem()),
        "mount",
    );
}

/// Every stage, in order. Asserts correctness only; returns the report.
fn run(p: Params) -> Report {
    support::require_fuse();
    let base = std::env::var_os("SCALE_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(&base).expect("tempdir");
    let scratch = tmp.path().to_path_buf();
    let data = scratch.join("data");
    let mnt = scratch.join("mnt");
    let at_mnt = scratch.join("at");
    let remote = scratch.join("remote");
    let peer = scratch.join("peer");
    let peer_mnt = scratch.join("peer-mnt");
    for d in [&mnt, &at_mnt, &remote, &peer_mnt] {
        std::fs::create_dir(d).expect("mkdir");
    }
    let sample = p.spread(p.verify);
    let fetched = p.spread(p.fetch);
    let total_files = (p.files + p.bigdir) as u64;
    let mut rep = Report::default();
    rep.note(format!(
        "the live mount and `--at` read back {} of the {} small files, 4 readers; after eviction and on the peer, \
         where each read fetches from the remote, {} (every walk checks every size)",
        sample.len(),
        p.files,
        fetched.len()
    ));

    ok_measured(&scratch, &[OsStr::new("init"), data.as_os_str()]);
    set_config(&data, "small_block", "0");

    // Writing the collection through the live mount.
    let (m, secs) = Mount::new(&scratch, &data, &mnt, None);
    rep.add("mount (empty data dir)", secs, None, Some(m.mem()), "mount");
    m.reset();
    let t = Instant::now();
    write_files(&mnt, p.files);
    rep.add(
        format!("write {} files (4 writers)", p.files),
        t.elapsed().as_secs_f64(),
        Some(p.files as u64),
        Some(m.mem()),
        "mount",
    );
    m.reset();
    let secs = m.settle();
    rep.add("after writing: until the mount is idle", secs, None, Some(m.mem()), "mount");
    big_dir(&mnt, &m, &p, &mut rep);
    m.reset();
    let secs = m.settle();
    rep.add("after the big directory: until idle", secs, None, Some(m.mem()), "mount");
    let secs = m.unmount(&scratch);
    rep.add("unmount (commit)", secs, None, None, "cli");

    // A fresh mount: its cost, then walks and reads.
    let (m, secs) = Mount::new(&scratch, &data, &mnt, None);
    rep.add("mount (fresh, full data dir)", secs, None, Some(m.mem()), "mount");
    big_dir_cold(&mnt, &m, &p, &mut rep);
    m.reset();
    let t = Instant::now();
    let (files, dirs) = walk(&mnt);
    rep.add(
        "ls -lR (readdir + stat of every entry)",
        t.elapsed().as_secs_f64(),
        Some(files + dirs),
        Some(m.mem()),
        "mount",
    );
    assert_eq!((files, dirs), (total_files, p.dirs() as u64 + 1), "ls -lR of the live mount");
    m.reset();
    let t = Instant::now();
    let n = read_back(&mnt, &sample, "live mount after remount");
    rep.add("read back (live, after remount)", t.elapsed().as_secs_f64(), Some(n), Some(m.mem()), "mount");
    if m.peak() as f64 / 1024.0 > GOAL_MIB {
        rep.note(format!("live mount after walk and reads: {}", rollup(m.pid)));
    }

    m.reset();
    let r = ok_measured(&scratch, &[OsStr::new("status"), data.as_os_str(), OsStr::new("--json")]);
    check_status(&r.stdout, &p, "status (mounted)");
    rep.add("status (run by the mount)", r.secs, None, Some(m.mem()), "mount");
    rep.add("status (the CLI process)", r.secs, None, Some(Mem::of(r.maxrss_kib)), "cli");

    // A point-in-time view beside the live mount.
    let t = Instant::now();
    let (at, secs) = Mount::new(&scratch, &data, &at_mnt, Some("now"));
    let first = std::fs::read_dir(&at_mnt).expect("readdir --at root").count();
    let open_ls = t.elapsed().as_secs_f64();
    assert_eq!(first, p.dirs() + 1, "--at root lists every directory");
    rep.add(format!("--at now: mount ({secs:.3}s) + first ls"), open_ls, None, Some(at.mem()), "at-mount");
    at.reset();
    let t = Instant::now();
    let (files, dirs) = walk(&at_mnt);
    rep.add("--at: ls -lR", t.elapsed().as_secs_f64(), Some(files + dirs), Some(at.mem()), "at-mount");
    assert_eq!((files, dirs), (total_files, p.dirs() as u64 + 1), "ls -lR of the --at mount");
    at.reset();
    let t = Instant::now();
    let n = read_back(&at_mnt, &sample, "--at now");
    rep.add("--at: read back", t.elapsed().as_secs_f64(), Some(n), Some(at.mem()), "at-mount");
    check_big_listing(&at_mnt, &p, "--at now");
    if at.peak() as f64 / 1024.0 > GOAL_MIB {
        rep.note(format!("--at mount after walk and reads: {}", rollup(at.pid)));
    }
    at.unmount(&scratch);

    // The log, read by commands.
    m.reset();
    let r = ok_measured(&scratch, &[OsStr::new("log"), OsStr::new("verify"), data.as_os_str()]);
    assert!(!r.stdout.contains("DAMAGE"), "log verify: {}", r.stdout);
    rep.add("log verify (run by the mount)", r.secs, Some(total_files), Some(m.mem()), "mount");
    let r = ok_measured(&scratch, &[OsStr::new("log"), OsStr::new("inspect"), data.as_os_str()]);
    assert!(r.stdout_lines >= total_files, "log inspect printed {} lines for {total_files} files", r.stdout_lines);
    rep.add(
        format!("log inspect ({} lines)", r.stdout_lines),
        r.secs,
        Some(r.stdout_lines),
        Some(Mem::of(r.maxrss_kib)),
        "cli",
    );
    let one = format!("/{}", rel(p.files / 2).display());
    let r = ok_measured(&scratch, &[OsStr::new("history"), data.as_os_str(), OsStr::new(&one)]);
    assert!(r.stdout.lines().count() >= 2, "history of {one}: {}", r.stdout);
    rep.add("history <a file>", r.secs, None, Some(Mem::of(r.maxrss_kib)), "cli");
    let r = ok_measured(&scratch, &[OsStr::new("history"), data.as_os_str(), OsStr::new("/big")]);
    rep.add(format!("history /{BIG} ({} lines)", r.stdout_lines), r.secs, None, Some(Mem::of(r.maxrss_kib)), "cli");

    // The push: a remote added, `syncer sync` unmounted.
    let secs = m.unmount(&scratch);
    rep.add("unmount (after reads)", secs, None, None, "cli");
    set_config(&data, "remote", &format!("{:?}", remote.display().to_string()));
    support::offline(&data);
    let r = ok_measured(&scratch, &[OsStr::new("sync"), data.as_os_str()]);
    rep.add(
        "push: sync to an empty remote (own process)",
        r.secs,
        Some(total_files),
        Some(Mem::of(r.maxrss_kib)),
        "cli",
    );

    // Eviction of every block, then reads that fetch them back.
    let (m, secs) = Mount::new(&scratch, &data, &mnt, None);
    rep.add("mount (with a remote)", secs, None, Some(m.mem()), "mount");
    m.reset();
    let secs = m.settle();
    rep.add("its start (push, pull, eviction pass): until idle", secs, None, Some(m.mem()), "mount");
    m.reset();
    let r = ok_measured(&scratch, &[OsStr::new("evict"), data.as_os_str(), OsStr::new("--size"), OsStr::new("0")]);
    assert!(r.stdout.contains("evicted"), "evict: {}", r.stdout);
    rep.add("evict --size 0 (run by the mount)", r.secs, Some(p.files as u64), Some(m.mem()), "mount");
    rep.note(format!("evict: {}", r.stdout.trim()));
    m.reset();
    let t = Instant::now();
    let n = read_back(&mnt, &fetched, "after eviction");
    rep.add("read back after eviction (fetched)", t.elapsed().as_secs_f64(), Some(n), Some(m.mem()), "mount");
    m.reset();
    let r = ok_measured(&scratch, &[OsStr::new("evict"), data.as_os_str(), OsStr::new("--size"), OsStr::new("0")]);
    rep.add(format!("evict again ({} blocks fetched back)", fetched.len()), r.secs, None, Some(m.mem()), "mount");
    rep.note(format!("evict again: {}", r.stdout.trim()));
    let one = format!("/{}", rel(0).display());
    m.reset();
    let r = ok_measured(&scratch, &[OsStr::new("pin"), data.as_os_str(), OsStr::new(&one)]);
    rep.add("pin <one evicted file> (run by the mount)", r.secs, None, Some(m.mem()), "mount");
    m.reset();
    let r = ok_measured(&scratch, &[OsStr::new("unpin"), data.as_os_str(), OsStr::new(&one)]);
    rep.add("unpin <that file>", r.secs, None, Some(m.mem()), "mount");
    let r = ok_measured(&scratch, &[OsStr::new("status"), data.as_os_str(), OsStr::new("--json")]);
    check_status(&r.stdout, &p, "status after eviction");

    // A peer: clone (imports every event), mount, read.
    let r = ok_measured(&scratch, &[OsStr::new("clone"), peer.as_os_str(), remote.as_os_str()]);
    rep.add("peer: clone (pull + import of the log)", r.secs, Some(total_files), Some(Mem::of(r.maxrss_kib)), "cli");
    support::offline(&peer);
    let (pm, secs) = Mount::new(&scratch, &peer, &peer_mnt, None);
    rep.add("peer: mount", secs, None, Some(pm.mem()), "peer mount");
    pm.reset();
    let secs = pm.settle();
    rep.add("peer: its start (push, pull, eviction pass): until idle", secs, None, Some(pm.mem()), "peer mount");
    pm.reset();
    let t = Instant::now();
    let n = read_back(&peer_mnt, &fetched, "peer");
    rep.add("peer: read back (fetched)", t.elapsed().as_secs_f64(), Some(n), Some(pm.mem()), "peer mount");
    pm.reset();
    let t = Instant::now();
    let (files, dirs) = walk(&peer_mnt);
    rep.add("peer: ls -lR", t.elapsed().as_secs_f64(), Some(files + dirs), Some(pm.mem()), "peer mount");
    assert_eq!((files, dirs), (total_files, p.dirs() as u64 + 1), "ls -lR of the peer");
    check_big_listing(&peer_mnt, &p, "peer");
    let r = ok_measured(&scratch, &[OsStr::new("status"), peer.as_os_str(), OsStr::new("--json")]);
    check_status(&r.stdout, &p, "peer status");
    pm.unmount(&scratch);
    m.unmount(&scratch);
    if std::env::var_os("SCALE_KEEP").is_some_and(|v| v == "1") {
        let kept = tmp.keep();
        rep.note(format!("kept the data dirs and the remote in {}", kept.display()));
    }
    rep
}

/// The CI twin: every stage at a small size; only correctness is asserted.
#[test]
fn scale_small() {
    let t = Instant::now();
    let p = Params { files: 2000, bigdir: 3000, verify: 0, fetch: 300 };
    let rep = run(p);
    eprintln!("{}", rep.table(&p));
    eprintln!("scale_small took {:?}", t.elapsed());
}

/// The benchmark (see the module docs): `SCALE_FILES=100000 cargo test
/// --release --test scale -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: SCALE_FILES=100000 cargo test --release --test scale -- --ignored --nocapture"]
fn scale() {
    let p = Params::from_env();
    let t = Instant::now();
    let rep = run(p);
    println!("{}", rep.table(&p));
    println!("total {:.0} s", t.elapsed().as_secs_f64());
}
