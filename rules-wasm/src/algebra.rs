//! Exact set algebra over rule matches: the conjunction and the negation of [`Match`]es,
//! each as a disjunction of matches.
//!
//! Why: iptables rules jump into user chains, RETURN from them, negate address ranges and
//! port lists, while the compiler and the reference interpreter know one thing only, a flat
//! first-match list of conjunctions. Chains are flattened by conjoining every rule of a chain
//! with the conditions under which the chain is entered and not yet left; a disjunction of
//! conjunctions ([`Cond`]) is what those conditions become. Everything here is exact: a
//! combination the model cannot state is split into several matches that together mean the
//! same (an address prefix minus a hole is the prefixes around the hole), and the few that
//! would need hundreds of matches (two different negated interfaces) are refused with
//! [`Unrepresentable`], never approximated.
use thiserror::Error;

use crate::model::{Cidr, CountRange, IcmpType, Match, Neg, PortRange, StateSet, TcpFlags};

/// A disjunction of matches: a packet satisfies it when it satisfies any of them. Empty is
/// "nothing"; `vec![Match::default()]` ([`any`]) is "everything".
pub type Cond = Vec<Match>;

/// A combination of conditions the rule model cannot state exactly (see the module docs).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("cannot combine two negated {field} conditions exactly")]
pub struct Unrepresentable {
    /// The field, in iptables' words (`-i`, `-p`, `--icmp-type`, …).
    pub field: &'static str,
}

/// The condition every packet satisfies.
pub fn any() -> Cond {
    vec![Match::default()]
}

/// `a ∧ b`, as a disjunction.
pub fn and(a: &[Match], b: &[Match]) -> Result<Cond, Unrepresentable> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            out.extend(and_match(x, y)?);
        }
    }
    Ok(out)
}

/// `¬m`, as a disjunction of disjoint matches: the packets failing m's first condition, then
/// those passing the first and failing the second, and so on.
pub fn not(m: &Match) -> Cond {
    let mut out = Vec::new();
    let mut prefix = Match::default();
    macro_rules! step {
        ($f:ident) => {
            if let Some(c) = m.$f {
                out.push(Match {
                    $f: Some(Neg {
                        value: c.value,
                        negated: !c.negated,
                    }),
                    ..prefix
                });
                prefix.$f = Some(c);
            }
        };
    }
    step!(ip_version);
    step!(proto);
    step!(in_port);
    step!(out_port);
    step!(src);
    step!(dst);
    step!(sport);
    step!(dport);
    step!(tcp_flags);
    step!(icmp);
    step!(conns);
    if let Some(s) = m.state {
        let c = s.complement();
        if c.0 != 0 {
            out.push(Match {
                state: Some(c),
                ..prefix
            });
        }
    }
    out
}

/// `g ∧ ¬m`.
pub fn and_not(g: &[Match], m: &Match) -> Result<Cond, Unrepresentable> {
    and(g, &not(m))
}

/// `¬(m₁ ∨ m₂ ∨ …)` = `¬m₁ ∧ ¬m₂ ∧ …`. Fine for a few terms; a large address list has
/// [`complement_cidrs`] instead.
pub fn not_any(c: &[Match]) -> Result<Cond, Unrepresentable> {
    let mut out = any();
    for m in c {
        out = and_not(&out, m)?;
        if out.is_empty() {
            break;
        }
    }
    Ok(out)
}

/// One field's alternatives after a conjunction: empty means the conjunction matches nothing.
type Alts<T> = Vec<Option<Neg<T>>>;

/// `a ∧ b` for two conjunctions.
pub fn and_match(a: &Match, b: &Match) -> Result<Vec<Match>, Unrepresentable> {
    let state = match (a.state, b.state) {
        (Some(x), Some(y)) if x.0 & y.0 == 0 => return Ok(Vec::new()),
        (Some(x), Some(y)) => Some(StateSet(x.0 & y.0)),
        (x, y) => x.or(y),
    };
    let mut out = vec![Match {
        state,
        ..Match::default()
    }];
    macro_rules! field {
        ($f:ident, $alts:expr) => {{
            let alts = $alts;
            let mut next = Vec::with_capacity(out.len() * alts.len());
            for m in &out {
                for v in &alts {
                    next.push(Match { $f: *v, ..*m });
                }
            }
            out = next;
            if out.is_empty() {
                return Ok(out);
            }
        }};
    }
    field!(ip_version, byte(a.ip_version, b.ip_version));
    field!(proto, byte(a.proto, b.proto));
    field!(in_port, exact(a.in_port, b.in_port, "-i")?);
    field!(out_port, exact(a.out_port, b.out_port, "-o")?);
    field!(src, cidrs(a.src, b.src));
    field!(dst, cidrs(a.dst, b.dst));
    field!(sport, ports(a.sport, b.sport));
    field!(dport, ports(a.dport, b.dport));
    field!(tcp_flags, flags(a.tcp_flags, b.tcp_flags)?);
    field!(icmp, icmp(a.icmp, b.icmp));
    field!(conns, counts(a.conns, b.conns));
    Ok(out)
}

/// Conjunction of two equality conditions.
fn exact<T: Copy + PartialEq>(
    a: Option<Neg<T>>,
    b: Option<Neg<T>>,
    field: &'static str,
) -> Result<Alts<T>, Unrepresentable> {
    Ok(match (a, b) {
        (None, x) | (x, None) => vec![x],
        (Some(x), Some(y)) => match (x.negated, y.negated) {
            (false, false) => keep_if(x.value == y.value, x),
            (false, true) => keep_if(x.value != y.value, x),
            (true, false) => keep_if(x.value != y.value, y),
            (true, true) if x.value == y.value => vec![Some(x)],
            (true, true) => return Err(Unrepresentable { field }),
        },
    })
}

/// Conjunction of two equality conditions on a byte: two different negated values become
/// the other 254 values (a byte's domain is small enough to spell out).
fn byte(a: Option<Neg<u8>>, b: Option<Neg<u8>>) -> Alts<u8> {
    match (a, b) {
        (Some(x), Some(y)) if x.negated && y.negated && x.value != y.value => (0..=255u8)
            .filter(|v| *v != x.value && *v != y.value)
            .map(|v| Some(Neg::is(v)))
            .collect(),
        // Every other case has an exact single answer.
        _ => exact(a, b, "byte").unwrap_or_default(),
    }
}

fn keep_if<T>(keep: bool, v: Neg<T>) -> Alts<T> {
    if keep { vec![Some(v)] } else { Vec::new() }
}

/// Whether prefix `a` lies within prefix `b`.
pub fn cidr_within(a: Cidr, b: Cidr) -> bool {
    a.len >= b.len && a.addr & Cidr::mask_of(b.len) == b.addr
}

/// Whether two prefixes share no address.
pub fn cidr_disjoint(a: Cidr, b: Cidr) -> bool {
    !cidr_within(a, b) && !cidr_within(b, a)
}

/// The prefixes that cover `outer` minus `hole` (`hole` within `outer`): the siblings of the
/// hole's ancestors, at most 128 of them.
pub fn cidr_minus(outer: Cidr, hole: Cidr) -> Vec<Cidr> {
    (outer.len + 1..=hole.len)
        .map(|l| {
            let bit = 1u128 << (128 - u32::from(l));
            Cidr {
                addr: (hole.addr & Cidr::mask_of(l)) ^ bit,
                len: l,
            }
        })
        .collect()
}

/// The whole address space.
const ALL_ADDRS: Cidr = Cidr { addr: 0, len: 0 };

/// Conjunction of two prefix conditions.
fn cidrs(a: Option<Neg<Cidr>>, b: Option<Neg<Cidr>>) -> Alts<Cidr> {
    let (x, y) = match (a, b) {
        (None, v) | (v, None) => return vec![v],
        (Some(x), Some(y)) => (x, y),
    };
    match (x.negated, y.negated) {
        (false, false) if cidr_within(x.value, y.value) => vec![Some(x)],
        (false, false) if cidr_within(y.value, x.value) => vec![Some(y)],
        (false, false) => Vec::new(),
        (false, true) => pos_minus(x.value, y.value),
        (true, false) => pos_minus(y.value, x.value),
        (true, true) if cidr_within(x.value, y.value) => vec![Some(y)],
        (true, true) if cidr_within(y.value, x.value) => vec![Some(x)],
        (true, true) => cidr_minus(ALL_ADDRS, y.value)
            .into_iter()
            .flat_map(|c| pos_minus(c, x.value))
            .collect(),
    }
}

/// `p ∧ ¬n` for prefixes, as positive prefixes.
fn pos_minus(p: Cidr, n: Cidr) -> Alts<Cidr> {
    if cidr_within(p, n) {
        Vec::new()
    } else if cidr_within(n, p) {
        cidr_minus(p, n)
            .into_iter()
            .map(|c| Some(Neg::is(c)))
            .collect()
    } else {
        vec![Some(Neg::is(p))]
    }
}

/// An inclusive integer range, widened: port ranges and connection counts alike.
type Span = (u64, u64);

/// Conjunction of two (possibly negated) ranges within `all`: a negation stays one when the
/// two negated ranges touch (their union is a range), else the pieces come out positive.
fn spans(x: Neg<Span>, y: Neg<Span>, all: Span) -> Vec<Neg<Span>> {
    let meet = |a: Span, b: Span| {
        let r = (a.0.max(b.0), a.1.min(b.1));
        (r.0 <= r.1).then_some(r)
    };
    // `a` minus `b`: up to two pieces.
    let minus = |a: Span, b: Span| -> Vec<Span> {
        let mut out = Vec::new();
        if b.0 > a.0 {
            out.push((a.0, a.1.min(b.0 - 1)));
        }
        if b.1 < a.1 {
            out.push((a.0.max(b.1 + 1), a.1));
        }
        out.retain(|r| r.0 <= r.1);
        out
    };
    let pieces: Vec<Span> = match (x.negated, y.negated) {
        (false, false) => meet(x.value, y.value).into_iter().collect(),
        (false, true) => minus(x.value, y.value),
        (true, false) => minus(y.value, x.value),
        (true, true) => {
            let (lo, hi) = if x.value.0 <= y.value.0 {
                (x.value, y.value)
            } else {
                (y.value, x.value)
            };
            if hi.0 <= lo.1 + 1 {
                return vec![Neg::not((lo.0, lo.1.max(hi.1)))];
            }
            minus(all, lo)
                .into_iter()
                .flat_map(|r| minus(r, hi))
                .collect()
        }
    };
    pieces.into_iter().map(Neg::is).collect()
}

/// [`spans`] for two optional conditions on one field, converting to and from the field's
/// own range type.
fn range_field<T: Copy>(
    a: Option<Neg<T>>,
    b: Option<Neg<T>>,
    all: Span,
    to: impl Fn(T) -> Span,
    from: impl Fn(Span) -> T,
) -> Alts<T> {
    let (x, y) = match (a, b) {
        (None, v) | (v, None) => return vec![v],
        (Some(x), Some(y)) => (x, y),
    };
    let wide = |n: Neg<T>| Neg {
        value: to(n.value),
        negated: n.negated,
    };
    spans(wide(x), wide(y), all)
        .into_iter()
        .map(|n| {
            Some(Neg {
                value: from(n.value),
                negated: n.negated,
            })
        })
        .collect()
}

/// Conjunction of two port-range conditions.
fn ports(a: Option<Neg<PortRange>>, b: Option<Neg<PortRange>>) -> Alts<PortRange> {
    range_field(
        a,
        b,
        (0, u64::from(u16::MAX)),
        |r| (u64::from(r.lo), u64::from(r.hi)),
        |(lo, hi)| PortRange {
            lo: lo as u16,
            hi: hi as u16,
        },
    )
}

/// Conjunction of two connection-count conditions.
fn counts(a: Option<Neg<CountRange>>, b: Option<Neg<CountRange>>) -> Alts<CountRange> {
    range_field(
        a,
        b,
        (0, u64::from(u32::MAX)),
        |r| (u64::from(r.lo), u64::from(r.hi)),
        |(lo, hi)| CountRange {
            lo: lo as u32,
            hi: hi as u32,
        },
    )
}

/// Conjunction of two TCP-flag conditions.
fn flags(
    a: Option<Neg<TcpFlags>>,
    b: Option<Neg<TcpFlags>>,
) -> Result<Alts<TcpFlags>, Unrepresentable> {
    let (x, y) = match (a, b) {
        (None, v) | (v, None) => return Ok(vec![v]),
        (Some(x), Some(y)) => (x, y),
    };
    Ok(match (x.negated, y.negated) {
        (false, false) => flags_both(x.value, y.value)
            .map(Neg::is)
            .into_iter()
            .map(Some)
            .collect(),
        (false, true) => flags_minus(x.value, y.value),
        (true, false) => flags_minus(y.value, x.value),
        (true, true) if x.value == y.value => vec![Some(x)],
        (true, true) => flag_negation(y.value)
            .into_iter()
            .flat_map(|p| flags_minus(p, x.value))
            .collect(),
    })
}

/// Both flag conditions at once, or `None` when they contradict.
fn flags_both(a: TcpFlags, b: TcpFlags) -> Option<TcpFlags> {
    let common = a.mask & b.mask;
    ((a.set ^ b.set) & common == 0).then_some(TcpFlags {
        mask: a.mask | b.mask,
        set: a.set | b.set,
    })
}

/// `¬f` as positive one-flag conditions: some examined flag differs.
fn flag_negation(f: TcpFlags) -> Vec<TcpFlags> {
    (0..8)
        .map(|i| 1u8 << i)
        .filter(|bit| f.mask & bit != 0)
        .map(|bit| TcpFlags {
            mask: bit,
            set: !f.set & bit,
        })
        .collect()
}

/// `p ∧ ¬n` for flag conditions, as positive conditions.
fn flags_minus(p: TcpFlags, n: TcpFlags) -> Alts<TcpFlags> {
    flag_negation(n)
        .into_iter()
        .filter_map(|q| flags_both(p, q))
        .map(|f| Some(Neg::is(f)))
        .collect()
}

/// Conjunction of two ICMP type conditions. Where a negation leaves a hole inside one
/// type, or two negations leave the rest of the space, the remainder is spelled out as
/// positive (type, code) conditions: the space is 256 types of 256 codes.
fn icmp(a: Option<Neg<IcmpType>>, b: Option<Neg<IcmpType>>) -> Alts<IcmpType> {
    let (x, y) = match (a, b) {
        (None, v) | (v, None) => return vec![v],
        (Some(x), Some(y)) => (x, y),
    };
    let covers =
        |w: IcmpType, v: IcmpType| w.ty == v.ty && w.code.is_none_or(|c| Some(c) == v.code);
    let (xv, yv) = (x.value, y.value);
    match (x.negated, y.negated) {
        (false, false) if covers(xv, yv) => vec![Some(y)],
        (false, false) if covers(yv, xv) => vec![Some(x)],
        (false, false) => Vec::new(),
        (false, true) => icmp_minus(&[xv], &[yv]),
        (true, false) => icmp_minus(&[yv], &[xv]),
        (true, true) if covers(xv, yv) => vec![Some(x)],
        (true, true) if covers(yv, xv) => vec![Some(y)],
        (true, true) => {
            let all: Vec<IcmpType> = (0..=255u8).map(|ty| IcmpType { ty, code: None }).collect();
            icmp_minus(&all, &[xv, yv])
        }
    }
}

/// The (type, code) space of `pos` minus that of `holes`, as positive conditions.
fn icmp_minus(pos: &[IcmpType], holes: &[IcmpType]) -> Alts<IcmpType> {
    let mut out = Vec::new();
    for p in pos {
        let hit: Vec<&IcmpType> = holes.iter().filter(|h| h.ty == p.ty).collect();
        if hit.iter().any(|h| h.code.is_none() || h.code == p.code) {
            continue;
        }
        if hit.is_empty() || p.code.is_some() {
            out.push(Some(Neg::is(*p)));
            continue;
        }
        out.extend(
            (0..=255u8)
                .filter(|c| !hit.iter().any(|h| h.code == Some(*c)))
                .map(|c| {
                    Some(Neg::is(IcmpType {
                        ty: p.ty,
                        code: Some(c),
                    }))
                }),
        );
    }
    out
}

/// The prefixes of `universe` that none of `set` covers, minimal and in address order: how a
/// negated address list (`! --src-range`, `! --match-set`) becomes positive prefixes, in
/// O(n log n) however long the list.
pub fn complement_cidrs(set: &[Cidr], universe: Cidr) -> Vec<Cidr> {
    let (ulo, uhi) = bounds(universe);
    let mut spans: Vec<(u128, u128)> = set
        .iter()
        .map(|c| bounds(*c))
        .filter(|&(lo, hi)| hi >= ulo && lo <= uhi)
        .map(|(lo, hi)| (lo.max(ulo), hi.min(uhi)))
        .collect();
    spans.sort_unstable();
    let mut out = Vec::new();
    let mut next = Some(ulo);
    for (lo, hi) in spans {
        if let Some(n) = next
            && lo > n
        {
            out.extend(range_cidrs(n, lo - 1));
        }
        next = match next {
            Some(n) if hi < n => Some(n),
            _ => hi.checked_add(1),
        };
    }
    if let Some(n) = next
        && n <= uhi
    {
        out.extend(range_cidrs(n, uhi));
    }
    out
}

/// First and last address of a prefix.
fn bounds(c: Cidr) -> (u128, u128) {
    (c.addr, c.addr | !Cidr::mask_of(c.len))
}

/// The minimal prefixes covering exactly `lo..=hi` (an `--src-range`), at most 254.
pub fn range_cidrs(lo: u128, hi: u128) -> Vec<Cidr> {
    let mut out = Vec::new();
    let mut at = lo;
    loop {
        // The largest aligned block starting at `at` that stays within `hi`.
        let mut size_bits = if at == 0 { 128 } else { at.trailing_zeros() };
        while size_bits > 0 && block_end(at, size_bits) > hi {
            size_bits -= 1;
        }
        out.push(Cidr {
            addr: at,
            len: (128 - size_bits) as u8,
        });
        let end = block_end(at, size_bits);
        if end >= hi {
            return out;
        }
        at = end + 1;
    }
}

/// Last address of the block of `2^bits` addresses starting at `at`.
fn block_end(at: u128, bits: u32) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        at | ((1u128 << bits) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{FlowState, PacketRecord, addr_bytes};
    use std::net::IpAddr;

    fn v4(s: &str, len: u8) -> Cidr {
        Cidr::new(s.parse::<IpAddr>().unwrap(), len).unwrap()
    }

    fn rec(src: &str, dport: u16, flags: u8) -> PacketRecord {
        PacketRecord {
            src: addr_bytes(src.parse().unwrap()),
            dst_port: dport,
            protocol: 6,
            ip_version: 4,
            tcp_flags: flags,
            ..Default::default()
        }
    }

    fn holds(c: &[Match], r: &PacketRecord) -> bool {
        c.iter().any(|m| m.matches(r))
    }

    /// Every operation agrees with the plain meaning on a grid of packets.
    #[test]
    fn and_and_not_agree_with_the_meaning() {
        let ms = [
            Match {
                src: Some(Neg::is(v4("10.0.0.0", 8))),
                ..Match::default()
            },
            Match {
                src: Some(Neg::not(v4("10.1.0.0", 16))),
                dport: Some(Neg::not(PortRange { lo: 80, hi: 90 })),
                ..Match::default()
            },
            Match {
                src: Some(Neg::not(v4("192.168.0.0", 16))),
                tcp_flags: Some(Neg::not(TcpFlags::SYN)),
                ..Match::default()
            },
            Match {
                dport: Some(Neg::is(PortRange { lo: 85, hi: 100 })),
                tcp_flags: Some(Neg::is(TcpFlags {
                    mask: 0x12,
                    set: 0x10,
                })),
                state: Some(StateSet::of(FlowState::New)),
                ..Match::default()
            },
        ];
        let srcs = ["10.1.2.3", "10.2.0.1", "192.168.1.1", "8.8.8.8"];
        let ports = [79, 80, 85, 90, 95, 101];
        let flagsv = [0x02, 0x10, 0x12, 0x11];
        for a in &ms {
            for b in &ms {
                let both = and_match(a, b).unwrap();
                let neither = not(a);
                for s in srcs {
                    for p in ports {
                        for f in flagsv {
                            let r = rec(s, p, f);
                            assert_eq!(holds(&both, &r), a.matches(&r) && b.matches(&r));
                            assert_eq!(holds(&neither, &r), !a.matches(&r));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn complements_and_ranges_are_minimal_and_exact() {
        let r = range_cidrs(
            u128::from_be_bytes(addr_bytes("192.168.1.1".parse().unwrap())),
            u128::from_be_bytes(addr_bytes("192.168.1.3".parse().unwrap())),
        );
        let shown: Vec<String> = r.iter().map(|c| c.to_string()).collect();
        assert_eq!(shown, ["192.168.1.1", "192.168.1.2/31"]);
        let v4all = v4("0.0.0.0", 0);
        let comp = complement_cidrs(&r, v4all);
        for a in [
            "192.168.1.0",
            "192.168.1.1",
            "192.168.1.3",
            "192.168.1.4",
            "1.1.1.1",
        ] {
            let b = addr_bytes(a.parse().unwrap());
            assert_eq!(
                comp.iter().any(|c| c.contains(&b)),
                !r.iter().any(|c| c.contains(&b)),
                "{a}"
            );
        }
        assert!(complement_cidrs(&[v4all], v4all).is_empty());
        assert_eq!(complement_cidrs(&[], v4all), vec![v4all]);
        assert_eq!(range_cidrs(0, u128::MAX), vec![ALL_ADDRS]);
    }

    #[test]
    fn two_different_negated_interfaces_are_refused() {
        let a = Match {
            in_port: Some(Neg::not(1)),
            ..Match::default()
        };
        let b = Match {
            in_port: Some(Neg::not(2)),
            ..Match::default()
        };
        assert_eq!(and_match(&a, &b), Err(Unrepresentable { field: "-i" }));
        assert_eq!(and_match(&a, &a).unwrap(), vec![a]);
    }
}
