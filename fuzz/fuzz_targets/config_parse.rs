//! Fuzz target `config_parse`: the body is `engine::fuzz_bodies::config_parse`, so saved inputs replay as tests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::fuzz_bodies::config_parse(data));
