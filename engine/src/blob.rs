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

mod codec;
mod deferral;
mod room;
mod store;

pub use codec::{
    decode_blob, decode_blob_window, decode_header, encode_blob, BlobError, BlobHeader, Codec, HEADER_LEN, MAGIC,
    MAX_RAW_LEN, VERSION,
};
pub use deferral::{compression_pays_now, DeferralStats};
pub use room::{disk_space, refuses_writes, reserve_on};
pub(crate) use store::relative_path;
pub use store::{BlobStore, PutOutcome, StoreChanges, CHANGES_WRITTEN_MAX};

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
const DEFERRED_MAX: usize = 1 << 17;
