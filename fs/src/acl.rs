//! POSIX ACLs as the kernel hands them to a FUSE filesystem that
//! negotiated `FUSE_POSIX_ACL`: the xattrs `system.posix_acl_access` and
//! `system.posix_acl_default`, stored as ordinary xattrs in events (so they
//! replicate and merge per key like any other), plus the work the kernel
//! leaves to the filesystem (linux fs/fuse/acl.c: "userspace is responsible
//! for updating access permissions in the inode"):
//! - setting an access ACL sets the permission bits it implies, and an ACL
//!   that says no more than the bits is not stored at all (as ext4 does);
//! - `chmod` rewrites the access ACL's owner, mask (or group) and other
//!   entries;
//! - a new node in a directory with a default ACL gets it as its access
//!   ACL, masked by the mode asked for (and a new directory gets it as its
//!   default too), and the umask is not applied.
//!
//! Always true of what this module accepts: the xattr format version 2
//! (`u32` version, then 8-byte entries `u16 tag, u16 perm, u32 id`, all
//! little-endian), entries in the kernel's order (owner, named users by
//! rising id, owning group, named groups by rising id, mask, other), one
//! each of owner, group and other, a mask when there is any named entry,
//! permissions within `rwx`. Anything else is `EINVAL`, as the kernel's
//! `posix_acl_valid` says.
//!
//! The permission bits a mount shows for a node with an access ACL come
//! from the ACL ([`mode_with_acl`]): after a merge of a concurrent `chmod`
//! and `setfacl` the stored mode and ACL may disagree, and the kernel reads
//! the owner's bits from the mode but everyone else's from the ACL, so the
//! ACL (the richer of the two) decides on every replica alike.

use engine::event::NodeKind;
use engine::NodeState;
use fuser::Errno;

/// The access ACL's xattr name.
pub(crate) const ACCESS: &[u8] = b"system.posix_acl_access";
/// The default ACL's xattr name (directories only).
pub(crate) const DEFAULT: &[u8] = b"system.posix_acl_default";

const VERSION: u32 = 2;
const HEADER: usize = 4;
const ENTRY: usize = 8;

const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// The id written for entries that name no one (`ACL_UNDEFINED_ID`).
const UNDEFINED_ID: u32 = u32::MAX;

/// Which of the two ACL xattrs a name is, if either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Access,
    Default,
}

/// Extended attributes to set: `(name, value)`.
pub(crate) type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// The ACL kind of xattr `name`.
pub(crate) fn kind_of(name: &[u8]) -> Option<Kind> {
    match name {
        ACCESS => Some(Kind::Access),
        DEFAULT => Some(Kind::Default),
        _ => None,
    }
}

/// One entry: tag, permission bits (`rwx` as 4, 2, 1), and the uid or gid
/// for named entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub tag: u16,
    pub perm: u16,
    pub id: u32,
}

/// A checked ACL, entries in the kernel's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Acl(pub Vec<Entry>);

impl Acl {
    /// Parses and checks the xattr form. `Ok(None)` for an ACL with no
    /// entries (the kernel's way of saying "none").
    pub(crate) fn parse(value: &[u8]) -> Result<Option<Acl>, Errno> {
        let (head, body) = value.split_at_checked(HEADER).ok_or(Errno::EINVAL)?;
        let version = u32::from_le_bytes(head.try_into().map_err(|_| Errno::EINVAL)?);
        if version != VERSION || body.len() % ENTRY != 0 {
            return Err(Errno::EINVAL);
        }
        if body.is_empty() {
            return Ok(None);
        }
        let entries = body
            .chunks_exact(ENTRY)
            .map(|e| Entry {
                tag: u16::from_le_bytes([e[0], e[1]]),
                perm: u16::from_le_bytes([e[2], e[3]]),
                id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            })
            .collect();
        let acl = Acl(entries);
        acl.check()?;
        Ok(Some(acl.canonical()))
    }

    /// The xattr form (ids of unnamed entries written as undefined).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + ENTRY * self.0.len());
        out.extend_from_slice(&VERSION.to_le_bytes());
        for e in &self.0 {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    /// The kernel's `posix_acl_valid`: order, uniqueness, required entries.
    fn check(&self) -> Result<(), Errno> {
        // The position each tag must come in.
        let rank = |tag| match tag {
            USER_OBJ => Some(0),
            USER => Some(1),
            GROUP_OBJ => Some(2),
            GROUP => Some(3),
            MASK => Some(4),
            OTHER => Some(5),
            _ => None,
        };
        let mut last: Option<(u8, u32)> = None;
        let (mut named, mut mask, mut counts) = (false, false, [0u8; 6]);
        for e in &self.0 {
            let r = rank(e.tag).ok_or(Errno::EINVAL)?;
            if e.perm & !7 != 0 {
                return Err(Errno::EINVAL);
            }
            let is_named = matches!(e.tag, USER | GROUP);
            let key = (r, if is_named { e.id } else { 0 });
            // Strictly rising: in order, and no duplicate (named ids included).
            if last.is_some_and(|l| l >= key) {
                return Err(Errno::EINVAL);
            }
            if is_named && e.id == UNDEFINED_ID {
                return Err(Errno::EINVAL);
            }
            last = Some(key);
            counts[usize::from(r)] += 1;
            named |= is_named;
            mask |= e.tag == MASK;
        }
        if counts[0] != 1 || counts[2] != 1 || counts[5] != 1 || (named && !mask) {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    /// Unnamed entries carry the undefined id, whatever the caller wrote
    /// (the kernel ignores it), so equal ACLs are equal bytes.
    fn canonical(mut self) -> Acl {
        for e in &mut self.0 {
            if !matches!(e.tag, USER | GROUP) {
                e.id = UNDEFINED_ID;
            }
        }
        self
    }

    /// Whether the ACL says no more than permission bits (owner, group,
    /// other only): such an ACL is not stored.
    pub(crate) fn is_minimal(&self) -> bool {
        self.0.iter().all(|e| matches!(e.tag, USER_OBJ | GROUP_OBJ | OTHER))
    }

    /// The permission bits (`0o777` part) the ACL implies: owner from the
    /// owner entry, group from the mask if any (else the owning group),
    /// other from the other entry.
    pub(crate) fn perm_bits(&self) -> u32 {
        let get = |tag| self.0.iter().find(|e| e.tag == tag).map(|e| u32::from(e.perm));
        let user = get(USER_OBJ).unwrap_or(0);
        let group = get(MASK).or(get(GROUP_OBJ)).unwrap_or(0);
        let other = get(OTHER).unwrap_or(0);
        (user << 6) | (group << 3) | other
    }

    /// `chmod`: the owner, mask (or owning group, without a mask) and other
    /// entries take the new mode's bits (the kernel's `posix_acl_chmod`).
    pub(crate) fn chmod(&mut self, mode: u32) {
        let has_mask = self.0.iter().any(|e| e.tag == MASK);
        for e in &mut self.0 {
            let bits = match e.tag {
                USER_OBJ => (mode >> 6) & 7,
                MASK => (mode >> 3) & 7,
                GROUP_OBJ if !has_mask => (mode >> 3) & 7,
                OTHER => mode & 7,
                _ => continue,
            };
            e.perm = bits as u16;
        }
    }

    /// A new node's access ACL from its parent's default ACL (`self`) and
    /// the mode asked for (the kernel's `posix_acl_create_masq`): each
    /// class entry is masked by the mode's bits and the mode by it. Returns
    /// the new mode (its permission bits replaced; the rest kept) and the
    /// ACL, `None` when it is minimal.
    pub(crate) fn create(&self, mode: u32) -> (u32, Option<Acl>) {
        let mut acl = self.clone();
        let has_mask = acl.0.iter().any(|e| e.tag == MASK);
        let mut bits = mode & 0o777;
        for e in &mut acl.0 {
            let shift = match e.tag {
                USER_OBJ => 6,
                MASK => 3,
                GROUP_OBJ if !has_mask => 3,
                OTHER => 0,
                _ => continue,
            };
            let p = u32::from(e.perm) & (bits >> shift) & 7;
            e.perm = p as u16;
            bits = (bits & !(7 << shift)) | (p << shift);
        }
        let mode = (mode & !0o777) | bits;
        (mode, (!acl.is_minimal()).then_some(acl))
    }
}

/// The permission bits of a node with mode `mode` and access ACL `access`
/// (its xattr form) as a mount shows them: from the ACL when there is a
/// valid one (see the module doc), else `mode`'s own.
pub(crate) fn mode_with_acl(mode: u32, access: Option<&[u8]>) -> u32 {
    match access.map(Acl::parse) {
        Some(Ok(Some(acl))) => (mode & !0o777) | acl.perm_bits(),
        _ => mode,
    }
}

/// The ACL xattrs a new node of `kind` with mode `mode` (its type bits
/// and umask-free permission bits) gets in `parent`, with its mode: `None`
/// when the parent has no default ACL (the caller then applies the umask).
/// A default ACL that does not parse (only a peer's bug could store one)
/// is ignored, with a warning.
pub(crate) fn inherited(parent: &NodeState, kind: NodeKind, mode: u32) -> Option<(u32, Xattrs)> {
    if kind == NodeKind::Symlink {
        return None;
    }
    let default = match Acl::parse(parent.xattrs.get(DEFAULT)?) {
        Ok(Some(d)) => d,
        Ok(None) => return None,
        Err(_) => {
            tracing::warn!(parent = %parent.id, "the default ACL does not parse; new nodes do not inherit it");
            return None;
        }
    };
    let (mode, access) = default.create(mode);
    let mut xattrs = Vec::new();
    if let Some(access) = access {
        xattrs.push((ACCESS.to_vec(), access.encode()));
    }
    if kind == NodeKind::Dir {
        xattrs.push((DEFAULT.to_vec(), default.encode()));
    }
    Some((mode, xattrs))
}

/// The mode (permission and set-id bits) after an access ACL with
/// permission bits `perm` is set on a node of mode `mode` and group `gid`
/// by `uid`: the kernel's `posix_acl_update_mode`, which takes
/// set-group-id off unless the caller is in the group (`in_group`) or has
/// `CAP_FSETID` (root). The kernel leaves that to a FUSE filesystem unless
/// it negotiates `FUSE_SETXATTR_EXT`, which fuser cannot parse.
pub(crate) fn mode_after_acl(mode: u32, perm: u32, gid: u32, uid: u32, in_group: impl Fn(u32) -> bool) -> u32 {
    let mut mode = (mode & !0o777) | (perm & 0o777);
    if uid != 0 && mode & libc::S_ISGID != 0 && !in_group(gid) {
        mode &= !libc::S_ISGID;
    }
    mode
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(tag: u16, perm: u16, id: u32) -> Entry {
        Entry { tag, perm, id }
    }

    fn acl(entries: &[(u16, u16, u32)]) -> Acl {
        Acl(entries.iter().map(|&(t, p, i)| e(t, p, i)).collect())
    }

    const U: u32 = UNDEFINED_ID;

    #[test]
    fn round_trip_and_canonical_ids() {
        let a = acl(&[(USER_OBJ, 7, U), (USER, 5, 1000), (GROUP_OBJ, 5, U), (MASK, 7, U), (OTHER, 4, U)]);
        assert_eq!(Acl::parse(&a.encode()), Ok(Some(a.clone())));
        // An unnamed entry's id is ignored and written as undefined.
        let mut b = a.clone();
        b.0[0].id = 42;
        assert_eq!(Acl::parse(&b.encode()), Ok(Some(a)));
        assert_eq!(Acl::parse(&2u32.to_le_bytes()), Ok(None), "no entries: no ACL");
    }

    #[test]
    fn bad_input_is_einval() {
        let good = acl(&[(USER_OBJ, 6, U), (GROUP_OBJ, 4, U), (OTHER, 4, U)]).encode();
        assert!(Acl::parse(&good).is_ok());
        let bad: Vec<Vec<u8>> = vec![
            vec![],
            vec![2, 0, 0],
            {
                let mut v = good.clone();
                v[0] = 1; // version 1
                v
            },
            good[..good.len() - 1].to_vec(),                  // cut entry
            acl(&[(USER_OBJ, 6, U), (OTHER, 4, U)]).encode(), // no group
            acl(&[(GROUP_OBJ, 4, U), (USER_OBJ, 6, U), (OTHER, 4, U)]).encode(), // order
            acl(&[(USER_OBJ, 6, U), (USER_OBJ, 6, U), (GROUP_OBJ, 4, U), (OTHER, 4, U)]).encode(),
            acl(&[(USER_OBJ, 6, U), (USER, 6, 5), (GROUP_OBJ, 4, U), (OTHER, 4, U)]).encode(), // no mask
            acl(&[(USER_OBJ, 6, U), (USER, 6, 5), (USER, 6, 5), (GROUP_OBJ, 4, U), (MASK, 7, U), (OTHER, 4, U)])
                .encode(),
            acl(&[(USER_OBJ, 6, U), (USER, 6, 9), (USER, 6, 5), (GROUP_OBJ, 4, U), (MASK, 7, U), (OTHER, 4, U)])
                .encode(),
            acl(&[(USER_OBJ, 8, U), (GROUP_OBJ, 4, U), (OTHER, 4, U)]).encode(), // perm
            acl(&[(USER_OBJ, 6, U), (0x40, 4, U), (GROUP_OBJ, 4, U), (OTHER, 4, U)]).encode(), // tag
            acl(&[(USER_OBJ, 6, U), (USER, 6, U), (GROUP_OBJ, 4, U), (MASK, 7, U), (OTHER, 4, U)]).encode(),
        ];
        for (i, b) in bad.iter().enumerate() {
            assert_eq!(Acl::parse(b), Err(Errno::EINVAL), "case {i}");
        }
    }

    #[test]
    fn an_access_acl_by_a_stranger_to_the_group_takes_setgid_off() {
        let member = |g: u32| g == 5;
        let stranger = |_: u32| false;
        assert_eq!(mode_after_acl(0o2755, 0o777, 5, 7, member), 0o2777);
        assert_eq!(mode_after_acl(0o2755, 0o777, 5, 7, stranger), 0o777);
        assert_eq!(mode_after_acl(0o2755, 0o777, 5, 0, stranger), 0o2777, "root keeps it");
        assert_eq!(mode_after_acl(0o6755, 0o770, 5, 7, stranger), 0o4770, "set-user-id stays");
        assert_eq!(mode_after_acl(0o1755, 0o640, 5, 7, stranger), 0o1640);
    }

    #[test]
    fn mode_bits_follow_the_mask() {
        let a = acl(&[(USER_OBJ, 7, U), (USER, 7, 1000), (GROUP_OBJ, 5, U), (MASK, 6, U), (OTHER, 1, U)]);
        assert_eq!(a.perm_bits(), 0o761);
        assert!(!a.is_minimal());
        let m = acl(&[(USER_OBJ, 6, U), (GROUP_OBJ, 4, U), (OTHER, 0, U)]);
        assert_eq!(m.perm_bits(), 0o640);
        assert!(m.is_minimal());
        assert_eq!(mode_with_acl(0o100600, Some(&a.encode())), 0o100761);
        assert_eq!(mode_with_acl(0o100600, None), 0o100600);
        assert_eq!(mode_with_acl(0o100600, Some(b"junk")), 0o100600);
    }

    #[test]
    fn chmod_rewrites_class_entries_and_keeps_named_ones() {
        let mut a = acl(&[(USER_OBJ, 7, U), (USER, 7, 1000), (GROUP_OBJ, 5, U), (MASK, 7, U), (OTHER, 5, U)]);
        a.chmod(0o640);
        assert_eq!(a, acl(&[(USER_OBJ, 6, U), (USER, 7, 1000), (GROUP_OBJ, 5, U), (MASK, 4, U), (OTHER, 0, U)]));
        assert_eq!(a.perm_bits(), 0o640);
        let mut m = acl(&[(USER_OBJ, 7, U), (GROUP_OBJ, 5, U), (OTHER, 5, U)]);
        m.chmod(0o600);
        assert_eq!(m.perm_bits(), 0o600);
    }

    #[test]
    fn creation_masks_the_default_acl_by_the_mode() {
        // default: user::rwx user:1000:rwx group::r-x mask::rwx other::r-x
        let d = acl(&[(USER_OBJ, 7, U), (USER, 7, 1000), (GROUP_OBJ, 5, U), (MASK, 7, U), (OTHER, 5, U)]);
        // open(O_CREAT, 0666)
        let (mode, a) = d.create(0o100666);
        assert_eq!(mode, 0o100664);
        let a = a.expect("named entries: an access ACL");
        assert_eq!(a, acl(&[(USER_OBJ, 6, U), (USER, 7, 1000), (GROUP_OBJ, 5, U), (MASK, 6, U), (OTHER, 4, U)]));
        assert_eq!(a.perm_bits(), mode & 0o777);
        // mkdir 0777 keeps the set-group-id bit and type.
        let (mode, _) = d.create(0o42777);
        assert_eq!(mode, 0o42775);
        // A minimal default gives no access ACL, only the masked mode.
        let m = acl(&[(USER_OBJ, 7, U), (GROUP_OBJ, 0, U), (OTHER, 0, U)]);
        assert_eq!(m.create(0o644), (0o600, None));
    }
}
