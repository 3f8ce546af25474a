//! A mounted tree picks up peers' changes without a remount: after
//! `Engine::import`, cached pages and attributes are dropped, so reads
//! through the mount see the merged tree.

use std::sync::Arc;

use engine::event::{BlockChange, Change, Event};
use engine::ids::{MachineId, NodeId, Timestamp};
use engine::Engine;
use syncer_fs::MountOptions;

#[test]
fn imported_changes_show_through_an_open_mount() {
    assert!(unsafe { libc::geteuid() } == 0 && std::path::Path::new("/dev/fuse").exists(), "needs root and /dev/fuse");
    let tmp = tempfile::tempdir().expect("tempdir");
    let (data, mnt) = (tmp.path().join("data"), tmp.path().join("mnt"));
    std::fs::create_dir(&mnt).expect("mkdir");
    Engine::init(&data, engine::config::Config::new_default(MachineId::random())).expect("init");
    let engine = Arc::new(Engine::open(&data).expect("open"));
    let handle = syncer_fs::spawn(engine.clone(), &mnt, MountOptions::new(data.display().to_string())).expect("mount");

    std::fs::write(mnt.join("notes.txt"), b"old words").expect("write");
    // Held open across the import: its cached pages must not survive it.
    let held = std::fs::File::open(mnt.join("notes.txt")).expect("open");
    let mut old = [0u8; 9];
    std::os::unix::fs::FileExt::read_exact_at(&held, &mut old, 0).expect("read");
    assert_eq!(&old, b"old words");

    // A peer rewrote the file; its log arrives (as rsync would bring it).
    let file = engine.lookup(NodeId::ROOT, b"notes.txt").expect("lookup").id;
    let peer = MachineId(0x00be_ef00);
    let block = engine.put_block(b"new words from the peer").expect("put");
    engine.sync().expect("sync");
    let mut clock = engine.index().expect("index").node(file).expect("node").expect("exists").clock;
    clock.tick(peer);
    let ev = Event {
        node: file,
        machine: peer,
        seq: 1,
        time: Timestamp(Timestamp::now().0 + 1_000_000_000),
        clock,
        change: Change::Truncate { size: 0, tail: None },
    };
    let mut clock2 = ev.clock.clone();
    clock2.tick(peer);
    let ev2 = Event {
        seq: 2,
        time: Timestamp(ev.time.0 + 1),
        clock: clock2,
        change: Change::Content { size: 23, blocks: vec![BlockChange { index: 0, block: Some(block) }] },
        ..ev.clone()
    };
    let (mut log, _) =
        engine::log::LogWriter::open(Arc::new(engine::storage::FsStorage), &data.join("log"), peer, 1 << 20)
            .expect("peer log");
    log.append(&[ev, ev2]).expect("append");
    log.sync().expect("sync");

    // Fresh attributes in the kernel's cache, valid for the 1 s TTL: only
    // the invalidation can make the new size show before that runs out.
    assert_eq!(held.metadata().expect("fstat").len(), 9);
    let report = engine.import().expect("import");
    assert_eq!(report.applied, 2);
    // The invalidation runs on its own thread; it is done once the kernel
    // answers with the new size.
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(600);
    while held.metadata().expect("fstat").len() != 23 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(held.metadata().expect("fstat").len(), 23, "the kernel still shows the old size: no invalidation");
    let mut new = [0u8; 23];
    std::os::unix::fs::FileExt::read_exact_at(&held, &mut new, 0).expect("read through the held handle");
    assert_eq!(&new, b"new words from the peer");
    assert_eq!(std::fs::read(mnt.join("notes.txt")).expect("read"), b"new words from the peer");
    drop(held);
    drop(engine);
    handle.unmount().expect("unmount");
}
