//! The bookkeeping of *Compressing under load* (see the parent module).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::ids::BlockHash;

/// Running averages of a put's costs per KiB of stored or compressed
/// bytes, in nanoseconds (0 until measured): wall time, so a busy CPU makes
/// compressing dearer and a busy disk makes writing dearer.
#[derive(Default)]
pub(super) struct Costs {
    pub(super) compress_ns: AtomicU64,
    pub(super) write_ns: AtomicU64,
}

impl Costs {
    /// Folds a sample of `ns` for `bytes` into `cell` (an average over the
    /// last eight or so; concurrent updates may drop one, which is fine).
    pub(super) fn note(cell: &AtomicU64, ns: u128, bytes: usize) {
        let kib = (bytes as u128).div_ceil(1024).max(1);
        let sample = u64::try_from(ns / kib).unwrap_or(u64::MAX).max(1);
        let old = cell.load(Ordering::Relaxed);
        let new = if old == 0 { sample } else { old - old / 8 + sample / 8 };
        cell.store(new.max(1), Ordering::Relaxed);
    }

    pub(super) fn compress_pays_now(&self) -> bool {
        compression_pays_now(self.compress_ns.load(Ordering::Relaxed), self.write_ns.load(Ordering::Relaxed))
    }
}

/// Whether a put should compress its block now rather than store it raw
/// and compress it when idle: when compressing a KiB takes less time than
/// writing one (the disk, not the CPU, is what holds puts back), or while
/// either cost is unmeasured (0).
pub fn compression_pays_now(compress_ns_per_kib: u64, write_ns_per_kib: u64) -> bool {
    compress_ns_per_kib == 0 || write_ns_per_kib == 0 || compress_ns_per_kib < write_ns_per_kib
}

/// The state behind *Compressing under load*.
pub(super) struct Deferral {
    /// Puts compressing right now.
    pub(super) compressing: AtomicUsize,
    /// Most puts that may compress at once.
    pub(super) slots: AtomicUsize,
    /// Blobs stored raw under load, oldest first.
    pub(super) queue: Mutex<VecDeque<BlockHash>>,
    /// When a put or a read last began, in milliseconds since `epoch`.
    pub(super) last_use_ms: AtomicU64,
    pub(super) epoch: Instant,
    /// Blobs taken off the queue and not yet compressed (or skipped).
    pub(super) in_hand: AtomicU64,
    /// What compressing and writing have cost lately.
    pub(super) costs: Costs,
    /// Blocks stored raw under load, and blobs compressed later, since open.
    pub(super) deferred: AtomicU64,
    pub(super) compressed_later: AtomicU64,
}

impl Deferral {
    pub(super) fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Deferral {
            compressing: AtomicUsize::new(0),
            slots: AtomicUsize::new(cores.saturating_sub(1).max(1)),
            queue: Mutex::default(),
            last_use_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            in_hand: AtomicU64::new(0),
            costs: Costs::default(),
            deferred: AtomicU64::new(0),
            compressed_later: AtomicU64::new(0),
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn touch(&self) {
        self.last_use_ms.fetch_max(self.now_ms(), Ordering::Relaxed);
    }
}

/// Counters of [`BlobStore`]'s compression under load.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct DeferralStats {
    /// Blocks stored raw under load since the store opened.
    pub deferred: u64,
    /// Of those, compressed since.
    pub compressed_later: u64,
    /// Blobs waiting in the queue now, or being compressed.
    pub queued: u64,
}
