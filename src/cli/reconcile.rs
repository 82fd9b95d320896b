//! `berth reconcile --dry-run`: observe every host over SSH, plan against the
//! config, print the plan; exit 0 in sync, 2 changes pending, 1 error (an
//! unreachable host is an error, but every other host is still planned).

use std::path::PathBuf;
use std::sync::Arc;

use super::{ConfigArgs, Output};
use crate::desired::Desired;
use crate::observe;
use crate::plan::{self, PlanOptions, output};
use crate::remote::{Connections, SshOptions};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Only observe and print the plan (applying arrives with `berth reconcile` proper).
    #[arg(long, required = true)]
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

pub fn run(args: &Args) -> anyhow::Result<u8> {
    let (cfg, desired) =
        super::render::load_desired(&args.config, args.app_version.as_deref(), None)?;
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
    let mut ssh = SshOptions::from_config(&cfg.ssh, std::env::var_os("HOME").map(PathBuf::from));
    ssh.known_hosts = args.known_hosts.clone();
    ssh.accept_new_host_keys = args.accept_new_host_keys;
    ssh.connect_timeout = std::time::Duration::from_secs(args.connect_timeout);
    let control_dir = ssh.control_dir.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let observed = runtime.block_on(async {
        let conns = Arc::new(Connections::new(ssh));
        let observed = observe::observe(&desired, &conns, args.parallel).await;
        conns.close().await;
        observed
    });
    let _ = std::fs::remove_dir_all(control_dir);
    let opts = PlanOptions {
        prune: cfg.berth.prune,
        orphans: args.roles.is_empty(),
    };
    let plan = plan::plan(&desired, &observed, &opts);
    match args.output {
        Output::Text => print!("{}", output::text(&plan)),
        Output::Json => println!("{}", output::json(&plan)),
    }
    Ok(if !plan.unknown_hosts.is_empty() {
        for (h, why) in &plan.unknown_hosts {
            let _ = h;
            eprintln!("error: {why}");
        }
        1
    } else if plan.actions.is_empty() {
        0
    } else {
        2
    })
}
