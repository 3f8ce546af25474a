//! Time-travel benchmark: prints figures, asserts nothing. Run with
//! `cargo bench -p syncer-engine --bench history` (SYNCER_BENCH_SCALE=0.05
//! for a quick pass; SYNCER_BENCH_DIR to pick the disk).
//!
//! Builds a history of 1,000,000 events (scaled) through the engine API: a
//! 10,000-entry directory, a hot file rewritten 100,000 times, and files
//! created, written and chmodded across 1,000 directories. Then measures
//! what `mount --at <middle>` does before the first `ls` answers (open a
//! point-in-time view, list the root, list and stat the 10,000-entry
//! directory) and what `log inspect --node <hot file>` reads.

use std::path::Path;
use std::time::Instant;

use engine::config::Config;
use engine::event::{AttrChange, Attrs, BlockChange, NodeKind};
use engine::ids::{MachineId, NodeId, Timestamp};
use engine::Queries;
use engine::{LiveTree, PastView, Store, TreeRead};

fn scale() -> f64 {
    std::env::var("SYNCER_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0)
}

fn scaled(n: u64) -> u64 {
    ((n as f64 * scale()) as u64).max(1)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// First `ls -l` of `dir`: list it, stat every entry.
fn ls(e: &dyn TreeRead, dir: NodeId) -> usize {
    let entries = e.read_dir(dir, None, usize::MAX).expect("read_dir");
    for en in &entries {
        e.node(en.node).expect("stat");
    }
    entries.len()
}

fn main() {
    let tmp = tempfile::tempdir_in(std::env::var("SYNCER_BENCH_DIR").unwrap_or_else(|_| ".".into())).expect("tempdir");
    let dir = tmp.path().join("data");
    let total = scaled(1_000_000);
    let big_dir_entries = scaled(10_000).min(total / 4);
    let hot_writes = scaled(100_000).min(total / 4);
    println!("syncer history benchmark (scale {}, {total} events, dir {})", scale(), tmp.path().display());

    // Build the history.
    let mut config = Config::new_default(MachineId::random());
    config.block_size = 4096;
    config.small_block = 4096;
    Store::init(&dir, config).expect("init");
    let t = Instant::now();
    let (middle, hot, big) = {
        let e = LiveTree::open(&dir).expect("open");
        let block = e.put_block(&[7u8; 4096]).expect("put");
        let other = e.put_block(&[9u8; 4096]).expect("put");
        let big = e.create(NodeId::ROOT, b"big", NodeKind::Dir, Attrs::default(), b"").expect("mkdir").id;
        let hot = e.create(NodeId::ROOT, b"hot", NodeKind::File, Attrs::default(), b"").expect("create").id;
        let mut events = 2u64;
        for i in 0..big_dir_entries {
            e.create(big, format!("entry{i:06}").as_bytes(), NodeKind::File, Attrs::default(), b"").expect("create");
            events += 1;
        }
        let dirs: Vec<NodeId> = (0..1000)
            .map(|i| {
                e.create(NodeId::ROOT, format!("d{i:03}").as_bytes(), NodeKind::Dir, Attrs::default(), b"")
                    .expect("mkdir")
                    .id
            })
            .collect();
        events += 1000;
        let hot_every = ((total.saturating_sub(events)) / hot_writes.max(1)).max(1);
        let mut middle = None;
        let mut i = 0u64;
        while events < total {
            if middle.is_none() && events >= total / 2 {
                middle = Some(Timestamp::now());
            }
            if i.is_multiple_of(hot_every) {
                let b = if i.is_multiple_of(2) { block } else { other };
                e.write_blocks(hot, 4096 * 64, vec![BlockChange { index: i % 64, block: Some(b) }]).expect("write");
                events += 1;
            }
            let d = dirs[(i % 1000) as usize];
            let f = e.create(d, format!("f{i}").as_bytes(), NodeKind::File, Attrs::default(), b"").expect("create").id;
            e.write_blocks(f, 4096, vec![BlockChange { index: 0, block: Some(block) }]).expect("write");
            e.set_attrs(f, AttrChange { mode: Some(0o600), ..AttrChange::default() }).expect("chmod");
            events += 3;
            i += 1;
        }
        e.close().expect("close");
        (middle.unwrap_or_else(Timestamp::now), hot, big)
    };
    let secs = t.elapsed().as_secs_f64();
    println!("build: {total} events in {secs:.1} s ({:.0} events/s)", total as f64 / secs);
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) as f64 / (1 << 20) as f64;
    println!("index.redb: {:.0} MiB", size(&dir.join("index.redb")));

    // The first view ever builds history.redb from the log, once.
    let t = Instant::now();
    let e = PastView::open(&dir, middle).expect("open_at");
    println!(
        "first open_at (builds history.redb from the log, once per new events): {:.0} ms, history.redb {:.0} MiB",
        ms(t),
        size(&dir.join("history.redb"))
    );
    drop(e);

    // mount --at <middle> to first ls: what every later view pays.
    for round in 1..=3 {
        let t = Instant::now();
        let e = PastView::open(&dir, middle).expect("open_at");
        let open = ms(t);
        let t = Instant::now();
        let root = ls(&e, NodeId::ROOT);
        let root_ms = ms(t);
        let t = Instant::now();
        let n = ls(&e, big);
        let big_ms = ms(t);
        println!(
            "round {round}: open_at(middle) {open:.1} ms; first ls -l of / ({root} entries) {root_ms:.1} ms; \
             of /big ({n} entries) {big_ms:.1} ms; open to both listed {:.1} ms",
            open + root_ms + big_ms
        );
    }

    // The hot file: stat folds its history up to the view's time, once.
    let e = PastView::open(&dir, middle).expect("open_at");
    let t = Instant::now();
    let n = e.node(hot).expect("stat");
    let first = ms(t);
    let t = Instant::now();
    e.node(hot).expect("stat");
    println!(
        "stat of the hot file ({} events before middle, size {}): first {first:.1} ms, then {:.3} ms",
        e.index().expect("ix").history(hot, middle).expect("history").len(),
        n.size,
        ms(t)
    );

    // log inspect --node <hot>: its positions from history.redb, each record read and checked.
    let latest = PastView::open(&dir, Timestamp(i64::MAX)).expect("open_at");
    let t = Instant::now();
    let positions = latest.index().expect("ix").history(hot, Timestamp(i64::MAX)).expect("history");
    let mut bytes = 0usize;
    for (pos, _) in &positions {
        let d = engine::log::read_record_at(latest.storage().as_ref(), &latest.layout().log(), *pos).expect("read");
        bytes += d.frame_len;
    }
    println!(
        "log inspect --node <hot file>: {} events ({:.1} MiB of records) found and read in {:.0} ms",
        positions.len(),
        bytes as f64 / (1 << 20) as f64,
        ms(t)
    );
    let t = Instant::now();
    let all = engine::forensics::inspect(latest.data_dir()).expect("scan");
    println!("log inspect (tolerant scan of the whole log): {} records in {:.0} ms", all.len(), ms(t));
}
