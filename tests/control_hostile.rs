//! Bad clients of a mount's control socket (raw `UnixStream`s against a
//! data dir mounted by the `syncer` binary): garbage, a 100 MB line, an
//! unknown version, half a request then close, a client that sends
//! nothing, 100 clients at once, and a user who is not allowed. Each gets
//! a clear error or is dropped after a bounded time; the mount keeps
//! serving files and other clients throughout.
//! Needs root, /dev/fuse and fusermount3; fails without them.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::{initialized, pattern};

const BIN: &str = env!("CARGO_BIN_EXE_syncer");

fn run(args: &[&OsStr]) -> Output {
    Command::new(BIN).args(args).stdin(Stdio::null()).output().expect("run syncer")
}

fn ok(args: &[&OsStr]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "syncer {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct Mounted {
    tmp: tempfile::TempDir,
    data: PathBuf,
    mnt: PathBuf,
}

impl Mounted {
    fn new() -> Mounted {
        let (tmp, data, mnt) = initialized(&[]);
        ok(&[OsStr::new("mount"), data.as_os_str(), mnt.as_os_str()]);
        std::fs::write(mnt.join("file"), pattern(7, 200_000)).expect("write");
        Mounted { tmp, data, mnt }
    }

    fn sock(&self) -> PathBuf {
        self.data.join("control.sock")
    }

    /// The mount serves files and answers a well-behaved client.
    fn healthy(&self) {
        assert_eq!(std::fs::read(self.mnt.join("file")).expect("read through the mount"), pattern(7, 200_000));
        let t = Instant::now();
        let out = ok(&[OsStr::new("status"), self.data.as_os_str()]);
        assert!(out.contains("state:        mounted on"), "{out}");
        assert!(t.elapsed() < Duration::from_secs(20), "status took {:?}", t.elapsed());
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new(BIN).arg("unmount").arg(&self.mnt).output();
        drop(support::MountGuard(&self.mnt));
    }
}

/// Every line the server sends until it closes (at most 30 s).
fn answer(s: &UnixStream) -> Vec<serde_json::Value> {
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut out = Vec::new();
    for line in BufReader::new(s).lines() {
        let Ok(line) = line else { break };
        out.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("answer line {line:?}: {e}")));
    }
    out
}

/// The error of the answer's `end` line.
fn end_error(lines: &[serde_json::Value]) -> String {
    let end = lines.last().unwrap_or_else(|| panic!("no answer at all"));
    assert_eq!(end["version"], 1, "{end}");
    assert_eq!(end["end"]["exit"], 1, "{end}");
    end["end"]["error"].as_str().unwrap_or_else(|| panic!("no error in {end}")).to_string()
}

fn send(m: &Mounted, bytes: &[u8]) -> Vec<serde_json::Value> {
    let mut s = UnixStream::connect(m.sock()).expect("connect");
    s.write_all(bytes).expect("send");
    answer(&s)
}

#[test]
fn garbage_unknown_version_oversized_and_half_requests() {
    let m = Mounted::new();
    let mode = std::fs::metadata(m.sock()).expect("stat socket").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the socket is for its owner only");

    let e = end_error(&send(&m, b"\x00\xffnot json at all\n"));
    assert!(e.contains("malformed request"), "{e}");
    let e = end_error(&send(&m, b"[1,2,3]\n"));
    assert!(e.contains("not a JSON object"), "{e}");
    let e = end_error(&send(&m, br#"{"version":99,"request":{"command":"status"}}"#));
    // (no newline: the server waits for it, then gives up; see below)
    assert!(e.contains("within"), "a request without its newline is not run: {e}");
    let e = end_error(&send(&m, b"{\"version\":99,\"request\":{\"command\":\"status\"}}\n"));
    assert!(e.contains("version 99") && e.contains("supported: 1"), "{e}");
    let e = end_error(&send(&m, b"{\"request\":{\"command\":\"status\"}}\n"));
    assert!(e.contains("version"), "{e}");
    let e = end_error(&send(&m, b"{\"version\":1,\"request\":{\"command\":\"rm_rf\"}}\n"));
    assert!(e.contains("bad request"), "{e}");
    let good = send(&m, b"{\"version\":1,\"request\":{\"command\":\"status\",\"json\":true}}\n");
    assert_eq!(good.last().expect("end")["end"]["exit"], 0, "{good:?}");
    let status: serde_json::Value =
        serde_json::from_str(good[0]["out"].as_str().expect("out line")).expect("status json");
    assert_eq!(status["state"], "mounted");
    m.healthy();

    // A 100 MB line: refused once the limit is passed; the rest is never read.
    let s = UnixStream::connect(m.sock()).expect("connect");
    let mut w = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        let mut sent = 0usize;
        for _ in 0..100 {
            match w.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    });
    let e = end_error(&answer(&s));
    assert!(e.contains("longer than 65536 bytes"), "{e}");
    let sent = writer.join().expect("writer");
    assert!(sent < 100 << 20, "the server stopped reading early ({sent} bytes taken)");
    m.healthy();

    // Half a request, then close: nothing runs, nothing is left waiting.
    for cut in [1, 10, 30] {
        let mut s = UnixStream::connect(m.sock()).expect("connect");
        s.write_all(&b"{\"version\":1,\"request\":{\"command\":\"sync\"}}\n"[..cut]).expect("half");
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let e = end_error(&answer(&s));
        assert!(e.contains("without a newline"), "{e}");
        drop(s);
        let s = UnixStream::connect(m.sock()).expect("connect");
        let mut w = &s;
        w.write_all(&b"{\"version\":1,\"request\":{\"command\":\"sync\"}}\n"[..cut]).expect("half");
        drop(s);
    }
    m.healthy();
    let log = std::fs::read_to_string(m.data.join("mount.log")).expect("mount.log");
    assert!(log.contains("longer than 65536"), "refusals are logged: {log}");
}

#[test]
fn silent_and_many_clients_never_wedge_the_mount() {
    let m = Mounted::new();
    // 40 clients that connect and say nothing: they hold connection slots
    // until the request timeout, and no more.
    let idle: Vec<UnixStream> = (0..40).map(|_| UnixStream::connect(m.sock()).expect("connect")).collect();
    std::thread::sleep(Duration::from_millis(300));
    // Files are served meanwhile, and a command waits for a free slot
    // (the CLI asks again while the mount says busy), never forever.
    let t = Instant::now();
    m.healthy();
    let waited = t.elapsed();
    assert!(waited < Duration::from_secs(25), "{waited:?}");
    let busy: Vec<String> = idle
        .iter()
        .filter_map(|s| {
            let lines = answer(s);
            lines.last().map(|l| l["end"]["error"].as_str().unwrap_or("").to_string())
        })
        .collect();
    assert_eq!(busy.len(), 40, "every silent client gets an answer");
    assert!(busy.iter().any(|e| e.starts_with("busy")), "past the bound, clients are told busy: {busy:?}");
    assert!(busy.iter().any(|e| e.contains("no whole request line within")), "{busy:?}");

    // 100 clients at once, each asking for status: each gets its answer
    // or a clear busy, and the mount serves files throughout.
    let sock = m.sock();
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&sock).expect("connect");
                // A mount past its bound answers "busy" at once and may
                // close before the request is written (EPIPE here); the
                // answer is still there to read, as the CLI reads it.
                let _ = s.write_all(b"{\"version\":1,\"request\":{\"command\":\"status\"}}\n");
                answer(&s).last().cloned().expect("an end line")
            })
        })
        .collect();
    assert_eq!(std::fs::read(m.mnt.join("file")).expect("read during the crowd"), pattern(7, 200_000));
    let (mut served, mut busy) = (0, 0);
    for c in clients {
        let end = c.join().expect("client");
        match end["end"]["exit"].as_u64() {
            Some(0) => served += 1,
            _ => {
                assert_eq!(end["end"]["busy"], true, "{end}");
                busy += 1;
            }
        }
    }
    assert_eq!(served + busy, 100);
    assert!(served >= 16, "{served} served, {busy} busy");
    m.healthy();
}

/// A throwaway user, removed on drop.
struct User {
    name: String,
    uid: u32,
    gid: u32,
}

impl User {
    fn new() -> User {
        let name = format!("sy{}", std::process::id());
        let o = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/bin/false", &name])
            .output()
            .expect("useradd");
        assert!(o.status.success(), "useradd: {}", String::from_utf8_lossy(&o.stderr));
        let id = |flag: &str| -> u32 {
            let o = Command::new("id").args([flag, &name]).output().expect("id");
            String::from_utf8_lossy(&o.stdout).trim().parse().expect("numeric id")
        };
        User { uid: id("-u"), gid: id("-g"), name }
    }

    fn syncer(&self, args: &[&OsStr]) -> Output {
        Command::new(BIN).args(args).uid(self.uid).gid(self.gid).stdin(Stdio::null()).output().expect("run as user")
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

fn open_up(p: &Path) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
}

#[test]
fn another_user_is_refused_and_logged() {
    let m = Mounted::new();
    let user = User::new();
    // The user may reach the data dir: only the socket stands in the way.
    open_up(m.tmp.path());
    open_up(&m.data);
    let o = user.syncer(&[OsStr::new("status"), m.data.as_os_str()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("refuses you") && err.contains("only root and the user who mounted"), "{err}");
    // With the socket's mode opened, the credentials check still refuses.
    std::fs::set_permissions(m.sock(), std::fs::Permissions::from_mode(0o666)).expect("chmod socket");
    for args in [["status"], ["sync"]] {
        let o = user.syncer(&[OsStr::new(args[0]), m.data.as_os_str()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(&format!("permission denied: uid {} may not control this mount", user.uid)), "{err}");
    }
    let log = std::fs::read_to_string(m.data.join("mount.log")).expect("mount.log");
    assert!(log.contains(&format!("refused uid {}", user.uid)), "the refusal is logged: {log}");
    m.healthy();
}

/// A socket left by a mount that died (nobody listens on it) makes no
/// command fail: they run in-process; the next mount replaces it.
#[test]
fn a_stale_socket_is_ignored_then_replaced() {
    let (tmp, data, mnt) = initialized(&[]);
    drop(std::os::unix::net::UnixListener::bind(data.join("control.sock")).expect("bind"));
    assert!(data.join("control.sock").exists(), "a stale socket file");
    let out = ok(&[OsStr::new("status"), data.as_os_str()]);
    assert!(out.contains("state:        not mounted"), "{out}");
    ok(&[OsStr::new("mount"), data.as_os_str(), mnt.as_os_str()]);
    let m = Mounted { tmp, data, mnt };
    let log = std::fs::read_to_string(m.data.join("mount.log")).expect("mount.log");
    assert!(log.contains("replaced a stale"), "{log}");
    std::fs::write(m.mnt.join("file"), pattern(7, 200_000)).expect("write");
    m.healthy();
}
