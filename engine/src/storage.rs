//! Durable I/O behind a small trait, so crash tests can swap in a backend
//! that loses whatever was not synced (the model is redb's `StorageBackend`).
//!
//! The contract every backend keeps, and every caller relies on:
//! - bytes written with [`AppendFile::append`], [`Storage::write_file`] or
//!   [`Storage::write_streaming`] survive a crash only after
//!   [`AppendFile::sync`] / [`Storage::sync_file`];
//! - a newly created or renamed directory entry survives a crash only after
//!   [`Storage::sync_dir`] on its parent directory;
//! - a crash may keep any prefix of the unsynced bytes of a file (a torn tail),
//!   never reorder or invent bytes.
//!
//! The redb index is not behind this trait (but for fault injection, see
//! [`Storage::index_database`]): it is derived from the log and is rebuilt
//! or caught up after a crash.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// An owned buffer and the window of it that holds the bytes: a direct
/// read lands a file at an aligned offset of its buffer, and a raw blob's
/// block follows its header, so a block read this way is never copied
/// down to the start of a buffer of its own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ByteWindow {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl ByteWindow {
    /// The window without its first `n` bytes (all of them if fewer).
    pub fn skip(self, n: usize) -> ByteWindow {
        let start = self.start.saturating_add(n).min(self.end);
        ByteWindow { start, ..self }
    }

    /// The bytes as a vector of their own (copied only if windowed).
    pub(crate) fn into_vec(mut self) -> Vec<u8> {
        if self.start == 0 {
            self.buf.truncate(self.end);
            return self.buf;
        }
        self.buf[self.start..self.end].to_vec()
    }
}

impl From<Vec<u8>> for ByteWindow {
    fn from(buf: Vec<u8>) -> Self {
        ByteWindow { end: buf.len(), start: 0, buf }
    }
}

impl std::ops::Deref for ByteWindow {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
}

/// An open file that grows at its end.
pub trait AppendFile: Send + Debug {
    /// Appends all of `data`.
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> u64;
    /// Whether the file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The filesystem operations the log and blob store need.
pub trait Storage: Send + Sync + Debug {
    /// Opens `path` for appending, creating it if missing.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>>;
    /// Reads the whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Reads the whole file, as [`Storage::read`], but for data streamed
    /// once (a sequential reader's next blocks): a backend may bypass its
    /// cache. The bytes are the same either way.
    fn read_streaming(&self, path: &Path) -> io::Result<ByteWindow> {
        self.read(path).map(ByteWindow::from)
    }
    /// Reads up to `len` bytes at `offset` (fewer at end of file).
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Length of the file.
    fn file_len(&self, path: &Path) -> io::Result<u64>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> bool;
    /// Names in a directory (unsorted).
    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>>;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Writes a whole file, replacing it (not synced).
    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Writes a whole file, as [`Storage::write_file`] (and no more durable
    /// than it), but for data not read back soon (a new block): a backend
    /// may bypass its cache.
    fn write_streaming(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.write_file(path, data)
    }
    /// Makes a file's content durable.
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// Makes a directory's entries durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Cuts a file to `len` bytes and makes that durable.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Renames a file (atomic on the real backend).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Opens (creating if missing) the redb index at `path` through this
    /// backend; `None`, the default, lets redb use the file itself. Only
    /// fault injection ([`crate::faults`]) puts the index behind it.
    fn index_database(&self, _path: &Path) -> Option<Result<redb::Database, redb::DatabaseError>> {
        None
    }
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsStorage;

#[derive(Debug)]
struct FsAppendFile {
    file: File,
    len: u64,
}

impl AppendFile for FsAppendFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.len += data.len() as u64;
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn len(&self) -> u64 {
        self.len
    }
}

/// Alignment of `O_DIRECT` buffers, offsets and lengths: 4 KiB satisfies
/// every logical block size Linux filesystems use.
#[cfg(target_os = "linux")]
const DIRECT_ALIGN: usize = 4096;

/// Reads a whole file with `O_DIRECT`. `EINVAL` means the filesystem does
/// not support it, or not with this alignment (the caller falls back);
/// `Ok(None)` means a read came back short before the end of the file (a
/// backend that splits direct reads oddly: the caller falls back too).
#[cfg(target_os = "linux")]
fn read_direct(path: &Path) -> io::Result<Option<ByteWindow>> {
    use std::os::unix::fs::OpenOptionsExt;
    let too_big = || io::Error::new(io::ErrorKind::OutOfMemory, format!("{}: too large to read", path.display()));
    let file = OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path)?;
    let len = usize::try_from(file.metadata()?.len()).map_err(|_| too_big())?;
    let cap = len.div_ceil(DIRECT_ALIGN).checked_mul(DIRECT_ALIGN).ok_or_else(too_big)?;
    // An aligned window into a buffer one alignment unit longer. The
    // length comes from disk: an allocation that fails is an error, not an
    // abort.
    let total = cap.checked_add(DIRECT_ALIGN).ok_or_else(too_big)?;
    let mut buf = Vec::new();
    buf.try_reserve_exact(total).map_err(|_| too_big())?;
    buf.resize(total, 0u8);
    let start = buf.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
    let mut done = 0;
    while done < cap {
        let n = match file.read_at(&mut buf[start + done..start + cap], done as u64) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        done += n;
        // A short read that is not a whole unit is the end of the file.
        if n == 0 || !n.is_multiple_of(DIRECT_ALIGN) {
            break;
        }
    }
    if done < len {
        return Ok(None);
    }
    Ok(Some(ByteWindow { buf, start, end: start + len }))
}

#[cfg(not(target_os = "linux"))]
fn read_direct(path: &Path) -> io::Result<Option<ByteWindow>> {
    std::fs::read(path).map(|b| Some(b.into()))
}

/// Largest staging buffer a writer thread keeps between writes: a default
/// 1 MiB block and its header, with room to spare.
#[cfg(target_os = "linux")]
const DIRECT_STAGING_KEEP: usize = 4 << 20;

#[cfg(target_os = "linux")]
thread_local! {
    /// Each writer thread's aligned staging buffer for [`write_direct`],
    /// reused so that its pages stay mapped.
    static DIRECT_STAGING: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes a new whole file: the largest aligned prefix with `O_DIRECT`
/// (from an aligned copy), the short rest through the page cache (a tail
/// beyond the end of the file needs no read). `EINVAL` means the filesystem
/// does not support it, or not with this alignment (the caller falls back
/// to a plain write, which replaces whatever this left).
#[cfg(target_os = "linux")]
fn write_direct(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let aligned = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
    if aligned == 0 {
        return std::fs::write(path, data);
    }
    let file = OpenOptions::new().write(true).create(true).truncate(true).custom_flags(libc::O_DIRECT).open(path)?;
    DIRECT_STAGING.with_borrow_mut(|staging| {
        let need = aligned + DIRECT_ALIGN;
        if staging.len() < need {
            staging.try_reserve_exact(need - staging.len()).map_err(|_| {
                io::Error::new(io::ErrorKind::OutOfMemory, format!("{}: no memory to stage the write", path.display()))
            })?;
            staging.resize(need, 0);
        }
        let start = staging.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        let buf = &mut staging[start..start + aligned];
        buf.copy_from_slice(&data[..aligned]);
        let mut done = 0;
        let written = loop {
            if done == aligned {
                break Ok(());
            }
            match file.write_at(&buf[done..], done as u64) {
                Ok(0) => break Err(io::Error::new(io::ErrorKind::WriteZero, format!("{}", path.display()))),
                // A short write that is not a whole unit cannot go on aligned.
                Ok(n) if !n.is_multiple_of(DIRECT_ALIGN) => break Err(io::Error::from_raw_os_error(libc::EINVAL)),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        // Kept for the next block, unless an unusually large one grew it.
        if staging.len() > DIRECT_STAGING_KEEP {
            *staging = Vec::new();
        }
        written
    })?;
    if aligned < data.len() {
        // The tail through the page cache, on the same descriptor.
        let fd = file.as_raw_fd();
        // SAFETY: fcntl on a descriptor this function owns, with no pointers.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
            return Err(io::Error::last_os_error());
        }
        file.write_all_at(&data[aligned..], aligned as u64)?;
    }
    Ok(())
}

/// Whether `e` says the filesystem does not do `O_DIRECT` (or not with
/// this alignment): the caller falls back to plain I/O.
fn direct_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP))
}

#[cfg(not(target_os = "linux"))]
fn write_direct(path: &Path, data: &[u8]) -> io::Result<()> {
    std::fs::write(path, data)
}

impl Storage for FsStorage {
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.seek(SeekFrom::End(0))?;
        Ok(Box::new(FsAppendFile { file, len }))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    /// With `O_DIRECT` where the filesystem allows it (Linux):
    /// a streamed block is read once, and filling the page cache with it
    /// costs several times the CPU of the read itself (measured: 0.27 s
    /// against 0.07 s of CPU for 1,000 cold 1 MiB files). The kernel writes
    /// back dirty pages of the range before a direct read, so a file just
    /// written reads the same.
    fn read_streaming(&self, path: &Path) -> io::Result<ByteWindow> {
        match read_direct(path) {
            Ok(Some(data)) => Ok(data),
            Ok(None) => std::fs::read(path).map(ByteWindow::from),
            Err(e) if direct_unsupported(&e) => std::fs::read(path).map(ByteWindow::from),
            Err(e) => Err(e),
        }
    }
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let file = File::open(path)?;
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = file.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(path)?.map(|e| e.map(|e| e.file_name())).collect()
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }
    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        std::fs::write(path, data)
    }
    /// With `O_DIRECT` where the filesystem allows it (Linux): copying a
    /// new block into the page cache costs more than the write itself, and
    /// it is not read back soon (measured: 2,048 new 1 MiB files written
    /// and synced at 323–455 MiB/s buffered against 805–1,272 MiB/s direct
    /// on this machine's disk).
    fn write_streaming(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        match write_direct(path, data) {
            Err(e) if direct_unsupported(&e) => std::fs::write(path, data),
            r => r,
        }
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(len)?;
        f.sync_all()
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
}

/// An in-memory backend for crash tests: [`CrashStorage::crash`] throws away
/// what was not synced, keeping a chosen prefix of each file's unsynced tail.
#[derive(Debug, Clone, Default)]
pub struct CrashStorage {
    inner: Arc<Mutex<CrashState>>,
}

#[derive(Debug, Default)]
struct CrashState {
    /// Current content of every file.
    files: BTreeMap<PathBuf, Vec<u8>>,
    /// Content as of the last sync of each file.
    synced: BTreeMap<PathBuf, Vec<u8>>,
    /// Directories that exist now.
    dirs: BTreeSet<PathBuf>,
    /// Files whose directory entry is durable.
    durable_entries: BTreeSet<PathBuf>,
    /// The synced content of a durable file that a rename replaced, until
    /// its directory is synced: a crash brings it back (a rename is atomic,
    /// so a crash leaves the old file or the new one, never neither).
    replaced: BTreeMap<PathBuf, Vec<u8>>,
}

#[derive(Debug)]
struct CrashAppendFile {
    storage: CrashStorage,
    path: PathBuf,
}

impl CrashStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, CrashState> {
        // A panic while the lock was held leaves plain data behind; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Simulates a power cut. For each file, `keep(path, synced_len,
    /// current_len)` picks how many bytes survive, clamped to
    /// `synced_len..=current_len`; files whose directory entry was never made
    /// durable vanish, except that a durable file replaced by a rename since
    /// its directory was last synced comes back as it was synced.
    pub fn crash(&self, mut keep: impl FnMut(&Path, usize, usize) -> usize) {
        let mut st = self.state();
        let st = &mut *st;
        let durable = st.durable_entries.clone();
        st.files.retain(|p, _| durable.contains(p));
        for (path, old) in std::mem::take(&mut st.replaced) {
            if !st.files.contains_key(&path) {
                st.files.insert(path.clone(), old.clone());
                st.synced.insert(path.clone(), old);
                st.durable_entries.insert(path);
            }
        }
        for (path, data) in st.files.iter_mut() {
            let synced = st.synced.get(path).cloned().unwrap_or_default();
            // A file rewritten since its sync (write_file) keeps only its synced content.
            if !data.starts_with(&synced) {
                *data = synced;
                continue;
            }
            let n = keep(path, synced.len(), data.len()).clamp(synced.len(), data.len());
            data.truncate(n);
        }
        st.synced = st.files.clone();
    }

    /// Bytes not yet synced, summed over all files (to know a crash can bite).
    pub fn unsynced_bytes(&self) -> usize {
        let st = self.state();
        st.files.iter().map(|(p, d)| d.len().saturating_sub(st.synced.get(p).map_or(0, Vec::len))).sum()
    }

    fn not_found(path: &Path) -> io::Error {
        io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display()))
    }

    fn parent_exists(st: &CrashState, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(p) if !p.as_os_str().is_empty() && !st.dirs.contains(p) => Err(Self::not_found(p)),
            _ => Ok(()),
        }
    }
}

impl AppendFile for CrashAppendFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let mut st = self.storage.state();
        st.files.entry(self.path.clone()).or_default().extend_from_slice(data);
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.storage.sync_file(&self.path)
    }
    fn len(&self) -> u64 {
        self.storage.state().files.get(&self.path).map_or(0, |d| d.len() as u64)
    }
}

impl Storage for CrashStorage {
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        {
            let mut st = self.state();
            Self::parent_exists(&st, path)?;
            st.files.entry(path.to_path_buf()).or_default();
        }
        Ok(Box::new(CrashAppendFile { storage: self.clone(), path: path.to_path_buf() }))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.state().files.get(path).cloned().ok_or_else(|| Self::not_found(path))
    }
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let st = self.state();
        let data = st.files.get(path).ok_or_else(|| Self::not_found(path))?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
        let end = start.saturating_add(len).min(data.len());
        Ok(data[start..end].to_vec())
    }
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        self.state().files.get(path).map(|d| d.len() as u64).ok_or_else(|| Self::not_found(path))
    }
    fn exists(&self, path: &Path) -> bool {
        let st = self.state();
        st.files.contains_key(path) || st.dirs.contains(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let st = self.state();
        if !st.dirs.contains(path) {
            return Err(Self::not_found(path));
        }
        let files = st.files.keys().map(PathBuf::as_path);
        let dirs = st.dirs.iter().map(PathBuf::as_path);
        Ok(files
            .chain(dirs)
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| p.file_name().map(OsString::from))
            .collect())
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state();
        // Directories are treated as durable at once: the log creates them
        // at init, before anything that a test would crash on.
        for anc in path.ancestors() {
            if !anc.as_os_str().is_empty() {
                st.dirs.insert(anc.to_path_buf());
            }
        }
        Ok(())
    }
    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut st = self.state();
        Self::parent_exists(&st, path)?;
        st.files.insert(path.to_path_buf(), data.to_vec());
        Ok(())
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state();
        let data = st.files.get(path).cloned().ok_or_else(|| Self::not_found(path))?;
        st.synced.insert(path.to_path_buf(), data);
        Ok(())
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state();
        let children: Vec<PathBuf> = st.files.keys().filter(|p| p.parent() == Some(path)).cloned().collect();
        st.durable_entries.extend(children);
        st.replaced.retain(|p, _| p.parent() != Some(path));
        Ok(())
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut st = self.state();
        let data = st.files.get_mut(path).ok_or_else(|| Self::not_found(path))?;
        data.truncate(usize::try_from(len).unwrap_or(usize::MAX));
        let data = data.clone();
        st.synced.insert(path.to_path_buf(), data);
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state();
        Self::parent_exists(&st, to)?;
        let data = st.files.remove(from).ok_or_else(|| Self::not_found(from))?;
        if st.durable_entries.contains(to) && !st.replaced.contains_key(to) {
            let old = st.synced.get(to).cloned().unwrap_or_default();
            st.replaced.insert(to.to_path_buf(), old);
        }
        st.files.insert(to.to_path_buf(), data);
        // The synced content moves with the inode; the new entry is durable
        // only after the directory is synced.
        if let Some(s) = st.synced.remove(from) {
            st.synced.insert(to.to_path_buf(), s);
        }
        st.durable_entries.remove(to);
        Ok(())
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state();
        st.files.remove(path).ok_or_else(|| Self::not_found(path))?;
        st.synced.remove(path);
        st.durable_entries.remove(path);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Streaming reads and writes give the bytes plain ones give, at every
    /// length around the direct-I/O unit, on the crate's disk and on tmpfs
    /// (no `O_DIRECT`: the fallback): a streaming read of a file just
    /// written plainly (its pages still dirty), and a streaming write over a
    /// longer old file, read back both ways.
    #[test]
    fn streaming_io_matches_plain_io() {
        let disk = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("tempdir");
        let shm = tempfile::tempdir_in("/dev/shm").ok();
        let dirs = [Some(disk.path()), shm.as_ref().map(|d| d.path())];
        for dir in dirs.into_iter().flatten() {
            for len in [0usize, 1, 4095, 4096, 4097, 8192, (1 << 20) + 32] {
                let what = format!("{len} bytes in {}", dir.display());
                let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
                let read = dir.join(format!("r{len}"));
                std::fs::write(&read, &data).expect("write");
                let got = FsStorage.read_streaming(&read).expect("read");
                assert!(*got == *data, "{what}");
                assert!(got.into_vec() == data, "{what}");
                let written = dir.join(format!("w{len}"));
                std::fs::write(&written, vec![0xEE; len + 5000]).expect("write the longer old file");
                FsStorage.write_streaming(&written, &data).expect("write");
                assert!(std::fs::read(&written).expect("read") == data, "{what}");
                assert!(*FsStorage.read_streaming(&written).expect("read") == *data, "{what}");
            }
        }
        let missing = FsStorage.read_streaming(&disk.path().join("missing")).expect_err("missing");
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        let err = FsStorage.write_streaming(&disk.path().join("no/such/dir"), b"x").expect_err("missing dir");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn byte_windows_skip_and_convert() {
        let w = ByteWindow::from(b"headerblock".to_vec());
        assert_eq!(&*w, b"headerblock");
        let w = w.skip(6);
        assert_eq!(&*w, b"block");
        assert_eq!(w.clone().into_vec(), b"block");
        assert_eq!(&*w.clone().skip(99), b"");
        assert_eq!(ByteWindow::from(b"whole".to_vec()).into_vec(), b"whole");
    }

    #[test]
    fn crash_keeps_synced_and_drops_unsynced() {
        let s = CrashStorage::new();
        let dir = Path::new("/d");
        s.create_dir_all(dir).expect("mkdir");
        let p = dir.join("f");
        let mut f = s.open_append(&p).expect("open");
        f.append(b"hello").expect("append");
        f.sync().expect("sync");
        s.sync_dir(dir).expect("sync dir");
        f.append(b" world").expect("append");
        assert_eq!(s.unsynced_bytes(), 6);
        s.crash(|_, synced, _| synced);
        assert_eq!(s.read(&p).expect("read"), b"hello");
    }

    #[test]
    fn crash_may_keep_a_torn_prefix() {
        let s = CrashStorage::new();
        s.create_dir_all(Path::new("/d")).expect("mkdir");
        let p = Path::new("/d/f");
        let mut f = s.open_append(p).expect("open");
        f.append(b"abc").expect("append");
        f.sync().expect("sync");
        s.sync_dir(Path::new("/d")).expect("sync dir");
        f.append(b"defgh").expect("append");
        s.crash(|_, _, _| 5);
        assert_eq!(s.read(p).expect("read"), b"abcde");
    }

    #[test]
    fn unsynced_directory_entry_vanishes() {
        let s = CrashStorage::new();
        s.create_dir_all(Path::new("/d")).expect("mkdir");
        s.write_file(Path::new("/d/new"), b"x").expect("write");
        s.sync_file(Path::new("/d/new")).expect("sync");
        s.crash(|_, _, cur| cur);
        assert!(!s.exists(Path::new("/d/new")));
    }
}
