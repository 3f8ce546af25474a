//! Shared by the replication tests: data dirs with a local-directory
//! remote, files written through the engine, and checks of the remote.
#![allow(dead_code)]

use engine::{LiveTree, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::config::Config;
use engine::event::{Attrs, BlockChange, NodeKind};
use engine::ids::{MachineId, NodeId};
use engine::log;
use engine::storage::FsStorage;
use syncer_replication::push;
use syncer_replication::status::Health;
use syncer_replication::{Remote, RemoteSource, Rsync};

/// Block size of the test data dirs: small, so multi-block paths run on
/// small files.
pub const BS: u64 = 64 << 10;

pub fn config(remote: &Path, cache: u64) -> Config {
    let mut c = Config::new_default(MachineId::random());
    c.remote = Some(remote.display().to_string());
    c.cache_size = cache;
    c.block_size = BS;
    c.small_block = 4 << 10;
    c.compression_level = 0;
    c
}

/// A new data dir `root/name` whose remote is the folder `remote`.
pub fn init(root: &Path, name: &str, remote: &Path, cache: u64) -> PathBuf {
    let dir = root.join(name);
    Store::init(&dir, config(remote, cache)).expect("init");
    dir
}

pub fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::fill(&mut v[..]);
    v
}

/// Creates `parent/name` holding `data`, synced.
pub fn write_file(e: &LiveTree, parent: NodeId, name: &str, data: &[u8]) -> NodeId {
    let n = e.create(parent, name.as_bytes(), NodeKind::File, Attrs::default(), b"").expect("create").id;
    let blocks = data
        .chunks(BS as usize)
        .enumerate()
        .map(|(i, c)| BlockChange { index: i as u64, block: Some(e.put_block(c).expect("put")) })
        .collect();
    e.write_blocks(n, data.len() as u64, blocks).expect("write");
    e.sync().expect("sync");
    n
}

/// rsync against the local-directory remote `remote`.
pub fn rsync(remote: &Path) -> Rsync {
    Rsync::with_program(Remote::Local(remote.to_path_buf()), "rsync", "ssh")
}

/// Fetches blocks missing in `e` from the remote `rsync` reaches.
pub fn source(e: &LiveTree, rsync: Rsync) -> Arc<RemoteSource> {
    Arc::new(RemoteSource::new(Arc::new(rsync), push::staging_dir(e), Arc::new(Health::default())))
}

/// Every event in the remote's logs, checked: each block it references is
/// on the remote and decodes to its hash, of the default hash size (the
/// test data dirs keep it). Returns how many events.
pub fn remote_events_all_have_blocks(remote: &Path) -> usize {
    let log_root = remote.join("log");
    let mut n = 0;
    let machines =
        if log_root.exists() { log::list_machines(&FsStorage, &log_root).expect("machines") } else { vec![] };
    for m in machines {
        if log::list_segments(&FsStorage, &log_root, m).expect("segments").is_empty() {
            continue;
        }
        let (events, end) = log::read_events(&FsStorage, &log_root, log::log_start(m)).expect("remote log reads");
        assert_eq!(end.torn_tail, None, "the remote log never ends torn after a finished push");
        for (pos, ev) in events {
            for b in ev.change.blocks() {
                let hex = b.hash.to_hex();
                let p = remote.join("blobs").join(&hex[..2]).join(&hex);
                let stored =
                    std::fs::read(&p).unwrap_or_else(|_| panic!("event at {pos} needs {hex}, missing on the remote"));
                assert_eq!(b.hash.as_bytes().len(), engine::config::DEFAULT_HASH_SIZE);
                engine::blob::decode_blob(&stored, &b.hash).expect("remote block decodes to its hash");
            }
            n += 1;
        }
    }
    n
}
