//! `syncer log inspect`, `log graph` and `history` through the binary, on a
//! history whose events are known one by one.

use engine::TreeRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use engine::event::{Attrs, BlockChange, NodeKind};
use engine::ids::{NodeId, Timestamp};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_syncer")).args(args).output().expect("run syncer")
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(o.status.success(), "syncer {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn when(t: Timestamp) -> String {
    format!("{}.{:09}", t.0.div_euclid(1_000_000_000), t.0.rem_euclid(1_000_000_000))
}

fn mark() -> Timestamp {
    std::thread::sleep(Duration::from_millis(5));
    let t = Timestamp::now();
    std::thread::sleep(Duration::from_millis(5));
    t
}

struct Fixture {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    machine: String,
    a: NodeId,
    d: NodeId,
    /// A moment between the first and the second half of the events.
    middle: Timestamp,
}

/// Events, in order (seq): 1 create a, 2 write a, 3 create d, | middle |,
/// 4 move a into d, 5 setxattr a, 6 write a, 7 attrs d, 8 remove a.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let o = run(&["init", data.to_str().expect("utf8"), "--block-size", "4KiB"]);
    assert!(o.status.success());
    let e = engine::LiveTree::open(&data).expect("open");
    let a = e.create(NodeId::ROOT, b"a", NodeKind::File, Attrs::default(), b"").expect("create").id;
    let b0 = e.put_block(&[1u8; 4096]).expect("put");
    let b1 = e.put_block(&[2u8; 100]).expect("put");
    e.write_blocks(a, 4196, vec![BlockChange { index: 0, block: Some(b0) }, BlockChange { index: 1, block: Some(b1) }])
        .expect("write");
    let d = e.create(NodeId::ROOT, b"d", NodeKind::Dir, Attrs::default(), b"").expect("mkdir").id;
    let middle = mark();
    e.rename(NodeId::ROOT, b"a", d, b"a", engine::RenameFlags::default()).expect("rename");
    e.set_xattr(a, b"user.k", b"v", engine::XattrMode::Any).expect("xattr");
    e.write_blocks(a, 4196, vec![BlockChange { index: 1, block: Some(b0) }]).expect("write");
    e.set_attrs(d, engine::event::AttrChange { mode: Some(0o700), ..Default::default() }).expect("chmod");
    e.unlink(d, b"a").expect("unlink");
    let machine = e.machine().to_string();
    e.close().expect("close");
    Fixture { _tmp: tmp, data, machine, a, d, middle }
}

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"))).collect()
}

/// `(seq, kind)` of each JSON line.
fn seq_kinds(v: &[serde_json::Value]) -> Vec<(u64, String)> {
    v.iter().map(|o| (o["seq"].as_u64().expect("seq"), o["kind"].as_str().expect("kind").to_string())).collect()
}

fn inspect(f: &Fixture, extra: &[&str]) -> Vec<(u64, String)> {
    let mut args = vec!["log", "inspect", f.data.to_str().expect("utf8"), "--json"];
    args.extend(extra);
    seq_kinds(&json_lines(&ok(&args)))
}

fn sk(v: &[(u64, &str)]) -> Vec<(u64, String)> {
    v.iter().map(|(s, k)| (*s, k.to_string())).collect()
}

#[test]
fn filters_return_exactly_the_expected_events() {
    let f = fixture();
    let all = sk(&[
        (1, "create"),
        (2, "write"),
        (3, "create"),
        (4, "move"),
        (5, "setxattr"),
        (6, "write"),
        (7, "attrs"),
        (8, "remove"),
    ]);
    assert_eq!(inspect(&f, &[]), all);
    let of_a = sk(&[(1, "create"), (2, "write"), (4, "move"), (5, "setxattr"), (6, "write"), (8, "remove")]);
    assert_eq!(inspect(&f, &["--node", &f.a.to_string()]), of_a);
    assert_eq!(inspect(&f, &["--node", &f.d.to_string()]), sk(&[(3, "create"), (7, "attrs")]));
    // --path: the node at that path now, or at --at.
    assert_eq!(inspect(&f, &["--path", "/d"]), sk(&[(3, "create"), (7, "attrs")]));
    assert_eq!(inspect(&f, &["--path", "/a", "--at", &when(f.middle)]), of_a);
    let o = run(&["log", "inspect", f.data.to_str().expect("utf8"), "--path", "/a"]);
    assert_eq!(o.status.code(), Some(1), "/a is gone now");
    assert_eq!(inspect(&f, &["--kind", "write"]), sk(&[(2, "write"), (6, "write")]));
    assert_eq!(inspect(&f, &["--kind", "create,remove"]), sk(&[(1, "create"), (3, "create"), (8, "remove")]));
    assert_eq!(inspect(&f, &["--machine", &f.machine]), all);
    assert_eq!(inspect(&f, &["--machine", "00000000000000ff"]), Vec::new());
    assert_eq!(inspect(&f, &["--until", &when(f.middle)]), all[..3].to_vec());
    assert_eq!(inspect(&f, &["--since", &when(f.middle)]), all[3..].to_vec());
    assert_eq!(
        inspect(&f, &["--since", &when(f.middle), "--kind", "write", "--node", &f.a.to_string()]),
        sk(&[(6, "write")])
    );
    // An event number as WHEN.
    assert_eq!(inspect(&f, &["--until", "#2"]), all[..2].to_vec());
    let bad = run(&["log", "inspect", f.data.to_str().expect("utf8"), "--kind", "frobnicate"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown kind"));
}

#[test]
fn json_lines_carry_the_decoded_change() {
    let f = fixture();
    let lines = json_lines(&ok(&["log", "inspect", f.data.to_str().expect("utf8"), "--json", "--kind", "write"]));
    assert_eq!(lines.len(), 2);
    let w = &lines[0];
    assert_eq!(w["checksum"], "ok");
    assert_eq!(w["node"], f.a.to_string());
    assert_eq!(w["change"]["size"], 4196);
    let blocks = w["change"]["blocks"].as_array().expect("blocks");
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[1]["index"], 1);
    assert_eq!(blocks[1]["len"], 100);
    assert_eq!(blocks[1]["hash"].as_str().expect("hash").len(), 64);
    assert_eq!(w["clock"][&f.machine], 2);
    assert!(w["position"].as_str().expect("pos").starts_with(&format!("@{}:0:", f.machine)));
    // The printed event name and position are valid WHENs.
    let pos = lines[1]["position"].as_str().expect("pos").to_string();
    assert_eq!(inspect(&f, &["--until", &pos]).len(), 6);
    let name = lines[1]["event"].as_str().expect("event").to_string();
    assert_eq!(inspect(&f, &["--since", &name]).len(), 3);
    // The table is aligned: every row's CHECKSUM column starts where the header's does.
    let table = ok(&["log", "inspect", f.data.to_str().expect("utf8")]);
    let col = table.lines().next().expect("header").find("CHECKSUM").expect("column");
    assert_eq!(table.lines().count(), 9);
    assert!(table.lines().skip(1).all(|l| &l[col..col + 2] == "ok"), "{table}");
}

fn corrupt_record(data: &Path, machine: &str, offset: u64) {
    let seg = data.join("log").join(machine).join(format!("{:016x}.seg", 0));
    let mut bytes = std::fs::read(&seg).expect("read");
    bytes[offset as usize + 22] ^= 0xff;
    std::fs::write(&seg, bytes).expect("write");
}

#[test]
fn a_corrupt_middle_record_is_shown_in_place() {
    let f = fixture();
    let d = f.data.to_str().expect("utf8");
    let lines = json_lines(&ok(&["log", "inspect", d, "--json"]));
    let pos = lines[3]["position"].as_str().expect("pos").to_string();
    let offset: u64 = pos.rsplit(':').next().expect("offset").parse().expect("number");
    corrupt_record(&f.data, &f.machine, offset);

    let lines = json_lines(&ok(&["log", "inspect", d, "--json"]));
    assert_eq!(lines.len(), 8, "seven good records and the damaged one");
    assert_eq!(lines[3]["checksum"], "damaged");
    assert_eq!(lines[3]["position"], pos);
    assert!(lines[3]["damage"].as_str().expect("why").contains("checksum"), "{}", lines[3]);
    let seqs: Vec<u64> = lines.iter().filter_map(|l| l["seq"].as_u64()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 5, 6, 7, 8], "inspection continues after the damage");
    let table = ok(&["log", "inspect", d]);
    assert!(table.contains("DAMAGED") && table.contains(&pos) && table.contains("1 damaged record"), "{table}");
    // With a node filter the index cannot be brought up to date (the strict
    // reader stops at the damage): it falls back to the tolerant scan.
    let o = run(&["log", "inspect", d, "--node", &f.a.to_string(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = json_lines(&String::from_utf8_lossy(&o.stdout));
    assert!(got.iter().any(|l| l["checksum"] == "damaged"));
    assert_eq!(got.iter().filter(|l| l["checksum"] == "ok").count(), 5);
}

#[test]
fn graph_and_history() {
    let f = fixture();
    let d = f.data.to_str().expect("utf8");
    let dot = ok(&["log", "graph", d, "--node", &f.a.to_string()]);
    assert!(dot.starts_with("digraph"), "{dot}");
    let m = &f.machine;
    assert!(dot.contains(&format!("\"{m}#1\" -> \"{m}#2\";")), "{dot}");
    assert!(dot.contains(&format!("\"{m}#6\" -> \"{m}#8\";")), "{dot}");
    assert!(!dot.contains("concurrent"), "one machine: nothing concurrent\n{dot}");
    let h = ok(&["history", d, "/d"]);
    assert!(h.contains("2 versions") && h.contains("create") && h.contains("attrs"), "{h}");
    let h = ok(&["history", d, "/a", "--at", &when(f.middle)]);
    assert!(h.contains("2 versions"), "versions up to --at\n{h}");
}
