//! `cargo fuzz run iptables_parse`: see `harness::iptables` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::iptables::run(data));
