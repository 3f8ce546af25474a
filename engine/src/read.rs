//! The read side every tree offers, the live one ([`LiveTree`]) and a
//! point-in-time view ([`PastView`]) alike: what the FUSE adapter, the CLI
//! and the tools read through.
//!
//! Always true:
//! - a read sees every change acknowledged before it (on a live tree) or
//!   exactly the state at the view's time (on a view);
//! - a block is handed out only after it was verified against its hash and
//!   its length against the log's (see [`Store`]);
//! - the walks given here ([`TreeRead::path_of`], [`TreeRead::dump_tree`],
//!   [`TreeRead::read_file`]) are built on the five queries each tree
//!   implements, so both trees answer them the same way.
//!
//! [`LiveTree`]: crate::LiveTree
//! [`PastView`]: crate::PastView

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use crate::blob::BlobStore;
use crate::cache::{BlockSource, Cache};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::event::{BlockRef, NodeKind};
use crate::ids::{BlockHash, MachineId, NodeId, Timestamp};
use crate::index::Queries;
use crate::index::{DirEntry, IndexReader};
use crate::state::{NodeState, OpenReport, Stats, TreeEntry};
use crate::storage::{ByteWindow, Storage};
use crate::store::{Layout, Store};
use crate::tree;

/// Most blocks [`TreeRead::read_file`] and [`TreeRead::read_file_block`]
/// fetch in one round trip.
pub(crate) const FETCH_BATCH: usize = 17;

/// `block` from the local store, else fetched together with `also()` (see
/// [`Store::fetch`]); its length checked against the log's.
fn read_checked(
    store: &Store,
    block: &BlockRef,
    streaming: bool,
    also: impl FnOnce() -> Vec<BlockHash>,
) -> Result<ByteWindow> {
    let data = match store.local_block(&block.hash, streaming)? {
        Some(data) => data,
        None => ByteWindow::from(store.fetch(&block.hash, also())?),
    };
    store.cache().touch(&block.hash);
    if data.len() != block.len as usize {
        return Err(Error::CorruptBlob {
            hash: block.hash,
            path: store.blobs().path_of(&block.hash),
            reason: format!("holds {} bytes, the log says {}", data.len(), block.len),
        });
    }
    Ok(data)
}

/// The reads of a tree: the live one or a point-in-time view.
pub trait TreeRead: Send + Sync {
    /// The data dir's shared parts.
    fn store(&self) -> &Store;

    /// The time a point-in-time view shows; `None` for the live tree.
    fn at(&self) -> Option<Timestamp>;

    /// What `open` found and fixed.
    fn open_report(&self) -> &OpenReport;

    /// A read snapshot of the index this tree reads (on the live tree, a
    /// pending group is committed first).
    fn index(&self) -> Result<IndexReader>;

    /// A node's state (removed nodes included, with `removed` set).
    fn node(&self, id: NodeId) -> Result<NodeState>;

    /// The node named `name` in `dir`.
    fn lookup(&self, dir: NodeId, name: &[u8]) -> Result<NodeState>;

    /// Up to `limit` entries of `dir` with names after `after`, sorted by name.
    fn read_dir(&self, dir: NodeId, after: Option<&[u8]>, limit: usize) -> Result<Vec<DirEntry>>;

    /// Stored blocks of `node` with index in `first..first+count` (holes absent).
    fn file_blocks(&self, node: NodeId, first: u64, count: u64) -> Result<Vec<(u64, BlockRef)>>;

    /// The first stored block of file `node` with index at least `from`
    /// (`None`: only holes from there on). Its cost depends on the blocks
    /// stored (and, in a point-in-time view, on their history), never on
    /// the size of a hole: `lseek(SEEK_DATA)` uses it.
    fn next_data(&self, node: NodeId, from: u64) -> Result<Option<u64>>;

    /// The first block index at least `from` that file `node` does not
    /// store (a hole, or the end of its blocks). Reads the stored blocks
    /// from `from` on a page at a time while they follow each other, so its
    /// cost is the length of that run of stored blocks: `lseek(SEEK_HOLE)`
    /// uses it.
    fn next_hole(&self, node: NodeId, from: u64) -> Result<u64> {
        const PAGE: u64 = 1024;
        let mut at = from;
        loop {
            let page = self.file_blocks(node, at, PAGE)?;
            for (i, _) in &page {
                if *i != at {
                    return Ok(at);
                }
                at += 1;
            }
            if (page.len() as u64) < PAGE || at == u64::MAX {
                return Ok(at);
            }
        }
    }

    /// A block's bytes, verified against its hash. A block missing locally
    /// is fetched from the [`BlockSource`](crate::cache::BlockSource), if
    /// one is set, verified and stored; a fetched copy that does not match
    /// its hash is refused with [`Error::CorruptBlob`] and never returned.
    fn read_block(&self, block: &BlockRef) -> Result<Vec<u8>> {
        self.read_block_window(block, false).map(ByteWindow::into_vec)
    }

    /// [`TreeRead::read_block`], handed back in the buffer it was read
    /// into. `streaming`: a block read once (ahead of a sequential reader),
    /// so read past the OS's cache where possible.
    fn read_block_window(&self, block: &BlockRef, streaming: bool) -> Result<ByteWindow> {
        read_checked(self.store(), block, streaming, Vec::new)
    }

    /// [`TreeRead::read_block_window`] of `block`, stored block `index` of
    /// file `node`. When it is not stored here, the file's next blocks that
    /// are not either (up to [`FETCH_BATCH`] in all) come in the same round
    /// trip: a reader of a file that had to wait for one block does not
    /// wait again for each of the next.
    fn read_file_block(&self, node: NodeId, index: u64, block: &BlockRef, streaming: bool) -> Result<ByteWindow> {
        read_checked(self.store(), block, streaming, || {
            let next = self.file_blocks(node, index.saturating_add(1), FETCH_BATCH as u64 - 1);
            // The next blocks are a hint: the read of each reports its own error.
            next.map(|v| v.into_iter().map(|(_, b)| b.hash).collect()).unwrap_or_default()
        })
    }

    /// Asks the prefetchers (the replication layer's background fetch,
    /// see [`Store::prefetch_requests`]) for the stored blocks of `node` in
    /// `blocks` that are not local. The caller plans what to read ahead
    /// (the mount, from the reads it sees); this only looks the range up.
    /// Nothing is asked when nobody takes prefetch requests.
    fn prefetch(&self, node: NodeId, blocks: Range<u64>) {
        let store = self.store();
        if blocks.is_empty() || !store.has_prefetchers() {
            return;
        }
        match self.file_blocks(node, blocks.start, blocks.end - blocks.start) {
            Ok(stored) => store.request_prefetch(stored.into_iter().map(|(_, b)| b.hash)),
            // A prefetch is a hint: the read itself reports the error.
            Err(e) => tracing::debug!("prefetch of {node} {blocks:?}: {e}"),
        }
    }

    /// The whole content of file `node` (holes and the tails of short
    /// blocks read as zeros), for tools and tests; the mount reads by range.
    /// Blocks not local are fetched [`FETCH_BATCH`] to a round trip.
    fn read_file(&self, node: NodeId) -> Result<Vec<u8>> {
        let size = self.node(node)?.size;
        let too_big = || Error::Invalid(format!("{node}: {size} bytes do not fit in memory"));
        let mut data = vec![0u8; usize::try_from(size).map_err(|_| too_big())?];
        let bs = self.block_size();
        let blocks = self.file_blocks(node, 0, tree::block_count(size, bs))?;
        for batch in blocks.chunks(FETCH_BATCH) {
            // Best effort: a block this could not bring is fetched (and its
            // error reported) by its own read below.
            self.store().fetch_missing(batch.iter().map(|(_, b)| b.hash));
        }
        for (i, b) in blocks {
            let bytes = self.read_block(&b)?;
            let start = usize::try_from(i.saturating_mul(bs)).map_err(|_| too_big())?;
            let end = start.saturating_add(bytes.len()).min(data.len());
            if start < end {
                data[start..end].copy_from_slice(&bytes[..end - start]);
            }
        }
        Ok(data)
    }

    /// The path of `id` from the root (`/a/b`), as it is now (or at the
    /// view's time); a removed node gives the path it had.
    fn path_of(&self, id: NodeId) -> Result<Vec<u8>> {
        let mut parts = Vec::new();
        let mut cur = id;
        while cur != NodeId::ROOT {
            let n = self.node(cur)?;
            parts.push(n.name);
            if parts.len() > 4096 {
                return Err(Error::Invalid(format!("{id}: path deeper than 4096 levels")));
            }
            cur = n.parent;
        }
        let mut path = Vec::new();
        for p in parts.iter().rev() {
            path.push(b'/');
            path.extend_from_slice(p);
        }
        if path.is_empty() {
            path.push(b'/');
        }
        Ok(path)
    }

    /// The whole tree as `(path, state, stored blocks)` in path order: for
    /// comparing trees (rebuild equivalence, replica convergence).
    fn dump_tree(&self) -> Result<Vec<TreeEntry>> {
        self.dump_subtree(NodeId::ROOT, Vec::new())
    }

    /// [`TreeRead::dump_tree`] of `node` and what lies below it, whose
    /// paths start with `path` (`node`'s own): costs that subtree only.
    fn dump_subtree(&self, node: NodeId, path: Vec<u8>) -> Result<Vec<TreeEntry>> {
        let mut out = Vec::new();
        let mut stack = vec![(path, node)];
        while let Some((path, id)) = stack.pop() {
            let node = self.node(id)?;
            let blocks = if node.kind == NodeKind::File {
                self.file_blocks(id, 0, tree::block_count(node.size, self.block_size()))?
            } else {
                Vec::new()
            };
            if node.kind == NodeKind::Dir {
                for e in self.read_dir(id, None, usize::MAX)? {
                    let mut p = path.clone();
                    p.push(b'/');
                    p.extend_from_slice(&e.name);
                    stack.push((p, e.node));
                }
            }
            out.push((path, node, blocks));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Counters for `status` and `statfs`.
    fn stats(&self) -> Result<Stats> {
        Ok(Stats::from_counts(&self.index()?.counts()?, self.config().cache_size))
    }

    /// The data dir.
    fn data_dir(&self) -> &Path {
        self.store().data_dir()
    }

    /// Paths inside the data dir.
    fn layout(&self) -> &Layout {
        self.store().layout()
    }

    /// The configuration.
    fn config(&self) -> &Config {
        self.store().config()
    }

    /// This machine.
    fn machine(&self) -> MachineId {
        self.store().machine()
    }

    /// Block size in bytes.
    fn block_size(&self) -> u64 {
        self.store().block_size()
    }

    /// The blob store.
    fn blobs(&self) -> &BlobStore {
        self.store().blobs()
    }

    /// The storage backend.
    fn storage(&self) -> &Arc<dyn Storage> {
        self.store().storage()
    }

    /// Residency bookkeeping of the bounded block cache.
    fn cache(&self) -> &Cache {
        self.store().cache()
    }

    /// Sets (or clears) where blocks missing locally are fetched from.
    fn set_block_source(&self, source: Option<Arc<dyn BlockSource>>) {
        self.store().set_block_source(source);
    }
}
