//! `controller`: the long-running loop of `berth run` for one app. Each
//! cycle: fetch the source → load config and secrets → render → observe →
//! plan → apply per policy → publish [`AppStatus`] (read by `server`).
//!
//! Triggers: the poll interval (with ±10 % jitter), a webhook or a manual
//! sync ([`Controller::trigger`]), and docker events streamed from every host
//! over the warm SSH connections (drift by hand is seen within a second).
//! One reconcile at a time (single flight).
//! Errors back off exponentially (capped); a rollout that failed on a
//! revision is not retried in a hot loop: it waits for a new revision or a
//! manual sync. A unit healed again and again (it exits at once) is left
//! alone at its flap limit ([`flap`]); the app's other units keep healing.
//! What happened is sent as [`events::Notice`]s.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;
use tracing::Instrument;

pub mod apps;
pub mod events;
mod flap;
mod requeue;

/// Event wakes are debounced: the cycle runs once the hosts have been quiet
/// this long (a rollout by hand emits a burst of events)…
const EVENT_QUIET: Duration = Duration::from_millis(250);
/// …or this long after the first event, if they never go quiet.
const EVENT_MAX_DELAY: Duration = Duration::from_secs(2);

use crate::apply::{self, ApplyContext, UnknownHosts};
use crate::checkout::Checkout;
use crate::config;
use crate::config::secrets::Commands;
use crate::desired::load::{AppLoad, AppLoadError, load_app};
use crate::history::{self, History};
use crate::observe::{self, HostState};
use crate::plan::{self, PlanOptions};
use crate::policy::{Decision, Outcome, Settings, Situation, decide};
use crate::remote::{Connections, SshOptions};
use crate::source::Source;

pub use crate::policy::Mode;
pub use requeue::{CycleError, Requeue, Trigger};

#[derive(Clone, Debug)]
pub struct AppSpec {
    pub name: String,
    pub source: Source,
    /// The Kamal config inside the source.
    pub config_file: PathBuf,
    pub destination: Option<String>,
    /// The policy it starts with (`suspended`: observe and report only).
    pub settings: Settings,
    pub interval: Duration,
    pub ssh: SshOptionsTemplate,
    /// Keys for SOPS-encrypted secrets in the repository.
    pub age_keys: Option<Arc<crate::config::sops::AgeKeys>>,
}

/// berth's own SSH options (the config's `ssh:` is merged in per cycle).
#[derive(Clone, Debug, Default)]
pub struct SshOptionsTemplate {
    pub known_hosts: Option<PathBuf>,
    pub accept_new_host_keys: bool,
}

/// One drifted unit, for metrics and the API.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Drift {
    pub host: String,
    pub role: String,
    pub container: String,
    pub action: String,
    pub reason: String,
}

/// Upper bounds of the reconcile-duration histogram's buckets, in seconds.
pub const BUCKETS: [f64; 11] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// A Prometheus histogram: cumulative for the life of the process, in
/// constant memory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// Observations at or below each of [`BUCKETS`].
    pub buckets: [u64; BUCKETS.len()],
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, value: f64) {
        for (n, le) in self.buckets.iter_mut().zip(BUCKETS) {
            if value <= le {
                *n += 1;
            }
        }
        self.count += 1;
        self.sum += value;
    }
}

/// One desired unit on one host, as the status page's grid shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct UnitState {
    pub host: String,
    /// The role, `accessory:<name>`, `proxy`, or `orphan` (runs, not declared).
    pub unit: String,
    pub container: String,
    /// `in_sync`, `drifted`, `flapping` (drifted, at its flap limit: left
    /// alone), or `unknown` (host unreachable).
    pub state: &'static str,
    /// What the plan would do and why, when drifted.
    pub action: Option<String>,
    pub reason: Option<String>,
    /// Its container's state, health check and restarts by docker's
    /// restart policy, as last observed (none: no such container).
    pub status: Option<String>,
    pub health: Option<String>,
    pub restart_count: u64,
}

/// A unit berth healed up to its flap limit and now leaves alone.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FlappingUnit {
    pub host: String,
    /// As in [`UnitState::unit`].
    pub unit: String,
    pub container: String,
    /// Heal attempts within the window.
    pub heals: usize,
    pub reason: String,
}

/// What `server` shows about an app.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct AppStatus {
    pub app: String,
    pub destination: Option<String>,
    pub revision: Option<String>,
    pub version: Option<String>,
    /// Observed at least once (readiness).
    pub observed: bool,
    pub in_sync: bool,
    pub suspended: bool,
    pub mode: Option<Mode>,
    pub self_heal: bool,
    pub drift: Vec<Drift>,
    /// Units at their flap limit, left alone until the window passes, a
    /// new revision or a manual sync.
    pub flapping: Vec<FlappingUnit>,
    /// Every desired unit (and orphan) per host, with its state.
    pub units: Vec<UnitState>,
    /// host → reachable.
    pub hosts: BTreeMap<String, bool>,
    /// The last plan, as text (secrets never in it).
    pub last_plan: String,
    pub last_error: Option<String>,
    /// With `--verify`: whether the last fetched revision verified
    /// (`None`: no verification asked).
    pub source_verified: Option<bool>,
    /// The signature of the revision in use (the last verified one).
    pub signature: Option<crate::source::verify::Verified>,
    /// Why the newest revision was refused, while it is (`commit …: not signed`).
    pub source_refusal: Option<String>,
    /// A rollback's revision: applied instead of the followed ref until a
    /// resume.
    pub pinned: Option<String>,
    /// The revision the fleet last converged to.
    pub settled: Option<String>,
    /// A revision whose rollout failed, parked until a new one or a sync.
    pub failed: Option<String>,
    pub last_apply_unix: Option<u64>,
    /// When a cycle last completed without error (alerts on staleness).
    pub last_success_unix: Option<u64>,
    /// result → count (`in_sync`, `applied`, `drifted`, `error`).
    pub reconciles: BTreeMap<String, u64>,
    /// Reconcile durations, for the histogram.
    #[serde(skip)]
    pub durations: Histogram,
}

/// What a loop remembers about revisions between cycles.
#[derive(Default)]
struct Revisions {
    /// The revision the fleet last converged to (in sync, or applied).
    settled: Option<String>,
    /// A revision whose apply failed: not retried until a new one or a sync.
    failed: Option<String>,
    /// The last cycle left differences (a drift episode is reported once).
    drifting: bool,
    /// The last revision (or signed object) reported refused, once each.
    refused: Option<String>,
    /// Recent heals per unit, for the flap limit.
    heals: flap::Heals,
    /// What the cycle applied (for the history).
    applied: Vec<history::ActionRow>,
}

pub struct Controller {
    pub spec: AppSpec,
    pub status: Mutex<AppStatus>,
    /// Mode, self-heal and prune in force (a new `berth.yml` may change
    /// them); suspension lives in `status`, where the API changes it too.
    settings: Mutex<Settings>,
    /// Hosts and `service` labels to watch docker events for (set by a cycle).
    watch: Mutex<(Vec<String>, Vec<String>)>,
    wake: Notify,
    /// Docker events from the hosts (debounced before a cycle runs).
    events: Notify,
    /// Why `wake` was notified (the latest reason wins).
    woken_by: Mutex<Option<Trigger>>,
    /// A manual sync: retry even a revision that failed.
    forced: std::sync::atomic::AtomicBool,
    /// Where what happened is told (notifications, history).
    notices: events::Events,
    /// berth's memory across restarts (`--state-dir`), if kept.
    history: Option<Arc<History>>,
}

impl Controller {
    pub fn new(
        spec: AppSpec,
        events: events::Events,
        history: Option<Arc<History>>,
    ) -> Arc<Controller> {
        let status = AppStatus {
            app: spec.name.clone(),
            destination: spec.destination.clone(),
            suspended: spec.settings.suspended,
            mode: Some(spec.settings.mode),
            self_heal: spec.settings.self_heal,
            ..AppStatus::default()
        };
        Arc::new(Controller {
            settings: Mutex::new(spec.settings),
            spec,
            status: Mutex::new(status),
            watch: Mutex::new((Vec::new(), Vec::new())),
            wake: Notify::new(),
            events: Notify::new(),
            woken_by: Mutex::new(None),
            forced: std::sync::atomic::AtomicBool::new(false),
            notices: events,
            history,
        })
    }

    fn instance(&self) -> history::Instance {
        history::Instance::new(&self.spec.name, self.spec.destination.as_deref())
    }

    /// The suspension, persisted before it is answered (it survives a
    /// restart of berth).
    pub fn suspend(&self, suspended: bool) -> Result<(), history::HistoryError> {
        self.set_suspended(suspended);
        if !suspended {
            self.lock().pinned = None;
        }
        self.save_state()
    }

    /// Roll back to `revision` (a full commit id the history says was
    /// deployed): it is applied instead of the followed ref, which is not
    /// followed again until a resume. Persisted before it is answered.
    pub fn roll_back(&self, revision: &str) -> Result<(), history::HistoryError> {
        {
            let mut st = self.lock();
            st.pinned = Some(revision.to_string());
            // The rollback is applied now, suspended or not.
            st.suspended = false;
        }
        self.save_state()?;
        self.trigger_by(Trigger::Sync);
        Ok(())
    }

    /// Store what a restart must not forget (waits for the commit).
    fn save_state(&self) -> Result<(), history::HistoryError> {
        let Some(h) = &self.history else {
            return Ok(());
        };
        h.save_state(&self.instance(), &self.state_to_keep())
    }

    fn state_to_keep(&self) -> history::InstanceState {
        let st = self.lock();
        history::InstanceState {
            suspended: st.suspended,
            settled: st.settled.clone(),
            failed: st.failed.clone(),
            pinned: st.pinned.clone(),
        }
    }

    /// Tell subscribers about `event` of `revision`.
    fn emit(&self, event: events::Event, revision: Option<&str>) {
        // A refused revision's version was never read: the one recorded is
        // the last loaded revision's, which is not the refused one's.
        let version = match event {
            events::Event::RevisionRefused { .. } => None,
            _ => self.lock().version.clone(),
        };
        self.notices.send(events::Notice {
            app: self.spec.name.clone(),
            destination: self.spec.destination.clone(),
            revision: revision.map(str::to_string),
            version,
            at_unix: unix_now(),
            event,
        });
    }

    /// Run a cycle now (webhook, manual sync). `force` retries a failed revision.
    pub fn trigger(&self, force: bool) {
        self.trigger_by(if force {
            Trigger::Sync
        } else {
            Trigger::Webhook
        });
    }

    /// Run a cycle now, for `why` (a [`Trigger::Sync`] retries a failed
    /// revision).
    pub fn trigger_by(&self, why: Trigger) {
        if why == Trigger::Sync {
            self.forced.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        *self.woken_by.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        self.wake.notify_one();
    }

    pub fn set_suspended(&self, suspended: bool) {
        self.lock().suspended = suspended;
    }

    /// New settings from a new revision of `berth.yml`, in force from the
    /// next cycle, which runs now. Suspension changes only when the index's
    /// value changed (`suspend`): one set through the API is kept otherwise.
    pub fn set_settings(&self, settings: Settings, suspend: Option<bool>) {
        *self.settings.lock().unwrap_or_else(|p| p.into_inner()) = settings;
        {
            let mut st = self.lock();
            st.mode = Some(settings.mode);
            st.self_heal = settings.self_heal;
            if let Some(s) = suspend {
                st.suspended = s;
            }
        }
        if suspend.is_some()
            && let Some(h) = &self.history
        {
            h.save_state_later(&self.instance(), &self.state_to_keep());
        }
        self.trigger_by(Trigger::Policy);
    }

    /// The settings in force.
    pub fn settings(&self) -> Settings {
        *self.settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> AppStatus {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AppStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The loop; returns once `shutdown` turns true (after the current cycle).
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut revisions = Revisions::default();
        // What the last berth remembered: the revisions, a suspension made
        // through the API, a rollback.
        if let Some(h) = &self.history {
            match h.state(&self.instance()) {
                Ok(Some(kept)) => {
                    revisions.settled = kept.settled.clone();
                    revisions.failed = kept.failed.clone();
                    let mut st = self.lock();
                    st.suspended = kept.suspended;
                    st.settled = kept.settled;
                    st.failed = kept.failed;
                    st.pinned = kept.pinned;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(app = %self.spec.name, error = %e, "cannot read the history: starting without it")
                }
            }
        }
        let mut requeue = Requeue::default();
        let mut conns: Option<(String, Arc<Connections>)> = None;
        let mut watchers: BTreeMap<String, tokio::task::JoinHandle<()>> = BTreeMap::new();
        let mut trigger = Trigger::Start;
        loop {
            let started = Instant::now();
            let before = conns.clone();
            let span = tracing::info_span!(
                "cycle",
                app = %self.spec.name,
                destination = self.spec.destination.as_deref().unwrap_or(""),
                trigger = trigger.as_str(),
            );
            let started_unix_ms = unix_now_ms();
            let revision_before = self.lock().revision.clone();
            let settled_before = revisions.settled.clone();
            revisions.applied.clear();
            let result = self
                .cycle(&mut revisions, &mut conns)
                .instrument(span)
                .await;
            self.remember(
                &result,
                trigger,
                started_unix_ms,
                (revision_before, settled_before),
                &revisions,
            );
            // New SSH settings: the watchers of the old connections stop
            // before those close (a master in use cannot be shut down).
            if let Some((old_key, old)) = before
                && conns.as_ref().is_none_or(|(k, _)| *k != old_key)
            {
                stop_watchers(&mut watchers).await;
                old.close().await;
            }
            if let Some((_, c)) = &conns {
                self.ensure_watchers(c, &mut watchers);
            }
            self.publish(&result, trigger, started.elapsed().as_secs_f64());
            let (wait, next) = requeue.next(&result, self.spec.interval);
            let wait = jitter(wait);
            if *shutdown.borrow() {
                break;
            }
            trigger = tokio::select! {
                _ = tokio::time::sleep(wait) => next,
                _ = self.wake.notified() => self
                    .woken_by
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .unwrap_or(Trigger::Webhook),
                _ = self.events.notified() => {
                    self.debounce_events().await;
                    Trigger::Event
                }
                _ = shutdown.changed() => break,
            };
        }
        stop_watchers(&mut watchers).await;
        if let Some((_, c)) = conns {
            c.close().await;
        }
    }

    /// Keep the cycle in the history if it did something, failed or saw a
    /// new revision (a no-op cycle writes nothing), and the revisions a
    /// restart must not forget when they changed. Never waits.
    fn remember(
        &self,
        result: &Result<Outcome, CycleError>,
        trigger: Trigger,
        started_unix_ms: u64,
        (revision_before, settled_before): (Option<String>, Option<String>),
        revisions: &Revisions,
    ) {
        let (revision, version, changed, signature_refused) = {
            let mut st = self.lock();
            let changed = st.settled != revisions.settled || st.failed != revisions.failed;
            st.settled = revisions.settled.clone();
            st.failed = revisions.failed.clone();
            (
                st.revision.clone(),
                st.version.clone(),
                changed,
                st.source_refusal.is_some(),
            )
        };
        let Some(h) = &self.history else {
            return;
        };
        if changed {
            h.save_state_later(&self.instance(), &self.state_to_keep());
        }
        let new_revision = revision != revision_before;
        let deployed = revisions.settled != settled_before;
        let kind = match result {
            Err(CycleError::Revision { .. }) => "refused",
            Err(CycleError::Source(_)) if signature_refused => "refused",
            Err(_) => "failed",
            Ok(_) if deployed => "deployed",
            Ok(Outcome::Applied) => "healed",
            Ok(_) => "seen",
        };
        let (result, error) = match result {
            Ok(o) => (o.as_str(), None),
            Err(e) => ("error", Some(e.to_string())),
        };
        if result == "applied" || result == "error" || new_revision {
            h.record_cycle(history::CycleRow {
                id: 0,
                app: self.spec.name.clone(),
                destination: self.spec.destination.clone(),
                started_unix_ms,
                ended_unix_ms: unix_now_ms(),
                trigger: trigger.as_str().to_string(),
                revision,
                version,
                result: result.to_string(),
                kind: kind.to_string(),
                error,
                actions: revisions.applied.clone(),
            });
        }
    }

    /// A drift episode begins (history), with its units.
    fn episode_started(&self, drift: &[Drift]) {
        if let Some(h) = &self.history {
            let units = drift
                .iter()
                .map(|d| format!("{} {} ({})", d.host, d.container, d.reason))
                .collect();
            h.episode_started(&self.instance(), units);
        }
    }

    fn episode_ended(&self, by: &'static str) {
        if let Some(h) = &self.history {
            h.episode_ended(&self.instance(), by);
        }
    }

    /// Wait until the hosts' events go quiet (trailing debounce), at most
    /// [`EVENT_MAX_DELAY`]. A webhook or sync meanwhile keeps its wake: it
    /// runs a cycle of its own right after this one.
    async fn debounce_events(&self) {
        let deadline = tokio::time::Instant::now() + EVENT_MAX_DELAY;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(EVENT_QUIET) => return,
                _ = tokio::time::sleep_until(deadline) => return,
                _ = self.events.notified() => {}
            }
        }
    }

    /// Record a cycle's result in the status, the metrics and the log.
    fn publish(&self, result: &Result<Outcome, CycleError>, trigger: Trigger, secs: f64) {
        let mut st = self.lock();
        st.durations.observe(secs);
        let dest = self.spec.destination.as_deref().unwrap_or("");
        let key = match result {
            Ok(outcome) => {
                tracing::info!(app = %self.spec.name, destination = dest, trigger = trigger.as_str(), result = %outcome, seconds = secs, "reconciled");
                st.last_success_unix = Some(unix_now());
                st.last_error = None;
                outcome.as_str()
            }
            Err(e) => {
                tracing::warn!(app = %self.spec.name, destination = dest, trigger = trigger.as_str(), seconds = secs, error = %e, "reconcile failed");
                st.last_error = Some(e.to_string());
                "error"
            }
        };
        *st.reconciles.entry(key.to_string()).or_default() += 1;
    }

    /// One docker event stream per host (over the warm SSH connection: the
    /// Engine API's `/events` once observation found the host's socket, else
    /// `docker events`): any event of the app's containers wakes the loop,
    /// so drift made by hand is seen within a second. A stream that ends is
    /// restarted.
    fn ensure_watchers(
        self: &Arc<Self>,
        conns: &Arc<Connections>,
        watchers: &mut BTreeMap<String, tokio::task::JoinHandle<()>>,
    ) {
        let hosts = self
            .watch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone();
        watchers.retain(|key, w| {
            let host = key.split(' ').next().unwrap_or_default();
            let keep = hosts.iter().any(|h| h == host) && !w.is_finished();
            if !keep {
                w.abort();
            }
            keep
        });
        for host in hosts {
            // Docker ANDs label filters, so one filter per service label
            // (the app's and each accessory's) would match no event at all:
            // filter on the `service` key, and keep the app's own services
            // here — read at each event, so a config that adds an accessory
            // is followed without restarting the stream.
            let apps = Watch {
                filters: serde_json::json!({"type": ["container"], "label": ["service"]}),
                format: "{{.Status}} {{index .Actor.Attributes \"service\"}}",
                cli_filters: &["label=service", "type=container"],
            };
            // kamal-proxy has no `service` label: its own stream, for the
            // proxy going down and for routes changed by hand (`docker exec
            // kamal-proxy kamal-proxy deploy|remove|stop …`). berth's own
            // probe runs `kamal-proxy list`, which must not wake it.
            let proxy = Watch {
                filters: serde_json::json!({"type": ["container"], "container": [crate::kamal::PROXY_CONTAINER]}),
                format: "{{index .Actor.Attributes \"execID\"}} {{.Action}}",
                cli_filters: &["container=kamal-proxy", "type=container"],
            };
            for (key, watch, is_app) in [
                (host.clone(), apps, true),
                (format!("{host} proxy"), proxy, false),
            ] {
                if watchers.contains_key(&key) {
                    continue;
                }
                let task = self
                    .clone()
                    .watch_events(conns.clone(), host.clone(), watch, is_app);
                watchers.insert(key, task);
            }
        }
    }

    /// Follow one event stream of `host` until berth stops, restarting it
    /// when it ends; app events wake the loop for the app's services, proxy
    /// events for anything but a read-only `kamal-proxy list`.
    fn watch_events(
        self: Arc<Self>,
        conns: Arc<Connections>,
        host: String,
        watch: Watch,
        is_app: bool,
    ) -> tokio::task::JoinHandle<()> {
        let mut argv: Vec<String> = ["docker", "events", "--format", watch.format]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for f in watch.cli_filters {
            argv.push("--filter".into());
            argv.push(f.to_string());
        }
        tokio::spawn(async move {
            loop {
                let me = &self;
                let conns_ref = &conns;
                let host_ref = host.as_str();
                // While this stream follows the proxy, observation may keep
                // its state between cycles; each relevant event drops it.
                if !is_app {
                    conns.proxy_watched(&host, true);
                }
                let mut execs = std::collections::HashSet::new();
                let wake = |event: &serde_json::Value| {
                    let attr = |k: &str| {
                        event
                            .pointer(&format!("/Actor/Attributes/{k}"))
                            .and_then(|v| v.as_str())
                    };
                    let wanted = if is_app {
                        me.watches(attr("service"))
                    } else {
                        let action = event.get("Action").and_then(|v| v.as_str()).unwrap_or("");
                        let changed = proxy_event_matters(&mut execs, attr("execID"), action);
                        if changed {
                            conns_ref.proxy_changed(Some(host_ref));
                        }
                        changed
                    };
                    if wanted {
                        me.events.notify_one();
                    }
                };
                if conns
                    .engine_events(&host, &watch.filters, wake)
                    .await
                    .is_none()
                {
                    let mut execs = std::collections::HashSet::new();
                    let line_wake = |line: &str| {
                        let wanted = if is_app {
                            me.watches(line.split_whitespace().nth(1))
                        } else {
                            // `<execID> <action>`, the id empty for other events.
                            let (id, action) = line.split_once(' ').unwrap_or(("", line));
                            let id = Some(id).filter(|i| !i.is_empty());
                            let changed = proxy_event_matters(&mut execs, id, action);
                            if changed {
                                conns_ref.proxy_changed(Some(host_ref));
                            }
                            changed
                        };
                        if wanted {
                            me.events.notify_one();
                        }
                    };
                    let _ = conns.stream_lines(&host, &argv, line_wake).await;
                }
                if !is_app {
                    conns.proxy_watched(&host, false);
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    }

    /// Whether an event of a container labelled `service` concerns this app
    /// (its own containers or one of its accessories').
    fn watches(&self, service: Option<&str>) -> bool {
        let watch = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        service.is_some_and(|s| watch.1.iter().any(|l| l == s))
    }

    /// One reconcile: fetch, load, observe, plan, then what [`decide`] says.
    async fn cycle(
        &self,
        revisions: &mut Revisions,
        conns: &mut Option<(String, Arc<Connections>)>,
    ) -> Result<Outcome, CycleError> {
        let spec = &self.spec;
        let settings = self.settings();
        // A rollback pins a revision; the followed ref waits for a resume.
        let pinned = self.lock().pinned.clone();
        let source = pinned
            .as_deref()
            .and_then(|p| spec.source.pinned_to(p))
            .unwrap_or_else(|| spec.source.clone());
        let rev = tokio::task::spawn_blocking(move || source.fetch())
            .await
            .map_err(|e| CycleError::Internal(e.to_string()))?
            .map_err(|e| {
                if let Some(refused) = &e.refused {
                    // Logged once per cycle it stays refused; the fleet keeps
                    // the last verified revision.
                    tracing::error!(app = %spec.name, object = %refused.object, reason = %refused.reason, "revision refused: signature not verified");
                    {
                        let mut st = self.lock();
                        st.source_verified = Some(false);
                        st.source_refusal = Some(refused.to_string());
                    }
                    if revisions.refused.as_deref() != Some(refused.object.as_str()) {
                        revisions.refused = Some(refused.object.clone());
                        self.emit(
                            events::Event::RevisionRefused {
                                reason: refused.to_string(),
                            },
                            Some(&refused.object),
                        );
                    }
                }
                CycleError::Source(e.to_string())
            })?;
        let new_revision = self.lock().revision.as_deref() != Some(rev.id.as_str());
        {
            let mut st = self.lock();
            st.revision = Some(rev.id.clone());
            if rev.verified.is_some() {
                st.source_verified = Some(true);
                st.source_refusal = None;
                st.signature = rev.verified.clone();
            }
        }
        let refused = |message: String| CycleError::Revision {
            revision: short(&rev.id).to_string(),
            message,
        };
        let config_file = rev.dir.join(&spec.config_file);
        // The whole checkout is the repository: confined to it, trusted with nothing.
        let files = Checkout::untrusted(&rev.dir).map_err(|e| refused(e.to_string()))?;
        let (cfg, secrets, desired) = load_app(&AppLoad {
            config_file: &config_file,
            destination: spec.destination.as_deref(),
            secret_commands: Commands::Refuse,
            // An unset variable would roll an empty secret out everywhere.
            strict_secrets: true,
            age_keys: spec.age_keys.as_deref(),
            app_version: None,
            home: None,
            env: &config::process_env,
            files: &files,
        })
        .map_err(|e| {
            let error = match e {
                AppLoadError::NoVersion(_) => refused("x-berth.version is not set".into()),
                other => refused(other.to_string()),
            };
            if revisions.refused.as_deref() != Some(rev.id.as_str()) {
                revisions.refused = Some(rev.id.clone());
                self.emit(
                    events::Event::RevisionRefused {
                        reason: error.to_string(),
                    },
                    Some(&rev.id),
                );
            }
            error
        })?;
        // What berth went on without (ERB in `builder:` …), once per revision.
        if new_revision {
            for w in &cfg.warnings {
                tracing::warn!(revision = short(&rev.id), "{w}");
            }
        }
        // `ssh.proxy_command` was refused by the untrusted load.
        let version = desired.version.clone();
        self.lock().version = Some(version.clone());

        // Warm connections, rebuilt only when the SSH settings change.
        let mut ssh =
            SshOptions::from_config(&cfg.ssh, std::env::var_os("HOME").map(PathBuf::from));
        ssh.known_hosts = spec.ssh.known_hosts.clone();
        ssh.accept_new_host_keys = spec.ssh.accept_new_host_keys;
        let key = format!("{ssh:?}");
        if conns.as_ref().is_none_or(|(k, _)| *k != key) {
            // The loop closes the old set once its watchers are stopped.
            *conns = Some((key, Arc::new(Connections::new(ssh))));
        }
        let Some((_, c)) = conns.as_ref() else {
            return Err(CycleError::Internal("no connections".into()));
        };
        {
            let mut labels = vec![desired.service.clone()];
            for acc in desired.hosts.iter().flat_map(|h| &h.accessories) {
                if let Some((_, v)) = acc.labels.iter().find(|(k, _)| k == "service")
                    && !labels.contains(v)
                {
                    labels.push(v.clone());
                }
            }
            let hosts = desired.hosts.iter().map(|h| h.host.clone()).collect();
            *self.watch.lock().unwrap_or_else(|p| p.into_inner()) = (hosts, labels);
        }
        let observed = observe::observe(&desired, c, 32).await;
        let host_events;
        let plan = plan::plan(
            &desired,
            &observed,
            &PlanOptions {
                prune: settings.prune.unwrap_or(cfg.berth.prune),
                orphans: true,
            },
        );
        {
            let mut st = self.lock();
            st.observed = true;
            st.in_sync = plan.in_sync();
            st.last_plan = plan::output::text(&plan);
            let hosts: BTreeMap<String, bool> = observed
                .hosts
                .iter()
                .map(|h| (h.host.clone(), matches!(h.state, HostState::Reached(_))))
                .collect();
            host_events = events::host_transitions(&st.hosts, &hosts);
            st.hosts = hosts;
            st.drift = plan
                .actions
                .iter()
                .map(|a| Drift {
                    host: a.host.clone(),
                    role: drift_unit(&a.unit),
                    container: a.container.clone(),
                    action: a.kind.as_str().to_string(),
                    reason: first_reason(a).to_string(),
                })
                .collect();
            st.units = unit_states(&desired, &st.hosts, &st.drift);
            // What docker says of each unit's container: health, restarts.
            for u in st.units.iter_mut() {
                if let Some(c) = observed.container(&u.host, &u.container) {
                    u.status = Some(c.status.clone());
                    u.health = c.health.clone();
                    u.restart_count = c.restart_count;
                }
            }
        }
        for e in host_events {
            self.emit(e, Some(&rev.id));
        }
        let drift = self.lock().drift.clone();
        let suspended = self.lock().suspended;
        let forced = self.forced.swap(false, std::sync::atomic::Ordering::SeqCst);
        let decision = decide(&Situation {
            mode: settings.mode,
            self_heal: settings.self_heal,
            suspended,
            forced,
            revision: &rev.id,
            settled: revisions.settled.as_deref(),
            failed: revisions.failed.as_deref(),
            has_actions: !plan.actions.is_empty(),
            unknown_hosts: !plan.unknown_hosts.is_empty(),
        });
        // Unreachable hosts have no actions: the others keep converging (the
        // lock's host must answer, or the apply fails and backs off).
        let new_revision = revisions.settled.as_deref() != Some(rev.id.as_str());
        if new_revision || forced {
            revisions.heals.reset();
        }
        let mut plan = plan;
        // A heal (drift on the revision the fleet converged to): units that
        // reached their flap limit are left alone, the others are healed.
        let mut flapping = Vec::new();
        if decision == Decision::Apply && !new_revision && !forced {
            let limit = settings.flap_limit;
            let now = Instant::now();
            let at_limit = revisions.heals.at_limit(limit, now);
            let newly = revisions.heals.newly_flapping(&at_limit);
            let (held, heal): (Vec<_>, Vec<_>) = std::mem::take(&mut plan.actions)
                .into_iter()
                .partition(|a| at_limit.contains(&(a.host.clone(), a.container.clone())));
            plan.actions = heal;
            for a in &held {
                let key = (a.host.clone(), a.container.clone());
                let heals = revisions.heals.count(&key);
                let unit = FlappingUnit {
                    host: a.host.clone(),
                    unit: drift_unit(&a.unit),
                    container: a.container.clone(),
                    heals,
                    reason: flap_reason(&observed, a, heals, limit),
                };
                if newly.contains(&key) {
                    tracing::warn!(app = %spec.name, host = %a.host, container = %a.container, reason = %unit.reason, "flap limit reached: the unit is left alone");
                    self.emit(
                        events::Event::FlapLimit {
                            host: unit.host.clone(),
                            unit: unit.unit.clone(),
                            container: unit.container.clone(),
                            reason: unit.reason.clone(),
                        },
                        Some(&rev.id),
                    );
                }
                flapping.push(unit);
            }
            for a in &plan.actions {
                revisions
                    .heals
                    .record((a.host.clone(), a.container.clone()), limit, now);
            }
        }
        {
            let mut st = self.lock();
            for u in st.units.iter_mut() {
                if flapping
                    .iter()
                    .any(|f| f.host == u.host && f.container == u.container)
                {
                    u.state = "flapping";
                }
            }
            st.flapping = flapping;
        }
        if decision == Decision::Apply && plan.actions.is_empty() {
            // Everything to heal is flapping: reported, left alone.
            if !revisions.drifting {
                self.episode_started(&drift);
            }
            revisions.drifting = true;
            return Ok(Outcome::Drifted);
        }
        if let Decision::Report { outcome, settle } = decision {
            if settle {
                if new_revision {
                    self.emit(events::Event::Deployed, Some(&rev.id));
                }
                revisions.settled = Some(rev.id.clone());
            }
            if plan.actions.is_empty() {
                if revisions.drifting {
                    self.episode_ended("cleared");
                }
                revisions.drifting = false;
            } else if !revisions.drifting {
                revisions.drifting = true;
                self.episode_started(&drift);
                self.emit(
                    events::Event::DriftDetected {
                        units: drift.clone(),
                    },
                    Some(&rev.id),
                );
            }
            return Ok(outcome);
        }
        if new_revision {
            self.emit(events::Event::RolloutStarted, Some(&rev.id));
        }
        let revision = short(&rev.id).to_string();
        let progress = |line: &str| tracing::info!(app = %spec.name, destination = spec.destination.as_deref().unwrap_or(""), revision = %revision, "{line}");
        let ctx = ApplyContext::new(
            &cfg,
            &desired,
            c,
            apply::registry_login(&cfg, &secrets).map_err(CycleError::Internal)?,
            &progress,
            None,
            UnknownHosts::ApplyToReachable,
        );
        revisions.applied = plan
            .actions
            .iter()
            .map(|a| history::ActionRow {
                unit: drift_unit(&a.unit),
                host: a.host.clone(),
                container: a.container.clone(),
                kind: a.kind.as_str().to_string(),
                reason: first_reason(a).to_string(),
            })
            .collect();
        // berth's own route changes: read every proxy again next cycle.
        let applied = apply::apply(&ctx, &plan).await;
        c.proxy_changed(None);
        match applied {
            Ok(_) => {
                revisions.failed = None;
                revisions.settled = Some(rev.id.clone());
                if !new_revision {
                    // A heal ends the episode (one seen and healed at once
                    // is an episode too).
                    if !revisions.drifting {
                        self.episode_started(&drift);
                    }
                    self.episode_ended("healed");
                } else if revisions.drifting {
                    self.episode_ended("cleared");
                }
                revisions.drifting = false;
                self.lock().last_apply_unix = Some(unix_now());
                self.emit(
                    if new_revision {
                        events::Event::Deployed
                    } else {
                        events::Event::Healed { units: drift }
                    },
                    Some(&rev.id),
                );
                Ok(Outcome::Applied)
            }
            // A lock someone else holds (`kamal lock`, a deploy in
            // progress) says nothing about the revision: retry it with the
            // backoff instead of parking it as failed.
            Err(e @ apply::ApplyError::Locked { .. }) => Err(CycleError::Locked {
                revision: short(&rev.id).to_string(),
                message: e.to_string(),
            }),
            Err(e) => {
                // A revision's rollout that failed is parked until a new
                // revision or a sync; a heal that failed is not (it would
                // stop healing every other unit): its attempts count
                // towards the flap limit instead.
                if new_revision || forced {
                    revisions.failed = Some(rev.id.clone());
                }
                let error = CycleError::Apply {
                    revision: short(&rev.id).to_string(),
                    message: e.to_string(),
                };
                self.emit(
                    events::Event::RolloutFailed {
                        error: error.to_string(),
                    },
                    Some(&rev.id),
                );
                Err(error)
            }
        }
    }
}

/// One docker event stream: Engine API filters, and the same for `docker
/// events` (its `--format` and `--filter`s) when the API is not reachable.
struct Watch {
    filters: serde_json::Value,
    format: &'static str,
    cli_filters: &'static [&'static str],
}

/// Whether a kamal-proxy container event may have changed what it serves:
/// anything (it stopped, died, restarted) but its execs, except when an
/// exec of a route-changing command (`kamal-proxy deploy|remove|stop …` run
/// by hand) ends — its `exec_die` carries no command, so the ids of such
/// execs are remembered in `pending` from their `exec_create`. berth's own
/// probe (`kamal-proxy list`, `docker cp` of the state file) never wakes the
/// loop: each cycle would wake the next.
fn proxy_event_matters(
    pending: &mut std::collections::HashSet<String>,
    exec_id: Option<&str>,
    action: &str,
) -> bool {
    if let Some(command) = action.strip_prefix("exec_create:") {
        let mut words = command.split_whitespace();
        let read_only =
            words.next() == Some("kamal-proxy") && matches!(words.next(), Some("list" | "ls"));
        if !read_only && let Some(id) = exec_id {
            // Bounded: ids leave on their exec_die; a lost one is harmless.
            if pending.len() < 1024 {
                pending.insert(id.to_string());
            }
        }
        false
    } else if action.starts_with("exec_die") {
        exec_id.is_some_and(|id| pending.remove(id))
    } else {
        // `archive-path`: berth's own probe reading the state file (docker
        // cp), which would otherwise wake the loop after every cycle.
        !action.starts_with("exec_") && action != "archive-path"
    }
}

/// An action's first reason, as metrics and the API name it.
fn first_reason(a: &plan::Action) -> &'static str {
    a.reasons
        .first()
        .map(plan::Change::kind)
        .unwrap_or("unknown")
}

/// A unit as `Drift.role` and `UnitState.unit` name it.
fn drift_unit(unit: &plan::Unit) -> String {
    match unit {
        plan::Unit::App { role } => role.clone(),
        plan::Unit::Accessory { name } => format!("accessory:{name}"),
        plan::Unit::Proxy => "proxy".into(),
        plan::Unit::Orphan => "orphan".into(),
    }
}

/// Why a unit is flapping: the heals, and what docker says of its
/// container (status, restarts by its restart policy, last exit code).
fn flap_reason(
    observed: &observe::Observed,
    action: &plan::Action,
    heals: usize,
    limit: crate::policy::FlapLimit,
) -> String {
    let window = humantime::format_duration(limit.window);
    match observed.container(&action.host, &action.container) {
        Some(c) => format!(
            "healed {heals} times in {window}; container {}, restarted {} times by docker, last exit code {}",
            c.status, c.restart_count, c.exit_code
        ),
        None => format!("healed {heals} times in {window}; no such container now"),
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// ±10 %, so many berths polling one repo do not fall in step.
fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or_default();
    let factor = 0.9 + f64::from(nanos % 1000) / 5000.0;
    d.mul_f64(factor)
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Desired units per host joined with the plan's drift (an action on a unit
/// means it is drifted); units of an unreachable host are unknown, and
/// drift on no desired unit (an orphan) is listed too.
fn unit_states(
    desired: &crate::desired::Desired,
    hosts: &BTreeMap<String, bool>,
    drift: &[Drift],
) -> Vec<UnitState> {
    let mut out = Vec::new();
    let mut used = vec![false; drift.len()];
    for h in &desired.hosts {
        let reached = hosts.get(&h.host).copied().unwrap_or(false);
        let units = h
            .apps
            .iter()
            .map(|a| (a.role.clone(), a.container_name.clone()))
            .chain(
                h.accessories
                    .iter()
                    .map(|a| (format!("accessory:{}", a.name), a.container_name.clone())),
            )
            .chain(h.proxy.as_ref().map(|_| {
                (
                    "proxy".to_string(),
                    crate::kamal::PROXY_CONTAINER.to_string(),
                )
            }));
        for (unit, container) in units {
            let hit = drift
                .iter()
                .position(|d| d.host == h.host && d.role == unit);
            if let Some(i) = hit {
                used[i] = true;
            }
            let d = hit.map(|i| &drift[i]);
            out.push(UnitState {
                host: h.host.clone(),
                unit,
                container,
                state: match (reached, d) {
                    (false, _) => "unknown",
                    (true, Some(_)) => "drifted",
                    (true, None) => "in_sync",
                },
                action: d.map(|d| d.action.clone()),
                reason: d.map(|d| d.reason.clone()),
                status: None,
                health: None,
                restart_count: 0,
            });
        }
    }
    for (d, _) in drift.iter().zip(&used).filter(|(_, u)| !**u) {
        out.push(UnitState {
            host: d.host.clone(),
            unit: d.role.clone(),
            container: d.container.clone(),
            state: "drifted",
            action: Some(d.action.clone()),
            reason: Some(d.reason.clone()),
            status: None,
            health: None,
            restart_count: 0,
        });
    }
    out
}

/// Stop the event watchers and wait until they are gone (with them, their
/// hold on SSH sessions).
async fn stop_watchers(watchers: &mut BTreeMap<String, tokio::task::JoinHandle<()>>) {
    for (_, w) in std::mem::take(watchers) {
        w.abort();
        let _ = w.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_events_wake_except_for_read_only_execs() {
        let mut pending = std::collections::HashSet::new();
        let mut e = |id: Option<&str>, action: &str| proxy_event_matters(&mut pending, id, action);
        assert!(e(None, "die"));
        assert!(e(None, "start"));
        assert!(!e(None, "archive-path"));
        // berth's own probe.
        assert!(!e(Some("a"), "exec_create: kamal-proxy list"));
        assert!(!e(Some("a"), "exec_start: kamal-proxy list"));
        assert!(!e(Some("a"), "exec_die"));
        // A route changed by hand wakes once it has run.
        assert!(!e(Some("b"), "exec_create: kamal-proxy remove demo-web"));
        assert!(!e(Some("b"), "exec_start: kamal-proxy remove demo-web"));
        assert!(e(Some("b"), "exec_die"));
        assert!(!e(Some("b"), "exec_die"));
    }
}
