//! A big directory through a real mount: listed with small `getdents64`
//! buffers while other names come and go, every name present throughout
//! comes back exactly once; a point-in-time mount lists what was there at
//! its time, each name once. `measure_big_directory` (ignored: run it with
//! `cargo test --release -p syncer-fs --test bigdir -- --ignored --nocapture`)
//! prints what create, lookup, stat and a readdir page cost at 10,000 and
//! 100,000 entries (`BIGDIR_SIZES=10000,100000,1000000` to choose).

// Test code: a panic here is a failed test, not a lost file.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::event::{Attrs, NodeKind};
use engine::ids::{MachineId, NodeId, Timestamp};
use engine::{LiveTree, PastView, Queries, Store, TreeRead};
use syncer_fs::MountOptions;
use testkit::mount::*;

/// One `getdents64` entry: (d_off, name).
type Dirent = (i64, Vec<u8>);

/// An open directory read with raw `getdents64` calls of `buf` bytes.
struct RawDir {
    fd: i32,
    buf: Vec<u8>,
}

impl RawDir {
    fn open(p: &Path, buf: usize) -> RawDir {
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string; the fd is closed on drop.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
        assert!(fd >= 0, "open {}: {}", p.display(), std::io::Error::last_os_error());
        RawDir { fd, buf: vec![0; buf] }
    }

    /// The entries of one `getdents64` call; empty at the end.
    fn next_batch(&mut self) -> Vec<Dirent> {
        self.try_batch().unwrap_or_else(|e| panic!("getdents64: {}", std::io::Error::from_raw_os_error(e)))
    }

    /// [`RawDir::next_batch`], or the call's errno.
    fn try_batch(&mut self) -> Result<Vec<Dirent>, i32> {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, self.fd, self.buf.as_mut_ptr(), self.buf.len()) };
        if n < 0 {
            return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        let mut out = Vec::new();
        let mut at = 0usize;
        while at < n as usize {
            let b = &self.buf[at..];
            // struct linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name.
            let off = i64::from_ne_bytes(b[8..16].try_into().unwrap());
            let reclen = u16::from_ne_bytes(b[16..18].try_into().unwrap()) as usize;
            let name = &b[19..reclen];
            let len = name.iter().position(|&c| c == 0).unwrap();
            out.push((off, name[..len].to_vec()));
            at += reclen;
        }
        Ok(out)
    }

    /// Every entry from here to the end, and how many calls it took.
    fn rest(&mut self) -> (Vec<Dirent>, usize) {
        let (mut all, mut calls) = (Vec::new(), 0);
        loop {
            let batch = self.next_batch();
            calls += 1;
            if batch.is_empty() {
                return (all, calls);
            }
            all.extend(batch);
        }
    }

    fn seek(&mut self, off: i64) {
        // SAFETY: a valid fd.
        let r = unsafe { libc::lseek(self.fd, off, libc::SEEK_SET) };
        assert_eq!(r, off, "lseek: {}", std::io::Error::last_os_error());
    }
}

impl Drop for RawDir {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.fd) };
    }
}

fn stable(i: usize) -> String {
    format!("s{i:05}")
}

/// Checks one pass: `.` and `..` first, no name twice, no offset twice,
/// every name of `must` present; returns the names listed.
fn check_pass(listed: &[Dirent], must: &BTreeSet<String>, what: &str) -> BTreeSet<String> {
    assert!(listed.len() >= 2, "{what}: {} entries", listed.len());
    assert_eq!((listed[0].1.as_slice(), listed[1].1.as_slice()), (&b"."[..], &b".."[..]), "{what}");
    let offs: BTreeSet<i64> = listed.iter().map(|(o, _)| *o).collect();
    assert_eq!(offs.len(), listed.len(), "{what}: every offset is distinct");
    let mut names = BTreeSet::new();
    for (_, n) in &listed[2..] {
        let n = String::from_utf8(n.clone()).unwrap();
        assert!(names.insert(n.clone()), "{what}: {n} listed twice");
    }
    let missing: Vec<&String> = must.difference(&names).take(5).collect();
    assert!(missing.is_empty(), "{what}: present throughout but not listed: {missing:?}");
    names
}

#[test]
fn a_big_directory_lists_each_stable_entry_once_while_others_come_and_go() {
    let m = Mounted::new();
    let d = m.p("big");
    std::fs::create_dir(&d).unwrap();
    let n = 20_000;
    let t = Instant::now();
    for i in 0..n {
        std::fs::File::create(d.join(stable(i))).unwrap();
    }
    eprintln!("created {n} files in {:?}", t.elapsed());
    let must: BTreeSet<String> = (0..n).map(stable).collect();

    // Names that sort between the stable ones come and go all along.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (d, stop) = (d.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut live = std::collections::VecDeque::new();
            let (mut made, mut removed) = (0usize, 0usize);
            let mut i = 7usize;
            while !stop.load(Ordering::Relaxed) {
                i = (i * 7919 + 13) % n;
                let name = format!("{}~{made}", stable(i));
                std::fs::File::create(d.join(&name)).unwrap();
                live.push_back(name);
                made += 1;
                if live.len() > 200 {
                    std::fs::remove_file(d.join(live.pop_front().unwrap())).unwrap();
                    removed += 1;
                }
            }
            (made, removed)
        })
    };
    let mut calls = 0;
    for pass in 0..3 {
        let mut dir = RawDir::open(&d, 512);
        let (listed, c) = dir.rest();
        calls += c;
        let names = check_pass(&listed, &must, &format!("pass {pass}"));
        assert!(names.len() >= n, "pass {pass}");
        // Seeking back to an offset taken late in this pass goes on after
        // it, with the same offsets; one taken 20,000 names back was
        // forgotten (the handle remembers about 7,800 names this long).
        let k = listed.len() - 1_000;
        dir.seek(listed[k].0);
        let after = dir.next_batch();
        let next_stable = listed[k + 1..].iter().find(|(_, n)| !n.contains(&b'~')).unwrap();
        assert!(after.iter().any(|e| e == next_stable), "pass {pass}: seekdir resumes after {:?}", listed[k].1);
        dir.seek(listed[3].0);
        assert_eq!(dir.try_batch(), Err(libc::EINVAL), "pass {pass}: a forgotten offset");
    }
    stop.store(true, Ordering::Relaxed);
    let (made, removed) = churn.join().unwrap();
    eprintln!("3 passes in {calls} getdents64 calls of 512 bytes, while {made} names were made and {removed} removed");
    assert!(made > 100 && removed > 0, "the directory changed during the passes ({made} made)");

    // At rest, a listing is exactly the directory.
    let (listed, _) = RawDir::open(&d, 512).rest();
    let names = check_pass(&listed, &must, "at rest");
    let extra: Vec<&String> = names.difference(&must).collect();
    assert_eq!(extra.len(), made - removed, "the churned names left");
    assert!(extra.iter().all(|e| std::fs::symlink_metadata(d.join(e)).is_ok()));
}

#[test]
fn a_point_in_time_mount_lists_its_time_a_page_at_a_time() {
    require_fuse();
    let tmp = tempfile::tempdir().unwrap();
    let (data, mnt) = (tmp.path().join("data"), tmp.path().join("mnt"));
    std::fs::create_dir(&mnt).unwrap();
    Store::init(&data, engine::config::Config::new_default(MachineId::random())).unwrap();
    let live = LiveTree::open(&data).unwrap();
    let dir = live.create(NodeId::ROOT, b"d", NodeKind::Dir, Attrs::default(), b"").unwrap().id;
    let n = 3_000;
    for i in 0..n {
        live.create(dir, stable(i).as_bytes(), NodeKind::File, Attrs::default(), b"").unwrap();
    }
    // Each of these names has several versions before the view's time.
    for round in 0..3 {
        for i in (0..n).step_by(10) {
            live.unlink(dir, stable(i).as_bytes()).unwrap();
            let kind = if round == 2 { NodeKind::Dir } else { NodeKind::File };
            live.create(dir, stable(i).as_bytes(), kind, Attrs::default(), b"").unwrap();
        }
    }
    live.sync().unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let at = Timestamp::now();
    std::thread::sleep(Duration::from_millis(5));
    for i in (0..n).step_by(3) {
        if i % 10 == 0 {
            live.rmdir(dir, stable(i).as_bytes()).unwrap();
        } else {
            live.unlink(dir, stable(i).as_bytes()).unwrap();
        }
    }
    for i in 0..1_000 {
        live.create(dir, format!("t{i:05}").as_bytes(), NodeKind::File, Attrs::default(), b"").unwrap();
    }
    live.close().unwrap();
    drop(live);

    let view = Arc::new(PastView::open(&data, at).unwrap());
    // The view's read_dir in pages of 7 is its whole listing.
    let mut paged = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = view.read_dir(dir, after.as_deref(), 7).unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.name.clone());
        paged.extend(page.into_iter().map(|e| (String::from_utf8(e.name).unwrap(), e.kind)));
    }
    let expected: Vec<(String, NodeKind)> =
        (0..n).map(|i| (stable(i), if i % 10 == 0 { NodeKind::Dir } else { NodeKind::File })).collect();
    assert_eq!(paged, expected);
    assert_eq!(view.node(dir).unwrap().subdirs, n.div_ceil(10) as u64);

    let handle = syncer_fs::spawn(view, &mnt, MountOptions::new(data.display().to_string())).unwrap();
    let must: BTreeSet<String> = (0..n).map(stable).collect();
    let (listed, calls) = RawDir::open(&mnt.join("d"), 512).rest();
    let names = check_pass(&listed, &must, "the view");
    assert_eq!(names, must, "the view shows its time exactly");
    assert!(calls > 50, "{calls} getdents64 calls: small pages");
    let md = std::fs::symlink_metadata(mnt.join("d").join(stable(10))).unwrap();
    assert!(md.is_dir());
    assert_eq!(std::fs::symlink_metadata(mnt.join("d/t00000")).map_err(|e| e.raw_os_error()).err(), Some(Some(2)));
    handle.unmount().unwrap();
}

/// This process's resident memory, KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Seconds per call of `f` over `calls` calls, the best of three runs (the
/// machine is shared: the best run is the one least disturbed).
fn per_call(calls: usize, mut f: impl FnMut(usize)) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            for i in 0..calls {
                f(i);
            }
            t.elapsed().as_secs_f64() / calls as f64
        })
        .fold(f64::INFINITY, f64::min)
}

#[test]
#[ignore = "a measurement: prints costs at several directory sizes"]
fn measure_big_directory() {
    let sizes: Vec<usize> = std::env::var("BIGDIR_SIZES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("BIGDIR_SIZES: sizes separated by commas"))
        .collect();
    let mut rows: BTreeMap<usize, [f64; 9]> = BTreeMap::new();
    for &n in &sizes {
        require_fuse();
        let tmp = tempfile::tempdir().unwrap();
        let (data, mnt) = (tmp.path().join("data"), tmp.path().join("mnt"));
        std::fs::create_dir(&mnt).unwrap();
        Store::init(&data, engine::config::Config::new_default(MachineId::random())).unwrap();
        let live = Arc::new(LiveTree::open(&data).unwrap());
        let dir = live.create(NodeId::ROOT, b"d", NodeKind::Dir, Attrs::default(), b"").unwrap().id;
        let t = Instant::now();
        for i in 0..n {
            live.create(dir, format!("f{i:07}").as_bytes(), NodeKind::File, Attrs::default(), b"").unwrap();
        }
        live.sync().unwrap();
        let fill = t.elapsed();
        // About 2,000 more creates, into a directory of about n entries.
        let probe = 2_000;
        let mut made = 0;
        let create = per_call(probe / 3, |_| {
            live.create(dir, format!("g{made:07}").as_bytes(), NodeKind::File, Attrs::default(), b"").unwrap();
            made += 1;
        });
        live.sync().unwrap();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut pick = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            format!("f{:07}", rng % n as u64)
        };
        let lookup = per_call(probe, |_| {
            live.lookup(dir, pick().as_bytes()).unwrap();
        });
        let ids: Vec<NodeId> = (0..probe).map(|_| live.lookup(dir, pick().as_bytes()).unwrap().id).collect();
        let stat = per_call(probe, |i| {
            live.node(ids[i]).unwrap();
        });
        // Engine pages of 100 from random names.
        let page = per_call(probe / 10, |_| {
            let p = live.read_dir(dir, Some(pick().as_bytes()), 100).unwrap();
            assert!(!p.is_empty() || n < 100);
        });
        let t = Instant::now();
        let mut after: Option<Vec<u8>> = None;
        let mut listed = 0;
        loop {
            let p = live.read_dir(dir, after.as_deref(), 1024).unwrap();
            let Some(last) = p.last() else { break };
            after = Some(last.name.clone());
            listed += p.len();
        }
        let engine_whole = t.elapsed().as_secs_f64();
        assert_eq!(listed, n + made);
        // Through a mount: getdents64 of 4 KiB from a fresh open, 50 calls
        // (the first, the costly one of a snapshot, included).
        let handle = syncer_fs::spawn(live.clone(), &mnt, MountOptions::new(data.display().to_string())).unwrap();
        let fuse_page = per_call(1, |_| {
            let mut raw = RawDir::open(&mnt.join("d"), 4096);
            for _ in 0..50 {
                assert!(!raw.next_batch().is_empty());
            }
        }) / 50.0;
        let rss_before = rss_kib();
        let t = Instant::now();
        let (all, _) = RawDir::open(&mnt.join("d"), 32 << 10).rest();
        let whole = t.elapsed().as_secs_f64();
        assert_eq!(all.len(), n + made + 2);
        let rss_after = rss_kib();
        handle.unmount().unwrap();
        live.close().unwrap();
        drop(live);
        // The same through a point-in-time view of now.
        let t = Instant::now();
        let view = PastView::open(&data, Timestamp::now()).unwrap();
        let view_open = t.elapsed().as_secs_f64();
        let past_lookup = per_call(probe, |_| {
            view.lookup(dir, pick().as_bytes()).unwrap();
        });
        let past_page = per_call(probe / 10, |_| {
            let p = view.read_dir(dir, Some(pick().as_bytes()), 100).unwrap();
            assert!(!p.is_empty() || n < 100);
        });
        // What each page cost before pages: the directory's whole history
        // folded into a map.
        let at = view.at().unwrap();
        let whole_map = per_call(3, |_| {
            assert_eq!(view.index().unwrap().read_dir_at(dir, at).unwrap().len(), n + made);
        });
        let us = |s: f64| s * 1e6;
        println!(
            "{n:>8} entries (filled in {fill:.1?}): create {:.1} us, lookup {:.1} us, stat {:.1} us, \
             engine page of 100 {:.1} us, mount getdents64 4 KiB {:.1} us; whole listing: engine {:.2} s, \
             mount {:.2} s (process RSS {} -> {} MiB: the kernel holds what readdirplus handed out); \
             view: open {:.2} s, lookup {:.1} us, page of 100 {:.1} us (a whole-history map: {:.1} ms)",
            us(create),
            us(lookup),
            us(stat),
            us(page),
            us(fuse_page),
            engine_whole,
            whole,
            rss_before / 1024,
            rss_after / 1024,
            view_open,
            us(past_lookup),
            us(past_page),
            whole_map * 1e3,
        );
        rows.insert(n, [create, lookup, stat, page, fuse_page, engine_whole, whole, past_lookup, past_page]);
    }
    // Each size against the one before it: at 10,000 entries the whole
    // directory fits in the index writer's caches, so lookups there are
    // hash-map hits and the first ratio overstates growth.
    let names = [
        "create",
        "lookup",
        "stat",
        "engine page",
        "mount page",
        "engine listing",
        "mount listing",
        "view lookup",
        "view page",
    ];
    let rows: Vec<(usize, [f64; 9])> = rows.into_iter().collect();
    for pair in rows.windows(2) {
        let ((small, a), (big, b)) = (&pair[0], &pair[1]);
        let ratios: Vec<String> =
            names.iter().zip(a.iter().zip(b)).map(|(n, (x, y))| format!("{n} x{:.2}", y / x)).collect();
        println!("{big} vs {small} entries (x{:.0} the size): {}", *big as f64 / *small as f64, ratios.join(", "));
    }
}
