//! The remote with real rsync and real data dirs (and one real mount, and
//! one real sshd).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::event::{Attrs, NodeKind};
use engine::ids::NodeId;
use engine::{LiveTree, TreeRead};
use syncer_replication::push::{self, Progress};
use syncer_replication::{Daemon, DaemonOptions, Remote, Rsync};

mod common;

use common::{init, random, remote_events_all_have_blocks, rsync, source, write_file, BS};

fn read_file(e: &LiveTree, node: NodeId) -> engine::Result<Vec<u8>> {
    e.read_file(node)
}

fn no_progress() -> impl FnMut(Progress) {
    |_| {}
}

fn store_bytes(e: &LiveTree) -> u64 {
    engine::evict::entries(e).expect("entries").iter().map(|c| c.stored_len).sum()
}

#[test]
fn clone_sees_the_full_tree_and_fetches_content_on_demand() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let remote = tmp.path().join("remote");
    let a_dir = init(tmp.path(), "a", &remote, 1 << 30);
    let a = LiveTree::open(&a_dir).expect("open a");
    let d = a.create(NodeId::ROOT, b"docs", NodeKind::Dir, Attrs::default(), b"").expect("mkdir").id;
    let mut want = HashMap::new();
    for (i, len) in [0usize, 100, 70_000, 300_000].into_iter().enumerate() {
        let data = random(len);
        write_file(&a, d, &format!("f{i}"), &data);
        want.insert(format!("/docs/f{i}"), data);
    }
    let r = push::push(&a, &rsync(&remote), &mut no_progress()).expect("push");
    assert_eq!(r.blocks, 1 + 2 + 5, "every distinct block goes once");

    let b_dir = tmp.path().join("b");
    let b = syncer_replication::pull::clone_into(&b_dir, &remote.display().to_string(), &rsync(&remote), None)
        .expect("clone");
    assert_ne!(b.machine(), a.machine(), "a clone is a new machine");
    assert_eq!(b.config().block_size, BS, "block size comes from the remote");
    assert_eq!(store_bytes(&b), 0, "clone fetches no content");
    let tree_a: Vec<_> = a.dump_tree().expect("tree").into_iter().map(|(p, n, _)| (p, n.size, n.kind)).collect();
    let tree_b: Vec<_> = b.dump_tree().expect("tree").into_iter().map(|(p, n, _)| (p, n.size, n.kind)).collect();
    assert_eq!(tree_a, tree_b);
    // Without a source, content is missing; with one, it comes on demand.
    let f3 = b.lookup(b.lookup(NodeId::ROOT, b"docs").expect("docs").id, b"f3").expect("f3").id;
    assert!(matches!(read_file(&b, f3), Err(engine::Error::MissingBlob(_))));
    b.set_block_source(Some(source(&b, rsync(&remote))));
    for (path, data) in &want {
        let name = path.rsplit('/').next().expect("name");
        let n = b.lookup(b.lookup(NodeId::ROOT, b"docs").expect("docs").id, name.as_bytes()).expect("lookup").id;
        assert_eq!(&read_file(&b, n).expect("read on demand"), data, "{path}");
    }
    assert!(store_bytes(&b) > 300_000, "fetched blocks stay in the cache");
}

/// A wrapper that runs the real rsync but fails every segment transfer
/// (`--append`, `--append-verify`), as if the pusher died between blocks
/// and segments.
fn failing_rsync(dir: &Path) -> PathBuf {
    let p = dir.join("rsync-fails-on-append");
    std::fs::write(
        &p,
        "#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in --append*) exit 12;; esac; done\nexec rsync \"$@\"\n",
    )
    .expect("write wrapper");
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    p
}

#[test]
fn push_order_never_leaves_an_event_without_its_blocks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let remote = tmp.path().join("remote");
    let dir = init(tmp.path(), "a", &remote, 1 << 30);
    let e = LiveTree::open(&dir).expect("open");
    write_file(&e, NodeId::ROOT, "one", &random(200_000));
    push::push(&e, &rsync(&remote), &mut no_progress()).expect("push");
    let first = remote_events_all_have_blocks(&remote);
    assert!(first >= 2, "create and content events are on the remote");

    let two = random(300_000);
    write_file(&e, NodeId::ROOT, "two", &two);
    let bad = Rsync::with_program(Remote::Local(remote.clone()), failing_rsync(tmp.path()), "ssh");
    let err = push::push(&e, &bad, &mut no_progress()).expect_err("segment step fails");
    assert!(err.to_string().contains("log segments"), "{err}");
    // The blocks went, the events did not.
    assert_eq!(remote_events_all_have_blocks(&remote), first);
    let hex = engine::ids::BlockHash::of(&two[..BS as usize], 32).to_hex();
    assert!(remote.join("blobs").join(&hex[..2]).join(&hex).exists(), "blocks go first");

    // Writes made after the cut-off point are not sent either: events
    // appended while a push runs wait for the next push.
    push::push(&e, &rsync(&remote), &mut no_progress()).expect("push again");
    assert!(remote_events_all_have_blocks(&remote) > first);
    let again = push::push(&e, &rsync(&remote), &mut no_progress()).expect("idle push");
    assert_eq!((again.blocks, again.log_bytes), (0, 0), "nothing new, nothing sent");
}

/// A push larger than one round goes in rounds, each recorded as on the
/// remote before the next is gathered, so a block a later round meets
/// again is not sent twice; the log follows once all are on the remote.
#[test]
fn a_push_larger_than_a_round_goes_in_rounds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let remote = tmp.path().join("remote");
    let e = LiveTree::open(&init(tmp.path(), "a", &remote, 1 << 40)).expect("open");
    let per_file = 16;
    let file = (per_file * BS) as usize;
    let first = random(file);
    write_file(&e, NodeId::ROOT, "f0", &first);
    for i in 1..10 {
        write_file(&e, NodeId::ROOT, &format!("f{i}"), &random(file));
    }
    // Its blocks went in the first round, and are met again in the last.
    write_file(&e, NodeId::ROOT, "copy", &first);
    let distinct = 10 * per_file;
    assert_eq!(push::plan(&e).expect("plan").blocks, distinct, "within one default round, each block counts once");

    let limits = push::RoundLimits { blocks: 4 * per_file as usize, bytes: u64::MAX };
    let mut rounds = Vec::new();
    let r = push::push_in_rounds(&e, &rsync(&remote), limits, &mut |p| {
        if let Progress::Blocks { done, .. } = p {
            rounds.push(done);
        }
    })
    .expect("push");
    assert_eq!(r.blocks, distinct, "every distinct block goes once");
    assert_eq!(rounds, [4 * per_file, 8 * per_file, 10 * per_file], "three rounds, the copy's blocks not again");
    assert_eq!(remote_events_all_have_blocks(&remote), 2 * 11, "every file's create and write");
    assert_eq!(push::plan(&e).expect("plan").blocks, 0, "nothing pending after the push");
}

#[test]
fn corrupt_remote_block_is_refused_and_never_returned() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let remote = tmp.path().join("remote");
    let dir = init(tmp.path(), "a", &remote, BS);
    let e = LiveTree::open(&dir).expect("open");
    let data = random(2 * BS as usize);
    let f = write_file(&e, NodeId::ROOT, "f", &data);
    push::push(&e, &rsync(&remote), &mut no_progress()).expect("push");
    let ev = engine::evict::evict(&e).expect("evict");
    assert_eq!(ev.evicted, 2, "a one-block cache holds no full block with its header");
    assert_eq!(store_bytes(&e), 0);

    let (_, first) = e.file_blocks(f, 0, 1).expect("blocks")[0];
    let hex = first.hash.to_hex();
    let remote_blob = remote.join("blobs").join(&hex[..2]).join(&hex);
    let mut bytes = std::fs::read(&remote_blob).expect("remote blob");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&remote_blob, bytes).expect("corrupt it");

    e.set_block_source(Some(source(&e, rsync(&remote))));
    let err = e.read_block(&first).expect_err("a wrong block is refused");
    assert!(matches!(&err, engine::Error::CorruptBlob { hash, .. } if *hash == first.hash), "{err:?}");
    assert!(err.to_string().contains(&hex), "the error names the blob: {err}");
    assert!(!e.replication().has_blob(&first.hash), "a refused block is not stored");
    // The intact block still comes back.
    let (_, second) = e.file_blocks(f, 1, 1).expect("blocks")[0];
    assert_eq!(e.read_block(&second).expect("intact block"), data[BS as usize..]);
}

fn hanging_rsync(dir: &Path) -> PathBuf {
    let p = dir.join("rsync-hangs");
    std::fs::write(&p, "#!/bin/sh\nsleep 1000\n").expect("write wrapper");
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    p
}

fn mount_opts(dir: &Path) -> syncer_fs::MountOptions {
    syncer_fs::MountOptions::new(dir.display().to_string())
}

fn fast(deadline: Duration) -> DaemonOptions {
    DaemonOptions {
        push_delay: Duration::from_millis(50),
        push_max_delay: Duration::from_millis(300),
        poll_interval: Duration::from_millis(300),
        evict_interval: Duration::from_millis(300),
        max_backoff: Duration::from_secs(2),
        io_timeout: Duration::from_secs(5),
        fetch_deadline: deadline,
    }
}

#[test]
fn mount_over_the_cache_limit_stays_bounded_and_reads_everything_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let remote = tmp.path().join("remote");
    let limit = 1 << 20;
    let dir = init(tmp.path(), "a", &remote, limit);
    let e = Arc::new(LiveTree::open(&dir).expect("open"));
    let daemon = Daemon::start_with(e.clone(), rsync(&remote), fast(Duration::from_secs(20)));
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let m = syncer_fs::spawn(e.clone(), &mnt, mount_opts(&dir)).expect("mount");

    let files: Vec<Vec<u8>> = (0..8).map(|_| random(512 << 10)).collect();
    for (i, data) in files.iter().enumerate() {
        let mut f = std::fs::File::create(mnt.join(format!("f{i}"))).expect("create");
        f.write_all(data).expect("write");
        f.sync_all().expect("fsync");
    }
    daemon.push_now().expect("push");
    let ev = daemon.evict_now().expect("evict");
    assert!(ev.after <= limit, "store {} over limit {limit}", ev.after);
    assert!(store_bytes(&e) <= limit);
    let status = syncer_replication::status::StatusFile::load(&dir).expect("status").expect("written");
    assert_eq!(status.reachable, Some(true));
    assert_eq!(status.cache_limit, Some(limit));

    // Every byte reads back through the mount; blocks come from the remote.
    for (i, data) in files.iter().enumerate() {
        let got = std::fs::read(mnt.join(format!("f{i}"))).expect("read back");
        assert!(got == *data, "f{i} differs");
    }
    let ev = daemon.evict_now().expect("evict");
    assert!(ev.after <= limit, "store {} over limit {limit} after reading", ev.after);
    m.unmount().expect("unmount");
    daemon.stop();
    e.close().expect("close");
    // Evicted blocks are on the remote, not damage.
    let v = engine::forensics::verify(&dir).expect("verify");
    assert!(v.is_clean(), "{:?}", v.problems);
    assert!(v.blocks_remote > 0, "nothing was evicted: {v:?}");
}

#[test]
fn unpushed_blocks_stay_and_status_says_over_limit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let remote = tmp.path().join("remote");
    let dir = init(tmp.path(), "a", &remote, 100_000);
    let e = LiveTree::open(&dir).expect("open");
    let data = random(400_000);
    let f = write_file(&e, NodeId::ROOT, "f", &data);
    let ev = engine::evict::evict(&e).expect("evict");
    assert_eq!(ev.evicted, 0, "nothing pushed, nothing evicted");
    assert!(ev.over_limit);
    assert_eq!(read_file(&e, f).expect("still local"), data);
    // Pinned blocks stay too, even once pushed.
    e.set_pinned(f, true).expect("pin");
    push::push(&e, &rsync(&remote), &mut no_progress()).expect("push");
    assert_eq!(engine::evict::evict(&e).expect("evict").evicted, 0);
    e.set_pinned(f, false).expect("unpin");
    let ev = engine::evict::evict(&e).expect("evict");
    assert!(ev.evicted > 0 && !ev.over_limit, "{ev:?}");
}

#[test]
fn unreachable_remote_gives_eio_in_bounded_time_and_local_data_stays_readable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let remote = tmp.path().join("remote");
    let dir = init(tmp.path(), "a", &remote, BS);
    let e = Arc::new(LiveTree::open(&dir).expect("open"));
    write_file(&e, NodeId::ROOT, "remote-only", &random(200_000));
    push::push(&e, &rsync(&remote), &mut no_progress()).expect("push");
    engine::evict::evict(&*e).expect("evict");
    let local = random(200_000);
    write_file(&e, NodeId::ROOT, "local", &local);

    let hang = Rsync::with_program(Remote::Local(remote.clone()), hanging_rsync(tmp.path()), "ssh");
    let deadline = Duration::from_secs(2);
    let daemon = Daemon::start_with(e.clone(), hang, fast(deadline));
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let m = syncer_fs::spawn(e.clone(), &mnt, mount_opts(&dir)).expect("mount");

    let t = Instant::now();
    let mut f = std::fs::File::open(mnt.join("remote-only")).expect("open");
    let mut buf = Vec::new();
    let err = f.read_to_end(&mut buf).expect_err("remote block while unreachable");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let took = t.elapsed();
    drop(f);
    assert!(took < deadline * 5, "EIO after {took:?}");
    let t = Instant::now();
    assert!(std::fs::read(mnt.join("local")).expect("local data reads") == local);
    assert!(t.elapsed() < Duration::from_secs(2), "local reads do not wait on the remote");
    m.unmount().expect("unmount");
    daemon.stop();
    let status = syncer_replication::status::StatusFile::load(&dir).expect("status").expect("written");
    assert_eq!(status.reachable, Some(false));
    assert!(status.last_error.is_some_and(|e| e.contains("no answer")));
}

#[test]
fn push_and_clone_over_real_ssh() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let sshd = testkit::sshd::start(&tmp.path().join("keys"));
    let ssh = sshd.ssh.clone();
    let remote_path = tmp.path().join("remote");
    let remote_str = format!("localhost:{}", remote_path.display());
    let over_ssh = || Rsync::with_program(Remote::parse(&remote_str).expect("remote"), "rsync", ssh.clone());

    let a_dir = init(tmp.path(), "a", &remote_path, 1 << 30);
    let a = LiveTree::open(&a_dir).expect("open");
    let data = random(150_000);
    write_file(&a, NodeId::ROOT, "f", &data);
    let rs = over_ssh();
    let r = push::push(&a, &rs, &mut no_progress()).expect("push over ssh");
    assert_eq!(r.blocks, 3);
    assert!(remote_events_all_have_blocks(&remote_path) >= 2);

    let b = syncer_replication::pull::clone_into(&tmp.path().join("b"), &remote_str, &over_ssh(), None)
        .expect("clone over ssh");
    b.set_block_source(Some(source(&b, over_ssh())));
    let f = b.lookup(NodeId::ROOT, b"f").expect("f in the clone").id;
    assert!(read_file(&b, f).expect("fetch over ssh") == data);
}
