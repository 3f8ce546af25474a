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

use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::event::Event;
use crate::ids::LogPos;
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

/// One index being caught up with the logs of a store.
pub(crate) struct CatchUp<'a> {
    pub(crate) store: &'a Store,
    pub(crate) index: &'a Index,
    pub(crate) problems: &'a PeerProblems,
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
    #[allow(clippy::type_complexity)]
    pub(crate) fn apply_new_events(&self, check_blocks: bool) -> Result<(u64, bool, Option<(LogPos, String)>)> {
        // Problems are those of the logs as they are now: a peer's log that
        // became readable again is no longer reported.
        self.problems.clear();
        let (mut events, cut) = self.gather(false, check_blocks)?;
        if events.is_empty() {
            return Ok((0, false, cut));
        }
        events.sort_by_key(|(_, e)| merge::order_key(e));
        let frontier = self.index.read()?.frontier()?;
        let replay = frontier.is_some_and(|f| merge::order_key(&events[0].1) <= f);
        let mut w = self.index.write()?;
        if replay {
            // In one transaction, so readers never see a half-built tree.
            tracing::info!("{}: events arrived out of order; replaying the index", self.store.layout().dir.display());
            w.clear_all()?;
            events = self.gather(true, check_blocks)?.0;
            events.sort_by_key(|(_, e)| merge::order_key(e));
        }
        let bs = self.store.block_size();
        for (pos, e) in &events {
            w.apply(*pos, e, bs)?;
        }
        // Not durable: a durable index must not get ahead of the durable log
        // and blocks, which the writer's group commits and `close` see to.
        w.commit(false)?;
        Ok((events.len() as u64, replay, cut))
    }

    /// Every event of every machine's log not yet in the index (all of
    /// them with `from_start`), and where our log must be cut, if anywhere
    /// (see `catch_up`).
    #[allow(clippy::type_complexity)]
    fn gather(&self, from_start: bool, check_blocks: bool) -> Result<(Vec<(LogPos, Event)>, Option<(LogPos, String)>)> {
        let log_root = self.store.layout().log();
        let mut out = Vec::new();
        let mut cut: Option<(LogPos, String)> = None;
        let ix = self.index.read()?;
        let (machines, bad) = log::list_machines_tolerant(self.store.storage().as_ref(), &log_root)?;
        for e in bad {
            self.problems.note(self.store, e.to_string());
        }
        for m in machines {
            let applied = if from_start { None } else { ix.applied(m)? };
            let (start, done_seq) = match applied {
                Some((segment, offset, seq)) => ((segment, offset), seq),
                None => ((0, 0), 0),
            };
            let ours = m == self.store.config().machine;
            let mut stop = false;
            let walk = log::for_each_event(self.store.storage().as_ref(), &log_root, m, start, |pos, _end, ev| {
                if ev.seq <= done_seq || stop {
                    return Ok(());
                }
                if check_blocks && ours {
                    if let Some(why) = self.missing_block(ev) {
                        cut = Some((pos, why));
                        stop = true;
                        return Ok(());
                    }
                }
                out.push((pos, ev.clone()));
                Ok(())
            });
            match walk {
                Ok(_) => {}
                // Damage in our own log is fatal: it is the truth we write.
                Err(e) if ours => return Err(e),
                // A peer's damaged log: its events before the damage are
                // imported, the rest is refused (named in the error), and
                // our data dir keeps working.
                Err(e) => self.problems.note(self.store, e.to_string()),
            }
        }
        Ok((out, cut))
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
