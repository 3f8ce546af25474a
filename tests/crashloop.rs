//! Crash-consistency loop against the real binary: `syncer mount
//! --foreground` on a data dir, a workload in this process that writes,
//! overwrites, renames and unlinks through the mount and records what each
//! `fsync` acknowledged, `kill -9` of the syncer process at a random moment,
//! a lazy unmount of the dead mount, then the checks:
//!
//! - `syncer log verify` is clean (a torn tail is allowed: it is cut on open);
//! - the index on disk (caught up on open) equals the index rebuilt from the
//!   log alone (`LiveTree::dump_tree` before and after deleting `index.redb`);
//! - the tree is a tree (every entry's node names that entry, no duplicates);
//! - after the remount, every acknowledged file has exactly its acknowledged
//!   content, and the one operation in flight at the kill ended in one of
//!   its allowed outcomes (a rename: the file under exactly one of its names).
//!
//! `crash_consistency_20_kills` runs in the normal suite. The long run is
//! opt-in: `CRASHLOOP_ITERATIONS=1000 cargo test --release --test crashloop
//! -- --ignored --nocapture` (prints iterations, crashes, violations).

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::{LiveTree, TreeRead};
use rand::{Rng, SeedableRng};

fn syncer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_syncer"))
}

/// An operation whose acknowledgement had not come back when the process died.
#[derive(Clone, Debug)]
enum InFlight {
    /// `name` being written (new or overwritten): absent, its old content,
    /// or anything (a write is not atomic) — only its existence as a file
    /// or absence is checked.
    Write { name: String },
    /// `from` renamed to `to`: the content is under exactly one of the names.
    Rename { from: String, to: String, content: Vec<u8> },
    /// `name` unlinked: gone, or still there with its content.
    Unlink { name: String, content: Vec<u8> },
}

/// What the workload knows: files whose last operation was acknowledged,
/// and the operation in flight (if any).
#[derive(Default, Debug)]
struct Model {
    acked: BTreeMap<String, Vec<u8>>,
    in_flight: Option<InFlight>,
    /// Names whose last operation the disk refused (ENOSPC): it was not
    /// acknowledged, so they may hold anything or be absent.
    refused: std::collections::BTreeSet<String>,
    fsyncs: u64,
    /// Operations refused with ENOSPC (or EDQUOT).
    no_space: u64,
    /// Errors other than a full disk or a dead mount: violations.
    unexpected: Vec<String>,
}

#[derive(Default, Debug)]
struct Totals {
    iterations: u64,
    crashes: u64,
    fsyncs: u64,
    /// Kills that landed while an operation was waiting for its acknowledgement.
    mid_op: u64,
    /// Operations the disk refused (ENOSPC).
    no_space: u64,
    violations: Vec<String>,
}

fn wait_mounted(mnt: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let want = mnt.to_str().expect("utf8 mountpoint").to_string();
    loop {
        let table = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        if table.lines().any(|l| l.split(' ').nth(4) == Some(&want) && l.contains(" - fuse.syncer ")) {
            return;
        }
        if let Some(st) = child.try_wait().expect("try_wait") {
            panic!("syncer mount exited early: {st}");
        }
        assert!(Instant::now() < deadline, "{} did not appear mounted", mnt.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn mount(data: &Path, mnt: &Path) -> Child {
    let mut child = syncer()
        .arg("mount")
        .arg(data)
        .arg(mnt)
        .arg("--foreground")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn syncer mount");
    wait_mounted(mnt, &mut child);
    child
}

fn lazy_unmount(mnt: &Path) {
    let st = Command::new("fusermount3").arg("-u").arg("-z").arg(mnt).status().expect("fusermount3");
    assert!(st.success(), "fusermount3 -u -z {}", mnt.display());
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Runs operations until one fails (the mount died) or `stop` is set.
fn workload(mnt: &Path, model: &Mutex<Model>, seed: u64, next_name: &mut u64, stop: &AtomicBool) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let names: Vec<String> = model.lock().expect("model").acked.keys().cloned().collect();
        let pick = |rng: &mut rand::rngs::StdRng| names[rng.random_range(0..names.len())].clone();
        // Between 3 and 30 files: the tree stays small, so a long run's
        // checks cost the same in its last iteration as in its first.
        let op = match names.len() {
            0..3 => 0,
            31.. => rng.random_range(6..10),
            _ => rng.random_range(0..10),
        };
        let result = match op {
            // New file or overwrite of an acknowledged one.
            0..=5 => {
                let name = if op < 3 || names.is_empty() {
                    *next_name += 1;
                    format!("f{next_name}")
                } else {
                    pick(&mut rng)
                };
                let len = rng.random_range(0..200_000usize);
                let data = support::pattern(rng.random(), len);
                model.lock().expect("model").in_flight = Some(InFlight::Write { name: name.clone() });
                write_synced(&mnt.join(&name), &data).map(|()| {
                    let mut m = model.lock().expect("model");
                    m.acked.insert(name, data);
                    m.fsyncs += 1;
                })
            }
            6..=7 => {
                let from = pick(&mut rng);
                *next_name += 1;
                let to = format!("r{next_name}");
                let content = model.lock().expect("model").acked[&from].clone();
                model.lock().expect("model").in_flight =
                    Some(InFlight::Rename { from: from.clone(), to: to.clone(), content: content.clone() });
                std::fs::rename(mnt.join(&from), mnt.join(&to)).and_then(|()| fsync_dir(mnt)).map(|()| {
                    let mut m = model.lock().expect("model");
                    m.acked.remove(&from);
                    m.acked.insert(to, content);
                    m.fsyncs += 1;
                })
            }
            _ => {
                let name = pick(&mut rng);
                let content = model.lock().expect("model").acked[&name].clone();
                model.lock().expect("model").in_flight = Some(InFlight::Unlink { name: name.clone(), content });
                std::fs::remove_file(mnt.join(&name)).and_then(|()| fsync_dir(mnt)).map(|()| {
                    let mut m = model.lock().expect("model");
                    m.acked.remove(&name);
                    m.fsyncs += 1;
                })
            }
        };
        match result {
            Ok(()) => model.lock().expect("model").in_flight = None,
            // A full disk: the operation was refused, not acknowledged; its
            // names may hold anything now. The storm goes on.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) => {
                let mut m = model.lock().expect("model");
                m.no_space += 1;
                let names = match m.in_flight.take() {
                    Some(InFlight::Write { name }) | Some(InFlight::Unlink { name, .. }) => vec![name],
                    Some(InFlight::Rename { from, to, .. }) => vec![from, to],
                    None => vec![],
                };
                for n in names {
                    m.acked.remove(&n);
                    m.refused.insert(n);
                }
            }
            // The mount died under us (ENOTCONN, ECONNABORTED): the
            // operation stays in flight. Anything else (EIO above all) is
            // a violation unless the kill came first.
            Err(e) => {
                let dead = matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED));
                if !dead && !stop.load(Ordering::Relaxed) {
                    model.lock().expect("model").unexpected.push(format!("{e} (errno {:?})", e.raw_os_error()));
                }
                return;
            }
        }
    }
}

/// Checks the tree through the mount against the model; returns violations.
fn check_mounted(mnt: &Path, model: &Model) -> Vec<String> {
    let mut bad = Vec::new();
    let listed: BTreeMap<String, PathBuf> = match std::fs::read_dir(mnt) {
        Ok(rd) => rd.filter_map(Result::ok).map(|e| (e.file_name().to_string_lossy().into_owned(), e.path())).collect(),
        Err(e) => return vec![format!("cannot list the remounted tree: {e}")],
    };
    let read = |name: &str| std::fs::read(mnt.join(name)).ok();
    let mut expected_names: Vec<&String> = model.acked.keys().filter(|n| !model.refused.contains(*n)).collect();
    match &model.in_flight {
        Some(InFlight::Rename { from, to, content }) => {
            let (a, b) = (read(from), read(to));
            match (a, b) {
                (Some(x), None) | (None, Some(x)) if x == *content => {}
                (a, b) => bad.push(format!(
                    "rename {from} -> {to} in flight: {from} {}, {to} {} (want the content under exactly one)",
                    a.map_or("absent".into(), |v| format!("{} bytes", v.len())),
                    b.map_or("absent".into(), |v| format!("{} bytes", v.len()))
                )),
            }
            expected_names.retain(|n| *n != from);
        }
        Some(InFlight::Unlink { name, content }) => {
            if let Some(got) = read(name) {
                if got != *content {
                    bad.push(format!("unlink of {name} in flight: still there with {} other bytes", got.len()));
                }
            }
            expected_names.retain(|n| *n != name);
        }
        Some(InFlight::Write { name }) => expected_names.retain(|n| *n != name),
        None => {}
    }
    for name in expected_names {
        match read(name) {
            None => bad.push(format!("acknowledged file {name} is missing")),
            Some(got) if got != model.acked[name] => bad.push(format!(
                "acknowledged file {name}: {} bytes, want {} (first difference at byte {})",
                got.len(),
                model.acked[name].len(),
                got.iter()
                    .zip(&model.acked[name])
                    .position(|(a, b)| a != b)
                    .unwrap_or(got.len().min(model.acked[name].len()))
            )),
            Some(_) => {}
        }
    }
    // Nothing the workload never made may appear.
    let in_flight_names: Vec<&String> = match &model.in_flight {
        Some(InFlight::Write { name }) | Some(InFlight::Unlink { name, .. }) => vec![name],
        Some(InFlight::Rename { from, to, .. }) => vec![from, to],
        None => vec![],
    };
    for name in listed.keys() {
        if !model.acked.contains_key(name) && !in_flight_names.contains(&name) && !model.refused.contains(name) {
            bad.push(format!("{name} appeared: the workload never acknowledged it"));
        }
    }
    bad
}

/// Offline checks of a crashed data dir; returns violations.
fn check_offline(data: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let out = syncer().arg("log").arg("verify").arg(data).output().expect("log verify");
    if !out.status.success() {
        bad.push(format!(
            "log verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let dump = |what: &str| -> Result<_, String> {
        let e = LiveTree::open(data).map_err(|e| format!("{what}: open: {e}"))?;
        let d = e.dump_tree().map_err(|e| format!("{what}: dump: {e}"))?;
        e.close().map_err(|e| format!("{what}: close: {e}"))?;
        Ok(d)
    };
    let on_disk = match dump("index on disk") {
        Ok(d) => d,
        Err(e) => return [bad, vec![e]].concat(),
    };
    let index = engine::Layout { dir: data.to_path_buf() }.index();
    if let Err(e) = std::fs::remove_file(&index) {
        bad.push(format!("remove {}: {e}", index.display()));
    }
    match dump("rebuilt index") {
        Ok(rebuilt) if rebuilt != on_disk => bad.push(format!(
            "index rebuilt from the log differs from the one on disk ({} vs {} entries)",
            rebuilt.len(),
            on_disk.len()
        )),
        Ok(_) => {}
        Err(e) => bad.push(e),
    }
    // A tree: paths unique, every entry's node carries the entry's name.
    let mut seen = std::collections::BTreeSet::new();
    for (path, node, _) in &on_disk {
        if !seen.insert(path.clone()) {
            bad.push(format!("path {} appears twice", String::from_utf8_lossy(path)));
        }
        let last = path.rsplit(|&b| b == b'/').next().unwrap_or(&[]);
        if !path.is_empty() && node.name != last {
            bad.push(format!("{} holds a node named {:?}", String::from_utf8_lossy(path), node.name));
        }
    }
    bad
}

/// Where the data dir lives: the test's temp dir, or a small disk that
/// fills up (a tmpfs of `mib` MiB, `free_mib` of them left free by a
/// ballast file, which is deleted halfway so that writes resume).
#[derive(Clone, Copy, Debug)]
enum Disk {
    Roomy,
    NearlyFull { mib: u32, free_mib: u64 },
}

/// Runs `iterations` kill -9 cycles on a fresh data dir.
fn crashloop(iterations: u64, seed: u64, disk: Disk) -> Totals {
    support::require_fuse();
    let tmp = tempfile::tempdir().expect("tempdir");
    let small = match disk {
        Disk::NearlyFull { mib, .. } => Some(support::Tmpfs::new(&tmp.path().join("disk"), mib)),
        Disk::Roomy => None,
    };
    let data = small.as_ref().map_or_else(|| tmp.path().join("data"), |d| d.0.join("data"));
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let st = syncer().arg("init").arg(&data).arg("--block-size").arg("64KiB").output().expect("init");
    assert!(st.status.success(), "init: {}", String::from_utf8_lossy(&st.stderr));
    let model = Arc::new(Mutex::new(Model::default()));
    let mut totals = Totals::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut next_name = 0u64;
    let ballast = small.as_ref().map(|d| d.0.join("ballast"));
    if let (Some(path), Disk::NearlyFull { free_mib, .. }) = (&ballast, disk) {
        let free = engine::blob::disk_space(&data).map_or(0, |(free, _)| free);
        let size = free.saturating_sub(free_mib << 20);
        // A tmpfs counts only written pages: written for real, not sparse.
        std::fs::write(path, vec![1u8; size as usize]).expect("ballast");
    }
    let started = Instant::now();
    for i in 0..iterations {
        if i == iterations / 2 {
            if let Some(path) = &ballast {
                std::fs::remove_file(path).expect("free the ballast");
            }
        }
        let mut child = mount(&data, &mnt);
        let before = check_mounted(&mnt, &model.lock().expect("model"));
        totals.violations.extend(before.into_iter().map(|v| format!("iteration {i}: {v}")));
        // Start the next round from what is really there.
        {
            let mut m = model.lock().expect("model");
            let on_disk: BTreeMap<String, Vec<u8>> = std::fs::read_dir(&mnt)
                .expect("ls")
                .filter_map(Result::ok)
                .filter_map(|e| Some((e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).ok()?)))
                .collect();
            m.acked = on_disk;
            m.in_flight = None;
            m.refused.clear();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (mnt, model, stop, wseed, mut names) =
                (mnt.clone(), model.clone(), stop.clone(), rng.random(), next_name);
            std::thread::spawn(move || {
                workload(&mnt, &model, wseed, &mut names, &stop);
                names
            })
        };
        std::thread::sleep(Duration::from_millis(rng.random_range(20..400)));
        // SAFETY: kill has no memory preconditions; the pid is our live child.
        let killed = unsafe { libc::kill(child.id() as i32, libc::SIGKILL) } == 0;
        assert!(killed, "kill -9 {}", child.id());
        let _ = child.wait();
        stop.store(true, Ordering::Relaxed);
        next_name = worker.join().expect("workload thread");
        totals.mid_op += u64::from(model.lock().expect("model").in_flight.is_some());
        lazy_unmount(&mnt);
        totals.crashes += 1;
        totals.iterations += 1;
        {
            let mut m = model.lock().expect("model");
            let unexpected = std::mem::take(&mut m.unexpected);
            totals.violations.extend(unexpected.into_iter().map(|v| format!("iteration {i}: unexpected error {v}")));
        }
        // On a full disk the offline checks (which rebuild the index) run
        // on a copy elsewhere: they check the data dir, not the room.
        let offline = match &small {
            Some(_) => {
                let copy = tmp.path().join("offline");
                let _ = std::fs::remove_dir_all(&copy);
                support::copy_dir(&data, &copy);
                check_offline(&copy)
            }
            None => check_offline(&data),
        };
        totals.violations.extend(offline.into_iter().map(|v| format!("iteration {i}: {v}")));
        if (i + 1) % 50 == 0 {
            println!(
                "crashloop: {} iterations, {} violations so far, {:?}",
                i + 1,
                totals.violations.len(),
                started.elapsed()
            );
        }
    }
    // The last crash, checked through one more mount, then a clean unmount.
    let mut child = mount(&data, &mnt);
    let last = check_mounted(&mnt, &model.lock().expect("model"));
    totals.violations.extend(last.into_iter().map(|v| format!("final remount: {v}")));
    let st = syncer().arg("unmount").arg(&mnt).status().expect("unmount");
    assert!(st.success(), "syncer unmount");
    let _ = child.wait();
    totals.fsyncs = model.lock().expect("model").fsyncs;
    totals.no_space = model.lock().expect("model").no_space;
    println!(
        "crashloop ({disk:?}): iterations {}, crashes injected {} ({} during an operation), fsyncs acknowledged {}, \
         refused for no space {}, violations {}",
        totals.iterations,
        totals.crashes,
        totals.mid_op,
        totals.fsyncs,
        totals.no_space,
        totals.violations.len()
    );
    drop(small);
    totals
}

fn assert_clean(t: &Totals) {
    assert!(t.fsyncs > 0, "the workload never got an fsync acknowledged: the test proved nothing");
    assert!(t.mid_op > 0, "no kill landed during an operation: the test proved little");
    assert!(t.violations.is_empty(), "{} violations:\n{}", t.violations.len(), t.violations.join("\n"));
}

#[test]
fn crash_consistency_20_kills() {
    let seed = std::env::var("CRASHLOOP_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
    assert_clean(&crashloop(20, seed, Disk::Roomy));
}

/// The same on a disk that fills up: kills land during ENOSPC storms, and
/// nothing acknowledged is lost; halfway, space comes back.
#[test]
fn crash_consistency_on_a_nearly_full_disk() {
    let seed = std::env::var("CRASHLOOP_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0xf011);
    let t = crashloop(16, seed, Disk::NearlyFull { mib: 40, free_mib: 6 });
    assert!(t.no_space > 0, "the disk never refused a write: no storm was tested");
    assert_clean(&t);
}

#[test]
#[ignore = "long run: CRASHLOOP_ITERATIONS=1000 cargo test --release --test crashloop -- --ignored --nocapture"]
fn crash_consistency_long() {
    let n = std::env::var("CRASHLOOP_ITERATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let seed = std::env::var("CRASHLOOP_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("crashloop seed {seed}");
    assert_clean(&crashloop(n, seed, Disk::Roomy));
}

/// The checks see what they must: a lost acknowledged write, a changed one,
/// a half-done rename, a file nobody made.
#[test]
fn the_checks_see_each_violation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    std::fs::write(root.join("kept"), b"old").expect("write");
    std::fs::write(root.join("stray"), b"x").expect("write");
    let model = |acked: &[(&str, &[u8])], in_flight| Model {
        acked: acked.iter().map(|(n, c)| (n.to_string(), c.to_vec())).collect(),
        in_flight,
        fsyncs: 1,
        ..Model::default()
    };
    let cases: Vec<(&str, Model, &str)> = vec![
        ("lost", model(&[("kept", b"old"), ("gone", b"y")], None), "acknowledged file gone is missing"),
        ("changed", model(&[("kept", b"new")], None), "acknowledged file kept: 3 bytes, want 3"),
        ("stray", model(&[("kept", b"old")], None), "stray appeared"),
        (
            "rename under neither name",
            model(
                &[("kept", b"old"), ("stray", b"x")],
                Some(InFlight::Rename { from: "a".into(), to: "b".into(), content: b"z".to_vec() }),
            ),
            "rename a -> b in flight: a absent, b absent",
        ),
    ];
    for (what, m, want) in cases {
        let found = check_mounted(root, &m);
        assert!(found.iter().any(|v| v.contains(want)), "{what}: {found:?}");
    }
    assert_eq!(check_mounted(root, &model(&[("kept", b"old"), ("stray", b"x")], None)), Vec::<String>::new());
}
