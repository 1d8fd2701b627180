//! The expansion phase: a rule's options, checked by [`super::line`], become one condition
//! ([`Cond`], a disjunction of model matches) by resolving what the bridges know: container
//! and network names and their addresses and ports, kernel bridges, the host's interfaces
//! (reverse path), published ports (what `--ctorigdstport` means after the kernel's DNAT),
//! container MACs, ipsets.
//!
//! Each option becomes a part (a condition, with the token it came from for errors), in a
//! fixed order; the parts are then conjoined. One job per module: [`addresses`] (`-s`, `-d`,
//! ranges, negated lists), [`interfaces`] (`-i`, `-o`), [`conntrack`] (`--ctorigdst`,
//! `--ctorigdstport`, `-m connlimit`), [`sets`] (`-m set`).
use super::error::{ParseError, ParseErrorKind as K, Warning};
use super::ipset::IpSets;
use super::line::{Dir, Line, Spec, TargetSpec, Which};
use super::names::Names;
use crate::algebra::{self, Cond};
use crate::model::{Cidr, Match, Neg, PortRange};

mod addresses;
mod conntrack;
mod interfaces;
mod sets;

pub(crate) use addresses::negate;

/// Most matches one negated list may expand to before it is refused as too large.
const NEGATION_LIMIT: usize = 10_000;

/// The IPv4-mapped part of the address space: the universe of an IPv4-only condition.
pub(crate) const V4_SPACE: Cidr = Cidr::V4_ALL;
/// The whole address space.
pub(crate) const ALL_SPACE: Cidr = Cidr::ALL;

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

    fn port(self, m: &mut Match, r: Neg<PortRange>) {
        match self {
            Side::Src => m.sport = Some(r),
            Side::Dst => m.dport = Some(r),
        }
    }
}

/// The parts of a condition, each with the token position its errors point at.
#[derive(Default)]
struct Parts(Vec<(usize, Cond)>);

impl Parts {
    fn push(&mut self, at: usize, c: Cond) {
        self.0.push((at, c));
    }

    /// Their conjunction, refused past the flat-rule limit.
    fn conjoin(self, line: &Line<'_>) -> Result<Cond, ParseError> {
        let mut cond = algebra::any();
        for (at, part) in self.0 {
            cond = algebra::and(&cond, &part).map_err(|e| line.err(at, e.into()))?;
            if cond.len() > crate::iptables::FLAT_LIMIT {
                return Err(line.err(at, K::TooLarge(crate::iptables::FLAT_LIMIT)));
            }
        }
        Ok(cond)
    }
}

/// The condition of the rule whose options are `s`.
pub(crate) fn condition(line: &Line<'_>, s: &Spec, cx: &mut Ctx<'_>) -> Result<Cond, ParseError> {
    let mut parts = Parts::default();
    if let Some(f) = s.family {
        parts.push(0, vec![one(|m| m.ip_version = Some(Neg::is(f)))]);
    }
    // Addresses first: the family they imply says what a negated address means.
    let lists = addresses::lists(line, s, cx.names)?;
    let family = s.family.or_else(|| addresses::implied_family(&lists));
    if let Some(o) = &s.proto
        && let Some(p) = o.v
    {
        parts.push(o.at, vec![one(|m| m.proto = Some(neg(o.neg, p)))]);
    }
    addresses::push(&mut parts, lists, s, family);
    ports(line, s, &mut parts)?;
    interfaces::push(line, s, cx, &mut parts)?;
    if !state(line, s, cx, &mut parts) {
        return Ok(Vec::new());
    }
    conntrack::push(line, s, cx.names, &mut parts)?;
    flags_and_types(s, &mut parts);
    if let Some(o) = &s.mac {
        let port = cx
            .names
            .port_of_mac(o.v)
            .ok_or_else(|| line.err(o.vat, K::ForeignMac))?;
        parts.push(o.vat, vec![one(|m| m.in_port = Some(neg(o.neg, port)))]);
    }
    for o in &s.sets {
        parts.push(o.vat, sets::condition(line, o, cx.sets, family)?);
    }
    if let Some(c) = &s.connlimit {
        parts.push(c.at, conntrack::connlimit(line, c, family)?);
    }
    limit_has_a_deciding_target(line, s)?;
    let cond = parts.conjoin(line)?;
    same_family(line, s, cond)
}

/// `--sport`, `--dport` and `-m multiport`.
fn ports(line: &Line<'_>, s: &Spec, parts: &mut Parts) -> Result<(), ParseError> {
    for (o, side) in [(&s.sport, Side::Src), (&s.dport, Side::Dst)] {
        if let Some(o) = o {
            parts.push(o.at, vec![one(|m| side.port(m, neg(o.neg, o.v)))]);
        }
    }
    if let Some(o) = &s.multiport {
        let (which, ranges) = &o.v;
        let mut c = Vec::new();
        for r in ranges {
            let r = Neg::is(*r);
            match which {
                Which::Src => c.push(one(|m| Side::Src.port(m, r))),
                Which::Dst => c.push(one(|m| Side::Dst.port(m, r))),
                Which::Either => {
                    c.push(one(|m| Side::Src.port(m, r)));
                    c.push(one(|m| Side::Dst.port(m, r)));
                }
            }
        }
        parts.push(o.vat, negate_if(line, o.vat, o.neg, c)?);
    }
    Ok(())
}

/// `--ctstate`/`--state` and `--ctdir`; `false` when the rule can match nothing (an empty
/// state set, or `--ctdir REPLY`, with a warning).
fn state(line: &Line<'_>, s: &Spec, cx: &mut Ctx<'_>, parts: &mut Parts) -> bool {
    if let Some(o) = &s.state {
        let set = if o.neg { o.v.complement() } else { o.v };
        if set.0 == 0 {
            return false;
        }
        parts.push(o.at, vec![one(|m| m.state = Some(set))]);
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
            return false;
        }
    }
    true
}

/// `--syn`/`--tcp-flags` and `--icmp-type`/`--icmpv6-type`.
fn flags_and_types(s: &Spec, parts: &mut Parts) {
    if let Some(o) = &s.tcp_flags {
        parts.push(o.at, vec![one(|m| m.tcp_flags = Some(neg(o.neg, o.v)))]);
    }
    if let Some(o) = &s.icmp
        && let Some(t) = o.v.0
    {
        parts.push(o.vat, vec![one(|m| m.icmp = Some(neg(o.neg, t)))]);
    }
}

/// `-m limit` only on rules that decide (or LOG): a rate on a RETURN or a jump has no
/// meaning once chains are flattened.
fn limit_has_a_deciding_target(line: &Line<'_>, s: &Spec) -> Result<(), ParseError> {
    let deciding = matches!(
        s.target.as_ref().map(|t| &t.v),
        Some(
            TargetSpec::Log { .. } | TargetSpec::Accept | TargetSpec::Drop | TargetSpec::Reject(_)
        )
    );
    match s.limit {
        Some((at, ..)) if !deciding => Err(line.err(
            at,
            K::Unsupported(
                "-m limit with RETURN, a chain jump or no target (write it on the rules that decide)",
            ),
        )),
        _ => Ok(()),
    }
}

/// Drops the matches pairing a plain IPv4 source with a plain IPv6 destination (or the
/// reverse), which no packet can satisfy; refuses the rule when nothing else is left.
fn same_family(line: &Line<'_>, s: &Spec, mut cond: Cond) -> Result<Cond, ParseError> {
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
