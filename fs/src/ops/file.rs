//! Open files: open, create, read, write, flush, release, fsync,
//! fallocate, lseek and copy_file_range.

use std::ffi::OsStr;

use engine::event::{AttrChange, NodeKind};
use engine::ids::NodeId;
use engine::NodeState;
use fuser::{Errno, FileAttr, FileType};

use crate::errno::errno;

use super::*;

impl Core {
    pub(crate) fn do_open(&self, ino: u64, flags: i32) -> Result<u64, Errno> {
        let node = self.node_of(ino)?;
        let st = self.state(node)?;
        match st.kind {
            NodeKind::Dir => return Err(Errno::EISDIR),
            NodeKind::Symlink => return Err(Errno::ELOOP),
            _ => {}
        }
        if flags & libc::O_ACCMODE != libc::O_RDONLY && self.is_read_only() {
            return Err(Errno::EROFS);
        }
        if flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY && st.kind == NodeKind::File {
            self.wb.truncate(node, 0)?;
        }
        self.inodes.open(ino);
        if st.kind == NodeKind::File && writes(flags) {
            self.wb.begin_line(node);
        }
        Ok(self.fresh_fh())
    }

    /// `create`: a new regular file, opened. Returns its attributes and handle.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn do_create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        uid: u32,
        gid: u32,
    ) -> Result<(FileAttr, u64), Errno> {
        let made = self.make(parent, name, NodeKind::File, mode, umask, 0, b"", uid, gid);
        let attr = match made {
            Ok(a) => a,
            Err(e) if e == Errno::EEXIST && flags & libc::O_EXCL == 0 => {
                // Lost a race with another creator: open what is there.
                let a = self.do_lookup(parent, name)?;
                if a.kind != FileType::RegularFile {
                    self.inodes.forget(a.ino.0, 1);
                    return Err(Errno::EEXIST);
                }
                let fh = self.do_open(a.ino.0, flags)?;
                return Ok((self.do_getattr(a.ino.0)?, fh));
            }
            Err(e) => return Err(e),
        };
        self.inodes.open(attr.ino.0);
        match self.node_of(attr.ino.0) {
            Ok(node) if writes(flags) => self.wb.begin_new_line(node),
            _ => {}
        }
        Ok((attr, self.fresh_fh()))
    }

    pub(crate) fn do_read(&self, ino: u64, offset: u64, size: u32) -> Result<crate::writeback::ReadBuf, Errno> {
        let node = self.node_of(ino)?;
        self.wb.read(node, offset, size)
    }

    pub(crate) fn do_write(&self, ino: u64, offset: u64, data: &[u8], open_flags: i32) -> Result<u32, Errno> {
        if self.is_read_only() {
            return Err(Errno::EROFS);
        }
        let node = self.node_of(ino)?;
        self.wb.write(node, offset, data, open_flags & libc::O_APPEND != 0)
    }

    pub(crate) fn do_flush(&self, ino: u64) -> Result<(), Errno> {
        let node = self.node_of(ino)?;
        self.wb.flush(node)
    }

    /// A handle opened with `flags` is released.
    pub(crate) fn do_release(&self, ino: u64, flags: i32) -> Result<(), Errno> {
        let node = self.node_of(ino);
        let res = match node {
            Ok(node) => self.wb.flush(node),
            Err(e) => Err(e),
        };
        if let (Ok(node), true) = (node, writes(flags)) {
            self.wb.end_line(node);
        }
        self.inodes.close(ino);
        res
    }

    pub(crate) fn do_fsync(&self, ino: u64) -> Result<(), Errno> {
        let node = self.node_of(ino)?;
        self.wb.flush(node)?;
        self.live.as_ref().map_or(Ok(()), |l| l.sync()).map_err(|e| errno(&e))
    }

    pub(crate) fn do_fsyncdir(&self, ino: u64) -> Result<(), Errno> {
        self.node_of(ino)?;
        self.live.as_ref().map_or(Ok(()), |l| l.sync()).map_err(|e| errno(&e))
    }

    /// `fallocate`: `mode` 0 extends the file (nothing is set aside:
    /// blocks are content-addressed and zeros are holes, but the part of
    /// the range past the end of the file must fit on the local disk, or
    /// ENOSPC); `KEEP_SIZE` leaves the size; `PUNCH_HOLE` (with
    /// `KEEP_SIZE`, as Linux requires) and `ZERO_RANGE` zero the range as
    /// a content change (see `LiveTree::zero_range_on`). Set-user-id and
    /// set-group-id go as a write by `caller` would take them; the answer
    /// says whether any went (the kernel's cached mode is then stale: it
    /// takes set-group-id off only with group-execute, see
    /// [`privs_to_kill`]). Work is in proportion to the blocks stored in
    /// the range, never to its length.
    pub(crate) fn do_fallocate(
        &self,
        ino: u64,
        offset: u64,
        length: u64,
        mode: i32,
        caller: Caller,
    ) -> Result<bool, Errno> {
        let node = self.node_of(ino)?;
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        let known = libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 || (punch && (!keep || zero)) {
            return Err(Errno::EOPNOTSUPP);
        }
        if length == 0 {
            return Err(Errno::EINVAL);
        }
        let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
        if end > i64::MAX as u64 {
            return Err(Errno::EFBIG);
        }
        let st = self.state(node)?;
        match st.kind {
            NodeKind::File => {}
            NodeKind::Dir => return Err(Errno::EISDIR),
            _ => return Err(Errno::ENODEV),
        }
        if self.is_read_only() {
            return Err(Errno::EROFS);
        }
        if punch || zero {
            let killed = self.kill_privs(node, &st, caller)?;
            self.wb.zero_range(node, offset, length, keep)?;
            return Ok(killed);
        }
        let size = self.wb.dirty_view(node).map_or(st.size, |d| d.size);
        self.live()?.check_room(end.saturating_sub(size.max(offset))).map_err(|e| errno(&e))?;
        let killed = self.kill_privs(node, &st, caller)?;
        if keep {
            return Ok(killed);
        }
        self.wb.with_committed(node, || {
            let size = self.state(node)?.size;
            if end > size {
                self.wb.truncate_committed(node, end)?;
            }
            Ok(())
        })?;
        Ok(killed)
    }

    /// Takes set-user-id and set-group-id off file `node` (state `st`) as
    /// a write by `caller` would (see [`privs_to_kill`]); whether any went.
    fn kill_privs(&self, node: NodeId, st: &NodeState, caller: Caller) -> Result<bool, Errno> {
        let kill = privs_to_kill(st.kind, st.attrs.mode, st.attrs.gid, caller.uid, |gid| caller.in_group(gid));
        if kill == 0 {
            return Ok(false);
        }
        let change = AttrChange { mode: Some(st.attrs.mode & !kill & 0o7777), ..AttrChange::default() };
        self.live()?.set_attrs(node, change).map(|_| true).map_err(|e| errno(&e))
    }

    /// `SEEK_DATA` / `SEEK_HOLE`: holes are blocks the file does not store.
    /// Buffered writes are committed first; then the next stored block (or
    /// the end of a run of them) is found through the index, so the cost
    /// depends on the blocks stored, never on the size of a hole.
    pub(crate) fn do_lseek(&self, ino: u64, offset: i64, whence: i32) -> Result<i64, Errno> {
        let node = self.node_of(ino)?;
        if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
            return Err(Errno::EINVAL);
        }
        let offset = u64::try_from(offset).map_err(|_| Errno::ENXIO)?;
        let bs = self.wb.block_size();
        self.wb.with_committed(node, || {
            let size = self.state(node)?.size;
            if offset >= size {
                return Err(Errno::ENXIO);
            }
            let index = offset / bs;
            let found = if whence == libc::SEEK_DATA {
                match self.tree.next_data(node, index).map_err(|e| errno(&e))? {
                    Some(i) if i.saturating_mul(bs) < size => offset.max(i * bs),
                    _ => return Err(Errno::ENXIO),
                }
            } else {
                let hole = self.tree.next_hole(node, index).map_err(|e| errno(&e))?;
                offset.max(hole.saturating_mul(bs)).min(size)
            };
            i64::try_from(found).map_err(|_| Errno::EOVERFLOW)
        })
    }

    /// `copy_file_range`: whole blocks at the same place within a block on
    /// both sides share the source's blocks (no byte read or written, no
    /// room taken: the references are copied); the rest is read and
    /// written. Copies up to the end of the source, at most
    /// [`COPY_MAX`] bytes a call (fewer when the range holds many stored
    /// blocks); the caller asks again for the rest, as for a short write.
    pub(crate) fn do_copy_file_range(
        &self,
        ino_in: u64,
        off_in: u64,
        ino_out: u64,
        off_out: u64,
        len: u64,
        flags: u64,
    ) -> Result<u32, Errno> {
        if flags != 0 {
            return Err(Errno::EINVAL);
        }
        if self.is_read_only() {
            return Err(Errno::EROFS);
        }
        let (src, dst) = (self.node_of(ino_in)?, self.node_of(ino_out)?);
        for n in [src, dst] {
            match self.state(n)?.kind {
                NodeKind::File => {}
                NodeKind::Dir => return Err(Errno::EISDIR),
                _ => return Err(Errno::EINVAL),
            }
        }
        self.wb.flush(src)?;
        let src_size = self.state(src)?.size;
        if off_in >= src_size || len == 0 {
            return Ok(0);
        }
        let len = len.min(src_size - off_in).min(COPY_MAX);
        if src == dst && off_in < off_out.saturating_add(len) && off_out < off_in + len {
            return Err(Errno::EINVAL);
        }
        let end = off_out.checked_add(len).ok_or(Errno::EFBIG)?;
        if end > i64::MAX as u64 {
            return Err(Errno::EFBIG);
        }
        let bs = self.wb.block_size();
        let plan = copy_plan(off_in, off_out, len, bs);
        let mut done = self.copy_bytes(src, off_in, dst, off_out, plan.head)?;
        if done < plan.head {
            return Ok(done as u32);
        }
        if plan.blocks > 0 {
            let first_in = (off_in + plan.head) / bs;
            let first_out = (off_out + plan.head) / bs;
            let shared = self.wb.share_blocks(src, first_in, dst, first_out, plan.blocks)?;
            done += shared * bs;
            if shared < plan.blocks {
                return Ok(done as u32);
            }
        }
        done += self.copy_bytes(src, off_in + done, dst, off_out + done, plan.tail)?;
        Ok(done as u32)
    }

    /// Copies `len` bytes of `src` at `off_in` to `dst` at `off_out`
    /// through the write-back (as a program's read and write would);
    /// returns how many (fewer at the end of the source).
    fn copy_bytes(&self, src: NodeId, off_in: u64, dst: NodeId, off_out: u64, len: u64) -> Result<u64, Errno> {
        const CHUNK: u64 = 1 << 20;
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK) as u32;
            let data = self.wb.read(src, off_in + done, n)?;
            if data.is_empty() {
                break;
            }
            self.wb.write(dst, off_out + done, &data, false)?;
            done += data.len() as u64;
        }
        Ok(done)
    }

    // ---- directories -------------------------------------------------
}

/// Most bytes one `copy_file_range` request copies (it answers with a
/// `u32` count; shared blocks cost nothing, bytes copied through the
/// write-back do).
pub(crate) const COPY_MAX: u64 = 1 << 30;

/// Most bytes one `copy_file_range` request copies through the write-back
/// when no block can be shared (the offsets are not at the same place
/// within a block).
pub(super) const COPY_BYTES_MAX: u64 = 16 << 20;

/// How a `copy_file_range` of `len` bytes from `off_in` to `off_out` is
/// split: `head` bytes copied, then `blocks` whole blocks shared, then
/// `tail` bytes copied. Blocks are shared only when both offsets are at
/// the same place within a block; otherwise everything is copied (at most
/// [`COPY_BYTES_MAX`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CopyPlan {
    pub head: u64,
    pub blocks: u64,
    pub tail: u64,
}

pub(crate) fn copy_plan(off_in: u64, off_out: u64, len: u64, bs: u64) -> CopyPlan {
    if off_in % bs != off_out % bs {
        return CopyPlan { head: len.min(COPY_BYTES_MAX), blocks: 0, tail: 0 };
    }
    let head = ((bs - off_in % bs) % bs).min(len);
    let blocks = (len - head) / bs;
    CopyPlan { head, blocks, tail: len - head - blocks * bs }
}

/// The bits of `mode` (a node of `kind` with group `gid`) that a write by
/// `uid` takes off, as the kernel's VFS does: none for root (who has
/// `CAP_FSETID`) or for other than regular files; set-user-id always;
/// set-group-id when group-execute is set (else it marks mandatory
/// locking) or when the writer is not in the file's group.
pub(crate) fn privs_to_kill(kind: NodeKind, mode: u32, gid: u32, uid: u32, in_group: impl Fn(u32) -> bool) -> u32 {
    if uid == 0 || kind != NodeKind::File {
        return 0;
    }
    let mut kill = mode & libc::S_ISUID;
    if mode & libc::S_ISGID != 0 && (mode & libc::S_IXGRP != 0 || !in_group(gid)) {
        kill |= libc::S_ISGID;
    }
    kill
}

/// Whether a handle opened with `flags` may write.
fn writes(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY
}
