//! Differential test: the compiled module and the reference interpreter must give the same
//! verdict (action and rule id) on every packet, over random rule sets of every shape the
//! model allows (negations, ranges, CIDRs of both families, all chains, ports, states) and
//! random packets biased to hit rules, from 1 rule to 100k rules.
mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::{Host, Rng};
use rules_wasm::abi::{Action, FlowState, PacketRecord, RejectWith, addr_bytes, proto};
use rules_wasm::compiler::{Classify, CompileOptions, compile, compile_with};
use rules_wasm::model::{
    Chain, Cidr, CountRange, IcmpType, Match, Neg, PortRange, Rule, RuleSet, StateSet, Target,
    TcpFlags,
};
use rules_wasm::reference::evaluate;

/// Small pools so random rules and packets collide often.
struct Pools {
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
    ports: Vec<u16>,
}

impl Pools {
    fn new(rng: &mut Rng, size: usize) -> Self {
        let v4 = (0..size)
            .map(|_| Ipv4Addr::from((0xac11_0000u32) | (rng.below(1 << 12) as u32)))
            .collect();
        let v6 = (0..size.div_ceil(4))
            .map(|_| {
                Ipv6Addr::new(
                    0xfd00,
                    0,
                    0,
                    0,
                    0,
                    0,
                    rng.below(16) as u16,
                    rng.below(256) as u16,
                )
            })
            .collect();
        let ports = (0..size.max(4))
            .map(|_| {
                if rng.chance(50) {
                    *rng.pick(&[53, 80, 443, 8080, 5432])
                } else {
                    rng.below(65536) as u16
                }
            })
            .collect();
        Self { v4, v6, ports }
    }

    fn addr(&self, rng: &mut Rng) -> IpAddr {
        if rng.chance(75) {
            IpAddr::V4(*rng.pick(&self.v4))
        } else {
            IpAddr::V6(*rng.pick(&self.v6))
        }
    }
}

fn neg<T>(v: T, rng: &mut Rng) -> Neg<T> {
    if rng.chance(15) {
        Neg::not(v)
    } else {
        Neg::is(v)
    }
}

fn random_cidr(rng: &mut Rng, p: &Pools) -> Cidr {
    let ip = p.addr(rng);
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match rng.below(4) {
        0 => max,
        1 => *rng.pick(&[8u8, 16, 20, 24]).min(&max),
        2 => rng.below(u64::from(max) + 1) as u8,
        _ => max,
    };
    Cidr::new(ip, len).unwrap()
}

fn random_range(rng: &mut Rng, p: &Pools) -> PortRange {
    let base = *rng.pick(&p.ports);
    match rng.below(5) {
        0 | 1 => PortRange::single(base),
        2 => PortRange {
            lo: base,
            hi: base.saturating_add(rng.below(12) as u16),
        },
        3 => PortRange {
            lo: base.saturating_sub(rng.below(5000) as u16),
            hi: base.saturating_add(rng.below(5000) as u16),
        },
        _ => PortRange {
            lo: 1024,
            hi: u16::MAX,
        },
    }
}

fn random_rule(rng: &mut Rng, p: &Pools, n_ports: u16) -> Rule {
    let mut m = Match::default();
    if rng.chance(55) {
        m.src = Some(neg(random_cidr(rng, p), rng));
    }
    if rng.chance(55) {
        m.dst = Some(neg(random_cidr(rng, p), rng));
    }
    if rng.chance(60) {
        let pr = *rng.pick(&[
            proto::TCP,
            proto::TCP,
            proto::UDP,
            proto::ICMP,
            proto::ICMPV6,
            132,
        ]);
        m.proto = Some(neg(pr, rng));
        if matches!(pr, proto::TCP | proto::UDP) {
            if rng.chance(25) {
                m.sport = Some(neg(random_range(rng, p), rng));
            }
            if rng.chance(60) {
                m.dport = Some(neg(random_range(rng, p), rng));
            }
        }
    }
    if rng.chance(30) {
        m.in_port = Some(neg(rng.below(u64::from(n_ports)) as u16, rng));
    }
    if rng.chance(30) {
        m.out_port = Some(neg(rng.below(u64::from(n_ports)) as u16, rng));
    }
    if rng.chance(8) {
        m.ip_version = Some(neg(*rng.pick(&[0u8, 4, 6]), rng));
    }
    if rng.chance(12) {
        m.state = Some(StateSet((rng.below(15) + 1) as u8));
    }
    if rng.chance(10) {
        let mask = rng.below(256) as u8;
        m.tcp_flags = Some(neg(
            TcpFlags {
                mask,
                set: rng.below(256) as u8 & mask,
            },
            rng,
        ));
    }
    if rng.chance(10) {
        m.icmp = Some(neg(
            IcmpType {
                ty: *rng.pick(&[0u8, 3, 8, 128, 129]),
                code: rng.chance(50).then(|| rng.below(4) as u8),
            },
            rng,
        ));
    }
    if rng.chance(8) {
        let n = *rng.pick(&[0u32, 1, 2, 10, 11, 65_536, u32::MAX]);
        let range = if rng.chance(50) {
            CountRange {
                lo: n.saturating_add(1),
                hi: u32::MAX,
            }
        } else {
            CountRange { lo: 0, hi: n }
        };
        m.conns = Some(neg(range, rng));
    }
    let chain = *rng.pick(&[Chain::User, Chain::Docker, Chain::Icc]);
    let target = *rng.pick(&[
        Target::Accept,
        Target::Drop,
        Target::Reject(RejectWith::PortUnreachable),
        Target::Reject(RejectWith::TcpReset),
        Target::Reject(RejectWith::AdminProhibited),
    ]);
    Rule::new(chain, m, target, "random")
}

/// A packet that satisfies the positive conditions of `r` (then maybe perturbed), so random
/// sets are exercised beyond their defaults.
fn packet_near(rng: &mut Rng, p: &Pools, r: &Rule, n_ports: u16) -> PacketRecord {
    let mut pkt = random_packet(rng, p, n_ports);
    let m = &r.m;
    let inside = |rng: &mut Rng, c: &Cidr| -> [u8; 16] {
        let host_bits = if c.len >= 128 { 0 } else { u128::MAX >> c.len };
        (c.addr | (u128::from(rng.next()) << 64 | u128::from(rng.next())) & host_bits).to_be_bytes()
    };
    if let Some(c) = m.src.filter(|c| !c.negated) {
        pkt.src = inside(rng, &c.value);
    }
    if let Some(c) = m.dst.filter(|c| !c.negated) {
        pkt.dst = inside(rng, &c.value);
    }
    if let Some(c) = m.proto.filter(|c| !c.negated) {
        pkt.protocol = c.value;
    }
    let in_range =
        |rng: &mut Rng, r: PortRange| r.lo + (rng.below(u64::from(r.hi - r.lo) + 1) as u16);
    if let Some(c) = m.sport.filter(|c| !c.negated) {
        pkt.src_port = in_range(rng, c.value);
    }
    if let Some(c) = m.dport.filter(|c| !c.negated) {
        pkt.dst_port = in_range(rng, c.value);
    }
    if let Some(c) = m.in_port.filter(|c| !c.negated) {
        pkt.in_port = c.value;
    }
    if let Some(c) = m.out_port.filter(|c| !c.negated) {
        pkt.out_port = c.value;
    }
    if let Some(c) = m.ip_version.filter(|c| !c.negated) {
        pkt.ip_version = c.value;
    }
    if let Some(c) = m.tcp_flags.filter(|c| !c.negated) {
        pkt.tcp_flags = (pkt.tcp_flags & !c.value.mask) | c.value.set;
    }
    if let Some(c) = m.icmp.filter(|c| !c.negated) {
        pkt.icmp_type = c.value.ty;
        if let Some(code) = c.value.code {
            pkt.icmp_code = code;
        }
    }
    // Perturb one field now and then, to land just outside the rule.
    match rng.below(10) {
        0 => pkt.dst_port = pkt.dst_port.wrapping_add(1),
        1 => pkt.src[15] ^= 1,
        2 => pkt.in_port = pkt.in_port.wrapping_add(1) % n_ports,
        _ => {}
    }
    pkt
}

fn random_packet(rng: &mut Rng, p: &Pools, n_ports: u16) -> PacketRecord {
    let v4 = rng.chance(75);
    let pick = |rng: &mut Rng| -> [u8; 16] {
        if v4 {
            addr_bytes(IpAddr::V4(*rng.pick(&p.v4)))
        } else {
            addr_bytes(IpAddr::V6(*rng.pick(&p.v6)))
        }
    };
    let protocol = *rng.pick(&[proto::TCP, proto::UDP, proto::ICMP, proto::ICMPV6, 0, 132]);
    let ports = matches!(protocol, proto::TCP | proto::UDP);
    PacketRecord {
        src: pick(rng),
        dst: pick(rng),
        src_port: if ports { *rng.pick(&p.ports) } else { 0 },
        dst_port: if ports { *rng.pick(&p.ports) } else { 0 },
        ip_version: if rng.chance(3) {
            0
        } else if v4 {
            4
        } else {
            6
        },
        protocol,
        tcp_flags: if protocol == proto::TCP {
            let any = rng.below(256) as u8;
            *rng.pick(&[0x02, 0x12, 0x10, 0x11, 0x04, any])
        } else {
            0
        },
        flow_state: *rng.pick(&[
            FlowState::New,
            FlowState::New,
            FlowState::Established,
            FlowState::Related,
            FlowState::Invalid,
        ]),
        in_port: rng.below(u64::from(n_ports)) as u16,
        out_port: rng.below(u64::from(n_ports)) as u16,
        icmp_type: if matches!(protocol, proto::ICMP | proto::ICMPV6) {
            *rng.pick(&[0u8, 3, 8, 128, 129, 11])
        } else {
            0
        },
        icmp_code: if matches!(protocol, proto::ICMP | proto::ICMPV6) {
            rng.below(4) as u8
        } else {
            0
        },
        src_conns: *rng.pick(&[0u16, 0, 1, 2, 9, 10, 11, 65535]),
    }
}

/// Generates one rule set of `n` rules, compiles it, and compares `packets` verdicts.
/// Returns the number of packets compared.
fn run_case(engine: &wasmtime::Engine, seed: u64, n: usize, packets: usize) -> usize {
    run_case_with(engine, seed, n, packets, &CompileOptions::default())
}

/// [`run_case`] with the compiler's options set, so every form of module it can emit
/// (inlined or interpreted programs, each level of classification) is checked.
fn run_case_with(
    engine: &wasmtime::Engine,
    seed: u64,
    n: usize,
    packets: usize,
    options: &CompileOptions,
) -> usize {
    let mut rng = Rng(seed);
    let pools = Pools::new(&mut rng, (n / 4).clamp(4, 4096));
    let n_ports = (rng.below(12) + 2) as u16;
    let rules: Vec<Rule> = (0..n)
        .map(|_| random_rule(&mut rng, &pools, n_ports))
        .collect();
    let default = *rng.pick(&[
        Action::Drop,
        Action::Accept,
        Action::Continue,
        Action::Reject,
    ]);
    let set = RuleSet::new(rules, seed, default);
    let compiled = compile_with(&set, options).unwrap();
    if options.classify < Classify::Full {
        assert!(compiled.stats.classify <= options.classify);
    }
    let mut host = Host::load(engine, &compiled.wasm).unwrap();
    assert!(host.imports.is_empty(), "compiled modules import nothing");
    let pkts: Vec<PacketRecord> = (0..packets)
        .map(|_| {
            if !set.rules.is_empty() && rng.chance(70) {
                let r = &set.rules[rng.below(set.rules.len() as u64) as usize];
                packet_near(&mut rng, &pools, r, n_ports)
            } else {
                random_packet(&mut rng, &pools, n_ports)
            }
        })
        .collect();
    let got = host.run(&pkts);
    for (pkt, g) in pkts.iter().zip(&got) {
        let want = evaluate(&set, pkt);
        assert_eq!(
            *g,
            want,
            "seed {seed}, {n} rules, {} shapes: packet {pkt:?}\nwanted rule: {:?}\ngot rule: {:?}",
            compiled.stats.shapes,
            set.rule(want.rule),
            set.rule(g.rule)
        );
    }
    pkts.len()
}

#[test]
fn compiled_equals_reference_small_sets() {
    let engine = wasmtime::Engine::default();
    let mut compared = 0;
    for seed in 0..400u64 {
        let n = (seed as usize * 7919) % 120;
        compared += run_case(&engine, 1000 + seed, n, 128);
    }
    assert!(compared >= 50_000);
}

/// Every compile form against the reference on the same random sets: interpreted programs,
/// classes without ports, no classes at all; and inlined programs on sets small enough to
/// inline (most random sets are not, their shapes being many).
#[test]
fn every_compile_form_equals_reference() {
    let engine = wasmtime::Engine::default();
    let forms = [
        (Classify::Full, false),
        (Classify::NoPorts, true),
        (Classify::NoPorts, false),
        (Classify::None, true),
        (Classify::None, false),
    ]
    .map(|(classify, inline_programs)| CompileOptions {
        classify,
        inline_programs,
        ..CompileOptions::default()
    });
    for seed in 0..60u64 {
        let n = (seed as usize * 7919) % 120;
        for options in &forms {
            run_case_with(&engine, 5000 + seed, n, 128, options);
        }
    }
    for (i, n) in [2500usize, 20_000].into_iter().enumerate() {
        for options in &forms {
            run_case_with(&engine, 90_000 + i as u64, n, 512, options);
        }
    }
}

/// Small sets with few shapes, so their programs are inlined: the straight-line form against
/// the reference, with the inline form checked to be the one under test.
#[test]
fn inlined_programs_equal_reference() {
    let engine = wasmtime::Engine::default();
    let mut inlined = 0;
    for seed in 0..200u64 {
        let n = 1 + (seed as usize * 31) % 12;
        let mut rng = Rng(7_000 + seed);
        let pools = Pools::new(&mut rng, 4);
        let n_ports = 4;
        let rules: Vec<Rule> = (0..n)
            .map(|_| random_rule(&mut rng, &pools, n_ports))
            .collect();
        let set = RuleSet::new(rules, seed, Action::Drop);
        // Every other set with all keys colliding: the inlined home-slot check then mostly
        // finds another key, and the lookup's probe chain and key comparison decide.
        let options = CompileOptions {
            colliding_hashes: seed % 2 == 1,
            ..CompileOptions::default()
        };
        let compiled = compile_with(&set, &options).unwrap();
        if !compiled.stats.inlined {
            continue;
        }
        inlined += 1;
        let mut host = Host::load(&engine, &compiled.wasm).unwrap();
        let pkts: Vec<PacketRecord> = (0..256)
            .map(|_| {
                let r = &set.rules[rng.below(set.rules.len() as u64) as usize];
                if rng.chance(70) {
                    packet_near(&mut rng, &pools, r, n_ports)
                } else {
                    random_packet(&mut rng, &pools, n_ports)
                }
            })
            .collect();
        for (pkt, g) in pkts.iter().zip(host.run(&pkts)) {
            assert_eq!(g, evaluate(&set, pkt), "seed {seed}: {pkt:?}");
        }
    }
    assert!(inlined >= 150, "only {inlined} of 200 sets were inlined");
}

/// Random sets with every key of a shape colliding in the hash, interpreted and inlined:
/// only the probe chains and the key comparison can tell keys apart.
#[test]
fn colliding_hashes_equal_reference() {
    let engine = wasmtime::Engine::default();
    for seed in 0..80u64 {
        let n = (seed as usize * 7919) % 300;
        for inline_programs in [false, true] {
            let options = CompileOptions {
                inline_programs,
                colliding_hashes: true,
                ..CompileOptions::default()
            };
            run_case_with(&engine, 31_000 + seed, n, 256, &options);
        }
    }
}

#[test]
fn compiled_equals_reference_medium_sets() {
    let engine = wasmtime::Engine::default();
    for (i, n) in [500usize, 1000, 2500, 5000, 10_000].into_iter().enumerate() {
        run_case(&engine, 50_000 + i as u64, n, 1024);
    }
}

#[test]
fn compiled_equals_reference_100k_rules() {
    let engine = wasmtime::Engine::default();
    run_case(&engine, 777_001, 100_000, 512);
    run_case(&engine, 777_002, 100_000, 256);
}

#[test]
fn empty_rule_set_gives_the_default() {
    let engine = wasmtime::Engine::default();
    let set = RuleSet::new(vec![], 3, Action::Reject);
    let mut host = Host::load(&engine, &compile(&set).unwrap().wasm).unwrap();
    let v = host.run(&[PacketRecord::default()]);
    assert_eq!(
        v[0],
        rules_wasm::abi::VerdictRecord::new(Action::Reject, rules_wasm::abi::RULE_NONE)
    );
}

#[test]
fn compiled_docker_policy_equals_reference() {
    use rules_wasm::docker::{
        BridgeNetwork, ContainerInfo, HostNetworks, LinkSpec, PortProto, Published, docker_ruleset,
    };
    use rules_wasm::iptables;
    let ip = |d: u8| IpAddr::V4(Ipv4Addr::new(172, 17, 0, d));
    let c = |name: &str, port: u16, d: u8| ContainerInfo {
        name: name.into(),
        port,
        ips: vec![ip(d)],
        ..Default::default()
    };
    let mut web = c("web", 2, 2);
    web.published = vec![Published {
        proto: proto::TCP,
        container_port: 80,
        host_port: 8080,
    }];
    web.links = vec![LinkSpec {
        child: "db".into(),
        alias: "database".into(),
    }];
    let mut db = c("db", 3, 3);
    db.exposed = vec![PortProto {
        proto: proto::TCP,
        port: 5432,
    }];
    let net = HostNetworks::from(BridgeNetwork {
        icc: false,
        gateway_port: 1,
        gateway_ips: vec![ip(1)],
        containers: vec![web, db, c("other", 4, 4)],
        ..Default::default()
    });
    let user = iptables::parse(
        "-I -s 172.16.80.47 -d web -p tcp --dport 80 -j DROP\n-A -s other -j REJECT",
        &net,
    )
    .unwrap();
    let set = docker_ruleset(&net, user, 9);
    let engine = wasmtime::Engine::default();
    let mut host = Host::load(&engine, &compile(&set).unwrap().wasm).unwrap();
    let mut rng = Rng(42);
    let addrs: Vec<[u8; 16]> = [1u8, 2, 3, 4, 9]
        .iter()
        .map(|d| addr_bytes(ip(*d)))
        .chain([addr_bytes("172.16.80.47".parse().unwrap())])
        .collect();
    let pkts: Vec<PacketRecord> = (0..4096)
        .map(|_| PacketRecord {
            src: *rng.pick(&addrs),
            dst: *rng.pick(&addrs),
            src_port: *rng.pick(&[80, 5432, 40000]),
            dst_port: *rng.pick(&[80, 5432, 22]),
            ip_version: *rng.pick(&[4, 4, 4, 0]),
            protocol: *rng.pick(&[proto::TCP, proto::UDP]),
            flow_state: *rng.pick(&[FlowState::New, FlowState::Established]),
            in_port: rng.below(5) as u16,
            out_port: rng.below(5) as u16,
            ..Default::default()
        })
        .collect();
    let got = host.run(&pkts);
    for (p, g) in pkts.iter().zip(got) {
        assert_eq!(g, evaluate(&set, p), "{p:?}");
    }
}
