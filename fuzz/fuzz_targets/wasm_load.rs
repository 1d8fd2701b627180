//! `cargo fuzz run wasm_load`: see `harness::wasm_load` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::wasm_load::run(data));
