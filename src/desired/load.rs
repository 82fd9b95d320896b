//! From a project on disk to its desired state: the config (with its
//! destination), the secrets, the version, rendered — the one path the CLI
//! commands and the controller share.

use std::path::Path;

use super::{Desired, RenderError, RenderOptions, render};
use crate::config::secrets::{Secrets, SecretsError, SecretsOptions};
use crate::config::{self, Config, LoadError, LoadOptions};

/// What to load.
pub struct AppLoad<'a> {
    pub config_file: &'a Path,
    pub destination: Option<&'a str>,
    pub allow_secret_commands: bool,
    /// Overrides `x-berth.version`.
    pub app_version: Option<&'a str>,
    /// The SSH user's home on the hosts (default: from `ssh.user`).
    pub home: Option<&'a str>,
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AppLoadError {
    #[error(transparent)]
    Config(#[from] LoadError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// Neither `x-berth.version` nor an explicit version.
    #[error(transparent)]
    NoVersion(RenderError),
    #[error("cannot render the desired state: {0}")]
    Render(RenderError),
}

/// Load config and secrets, and render the desired state.
pub fn load_app(opts: &AppLoad<'_>) -> Result<(Config, Secrets, Desired), AppLoadError> {
    let cfg = config::load(&LoadOptions {
        config_file: opts.config_file,
        destination: opts.destination,
        env: opts.env,
    })?;
    let secrets = Secrets::load(
        &config::project_root(opts.config_file).join(&cfg.secrets_path),
        &SecretsOptions {
            destination: opts.destination,
            allow_commands: opts.allow_secret_commands,
            env: opts.env,
        },
    )?;
    let version = opts
        .app_version
        .map(str::to_string)
        .or_else(|| cfg.berth.version.clone())
        .ok_or(AppLoadError::NoVersion(RenderError::NoVersion))?;
    let home = opts.home.map_or_else(|| cfg.ssh.home(), str::to_string);
    let desired = render(
        &cfg,
        &RenderOptions {
            version: &version,
            secrets: &secrets,
            home: &home,
        },
    )
    .map_err(AppLoadError::Render)?;
    Ok((cfg, secrets, desired))
}
