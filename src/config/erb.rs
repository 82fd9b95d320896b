//! The ERB forms real Kamal configs use, evaluated without Ruby.
//!
//! Kamal renders `deploy.yml` through ERB before parsing it. berth evaluates
//! the forms seen in real configs — `<%= ENV["X"] %>`, `<%= ENV.fetch("X") %>`,
//! `<%= ENV.fetch("X", "default") %>`, string and integer literals
//! (`<%= "my-user" %>`), `<%# comments %>`, `<%%` — and never runs Ruby.
//! Any other `<%= … %>` becomes a placeholder ([`Unevaluated`]) that the
//! caller locates in the parsed tree: in a section berth never reads
//! (`builder:`, `aliases:` …) it is a warning, anywhere else an error with
//! the tag's position, since deploying a literal `<%= … %>` would be wrong.
//! Control tags (`<% if … %>`) shape the YAML itself and are errors.
//! Substituted values are inserted in place, so line numbers after a tag
//! stay those of the file unless a value contains a newline.

/// What berth evaluates, for messages.
pub const SUPPORTED: &str = "berth runs no Ruby; it evaluates only ERB tags holding ENV[\"X\"], ENV.fetch(\"X\"), ENV.fetch(\"X\", \"default\"), a string or an integer literal, and comments";

/// The text with ERB evaluated, and the expressions that could not be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    pub unevaluated: Vec<Unevaluated>,
}

/// A `<%= … %>` berth cannot evaluate without Ruby, left in the text as
/// [`Unevaluated::placeholder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unevaluated {
    pub line: usize,
    pub col: usize,
    /// The tag as written.
    pub snippet: String,
    /// What replaced it: a plain YAML word, unique in this file.
    pub placeholder: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErbError {
    #[error("unsupported ERB `{snippet}`: {SUPPORTED}")]
    Unsupported {
        line: usize,
        col: usize,
        snippet: String,
    },
    #[error("unterminated ERB tag (no `%>`)")]
    Unterminated { line: usize, col: usize },
    #[error("ENV.fetch: key not found: {key:?} (set it in berth's environment or give a default)")]
    MissingEnv {
        line: usize,
        col: usize,
        key: String,
    },
}

impl ErbError {
    /// 1-based line and column of the offending tag.
    pub fn position(&self) -> (usize, usize) {
        match self {
            ErbError::Unsupported { line, col, .. }
            | ErbError::Unterminated { line, col }
            | ErbError::MissingEnv { line, col, .. } => (*line, *col),
        }
    }
}

/// Whether the text has any ERB tag at all.
pub fn contains_erb(text: &str) -> bool {
    text.contains("<%")
}

fn position(text: &str, byte: usize) -> (usize, usize) {
    let before = &text[..byte];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Evaluate the supported ERB forms in `text`; other `<%= … %>` tags
/// become placeholders (see [`Unevaluated`]).
pub fn render(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Rendered, ErbError> {
    let mut unevaluated = Vec::new();
    if !contains_erb(text) {
        return Ok(Rendered {
            text: text.to_string(),
            unevaluated,
        });
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut offset = 0;
    while let Some(start) = rest.find("<%") {
        out.push_str(&rest[..start]);
        let tag_at = offset + start;
        let after = &rest[start + 2..];
        if let Some(stripped) = after.strip_prefix('%') {
            // `<%%` is a literal `<%`.
            out.push_str("<%");
            offset = tag_at + 3;
            rest = stripped;
            continue;
        }
        let Some(end) = after.find("%>") else {
            let (line, col) = position(text, tag_at);
            return Err(ErbError::Unterminated { line, col });
        };
        let inner = &after[..end];
        // `-%>` trims the following newline (Kamal renders with trim_mode "-").
        let (inner, trim_newline) = match inner.strip_suffix('-') {
            Some(i) => (i, true),
            None => (inner, false),
        };
        let mut next = &after[end + 2..];
        let consumed = start + 2 + end + 2;
        let mut extra = 0;
        if trim_newline && next.starts_with('\n') {
            next = &next[1..];
            extra = 1;
        }
        let (line, col) = position(text, tag_at);
        if inner.starts_with('#') {
            // comment
        } else if let Some(expr) = inner.strip_prefix('=') {
            match eval(expr.trim(), env) {
                Ok(value) => out.push_str(&value),
                Err(Eval::Missing(key)) => return Err(ErbError::MissingEnv { line, col, key }),
                Err(Eval::Unsupported) => {
                    let placeholder = format!("__berth_erb_{}__", unevaluated.len());
                    out.push_str(&placeholder);
                    unevaluated.push(Unevaluated {
                        line,
                        col,
                        snippet: format!("<%{inner}%>"),
                        placeholder,
                    });
                }
            }
        } else {
            return Err(ErbError::Unsupported {
                line,
                col,
                snippet: format!("<%{inner}%>"),
            });
        }
        offset += consumed + extra;
        rest = next;
    }
    out.push_str(rest);
    Ok(Rendered {
        text: out,
        unevaluated,
    })
}

enum Eval {
    Unsupported,
    Missing(String),
}

/// A Ruby string literal in single or double quotes, without interpolation.
fn string_literal(s: &str) -> Option<(String, &str)> {
    let quote = s.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let mut value = String::new();
    let mut chars = s[1..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c == quote => return Some((value, &s[1 + i + 1..])),
            '\\' => match chars.next() {
                Some((_, n)) if n == quote || n == '\\' => value.push(n),
                Some((_, 'n')) if quote == '"' => value.push('\n'),
                Some((_, 't')) if quote == '"' => value.push('\t'),
                Some((_, n)) => {
                    value.push('\\');
                    value.push(n);
                }
                None => return None,
            },
            // `#{}` interpolation would need Ruby.
            '#' if quote == '"' && s[1 + i..].starts_with("#{") => return None,
            c => value.push(c),
        }
    }
    None
}

fn eval(expr: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, Eval> {
    // A literal: what Ruby's `to_s` prints for it.
    if let Some((value, rest)) = string_literal(expr)
        && rest.trim().is_empty()
    {
        return Ok(value);
    }
    let digits = expr.strip_prefix('-').unwrap_or(expr);
    if !digits.is_empty() && digits.len() <= 18 && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(expr.to_string());
    }
    if let Some(rest) = expr.strip_prefix("ENV[") {
        let (key, rest) = string_literal(rest.trim_start()).ok_or(Eval::Unsupported)?;
        if rest.trim() != "]" {
            return Err(Eval::Unsupported);
        }
        return Ok(env(&key).unwrap_or_default());
    }
    if let Some(rest) = expr.strip_prefix("ENV.fetch(") {
        let (key, rest) = string_literal(rest.trim_start()).ok_or(Eval::Unsupported)?;
        let rest = rest.trim_start();
        if rest.trim() == ")" {
            return env(&key).ok_or(Eval::Missing(key));
        }
        let rest = rest
            .strip_prefix(',')
            .ok_or(Eval::Unsupported)?
            .trim_start();
        let (default, rest) = string_literal(rest).ok_or(Eval::Unsupported)?;
        if rest.trim() != ")" {
            return Err(Eval::Unsupported);
        }
        return Ok(env(&key).unwrap_or(default));
    }
    Err(Eval::Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(key: &str) -> Option<String> {
        match key {
            "HOST" => Some("10.0.0.1".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn supported_forms() {
        let cases = [
            ("a: <%= ENV[\"HOST\"] %>", "a: 10.0.0.1"),
            ("a: <%= ENV['HOST'] %>", "a: 10.0.0.1"),
            ("a: <%=ENV[\"HOST\"]%>", "a: 10.0.0.1"),
            ("a: <%= ENV[\"NOPE\"] %>", "a: "),
            ("a: <%= ENV.fetch(\"HOST\") %>", "a: 10.0.0.1"),
            ("a: <%= ENV.fetch(\"NOPE\", \"dflt\") %>", "a: dflt"),
            ("a: <%= ENV.fetch('NOPE', 'd') %>", "a: d"),
            ("a: <%= ENV.fetch(\"EMPTY\", \"d\") %>", "a: "),
            ("a: <%= \"my-user\" %>", "a: my-user"),
            ("a: <%= 'it''s' %>", "a: __berth_erb_0__"),
            ("a: <%= 'x' %>-<%= \"y\" %>", "a: x-y"),
            ("a: <%= 30 %>", "a: 30"),
            ("a: <%= -1 %>", "a: -1"),
            ("<%# note %>a: 1", "a: 1"),
            ("a: '<%%= x'", "a: '<%= x'"),
            ("<%# c -%>\na: 1", "a: 1"),
            ("plain: yes", "plain: yes"),
        ];
        for (input, expected) in cases {
            assert_eq!(render(input, &env).unwrap().text, expected, "{input}");
        }
    }

    #[test]
    fn what_needs_ruby_is_left_as_a_located_placeholder() {
        let r = render(
            "a: 1\nb: <%= Kamal::Utils.docker_arch == \"arm64\" ? \"amd64\" : \"arm64\" %>\nc: x<%= 1 + 1 %>\n",
            &env,
        )
        .unwrap();
        assert_eq!(r.text, "a: 1\nb: __berth_erb_0__\nc: x__berth_erb_1__\n");
        assert_eq!(
            r.unevaluated
                .iter()
                .map(|u| (u.line, u.col, u.snippet.as_str()))
                .collect::<Vec<_>>(),
            [
                (
                    2,
                    4,
                    "<%= Kamal::Utils.docker_arch == \"arm64\" ? \"amd64\" : \"arm64\" %>"
                ),
                (3, 5, "<%= 1 + 1 %>")
            ]
        );
        for s in [
            "<%= %x(aws ecr get-login-password) %>",
            "<%= ENV[\"A#{1}\"] %>",
            "<%= \"#{x}\" %>",
        ] {
            let r = render(&format!("p: {s}"), &env).unwrap();
            assert_eq!(r.unevaluated.len(), 1, "{s}");
            assert_eq!(r.unevaluated[0].snippet, s);
        }
    }

    #[test]
    fn control_tags_and_missing_keys_are_errors_with_position() {
        let e = render("a: 1\nb: <% if true %>x<% end %>", &env).unwrap_err();
        assert!(
            matches!(
                e,
                ErbError::Unsupported {
                    line: 2,
                    col: 4,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = render("x\n  y: <%= ENV.fetch(\"NOPE\") %>", &env).unwrap_err();
        assert_eq!(
            e,
            ErbError::MissingEnv {
                line: 2,
                col: 6,
                key: "NOPE".into()
            }
        );
        let e = render("a: <%= ENV[\"X\"]", &env).unwrap_err();
        assert_eq!(e, ErbError::Unterminated { line: 1, col: 4 });
    }
}
