//! The group-commit pipeline of the live index: the one owner of the
//! pending group of index changes, its commit (in the background while the
//! next group takes changes), the recovery of a group that was lost, and
//! when the index is made durable.
//!
//! Always true (the invariant that keeps group commit safe):
//! - the log, not the index, makes a change durable: a change is appended
//!   to the log before it is applied to the pending group, so a group that
//!   is lost (a failed commit or apply, a failed background commit, a panic
//!   while the group was out of the writer, a crash) loses only index work,
//!   which is applied again from the log ([`Pipeline::recover`]) before the
//!   next change or read goes on;
//! - readers never see a snapshot lacking acknowledged changes: while a
//!   group is pending, or the index is behind the log, [`Pipeline::has_pending`]
//!   is set and reads come to the writer ([`Pipeline::read`]) and read
//!   through the pending group; with none, a read takes a redb snapshot
//!   without any lock; a pending group older than [`GROUP_WINDOW`] is closed
//!   by the next read, so readers go back to snapshots once writes pause;
//! - a group is committed at most [`GROUP_WINDOW`] or [`GROUP_MAX`] changes
//!   after it began; group commits are not durable, and at most one group
//!   commits in the background at a time (see `Index::commit_in_background`
//!   for why its caches make that safe);
//! - a durable index is never ahead of the durable log: [`Pipeline::make_durable`]
//!   makes the blocks, then the log, then the index durable, with no group
//!   pending, at the first group commit [`INDEX_DURABLE_EVERY`] after the
//!   last durable one and at close;
//! - while the index is behind the log ([`Group`]'s `behind`), no change is
//!   made until it has caught up.
//!
//! The pipeline does not know the log: what it needs of it (reopen a
//! failed log writer, sync, catch the index up) it asks of a [`LogSide`],
//! the live tree's writer, always under the writer's mutex, which also
//! holds the [`Group`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{Index, IndexError, IndexView, IndexWriter};
use crate::error::{Error, Result};

/// Longest time index changes wait for a group commit. A redb commit costs
/// more than applying one change, so one commit per change would cap
/// creates far below what the FUSE transport carries; the log, not the
/// index, is what makes a change durable, so waiting risks nothing.
pub(crate) const GROUP_WINDOW: Duration = Duration::from_millis(20);

/// Most changes in one group commit.
pub(crate) const GROUP_MAX: u32 = 2048;

/// How long non-durable index commits may pile up before one durable commit.
pub(crate) const INDEX_DURABLE_EVERY: Duration = Duration::from_secs(5);

/// What the pipeline asks of the log it indexes (the live tree's writer).
pub(crate) trait LogSide {
    /// Opens again a log writer that failed, after cutting what the failed
    /// operation appended. Returns whether the index may now hold work the
    /// log lacks or lack work it has (the group is then dropped and the
    /// index caught up).
    fn reopen_failed(&mut self) -> Result<bool>;

    /// Makes the blocks, then the log, durable.
    fn sync(&mut self) -> Result<()>;

    /// Applies to the index, as an import does, every event of every log it
    /// lacks. Called with no group pending.
    fn catch_up(&mut self) -> Result<()>;
}

/// Index changes waiting for their group commit.
pub(crate) struct Pending {
    ix: IndexWriter,
    since: Instant,
    changes: u32,
}

impl Pending {
    /// The transaction of the group, for the change being made.
    pub(crate) fn writer(&mut self) -> &mut IndexWriter {
        &mut self.ix
    }
}

/// The pipeline's state that lives under the writer's mutex.
pub(crate) struct Group {
    /// The index transaction holding changes not yet committed.
    pending: Option<Pending>,
    /// The index may lack events of our log: a group was lost (a failed
    /// commit or apply, or a panic while it was out of the writer). Set
    /// while a change has the group out; no change is made until the index
    /// has caught up from the log again (see [`Pipeline::recover`]).
    behind: bool,
    /// The last time the index was made durable.
    last_durable: Instant,
}

impl Group {
    /// A group with nothing pending.
    pub(crate) fn new() -> Group {
        Group { pending: None, behind: false, last_durable: Instant::now() }
    }

    /// Drops the pending group, as a crash would (closing without a sync).
    pub(crate) fn abandon(&mut self) {
        self.pending = None;
    }
}

/// The group-commit pipeline over the live index. `Send + Sync`.
pub(crate) struct Pipeline {
    index: Index,
    /// Whether a group is pending (or the index is behind the log): reads
    /// take the writer's mutex only then.
    has_pending: AtomicBool,
    /// `index.redb`, named in errors.
    path: PathBuf,
}

impl Pipeline {
    /// A pipeline over `index` (at `path`) with nothing pending.
    pub(crate) fn new(index: Index, path: PathBuf) -> Pipeline {
        Pipeline { index, has_pending: AtomicBool::new(false), path }
    }

    /// The index (for snapshots and catch-ups; changes go through
    /// [`Pipeline::begin`]).
    pub(crate) fn index(&self) -> &Index {
        &self.index
    }

    /// The data dir, for messages.
    fn dir(&self) -> String {
        self.path.parent().unwrap_or(&self.path).display().to_string()
    }

    /// Whether a read must come to the writer (see the module doc).
    pub(crate) fn has_pending(&self) -> bool {
        self.has_pending.load(Ordering::Acquire)
    }

    /// Reopens the log writer if it failed; a log that no longer ends where
    /// the index expects drops the group and marks the index behind.
    pub(crate) fn reopen_log(&self, g: &mut Group, log: &mut dyn LogSide) -> Result<()> {
        if log.reopen_failed()? {
            // Its index work is redone from the log with the rest.
            g.pending = None;
            g.behind = true;
        }
        Ok(())
    }

    /// Starts a change: settles the groups before it (recovering a lost
    /// one) and hands out the pending group, with the index marked behind
    /// until the group is given back ([`Pipeline::keep`],
    /// [`Pipeline::applied`]) or lost ([`Pipeline::lost`]): a panic in
    /// between leaves the mark, and the next change catches up first.
    pub(crate) fn begin(&self, g: &mut Group, log: &mut dyn LogSide) -> Result<Pending> {
        self.reopen_log(g, log)?;
        self.settle_background(g, log)?;
        if g.behind {
            self.recover(g, log, "an earlier change lost its index work")?;
        }
        let p = match g.pending.take() {
            Some(p) => p,
            None => Pending { ix: self.index.write_detached()?, since: Instant::now(), changes: 0 },
        };
        g.behind = true;
        Ok(p)
    }

    /// Gives back a group the change did not touch (it failed before it
    /// applied anything). An empty one is closed, so no idle transaction or
    /// snapshot pins the index, unless it follows a group committing in the
    /// background: its caches may be all that shows that group's changes.
    pub(crate) fn keep(&self, g: &mut Group, p: Pending) {
        g.behind = false;
        if p.changes > 0 || p.ix.follows_background_commit() {
            g.pending = Some(p);
        }
    }

    /// A change failed after it touched the group (`why`): the group is
    /// dropped and the index catches up from the log.
    pub(crate) fn lost(&self, g: &mut Group, log: &mut dyn LogSide, p: Pending, why: &str) -> Result<()> {
        drop(p);
        self.recover(g, log, why)
    }

    /// Gives back a group with one more change applied, and commits it when
    /// it is due (in the background, or here with the index made durable
    /// when [`INDEX_DURABLE_EVERY`] has passed).
    pub(crate) fn applied(&self, g: &mut Group, log: &mut dyn LogSide, mut p: Pending) -> Result<()> {
        p.changes += 1;
        self.has_pending.store(true, Ordering::Release);
        let due = p.changes >= GROUP_MAX || p.since.elapsed() >= GROUP_WINDOW;
        g.pending = Some(p);
        g.behind = false;
        if due && g.last_durable.elapsed() < INDEX_DURABLE_EVERY {
            self.commit_in_background(g, log)?;
        } else if due {
            self.commit_pending(g, log)?;
            // The change itself is done (in the log and the index); a
            // durable index only spares a catch-up after a crash, so a
            // failure here is retried at the next interval.
            if let Err(e) = self.make_durable(g, log) {
                tracing::warn!("{}: making the index durable: {e}", self.dir());
            }
        }
        Ok(())
    }

    /// Notes that the index has caught up with the log (an import did it).
    pub(crate) fn caught_up(&self, g: &mut Group) {
        g.behind = false;
    }

    /// Hands the pending group to a thread of its own to commit, after the
    /// group before it, and starts the next group at once on its caches
    /// (`Index::commit_in_background`): the redb writes of a commit then
    /// run beside the next changes, not in their way. A group that cannot
    /// go (its caches no longer hold all it wrote) is committed here.
    fn commit_in_background(&self, g: &mut Group, log: &mut dyn LogSide) -> Result<()> {
        let _ = self.index.wait_in_flight();
        self.settle_background(g, log)?;
        let Some(p) = g.pending.take() else { return Ok(()) };
        if !p.ix.can_commit_in_background() {
            g.pending = Some(p);
            return self.commit_pending(g, log);
        }
        match self.index.commit_in_background(p.ix) {
            Ok(next) => {
                g.pending = Some(Pending { ix: next, since: Instant::now(), changes: 0 });
                Ok(())
            }
            Err(e) => self.recover(g, log, &format!("{e}")),
        }
    }

    /// If a group committed in the background failed: drops the pending
    /// group (its caches hold the failed one's changes) and applies every
    /// change the index lacks again from the log.
    fn settle_background(&self, g: &mut Group, log: &mut dyn LogSide) -> Result<()> {
        match self.index.take_failure() {
            Some(why) => {
                g.pending = None;
                self.recover(g, log, &format!("a group committed in the background failed: {why}"))
            }
            None => Ok(()),
        }
    }

    /// Commits the pending group of index changes, if any (not durably:
    /// that is quick, and readers go back to lock-free snapshots at once);
    /// if the commit fails, the index catches up from the log instead.
    pub(crate) fn commit_pending(&self, g: &mut Group, log: &mut dyn LogSide) -> Result<()> {
        let Some(p) = g.pending.take() else { return Ok(()) };
        match p.ix.commit(false) {
            Ok(()) => {
                self.has_pending.store(false, Ordering::Release);
                Ok(())
            }
            Err(e) => self.recover(g, log, &format!("{e}")),
        }
    }

    /// Makes every index commit so far durable, after the blocks and the
    /// log they index (a durable index must not get ahead of the durable
    /// log). No group may be pending: redb has one write transaction at a
    /// time.
    pub(crate) fn make_durable(&self, g: &mut Group, log: &mut dyn LogSide) -> Result<()> {
        g.last_durable = Instant::now();
        log.sync()?;
        self.index.write()?.commit(true)
    }

    /// After index work was lost (`why`): applies again from the logs what
    /// the index lacks, as an import does. Called with no group pending.
    /// Until it returns, readers wait on the writer rather than read a
    /// snapshot that lacks acknowledged changes; if it fails, changes are
    /// refused until a later call succeeds.
    pub(crate) fn recover(&self, g: &mut Group, log: &mut dyn LogSide, why: &str) -> Result<()> {
        g.behind = true;
        let dir = self.dir();
        // A failed operation's events are cut before anything is imported.
        self.reopen_log(g, log)?;
        // What a failed background group would report is redone here too.
        let _ = self.index.wait_in_flight();
        let _ = self.index.take_failure();
        tracing::warn!("{dir}: index changes lost ({why}); applying them again from the log");
        let mut caught_up = log.catch_up();
        if let Err(e) = &caught_up {
            // After an I/O failure redb refuses every transaction until the
            // file is reopened (a full disk that has room again included).
            tracing::warn!("{dir}: catching the index up failed ({e}); reopening it");
            caught_up = self.index.reopen().and_then(|()| log.catch_up());
        }
        // Until the index has caught up, readers come to the writer (and
        // try again) rather than read a snapshot lacking acknowledged
        // changes: on a disk that refuses writes, reads fail with its errno
        // instead of hiding files.
        self.has_pending.store(caught_up.is_err(), Ordering::Release);
        match caught_up {
            Ok(()) => {
                g.behind = false;
                Ok(())
            }
            Err(e) => {
                tracing::error!("{dir}: the index is behind the log and changes are refused until it catches up: {e}");
                // A full disk (or EIO, EROFS) reaches the caller as itself.
                if e.os_error().is_some() {
                    return Err(e);
                }
                Err(Error::Index {
                    path: self.path.clone(),
                    source: IndexError::Behind { why: why.to_string(), source: Box::new(e) },
                })
            }
        }
    }

    /// A read with a group pending (see [`Pipeline::has_pending`]), under
    /// the writer's mutex: settles and closes groups as due, and makes the
    /// read on the pending group if one is left (`None`: read a snapshot).
    pub(crate) fn read<T>(
        &self,
        g: &mut Group,
        log: &mut dyn LogSide,
        f: &impl Fn(&IndexView<'_>) -> Result<T>,
    ) -> Result<Option<Result<T>>> {
        self.settle_background(g, log)?;
        if g.behind && g.pending.is_none() {
            // A group was lost (a panic while it was out of the writer).
            self.recover(g, log, "a change was interrupted")?;
        }
        match &g.pending {
            // A group with changes goes to the background, as from a
            // change; an empty one (writes have paused) is closed here.
            Some(p) if p.since.elapsed() >= GROUP_WINDOW && p.changes > 0 => self.commit_in_background(g, log)?,
            Some(p) if p.since.elapsed() >= GROUP_WINDOW => self.commit_pending(g, log)?,
            _ => {}
        }
        if let Some(p) = &g.pending {
            let read = f(&IndexView::Pending(&p.ix));
            // A read that needed the transaction fails when the group
            // before it failed in the background: once that group is
            // applied again, it reads the recovered index.
            if read.is_ok() || p.ix.can_commit_in_background() {
                return Ok(Some(read));
            }
            let _ = self.index.wait_in_flight();
            self.settle_background(g, log)?;
            if g.pending.is_some() {
                return Ok(Some(read));
            }
        }
        Ok(None)
    }

    /// Waits for a group committing in the background (before the index
    /// is dropped).
    pub(crate) fn wait_in_flight(&self) {
        let _ = self.index.wait_in_flight();
    }
}
