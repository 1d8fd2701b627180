//! What iptables checks across options once the line is read: every module that needs an
//! option got one, protocol modules and port, ICMP and TCP-flag options have their `-p`.
use super::{Line, Spec};
use crate::abi::proto;
use crate::iptables::error::{ParseError, ParseErrorKind as K};
use crate::iptables::values;

/// Every cross-option check, in iptables' order.
pub(super) fn check(line: &Line<'_>, s: &Spec) -> Result<(), ParseError> {
    let p = plain_protocol(s);
    connlimit_has_limit(line, s)?;
    modules(line, s, p)?;
    ports_have_protocol(line, s, p)?;
    icmp_has_protocol(line, s, p)?;
    tcp_flags_have_protocol(line, s, p)
}

/// The protocol `-p` names, unless negated or `all`.
fn plain_protocol(s: &Spec) -> Option<u8> {
    s.proto
        .as_ref()
        .and_then(|p| (!p.neg).then_some(p.v).flatten())
}

/// `-m connlimit` needs `--connlimit-above` or `--connlimit-upto`.
fn connlimit_has_limit(line: &Line<'_>, s: &Spec) -> Result<(), ParseError> {
    match &s.connlimit {
        Some(c) if c.limit.is_none() => Err(line.err(c.at, K::MissingValue)),
        _ => Ok(()),
    }
}

/// Modules that mean nothing without an option got one; `-m tcp|udp|icmp|icmp6` have the
/// same `-p`.
fn modules(line: &Line<'_>, s: &Spec, p: Option<u8>) -> Result<(), ParseError> {
    for (m, at, used) in &s.modules {
        if !used && values::NEED_AN_OPTION.contains(&m.as_str()) {
            return Err(line.err(*at, K::MissingValue));
        }
        let needs = match m.as_str() {
            "tcp" => Some(proto::TCP),
            "udp" => Some(proto::UDP),
            "icmp" => Some(proto::ICMP),
            "icmp6" => Some(proto::ICMPV6),
            _ => None,
        };
        if needs.is_some() && needs != p {
            return Err(line.err(
                *at,
                K::Unsupported("-m tcp|udp|icmp|icmp6 needs the same -p"),
            ));
        }
    }
    Ok(())
}

/// Port options need `-p tcp` or `-p udp`.
fn ports_have_protocol(line: &Line<'_>, s: &Spec, p: Option<u8>) -> Result<(), ParseError> {
    if matches!(p, Some(proto::TCP | proto::UDP)) {
        return Ok(());
    }
    let first = [
        s.sport.as_ref().map(|o| o.at),
        s.dport.as_ref().map(|o| o.at),
        s.multiport.as_ref().map(|o| o.at),
    ]
    .into_iter()
    .flatten()
    .next();
    match first {
        Some(at) => Err(line.err(at, K::PortWithoutTcpUdp)),
        None => Ok(()),
    }
}

/// `--icmp-type` needs `-p icmp`, `--icmpv6-type` `-p icmpv6`.
fn icmp_has_protocol(line: &Line<'_>, s: &Spec, p: Option<u8>) -> Result<(), ParseError> {
    let Some(o) = &s.icmp else {
        return Ok(());
    };
    let want = if o.v.1 { proto::ICMPV6 } else { proto::ICMP };
    if p == Some(want) {
        return Ok(());
    }
    Err(line.err(
        o.at,
        K::Unsupported("--icmp-type needs -p icmp (--icmpv6-type: -p icmpv6)"),
    ))
}

/// `--syn` and `--tcp-flags` need `-p tcp`.
fn tcp_flags_have_protocol(line: &Line<'_>, s: &Spec, p: Option<u8>) -> Result<(), ParseError> {
    match &s.tcp_flags {
        Some(o) if p != Some(proto::TCP) => Err(line.err(o.at, K::PortWithoutTcpUdp)),
        _ => Ok(()),
    }
}
