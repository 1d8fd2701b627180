//! `cargo fuzz run lab_toml`: see `harness::lab` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::lab::run(data));
