//! Remote benchmark: push rate to a local-directory remote vs plain
//! `rsync -a` of the same files, rsync runs per 1,000 blocks, and the
//! cold-read rate of a file whose blocks are all remote.
//!
//! `cargo bench -p syncer-replication --bench remote`
//! (`SYNCER_BENCH_BLOCKS`, default 4000 blocks of 64 KiB, and
//! `SYNCER_BENCH_COLD_MIB`, default 1024, scale it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::config::Config;
use engine::event::{Attrs, BlockChange, NodeKind};
use engine::ids::{MachineId, NodeId};
use engine::{LiveTree, Store, TreeRead};
use syncer_replication::push;
use syncer_replication::{Daemon, DaemonOptions, Remote, Rsync};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn engine(dir: &std::path::Path, remote: &std::path::Path, block_size: u64, cache: u64) -> LiveTree {
    let mut c = Config::new_default(MachineId::random());
    c.remote = Some(remote.display().to_string());
    c.block_size = block_size;
    c.cache_size = cache;
    c.small_block = 4 << 10;
    c.compression_level = 0;
    Store::init(dir, c).expect("init");
    LiveTree::open(dir).expect("open")
}

fn write_random_file(e: &LiveTree, name: &str, blocks: u64, bs: u64) -> NodeId {
    let n = e.create(NodeId::ROOT, name.as_bytes(), NodeKind::File, Attrs::default(), b"").expect("create").id;
    let mut buf = vec![0u8; bs as usize];
    let mut batch = Vec::new();
    for i in 0..blocks {
        rand::fill(&mut buf[..]);
        batch.push(BlockChange { index: i, block: Some(e.put_block(&buf).expect("put")) });
        if batch.len() == 256 || i + 1 == blocks {
            e.write_blocks(n, (i + 1) * bs, std::mem::take(&mut batch)).expect("write");
        }
    }
    e.sync().expect("sync");
    n
}

fn mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let remote = tmp.path().join("remote");

    // Push rate.
    let blocks = env("SYNCER_BENCH_BLOCKS", 4000);
    let bs = 64 << 10;
    let e = engine(&tmp.path().join("a"), &remote, bs, 1 << 40);
    write_random_file(&e, "many", blocks, bs);
    let rsync = Rsync::new(Remote::Local(remote.clone()));
    let t = Instant::now();
    let r = push::push(&e, &rsync, &mut |_| {}).expect("push");
    let took = t.elapsed();
    println!(
        "push:        {} blocks, {:.1} MiB in {:.2} s: {:.0} blocks/s, {:.1} MB/s; {} rsync runs ({:.2} per 1,000 blocks)",
        r.blocks,
        r.block_bytes as f64 / (1 << 20) as f64,
        took.as_secs_f64(),
        r.blocks as f64 / took.as_secs_f64(),
        mb_s(r.block_bytes, took),
        r.runs,
        r.runs as f64 * 1000.0 / r.blocks.max(1) as f64
    );
    let plain = tmp.path().join("plain");
    let t = Instant::now();
    let ok = std::process::Command::new("rsync")
        .arg("-a")
        .arg(format!("{}/", e.replication().blob_files_dir().display()))
        .arg(&plain)
        .status()
        .expect("rsync");
    assert!(ok.success());
    let took = t.elapsed();
    println!(
        "rsync -a:    same {} files in {:.2} s: {:.0} files/s, {:.1} MB/s",
        r.blocks,
        took.as_secs_f64(),
        r.blocks as f64 / took.as_secs_f64(),
        mb_s(r.block_bytes, took)
    );
    e.close().expect("close");
    drop(e);

    // Cold read of a file whose blocks are all remote.
    let mib = env("SYNCER_BENCH_COLD_MIB", 1024);
    let bs = 1 << 20;
    let remote2 = tmp.path().join("remote2");
    {
        let e = engine(&tmp.path().join("b"), &remote2, bs, 1 << 40);
        write_random_file(&e, "big", mib, bs);
        push::push(&e, &Rsync::new(Remote::Local(remote2.clone())), &mut |_| {}).expect("push");
        e.close().expect("close");
    }
    // A clone holds no content: every block is remote.
    let rsync2 = Rsync::new(Remote::Local(remote2.clone()));
    let clone = syncer_replication::pull::clone_into(
        &tmp.path().join("c"),
        &remote2.display().to_string(),
        &rsync2,
        Some(256 << 20),
    )
    .expect("clone");
    let e = Arc::new(clone);
    let node = e.lookup(NodeId::ROOT, b"big").expect("big").id;
    let daemon = Daemon::start(e.clone(), Remote::Local(remote2), DaemonOptions::default());
    let t = Instant::now();
    let mut bytes = 0;
    for i in 0..mib {
        let (_, b) = e.file_blocks(node, i, 1).expect("blocks")[0];
        bytes += e.read_block(&b).expect("cold read").len() as u64;
    }
    let took = t.elapsed();
    println!(
        "cold read:   {} MiB all remote in {:.2} s: {:.1} MB/s ({} rsync runs, read-ahead on)",
        bytes >> 20,
        took.as_secs_f64(),
        mb_s(bytes, took),
        daemon.rsync().invocations()
    );
    daemon.stop();
}
