//! Working policies: single modules, chains where the first module continues, trace, and
//! hot swap across threads.
mod wasm_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataplane::policy::{Action, MAX_BATCH, PacketRecord, Policy, RULE_NONE, VerdictRecord};
use dataplane::wasm::swap;
use dataplane::wasm::{PolicyChain, PolicyModule, TraceResult, WasmRuntime, trace, trace_fresh};
use wasm_support::*;

/// Port 80 → Accept (rule 1), anything else → Drop (rule 2): the "Docker policy" here.
fn docker_like(rt: &WasmRuntime) -> PolicyModule {
    let bytes = per_record(
        "",
        &format!("(select (i32.const 1) (i32.const 2) (i32.eq {DST_PORT} (i32.const 80)))"),
        &format!("(select (i32.const 1) (i32.const 2) (i32.eq {DST_PORT} (i32.const 80)))"),
        "",
    );
    rt.load(&bytes, "docker").unwrap()
}

/// Port 22 → Drop (rule 5), port 8080 → Accept (rule 6), else Continue: a "user module".
fn user_rules(rt: &WasmRuntime) -> PolicyModule {
    let action = format!(
        "(if (result i32) (i32.eq {DST_PORT} (i32.const 22)) (then (i32.const 2)) (else (select (i32.const 1) (i32.const 0) (i32.eq {DST_PORT} (i32.const 8080)))))"
    );
    let rule = format!(
        "(if (result i32) (i32.eq {DST_PORT} (i32.const 22)) (then (i32.const 5)) (else (select (i32.const 6) (i32.const {RULE_NONE}) (i32.eq {DST_PORT} (i32.const 8080)))))"
    );
    rt.load(&per_record("", &action, &rule, ""), "user")
        .unwrap()
}

/// The chain's meaning, in plain Rust.
fn reference(port: u16) -> VerdictRecord {
    let (action, rule) = match port {
        22 => (Action::Drop, 5),
        8080 => (Action::Accept, 6),
        80 => (Action::Accept, 1),
        _ => (Action::Drop, 2),
    };
    VerdictRecord::new(action, rule)
}

fn batch(ports: impl IntoIterator<Item = u16>) -> Vec<PacketRecord> {
    ports.into_iter().map(tcp).collect()
}

#[test]
fn wasm_single_module_accepts_and_drops_by_port() {
    let rt = runtime();
    let mut chain = PolicyChain::instantiate(3, &[docker_like(&rt)]).unwrap();
    let records = batch([80, 443, 80, 22]);
    let mut verdicts = vec![VerdictRecord::CONTINUE; 4];
    chain.decide(&records, &mut verdicts);
    assert_eq!(chain.generation(), 3);
    let expected: Vec<_> = [
        (Action::Accept, 1),
        (Action::Drop, 2),
        (Action::Accept, 1),
        (Action::Drop, 2),
    ]
    .into_iter()
    .map(|(action, rule)| VerdictRecord::new(action, rule))
    .collect();
    assert_eq!(verdicts, expected);
}

#[test]
fn wasm_two_module_chain_passes_continued_records_to_the_second() {
    let rt = runtime();
    let (user, docker) = (user_rules(&rt), docker_like(&rt));
    let mut chain = PolicyChain::instantiate(1, &[user.clone(), docker.clone()]).unwrap();
    // A full batch mixing records each module decides, in an order that makes the
    // compaction of the continuing subset matter; then a longer-than-64 input.
    for len in [MAX_BATCH, 1, 150] {
        let ports: Vec<u16> = (0..len)
            .map(|i| [22, 80, 443, 8080, 53][(i * 7 + 3) % 5])
            .collect();
        let records = batch(ports.iter().copied());
        let mut verdicts = vec![VerdictRecord::CONTINUE; len];
        chain.decide(&records, &mut verdicts);
        let expected: Vec<_> = ports.iter().map(|&p| reference(p)).collect();
        assert_eq!(verdicts, expected, "batch of {len}");
    }
    let (u, d) = (user.counters().snapshot(), docker.counters().snapshot());
    assert_eq!(
        u.records,
        (MAX_BATCH + 1 + 150) as u64,
        "the user module sees everything"
    );
    assert_eq!(
        d.records, u.continued,
        "the docker module sees only what the user continued"
    );
    assert_eq!(u.continued, d.accepted + d.dropped);
}

#[test]
fn wasm_a_chain_where_nobody_decides_leaves_continue_for_the_engine() {
    let rt = runtime();
    let pass = rt
        .load(&constant(Action::Continue, RULE_NONE), "pass")
        .unwrap();
    let mut chain = PolicyChain::instantiate(1, &[pass]).unwrap();
    let mut verdicts = vec![VerdictRecord::new(Action::Drop, 0); 2];
    chain.decide(&batch([80, 22]), &mut verdicts);
    assert_eq!(verdicts, vec![VerdictRecord::CONTINUE; 2]);
    let empty = &mut PolicyChain::new(9, Vec::new());
    empty.decide(&batch([80]), &mut verdicts[..1]);
    assert_eq!(verdicts[0], VerdictRecord::CONTINUE);
}

#[test]
fn wasm_trace_names_the_deciding_module_and_rule_and_agrees_with_the_dataplane() {
    let rt = runtime();
    let modules = [user_rules(&rt), docker_like(&rt)];
    let mut chain = PolicyChain::instantiate(4, &modules).unwrap();
    let cases = [
        (22, 0, "user"),
        (8080, 0, "user"),
        (80, 1, "docker"),
        (443, 1, "docker"),
    ];
    for (port, index, name) in cases {
        let r = trace(&mut chain, &tcp(port));
        let expected = TraceResult {
            generation: 4,
            module_index: Some(index),
            module_name: Some(name.into()),
            action: reference(port).action,
            rule_id: reference(port).rule,
        };
        assert_eq!(r, expected, "port {port}");
        assert_eq!(
            trace_fresh(4, &modules, &tcp(port)).unwrap(),
            expected,
            "fresh, port {port}"
        );
        // The dataplane's answer for the same record inside a mixed batch.
        let records = batch([443, port, 22]);
        let mut verdicts = vec![VerdictRecord::CONTINUE; 3];
        chain.decide(&records, &mut verdicts);
        assert_eq!(
            (verdicts[1].action, verdicts[1].rule),
            (r.action, r.rule_id)
        );
    }
    let pass = rt
        .load(&constant(Action::Continue, RULE_NONE), "pass")
        .unwrap();
    let r = trace_fresh(5, &[pass], &tcp(80)).unwrap();
    assert_eq!(
        (r.module_index, r.module_name, r.action),
        (None, None, Action::Continue)
    );
}

#[test]
fn wasm_trace_fresh_does_not_touch_the_modules_counters() {
    let rt = runtime();
    let docker = docker_like(&rt);
    trace_fresh(1, std::slice::from_ref(&docker), &tcp(80)).unwrap();
    assert_eq!(docker.counters().snapshot().records, 0);
}

/// Hot swap across threads: the worker judges batches non-stop while the control thread
/// installs generations 2 and 3. Every batch must be judged wholly by one generation (rule
/// id = 100 × generation on every record), generations only move forward, and each
/// replaced chain is dropped on the reaper thread, not the worker.
#[test]
fn wasm_hot_swap_across_threads_judges_each_batch_with_one_generation() {
    let rt = runtime();
    let modules: Vec<PolicyModule> = (1..=3u32)
        .map(|g| {
            rt.load(&constant(Action::Accept, 100 * g), &format!("gen{g}"))
                .unwrap()
        })
        .collect();
    let module_for = |g: u64| modules[g as usize - 1].clone();
    let drop_sites: Vec<Arc<Mutex<Option<String>>>> = (0..3).map(|_| Arc::default()).collect();
    let chain_for = |g: u64| -> Box<dyn Policy> {
        Box::new(DropProbe {
            inner: PolicyChain::instantiate(g, &[module_for(g)]).unwrap(),
            dropped_on: Arc::clone(&drop_sites[g as usize - 1]),
        })
    };
    let reaper = rt.reaper();
    let reaped_before = reaper.reaped();
    let (tx, mut rx) = swap::channel(reaper.clone());
    let mut current = chain_for(1);
    let batches_done = Arc::new(AtomicU64::new(0));

    let worker = {
        let batches_done = Arc::clone(&batches_done);
        std::thread::Builder::new()
            .name("test-worker".into())
            .spawn(move || {
                let records = batch((0..MAX_BATCH).map(|i| 1000 + i as u16));
                let mut verdicts = vec![VerdictRecord::CONTINUE; MAX_BATCH];
                let mut seen = Vec::new();
                let mut after_last = 0;
                while after_last < 50 {
                    rx.poll_swap(&mut current);
                    current.decide(&records, &mut verdicts);
                    let g = current.generation();
                    let rules: std::collections::BTreeSet<u32> =
                        verdicts.iter().map(|v| v.rule).collect();
                    seen.push((g, rules));
                    if g == 3 {
                        after_last += 1;
                    }
                    batches_done.fetch_add(1, Ordering::SeqCst);
                }
                drop(current); // the last generation is dropped by its owner, here
                seen
            })
            .unwrap()
    };

    let wait_for = |n: u64| {
        let start = Instant::now();
        while batches_done.load(Ordering::SeqCst) < n {
            assert!(start.elapsed() < Duration::from_secs(30), "worker stalled");
            std::thread::yield_now();
        }
    };
    wait_for(20);
    let gen2 = chain_for(2);
    tx.send(gen2).unwrap();
    wait_for(batches_done.load(Ordering::SeqCst) + 20);
    assert_eq!(tx.installed_generation(), Some(2));
    tx.send(chain_for(3)).unwrap();
    let seen = worker.join().unwrap();

    let mut last_generation = 0;
    for (g, rules) in &seen {
        assert!(*g >= last_generation, "generation went backwards");
        last_generation = *g;
        assert_eq!(rules.len(), 1, "a batch mixed generations: {rules:?}");
        assert!(
            rules.contains(&(100 * *g as u32)),
            "generation {g} judged by {rules:?}; counters {:?}",
            modules[*g as usize - 1].counters().snapshot()
        );
    }
    let generations: std::collections::BTreeSet<u64> = seen.iter().map(|(g, _)| *g).collect();
    assert_eq!(generations.into_iter().collect::<Vec<_>>(), vec![1, 2, 3]);

    // The two replaced chains are dropped by the reaper thread.
    let start = Instant::now();
    while reaper.reaped() < reaped_before + 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "reaper did not drop the old chains"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    for g in [0, 1] {
        assert_eq!(
            drop_sites[g].lock().unwrap().as_deref(),
            Some("bw-reaper"),
            "generation {}",
            g + 1
        );
    }
    assert_eq!(
        drop_sites[2].lock().unwrap().as_deref(),
        Some("test-worker")
    );
}

#[test]
fn wasm_a_rejected_policy_sends_nothing_and_the_old_one_keeps_answering() {
    let mut h = Harness::with_accept_all(runtime());
    assert!(h.try_install(b"garbage", "bad").is_err());
    h.assert_old_policy_in_force();
    assert_eq!(h.tx.installed_generation(), None);
    // A good one afterwards is installed at the next batch.
    let g = h.try_install(&constant(Action::Drop, 9), "new").unwrap();
    let v = h.judge(&[tcp(80)]);
    assert_eq!(
        (h.current.generation(), v[0]),
        (g, VerdictRecord::new(Action::Drop, 9))
    );
    assert_eq!(h.tx.installed_generation(), Some(g));
}

#[test]
fn wasm_several_pending_policies_install_the_newest() {
    let mut h = Harness::with_accept_all(runtime());
    h.try_install(&constant(Action::Drop, 2), "g2").unwrap();
    let g3 = h.try_install(&constant(Action::Drop, 3), "g3").unwrap();
    let v = h.judge(&[tcp(80)]);
    assert_eq!((h.current.generation(), v[0].rule), (g3, 3));
}

/// A LOG rule beside the policy: its module's Accepts are counted and logged within the
/// rate limit, and the verdicts are the deciding chain's alone.
#[test]
fn wasm_observer_counts_and_logs_without_deciding() {
    let rt = runtime();
    // The observer "reaches" records to port 80 only.
    let log_rule = per_record(
        "",
        &format!("(select (i32.const 1) (i32.const 2) (i32.eq {DST_PORT} (i32.const 80)))"),
        "(i32.const 0)",
        "",
    );
    let observer = rt.load(&log_rule, "log-0").unwrap();
    let prefix: Arc<str> = Arc::from("WEB: ");
    let mut chain = PolicyChain::instantiate_observed(
        1,
        &[docker_like(&rt)],
        &[dataplane::wasm::LogSpec {
            module: observer.clone(),
            prefix: Arc::clone(&prefix),
            limit: None,
            decided_before: 0,
        }],
    )
    .unwrap();
    assert_eq!(chain.observers().len(), 1);
    let ports: Vec<u16> = (0..200)
        .map(|i| if i % 2 == 0 { 80 } else { 443 })
        .collect();
    let records = batch(ports.iter().copied());
    let mut verdicts = vec![VerdictRecord::CONTINUE; records.len()];
    chain.decide(&records, &mut verdicts);
    for (p, v) in ports.iter().zip(&verdicts) {
        assert_eq!(*v, reference_docker(*p), "the observer never decides");
    }
    let c = observer.counters().snapshot();
    assert_eq!(
        c.accepted, 100,
        "every record to port 80 reached the LOG rule"
    );
    let burst = u64::from(rt.config().log_burst);
    assert!(c.logs <= burst + 1, "logged within the burst: {}", c.logs);
    assert_eq!(c.logs + c.logs_suppressed, 100);
}

fn reference_docker(port: u16) -> VerdictRecord {
    if port == 80 {
        VerdictRecord::new(Action::Accept, 1)
    } else {
        VerdictRecord::new(Action::Drop, 2)
    }
}

/// A rate-limited rule before the policy: within its burst it decides, over it the policy
/// decides as if the rule had not matched; the bucket is shared by every instance.
#[test]
fn wasm_rate_limited_rule_decides_within_its_rate_only() {
    let rt = runtime();
    let reach = per_record(
        "",
        &format!("(select (i32.const 1) (i32.const 2) (i32.eq {DST_PORT} (i32.const 8080)))"),
        "(i32.const 0)",
        "",
    );
    let limit = dataplane::wasm::RateLimit {
        per_second: 0.0,
        burst: 3,
        verdict: VerdictRecord::new(Action::Accept, 42),
    };
    let caps = dataplane::wasm::Caps {
        max_module_bytes: 1 << 20,
        max_memory_bytes: 1 << 24,
    };
    let limited = rt.load_limited(&reach, "limit-0", caps, limit).unwrap();
    let modules = [limited.clone(), docker_like(&rt)];
    let mut a = PolicyChain::instantiate(1, &modules).unwrap();
    let mut b = PolicyChain::instantiate(1, &modules).unwrap();
    let records = batch([8080, 80, 8080, 8080]);
    let mut va = vec![VerdictRecord::CONTINUE; 4];
    a.decide(&records, &mut va);
    assert_eq!(va[0], limit.verdict);
    assert_eq!(
        va[1],
        VerdictRecord::new(Action::Accept, 1),
        "not reached: the policy"
    );
    assert_eq!(va[2], limit.verdict);
    assert_eq!(va[3], limit.verdict);
    // Another worker's instance shares the bucket, now empty: the policy decides.
    let mut vb = vec![VerdictRecord::CONTINUE; 2];
    b.decide(&records[..2], &mut vb);
    assert_eq!(vb[0], VerdictRecord::new(Action::Drop, 2));
    let c = limited.counters().snapshot();
    assert_eq!((c.accepted, c.over_limit), (4, 1));
}
