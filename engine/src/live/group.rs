//! The writer of the live tree: every change is validated, appended to our
//! log and applied to the pending index group under the writer mutex; the
//! group commits are the business of the index's pipeline
//! (`index::pipeline`), which asks our log what it needs through
//! [`LogSide`].

use super::{lock_writer, LiveTree, Locked, Writer};
use crate::error::{Error, Result};
use crate::event::{Change, Event};
use crate::ids::{NodeId, Timestamp};
use crate::index::pipeline::LogSide;
use crate::index::{IndexView, IndexWriter};
use crate::log::LogWriter;
use crate::read::TreeRead;

impl LiveTree {
    /// Runs `f` with the writer lock and the index transaction; `f`
    /// returns the changes to record, which are appended and applied in
    /// order. The transaction is committed with the group (see
    /// `index::pipeline`).
    ///
    /// Once a change is in the log it is the truth: a later index failure
    /// loses only index work, which is redone from the log at once
    /// (`Pipeline::recover`); the operation fails only if that fails too,
    /// and no further change is made until it succeeds.
    pub(super) fn mutate<T>(
        &self,
        f: impl FnOnce(&mut Writer, &IndexWriter) -> Result<(Vec<(NodeId, Change)>, T)>,
    ) -> Result<T> {
        let mut locked = lock_writer(&self.writer);
        let Locked { w, group } = &mut *locked;
        let mut p = self.pipeline.begin(group, &mut self.side(w))?;
        let (changes, out) = match f(w, p.writer()) {
            Ok(v) => v,
            Err(e) => {
                // `f` only reads: the group goes on.
                self.pipeline.keep(group, p);
                return Err(e);
            }
        };
        let (before, n) = (w.log.last_seq(), changes.len() as u64);
        if let Err((e, touched)) = self.record(w, p.writer(), changes) {
            if !touched {
                // Nothing reached the index: the group goes on, and what
                // reached the log is cut (now, or before the next change).
                self.pipeline.keep(group, p);
                if let Err(cut) = self.pipeline.reopen_log(group, &mut self.side(w)) {
                    tracing::warn!("{}: {cut}; trying again before the next change", self.store.data_dir().display());
                }
                return Err(e);
            }
            // The transaction may hold part of the change: the group is
            // dropped and what of it reached the log is applied again. The
            // operation succeeded if all of it is in the log.
            let logged = w.log.last_seq().saturating_sub(before) == n;
            self.pipeline.lost(group, &mut self.side(w), p, &format!("{e}"))?;
            return if logged { Ok(out) } else { Err(e) };
        }
        self.pipeline.applied(group, &mut self.side(w), p)?;
        Ok(out)
    }

    /// [`LiveTree::mutate`] for the other modules of the engine: `f` reads
    /// the index and returns the changes to record, as one group.
    pub(crate) fn change<T>(&self, f: impl FnOnce(&IndexWriter) -> Result<(Vec<(NodeId, Change)>, T)>) -> Result<T> {
        self.mutate(|_, ix| f(ix))
    }

    /// Appends `changes` to our log as events and applies them to `ix`.
    /// Once one fails to apply, the rest are still appended (and applied
    /// as far as they go, for the clocks of the ones after): an operation
    /// is then whole in the log, and the index work is redone from there.
    ///
    /// On failure, also whether `ix` was touched: when the first event's
    /// append fails (a full or read-only disk), nothing was applied and the
    /// group stands.
    fn record(
        &self,
        w: &mut Writer,
        ix: &mut IndexWriter,
        changes: Vec<(NodeId, Change)>,
    ) -> std::result::Result<(), (Error, bool)> {
        let machine = self.store.config().machine;
        let bs = self.block_size();
        let mut failed = None;
        let start = (w.log.position(), w.log.last_seq());
        for (i, (node, change)) in changes.into_iter().enumerate() {
            let touched = i > 0;
            let prev = ix.node(node).map_err(|e| (e, touched))?;
            // A content change is made on the version the node shows, or
            // on the one its caller's line left off at.
            let line = w.line.filter(|(n, _)| *n == node).map(|(_, b)| b);
            let base = match change.is_content() {
                true if line.is_some() => {
                    w.line = None;
                    line
                }
                true => prev.as_ref().and_then(|p| p.head).map(|h| h.event),
                false => None,
            };
            let mut clock = prev.map(|p| p.clock).unwrap_or_default();
            clock.tick(machine);
            let now = Timestamp::now();
            let time = if now > w.last_time { now } else { Timestamp(w.last_time.0.saturating_add(1)) };
            let event = Event { node, machine, seq: w.log.last_seq() + 1, time, clock, change, base };
            let pos = match w.log.append(std::slice::from_ref(&event)) {
                Ok(pos) => pos,
                Err(e) => {
                    w.cut_to = Some(start);
                    return Err((e, touched));
                }
            };
            let pos = pos
                .first()
                .copied()
                .ok_or_else(|| (Error::Invalid("log append returned no position".into()), touched))?;
            w.last_time = time;
            if let Err(e) = ix.apply(pos, &event, bs) {
                failed.get_or_insert(e);
            }
        }
        w.line = None;
        if w.log.last_seq() != start.1 {
            // `try_send` on a full channel is a check of an atomic: the
            // watcher already has a wake-up waiting, and this one adds
            // nothing to it. A watcher that hung up is dropped.
            w.log_watchers.retain(|tx| !matches!(tx.try_send(()), Err(std::sync::mpsc::TrySendError::Disconnected(_))));
        }
        failed.map_or(Ok(()), |e| Err((e, true)))
    }

    /// Runs a read of the live tree on a snapshot or, while the writer
    /// holds index changes not yet committed, on its transaction (under
    /// the writer mutex), so a read sees every change made before it (see
    /// `Pipeline::read`).
    pub(super) fn read_live<T>(&self, f: impl Fn(&IndexView<'_>) -> Result<T>) -> Result<T> {
        if self.pipeline.has_pending() {
            let mut locked = lock_writer(&self.writer);
            let Locked { w, group } = &mut *locked;
            if let Some(read) = self.pipeline.read(group, &mut self.side(w), &f)? {
                return read;
            }
        }
        f(&IndexView::Snapshot(self.pipeline.index().read()?))
    }

    /// Our log as the index pipeline sees it.
    pub(super) fn side<'a>(&'a self, w: &'a mut Writer) -> Side<'a> {
        Side { tree: self, w }
    }
}

/// Our log's writer, lent to the index pipeline under the writer mutex.
pub(super) struct Side<'a> {
    tree: &'a LiveTree,
    w: &'a mut Writer,
}

impl LogSide for Side<'_> {
    /// A log writer that failed (a full disk, EIO) refuses every later
    /// append, since its file may end in part of a record: it is opened
    /// again. What the failed operation appended is cut first (none of it
    /// was acknowledged); a failed sync cuts nothing, and its records stay
    /// (they were not acknowledged either, but the operations that made them
    /// were, and their index work stands). If the cut or the reopen fails,
    /// the writer stays failed and the next change tries again.
    fn reopen_failed(&mut self) -> Result<bool> {
        let (tree, w) = (self.tree, &mut *self.w);
        let Some(why) = w.log.failure().map(str::to_string) else { return Ok(false) };
        tracing::warn!("{}: our log failed earlier ({why}); opening it again", tree.store.layout().dir.display());
        // The seq the reopened log must end at for the index to need no
        // catch-up: where the cut goes, or where the failed writer stood.
        let mut expected = w.log.last_seq();
        if let Some((to, seq)) = w.cut_to {
            let cut = crate::log::cut_at(tree.store.storage().as_ref(), &tree.store.layout().log(), to)?;
            tracing::warn!("cut {cut} bytes a failed operation appended to our log at {to:?}");
            w.cut_to = None;
            expected = seq;
        }
        let (log, recovery) = LogWriter::open(
            tree.store.storage().clone(),
            &tree.store.layout().log(),
            tree.store.config().machine,
            tree.store.config().segment_size,
        )?;
        if let Some(cut) = recovery.cut {
            tracing::warn!(
                "cut {} bytes a failed append left at byte {} of {}",
                cut.bytes,
                cut.offset,
                cut.path.display()
            );
        }
        // Off where the index expects: its work is redone from the log.
        let off = log.last_seq() != expected;
        w.last_time = w.last_time.max(log.last_time());
        w.log = log;
        Ok(off)
    }

    fn sync(&mut self) -> Result<()> {
        self.tree.store.blobs().sync_pending()?;
        self.w.log.sync()
    }

    fn catch_up(&mut self) -> Result<()> {
        self.tree.import_locked(self.w).map(drop)
    }
}
