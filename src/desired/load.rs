//! From a project on disk to its desired state: the config (with its
//! destination), the secrets, the version, the accessory files, rendered —
//! the one path the CLI commands and the controller share, and the one
//! `validate` runs. Everything that can refuse a repository refuses here,
//! before any host is touched; every read goes through [`Checkout`].

use std::path::Path;
use std::sync::Arc;

use super::{Desired, RenderError, RenderOptions, render};
use crate::checkout::Checkout;
use crate::config::secrets::{Commands, Secrets, SecretsError, SecretsOptions};
use crate::config::{self, Config, ConfigError, LoadError, LoadOptions};

/// What to load.
pub struct AppLoad<'a> {
    pub config_file: &'a Path,
    pub destination: Option<&'a str>,
    /// What `$(command)` in the secrets does (always refused when the
    /// checkout is untrusted).
    pub secret_commands: Commands,
    /// Refuse a `$VAR` in the secrets that berth's environment does not
    /// set (always under `berth run`; `--strict-secrets` for the CLI, which
    /// otherwise warns from [`Secrets::unset`] and uses an empty value, as
    /// Kamal does).
    pub strict_secrets: bool,
    /// Keys for SOPS-encrypted secrets files.
    pub age_keys: Option<&'a crate::config::sops::AgeKeys>,
    /// Overrides `x-berth.version`.
    pub app_version: Option<&'a str>,
    /// The SSH user's home on the hosts (default: from `ssh.user`).
    pub home: Option<&'a str>,
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// Where the repository's files may be read from, and whether it is
    /// trusted.
    pub files: &'a Checkout,
}

#[derive(Debug, thiserror::Error)]
pub enum AppLoadError {
    /// The config, or a file or secret it names, is refused; located.
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

/// Load config and secrets, check what the config names against them, read
/// the accessory files, and render the desired state.
pub fn load_app(opts: &AppLoad<'_>) -> Result<(Config, Secrets, Desired), AppLoadError> {
    let (cfg, secrets) = load_checked(opts)?;
    let version = opts
        .app_version
        .map(str::to_string)
        .or_else(|| cfg.berth.version.clone())
        .ok_or(AppLoadError::NoVersion(RenderError::NoVersion))?;
    let desired = render_with_files(&cfg, &secrets, &version, opts)?;
    Ok((cfg, secrets, desired))
}

/// What `berth validate` runs: everything [`load_app`] refuses, with a
/// stand-in version when the config declares none (`version` is then
/// `None`), and no secret command executed. The secrets are returned for
/// their [`Secrets::unset`] warnings.
pub fn check_app(opts: &AppLoad<'_>) -> Result<(Config, Option<String>, Secrets), AppLoadError> {
    let (cfg, secrets) = load_checked(opts)?;
    let version = opts
        .app_version
        .map(str::to_string)
        .or_else(|| cfg.berth.version.clone());
    render_with_files(
        &cfg,
        &secrets,
        version.as_deref().unwrap_or("validate"),
        opts,
    )?;
    Ok((cfg, version, secrets))
}

fn load_checked(opts: &AppLoad<'_>) -> Result<(Config, Secrets), AppLoadError> {
    let cfg = config::load(&LoadOptions {
        config_file: opts.config_file,
        destination: opts.destination,
        env: opts.env,
        files: opts.files,
    })?;
    let secrets = Secrets::load(
        &config::project_root(opts.config_file).join(&cfg.secrets_path),
        &SecretsOptions {
            destination: opts.destination,
            commands: opts.secret_commands,
            env: opts.env,
            files: opts.files,
            age_keys: opts.age_keys,
        },
    )?;
    if opts.strict_secrets && !secrets.unset().is_empty() {
        return Err(SecretsError::Unset(secrets.unset().to_vec()).into());
    }
    let missing: Vec<ConfigError> = cfg
        .secret_refs
        .iter()
        .filter(|r| secrets.get(&r.key).is_none())
        .map(|r| ConfigError {
            mark: r.mark.clone(),
            path: r.path.clone(),
            message: format!(
                "secret '{}' not found ({})",
                r.key,
                secrets.describe_files()
            ),
        })
        .collect();
    if !missing.is_empty() {
        return Err(LoadError::Invalid(missing).into());
    }
    Ok((cfg, secrets))
}

/// Render, then attach the accessory files read from the checkout: a file
/// that cannot be read refuses the whole revision here, not half-way through
/// an apply that already stopped the running accessory.
fn render_with_files(
    cfg: &Config,
    secrets: &Secrets,
    version: &str,
    opts: &AppLoad<'_>,
) -> Result<Desired, AppLoadError> {
    let home = opts.home.map_or_else(|| cfg.ssh.home(), str::to_string);
    let mut desired = render(
        cfg,
        &RenderOptions {
            version,
            secrets,
            home: &home,
        },
    )
    .map_err(|e| match e {
        RenderError::NoVersion => AppLoadError::NoVersion(e),
        e => AppLoadError::Render(e),
    })?;
    let root = config::project_root(opts.config_file);
    let mut errors = Vec::new();
    let mut contents: Vec<(String, Arc<[u8]>)> = Vec::new();
    for acc in &cfg.accessories {
        for f in &acc.files {
            if contents.iter().any(|(l, _)| *l == f.local) {
                continue;
            }
            match opts.files.read(&root.join(&f.local)) {
                Ok(bytes) => contents.push((f.local.clone(), Arc::from(bytes))),
                Err(e) => errors.push(ConfigError {
                    mark: f.mark.clone(),
                    path: f.path.clone(),
                    message: e.to_string(),
                }),
            }
        }
    }
    if !errors.is_empty() {
        return Err(LoadError::Invalid(errors).into());
    }
    for file in desired
        .hosts
        .iter_mut()
        .flat_map(|h| h.accessories.iter_mut())
        .flat_map(|a| a.files.iter_mut())
    {
        file.contents = contents
            .iter()
            .find(|(l, _)| *l == file.local)
            .map(|(_, c)| c.clone());
    }
    Ok(desired)
}
