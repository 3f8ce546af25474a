//! The read path: a small cache of recently read blocks, the one
//! read-ahead planner, and reads that overlay buffered bytes on stored
//! blocks.

use super::*;

impl Shared {
    pub(super) fn cached(&self, hash: &BlockHash) -> Option<Arc<ByteWindow>> {
        let mut c = self.cache.lock();
        let pos = c.iter().position(|(h, _)| h == hash)?;
        let hit = c.remove(pos)?;
        let data = hit.1.clone();
        c.push_front(hit);
        Some(data)
    }

    /// A block's bytes, through a small cache of recently read blocks. A
    /// block another thread is loading (a read-ahead) is waited for, not
    /// read again.
    pub(super) fn load(&self, block: &BlockRef) -> Result<Arc<ByteWindow>, Errno> {
        self.load_with(None, block, false)
    }

    /// [`Shared::load`] of stored block `index` of `node`: if it must be
    /// fetched, the file's next blocks come with it (see
    /// [`TreeRead::read_file_block`]).
    pub(super) fn load_at(&self, node: NodeId, index: u64, block: &BlockRef) -> Result<Arc<ByteWindow>, Errno> {
        self.load_with(Some((node, index)), block, false)
    }

    /// [`Shared::load`], of a block of a file (`at`) or not; `ahead`: for a
    /// read-ahead, which reads past the OS's cache (the kernel caches what
    /// the reader gets from the mount, so a second copy of the blob in the
    /// page cache would only cost).
    pub(super) fn load_with(
        &self,
        at: Option<(NodeId, u64)>,
        block: &BlockRef,
        ahead: bool,
    ) -> Result<Arc<ByteWindow>, Errno> {
        loop {
            if let Some(data) = self.cached(&block.hash) {
                return Ok(data);
            }
            let mut loading = self.loading.lock();
            if loading.insert(block.hash) {
                break;
            }
            // Bounded wait: a loader that failed removes its entry too.
            self.loaded.wait_for(&mut loading, Duration::from_millis(100));
        }
        // Removes the entry however this ends, a panic included, so that
        // no reader waits for a load nobody is doing.
        let _loading = Loading { shared: self, hash: block.hash };
        let read = match at {
            Some((node, index)) => self.tree.read_file_block(node, index, block, ahead),
            None => self.tree.read_block_window(block, ahead),
        };
        read.map_err(|e| errno(&e)).map(|data| {
            let data = Arc::new(data);
            self.insert_cached(block.hash, data.clone());
            data
        })
    }

    pub(super) fn busy_or_cached(&self, hash: &BlockHash) -> bool {
        self.loading.lock().contains(hash) || self.cached(hash).is_some()
    }

    pub(super) fn insert_cached(&self, hash: BlockHash, data: Arc<ByteWindow>) {
        let mut c = self.cache.lock();
        if c.iter().any(|(h, _)| *h == hash) {
            return;
        }
        c.push_front((hash, data));
        let mut total: usize = c.iter().map(|(_, d)| d.len()).sum();
        while total > READ_CACHE_BYTES && c.len() > 1 {
            if let Some((_, d)) = c.pop_back() {
                total -= d.len();
            }
        }
    }

    /// Loads the stored block `index` of `node` into the cache (a
    /// read-ahead; failures are left for the real read to report). A block
    /// not stored here is fetched by one read-ahead thread at a time; the
    /// window past this one was handed to the prefetchers already (see
    /// [`WriteBack::maybe_read_ahead`]), so once a stream is under way its
    /// blocks are local by the time these threads come to them.
    pub(super) fn read_ahead(&self, node: NodeId, index: u64) {
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        let Ok(blocks) = self.tree.file_blocks(node, index, 1) else {
            return;
        };
        for (i, b) in blocks {
            if self.busy_or_cached(&b.hash) {
                continue;
            }
            if self.tree.blobs().contains(&b.hash) {
                let _ = self.load_with(Some((node, i)), &b, true);
                continue;
            }
            let _one_fetch = self.fetching.lock();
            if !self.busy_or_cached(&b.hash) {
                let _ = self.load_with(Some((node, i)), &b, true);
            }
        }
    }
}

/// A block being loaded, for [`Shared::load_with`]: dropped, it takes the
/// block out of `loading` and wakes the threads waiting for it.
pub(super) struct Loading<'a> {
    shared: &'a Shared,
    hash: BlockHash,
}

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        self.shared.loading.lock().remove(&self.hash);
        self.shared.loaded.notify_all();
    }
}

/// A request to read ahead: block `index` of `node`.
pub(super) struct Ahead {
    pub(super) node: NodeId,
    pub(super) index: u64,
}

impl WriteBack {
    /// Reads `len` bytes at `offset`, buffered writes overlaid on stored
    /// blocks; holes and short blocks read as zeros.
    pub(crate) fn read(&self, node: NodeId, offset: u64, len: u32) -> Result<ReadBuf, Errno> {
        let bs = self.shared.block_size;
        let mut covered: Vec<u64> = Vec::new();
        let mut refs: Vec<(u64, BlockRef)> = Vec::new();
        let mut buffered: Option<(Vec<u8>, u64, u64)> = None;
        if let Some(file) = self.existing(node) {
            let st = file.st.lock();
            if let Some(size) = st.size {
                let end = size.min(offset.saturating_add(u64::from(len)));
                let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
                if end > offset {
                    for (&i, slot) in st.slots.range(offset / bs..=(end - 1) / bs) {
                        let start = i * bs;
                        match slot {
                            Slot::Buf { data, .. } => copy_block(&mut buf, offset, start, data),
                            Slot::Hashing { data, .. } => copy_block(&mut buf, offset, start, data),
                            Slot::Ready { block: Some(b), .. } => refs.push((i, *b)),
                            Slot::Ready { block: None, .. } => {}
                        }
                        covered.push(i);
                    }
                }
                buffered = Some((buf, end, size));
            }
        }
        let out = match buffered {
            Some(out) => out,
            None => {
                let size = self.tree().node(node).map_err(|e| errno(&e))?.size;
                let end = size.min(offset.saturating_add(u64::from(len)));
                if let Some(whole) = self.read_in_one_block(node, offset, end, size)? {
                    return Ok(whole);
                }
                (vec![0u8; end.saturating_sub(offset) as usize], end, size)
            }
        };
        self.read_copied(node, offset, covered, refs, out).map(ReadBuf::Owned)
    }

    /// A read of `offset..end` (of a file of `size` bytes, with no buffered
    /// writes) that lies in one stored block: a range of the cached block,
    /// without a copy (the common case of a sequential reader, whose
    /// requests are block-aligned once the kernel's read-ahead is as large
    /// as a block). `None` otherwise.
    pub(super) fn read_in_one_block(
        &self,
        node: NodeId,
        offset: u64,
        end: u64,
        size: u64,
    ) -> Result<Option<ReadBuf>, Errno> {
        let bs = self.shared.block_size;
        let index = offset / bs;
        if end <= offset || (end - 1) / bs != index {
            return Ok(None);
        }
        self.maybe_read_ahead(node, index, index, size.div_ceil(bs));
        let stored = self.tree().file_blocks(node, index, 1).map_err(|e| errno(&e))?;
        let Some((_, block)) = stored.first() else { return Ok(None) };
        let data = self.shared.load_at(node, index, block)?;
        let (from, to) = ((offset - index * bs) as usize, (end - index * bs) as usize);
        // A block shorter than the range (its tail reads as zeros) takes the
        // copying path.
        if to > data.len() {
            return Ok(None);
        }
        Ok(Some(ReadBuf::Block(data, from..to)))
    }

    /// A read of `offset..end` assembled in `buf` (of a file of `size`
    /// bytes) from buffered slots and stored blocks (holes and short blocks
    /// read as zeros); `covered` blocks are buffered, `refs` are buffered
    /// blocks already stored.
    pub(super) fn read_copied(
        &self,
        node: NodeId,
        offset: u64,
        covered: Vec<u64>,
        mut refs: Vec<(u64, BlockRef)>,
        (mut buf, end, size): (Vec<u8>, u64, u64),
    ) -> Result<Vec<u8>, Errno> {
        let bs = self.shared.block_size;
        if end <= offset {
            return Ok(Vec::new());
        }
        let first = offset / bs;
        let last = (end - 1) / bs;
        self.maybe_read_ahead(node, first, last, size.div_ceil(bs));
        if (last - first + 1) as usize > covered.len() {
            let stored = self.tree().file_blocks(node, first, last - first + 1).map_err(|e| errno(&e))?;
            refs.extend(stored.into_iter().filter(|(i, _)| covered.binary_search(i).is_err()));
        }
        for (i, b) in refs {
            let data = self.shared.load_at(node, i, &b)?;
            copy_block(&mut buf, offset, i * bs, &data);
        }
        Ok(buf)
    }
}

impl WriteBack {
    /// The one read-ahead planner. When a read of `first..=last` continues
    /// a sequential stream (see [`ahead_step`]), asks the read-ahead threads
    /// for the blocks of the read-ahead window past `last` (of the file's
    /// `blocks`) that no earlier read asked for, and the engine's
    /// prefetchers ([`TreeRead::prefetch`]) for the window after that, so
    /// blocks not stored here are fetched from the remote, many to a round
    /// trip, before the threads come to them. Each block goes out to the
    /// threads as its own request, so they load a stream's blocks side by
    /// side.
    pub(super) fn maybe_read_ahead(&self, node: NodeId, first: u64, last: u64, blocks: u64) {
        let window = ahead_window(self.shared.block_size);
        let ask = {
            let mut streams = self.streams.lock();
            if streams.len() >= READ_AHEAD_NODES {
                streams.clear();
            }
            let (stream, ask) = ahead_step(streams.get(&node).copied(), first, last, window);
            streams.insert(node, stream);
            ask.start..ask.end.min(blocks)
        };
        if !ask.is_empty() {
            self.tree().prefetch(node, ask.end..ask.end.saturating_add(window).min(blocks));
        }
        if let Some(tx) = &self.ahead_tx {
            // A full queue means the threads are behind: the reader loads
            // the rest itself.
            for index in ask {
                if tx.try_send(Ahead { node, index }).is_err() {
                    break;
                }
            }
        }
    }
}

/// Blocks read ahead at `block_size`: [`READ_AHEAD_BYTES`] worth, at least
/// one, at most [`READ_AHEAD_MAX_BLOCKS`].
pub(super) fn ahead_window(block_size: u64) -> u64 {
    (READ_AHEAD_BYTES / block_size.max(1)).clamp(1, READ_AHEAD_MAX_BLOCKS)
}

/// Where a node's sequential reading stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stream {
    /// The block after the last one of the latest read.
    pub(super) next: u64,
    /// The end (exclusive) of the blocks asked for read-ahead.
    pub(super) asked: u64,
}

/// The read-ahead decision for a read of blocks `first..=last`, given the
/// node's stream (`None`: no read yet) and the window in blocks: the new
/// stream, and the blocks to ask for now.
///
/// - A read within the block just read asks for nothing (a block read in
///   several requests, or random reads that hit one block twice).
/// - A read from the start of the file, or one that starts at most two
///   windows before the end of what was asked for (the kernel's requests
///   for one stream arrive out of order across the FUSE threads), continues
///   a stream: it asks for what its window adds.
/// - Any other read only marks where a stream would continue.
pub(super) fn ahead_step(stream: Option<Stream>, first: u64, last: u64, window: u64) -> (Stream, std::ops::Range<u64>) {
    let next = last + 1;
    let wanted = next + window;
    match stream {
        Some(s) if next == s.next && first + 1 >= s.next => (s, 0..0),
        Some(s) if first <= s.asked && first + 2 * window >= s.asked => {
            if wanted <= s.asked {
                (Stream { next, asked: s.asked }, 0..0)
            } else {
                (Stream { next, asked: wanted }, s.asked.max(next)..wanted)
            }
        }
        _ if first == 0 => (Stream { next, asked: wanted }, next..wanted),
        _ => (Stream { next, asked: next }, 0..0),
    }
}

/// What a read returns: a buffer of its own, or a range of a cached block.
pub(crate) enum ReadBuf {
    /// Assembled for this read.
    Owned(Vec<u8>),
    /// Part of a cached block, shared.
    Block(Arc<ByteWindow>, std::ops::Range<usize>),
}

impl std::ops::Deref for ReadBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            ReadBuf::Owned(v) => v,
            ReadBuf::Block(b, r) => &b[r.clone()],
        }
    }
}

impl std::fmt::Debug for ReadBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReadBuf({} bytes)", self.len())
    }
}

impl PartialEq<Vec<u8>> for ReadBuf {
    fn eq(&self, other: &Vec<u8>) -> bool {
        **self == other[..]
    }
}

/// Copies the part of a block (starting at file offset `start`) that falls
/// in `buf` (starting at file offset `offset`).
pub(super) fn copy_block(buf: &mut [u8], offset: u64, start: u64, data: &[u8]) {
    let buf_end = offset + buf.len() as u64;
    let data_end = start + data.len() as u64;
    let from = offset.max(start);
    let to = buf_end.min(data_end);
    if from >= to {
        return;
    }
    let n = (to - from) as usize;
    let dst = (from - offset) as usize;
    let src = (from - start) as usize;
    buf[dst..dst + n].copy_from_slice(&data[src..src + n]);
}
