//! `controller::apps`: the app instances one `berth run` manages, and the
//! index they come from: the repository's `berth.yml` at the followed
//! revision, or `--apps-file`, or (neither) the one app the command line
//! names.
//!
//! Like Flux picking new objects up from Git, the index is read again every
//! interval and on every webhook ([`Apps::follow`]): instances it adds start
//! their loops; instances it drops stop theirs after their current cycle, and
//! their hosts are left as they are (reported in [`IndexStatus::removed`]:
//! taking an app out of the index is not a request to tear it down; removing
//! its `servers:` is); changed policies are in force from the next cycle,
//! which runs at once. An index that does not load keeps the last good set
//! running, and the error (file, line, key) is reported in the API, the
//! metrics and the status page.
//!
//! The index has its own checkout (`<checkout>/index`), each instance its
//! own ([`instance_checkout`]): a fetch never moves a work tree a cycle is
//! reading. Costs: one fetch and one read of a file (≤ 1 MiB, confined) per
//! interval or webhook; nothing else when nothing changed. An instance whose
//! config file moved, or that is stopped and re-added, is a new loop: the old
//! one finishes its cycle first, so two loops of one instance never overlap.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::{AppSpec, Controller, SshOptionsTemplate, Trigger};
use crate::policy::{Mode, Settings};
use crate::source::index::{self, IndexApp, IndexError};
use crate::source::{Source, SourceError};

/// How many removed instances the status remembers.
const REMEMBER_REMOVED: usize = 64;

/// Where the list of apps comes from.
#[derive(Clone, Debug)]
pub enum IndexSource {
    /// `berth.yml` at the root of this source (checked out on its own);
    /// none there: the single app of the command line.
    Repo(Source),
    /// `--apps-file`: the operator's own file (e.g. a ConfigMap), used
    /// instead of the repository's, read again like it.
    File(PathBuf),
}

/// What the command line fixes for every instance.
#[derive(Clone, Debug)]
pub struct Template {
    /// The repository; each instance gets its own checkout of it.
    pub source: Source,
    /// Where the per-instance checkouts live (`<root>/instances/…`).
    pub checkout_root: PathBuf,
    /// `--app`, `-c`, `-d`: the single app, when there is no index.
    pub app: Option<String>,
    pub config_file: PathBuf,
    pub destination: Option<String>,
    /// `--mode detect` and `--self-heal false` cap every app's policy.
    pub mode: Mode,
    pub self_heal: bool,
    pub interval: Duration,
    pub ssh: SshOptionsTemplate,
    pub age_keys: Option<Arc<crate::config::sops::AgeKeys>>,
}

/// An instance: an app and one of its destinations.
pub type Key = (String, Option<String>);

fn key(spec: &AppSpec) -> Key {
    (spec.name.clone(), spec.destination.clone())
}

/// `app` or `app/destination`, as logs and the status page name an instance.
pub fn instance_name(k: &Key) -> String {
    match &k.1 {
        Some(d) => format!("{}/{d}", k.0),
        None => k.0.clone(),
    }
}

/// The checkout of one instance: cycles of different instances never race
/// on one work tree, and no two instances share one (app `a` with
/// destination `b` and an app `a-b` included).
pub use crate::source::instance_checkout;

/// The instances an index asks for (`None`: the command line's one app,
/// named `single_name`), in the index's order.
pub fn instances(t: &Template, index: Option<&[IndexApp]>, single_name: &str) -> Vec<AppSpec> {
    let spec = |name: &str, config_file: PathBuf, destination: Option<String>, settings| {
        let checkout = instance_checkout(&t.checkout_root, name, destination.as_deref());
        AppSpec {
            name: name.to_string(),
            source: t.source.with_checkout(checkout),
            config_file,
            destination,
            settings,
            interval: t.interval,
            ssh: t.ssh.clone(),
            age_keys: t.age_keys.clone(),
        }
    };
    let Some(apps) = index else {
        let settings = Settings {
            mode: t.mode,
            self_heal: t.self_heal,
            prune: None,
            suspended: false,
            flap_limit: crate::policy::FlapLimit::default(),
        };
        return vec![spec(
            single_name,
            t.config_file.clone(),
            t.destination.clone(),
            settings,
        )];
    };
    let mut out = Vec::new();
    for app in apps {
        let settings = Settings {
            // The command line is a ceiling over berth.yml's policies:
            // `--mode detect` makes every app report only.
            mode: if t.mode == Mode::Detect {
                Mode::Detect
            } else {
                app.mode
            },
            self_heal: app.self_heal && t.self_heal,
            prune: app.prune,
            suspended: app.suspended,
            flap_limit: app.flap_limit,
        };
        let dests: Vec<Option<String>> = if app.destinations.is_empty() {
            vec![None]
        } else {
            app.destinations.iter().cloned().map(Some).collect()
        };
        for dest in dests {
            out.push(spec(&app.name, app.path.join(&app.config), dest, settings));
        }
    }
    out
}

/// What turns the running set into the wanted one.
#[derive(Debug, Default)]
pub struct Changes {
    /// No longer listed: stop (hosts untouched).
    pub stop: Vec<Key>,
    /// Listed with another config file: stop, then start anew.
    pub restart: Vec<AppSpec>,
    /// Newly listed.
    pub start: Vec<AppSpec>,
    /// Listed with other settings; the suspension only when the index's
    /// own value changed.
    pub update: Vec<(Key, Settings, Option<bool>)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.stop.is_empty()
            && self.restart.is_empty()
            && self.start.is_empty()
            && self.update.is_empty()
    }
}

/// Compare the specs the loops run with (as the index last listed them)
/// against the specs the newest index lists.
pub fn diff(running: &[AppSpec], wanted: &[AppSpec]) -> Changes {
    let mut changes = Changes::default();
    for r in running {
        if !wanted.iter().any(|w| key(w) == key(r)) {
            changes.stop.push(key(r));
        }
    }
    for w in wanted {
        let Some(r) = running.iter().find(|r| key(r) == key(w)) else {
            changes.start.push(w.clone());
            continue;
        };
        if r.config_file != w.config_file {
            changes.restart.push(w.clone());
        } else if r.settings != w.settings {
            let suspend =
                (r.settings.suspended != w.settings.suspended).then_some(w.settings.suspended);
            changes.update.push((key(w), w.settings, suspend));
        }
    }
    changes
}

/// What the API and the metrics show about the index.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct IndexStatus {
    /// `berth.yml`, the `--apps-file` path, or none (the command line's app).
    pub file: Option<String>,
    /// The revision the running set was read from (none for a file).
    pub revision: Option<String>,
    /// Why the newest index is not in use (the last good set runs).
    pub error: Option<String>,
    /// Instances the index stopped listing (`app` or `app/destination`):
    /// their loops stopped, their hosts were left as they are.
    pub removed: Vec<String>,
}

/// Why an index could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot fetch the index: {0}")]
    Fetch(#[from] SourceError),
    #[error("{0}")]
    Index(#[from] IndexError),
}

/// An index, read.
#[derive(Debug)]
pub struct Loaded {
    pub file: Option<String>,
    pub revision: Option<String>,
    pub wanted: Vec<AppSpec>,
}

/// Reads the index (blocking: Git and files).
#[derive(Debug)]
pub struct Reader {
    source: IndexSource,
    template: Template,
    /// The single app's name, fixed at its first read (a config that
    /// fails to load later must not rename the app).
    single_name: Option<String>,
}

impl Reader {
    pub fn new(source: IndexSource, template: Template) -> Reader {
        Reader {
            source,
            template,
            single_name: None,
        }
    }

    pub fn load(&mut self) -> Result<Loaded, LoadError> {
        let (file, revision, apps) = match &self.source {
            IndexSource::File(f) => (
                Some(f.display().to_string()),
                None,
                Some(index::load_file(f)?),
            ),
            IndexSource::Repo(src) => {
                let rev = src.fetch()?;
                let apps = index::load(&rev.dir)?;
                if apps.is_none() && self.single_name.is_none() {
                    let t = &self.template;
                    self.single_name = Some(t.app.clone().unwrap_or_else(|| {
                        service_name(&rev.dir, &t.config_file, t.destination.as_deref())
                    }));
                }
                (
                    apps.is_some().then(|| "berth.yml".to_string()),
                    Some(rev.id),
                    apps,
                )
            }
        };
        let single = self.single_name.as_deref().unwrap_or("app");
        Ok(Loaded {
            file,
            revision,
            wanted: instances(&self.template, apps.as_deref(), single),
        })
    }
}

/// The config's `service`, the single app's name when `--app` is not given
/// (`app` if the config cannot be read yet: the cycles report why).
fn service_name(checkout: &Path, config_file: &Path, destination: Option<&str>) -> String {
    let Ok(files) = crate::checkout::Checkout::untrusted(checkout) else {
        return "app".into();
    };
    crate::config::load(&crate::config::LoadOptions {
        config_file: &checkout.join(config_file),
        destination,
        env: &crate::config::process_env,
        files: &files,
    })
    .map(|c| c.service)
    .unwrap_or_else(|_| "app".into())
}

/// A running instance.
struct Instance {
    /// As the index last listed it.
    spec: AppSpec,
    controller: Arc<Controller>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The running instances and the index's status, shared with `server`.
#[derive(Default)]
pub struct Apps {
    instances: Mutex<Vec<Instance>>,
    index: Mutex<IndexStatus>,
    wake: Notify,
    /// Every app of the first set was observed once (readiness; an app
    /// added later does not take it back).
    ready: std::sync::atomic::AtomicBool,
    /// What every instance's loop reports happening.
    events: super::events::Events,
    /// berth's memory across restarts (`--state-dir`).
    history: Option<Arc<crate::history::History>>,
}

impl Apps {
    pub fn new() -> Arc<Apps> {
        Arc::new(Apps::default())
    }

    /// With a history: every instance restores its state from it and
    /// records its cycles there.
    pub fn with_history(history: Arc<crate::history::History>) -> Arc<Apps> {
        Arc::new(Apps {
            history: Some(history),
            ..Apps::default()
        })
    }

    pub fn history(&self) -> Option<&Arc<crate::history::History>> {
        self.history.as_ref()
    }

    /// Every instance's controller, in the index's order.
    pub fn controllers(&self) -> Vec<Arc<Controller>> {
        self.lock().iter().map(|i| i.controller.clone()).collect()
    }

    /// The events of every instance, from now on (notifications, history).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<super::events::Notice> {
        self.events.subscribe()
    }

    /// Ready once every app was observed (then for good).
    pub fn ready(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.ready.load(Ordering::SeqCst) {
            return true;
        }
        let all = self.controllers();
        let now = !all.is_empty() && all.iter().all(|a| a.snapshot().observed);
        if now {
            self.ready.store(true, Ordering::SeqCst);
        }
        now
    }

    pub fn index_status(&self) -> IndexStatus {
        self.index.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Read the index and every app now (a webhook: a push anywhere in the
    /// repository; changed files in a `--dir` source).
    pub fn trigger_all(&self, why: Trigger) {
        self.wake.notify_one();
        for c in self.controllers() {
            c.trigger_by(why);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Instance>> {
        self.instances.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start(&self, spec: AppSpec) {
        let controller = Controller::new(spec.clone(), self.events.clone(), self.history.clone());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(controller.clone().run(stopped));
        self.lock().push(Instance {
            spec,
            controller,
            stop,
            task,
        });
    }

    /// Stop the loops of `keys` and wait for their current cycles to end.
    async fn stop(&self, keys: &[Key]) {
        let stopping: Vec<Instance> = {
            let mut all = self.lock();
            let (gone, kept) = std::mem::take(&mut *all)
                .into_iter()
                .partition(|i| keys.contains(&key(&i.spec)));
            *all = kept;
            gone
        };
        for i in &stopping {
            let _ = i.stop.send(true);
        }
        for i in stopping {
            let _ = i.task.await;
        }
    }

    /// Make the running set the one `loaded` lists.
    async fn converge(&self, loaded: Loaded) {
        let running: Vec<AppSpec> = self.lock().iter().map(|i| i.spec.clone()).collect();
        let changes = diff(&running, &loaded.wanted);
        {
            let mut st = self.index.lock().unwrap_or_else(|p| p.into_inner());
            st.file = loaded.file;
            st.revision = loaded.revision;
            st.error = None;
            for k in &changes.stop {
                st.removed.retain(|r| *r != instance_name(k));
                st.removed.push(instance_name(k));
            }
            for s in &changes.start {
                st.removed.retain(|r| *r != instance_name(&key(s)));
            }
            let excess = st.removed.len().saturating_sub(REMEMBER_REMOVED);
            st.removed.drain(..excess);
        }
        if changes.is_empty() {
            return;
        }
        for k in &changes.stop {
            tracing::warn!(instance = %instance_name(k), "app no longer in the index: its loop stops, its hosts are left as they are");
        }
        for (k, settings, suspend) in &changes.update {
            tracing::info!(instance = %instance_name(k), mode = ?settings.mode, self_heal = settings.self_heal, prune = ?settings.prune, "policy changed by the index");
            for i in self.lock().iter_mut().filter(|i| key(&i.spec) == *k) {
                i.spec.settings = *settings;
                i.controller.set_settings(*settings, *suspend);
            }
        }
        let restarted: Vec<Key> = changes.restart.iter().map(key).collect();
        self.stop(&changes.stop).await;
        self.stop(&restarted).await;
        for spec in changes.restart.into_iter().chain(changes.start) {
            tracing::info!(instance = %instance_name(&key(&spec)), config = %spec.config_file.display(), "app loop starts");
            self.start(spec);
        }
        // Keep the index's order (the API's and the status page's).
        let order: Vec<Key> = loaded.wanted.iter().map(key).collect();
        self.lock()
            .sort_by_key(|i| order.iter().position(|k| *k == key(&i.spec)));
    }

    /// Start the loops of a first read index (before [`Apps::follow`]).
    pub async fn begin(&self, loaded: Loaded) {
        self.converge(loaded).await;
    }

    /// Read the index every `interval` (and when woken) until `shutdown`;
    /// then stop every loop after its current cycle.
    pub async fn follow(
        self: Arc<Self>,
        mut reader: Reader,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
            let read = tokio::task::spawn_blocking(move || {
                let loaded = reader.load();
                (reader, loaded)
            })
            .await;
            let loaded;
            (reader, loaded) = match read {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "the index reader stopped");
                    break;
                }
            };
            match loaded {
                Ok(l) => self.converge(l).await,
                Err(e) => {
                    let text = e.to_string();
                    let mut st = self.index.lock().unwrap_or_else(|p| p.into_inner());
                    // Once per distinct error, not every interval.
                    if st.error.as_deref() != Some(text.as_str()) {
                        tracing::error!(error = %text, "the index does not load: the last good set of apps keeps running");
                    }
                    st.error = Some(text);
                }
            }
        }
        let all: Vec<Key> = self.lock().iter().map(|i| key(&i.spec)).collect();
        self.stop(&all).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Template {
        Template {
            source: Source::Dir(PathBuf::from("/repo")),
            checkout_root: PathBuf::from("/var/tmp/berth"),
            app: None,
            config_file: PathBuf::from("config/deploy.yml"),
            destination: None,
            mode: Mode::Auto,
            self_heal: true,
            interval: Duration::from_secs(30),
            ssh: SshOptionsTemplate::default(),
            age_keys: None,
        }
    }

    fn app(name: &str, dests: &[&str]) -> IndexApp {
        IndexApp {
            name: name.into(),
            path: PathBuf::from(name),
            config: PathBuf::from("config/deploy.yml"),
            destinations: dests.iter().map(|d| d.to_string()).collect(),
            mode: Mode::Auto,
            self_heal: true,
            prune: None,
            suspended: false,
            flap_limit: crate::policy::FlapLimit::default(),
        }
    }

    fn keys(specs: &[AppSpec]) -> Vec<String> {
        specs.iter().map(|s| instance_name(&key(s))).collect()
    }

    #[test]
    fn an_index_lists_one_instance_per_destination_under_the_command_line_caps() {
        let t = template();
        let single = instances(&t, None, "demo");
        assert_eq!(keys(&single), ["demo"]);
        assert_eq!(single[0].config_file, PathBuf::from("config/deploy.yml"));

        let mut shop = app("shop", &["staging", "production"]);
        shop.mode = Mode::Detect;
        let mut blog = app("blog", &[]);
        blog.self_heal = true;
        let listed = instances(&t, Some(&[shop.clone(), blog.clone()]), "unused");
        assert_eq!(keys(&listed), ["shop/staging", "shop/production", "blog"]);
        assert_eq!(
            listed[0].config_file,
            PathBuf::from("shop/config/deploy.yml")
        );
        assert_eq!(listed[0].settings.mode, Mode::Detect);

        let capped = Template {
            mode: Mode::Detect,
            self_heal: false,
            ..template()
        };
        for s in instances(&capped, Some(&[shop, blog]), "unused") {
            assert_eq!(s.settings.mode, Mode::Detect);
            assert!(!s.settings.self_heal);
        }
    }

    #[test]
    fn a_new_index_starts_stops_restarts_and_updates_exactly_what_changed() {
        let t = template();
        let before = instances(&t, Some(&[app("shop", &[]), app("blog", &["eu"])]), "");
        assert!(diff(&before, &before).is_empty());

        let mut shop = app("shop", &[]);
        shop.mode = Mode::Detect;
        shop.suspended = true;
        let mut blog = app("blog", &["eu"]);
        blog.config = PathBuf::from("config/other.yml");
        let after = instances(&t, Some(&[shop, blog, app("cache", &[])]), "");
        let c = diff(&before, &after);
        assert_eq!(keys(&c.start), ["cache"]);
        assert_eq!(keys(&c.restart), ["blog/eu"]);
        assert!(c.stop.is_empty());
        assert_eq!(c.update.len(), 1);
        let (k, settings, suspend) = &c.update[0];
        assert_eq!(instance_name(k), "shop");
        assert_eq!(settings.mode, Mode::Detect);
        assert_eq!(*suspend, Some(true), "the index's suspension changed");

        // Only the mode changes: a suspension set through the API stays.
        let mut detect = app("shop", &[]);
        detect.mode = Mode::Detect;
        let c = diff(&before, &instances(&t, Some(&[detect]), ""));
        assert_eq!(c.update[0].2, None);
        assert_eq!(
            c.stop.iter().map(instance_name).collect::<Vec<_>>(),
            ["blog/eu"]
        );

        // From one app to an index, and back.
        let single = instances(&t, None, "shop");
        let c = diff(&single, &before);
        assert_eq!(keys(&c.restart), ["shop"], "config moved to shop/");
        assert_eq!(keys(&c.start), ["blog/eu"]);
    }

    #[test]
    fn every_instance_has_a_checkout_of_its_own() {
        let t = template();
        let git = Template {
            source: Source::Git {
                url: "file:///repo".into(),
                reference: crate::source::GitRef::Branch("main".into()),
                checkout: t.checkout_root.join("index"),
                auth: Default::default(),
                trust: None,
            },
            ..t
        };
        let dirs = |index: &[IndexApp]| -> std::collections::BTreeSet<PathBuf> {
            instances(&git, Some(index), "")
                .iter()
                .map(|s| match &s.source {
                    Source::Git { checkout, .. } => checkout.clone(),
                    Source::Dir(d) => d.clone(),
                })
                .collect()
        };
        let all = dirs(&[app("shop", &["staging", "production"]), app("blog", &[])]);
        assert_eq!(all.len(), 3);
        assert!(!all.contains(&git.checkout_root.join("index")));
        // App `a` in destination `b` and app `a-b`: `apps/a-b` for both once.
        assert_eq!(dirs(&[app("a", &["b"]), app("a-b", &[])]).len(), 2);
    }
}
