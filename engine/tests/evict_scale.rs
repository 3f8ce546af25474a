//! An eviction pass with a few candidates costs what it evicts, not the
//! size of the tree or of the store: the same pass over a tree of 10,000
//! files and one of 100,000 reads about as many index bytes, and never
//! lists the block store.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use engine::config::Config;
use engine::event::{Attrs, BlockChange, NodeKind};
use engine::ids::{MachineId, NodeId};
use engine::storage::{AppendFile, FsStorage, Storage};
use engine::{LiveTree, Store, TreeRead};
use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// What a pass asked of the disk.
#[derive(Debug, Default)]
struct Counters {
    /// Bytes redb read from `index.redb`.
    index_bytes: AtomicU64,
    /// Listings of a folder under `blobs/`.
    blob_listings: AtomicU64,
}

/// The real disk, counting index reads and blob listings.
#[derive(Debug, Default)]
struct Counting(Arc<Counters>);

#[derive(Debug)]
struct CountingBackend {
    inner: FileBackend,
    counters: Arc<Counters>,
}

impl StorageBackend for CountingBackend {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.counters.index_bytes.fetch_add(out.len() as u64, SeqCst);
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.write(offset, data)
    }
    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }
    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

impl Storage for Counting {
    fn open_append(&self, p: &Path) -> io::Result<Box<dyn AppendFile>> {
        FsStorage.open_append(p)
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
        if p.components().any(|c| c.as_os_str() == "blobs") {
            self.0.blob_listings.fetch_add(1, SeqCst);
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
        FsStorage.sync_file(p)
    }
    fn sync_dir(&self, p: &Path) -> io::Result<()> {
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
    fn index_database(&self, path: &Path) -> Option<Result<redb::Database, redb::DatabaseError>> {
        let open = || {
            let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
            let inner = FileBackend::new(file)?;
            redb::Builder::new().create_with_backend(CountingBackend { inner, counters: self.0.clone() })
        };
        Some(open())
    }
}

const BLOCK: usize = 1 << 20;
/// Files with a block each, all pushed: the candidates.
const CANDIDATES: usize = 8;

fn attrs() -> Attrs {
    Attrs { mode: 0o644, ..Attrs::default() }
}

/// A data dir of `files` empty files in folders of 1,000, plus
/// [`CANDIDATES`] files of one pushed block each (the first pinned), with a
/// cache limit that makes a pass evict some of those; then a pass over it
/// with the index opened afresh (nothing cached). What the pass read, and
/// how many blobs it evicted.
fn pass_over(files: usize) -> (u64, u64, u64) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut config = Config::new_default(MachineId::random());
    config.cache_size = (CANDIDATES as u64 / 2) * BLOCK as u64;
    config.small_block = 1024;
    Store::init(&dir, config).expect("init");
    {
        let e = LiveTree::open(&dir).expect("open");
        let mut folder = NodeId::ROOT;
        for i in 0..files {
            if i % 1000 == 0 {
                let name = format!("d{}", i / 1000);
                folder = e.create(NodeId::ROOT, name.as_bytes(), NodeKind::Dir, attrs(), b"").expect("mkdir").id;
            }
            e.create(folder, format!("f{i}").as_bytes(), NodeKind::File, attrs(), b"").expect("create");
        }
        let mut hashes = Vec::new();
        for i in 0..CANDIDATES {
            let f = e.create(NodeId::ROOT, format!("big{i}").as_bytes(), NodeKind::File, attrs(), b"").expect("create");
            // Incompressible, distinct content (xorshift).
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
            let data: Vec<u8> = (0..BLOCK)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let block = e.put_block(&data).expect("put");
            e.write_blocks(f.id, BLOCK as u64, vec![BlockChange { index: 0, block: Some(block) }]).expect("write");
            if i == 0 {
                e.set_pinned(f.id, true).expect("pin");
            }
            hashes.push(block.hash);
        }
        e.sync().expect("sync");
        e.cache().mark_pushed(&hashes).expect("mark pushed");
        e.close().expect("close");
    }
    let counting = Arc::new(Counting::default());
    let counters = counting.0.clone();
    let e = LiveTree::open_with(counting, &dir).expect("reopen");
    counters.index_bytes.store(0, SeqCst);
    counters.blob_listings.store(0, SeqCst);
    let r = engine::evict::evict(&e).expect("evict");
    assert!(r.evicted >= 1 && r.evicted < CANDIDATES as u64, "a few evicted: {r:?}");
    assert!(!r.over_limit, "{r:?}");
    let read = (counters.index_bytes.load(SeqCst), counters.blob_listings.load(SeqCst), r.evicted);
    // The pinned file's block stayed.
    let pinned = e.lookup(NodeId::ROOT, b"big0").expect("big0");
    let blocks = e.file_blocks(pinned.id, 0, 1).expect("blocks");
    assert!(e.blobs().contains(&blocks[0].1.hash), "a pinned block was evicted");
    e.close().expect("close");
    read
}

#[test]
fn an_eviction_pass_costs_what_it_evicts_not_the_tree() {
    let (small_bytes, small_listings, small_evicted) = pass_over(10_000);
    let (big_bytes, big_listings, big_evicted) = pass_over(100_000);
    eprintln!(
        "index bytes read by a pass: {small_bytes} at 10k files, {big_bytes} at 100k; blob listings {small_listings}, \
         {big_listings}"
    );
    assert_eq!(small_evicted, big_evicted);
    assert_eq!((small_listings, big_listings), (0, 0), "a pass listed the block store");
    // Ten times the tree: a B-tree a level deeper at most, not ten times
    // the reads.
    assert!(big_bytes <= 2 * small_bytes + 64 * 1024, "{big_bytes} bytes at 100k files vs {small_bytes} at 10k");
}
