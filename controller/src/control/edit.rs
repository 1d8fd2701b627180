//! Live rule edits as edits of the rules text: the file stays the one truth (what a restart
//! reads, what a person reviews), and an edit means what the same `iptables` command would.
//!
//! - `add` appends `-A CHAIN SPEC`, `insert` appends `-I CHAIN [N] SPEC`: applied after every
//!   line before them, they land where iptables would put them now. In `iptables-save`
//!   form the line goes before the `COMMIT` of `*filter`.
//! - `delete SPEC` removes the line of the first rule of that chain written with exactly
//!   that specification (word for word, quotes aside), as `iptables -D` finds it.
//! - `delete --line N` removes the rule written on line N (`rules list` shows it).
use rules_wasm::iptables::words;

use super::api::RuleEdit;

/// The chain a rule goes to when none is named.
const DEFAULT_CHAIN: &str = "DOCKER-USER";

/// Why an edit cannot be made (nothing changed).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// No rule was given.
    #[error("no rule given: write its options after `--`, e.g. -- -s 10.0.0.1 -j DROP")]
    Empty,
    /// The spec names its own command.
    #[error(
        "{0:?}: give the rule's options only; the command (-A, -I, -D) comes from add, insert or delete"
    )]
    HasCommand(String),
    /// No rule matches a delete.
    #[error(
        "no rule in {chain} reads {spec:?} (delete takes the rule exactly as it was added; see `bridgewall rules list`)"
    )]
    NoMatch {
        /// The chain.
        chain: String,
        /// The spec.
        spec: String,
    },
    /// The line does not exist or holds no rule.
    #[error("line {line} of {file} {why}")]
    NotARule {
        /// The line.
        line: usize,
        /// The rules file.
        file: String,
        /// What is there instead.
        why: String,
    },
    /// A chain name iptables would not take (or that would change the line's meaning).
    #[error(
        "{0:?} is not a chain name: up to 28 letters, digits and `_-.+@:`, not starting with `-` or `!`"
    )]
    BadChain(String),
    /// A word with a line break or another control character: it would split the rule.
    #[error("word {0:?} holds a control character (a line break would split the rule)")]
    ControlCharacter(String),
    /// A word opens a quote it never closes.
    #[error("line {line}: word {word} opens a quote it never closes")]
    Quote {
        /// The line.
        line: usize,
        /// The word.
        word: usize,
    },
}

/// The text after `edit`, and the line added or removed.
pub fn apply(text: &str, edit: &RuleEdit, file: &str) -> Result<(String, String), EditError> {
    match edit {
        RuleEdit::Append { spec, chain } => {
            // DOCKER and FORWARD are written as DOCKER-USER, where such rules land: in
            // `iptables-save` form Docker's own chains are skipped.
            let line = format!("-A {} {}", resolved(chain_of(chain)?), join(spec)?);
            Ok((insert_line(text, &line), line))
        }
        RuleEdit::Insert {
            spec,
            chain,
            position,
        } => {
            // The position is always written: a spec starting with a number must not be
            // read as one.
            let at = position.unwrap_or(1);
            let line = format!("-I {} {at} {}", resolved(chain_of(chain)?), join(spec)?);
            Ok((insert_line(text, &line), line))
        }
        RuleEdit::Delete { spec, chain } => {
            // DOCKER and FORWARD mean DOCKER-USER, as when the rule was added.
            let chain = resolved(chain_of(chain)?);
            let want = spec_words(spec)?;
            let found = find_rule(text, chain, &want)?.ok_or_else(|| EditError::NoMatch {
                chain: chain.to_string(),
                spec: spec.join(" "),
            })?;
            Ok(remove_line(text, found))
        }
        RuleEdit::DeleteLine { line } => {
            let Some(raw) = text.lines().nth(line.wrapping_sub(1)) else {
                return Err(EditError::NotARule {
                    line: *line,
                    file: file.to_string(),
                    why: format!(
                        "does not exist (the file has {} lines)",
                        text.lines().count()
                    ),
                });
            };
            if rule_command(raw).is_none() {
                return Err(EditError::NotARule {
                    line: *line,
                    file: file.to_string(),
                    why: format!("holds no rule: {:?}", raw.trim()),
                });
            }
            Ok(remove_line(text, line - 1))
        }
    }
}

/// The chain asked for (DOCKER-USER by default), if it is a chain name: one that cannot
/// change the meaning of the line it is written in.
fn chain_of(chain: &Option<String>) -> Result<&str, EditError> {
    let c = chain.as_deref().unwrap_or(DEFAULT_CHAIN);
    let ok = (1..=28).contains(&c.len())
        && !c.starts_with(['-', '!'])
        && c.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "_-.+@:".contains(ch));
    if ok {
        Ok(c)
    } else {
        Err(EditError::BadChain(c.to_string()))
    }
}

/// The chain a rule written for `chain` lands in (Docker's DOCKER and FORWARD: DOCKER-USER).
fn resolved(chain: &str) -> &str {
    match chain {
        "DOCKER" | "FORWARD" => DEFAULT_CHAIN,
        c => c,
    }
}

/// The spec's words, refusing an empty one or one with its own command.
fn spec_words(spec: &[String]) -> Result<Vec<String>, EditError> {
    if spec.is_empty() {
        return Err(EditError::Empty);
    }
    if let Some(w) = spec.iter().find(|w| w.chars().any(char::is_control)) {
        return Err(EditError::ControlCharacter(w.clone()));
    }
    if let Some(c) = spec.iter().find(|w| {
        matches!(
            w.as_str(),
            "-A" | "-I" | "-D" | "-N" | "--append" | "--insert" | "--delete" | "--new-chain"
        )
    }) {
        return Err(EditError::HasCommand(c.clone()));
    }
    Ok(spec.to_vec())
}

/// The spec as one line, each word quoted as the parser reads it back.
fn join(spec: &[String]) -> Result<String, EditError> {
    Ok(spec_words(spec)?
        .iter()
        .map(|w| quote(w))
        .collect::<Vec<_>>()
        .join(" "))
}

/// `w` as one word the rules parser reads back exactly: bare when it can be, else in single
/// quotes (everything literal), a single quote inside written as `"'"` next to them, as a
/// shell joins quoted pieces into one word.
fn quote(w: &str) -> String {
    if !w.is_empty() && !w.chars().any(|c| c.is_whitespace() || "\"'#\\".contains(c)) {
        return w.to_string();
    }
    format!("'{}'", w.replace('\'', "'\"'\"'"))
}

/// For a rule line: its command word and the index of the first word after the command's
/// own arguments (chain, position). `None` for blank, comment and other lines.
fn rule_command(raw: &str) -> Option<(String, Vec<String>, usize)> {
    let mut w = words(raw).ok()?;
    if matches!(
        w.first().map(String::as_str),
        Some("iptables" | "ip6tables")
    ) {
        w.remove(0);
    }
    let first = w.first()?.clone();
    match first.as_str() {
        "-A" | "--append" | "-I" | "--insert" => {
            let mut at = 1;
            let chain = match w.get(1) {
                Some(c) if !c.starts_with('-') && !c.starts_with('!') => {
                    at = 2;
                    c.clone()
                }
                _ => DEFAULT_CHAIN.to_string(),
            };
            if (first.starts_with("-I") || first == "--insert")
                && w.get(at).is_some_and(|p| p.parse::<usize>().is_ok())
            {
                at += 1;
            }
            let chain = resolved(&chain).to_string();
            Some((chain, w, at))
        }
        s if s.starts_with('-') && !s.starts_with("-N") && s != "--new-chain" => {
            Some((DEFAULT_CHAIN.to_string(), w, 0))
        }
        _ => None,
    }
}

/// The index of the line of the first rule of `chain` whose options are `want`.
fn find_rule(text: &str, chain: &str, want: &[String]) -> Result<Option<usize>, EditError> {
    for (i, raw) in text.lines().enumerate() {
        if let Err(word) = words(raw) {
            return Err(EditError::Quote { line: i + 1, word });
        }
        if let Some((c, w, at)) = rule_command(raw)
            && c == chain
            && w[at..] == *want
        {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

fn remove_line(text: &str, index: usize) -> (String, String) {
    let mut removed = String::new();
    let mut out: Vec<&str> = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if i == index {
            removed = l.trim().to_string();
        } else {
            out.push(l);
        }
    }
    (with_newline(out.join("\n")), removed)
}

/// `text` with `line` added where it takes effect after everything before it.
fn insert_line(text: &str, line: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let filter = lines.iter().position(|l| l.trim() == "*filter");
    let commit = filter.and_then(|f| {
        lines[f..]
            .iter()
            .position(|l| l.trim() == "COMMIT")
            .map(|c| f + c)
    });
    let mut out: Vec<&str> = lines.clone();
    match commit {
        Some(c) => out.insert(c, line),
        None => out.push(line),
    }
    with_newline(out.join("\n"))
}

fn with_newline(mut s: String) -> String {
    if !s.is_empty() {
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn add_and_insert_append_lines_that_land_where_iptables_puts_them() {
        let (t, line) = apply(
            "-I -s 10.0.0.1 -j DROP\n",
            &RuleEdit::Append {
                spec: spec("-s 10.0.0.2 -j DROP"),
                chain: None,
            },
            "f",
        )
        .unwrap();
        assert_eq!(line, "-A DOCKER-USER -s 10.0.0.2 -j DROP");
        assert_eq!(
            t,
            "-I -s 10.0.0.1 -j DROP\n-A DOCKER-USER -s 10.0.0.2 -j DROP\n"
        );
        let (t, line) = apply(
            "",
            &RuleEdit::Insert {
                spec: vec![
                    "-m".into(),
                    "comment".into(),
                    "--comment".into(),
                    "two words".into(),
                    "-j".into(),
                    "ACCEPT".into(),
                ],
                chain: None,
                position: Some(2),
            },
            "f",
        )
        .unwrap();
        assert_eq!(
            line,
            "-I DOCKER-USER 2 -m comment --comment 'two words' -j ACCEPT"
        );
        assert_eq!(t, format!("{line}\n"));
    }

    #[test]
    fn save_form_gets_the_line_before_filters_commit() {
        let text = "*nat\n:A - [0:0]\nCOMMIT\n*filter\n:DOCKER-USER - [0:0]\n-A DOCKER-USER -j RETURN\nCOMMIT\n";
        let (t, _) = apply(
            text,
            &RuleEdit::Insert {
                spec: spec("-s 1.2.3.4 -j DROP"),
                chain: None,
                position: None,
            },
            "f",
        )
        .unwrap();
        assert_eq!(
            t,
            "*nat\n:A - [0:0]\nCOMMIT\n*filter\n:DOCKER-USER - [0:0]\n-A DOCKER-USER -j RETURN\n-I DOCKER-USER 1 -s 1.2.3.4 -j DROP\nCOMMIT\n"
        );
    }

    #[test]
    fn delete_finds_the_rule_as_written_in_any_form() {
        let text = "# mine\n-I -s 10.0.0.1 -j DROP\niptables -A DOCKER-USER -p tcp --dport 80 -j ACCEPT\n-A MINE -j DROP\n";
        let (t, removed) = apply(
            text,
            &RuleEdit::Delete {
                spec: spec("-p tcp --dport 80 -j ACCEPT"),
                chain: None,
            },
            "f",
        )
        .unwrap();
        assert_eq!(
            removed,
            "iptables -A DOCKER-USER -p tcp --dport 80 -j ACCEPT"
        );
        assert_eq!(t, "# mine\n-I -s 10.0.0.1 -j DROP\n-A MINE -j DROP\n");
        let (_, removed) = apply(
            text,
            &RuleEdit::Delete {
                spec: spec("-s 10.0.0.1 -j DROP"),
                chain: None,
            },
            "f",
        )
        .unwrap();
        assert_eq!(removed, "-I -s 10.0.0.1 -j DROP");
        // The same options in another chain are another rule.
        let e = apply(
            text,
            &RuleEdit::Delete {
                spec: spec("-j DROP"),
                chain: None,
            },
            "f",
        )
        .unwrap_err();
        assert!(matches!(e, EditError::NoMatch { .. }), "{e}");
        assert!(
            apply(
                text,
                &RuleEdit::Delete {
                    spec: spec("-j DROP"),
                    chain: Some("MINE".into()),
                },
                "f",
            )
            .is_ok()
        );
    }

    #[test]
    fn delete_by_line_refuses_lines_without_a_rule() {
        let text = "# mine\n-I -s 10.0.0.1 -j DROP\n";
        let (t, removed) = apply(text, &RuleEdit::DeleteLine { line: 2 }, "f").unwrap();
        assert_eq!(
            (t.as_str(), removed.as_str()),
            ("# mine\n", "-I -s 10.0.0.1 -j DROP")
        );
        let e = apply(text, &RuleEdit::DeleteLine { line: 1 }, "rules.txt").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 1 of rules.txt holds no rule: \"# mine\""
        );
        let e = apply(text, &RuleEdit::DeleteLine { line: 9 }, "rules.txt").unwrap_err();
        assert!(
            e.to_string()
                .contains("does not exist (the file has 2 lines)"),
            "{e}"
        );
        let e = apply(text, &RuleEdit::DeleteLine { line: 0 }, "rules.txt").unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn a_spec_with_its_own_command_or_none_is_refused() {
        let e = apply(
            "",
            &RuleEdit::Append {
                spec: spec("-A DOCKER-USER -j DROP"),
                chain: None,
            },
            "f",
        )
        .unwrap_err();
        assert_eq!(e, EditError::HasCommand("-A".into()));
        let e = apply(
            "",
            &RuleEdit::Append {
                spec: vec![],
                chain: None,
            },
            "f",
        )
        .unwrap_err();
        assert_eq!(e, EditError::Empty);
    }
}
