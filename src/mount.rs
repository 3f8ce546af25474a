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

/// How long `unmount` waits for the mount's process to commit and exit.
/// Committing is bounded by the dirty-write bound (256 MiB by default).
const EXIT_WAIT: Duration = Duration::from_secs(120);

/// The line the mount process prints last, once everything is committed.
const CLEAN_LINE: &str = "unmounted cleanly";

/// Options that only mean something to mount(8) or fstab; accepted and ignored.
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
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "async",
];

/// Mounts `data_dir` on `mountpoint`.
/// With `at`, mounts the tree as it stood then, read-only (see `Engine::open_at`).
pub fn mount(
    data_dir: &Path,
    mountpoint: &Path,
    foreground: bool,
    options: &[String],
    at: Option<engine::ids::Timestamp>,
) -> Result<()> {
    let data_dir = data_dir.canonicalize().with_context(|| format!("data dir {}", data_dir.display()))?;
    let mountpoint = mountpoint.canonicalize().with_context(|| format!("mountpoint {}", mountpoint.display()))?;
    let opts = parse_options(&data_dir, options)?;
    if foreground {
        run_foreground(&data_dir, &mountpoint, opts, at)
    } else {
        spawn_daemon(&data_dir, &mountpoint, options, at)
    }
}

fn parse_options(data_dir: &Path, options: &[String]) -> Result<syncer_fs::MountOptions> {
    let mut opts = syncer_fs::MountOptions::new(data_dir.display().to_string());
    for o in options.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
        match o {
            "allow_other" => opts.allow_other = true,
            "ro" => opts.read_only = true,
            o if FSTAB_ONLY.contains(&o) || o.starts_with("x-") || o.starts_with("comment=") => {}
            o => bail!("-o {o}: unknown mount option (known: allow_other, ro, and mount(8)'s generic options)"),
        }
    }
    Ok(opts)
}

fn run_foreground(
    data_dir: &Path,
    mountpoint: &Path,
    opts: syncer_fs::MountOptions,
    at: Option<engine::ids::Timestamp>,
) -> Result<()> {
    let engine = if let Some(at) = at {
        engine::Engine::open_at(data_dir, at)
    } else if opts.read_only {
        engine::Engine::open_at(data_dir, engine::ids::Timestamp::now())
    } else {
        engine::Engine::open(data_dir)
    }
    .with_context(|| format!("open {}", data_dir.display()))?;
    let engine = Arc::new(engine);
    // Push, evict and prefetch in the background while mounted.
    let replication = crate::remote::start_daemon(&engine)?;
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
                crate::daemon_log::line(&format!("syncer: {e:#}; detaching lazily"));
                let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&mp).status();
            }
        }
    });
    crate::daemon_log::line(&format!("syncer: mounting {} on {}", data_dir.display(), mountpoint.display()));
    syncer_fs::mount(engine.clone(), mountpoint, opts)
        .with_context(|| format!("mount {} on {}", data_dir.display(), mountpoint.display()))?;
    drop(replication);
    engine.close().context("committing buffered state")?;
    crate::daemon_log::line(&format!("syncer: {}: {CLEAN_LINE}", mountpoint.display()));
    Ok(())
}

fn spawn_daemon(
    data_dir: &Path,
    mountpoint: &Path,
    options: &[String],
    at: Option<engine::ids::Timestamp>,
) -> Result<()> {
    let writes = at.is_none() && !options.iter().any(|o| o.trim() == "ro");
    if writes {
        if let Some(holder) = lock_holder(data_dir)? {
            bail!("{}: {holder}; a data dir is mounted read-write at most once", data_dir.display());
        }
    }
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
    let path = engine::engine::Layout { dir: data_dir.to_path_buf() }.lock();
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
fn detach(mountpoint: &Path) -> Result<()> {
    let out = Command::new("fusermount3")
        .arg("-u")
        .arg(mountpoint)
        .stdin(Stdio::null())
        .output()
        .context("running fusermount3 (apt-get install fuse3)")?;
    if !out.status.success() {
        bail!("fusermount3 -u {}: {}", mountpoint.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Unmounts a syncer mount and returns once its process has committed
/// every buffered write and exited (for a read-write mount: once the data
/// dir's writer lock is free and the process that held it is gone).
pub fn unmount(mountpoint: &Path) -> Result<()> {
    let mountpoint = mountpoint.canonicalize().with_context(|| format!("mountpoint {}", mountpoint.display()))?;
    let table = mounts()?;
    let Some(m) = table.iter().rev().find(|m| m.mountpoint == mountpoint) else {
        bail!("{} is not mounted", mountpoint.display());
    };
    if m.fstype != "fuse.syncer" {
        bail!("{} is a {} mount, not a syncer one", mountpoint.display(), m.fstype);
    }
    let data_dir = PathBuf::from(&m.source);
    let lock = engine::engine::Layout { dir: data_dir.clone() }.lock();
    // Only a read-write mount holds the writer lock; a read-only one has
    // nothing to commit.
    let holder = if m.read_only { None } else { flock_pid(&lock) };
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
    }
}
