//! `desired`: what should run on each host, rendered exactly as Kamal 2.11
//! would run it.
//!
//! From a validated [`Config`], a version and the secrets, this builds per
//! host the *units* Kamal manages — one app container per role, accessories,
//! the `kamal-proxy` container and its routes, env files — each with the
//! `docker run` argv Kamal would execute (as the remote shell would split
//! Kamal's command line). Pure: no I/O. The argv is data; turning it into a
//! remote command is `shell`'s job, so no config value is ever interpreted by
//! a shell.

pub mod load;
use crate::config::words;
use crate::kamal;

use crate::config::secrets::Secrets;
use crate::config::{
    Accessory, ArgValue, Config, DockerOptions, EnvSpec, Logging, OptValue, ProxyRun, ProxySpec,
    Role, RoleProxy, Ssl,
};
use crate::secret::Secret;

pub use crate::kamal::{NETWORK, PROXY_CONTAINER};
/// Kamal's default request headers logged by kamal-proxy.
const DEFAULT_LOG_REQUEST_HEADERS: &[&str] = &["Cache-Control", "Last-Modified", "User-Agent"];
/// Kamal 2.11's minimum kamal-proxy version, the default image tag.
pub const PROXY_MIN_VERSION: &str = "v0.9.2";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("{context}: secret '{key}' not found ({files})")]
    MissingSecret {
        context: String,
        key: String,
        files: String,
    },
    #[error("servers.{role}.cmd: {source}")]
    Cmd {
        role: String,
        source: words::WordsError,
    },
    #[error("accessories.{name}.cmd: {source}")]
    AccessoryCmd {
        name: String,
        source: words::WordsError,
    },
    #[error("version {0:?} is not a valid image tag")]
    Version(String),
    #[error("no version to deploy: set `x-berth.version` in the config or pass --app-version")]
    NoVersion,
}

/// Inputs besides the config.
pub struct RenderOptions<'a> {
    /// The image tag to run.
    pub version: &'a str,
    pub secrets: &'a Secrets,
    /// The SSH user's home directory on the hosts: where Kamal's relative
    /// paths (`$PWD/...` on its command lines) point.
    pub home: &'a str,
}

/// A file berth writes on a host with mode 0600 (env files hold secrets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvFile {
    /// Path relative to the SSH user's home, as Kamal writes it.
    pub path: String,
    pub keys: Vec<String>,
    pub contents: Secret,
}

/// kamal-proxy `deploy` for one role on one host, minus the target (a
/// container id only known once the container runs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyRoute {
    /// The kamal-proxy service name: `<service>-<role>[-<destination>]`.
    pub service: String,
    pub app_port: String,
    /// Hosts the route answers for (empty: any).
    pub hosts: Vec<String>,
    pub path_prefixes: Vec<String>,
    pub tls: bool,
    /// Every `deploy` flag after `--target=…`, in Kamal's order.
    pub deploy_flags: Vec<String>,
}

impl ProxyRoute {
    /// `docker exec kamal-proxy kamal-proxy deploy …` as Kamal runs it.
    pub fn deploy_argv(&self, target: &str) -> Vec<String> {
        let mut argv = strings(&["docker", "exec", PROXY_CONTAINER, "kamal-proxy", "deploy"]);
        argv.push(self.service.clone());
        argv.push(format!("--target={target}:{}", self.app_port));
        argv.extend(self.deploy_flags.iter().cloned());
        argv
    }
}

/// One app container: a role on a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppUnit {
    pub role: String,
    /// `<service>-<role>[-<destination>]`: the name without the version.
    pub container_prefix: String,
    pub container_name: String,
    pub image: String,
    pub version: String,
    /// Labels Kamal sets, in order (`destination` has an empty value when
    /// there is no destination).
    pub labels: Vec<(String, String)>,
    /// `--env` values on the command line, including `KAMAL_*`.
    pub clear_env: Vec<(String, String)>,
    pub env_file: EnvFile,
    pub cmd: Vec<String>,
    pub proxy: Option<ProxyRoute>,
    /// `docker stop -t` seconds for this role's old containers
    /// ([`Config::stop_timeout`]); `None`: docker's default.
    pub stop_timeout: Option<u64>,
    /// A `--hostname` is generated per boot (`<host>-<12 hex>`), as Kamal does.
    pub hostname_prefix: String,
    argv_head: Vec<String>,
    argv_tail: Vec<String>,
}

impl AppUnit {
    /// `docker stop [-t N] <container>`: how this role's old containers are
    /// stopped (Kamal's `stop_args`).
    pub fn stop_argv(&self, container: &str) -> Vec<String> {
        let mut argv = strings(&["docker", "stop"]);
        if let Some(t) = self.stop_timeout {
            argv.push("-t".into());
            argv.push(t.to_string());
        }
        argv.push(container.to_string());
        argv
    }

    /// The full `docker run` argv, with the hostname chosen for this boot.
    pub fn run_argv(&self, hostname: Option<&str>) -> Vec<String> {
        let mut argv = self.argv_head.clone();
        if let Some(h) = hostname {
            argv.push("--hostname".into());
            argv.push(h.into());
        }
        argv.extend(self.argv_tail.iter().cloned());
        argv
    }
}

/// An accessory container on a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessoryUnit {
    pub name: String,
    pub container_name: String,
    pub image: String,
    pub labels: Vec<(String, String)>,
    pub clear_env: Vec<(String, String)>,
    pub env_file: EnvFile,
    pub run_argv: Vec<String>,
    /// Files to upload and directories to create, before boot.
    pub files: Vec<AccessoryFile>,
    pub directories: Vec<(String, Option<String>)>,
    pub proxy: Option<ProxyRoute>,
}

/// A file an accessory mounts: read from the repository when the desired
/// state is loaded (`desired::load`), written on the host before boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessoryFile {
    /// Relative to the project root.
    pub local: String,
    /// Relative to the SSH user's home on the host.
    pub remote: String,
    pub mode: Option<String>,
    /// `None` until loaded (a bare `render` reads no files).
    pub contents: Option<std::sync::Arc<[u8]>>,
}

/// The kamal-proxy container on a host that runs any proxied role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyUnit {
    pub image: String,
    pub run_argv: Vec<String>,
    /// No `proxy.run` in the config: Kamal boots the proxy from the files
    /// `kamal proxy boot_config set` leaves on the host (`.kamal/proxy/*`),
    /// falling back to `run_argv`'s defaults.
    pub boot_config: bool,
}

/// Everything one host should run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostUnits {
    pub host: String,
    pub apps: Vec<AppUnit>,
    pub accessories: Vec<AccessoryUnit>,
    pub proxy: Option<ProxyUnit>,
}

/// The desired state of a whole app (one destination).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub service: String,
    pub destination: Option<String>,
    pub version: String,
    pub image: String,
    /// The digest `image` must have (`x-berth.image_digest`): pulled by it.
    pub image_digest: Option<String>,
    /// Role names in boot order: the primary role first, then the others as
    /// the config lists them (Kamal boots the primary role first).
    pub roles: Vec<String>,
    /// Hosts per boot batch (`boot.limit`), for a rollout's order.
    pub boot_batch: usize,
    /// Seconds to wait after a boot batch before the next (`boot.wait`;
    /// Kamal waits only between groups, so only with `boot.limit`).
    pub boot_wait: u64,
    /// Hosts in Kamal's order (roles' hosts, then accessories').
    pub hosts: Vec<HostUnits>,
    /// Where the deploy lock lives: the config's primary host (the primary
    /// role's first host), where `kamal lock status` and a plain `kamal
    /// deploy` look, whatever `--hosts`/`--roles` a run is limited to.
    pub lock_host: Option<String>,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// `argumentize`: `[flag, rendered]` for each entry.
fn argumentize(flag: &str, entries: &[(String, ArgValue)], out: &mut Vec<String>) {
    for (k, v) in entries {
        out.push(flag.to_string());
        out.push(v.render(k));
    }
}

/// `optionize` (without `with:`): `--key value`, or `--key` for flags.
fn optionize(options: &DockerOptions, out: &mut Vec<String>) {
    fn one(key: &str, value: &OptValue, out: &mut Vec<String>) {
        match value {
            OptValue::Flag => out.push(format!("--{key}")),
            OptValue::Value(v) => {
                out.push(format!("--{key}"));
                out.push(v.clone());
            }
            OptValue::List(items) => items.iter().for_each(|i| one(key, i, out)),
        }
    }
    for (k, v) in options {
        one(k, v, out);
    }
}

fn logging_args(logging: &Logging, out: &mut Vec<String>) {
    if logging.driver.is_some() || !logging.options.is_empty() {
        if let Some(driver) = &logging.driver {
            out.push("--log-driver".into());
            out.push(driver.clone());
        }
        argumentize("--log-opt", &logging.options, out);
    } else {
        out.push("--log-opt".into());
        out.push("max-size=10m".into());
    }
}

/// A path Kamal writes as `$PWD/<rel>` (or leaves absolute).
fn host_path(home: &str, path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{}", home.trim_end_matches('/'), path)
    }
}

/// Kamal's env-file escaping: Ruby's `String#dump` without the surrounding
/// quotes, with `\"` and `\#` unescaped (docker reads env files literally);
/// non-ASCII is kept as is.
pub fn escape_env_file_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\x0c' => out.push_str("\\f"),
            '\x0b' => out.push_str("\\v"),
            '\x08' => out.push_str("\\b"),
            '\x07' => out.push_str("\\a"),
            '\x1b' => out.push_str("\\e"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02X}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

fn env_file(
    path: String,
    env: &EnvSpec,
    opts: &RenderOptions<'_>,
    context: &str,
) -> Result<EnvFile, RenderError> {
    let mut contents = String::new();
    let mut keys = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for entry in &env.secret {
        let (name, key) = entry.split_once(':').unwrap_or((entry, entry));
        // Kamal's `to_h` keeps the last entry for a repeated name.
        if seen.contains(&name) {
            continue;
        }
        seen.push(name);
        let last = env
            .secret
            .iter()
            .rev()
            .find(|e| e.split_once(':').map_or(e.as_str(), |(n, _)| n) == name)
            .map_or(key, |e| e.split_once(':').map_or(e.as_str(), |(_, k)| k));
        let Some(secret) = opts.secrets.get(last) else {
            return Err(RenderError::MissingSecret {
                context: context.to_string(),
                key: last.to_string(),
                files: opts.secrets.describe_files(),
            });
        };
        contents.push_str(name);
        contents.push('=');
        contents.push_str(&escape_env_file_value(secret.expose()));
        contents.push('\n');
        keys.push(name.to_string());
    }
    if contents.is_empty() {
        contents.push('\n');
    }
    Ok(EnvFile {
        path,
        keys,
        contents: Secret::new(contents),
    })
}

/// `optionize(with: "=")` for one value: `--key=value`, nothing for nil.
fn opt_eq(flags: &mut Vec<String>, key: &str, value: Option<String>) {
    if let Some(v) = value {
        flags.push(format!("--{key}={v}"));
    }
}

/// `optionize(with: "=")` for a boolean: `--key` for true, `--key=false`.
fn bool_eq(flags: &mut Vec<String>, key: &str, value: Option<bool>) {
    match value {
        Some(true) => flags.push(format!("--{key}")),
        Some(false) => flags.push(format!("--{key}=false")),
        None => {}
    }
}

fn seconds(value: impl std::fmt::Display) -> String {
    format!("{value}s")
}

/// Kamal's `Proxy#deploy_options`, rendered with `optionize(with: "=")`.
fn proxy_route(
    config: &Config,
    proxy: &ProxySpec,
    service: String,
    role_name: Option<&str>,
    version: &str,
) -> ProxyRoute {
    let mut flags = Vec::new();
    let custom_tls = matches!(proxy.ssl, Ssl::Custom { .. });
    let app_dir = format!(
        "/home/kamal-proxy/.apps-config/{}",
        config.service_and_destination()
    );
    let tls_path = |file: &str| {
        custom_tls.then(|| match role_name {
            Some(r) => format!("{app_dir}/tls/{r}/{file}"),
            None => format!("{app_dir}/tls/{file}"),
        })
    };
    for h in &proxy.hosts {
        opt_eq(&mut flags, "host", Some(h.clone()));
    }
    if proxy.ssl != Ssl::Off {
        flags.push("--tls".into());
    }
    opt_eq(&mut flags, "tls-certificate-path", tls_path("cert.pem"));
    opt_eq(&mut flags, "tls-private-key-path", tls_path("key.pem"));
    opt_eq(
        &mut flags,
        "deploy-timeout",
        Some(seconds(config.deploy_timeout)),
    );
    opt_eq(
        &mut flags,
        "drain-timeout",
        Some(seconds(config.drain_timeout)),
    );
    opt_eq(
        &mut flags,
        "health-check-interval",
        proxy.healthcheck_interval.as_ref().map(seconds),
    );
    opt_eq(
        &mut flags,
        "health-check-timeout",
        proxy.healthcheck_timeout.as_ref().map(seconds),
    );
    opt_eq(
        &mut flags,
        "health-check-path",
        proxy.healthcheck_path.clone(),
    );
    opt_eq(
        &mut flags,
        "target-timeout",
        proxy.response_timeout.as_ref().map(seconds),
    );
    bool_eq(&mut flags, "buffer-requests", Some(proxy.buffer_requests));
    bool_eq(&mut flags, "buffer-responses", Some(proxy.buffer_responses));
    opt_eq(&mut flags, "buffer-memory", proxy.buffer_memory.clone());
    opt_eq(
        &mut flags,
        "max-request-body",
        proxy.max_request_body.clone(),
    );
    opt_eq(
        &mut flags,
        "max-response-body",
        proxy.max_response_body.clone(),
    );
    for p in &proxy.path_prefixes {
        opt_eq(&mut flags, "path-prefix", Some(p.clone()));
    }
    bool_eq(&mut flags, "strip-path-prefix", proxy.strip_path_prefix);
    bool_eq(&mut flags, "forward-headers", proxy.forward_headers);
    bool_eq(&mut flags, "tls-redirect", proxy.ssl_redirect);
    let request_headers = proxy.log_request_headers.clone().unwrap_or_else(|| {
        DEFAULT_LOG_REQUEST_HEADERS
            .iter()
            .map(|s| s.to_string())
            .collect()
    });
    for h in request_headers {
        opt_eq(&mut flags, "log-request-header", Some(h));
    }
    for h in proxy.log_response_headers.iter().flatten() {
        opt_eq(&mut flags, "log-response-header", Some(h.clone()));
    }
    if config.error_pages_path.is_some() {
        opt_eq(
            &mut flags,
            "error-pages",
            Some(format!("{app_dir}/error_pages/{version}")),
        );
    }
    ProxyRoute {
        service,
        app_port: proxy.app_port.clone(),
        hosts: proxy.hosts.clone(),
        path_prefixes: proxy.path_prefixes.clone(),
        tls: proxy.ssl != Ssl::Off,
        deploy_flags: flags,
    }
}

fn role_env(config: &Config, role: &Role, tags: &[String]) -> EnvSpec {
    let mut env = config.env.merge(&role.env);
    for tag in tags {
        if let Some((_, tag_env)) = config.env.tags.iter().find(|(name, _)| name == tag) {
            env = env.merge(tag_env);
        }
    }
    env
}

fn clear_values(entries: &[(String, ArgValue)]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|(k, v)| {
            let value = match v {
                ArgValue::Value(s) => s.clone(),
                ArgValue::False => "false".into(),
                ArgValue::Bare => String::new(),
            };
            (k.clone(), value)
        })
        .collect()
}

fn app_unit(
    config: &Config,
    role: &Role,
    host: &str,
    tags: &[String],
    opts: &RenderOptions<'_>,
    image: &str,
) -> Result<AppUnit, RenderError> {
    let version = opts.version;
    let container_prefix = match &config.destination {
        Some(d) => format!("{}-{}-{d}", config.service, role.name),
        None => format!("{}-{}", config.service, role.name),
    };
    let container_name = format!("{container_prefix}-{version}");
    let sd = config.service_and_destination();
    let env = role_env(config, role, tags);
    let env_path = kamal::role_env_file(&config.service, config.destination.as_deref(), &role.name);
    let env_file = env_file(
        env_path.clone(),
        &env,
        opts,
        &format!("servers.{}.env", role.name),
    )?;

    let mut argv_head = strings(&["docker", "run", "--detach", "--restart"]);
    argv_head.push(role.restart_policy().to_string());
    argv_head.push("--name".into());
    argv_head.push(container_name.clone());
    argv_head.push("--network".into());
    argv_head.push(NETWORK.into());

    let mut kamal_env = vec![
        ("KAMAL_CONTAINER_NAME".to_string(), container_name.clone()),
        ("KAMAL_VERSION".to_string(), version.to_string()),
        ("KAMAL_HOST".to_string(), host.to_string()),
    ];
    if let Some(d) = &config.destination {
        kamal_env.push(("KAMAL_DESTINATION".into(), d.clone()));
    }
    let mut tail = Vec::new();
    for (k, v) in &kamal_env {
        tail.push("--env".into());
        tail.push(format!("{k}={v}"));
    }
    argumentize("--env", &env.clear, &mut tail);
    tail.push("--env-file".into());
    tail.push(env_path);
    logging_args(&role.logging, &mut tail);
    for v in &config.volumes {
        tail.push("--volume".into());
        tail.push(v.clone());
    }
    if role.running_proxy()
        && let Some(asset_path) = role.asset_path.as_ref().or(config.asset_path.as_ref())
    {
        let (container_path, options) = match asset_path.split_once(':') {
            Some((p, o)) => (p, Some(o)),
            None => (asset_path.as_str(), None),
        };
        let dir = format!(".kamal/apps/{sd}/assets/volumes/{}-{version}", role.name);
        let mut volume = format!("{}:{container_path}", host_path(opts.home, &dir));
        if let Some(o) = options.filter(|o| !o.is_empty()) {
            volume.push(':');
            volume.push_str(o);
        }
        tail.push("--volume".into());
        tail.push(volume);
    }
    let mut labels = vec![
        (
            "service".to_string(),
            ArgValue::Value(config.service.clone()),
        ),
        ("role".to_string(), ArgValue::Value(role.name.clone())),
        (
            "destination".to_string(),
            config
                .destination
                .clone()
                .map_or(ArgValue::Bare, ArgValue::Value),
        ),
    ];
    // Ruby `Hash#merge`: a custom label replaces a default in place.
    for (k, v) in &role.labels {
        match labels.iter_mut().find(|(lk, _)| lk == k) {
            Some(slot) => slot.1 = v.clone(),
            None => labels.push((k.clone(), v.clone())),
        }
    }
    argumentize("--label", &labels, &mut tail);
    optionize(&role.options, &mut tail);
    tail.push(image.to_string());
    let cmd = match &role.cmd {
        Some(c) => words::split(c).map_err(|source| RenderError::Cmd {
            role: role.name.clone(),
            source,
        })?,
        None => Vec::new(),
    };
    tail.extend(cmd.iter().cloned());

    let proxy = match &role.proxy {
        RoleProxy::On(p) => Some(proxy_route(
            config,
            p,
            container_prefix.clone(),
            Some(&role.name),
            version,
        )),
        RoleProxy::Off => None,
    };
    let mut clear_env = kamal_env;
    clear_env.extend(clear_values(&env.clear));
    let hostname_prefix: String = host
        .chars()
        .take(51)
        .collect::<String>()
        .trim_end_matches('.')
        .to_string();
    Ok(AppUnit {
        role: role.name.clone(),
        container_prefix,
        container_name,
        image: image.to_string(),
        version: version.to_string(),
        labels: clear_values(&labels),
        clear_env,
        env_file,
        cmd,
        stop_timeout: config.stop_timeout(role),
        proxy,
        hostname_prefix,
        argv_head,
        argv_tail: tail,
    })
}

fn accessory_unit(
    config: &Config,
    acc: &Accessory,
    host: &str,
    opts: &RenderOptions<'_>,
) -> Result<AccessoryUnit, RenderError> {
    let env_path =
        kamal::accessory_env_file(&config.service, config.destination.as_deref(), &acc.name);
    let env_file = env_file(
        env_path.clone(),
        &acc.env,
        opts,
        &format!("accessories.{}.env", acc.name),
    )?;
    let mut argv = strings(&["docker", "run", "--name"]);
    argv.push(acc.service_name.clone());
    argv.extend(strings(&["--detach", "--restart"]));
    argv.push(acc.restart_policy().to_string());
    argv.push("--network".into());
    argv.push(acc.network.clone());
    logging_args(&config.logging, &mut argv);
    if let Some(port) = &acc.port {
        argv.push("--publish".into());
        argv.push(port.clone());
    }
    argv.push("--env".into());
    argv.push(format!("KAMAL_HOST={host}"));
    argumentize("--env", &acc.env.clear, &mut argv);
    argv.push("--env-file".into());
    argv.push(env_path);
    for v in &acc.volumes {
        argv.push("--volume".into());
        argv.push(v.clone());
    }
    let mut files = Vec::new();
    for f in &acc.files {
        let remote_rel = format!("{}{}", acc.service_name, f.remote);
        let mut volume = format!("{}:{}", host_path(opts.home, &remote_rel), f.remote);
        if let Some(o) = f.options.as_ref().filter(|o| !o.is_empty()) {
            volume.push(':');
            volume.push_str(o);
        }
        argv.push("--volume".into());
        argv.push(volume);
        files.push(AccessoryFile {
            local: f.local.clone(),
            remote: remote_rel,
            mode: Some(f.mode.clone().unwrap_or_else(|| "755".into())),
            contents: None,
        });
    }
    let mut directories = Vec::new();
    for d in &acc.directories {
        let host_dir = if d.local.starts_with('/') {
            d.local.clone()
        } else {
            host_path(opts.home, &format!("{}/{}", acc.service_name, d.local))
        };
        let mut volume = format!("{host_dir}:{}", d.remote);
        if let Some(o) = d.options.as_ref().filter(|o| !o.is_empty()) {
            volume.push(':');
            volume.push_str(o);
        }
        argv.push("--volume".into());
        argv.push(volume);
        directories.push((host_dir, d.mode.clone()));
    }
    let mut labels = vec![(
        "service".to_string(),
        ArgValue::Value(acc.service_name.clone()),
    )];
    for (k, v) in &acc.labels {
        if let Some(slot) = labels.iter_mut().find(|(lk, _)| lk == k) {
            slot.1 = v.clone();
        } else {
            labels.push((k.clone(), v.clone()));
        }
    }
    argumentize("--label", &labels, &mut argv);
    optionize(&acc.options, &mut argv);
    argv.push(acc.image.clone());
    if let Some(cmd) = &acc.cmd {
        argv.extend(
            words::split(cmd).map_err(|source| RenderError::AccessoryCmd {
                name: acc.name.clone(),
                source,
            })?,
        );
    }
    let mut clear_env = vec![("KAMAL_HOST".to_string(), host.to_string())];
    clear_env.extend(clear_values(&acc.env.clear));
    Ok(AccessoryUnit {
        name: acc.name.clone(),
        container_name: acc.service_name.clone(),
        image: acc.image.clone(),
        labels: clear_values(&labels),
        clear_env,
        env_file,
        run_argv: argv,
        files,
        directories,
        proxy: acc
            .proxy
            .as_ref()
            .map(|p| proxy_route(config, p, acc.service_name.clone(), None, opts.version)),
    })
}

/// The kamal-proxy container: from `proxy.run` when configured, otherwise
/// Kamal's default boot (`--publish 80:80 --publish 443:443 --log-opt
/// max-size=10m basecamp/kamal-proxy:v0.9.2`).
fn proxy_unit(run: Option<&ProxyRun>, home: &str) -> ProxyUnit {
    let mut argv = strings(&[
        "docker",
        "run",
        "--name",
        PROXY_CONTAINER,
        "--network",
        NETWORK,
        "--detach",
        "--restart",
        "unless-stopped",
        "--volume",
        "kamal-proxy-config:/home/kamal-proxy/.config/kamal-proxy",
        "--volume",
    ]);
    argv.push(format!(
        "{}:/home/kamal-proxy/.apps-config",
        host_path(home, ".kamal/proxy/apps-config")
    ));
    let Some(run) = run else {
        argv.extend(strings(&[
            "--publish",
            "80:80",
            "--publish",
            "443:443",
            "--log-opt",
            "max-size=10m",
        ]));
        let image = format!("basecamp/kamal-proxy:{PROXY_MIN_VERSION}");
        argv.push(image.clone());
        return ProxyUnit {
            image,
            run_argv: argv,
            boot_config: true,
        };
    };
    if run.publish {
        let ips: Vec<Option<&String>> = match &run.bind_ips {
            Some(ips) if !ips.is_empty() => ips.iter().map(Some).collect(),
            _ => vec![None],
        };
        for ip in ips {
            let prefix = match ip {
                Some(ip) if ip.contains(':') && !ip.starts_with('[') => format!("[{ip}]:"),
                Some(ip) => format!("{ip}:"),
                None => String::new(),
            };
            argv.push("--publish".into());
            argv.push(format!("{prefix}{}:80", run.http_port));
            argv.push("--publish".into());
            argv.push(format!("{prefix}{}:443", run.https_port));
        }
    }
    if let Some(size) = run.log_max_size.as_ref().filter(|s| !s.is_empty()) {
        argv.push("--log-opt".into());
        argv.push(format!("max-size={size}"));
    }
    if let Some(port) = &run.metrics_port {
        argv.push(format!("--expose={port}"));
    }
    optionize(&run.options, &mut argv);
    let image = match &run.registry {
        Some(r) => format!("{r}/{}:{}", run.repository, run.version),
        None => format!("{}:{}", run.repository, run.version),
    };
    argv.push(image.clone());
    argv.extend(strings(&["kamal-proxy", "run"]));
    if run.debug {
        argv.push("--debug".into());
    }
    if let Some(port) = &run.metrics_port {
        argv.push("--metrics-port".into());
        argv.push(port.clone());
    }
    ProxyUnit {
        image,
        run_argv: argv,
        boot_config: false,
    }
}

/// Render the desired state of every host.
pub fn render(config: &Config, opts: &RenderOptions<'_>) -> Result<Desired, RenderError> {
    if !crate::config::decode::valid_docker_tag(opts.version) {
        return Err(RenderError::Version(opts.version.to_string()));
    }
    let image = format!("{}:{}", config.repository(), opts.version);
    let mut roles: Vec<String> = config.roles.iter().map(|r| r.name.clone()).collect();
    if let Some(i) = roles.iter().position(|r| *r == config.primary_role) {
        let primary = roles.remove(i);
        roles.insert(0, primary);
    }
    let boot_batch = config.boot.batch_size(config.all_hosts().len());
    let lock_host = config
        .roles
        .iter()
        .find(|r| r.name == config.primary_role)
        .and_then(|r| r.hosts.first())
        .map(|h| h.host.clone())
        .or_else(|| config.all_hosts().into_iter().next());
    let mut hosts = Vec::new();
    for host in config.all_hosts() {
        let mut apps = Vec::new();
        let mut proxy_run: Option<&ProxyRun> = None;
        let mut needs_proxy = false;
        for role in &config.roles {
            let Some(entry) = role.hosts.iter().find(|h| h.host == host) else {
                continue;
            };
            apps.push(app_unit(config, role, &host, &entry.tags, opts, &image)?);
            if let RoleProxy::On(p) = &role.proxy {
                needs_proxy = true;
                proxy_run = proxy_run.or(p.run.as_ref());
            }
        }
        let mut accessories = Vec::new();
        for acc in config
            .accessories
            .iter()
            .filter(|a| a.hosts.contains(&host))
        {
            accessories.push(accessory_unit(config, acc, &host, opts)?);
            if let Some(p) = &acc.proxy {
                needs_proxy = true;
                proxy_run = proxy_run.or(p.run.as_ref());
            }
        }
        hosts.push(HostUnits {
            host,
            apps,
            accessories,
            proxy: needs_proxy.then(|| proxy_unit(proxy_run, opts.home)),
        });
    }
    Ok(Desired {
        service: config.service.clone(),
        destination: config.destination.clone(),
        version: opts.version.to_string(),
        image,
        image_digest: config.berth.image_digest.clone(),
        roles,
        boot_batch,
        lock_host,
        boot_wait: config
            .boot
            .limit
            .is_some()
            .then_some(config.boot.wait)
            .flatten()
            .unwrap_or(0),
        hosts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_escaping_matches_kamal() {
        assert_eq!(escape_env_file_value("plain"), "plain");
        assert_eq!(escape_env_file_value("a\"b#c"), "a\"b#c");
        assert_eq!(escape_env_file_value("l1\nl2\\"), "l1\\nl2\\\\");
        assert_eq!(escape_env_file_value("héllo"), "héllo");
    }
}
