//! The writer of the live tree and its group commits: every change is
//! validated, appended to our log and applied to the pending index group
//! under the writer mutex; groups are committed as the module doc of
//! `live` says.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{lock_writer, LiveTree, Pending, Writer, GROUP_MAX, GROUP_WINDOW, INDEX_DURABLE_EVERY};
use crate::error::{Error, Result};
use crate::event::{Change, Event};
use crate::ids::{NodeId, Timestamp};
use crate::index::{IndexView, IndexWriter};
use crate::log::LogWriter;
use crate::read::TreeRead;

impl LiveTree {
    /// Runs `f` with the writer lock and the index transaction; `f`
    /// returns the changes to record, which are appended and applied in
    /// order. The transaction is committed with the group (see
    /// [`GROUP_WINDOW`]).
    ///
    /// Once a change is in the log it is the truth: a later index failure
    /// loses only index work, which is redone from the log at once
    /// (`recover_index`); the operation fails only if that fails too, and
    /// no further change is made until it succeeds.
    pub(super) fn mutate<T>(
        &self,
        f: impl FnOnce(&mut Writer, &IndexWriter) -> Result<(Vec<(NodeId, Change)>, T)>,
    ) -> Result<T> {
        let mut w = lock_writer(&self.writer);
        self.reopen_failed_log(&mut w)?;
        self.settle_background(&mut w)?;
        if w.index_behind {
            self.recover_index(&mut w, "an earlier change lost its index work")?;
        }
        let mut p = match w.pending.take() {
            Some(p) => p,
            None => Pending { ix: self.index.write_detached()?, since: Instant::now(), changes: 0 },
        };
        // Until the group is back in `w` or committed: a panic here leaves
        // the flag set, and the next change catches the index up first.
        w.index_behind = true;
        let (changes, out) = match f(&mut w, &p.ix) {
            Ok(v) => v,
            Err(e) => {
                // `f` only reads: the group goes on (an empty one is closed,
                // so no idle transaction or snapshot pins the index, unless
                // it follows a group committing in the background: its
                // caches may be all that shows that group's changes).
                w.index_behind = false;
                if p.changes > 0 || p.ix.follows_background_commit() {
                    w.pending = Some(p);
                }
                return Err(e);
            }
        };
        let (before, n) = (w.log.last_seq(), changes.len() as u64);
        if let Err((e, touched)) = self.record(&mut w, &mut p.ix, changes) {
            if !touched {
                // Nothing reached the index: the group goes on, and what
                // reached the log is cut (now, or before the next change).
                w.index_behind = false;
                if p.changes > 0 || p.ix.follows_background_commit() {
                    w.pending = Some(p);
                }
                if let Err(cut) = self.reopen_failed_log(&mut w) {
                    tracing::warn!("{}: {cut}; trying again before the next change", self.store.layout().dir.display());
                }
                return Err(e);
            }
            // The transaction may hold part of the change: the group is
            // dropped and what of it reached the log is applied again. The
            // operation succeeded if all of it is in the log.
            drop(p);
            let logged = w.log.last_seq().saturating_sub(before) == n;
            self.recover_index(&mut w, &format!("{e}"))?;
            return if logged { Ok(out) } else { Err(e) };
        }
        p.changes += 1;
        self.has_pending.store(true, Ordering::Release);
        let due = p.changes >= GROUP_MAX || p.since.elapsed() >= GROUP_WINDOW;
        w.pending = Some(p);
        w.index_behind = false;
        if due && w.last_durable_index.elapsed() < INDEX_DURABLE_EVERY {
            self.commit_in_background(&mut w)?;
        } else if due {
            self.commit_pending(&mut w)?;
            // The change itself is done (in the log and the index); a
            // durable index only spares a catch-up after a crash, so a
            // failure here is retried at the next interval.
            if let Err(e) = self.make_index_durable(&mut w) {
                tracing::warn!("{}: making the index durable: {e}", self.store.layout().dir.display());
            }
        }
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

    /// A log writer that failed (a full disk, EIO) refuses every later
    /// append, since its file may end in part of a record: it is opened
    /// again. What the failed operation appended is cut first (none of it
    /// was acknowledged); a failed sync cuts nothing, and its records stay
    /// (they were not acknowledged either, but the operations that made them
    /// were, and their index work stands). If the cut or the reopen fails,
    /// the writer stays failed and the next change tries again.
    pub(super) fn reopen_failed_log(&self, w: &mut Writer) -> Result<()> {
        let Some(why) = w.log.failure().map(str::to_string) else { return Ok(()) };
        tracing::warn!("{}: our log failed earlier ({why}); opening it again", self.store.layout().dir.display());
        // The seq the reopened log must end at for the index to need no
        // catch-up: where the cut goes, or where the failed writer stood.
        let mut expected = w.log.last_seq();
        if let Some((to, seq)) = w.cut_to {
            let cut = crate::log::cut_at(self.store.storage().as_ref(), &self.store.layout().log(), to)?;
            tracing::warn!("cut {cut} bytes a failed operation appended to our log at {to:?}");
            w.cut_to = None;
            expected = seq;
        }
        let (log, recovery) = LogWriter::open(
            self.store.storage().clone(),
            &self.store.layout().log(),
            self.store.config().machine,
            self.store.config().segment_size,
        )?;
        if let Some(cut) = recovery.cut {
            tracing::warn!(
                "cut {} bytes a failed append left at byte {} of {}",
                cut.bytes,
                cut.offset,
                cut.path.display()
            );
        }
        if log.last_seq() != expected {
            // Its index work is redone from the log with the rest.
            w.pending = None;
            w.index_behind = true;
        }
        w.last_time = w.last_time.max(log.last_time());
        w.log = log;
        Ok(())
    }

    /// Hands the pending group to a thread of its own to commit, after the
    /// group before it, and starts the next group at once on its caches
    /// ([`Index::commit_in_background`]): the redb writes of a commit then
    /// run beside the next changes, not in their way. A group that cannot
    /// go (its caches no longer hold all it wrote) is committed here.
    fn commit_in_background(&self, w: &mut Writer) -> Result<()> {
        let _ = self.index.wait_in_flight();
        self.settle_background(w)?;
        let Some(p) = w.pending.take() else { return Ok(()) };
        if !p.ix.can_commit_in_background() {
            w.pending = Some(p);
            return self.commit_pending(w);
        }
        match self.index.commit_in_background(p.ix) {
            Ok(next) => {
                w.pending = Some(Pending { ix: next, since: Instant::now(), changes: 0 });
                Ok(())
            }
            Err(e) => self.recover_index(w, &format!("{e}")),
        }
    }

    /// If a group committed in the background failed: drops the pending
    /// group (its caches hold the failed one's changes) and applies every
    /// change the index lacks again from the log.
    fn settle_background(&self, w: &mut Writer) -> Result<()> {
        match self.index.take_failure() {
            Some(why) => {
                w.pending = None;
                self.recover_index(w, &format!("a group committed in the background failed: {why}"))
            }
            None => Ok(()),
        }
    }

    /// Commits the pending group of index changes, if any (not durably:
    /// that is quick, and readers go back to lock-free snapshots at once);
    /// if the commit fails, the index catches up from the log instead.
    pub(super) fn commit_pending(&self, w: &mut Writer) -> Result<()> {
        let Some(p) = w.pending.take() else { return Ok(()) };
        match p.ix.commit(false) {
            Ok(()) => {
                self.has_pending.store(false, Ordering::Release);
                Ok(())
            }
            Err(e) => self.recover_index(w, &format!("{e}")),
        }
    }

    /// Makes every index commit so far durable, after the blocks and the
    /// log they index (a durable index must not get ahead of the durable
    /// log). No group may be pending: redb has one write transaction at a
    /// time.
    pub(super) fn make_index_durable(&self, w: &mut Writer) -> Result<()> {
        w.last_durable_index = Instant::now();
        self.store.blobs().sync_pending()?;
        w.log.sync()?;
        self.index.write()?.commit(true)
    }

    /// After index work was lost (`why`): applies again from the logs what
    /// the index lacks, as an import does. Called with the writer held and
    /// no group pending. Until it returns, readers wait on the writer
    /// rather than read a snapshot that lacks acknowledged changes; if it
    /// fails, changes are refused until a later call succeeds.
    fn recover_index(&self, w: &mut Writer, why: &str) -> Result<()> {
        w.index_behind = true;
        // A failed operation's events are cut before anything is imported.
        self.reopen_failed_log(w)?;
        // What a failed background group would report is redone here too.
        let _ = self.index.wait_in_flight();
        let _ = self.index.take_failure();
        tracing::warn!(
            "{}: index changes lost ({why}); applying them again from the log",
            self.store.layout().dir.display()
        );
        let mut caught_up = self.import_locked(w);
        if let Err(e) = &caught_up {
            // After an I/O failure redb refuses every transaction until the
            // file is reopened (a full disk that has room again included).
            tracing::warn!("{}: catching the index up failed ({e}); reopening it", self.store.layout().dir.display());
            caught_up = self.index.reopen().and_then(|()| self.import_locked(w));
        }
        // Until the index has caught up, readers come to the writer (and
        // try again) rather than read a snapshot lacking acknowledged
        // changes: on a disk that refuses writes, reads fail with its errno
        // instead of hiding files.
        self.has_pending.store(caught_up.is_err(), Ordering::Release);
        match caught_up {
            Ok(_) => {
                w.index_behind = false;
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    "{}: the index is behind the log and changes are refused until it catches up: {e}",
                    self.store.layout().dir.display()
                );
                // A full disk (or EIO, EROFS) reaches the caller as itself.
                if e.os_error().is_some() {
                    return Err(e);
                }
                Err(Error::Index {
                    path: self.store.layout().index(),
                    reason: format!("behind the log after {why}, and catching up failed: {e}"),
                })
            }
        }
    }

    /// Runs a read of the live tree on a snapshot or, while the writer
    /// holds index changes not yet committed, on its transaction (under
    /// the writer mutex), so a read sees every change made before it. A
    /// group older than [`GROUP_WINDOW`] is closed first (committed in the
    /// background, or here if empty), so readers go back to lock-free
    /// snapshots once writes pause.
    pub(super) fn read_live<T>(&self, f: impl Fn(&IndexView<'_>) -> Result<T>) -> Result<T> {
        if self.has_pending.load(Ordering::Acquire) {
            let mut w = lock_writer(&self.writer);
            if let Some(read) = self.read_pending(&mut w, &f)? {
                return read;
            }
        }
        f(&IndexView::Snapshot(self.index.read()?))
    }

    /// [`LiveTree::read_live`] with a group pending: settles and closes
    /// groups as due; the read, if it must be made on the pending group.
    fn read_pending<T>(&self, w: &mut Writer, f: &impl Fn(&IndexView<'_>) -> Result<T>) -> Result<Option<Result<T>>> {
        self.settle_background(w)?;
        if w.index_behind && w.pending.is_none() {
            // A group was lost (a panic while it was out of the writer).
            self.recover_index(w, "a change was interrupted")?;
        }
        match &w.pending {
            // A group with changes goes to the background, as from a
            // change; an empty one (writes have paused) is closed here.
            Some(p) if p.since.elapsed() >= GROUP_WINDOW && p.changes > 0 => self.commit_in_background(w)?,
            Some(p) if p.since.elapsed() >= GROUP_WINDOW => self.commit_pending(w)?,
            _ => {}
        }
        if let Some(p) = &w.pending {
            let read = f(&IndexView::Pending(&p.ix));
            // A read that needed the transaction fails when the group
            // before it failed in the background: once that group is
            // applied again, it reads the recovered index.
            if read.is_ok() || p.ix.can_commit_in_background() {
                return Ok(Some(read));
            }
            let _ = self.index.wait_in_flight();
            self.settle_background(w)?;
            if w.pending.is_some() {
                return Ok(Some(read));
            }
        }
        Ok(None)
    }
}
