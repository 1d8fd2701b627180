//! `-i`/`-o`: dataplane ports by id or by name (containers, kernel bridges, Docker networks),
//! gateway wildcards, and the host's interfaces as reverse-path source (destination) prefixes.
use super::{Ctx, Parts, Side, negate_if, one};
use crate::algebra::{self, Cond, complement_cidrs};
use crate::docker::LINK_LOCAL;
use crate::iptables::error::{ParseError, ParseErrorKind as K, Warning};
use crate::iptables::line::{Line, Opt, Spec};
use crate::model::{Cidr, Match, Neg};

/// Linux's limit on an interface name (`IFNAMSIZ` - 1), which iptables enforces.
const IFNAME_MAX: usize = 15;

/// The `-i` and `-o` parts.
pub(super) fn push(
    line: &Line<'_>,
    s: &Spec,
    cx: &mut Ctx<'_>,
    parts: &mut Parts,
) -> Result<(), ParseError> {
    for (o, out) in [(&s.in_if, false), (&s.out_if, true)] {
        if let Some(o) = o {
            let c = interface(line, o, out, cx)?;
            parts.push(o.vat, negate_if(line, o.vat, o.neg, c)?);
        }
    }
    Ok(())
}

/// A match on the ingress port (`-i`) or the egress port (`-o`, when `out`).
fn on_port(out: bool, p: u16) -> Match {
    one(|m| {
        if out {
            m.out_port = Some(Neg::is(p));
        } else {
            m.in_port = Some(Neg::is(p));
        }
    })
}

/// `-i NAME` (or `-o NAME` when `out`), positive: `+` (any), a dataplane port id, a name the
/// resolver knows (a container, a kernel bridge, a Docker network: see
/// [`crate::iptables::Names::ports`]), `network:NAME`, or a host interface, possibly a
/// wildcard (`eth+`, and `docker+`, `br-+` for the gateways whose bridge names match).
fn interface(
    line: &Line<'_>,
    o: &Opt<String>,
    out: bool,
    cx: &mut Ctx<'_>,
) -> Result<Cond, ParseError> {
    let name = o.v.as_str();
    if name == "+" {
        return Ok(algebra::any());
    }
    if let Ok(p) = name.parse::<u16>() {
        return Ok(vec![on_port(out, p)]);
    }
    if let Some(ports) = cx.names.ports(name) {
        return named_ports(line, o, out, &ports, cx);
    }
    if let Some(net) = name.strip_prefix("network:") {
        let ports = cx
            .names
            .network_ports(net)
            .ok_or_else(|| line.err(o.vat, K::UnknownNetwork))?;
        return named_ports(line, o, out, &ports, cx);
    }
    if name.len() > IFNAME_MAX {
        return Err(line.err(o.vat, K::UnknownName));
    }
    host_interface(line, o, out, cx)
}

/// The ports a name stands for, one match each; a negated name must stand for one port.
fn named_ports(
    line: &Line<'_>,
    o: &Opt<String>,
    out: bool,
    ports: &[u16],
    cx: &mut Ctx<'_>,
) -> Result<Cond, ParseError> {
    if o.neg && ports.len() > 1 {
        return Err(line.err(o.vat, K::NegatedManyPorts));
    }
    if ports.is_empty() {
        cx.warnings.push(Warning {
            line: line.lineno,
            message: format!(
                "{} has no container attached yet: the rule matches nothing until one is",
                o.v
            ),
        });
    }
    Ok(ports.iter().map(|p| on_port(out, *p)).collect())
}

/// A host interface (`eth0`), or a wildcard (`eth+`, `docker+`): "through a gateway, from (to)
/// an address the host routes through that interface", plus, for a wildcard, the gateways
/// whose bridge names match. With one gateway the match is pinned to it; with several only
/// the addresses say it (the dataplane's source guard keeps containers from sending from
/// outside addresses, and one condition on several gateways could not be negated).
/// IPv6 link-local prefixes never count: routers do not forward link-local sources.
fn host_interface(
    line: &Line<'_>,
    o: &Opt<String>,
    out: bool,
    cx: &mut Ctx<'_>,
) -> Result<Cond, ParseError> {
    let name = o.v.as_str();
    let gateways = cx.names.gateways();
    let mut c: Cond = match name.strip_suffix('+') {
        Some(prefix) => gateways
            .iter()
            .filter(|(bridge, _)| bridge.starts_with(prefix))
            .map(|(_, p)| on_port(out, *p))
            .collect(),
        None => Vec::new(),
    };
    if o.neg && c.len() > 1 {
        return Err(line.err(o.vat, K::NegatedManyPorts));
    }
    let routes = cx.names.host_routes(name);
    let (Some(routes), false) = (routes, gateways.is_empty()) else {
        if c.is_empty() {
            return Err(line.err(o.vat, K::UnknownName));
        }
        return Ok(c);
    };
    let routes = without_link_local(&routes);
    if routes.is_empty() {
        cx.warnings.push(Warning {
            line: line.lineno,
            message: format!("the host routes nothing through {name}: the rule matches nothing"),
        });
    }
    let pin = match gateways.as_slice() {
        [(_, gw)] => on_port(out, *gw),
        _ => Match::default(),
    };
    let side = if out { Side::Dst } else { Side::Src };
    for r in routes {
        let mut m = pin;
        side.set(&mut m, Neg::is(r));
        c.push(m);
    }
    Ok(c)
}

/// `routes` less IPv6 link-local (`fe80::/10`).
fn without_link_local(routes: &[Cidr]) -> Vec<Cidr> {
    let mut out = Vec::with_capacity(routes.len());
    for r in routes {
        if r.len >= LINK_LOCAL.len && r.addr & Cidr::mask_of(LINK_LOCAL.len) == LINK_LOCAL.addr {
            continue;
        }
        if r.len < LINK_LOCAL.len && LINK_LOCAL.addr & Cidr::mask_of(r.len) == r.addr {
            out.extend(complement_cidrs(&[LINK_LOCAL], *r));
            continue;
        }
        out.push(*r);
    }
    out
}
