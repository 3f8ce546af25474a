//! Fuzz target `record_decode`: the body is `engine::fuzz_bodies::record_decode`, so saved inputs replay as tests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::fuzz_bodies::record_decode(data));
