//! Unit tests of the cache bookkeeping (`cache.redb`).

use super::*;
use crate::storage::FsStorage;
use std::io::Write;

fn store(dir: &Path) -> Arc<BlobStore> {
    Arc::new(BlobStore::open(Arc::new(FsStorage), dir.join("blobs"), 32, 0).expect("blob store"))
}

#[test]
fn upgrades_the_legacy_pushed_file_and_counts_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = store(dir.path());
    let big = blobs.put(&[7u8; 5000]).expect("put").block.hash;
    let small = blobs.put(b"tiny").expect("put").block.hash;
    let unpushed = blobs.put(&[9u8; 3000]).expect("put").block.hash;
    let remote_only = BlockHash::of(b"elsewhere", 32);
    let mut legacy = Vec::new();
    legacy.extend_from_slice(LEGACY_MAGIC);
    legacy.extend_from_slice(&[LEGACY_VERSION, 32]);
    for h in [big, small, remote_only] {
        legacy.extend_from_slice(h.as_bytes());
    }
    legacy.extend_from_slice(&[1, 2, 3]); // a torn record
    std::fs::File::create(dir.path().join(LEGACY_FILE)).and_then(|mut f| f.write_all(&legacy)).expect("write");

    let c = Cache::open(dir.path(), blobs.clone(), 100, true).expect("open");
    assert!(!dir.path().join(LEGACY_FILE).exists());
    assert!(c.is_pushed(&big) && c.is_pushed(&small) && c.is_pushed(&remote_only) && !c.is_pushed(&unpushed));
    let n = c.counts();
    let len = |h| blobs.stored_len(h).expect("len");
    assert_eq!(n.pushed, 3);
    assert_eq!(n.resident, 2);
    assert_eq!(n.resident_bytes, len(&big) + len(&small));
    assert_eq!(n.store_bytes, len(&big) + len(&small) + len(&unpushed));
    // Only the big one is a candidate.
    let lru = c.oldest(None, 10).expect("lru");
    assert_eq!(lru.iter().map(|e| e.hash).collect::<Vec<_>>(), vec![big]);
    drop(c);
    let c = Cache::open(dir.path(), blobs.clone(), 100, true).expect("reopen");
    assert_eq!(c.counts(), n);
}

#[test]
fn puts_pushes_reads_and_evictions_keep_the_counters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = store(dir.path());
    let c = Cache::open(dir.path(), blobs.clone(), 0, true).expect("open");
    let a = blobs.put(&[1u8; 4000]).expect("put").block.hash;
    let b = blobs.put(&[2u8; 4000]).expect("put").block.hash;
    c.mark_pushed(&[a, b]).expect("mark");
    let n = c.counts();
    let (la, lb) = (blobs.stored_len(&a).expect("len"), blobs.stored_len(&b).expect("len"));
    assert_eq!((n.pushed, n.resident, n.resident_bytes, n.store_bytes), (2, 2, la + lb, la + lb));
    // Evicting one, then writing it again: it is a candidate again.
    let first = c.oldest(None, 1).expect("lru")[0];
    assert!(blobs.remove(&first.hash).expect("remove"));
    c.evicted(&[first], &[]).expect("evicted");
    let n = c.counts();
    assert_eq!((n.resident, n.store_bytes), (1, la + lb - first.stored_len));
    let data = if first.hash == a { [1u8; 4000] } else { [2u8; 4000] };
    blobs.put(&data).expect("put again");
    c.flush(false).expect("flush");
    assert_eq!(c.counts().resident, 2);
    assert_eq!(c.counts().store_bytes, la + lb);
    // A recount agrees.
    let r = c.recount().expect("recount");
    assert_eq!(r.after, r.before);
}

#[test]
fn an_open_after_an_unclean_close_counts_the_store_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = store(dir.path());
    let c = Cache::open(dir.path(), blobs.clone(), 0, true).expect("open");
    let a = blobs.put(&[3u8; 4000]).expect("put").block.hash;
    c.mark_pushed(&[a]).expect("mark");
    drop(c);
    // Behind its back, as a crash that undid a write would leave it;
    // and the file says the last user did not close it.
    std::fs::remove_file(blobs.path_of(&a)).expect("remove");
    {
        let db = Database::create(dir.path().join(CACHE_FILE)).expect("db");
        let txn = db.begin_write().expect("txn");
        txn.open_table(META).expect("meta").insert(META_IN_USE, 1).expect("insert");
        txn.commit().expect("commit");
    }
    let c = Cache::open(dir.path(), blobs.clone(), 0, true).expect("reopen");
    let n = c.counts();
    assert_eq!((n.pushed, n.resident, n.resident_bytes, n.store_bytes), (1, 0, 0, 0));
    assert!(c.oldest(None, 10).expect("lru").is_empty());
}

#[test]
fn a_damaged_file_is_set_aside_and_made_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = store(dir.path());
    let a = blobs.put(&[4u8; 4000]).expect("put").block.hash;
    std::fs::write(dir.path().join(CACHE_FILE), b"not a redb file at all, not even close").expect("write");
    let c = Cache::open(dir.path(), blobs.clone(), 0, true).expect("open");
    assert!(dir.path().join(format!("{CACHE_FILE}.damaged")).exists());
    assert!(!c.is_pushed(&a));
    assert_eq!(c.counts().store_bytes, blobs.stored_len(&a).expect("len"));
}

#[test]
fn a_newer_version_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = store(dir.path());
    drop(Cache::open(dir.path(), blobs.clone(), 0, true).expect("open"));
    {
        let db = Database::create(dir.path().join(CACHE_FILE)).expect("db");
        let txn = db.begin_write().expect("txn");
        txn.open_table(META).expect("meta").insert(META_VERSION, CACHE_VERSION + 1).expect("insert");
        txn.commit().expect("commit");
    }
    let e = Cache::open(dir.path(), blobs, 0, true).expect_err("refused");
    assert!(e.to_string().contains("newer"), "{e}");
}
