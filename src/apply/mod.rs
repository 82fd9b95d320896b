//! `apply`: executes a [`Plan`] on the hosts, in Kamal's order and with
//! Kamal's on-host conventions, touching only the units the plan names.
//! This module owns the executor (walking the [`schedule::Schedule`]) and
//! [`ApplyContext`]; `lock` owns Kamal's lock protocol, `schedule` the pure
//! rollout order, `steps` what each action does on a host, `scripts` the
//! constant `sh` scripts and their typed arguments, `hooks` Kamal's hooks.
//!
//! Order: deploy lock (Kamal's lock directory and base64 details, on the
//! primary host) → `kamal` network and directories → registry login →
//! accessories → proxies → image pulls on every host that boots the app, in
//! parallel, checking the image's `service` label → per role (primary first),
//! hosts in batches of `boot.limit`: env file (0600, through stdin), the new
//! container exactly as Kamal runs it (a clashing same-name container renamed
//! `<name>_replaced_<hex>`), health (through `kamal-proxy deploy` for proxied
//! roles, container state and `readiness_delay` otherwise, within
//! `deploy_timeout`), then the old container stopped → orphans → `latest` tag
//! → audit lines → prune (keeping `retain_containers`) → lock released.
//!
//! Cost: each step is one remote round trip per host (a boot, env file to
//! old container stopped, is one), hosts of a stage in parallel.
//!
//! Threat model: config values are data. Every remote script is a constant
//! (`scripts/*.sh`); its inputs are positional arguments quoted by
//! [`crate::shell`], secrets (env files, the registry password) go on
//! stdin, never in an argv that `ps` shows.
//!
//! Failure safety: the old container is stopped only after the new one is
//! healthy, so a failed boot leaves the old version serving; the new container
//! is stopped and kept for inspection, its last log lines reported, and no
//! further batch is rolled. The lock is released on success and failure; a
//! lock left by a berth that died is recognised as berth's own and recovered.

pub mod hooks;
mod lock;
pub mod schedule;
mod scripts;
mod steps;

use std::time::Duration;

pub use lock::release_stale_lock;
use schedule::Stage;

use crate::desired::{Desired, EnvFile, HostUnits};
use crate::plan::Plan;
use crate::remote::{Connections, RemoteError, RemoteOutput};
use crate::secret::Secret;

/// Timings and policies from the config.
#[derive(Clone, Debug)]
pub struct Policy {
    pub readiness_delay: Duration,
    pub deploy_timeout: Duration,
    pub drain_timeout: u64,
    pub retain_containers: u32,
}

impl Policy {
    pub fn from_config(cfg: &crate::config::Config) -> Policy {
        Policy {
            readiness_delay: Duration::from_secs(cfg.readiness_delay),
            deploy_timeout: Duration::from_secs(cfg.deploy_timeout),
            drain_timeout: cfg.drain_timeout,
            retain_containers: cfg.retain_containers,
        }
    }
}

/// `docker login` for the app's registry (the password through stdin).
#[derive(Clone, Debug)]
pub struct RegistryLogin {
    pub server: String,
    pub username: String,
    pub password: Secret,
}

/// The one rule for hosts the plan could not observe (their state is
/// unknown, so the plan has no actions for them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownHosts {
    /// Apply nothing while any host is unknown (`berth reconcile`: one
    /// run that converges the whole fleet or says why not).
    Refuse,
    /// Apply to the hosts that answered (the controller: one dead host
    /// must not stop the fleet; it converges when it comes back).
    ApplyToReachable,
}

impl UnknownHosts {
    /// Whether `plan` may be applied under this rule.
    pub fn admit(self, plan: &Plan) -> Result<(), ApplyError> {
        match self {
            UnknownHosts::Refuse if !plan.unknown_hosts.is_empty() => {
                Err(ApplyError::UnknownHosts {
                    hosts: plan.unknown_hosts.iter().map(|(h, _)| h.clone()).collect(),
                })
            }
            _ => Ok(()),
        }
    }
}

pub struct ApplyContext<'a> {
    pub desired: &'a Desired,
    pub conns: &'a Connections,
    pub policy: Policy,
    pub registry: Option<RegistryLogin>,
    /// Progress lines, one per step.
    pub progress: &'a (dyn Fn(&str) + Sync),
    /// Kamal hooks (`None`: `--skip-hooks`).
    pub hooks: Option<hooks::Hooks>,
    pub unknown_hosts: UnknownHosts,
}

impl<'a> ApplyContext<'a> {
    /// The context `berth reconcile` and the controller both apply with:
    /// the [`Policy`] is the config's.
    pub fn new(
        cfg: &crate::config::Config,
        desired: &'a Desired,
        conns: &'a Connections,
        registry: Option<RegistryLogin>,
        progress: &'a (dyn Fn(&str) + Sync),
        hooks: Option<hooks::Hooks>,
        unknown_hosts: UnknownHosts,
    ) -> ApplyContext<'a> {
        ApplyContext {
            desired,
            conns,
            policy: Policy::from_config(cfg),
            registry,
            progress,
            hooks,
            unknown_hosts,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "{host}: the deploy lock is held, not touching the fleet:\n{details}\n(release it with `kamal lock release` once whoever holds it is done)"
    )]
    Locked { host: String, details: String },
    #[error("not applying while hosts are unknown")]
    UnknownHosts { hosts: Vec<String> },
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("{host}: {what} failed: {message}")]
    Step {
        host: String,
        what: String,
        message: String,
    },
    #[error("{0} (nothing was changed on any host)")]
    PreHook(hooks::HookError),
    #[error("{0}")]
    Hook(hooks::HookError),
    #[error("{host}: cannot pull {image}: {message} (nothing was stopped)")]
    Pull {
        host: String,
        image: String,
        message: String,
    },
    #[error("{host}: {role}: {container} did not become healthy: {reason}; the previous version keeps serving, {container} was stopped and kept for inspection{}", logs_suffix(.logs))]
    Unhealthy {
        host: String,
        role: String,
        container: String,
        reason: String,
        logs: String,
    },
}

fn logs_suffix(logs: &str) -> String {
    if logs.trim().is_empty() {
        String::new()
    } else {
        format!("\nits last log lines:\n{}", logs.trim_end())
    }
}

/// What was done.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub actions_done: usize,
    pub remote_commands: u64,
    /// A stale berth lock that was recovered, if any.
    pub recovered_lock: Option<String>,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// A line in Kamal's audit format, at `ts`.
fn audit_line_at(ts: &str, role: Option<&str>, message: &str) -> String {
    match role {
        Some(r) => format!("[{ts}] [berth] [{r}] {message}"),
        None => format!("[{ts}] [berth] {message}"),
    }
}

impl ApplyContext<'_> {
    async fn run(&self, host: &str, argv: Vec<String>) -> Result<RemoteOutput, ApplyError> {
        Ok(self.conns.run(host, &argv).await?)
    }

    /// Run and require success.
    async fn run_ok(
        &self,
        host: &str,
        what: &str,
        argv: Vec<String>,
    ) -> Result<String, ApplyError> {
        let out = self.run(host, argv).await?;
        if !out.success() {
            return Err(ApplyError::Step {
                host: host.to_string(),
                what: what.to_string(),
                message: out.stderr.trim().to_string(),
            });
        }
        Ok(out.stdout)
    }

    /// Writes `contents` to `path` atomically with `mode` (through stdin).
    async fn write_file(
        &self,
        host: &str,
        path: &str,
        mode: &str,
        contents: &[u8],
    ) -> Result<(), ApplyError> {
        let argv = scripts::sh(
            scripts::WRITE_FILE,
            "berth-write",
            [path.to_string(), mode.to_string()],
        );
        let out = self.conns.run_with_stdin(host, &argv, contents).await?;
        if !out.success() {
            return Err(ApplyError::Step {
                host: host.to_string(),
                what: format!("writing {path}"),
                message: out.stderr.trim().to_string(),
            });
        }
        Ok(())
    }

    async fn write_env_file(&self, host: &str, f: &EnvFile) -> Result<(), ApplyError> {
        self.write_file(host, &f.path, "600", f.contents.expose().as_bytes())
            .await
    }

    async fn audit(&self, host: &str, role: Option<&str>, message: &str) -> Result<(), ApplyError> {
        let argv = scripts::sh(
            scripts::AUDIT,
            "berth-audit",
            [self.audit_line(role, message), audit_log(self.desired)],
        );
        self.run_ok(host, "audit", argv).await.map(|_| ())
    }

    /// A line in Kamal's audit format.
    fn audit_line(&self, role: Option<&str>, message: &str) -> String {
        audit_line_at(&now_rfc3339(), role, message)
    }

    fn say(&self, host: &str, msg: &str) {
        (self.progress)(&format!("[{host}] {msg}"));
    }
}

/// `~/.kamal/<svc>[-<dest>]-audit.log`, relative to the SSH user's home.
pub fn audit_log(desired: &Desired) -> String {
    crate::kamal::audit_log(&desired.service, desired.destination.as_deref())
}

/// The host holding the lock: the primary role's first host, as Kamal.
pub fn primary_host(desired: &Desired) -> Option<String> {
    desired
        .lock_host
        .clone()
        .or_else(|| desired.hosts.first().map(|h| h.host.clone()))
}

/// What must hold before the first host is touched: a step that could
/// refuse later would do so with the old accessory already stopped.
fn preflight(desired: &Desired) -> Result<(), ApplyError> {
    for h in &desired.hosts {
        for acc in &h.accessories {
            if let Some(f) = acc.files.iter().find(|f| f.contents.is_none()) {
                return Err(ApplyError::Step {
                    host: h.host.clone(),
                    what: format!("accessory {}", acc.name),
                    message: format!("file {} was not loaded", f.local),
                });
            }
        }
    }
    Ok(())
}

/// Execute `plan`. Returns after the lock is released, whatever happened.
pub async fn apply(ctx: &ApplyContext<'_>, plan: &Plan) -> Result<ApplyReport, ApplyError> {
    ctx.unknown_hosts.admit(plan)?;
    let mut report = ApplyReport::default();
    if plan.actions.is_empty() {
        return Ok(report);
    }
    preflight(ctx.desired)?;
    let before = ctx.conns.commands_run();
    let Some(lock_host) = primary_host(ctx.desired) else {
        return Ok(report);
    };
    lock::acquire(ctx, &lock_host, &mut report).await?;
    let started = std::time::Instant::now();
    let schedule = schedule::schedule(plan, ctx.desired.boot_batch);
    let hosts = &schedule.hosts;
    let mut result = match &ctx.hooks {
        Some(h) => h
            .run("pre-deploy", ctx.desired, hosts, &[])
            .await
            .map(|_| ())
            .map_err(ApplyError::PreHook),
        None => Ok(()),
    };
    if result.is_ok() {
        result = walk(ctx, plan, &schedule.stages, &mut report).await;
    }
    if result.is_ok()
        && let Some(h) = &ctx.hooks
    {
        let runtime = started.elapsed().as_secs().to_string();
        result = h
            .run(
                "post-deploy",
                ctx.desired,
                hosts,
                &[("KAMAL_RUNTIME", runtime)],
            )
            .await
            .map(|_| ())
            .map_err(ApplyError::Hook);
    }
    let released = lock::release(ctx, &lock_host).await;
    report.remote_commands = ctx.conns.commands_run() - before;
    result?;
    released?;
    Ok(report)
}

fn units<'a>(desired: &'a Desired, host: &str) -> Option<&'a HostUnits> {
    desired.hosts.iter().find(|h| h.host == host)
}

async fn for_hosts<F, Fut>(hosts: &[String], f: F) -> Result<(), ApplyError>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), ApplyError>>,
{
    let results = futures_join_all(hosts.iter().cloned().map(f)).await;
    results.into_iter().collect()
}

/// Await futures concurrently on the current task (no spawn: they borrow).
async fn futures_join_all<Fut: std::future::Future>(
    futs: impl Iterator<Item = Fut>,
) -> Vec<Fut::Output> {
    let mut futs: Vec<std::pin::Pin<Box<Fut>>> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<Fut::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// Run the stages in order, stopping at the first failure.
async fn walk(
    ctx: &ApplyContext<'_>,
    plan: &Plan,
    stages: &[Stage<'_>],
    report: &mut ApplyReport,
) -> Result<(), ApplyError> {
    let mut stages = stages.iter().peekable();
    while let Some(stage) = stages.next() {
        match stage {
            Stage::Prep { hosts, booting } => {
                for_hosts(hosts, |h| {
                    let boots = booting.contains(&h);
                    async move { steps::prep(ctx, &h, boots).await }
                })
                .await?;
            }
            Stage::Accessory(a) => {
                steps::accessory(ctx, a).await?;
                report.actions_done += 1;
            }
            Stage::Proxy(a) => {
                steps::proxy(ctx, a, plan).await?;
                report.actions_done += 1;
            }
            Stage::Batch { role, actions } => {
                let batch_hosts: Vec<String> = actions.iter().map(|a| a.host.clone()).collect();
                let role_env = [("KAMAL_ROLE", role.to_string())];
                if let Some(h) = &ctx.hooks {
                    h.run("pre-app-boot", ctx.desired, &batch_hosts, &role_env)
                        .await
                        .map_err(ApplyError::Hook)?;
                }
                let results = futures_join_all(actions.iter().map(|a| steps::app(ctx, a))).await;
                for r in results {
                    r?;
                    report.actions_done += 1;
                }
                if let Some(h) = &ctx.hooks {
                    h.run("post-app-boot", ctx.desired, &batch_hosts, &role_env)
                        .await
                        .map_err(ApplyError::Hook)?;
                }
                // `boot.wait`: a pause between batches, as Kamal's groups.
                if ctx.desired.boot_wait > 0 && matches!(stages.peek(), Some(Stage::Batch { .. })) {
                    ctx.say(
                        &batch_hosts.join(","),
                        &format!(
                            "waiting {} s before the next batch (boot.wait)",
                            ctx.desired.boot_wait
                        ),
                    );
                    tokio::time::sleep(std::time::Duration::from_secs(ctx.desired.boot_wait)).await;
                }
            }
            Stage::Orphan(a) => {
                steps::orphan(ctx, a).await?;
                report.actions_done += 1;
            }
            Stage::Finish { hosts } => {
                for_hosts(hosts, |h| async move { steps::finish(ctx, &h).await }).await?;
            }
        }
    }
    Ok(())
}

/// `docker login` credentials, when the registry needs them.
pub fn registry_login(
    cfg: &crate::config::Config,
    secrets: &crate::config::secrets::Secrets,
) -> Result<Option<RegistryLogin>, String> {
    use crate::config::Credential;
    let r = &cfg.registry;
    if r.is_local() {
        return Ok(None);
    }
    let resolve = |c: &Credential| -> Result<String, String> {
        match c {
            Credential::Literal(v) => Ok(v.clone()),
            Credential::Secret(name) => secrets
                .get(name)
                .map(|s| s.expose().to_string())
                .ok_or_else(|| {
                    format!(
                        "registry: secret '{name}' not found ({})",
                        secrets.describe_files()
                    )
                }),
        }
    };
    match (&r.username, &r.password) {
        (Some(u), Some(p)) => Ok(Some(RegistryLogin {
            server: r.server.clone().unwrap_or_else(|| "docker.io".into()),
            username: resolve(u)?,
            password: Secret::new(resolve(p)?),
        })),
        _ => Ok(None),
    }
}
