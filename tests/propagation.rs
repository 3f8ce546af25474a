//! Changes travel between mounted machines without any command: two data
//! dirs on one remote, each mounted by the `syncer` binary (real FUSE, real
//! rsync). A change made through one mount shows through the other once
//! the first mount pushed it (soon after the change) and the second one's
//! poll saw it on the remote (see replication's `daemon` module).
//!
//! The test has a generous bound, so it is not flaky on a loaded machine;
//! the speed target is carried by the benchmark, an ignored test:
//!
//! ```text
//! cargo test --release --test propagation -- --ignored --nocapture
//! ```
//!
//! It prints, over a local-directory remote and over ssh to a private sshd
//! on localhost: the median and maximum of 20 probes (a small new file
//! written on A through its mount, until it reads back whole on B through
//! its mount), and the idle polling cost, rsync runs per minute per mount,
//! counted by a wrapper around rsync while both mounts sit idle.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod support;

/// Runs the `syncer` binary with `envs`; panics with its output unless it
/// succeeds.
fn syncer(args: &[&OsStr], envs: &[(String, String)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_syncer"))
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run syncer");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "syncer {args:?} failed: {text}");
    text
}

/// A mounted machine; unmounted on drop.
struct Machine {
    data: PathBuf,
    mnt: PathBuf,
    envs: Vec<(String, String)>,
}

impl Machine {
    fn mount(&self) {
        syncer(&[OsStr::new("mount"), self.data.as_os_str(), self.mnt.as_os_str()], &self.envs);
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let out = Command::new(env!("CARGO_BIN_EXE_syncer")).arg("unmount").arg(&self.mnt).output();
        if !out.is_ok_and(|o| o.status.success()) {
            drop(support::MountGuard(&self.mnt));
        }
    }
}

/// rsync wrapper that counts its runs (one line each in `<path>.count`).
fn counting_rsync(path: &Path) -> PathBuf {
    let count = path.with_extension("count");
    std::fs::write(path, format!("#!/bin/sh\necho run >> '{}'\nexec rsync \"$@\"\n", count.display()))
        .expect("write wrapper");
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    count
}

fn runs(count: &Path) -> usize {
    std::fs::read_to_string(count).map_or(0, |t| t.lines().count())
}

/// Two machines on `remote` (a local path or `host:path`), both mounted:
/// A made by `init`, B by `clone`. Each runs rsync through its own counting
/// wrapper; `ssh` is `$SYNCER_SSH`, if any.
struct Pair {
    a: Machine,
    b: Machine,
    counts: [PathBuf; 2],
}

fn pair(tmp: &Path, remote: &str, ssh: Option<&str>) -> Pair {
    support::require_fuse();
    let machine = |name: &str| {
        let mnt = tmp.join(format!("{name}-mnt"));
        std::fs::create_dir(&mnt).expect("mkdir");
        let wrapper = tmp.join(format!("rsync-{name}"));
        let count = counting_rsync(&wrapper);
        let mut envs = vec![("SYNCER_RSYNC".to_string(), wrapper.display().to_string())];
        if let Some(ssh) = ssh {
            envs.push(("SYNCER_SSH".to_string(), ssh.to_string()));
        }
        (Machine { data: tmp.join(name), mnt, envs }, count)
    };
    let ((a, count_a), (b, count_b)) = (machine("a"), machine("b"));
    let r = OsStr::new(remote);
    syncer(&[OsStr::new("init"), a.data.as_os_str(), OsStr::new("--remote"), r], &a.envs);
    syncer(&[OsStr::new("clone"), b.data.as_os_str(), r], &b.envs);
    a.mount();
    b.mount();
    Pair { a, b, counts: [count_a, count_b] }
}

/// Writes `data` to the new file `name` through `from`'s mount and returns
/// how long until it reads back whole through `to`'s, or `None` past
/// `limit`.
fn probe(from: &Machine, to: &Machine, name: &str, data: &[u8], limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut f = std::fs::File::create(from.mnt.join(name)).expect("create on A");
    f.write_all(data).expect("write on A");
    drop(f);
    let there = to.mnt.join(name);
    while t.elapsed() < limit {
        if std::fs::read(&there).is_ok_and(|got| got == data) {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

#[test]
fn a_change_on_one_mount_is_seen_on_the_other_without_any_command() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let remote = tmp.path().join("remote");
    let p = pair(tmp.path(), &remote.display().to_string(), None);
    let bound = Duration::from_secs(15);

    let took = probe(&p.a, &p.b, "from-a.txt", b"written on A", bound);
    assert!(took.is_some(), "a new file on A did not show on B within {bound:?}");
    let took = probe(&p.b, &p.a, "from-b.txt", b"written on B", bound);
    assert!(took.is_some(), "a new file on B did not show on A within {bound:?}");

    // A change to an existing file, and a removal, travel too.
    std::fs::write(p.a.mnt.join("from-b.txt"), b"changed on A").expect("overwrite on A");
    std::fs::remove_file(p.a.mnt.join("from-a.txt")).expect("remove on A");
    let t = Instant::now();
    loop {
        let changed = std::fs::read(p.b.mnt.join("from-b.txt")).is_ok_and(|c| c == b"changed on A");
        let removed = !p.b.mnt.join("from-a.txt").exists();
        if changed && removed {
            break;
        }
        assert!(t.elapsed() < bound, "B after {bound:?}: changed {changed}, removed {removed}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const PROBES: usize = 20;
const IDLE: Duration = Duration::from_secs(30);

/// 20 probes A to B at idle (a random pause before each, so they land at
/// any point of B's poll), then the rsync runs of both mounts over
/// [`IDLE`]. Prints one line per remote.
fn measure(label: &str, p: &Pair) -> (Duration, Duration) {
    // Both mounts' first rounds are done once a file travels at all.
    probe(&p.a, &p.b, "warm-up", b"warm-up", Duration::from_secs(60)).expect("warm-up probe");
    let mut times = Vec::new();
    for i in 0..PROBES {
        std::thread::sleep(Duration::from_millis(500 + rand::random::<u64>() % 1000));
        let data = format!("probe {i}: {}\n", rand::random::<u64>());
        let t = probe(&p.a, &p.b, &format!("probe-{i}"), data.as_bytes(), Duration::from_secs(60))
            .unwrap_or_else(|| panic!("{label}: probe {i} did not arrive within 60 s"));
        times.push(t);
    }
    times.sort();
    let (median, max) = ((times[PROBES / 2 - 1] + times[PROBES / 2]) / 2, times[PROBES - 1]);
    // Idle: let the last pushes and pulls settle, then count.
    std::thread::sleep(Duration::from_secs(3));
    let before: Vec<usize> = p.counts.iter().map(|c| runs(c)).collect();
    std::thread::sleep(IDLE);
    let per_min: Vec<f64> =
        p.counts.iter().zip(&before).map(|(c, b)| (runs(c) - b) as f64 * 60.0 / IDLE.as_secs_f64()).collect();
    println!(
        "{label:<22} A->B new small file: median {:.2} s, max {:.2} s over {PROBES} probes \
         (all: {}); idle: {:.1} rsync runs/min on A, {:.1} on B (counted over {} s)",
        median.as_secs_f64(),
        max.as_secs_f64(),
        times.iter().map(|t| format!("{:.2}", t.as_secs_f64())).collect::<Vec<_>>().join(" "),
        per_min[0],
        per_min[1],
        IDLE.as_secs()
    );
    (median, max)
}

#[test]
#[ignore = "benchmark: cargo test --release --test propagation -- --ignored --nocapture"]
fn propagation_benchmark() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let local = tmp.path().join("local");
    std::fs::create_dir(&local).expect("mkdir");
    let (_, l_max) = {
        let p = pair(&local, &local.join("remote").display().to_string(), None);
        measure("local-directory remote", &p)
    };
    let over_ssh = tmp.path().join("ssh");
    std::fs::create_dir(&over_ssh).expect("mkdir");
    let server = testkit::sshd::start(&over_ssh.join("keys"));
    let ssh = server.ssh.clone();
    let (_, s_max) = {
        let remote = format!("localhost:{}", over_ssh.join("remote").display());
        let p = pair(&over_ssh, &remote, Some(&ssh));
        measure("ssh to localhost", &p)
    };
    println!(
        "targets (every probe): local < 2 s: {}; ssh < 5 s: {}",
        if l_max < Duration::from_secs(2) { "met" } else { "MISSED" },
        if s_max < Duration::from_secs(5) { "met" } else { "MISSED" }
    );
}
