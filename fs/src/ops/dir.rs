//! Directory handles and listings: a handle holds the cookies of
//! [`dircursor`] (bounded), never a copy of the directory; each reply reads
//! one page of the tree.

use std::sync::Arc;

use engine::event::NodeKind;
use engine::ids::NodeId;
use fuser::{Errno, FileAttr, FileType};
use parking_lot::Mutex;

use crate::attr::file_type;
use crate::dircursor::{self, Add, Cookies};
use crate::errno::errno;

use super::*;

impl Core {
    pub(crate) fn do_opendir(&self, ino: u64) -> Result<u64, Errno> {
        let node = self.node_of(ino)?;
        let st = self.state(node)?;
        if st.kind != NodeKind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let fh = self.fresh_fh();
        let handle = DirHandle { node, cookies: Cookies::new(dircursor::COOKIE_BYTES) };
        self.dirs.lock().insert(fh, Arc::new(Mutex::new(handle)));
        self.inodes.open(ino);
        Ok(fh)
    }

    pub(crate) fn do_releasedir(&self, ino: u64, fh: u64) {
        self.dirs.lock().remove(&fh);
        self.inodes.close(ino);
    }

    /// Fills one reply of handle `fh` (directory `ino`) from `offset`: see
    /// [`dircursor::fill`]. The handle's mutex is held for the reply, so
    /// its cookies change in one reply at a time.
    pub(crate) fn fill_dir(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        add: impl FnMut(u64, &Listed) -> Add,
    ) -> Result<(), Errno> {
        let handle = self.dirs.lock().get(&fh).cloned();
        let Some(handle) = handle else {
            // No handle (opendir not seen): cookies last for this reply.
            let mut cookies = Cookies::new(0);
            return self.fill_from(self.node_of(ino)?, &mut cookies, offset, add);
        };
        let mut h = handle.lock();
        let DirHandle { node, cookies } = &mut *h;
        self.fill_from(*node, cookies, offset, add)
    }

    fn fill_from(
        &self,
        dir: NodeId,
        cookies: &mut Cookies,
        offset: u64,
        add: impl FnMut(u64, &Listed) -> Add,
    ) -> Result<(), Errno> {
        let dots = || {
            let st = self.state(dir)?;
            let parent = if dir == NodeId::ROOT { dir } else { st.parent };
            Ok([
                Listed { name: b".".to_vec(), node: dir, kind: FileType::Directory },
                Listed { name: b"..".to_vec(), node: parent, kind: FileType::Directory },
            ])
        };
        let fetch = |after: Option<&[u8]>, limit: usize| {
            let page = self.tree.read_dir(dir, after, limit).map_err(|e| errno(&e))?;
            Ok(page.into_iter().map(|e| Listed { name: e.name, node: e.node, kind: file_type(e.kind) }).collect())
        };
        dircursor::fill(cookies, offset, dots, fetch, |e: &Listed| e.name.as_slice(), add)
    }

    /// The inode number to show for a listed entry without a lookup.
    pub(crate) fn d_ino(&self, entry: &Listed) -> u64 {
        self.inodes.d_ino(entry.node)
    }

    /// For readdirplus: the entry's attributes, with a lookup registered
    /// (`.` and `..` get none, as the kernel takes none for them). `None` if
    /// the name no longer leads to the node listed (it changed since the
    /// page was read, and the kernel would keep a dentry it hands out for
    /// the TTL).
    pub(crate) fn plus_entry(&self, dir: u64, entry: &Listed) -> Option<(FileAttr, bool)> {
        let dots = entry.name == b"." || entry.name == b"..";
        if dots {
            let st = self.tree.node(entry.node).ok()?;
            let ino = self.inodes.d_ino(entry.node);
            return Some((self.attr_of(ino, &st), false));
        }
        let parent = self.node_of(dir).ok()?;
        let resolve = || match self.tree.lookup(parent, &entry.name) {
            Ok(st) if st.id == entry.node => Ok(st),
            _ => Err(Errno::ENOENT),
        };
        self.remembered(dir, &entry.name, resolve).ok().map(|attr| (attr, true))
    }

    /// Undo the lookup of [`Core::plus_entry`] when the entry did not fit.
    pub(crate) fn unplus(&self, ino: u64) {
        self.inodes.forget(ino, 1);
    }

    // ---- xattrs ------------------------------------------------------
}
