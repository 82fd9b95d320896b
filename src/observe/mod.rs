//! `observe`: what actually runs on every host, in one SSH round trip per
//! host: the shell [`probe`], and once it has found the host's Docker socket,
//! the Engine API through the SSH connection ([`crate::remote`]) for the
//! containers, sent together with the probe for the rest. A host that cannot
//! be reached is [`HostState::Unreachable`] — never mistaken for an empty
//! host.

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

/// One host's state, in one round trip. Once the shell probe has found the
/// host's Docker socket, the containers come from the Engine API directly
/// while the shell, in the same trip, reports only the files, the lock and
/// the proxy's routes: nothing is started on the host for the containers.
/// If the Engine API fails, the whole probe runs in the shell, as at first.
async fn observe_host(conns: &Connections, host: &str, req: &probe::ProbeRequest) -> HostState {
    if !req.force_cli && conns.has_engine(host) {
        let lists = req.list_paths();
        // kamal-proxy's state through the Engine API (no process on the
        // host); once that worked, the shell no longer runs `kamal-proxy list`.
        // Kept between cycles while an event stream watches the proxy.
        let kept = req.proxy.then(|| conns.kept_proxy_state(host)).flatten();
        let others: Vec<String> = (req.proxy && kept.is_none())
            .then(probe::proxy_state_path)
            .into_iter()
            .collect();
        let quiet = req.proxy && conns.proxy_state_by_engine(host);
        let engine_args = req.engine_args(quiet);
        let (snapshot, shell) = tokio::join!(
            conns.engine_snapshot(host, &lists, &others),
            conns.call(host, "berth_probe", probe::SCRIPT, &engine_args)
        );
        match (snapshot, shell) {
            (Some(Ok(snapshot)), shell) => {
                return from_probe(host, shell, |out| {
                    let (observation, state) =
                        probe::parse_engine(snapshot, out, req, kept.as_deref())?;
                    conns.set_proxy_state_by_engine(host, state.is_some());
                    if let Some(text) = state.filter(|_| kept.is_none()) {
                        conns.keep_proxy_state(host, &text);
                    }
                    Ok(observation)
                });
            }
            // The host itself cannot be reached: asking again would not help.
            (_, Err(e)) => return HostState::Unreachable(e.to_string()),
            _ => {}
        }
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

/// A host's state from the probe's answer.
fn from_probe(
    host: &str,
    answer: Result<crate::remote::RemoteOutput, crate::remote::RemoteError>,
    parse: impl FnOnce(&str) -> Result<HostObservation, probe::ProbeError>,
) -> HostState {
    match answer {
        Err(e) => HostState::Unreachable(e.to_string()),
        Ok(out) if !out.success() => {
            HostState::Unreachable(format!("{host}: observation failed: {}", out.stderr.trim()))
        }
        Ok(out) => match parse(&out.stdout) {
            Ok(o) => HostState::Reached(o),
            Err(e) => HostState::Unreachable(format!("{host}: {e}")),
        },
    }
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
