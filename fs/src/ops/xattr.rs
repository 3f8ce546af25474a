//! Extended attributes (the ACL names are handed to `acl`).

use std::ffi::OsStr;

use engine::XattrMode;
use fuser::Errno;

use crate::errno::errno;

use super::*;
use crate::acl::{mode_after_acl, mode_with_acl, Acl, Kind, ACCESS, DEFAULT};

impl Core {
    /// `setxattr` of `name` by `caller` (who matters for an access ACL,
    /// see `Core::set_acl`).
    pub(crate) fn do_setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        caller: Caller,
    ) -> Result<(), Errno> {
        if position != 0 {
            return Err(Errno::EINVAL);
        }
        let mode = match flags & (libc::XATTR_CREATE | libc::XATTR_REPLACE) {
            0 => XattrMode::Any,
            libc::XATTR_CREATE => XattrMode::Create,
            libc::XATTR_REPLACE => XattrMode::Replace,
            _ => return Err(Errno::EINVAL),
        };
        let node = self.node_of(ino)?;
        if let Some(kind) = crate::acl::kind_of(name_bytes(name)) {
            return self.set_acl(node, kind, value, mode, caller);
        }
        self.live()?.set_xattr(node, name_bytes(name), value, mode).map_err(|e| errno(&e))
    }

    /// The value of xattr `name`; the adapter applies the size protocol.
    pub(crate) fn do_getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>, Errno> {
        let st = self.state(self.node_of(ino)?)?;
        if crate::acl::kind_of(name_bytes(name)).is_some() && !self.acls() {
            return Err(Errno::EOPNOTSUPP);
        }
        st.xattrs.get(name_bytes(name)).cloned().ok_or(Errno::NO_XATTR)
    }

    /// Every xattr name, each followed by NUL.
    pub(crate) fn do_listxattr(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let st = self.state(self.node_of(ino)?)?;
        let mut out = Vec::new();
        // Without ACLs on the mount their names are as absent as on a
        // filesystem without them (still in the log, and shown by mounts
        // that have them).
        for name in st.xattrs.keys().filter(|n| self.acls() || crate::acl::kind_of(n).is_none()) {
            out.extend_from_slice(name);
            out.push(0);
        }
        Ok(out)
    }

    pub(crate) fn do_removexattr(&self, ino: u64, name: &OsStr) -> Result<(), Errno> {
        let node = self.node_of(ino)?;
        if let Some(kind) = crate::acl::kind_of(name_bytes(name)) {
            return self.remove_acl(node, kind);
        }
        self.live()?.remove_xattr(node, name_bytes(name)).map_err(|e| errno(&e))
    }
}

impl Core {
    /// Whether the kernel enforces ACLs on this mount (`FUSE_POSIX_ACL`
    /// negotiated at init); without it the ACL names are refused.
    pub(crate) fn acls(&self) -> bool {
        self.acl.load(Ordering::Relaxed)
    }

    /// `setxattr` of an ACL name by `caller`. An access ACL sets the
    /// permission bits and, as the kernel's `posix_acl_update_mode` does,
    /// takes set-group-id off when the caller is neither root nor in the
    /// node's group (see [`mode_after_acl`]).
    pub(crate) fn set_acl(
        &self,
        node: NodeId,
        kind: Kind,
        value: &[u8],
        mode: XattrMode,
        caller: Caller,
    ) -> Result<(), Errno> {
        if !self.acls() {
            return Err(Errno::EOPNOTSUPP);
        }
        let acl = Acl::parse(value)?;
        let st = self.tree.node(node).map_err(|e| errno(&e))?;
        let name = match kind {
            Kind::Access => ACCESS,
            Kind::Default => DEFAULT,
        };
        match (mode, st.xattrs.contains_key(name)) {
            (XattrMode::Create, true) => return Err(Errno::EEXIST),
            (XattrMode::Replace, false) => return Err(Errno::NO_XATTR),
            _ => {}
        }
        let Some(acl) = acl else {
            return self.remove_acl(node, kind).or_else(|e| if e == Errno::NO_XATTR { Ok(()) } else { Err(e) });
        };
        let (attrs, value) = match kind {
            Kind::Default if st.kind != NodeKind::Dir => return Err(Errno::EACCES),
            Kind::Default => (AttrChange::default(), Some(acl.encode())),
            Kind::Access => {
                let mode =
                    mode_after_acl(st.attrs.mode, acl.perm_bits(), st.attrs.gid, caller.uid, |g| caller.in_group(g));
                let value = (!acl.is_minimal()).then(|| acl.encode());
                (AttrChange { mode: Some(mode), ..AttrChange::default() }, value)
            }
        };
        self.live()?.change_node(node, attrs, &[(name.to_vec(), value)]).map(|_| ()).map_err(|e| errno(&e))
    }

    /// `removexattr` of an ACL name. Removing the access ACL leaves the
    /// permission bits it showed.
    pub(crate) fn remove_acl(&self, node: NodeId, kind: Kind) -> Result<(), Errno> {
        if !self.acls() {
            return Err(Errno::EOPNOTSUPP);
        }
        let st = self.tree.node(node).map_err(|e| errno(&e))?;
        let (name, attrs) = match kind {
            Kind::Access => {
                let mode = mode_with_acl(st.attrs.mode, st.xattrs.get(ACCESS).map(Vec::as_slice));
                (ACCESS, AttrChange { mode: Some(mode), ..AttrChange::default() })
            }
            Kind::Default => (DEFAULT, AttrChange::default()),
        };
        if !st.xattrs.contains_key(name) {
            return Err(Errno::NO_XATTR);
        }
        self.live()?.change_node(node, attrs, &[(name.to_vec(), None)]).map(|_| ()).map_err(|e| errno(&e))
    }

    /// `setattr` of `change` on `node`: a new mode rewrites the access ACL
    /// too, in the same mutation.
    pub(crate) fn set_attrs_with_acl(&self, node: NodeId, change: AttrChange) -> Result<(), Errno> {
        let acl = match change.mode {
            Some(mode) => {
                let st = self.tree.node(node).map_err(|e| errno(&e))?;
                match st.xattrs.get(ACCESS).map(|v| Acl::parse(v)) {
                    Some(Ok(Some(mut acl))) => {
                        acl.chmod(mode);
                        Some(acl.encode())
                    }
                    _ => None,
                }
            }
            None => None,
        };
        let live = self.live()?;
        match acl {
            Some(acl) => live.change_node(node, change, &[(ACCESS.to_vec(), Some(acl))]),
            None => live.set_attrs(node, change),
        }
        .map(|_| ())
        .map_err(|e| errno(&e))
    }
}
