//! Fuzz target `peer_import`: the body is `testkit::fuzz::peer_import`, so saved inputs replay as tests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| testkit::fuzz::peer_import(data));
