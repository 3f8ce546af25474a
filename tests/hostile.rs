//! Hostile and malformed input, table-driven: each row is one input and the
//! exact error it must get. Decoders and the log's folder/file name parsing
//! are driven directly; names, symlink targets, xattrs and deep trees go
//! through `LiveTree` and through a real FUSE mount (errno as Linux reports
//! it).

mod support;

use engine::{LiveTree, Store, TreeRead};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use engine::blob::{self, BlobError};
use engine::event::{Attrs, NodeKind};
use engine::ids::{MachineId, NodeId};
use engine::record::{self, RecordError};
use engine::storage::FsStorage;
use engine::{log, Error, FsError, RenameFlags, XattrMode};
use engine::{NAME_MAX, XATTR_VALUE_MAX};
use support::{getxattr, setxattr, Mounted};

fn engine_dir() -> (tempfile::TempDir, LiveTree) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    Store::init(&data, engine::config::Config::new_default(MachineId(0xa11ce))).expect("init");
    let e = LiveTree::open(&data).expect("open");
    (tmp, e)
}

fn fs_err<T: std::fmt::Debug>(r: engine::Result<T>) -> FsError {
    match r {
        Err(Error::Fs { err, .. }) => err,
        other => panic!("expected a POSIX refusal, got {other:?}"),
    }
}

/// A record header claiming `len` payload bytes (the rest of the frame absent).
fn header_with_len(len: u32) -> Vec<u8> {
    let mut h = record::MAGIC.to_vec();
    h.extend_from_slice(&[record::CURRENT_VERSION, record::KIND_EVENT, 0, 0, 0]);
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&[0; 8]);
    h
}

#[test]
fn oversized_lengths_are_refused_before_allocating() {
    let rows: [(&str, Vec<u8>, RecordError); 4] = [
        ("one over the limit", header_with_len(record::MAX_PAYLOAD + 1), RecordError::TooLarge(16 * 1024 * 1024 + 1)),
        ("u32::MAX", header_with_len(u32::MAX), RecordError::TooLarge(u64::from(u32::MAX))),
        // Judged as soon as the length field is whole, before the checksum arrives.
        ("length field only", header_with_len(u32::MAX)[..12].to_vec(), RecordError::TooLarge(u64::from(u32::MAX))),
        (
            "at the limit, payload absent",
            header_with_len(record::MAX_PAYLOAD),
            RecordError::Incomplete { have: 20, need: 20 + 16 * 1024 * 1024 },
        ),
    ];
    for (what, bytes, want) in rows {
        assert_eq!(record::decode(&bytes), Err(want), "{what}");
    }
    // Blob headers: a declared length over 64 MiB.
    let mut blob_header = blob::MAGIC.to_vec();
    blob_header.extend_from_slice(&[blob::VERSION, 0]);
    blob_header.extend_from_slice(&(blob::MAX_RAW_LEN + 1).to_le_bytes());
    blob_header.extend_from_slice(&[0; 4]);
    assert_eq!(blob::decode_header(&blob_header), Err(BlobError::TooLarge(blob::MAX_RAW_LEN + 1)));
    // In a sealed segment, an oversized length is damage at its offset.
    let m = MachineId(7);
    let mut seg = log::segment_header(m, 0).to_vec();
    seg.extend_from_slice(&header_with_len(u32::MAX));
    seg.extend_from_slice(&[1; 64]);
    match log::SegmentReader::new(&seg, Path::new("x.seg"), m, 0, log::ReadMode::Recover).scan() {
        Err(Error::Record { offset: 32, source, context, .. }) => {
            assert_eq!(source, engine::record::RecordError::TooLarge(u64::from(u32::MAX)));
            assert_eq!(context, "");
        }
        other => panic!("oversized length in a segment: {other:?}"),
    }
}

#[test]
fn hostile_peer_folder_and_segment_names_are_refused_by_name() {
    let storage = FsStorage;
    // Folder names under log/: only 16 lowercase hex digits name a machine.
    let rows = [
        "..hidden",
        "00000000000000AA",
        "00000000000000aa0",
        "00000000000000a",
        "+0000000000000aa",
        ".tmp",
        " 00000000000000a",
    ];
    for name in rows {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("log");
        std::fs::create_dir_all(root.join(name)).expect("mkdir");
        match log::list_machines(&storage, &root) {
            Err(Error::BadSegment { path, reason }) => {
                assert_eq!(path, root.join(name), "{name}");
                assert_eq!(
                    reason,
                    format!("not a machine folder: machine id {name:?} is not 16 lowercase hex digits"),
                    "{name}"
                );
            }
            other => panic!("folder {name:?}: {other:?}"),
        }
    }
    // Segment file names: 16 lowercase hex digits + ".seg", numbered without gaps.
    let m = MachineId(0xaa);
    let rows: [(&[&str], &str); 6] = [
        (&["0000000000000000.SEG"], "\"0000000000000000.SEG\" is not a segment name (16 lowercase hex digits + .seg)"),
        (&["000000000000000G.seg"], "\"000000000000000G.seg\" is not a segment name (16 lowercase hex digits + .seg)"),
        (
            &["0000000000000000.seg.tmp"],
            "\"0000000000000000.seg.tmp\" is not a segment name (16 lowercase hex digits + .seg)",
        ),
        (&["..seg"], "\"..seg\" is not a segment name (16 lowercase hex digits + .seg)"),
        (&["0.seg"], "\"0.seg\" is not a segment name (16 lowercase hex digits + .seg)"),
        (
            &["0000000000000000.seg", "0000000000000002.seg"],
            "segment missing: the log of machine 00000000000000aa has segment 2 but not 1",
        ),
    ];
    for (files, want) in rows {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("log");
        let dir = log::machine_dir(&root, m);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in files {
            std::fs::write(dir.join(f), b"").expect("write");
        }
        match log::list_segments(&storage, &root, m) {
            Err(Error::BadSegment { reason, .. }) => assert_eq!(reason, want, "{files:?}"),
            other => panic!("segments {files:?}: {other:?}"),
        }
    }
}

#[test]
fn bad_names_through_the_engine() {
    let (_tmp, e) = engine_dir();
    let long = |n: usize| vec![b'n'; n];
    let rows: Vec<(&str, Vec<u8>, Option<FsError>)> = vec![
        ("empty", b"".to_vec(), Some(FsError::InvalidName)),
        (".", b".".to_vec(), Some(FsError::InvalidName)),
        ("..", b"..".to_vec(), Some(FsError::InvalidName)),
        ("slash", b"a/b".to_vec(), Some(FsError::InvalidName)),
        ("traversal", b"../../etc".to_vec(), Some(FsError::InvalidName)),
        ("NUL", b"a\0b".to_vec(), Some(FsError::InvalidName)),
        ("255 bytes", long(NAME_MAX), None),
        ("256 bytes", long(NAME_MAX + 1), Some(FsError::NameTooLong)),
        ("4096 bytes", long(4096), Some(FsError::NameTooLong)),
    ];
    for (what, name, want) in rows {
        let r = e.create(NodeId::ROOT, &name, NodeKind::File, Attrs::default(), b"");
        match want {
            None => assert_eq!(r.expect(what).name, name, "{what}"),
            Some(want) => assert_eq!(fs_err(r), want, "create {what}"),
        }
        // A rename onto the name is judged the same way.
        let src = e.create(NodeId::ROOT, b"src", NodeKind::File, Attrs::default(), b"").expect("src");
        let r = e.rename(NodeId::ROOT, b"src", NodeId::ROOT, &name, RenameFlags::default());
        match want {
            None => assert!(r.is_ok(), "rename to {what}: {r:?}"),
            Some(want) => {
                assert_eq!(fs_err(r), want, "rename to {what}");
                e.unlink(NodeId::ROOT, b"src").expect("unlink src");
            }
        }
        let _ = src;
    }
}

#[test]
fn symlink_targets_are_data_stored_verbatim() {
    let (_tmp, e) = engine_dir();
    let targets: [&[u8]; 5] =
        [b"../../../../etc/passwd", b"/etc/shadow", b"..", b"a/../../b/./c//d", &[0xff, 0xfe, b'/', b'.', b'.']];
    for (i, t) in targets.iter().enumerate() {
        let n = e.create(NodeId::ROOT, format!("l{i}").as_bytes(), NodeKind::Symlink, Attrs::default(), t).expect("ln");
        assert_eq!(e.node(n.id).expect("node").target, *t);
    }
    let mut m = Mounted::small_blocks();
    for (i, t) in targets.iter().enumerate() {
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(t), m.p(&format!("l{i}"))).expect("symlink");
    }
    // The engine never resolves a target: it comes back byte for byte after a remount.
    m.remount();
    for (i, t) in targets.iter().enumerate() {
        assert_eq!(std::fs::read_link(m.p(&format!("l{i}"))).expect("readlink").as_os_str().as_bytes(), *t);
    }
    // Target length: Linux takes up to PATH_MAX - 1 bytes and refuses more itself.
    let long = "t/".repeat(2047) + "t";
    std::os::unix::fs::symlink(&long, m.p("long")).expect("4095-byte target");
    assert_eq!(std::fs::read_link(m.p("long")).expect("readlink").as_os_str().len(), 4095);
    assert_eq!(support::errno_of(&std::os::unix::fs::symlink(long + "t", m.p("longer"))), libc::ENAMETOOLONG);
}

#[test]
fn names_through_a_mount() {
    let m = Mounted::small_blocks();
    let rows: [(&str, usize, i32); 4] = [
        ("255 bytes", 255, 0),
        ("256 bytes", 256, libc::ENAMETOOLONG),
        ("1000 bytes", 1000, libc::ENAMETOOLONG),
        ("1 byte", 1, 0),
    ];
    for (what, len, want) in rows {
        let name = "x".repeat(len);
        let r = std::fs::write(m.p(&name), b"hi");
        assert_eq!(support::errno_of(&r), want, "create {what}");
        let r = std::fs::create_dir(m.p(&"d".repeat(len)));
        assert_eq!(support::errno_of(&r), want, "mkdir {what}");
        std::fs::write(m.p("src"), b"s").expect("src");
        let r = std::fs::rename(m.p("src"), m.p(&"r".repeat(len)));
        assert_eq!(support::errno_of(&r), want, "rename to {what}");
    }
    // `/` splits a path and NUL ends it before the kernel passes a name on,
    // so neither reaches the filesystem; `.` and `..` are resolved by the VFS.
    assert_eq!(support::errno_of(&std::fs::create_dir(m.p("."))), libc::EEXIST);
    // rmdir of a path ending in `..` is ENOTEMPTY by Linux's rule (do_rmdir).
    assert_eq!(support::errno_of(&std::fs::remove_dir(m.p("d/.."))), libc::ENOTEMPTY);
}

#[test]
fn huge_xattrs() {
    let (_tmp, e) = engine_dir();
    let f = e.create(NodeId::ROOT, b"f", NodeKind::File, Attrs::default(), b"").expect("create");
    let rows: Vec<(&str, Vec<u8>, usize, Option<FsError>)> = vec![
        ("value at the limit", b"user.a".to_vec(), XATTR_VALUE_MAX, None),
        ("value one over", b"user.b".to_vec(), XATTR_VALUE_MAX + 1, Some(FsError::Invalid)),
        ("value of 16 MiB", b"user.c".to_vec(), 16 << 20, Some(FsError::Invalid)),
        ("name of 255 bytes", [b"user.".as_slice(), &[b'n'; 250]].concat(), 1, None),
        ("name of 256 bytes", [b"user.".as_slice(), &[b'n'; 251]].concat(), 1, Some(FsError::Invalid)),
        ("empty name", Vec::new(), 1, Some(FsError::Invalid)),
    ];
    for (what, name, len, want) in rows {
        let r = e.set_xattr(f.id, &name, &vec![7; len], XattrMode::Any);
        match want {
            None => assert!(r.is_ok(), "{what}: {r:?}"),
            Some(want) => assert_eq!(fs_err(r), want, "{what}"),
        }
    }
    assert_eq!(e.node(f.id).expect("node").xattrs[b"user.a".as_slice()].len(), XATTR_VALUE_MAX);

    // Through a mount: Linux's limits (XATTR_SIZE_MAX, XATTR_NAME_MAX) apply first.
    let m = Mounted::small_blocks();
    let p = m.p("f");
    std::fs::write(&p, b"x").expect("write");
    // (what, name, value length, setxattr's result: Ok or errno)
    type Row = (&'static str, Vec<u8>, usize, Result<(), i32>);
    let rows: Vec<Row> = vec![
        ("value of 64 KiB", b"user.a".to_vec(), 64 << 10, Ok(())),
        ("value of 64 KiB + 1", b"user.b".to_vec(), (64 << 10) + 1, Err(libc::E2BIG)),
        ("value of 1 MiB", b"user.c".to_vec(), 1 << 20, Err(libc::E2BIG)),
        ("name of 255 bytes", [b"user.".as_slice(), &[b'n'; 250]].concat(), 1, Ok(())),
        ("name of 256 bytes", [b"user.".as_slice(), &[b'n'; 251]].concat(), 1, Err(libc::ERANGE)),
    ];
    for (what, name, len, want) in rows {
        assert_eq!(setxattr(&p, &name, &vec![9; len], 0), want, "setxattr {what}");
    }
    assert_eq!(getxattr(&p, b"user.a", 64 << 10).map(|v| v.len()), Ok(64 << 10));
    // A buffer one byte short is ERANGE; a missing one ENODATA.
    assert_eq!(getxattr(&p, b"user.a", (64 << 10) - 1), Err(libc::ERANGE));
    assert_eq!(getxattr(&p, b"user.b", 16), Err(libc::ENODATA));
    assert_eq!(setxattr(&p, b"user.a", b"v", libc::XATTR_CREATE), Err(libc::EEXIST));
    assert_eq!(setxattr(&p, b"user.zz", b"v", libc::XATTR_REPLACE), Err(libc::ENODATA));
}

#[test]
fn deep_trees() {
    const DEPTH: usize = 200;
    let m = Mounted::small_blocks();
    let mut p = m.mnt.clone();
    for _ in 0..DEPTH {
        p.push("d");
        std::fs::create_dir(&p).expect("mkdir deep");
    }
    std::fs::write(p.join("leaf"), b"deep").expect("write leaf");
    assert_eq!(std::fs::read(p.join("leaf")).expect("read leaf"), b"deep");
    let depth = walkdir_depth(&m.mnt);
    assert_eq!(depth, DEPTH + 1);
    // rmdir of a non-empty directory at the top is ENOTEMPTY; the chain comes down bottom-up.
    assert_eq!(support::errno_of(&std::fs::remove_dir(m.p("d"))), libc::ENOTEMPTY);
    std::fs::remove_file(p.join("leaf")).expect("rm leaf");
    for _ in 0..DEPTH {
        std::fs::remove_dir(&p).expect("rmdir deep");
        p.pop();
    }
    assert!(std::fs::read_dir(&m.mnt).expect("ls").next().is_none());

    // The engine: 5000 levels are fine to build and list; the path of a node
    // deeper than 4096 levels is refused by name, not a stack overflow.
    let (_tmp, e) = engine_dir();
    let mut dir = NodeId::ROOT;
    for _ in 0..5000 {
        dir = e.create(dir, b"d", NodeKind::Dir, Attrs::default(), b"").expect("mkdir").id;
    }
    assert_eq!(e.dump_tree().expect("dump").len(), 5001);
    match e.path_of(dir) {
        Err(Error::Invalid(why)) => assert_eq!(why, format!("{dir}: path deeper than 4096 levels")),
        other => panic!("path_of a 5000-deep node: {other:?}"),
    }
}

fn walkdir_depth(root: &Path) -> usize {
    let mut depth = 0;
    let mut cur = root.to_path_buf();
    loop {
        let entries: Vec<_> = std::fs::read_dir(&cur).expect("ls").map(|e| e.expect("entry").path()).collect();
        match entries.iter().find(|p| p.is_dir()) {
            Some(d) => {
                cur = d.clone();
                depth += 1;
            }
            None => return depth + usize::from(!entries.is_empty()),
        }
    }
}

#[test]
fn hostile_peer_event_names_never_reach_the_tree() {
    use engine::event::{Change, Event};
    let peer = MachineId(0xbad);
    let names: [Vec<u8>; 6] =
        [b"".to_vec(), b".".to_vec(), b"..".to_vec(), b"a/b".to_vec(), b"a\0b".to_vec(), vec![b'x'; 256]];
    let mut placed = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let seq = i as u64 + 1;
        let create = Event {
            node: NodeId::new(seq, peer),
            machine: peer,
            seq,
            time: engine::ids::Timestamp(seq as i64),
            clock: engine::clock::VectorClock::from_entries([(peer, seq)]),
            change: Change::Create {
                parent: NodeId::ROOT,
                name: name.clone(),
                kind: NodeKind::File,
                attrs: Attrs::default(),
                target: Vec::new(),
            },
            base: None,
        };
        let m = engine::merge::merge([&create], 4096);
        if m.lookup(NodeId::ROOT, name).is_some() || m.dirents.keys().any(|(_, n)| n == name) {
            placed.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    assert!(placed.is_empty(), "peer creates placed in the tree under invalid names: {placed:?}");
}

#[test]
fn hostile_peer_create_inside_itself_is_refused_quickly() {
    use engine::event::{Change, Event};
    let peer = MachineId(0xbad);
    let x = NodeId::new(1, peer);
    let create = Event {
        node: x,
        machine: peer,
        seq: 1,
        time: engine::ids::Timestamp(1),
        clock: engine::clock::VectorClock::from_entries([(peer, 1)]),
        change: Change::Create {
            parent: x,
            name: b"loop".to_vec(),
            kind: NodeKind::Dir,
            attrs: Attrs::default(),
            target: Vec::new(),
        },
        base: None,
    };
    let m = engine::merge::merge([&create], 4096);
    assert_eq!(m.ignored, vec![((peer, 1), "create of a node inside itself")]);
    testkit::fuzz::check_tree(&m).unwrap_or_else(|e| panic!("{e}"));
}
