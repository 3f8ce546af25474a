//! Fuzz target `tree_fold`: the body is `engine::fuzz_bodies::tree_fold`, so saved inputs replay as tests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::fuzz_bodies::tree_fold(data));
