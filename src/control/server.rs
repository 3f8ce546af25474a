//! The mount's side of the control socket: accepts, checks each peer,
//! reads one bounded request with a deadline, runs it on a thread of a
//! bounded set, streams the answer. See the module docs of `control` for
//! the protocol and what always holds.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::handlers::MountCtx;
use super::{End, Output, Progress, Reply, ReplyLine, RequestLine, MAX_LINE, SOCKET_NAME, SUPPORTED};

/// Commands that run at once; one more client is answered "busy".
pub const MAX_CLIENTS: usize = 16;

/// How long a client has to send its whole request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one write to a client may block (a client that stopped
/// reading); after one such timeout the command goes on without it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long stopping waits for running commands to end.
const STOP_WAIT: Duration = Duration::from_secs(60);

/// Progress lines at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// A running control server; [`Server::stop`] ends it.
pub struct Server {
    path: PathBuf,
    ino: u64,
    stopping: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    accept: Option<JoinHandle<()>>,
}

/// Who is on the other end of a connection.
#[derive(Clone, Copy, Debug)]
struct Peer {
    pid: i32,
    uid: u32,
}

/// The peer's credentials as the kernel recorded them at `connect`.
fn peer(stream: &UnixStream) -> std::io::Result<Peer> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid socket fd, and a buffer of `len` bytes for the option.
    let rc = unsafe {
        libc::getsockopt(stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &raw mut len)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Peer { pid: cred.pid, uid: cred.uid })
}

fn log(line: &str) {
    crate::daemon_log::line(&format!("syncer: control: {line}"));
}

/// Writes one answer line; `false` once the client is gone or too slow.
fn send(stream: &mut UnixStream, reply: Reply) -> bool {
    stream.write_all(&ReplyLine::encode(reply)).is_ok()
}

fn end_error(stream: &mut UnixStream, error: String, busy: bool) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    send(stream, Reply::End(End { exit: 1, error: Some(error), busy }));
}

impl Server {
    /// Serves `ctx` on `<data>/control.sock` (replacing a stale one).
    pub fn start(ctx: Arc<MountCtx>) -> Result<Server> {
        let path = ctx.data_dir.join(SOCKET_NAME);
        // Whoever made it is gone: this process holds the writer lock, and
        // only a read-write mount (the lock's holder) serves the socket.
        match std::fs::remove_file(&path) {
            Ok(()) => log(&format!("replaced a stale {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("remove stale {}", path.display())),
        }
        let listener = UnixListener::bind(&path).with_context(|| format!("bind {}", path.display()))?;
        // Peers are checked one by one as well (SO_PEERCRED): the mode is
        // the first gate, not the only one.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
        let ino = std::fs::metadata(&path).with_context(|| format!("stat {}", path.display()))?.ino();
        let stopping = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        // SAFETY: geteuid has no preconditions.
        let owner = unsafe { libc::geteuid() };
        let accept = {
            let (stopping, active) = (stopping.clone(), active.clone());
            std::thread::Builder::new()
                .name("syncer-control".into())
                .spawn(move || accept_loop(&listener, &ctx, owner, &stopping, &active))
                .context("starting the control socket thread")?
        };
        Ok(Server { path, ino, stopping, active, accept: Some(accept) })
    }

    /// Stops accepting, removes the socket, and waits (a while) for the
    /// commands still running.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(accept) = self.accept.take() else { return };
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept call; it then sees `stopping`.
        let _ = UnixStream::connect(&self.path);
        let _ = accept.join();
        // Only our own socket: never one a later mount made.
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
        let deadline = Instant::now() + STOP_WAIT;
        while self.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Gives back a slot of [`MAX_CLIENTS`] when a connection thread ends,
/// however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(
    listener: &UnixListener,
    ctx: &Arc<MountCtx>,
    owner: u32,
    stopping: &AtomicBool,
    active: &Arc<AtomicUsize>,
) {
    for conn in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, most likely: wait for some to close.
                log(&format!("accept: {e}"));
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        match peer(&stream) {
            Ok(p) if p.uid == 0 || p.uid == owner => {}
            Ok(p) => {
                log(&format!(
                    "refused uid {} (process {}): only root and uid {owner} may use this mount",
                    p.uid, p.pid
                ));
                end_error(
                    &mut stream,
                    format!("permission denied: uid {} may not control this mount (only root and uid {owner})", p.uid),
                    false,
                );
                continue;
            }
            Err(e) => {
                log(&format!("refused a peer whose credentials cannot be read: {e}"));
                end_error(&mut stream, format!("permission denied: credentials unreadable: {e}"), false);
                continue;
            }
        }
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            let slot = Slot(active.clone());
            end_error(
                &mut stream,
                format!("busy: the mount already runs {MAX_CLIENTS} commands; try again shortly"),
                true,
            );
            drop(slot);
            continue;
        }
        let slot = Slot(active.clone());
        let ctx = ctx.clone();
        let spawned = std::thread::Builder::new().name("syncer-control-conn".into()).spawn(move || {
            let _slot = slot;
            serve(stream, &ctx);
        });
        if let Err(e) = spawned {
            log(&format!("cannot start a connection thread: {e}"));
        }
    }
}

/// Why a request line could not be read.
enum ReadError {
    /// The client closed before sending anything: not worth a log line.
    Empty,
    /// Anything else, as the client is told.
    Bad(String),
}

/// Reads one request line: at most [`MAX_LINE`] bytes, within
/// [`REQUEST_TIMEOUT`] in all. Bytes after the newline are ignored.
fn read_request(stream: &mut UnixStream) -> Result<Vec<u8>, ReadError> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Bad(format!("no whole request line within {REQUEST_TIMEOUT:?}")));
        }
        if stream.set_read_timeout(Some(left)).is_err() {
            return Err(ReadError::Bad("cannot set a read timeout".into()));
        }
        // Never more than one byte past the limit is read.
        let room = (MAX_LINE + 1 - buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) if buf.is_empty() => return Err(ReadError::Empty),
            Ok(0) => {
                return Err(ReadError::Bad(format!("the request ended after {} bytes without a newline", buf.len())))
            }
            Ok(n) => {
                let start = buf.len();
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf[start..].iter().position(|&b| b == b'\n') {
                    if start + i + 1 > MAX_LINE {
                        return Err(ReadError::Bad(format!("request line longer than {MAX_LINE} bytes: refused")));
                    }
                    buf.truncate(start + i);
                    return Ok(buf);
                }
                if buf.len() >= MAX_LINE {
                    return Err(ReadError::Bad(format!("request line longer than {MAX_LINE} bytes: refused")));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(ReadError::Bad(format!("no whole request line within {REQUEST_TIMEOUT:?}")));
            }
            Err(e) => return Err(ReadError::Bad(format!("reading the request: {e}"))),
        }
    }
}

/// The request in `line`, or the error the client gets.
pub fn parse_request(line: &[u8]) -> Result<RequestLine, String> {
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("malformed request (not a JSON object): {e}"))?;
    let Some(obj) = value.as_object() else {
        return Err("malformed request: not a JSON object".into());
    };
    let supported = SUPPORTED.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ");
    let version = match obj.get("version") {
        None => return Err(format!("request without a \"version\" (this mount speaks version {supported})")),
        Some(v) => v.as_u64().ok_or_else(|| format!("request version {v} is not a number (supported: {supported})"))?,
    };
    if !SUPPORTED.iter().any(|&s| u64::from(s) == version) {
        return Err(format!("protocol version {version} is not supported by this mount (supported: {supported})"));
    }
    serde_json::from_value(value).map_err(|e| format!("bad request: {e}"))
}

/// Answers one connection.
fn serve(mut stream: UnixStream, ctx: &MountCtx) {
    let line = match read_request(&mut stream) {
        Ok(l) => l,
        Err(ReadError::Empty) => return,
        Err(ReadError::Bad(why)) => {
            log(&why);
            end_error(&mut stream, why, false);
            return;
        }
    };
    let req = match parse_request(&line) {
        Ok(r) => r,
        Err(why) => {
            log(&why);
            end_error(&mut stream, why, false);
            return;
        }
    };
    if stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
        return;
    }
    let mut out = SocketOut { stream, alive: true, last_progress: None };
    let end = match super::handlers::serve(ctx, &req.request, &mut out) {
        Ok(exit) => End { exit, error: None, busy: false },
        Err(e) => End { exit: 1, error: Some(format!("{e:#}")), busy: false },
    };
    if out.alive {
        out.alive = send(&mut out.stream, Reply::End(end));
    }
    if !out.alive {
        log(&format!("a client of {:?} went away before the end of its answer", req.request));
    }
}

/// Output to a client; after the first failed write the rest is dropped.
struct SocketOut {
    stream: UnixStream,
    alive: bool,
    last_progress: Option<Instant>,
}

impl SocketOut {
    fn send(&mut self, r: Reply) {
        if self.alive {
            self.alive = send(&mut self.stream, r);
        }
    }
}

impl Output for SocketOut {
    fn out(&mut self, line: &str) {
        self.send(Reply::Out(line.to_string()));
    }

    fn err(&mut self, line: &str) {
        self.send(Reply::Err(line.to_string()));
    }

    fn progress(&mut self, p: &Progress) {
        let now = Instant::now();
        let last = p.total > 0 && p.done >= p.total;
        if last || self.last_progress.is_none_or(|t| now.duration_since(t) >= PROGRESS_EVERY) {
            self.last_progress = Some(now);
            self.send(Reply::Progress(p.clone()));
        }
    }
}

/// The control socket of `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_line_of(len: usize) -> Result<Vec<u8>, ReadError> {
        let (mut a, mut b) = UnixStream::pair().expect("socketpair");
        let writer = std::thread::spawn(move || {
            let mut line = vec![b'x'; len - 1];
            line.push(b'\n');
            let _ = b.write_all(&line);
        });
        let r = read_request(&mut a);
        drop(a);
        writer.join().expect("writer");
        r
    }

    #[test]
    fn a_request_line_is_at_most_max_line_bytes() {
        assert!(matches!(read_line_of(MAX_LINE), Ok(l) if l.len() == MAX_LINE - 1));
        assert!(matches!(read_line_of(MAX_LINE + 1), Err(ReadError::Bad(e)) if e.contains("longer than")));
        assert!(matches!(read_line_of(MAX_LINE * 4), Err(ReadError::Bad(e)) if e.contains("longer than")));
        assert!(matches!(read_line_of(1), Ok(l) if l.is_empty()));
    }

    #[test]
    fn requests_are_checked() {
        assert!(parse_request(b"garbage").expect_err("not json").contains("malformed"));
        assert!(parse_request(b"[1]").expect_err("array").contains("not a JSON object"));
        let e = parse_request(br#"{"version":9,"request":{"command":"status"}}"#).expect_err("version");
        assert!(e.contains("version 9") && e.contains("supported: 1"), "{e}");
        assert!(parse_request(br#"{"request":{"command":"status"}}"#).expect_err("no version").contains("version"));
        let e = parse_request(br#"{"version":1,"request":{"command":"format_disk"}}"#).expect_err("unknown");
        assert!(e.contains("bad request"), "{e}");
        let ok = parse_request(br#"{"version":1,"request":{"command":"pin","path":"/a"}}"#).expect("good");
        assert_eq!(ok.request, super::super::Request::Pin { path: "/a".into() });
    }
}
