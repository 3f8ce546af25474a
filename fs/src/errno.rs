//! The one place where engine errors become errno values.

use engine::{Error, FsError};
use fuser::Errno;

/// Maps an engine error to the errno the kernel gets.
///
/// POSIX refusals ([`Error::Fs`]) map one to one; a full disk, an exceeded
/// quota and a read-only disk (the OS's ENOSPC, EDQUOT, EROFS, whichever
/// write met it) reach the caller as themselves, since programs know how
/// to report those; everything else (other I/O, corrupt or missing blobs,
/// index failures) is an `EIO`, logged here with what and where so the
/// user can act on it.
pub(crate) fn errno(e: &Error) -> Errno {
    match e.fs_error() {
        Some(FsError::NotFound) => Errno::ENOENT,
        Some(FsError::Exists) => Errno::EEXIST,
        Some(FsError::NotDir) => Errno::ENOTDIR,
        Some(FsError::IsDir) => Errno::EISDIR,
        Some(FsError::NotEmpty) => Errno::ENOTEMPTY,
        Some(FsError::InvalidName) => Errno::EINVAL,
        Some(FsError::NameTooLong) => Errno::ENAMETOOLONG,
        Some(FsError::MoveIntoSelf) => Errno::EINVAL,
        Some(FsError::ReadOnly) => Errno::EROFS,
        Some(FsError::NotPermitted) => Errno::EPERM,
        Some(FsError::Invalid) => Errno::EINVAL,
        Some(FsError::NoAttr) => Errno::NO_XATTR,
        Some(FsError::WrongKind) => Errno::EINVAL,
        Some(other) => {
            tracing::error!(error = %e, "unmapped engine condition {other:?}; returning EIO");
            Errno::EIO
        }
        None => match e.os_error() {
            Some(code @ (libc::ENOSPC | libc::EDQUOT | libc::EROFS)) => {
                tracing::warn!(error = %e, "no room (or a read-only disk): returning it as it is");
                Errno::from_i32(code)
            }
            _ => {
                tracing::error!(error = %e, "engine failure; returning EIO");
                Errno::EIO
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::ids::NodeId;

    #[test]
    fn posix_conditions_map_one_to_one() {
        let cases = [
            (FsError::NotFound, libc::ENOENT),
            (FsError::Exists, libc::EEXIST),
            (FsError::NotDir, libc::ENOTDIR),
            (FsError::IsDir, libc::EISDIR),
            (FsError::NotEmpty, libc::ENOTEMPTY),
            (FsError::InvalidName, libc::EINVAL),
            (FsError::NameTooLong, libc::ENAMETOOLONG),
            (FsError::MoveIntoSelf, libc::EINVAL),
            (FsError::ReadOnly, libc::EROFS),
            (FsError::NotPermitted, libc::EPERM),
            (FsError::Invalid, libc::EINVAL),
            (FsError::NoAttr, libc::ENODATA),
            (FsError::WrongKind, libc::EINVAL),
        ];
        for (fs, code) in cases {
            assert_eq!(errno(&Error::fs(NodeId::ROOT, fs)).code(), code, "{fs:?}");
        }
    }

    #[test]
    fn a_full_disk_a_quota_and_a_read_only_disk_reach_the_caller_as_themselves() {
        for code in [libc::ENOSPC, libc::EDQUOT, libc::EROFS] {
            let e = Error::io("append", "/data/log", std::io::Error::from_raw_os_error(code));
            assert_eq!(errno(&e).code(), code);
        }
        let e = Error::io("read", "/data/blobs/x", std::io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(errno(&e).code(), libc::EIO);
    }

    #[test]
    fn other_failures_are_eio() {
        let e = Error::io("read", "/nowhere", std::io::Error::other("boom"));
        assert_eq!(errno(&e).code(), libc::EIO);
        assert_eq!(errno(&Error::Invalid("x".into())).code(), libc::EIO);
    }
}
