//! The typed Kamal 2 configuration, after validation and destination merge.
//!
//! Values keep Kamal's semantics rather than Rust convenience where the two
//! differ: e.g. an empty env value renders as a bare `--env KEY`, so it is
//! kept as [`ArgValue::Bare`] instead of an empty string.

use crate::config::yaml::Mark;

/// A value passed through Kamal's `argumentize` (`--env`, `--label`,
/// `--log-opt`): `KEY=value`, `KEY=false`, or a bare `KEY`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgValue {
    /// A present value (Ruby's `present?`): rendered `KEY=value`.
    Value(String),
    /// `false`: rendered `KEY=false`.
    False,
    /// nil or a blank string: rendered as the bare `KEY`.
    Bare,
}

impl ArgValue {
    /// `KEY=value` / `KEY=false` / `KEY`, as Kamal's `argumentize` renders it.
    pub fn render(&self, key: &str) -> String {
        match self {
            ArgValue::Value(v) => format!("{key}={v}"),
            ArgValue::False => format!("{key}=false"),
            ArgValue::Bare => key.to_string(),
        }
    }
}

/// A value passed through Kamal's `optionize` (`--key value` / `--key`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptValue {
    /// `true` or nil: the flag alone.
    Flag,
    /// Any other scalar: the flag followed by the value.
    Value(String),
    /// An array: the flag repeated for each element.
    List(Vec<OptValue>),
}

pub type Labels = Vec<(String, ArgValue)>;
pub type DockerOptions = Vec<(String, OptValue)>;

/// The whole deploy configuration for one destination.
#[derive(Clone, Debug)]
pub struct Config {
    pub service: String,
    /// The image name without registry or tag (defaults to the service name
    /// for a `localhost` registry, as Kamal does).
    pub image: String,
    pub destination: Option<String>,
    pub labels: Labels,
    pub volumes: Vec<String>,
    pub registry: Registry,
    /// Roles in Kamal's order (sorted by name).
    pub roles: Vec<Role>,
    pub env: EnvSpec,
    pub asset_path: Option<String>,
    pub hooks_path: String,
    pub hooks_output: HooksOutput,
    pub secrets_path: String,
    pub error_pages_path: Option<String>,
    pub require_destination: bool,
    pub primary_role: String,
    pub allow_empty_roles: bool,
    pub retain_containers: u32,
    pub minimum_version: Option<String>,
    pub readiness_delay: u64,
    pub deploy_timeout: u64,
    pub drain_timeout: u64,
    /// `stop_timeout` (Kamal 2.12): `docker stop -t` for every role that
    /// does not set its own.
    pub stop_timeout: Option<u64>,
    pub run_directory: Option<String>,
    pub ssh: Ssh,
    pub builder: Builder,
    pub accessories: Vec<Accessory>,
    pub sshkit: Sshkit,
    pub boot: Boot,
    pub logging: Logging,
    pub aliases: Vec<(String, String)>,
    /// `output:` (Kamal 2.12): where `kamal` ships its own command logs.
    /// Validated, not used: berth logs to stderr and serves `/metrics`.
    pub output: Output,
    /// berth's own settings from the top-level `x-berth:` block.
    pub berth: BerthSettings,
    /// Every secret key the config names (env `secret:` entries, registry
    /// credentials), with its position: checked against the secrets
    /// before anything is rendered.
    pub secret_refs: Vec<SecretRef>,
    /// What berth went on without (ERB it cannot evaluate in a section it
    /// never reads), located like errors.
    pub warnings: Vec<crate::config::ConfigError>,
}

/// A secret key named by the config, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    pub key: String,
    pub mark: Mark,
    pub path: String,
}

/// `x-berth:` — berth's per-app settings, ignored by real Kamal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BerthSettings {
    /// The image version (tag) the fleet should run. A config PR that
    /// changes it is a deploy. A destination file may override it.
    pub version: Option<String>,
    /// Remove containers of this service that no role or accessory declares.
    pub prune: bool,
    /// `x-berth.image_digest` (or `version: tag@sha256:…`): the image the
    /// version must be; pulled by digest, a host whose image differs
    /// refuses to boot.
    pub image_digest: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    Literal(String),
    /// `[NAME]`: looked up in the secrets.
    Secret(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registry {
    pub server: Option<String>,
    pub username: Option<Credential>,
    pub password: Option<Credential>,
}

impl Registry {
    /// Kamal's `local?`: a `localhost:PORT` registry it runs itself.
    pub fn is_local(&self) -> bool {
        self.server
            .as_deref()
            .is_some_and(|s| s == "localhost" || s.starts_with("localhost:"))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostEntry {
    pub host: String,
    pub tags: Vec<String>,
    pub mark: Mark,
}

/// Whether a role runs behind kamal-proxy, and with which settings.
#[derive(Clone, Debug, PartialEq)]
pub enum RoleProxy {
    Off,
    On(Box<ProxySpec>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Role {
    pub name: String,
    pub hosts: Vec<HostEntry>,
    pub cmd: Option<String>,
    /// `options:` without `restart`, which is [`Role::restart`].
    pub options: DockerOptions,
    /// `options.restart` (Kamal 2.12): the `--restart` policy; `None`:
    /// `unless-stopped`.
    pub restart: Option<String>,
    /// The role's own `stop_timeout` (Kamal 2.12).
    pub stop_timeout: Option<u64>,
    /// Effective logging: root logging deep-merged with the role's.
    pub logging: Logging,
    pub proxy: RoleProxy,
    /// Effective custom labels (root labels, then the role's).
    pub labels: Labels,
    /// The role's own env (merged with root and tag envs per host by
    /// `desired`).
    pub env: EnvSpec,
    pub asset_path: Option<String>,
    pub mark: Mark,
}

impl Role {
    pub fn running_proxy(&self) -> bool {
        matches!(self.proxy, RoleProxy::On(_))
    }
}

/// `env:` in either of Kamal's shapes, normalised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvSpec {
    pub clear: Vec<(String, ArgValue)>,
    /// `NAME` or `NAME:SECRET_KEY` entries, as written.
    pub secret: Vec<String>,
    /// Only on the root env: per-host-tag envs.
    pub tags: Vec<(String, EnvSpec)>,
}

impl EnvSpec {
    /// Kamal's `Env#merge`: clear values override, secret keys union.
    pub fn merge(&self, other: &EnvSpec) -> EnvSpec {
        let mut clear = self.clear.clone();
        for (k, v) in &other.clear {
            if let Some(slot) = clear.iter_mut().find(|(ck, _)| ck == k) {
                slot.1 = v.clone();
            } else {
                clear.push((k.clone(), v.clone()));
            }
        }
        let mut secret = self.secret.clone();
        for s in &other.secret {
            if !secret.contains(s) {
                secret.push(s.clone());
            }
        }
        EnvSpec {
            clear,
            secret,
            tags: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum HooksOutput {
    #[default]
    Default,
    All(String),
    PerHook(Vec<(String, String)>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ssl {
    Off,
    /// Let's Encrypt via kamal-proxy.
    Auto,
    /// Custom certificate: names of the secrets holding the PEMs.
    Custom {
        certificate_pem: String,
        private_key_pem: String,
    },
}

/// kamal-proxy settings for one role or accessory (root `proxy:` deep-merged
/// with the role's own).
#[derive(Clone, Debug, PartialEq)]
pub struct ProxySpec {
    pub hosts: Vec<String>,
    pub app_port: String,
    pub ssl: Ssl,
    pub ssl_redirect: Option<bool>,
    pub forward_headers: Option<bool>,
    pub response_timeout: Option<String>,
    pub path_prefixes: Vec<String>,
    pub strip_path_prefix: Option<bool>,
    pub healthcheck_interval: Option<String>,
    pub healthcheck_path: Option<String>,
    pub healthcheck_timeout: Option<String>,
    pub buffer_requests: bool,
    pub buffer_responses: bool,
    pub buffer_memory: Option<String>,
    pub max_request_body: Option<String>,
    pub max_response_body: Option<String>,
    pub log_request_headers: Option<Vec<String>>,
    pub log_response_headers: Option<Vec<String>>,
    pub run: Option<ProxyRun>,
}

/// `proxy.run`: how berth/Kamal boots the kamal-proxy container itself.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyRun {
    pub http_port: String,
    pub https_port: String,
    pub metrics_port: Option<String>,
    pub debug: bool,
    pub log_max_size: Option<String>,
    pub publish: bool,
    pub bind_ips: Option<Vec<String>>,
    pub registry: Option<String>,
    pub repository: String,
    pub version: String,
    pub options: DockerOptions,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathSpec {
    /// Where the entry is written, for errors about the file it names.
    pub mark: Mark,
    pub path: String,
    pub local: String,
    pub remote: String,
    pub mode: Option<String>,
    pub owner: Option<String>,
    pub options: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Accessory {
    pub name: String,
    /// Container name: `service:` or `<service>-<name>`.
    pub service_name: String,
    /// Image including the accessory registry's server, as Kamal runs it.
    pub image: String,
    pub registry: Option<Registry>,
    pub hosts: Vec<String>,
    pub cmd: Option<String>,
    pub port: Option<String>,
    pub labels: Labels,
    /// `options:` without `restart`, which is [`Accessory::restart`].
    pub options: DockerOptions,
    /// `options.restart` (Kamal 2.12); `None`: `unless-stopped`.
    pub restart: Option<String>,
    pub env: EnvSpec,
    pub files: Vec<PathSpec>,
    pub directories: Vec<PathSpec>,
    pub volumes: Vec<String>,
    pub network: String,
    pub proxy: Option<ProxySpec>,
    pub mark: Mark,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SshConfigFiles {
    Default,
    Ignore,
    Files(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ssh {
    pub user: String,
    pub port: String,
    /// Jump host, normalised to `user@host` (default user root, as Kamal).
    pub proxy: Option<String>,
    pub proxy_command: Option<String>,
    pub log_level: Option<String>,
    pub keys_only: Option<bool>,
    pub keys: Vec<String>,
    /// Secret names (or, deprecated, inline keys) of private keys.
    pub key_data: Vec<String>,
    pub config: SshConfigFiles,
    /// `forward_agent` (Kamal 2.12). Validated; berth never forwards an
    /// agent (its sessions run docker and sh, which need none), so `true`
    /// is a warning.
    pub forward_agent: Option<bool>,
}

impl Ssh {
    /// The SSH user's home on the hosts (where `$PWD`-relative Kamal paths,
    /// env files, locks and the audit log live).
    pub fn home(&self) -> String {
        if self.user == "root" {
            "/root".into()
        } else {
            format!("/home/{}", self.user)
        }
    }
}

impl Default for Ssh {
    fn default() -> Self {
        Ssh {
            user: "root".into(),
            port: "22".into(),
            proxy: None,
            proxy_command: None,
            log_level: None,
            keys_only: None,
            keys: Vec::new(),
            key_data: Vec::new(),
            config: SshConfigFiles::Default,
            forward_agent: None,
        }
    }
}

/// Kamal's default `--restart` policy, when `options.restart` is not set.
pub const DEFAULT_RESTART: &str = "unless-stopped";

impl Role {
    /// The `--restart` policy Kamal 2.12 renders (`restart_policy`).
    pub fn restart_policy(&self) -> &str {
        self.restart.as_deref().unwrap_or(DEFAULT_RESTART)
    }
}

impl Accessory {
    /// The `--restart` policy Kamal 2.12 renders (`restart_policy`).
    pub fn restart_policy(&self) -> &str {
        self.restart.as_deref().unwrap_or(DEFAULT_RESTART)
    }
}

impl Config {
    /// `docker stop -t` for a role's old containers, as Kamal 2.12's
    /// `stop_args`: the role's `stop_timeout`, else the root one, else
    /// `drain_timeout` without the proxy (with it, kamal-proxy drained the
    /// container already) and docker's default with it.
    pub fn stop_timeout(&self, role: &Role) -> Option<u64> {
        role.stop_timeout
            .or(self.stop_timeout)
            .or((!role.running_proxy()).then_some(self.drain_timeout))
    }
}

/// `output:` (Kamal 2.12), validated as Kamal validates it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// `output.otel.endpoint`.
    pub otel_endpoint: Option<String>,
    /// `output.file.path`.
    pub file_path: Option<String>,
}

/// `builder:` is validated (so the same file stays valid for Kamal) but not
/// used: berth deploys images that CI already built.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Builder {
    pub arch: Vec<String>,
    pub remote: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sshkit {
    pub max_concurrent_starts: Option<i64>,
    pub pool_idle_timeout: Option<i64>,
    pub dns_retries: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootLimit {
    Hosts(u64),
    Percent(u64),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Boot {
    pub limit: Option<BootLimit>,
    pub wait: Option<u64>,
    pub parallel_roles: bool,
}

impl Boot {
    /// Hosts per batch for a fleet of `host_count` hosts (Kamal's rule:
    /// a percentage rounds down but is at least one).
    pub fn batch_size(&self, host_count: usize) -> usize {
        match self.limit {
            None => host_count.max(1),
            Some(BootLimit::Hosts(n)) => (n as usize).max(1),
            Some(BootLimit::Percent(p)) => ((host_count as u64 * p / 100) as usize).max(1),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Logging {
    pub driver: Option<String>,
    pub options: Vec<(String, ArgValue)>,
}

impl Config {
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.iter().find(|r| r.name == name)
    }

    /// `<service>[-<destination>]`: names the env dir, lock and audit log.
    pub fn service_and_destination(&self) -> String {
        crate::kamal::service_and_destination(&self.service, self.destination.as_deref())
    }

    /// `registry/image`, as Kamal's `repository`.
    pub fn repository(&self) -> String {
        match &self.registry.server {
            Some(server) => format!("{server}/{}", self.image),
            None => self.image.clone(),
        }
    }

    /// Every host, app roles first then accessories, deduplicated in order.
    pub fn all_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = Vec::new();
        let role_hosts = self
            .roles
            .iter()
            .flat_map(|r| r.hosts.iter().map(|h| &h.host));
        let acc_hosts = self.accessories.iter().flat_map(|a| a.hosts.iter());
        for h in role_hosts.chain(acc_hosts) {
            if !hosts.contains(h) {
                hosts.push(h.clone());
            }
        }
        hosts
    }
}
