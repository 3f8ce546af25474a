//! Fuzz target `record_decode`: the body is `testkit::fuzz::record_decode`, so saved inputs replay as tests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| testkit::fuzz::record_decode(data));
