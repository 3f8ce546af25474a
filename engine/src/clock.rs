//! Vector clocks: one counter per machine that has changed a node.
//!
//! Always true: entries are sorted by machine id, no machine appears twice,
//! and no counter is zero (a missing entry means zero). So two equal clocks
//! have equal encodings, and comparison is a single merge walk.

use crate::ids::MachineId;
use std::cmp::Ordering;

/// A node's vector clock after a change.
#[derive(Clone, PartialEq, Eq, Hash, Default, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct VectorClock {
    entries: Vec<(MachineId, u64)>,
}

/// How two clocks relate.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Causality {
    /// Same clock.
    Equal,
    /// The left clock happened before the right one.
    Before,
    /// The left clock happened after the right one.
    After,
    /// Neither saw the other.
    Concurrent,
}

impl VectorClock {
    /// The empty clock (no changes seen).
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a clock from any entries; zero counters are dropped and a
    /// machine named twice keeps its highest counter.
    pub fn from_entries(entries: impl IntoIterator<Item = (MachineId, u64)>) -> Self {
        let mut c = VectorClock::new();
        for (m, n) in entries {
            if n > c.get(m) {
                c.set(m, n);
            }
        }
        c
    }

    /// Whether the entries satisfy the invariants in the module docs (a
    /// decoded clock from disk or a peer is checked with this).
    pub fn is_canonical(&self) -> bool {
        self.entries.windows(2).all(|w| w[0].0 < w[1].0) && self.entries.iter().all(|e| e.1 != 0)
    }

    /// The counter of `machine` (zero if absent).
    pub fn get(&self, machine: MachineId) -> u64 {
        match self.entries.binary_search_by_key(&machine, |e| e.0) {
            Ok(i) => self.entries[i].1,
            Err(_) => 0,
        }
    }

    fn set(&mut self, machine: MachineId, n: u64) {
        match self.entries.binary_search_by_key(&machine, |e| e.0) {
            Ok(i) if n == 0 => {
                self.entries.remove(i);
            }
            Ok(i) => self.entries[i].1 = n,
            Err(_) if n == 0 => {}
            Err(i) => self.entries.insert(i, (machine, n)),
        }
    }

    /// Counts one more change by `machine`.
    pub fn tick(&mut self, machine: MachineId) {
        let n = self.get(machine).saturating_add(1);
        self.set(machine, n);
    }

    /// The least clock that is at or after both.
    pub fn join(&self, other: &VectorClock) -> VectorClock {
        VectorClock::from_entries(self.entries.iter().chain(other.entries.iter()).copied())
    }

    /// The entries, sorted by machine.
    pub fn entries(&self) -> &[(MachineId, u64)] {
        &self.entries
    }

    /// Compares causally.
    pub fn compare(&self, other: &VectorClock) -> Causality {
        let (mut less, mut greater) = (false, false);
        let (mut a, mut b) = (self.entries.iter().peekable(), other.entries.iter().peekable());
        loop {
            let ord = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(x), Some(y)) => x.0.cmp(&y.0),
            };
            match ord {
                // `a` has a machine `b` lacks: a is ahead there.
                Ordering::Less => {
                    greater = true;
                    a.next();
                }
                Ordering::Greater => {
                    less = true;
                    b.next();
                }
                Ordering::Equal => {
                    let (x, y) = (a.next().map_or(0, |e| e.1), b.next().map_or(0, |e| e.1));
                    match x.cmp(&y) {
                        Ordering::Less => less = true,
                        Ordering::Greater => greater = true,
                        Ordering::Equal => {}
                    }
                }
            }
        }
        match (less, greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn clock() -> impl Strategy<Value = VectorClock> {
        proptest::collection::vec((0u64..5, 0u64..4), 0..6)
            .prop_map(|v| VectorClock::from_entries(v.into_iter().map(|(m, n)| (MachineId(m), n))))
    }

    proptest! {
        #[test]
        fn from_entries_is_canonical(c in clock()) {
            prop_assert!(c.is_canonical());
        }

        #[test]
        fn compare_is_antisymmetric(a in clock(), b in clock()) {
            let expect = match a.compare(&b) {
                Causality::Before => Causality::After,
                Causality::After => Causality::Before,
                other => other,
            };
            prop_assert_eq!(b.compare(&a), expect);
        }

        #[test]
        fn join_is_an_upper_bound(a in clock(), b in clock()) {
            let j = a.join(&b);
            prop_assert!(matches!(a.compare(&j), Causality::Before | Causality::Equal));
            prop_assert!(matches!(b.compare(&j), Causality::Before | Causality::Equal));
            prop_assert_eq!(j.clone(), b.join(&a));
        }

        #[test]
        fn tick_moves_forward(mut a in clock(), m in 0u64..5) {
            let before = a.clone();
            a.tick(MachineId(m));
            prop_assert_eq!(before.compare(&a), Causality::Before);
        }

        #[test]
        fn rkyv_round_trip(c in clock()) {
            let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&c).expect("serialize");
            let back = rkyv::from_bytes::<VectorClock, rkyv::rancor::Error>(&bytes).expect("deserialize");
            prop_assert_eq!(back, c);
        }
    }
}
