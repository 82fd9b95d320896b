//! `berth run`: the controller for one app, with the HTTP server (metrics,
//! health, status API, webhooks). Stops on SIGTERM/SIGINT after the current
//! cycle (an apply in progress finishes and releases the lock).
//!
//! At start the soft fd limit is raised to the hard one (sockets, SSH masters
//! and Git share it) and the HTTP connection cap is kept to half of it.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::controller::apps::{Apps, IndexSource, Reader, Template};
use crate::controller::{Mode, SshOptionsTemplate};
use crate::secret::Secret;
use crate::server::{self, ServerState};
use crate::source::{GitAuth, GitRef, Source};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Git repository holding the Kamal config (`file://…`, `ssh://…`, or a path).
    #[arg(long, conflicts_with = "dir")]
    pub repo: Option<String>,
    /// Branch to follow.
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// Follow the highest tag matching this glob (e.g. `v*`) instead of a branch.
    #[arg(long)]
    pub tag: Option<String>,
    /// Pin a commit instead of following a branch.
    #[arg(long, conflicts_with = "tag")]
    pub commit: Option<String>,
    /// File holding a token for `https://` repositories.
    #[arg(long)]
    pub git_token_file: Option<PathBuf>,
    /// Private key for `ssh://` repositories.
    #[arg(long)]
    pub git_ssh_key: Option<PathBuf>,
    /// known_hosts for the Git server's host key (default: `--known-hosts`).
    #[arg(long)]
    pub git_known_hosts: Option<PathBuf>,
    /// CA certificates (PEM) trusted for `https://` repositories besides
    /// the system's, e.g. a private CA (as git's `http.sslCAInfo`).
    #[arg(long, env = "GIT_SSL_CAINFO")]
    pub git_ca_file: Option<PathBuf>,
    /// Apply only signed revisions: `head` (the commit to apply is signed),
    /// `tag` (the followed annotated tag is; with `--tag`) or `tag_and_head`.
    /// An unsigned or badly signed revision is not checked out: the fleet
    /// keeps the last verified one.
    #[arg(long, value_enum, requires = "repo")]
    pub verify: Option<crate::source::verify::VerifyMode>,
    /// Trusted SSH signing keys, as an `allowed_signers` file (`ssh-keygen
    /// -Y verify`'s format; namespace `git`).
    #[arg(long, requires = "verify")]
    pub allowed_signers: Option<PathBuf>,
    /// Trusted OpenPGP keys (armored public keys).
    #[arg(long, requires = "verify")]
    pub openpgp_keyring: Option<PathBuf>,
    /// The age key file that decrypts SOPS-encrypted `.kamal/secrets*` in
    /// the repository (in Kubernetes: a Secret the chart mounts).
    #[arg(long, env = "SOPS_AGE_KEY_FILE")]
    pub age_key_file: Option<PathBuf>,
    /// A `berth.yml` kept outside the repository (a Kubernetes ConfigMap):
    /// used instead of the repository's own
    #[arg(long)]
    pub apps_file: Option<PathBuf>,
    /// Where berth keeps its memory across restarts (the history database:
    /// cycles, drift episodes, suspensions, parked revisions, rollbacks).
    /// Default: `state` beside the checkout directory.
    #[arg(long, env = "BERTH_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Keep no history (nothing survives a restart; no rollback).
    #[arg(long, conflicts_with = "state_dir")]
    pub no_history: bool,
    /// Cycles kept per app instance in the history.
    #[arg(long, default_value_t = 1000)]
    pub history_max_cycles: u32,
    /// Oldest history kept (`30d`, `72h`).
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    pub history_max_age: std::time::Duration,
    /// A local directory instead of a repository (development).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Where the repository is checked out.
    #[arg(
        long,
        env = "BERTH_CHECKOUT",
        default_value = "/var/tmp/berth/checkout"
    )]
    pub checkout: PathBuf,
    /// The Kamal config inside the repository.
    #[arg(short = 'c', long = "config-file", default_value = "config/deploy.yml")]
    pub config_file: PathBuf,
    /// Destination: merges `deploy.<dest>.yml`, reads `.kamal/secrets.<dest>`.
    #[arg(short = 'd', long)]
    pub destination: Option<String>,
    /// App name in metrics and the API (default: the config's service).
    #[arg(long)]
    pub app: Option<String>,
    /// `auto` applies; `detect` only plans and reports. With a berth.yml,
    /// `detect` overrides every app's policy (a global safety switch).
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,
    /// Revert hand-made drift (with `auto`); without it only new revisions are
    /// applied. With a berth.yml, `false` overrides every app's policy.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub self_heal: bool,
    /// Poll interval (`30s`, `5m`).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub interval: std::time::Duration,
    /// Address of the status page, metrics, API and webhooks.
    #[arg(long, env = "BERTH_LISTEN", default_value = "127.0.0.1:9090")]
    pub listen: std::net::SocketAddr,
    /// known_hosts holding the fleet's host keys (checked strictly; default:
    /// the SSH client's own, `~/.ssh/known_hosts`).
    #[arg(long)]
    pub known_hosts: Option<PathBuf>,
    /// Trust and record the key of a host seen for the first time (TOFU);
    /// a changed key is still refused.
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// File holding the bearer token of the write API.
    #[arg(long)]
    pub api_token_file: Option<PathBuf>,
    /// File holding the webhook secret (GitHub/Gitea HMAC, GitLab token).
    #[arg(long)]
    pub webhook_secret_file: Option<PathBuf>,
    /// Notification providers (webhook, Slack, GitHub/GitLab/Gitea commit
    /// statuses) and their secret files: the operator's, never the
    /// repository's (docs/operations.md, "Notifications").
    #[arg(long, env = "BERTH_NOTIFICATIONS_FILE")]
    pub notifications_file: Option<PathBuf>,
    /// The status page's public address (`https://berth.example.com`),
    /// linked from notifications and commit statuses.
    #[arg(long, env = "BERTH_EXTERNAL_URL")]
    pub external_url: Option<String>,
    /// Log format: `text` (human) or `json` (one object per line). Level via
    /// `RUST_LOG` (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Time a client has to send a request's head (default 10s). Hidden: for
    /// tests; the defaults are documented in docs/security.md.
    #[arg(long, hide = true, value_parser = humantime::parse_duration)]
    pub http_header_read_timeout: Option<std::time::Duration>,
    /// Close a connection on which nothing moved this long (default 30s).
    #[arg(long, hide = true, value_parser = humantime::parse_duration)]
    pub http_idle_timeout: Option<std::time::Duration>,
    /// Time a handler, request body included, may take (default 30s).
    #[arg(long, hide = true, value_parser = humantime::parse_duration)]
    pub http_request_timeout: Option<std::time::Duration>,
    /// Concurrent HTTP connections (default 512, at most half the fd limit).
    #[arg(long, hide = true)]
    pub http_max_connections: Option<usize>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub(crate) fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// `--state-dir`, or `state` beside the checkout directory.
pub fn state_dir(args: &Args) -> PathBuf {
    args.state_dir.clone().unwrap_or_else(|| {
        args.checkout
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| p.join("state"))
            .unwrap_or_else(|| args.checkout.join("state"))
    })
}

/// A secret file's content, trimmed. Empty is refused: an empty token or an
/// HMAC under the empty key is what anyone can send. The error names the
/// file, never its content.
fn read_secret(p: &Option<PathBuf>) -> anyhow::Result<Option<Secret>> {
    let Some(p) = p else { return Ok(None) };
    let text =
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
    let value = text.trim();
    if value.is_empty() {
        anyhow::bail!(
            "secret file {} is empty (or only whitespace); refusing to start",
            p.display()
        );
    }
    Ok(Some(Secret::new(value)))
}

fn http_limits(args: &Args, fd_limit: Option<u64>) -> server::serve::Limits {
    let d = server::serve::Limits::default();
    server::serve::Limits {
        header_read_timeout: args
            .http_header_read_timeout
            .unwrap_or(d.header_read_timeout),
        idle_timeout: args.http_idle_timeout.unwrap_or(d.idle_timeout),
        request_timeout: args.http_request_timeout.unwrap_or(d.request_timeout),
        max_connections: server::serve::cap_for_fd_limit(
            args.http_max_connections.unwrap_or(d.max_connections),
            fd_limit,
        ),
    }
}

pub fn run(args: &Args) -> anyhow::Result<super::ExitStatus> {
    init_logging(args.log_format);
    // Before anything is fetched: a bad secret file is a start-up error.
    let git_token = read_secret(&args.git_token_file)?;
    let api_token = read_secret(&args.api_token_file)?;
    let webhook_secret = read_secret(&args.webhook_secret_file)?;
    if let Some(ca) = &args.git_ca_file {
        // SAFETY: nothing has fetched yet and no other thread runs.
        unsafe { crate::source::trust_ca_file(ca) }?;
    }
    if let Some(u) = &args.external_url
        && !(u.starts_with("https://") || u.starts_with("http://"))
    {
        anyhow::bail!("--external-url {u:?} should be an http:// or https:// address");
    }
    let notifications = match &args.notifications_file {
        Some(f) => Some(crate::notify::config::load(f).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let fd_limit = match server::serve::raise_fd_limit() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the fd limit");
            rustix::process::getrlimit(rustix::process::Resource::Nofile).current
        }
    };
    let limits = http_limits(args, fd_limit);
    let age_keys = match &args.age_key_file {
        Some(p) => Some(Arc::new(
            crate::config::sops::AgeKeys::load(p).map_err(anyhow::Error::msg)?,
        )),
        None => None,
    };
    let trust = match args.verify {
        None => None,
        Some(mode) => {
            use crate::source::verify::{Trust, VerifyMode};
            if mode != VerifyMode::Head && args.tag.is_none() {
                anyhow::bail!("--verify {mode:?} verifies the followed tag: give --tag PATTERN");
            }
            if args.allowed_signers.is_none() && args.openpgp_keyring.is_none() {
                anyhow::bail!(
                    "--verify needs --allowed-signers FILE and/or --openpgp-keyring FILE"
                );
            }
            Some(Arc::new(Trust::load(
                mode,
                args.allowed_signers.as_deref(),
                args.openpgp_keyring.as_deref(),
            )?))
        }
    };
    let source = match (&args.repo, &args.dir) {
        // `<checkout>/index` follows the index (`berth.yml`);
        // `<checkout>/instances/…` holds one checkout per app instance
        // (`source::instance_checkout`; an `apps/` left by an older berth
        // is not read).
        (Some(url), _) => Source::Git {
            url: url.clone(),
            reference: match (&args.tag, &args.commit) {
                (Some(t), _) => GitRef::Tag(t.clone()),
                (None, Some(c)) => GitRef::Commit(c.clone()),
                (None, None) => GitRef::Branch(args.branch.clone()),
            },
            checkout: args.checkout.join("index"),
            auth: GitAuth {
                ssh_key: args.git_ssh_key.clone(),
                known_hosts: args
                    .git_known_hosts
                    .clone()
                    .or_else(|| args.known_hosts.clone()),
                token: git_token,
            },
            trust: trust.clone(),
        },
        (None, Some(d)) => Source::Dir(d.clone()),
        (None, None) => anyhow::bail!("give --repo URL or --dir PATH"),
    };
    for kh in [&args.known_hosts, &args.git_known_hosts]
        .into_iter()
        .flatten()
    {
        super::check_known_hosts(kh)?;
    }
    let template = Template {
        source: source.clone(),
        checkout_root: args.checkout.clone(),
        app: args.app.clone(),
        config_file: args.config_file.clone(),
        destination: args.destination.clone(),
        mode: args.mode,
        self_heal: args.self_heal,
        interval: args.interval,
        ssh: SshOptionsTemplate {
            known_hosts: args.known_hosts.clone(),
            accept_new_host_keys: args.accept_new_host_keys,
        },
        age_keys,
    };
    // A `berth.yml` at the repository root lists many apps; without one the
    // repository is one app (`-c`, `-d`). Read again every interval: a
    // merged change to it is followed without a restart.
    let index_source = match &args.apps_file {
        Some(f) => IndexSource::File(f.clone()),
        None => IndexSource::Repo(source),
    };
    let mut reader = Reader::new(index_source, template);
    // At start, an index that does not load is an error (nothing runs yet).
    let first = reader.load()?;
    let apps = if args.no_history {
        Apps::new()
    } else {
        let dir = state_dir(args);
        let retention = crate::history::Retention {
            max_cycles: args.history_max_cycles.max(1),
            max_age: args.history_max_age,
        };
        let history = crate::history::History::open(&dir, retention)
            .with_context(|| format!("cannot keep the history in {}", dir.display()))?;
        Apps::with_history(history)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        // Subscribed before the first cycle: its notices are not missed.
        let notifier = match &notifications {
            Some(settings) => {
                let n = crate::notify::Notifier::start(settings, args.external_url.clone())?;
                tracing::info!(providers = settings.providers.len(), "notifications on");
                Some(n)
            }
            None => None,
        };
        let stats = notifier.as_ref().map(|n| n.stats());
        if let Some(n) = notifier {
            tokio::spawn(n.run(apps.subscribe(), shutdown.clone()));
        }
        let state = Arc::new(ServerState {
            apps: apps.clone(),
            api_token,
            webhook_secret,
            notifications: stats,
        });
        apps.begin(first).await;
        let listener = server::serve::bind(args.listen)
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        tracing::info!(
            address = %listener.local_addr()?,
            apps = apps.controllers().len(),
            max_connections = limits.max_connections,
            fd_limit,
            "serving"
        );
        // Directory mode: file changes trigger a cycle (debounced), no polling wait.
        let _watcher = match &args.dir {
            Some(d) if args.repo.is_none() => Some(watch_dir(d, apps.clone())?),
            _ => None,
        };
        let follower = tokio::spawn(apps.clone().follow(reader, args.interval, shutdown.clone()));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let server = tokio::spawn(server::serve::serve(
            listener,
            server::router(state),
            limits,
            shutdown.clone(),
        ));
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down after the current cycle");
        // Every loop stops after its current cycle; the server stops
        // accepting, open connections finish their request.
        let _ = stop.send(true);
        let _ = server.await;
        let _ = follower.await;
        anyhow::Ok(())
    })?;
    Ok(super::ExitStatus::Success)
}

/// Watch `dir` recursively; a burst of changes triggers the index and every
/// app once, after 300 ms of quiet (editors write files in several steps).
fn watch_dir(dir: &std::path::Path, apps: Arc<Apps>) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            let _ = tx.send(());
        }
    })
    .context("cannot watch the directory")?;
    watcher
        .watch(dir, notify::RecursiveMode::Recursive)
        .with_context(|| format!("cannot watch {}", dir.display()))?;
    std::thread::spawn(move || {
        while rx.recv().is_ok() {
            // Debounce: wait until 300 ms pass without another change.
            while rx
                .recv_timeout(std::time::Duration::from_millis(300))
                .is_ok()
            {}
            tracing::info!("configuration directory changed");
            apps.trigger_all(crate::controller::Trigger::Files);
        }
    });
    Ok(watcher)
}
