//! Fuzz target `merge_converge`: the body is `engine::fuzz_bodies::merge_converge`, so saved inputs replay as tests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::fuzz_bodies::merge_converge(data));
