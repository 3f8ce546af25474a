//! LiveTree benchmark: prints figures, asserts nothing. Run with
//! `cargo bench -p syncer-engine --bench engine` (SYNCER_BENCH_SCALE=0.1 for
//! a quick pass). Every figure is measured in this run, next to its baseline
//! where one makes sense.

/// The allocator of the `syncer` binary, so that figures match it.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use engine::config::Config;
use engine::event::{Attrs, NodeKind};
use engine::ids::{MachineId, NodeId};
use engine::{LiveTree, Store, TreeRead};
use rand::{Rng, RngCore, SeedableRng};

fn scale() -> f64 {
    std::env::var("SYNCER_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0)
}

fn scaled(n: u64) -> u64 {
    ((n as f64 * scale()) as u64).max(1)
}

/// Whether section `n` runs: all by default, or those listed in
/// `SYNCER_BENCH_SECTIONS` (e.g. `1,3`; for profiling one of them).
fn wanted(n: u32) -> bool {
    std::env::var("SYNCER_BENCH_SECTIONS").map_or(true, |s| s.split(',').any(|p| p.trim() == n.to_string()))
}

fn fresh(dir: &Path) -> LiveTree {
    Store::init(dir, Config::new_default(MachineId::random())).expect("init");
    LiveTree::open(dir).expect("open")
}

/// Half random (incompressible) blocks, half text-like ones (compressible).
fn mixed_block(rng: &mut rand::rngs::StdRng, i: u64, size: usize) -> Vec<u8> {
    let mut b = vec![0u8; size];
    if i.is_multiple_of(2) {
        rng.fill_bytes(&mut b);
    } else {
        const WORDS: &[&str] = &["photo", "IMG_", "2026", "raw", "exif", "lens", "f/2.8", "iso", "800", "\n"];
        let mut pos = 0;
        while pos < size {
            let w = WORDS[rng.random_range(0..WORDS.len())].as_bytes();
            let n = w.len().min(size - pos);
            b[pos..pos + n].copy_from_slice(&w[..n]);
            pos += n;
        }
    }
    b
}

fn main() {
    let tmp = tempfile::tempdir_in(std::env::var("SYNCER_BENCH_DIR").unwrap_or_else(|_| ".".into())).expect("tempdir");
    println!("syncer engine benchmark (scale {}, dir {})", scale(), tmp.path().display());

    // 1. Event append rate.
    if wanted(1) {
        let e = fresh(&tmp.path().join("append"));
        let n = scaled(20_000);
        let t = Instant::now();
        for i in 0..n {
            e.create(NodeId::ROOT, format!("f{i}").as_bytes(), NodeKind::File, Attrs::default(), b"").expect("create");
        }
        e.sync().expect("sync");
        let nosync = n as f64 / t.elapsed().as_secs_f64();
        let m = scaled(300);
        let t = Instant::now();
        for i in 0..m {
            e.create(NodeId::ROOT, format!("s{i}").as_bytes(), NodeKind::File, Attrs::default(), b"").expect("create");
            e.sync().expect("sync");
        }
        let synced = m as f64 / t.elapsed().as_secs_f64();
        println!("append: {nosync:.0} events/s without fsync ({n} creates), {synced:.0} events/s with fsync per commit ({m})");
    }

    // 2. Blob ingest vs plain write of the same bytes.
    if wanted(2) {
        let e = fresh(&tmp.path().join("ingest"));
        let bs = e.block_size() as usize;
        let total = scaled(1024) * (1 << 20);
        let blocks = total / bs as u64;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let data: Vec<Vec<u8>> = (0..blocks).map(|i| mixed_block(&mut rng, i, bs)).collect();
        let plain = tmp.path().join("plain.bin");
        let t = Instant::now();
        let mut f = std::fs::File::create(&plain).expect("create");
        for b in &data {
            f.write_all(b).expect("write");
        }
        f.sync_all().expect("sync");
        let plain_rate = total as f64 / t.elapsed().as_secs_f64() / 1e6;
        std::fs::remove_file(&plain).expect("rm");
        let t = Instant::now();
        for b in &data {
            e.put_block(b).expect("put");
        }
        e.blobs().sync_pending().expect("sync");
        let one = total as f64 / t.elapsed().as_secs_f64() / 1e6;
        let e2 = fresh(&tmp.path().join("ingest2"));
        let t = Instant::now();
        std::thread::scope(|s| {
            for half in data.chunks(data.len().div_ceil(2)) {
                let e2 = &e2;
                s.spawn(move || {
                    for b in half {
                        e2.put_block(b).expect("put");
                    }
                });
            }
        });
        e2.blobs().sync_pending().expect("sync");
        let two = total as f64 / t.elapsed().as_secs_f64() / 1e6;
        let stored: u64 = walk_size(&tmp.path().join("ingest2/blobs"));
        println!(
            "ingest {} MiB mixed: plain write {plain_rate:.0} MB/s; syncer 1 thread {one:.0} MB/s ({:.2}x), 2 threads {two:.0} MB/s ({:.2}x); stored {:.0}% of raw",
            total >> 20,
            one / plain_rate,
            two / plain_rate,
            stored as f64 * 100.0 / total as f64
        );
    }

    // 3. Materialize: list a big directory, look up random nodes.
    if wanted(3) {
        let e = fresh(&tmp.path().join("materialize"));
        let n = scaled(100_000);
        let d = e.create(NodeId::ROOT, b"big", NodeKind::Dir, Attrs::default(), b"").expect("mkdir");
        let t = Instant::now();
        let mut ids = Vec::with_capacity(n as usize);
        for i in 0..n {
            ids.push(
                e.create(d.id, format!("IMG_{i:07}.jpg").as_bytes(), NodeKind::File, Attrs::default(), b"")
                    .expect("create")
                    .id,
            );
        }
        let build = t.elapsed();
        let t = Instant::now();
        let mut listed = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = e.read_dir(d.id, after.as_deref(), 4096).expect("readdir");
            let Some(last) = page.last() else { break };
            after = Some(last.name.clone());
            listed += page.len();
        }
        let list = t.elapsed();
        assert_eq!(listed as u64, n);
        let lookups = scaled(1_000_000);
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let t = Instant::now();
        for _ in 0..lookups {
            let id = ids[rng.random_range(0..ids.len())];
            std::hint::black_box(e.node(id).expect("node"));
        }
        let look = t.elapsed();
        println!(
            "materialize: built {n} entries in {:.2}s; listed them in {:.1} ms; {lookups} random node lookups in {:.2}s ({:.0}/s)",
            build.as_secs_f64(),
            list.as_secs_f64() * 1e3,
            look.as_secs_f64(),
            lookups as f64 / look.as_secs_f64()
        );
    }

    // 4. What a FUSE create, stat and unlink of one file costs the engine
    // (the mount benchmark's metadata workload, without the kernel).
    if wanted(4) {
        let e = fresh(&tmp.path().join("meta"));
        let n = scaled(20_000);
        let names: Vec<Vec<u8>> = (0..n).map(|i| format!("file{i:06}").into_bytes()).collect();
        let t = Instant::now();
        for name in &names {
            let made = e.create(NodeId::ROOT, name, NodeKind::File, Attrs::default(), b"").expect("create");
            std::hint::black_box(e.node(made.id).expect("node"));
        }
        for name in &names {
            e.unlink(NodeId::ROOT, name).expect("unlink");
        }
        e.sync().expect("sync");
        let secs = t.elapsed().as_secs_f64();
        println!(
            "create+stat+unlink: {:.0} files/s ({n} files, {:.1} µs each)",
            n as f64 / secs,
            secs * 1e6 / n as f64
        );
    }
}

fn walk_size(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = match e.metadata() {
                Ok(m) => m,
                Err(_) => continue,
            };
            total += if m.is_dir() { walk_size(&e.path()) } else { m.len() };
        }
    }
    total
}
