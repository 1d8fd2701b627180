//! What connection tracking knows and the packet no longer shows: the original destination of
//! a DNATed packet (`--ctorigdst`, `--ctorigdstport`), and the source's open connections
//! (`-m connlimit`).
use std::net::IpAddr;

use super::{Parts, addresses, neg, negate_if, one};
use crate::abi::addr_bytes;
use crate::algebra::{self, Cond};
use crate::iptables::error::{ParseError, ParseErrorKind as K};
use crate::iptables::line::{ConnSpec, Line, Spec};
use crate::iptables::names::Names;
use crate::model::{Cidr, CountRange, Match, Neg, PortRange};

/// The `--ctorigdstport` and `--ctorigdst` parts.
pub(super) fn push(
    line: &Line<'_>,
    s: &Spec,
    names: &dyn Names,
    parts: &mut Parts,
) -> Result<(), ParseError> {
    if let Some(o) = &s.ctorigdstport {
        let c = orig_dst_port(s, o.v, names);
        parts.push(o.vat, negate_if(line, o.vat, o.neg, c)?);
    }
    if let Some(o) = &s.ctorigdst {
        let cidrs = addresses::address_list(line, o, names)?;
        let c = orig_dst(s, &cidrs, names);
        parts.push(o.vat, negate_if(line, o.vat, o.neg, c)?);
    }
    Ok(())
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

/// A published port's target, as the DNATed packet shows it: from the gateway of the
/// container's network, to the container's address and port.
fn dnat_target(names: &dyn Names, proto: u8, addr: IpAddr, port: u16) -> Match {
    Match {
        in_port: names.gateway_of(addr).map(Neg::is),
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
    let published = published_for(s, names);
    let mut c: Cond = published
        .iter()
        .filter(|(_, host, ..)| p.contains(*host))
        .map(|&(proto, _, a, port)| dnat_target(names, proto, a, port))
        .collect();
    let mut direct = vec![one(|m| m.dport = Some(Neg::is(p)))];
    for &(proto, _, a, port) in published.iter().filter(|(.., port)| p.contains(*port)) {
        // Only targets whose container port is in P overlap the direct term.
        if let Ok(d) = algebra::and_not(&direct, &dnat_target(names, proto, a, port)) {
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
                .map(|&(proto, _, a, port)| dnat_target(names, proto, a, port)),
        );
    }
    for cidr in x {
        let mut direct = vec![one(|m| m.dst = Some(Neg::is(*cidr)))];
        for &(proto, _, a, port) in &published {
            if cidr.contains(&addr_bytes(a))
                && let Ok(d) = algebra::and_not(&direct, &dnat_target(names, proto, a, port))
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
pub(super) fn connlimit(
    line: &Line<'_>,
    c: &ConnSpec,
    family: Option<u8>,
) -> Result<Cond, ParseError> {
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
