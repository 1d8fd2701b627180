//! `cargo fuzz run control_request`: see `harness::control` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::control::run(data));
