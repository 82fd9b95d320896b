//! Shell quoting: the one place where an argv becomes a remote shell string.
//!
//! SSH runs a command through the remote user's shell, so every remote
//! command berth sends is an argv joined here; config values never reach a
//! shell unquoted. Safe words stay bare (readable logs), anything else is
//! single-quoted, which in POSIX sh means "no interpretation at all".

use std::borrow::Cow;

/// Characters that never need quoting in any POSIX shell position.
fn is_safe(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, '_' | '.' | '/' | ':' | '=' | '@' | '%' | '+' | ',' | '-')
}

/// Quote one argument for POSIX sh. NUL cannot be passed through a shell at
/// all; use [`try_join`] where the input is not known to be NUL-free.
pub fn quote(arg: &str) -> Cow<'_, str> {
    if !arg.is_empty() && arg.chars().all(is_safe) && !arg.starts_with('=') {
        return Cow::Borrowed(arg);
    }
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('\'');
    for c in arg.chars() {
        if c == '\'' {
            // Close the quote, add an escaped quote, reopen.
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    Cow::Owned(out)
}

/// Quote each element and join with spaces.
pub fn join<I, S>(argv: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    argv.into_iter()
        .map(|a| quote(a.as_ref()).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellError {
    #[error("argument {index} contains a NUL byte, which no shell can pass")]
    Nul { index: usize },
}

/// [`join`], refusing arguments that contain NUL.
pub fn try_join<I, S>(argv: I) -> Result<String, ShellError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let argv: Vec<S> = argv.into_iter().collect();
    if let Some(index) = argv.iter().position(|a| a.as_ref().contains('\0')) {
        return Err(ShellError::Nul { index });
    }
    Ok(join(argv))
}

/// Commands joined so that each runs only if the previous succeeded. The
/// parts are argvs, so the composition adds operators but never raw text.
pub fn and_then<I, A, S>(commands: I) -> String
where
    I: IntoIterator<Item = A>,
    A: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    commands
        .into_iter()
        .map(join)
        .collect::<Vec<_>>()
        .join(" && ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::process::Command;

    fn through_sh(args: &[String]) -> Vec<String> {
        let line = format!("printf '%s\\0' {}", join(args));
        let out = Command::new("sh")
            .arg("-c")
            .arg(&line)
            .output()
            .expect("sh");
        assert!(out.status.success(), "sh failed: {line}");
        let mut items: Vec<String> = String::from_utf8(out.stdout)
            .expect("utf8")
            .split('\0')
            .map(str::to_string)
            .collect();
        items.pop();
        items
    }

    #[test]
    fn exact_quoting() {
        assert_eq!(quote("docker"), "docker");
        assert_eq!(quote("KAMAL_VERSION=v1"), "KAMAL_VERSION=v1");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote("$(id)"), "'$(id)'");
        assert_eq!(quote("~"), "'~'");
        assert_eq!(join(["echo", "a;b"]), "echo 'a;b'");
        assert_eq!(
            and_then([vec!["mkdir", "-p", "a b"], vec!["touch", "x"]]),
            "mkdir -p 'a b' && touch x"
        );
    }

    #[test]
    fn nul_is_refused() {
        assert_eq!(try_join(["ok", "a\0b"]), Err(ShellError::Nul { index: 1 }));
    }

    #[test]
    fn hostile_strings_round_trip() {
        let args: Vec<String> = [
            "",
            " ",
            "'",
            "\"",
            "\\",
            "$HOME",
            "${HOME}",
            "$(touch /tmp/x)",
            "`id`",
            "*",
            "?",
            "[a]",
            "~",
            "~root",
            "a\nb",
            "\t",
            "-n",
            "--",
            "!",
            "#c",
            "a=b c",
            "é ü 漢字 🚀",
            "'\"'\"'",
            "&&",
            ";",
            "|",
            "<>",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(through_sh(&args), args);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn any_nul_free_strings_round_trip(args in prop::collection::vec("[^\u{0}]{0,30}", 1..12)) {
            prop_assert_eq!(through_sh(&args), args);
        }
    }
}
