//! The user's chains as written (`DOCKER-USER` and the chains made with `-N`), and their
//! flattening into the one first-match list the compiler and the reference interpreter
//! evaluate.
//!
//! # How flattening keeps iptables' meaning
//! Walking a chain carries a *guard*: the condition under which evaluation is inside this
//! chain and has not left it. A rule with a deciding target becomes `guard ∧ match → target`;
//! first-match order does the rest. `-j RETURN` narrows the guard of the rest of the chain to
//! `guard ∧ ¬match`; `-j CHAIN` walks CHAIN with `guard ∧ match`, and the caller's next rule
//! is reached by whatever CHAIN did not decide, exactly as iptables returns from a chain. A
//! chain jumped to from two places is walked twice, under two guards. Loops are refused.
use super::error::{ParseError, ParseErrorKind as K, Warning};
use super::line::{Placement, TargetSpec};
use super::resolve::negate;
use crate::algebra::{self, Cond};
use crate::model::{Chain, Rule, Target};

/// The chain every packet enters: Docker's `DOCKER-USER`.
pub(crate) const ROOT: &str = "DOCKER-USER";

/// Most `-j LOG` rules a text may have: each is one more module call per batch.
pub(crate) const MAX_LOG_RULES: usize = 16;

/// A `-j LOG` rule, as the dataplane runs it: a rule set beside the policy whose first match
/// says whether a packet reached the LOG rule (`Accept`) or was decided before it (`Drop`).
/// iptables' LOG does not decide, so it cannot be one of the flat rules; this rule set is
/// the flat rules up to the LOG rule, all turned into "not reached", then the LOG rule.
#[derive(Clone, Debug, PartialEq)]
pub struct LogRule {
    /// `--log-prefix`, as iptables prints it before the packet's fields.
    pub prefix: String,
    /// The rule's line (its comment first), for reports.
    pub origin: String,
    /// The rule set: first match `Accept` = reached and logged.
    pub rules: Vec<Rule>,
    /// `-m limit`: at most this many lines a second, in bursts of this many; `None` for the
    /// host's default rate.
    pub limit: Option<(f64, u32)>,
    /// How many rate-limited rules come before it: a packet one of them decided (within its
    /// rate) did not reach this LOG rule, which its rule set cannot know.
    pub limits_before: usize,
}

/// A rate-limited deciding rule (`-m limit … -j ACCEPT|DROP|REJECT`), as the dataplane runs
/// it: a rule set whose first match `Accept` says the packet reached the rule and matched
/// it, run before the policy with a token bucket; within the rate the packet gets `target`
/// (reported as flat rule `first`), otherwise the policy decides. In the flat rules the
/// rule's own matches are kept but can never match (an empty state set), so the policy
/// decides as if the limit had failed.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitRule {
    /// The target within the rate.
    pub target: Target,
    /// Index in the flat rules of the rule's first (disabled) match, for its id.
    pub first: usize,
    /// Packets a second (`--limit`).
    pub per_second: f64,
    /// Bucket size (`--limit-burst`).
    pub burst: u32,
    /// The rule's line.
    pub origin: String,
    /// The rule set: first match `Accept` = reached and matched.
    pub rules: Vec<Rule>,
}

/// The flat USER chain and what comes with it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Flat {
    /// The flat USER chain, in evaluation order.
    pub rules: Vec<Rule>,
    /// Per flat rule (same order): the line of the text it was written on, so a listing
    /// can name the line and a live edit can remove it.
    pub lines: Vec<usize>,
    /// The LOG rules, in order.
    pub logs: Vec<LogRule>,
    /// The rate-limited deciding rules, in order.
    pub limits: Vec<LimitRule>,
    /// Warnings about the chains (one nothing jumps to).
    pub warnings: Vec<Warning>,
}

/// One rule as written: its resolved condition, its target, and where it came from.
#[derive(Clone, Debug)]
pub(crate) struct Stmt {
    /// Line number, for errors found while flattening.
    pub line: usize,
    /// The target token, for those errors.
    pub tpos: usize,
    /// The target's text, for those errors.
    pub ttext: String,
    /// The condition, names and sets resolved.
    pub cond: Cond,
    /// What it does; `None` is a rule without `-j`, which iptables only counts.
    pub target: Option<TargetSpec>,
    /// The line (with its comment first), shown wherever the rule is.
    pub origin: String,
    /// `-m limit` on a LOG rule: (lines a second, burst).
    pub limit: Option<(f64, u32)>,
}

/// The chains, in the order they were made.
#[derive(Clone, Debug)]
pub(crate) struct Program {
    chains: Vec<(String, Vec<Stmt>)>,
}

impl Default for Program {
    fn default() -> Self {
        Self {
            chains: vec![(ROOT.to_string(), Vec::new())],
        }
    }
}

impl Program {
    /// Whether a chain called `name` exists.
    pub(super) fn has(&self, name: &str) -> bool {
        self.chains.iter().any(|(n, _)| n == name)
    }

    /// Makes the chain `name`; `false` when it already exists.
    pub(super) fn new_chain(&mut self, name: &str) -> bool {
        if self.has(name) {
            return false;
        }
        self.chains.push((name.to_string(), Vec::new()));
        true
    }

    /// Puts `stmt` into `chain` (which exists); `Err(max)` for a position past the end + 1.
    pub(super) fn place(&mut self, chain: &str, at: Placement, stmt: Stmt) -> Result<(), usize> {
        let Some((_, rules)) = self.chains.iter_mut().find(|(n, _)| n == chain) else {
            return Err(0);
        };
        match at {
            Placement::Append => rules.push(stmt),
            Placement::Insert(pos) if pos >= 1 && pos <= rules.len() + 1 => {
                rules.insert(pos - 1, stmt);
            }
            Placement::Insert(_) => return Err(rules.len() + 1),
        }
        Ok(())
    }

    /// The flat USER chain: every chain walked from [`ROOT`], its LOG rules, and warnings
    /// about chains nothing jumps to.
    pub(super) fn flatten(&self, limit: usize) -> Result<Flat, ParseError> {
        let mut w = Walk {
            program: self,
            out: Vec::new(),
            lines: Vec::new(),
            logs: Vec::new(),
            limits: Vec::new(),
            stack: Vec::new(),
            reached: vec![false; self.chains.len()],
            limit,
        };
        w.walk(0, algebra::any())?;
        let warnings = self
            .chains
            .iter()
            .zip(&w.reached)
            .filter(|(_, r)| !**r)
            .map(|((name, rules), _)| Warning {
                line: rules.first().map_or(0, |s| s.line),
                message: format!(
                    "chain {name} is never jumped to from {ROOT}: its rules do nothing"
                ),
            })
            .collect();
        Ok(Flat {
            rules: w.out,
            lines: w.lines,
            logs: w.logs,
            limits: w.limits,
            warnings,
        })
    }
}

/// Where walking a chain for one packet ended.
enum Outcome<'a> {
    /// A rule decided.
    Decided(Target, &'a str),
    /// The chain was left by RETURN or by its end.
    Returned,
}

impl Program {
    /// The verdict the chains give `r`, walked the way iptables walks them (no flattening):
    /// the target and the origin of the deciding rule, or `None` when DOCKER-USER returns.
    /// LOG rules are passed over; loops cannot occur in a program that flattened.
    pub(super) fn decide(&self, r: &crate::abi::PacketRecord) -> Option<(Target, &str)> {
        self.decide_logging(r, &mut Vec::new())
    }

    /// [`Program::decide`], also listing the origins of the LOG rules the packet reached.
    pub(super) fn decide_logging<'a>(
        &'a self,
        r: &crate::abi::PacketRecord,
        logged: &mut Vec<&'a str>,
    ) -> Option<(Target, &'a str)> {
        match self.walk_packet(0, r, 0, logged) {
            Outcome::Decided(t, o) => Some((t, o)),
            Outcome::Returned => None,
        }
    }

    fn walk_packet<'a>(
        &'a self,
        chain: usize,
        r: &crate::abi::PacketRecord,
        depth: usize,
        logged: &mut Vec<&'a str>,
    ) -> Outcome<'a> {
        if depth > self.chains.len() {
            return Outcome::Returned;
        }
        for st in &self.chains[chain].1 {
            if !st.cond.iter().any(|m| m.matches(r)) {
                continue;
            }
            let t = match &st.target {
                None => continue,
                Some(TargetSpec::Log { .. }) => {
                    logged.push(&st.origin);
                    continue;
                }
                Some(TargetSpec::Return) => return Outcome::Returned,
                Some(TargetSpec::Accept) => Target::Accept,
                Some(TargetSpec::Drop) => Target::Drop,
                Some(TargetSpec::Reject(w)) => Target::Reject(*w),
                Some(TargetSpec::Chain(name)) => {
                    let Some(next) = self.chains.iter().position(|(n, _)| n == name) else {
                        continue;
                    };
                    match self.walk_packet(next, r, depth + 1, logged) {
                        Outcome::Returned => continue,
                        decided => return decided,
                    }
                }
            };
            return Outcome::Decided(t, &st.origin);
        }
        Outcome::Returned
    }
}

/// The state of one flattening.
struct Walk<'a> {
    program: &'a Program,
    out: Vec<Rule>,
    /// The line of each rule of `out`.
    lines: Vec<usize>,
    logs: Vec<LogRule>,
    limits: Vec<LimitRule>,
    stack: Vec<usize>,
    reached: Vec<bool>,
    limit: usize,
}

impl Walk<'_> {
    fn walk(&mut self, chain: usize, guard: Cond) -> Result<(), ParseError> {
        self.stack.push(chain);
        self.reached[chain] = true;
        let mut g = guard;
        for st in &self.program.chains[chain].1 {
            if g.is_empty() {
                break;
            }
            let m = algebra::and(&g, &st.cond).map_err(|e| err(st, e.into()))?;
            if m.is_empty() {
                continue;
            }
            let everything = st.cond.iter().any(|c| *c == crate::model::Match::default());
            match &st.target {
                None => {}
                Some(TargetSpec::Accept) => self.decide(st, &m, Target::Accept)?,
                Some(TargetSpec::Drop) => self.decide(st, &m, Target::Drop)?,
                Some(TargetSpec::Reject(w)) => self.decide(st, &m, Target::Reject(*w))?,
                Some(TargetSpec::Return) => {
                    let n = negate(&st.cond).map_err(|e| err(st, e.into()))?;
                    g = algebra::and(&g, &n).map_err(|e| err(st, e.into()))?;
                    if g.len() > self.limit {
                        return Err(err(st, K::TooLarge(self.limit)));
                    }
                }
                Some(TargetSpec::Log { prefix }) => self.log(st, prefix, &m)?,
                Some(TargetSpec::Chain(name)) => {
                    let Some(next) = self.program.chains.iter().position(|(n, _)| n == name) else {
                        return Err(err(st, K::BadTarget));
                    };
                    if next == 0 || self.stack.contains(&next) {
                        let path: Vec<&str> = self
                            .stack
                            .iter()
                            .chain(std::iter::once(&next))
                            .map(|&i| self.program.chains[i].0.as_str())
                            .collect();
                        return Err(err(st, K::ChainLoop(path.join(" → "))));
                    }
                    self.walk(next, m)?;
                }
            }
            // After a rule that decides every packet, the rest of the chain is unreachable.
            if everything
                && st.limit.is_none()
                && matches!(
                    st.target,
                    Some(TargetSpec::Accept | TargetSpec::Drop | TargetSpec::Reject(_))
                )
            {
                break;
            }
        }
        self.stack.pop();
        Ok(())
    }

    /// The rule set that says whether a packet reaches the rule `st` and matches it (`m`):
    /// every flat rule so far as "not reached" (`Drop`), then `m` as "reached" (`Accept`).
    fn reach_rules(&self, st: &Stmt, m: &Cond) -> Vec<Rule> {
        let mut rules: Vec<Rule> = self
            .out
            .iter()
            .map(|r| Rule {
                target: Target::Drop,
                ..r.clone()
            })
            .collect();
        rules.extend(
            m.iter()
                .map(|m| Rule::new(Chain::User, *m, Target::Accept, st.origin.clone())),
        );
        rules
    }

    /// A LOG rule reached under `m` (see [`LogRule`]).
    fn log(&mut self, st: &Stmt, prefix: &str, m: &Cond) -> Result<(), ParseError> {
        if self.logs.len() == MAX_LOG_RULES {
            return Err(err(st, K::Unsupported("more than 16 -j LOG rules")));
        }
        let rules = self.reach_rules(st, m);
        self.logs.push(LogRule {
            prefix: prefix.to_string(),
            origin: st.origin.clone(),
            rules,
            limit: st.limit,
            limits_before: self.limits.len(),
        });
        Ok(())
    }

    /// A deciding rule: plain, or rate-limited (see [`LimitRule`]).
    fn decide(&mut self, st: &Stmt, m: &Cond, t: Target) -> Result<(), ParseError> {
        let Some((per_second, burst)) = st.limit else {
            return self.emit(st, m, t);
        };
        if self.limits.len() == MAX_LOG_RULES {
            return Err(err(st, K::Unsupported("more than 16 rate-limited rules")));
        }
        let rules = self.reach_rules(st, m);
        let first = self.out.len();
        let disabled: Cond = m
            .iter()
            .map(|m| crate::model::Match {
                state: Some(crate::model::StateSet(0)),
                ..*m
            })
            .collect();
        self.emit(st, &disabled, t)?;
        self.limits.push(LimitRule {
            target: t,
            first,
            per_second,
            burst,
            origin: st.origin.clone(),
            rules,
        });
        Ok(())
    }

    fn emit(&mut self, st: &Stmt, m: &Cond, t: Target) -> Result<(), ParseError> {
        if self.out.len() + m.len() > self.limit {
            return Err(err(st, K::TooLarge(self.limit)));
        }
        self.out.extend(
            m.iter()
                .map(|m| Rule::new(Chain::User, *m, t, st.origin.clone())),
        );
        self.lines.resize(self.out.len(), st.line);
        Ok(())
    }
}

fn err(st: &Stmt, kind: K) -> ParseError {
    ParseError {
        line: st.line,
        pos: st.tpos + 1,
        token: st.ttext.clone(),
        kind,
    }
}
