//! Target `wasm_load`: the policy host's validation and load path
//! (`dataplane::wasm::WasmRuntime::load`: size cap, wasmtime validation, import and export
//! checks, the scratch instance, ABI version, `bw_init`, the probe batch), and for modules it
//! accepts, instances judging batches.
//!
//! The input's first byte picks the mode: even, the rest is the module's bytes as they are
//! (the corpus holds compiled policies and hand-written modules to mutate); odd, the rest
//! drives `wasm-smith` to build a module with the policy ABI's exports and the `bw.log`
//! import, whose function bodies are random (loops, traps, memory growth, calls to the log).
//!
//! Properties, beyond "never panics": a module over the size cap is refused before
//! compiling; every batch of an accepted module yields a verdict per record, and a batch
//! that did not go well yields the fail-closed verdict for every record; a quarantined
//! instance stays quarantined.
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Unstructured;
use dataplane::wasm::instance::BatchOutcome;
use dataplane::wasm::{Caps, LoadError, RULE_FAIL_CLOSED, WasmConfig, WasmRuntime};
use rules_wasm::abi::{Action, FlowState, MAX_BATCH, PacketRecord, VerdictRecord};

use crate::Rng;

/// Consecutive failed batches before quarantine, small so fuzzing reaches it.
const QUARANTINE_AFTER: u32 = 2;

/// The host every input is loaded into: the dataplane's defaults, with calls cut short
/// sooner (a looping guest costs milliseconds, not a second) and a smaller memory cap.
pub fn runtime() -> &'static WasmRuntime {
    static RT: OnceLock<WasmRuntime> = OnceLock::new();
    RT.get_or_init(|| {
        let config = WasmConfig {
            max_memory_bytes: 16 << 20,
            max_call_wall: Duration::from_millis(50),
            quarantine_after: QUARANTINE_AFTER,
            warn_interval: Duration::from_secs(3600),
            ..WasmConfig::default()
        };
        WasmRuntime::new(config).expect("the fuzzing Wasm runtime starts")
    })
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        load_and_run(rest, &mut Rng::from_bytes(data));
    } else if let Some(bytes) = smith(rest) {
        load_and_run(&bytes, &mut Rng::from_bytes(data));
    }
}

const EXPORTS: &str = r#"(module
    (memory (export "memory") 1 4)
    (func (export "bw_abi_version") (result i32) unreachable)
    (func (export "bw_init") (result i32) unreachable)
    (func (export "bw_evaluate") (param i32) unreachable))"#;

const IMPORTS: &str = r#"(module (import "bw" "log" (func (param i32 i32))))"#;

/// A `wasm-smith` module with the policy ABI's exports, or `None` when the input runs out.
pub fn smith(rest: &[u8]) -> Option<Vec<u8>> {
    static SHAPES: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    let (exports, imports) = SHAPES.get_or_init(|| {
        (
            wat::parse_str(EXPORTS).expect("exports template"),
            wat::parse_str(IMPORTS).expect("imports template"),
        )
    });
    let mut u = Unstructured::new(rest);
    let config = wasm_smith::Config {
        exports: Some(exports.clone()),
        available_imports: Some(imports.clone()),
        // What the host's wasmtime (cranelift + runtime features, no GC) runs; other
        // proposals (typed references among them) would only be refused at validation.
        gc_enabled: false,
        exceptions_enabled: false,
        threads_enabled: false,
        memory64_enabled: false,
        reference_types_enabled: false,
        custom_page_sizes_enabled: false,
        max_memory32_bytes: 32 << 20,
        max_funcs: 8,
        max_instructions: 200,
        max_data_segments: 4,
        max_element_segments: 4,
        ..wasm_smith::Config::default()
    };
    wasm_smith::Module::new(config, &mut u)
        .ok()
        .map(|m| m.to_bytes())
}

fn load_and_run(bytes: &[u8], rng: &mut Rng) {
    let rt = runtime();
    if !bytes.is_empty() {
        let caps = Caps {
            max_module_bytes: bytes.len() - 1,
            max_memory_bytes: 16 << 20,
        };
        let refused = rt.load_with_caps(bytes, "fuzz-capped", caps);
        assert!(
            matches!(refused, Err(LoadError::TooLarge { .. })),
            "a module over the size cap was not refused as too large: {refused:?}"
        );
    }
    let module = match rt.load(bytes, "fuzz") {
        Ok(m) => m,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = format!("{module:?}");
    let mut instance = match module.instantiate() {
        Ok(i) => i,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let fail_closed = VerdictRecord::new(rt.config().fail_closed, RULE_FAIL_CLOSED);
    let mut quarantined = false;
    for batch in 0..4 {
        let n = [MAX_BATCH, 1, 7, MAX_BATCH + 3][batch];
        let records: Vec<PacketRecord> = (0..n).map(|_| record(rng)).collect();
        let mut verdicts = vec![VerdictRecord::new(Action::Accept, 12345); n];
        let outcome = instance.evaluate(&records, &mut verdicts);
        if quarantined {
            assert_eq!(
                outcome,
                BatchOutcome::Quarantined,
                "a quarantined instance ran"
            );
        }
        if outcome != BatchOutcome::Decided {
            // A batch of more than MAX_BATCH records is several calls; the one that failed
            // has the fail-closed verdict for every record.
            assert!(
                verdicts
                    .chunks(MAX_BATCH)
                    .any(|c| c.iter().all(|v| *v == fail_closed)),
                "{outcome:?} without fail-closed verdicts"
            );
        }
        quarantined = instance.is_quarantined();
    }
    let _ = instance.memory_bytes();
}

fn record(rng: &mut Rng) -> PacketRecord {
    let mut addr = || {
        let mut a = [0u8; 16];
        a[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
        a[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
        a
    };
    let (src, dst) = (addr(), addr());
    let x = rng.next_u64().to_le_bytes();
    let y = rng.next_u64().to_le_bytes();
    PacketRecord {
        src,
        dst,
        src_port: u16::from_le_bytes([x[0], x[1]]),
        dst_port: u16::from_le_bytes([x[2], x[3]]),
        ip_version: [0, 4, 6, x[4]][usize::from(x[5] % 4)],
        protocol: x[6],
        tcp_flags: x[7],
        flow_state: FlowState::from_u8(y[0] % 4),
        in_port: u16::from_le_bytes([y[1], y[2]]),
        out_port: u16::from_le_bytes([y[3], y[4]]),
        icmp_type: y[5],
        icmp_code: y[6],
        src_conns: u16::from(y[7]),
    }
}
