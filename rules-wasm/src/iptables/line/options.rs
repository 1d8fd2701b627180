//! The options any rule may have: `-t`, addresses, protocol, interfaces, `-m`, `-j` and the
//! target's own options (`--reject-with`, `--log-*`); everything else goes to the match
//! module that owns it ([`super::matches`]).
use super::cursor::Cursor;
use super::matches;
use super::{ConnSpec, Opt, Pos, Spec, TargetSpec};
use crate::abi::RejectWith;
use crate::iptables::error::{ParseError, ParseErrorKind as K};
use crate::iptables::values;

/// One rule option at `at` (the cursor is on it); advances the cursor past its values.
pub(super) fn rule_option(
    c: &mut Cursor<'_, '_>,
    s: &mut Spec,
    at: Pos,
    tok: &str,
) -> Result<(), ParseError> {
    if basic(c, s, at, tok)? || target(c, s, at, tok)? || matches::option(c, s, at, tok)? {
        return Ok(());
    }
    Err(unknown(c, at, tok))
}

/// Why an option nobody took is refused: an unknown conntrack option, a port option without
/// its module, or an unknown option.
fn unknown(c: &Cursor<'_, '_>, at: Pos, tok: &str) -> ParseError {
    let kind = match tok {
        _ if tok.starts_with("--ct") && c.loaded("conntrack") => K::Unsupported(
            "this conntrack option (only --ctstate, --ctorigdst, --ctorigdstport, --ctdir)",
        ),
        "--sport" | "--source-port" | "--dport" | "--destination-port" | "--sports"
        | "--dports" | "--ports" => K::PortWithoutTcpUdp,
        _ => K::UnknownOption,
    };
    c.line.err(at, kind)
}

/// `-t`, `-s`, `-d`, `-p`, `-i`, `-o`, `-m`; `false` when `tok` is none of them.
fn basic(c: &mut Cursor<'_, '_>, s: &mut Spec, at: Pos, tok: &str) -> Result<bool, ParseError> {
    match tok {
        "-t" | "--table" => {
            let (_, vat, v) = c.value(at, false)?;
            if v != "filter" {
                return Err(c.line.err(vat, K::Unsupported("tables other than filter")));
            }
        }
        "-s" | "--source" | "--src" => {
            s.src = Some(c.text_opt(s.src.is_some(), at, K::BadAddress)?)
        }
        "-d" | "--destination" | "--dst" => {
            s.dst = Some(c.text_opt(s.dst.is_some(), at, K::BadAddress)?);
        }
        "-p" | "--protocol" => protocol(c, s, at)?,
        "-i" | "--in-interface" => {
            s.in_if = Some(c.text_opt(s.in_if.is_some(), at, K::UnknownName)?);
        }
        "-o" | "--out-interface" => {
            s.out_if = Some(c.text_opt(s.out_if.is_some(), at, K::UnknownName)?);
        }
        "-m" | "--match" => module(c, s, at)?,
        _ => return Ok(false),
    }
    Ok(true)
}

/// `-p PROTO`, which also loads the protocol's match module (`-p tcp` makes `--dport` valid).
fn protocol(c: &mut Cursor<'_, '_>, s: &mut Spec, at: Pos) -> Result<(), ParseError> {
    let p = c.opt(
        s.proto.is_some(),
        at,
        true,
        values::protocol,
        K::BadProtocol,
    )?;
    if p.neg && p.v.is_none() {
        return Err(c.line.err(p.vat, K::BadNegation));
    }
    if let Some(name) = p.v.and_then(values::proto_module) {
        c.load(name.to_string());
    }
    s.proto = Some(p);
    Ok(())
}

/// `-m MODULE`: loads a match module (`connlimit` and `limit` start their options).
fn module(c: &mut Cursor<'_, '_>, s: &mut Spec, at: Pos) -> Result<(), ParseError> {
    c.no_negation(at)?;
    let (_, vat, v) = c.value(at, false)?;
    if !values::MATCH_MODULES.contains(&v.as_str()) {
        return Err(c.line.err(vat, K::Unsupported("this match module")));
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
    c.load(v);
    Ok(())
}

/// `-j TARGET` and the target's options; `false` when `tok` is none of them (a target
/// option for another target is no option at all, as in iptables).
fn target(c: &mut Cursor<'_, '_>, s: &mut Spec, at: Pos, tok: &str) -> Result<bool, ParseError> {
    let current = s.target.as_ref().map(|t| &t.v);
    match tok {
        "-j" | "--jump" | "-g" | "--goto" => jump(c, s, at, tok)?,
        "--reject-with" if matches!(current, Some(TargetSpec::Reject(_))) => {
            reject_with(c, s, at)?;
        }
        "--log-prefix" | "--log-level" | "--log-tcp-sequence" | "--log-tcp-options"
        | "--log-ip-options" | "--log-uid" | "--log-macdecode"
            if matches!(current, Some(TargetSpec::Log { .. })) =>
        {
            log_option(c, s, at, tok)?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// `-j TARGET` (`-g` is refused).
fn jump(c: &mut Cursor<'_, '_>, s: &mut Spec, at: Pos, tok: &str) -> Result<(), ParseError> {
    let line = c.line;
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
    Ok(())
}

/// `--reject-with KIND` after `-j REJECT` (`tcp-reset` only with `-p tcp`).
fn reject_with(c: &mut Cursor<'_, '_>, s: &mut Spec, at: Pos) -> Result<(), ParseError> {
    let line = c.line;
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
    Ok(())
}

/// `--log-prefix`, `--log-level` (checked) and the LOG flags (accepted, without effect).
fn log_option(c: &mut Cursor<'_, '_>, s: &mut Spec, at: Pos, tok: &str) -> Result<(), ParseError> {
    let line = c.line;
    c.no_negation(at)?;
    if !matches!(tok, "--log-prefix" | "--log-level") {
        c.flag(at);
        return Ok(());
    }
    let (_, vat, v) = c.value(at, false)?;
    if tok == "--log-level" {
        return match values::log_level(&v) {
            Some(_) => Ok(()),
            None => Err(line.err(vat, K::BadNumber)),
        };
    }
    if v.len() > 29 {
        return Err(line.err(
            vat,
            K::Unsupported("log prefixes longer than 29 characters (iptables' limit)"),
        ));
    }
    if let Some(t) = s.target.as_mut() {
        t.v = TargetSpec::Log { prefix: v };
    }
    Ok(())
}
