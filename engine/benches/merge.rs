//! Merge benchmark (issue 6): prints figures, asserts nothing.
//! `cargo bench -p syncer-engine --bench merge` (SYNCER_BENCH_SCALE=0.1 for
//! a quick pass).
//!
//! - merge throughput of the pure reference model (events/s);
//! - import rate: a fresh data dir catching up a peer's log (events/s);
//! - convergence: replica A has made N changes, then imports B's N changes
//!   made offline over the same period (they interleave in time, so the
//!   index is replayed in merge order).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use engine::clock::VectorClock;
use engine::config::Config;
use engine::event::{AttrChange, Attrs, BlockChange, BlockRef, Change, Event, NodeKind};
use engine::ids::{BlockHash, MachineId, NodeId, Timestamp};
use engine::log::LogWriter;
use engine::storage::FsStorage;
use engine::Engine;

fn scaled(n: u64) -> u64 {
    let s: f64 = std::env::var("SYNCER_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    ((n as f64 * s) as u64).max(10)
}

/// `n` changes by machine `m`: directories, files in them, writes, chmods,
/// renames; times interleave with other machines' (start offset `skew`).
fn history(m: MachineId, n: u64, skew: i64) -> Vec<Event> {
    let mut out = Vec::with_capacity(n as usize);
    let mut clocks: std::collections::HashMap<NodeId, VectorClock> = Default::default();
    let mut dirs = vec![NodeId::ROOT];
    let mut files: Vec<NodeId> = Vec::new();
    let mut counter = 0u64;
    for i in 0..n {
        let (node, change) = match i % 10 {
            0 => {
                counter += 1;
                let id = NodeId::new(counter, m);
                let c = Change::Create {
                    parent: NodeId::ROOT,
                    name: format!("{m}-d{i}").into_bytes(),
                    kind: NodeKind::Dir,
                    attrs: Attrs { mode: 0o755, ..Attrs::default() },
                    target: vec![],
                };
                dirs.push(id);
                (id, c)
            }
            1..=4 => {
                counter += 1;
                let id = NodeId::new(counter, m);
                let parent = dirs[(i as usize * 7) % dirs.len()];
                files.push(id);
                (
                    id,
                    Change::Create {
                        parent,
                        name: format!("f{i}.jpg").into_bytes(),
                        kind: NodeKind::File,
                        attrs: Attrs { mode: 0o644, ..Attrs::default() },
                        target: vec![],
                    },
                )
            }
            5..=7 => {
                let f = files[(i as usize * 13) % files.len()];
                let b = BlockRef { hash: BlockHash::of(&i.to_le_bytes(), 32), len: 1 << 20 };
                (f, Change::Content { size: 4 << 20, blocks: vec![BlockChange { index: i % 4, block: Some(b) }] })
            }
            8 => {
                let f = files[(i as usize * 3) % files.len()];
                (f, Change::SetAttrs(AttrChange { mode: Some(0o600), ..AttrChange::default() }))
            }
            _ => {
                let f = files[(i as usize * 5) % files.len()];
                let to = dirs[(i as usize * 11) % dirs.len()];
                (f, Change::Move { parent: to, name: format!("r{i}-{m}.jpg").into_bytes() })
            }
        };
        let clock = clocks.entry(node).or_default();
        clock.tick(m);
        out.push(Event {
            node,
            machine: m,
            seq: i + 1,
            time: Timestamp(1_000_000_000 + skew + i as i64 * 1000),
            clock: clock.clone(),
            change,
            base: None,
        });
    }
    out
}

fn write_log(dir: &Path, events: &[Event]) {
    let m = events[0].machine;
    let (mut w, _) = LogWriter::open(Arc::new(FsStorage), &dir.join("log"), m, 64 << 20).expect("log");
    for chunk in events.chunks(10_000) {
        w.append(chunk).expect("append");
    }
    w.sync().expect("sync");
}

fn fresh(dir: &Path) {
    let mut c = Config::new_default(MachineId(0xbe_0000));
    c.block_size = 1 << 20;
    Engine::init(dir, c).expect("init");
}

fn main() {
    let tmp = tempfile::tempdir_in(std::env::var("SYNCER_BENCH_DIR").unwrap_or_else(|_| ".".into())).expect("tempdir");
    let n = scaled(100_000);
    let a = history(MachineId(0xa), n, 0);
    let b = history(MachineId(0xb), n, 500);
    println!("syncer merge benchmark: two machines, {n} changes each");

    let t = Instant::now();
    let m = engine::merge::merge(a.iter().chain(b.iter()), 1 << 20);
    let secs = t.elapsed().as_secs_f64();
    println!(
        "pure merge: {} events in {secs:.2}s = {:.0} events/s ({} live entries, {} conflicts)",
        2 * n,
        2.0 * n as f64 / secs,
        m.dirents.len(),
        m.conflicts.len()
    );

    let dir = tmp.path().join("import");
    fresh(&dir);
    write_log(&dir, &a);
    let t = Instant::now();
    let e = Engine::open(&dir).expect("open");
    let secs = t.elapsed().as_secs_f64();
    println!(
        "import: {} events of one peer in {secs:.2}s = {:.0} events/s",
        e.open_report().caught_up,
        e.open_report().caught_up as f64 / secs
    );

    write_log(&dir, &b);
    let t = Instant::now();
    let r = e.import().expect("import");
    let secs = t.elapsed().as_secs_f64();
    println!("converge: A (with its {n} changes applied) imports B's {n} offline changes in {secs:.2}s ({} events applied, replayed: {})", r.applied, r.replayed);
    let live = e.dump_tree().expect("dump").len() - 1;
    assert_eq!(live, m.dirents.len(), "the index and the model disagree");
}
