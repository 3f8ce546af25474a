//! `syncer init --remote`, `sync`, `clone`, `pin`, `unpin` and `status`
//! with real rsync and a local-directory remote.

use std::path::Path;
use std::process::Command;

use engine::event::{Attrs, BlockChange, NodeKind};
use engine::ids::NodeId;
use engine::LiveTree;

fn syncer(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_syncer")).args(args).output().expect("run syncer");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "syncer {args:?} failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    text
}

fn blob_count(dir: &Path) -> usize {
    let mut n = 0;
    for fan in std::fs::read_dir(dir.join("blobs")).expect("blobs") {
        n += std::fs::read_dir(fan.expect("fan").path()).expect("fan dir").count();
    }
    n
}

#[test]
fn init_sync_clone_pin_unpin_status() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let s = |p: &str| tmp.path().join(p).display().to_string();
    let out = syncer(&["init", &s("a"), "--remote", &s("remote"), "--block-size", "64KiB", "--cache-size", "1MiB"]);
    assert!(out.contains("pushed to"), "{out}");
    assert!(tmp.path().join("remote/config.toml").exists(), "init --remote pushes the initial state");
    let data: Vec<u8> = (0..500_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    {
        let e = LiveTree::open(&tmp.path().join("a")).expect("open");
        let d = e.create(NodeId::ROOT, b"thumbs", NodeKind::Dir, Attrs::default(), b"").expect("mkdir").id;
        let f = e.create(d, b"t.jpg", NodeKind::File, Attrs::default(), b"").expect("create").id;
        let blocks = data
            .chunks(64 << 10)
            .enumerate()
            .map(|(i, c)| BlockChange { index: i as u64, block: Some(e.put_block(c).expect("put")) })
            .collect();
        e.write_blocks(f, data.len() as u64, blocks).expect("write");
        e.close().expect("close");
    }
    let out = syncer(&["sync", &s("a")]);
    assert!(out.contains("pushed 8 blocks"), "{out}");

    let out = syncer(&["clone", &s("b"), &s("remote"), "--cache-size", "8MiB"]);
    assert!(out.contains("1 files, 2 dirs"), "{out}");
    assert_eq!(blob_count(&tmp.path().join("b")), 0, "clone fetches no content");
    let out = syncer(&["pin", &s("b"), "/thumbs"]);
    assert!(out.contains("pinned /thumbs (1 files, 8 blocks local)"), "{out}");
    assert_eq!(blob_count(&tmp.path().join("b")), 8, "pin fetches now");
    let out = syncer(&["status", &s("b")]);
    assert!(out.contains("pins:         /thumbs"), "{out}");
    assert!(out.contains("pending:      0 blocks"), "{out}");
    let out = syncer(&["unpin", &s("b"), "/thumbs"]);
    assert!(out.contains("1 pins removed"), "{out}");
    let out = syncer(&["status", &s("b")]);
    assert!(out.contains("pins:         (none)"), "{out}");
}
