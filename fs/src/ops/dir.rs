//! Directory handles and listings: a listing is a snapshot taken at
//! `opendir`, so offsets are positions in it.

use std::sync::Arc;

use engine::event::NodeKind;
use engine::ids::NodeId;
use fuser::{Errno, FileAttr, FileType};
use parking_lot::Mutex;

use crate::attr::file_type;
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
        self.dirs.lock().insert(fh, Arc::new(Mutex::new(DirHandle { node, listing: None })));
        self.inodes.open(ino);
        Ok(fh)
    }

    pub(crate) fn do_releasedir(&self, ino: u64, fh: u64) {
        self.dirs.lock().remove(&fh);
        self.inodes.close(ino);
    }

    fn snapshot(&self, dir: NodeId) -> Result<Vec<Listed>, Errno> {
        let st = self.state(dir)?;
        let mut out = vec![
            Listed { name: b".".to_vec(), node: dir, kind: FileType::Directory },
            Listed {
                name: b"..".to_vec(),
                node: if dir == NodeId::ROOT { dir } else { st.parent },
                kind: FileType::Directory,
            },
        ];
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.tree.read_dir(dir, after.as_deref(), DIR_PAGE).map_err(|e| errno(&e))?;
            let n = page.len();
            for e in page {
                after = Some(e.name.clone());
                out.push(Listed { name: e.name, node: e.node, kind: file_type(e.kind) });
            }
            if n < DIR_PAGE {
                break;
            }
        }
        Ok(out)
    }

    /// The listing of handle `fh` from position `offset` on. Position 0
    /// (re)takes the snapshot, so `rewinddir` sees new entries.
    pub(crate) fn listing(&self, ino: u64, fh: u64, offset: u64) -> Result<(Arc<Vec<Listed>>, usize), Errno> {
        let handle = self.dirs.lock().get(&fh).cloned();
        let handle = match handle {
            Some(h) => h,
            None => {
                // No handle (opendir not seen): list statelessly.
                let node = self.node_of(ino)?;
                return Ok((Arc::new(self.snapshot(node)?), offset as usize));
            }
        };
        let mut h = handle.lock();
        let listing = match (&h.listing, offset) {
            (Some(l), o) if o != 0 => l.clone(),
            _ => {
                let l = Arc::new(self.snapshot(h.node)?);
                h.listing = Some(l.clone());
                l
            }
        };
        Ok((listing, usize::try_from(offset).unwrap_or(usize::MAX)))
    }

    /// The inode number to show for a listed entry without a lookup.
    pub(crate) fn d_ino(&self, entry: &Listed) -> u64 {
        self.inodes.d_ino(entry.node)
    }

    /// For readdirplus: the entry's attributes, with a lookup registered
    /// (`.` and `..` get none, as the kernel takes none for them). `None` if
    /// the name no longer leads to the node listed in the snapshot (the
    /// snapshot serves every request of one listing, and the kernel would
    /// keep a dentry it hands out for the TTL).
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
