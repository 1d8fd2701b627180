//! Walking one line's tokens: an option's value (with the legacy `-s ! x` negation), a
//! pending `!`, and the match modules loaded so far.
use super::{Line, Opt, Pos};
use crate::iptables::error::{ParseError, ParseErrorKind as K};

/// The parse state of one line: where we are, a pending `!`, the loaded match modules.
pub(super) struct Cursor<'a, 'b> {
    pub line: &'b Line<'a>,
    /// The next token to read.
    pub i: Pos,
    /// A `!` read and not yet taken by an option.
    pub neg: Option<Pos>,
    modules: Vec<String>,
}

impl<'a, 'b> Cursor<'a, 'b> {
    pub(super) fn new(line: &'b Line<'a>) -> Self {
        Self {
            line,
            i: 0,
            neg: None,
            modules: Vec::new(),
        }
    }

    /// Whether every token was read.
    pub(super) fn done(&self) -> bool {
        self.i >= self.line.toks.len()
    }

    /// A `!` at `at`: pending for the next option; two in a row are an error.
    pub(super) fn bang(&mut self, at: Pos) -> Result<(), ParseError> {
        if self.neg.is_some() {
            return Err(self.line.err(at, K::BadNegation));
        }
        self.neg = Some(at);
        self.i += 1;
        Ok(())
    }

    /// At the end of the line: a `!` that no option took is missing its option.
    pub(super) fn no_pending_bang(&self) -> Result<(), ParseError> {
        match self.neg {
            Some(at) => Err(self.line.err(at, K::MissingValue)),
            None => Ok(()),
        }
    }

    /// Consumes the value of the option at `at`, with the legacy `-s ! x` form when
    /// `negatable`; returns (negated, value position, value).
    pub(super) fn value(
        &mut self,
        at: Pos,
        negatable: bool,
    ) -> Result<(bool, Pos, String), ParseError> {
        let l = self.line;
        let mut neg = self.neg.take().is_some();
        if neg && !negatable {
            return Err(l.err(at, K::BadNegation));
        }
        self.i = at + 1;
        if l.is_bang(self.i) {
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

    /// Like [`Cursor::value`] into an [`Opt`], refusing a second occurrence (`dup`) and a
    /// value `parse` refuses (as `bad`).
    pub(super) fn opt<T>(
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

    /// A text value (an address or a name, resolved later).
    pub(super) fn text_opt(
        &mut self,
        dup: bool,
        at: Pos,
        bad: K,
    ) -> Result<Opt<String>, ParseError> {
        self.opt(dup, at, true, |v| Some(v.to_string()), bad)
    }

    /// The value after the option's first one (`--tcp-flags MASK COMP`, `--match-set NAME
    /// FLAGS`), parsed by `parse` (refused as `bad`); `at` is the option, for a missing value.
    pub(super) fn second<T>(
        &mut self,
        at: Pos,
        parse: impl FnOnce(&str) -> Option<T>,
        bad: K,
    ) -> Result<T, ParseError> {
        let l = self.line;
        let Some(v) = l.text(self.i).filter(|_| !l.is_option(self.i)) else {
            return Err(l.err(at, K::MissingValue));
        };
        let v = parse(v).ok_or_else(|| l.err(self.i, bad))?;
        self.i += 1;
        Ok(v)
    }

    /// An option without a value (`--syn`, `--connlimit-saddr`): steps past it.
    pub(super) fn flag(&mut self, at: Pos) {
        self.i = at + 1;
    }

    /// Refuses a pending `!` before the option at `at`.
    pub(super) fn no_negation(&mut self, at: Pos) -> Result<(), ParseError> {
        match self.neg.take() {
            Some(_) => Err(self.line.err(at, K::BadNegation)),
            None => Ok(()),
        }
    }

    /// Takes a pending `!` (for an option without a value that may be negated).
    pub(super) fn take_negation(&mut self) -> bool {
        self.neg.take().is_some()
    }

    /// Records that match module `m` is loaded (by `-m`, or implied by `-p`).
    pub(super) fn load(&mut self, m: String) {
        self.modules.push(m);
    }

    /// Whether match module `m` is loaded.
    pub(super) fn loaded(&self, m: &str) -> bool {
        self.modules.iter().any(|x| x == m)
    }
}
