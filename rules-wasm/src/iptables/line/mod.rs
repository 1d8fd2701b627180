//! The syntax phase: one line's tokens → a [`Command`] whose rule options are checked the way
//! iptables checks them (each option once, its match module loaded, values well formed), but
//! not yet resolved against containers, networks, interfaces or sets (that is
//! [`super::resolve`]).
//!
//! One job per module: [`cursor`] walks the tokens (values, `!`, loaded modules);
//! [`command`] reads the command (`-N`, `-A`, `-I`); [`options`] reads the options every rule
//! may have (addresses, protocol, interfaces, `-m`, `-j` and the target's own options);
//! [`matches`](mod@matches) reads the options of each match module; [`checks`] checks what iptables checks
//! across options once the line is read.
use std::net::IpAddr;

use super::error::{ParseError, ParseErrorKind as K};
use super::tokens::Token;
use super::values;
use crate::abi::RejectWith;
use crate::model::{IcmpType, PortRange, StateSet, TcpFlags};

mod checks;
mod command;
mod cursor;
mod matches;
mod options;

use cursor::Cursor;

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

impl<T> Opt<T> {
    /// The same option with its value changed by `f` (position and negation kept).
    pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U) -> Opt<U> {
        Opt {
            at: self.at,
            vat: self.vat,
            neg: self.neg,
            v: f(self.v),
        }
    }
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

    /// Whether token `i` is an unquoted `!`.
    fn is_bang(&self, i: Pos) -> bool {
        self.toks.get(i).is_some_and(|t| t.text == "!" && !t.quoted)
    }
}

/// Parses one tokenized line (`toks` non-empty, any leading `iptables` already removed):
/// every token is a `!`, a command option or a rule option, read in turn; then the
/// cross-option checks.
pub(crate) fn parse(line: &Line<'_>, family: Option<u8>) -> Result<Command, ParseError> {
    let mut c = Cursor::new(line);
    let mut spec = Spec {
        family,
        ..Spec::default()
    };
    let mut cmd = command::Partial::default();
    while !c.done() {
        let at = c.i;
        let tok = line.toks[at].text.as_str();
        if line.is_bang(at) {
            c.bang(at)?;
            continue;
        }
        match cmd.option(&mut c, at, tok)? {
            command::Read::NewChain(name) => return Ok(Command::NewChain { name, at }),
            command::Read::Placement => {}
            command::Read::NotACommand => {
                options::rule_option(&mut c, &mut spec, at, tok)?;
                mark_module_used(&mut spec, tok);
            }
        }
    }
    c.no_pending_bang()?;
    checks::check(line, &spec)?;
    Ok(cmd.finish(spec))
}

/// Records that an option of the match module `tok` belongs to was given, for the check
/// that a module needing an option got one.
fn mark_module_used(spec: &mut Spec, tok: &str) {
    if let Some(m) = values::module_of(tok)
        && let Some(entry) = spec.modules.iter_mut().rev().find(|(n, ..)| n == m)
    {
        entry.2 = true;
    }
}
