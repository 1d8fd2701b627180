//! Policy-host benchmarks (criterion):
//! - `call/batch_N`: host → guest cost per packet through a one-module `PolicyChain` with
//!   a trivial WAT policy, batches of 1, 8 and 64 — the Wasm call overhead itself.
//! - `swap/poll_pending`: how long a worker stalls in `poll_swap` when a new chain is
//!   waiting (target ≤ 10 µs); `swap/poll_idle`: what the per-batch check costs otherwise.
//! - `instantiate_and_drop`: the control thread's cost of making (and the reaper's of
//!   dropping) one instance of a module.
//!
//! ns per packet against rule count and compile time of 10k rules need the rule compiler;
//! they live in `benches/policy_rules.rs.txt` until it is merged.
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dataplane::policy::{MAX_BATCH, PacketRecord, Policy, VerdictRecord};
use dataplane::wasm::{PolicyChain, WasmConfig, WasmRuntime, swap};
use rules_wasm::abi::{FlowState, addr_bytes, proto};

/// Accepts every record with rule 1: all the cost is the host's and the call's.
const TRIVIAL: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "bw_abi_version") (result i32) (i32.const 1))
  (func (export "bw_init") (result i32) (i32.const 1024))
  (func (export "bw_evaluate") (param $n i32)
    (local $out i32) (local $end i32)
    (local.set $out (i32.const 4096))
    (local.set $end (i32.add (i32.const 4096) (i32.shl (local.get $n) (i32.const 3))))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $out) (local.get $end)))
      (i64.store (local.get $out) (i64.const 0x0000000100000001))
      (local.set $out (i32.add (local.get $out) (i32.const 8)))
      (br $next)))))"#;

fn records() -> Vec<PacketRecord> {
    (0..MAX_BATCH)
        .map(|i| PacketRecord {
            src: addr_bytes(IpAddr::V4(Ipv4Addr::new(172, 17, 0, 2 + (i % 32) as u8))),
            dst: addr_bytes(IpAddr::V4(Ipv4Addr::new(172, 17, 0, 3))),
            src_port: 40_000 + i as u16,
            dst_port: 80,
            ip_version: 4,
            protocol: proto::TCP,
            tcp_flags: 0x02,
            flow_state: FlowState::New,
            in_port: 1,
            out_port: 2,
            ..PacketRecord::default()
        })
        .collect()
}

fn runtime() -> WasmRuntime {
    WasmRuntime::new(WasmConfig::default()).expect("wasm runtime")
}

fn trivial_chain(rt: &WasmRuntime, generation: u64) -> PolicyChain {
    let wasm = wat::parse_str(TRIVIAL).expect("trivial WAT");
    let module = rt.load(&wasm, "trivial").expect("load trivial policy");
    PolicyChain::instantiate(generation, &[module]).expect("instantiate trivial policy")
}

fn call_overhead(c: &mut Criterion) {
    let rt = runtime();
    let mut chain = trivial_chain(&rt, 1);
    let records = records();
    let mut verdicts = vec![VerdictRecord::CONTINUE; MAX_BATCH];
    let mut group = c.benchmark_group("call");
    for n in [1usize, 8, 64] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("batch_{n}"), |b| {
            b.iter(|| chain.decide(black_box(&records[..n]), &mut verdicts[..n]))
        });
    }
    group.finish();
}

fn swap_stall(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("swap");

    // Two real chains take turns: the retired one comes straight back and is queued again,
    // so every timed poll finds a chain pending and nothing is built or dropped per
    // iteration (dropping is the reaper's job in production, off this thread).
    let (tx, mut rx, retired) = swap::channel_returning();
    let mut current: Box<dyn Policy> = Box::new(trivial_chain(&rt, 1));
    tx.send(Box::new(trivial_chain(&rt, 2)))
        .expect("worker end alive");
    group.bench_function("poll_pending", |b| {
        b.iter_custom(|iters| {
            let mut stalled = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let swapped = rx.poll_swap(black_box(&mut current));
                stalled += start.elapsed();
                assert!(swapped, "a chain was pending");
                let old = retired.try_recv().expect("old chain retired");
                tx.send(old).expect("worker end alive");
            }
            stalled
        })
    });
    // Drain the one left pending so the idle case really is idle.
    rx.poll_swap(&mut current);
    while retired.try_recv().is_some() {}
    group.bench_function("poll_idle", |b| {
        b.iter(|| rx.poll_swap(black_box(&mut current)))
    });
    group.finish();

    let wasm = wat::parse_str(TRIVIAL).expect("trivial WAT");
    let module = rt.load(&wasm, "trivial").expect("load trivial policy");
    c.bench_function("instantiate_and_drop", |b| {
        b.iter(|| drop(black_box(module.instantiate().expect("instantiate"))))
    });
}

criterion_group!(benches, call_overhead, swap_stall);
criterion_main!(benches);
