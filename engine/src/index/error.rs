//! Index failures as [`Error`]s. [`IndexError`] is defined beside
//! [`Error`] in `crate::error`, since each holds the other; this module
//! wraps redb's errors into them.

use std::path::Path;

use crate::error::{Error, IndexError};

/// `e`, a failure of redb doing `op`, on the index at `path`.
pub(super) fn ix(path: &Path, op: &'static str, e: impl Into<redb::Error>) -> Error {
    IndexError::redb(op, e).at(path)
}
