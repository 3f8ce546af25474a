//! The inode table: FUSE inode numbers (u64) for engine node ids (u128).
//!
//! Always true:
//! - inode 1 is [`NodeId::ROOT`] and is never dropped;
//! - other numbers are handed out from a counter (2, 3, ...) and never
//!   reused within one mount, so the generation is always 0;
//! - an entry lives while the kernel holds lookups on it (lookup, create,
//!   readdirplus each add one; forget subtracts) or it has open handles; at
//!   zero of both it is dropped, so memory does not grow with every file ever
//!   seen; past the mount's inode budget the least recently used names are
//!   invalidated (`crate::trim_inodes`), so the kernel forgets them too;
//! - numbers at or above [`SYNTHETIC_BASE`] are never in the table: they are
//!   only reported as `d_ino` by plain `readdir` for entries the kernel has
//!   not looked up;
//! - each entry lists every name (parent inode, name) under which the kernel
//!   may hold a dentry for it: each reply that hands out an entry adds one, a
//!   local rename moves one. The list may hold names the kernel has already
//!   dropped (an unlink, an expired entry), never miss one it holds, so
//!   checking the list after an import finds every dentry the import made
//!   stale (`crate::spawn_invalidator`).
//!
//! One mutex guards both maps; it is held only for hash-map operations, never
//! across engine calls.

use std::collections::HashMap;

use engine::ids::NodeId;
use fuser::Errno;
use parking_lot::Mutex;

/// First inode number used for `d_ino` of entries not in the table.
pub(crate) const SYNTHETIC_BASE: u64 = 1 << 63;

/// A name under which the kernel may hold a dentry: (parent inode, name).
pub(crate) type Dentry = (u64, Box<[u8]>);

#[derive(Debug)]
struct Entry {
    node: NodeId,
    lookups: u64,
    opens: u64,
    /// The table's clock at the last lookup that handed this entry out.
    used: u64,
    /// Short: nodes have one parent, so a second name exists only between
    /// an import that moved the node and the invalidation that follows.
    names: Vec<Dentry>,
}

impl Entry {
    fn add_name(&mut self, parent: u64, name: &[u8]) {
        if !self.names.iter().any(|(p, n)| *p == parent && **n == *name) {
            self.names.push((parent, name.into()));
        }
    }

    fn remove_name(&mut self, parent: u64, name: &[u8]) {
        self.names.retain(|(p, n)| !(*p == parent && **n == *name));
    }
}

#[derive(Debug)]
struct Table {
    by_ino: HashMap<u64, Entry>,
    by_node: HashMap<NodeId, u64>,
    next: u64,
    /// Counts lookups (orders entries by last use).
    clock: u64,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Inodes {
    inner: Mutex<Table>,
}

impl Inodes {
    pub(crate) fn new() -> Self {
        let mut by_ino = HashMap::new();
        let mut by_node = HashMap::new();
        by_ino.insert(1, Entry { node: NodeId::ROOT, lookups: 1, opens: 0, used: 0, names: Vec::new() });
        by_node.insert(NodeId::ROOT, 1);
        Inodes { inner: Mutex::new(Table { by_ino, by_node, next: 2, clock: 0 }) }
    }

    /// The node behind `ino`; `ESTALE` if the kernel names one we dropped.
    pub(crate) fn node(&self, ino: u64) -> Result<NodeId, Errno> {
        if ino == 1 {
            return Ok(NodeId::ROOT);
        }
        self.inner.lock().by_ino.get(&ino).map(|e| e.node).ok_or_else(|| Errno::from_i32(libc::ESTALE))
    }

    /// The inode of `node`, adding one kernel lookup (allocating if new),
    /// handed to the kernel as `name` in the directory `parent` (an inode).
    pub(crate) fn remember(&self, node: NodeId, parent: u64, name: &[u8]) -> u64 {
        let mut t = self.inner.lock();
        t.clock += 1;
        let used = t.clock;
        if let Some(&ino) = t.by_node.get(&node) {
            if let Some(e) = t.by_ino.get_mut(&ino) {
                e.lookups += 1;
                e.used = used;
                e.add_name(parent, name);
            }
            return ino;
        }
        let ino = t.next;
        t.next += 1;
        t.by_ino.insert(ino, Entry { node, lookups: 1, opens: 0, used, names: vec![(parent, name.into())] });
        t.by_node.insert(node, ino);
        ino
    }

    /// A local rename moved the kernel's dentry of `node` from `from` to
    /// `to` (the kernel moves its own dentry; this keeps the list in step).
    pub(crate) fn renamed(&self, node: NodeId, from: (u64, &[u8]), to: (u64, &[u8])) {
        let mut t = self.inner.lock();
        let Some(&ino) = t.by_node.get(&node) else { return };
        if let Some(e) = t.by_ino.get_mut(&ino) {
            e.remove_name(from.0, from.1);
            e.add_name(to.0, to.1);
        }
    }

    /// Every entry's inode, node and names (root excluded, as it has none).
    pub(crate) fn dentries(&self) -> Vec<(u64, NodeId, Vec<Dentry>)> {
        let t = self.inner.lock();
        t.by_ino.iter().filter(|(_, e)| !e.names.is_empty()).map(|(ino, e)| (*ino, e.node, e.names.clone())).collect()
    }

    /// The kernel was told to drop `name` of `ino`.
    pub(crate) fn drop_name(&self, ino: u64, name: &Dentry) {
        if let Some(e) = self.inner.lock().by_ino.get_mut(&ino) {
            e.remove_name(name.0, &name.1);
        }
    }

    /// The inode of `node` if the table has one (no lookup added).
    pub(crate) fn peek(&self, node: NodeId) -> Option<u64> {
        if node == NodeId::ROOT {
            return Some(1);
        }
        self.inner.lock().by_node.get(&node).copied()
    }

    /// An inode number to report as `d_ino` without adding a lookup: the
    /// real one if known, else a synthetic one that cannot collide with the
    /// table's.
    pub(crate) fn d_ino(&self, node: NodeId) -> u64 {
        self.peek(node).unwrap_or_else(|| {
            let folded = (node.0 >> 64) as u64 ^ (node.0 as u64).rotate_left(29);
            SYNTHETIC_BASE | folded
        })
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub(crate) fn forget(&self, ino: u64, n: u64) {
        if ino == 1 {
            return;
        }
        let mut t = self.inner.lock();
        let drop_it = match t.by_ino.get_mut(&ino) {
            Some(e) => {
                e.lookups = e.lookups.saturating_sub(n);
                e.lookups == 0 && e.opens == 0
            }
            None => false,
        };
        if drop_it {
            Self::remove(&mut t, ino);
        }
    }

    /// A handle was opened on `ino`.
    pub(crate) fn open(&self, ino: u64) {
        if let Some(e) = self.inner.lock().by_ino.get_mut(&ino) {
            e.opens += 1;
        }
    }

    /// A handle on `ino` was released.
    pub(crate) fn close(&self, ino: u64) {
        if ino == 1 {
            return;
        }
        let mut t = self.inner.lock();
        let drop_it = match t.by_ino.get_mut(&ino) {
            Some(e) => {
                e.opens = e.opens.saturating_sub(1);
                e.lookups == 0 && e.opens == 0
            }
            None => false,
        };
        if drop_it {
            Self::remove(&mut t, ino);
        }
    }

    fn remove(t: &mut Table, ino: u64) {
        if let Some(e) = t.by_ino.remove(&ino) {
            if t.by_node.get(&e.node) == Some(&ino) {
                t.by_node.remove(&e.node);
            }
        }
    }

    /// When the table holds more than `budget` entries: the names of the
    /// least recently used entries without open handles, enough of them to
    /// bring it down to nine tenths of `budget` once the kernel forgets
    /// them (none otherwise).
    pub(crate) fn least_recently_used(&self, budget: usize) -> Vec<(u64, Vec<Dentry>)> {
        let t = self.inner.lock();
        let over = t.by_ino.len().saturating_sub(budget);
        if over == 0 {
            return Vec::new();
        }
        let want = over + budget / 10;
        let mut candidates: Vec<(u64, u64)> = t
            .by_ino
            .iter()
            .filter(|(ino, e)| **ino != 1 && e.opens == 0 && !e.names.is_empty())
            .map(|(ino, e)| (e.used, *ino))
            .collect();
        if candidates.len() > want {
            candidates.select_nth_unstable(want);
            candidates.truncate(want);
        }
        candidates.iter().filter_map(|(_, ino)| t.by_ino.get(ino).map(|e| (*ino, e.names.clone()))).collect()
    }

    /// Every inode in the table (root included).
    pub(crate) fn all(&self) -> Vec<u64> {
        self.inner.lock().by_ino.keys().copied().collect()
    }

    /// Number of entries (root included); for tests and stats.
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().by_ino.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_budget_the_least_recently_used_unopened_go_first() {
        let t = Inodes::new();
        let inos: Vec<u64> = (0..20u64)
            .map(|i| t.remember(NodeId::new(i + 1, engine::ids::MachineId(7)), 1, format!("n{i}").as_bytes()))
            .collect();
        // Within the budget (root included): nothing.
        assert!(t.least_recently_used(21).is_empty());
        // The oldest is open: it stays; the next oldest go instead.
        t.open(inos[0]);
        // Used again: now the most recent.
        t.remember(NodeId::new(2, engine::ids::MachineId(7)), 1, b"n1");
        let victims = t.least_recently_used(10);
        // 21 entries, budget 10: 11 over, plus a tenth of the budget.
        assert_eq!(victims.len(), 12);
        let gone: Vec<u64> = victims.iter().map(|(ino, _)| *ino).collect();
        assert!(!gone.contains(&inos[0]) && !gone.contains(&inos[1]) && !gone.contains(&1));
        assert_eq!(gone.iter().copied().max(), Some(inos[13]));
        assert!(victims.iter().all(|(ino, names)| names.len() == 1 && names[0].0 == 1 && inos.contains(ino)));
    }

    #[test]
    fn lookups_and_forget() {
        let t = Inodes::new();
        let a = NodeId(10 << 64 | 3);
        let ino = t.remember(a, 1, b"a");
        assert_eq!(ino, 2);
        assert_eq!(t.remember(a, 1, b"a"), 2);
        assert_eq!(t.node(2), Ok(a));
        t.forget(2, 1);
        assert_eq!(t.node(2), Ok(a));
        t.forget(2, 1);
        assert!(t.node(2).is_err());
        assert_eq!(t.len(), 1);
        // A new lookup gets a fresh number, never a reused one.
        assert_eq!(t.remember(a, 1, b"a"), 3);
    }

    #[test]
    fn names_follow_lookups_and_renames() {
        let t = Inodes::new();
        let a = NodeId(13 << 64 | 3);
        let ino = t.remember(a, 1, b"x");
        assert_eq!(t.remember(a, 1, b"x"), ino);
        let names = |t: &Inodes| t.dentries().into_iter().map(|(_, _, n)| n).collect::<Vec<_>>();
        assert_eq!(names(&t), vec![vec![(1, b"x".to_vec().into_boxed_slice())]]);
        t.renamed(a, (1, b"x"), (7, b"y"));
        assert_eq!(names(&t), vec![vec![(7, b"y".to_vec().into_boxed_slice())]]);
        // A second name (a lookup after an import moved it) is kept beside the first.
        t.remember(a, 1, b"z");
        assert_eq!(names(&t)[0].len(), 2);
        t.drop_name(ino, &(7, b"y".to_vec().into_boxed_slice()));
        assert_eq!(names(&t), vec![vec![(1, b"z".to_vec().into_boxed_slice())]]);
        // A rename of a node the kernel never looked up is a no-op.
        t.renamed(NodeId(99), (1, b"q"), (1, b"r"));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn open_handles_keep_entries() {
        let t = Inodes::new();
        let a = NodeId(11 << 64 | 3);
        let ino = t.remember(a, 1, b"a");
        t.open(ino);
        t.forget(ino, 1);
        assert_eq!(t.node(ino), Ok(a));
        t.close(ino);
        assert!(t.node(ino).is_err());
    }

    #[test]
    fn root_is_permanent_and_synthetic_inos_do_not_collide() {
        let t = Inodes::new();
        t.forget(1, 100);
        assert_eq!(t.node(1), Ok(NodeId::ROOT));
        let b = NodeId(12 << 64 | 3);
        assert!(t.d_ino(b) >= SYNTHETIC_BASE);
        let ino = t.remember(b, 1, b"b");
        assert_eq!(t.d_ino(b), ino);
    }
}
