//! Addresses: `-s`/`-d` lists (addresses, CIDRs, container names, `network:NAME`), iprange
//! ranges, and negation of prefix lists as address complements.
use std::net::IpAddr;

use super::{ALL_SPACE, Parts, Side, V4_SPACE, one};
use crate::abi::addr_bytes;
use crate::algebra::{self, Cond, complement_cidrs, range_cidrs};
use crate::iptables::error::{ParseError, ParseErrorKind as K};
use crate::iptables::line::{Line, Opt, Spec};
use crate::iptables::names::Names;
use crate::model::{Cidr, Match, Neg};

/// `-s` and `-d` as written, with the prefixes they stand for.
pub(super) type Lists<'s> = Vec<(&'s Opt<String>, Side, Vec<Cidr>)>;

/// Resolves `-s` and `-d`.
pub(super) fn lists<'s>(
    line: &Line<'_>,
    s: &'s Spec,
    names: &dyn Names,
) -> Result<Lists<'s>, ParseError> {
    let mut out = Vec::new();
    for (o, side) in [(&s.src, Side::Src), (&s.dst, Side::Dst)] {
        if let Some(o) = o {
            out.push((o, side, address_list(line, o, names)?));
        }
    }
    Ok(out)
}

/// The family the first resolved address implies, when the line names none.
pub(super) fn implied_family(lists: &Lists<'_>) -> Option<u8> {
    lists
        .iter()
        .find_map(|(_, _, cidrs)| cidrs.first())
        .map(|c| if c.is_v4() { 4 } else { 6 })
}

/// The address parts: `-s`, `-d` (after the protocol, as iptables prints them), then the
/// iprange ranges.
pub(super) fn push(parts: &mut Parts, lists: Lists<'_>, s: &Spec, family: Option<u8>) {
    for (o, side, cidrs) in lists {
        parts.push(o.vat, addr_cond(side, &cidrs, o.neg, family));
    }
    for (o, side) in [(&s.src_range, Side::Src), (&s.dst_range, Side::Dst)] {
        if let Some(o) = o {
            let (a, b) = o.v;
            let lo = u128::from_be_bytes(addr_bytes(a));
            let hi = u128::from_be_bytes(addr_bytes(b));
            let fam = Some(if a.is_ipv4() { 4 } else { 6 });
            parts.push(o.vat, addr_cond(side, &range_cidrs(lo, hi), o.neg, fam));
        }
    }
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

/// A comma-separated list of addresses, CIDRs (with prefix lengths or dotted masks),
/// container names and `network:NAME`s.
pub(super) fn address_list(
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
pub(super) fn addr_cond(side: Side, cidrs: &[Cidr], negated: bool, family: Option<u8>) -> Cond {
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

/// An address, a CIDR (`/len` or a contiguous dotted mask), a container name, or
/// `network:NAME`, as the prefixes it stands for.
pub(super) fn resolve_addr(v: &str, names: &dyn Names) -> Result<Vec<Cidr>, K> {
    if let Some((a, len)) = v.split_once('/') {
        return cidr(a, len);
    }
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Ok(vec![Cidr::host(ip)]);
    }
    if let Some(net) = v.strip_prefix("network:") {
        return match names.network_subnets(net) {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(K::UnknownNetwork),
        };
    }
    if !looks_like_name(v) {
        return Err(K::BadAddress);
    }
    match names.addrs(v) {
        Some(a) if !a.is_empty() => Ok(a.into_iter().map(Cidr::host).collect()),
        _ if names.network_subnets(v).is_some() => Err(K::NetworkAsAddress),
        _ => Err(K::UnknownName),
    }
}

/// `ADDR/LEN` or `ADDR/MASK` (IPv4, contiguous).
fn cidr(a: &str, len: &str) -> Result<Vec<Cidr>, K> {
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
    Cidr::new(ip, len).map(|c| vec![c]).ok_or(K::BadAddress)
}

/// Docker's container-name alphabet: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`. Anything else that is not
/// an address is a malformed address rather than an unknown name (`1.2.3.400`, `10.0.0.0/x`).
fn looks_like_name(v: &str) -> bool {
    let mut cs = v.chars();
    cs.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && cs.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && !v.chars().all(|c| c.is_ascii_digit() || c == '.')
}
