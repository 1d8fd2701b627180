//! Replays every kept input — the corpus the fuzz runs grew (`fuzz/corpus/<target>/`) and
//! the inputs of past findings (`fuzz/regressions/<target>/`) — through the same functions
//! libFuzzer calls, on stable and without libFuzzer:
//! `cargo test --manifest-path fuzz/harness/Cargo.toml --test replay`.
//!
//! The two targets that compile a Wasm module per input replay an evenly spread sample of
//! their corpus (every regression input always), to keep the whole under about ten seconds;
//! `BW_FUZZ_REPLAY_ALL=1` replays everything.
use std::fs;
use std::path::Path;

use bridgewall_fuzz_harness as h;

fn replay(target: &str, run: fn(&[u8]), sample: usize) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let all = std::env::var_os("BW_FUZZ_REPLAY_ALL").is_some();
    let mut n = 0;
    for dir in ["regressions", "corpus"] {
        let Ok(entries) = fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort();
        let step = if all || dir == "regressions" {
            1
        } else {
            files.len().div_ceil(sample).max(1)
        };
        for f in files.into_iter().step_by(step) {
            let data = fs::read(&f).unwrap();
            let name = f.display().to_string();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target}: {name} failed");
            n += 1;
        }
    }
    eprintln!("{target}: {n} inputs replayed");
}

#[test]
fn wire_parse() {
    replay("wire_parse", h::wire::run, usize::MAX);
}

#[test]
fn iptables_parse() {
    replay("iptables_parse", h::iptables::run, usize::MAX);
}

#[test]
fn wasm_load() {
    replay("wasm_load", h::wasm_load::run, 300);
}

#[test]
fn lab_toml() {
    replay("lab_toml", h::lab::run, usize::MAX);
}

#[test]
fn control_request() {
    replay("control_request", h::control::run, usize::MAX);
}

#[test]
fn policy_differential() {
    replay("policy_differential", h::differential::run, 400);
}
