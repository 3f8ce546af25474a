//! Point-in-time mounts and restore, end to end through the `syncer` binary:
//! a live mount (its own process, holding the writer lock and `index.redb`)
//! records a scripted sequence of changes; point-in-time mounts of the same
//! data dir, several at once and beside the live mount, show exactly the
//! tree of each moment; every mutation of a point-in-time mount fails with
//! EROFS; `restore` writes old versions out byte for byte and records a
//! restore into the tree as a new event.

use engine::TreeRead;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use engine::ids::Timestamp;
use engine::Queries;

fn run(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_syncer")).args(args).output().expect("run syncer")
}

fn ok(args: &[&std::ffi::OsStr]) -> String {
    let o = run(args);
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "syncer {args:?}: {text}");
    text
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// WHEN as a unix timestamp with nanoseconds.
fn when(t: Timestamp) -> String {
    format!("{}.{:09}", t.0.div_euclid(1_000_000_000), t.0.rem_euclid(1_000_000_000))
}

#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir { mode: u32 },
    File { mode: u32, bytes: Vec<u8> },
    Symlink(PathBuf),
}

/// The whole tree under `root`: path → kind, permissions and content. Times
/// are left out: directory times differ between live and point-in-time views
/// by design (see `LiveTree::open_at`).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir") {
            let e = e.expect("entry");
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).expect("lstat");
            let rel = p.strip_prefix(root).expect("prefix").to_path_buf();
            let mode = m.mode() & 0o7777;
            let entry = if m.file_type().is_symlink() {
                Entry::Symlink(std::fs::read_link(&p).expect("readlink"))
            } else if m.is_dir() {
                stack.push(p.clone());
                Entry::Dir { mode }
            } else {
                Entry::File { mode, bytes: std::fs::read(&p).expect("read") }
            };
            out.insert(rel, entry);
        }
    }
    out
}

fn write_synced(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("create");
    f.write_all(bytes).expect("write");
    f.sync_all().expect("fsync");
}

/// Waits until event times have moved past now, so the moment recorded
/// after a step is strictly after its events and before the next step's.
fn mark() -> Timestamp {
    std::thread::sleep(Duration::from_millis(30));
    let t = Timestamp::now();
    std::thread::sleep(Duration::from_millis(30));
    t
}

struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3").arg("-u").arg(&self.0).status();
    }
}

fn mount(data: &Path, mnt: &Path, at: Option<&str>) -> Mounted {
    std::fs::create_dir_all(mnt).expect("mkdir");
    let mut args = vec![os("mount"), data.as_os_str(), mnt.as_os_str()];
    if let Some(at) = at {
        args.extend([os("--at"), os(at)]);
    }
    ok(&args);
    Mounted(mnt.to_path_buf())
}

fn unmount(m: Mounted) {
    let mut tries = 0;
    while !run(&[os("unmount"), m.0.as_os_str()]).status.success() {
        tries += 1;
        assert!(tries < 50, "unmount {} keeps failing", m.0.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::mem::forget(m);
}

fn init(tmp: &Path) -> PathBuf {
    let data = tmp.join("data");
    ok(&[os("init"), data.as_os_str(), os("--block-size"), os("64KiB")]);
    data
}

#[test]
fn at_mounts_show_each_scripted_moment_beside_a_live_mount() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = init(tmp.path());
    let live = mount(&data, &tmp.path().join("live"), None);
    let l = live.0.clone();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut moments: Vec<(Timestamp, BTreeMap<PathBuf, Entry>)> = Vec::new();

    let t0 = mark();
    moments.push((t0, snapshot(&l)));
    // Step 1: a directory, a small file, a big file.
    std::fs::create_dir(l.join("docs")).expect("mkdir");
    write_synced(&l.join("docs/a.txt"), b"version one\n");
    write_synced(&l.join("b.bin"), &big);
    moments.push((mark(), snapshot(&l)));
    // Step 2: overwrite, rename into the directory, chmod.
    write_synced(&l.join("docs/a.txt"), b"version two, longer\n");
    std::fs::rename(l.join("b.bin"), l.join("docs/b.bin")).expect("rename");
    std::fs::set_permissions(l.join("docs/a.txt"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    moments.push((mark(), snapshot(&l)));
    // Step 3: unlink, an empty directory, a symlink, an append.
    std::fs::remove_file(l.join("docs/a.txt")).expect("unlink");
    std::fs::create_dir(l.join("empty")).expect("mkdir");
    std::os::unix::fs::symlink("docs/b.bin", l.join("link")).expect("symlink");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(l.join("docs/b.bin")).expect("open");
        f.write_all(b"tail").expect("append");
        f.sync_all().expect("fsync");
    }
    moments.push((mark(), snapshot(&l)));
    // Step 4: shrink, rmdir.
    std::fs::OpenOptions::new().write(true).open(l.join("docs/b.bin")).expect("open").set_len(1000).expect("truncate");
    std::fs::remove_dir(l.join("empty")).expect("rmdir");
    moments.push((mark(), snapshot(&l)));

    assert!(moments[0].1.is_empty(), "{:?}", moments[0].1);
    assert!(moments.windows(2).all(|w| w[0].1 != w[1].1), "every step changes the tree");

    // Every moment mounted at once, beside the live mount.
    let mut views = Vec::new();
    for (i, (t, _)) in moments.iter().enumerate() {
        views.push(mount(&data, &tmp.path().join(format!("at{i}")), Some(&when(*t))));
    }
    for ((_, expected), view) in moments.iter().zip(&views) {
        assert_eq!(&snapshot(&view.0), expected, "at-mount {}", view.0.display());
    }
    // The live mount keeps working while the views are up.
    write_synced(&l.join("after.txt"), b"later");
    assert_eq!(std::fs::read(l.join("after.txt")).expect("read"), b"later");
    assert!(!views[4].0.join("after.txt").exists(), "a view does not move");

    // Restore while mounted: --to writes a copy; in place, the live mount
    // does it and shows it at once (tests/control.rs has more).
    let dest = tmp.path().join("a.v1");
    let at1 = when(moments[1].0);
    ok(&[os("restore"), data.as_os_str(), os("/docs/a.txt"), os("--at"), os(&at1), os("--to"), dest.as_os_str()]);
    assert_eq!(std::fs::read(&dest).expect("read"), b"version one\n");
    let out = ok(&[os("restore"), data.as_os_str(), os("/docs/a.txt"), os("--at"), os(&at1)]);
    assert!(out.contains("into the live tree"), "{out}");
    assert_eq!(std::fs::read(l.join("docs/a.txt")).expect("read restored"), b"version one\n");
    assert!(!views[4].0.join("docs/a.txt").exists(), "a view does not move");

    for v in views {
        unmount(v);
    }
    unmount(live);
}

#[test]
fn every_mutation_of_an_at_mount_fails_with_erofs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = init(tmp.path());
    {
        let live = mount(&data, &tmp.path().join("live"), None);
        std::fs::create_dir(live.0.join("d")).expect("mkdir");
        write_synced(&live.0.join("d/f"), b"content");
        unmount(live);
    }
    let view = mount(&data, &tmp.path().join("view"), Some("now"));
    let v = &view.0;
    let erofs = |what: &str, r: std::io::Result<()>| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    erofs("write", std::fs::OpenOptions::new().write(true).open(v.join("d/f")).map(drop));
    erofs("create", std::fs::File::create(v.join("new")).map(drop));
    erofs("mkdir", std::fs::create_dir(v.join("nd")));
    erofs("rename", std::fs::rename(v.join("d/f"), v.join("d/g")));
    erofs("unlink", std::fs::remove_file(v.join("d/f")));
    erofs("rmdir", std::fs::remove_dir(v.join("d")));
    erofs("chmod", std::fs::set_permissions(v.join("d/f"), std::fs::Permissions::from_mode(0o600)));
    erofs("truncate", std::fs::OpenOptions::new().write(true).truncate(true).open(v.join("d/f")).map(drop));
    erofs("symlink", std::os::unix::fs::symlink("d/f", v.join("l")));
    erofs("link", std::fs::hard_link(v.join("d/f"), v.join("h")));
    let path = std::ffi::CString::new(v.join("d/f").as_os_str().as_encoded_bytes()).expect("cstring");
    // SAFETY: valid NUL-terminated strings and a 1-byte buffer.
    let r = unsafe { libc::setxattr(path.as_ptr(), c"user.k".as_ptr(), b"v".as_ptr().cast(), 1, 0) };
    assert_eq!(r, -1);
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EROFS), "setxattr");
    // SAFETY: as above.
    let r = unsafe { libc::utimes(path.as_ptr(), std::ptr::null()) };
    assert_eq!(r, -1);
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EROFS), "utimes");
    assert_eq!(std::fs::read(v.join("d/f")).expect("read"), b"content");
    unmount(view);

    // Whatever the kernel lets through, the engine cannot change a view:
    // `PastView` has no mutations at all (the compiler holds that), and the
    // view still reads what it showed.
    let e = engine::PastView::open(&data, Timestamp::now()).expect("open a view");
    let f = e.lookup(e.lookup(engine::ids::NodeId::ROOT, b"d").expect("d").id, b"f").expect("f");
    assert_eq!(e.read_file(f.id).expect("read"), b"content");
}

#[test]
fn restore_round_trip_is_byte_exact_and_recorded() {
    use engine::event::{Attrs, BlockChange, NodeKind};
    use engine::ids::NodeId;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = init(tmp.path());
    let old: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
    let (node, t_old) = {
        let e = engine::LiveTree::open(&data).expect("open");
        let f =
            e.create(NodeId::ROOT, b"f", NodeKind::File, Attrs { mode: 0o644, ..Attrs::default() }, b"").expect("c");
        let bs = e.block_size() as usize;
        let blocks = old
            .chunks(bs)
            .enumerate()
            .map(|(i, c)| BlockChange { index: i as u64, block: Some(e.put_block(c).expect("put")) })
            .collect();
        e.write_blocks(f.id, old.len() as u64, blocks).expect("write");
        let t_old = mark();
        let b = e.put_block(b"new and short").expect("put");
        e.truncate(f.id, 0).expect("truncate");
        e.write_blocks(f.id, 13, vec![BlockChange { index: 0, block: Some(b) }]).expect("write");
        e.close().expect("close");
        (f.id, t_old)
    };
    let writes_before = engine::PastView::open(&data, Timestamp(i64::MAX))
        .expect("view")
        .index()
        .expect("ix")
        .history(node, Timestamp(i64::MAX))
        .expect("h")
        .len();
    ok(&[os("restore"), data.as_os_str(), os("/f"), os("--at"), os(&when(t_old))]);
    let e = engine::LiveTree::open(&data).expect("open");
    let n = e.lookup(NodeId::ROOT, b"f").expect("f");
    assert_eq!(n.id, node, "restored in place");
    assert_eq!(n.size, old.len() as u64);
    let mut got = Vec::new();
    for (_, b) in e.file_blocks(node, 0, 10).expect("blocks") {
        got.extend(e.read_block(&b).expect("read"));
    }
    assert_eq!(got, old, "byte for byte");
    let history = e.index().expect("ix").history(node, Timestamp(i64::MAX)).expect("history");
    assert!(history.len() > writes_before, "the restore is recorded as new events");
    let last = engine::forensics::event_at(&e, history.last().expect("one").0).expect("ev");
    assert!(last.time > t_old && last.change.kind_name() == "write", "{last:?}");
    drop(e);
    let text = ok(&[os("history"), data.as_os_str(), os("/f")]);
    assert!(text.contains(&format!("{} versions", history.len())), "{text}");
}

#[test]
fn views_share_history_redb_and_refresh_it_when_alone() {
    use engine::event::{Attrs, NodeKind};
    use engine::ids::NodeId;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = init(tmp.path());
    let live = engine::LiveTree::open(&data).expect("open");
    live.create(NodeId::ROOT, b"a", NodeKind::File, Attrs::default(), b"").expect("create");
    let latest = Timestamp(i64::MAX);
    let v1 = engine::PastView::open(&data, latest).expect("view beside the live writer");
    assert!(v1.open_report().stale_history.is_none());
    assert!(v1.lookup(NodeId::ROOT, b"a").is_ok());
    live.create(NodeId::ROOT, b"b", NodeKind::File, Attrs::default(), b"").expect("create");
    let v2 = engine::PastView::open(&data, latest).expect("second view");
    assert!(v2.open_report().stale_history.is_some(), "v1 holds history.redb: v2 cannot update it");
    assert!(v2.lookup(NodeId::ROOT, b"a").is_ok());
    assert!(matches!(v2.lookup(NodeId::ROOT, b"b"), Err(engine::Error::Fs { err: engine::FsError::NotFound, .. })));
    drop((v1, v2));
    let v3 = engine::PastView::open(&data, latest).expect("third view");
    assert!(v3.open_report().stale_history.is_none());
    assert!(v3.lookup(NodeId::ROOT, b"b").is_ok(), "alone, a view brings history.redb up to date");
    assert!(live.create(NodeId::ROOT, b"c", NodeKind::File, Attrs::default(), b"").is_ok(), "writer unaffected");
}

/// Long histories are read from checkpoints plus a short fold: the state a
/// view shows at each moment equals what the live tree showed then.
#[test]
fn views_of_a_long_history_match_the_live_states() {
    use engine::event::{AttrChange, Attrs, BlockChange, NodeKind};
    use engine::ids::NodeId;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = init(tmp.path());
    let live = engine::LiveTree::open(&data).expect("open");
    let f = live.create(NodeId::ROOT, b"f", NodeKind::File, Attrs::default(), b"").expect("create").id;
    let d = live.create(NodeId::ROOT, b"d", NodeKind::Dir, Attrs::default(), b"").expect("mkdir").id;
    let mut moments = Vec::new();
    for i in 0..120u32 {
        match i % 4 {
            0 => drop(
                live.set_attrs(f, AttrChange { mode: Some(0o600 + i % 8), ..AttrChange::default() }).expect("chmod"),
            ),
            1 => {
                let b = live.put_block(&i.to_le_bytes()).expect("put");
                live.write_blocks(f, u64::from(i) * 10, vec![BlockChange { index: 0, block: Some(b) }]).expect("write");
            }
            2 => drop(live.truncate(f, u64::from(i)).expect("truncate")),
            _ => drop(live.create(d, format!("e{i}").as_bytes(), NodeKind::File, Attrs::default(), b"").expect("c")),
        }
        if i % 7 == 0 {
            std::thread::sleep(Duration::from_millis(2));
            let t = Timestamp::now();
            moments.push((t, live.node(f).expect("f"), live.read_dir(d, None, usize::MAX).expect("ls").len()));
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    for (t, expected, entries) in moments {
        let view = engine::PastView::open(&data, t).expect("view");
        let got = view.node(f).expect("f at t");
        assert_eq!((got.size, got.attrs.mode), (expected.size, expected.attrs.mode), "at {t:?}");
        assert_eq!(view.read_dir(d, None, usize::MAX).expect("ls").len(), entries, "at {t:?}");
    }
}
