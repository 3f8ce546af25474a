//! The content-addressed block store: one file per block under `<data>/blobs/`.
//!
//! # Blob file format (version 1)
//!
//! ```text
//! offset  size  field
//!      0     6  magic      b"SYNBLB"
//!      6     1  version    u8, 1
//!      7     1  codec      u8: 0 = raw, 1 = zstd (one frame)
//!      8     4  raw_len    u32 little endian: length of the uncompressed block
//!     12     4  reserved   zero
//!     16     …  payload    the block's bytes, stored as `codec` says
//! ```
//!
//! Always true:
//! - the address of a blob is [`BlockHash::of`] its *uncompressed* bytes,
//!   truncated to the data dir's hash size: how a block is stored never
//!   changes its address;
//! - a blob lives at `<blobs>/<first 2 hex digits>/<full hex>`; anything else
//!   in those folders (temp files start with `.tmp-`) is not a blob;
//! - `raw_len` is at most [`MAX_RAW_LEN`] (64 MiB) and, for raw blobs, equals
//!   the payload length; decoding never allocates more than `raw_len`;
//! - every read decodes the blob and checks its hash: a mismatch is reported as
//!   [`Error::CorruptBlob`] naming the file, never returned as data;
//! - a blob file is only ever replaced whole (temp file + rename), never
//!   modified in place: written once by a put, and at most once more by
//!   [`BlobStore::compress_deferred`] with the same block in a smaller codec
//!   (its temp file synced before the rename, so either version survives a
//!   crash); a dedupe hit on an existing file is verified (unless recently
//!   verified) so a torn leftover of a crash is rewritten, not trusted;
//! - [`BlobStore::put`] does not sync. [`BlobStore::sync_pending`] makes every
//!   blob put so far durable; a caller **must** call it before it commits
//!   (syncs) a log event that references those blobs, so that the log never
//!   durably points at a block that a crash could lose.
//!
//! # Compressing under load
//!
//! Compression is what limits a put on a fast disk (zstd level 1 runs at
//! 300-600 MB/s per core on text-like data; a local disk writes 1 GB/s), and
//! the FUSE transfer needs a core of its own. So a put of a block over
//! 32 KiB compresses it now only if a compression slot is free (at most
//! [`BlobStore::compress_slots`] puts compress at once: one fewer than the
//! machine's cores, at least one) and compressing pays now: lately a KiB
//! took less time to compress than to write (both wall time, see
//! [`compression_pays_now`]). Otherwise it probes a sample (cheap), and if
//! the block looks compressible stores it raw now and queues its hash
//! (smaller blocks are compressed at once: quick, and no sample would tell); [`BlobStore::compress_deferred`] compresses the
//! queued blobs later, which the engine does while the store has been idle
//! for a second. On a slow disk, writing a KiB costs more than compressing
//! it, and blocks are compressed as they come. The queue lives in memory:
//! blobs queued when the process ends stay raw (valid, only larger), and so
//! does the remote's copy of a blob pushed before it was compressed.
//!
//! Version history:
//! - v1 (current): the layout above. A version byte greater than 1 is refused
//!   with a message saying the blob was written by a newer syncer.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::event::BlockRef;
use crate::ids::{BlockHash, MAX_HASH_SIZE, MIN_HASH_SIZE};
use crate::storage::ByteWindow;
use crate::storage::Storage;

/// First bytes of every blob file.
pub const MAGIC: &[u8; 6] = b"SYNBLB";
/// The blob format version this build writes (and the newest it reads).
pub const VERSION: u8 = 1;
/// Length of the header before the payload.
pub const HEADER_LEN: usize = 16;
/// Largest `raw_len` a blob may declare (well above the largest block size).
pub const MAX_RAW_LEN: u32 = 64 << 20;

/// Prefix of temp files inside a fan-out folder; never a blob.
const TEMP_PREFIX: &str = ".tmp-";
/// Blocks smaller than this are stored raw (no gain worth a codec).
const MIN_COMPRESS_LEN: usize = 64;
/// Blocks larger than this are probed with a sample before compressing.
const SAMPLE_ABOVE: usize = 32 << 10;
/// Size of the probe sample taken from the middle of a block.
const SAMPLE_LEN: usize = 8 << 10;
/// How many verified hashes the store remembers.
const KNOWN_CAPACITY: usize = 32 * 1024;
/// Most blobs queued for compression later (a hash of at most 33 bytes
/// each); a block stored raw beyond that stays raw.
const DEFERRED_MAX: usize = 1 << 20;

/// How a blob's payload is stored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Codec {
    /// The payload is the block.
    Raw,
    /// The payload is one zstd frame.
    Zstd,
}

impl Codec {
    /// The header byte.
    pub fn to_byte(self) -> u8 {
        match self {
            Codec::Raw => 0,
            Codec::Zstd => 1,
        }
    }

    /// From the header byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

/// A decoded blob header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BlobHeader {
    /// Format version (always [`VERSION`] once decoded).
    pub version: u8,
    /// How the payload is stored.
    pub codec: Codec,
    /// Uncompressed length of the block.
    pub raw_len: u32,
}

/// Why stored bytes are not a valid blob (the store wraps it in
/// [`Error::CorruptBlob`] with the hash and path).
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum BlobError {
    /// Fewer bytes than a header.
    #[error("{0} bytes is shorter than the {HEADER_LEN}-byte blob header (torn write?)")]
    TooShort(usize),
    /// The magic bytes are wrong.
    #[error("bad magic {0:02x?} (not a syncer blob)")]
    BadMagic([u8; 6]),
    /// Written by a newer syncer.
    #[error("blob format version {0} is newer than this syncer supports ({VERSION}); upgrade syncer")]
    NewerVersion(u8),
    /// A version that no syncer ever wrote.
    #[error("unknown blob format version {0}")]
    UnknownVersion(u8),
    /// Codec byte not known.
    #[error("unknown codec {0}")]
    UnknownCodec(u8),
    /// Reserved header bytes are not zero.
    #[error("reserved header bytes are not zero: {0:02x?}")]
    Reserved([u8; 4]),
    /// `raw_len` above [`MAX_RAW_LEN`].
    #[error("declared length {0} is larger than the {MAX_RAW_LEN}-byte limit")]
    TooLarge(u32),
    /// The payload does not decode to `raw_len` bytes.
    #[error("payload decodes to {actual} bytes, header says {declared}")]
    LengthMismatch {
        /// `raw_len` from the header.
        declared: u32,
        /// What came out (for zstd: at least this many).
        actual: u64,
    },
    /// zstd refused the payload.
    #[error("zstd payload does not decode: {0}")]
    Decompress(String),
    /// The content does not hash to the blob's address.
    #[error("content hashes to {actual}, not to its address")]
    HashMismatch {
        /// Hash of the decoded bytes.
        actual: BlockHash,
    },
}

/// Parses the 16-byte header at the start of `stored`.
pub fn decode_header(stored: &[u8]) -> Result<BlobHeader, BlobError> {
    let Some(h) = stored.get(..HEADER_LEN) else {
        return Err(BlobError::TooShort(stored.len()));
    };
    let mut magic = [0u8; 6];
    magic.copy_from_slice(&h[..6]);
    if &magic != MAGIC {
        return Err(BlobError::BadMagic(magic));
    }
    let version = h[6];
    if version > VERSION {
        return Err(BlobError::NewerVersion(version));
    }
    if version != VERSION {
        return Err(BlobError::UnknownVersion(version));
    }
    let codec = Codec::from_byte(h[7]).ok_or(BlobError::UnknownCodec(h[7]))?;
    let raw_len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    let reserved = [h[12], h[13], h[14], h[15]];
    if reserved != [0; 4] {
        return Err(BlobError::Reserved(reserved));
    }
    if raw_len > MAX_RAW_LEN {
        return Err(BlobError::TooLarge(raw_len));
    }
    Ok(BlobHeader { version, codec, raw_len })
}

fn header(codec: Codec, raw_len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..6].copy_from_slice(MAGIC);
    h[6] = VERSION;
    h[7] = codec.to_byte();
    h[8..12].copy_from_slice(&raw_len.to_le_bytes());
    h
}

thread_local! {
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Compresses `src` into `dst` with this thread's compressor; `None` if zstd
/// fails or the output does not fit in `dst` (which means it does not pay).
fn compress_into(src: &[u8], dst: &mut [u8], level: i32) -> Option<usize> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        if !matches!(&*slot, Some((l, _)) if *l == level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, c) = slot.as_mut()?;
        c.compress_to_buffer(src, dst).ok()
    })
}

/// `level`, at most zstd's highest.
fn zstd_level(level: i32) -> i32 {
    level.min(*zstd::compression_level_range().end())
}

/// Whether compressing `data` is worth trying: large blocks are probed with an
/// 8 KiB sample from the middle, so incompressible data costs almost nothing.
fn worth_compressing(data: &[u8], level: i32) -> bool {
    let level = zstd_level(level);
    if data.len() <= SAMPLE_ABOVE {
        return true;
    }
    let start = data.len() / 2 - SAMPLE_LEN / 2;
    let sample = &data[start..start + SAMPLE_LEN];
    // A sample compresses worse than the whole block (less history), so the
    // bar is lower than the 1/8 the whole block must save.
    let mut buf = vec![0u8; SAMPLE_LEN - SAMPLE_LEN / 16];
    compress_into(sample, &mut buf, level).is_some()
}

/// Encodes a block as a blob file: zstd at `level` when that saves at least
/// 1/8 of the size, raw otherwise. `level <= 0` means no compression.
///
/// Blocks longer than [`MAX_RAW_LEN`] are not valid blocks; callers check
/// (the store refuses them). Never panics.
pub fn encode_blob(data: &[u8], level: i32) -> Vec<u8> {
    let raw_len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let level = zstd_level(level);
    if level > 0 && data.len() >= MIN_COMPRESS_LEN && worth_compressing(data, level) {
        // Only output that saves at least 1/8 is kept: give zstd no more room.
        let budget = data.len() - data.len() / 8;
        let mut out = vec![0u8; HEADER_LEN + budget];
        if let Some(n) = compress_into(data, &mut out[HEADER_LEN..], level) {
            if n < budget {
                out[..HEADER_LEN].copy_from_slice(&header(Codec::Zstd, raw_len));
                out.truncate(HEADER_LEN + n);
                out.shrink_to_fit();
                return out;
            }
        }
    }
    let mut out = Vec::with_capacity(HEADER_LEN + data.len());
    out.extend_from_slice(&header(Codec::Raw, raw_len));
    out.extend_from_slice(data);
    out
}

/// Decodes `raw_len` bytes of the zstd payload with this thread's decompressor.
fn decompress(payload: &[u8], raw_len: u32) -> Result<Vec<u8>, BlobError> {
    let cap = raw_len as usize;
    let mut out = Vec::with_capacity(cap);
    let res = DECOMPRESSOR.with(|cell| {
        let mut slot = cell.try_borrow_mut().map_err(|e| e.to_string())?;
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
        }
        match slot.as_mut() {
            Some(d) => d.decompress_to_buffer(payload, &mut out).map_err(|e| e.to_string()),
            None => Err("no zstd decompressor".to_string()),
        }
    });
    match res {
        Ok(n) if n == cap => Ok(out),
        Ok(n) => Err(BlobError::LengthMismatch { declared: raw_len, actual: n as u64 }),
        Err(e) => Err(BlobError::Decompress(e)),
    }
}

/// A blob file's block before the hash check: the raw payload after the
/// header (its length checked), or the decompressed bytes.
enum Decoded {
    Raw,
    Zstd(Vec<u8>),
}

fn decode_payload(stored: &[u8]) -> Result<Decoded, BlobError> {
    let h = decode_header(stored)?;
    let payload = &stored[HEADER_LEN..];
    match h.codec {
        Codec::Raw if payload.len() as u64 != u64::from(h.raw_len) => {
            Err(BlobError::LengthMismatch { declared: h.raw_len, actual: payload.len() as u64 })
        }
        Codec::Raw => Ok(Decoded::Raw),
        // The encoder never writes an empty frame (an empty block is raw),
        // and zstd decodes no bytes to nothing: a flipped codec byte of an
        // empty raw blob would pass the hash check.
        Codec::Zstd if payload.is_empty() => Err(BlobError::Decompress("empty zstd payload".into())),
        Codec::Zstd => decompress(payload, h.raw_len).map(Decoded::Zstd),
    }
}

fn check_hash(data: &[u8], expected: &BlockHash) -> Result<(), BlobError> {
    let actual = BlockHash::of(data, expected.as_bytes().len());
    if actual != *expected {
        return Err(BlobError::HashMismatch { actual });
    }
    Ok(())
}

/// Decodes a blob file and checks that its content hashes to `expected`
/// (with `expected`'s hash size). Never panics, never allocates more than the
/// header's `raw_len` (itself at most [`MAX_RAW_LEN`]).
pub fn decode_blob(stored: &[u8], expected: &BlockHash) -> Result<Vec<u8>, BlobError> {
    let data = match decode_payload(stored)? {
        Decoded::Raw => stored[HEADER_LEN..].to_vec(),
        Decoded::Zstd(data) => data,
    };
    check_hash(&data, expected)?;
    Ok(data)
}

/// [`decode_blob`] of a blob file held in a window: a raw block is the
/// window past the header, not a copy.
pub fn decode_blob_window(stored: ByteWindow, expected: &BlockHash) -> Result<ByteWindow, BlobError> {
    let data = match decode_payload(&stored)? {
        Decoded::Raw => stored.skip(HEADER_LEN),
        Decoded::Zstd(data) => ByteWindow::from(data),
    };
    check_hash(&data, expected)?;
    Ok(data)
}

/// What [`BlobStore::put`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PutOutcome {
    /// The block's address and uncompressed length.
    pub block: BlockRef,
    /// Size of the blob file (header included).
    pub stored_len: u64,
    /// `true` if this call wrote the file; `false` on a dedupe hit.
    pub new: bool,
}

#[derive(Clone, Copy, Debug)]
struct KnownState {
    stored_len: u64,
    /// Synced by this process's `sync_pending`.
    durable: bool,
}

/// A bounded set of hashes whose files were verified (or written) by this
/// process; evicted first in, first out.
#[derive(Default)]
struct Known {
    map: HashMap<BlockHash, KnownState>,
    order: VecDeque<BlockHash>,
    /// Bumped by every [`BlobStore::remove`]: a read that began before an
    /// eviction must not record as present a blob the eviction deleted.
    evictions: u64,
}

impl Known {
    fn get(&self, h: &BlockHash) -> Option<KnownState> {
        self.map.get(h).copied()
    }

    fn insert(&mut self, h: BlockHash, stored_len: u64, durable: bool) {
        match self.map.get_mut(&h) {
            Some(s) => {
                s.stored_len = stored_len;
                s.durable |= durable;
            }
            None => {
                self.map.insert(h, KnownState { stored_len, durable });
                self.order.push_back(h);
                while self.order.len() > KNOWN_CAPACITY {
                    if let Some(old) = self.order.pop_front() {
                        self.map.remove(&old);
                    }
                }
            }
        }
    }
}

/// Blobs put but not yet synced.
#[derive(Default)]
struct Pending {
    blobs: HashSet<BlockHash>,
    /// Fan-out folders created since the last sync (their entry in `blobs/`
    /// must be synced too).
    new_dirs: bool,
}

/// `(free for an unprivileged writer, total)` bytes of the filesystem
/// holding `path`.
pub fn disk_space(path: &std::path::Path) -> Option<(u64, u64)> {
    let vfs = statvfs(path)?;
    #[allow(clippy::unnecessary_cast)] // statvfs fields are 32-bit on some targets
    let frsize = vfs.f_frsize as u64;
    #[allow(clippy::unnecessary_cast)]
    Some(((vfs.f_bavail as u64).saturating_mul(frsize), (vfs.f_blocks as u64).saturating_mul(frsize)))
}

/// Why the filesystem holding `path` would refuse a write now (mounted
/// read-only: EROFS; less than `room` bytes free: ENOSPC), if it would;
/// `None` also when it cannot be asked.
pub fn refuses_writes(path: &std::path::Path, room: u64) -> Option<std::io::Error> {
    let vfs = statvfs(path)?;
    #[allow(clippy::unnecessary_cast)]
    if vfs.f_flag as u64 & libc::ST_RDONLY as u64 != 0 {
        return Some(std::io::Error::from_raw_os_error(libc::EROFS));
    }
    match disk_space(path) {
        Some((free, _)) if free < room => Some(std::io::Error::from_raw_os_error(libc::ENOSPC)),
        _ => None,
    }
}

fn statvfs(path: &std::path::Path) -> Option<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string and `vfs` a plain C
    // struct that statvfs fills in.
    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut vfs) } != 0 {
        return None;
    }
    Some(vfs)
}

/// Most bytes stored between two looks at the free space (see
/// `BlobStore::check_room`).
const ROOM_RECHECK: u64 = 1 << 30;

/// The reserve kept on a filesystem of `total` bytes when `configured` is
/// asked for: at most a sixteenth of the disk, so a small disk still holds
/// data.
pub fn reserve_on(configured: u64, total: u64) -> u64 {
    configured.min(total / 16)
}

/// The block store. `Send + Sync`: every method takes `&self` and may be
/// called from many threads at once.
pub struct BlobStore {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    hash_size: usize,
    level: i32,
    /// Fan-out folders known to exist, by first hash byte.
    dirs_ok: Vec<AtomicBool>,
    known: Mutex<Known>,
    pending: Mutex<Pending>,
    /// Held for a whole `sync_pending`, so a caller never returns from it
    /// while another call is still syncing blobs it took over.
    sync_lock: Mutex<()>,
    /// Compression now or later (see *Compressing under load*).
    deferral: Deferral,
    /// Free disk space that a new blob never uses (see [`BlobStore::put`]).
    reserve: AtomicU64,
    /// Bytes that may still be stored before the free space is looked at
    /// again (see `check_room`).
    unchecked: AtomicU64,
}

/// Running averages of a put's costs per KiB of stored or compressed
/// bytes, in nanoseconds (0 until measured): wall time, so a busy CPU makes
/// compressing dearer and a busy disk makes writing dearer.
#[derive(Default)]
struct Costs {
    compress_ns: AtomicU64,
    write_ns: AtomicU64,
}

impl Costs {
    /// Folds a sample of `ns` for `bytes` into `cell` (an average over the
    /// last eight or so; concurrent updates may drop one, which is fine).
    fn note(cell: &AtomicU64, ns: u128, bytes: usize) {
        let kib = (bytes as u128).div_ceil(1024).max(1);
        let sample = u64::try_from(ns / kib).unwrap_or(u64::MAX).max(1);
        let old = cell.load(Ordering::Relaxed);
        let new = if old == 0 { sample } else { old - old / 8 + sample / 8 };
        cell.store(new.max(1), Ordering::Relaxed);
    }

    fn compress_pays_now(&self) -> bool {
        compression_pays_now(self.compress_ns.load(Ordering::Relaxed), self.write_ns.load(Ordering::Relaxed))
    }
}

/// Whether a put should compress its block now rather than store it raw
/// and compress it when idle: when compressing a KiB takes less time than
/// writing one (the disk, not the CPU, is what holds puts back), or while
/// either cost is unmeasured (0).
pub fn compression_pays_now(compress_ns_per_kib: u64, write_ns_per_kib: u64) -> bool {
    compress_ns_per_kib == 0 || write_ns_per_kib == 0 || compress_ns_per_kib < write_ns_per_kib
}

/// The state behind *Compressing under load*.
struct Deferral {
    /// Puts compressing right now.
    compressing: AtomicUsize,
    /// Most puts that may compress at once.
    slots: AtomicUsize,
    /// Blobs stored raw under load, oldest first.
    queue: Mutex<VecDeque<BlockHash>>,
    /// When a put or a read last began, in milliseconds since `epoch`.
    last_use_ms: AtomicU64,
    epoch: Instant,
    /// Blobs taken off the queue and not yet compressed (or skipped).
    in_hand: AtomicU64,
    /// What compressing and writing have cost lately.
    costs: Costs,
    /// Blocks stored raw under load, and blobs compressed later, since open.
    deferred: AtomicU64,
    compressed_later: AtomicU64,
}

impl Deferral {
    fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Deferral {
            compressing: AtomicUsize::new(0),
            slots: AtomicUsize::new(cores.saturating_sub(1).max(1)),
            queue: Mutex::default(),
            last_use_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            in_hand: AtomicU64::new(0),
            costs: Costs::default(),
            deferred: AtomicU64::new(0),
            compressed_later: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_use_ms.fetch_max(self.now_ms(), Ordering::Relaxed);
    }
}

/// Counters of [`BlobStore`]'s compression under load.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct DeferralStats {
    /// Blocks stored raw under load since the store opened.
    pub deferred: u64,
    /// Of those, compressed since.
    pub compressed_later: u64,
    /// Blobs waiting in the queue now, or being compressed.
    pub queued: u64,
}

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStore")
            .field("dir", &self.dir)
            .field("hash_size", &self.hash_size)
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data are caches and sets that stay consistent on panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl BlobStore {
    /// Opens (creating if missing) the store in `blobs_dir` for a data dir
    /// with `hash_size`-byte hashes, compressing at zstd `level` (0 = off).
    pub fn open(
        storage: Arc<dyn Storage>,
        blobs_dir: impl Into<PathBuf>,
        hash_size: usize,
        level: i32,
    ) -> Result<Self> {
        let dir = blobs_dir.into();
        if !(MIN_HASH_SIZE..=MAX_HASH_SIZE).contains(&hash_size) {
            return Err(Error::Invalid(format!(
                "blob store {}: hash size {hash_size} is not within {MIN_HASH_SIZE}..={MAX_HASH_SIZE}",
                dir.display()
            )));
        }
        if !storage.exists(&dir) {
            storage.create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                storage.sync_dir(parent).map_err(|e| Error::io("sync", parent, e))?;
            }
        }
        Ok(BlobStore {
            storage,
            dir,
            hash_size,
            level,
            dirs_ok: (0..256).map(|_| AtomicBool::new(false)).collect(),
            known: Mutex::default(),
            pending: Mutex::default(),
            sync_lock: Mutex::new(()),
            deferral: Deferral::new(),
            reserve: AtomicU64::new(0),
            unchecked: AtomicU64::new(0),
        })
    }

    /// The folder holding the fan-out folders.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data dir's hash size in bytes.
    pub fn hash_size(&self) -> usize {
        self.hash_size
    }

    /// Where the blob `hash` lives (whether or not it exists).
    pub fn path_of(&self, hash: &BlockHash) -> PathBuf {
        let hex = hash.to_hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// A new temp file name in the fan-out folder of `hash`.
    fn temp_path(&self, hash: &BlockHash) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.fanout_of(hash).join(format!("{TEMP_PREFIX}{}-{n}", std::process::id()))
    }

    fn fanout_of(&self, hash: &BlockHash) -> PathBuf {
        let hex = hash.to_hex();
        self.dir.join(&hex[..2])
    }

    fn corrupt(&self, hash: &BlockHash, reason: impl fmt::Display) -> Error {
        Error::CorruptBlob { hash: *hash, path: self.path_of(hash), reason: reason.to_string() }
    }

    /// Refuses a hash of another size than the store's.
    fn check_hash(&self, hash: &BlockHash) -> Result<()> {
        if hash.as_bytes().len() != self.hash_size {
            return Err(Error::Invalid(format!(
                "blob {hash}: {}-byte hash in a store of {}-byte hashes",
                hash.as_bytes().len(),
                self.hash_size
            )));
        }
        Ok(())
    }

    /// Stores `data` (a block of at most [`MAX_RAW_LEN`] bytes) and returns
    /// its address. An existing valid blob is not rewritten. Not synced: see
    /// [`BlobStore::sync_pending`].
    pub fn put(&self, data: &[u8]) -> Result<PutOutcome> {
        let len = u32::try_from(data.len())
            .ok()
            .filter(|l| *l <= MAX_RAW_LEN)
            .ok_or_else(|| Error::Invalid(format!("block of {} bytes is larger than {MAX_RAW_LEN}", data.len())))?;
        self.deferral.touch();
        let hash = BlockHash::of(data, self.hash_size);
        let block = BlockRef { hash, len };
        if let Some(stored_len) = self.existing(&hash)? {
            return Ok(PutOutcome { block, stored_len, new: false });
        }
        let (stored, deferred) = self.encode_under_load(data);
        self.check_room(stored.len() as u64)?;
        self.write(&hash, &stored)?;
        if deferred {
            self.defer(hash);
        }
        Ok(PutOutcome { block, stored_len: stored.len() as u64, new: true })
    }

    /// Sets the free disk space that new blobs never use (0: none).
    pub fn set_reserve(&self, bytes: u64) {
        self.reserve.store(bytes, Ordering::Relaxed);
    }

    /// Free bytes on the store's filesystem above the reserve (`None`: the
    /// filesystem cannot be asked).
    pub fn room(&self) -> Option<u64> {
        let (free, total) = disk_space(&self.dir)?;
        Some(free.saturating_sub(reserve_on(self.reserve.load(Ordering::Relaxed), total)))
    }

    /// Fails with ENOSPC when writing `bytes` would leave less free space on
    /// the store's filesystem than the reserve: the log, the index and a
    /// clean unmount keep that room, so a full disk refuses new data early
    /// and cleanly instead of failing in the middle of an index commit.
    ///
    /// The free space is not asked for every block: a look leaves a budget
    /// of half the room above the reserve (at most [`ROOM_RECHECK`]), since
    /// other writers and programs use the disk too, and puts spend it.
    fn check_room(&self, bytes: u64) -> Result<()> {
        let reserve = self.reserve.load(Ordering::Relaxed);
        if reserve == 0 {
            return Ok(());
        }
        let spent = self.unchecked.fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| left.checked_sub(bytes));
        if spent.is_ok() {
            return Ok(());
        }
        let Some((free, total)) = disk_space(&self.dir) else { return Ok(()) };
        let keep = reserve_on(reserve, total).saturating_add(bytes);
        if free < keep {
            self.unchecked.store(0, Ordering::Release);
            return Err(Error::Io {
                op: "store a block: free space is down to the data dir's reserve; free some (see README, A full disk)",
                path: self.dir.clone(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            });
        }
        self.unchecked.store(((free - keep) / 2).min(ROOM_RECHECK), Ordering::Release);
        Ok(())
    }

    /// Encodes a block for a put: compressed if it is small (no sample
    /// would tell, and it is quick), or if compressing pays now and a
    /// compression slot is free; else raw, and then `true` if its sample
    /// says it is worth compressing later.
    fn encode_under_load(&self, data: &[u8]) -> (Vec<u8>, bool) {
        let d = &self.deferral;
        if data.len() <= SAMPLE_ABOVE {
            return (encode_blob(data, self.level), false);
        }
        if self.level <= 0 {
            return (encode_blob(data, 0), false);
        }
        if d.costs.compress_pays_now() {
            let slots = d.slots.load(Ordering::Relaxed);
            let slot_free = d.compressing.fetch_add(1, Ordering::AcqRel) < slots;
            let out = slot_free.then(|| self.encode_timed(data));
            d.compressing.fetch_sub(1, Ordering::AcqRel);
            if let Some(out) = out {
                return (out, false);
            }
        }
        (encode_blob(data, 0), worth_compressing(data, self.level))
    }

    /// [`encode_blob`] at the store's level, its time noted in the costs.
    fn encode_timed(&self, data: &[u8]) -> Vec<u8> {
        let t = Instant::now();
        let out = encode_blob(data, self.level);
        Costs::note(&self.deferral.costs.compress_ns, t.elapsed().as_nanos(), data.len());
        out
    }

    fn defer(&self, hash: BlockHash) {
        let mut q = lock(&self.deferral.queue);
        if q.len() < DEFERRED_MAX {
            q.push_back(hash);
            self.deferral.deferred.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many puts may compress at once (see *Compressing under load*).
    pub fn compress_slots(&self) -> usize {
        self.deferral.slots.load(Ordering::Relaxed)
    }

    /// Sets [`BlobStore::compress_slots`]: 0 defers every compressible block
    /// (tests), a large number compresses every block as it comes.
    pub fn set_compress_slots(&self, slots: usize) {
        self.deferral.slots.store(slots, Ordering::Relaxed);
    }

    /// Counters of compression under load.
    pub fn deferral_stats(&self) -> DeferralStats {
        let d = &self.deferral;
        DeferralStats {
            deferred: d.deferred.load(Ordering::Relaxed),
            compressed_later: d.compressed_later.load(Ordering::Relaxed),
            queued: lock(&d.queue).len() as u64 + d.in_hand.load(Ordering::Relaxed),
        }
    }

    /// How long since a put or a read last began.
    pub fn idle_for(&self) -> Duration {
        let d = &self.deferral;
        Duration::from_millis(d.now_ms().saturating_sub(d.last_use_ms.load(Ordering::Relaxed)))
    }

    /// Compresses blobs queued by puts under load, oldest first, while
    /// `go_on` says so (asked before each blob) and the queue lasts.
    /// Returns how many it replaced. A blob gone (evicted) or already
    /// compressed is skipped; one that does not read back as its block is
    /// left alone for reads to report.
    pub fn compress_deferred(&self, mut go_on: impl FnMut() -> bool) -> Result<u64> {
        let mut replaced = 0;
        let d = &self.deferral;
        while go_on() {
            let hash = {
                let mut q = lock(&d.queue);
                let Some(hash) = q.pop_front() else { break };
                d.in_hand.fetch_add(1, Ordering::Relaxed);
                hash
            };
            let done = self.compress_one(&hash);
            if matches!(done, Ok(true)) {
                replaced += 1;
                d.compressed_later.fetch_add(1, Ordering::Relaxed);
            }
            d.in_hand.fetch_sub(1, Ordering::Relaxed);
            done?;
        }
        Ok(replaced)
    }

    /// Replaces the raw blob `hash` by a compressed one, if it still
    /// exists and compressing pays. Whether it did.
    fn compress_one(&self, hash: &BlockHash) -> Result<bool> {
        let path = self.path_of(hash);
        let stored = match self.storage.read(&path) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("read", path, e)),
        };
        if !matches!(decode_header(&stored), Ok(BlobHeader { codec: Codec::Raw, .. })) {
            return Ok(false);
        }
        let data = match decode_blob(&stored, hash) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(blob = %hash, path = %path.display(), "not compressing a damaged blob: {e}");
                return Ok(false);
            }
        };
        let packed = self.encode_timed(&data);
        if !matches!(decode_header(&packed), Ok(BlobHeader { codec: Codec::Zstd, .. })) {
            return Ok(false);
        }
        let tmp = self.temp_path(hash);
        let written = self
            .storage
            .write_streaming(&tmp, &packed)
            .and_then(|()| self.storage.sync_file(&tmp))
            .map_err(|e| Error::io("write", &tmp, e));
        // Under the sync lock, so that an eviction (which takes it too)
        // either happens first, and the blob is not brought back, or after.
        let _sync = lock(&self.sync_lock);
        let replaced = written.and_then(|()| {
            if !self.storage.exists(&path) {
                return Ok(false);
            }
            self.storage.rename(&tmp, &path).map_err(|e| Error::io("rename", &tmp, e))?;
            // The old blob may be durable and referenced by the durable log:
            // its replacement must be as durable before anyone moves on.
            let fanout = self.fanout_of(hash);
            self.storage.sync_dir(&fanout).map_err(|e| Error::io("sync", &fanout, e))?;
            Ok(true)
        });
        if !matches!(replaced, Ok(true)) {
            let _ = self.storage.remove_file(&tmp);
        }
        if matches!(replaced, Ok(true)) {
            let mut known = lock(&self.known);
            if let Some(k) = known.get(hash) {
                known.map.insert(*hash, KnownState { stored_len: packed.len() as u64, ..k });
            }
        }
        replaced
    }

    /// Stores a blob file fetched from elsewhere (a remote) as is, after
    /// checking that it decodes to `hash`. Not synced, like [`BlobStore::put`].
    pub fn put_raw_verified(&self, hash: &BlockHash, stored: &[u8]) -> Result<PutOutcome> {
        self.put_raw_verified_data(hash, stored).map(|(outcome, _)| outcome)
    }

    /// [`BlobStore::put_raw_verified`], also handing back the decoded bytes
    /// (a fetch that reads the block decodes it once, not twice).
    pub fn put_raw_verified_data(&self, hash: &BlockHash, stored: &[u8]) -> Result<(PutOutcome, Vec<u8>)> {
        self.check_hash(hash)?;
        let data = decode_blob(stored, hash).map_err(|e| self.corrupt(hash, format!("fetched copy: {e}")))?;
        let block = BlockRef { hash: *hash, len: data.len() as u32 };
        if let Some(stored_len) = self.existing(hash)? {
            return Ok((PutOutcome { block, stored_len, new: false }, data));
        }
        self.write(hash, stored)?;
        Ok((PutOutcome { block, stored_len: stored.len() as u64, new: true }, data))
    }

    /// On a dedupe hit, the stored length of the valid existing blob (and
    /// the blob is queued for the next sync unless this process synced it).
    /// `None` if it must be written: absent, or a damaged leftover.
    fn existing(&self, hash: &BlockHash) -> Result<Option<u64>> {
        if let Some(k) = lock(&self.known).get(hash) {
            if !k.durable {
                lock(&self.pending).blobs.insert(*hash);
            }
            return Ok(Some(k.stored_len));
        }
        let path = self.path_of(hash);
        if !self.storage.exists(&path) {
            return Ok(None);
        }
        let stored = match self.storage.read(&path) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", path, e)),
        };
        match decode_blob(&stored, hash) {
            Ok(_) => {
                // Valid, but maybe only in the page cache of a process that
                // died before syncing it: sync it before anyone relies on it.
                lock(&self.known).insert(*hash, stored.len() as u64, false);
                lock(&self.pending).blobs.insert(*hash);
                Ok(Some(stored.len() as u64))
            }
            Err(e) => {
                tracing::warn!(blob = %hash, path = %path.display(), "replacing damaged blob: {e}");
                Ok(None)
            }
        }
    }

    /// Writes a blob file through a temp file and a rename; queues it for sync.
    fn write(&self, hash: &BlockHash, stored: &[u8]) -> Result<()> {
        let fanout = self.fanout_of(hash);
        let first = usize::from(hash.as_bytes()[0]);
        if !self.dirs_ok[first].load(Ordering::Acquire) {
            if !self.storage.exists(&fanout) {
                self.storage.create_dir_all(&fanout).map_err(|e| Error::io("create", &fanout, e))?;
                lock(&self.pending).new_dirs = true;
            }
            self.dirs_ok[first].store(true, Ordering::Release);
        }
        let tmp = self.temp_path(hash);
        let path = self.path_of(hash);
        let t = Instant::now();
        self.storage.write_streaming(&tmp, stored).map_err(|e| Error::io("write", &tmp, e))?;
        Costs::note(&self.deferral.costs.write_ns, t.elapsed().as_nanos(), stored.len());
        if let Err(e) = self.storage.rename(&tmp, &path) {
            let _ = self.storage.remove_file(&tmp);
            return Err(Error::io("rename", &tmp, e));
        }
        // Pending before known: whoever sees it known finds it queued.
        lock(&self.pending).blobs.insert(*hash);
        lock(&self.known).insert(*hash, stored.len() as u64, false);
        Ok(())
    }

    /// Makes every blob put (or found unsynced) since the last call durable:
    /// syncs each file, then each fan-out folder holding one, then `blobs/`
    /// itself if a fan-out folder was created. Call it before committing a
    /// log event that references those blobs. On error, the blobs stay queued.
    pub fn sync_pending(&self) -> Result<()> {
        let _sync = lock(&self.sync_lock);
        let (mut blobs, new_dirs) = {
            let mut p = lock(&self.pending);
            (std::mem::take(&mut p.blobs), std::mem::take(&mut p.new_dirs))
        };
        if blobs.is_empty() && !new_dirs {
            return Ok(());
        }
        let missing = Mutex::new(Vec::new());
        let res = self.sync_batch(&blobs, new_dirs, &missing);
        let missing = missing.into_inner().unwrap_or_else(|e| e.into_inner());
        if res.is_err() {
            // A missing blob is not queued again (it would fail every later
            // sync) and is forgotten, so that the next put writes it again.
            let mut known = lock(&self.known);
            for h in &missing {
                blobs.remove(h);
                known.map.remove(h);
            }
            drop(known);
            let mut p = lock(&self.pending);
            p.blobs.extend(blobs);
            p.new_dirs |= new_dirs;
        } else {
            let mut known = lock(&self.known);
            for h in &blobs {
                if let Some(k) = known.get(h) {
                    known.insert(*h, k.stored_len, true);
                }
            }
        }
        res
    }

    /// Syncs `blobs` and their folders. A blob whose file is gone is added
    /// to `missing` and fails the batch with [`Error::MissingBlob`]: an event
    /// that refers to it must not become durable.
    fn sync_batch(&self, blobs: &HashSet<BlockHash>, new_dirs: bool, missing: &Mutex<Vec<BlockHash>>) -> Result<()> {
        let files: Vec<(BlockHash, PathBuf)> = blobs.iter().map(|h| (*h, self.path_of(h))).collect();
        let sync_files = |chunk: &[(BlockHash, PathBuf)]| -> Result<()> {
            let mut gone = None;
            for (h, p) in chunk {
                match self.storage.sync_file(p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        lock(missing).push(*h);
                        gone = Some(*h);
                    }
                    Err(e) => return Err(Error::io("sync", p, e)),
                }
            }
            gone.map_or(Ok(()), |h| Err(Error::MissingBlob(h)))
        };
        // fsyncs are latency-bound: spread a big batch over a few threads.
        const PER_THREAD: usize = 32;
        if files.len() > PER_THREAD {
            let threads = files.len().div_ceil(PER_THREAD).min(8);
            let chunk = files.len().div_ceil(threads);
            std::thread::scope(|s| {
                let handles: Vec<_> = files.chunks(chunk).map(|c| s.spawn(move || sync_files(c))).collect();
                handles.into_iter().try_for_each(|h| {
                    h.join().unwrap_or_else(|_| Err(Error::Invalid("blob sync thread panicked".into())))
                })
            })?;
        } else {
            sync_files(&files)?;
        }
        let dirs: HashSet<PathBuf> = blobs.iter().map(|h| self.fanout_of(h)).collect();
        for d in &dirs {
            self.storage.sync_dir(d).map_err(|e| Error::io("sync", d, e))?;
        }
        if new_dirs {
            self.storage.sync_dir(&self.dir).map_err(|e| Error::io("sync", &self.dir, e))?;
        }
        Ok(())
    }

    /// The block `hash`, verified. [`Error::MissingBlob`] if it is not stored
    /// here; [`Error::CorruptBlob`] naming the file if it does not decode to
    /// its address.
    pub fn get(&self, hash: &BlockHash) -> Result<Vec<u8>> {
        self.get_window(hash, false).map(ByteWindow::into_vec)
    }

    /// [`BlobStore::get`], handed back in the buffer the blob was read into
    /// (a raw block is not copied past its header). `streaming`: a block
    /// read once (ahead of a sequential reader), read past the OS's cache
    /// where it can be (see [`Storage::read_streaming`]).
    pub fn get_window(&self, hash: &BlockHash, streaming: bool) -> Result<ByteWindow> {
        self.deferral.touch();
        let evictions = lock(&self.known).evictions;
        let stored = if streaming {
            self.read_file(hash, |p| self.storage.read_streaming(p))?
        } else {
            self.read_file(hash, |p| self.storage.read(p))?.into()
        };
        let stored_len = stored.len() as u64;
        let data = decode_blob_window(stored, hash).map_err(|e| self.corrupt(hash, e))?;
        self.note_read(hash, stored_len, evictions);
        Ok(data)
    }

    /// Records that a read found a valid blob `hash` of `stored_len` bytes,
    /// unless an eviction ran since the read began (`evictions` then): the
    /// file may be gone, and a put trusting this would not write it again.
    fn note_read(&self, hash: &BlockHash, stored_len: u64, evictions: u64) {
        let mut known = lock(&self.known);
        if known.evictions == evictions {
            known.insert(*hash, stored_len, false);
        }
    }

    /// The blob file of `hash` read with `read`; [`Error::MissingBlob`] if
    /// there is none.
    fn read_file<T>(&self, hash: &BlockHash, read: impl FnOnce(&Path) -> io::Result<T>) -> Result<T> {
        let path = self.path_of(hash);
        match read(&path) {
            Ok(s) => Ok(s),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::MissingBlob(*hash)),
            Err(e) => Err(Error::io("read", path, e)),
        }
    }

    /// The blob file's bytes as stored (header included), unverified: for
    /// shipping to a remote, which verifies on fetch.
    pub fn get_stored(&self, hash: &BlockHash) -> Result<Vec<u8>> {
        self.read_file(hash, |p| self.storage.read(p))
    }

    /// Whether a file for `hash` exists (not verified).
    pub fn contains(&self, hash: &BlockHash) -> bool {
        self.storage.exists(&self.path_of(hash))
    }

    /// Size of the blob file for `hash` (header included).
    pub fn stored_len(&self, hash: &BlockHash) -> Result<u64> {
        let path = self.path_of(hash);
        match self.storage.file_len(&path) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::MissingBlob(*hash)),
            Err(e) => Err(Error::io("stat", path, e)),
        }
    }

    /// Deletes the blob `hash` (cache eviction). Returns whether it existed.
    /// Not synced: a crash may bring it back, which is harmless.
    pub fn remove(&self, hash: &BlockHash) -> Result<bool> {
        // Never while a sync runs: it may have taken this blob off the
        // pending set and would then find its file gone.
        let _sync = lock(&self.sync_lock);
        let path = self.path_of(hash);
        {
            let mut known = lock(&self.known);
            known.map.remove(hash);
            known.evictions += 1;
        }
        lock(&self.pending).blobs.remove(hash);
        match self.storage.remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("remove", path, e)),
        }
    }

    /// Every stored blob's address (unverified), in no particular order.
    /// Names that are not blobs of this store are skipped with a warning;
    /// temp files are ignored.
    pub fn list(&self) -> Result<Vec<BlockHash>> {
        let mut out = Vec::new();
        let top = match self.storage.list_dir(&self.dir) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io("list", &self.dir, e)),
        };
        for fan in top {
            let Some(fan_name) = fan.to_str().filter(|n| is_fanout_name(n)) else {
                tracing::warn!(path = %self.dir.join(&fan).display(), "not a blob folder; skipped");
                continue;
            };
            let fan_dir = self.dir.join(fan_name);
            let names = match self.storage.list_dir(&fan_dir) {
                Ok(n) => n,
                Err(e) => return Err(Error::io("list", &fan_dir, e)),
            };
            for name in names {
                if is_temp(&name) {
                    continue;
                }
                match self.parse_name(fan_name, &name) {
                    Some(h) => out.push(h),
                    None => {
                        tracing::warn!(path = %fan_dir.join(&name).display(), "not a blob file name; skipped")
                    }
                }
            }
        }
        Ok(out)
    }

    fn parse_name(&self, fan: &str, name: &OsStr) -> Option<BlockHash> {
        let name = name.to_str()?;
        if name.len() != 2 * self.hash_size || !name.starts_with(fan) {
            return None;
        }
        name.parse().ok()
    }

    /// Deletes temp files left by an interrupted put (e.g. a crash). Call it
    /// only while no put runs (at open, before serving). Returns how many.
    pub fn remove_temp_files(&self) -> Result<usize> {
        let mut removed = 0;
        let top = match self.storage.list_dir(&self.dir) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io("list", &self.dir, e)),
        };
        for fan in top.iter().filter_map(|f| f.to_str()).filter(|f| is_fanout_name(f)) {
            let fan_dir = self.dir.join(fan);
            let names = self.storage.list_dir(&fan_dir).map_err(|e| Error::io("list", &fan_dir, e))?;
            for name in names.iter().filter(|n| is_temp(n)) {
                let p = fan_dir.join(name);
                match self.storage.remove_file(&p) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("remove", p, e)),
                }
            }
        }
        Ok(removed)
    }
}

fn is_fanout_name(n: &str) -> bool {
    n.len() == 2 && n.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_temp(name: &OsStr) -> bool {
    name.as_encoded_bytes().starts_with(TEMP_PREFIX.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_raced_an_eviction_does_not_mark_the_blob_present() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(Arc::new(crate::storage::FsStorage), dir.path().join("b"), 32, 1).expect("open");
        let h = BlockHash::of(b"block", 32);
        let before = lock(&store.known).evictions;
        store.remove(&h).expect("evict");
        store.note_read(&h, 5, before);
        assert!(lock(&store.known).get(&h).is_none(), "a read from before the eviction recorded the blob");
        let now = lock(&store.known).evictions;
        store.note_read(&h, 5, now);
        assert!(lock(&store.known).get(&h).is_some());
    }

    /// A compressible block put while every compression slot is taken is
    /// stored raw and queued; compressing the queue later replaces it by a
    /// smaller blob of the same block, skips one evicted meanwhile (never
    /// bringing it back), and never queues an incompressible block.
    #[test]
    fn a_block_put_under_load_is_stored_raw_and_compressed_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(Arc::new(crate::storage::FsStorage), dir.path().join("b"), 32, 1).expect("open");
        let text = |seed: u8| -> Vec<u8> {
            (0..256 << 10).map(|i: u32| b"photo IMG_ lens "[(i % 16) as usize] ^ seed).collect()
        };
        let mut random = vec![0u8; 256 << 10];
        rand::fill(&mut random[..]);
        let raw_len = HEADER_LEN as u64 + (256 << 10);

        store.set_compress_slots(0);
        let kept = store.put(&text(0)).expect("put").block;
        let evicted = store.put(&text(1)).expect("put").block;
        let incompressible = store.put(&random).expect("put").block;
        for b in [kept, evicted, incompressible] {
            assert_eq!(store.stored_len(&b.hash).expect("stored"), raw_len, "stored raw under load");
        }
        assert_eq!(store.deferral_stats(), DeferralStats { deferred: 2, compressed_later: 0, queued: 2 });
        assert!(store.remove(&evicted.hash).expect("evict"));

        assert_eq!(store.compress_deferred(|| false).expect("compress"), 0, "stops when told");
        assert_eq!(store.compress_deferred(|| true).expect("compress"), 1);
        assert!(store.stored_len(&kept.hash).expect("stored") < raw_len / 4, "compressed in place");
        assert_eq!(store.get(&kept.hash).expect("read back"), text(0));
        assert!(!store.contains(&evicted.hash), "an evicted blob is not brought back");
        assert_eq!(store.get(&incompressible.hash).expect("read back"), random);
        assert_eq!(store.deferral_stats(), DeferralStats { deferred: 2, compressed_later: 1, queued: 0 });
        assert_eq!(store.remove_temp_files().expect("temp files"), 0, "no temp file left behind");

        // With a free slot and nothing measured yet, a put compresses.
        let fresh = BlobStore::open(Arc::new(crate::storage::FsStorage), dir.path().join("c"), 32, 1).expect("open");
        fresh.set_compress_slots(1);
        let at_once = fresh.put(&text(2)).expect("put").block;
        assert!(fresh.stored_len(&at_once.hash).expect("stored") < raw_len / 4, "a free slot compresses at once");
        assert_eq!(fresh.deferral_stats().deferred, 0);
    }

    #[test]
    fn compression_pays_now_while_it_is_cheaper_than_the_write_or_unmeasured() {
        assert!(compression_pays_now(0, 0));
        assert!(compression_pays_now(0, 500));
        assert!(compression_pays_now(500, 0));
        assert!(compression_pays_now(400, 500), "a slow disk: compress now");
        assert!(!compression_pays_now(500, 500));
        assert!(!compression_pays_now(3000, 900), "a fast disk, text-like data: later");
    }

    #[test]
    fn header_layout_is_stable() {
        let b = encode_blob(b"hello", 1);
        assert_eq!(&b[..6], b"SYNBLB");
        assert_eq!(b[6], 1);
        assert_eq!(b[7], 0);
        assert_eq!(&b[8..12], &5u32.to_le_bytes());
        assert_eq!(&b[12..16], &[0; 4]);
        assert_eq!(&b[16..], b"hello");
    }

    #[test]
    fn compressible_data_is_compressed_and_random_is_not() {
        let zeros = vec![0u8; 1 << 20];
        let b = encode_blob(&zeros, 1);
        assert_eq!(b[7], 1);
        assert!(b.len() < 1000);
        let mut random = vec![0u8; 1 << 20];
        rand::fill(&mut random[..]);
        let b = encode_blob(&random, 1);
        assert_eq!(b[7], 0);
        assert_eq!(b.len(), HEADER_LEN + random.len());
        assert_eq!(encode_blob(&zeros, 0)[7], 0, "level 0 is off");
    }

    #[test]
    fn zstd_bomb_is_refused_without_allocating() {
        let zeros = vec![0u8; 1 << 20];
        let mut b = encode_blob(&zeros, 1);
        b[8..12].copy_from_slice(&1000u32.to_le_bytes());
        let h = BlockHash::of(&zeros, 32);
        let err = decode_blob(&b, &h).expect_err("a bomb must not decode");
        assert!(matches!(err, BlobError::Decompress(_) | BlobError::LengthMismatch { .. }), "{err:?}");
    }
}
