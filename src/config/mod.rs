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

fn read_tree(file: &Path, opts: &LoadOptions<'_>) -> Result<yaml::Node, LoadError> {
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
    yaml::parse(&rendered, file).map_err(|e| LoadError::one(e.mark, "", e.message))
}

/// Load, merge and validate a configuration. Nothing is executed: secrets
/// are not read here.
pub fn load(opts: &LoadOptions<'_>) -> Result<Config, LoadError> {
    let base = read_tree(opts.config_file, opts)?;
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
            let over = read_tree(&dest_file, opts)?;
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
    let mut decoder = decode::Decoder::new(root_mark);
    decoder.untrusted = opts.files.is_untrusted();
    let config = decoder.config(&merged, opts.destination);
    match config {
        Some(config) if decoder.errors.is_empty() => Ok(config),
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
