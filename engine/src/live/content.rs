//! Content changes of the live tree: writes, truncates, zeroed ranges and
//! shared blocks, each made on a content version (see `merge`, *Content
//! versions*) so that a writer's line never lands on a peer's bytes.

use std::collections::BTreeMap;

use super::LiveTree;
use crate::error::{Error, FsError, Result};
use crate::event::{BlockChange, BlockRef, Change, NodeKind};
use crate::ids::{EventId, NodeId};
use crate::read::TreeRead;
use crate::state::NodeState;

/// Most blocks one content change of [`LiveTree::zero_range_on`] lists.
pub const ZERO_RANGE_BATCH: usize = 4096;

/// Most stored blocks of each file one [`LiveTree::share_blocks_on`] looks at.
pub const SHARE_BATCH: usize = 1024;

impl LiveTree {
    /// Records a write: the file is now `size` bytes and `blocks` changed.
    pub fn write_blocks(&self, node: NodeId, size: u64, blocks: Vec<BlockChange>) -> Result<NodeState> {
        self.write_blocks_on(node, None, size, blocks)?;
        self.node(node)
    }

    /// [`LiveTree::write_blocks`] made on content version `base` (`None`: the
    /// one the node shows now), returning the version it makes. A caller
    /// that keeps writing one file (the mount, while the file is open)
    /// passes the version its last write made, so that its writes stay one
    /// line: if a peer's concurrent change took the name meanwhile, they go
    /// on in the conflict copy that holds that line (see `merge`), never on
    /// top of the peer's bytes.
    pub fn write_blocks_on(
        &self,
        node: NodeId,
        base: Option<EventId>,
        size: u64,
        blocks: Vec<BlockChange>,
    ) -> Result<EventId> {
        self.content_change(node, base, Change::Content { size, blocks })
    }

    /// Records content change `change` of the file `node`, made on version
    /// `base` (`None`: the one it shows), and returns the version it makes.
    fn content_change(&self, node: NodeId, base: Option<EventId>, change: Change) -> Result<EventId> {
        self.mutate(|w, ix| {
            match Self::existing_node(ix, node)?.kind {
                NodeKind::File => {}
                NodeKind::Dir => return Err(Error::fs(node, FsError::IsDir)),
                _ => return Err(Error::fs(node, FsError::WrongKind)),
            }
            w.line = base.map(|b| (node, b));
            let made = EventId { machine: self.store.config().machine, seq: w.log.last_seq() + 1 };
            Ok((vec![(node, change)], made))
        })
    }

    /// Where content version `base` of `node` lives, when it is known and
    /// not the version `node` shows.
    fn other_version(&self, node: NodeId, base: Option<EventId>) -> Result<Option<crate::merge::VersionLoc>> {
        let Some(b) = base else { return Ok(None) };
        self.read_live(|ix| match ix.node(node)?.and_then(|n| n.head) {
            Some(h) if h.event == b => Ok(None),
            _ => ix.version(b),
        })
    }

    /// The size of content version `base` of `node` (`None`, or a version
    /// not known here: the size it shows).
    pub fn version_size(&self, node: NodeId, base: Option<EventId>) -> Result<u64> {
        self.read_live(|ix| {
            let n = ix.node(node)?.ok_or(Error::fs(node, FsError::NotFound))?;
            match base {
                Some(b) if n.head.map(|h| h.event) != Some(b) => Ok(ix.version(b)?.map_or(n.size, |l| l.size)),
                _ => Ok(n.size),
            }
        })
    }

    /// Block `index` of content version `base` of `node` (`None`, or a
    /// version not known here: of the content it shows); `None` for a hole.
    pub fn version_block(&self, node: NodeId, base: Option<EventId>, index: u64) -> Result<Option<BlockRef>> {
        match self.other_version(node, base)? {
            Some(loc) => Ok(self.read_live(|ix| ix.blocks_after(loc.node, loc.key))?.get(&index).copied()),
            None => Ok(self.file_blocks(node, index, 1)?.into_iter().find(|(i, _)| *i == index).map(|(_, b)| b)),
        }
    }

    /// The content version `node` shows now (`None` for other than files).
    pub fn content_version(&self, node: NodeId) -> Result<Option<EventId>> {
        Ok(self.read_live(|ix| Ok(ix.node(node)?.and_then(|n| n.head)))?.map(|h| h.event))
    }

    /// Truncates or extends a file to `size`.
    pub fn truncate(&self, node: NodeId, size: u64) -> Result<NodeState> {
        self.truncate_on(node, None, size)?;
        self.node(node)
    }

    /// [`LiveTree::truncate`] made on content version `base` (`None`: the one
    /// the node shows now), returning the version it makes; see
    /// [`LiveTree::write_blocks_on`].
    pub fn truncate_on(&self, node: NodeId, base: Option<EventId>, size: u64) -> Result<EventId> {
        // The block that `size` cuts through, in the version the truncate
        // is made on, keeps only its bytes before the cut, so that a later
        // extension reads zeros there.
        let bs = self.block_size();
        let (index, keep) = (size / bs, (size % bs) as usize);
        let cuts = keep != 0 && size < self.version_size(node, base)?;
        let tail = match if cuts { self.version_block(node, base, index)? } else { None } {
            Some(b) if b.len as usize > keep => {
                let mut data = self.read_block(&b)?;
                data.truncate(keep);
                let block = if data.iter().all(|&x| x == 0) { None } else { Some(self.put_block(&data)?) };
                Some(BlockChange { index, block })
            }
            _ => None,
        };
        self.content_change(node, base, Change::Truncate { size, tail })
    }

    /// Zeroes `len` bytes of file `node` from `offset` (`fallocate`
    /// `PUNCH_HOLE` and `ZERO_RANGE`), made on content version `base`
    /// (`None`: the one it shows), and returns the version it makes (the
    /// last, when it takes several). Blocks the range covers whole (up to
    /// the end of the file) become holes; the blocks it cuts through keep
    /// their other bytes (a hole if nothing else is left). The file grows
    /// to `offset + len` unless `keep_size`. Recorded as content changes,
    /// each listing at most [`ZERO_RANGE_BATCH`] blocks: the work and the
    /// log grow with the blocks stored in the range, never with its length.
    pub fn zero_range_on(
        &self,
        node: NodeId,
        base: Option<EventId>,
        offset: u64,
        len: u64,
        keep_size: bool,
    ) -> Result<EventId> {
        let bs = self.block_size();
        let end = offset.checked_add(len).ok_or(Error::fs(node, FsError::Invalid))?;
        let size = self.version_size(node, base)?;
        let new_size = if keep_size { size } else { size.max(end) };
        // Past the old end everything reads as zeros already.
        let zend = end.min(size);
        let mut changes = Vec::new();
        if offset < zend {
            let (first, last) = (offset / bs, (zend - 1) / bs);
            // A block is wholly zeroed if the range covers it up to the end
            // of the file; else it keeps its bytes outside the range.
            let whole = |i: u64| offset <= i * bs && zend >= (i + 1).saturating_mul(bs).min(size);
            let mut edges = vec![first];
            if last != first {
                edges.push(last);
            }
            for &i in &edges {
                if whole(i) {
                    continue;
                }
                let Some(b) = self.version_block(node, base, i)? else { continue };
                let mut data = self.read_block(&b)?;
                let from = offset.saturating_sub(i * bs).min(data.len() as u64) as usize;
                let to = (zend - i * bs).min(data.len() as u64) as usize;
                data[from..to].fill(0);
                let block = if data.iter().all(|&x| x == 0) { None } else { Some(self.put_block(&data)?) };
                changes.push(BlockChange { index: i, block });
            }
            // The blocks in between (and the edges covered whole): only
            // those stored need a change.
            let lo = if whole(first) { first } else { first + 1 };
            let hi = if whole(last) { last + 1 } else { last };
            if lo < hi {
                for i in self.version_block_indices(node, base, lo, hi - lo)? {
                    changes.push(BlockChange { index: i, block: None });
                }
            }
            changes.sort_by_key(|c| c.index);
        }
        let mut base = base;
        let mut made = None;
        let mut batches = changes.chunks(ZERO_RANGE_BATCH).peekable();
        if batches.peek().is_none() {
            return self.content_change(node, base, Change::Content { size: new_size, blocks: Vec::new() });
        }
        for batch in batches {
            let m = self.content_change(node, base, Change::Content { size: new_size, blocks: batch.to_vec() })?;
            base = Some(m);
            made = Some(m);
        }
        made.ok_or(Error::fs(node, FsError::Invalid))
    }

    /// Indices of the stored blocks of content version `base` of `node`
    /// (see [`LiveTree::version_block`]) in `first..first+count`.
    fn version_block_indices(&self, node: NodeId, base: Option<EventId>, first: u64, count: u64) -> Result<Vec<u64>> {
        let end = first.saturating_add(count);
        Ok(match self.other_version(node, base)? {
            Some(loc) => {
                let all = self.read_live(|ix| ix.blocks_after(loc.node, loc.key))?;
                all.range(first..end).map(|(i, _)| *i).collect()
            }
            None => self.file_blocks(node, first, count)?.into_iter().map(|(i, _)| i).collect(),
        })
    }

    /// Makes blocks `dst_first..` of file `dst` share the blocks
    /// `src_first..src_first+count` of file `src` as it shows them
    /// (`copy_file_range` of whole aligned blocks: no byte is read or
    /// written, the block references are copied, so the copy takes no
    /// room), made on content version `base` of `dst`. A hole of `src`
    /// makes a hole in `dst`. The file grows to cover the blocks copied.
    ///
    /// At most [`SHARE_BATCH`] stored blocks of each file are looked at: a
    /// range with more is cut short. Returns how many blocks were copied
    /// (from the first) and the version made.
    pub fn share_blocks_on(
        &self,
        src: NodeId,
        src_first: u64,
        dst: NodeId,
        base: Option<EventId>,
        dst_first: u64,
        count: u64,
    ) -> Result<(u64, EventId)> {
        let bs = self.block_size();
        let from_src = self.read_live(|ix| ix.blocks_limited(src, src_first, count, SHARE_BATCH))?;
        let mut done = count;
        if from_src.len() >= SHARE_BATCH {
            done = done.min(from_src.last().map_or(count, |(i, _)| i - src_first + 1));
        }
        let in_dst = match self.other_version(dst, base)? {
            Some(loc) => {
                let all = self.read_live(|ix| ix.blocks_after(loc.node, loc.key))?;
                let end = dst_first.saturating_add(count);
                all.range(dst_first..end).map(|(i, _)| *i).take(SHARE_BATCH).collect::<Vec<_>>()
            }
            None => self
                .read_live(|ix| ix.blocks_limited(dst, dst_first, count, SHARE_BATCH))?
                .into_iter()
                .map(|(i, _)| i)
                .collect(),
        };
        if in_dst.len() >= SHARE_BATCH {
            done = done.min(in_dst.last().map_or(count, |i| i - dst_first + 1));
        }
        let mut changes: BTreeMap<u64, Option<BlockRef>> = BTreeMap::new();
        for i in in_dst.into_iter().filter(|i| i - dst_first < done) {
            changes.insert(i, None);
        }
        for (i, b) in from_src.into_iter().filter(|(i, _)| i - src_first < done) {
            changes.insert(i - src_first + dst_first, Some(b));
        }
        let blocks = changes.into_iter().map(|(index, block)| BlockChange { index, block }).collect();
        let covered = dst_first.saturating_add(done).saturating_mul(bs);
        let size = self.version_size(dst, base)?.max(covered);
        let made = self.content_change(dst, base, Change::Content { size, blocks })?;
        Ok((done, made))
    }
}
