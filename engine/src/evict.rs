//! The eviction policy of the bounded local block cache: which blobs leave
//! the local store. It runs above the engine (the replication daemon, the
//! CLI, and the full-disk path a mount installs with
//! [`LiveTree::set_room_maker`](crate::LiveTree::set_room_maker)); the
//! engine only keeps the facts it decides on (`cache`).
//!
//! Always true:
//! - a blob is evicted only if it is recorded as pushed (on the remote), is
//!   not referenced by a pinned node (a node is pinned when it or any
//!   ancestor carries the pin), and its stored payload is larger than
//!   `config.small_block`; log and index data are never touched;
//! - among evictable blobs, the least recently used go first, and only as
//!   many as needed to bring the store under its limit: `config.cache_size`,
//!   or less when the disk is short of room (the store then gives up what
//!   the disk lacks to keep the data dir's reserve plus sixteen blocks
//!   free);
//!   if the blobs that must stay exceed the limit, the store stays over it
//!   and [`EvictReport::over_limit`] says so;
//! - "last use" is a tick of the cache's coarse clock (`cache`): when the
//!   blob was recorded as pushed, or last read, whichever is later.
//!
//! A pass costs what it evicts, never the size of the tree or the store: it
//! reads the store's byte counter and walks the cache's `lru` table from
//! the oldest row, asking for each candidate whether a pinned node holds
//! it (the index's `block_nodes` row of the block, then each holder's
//! ancestors, remembered for the pass; nothing at all when no node is
//! pinned), and stops once the store fits. A pinned blob it goes by is
//! marked used now, so the next pass does not walk it again soon. Pins are
//! listed from the index's `pins` table.
//!
//! [`walk_eviction`] is the whole policy as a pure function over that walk;
//! [`plan_eviction`] is the same over a list of every blob.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Mutex;

use crate::blob::HEADER_LEN;
use crate::cache::{LruEntry, LRU_PAGE};
use crate::error::{Error, Result};
use crate::ids::{BlockHash, NodeId};
use crate::index::{IndexReader, PinQueries};
use crate::read::TreeRead;
use crate::state::TreeEntry;

/// One local blob as the eviction policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    /// Its address.
    pub hash: BlockHash,
    /// Size of the blob file.
    pub stored_len: u64,
    /// Last use, on the cache's clock (larger = more recent).
    pub last_use: u64,
    /// On the remote.
    pub pushed: bool,
    /// Referenced by a pinned node.
    pub pinned: bool,
}

/// What [`walk_eviction`] decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EvictionPlan {
    /// Blobs to delete, least recently used first.
    pub victims: Vec<BlockHash>,
    /// Pinned blobs the walk went by, least recently used first.
    pub pinned: Vec<BlockHash>,
    /// Bytes of the store before.
    pub before: u64,
    /// Bytes of the store once the victims are gone.
    pub after: u64,
    /// Bytes that may not be evicted because they are not pushed yet.
    pub unpushed: u64,
}

/// Whether a blob of `stored_len` bytes is too small to evict.
fn small(stored_len: u64, small_block: u64) -> bool {
    stored_len.saturating_sub(HEADER_LEN as u64) <= small_block
}

/// The eviction policy as a walk: given the store's bytes (`before`, of
/// which `unpushed` not on the remote) and its pushed blobs least recently
/// used first (`lru`, read lazily), deletes the oldest that are neither
/// small nor pinned (`pinned` is asked only about those) until the store
/// fits in `limit` (see the module docs for the rules). It reads no
/// further than it must.
pub fn walk_eviction<E>(
    before: u64,
    unpushed: u64,
    limit: u64,
    small_block: u64,
    lru: impl IntoIterator<Item = std::result::Result<LruEntry, E>>,
    mut pinned: impl FnMut(&BlockHash) -> std::result::Result<bool, E>,
) -> std::result::Result<EvictionPlan, E> {
    let mut plan = EvictionPlan { before, after: before, unpushed, ..EvictionPlan::default() };
    if before <= limit {
        return Ok(plan);
    }
    for e in lru {
        let e = e?;
        if small(e.stored_len, small_block) {
            continue;
        }
        if pinned(&e.hash)? {
            plan.pinned.push(e.hash);
            continue;
        }
        plan.after = plan.after.saturating_sub(e.stored_len);
        plan.victims.push(e.hash);
        if plan.after <= limit {
            break;
        }
    }
    Ok(plan)
}

/// The eviction policy over a list of every local blob: which of `entries`
/// to delete so the store fits in `limit` bytes ([`walk_eviction`] over
/// the pushed ones, least recently used first).
pub fn plan_eviction(entries: &[CacheEntry], limit: u64, small_block: u64) -> EvictionPlan {
    let before: u64 = entries.iter().map(|e| e.stored_len).sum();
    let unpushed = entries.iter().filter(|e| !e.pushed).map(|e| e.stored_len).sum();
    let mut pushed: Vec<&CacheEntry> = entries.iter().filter(|e| e.pushed).collect();
    pushed.sort_by_key(|e| (e.last_use, e.hash));
    let pinned: HashMap<BlockHash, bool> = pushed.iter().map(|e| (e.hash, e.pinned)).collect();
    let lru = pushed
        .iter()
        .map(|e| Ok::<_, Infallible>(LruEntry { hash: e.hash, stored_len: e.stored_len, last_use: e.last_use }));
    match walk_eviction(before, unpushed, limit, small_block, lru, |h| Ok(pinned.get(h).copied().unwrap_or(false))) {
        Ok(plan) => plan,
        Err(never) => match never {},
    }
}

/// What one eviction pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EvictReport {
    /// Blobs deleted.
    pub evicted: u64,
    /// Bytes of the store before.
    pub before: u64,
    /// Bytes of the store after.
    pub after: u64,
    /// Bytes not yet pushed (never evicted).
    pub unpushed: u64,
    /// The limit this pass evicted down to: `cache_size`, or less when the
    /// disk was short of room.
    pub limit: u64,
    /// The store is still over the limit (what must stay exceeds it).
    pub over_limit: bool,
    /// The disk was short of room before this pass.
    pub short_of_room: bool,
}

/// Answers "is this block held by a pinned node" for one pass, at a cost
/// per block asked: its `block_nodes` rows, then each holder's ancestors
/// (remembered for the pass). Opens the index only when first asked.
struct PinCheck<'a, T: ?Sized> {
    engine: &'a T,
    index: Option<IndexReader>,
    /// Whether any node is pinned (asked once).
    any: Option<bool>,
    /// Nodes already walked: whether each is pinned (itself or above).
    seen: HashMap<NodeId, bool>,
}

impl<'a, T: TreeRead + ?Sized> PinCheck<'a, T> {
    fn new(engine: &'a T) -> Self {
        PinCheck { engine, index: None, any: None, seen: HashMap::new() }
    }

    fn index(&mut self) -> Result<&IndexReader> {
        if self.index.is_none() {
            self.index = Some(self.engine.index()?);
        }
        self.index.as_ref().ok_or_else(|| Error::Invalid("internal: index snapshot not opened".into()))
    }

    fn pinned(&mut self, hash: &BlockHash) -> Result<bool> {
        if self.any.is_none() {
            let any = self.index()?.has_pins()?;
            self.any = Some(any);
        }
        if self.any != Some(true) {
            return Ok(false);
        }
        for node in self.index()?.nodes_of_block(hash)? {
            if self.node_pinned(node)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether `node` is live and it or an ancestor carries a pin.
    fn node_pinned(&mut self, node: NodeId) -> Result<bool> {
        let mut walked = Vec::new();
        let mut cur = node;
        let answer = loop {
            if let Some(&known) = self.seen.get(&cur) {
                break known;
            }
            let Some(rec) = self.index()?.node(cur)? else { break false };
            walked.push(cur);
            if rec.removed {
                break false;
            }
            if rec.pinned {
                break true;
            }
            if cur == NodeId::ROOT || walked.len() > 4096 {
                break false;
            }
            cur = rec.parent;
        };
        for n in walked {
            self.seen.insert(n, answer);
        }
        Ok(answer)
    }
}

/// The cache's `lru` table, least recently used first, read a page at a
/// time as the walk asks.
fn lru_rows<T: TreeRead + ?Sized>(engine: &T) -> impl Iterator<Item = Result<LruEntry>> + '_ {
    let mut page: std::vec::IntoIter<LruEntry> = Vec::new().into_iter();
    let mut last: Option<LruEntry> = None;
    let mut done = false;
    std::iter::from_fn(move || {
        if let Some(e) = page.next() {
            last = Some(e);
            return Some(Ok(e));
        }
        if done {
            return None;
        }
        match engine.cache().oldest(last.as_ref(), LRU_PAGE) {
            Err(e) => {
                done = true;
                Some(Err(e))
            }
            Ok(rows) => {
                done = rows.len() < LRU_PAGE;
                page = rows.into_iter();
                let e = page.next()?;
                last = Some(e);
                Some(Ok(e))
            }
        }
    })
}

/// Every local blob with its size, last use, pushed and pinned state: a
/// listing of the whole store, for diagnostics and tests (a pass never
/// needs it).
pub fn entries<T: TreeRead + ?Sized>(engine: &T) -> Result<Vec<CacheEntry>> {
    let mut pins = PinCheck::new(engine);
    let blobs = engine.blobs();
    let mut out = Vec::new();
    for hash in blobs.list()? {
        let stored_len = match blobs.stored_len(&hash) {
            Ok(n) => n,
            // Removed meanwhile (another eviction pass).
            Err(Error::MissingBlob(_)) => continue,
            Err(e) => return Err(e),
        };
        let resident = engine.cache().resident(&hash)?;
        out.push(CacheEntry {
            hash,
            stored_len,
            last_use: resident.map_or(0, |(_, t)| t),
            pushed: engine.cache().is_pushed(&hash),
            pinned: pins.pinned(&hash)?,
        });
    }
    Ok(out)
}

/// Nodes carrying a pin, with their paths, by path.
pub fn pinned_nodes<T: TreeRead + ?Sized>(engine: &T) -> Result<Vec<(NodeId, Vec<u8>)>> {
    let mut out = Vec::new();
    for id in engine.index()?.pinned_nodes()? {
        out.push((id, engine.path_of(id)?));
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// Nodes carrying a pin, by path.
pub fn pins<T: TreeRead + ?Sized>(engine: &T) -> Result<Vec<Vec<u8>>> {
    Ok(pinned_nodes(engine)?.into_iter().map(|(_, p)| p).collect())
}

/// `node` and everything below it as `(path, state, stored blocks)`, in
/// path order (what `syncer pin` fetches): costs that subtree, not the tree.
pub fn files_under<T: TreeRead + ?Sized>(engine: &T, node: NodeId) -> Result<Vec<TreeEntry>> {
    // The root's own path is empty in a dump, so that its children's are `/name`.
    let path = if node == NodeId::ROOT { Vec::new() } else { engine.path_of(node)? };
    engine.dump_subtree(node, path)
}

/// Files that are pinned or lie under a pinned directory, with their
/// blocks: the subtrees of the pins.
pub fn pinned_files<T: TreeRead + ?Sized>(engine: &T) -> Result<Vec<TreeEntry>> {
    let mut out: Vec<TreeEntry> = Vec::new();
    for (id, _) in pinned_nodes(engine)? {
        out.extend(files_under(engine, id)?);
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    Ok(out)
}

/// One eviction pass down to `config.cache_size` (or less when the disk is
/// short of room): deletes the blobs [`walk_eviction`] picks.
pub fn evict<T: TreeRead + ?Sized>(engine: &T) -> Result<EvictReport> {
    pass(engine, engine.config().cache_size, true).map(|(r, _)| r)
}

/// One eviction pass down to `limit` bytes (or less when the disk is short
/// of room).
pub fn evict_to<T: TreeRead + ?Sized>(engine: &T, limit: u64) -> Result<(EvictReport, EvictionPlan)> {
    pass(engine, limit, true)
}

/// What a pass down to `limit` would do, without deleting anything (it
/// costs what the pass would: `status` asks it).
pub fn plan<T: TreeRead + ?Sized>(engine: &T, limit: u64) -> Result<EvictionPlan> {
    pass(engine, limit, false).map(|(_, p)| p)
}

/// Most rows of the LRU one round of an eviction pass walks: a pass that
/// evicts much (`evict --size 0` of a million blocks) goes in rounds, each
/// deleting and recording what it evicted before the next, so its memory
/// stays bounded whatever it evicts. Variable only so that tests can make
/// rounds tiny ([`set_round_rows`]).
static ROUND_ROWS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(16_384);

/// Sets how many LRU rows one round of an eviction pass walks (at least
/// 1). For tests: any value evicts the same blocks.
#[doc(hidden)]
pub fn set_round_rows(rows: usize) {
    ROUND_ROWS.store(rows.max(1), std::sync::atomic::Ordering::Relaxed);
}

/// A pass down to `size`: rounds of [`ROUND_ROWS`] rows when it deletes
/// (each round sees what the one before deleted), until the store fits or
/// a round makes no progress. The plan returned is the last round's, with
/// `before` the first round's; `victims` and `pinned` are the last round's.
fn pass<T: TreeRead + ?Sized>(engine: &T, size: u64, delete: bool) -> Result<(EvictReport, EvictionPlan)> {
    if !delete {
        return round(engine, size, false, usize::MAX).map(|(r, p, _)| (r, p));
    }
    let rows = ROUND_ROWS.load(std::sync::atomic::Ordering::Relaxed);
    let (mut report, mut plan, mut cut_short) = round(engine, size, true, rows)?;
    let before = plan.before;
    while cut_short && plan.after > report.limit && (report.evicted > 0 || !plan.pinned.is_empty()) {
        let evicted = report.evicted;
        let (r, p, c) = round(engine, size, true, rows)?;
        (report, plan, cut_short) = (r, p, c);
        report.evicted += evicted;
    }
    report.before = before;
    plan.before = before;
    Ok((report, plan))
}

/// One round of a pass: walks at most `rows` rows of the LRU; also returns
/// whether it stopped there (more rows might have been walked).
fn round<T: TreeRead + ?Sized>(
    engine: &T,
    size: u64,
    delete: bool,
    rows: usize,
) -> Result<(EvictReport, EvictionPlan, bool)> {
    let cfg = engine.config();
    let cache = engine.cache();
    cache.flush(false)?;
    let counts = cache.counts();
    let room = room_limit(engine, counts.store_bytes);
    let limit = size.min(room);
    let unpushed = counts.store_bytes.saturating_sub(counts.resident_bytes);
    let mut pins = PinCheck::new(engine);
    let mut walked: HashMap<BlockHash, LruEntry> = HashMap::new();
    let lru = lru_rows(engine).take(rows).inspect(|r| {
        if let Ok(e) = r {
            walked.insert(e.hash, *e);
        }
    });
    let plan = walk_eviction(counts.store_bytes, unpushed, limit, cfg.small_block, lru, |h| pins.pinned(h))?;
    let cut_short = walked.len() >= rows;
    let mut evicted = 0;
    if delete {
        let mut gone = Vec::with_capacity(plan.victims.len());
        let mut failed = None;
        for h in &plan.victims {
            match engine.blobs().remove(h) {
                Ok(existed) => {
                    evicted += u64::from(existed);
                    gone.extend(walked.get(h).copied());
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let used: Vec<LruEntry> = plan.pinned.iter().filter_map(|h| walked.get(h).copied()).collect();
        cache.evicted(&gone, &used)?;
        if let Some(e) = failed {
            return Err(e);
        }
    }
    let report = EvictReport {
        evicted,
        before: plan.before,
        after: plan.after,
        unpushed: plan.unpushed,
        limit,
        over_limit: plan.after > limit,
        short_of_room: room != u64::MAX,
    };
    Ok((report, plan, cut_short))
}

/// The most the store may hold so that the disk keeps the data dir's
/// reserve plus sixteen blocks free (room for the writers at work): what
/// it holds (`held`) less what the disk lacks (no limit while the disk has
/// that room, or cannot tell).
fn room_limit<T: TreeRead + ?Sized>(engine: &T, held: u64) -> u64 {
    let cfg = engine.config();
    let Some((free, total)) = crate::blob::disk_space(&engine.layout().blobs()) else { return u64::MAX };
    let want = crate::blob::reserve_on(cfg.reserve, total).saturating_add(cfg.block_size.saturating_mul(16));
    if free >= want {
        return u64::MAX;
    }
    held.saturating_sub(want - free)
}

/// The full-disk path: one eviction pass, which gives up pushed blocks
/// while the disk is short of room; one at a time (the writers that found
/// the disk full at once wait for it, then find the room it made). Returns
/// whether the disk has room now or the pass made some. A mount installs
/// it with [`LiveTree::set_room_maker`](crate::LiveTree::set_room_maker).
pub fn make_room<T: TreeRead + ?Sized>(tree: &T) -> Result<bool> {
    static EVICTING: Mutex<()> = Mutex::new(());
    let _one = EVICTING.lock().unwrap_or_else(|e| e.into_inner());
    let r = evict(tree)?;
    if r.evicted > 0 {
        tracing::info!(evicted = r.evicted, after = r.after, "the disk was full: evicted pushed blocks to make room");
    }
    Ok(r.evicted > 0 || !r.short_of_room)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn h(i: u8) -> BlockHash {
        BlockHash::of(&[i], 32)
    }

    fn entry(i: u8, len: u64, last_use: u64, pushed: bool, pinned: bool) -> CacheEntry {
        CacheEntry { hash: h(i), stored_len: len, last_use, pushed, pinned }
    }

    #[test]
    fn evicts_least_recently_used_pushed_blocks_only() {
        let e = [
            entry(1, 1000, 5, true, false),
            entry(2, 1000, 1, false, false),
            entry(3, 1000, 2, true, true),
            entry(4, 1000, 3, true, false),
            entry(5, 20, 0, true, false),
        ];
        let p = plan_eviction(&e, 2500, 100);
        assert_eq!(p.victims, vec![h(4), h(1)]);
        assert_eq!(p.after, 2020);
        assert_eq!(p.unpushed, 1000);
    }

    #[test]
    fn under_the_limit_nothing_goes() {
        let e = [entry(1, 1000, 5, true, false)];
        assert!(plan_eviction(&e, 1000, 0).victims.is_empty());
    }

    proptest! {
        #[test]
        fn plan_obeys_the_rules(
            spec in proptest::collection::vec((1u64..5000, 0u64..100, any::<bool>(), any::<bool>()), 0..60),
            limit in 0u64..100_000,
            small in 0u64..2000,
        ) {
            let e: Vec<CacheEntry> = spec.iter().enumerate()
                .map(|(i, &(len, lu, pushed, pinned))| CacheEntry {
                    hash: BlockHash::of(&(i as u64).to_le_bytes(), 32), stored_len: len, last_use: lu, pushed, pinned,
                })
                .collect();
            let p = plan_eviction(&e, limit, small);
            let by_hash: HashMap<BlockHash, &CacheEntry> = e.iter().map(|c| (c.hash, c)).collect();
            let mut freed = 0;
            for v in &p.victims {
                let c = by_hash[v];
                prop_assert!(c.pushed && !c.pinned && c.stored_len - (HEADER_LEN as u64).min(c.stored_len) > small);
                freed += c.stored_len;
            }
            prop_assert_eq!(p.after, p.before - freed);
            // Never more than needed: without the last victim it would not fit.
            if let Some(last) = p.victims.last() {
                prop_assert!(p.after + by_hash[last].stored_len > limit);
            }
            // If still over, nothing evictable is left.
            if p.after > limit {
                let left = e.iter().filter(|c| !p.victims.contains(&c.hash))
                    .any(|c| c.pushed && !c.pinned && c.stored_len.saturating_sub(HEADER_LEN as u64) > small);
                prop_assert!(!left);
            }
        }
    }
}
