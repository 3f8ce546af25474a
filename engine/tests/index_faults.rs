//! A failed append leaves the index group it would have joined standing,
//! and the log writer recovers at the next change; a failure to make the
//! index durable loses nothing. (Groups lost to index failures, with
//! catch-ups that fail too, are driven by the property in `disk_faults`.)

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;

use engine::config::Config;
use engine::event::{Attrs, NodeKind};
use engine::ids::{MachineId, NodeId};
use engine::storage::{AppendFile, FsStorage, Storage};
use engine::{LiveTree, Store, TreeRead};

/// The real disk, with faults to switch on: appending to a log segment
/// fails, syncing blobs fails, listing `log/` fails.
#[derive(Debug, Default)]
struct Faulty {
    fail_append: Arc<AtomicBool>,
    fail_blob_sync: AtomicBool,
    fail_log_listing: AtomicBool,
}

#[derive(Debug)]
struct FaultyAppend {
    inner: Box<dyn AppendFile>,
    fail: Arc<AtomicBool>,
}

impl AppendFile for FaultyAppend {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        if self.fail.load(SeqCst) {
            return Err(injected());
        }
        self.inner.append(data)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.inner.sync()
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
}

fn injected() -> io::Error {
    io::Error::other("injected fault")
}

impl Storage for Faulty {
    fn open_append(&self, p: &Path) -> io::Result<Box<dyn AppendFile>> {
        Ok(Box::new(FaultyAppend { inner: FsStorage.open_append(p)?, fail: self.fail_append.clone() }))
    }
    fn read(&self, p: &Path) -> io::Result<Vec<u8>> {
        FsStorage.read(p)
    }
    fn read_at(&self, p: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        FsStorage.read_at(p, offset, len)
    }
    fn file_len(&self, p: &Path) -> io::Result<u64> {
        FsStorage.file_len(p)
    }
    fn exists(&self, p: &Path) -> bool {
        FsStorage.exists(p)
    }
    fn list_dir(&self, p: &Path) -> io::Result<Vec<OsString>> {
        if self.fail_log_listing.load(SeqCst) && p.ends_with("log") {
            return Err(injected());
        }
        FsStorage.list_dir(p)
    }
    fn create_dir_all(&self, p: &Path) -> io::Result<()> {
        FsStorage.create_dir_all(p)
    }
    fn write_file(&self, p: &Path, data: &[u8]) -> io::Result<()> {
        FsStorage.write_file(p, data)
    }
    fn sync_file(&self, p: &Path) -> io::Result<()> {
        if self.fail_blob_sync.load(SeqCst) && p.components().any(|c| c.as_os_str() == "blobs") {
            return Err(injected());
        }
        FsStorage.sync_file(p)
    }
    fn sync_dir(&self, p: &Path) -> io::Result<()> {
        if self.fail_blob_sync.load(SeqCst) && p.components().any(|c| c.as_os_str() == "blobs") {
            return Err(injected());
        }
        FsStorage.sync_dir(p)
    }
    fn truncate(&self, p: &Path, len: u64) -> io::Result<()> {
        FsStorage.truncate(p, len)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        FsStorage.rename(from, to)
    }
    fn remove_file(&self, p: &Path) -> io::Result<()> {
        FsStorage.remove_file(p)
    }
}

fn create(e: &LiveTree, name: &[u8]) -> engine::Result<engine::NodeState> {
    e.create(NodeId::ROOT, name, NodeKind::File, Attrs { mode: 0o644, ..Attrs::default() }, b"")
}

fn names(e: &LiveTree) -> Vec<Vec<u8>> {
    e.read_dir(NodeId::ROOT, None, 100).expect("read_dir").into_iter().map(|d| d.name).collect()
}

/// A new data dir in a temp dir, opened through [`Faulty`].
fn open_faulty() -> (tempfile::TempDir, Arc<Faulty>, LiveTree) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    Store::init(&dir, Config::new_default(MachineId::random())).expect("init");
    let faults = Arc::new(Faulty::default());
    let e = LiveTree::open_with(faults.clone(), &dir).expect("open");
    (tmp, faults, e)
}

#[test]
fn a_failed_append_keeps_the_group_and_the_log_writer_recovers() {
    let (tmp, faults, e) = open_faulty();
    let dir = tmp.path().join("data");
    // `a` is acknowledged, its index work pending in the group.
    create(&e, b"a").expect("create a");
    faults.fail_append.store(true, SeqCst);
    faults.fail_log_listing.store(true, SeqCst);
    // `b` never reaches the log. Nothing of it reached the index either,
    // so the group (holding `a`) stands: no catch-up is needed, and the
    // failing listing does not matter.
    let err = create(&e, b"b").expect_err("the append fails");
    assert!(err.to_string().contains("injected fault"), "{err}");
    assert_eq!(names(&e), [b"a".to_vec()]);
    faults.fail_append.store(false, SeqCst);
    faults.fail_log_listing.store(false, SeqCst);
    // The next change opens the failed log writer again (what the failed
    // append left is cut): no restart.
    create(&e, b"c").expect("the log writer recovers");
    assert_eq!(names(&e), [b"a".to_vec(), b"c".to_vec()]);
    let live = e.dump_tree().expect("dump");
    drop(e);

    let e = LiveTree::open(&dir).expect("reopen");
    assert_eq!(e.dump_tree().expect("dump"), live, "reopen");
    create(&e, b"d").expect("create d after the reopen");
    let live = e.dump_tree().expect("dump");
    drop(e);
    std::fs::remove_file(dir.join("index.redb")).expect("delete index");
    let e = LiveTree::open(&dir).expect("rebuild");
    assert!(e.open_report().index_rebuilt);
    assert_eq!(e.dump_tree().expect("dump"), live, "rebuild");
}

#[test]
fn a_failed_durable_commit_loses_nothing() {
    let (tmp, faults, e) = open_faulty();
    let dir = tmp.path().join("data");
    faults.fail_blob_sync.store(true, SeqCst);
    let f = create(&e, b"f").expect("create f").id;
    let b = e.put_block(b"a block that cannot be synced yet").expect("put");
    e.write_blocks(f, 33, vec![engine::event::BlockChange { index: 0, block: Some(b) }]).expect("write");
    // Unmount cannot make the blocks (so the log and index) durable.
    let err = e.close().expect_err("close syncs the blobs first");
    assert!(err.to_string().contains("injected fault"), "{err}");
    assert_eq!(names(&e), [b"f".to_vec()]);
    faults.fail_blob_sync.store(false, SeqCst);
    e.close().expect("close once the disk is back");
    let live = e.dump_tree().expect("dump");
    drop(e);
    let e = LiveTree::open(&dir).expect("reopen");
    assert!(!e.open_report().unclean, "the second close was clean");
    assert_eq!(e.dump_tree().expect("dump"), live);
    assert_eq!(e.read_file(f).expect("read"), b"a block that cannot be synced yet");
}
