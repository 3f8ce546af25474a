//! Fault injection on the remote, with real rsync against a local-directory
//! remote: rsync killed partway through a push, a full remote disk, a
//! peer's segment truncated or extended with junk on the remote, a remote
//! block replaced by garbage. Each ends in a clear error or a retry, and
//! the local data dir keeps its tree, reads back, and verifies clean.

use engine::{LiveTree, TreeRead};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use engine::ids::NodeId;
use engine::log;
use engine::storage::FsStorage;
use syncer_replication::push::{self, Progress};
use syncer_replication::{pull, Remote, RemoteError, RemoteSource, Rsync};

mod common;

use common::{random, remote_events_all_have_blocks, rsync, BS};

fn init(root: &Path, name: &str, remote: &Path) -> PathBuf {
    common::init(root, name, remote, engine::config::DEFAULT_CACHE_SIZE)
}

fn write_file(e: &LiveTree, name: &str, data: &[u8]) -> NodeId {
    common::write_file(e, NodeId::ROOT, name, data)
}

fn read_file(e: &LiveTree, name: &str) -> engine::Result<Vec<u8>> {
    e.read_file(e.lookup(NodeId::ROOT, name.as_bytes())?.id)
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}")).expect("write wrapper");
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    p
}

fn push_with(e: &LiveTree, r: &Rsync) -> syncer_replication::Result<push::PushReport> {
    push::push(e, r, &mut |_: Progress| {})
}

/// Paths, kinds, sizes and block lists: what "the local tree" means here.
fn tree(e: &LiveTree) -> Vec<String> {
    e.dump_tree()
        .expect("dump_tree")
        .into_iter()
        .map(|(p, n, b)| format!("{p:?} {:?} {} {b:?}", n.kind, n.size))
        .collect()
}

/// Closes the engine and checks the data dir verifies clean (peers' blocks
/// not fetched yet count as on the remote).
fn close_and_verify(e: LiveTree, dir: &Path) {
    e.close().expect("close");
    let v = engine::forensics::verify(dir).expect("verify");
    assert!(v.is_clean(), "{:?}", v.problems);
}

/// Every file under the remote's `blobs/` with a blob's name decodes to
/// its hash (a killed or failed rsync never leaves a torn blob under its
/// final name, which `--ignore-existing` would then skip forever). Returns
/// how many.
fn remote_blobs_all_decode(remote: &Path) -> usize {
    let mut n = 0;
    for sub in std::fs::read_dir(remote.join("blobs")).expect("blobs") {
        for f in std::fs::read_dir(sub.expect("entry").path()).expect("blob folder") {
            let path = f.expect("entry").path();
            let Some(hash) = path.file_name().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()) else {
                continue;
            };
            let stored = std::fs::read(&path).expect("read blob");
            engine::blob::decode_blob(&stored, &hash).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    n
}

fn source(e: &LiveTree, remote: &Path) -> Arc<RemoteSource> {
    common::source(e, rsync(remote))
}

#[test]
fn rsync_killed_partway_through_a_push_then_a_good_push_completes() {
    let (tmp, remote, dir, e) = one_machine();
    let one = random(200_000);
    write_file(&e, "one", &one);
    push_with(&e, &rsync(&remote)).expect("first push");
    let first = remote_events_all_have_blocks(&remote);
    assert!(first >= 2);

    let two = random(4 << 20);
    write_file(&e, "two", &two);
    let before = tree(&e);
    // The block transfer runs throttled; 0.3 s in, its whole process group
    // (the wrapper, rsync and rsync's forks) gets SIGKILL.
    let killer = script(
        tmp.path(),
        "rsync-killed",
        "for a in \"$@\"; do case \"$a\" in --files-from=*) rsync --bwlimit=1000 \"$@\" & sleep 0.3; kill -9 0;; \
         esac; done\nexec rsync \"$@\"\n",
    );
    let killed = Rsync::with_program(Remote::Local(remote.clone()), killer, "ssh");
    let err = push_with(&e, &killed).expect_err("killed rsync fails the push");
    assert!(matches!(&err, RemoteError::Rsync { status, .. } if status == "a signal"), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&remote.display().to_string()) && msg.contains("sending"), "{msg}");
    assert_eq!(remote_events_all_have_blocks(&remote), first, "no event of the killed push reached the remote");
    let sent = remote_blobs_all_decode(&remote);
    assert!(sent < 4 + 64, "the kill came before every block was sent ({sent} blobs on the remote)");
    assert_eq!(tree(&e), before, "the local tree is untouched");
    assert!(read_file(&e, "two").expect("read back") == two);

    let r = push_with(&e, &rsync(&remote)).expect("a good push completes");
    assert_eq!(r.blocks, 64, "every block of the killed run is sent again (--ignore-existing skips the done ones)");
    assert!(remote_events_all_have_blocks(&remote) > first);
    assert_eq!(remote_blobs_all_decode(&remote), 4 + 64, "one: 4 blocks, two: 64");
    assert_eq!(tree(&e), before);
    assert!(read_file(&e, "one").expect("read back") == one);
    close_and_verify(e, &dir);
}

/// A tmpfs mounted on a folder, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mkdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount (tests run as root)");
        assert!(ok.success(), "mount -t tmpfs failed; these tests run as root");
        Tmpfs(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.0).status();
        assert!(ok.expect("mount").success(), "remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn remote_disk_full_is_a_clear_error_and_a_push_completes_once_there_is_room() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let remote = tmp.path().join("remote");
    let disk = Tmpfs::mount(&remote, "1m");
    let dir = init(tmp.path(), "a", &remote);
    let e = LiveTree::open(&dir).expect("open");
    let small = random(100_000);
    write_file(&e, "small", &small);
    push_with(&e, &rsync(&remote)).expect("what fits goes");
    let first = remote_events_all_have_blocks(&remote);
    let big = random(3 << 20);
    write_file(&e, "big", &big);
    let before = tree(&e);

    let err = push_with(&e, &rsync(&remote)).expect_err("3 MiB into a 1 MiB remote");
    assert!(matches!(&err, RemoteError::Rsync { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("remote {}", remote.display())), "the error names the remote: {msg}");
    assert!(msg.contains("No space left on device"), "the error says why: {msg}");
    assert_eq!(remote_events_all_have_blocks(&remote), first, "no event went without its blocks");
    assert!(remote_blobs_all_decode(&remote) < 2 + 48);
    assert_eq!(tree(&e), before);
    assert!(read_file(&e, "big").expect("read back") == big);

    disk.resize("16m");
    let r = push_with(&e, &rsync(&remote)).expect("push once there is room");
    assert_eq!(r.blocks, 48, "the blocks of the failed run go again");
    assert!(remote_events_all_have_blocks(&remote) > first);
    assert_eq!(remote_blobs_all_decode(&remote), 2 + 48);
    assert_eq!(tree(&e), before);
    assert!(read_file(&e, "small").expect("read back") == small);
    close_and_verify(e, &dir);
    drop(disk);
}

/// `peer`'s segment 0 on the remote.
fn remote_segment(remote: &Path, peer: &LiveTree) -> PathBuf {
    log::segment_path(&remote.join("log"), peer.machine(), 0)
}

fn pull_into(e: &LiveTree, remote: &Path) {
    pull::pull_log(&rsync(remote), &e.replication().log_dir(), Some(e.machine())).expect("pull");
}

/// Paths and sizes of the files of `e` named `f*` (a peer's files).
fn peer_files(e: &LiveTree) -> Vec<(Vec<u8>, u64)> {
    e.dump_tree()
        .expect("tree")
        .into_iter()
        .filter(|(p, ..)| p.starts_with(b"/f"))
        .map(|(p, n, _)| (p, n.size))
        .collect()
}

/// Machine `a` of a local-directory remote: the temp dir holding both,
/// the remote, `a`'s data dir, and `a` open.
fn one_machine() -> (tempfile::TempDir, PathBuf, PathBuf, LiveTree) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let remote = tmp.path().join("remote");
    let dir = init(tmp.path(), "a", &remote);
    let e = LiveTree::open(&dir).expect("open a");
    (tmp, remote, dir, e)
}

/// Machines `a` and `b` of one local-directory remote; `b` holds a file of
/// its own, `mine`.
struct TwoMachines {
    tmp: tempfile::TempDir,
    remote: PathBuf,
    a: LiveTree,
    b: LiveTree,
    b_dir: PathBuf,
    mine: Vec<u8>,
}

fn two_machines() -> TwoMachines {
    let tmp = tempfile::tempdir().expect("tempdir");
    let remote = tmp.path().join("remote");
    let a = LiveTree::open(&init(tmp.path(), "a", &remote)).expect("open a");
    let b_dir = init(tmp.path(), "b", &remote);
    let b = LiveTree::open(&b_dir).expect("open b");
    let mine = random(150_000);
    write_file(&b, "mine", &mine);
    TwoMachines { tmp, remote, a, b, b_dir, mine }
}

#[test]
fn peer_segment_truncated_on_the_remote_stops_at_the_torn_tail_and_resumes() {
    let TwoMachines { tmp: _tmp, remote, a, b, b_dir, mine } = two_machines();
    let files: Vec<Vec<u8>> = (0..3).map(|_| random(100_000)).collect();
    for (i, data) in files.iter().enumerate() {
        write_file(&a, &format!("f{i}"), data);
    }
    push_with(&a, &rsync(&remote)).expect("push a");

    // Cut A's segment on the remote in the middle of its last record.
    let seg = remote_segment(&remote, &a);
    let full = std::fs::read(&seg).expect("remote segment");
    let (events, _) = log::read_events(&FsStorage, &remote.join("log"), log::log_start(a.machine())).expect("read");
    let last = events.last().expect("events").0;
    let cut = last.offset + 20;
    std::fs::write(&seg, &full[..cut as usize]).expect("truncate");

    pull_into(&b, &remote);
    let r = b.import().expect("a torn tail is not an error");
    assert_eq!(r.applied, events.len() as u64 - 1, "everything before the torn record");
    let (_, end) =
        log::read_events(&FsStorage, &b.replication().log_dir(), log::log_start(a.machine())).expect("local copy");
    assert_eq!(end.torn_tail, Some(last), "the local copy ends torn where the remote was cut");
    let got = peer_files(&b);
    assert_eq!(got[..2], [(b"/f0".to_vec(), 100_000), (b"/f1".to_vec(), 100_000)]);
    assert!(got.get(2).is_none_or(|(_, size)| *size == 0), "the torn write of f2 is not applied: {got:?}");
    assert!(read_file(&b, "mine").expect("own data") == mine);

    // A's next push fills the remote segment in (rsync --append sends what
    // it lacks), and B's next pull resumes at the tear.
    write_file(&a, "f3", &random(1000));
    push_with(&a, &rsync(&remote)).expect("push a again");
    assert!(std::fs::read(&seg).expect("remote segment").starts_with(&full), "the remote segment is whole again");
    pull_into(&b, &remote);
    let r = b.import().expect("resumes");
    assert_eq!(r.applied, 3, "the torn record and f3's two");
    assert_eq!(peer_files(&b), peer_files(&a));
    b.set_block_source(Some(source(&b, &remote)));
    assert!(read_file(&b, "f2").expect("f2 on demand") == files[2]);
    assert!(read_file(&b, "mine").expect("own data") == mine);
    close_and_verify(b, &b_dir);
}

/// A has pushed, B has imported A's log and has a file of its own (`mine`);
/// then A's segment on the remote gets junk appended after its first `len`
/// bytes. Returns the machines and that length.
fn junk_on_the_remote() -> (TwoMachines, u64) {
    let m = two_machines();
    let TwoMachines { remote, a, b, .. } = &m;
    write_file(a, "f0", &random(100_000));
    push_with(a, &rsync(remote)).expect("push a");
    pull_into(b, remote);
    b.import().expect("clean import");
    let seg = remote_segment(remote, a);
    let mut bytes = std::fs::read(&seg).expect("read");
    let len = bytes.len() as u64;
    bytes.extend(std::iter::repeat_n(b"not a syncer record; ".as_slice(), 10).flatten());
    std::fs::write(&seg, bytes).expect("extend with junk");
    (m, len)
}

#[test]
fn peer_segment_extended_with_junk_on_the_remote_is_refused_naming_segment_and_offset() {
    let (TwoMachines { tmp: _tmp, remote, a, b, b_dir, mine }, len) = junk_on_the_remote();
    let before = tree(&b);
    pull_into(&b, &remote);
    // The import goes on for everything else; the peer's damage is refused
    // and reported, naming the segment and the offset of the junk.
    let report = b.import().expect("import despite a damaged peer log");
    assert_eq!(report.applied, 0);
    let local_seg = log::segment_path(&b.replication().log_dir(), a.machine(), 0);
    let problems = b.peer_problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with(&format!("{} at byte {len}: ", local_seg.display())), "{problems:?}");
    assert_eq!(tree(&b), before, "nothing was imported");
    assert!(read_file(&b, "mine").expect("own data") == mine);
    // Our own writes go on, and our own log stays clean: the only problem
    // `verify` sees is the peer's segment, at the junk.
    write_file(&b, "mine2", b"still writable");
    assert!(read_file(&b, "mine2").expect("own data") == b"still writable");
    b.close().expect("close");
    drop(b);
    let v = engine::forensics::verify(&b_dir).expect("verify");
    assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
    assert!(v.problems[0].starts_with(&format!("{} at byte {len}: ", local_seg.display())), "{:?}", v.problems);
}

/// Regression (docs/RELIABILITY.md, remote faults): junk pulled into
/// `log/<peer>/` once made `LiveTree::open` fail (a peer's damaged log was
/// fatal), and `rsync --append` never shrinks the local copy. Now the
/// peer's events before the damage import, the damage is reported, and our
/// data dir opens.
#[test]
fn junk_in_a_pulled_peer_segment_keeps_the_data_dir_openable() {
    let (TwoMachines { tmp: _tmp, remote, a, b, b_dir, mine }, len) = junk_on_the_remote();
    pull_into(&b, &remote);
    b.import().expect("import");
    assert_eq!(b.peer_problems().len(), 1);
    b.close().expect("close");
    drop(b);
    let b = LiveTree::open(&b_dir).expect("a peer's damaged log must not keep our own data dir from opening");
    assert_eq!(b.peer_problems().len(), 1, "the damage is still reported");
    assert!(read_file(&b, "mine").expect("own data") == mine);
    // Once the local copy is clean again, the next import reports nothing.
    let local_seg = log::segment_path(&b.replication().log_dir(), a.machine(), 0);
    let clean = std::fs::read(remote_segment(&remote, &a)).expect("read")[..len as usize].to_vec();
    std::fs::write(&local_seg, clean).expect("cut the junk");
    b.import().expect("import");
    assert!(b.peer_problems().is_empty(), "{:?}", b.peer_problems());
}

/// Regression (docs/RELIABILITY.md, remote faults, finding 7): `push`
/// assumed our segment on the remote was a prefix of our staged copy. With
/// junk on it, `rsync --append` appended our new bytes after the junk (or
/// skipped the segment when the junk was longer) and the push reported
/// success.
#[test]
fn push_over_junk_in_our_own_remote_segment_is_noticed() {
    let (TwoMachines { tmp: _tmp, remote, a, .. }, _) = junk_on_the_remote();
    write_file(&a, "f1", &random(5000));
    // The 210 junk bytes are fewer than the events of one 5,000-byte file,
    // so the remote segment is shorter than ours: repaired, not refused.
    let pushed = push_with(&a, &rsync(&remote)).expect("push over shorter junk");
    assert!(pushed.repaired > 0, "the junk went unnoticed: {pushed:?}");
    let (here, there) = segment_bytes(&a, &remote);
    assert!(here == there, "the remote segment is not ours after the push");
}

/// A's segment 0: (here, on the remote).
fn segment_bytes(a: &LiveTree, remote: &Path) -> (Vec<u8>, Vec<u8>) {
    let here = std::fs::read(log::segment_path(&a.replication().log_dir(), a.machine(), 0)).expect("our segment");
    (here, std::fs::read(remote_segment(remote, a)).expect("remote segment"))
}

#[test]
fn push_over_a_longer_remote_segment_of_ours_is_refused_and_leaves_it_alone() {
    let (TwoMachines { tmp, remote, a, b, b_dir, .. }, len) = junk_on_the_remote();
    // More junk than the log bytes this push has.
    let seg = remote_segment(&remote, &a);
    let mut junk = std::fs::read(&seg).expect("read");
    junk.extend(random(20_000));
    std::fs::write(&seg, &junk).expect("more junk");
    let f1 = random(5000);
    write_file(&a, "f1", &f1);
    let before = tree(&a);
    let blocks_before = remote_blobs_all_decode(&remote);

    let err = push_with(&a, &rsync(&remote)).expect_err("a longer remote segment is refused");
    let (here, there) = segment_bytes(&a, &remote);
    assert!(here.len() > len as usize && here.len() < junk.len());
    assert!(
        matches!(&err, RemoteError::RemoteSegmentLonger { remote_len, local_len, machine, .. }
            if *remote_len == junk.len() as u64 && *local_len == here.len() as u64 && *machine == a.machine()),
        "{err:?}"
    );
    let msg = err.to_string();
    for part in [seg.display().to_string(), junk.len().to_string(), here.len().to_string(), "machine id".into()] {
        assert!(msg.contains(&part), "the error names {part}: {msg}");
    }
    assert!(there == junk, "the remote segment is left as it was");
    assert!(remote_blobs_all_decode(&remote) > blocks_before, "f1's blocks went first, as always");
    assert_eq!(tree(&a), before, "the local tree is untouched");
    assert!(read_file(&a, "f1").expect("read back") == f1);
    let again = push_with(&a, &rsync(&remote)).expect_err("still refused");
    assert!(matches!(again, RemoteError::RemoteSegmentLonger { .. }), "{again:?}");

    // With the junk gone, the next push goes through and B gets f1.
    std::fs::write(&seg, &junk[..len as usize]).expect("remove the junk");
    let r = push_with(&a, &rsync(&remote)).expect("push once the junk is gone");
    assert_eq!((r.blocks, r.repaired), (0, 0), "{r:?}");
    let (here, there) = segment_bytes(&a, &remote);
    assert!(here == there, "the remote segment is ours again");
    assert!(remote_events_all_have_blocks(&remote) >= 4);
    pull_into(&b, &remote);
    b.import().expect("import");
    assert!(b.peer_problems().is_empty(), "{:?}", b.peer_problems());
    b.set_block_source(Some(source(&b, &remote)));
    assert!(read_file(&b, "f1").expect("f1 in b") == f1);
    close_and_verify(b, &b_dir);
    close_and_verify(a, &tmp.path().join("a"));
}

#[test]
fn push_over_shorter_junk_in_our_remote_segment_replaces_it_with_ours() {
    let (TwoMachines { tmp: _tmp, remote, a, b, b_dir, .. }, len) = junk_on_the_remote();
    let files: Vec<Vec<u8>> = (1..4).map(|_| random(300_000)).collect();
    for (i, data) in files.iter().enumerate() {
        write_file(&a, &format!("f{}", i + 1), data);
    }
    let junk_len = std::fs::metadata(remote_segment(&remote, &a)).expect("stat").len();
    let r = push_with(&a, &rsync(&remote)).expect("push");
    let (here, there) = segment_bytes(&a, &remote);
    assert!(here.len() as u64 > junk_len && junk_len > len, "the junk is shorter than our new bytes");
    assert_eq!(r.repaired, 1, "{r:?}");
    assert!(here == there, "the remote segment is ours, without the junk");
    assert!(remote_events_all_have_blocks(&remote) >= 8);
    pull_into(&b, &remote);
    b.import().expect("import");
    assert!(b.peer_problems().is_empty(), "{:?}", b.peer_problems());
    assert_eq!(peer_files(&b), peer_files(&a));
    close_and_verify(b, &b_dir);
}

/// Overwrites bytes in the middle of `seg`, keeping its length.
fn scribble(seg: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(seg).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid..mid + 40].copy_from_slice(&[b'#'; 40]);
    std::fs::write(seg, &bytes).expect("write");
    bytes
}

#[test]
fn same_length_junk_in_our_remote_segment_is_replaced_with_ours() {
    let (tmp, remote, dir, a) = one_machine();
    write_file(&a, "f0", &random(100_000));
    let r = rsync(&remote);
    push_with(&a, &r).expect("push");
    let seg = remote_segment(&remote, &a);

    // Junk over our bytes, then new bytes: appended, verified, re-sent.
    scribble(&seg);
    write_file(&a, "f1", &random(5000));
    let report = push_with(&a, &r).expect("push");
    assert_eq!((report.repaired, report.runs), (1, 3), "blocks, listing, log: {report:?}");
    let (here, there) = segment_bytes(&a, &remote);
    assert!(here == there, "the remote segment is ours again");

    // A push that sent the log but stopped before recording it leaves the
    // remote segment as long as ours: the next push compares checksums.
    let pos = std::fs::read(tmp.path().join("a/push.pos")).expect("push.pos");
    write_file(&a, "f2", &random(5000));
    let report = push_with(&a, &r).expect("push");
    assert_eq!(report.repaired, 0, "{report:?}");
    std::fs::write(tmp.path().join("a/push.pos"), &pos).expect("as if the push stopped before step 6");
    let scribbled = scribble(&seg);
    let ours = std::fs::read(log::segment_path(&a.replication().log_dir(), a.machine(), 0)).expect("our segment");
    assert_eq!(scribbled.len(), ours.len(), "the remote segment is as long as ours");
    let report = push_with(&a, &r).expect("push");
    assert_eq!((report.blocks, report.repaired, report.runs), (0, 1, 2), "listing, checksum pass: {report:?}");
    let (here, there) = segment_bytes(&a, &remote);
    assert!(here == there, "the remote segment is ours again");
    assert_ne!(scribbled, there);
    // Once recorded, nothing more goes out.
    let report = push_with(&a, &r).expect("push");
    assert_eq!((report.runs, report.repaired), (0, 0), "{report:?}");
    assert!(remote_events_all_have_blocks(&remote) >= 6);
    close_and_verify(a, &dir);
}

#[test]
fn garbage_remote_block_is_refused_on_demand_in_a_clone() {
    let (tmp, remote, _, a) = one_machine();
    let data = random(3 * BS as usize);
    let f = write_file(&a, "f", &data);
    push_with(&a, &rsync(&remote)).expect("push");
    let blocks = a.file_blocks(f, 0, 3).expect("blocks");
    let bad = blocks[1].1.hash;
    let hex = bad.to_hex();
    let blob = remote.join("blobs").join(&hex[..2]).join(&hex);
    let len = std::fs::metadata(&blob).expect("stat").len() as usize;
    std::fs::write(&blob, random(len)).expect("replace with garbage");

    let b =
        pull::clone_into(&tmp.path().join("b"), &remote.display().to_string(), &rsync(&remote), None).expect("clone");
    b.set_block_source(Some(source(&b, &remote)));
    let f = b.lookup(NodeId::ROOT, b"f").expect("f").id;
    let got = b.file_blocks(f, 0, 3).expect("blocks");
    // Block 0's fetch also brings block 1 (read-ahead): refused, not stored.
    assert_eq!(b.read_block(&got[0].1).expect("intact block"), data[..BS as usize]);
    assert!(!b.replication().has_blob(&bad), "a garbage read-ahead block is not stored");
    let err = b.read_block(&got[1].1).expect_err("garbage is refused");
    assert!(matches!(&err, engine::Error::CorruptBlob { hash, .. } if *hash == bad), "{err:?}");
    assert!(err.to_string().contains(&hex), "the error names the blob: {err}");
    assert!(!b.replication().has_blob(&bad), "a refused block is not stored");
    assert_eq!(b.read_block(&got[2].1).expect("intact block"), data[2 * BS as usize..]);
    close_and_verify(b, &tmp.path().join("b"));
}

/// Blocks a clone fetched on demand are on the remote, so they count as
/// pushed and the evictor may take them (before the fix in
/// `LiveTree::fetch_block` and the daemon's prefetch they never left).
#[test]
fn fetched_blocks_can_be_evicted() {
    let (tmp, remote, _, a) = one_machine();
    let data = random(4 * BS as usize);
    write_file(&a, "f", &data);
    push_with(&a, &rsync(&remote)).expect("push");
    let b = pull::clone_into(&tmp.path().join("b"), &remote.display().to_string(), &rsync(&remote), Some(BS))
        .expect("clone");
    b.set_block_source(Some(source(&b, &remote)));
    assert!(read_file(&b, "f").expect("on demand") == data);
    let ev = engine::evict::evict(&b).expect("evict");
    assert!(!ev.over_limit && ev.evicted > 0 && ev.after <= BS, "{ev:?}");
    assert!(read_file(&b, "f").expect("fetched again") == data);
}
