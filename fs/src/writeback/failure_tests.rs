//! Every failure of the write path reaches the caller, as itself and in
//! bounded time: a full disk or a failing one under the blob store (the
//! hashing workers), the log (the commit), the index, or everything; and
//! once the disk is back, writes go through again with no remount.

use std::path::Path;
use std::sync::mpsc;

use engine::config::Config;
use engine::event::{Attrs, NodeKind};
use engine::faults::{Fault, Faults, FaultyStorage};
use engine::ids::MachineId;
use engine::storage::FsStorage;

use super::*;

const BS: u64 = 4096;
/// Far above what any of these calls takes when it works.
const BOUND: Duration = Duration::from_secs(20);

fn open(dir: &Path) -> (Arc<Faults>, Arc<WriteBack>, NodeId) {
    let data = dir.join("data");
    let mut c = Config::new_default(MachineId::random());
    c.block_size = BS;
    c.small_block = BS;
    engine::Store::init(&data, c).expect("init");
    let faults = Faults::new();
    let storage = Arc::new(FaultyStorage::new(Arc::new(FsStorage), faults.clone()));
    let engine = Arc::new(LiveTree::open_with(storage, &data).expect("open"));
    let node = engine
        .create(NodeId::ROOT, b"f", NodeKind::File, Attrs { mode: 0o644, ..Attrs::default() }, b"")
        .expect("create")
        .id;
    (faults, Arc::new(WriteBack::new(engine.into(), 1 << 20, 2).expect("write-back")), node)
}

/// Runs `f` on a thread of its own; its result, or a failure if it is
/// still waiting after [`BOUND`].
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(BOUND).unwrap_or_else(|_| panic!("{what} still waits after {BOUND:?}"))
}

/// Writes three blocks of `fill` and syncs them as `fsync` does.
fn write_and_sync(wb: &Arc<WriteBack>, node: NodeId, fill: u8) -> Result<(), Errno> {
    let wb = wb.clone();
    bounded("write, commit and sync", move || {
        wb.write(node, 0, &vec![fill; 3 * BS as usize], false)?;
        wb.flush(node)?;
        wb.live()?.sync().map_err(|e| errno(&e))
    })
}

#[test]
fn every_failure_point_reports_its_errno_in_bounded_time_and_recovers() {
    for (part, fault, expected) in [
        ("blobs", Fault::NoSpace, Errno::ENOSPC),
        ("blobs", Fault::Io, Errno::EIO),
        ("blobs", Fault::Panic, Errno::EIO),
        ("log", Fault::NoSpace, Errno::ENOSPC),
        ("log", Fault::Io, Errno::EIO),
        ("index.redb", Fault::NoSpace, Errno::ENOSPC),
        ("", Fault::NoSpace, Errno::ENOSPC),
    ] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (faults, wb, node) = open(tmp.path());
        write_and_sync(&wb, node, 1).expect("acknowledged before the faults");
        faults.fail_only(fault, part);
        // The index only fails when a group commits: keep writing
        // until it does (each call still has to return in bounded time).
        let mut failed = None;
        for i in 0..50u8 {
            if let Err(e) = write_and_sync(&wb, node, 2 + i % 2) {
                failed = Some(e);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let e = failed.unwrap_or_else(|| panic!("{part:?} {fault:?}: no call failed"));
        assert_eq!(e, expected, "{part:?} {fault:?}");
        faults.stop();
        // Buffered writes of the failed call were kept (or dropped with
        // an error said): a new write and sync go through.
        write_and_sync(&wb, node, 9).unwrap_or_else(|e| panic!("{part:?} {fault:?}: after the faults: {e:?}"));
        let read = bounded("read", {
            let wb = wb.clone();
            move || wb.read(node, 0, 3 * BS as u32).map(|b| b.to_vec())
        })
        .expect("read back");
        assert!(read.iter().all(|&b| b == 9), "{part:?} {fault:?}: read back what was written last");
        assert!(faults.injected() > 0, "{part:?} {fault:?}: nothing was injected");
    }
}
