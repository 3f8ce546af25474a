//! Limits every part of the engine checks names and values against (a leaf
//! module: the merge and the live tree both read it, neither owns it).
//!
//! Always true: a name or value over these limits is refused before it
//! reaches the log, never stored and cut later.

/// Longest name in a directory, as on most Unix filesystems.
pub const NAME_MAX: usize = 255;

/// Largest extended attribute value, as Linux's `XATTR_SIZE_MAX` (and ext4):
/// a bigger one is refused, never stored (a FUSE mount never passes one on:
/// the kernel answers E2BIG first).
pub const XATTR_VALUE_MAX: usize = 64 << 10;
