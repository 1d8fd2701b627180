//! The command of a line: `-N NAME`, or `-A`/`-I [CHAIN] [N]` (a bare rule is appended to
//! DOCKER-USER).
use super::cursor::Cursor;
use super::{Command, Placement, Pos, Spec};
use crate::iptables::error::{ParseError, ParseErrorKind as K};

/// What a token did to the command.
pub(super) enum Read {
    /// `-N NAME`: the whole line.
    NewChain(String),
    /// `-A` / `-I` with its chain and position.
    Placement,
    /// Not a command option: a rule option.
    NotACommand,
}

/// The command read so far.
#[derive(Default)]
pub(super) struct Partial {
    chain: Option<(String, Pos)>,
    placement: Option<(Placement, Pos)>,
}

impl Partial {
    /// Reads the command option `tok` at `at`, if it is one.
    pub(super) fn option(
        &mut self,
        c: &mut Cursor<'_, '_>,
        at: Pos,
        tok: &str,
    ) -> Result<Read, ParseError> {
        match tok {
            "-N" | "--new-chain" => new_chain(c, at).map(Read::NewChain),
            "-I" | "--insert" | "-A" | "--append" => {
                self.place(c, at, matches!(tok, "-I" | "--insert"))?;
                Ok(Read::Placement)
            }
            _ => Ok(Read::NotACommand),
        }
    }

    /// `-A [CHAIN]` or `-I [CHAIN] [N]`.
    fn place(&mut self, c: &mut Cursor<'_, '_>, at: Pos, insert: bool) -> Result<(), ParseError> {
        let line = c.line;
        c.no_negation(at)?;
        if self.placement.is_some() {
            return Err(line.err(at, K::Duplicate));
        }
        c.i = at + 1;
        if let Some(name) = line.text(c.i).filter(|_| !line.is_option(c.i))
            && name.parse::<usize>().is_err()
        {
            self.chain = Some((name.to_string(), c.i));
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
        self.placement = Some((p, at));
        Ok(())
    }

    /// The rule command for the options `spec`.
    pub(super) fn finish(self, spec: Spec) -> Command {
        let (placement, place_at) = self.placement.unwrap_or((Placement::Append, 0));
        Command::Rule {
            chain: self.chain,
            placement,
            place_at,
            spec: Box::new(spec),
        }
    }
}

/// `-N NAME`, alone on its line.
fn new_chain(c: &mut Cursor<'_, '_>, at: Pos) -> Result<String, ParseError> {
    c.no_negation(at)?;
    let (_, _, name) = c.value(at, false)?;
    if !c.done() {
        return Err(c.line.err(c.i, K::UnknownOption));
    }
    Ok(name)
}
