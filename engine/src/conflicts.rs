//! Content conflicts as a user sees them: the conflict copies the merge made
//! when two machines changed one file's content concurrently (see `merge`,
//! *Content versions*), and the ways to end one.
//!
//! Always true: a conflict is open while its copy is in the tree and marked
//! (`conflict_of`); it ends only through ordinary events in our log (a
//! remove, a content change, [`Change::Resolve`]), so every replica sees it
//! end the same way, and history keeps both versions.

use crate::error::{Error, FsError, Result};
use crate::event::{BlockChange, Change, NodeKind};
use crate::ids::{MachineId, NodeId, Timestamp};
use crate::index::Queries;
use crate::merge::ConflictKind;
use crate::read::TreeRead;
use crate::LiveTree;

/// An open content conflict: the original kept its name and version, the
/// copy holds the other machine's whole version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentConflict {
    /// The conflict copy.
    pub copy: NodeId,
    /// Where the copy is now.
    pub copy_path: Vec<u8>,
    /// The machine whose version the copy holds.
    pub copy_writer: MachineId,
    /// When that version was made.
    pub copy_time: Timestamp,
    /// The file that kept the name.
    pub original: NodeId,
    /// Where the original is now (the path it had, if it was removed since).
    pub original_path: Vec<u8>,
    /// The machine whose version kept the name.
    pub kept_writer: MachineId,
    /// When that version was made.
    pub kept_time: Timestamp,
}

/// Which version `resolve` keeps under the original's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// The original's; the copy is removed.
    Original,
    /// The copy's content replaces the original's; the copy is removed.
    Copy,
    /// Both: the copy stays as an ordinary file.
    Both,
}

impl LiveTree {
    /// Every open content conflict, oldest first.
    pub fn content_conflicts(&self) -> Result<Vec<ContentConflict>> {
        let mut out = Vec::new();
        for c in self.index()?.conflicts()? {
            let ConflictKind::Content { kept, kept_time } = c.kind else { continue };
            let copy = self.node(c.node)?;
            if copy.removed || copy.conflict_of.is_none() {
                continue;
            }
            out.push(ContentConflict {
                copy: c.node,
                copy_path: self.path_of(c.node)?,
                copy_writer: c.event.0,
                copy_time: c.time,
                original: c.winner,
                original_path: self.path_of(c.winner)?,
                kept_writer: kept.machine,
                kept_time,
            });
        }
        Ok(out)
    }

    /// Ends the open content conflict of `copy` (see [`Keep`]), in one
    /// group of events: the other version stays in history.
    pub fn resolve_conflict(&self, copy: NodeId, keep: Keep) -> Result<()> {
        self.change(|ix| {
            let c = ix.node(copy)?.filter(|c| !c.removed).ok_or(Error::fs(copy, FsError::NotFound))?;
            let Some(original) = c.conflict_of else {
                return Err(Error::Invalid(format!("{copy} is not an open conflict copy")));
            };
            let changes = match keep {
                Keep::Original => vec![(copy, Change::Remove)],
                Keep::Both => vec![(copy, Change::Resolve)],
                Keep::Copy => {
                    let o = ix.node(original)?.ok_or(Error::fs(original, FsError::NotFound))?;
                    if o.kind != NodeKind::File {
                        return Err(Error::fs(original, FsError::WrongKind));
                    }
                    let mine: std::collections::BTreeMap<_, _> =
                        ix.blocks(original, 0, u64::MAX)?.into_iter().collect();
                    let theirs: std::collections::BTreeMap<_, _> = ix.blocks(copy, 0, u64::MAX)?.into_iter().collect();
                    let mut out = Vec::new();
                    if c.size < o.size {
                        out.push((original, Change::Truncate { size: c.size, tail: None }));
                    }
                    let blocks = theirs
                        .iter()
                        .filter(|(i, b)| mine.get(i) != Some(b))
                        .map(|(i, b)| BlockChange { index: *i, block: Some(*b) })
                        .chain(
                            mine.keys()
                                .filter(|i| !theirs.contains_key(i))
                                .map(|i| BlockChange { index: *i, block: None }),
                        )
                        .collect();
                    out.push((original, Change::Content { size: c.size, blocks }));
                    out.push((copy, Change::Remove));
                    out
                }
            };
            Ok((changes, ()))
        })
    }
}
