//! The tree operations of the live tree (create, rename, remove, attributes
//! and extended attributes, pins), each validated as POSIX does and
//! recorded as one group of events (see `group`).

use super::LiveTree;
use crate::error::{Error, FsError, Result};
use crate::event::{AttrChange, Attrs, Change, NodeKind};
use crate::ids::{NodeId, Timestamp};
use crate::index::IndexWriter;
use crate::index::Queries;
use crate::limits::{NAME_MAX, XATTR_VALUE_MAX};
use crate::read::TreeRead;
use crate::state::{NodeState, RenameFlags, Renamed, XattrMode};
use crate::tree::NodeRecord;

fn validate_name(parent: NodeId, name: &[u8]) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.iter().any(|&b| b == b'/' || b == 0) {
        return Err(Error::fs(parent, FsError::InvalidName));
    }
    if name.len() > NAME_MAX {
        return Err(Error::fs(parent, FsError::NameTooLong));
    }
    Ok(())
}

impl LiveTree {
    pub(super) fn live_node(ix: &IndexWriter, id: NodeId) -> Result<NodeRecord> {
        match ix.node(id)? {
            Some(n) if !n.removed => Ok(n),
            _ => Err(Error::fs(id, FsError::NotFound)),
        }
    }

    /// A node that exists, removed or not: unlinked nodes stay usable
    /// through open handles (fchmod, ftruncate, fsetxattr).
    pub(super) fn existing_node(ix: &IndexWriter, id: NodeId) -> Result<NodeRecord> {
        ix.node(id)?.ok_or(Error::fs(id, FsError::NotFound))
    }

    fn child(ix: &IndexWriter, dir: NodeId, name: &[u8]) -> Result<Option<(NodeId, NodeRecord)>> {
        let dir_node = Self::live_node(ix, dir)?;
        if dir_node.kind != NodeKind::Dir {
            return Err(Error::fs(dir, FsError::NotDir));
        }
        match ix.lookup(dir, name)? {
            Some((id, _)) => Ok(Some((id, Self::live_node(ix, id)?))),
            None => Ok(None),
        }
    }

    /// Creates `name` in `parent`.
    pub fn create(
        &self,
        parent: NodeId,
        name: &[u8],
        kind: NodeKind,
        attrs: Attrs,
        target: &[u8],
    ) -> Result<NodeState> {
        self.create_with_xattrs(parent, name, kind, attrs, target, &[])
    }

    /// [`LiveTree::create`] with extended attributes set in the same mutation
    /// (a new node's inherited POSIX ACLs: it never exists without them).
    pub fn create_with_xattrs(
        &self,
        parent: NodeId,
        name: &[u8],
        kind: NodeKind,
        attrs: Attrs,
        target: &[u8],
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<NodeState> {
        validate_name(parent, name)?;
        for (n, v) in xattrs {
            if n.is_empty() || n.len() > NAME_MAX || v.len() > XATTR_VALUE_MAX {
                return Err(Error::fs(parent, FsError::Invalid));
            }
        }
        let id = self.mutate(|w, ix| {
            if Self::child(ix, parent, name)?.is_some() {
                return Err(Error::fs(parent, FsError::Exists));
            }
            let id = NodeId::new(w.next_counter, self.store.config().machine);
            w.next_counter += 1;
            let mut attrs = attrs;
            attrs.mode &= 0o7777;
            let now = Timestamp::now();
            for t in [&mut attrs.atime, &mut attrs.mtime, &mut attrs.ctime, &mut attrs.crtime] {
                if t.0 == 0 {
                    *t = now;
                }
            }
            let target = if kind == NodeKind::Symlink { target.to_vec() } else { Vec::new() };
            let mut changes = vec![(id, Change::Create { parent, name: name.to_vec(), kind, attrs, target })];
            for (name, value) in xattrs {
                changes.push((id, Change::SetXattr { name: name.clone(), value: value.clone() }));
            }
            Ok((changes, id))
        })?;
        self.node(id)
    }

    /// Changes attributes (ctime follows).
    pub fn set_attrs(&self, node: NodeId, change: AttrChange) -> Result<NodeState> {
        self.mutate(|_, ix| {
            Self::existing_node(ix, node)?;
            Ok((vec![(node, Change::SetAttrs(change))], ()))
        })?;
        self.node(node)
    }

    /// Renames `parent/name` to `new_parent/new_name`, and says which
    /// nodes moved.
    pub fn rename(
        &self,
        parent: NodeId,
        name: &[u8],
        new_parent: NodeId,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<Renamed> {
        validate_name(new_parent, new_name)?;
        if name.is_empty() || name.len() > NAME_MAX {
            return Err(Error::fs(parent, FsError::NotFound));
        }
        self.mutate(|_, ix| {
            let (src, src_node) = Self::child(ix, parent, name)?.ok_or(Error::fs(parent, FsError::NotFound))?;
            let dst = Self::child(ix, new_parent, new_name)?;
            let moves_into_self = |moved: NodeId, kind: NodeKind, into: NodeId| -> Result<bool> {
                if kind != NodeKind::Dir {
                    return Ok(false);
                }
                let mut cur = into;
                loop {
                    if cur == moved {
                        return Ok(true);
                    }
                    if cur == NodeId::ROOT {
                        return Ok(false);
                    }
                    cur = Self::live_node(ix, cur)?.parent;
                }
            };
            if moves_into_self(src, src_node.kind, new_parent)? {
                return Err(Error::fs(src, FsError::MoveIntoSelf));
            }
            let mv = |id, p: NodeId, n: &[u8]| (id, Change::Move { parent: p, name: n.to_vec() });
            if flags.exchange {
                let (dst, dst_node) = dst.ok_or(Error::fs(new_parent, FsError::NotFound))?;
                if dst == src {
                    return Ok((vec![], Renamed { moved: src, swapped: None }));
                }
                if moves_into_self(dst, dst_node.kind, parent)? {
                    return Err(Error::fs(dst, FsError::MoveIntoSelf));
                }
                return Ok((vec![(src, Change::Exchange { with: dst })], Renamed { moved: src, swapped: Some(dst) }));
            }
            let mut changes = Vec::new();
            if let Some((dst, dst_node)) = dst {
                if flags.noreplace {
                    return Err(Error::fs(new_parent, FsError::Exists));
                }
                if dst == src {
                    return Ok((vec![], Renamed { moved: src, swapped: None }));
                }
                match (src_node.kind == NodeKind::Dir, dst_node.kind == NodeKind::Dir) {
                    (true, false) => return Err(Error::fs(dst, FsError::NotDir)),
                    (false, true) => return Err(Error::fs(dst, FsError::IsDir)),
                    (true, true) if ix.has_entries(dst)? => return Err(Error::fs(dst, FsError::NotEmpty)),
                    _ => {}
                }
                changes.push((dst, Change::Remove));
            }
            changes.push(mv(src, new_parent, new_name));
            Ok((changes, Renamed { moved: src, swapped: None }))
        })
    }

    /// Removes the non-directory `parent/name`.
    pub fn unlink(&self, parent: NodeId, name: &[u8]) -> Result<()> {
        self.mutate(|_, ix| {
            let (id, n) = Self::child(ix, parent, name)?.ok_or(Error::fs(parent, FsError::NotFound))?;
            if n.kind == NodeKind::Dir {
                return Err(Error::fs(id, FsError::IsDir));
            }
            Ok((vec![(id, Change::Remove)], ()))
        })
    }

    /// Removes the empty directory `parent/name`.
    pub fn rmdir(&self, parent: NodeId, name: &[u8]) -> Result<()> {
        self.mutate(|_, ix| {
            let (id, n) = Self::child(ix, parent, name)?.ok_or(Error::fs(parent, FsError::NotFound))?;
            if n.kind != NodeKind::Dir {
                return Err(Error::fs(id, FsError::NotDir));
            }
            if ix.has_entries(id)? {
                return Err(Error::fs(id, FsError::NotEmpty));
            }
            Ok((vec![(id, Change::Remove)], ()))
        })
    }

    /// Sets extended attribute `name`. A name over [`NAME_MAX`] bytes or a
    /// value over [`XATTR_VALUE_MAX`] bytes is [`FsError::Invalid`].
    pub fn set_xattr(&self, node: NodeId, name: &[u8], value: &[u8], mode: XattrMode) -> Result<()> {
        if name.is_empty() || name.len() > NAME_MAX || value.len() > XATTR_VALUE_MAX {
            return Err(Error::fs(node, FsError::Invalid));
        }
        self.mutate(|_, ix| {
            let n = Self::existing_node(ix, node)?;
            match (mode, n.xattr(name).is_some()) {
                (XattrMode::Create, true) => return Err(Error::fs(node, FsError::Exists)),
                (XattrMode::Replace, false) => return Err(Error::fs(node, FsError::NoAttr)),
                _ => {}
            }
            Ok((vec![(node, Change::SetXattr { name: name.to_vec(), value: value.to_vec() })], ()))
        })
    }

    /// Removes extended attribute `name`.
    pub fn remove_xattr(&self, node: NodeId, name: &[u8]) -> Result<()> {
        self.mutate(|_, ix| {
            if Self::existing_node(ix, node)?.xattr(name).is_none() {
                return Err(Error::fs(node, FsError::NoAttr));
            }
            Ok((vec![(node, Change::RemoveXattr { name: name.to_vec() })], ()))
        })
    }

    /// Changes attributes and extended attributes of one node in one
    /// mutation, so that they land in the log together (a POSIX ACL and the
    /// permission bits it must agree with). `xattrs` are `(name, Some(value))`
    /// to set and `(name, None)` to remove; removing a missing one is no
    /// change. Names and values are checked as in [`LiveTree::set_xattr`].
    pub fn change_node(
        &self,
        node: NodeId,
        attrs: AttrChange,
        xattrs: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> Result<NodeState> {
        for (name, value) in xattrs {
            if name.is_empty() || name.len() > NAME_MAX || value.as_ref().is_some_and(|v| v.len() > XATTR_VALUE_MAX) {
                return Err(Error::fs(node, FsError::Invalid));
            }
        }
        self.mutate(|_, ix| {
            let n = Self::existing_node(ix, node)?;
            let mut changes = Vec::with_capacity(xattrs.len() + 1);
            if attrs != AttrChange::default() {
                changes.push((node, Change::SetAttrs(attrs)));
            }
            for (name, value) in xattrs {
                match value {
                    Some(value) => changes.push((node, Change::SetXattr { name: name.clone(), value: value.clone() })),
                    None if n.xattr(name).is_some() => changes.push((node, Change::RemoveXattr { name: name.clone() })),
                    None => {}
                }
            }
            Ok((changes, ()))
        })?;
        self.node(node)
    }

    /// Sets the volume name (recorded on the root, so it replicates).
    pub fn set_volname(&self, name: &[u8]) -> Result<()> {
        self.mutate(|_, _| Ok((vec![(NodeId::ROOT, Change::SetVolname { name: name.to_vec() })], ())))
    }

    /// Pins or unpins a node.
    pub fn set_pinned(&self, node: NodeId, pinned: bool) -> Result<()> {
        self.mutate(|_, ix| {
            Self::live_node(ix, node)?;
            Ok((vec![(node, Change::SetPinned { pinned })], ()))
        })
    }
}
