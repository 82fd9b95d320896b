//! `apply`: executes a [`Plan`] on the hosts, in Kamal's order and with
//! Kamal's on-host conventions, touching only the units the plan names.
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
//! Failure safety: the old container is stopped only after the new one is
//! healthy, so a failed boot leaves the old version serving; the new container
//! is stopped and kept for inspection, its last log lines reported, and no
//! further batch is rolled. The lock is released on success and failure; a
//! lock left by a berth that died is recognised as berth's own and recovered.

pub mod hooks;

use std::collections::BTreeSet;

use std::time::Duration;

use crate::desired::{AccessoryUnit, AppUnit, Desired, EnvFile, HostUnits, PROXY_CONTAINER};
use crate::plan::{Action, ActionKind, Plan, Unit};
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

/// `docker login` for the app's registry (the password through stdin).
#[derive(Clone, Debug)]
pub struct RegistryLogin {
    pub server: String,
    pub username: String,
    pub password: Secret,
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
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "{host}: the deploy lock is held, not touching the fleet:\n{details}\n(release it with `kamal lock release` once whoever holds it is done)"
    )]
    Locked { host: String, details: String },
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

/// Writes stdin to a file atomically with mode 0600.
const WRITE_FILE: &str = r#"umask 077 && mkdir -p "$(dirname "$1")" && cat > "$1.berth-tmp" && chmod "$2" "$1.berth-tmp" && mv "$1.berth-tmp" "$1""#;

/// Kamal's proxy boot from `kamal proxy boot_config` files (no `proxy.run`).
const PROXY_BOOT_CONFIG: &str = r#"mkdir -p .kamal/proxy/apps-config && echo $(cat .kamal/proxy/options 2> /dev/null || echo "--publish 80:80 --publish 443:443 --log-opt max-size=10m") $(cat .kamal/proxy/image 2> /dev/null || echo "basecamp/kamal-proxy"):$(cat .kamal/proxy/image_version 2> /dev/null || echo "v0.9.2") $(cat .kamal/proxy/run_command 2> /dev/null || echo "") | xargs docker run --name kamal-proxy --network kamal --detach --restart unless-stopped --volume kamal-proxy-config:/home/kamal-proxy/.config/kamal-proxy --volume "$PWD/.kamal/proxy/apps-config:/home/kamal-proxy/.apps-config""#;

/// Shared by the scripts below: the Engine API over the host's unix socket
/// with `curl` when both exist (a fraction of a docker CLI call's cost);
/// callers fall back to the docker CLI when `api` fails.
const API: &str = r#"sock=""
case "${DOCKER_HOST:-}" in unix://*) sock="${DOCKER_HOST#unix://}";; "") sock=/var/run/docker.sock;; esac
api() { [ -n "$sock" ] && [ -S "$sock" ] && command -v curl >/dev/null 2>&1 && curl -sf --unix-socket "$sock" "http://d$1"; }
apipost() { [ -n "$sock" ] && [ -S "$sock" ] && command -v curl >/dev/null 2>&1 && curl -sf -o /dev/null -X POST --unix-socket "$sock" "http://d$1"; }
"#;

/// Per host, before anything else: the `kamal` network, the registry login
/// (password on stdin; skipped when a pull succeeds without it) and, where
/// the app boots, the pull with Kamal's check of the image's `service` label.
/// Exit codes name the failed step.
const PREP: &str = r#"server=$1; user=$2; image=$3; service=$4; log=$5; line=$6
api /networks/kamal >/dev/null || docker network inspect kamal >/dev/null 2>&1 || docker network create kamal >/dev/null || exit 10
login() { [ -z "$server" ] || docker login "$server" -u "$user" --password-stdin >/dev/null || exit 11; }
if [ -n "$image" ]; then
  # A host keeps its registry login (~/.docker/config.json): pull first and
  # log in only when the registry asks, saving a round of docker CLI work.
  if ! docker pull --quiet "$image" >/dev/null 2>&1; then
    login
    docker pull --quiet "$image" >/dev/null || exit 12
  fi
  case "$(api "/images/$image/json")" in
    *'"service":"'"$service"'"'*) label=$service;;
    *) label=$(docker inspect -f '{{ .Config.Labels.service }}' "$image") || exit 12;;
  esac
  [ "$label" = "$service" ] || { echo "the image's service label is \"$label\", not \"$service\" (Kamal refuses such images too)" >&2; exit 13; }
  mkdir -p .kamal && echo "$line" >> "$log"
else
  login
fi"#;

/// One app container's boot, in one round trip: env file (stdin, 0600), a
/// clashing same-name container renamed, audit, `docker run` (the argv berth
/// rendered, quoted by `shell::join`, evaluated back into the same words),
/// (or, with an empty `run`, `docker start` of the existing container),
/// then health: `kamal-proxy deploy` (remaining args: service, port, flags)
/// or container state within the deploy timeout; then the old one stopped.
/// Exit 23/24: unhealthy (the new container is left for berth to stop).
const BOOT: &str = r#"f=$1; name=$2; renamed=$3; log=$4; booted=$5; renamedline=$6; timeout=$7; delay=$8; run=$9; shift 9
old=$1; stop_t=$2; shift 2
umask 077
{ mkdir -p "$(dirname "$f")" && cat > "$f.berth-tmp" && chmod 600 "$f.berth-tmp" && mv "$f.berth-tmp" "$f"; } || { echo "cannot write $f" >&2; exit 20; }
umask 022
mkdir -p .kamal
if [ -n "$renamed" ]; then echo "$renamedline" >> "$log"; docker rename "$name" "$renamed" || exit 21; fi
echo "$booted" >> "$log"
if [ -n "$run" ]; then
  id=$(eval "$run") || exit 22
else
  docker start "$name" >/dev/null || exit 22
  id=$(docker inspect -f '{{.Id}}' "$name") || exit 22
fi
id=$(printf '%.12s' "$id")
echo "@@id $id"
if [ $# -gt 0 ]; then
  svc=$1; port=$2; shift 2
  docker exec kamal-proxy kamal-proxy deploy "$svc" "--target=$id:$port" "$@" || exit 23
else
  status_of() {
    if j=$(api "/containers/$name/json"); then
      case "$j" in
        *'"Health":{"Status":"'*) j=${j#*'"Health":{"Status":"'};;
        *) j=${j#*'"State":{"Status":"'};;
      esac
      echo "${j%%'"'*}"
    else
      docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$name"
    fi
  }
  end=$(( $(date +%s) + timeout )); status=""
  while :; do
    status=$(status_of)
    if [ "$status" = running ] && [ "$delay" -gt 0 ]; then
      sleep "$delay"
      status=$(status_of)
    fi
    case "$status" in running|healthy) break;; esac
    [ "$(date +%s)" -lt "$end" ] || { echo "container not ready after $timeout seconds ($status)" >&2; exit 24; }
    sleep 0.25
  done
fi
if [ -n "$old" ]; then
  # The Engine API when it answers (a docker CLI start-up less per host).
  if [ -n "$stop_t" ]; then
    apipost "/containers/$old/stop?t=$stop_t" || docker stop -t "$stop_t" "$old" >/dev/null
  else
    apipost "/containers/$old/stop" || docker stop "$old" >/dev/null
  fi
fi
exit 0"#;

/// After the app booted on a host: audit, tag `latest`, prune old containers
/// beyond `retain_containers` and then the images none of the remaining
/// containers use.
const FINISH: &str = r#"log=$1; line=$2; image=$3; latest=$4; retain=$5; service=$6; pruned=$7
mkdir -p .kamal && echo "$line" >> "$log"
apipost "/images/$image/tag?repo=${latest%:*}&tag=${latest##*:}" || docker tag "$image" "$latest" || exit 30
# Stopped containers of the service, newest first (as `docker ps`), through
# the Engine API when it answers.
if list=$(api "/containers/json?all=1&filters=%7B%22label%22%3A%5B%22service%3D$service%22%5D%2C%22status%22%3A%5B%22created%22%2C%22exited%22%2C%22dead%22%5D%7D"); then
  stopped=""; rest=$list
  while :; do case "$rest" in *'"Id":"'*) rest=${rest#*'"Id":"'}; stopped="$stopped${rest%%'"'*}
";; *) break;; esac; done
else
  stopped=$(docker ps -q -a --filter "label=service=$service" --filter status=created --filter status=exited --filter status=dead)
fi
old=$(printf '%s' "$stopped" | tail -n +$((retain + 1)))
if [ -n "$old" ]; then
  docker rm $old >/dev/null && echo "$pruned" >> "$log"
  # Images no container of the service uses any more (but `latest`), as
  # Kamal's `prune images`: old versions do not fill the disk.
  used=" $(docker ps -a --filter "label=service=$service" --format '{{.Image}}' | tr '\n' ' ') $latest "
  docker image ls --filter "label=service=$service" --format '{{.Repository}}:{{.Tag}}' | while read -r ref; do
    case "$ref" in *:"<none>") continue;; esac
    case "$used" in *" $ref "*) ;; *) docker rmi "$ref" >/dev/null 2>&1 || true;; esac
  done
  docker image prune --force --filter "label=service=$service" >/dev/null 2>&1 || true
fi
exit 0"#;

/// Takes the lock: `mkdir` is the atomic test-and-set Kamal uses.
const LOCK: &str = r#"mkdir -p "$(dirname "$1")" && mkdir "$1" && base64 > "$1/details""#;

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

    async fn write_file(
        &self,
        host: &str,
        path: &str,
        mode: &str,
        contents: &[u8],
    ) -> Result<(), ApplyError> {
        let argv = strings(&["sh", "-c", WRITE_FILE, "berth-write", path, mode]);
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
        let line = self.audit_line(role, message);
        let log = audit_log(self.desired);
        let argv = strings(&[
            "sh",
            "-c",
            r#"mkdir -p .kamal && echo "$1" >> "$2""#,
            "berth-audit",
            &line,
            &log,
        ]);
        self.run_ok(host, "audit", argv).await.map(|_| ())
    }

    /// A line in Kamal's audit format.
    fn audit_line(&self, role: Option<&str>, message: &str) -> String {
        let ts = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        match role {
            Some(r) => format!("[{ts}] [berth] [{r}] {message}"),
            None => format!("[{ts}] [berth] {message}"),
        }
    }

    fn say(&self, host: &str, msg: &str) {
        (self.progress)(&format!("[{host}] {msg}"));
    }
}

/// `~/.kamal/<svc>[-<dest>]-audit.log`, relative to the SSH user's home.
pub fn audit_log(desired: &Desired) -> String {
    match &desired.destination {
        Some(d) => format!(".kamal/{}-{d}-audit.log", desired.service),
        None => format!(".kamal/{}-audit.log", desired.service),
    }
}

/// The host holding the lock: the primary role's first host, as Kamal.
pub fn primary_host(desired: &Desired) -> Option<String> {
    let primary = desired.roles.first();
    desired
        .hosts
        .iter()
        .find(|h| h.apps.iter().any(|a| Some(&a.role) == primary))
        .or(desired.hosts.first())
        .map(|h| h.host.clone())
}

fn this_machine() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Who holds a berth lock: `Locked by: berth (pid P on M[, started S])`.
#[derive(Debug, PartialEq)]
struct LockOwner {
    pid: u32,
    machine: String,
    /// The process's identity beyond its pid (see [`process_start`]).
    started: Option<String>,
}

fn berth_lock_owner(details: &str) -> Option<LockOwner> {
    let rest = details
        .lines()
        .next()?
        .strip_prefix("Locked by: berth (pid ")?;
    let (pid, rest) = rest.split_once(" on ")?;
    let (inside, _) = rest.split_once(')')?;
    let (machine, started) = match inside.split_once(", started ") {
        Some((m, s)) => (m, Some(s.to_string())),
        None => (inside, None),
    };
    Some(LockOwner {
        pid: pid.parse().ok()?,
        machine: machine.to_string(),
        started,
    })
}

/// Boot id and start time of process `pid`: pids repeat (a container's
/// berth has the same small pid every time, and a restarted pod keeps its
/// hostname), this pair does not.
fn process_start(pid: u32) -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime), counted after the `(comm)` that may hold spaces.
    let start = stat.rsplit_once(')')?.1.split_whitespace().nth(19)?;
    Some(format!("{}:{start}", boot.trim().get(..8)?))
}

/// A lock left by a berth on this machine that is no longer running.
fn stale(owner: &LockOwner) -> bool {
    if owner.machine != this_machine() {
        return false;
    }
    let alive = std::fs::read_to_string(format!("/proc/{}/comm", owner.pid))
        .is_ok_and(|c| c.trim().starts_with("berth"));
    match &owner.started {
        Some(s) => !alive || process_start(owner.pid).as_ref() != Some(s),
        None => !alive,
    }
}

async fn acquire_lock(
    ctx: &ApplyContext<'_>,
    host: &str,
    report: &mut ApplyReport,
) -> Result<(), ApplyError> {
    let dir = crate::observe::lock_dir(ctx.desired);
    let ts = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let details = format!(
        "Locked by: berth (pid {} on {}, started {}) at {ts}\nVersion: {}\nMessage: berth reconcile",
        std::process::id(),
        this_machine(),
        process_start(std::process::id()).unwrap_or_else(|| "unknown".into()),
        ctx.desired.version
    );
    let argv = strings(&["sh", "-c", LOCK, "berth-lock", &dir]);
    for attempt in 0..2 {
        let out = ctx
            .conns
            .run_with_stdin(host, &argv, details.as_bytes())
            .await?;
        if out.success() {
            ctx.say(host, &format!("acquired the deploy lock ({dir})"));
            return Ok(());
        }
        let held = ctx
            .run(
                host,
                strings(&[
                    "sh",
                    "-c",
                    r#"base64 -d < "$1/details""#,
                    "berth-lock",
                    &dir,
                ]),
            )
            .await?;
        let held = held.stdout.trim().to_string();
        match berth_lock_owner(&held) {
            Some(owner) if attempt == 0 && stale(&owner) => {
                let msg = format!(
                    "recovering a stale deploy lock left by berth (pid {} on {}, no longer running): {}",
                    owner.pid,
                    owner.machine,
                    held.replace('\n', "; ")
                );
                ctx.say(host, &msg);
                report.recovered_lock = Some(msg);
                ctx.run_ok(
                    host,
                    "removing the stale lock",
                    strings(&["rm", "-r", &dir]),
                )
                .await?;
            }
            _ => {
                return Err(ApplyError::Locked {
                    host: host.to_string(),
                    details: if held.is_empty() {
                        "(no details)".into()
                    } else {
                        held
                    },
                });
            }
        }
    }
    Err(ApplyError::Locked {
        host: host.to_string(),
        details: "could not take the lock".into(),
    })
}

async fn release_lock(ctx: &ApplyContext<'_>, host: &str) -> Result<(), ApplyError> {
    let dir = crate::observe::lock_dir(ctx.desired);
    ctx.run_ok(
        host,
        "releasing the deploy lock",
        strings(&["rm", "-r", &dir]),
    )
    .await?;
    Ok(())
}

/// With nothing to do, a deploy lock left by a berth that died is still
/// released (it would block every human and every later run).
pub async fn release_stale_lock(
    ctx: &ApplyContext<'_>,
    plan: &Plan,
) -> Result<Option<String>, ApplyError> {
    let Some(primary) = primary_host(ctx.desired) else {
        return Ok(None);
    };
    for (host, details) in &plan.locks {
        if *host != primary {
            continue;
        }
        if let Some(owner) = berth_lock_owner(details)
            && stale(&owner)
        {
            let msg = format!(
                "releasing a stale deploy lock left by berth (pid {} on {}, no longer running)",
                owner.pid, owner.machine
            );
            ctx.say(host, &msg);
            release_lock(ctx, host).await?;
            return Ok(Some(msg));
        }
    }
    Ok(None)
}

/// Execute `plan`. Returns after the lock is released, whatever happened.
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

pub async fn apply(ctx: &ApplyContext<'_>, plan: &Plan) -> Result<ApplyReport, ApplyError> {
    let mut report = ApplyReport::default();
    if plan.actions.is_empty() {
        return Ok(report);
    }
    preflight(ctx.desired)?;
    let before = ctx.conns.commands_run();
    let Some(lock_host) = primary_host(ctx.desired) else {
        return Ok(report);
    };
    acquire_lock(ctx, &lock_host, &mut report).await?;
    let started = std::time::Instant::now();
    let hosts = plan_hosts(plan);
    let mut result = match &ctx.hooks {
        Some(h) => h
            .run("pre-deploy", ctx.desired, &hosts, &[])
            .await
            .map(|_| ())
            .map_err(ApplyError::PreHook),
        None => Ok(()),
    };
    if result.is_ok() {
        result = apply_locked(ctx, plan, &mut report).await;
    }
    if result.is_ok()
        && let Some(h) = &ctx.hooks
    {
        let runtime = started.elapsed().as_secs().to_string();
        result = h
            .run(
                "post-deploy",
                ctx.desired,
                &hosts,
                &[("KAMAL_RUNTIME", runtime)],
            )
            .await
            .map(|_| ())
            .map_err(ApplyError::Hook);
    }
    let released = release_lock(ctx, &lock_host).await;
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

fn plan_hosts(plan: &Plan) -> Vec<String> {
    let mut seen = BTreeSet::new();
    plan.actions
        .iter()
        .filter(|a| seen.insert(a.host.clone()))
        .map(|a| a.host.clone())
        .collect()
}

async fn apply_locked(
    ctx: &ApplyContext<'_>,
    plan: &Plan,
    report: &mut ApplyReport,
) -> Result<(), ApplyError> {
    let hosts = plan_hosts(plan);
    // Network, login and (where the app boots) the pull, on every host the
    // plan touches, in parallel, before anything is stopped.
    let booting: Vec<String> = {
        let mut seen = BTreeSet::new();
        plan.actions
            .iter()
            .filter(|a| {
                matches!(a.unit, Unit::App { .. })
                    && matches!(a.kind, ActionKind::Create | ActionKind::Replace)
            })
            .filter(|a| seen.insert(a.host.clone()))
            .map(|a| a.host.clone())
            .collect()
    };
    for_hosts(&hosts, |h| {
        let boots = booting.contains(&h);
        async move { prep(ctx, &h, boots).await }
    })
    .await?;

    // Accessories, then proxies.
    for a in plan
        .actions
        .iter()
        .filter(|a| matches!(a.unit, Unit::Accessory { .. }))
    {
        accessory(ctx, a).await?;
        report.actions_done += 1;
    }
    for a in plan
        .actions
        .iter()
        .filter(|a| matches!(a.unit, Unit::Proxy))
    {
        proxy(ctx, a, plan).await?;
        report.actions_done += 1;
    }

    // Apps: per role in plan order (primary first), hosts in batches.
    let app_actions: Vec<&Action> = plan
        .actions
        .iter()
        .filter(|a| matches!(a.unit, Unit::App { .. }))
        .collect();
    let mut roles: Vec<&str> = Vec::new();
    for a in &app_actions {
        if let Unit::App { role } = &a.unit
            && !roles.contains(&role.as_str())
        {
            roles.push(role);
        }
    }
    let batch = ctx.desired.boot_batch.max(1);
    for role in roles {
        let of_role: Vec<&&Action> = app_actions
            .iter()
            .filter(|a| matches!(&a.unit, Unit::App { role: r } if r == role))
            .collect();
        // Leftover versions are stopped only after every other action of the
        // role: a route may still point at them until then.
        let (stops, boots): (Vec<&&Action>, Vec<&&Action>) = of_role
            .into_iter()
            .partition(|a| a.kind == ActionKind::Stop);
        for list in [boots, stops] {
            for chunk in list.chunks(batch) {
                let batch_hosts: Vec<String> = chunk.iter().map(|a| a.host.clone()).collect();
                let role_env = [("KAMAL_ROLE", role.to_string())];
                if let Some(h) = &ctx.hooks {
                    h.run("pre-app-boot", ctx.desired, &batch_hosts, &role_env)
                        .await
                        .map_err(ApplyError::Hook)?;
                }
                let results = futures_join_all(chunk.iter().map(|a| app(ctx, a))).await;
                for r in results {
                    r?;
                    report.actions_done += 1;
                }
                if let Some(h) = &ctx.hooks {
                    h.run("post-app-boot", ctx.desired, &batch_hosts, &role_env)
                        .await
                        .map_err(ApplyError::Hook)?;
                }
            }
        }
    }

    for a in plan
        .actions
        .iter()
        .filter(|a| matches!(a.unit, Unit::Orphan))
    {
        ctx.say(&a.host, &format!("removing orphan {}", a.container));
        ctx.run(&a.host, strings(&["docker", "stop", &a.container]))
            .await?;
        ctx.run_ok(
            &a.host,
            "removing an orphan",
            strings(&["docker", "rm", &a.container]),
        )
        .await?;
        ctx.audit(&a.host, None, &format!("Removed orphan {}", a.container))
            .await?;
        report.actions_done += 1;
    }

    // Tag the image as latest and prune, where the app booted.
    for_hosts(&booting, |h| async move { finish(ctx, &h).await }).await?;
    Ok(())
}

async fn prep(ctx: &ApplyContext<'_>, h: &str, boots: bool) -> Result<(), ApplyError> {
    let image = if boots {
        ctx.desired.image.clone()
    } else {
        String::new()
    };
    if boots {
        ctx.say(h, &format!("pulling {image}"));
    }
    let (server, user, password) = match &ctx.registry {
        Some(r) => (
            r.server.clone(),
            r.username.clone(),
            r.password.expose().as_bytes().to_vec(),
        ),
        None => (String::new(), String::new(), Vec::new()),
    };
    let line = ctx.audit_line(
        None,
        &format!("Pulled image with version {}", ctx.desired.version),
    );
    let argv = strings(&[
        "sh",
        "-c",
        &format!("{API}{PREP}"),
        "berth-prep",
        &server,
        &user,
        &image,
        &ctx.desired.service,
        &audit_log(ctx.desired),
        &line,
    ]);
    let out = ctx.conns.run_with_stdin(h, &argv, &password).await?;
    let message = out.stderr.trim().to_string();
    match out.status {
        Some(0) => Ok(()),
        Some(12) | Some(13) => Err(ApplyError::Pull {
            host: h.to_string(),
            image,
            message,
        }),
        Some(11) => Err(ApplyError::Step {
            host: h.to_string(),
            what: format!("docker login {server}"),
            message,
        }),
        _ => Err(ApplyError::Step {
            host: h.to_string(),
            what: "creating the kamal network".into(),
            message,
        }),
    }
}

async fn finish(ctx: &ApplyContext<'_>, h: &str) -> Result<(), ApplyError> {
    let image = &ctx.desired.image;
    let latest = format!(
        "{}:latest",
        image.rsplit_once(':').map_or(image.as_str(), |(r, _)| r)
    );
    let script = format!("{API}{FINISH}");
    let argv = strings(&[
        "sh",
        "-c",
        &script,
        "berth-finish",
        &audit_log(ctx.desired),
        &ctx.audit_line(None, &format!("Tagging {image} as the latest image")),
        image,
        &latest,
        &ctx.policy.retain_containers.to_string(),
        &ctx.desired.service,
        &ctx.audit_line(None, "Pruned containers"),
    ]);
    ctx.run_ok(h, "tagging and pruning", argv).await.map(|_| ())
}

async fn accessory(ctx: &ApplyContext<'_>, a: &Action) -> Result<(), ApplyError> {
    let Unit::Accessory { name } = &a.unit else {
        return Ok(());
    };
    let Some(acc) =
        units(ctx.desired, &a.host).and_then(|u| u.accessories.iter().find(|x| x.name == *name))
    else {
        return Ok(());
    };
    let h = &a.host;
    match a.kind {
        ActionKind::Start => {
            ctx.say(h, &format!("starting accessory {}", acc.container_name));
            ctx.run_ok(
                h,
                "starting the accessory",
                strings(&["docker", "start", &acc.container_name]),
            )
            .await?;
        }
        ActionKind::WriteEnvFile => {
            ctx.say(h, &format!("rewriting {}", acc.env_file.path));
            ctx.write_env_file(h, &acc.env_file).await?;
        }
        _ => {
            if a.kind == ActionKind::Reboot {
                ctx.say(
                    h,
                    &format!(
                        "rebooting accessory {} (its spec changed)",
                        acc.container_name
                    ),
                );
                ctx.run(h, strings(&["docker", "stop", &acc.container_name]))
                    .await?;
                ctx.run_ok(
                    h,
                    "removing the accessory",
                    strings(&["docker", "rm", &acc.container_name]),
                )
                .await?;
            } else {
                ctx.say(h, &format!("booting accessory {}", acc.container_name));
            }
            boot_accessory(ctx, h, acc).await?;
            ctx.audit(h, None, &format!("Booted {} accessory", acc.name))
                .await?;
        }
    }
    Ok(())
}

async fn boot_accessory(
    ctx: &ApplyContext<'_>,
    h: &str,
    acc: &AccessoryUnit,
) -> Result<(), ApplyError> {
    for (dir, _mode) in &acc.directories {
        ctx.run_ok(
            h,
            "creating accessory directories",
            strings(&["mkdir", "-p", dir]),
        )
        .await?;
    }
    for file in &acc.files {
        // Read (and confined) when the desired state was loaded; checked
        // before the lock (`preflight`), so this cannot fail half-way.
        let Some(contents) = &file.contents else {
            return Err(ApplyError::Step {
                host: h.to_string(),
                what: format!("writing accessory file {}", file.local),
                message: "the file was not loaded".into(),
            });
        };
        ctx.write_file(
            h,
            &file.remote,
            file.mode.as_deref().unwrap_or("755"),
            contents,
        )
        .await?;
    }
    ctx.write_env_file(h, &acc.env_file).await?;
    ctx.run_ok(h, "running the accessory", acc.run_argv.clone())
        .await?;
    Ok(())
}

async fn proxy(ctx: &ApplyContext<'_>, a: &Action, plan: &Plan) -> Result<(), ApplyError> {
    let h = &a.host;
    let Some(unit) = units(ctx.desired, h) else {
        return Ok(());
    };
    let Some(p) = &unit.proxy else { return Ok(()) };
    match a.kind {
        ActionKind::Start => {
            ctx.say(h, "starting kamal-proxy");
            ctx.run_ok(
                h,
                "starting kamal-proxy",
                strings(&["docker", "container", "start", PROXY_CONTAINER]),
            )
            .await?;
        }
        _ => {
            ctx.say(h, "booting kamal-proxy");
            if p.boot_config {
                ctx.run_ok(
                    h,
                    "booting kamal-proxy",
                    strings(&["sh", "-c", PROXY_BOOT_CONFIG]),
                )
                .await?;
            } else {
                ctx.run_ok(
                    h,
                    "creating directories",
                    strings(&["mkdir", "-p", ".kamal/proxy/apps-config"]),
                )
                .await?;
                ctx.run_ok(h, "booting kamal-proxy", p.run_argv.clone())
                    .await?;
            }
            // A new proxy knows no routes: route the apps that stay as they are.
            for app in &unit.apps {
                let touched = plan
                    .actions
                    .iter()
                    .any(|x| x.host == *h && x.container == app.container_name);
                if app.proxy.is_some() && !touched {
                    route(ctx, h, app).await?;
                }
            }
        }
    }
    Ok(())
}

/// Point the proxy at an existing, running app container.
async fn route(ctx: &ApplyContext<'_>, h: &str, app: &AppUnit) -> Result<(), ApplyError> {
    let Some(r) = &app.proxy else { return Ok(()) };
    let id = ctx
        .run_ok(
            h,
            "finding the container",
            strings(&["docker", "inspect", "-f", "{{.Id}}", &app.container_name]),
        )
        .await?;
    let id: String = id.trim().chars().take(12).collect();
    ctx.say(
        h,
        &format!("routing {} to {}", r.service, app.container_name),
    );
    ctx.run_ok(h, "kamal-proxy deploy", r.deploy_argv(&id))
        .await?;
    Ok(())
}

async fn app(ctx: &ApplyContext<'_>, a: &Action) -> Result<(), ApplyError> {
    let Unit::App { role } = &a.unit else {
        return Ok(());
    };
    let h = a.host.as_str();
    let Some(app) = units(ctx.desired, h).and_then(|u| u.apps.iter().find(|x| x.role == *role))
    else {
        return Ok(());
    };
    match a.kind {
        ActionKind::WriteEnvFile => {
            ctx.say(h, &format!("{role}: rewriting {}", app.env_file.path));
            ctx.write_env_file(h, &app.env_file).await
        }
        ActionKind::Route => route(ctx, h, app).await,
        ActionKind::Stop => {
            stop(ctx, h, app, &a.container).await?;
            ctx.audit(
                h,
                Some(role),
                &format!("Stopped {} (a version left running)", a.container),
            )
            .await
        }
        ActionKind::Start => {
            let old = a.replaces.as_deref().filter(|o| *o != app.container_name);
            boot(ctx, h, app, old, true).await
        }
        ActionKind::Create | ActionKind::Replace => {
            boot(ctx, h, app, a.replaces.as_deref(), false).await
        }
        _ => Ok(()),
    }
}

/// Boot the desired container of `app` (one round trip, [`BOOT`]). A
/// same-name container (same version, other spec) is renamed out of the way,
/// as Kamal does; the old one keeps serving until the new one is healthy.
async fn boot(
    ctx: &ApplyContext<'_>,
    h: &str,
    app: &AppUnit,
    replaces: Option<&str>,
    start_existing: bool,
) -> Result<(), ApplyError> {
    let role = app.role.as_str();
    let (renamed, old) = match replaces {
        Some(o) if o == app.container_name && !start_existing => {
            let renamed = format!(
                "{}_replaced_{}",
                app.container_name,
                crate::remote::random_hex(16)
            );
            ctx.say(
                h,
                &format!("{role}: renaming {} to {renamed}", app.container_name),
            );
            (renamed.clone(), renamed)
        }
        Some(o) => (String::new(), o.to_string()),
        None => (String::new(), String::new()),
    };
    let (verb, audit) = if start_existing {
        ("starting", format!("Started app version {}", app.version))
    } else {
        ("booting", format!("Booted app version {}", app.version))
    };
    ctx.say(h, &format!("{role}: {verb} {}", app.container_name));
    let hostname = format!(
        "{}-{}",
        h.chars().take(51).collect::<String>().trim_end_matches('.'),
        crate::remote::random_hex(12)
    );
    let script = format!("{API}{BOOT}");
    let mut argv = strings(&["sh", "-c", &script, "berth-boot"]);
    argv.extend([
        app.env_file.path.clone(),
        app.container_name.clone(),
        renamed.clone(),
        audit_log(ctx.desired),
        ctx.audit_line(Some(role), &audit),
        ctx.audit_line(
            Some(role),
            &format!("Renaming container {} to {renamed}", app.version),
        ),
        ctx.policy.deploy_timeout.as_secs().to_string(),
        ctx.policy.readiness_delay.as_secs().to_string(),
        if start_existing {
            String::new()
        } else {
            crate::shell::join(app.run_argv(Some(&hostname)))
        },
        old.clone(),
        // With the proxy, kamal-proxy drained the old one (Kamal's `stop_args`).
        if app.proxy.is_none() {
            ctx.policy.drain_timeout.to_string()
        } else {
            String::new()
        },
    ]);
    if let Some(r) = &app.proxy {
        // `deploy_argv` is `docker exec kamal-proxy kamal-proxy deploy <svc> --target=…:<port> <flags…>`.
        let full = r.deploy_argv("ID");
        argv.push(r.service.clone());
        argv.push(r.app_port.clone());
        argv.extend(full.into_iter().skip(7));
    }
    let out = ctx
        .conns
        .run_with_stdin(h, &argv, app.env_file.contents.expose().as_bytes())
        .await?;
    match out.status {
        Some(0) => {
            ctx.say(h, &format!("{role}: {} is healthy", app.container_name));
            if !old.is_empty() {
                ctx.say(h, &format!("{role}: stopped {old}"));
            }
            Ok(())
        }
        Some(23) | Some(24) => {
            let reason = match out.status {
                Some(23) => format!("kamal-proxy: {}", out.stderr.trim()),
                _ => out.stderr.trim().to_string(),
            };
            unhealthy(ctx, h, app, reason).await
        }
        _ => Err(ApplyError::Step {
            host: h.to_string(),
            what: format!("booting {}", app.container_name),
            message: out.stderr.trim().to_string(),
        }),
    }
}

/// The new container failed its health check: fetch its last log lines,
/// stop it (kept for inspection) and report.
async fn unhealthy(
    ctx: &ApplyContext<'_>,
    h: &str,
    app: &AppUnit,
    reason: String,
) -> Result<(), ApplyError> {
    let logs = ctx
        .run(
            h,
            strings(&["docker", "logs", "--tail", "10", &app.container_name]),
        )
        .await
        .map(|o| format!("{}{}", o.stdout, o.stderr))
        .unwrap_or_default();
    ctx.run(h, strings(&["docker", "stop", &app.container_name]))
        .await?;
    Err(ApplyError::Unhealthy {
        host: h.to_string(),
        role: app.role.clone(),
        container: app.container_name.clone(),
        reason,
        logs,
    })
}

async fn stop(ctx: &ApplyContext<'_>, h: &str, app: &AppUnit, old: &str) -> Result<(), ApplyError> {
    ctx.say(h, &format!("{}: stopping {old}", app.role));
    let mut argv = strings(&["docker", "stop"]);
    // With the proxy, kamal-proxy drained it already (Kamal's `stop_args`).
    if app.proxy.is_none() {
        argv.push("-t".into());
        argv.push(ctx.policy.drain_timeout.to_string());
    }
    argv.push(old.to_string());
    ctx.run(h, argv).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn details(pid: u32, machine: &str, started: Option<&str>) -> String {
        match started {
            Some(s) => format!(
                "Locked by: berth (pid {pid} on {machine}, started {s}) at 2026-01-01T00:00:00Z\nVersion: v1"
            ),
            None => format!("Locked by: berth (pid {pid} on {machine}) at 2026-01-01T00:00:00Z"),
        }
    }

    #[test]
    fn lock_owners_parse_with_and_without_a_start_identity() {
        assert_eq!(
            berth_lock_owner(&details(7, "box", Some("ab12cd34:999"))),
            Some(LockOwner {
                pid: 7,
                machine: "box".into(),
                started: Some("ab12cd34:999".into())
            })
        );
        assert_eq!(
            berth_lock_owner(&details(7, "box", None)).map(|o| o.started),
            Some(None)
        );
        assert_eq!(berth_lock_owner("Locked by: alice at 2026"), None);
    }

    #[test]
    fn a_lock_is_stale_when_its_berth_is_gone_even_if_the_pid_came_back() {
        let me = std::process::id();
        let here = this_machine();
        let mine = process_start(me).expect("own start");
        let owner = |pid, machine: &str, started: Option<&str>| {
            berth_lock_owner(&details(pid, machine, started)).unwrap()
        };
        // The test binary is named `berth-…`: a live berth with this identity.
        assert!(!stale(&owner(me, &here, Some(&mine))));
        // Same pid, another start: a restarted container's berth got the
        // pid of the one that died holding the lock.
        assert!(stale(&owner(me, &here, Some("00000000:1"))));
        // Another machine's lock is never ours to judge.
        assert!(!stale(&owner(me, "elsewhere", Some("00000000:1"))));
        // A pid with no process (pid_max is below 2^22 + 1 by default).
        assert!(stale(&owner(4_194_305, &here, None)));
    }
}
