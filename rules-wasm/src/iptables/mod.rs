//! User rules in iptables syntax: what people already type for Docker's `DOCKER-USER` chain,
//! one rule per line, or what `iptables-save` prints.
//!
//! # Input forms
//! - **Rule lines**: blank lines and `#` comments are ignored; a leading `iptables` or
//!   `ip6tables` word is allowed (the rule then applies to that family only), so lines can be
//!   pasted from shell history. `-A`/`-I` without a chain, or with `DOCKER-USER`, `DOCKER` or
//!   `FORWARD`, go to DOCKER-USER; `-N NAME` makes a user chain.
//! - **`iptables-save` output** (`*filter`, `:CHAIN …`, `-A …`, `COMMIT`): DOCKER-USER and the
//!   chains declared beside it are taken; Docker's own chains (FORWARD, DOCKER,
//!   DOCKER-ISOLATION-*), the INPUT/OUTPUT chains and other tables are skipped with one
//!   [`Warning`] each, since bridgewall derives Docker's rules from the engine itself. The
//!   rules apply to the family of the tool that printed them (`ip6tables-save`: IPv6).
//! - **`ipset save` lines** (`create …`, `add …`) anywhere in the text, or in a separate text
//!   given to [`UserRules::read_ipsets`], define the sets `-m set` names.
//!
//! # Grammar
//! - Targets: `ACCEPT`, `DROP`, `REJECT [--reject-with KIND]`, `RETURN`, a user chain; a rule
//!   without `-j` only counts in iptables and decides nothing here either.
//! - `-s`/`-d`: addresses, CIDRs (`/len` or a contiguous dotted mask), container names (every
//!   address the container has, on every network), `network:NAME` (a Docker network's
//!   subnets), or comma lists of them; `!` negates within the address's family.
//! - `-p` by name or number; `-m tcp|udp` `--sport/--dport` (ranges, service names),
//!   `--syn`, `--tcp-flags MASK COMP`; `-m icmp --icmp-type`, `-m icmp6 --icmpv6-type` (names
//!   and `TYPE[/CODE]`); `-m multiport --sports|--dports|--ports`; `-m iprange
//!   --src-range|--dst-range`; `-m conntrack --ctstate`, `-m state --state` (NEW, ESTABLISHED,
//!   RELATED, INVALID), `--ctorigdst`, `--ctorigdstport`, `--ctdir`; `-m comment --comment`;
//!   `-m mac --mac-source` (a container's MAC); `-m set --match-set NAME FLAGS`.
//! - `-i`/`-o`: a dataplane port id, `+`, a container (its port on each of its networks), a
//!   kernel bridge (`docker0`, `br-…`: that network's gateway port), a Docker network or
//!   `network:NAME` (every container port of the network), a wildcard over bridges (`br-+`),
//!   or a host interface (`eth0`, `eth+`), which means "through a gateway, from (to) an address
//!   the host routes through that interface" ([`Names::host_routes`]; see
//!   [`crate::docker`] for the details). A name standing for several ports makes one rule per
//!   port, and cannot be negated.
//! - Options may be written `--opt=value` and short options glued (`-ptcp`), as getopt allows.
//!
//! Reading is atomic: if any line is rejected, the rules are left exactly as they were, and
//! the error names the line, the token and what is wrong.
mod chains;
mod error;
mod ipset;
mod line;
mod names;
mod resolve;
mod tokens;
mod values;

use std::collections::BTreeSet;

pub use error::{ParseError, ParseErrorKind, Warning};
pub use ipset::{IpSet, IpSets, SetEntry, SetKind};
pub use line::Placement;
pub use names::{Names, NoNames, WithHostRoutes};

pub use chains::{Flat, LimitRule, LogRule};

use chains::{Program, ROOT, Stmt};
use line::{Command, Line};
use tokens::Token;

use crate::model::Rule;

/// Most flat rules a text may expand to (chains × RETURNs × lists × set entries).
pub(crate) const FLAT_LIMIT: usize = 4_000_000;

/// The user's rules as written, and the sets they use: apply more text to them, then
/// [`UserRules::rules`] flattens them into the USER chain.
#[derive(Clone, Debug, Default)]
pub struct UserRules {
    program: Program,
    sets: IpSets,
    warnings: Vec<Warning>,
}

/// The rules a text stands for, and what was accepted with a caveat.
#[derive(Clone, Debug, Default)]
pub struct Parsed {
    /// The flat USER chain, in evaluation order.
    pub rules: Vec<Rule>,
    /// Per flat rule: the line of the text it was written on.
    pub lines: Vec<usize>,
    /// The `-j LOG` rules, each as the rule set that says whether a packet reached it.
    pub logs: Vec<LogRule>,
    /// The rate-limited deciding rules (`-m limit -j ACCEPT`), run before the policy.
    pub limits: Vec<LimitRule>,
    /// Warnings, in line order.
    pub warnings: Vec<Warning>,
}

/// The words of a rule line as the parser reads them (shell quoting, a `#` comment ends
/// the line), so a tool editing rules text can compare a rule with what a person typed;
/// `Err(n)`: the `n`th word opens a quote it never closes.
pub fn words(line: &str) -> Result<Vec<String>, usize> {
    tokens::tokenize(line).map(|t| t.into_iter().map(|t| t.text).collect())
}

/// Parses `text` (rule lines or `iptables-save` output) into a fresh USER rule list.
pub fn parse(text: &str, names: &dyn Names) -> Result<Vec<Rule>, ParseError> {
    parse_full(text, None, names).map(|p| p.rules)
}

/// Parses `text` with the sets of `ipsets` (`ipset save` output) and returns the warnings too.
pub fn parse_full(
    text: &str,
    ipsets: Option<&str>,
    names: &dyn Names,
) -> Result<Parsed, ParseError> {
    let mut u = UserRules::default();
    if let Some(s) = ipsets {
        u.read_ipsets(s)?;
    }
    u.apply(text, names)?;
    let mut flat = u.rules()?;
    let mut warnings = u.warnings;
    warnings.append(&mut flat.warnings);
    Ok(Parsed {
        rules: flat.rules,
        lines: flat.lines,
        logs: flat.logs,
        limits: flat.limits,
        warnings,
    })
}

/// Where a line stands in `iptables-save` output.
#[derive(Default)]
struct SaveState {
    /// Inside `*TABLE … COMMIT`: the table.
    table: Option<String>,
    /// Whether any `*TABLE` line was seen (chains then mean what they mean in iptables).
    save_form: bool,
    /// The family of the tool that printed it.
    family: Option<u8>,
    /// Tables and chains already warned about.
    warned: BTreeSet<String>,
}

impl UserRules {
    /// Reads `ipset save` output (sets only; other lines are ignored), atomically.
    pub fn read_ipsets(&mut self, text: &str) -> Result<(), ParseError> {
        self.sets.read(text)
    }

    /// The sets read so far.
    pub fn sets(&self) -> &IpSets {
        &self.sets
    }

    /// Applies every line of `text`, in order. Atomic: on an error nothing changes.
    pub fn apply(&mut self, text: &str, names: &dyn Names) -> Result<(), ParseError> {
        let mut next = self.clone();
        next.sets.read(text)?;
        let mut st = SaveState::default();
        for (i, raw) in text.lines().enumerate() {
            next.line(raw, i + 1, names, &mut st)?;
        }
        // Jumps to missing chains, loops and expansions past the limit are found by
        // flattening: do it now, so that a text that cannot run is refused as a whole.
        next.rules()?;
        *self = next;
        Ok(())
    }

    /// The flat USER chain, its LOG rules and the warnings about it (chains never jumped
    /// to).
    pub fn rules(&self) -> Result<Flat, ParseError> {
        self.program.flatten(FLAT_LIMIT)
    }

    /// The verdict the chains give `r`, walked as iptables walks them, without flattening:
    /// the meaning [`UserRules::rules`] must keep (the differential tests compare the two),
    /// and what `trace` can show in the user's own chain terms. `None` when DOCKER-USER
    /// returns (Docker's rules decide).
    pub fn decide(&self, r: &crate::abi::PacketRecord) -> Option<(crate::model::Target, &str)> {
        self.program.decide(r)
    }

    /// [`UserRules::decide`], also listing (by origin) the LOG rules the packet reached.
    pub fn decide_logging<'a>(
        &'a self,
        r: &crate::abi::PacketRecord,
        logged: &mut Vec<&'a str>,
    ) -> Option<(crate::model::Target, &'a str)> {
        self.program.decide_logging(r, logged)
    }

    /// Warnings from the lines applied so far.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    fn warn_once(&mut self, st: &mut SaveState, key: String, line: usize, message: String) {
        if st.warned.insert(key) {
            self.warnings.push(Warning { line, message });
        }
    }

    fn line(
        &mut self,
        raw: &str,
        lineno: usize,
        names: &dyn Names,
        st: &mut SaveState,
    ) -> Result<(), ParseError> {
        let head = raw.trim_start();
        if head.starts_with('#') {
            if head.contains("ip6tables-save") {
                st.family = Some(6);
            } else if head.contains("iptables-save") {
                st.family = Some(4);
            }
            return Ok(());
        }
        if ipset::is_ipset_line(raw) {
            return Ok(());
        }
        let toks = tokens::tokenize(raw).map_err(|pos| ParseError {
            line: lineno,
            pos,
            token: raw
                .split_whitespace()
                .nth(pos - 1)
                .unwrap_or_default()
                .to_string(),
            kind: ParseErrorKind::BadQuote,
        })?;
        let Some(first) = toks.first().map(|t| t.text.clone()) else {
            return Ok(());
        };
        if let Some(table) = first.strip_prefix('*') {
            st.save_form = true;
            st.table = Some(table.to_string());
            if table != "filter" {
                self.warn_once(st, format!("*{table}"), lineno, format!(
                    "table {table} skipped: bridgewall enforces the filter table's DOCKER-USER; \
                     Docker's NAT stays in the kernel"
                ));
            }
            return Ok(());
        }
        if first == "COMMIT" {
            st.table = None;
            return Ok(());
        }
        if st.save_form && st.table.as_deref() != Some("filter") {
            return Ok(());
        }
        if let Some(decl) = first.strip_prefix(':') {
            return self.declare(decl, lineno, &toks);
        }
        self.rule_line(toks, lineno, names, st)
    }

    /// `:CHAIN POLICY [p:b]` in `iptables-save` output.
    fn declare(&mut self, name: &str, lineno: usize, toks: &[Token]) -> Result<(), ParseError> {
        if toks.len() < 2 || !values::chain_name_ok(name) {
            return Err(ParseError {
                line: lineno,
                pos: 1,
                token: toks[0].text.clone(),
                kind: ParseErrorKind::BadSave("a chain line is `:NAME POLICY [packets:bytes]`"),
            });
        }
        if !docker_owned(name) && name != ROOT {
            self.program.new_chain(name);
        }
        Ok(())
    }

    /// A rule line (`-N`, `-A`, `-I`, or a bare rule): the words a pasted line may start
    /// with are set aside, the syntax read ([`line::parse`]), and the command applied.
    fn rule_line(
        &mut self,
        toks: Vec<Token>,
        lineno: usize,
        names: &dyn Names,
        st: &mut SaveState,
    ) -> Result<(), ParseError> {
        let (toks, family, skip) = leading_words(toks, st);
        let shown = shown(&toks);
        let toks = expand_glued(&toks[skip..]);
        if toks.is_empty() {
            return Ok(());
        }
        let line = Line {
            toks: &toks,
            lineno,
        };
        // Errors point at tokens of the expanded line; shift them back past a skipped word.
        let shift = |mut e: ParseError| {
            e.pos += skip;
            e
        };
        match line::parse(&line, family).map_err(shift)? {
            Command::NewChain { name, at } => self.new_chain(&line, &name, at, st).map_err(shift),
            Command::Rule {
                chain,
                placement,
                place_at,
                spec,
            } => {
                let target_chain = match &chain {
                    None => ROOT.to_string(),
                    Some((name, at)) => match self.chain_for(name, st) {
                        Some(Some(c)) => c,
                        Some(None) => {
                            self.warn_once(st, name.clone(), lineno, format!(
                                "chain {name} skipped: it is Docker's own (or the host's), and bridgewall \
                                 derives Docker's rules from the engine"
                            ));
                            return Ok(());
                        }
                        None => return Err(shift(line.err(*at, ParseErrorKind::UnknownChain))),
                    },
                };
                let stmt = self
                    .statement(&line, *spec, names, shown, skip)
                    .map_err(shift)?;
                self.program
                    .place(&target_chain, placement, stmt)
                    .map_err(|max| {
                        let pos = (place_at + 1..toks.len())
                            .find(|&i| toks[i].text.parse::<usize>().is_ok())
                            .unwrap_or(place_at);
                        shift(line.err(pos, ParseErrorKind::BadPosition { max }))
                    })
            }
        }
    }

    /// `-N NAME`: a user chain (declared twice only in `iptables-save` output).
    fn new_chain(
        &mut self,
        line: &Line<'_>,
        name: &str,
        at: usize,
        st: &SaveState,
    ) -> Result<(), ParseError> {
        if !values::chain_name_ok(name) || docker_owned(name) || name == ROOT {
            return Err(line.err(
                at + 1,
                ParseErrorKind::Unsupported("this chain name (Docker's own, or not a valid name)"),
            ));
        }
        if !self.program.new_chain(name) && !st.save_form {
            return Err(line.err(at + 1, ParseErrorKind::Duplicate));
        }
        Ok(())
    }

    /// A rule's statement: its options resolved into a condition (the expansion phase,
    /// [`resolve`]), its target, and the text it was written as.
    fn statement(
        &mut self,
        line: &Line<'_>,
        spec: line::Spec,
        names: &dyn Names,
        shown: String,
        skip: usize,
    ) -> Result<Stmt, ParseError> {
        let mut warnings = Vec::new();
        let cond = {
            let mut cx = resolve::Ctx {
                names,
                sets: &self.sets,
                warnings: &mut warnings,
            };
            resolve::condition(line, &spec, &mut cx)?
        };
        self.warnings.append(&mut warnings);
        if spec.target.is_none() {
            self.warnings.push(Warning {
                line: line.lineno,
                message: "no -j: the rule decides nothing (iptables only counts it)".into(),
            });
        }
        let tpos = spec.target.as_ref().map_or(line.toks.len(), |t| t.vat);
        Ok(Stmt {
            line: line.lineno,
            tpos: tpos + skip,
            ttext: line
                .toks
                .get(tpos)
                .map_or_else(String::new, |t| t.text.clone()),
            cond,
            limit: spec.limit.map(|(_, rate, burst)| (rate, burst)),
            target: spec.target.map(|t| t.v),
            origin: match &spec.comment {
                Some(c) => format!("{c} ({shown})"),
                None => shown,
            },
        })
    }

    /// The chain a rule for `name` goes to: `Some(Some(chain))`, `Some(None)` when the rule is
    /// skipped (a chain Docker or the host owns, in `iptables-save` output), `None` when there
    /// is no such chain.
    fn chain_for(&self, name: &str, st: &SaveState) -> Option<Option<String>> {
        if name == ROOT {
            return Some(Some(ROOT.to_string()));
        }
        if self.program.has(name) {
            return Some(Some(name.to_string()));
        }
        if !st.save_form && matches!(name, "DOCKER" | "FORWARD") {
            return Some(Some(ROOT.to_string()));
        }
        (st.save_form
            && (docker_owned(name)
                || matches!(name, "INPUT" | "OUTPUT" | "PREROUTING" | "POSTROUTING")))
        .then_some(None)
    }
}

/// Chains Docker itself maintains in the filter table.
fn docker_owned(name: &str) -> bool {
    matches!(
        name,
        "FORWARD" | "INPUT" | "OUTPUT" | "DOCKER" | "DOCKER-INGRESS"
    ) || name.starts_with("DOCKER-ISOLATION")
}

/// The words a line may start with that are not options: `iptables-save -c`'s
/// `[packets:bytes]` (dropped) and a leading `iptables`/`ip6tables` (kept, but to be skipped:
/// its count is returned, with the family it means).
fn leading_words(mut toks: Vec<Token>, st: &SaveState) -> (Vec<Token>, Option<u8>, usize) {
    if toks
        .first()
        .is_some_and(|t| t.text.starts_with('[') && t.text.ends_with(']'))
    {
        toks.remove(0);
    }
    let mut family = st.family.filter(|_| st.save_form);
    let mut skip = 0;
    if let Some(t) = toks.first() {
        match t.text.as_str() {
            "iptables" | "iptables-legacy" | "iptables-nft" => (family, skip) = (Some(4), 1),
            "ip6tables" | "ip6tables-legacy" | "ip6tables-nft" => (family, skip) = (Some(6), 1),
            _ => {}
        }
    }
    (toks, family, skip)
}

/// The line as the user wrote it (quoting what needs it): a rule's origin.
fn shown(toks: &[Token]) -> String {
    toks.iter()
        .map(|t| {
            if t.quoted || t.text.contains(char::is_whitespace) {
                format!("\"{}\"", t.text.replace('"', "\\\""))
            } else {
                t.text.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// getopt's spellings, unfolded: `--opt=value` → `--opt value`, and a short option with its
/// value glued (`-ptcp`, `-s1.2.3.4`) → two tokens.
fn expand_glued(toks: &[Token]) -> Vec<Token> {
    let mut out = Vec::with_capacity(toks.len());
    for t in toks {
        if t.quoted {
            out.push(t.clone());
            continue;
        }
        let s = t.text.as_str();
        if let Some((opt, val)) = s.strip_prefix("--").and_then(|r| r.split_once('='))
            && !opt.is_empty()
        {
            out.push(Token {
                text: format!("--{opt}"),
                quoted: false,
            });
            out.push(Token {
                text: val.to_string(),
                quoted: true,
            });
            continue;
        }
        let b = s.as_bytes();
        if b.len() > 2 && b[0] == b'-' && b"psdiojm".contains(&b[1]) && s.parse::<i64>().is_err() {
            out.push(Token {
                text: s[..2].to_string(),
                quoted: false,
            });
            out.push(Token {
                text: s[2..].to_string(),
                quoted: false,
            });
            continue;
        }
        out.push(t.clone());
    }
    out
}

#[cfg(test)]
mod tests;
