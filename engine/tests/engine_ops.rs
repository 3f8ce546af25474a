//! The engine's tree operations against a real data dir: POSIX refusals,
//! persistence across reopen, and index rebuild equivalence.

use engine::config::Config;
use engine::event::{Attrs, BlockChange, NodeKind};
use engine::ids::{MachineId, NodeId, Timestamp};
use engine::Queries;
use engine::{FsError, RenameFlags, XattrMode};
use engine::{LiveTree, PastView, Store, TreeRead};
use std::path::Path;

fn init(dir: &Path) {
    let mut c = Config::new_default(MachineId::random());
    c.block_size = 4096;
    c.small_block = 1024;
    Store::init(dir, c).expect("init");
}

fn file_attrs() -> Attrs {
    Attrs { mode: 0o644, ..Attrs::default() }
}

fn fs_err(r: engine::Result<impl std::fmt::Debug>) -> FsError {
    match r {
        Err(e) => e.fs_error().unwrap_or_else(|| panic!("not a POSIX error: {e}")),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

#[test]
fn operations_refuse_like_posix() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    init(&dir);
    let e = LiveTree::open(&dir).expect("open");
    let d = e.create(NodeId::ROOT, b"d", NodeKind::Dir, Attrs { mode: 0o755, ..Attrs::default() }, b"").expect("mkdir");
    let f = e.create(d.id, b"f", NodeKind::File, file_attrs(), b"").expect("create");
    assert_eq!(fs_err(e.create(d.id, b"f", NodeKind::File, file_attrs(), b"")), FsError::Exists);
    assert_eq!(fs_err(e.create(f.id, b"x", NodeKind::File, file_attrs(), b"")), FsError::NotDir);
    assert_eq!(fs_err(e.create(d.id, b"a/b", NodeKind::File, file_attrs(), b"")), FsError::InvalidName);
    assert_eq!(fs_err(e.create(d.id, &[b'n'; 256], NodeKind::File, file_attrs(), b"")), FsError::NameTooLong);
    assert_eq!(fs_err(e.rmdir(NodeId::ROOT, b"d")), FsError::NotEmpty);
    assert_eq!(fs_err(e.unlink(NodeId::ROOT, b"d")), FsError::IsDir);
    assert_eq!(fs_err(e.rmdir(d.id, b"f")), FsError::NotDir);
    assert_eq!(fs_err(e.rename(NodeId::ROOT, b"d", d.id, b"inside", RenameFlags::default())), FsError::MoveIntoSelf);
    let g = e.create(NodeId::ROOT, b"g", NodeKind::File, file_attrs(), b"").expect("create g");
    let noreplace = RenameFlags { noreplace: true, exchange: false };
    assert_eq!(fs_err(e.rename(NodeId::ROOT, b"g", d.id, b"f", noreplace)), FsError::Exists);
    assert_eq!(fs_err(e.rename(NodeId::ROOT, b"g", NodeId::ROOT, b"d", RenameFlags::default())), FsError::IsDir);
    e.set_xattr(g.id, b"user.a", b"1", XattrMode::Create).expect("setxattr");
    assert_eq!(fs_err(e.set_xattr(g.id, b"user.a", b"1", XattrMode::Create)), FsError::Exists);
    assert_eq!(fs_err(e.set_xattr(g.id, b"user.b", b"1", XattrMode::Replace)), FsError::NoAttr);
    assert_eq!(fs_err(e.remove_xattr(g.id, b"user.b")), FsError::NoAttr);
    // Exchange swaps the two names.
    e.rename(NodeId::ROOT, b"g", d.id, b"f", RenameFlags { noreplace: false, exchange: true }).expect("exchange");
    assert_eq!(e.lookup(d.id, b"f").expect("lookup").id, g.id);
    assert_eq!(e.lookup(NodeId::ROOT, b"g").expect("lookup").id, f.id);
    // Replacing rename removes the target.
    e.rename(NodeId::ROOT, b"g", d.id, b"f", RenameFlags::default()).expect("replace");
    assert_eq!(e.lookup(d.id, b"f").expect("lookup").id, f.id);
    assert!(e.node(g.id).expect("node").removed);
    assert_eq!(fs_err(e.lookup(NodeId::ROOT, b"g")), FsError::NotFound);
}

#[test]
fn writes_survive_reopen_and_truncate_cuts_the_tail_block() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    init(&dir);
    let id = {
        let e = LiveTree::open(&dir).expect("open");
        let f = e.create(NodeId::ROOT, b"f", NodeKind::File, file_attrs(), b"").expect("create");
        let b0 = e.put_block(&[7u8; 4096]).expect("put");
        let b2 = e.put_block(&[9u8; 100]).expect("put");
        let blocks = vec![BlockChange { index: 0, block: Some(b0) }, BlockChange { index: 2, block: Some(b2) }];
        e.write_blocks(f.id, 2 * 4096 + 100, blocks).expect("write");
        e.truncate(f.id, 4000).expect("truncate");
        e.sync().expect("sync");
        f.id
    };
    let e = LiveTree::open(&dir).expect("reopen");
    let n = e.node(id).expect("node");
    assert_eq!(n.size, 4000);
    let blocks = e.file_blocks(id, 0, 10).expect("blocks");
    assert_eq!(blocks.len(), 1);
    assert_eq!(e.read_block(&blocks[0].1).expect("read"), vec![7u8; 4000]);
    assert_eq!(e.read_file(id).expect("read file"), vec![7u8; 4000]);
    // Extending leaves a hole that reads as zeros.
    drop(e);
    let e = LiveTree::open(&dir).expect("reopen");
    e.truncate(id, 9000).expect("extend");
    let mut want = vec![7u8; 4000];
    want.resize(9000, 0);
    assert_eq!(e.read_file(id).expect("read file"), want);
    assert!(matches!(LiveTree::open(&dir), Err(engine::Error::Locked { .. })));
}

/// An engine on a new data dir of `block`-byte blocks whose block store
/// has no compression slot: every compressible block is stored raw first.
fn engine_storing_raw(block: usize) -> (tempfile::TempDir, LiveTree) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut c = Config::new_default(MachineId::random());
    c.block_size = block as u64;
    Store::init(&dir, c).expect("init");
    let e = LiveTree::open(&dir).expect("open");
    e.blobs().set_compress_slots(0);
    (tmp, e)
}

/// Waits until the engine's thread has compressed a blob stored raw;
/// fails after 30 s from `since`.
fn wait_until_one_is_compressed(e: &LiveTree, since: std::time::Instant) {
    while e.blobs().deferral_stats().compressed_later == 0 {
        assert!(since.elapsed() < std::time::Duration::from_secs(30), "never compressed");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Blocks stored raw because every compression slot was taken are
/// compressed by the engine's own thread once the store has been idle for
/// a second, and read back the same.
#[test]
fn blocks_stored_raw_under_load_are_compressed_once_the_engine_is_idle() {
    const BLOCK: usize = 64 << 10;
    let (_tmp, e) = engine_storing_raw(BLOCK);
    let f = e.create(NodeId::ROOT, b"f", NodeKind::File, file_attrs(), b"").expect("create");
    let text: Vec<u8> = (0..4 * BLOCK).map(|i| b"syncer keeps it "[i % 16]).collect();
    let start = std::time::Instant::now();
    let blocks: Vec<BlockChange> = text
        .chunks(BLOCK)
        .enumerate()
        .map(|(i, c)| BlockChange { index: i as u64, block: Some(e.put_block(c).expect("put")) })
        .collect();
    e.write_blocks(f.id, text.len() as u64, blocks).expect("write");
    let stats = e.blobs().deferral_stats();
    assert_eq!(stats.deferred, 1, "four equal blocks, stored once, raw: {stats:?}");
    let hash = e.file_blocks(f.id, 0, 1).expect("blocks")[0].1.hash;

    wait_until_one_is_compressed(&e, start);
    assert!(start.elapsed() >= std::time::Duration::from_millis(900), "compressed before the store was idle");
    assert_eq!(e.blobs().deferral_stats().queued, 0);
    assert!(e.blobs().stored_len(&hash).expect("stored") < 1000, "compressed in place");
    assert_eq!(e.read_file(f.id).expect("read back"), text);
}

/// Dropping the engine while its thread is compressing blobs stored raw
/// under load stops that thread after its blob and returns.
#[test]
fn dropping_the_engine_while_it_compresses_returns() {
    const BLOCK: usize = 1 << 20;
    let (_tmp, e) = engine_storing_raw(BLOCK);
    for i in 0..64u32 {
        let block: Vec<u8> = (0..BLOCK as u32).map(|j| b"syncer keeps it "[(j % 16) as usize] ^ (i as u8)).collect();
        e.put_block(&block).expect("put");
    }
    wait_until_one_is_compressed(&e, std::time::Instant::now());
    let (done, dropped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(e);
        let _ = done.send(());
    });
    assert!(dropped.recv_timeout(std::time::Duration::from_secs(30)).is_ok(), "dropping the engine hung");
}

#[test]
fn rebuilt_index_gives_the_same_tree_on_10000_events() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    init(&dir);
    let before = {
        let e = LiveTree::open(&dir).expect("open");
        let mut dirs = vec![NodeId::ROOT];
        let mut files = Vec::new();
        let mut events = 0;
        let mut i = 0u64;
        while events < 10_000 {
            i += 1;
            let parent = dirs[(i as usize * 7) % dirs.len()];
            match i % 5 {
                0 => {
                    let d = e.create(parent, format!("d{i}").as_bytes(), NodeKind::Dir, Attrs::default(), b"");
                    dirs.push(d.expect("mkdir").id);
                }
                1 | 2 => {
                    let f = e.create(parent, format!("f{i}").as_bytes(), NodeKind::File, file_attrs(), b"");
                    files.push(f.expect("create").id);
                }
                3 => {
                    let f = files[(i as usize * 13) % files.len()];
                    let b = e.put_block(&i.to_le_bytes()).expect("put");
                    e.write_blocks(f, 8, vec![BlockChange { index: 0, block: Some(b) }]).expect("write");
                }
                _ => {
                    let f = files[(i as usize * 3) % files.len()];
                    let n = e.node(f).expect("node");
                    if !n.removed {
                        let to = dirs[(i as usize) % dirs.len()];
                        // A rename into a missing or taken name may be refused; both are fine here.
                        let _ = e.rename(n.parent, &n.name, to, format!("r{i}").as_bytes(), RenameFlags::default());
                    }
                }
            }
            events = e.stats().expect("stats").events;
        }
        // A hot file and a hot directory: enough events of their own for
        // several checkpoints each.
        let hot = files[0];
        let hot_dir = dirs[1];
        for i in 0..150u64 {
            let b = e.put_block(&i.to_le_bytes()).expect("put");
            e.write_blocks(hot, 8, vec![BlockChange { index: 0, block: Some(b) }]).expect("write");
            e.set_xattr(hot_dir, b"user.n", &i.to_le_bytes(), XattrMode::Any).expect("setxattr");
        }
        let nodes: Vec<NodeId> = [NodeId::ROOT].into_iter().chain(dirs).chain(files).collect();
        let checkpoints = checkpoints(&e, &nodes);
        (e.dump_tree().expect("dump"), nodes, checkpoints)
    };
    let (before, nodes, checkpoints_before) = before;
    let distinct: std::collections::BTreeSet<_> = checkpoints_before.iter().flatten().collect();
    assert!(distinct.len() >= 8, "the history has checkpoints to compare: {}", distinct.len());
    std::fs::remove_file(dir.join("index.redb")).expect("delete index");
    let e = LiveTree::open(&dir).expect("reopen");
    assert!(e.open_report().index_rebuilt);
    assert!(e.open_report().caught_up >= 10_000);
    assert_eq!(e.dump_tree().expect("dump"), before);
    // Checkpoints decide what a point-in-time view folds: the live index
    // (changes committed in groups) places them where a rebuild does.
    assert_eq!(checkpoints(&e, &nodes), checkpoints_before);
}

/// For each node and each event of its history: the key of the latest
/// checkpoint at that event's time.
#[allow(clippy::type_complexity)]
fn checkpoints(e: &LiveTree, nodes: &[NodeId]) -> Vec<Option<(Timestamp, MachineId, u64)>> {
    let ix = e.index().expect("index");
    let mut out = Vec::new();
    for &n in nodes {
        for (_, time) in ix.history(n, Timestamp(i64::MAX)).expect("history") {
            out.push(ix.checkpoint_at(n, time).expect("checkpoint").map(|(key, _)| key));
        }
    }
    out
}

#[test]
fn create_with_xattrs_and_change_node_record_everything_in_the_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    init(&dir);
    let before = {
        let e = LiveTree::open(&dir).expect("open");
        let xattrs = vec![(b"system.posix_acl_access".to_vec(), vec![1, 2, 3]), (b"user.k".to_vec(), b"v".to_vec())];
        let f = e.create_with_xattrs(NodeId::ROOT, b"f", NodeKind::File, file_attrs(), b"", &xattrs).expect("create");
        assert_eq!(f.xattrs.len(), 2);
        assert_eq!(f.xattrs.get(&b"user.k"[..]).map(Vec::as_slice), Some(&b"v"[..]));
        let change = engine::event::AttrChange { mode: Some(0o600), ..Default::default() };
        let set = vec![
            (b"user.k".to_vec(), None),
            (b"user.missing".to_vec(), None),
            (b"system.posix_acl_access".to_vec(), Some(vec![4])),
        ];
        let f = e.change_node(f.id, change, &set).expect("change");
        assert_eq!(f.attrs.mode, 0o600);
        assert_eq!(f.xattrs.into_iter().collect::<Vec<_>>(), vec![(b"system.posix_acl_access".to_vec(), vec![4])]);
        let too_long = vec![(vec![b'n'; 256], Some(Vec::new()))];
        assert_eq!(fs_err(e.change_node(f.id, Default::default(), &too_long)), FsError::Invalid);
        assert_eq!(
            fs_err(e.create_with_xattrs(
                NodeId::ROOT,
                b"g",
                NodeKind::File,
                file_attrs(),
                b"",
                &[(Vec::new(), vec![])]
            )),
            FsError::Invalid
        );
        assert_eq!(fs_err(e.lookup(NodeId::ROOT, b"g")), FsError::NotFound, "a refused create makes nothing");
        e.close().expect("close");
        e.dump_tree().expect("dump")
    };
    // The log is the truth: a rebuilt index shows the same tree.
    std::fs::remove_file(dir.join("index.redb")).expect("delete index");
    let e = LiveTree::open(&dir).expect("reopen");
    assert!(e.open_report().index_rebuilt);
    assert_eq!(e.dump_tree().expect("dump"), before);
}

#[test]
fn a_history_keeper_indexes_history_before_the_first_view_opens() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    init(&dir);
    let e = std::sync::Arc::new(LiveTree::open(&dir).expect("open"));
    for i in 0..50 {
        e.create(NodeId::ROOT, format!("f{i}").as_bytes(), NodeKind::File, file_attrs(), b"").expect("create");
    }
    e.sync().expect("sync");
    let history = dir.join("history.redb");
    assert!(!history.exists(), "no view opened yet");
    let keeper = engine::HistoryKeeper::start(e.clone()).expect("start the keeper");
    // The keeper looks every HISTORY_REFRESH_EVERY; give it a few rounds.
    let deadline = std::time::Instant::now() + engine::HISTORY_REFRESH_EVERY * 15;
    loop {
        assert!(std::time::Instant::now() < deadline, "the keeper never made {}", history.display());
        std::thread::sleep(std::time::Duration::from_millis(100));
        if !history.exists() {
            continue;
        }
        let view = PastView::open(&dir, Timestamp::now()).expect("open a view");
        if view.open_report().stale_history.is_some() {
            // The keeper was updating it: this view could only read it.
            continue;
        }
        // The view found nothing left to index, and shows everything.
        assert_eq!(view.open_report().caught_up, 0);
        assert_eq!(view.read_dir(NodeId::ROOT, None, 1000).expect("list").len(), 50);
        break;
    }
    drop(keeper);
}
