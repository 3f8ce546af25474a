//! Merge benchmark (issue 6): prints figures, asserts nothing.
//! `cargo bench -p syncer-engine --bench merge` (SYNCER_BENCH_SCALE=0.1 for
//! a quick pass).
//!
//! - merge throughput of the pure reference model (events/s);
//! - import rate: a fresh data dir catching up a peer's log (events/s);
//! - convergence: replica A has made N changes, then imports B's N changes
//!   made offline over the same period (they interleave in time, so the
//!   index is replayed in merge order).
//!
//! Both machines start from the same `N / 100` shared files (a third
//! machine's) and a tenth of their writes go to those, so the merge makes
//! conflict copies; every write names the version it was made on, as the
//! engine writes it.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use engine::clock::VectorClock;
use engine::config::Config;
use engine::event::{AttrChange, Attrs, BlockChange, BlockRef, Change, Event, NodeKind};
use engine::ids::{BlockHash, EventId, MachineId, NodeId, Timestamp};
use engine::log::LogWriter;
use engine::storage::FsStorage;
use engine::{LiveTree, Store, TreeRead};

fn scaled(n: u64) -> u64 {
    let s: f64 = std::env::var("SYNCER_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    ((n as f64 * s) as u64).max(10)
}

/// The shared starting point: `n` files made and written once by a third
/// machine, before every other change.
fn shared(n: u64) -> Vec<Event> {
    let m = MachineId(0x5);
    let mut out = Vec::new();
    for i in 0..n {
        let id = NodeId::new(i + 1, m);
        let change = Change::Create {
            parent: NodeId::ROOT,
            name: format!("shared-{i}.db").into_bytes(),
            kind: NodeKind::File,
            attrs: Attrs { mode: 0o644, ..Attrs::default() },
            target: vec![],
        };
        let b = BlockRef { hash: BlockHash::of(&i.to_le_bytes(), 32), len: 1 << 20 };
        let write = Change::Content { size: 1 << 20, blocks: vec![BlockChange { index: 0, block: Some(b) }] };
        for (k, change) in [change, write].into_iter().enumerate() {
            let seq = out.len() as u64 + 1;
            let base = (k == 1).then_some(EventId { machine: m, seq: seq - 1 });
            let clock = VectorClock::from_entries([(m, k as u64 + 1)]);
            out.push(Event { node: id, machine: m, seq, time: Timestamp(1 + seq as i64), clock, change, base });
        }
    }
    out
}

/// `n` changes by machine `m`: directories, files in them, writes (one in
/// ten to the `shared` files), chmods, renames; times interleave with other
/// machines' (start offset `skew`).
fn history(m: MachineId, n: u64, skew: i64, shared: &[Event]) -> Vec<Event> {
    let mut out = Vec::with_capacity(n as usize);
    let mut clocks: std::collections::HashMap<NodeId, VectorClock> = Default::default();
    // Each file's content version, as this machine sees it.
    let mut heads: std::collections::HashMap<NodeId, EventId> = Default::default();
    for e in shared {
        clocks.insert(e.node, e.clock.clone());
        heads.insert(e.node, e.id());
    }
    let shared_files: Vec<NodeId> = shared.iter().step_by(2).map(|e| e.node).collect();
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
                let f = match shared_files.is_empty() || i % 3 != 0 {
                    true => files[(i as usize * 13) % files.len()],
                    false => shared_files[(i as usize * 7) % shared_files.len()],
                };
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
        let id = EventId { machine: m, seq: i + 1 };
        let base = match &change {
            Change::Create { kind: NodeKind::File, .. } => {
                heads.insert(node, id);
                None
            }
            c if c.is_content() => heads.insert(node, id),
            _ => None,
        };
        out.push(Event {
            node,
            machine: m,
            seq: i + 1,
            time: Timestamp(1_000_000_000 + skew + i as i64 * 1000),
            clock: clock.clone(),
            change,
            base,
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
    Store::init(dir, c).expect("init");
}

fn main() {
    let tmp = tempfile::tempdir_in(std::env::var("SYNCER_BENCH_DIR").unwrap_or_else(|_| ".".into())).expect("tempdir");
    let n = scaled(100_000);
    let s = shared(n / 100);
    let a = history(MachineId(0xa), n, 0, &s);
    let b = history(MachineId(0xb), n, 500, &s);
    println!("syncer merge benchmark: two machines, {n} changes each, from {} shared files", n / 100);

    let t = Instant::now();
    let m = engine::merge::merge(s.iter().chain(&a).chain(&b), 1 << 20);
    let secs = t.elapsed().as_secs_f64();
    let copies = m.conflicts.iter().filter(|c| matches!(c.kind, engine::merge::ConflictKind::Content { .. })).count();
    println!(
        "pure merge: {} events in {secs:.2}s = {:.0} events/s ({} live entries, {} conflicts, {copies} conflict copies)",
        s.len() as u64 + 2 * n,
        (s.len() as u64 + 2 * n) as f64 / secs,
        m.dirents.len(),
        m.conflicts.len()
    );

    let dir = tmp.path().join("import");
    fresh(&dir);
    write_log(&dir, &s);
    write_log(&dir, &a);
    let t = Instant::now();
    let e = LiveTree::open(&dir).expect("open");
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
