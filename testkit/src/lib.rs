//! syncer's test kit: the code the test suites and fuzz targets share, kept
//! out of the library crates (which carry no test code). Not published; the
//! crates use it only as a dev-dependency (`fuzz/` as a dependency).
//!
//! - [`gen`]: the one random event generator, built from bytes; the fuzz
//!   bodies feed it their input, the property tests proptest's bytes;
//! - [`fuzz`]: the bodies of the cargo-fuzz targets, replayed as tests by
//!   `engine/tests/fuzz_regressions.rs`;
//! - [`sim`]: the replica simulator and its proptest action generator, for
//!   merge property tests;
//! - [`mount`]: a fresh data dir mounted in-process ([`mount::Mounted`]),
//!   guards for mounts and tmpfs disks made by the tests (feature `mount`,
//!   on by default; the fuzz targets go without it and fuser);
//! - [`sys`]: raw syscall helpers (xattrs, errno), deterministic data and
//!   tree walks;
//! - [`sshd`]: a private sshd on localhost for the ssh remote tests.
//!
//! Everything here is test code: a panic is a failed test, not a lost file.
//! It uses only the engine's public API.

// Test code: a panic on unexpected data is how a test or fuzz body reports
// the bug it found, so `unwrap`/`expect` are the right tools here.
#![allow(clippy::unwrap_used)]

pub mod fuzz;
pub mod gen;
#[cfg(feature = "mount")]
pub mod mount;
pub mod sim;
pub mod sshd;
pub mod sys;
