//! Every command that needs the writer, run while the data dir is mounted
//! by the `syncer` binary (real FUSE, a local-directory remote, real
//! rsync): it goes through the mount's control socket and prints what it
//! prints on the unmounted data dir, with the same exit code.
//! Needs root, /dev/fuse, fusermount3 and rsync; fails without them.

use std::ffi::OsStr;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod support;

use support::{pattern, require_fuse};

const BIN: &str = env!("CARGO_BIN_EXE_syncer");

fn run<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(BIN).args(args).stdin(Stdio::null()).output().expect("run syncer")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok<S: AsRef<OsStr>>(args: &[S]) -> String {
    let o = run(args);
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
    assert!(o.status.success(), "syncer {shown:?}: {}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
    stdout(&o)
}

fn os<P: AsRef<OsStr> + ?Sized>(p: &P) -> &OsStr {
    p.as_ref()
}

/// A machine: a data dir and its mountpoint, unmounted on drop.
struct Machine {
    data: PathBuf,
    mnt: PathBuf,
}

impl Machine {
    fn mount(&self) {
        ok(&[os("mount"), os(&self.data), os(&self.mnt)]);
        assert!(self.data.join("control.sock").exists(), "a read-write mount serves its control socket");
    }

    fn unmount(&self) {
        ok(&[os("unmount"), os(&self.mnt)]);
        assert!(!self.data.join("control.sock").exists(), "the socket is removed at unmount");
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// `syncer ARGS...` with the data dir as the first argument after the
    /// command words: its output and exit code.
    fn cmd(&self, words: &[&str], rest: &[&str]) -> Output {
        let mut args: Vec<&OsStr> = words.iter().map(OsStr::new).collect();
        args.push(self.data.as_os_str());
        args.extend(rest.iter().map(OsStr::new));
        run(&args)
    }

    fn ok(&self, words: &[&str], rest: &[&str]) -> String {
        let o = self.cmd(words, rest);
        assert!(o.status.success(), "syncer {words:?} {rest:?}: {}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
        stdout(&o)
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if std::fs::read_to_string("/proc/mounts").unwrap_or_default().contains(&self.mnt.display().to_string()) {
            let _ = Command::new(BIN).arg("unmount").arg(&self.mnt).output();
            drop(support::MountGuard(&self.mnt));
        }
    }
}

/// A temp dir with a remote folder and machine A (64 KiB blocks) made by
/// `init --remote`, not mounted.
fn setup() -> (tempfile::TempDir, Machine) {
    setup_with("64KiB")
}

/// [`setup`] with blocks of `block_size`.
fn setup_with(block_size: &str) -> (tempfile::TempDir, Machine) {
    require_fuse();
    let tmp = tempfile::tempdir().expect("tempdir");
    let remote = tmp.path().join("remote");
    std::fs::create_dir(&remote).expect("mkdir remote");
    let a = Machine { data: tmp.path().join("a"), mnt: tmp.path().join("mnt-a") };
    std::fs::create_dir(&a.mnt).expect("mkdir mnt");
    ok(&[os("init"), os(&a.data), os("--block-size"), os(block_size), os("--remote"), os(&remote)]);
    (tmp, a)
}

/// Lines that say which way a command ran, or change by the second.
fn comparable(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| {
            !(l.starts_with("state:")
                || l.starts_with("remote state:")
                || l.starts_with("last error:")
                || l.starts_with("disk room:"))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn status_verify_conflicts_and_index_rebuild_while_mounted() {
    let (_tmp, a) = setup();
    a.mount();
    std::fs::create_dir(a.p("docs")).expect("mkdir");
    for i in 0..5 {
        std::fs::write(a.p(&format!("docs/f{i}")), pattern(i, 100_000)).expect("write");
    }
    // Nothing left for the daemon to push, so both runs see one state.
    a.ok(&["sync"], &[]);
    let mounted = a.ok(&["status"], &[]);
    assert!(mounted.contains("state:        mounted on"), "{mounted}");
    assert!(mounted.contains("nodes:        7 (5 files, 2 dirs)"), "every count is shown while mounted: {mounted}");
    assert!(mounted.contains("pending:      0 blocks"), "{mounted}");
    let mounted_json: serde_json::Value = serde_json::from_str(&a.ok(&["status"], &["--json"])).expect("status --json");
    assert_eq!(mounted_json["state"], "mounted");
    assert_eq!(mounted_json["files"], 5);
    let verify_mounted = a.ok(&["log", "verify"], &[]);
    let verify_json: serde_json::Value =
        serde_json::from_str(&a.ok(&["log", "verify"], &["--json"])).expect("verify --json");
    assert_eq!(verify_json["clean"], true);
    let conflicts_mounted = a.ok(&["conflicts"], &[]);
    assert_eq!(conflicts_mounted, "no conflicts\n");
    let conflicts_json: serde_json::Value =
        serde_json::from_str(&a.ok(&["conflicts"], &["--json"])).expect("conflicts --json");
    assert_eq!(conflicts_json["open_content"], 0);

    let rebuild = a.cmd(&["index", "rebuild"], &[]);
    assert_eq!(rebuild.status.code(), Some(1));
    let why = String::from_utf8_lossy(&rebuild.stderr);
    assert!(why.contains("is mounted") && why.contains("unmount it first"), "{why}");
    // The mount serves on.
    assert_eq!(std::fs::read(a.p("docs/f3")).expect("read"), pattern(3, 100_000));

    a.unmount();
    let unmounted = a.ok(&["status"], &[]);
    assert!(unmounted.contains("state:        not mounted"), "{unmounted}");
    assert_eq!(comparable(&mounted), comparable(&unmounted), "status, mounted and not");
    let unmounted_json: serde_json::Value =
        serde_json::from_str(&a.ok(&["status"], &["--json"])).expect("status --json");
    for key in ["nodes", "files", "dirs", "events", "logical_bytes", "local_bytes", "pending_blocks", "pins"] {
        assert_eq!(mounted_json[key], unmounted_json[key], "status --json {key}");
    }
    assert_eq!(a.ok(&["log", "verify"], &[]), verify_mounted, "log verify, mounted and not");
    assert_eq!(a.ok(&["conflicts"], &[]), conflicts_mounted);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&a.ok(&["log", "verify"], &["--json"])).expect("json"),
        verify_json
    );
    ok(&[os("index"), os("rebuild"), os(&a.data)]);
}

/// Sync through the mount while a writer keeps writing through it: each
/// sync succeeds, and everything written before the last one reached the
/// remote (a clone made from the remote has it).
#[test]
fn sync_while_writes_continue() {
    let (tmp, a) = setup();
    a.mount();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, written, dir) = (stop.clone(), written.clone(), a.p("w"));
        std::fs::create_dir(&dir).expect("mkdir");
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                std::fs::write(dir.join(format!("f{i}")), pattern(i as u64, 70_000)).expect("write while syncing");
                i += 1;
                written.store(i, Ordering::SeqCst);
            }
        })
    };
    let mut shapes = Vec::new();
    for _ in 0..3 {
        let out = a.ok(&["sync"], &[]);
        assert!(out.starts_with("pushed ") && out.contains("\nimported ") && out.contains("\ncache: "), "{out}");
        shapes.push(out);
        std::thread::sleep(Duration::from_millis(200));
    }
    // On the wire: progress lines streamed from the mount, then the end.
    {
        use std::io::BufRead;
        let mut s = std::os::unix::net::UnixStream::connect(a.data.join("control.sock")).expect("connect");
        s.write_all(b"{\"version\":1,\"request\":{\"command\":\"sync\"}}\n").expect("send");
        let lines: Vec<serde_json::Value> = std::io::BufReader::new(&s)
            .lines()
            .map(|l| serde_json::from_str(&l.expect("line")).expect("a JSON line"))
            .collect();
        assert!(lines.iter().any(|l| l["progress"]["what"].is_string()), "progress is streamed: {lines:?}");
        assert!(lines.iter().any(|l| l["out"].as_str().is_some_and(|o| o.starts_with("pushed "))), "{lines:?}");
        assert_eq!(lines.last().expect("end")["end"]["exit"], 0, "{lines:?}");
    }
    let before_last = written.load(Ordering::SeqCst);
    let summary: serde_json::Value = serde_json::from_str(&a.ok(&["sync"], &["--json"])).expect("sync --json");
    assert!(summary["pushed_blocks"].is_u64() && summary["imported_events"].is_u64(), "{summary}");
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer");
    assert!(before_last > 3, "the writer kept writing during the syncs ({before_last} files)");

    let b = tmp.path().join("b");
    let remote = tmp.path().join("remote");
    ok(&[os("clone"), os(&b), os(&remote)]);
    let cloned: serde_json::Value =
        serde_json::from_str(&ok(&[os("status"), os(&b), os("--json")])).expect("status --json");
    let files = cloned["files"].as_u64().expect("files") as usize;
    assert!(files >= before_last, "{files} files on the remote, {before_last} written before the last sync");
    // Files are written in order: the first and the last before the sync.
    for i in [0, before_last - 1] {
        let rel = format!("/w/f{i}");
        let h = ok(&[os("history"), os(&b), os(&rel), os("--json")]);
        let h: serde_json::Value = serde_json::from_str(&h).expect("history --json");
        assert!(!h["versions"].as_array().expect("versions").is_empty(), "{rel} on the remote: {h}");
    }
    a.unmount();
    // Unmounted, `sync` prints the same lines.
    let out = a.ok(&["sync"], &[]);
    let words = |t: &str| t.lines().map(|l| l.split(' ').next().unwrap_or("").to_string()).collect::<Vec<_>>();
    assert_eq!(words(&out), words(&shapes[0]), "sync, unmounted: {out}\nmounted: {}", shapes[0]);
}

/// Pin a directory of a clone (content on the remote only) through its
/// mount while another process reads from it; unpin; evict to a size.
/// Then the same commands unmounted print the same.
#[test]
fn pin_unpin_evict_while_mounted() {
    // 1 MiB blocks: each file is one block, above the 64 KiB of a small
    // block (those are never evicted).
    let (tmp, a) = setup_with("1MiB");
    a.mount();
    std::fs::create_dir_all(a.p("photos/raw")).expect("mkdir");
    for i in 0..6 {
        std::fs::write(a.p(&format!("photos/raw/p{i}")), pattern(100 + i, 300_000)).expect("write");
    }
    a.ok(&["sync"], &[]);
    a.unmount();
    let b = Machine { data: tmp.path().join("b"), mnt: tmp.path().join("mnt-b") };
    std::fs::create_dir(&b.mnt).expect("mkdir");
    ok(&[os("clone"), os(&b.data), os(&tmp.path().join("remote"))]);
    b.mount();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, dir) = (stop.clone(), b.p("photos/raw"));
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(Ordering::SeqCst) {
                for i in 0..6 {
                    let got = std::fs::read(dir.join(format!("p{i}"))).expect("read during pin");
                    assert_eq!(got, pattern(100 + i, 300_000), "p{i} read during pin");
                    reads += 1;
                }
            }
            reads
        })
    };
    let pinned = b.ok(&["pin"], &["/photos"]);
    assert_eq!(pinned, "pinned /photos (6 files, 6 blocks local)\n");
    let status = b.ok(&["status"], &[]);
    assert!(status.contains("pins:         /photos"), "{status}");
    stop.store(true, Ordering::SeqCst);
    assert!(reader.join().expect("reader") >= 6);
    // Pinned blocks stay: evicting to nothing keeps them.
    let ev = b.ok(&["evict"], &["--size", "0"]);
    assert!(ev.starts_with("evicted 0 blocks") && ev.contains("still over the target"), "{ev}");
    let unpinned = b.ok(&["unpin"], &["/photos"]);
    assert_eq!(unpinned, "unpinned /photos (1 pins removed)\n");
    let ev = b.ok(&["evict"], &["--size", "0"]);
    assert!(ev.starts_with("evicted ") && !ev.starts_with("evicted 0 "), "unpinned blocks go: {ev}");
    let local = |m: &Machine| -> u64 {
        let j: serde_json::Value = serde_json::from_str(&m.ok(&["status"], &["--json"])).expect("status --json");
        j["local_bytes"].as_u64().expect("local_bytes")
    };
    assert!(local(&b) < 300_000, "the store was trimmed: {}", local(&b));
    // Still readable: fetched again on demand.
    assert_eq!(std::fs::read(b.p("photos/raw/p2")).expect("read after evict"), pattern(102, 300_000));
    b.unmount();
    assert_eq!(b.ok(&["pin"], &["/photos"]), pinned, "pin, unmounted");
    assert_eq!(b.ok(&["unpin"], &["/photos"]), unpinned, "unpin, unmounted");
    let ev = b.ok(&["evict"], &["--size", "0"]);
    assert!(ev.starts_with("evicted ") && ev.contains("-> "), "evict, unmounted: {ev}");
}

/// `restore --at` into the live tree of a mounted data dir: a program that
/// holds the file open reads the restored content through the same
/// descriptor at once (the mount drops the kernel's caches).
#[test]
fn restore_in_place_shows_through_an_open_descriptor() {
    let (_tmp, a) = setup();
    a.mount();
    let old = b"the version to come back\n".repeat(100);
    let new = b"a later version, longer than the old one, and different\n".repeat(300);
    std::fs::write(a.p("doc.txt"), &old).expect("write old");
    std::thread::sleep(Duration::from_millis(300));
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    let when = format!("{}.{:09}", at.as_secs(), at.subsec_nanos());
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(a.p("doc.txt"), &new).expect("write new");
    let mut f = std::fs::File::open(a.p("doc.txt")).expect("open");
    let mut seen = Vec::new();
    f.read_to_end(&mut seen).expect("read");
    assert_eq!(seen, new, "the new version, cached by the kernel now");

    let out = a.ok(&["restore"], &["/doc.txt", "--at", &when]);
    assert!(out.contains("into the live tree") && out.contains(&format!("({} bytes;", old.len())), "{out}");
    // Through the descriptor opened before the restore.
    let mut buf = vec![0u8; new.len()];
    let n = f.read_at(&mut buf, 0).expect("pread");
    assert_eq!(&buf[..n], &old[..], "the open descriptor reads the restored content");
    assert_eq!(f.metadata().expect("fstat").len(), old.len() as u64, "and sees its size");
    f.seek(SeekFrom::Start(0)).expect("seek");
    assert_eq!(std::fs::read(a.p("doc.txt")).expect("read by path"), old);
    drop(f);

    // A restore into a file that was removed meanwhile creates it again.
    std::fs::remove_file(a.p("doc.txt")).expect("rm");
    a.ok(&["restore"], &["/doc.txt", "--at", &when]);
    assert_eq!(std::fs::read(a.p("doc.txt")).expect("read recreated"), old);

    let mut w = std::fs::OpenOptions::new().append(true).open(a.p("doc.txt")).expect("open append");
    w.write_all(b"more").expect("append");
    drop(w);
    a.unmount();
    let unmounted = a.ok(&["restore"], &["/doc.txt", "--at", &when]);
    assert_eq!(unmounted, out, "restore, unmounted");
    a.mount();
    assert_eq!(std::fs::read(a.p("doc.txt")).expect("read after remount"), old);
    a.unmount();
}
