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
//! - "last use" is the later of the blob file's mtime (written or fetched)
//!   and the last read by this process.
//!
//! [`plan_eviction`] is the whole policy as a pure function.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use crate::blob::HEADER_LEN;
use crate::error::{Error, Result};
use crate::ids::BlockHash;
use crate::read::TreeRead;
use crate::state::TreeEntry;

/// One local blob as the eviction policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    /// Its address.
    pub hash: BlockHash,
    /// Size of the blob file.
    pub stored_len: u64,
    /// Last use, in seconds since the epoch (larger = more recent).
    pub last_use: u64,
    /// On the remote.
    pub pushed: bool,
    /// Referenced by a pinned node.
    pub pinned: bool,
}

/// What [`plan_eviction`] decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EvictionPlan {
    /// Blobs to delete, least recently used first.
    pub victims: Vec<BlockHash>,
    /// Bytes of the store before.
    pub before: u64,
    /// Bytes of the store once the victims are gone.
    pub after: u64,
    /// Bytes that may not be evicted because they are not pushed yet.
    pub unpushed: u64,
}

/// The eviction policy: which of `entries` to delete so the store fits in
/// `limit` bytes (see the module docs for the rules).
pub fn plan_eviction(entries: &[CacheEntry], limit: u64, small_block: u64) -> EvictionPlan {
    let before: u64 = entries.iter().map(|e| e.stored_len).sum();
    let unpushed = entries.iter().filter(|e| !e.pushed).map(|e| e.stored_len).sum();
    let mut plan = EvictionPlan { victims: Vec::new(), before, after: before, unpushed };
    if before <= limit {
        return plan;
    }
    let mut candidates: Vec<&CacheEntry> = entries
        .iter()
        .filter(|e| e.pushed && !e.pinned && e.stored_len.saturating_sub(HEADER_LEN as u64) > small_block)
        .collect();
    candidates.sort_by_key(|e| (e.last_use, e.hash));
    for e in candidates {
        if plan.after <= limit {
            break;
        }
        plan.after -= e.stored_len;
        plan.victims.push(e.hash);
    }
    plan
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

/// Every local blob with its size, last use, pushed and pinned state.
pub fn entries<T: TreeRead + ?Sized>(engine: &T) -> Result<Vec<CacheEntry>> {
    let pinned = pinned_blocks(engine)?;
    let blobs = engine.blobs();
    let mut out = Vec::new();
    for hash in blobs.list()? {
        let path = blobs.path_of(&hash);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            // Removed meanwhile (another eviction pass).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("stat", path, e)),
        };
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
        out.push(CacheEntry {
            hash,
            stored_len: meta.len(),
            last_use: engine.cache().last_read(&hash).map_or(mtime, |r| r.max(mtime)),
            pushed: engine.cache().is_pushed(&hash),
            pinned: pinned.contains(&hash),
        });
    }
    Ok(out)
}

/// Blocks of every file that is pinned or lies under a pinned directory.
pub(crate) fn pinned_blocks<T: TreeRead + ?Sized>(engine: &T) -> Result<HashSet<BlockHash>> {
    let mut out = HashSet::new();
    for (_, _, blocks) in pinned_files(engine)? {
        out.extend(blocks.iter().map(|(_, b)| b.hash));
    }
    Ok(out)
}

/// Files that are pinned or lie under a pinned directory, with their blocks.
pub fn pinned_files<T: TreeRead + ?Sized>(engine: &T) -> Result<Vec<TreeEntry>> {
    let tree = engine.dump_tree()?;
    let pinned_dirs: Vec<Vec<u8>> = tree.iter().filter(|(_, n, _)| n.pinned).map(|(p, _, _)| p.clone()).collect();
    let under = |p: &[u8]| {
        pinned_dirs
            .iter()
            .any(|d| p == d.as_slice() || d.as_slice() == b"/" || (p.starts_with(d) && p.get(d.len()) == Some(&b'/')))
    };
    Ok(tree.into_iter().filter(|(p, n, _)| n.pinned || under(p)).collect())
}

/// Nodes carrying a pin, by path.
pub fn pins<T: TreeRead + ?Sized>(engine: &T) -> Result<Vec<Vec<u8>>> {
    Ok(engine.dump_tree()?.into_iter().filter(|(_, n, _)| n.pinned).map(|(p, _, _)| p).collect())
}

/// One eviction pass: deletes the blobs [`plan_eviction`] picks.
pub fn evict<T: TreeRead + ?Sized>(engine: &T) -> Result<EvictReport> {
    let cfg = engine.config();
    let entries = entries(engine)?;
    let room = room_limit(engine, &entries);
    let limit = cfg.cache_size.min(room);
    let plan = plan_eviction(&entries, limit, cfg.small_block);
    let mut evicted = 0;
    for h in &plan.victims {
        if engine.blobs().remove(h)? {
            evicted += 1;
        }
    }
    Ok(EvictReport {
        evicted,
        before: plan.before,
        after: plan.after,
        unpushed: plan.unpushed,
        limit,
        over_limit: plan.after > limit,
        short_of_room: room != u64::MAX,
    })
}

/// The most the store may hold so that the disk keeps the data dir's
/// reserve plus sixteen blocks free (room for the writers at work): what
/// it holds less what the disk lacks (no limit while the disk has that
/// room, or cannot tell).
fn room_limit<T: TreeRead + ?Sized>(engine: &T, entries: &[CacheEntry]) -> u64 {
    let cfg = engine.config();
    let Some((free, total)) = crate::blob::disk_space(&engine.layout().blobs()) else { return u64::MAX };
    let want = crate::blob::reserve_on(cfg.reserve, total).saturating_add(cfg.block_size.saturating_mul(16));
    if free >= want {
        return u64::MAX;
    }
    let held: u64 = entries.iter().map(|e| e.stored_len).sum();
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
