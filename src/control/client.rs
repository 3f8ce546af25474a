//! The CLI's side of the control socket: finds out whether a mount serves
//! the data dir, sends one request, and replays the answer on the terminal.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{Output, Reply, ReplyLine, Request, RequestLine, VERSION};

/// How long the CLI keeps trying a mount that answers "busy".
const BUSY_WAIT: Duration = Duration::from_secs(30);

/// The longest answer line the CLI accepts (a `--json` answer is one line).
const MAX_REPLY_LINE: u64 = 256 << 20;

/// A connection to the mount serving `data_dir`, or `None` when no mount
/// serves it (no socket, or a stale one nobody listens on): the command
/// then runs in this process.
pub fn connect(data_dir: &Path) -> Result<Option<UnixStream>> {
    let path = super::server::socket_path(data_dir);
    match UnixStream::connect(&path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "{} is mounted, and its control socket {} refuses you ({e}): only root and the user who mounted it \
             may run commands on it",
            data_dir.display(),
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("connecting to the mount's control socket {}", path.display())),
    }
}

/// Whether a mount serves `data_dir` (for commands that cannot run then).
pub fn is_mounted(data_dir: &Path) -> Result<bool> {
    Ok(connect(data_dir)?.is_some())
}

/// Sends `req` over `stream` and replays the answer on `out`; returns the
/// command's exit code. A "busy" mount is asked again (a new connection)
/// for up to [`BUSY_WAIT`].
pub fn call(data_dir: &Path, mut stream: UnixStream, req: &Request, out: &mut dyn Output) -> Result<u8> {
    let deadline = Instant::now() + BUSY_WAIT;
    let mut pause = Duration::from_millis(20);
    loop {
        match call_once(stream, req, out)? {
            Answer::Exit(code) => return Ok(code),
            Answer::Busy(why) if Instant::now() >= deadline => bail!("{}: {why}", data_dir.display()),
            Answer::Busy(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(500));
                stream = match connect(data_dir)? {
                    Some(s) => s,
                    None => bail!("{}: the mount went away while the command waited for it", data_dir.display()),
                };
            }
        }
    }
}

enum Answer {
    Exit(u8),
    Busy(String),
}

fn call_once(stream: UnixStream, req: &Request, out: &mut dyn Output) -> Result<Answer> {
    let mut line = serde_json::to_vec(&RequestLine { version: VERSION, request: req.clone() })?;
    line.push(b'\n');
    let mut w = &stream;
    // A mount that refuses at once (busy, not allowed) may close before it
    // read the request: its answer is still there to read.
    let sent = w.write_all(&line);
    let mut reader = BufReader::new(&stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut reader).take(MAX_REPLY_LINE).read_until(b'\n', &mut buf).context("reading the mount's answer")?;
        if n == 0 {
            sent.context("sending the request to the mount")?;
            bail!("the mount closed the control connection before the end of its answer (see its mount.log)");
        }
        let reply: ReplyLine = serde_json::from_slice(&buf)
            .with_context(|| format!("an answer line from the mount that is not protocol version {VERSION}"))?;
        match reply.reply {
            Reply::Out(s) => out.out(&s),
            Reply::Err(s) => out.err(&s),
            Reply::Progress(p) => out.progress(&p),
            Reply::End(end) if end.busy => return Ok(Answer::Busy(end.error.unwrap_or_default())),
            Reply::End(end) => {
                if let Some(e) = end.error {
                    bail!("{e}");
                }
                return Ok(Answer::Exit(end.exit));
            }
        }
    }
}
