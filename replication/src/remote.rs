//! Where the remote is and how rsync reaches it.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use engine::ids::MachineId;
use engine::replication::parse_segment_name;

use crate::{RemoteError, Result};

/// A remote: a local directory or a directory on a host reached by ssh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remote {
    /// A directory on this machine (or a mounted network share).
    Local(PathBuf),
    /// `[user@]host:path`.
    Ssh {
        /// `[user@]host`.
        host: String,
        /// The directory on the host.
        path: String,
    },
}

impl Remote {
    /// Parses a remote as rsync does: a `:` before the first `/` means
    /// `[user@]host:path`; anything else is a local path.
    pub fn parse(s: &str) -> Result<Remote> {
        let bad = |reason: &str| RemoteError::BadRemote { remote: s.to_string(), reason: reason.to_string() };
        engine::config::check_remote(s).map_err(|reason| bad(&reason))?;
        let colon = s.find(':');
        let slash = s.find('/');
        match colon {
            Some(c) if slash.is_none_or(|sl| c < sl) => {
                let (host, path) = (&s[..c], &s[c + 1..]);
                if host.is_empty() {
                    return Err(bad("no host before `:`"));
                }
                if s[c + 1..].starts_with(':') {
                    return Err(bad("rsync daemon remotes (`host::module`) are not supported; use ssh"));
                }
                let path = if path.is_empty() { ".".to_string() } else { path.trim_end_matches('/').to_string() };
                Ok(Remote::Ssh { host: host.to_string(), path })
            }
            _ => Ok(Remote::Local(PathBuf::from(s))),
        }
    }

    /// The rsync argument for `rel` (a path inside the remote; a trailing
    /// `/` is kept).
    pub fn spec(&self, rel: &str) -> OsString {
        match self {
            Remote::Local(p) => {
                let mut s = p.as_os_str().to_owned();
                if !rel.is_empty() {
                    s.push("/");
                    s.push(rel);
                }
                s
            }
            Remote::Ssh { host, path } => {
                if rel.is_empty() {
                    format!("{host}:{path}").into()
                } else {
                    format!("{host}:{path}/{rel}").into()
                }
            }
        }
    }

    /// Whether rsync needs ssh for it.
    pub fn is_ssh(&self) -> bool {
        matches!(self, Remote::Ssh { .. })
    }
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Remote::Local(p) => write!(f, "{}", p.display()),
            Remote::Ssh { host, path } => write!(f, "{host}:{path}"),
        }
    }
}

/// Runs rsync against one remote: one ssh connection shared by every run
/// (ControlMaster), I/O timeouts, hard deadlines, and a count of runs.
#[derive(Debug)]
pub struct Rsync {
    remote: Remote,
    program: OsString,
    ssh: String,
    control_dir: Option<PathBuf>,
    /// rsync's `--timeout`: the longest stall of a transfer.
    pub io_timeout: Duration,
    /// Hard deadline of a fetch (rsync and ssh are killed past it).
    pub fetch_deadline: Duration,
    invocations: AtomicU64,
    /// The remote's folders were made by this runner.
    pub(crate) layout_ok: std::sync::atomic::AtomicBool,
    /// Set by [`Rsync::cancel`]: running and later runs are killed.
    cancelled: std::sync::atomic::AtomicBool,
}

/// A finished rsync run.
#[derive(Debug)]
pub struct Outcome {
    /// Exit code (None: killed by a signal).
    pub code: Option<i32>,
    /// What rsync printed on stdout (all of it: `--list-only` listings and
    /// `--out-format` lines are read from here).
    pub stdout: String,
    /// What rsync printed on stderr (the end of it).
    pub stderr: String,
}

static CONTROL_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Rsync {
    /// A runner for `remote`, with `$SYNCER_RSYNC` and `$SYNCER_SSH` (or
    /// `rsync` and `ssh`).
    pub fn new(remote: Remote) -> Rsync {
        let program = std::env::var_os("SYNCER_RSYNC").unwrap_or_else(|| "rsync".into());
        let ssh = std::env::var("SYNCER_SSH").unwrap_or_else(|_| "ssh".to_string());
        Self::with_program(remote, program, ssh)
    }

    /// A runner for `remote` with this rsync binary and ssh command (a
    /// shell word list, e.g. `ssh -p 2222 -i key`).
    pub fn with_program(remote: Remote, program: impl Into<OsString>, ssh: impl Into<String>) -> Rsync {
        let (program, ssh) = (program.into(), ssh.into());
        let control_dir = remote.is_ssh().then(|| {
            let n = CONTROL_COUNTER.fetch_add(1, Ordering::Relaxed);
            std::env::temp_dir().join(format!("syncer-ssh-{}-{n}", std::process::id()))
        });
        Rsync {
            remote,
            program,
            ssh,
            control_dir,
            io_timeout: Duration::from_secs(30),
            fetch_deadline: Duration::from_secs(30),
            invocations: AtomicU64::new(0),
            layout_ok: std::sync::atomic::AtomicBool::new(false),
            cancelled: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The remote.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// Kills the running rsync, if any, and refuses later runs (at
    /// shutdown: a hung remote must not hold it up).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// How many times rsync was started.
    pub fn invocations(&self) -> u64 {
        self.invocations.load(Ordering::Relaxed)
    }

    fn ssh_command(&self) -> Option<String> {
        let dir = self.control_dir.as_ref()?;
        let secs = self.io_timeout.as_secs().max(1);
        Some(format!(
            "{} -o BatchMode=yes -o ConnectTimeout={secs} -o ServerAliveInterval={secs} -o ControlMaster=auto \
             -o ControlPath={}/%C -o ControlPersist=60",
            self.ssh,
            dir.display()
        ))
    }

    /// Runs rsync with `args` (after the common options); kills it after
    /// `deadline` if given. A non-zero exit is returned, not an error.
    pub fn run(&self, what: &str, args: &[OsString], deadline: Option<Duration>) -> Result<Outcome> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(RemoteError::Timeout {
                remote: self.remote.to_string(),
                what: format!("{what} (shutting down)"),
                secs: 0,
            });
        }
        let mut cmd = Command::new(&self.program);
        cmd.arg(format!("--timeout={}", self.io_timeout.as_secs().max(1)));
        if let Some(ssh) = self.ssh_command() {
            if let Some(dir) = &self.control_dir {
                std::fs::create_dir_all(dir).map_err(RemoteError::io("create", dir))?;
            }
            cmd.arg("-e").arg(ssh);
        }
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // Own process group: a kill at the deadline takes ssh along.
        cmd.process_group(0);
        self.invocations.fetch_add(1, Ordering::Relaxed);
        let mut child = cmd
            .spawn()
            .map_err(|source| RemoteError::Spawn { program: self.program.to_string_lossy().into_owned(), source })?;
        // Both pipes are drained while rsync runs, so a full pipe never
        // blocks it.
        let stdout_reader = drain(child.stdout.take());
        let stderr_reader = drain(child.stderr.take());
        let start = Instant::now();
        let status = loop {
            match child.try_wait().map_err(RemoteError::io("wait for", "rsync"))? {
                Some(s) => break Some(s),
                None if deadline.is_some_and(|d| start.elapsed() > d) || self.cancelled.load(Ordering::Relaxed) => {
                    // SAFETY: kill(2) on our child's process group.
                    unsafe {
                        libc::kill(-(child.id() as i32), libc::SIGKILL);
                    }
                    let _ = child.wait();
                    break None;
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        let stdout = stdout_reader.join().unwrap_or_default();
        let stderr = stderr_reader.join().unwrap_or_default();
        match status {
            None => Err(RemoteError::Timeout {
                remote: self.remote.to_string(),
                what: what.to_string(),
                secs: deadline.map_or(0, |d| d.as_secs()),
            }),
            Some(s) => {
                let tail: String =
                    stderr.trim().chars().rev().take(600).collect::<Vec<_>>().into_iter().rev().collect();
                Ok(Outcome { code: s.code(), stdout, stderr: tail })
            }
        }
    }

    /// [`Rsync::run`] that fails unless rsync exits 0.
    pub fn run_ok(&self, what: &str, args: &[OsString], deadline: Option<Duration>) -> Result<()> {
        self.run_stdout(what, args, deadline).map(drop)
    }

    /// [`Rsync::run_ok`] that returns what rsync printed on stdout.
    pub fn run_stdout(&self, what: &str, args: &[OsString], deadline: Option<Duration>) -> Result<String> {
        let out = self.run(what, args, deadline)?;
        if out.code == Some(0) {
            return Ok(out.stdout);
        }
        Err(self.failed(what, &out))
    }

    /// The error for a failed run.
    pub fn failed(&self, what: &str, out: &Outcome) -> RemoteError {
        RemoteError::Rsync {
            remote: self.remote.to_string(),
            what: what.to_string(),
            status: out.code.map_or("a signal".to_string(), |c| format!("code {c}")),
            stderr: out.stderr.clone(),
        }
    }

    /// Makes sure the remote's folders exist (rsync creates only the last
    /// component of a destination).
    pub fn ensure_layout(&self, staging: &Path, machine: engine::ids::MachineId) -> Result<()> {
        let skel = staging.join("skel");
        let mdir = skel.join("log").join(machine.to_string());
        std::fs::create_dir_all(&mdir).map_err(RemoteError::io("create", &mdir))?;
        let blobs = skel.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(RemoteError::io("create", &blobs))?;
        let mut src = skel.into_os_string();
        src.push("/");
        let args = vec!["-r".into(), "--mkpath".into(), src, self.remote.spec("")];
        self.run_ok("creating the remote's folders", &args, None)
    }
}

/// Reads `pipe` to its end in a thread (lossily: rsync prints file names,
/// which need not be UTF-8).
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

impl Drop for Rsync {
    fn drop(&mut self) {
        if let Some(dir) = &self.control_dir {
            if dir.exists() {
                // Ends the shared ssh connection, if one was opened.
                if let Remote::Ssh { host, .. } = &self.remote {
                    let _ = Command::new("sh")
                        .arg("-c")
                        .arg(format!("{} -o ControlPath={}/%C -O exit {host} 2>/dev/null", self.ssh, dir.display()))
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// One log segment in an `rsync --list-only` listing of a remote's root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ListedSegment<'a> {
    /// The listing's line that names it.
    pub line: &'a str,
    /// The machine whose log it is (`log/<machine>/`).
    pub machine: MachineId,
    /// Its number.
    pub number: u64,
    /// Its length in bytes.
    pub len: u64,
    /// Whether it is a regular file (the mode starts with `-`).
    pub regular: bool,
}

/// Parses an `rsync --list-only` listing (`<mode> <size> <date> <time>
/// <path>` per line) into the segments `log/<machine>/<number>.seg` it
/// names; other lines (folders, other files) are skipped. Fails with the
/// line and why on a segment whose size is not a number of bytes.
pub(crate) fn parse_segment_listing(text: &str) -> std::result::Result<Vec<ListedSegment<'_>>, (String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [mode, size, _date, _time, path @ ..] = fields.as_slice() else { continue };
        let path = path.join(" ");
        let Some((machine, name)) = path.strip_prefix("log/").and_then(|p| p.split_once('/')) else { continue };
        let (Ok(machine), Ok(number)) = (machine.parse::<MachineId>(), parse_segment_name(std::ffi::OsStr::new(name)))
        else {
            continue;
        };
        let bad = |reason: &str| (line.to_string(), reason.to_string());
        // Older rsyncs group digits even without `--human-readable`.
        let digits: String = size.chars().filter(|c| !matches!(c, ',' | '.')).collect();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("the size is not a number of bytes"));
        }
        let len = digits.parse().map_err(|_| bad("the size is out of range"))?;
        out.push(ListedSegment { line, machine, number, len, regular: mode.starts_with('-') });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_rsync() {
        assert_eq!(Remote::parse("/srv/x").expect("local"), Remote::Local("/srv/x".into()));
        assert_eq!(Remote::parse("./a:b").expect("local"), Remote::Local("./a:b".into()));
        assert_eq!(
            Remote::parse("me@host:/srv/x/").expect("ssh"),
            Remote::Ssh { host: "me@host".into(), path: "/srv/x".into() }
        );
        assert_eq!(Remote::parse("host:").expect("ssh"), Remote::Ssh { host: "host".into(), path: ".".into() });
        assert!(matches!(Remote::parse("-e x"), Err(RemoteError::BadRemote { .. })));
        assert!(matches!(Remote::parse(" "), Err(RemoteError::BadRemote { .. })));
        assert!(matches!(Remote::parse("h:/a\nb"), Err(RemoteError::BadRemote { .. })));
        assert!(matches!(Remote::parse("host::mod"), Err(RemoteError::BadRemote { .. })));
        assert!(matches!(Remote::parse(":x"), Err(RemoteError::BadRemote { .. })));
        assert_eq!(Remote::parse("h:/p").expect("ssh").spec("blobs/"), OsString::from("h:/p/blobs/"));
    }
}
