//! Unit tests of the blob store's internals.

use std::sync::Arc;

use super::super::codec::*;

use super::*;
use crate::blob::{compression_pays_now, HEADER_LEN};
use crate::ids::BlockHash;

#[test]
fn a_read_that_raced_an_eviction_does_not_mark_the_blob_present() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(Arc::new(crate::storage::FsStorage), dir.path().join("b"), 32, 1).expect("open");
    let h = BlockHash::of(b"block", 32);
    let before = lock(&store.known).evictions;
    store.remove(&h).expect("evict");
    store.note_read(&h, 5, before);
    assert!(lock(&store.known).get(&h).is_none(), "a read from before the eviction recorded the blob");
    let now = lock(&store.known).evictions;
    store.note_read(&h, 5, now);
    assert!(lock(&store.known).get(&h).is_some());
}

/// A compressible block put while every compression slot is taken is
/// stored raw and queued; compressing the queue later replaces it by a
/// smaller blob of the same block, skips one evicted meanwhile (never
/// bringing it back), and never queues an incompressible block.
#[test]
fn a_block_put_under_load_is_stored_raw_and_compressed_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(Arc::new(crate::storage::FsStorage), dir.path().join("b"), 32, 1).expect("open");
    let text =
        |seed: u8| -> Vec<u8> { (0..256 << 10).map(|i: u32| b"photo IMG_ lens "[(i % 16) as usize] ^ seed).collect() };
    let mut random = vec![0u8; 256 << 10];
    rand::fill(&mut random[..]);
    let raw_len = HEADER_LEN as u64 + (256 << 10);

    store.set_compress_slots(0);
    let kept = store.put(&text(0)).expect("put").block;
    let evicted = store.put(&text(1)).expect("put").block;
    let incompressible = store.put(&random).expect("put").block;
    for b in [kept, evicted, incompressible] {
        assert_eq!(store.stored_len(&b.hash).expect("stored"), raw_len, "stored raw under load");
    }
    assert_eq!(store.deferral_stats(), DeferralStats { deferred: 2, compressed_later: 0, queued: 2 });
    assert!(store.remove(&evicted.hash).expect("evict"));

    assert_eq!(store.compress_deferred(|| false).expect("compress"), 0, "stops when told");
    assert_eq!(store.compress_deferred(|| true).expect("compress"), 1);
    assert!(store.stored_len(&kept.hash).expect("stored") < raw_len / 4, "compressed in place");
    assert_eq!(store.get(&kept.hash).expect("read back"), text(0));
    assert!(!store.contains(&evicted.hash), "an evicted blob is not brought back");
    assert_eq!(store.get(&incompressible.hash).expect("read back"), random);
    assert_eq!(store.deferral_stats(), DeferralStats { deferred: 2, compressed_later: 1, queued: 0 });
    assert_eq!(store.remove_temp_files().expect("temp files"), 0, "no temp file left behind");

    // With a free slot and nothing measured yet, a put compresses.
    let fresh = BlobStore::open(Arc::new(crate::storage::FsStorage), dir.path().join("c"), 32, 1).expect("open");
    fresh.set_compress_slots(1);
    let at_once = fresh.put(&text(2)).expect("put").block;
    assert!(fresh.stored_len(&at_once.hash).expect("stored") < raw_len / 4, "a free slot compresses at once");
    assert_eq!(fresh.deferral_stats().deferred, 0);
}

#[test]
fn compression_pays_now_while_it_is_cheaper_than_the_write_or_unmeasured() {
    assert!(compression_pays_now(0, 0));
    assert!(compression_pays_now(0, 500));
    assert!(compression_pays_now(500, 0));
    assert!(compression_pays_now(400, 500), "a slow disk: compress now");
    assert!(!compression_pays_now(500, 500));
    assert!(!compression_pays_now(3000, 900), "a fast disk, text-like data: later");
}

#[test]
fn header_layout_is_stable() {
    let b = encode_blob(b"hello", 1);
    assert_eq!(&b[..6], b"SYNBLB");
    assert_eq!(b[6], 1);
    assert_eq!(b[7], 0);
    assert_eq!(&b[8..12], &5u32.to_le_bytes());
    assert_eq!(&b[12..16], &[0; 4]);
    assert_eq!(&b[16..], b"hello");
}

#[test]
fn compressible_data_is_compressed_and_random_is_not() {
    let zeros = vec![0u8; 1 << 20];
    let b = encode_blob(&zeros, 1);
    assert_eq!(b[7], 1);
    assert!(b.len() < 1000);
    let mut random = vec![0u8; 1 << 20];
    rand::fill(&mut random[..]);
    let b = encode_blob(&random, 1);
    assert_eq!(b[7], 0);
    assert_eq!(b.len(), HEADER_LEN + random.len());
    assert_eq!(encode_blob(&zeros, 0)[7], 0, "level 0 is off");
}

#[test]
fn zstd_bomb_is_refused_without_allocating() {
    let zeros = vec![0u8; 1 << 20];
    let mut b = encode_blob(&zeros, 1);
    b[8..12].copy_from_slice(&1000u32.to_le_bytes());
    let h = BlockHash::of(&zeros, 32);
    let err = decode_blob(&b, &h).expect_err("a bomb must not decode");
    assert!(matches!(err, BlobError::Decompress(_) | BlobError::LengthMismatch { .. }), "{err:?}");
}
