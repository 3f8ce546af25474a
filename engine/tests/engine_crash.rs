//! Power cuts at the storage level: the crash backend drops whatever was not
//! synced (keeping a random prefix of each file's unsynced tail), then the
//! data dir is reopened. Every synced operation must be there, the tree must
//! be the state after some prefix of the operations, every block of it must
//! read back, and a second recovery must give the same answer.

use std::path::Path;
use std::sync::Arc;

use engine::config::Config;
use engine::event::{Attrs, BlockChange, NodeKind};
use engine::ids::{MachineId, NodeId};
use engine::storage::CrashStorage;
use engine::{LiveTree, RenameFlags, Store, TreeRead};
use rand::{Rng, SeedableRng};

type Dump = Vec<(Vec<u8>, engine::NodeState, Vec<(u64, engine::event::BlockRef)>)>;

fn check_blocks(e: &LiveTree, dump: &Dump) {
    for (path, _, blocks) in dump {
        for (i, b) in blocks {
            let data =
                e.read_block(b).unwrap_or_else(|err| panic!("{}: block {i}: {err}", String::from_utf8_lossy(path)));
            assert_eq!(data.len(), b.len as usize);
        }
    }
}

fn one_run(seed: u64, dir: &Path) -> (usize, bool) {
    let storage = CrashStorage::new();
    let mut config = Config::new_default(MachineId(0x5eed_0000 + seed));
    config.block_size = 4096;
    config.small_block = 1024;
    config.segment_size = 1 << 20;
    std::fs::create_dir_all(dir).expect("mkdir");
    Store::init_with(&storage, dir, config).expect("init");
    let e = LiveTree::open_with(Arc::new(storage.clone()), dir).expect("open");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut snapshots: Vec<Dump> = vec![e.dump_tree().expect("dump")];
    let mut synced = 0usize;
    let mut files: Vec<Vec<u8>> = Vec::new();
    for op in 0..rng.random_range(5..30) {
        let name = format!("n{op}").into_bytes();
        let changed = match rng.random_range(0..4) {
            0 | 1 => {
                let f = e.create(NodeId::ROOT, &name, NodeKind::File, Attrs::default(), b"").expect("create");
                // Create and write are two events: a crash may keep the first alone.
                snapshots.push(e.dump_tree().expect("dump"));
                let len = rng.random_range(1..10_000usize);
                let data: Vec<u8> = (0..len).map(|i| (i as u64 * seed) as u8 ^ op as u8).collect();
                let mut changes = Vec::new();
                for (i, chunk) in data.chunks(4096).enumerate() {
                    changes.push(BlockChange { index: i as u64, block: Some(e.put_block(chunk).expect("put")) });
                }
                e.write_blocks(f.id, len as u64, changes).expect("write");
                files.push(name);
                true
            }
            2 if !files.is_empty() => {
                let from = files.swap_remove(rng.random_range(0..files.len()));
                e.rename(NodeId::ROOT, &from, NodeId::ROOT, &name, RenameFlags::default()).expect("rename");
                files.push(name);
                true
            }
            3 if !files.is_empty() => {
                let victim = files.swap_remove(rng.random_range(0..files.len()));
                e.unlink(NodeId::ROOT, &victim).expect("unlink");
                true
            }
            _ => false,
        };
        if changed {
            snapshots.push(e.dump_tree().expect("dump"));
        }
        if rng.random_bool(0.3) {
            e.sync().expect("sync");
            synced = snapshots.len() - 1;
        }
    }
    let had_unsynced = storage.unsynced_bytes() > 0;
    e.abandon();
    storage.crash(|_, lo, hi| rng.random_range(lo..=hi));
    // A power cut also takes the index back to its last durable commit; the
    // oldest such state is the empty index, which is what we model here.
    std::fs::remove_file(dir.join("index.redb")).expect("drop index");
    let e = LiveTree::open_with(Arc::new(storage.clone()), dir).expect("reopen after crash");
    let got = e.dump_tree().expect("dump");
    let k = snapshots
        .iter()
        .position(|s| *s == got)
        .unwrap_or_else(|| panic!("seed {seed}: recovered tree is not the state after any prefix of the events"));
    assert!(k >= synced, "seed {seed}: recovered state {k} lost synced operations (synced up to {synced})");
    check_blocks(&e, &got);
    drop(e);
    let e = LiveTree::open_with(Arc::new(storage.clone()), dir).expect("second reopen");
    assert_eq!(e.dump_tree().expect("dump"), got, "seed {seed}: second recovery differs");
    (k, had_unsynced)
}

#[test]
fn synced_operations_survive_power_cuts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut bitten = 0;
    for seed in 0..60 {
        let (_, had_unsynced) = one_run(seed, &tmp.path().join(format!("run{seed}")));
        bitten += usize::from(had_unsynced);
    }
    // The crash must have had something to drop in most runs, or the test proves nothing.
    assert!(bitten > 30, "only {bitten} of 60 runs had unsynced data at the crash");
}
