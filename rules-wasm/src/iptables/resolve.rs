//! The expansion phase: a rule's options, checked by [`super::line`], become one condition
//! ([`Cond`], a disjunction of model matches) by resolving what the bridge knows: container
//! names and their addresses, `docker0`, the host's interfaces (reverse path), published
//! ports (what `--ctorigdstport` means after the kernel's DNAT), container MACs, ipsets.
use std::net::IpAddr;

use super::error::{ParseError, ParseErrorKind as K, Warning};
use super::ipset::{IpSets, SetEntry};
use super::line::{Dir, Line, Opt, Spec, TargetSpec, Which};
use super::names::Names;
use crate::abi::addr_bytes;
use crate::algebra::{self, Cond, complement_cidrs, range_cidrs};
use crate::model::{Cidr, Match, Neg, PortRange};

/// Most matches one negated list may expand to before it is refused as too large.
const NEGATION_LIMIT: usize = 10_000;

/// The IPv4-mapped part of the address space: the universe of an IPv4-only condition.
pub(crate) const V4_SPACE: Cidr = Cidr {
    addr: 0xffff << 32,
    len: 96,
};
/// The whole address space.
pub(crate) const ALL_SPACE: Cidr = Cidr { addr: 0, len: 0 };

/// What resolution needs besides the line: the names, the sets, and where warnings go.
pub(crate) struct Ctx<'a> {
    pub names: &'a dyn Names,
    pub sets: &'a IpSets,
    pub warnings: &'a mut Vec<Warning>,
}

/// Which address a condition is about.
#[derive(Clone, Copy)]
enum Side {
    Src,
    Dst,
}

impl Side {
    fn of(d: Dir) -> Self {
        match d {
            Dir::Src => Side::Src,
            Dir::Dst => Side::Dst,
        }
    }

    fn set(self, m: &mut Match, c: Neg<Cidr>) {
        match self {
            Side::Src => m.src = Some(c),
            Side::Dst => m.dst = Some(c),
        }
    }

    fn port(self, m: &mut Match, r: PortRange) {
        match self {
            Side::Src => m.sport = Some(Neg::is(r)),
            Side::Dst => m.dport = Some(Neg::is(r)),
        }
    }
}

/// The condition of the rule whose options are `s`.
pub(crate) fn condition(line: &Line<'_>, s: &Spec, cx: &mut Ctx<'_>) -> Result<Cond, ParseError> {
    let mut parts: Vec<(usize, Cond)> = Vec::new();
    if let Some(f) = s.family {
        parts.push((0, vec![one(|m| m.ip_version = Some(Neg::is(f)))]));
    }
    // Addresses first: the family they imply says what a negated address means.
    let mut lists = Vec::new();
    for (o, side) in [(&s.src, Side::Src), (&s.dst, Side::Dst)] {
        if let Some(o) = o {
            lists.push((o, side, address_list(line, o, cx.names)?));
        }
    }
    let family = s.family.or_else(|| {
        lists
            .iter()
            .find_map(|(_, _, cidrs)| cidrs.first())
            .map(|c| if c.is_v4() { 4 } else { 6 })
    });
    if let Some(o) = &s.proto
        && let Some(p) = o.v
    {
        parts.push((o.at, vec![one(|m| m.proto = Some(neg(o.neg, p)))]));
    }
    for (o, side, cidrs) in lists {
        parts.push((o.vat, addr_cond(side, &cidrs, o.neg, family)));
    }
    for (o, side) in [(&s.src_range, Side::Src), (&s.dst_range, Side::Dst)] {
        if let Some(o) = o {
            let (a, b) = o.v;
            let lo = u128::from_be_bytes(addr_bytes(a));
            let hi = u128::from_be_bytes(addr_bytes(b));
            let fam = Some(if a.is_ipv4() { 4 } else { 6 });
            parts.push((o.vat, addr_cond(side, &range_cidrs(lo, hi), o.neg, fam)));
        }
    }
    for (o, side) in [(&s.sport, Side::Src), (&s.dport, Side::Dst)] {
        if let Some(o) = o {
            parts.push((o.at, vec![one(|m| set_port(m, side, neg(o.neg, o.v)))]));
        }
    }
    if let Some(o) = &s.multiport {
        let (which, ranges) = &o.v;
        let mut c = Vec::new();
        for r in ranges {
            match which {
                Which::Src => c.push(one(|m| Side::Src.port(m, *r))),
                Which::Dst => c.push(one(|m| Side::Dst.port(m, *r))),
                Which::Either => {
                    c.push(one(|m| Side::Src.port(m, *r)));
                    c.push(one(|m| Side::Dst.port(m, *r)));
                }
            }
        }
        parts.push((o.vat, negate_if(line, o.vat, o.neg, c)?));
    }
    for (o, out) in [(&s.in_if, false), (&s.out_if, true)] {
        if let Some(o) = o {
            let c = interface(line, o, out, cx)?;
            parts.push((o.vat, negate_if(line, o.vat, o.neg, c)?));
        }
    }
    if let Some(o) = &s.state {
        let set = if o.neg { o.v.complement() } else { o.v };
        if set.0 == 0 {
            return Ok(Vec::new());
        }
        parts.push((o.at, vec![one(|m| m.state = Some(set))]));
    }
    if let Some(o) = &s.ctdir {
        // The policy sees every flow in its original direction (replies share the verdict).
        let reply = o.v != o.neg;
        if reply {
            cx.warnings.push(Warning {
                line: line.lineno,
                message: "--ctdir REPLY never matches: bridgewall judges each flow by its \
                          original direction and its replies share that verdict"
                    .into(),
            });
            return Ok(Vec::new());
        }
    }
    if let Some(o) = &s.ctorigdstport {
        let c = orig_dst_port(s, o.v, cx.names);
        parts.push((o.vat, negate_if(line, o.vat, o.neg, c)?));
    }
    if let Some(o) = &s.ctorigdst {
        let cidrs = address_list(line, o, cx.names)?;
        let c = orig_dst(s, &cidrs, cx.names);
        parts.push((o.vat, negate_if(line, o.vat, o.neg, c)?));
    }
    if let Some(o) = &s.tcp_flags {
        parts.push((o.at, vec![one(|m| m.tcp_flags = Some(neg(o.neg, o.v)))]));
    }
    if let Some(o) = &s.icmp
        && let Some(t) = o.v.0
    {
        parts.push((o.vat, vec![one(|m| m.icmp = Some(neg(o.neg, t)))]));
    }
    if let Some(o) = &s.mac {
        let port = cx
            .names
            .port_of_mac(o.v)
            .ok_or_else(|| line.err(o.vat, K::ForeignMac))?;
        parts.push((o.vat, vec![one(|m| m.in_port = Some(neg(o.neg, port)))]));
    }
    for o in &s.sets {
        let c = set_cond(line, o, cx.sets, family)?;
        parts.push((o.vat, c));
    }
    if let Some(c) = &s.connlimit {
        parts.push((c.at, connlimit(line, c, family)?));
    }
    if let Some((at, ..)) = s.limit
        && !matches!(
            s.target.as_ref().map(|t| &t.v),
            Some(
                TargetSpec::Log { .. }
                    | TargetSpec::Accept
                    | TargetSpec::Drop
                    | TargetSpec::Reject(_)
            )
        )
    {
        return Err(line.err(
            at,
            K::Unsupported("-m limit with RETURN, a chain jump or no target (write it on the rules that decide)"),
        ));
    }
    let mut cond = algebra::any();
    for (at, part) in parts {
        cond = algebra::and(&cond, &part).map_err(|e| line.err(at, e.into()))?;
        if cond.len() > crate::iptables::FLAT_LIMIT {
            return Err(line.err(at, K::TooLarge(crate::iptables::FLAT_LIMIT)));
        }
    }
    // A plain IPv4 source and a plain IPv6 destination can never both match one packet.
    let before = cond.len();
    cond.retain(|m| match (m.src, m.dst) {
        (Some(a), Some(b)) if !a.negated && !b.negated => a.value.is_v4() == b.value.is_v4(),
        _ => true,
    });
    if before > 0 && cond.is_empty() {
        let at = s.dst.as_ref().map_or(0, |o| o.vat);
        return Err(line.err(at, K::FamilyMismatch));
    }
    Ok(cond)
}

/// A match with one field set.
fn one(f: impl FnOnce(&mut Match)) -> Match {
    let mut m = Match::default();
    f(&mut m);
    m
}

fn neg<T>(negated: bool, value: T) -> Neg<T> {
    Neg { value, negated }
}

fn set_port(m: &mut Match, side: Side, r: Neg<PortRange>) {
    match side {
        Side::Src => m.sport = Some(r),
        Side::Dst => m.dport = Some(r),
    }
}

/// `c`, or its negation when `negated`, refusing negations that would expand past
/// [`NEGATION_LIMIT`].
fn negate_if(line: &Line<'_>, at: usize, negated: bool, c: Cond) -> Result<Cond, ParseError> {
    if !negated {
        return Ok(c);
    }
    let n = negate(&c).map_err(|e| line.err(at, e.into()))?;
    if n.len() > NEGATION_LIMIT {
        return Err(line.err(at, K::TooLarge(NEGATION_LIMIT)));
    }
    Ok(n)
}

/// `¬c`. A list of prefixes under one shared condition (an address list, an ipset, an
/// interface's routes) is complemented as addresses, so a million-entry set negates in
/// O(n log n); anything else is negated term by term.
pub(crate) fn negate(c: &[Match]) -> Result<Cond, algebra::Unrepresentable> {
    match c {
        [] => Ok(algebra::any()),
        [m] => Ok(algebra::not(m)),
        _ => {
            for side in [Side::Src, Side::Dst] {
                if let Some((rest, cidrs)) = factor(c, side) {
                    let mut out = algebra::not(&rest);
                    for p in complement_cidrs(&cidrs, ALL_SPACE) {
                        let mut m = rest;
                        side.set(&mut m, Neg::is(p));
                        out.push(m);
                    }
                    return Ok(out);
                }
            }
            algebra::not_any(c)
        }
    }
}

/// When every match of `c` is the same but for a positive prefix on `side`: that shared
/// rest and the prefixes.
fn factor(c: &[Match], side: Side) -> Option<(Match, Vec<Cidr>)> {
    let strip = |m: &Match| {
        let mut r = *m;
        let v = match side {
            Side::Src => r.src.take(),
            Side::Dst => r.dst.take(),
        };
        (r, v)
    };
    let (rest, _) = strip(c.first()?);
    let mut cidrs = Vec::with_capacity(c.len());
    for m in c {
        let (r, v) = strip(m);
        match v {
            Some(p) if !p.negated && r == rest => cidrs.push(p.value),
            _ => return None,
        }
    }
    Some((rest, cidrs))
}

/// A comma-separated list of addresses, CIDRs (with prefix lengths or dotted masks) and
/// container names.
fn address_list(
    line: &Line<'_>,
    o: &Opt<String>,
    names: &dyn Names,
) -> Result<Vec<Cidr>, ParseError> {
    let mut out = Vec::new();
    let items: Vec<&str> = o.v.split(',').collect();
    for item in &items {
        out.extend(resolve_addr(item, names).map_err(|k| line.err(o.vat, k))?);
    }
    if o.neg && items.len() > 1 {
        return Err(line.err(o.vat, K::NegatedMany));
    }
    Ok(out)
}

/// Addresses on `side`: a positive list matches any of them; a negated one, any address of
/// the family that none of them is (iptables' `! -s` only ever sees its own family).
fn addr_cond(side: Side, cidrs: &[Cidr], negated: bool, family: Option<u8>) -> Cond {
    if !negated {
        return cidrs
            .iter()
            .map(|c| one(|m| side.set(m, Neg::is(*c))))
            .collect();
    }
    let mut out = Vec::new();
    for (fam, universe) in [(4u8, V4_SPACE), (6u8, ALL_SPACE)] {
        let of_fam: Vec<Cidr> = cidrs
            .iter()
            .copied()
            .filter(|c| c.is_v4() == (fam == 4))
            .collect();
        if of_fam.is_empty() && family != Some(fam) {
            continue;
        }
        let pin = |m: &mut Match| m.ip_version = Some(Neg::is(fam));
        if let [c] = of_fam.as_slice() {
            out.push(one(|m| {
                pin(m);
                side.set(m, Neg::not(*c));
            }));
            continue;
        }
        for p in complement_cidrs(&of_fam, universe) {
            out.push(one(|m| {
                pin(m);
                side.set(m, Neg::is(p));
            }));
        }
    }
    out
}

/// An address, a CIDR (`/len` or a contiguous dotted mask), or a container name, as the
/// prefixes it stands for.
pub(crate) fn resolve_addr(v: &str, names: &dyn Names) -> Result<Vec<Cidr>, K> {
    if let Some((a, len)) = v.split_once('/') {
        let ip: IpAddr = a.parse().map_err(|_| K::BadAddress)?;
        let len = match (len.parse::<u8>(), len.parse::<std::net::Ipv4Addr>(), ip) {
            (Ok(l), _, _) => l,
            (_, Ok(mask), IpAddr::V4(_)) => {
                let bits = u32::from(mask);
                if bits.leading_ones() + bits.trailing_zeros() != 32 {
                    return Err(K::Unsupported("non-contiguous netmasks"));
                }
                bits.leading_ones() as u8
            }
            _ => return Err(K::BadAddress),
        };
        return Cidr::new(ip, len).map(|c| vec![c]).ok_or(K::BadAddress);
    }
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Ok(vec![Cidr::host(ip)]);
    }
    if !looks_like_name(v) {
        return Err(K::BadAddress);
    }
    match names.addrs(v) {
        Some(a) if !a.is_empty() => Ok(a.into_iter().map(Cidr::host).collect()),
        _ => Err(K::UnknownName),
    }
}

/// Docker's container-name alphabet: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`. Anything else that is not
/// an address is a malformed address rather than an unknown name (`1.2.3.400`, `10.0.0.0/x`).
fn looks_like_name(v: &str) -> bool {
    let mut cs = v.chars();
    cs.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && cs.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && !v.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// `-i NAME` (or `-o NAME` when `out`), positive: a dataplane port id, a container or
/// `docker0`; a host interface (or `eth+` wildcard) is "through the gateway, from (to) an
/// address the host routes through it"; `+` is any interface.
fn interface(
    line: &Line<'_>,
    o: &Opt<String>,
    out: bool,
    cx: &mut Ctx<'_>,
) -> Result<Cond, ParseError> {
    let name = o.v.as_str();
    let set_port = |p: u16| {
        one(|m| {
            if out {
                m.out_port = Some(Neg::is(p));
            } else {
                m.in_port = Some(Neg::is(p));
            }
        })
    };
    if name == "+" {
        return Ok(algebra::any());
    }
    if let Ok(p) = name.parse::<u16>() {
        return Ok(vec![set_port(p)]);
    }
    if let Some(p) = cx.names.port(name) {
        return Ok(vec![set_port(p)]);
    }
    let mut c = Vec::new();
    if let Some(prefix) = name.strip_suffix('+')
        && "docker0".starts_with(prefix)
        && let Some(gw) = cx.names.gateway_port()
    {
        c.push(set_port(gw));
    }
    let (Some(routes), Some(gw)) = (cx.names.host_routes(name), cx.names.gateway_port()) else {
        if c.is_empty() {
            return Err(line.err(o.vat, K::UnknownName));
        }
        return Ok(c);
    };
    if routes.is_empty() {
        cx.warnings.push(Warning {
            line: line.lineno,
            message: format!("the host routes nothing through {name}: the rule matches nothing"),
        });
    }
    let side = if out { Side::Dst } else { Side::Src };
    for r in routes {
        let mut m = set_port(gw);
        side.set(&mut m, Neg::is(r));
        c.push(m);
    }
    Ok(c)
}

/// The published ports a rule with options `s` can be about: `(proto, host port, container
/// address, container port)`, filtered by the rule's own `-p`.
fn published_for(s: &Spec, names: &dyn Names) -> Vec<(u8, u16, IpAddr, u16)> {
    let proto = s
        .proto
        .as_ref()
        .and_then(|p| if p.neg { None } else { p.v });
    names
        .published()
        .into_iter()
        .filter(|(p, ..)| proto.is_none_or(|q| q == *p))
        .collect()
}

/// A published port's target, as the DNATed packet shows it: from the gateway, to the
/// container's address and port.
fn dnat_target(gw: Option<u16>, proto: u8, addr: IpAddr, port: u16) -> Match {
    Match {
        in_port: gw.map(Neg::is),
        proto: Some(Neg::is(proto)),
        dst: Some(Neg::is(Cidr::host(addr))),
        dport: Some(Neg::is(PortRange::single(port))),
        ..Match::default()
    }
}

/// `--ctorigdstport P`: packets DNATed from a published host port in P (seen as their
/// container target), or not DNATed with a destination port in P. A packet from the gateway
/// to a published target is taken as DNATed (the kernel's DNAT leaves no mark bridgewall
/// can see).
fn orig_dst_port(s: &Spec, p: PortRange, names: &dyn Names) -> Cond {
    let gw = names.gateway_port();
    let published = published_for(s, names);
    let mut c: Cond = published
        .iter()
        .filter(|(_, host, ..)| p.contains(*host))
        .map(|&(proto, _, a, port)| dnat_target(gw, proto, a, port))
        .collect();
    let mut direct = vec![one(|m| m.dport = Some(Neg::is(p)))];
    for &(proto, _, a, port) in published.iter().filter(|(.., port)| p.contains(*port)) {
        // Only targets whose container port is in P overlap the direct term.
        if let Ok(d) = algebra::and_not(&direct, &dnat_target(gw, proto, a, port)) {
            direct = d;
        }
    }
    c.extend(direct);
    c
}

/// `--ctorigdst X`: DNATed packets whose client connected to a host address in X (every
/// published target, when X holds one of the host's addresses), or not DNATed with a
/// destination in X.
fn orig_dst(s: &Spec, x: &[Cidr], names: &dyn Names) -> Cond {
    let gw = names.gateway_port();
    let published = published_for(s, names);
    let host_hit = names
        .host_addrs()
        .iter()
        .any(|h| x.iter().any(|c| c.contains(&addr_bytes(*h))));
    let mut c: Cond = Vec::new();
    if host_hit {
        c.extend(
            published
                .iter()
                .map(|&(proto, _, a, port)| dnat_target(gw, proto, a, port)),
        );
    }
    for cidr in x {
        let mut direct = vec![one(|m| m.dst = Some(Neg::is(*cidr)))];
        for &(proto, _, a, port) in &published {
            if cidr.contains(&addr_bytes(a))
                && let Ok(d) = algebra::and_not(&direct, &dnat_target(gw, proto, a, port))
            {
                direct = d;
            }
        }
        c.extend(direct);
    }
    c
}

/// `-m connlimit`: the source's open connections, this one included, above (or up to) N. The
/// dataplane counts every connection of a source address it holds open (the record's
/// `src_conns`), so only the per-address grouping is offered: `--connlimit-daddr` and masks
/// other than a whole address are refused.
fn connlimit(
    line: &Line<'_>,
    c: &super::line::ConnSpec,
    family: Option<u8>,
) -> Result<Cond, ParseError> {
    use crate::model::CountRange;
    if let Some((at, true)) = c.daddr {
        return Err(line.err(
            at,
            K::Unsupported("--connlimit-daddr (bridgewall counts connections per source address)"),
        ));
    }
    if let Some(m) = &c.mask {
        let whole = match family {
            Some(4) => m.v == 32,
            Some(6) => m.v == 128,
            _ => m.v == 32 || m.v == 128,
        };
        if !whole {
            return Err(line.err(
                m.vat,
                K::Unsupported("--connlimit-mask other than a whole address (32, or 128 for IPv6)"),
            ));
        }
    }
    let Some(limit) = &c.limit else {
        return Err(line.err(c.at, K::MissingValue));
    };
    let (above, n) = limit.v;
    let range = if above {
        // More than N, this connection included; nothing is above u32::MAX.
        match n.checked_add(1) {
            Some(lo) => CountRange { lo, hi: u32::MAX },
            None if limit.neg => return Ok(algebra::any()),
            None => return Ok(Vec::new()),
        }
    } else {
        CountRange { lo: 0, hi: n }
    };
    Ok(vec![one(|m| m.conns = Some(neg(limit.neg, range)))])
}

/// `-m set --match-set NAME FLAGS`: membership of the packet's address (and port) in an
/// ipset, as one match per entry; a negated hash:ip / hash:net set is complemented as
/// addresses, so its size does not matter.
fn set_cond(
    line: &Line<'_>,
    o: &Opt<(String, Vec<Dir>)>,
    sets: &IpSets,
    family: Option<u8>,
) -> Result<Cond, ParseError> {
    let (name, dirs) = &o.v;
    let set = sets
        .get(name)
        .ok_or_else(|| line.err(o.vat, K::UnknownSet))?;
    if dirs.len() != set.dimensions() {
        return Err(line.err(o.vat + 1, K::BadSetFlags));
    }
    let fam = Some(set.family).or(family);
    let first = Side::of(dirs[0]);
    if set.dimensions() == 1 {
        let cidrs: Vec<Cidr> = set
            .entries
            .iter()
            .filter_map(|e| match e {
                SetEntry::Net(c) => Some(*c),
                SetEntry::NetPort(..) => None,
            })
            .collect();
        if o.neg {
            let mut out = Vec::new();
            let universe = if set.family == 4 { V4_SPACE } else { ALL_SPACE };
            for p in complement_cidrs(&cidrs, universe) {
                out.push(one(|m| {
                    m.ip_version = fam.map(Neg::is);
                    first.set(m, Neg::is(p));
                }));
            }
            return Ok(out);
        }
        return Ok(addr_cond(first, &cidrs, false, fam));
    }
    let second = Side::of(dirs[1]);
    let c: Cond = set
        .entries
        .iter()
        .filter_map(|e| match e {
            SetEntry::NetPort(c, proto, port) => Some(one(|m| {
                first.set(m, Neg::is(*c));
                m.proto = Some(Neg::is(*proto));
                second.port(m, *port);
            })),
            SetEntry::Net(_) => None,
        })
        .collect();
    negate_if(line, o.vat, o.neg, c)
}
