//! A group committed in the background, and the caches one writer hands
//! to the next (see the module root for what is always true of them).

use std::cell::OnceCell;
use std::sync::{Arc, Mutex};

use super::{HashMap, Index, IndexWriter};
use crate::error::IndexError;
use crate::error::{Error, Result};
use crate::ids::NodeId;
use crate::tree::NodeRecord;

/// How a group committed in the background ended: the next writer begins
/// its transaction only after it, and not at all if it failed (its caches
/// then claim changes the index lacks).
#[derive(Debug, Default)]
pub(super) struct Background {
    outcome: Mutex<Option<std::result::Result<(), String>>>,
    done: std::sync::Condvar,
}

impl Background {
    fn finish(&self, outcome: std::result::Result<(), String>) {
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
        self.done.notify_all();
    }

    /// Waits for the commit; its error, if it failed.
    pub(super) fn wait(&self) -> std::result::Result<(), String> {
        let mut outcome = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(o) = &*outcome {
                return o.clone();
            }
            outcome = self.done.wait(outcome).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A writer's caches of nodes, directory entries and checkpoint counts,
/// handed on to the next writer at commit: the engine commits a group every
/// few milliseconds, and a node created in one group is mostly stat'ed,
/// changed or removed in the next.
///
/// Always true: when set, they describe the index as its last commit left
/// it, and no group is committing in the background. Every change to the
/// index goes through an [`IndexWriter`]; a writer takes them when it opens
/// and gives them back only when its own commit succeeds, so a transaction
/// that is dropped or fails takes its caches with it, and the next writer
/// starts empty. A group committed in the background hands its caches
/// straight to the next writer instead (see
/// [`Index::commit_in_background`]). [`Index::clear`] and a failed
/// background commit drop them.
#[derive(Default)]
pub(super) struct Carried {
    pub(super) nodes: HashMap<NodeId, Option<NodeRecord>>,
    pub(super) since_checkpoint: HashMap<NodeId, (usize, bool)>,
    pub(super) entries: HashMap<(NodeId, Vec<u8>), super::writer::Entry>,
}

impl std::fmt::Debug for Carried {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Carried")
            .field("nodes", &self.nodes.len())
            .field("since_checkpoint", &self.since_checkpoint.len())
            .field("entries", &self.entries.len())
            .finish()
    }
}

pub(super) fn lock_carried(m: &Mutex<Option<Carried>>) -> std::sync::MutexGuard<'_, Option<Carried>> {
    // Only ever replaced whole: a panic cannot leave it half-changed.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Index {
    /// A writer on top of a group that failed in the background would
    /// commit its `applied` positions past that group's events, which
    /// would then never be applied: the failure must be taken first.
    pub(super) fn refuse_after_failure(&self) -> Result<()> {
        match &*self.failed.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(why) => Err(IndexError::BackgroundFailed { why: why.clone() }.at(&self.path)),
            None => Ok(()),
        }
    }

    /// Why a group committed in the background failed, if one did since
    /// the last call: the caller must apply its changes again from the log.
    pub(crate) fn take_failure(&self) -> Option<String> {
        self.failed.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Waits for the group committing in the background, if any; its error
    /// if it failed (also kept for [`Index::take_failure`]).
    pub(crate) fn wait_in_flight(&self) -> std::result::Result<(), String> {
        let job = self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(job) = job else { return Ok(()) };
        let outcome = job.wait();
        let mut slot = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|j| Arc::ptr_eq(j, &job)) {
            *slot = None;
        }
        if outcome.is_err() {
            *lock_carried(&self.carried) = None;
        }
        outcome
    }

    /// Commits `w`'s group on a thread of its own and returns the writer
    /// for the next group, which takes `w`'s caches (clean: what they hold
    /// is `w`'s to write). The next writer reads what its caches miss from
    /// a snapshot taken before or after this commit, which gives the same
    /// answer for every key this group wrote, since those are all in the
    /// caches ([`IndexWriter::can_commit_in_background`]); it begins its own
    /// transaction only after this commit, and fails if this one failed.
    ///
    /// One group at a time: the caller waits for the last one first
    /// ([`Index::wait_in_flight`]).
    pub(crate) fn commit_in_background(&self, mut w: IndexWriter) -> Result<IndexWriter> {
        if !w.can_commit_in_background() {
            return Err(Error::Invalid("this group cannot be committed in the background".into()));
        }
        let job = Arc::new(Background::default());
        // The group writes its dirty nodes; the next writer takes the cache.
        let nodes = w.nodes.take();
        let dirty: HashMap<NodeId, Option<NodeRecord>> =
            w.dirty_nodes.get_mut().iter().map(|id| (*id, nodes.get(id).cloned().flatten())).collect();
        let carried =
            Carried { nodes, since_checkpoint: std::mem::take(&mut w.since_checkpoint), entries: w.entries.take() };
        let mut next = self.new_writer(w.db.clone(), OnceCell::new(), carried);
        next.after = Some(job.clone());
        // No group is in flight (the caller waited): this one's commit is
        // the next.
        next.after_commits = self.commits.load(std::sync::atomic::Ordering::SeqCst) + 1;
        next.meta_changed = w.meta_changed.clone();
        *w.nodes.get_mut() = dirty;
        w.carries = false;
        w.snapshot = OnceCell::new();
        *self.in_flight.lock().unwrap_or_else(|e| e.into_inner()) = Some(job.clone());
        let (done, failed) = (job.clone(), self.failed.clone());
        #[cfg(test)]
        let injected = self.fail_next_background.swap(false, std::sync::atomic::Ordering::SeqCst);
        #[cfg(not(test))]
        let injected = false;
        let spawned = std::thread::Builder::new().name("syncer-index".into()).spawn(move || {
            // A panic must still end the wait of the writer after this one.
            let commit = std::panic::AssertUnwindSafe(move || w.commit(false).map_err(|e| e.to_string()));
            let outcome = match injected {
                true => {
                    drop(commit);
                    Err("injected failure".into())
                }
                false => std::panic::catch_unwind(commit).unwrap_or_else(|_| Err("the commit panicked".into())),
            };
            if let Err(why) = &outcome {
                *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
            }
            done.finish(outcome)
        });
        if let Err(source) = spawned {
            // The group is gone with the closure: the caller applies it
            // again from the log.
            let e = IndexError::NoThread { source };
            job.finish(Err(e.to_string()));
            return Err(e.at(&self.path));
        }
        Ok(next)
    }
}
