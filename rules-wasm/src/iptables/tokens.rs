//! Splitting a rule line into tokens as a shell (and `iptables-save`) would: whitespace
//! separates, double quotes keep a `--comment "two words"` together (`\"` is a quote inside
//! them), single quotes keep everything literally, and `#` at the start of a token starts a
//! comment.

/// One token of a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    /// The text, quotes removed.
    pub text: String,
    /// Whether it was quoted (a quoted `!` or `-x` is a value, never an option).
    pub quoted: bool,
}

/// The tokens of `line`, or the 1-based position of an unterminated quote's token.
pub(crate) fn tokenize(line: &str) -> Result<Vec<Token>, usize> {
    let mut out: Vec<Token> = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&c) = chars.peek() else {
            return Ok(out);
        };
        if c == '#' {
            return Ok(out);
        }
        let mut text = String::new();
        let mut quoted = false;
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() {
                break;
            }
            chars.next();
            if c == '\'' {
                quoted = true;
                loop {
                    match chars.next() {
                        None => return Err(out.len() + 1),
                        Some('\'') => break,
                        Some(c) => text.push(c),
                    }
                }
                continue;
            }
            if c != '"' {
                text.push(c);
                continue;
            }
            quoted = true;
            loop {
                match chars.next() {
                    None => return Err(out.len() + 1),
                    Some('"') => break,
                    Some('\\') if chars.peek() == Some(&'"') => {
                        chars.next();
                        text.push('"');
                    }
                    Some(c) => text.push(c),
                }
            }
        }
        out.push(Token { text, quoted });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(l: &str) -> Vec<String> {
        tokenize(l).unwrap().into_iter().map(|t| t.text).collect()
    }

    #[test]
    fn quotes_and_comments() {
        assert_eq!(
            texts(r#"-A X -m comment --comment "allow \"web\" in" -j ACCEPT # note"#),
            [
                "-A",
                "X",
                "-m",
                "comment",
                "--comment",
                "allow \"web\" in",
                "-j",
                "ACCEPT"
            ]
        );
        assert_eq!(texts("  # only a comment"), Vec::<String>::new());
        assert_eq!(texts("--comment 'it\"s two'"), ["--comment", "it\"s two"]);
        assert_eq!(tokenize(r#"-m comment --comment "open"#), Err(4));
    }
}
