//! Differential test (in the manner of JuiceFS's fsrand2): random sequences
//! of filesystem calls — create, write at offsets, truncate, rename, mkdir,
//! rmdir, unlink, symlink, chmod, setxattr, removexattr, and remounts in
//! between — applied to a syncer mount and to a plain directory on the host
//! side by side. Every call's result (success or errno) must match, and
//! after every call the two trees must match: names, kinds, permission bits,
//! sizes, bytes, symlink targets and `user.*` xattrs.
//!
//! Both trees live in one temp dir (`<tmp>/mnt` and `<tmp>/plain`), so a
//! symlink target with `..` resolves to the same (absent) place on both.
//!
//! Case count: `PROPTEST_CASES` (default 32 here). Long run:
//! `PROPTEST_CASES=2000 cargo test --release --test differential`.
//! A shrunk failure becomes a named `#[test]` below calling [`run`].

mod support;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use proptest::prelude::*;
use support::{errno_of, Mounted, Xattrs};

/// The paths every operation picks from: two levels, so renames of
/// directories into each other, non-empty rmdirs and the like come up.
const PATHS: [&str; 8] = ["a", "b", "d", "e", "d/a", "d/b", "e/a", "d/e"];
const TARGETS: [&str; 5] = ["a", "d/a", "missing", "../a", "d"];
const XATTRS: [&str; 3] = ["user.a", "user.b", "user.long"];

#[derive(Clone, Debug)]
enum Op {
    Create(usize),
    /// `pwrite` through `open(O_WRONLY | O_CREAT)`.
    Write {
        path: usize,
        offset: u32,
        len: u32,
        seed: u64,
    },
    Truncate {
        path: usize,
        size: u32,
    },
    Rename(usize, usize),
    Mkdir(usize),
    Rmdir(usize),
    Unlink(usize),
    Symlink {
        target: usize,
        path: usize,
    },
    Chmod {
        path: usize,
        mode: u32,
    },
    SetXattr {
        path: usize,
        name: usize,
        len: u16,
        seed: u64,
    },
    RemoveXattr {
        path: usize,
        name: usize,
    },
    Remount,
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PATHS.len();
    prop_oneof![
        3 => p.clone().prop_map(Op::Create),
        4 => (p.clone(), 0u32..200_000, 0u32..100_000, any::<u64>())
            .prop_map(|(path, offset, len, seed)| Op::Write { path, offset, len, seed }),
        2 => (p.clone(), 0u32..300_000).prop_map(|(path, size)| Op::Truncate { path, size }),
        3 => (p.clone(), p.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
        5 => p.clone().prop_map(Op::Mkdir),
        2 => p.clone().prop_map(Op::Rmdir),
        2 => p.clone().prop_map(Op::Unlink),
        2 => (0..TARGETS.len(), p.clone()).prop_map(|(target, path)| Op::Symlink { target, path }),
        2 => (p.clone(), 0u32..0o10000).prop_map(|(path, mode)| Op::Chmod { path, mode }),
        2 => (p.clone(), 0..XATTRS.len(), 0u16..300, any::<u64>())
            .prop_map(|(path, name, len, seed)| Op::SetXattr { path, name, len, seed }),
        1 => (p.clone(), 0..XATTRS.len()).prop_map(|(path, name)| Op::RemoveXattr { path, name }),
        1 => Just(Op::Remount),
    ]
}

/// Applies `op` under `root`; returns 0 or the errno.
fn apply(root: &Path, op: &Op) -> i32 {
    let p = |i: usize| root.join(PATHS[i]);
    match op {
        Op::Create(i) => errno_of(&std::fs::OpenOptions::new().write(true).create_new(true).open(p(*i))),
        Op::Write { path, offset, len, seed } => {
            let data = support::pattern(*seed, *len as usize);
            errno_of(
                &std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(p(*path))
                    .and_then(|f| f.write_all_at(&data, u64::from(*offset))),
            )
        }
        Op::Truncate { path, size } => {
            errno_of(&std::fs::OpenOptions::new().write(true).open(p(*path)).and_then(|f| f.set_len(u64::from(*size))))
        }
        Op::Rename(a, b) => errno_of(&std::fs::rename(p(*a), p(*b))),
        Op::Mkdir(i) => errno_of(&std::fs::create_dir(p(*i))),
        Op::Rmdir(i) => errno_of(&std::fs::remove_dir(p(*i))),
        Op::Unlink(i) => errno_of(&std::fs::remove_file(p(*i))),
        Op::Symlink { target, path } => errno_of(&std::os::unix::fs::symlink(TARGETS[*target], p(*path))),
        Op::Chmod { path, mode } => {
            errno_of(&std::fs::set_permissions(p(*path), std::fs::Permissions::from_mode(*mode)))
        }
        Op::SetXattr { path, name, len, seed } => {
            let value = support::pattern(*seed, usize::from(*len));
            support::setxattr(&p(*path), XATTRS[*name].as_bytes(), &value, 0).err().unwrap_or(0)
        }
        Op::RemoveXattr { path, name } => {
            let n = std::ffi::CString::new(XATTRS[*name]).expect("no NUL");
            // SAFETY: valid C strings.
            let r = unsafe { libc::lremovexattr(support::cstr(&p(*path)).as_ptr(), n.as_ptr()) };
            support::check(r as isize).err().unwrap_or(0)
        }
        Op::Remount => 0,
    }
}

/// What must match for one path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    Dir { mode: u32, xattrs: Xattrs },
    File { mode: u32, size: u64, hash: u64, xattrs: Xattrs },
    Symlink { target: Vec<u8> },
}

/// A digest of a file's bytes (SipHash with fixed keys: the same in both trees).
fn content_hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn user_xattrs(p: &Path) -> Xattrs {
    let mut x = support::xattrs(p).unwrap_or_else(|e| panic!("listxattr {}: errno {e}", p.display()));
    x.retain(|(n, _)| n.starts_with(b"user."));
    x
}

fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("ls {}: {e}", dir.display())) {
            let path = e.expect("entry").path();
            let rel = path.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            let mode = meta.mode() & 0o7777;
            let entry = if meta.file_type().is_symlink() {
                Entry::Symlink { target: std::fs::read_link(&path).expect("readlink").as_os_str().as_bytes().to_vec() }
            } else if meta.is_dir() {
                stack.push(path.clone());
                Entry::Dir { mode, xattrs: user_xattrs(&path) }
            } else {
                let bytes = std::fs::read(&path).expect("read");
                assert_eq!(bytes.len() as u64, meta.len(), "{rel}: st_size differs from the bytes read");
                Entry::File { mode, size: meta.len(), hash: content_hash(&bytes), xattrs: user_xattrs(&path) }
            };
            out.insert(rel, entry);
        }
    }
    out
}

/// Runs `ops` on a fresh mount and a fresh plain directory; `Err` names the
/// first step where they differ.
fn run(ops: &[Op]) -> Result<(), String> {
    let mut m = Mounted::small_blocks();
    let plain = m.tmp.path().join("plain");
    std::fs::create_dir(&plain).expect("mkdir plain");
    // The plain side starts with the mount's root mode.
    let root_mode = std::fs::metadata(&m.mnt).expect("stat mnt").mode() & 0o7777;
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(root_mode)).expect("chmod plain");
    let mut succeeded = 0;
    for (i, op) in ops.iter().enumerate() {
        if matches!(op, Op::Remount) {
            m.remount();
        }
        let (want, got) = (apply(&plain, op), apply(&m.mnt, op));
        if want != got {
            return Err(format!(
                "step {i} {op:?}: plain dir gives {}, syncer gives {}",
                std::io::Error::from_raw_os_error(want),
                std::io::Error::from_raw_os_error(got)
            ));
        }
        succeeded += usize::from(want == 0);
        let (a, b) = (snapshot(&plain), snapshot(&m.mnt));
        if a != b {
            let diff: Vec<String> = a
                .keys()
                .chain(b.keys())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .map(|k| format!("{k}: plain {:?} / syncer {:?}", a.get(k), b.get(k)))
                .collect();
            return Err(format!("after step {i} {op:?}, the trees differ:\n{}", diff.join("\n")));
        }
    }
    if std::env::var_os("DIFFERENTIAL_STATS").is_some() {
        let entries = snapshot(&plain).len();
        eprintln!("differential: {} calls, {succeeded} succeeded, {entries} entries at the end", ops.len());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(32),
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    #[test]
    fn syncer_mount_matches_a_plain_directory(ops in proptest::collection::vec(op(), 1..60)) {
        if let Err(why) = run(&ops) {
            prop_assert!(false, "{}", why);
        }
    }
}

/// The calls that must agree in every edge case, as one fixed sequence, so
/// the normal suite always covers them whatever proptest draws.
#[test]
fn fixed_edge_cases_match() {
    use Op::*;
    let ops = [
        Mkdir(2),
        Create(4),
        Write { path: 4, offset: 70_000, len: 1000, seed: 1 },
        Truncate { path: 4, size: 65_537 },
        Rmdir(2),
        Rename(2, 3),
        Mkdir(2),
        Rename(3, 2),
        Symlink { target: 3, path: 0 },
        Chmod { path: 0, mode: 0o600 },
        Unlink(0),
        Create(0),
        Rename(0, 7),
        SetXattr { path: 0, name: 0, len: 0, seed: 2 },
        SetXattr { path: 3, name: 1, len: 200, seed: 3 },
        RemoveXattr { path: 3, name: 2 },
        Remount,
        Rename(3, 7),
        Unlink(3),
        Rmdir(4),
        Chmod { path: 6, mode: 0o7777 },
    ];
    run(&ops).unwrap_or_else(|e| panic!("{e}"));
}

/// The comparison sees every field it claims to compare (else the
/// differential test could pass while proving nothing).
#[test]
fn the_snapshot_sees_each_difference() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let make = |name: &str| {
        let root = tmp.path().join(name);
        std::fs::create_dir_all(root.join("d")).expect("mkdir");
        std::fs::write(root.join("f"), b"bytes").expect("write");
        std::os::unix::fs::symlink("f", root.join("l")).expect("symlink");
        support::setxattr(&root.join("f"), b"user.k", b"v", 0).expect("setxattr");
        root
    };
    let base = snapshot(&make("base"));
    type Change = (&'static str, fn(&Path));
    let changes: [Change; 6] = [
        ("content", |r| std::fs::write(r.join("f"), b"bytez").expect("write")),
        ("mode", |r| std::fs::set_permissions(r.join("f"), std::fs::Permissions::from_mode(0o600)).expect("chmod")),
        ("xattr", |r| support::setxattr(&r.join("f"), b"user.k", b"w", 0).expect("setxattr")),
        ("symlink target", |r| {
            std::fs::remove_file(r.join("l")).expect("rm");
            std::os::unix::fs::symlink("g", r.join("l")).expect("symlink");
        }),
        ("kind", |r| {
            std::fs::remove_dir(r.join("d")).expect("rmdir");
            std::fs::write(r.join("d"), b"").expect("write");
        }),
        ("name", |r| std::fs::rename(r.join("d"), r.join("e")).expect("rename")),
    ];
    for (i, (what, change)) in changes.iter().enumerate() {
        let root = make(&format!("c{i}"));
        change(&root);
        assert_ne!(snapshot(&root), base, "a changed {what} went unnoticed");
    }
}
