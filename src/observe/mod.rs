//! `observe`: what actually runs on every host, in one SSH round trip per
//! host: the shell [`probe`] for the files and the lock, and the Engine API
//! through the SSH connection ([`crate::remote`]) for the containers and
//! kamal-proxy's state, asked as soon as the probe's first line names the
//! host's Docker socket (the first time) or at once (from then on). Where
//! the Engine API cannot be used, the whole probe, containers and routes
//! included. A first observation and a warm one see alike (the fleet tests
//! and the observe bench compare them). A host that cannot be reached is
//! [`HostState::Unreachable`] — never mistaken for an empty host.

pub mod probe;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::desired::Desired;
use crate::remote::Connections;

/// An env value as observed: always hashed; in clear only for keys the config
/// declares clear.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvValue {
    pub sha256: String,
    pub clear: Option<String>,
}

impl std::fmt::Debug for EnvValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.clear {
            Some(v) => write!(f, "{v:?}"),
            None => f.write_str("(sensitive)"),
        }
    }
}

/// One container as `docker inspect` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedContainer {
    pub id: String,
    pub name: String,
    /// The image reference it was run with (`Config.Image`).
    pub image: String,
    pub image_id: String,
    pub labels: BTreeMap<String, String>,
    pub env: BTreeMap<String, EnvValue>,
    /// Label keys and env keys whose value is the image's own.
    pub from_image: (BTreeSet<String>, BTreeSet<String>),
    /// `None`: the image's default command.
    pub cmd: Option<Vec<String>>,
    /// The image's own command (a config may name it explicitly).
    pub image_cmd: Vec<String>,
    /// The `docker run` flags [`crate::docker_flags`] reads back, and those
    /// whose value is the image's own.
    pub flags: crate::docker_flags::Flags,
    pub flags_from_image: BTreeSet<String>,
    pub volumes: Vec<String>,
    pub log_opts: BTreeMap<String, String>,
    pub restart_policy: String,
    pub networks: Vec<String>,
    /// `running`, `exited`, `created`, `restarting`, `paused`, `dead`.
    pub status: String,
    pub health: Option<String>,
    /// Restarts by docker's restart policy (`RestartCount`).
    pub restart_count: u64,
    /// The last exit's code (`State.ExitCode`; 0 before any exit).
    pub exit_code: i64,
}

impl ObservedContainer {
    pub fn running(&self) -> bool {
        self.status == "running" || self.status == "restarting"
    }
}

/// A kamal-proxy route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyRouteState {
    pub service: String,
    /// `<container id or name>:<port>`.
    pub target: Option<String>,
    pub state: String,
}

/// Everything observed on one reachable host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostObservation {
    pub containers: Vec<ObservedContainer>,
    /// `None` when no kamal-proxy container is running.
    pub proxy_routes: Option<Vec<ProxyRouteState>>,
    /// Each service's route settings from kamal-proxy's state file (`None`:
    /// no proxy, or a state file berth cannot read: nothing is compared).
    pub proxy_settings: Option<BTreeMap<String, crate::proxy_state::Settings>>,
    /// Env file path → SHA-256 of its contents (`None`: missing).
    pub env_files: BTreeMap<String, Option<String>>,
    /// Kamal's deploy lock, if held (its decoded details).
    pub lock: Option<String>,
    /// Accessories of this app Kamal booted here that the config no longer
    /// names: (name, its container's status, `None` if it is gone).
    pub stray_accessories: Vec<(String, Option<String>)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostState {
    Reached(HostObservation),
    Unreachable(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedHost {
    pub host: String,
    pub state: HostState,
}

/// The observed fleet, in the desired state's host order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub hosts: Vec<ObservedHost>,
}

impl Observed {
    pub fn host(&self, host: &str) -> Option<&ObservedHost> {
        self.hosts.iter().find(|h| h.host == host)
    }

    /// The container named `name` on `host`, if the host was reached and
    /// has one.
    pub fn container(&self, host: &str, name: &str) -> Option<&ObservedContainer> {
        match &self.host(host)?.state {
            HostState::Reached(o) => o.containers.iter().find(|c| c.name == name),
            HostState::Unreachable(_) => None,
        }
    }
}

/// The probe for one host of `desired`.
pub fn probe_request(desired: &Desired, host: &str) -> probe::ProbeRequest {
    let mut req = probe::ProbeRequest {
        service_labels: vec![desired.service.clone()],
        ..Default::default()
    };
    let mut clear = BTreeSet::new();
    if let Some(units) = desired.hosts.iter().find(|h| h.host == host) {
        req.proxy = units.proxy.is_some();
        for app in &units.apps {
            req.env_files.push(app.env_file.path.clone());
            clear.extend(app.clear_env.iter().map(|(k, _)| k.clone()));
        }
        for acc in &units.accessories {
            req.env_files.push(acc.env_file.path.clone());
            clear.extend(acc.clear_env.iter().map(|(k, _)| k.clone()));
        }
    }
    for acc in desired.hosts.iter().flat_map(|h| &h.accessories) {
        if let Some((_, svc)) = acc.labels.iter().find(|(k, _)| k == "service")
            && !req.service_labels.contains(svc)
        {
            req.service_labels.push(svc.clone());
        }
    }
    req.lock_dirs.push(lock_dir(desired));
    req.accessory_dir = Some(crate::kamal::accessory_env_dir(
        &desired.service,
        desired.destination.as_deref(),
    ));
    req.service = desired.service.clone();
    req.known_accessories = desired
        .hosts
        .iter()
        .flat_map(|h| h.accessories.iter().map(|a| a.name.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    req.clear_keys = clear;
    req
}

/// Kamal's lock directory, relative to the SSH user's home.
pub fn lock_dir(desired: &Desired) -> String {
    crate::kamal::lock_dir(&desired.service, desired.destination.as_deref())
}

/// One host's state, in one round trip: the containers from the Engine API
/// directly while the shell, in the same trip, reports only the files, the
/// lock and the proxy's routes: nothing is started on the host for the
/// containers. The first time, the probe's first line names the host's
/// Docker socket and the Engine API is asked at once. If the Engine API
/// fails (or the host has no unix socket), the whole probe runs in the
/// shell instead.
async fn observe_host(conns: &Connections, host: &str, req: &probe::ProbeRequest) -> HostState {
    if !req.force_cli
        && (conns.has_engine(host) || conns.may_find_engine(host))
        && let Some(state) = by_engine(conns, host, req).await
    {
        return state;
    }
    let shell = conns
        .call(host, "berth_probe", probe::SCRIPT, &req.args())
        .await;
    from_probe(host, shell, |out| {
        let observation = probe::parse(out, req)?;
        if let Some(socket) = probe::socket(out) {
            conns.engine_found(host, socket);
        }
        Ok(observation)
    })
}

/// The Engine API's snapshot and the probe beside it (`E`); `None`: ask the
/// whole probe instead.
async fn by_engine(
    conns: &Connections,
    host: &str,
    req: &probe::ProbeRequest,
) -> Option<HostState> {
    let lists = req.list_paths();
    // kamal-proxy's state through the Engine API (no process on the host);
    // kept between cycles while an event stream watches the proxy.
    let kept = req.proxy.then(|| conns.kept_proxy_state(host)).flatten();
    let others: Vec<String> = (req.proxy && kept.is_none())
        .then(probe::proxy_state_path)
        .into_iter()
        .collect();
    let known = conns.has_engine(host);
    // The shell lists the proxy's routes only while the state file has not
    // been read through the Engine API; at first contact that is tried at
    // once, and the whole probe lists them if it fails.
    let quiet = req.proxy && (!known || conns.proxy_state_by_engine(host));
    let engine_args = req.engine_args(quiet);
    let (tx, rx) = tokio::sync::oneshot::channel::<String>();
    let socket_line = std::sync::Mutex::new((!known).then_some(tx));
    // Only the first line: later ones carry what the host's files say.
    let mut on_line = |line: &str| {
        if let Some(tx) = socket_line.lock().unwrap_or_else(|p| p.into_inner()).take()
            && let Some(socket) = probe::socket(line)
        {
            let _ = tx.send(socket.to_string());
        }
    };
    let shell = async {
        let out = conns
            .call_lines(
                host,
                "berth_probe",
                probe::SCRIPT,
                &engine_args,
                &mut on_line,
            )
            .await;
        // No socket named: the snapshot waits no longer.
        socket_line.lock().unwrap_or_else(|p| p.into_inner()).take();
        out
    };
    let snapshot = async {
        if !known {
            let socket = rx.await.ok()?;
            conns.engine_found(host, &socket);
        }
        conns.engine_snapshot(host, &lists, &others).await
    };
    let (snapshot, shell) = tokio::join!(snapshot, shell);
    match (snapshot, shell) {
        // The host itself cannot be reached: asking again would not help.
        (_, Err(e)) => Some(HostState::Unreachable(e.to_string())),
        (Some(Ok(snapshot)), Ok(out)) if out.success() => {
            match probe::parse_engine(snapshot, &out.stdout, req, kept.as_deref()) {
                Ok((observation, state)) => {
                    conns.set_proxy_state_by_engine(host, state.is_some());
                    if let Some(text) = state.filter(|_| kept.is_none()) {
                        conns.keep_proxy_state(host, &text);
                    }
                    Some(HostState::Reached(observation))
                }
                Err(probe::ProbeError::ProxyStateUnread) => {
                    conns.set_proxy_state_by_engine(host, false);
                    None
                }
                Err(e) => Some(HostState::Unreachable(format!("{host}: {e}"))),
            }
        }
        (Some(Ok(_)), Ok(out)) => Some(failed(host, &out)),
        // No usable socket named: the shell alone, for a while.
        (None, Ok(out)) if !known && out.success() => {
            conns.engine_absent(host);
            None
        }
        _ => None,
    }
}

/// A host's state from the probe's answer.
fn from_probe(
    host: &str,
    answer: Result<crate::remote::RemoteOutput, crate::remote::RemoteError>,
    parse: impl FnOnce(&str) -> Result<HostObservation, probe::ProbeError>,
) -> HostState {
    match answer {
        Err(e) => HostState::Unreachable(e.to_string()),
        Ok(out) if !out.success() => failed(host, &out),
        Ok(out) => match parse(&out.stdout) {
            Ok(o) => HostState::Reached(o),
            Err(e) => HostState::Unreachable(format!("{host}: {e}")),
        },
    }
}

/// A probe that ran and failed: the host is unknown.
fn failed(host: &str, out: &crate::remote::RemoteOutput) -> HostState {
    HostState::Unreachable(format!("{host}: observation failed: {}", out.stderr.trim()))
}

/// Observe every host of `desired` (at most `parallel` at once).
pub async fn observe(desired: &Desired, conns: &Arc<Connections>, parallel: usize) -> Observed {
    let sem = Arc::new(Semaphore::new(parallel.max(1)));
    let mut tasks = Vec::new();
    for h in &desired.hosts {
        let host = h.host.clone();
        let req = probe_request(desired, &host);
        let conns = conns.clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await;
            let state = observe_host(&conns, &host, &req).await;
            ObservedHost { host, state }
        }));
    }
    let mut hosts = Vec::new();
    for t in tasks {
        match t.await {
            Ok(h) => hosts.push(h),
            Err(e) => hosts.push(ObservedHost {
                host: String::new(),
                state: HostState::Unreachable(format!("observer task failed: {e}")),
            }),
        }
    }
    Observed { hosts }
}
