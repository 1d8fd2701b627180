//! The syntax phase: one line's tokens → a [`Command`] whose rule options are checked the way
//! iptables checks them (each option once, its match module loaded, values well formed), but
//! not yet resolved against containers, interfaces or sets (that is [`super::resolve`]).
use std::net::IpAddr;

use super::error::{ParseError, ParseErrorKind as K};
use super::tokens::Token;
use super::values;
use crate::abi::RejectWith;
use crate::model::{IcmpType, PortRange, StateSet, TcpFlags};

/// A token index in the line (0-based; errors report it 1-based).
pub(crate) type Pos = usize;

/// An option's value with where it was written and whether it was negated.
#[derive(Clone, Debug)]
pub(crate) struct Opt<T> {
    /// The option token.
    pub at: Pos,
    /// The (first) value token.
    pub vat: Pos,
    /// `!` before the option (or, legacy, before the value).
    pub neg: bool,
    /// The value.
    pub v: T,
}

/// Where `-I` puts a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// `-I CHAIN N`: at this 1-based position.
    Insert(usize),
    /// `-A` (or no command): at the end.
    Append,
}

/// The ports a multiport option looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Which {
    Src,
    Dst,
    Either,
}

/// A set match's direction flag (`src`, `dst`) for one dimension of the set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    Src,
    Dst,
}

/// `-m connlimit`'s options.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnSpec {
    /// The `-m connlimit` token.
    pub at: Pos,
    /// `--connlimit-above N` (or `--connlimit-upto N`, `above == false`), negated or not.
    pub limit: Option<Opt<(bool, u32)>>,
    /// `--connlimit-mask LEN`.
    pub mask: Option<Opt<u8>>,
    /// `--connlimit-saddr` (`false`) or `--connlimit-daddr` (`true`), where.
    pub daddr: Option<(Pos, bool)>,
}

/// What `-j` names, before chains are looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TargetSpec {
    Accept,
    Drop,
    Reject(RejectWith),
    Return,
    Log { prefix: String },
    Chain(String),
}

/// A rule's options, as written.
#[derive(Clone, Debug, Default)]
pub(crate) struct Spec {
    /// The family the line is for: 4 after `iptables`, 6 after `ip6tables`, `None` for both.
    pub family: Option<u8>,
    pub src: Option<Opt<String>>,
    pub dst: Option<Opt<String>>,
    /// `Some(None)` is `-p all`.
    pub proto: Option<Opt<Option<u8>>>,
    pub sport: Option<Opt<PortRange>>,
    pub dport: Option<Opt<PortRange>>,
    pub multiport: Option<Opt<(Which, Vec<PortRange>)>>,
    pub src_range: Option<Opt<(IpAddr, IpAddr)>>,
    pub dst_range: Option<Opt<(IpAddr, IpAddr)>>,
    pub in_if: Option<Opt<String>>,
    pub out_if: Option<Opt<String>>,
    pub state: Option<Opt<StateSet>>,
    /// `true` for `--ctdir REPLY`.
    pub ctdir: Option<Opt<bool>>,
    pub ctorigdst: Option<Opt<String>>,
    pub ctorigdstport: Option<Opt<PortRange>>,
    pub tcp_flags: Option<Opt<TcpFlags>>,
    /// The type, and whether it was written as `--icmpv6-type`.
    pub icmp: Option<Opt<(Option<IcmpType>, bool)>>,
    pub mac: Option<Opt<[u8; 6]>>,
    pub sets: Vec<Opt<(String, Vec<Dir>)>>,
    pub comment: Option<String>,
    /// `-m connlimit`: its options as read.
    pub connlimit: Option<ConnSpec>,
    /// `-m limit`: where, and (packets per second, burst), iptables' defaults 3/hour and 5.
    pub limit: Option<(Pos, f64, u32)>,
    pub target: Option<Opt<TargetSpec>>,
    /// Modules loaded with `-m`, where, and whether one of their options followed.
    pub modules: Vec<(String, Pos, bool)>,
}

/// One line's command.
#[derive(Clone, Debug)]
pub(crate) enum Command {
    /// `-N NAME`: a new user chain.
    NewChain { name: String, at: Pos },
    /// `-A` / `-I` (or a bare rule, appended to DOCKER-USER).
    Rule {
        chain: Option<(String, Pos)>,
        placement: Placement,
        place_at: Pos,
        spec: Box<Spec>,
    },
}

/// A line being parsed: its tokens and number, for errors.
pub(crate) struct Line<'a> {
    pub toks: &'a [Token],
    pub lineno: usize,
}

impl Line<'_> {
    /// The error `kind` at token `i`.
    pub(crate) fn err(&self, i: Pos, kind: K) -> ParseError {
        ParseError {
            line: self.lineno,
            pos: i + 1,
            token: self
                .toks
                .get(i)
                .map_or_else(|| "<end of line>".to_string(), |t| t.text.clone()),
            kind,
        }
    }

    fn text(&self, i: Pos) -> Option<&str> {
        self.toks.get(i).map(|t| t.text.as_str())
    }

    /// Whether token `i` is an option (or `!`) rather than a value.
    fn is_option(&self, i: Pos) -> bool {
        self.toks.get(i).is_some_and(|t| {
            !t.quoted
                && (t.text == "!" || (t.text.starts_with('-') && t.text.parse::<i64>().is_err()))
        })
    }
}

/// The parse state of one line: where we are, a pending `!`, the loaded match modules.
struct Cursor<'a, 'b> {
    line: &'b Line<'a>,
    i: Pos,
    neg: Option<Pos>,
    modules: Vec<String>,
}

impl Cursor<'_, '_> {
    /// Consumes the value of the option at `at`, with the legacy `-s ! x` form when
    /// `negatable`; returns (negated, value position, value).
    fn value(&mut self, at: Pos, negatable: bool) -> Result<(bool, Pos, String), ParseError> {
        let l = self.line;
        let mut neg = self.neg.take().is_some();
        if neg && !negatable {
            return Err(l.err(at, K::BadNegation));
        }
        self.i = at + 1;
        if l.text(self.i) == Some("!") && !l.toks[self.i].quoted {
            if !negatable || neg {
                return Err(l.err(self.i, K::BadNegation));
            }
            neg = true;
            self.i += 1;
        }
        if self.i >= l.toks.len() || (l.is_option(self.i) && !l.toks[self.i].quoted) {
            return Err(l.err(at, K::MissingValue));
        }
        let v = l.toks[self.i].text.clone();
        let vat = self.i;
        self.i += 1;
        Ok((neg, vat, v))
    }

    /// Like [`Cursor::value`] into an [`Opt`], refusing a second occurrence.
    fn opt<T>(
        &mut self,
        dup: bool,
        at: Pos,
        negatable: bool,
        parse: impl FnOnce(&str) -> Option<T>,
        bad: K,
    ) -> Result<Opt<T>, ParseError> {
        if dup {
            return Err(self.line.err(at, K::Duplicate));
        }
        let (neg, vat, v) = self.value(at, negatable)?;
        let v = parse(&v).ok_or_else(|| self.line.err(vat, bad))?;
        Ok(Opt { at, vat, neg, v })
    }

    fn no_negation(&mut self, at: Pos) -> Result<(), ParseError> {
        match self.neg.take() {
            Some(_) => Err(self.line.err(at, K::BadNegation)),
            None => Ok(()),
        }
    }

    fn loaded(&self, m: &str) -> bool {
        self.modules.iter().any(|x| x == m)
    }
}

/// Parses one tokenized line (`toks` non-empty, any leading `iptables` already removed).
pub(crate) fn parse(line: &Line<'_>, family: Option<u8>) -> Result<Command, ParseError> {
    let mut c = Cursor {
        line,
        i: 0,
        neg: None,
        modules: Vec::new(),
    };
    let mut spec = Spec {
        family,
        ..Spec::default()
    };
    let mut chain: Option<(String, Pos)> = None;
    let mut placement: Option<(Placement, Pos)> = None;
    while c.i < line.toks.len() {
        let at = c.i;
        let tok = line.toks[at].text.as_str();
        if tok == "!" && !line.toks[at].quoted {
            if c.neg.is_some() {
                return Err(line.err(at, K::BadNegation));
            }
            c.neg = Some(at);
            c.i += 1;
            continue;
        }
        match tok {
            "-N" | "--new-chain" => {
                c.no_negation(at)?;
                let (_, _, name) = c.value(at, false)?;
                if c.i < line.toks.len() {
                    return Err(line.err(c.i, K::UnknownOption));
                }
                return Ok(Command::NewChain { name, at });
            }
            "-I" | "--insert" | "-A" | "--append" => {
                c.no_negation(at)?;
                if placement.is_some() {
                    return Err(line.err(at, K::Duplicate));
                }
                let insert = matches!(tok, "-I" | "--insert");
                c.i = at + 1;
                if let Some(name) = line.text(c.i).filter(|_| !line.is_option(c.i))
                    && name.parse::<usize>().is_err()
                {
                    chain = Some((name.to_string(), c.i));
                    c.i += 1;
                }
                let mut p = if insert {
                    Placement::Insert(1)
                } else {
                    Placement::Append
                };
                if let Some(n) = line.text(c.i).and_then(|t| t.parse::<usize>().ok()) {
                    if !insert {
                        return Err(line.err(c.i, K::PositionWithAppend));
                    }
                    p = Placement::Insert(n);
                    c.i += 1;
                }
                placement = Some((p, at));
            }
            _ => {
                rule_option(&mut c, &mut spec, at, tok)?;
                if let Some(m) = values::module_of(tok)
                    && let Some(entry) = spec.modules.iter_mut().rev().find(|(n, ..)| n == m)
                {
                    entry.2 = true;
                }
            }
        }
    }
    if let Some(at) = c.neg {
        return Err(line.err(at, K::MissingValue));
    }
    check_consistency(line, &spec)?;
    let (placement, place_at) = placement.unwrap_or((Placement::Append, 0));
    Ok(Command::Rule {
        chain,
        placement,
        place_at,
        spec: Box::new(spec),
    })
}

/// One rule option at `at` (the cursor is on it); advances the cursor past its values.
fn rule_option(c: &mut Cursor<'_, '_>, s: &mut Spec, at: Pos, tok: &str) -> Result<(), ParseError> {
    let line = c.line;
    match tok {
        "-t" | "--table" => {
            let (_, vat, v) = c.value(at, false)?;
            if v != "filter" {
                return Err(line.err(vat, K::Unsupported("tables other than filter")));
            }
        }
        "-s" | "--source" | "--src" => {
            s.src = Some(c.opt(
                s.src.is_some(),
                at,
                true,
                |v| Some(v.to_string()),
                K::BadAddress,
            )?);
        }
        "-d" | "--destination" | "--dst" => {
            s.dst = Some(c.opt(
                s.dst.is_some(),
                at,
                true,
                |v| Some(v.to_string()),
                K::BadAddress,
            )?);
        }
        "-p" | "--protocol" => {
            let p = c.opt(
                s.proto.is_some(),
                at,
                true,
                values::protocol,
                K::BadProtocol,
            )?;
            if p.neg && p.v.is_none() {
                return Err(line.err(p.vat, K::BadNegation));
            }
            if let Some(name) = p.v.and_then(values::proto_module) {
                c.modules.push(name.to_string());
            }
            s.proto = Some(p);
        }
        "-i" | "--in-interface" => {
            s.in_if = Some(c.opt(
                s.in_if.is_some(),
                at,
                true,
                |v| Some(v.to_string()),
                K::UnknownName,
            )?);
        }
        "-o" | "--out-interface" => {
            s.out_if = Some(c.opt(
                s.out_if.is_some(),
                at,
                true,
                |v| Some(v.to_string()),
                K::UnknownName,
            )?);
        }
        "-m" | "--match" => {
            c.no_negation(at)?;
            let (_, vat, v) = c.value(at, false)?;
            if !values::MATCH_MODULES.contains(&v.as_str()) {
                return Err(line.err(vat, K::Unsupported("this match module")));
            }
            if v == "connlimit" && s.connlimit.is_none() {
                s.connlimit = Some(ConnSpec {
                    at: vat,
                    ..ConnSpec::default()
                });
            }
            if v == "limit" && s.limit.is_none() {
                s.limit = Some((vat, 3.0 / 3600.0, 5));
            }
            s.modules.push((v.clone(), vat, false));
            c.modules.push(v);
        }
        "-j" | "--jump" | "-g" | "--goto" => {
            c.no_negation(at)?;
            if tok.starts_with("-g") || tok == "--goto" {
                return Err(line.err(at, K::Unsupported("-g (goto); use -j")));
            }
            if s.target.is_some() {
                return Err(line.err(at, K::Duplicate));
            }
            let (_, vat, v) = c.value(at, false)?;
            let t = match v.as_str() {
                "ACCEPT" => TargetSpec::Accept,
                "DROP" => TargetSpec::Drop,
                "REJECT" => TargetSpec::Reject(RejectWith::PortUnreachable),
                "RETURN" => TargetSpec::Return,
                "LOG" => TargetSpec::Log {
                    prefix: String::new(),
                },
                name if values::chain_name_ok(name) => TargetSpec::Chain(name.to_string()),
                _ => return Err(line.err(vat, K::BadTarget)),
            };
            s.target = Some(Opt {
                at,
                vat,
                neg: false,
                v: t,
            });
        }
        "--sport" | "--source-port" | "--dport" | "--destination-port"
            if c.loaded("tcp") || c.loaded("udp") =>
        {
            let src = matches!(tok, "--sport" | "--source-port");
            let slot = if src { &s.sport } else { &s.dport };
            let o = c.opt(slot.is_some(), at, true, values::port_range, K::BadPort)?;
            if src {
                s.sport = Some(o);
            } else {
                s.dport = Some(o);
            }
        }
        "--syn" if c.loaded("tcp") => {
            if s.tcp_flags.is_some() {
                return Err(line.err(at, K::Duplicate));
            }
            let neg = c.neg.take().is_some();
            c.i = at + 1;
            s.tcp_flags = Some(Opt {
                at,
                vat: at,
                neg,
                v: TcpFlags::SYN,
            });
        }
        "--tcp-flags" if c.loaded("tcp") => {
            if s.tcp_flags.is_some() {
                return Err(line.err(at, K::Duplicate));
            }
            let (neg, vat, mask) = c.value(at, true)?;
            let mask = values::tcp_flags(&mask).ok_or_else(|| line.err(vat, K::BadTcpFlags))?;
            let Some(set) = line.text(c.i).filter(|_| !line.is_option(c.i)) else {
                return Err(line.err(at, K::MissingValue));
            };
            let set = values::tcp_flags(set).ok_or_else(|| line.err(c.i, K::BadTcpFlags))?;
            c.i += 1;
            s.tcp_flags = Some(Opt {
                at,
                vat,
                neg,
                v: TcpFlags { mask, set },
            });
        }
        "--icmp-type" if c.loaded("icmp") => {
            let o = c.opt(
                s.icmp.is_some(),
                at,
                true,
                values::icmp_type,
                K::BadIcmpType,
            )?;
            s.icmp = Some(Opt {
                v: (o.v, false),
                at: o.at,
                vat: o.vat,
                neg: o.neg,
            });
        }
        "--icmpv6-type" if c.loaded("icmp6") => {
            let o = c.opt(
                s.icmp.is_some(),
                at,
                true,
                values::icmpv6_type,
                K::BadIcmpType,
            )?;
            s.icmp = Some(Opt {
                v: (o.v, true),
                at: o.at,
                vat: o.vat,
                neg: o.neg,
            });
        }
        "--sports" | "--source-ports" | "--dports" | "--destination-ports" | "--ports"
            if c.loaded("multiport") =>
        {
            let which = match tok {
                "--sports" | "--source-ports" => Which::Src,
                "--ports" => Which::Either,
                _ => Which::Dst,
            };
            let o = c.opt(
                s.multiport.is_some(),
                at,
                true,
                values::port_list,
                K::BadPort,
            )?;
            if o.v.len() > 15
                || o.v
                    .iter()
                    .map(|r| 1 + usize::from(r.lo != r.hi))
                    .sum::<usize>()
                    > 15
            {
                return Err(line.err(o.vat, K::TooManyPorts));
            }
            s.multiport = Some(Opt {
                v: (which, o.v),
                at: o.at,
                vat: o.vat,
                neg: o.neg,
            });
        }
        "--src-range" | "--dst-range" if c.loaded("iprange") => {
            let src = tok == "--src-range";
            let slot = if src { &s.src_range } else { &s.dst_range };
            let o = c.opt(slot.is_some(), at, true, values::ip_range, K::BadAddress)?;
            if src {
                s.src_range = Some(o);
            } else {
                s.dst_range = Some(o);
            }
        }
        "--ctstate"
            if c.loaded("conntrack") && line.text(at + 1).is_some_and(|v| v.contains("NAT")) =>
        {
            return Err(line.err(
                at + 1,
                K::Unsupported("--ctstate SNAT/DNAT; for published ports write --ctorigdstport"),
            ));
        }
        "--ctstate" if c.loaded("conntrack") => {
            s.state = Some(c.opt(s.state.is_some(), at, true, values::states, K::BadState)?);
        }
        "--state" if c.loaded("state") => {
            s.state = Some(c.opt(s.state.is_some(), at, true, values::states, K::BadState)?);
        }
        "--ctdir" if c.loaded("conntrack") => {
            let o = c.opt(
                s.ctdir.is_some(),
                at,
                false,
                values::direction,
                K::BadDirection,
            )?;
            s.ctdir = Some(o);
        }
        "--ctorigdst" if c.loaded("conntrack") => {
            s.ctorigdst = Some(c.opt(
                s.ctorigdst.is_some(),
                at,
                true,
                |v| Some(v.to_string()),
                K::BadAddress,
            )?);
        }
        "--ctorigdstport" if c.loaded("conntrack") => {
            s.ctorigdstport = Some(c.opt(
                s.ctorigdstport.is_some(),
                at,
                true,
                values::port_range,
                K::BadPort,
            )?);
        }
        "--comment" if c.loaded("comment") => {
            c.no_negation(at)?;
            let (_, vat, v) = c.value(at, false)?;
            if s.comment.is_some() {
                return Err(line.err(at, K::Duplicate));
            }
            if v.len() > 256 {
                return Err(line.err(vat, K::Unsupported("comments longer than 256 characters")));
            }
            s.comment = Some(v);
        }
        "--mac-source" if c.loaded("mac") => {
            s.mac = Some(c.opt(s.mac.is_some(), at, true, values::mac, K::BadMac)?);
        }
        "--match-set" | "--set" if c.loaded("set") => {
            let (neg, vat, name) = c.value(at, true)?;
            let Some(flags) = line.text(c.i).filter(|_| !line.is_option(c.i)) else {
                return Err(line.err(at, K::MissingValue));
            };
            let dirs = values::set_flags(flags).ok_or_else(|| line.err(c.i, K::BadSetFlags))?;
            c.i += 1;
            s.sets.push(Opt {
                at,
                vat,
                neg,
                v: (name, dirs),
            });
        }
        "--reject-with"
            if matches!(s.target.as_ref().map(|t| &t.v), Some(TargetSpec::Reject(_))) =>
        {
            c.no_negation(at)?;
            let (_, vat, v) = c.value(at, false)?;
            let w = values::reject_with(&v).ok_or_else(|| line.err(vat, K::BadRejectWith))?;
            if w == RejectWith::TcpReset
                && !matches!(
                    s.proto.as_ref().map(|p| (p.neg, p.v)),
                    Some((false, Some(crate::abi::proto::TCP)))
                )
            {
                return Err(line.err(vat, K::BadRejectWith));
            }
            if let Some(t) = s.target.as_mut() {
                t.v = TargetSpec::Reject(w);
            }
        }
        "--log-prefix" | "--log-level" | "--log-tcp-sequence" | "--log-tcp-options"
        | "--log-ip-options" | "--log-uid" | "--log-macdecode"
            if matches!(
                s.target.as_ref().map(|t| &t.v),
                Some(TargetSpec::Log { .. })
            ) =>
        {
            c.no_negation(at)?;
            if matches!(tok, "--log-prefix" | "--log-level") {
                let (_, vat, v) = c.value(at, false)?;
                if tok == "--log-prefix" {
                    if v.len() > 29 {
                        return Err(line.err(
                            vat,
                            K::Unsupported(
                                "log prefixes longer than 29 characters (iptables' limit)",
                            ),
                        ));
                    }
                    if let Some(t) = s.target.as_mut() {
                        t.v = TargetSpec::Log { prefix: v };
                    }
                } else if values::log_level(&v).is_none() {
                    return Err(line.err(vat, K::BadNumber));
                }
            } else {
                c.i = at + 1;
            }
        }
        "--limit" | "--limit-burst" if c.loaded("limit") => {
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
        }
        "--connlimit-above" | "--connlimit-upto" | "--connlimit-mask" if c.loaded("connlimit") => {
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
        "--connlimit-saddr" | "--connlimit-daddr" if c.loaded("connlimit") => {
            c.no_negation(at)?;
            c.i = at + 1;
            if let Some(spec) = s.connlimit.as_mut() {
                if spec.daddr.is_some() {
                    return Err(line.err(at, K::Duplicate));
                }
                spec.daddr = Some((at, tok == "--connlimit-daddr"));
            }
        }
        _ if tok.starts_with("--ct") && c.loaded("conntrack") => {
            return Err(line.err(
                at,
                K::Unsupported(
                    "this conntrack option (only --ctstate, --ctorigdst, --ctorigdstport, --ctdir)",
                ),
            ));
        }
        "--sport" | "--source-port" | "--dport" | "--destination-port" | "--sports"
        | "--dports" | "--ports" => return Err(line.err(at, K::PortWithoutTcpUdp)),
        _ => return Err(line.err(at, K::UnknownOption)),
    }
    Ok(())
}

/// What iptables checks across options once the line is read.
fn check_consistency(line: &Line<'_>, s: &Spec) -> Result<(), ParseError> {
    let proto = s
        .proto
        .as_ref()
        .and_then(|p| (!p.neg).then_some(p.v).flatten());
    if let Some(c) = &s.connlimit
        && c.limit.is_none()
    {
        return Err(line.err(c.at, K::MissingValue));
    }
    for (m, at, used) in &s.modules {
        if !used && values::NEED_AN_OPTION.contains(&m.as_str()) {
            return Err(line.err(*at, K::MissingValue));
        }
        let needs = match m.as_str() {
            "tcp" => Some(crate::abi::proto::TCP),
            "udp" => Some(crate::abi::proto::UDP),
            "icmp" => Some(crate::abi::proto::ICMP),
            "icmp6" => Some(crate::abi::proto::ICMPV6),
            _ => None,
        };
        if needs.is_some() && needs != proto {
            return Err(line.err(
                *at,
                K::Unsupported("-m tcp|udp|icmp|icmp6 needs the same -p"),
            ));
        }
    }
    let tcp_udp = matches!(proto, Some(crate::abi::proto::TCP | crate::abi::proto::UDP));
    for at in [
        s.sport.as_ref().map(|o| o.at),
        s.dport.as_ref().map(|o| o.at),
        s.multiport.as_ref().map(|o| o.at),
    ]
    .into_iter()
    .flatten()
    {
        if !tcp_udp {
            return Err(line.err(at, K::PortWithoutTcpUdp));
        }
    }
    for o in [&s.in_if, &s.out_if].into_iter().flatten() {
        if o.v.len() > 15 {
            return Err(line.err(o.vat, K::UnknownName));
        }
    }
    if let Some(o) = &s.icmp {
        let want = if o.v.1 {
            crate::abi::proto::ICMPV6
        } else {
            crate::abi::proto::ICMP
        };
        if proto != Some(want) {
            return Err(line.err(
                o.at,
                K::Unsupported("--icmp-type needs -p icmp (--icmpv6-type: -p icmpv6)"),
            ));
        }
    }
    if let Some(o) = &s.tcp_flags
        && proto != Some(crate::abi::proto::TCP)
    {
        return Err(line.err(o.at, K::PortWithoutTcpUdp));
    }
    Ok(())
}
