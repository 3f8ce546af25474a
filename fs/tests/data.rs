//! File contents through a real mount: large and sparse files, overwrites,
//! concurrent writers, the memory bound, persistence across remounts.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use testkit::mount::*;
use testkit::sys::*;

#[test]
fn large_sequential_write_round_trips_under_the_memory_bound() {
    require_fuse();
    let limit = 8u64 << 20;
    let mut m = Mounted::with(|_| {}, |o| o.dirty_limit = limit);
    let total = 64usize << 20;
    let data = pattern(1, total);
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(m.p("big")).unwrap();
    let mut peak = 0;
    for chunk in data.chunks(1 << 20) {
        f.write_all(chunk).unwrap();
        peak = peak.max(m.handle().dirty_bytes());
    }
    // Bound plus what the workers and the channel may hold (1 MiB blocks).
    assert!(peak <= limit + (24 << 20), "dirty peak {peak} over the bound");
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(m.handle().dirty_bytes(), 0, "everything committed after close");
    let back = fs::read(m.p("big")).unwrap();
    assert!(back == data, "64 MiB read back differs");
    m.remount();
    let mut back = Vec::new();
    fs::File::open(m.p("big")).unwrap().read_to_end(&mut back).unwrap();
    assert!(back == data, "64 MiB differs after remount");
}

#[test]
fn sparse_files_read_zeros_and_seek_finds_holes() {
    require_fuse();
    let m = Mounted::small_blocks();
    let bs = 64u64 << 10;
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(m.p("sparse")).unwrap();
    f.write_all_at(b"tail", 10 * bs + 5).unwrap();
    // A block of zeros is a hole too.
    f.write_all_at(&vec![0u8; bs as usize], 2 * bs).unwrap();
    f.write_all_at(b"head", 0).unwrap();
    f.sync_all().unwrap();
    assert_eq!(f.metadata().unwrap().len(), 10 * bs + 9);
    let mut buf = vec![1u8; (3 * bs) as usize];
    f.read_exact_at(&mut buf, bs).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    let mut t = [0u8; 4];
    f.read_exact_at(&mut t, 10 * bs + 5).unwrap();
    assert_eq!(&t, b"tail");

    let fd = f.as_raw_fd();
    // SAFETY: valid fd.
    unsafe {
        assert_eq!(libc::lseek(fd, 0, libc::SEEK_DATA), 0);
        assert_eq!(libc::lseek(fd, 0, libc::SEEK_HOLE), bs as i64);
        assert_eq!(libc::lseek(fd, bs as i64, libc::SEEK_DATA), (10 * bs) as i64);
        assert_eq!(libc::lseek(fd, (10 * bs) as i64, libc::SEEK_HOLE), (10 * bs + 9) as i64);
        assert_eq!(libc::lseek(fd, (20 * bs) as i64, libc::SEEK_DATA), -1);
        assert_eq!(last_errno(), libc::ENXIO);

        // fallocate: mode 0 extends, KEEP_SIZE does not, a punched hole
        // reads as zeros (more in holes.rs).
        assert_eq!(libc::fallocate(fd, 0, 0, (12 * bs) as i64), 0);
        assert_eq!(f.metadata().unwrap().len(), 12 * bs);
        assert_eq!(libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 0, (20 * bs) as i64), 0);
        assert_eq!(f.metadata().unwrap().len(), 12 * bs);
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        assert_eq!(libc::fallocate(fd, punch, 0, 10), 0);
        assert_eq!(f.metadata().unwrap().len(), 12 * bs);
    }
    let mut head = [1u8; 10];
    f.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, [0u8; 10]);
}

#[test]
fn random_overwrites_match_a_model_before_and_after_remount() {
    require_fuse();
    let mut m = Mounted::small_blocks();
    let size = 1usize << 20;
    let mut model = pattern(7, size);
    fs::write(m.p("f"), &model).unwrap();
    let f = OpenOptions::new().read(true).write(true).open(m.p("f")).unwrap();
    let mut rng = pattern(99, 4096);
    for i in 0..200 {
        let r = u64::from_le_bytes(rng[(i * 8) % 4000..][..8].try_into().unwrap());
        let off = (r as usize) % (size + 1000);
        let len = 1 + (r >> 32) as usize % 100_000;
        let chunk = pattern(1000 + i as u64, len);
        f.write_all_at(&chunk, off as u64).unwrap();
        if model.len() < off + len {
            model.resize(off + len, 0);
        }
        model[off..off + len].copy_from_slice(&chunk);
        if i % 25 == 0 {
            // Reads see buffered data before any flush.
            let mut back = vec![0u8; model.len()];
            f.read_exact_at(&mut back, 0).unwrap();
            assert!(back == model, "read-after-write mismatch at step {i}");
        }
        rng.rotate_left(3);
    }
    drop(f);
    assert!(fs::read(m.p("f")).unwrap() == model);
    m.remount();
    assert!(fs::read(m.p("f")).unwrap() == model, "differs after remount");
}

#[test]
fn concurrent_writers_on_different_files() {
    require_fuse();
    let mut m = Mounted::small_blocks();
    let threads = 8;
    let size = 3 << 20;
    std::thread::scope(|s| {
        for t in 0..threads {
            let path = m.p(&format!("w{t}"));
            s.spawn(move || {
                let data = pattern(t as u64 + 50, size);
                let mut f = fs::File::create(&path).unwrap();
                for c in data.chunks(48 << 10) {
                    f.write_all(c).unwrap();
                }
                f.sync_all().unwrap();
                drop(f);
                assert!(fs::read(&path).unwrap() == data, "file {t} differs");
            });
        }
    });
    m.remount();
    for t in 0..threads {
        assert!(fs::read(m.p(&format!("w{t}"))).unwrap() == pattern(t as u64 + 50, size), "file {t} after remount");
    }
}

#[test]
fn two_handles_share_buffered_data() {
    require_fuse();
    let m = Mounted::small_blocks();
    let w = OpenOptions::new().write(true).create(true).truncate(true).open(m.p("f")).unwrap();
    let r = OpenOptions::new().read(true).open(m.p("f")).unwrap();
    w.write_all_at(b"0123456789", 100_000).unwrap();
    let mut buf = [0u8; 10];
    r.read_exact_at(&mut buf, 100_000).unwrap();
    assert_eq!(&buf, b"0123456789");
    assert_eq!(r.metadata().unwrap().len(), 100_010);
}

/// Manual probe: `cargo test -p syncer-fs --test data -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput_probe() {
    require_fuse();
    let m = Mounted::new();
    let total = 1usize << 30;
    let chunk = pattern(3, 1 << 20);
    let t = std::time::Instant::now();
    let mut f = fs::File::create(m.p("big")).unwrap();
    let mut peak = 0;
    for i in 0..total / chunk.len() {
        let mut c = chunk.clone();
        c[..8].copy_from_slice(&(i as u64).to_le_bytes());
        f.write_all(&c).unwrap();
        peak = peak.max(m.handle().dirty_bytes());
    }
    f.sync_all().unwrap();
    drop(f);
    let w = t.elapsed();
    let t = std::time::Instant::now();
    let mut r = fs::File::open(m.p("big")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0;
    loop {
        let k = r.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        n += k;
    }
    assert_eq!(n, total);
    eprintln!(
        "write {:.0} MiB/s (dirty peak {} MiB), read {:.0} MiB/s",
        1024.0 / w.as_secs_f64(),
        peak >> 20,
        1024.0 / t.elapsed().as_secs_f64()
    );
}
