//! An eviction pass with a few candidates costs what it evicts, not the
//! size of the tree or of the store: the same pass over a tree of 10,000
//! files and one of 100,000 reads about as many index bytes, and lists no
//! folder (the block store's least of all).

use std::sync::Arc;

use engine::config::Config;
use engine::event::{Attrs, BlockChange, NodeKind};
use engine::faults::{Faults, FaultyStorage};
use engine::ids::{MachineId, NodeId};
use engine::storage::FsStorage;
use engine::{LiveTree, Store, TreeRead};

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
    // No faults: the wrapper only counts what the index and listings read.
    let faults = Faults::new();
    let e =
        LiveTree::open_with(Arc::new(FaultyStorage::new(Arc::new(FsStorage), faults.clone())), &dir).expect("reopen");
    faults.reset_counts();
    let t = std::time::Instant::now();
    let r = engine::evict::evict(&e).expect("evict");
    eprintln!("{files} files: the pass took {:?}", t.elapsed());
    assert!(r.evicted >= 1 && r.evicted < CANDIDATES as u64, "a few evicted: {r:?}");
    assert!(!r.over_limit, "{r:?}");
    let read = (faults.index_bytes_read(), faults.listings(), r.evicted);
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
        "index bytes read by a pass: {small_bytes} at 10k files, {big_bytes} at 100k; folder listings {small_listings}, \
         {big_listings}"
    );
    assert_eq!(small_evicted, big_evicted);
    assert_eq!((small_listings, big_listings), (0, 0), "a pass listed the block store");
    // Ten times the tree: a B-tree a level deeper at most, not ten times
    // the reads.
    assert!(big_bytes <= 2 * small_bytes + 64 * 1024, "{big_bytes} bytes at 100k files vs {small_bytes} at 10k");
}

/// `n` incompressible bytes, distinct for each `seed` (xorshift).
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (seed + 1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn a_pin_holds_what_lies_below_it_wherever_it_is_now() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut config = Config::new_default(MachineId::random());
    config.cache_size = 2 * BLOCK as u64;
    Store::init(&dir, config).expect("init");
    let e = LiveTree::open(&dir).expect("open");
    let a = e.create(NodeId::ROOT, b"a", NodeKind::Dir, attrs(), b"").expect("mkdir").id;
    let b = e.create(a, b"b", NodeKind::Dir, attrs(), b"").expect("mkdir").id;
    let mut hashes = Vec::new();
    for i in 0..3u64 {
        let f = e.create(b, format!("f{i}").as_bytes(), NodeKind::File, attrs(), b"").expect("create").id;
        let block = e.put_block(&noise(i, BLOCK)).expect("put");
        e.write_blocks(f, BLOCK as u64, vec![BlockChange { index: 0, block: Some(block) }]).expect("write");
        hashes.push(block.hash);
    }
    e.sync().expect("sync");
    e.cache().mark_pushed(&hashes).expect("mark pushed");
    // Pinned two levels up: nothing goes.
    e.set_pinned(a, true).expect("pin");
    assert_eq!(engine::evict::pins(&e).expect("pins"), vec![b"/a".to_vec()]);
    let r = engine::evict::evict(&e).expect("evict");
    assert_eq!(r.evicted, 0);
    assert!(r.over_limit, "{r:?}");
    // Moved out from under the pin: that file's block may go, and only it.
    e.rename(b, b"f0", NodeId::ROOT, b"f0", engine::RenameFlags::default()).expect("rename");
    let r = engine::evict::evict(&e).expect("evict");
    assert_eq!(r.evicted, 1, "{r:?}");
    assert!(r.over_limit, "{r:?}");
    assert!(!e.blobs().contains(&hashes[0]) && e.blobs().contains(&hashes[1]) && e.blobs().contains(&hashes[2]));
    // Unpinned: the rest may go, down to the limit.
    e.set_pinned(a, false).expect("unpin");
    assert!(engine::evict::pins(&e).expect("pins").is_empty());
    let r = engine::evict::evict(&e).expect("evict");
    assert_eq!(r.evicted, 1, "{r:?}");
    assert!(!r.over_limit, "{r:?}");
    e.close().expect("close");
}

#[test]
fn a_pass_that_evicts_much_goes_in_rounds_and_evicts_it_all() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut config = Config::new_default(MachineId::random());
    config.small_block = 0;
    Store::init(&dir, config).expect("init");
    let e = LiveTree::open(&dir).expect("open");
    let mut hashes = Vec::new();
    for i in 0..50u64 {
        let f = e.create(NodeId::ROOT, format!("f{i}").as_bytes(), NodeKind::File, attrs(), b"").expect("create").id;
        let block = e.put_block(&noise(i, 3000)).expect("put");
        e.write_blocks(f, 3000, vec![BlockChange { index: 0, block: Some(block) }]).expect("write");
        hashes.push(block.hash);
    }
    // The last file pinned: its block stays, and rounds walk past it.
    e.set_pinned(e.lookup(NodeId::ROOT, b"f49").expect("f49").id, true).expect("pin");
    e.sync().expect("sync");
    e.cache().mark_pushed(&hashes).expect("mark pushed");
    // Rounds of 8 rows: 49 blocks go in 7 rounds.
    engine::evict::set_round_rows(8);
    let (r, plan) = engine::evict::evict_to(&e, 0).expect("evict");
    assert_eq!(r.evicted, 49, "{r:?}");
    assert!(r.over_limit, "the pinned block stays: {r:?}");
    assert!(plan.before > plan.after && plan.after > 0, "{plan:?}");
    assert_eq!(hashes.iter().filter(|h| e.blobs().contains(h)).count(), 1);
    assert!(e.blobs().contains(&hashes[49]));
    e.close().expect("close");
}
