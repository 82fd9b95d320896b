//! Kamal secrets: `.kamal/secrets-common` then `.kamal/secrets[.<dest>]`, in
//! dotenv syntax, and the [`Secret`] type that never prints its value.
//!
//! The parser follows dotenv 3 (what Kamal 2.11 uses) for everything a real
//! secrets file contains: `export`, `KEY=value`, `KEY: value`, single quotes
//! (literal), double quotes (multi-line, backslash escapes), trailing
//! comments, `$VAR` / `${VAR}` substitution (earlier keys of the same file,
//! then berth's environment, else empty). Where dotenv silently skips a line
//! it cannot parse, berth reports it with file and line: a secret that
//! vanished silently is worse than a refused config. `$(command)` runs only
//! with an explicit opt-in, because it executes code from the repository.
//! A `$VAR` that berth's environment does not set becomes empty, as in
//! Kamal, but is recorded ([`Secrets::unset`]): `berth run` (and
//! `--strict-secrets`) refuse the revision on it, the CLI warns.

use std::path::{Path, PathBuf};
use std::process::Command;

use indexmap::IndexMap;

use crate::checkout::{Checkout, FileError};

pub use crate::secret::Secret;

/// What `$(command)` in a secrets file does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commands {
    /// An error (the default; always so for an untrusted repository).
    Refuse,
    /// Run with `sh -c` on this machine (`--allow-secret-commands`).
    Run,
    /// Accepted but not run, the value left empty: `validate
    /// --allow-secret-commands` checks a file without executing it.
    Skip,
}

/// How to read the secrets files.
pub struct SecretsOptions<'a> {
    pub destination: Option<&'a str>,
    /// What `$(command)` substitution does.
    pub commands: Commands,
    /// berth's environment, for `$VAR` substitution.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// Where the secrets files may be read from (the repository).
    pub files: &'a Checkout,
    /// Keys for files encrypted with SOPS (age).
    pub age_keys: Option<&'a crate::config::sops::AgeKeys>,
}

/// The most text one secret value may expand to (`$A$A` doubles at every
/// line otherwise: forty lines would exhaust any machine), and the values of
/// one file together (else `B1=$A`, `B2=$A`… each copies a 1 MiB value).
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// Why the secrets could not be read. No variant carries a secret value or
/// a quote of the file: these messages reach logs and the public API.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{}:{line}: {message}", file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "{}:{line}: {key}: command substitution $(...) is disabled; pass --allow-secret-commands to run it (one-shot commands only: `berth run` never runs commands from the repository)",
        file.display()
    )]
    CommandNotAllowed {
        file: PathBuf,
        line: usize,
        key: String,
    },
    #[error("{}:{line}: {key}: command substitution failed: {message}", file.display())]
    Command {
        file: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
    /// A SOPS-encrypted file that cannot be decrypted or whose MAC fails.
    #[error("{}{}", file.display(), match error.line {
        Some(l) => format!(":{l}: {}", error.message),
        None => format!(": {}", error.message),
    })]
    Sops {
        file: PathBuf,
        error: crate::config::sops::SopsError,
    },
    /// Variables the secrets reference that berth's environment does not
    /// set, refused (`berth run`, `--untrusted`, `--strict-secrets`).
    #[error("{}", unset_list(.0))]
    Unset(Vec<UnsetVariable>),
}

/// A `$VAR` in a secrets file that berth's environment does not set (its
/// value became empty, as in Kamal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsetVariable {
    pub file: PathBuf,
    pub line: usize,
    /// The secret whose value references it.
    pub key: String,
    pub variable: String,
}

impl std::fmt::Display for UnsetVariable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: {}: ${} is not set in berth's environment",
            self.file.display(),
            self.line,
            self.key,
            self.variable
        )
    }
}

fn unset_list(v: &[UnsetVariable]) -> String {
    let lines: Vec<String> = v.iter().map(ToString::to_string).collect();
    format!(
        "{} (an unset variable would deploy an empty secret; set it, or remove the reference)",
        lines.join("; ")
    )
}

/// The merged secrets of one destination.
#[derive(Debug, Default, Clone)]
pub struct Secrets {
    values: IndexMap<String, Secret>,
    /// The files that existed and were read, in order.
    files: Vec<PathBuf>,
    /// The files Kamal would look for (for error messages).
    candidates: Vec<PathBuf>,
    /// Variables referenced but not set (their values are empty).
    unset: Vec<UnsetVariable>,
}

impl Secrets {
    /// Read `<path>-common` then `<path>.<dest>` (or `<path>`); later files
    /// override earlier ones, missing files are skipped.
    pub fn load(path: &Path, opts: &SecretsOptions<'_>) -> Result<Secrets, SecretsError> {
        let base = path.as_os_str().to_string_lossy().into_owned();
        let candidates = vec![
            PathBuf::from(format!("{base}-common")),
            match opts.destination {
                Some(d) => PathBuf::from(format!("{base}.{d}")),
                None => PathBuf::from(&base),
            },
        ];
        let mut secrets = Secrets {
            candidates: candidates.clone(),
            ..Secrets::default()
        };
        for file in candidates {
            let text = match opts.files.read_text(&file) {
                Ok(t) => t,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            // Encrypted in the repository: decrypted here, then read as
            // the text `sops -d` prints.
            let decrypted;
            let text = if crate::config::sops::is_sops(&text) {
                decrypted =
                    crate::config::sops::decrypt(&text, opts.age_keys).map_err(|error| {
                        SecretsError::Sops {
                            file: file.clone(),
                            error,
                        }
                    })?;
                decrypted.expose()
            } else {
                text.as_str()
            };
            let parsed = parse(text, &file, opts, &mut secrets.unset)?;
            secrets.values.extend(parsed);
            secrets.files.push(file);
        }
        Ok(secrets)
    }

    /// Secrets from literal pairs (tests, benchmarks).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Secrets {
        Secrets {
            values: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), Secret::new(v)))
                .collect(),
            ..Secrets::default()
        }
    }

    pub fn get(&self, key: &str) -> Option<&Secret> {
        self.values.get(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The `$VAR`s berth's environment did not set, in file order.
    pub fn unset(&self) -> &[UnsetVariable] {
        &self.unset
    }

    /// Where a missing secret was looked for, phrased for an error message.
    pub fn describe_files(&self) -> String {
        let join = |v: &[PathBuf]| {
            v.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if self.files.is_empty() {
            format!("no secret files ({}) exist", join(&self.candidates))
        } else {
            format!("looked in {}", join(&self.files))
        }
    }
}

/// Parse one dotenv file. Values are substituted as they are read, so a
/// value may refer to keys defined above it in the same file.
fn parse(
    text: &str,
    file: &Path,
    opts: &SecretsOptions<'_>,
    unset: &mut Vec<UnsetVariable>,
) -> Result<IndexMap<String, Secret>, SecretsError> {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut out: IndexMap<String, Secret> = IndexMap::new();
    // Bytes of values produced so far, replaced ones included.
    let mut total = 0usize;
    let mut p = Cursor {
        s: text.as_bytes(),
        i: 0,
        line: 1,
    };
    let syntax = |line: usize, message: String| SecretsError::Syntax {
        file: file.to_path_buf(),
        line,
        message,
    };
    loop {
        p.skip_ws(true);
        let Some(c) = p.peek() else { break };
        if c == b'#' {
            p.skip_line();
            continue;
        }
        let line = p.line;
        let mut export = false;
        if p.rest().starts_with(b"export") && matches!(p.s.get(p.i + 6), Some(b' ' | b'\t')) {
            p.i += 6;
            p.skip_ws(false);
            export = true;
        }
        let key_start = p.i;
        while p
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
        {
            p.i += 1;
        }
        if p.i == key_start {
            return Err(syntax(
                line,
                format!("column {}: expected KEY=value", p.column()),
            ));
        }
        let key = String::from_utf8_lossy(&p.s[key_start..p.i]).into_owned();
        p.skip_ws(false);
        let mut raw: Option<(Option<u8>, String)> = None;
        match p.peek() {
            Some(b'=') => {
                p.i += 1;
                p.skip_ws(false);
                raw = Some(p.value().map_err(|m| syntax(line, format!("{key}: {m}")))?);
            }
            Some(b':') if matches!(p.s.get(p.i + 1), Some(b' ' | b'\t')) => {
                p.i += 1;
                p.skip_ws(false);
                raw = Some(p.value().map_err(|m| syntax(line, format!("{key}: {m}")))?);
            }
            _ => {}
        }
        p.skip_ws(false);
        match p.peek() {
            None | Some(b'\n') => {}
            Some(b'#') => p.skip_line(),
            Some(_) if raw.is_none() => {
                // No separator: the "key" may be a stray secret; not quoted.
                return Err(syntax(
                    p.line,
                    format!("column {}: expected KEY=value", p.column()),
                ));
            }
            Some(_) => {
                // Never quoted: the rest of the line may be the secret.
                return Err(syntax(
                    p.line,
                    format!(
                        "{key}: column {}: unexpected text after the value (quote a value that has spaces or quotes)",
                        p.column()
                    ),
                ));
            }
        }
        let Some((quote, raw)) = raw else {
            if export {
                // `export KEY` asserts KEY is already set (dotenv's check).
                if !out.contains_key(&key) && (opts.env)(&key).is_none() {
                    return Err(syntax(
                        line,
                        format!("{key}: `export {key}` but {key} is not set"),
                    ));
                }
                continue;
            }
            out.insert(key, Secret::default());
            continue;
        };
        let place = Place {
            file,
            line,
            key: &key,
        };
        let value = match quote {
            Some(b'\'') => raw,
            Some(_) => substitute(&unescape(&expand_newlines(&raw)), &out, &place, opts, unset)?,
            None => substitute(&unescape(&raw), &out, &place, opts, unset)?,
        };
        total = total.saturating_add(value.len());
        if total > MAX_VALUE_BYTES {
            return Err(syntax(
                line,
                format!("{key}: the file expands to more than {MAX_VALUE_BYTES} bytes of values"),
            ));
        }
        out.insert(key, Secret::new(value));
    }
    Ok(out)
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
    line: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn rest(&self) -> &[u8] {
        &self.s[self.i..]
    }
    fn skip_ws(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' => {}
                b'\n' if newlines => self.line += 1,
                _ => break,
            }
            self.i += 1;
        }
    }
    fn skip_line(&mut self) {
        while self.peek().is_some_and(|c| c != b'\n') {
            self.i += 1;
        }
    }
    /// 1-based column of the cursor, in characters.
    fn column(&self) -> usize {
        let start = self.s[..self.i]
            .iter()
            .rposition(|&c| c == b'\n')
            .map_or(0, |n| n + 1);
        1 + String::from_utf8_lossy(&self.s[start..self.i])
            .chars()
            .count()
    }
    /// A value after the separator: quoted (may span lines) or bare up to `#`
    /// or end of line. Returns the quote used and the text inside it.
    fn value(&mut self) -> Result<(Option<u8>, String), String> {
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => {
                let start = self.i + 1;
                let mut j = start;
                loop {
                    match self.s.get(j) {
                        None => return Err(format!("unterminated {} quote", q as char)),
                        Some(b'\\') if self.s.get(j + 1) == Some(&q) => j += 2,
                        Some(&c) if c == q => break,
                        Some(&c) => {
                            if c == b'\n' {
                                self.line += 1;
                            }
                            j += 1;
                        }
                    }
                }
                let inner = String::from_utf8_lossy(&self.s[start..j]).into_owned();
                self.i = j + 1;
                Ok((Some(q), inner))
            }
            _ => {
                let start = self.i;
                while self.peek().is_some_and(|c| c != b'#' && c != b'\n') {
                    self.i += 1;
                }
                let v = String::from_utf8_lossy(&self.s[start..self.i])
                    .trim()
                    .to_string();
                Ok((None, v))
            }
        }
    }
}

/// dotenv 3's default line-break mode: a literal `\n` in double quotes stays
/// a backslash-n (it survives the unescape step below).
fn expand_newlines(v: &str) -> String {
    v.replace("\\n", "\\\\n").replace("\\r", "\\\\r")
}

/// `\x` → `x` for any x but `$` (an escaped `$` is handled by substitution).
fn unescape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.peek() {
                Some('$') | None => out.push('\\'),
                Some(_) => {
                    if let Some(n) = chars.next() {
                        out.push(n);
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Where a value is: for its errors.
#[derive(Clone, Copy)]
struct Place<'a> {
    file: &'a Path,
    line: usize,
    key: &'a str,
}

/// `$VAR`, `${VAR}` (then `$(command)` when allowed). `\$` is a literal `$`.
fn substitute(
    v: &str,
    defined: &IndexMap<String, Secret>,
    at: &Place<'_>,
    opts: &SecretsOptions<'_>,
    unset: &mut Vec<UnsetVariable>,
) -> Result<String, SecretsError> {
    let Place { file, line, key } = *at;
    let b = v.as_bytes();
    let mut out = String::with_capacity(v.len());
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        let escaped = i > 0 && b[i - 1] == b'\\';
        if b.get(i + 1) == Some(&b'(') {
            // Command substitution, with balanced parentheses.
            let mut depth = 0usize;
            let mut j = i + 1;
            let mut end = None;
            while j < b.len() {
                match b[j] {
                    b'(' => depth += 1,
                    b')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = Some(j);
                            break;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            let Some(end) = end else {
                i += 1;
                continue;
            };
            if escaped {
                out.push_str(&v[last..i - 1]);
                out.push_str(&v[i..=end]);
            } else {
                out.push_str(&v[last..i]);
                let commands = if opts.files.is_untrusted() {
                    Commands::Refuse
                } else {
                    opts.commands
                };
                match commands {
                    Commands::Refuse => {
                        return Err(SecretsError::CommandNotAllowed {
                            file: file.to_path_buf(),
                            line,
                            key: key.to_string(),
                        });
                    }
                    Commands::Skip => {}
                    Commands::Run => {
                        out.push_str(&run_command(&v[i + 2..end]).map_err(|message| {
                            SecretsError::Command {
                                file: file.to_path_buf(),
                                line,
                                key: key.to_string(),
                                message,
                            }
                        })?);
                    }
                }
            }
            i = end + 1;
            last = i;
            continue;
        }
        // Variable: `\{?([A-Za-z0-9_]+)?\}?`, as dotenv's case-insensitive regex.
        let mut j = i + 1;
        if b.get(j) == Some(&b'{') {
            j += 1;
        }
        let name_start = j;
        while b
            .get(j)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            j += 1;
        }
        let name = &v[name_start..j];
        if b.get(j) == Some(&b'}') {
            j += 1;
        }
        if escaped {
            out.push_str(&v[last..i - 1]);
            out.push_str(&v[i..j]);
        } else if name.is_empty() {
            out.push_str(&v[last..j]);
        } else {
            out.push_str(&v[last..i]);
            match defined.get(name) {
                Some(s) => out.push_str(s.expose()),
                None => match (opts.env)(name) {
                    Some(value) => out.push_str(&value),
                    None => unset.push(UnsetVariable {
                        file: file.to_path_buf(),
                        line,
                        key: key.to_string(),
                        variable: name.to_string(),
                    }),
                },
            }
            // Checked at each expansion, so `$A$A$A…` stops at the bound.
            if out.len() > MAX_VALUE_BYTES {
                break;
            }
        }
        i = j;
        last = j;
    }
    out.push_str(&v[last..]);
    if out.len() > MAX_VALUE_BYTES {
        return Err(SecretsError::Syntax {
            file: file.to_path_buf(),
            line,
            message: format!("{key}: the value expands to more than {MAX_VALUE_BYTES} bytes"),
        });
    }
    Ok(out)
}

/// Run `sh -c` and return stdout without its trailing newline, as Ruby's
/// backticks + `chomp`. The command's stderr goes to berth's stderr; its
/// output (the secret) is never logged.
fn run_command(cmd: &str) -> Result<String, String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run sh: {e}"))?;
    if !out.status.success() {
        return Err(format!("exited with {}", out.status));
    }
    let mut s = String::from_utf8(out.stdout).map_err(|_| "output is not UTF-8".to_string())?;
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with(
        text: &str,
        env: &[(&str, &str)],
        allow: bool,
    ) -> Result<Vec<(String, String)>, SecretsError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let files = Checkout::unconfined();
        let opts = SecretsOptions {
            destination: None,
            commands: if allow {
                Commands::Run
            } else {
                Commands::Refuse
            },
            env: &lookup,
            files: &files,
            age_keys: None,
        };
        Ok(
            parse(text, Path::new(".kamal/secrets"), &opts, &mut Vec::new())?
                .into_iter()
                .map(|(k, v)| (k, v.expose().to_string()))
                .collect(),
        )
    }

    fn one(text: &str) -> String {
        parse_with(text, &[("HOME_DIR", "/home/x")], false).unwrap()[0]
            .1
            .clone()
    }

    #[test]
    fn dotenv_forms() {
        assert_eq!(one("A=plain"), "plain");
        assert_eq!(one("export A=plain"), "plain");
        assert_eq!(one("A: plain"), "plain");
        assert_eq!(one("A = spaced   # comment"), "spaced");
        assert_eq!(one("A='lit $HOME_DIR \\n'"), "lit $HOME_DIR \\n");
        assert_eq!(one("A=\"dq $HOME_DIR\""), "dq /home/x");
        assert_eq!(one("A=\"line1\nline2\""), "line1\nline2");
        assert_eq!(one("A=\"a\\nb\""), "a\\nb");
        assert_eq!(one("A=\"say \\\"hi\\\"\""), "say \"hi\"");
        assert_eq!(one("A=${HOME_DIR}/x"), "/home/x/x");
        assert_eq!(one("A=\\$HOME_DIR"), "$HOME_DIR");
        assert_eq!(one("A=$MISSING"), "");
        assert_eq!(one("A=cost$"), "cost$");
        assert_eq!(one("A="), "");
        assert_eq!(one("A=a#b"), "a");
        assert_eq!(one("A=\"a#b\""), "a#b");
    }

    #[test]
    fn unset_variables_are_recorded_with_their_place() {
        let env = |k: &str| (k == "SET").then(|| "v".to_string());
        let files = Checkout::unconfined();
        let opts = SecretsOptions {
            destination: None,
            commands: Commands::Refuse,
            env: &env,
            files: &files,
            age_keys: None,
        };
        let mut unset = Vec::new();
        let text = "A=$SET\nB=\"x-${MISSING}\"\nC='$SINGLE'\nD=\\$ESCAPED\nE=$A$ALSO_MISSING\n";
        let v = parse(text, Path::new(".kamal/secrets"), &opts, &mut unset).unwrap();
        assert_eq!(v["B"].expose(), "x-");
        let shown: Vec<String> = unset.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                ".kamal/secrets:2: B: $MISSING is not set in berth's environment",
                ".kamal/secrets:5: E: $ALSO_MISSING is not set in berth's environment",
            ]
        );
        let err = SecretsError::Unset(unset).to_string();
        assert!(err.contains("would deploy an empty secret"), "{err}");
    }

    #[test]
    fn earlier_keys_are_visible() {
        let v = parse_with("A=1\r\nB=$A-2\n\n# c\nC=${B}", &[("A", "env")], false).unwrap();
        assert_eq!(v[1], ("B".into(), "1-2".into()));
        assert_eq!(v[2], ("C".into(), "1-2".into()));
    }

    #[test]
    fn commands_need_opt_in() {
        let err = parse_with("\nTOKEN=$(echo hi)", &[], false).unwrap_err();
        assert_eq!(
            err.to_string(),
            ".kamal/secrets:2: TOKEN: command substitution $(...) is disabled; pass --allow-secret-commands to run it (one-shot commands only: `berth run` never runs commands from the repository)"
        );
        let v = parse_with("TOKEN=$(echo \"(hi)\")x\nB=\\$(not)", &[], true).unwrap();
        assert_eq!(v[0].1, "(hi)x");
        assert_eq!(v[1].1, "$(not)");
        let err = parse_with("T=$(exit 3)", &[], true).unwrap_err();
        assert!(
            err.to_string().contains("T: command substitution failed"),
            "{err}"
        );
    }

    #[test]
    fn bad_lines_name_the_line() {
        let err = parse_with("A=1\n!!\n", &[], false).unwrap_err();
        assert_eq!(
            err.to_string(),
            ".kamal/secrets:2: column 1: expected KEY=value"
        );
        let err = parse_with("A=1\nB=\"open\n", &[], false).unwrap_err();
        assert_eq!(
            err.to_string(),
            ".kamal/secrets:2: B: unterminated \" quote"
        );
        let err = parse_with("A='x' y", &[], false).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(".kamal/secrets:1: A: column 7: unexpected text"),
            "{err}"
        );
    }

    #[test]
    fn errors_never_quote_a_value() {
        // The finding: the rest of the line after a stray quote is the key.
        for text in [
            "API='sk-live-1234' -KEY=sk-live-1234\n",
            "A=1\n-sk-live-1234=x\n",
            "A=\"sk-live-1234\" sk-live-1234\n",
            "DB=x\n  sk-live-1234\n",
            "DB=x\nsklive1234 tail\n",
        ] {
            let err = parse_with(text, &[], false).unwrap_err().to_string();
            assert!(!err.contains("sk-live"), "{text:?} → {err}");
        }
    }

    #[test]
    fn doubling_substitutions_stop_at_the_bound() {
        let mut text = String::from("A0=xxxxxxxxxxxxxxxx\n");
        for i in 1..40 {
            text.push_str(&format!("A{i}=${{A{}}}${{A{}}}\n", i - 1, i - 1));
        }
        let err = parse_with(&text, &[], false).unwrap_err().to_string();
        assert!(err.contains("expands to more than"), "{err}");
        let many = format!("A=yyyyyyyyyyyyyyyy\nB={}\n", "$A".repeat(200_000));
        let err = parse_with(&many, &[], false).unwrap_err().to_string();
        assert!(err.contains(":2: B: the value expands"), "{err}");
    }

    #[test]
    fn copies_of_a_large_value_stop_at_the_bound() {
        // Each value under the bound, but 200 copies were 200 MiB.
        let mut text = String::from("A0=xxxxxxxxxxxxxxxx\n");
        for i in 1..16 {
            text.push_str(&format!("A{i}=${{A{}}}${{A{}}}\n", i - 1, i - 1));
        }
        let one = parse_with(&text, &[], false).unwrap();
        assert_eq!(one[15].1.len(), 512 << 10);
        for i in 0..200 {
            text.push_str(&format!("B{i}=$A15\n"));
        }
        let err = parse_with(&text, &[], false).unwrap_err().to_string();
        assert!(
            err.starts_with(".kamal/secrets:17: B0: the file expands to more than"),
            "{err}"
        );
    }

    #[test]
    fn files_merge_common_then_destination() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("secrets");
        std::fs::write(dir.path().join("secrets-common"), "A=common\nB=common\n").unwrap();
        std::fs::write(dir.path().join("secrets.prod"), "B=prod\n").unwrap();
        let env = |_: &str| None;
        let s = Secrets::load(
            &base,
            &SecretsOptions {
                destination: Some("prod"),
                commands: Commands::Refuse,
                env: &env,
                files: &Checkout::confined(dir.path()).unwrap(),
                age_keys: None,
            },
        )
        .unwrap();
        assert_eq!(s.get("A").unwrap().expose(), "common");
        assert_eq!(s.get("B").unwrap().expose(), "prod");
        assert_eq!(s.files().len(), 2);
        let none = Secrets::load(
            &dir.path().join("nothing"),
            &SecretsOptions {
                destination: None,
                commands: Commands::Refuse,
                env: &env,
                files: &Checkout::confined(dir.path()).unwrap(),
                age_keys: None,
            },
        )
        .unwrap();
        assert!(none.describe_files().starts_with("no secret files ("));
    }
}
