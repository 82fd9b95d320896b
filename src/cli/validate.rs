//! `berth validate`: everything `reconcile` could refuse about a repository
//! (config, secrets syntax, missing secrets, accessory files, what only a
//! shell could run), without touching a host or running a secret command;
//! exit 0 valid, 1 invalid.

use super::{ConfigArgs, Output, process_env};
use crate::config as berth_config;
use crate::config::LoadError;
use crate::config::secrets::{Commands, SecretsError};
use crate::desired::load::{AppLoad, AppLoadError, check_app};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The version `reconcile` would be given (`--app-version`), if the
    /// config declares none.
    #[arg(long)]
    pub app_version: Option<String>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// One refusal, located as far as its source allows.
struct Problem {
    file: String,
    line: Option<usize>,
    column: Option<usize>,
    key: String,
    message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if let Some(c) = self.column {
            write!(f, ":{c}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

fn problems(e: &AppLoadError, config_file: &std::path::Path) -> Vec<Problem> {
    match e {
        AppLoadError::Config(e) if !e.errors().is_empty() => e
            .errors()
            .iter()
            .map(|e| Problem {
                file: e.mark.file.display().to_string(),
                line: Some(e.mark.line),
                column: Some(e.mark.col),
                key: e.path.clone(),
                message: e.message.clone(),
            })
            .collect(),
        AppLoadError::Config(LoadError::File(e)) | AppLoadError::Secrets(SecretsError::File(e)) => {
            vec![Problem {
                file: e.path().display().to_string(),
                line: e.line(),
                column: None,
                key: String::new(),
                message: e.reason(),
            }]
        }
        AppLoadError::Secrets(
            e @ (SecretsError::Syntax { file, line, .. }
            | SecretsError::Command { file, line, .. }
            | SecretsError::CommandNotAllowed { file, line, .. }),
        ) => {
            // The message as displayed, without the `file:line: ` it starts with.
            let text = e.to_string();
            let prefix = format!("{}:{line}: ", file.display());
            vec![Problem {
                file: file.display().to_string(),
                line: Some(*line),
                column: None,
                key: String::new(),
                message: text.strip_prefix(&prefix).unwrap_or(&text).to_string(),
            }]
        }
        AppLoadError::Secrets(SecretsError::Sops { file, error }) => vec![Problem {
            file: file.display().to_string(),
            line: error.line,
            column: None,
            key: String::new(),
            message: error.message.clone(),
        }],
        AppLoadError::Secrets(SecretsError::Unset(list)) => list
            .iter()
            .map(|u| Problem {
                file: u.file.display().to_string(),
                line: Some(u.line),
                column: None,
                key: u.key.clone(),
                message: format!("${} is not set in berth's environment", u.variable),
            })
            .collect(),
        other => vec![Problem {
            file: config_file.display().to_string(),
            line: None,
            column: None,
            key: String::new(),
            message: other.to_string(),
        }],
    }
}

/// Docker `options` whose flag berth does not compare (`docker_flags`).
fn uncompared_options(cfg: &berth_config::Config) -> Vec<(String, String)> {
    use crate::docker_flags::{Reading, reading};
    let mut sets: Vec<(String, &berth_config::DockerOptions)> = Vec::new();
    for r in &cfg.roles {
        sets.push((format!("servers.{}.options", r.name), &r.options));
        if let berth_config::RoleProxy::On(p) = &r.proxy
            && let Some(run) = &p.run
        {
            sets.push(("proxy.run.options".into(), &run.options));
        }
    }
    for a in &cfg.accessories {
        sets.push((format!("accessories.{}.options", a.name), &a.options));
    }
    let mut out: Vec<(String, String)> = sets
        .into_iter()
        .flat_map(|(path, opts)| {
            opts.iter()
                .filter(|(k, _)| matches!(reading(&format!("--{k}")), Reading::Uncompared))
                .map(move |(k, _)| (path.clone(), k.clone()))
        })
        .collect();
    out.dedup();
    out
}

/// Warnings in the shape of `errors` entries.
fn warnings_json(warnings: &[crate::config::ConfigError]) -> Vec<serde_json::Value> {
    warnings
        .iter()
        .map(|w| {
            serde_json::json!({
                "file": w.mark.file.display().to_string(),
                "line": w.mark.line,
                "column": w.mark.col,
                "key": w.path,
                "message": w.message,
            })
        })
        .collect()
}

pub fn run(args: &Args) -> anyhow::Result<super::ExitStatus> {
    let files = args.config.checkout()?;
    let age_keys = args.config.age_keys()?;
    let checked = check_app(&AppLoad {
        config_file: &args.config.config_file,
        destination: args.config.destination.as_deref(),
        // Checked, never run: validating must not execute the repository.
        secret_commands: if args.config.allow_secret_commands {
            Commands::Skip
        } else {
            Commands::Refuse
        },
        strict_secrets: args.config.strict_secrets,
        age_keys: age_keys.as_ref(),
        app_version: args.app_version.as_deref(),
        home: None,
        env: &process_env,
        files: &files,
    });
    match checked {
        Ok((cfg, version, secrets)) => {
            for w in &cfg.warnings {
                eprintln!("warning: {}", super::printable(&w.to_string()));
            }
            super::warn_unset(&secrets);
            if version.is_none() {
                eprintln!(
                    "note: no x-berth.version: reconcile and berth run need one (or --app-version)"
                );
            }
            for (path, flag) in uncompared_options(&cfg) {
                eprintln!(
                    "note: {path}: `--{flag}` is passed to docker run but berth cannot read it back from docker inspect, so a change to it is not seen as drift"
                );
            }
            match args.output {
                Output::Text => super::out(&format!(
                    "{}: valid ({} role(s), {} accessory(ies), {} host(s))\n",
                    args.config.config_file.display(),
                    cfg.roles.len(),
                    cfg.accessories.len(),
                    cfg.all_hosts().len()
                )),
                Output::Json => super::out(&format!(
                    "{}\n",
                    serde_json::json!({"valid": true, "errors": [], "warnings": warnings_json(&cfg.warnings), "roles": cfg.roles.len(), "hosts": cfg.all_hosts().len()})
                )),
            }
            Ok(super::ExitStatus::Success)
        }
        Err(e) => {
            let list = problems(&e, &args.config.config_file);
            match args.output {
                Output::Text => {
                    for p in &list {
                        eprintln!("{}", super::printable(&p.to_string()));
                    }
                    eprintln!("{} error(s)", list.len());
                }
                Output::Json => {
                    let list: Vec<_> = list
                        .iter()
                        .map(|p| {
                            serde_json::json!({
                                "file": p.file,
                                "line": p.line,
                                "column": p.column,
                                "key": p.key,
                                "message": p.message,
                            })
                        })
                        .collect();
                    super::out(&format!(
                        "{}\n",
                        serde_json::json!({"valid": false, "errors": list})
                    ));
                }
            }
            Ok(super::ExitStatus::Failure)
        }
    }
}
