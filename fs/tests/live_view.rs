//! A mounted tree picks up peers' changes without a remount: after
//! `LiveTree::import`, stale dentries, cached pages and attributes are dropped,
//! so lookups and reads through the mount see the merged tree long before
//! the kernel's caches would run out (`syncer_fs::LIVE_TTL`). And the
//! kernel's inodes stay within the mount's budget: past it, the mount makes
//! the kernel forget the least recently used.

use std::sync::Arc;

use engine::event::{BlockChange, Change, Event};
use engine::ids::{MachineId, NodeId, Timestamp};
use engine::{LiveTree, Store, TreeRead};
use syncer_fs::MountOptions;

const PEER: MachineId = MachineId(0x00be_ef00);

/// A data dir and a live mount of it.
fn mounted(tmp: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, Arc<LiveTree>, syncer_fs::MountHandle) {
    assert!(unsafe { libc::geteuid() } == 0 && std::path::Path::new("/dev/fuse").exists(), "needs root and /dev/fuse");
    let (data, mnt) = (tmp.join("data"), tmp.join("mnt"));
    std::fs::create_dir(&mnt).expect("mkdir");
    Store::init(&data, engine::config::Config::new_default(MachineId::random())).expect("init");
    let engine = Arc::new(LiveTree::open(&data).expect("open"));
    let handle = syncer_fs::spawn(engine.clone(), &mnt, MountOptions::new(data.display().to_string())).expect("mount");
    (data, mnt, engine, handle)
}

/// One event of [`PEER`] on `node`, after everything in `clock`.
fn peer_event(node: NodeId, seq: u64, clock: &engine::clock::VectorClock, change: Change) -> Event {
    let mut clock = clock.clone();
    clock.tick(PEER);
    Event {
        node,
        machine: PEER,
        seq,
        time: Timestamp(Timestamp::now().0 + 1_000_000_000 + seq as i64),
        clock,
        change,
        base: None,
    }
}

/// Writes `events` as [`PEER`]'s log in `data`, as rsync would bring it.
fn write_peer_log(data: &std::path::Path, events: &[Event]) {
    let (mut log, _) =
        engine::log::LogWriter::open(Arc::new(engine::storage::FsStorage), &data.join("log"), PEER, 1 << 20)
            .expect("peer log");
    log.append(events).expect("append");
    log.sync().expect("sync");
}

/// [`PEER`], having seen the version `notes.txt` shows now, rewrites it
/// to `bytes` (one block); its log arrives and is imported.
fn peer_rewrites_notes(data: &std::path::Path, engine: &LiveTree, bytes: &[u8]) {
    let file = engine.lookup(NodeId::ROOT, b"notes.txt").expect("lookup").id;
    let shown = engine.content_version(file).expect("version").expect("a file has one");
    let block = engine.put_block(bytes).expect("put");
    engine.sync().expect("sync");
    let clock = engine.index().expect("index").node(file).expect("node").expect("exists").clock;
    let blocks = vec![BlockChange { index: 0, block: Some(block) }];
    let mut ev = peer_event(file, 1, &clock, Change::Content { size: bytes.len() as u64, blocks });
    ev.base = Some(shown);
    write_peer_log(data, &[ev]);
    assert_eq!(engine.import().expect("import").applied, 1);
}

/// Polls `check` for up to 600 ms (the invalidation runs on its own thread).
fn within_600ms(mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(600);
    while !check() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    check()
}

#[test]
fn imported_changes_show_through_an_open_mount() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, mnt, engine, handle) = mounted(tmp.path());

    std::fs::write(mnt.join("notes.txt"), b"old words").expect("write");
    // Held open across the import: its cached pages must not survive it.
    let held = std::fs::File::open(mnt.join("notes.txt")).expect("open");
    let mut old = [0u8; 9];
    std::os::unix::fs::FileExt::read_exact_at(&held, &mut old, 0).expect("read");
    assert_eq!(&old, b"old words");

    // A peer rewrote the file; its log arrives (as rsync would bring it).
    let file = engine.lookup(NodeId::ROOT, b"notes.txt").expect("lookup").id;
    let block = engine.put_block(b"new words from the peer").expect("put");
    engine.sync().expect("sync");
    let clock = engine.index().expect("index").node(file).expect("node").expect("exists").clock;
    let ev = peer_event(file, 1, &clock, Change::Truncate { size: 0, tail: None });
    let content = Change::Content { size: 23, blocks: vec![BlockChange { index: 0, block: Some(block) }] };
    let ev2 = peer_event(file, 2, &ev.clock, content);
    write_peer_log(&data, &[ev, ev2]);

    // Fresh attributes in the kernel's cache, valid for the TTL: only the
    // invalidation can make the new size show before that runs out.
    assert_eq!(held.metadata().expect("fstat").len(), 9);
    let report = engine.import().expect("import");
    assert_eq!(report.applied, 2);
    assert!(
        within_600ms(|| held.metadata().expect("fstat").len() == 23),
        "the kernel still shows the old size: no invalidation"
    );
    let mut new = [0u8; 23];
    std::os::unix::fs::FileExt::read_exact_at(&held, &mut new, 0).expect("read through the held handle");
    assert_eq!(&new, b"new words from the peer");
    assert_eq!(std::fs::read(mnt.join("notes.txt")).expect("read"), b"new words from the peer");
    drop(held);
    drop(engine);
    handle.unmount().expect("unmount");
}

#[test]
fn names_a_peer_moved_or_removed_stop_resolving_after_the_import() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, mnt, engine, handle) = mounted(tmp.path());
    std::fs::create_dir(mnt.join("dir")).expect("mkdir");
    std::fs::write(mnt.join("dir/moved.txt"), b"moved").expect("write");
    std::fs::write(mnt.join("removed.txt"), b"removed").expect("write");
    std::fs::write(mnt.join("kept.txt"), b"kept").expect("write");
    // The kernel now holds dentries for all four, valid for the TTL.
    for name in ["dir", "dir/moved.txt", "removed.txt", "kept.txt"] {
        std::fs::metadata(mnt.join(name)).expect("stat");
    }
    // Listed with readdirplus too, which hands out dentries of its own.
    assert_eq!(std::fs::read_dir(mnt.join("dir")).expect("readdir").count(), 1);
    // Renamed here: the kernel moves its dentry, and the peer then moves
    // the file again, from the new name.
    std::fs::write(mnt.join("local.txt"), b"local").expect("write");
    std::fs::rename(mnt.join("local.txt"), mnt.join("renamed.txt")).expect("rename");
    std::fs::metadata(mnt.join("renamed.txt")).expect("stat");

    let index = engine.index().expect("index");
    let dir = engine.lookup(NodeId::ROOT, b"dir").expect("lookup").id;
    let moved = engine.lookup(dir, b"moved.txt").expect("lookup").id;
    let removed = engine.lookup(NodeId::ROOT, b"removed.txt").expect("lookup").id;
    let clock_of = |n| index.node(n).expect("node").expect("exists").clock;
    let mv =
        peer_event(moved, 1, &clock_of(moved), Change::Move { parent: NodeId::ROOT, name: b"arrived.txt".to_vec() });
    let rm = peer_event(removed, 2, &clock_of(removed).join(&mv.clock), Change::Remove);
    let renamed = engine.lookup(NodeId::ROOT, b"renamed.txt").expect("lookup").id;
    let again = Change::Move { parent: dir, name: b"again.txt".to_vec() };
    let mv2 = peer_event(renamed, 3, &clock_of(renamed).join(&rm.clock), again);
    write_peer_log(&data, &[mv, rm, mv2]);
    assert_eq!(engine.import().expect("import").applied, 3);

    let gone = ["dir/moved.txt", "removed.txt", "renamed.txt"];
    assert!(
        within_600ms(|| gone.iter().all(|n| !mnt.join(n).exists())),
        "the kernel still resolves names the peer moved or removed: dentries not invalidated"
    );
    assert_eq!(std::fs::read(mnt.join("arrived.txt")).expect("read the moved file"), b"moved");
    assert_eq!(std::fs::read(mnt.join("dir/again.txt")).expect("read the file moved twice"), b"local");
    assert_eq!(std::fs::read(mnt.join("kept.txt")).expect("read"), b"kept");
    assert_eq!(std::fs::read_dir(mnt.join("dir")).expect("readdir").count(), 1);
    drop(engine);
    handle.unmount().expect("unmount");
}

/// A file's commit sets its mtime to the commit's time, which the kernel is
/// not told of: attributes read while writes were buffered must not stay
/// cached for the live TTL.
#[test]
fn the_committed_mtime_shows_soon_after_a_close() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_data, mnt, engine, handle) = mounted(tmp.path());
    let path = mnt.join("written.txt");
    let mut f = std::fs::File::create(&path).expect("create");
    std::io::Write::write_all(&mut f, b"buffered").expect("write");
    let while_buffered = f.metadata().expect("fstat").modified().expect("mtime");
    drop(f);
    let node = engine.lookup(NodeId::ROOT, b"written.txt").expect("lookup");
    let committed = node.attrs.mtime.to_system_time();
    assert!(committed != while_buffered, "the commit kept the write's mtime: this test checks nothing");
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let seen = std::fs::metadata(&path).expect("stat").modified().expect("mtime");
    assert_eq!(seen, committed, "the kernel still shows the mtime it cached while writes were buffered");
    drop(engine);
    handle.unmount().expect("unmount");
}

/// A file held open for writing across the import of a peer's concurrent
/// change: the peer's version (made on our first write) keeps the name, and
/// our later write goes on in our own line, the version our first write
/// made, which becomes a conflict copy. No file ever holds bytes of both
/// after the fork: the partial block our second write changed is read from
/// our version, not from the peer's bytes under the name.
#[test]
fn writes_through_a_file_held_open_across_an_import_stay_one_version() {
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, mnt, engine, handle) = mounted(tmp.path());
    std::fs::write(mnt.join("notes.txt"), b"0123456789").expect("write");
    let held = std::fs::OpenOptions::new().read(true).write(true).open(mnt.join("notes.txt")).expect("open");
    held.write_all_at(b"AA", 0).expect("write");
    held.sync_all().expect("fsync");

    // The peer saw our first write and rewrote the file on top of it.
    peer_rewrites_notes(&data, &engine, b"PPPPPPPPPP");
    assert!(within_600ms(|| std::fs::read(mnt.join("notes.txt")).expect("read") == b"PPPPPPPPPP"));

    // Our program, which has not seen the peer's bytes, writes on.
    held.write_all_at(b"BB", 4).expect("write");
    held.sync_all().expect("fsync");
    drop(held);

    assert_eq!(std::fs::read(mnt.join("notes.txt")).expect("read"), b"PPPPPPPPPP");
    let conflicts = engine.content_conflicts().expect("conflicts");
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!((conflicts[0].copy_writer, conflicts[0].kept_writer), (engine.machine(), PEER));
    let copy = String::from_utf8(conflicts[0].copy_path.clone()).expect("utf-8");
    assert!(copy.starts_with(&format!("/notes (conflict from {} ", engine.machine())), "{copy}");
    let copied = std::fs::read(mnt.join(&copy[1..])).expect("read the copy");
    assert_eq!(copied, b"AA23BB6789", "our line: our first write, then our second");
    drop(engine);
    handle.unmount().expect("unmount");
}

/// A handle open only for reading takes no part in a line: a program that
/// opens the file for writing after a peer's change was imported writes on
/// that change, with no conflict, even while an older reader holds the
/// file open.
#[test]
fn a_reader_held_open_across_an_import_makes_no_conflict_of_a_later_writer() {
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, mnt, engine, handle) = mounted(tmp.path());
    std::fs::write(mnt.join("notes.txt"), b"0123456789").expect("write");
    let reader = std::fs::File::open(mnt.join("notes.txt")).expect("open for reading");

    peer_rewrites_notes(&data, &engine, b"PPPPPPPPPP");

    let writer = std::fs::OpenOptions::new().write(true).open(mnt.join("notes.txt")).expect("open for writing");
    writer.write_all_at(b"BB", 4).expect("write");
    drop(writer);
    drop(reader);
    assert_eq!(std::fs::read(mnt.join("notes.txt")).expect("read"), b"PPPPBBPPPP");
    assert_eq!(engine.content_conflicts().expect("conflicts"), vec![]);
    drop(engine);
    handle.unmount().expect("unmount");
}

#[test]
fn past_the_inode_budget_the_kernel_is_made_to_forget_and_nothing_is_lost() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    engine::Store::init(&data, engine::config::Config::new_default(engine::ids::MachineId::random())).expect("init");
    let engine = Arc::new(LiveTree::open(&data).expect("open"));
    let mut opts = MountOptions::new(data.display().to_string());
    opts.inode_budget = 500;
    let handle = syncer_fs::spawn(engine.clone(), &mnt, opts).expect("mount");
    let dirs = 10;
    let per_dir = 300;
    for d in 0..dirs {
        std::fs::create_dir(mnt.join(format!("d{d}"))).expect("mkdir");
        for f in 0..per_dir {
            std::fs::write(mnt.join(format!("d{d}/f{f}")), format!("{d}/{f}")).expect("write");
        }
    }
    // Every name stat'ed: the kernel looks each up and holds it.
    let mut peak = 0;
    for d in 0..dirs {
        for f in 0..per_dir {
            std::fs::metadata(mnt.join(format!("d{d}/f{f}"))).expect("stat");
        }
        peak = peak.max(handle.inode_count());
    }
    assert!(peak > 500, "the kernel held only {peak} inodes: nothing to trim");
    // The trimming pass runs every half second.
    assert!(
        within(std::time::Duration::from_secs(10), || handle.inode_count() <= 500),
        "{} inodes held, budget 500",
        handle.inode_count()
    );
    // Forgotten names are looked up again, with their content.
    for d in 0..dirs {
        for f in (0..per_dir).step_by(7) {
            let got = std::fs::read_to_string(mnt.join(format!("d{d}/f{f}"))).expect("read back");
            assert_eq!(got, format!("{d}/{f}"));
        }
    }
    handle.unmount().expect("unmount");
}

fn within(limit: std::time::Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    check()
}
