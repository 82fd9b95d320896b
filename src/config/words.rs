//! Splitting a `cmd:` string into words.
//!
//! Kamal appends `cmd` to a shell command line, so the remote shell splits it
//! (and would expand `$VAR`, globs, `;`...). berth never hands config values
//! to a shell: it splits `cmd` itself with the quoting rules of `sh`
//! (single quotes, double quotes, backslashes) and rejects the constructs
//! that only a shell could give meaning to, so the container gets the same
//! argv Kamal's would for every command berth accepts.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WordsError {
    #[error("unterminated {0} quote")]
    Unterminated(&'static str),
    #[error(
        "`{0}` outside quotes needs a shell; berth runs cmd without one (quote it, or wrap the command in `sh -c '...'`)"
    )]
    NeedsShell(char),
    #[error(
        "a line break outside quotes starts another command in a shell; berth runs cmd without one (put the command on one line, or wrap it in `sh -c '...'`)"
    )]
    LineBreak,
}

/// Split like `sh` would, without any expansion.
pub fn split(input: &str) -> Result<Vec<String>, WordsError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = input.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' if chars.clone().any(|c| !c.is_whitespace()) => {
                // `sh` would run what follows as a second command; a
                // trailing line break (YAML `|`) is harmless.
                return Err(WordsError::LineBreak);
            }
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => word.push(ch),
                        None => return Err(WordsError::Unterminated("single")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(ch @ ('"' | '\\' | '$' | '`')) => word.push(ch),
                            Some('\n') => {}
                            Some(ch) => {
                                word.push('\\');
                                word.push(ch);
                            }
                            None => return Err(WordsError::Unterminated("double")),
                        },
                        Some(ch @ ('$' | '`')) => return Err(WordsError::NeedsShell(ch)),
                        Some(ch) => word.push(ch),
                        None => return Err(WordsError::Unterminated("double")),
                    }
                }
            }
            '\\' => match chars.next() {
                // A line continuation: removed, as `sh` does, starting no word.
                Some('\n') => {}
                Some(ch) => {
                    in_word = true;
                    word.push(ch);
                }
                None => {
                    in_word = true;
                    word.push('\\');
                }
            },
            '$' | '`' | ';' | '&' | '|' | '<' | '>' | '(' | ')' | '*' | '?' | '[' => {
                return Err(WordsError::NeedsShell(c));
            }
            '~' if !in_word => return Err(WordsError::NeedsShell(c)),
            '#' if !in_word => break,
            _ => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_sh() {
        assert_eq!(
            split("bin/jobs --queue default").unwrap(),
            ["bin/jobs", "--queue", "default"]
        );
        assert_eq!(
            split("sh -c 'echo $HOME; ls'").unwrap(),
            ["sh", "-c", "echo $HOME; ls"]
        );
        assert_eq!(split(r#"a "b c" d\ e"#).unwrap(), ["a", "b c", "d e"]);
        assert_eq!(split(r#""x\"y""#).unwrap(), ["x\"y"]);
        assert_eq!(split("a ''").unwrap(), ["a", ""]);
        assert_eq!(split("  ").unwrap(), Vec::<String>::new());
        assert_eq!(split("a=b#c").unwrap(), ["a=b#c"]);
    }

    #[test]
    fn rejects_what_needs_a_shell() {
        assert_eq!(split("echo $HOME"), Err(WordsError::NeedsShell('$')));
        assert_eq!(split("a; b"), Err(WordsError::NeedsShell(';')));
        assert_eq!(split("echo \"$X\""), Err(WordsError::NeedsShell('$')));
        assert_eq!(split("ls *.rb"), Err(WordsError::NeedsShell('*')));
        assert_eq!(split("'open"), Err(WordsError::Unterminated("single")));
    }

    #[test]
    fn a_line_break_between_words_is_refused() {
        // `sh` would run `rm -rf /data` as a command of its own.
        assert_eq!(split("bin/jobs\nrm -rf /data"), Err(WordsError::LineBreak));
        assert_eq!(split("bin/jobs \n  --queue x"), Err(WordsError::LineBreak));
        // A trailing one (YAML `|` blocks) and one inside quotes are words.
        assert_eq!(
            split("bin/jobs --queue x\n").unwrap(),
            ["bin/jobs", "--queue", "x"]
        );
        assert_eq!(split("echo 'a\nb'").unwrap(), ["echo", "a\nb"]);
        assert_eq!(split("a \\\n b").unwrap(), ["a", "b"]);
    }
}
