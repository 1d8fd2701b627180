//! Target `iptables_parse`: the iptables-syntax rule parser (`rules_wasm::iptables`) on rule
//! text and `ipset save` text, with a resolver that knows a few containers, interfaces and a
//! published port (literal addresses and port ids work as with `NoNames`).
//!
//! The input is the rules text, then optionally a NUL byte and the `ipset save` text (both
//! read as UTF-8, invalid bytes replaced).
//!
//! Properties, beyond "never panics" (errors and warnings are formatted too):
//! - `parse_full` and `UserRules::apply` + `rules` give the same flat rules;
//! - applying text that fails leaves earlier rules exactly as they were;
//! - on packets made from the rules' own addresses, ports and flags, the flat first-match
//!   rules (with their LOG and rate-limit rule sets) decide what the chains walked as
//!   iptables walks them decide, and reach the same LOG rules.
use std::net::IpAddr;

use rules_wasm::abi::{Action, FlowState, PacketRecord, RULE_NONE, proto};
use rules_wasm::iptables::{self, Names, Parsed, UserRules};
use rules_wasm::model::{Cidr, Rule, RuleSet, Target};
use rules_wasm::reference::evaluate;

use crate::Rng;

/// A resolver with two containers (`web`, `db`), the gateway `docker0`, host interfaces
/// `eth0`/`eth1`, a host address and one published port.
#[derive(Clone, Copy, Debug, Default)]
pub struct FuzzNames;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or(IpAddr::from([0u8; 4]))
}

fn cidr(s: &str, len: u8) -> Vec<Cidr> {
    Cidr::new(ip(s), len).into_iter().collect()
}

impl Names for FuzzNames {
    fn addrs(&self, name: &str) -> Option<Vec<IpAddr>> {
        match name {
            "web" => Some(vec![ip("172.17.0.2"), ip("fd00::2")]),
            "db" => Some(vec![ip("172.17.0.3")]),
            "docker0" => Some(vec![ip("172.17.0.1")]),
            _ => None,
        }
    }
    fn port(&self, name: &str) -> Option<u16> {
        match name {
            "docker0" => Some(1),
            "web" => Some(2),
            "db" => Some(3),
            _ => None,
        }
    }
    fn host_routes(&self, ifname: &str) -> Option<Vec<Cidr>> {
        match ifname {
            "eth0" => Some([cidr("0.0.0.0", 0), cidr("2001:db8::", 32)].concat()),
            "eth1" => Some(cidr("10.9.0.0", 16)),
            _ => None,
        }
    }
    fn host_addrs(&self) -> Vec<IpAddr> {
        vec![ip("192.0.2.10")]
    }
    fn published(&self) -> Vec<(u8, u16, IpAddr, u16)> {
        vec![(proto::TCP, 8080, ip("172.17.0.2"), 80)]
    }
    fn port_of_mac(&self, mac: [u8; 6]) -> Option<u16> {
        (mac == [0x02, 0x42, 0xac, 0x11, 0x00, 0x02]).then_some(2)
    }
}

/// A program applied before the input in the atomicity check.
const BASE: &str =
    "-N base\n-A base -s 10.0.0.1 -j DROP\n-A DOCKER-USER -p tcp --dport 22 -j base\n";

/// Flat rule sets larger than this are not walked packet by packet (the reference is linear).
const MAX_COMPARED_RULES: usize = 5_000;

/// Runs one input.
pub fn run(data: &[u8]) {
    let (text, sets) = crate::split_nul(data);
    let text = String::from_utf8_lossy(text);
    let sets = sets.map(String::from_utf8_lossy);
    let names = FuzzNames;
    for line in text.lines() {
        let _ = iptables::words(line);
    }
    let parsed = match iptables::parse_full(&text, sets.as_deref(), &names) {
        Ok(p) => p,
        Err(e) => {
            let _ = e.to_string();
            atomic(&text, &names);
            return;
        }
    };
    assert_eq!(parsed.rules.len(), parsed.lines.len());
    for w in &parsed.warnings {
        let _ = w.to_string();
    }
    for r in &parsed.rules {
        let _ = (r.m.to_string(), r.target.to_string());
    }
    let mut u = UserRules::default();
    if let Some(s) = sets.as_deref() {
        u.read_ipsets(s).expect("ipsets parse_full accepted");
    }
    u.apply(&text, &names).expect("text parse_full accepted");
    let flat = u.rules().expect("rules of an applied text");
    assert_eq!(
        flat.rules, parsed.rules,
        "parse_full and UserRules disagree"
    );
    if parsed.rules.len() <= MAX_COMPARED_RULES {
        flat_equals_walk(data, &u, &parsed);
    }
}

/// A failing text leaves the rules as they were.
fn atomic(text: &str, names: &FuzzNames) {
    let mut u = UserRules::default();
    u.apply(BASE, names).expect("the base program parses");
    let before = u.rules().expect("base rules");
    if u.apply(text, names).is_err() {
        assert_eq!(u.rules().expect("rules after a failed apply"), before);
    }
}

/// Values the rules test, so packets hit and just miss them.
#[derive(Default)]
struct Pools {
    addrs: Vec<[u8; 16]>,
    ports: Vec<u16>,
    protos: Vec<u8>,
    ifaces: Vec<u16>,
    flags: Vec<u8>,
    icmp: Vec<(u8, u8)>,
    conns: Vec<u16>,
}

impl Pools {
    fn of(rules: &[&Rule]) -> Self {
        let mut p = Pools {
            addrs: vec![[0; 16], addr4([172, 17, 0, 2]), addr4([10, 0, 0, 1])],
            ports: vec![0, 22, 80],
            protos: vec![proto::TCP, proto::UDP, proto::ICMP, proto::ICMPV6, 0],
            ifaces: vec![0, 1, 2, 3, 0xffff],
            flags: vec![0, 0x02, 0x12, 0x10],
            icmp: vec![(0, 0), (8, 0), (3, 3)],
            conns: vec![0, 1, u16::MAX],
        };
        for r in rules {
            let m = &r.m;
            for c in [m.src, m.dst].into_iter().flatten() {
                let c = c.value;
                let host = if c.len >= 128 { 0 } else { u128::MAX >> c.len };
                let last = c.addr | host;
                for a in [
                    c.addr,
                    c.addr ^ 1,
                    last,
                    last.wrapping_add(1),
                    c.addr.wrapping_sub(1),
                ] {
                    p.addrs.push(a.to_be_bytes());
                }
            }
            for r in [m.sport, m.dport].into_iter().flatten() {
                let r = r.value;
                p.ports
                    .extend([r.lo, r.hi, r.lo.wrapping_sub(1), r.hi.wrapping_add(1)]);
            }
            if let Some(x) = m.proto {
                p.protos.push(x.value);
            }
            for x in [m.in_port, m.out_port].into_iter().flatten() {
                p.ifaces.push(x.value);
            }
            if let Some(f) = m.tcp_flags {
                p.flags
                    .extend([f.value.set, f.value.set ^ f.value.mask, f.value.mask]);
            }
            if let Some(t) = m.icmp {
                let code = t.value.code.unwrap_or(0);
                p.icmp.extend([(t.value.ty, code), (t.value.ty, code ^ 1)]);
            }
            if let Some(c) = m.conns {
                let c = c.value;
                for n in [c.lo, c.hi] {
                    let n = u16::try_from(n).unwrap_or(u16::MAX);
                    p.conns
                        .extend([n.saturating_sub(1), n, n.saturating_sub(2)]);
                }
            }
        }
        p
    }

    fn packet(&self, rng: &mut Rng) -> PacketRecord {
        let src = rng.pick(&self.addrs);
        let v4 = src[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
        let protocol = rng.pick(&self.protos);
        let (icmp_type, icmp_code) = rng.pick(&self.icmp);
        PacketRecord {
            src,
            dst: rng.pick(&self.addrs),
            src_port: rng.pick(&self.ports),
            dst_port: rng.pick(&self.ports),
            ip_version: match rng.below(10) {
                0 => 0,
                1 => rng.pick(&[4, 6]),
                _ if v4 => 4,
                _ => 6,
            },
            protocol,
            tcp_flags: rng.pick(&self.flags),
            flow_state: rng.pick(&[
                FlowState::New,
                FlowState::Established,
                FlowState::Related,
                FlowState::Invalid,
            ]),
            in_port: rng.pick(&self.ifaces),
            out_port: rng.pick(&self.ifaces),
            icmp_type,
            icmp_code,
            src_conns: rng.pick(&self.conns),
        }
    }
}

fn addr4(b: [u8; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[10] = 0xff;
    a[11] = 0xff;
    a[12..].copy_from_slice(&b);
    a
}

/// The check of `rules-wasm/tests/chains_differential.rs`, on whatever the fuzzer wrote.
fn flat_equals_walk(data: &[u8], u: &UserRules, parsed: &Parsed) {
    let set = RuleSet::new(parsed.rules.clone(), 1, Action::Continue);
    let limits: Vec<(Target, RuleSet)> = parsed
        .limits
        .iter()
        .map(|l| (l.target, RuleSet::new(l.rules.clone(), 1, Action::Continue)))
        .collect();
    let logs: Vec<(&str, usize, RuleSet)> = parsed
        .logs
        .iter()
        .map(|l| {
            (
                l.origin.as_str(),
                l.limits_before,
                RuleSet::new(l.rules.clone(), 1, Action::Continue),
            )
        })
        .collect();
    let all: Vec<&Rule> = set
        .rules
        .iter()
        .chain(limits.iter().flat_map(|(_, s)| &s.rules))
        .collect();
    let pools = Pools::of(&all);
    let mut rng = Rng::from_bytes(data);
    for _ in 0..32 {
        let p = pools.packet(&mut rng);
        let flat = evaluate(&set, &p);
        let first_limited = limits
            .iter()
            .position(|(_, ls)| evaluate(ls, &p).action == Action::Accept);
        let mut walked_logs = Vec::new();
        let walked = u.decide_logging(&p, &mut walked_logs).map(|(t, _)| t);
        let flat_target = first_limited
            .map(|k| limits[k].0)
            .or_else(|| (flat.rule != RULE_NONE).then(|| set.rules[flat.rule as usize].target));
        assert_eq!(flat_target, walked, "flat rules vs chains walked on {p:?}");
        let flat_logs: Vec<&str> = logs
            .iter()
            .filter(|(_, before, ls)| {
                evaluate(ls, &p).action == Action::Accept
                    && first_limited.is_none_or(|k| *before <= k)
            })
            .map(|(origin, _, _)| *origin)
            .collect();
        assert_eq!(flat_logs, walked_logs, "LOG rules reached on {p:?}");
    }
}
