//! `syncer mount` and `syncer unmount`.
//!
//! Without `--foreground`, `mount` starts itself again in the foreground as
//! a detached daemon (own session, output to `<data>/mount.log`) and returns
//! once the filesystem shows up in the mount table, or fails with the
//! daemon's error. That is what `mount -t fuse.syncer` and `/etc/fstab`
//! expect from a mount helper, as with sshfs.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};


use anyhow::{bail, Context, Result};

/// How long the parent waits for the daemon's mount to appear.
const MOUNT_WAIT: Duration = Duration::from_secs(30);

/// Options that only mean something to mount(8) or fstab; accepted and ignored.
const FSTAB_ONLY: &[&str] = &[
    "defaults", "auto", "noauto", "nofail", "_netdev", "user", "users", "nouser", "rw", "default_permissions",
    "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime", "async",
];

/// Mounts `data_dir` on `mountpoint`.
pub fn mount(data_dir: &Path, mountpoint: &Path, foreground: bool, options: &[String]) -> Result<()> {
    let data_dir = data_dir.canonicalize().with_context(|| format!("data dir {}", data_dir.display()))?;
    let mountpoint = mountpoint.canonicalize().with_context(|| format!("mountpoint {}", mountpoint.display()))?;
    let opts = parse_options(&data_dir, options)?;
    if foreground {
        run_foreground(&data_dir, &mountpoint, opts)
    } else {
        spawn_daemon(&data_dir, &mountpoint, options)
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

fn run_foreground(data_dir: &Path, mountpoint: &Path, opts: syncer_fs::MountOptions) -> Result<()> {
    let engine = if opts.read_only {
        engine::Engine::open_at(data_dir, engine::ids::Timestamp::now())
    } else {
        engine::Engine::open(data_dir)
    }
    .with_context(|| format!("open {}", data_dir.display()))?;
    let engine = Arc::new(engine);
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
            eprintln!("syncer: signal {sig}; unmounting {}", mp.display());
            if let Err(e) = unmount(&mp) {
                // Busy (open files): detach now, finish when they close.
                eprintln!("syncer: {e:#}; detaching lazily");
                let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&mp).status();
            }
        }
    });
    eprintln!("syncer: mounting {} on {}", data_dir.display(), mountpoint.display());
    syncer_fs::mount(engine.clone(), mountpoint, opts)
        .with_context(|| format!("mount {} on {}", data_dir.display(), mountpoint.display()))?;
    engine.close().context("committing buffered state")?;
    eprintln!("syncer: unmounted {} cleanly", mountpoint.display());
    Ok(())
}

fn spawn_daemon(data_dir: &Path, mountpoint: &Path, options: &[String]) -> Result<()> {
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
    if !options.is_empty() {
        cmd.arg("-o").arg(options.join(","));
    }
    cmd.stdin(Stdio::null()).stdout(log.try_clone().context("log file")?).stderr(log);
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
        if is_mounted(mountpoint)? {
            return Ok(());
        }
        if let Some(status) = child.try_wait().context("waiting for the mount daemon")? {
            let tail = std::fs::read(&log_path)
                .map(|b| String::from_utf8_lossy(&b[usize::try_from(start_len).unwrap_or(0).min(b.len())..]).into_owned())
                .unwrap_or_default();
            bail!("mount daemon exited ({status}): {}", tail.trim());
        }
        if Instant::now() > deadline {
            bail!("{} did not appear mounted within {MOUNT_WAIT:?}; see {}", mountpoint.display(), log_path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a `fuse.syncer` filesystem is mounted at `mountpoint`.
pub fn is_mounted(mountpoint: &Path) -> Result<bool> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(text.lines().any(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-");
        let fstype = sep.and_then(|i| fields.get(i + 1)).copied().unwrap_or("");
        fields.get(4).map(|p| unescape(p)) == Some(mountpoint.to_path_buf()) && fstype == "fuse.syncer"
    }))
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// Unmounts a syncer mount: the daemon commits every buffered write when
/// the kernel ends the session.
pub fn unmount(mountpoint: &Path) -> Result<()> {
    let status = Command::new("fusermount3")
        .arg("-u")
        .arg(mountpoint)
        .status()
        .context("running fusermount3 (apt-get install fuse3)")?;
    if !status.success() {
        bail!("fusermount3 -u {} failed ({status})", mountpoint.display());
    }
    Ok(())
}
