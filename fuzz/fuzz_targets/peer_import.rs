//! Fuzz target `peer_import`: the body is `engine::fuzz_bodies::peer_import`, so saved inputs replay as tests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::fuzz_bodies::peer_import(data));
