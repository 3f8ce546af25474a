//! A whole data dir written by format 1.1 (records of version 2: no content
//! base) opens without user action: FORMAT is upgraded to the current
//! version, every old event reads as current, the tree and its content are
//! there, new events are written as version 3, and a file written by the
//! old version takes part in content conflicts like any other.
//!
//! The fixture `tests/fixtures/v1.1-datadir/` was made once by
//! `generate_v1_1_datadir` (ignored) with the syncer of format 1.1. Never
//! regenerate it to make a test pass: if it stops opening, old data dirs in
//! the field would too.

use std::path::{Path, PathBuf};

use engine::event::{AttrChange, Attrs, BlockChange, NodeKind};
use engine::ids::{MachineId, NodeId};

const M: MachineId = MachineId(0x0000_0000_0000_00c2);

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1.1-datadir")
}

fn content(i: u8) -> Vec<u8> {
    (0..9000u32).map(|j| (j as u8).wrapping_mul(i)).collect()
}

#[test]
#[ignore = "writes the checked-in fixture; run once by hand"]
fn generate_v1_1_datadir() {
    let dir = fixture();
    assert!(!dir.exists(), "{} exists; the fixture is never regenerated", dir.display());
    let mut config = engine::config::Config::new_default(M);
    config.block_size = 4096;
    config.small_block = 1024;
    engine::Engine::init(&dir, config).expect("init");
    let e = engine::Engine::open(&dir).expect("open");
    let attrs = |mode| Attrs { mode, ..Attrs::default() };
    let docs = e.create(NodeId::ROOT, b"docs", NodeKind::Dir, attrs(0o755), b"").expect("mkdir").id;
    let f = e.create(docs, b"notes.txt", NodeKind::File, attrs(0o644), b"").expect("create").id;
    let data = content(3);
    let mut blocks = Vec::new();
    for (i, chunk) in data.chunks(4096).enumerate() {
        blocks.push(BlockChange { index: i as u64, block: Some(e.put_block(chunk).expect("put")) });
    }
    e.write_blocks(f, data.len() as u64, blocks).expect("write");
    e.truncate(f, 8000).expect("truncate");
    e.set_attrs(f, AttrChange { mode: Some(0o600), ..AttrChange::default() }).expect("chmod");
    e.set_xattr(f, b"user.tag", b"old", engine::XattrMode::Any).expect("xattr");
    e.create(NodeId::ROOT, b"link", NodeKind::Symlink, attrs(0o777), b"docs/notes.txt").expect("symlink");
    let gone = e.create(docs, b"gone", NodeKind::File, attrs(0o644), b"").expect("create").id;
    e.rename(docs, b"gone", NodeId::ROOT, b"moved", engine::RenameFlags::default()).expect("rename");
    e.unlink(NodeId::ROOT, b"moved").expect("unlink");
    let _ = gone;
    e.close().expect("close");
    drop(e);
    for derived in ["index.redb", "history.redb", "lock", "dirty", "history.lock", "mount.log"] {
        let _ = std::fs::remove_file(dir.join(derived));
    }
}
