//! Hostile policy modules: each is either refused at load — and the policy in force keeps
//! answering — or contained at run time: the batch gets the fail-closed verdict, a counter
//! goes up, and the worker carries on with the next batch.
mod wasm_support;

use dataplane::policy::{Action, Policy, VerdictRecord};
use dataplane::wasm::{LoadError, PolicyChain, RULE_FAIL_CLOSED};
use wasm_support::*;

const FAIL_CLOSED: VerdictRecord = VerdictRecord::new(Action::Drop, RULE_FAIL_CLOSED);
const ACCEPT_1: VerdictRecord = VerdictRecord::new(Action::Accept, 1);

/// Loads `bytes` into a harness whose policy in force is accept-all, expects the load to
/// fail, and checks the old policy still answers. Returns the error for closer checks.
fn rejected(bytes: &[u8]) -> LoadError {
    let mut h = Harness::with_accept_all(runtime());
    let err = h
        .try_install(bytes, "hostile")
        .expect_err("hostile module was accepted");
    h.assert_old_policy_in_force();
    assert!(
        err.to_string().contains("\"hostile\""),
        "error does not name the module: {err}"
    );
    err
}

/// A single-module chain of `bytes`, which must pass load.
fn contained_chain(bytes: &[u8]) -> (PolicyChain, dataplane::wasm::PolicyModule) {
    let rt = runtime();
    let module = rt
        .load(bytes, "hostile")
        .expect("conditionally hostile module passes load");
    (
        PolicyChain::instantiate(1, std::slice::from_ref(&module)).unwrap(),
        module,
    )
}

fn decide(chain: &mut PolicyChain, ports: &[u16]) -> Vec<VerdictRecord> {
    let records: Vec<_> = ports.iter().map(|&p| tcp(p)).collect();
    let mut verdicts = vec![VerdictRecord::CONTINUE; records.len()];
    chain.decide(&records, &mut verdicts);
    verdicts
}

#[test]
fn wasm_infinite_loop_on_every_packet_is_refused_at_load() {
    let looping = per_record(
        "(loop $spin (br $spin))",
        "(i32.const 1)",
        "(i32.const 1)",
        "",
    );
    match rejected(&looping) {
        LoadError::ProbeFailed { reason, .. } => assert!(reason.contains("deadline"), "{reason}"),
        other => panic!("wrong error: {other}"),
    }
}

#[test]
fn wasm_infinite_loop_on_one_packet_is_interrupted_and_the_worker_continues() {
    let (mut chain, module) = contained_chain(&hostile_on_port(666, "(loop $spin (br $spin))"));
    let verdicts = decide(&mut chain, &[80, 666, 443]);
    assert_eq!(
        verdicts,
        vec![FAIL_CLOSED; 3],
        "the whole batch is fail-closed"
    );
    let c = module.counters().snapshot();
    assert_eq!((c.timeouts, c.traps, c.reinstantiations), (1, 0, 1));
    assert_eq!(c.fail_closed_records, 3);
    // Same thread, next batch: a fresh instance answers normally.
    assert_eq!(decide(&mut chain, &[80, 443]), vec![ACCEPT_1; 2]);
    assert!(!chain.stages()[0].is_quarantined());
}

#[test]
fn wasm_unreachable_on_every_packet_is_refused_at_load() {
    let trapping = per_record("(unreachable)", "(i32.const 1)", "(i32.const 1)", "");
    match rejected(&trapping) {
        LoadError::ProbeFailed { reason, .. } => assert!(reason.contains("trap"), "{reason}"),
        other => panic!("wrong error: {other}"),
    }
}

#[test]
fn wasm_unreachable_on_one_packet_is_contained() {
    let (mut chain, module) = contained_chain(&hostile_on_port(666, "(unreachable)"));
    assert_eq!(decide(&mut chain, &[666, 80]), vec![FAIL_CLOSED; 2]);
    let c = module.counters().snapshot();
    assert_eq!(
        (
            c.traps,
            c.timeouts,
            c.reinstantiations,
            c.fail_closed_records
        ),
        (1, 0, 1, 2)
    );
    assert_eq!(decide(&mut chain, &[80]), vec![ACCEPT_1]);
}

#[test]
fn wasm_memory_growth_stops_at_the_cap_and_the_guest_sees_minus_one() {
    // Grows one page at a time until memory.grow returns -1, then reports the page count
    // as the rule id. The cap is 1 MiB = 16 pages.
    let grower = per_record(
        "(block $full (loop $grow (br_if $full (i32.eq (memory.grow (i32.const 1)) (i32.const -1))) (br $grow)))",
        "(i32.const 1)",
        "(memory.size)",
        "",
    );
    let (mut chain, _module) = contained_chain(&grower);
    let verdicts = decide(&mut chain, &[80]);
    assert_eq!(verdicts, vec![VerdictRecord::new(Action::Accept, 16)]);
    assert_eq!(chain.stages()[0].memory_bytes(), 1 << 20);
    // A single huge request fails the same way rather than trapping.
    let huge = per_record(
        "",
        "(select (i32.const 1) (i32.const 2) (i32.eq (memory.grow (i32.const 30000)) (i32.const -1)))",
        "(i32.const 3)",
        "",
    );
    let (mut chain, _module) = contained_chain(&huge);
    assert_eq!(
        decide(&mut chain, &[80]),
        vec![VerdictRecord::new(Action::Accept, 3)]
    );
}

#[test]
fn wasm_growing_memory_then_trapping_at_the_cap_is_contained() {
    let (mut chain, module) = contained_chain(&hostile_on_port(
        666,
        "(loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) (unreachable)",
    ));
    assert_eq!(decide(&mut chain, &[666]), vec![FAIL_CLOSED]);
    assert_eq!(module.counters().snapshot().traps, 1);
    assert_eq!(decide(&mut chain, &[80]), vec![ACCEPT_1]);
    assert!(
        chain.stages()[0].memory_bytes() < 1 << 20,
        "fresh instance after the trap"
    );
}

#[test]
fn wasm_initial_memory_over_the_cap_is_refused_at_load() {
    let text = r#"(module
      (memory (export "memory") 100)
      (func (export "bw_abi_version") (result i32) (i32.const 1))
      (func (export "bw_init") (result i32) (i32.const 1024))
      (func (export "bw_evaluate") (param i32)))"#;
    match rejected(&wat::parse_str(text).unwrap()) {
        LoadError::Instantiate {
            stage: "instantiation",
            ..
        } => {}
        other => panic!("wrong error: {other}"),
    }
}

fn module_text(exports: &str, imports: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module {imports} (memory $m 1) {exports}
          (func $v (result i32) (i32.const 1))
          (func $i (result i32) (i32.const 1024))
          (func $e (param i32)))"#
    ))
    .unwrap()
}

#[test]
fn wasm_missing_exports_are_refused_by_name() {
    let cases = [
        (
            r#"(export "bw_abi_version" (func $v)) (export "bw_init" (func $i)) (export "bw_evaluate" (func $e))"#,
            "memory",
        ),
        (
            r#"(export "memory" (memory $m)) (export "bw_init" (func $i)) (export "bw_evaluate" (func $e))"#,
            "bw_abi_version",
        ),
        (
            r#"(export "memory" (memory $m)) (export "bw_abi_version" (func $v)) (export "bw_evaluate" (func $e))"#,
            "bw_init",
        ),
        (
            r#"(export "memory" (memory $m)) (export "bw_abi_version" (func $v)) (export "bw_init" (func $i))"#,
            "bw_evaluate",
        ),
    ];
    for (exports, missing) in cases {
        match rejected(&module_text(exports, "")) {
            LoadError::MissingExport { export, .. } => assert_eq!(export, missing),
            other => panic!("wrong error for missing {missing}: {other}"),
        }
    }
}

#[test]
fn wasm_wrongly_typed_export_is_refused() {
    let exports = r#"(export "memory" (memory $m)) (export "bw_abi_version" (func $v))
                     (export "bw_init" (func $i)) (export "bw_evaluate" (func $v))"#;
    let err = rejected(&module_text(exports, ""));
    match &err {
        LoadError::WrongExportType {
            export: "bw_evaluate",
            ..
        } => {}
        other => panic!("wrong error: {other}"),
    }
    assert!(err.to_string().contains("(func (param i32))"), "{err}");
}

#[test]
fn wasm_wrong_abi_version_is_refused() {
    match rejected(&per_record_with(
        2,
        IO,
        "",
        "(i32.const 1)",
        "(i32.const 1)",
        "",
    )) {
        LoadError::AbiVersion {
            found: 2,
            expected: 1,
            ..
        } => {}
        other => panic!("wrong error: {other}"),
    }
}

const ALL_EXPORTS: &str = r#"(export "memory" (memory $m)) (export "bw_abi_version" (func $v))
    (export "bw_init" (func $i)) (export "bw_evaluate" (func $e))"#;

#[test]
fn wasm_wasi_import_is_refused_by_name() {
    let imports = r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#;
    let err = rejected(&module_text(ALL_EXPORTS, imports));
    assert!(matches!(err, LoadError::ForbiddenImport { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("wasi_snapshot_preview1.fd_write: imports other than bw.log are not allowed"),
        "{err}"
    );
}

#[test]
fn wasm_other_bw_imports_and_a_mistyped_log_are_refused() {
    let exit = r#"(import "bw" "exit" (func (param i32)))"#;
    assert!(matches!(
        rejected(&module_text(ALL_EXPORTS, exit)),
        LoadError::ForbiddenImport { .. }
    ));
    let bad_log = r#"(import "bw" "log" (func (param i32)))"#;
    assert!(matches!(
        rejected(&module_text(ALL_EXPORTS, bad_log)),
        LoadError::WrongImportType { .. }
    ));
    let log_memory = r#"(import "bw" "log" (memory 1))"#;
    assert!(matches!(
        rejected(&module_text(ALL_EXPORTS, log_memory)),
        LoadError::WrongImportType { .. }
    ));
}

/// A syntactically valid 50 MB module: the Wasm header and one custom section.
fn fifty_megabytes() -> Vec<u8> {
    let payload = 50_000_000usize;
    let name = b"padding";
    let mut section_len = Vec::new();
    let mut n = name.len() + 1 + payload;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            section_len.push(byte);
            break;
        }
        section_len.push(byte | 0x80);
    }
    let mut bytes = b"\0asm\x01\0\0\0".to_vec();
    bytes.push(0); // custom section id
    bytes.extend_from_slice(&section_len);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.resize(bytes.len() + payload, 0);
    bytes
}

#[test]
fn wasm_fifty_megabyte_module_is_refused_before_compiling() {
    let bytes = fifty_megabytes();
    match rejected(&bytes) {
        LoadError::TooLarge { size, cap, .. } => assert_eq!((size, cap), (bytes.len(), 1 << 20)),
        other => panic!("wrong error: {other}"),
    }
}

#[test]
fn wasm_invalid_bytes_are_refused() {
    for bytes in [&b""[..], b"not wasm at all", b"\0asm\x01\0\0\0\x01\xff\xff"] {
        assert!(
            matches!(rejected(bytes), LoadError::Invalid { .. }),
            "{bytes:?}"
        );
    }
}

#[test]
fn wasm_io_area_out_of_bounds_or_misaligned_is_refused() {
    for io in [65_000, 1028, u32::MAX - 7] {
        match rejected(&per_record_with(
            1,
            io,
            "",
            "(i32.const 1)",
            "(i32.const 1)",
            "",
        )) {
            LoadError::BadIoArea { addr, .. } => assert_eq!(addr, io),
            other => panic!("wrong error for I/O area {io}: {other}"),
        }
    }
}

#[test]
fn wasm_invalid_action_code_on_every_packet_is_refused_at_load() {
    match rejected(&per_record("", "(i32.const 9)", "(i32.const 1)", "")) {
        LoadError::ProbeFailed { reason, .. } => {
            assert!(reason.contains("action code 9"), "{reason}")
        }
        other => panic!("wrong error: {other}"),
    }
}

#[test]
fn wasm_invalid_action_code_on_one_packet_fails_the_batch_closed() {
    let bytes = per_record(
        "",
        &format!("(select (i32.const 9) (i32.const 1) (i32.eq {DST_PORT} (i32.const 666)))"),
        "(i32.const 1)",
        "",
    );
    let (mut chain, module) = contained_chain(&bytes);
    assert_eq!(decide(&mut chain, &[80, 666]), vec![FAIL_CLOSED; 2]);
    let c = module.counters().snapshot();
    assert_eq!((c.bad_verdicts, c.traps, c.reinstantiations), (1, 0, 0));
    assert_eq!(decide(&mut chain, &[80]), vec![ACCEPT_1]);
}

#[test]
fn wasm_repeatedly_failing_instance_is_quarantined() {
    let rt = runtime_with(|c| c.quarantine_after = 3);
    let module = rt
        .load(&hostile_on_port(666, "(unreachable)"), "flaky")
        .unwrap();
    let mut chain = PolicyChain::instantiate(1, std::slice::from_ref(&module)).unwrap();
    for _ in 0..3 {
        assert_eq!(decide(&mut chain, &[666]), vec![FAIL_CLOSED]);
    }
    assert!(chain.stages()[0].is_quarantined());
    // Quarantined: even harmless packets get the fail-closed verdict without a call.
    assert_eq!(decide(&mut chain, &[80]), vec![FAIL_CLOSED]);
    let c = module.counters().snapshot();
    assert_eq!(
        (c.traps, c.reinstantiations, c.quarantined_batches),
        (3, 2, 1)
    );
}

#[test]
fn wasm_fail_closed_verdict_is_configurable() {
    let rt = runtime_with(|c| c.fail_closed = Action::Reject);
    let module = rt
        .load(&hostile_on_port(666, "(unreachable)"), "reject")
        .unwrap();
    let mut chain = PolicyChain::instantiate(1, &[module]).unwrap();
    assert_eq!(
        decide(&mut chain, &[666]),
        vec![VerdictRecord::new(Action::Reject, RULE_FAIL_CLOSED)]
    );
}

#[test]
fn wasm_guest_log_is_rate_limited() {
    let rt = runtime_with(|c| {
        c.log_burst = 3;
        c.log_per_second = 0;
    });
    let bytes = per_record(
        "(call $log (i32.const 0) (i32.const 5))",
        "(i32.const 1)",
        "(i32.const 1)",
        r#"(import "bw" "log" (func $log (param i32 i32))) (data (i32.const 0) "hello")"#,
    );
    let module = rt.load(&bytes, "chatty").unwrap();
    let mut chain = PolicyChain::instantiate(1, std::slice::from_ref(&module)).unwrap();
    for _ in 0..4 {
        assert_eq!(decide(&mut chain, &[80, 443]), vec![ACCEPT_1; 2]);
    }
    let c = module.counters().snapshot();
    assert_eq!((c.logs, c.logs_suppressed), (3, 5));
}
