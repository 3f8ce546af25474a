//! Catching an index up with the logs: every event of every machine's log
//! that the index has not seen is applied in merge order (see `merge`), the
//! index replayed from the start when one sorts before those applied. The
//! live tree does it at open and at each import, a point-in-time view when
//! it brings `history.redb` up to date.
//!
//! Always true:
//! - the tree an index shows depends only on the set of events applied, not
//!   on the order they arrived in;
//! - damage in our own log is fatal (it is the truth we write); damage in a
//!   peer's log stops that peer's import at the damage, is reported with
//!   segment and offset ([`PeerProblems`]), and our data dir keeps working;
//! - catching up never makes the index durable: a durable index must not
//!   get ahead of the durable log and blocks.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::event::Event;
use crate::ids::{LogPos, MachineId};
use crate::index::Index;
use crate::index::Queries;
use crate::log;
use crate::merge;
use crate::state::OpenReport;
use crate::store::Store;

/// Damage found in peers' logs, as of the last catch-up.
#[derive(Debug, Default)]
pub(crate) struct PeerProblems(Mutex<Vec<String>>);

impl PeerProblems {
    fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Notes damage in a peer's log (logged, and kept for reports).
    fn note(&self, store: &Store, what: String) {
        tracing::error!("{}: {what}; that peer's later events are not imported", store.data_dir().display());
        let mut problems = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !problems.contains(&what) {
            problems.push(what);
        }
    }

    /// Every problem noted, each naming the segment and offset.
    pub(crate) fn list(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Events read from one machine's log at a time: a catch-up holds at most
/// this many per machine, whatever the logs hold. Variable only so that
/// tests can make chunks tiny (see [`set_chunk`]).
static CHUNK: AtomicUsize = AtomicUsize::new(4096);

/// Sets how many events of one machine's log a catch-up reads at a time
/// (at least 1). For tests: any value gives the same index.
#[doc(hidden)]
pub fn set_chunk(events: usize) {
    CHUNK.store(events.max(1), Ordering::Relaxed);
}

/// Where the catch-up is in one machine's log.
struct Cursor {
    machine: MachineId,
    /// (segment, offset) of the next record to read.
    next: (u64, u64),
    /// Events up to this seq are in the index already.
    done_seq: u64,
    /// Our own log after an unclean shutdown: each event's blocks are
    /// checked (see [`CatchUp::catch_up`]).
    check_blocks: bool,
    ours: bool,
    /// Read, not applied yet, in merge order.
    buf: VecDeque<(LogPos, Event)>,
    /// The merge-order key of the last event read.
    last_key: Option<merge::OrderKey>,
    /// The log was read to its end (or to damage, or to a cut).
    ended: bool,
    /// Where our log must be cut, and why.
    cut: Option<(LogPos, String)>,
}

/// One index being caught up with the logs of a store.
pub(crate) struct CatchUp<'a> {
    pub(crate) store: &'a Store,
    pub(crate) index: &'a Index,
    pub(crate) problems: &'a PeerProblems,
    /// When set, the catch-up stops at the next batch and commits what it
    /// applied (it resumes from there next time): a background refresh
    /// must not hold up an unmount.
    pub(crate) stop: Option<&'a AtomicBool>,
}

impl CatchUp<'_> {
    /// Applies to the index every record of every machine's log that it
    /// has not seen yet, in merge order (see `merge`), and notes in
    /// `report` what it found. Returns how many events were applied.
    ///
    /// If a new event sorts before the last one applied (a peer's older
    /// events arriving late), the index is replayed from the start so that
    /// the tree depends only on the set of events. Local events always sort
    /// last (event times are a hybrid logical clock), so this only happens
    /// when peers' logs bring older events.
    ///
    /// After an unclean shutdown, each of our own events being caught up
    /// must find its blocks intact. The index is made durable only after the
    /// log and blobs are synced, so these events include every one that was
    /// never acknowledged; such an event can reach the disk while its blocks
    /// did not. The first event whose blocks are missing or torn was never
    /// acknowledged (a sync would have made them durable first), so it and
    /// everything after it are cut, like a torn tail.
    ///
    /// `check_blocks`: our own events are checked (a writer after an
    /// unclean shutdown).
    pub(crate) fn catch_up(&self, check_blocks: bool, report: &mut OpenReport) -> Result<u64> {
        let (applied, replayed, cut) = self.apply_new_events(check_blocks)?;
        report.replayed = replayed;
        if let Some((pos, why)) = cut {
            let dropped = log::cut_at(self.store.storage().as_ref(), &self.store.layout().log(), pos)?;
            let what = format!("cut {dropped} bytes of unacknowledged events from our log at {pos}: {why}");
            tracing::warn!("{}: {what}", self.store.data_dir().display());
            report.cut_unacknowledged = Some(what);
        }
        Ok(applied)
    }

    /// Applies every event not yet in the index, in merge order, replaying
    /// the index when one sorts before the frontier. Returns how many were
    /// applied, whether the index was replayed, and where our log must be
    /// cut (only when `check_blocks`).
    ///
    /// The logs are merged as they are read, [`CHUNK`] events of each
    /// machine at a time (each machine's log is in merge order already: its
    /// times never go back, its seqs rise), so memory does not grow with the
    /// number of events to apply.
    #[allow(clippy::type_complexity)]
    pub(crate) fn apply_new_events(&self, check_blocks: bool) -> Result<(u64, bool, Option<(LogPos, String)>)> {
        // Problems are those of the logs as they are now: a peer's log that
        // became readable again is no longer reported.
        self.problems.clear();
        let frontier = self.index.read()?.frontier()?;
        let mut cursors = self.cursors(false, check_blocks)?;
        let mut w: Option<crate::index::IndexWriter> = None;
        let mut last = frontier;
        let mut applied = 0u64;
        let mut replay = false;
        let bs = self.store.block_size();
        while let Some(batch) = self.next_batch(&mut cursors)? {
            if self.stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                break;
            }
            if !replay && last.is_some_and(|l| merge::order_key(&batch[0].1) <= l) {
                // An event sorts before one applied: replay from the start,
                // in this one transaction, so readers never see a half-built
                // tree.
                tracing::info!(
                    "{}: events arrived out of order; replaying the index",
                    self.store.layout().dir.display()
                );
                let mut writer = match w.take() {
                    Some(writer) => writer,
                    None => self.index.write()?,
                };
                writer.clear_all()?;
                w = Some(writer);
                replay = true;
                last = None;
                applied = 0;
                cursors = self.cursors(true, check_blocks)?;
                continue;
            }
            let writer = match &mut w {
                Some(writer) => writer,
                None => w.insert(self.index.write()?),
            };
            for (pos, e) in &batch {
                writer.apply(*pos, e, bs)?;
                last = Some(merge::order_key(e));
            }
            applied += batch.len() as u64;
        }
        let cut = cursors.into_iter().find_map(|c| c.cut);
        // Not durable: a durable index must not get ahead of the durable log
        // and blocks, which the writer's group commits and `close` see to.
        if let Some(writer) = w {
            writer.commit(false)?;
        }
        Ok((applied, replay, cut))
    }

    /// A reading position in every machine's log: just past what the index
    /// has applied (the start of every log with `from_start`).
    fn cursors(&self, from_start: bool, check_blocks: bool) -> Result<Vec<Cursor>> {
        let log_root = self.store.layout().log();
        let ix = self.index.read()?;
        let (machines, bad) = log::list_machines_tolerant(self.store.storage().as_ref(), &log_root)?;
        for e in bad {
            self.problems.note(self.store, e.to_string());
        }
        let mut out = Vec::with_capacity(machines.len());
        for m in machines {
            let applied = if from_start { None } else { ix.applied(m)? };
            let (next, done_seq) = match applied {
                Some((segment, offset, seq)) => ((segment, offset), seq),
                None => ((0, 0), 0),
            };
            let ours = m == self.store.config().machine;
            out.push(Cursor {
                machine: m,
                next,
                done_seq,
                check_blocks: check_blocks && ours,
                ours,
                buf: VecDeque::new(),
                last_key: None,
                ended: false,
                cut: None,
            });
        }
        Ok(out)
    }

    /// The next events to apply, in merge order: every buffered event up to
    /// the earliest last-buffered event of a log not read to its end (no
    /// later read can bring one before it). `None` once every log is read.
    fn next_batch(&self, cursors: &mut [Cursor]) -> Result<Option<Vec<(LogPos, Event)>>> {
        for c in cursors.iter_mut() {
            if c.buf.is_empty() && !c.ended {
                self.refill(c)?;
            }
        }
        let horizon =
            cursors.iter().filter(|c| !c.ended).filter_map(|c| c.buf.back()).map(|(_, e)| merge::order_key(e)).min();
        let mut batch = Vec::new();
        for c in cursors.iter_mut() {
            while let Some((_, e)) = c.buf.front() {
                if horizon.is_some_and(|h| merge::order_key(e) > h) {
                    break;
                }
                batch.extend(c.buf.pop_front());
            }
        }
        if batch.is_empty() {
            return Ok(None);
        }
        batch.sort_by_key(|(_, e)| merge::order_key(e));
        Ok(Some(batch))
    }

    /// Reads up to [`CHUNK`] more events of `c`'s log into its buffer.
    fn refill(&self, c: &mut Cursor) -> Result<()> {
        let log_root = self.store.layout().log();
        let chunk = CHUNK.load(Ordering::Relaxed);
        let mut read = 0;
        let mut full = false;
        let from = LogPos { machine: c.machine, segment: c.next.0, offset: c.next.1 };
        let walk = log::for_each_record_while(self.store.storage().as_ref(), &log_root, from, |pos, r| {
            if read == chunk {
                full = true;
                return Ok(ControlFlow::Break(()));
            }
            let ev = &r.event;
            if ev.seq > c.done_seq {
                let key = merge::order_key(ev);
                if c.last_key.is_some_and(|k| key <= k) {
                    return Err(Error::Invalid(format!(
                        "log of machine {}: {pos}: event {} sorts before the one read before it",
                        c.machine, ev.seq
                    )));
                }
                if c.check_blocks {
                    if let Some(why) = self.missing_block(ev) {
                        c.cut = Some((pos, why));
                        return Ok(ControlFlow::Break(()));
                    }
                }
                c.last_key = Some(key);
                c.buf.push_back((pos, ev.clone()));
                read += 1;
            }
            c.next = (pos.segment, r.offset + r.frame_len);
            Ok(ControlFlow::Continue(()))
        });
        if walk.is_ok() && full {
            return Ok(());
        }
        // Read to its end, to damage, or to where our log must be cut.
        c.ended = true;
        match walk {
            Ok(_) => Ok(()),
            // Damage in our own log is fatal: it is the truth we write.
            Err(e) if c.ours => Err(e),
            // A peer's damaged log: its events before the damage are
            // imported, the rest is refused (named in the error), and our
            // data dir keeps working.
            Err(e) => {
                self.problems.note(self.store, e.to_string());
                Ok(())
            }
        }
    }

    /// Why `ev`'s blocks cannot be read back intact, if they cannot.
    fn missing_block(&self, ev: &Event) -> Option<String> {
        for b in ev.change.blocks() {
            match self.store.blobs().get(&b.hash) {
                Ok(data) if data.len() == b.len as usize => {}
                // Evicted from the bounded cache: it is on the remote.
                Err(Error::MissingBlob(h)) if self.store.cache().is_pushed(&h) => {}
                Ok(_) => return Some(format!("block {} has the wrong length", b.hash)),
                Err(e) => return Some(e.to_string()),
            }
        }
        None
    }
}
