//! `config`: reading a Kamal 2 deploy configuration the way `kamal` does.
//!
//! Owns the path from files on disk to a validated [`Config`]:
//! `deploy.yml` (+ `deploy.<dest>.yml`) → ERB forms evaluated ([`erb`]) →
//! positioned YAML trees ([`yaml`]) → destination deep-merge → typed,
//! Kamal-validated model ([`decode`], [`model`]). Secrets (`.kamal/secrets*`)
//! are read separately by [`secrets`], because validating a config must not
//! need them (nor run the commands they may contain).

pub mod decode;
pub mod erb;
pub mod grammar;
pub mod model;
pub mod secrets;
pub mod sops;
pub mod words;
pub mod yaml;

use std::path::{Path, PathBuf};

use crate::checkout::{Checkout, FileError};

pub use model::*;
use yaml::Mark;

/// One problem in a config, located at file:line:col and a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub mark: Mark,
    /// Dotted key path (`servers.web.hosts.0`); empty for the document.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.mark, self.message)
        } else {
            write!(f, "{}: {}: {}", self.mark, self.path, self.message)
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file that cannot be read (missing, outside the repository, not a
    /// regular file, too large, not UTF-8).
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigError>),
}

impl LoadError {
    fn one(mark: Mark, path: &str, message: impl Into<String>) -> Self {
        LoadError::Invalid(vec![ConfigError {
            mark,
            path: path.to_string(),
            message: message.into(),
        }])
    }

    /// The located errors, if this is a validation failure.
    pub fn errors(&self) -> &[ConfigError] {
        match self {
            LoadError::Invalid(errors) => errors,
            LoadError::File(_) => &[],
        }
    }
}

/// What to load: the base file, the destination, and where `ENV` comes from
/// (berth's own environment in production, a map in tests).
pub struct LoadOptions<'a> {
    pub config_file: &'a Path,
    pub destination: Option<&'a str>,
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// Where the config's files may be read from (the repository).
    pub files: &'a Checkout,
}

/// berth's own environment, for ERB `ENV[...]` and secrets interpolation.
pub fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// `config/deploy.yml` → `config/deploy.<dest>.yml`, as Kamal's `sub_ext`.
pub fn destination_file(config_file: &Path, destination: &str) -> PathBuf {
    config_file.with_extension(format!("{destination}.yml"))
}

/// The directory Kamal would run in: relative paths in the config (secrets,
/// hooks, accessory files) are resolved from it. For `…/config/deploy.yml`
/// that is the directory holding `config/`.
pub fn project_root(config_file: &Path) -> PathBuf {
    let dir = config_file.parent().unwrap_or(Path::new("."));
    match dir.file_name() {
        Some(name) if name == "config" => dir.parent().unwrap_or(Path::new(".")).to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// A file's tree, and what its ERB left unevaluated (see [`unevaluated`]).
fn read_tree(
    file: &Path,
    opts: &LoadOptions<'_>,
) -> Result<(yaml::Node, Vec<erb::Unevaluated>), LoadError> {
    let text = opts.files.read_text(file)?;
    let env = opts.env;
    let rendered = erb::render(&text, env).map_err(|e| {
        let (line, col) = e.position();
        LoadError::one(
            Mark {
                file: file.into(),
                line,
                col,
            },
            "",
            e.to_string(),
        )
    })?;
    let tree =
        yaml::parse(&rendered.text, file).map_err(|e| LoadError::one(e.mark, "", e.message))?;
    Ok((tree, rendered.unevaluated))
}

/// Top-level sections berth validates but never uses: ERB there that
/// needs Ruby is a warning, not an error. (`x-*` extensions other than
/// `x-berth` too.)
const UNREAD_SECTIONS: &[&str] = &["builder", "aliases", "output", "hooks_output"];

fn unread(top: &str) -> bool {
    UNREAD_SECTIONS.contains(&top) || (top.starts_with("x-") && top != "x-berth")
}

/// Where each placeholder of `left` ended up in `tree`: under an unread
/// section a warning, anywhere else an error (its value would reach a
/// host). Both carry the tag's own position and the key path.
fn unevaluated(
    tree: &yaml::Node,
    left: &[erb::Unevaluated],
    file: &Path,
) -> (Vec<ConfigError>, Vec<ConfigError>) {
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    if left.is_empty() {
        return (errors, warnings);
    }
    let mut hits: Vec<(usize, String)> = Vec::new();
    fn scan(text: &str, path: &str, hits: &mut Vec<(usize, String)>) {
        let mut rest = text;
        while let Some(i) = rest.find("__berth_erb_") {
            let after = &rest[i + "__berth_erb_".len()..];
            let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(n) = digits.parse::<usize>()
                && after[digits.len()..].starts_with("__")
                && !hits.iter().any(|(m, p)| *m == n && p == path)
            {
                hits.push((n, path.to_string()));
            }
            rest = after;
        }
    }
    fn walk(node: &yaml::Node, path: &str, hits: &mut Vec<(usize, String)>) {
        let child = |key: &str| {
            if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            }
        };
        match &node.value {
            yaml::Value::Scalar(yaml::Scalar::Str(s) | yaml::Scalar::Symbol(s)) => {
                scan(s, path, hits)
            }
            yaml::Value::Scalar(_) => {}
            yaml::Value::Seq(items) => {
                for (i, n) in items.iter().enumerate() {
                    walk(n, &child(&i.to_string()), hits);
                }
            }
            yaml::Value::Map(entries) => {
                for (k, n) in entries {
                    let p = child(&k.name);
                    scan(&k.name, &p, hits);
                    walk(n, &p, hits);
                }
            }
        }
    }
    walk(tree, "", &mut hits);
    for (n, path) in hits {
        let Some(u) = left.get(n) else { continue };
        let mark = Mark {
            file: file.into(),
            line: u.line,
            col: u.col,
        };
        let top = path.split('.').next().unwrap_or_default();
        if unread(top) {
            warnings.push(ConfigError {
                mark,
                message: format!(
                    "ERB `{}` needs Ruby, which berth does not run; berth does not use `{top}`, so it goes on without this value",
                    u.snippet
                ),
                path,
            });
        } else {
            errors.push(ConfigError {
                mark,
                message: format!(
                    "ERB `{}` cannot be evaluated and this value would reach the hosts: {}",
                    u.snippet,
                    erb::SUPPORTED
                ),
                path,
            });
        }
    }
    (errors, warnings)
}

/// Load, merge and validate a configuration. Nothing is executed: secrets
/// are not read here.
pub fn load(opts: &LoadOptions<'_>) -> Result<Config, LoadError> {
    let (base, left) = read_tree(opts.config_file, opts)?;
    let (mut erb_errors, mut warnings) = unevaluated(&base, &left, opts.config_file);
    let root_mark = Mark {
        file: opts.config_file.into(),
        line: 1,
        col: 1,
    };
    let merged = match opts.destination {
        None => base,
        Some(dest) => {
            if dest.is_empty()
                || !dest
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(LoadError::one(
                    root_mark,
                    "destination",
                    format!("invalid destination name {dest:?}"),
                ));
            }
            let dest_file = destination_file(opts.config_file, dest);
            if !opts.files.is_file(&dest_file)? {
                return Err(LoadError::one(
                    root_mark,
                    "destination",
                    format!("Configuration file not found in {}", dest_file.display()),
                ));
            }
            let (over, left) = read_tree(&dest_file, opts)?;
            let (e, w) = unevaluated(&over, &left, &dest_file);
            erb_errors.extend(e);
            warnings.extend(w);
            if !matches!(
                over.value,
                yaml::Value::Map(_) | yaml::Value::Scalar(yaml::Scalar::Null)
            ) {
                return Err(LoadError::one(
                    over.mark,
                    "",
                    "the destination file must be a mapping",
                ));
            }
            yaml::deep_merge(base, over)
        }
    };
    // A value that needs Ruby is the problem to fix; what the decoder
    // would say about its placeholder is noise.
    if !erb_errors.is_empty() {
        return Err(LoadError::Invalid(erb_errors));
    }
    let mut decoder = decode::Decoder::new(root_mark);
    decoder.untrusted = opts.files.is_untrusted();
    let config = decoder.config(&merged, opts.destination);
    match config {
        Some(mut config) if decoder.errors.is_empty() => {
            warnings.append(&mut decoder.warnings);
            config.warnings = warnings;
            Ok(config)
        }
        _ => {
            let mut errors = decoder.errors;
            errors.sort_by(|a, b| {
                (a.mark.file.as_ref(), a.mark.line, a.mark.col).cmp(&(
                    b.mark.file.as_ref(),
                    b.mark.line,
                    b.mark.col,
                ))
            });
            errors.dedup();
            Err(LoadError::Invalid(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_dir(dir: &Path, destination: Option<&str>) -> Result<Config, LoadError> {
        let env = |_: &str| None;
        load(&LoadOptions {
            config_file: &dir.join("config/deploy.yml"),
            destination,
            env: &env,
            files: &Checkout::unconfined(),
        })
    }

    #[test]
    fn ruby_erb_warns_where_berth_never_reads_and_is_an_error_where_it_would_reach_a_host() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        let base = "service: app\nimage: app\nservers: [10.0.0.1]\nregistry:\n  username: <%= \"u\" %>\n  password: pw\n\
                    builder:\n  arch: <%= Kamal::Utils.docker_arch %>\nx-notes:\n  - <%= Time.now %>\n";
        std::fs::write(dir.path().join("config/deploy.yml"), base).unwrap();
        std::fs::write(
            dir.path().join("config/deploy.staging.yml"),
            "env:\n  clear:\n    AT: x<%= Time.now.to_i %>\n",
        )
        .unwrap();
        let cfg = load_dir(dir.path(), None).unwrap();
        assert_eq!(cfg.registry.username, Some(Credential::Literal("u".into())));
        let warnings: Vec<(usize, usize, &str)> = cfg
            .warnings
            .iter()
            .map(|w| (w.mark.line, w.mark.col, w.path.as_str()))
            .collect();
        assert_eq!(warnings, [(8, 9, "builder.arch"), (10, 5, "x-notes.0")]);

        let err = load_dir(dir.path(), Some("staging")).unwrap_err();
        let errors = err.errors();
        assert_eq!(errors.len(), 1, "{err}");
        assert!(errors[0].mark.file.ends_with("config/deploy.staging.yml"));
        assert_eq!(
            (
                errors[0].mark.line,
                errors[0].mark.col,
                errors[0].path.as_str()
            ),
            (3, 10, "env.clear.AT")
        );
        assert!(
            errors[0]
                .message
                .starts_with("ERB `<%= Time.now.to_i %>` cannot be evaluated and this value would reach the hosts"),
            "{err}"
        );
    }
}
