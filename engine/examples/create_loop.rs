//! Profiling aid: a tight loop of creates through the engine.
//! `cargo run --release -p syncer-engine --example create_loop -- 50000`
use engine::event::{Attrs, NodeKind};
use engine::ids::{MachineId, NodeId};
fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let tmp = tempfile::tempdir_in(".").expect("tempdir");
    let dir = tmp.path().join("d");
    engine::Store::init(&dir, engine::config::Config::new_default(MachineId::random())).expect("init");
    let e = engine::LiveTree::open(&dir).expect("open");
    let t = std::time::Instant::now();
    for i in 0..n {
        e.create(NodeId::ROOT, format!("f{i}").as_bytes(), NodeKind::File, Attrs::default(), b"").expect("create");
    }
    let c = t.elapsed();
    let t = std::time::Instant::now();
    for i in 0..n {
        e.unlink(NodeId::ROOT, format!("f{i}").as_bytes()).expect("unlink");
    }
    println!(
        "create {:.1} us, unlink {:.1} us",
        c.as_secs_f64() * 1e6 / n as f64,
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}
