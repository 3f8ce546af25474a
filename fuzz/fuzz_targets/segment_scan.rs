//! Fuzz target `segment_scan`: the body is `testkit::fuzz::segment_scan`, so saved inputs replay as tests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| testkit::fuzz::segment_scan(data));
