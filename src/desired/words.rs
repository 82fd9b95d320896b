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
}

/// Split like `sh` would, without any expansion.
pub fn split(input: &str) -> Result<Vec<String>, WordsError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = input.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
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
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(ch) => word.push(ch),
                    None => word.push('\\'),
                }
            }
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
}
