//! The control channel of a mounted data dir: how `syncer sync`, `pin`,
//! `status` and the other commands that need the writer reach the mount
//! process, which holds the data dir's writer lock.
//!
//! Always true:
//! - only a read-write mount serves it, at `<data>/control.sock`, mode 0600,
//!   from just after the kernel mount is made until the FUSE session ends
//!   (the file is then removed; one left by a crash is replaced at the next
//!   mount, which holds the writer lock, so nobody else serves it);
//! - every peer's credentials are read with `SO_PEERCRED` when it connects:
//!   only root and the uid the mount runs as may talk; anyone else gets an
//!   error line and is logged in `mount.log`;
//! - a command runs the same code ([`handlers`]) in the mount as it does
//!   in-process on an unmounted data dir; only its output travels, so the
//!   output and the exit code are the same either way (the `state:` line of
//!   `status` says which);
//! - a bad client costs the mount at most one of [`server::MAX_CLIENTS`]
//!   connection threads for at most [`server::REQUEST_TIMEOUT`] (reading
//!   the request) or one [`server::WRITE_TIMEOUT`] (a reader that stopped
//!   reading; the command then finishes without it); it never blocks a
//!   FUSE request, the replication daemon or another client.
//!
//! # Protocol (version 1)
//!
//! JSON lines over a Unix stream socket, UTF-8, each line ending in `\n`.
//! The client sends one request line, of at most [`MAX_LINE`] bytes
//! including the newline:
//!
//! ```text
//! {"version":1,"request":{"command":"status","json":false}}
//! ```
//!
//! `request` is one of ([`Request`]; unknown fields are refused):
//!
//! | `command`   | fields |
//! |-------------|--------|
//! | `status`    | `json`: bool |
//! | `sync`      | `json`: bool (the summary as JSON) |
//! | `pin`       | `path`: string, a path inside the tree |
//! | `unpin`     | `path`: string |
//! | `evict`     | `size`: bytes or null (null: the cache limit) |
//! | `conflicts` | `json`: bool |
//! | `resolve`   | `path`: string; `keep`: `original`, `copy`, `both`, `mine` or `theirs` |
//! | `verify`    | `json`: bool (`syncer log verify`) |
//! | `restore`   | `path`: string; `at`: nanoseconds since the Unix epoch |
//!
//! The server answers with any number of lines, then exactly one `end`
//! line, then closes ([`Reply`]):
//!
//! ```text
//! {"version":1,"out":"a line for standard output"}
//! {"version":1,"err":"a line for standard error"}
//! {"version":1,"progress":{"what":"push","done":3,"total":10}}
//! {"version":1,"end":{"exit":0}}
//! {"version":1,"end":{"exit":1,"error":"what failed and where"}}
//! {"version":1,"end":{"exit":1,"error":"busy: ...","busy":true}}
//! ```
//!
//! `exit` is the command's exit code (see `main.rs`: 0, 1, or 3 for damage
//! found by `verify`). `progress` with `total` 0 is work of unknown size.
//! A request that is not JSON, has no `version`, names a version this mount
//! does not speak (the error lists [`SUPPORTED`]), is not a known request,
//! is longer than [`MAX_LINE`] (refused as soon as that many bytes came
//! without a newline: the rest is never read), or does not arrive whole
//! within [`server::REQUEST_TIMEOUT`] gets an `end` line with exit 1 and
//! the reason. `busy` is set when [`server::MAX_CLIENTS`] commands already
//! run; the CLI then tries again for a while.
//!
//! Version history:
//! - 1: the commands above.
//!
//! A later version adds commands or fields; a mount refuses a version it
//! does not know, naming the ones it does, and the CLI (which is the same
//! binary as the mount) always sends [`VERSION`].

use serde::{Deserialize, Serialize};

pub mod client;
pub mod handlers;
pub mod server;

/// The protocol version this binary sends.
pub const VERSION: u32 = 1;

/// The protocol versions a mount of this binary answers.
pub const SUPPORTED: &[u32] = &[1];

/// The longest request line, newline included.
pub const MAX_LINE: usize = 64 << 10;

/// The socket's file name inside the data dir.
pub const SOCKET_NAME: &str = "control.sock";

/// A command for the mount (see the module docs for the wire form).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// `syncer status`.
    Status {
        /// One JSON object instead of text.
        #[serde(default)]
        json: bool,
    },
    /// `syncer sync`.
    Sync {
        /// The summary as one JSON object.
        #[serde(default)]
        json: bool,
    },
    /// `syncer pin`.
    Pin {
        /// Path inside the tree.
        path: String,
    },
    /// `syncer unpin`.
    Unpin {
        /// Path inside the tree.
        path: String,
    },
    /// `syncer evict`.
    Evict {
        /// Trim the local store to this many bytes (default: the cache limit).
        #[serde(default)]
        size: Option<u64>,
    },
    /// `syncer conflicts`.
    Conflicts {
        /// One JSON object instead of text.
        #[serde(default)]
        json: bool,
    },
    /// `syncer resolve`.
    Resolve {
        /// The conflict copy, or an original with one open copy.
        path: String,
        /// `original`, `copy`, `both`, `mine` or `theirs`.
        keep: String,
    },
    /// `syncer log verify`.
    Verify {
        /// One JSON object instead of text.
        #[serde(default)]
        json: bool,
    },
    /// `syncer restore PATH --at WHEN` into the live tree.
    Restore {
        /// Path inside the tree.
        path: String,
        /// The time to restore, in nanoseconds since the Unix epoch.
        at: i64,
    },
}

/// A request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestLine {
    /// The protocol version.
    pub version: u32,
    /// What to do.
    pub request: Request,
}

/// Progress of a long command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// What is being done (`push`, `log`, `fetch`, `pull`).
    pub what: String,
    /// Done so far.
    pub done: u64,
    /// Of this many (0: unknown).
    pub total: u64,
}

/// The last line of every answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    /// The command's exit code.
    pub exit: u8,
    /// Why it failed, when it did (one line, as the CLI prints it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Refused because the mount runs as many commands as it will at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub busy: bool,
}

/// One line of an answer (besides `version`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// A line for standard output.
    Out(String),
    /// A line for standard error.
    Err(String),
    /// Progress.
    Progress(Progress),
    /// The end.
    End(End),
}

/// An answer line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyLine {
    /// The protocol version.
    pub version: u32,
    /// The line's content.
    #[serde(flatten)]
    pub reply: Reply,
}

impl ReplyLine {
    /// `reply` as a line of the current version, newline included.
    pub fn encode(reply: Reply) -> Vec<u8> {
        let mut v = serde_json::to_vec(&ReplyLine { version: VERSION, reply })
            .unwrap_or_else(|e| format!("{{\"version\":{VERSION},\"end\":{{\"exit\":1,\"error\":\"{e}\"}}}}").into());
        v.push(b'\n');
        v
    }
}

/// Where a command writes: the terminal (in-process) or the socket (in the
/// mount). Writing never fails for the command: a client gone away only
/// loses the rest of the output.
pub trait Output {
    /// A line for standard output.
    fn out(&mut self, line: &str);
    /// A line for standard error.
    fn err(&mut self, line: &str);
    /// Progress of a long step.
    fn progress(&mut self, p: &Progress);
}

/// Output to this process's standard output and error, with progress bars
/// on standard error (drawn only when it is a terminal).
pub struct Terminal {
    bar: Option<(String, indicatif::ProgressBar)>,
}

impl Terminal {
    /// A terminal with no bar yet.
    pub fn new() -> Self {
        Terminal { bar: None }
    }

    fn clear(&mut self) {
        if let Some((_, pb)) = self.bar.take() {
            pb.finish_and_clear();
        }
    }
}

impl Default for Terminal {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.clear();
    }
}

impl Output for Terminal {
    fn out(&mut self, line: &str) {
        self.clear();
        use std::io::Write;
        let mut o = std::io::stdout().lock();
        // A closed pipe ends the process (SIGPIPE), as other commands do.
        let _ = writeln!(o, "{line}");
    }

    fn err(&mut self, line: &str) {
        self.clear();
        eprintln!("{line}");
    }

    fn progress(&mut self, p: &Progress) {
        if self.bar.as_ref().is_none_or(|(what, _)| *what != p.what) {
            self.clear();
            let pb = if p.total == 0 {
                let sp = indicatif::ProgressBar::new_spinner();
                sp.enable_steady_tick(std::time::Duration::from_millis(100));
                sp
            } else {
                let pb = indicatif::ProgressBar::new(p.total);
                pb.set_style(
                    indicatif::ProgressStyle::with_template("{msg:10} [{bar:30}] {pos}/{len} {per_sec} {eta}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                pb
            };
            pb.set_message(p.what.clone());
            self.bar = Some((p.what.clone(), pb));
        }
        if let Some((_, pb)) = &self.bar {
            if p.total > 0 {
                pb.set_length(p.total);
                pb.set_position(p.done);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms_are_as_documented() {
        let line = RequestLine { version: 1, request: Request::Status { json: false } };
        assert_eq!(
            serde_json::to_string(&line).expect("encode"),
            r#"{"version":1,"request":{"command":"status","json":false}}"#
        );
        let parsed: RequestLine =
            serde_json::from_str(r#"{"version":1,"request":{"command":"evict","size":null}}"#).expect("decode");
        assert_eq!(parsed.request, Request::Evict { size: None });
        assert_eq!(ReplyLine::encode(Reply::Out("x".into())), b"{\"version\":1,\"out\":\"x\"}\n");
        let end = ReplyLine::encode(Reply::End(End { exit: 0, error: None, busy: false }));
        assert_eq!(end, b"{\"version\":1,\"end\":{\"exit\":0}}\n");
        let back: ReplyLine = serde_json::from_slice(&end).expect("decode reply");
        assert_eq!(back.reply, Reply::End(End { exit: 0, error: None, busy: false }));
        let p: ReplyLine =
            serde_json::from_str(r#"{"version":1,"progress":{"what":"push","done":3,"total":10}}"#).expect("progress");
        assert_eq!(p.reply, Reply::Progress(Progress { what: "push".into(), done: 3, total: 10 }));
        assert!(serde_json::from_str::<RequestLine>(r#"{"version":1,"request":{"command":"status","x":1}}"#).is_err());
    }
}
