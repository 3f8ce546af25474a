//! Log growth is proportional to the change (docs/DESIGN.md): a 4 KiB write into
//! a 10 GiB file adds well under 1 KiB of log, through a real mount.

use std::os::unix::fs::FileExt;

use testkit::mount::*;

fn log_bytes(data: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![data.join("log")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let m = e.metadata().expect("metadata");
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

#[test]
fn a_4k_write_into_a_10g_file_adds_under_1k_of_log() {
    require_fuse();
    let m = Mounted::new();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.p("big"))
        .expect("create");
    f.set_len(10 << 30).expect("ftruncate to 10 GiB");
    // Fill some blocks so the file has a real block list.
    for i in 0..64u64 {
        f.write_all_at(&[i as u8 + 1; 4096], i * (160 << 20)).expect("write");
    }
    f.sync_all().expect("fsync");
    let before = log_bytes(&m.data);
    f.write_all_at(&[0xab; 4096], 5 << 30).expect("4 KiB write");
    f.sync_all().expect("fsync");
    let grown = log_bytes(&m.data) - before;
    assert!(grown > 0, "the fsync'ed write is not in the log");
    assert!(grown < 1024, "a 4 KiB write added {grown} bytes of log");
    eprintln!("a 4 KiB write into a 10 GiB file added {grown} bytes of log");
    let mut back = [0u8; 4096];
    f.read_exact_at(&mut back, 5 << 30).expect("read");
    assert_eq!(back, [0xab; 4096]);
}
