//! Where the binary's log lines go: standard error, which for a detached
//! mount daemon is `<data>/mount.log` (see `mount`).
//!
//! Always true:
//! - writing a log line never fails and never panics: a line the OS refuses
//!   (a full disk, an I/O error) is dropped and counted, and the count is
//!   written with the next line that gets through. `eprintln!` would panic
//!   on such an error, and tracing-subscriber's own fallback is
//!   `eprintln!`, so every line goes through [`Lossy`] or [`line`];
//! - the daemon's log is bounded: when `SYNCER_LOG_FILE` names the file
//!   standard error writes to, it is rotated at [`ROTATE_AT`] bytes (the
//!   old one kept as `mount.log.1`), so the log never fills the disk it
//!   shares with the data.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Names the file standard error writes to, for rotation (set by `syncer
/// mount` for its daemon).
pub const LOG_FILE_ENV: &str = "SYNCER_LOG_FILE";

/// Size at which the log file is rotated.
pub const ROTATE_AT: u64 = 8 << 20;

/// Lines dropped since the last one written.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Writes since the size was last looked at.
static WRITES: AtomicU64 = AtomicU64::new(0);

/// Serializes rotations.
static ROTATING: Mutex<()> = Mutex::new(());

/// A `tracing_subscriber` writer (and an `io::Write`) that never fails.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lossy;

impl Write for Lossy {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_lossy(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lossy {
    type Writer = Lossy;

    fn make_writer(&'a self) -> Lossy {
        Lossy
    }
}

/// Writes one line (a newline is added) the way [`Lossy`] does.
pub fn line(text: &str) {
    write_lossy(format!("{text}\n").as_bytes());
}

fn write_lossy(buf: &[u8]) {
    if WRITES.fetch_add(1, Ordering::Relaxed).is_multiple_of(64) {
        rotate_if_due();
    }
    let mut err = io::stderr().lock();
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        let note = format!("syncer: {dropped} log lines could not be written (disk full?) and were dropped\n");
        if err.write_all(note.as_bytes()).is_err() {
            DROPPED.fetch_add(dropped, Ordering::Relaxed);
        }
    }
    if err.write_all(buf).is_err() {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Rotates the log file when it is over [`ROTATE_AT`]: renames it to
/// `<name>.1` and points standard output and error at a new one. Any
/// failure leaves the old file in use.
fn rotate_if_due() {
    let Some(path) = std::env::var_os(LOG_FILE_ENV).map(PathBuf::from) else { return };
    let Ok(_guard) = ROTATING.try_lock() else { return };
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if size < ROTATE_AT {
        return;
    }
    let mut old = path.clone().into_os_string();
    old.push(".1");
    if std::fs::rename(&path, &old).is_err() {
        return;
    }
    let Ok(fresh) = std::fs::OpenOptions::new().create(true).append(true).open(&path) else { return };
    // SAFETY: dup2 onto the process's own standard output and error; the
    // new file stays open through them when `fresh` is dropped.
    unsafe {
        libc::dup2(fresh.as_raw_fd(), libc::STDOUT_FILENO);
        libc::dup2(fresh.as_raw_fd(), libc::STDERR_FILENO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_written_where_the_os_refuses_it_is_dropped_and_counted() {
        // /dev/full refuses every write with ENOSPC, as a full disk does.
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
        // SAFETY: the test process's own standard error, restored below.
        let saved = unsafe { libc::dup(libc::STDERR_FILENO) };
        assert!(saved >= 0);
        unsafe { libc::dup2(full.as_raw_fd(), libc::STDERR_FILENO) };
        let before = DROPPED.load(Ordering::Relaxed);
        let mut w = Lossy;
        let written = w.write(b"a line nobody will read\n");
        line("another");
        let after = DROPPED.load(Ordering::Relaxed);
        unsafe { libc::dup2(saved, libc::STDERR_FILENO) };
        unsafe { libc::close(saved) };
        assert_eq!(written.expect("never an error"), 24);
        assert!(after >= before + 2, "dropped {before} -> {after}");
    }
}

/// `e` and its causes joined by ": ", as `{:#}` prints them, except that a
/// cause whose message is already in the text is skipped: engine errors
/// repeat their typed cause's message (see `engine::error`).
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if out.contains(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    out
}

#[cfg(test)]
mod chain_tests {
    use super::error_chain;
    use anyhow::Context;

    #[test]
    fn a_cause_already_in_the_message_is_printed_once() {
        let source = engine::record::RecordError::TooLarge(1 << 40);
        let e = engine::Error::Record { path: "x.seg".into(), offset: 32, source, context: String::new() };
        let e = Err::<(), _>(e).context("reading the log").expect_err("an error");
        let got = error_chain(&e);
        assert_eq!(
            got,
            "reading the log: x.seg at byte 32: record payload of 1099511627776 bytes is over the 16777216-byte limit"
        );
        assert_eq!(got.matches("over the").count(), 1, "{got}");
    }
}
