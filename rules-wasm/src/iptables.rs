//! User rules in iptables syntax: what people already type for Docker's `DOCKER-USER` chain.
//!
//! One rule per line; blank lines and `#` comments are ignored; a leading `iptables` or
//! `ip6tables` word is allowed so that lines can be pasted from shell history. Grammar:
//!
//! - `-I [CHAIN] [POS]` / `--insert` inserts at 1-based `POS` (default 1); `-A [CHAIN]` /
//!   `--append` appends; with neither, the rule is appended. `CHAIN` may be `DOCKER-USER`,
//!   `DOCKER` or `FORWARD`: all go to the USER chain, evaluated before Docker's own rules.
//!   `-t filter` is accepted; other tables are not.
//! - `-s` / `-d` (`--source`, `--destination`): an address, a CIDR, a container name
//!   (resolved through [`Names`]; a name with several addresses expands to one rule per
//!   address), or a comma-separated list of these (one rule each, as iptables does).
//! - `-p tcp|udp|icmp|icmpv6|ipv6-icmp|all|N`.
//! - `--sport` / `--dport` (`--source-port`, `--destination-port`): `N`, `N:M`, `:M`, `N:`;
//!   they need `-p tcp` or `-p udp` on the same line, as in iptables.
//! - `-i` / `-o`: a container name, a dataplane port id, or `docker0` (the gateway port).
//! - `-m tcp`, `-m udp` (ignored), `-m conntrack --ctstate S[,S…]`, `-m state --state S[,S…]`
//!   with `NEW`, `ESTABLISHED`, `RELATED`.
//! - `!` before an option negates it (`! -s 10.0.0.0/8`); the legacy form after the option
//!   (`-s ! 10.0.0.0/8`) is accepted too.
//! - `-j ACCEPT|DROP|REJECT` (`--jump`), required.
//!
//! [`apply`] is atomic: if any line is rejected, the rule list is left exactly as it was.
use std::net::IpAddr;

use thiserror::Error;

use crate::abi::{FlowState, proto};
use crate::model::{Chain, Cidr, Match, Neg, PortRange, Rule, StateSet, Target};

/// Resolves the names a user may write where iptables wants addresses or interfaces.
/// Implemented for [`crate::docker::BridgeNetwork`] (container names, `docker0`).
pub trait Names {
    /// The addresses of the container called `name`, or `None` if there is no such container.
    fn addrs(&self, name: &str) -> Option<Vec<IpAddr>>;
    /// The dataplane port of `name` (a container, or `docker0` for the gateway).
    fn port(&self, name: &str) -> Option<u16>;
}

/// A resolver that knows no names: only literal addresses and port ids are accepted.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoNames;

impl Names for NoNames {
    fn addrs(&self, _: &str) -> Option<Vec<IpAddr>> {
        None
    }
    fn port(&self, _: &str) -> Option<u16> {
        None
    }
}

/// A rejected rule line: where (line, 1-based token position), which token, and why.
/// A token position past the last token, with the token `<end of line>`, means something
/// required was missing.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("line {line}, token {pos} `{token}`: {kind}")]
pub struct ParseError {
    /// 1-based line number in the text given to [`apply`] / [`parse`].
    pub line: usize,
    /// 1-based index of the offending token in the line (whitespace-separated).
    pub pos: usize,
    /// The offending token's text.
    pub token: String,
    /// What is wrong with it.
    pub kind: ParseErrorKind,
}

/// What is wrong with a rule line.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// An option this grammar does not know.
    #[error("unknown option")]
    UnknownOption,
    /// The option needs a value and the line ended (or another option followed).
    #[error("missing value for this option")]
    MissingValue,
    /// Not an address, a CIDR, or a known container name.
    #[error("bad address or CIDR")]
    BadAddress,
    /// Not a port (0–65535) or a range `N:M` with N ≤ M.
    #[error("bad port or port range")]
    BadPort,
    /// `--sport`/`--dport` without `-p tcp` or `-p udp` (plain, not negated).
    #[error("port match needs -p tcp or -p udp")]
    PortWithoutTcpUdp,
    /// A name that the resolver does not know.
    #[error("unknown container name")]
    UnknownName,
    /// No `-j` on the line.
    #[error("missing -j ACCEPT|DROP|REJECT")]
    MissingTarget,
    /// The same option given twice.
    #[error("option given twice")]
    Duplicate,
    /// Not a protocol name or number.
    #[error("unknown protocol")]
    BadProtocol,
    /// A `-j` target other than ACCEPT, DROP, REJECT.
    #[error("unknown target (ACCEPT, DROP or REJECT)")]
    BadTarget,
    /// A chain other than DOCKER-USER, DOCKER, FORWARD.
    #[error("unknown chain (DOCKER-USER, DOCKER or FORWARD)")]
    UnknownChain,
    /// An insert position that is 0, not a number, or past the end of the chain + 1.
    #[error("bad rule position (1 to {max})")]
    BadPosition {
        /// Largest valid position at that point.
        max: usize,
    },
    /// A position after `-A`, which always appends.
    #[error("a rule position is only allowed with -I")]
    PositionWithAppend,
    /// `!` before something that cannot be negated, or twice.
    #[error("cannot be negated here")]
    BadNegation,
    /// `!` with a list or a name of several addresses: iptables cannot express it either.
    #[error("cannot negate several addresses")]
    NegatedMany,
    /// Source and destination can never be the same family (e.g. an IPv4 source with an
    /// IPv6 destination).
    #[error("source and destination are of different IP families")]
    FamilyMismatch,
    /// A table other than `filter`, or a match module other than tcp, udp, conntrack, state.
    #[error("unsupported here (only the filter table and -m tcp|udp|conntrack|state)")]
    Unsupported,
    /// Not a connection-tracking state this dataplane knows.
    #[error("unknown state (NEW, ESTABLISHED or RELATED)")]
    BadState,
}

/// Where a parsed line goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// `-I`: at this 1-based position.
    Insert(usize),
    /// `-A` (or no command): at the end.
    Append,
}

/// One parsed line: where it goes and the rules it expands to (several when a name or list
/// stands for several addresses), all in the USER chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedLine {
    /// Insert or append.
    pub placement: Placement,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

/// Parses `text` and applies its lines, in order, to the user rule list `rules`.
///
/// Atomic: the lines are applied to a copy, and `rules` is replaced only when every line was
/// accepted, so a rejected rule anywhere in the file leaves the running policy in place.
pub fn apply(rules: &mut Vec<Rule>, text: &str, names: &dyn Names) -> Result<(), ParseError> {
    let mut next = rules.clone();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let Some(parsed) = parse_line(line, lineno, names)? else {
            continue;
        };
        match parsed.placement {
            Placement::Append => next.extend(parsed.rules),
            Placement::Insert(pos) => {
                if pos == 0 || pos > next.len() + 1 {
                    let (p, tok) = position_token(line);
                    return Err(ParseError {
                        line: lineno,
                        pos: p,
                        token: tok,
                        kind: ParseErrorKind::BadPosition {
                            max: next.len() + 1,
                        },
                    });
                }
                let at = pos - 1;
                next.splice(at..at, parsed.rules);
            }
        }
    }
    *rules = next;
    Ok(())
}

/// Parses `text` into a fresh USER rule list (what [`apply`] does on an empty list).
pub fn parse(text: &str, names: &dyn Names) -> Result<Vec<Rule>, ParseError> {
    let mut rules = Vec::new();
    apply(&mut rules, text, names)?;
    Ok(rules)
}

/// The token that holds the insert position of `line` (for error messages).
fn position_token(line: &str) -> (usize, String) {
    let toks: Vec<&str> = strip_comment(line).split_whitespace().collect();
    let cmd = toks
        .iter()
        .position(|t| *t == "-I" || *t == "--insert")
        .unwrap_or(0);
    for (i, t) in toks.iter().enumerate().skip(cmd + 1).take(2) {
        if t.parse::<usize>().is_ok() {
            return (i + 1, (*t).to_string());
        }
    }
    (
        cmd + 1,
        toks.get(cmd).map_or_else(String::new, |t| (*t).to_string()),
    )
}

fn strip_comment(line: &str) -> &str {
    match line.find('#') {
        Some(i) => &line[..i],
        None => line,
    }
}

/// The options of one line as they are being collected: each field remembers the token
/// position it came from, for duplicate and consistency errors.
#[derive(Default)]
struct Options<'a> {
    placement: Option<Placement>,
    src: Option<(usize, bool, &'a str)>,
    dst: Option<(usize, bool, &'a str)>,
    proto: Option<(usize, Neg<u8>)>,
    all_proto: bool,
    sport: Option<(usize, Neg<PortRange>)>,
    dport: Option<(usize, Neg<PortRange>)>,
    in_port: Option<(usize, Neg<u16>)>,
    out_port: Option<(usize, Neg<u16>)>,
    state: Option<(usize, StateSet)>,
    target: Option<Target>,
}

/// Parses one line; `Ok(None)` for blank and comment lines.
pub fn parse_line(
    line: &str,
    lineno: usize,
    names: &dyn Names,
) -> Result<Option<ParsedLine>, ParseError> {
    let toks: Vec<&str> = strip_comment(line).split_whitespace().collect();
    if toks.is_empty() {
        return Ok(None);
    }
    let err = |i: usize, kind: ParseErrorKind| ParseError {
        line: lineno,
        pos: i + 1,
        token: toks
            .get(i)
            .map_or_else(|| "<end of line>".to_string(), |t| (*t).to_string()),
        kind,
    };
    let mut o = Options::default();
    let mut i = 0;
    if matches!(toks[0], "iptables" | "ip6tables") {
        i = 1;
    }
    let mut negate_at: Option<usize> = None;
    while i < toks.len() {
        let tok = toks[i];
        if tok == "!" {
            if negate_at.is_some() {
                return Err(err(i, ParseErrorKind::BadNegation));
            }
            negate_at = Some(i);
            i += 1;
            continue;
        }
        let opt_at = i;
        let prefix_neg = negate_at.take().is_some();
        // The value of an option, with the legacy `-s ! x` negation after the option.
        let value = |i: &mut usize, negatable: bool| -> Result<(bool, usize, &str), ParseError> {
            let mut neg = prefix_neg;
            *i += 1;
            if toks.get(*i) == Some(&"!") {
                if !negatable || neg {
                    return Err(err(*i, ParseErrorKind::BadNegation));
                }
                neg = true;
                *i += 1;
            }
            match toks.get(*i) {
                Some(v) if !v.starts_with('-') || v.parse::<i64>().is_ok() => Ok((neg, *i, v)),
                _ => Err(err(opt_at, ParseErrorKind::MissingValue)),
            }
        };
        let non_negatable = || -> Result<(), ParseError> {
            if prefix_neg {
                Err(err(opt_at, ParseErrorKind::BadNegation))
            } else {
                Ok(())
            }
        };
        match tok {
            "-I" | "--insert" | "-A" | "--append" => {
                non_negatable()?;
                if o.placement.is_some() {
                    return Err(err(i, ParseErrorKind::Duplicate));
                }
                let insert = tok == "-I" || tok == "--insert";
                i += 1;
                if let Some(c) = toks
                    .get(i)
                    .filter(|t| !t.starts_with('-') && **t != "!" && t.parse::<usize>().is_err())
                {
                    if !matches!(*c, "DOCKER-USER" | "DOCKER" | "FORWARD") {
                        return Err(err(i, ParseErrorKind::UnknownChain));
                    }
                    i += 1;
                }
                let mut placement = if insert {
                    Placement::Insert(1)
                } else {
                    Placement::Append
                };
                if let Some(n) = toks.get(i).and_then(|t| t.parse::<usize>().ok()) {
                    if !insert {
                        return Err(err(i, ParseErrorKind::PositionWithAppend));
                    }
                    placement = Placement::Insert(n);
                    i += 1;
                }
                o.placement = Some(placement);
                continue;
            }
            "-t" | "--table" => {
                non_negatable()?;
                let (_, vi, v) = value(&mut i, false)?;
                if v != "filter" {
                    return Err(err(vi, ParseErrorKind::Unsupported));
                }
            }
            "-s" | "--source" | "--src" | "-d" | "--destination" | "--dst" => {
                let (neg, vi, v) = value(&mut i, true)?;
                let slot = if matches!(tok, "-s" | "--source" | "--src") {
                    &mut o.src
                } else {
                    &mut o.dst
                };
                if slot.is_some() {
                    return Err(err(opt_at, ParseErrorKind::Duplicate));
                }
                *slot = Some((vi, neg, v));
            }
            "-p" | "--protocol" => {
                let (neg, vi, v) = value(&mut i, true)?;
                if o.proto.is_some() || o.all_proto {
                    return Err(err(opt_at, ParseErrorKind::Duplicate));
                }
                match parse_proto(v) {
                    Some(None) if neg => return Err(err(vi, ParseErrorKind::BadNegation)),
                    Some(None) => o.all_proto = true,
                    Some(Some(p)) => {
                        o.proto = Some((
                            opt_at,
                            Neg {
                                value: p,
                                negated: neg,
                            },
                        ))
                    }
                    None => return Err(err(vi, ParseErrorKind::BadProtocol)),
                }
            }
            "--sport" | "--source-port" | "--dport" | "--destination-port" => {
                let (neg, vi, v) = value(&mut i, true)?;
                let range = parse_range(v).ok_or_else(|| err(vi, ParseErrorKind::BadPort))?;
                let slot = if matches!(tok, "--sport" | "--source-port") {
                    &mut o.sport
                } else {
                    &mut o.dport
                };
                if slot.is_some() {
                    return Err(err(opt_at, ParseErrorKind::Duplicate));
                }
                *slot = Some((
                    opt_at,
                    Neg {
                        value: range,
                        negated: neg,
                    },
                ));
            }
            "-i" | "--in-interface" | "-o" | "--out-interface" => {
                let (neg, vi, v) = value(&mut i, true)?;
                let port = match v.parse::<u16>() {
                    Ok(p) => p,
                    Err(_) => names
                        .port(v)
                        .ok_or_else(|| err(vi, ParseErrorKind::UnknownName))?,
                };
                let slot = if matches!(tok, "-i" | "--in-interface") {
                    &mut o.in_port
                } else {
                    &mut o.out_port
                };
                if slot.is_some() {
                    return Err(err(opt_at, ParseErrorKind::Duplicate));
                }
                *slot = Some((
                    opt_at,
                    Neg {
                        value: port,
                        negated: neg,
                    },
                ));
            }
            "-m" | "--match" => {
                non_negatable()?;
                let (_, vi, v) = value(&mut i, false)?;
                if !matches!(v, "tcp" | "udp" | "conntrack" | "state") {
                    return Err(err(vi, ParseErrorKind::Unsupported));
                }
            }
            "--ctstate" | "--state" => {
                let (neg, vi, v) = value(&mut i, true)?;
                if o.state.is_some() {
                    return Err(err(opt_at, ParseErrorKind::Duplicate));
                }
                let mut set = StateSet(0);
                for s in v.split(',') {
                    set = set.with(match s {
                        "NEW" => FlowState::New,
                        "ESTABLISHED" => FlowState::Established,
                        "RELATED" => FlowState::Related,
                        _ => return Err(err(vi, ParseErrorKind::BadState)),
                    });
                }
                o.state = Some((opt_at, if neg { set.complement() } else { set }));
            }
            "-j" | "--jump" => {
                non_negatable()?;
                if o.target.is_some() {
                    return Err(err(opt_at, ParseErrorKind::Duplicate));
                }
                let (_, vi, v) = value(&mut i, false)?;
                o.target = Some(match v {
                    "ACCEPT" => Target::Accept,
                    "DROP" => Target::Drop,
                    "REJECT" => Target::Reject,
                    _ => return Err(err(vi, ParseErrorKind::BadTarget)),
                });
            }
            _ => return Err(err(i, ParseErrorKind::UnknownOption)),
        }
        i += 1;
    }
    if let Some(at) = negate_at {
        return Err(err(at, ParseErrorKind::MissingValue));
    }
    let Some(target) = o.target else {
        return Err(err(toks.len(), ParseErrorKind::MissingTarget));
    };
    for (at, _) in [o.sport, o.dport].into_iter().flatten() {
        match o.proto {
            Some((
                _,
                Neg {
                    value: proto::TCP | proto::UDP,
                    negated: false,
                },
            )) => {}
            _ => return Err(err(at, ParseErrorKind::PortWithoutTcpUdp)),
        }
    }

    let resolve =
        |slot: Option<(usize, bool, &str)>| -> Result<Vec<Option<Neg<Cidr>>>, ParseError> {
            let Some((vi, neg, v)) = slot else {
                return Ok(vec![None]);
            };
            let mut out = Vec::new();
            for item in v.split(',') {
                for c in resolve_addr(item, names).map_err(|k| err(vi, k))? {
                    out.push(Some(Neg {
                        value: c,
                        negated: neg,
                    }));
                }
            }
            if neg && out.len() > 1 {
                return Err(err(vi, ParseErrorKind::NegatedMany));
            }
            Ok(out)
        };
    let srcs = resolve(o.src)?;
    let dsts = resolve(o.dst)?;

    let base = Match {
        proto: o.proto.map(|(_, p)| p),
        sport: o.sport.map(|(_, p)| p),
        dport: o.dport.map(|(_, p)| p),
        in_port: o.in_port.map(|(_, p)| p),
        out_port: o.out_port.map(|(_, p)| p),
        state: o.state.map(|(_, s)| s),
        ..Match::default()
    };
    let origin = strip_comment(line).trim().to_string();
    let mut rules = Vec::new();
    for s in &srcs {
        for d in &dsts {
            // A plain v4 prefix and a plain v6 prefix can never both match one packet.
            if let (Some(s), Some(d)) = (s, d)
                && !s.negated
                && !d.negated
                && s.value.is_v4() != d.value.is_v4()
            {
                continue;
            }
            let m = Match {
                src: *s,
                dst: *d,
                ..base
            };
            rules.push(Rule::new(Chain::User, m, target, origin.clone()));
        }
    }
    if rules.is_empty() {
        let at = o.dst.map_or(0, |(vi, _, _)| vi);
        return Err(err(at, ParseErrorKind::FamilyMismatch));
    }
    Ok(Some(ParsedLine {
        placement: o.placement.unwrap_or(Placement::Append),
        rules,
    }))
}

/// `Some(None)` for "all protocols", `Some(Some(n))` for one, `None` when unknown.
fn parse_proto(v: &str) -> Option<Option<u8>> {
    match v.to_ascii_lowercase().as_str() {
        "all" | "0" => Some(None),
        "tcp" => Some(Some(proto::TCP)),
        "udp" => Some(Some(proto::UDP)),
        "icmp" => Some(Some(proto::ICMP)),
        "icmpv6" | "ipv6-icmp" => Some(Some(proto::ICMPV6)),
        n => n.parse::<u8>().ok().map(Some),
    }
}

/// `N`, `N:M`, `:M` (0..=M) or `N:` (N..=65535), with N ≤ M.
fn parse_range(v: &str) -> Option<PortRange> {
    let port = |s: &str, dflt: u16| {
        if s.is_empty() {
            Some(dflt)
        } else {
            s.parse::<u16>().ok()
        }
    };
    let r = match v.split_once(':') {
        None => PortRange::single(v.parse().ok()?),
        Some((a, b)) if !(a.is_empty() && b.is_empty()) => PortRange {
            lo: port(a, 0)?,
            hi: port(b, u16::MAX)?,
        },
        Some(_) => return None,
    };
    (r.lo <= r.hi).then_some(r)
}

/// An address, a CIDR, or a container name, as the prefixes it stands for.
fn resolve_addr(v: &str, names: &dyn Names) -> Result<Vec<Cidr>, ParseErrorKind> {
    if let Some((a, len)) = v.split_once('/') {
        let ip: IpAddr = a.parse().map_err(|_| ParseErrorKind::BadAddress)?;
        let len: u8 = len.parse().map_err(|_| ParseErrorKind::BadAddress)?;
        return Cidr::new(ip, len)
            .map(|c| vec![c])
            .ok_or(ParseErrorKind::BadAddress);
    }
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Ok(vec![Cidr::host(ip)]);
    }
    if !looks_like_name(v) {
        return Err(ParseErrorKind::BadAddress);
    }
    match names.addrs(v) {
        Some(a) if !a.is_empty() => Ok(a.into_iter().map(Cidr::host).collect()),
        _ => Err(ParseErrorKind::UnknownName),
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
