//! Fuzz target `config_parse`: the body is `testkit::fuzz::config_parse`, so saved inputs replay as tests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| testkit::fuzz::config_parse(data));
