//! The entry points of the CLI's forensics and time travel: `log inspect`,
//! `log graph`, `log verify`, `history`, `restore` and the WHEN of
//! `mount --at`. The CLI reads a data dir's log through these alone; the
//! log reader, the history index and the verifier behind them stay inside
//! the engine.
//!
//! Always true:
//! - nothing here writes to a data dir or takes its writer lock, so every
//!   entry point runs beside a live mount;
//! - [`inspect`] never fails on damage: each damaged record is reported in
//!   place, with what is wrong (the log's segment reader in forensic mode);
//!   only an unreadable log folder is an error;
//! - [`verify`] reads every record and every block the log references, and
//!   never repairs.
//!
//! See `docs/DESIGN.md` at the repository root for the rules behind these.

use std::path::Path;

use crate::error::Result;
use crate::event::Event;
use crate::ids::{LogPos, Timestamp};
use crate::log;
use crate::read::TreeRead;
use crate::storage::FsStorage;
use crate::store::Layout;

pub use crate::history::{
    causal_dot, clock_text, describe, event_name, format_time, inspect_segment, node_at_path, parse_when, versions,
    Filter, Inspected, Version, When, KINDS,
};
pub use crate::verify::VerifyReport;

/// Every record of every machine's log in the data dir `dir`, in log order
/// (machine by machine), damaged ones included (see the module docs).
pub fn inspect(dir: &Path) -> Result<Vec<Inspected>> {
    let mut out = Vec::new();
    inspect_each(dir, &mut |r| {
        out.push(r);
        Ok(())
    })?;
    Ok(out)
}

/// [`inspect`], handing each record to `f` as it is read (one segment in
/// memory at a time, whatever the log's length); an error of `f` ends it.
pub fn inspect_each(dir: &Path, f: &mut dyn FnMut(Inspected) -> Result<()>) -> Result<()> {
    crate::history::for_each_inspected(&FsStorage, &Layout { dir: dir.to_path_buf() }.log(), f)
}

/// The event whose record starts at `pos` in `tree`'s data dir (random
/// access: a position from the history index or a WHEN). A damaged record
/// is an error naming its segment and offset.
pub fn event_at<T: TreeRead + ?Sized>(tree: &T, pos: LogPos) -> Result<Event> {
    log::read_event_at(tree.storage().as_ref(), &tree.layout().log(), pos)
}

/// The time a point-in-time view of `when` is cut at, looked up in
/// `tree`'s data dir: a log position or an event number resolves to that
/// event's time (see [`parse_when`]).
pub fn resolve_when<T: TreeRead + ?Sized>(tree: &T, when: When) -> Result<Timestamp> {
    let ix = tree.index()?;
    crate::history::resolve_when(tree.storage().as_ref(), &tree.layout().log(), &ix, tree.machine(), when)
}

/// Verifies the data dir at `dir` (see the module docs).
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    crate::verify::verify(dir)
}
