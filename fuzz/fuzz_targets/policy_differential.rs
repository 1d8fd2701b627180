//! `cargo fuzz run policy_differential`: see `harness::differential` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::differential::run(data));
