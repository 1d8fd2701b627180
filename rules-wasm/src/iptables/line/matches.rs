//! The options of each match module, read only when the module is loaded (with `-m`, or by
//! `-p` for `tcp`, `udp`, `icmp`, `icmp6`), as iptables requires.
use super::cursor::Cursor;
use super::{Opt, Pos, Spec, Which};
use crate::iptables::error::{ParseError, ParseErrorKind as K};
use crate::iptables::values;
use crate::model::TcpFlags;

/// One module's option reader: `Ok(false)` (and nothing read) when `tok` is not one of its
/// options.
type Reader = fn(&mut Cursor<'_, '_>, &mut Spec, Pos, &str) -> Result<bool, ParseError>;

/// Every reader, with the modules that make its options valid (any one of them loaded).
const READERS: &[(&[&str], Reader)] = &[
    (&["tcp", "udp"], ports),
    (&["tcp"], tcp_flags),
    (&["icmp"], icmp),
    (&["icmp6"], icmp6),
    (&["multiport"], multiport),
    (&["iprange"], iprange),
    (&["conntrack"], conntrack),
    (&["state"], state),
    (&["comment"], comment),
    (&["mac"], mac),
    (&["set"], set),
    (&["limit"], limit),
    (&["connlimit"], connlimit),
];

/// The option `tok` of a loaded match module; `false` when no loaded module has it.
pub(super) fn option(
    c: &mut Cursor<'_, '_>,
    s: &mut Spec,
    at: Pos,
    tok: &str,
) -> Result<bool, ParseError> {
    for (modules, read) in READERS {
        if modules.iter().any(|m| c.loaded(m)) && read(c, s, at, tok)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `-m tcp|udp`: `--sport`, `--dport`.
fn ports(c: &mut Cursor<'_, '_>, s: &mut Spec, at: Pos, tok: &str) -> Result<bool, ParseError> {
    let slot = match tok {
        "--sport" | "--source-port" => &mut s.sport,
        "--dport" | "--destination-port" => &mut s.dport,
        _ => return Ok(false),
    };
    *slot = Some(c.opt(slot.is_some(), at, true, values::port_range, K::BadPort)?);
    Ok(true)
}

/// `-m tcp`: `--syn`, `--tcp-flags MASK COMP`.
fn tcp_flags(c: &mut Cursor<'_, '_>, s: &mut Spec, at: Pos, tok: &str) -> Result<bool, ParseError> {
    if !matches!(tok, "--syn" | "--tcp-flags") {
        return Ok(false);
    }
    if s.tcp_flags.is_some() {
        return Err(c.line.err(at, K::Duplicate));
    }
    if tok == "--syn" {
        let neg = c.take_negation();
        c.flag(at);
        s.tcp_flags = Some(Opt {
            at,
            vat: at,
            neg,
            v: TcpFlags::SYN,
        });
        return Ok(true);
    }
    let (neg, vat, mask) = c.value(at, true)?;
    let mask = values::tcp_flags(&mask).ok_or_else(|| c.line.err(vat, K::BadTcpFlags))?;
    let set = c.second(at, values::tcp_flags, K::BadTcpFlags)?;
    s.tcp_flags = Some(Opt {
        at,
        vat,
        neg,
        v: TcpFlags { mask, set },
    });
    Ok(true)
}

/// `-m icmp`: `--icmp-type`.
fn icmp(c: &mut Cursor<'_, '_>, s: &mut Spec, at: Pos, tok: &str) -> Result<bool, ParseError> {
    if tok != "--icmp-type" {
        return Ok(false);
    }
    let o = c.opt(
        s.icmp.is_some(),
        at,
        true,
        values::icmp_type,
        K::BadIcmpType,
    )?;
    s.icmp = Some(o.map(|t| (t, false)));
    Ok(true)
}

/// `-m icmp6`: `--icmpv6-type`.
fn icmp6(c: &mut Cursor<'_, '_>, s: &mut Spec, at: Pos, tok: &str) -> Result<bool, ParseError> {
    if tok != "--icmpv6-type" {
        return Ok(false);
    }
    let o = c.opt(
        s.icmp.is_some(),
        at,
        true,
        values::icmpv6_type,
        K::BadIcmpType,
    )?;
    s.icmp = Some(o.map(|t| (t, true)));
    Ok(true)
}

/// `-m multiport`: `--sports`, `--dports`, `--ports`, at most 15 ports (a range counts two).
fn multiport(c: &mut Cursor<'_, '_>, s: &mut Spec, at: Pos, tok: &str) -> Result<bool, ParseError> {
    let which = match tok {
        "--sports" | "--source-ports" => Which::Src,
        "--ports" => Which::Either,
        "--dports" | "--destination-ports" => Which::Dst,
        _ => return Ok(false),
    };
    let o = c.opt(
        s.multiport.is_some(),
        at,
        true,
        values::port_list,
        K::BadPort,
    )?;
    let weight: usize = o.v.iter().map(|r| 1 + usize::from(r.lo != r.hi)).sum();
    if o.v.len() > 15 || weight > 15 {
        return Err(c.line.err(o.vat, K::TooManyPorts));
    }
    s.multiport = Some(o.map(|v| (which, v)));
    Ok(true)
}

/// `-m iprange`: `--src-range`, `--dst-range`.
fn iprange(c: &mut Cursor<'_, '_>, s: &mut Spec, at: Pos, tok: &str) -> Result<bool, ParseError> {
    let slot = match tok {
        "--src-range" => &mut s.src_range,
        "--dst-range" => &mut s.dst_range,
        _ => return Ok(false),
    };
    *slot = Some(c.opt(slot.is_some(), at, true, values::ip_range, K::BadAddress)?);
    Ok(true)
}

/// `-m conntrack`: `--ctstate` (not SNAT/DNAT), `--ctdir`, `--ctorigdst`, `--ctorigdstport`.
/// Other `--ct*` options are refused by the caller as unsupported.
fn conntrack(c: &mut Cursor<'_, '_>, s: &mut Spec, at: Pos, tok: &str) -> Result<bool, ParseError> {
    match tok {
        "--ctstate" if c.line.text(at + 1).is_some_and(|v| v.contains("NAT")) => {
            return Err(c.line.err(
                at + 1,
                K::Unsupported("--ctstate SNAT/DNAT; for published ports write --ctorigdstport"),
            ));
        }
        "--ctstate" => {
            s.state = Some(c.opt(s.state.is_some(), at, true, values::states, K::BadState)?);
        }
        "--ctdir" => {
            s.ctdir = Some(c.opt(
                s.ctdir.is_some(),
                at,
                false,
                values::direction,
                K::BadDirection,
            )?);
        }
        "--ctorigdst" => {
            s.ctorigdst = Some(c.text_opt(s.ctorigdst.is_some(), at, K::BadAddress)?)
        }
        "--ctorigdstport" => {
            s.ctorigdstport = Some(c.opt(
                s.ctorigdstport.is_some(),
                at,
                true,
                values::port_range,
                K::BadPort,
            )?);
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// `-m state`: `--state`.
fn state(c: &mut Cursor<'_, '_>, s: &mut Spec, at: Pos, tok: &str) -> Result<bool, ParseError> {
    if tok != "--state" {
        return Ok(false);
    }
    s.state = Some(c.opt(s.state.is_some(), at, true, values::states, K::BadState)?);
    Ok(true)
}

/// `-m comment`: `--comment TEXT` (up to 256 characters, as iptables).
fn comment(c: &mut Cursor<'_, '_>, s: &mut Spec, at: Pos, tok: &str) -> Result<bool, ParseError> {
    if tok != "--comment" {
        return Ok(false);
    }
    c.no_negation(at)?;
    let (_, vat, v) = c.value(at, false)?;
    if s.comment.is_some() {
        return Err(c.line.err(at, K::Duplicate));
    }
    if v.len() > 256 {
        return Err(c
            .line
            .err(vat, K::Unsupported("comments longer than 256 characters")));
    }
    s.comment = Some(v);
    Ok(true)
}

/// `-m mac`: `--mac-source`.
fn mac(c: &mut Cursor<'_, '_>, s: &mut Spec, at: Pos, tok: &str) -> Result<bool, ParseError> {
    if tok != "--mac-source" {
        return Ok(false);
    }
    s.mac = Some(c.opt(s.mac.is_some(), at, true, values::mac, K::BadMac)?);
    Ok(true)
}

/// `-m set`: `--match-set NAME FLAGS` (or the old `--set`), any number of times.
fn set(c: &mut Cursor<'_, '_>, s: &mut Spec, at: Pos, tok: &str) -> Result<bool, ParseError> {
    if !matches!(tok, "--match-set" | "--set") {
        return Ok(false);
    }
    let (neg, vat, name) = c.value(at, true)?;
    let dirs = c.second(at, values::set_flags, K::BadSetFlags)?;
    s.sets.push(Opt {
        at,
        vat,
        neg,
        v: (name, dirs),
    });
    Ok(true)
}

/// `-m limit`: `--limit RATE`, `--limit-burst N` (1 to 10,000).
fn limit(c: &mut Cursor<'_, '_>, s: &mut Spec, at: Pos, tok: &str) -> Result<bool, ParseError> {
    if !matches!(tok, "--limit" | "--limit-burst") {
        return Ok(false);
    }
    let line = c.line;
    c.no_negation(at)?;
    let (_, vat, v) = c.value(at, false)?;
    let Some(limit) = s.limit.as_mut() else {
        return Err(line.err(at, K::UnknownOption));
    };
    if tok == "--limit" {
        limit.1 = values::rate(&v).ok_or_else(|| line.err(vat, K::BadNumber))?;
    } else {
        limit.2 = v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| line.err(vat, K::BadNumber))?;
    }
    Ok(true)
}

/// `-m connlimit`: `--connlimit-above|--connlimit-upto N`, `--connlimit-mask LEN`,
/// `--connlimit-saddr|--connlimit-daddr`.
fn connlimit(c: &mut Cursor<'_, '_>, s: &mut Spec, at: Pos, tok: &str) -> Result<bool, ParseError> {
    let line = c.line;
    match tok {
        "--connlimit-above" | "--connlimit-upto" | "--connlimit-mask" => {
            let mask = tok == "--connlimit-mask";
            let (neg, vat, v) = c.value(at, !mask)?;
            let Some(spec) = s.connlimit.as_mut() else {
                return Err(line.err(at, K::UnknownOption));
            };
            if mask {
                if spec.mask.is_some() {
                    return Err(line.err(at, K::Duplicate));
                }
                let len = v
                    .parse::<u8>()
                    .ok()
                    .filter(|l| *l <= 128)
                    .ok_or_else(|| line.err(vat, K::BadNumber))?;
                spec.mask = Some(Opt {
                    at,
                    vat,
                    neg,
                    v: len,
                });
            } else {
                if spec.limit.is_some() {
                    return Err(line.err(at, K::Duplicate));
                }
                let n = v.parse::<u32>().map_err(|_| line.err(vat, K::BadNumber))?;
                spec.limit = Some(Opt {
                    at,
                    vat,
                    neg,
                    v: (tok == "--connlimit-above", n),
                });
            }
        }
        "--connlimit-saddr" | "--connlimit-daddr" => {
            c.no_negation(at)?;
            c.flag(at);
            if let Some(spec) = s.connlimit.as_mut() {
                if spec.daddr.is_some() {
                    return Err(line.err(at, K::Duplicate));
                }
                spec.daddr = Some((at, tok == "--connlimit-daddr"));
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}
