//! Target `control_request`: decoding the control API's requests
//! (`controller::control::api`) as the server decodes them — JSON bodies with `serde_json`,
//! query strings with `serde_urlencoded` (what axum's `Query` uses) — and the live rule edit
//! (`controller::control::edit::apply`) of decoded `RuleEdit`s on a fuzzed rules text.
//!
//! The input's first byte picks what is decoded: 0 a `RuleEdit` (JSON, then a NUL byte and
//! the rules text), 1 `TraceRequest`, 2 `AuditState`, 3 `CaptureQuery`, 4 `MonitorQuery`,
//! 5 `PolicyLoadQuery`; 6 and 7 build a `RuleEdit` and a rules text from the bytes with
//! `arbitrary`, from words that matter to the editor (quotes, `#`, commands, chains).
//!
//! Properties, beyond "never panics": whatever decodes encodes and decodes back equal; an
//! edit that succeeds adds or removes exactly one line; the line an add writes reads back as
//! the words asked for; and a rule just added can be deleted with the spec it was added with.
use std::fmt::Debug;

use arbitrary::Unstructured;
use controller::control::api::{
    AuditState, CaptureQuery, MonitorQuery, PolicyLoadQuery, RuleEdit, TraceRequest,
};
use controller::control::edit::apply;
use rules_wasm::iptables::words;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 8 {
        0 => {
            let (body, text) = crate::split_nul(rest);
            if let Some(edit) = json::<RuleEdit>(body) {
                let text = String::from_utf8_lossy(text.unwrap_or_default());
                check_edit(&text, &edit);
            }
        }
        1 => {
            json::<TraceRequest>(rest);
        }
        2 => {
            json::<AuditState>(rest);
        }
        3 => {
            json::<CaptureQuery>(rest);
            query::<CaptureQuery>(rest);
        }
        4 => {
            json::<MonitorQuery>(rest);
            query::<MonitorQuery>(rest);
        }
        5 => {
            json::<PolicyLoadQuery>(rest);
            query::<PolicyLoadQuery>(rest);
        }
        _ => {
            let mut u = Unstructured::new(rest);
            if let Ok((text, edit)) = structured(&mut u) {
                check_edit(&text, &edit);
            }
        }
    }
}

/// Decodes a JSON body; what decodes must round-trip.
fn json<T: Serialize + DeserializeOwned + PartialEq + Debug>(bytes: &[u8]) -> Option<T> {
    let v: T = serde_json::from_slice(bytes).ok()?;
    let again = serde_json::to_vec(&v).expect("a decoded request encodes");
    let back: T = serde_json::from_slice(&again).expect("an encoded request decodes");
    assert_eq!(back, v, "JSON round trip");
    Some(v)
}

/// Decodes a query string; what decodes must round-trip.
fn query<T: Serialize + DeserializeOwned + PartialEq + Debug>(bytes: &[u8]) -> Option<T> {
    let v: T = serde_urlencoded::from_bytes(bytes).ok()?;
    let again = serde_urlencoded::to_string(&v).expect("a decoded query encodes");
    let back: T = serde_urlencoded::from_str(&again).expect("an encoded query decodes");
    assert_eq!(back, v, "query round trip of {again:?}");
    Some(v)
}

const WORDS: &[&str] = &[
    "-s",
    "10.0.0.1",
    "-d",
    "web",
    "-j",
    "DROP",
    "ACCEPT",
    "-p",
    "tcp",
    "--dport",
    "80",
    "-m",
    "comment",
    "--comment",
    "two words",
    "it's",
    "it's a\\b",
    "say \"hi\"",
    "a'b\\",
    "#x",
    "!",
    "",
    "-A",
    "-I",
    "5",
    "'",
    "\"",
    "\\",
    "a\nb",
];

const CHAINS: &[&str] = &[
    "DOCKER-USER",
    "MINE",
    "DOCKER",
    "FORWARD",
    "",
    "-x",
    "a b",
    "!",
];

const LINES: &[&str] = &[
    "# comment",
    "-I -s 10.0.0.1 -j DROP",
    "*filter",
    "COMMIT",
    "*nat",
    ":DOCKER-USER - [0:0]",
    "-A DOCKER-USER -j RETURN",
    "iptables -A MINE -j DROP",
    "-N MINE",
    "-I DOCKER-USER 2 -p tcp --dport 80 -j ACCEPT",
    "",
    "   ",
    "-A \"unterminated",
    "-m comment --comment 'x y' -j DROP",
];

fn pick_or_any(u: &mut Unstructured<'_>, dict: &[&str]) -> arbitrary::Result<String> {
    if u.ratio(3, 4)? {
        Ok((*u.choose(dict)?).to_string())
    } else {
        u.arbitrary()
    }
}

fn structured(u: &mut Unstructured<'_>) -> arbitrary::Result<(String, RuleEdit)> {
    let mut text = String::new();
    for _ in 0..u.int_in_range(0..=8)? {
        text.push_str(&pick_or_any(u, LINES)?);
        text.push('\n');
    }
    let mut spec = Vec::new();
    for _ in 0..u.int_in_range(0..=6)? {
        spec.push(pick_or_any(u, WORDS)?);
    }
    let chain = if u.arbitrary()? {
        Some(pick_or_any(u, CHAINS)?)
    } else {
        None
    };
    let edit = match u.int_in_range(0..=3)? {
        0 => RuleEdit::Append { spec, chain },
        1 => RuleEdit::Insert {
            spec,
            chain,
            position: if u.arbitrary()? {
                Some(u.int_in_range(0..=10)?)
            } else {
                None
            },
        },
        2 => RuleEdit::Delete { spec, chain },
        _ => RuleEdit::DeleteLine {
            line: if u.ratio(7, 8)? {
                u.int_in_range(0..=10)?
            } else {
                u.arbitrary()?
            },
        },
    };
    Ok((text, edit))
}

/// Applies `edit` to `text` and checks what came out.
///
/// An edit of a kind already reported (see [`known_finding`]) that breaks a property is let
/// through, so a run goes on looking for new kinds; once `edit::apply` is fixed such edits
/// are refused or keep the properties, and nothing is let through.
/// `BW_FUZZ_KNOWN=1` in the environment lets nothing through, to see the known findings.
pub fn check_edit(text: &str, edit: &RuleEdit) {
    static REPORT_KNOWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let report_known = *REPORT_KNOWN.get_or_init(|| std::env::var_os("BW_FUZZ_KNOWN").is_some());
    if let Err(broken) = edit_properties(text, edit)
        && (report_known || known_finding(edit).is_none())
    {
        panic!("{broken}");
    }
}

/// The chain names `edit::apply` resolves as iptables' parser does: `DOCKER` and `FORWARD`
/// written in rule lines mean DOCKER-USER.
fn is_alias_chain(c: &str) -> bool {
    matches!(c, "DOCKER" | "FORWARD")
}

/// Whether a chain name can stand in a rule line as one word that reads back as a chain.
fn chain_ok(c: &str) -> bool {
    !c.is_empty()
        && !c.starts_with(['-', '!', '#'])
        && !c
            .chars()
            .any(|ch| ch.is_whitespace() || "\"'\\".contains(ch))
}

/// The findings of `control_request` that the fuzz README lists, each with its regression
/// test in `controller/tests/fuzz_regressions.rs`: which one `edit` is an instance of.
pub fn known_finding(edit: &RuleEdit) -> Option<&'static str> {
    let (spec, chain, position) = match edit {
        RuleEdit::Append { spec, chain } | RuleEdit::Delete { spec, chain } => (spec, chain, None),
        RuleEdit::Insert {
            spec,
            chain,
            position,
        } => (spec, chain, *position),
        RuleEdit::DeleteLine { .. } => return None,
    };
    if chain.as_deref().is_some_and(|c| !chain_ok(c)) {
        return Some("F1: chain name not checked");
    }
    if chain.as_deref().is_some_and(is_alias_chain) {
        return Some("F2: DOCKER/FORWARD added but not found by delete");
    }
    if spec
        .iter()
        .any(|w| w.contains('\n') || (w.contains('\'') && w.contains('\\')))
    {
        return Some("F3: word quoted so that it reads back otherwise");
    }
    if matches!(edit, RuleEdit::Insert { .. })
        && position.is_none()
        && spec.first().is_some_and(|w| w.parse::<usize>().is_ok())
    {
        return Some("F4: insert spec starting with a number reads as a position");
    }
    None
}

/// The lines of `text` that hold something, without carriage returns at their ends: an edit
/// may drop a blank line at the end, and writes `\n` line ends (a CRLF file comes back LF).
fn filled(text: &str) -> Vec<&str> {
    text.lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// Whether `longer` is `shorter` with one line, equal to `line` once trimmed, put in.
fn one_more(shorter: &[&str], longer: &[&str], line: &str) -> bool {
    longer.len() == shorter.len() + 1
        && (0..longer.len()).any(|i| {
            longer[i].trim() == line
                && longer[..i] == shorter[..i]
                && longer[i + 1..] == shorter[i..]
        })
}

fn edit_properties(text: &str, edit: &RuleEdit) -> Result<(), String> {
    let (after, line) = match apply(text, edit, "rules.txt") {
        Ok(x) => x,
        Err(e) => {
            let _ = e.to_string();
            return Ok(());
        }
    };
    let check = |ok: bool, what: String| if ok { Ok(()) } else { Err(what) };
    let (old, new) = (filled(text), filled(&after));
    match edit {
        RuleEdit::Append { spec, chain } | RuleEdit::Insert { spec, chain, .. } => {
            check(
                !line.contains('\n'),
                format!("the added rule {line:?} spans lines"),
            )?;
            check(
                one_more(&old, &new, &line),
                format!("{edit:?} on {text:?} did not add the one line {line:?}: {after:?}"),
            )?;
            let (cmd, position) = match edit {
                RuleEdit::Insert { position, .. } => ("-I", *position),
                _ => ("-A", None),
            };
            // The chain as named, or as rule lines resolve it; an insert without a position
            // may spell out the default one.
            let named = chain.as_deref().unwrap_or("DOCKER-USER");
            let resolved = if is_alias_chain(named) {
                "DOCKER-USER"
            } else {
                named
            };
            let spelled = match edit {
                RuleEdit::Insert { .. } => position.or(Some(1)),
                _ => None,
            };
            let read = words(&line);
            let fits = |c: &str, p: Option<usize>| {
                let mut want = vec![cmd.to_string(), c.to_string()];
                want.extend(p.map(|p| p.to_string()));
                want.extend(spec.iter().cloned());
                read.as_ref() == Ok(&want)
            };
            check(
                [named, resolved]
                    .iter()
                    .any(|c| fits(c, position) || fits(c, spelled)),
                format!("the added line {line:?} reads back as {read:?}, not {spec:?} in {named}"),
            )?;
            // `delete` takes the rule exactly as it was added (when the file can be read).
            if after.lines().all(|l| words(l).is_ok()) {
                let del = RuleEdit::Delete {
                    spec: spec.clone(),
                    chain: chain.clone(),
                };
                let gone = apply(&after, &del, "rules.txt");
                check(
                    gone.is_ok(),
                    format!(
                        "the rule {line:?} just added cannot be deleted with its spec: {gone:?}"
                    ),
                )?;
            }
        }
        RuleEdit::Delete { .. } | RuleEdit::DeleteLine { .. } => {
            check(
                one_more(&new, &old, &line),
                format!("{edit:?} on {text:?} did not remove the one line {line:?}: {after:?}"),
            )?;
        }
    }
    Ok(())
}
