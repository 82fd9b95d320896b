//! `berth reconcile`: observe every host over SSH, plan against the config,
//! print the plan, and (without `--dry-run`) apply it.
//!
//! `--dry-run` exits 0 in sync, 2 changes pending, 1 error (an unreachable
//! host is an error, but every other host is still planned). Applying exits
//! 0 once the fleet converged, 1 on any failure; nothing is applied while a
//! host is unknown.

use super::ExitStatus;
use std::path::PathBuf;
use std::sync::Arc;

use super::{ConfigArgs, Output};
use crate::apply::{self, ApplyContext, UnknownHosts};
use crate::desired::Desired;
use crate::observe;
use crate::plan::{self, PlanOptions, output};
use crate::remote::{Connections, SshOptions};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Only observe and print the plan; exit 0 in sync, 2 changes pending, 1 error.
    #[arg(long)]
    pub dry_run: bool,
    /// Image version (default: `x-berth.version` from the config).
    #[arg(long = "app-version")]
    pub app_version: Option<String>,
    /// known_hosts file to verify host keys against (default: ~/.ssh/known_hosts).
    #[arg(long)]
    pub known_hosts: Option<PathBuf>,
    /// Trust and record the key of a host seen for the first time (never a changed key).
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// Only these hosts (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Only these roles (comma-separated); accessories and orphans are then left out.
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Hosts observed at once.
    #[arg(long, default_value_t = 32)]
    pub parallel: usize,
    /// SSH connect timeout in seconds.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout: u64,
    /// Do not run the hooks in the config's hooks path.
    #[arg(long)]
    pub skip_hooks: bool,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Narrow the desired state to `--hosts` / `--roles`.
pub fn filter(mut desired: Desired, hosts: &[String], roles: &[String]) -> Desired {
    if !hosts.is_empty() {
        desired.hosts.retain(|h| hosts.contains(&h.host));
    }
    if !roles.is_empty() {
        for h in &mut desired.hosts {
            h.apps.retain(|a| roles.contains(&a.role));
            h.accessories.clear();
            if !h.apps.iter().any(|a| a.proxy.is_some()) {
                h.proxy = None;
            }
        }
        desired.hosts.retain(|h| !h.apps.is_empty());
    }
    desired
}

pub fn run(args: &Args) -> anyhow::Result<ExitStatus> {
    let (cfg, secrets, desired) =
        super::render::load_all(&args.config, args.app_version.as_deref(), None)?;
    for h in &args.hosts {
        if !desired.hosts.iter().any(|d| d.host == *h) {
            anyhow::bail!("--hosts: {h} is not a host of this configuration");
        }
    }
    for r in &args.roles {
        if !cfg.roles.iter().any(|role| role.name == *r) {
            anyhow::bail!("--roles: {r} is not a role of this configuration");
        }
    }
    let desired = filter(desired, &args.hosts, &args.roles);
    if let Some(kh) = &args.known_hosts {
        super::check_known_hosts(kh)?;
    }
    let mut ssh = SshOptions::from_config(&cfg.ssh, std::env::var_os("HOME").map(PathBuf::from));
    ssh.known_hosts = args.known_hosts.clone();
    ssh.accept_new_host_keys = args.accept_new_host_keys;
    ssh.connect_timeout = std::time::Duration::from_secs(args.connect_timeout);
    if args.dry_run {
        // One observation per host, then exit.
        ssh.lifetime = crate::remote::Lifetime::OneShot;
    }
    let control_dir = ssh.control_dir.clone();
    let opts = PlanOptions {
        prune: cfg.berth.prune,
        orphans: args.roles.is_empty(),
    };
    let registry = apply::registry_login(&cfg, &secrets).map_err(|e| anyhow::anyhow!(e))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let code = runtime.block_on(async {
        let conns = Arc::new(Connections::new(ssh));
        let observed = observe::observe(&desired, &conns, args.parallel).await;
        let plan = plan::plan(&desired, &observed, &opts);
        match args.output {
            Output::Text => super::out(&output::text(&plan)),
            Output::Json => super::out(&format!("{}\n", output::json(&plan))),
        }
        for (_, why) in &plan.unknown_hosts {
            eprintln!("error: {why}");
        }
        let code = if args.dry_run {
            if !plan.unknown_hosts.is_empty() {
                ExitStatus::Failure
            } else if plan.actions.is_empty() {
                ExitStatus::Success
            } else {
                ExitStatus::ChangesPending
            }
        } else if plan.in_sync() && plan.locks.is_empty() {
            ExitStatus::Success
        } else {
            let live = super::progress::Progress::new(args.output == Output::Json);
            let progress = |line: &str| live.line(line);
            let root = crate::config::project_root(&args.config.config_file);
            // Hooks run with the project root as cwd, by absolute path.
            let root = std::path::absolute(if root.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                &root
            })
            .unwrap_or(root.clone());
            // An untrusted repository's hooks are code it names: never run.
            let hooks = (!args.skip_hooks && !args.config.untrusted).then(|| apply::hooks::Hooks {
                dir: root.join(&cfg.hooks_path),
                cwd: root.clone(),
            });
            // One run converges the whole fleet or touches nothing.
            let ctx = ApplyContext::new(
                &cfg,
                &desired,
                &conns,
                registry.clone(),
                &progress,
                hooks,
                UnknownHosts::Refuse,
            );
            if plan.actions.is_empty() {
                return_code(apply::release_stale_lock(&ctx, &plan).await.map(|_| ()))
            } else {
                match apply::apply(&ctx, &plan).await {
                    Ok(report) => {
                        eprintln!(
                            "Applied {} action(s) with {} remote command(s).",
                            report.actions_done, report.remote_commands
                        );
                        ExitStatus::Success
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitStatus::Failure
                    }
                }
            }
        };
        conns.close().await;
        code
    });
    let _ = std::fs::remove_dir_all(control_dir);
    Ok(code)
}

fn return_code(r: Result<(), apply::ApplyError>) -> ExitStatus {
    match r {
        Ok(()) => ExitStatus::Success,
        Err(e) => {
            eprintln!("error: {e}");
            ExitStatus::Failure
        }
    }
}
