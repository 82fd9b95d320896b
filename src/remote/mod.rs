//! `remote`: SSH to the fleet's hosts. One multiplexed OpenSSH connection per
//! host (the `openssh` crate: a ControlMaster per host), opened on first use
//! and kept warm across reconcile cycles; every command is an argv turned into
//! one remote string by [`crate::shell::join`]. A one-shot run
//! ([`Lifetime::OneShot`]: `reconcile --dry-run`) reaches hosts in berth's
//! own process instead where that connects as OpenSSH would ([`direct`]),
//! and otherwise differs only in its choice of key exchange;
//! [`Connections::phase_times`] says where its time went.
//!
//! Host keys are verified: `StrictHostKeyChecking=yes` against the user's
//! known_hosts or `--known-hosts FILE`; accepting a new key on first contact
//! must be asked for explicitly.
//!
//! `engine`: a host's Docker Engine API through the same connection
//! ([`Connections::engine_snapshot`], [`Connections::engine_events`]).

mod direct;
mod engine;

pub use engine::{Snapshot, percent_encode};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder};

/// Seconds an SSH master with no client stays up. berth closes its masters
/// when it exits; this bounds the ones a killed berth leaves behind. The
/// controller's event watchers keep their hosts' masters busy between cycles.
const MASTER_IDLE: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(300) {
    Some(n) => n,
    None => unreachable!(),
};
use tokio::sync::Mutex;

use crate::config::Ssh;
use crate::shell;

/// How to reach hosts: the config's `ssh:` plus berth's own options.
#[derive(Clone, Debug)]
pub struct SshOptions {
    pub user: String,
    pub port: u16,
    pub keys: Vec<PathBuf>,
    pub keys_only: bool,
    /// Jump host (`user@host[:port]`).
    pub jump: Option<String>,
    pub proxy_command: Option<String>,
    /// Read `~/.ssh/config` (Kamal's `ssh.config`, default true).
    pub use_ssh_config: bool,
    /// `ssh.config` naming files: those instead of `~/.ssh/config`.
    pub config_files: Vec<PathBuf>,
    /// `ssh.key_data`: private keys given as text, written to private files
    /// beside berth's ssh_config and offered like `ssh.keys`.
    pub key_data: Vec<crate::secret::Secret>,
    pub known_hosts: Option<PathBuf>,
    /// An ssh-agent offers its keys (`SSH_AUTH_SOCK` is set where berth
    /// runs): OpenSSH offers them before any key file. `false` writes
    /// `IdentityAgent none`, so no agent is asked.
    pub agent: bool,
    pub accept_new_host_keys: bool,
    pub connect_timeout: Duration,
    /// Where control sockets and berth's generated ssh_config live.
    pub control_dir: PathBuf,
    /// What the connections are for: a one-shot run (`reconcile --dry-run`:
    /// one observation per host, then exit) or a long-lived one (the
    /// controller, an apply).
    pub lifetime: Lifetime,
}

/// How long berth will use a host's connection: the one choice by which a
/// one-shot run differs from the controller. The controller makes one
/// ControlMaster per host (the only process: channels are opened by berth
/// itself through its socket, natively); a one-shot run connects in process
/// ([`direct`]) where it can, else the same way. Host keys are checked as
/// strictly either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lifetime {
    /// Kept warm across cycles (the controller) or many commands (an apply).
    #[default]
    Persistent,
    /// One observation, then closed: the connection's own set-up is most of
    /// what the run costs, so it is made in process where it can be (no
    /// `ssh` started, [`direct`]) and its key exchange is the one cheapest
    /// for the host (see [`kex_preference`]).
    OneShot,
}

impl SshOptions {
    pub fn from_config(ssh: &Ssh, home: Option<PathBuf>) -> SshOptions {
        let expand = |p: &str| match (p.strip_prefix("~/"), &home) {
            (Some(rest), Some(h)) => h.join(rest),
            _ => PathBuf::from(p),
        };
        SshOptions {
            user: ssh.user.clone(),
            port: ssh.port.parse().unwrap_or(22),
            keys: ssh.keys.iter().map(|k| expand(k)).collect(),
            keys_only: ssh.keys_only.unwrap_or(false),
            jump: ssh.proxy.clone(),
            proxy_command: ssh.proxy_command.clone(),
            use_ssh_config: !matches!(ssh.config, crate::config::SshConfigFiles::Ignore),
            config_files: match &ssh.config {
                crate::config::SshConfigFiles::Files(files) => {
                    files.iter().map(|f| expand(f)).collect()
                }
                _ => Vec::new(),
            },
            key_data: ssh
                .key_data
                .iter()
                .map(|k| crate::secret::Secret::new(k.clone()))
                .collect(),
            known_hosts: None,
            agent: std::env::var_os("SSH_AUTH_SOCK").is_some_and(|s| !s.is_empty()),
            accept_new_host_keys: false,
            connect_timeout: Duration::from_secs(10),
            control_dir: std::env::temp_dir().join(format!("berth-ssh-{}", std::process::id())),
            lifetime: Lifetime::Persistent,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{host}: cannot connect: {message}")]
    Connect { host: String, message: String },
    #[error(
        "{host}: host key verification failed: its key is not in known_hosts (pass --known-hosts FILE, or --accept-new-host-keys to trust a first contact)"
    )]
    HostKey { host: String },
    #[error(
        "{host}: host key verification failed: the host's key has CHANGED since it was recorded in known_hosts (a reinstalled host, or someone in the middle); berth will not connect until the entry is corrected"
    )]
    HostKeyChanged { host: String },
    #[error("{host}: `{command}` failed: {message}")]
    Command {
        host: String,
        command: String,
        message: String,
    },
}

/// The output of a remote command.
#[derive(Debug)]
pub struct RemoteOutput {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for RemoteOutput {
    fn from(out: std::process::Output) -> Self {
        RemoteOutput {
            status: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// A command on `host` failed to run (not: ran and failed).
fn command_error(host: &str, argv: &[String], e: &dyn std::fmt::Display) -> RemoteError {
    RemoteError::Command {
        host: host.to_string(),
        command: argv.first().cloned().unwrap_or_default(),
        message: e.to_string(),
    }
}

impl RemoteOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

/// A host's connection, once made.
type Slot = Arc<Mutex<Option<Arc<Session>>>>;

/// A byte stream both ways: an SSH channel or a forwarded unix socket.
trait Duplex: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Duplex for T {}

/// A host's in-process connection ([`direct`]), as far as it went.
#[derive(Default)]
enum DirectState {
    #[default]
    Untried,
    Open(Arc<direct::Session>),
    /// Nothing answered: the same error for every later use.
    Unreachable(String),
    /// OpenSSH connects this host instead.
    OpenSsh,
}

type DirectSlot = Arc<Mutex<DirectState>>;

/// A long-lived `sh` on a host reading requests from its stdin: a function
/// called there costs no SSH channel, no sshd fork and no shell start-up,
/// which is most of an observation's cost (see [`Connections::call`]).
struct Worker {
    /// OpenSSH's session for the shell; `None` on an in-process channel,
    /// which ends with its stream.
    child: Option<openssh::Child<Arc<Session>>>,
    stdin: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    stdout: tokio::io::BufReader<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    /// Functions already defined in this shell.
    defined: std::collections::HashSet<&'static str>,
    /// Ends each answer; random, so no output line can fake it.
    marker: String,
}

type WorkerSlot = Arc<Mutex<Option<Worker>>>;

/// Warm connections to hosts, shared by observe and apply.
pub struct Connections {
    opts: SshOptions,
    /// One slot per host, so hosts connect in parallel while two users of
    /// the same host share one connection.
    sessions: std::sync::Mutex<HashMap<String, Slot>>,
    /// Remote commands run so far (round trips), for metrics and benchmarks.
    commands: std::sync::atomic::AtomicU64,
    /// berth's ssh_config, written once: hosts connect in parallel and must
    /// never read it half-written.
    ssh_config: std::sync::OnceLock<Result<PathBuf, String>>,
    /// One persistent shell per host, for [`Connections::call`].
    workers: std::sync::Mutex<HashMap<String, WorkerSlot>>,
    /// This set's own directory under `control_dir` (its ssh_config, control
    /// sockets and forwarded Docker sockets; mode 0700): app instances with
    /// different SSH settings in one process never share a config file, and
    /// `close` removes it.
    dir: PathBuf,
    /// Hosts' Docker Engine APIs, once the shell probe found their sockets.
    engines: std::sync::Mutex<HashMap<String, engine::EngineSlot>>,
    /// Hosts where the probe found no unix Docker socket, and when.
    engines_absent: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    engine_batches: std::sync::atomic::AtomicU64,
    /// Hosts whose kamal-proxy state the Engine API read last time: their
    /// probe skips `docker exec kamal-proxy kamal-proxy list`.
    proxy_state_by_engine: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// kamal-proxy's state per host, kept while an event stream watches the
    /// proxy (`None` inside: changed since, read again).
    proxy_state_cache: std::sync::Mutex<HashMap<String, ProxyStateCache>>,
    /// Where this set's time went, for benchmarks.
    phases: Phases,
    /// A one-shot run's in-process SSH ([`direct`]): how, decided once
    /// (`None`: OpenSSH for every host), and each host's connection.
    direct_plan: std::sync::OnceLock<Option<Arc<direct::Plan>>>,
    direct: std::sync::Mutex<HashMap<String, DirectSlot>>,
}

/// A step of reaching hosts, timed per host ([`Connections::phase_times`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// The ControlMaster up: `ssh` started, key exchange, authentication,
    /// the control socket answering.
    Connect,
    /// A channel opened through the master for a host's persistent shell.
    Channel,
    /// A shell call (the probe), its channel's opening included.
    Call,
    /// An Engine API snapshot, its socket's forwarding included.
    Engine,
    /// Closing a host's connection (its shell, then its master).
    Close,
}

/// How often a phase ran and how long it took, summed over hosts.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PhaseTime {
    pub count: u32,
    pub total: Duration,
    pub max: Duration,
}

#[derive(Default)]
struct Phases(std::sync::Mutex<std::collections::BTreeMap<Phase, PhaseTime>>);

impl Phases {
    fn add(&self, phase: Phase, took: Duration) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let t = map.entry(phase).or_default();
        t.count += 1;
        t.total += took;
        t.max = t.max.max(took);
    }
}

/// One host's kept kamal-proxy state: the file's text and when it was read,
/// or nothing once an event said the routes may have changed.
#[derive(Default)]
struct ProxyStateCache {
    watched: bool,
    text: Option<(std::time::Instant, String)>,
}

/// A kept proxy state is used at most this long, events or not.
const PROXY_STATE_MAX_AGE: Duration = Duration::from_secs(60);

impl Connections {
    /// Whether the Engine API read `host`'s kamal-proxy state last time.
    pub fn proxy_state_by_engine(&self, host: &str) -> bool {
        self.proxy_state_by_engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(host)
    }

    /// An event stream follows `host`'s kamal-proxy (`true`) or stopped
    /// (`false`): only while one does is its state kept between cycles.
    pub fn proxy_watched(&self, host: &str, watched: bool) {
        let mut map = self
            .proxy_state_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(host.to_string()).or_default();
        entry.watched = watched;
        entry.text = None;
    }

    /// The routes of `host`'s kamal-proxy may have changed (an event, an
    /// apply): read its state again. `None`: every host.
    pub fn proxy_changed(&self, host: Option<&str>) {
        let mut map = self
            .proxy_state_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (h, e) in map.iter_mut() {
            if host.is_none_or(|x| x == h) {
                e.text = None;
            }
        }
    }

    /// The kept state of `host`'s kamal-proxy, if an event stream watches it
    /// and nothing changed since it was read.
    pub fn kept_proxy_state(&self, host: &str) -> Option<String> {
        let map = self
            .proxy_state_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let e = map.get(host)?;
        let (at, text) = e.text.as_ref()?;
        (e.watched && at.elapsed() < PROXY_STATE_MAX_AGE).then(|| text.clone())
    }

    pub fn keep_proxy_state(&self, host: &str, text: &str) {
        let mut map = self
            .proxy_state_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get_mut(host).filter(|e| e.watched) {
            e.text = Some((std::time::Instant::now(), text.to_string()));
        }
    }

    pub fn set_proxy_state_by_engine(&self, host: &str, read: bool) {
        let mut set = self
            .proxy_state_by_engine
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if read {
            set.insert(host.to_string());
        } else {
            set.remove(host);
        }
    }

    pub fn new(opts: SshOptions) -> Connections {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(|| sweep_dead_control_dirs(&opts.control_dir));
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Connections {
            dir: opts.control_dir.join(format!("c{n}")),
            opts,
            sessions: std::sync::Mutex::new(HashMap::new()),
            workers: std::sync::Mutex::new(HashMap::new()),
            commands: std::sync::atomic::AtomicU64::new(0),
            ssh_config: std::sync::OnceLock::new(),
            engines: std::sync::Mutex::new(HashMap::new()),
            engines_absent: Default::default(),
            engine_batches: std::sync::atomic::AtomicU64::new(0),
            proxy_state_by_engine: Default::default(),
            proxy_state_cache: Default::default(),
            phases: Phases::default(),
            direct_plan: std::sync::OnceLock::new(),
            direct: Default::default(),
        }
    }

    /// `host`'s in-process connection, made on first use; `None`: OpenSSH
    /// connects it (not a one-shot run, or something only OpenSSH does).
    async fn direct_session(
        &self,
        host: &str,
    ) -> Result<Option<Arc<direct::Session>>, RemoteError> {
        let plan = self.direct_plan.get_or_init(|| {
            let home = std::env::var_os("HOME").map(PathBuf::from);
            match direct::Plan::for_options(&self.opts, home.as_deref()) {
                Ok(plan) => Some(Arc::new(plan)),
                Err(why) => {
                    if self.opts.lifetime == Lifetime::OneShot {
                        tracing::debug!("hosts are reached through OpenSSH: {why}");
                    }
                    None
                }
            }
        });
        let Some(plan) = plan else {
            return Ok(None);
        };
        let slot = {
            let mut map = self.direct.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(host.to_string()).or_default().clone()
        };
        let mut state = slot.lock().await;
        if let DirectState::Untried = *state {
            let started = std::time::Instant::now();
            *state = match plan.connect(host).await {
                Ok(s) => DirectState::Open(Arc::new(s)),
                Err(direct::Failure::Unreachable(message)) => DirectState::Unreachable(message),
                Err(direct::Failure::UseOpenSsh(why)) => {
                    tracing::debug!(host, "reached through OpenSSH: {why}");
                    DirectState::OpenSsh
                }
            };
            self.phases.add(Phase::Connect, started.elapsed());
        }
        match &*state {
            DirectState::Open(s) => Ok(Some(s.clone())),
            DirectState::Unreachable(message) => Err(RemoteError::Connect {
                host: host.to_string(),
                message: message.clone(),
            }),
            DirectState::Untried | DirectState::OpenSsh => Ok(None),
        }
    }

    /// The time spent so far in each [`Phase`], over all hosts.
    pub fn phase_times(&self) -> std::collections::BTreeMap<Phase, PhaseTime> {
        self.phases
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Hosts connected in process so far ([`direct`]: a one-shot run).
    pub fn reached_in_process(&self) -> usize {
        let map = self.direct.lock().unwrap_or_else(|p| p.into_inner());
        map.values()
            .filter(|slot| {
                slot.try_lock()
                    .is_ok_and(|s| matches!(*s, DirectState::Open(_)))
            })
            .count()
    }

    /// Remote commands run so far.
    pub fn commands_run(&self) -> u64 {
        self.commands.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn options(&self) -> &SshOptions {
        &self.opts
    }

    fn ssh_config_file(&self) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        // Private: a forwarded Docker socket is root on its host.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let path = self.dir.join("ssh_config");
        let o = &self.opts;
        // Values become ssh_config lines: a newline or quote would smuggle in
        // other options. `config::decode` refuses them with their position;
        // this is the last line of defence for values from elsewhere.
        let values = o
            .keys
            .iter()
            .chain(&o.known_hosts)
            .chain(&o.config_files)
            .map(|k| k.to_string_lossy().into_owned())
            .chain(o.proxy_command.clone());
        for v in values {
            if v.chars().any(|c| c.is_control() || c == '"') {
                return Err(std::io::Error::other(
                    "an ssh setting contains a control character or a quote",
                ));
            }
        }
        let mut cfg =
            String::from("BatchMode yes\nServerAliveInterval 15\nServerAliveCountMax 3\n");
        // Here, not only as `-o` options of the master: a jump host's ssh
        // (`-J`) reads this file and none of the master's options, and its
        // key must be checked as strictly.
        cfg.push_str(if o.accept_new_host_keys {
            "StrictHostKeyChecking accept-new\n"
        } else {
            "StrictHostKeyChecking yes\n"
        });
        if let Some(kh) = &o.known_hosts {
            cfg.push_str(&format!("UserKnownHostsFile \"{}\"\n", kh.display()));
        }
        if let Some(kex) = kex_preference(o.lifetime) {
            cfg.push_str(&format!("KexAlgorithms {kex}\n"));
        }
        for k in &o.keys {
            cfg.push_str(&format!("IdentityFile \"{}\"\n", k.display()));
        }
        for (i, key) in o.key_data.iter().enumerate() {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let file = self.dir.join(format!("key_data-{i}"));
            let mut text = key.expose().trim().to_string();
            text.push('\n');
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&file)?
                .write_all(text.as_bytes())?;
            cfg.push_str(&format!("IdentityFile \"{}\"\n", file.display()));
        }
        if o.keys_only {
            cfg.push_str("IdentitiesOnly yes\n");
        }
        if !o.agent {
            cfg.push_str("IdentityAgent none\n");
        }
        if let Some(c) = &o.proxy_command {
            cfg.push_str(&format!("ProxyCommand {c}\n"));
        }
        // Never an agent on the hosts, whatever `ssh.forward_agent` or the
        // user's config (included below; the first value ssh reads wins)
        // say: the sessions berth opens through the master (native mux)
        // never ask for one either, and nothing berth runs there needs one.
        cfg.push_str("ForwardAgent no\n");
        for f in &o.config_files {
            // Relative to where berth runs, as Kamal reads them.
            let f = std::path::absolute(f)?;
            cfg.push_str(&format!("Include \"{}\"\n", f.display()));
        }
        if o.use_ssh_config
            && o.config_files.is_empty()
            && let Some(home) = std::env::var_os("HOME")
        {
            let user_cfg = PathBuf::from(home).join(".ssh/config");
            if user_cfg.exists() {
                cfg.push_str(&format!("Include \"{}\"\n", user_cfg.display()));
            }
        }
        std::fs::write(&path, cfg)?;
        Ok(path)
    }

    fn slot(&self, host: &str) -> Slot {
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(host.to_string()).or_default().clone()
    }

    async fn session(&self, host: &str) -> Result<Arc<Session>, RemoteError> {
        let slot = self.slot(host);
        let mut guard = slot.lock().await;
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let cfg = self
            .ssh_config
            .get_or_init(|| self.ssh_config_file().map_err(|e| e.to_string()))
            .clone()
            .map_err(|e| RemoteError::Connect {
                host: host.to_string(),
                message: format!("cannot write ssh config: {e}"),
            })?;
        let o = &self.opts;
        let mut b = SessionBuilder::default();
        b.user(o.user.clone())
            .port(o.port)
            .config_file(&cfg)
            .connect_timeout(o.connect_timeout)
            .control_directory(&self.dir)
            // A master outlives berth only if berth is killed; then it exits
            // once idle instead of lingering forever (ControlPersist=yes).
            .control_persist(ControlPersist::IdleFor(MASTER_IDLE))
            .known_hosts_check(if o.accept_new_host_keys {
                KnownHosts::Add
            } else {
                KnownHosts::Strict
            });
        if let Some(kh) = &o.known_hosts {
            b.user_known_hosts_file(kh);
        }
        // Per fleet host on the command line (`-J`), never in the shared
        // config: the jump host's own ssh reads that config, and a global
        // ProxyJump would route the jump host through itself. OpenSSH runs
        // a ProxyJump through `/bin/sh`, so only a value of the strict
        // `[user@]host[:port]` grammar is passed.
        if let Some(j) = &o.jump {
            match crate::config::grammar::jump_host(j) {
                None => {
                    return Err(RemoteError::Connect {
                        host: host.to_string(),
                        message: "ssh.proxy is not of the form [user@]host[:port]".into(),
                    });
                }
                // The jump host itself is reached directly.
                Some(name) if name == host.trim_matches(['[', ']']) => {}
                Some(_) => {
                    b.jump_hosts([j]);
                }
            }
        }
        let started = std::time::Instant::now();
        let session = Arc::new(b.connect_mux(host).await.map_err(|e| classify(host, &e))?);
        self.phases.add(Phase::Connect, started.elapsed());
        *guard = Some(session.clone());
        Ok(session)
    }

    /// Forget a host's connection (it broke); the next use reconnects.
    async fn forget(&self, host: &str) {
        let slot = self.slot(host);
        slot.lock().await.take();
    }

    /// Run `argv` on `host` (connecting if needed) and collect its output.
    pub async fn run(&self, host: &str, argv: &[String]) -> Result<RemoteOutput, RemoteError> {
        self.commands
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let child = self
            .spawn(host, argv, openssh::Stdio::null, openssh::Stdio::piped)
            .await?;
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| command_error(host, argv, &e))?;
        Ok(out.into())
    }

    /// Start `argv` on `host` with piped stdout. A connection kept warm may
    /// have died (idle timeout, host rebooted, sshd restarted): that fails
    /// the spawn before anything ran, so reconnect once before calling the
    /// host down (a command that failed once started is never re-run).
    async fn spawn(
        &self,
        host: &str,
        argv: &[String],
        stdin: fn() -> openssh::Stdio,
        stderr: fn() -> openssh::Stdio,
    ) -> Result<openssh::Child<Arc<Session>>, RemoteError> {
        let command = shell::join(argv);
        let mut attempt = 0;
        loop {
            let session = self.session(host).await?;
            let result = session
                .clone()
                .arc_raw_command(&command)
                .stdin(stdin())
                .stdout(openssh::Stdio::piped())
                .stderr(stderr())
                .spawn()
                .await;
            match result {
                Ok(child) => return Ok(child),
                Err(_) if attempt == 0 => {
                    attempt += 1;
                    self.forget(host).await;
                }
                Err(e) => {
                    self.forget(host).await;
                    return Err(command_error(host, argv, &e));
                }
            }
        }
    }

    /// Run `argv` on `host` with `input` on its stdin (how files, env files
    /// with secrets among them, reach a host: never through argv).
    pub async fn run_with_stdin(
        &self,
        host: &str,
        argv: &[String],
        input: &[u8],
    ) -> Result<RemoteOutput, RemoteError> {
        use tokio::io::AsyncWriteExt;
        let fail = |e: &dyn std::fmt::Display| command_error(host, argv, e);
        self.commands
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut child = self
            .spawn(host, argv, openssh::Stdio::piped, openssh::Stdio::piped)
            .await?;
        if let Some(mut stdin) = child.stdin().take() {
            // A command may exit without reading its input (a lock that is
            // already taken): its exit status, not the broken pipe, tells.
            if stdin.write_all(input).await.is_ok() {
                let _ = stdin.shutdown().await;
            }
        }
        let out = child.wait_with_output().await.map_err(|e| fail(&e))?;
        Ok(out.into())
    }

    /// Run a long-lived command (an event stream) on `host`, calling
    /// `on_line` for every line of its output until it ends.
    pub async fn stream_lines(
        &self,
        host: &str,
        argv: &[String],
        mut on_line: impl FnMut(&str),
    ) -> Result<(), RemoteError> {
        use tokio::io::AsyncBufReadExt;
        let fail = |e: &dyn std::fmt::Display| command_error(host, argv, e);
        let mut child = self
            .spawn(host, argv, openssh::Stdio::null, openssh::Stdio::null)
            .await?;
        let Some(stdout) = child.stdout().take() else {
            return Ok(());
        };
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Some(line) = lines.next_line().await.map_err(|e| fail(&e))? {
            on_line(&line);
        }
        let _ = child.wait().await;
        Ok(())
    }

    /// Call shell function `name` (defined by `body`, a POSIX sh script
    /// reading its arguments as `"$@"`) with `args` on `host`, in the host's
    /// persistent shell, in a subshell (so `exit` ends only the call).
    /// stdout and stderr come back together in `stdout`. If the persistent
    /// shell cannot be used, the call runs as a command of its own, with the
    /// same result. A call that broke its shell is run again, so `call` is
    /// for functions that only read (the observation probe).
    pub async fn call(
        &self,
        host: &str,
        name: &'static str,
        body: &'static str,
        args: &[String],
    ) -> Result<RemoteOutput, RemoteError> {
        self.call_lines(host, name, body, args, &mut |_| {}).await
    }

    /// [`Connections::call`], handing each line of output to `on_line` as
    /// it arrives (what the probe prints first can be acted on while it
    /// runs). A call run again after a broken shell hands its lines again.
    pub async fn call_lines(
        &self,
        host: &str,
        name: &'static str,
        body: &'static str,
        args: &[String],
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<RemoteOutput, RemoteError> {
        let started = std::time::Instant::now();
        let out = async {
            let slot = {
                let mut map = self.workers.lock().unwrap_or_else(|p| p.into_inner());
                map.entry(host.to_string()).or_default().clone()
            };
            let mut worker = slot.lock().await;
            for _ in 0..2 {
                if worker.is_none() {
                    *worker = self.start_worker(host).await.ok();
                }
                let Some(w) = worker.as_mut() else { break };
                match tokio::time::timeout(CALL_TIMEOUT, w.call(name, body, args, on_line)).await {
                    Ok(Ok(out)) => {
                        self.commands
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return Ok(out);
                    }
                    // A broken or stuck shell: end it, try a fresh one once.
                    _ => {
                        if let Some(child) = worker.take().and_then(|w| w.child) {
                            let _ = child.disconnect().await;
                        }
                    }
                }
            }
            // No persistent shell to be had: the same call as its own command.
            let out = self.run(host, &call_argv(name, body, args)).await?;
            out.stdout.lines().for_each(&mut *on_line);
            Ok(out)
        }
        .await;
        self.phases.add(Phase::Call, started.elapsed());
        out
    }

    async fn start_worker(&self, host: &str) -> Result<Worker, RemoteError> {
        let argv = ["sh".to_string(), "-s".to_string()];
        let marker = format!("@@berth-done-{}", random_hex(16));
        // The connection's own set-up is timed apart.
        if let Some(direct) = self.direct_session(host).await? {
            let started = std::time::Instant::now();
            let stream = direct
                .exec(&shell::join(&argv))
                .await
                .map_err(|e| command_error(host, &argv, &e))?;
            self.phases.add(Phase::Channel, started.elapsed());
            // The shell's stderr (extended data) is not read, as below.
            let (stdout, stdin) = tokio::io::split(stream);
            return Ok(Worker {
                child: None,
                stdin: Box::new(stdin),
                stdout: tokio::io::BufReader::new(Box::new(stdout)),
                defined: Default::default(),
                marker,
            });
        }
        self.session(host).await?;
        let started = std::time::Instant::now();
        let mut child = self
            .spawn(host, &argv, openssh::Stdio::piped, openssh::Stdio::null)
            .await?;
        self.phases.add(Phase::Channel, started.elapsed());
        let fail = |what: &str| command_error(host, &argv, &what);
        let stdin = child.stdin().take().ok_or_else(|| fail("no stdin"))?;
        let stdout = child.stdout().take().ok_or_else(|| fail("no stdout"))?;
        Ok(Worker {
            child: Some(child),
            stdin: Box::new(stdin),
            stdout: tokio::io::BufReader::new(Box::new(stdout)),
            defined: Default::default(),
            marker,
        })
    }

    /// Close every connection (the ControlMasters exit), hosts at once.
    pub async fn close(&self) {
        self.forget_engines();
        let mut workers: HashMap<String, WorkerSlot> = {
            let mut map = self.workers.lock().unwrap_or_else(|p| p.into_inner());
            map.drain().collect()
        };
        let mut direct: HashMap<String, DirectSlot> = {
            let mut map = self.direct.lock().unwrap_or_else(|p| p.into_inner());
            map.drain().collect()
        };
        let mut sessions: Vec<(String, Option<Slot>)> = {
            let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            map.drain().map(|(h, s)| (h, Some(s))).collect()
        };
        // A shell whose master was forgotten (it broke) still ends, and an
        // in-process connection has no master.
        let others: std::collections::BTreeSet<String> = workers
            .keys()
            .chain(direct.keys())
            .filter(|h| !sessions.iter().any(|(s, _)| s == *h))
            .cloned()
            .collect();
        sessions.extend(others.into_iter().map(|h| (h, None)));
        let mut closing = tokio::task::JoinSet::new();
        for (host, session) in sessions {
            let worker = workers.remove(&host);
            let direct = direct.remove(&host);
            closing.spawn(async move {
                let started = std::time::Instant::now();
                // The persistent shell first: it holds its session.
                if let Some(slot) = worker
                    && let Some(mut w) = slot.lock().await.take()
                {
                    // End of input ends the shell (on a channel, only a
                    // shutdown sends it: the stream's other half lives on).
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        tokio::io::AsyncWriteExt::shutdown(&mut w.stdin),
                    )
                    .await;
                    drop(w.stdin);
                    let wait = async {
                        match w.child {
                            Some(child) => {
                                let _ = child.wait().await;
                            }
                            // The channel's end: the shell has exited.
                            None => {
                                let _ =
                                    tokio::io::copy(&mut w.stdout, &mut tokio::io::sink()).await;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
                }
                if let Some(slot) = session
                    && let Some(s) = slot.lock().await.take()
                    && let Ok(s) = Arc::try_unwrap(s)
                {
                    let _ = s.close().await;
                }
                if let Some(slot) = direct
                    && let DirectState::Open(s) = std::mem::take(&mut *slot.lock().await)
                {
                    s.close().await;
                }
                started.elapsed()
            });
        }
        while let Some(done) = closing.join_next().await {
            if let Ok(took) = done {
                self.phases.add(Phase::Close, took);
            }
        }
        // Sockets and config go; the process's directory too once the last
        // set is closed (`remove_dir` only removes it empty).
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir(&self.opts.control_dir);
    }
}

/// Remove the SSH directories (`berth-ssh-<pid>` beside `control_dir`) of
/// berth processes that were killed and so never closed them: their sockets
/// lead nowhere or to masters about to exit idle. A directory whose pid is
/// alive (another berth, or a reused pid) is left alone.
fn sweep_dead_control_dirs(control_dir: &std::path::Path) {
    let (Some(parent), Some(own)) = (control_dir.parent(), control_dir.file_name()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to this process's user.
    let uid = std::fs::metadata("/proc/self").ok().map(|m| m.uid());
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("berth-ssh-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let ours = entry.metadata().is_ok_and(|m| Some(m.uid()) == uid);
        if name != own && ours && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn classify(host: &str, e: &openssh::Error) -> RemoteError {
    let text = format!(
        "{e} {}",
        std::error::Error::source(e)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    if text.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || text.contains("Host key for") && text.contains("has changed")
    {
        RemoteError::HostKeyChanged {
            host: host.to_string(),
        }
    } else if text.contains("Host key verification failed") {
        RemoteError::HostKey {
            host: host.to_string(),
        }
    } else {
        RemoteError::Connect {
            host: host.to_string(),
            message: text.trim().to_string(),
        }
    }
}

/// The SSH client's own key exchanges, the fast ones first: ML-KEM hybrid
/// (post-quantum) where the client has it, then the classical ones by their
/// cost. OpenSSH 9.x prefers sntrup761, whose key generation costs ~100 ms
/// of CPU per connection, most of a cold run on a big fleet. For a one-shot
/// run NIST P-256 (OpenSSL's) comes before curve25519 (OpenSSH's portable
/// code), which costs the host's sshd ~6 ms more per connection: the
/// observe bench measures both. Nothing is added or removed, so every
/// server the client could reach it still reaches; `None` (the client's
/// defaults) when the list cannot be read.
fn kex_preference(lifetime: Lifetime) -> Option<String> {
    static DEFAULTS: std::sync::OnceLock<Option<Vec<String>>> = std::sync::OnceLock::new();
    let defaults = DEFAULTS.get_or_init(client_kex_defaults).as_ref()?;
    let fast: &[&str] = match lifetime {
        Lifetime::Persistent => &[
            "mlkem768x25519-sha256",
            "curve25519-sha256",
            "curve25519-sha256@libssh.org",
            "ecdh-sha2-nistp256",
        ],
        Lifetime::OneShot => &[
            "mlkem768x25519-sha256",
            "ecdh-sha2-nistp256",
            "curve25519-sha256",
            "curve25519-sha256@libssh.org",
        ],
    };
    let mut ordered: Vec<&str> = fast
        .iter()
        .copied()
        .filter(|a| defaults.iter().any(|d| d == a))
        .collect();
    if ordered.is_empty() {
        return None;
    }
    ordered.extend(
        defaults
            .iter()
            .map(String::as_str)
            .filter(|a| !fast.contains(a)),
    );
    Some(ordered.join(","))
}

/// The client's default key exchanges, as `ssh -G` prints them.
fn client_kex_defaults() -> Option<Vec<String>> {
    let out = std::process::Command::new("ssh")
        .args(["-G", "-F", "none", "berth.invalid"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(
        text.lines()
            .find_map(|l| l.strip_prefix("kexalgorithms "))?
            .split(',')
            .map(str::trim)
            .filter(|a| {
                !a.is_empty()
                    && a.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-@._".contains(&b))
            })
            .map(str::to_string)
            .collect(),
    )
}

/// [`Connections::call`] as a command of its own: `sh -c` defining and
/// calling the function, stderr with stdout.
pub fn call_argv(name: &str, body: &str, args: &[String]) -> Vec<String> {
    let mut argv = vec![
        "sh".to_string(),
        "-c".to_string(),
        format!("{name}() {{\n{body}\n}}\n{name} \"$@\" 2>&1"),
        name.to_string(),
    ];
    argv.extend(args.iter().cloned());
    argv
}

/// Longest a persistent-shell call may take before the shell is given up.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

impl Worker {
    async fn call(
        &mut self,
        name: &'static str,
        body: &'static str,
        args: &[String],
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> std::io::Result<RemoteOutput> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut request = String::new();
        if !self.defined.contains(name) {
            request.push_str(&format!("{name}() {{\n{body}\n}}\n"));
        }
        // Arguments quoted by `shell`: no value is ever interpreted. The
        // marker starts a line of its own even after output without a final
        // newline.
        let mut call = vec![name.to_string()];
        call.extend(args.iter().cloned());
        request.push_str(&format!(
            "( {} ) 2>&1; printf '\\n%s %s\\n' {} \"$?\"\n",
            shell::join(&call),
            self.marker
        ));
        self.stdin.write_all(request.as_bytes()).await?;
        self.stdin.flush().await?;
        self.defined.insert(name);
        let mut out = String::new();
        loop {
            let mut line = String::new();
            if self.stdout.read_line(&mut line).await? == 0 {
                return Err(std::io::Error::other("the shell ended"));
            }
            if let Some(status) = line.strip_prefix(&self.marker) {
                // The newline printed before the marker is not output.
                if out.ends_with('\n') {
                    out.pop();
                }
                let status = status.trim().parse().ok();
                return Ok(RemoteOutput {
                    status,
                    stderr: if status == Some(0) {
                        String::new()
                    } else {
                        out.clone()
                    },
                    stdout: out,
                });
            }
            on_line(line.trim_end_matches('\n'));
            out.push_str(&line);
        }
    }
}

/// `n` random hex digits (names on hosts, markers no output can fake).
pub fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; n.div_ceil(2)];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        buf = t
            .to_le_bytes()
            .iter()
            .cycle()
            .take(buf.len())
            .copied()
            .collect();
    }
    hex::encode(buf).chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_agent_is_forwarded_whatever_the_config_says() {
        let tmp = tempfile::tempdir().unwrap();
        for set in [Some(true), Some(false), None] {
            let ssh = Ssh {
                forward_agent: set,
                ..Ssh::default()
            };
            let mut opts = SshOptions::from_config(&ssh, None);
            opts.control_dir = tmp.path().to_path_buf();
            let conns = Connections::new(opts);
            let text = std::fs::read_to_string(conns.ssh_config_file().unwrap()).unwrap();
            let forward = text.lines().position(|l| l == "ForwardAgent no");
            let include = text.lines().position(|l| l.starts_with("Include"));
            assert!(forward.is_some(), "{set:?}:\n{text}");
            assert!(include.is_none_or(|i| Some(i) > forward), "{text}");
        }
    }

    #[test]
    fn a_one_shot_run_prefers_p256_and_keeps_every_key_exchange() {
        // Without an ssh client there is nothing to reorder.
        let (Some(kept), Some(once)) = (
            kex_preference(Lifetime::Persistent),
            kex_preference(Lifetime::OneShot),
        ) else {
            return;
        };
        let set = |s: &str| s.split(',').map(str::to_string).collect::<Vec<_>>();
        let (mut a, mut b) = (set(&kept), set(&once));
        // Post-quantum first in both, where the client has it.
        assert_eq!(
            a[0].starts_with("mlkem"),
            b[0].starts_with("mlkem"),
            "{kept} / {once}"
        );
        let classical = |v: &[String]| v.iter().find(|k| !k.starts_with("mlkem")).cloned();
        assert_eq!(classical(&b).as_deref(), Some("ecdh-sha2-nistp256"));
        assert!(classical(&a).is_some_and(|k| k.starts_with("curve25519")));
        // Only reordered: every server either reaches, the other does.
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn a_proxy_state_is_kept_only_while_watched_and_unchanged() {
        let tmp = tempfile::tempdir().unwrap();
        let mut opts = SshOptions::from_config(&Ssh::default(), None);
        opts.control_dir = tmp.path().to_path_buf();
        let conns = Connections::new(opts);
        // Not watched: nothing is kept.
        conns.keep_proxy_state("h", "[]");
        assert_eq!(conns.kept_proxy_state("h"), None);
        conns.proxy_watched("h", true);
        conns.keep_proxy_state("h", "[1]");
        assert_eq!(conns.kept_proxy_state("h").as_deref(), Some("[1]"));
        // An event on this host drops it; one on another host does not.
        conns.keep_proxy_state("h", "[2]");
        conns.proxy_watched("g", true);
        conns.keep_proxy_state("g", "[3]");
        conns.proxy_changed(Some("h"));
        assert_eq!(conns.kept_proxy_state("h"), None);
        assert_eq!(conns.kept_proxy_state("g").as_deref(), Some("[3]"));
        // An apply drops every host's; a stream that stops, its host's.
        conns.proxy_changed(None);
        assert_eq!(conns.kept_proxy_state("g"), None);
        conns.keep_proxy_state("g", "[4]");
        conns.proxy_watched("g", false);
        assert_eq!(conns.kept_proxy_state("g"), None);
    }

    #[test]
    fn a_killed_berths_ssh_directory_is_swept_a_live_ones_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        // Above the kernel's largest pid: never alive.
        let dead = tmp.path().join("berth-ssh-4194399");
        let live = tmp.path().join(format!("berth-ssh-{}", std::process::id()));
        let other = tmp.path().join("berth-ssh-notapid");
        for d in [&dead, &live, &other] {
            std::fs::create_dir_all(d.join("c0")).unwrap();
        }
        sweep_dead_control_dirs(&tmp.path().join("berth-ssh-1"));
        assert!(!dead.exists());
        assert!(live.exists() && other.exists());
    }
}
