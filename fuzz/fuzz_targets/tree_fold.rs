//! Fuzz target `tree_fold`: the body is `testkit::fuzz::tree_fold`, so saved inputs replay as tests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| testkit::fuzz::tree_fold(data));
