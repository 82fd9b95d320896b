//! `plan`: a pure function of (desired, observed) → the minimal actions that
//! converge the fleet, each naming its unit and why. No I/O.
//!
//! Units are compared through [`UnitSpec`], the part of a container that the
//! config determines (image, labels, env, cmd, volumes, log options, restart
//! policy, network). The desired spec is read off the exact `docker run` argv
//! berth would run, the observed one off `docker inspect` minus what the image
//! brings — so a fleet deployed by real Kamal with the same config and version
//! compares equal. Env values are compared by SHA-256; secret values are never
//! held in clear on the observed side.

pub mod output;

use std::collections::{BTreeMap, BTreeSet};

use crate::desired::{AccessoryUnit, AppUnit, Desired, EnvFile, HostUnits};
use crate::docker_flags;
use crate::observe::{EnvValue, HostObservation, HostState, Observed, ObservedContainer};
use crate::proxy_state;
use crate::secret::fingerprint as hash;

/// The config-determined part of a container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitSpec {
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub env: BTreeMap<String, EnvValue>,
    pub cmd: Option<Vec<String>>,
    pub volumes: Vec<String>,
    pub log_opts: BTreeMap<String, String>,
    pub restart: String,
    pub network: String,
    /// Every other `docker run` flag, as [`docker_flags`] normalizes it.
    pub flags: docker_flags::Flags,
    /// Flags of the argv berth cannot read back from `docker inspect`.
    pub uncompared: Vec<String>,
}

impl UnitSpec {
    /// Read a spec off a `docker run` argv and the env file it names.
    pub fn from_run_argv(argv: &[String], env_file: Option<&EnvFile>) -> UnitSpec {
        let mut spec = UnitSpec::default();
        let mut other: Vec<(&str, &str)> = Vec::new();
        let mut i = argv
            .iter()
            .position(|a| a == "run")
            .map_or(argv.len(), |p| p + 1);
        while i < argv.len() {
            let a = &argv[i];
            if !a.starts_with('-') {
                spec.image = a.clone();
                let rest = &argv[i + 1..];
                spec.cmd = (!rest.is_empty()).then(|| rest.to_vec());
                break;
            }
            let (flag, value) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v)),
                _ if docker_flags::is_bare(a) => (a.as_str(), None),
                _ => {
                    i += 1;
                    (a.as_str(), argv.get(i).map(String::as_str))
                }
            };
            let value = value.unwrap_or_default();
            other.push((flag, value));
            let value = value.to_string();
            match flag {
                "--label" | "-l" => {
                    let (k, v) = value.split_once('=').unwrap_or((&value, ""));
                    spec.labels.insert(k.to_string(), v.to_string());
                }
                "--env" | "-e" => {
                    let (k, v) = value.split_once('=').unwrap_or((&value, ""));
                    spec.env.insert(
                        k.to_string(),
                        EnvValue {
                            sha256: hash(v),
                            clear: Some(v.to_string()),
                        },
                    );
                }
                "--volume" | "-v" => spec.volumes.push(value),
                "--log-opt" => {
                    let (k, v) = value.split_once('=').unwrap_or((&value, ""));
                    spec.log_opts.insert(k.to_string(), v.to_string());
                }
                "--restart" => spec.restart = value,
                "--network" | "--net" => spec.network = value,
                _ => {}
            }
            i += 1;
        }
        (spec.flags, spec.uncompared) = docker_flags::desired(other);
        if let Some(f) = env_file {
            // docker reads env files literally: the value is what Kamal wrote.
            for line in f.contents.expose().lines() {
                if let Some((k, v)) = line.split_once('=') {
                    spec.env.insert(
                        k.to_string(),
                        EnvValue {
                            sha256: hash(v),
                            clear: None,
                        },
                    );
                }
            }
        }
        if spec.restart.is_empty() {
            spec.restart = "no".into();
        }
        spec
    }

    /// The observed spec, without the labels and env the image brings unless
    /// `want` sets them too.
    pub fn from_observed(c: &ObservedContainer, want: &UnitSpec) -> UnitSpec {
        UnitSpec {
            image: c.image.clone(),
            labels: c
                .labels
                .iter()
                .filter(|(k, _)| !c.from_image.0.contains(*k) || want.labels.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            env: c
                .env
                .iter()
                .filter(|(k, _)| !c.from_image.1.contains(*k) || want.env.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            // A config that names the image's own command asks for what runs.
            cmd: match (&c.cmd, &want.cmd) {
                (None, Some(w)) if *w == c.image_cmd => Some(w.clone()),
                _ => c.cmd.clone(),
            },
            flags: c
                .flags
                .iter()
                .filter(|(k, _)| !c.flags_from_image.contains(*k) || want.flags.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            uncompared: Vec::new(),
            volumes: c.volumes.clone(),
            log_opts: c.log_opts.clone(),
            restart: if c.restart_policy.is_empty() {
                "no".into()
            } else {
                c.restart_policy.clone()
            },
            network: c.networks.first().cloned().unwrap_or_default(),
        }
    }

    /// What differs, desired (`self`) against observed.
    pub fn diff(&self, observed: &UnitSpec) -> Vec<Change> {
        let mut out = Vec::new();
        if self.image != observed.image {
            out.push(Change::Image {
                from: observed.image.clone(),
                to: self.image.clone(),
            });
        }
        let keys: BTreeSet<&String> = self.labels.keys().chain(observed.labels.keys()).collect();
        for k in keys {
            let (want, have) = (self.labels.get(k), observed.labels.get(k));
            if want != have {
                out.push(Change::Label {
                    key: k.clone(),
                    from: have.cloned(),
                    to: want.cloned(),
                });
            }
        }
        let keys: BTreeSet<&String> = self.env.keys().chain(observed.env.keys()).collect();
        for k in keys {
            let (want, have) = (self.env.get(k), observed.env.get(k));
            if want.map(|v| &v.sha256) != have.map(|v| &v.sha256) {
                out.push(Change::Env {
                    key: k.clone(),
                    // Never an observed value: a container does not say
                    // whether a value came from its env file (a secret) or
                    // `--env`, and the config deciding it is the *new* one —
                    // a key moved from `secret` to `clear` would print the
                    // old secret.
                    from: have.map(|_| SENSITIVE.to_string()),
                    to: want.map(shown),
                });
            }
        }
        let keys: BTreeSet<&String> = self.flags.keys().chain(observed.flags.keys()).collect();
        for k in keys {
            let (want, have) = (self.flags.get(k), observed.flags.get(k));
            if want != have {
                out.push(Change::Flag {
                    flag: k.clone(),
                    from: have.map(|v| v.join(", ")),
                    to: want.map(|v| v.join(", ")),
                });
            }
        }
        if self.cmd != observed.cmd {
            out.push(Change::Field {
                field: "cmd",
                from: format!("{:?}", observed.cmd),
                to: format!("{:?}", self.cmd),
            });
        }
        for (field, want, have) in [
            // dockerd does not keep `--volume` order (nor does it matter).
            ("volumes", sorted(&self.volumes), sorted(&observed.volumes)),
            ("restart", self.restart.clone(), observed.restart.clone()),
            ("network", self.network.clone(), observed.network.clone()),
            (
                "log options",
                fmt_map(&self.log_opts),
                fmt_map(&observed.log_opts),
            ),
        ] {
            if want != have {
                out.push(Change::Field {
                    field,
                    from: have,
                    to: want,
                });
            }
        }
        out
    }
}

fn sorted(v: &[String]) -> String {
    let mut v = v.to_vec();
    v.sort();
    v.join(" ")
}

fn fmt_map(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the plan shows for a value it must not show.
pub const SENSITIVE: &str = "(sensitive)";

/// A desired env value for display: clear values as they are, the rest
/// `(sensitive)`.
fn shown(v: &EnvValue) -> String {
    v.clear.clone().unwrap_or_else(|| SENSITIVE.into())
}

/// One reason an action is needed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// No container of this unit exists.
    Missing,
    /// The container exists but is not running.
    State {
        status: String,
    },
    /// Another version runs.
    Version {
        from: String,
        to: String,
    },
    Image {
        from: String,
        to: String,
    },
    Label {
        key: String,
        from: Option<String>,
        to: Option<String>,
    },
    /// `to` is shown only when clear in the config, secrets as
    /// `(sensitive)`; `from` (the running container's) is always
    /// `(sensitive)`.
    Env {
        key: String,
        from: Option<String>,
        to: Option<String>,
    },
    Field {
        field: &'static str,
        from: String,
        to: String,
    },
    /// A `docker run` flag (from `options`, ports …), normalized as
    /// `docker_flags` reads it; `None`: not set.
    Flag {
        flag: String,
        from: Option<String>,
        to: Option<String>,
    },
    /// The env file on the host differs from what the config renders.
    EnvFile {
        path: String,
        missing: bool,
    },
    /// The proxy routes the service elsewhere (or not at all).
    Route {
        service: String,
        from: Option<String>,
        to: String,
    },
    /// kamal-proxy routes the service with another setting (as its
    /// `deploy` flag names it).
    RouteSetting {
        service: String,
        setting: String,
        from: String,
        to: String,
    },
    /// A container no role or accessory of the config declares, and why;
    /// for a removed accessory, Kamal's env file for it (removed with it).
    Orphan {
        why: String,
        env_file: Option<String>,
    },
}

impl Change {
    /// The reason's name: its `kind` in `berth.plan/v1` JSON, the `reason`
    /// label of `berth_drift_units`, the API's drift `reason`.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::Missing => "missing",
            Change::State { .. } => "state",
            Change::Version { .. } => "version",
            Change::Image { .. } => "image",
            Change::Label { .. } => "label",
            Change::Env { .. } => "env",
            Change::Field { .. } => "field",
            Change::Flag { .. } => "flag",
            Change::EnvFile { .. } => "env_file",
            Change::Route { .. } => "route",
            Change::RouteSetting { .. } => "route_setting",
            Change::Orphan { .. } => "orphan",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// `+` run a unit that does not exist.
    Create,
    /// `>` start a stopped unit whose spec is right.
    Start,
    /// `~` run the desired container and retire the current one (rolling).
    Replace,
    /// `~` an accessory whose spec changed: remove and run again.
    Reboot,
    /// `~` rewrite an env file (nothing else differs).
    WriteEnvFile,
    /// `~` point the proxy route at the desired container.
    Route,
    /// `-` remove an orphan (only with `x-berth.prune`).
    Remove,
    /// `-` stop an old version still running beside the desired one (an
    /// interrupted rollout, a hand-started container); it is kept, stopped.
    Stop,
}

impl ActionKind {
    pub const ALL: [ActionKind; 8] = [
        ActionKind::Create,
        ActionKind::Start,
        ActionKind::Replace,
        ActionKind::Reboot,
        ActionKind::WriteEnvFile,
        ActionKind::Route,
        ActionKind::Remove,
        ActionKind::Stop,
    ];

    /// The name machines read: `berth.plan/v1` JSON (`kind`), the API's
    /// drift `action`, metrics. The same as its serde name.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Create => "create",
            ActionKind::Start => "start",
            ActionKind::Replace => "replace",
            ActionKind::Reboot => "reboot",
            ActionKind::WriteEnvFile => "write_env_file",
            ActionKind::Route => "route",
            ActionKind::Remove => "remove",
            ActionKind::Stop => "stop",
        }
    }

    /// The words the text plan uses.
    pub fn describe(self) -> &'static str {
        match self {
            ActionKind::WriteEnvFile => "rewrite env file",
            k => k.as_str(),
        }
    }

    pub fn symbol(self) -> char {
        match self {
            ActionKind::Create => '+',
            ActionKind::Start => '>',
            ActionKind::Remove | ActionKind::Stop => '-',
            _ => '~',
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Unit {
    App { role: String },
    Accessory { name: String },
    Proxy,
    Orphan,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Action {
    pub host: String,
    pub unit: Unit,
    /// The container the action produces (or removes).
    pub container: String,
    pub kind: ActionKind,
    /// The container retired by a replace, if any.
    pub replaces: Option<String>,
    pub reasons: Vec<Change>,
}

/// The plan for a fleet.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    /// In execution order: accessories, proxies, then roles (primary first)
    /// host by host in boot batches, then orphans.
    pub actions: Vec<Action>,
    /// Hosts that could not be observed: their state is unknown.
    pub unknown_hosts: Vec<(String, String)>,
    /// Things worth knowing that are not actions (orphans kept, locks held).
    pub notes: Vec<String>,
    /// Deploy locks found: (host, details).
    pub locks: Vec<(String, String)>,
}

impl Plan {
    pub fn in_sync(&self) -> bool {
        self.actions.is_empty() && self.unknown_hosts.is_empty()
    }
}

#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// Remove orphaned containers of the service (`x-berth.prune`).
    pub prune: bool,
    /// Look for orphans at all (off when the plan covers only some roles).
    pub orphans: bool,
}

/// The desired spec of an app unit.
pub fn app_spec(app: &AppUnit) -> UnitSpec {
    UnitSpec::from_run_argv(&app.run_argv(None), Some(&app.env_file))
}

pub fn accessory_spec(acc: &AccessoryUnit) -> UnitSpec {
    UnitSpec::from_run_argv(&acc.run_argv, Some(&acc.env_file))
}

/// Hash of an env file's contents, as `sha256sum` on the host prints it.
pub fn env_file_hash(f: &EnvFile) -> String {
    hash(f.contents.expose())
}

/// Plan the fleet.
pub fn plan(desired: &Desired, observed: &Observed, opts: &PlanOptions) -> Plan {
    let mut plan = Plan::default();
    let mut accessories = Vec::new();
    let mut proxies = Vec::new();
    let mut apps: BTreeMap<usize, Vec<(usize, Action)>> = BTreeMap::new();
    let mut orphans = Vec::new();
    for (host_index, units) in desired.hosts.iter().enumerate() {
        let obs = match observed.host(&units.host).map(|h| &h.state) {
            Some(HostState::Reached(o)) => o,
            Some(HostState::Unreachable(why)) => {
                plan.unknown_hosts.push((units.host.clone(), why.clone()));
                continue;
            }
            None => {
                plan.unknown_hosts
                    .push((units.host.clone(), "not observed".into()));
                continue;
            }
        };
        if let Some(lock) = &obs.lock {
            plan.locks.push((units.host.clone(), lock.clone()));
            plan.notes.push(format!(
                "{}: deploy lock held: {}",
                units.host,
                lock.replace('\n', "; ")
            ));
        }
        accessories.extend(plan_accessories(units, obs));
        proxies.extend(plan_proxy(units, obs));
        for app in &units.apps {
            let role_rank = desired
                .roles
                .iter()
                .position(|r| *r == app.role)
                .unwrap_or(usize::MAX);
            let main = plan_app(&units.host, app, obs);
            let retired = main.first().and_then(|a| a.replaces.clone());
            for a in main {
                apps.entry(role_rank).or_default().push((host_index, a));
            }
            for c in leftover_versions(app, obs, retired.as_deref()) {
                apps.entry(role_rank).or_default().push((
                    host_index,
                    Action {
                        host: units.host.clone(),
                        unit: Unit::App {
                            role: app.role.clone(),
                        },
                        container: c.name.clone(),
                        kind: ActionKind::Stop,
                        replaces: None,
                        reasons: vec![Change::Version {
                            from: c.name.clone(),
                            to: app.container_name.clone(),
                        }],
                    },
                ));
            }
        }
        let orphans_here = if opts.orphans {
            orphans_on_host(desired, units, obs)
        } else {
            Vec::new()
        };
        for (name, why, running) in orphans_here {
            if opts.prune {
                orphans.push(Action {
                    host: units.host.clone(),
                    unit: Unit::Orphan,
                    container: name,
                    kind: ActionKind::Remove,
                    replaces: None,
                    reasons: vec![why],
                });
            } else if running {
                let Change::Orphan { why, .. } = why else {
                    continue;
                };
                plan.notes.push(format!(
                    "{}: {name} runs but {why} (kept: x-berth.prune is off)",
                    units.host
                ));
            }
        }
    }
    plan.notes.extend(moved_tags(desired, observed));
    plan.actions.extend(accessories);
    plan.actions.extend(proxies);
    for (_, mut list) in apps {
        list.sort_by_key(|(i, _)| *i);
        plan.actions.extend(list.into_iter().map(|(_, a)| a));
    }
    plan.actions.extend(orphans);
    plan
}

/// What `app` needs on its host: nothing, one action on its container, or,
/// for a container in sync, one for its env file and one for its route, each
/// when it drifted (both can: a berth killed mid-boot leaves the new
/// container running, its env file half-written and the route on the old
/// version — which the leftover stops after these must not take out of
/// service). The env file comes first.
fn plan_app(host: &str, app: &AppUnit, obs: &HostObservation) -> Vec<Action> {
    let want = app_spec(app);
    let mine = |c: &&ObservedContainer| {
        c.labels.get("service")
            == app
                .labels
                .iter()
                .find(|(k, _)| k == "service")
                .map(|(_, v)| v)
            && c.labels.get("role") == Some(&app.role)
            && c.name.starts_with(&format!("{}-", app.container_prefix))
    };
    let same_name = obs.containers.iter().find(|c| c.name == app.container_name);
    let running_other = obs
        .containers
        .iter()
        .filter(mine)
        .find(|c| c.running() && c.name != app.container_name);
    let action = |kind, reasons, replaces: Option<String>| Action {
        host: host.to_string(),
        unit: Unit::App {
            role: app.role.clone(),
        },
        container: app.container_name.clone(),
        kind,
        replaces,
        reasons,
    };
    match same_name {
        Some(c) => {
            let diff = want.diff(&UnitSpec::from_observed(c, &want));
            if !diff.is_empty() {
                return vec![action(ActionKind::Replace, diff, Some(c.name.clone()))];
            }
            if !c.running() {
                let mut reasons = vec![Change::State {
                    status: c.status.clone(),
                }];
                if let Some(other) = running_other {
                    reasons.push(Change::Version {
                        from: other.name.clone(),
                        to: app.container_name.clone(),
                    });
                }
                return vec![action(
                    ActionKind::Start,
                    reasons,
                    running_other.map(|o| o.name.clone()),
                )];
            }
            // In sync as a container; the env file and route may still drift.
            let mut actions = Vec::new();
            let want_file = env_file_hash(&app.env_file);
            match obs.env_files.get(&app.env_file.path) {
                Some(Some(h)) if *h == want_file => {}
                other => actions.push(action(
                    ActionKind::WriteEnvFile,
                    vec![Change::EnvFile {
                        path: app.env_file.path.clone(),
                        missing: !matches!(other, Some(Some(_))),
                    }],
                    None,
                )),
            }
            if let (Some(route), Some(routes)) = (&app.proxy, &obs.proxy_routes) {
                let current = routes.iter().find(|r| r.service == route.service);
                let target_ok = current.and_then(|r| r.target.as_deref()).is_some_and(|t| {
                    let host_part = t.rsplit_once(':').map_or(t, |(h, _)| h);
                    !host_part.is_empty()
                        && (c.id.starts_with(host_part) || host_part == c.name)
                        && t.ends_with(&format!(":{}", route.app_port))
                });
                if !target_ok {
                    actions.push(action(
                        ActionKind::Route,
                        vec![Change::Route {
                            service: route.service.clone(),
                            from: current.and_then(|r| r.target.clone()),
                            to: format!("{}:{}", app.container_name, route.app_port),
                        }],
                        None,
                    ));
                } else {
                    let settings = route_setting_changes(route, obs);
                    if !settings.is_empty() {
                        actions.push(action(ActionKind::Route, settings, None));
                    }
                }
            }
            actions
        }
        None => match running_other {
            Some(other) => {
                let mut reasons = vec![Change::Version {
                    from: other.name.clone(),
                    to: app.container_name.clone(),
                }];
                reasons.extend(
                    want.diff(&UnitSpec::from_observed(other, &want))
                        .into_iter()
                        .filter(|c| !matches!(c, Change::Image { .. }) && !is_version_env(c)),
                );
                vec![action(
                    ActionKind::Replace,
                    reasons,
                    Some(other.name.clone()),
                )]
            }
            None => vec![action(ActionKind::Create, vec![Change::Missing], None)],
        },
    }
}

/// The route settings kamal-proxy holds for `route` that differ from what
/// berth would deploy (nothing when the proxy's state file is unreadable).
fn route_setting_changes(route: &crate::desired::ProxyRoute, obs: &HostObservation) -> Vec<Change> {
    let Some(have) = obs
        .proxy_settings
        .as_ref()
        .and_then(|s| s.get(&route.service))
    else {
        return Vec::new();
    };
    let want = proxy_state::from_deploy_flags(&route.deploy_flags);
    want.iter()
        .filter(|(k, v)| have.get(*k) != Some(*v))
        .map(|(k, v)| Change::RouteSetting {
            service: route.service.clone(),
            setting: proxy_state::flag_name(k).to_string(),
            from: have.get(*k).cloned().unwrap_or_default(),
            to: v.clone(),
        })
        .collect()
}

/// Running containers of `app`'s role other than the desired one and other
/// than the one its own action retires.
fn leftover_versions<'a>(
    app: &AppUnit,
    obs: &'a HostObservation,
    retired: Option<&str>,
) -> Vec<&'a ObservedContainer> {
    let service = app
        .labels
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v);
    obs.containers
        .iter()
        .filter(|c| {
            c.running()
                && c.name != app.container_name
                && Some(c.name.as_str()) != retired
                && c.labels.get("service") == service
                && c.labels.get("role") == Some(&app.role)
                && c.name.starts_with(&format!("{}-", app.container_prefix))
        })
        .collect()
}

/// `KAMAL_VERSION` / `KAMAL_CONTAINER_NAME` differ whenever the version does.
fn is_version_env(c: &Change) -> bool {
    matches!(c, Change::Env { key, .. } if key == "KAMAL_VERSION" || key == "KAMAL_CONTAINER_NAME")
}

fn plan_accessories(units: &HostUnits, obs: &HostObservation) -> Vec<Action> {
    let mut out = Vec::new();
    for acc in &units.accessories {
        let action = |kind, reasons| Action {
            host: units.host.clone(),
            unit: Unit::Accessory {
                name: acc.name.clone(),
            },
            container: acc.container_name.clone(),
            kind,
            replaces: None,
            reasons,
        };
        match obs.containers.iter().find(|c| c.name == acc.container_name) {
            None => out.push(action(ActionKind::Create, vec![Change::Missing])),
            Some(c) => {
                let want = accessory_spec(acc);
                let diff = want.diff(&UnitSpec::from_observed(c, &want));
                if !diff.is_empty() {
                    out.push(action(ActionKind::Reboot, diff));
                } else if !c.running() {
                    out.push(action(
                        ActionKind::Start,
                        vec![Change::State {
                            status: c.status.clone(),
                        }],
                    ));
                } else if obs.env_files.get(&acc.env_file.path)
                    != Some(&Some(env_file_hash(&acc.env_file)))
                {
                    out.push(action(
                        ActionKind::WriteEnvFile,
                        vec![Change::EnvFile {
                            path: acc.env_file.path.clone(),
                            missing: !matches!(
                                obs.env_files.get(&acc.env_file.path),
                                Some(Some(_))
                            ),
                        }],
                    ));
                }
            }
        }
    }
    out
}

/// Hosts of one role whose current container runs the same image reference
/// (`demo:v1`) as different images: the tag moved between pulls, so the
/// fleet is not running one version. Named per role, with each image id and
/// its hosts.
fn moved_tags(desired: &Desired, observed: &Observed) -> Vec<String> {
    // (role, image reference) → image id → hosts.
    let mut seen: BTreeMap<(&str, &str), BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
    for units in &desired.hosts {
        let Some(HostState::Reached(obs)) = observed.host(&units.host).map(|h| &h.state) else {
            continue;
        };
        for app in &units.apps {
            if let Some(c) = obs.containers.iter().find(|c| {
                c.name == app.container_name && c.image == app.image && !c.image_id.is_empty()
            }) {
                seen.entry((&app.role, &app.image))
                    .or_default()
                    .entry(&c.image_id)
                    .or_default()
                    .push(&units.host);
            }
        }
    }
    seen.into_iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|((role, image), ids)| {
            let each: Vec<String> = ids
                .iter()
                .map(|(id, hosts)| {
                    format!("{} on {}", id.get(..19).unwrap_or(id), hosts.join(", "))
                })
                .collect();
            format!(
                "role {role}: {image} is a different image on different hosts (the tag moved between pulls; pin a digest): {}",
                each.join("; ")
            )
        })
        .collect()
}

fn plan_proxy(units: &HostUnits, obs: &HostObservation) -> Option<Action> {
    units.proxy.as_ref()?;
    let action = |kind, reasons| Action {
        host: units.host.clone(),
        unit: Unit::Proxy,
        container: crate::desired::PROXY_CONTAINER.to_string(),
        kind,
        replaces: None,
        reasons,
    };
    match obs
        .containers
        .iter()
        .find(|c| c.name == crate::desired::PROXY_CONTAINER)
    {
        None => Some(action(ActionKind::Create, vec![Change::Missing])),
        Some(c) => {
            // Booted from the host's boot config, the proxy's argv is the
            // host's business (`kamal proxy boot_config`), not the repository's.
            let diff = match units.proxy.as_ref().filter(|p| !p.boot_config) {
                Some(p) => {
                    let want = UnitSpec::from_run_argv(&p.run_argv, None);
                    want.diff(&UnitSpec::from_observed(c, &want))
                }
                None => Vec::new(),
            };
            if !diff.is_empty() {
                Some(action(ActionKind::Reboot, diff))
            } else if !c.running() {
                Some(action(
                    ActionKind::Start,
                    vec![Change::State {
                        status: c.status.clone(),
                    }],
                ))
            } else {
                None
            }
        }
    }
}

/// What on the host no unit explains, and why: a container of a role not
/// (or no longer) on this host, an accessory declared for other hosts, and
/// an accessory removed from the config (Kamal's env file for it remains).
/// The name to remove, the reason, and whether it runs.
fn orphans_on_host(
    desired: &Desired,
    units: &HostUnits,
    obs: &HostObservation,
) -> Vec<(String, Change, bool)> {
    let roles: BTreeSet<&str> = units.apps.iter().map(|a| a.role.as_str()).collect();
    let declared_roles: BTreeSet<&str> = desired.roles.iter().map(String::as_str).collect();
    let accessory_names: BTreeSet<&str> = units
        .accessories
        .iter()
        .map(|a| a.container_name.as_str())
        .collect();
    let all_accessories: BTreeSet<&str> = desired
        .hosts
        .iter()
        .flat_map(|h| h.accessories.iter().map(|a| a.container_name.as_str()))
        .collect();
    let orphan = |why: String| Change::Orphan {
        why,
        env_file: None,
    };
    let mut out = Vec::new();
    for c in &obs.containers {
        if c.name == crate::desired::PROXY_CONTAINER || accessory_names.contains(c.name.as_str()) {
            continue;
        }
        if all_accessories.contains(c.name.as_str()) {
            out.push((
                c.name.clone(),
                orphan(format!(
                    "accessory {} is not declared for this host",
                    c.name
                )),
                c.running(),
            ));
            continue;
        }
        if c.labels.get("service") != Some(&desired.service) {
            continue;
        }
        match c.labels.get("role") {
            // Old versions of a role on this host are retained stopped,
            // as Kamal does; a running one is a leftover (`Stop`).
            Some(role) if roles.contains(role.as_str()) => {}
            Some(role) if c.running() => {
                let why = if declared_roles.contains(role.as_str()) {
                    format!("role {role} does not run on this host")
                } else {
                    format!("role {role} is no longer in the config")
                };
                out.push((c.name.clone(), orphan(why), true));
            }
            _ => {}
        }
    }
    for (name, status) in &obs.stray_accessories {
        let Some(status) = status else { continue };
        out.push((
            crate::kamal::accessory_container(&desired.service, name),
            Change::Orphan {
                why: format!("accessory {name} is no longer in the config"),
                env_file: Some(crate::kamal::accessory_env_file(
                    &desired.service,
                    desired.destination.as_deref(),
                    name,
                )),
            },
            status == "running" || status == "restarting",
        ));
    }
    out
}

/// Apply a plan's effects to an observed state, as a perfect executor would:
/// the model that property tests (and the dry-run's promise) rest on.
pub fn simulate(desired: &Desired, observed: &Observed, plan: &Plan) -> Observed {
    let mut next = observed.clone();
    for action in &plan.actions {
        let Some(HostState::Reached(obs)) = next
            .hosts
            .iter_mut()
            .find(|h| h.host == action.host)
            .map(|h| &mut h.state)
        else {
            continue;
        };
        let Some(units) = desired.hosts.iter().find(|h| h.host == action.host) else {
            continue;
        };
        match &action.unit {
            Unit::App { role } => {
                let Some(app) = units.apps.iter().find(|a| a.role == *role) else {
                    continue;
                };
                if let Some(old) = &action.replaces {
                    for c in obs.containers.iter_mut().filter(|c| c.name == *old) {
                        c.status = "exited".into();
                    }
                    if *old == app.container_name {
                        obs.containers.retain(|c| c.name != *old);
                    }
                }
                if action.kind == ActionKind::Stop {
                    for c in obs
                        .containers
                        .iter_mut()
                        .filter(|c| c.name == action.container)
                    {
                        c.status = "exited".into();
                    }
                    continue;
                }
                if matches!(action.kind, ActionKind::Start) {
                    for c in obs
                        .containers
                        .iter_mut()
                        .filter(|c| c.name == app.container_name)
                    {
                        c.status = "running".into();
                    }
                } else if matches!(action.kind, ActionKind::Create | ActionKind::Replace) {
                    obs.containers.retain(|c| c.name != app.container_name);
                    obs.containers
                        .push(container_from_spec(&app.container_name, &app_spec(app)));
                }
                // A boot writes the env file and deploys the route; the two
                // in-sync repairs do only what they say.
                if action.kind != ActionKind::Route {
                    obs.env_files.insert(
                        app.env_file.path.clone(),
                        Some(env_file_hash(&app.env_file)),
                    );
                }
                if action.kind == ActionKind::WriteEnvFile {
                    continue;
                }
                if let (Some(route), Some(routes)) = (&app.proxy, obs.proxy_routes.as_mut()) {
                    let id = format!("id-{}", app.container_name);
                    routes.retain(|r| r.service != route.service);
                    routes.push(crate::observe::ProxyRouteState {
                        service: route.service.clone(),
                        target: Some(format!("{id}:{}", route.app_port)),
                        state: "running".into(),
                    });
                    if let Some(settings) = obs.proxy_settings.as_mut() {
                        settings.insert(
                            route.service.clone(),
                            proxy_state::from_deploy_flags(&route.deploy_flags),
                        );
                    }
                }
            }
            Unit::Accessory { name } => {
                let Some(acc) = units.accessories.iter().find(|a| a.name == *name) else {
                    continue;
                };
                if matches!(action.kind, ActionKind::Start) {
                    for c in obs
                        .containers
                        .iter_mut()
                        .filter(|c| c.name == acc.container_name)
                    {
                        c.status = "running".into();
                    }
                    obs.env_files.insert(
                        acc.env_file.path.clone(),
                        Some(env_file_hash(&acc.env_file)),
                    );
                } else if matches!(action.kind, ActionKind::WriteEnvFile) {
                    obs.env_files.insert(
                        acc.env_file.path.clone(),
                        Some(env_file_hash(&acc.env_file)),
                    );
                } else {
                    obs.containers.retain(|c| c.name != acc.container_name);
                    put_accessory(obs, acc);
                }
            }
            Unit::Proxy => {
                obs.containers
                    .retain(|c| c.name != crate::desired::PROXY_CONTAINER);
                let spec = match units.proxy.as_ref().filter(|p| !p.boot_config) {
                    Some(p) => UnitSpec::from_run_argv(&p.run_argv, None),
                    None => UnitSpec::default(),
                };
                let c = container_from_spec(crate::desired::PROXY_CONTAINER, &spec);
                obs.containers.push(c);
                obs.proxy_routes.get_or_insert_with(Vec::new);
            }
            Unit::Orphan => {
                obs.containers.retain(|c| c.name != action.container);
                if let Some(Change::Orphan {
                    env_file: Some(_), ..
                }) = action.reasons.first()
                {
                    obs.stray_accessories.retain(|(n, _)| {
                        crate::kamal::accessory_container(&desired.service, n) != action.container
                    });
                }
            }
        }
    }
    // A newly booted proxy learns the routes of the apps it fronts.
    for h in &mut next.hosts {
        let (HostState::Reached(obs), Some(units)) = (
            &mut h.state,
            desired.hosts.iter().find(|u| u.host == h.host),
        ) else {
            continue;
        };
        if let Some(routes) = obs.proxy_routes.as_mut() {
            for app in &units.apps {
                if let Some(route) = &app.proxy
                    && !routes.iter().any(|r| r.service == route.service)
                    && let Some(c) = obs.containers.iter().find(|c| c.name == app.container_name)
                {
                    routes.push(crate::observe::ProxyRouteState {
                        service: route.service.clone(),
                        target: Some(format!("{}:{}", c.id, route.app_port)),
                        state: "running".into(),
                    });
                }
            }
        }
    }
    next
}

/// An accessory running exactly as desired, with its env file in place.
fn put_accessory(obs: &mut HostObservation, acc: &AccessoryUnit) {
    obs.containers.push(container_from_spec(
        &acc.container_name,
        &accessory_spec(acc),
    ));
    obs.env_files.insert(
        acc.env_file.path.clone(),
        Some(env_file_hash(&acc.env_file)),
    );
}

fn container_from_spec(name: &str, spec: &UnitSpec) -> ObservedContainer {
    ObservedContainer {
        id: format!("id-{name}"),
        name: name.to_string(),
        image: spec.image.clone(),
        image_id: String::new(),
        labels: spec.labels.clone(),
        env: spec.env.clone(),
        from_image: Default::default(),
        cmd: spec.cmd.clone(),
        image_cmd: Vec::new(),
        flags: spec.flags.clone(),
        flags_from_image: Default::default(),
        volumes: spec.volumes.clone(),
        log_opts: spec.log_opts.clone(),
        restart_policy: spec.restart.clone(),
        networks: if spec.network.is_empty() {
            vec![]
        } else {
            vec![spec.network.clone()]
        },
        status: "running".into(),
        health: None,
        restart_count: 0,
        exit_code: 0,
    }
}

/// The observed state of a fleet that runs exactly `desired` (tests, and the
/// property that such a fleet plans to nothing).
pub fn observed_from_desired(desired: &Desired) -> Observed {
    let mut out = Observed::default();
    for units in &desired.hosts {
        let mut obs = HostObservation::default();
        for app in &units.apps {
            obs.containers
                .push(container_from_spec(&app.container_name, &app_spec(app)));
            obs.env_files.insert(
                app.env_file.path.clone(),
                Some(env_file_hash(&app.env_file)),
            );
        }
        for acc in &units.accessories {
            put_accessory(&mut obs, acc);
        }
        if units.proxy.is_some() {
            let mut c = container_from_spec(crate::desired::PROXY_CONTAINER, &UnitSpec::default());
            c.labels.clear();
            obs.containers.push(c);
            let routes = units
                .apps
                .iter()
                .filter_map(|a| {
                    a.proxy.as_ref().map(|r| crate::observe::ProxyRouteState {
                        service: r.service.clone(),
                        target: Some(format!("id-{}:{}", a.container_name, r.app_port)),
                        state: "running".into(),
                    })
                })
                .collect();
            obs.proxy_routes = Some(routes);
        }
        out.hosts.push(crate::observe::ObservedHost {
            host: units.host.clone(),
            state: HostState::Reached(obs),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One name per kind, whichever output shows it (JSON is serde's).
    #[test]
    fn names_are_one_contract() {
        for k in ActionKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        let changes = [
            Change::Missing,
            Change::State {
                status: "exited".into(),
            },
            Change::Orphan {
                why: "role jobs is no longer in the config".into(),
                env_file: None,
            },
            Change::EnvFile {
                path: "p".into(),
                missing: true,
            },
        ];
        for c in changes {
            assert_eq!(serde_json::to_value(&c).unwrap()["kind"], c.kind());
        }
    }

    fn argv(words: &str) -> Vec<String> {
        words.split(' ').map(str::to_string).collect()
    }

    /// A `cmd:` naming the image's own command: inspect shows the image's
    /// command either way, so nothing differs (it used to be replaced on
    /// every cycle: desired "some", observed "none").
    #[test]
    fn a_cmd_equal_to_the_images_cmd_is_in_sync() {
        let want = UnitSpec::from_run_argv(
            &argv("docker run --name a --network kamal img:1 /bin/sh -c serve"),
            None,
        );
        let mut c = container_from_spec("a", &want);
        c.image_cmd = argv("/bin/sh -c serve");
        c.cmd = None;
        assert_eq!(want.diff(&UnitSpec::from_observed(&c, &want)), vec![]);
        // Another command still differs.
        c.image_cmd = argv("/bin/sh -c other");
        assert_eq!(want.diff(&UnitSpec::from_observed(&c, &want)).len(), 1);
    }

    /// Options read off the argv compare with what inspect reports, and a
    /// removed option is a change.
    #[test]
    fn a_removed_option_is_a_change() {
        let with = UnitSpec::from_run_argv(
            &argv("docker run --name a --memory 256m --cap-add net_admin img:1"),
            None,
        );
        let without = UnitSpec::from_run_argv(&argv("docker run --name a img:1"), None);
        let c = container_from_spec("a", &with);
        let diff = without.diff(&UnitSpec::from_observed(&c, &without));
        let flags: Vec<&str> = diff
            .iter()
            .filter_map(|d| match d {
                Change::Flag { flag, to: None, .. } => Some(flag.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(flags, vec!["cap-add", "memory", "memory-swap"]);
        assert!(with.uncompared.is_empty());
    }
}
