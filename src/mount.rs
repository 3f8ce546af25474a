//! `syncer mount` and `syncer unmount`.
//!
//! Without `--foreground`, `mount` starts itself again in the foreground as
//! a detached daemon (own session, output to `<data>/mount.log`) and returns
//! once the filesystem shows up in the mount table, or fails with the
//! daemon's error. That is what `mount -t fuse.syncer` and `/etc/fstab`
//! expect from a mount helper, as with sshfs.
//!
//! Always true:
//! - a read-write mount's process holds the engine's flock on `<data>/lock`
//!   from before the kernel mount appears until after every buffered write
//!   is committed, so `syncer unmount` waits for that lock (and for the
//!   process to exit) before it returns;
//! - a second read-write mount of the same data dir is refused before
//!   anything is started, and a mount never reports success on the strength
//!   of an older mount at the same place: it waits for a new mount-table
//!   entry of its own data dir;
//! - a read-write mount of a data dir whose writer lock is held by a
//!   process that no longer has it mounted (an unmounted mount still
//!   committing, or another command) waits for the lock, at most
//!   [`LOCK_WAIT`], saying so on stderr, instead of failing;
//! - `-o remount,...` (what mount(8) passes the helper for `mount -o
//!   remount,ro MNT`) changes the kernel's flags of an existing mount and
//!   starts nothing; `rw` is refused for a mount whose process opened the
//!   data dir read-only;
//! - every mount option is honoured or refused by name (see
//!   [`parse_options`]); none is accepted and then ignored, except those
//!   that only mean something to mount(8) or fstab;
//! - SIGINT, SIGTERM and SIGHUP detach the mount (lazily when files are
//!   still open); the process then commits and exits as after an unmount.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use syncer_fs::mountinfo::{self, Mount};

/// How long the parent waits for the daemon's mount to appear.
const MOUNT_WAIT: Duration = Duration::from_secs(30);

/// How long a read-write mount waits for the writer lock held by a process
/// that no longer has the data dir mounted (an earlier mount still
/// committing after `umount`, or a `syncer sync`).
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// How long a mount waits for the writer lock before it says that it waits.
const QUIET_WAIT: Duration = Duration::from_secs(1);

/// How long a mount of a data dir mounted read-write elsewhere waits for
/// that mount to leave the mount table (it may be being unmounted) before
/// it is refused.
const UNMOUNT_GRACE: Duration = Duration::from_secs(2);

/// How long `unmount` waits for the mount's process to commit and exit.
/// Committing is bounded by the dirty-write bound (256 MiB by default).
const EXIT_WAIT: Duration = Duration::from_secs(120);

/// The line the mount process prints last, once everything is committed.
const CLEAN_LINE: &str = "unmounted cleanly";

/// Options that only mean something to mount(8) or fstab; accepted and
/// ignored. (`default_permissions` is always on; `noatime` is always on and
/// `nodiratime` is part of it.)
const FSTAB_ONLY: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "nofail",
    "_netdev",
    "user",
    "users",
    "nouser",
    "rw",
    "default_permissions",
    "noatime",
    "nodiratime",
    "async",
];

/// Kernel flags passed on to the mount as they are (see `syncer_fs::MountOptions::extra`).
const KERNEL_FLAGS: &[&str] = &["dev", "nodev", "suid", "nosuid", "exec", "noexec", "sync", "dirsync"];

/// Access-time modes syncer refuses: a read never updates atime (see
/// README, "Mount options").
const ATIME_MODES: &[&str] = &["atime", "strictatime", "relatime", "lazytime", "diratime"];

/// What mount(8) passes the helper on a remount besides the user's
/// options: the kernel's own options of the mount, from the mount table.
const KERNEL_REPORTED: &[&str] = &["user_id=", "group_id=", "rootmode=", "max_read=", "blksize=", "allow_other"];

/// Mounts `data_dir` on `mountpoint`.
/// With `at`, mounts the tree as it stood then, read-only (see `PastView::open`).
pub fn mount(
    data_dir: &Path,
    mountpoint: &Path,
    foreground: bool,
    options: &[String],
    at: Option<engine::ids::Timestamp>,
) -> Result<()> {
    if options.iter().any(|o| o.trim() == "remount") {
        return remount(data_dir, mountpoint, options);
    }
    let data_dir = data_dir.canonicalize().with_context(|| format!("data dir {}", data_dir.display()))?;
    let mountpoint = mountpoint.canonicalize().with_context(|| format!("mountpoint {}", mountpoint.display()))?;
    let opts = parse_options(&data_dir, options)?;
    let writes = at.is_none() && !opts.read_only;
    if writes {
        wait_for_lock(&data_dir)?;
    }
    if foreground {
        run_foreground(&data_dir, &mountpoint, opts, at)
    } else {
        spawn_daemon(&data_dir, &mountpoint, options, at)
    }
}

/// The mount options of `syncer mount -o`. Kernel flags (`dev`, `suid`,
/// `exec`, `sync`, `dirsync` and their `no` forms) are passed on, the last
/// of a pair winning; the default is `nodev,nosuid` (a peer's device node
/// or set-user-id file is not trusted unless asked for). Access-time modes
/// other than `noatime`/`nodiratime` are refused.
fn parse_options(data_dir: &Path, options: &[String]) -> Result<syncer_fs::MountOptions> {
    let mut opts = syncer_fs::MountOptions::new(data_dir.display().to_string());
    for o in options.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
        match o {
            "allow_other" => opts.allow_other = true,
            "ro" => opts.read_only = true,
            "rw" => opts.read_only = false,
            "acl" => opts.acl = true,
            "noacl" => opts.acl = false,
            o if KERNEL_FLAGS.contains(&o) => {
                let base = o.strip_prefix("no").unwrap_or(o);
                opts.extra.retain(|e| e.strip_prefix("no").unwrap_or(e) != base);
                opts.extra.push(o.to_string());
            }
            o if ATIME_MODES.contains(&o) => bail!(
                "-o {o}: syncer mounts are always noatime (a read never writes: an access time update would be \
                 an event in the log, sent to every machine); leave it out or use noatime"
            ),
            o if FSTAB_ONLY.contains(&o) || o.starts_with("x-") || o.starts_with("comment=") => {}
            o => bail!(
                "-o {o}: unknown mount option (known: allow_other, ro, rw, acl, noacl, dev, nodev, suid, nosuid, \
                 exec, noexec, sync, dirsync, noatime, nodiratime, remount, and mount(8)'s generic options)"
            ),
        }
    }
    Ok(opts)
}

/// Waits until nobody holds `data_dir`'s writer lock, at most
/// [`LOCK_WAIT`]: refuses at once if the holder has it mounted (a second
/// read-write mount), else (a mount still committing after `umount`, a
/// `syncer sync`) says on stderr that it waits.
fn wait_for_lock(data_dir: &Path) -> Result<()> {
    let deadline = Instant::now() + LOCK_WAIT;
    let mut said = false;
    loop {
        let Some(holder) = lock_holder(data_dir)? else {
            if said {
                eprintln!("syncer: {}: the writer lock is free; mounting", data_dir.display());
            }
            return Ok(());
        };
        let lock = engine::Layout { dir: data_dir.to_path_buf() }.lock();
        let pid = flock_pid(&lock);
        let mounted = |pid: Option<u32>| -> Result<bool> {
            Ok(mounts_of(data_dir)?.any(|m| !m.read_only || pid.is_some_and(|p| serves(p, &m.mountpoint))))
        };
        // A mount on its way out (`umount &`, then a mount at once) stays
        // in the table for a moment: a mount still there after
        // `UNMOUNT_GRACE` is a second read-write mount, refused.
        let grace = Instant::now() + UNMOUNT_GRACE;
        while mounted(pid)? && Instant::now() < grace {
            std::thread::sleep(Duration::from_millis(20));
        }
        if mounted(pid)? {
            bail!("{}: {holder}; a data dir is mounted read-write at most once", data_dir.display());
        }
        let who = pid.map(|pid| format!("process {pid} ({})", command_line(pid))).unwrap_or("its holder".into());
        if Instant::now() > deadline {
            bail!(
                "{}: {holder}: {who} did not let go of it within {LOCK_WAIT:?} (an unmounted mount may still be \
                 committing: see {})",
                data_dir.display(),
                data_dir.join("mount.log").display()
            );
        }
        // A short wait (a mount finishing its unmount) goes unsaid.
        if !said && Instant::now() + LOCK_WAIT > deadline + QUIET_WAIT {
            eprintln!(
                "syncer: {}: waiting (at most {LOCK_WAIT:?}) for {who} to let go of the writer lock \
                 (an earlier mount still committing after its unmount, or another syncer command)",
                data_dir.display()
            );
            said = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The syncer mounts of `data_dir` (canonical) in the mount table.
fn mounts_of(data_dir: &Path) -> Result<impl Iterator<Item = Mount>> {
    let source = data_dir.to_path_buf();
    Ok(mounts()?.into_iter().filter(move |m| m.fstype == "fuse.syncer" && Path::new(&m.source) == source))
}

/// `/proc/PID/cmdline`, arguments joined by spaces (for messages).
fn command_line(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0).filter(|a| !a.is_empty()).map(String::from_utf8_lossy).collect::<Vec<_>>().join(" ")
        })
        .unwrap_or_default()
}

/// `p` made absolute and canonical up to its last component, which is not
/// touched (a FUSE mountpoint's root would be a request to its server).
fn canonical_parent(p: &Path) -> Option<PathBuf> {
    let parent = p.parent().filter(|q| !q.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Some(parent.canonicalize().ok()?.join(p.file_name()?))
}

/// Whether process `pid` is the `syncer mount` serving `mountpoint`: one
/// of its arguments names it (relative ones from its working directory).
fn serves(pid: u32, mountpoint: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
    use std::os::unix::ffi::OsStrExt;
    cmdline.split(|&c| c == 0).filter(|a| !a.is_empty()).any(|a| {
        let arg = cwd.join(std::ffi::OsStr::from_bytes(a));
        arg == mountpoint || canonical_parent(&arg).is_some_and(|c| c == mountpoint)
    })
}

/// `syncer mount -o remount,...`: changes the kernel's flags of the
/// syncer mount on `mountpoint` (mount(2) with MS_REMOUNT), keeping the
/// flags that `options` do not name. The FUSE kernel module applies a
/// remount itself (a read-only remount refuses writes at the VFS, and fails
/// with EBUSY while a file is open for writing); nothing is sent to the
/// mount's process, which keeps its data dir open as it is, so `rw` needs a
/// process that opened it read-write.
fn remount(data_dir: &Path, mountpoint: &Path, options: &[String]) -> Result<()> {
    let mountpoint = canonical_parent(mountpoint)
        .or_else(|| mountpoint.canonicalize().ok())
        .with_context(|| format!("mountpoint {}", mountpoint.display()))?;
    let table = mounts()?;
    let Some(m) = table.iter().rev().find(|m| m.mountpoint == mountpoint) else {
        bail!("-o remount: {} is not mounted", mountpoint.display());
    };
    if m.fstype != "fuse.syncer" {
        bail!("-o remount: {} is a {} mount, not a syncer one", mountpoint.display(), m.fstype);
    }
    let data_dir = data_dir.canonicalize().unwrap_or_else(|_| data_dir.to_path_buf());
    if Path::new(&m.source) != data_dir {
        bail!("-o remount: {} is a mount of {}, not of {}", mountpoint.display(), m.source, data_dir.display());
    }
    // Start from the mount's own flags: a remount replaces them all.
    let mut flags = libc::MS_REMOUNT | libc::MS_NOATIME;
    let set = |flags: &mut libc::c_ulong, bit: libc::c_ulong, on: bool| {
        if on {
            *flags |= bit;
        } else {
            *flags &= !bit;
        }
    };
    for o in m.options.iter().map(String::as_str).chain(options.iter().map(|o| o.trim())) {
        match o {
            "ro" => set(&mut flags, libc::MS_RDONLY, true),
            "rw" => set(&mut flags, libc::MS_RDONLY, false),
            "nosuid" | "suid" => set(&mut flags, libc::MS_NOSUID, o == "nosuid"),
            "nodev" | "dev" => set(&mut flags, libc::MS_NODEV, o == "nodev"),
            "noexec" | "exec" => set(&mut flags, libc::MS_NOEXEC, o == "noexec"),
            "sync" | "async" => set(&mut flags, libc::MS_SYNCHRONOUS, o == "sync"),
            "dirsync" => set(&mut flags, libc::MS_DIRSYNC, true),
            "" | "remount" => {}
            o if ATIME_MODES.contains(&o) => bail!("-o {o}: syncer mounts are always noatime"),
            o if FSTAB_ONLY.contains(&o) || KERNEL_REPORTED.iter().any(|k| o.starts_with(k)) => {}
            o if o.starts_with("x-") || o.starts_with("comment=") => {}
            o => bail!(
                "-o remount,{o}: only ro, rw, suid, nosuid, dev, nodev, exec, noexec, sync, async and \
                        dirsync can change on a remount"
            ),
        }
    }
    if flags & libc::MS_RDONLY == 0 {
        let lock = engine::Layout { dir: PathBuf::from(&m.source) }.lock();
        if !flock_pid(&lock).is_some_and(|pid| serves(pid, &mountpoint)) {
            bail!(
                "-o remount,rw: {} was mounted read-only (ro or --at), so its process cannot write; unmount it \
                 and mount it again without ro",
                mountpoint.display()
            );
        }
    }
    let target =
        std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()).context("a mountpoint with a NUL byte")?;
    // SAFETY: a valid C string; null source, type and data are allowed for
    // MS_REMOUNT (the FUSE module ignores data on a remount).
    let rc = unsafe { libc::mount(std::ptr::null(), target.as_ptr(), std::ptr::null(), flags, std::ptr::null()) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        let hint = if e.raw_os_error() == Some(libc::EBUSY) { " (a file is open for writing)" } else { "" };
        bail!("remounting {}: {e}{hint}", mountpoint.display());
    }
    Ok(())
}

fn run_foreground(
    data_dir: &Path,
    mountpoint: &Path,
    opts: syncer_fs::MountOptions,
    at: Option<engine::ids::Timestamp>,
) -> Result<()> {
    // A read-only mount without a time shows the tree as it is now.
    let opened = || format!("open {}", data_dir.display());
    let tree: syncer_fs::Tree = match at.or(opts.read_only.then(engine::ids::Timestamp::now)) {
        Some(at) => Arc::new(engine::PastView::open(data_dir, at).with_context(opened)?).into(),
        None => Arc::new(engine::LiveTree::open(data_dir).with_context(opened)?).into(),
    };
    let live = tree.live();
    // Push, evict and prefetch in the background while mounted.
    let replication = match &live {
        Some(live) => crate::remote::start_daemon(live)?.map(Arc::new),
        None => None,
    };
    // The first point-in-time view then opens at once (see HistoryKeeper).
    let history = live.as_ref().map(|l| engine::HistoryKeeper::start(l.clone())).transpose()?;
    let refresh = syncer_fs::CacheRefresh::new();
    // Commands that need the writer reach it through the control socket
    // (see `control`); a read-only mount has no writer to offer.
    let control = match &live {
        None => None,
        Some(live) => {
            let ctx = crate::control::handlers::MountCtx {
                engine: live.clone(),
                data_dir: data_dir.to_path_buf(),
                mountpoint: mountpoint.to_path_buf(),
                daemon: replication.clone(),
                refresh: refresh.clone(),
            };
            Some(crate::control::server::Server::start(Arc::new(ctx))?)
        }
    };
    // A signal unmounts; the kernel then ends the session and `mount`
    // returns after committing every buffered write. An unmount from
    // outside (fusermount3 -u, umount) ends it the same way.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .context("installing signal handlers")?;
    let mp = mountpoint.to_path_buf();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            crate::daemon_log::line(&format!("syncer: signal {sig}; unmounting {}", mp.display()));
            if let Err(e) = detach(&mp) {
                // Busy (open files): detach now, finish when they close.
                crate::daemon_log::line(&format!("syncer: {}; detaching lazily", crate::daemon_log::error_chain(&e)));
                let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&mp).status();
            }
        }
    });
    crate::daemon_log::line(&format!("syncer: mounting {} on {}", data_dir.display(), mountpoint.display()));
    let served = syncer_fs::mount_with_refresh(tree, mountpoint, opts, &refresh)
        .with_context(|| format!("mount {} on {}", data_dir.display(), mountpoint.display()));
    // Before the daemon and the engine go: commands still running use them.
    if let Some(c) = control {
        c.stop();
    }
    served?;
    drop(history);
    drop(replication);
    if let Some(live) = live {
        live.close().context("committing buffered state")?;
    }
    crate::daemon_log::line(&format!("syncer: {}: {CLEAN_LINE}", mountpoint.display()));
    Ok(())
}

fn spawn_daemon(
    data_dir: &Path,
    mountpoint: &Path,
    options: &[String],
    at: Option<engine::ids::Timestamp>,
) -> Result<()> {
    let before = mounts()?;
    if let Some(m) = before.iter().find(|m| m.mountpoint == mountpoint && m.fstype == "fuse.syncer") {
        bail!("{} is already a syncer mount (of {})", mountpoint.display(), m.source);
    }
    let exe = std::env::current_exe().context("finding the syncer binary")?;
    let log_path = data_dir.join("mount.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("open {}", log_path.display()))?;
    let start_len = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut cmd = Command::new(exe);
    cmd.arg("mount").arg(data_dir).arg(mountpoint).arg("--foreground");
    if let Some(at) = at {
        cmd.arg("--at").arg(format!("{}.{:09}", at.0.div_euclid(1_000_000_000), at.0.rem_euclid(1_000_000_000)));
    }
    if !options.is_empty() {
        cmd.arg("-o").arg(options.join(","));
    }
    cmd.stdin(Stdio::null()).stdout(log.try_clone().context("log file")?).stderr(log);
    // The daemon rotates its log (see `daemon_log`).
    cmd.env(crate::daemon_log::LOG_FILE_ENV, &log_path);
    cmd.envs(crate::ALLOCATOR_ENV);
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the mount daemon")?;
    let deadline = Instant::now() + MOUNT_WAIT;
    loop {
        let source = data_dir.display().to_string();
        let ours = |m: &Mount| m.mountpoint == mountpoint && m.fstype == "fuse.syncer" && m.source == source;
        // No syncer mount was on the mountpoint before (refused above), so
        // one there now is the daemon's. (Mount ids are no help: the kernel
        // reuses a freed id at once, for anyone's next mount.)
        if mounts()?.iter().any(ours) {
            return Ok(());
        }
        if let Some(status) = child.try_wait().context("waiting for the mount daemon")? {
            let tail = std::fs::read(&log_path)
                .map(|b| {
                    String::from_utf8_lossy(&b[usize::try_from(start_len).unwrap_or(0).min(b.len())..]).into_owned()
                })
                .unwrap_or_default();
            bail!("mount daemon exited ({status}): {}", tail.trim());
        }
        if Instant::now() > deadline {
            bail!("{} did not appear mounted within {MOUNT_WAIT:?}; see {}", mountpoint.display(), log_path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The mount table as this process sees it.
fn mounts() -> Result<Vec<Mount>> {
    mountinfo::read().context("reading /proc/self/mountinfo")
}

/// Who holds the writer lock of `data_dir`, if anyone: `None` when the lock
/// can be taken right now (it is let go again at once).
fn lock_holder(data_dir: &Path) -> Result<Option<String>> {
    let path = engine::Layout { dir: data_dir.to_path_buf() }.lock();
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        // Never opened read-write yet: nobody holds it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
    };
    match file.try_lock() {
        Ok(()) => Ok(None),
        Err(std::fs::TryLockError::WouldBlock) => {
            let mounted: Vec<String> = mounts()?
                .into_iter()
                .filter(|m| m.fstype == "fuse.syncer" && !m.read_only && Path::new(&m.source) == data_dir)
                .map(|m| m.mountpoint.display().to_string())
                .collect();
            Ok(Some(if mounted.is_empty() {
                format!("{} is held by another syncer process", path.display())
            } else {
                format!("already mounted on {}", mounted.join(", "))
            }))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("lock {}", path.display())),
    }
}

/// The pid holding a flock on `path`, from `/proc/locks`.
fn flock_pid(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    // /proc/locks names the file as MAJOR:MINOR:INODE, major and minor in hex.
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let want = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().filter(|w| *w != "->").collect();
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str())).then(|| f.get(4)?.parse().ok()).flatten()
    })
}

/// Whether process `pid` is gone (or a zombie: it has exited, nobody reaped it yet).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesized command name.
        Ok(stat) => {
            stat.rsplit_once(')').is_some_and(|(_, rest)| matches!(rest.trim_start().chars().next(), Some('Z' | 'X')))
        }
    }
}

/// Asks the kernel to end the FUSE session at `mountpoint` (`fusermount3 -u`).
///
/// A mount the kernel calls busy is tried again for up to two seconds: a
/// file closed just before may still be held by a child process that
/// another program forked and has not yet exec'd (its descriptors close at
/// exec), a reference that goes away on its own.
fn detach(mountpoint: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let out = Command::new("fusermount3")
            .arg("-u")
            .arg(mountpoint)
            .stdin(Stdio::null())
            .output()
            .context("running fusermount3 (apt-get install fuse3)")?;
        if out.status.success() {
            return Ok(());
        }
        let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if !why.contains("busy") || Instant::now() >= deadline {
            bail!("fusermount3 -u {}: {why}", mountpoint.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Unmounts a syncer mount and returns once its process has committed
/// every buffered write and exited (for a read-write mount: once the data
/// dir's writer lock is free and the process that held it is gone).
/// `target` is the mountpoint, or a data dir: then every syncer mount of
/// it is unmounted, newest first.
pub fn unmount(target: &Path) -> Result<()> {
    let path = canonical_parent(target)
        .or_else(|| target.canonicalize().ok())
        .with_context(|| format!("mountpoint {}", target.display()))?;
    let table = mounts()?;
    if table.iter().any(|m| m.mountpoint == path) {
        return unmount_one(&path);
    }
    let data_dir = path.canonicalize().unwrap_or(path);
    let of_data_dir: Vec<&Mount> =
        table.iter().rev().filter(|m| m.fstype == "fuse.syncer" && Path::new(&m.source) == data_dir).collect();
    if of_data_dir.is_empty() {
        bail!("{} is not mounted (neither a mountpoint nor a mounted data dir)", target.display());
    }
    for m in of_data_dir {
        unmount_one(&m.mountpoint)?;
    }
    Ok(())
}

fn unmount_one(mountpoint: &Path) -> Result<()> {
    let mountpoint = mountpoint.to_path_buf();
    let table = mounts()?;
    let Some(m) = table.iter().rev().find(|m| m.mountpoint == mountpoint) else {
        bail!("{} is not mounted", mountpoint.display());
    };
    if m.fstype != "fuse.syncer" {
        bail!("{} is a {} mount, not a syncer one", mountpoint.display(), m.fstype);
    }
    let data_dir = PathBuf::from(&m.source);
    let lock = engine::Layout { dir: data_dir.clone() }.lock();
    // Only a mount opened read-write holds the writer lock; a read-only one
    // has nothing to commit. One remounted read-only still holds it.
    let holder = flock_pid(&lock).filter(|&pid| !m.read_only || serves(pid, &mountpoint));
    let log_path = data_dir.join("mount.log");
    let log_start = std::fs::metadata(&log_path).map(|m| m.len()).ok();
    detach(&mountpoint)?;
    let Some(pid) = holder else {
        return Ok(());
    };
    let deadline = Instant::now() + EXIT_WAIT;
    while lock_holder(&data_dir)?.is_some() || !exited(pid) {
        if Instant::now() > deadline {
            bail!(
                "{} is unmounted, but its process {pid} has not released {} within {EXIT_WAIT:?}; \
                 it may still be committing (see {})",
                mountpoint.display(),
                lock.display(),
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // A daemon's output goes to mount.log: it ends with CLEAN_LINE unless
    // committing failed.
    if let Some(start) = log_start {
        let text = std::fs::read(&log_path).unwrap_or_default();
        let new = String::from_utf8_lossy(&text[usize::try_from(start).unwrap_or(0).min(text.len())..]).into_owned();
        let ours = format!("{}: {CLEAN_LINE}", mountpoint.display());
        if !new.trim().is_empty() && !new.contains(&ours) {
            bail!("the mount process of {} exited without committing cleanly: {}", mountpoint.display(), new.trim());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let d = Path::new("/d");
        assert!(parse_options(d, &["allow_other".into(), "defaults".into(), "x-systemd.automount".into()]).is_ok());
        let e = parse_options(d, &["bogus".into()]).expect_err("unknown option");
        assert!(e.to_string().contains("bogus"), "{e}");
        let o = |v: &[&str]| parse_options(d, &v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let opts = o(&["dev", "nosuid", "suid", "noexec", "noacl", "ro", "nodiratime"]).expect("accepted");
        assert_eq!(opts.extra, vec!["dev", "suid", "noexec"], "passed on, the last of a pair winning");
        assert!(!opts.acl && opts.read_only);
        for atime in ATIME_MODES {
            let e = o(&[atime]).expect_err("an atime mode");
            assert!(e.to_string().contains("noatime"), "{e}");
        }
    }
}
