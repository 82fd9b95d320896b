//! `berth render`: print what Kamal would run on each host for this config.
//! Secret values never appear: env files are listed by key only.

use super::{ConfigArgs, Output, process_env};
use crate::config;
use crate::config::secrets::Secrets;
use crate::desired::{self, Desired};
use crate::shell;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Image version to render (default: `x-berth.version` from the config).
    #[arg(long = "app-version")]
    pub app_version: Option<String>,
    /// The SSH user's home directory on the hosts (default: /root for root, else /home/<user>).
    #[arg(long)]
    pub home: Option<String>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Load config and secrets, and render the desired state.
pub fn load_desired(
    cfg_args: &ConfigArgs,
    app_version: Option<&str>,
    home: Option<&str>,
) -> anyhow::Result<(config::Config, Desired)> {
    load_all(cfg_args, app_version, home).map(|(c, _, d)| (c, d))
}

/// Like [`load_desired`], keeping the secrets (for the registry login).
pub fn load_all(
    cfg_args: &ConfigArgs,
    app_version: Option<&str>,
    home: Option<&str>,
) -> anyhow::Result<(config::Config, Secrets, Desired)> {
    let files = cfg_args.checkout()?;
    let age_keys = cfg_args.age_keys()?;
    let loaded = desired::load::load_app(&desired::load::AppLoad {
        config_file: &cfg_args.config_file,
        destination: cfg_args.destination.as_deref(),
        secret_commands: cfg_args.secret_commands(),
        strict_secrets: cfg_args.strict_secrets,
        age_keys: age_keys.as_ref(),
        app_version,
        home,
        env: &process_env,
        files: &files,
    })?;
    for w in &loaded.0.warnings {
        eprintln!("warning: {}", super::printable(&w.to_string()));
    }
    super::warn_unset(&loaded.1);
    Ok(loaded)
}

pub fn run(args: &Args) -> anyhow::Result<super::ExitStatus> {
    let (_cfg, desired) = load_desired(
        &args.config,
        args.app_version.as_deref(),
        args.home.as_deref(),
    )?;
    match args.output {
        Output::Text => super::out(&render_text(&desired)),
        Output::Json => super::out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&render_json(&desired))?
        )),
    }
    Ok(super::ExitStatus::Success)
}

const TARGET_PLACEHOLDER: &str = "<container-id>";
/// Stands for the old version's container in `docker stop` (the one running when
/// a new version boots).
const OLD_PLACEHOLDER: &str = "<old-container>";

pub fn render_text(d: &Desired) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let dest = d
        .destination
        .as_deref()
        .map(|d| format!(" (destination {d})"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "# {} {}{dest}: {} host(s), image {}",
        d.service,
        d.version,
        d.hosts.len(),
        d.image
    );
    for h in &d.hosts {
        let _ = writeln!(out, "\nhost {}", h.host);
        if let Some(p) = &h.proxy {
            let _ = writeln!(out, "  proxy kamal-proxy ({})", p.image);
            let _ = writeln!(out, "    {}", shell::join(&p.run_argv));
        }
        for a in &h.accessories {
            let _ = writeln!(
                out,
                "  accessory {} → container {} ({})",
                a.name, a.container_name, a.image
            );
            let _ = writeln!(
                out,
                "    env file {} (mode 600): {}",
                a.env_file.path,
                keys_line(&a.env_file.keys)
            );
            let _ = writeln!(out, "    {}", shell::join(&a.run_argv));
            if let Some(r) = &a.proxy {
                let _ = writeln!(
                    out,
                    "    {}",
                    shell::join(r.deploy_argv(TARGET_PLACEHOLDER))
                );
            }
        }
        for a in &h.apps {
            let _ = writeln!(out, "  app {} → container {}", a.role, a.container_name);
            let _ = writeln!(
                out,
                "    env file {} (mode 600): {}",
                a.env_file.path,
                keys_line(&a.env_file.keys)
            );
            let hostname = format!("{}-<12 hex>", a.hostname_prefix);
            let _ = writeln!(out, "    {}", shell::join(a.run_argv(Some(&hostname))));
            if let Some(r) = &a.proxy {
                let _ = writeln!(
                    out,
                    "    {}",
                    shell::join(r.deploy_argv(TARGET_PLACEHOLDER))
                );
            }
            let _ = writeln!(
                out,
                "    old versions: {}",
                shell::join(a.stop_argv(OLD_PLACEHOLDER))
            );
        }
    }
    out
}

fn keys_line(keys: &[String]) -> String {
    if keys.is_empty() {
        "(no secrets)".into()
    } else {
        keys.iter()
            .map(|k| format!("{k}=(sensitive)"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

pub fn render_json(d: &Desired) -> serde_json::Value {
    use serde_json::json;
    let env_file = |f: &desired::EnvFile| json!({"path": f.path, "mode": "0600", "keys": f.keys});
    let hosts: Vec<_> = d
        .hosts
        .iter()
        .map(|h| {
            json!({
                "host": h.host,
                "proxy": h.proxy.as_ref().map(|p| json!({"image": p.image, "run": p.run_argv})),
                "accessories": h.accessories.iter().map(|a| json!({
                    "name": a.name,
                    "container": a.container_name,
                    "image": a.image,
                    "labels": a.labels,
                    "env": a.clear_env,
                    "env_file": env_file(&a.env_file),
                    "run": a.run_argv,
                    "proxy_deploy": a.proxy.as_ref().map(|r| r.deploy_argv(TARGET_PLACEHOLDER)),
                })).collect::<Vec<_>>(),
                "apps": h.apps.iter().map(|a| json!({
                    "role": a.role,
                    "container": a.container_name,
                    "image": a.image,
                    "labels": a.labels,
                    "env": a.clear_env,
                    "env_file": env_file(&a.env_file),
                    "cmd": a.cmd,
                    "run": a.run_argv(None),
                    "proxy_deploy": a.proxy.as_ref().map(|r| r.deploy_argv(TARGET_PLACEHOLDER)),
                    "stop": a.stop_argv(OLD_PLACEHOLDER),
                    "stop_timeout": a.stop_timeout,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "schema": "berth.render/v1",
        "service": d.service,
        "destination": d.destination,
        "version": d.version,
        "image": d.image,
        "hosts": hosts,
    })
}
