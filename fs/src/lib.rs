//! syncer's FUSE adapter: mounts a [`Tree`] (the live tree, read-write, or a
//! point-in-time view, read-only) as a POSIX tree.
//!
//! Always true:
//! - every mutation goes through the engine (so into the log); the only
//!   state kept here is derived (the inode table, open-directory cookies)
//!   or not yet committed (buffered writes, see `writeback`);
//! - when [`mount`] returns or [`MountHandle::unmount`] finishes, every
//!   buffered write is committed and `engine.sync()` has run;
//! - reads never update atime (the mount behaves as `noatime`);
//! - the kernel may cache names and attributes for [`LIVE_TTL`] (files
//!   with buffered writes: 1 s); every name it may hold is in the inode
//!   table, and after each import of peers' changes every one of them that
//!   no longer leads to the same node is invalidated, then every known
//!   inode's attributes and pages;
//! - hardlinks are refused with `EPERM` (`docs/DESIGN.md`: one parent per node);
//! - POSIX ACLs are enforced by the kernel when it agreed to
//!   `FUSE_POSIX_ACL` at init and [`MountOptions::acl`] asked for it;
//!   otherwise their xattr names are refused with `EOPNOTSUPP` (see `acl`).
//!
//! Layout: `adapter` is the thin `fuser::Filesystem` impl; `ops` holds the
//! logic as plain `Result<_, Errno>` methods; `errno` is the single engine
//! error → errno mapping; `inodes` the ino table; `dircursor` the offsets
//! (cookies) of open directories, read a page at a time; `writeback` the
//! buffered write path with its hashing workers. How this crate fits with the others,
//! and the rules every change keeps: `docs/DESIGN.md` at the repository root.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::{LiveTree, PastView, TreeRead};
use fuser::{Config, MountOption, SessionACL};

mod acl;
mod adapter;
mod attr;
mod dircursor;
mod errno;
mod inodes;
pub mod mountinfo;
mod ops;
mod writeback;

use adapter::SyncerFs;
pub use adapter::LIVE_TTL;
use ops::Core;

/// What a mount serves: reads go through [`TreeRead`], changes through the
/// live tree, which a point-in-time view does not have (so every change is
/// refused with EROFS, and the mount is read-only).
#[derive(Clone, Debug)]
pub enum Tree {
    /// The live tree, read-write.
    Live(Arc<LiveTree>),
    /// A point-in-time view, read-only.
    Past(Arc<PastView>),
}

impl Tree {
    /// What reads go through.
    pub fn reads(&self) -> Arc<dyn TreeRead> {
        match self {
            Tree::Live(t) => t.clone(),
            Tree::Past(v) => v.clone(),
        }
    }

    /// What changes go through, if anything.
    pub fn live(&self) -> Option<Arc<LiveTree>> {
        match self {
            Tree::Live(t) => Some(t.clone()),
            Tree::Past(_) => None,
        }
    }
}

impl From<Arc<LiveTree>> for Tree {
    fn from(t: Arc<LiveTree>) -> Tree {
        Tree::Live(t)
    }
}

impl From<Arc<PastView>> for Tree {
    fn from(v: Arc<PastView>) -> Tree {
        Tree::Past(v)
    }
}

/// How to mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOptions {
    /// Let other users than the mounting one in (`allow_other`).
    pub allow_other: bool,
    /// Mount read-only (always so for a point-in-time view).
    pub read_only: bool,
    /// The source shown in `/proc/mounts`: the data dir path.
    pub fsname: String,
    /// FUSE request threads (each gets its own cloned `/dev/fuse` fd).
    pub threads: usize,
    /// Bound on memory held by buffered, uncommitted writes, in bytes.
    pub dirty_limit: u64,
    /// Further mount options, as for `mount -o` (e.g. `noexec`, `nosuid`).
    pub extra: Vec<String>,
    /// The kernel's read-ahead for the mount, in KiB (0: the kernel's
    /// default, 128 KiB for FUSE). See [`set_read_ahead`].
    pub read_ahead_kib: u32,
    /// POSIX ACLs (`acl`, the default; `noacl` refuses the ACL xattrs with
    /// EOPNOTSUPP, as a kernel without FUSE_POSIX_ACL makes it).
    pub acl: bool,
}

impl MountOptions {
    /// Defaults for a data dir: read-write, 4 threads, 256 MiB dirty bound,
    /// 1 MiB read-ahead.
    pub fn new(fsname: impl Into<String>) -> Self {
        MountOptions {
            allow_other: false,
            read_only: false,
            fsname: fsname.into(),
            threads: 4,
            dirty_limit: 256 << 20,
            extra: Vec::new(),
            read_ahead_kib: 1024,
            acl: true,
        }
    }
}

/// Why mounting, serving or unmounting failed.
#[derive(Debug, thiserror::Error)]
pub enum FsMountError {
    /// The kernel mount failed (bad mountpoint, no /dev/fuse, no permission).
    #[error("mounting on {mountpoint}: {source}")]
    Mount {
        /// Where.
        mountpoint: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Serving requests failed.
    #[error("FUSE session on {mountpoint}: {source}")]
    Session {
        /// Where.
        mountpoint: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Unmounting failed (e.g. busy).
    #[error("unmounting {mountpoint}: {source}")]
    Unmount {
        /// Where.
        mountpoint: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Buffered writes could not be committed or synced at unmount; the
    /// log says which node (see the error-level messages before this one).
    #[error("committing buffered writes on {mountpoint} failed: {errno}")]
    Flush {
        /// Where.
        mountpoint: PathBuf,
        /// The errno of the first failure.
        errno: i32,
    },
    /// Hashing worker threads could not be started.
    #[error("starting worker threads: {0}")]
    Threads(#[source] io::Error),
}

/// A mount option from its `mount -o` spelling.
fn parse_option(s: &str) -> MountOption {
    match s {
        "auto_unmount" => MountOption::AutoUnmount,
        "default_permissions" => MountOption::DefaultPermissions,
        "dev" => MountOption::Dev,
        "nodev" => MountOption::NoDev,
        "suid" => MountOption::Suid,
        "nosuid" => MountOption::NoSuid,
        "ro" => MountOption::RO,
        "rw" => MountOption::RW,
        "exec" => MountOption::Exec,
        "noexec" => MountOption::NoExec,
        "atime" => MountOption::Atime,
        "noatime" => MountOption::NoAtime,
        "dirsync" => MountOption::DirSync,
        "sync" => MountOption::Sync,
        "async" => MountOption::Async,
        x => match (x.strip_prefix("fsname="), x.strip_prefix("subtype=")) {
            (Some(n), _) => MountOption::FSName(n.into()),
            (_, Some(t)) => MountOption::Subtype(t.into()),
            _ => MountOption::CUSTOM(x.into()),
        },
    }
}

/// The fuser configuration for `opts` on `tree`.
fn fuse_config(tree: &Tree, opts: &MountOptions) -> Config {
    let read_only = opts.read_only || tree.live().is_none();
    let mut mount_options = vec![
        MountOption::FSName(opts.fsname.clone()),
        // fuser's direct mount(2) path ignores `Subtype`; the kernel takes
        // `subtype=` itself, and fusermount3 reads it from the same string.
        MountOption::CUSTOM("subtype=syncer".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        if read_only { MountOption::RO } else { MountOption::RW },
    ];
    for o in opts.extra.iter().map(|s| parse_option(s)) {
        let conflicts =
            matches!((&o, read_only), (MountOption::RW, true) | (MountOption::RO, false) | (MountOption::Atime, _))
                || matches!(o, MountOption::FSName(_) | MountOption::Subtype(_));
        if conflicts {
            tracing::warn!("ignoring mount option {o:?}: it conflicts with syncer's own");
        } else if !mount_options.contains(&o) {
            mount_options.push(o);
        }
    }
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = if opts.allow_other { SessionACL::All } else { SessionACL::Owner };
    let threads = opts.threads.clamp(1, 64);
    config.n_threads = Some(threads);
    config.clone_fd = threads > 1;
    config
}

/// Hashing workers: twice the cores (4 to 8), because each also writes its
/// block past the page cache and waits for the disk (measured with 2 cores:
/// a 2 GiB write at 748–752 MiB/s with 2 workers, 809–832 MiB/s with 4).
fn hash_workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get() * 2).unwrap_or(4).clamp(4, 8)
}

fn build(tree: Tree, opts: &MountOptions) -> Result<(SyncerFs, Arc<Core>, Config), FsMountError> {
    if let Some(live) = tree.live() {
        // A write that finds the disk full evicts pushed blocks (the policy
        // lives above the engine) and tries again.
        live.set_room_maker(Some(Arc::new(|t: &LiveTree| engine::evict::make_room(t))));
    }
    let config = fuse_config(&tree, opts);
    let core = Arc::new(Core::new(tree, opts.dirty_limit, hash_workers()).map_err(FsMountError::Threads)?);
    Ok((SyncerFs::new(core.clone(), opts.acl), core, config))
}

/// Keeps the kernel's view live: after each import of peers' changes
/// (`LiveTree::import`), every dentry the kernel may hold that no longer names
/// the same node is dropped, then the cached attributes and pages of every
/// inode the kernel knows, so lookups and reads see the merged tree without
/// a remount and without waiting for the TTL. The thread ends with the
/// session (the notifier fails once the mount is gone) or the engine. A
/// point-in-time view never changes, so it gets none.
fn spawn_invalidator(core: &Arc<Core>, notifier: fuser::Notifier) {
    let Some(live) = &core.live else { return };
    let imports = live.watch_imports();
    // Weak, so that the thread never keeps the engine (and its lock) alive
    // after the mount is gone.
    let core = Arc::downgrade(core);
    let spawned = std::thread::Builder::new().name("syncer-inval".into()).spawn(move || loop {
        match imports.recv_timeout(std::time::Duration::from_millis(500)) {
            Ok(_) => {
                let Some(core) = core.upgrade() else { return };
                if invalidate_after_import(&core, &notifier).is_err() {
                    return;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if core.strong_count() > 0 => {}
            Err(_) => return,
        }
    });
    if let Err(e) = spawned {
        tracing::error!("cannot start the cache invalidation thread: {e}; peers' changes show after the TTL");
    }
}

/// One invalidation pass (see [`spawn_invalidator`]). `Err` once the mount
/// is gone. ENOENT from the kernel means it no longer holds what we named.
fn invalidate_after_import(core: &Core, notifier: &fuser::Notifier) -> io::Result<()> {
    // Before the names are read: see `Core::import_epoch`.
    core.import_epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let gone_is_fine = |r: io::Result<()>| match r {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
        _ => Ok(()),
    };
    for (ino, node, names) in core.inodes.dentries() {
        for name in names {
            let still = core
                .inodes
                .node(name.0)
                .ok()
                .and_then(|parent| core.tree.lookup(parent, &name.1).ok())
                .is_some_and(|st| st.id == node);
            if !still {
                use std::os::unix::ffi::OsStrExt;
                // Dropped first: a lookup that follows the invalidation
                // records the name again, and must not be undone.
                core.inodes.drop_name(ino, &name);
                gone_is_fine(notifier.inval_entry(fuser::INodeNo(name.0), std::ffi::OsStr::from_bytes(&name.1)))?;
            }
        }
    }
    for ino in core.inodes.all() {
        gone_is_fine(notifier.inval_inode(fuser::INodeNo(ino), 0, 0))?;
    }
    Ok(())
}

/// A handle by which the mount's owner makes it drop the kernel's caches
/// now, after it changed the tree through the engine itself (a restore in
/// place, a resolve): the same pass as after an import of peers' changes
/// (see [`spawn_invalidator`]), so a program holding a file open reads the
/// new content at its next read. Cloning it shares the one mount it is
/// given to ([`mount_with_refresh`]); before that, and once the mount is
/// gone, [`CacheRefresh::refresh`] does nothing.
#[derive(Clone, Default)]
pub struct CacheRefresh(Arc<std::sync::Mutex<Option<Attached>>>);

/// The mount a [`CacheRefresh`] acts on.
type Attached = (std::sync::Weak<Core>, fuser::Notifier);

impl std::fmt::Debug for CacheRefresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheRefresh").finish_non_exhaustive()
    }
}

impl CacheRefresh {
    /// A handle not yet given to a mount.
    pub fn new() -> Self {
        Self::default()
    }

    fn attach(&self, core: &Arc<Core>, notifier: fuser::Notifier) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((Arc::downgrade(core), notifier));
    }

    /// Drops every name the kernel may hold that no longer leads to the
    /// same node, then the cached attributes and pages of every inode it
    /// knows. `Ok(false)` when no mount is attached (or it is gone).
    pub fn refresh(&self) -> io::Result<bool> {
        let held = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some((core, notifier)) = held else { return Ok(false) };
        let Some(core) = core.upgrade() else { return Ok(false) };
        invalidate_after_import(&core, &notifier).map(|()| true)
    }
}

/// Sets the kernel's read-ahead for the FUSE mount on `mountpoint` to `kib`
/// (through `/sys/class/bdi/<dev>/read_ahead_kb`; needs root). FUSE mounts
/// start at 128 KiB whatever the filesystem asks for at init, so a
/// sequential reader gets 128 KiB requests, each a round trip; with more,
/// the kernel sends requests of up to `max_pages` (1 MiB, negotiated from
/// `max_write`). Finds the mount in `/proc/self/mountinfo`, so it sends no
/// request to the filesystem (it may run before the session serves).
pub fn set_read_ahead(mountpoint: &Path, kib: u32) -> io::Result<()> {
    // Canonical as in mountinfo, without touching the mountpoint itself
    // (that would be a request to a session that may not serve yet).
    let mountpoint = match (mountpoint.parent(), mountpoint.file_name()) {
        (Some(parent), Some(name)) => {
            std::fs::canonicalize(if parent.as_os_str().is_empty() { Path::new(".") } else { parent })?.join(name)
        }
        _ => mountpoint.to_path_buf(),
    };
    let dev =
        mountinfo::read()?.into_iter().rev().find(|m| m.mountpoint == mountpoint).map(|m| m.dev).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{} is not mounted", mountpoint.display()))
        })?;
    std::fs::write(format!("/sys/class/bdi/{dev}/read_ahead_kb"), kib.to_string())
}

fn tune_read_ahead(mountpoint: &Path, opts: &MountOptions) {
    if opts.read_ahead_kib == 0 {
        return;
    }
    if let Err(e) = set_read_ahead(mountpoint, opts.read_ahead_kib) {
        tracing::info!("{}: read-ahead stays at the kernel's default: {e}", mountpoint.display());
    }
}

/// A session's end as the mount sees it: the kernel may answer the FUSE
/// threads still reading at teardown with `ECONNABORTED` instead of
/// `ENODEV` (seen after a lazy unmount, when the last open file closed), and
/// fuser reports any thread's error. The connection is gone either way, and
/// what follows (committing buffered writes) is the same.
fn session_end(mountpoint: &Path, r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
            tracing::warn!("{}: the kernel aborted the FUSE connection as the session ended", mountpoint.display());
            Ok(())
        }
        r => r,
    }
}

/// As root, unmounts `mountpoint` itself, waiting up to two seconds while
/// the kernel calls it busy: a file closed just before may still be held
/// by a child process another thread forked and has not yet exec'd (its
/// descriptors close at exec), a reference that goes away on its own.
/// `None` when not root: fuser's own unmount (fusermount3) is used.
fn unmount_when_free(mountpoint: &Path) -> Option<io::Result<()>> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let Ok(c) = std::ffi::CString::new(mountpoint.as_os_str().as_bytes()) else {
        return None;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        // SAFETY: `c` is a valid NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
            return Some(Ok(()));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) || std::time::Instant::now() >= deadline {
            return Some(Err(e));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn final_flush(core: &Core, mountpoint: &Path) -> Result<(), FsMountError> {
    core.shutdown_flush().map_err(|e| FsMountError::Flush { mountpoint: mountpoint.to_path_buf(), errno: e.code() })
}

/// Mounts `tree` on `mountpoint` and serves it until it is unmounted
/// (`fusermount3 -u`, `umount`). On return every buffered write is
/// committed and the live tree's `sync()` has run.
pub fn mount(tree: impl Into<Tree>, mountpoint: &Path, opts: MountOptions) -> Result<(), FsMountError> {
    mount_with_refresh(tree, mountpoint, opts, &CacheRefresh::new())
}

/// [`mount`], with `refresh` attached to the mount for as long as it is
/// served (see [`CacheRefresh`]).
pub fn mount_with_refresh(
    tree: impl Into<Tree>,
    mountpoint: &Path,
    opts: MountOptions,
    refresh: &CacheRefresh,
) -> Result<(), FsMountError> {
    let (fs, core, config) = build(tree.into(), &opts)?;
    let notifier = fs.notifier.clone();
    let session = fuser::Session::new(fs, mountpoint, &config)
        .map_err(|source| FsMountError::Mount { mountpoint: mountpoint.to_path_buf(), source })?;
    // Set before any request is served: none is read until run/spawn.
    let _ = notifier.set(session.notifier());
    spawn_invalidator(&core, session.notifier());
    refresh.attach(&core, session.notifier());
    tune_read_ahead(mountpoint, &opts);
    let served = session_end(mountpoint, session.run());
    let flushed = final_flush(&core, mountpoint);
    served.map_err(|source| FsMountError::Session { mountpoint: mountpoint.to_path_buf(), source })?;
    flushed
}

/// Mounts `tree` on `mountpoint`, serving from background threads.
pub fn spawn(tree: impl Into<Tree>, mountpoint: &Path, opts: MountOptions) -> Result<MountHandle, FsMountError> {
    let (fs, core, config) = build(tree.into(), &opts)?;
    let notifier = fs.notifier.clone();
    let session = fuser::Session::new(fs, mountpoint, &config)
        .map_err(|source| FsMountError::Mount { mountpoint: mountpoint.to_path_buf(), source })?;
    // Set before any request is served: none is read until run/spawn.
    let _ = notifier.set(session.notifier());
    spawn_invalidator(&core, session.notifier());
    tune_read_ahead(mountpoint, &opts);
    let bg =
        session.spawn().map_err(|source| FsMountError::Session { mountpoint: mountpoint.to_path_buf(), source })?;
    Ok(MountHandle { bg: Some(bg), core, mountpoint: mountpoint.to_path_buf() })
}

/// A mount served in the background. Dropping it unmounts too (errors are
/// then only logged); prefer [`MountHandle::unmount`].
pub struct MountHandle {
    bg: Option<fuser::BackgroundSession>,
    core: Arc<Core>,
    mountpoint: PathBuf,
}

impl std::fmt::Debug for MountHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountHandle").field("mountpoint", &self.mountpoint).finish()
    }
}

impl MountHandle {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Bytes of buffered, uncommitted writes held in memory right now.
    pub fn dirty_bytes(&self) -> u64 {
        self.core.wb.dirty_bytes()
    }

    /// Inode table entries right now (root included).
    pub fn inode_count(&self) -> usize {
        self.core.inodes.len()
    }

    /// Unmounts, waits for the request threads, commits every buffered write
    /// and syncs the engine.
    pub fn unmount(mut self) -> Result<(), FsMountError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), FsMountError> {
        let Some(bg) = self.bg.take() else {
            return Ok(());
        };
        let ended = match unmount_when_free(&self.mountpoint) {
            Some(Ok(())) => bg.join(),
            Some(Err(e)) => Err(e),
            None => bg.umount_and_join(),
        };
        let served = session_end(&self.mountpoint, ended)
            .map_err(|source| FsMountError::Unmount { mountpoint: self.mountpoint.clone(), source });
        let flushed = final_flush(&self.core, &self.mountpoint);
        served?;
        flushed
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::error!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_spellings() {
        assert_eq!(parse_option("noexec"), MountOption::NoExec);
        assert_eq!(parse_option("fsname=x"), MountOption::FSName("x".into()));
        assert_eq!(parse_option("max_read=4096"), MountOption::CUSTOM("max_read=4096".into()));
    }
}
