//! Fuzz target `blob_decode`: the body is `testkit::fuzz::blob_decode`, so saved inputs replay as tests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| testkit::fuzz::blob_decode(data));
