//! Fault injection for tests: a [`Storage`] that wraps another one and
//! fails chosen writes with ENOSPC or EIO, and a redb backend that fails
//! the index's writes by the same plan.
//!
//! Always true:
//! - only calls that change something fail (appends, file writes, syncs,
//!   renames, truncations, directory creation; the index's writes, length
//!   changes and syncs); reads, listings and removals never do, since a full
//!   disk still lets a program read and delete;
//! - a failing append first writes a prefix of its bytes, as a real short
//!   write on a full disk does, so callers meet torn tails;
//! - with no plan set ([`Faults::stop`]) every call goes straight through.

use std::fmt::Debug;
use std::fs::OpenOptions;
use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

use crate::storage::{AppendFile, ByteWindow, Storage};

/// The errors a fault can be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// ENOSPC: the disk is full.
    NoSpace,
    /// EIO: the disk failed.
    Io,
    /// The call panics (a bug below the caller): tests that callers
    /// waiting on it are released.
    Panic,
}

impl Fault {
    /// The error, as the OS gives it (callers read its code).
    fn error(self, what: &str) -> io::Error {
        tracing::debug!("injected {self:?} at {what}");
        io::Error::from_raw_os_error(match self {
            Fault::NoSpace => libc::ENOSPC,
            Fault::Io => libc::EIO,
            Fault::Panic => panic!("injected panic at {what}"),
        })
    }
}

/// Which writes fail: one in `one_in` on average, by a seeded generator, so
/// a failing run can be replayed.
#[derive(Clone, Debug)]
struct Plan {
    fault: Fault,
    one_in: u32,
    /// Only writes to paths that contain this fail.
    only: Option<std::ffi::OsString>,
}

#[derive(Debug, Default)]
struct State {
    plan: Option<Plan>,
    rng: u64,
    /// Writes failed so far.
    injected: u64,
    /// Writes let through so far.
    passed: u64,
}

/// The fault plan, shared by a [`FaultyStorage`] and the index backends it
/// opens.
#[derive(Debug, Default)]
pub struct Faults {
    state: Mutex<State>,
}

impl Faults {
    /// No faults until [`Faults::fail`].
    pub fn new() -> Arc<Faults> {
        Arc::new(Faults::default())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on, about one write in `one_in` fails with `fault` (every
    /// one with `one_in` 1), chosen by a generator seeded with `seed`.
    pub fn fail(&self, fault: Fault, one_in: u32, seed: u64) {
        let mut st = self.state();
        st.plan = Some(Plan { fault, one_in: one_in.max(1), only: None });
        st.rng = seed | 1;
    }

    /// From now on, every write to a path containing `part` (`blobs`,
    /// `log`, `index.redb`) fails with `fault`; others go through.
    pub fn fail_only(&self, fault: Fault, part: &str) {
        let mut st = self.state();
        st.plan = Some(Plan { fault, one_in: 1, only: Some(part.into()) });
        st.rng = 1;
    }

    /// No more faults.
    pub fn stop(&self) {
        self.state().plan = None;
    }

    /// Writes failed so far.
    pub fn injected(&self) -> u64 {
        self.state().injected
    }

    /// Writes let through so far.
    pub fn passed(&self) -> u64 {
        self.state().passed
    }

    /// The fault for the write about to happen, if it is to fail.
    fn next(&self, path: &Path) -> Option<Fault> {
        let mut st = self.state();
        let aimed = |plan: &Plan| {
            plan.only.as_ref().is_none_or(|part| {
                let part = part.as_encoded_bytes();
                part.is_empty() || path.as_os_str().as_encoded_bytes().windows(part.len()).any(|w| w == part)
            })
        };
        let Some(plan) = st.plan.clone().filter(aimed) else {
            st.passed += 1;
            return None;
        };
        // xorshift64: plenty for picking writes, and the same on every run.
        let mut x = st.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        st.rng = x;
        if x.is_multiple_of(u64::from(plan.one_in)) {
            st.injected += 1;
            Some(plan.fault)
        } else {
            st.passed += 1;
            None
        }
    }

    fn check(&self, what: &str, path: &Path) -> io::Result<()> {
        match self.next(path) {
            Some(f) => Err(f.error(&format!("{what} {}", path.display()))),
            None => Ok(()),
        }
    }
}

/// A [`Storage`] whose writes fail as its [`Faults`] say.
#[derive(Debug, Clone)]
pub struct FaultyStorage {
    inner: Arc<dyn Storage>,
    faults: Arc<Faults>,
}

impl FaultyStorage {
    /// Wraps `inner`; `faults` decides which writes fail.
    pub fn new(inner: Arc<dyn Storage>, faults: Arc<Faults>) -> Self {
        FaultyStorage { inner, faults }
    }
}

#[derive(Debug)]
struct FaultyAppendFile {
    inner: Box<dyn AppendFile>,
    faults: Arc<Faults>,
    path: std::path::PathBuf,
}

impl AppendFile for FaultyAppendFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        match self.faults.next(&self.path) {
            Some(f) => {
                // A short write lands first, as on a disk that fills midway.
                let _ = self.inner.append(&data[..data.len() / 2]);
                Err(f.error(&format!("append {}", self.path.display())))
            }
            None => self.inner.append(data),
        }
    }
    fn sync(&mut self) -> io::Result<()> {
        self.faults.check("sync", &self.path)?;
        self.inner.sync()
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
}

impl Storage for FaultyStorage {
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        self.faults.check("open", path)?;
        let inner = self.inner.open_append(path)?;
        Ok(Box::new(FaultyAppendFile { inner, faults: self.faults.clone(), path: path.to_path_buf() }))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read(path)
    }
    fn read_streaming(&self, path: &Path) -> io::Result<ByteWindow> {
        self.inner.read_streaming(path)
    }
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.inner.read_at(path, offset, len)
    }
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        self.inner.file_len(path)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<std::ffi::OsString>> {
        self.inner.list_dir(path)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.faults.check("mkdir", path)?;
        self.inner.create_dir_all(path)
    }
    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.faults.check("write", path)?;
        self.inner.write_file(path, data)
    }
    fn write_streaming(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.faults.check("write", path)?;
        self.inner.write_streaming(path, data)
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        self.faults.check("sync", path)?;
        self.inner.sync_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.faults.check("sync", path)?;
        self.inner.sync_dir(path)
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.faults.check("truncate", path)?;
        self.inner.truncate(path, len)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.faults.check("rename", from)?;
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn index_database(&self, path: &Path) -> Option<Result<redb::Database, redb::DatabaseError>> {
        let open = || {
            let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
            let inner = FileBackend::new(file)?;
            crate::index::builder().create_with_backend(FaultyBackend {
                inner,
                faults: self.faults.clone(),
                path: path.to_path_buf(),
            })
        };
        Some(open())
    }
}

/// redb's file backend, with writes that fail as [`Faults`] say.
#[derive(Debug)]
struct FaultyBackend {
    inner: FileBackend,
    faults: Arc<Faults>,
    path: std::path::PathBuf,
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.faults.check("set_len", &self.path)?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.faults.check("sync", &self.path)?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.faults.check("write", &self.path)?;
        self.inner.write(offset, data)
    }
    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }
    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}
