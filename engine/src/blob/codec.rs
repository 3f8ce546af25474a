//! The blob file codec: header, compression and decoding (the format is
//! documented in the parent module).

use super::{MIN_COMPRESS_LEN, SAMPLE_ABOVE, SAMPLE_LEN};
use crate::ids::BlockHash;
use crate::storage::ByteWindow;

/// First bytes of every blob file.
pub const MAGIC: &[u8; 6] = b"SYNBLB";
/// The blob format version this build writes (and the newest it reads).
pub const VERSION: u8 = 1;
/// Length of the header before the payload.
pub const HEADER_LEN: usize = 16;
/// Largest `raw_len` a blob may declare (well above the largest block size).
pub const MAX_RAW_LEN: u32 = 64 << 20;
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
    pub(crate) fn from_byte(b: u8) -> Option<Self> {
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

pub(super) fn header(codec: Codec, raw_len: u32) -> [u8; HEADER_LEN] {
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
pub(super) fn compress_into(src: &[u8], dst: &mut [u8], level: i32) -> Option<usize> {
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
pub(super) fn zstd_level(level: i32) -> i32 {
    level.min(*zstd::compression_level_range().end())
}

/// Whether compressing `data` is worth trying: large blocks are probed with an
/// 8 KiB sample from the middle, so incompressible data costs almost nothing.
pub(super) fn worth_compressing(data: &[u8], level: i32) -> bool {
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
pub(super) fn decompress(payload: &[u8], raw_len: u32) -> Result<Vec<u8>, BlobError> {
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
pub(super) enum Decoded {
    Raw,
    Zstd(Vec<u8>),
}

pub(super) fn decode_payload(stored: &[u8]) -> Result<Decoded, BlobError> {
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

pub(super) fn check_hash(data: &[u8], expected: &BlockHash) -> Result<(), BlobError> {
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
