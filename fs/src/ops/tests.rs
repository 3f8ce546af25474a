//! Unit tests of the filesystem logic.

use super::file::{copy_plan, privs_to_kill, CopyPlan, COPY_BYTES_MAX};
use super::volume::statfs_from;
use super::*;

#[test]
fn statfs_covers_logical_bytes() {
    // SAFETY: all-zero is a valid statvfs.
    let mut v: libc::statvfs = unsafe { std::mem::zeroed() };
    v.f_frsize = 4096;
    v.f_blocks = 100;
    v.f_bfree = 50;
    v.f_bavail = 40;
    v.f_ffree = 7;
    let s = statfs_from(&v, 4096 * 1000, 12, 0);
    assert_eq!(s.blocks, 1050);
    assert_eq!((s.bfree, s.bavail, s.files, s.ffree, s.frsize), (50, 40, 19, 7, 4096));
    let s = statfs_from(&v, 4096, 12, 0);
    assert_eq!(s.blocks, 100);
    // The reserve is not room for data.
    let s = statfs_from(&v, 4096, 12, 10 * 4096);
    assert_eq!((s.bfree, s.bavail), (40, 30));
    let s = statfs_from(&v, 4096, 12, 1 << 30);
    assert_eq!((s.bfree, s.bavail), (0, 0));
}

use engine::config::Config;
use engine::ids::MachineId;
use std::ffi::OsString;

fn core(bs: u64) -> (tempfile::TempDir, Core) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut c = Config::new_default(MachineId::random());
    c.block_size = bs;
    c.small_block = c.small_block.min(bs);
    engine::Store::init(&data, c).unwrap();
    let engine = Arc::new(LiveTree::open(&data).unwrap());
    (tmp, Core::new(engine.into(), 0, 2).unwrap())
}

fn os(s: &str) -> OsString {
    OsString::from(s)
}

#[test]
fn buffered_writes_show_in_getattr_and_reads_before_commit() {
    let (_t, c) = core(4096);
    let (a, _fh) = c.do_create(1, &os("f"), 0o644, 0o022, libc::O_WRONLY, 0, 0).unwrap();
    let ino = a.ino.0;
    assert_eq!(a.perm, 0o644);
    c.do_write(ino, 10_000, b"xyz", libc::O_WRONLY).unwrap();
    c.do_write(ino, 1, b"ab", libc::O_WRONLY).unwrap();
    assert_eq!(c.do_getattr(ino).unwrap().size, 10_003);
    let node = c.inodes.node(ino).unwrap();
    assert_eq!(c.tree.node(node).unwrap().size, 0, "nothing committed yet");
    let back = c.do_read(ino, 0, 20_000).unwrap();
    let mut want = vec![0u8; 10_003];
    want[1..3].copy_from_slice(b"ab");
    want[10_000..].copy_from_slice(b"xyz");
    assert_eq!(back, want);
    // Appends go to the (buffered) end.
    c.do_write(ino, 0, b"!", libc::O_WRONLY | libc::O_APPEND).unwrap();
    c.do_flush(ino).unwrap();
    want.push(b'!');
    assert_eq!(c.tree.node(node).unwrap().size, 10_004);
    assert_eq!(c.do_read(ino, 0, 20_000).unwrap(), want);
    // The middle blocks were never written: holes, nothing stored.
    assert_eq!(c.tree.file_blocks(node, 0, 3).unwrap().iter().map(|b| b.0).collect::<Vec<_>>(), vec![0, 2]);
    c.do_release(ino, libc::O_RDWR).unwrap();
    assert_eq!(c.wb.dirty_bytes(), 0);
}

#[test]
fn tiny_memory_bound_still_round_trips() {
    let (_t, c) = core(4096);
    let (a, _fh) = c.do_create(1, &os("f"), 0o644, 0, libc::O_RDWR, 0, 0).unwrap();
    let ino = a.ino.0;
    let mut model = Vec::new();
    for i in 0..300u32 {
        let chunk: Vec<u8> = (0..1500).map(|j| (i * 7 + j) as u8).collect();
        c.do_write(ino, model.len() as u64, &chunk, libc::O_RDWR).unwrap();
        model.extend_from_slice(&chunk);
        assert!(c.wb.dirty_bytes() <= 4 * 4096 + 8 * 4096, "bounded: {}", c.wb.dirty_bytes());
    }
    assert_eq!(c.do_read(ino, 0, model.len() as u32).unwrap(), model);
    c.do_fsync(ino).unwrap();
    c.do_release(ino, libc::O_RDWR).unwrap();
    assert_eq!(c.do_read(ino, 0, model.len() as u32).unwrap(), model);
}

#[test]
fn sequential_reads_with_read_ahead_see_the_newest_blocks() {
    let (_t, c) = core(4096);
    let (a, _fh) = c.do_create(1, &os("f"), 0o644, 0, libc::O_RDWR, 0, 0).unwrap();
    let ino = a.ino.0;
    let mut model: Vec<u8> = (0..64 * 4096u32).map(|i| (i / 4096 * 31 + i % 251) as u8).collect();
    c.do_write(ino, 0, &model, libc::O_RDWR).unwrap();
    c.do_release(ino, libc::O_RDWR).unwrap();
    let read_all = |c: &Core| {
        let mut back = Vec::new();
        loop {
            let chunk = c.do_read(ino, back.len() as u64, 1024).unwrap();
            if chunk.is_empty() {
                return back;
            }
            back.extend_from_slice(&chunk);
        }
    };
    assert_eq!(read_all(&c), model);
    // Blocks read ahead before this overwrite must not be served after it.
    c.do_open(ino, libc::O_RDWR).unwrap();
    c.do_write(ino, 10 * 4096 + 5, b"new", libc::O_RDWR).unwrap();
    model[10 * 4096 + 5..10 * 4096 + 8].copy_from_slice(b"new");
    assert_eq!(read_all(&c), model, "buffered");
    c.do_release(ino, libc::O_RDWR).unwrap();
    assert_eq!(read_all(&c), model, "committed");
}

#[test]
fn truncate_commits_first_and_zero_fills_on_extension() {
    let (_t, c) = core(4096);
    let (a, _fh) = c.do_create(1, &os("f"), 0o644, 0, libc::O_RDWR, 0, 0).unwrap();
    let ino = a.ino.0;
    c.do_write(ino, 0, &[9u8; 9000], libc::O_RDWR).unwrap();
    let attr = c.do_setattr(ino, SetAttr { size: Some(5000), ..SetAttr::default() }).unwrap();
    assert_eq!(attr.size, 5000);
    c.do_setattr(ino, SetAttr { size: Some(9000), ..SetAttr::default() }).unwrap();
    let back = c.do_read(ino, 0, 9000).unwrap();
    assert!(back[..5000].iter().all(|&b| b == 9) && back[5000..].iter().all(|&b| b == 0));
}

/// Up to `cap` entries of handle `fh` from `offset`: (cookie, name) each.
fn dir_reply(c: &Core, fh: u64, offset: u64, cap: usize) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    c.fill_dir(1, fh, offset, |cookie, e| {
        if out.len() == cap {
            return crate::dircursor::Add::Full;
        }
        out.push((cookie, e.name.clone()));
        crate::dircursor::Add::Added
    })
    .unwrap();
    out
}

#[test]
fn directory_offsets_are_cookies_that_resume_after_their_name() {
    let (_t, c) = core(4096);
    for n in ["a", "b", "c"] {
        c.do_mkdir(1, &os(n), 0o755, 0, 0, 0).unwrap();
    }
    let fh = c.do_opendir(1).unwrap();
    let names =
        |r: &[(u64, Vec<u8>)]| r.iter().map(|(_, n)| String::from_utf8_lossy(n).into_owned()).collect::<Vec<_>>();
    let first = dir_reply(&c, fh, 0, 3);
    assert_eq!(names(&first), [".", "..", "a"]);
    // "a" goes and "0" comes before the resume point: the listing goes on
    // after "a" without either.
    c.do_rmdir(1, &os("a")).unwrap();
    c.do_mkdir(1, &os("0"), 0o755, 0, 0, 0).unwrap();
    let rest = dir_reply(&c, fh, first[2].0, 10);
    assert_eq!(names(&rest), ["b", "c"]);
    assert!(dir_reply(&c, fh, rest[1].0, 10).is_empty(), "the end");
    // A rewind sees the directory as it is; "b" keeps its cookie.
    let again = dir_reply(&c, fh, 0, 10);
    assert_eq!(names(&again), [".", "..", "0", "b", "c"]);
    assert_eq!(again[3], rest[0]);
    // An offset never handed out is refused.
    let mut err = None;
    let r = c.fill_dir(1, fh, 999, |_, _| crate::dircursor::Add::Added);
    if let Err(e) = r {
        err = Some(e.code());
    }
    assert_eq!(err, Some(libc::EINVAL));
    c.do_releasedir(1, fh);
}

#[test]
fn lookups_are_counted_and_forgotten() {
    let (_t, c) = core(4096);
    c.do_mkdir(1, &os("d"), 0o755, 0, 0, 0).unwrap();
    let before = c.inodes.len();
    let a = c.do_lookup(1, &os("d")).unwrap();
    c.do_lookup(1, &os("d")).unwrap();
    c.do_forget(a.ino.0, 2);
    assert_eq!(c.inodes.len(), before);
    c.do_forget(a.ino.0, 1);
    assert_eq!(c.inodes.len(), before - 1);
    assert_eq!(c.do_getattr(a.ino.0).unwrap_err().code(), libc::ESTALE);
}

#[test]
fn macos_volname_and_xtimes_helpers() {
    let (_t, c) = core(4096);
    c.do_setvolname(&os("Vol")).unwrap();
    assert_eq!(c.tree.node(NodeId::ROOT).unwrap().volname, b"Vol");
    let a = c.do_mkdir(1, &os("d"), 0o755, 0, 0, 0).unwrap();
    let (crtime, _bkup) = c.do_getxtimes(a.ino.0).unwrap();
    assert_eq!(crtime, a.crtime);
}

#[test]
fn copy_plans_share_only_blocks_at_the_same_place() {
    let bs = 4096;
    assert_eq!(copy_plan(0, 0, 3 * bs, bs), CopyPlan { head: 0, blocks: 3, tail: 0 });
    assert_eq!(copy_plan(100, 2 * bs + 100, 3 * bs, bs), CopyPlan { head: bs - 100, blocks: 2, tail: 100 });
    assert_eq!(copy_plan(100, 100, 50, bs), CopyPlan { head: 50, blocks: 0, tail: 0 });
    assert_eq!(copy_plan(1, 2, 10, bs), CopyPlan { head: 10, blocks: 0, tail: 0 });
    assert_eq!(copy_plan(1, 2, 1 << 30, bs).head, COPY_BYTES_MAX);
    for (a, b, len) in [(0u64, 0u64, 1u64), (5, 5, 3 * bs + 7), (bs - 1, 2 * bs - 1, bs + 2)] {
        let p = copy_plan(a, b, len, bs);
        assert_eq!(p.head + p.blocks * bs + p.tail, len);
        if p.blocks > 0 {
            assert_eq!((a + p.head) % bs, 0);
        }
    }
}

#[test]
fn privileges_go_as_the_kernel_takes_them_on_write() {
    let f = NodeKind::File;
    let member = |_: u32| true;
    let stranger = |_: u32| false;
    assert_eq!(privs_to_kill(f, 0o6777, 5, 0, stranger), 0, "root keeps them");
    assert_eq!(privs_to_kill(NodeKind::Dir, 0o6777, 5, 7, stranger), 0);
    assert_eq!(privs_to_kill(f, 0o4666, 5, 7, member), libc::S_ISUID);
    assert_eq!(privs_to_kill(f, 0o2666, 5, 7, member), 0, "mandatory locking mark, writer in the group");
    assert_eq!(privs_to_kill(f, 0o2666, 5, 7, stranger), libc::S_ISGID);
    assert_eq!(privs_to_kill(f, 0o2676, 5, 7, member), libc::S_ISGID);
    assert_eq!(privs_to_kill(f, 0o6777, 5, 7, member), libc::S_ISUID | libc::S_ISGID);
    assert_eq!(parse_groups("Name:\tx\nGroups:\t4 24 27 \nNgid: 0\n"), vec![4, 24, 27]);
    assert_eq!(parse_groups("Groups:\n"), Vec::<u32>::new());
}

#[test]
fn an_aligned_copy_shares_blocks_without_buffering_bytes() {
    let (_t, c) = core(4096);
    let (a, _) = c.do_create(1, &os("src"), 0o644, 0, libc::O_RDWR, 0, 0).unwrap();
    let data: Vec<u8> = (0..10 * 4096u32).map(|i| (i % 251) as u8).collect();
    c.do_write(a.ino.0, 0, &data, libc::O_RDWR).unwrap();
    let (b, _) = c.do_create(1, &os("dst"), 0o644, 0, libc::O_RDWR, 0, 0).unwrap();
    assert_eq!(c.do_copy_file_range(a.ino.0, 4096, b.ino.0, 0, 8 * 4096, 0).unwrap(), 8 * 4096);
    let (src, dst) = (c.inodes.node(a.ino.0).unwrap(), c.inodes.node(b.ino.0).unwrap());
    assert!(c.wb.dirty_view(dst).is_none(), "no byte went through the write-back");
    let shared: Vec<_> = c.tree.file_blocks(src, 1, 8).unwrap().into_iter().map(|(_, b)| b).collect();
    let copied: Vec<_> = c.tree.file_blocks(dst, 0, 8).unwrap().into_iter().map(|(_, b)| b).collect();
    assert_eq!(shared, copied);
    assert_eq!(c.do_read(b.ino.0, 0, 8 * 4096).unwrap(), data[4096..9 * 4096].to_vec());
    // Overlapping ranges of one file are refused, as Linux does.
    assert_eq!(c.do_copy_file_range(a.ino.0, 0, a.ino.0, 4096, 8192, 0).unwrap_err(), Errno::EINVAL);
}

#[test]
fn punched_and_zeroed_ranges_read_as_zeros_and_free_blocks() {
    let (_t, c) = core(4096);
    let root = Caller { uid: 0, gid: 0, pid: 0 };
    let (a, _) = c.do_create(1, &os("f"), 0o644, 0, libc::O_RDWR, 0, 0).unwrap();
    let ino = a.ino.0;
    let mut model: Vec<u8> = (0..8 * 4096u32).map(|i| (i % 13 + 1) as u8).collect();
    c.do_write(ino, 0, &model, libc::O_RDWR).unwrap();
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    c.do_fallocate(ino, 100, 3 * 4096, punch, root).unwrap();
    model[100..100 + 3 * 4096].fill(0);
    c.do_fallocate(ino, 7 * 4096 + 5, 10 * 4096, libc::FALLOC_FL_ZERO_RANGE, root).unwrap();
    model[7 * 4096 + 5..].fill(0);
    model.resize(17 * 4096 + 5, 0);
    assert_eq!(c.do_read(ino, 0, 1 << 20).unwrap(), model);
    let node = c.inodes.node(ino).unwrap();
    let stored: Vec<u64> = c.tree.file_blocks(node, 0, 100).unwrap().into_iter().map(|(i, _)| i).collect();
    assert_eq!(stored, vec![0, 3, 4, 5, 6, 7], "blocks 1 and 2 are holes now");
    assert_eq!(c.tree.node(node).unwrap().stored_bytes, 6 * 4096);
    assert_eq!(c.do_lseek(ino, 4096, libc::SEEK_DATA).unwrap(), 3 * 4096);
    assert_eq!(c.do_lseek(ino, 7 * 4096, libc::SEEK_HOLE).unwrap(), 8 * 4096);
}

/// After any mix of writes, truncates and fallocates, the stored bytes
/// a file reports are those of its stored blocks.
#[test]
fn stored_bytes_follow_the_blocks() {
    let (_t, c) = core(4096);
    let root = Caller { uid: 0, gid: 0, pid: 0 };
    let (a, _) = c.do_create(1, &os("f"), 0o644, 0, libc::O_RDWR, 0, 0).unwrap();
    let ino = a.ino.0;
    let node = c.inodes.node(ino).unwrap();
    let mut x = 0x1234_5678_9abc_def1u64;
    let mut below = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n.max(1)
    };
    let modes = [libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, libc::FALLOC_FL_ZERO_RANGE, 0];
    for step in 0..400u64 {
        let size = c.do_getattr(ino).unwrap().size;
        let span = size + 3 * 4096;
        let (off, len) = (below(span), 1 + below(3 * 4096));
        let what = match below(4) {
            0 | 1 => {
                let data: Vec<u8> = (0..len).map(|i| (i % 7 + 1) as u8).collect();
                c.do_write(ino, off, &data, libc::O_RDWR).unwrap();
                "write"
            }
            2 => {
                c.do_setattr(ino, SetAttr { size: Some(off), ..SetAttr::default() }).unwrap();
                "truncate"
            }
            _ => {
                let mode = modes[below(3) as usize];
                c.do_fallocate(ino, off, len, mode, root).unwrap();
                "fallocate"
            }
        };
        c.do_fsync(ino).unwrap();
        let blocks: u64 = c.tree.file_blocks(node, 0, u64::MAX).unwrap().iter().map(|(_, b)| u64::from(b.len)).sum();
        assert_eq!(c.tree.node(node).unwrap().stored_bytes, blocks, "step {step}: {what} {off}+{len}");
    }
}

#[test]
fn errors_of_node_operations() {
    let (_t, c) = core(4096);
    assert_eq!(c.do_mknod(1, &os("x"), libc::S_IFDIR | 0o755, 0, 0, 0, 0).unwrap_err(), Errno::EINVAL);
    assert_eq!(c.do_link().unwrap_err(), Errno::EPERM);
    assert_eq!(c.do_rename(1, &os("a"), 1, &os("b"), libc::RENAME_WHITEOUT).unwrap_err(), Errno::EINVAL);
    let f = c.do_mknod(1, &os("f"), libc::S_IFREG | 0o644, 0, 0, 0, 0).unwrap();
    let root = Caller { uid: 0, gid: 0, pid: 0 };
    assert_eq!(c.do_fallocate(f.ino.0, 0, 10, libc::FALLOC_FL_PUNCH_HOLE, root).unwrap_err(), Errno::EOPNOTSUPP);
    assert_eq!(c.do_fallocate(f.ino.0, 0, 10, libc::FALLOC_FL_COLLAPSE_RANGE, root).unwrap_err(), Errno::EOPNOTSUPP);
    assert_eq!(c.do_fallocate(f.ino.0, 0, 0, 0, root).unwrap_err(), Errno::EINVAL);
    assert_eq!(c.do_lseek(f.ino.0, 0, libc::SEEK_DATA).unwrap_err(), Errno::ENXIO);
    assert_eq!(c.do_opendir(f.ino.0).unwrap_err(), Errno::ENOTDIR);
    assert_eq!(c.do_open(1, libc::O_RDONLY).unwrap_err(), Errno::EISDIR);
}
