//! Target `policy_differential`: a rule set of the rule model and packets, built with
//! `arbitrary` from small pools of addresses and ports (so rules and packets collide), are
//! compiled (`rules_wasm::compiler::compile_with`, every option), loaded by the dataplane's
//! Wasm host (`WasmRuntime::load_with_caps`, as the controller loads compiled policies) and
//! run on the packets; every verdict must equal `rules_wasm::reference::evaluate`'s.
//!
//! What `rules-wasm/tests/differential.rs` does with a seeded generator, steered by coverage
//! instead: rule shapes, negations, port ranges, TCP flag conditions whose set is not inside
//! their mask (which `--tcp-flags SYN ACK` writes), empty state sets (which a rate-limited
//! rule's disabled copy and `! --ctstate` of every state write), connection-count ranges.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use arbitrary::{Result, Unstructured};
use dataplane::wasm::instance::BatchOutcome;
use dataplane::wasm::{Caps, WasmConfig, WasmRuntime};
use rules_wasm::abi::{
    Action, FlowState, PORT_FLOOD, PacketRecord, RejectWith, VerdictRecord, addr_bytes, proto,
};
use rules_wasm::compiler::{Classify, CompileOptions, compile_with};
use rules_wasm::model::{
    Chain, Cidr, CountRange, IcmpType, Match, Neg, PortRange, Rule, RuleSet, StateSet, Target,
    TcpFlags,
};
use rules_wasm::reference::evaluate;

/// The host compiled policies are loaded into: the dataplane's defaults.
fn runtime() -> &'static WasmRuntime {
    static RT: OnceLock<WasmRuntime> = OnceLock::new();
    RT.get_or_init(|| WasmRuntime::new(WasmConfig::default()).expect("Wasm runtime starts"))
}

/// Caps as generous as the controller's for its own compiled policies.
const CAPS: Caps = Caps {
    max_module_bytes: 512 << 20,
    max_memory_bytes: 1 << 30,
};

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(case) = Case::generate(&mut u) else {
        return;
    };
    check(&case);
}

/// One generated case: a rule set, compile options and packets.
#[derive(Debug)]
pub struct Case {
    /// The rule set.
    pub set: RuleSet,
    /// How it is compiled.
    pub options: CompileOptions,
    /// The packets judged.
    pub packets: Vec<PacketRecord>,
}

/// Compiles and runs `case`, panicking on the first verdict that differs from the reference.
pub fn check(case: &Case) {
    let compiled = compile_with(&case.set, &case.options).expect("a small rule set compiles");
    let module = runtime()
        .load_with_caps(&compiled.wasm, "fuzz-policy", CAPS)
        .expect("a compiled policy loads");
    let mut instance = module
        .instantiate()
        .expect("a compiled policy instantiates");
    let mut got = vec![VerdictRecord::new(Action::Continue, 0); case.packets.len()];
    let outcome = instance.evaluate(&case.packets, &mut got);
    assert_eq!(outcome, BatchOutcome::Decided, "the compiled policy failed");
    for (p, g) in case.packets.iter().zip(&got) {
        let want = evaluate(&case.set, p);
        assert_eq!(
            *g,
            want,
            "compiled vs reference on {p:?}\noptions {:?}, stats {:?}\nwanted rule {:?}\ngot rule {:?}",
            case.options,
            compiled.stats,
            case.set.rule(want.rule),
            case.set.rule(g.rule)
        );
    }
}

/// Few values, so that rules and packets meet.
struct Pools {
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
    ports: Vec<u16>,
    n_ports: u16,
}

impl Pools {
    fn generate(u: &mut Unstructured<'_>) -> Result<Self> {
        let mut v4 = Vec::new();
        for _ in 0..u.int_in_range(1..=4)? {
            let host: u16 = u.arbitrary()?;
            v4.push(Ipv4Addr::from(0x0a00_0000 | u32::from(host & 0x03ff)));
        }
        let mut v6 = Vec::new();
        for _ in 0..u.int_in_range(1..=2)? {
            v6.push(Ipv6Addr::new(
                0xfd00,
                0,
                0,
                0,
                0,
                0,
                0,
                u.int_in_range(0..=15)?,
            ));
        }
        let mut ports = Vec::new();
        for _ in 0..u.int_in_range(1..=4)? {
            ports.push(if u.arbitrary()? {
                *u.choose(&[0u16, 1, 22, 53, 80, 443, 1023, 1024, 8080, 65535])?
            } else {
                u.arbitrary()?
            });
        }
        Ok(Self {
            v4,
            v6,
            ports,
            n_ports: u.int_in_range(2..=6)?,
        })
    }

    fn addr(&self, u: &mut Unstructured<'_>) -> Result<IpAddr> {
        Ok(if u.ratio(3, 4)? {
            IpAddr::V4(*u.choose(&self.v4)?)
        } else {
            IpAddr::V6(*u.choose(&self.v6)?)
        })
    }

    fn port(&self, u: &mut Unstructured<'_>) -> Result<u16> {
        Ok(*u.choose(&self.ports)?)
    }

    fn iface(&self, u: &mut Unstructured<'_>) -> Result<u16> {
        Ok(if u.ratio(1, 10)? {
            PORT_FLOOD
        } else {
            u.int_in_range(0..=self.n_ports - 1)?
        })
    }
}

fn neg<T>(u: &mut Unstructured<'_>, v: T) -> Result<Neg<T>> {
    Ok(if u.ratio(1, 5)? {
        Neg::not(v)
    } else {
        Neg::is(v)
    })
}

fn maybe<T>(
    u: &mut Unstructured<'_>,
    percent: u8,
    f: impl FnOnce(&mut Unstructured<'_>) -> Result<T>,
) -> Result<Option<T>> {
    if u.int_in_range(0..=99u8)? < percent {
        f(u).map(Some)
    } else {
        Ok(None)
    }
}

fn cidr(u: &mut Unstructured<'_>, p: &Pools) -> Result<Cidr> {
    let ip = p.addr(u)?;
    let max = if ip.is_ipv4() { 32u8 } else { 128 };
    let len = match u.int_in_range(0..=3)? {
        0 => max,
        1 => (*u.choose(&[0u8, 8, 16, 24, 30, 31])?).min(max),
        _ => u.int_in_range(0..=max)?,
    };
    Ok(Cidr::new(ip, len).unwrap_or(Cidr::host(ip)))
}

fn range(u: &mut Unstructured<'_>, p: &Pools) -> Result<PortRange> {
    let base = p.port(u)?;
    Ok(match u.int_in_range(0..=3)? {
        0 => PortRange::single(base),
        1 => PortRange {
            lo: base,
            hi: base.saturating_add(u.int_in_range(0..=16)?),
        },
        2 => {
            let other = p.port(u)?;
            PortRange {
                lo: base.min(other),
                hi: base.max(other),
            }
        }
        _ => {
            let (a, b): (u16, u16) = (u.arbitrary()?, u.arbitrary()?);
            PortRange {
                lo: a.min(b),
                hi: a.max(b),
            }
        }
    })
}

fn rule(u: &mut Unstructured<'_>, p: &Pools) -> Result<Rule> {
    let mut m = Match {
        src: maybe(u, 50, |u| {
            let c = cidr(u, p)?;
            neg(u, c)
        })?,
        dst: maybe(u, 50, |u| {
            let c = cidr(u, p)?;
            neg(u, c)
        })?,
        ..Match::default()
    };
    if u.ratio(3, 5)? {
        let pr = *u.choose(&[
            proto::TCP,
            proto::TCP,
            proto::UDP,
            proto::ICMP,
            proto::ICMPV6,
            0,
            132,
        ])?;
        m.proto = Some(neg(u, pr)?);
        if matches!(pr, proto::TCP | proto::UDP) || u.ratio(1, 10)? {
            m.sport = maybe(u, 25, |u| {
                let r = range(u, p)?;
                neg(u, r)
            })?;
            m.dport = maybe(u, 60, |u| {
                let r = range(u, p)?;
                neg(u, r)
            })?;
        }
    }
    m.in_port = maybe(u, 30, |u| {
        let i = p.iface(u)?;
        neg(u, i)
    })?;
    m.out_port = maybe(u, 30, |u| {
        let i = p.iface(u)?;
        neg(u, i)
    })?;
    m.ip_version = maybe(u, 8, |u| {
        let v = *u.choose(&[0u8, 4, 6])?;
        neg(u, v)
    })?;
    m.state = maybe(u, 15, |u| Ok(StateSet(u.int_in_range(0..=15)?)))?;
    m.tcp_flags = maybe(u, 12, |u| {
        let mask: u8 = u.arbitrary()?;
        let set: u8 = u.arbitrary()?;
        // Mostly a set inside the mask, as --syn writes; sometimes not (--tcp-flags SYN ACK).
        let set = if u.ratio(3, 4)? { set & mask } else { set };
        neg(u, TcpFlags { mask, set })
    })?;
    m.icmp = maybe(u, 12, |u| {
        let ty = if u.ratio(4, 5)? {
            *u.choose(&[0u8, 3, 8, 11, 128, 129])?
        } else {
            u.arbitrary()?
        };
        let code = maybe(u, 50, |u| u.int_in_range(0..=4))?;
        neg(u, IcmpType { ty, code })
    })?;
    m.conns = maybe(u, 8, |u| {
        let n = *u.choose(&[0u32, 1, 2, 10, 11, 65_535, 65_536, u32::MAX])?;
        let r = if u.arbitrary()? {
            CountRange {
                lo: n.saturating_add(1),
                hi: u32::MAX,
            }
        } else {
            CountRange { lo: 0, hi: n }
        };
        neg(u, r)
    })?;
    let chain = *u.choose(&[Chain::User, Chain::Docker, Chain::Icc])?;
    let target = match u.int_in_range(0..=2)? {
        0 => Target::Accept,
        1 => Target::Drop,
        _ => Target::Reject(*u.choose(&RejectWith::ALL)?),
    };
    Ok(Rule::new(chain, m, target, "fuzz"))
}

fn packet(u: &mut Unstructured<'_>, p: &Pools, rules: &[Rule]) -> Result<PacketRecord> {
    let src = p.addr(u)?;
    let dst = if u.ratio(9, 10)? {
        // Mostly the same family as the source, as real packets are.
        let other = p.addr(u)?;
        match (src, other) {
            (IpAddr::V4(_), IpAddr::V6(_)) => IpAddr::V4(*u.choose(&p.v4)?),
            (IpAddr::V6(_), IpAddr::V4(_)) => IpAddr::V6(*u.choose(&p.v6)?),
            _ => other,
        }
    } else {
        p.addr(u)?
    };
    let protocol = *u.choose(&[proto::TCP, proto::UDP, proto::ICMP, proto::ICMPV6, 0, 132])?;
    let mut r = PacketRecord {
        src: addr_bytes(src),
        dst: addr_bytes(dst),
        src_port: p.port(u)?,
        dst_port: p.port(u)?,
        ip_version: if u.ratio(1, 20)? {
            *u.choose(&[0, 4, 6])?
        } else if src.is_ipv4() {
            4
        } else {
            6
        },
        protocol,
        tcp_flags: if u.arbitrary()? {
            *u.choose(&[0x02, 0x12, 0x10, 0x11, 0x04])?
        } else {
            u.arbitrary()?
        },
        flow_state: FlowState::from_u8(u.int_in_range(0..=3)?),
        in_port: p.iface(u)?,
        out_port: p.iface(u)?,
        icmp_type: *u.choose(&[0u8, 3, 8, 11, 128, 129])?,
        icmp_code: u.int_in_range(0..=4)?,
        src_conns: *u.choose(&[0u16, 1, 9, 10, 11, 65534, 65535])?,
    };
    // Mostly a packet that satisfies a rule's plain conditions, then maybe nudged off it.
    if !rules.is_empty() && u.ratio(2, 3)? {
        let m = &u.choose(rules)?.m;
        if let Some(c) = m.src.filter(|c| !c.negated) {
            r.src = inside(u, &c.value)?;
        }
        if let Some(c) = m.dst.filter(|c| !c.negated) {
            r.dst = inside(u, &c.value)?;
        }
        if let Some(c) = m.proto.filter(|c| !c.negated) {
            r.protocol = c.value;
        }
        if let Some(c) = m.sport.filter(|c| !c.negated) {
            r.src_port = u.int_in_range(c.value.lo..=c.value.hi)?;
        }
        if let Some(c) = m.dport.filter(|c| !c.negated) {
            r.dst_port = u.int_in_range(c.value.lo..=c.value.hi)?;
        }
        if let Some(c) = m.in_port.filter(|c| !c.negated) {
            r.in_port = c.value;
        }
        if let Some(c) = m.out_port.filter(|c| !c.negated) {
            r.out_port = c.value;
        }
        if let Some(c) = m.tcp_flags.filter(|c| !c.negated) {
            r.tcp_flags = (r.tcp_flags & !c.value.mask) | c.value.set;
        }
        if let Some(c) = m.icmp.filter(|c| !c.negated) {
            r.icmp_type = c.value.ty;
            r.icmp_code = c.value.code.unwrap_or(r.icmp_code);
        }
        match u.int_in_range(0..=9)? {
            0 => r.dst_port = r.dst_port.wrapping_add(1),
            1 => r.src_port = r.src_port.wrapping_sub(1),
            2 => r.src[15] ^= 1,
            3 => r.in_port = r.in_port.wrapping_add(1),
            _ => {}
        }
    }
    Ok(r)
}

fn inside(u: &mut Unstructured<'_>, c: &Cidr) -> Result<[u8; 16]> {
    let host = if c.len >= 128 { 0 } else { u128::MAX >> c.len };
    let bits: u128 = u.arbitrary()?;
    Ok((c.addr | bits & host).to_be_bytes())
}

impl Case {
    /// Builds a case from the fuzzer's bytes.
    pub fn generate(u: &mut Unstructured<'_>) -> Result<Self> {
        let pools = Pools::generate(u)?;
        let mut rules = Vec::new();
        for _ in 0..u.int_in_range(0..=24)? {
            rules.push(rule(u, &pools)?);
        }
        let default = *u.choose(&[
            Action::Continue,
            Action::Accept,
            Action::Drop,
            Action::Reject,
        ])?;
        let generation: u64 = u.arbitrary()?;
        let set = RuleSet::new(rules, generation, default);
        let options = CompileOptions {
            classify: *u.choose(&[Classify::Full, Classify::NoPorts, Classify::None])?,
            inline_programs: u.arbitrary()?,
            colliding_hashes: u.ratio(1, 4)?,
        };
        let mut packets = Vec::new();
        for _ in 0..u.int_in_range(1..=80)? {
            packets.push(packet(u, &pools, &set.rules)?);
        }
        Ok(Self {
            set,
            options,
            packets,
        })
    }
}
