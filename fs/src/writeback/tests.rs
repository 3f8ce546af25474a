//! Unit tests of the read-ahead planner and the block helpers.

use super::read::{ahead_step, ahead_window, copy_block};
use super::*;

#[test]
fn read_ahead_follows_a_stream_in_any_order_and_ignores_jumps() {
    const K: u64 = 16;
    let st = |next, asked| Some(Stream { next, asked });
    // A stream from the start asks for the window after its first block.
    assert_eq!(ahead_step(None, 0, 0, K), (Stream { next: 1, asked: K + 1 }, 1..K + 1));
    // Each further block asks for one more.
    assert_eq!(ahead_step(st(1, K + 1), 1, 1, K), (Stream { next: 2, asked: K + 2 }, K + 1..K + 2));
    // Requests of one stream out of order: a late one asks for nothing.
    assert_eq!(ahead_step(st(6, K + 5), 3, 3, K), (Stream { next: 4, asked: K + 5 }, 0..0));
    // A second read within the block just read asks for nothing.
    assert_eq!(ahead_step(st(501, 501), 500, 500, K), (Stream { next: 501, asked: 501 }, 0..0));
    // A read that is not from the start only marks where a stream would go on...
    assert_eq!(ahead_step(None, 500, 500, K), (Stream { next: 501, asked: 501 }, 0..0));
    // ...and the read that continues it starts one.
    assert_eq!(ahead_step(st(501, 501), 501, 501, K), (Stream { next: 502, asked: 502 + K }, 502..502 + K));
    // A jump far ahead or back is not the stream.
    assert_eq!(ahead_step(st(2, K + 1), 10 * K, 10 * K, K), (Stream { next: 10 * K + 1, asked: 10 * K + 1 }, 0..0));
    assert_eq!(ahead_step(st(10 * K, 10 * K), 5, 5, K), (Stream { next: 6, asked: 6 }, 0..0));
    // A read from the start always starts a stream (a second `cat`).
    assert_eq!(ahead_step(st(10 * K, 10 * K), 0, 0, K), (Stream { next: 1, asked: K + 1 }, 1..K + 1));
    // A read spanning blocks asks past its last one.
    assert_eq!(ahead_step(st(4, 4), 4, 6, K), (Stream { next: 7, asked: 7 + K }, 7..7 + K));
}

#[test]
fn the_read_ahead_window_fits_the_cache_at_every_block_size() {
    assert_eq!(ahead_window(4096), READ_AHEAD_MAX_BLOCKS);
    assert_eq!(ahead_window(1 << 20), 16);
    assert_eq!(ahead_window(4 << 20), 4);
    assert_eq!(ahead_window(16 << 20), 1);
    assert_eq!(ahead_window(64 << 20), 1);
    for bs in [4096u64, 1 << 20, 4 << 20, 16 << 20] {
        // Two streams' windows, plus the block each is reading, fit.
        assert!(2 * (ahead_window(bs) + 1) * bs <= READ_CACHE_BYTES as u64, "block size {bs}");
    }
}

#[test]
fn copy_block_clips_both_sides() {
    let mut buf = vec![0u8; 10];
    copy_block(&mut buf, 100, 95, &[1; 10]);
    assert_eq!(buf, [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]);
    let mut buf = vec![0u8; 4];
    copy_block(&mut buf, 0, 2, &[7; 1]);
    assert_eq!(buf, [0, 0, 7, 0]);
    let mut buf = vec![0u8; 4];
    copy_block(&mut buf, 10, 0, &[7; 5]);
    assert_eq!(buf, [0; 4]);
}

#[test]
fn zero_detection() {
    assert!(is_zero(&[]));
    assert!(is_zero(&[0; 1000]));
    let mut v = vec![0u8; 1000];
    v[999] = 1;
    assert!(!is_zero(&v));
    v[999] = 0;
    v[3] = 1;
    assert!(!is_zero(&v));
}
