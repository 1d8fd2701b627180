//! What the fuzz targets (`fuzz/`, see `fuzz/README.md`) found in the controller, each input
//! inlined. The `control_request` target holds live rule edits (`control::edit::apply`) to
//! two promises: the line an `add`/`insert` writes reads back as the rule that was asked for,
//! and `delete` with the same spec finds it again. Findings F1–F4 broke them; each test
//! failed before `control/edit.rs` checked chain names, resolved DOCKER/FORWARD, refused
//! control characters, quoted words as the rules parser reads them and wrote the position of
//! every insert.
use controller::control::api::RuleEdit;
use controller::control::edit::apply;
use rules_wasm::iptables::words;

fn spec(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// Adds `edit` to `text`, then deletes it with the spec and chain it was added with.
fn add_then_delete(text: &str, edit: RuleEdit) -> Result<(), String> {
    let (spec, chain) = match &edit {
        RuleEdit::Append { spec, chain } | RuleEdit::Insert { spec, chain, .. } => {
            (spec.clone(), chain.clone())
        }
        other => return Err(format!("not an add: {other:?}")),
    };
    let (after, line) = apply(text, &edit, "rules.txt").map_err(|e| e.to_string())?;
    if line.contains('\n') || after.lines().count() != text.lines().count() + 1 {
        return Err(format!("{line:?} is not one line"));
    }
    apply(&after, &RuleEdit::Delete { spec, chain }, "rules.txt")
        .map(|_| ())
        .map_err(|e| format!("{line:?} added, then: {e}"))
}

/// F1: the chain name went into the line unchecked. A chain that is no chain name made a
/// line meaning something else: `!` or `""` put the rule in DOCKER-USER, a space split the
/// name, a line break added a second rule. An edit must refuse such a name (or keep the
/// rule in that chain, found again by delete).
#[test]
fn f1_a_chain_that_is_no_chain_name_is_refused() {
    for chain in ["!", "", "-x", "a b", "MINE\n-A DOCKER-USER -j ACCEPT"] {
        let edit = RuleEdit::Append {
            spec: spec(&["-j", "DROP"]),
            chain: Some(chain.into()),
        };
        if let Ok((after, line)) = apply("", &edit, "rules.txt") {
            assert!(
                add_then_delete("", edit).is_ok(),
                "chain {chain:?}: wrote {line:?}, giving {after:?}"
            );
        }
    }
}

/// F2: `add --chain FORWARD` (or DOCKER) wrote a line the rules put in DOCKER-USER, where
/// `delete --chain FORWARD` with the same spec did not look.
#[test]
fn f2_a_rule_added_to_forward_is_deleted_from_forward() {
    for chain in ["FORWARD", "DOCKER"] {
        let edit = RuleEdit::Append {
            spec: spec(&["-s", "10.0.0.1", "-j", "DROP"]),
            chain: Some(chain.into()),
        };
        assert_eq!(add_then_delete("", edit), Ok(()), "chain {chain}");
    }
}

/// F3: a word with both a single quote and a backslash was written in double quotes with the
/// backslash doubled, which the rules parser does not undo (`it's C:\dir` came back as
/// `it's C:\\dir`, and a word ending in a backslash opened a quote it never closed); a word
/// with a line break split the rule over two lines.
#[test]
fn f3_every_word_reads_back_as_written() {
    for word in [r"it's C:\dir", r"a'b\", "'", r#"say "hi", it's"#] {
        let edit = RuleEdit::Append {
            spec: spec(&["-m", "comment", "--comment", word, "-j", "ACCEPT"]),
            chain: None,
        };
        let (_, line) = apply("", &edit, "rules.txt").unwrap();
        assert_eq!(
            words(&line),
            Ok(spec(&[
                "-A",
                "DOCKER-USER",
                "-m",
                "comment",
                "--comment",
                word,
                "-j",
                "ACCEPT"
            ])),
            "{line}"
        );
        assert_eq!(add_then_delete("", edit), Ok(()), "{word:?}");
    }
    let broken = RuleEdit::Append {
        spec: spec(&["-m", "comment", "--comment", "two\nlines", "-j", "ACCEPT"]),
        chain: None,
    };
    let written = apply("", &broken, "rules.txt");
    assert!(
        written.is_err(),
        "a line break in a word was written: {written:?}"
    );
}

/// F4: `insert` without a position, of a spec starting with a number, wrote
/// `-I DOCKER-USER 5 -j DROP`: an insert of `-j DROP` at position 5, not the rule asked for
/// (which the rules parser then refuses, as it should).
#[test]
fn f4_a_leading_number_is_not_taken_for_a_position() {
    let edit = RuleEdit::Insert {
        spec: spec(&["5", "-j", "DROP"]),
        chain: None,
        position: None,
    };
    assert_eq!(add_then_delete("-A -j ACCEPT\n", edit), Ok(()));
}

/// The edits the findings' fixes must keep working.
#[test]
fn ordinary_edits_round_trip() {
    let edits = [
        RuleEdit::Append {
            spec: spec(&["-s", "10.0.0.1", "-j", "DROP"]),
            chain: None,
        },
        RuleEdit::Insert {
            spec: spec(&["-m", "comment", "--comment", "two words", "-j", "ACCEPT"]),
            chain: Some("DOCKER-USER".into()),
            position: Some(2),
        },
        RuleEdit::Append {
            spec: spec(&["-m", "comment", "--comment", r#"say "hi""#, "-j", "ACCEPT"]),
            chain: Some("MINE".into()),
        },
        RuleEdit::Insert {
            spec: spec(&["-p", "tcp", "--dport", "80", "-j", "ACCEPT"]),
            chain: None,
            position: None,
        },
    ];
    for edit in edits {
        assert_eq!(
            add_then_delete("-N MINE\n-A -j RETURN\n", edit.clone()),
            Ok(()),
            "{edit:?}"
        );
    }
}
