//! Fuzz target `merge_converge`: the body is `testkit::fuzz::merge_converge`, so saved inputs replay as tests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| testkit::fuzz::merge_converge(data));
