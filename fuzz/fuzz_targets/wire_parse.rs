//! `cargo fuzz run wire_parse`: see `harness::wire` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::wire::run(data));
