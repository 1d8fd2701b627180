//! Policy-host benchmarks (criterion):
//! - `call/batch_N`: host → guest cost per packet through a one-module `PolicyChain` with
//!   a trivial WAT policy, batches of 1, 8 and 64 — the Wasm call overhead itself.
//! - `swap/poll_pending`: how long a worker stalls in `poll_swap` when a new chain is
//!   waiting (target ≤ 10 µs); `swap/poll_idle`: what the per-batch check costs otherwise.
//! - `instantiate_and_drop`: the control thread's cost of making (and the reaper's of
//!   dropping) one instance of a module.
//! - `rules_mix/N`, `rules_hit/N` and `rules_miss/N`: a batch of 64 records through the compiled Docker-style
//!   policy (N iptables-style user rules, then the links, published ports and icc=false
//!   rules Docker derives), for N = 10, 1k, 10k, 100k; `mix` is hits on user rules at
//!   positions from first to last, hits on Docker's rules and misses, `hit` only user-rule
//!   hits, `miss` only records no user rule matches. Every batch is checked against the
//!   reference interpreter before it is timed. Targets (issue 3): ≤ 20 ns per packet,
//!   flat within ±20% over that range. Criterion's time is per batch of 64; divide by 64.
//! - `compile/{to_wasm,wasmtime_load,total}/N`: rule set → Wasm bytes (`compiler::compile`),
//!   bytes → loaded module (`WasmRuntime::load`: cranelift, validation, probe), and both,
//!   for 10k (target ≤ 50 ms total) and 100k rules.
//!
//! Run briefly on shared machines:
//! `cargo bench --bench policy -- --warm-up-time 1 --measurement-time 3`.
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dataplane::policy::{MAX_BATCH, PacketRecord, Policy, VerdictRecord};
use dataplane::wasm::{PolicyChain, WasmConfig, WasmRuntime, swap};
use rules_wasm::abi::{FlowState, addr_bytes, proto};
use rules_wasm::compiler;
use rules_wasm::docker::{
    BridgeNetwork, ContainerInfo, LinkSpec, PortProto, Published, docker_ruleset,
};
use rules_wasm::iptables;
use rules_wasm::model::RuleSet;
use rules_wasm::reference;

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

criterion_group!(
    benches,
    call_overhead,
    swap_stall,
    rule_count_scaling,
    compile_time
);
criterion_main!(benches);

// ---------------------------------------------------------------------------------------
// Rule-count scaling and compile time of the compiled Docker-style policy.
// ---------------------------------------------------------------------------------------

/// The dataplane port of the bridge itself (host and outside world).
const GW_PORT: u16 = 1;
/// Containers on the bench bridge: 172.17.0.2.. on ports 2.., enough for links, published
/// ports and icc traffic to all be present.
const CONTAINERS: u8 = 8;

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// Container `k` (0-based): name `c{k}`, address 172.17.0.(2 + k), dataplane port 2 + k.
fn container_ip(k: u8) -> IpAddr {
    v4(172, 17, 0, 2 + k)
}
fn container_port(k: u8) -> u16 {
    2 + u16::from(k)
}

/// icc=false with two links (c0 → c1 on 5432/tcp, c2 → c3 on 80/tcp) and two published
/// ports (c0 `-p 8080:80/tcp`, c4 `-p 5353:53/udp`): what `docker run --link/-p` produce.
fn bench_network() -> BridgeNetwork {
    let containers = (0..CONTAINERS)
        .map(|k| {
            let mut c = ContainerInfo {
                name: format!("c{k}"),
                port: container_port(k),
                ips: vec![container_ip(k)],
                mac: [2, 0x42, 172, 17, 0, 2 + k],
                ..ContainerInfo::default()
            };
            match k {
                0 => {
                    c.links = vec![LinkSpec {
                        child: "c1".into(),
                        alias: "db".into(),
                    }];
                    c.published = vec![Published {
                        proto: proto::TCP,
                        container_port: 80,
                        host_port: 8080,
                    }];
                }
                1 => {
                    c.exposed = vec![PortProto {
                        proto: proto::TCP,
                        port: 5432,
                    }]
                }
                2 => {
                    c.links = vec![LinkSpec {
                        child: "c3".into(),
                        alias: "web".into(),
                    }]
                }
                3 => {
                    c.exposed = vec![PortProto {
                        proto: proto::TCP,
                        port: 80,
                    }]
                }
                4 => {
                    c.published = vec![Published {
                        proto: proto::UDP,
                        container_port: 53,
                        host_port: 5353,
                    }]
                }
                _ => {}
            }
            c
        })
        .collect();
    BridgeNetwork {
        icc: false,
        gateway_port: GW_PORT,
        gateway_ips: vec![v4(172, 17, 0, 1)],
        containers,
    }
}

/// The pinned fields of user rule `i`: a unique outside source 10.x.y.z, one of the
/// containers, tcp (udp for every fourth), a destination port; DROP, ACCEPT for every fifth.
struct UserRule {
    src: Ipv4Addr,
    dst: u8,
    proto: u8,
    dport: u16,
}

fn user_rule(i: usize) -> UserRule {
    UserRule {
        src: Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8),
        dst: (i % usize::from(CONTAINERS)) as u8,
        proto: if i % 4 == 3 { proto::UDP } else { proto::TCP },
        dport: 1024 + (i % 50_000) as u16,
    }
}

/// N user rules written as iptables lines (what a user pastes into the USER chain), parsed
/// with the product's parser, followed by Docker's rules for [`bench_network`].
fn docker_policy(n: usize) -> RuleSet {
    let net = bench_network();
    let mut text = String::with_capacity(n * 90);
    for i in 0..n {
        let r = user_rule(i);
        let p = if r.proto == proto::UDP { "udp" } else { "tcp" };
        let j = if i % 5 == 0 { "ACCEPT" } else { "DROP" };
        text.push_str(&format!(
            "-A DOCKER-USER -s {} -d {} -p {p} --dport {} -j {j}\n",
            r.src,
            container_ip(r.dst),
            r.dport
        ));
    }
    let user = iptables::parse(&text, &net).expect("user rules parse");
    assert_eq!(user.len(), n);
    docker_ruleset(&net, user, 1)
}

fn record(
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    sport: u16,
    dport: u16,
    in_port: u16,
    out_port: u16,
) -> PacketRecord {
    PacketRecord {
        src: addr_bytes(src),
        dst: addr_bytes(dst),
        src_port: sport,
        dst_port: dport,
        ip_version: 4,
        protocol,
        tcp_flags: if protocol == proto::TCP { 0x02 } else { 0 },
        flow_state: FlowState::New,
        in_port,
        out_port,
        ..PacketRecord::default()
    }
}

/// A packet from outside that hits user rule `i` (`near_miss`: same addresses and protocol,
/// a destination port no rule with that source has, so it probes the user rules' shape and
/// misses them all).
fn user_packet(i: usize, near_miss: bool) -> PacketRecord {
    let r = user_rule(i);
    let dport = if near_miss {
        r.dport.wrapping_add(50_000)
    } else {
        r.dport
    };
    record(
        IpAddr::V4(r.src),
        container_ip(r.dst),
        r.proto,
        40_000,
        dport,
        GW_PORT,
        container_port(r.dst),
    )
}

/// What Docker's own rules decide, one record each: link forward and reply, published port
/// from outside (tcp and udp), the host itself, a reply of an admitted flow, a container
/// going out, ARP.
fn docker_packets() -> Vec<PacketRecord> {
    let outside = v4(192, 0, 2, 7);
    let mut established = record(
        container_ip(5),
        outside,
        proto::TCP,
        443,
        40_000,
        container_port(5),
        GW_PORT,
    );
    established.flow_state = FlowState::Established;
    established.tcp_flags = 0x10;
    let arp = PacketRecord {
        ip_version: 0,
        in_port: container_port(6),
        out_port: container_port(7),
        ..PacketRecord::default()
    };
    vec![
        record(
            container_ip(0),
            container_ip(1),
            proto::TCP,
            41_000,
            5432,
            container_port(0),
            container_port(1),
        ),
        record(
            container_ip(1),
            container_ip(0),
            proto::TCP,
            5432,
            41_000,
            container_port(1),
            container_port(0),
        ),
        record(
            outside,
            container_ip(0),
            proto::TCP,
            50_000,
            80,
            GW_PORT,
            container_port(0),
        ),
        record(
            outside,
            container_ip(4),
            proto::UDP,
            50_000,
            53,
            GW_PORT,
            container_port(4),
        ),
        record(
            v4(172, 17, 0, 1),
            container_ip(6),
            proto::TCP,
            50_000,
            22,
            GW_PORT,
            container_port(6),
        ),
        established,
        record(
            container_ip(7),
            outside,
            proto::UDP,
            50_000,
            53,
            container_port(7),
            GW_PORT,
        ),
        arp,
    ]
}

/// Packets no user rule and no Docker ACCEPT matches: container to container under
/// icc=false (ICC DROP) and outside to an unpublished port (the FORWARD-policy DROP).
fn docker_miss_packet(k: usize) -> PacketRecord {
    let a = (k % usize::from(CONTAINERS)) as u8;
    let b = ((k + 3) % usize::from(CONTAINERS)) as u8;
    if k.is_multiple_of(2) {
        record(
            container_ip(a),
            container_ip(b),
            proto::TCP,
            30_000 + k as u16,
            9_000,
            container_port(a),
            container_port(b),
        )
    } else {
        record(
            v4(198, 51, 100, k as u8),
            container_ip(a),
            proto::UDP,
            30_000,
            7_000,
            GW_PORT,
            container_port(a),
        )
    }
}

/// The mixed batch: 24 hits on user rules spread from the first to the last, 8 hits on
/// Docker's own rules, 16 near-misses of user rules, 16 plain misses; interleaved.
fn mixed_batch(n: usize) -> Vec<PacketRecord> {
    let mut v = Vec::with_capacity(MAX_BATCH);
    v.extend((0..24).map(|k| user_packet(k * (n - 1) / 23, false)));
    v.extend(docker_packets());
    v.extend((0..16).map(|k| user_packet((k * 7919 + 13) % n, true)));
    v.extend((0..16).map(docker_miss_packet));
    assert_eq!(v.len(), MAX_BATCH);
    // Interleave so hits and misses alternate within the batch as they would on the wire.
    let mut out = Vec::with_capacity(MAX_BATCH);
    for k in 0..16 {
        for q in 0..4 {
            out.push(v[q * 16 + k]);
        }
    }
    out
}

/// A batch where every record misses every user rule (half near-misses probing the user
/// shape, half Docker-only traffic): the most probing the user table can cause.
fn miss_batch(n: usize) -> Vec<PacketRecord> {
    (0..MAX_BATCH)
        .map(|k| {
            if k % 2 == 0 {
                user_packet((k * 7919 + 13) % n, true)
            } else {
                docker_miss_packet(k)
            }
        })
        .collect()
}

/// A batch where every record hits a user rule, spread from the first rule to the last:
/// the best case (one shape probed per record).
fn hit_batch(n: usize) -> Vec<PacketRecord> {
    (0..MAX_BATCH)
        .map(|k| user_packet(k * (n - 1) / (MAX_BATCH - 1), false))
        .collect()
}

/// Checks the compiled module against the reference interpreter on `records`, so the bench
/// cannot time a wrong (or trivially short) path.
fn check_against_reference(
    set: &RuleSet,
    chain: &mut PolicyChain,
    records: &[PacketRecord],
    what: &str,
) {
    let mut verdicts = vec![VerdictRecord::CONTINUE; records.len()];
    chain.decide(records, &mut verdicts);
    for (r, v) in records.iter().zip(&verdicts) {
        assert_eq!(*v, reference::evaluate(set, r), "{what}: {r:?}");
    }
}

fn rule_count_scaling(c: &mut Criterion) {
    let rt = runtime();
    let mut mix = c.benchmark_group("rules_mix");
    mix.throughput(Throughput::Elements(MAX_BATCH as u64));
    let mut chains = Vec::new();
    for n in [10usize, 1_000, 10_000, 100_000] {
        let set = docker_policy(n);
        let compiled = compiler::compile(&set).expect("compile rule set");
        eprintln!("rules-{n}: {:?}", compiled.stats);
        let module = rt
            .load(&compiled.wasm, &format!("rules-{n}"))
            .expect("load compiled policy");
        let mut chain = PolicyChain::instantiate(1, &[module]).expect("instantiate");
        let mixed = mixed_batch(n);
        let missing = miss_batch(n);
        let hitting = hit_batch(n);
        check_against_reference(&set, &mut chain, &mixed, &format!("mix/{n}"));
        check_against_reference(&set, &mut chain, &hitting, &format!("hit/{n}"));
        check_against_reference(&set, &mut chain, &missing, &format!("miss/{n}"));
        let user_hits = mixed
            .iter()
            .filter(|r| reference::evaluate(&set, r).rule < n as u32)
            .count();
        assert_eq!(user_hits, 24, "mix/{n}: user-rule hits");
        let mut verdicts = vec![VerdictRecord::CONTINUE; MAX_BATCH];
        mix.bench_function(format!("{n}"), |b| {
            b.iter(|| chain.decide(black_box(&mixed), &mut verdicts))
        });
        chains.push((n, chain, hitting, missing));
    }
    mix.finish();

    let mut hit = c.benchmark_group("rules_hit");
    hit.throughput(Throughput::Elements(MAX_BATCH as u64));
    for (n, chain, hitting, _) in &mut chains {
        let mut verdicts = vec![VerdictRecord::CONTINUE; MAX_BATCH];
        hit.bench_function(format!("{n}"), |b| {
            b.iter(|| chain.decide(black_box(hitting.as_slice()), &mut verdicts))
        });
    }
    hit.finish();

    let mut miss = c.benchmark_group("rules_miss");
    miss.throughput(Throughput::Elements(MAX_BATCH as u64));
    for (n, chain, _, missing) in &mut chains {
        let mut verdicts = vec![VerdictRecord::CONTINUE; MAX_BATCH];
        miss.bench_function(format!("{n}"), |b| {
            b.iter(|| chain.decide(black_box(missing.as_slice()), &mut verdicts))
        });
    }
    miss.finish();
}

fn compile_time(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    for n in [10_000usize, 100_000] {
        let set = docker_policy(n);
        group.bench_function(format!("to_wasm/{n}"), |b| {
            b.iter(|| compiler::compile(black_box(&set)).expect("compile"))
        });
        let wasm = compiler::compile(&set).expect("compile").wasm;
        group.bench_function(format!("wasmtime_load/{n}"), |b| {
            b.iter(|| rt.load(black_box(&wasm), "rules").expect("load"))
        });
        group.bench_function(format!("total/{n}"), |b| {
            b.iter(|| {
                let compiled = compiler::compile(black_box(&set)).expect("compile");
                rt.load(&compiled.wasm, "rules").expect("load")
            })
        });
    }
    group.finish();
}
