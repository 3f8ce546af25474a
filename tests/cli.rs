//! The `syncer` binary end to end: init, status, log verify, index rebuild,
//! and the clear errors it gives on damaged data dirs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn syncer(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_syncer")).args(args).output().expect("run syncer")
}

fn run(args: &[&str]) -> Output {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    syncer(&args)
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn init(tmp: &Path) -> PathBuf {
    let data = tmp.join("data");
    let o = run(&["init", data.to_str().expect("utf8"), "--block-size", "64KiB"]);
    assert!(o.status.success(), "init: {}", text(&o));
    data
}

/// Writes a few files through the engine so that the log and blobs are not empty.
fn populate(data: &Path) {
    use engine::event::{Attrs, BlockChange, NodeKind};
    use engine::ids::NodeId;
    let e = engine::LiveTree::open(data).expect("open");
    for i in 0..5u8 {
        let f =
            e.create(NodeId::ROOT, format!("f{i}").as_bytes(), NodeKind::File, Attrs::default(), b"").expect("create");
        let b = e.put_block(&vec![i + 1; 1000]).expect("put");
        e.write_blocks(f.id, 1000, vec![BlockChange { index: 0, block: Some(b) }]).expect("write");
    }
    e.sync().expect("sync");
}

#[test]
fn init_status_verify_rebuild() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = init(tmp.path());
    let d = data.to_str().expect("utf8");
    populate(&data);
    let o = run(&["status", d]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("syncer-data 2.0.0"), "{out}");
    assert!(out.contains("nodes:        6 (5 files, 1 dirs)"), "{out}");
    let o = run(&["log", "verify", d]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("5 blocks (5 ok, 0 on the remote only)"), "{}", text(&o));
    let o = run(&["index", "rebuild", d]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("10 events, 6 nodes"), "{}", text(&o));
}

#[test]
fn init_refuses_a_non_empty_dir_and_bad_sizes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("x"), b"x").expect("write");
    let o = run(&["init", tmp.path().to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("not empty"), "{}", text(&o));
    let o = run(&["init", tmp.path().join("d").to_str().expect("utf8"), "--block-size", "1000"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("block"), "{}", text(&o));
}

#[test]
fn verify_reports_a_corrupt_blob_and_a_corrupt_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = init(tmp.path());
    populate(&data);
    let d = data.to_str().expect("utf8");
    // Flip a byte in the body of one blob.
    let blob = walk(&data.join("blobs")).into_iter().next().expect("a blob");
    let mut bytes = std::fs::read(&blob).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, &bytes).expect("write");
    let o = run(&["log", "verify", d]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("DAMAGE: blob"), "{}", text(&o));
    // Flip a byte in the middle of the log.
    let seg = walk(&data.join("log")).into_iter().next().expect("a segment");
    let mut bytes = std::fs::read(&seg).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&seg, &bytes).expect("write");
    let o = run(&["log", "verify", d]);
    assert_eq!(o.status.code(), Some(3));
    assert!(text(&o).contains(&format!("DAMAGE: {}", seg.display())), "{}", text(&o));
    // Opening refuses the damaged log with the same clear error.
    let o = run(&["index", "rebuild", d]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains(seg.to_str().expect("utf8")), "{}", text(&o));
}

#[test]
fn damaged_or_newer_format_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = init(tmp.path());
    let d = data.to_str().expect("utf8");
    std::fs::write(data.join("FORMAT"), b"syncer-data 9.0.0\n").expect("write");
    let o = run(&["status", d]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("9.0.0") && text(&o).contains("2.0.0"), "{}", text(&o));
    std::fs::write(data.join("FORMAT"), b"\xff\x00garbage").expect("write");
    let o = run(&["status", d]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("FORMAT"), "{}", text(&o));
    std::fs::remove_file(data.join("FORMAT")).expect("rm");
    let o = run(&["status", d]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("not a syncer data dir"), "{}", text(&o));
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn conflicts_lists_both_sides_of_a_name_collision() {
    use engine::clock::VectorClock;
    use engine::event::{Attrs, Change, Event, NodeKind};
    use engine::ids::{MachineId, NodeId, Timestamp};
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = init(tmp.path());
    let o = run(&["conflicts", data.to_str().expect("utf8")]);
    assert!(o.status.success() && text(&o).contains("no conflicts"), "{}", text(&o));
    // Two machines each created notes.txt in the root while offline.
    for (i, m) in [MachineId(0xa), MachineId(0xb)].into_iter().enumerate() {
        let ev = Event {
            node: NodeId::new(1, m),
            machine: m,
            seq: 1,
            time: Timestamp::from_secs_nanos(1_795_600_000 + i as i64, 0),
            clock: VectorClock::from_entries([(m, 1)]),
            change: Change::Create {
                parent: NodeId::ROOT,
                name: b"notes.txt".to_vec(),
                kind: NodeKind::File,
                attrs: Attrs::default(),
                target: Vec::new(),
            },
            base: None,
        };
        let storage = std::sync::Arc::new(engine::storage::FsStorage);
        let (mut w, _) = engine::log::LogWriter::open(storage, &data.join("log"), m, 1 << 20).expect("log");
        w.append(&[ev]).expect("append");
        w.sync().expect("sync");
    }
    let o = run(&["conflicts", data.to_str().expect("utf8")]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("2026-11-25 name /notes.txt"), "{out}");
    assert!(out.contains("kept the name:  node 1.000000000000000a (now at /notes.txt)"), "{out}");
    assert!(out.contains("-> /notes (conflict from 000000000000000b 2026-11-25).txt"), "{out}");
    assert!(out.contains("1 name conflicts, 0 concurrent changes"), "{out}");
}
