//! The rule model: ordered chains of first-match rules over [`PacketRecord`]s.
//!
//! One model serves every producer (the iptables-syntax parser, Docker's semantics) and every
//! consumer (the reference interpreter, the Wasm compiler, `trace`), so that what the user
//! wrote, what the compiler emits and what the reference says can be compared rule by rule.
//!
//! Addresses live in the ABI's 16-byte space (IPv4 stored IPv4-mapped), so one [`Cidr`] type
//! covers both families: an IPv4 prefix `a.b.c.d/n` is the IPv6 prefix `::ffff:a.b.c.d/(96+n)`
//! and can only ever match IPv4 packets, as an `iptables` rule only sees IPv4.
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use crate::abi::{Action, FlowState, PacketRecord, RejectWith, addr_bytes};

/// The chains, in evaluation order. First match over `User`, then `Docker`, then `Icc` wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Chain {
    /// The user's rules (Docker's `DOCKER-USER`): evaluated before anything Docker derives.
    User,
    /// What Docker derives from links, published ports and the gateway (Docker's `DOCKER`
    /// chain plus the fixed `FORWARD` rules around it).
    Docker,
    /// The default between containers: accept with icc=true, drop with icc=false.
    Icc,
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Chain::User => "USER",
            Chain::Docker => "DOCKER",
            Chain::Icc => "ICC",
        })
    }
}

/// An address prefix in the ABI's 16-byte (IPv4-mapped) address space.
///
/// Kept canonical (host bits zero) by [`Cidr::new`], so equal prefixes compare equal and the
/// compiler can hash them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    /// The prefix as a big-endian 128-bit number (the record's byte order).
    pub addr: u128,
    /// Prefix length in the 128-bit space, 0..=128 (IPv4 /n is stored as 96 + n).
    pub len: u8,
}

impl Cidr {
    /// Every address of both families (`::/0`): the universe a negated IPv6 (or
    /// family-less) prefix is complemented in.
    pub const ALL: Self = Self { addr: 0, len: 0 };

    /// Every IPv4 address (`0.0.0.0/0`, i.e. `::ffff:0:0/96`): the universe a negated IPv4
    /// prefix is complemented in, so that it never matches an IPv6 packet.
    pub const V4_ALL: Self = Self {
        addr: 0xffff << 32,
        len: 96,
    };

    /// A prefix from an address and a prefix length in that address's own family
    /// (`/24` for IPv4 means 24 bits of the IPv4 address). Host bits are cleared, as
    /// `iptables` does; `None` when the length is too long for the family.
    pub fn new(ip: IpAddr, prefix: u8) -> Option<Self> {
        let len = match ip {
            IpAddr::V4(_) if prefix <= 32 => prefix + 96,
            IpAddr::V6(_) if prefix <= 128 => prefix,
            _ => return None,
        };
        let addr = u128::from_be_bytes(addr_bytes(ip)) & Self::mask_of(len);
        Some(Self { addr, len })
    }

    /// The single-address prefix (`/32` or `/128`) of `ip`.
    pub fn host(ip: IpAddr) -> Self {
        Self {
            addr: u128::from_be_bytes(addr_bytes(ip)),
            len: 128,
        }
    }

    /// The network mask of a prefix length in the 128-bit space.
    pub const fn mask_of(len: u8) -> u128 {
        if len == 0 {
            0
        } else {
            u128::MAX << (128 - len as u32)
        }
    }

    /// Whether `bytes` (a record address) lies in this prefix.
    #[inline]
    pub fn contains(&self, bytes: &[u8; 16]) -> bool {
        u128::from_be_bytes(*bytes) & Self::mask_of(self.len) == self.addr
    }

    /// Whether the prefix is within the IPv4-mapped range (so it only matches IPv4).
    pub fn is_v4(&self) -> bool {
        self.len >= 96 && (self.addr >> 32) == 0xffff
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v6 = Ipv6Addr::from(self.addr);
        match (self.is_v4(), v6.to_ipv4_mapped()) {
            (true, Some(v4)) if self.len == 128 => write!(f, "{v4}"),
            (true, Some(v4)) => write!(f, "{v4}/{}", self.len - 96),
            _ if self.len == 128 => write!(f, "{v6}"),
            _ => write!(f, "{v6}/{}", self.len),
        }
    }
}

/// An inclusive port range `lo..=hi` (`--dport 80` is `80..=80`, `--dport 1000:2000` a range).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    /// Lowest port matched.
    pub lo: u16,
    /// Highest port matched (≥ `lo`).
    pub hi: u16,
}

impl PortRange {
    /// A single port.
    pub const fn single(p: u16) -> Self {
        Self { lo: p, hi: p }
    }

    /// Whether `p` is in the range.
    #[inline]
    pub const fn contains(&self, p: u16) -> bool {
        self.lo <= p && p <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}:{}", self.lo, self.hi)
        }
    }
}

/// A match condition that may be negated, as iptables' `! -s x`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Neg<T> {
    /// The condition's value.
    pub value: T,
    /// `true` when the condition is inverted (`!`).
    pub negated: bool,
}

impl<T> Neg<T> {
    /// A plain (not negated) condition.
    pub const fn is(value: T) -> Self {
        Self {
            value,
            negated: false,
        }
    }

    /// A negated condition.
    pub const fn not(value: T) -> Self {
        Self {
            value,
            negated: true,
        }
    }

    /// Applies the negation to the outcome of the plain condition.
    #[inline]
    fn holds(&self, plain: bool) -> bool {
        plain != self.negated
    }
}

/// A set of [`FlowState`]s as a bit mask (bit `1 << state`), so that `--ctstate NEW,RELATED`
/// and its negation are one field rather than a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StateSet(pub u8);

impl StateSet {
    /// Every state.
    pub const ALL: Self = Self(0b1111);

    /// The set holding one state.
    pub const fn of(s: FlowState) -> Self {
        Self(1 << s as u8)
    }

    /// The union of two sets.
    pub const fn with(self, s: FlowState) -> Self {
        Self(self.0 | 1 << s as u8)
    }

    /// The complement within the known states (how `! --ctstate X` is stored).
    pub const fn complement(self) -> Self {
        Self(!self.0 & Self::ALL.0)
    }

    /// Whether `s` is in the set.
    #[inline]
    pub const fn contains(self, s: FlowState) -> bool {
        self.0 & (1 << s as u8) != 0
    }
}

/// A TCP flags condition, as iptables' `--tcp-flags MASK COMP`: the flags in `mask` are
/// examined and exactly those in `set` must be on (`--syn` is `SYN,RST,ACK,FIN SYN`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TcpFlags {
    /// The flags examined.
    pub mask: u8,
    /// Which of them must be set (a subset of `mask`).
    pub set: u8,
}

impl TcpFlags {
    /// `--syn`: SYN on, RST, ACK and FIN off (the first packet of a connection).
    pub const SYN: Self = Self {
        mask: crate::abi::tcp_flags::SYN
            | crate::abi::tcp_flags::RST
            | crate::abi::tcp_flags::ACK
            | crate::abi::tcp_flags::FIN,
        set: crate::abi::tcp_flags::SYN,
    };

    /// Whether the record's flags byte satisfies the condition.
    #[inline]
    pub const fn holds(&self, flags: u8) -> bool {
        flags & self.mask == self.set
    }
}

/// An ICMP or ICMPv6 type condition (`--icmp-type`, `--icmpv6-type`): a type, and a code or
/// any code. Which family is the rule's protocol's business (`-p icmp` / `-p icmpv6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IcmpType {
    /// The ICMP type.
    pub ty: u8,
    /// The code, or `None` for every code of the type.
    pub code: Option<u8>,
}

impl IcmpType {
    /// Whether a packet's (type, code) satisfies the condition.
    #[inline]
    pub fn holds(&self, ty: u8, code: u8) -> bool {
        ty == self.ty && self.code.is_none_or(|c| c == code)
    }
}

/// A range of connection counts (`-m connlimit`): the source's open connections *including*
/// the one being judged, `lo..=hi` (`--connlimit-above 20` is `21..=MAX`, `--connlimit-upto
/// 20` is `0..=20`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountRange {
    /// Fewest connections matched.
    pub lo: u32,
    /// Most connections matched (≥ `lo`).
    pub hi: u32,
}

impl CountRange {
    /// Whether a record with `src_conns` open connections (not counting its own) is in range.
    #[inline]
    pub fn holds(&self, src_conns: u16) -> bool {
        let n = u32::from(src_conns) + 1;
        self.lo <= n && n <= self.hi
    }
}

/// What a rule matches. Every field is optional (`None` = any) and, except the state set
/// (whose negation is folded into the set), negatable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Match {
    /// Source prefix (`-s`).
    pub src: Option<Neg<Cidr>>,
    /// Destination prefix (`-d`).
    pub dst: Option<Neg<Cidr>>,
    /// IP protocol number (`-p`); `None` is `-p all`.
    pub proto: Option<Neg<u8>>,
    /// TCP/UDP source ports (`--sport`).
    pub sport: Option<Neg<PortRange>>,
    /// TCP/UDP destination ports (`--dport`).
    pub dport: Option<Neg<PortRange>>,
    /// Ingress dataplane port (`-i`).
    pub in_port: Option<Neg<u16>>,
    /// Egress dataplane port (`-o`).
    pub out_port: Option<Neg<u16>>,
    /// IP version of the packet (4, 6, or 0 for non-IP frames such as ARP). Not reachable
    /// from iptables syntax; Docker's semantics use it to let non-IP frames through.
    pub ip_version: Option<Neg<u8>>,
    /// Connection-tracking states (`-m conntrack --ctstate`).
    pub state: Option<StateSet>,
    /// TCP flags (`--syn`, `--tcp-flags`).
    pub tcp_flags: Option<Neg<TcpFlags>>,
    /// ICMP / ICMPv6 type and code (`--icmp-type`, `--icmpv6-type`).
    pub icmp: Option<Neg<IcmpType>>,
    /// The source's open connections, this one included (`-m connlimit`).
    pub conns: Option<Neg<CountRange>>,
}

impl Match {
    /// Whether `r` satisfies every condition of this match.
    pub fn matches(&self, r: &PacketRecord) -> bool {
        fn check<T: Copy>(c: &Option<Neg<T>>, f: impl FnOnce(T) -> bool) -> bool {
            match c {
                None => true,
                Some(n) => n.holds(f(n.value)),
            }
        }
        check(&self.src, |c| c.contains(&r.src))
            && check(&self.dst, |c| c.contains(&r.dst))
            && check(&self.proto, |p| r.protocol == p)
            && check(&self.sport, |p| p.contains(r.src_port))
            && check(&self.dport, |p| p.contains(r.dst_port))
            && check(&self.in_port, |p| r.in_port == p)
            && check(&self.out_port, |p| r.out_port == p)
            && check(&self.ip_version, |v| r.ip_version == v)
            && self.state.is_none_or(|s| s.contains(r.flow_state))
            && check(&self.tcp_flags, |f| f.holds(r.tcp_flags))
            && check(&self.icmp, |t| t.holds(r.icmp_type, r.icmp_code))
            && check(&self.conns, |c| c.holds(r.src_conns))
    }
}

impl fmt::Display for Match {
    /// Renders in iptables-like syntax (ports as `port:N`, since the model matches dataplane
    /// port ids, not interface names); for traces and error messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let mut push = |s: String| parts.push(s);
        let neg = |n: bool| if n { "! " } else { "" };
        if let Some(v) = self.ip_version {
            push(format!("{}--ip-version {}", neg(v.negated), v.value));
        }
        if let Some(s) = self.src {
            push(format!("{}-s {}", neg(s.negated), s.value));
        }
        if let Some(d) = self.dst {
            push(format!("{}-d {}", neg(d.negated), d.value));
        }
        if let Some(i) = self.in_port {
            push(format!("{}-i port:{}", neg(i.negated), i.value));
        }
        if let Some(o) = self.out_port {
            push(format!("{}-o port:{}", neg(o.negated), o.value));
        }
        if let Some(p) = self.proto {
            push(format!("{}-p {}", neg(p.negated), proto_name(p.value)));
        }
        if let Some(p) = self.sport {
            push(format!("{}--sport {}", neg(p.negated), p.value));
        }
        if let Some(p) = self.dport {
            push(format!("{}--dport {}", neg(p.negated), p.value));
        }
        if let Some(s) = self.state {
            let names: Vec<&str> = [
                (FlowState::New, "NEW"),
                (FlowState::Established, "ESTABLISHED"),
                (FlowState::Related, "RELATED"),
                (FlowState::Invalid, "INVALID"),
            ]
            .iter()
            .filter(|(st, _)| s.contains(*st))
            .map(|(_, n)| *n)
            .collect();
            push(format!("--ctstate {}", names.join(",")));
        }
        if let Some(t) = self.tcp_flags {
            push(format!(
                "{}--tcp-flags {} {}",
                neg(t.negated),
                flag_names(t.value.mask),
                flag_names(t.value.set)
            ));
        }
        if let Some(t) = self.icmp {
            let code = t.value.code.map_or(String::new(), |c| format!("/{c}"));
            push(format!(
                "{}--icmp-type {}{code}",
                neg(t.negated),
                t.value.ty
            ));
        }
        if parts.is_empty() {
            f.write_str("(any)")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

/// TCP flag names as iptables lists them (`SYN,ACK`), or `NONE`.
pub fn flag_names(bits: u8) -> String {
    const NAMES: [(u8, &str); 8] = [
        (0x01, "FIN"),
        (0x02, "SYN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x10, "ACK"),
        (0x20, "URG"),
        (0x40, "ECE"),
        (0x80, "CWR"),
    ];
    let names: Vec<&str> = NAMES
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if names.is_empty() {
        "NONE".into()
    } else {
        names.join(",")
    }
}

/// The name iptables uses for a protocol number, or the number.
pub fn proto_name(p: u8) -> String {
    match p {
        crate::abi::proto::TCP => "tcp".into(),
        crate::abi::proto::UDP => "udp".into(),
        crate::abi::proto::ICMP => "icmp".into(),
        crate::abi::proto::ICMPV6 => "icmpv6".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

/// What a matching rule decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// `-j ACCEPT`.
    Accept,
    /// `-j DROP`.
    Drop,
    /// `-j REJECT --reject-with …`: drop and answer.
    Reject(RejectWith),
}

impl Target {
    /// The ABI action this target produces.
    pub const fn action(self) -> Action {
        match self {
            Target::Accept => Action::Accept,
            Target::Drop => Action::Drop,
            Target::Reject(_) => Action::Reject,
        }
    }

    /// The action word a module writes for this target (see [`Action::word`]).
    pub const fn word(self) -> u32 {
        match self {
            Target::Reject(with) => Action::Reject.word(with),
            t => t.action() as u32,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Accept => f.write_str("ACCEPT"),
            Target::Drop => f.write_str("DROP"),
            Target::Reject(RejectWith::PortUnreachable) => f.write_str("REJECT"),
            Target::Reject(w) => write!(f, "REJECT --reject-with {}", reject_name(*w)),
        }
    }
}

/// iptables' name of a reject answer (the IPv4 spelling; ip6tables' is accepted on input).
pub const fn reject_name(w: RejectWith) -> &'static str {
    match w {
        RejectWith::PortUnreachable => "icmp-port-unreachable",
        RejectWith::NetUnreachable => "icmp-net-unreachable",
        RejectWith::HostUnreachable => "icmp-host-unreachable",
        RejectWith::ProtoUnreachable => "icmp-proto-unreachable",
        RejectWith::NetProhibited => "icmp-net-prohibited",
        RejectWith::HostProhibited => "icmp-host-prohibited",
        RejectWith::AdminProhibited => "icmp-admin-prohibited",
        RejectWith::TcpReset => "tcp-reset",
        RejectWith::PolicyFail => "icmp6-policy-fail",
        RejectWith::RejectRoute => "icmp6-reject-route",
    }
}

/// One rule: a match, a target, where it sits, and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Dense id in evaluation order, assigned by [`RuleSet::assign_ids`]; it is what a
    /// verdict reports and what per-rule counters are indexed by.
    pub id: u32,
    /// The chain the rule belongs to.
    pub chain: Chain,
    /// The conditions.
    pub m: Match,
    /// The decision when it matches.
    pub target: Target,
    /// Human text saying where the rule came from (the iptables line, or
    /// "link web→db 80/tcp"), so a trace can explain a verdict in the user's terms.
    pub origin: String,
}

impl Rule {
    /// A rule with id 0 (ids are assigned when the rule set is built).
    pub fn new(chain: Chain, m: Match, target: Target, origin: impl Into<String>) -> Self {
        Self {
            id: 0,
            chain,
            m,
            target,
            origin: origin.into(),
        }
    }
}

/// A complete policy: rules in evaluation order with dense ids, a generation, and the
/// action when nothing matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSet {
    /// Rules sorted by chain (User, Docker, Icc), each chain in its own order; `rules[i].id == i`.
    pub rules: Vec<Rule>,
    /// Generation of this policy; the flow table re-decides flows judged by another one.
    pub generation: u64,
    /// Action when no rule matches (reported with [`crate::abi::RULE_NONE`]).
    pub default: Action,
}

impl RuleSet {
    /// Builds a rule set, ordering `rules` by chain (stable within a chain) and giving them
    /// dense ids 0..N in evaluation order.
    pub fn new(rules: Vec<Rule>, generation: u64, default: Action) -> Self {
        let mut set = Self {
            rules,
            generation,
            default,
        };
        set.assign_ids();
        set
    }

    /// Re-establishes the invariants after `rules` was edited: stable sort by chain, then
    /// `rules[i].id = i`, so "lowest id that matches" is exactly "first match".
    pub fn assign_ids(&mut self) {
        self.rules.sort_by_key(|r| r.chain);
        for (i, r) in self.rules.iter_mut().enumerate() {
            r.id = i as u32;
        }
    }

    /// The rule a verdict names, for traces and counters.
    pub fn rule(&self, id: u32) -> Option<&Rule> {
        self.rules.get(id as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn v4_prefix_matches_only_v4_and_masks_host_bits() {
        let c = Cidr::new(v4(172, 17, 0, 5), 16).unwrap();
        assert_eq!(c, Cidr::new(v4(172, 17, 0, 0), 16).unwrap());
        assert!(c.contains(&addr_bytes(v4(172, 17, 9, 9))));
        assert!(!c.contains(&addr_bytes(v4(172, 18, 0, 1))));
        assert!(!c.contains(&addr_bytes("2001:db8::1".parse().unwrap())));
        let any4 = Cidr::new(v4(0, 0, 0, 0), 0).unwrap();
        assert!(any4.contains(&addr_bytes(v4(1, 2, 3, 4))));
        assert!(!any4.contains(&addr_bytes("::1".parse().unwrap())));
        assert_eq!(c.to_string(), "172.17.0.0/16");
        assert!(Cidr::new(v4(1, 1, 1, 1), 33).is_none());
    }

    #[test]
    fn ids_follow_chain_order() {
        let rules = vec![
            Rule::new(Chain::Icc, Match::default(), Target::Drop, "icc"),
            Rule::new(Chain::User, Match::default(), Target::Accept, "u1"),
            Rule::new(Chain::Docker, Match::default(), Target::Accept, "d"),
            Rule::new(Chain::User, Match::default(), Target::Drop, "u2"),
        ];
        let set = RuleSet::new(rules, 1, Action::Drop);
        let order: Vec<_> = set
            .rules
            .iter()
            .map(|r| (r.id, r.origin.as_str()))
            .collect();
        assert_eq!(order, [(0, "u1"), (1, "u2"), (2, "d"), (3, "icc")]);
    }

    #[test]
    fn negation_and_state() {
        let m = Match {
            proto: Some(Neg::not(crate::abi::proto::UDP)),
            state: Some(StateSet::of(FlowState::New)),
            ..Match::default()
        };
        let mut r = PacketRecord {
            protocol: crate::abi::proto::TCP,
            ..Default::default()
        };
        assert!(m.matches(&r));
        r.flow_state = FlowState::Established;
        assert!(!m.matches(&r));
        r.flow_state = FlowState::New;
        r.protocol = crate::abi::proto::UDP;
        assert!(!m.matches(&r));
    }
}
