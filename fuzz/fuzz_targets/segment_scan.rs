//! Fuzz target `segment_scan`: the body is `engine::fuzz_bodies::segment_scan`, so saved inputs replay as tests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::fuzz_bodies::segment_scan(data));
