//! Differential test of chain flattening: random iptables programs (user chains, jumps,
//! RETURN, negated address ranges, port lists, states, TCP flags, ICMP types) are read as
//! text; the flat first-match rules, the compiled module and the chains walked as iptables
//! walks them must give the same verdict on every packet.
mod common;

use std::fmt::Write as _;

use common::{Host, Rng};
use rules_wasm::abi::{Action, FlowState, PacketRecord, RULE_NONE, addr_bytes, proto};
use rules_wasm::compiler::compile;
use rules_wasm::iptables::{NoNames, ParseErrorKind, UserRules};
use rules_wasm::model::{RuleSet, Target};
use rules_wasm::reference::evaluate;

const ADDRS: [&str; 6] = [
    "10.0.0.1",
    "10.0.0.2",
    "10.0.1.7",
    "192.168.1.1",
    "192.168.1.3",
    "203.0.113.9",
];
const PORTS: [u16; 6] = [22, 53, 80, 443, 8080, 40000];

fn option(rng: &mut Rng, kind: u64, out: &mut String, proto_set: &mut Option<&'static str>) {
    let bang = |rng: &mut Rng| if rng.chance(30) { "! " } else { "" };
    match kind {
        0 => {
            let a = rng.pick(&ADDRS);
            let len = *rng.pick(&[32u8, 24, 16, 8]);
            let _ = write!(out, " {}-s {a}/{len}", bang(rng));
        }
        1 => {
            let a = rng.pick(&ADDRS);
            let _ = write!(out, " {}-d {a}", bang(rng));
        }
        2 => {
            let _ = write!(
                out,
                " -m iprange {}--src-range 10.0.0.1-10.0.1.7",
                bang(rng)
            );
        }
        3 if proto_set.is_none() => {
            let p = *rng.pick(&["tcp", "udp"]);
            *proto_set = Some(p);
            let lo = *rng.pick(&PORTS);
            let n = *rng.pick(&[0u16, 0, 10, 1000]);
            let _ = write!(
                out,
                " -p {p} {}--dport {lo}:{}",
                bang(rng),
                lo.saturating_add(n)
            );
        }
        4 if proto_set.is_none() => {
            let p = *rng.pick(&["tcp", "udp"]);
            *proto_set = Some(p);
            let _ = write!(
                out,
                " -p {p} -m multiport {}--dports 22,80,8000:8080",
                bang(rng)
            );
        }
        5 => {
            let s = *rng.pick(&["NEW", "ESTABLISHED,RELATED", "INVALID", "NEW,INVALID"]);
            let _ = write!(out, " -m conntrack {}--ctstate {s}", bang(rng));
        }
        6 if proto_set.is_none() => {
            *proto_set = Some("tcp");
            let _ = write!(out, " -p tcp {}--syn", bang(rng));
        }
        7 if proto_set.is_none() => {
            *proto_set = Some("icmp");
            let t = *rng.pick(&["echo-request", "port-unreachable", "3", "echo-reply"]);
            let _ = write!(out, " -p icmp {}--icmp-type {t}", bang(rng));
        }
        9 => {
            let n = *rng.pick(&[0u32, 1, 9, 10]);
            let which = *rng.pick(&["above", "upto"]);
            let _ = write!(out, " -m connlimit {}--connlimit-{which} {n}", bang(rng));
        }
        _ => {
            let port = rng.below(4);
            let _ = write!(out, " {}-i {port}", bang(rng));
        }
    }
}

/// A random program: chains c0..cN (a chain jumps only to later ones, so no loops), then
/// DOCKER-USER rules.
fn program(rng: &mut Rng) -> String {
    let n_chains = rng.below(4) as usize;
    let mut text = String::new();
    for c in 0..n_chains {
        let _ = writeln!(text, "-N c{c}");
    }
    let chains: Vec<String> = std::iter::once("DOCKER-USER".to_string())
        .chain((0..n_chains).map(|c| format!("c{c}")))
        .collect();
    for (ci, chain) in chains.iter().enumerate() {
        for _ in 0..rng.below(7) {
            let mut line = format!("-A {chain}");
            let mut proto = None;
            let mut kinds: Vec<u64> = Vec::new();
            for _ in 0..rng.below(3) {
                let k = rng.below(10);
                if !kinds.contains(&k) {
                    kinds.push(k);
                    option(rng, k, &mut line, &mut proto);
                }
            }
            let later: Vec<&String> = chains
                .iter()
                .skip(ci.max(1) + usize::from(ci > 0))
                .collect();
            let target = match rng.below(9) {
                7 => format!("LOG --log-prefix \"L{ci}.{}: \"", rng.below(1000)),
                8 => "ACCEPT -m limit --limit 10/s".to_string(),
                0 => "ACCEPT".to_string(),
                1 => "DROP".to_string(),
                2 if proto == Some("tcp") => "REJECT --reject-with tcp-reset".to_string(),
                2 => "REJECT".to_string(),
                3 | 4 => "RETURN".to_string(),
                _ if !later.is_empty() => (*rng.pick(&later)).clone(),
                _ => "DROP".to_string(),
            };
            let _ = writeln!(text, "{line} -j {target}");
        }
    }
    text
}

fn packet(rng: &mut Rng) -> PacketRecord {
    let protocol = *rng.pick(&[proto::TCP, proto::UDP, proto::ICMP]);
    let ports = protocol != proto::ICMP;
    PacketRecord {
        src: addr_bytes(rng.pick(&ADDRS).parse().unwrap()),
        dst: addr_bytes(rng.pick(&ADDRS).parse().unwrap()),
        src_port: if ports { *rng.pick(&PORTS) } else { 0 },
        dst_port: if ports {
            *rng.pick(&PORTS) + rng.below(3) as u16
        } else {
            0
        },
        ip_version: if rng.chance(10) { 6 } else { 4 },
        protocol,
        tcp_flags: if protocol == proto::TCP {
            *rng.pick(&[0x02, 0x12, 0x10, 0x04])
        } else {
            0
        },
        flow_state: *rng.pick(&[
            FlowState::New,
            FlowState::Established,
            FlowState::Related,
            FlowState::Invalid,
        ]),
        in_port: rng.below(4) as u16,
        out_port: rng.below(4) as u16,
        icmp_type: if ports { 0 } else { *rng.pick(&[0u8, 3, 8]) },
        icmp_code: if ports { 0 } else { *rng.pick(&[0u8, 3]) },
        src_conns: *rng.pick(&[0u16, 1, 9, 10, 20, 65535]),
    }
}

#[test]
fn flattened_chains_equal_the_chains_walked() {
    let engine = wasmtime::Engine::default();
    let mut compared = 0usize;
    let mut decided = 0usize;
    let mut refused = 0usize;
    let mut logged = 0usize;
    for seed in 0..300u64 {
        let mut rng = Rng(40_000 + seed);
        let text = program(&mut rng);
        let mut u = UserRules::default();
        if let Err(e) = u.apply(&text, &NoNames) {
            // Two different negated interfaces meeting through a RETURN is the one
            // combination refused (with an error naming the rule) rather than spelled out.
            assert!(
                matches!(e.kind, ParseErrorKind::Unrepresentable(ref u) if u.field == "-i"),
                "seed {seed}: {e}\n{text}"
            );
            refused += 1;
            continue;
        }
        let flat = u.rules().unwrap();
        let limits: Vec<(Target, RuleSet)> = flat
            .limits
            .iter()
            .map(|l| (l.target, RuleSet::new(l.rules.clone(), 1, Action::Continue)))
            .collect();
        let set = RuleSet::new(flat.rules, 1, Action::Continue);
        let logs: Vec<(String, usize, RuleSet)> = flat
            .logs
            .into_iter()
            .map(|l| {
                (
                    l.origin,
                    l.limits_before,
                    RuleSet::new(l.rules, 1, Action::Continue),
                )
            })
            .collect();
        let mut log_hosts: Vec<Host> = logs
            .iter()
            .map(|(_, _, s)| Host::load(&engine, &compile(s).unwrap().wasm).unwrap())
            .collect();
        let mut host = Host::load(&engine, &compile(&set).unwrap().wasm).unwrap();
        let pkts: Vec<PacketRecord> = (0..256).map(|_| packet(&mut rng)).collect();
        let got = host.run(&pkts);
        for (p, g) in pkts.iter().zip(got) {
            let flat = evaluate(&set, p);
            assert_eq!(g, flat, "seed {seed}: compiled vs flat on {p:?}\n{text}");
            let first_limited = limits
                .iter()
                .position(|(_, ls)| evaluate(ls, p).action == Action::Accept);
            let limited = first_limited.map(|k| limits[k].0);
            let mut walked_logs = Vec::new();
            let walked = u.decide_logging(p, &mut walked_logs).map(|(t, _)| t);
            let mut flat_logs = Vec::new();
            for ((origin, before, ls), lh) in logs.iter().zip(&mut log_hosts) {
                let v = evaluate(ls, p);
                assert_eq!(
                    lh.run(&[*p])[0],
                    v,
                    "seed {seed}: compiled LOG module on {p:?}"
                );
                if v.action == Action::Accept && first_limited.is_none_or(|k| *before <= k) {
                    flat_logs.push(origin.as_str());
                }
            }
            assert_eq!(
                flat_logs, walked_logs,
                "seed {seed}: LOG rules reached on {p:?}\n{text}"
            );
            logged += flat_logs.len();
            // A rate-limited rule within its rate decides first (the walk has every token).
            let flat_target: Option<Target> = limited
                .or_else(|| (flat.rule != RULE_NONE).then(|| set.rules[flat.rule as usize].target));
            assert_eq!(
                flat_target, walked,
                "seed {seed}: flat vs walked on {p:?}\n{text}"
            );
            compared += 1;
            decided += usize::from(walked.is_some());
        }
    }
    assert!(refused < 15, "{refused} of 300 programs refused");
    assert!(logged > 1000, "too few LOG rules reached: {logged}");
    assert!(compared >= 70_000);
    assert!(decided > compared / 5, "too few packets decided: {decided}");
}
