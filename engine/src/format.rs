//! The `FORMAT` file: which on-disk format a data dir holds, checked on every
//! open.
//!
//! # File format
//!
//! One line of ASCII: `syncer-data <major>.<minor>.<patch>\n` (the final
//! newline may be missing; nothing else may follow), at most 256 bytes.
//! Numbers are decimal without leading zeros.
//!
//! # Compatibility rules
//!
//! - **major**: a change older builds cannot read. A data dir of a newer major
//!   is refused with [`Error::NewerFormat`] and left untouched.
//! - **minor**: a backward-compatible change: a build of the same major but
//!   an older minor can still read *and* write the data dir safely (e.g. a new
//!   optional file, a new index table). Such a data dir opens with
//!   [`Upgrade::NewerMinor`] and its `FORMAT` is left as is (never
//!   downgraded). Anything an older reader would misread needs a major bump.
//! - **patch**: no on-disk change (bug fixes in how it is written).
//! - An older version is upgraded in place on open: whatever the upgrade
//!   needs is done, then `FORMAT` is rewritten atomically (temp file, sync,
//!   rename, sync dir), so a crash leaves either the old or the new version.
//!
//! # Version history
//!
//! - 1.0.x: logs may hold v1 event records (time in whole seconds).
//! - 1.1.0: new records are v2 (time in nanoseconds). Upgrading from 1.0.x
//!   only rewrites `FORMAT`: the log is append-only, so old v1 records stay
//!   and are read (and converted) by the record decoder forever.
//! - 2.0.0 (current): new records are v3 (a content change names the content
//!   version it was made on; see `event`). A major bump: a 1.x build would
//!   refuse our own v3 records, so it must refuse the data dir up front, by
//!   its FORMAT. Upgrading from 1.x only rewrites `FORMAT`, as above; the
//!   index is rebuilt from the log because its version changed too.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::storage::Storage;

/// Name of the file inside the data dir.
pub(crate) const FILE_NAME: &str = "FORMAT";
/// The format name before the version on the line.
pub(crate) const FORMAT_NAME: &str = "syncer-data";
/// Longest `FORMAT` file accepted.
pub(crate) const MAX_LEN: usize = 256;

/// A data dir format version (semver).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct FormatVersion {
    /// Incompatible changes.
    pub major: u32,
    /// Backward-compatible changes.
    pub minor: u32,
    /// No on-disk change.
    pub patch: u32,
}

/// The version this build writes, and the newest it fully understands.
pub const CURRENT: FormatVersion = FormatVersion { major: 2, minor: 0, patch: 0 };

/// The oldest version this build reads (and upgrades).
pub(crate) const OLDEST_SUPPORTED: FormatVersion = FormatVersion { major: 1, minor: 0, patch: 0 };

impl FormatVersion {
    /// The `FORMAT` file content for this version.
    pub fn to_line(self) -> String {
        format!("{FORMAT_NAME} {self}\n")
    }
}

impl fmt::Display for FormatVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// What [`check_and_upgrade`] found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Upgrade {
    /// The data dir is at [`CURRENT`].
    None,
    /// The data dir was at this older version and is now at [`CURRENT`].
    UpgradedFrom(FormatVersion),
    /// The data dir is at this newer minor (or patch) of the current major:
    /// readable and writable, left as is.
    NewerMinor(FormatVersion),
}

/// Parses a `FORMAT` file's bytes; the error says what is wrong.
pub fn parse(bytes: &[u8]) -> Result<FormatVersion, String> {
    if bytes.len() > MAX_LEN {
        return Err(format!("{} bytes is too long for a FORMAT file (at most {MAX_LEN})", bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let line = text.strip_suffix('\n').unwrap_or(text);
    if line.contains('\n') {
        return Err("more than one line".to_string());
    }
    let Some((name, version)) = line.split_once(' ') else {
        return Err(format!("expected \"{FORMAT_NAME} <major>.<minor>.<patch>\", found {line:?}"));
    };
    if name != FORMAT_NAME {
        return Err(format!("format name is {name:?}, expected {FORMAT_NAME:?}"));
    }
    let parts: Vec<&str> = version.split('.').collect();
    let [major, minor, patch] = parts.as_slice() else {
        return Err(format!("version {version:?} is not <major>.<minor>.<patch>"));
    };
    let num = |s: &str, what: &str| -> Result<u32, String> {
        let ok = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
        if !ok {
            return Err(format!("version {version:?}: {what} {s:?} is not a decimal number"));
        }
        s.parse().map_err(|_| format!("version {version:?}: {what} {s:?} is too large"))
    };
    Ok(FormatVersion { major: num(major, "major")?, minor: num(minor, "minor")?, patch: num(patch, "patch")? })
}

/// Path of the `FORMAT` file in data dir `dir`.
pub(crate) fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Reads and parses `<dir>/FORMAT`.
pub fn read(storage: &dyn Storage, dir: &Path) -> Result<FormatVersion> {
    let path = path_in(dir);
    let bad = |reason: String| Error::BadFormatFile { path: path.clone(), reason };
    match storage.file_len(&path) {
        Ok(n) if n > MAX_LEN as u64 => {
            return Err(bad(format!("{n} bytes is too long for a FORMAT file (at most {MAX_LEN})")));
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(bad("not a syncer data dir (no FORMAT file)".to_string()));
        }
        Err(e) => return Err(Error::io("stat", &path, e)),
    }
    let bytes = match storage.read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(bad("not a syncer data dir (no FORMAT file)".to_string()));
        }
        Err(e) => return Err(Error::io("read", &path, e)),
    };
    parse(&bytes).map_err(bad)
}

/// Checks `<dir>/FORMAT` on open: refuses a newer major or a garbled file,
/// upgrades an older version in place, accepts a newer minor.
pub fn check_and_upgrade(storage: &dyn Storage, dir: &Path) -> Result<Upgrade> {
    let found = read(storage, dir)?;
    let path = path_in(dir);
    if found.major > CURRENT.major {
        return Err(Error::NewerFormat { path, found: found.to_string(), supported: CURRENT.to_string() });
    }
    if found < OLDEST_SUPPORTED {
        return Err(Error::BadFormatFile {
            path,
            reason: format!("format {found} was never written by syncer (oldest known is {OLDEST_SUPPORTED})"),
        });
    }
    if found == CURRENT {
        return Ok(Upgrade::None);
    }
    if found > CURRENT {
        return Ok(Upgrade::NewerMinor(found));
    }
    // 1.x -> 2.0.0: nothing to convert (see the module docs), only FORMAT.
    write_file_atomic(storage, &path, CURRENT.to_line().as_bytes())?;
    tracing::info!(path = %path.display(), "data dir format upgraded from {found} to {CURRENT}");
    Ok(Upgrade::UpgradedFrom(found))
}

/// Writes `<dir>/FORMAT` at [`CURRENT`] for a new data dir (atomically and
/// durably). Refuses if the file exists.
pub fn write_new(storage: &dyn Storage, dir: &Path) -> Result<()> {
    let path = path_in(dir);
    if storage.exists(&path) {
        return Err(Error::BadFormatFile { path, reason: "already a syncer data dir (FORMAT exists)".to_string() });
    }
    write_file_atomic(storage, &path, CURRENT.to_line().as_bytes())
}

/// Replaces `path` with `data` so that a crash leaves either the old or the
/// new content, and the new content is durable on return: writes
/// `<path>.tmp`, syncs it, renames it over `path`, syncs the folder.
pub(crate) fn write_file_atomic(storage: &dyn Storage, path: &Path, data: &[u8]) -> Result<()> {
    let mut tmp_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    storage.write_file(&tmp, data).map_err(|e| Error::io("write", &tmp, e))?;
    storage.sync_file(&tmp).map_err(|e| Error::io("sync", &tmp, e))?;
    storage.rename(&tmp, path).map_err(|e| Error::io("rename", &tmp, e))?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    storage.sync_dir(dir).map_err(|e| Error::io("sync", dir, e))?;
    Ok(())
}
