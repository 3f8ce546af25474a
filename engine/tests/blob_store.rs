//! The blob store: dedupe, verification, crash safety, listing.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use engine::blob::{encode_blob, BlobStore};
use engine::ids::BlockHash;
use engine::storage::{CrashStorage, FsStorage, Storage};
use engine::Error;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BLOBS: &str = "/data/blobs";

fn store(s: &CrashStorage) -> BlobStore {
    BlobStore::open(Arc::new(s.clone()), BLOBS, 32, 1).expect("open")
}

fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::fill(&mut v[..]);
    v
}

/// Text-like data: words from a small vocabulary, compresses ~3-4x.
fn compressible(n: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "the ", "blob ", "store ", "keeps ", "every ", "block ", "once, ", "by ", "its ", "hash. ", "log ", "event ",
        "machine ", "\n", "syncer ", "replica ",
    ];
    let mut out = Vec::with_capacity(n + 16);
    let mut rng = StdRng::seed_from_u64(seed);
    while out.len() < n {
        out.extend_from_slice(WORDS[rng.random_range(0..WORDS.len())].as_bytes());
        if rng.random_ratio(1, 7) {
            out.extend_from_slice(format!("{} ", rng.random_range(0..100_000u32)).as_bytes());
        }
    }
    out.truncate(n);
    out
}

#[test]
fn put_get_round_trip_and_dedupe() {
    let s = CrashStorage::new();
    let st = store(&s);
    let data = compressible(300_000, 1);
    let a = st.put(&data).expect("put");
    assert!(a.new);
    assert_eq!(a.block.len, 300_000);
    assert_eq!(a.block.hash, BlockHash::of(&data, 32));
    assert!(a.stored_len < 200_000, "text should compress: {}", a.stored_len);
    assert_eq!(st.stored_len(&a.block.hash).expect("len"), a.stored_len);
    st.sync_pending().expect("sync");
    assert_eq!(s.unsynced_bytes(), 0);

    let b = st.put(&data).expect("put again");
    assert!(!b.new);
    assert_eq!(b.block, a.block);
    assert_eq!(b.stored_len, a.stored_len);
    assert_eq!(s.unsynced_bytes(), 0, "a dedupe hit rewrites nothing");
    assert_eq!(st.get(&a.block.hash).expect("get"), data);
    assert!(st.contains(&a.block.hash));

    // A fresh store (nothing known) verifies the file and dedupes too.
    let st2 = store(&s);
    let c = st2.put(&data).expect("put in new store");
    assert!(!c.new);
    st2.sync_pending().expect("sync");
    assert_eq!(s.unsynced_bytes(), 0);
}

#[test]
fn unsynced_put_is_lost_in_a_crash_synced_put_survives() {
    let s = CrashStorage::new();
    let st = store(&s);
    let kept = st.put(&random(10_000)).expect("put");
    st.sync_pending().expect("sync");
    let lost = st.put(b"not synced").expect("put");
    s.crash(|_, _, cur| cur);

    let st = store(&s);
    assert!(st.get(&kept.block.hash).is_ok());
    assert!(matches!(st.get(&lost.block.hash), Err(Error::MissingBlob(h)) if h == lost.block.hash));
    assert_eq!(st.list().expect("list"), vec![kept.block.hash]);
}

#[test]
fn crash_at_every_keep_length_is_detected() {
    // A blob whose content was synced but whose rename raced a crash, or
    // which is torn for any other reason, must be found damaged and rewritten.
    let data = compressible(50_000, 7);
    let stored = encode_blob(&data, 1);
    let h = BlockHash::of(&data, 32);
    for cut in [0, 1, 15, 16, 17, stored.len() / 2, stored.len() - 1] {
        let s = CrashStorage::new();
        let st = store(&s);
        let path = st.path_of(&h);
        s.create_dir_all(path.parent().expect("parent")).expect("mkdir");
        s.write_file(&path, &stored[..cut]).expect("write torn");
        let err = st.get(&h).expect_err("torn blob must not read");
        match err {
            Error::CorruptBlob { hash, path: p, .. } => {
                assert_eq!(hash, h);
                assert_eq!(p, path);
            }
            e => panic!("cut {cut}: {e}"),
        }
        let out = st.put(&data).expect("put over torn");
        assert!(out.new, "cut {cut}: torn file must be rewritten");
        st.sync_pending().expect("sync");
        s.crash(|_, _, cur| cur);
        assert_eq!(store(&s).get(&h).expect("get after crash"), data);
    }
}

#[test]
fn dedupe_hit_on_an_unsynced_file_of_a_dead_process_is_synced() {
    let s = CrashStorage::new();
    let data = random(4096);
    // A process writes the blob but dies (kill -9) before syncing: the file
    // is there (page cache) but not durable.
    store(&s).put(&data).expect("put");
    let st = store(&s);
    let out = st.put(&data).expect("put again");
    assert!(!out.new);
    st.sync_pending().expect("sync");
    s.crash(|_, _, _| 0);
    assert_eq!(store(&s).get(&out.block.hash).expect("survives"), data);
}

#[test]
fn flipped_byte_is_a_corrupt_blob_naming_the_file() {
    let s = CrashStorage::new();
    let st = store(&s);
    for data in [random(5000), compressible(5000, 3)] {
        let out = st.put(&data).expect("put");
        let path = st.path_of(&out.block.hash);
        let good = s.read(&path).expect("read");
        for i in [0, 6, 7, 9, 13, 16, good.len() - 1] {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            s.write_file(&path, &bad).expect("write");
            let e = st.get(&out.block.hash).expect_err("flip must be caught");
            let msg = e.to_string();
            assert!(matches!(e, Error::CorruptBlob { .. }), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains(&out.block.hash.to_hex()), "{msg}");
        }
    }
}

#[test]
fn put_raw_verified_checks_the_fetched_bytes() {
    let s = CrashStorage::new();
    let st = store(&s);
    let data = compressible(20_000, 5);
    let h = BlockHash::of(&data, 32);
    let mut stored = encode_blob(&data, 1);
    let last = stored.len() - 1;
    stored[last] ^= 1;
    assert!(matches!(st.put_raw_verified(&h, &stored), Err(Error::CorruptBlob { .. })));
    assert!(!st.contains(&h));
    stored[last] ^= 1;
    let out = st.put_raw_verified(&h, &stored).expect("good copy");
    assert!(out.new);
    assert_eq!(out.block.len, 20_000);
    assert_eq!(s.read(&st.path_of(&h)).expect("read"), stored, "stored as fetched");
    assert!(matches!(st.put_raw_verified(&BlockHash::of(&data, 16), &stored), Err(Error::Invalid(_))));
}

#[test]
fn remove_and_list() {
    let s = CrashStorage::new();
    let st = store(&s);
    let a = st.put(b"aaaa").expect("put").block.hash;
    let b = st.put(b"bbbb").expect("put").block.hash;
    // Junk that list must skip, and a temp file it must ignore.
    let fan = st.path_of(&a).parent().expect("fan").to_path_buf();
    s.write_file(&fan.join("not-a-hash"), b"x").expect("junk");
    s.write_file(&fan.join(".tmp-1-2"), b"x").expect("temp");
    s.write_file(&Path::new(BLOBS).join("README"), b"x").expect("junk");
    s.write_file(&fan.join(BlockHash::of(b"x", 16).to_hex()), b"x").expect("wrong size");
    let mut listed = st.list().expect("list");
    listed.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(listed, want);

    assert_eq!(st.remove_temp_files().expect("clean"), 1);
    assert!(st.remove(&a).expect("remove"));
    assert!(!st.remove(&a).expect("remove again"));
    assert!(matches!(st.get(&a), Err(Error::MissingBlob(_))));
    assert!(matches!(st.stored_len(&a), Err(Error::MissingBlob(_))));
    // Put after remove writes it again (not a stale dedupe hit).
    assert!(st.put(b"aaaa").expect("put").new);
    st.sync_pending().expect("sync");
}

#[test]
fn many_threads_put_and_sync() {
    let s = CrashStorage::new();
    let st = Arc::new(store(&s));
    let blocks: Vec<Vec<u8>> = (0..64).map(|i| compressible(8000 + i * 10, i as u64 + 1)).collect();
    let blocks = Arc::new(blocks);
    std::thread::scope(|sc| {
        for t in 0..8 {
            let st = st.clone();
            let blocks = blocks.clone();
            sc.spawn(move || {
                for i in 0..blocks.len() {
                    let b = &blocks[(i + t * 7) % blocks.len()];
                    let out = st.put(b).expect("put");
                    assert_eq!(out.block.hash, BlockHash::of(b, 32));
                    if i % 9 == 0 {
                        st.sync_pending().expect("sync");
                    }
                }
                st.sync_pending().expect("sync");
            });
        }
    });
    s.crash(|_, _, _| 0);
    let st = store(&s);
    assert_eq!(st.list().expect("list").len(), 64);
    for b in blocks.iter() {
        assert_eq!(&st.get(&BlockHash::of(b, 32)).expect("get"), b);
    }
}

#[test]
fn real_filesystem_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = BlobStore::open(Arc::new(FsStorage), dir.path().join("blobs"), 20, 3).expect("open");
    let data = compressible(1 << 20, 9);
    let out = st.put(&data).expect("put");
    st.sync_pending().expect("sync");
    assert_eq!(out.block.hash.as_bytes().len(), 20);
    assert_eq!(st.get(&out.block.hash).expect("get"), data);
    assert_eq!(st.list().expect("list"), vec![out.block.hash]);
    assert!(st.put(&vec![0u8; (64 << 20) + 1]).is_err(), "oversized block refused");
}

/// Throughput of put(); run with
/// `cargo test --release -p syncer-engine --test blob_store -- --ignored --nocapture`.
#[test]
#[ignore]
fn put_throughput() {
    const TOTAL: usize = 256 << 20;
    const BLOCK: usize = 1 << 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let storage: Arc<dyn Storage> = Arc::new(FsStorage);
    let st = BlobStore::open(storage, dir.path().join("blobs"), 32, 1).expect("open");
    let n = TOTAL / BLOCK;
    for (name, make) in [
        ("random", Box::new(|_| random(BLOCK)) as Box<dyn Fn(usize) -> Vec<u8>>),
        ("compressible", Box::new(|i| compressible(BLOCK, i as u64 + 1))),
    ] {
        let blocks: Vec<Vec<u8>> = (0..n).map(&make).collect();
        let t = Instant::now();
        let mut stored = 0u64;
        for b in &blocks {
            stored += st.put(b).expect("put").stored_len;
        }
        let put = t.elapsed();
        let t = Instant::now();
        st.sync_pending().expect("sync");
        let sync = t.elapsed();
        let mb = TOTAL as f64 / 1e6;
        // Baseline: blake3 + write of the raw block + rename, no codec.
        let base_dir = dir.path().join(format!("baseline-{name}"));
        std::fs::create_dir_all(&base_dir).expect("mkdir");
        let t = Instant::now();
        for b in &blocks {
            let h = BlockHash::of(b, 32).to_hex();
            let tmp = base_dir.join(".tmp");
            std::fs::write(&tmp, b).expect("write");
            std::fs::rename(&tmp, base_dir.join(h)).expect("rename");
        }
        let base = t.elapsed();
        std::fs::remove_dir_all(&base_dir).expect("rm");
        // CPU only: hash + encode, no I/O.
        let t = Instant::now();
        for b in &blocks {
            std::hint::black_box(BlockHash::of(b, 32));
            std::hint::black_box(encode_blob(b, 1));
        }
        let cpu = t.elapsed();
        println!("{name:>12}: hash+encode alone {:.0} MB/s", mb / cpu.as_secs_f64());
        println!(
            "{name:>12}: put {:.0} MB/s, then sync_pending {:.2}s; stored/raw {:.3}; baseline blake3+write+rename {:.0} MB/s",
            mb / put.as_secs_f64(),
            sync.as_secs_f64(),
            stored as f64 / TOTAL as f64,
            mb / base.as_secs_f64(),
        );
    }
}

/// A blob whose file is gone by the time it is synced fails that sync with
/// an error naming it (an event referring to it must not become durable),
/// but not every later one, and the next put of the same bytes writes it
/// again.
#[test]
fn a_queued_blob_gone_before_its_sync_fails_that_sync_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(Arc::new(FsStorage), tmp.path().join("blobs"), 32, 1).expect("open");
    let data = random(10_000);
    let put = store.put(&data).expect("put");
    std::fs::remove_file(store.path_of(&put.block.hash)).expect("remove behind the store's back");
    let err = store.sync_pending().expect_err("a queued blob is gone");
    assert!(matches!(err, Error::MissingBlob(h) if h == put.block.hash), "{err}");
    store.sync_pending().expect("not queued again");
    let again = store.put(&data).expect("put again");
    assert!(again.new, "written again, not deduplicated against a missing file");
    store.sync_pending().expect("sync");
    assert_eq!(store.get(&put.block.hash).expect("read back"), data);
}

/// A blob stored raw under load and compressed later survives a power cut
/// at any point around the compression: the synced raw blob, or its synced
/// compressed replacement, never neither.
#[test]
fn a_blob_compressed_later_survives_a_crash_before_and_after() {
    for crash_after_compressing in [false, true] {
        let s = CrashStorage::new();
        let st = store(&s);
        st.set_compress_slots(0);
        let data = compressible(200_000, 9);
        let put = st.put(&data).expect("put");
        assert_eq!(put.stored_len, 200_016, "stored raw under load");
        st.sync_pending().expect("sync");
        if crash_after_compressing {
            assert_eq!(st.compress_deferred(|| true).expect("compress"), 1);
        }
        s.crash(|_, _, _| 0);
        let st = store(&s);
        assert_eq!(st.get(&put.block.hash).expect("the block survives"), data);
        let stored = st.stored_len(&put.block.hash).expect("stored");
        assert_eq!(stored < 150_000, crash_after_compressing, "stored length {stored}");
    }
}

/// [`CrashStorage`] whose directory syncs fail while `fail_dir_sync` is
/// set, and whose file writes take `write_ms` more milliseconds.
#[derive(Debug, Clone, Default)]
struct Tweaked {
    inner: CrashStorage,
    fail_dir_sync: Arc<std::sync::atomic::AtomicBool>,
    write_ms: u64,
}

impl Storage for Tweaked {
    fn open_append(&self, p: &Path) -> std::io::Result<Box<dyn engine::storage::AppendFile>> {
        self.inner.open_append(p)
    }
    fn read(&self, p: &Path) -> std::io::Result<Vec<u8>> {
        self.inner.read(p)
    }
    fn read_at(&self, p: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        self.inner.read_at(p, offset, len)
    }
    fn file_len(&self, p: &Path) -> std::io::Result<u64> {
        self.inner.file_len(p)
    }
    fn exists(&self, p: &Path) -> bool {
        self.inner.exists(p)
    }
    fn list_dir(&self, p: &Path) -> std::io::Result<Vec<std::ffi::OsString>> {
        self.inner.list_dir(p)
    }
    fn create_dir_all(&self, p: &Path) -> std::io::Result<()> {
        self.inner.create_dir_all(p)
    }
    fn write_file(&self, p: &Path, data: &[u8]) -> std::io::Result<()> {
        std::thread::sleep(std::time::Duration::from_millis(self.write_ms));
        self.inner.write_file(p, data)
    }
    fn sync_file(&self, p: &Path) -> std::io::Result<()> {
        self.inner.sync_file(p)
    }
    fn sync_dir(&self, p: &Path) -> std::io::Result<()> {
        if self.fail_dir_sync.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::Error::other("injected: directory sync fails"));
        }
        self.inner.sync_dir(p)
    }
    fn truncate(&self, p: &Path, len: u64) -> std::io::Result<()> {
        self.inner.truncate(p, len)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, p: &Path) -> std::io::Result<()> {
        self.inner.remove_file(p)
    }
}

/// A power cut after the compressed blob replaced the raw one but before
/// that rename was synced leaves the synced raw blob: a block that a
/// durable event may reference is never lost to compressing it later.
#[test]
fn a_crash_between_the_rename_and_its_directory_sync_keeps_the_raw_blob() {
    let s = CrashStorage::new();
    let failing = Tweaked { inner: s.clone(), ..Tweaked::default() };
    let st = BlobStore::open(Arc::new(failing.clone()), BLOBS, 32, 1).expect("open");
    st.set_compress_slots(0);
    let data = compressible(200_000, 11);
    let put = st.put(&data).expect("put");
    st.sync_pending().expect("sync");
    failing.fail_dir_sync.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(st.compress_deferred(|| true).is_err(), "the directory sync failed");
    assert!(st.stored_len(&put.block.hash).expect("stored") < 150_000, "renamed before the failed sync");
    s.crash(|_, _, _| 0);
    let st = store(&s);
    assert_eq!(st.get(&put.block.hash).expect("the block survives"), data);
    assert_eq!(st.stored_len(&put.block.hash).expect("stored"), 200_016, "the raw blob, as synced");
}

/// Puts compress as they come while compressing a KiB costs less than
/// writing one (a slow disk), and store compressible blocks raw for later
/// when writing is the cheaper (here: memory); the first put, with nothing
/// measured yet, compresses. The costs are far apart (50 ms writes against
/// level 1; level 19 against memory), so a busy machine cannot swap them.
#[test]
fn puts_compress_now_on_a_slow_disk_and_later_on_a_fast_one() {
    for (write_ms, level, later) in [(50, 1, false), (0, 19, true)] {
        let storage = Arc::new(Tweaked { write_ms, ..Tweaked::default() });
        let st = BlobStore::open(storage, BLOBS, 32, level).expect("open");
        st.set_compress_slots(1);
        for seed in 0..4 {
            let data = compressible(256 << 10, 100 + seed);
            let put = st.put(&data).expect("put");
            let deferred = put.stored_len == (256 << 10) + 16;
            assert_eq!(deferred, later && seed > 0, "write_ms {write_ms}, put {seed}: stored {}", put.stored_len);
        }
    }
}
