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
//! - `blocklist/{10,1M}`: a batch of 64 outside records (half in the set) through the Docker
//!   policy plus one DOCKER-USER rule `-m set --match-set blocklist src -j DROP`, with a
//!   `hash:net` set of 10 or 1,000,000 entries (/32, /24, /16); the 1M set's parse, compile
//!   and load times and module size are printed once (`BW_BLOCKLIST` changes its size).
//!   Target (issue 14): per packet what 10 entries cost.
//! - `every_match/10k` and `compile/every_match/10k`: 10k DOCKER-USER rules using every match
//!   and target bridgewall reads (multiport, iprange, icmp types, --syn, --tcp-flags, states,
//!   comments, user chains with RETURN, REJECT kinds, `-i eth0`), per packet (≤ 20 ns) and
//!   compiled and loaded (≤ 50 ms).
//! - `networks/{1x8,50x20}_1k` and `compile/networks/{1x8,50x20}_1k/{to_wasm,total}`
//!   (issue 13): the single-network policy of `rules_mix/1000` next to one bridgewall serving
//!   50 bridge networks of 20 containers each (mixed icc, every tenth `--internal`, IPv6 on
//!   every other one, a published port per network; ~11k Docker rules of isolation, host
//!   exemptions and ICC) under 1,000 user rules (990 literal, 10 naming a network), per packet
//!   on a batch mixing user-rule hits and misses, isolation drops both ways, the host's
//!   exemptions, published ports, per-network icc, internal drops and replies (≤ 20 ns, flat),
//!   and compiled and loaded (≤ 50 ms).
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
    BridgeNetwork, ContainerInfo, HostNetworks, LinkSpec, PortProto, Published, docker_ruleset,
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
    compile_time,
    blocklists,
    every_match,
    many_networks_bench
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
fn bench_network() -> HostNetworks {
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
    HostNetworks::from(BridgeNetwork {
        name: "bridge".into(),
        bridge: "docker0".into(),
        subnets: vec![rules_wasm::model::Cidr::new(v4(172, 17, 0, 0), 16).expect("cidr")],
        icc: false,
        gateway_port: GW_PORT,
        gateway_ips: vec![v4(172, 17, 0, 1)],
        containers,
        ..BridgeNetwork::default()
    })
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

// ---------------------------------------------------------------------------------------
// Issue 14: ipset blocklists and rule sets using every match.
// ---------------------------------------------------------------------------------------

/// A deterministic LCG, so the sets are the same on every run.
fn lcg(state: &mut u64) -> u32 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    (*state >> 33) as u32
}

/// `ipset save` text of a `hash:net` set of `n` outside prefixes (70% /32, 20% /24, 10% /16,
/// none in 172.16/12), and the first few as addresses that are in it.
fn blocklist_text(n: usize) -> (String, Vec<Ipv4Addr>) {
    let mut s = 0x5eed_u64;
    let mut text = String::with_capacity(n * 24 + 64);
    text.push_str("create blocklist hash:net family inet hashsize 65536 maxelem 2000000\n");
    let mut members = Vec::new();
    for i in 0..n {
        let mut a = lcg(&mut s);
        // Keep 1.0.0.0-223.255.255.255 and out of 172.16/12 (the bridge) and 10/8 (the
        // bench's own user-rule sources).
        a = 0x0100_0000 + a % 0xde00_0000;
        if (a >> 20) == 0xac1 || (a >> 24) == 10 {
            a ^= 0x4000_0000;
        }
        let len = match i % 10 {
            0 => 16,
            1 | 2 => 24,
            _ => 32,
        };
        let ip = Ipv4Addr::from(a & (u32::MAX << (32 - len)));
        if members.len() < MAX_BATCH {
            members.push(Ipv4Addr::from(a));
        }
        text.push_str(&format!("add blocklist {ip}/{len}\n"));
    }
    (text, members)
}

/// The Docker policy of [`bench_network`] with one DOCKER-USER rule dropping the set.
fn blocklist_policy(sets: &str) -> RuleSet {
    let net = bench_network();
    let parsed = iptables::parse_full(
        "-I DOCKER-USER -i docker0 -m set --match-set blocklist src -j DROP",
        Some(sets),
        &net,
    )
    .expect("blocklist rule parses");
    docker_ruleset(&net, parsed.rules, 1)
}

/// Half the batch from addresses in the set, half from 10.x sources that are not.
fn blocklist_batch(members: &[Ipv4Addr]) -> Vec<PacketRecord> {
    (0..MAX_BATCH)
        .map(|k| {
            let src = if k % 2 == 0 {
                IpAddr::V4(members[k % members.len()])
            } else {
                v4(10, 9, (k >> 8) as u8, k as u8)
            };
            let d = (k % usize::from(CONTAINERS)) as u8;
            record(
                src,
                container_ip(d),
                proto::TCP,
                40_000,
                80,
                GW_PORT,
                container_port(d),
            )
        })
        .collect()
}

fn blocklists(c: &mut Criterion) {
    let rt = runtime();
    let big: usize = std::env::var("BW_BLOCKLIST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut group = c.benchmark_group("blocklist");
    group.throughput(Throughput::Elements(MAX_BATCH as u64));
    for (label, n) in [("10".to_string(), 10usize), (format!("{}", big), big)] {
        let (text, members) = blocklist_text(n);
        let t0 = Instant::now();
        let set = blocklist_policy(&text);
        let parse = t0.elapsed();
        let t1 = Instant::now();
        let compiled = compiler::compile(&set).expect("compile blocklist policy");
        let compile = t1.elapsed();
        let t2 = Instant::now();
        let module = rt
            .load_with_caps(
                &compiled.wasm,
                "blocklist",
                dataplane::wasm::Caps {
                    max_module_bytes: 1 << 30,
                    max_memory_bytes: 1 << 30,
                },
            )
            .expect("load");
        let load = t2.elapsed();
        eprintln!(
            "blocklist/{label}: {} rules; read+flatten {:.0} ms, compile {:.0} ms, wasmtime load {:.0} ms; \
             module {:.1} MiB, memory {:.1} MiB, {} shapes",
            set.rules.len(),
            parse.as_secs_f64() * 1e3,
            compile.as_secs_f64() * 1e3,
            load.as_secs_f64() * 1e3,
            compiled.wasm.len() as f64 / 1048576.0,
            compiled.stats.memory_bytes as f64 / 1048576.0,
            compiled.stats.shapes
        );
        let mut chain = PolicyChain::instantiate(1, &[module]).expect("instantiate");
        let batch = blocklist_batch(&members);
        check_against_reference(&set, &mut chain, &batch, &format!("blocklist/{label}"));
        let user = set
            .rules
            .iter()
            .filter(|r| r.chain == rules_wasm::model::Chain::User)
            .count() as u32;
        let dropped = batch
            .iter()
            .filter(|r| reference::evaluate(&set, r).rule < user)
            .count();
        assert!(
            dropped >= MAX_BATCH / 2 - 4,
            "blocklist/{label}: {dropped} records hit the set"
        );
        let mut verdicts = vec![VerdictRecord::CONTINUE; MAX_BATCH];
        group.bench_function(label, |b| {
            b.iter(|| chain.decide(black_box(&batch), &mut verdicts))
        });
    }
    group.finish();
}

/// `n` DOCKER-USER lines using every match and target the reader supports, in a rotation,
/// with a user chain (RETURN inside) every 500 lines; and the host routes that give
/// `-i eth0` its meaning.
fn every_match_text(n: usize) -> String {
    let mut text = String::from("create small hash:ip family inet\nadd small 203.0.113.7\n");
    let mut s = 0xfeed_u64;
    let chains = n / 500;
    for k in 0..chains {
        text.push_str(&format!("-N ch{k}\n-A ch{k} -s 10.{k}.0.0/16 -j RETURN\n"));
        text.push_str(&format!("-A ch{k} -p tcp --dport {} -j DROP\n", 1000 + k));
    }
    for i in 0..n {
        let a = lcg(&mut s);
        let ip = Ipv4Addr::new(
            11 + (a >> 24) as u8 % 100,
            (a >> 16) as u8,
            (a >> 8) as u8,
            a as u8,
        );
        let d = container_ip((i % usize::from(CONTAINERS)) as u8);
        let p = 1024 + (a % 60_000) as u16;
        let line = match i % 10 {
            0 => format!(
                "-A DOCKER-USER -s {ip} -p tcp -m multiport --dports {p},{},{}:{} -j DROP",
                p + 1,
                p + 10,
                p + 20
            ),
            1 => format!(
                "-A DOCKER-USER -m iprange --src-range {ip}-{} -p udp --dport {p} -j REJECT",
                Ipv4Addr::from(u32::from(ip) + 3)
            ),
            2 => format!("-A DOCKER-USER -s {ip} -p icmp --icmp-type echo-request -j DROP"),
            3 => format!(
                "-A DOCKER-USER -s {ip} -d {d} -p tcp --syn --dport {p} -m comment --comment \"rule {i}\" -j ACCEPT"
            ),
            4 => format!(
                "-A DOCKER-USER -s {ip}/24 -p tcp --tcp-flags SYN,ACK SYN --dport {p} -j REJECT --reject-with tcp-reset"
            ),
            5 => format!(
                "-A DOCKER-USER -s {ip} -m conntrack --ctstate INVALID,NEW -p tcp --dport {p} -j DROP"
            ),
            6 => format!("-A DOCKER-USER -i eth0 -s {ip} -p tcp --dport {p} -j DROP"),
            7 => format!(
                "-A DOCKER-USER -s {ip} -m state --state NEW -p udp -m udp --sport 53 --dport {p} -j ACCEPT"
            ),
            8 if i % 500 == 8 && i / 500 < chains => {
                format!("-A DOCKER-USER -d {d} -j ch{}", i / 500)
            }
            8 => format!(
                "-A DOCKER-USER -s {ip} -d {d} -p tcp --dport {p} -j REJECT --reject-with icmp-admin-prohibited"
            ),
            _ => format!(
                "-A DOCKER-USER -m set --match-set small src -s {ip}/8 -p tcp --dport {p} -j DROP"
            ),
        };
        text.push_str(&line);
        text.push('\n');
    }
    text
}

fn every_match_policy(n: usize) -> (RuleSet, Vec<(String, Vec<rules_wasm::model::Cidr>)>) {
    let net = bench_network();
    let all = rules_wasm::model::Cidr::new(v4(0, 0, 0, 0), 0).expect("cidr");
    let bridge = rules_wasm::model::Cidr::new(v4(172, 17, 0, 0), 16).expect("cidr");
    let routes = vec![(
        "eth0".to_string(),
        rules_wasm::algebra::complement_cidrs(&[bridge], all),
    )];
    let names = iptables::WithHostRoutes {
        inner: &net,
        routes: &routes,
        host_addrs: &[],
    };
    let parsed =
        iptables::parse_full(&every_match_text(n), None, &names).expect("every-match rules parse");
    (docker_ruleset(&net, parsed.rules, 1), routes)
}

/// Records that hit the rotation's rules and miss them, as a batch.
fn every_match_batch(set: &RuleSet) -> Vec<PacketRecord> {
    let mut s = 0xba7c_u64;
    let users: Vec<&rules_wasm::model::Rule> = set
        .rules
        .iter()
        .filter(|r| r.chain == rules_wasm::model::Chain::User)
        .collect();
    (0..MAX_BATCH)
        .map(|k| {
            let r = users[lcg(&mut s) as usize % users.len()];
            let src =
                r.m.src
                    .filter(|c| !c.negated)
                    .map_or([0u8; 16], |c| c.value.addr.to_be_bytes());
            let d = (k % usize::from(CONTAINERS)) as u8;
            let mut rec = record(
                rules_wasm::abi::bytes_addr(src),
                container_ip(d),
                r.m.proto.map_or(proto::TCP, |p| p.value),
                53,
                r.m.dport.map_or(80, |p| p.value.lo),
                GW_PORT,
                container_port(d),
            );
            if k % 3 == 0 {
                rec.dst_port = rec.dst_port.wrapping_add(7);
            }
            if rec.protocol == proto::ICMP {
                rec.icmp_type = 8;
                rec.src_port = 0;
                rec.dst_port = 0;
            }
            rec
        })
        .collect()
}

fn every_match(c: &mut Criterion) {
    let rt = runtime();
    let n = 10_000;
    let t0 = Instant::now();
    let (set, _) = every_match_policy(n);
    eprintln!(
        "every_match/{n}: {} flat rules, read+flatten {:.0} ms",
        set.rules.len(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    let compiled = compiler::compile(&set).expect("compile every-match set");
    eprintln!("every_match/{n}: {:?}", compiled.stats);
    let module = rt.load(&compiled.wasm, "every-match").expect("load");
    let mut chain = PolicyChain::instantiate(1, &[module]).expect("instantiate");
    let batch = every_match_batch(&set);
    check_against_reference(&set, &mut chain, &batch, "every_match");
    let mut group = c.benchmark_group("every_match");
    group.throughput(Throughput::Elements(MAX_BATCH as u64));
    let mut verdicts = vec![VerdictRecord::CONTINUE; MAX_BATCH];
    group.bench_function(format!("{n}"), |b| {
        b.iter(|| chain.decide(black_box(&batch), &mut verdicts))
    });
    group.finish();
    let mut compile = c.benchmark_group("compile");
    compile.sample_size(10);
    compile.bench_function(format!("every_match/{n}"), |b| {
        b.iter(|| {
            let compiled = compiler::compile(black_box(&set)).expect("compile");
            rt.load(&compiled.wasm, "rules").expect("load")
        })
    });
    compile.finish();
}

// ---------------------------------------------------------------------------------------
// Issue 13: one bridgewall serving many bridge networks.
// ---------------------------------------------------------------------------------------

/// Networks and containers per network of the many-networks case.
const NETS: usize = 50;
const PER_NET: usize = 20;

/// Network `k`: `net{k}` on `br-…{k}`, 172.(20+k).0.0/16 (and fd00:k::/64 for odd k),
/// gateway port 1 + 32k at .1, container `n{k}c{j}` at .(2+j) on port 2 + 32k + j. icc=false
/// on even k, `--internal` when k % 10 == 9, container 0 publishes 80/tcp (host port
/// 8000 + k), and on net0 c0 links to c1 (5432/tcp).
fn many_networks() -> HostNetworks {
    let networks = (0..NETS)
        .map(|k| {
            let b = 20 + k as u8;
            let v6 = k % 2 == 1;
            let gw = 1 + 32 * k as u16;
            let containers = (0..PER_NET)
                .map(|j| {
                    let mut ips = vec![v4(172, b, 0, 2 + j as u8)];
                    if v6 {
                        ips.push(IpAddr::from([
                            0xfd,
                            0,
                            0,
                            k as u8,
                            0,
                            0,
                            0,
                            0,
                            0,
                            0,
                            0,
                            0,
                            0,
                            0,
                            0,
                            2 + j as u8,
                        ]));
                    }
                    let mut c = ContainerInfo {
                        name: format!("n{k}c{j}"),
                        port: gw + 1 + j as u16,
                        ips,
                        mac: [2, 0x42, 0, b, 0, 2 + j as u8],
                        ..ContainerInfo::default()
                    };
                    if j == 0 {
                        c.published = vec![Published {
                            proto: proto::TCP,
                            container_port: 80,
                            host_port: 8000 + k as u16,
                        }];
                    }
                    if k == 0 && j == 0 {
                        c.links = vec![LinkSpec {
                            child: "n0c1".into(),
                            alias: "db".into(),
                        }];
                    }
                    if k == 0 && j == 1 {
                        c.exposed = vec![PortProto {
                            proto: proto::TCP,
                            port: 5432,
                        }];
                    }
                    c
                })
                .collect();
            let mut subnets =
                vec![rules_wasm::model::Cidr::new(v4(172, b, 0, 0), 16).expect("cidr")];
            let mut gateway_ips = vec![v4(172, b, 0, 1)];
            if v6 {
                let net6 = IpAddr::from([0xfd, 0, 0, k as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
                subnets.push(rules_wasm::model::Cidr::new(net6, 64).expect("cidr"));
                gateway_ips.push(IpAddr::from([
                    0xfd, 0, 0, k as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
                ]));
            }
            BridgeNetwork {
                name: format!("net{k}"),
                bridge: format!("br-{k:012x}"),
                internal: k % 10 == 9,
                subnets,
                icc: k % 2 == 1,
                gateway_port: gw,
                gateway_ips,
                containers,
            }
        })
        .collect();
    HostNetworks { networks }
}

fn net_gw(k: usize) -> u16 {
    1 + 32 * k as u16
}
fn net_port(k: usize, j: usize) -> u16 {
    net_gw(k) + 1 + j as u16
}
fn net_ip(k: usize, j: usize) -> IpAddr {
    v4(172, 20 + k as u8, 0, 2 + j as u8)
}
fn net_gw_ip(k: usize) -> IpAddr {
    v4(172, 20 + k as u8, 0, 1)
}

/// Which (network, container) user rule `i` protects: spread over the non-internal ones.
fn many_target(i: usize) -> (usize, usize) {
    let mut k = i % NETS;
    if k % 10 == 9 {
        k -= 1;
    }
    (k, (i / NETS) % PER_NET)
}

/// 1,000 user rules: 990 as in [`docker_policy`] (a unique outside source, a container,
/// a port), aimed at the many networks' containers, and 10 naming a network
/// (`-o netK -p tcp --dport 2222 -j REJECT`, 20 rules each).
fn many_policy() -> RuleSet {
    let nets = many_networks();
    let mut text = String::new();
    for i in 0..990 {
        let r = user_rule(i);
        let (k, j) = many_target(i);
        let p = if r.proto == proto::UDP { "udp" } else { "tcp" };
        let t = if i % 5 == 0 { "ACCEPT" } else { "DROP" };
        text.push_str(&format!(
            "-A DOCKER-USER -s {} -d {} -p {p} --dport {} -j {t}\n",
            r.src,
            net_ip(k, j),
            r.dport
        ));
    }
    for k in 0..10 {
        text.push_str(&format!(
            "-A DOCKER-USER -o net{} -p tcp --dport 2222 -j REJECT\n",
            k * 5
        ));
    }
    let user = iptables::parse(&text, &nets).expect("user rules parse");
    assert_eq!(user.len(), 990 + 10 * PER_NET);
    docker_ruleset(&nets, user, 1)
}

/// A batch over the many networks: 16 user-rule hits and 8 near misses, 8 isolation drops
/// leaving a network and 4 arriving on one, 4 published-port hits from outside, 4 containers
/// reaching another network's host address and 4 the host reaching containers from another
/// bridge's address, 8 container-to-container (icc true and false), 4 going out, 2 replies,
/// 2 internal networks' containers trying to leave.
fn many_batch() -> Vec<PacketRecord> {
    let outside = v4(192, 0, 2, 7);
    let mut v = Vec::with_capacity(MAX_BATCH);
    for q in 0..16 {
        let i = q * 989 / 15;
        let r = user_rule(i);
        let (k, j) = many_target(i);
        v.push(record(
            IpAddr::V4(r.src),
            net_ip(k, j),
            r.proto,
            40_000,
            r.dport,
            net_gw(k),
            net_port(k, j),
        ));
    }
    for q in 0..8 {
        let i = (q * 7919 + 13) % 990;
        let r = user_rule(i);
        let (k, j) = many_target(i);
        v.push(record(
            IpAddr::V4(r.src),
            net_ip(k, j),
            r.proto,
            40_000,
            r.dport.wrapping_add(50_000),
            net_gw(k),
            net_port(k, j),
        ));
    }
    for q in 0..8 {
        let (a, b) = (q * 6 % NETS, (q * 6 + 17) % NETS);
        let a = if a % 10 == 9 { a - 1 } else { a };
        v.push(record(
            net_ip(a, q),
            net_ip(b, q),
            proto::TCP,
            40_000,
            80,
            net_port(a, q),
            net_gw(a),
        ));
    }
    for q in 0..4 {
        let (a, b) = (q * 11 % NETS, (q * 11 + 3) % NETS);
        v.push(record(
            net_ip(b, q),
            net_ip(a, 0),
            proto::TCP,
            40_000,
            80,
            net_gw(a),
            net_port(a, 0),
        ));
    }
    for q in 0..4 {
        let k = q * 12;
        v.push(record(
            outside,
            net_ip(k, 0),
            proto::TCP,
            50_000,
            80,
            net_gw(k),
            net_port(k, 0),
        ));
    }
    for q in 0..4 {
        let (a, b) = (q * 10 + 2, q * 10 + 7);
        v.push(record(
            net_ip(a, 3),
            net_gw_ip(b),
            proto::UDP,
            40_000,
            53,
            net_port(a, 3),
            net_gw(a),
        ));
        v.push(record(
            net_gw_ip(b),
            net_ip(a, 4),
            proto::TCP,
            50_000,
            22,
            net_gw(a),
            net_port(a, 4),
        ));
    }
    for (q, k) in [0, 1, 10, 11, 20, 21, 30, 31].into_iter().enumerate() {
        v.push(record(
            net_ip(k, 1),
            net_ip(k, 2 + q),
            proto::TCP,
            40_000,
            9_000,
            net_port(k, 1),
            net_port(k, 2 + q),
        ));
    }
    for k in [0, 13, 26, 41] {
        v.push(record(
            net_ip(k, 5),
            outside,
            proto::UDP,
            40_000,
            53,
            net_port(k, 5),
            net_gw(k),
        ));
    }
    for q in 0..2 {
        let k = q * 20 + 4;
        let mut reply = record(
            outside,
            net_ip(k, 6),
            proto::TCP,
            443,
            40_000,
            net_gw(k),
            net_port(k, 6),
        );
        reply.flow_state = FlowState::Established;
        reply.tcp_flags = 0x10;
        v.push(reply);
    }
    for q in 0..2 {
        let k = q * 10 + 9;
        v.push(record(
            net_ip(k, 7),
            outside,
            proto::TCP,
            40_000,
            443,
            net_port(k, 7),
            net_gw(k),
        ));
    }
    assert_eq!(v.len(), MAX_BATCH);
    // Interleave as on the wire.
    let mut out = Vec::with_capacity(MAX_BATCH);
    for k in 0..16 {
        for q in 0..4 {
            out.push(v[q * 16 + k]);
        }
    }
    out
}

fn many_networks_bench(c: &mut Criterion) {
    let rt = runtime();
    let cases = [
        ("1x8_1k", docker_policy(1_000), mixed_batch(1_000)),
        ("50x20_1k", many_policy(), many_batch()),
    ];
    let mut group = c.benchmark_group("networks");
    group.throughput(Throughput::Elements(MAX_BATCH as u64));
    for (label, set, batch) in &cases {
        let t0 = Instant::now();
        let compiled = compiler::compile(set).expect("compile");
        let to_wasm = t0.elapsed();
        let t1 = Instant::now();
        let module = rt.load(&compiled.wasm, label).expect("load");
        let load = t1.elapsed();
        eprintln!(
            "networks/{label}: {} rules ({} user); compile {:.1} ms, wasmtime load {:.1} ms; {:?}",
            set.rules.len(),
            set.rules
                .iter()
                .filter(|r| r.chain == rules_wasm::model::Chain::User)
                .count(),
            to_wasm.as_secs_f64() * 1e3,
            load.as_secs_f64() * 1e3,
            compiled.stats
        );
        let mut chain = PolicyChain::instantiate(1, &[module]).expect("instantiate");
        check_against_reference(set, &mut chain, batch, &format!("networks/{label}"));
        let mut verdicts = vec![VerdictRecord::CONTINUE; MAX_BATCH];
        group.bench_function(*label, |b| {
            b.iter(|| chain.decide(black_box(batch.as_slice()), &mut verdicts))
        });
    }
    group.finish();
    // What the many-networks batch decides, by rule kind, so the batch is known to cover them.
    let (_, set, batch) = &cases[1];
    let mut kinds: Vec<String> = batch
        .iter()
        .map(|r| {
            let v = reference::evaluate(set, r);
            let origin = set.rule(v.rule).map_or("<default>", |r| r.origin.as_str());
            let kind: String = origin.split([':', '(']).next().unwrap_or("").into();
            format!("{:?} {kind}", v.action)
        })
        .collect();
    kinds.sort();
    kinds.dedup();
    eprintln!("networks/50x20_1k batch decides: {kinds:?}");

    let mut compile = c.benchmark_group("compile");
    compile.sample_size(10);
    for (label, set, _) in &cases {
        compile.bench_function(format!("networks/{label}/to_wasm"), |b| {
            b.iter(|| compiler::compile(black_box(set)).expect("compile"))
        });
        compile.bench_function(format!("networks/{label}/total"), |b| {
            b.iter(|| {
                let compiled = compiler::compile(black_box(set)).expect("compile");
                rt.load(&compiled.wasm, "rules").expect("load")
            })
        });
    }
    compile.finish();
}
