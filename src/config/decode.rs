//! Decoding a merged YAML tree into the typed [`Config`], applying Kamal 2's
//! validation rules (the same keys, types and cross-checks `kamal` enforces),
//! with every error pointing at file, line, column and key path.
//!
//! Errors are collected rather than returned at the first one, so a user
//! fixing a config sees all of its problems in one run.

use crate::config::ConfigError;
use crate::config::grammar;
use crate::config::model::*;
use crate::config::yaml::{Key, Mark, Node, Scalar, Value, deep_merge};

/// The ceiling of every duration in seconds a config sets (delays,
/// timeouts, intervals): an hour. Kamal's defaults are 7 to 30 seconds.
pub const MAX_SECONDS: u64 = 3600;
/// The ceiling of `retain_containers`.
pub const MAX_RETAINED: u32 = 100;

/// The Kamal version berth is compatible with (for `minimum_version`).
pub const KAMAL_COMPAT_VERSION: &str = "2.12.0";

const ROOT_KEYS: &[&str] = &[
    "service",
    "image",
    "labels",
    "volumes",
    "registry",
    "servers",
    "env",
    "asset_path",
    "hooks_path",
    "hooks_output",
    "secrets_path",
    "error_pages_path",
    "require_destination",
    "primary_role",
    "allow_empty_roles",
    "retain_containers",
    "minimum_version",
    "readiness_delay",
    "deploy_timeout",
    "drain_timeout",
    "stop_timeout",
    "run_directory",
    "ssh",
    "builder",
    "accessories",
    "proxy",
    "sshkit",
    "boot",
    "logging",
    "output",
    "aliases",
];
const ROLE_KEYS: &[&str] = &[
    "hosts",
    "cmd",
    "options",
    "logging",
    "proxy",
    "labels",
    "env",
    "asset_path",
    "stop_timeout",
];
const PROXY_KEYS: &[&str] = &[
    "host",
    "hosts",
    "app_port",
    "ssl",
    "ssl_redirect",
    "forward_headers",
    "response_timeout",
    "path_prefix",
    "path_prefixes",
    "strip_path_prefix",
    "healthcheck",
    "buffering",
    "logging",
    "run",
];
const PROXY_RUN_KEYS: &[&str] = &[
    "http_port",
    "https_port",
    "metrics_port",
    "debug",
    "log_max_size",
    "publish",
    "bind_ips",
    "registry",
    "repository",
    "version",
    "options",
];
const ACCESSORY_KEYS: &[&str] = &[
    "service",
    "image",
    "registry",
    "host",
    "hosts",
    "role",
    "roles",
    "tag",
    "tags",
    "cmd",
    "port",
    "labels",
    "options",
    "env",
    "files",
    "directories",
    "volumes",
    "network",
    "proxy",
];
const SSH_KEYS: &[&str] = &[
    "user",
    "port",
    "proxy",
    "proxy_command",
    "log_level",
    "keys_only",
    "keys",
    "key_data",
    "config",
    "forward_agent",
];
const BUILDER_KEYS: &[&str] = &[
    "arch",
    "remote",
    "local",
    "pack",
    "cache",
    "context",
    "dockerfile",
    "target",
    "args",
    "secrets",
    "ssh",
    "driver",
    "provenance",
    "sbom",
];
const KAMAL_COMMANDS: &[&str] = &[
    "setup",
    "deploy",
    "redeploy",
    "rollback",
    "details",
    "audit",
    "config",
    "docs",
    "init",
    "remove",
    "upgrade",
    "version",
    "accessory",
    "app",
    "build",
    "lock",
    "proxy",
    "prune",
    "registry",
    "secrets",
    "server",
    "help",
];
const RESERVED_LABELS: &[&str] = &["destination", "role", "service"];

/// The decoder: walks the tree, collects errors.
pub struct Decoder {
    pub errors: Vec<ConfigError>,
    /// What is accepted but does nothing in berth, located like errors.
    pub warnings: Vec<ConfigError>,
    root_mark: Mark,
    /// The repository is hostile (`berth run`, `--untrusted`): refuse what
    /// would execute on berth's machine.
    pub untrusted: bool,
    /// Every secret the config names, where it names it.
    secret_refs: Vec<SecretRef>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl Decoder {
    pub fn new(root_mark: Mark) -> Self {
        Decoder {
            errors: Vec::new(),
            warnings: Vec::new(),
            root_mark,
            untrusted: false,
            secret_refs: Vec::new(),
        }
    }

    pub fn error(&mut self, mark: &Mark, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            mark: mark.clone(),
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// Whether an error was already reported at or below `path` (so a
    /// consequence of it is not reported again).
    fn has_error_under(&self, path: &str) -> bool {
        self.errors
            .iter()
            .any(|e| e.path == path || e.path.starts_with(&format!("{path}.")))
    }

    fn type_error(&mut self, node: &Node, path: &str, expected: &str) {
        let found = node.type_name();
        self.error(
            &node.mark,
            path,
            format!("should be {expected} (found {found})"),
        );
    }

    /// A mapping with only `allowed` keys (plus `x-*` where `extensions`).
    fn map<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        allowed: &[&str],
        extensions: bool,
    ) -> Option<&'n [(Key, Node)]> {
        match &node.value {
            Value::Map(entries) => {
                for (key, _) in entries {
                    let known = allowed.contains(&key.name.as_str())
                        || (extensions && key.name.starts_with("x-"));
                    if !known {
                        let hint = closest(&key.name, allowed)
                            .map(|c| format!(" (did you mean `{c}`?)"))
                            .unwrap_or_default();
                        self.error(
                            &key.mark,
                            &join(path, &key.name),
                            format!("unknown key: {}{hint}", key.name),
                        );
                    }
                }
                Some(entries)
            }
            _ => {
                self.type_error(node, path, "a hash");
                None
            }
        }
    }

    /// Kamal's "stringish": strings, symbols, numbers and booleans.
    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Scalar(Scalar::Null) | Value::Seq(_) | Value::Map(_) => {
                self.type_error(node, path, "a string");
                None
            }
            Value::Scalar(s) => Some(s.to_ruby_string()),
        }
    }

    /// A `cmd:`: a string berth can split into words without a shell (the
    /// check render would otherwise make, here with its position).
    fn cmd(&mut self, node: &Node, path: &str) -> Option<String> {
        let cmd = self.string(node, path)?;
        if let Err(e) = crate::config::words::split(&cmd) {
            self.error(&node.mark, path, e.to_string());
        }
        Some(cmd)
    }

    fn opt_string(&mut self, map: &[(Key, Node)], key: &str, path: &str) -> Option<String> {
        let node = get(map, key)?;
        self.string(node, &join(path, key))
    }

    fn integer(&mut self, node: &Node, path: &str) -> Option<i64> {
        match &node.value {
            Value::Scalar(Scalar::Int(i)) => Some(*i),
            _ => {
                self.type_error(node, path, "an integer");
                None
            }
        }
    }

    fn opt_integer(&mut self, map: &[(Key, Node)], key: &str, path: &str) -> Option<i64> {
        let node = get(map, key)?;
        if node.is_null() {
            return None;
        }
        self.integer(node, &join(path, key))
    }

    fn non_negative(&mut self, map: &[(Key, Node)], key: &str, path: &str) -> Option<u64> {
        let value = self.opt_integer(map, key, path)?;
        if value < 0 {
            if let Some(node) = get(map, key) {
                self.error(&node.mark, &join(path, key), "must not be negative");
            }
            return None;
        }
        Some(value as u64)
    }

    /// A non-negative integer at most `max`: every duration and count from
    /// a repository has a ceiling, so none can park an apply for years.
    fn bounded(&mut self, map: &[(Key, Node)], key: &str, path: &str, max: u64) -> Option<u64> {
        let value = self.non_negative(map, key, path)?;
        if value > max {
            if let Some(node) = get(map, key) {
                self.error(
                    &node.mark,
                    &join(path, key),
                    format!("must be at most {max}"),
                );
            }
            return None;
        }
        Some(value)
    }

    fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match &node.value {
            Value::Scalar(Scalar::Bool(b)) => Some(*b),
            _ => {
                self.type_error(node, path, "a boolean");
                None
            }
        }
    }

    fn opt_bool(&mut self, map: &[(Key, Node)], key: &str, path: &str) -> Option<bool> {
        let node = get(map, key)?;
        if node.is_null() {
            return None;
        }
        self.boolean(node, &join(path, key))
    }

    fn string_list(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        match &node.value {
            Value::Seq(items) => Some(
                items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, item)| self.string(item, &join(path, &i.to_string())))
                    .collect(),
            ),
            _ => {
                self.type_error(node, path, "an array");
                None
            }
        }
    }

    fn opt_string_list(
        &mut self,
        map: &[(Key, Node)],
        key: &str,
        path: &str,
    ) -> Option<Vec<String>> {
        let node = get(map, key)?;
        self.string_list(node, &join(path, key))
    }

    /// A string or an array of strings (Kamal's `host: a,b` vs `hosts:`).
    fn string_or_list(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        match &node.value {
            Value::Seq(_) => self.string_list(node, path),
            _ => self.string(node, path).map(|s| vec![s]),
        }
    }

    /// A hash whose values go through `argumentize` (labels, env, log opts).
    fn arg_map(&mut self, node: &Node, path: &str) -> Option<Vec<(String, ArgValue)>> {
        let Value::Map(entries) = &node.value else {
            self.type_error(node, path, "a hash");
            return None;
        };
        let mut out = Vec::new();
        for (key, value) in entries {
            let p = join(path, &key.name);
            let arg = match &value.value {
                Value::Scalar(Scalar::Bool(false)) => ArgValue::False,
                Value::Scalar(Scalar::Null) => ArgValue::Bare,
                Value::Scalar(s) => {
                    let text = s.to_ruby_string();
                    if text.trim().is_empty() {
                        ArgValue::Bare
                    } else {
                        ArgValue::Value(text)
                    }
                }
                _ => {
                    self.type_error(value, &p, "a string");
                    continue;
                }
            };
            out.push((key.name.clone(), arg));
        }
        Some(out)
    }

    /// Labels; Kamal reserves `service`, `role` and `destination` in role and
    /// accessory labels only (`reserved`), not in the top-level block.
    fn labels(&mut self, node: &Node, path: &str, reserved: bool) -> Labels {
        let labels = self.arg_map(node, path).unwrap_or_default();
        if !reserved {
            return labels;
        }
        if let Value::Map(entries) = &node.value {
            for (key, _) in entries {
                if RESERVED_LABELS.contains(&key.name.as_str()) {
                    self.error(
                        &key.mark,
                        &join(path, &key.name),
                        "invalid label. destination, role, and service are reserved labels",
                    );
                }
            }
        }
        labels
    }

    /// `options:` for `docker run`, through Kamal's `optionize`, and the
    /// restart policy Kamal 2.12 takes out of them (`restart_policy`).
    fn docker_options(&mut self, node: &Node, path: &str) -> (DockerOptions, Option<String>) {
        let Value::Map(entries) = &node.value else {
            self.type_error(node, path, "a hash");
            return (Vec::new(), None);
        };
        let mut out = Vec::new();
        let mut restart = None;
        for (key, value) in entries {
            if key.name == "restart" {
                restart = self.restart_policy(value, &join(path, "restart"));
                continue;
            }
            match opt_value(value) {
                Some(v) => out.push((key.name.clone(), v)),
                None => self.type_error(value, &join(path, &key.name), "a string or an array"),
            }
        }
        (out, restart)
    }

    /// `proxy.run.options`: kamal-proxy always runs `--restart
    /// unless-stopped` (Kamal renders a second `--restart` after it).
    fn proxy_run_options(&mut self, node: &Node, path: &str) -> DockerOptions {
        let (options, restart) = self.docker_options(node, path);
        if restart.is_some()
            && let Value::Map(entries) = &node.value
            && let Some((key, _)) = entries.iter().find(|(k, _)| k.name == "restart")
        {
            self.error(
                &key.mark,
                &join(path, "restart"),
                "kamal-proxy runs with --restart unless-stopped; berth does not set a second policy",
            );
        }
        options
    }

    /// Kamal 2.12's `validate_restart_policy!`: a string, one of docker's
    /// policies.
    fn restart_policy(&mut self, node: &Node, path: &str) -> Option<String> {
        let Value::Scalar(Scalar::Str(policy)) = &node.value else {
            self.error(
                &node.mark,
                path,
                "should be a string. Use \"no\" to disable restarts",
            );
            return None;
        };
        let valid = match policy.as_str() {
            "no" | "always" | "unless-stopped" | "on-failure" => true,
            p => p
                .strip_prefix("on-failure:")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        };
        if !valid {
            self.error(
                &node.mark,
                path,
                "should be no, always, unless-stopped, on-failure, or on-failure:N",
            );
            return None;
        }
        Some(policy.clone())
    }

    fn logging(&mut self, node: &Node, path: &str) -> Logging {
        let mut logging = Logging::default();
        if node.is_null() {
            return logging;
        }
        let Some(map) = self.map(node, path, &["driver", "options"], false) else {
            return logging;
        };
        logging.driver = self.opt_string(map, "driver", path);
        if let Some(options) = get(map, "options") {
            logging.options = self
                .arg_map(options, &join(path, "options"))
                .unwrap_or_default();
        }
        logging
    }

    /// Env values must be strings (Kamal: "should be a string"): an empty
    /// value, or an ERB `ENV[...]` that rendered empty, is not one.
    fn reject_null_values(&mut self, node: &Node, path: &str) {
        if let Value::Map(entries) = &node.value {
            for (key, value) in entries {
                if value.is_null() {
                    // Point at the key: an empty value has no position of its own.
                    self.error(
                        &key.mark,
                        &join(path, &key.name),
                        "should be a string (found nil)",
                    );
                }
            }
        }
    }

    /// `env:` in the simple (`KEY: value`) or complex (`clear`/`secret`/`tags`) shape.
    fn env(&mut self, node: &Node, path: &str, allow_tags: bool) -> EnvSpec {
        let mut env = EnvSpec::default();
        if node.is_null() {
            return env;
        }
        let Value::Map(entries) = &node.value else {
            self.type_error(node, path, "a hash");
            return env;
        };
        let complex = entries
            .iter()
            .any(|(k, _)| matches!(k.name.as_str(), "clear" | "secret" | "tags"));
        if !complex {
            self.reject_null_values(node, path);
            env.clear = self.arg_map(node, path).unwrap_or_default();
            return env;
        }
        let Some(map) = self.map(node, path, &["clear", "secret", "tags"], false) else {
            return env;
        };
        if let Some(clear) = get(map, "clear") {
            self.reject_null_values(clear, &join(path, "clear"));
            env.clear = self
                .arg_map(clear, &join(path, "clear"))
                .unwrap_or_default();
        }
        if let Some(secret) = get(map, "secret") {
            let p = join(path, "secret");
            env.secret = self.string_list(secret, &p).unwrap_or_default();
            if let Value::Seq(items) = &secret.value {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Scalar(s) = &item.value {
                        let text = s.to_ruby_string();
                        let (name, alias) = text.split_once(':').unwrap_or((&text, &text));
                        if name.is_empty() || alias.is_empty() {
                            self.error(
                                &item.mark,
                                &join(&p, &i.to_string()),
                                "a secret entry is NAME or NAME:SECRET_KEY",
                            );
                        } else {
                            self.secret_refs.push(SecretRef {
                                key: alias.to_string(),
                                mark: item.mark.clone(),
                                path: join(&p, &i.to_string()),
                            });
                        }
                    }
                }
            }
        }
        if let Some(tags) = get(map, "tags") {
            let p = join(path, "tags");
            if !allow_tags {
                self.error(&tags.mark, &p, "tags are only allowed in the root env");
            } else if let Value::Map(tag_entries) = &tags.value {
                for (tag, value) in tag_entries {
                    let tp = join(&p, &tag.name);
                    if !matches!(value.value, Value::Map(_)) {
                        self.type_error(value, &tp, "a hash");
                        continue;
                    }
                    let spec = self.env(value, &tp, false);
                    env.tags.push((tag.name.clone(), spec));
                }
            } else {
                self.type_error(tags, &p, "a hash");
            }
        }
        env
    }

    fn registry(&mut self, node: &Node, path: &str) -> Registry {
        let mut registry = Registry::default();
        let Some(map) = self.map(node, path, &["server", "username", "password"], false) else {
            return registry;
        };
        registry.server = self.opt_string(map, "server", path);
        let local = registry.is_local();
        for key in ["username", "password"] {
            let p = join(path, key);
            let cred = match get(map, key) {
                None => None,
                Some(n) => {
                    match &n.value {
                        Value::Seq(items) if items.len() == 1 => match &items[0].value {
                            Value::Scalar(Scalar::Str(s)) => {
                                self.secret_refs.push(SecretRef {
                                    key: s.clone(),
                                    mark: items[0].mark.clone(),
                                    path: join(&p, "0"),
                                });
                                Some(Credential::Secret(s.clone()))
                            }
                            _ => {
                                self.error(&n.mark, &p, "should be a string or an array with one string (for secret lookup)");
                                None
                            }
                        },
                        Value::Scalar(Scalar::Str(s)) if !s.trim().is_empty() => {
                            Some(Credential::Literal(s.clone()))
                        }
                        Value::Scalar(Scalar::Null) => None,
                        _ => {
                            self.error(&n.mark, &p, "should be a string or an array with one string (for secret lookup)");
                            None
                        }
                    }
                }
            };
            if cred.is_none() && !local && !self.errors.iter().any(|e| e.path == p) {
                let mark = get(map, key).map_or(&node.mark, |n| &n.mark).clone();
                self.error(&mark, &p, "is required");
            }
            match key {
                "username" => registry.username = cred,
                _ => registry.password = cred,
            }
        }
        registry
    }

    /// Host entries: `host`, or `{host: tag}` / `{host: [tags]}`.
    fn hosts(&mut self, node: &Node, path: &str) -> Vec<HostEntry> {
        let Value::Seq(items) = &node.value else {
            self.type_error(node, path, "an array");
            return Vec::new();
        };
        let mut hosts = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = join(path, &i.to_string());
            match &item.value {
                Value::Map(entries) => {
                    if entries.len() != 1 {
                        self.error(&item.mark, &p, "multiple hosts found");
                        continue;
                    }
                    let (host, tags) = &entries[0];
                    let tp = join(&p, &host.name);
                    let tags = self.string_or_list(tags, &tp).unwrap_or_default();
                    hosts.push(HostEntry {
                        host: host.name.clone(),
                        tags,
                        mark: host.mark.clone(),
                    });
                }
                Value::Scalar(Scalar::Null) | Value::Seq(_) => {
                    self.type_error(item, &p, "a string or a hash");
                }
                Value::Scalar(s) => hosts.push(HostEntry {
                    host: s.to_ruby_string(),
                    tags: Vec::new(),
                    mark: item.mark.clone(),
                }),
            }
        }
        for (i, h) in hosts.iter().enumerate() {
            // Hosts reach ssh (and a ProxyJump's `/bin/sh`) as `%h`.
            if !grammar::is_host(&h.host) {
                let (mark, host) = (h.mark.clone(), h.host.clone());
                self.error(
                    &mark,
                    &join(path, &i.to_string()),
                    format!("invalid host name {host:?}"),
                );
            }
        }
        hosts
    }

    fn ssl(&mut self, node: &Node, path: &str) -> Ssl {
        match &node.value {
            Value::Scalar(Scalar::Bool(true)) => Ssl::Auto,
            Value::Scalar(Scalar::Bool(false)) | Value::Scalar(Scalar::Null) => Ssl::Off,
            Value::Map(_) => {
                let Some(map) =
                    self.map(node, path, &["certificate_pem", "private_key_pem"], false)
                else {
                    return Ssl::Off;
                };
                let cert = self
                    .opt_string(map, "certificate_pem", path)
                    .filter(|s| !s.is_empty());
                let key = self
                    .opt_string(map, "private_key_pem", path)
                    .filter(|s| !s.is_empty());
                match (cert, key) {
                    (Some(certificate_pem), Some(private_key_pem)) => Ssl::Custom {
                        certificate_pem,
                        private_key_pem,
                    },
                    (Some(_), None) => {
                        self.error(&node.mark, path, "Missing private_key_pem setting (required when certificate_pem is present)");
                        Ssl::Off
                    }
                    (None, Some(_)) => {
                        self.error(&node.mark, path, "Missing certificate_pem setting (required when private_key_pem is present)");
                        Ssl::Off
                    }
                    (None, None) => Ssl::Auto,
                }
            }
            _ => {
                self.type_error(node, path, "a boolean or a hash");
                Ssl::Off
            }
        }
    }

    /// Validates one `proxy:` block as written (used before merging).
    fn check_proxy(&mut self, node: &Node, path: &str) {
        let _ = self.proxy(node, path);
    }

    fn proxy(&mut self, node: &Node, path: &str) -> Option<ProxySpec> {
        let empty = Vec::new();
        let map: &[(Key, Node)] = if node.is_null() {
            &empty
        } else {
            self.map(node, path, PROXY_KEYS, false)?
        };
        let host = get(map, "host");
        let hosts_node = get(map, "hosts");
        if host.is_some() && hosts_node.is_some() {
            self.error(
                &node.mark,
                path,
                "Specify one of 'host' or 'hosts', not both",
            );
        }
        let hosts = match (hosts_node, host) {
            (Some(h), _) => self
                .string_list(h, &join(path, "hosts"))
                .unwrap_or_default(),
            (None, Some(h)) => self
                .string(h, &join(path, "host"))
                .map(|s| s.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
            (None, None) => Vec::new(),
        };
        let ssl = get(map, "ssl").map_or(Ssl::Off, |n| self.ssl(n, &join(path, "ssl")));
        if ssl != Ssl::Off && hosts.iter().all(|h| h.is_empty()) {
            self.error(&node.mark, path, "Must set a host to enable automatic SSL");
        }
        let path_prefixes = match (get(map, "path_prefixes"), get(map, "path_prefix")) {
            (Some(n), _) => self
                .string_list(n, &join(path, "path_prefixes"))
                .unwrap_or_default(),
            (None, Some(n)) => self
                .string(n, &join(path, "path_prefix"))
                .map(|s| s.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let mut spec = ProxySpec {
            hosts,
            app_port: "80".into(),
            ssl,
            ssl_redirect: self.opt_bool(map, "ssl_redirect", path),
            forward_headers: self.opt_bool(map, "forward_headers", path),
            response_timeout: self
                .bounded(map, "response_timeout", path, MAX_SECONDS)
                .map(|i| i.to_string()),
            path_prefixes,
            strip_path_prefix: self.opt_bool(map, "strip_path_prefix", path),
            healthcheck_interval: None,
            healthcheck_path: None,
            healthcheck_timeout: None,
            buffer_requests: true,
            buffer_responses: true,
            buffer_memory: None,
            max_request_body: None,
            max_response_body: None,
            log_request_headers: None,
            log_response_headers: None,
            run: None,
        };
        if let Some(port) = get(map, "app_port") {
            let p = join(path, "app_port");
            if let Some(port) = self.integer(port, &p) {
                if !(1..=65535).contains(&port) {
                    self.error(
                        &get(map, "app_port")?.mark,
                        &p,
                        "must be a port number (1-65535)",
                    );
                }
                spec.app_port = port.to_string();
            }
        }
        if let Some(hc) = get(map, "healthcheck") {
            let hp = join(path, "healthcheck");
            if let Some(hm) = self.map(hc, &hp, &["interval", "path", "timeout"], false) {
                spec.healthcheck_interval = self
                    .bounded(hm, "interval", &hp, MAX_SECONDS)
                    .map(|i| i.to_string());
                spec.healthcheck_timeout = self
                    .bounded(hm, "timeout", &hp, MAX_SECONDS)
                    .map(|i| i.to_string());
                spec.healthcheck_path = self.opt_string(hm, "path", &hp);
            }
        }
        if let Some(b) = get(map, "buffering") {
            let bp = join(path, "buffering");
            let keys = [
                "requests",
                "responses",
                "max_request_body",
                "max_response_body",
                "memory",
            ];
            if let Some(bm) = self.map(b, &bp, &keys, false) {
                spec.buffer_requests = self.opt_bool(bm, "requests", &bp).unwrap_or(true);
                spec.buffer_responses = self.opt_bool(bm, "responses", &bp).unwrap_or(true);
                spec.max_request_body = self
                    .opt_integer(bm, "max_request_body", &bp)
                    .map(|i| i.to_string());
                spec.max_response_body = self
                    .opt_integer(bm, "max_response_body", &bp)
                    .map(|i| i.to_string());
                spec.buffer_memory = self.opt_integer(bm, "memory", &bp).map(|i| i.to_string());
            }
        }
        if let Some(l) = get(map, "logging") {
            let lp = join(path, "logging");
            if let Some(lm) = self.map(l, &lp, &["request_headers", "response_headers"], false) {
                spec.log_request_headers = self.opt_string_list(lm, "request_headers", &lp);
                spec.log_response_headers = self.opt_string_list(lm, "response_headers", &lp);
            }
        }
        if let Some(run) = get(map, "run")
            && !run.is_null()
        {
            spec.run = self.proxy_run(run, &join(path, "run"));
        }
        Some(spec)
    }

    fn proxy_run(&mut self, node: &Node, path: &str) -> Option<ProxyRun> {
        let map = self.map(node, path, PROXY_RUN_KEYS, false)?;
        let port = |d: &mut Self, key: &str, default: &str| -> String {
            d.opt_integer(map, key, path)
                .map_or(default.to_string(), |p| p.to_string())
        };
        let run = ProxyRun {
            http_port: port(self, "http_port", "80"),
            https_port: port(self, "https_port", "443"),
            metrics_port: self
                .opt_integer(map, "metrics_port", path)
                .map(|p| p.to_string()),
            debug: self.opt_bool(map, "debug", path).unwrap_or(false),
            log_max_size: match get(map, "log_max_size") {
                None => Some("10m".into()),
                Some(n) if n.is_null() => None,
                Some(n) => self.string(n, &join(path, "log_max_size")),
            },
            publish: self.opt_bool(map, "publish", path).unwrap_or(true),
            bind_ips: self.opt_string_list(map, "bind_ips", path),
            registry: self.opt_string(map, "registry", path),
            repository: self
                .opt_string(map, "repository", path)
                .unwrap_or_else(|| "basecamp/kamal-proxy".into()),
            version: self
                .opt_string(map, "version", path)
                .unwrap_or_else(|| "v0.9.2".into()),
            options: get(map, "options")
                .map(|o| self.proxy_run_options(o, &join(path, "options")))
                .unwrap_or_default(),
        };
        if let Some(ips) = &run.bind_ips {
            for ip in ips {
                if ip.parse::<std::net::IpAddr>().is_err() {
                    self.error(
                        &node.mark,
                        &join(path, "bind_ips"),
                        format!("Invalid publish IP address: {ip}"),
                    );
                }
            }
        }
        if !run.publish
            && (get(map, "bind_ips").is_some()
                || get(map, "http_port").is_some()
                || get(map, "https_port").is_some())
        {
            self.error(
                &node.mark,
                path,
                "Cannot set http_port, https_port or bind_ips when publish is false",
            );
        }
        Some(run)
    }

    fn paths(&mut self, node: &Node, path: &str) -> Vec<PathSpec> {
        let Value::Seq(items) = &node.value else {
            self.type_error(node, path, "an array");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = join(path, &i.to_string());
            let before = out.len();
            match &item.value {
                Value::Map(_) => {
                    let keys = ["local", "remote", "mode", "owner", "options"];
                    let Some(m) = self.map(item, &p, &keys, false) else {
                        continue;
                    };
                    let local = self.opt_string(m, "local", &p);
                    let remote = self.opt_string(m, "remote", &p);
                    let (Some(local), Some(remote)) = (local, remote) else {
                        self.error(&item.mark, &p, "needs both `local` and `remote`");
                        continue;
                    };
                    out.push(PathSpec {
                        mark: item.mark.clone(),
                        path: p.clone(),
                        local,
                        remote,
                        mode: self.opt_string(m, "mode", &p),
                        owner: self.opt_string(m, "owner", &p),
                        options: self.opt_string(m, "options", &p),
                    });
                }
                Value::Scalar(Scalar::Str(s)) => {
                    let mut parts = s.splitn(3, ':');
                    let local = parts.next().unwrap_or_default().to_string();
                    let Some(remote) = parts.next().map(str::to_string) else {
                        self.error(&item.mark, &p, "should be `local:remote[:options]`");
                        continue;
                    };
                    out.push(PathSpec {
                        mark: item.mark.clone(),
                        path: p.clone(),
                        local,
                        remote,
                        mode: None,
                        owner: None,
                        options: parts.next().map(str::to_string),
                    });
                }
                _ => self.type_error(item, &p, "a string or a hash"),
            }
            // The remote side becomes a path under the accessory's
            // directory on the host: `..` would write anywhere there.
            if let Some(last) = out.last().filter(|_| out.len() > before)
                && !grammar::is_contained_path(&last.remote)
            {
                self.error(
                    &item.mark,
                    &p,
                    "the remote path must not contain `..` or control characters",
                );
            }
        }
        out
    }

    /// Decode the whole merged document.
    pub fn config(&mut self, root: &Node, destination: Option<&str>) -> Option<Config> {
        let map = self.map(root, "", ROOT_KEYS, true)?;
        let berth = self.berth(map);

        let service = match get(map, "service") {
            Some(n) => self.string(n, "service"),
            None => {
                let m = self.root_mark.clone();
                self.error(&m, "service", "Missing required configuration for service");
                None
            }
        };
        if let Some(s) = &service
            && (s.is_empty()
                || !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            let mark = get(map, "service").map_or(self.root_mark.clone(), |n| n.mark.clone());
            self.error(
                &mark,
                "service",
                "Service name can only include alphanumeric characters, hyphens, and underscores",
            );
        }

        let registry = match get(map, "registry") {
            Some(n) if !n.is_null() => self.registry(n, "registry"),
            _ => {
                let m = self.root_mark.clone();
                self.error(
                    &m,
                    "registry",
                    "Missing required configuration for registry",
                );
                Registry::default()
            }
        };
        let image = self
            .opt_string(map, "image", "")
            .filter(|s| !s.trim().is_empty())
            .or_else(|| registry.is_local().then(|| service.clone()).flatten());
        if image.is_none() && !self.errors.iter().any(|e| e.path == "image") {
            let mark = get(map, "image").map_or(self.root_mark.clone(), |n| n.mark.clone());
            self.error(&mark, "image", "Missing required configuration for image");
        }

        let labels = get(map, "labels")
            .map(|n| self.labels(n, "labels", false))
            .unwrap_or_default();
        let volumes = self.opt_string_list(map, "volumes", "").unwrap_or_default();
        let env = get(map, "env")
            .map(|n| self.env(n, "env", true))
            .unwrap_or_default();
        let logging = get(map, "logging")
            .map(|n| self.logging(n, "logging"))
            .unwrap_or_default();
        let root_proxy = get(map, "proxy").filter(|n| !n.is_null());
        if let Some(p) = root_proxy {
            self.check_proxy(p, "proxy");
        }

        let primary_role = self
            .opt_string(map, "primary_role", "")
            .unwrap_or_else(|| "web".into());
        let allow_empty_roles = self.opt_bool(map, "allow_empty_roles", "").unwrap_or(false);
        let asset_path = self.opt_string(map, "asset_path", "");

        let roles = self.roles(map, root_proxy, &labels, &logging, &primary_role);
        let has_servers = get(map, "servers").is_some_and(|n| !n.is_null());
        if has_servers {
            match roles.iter().find(|r| r.name == primary_role) {
                // A malformed `servers:` was reported; its roles are unknown.
                _ if self.has_error_under("servers") => {}
                None => {
                    let mark = get(map, "primary_role")
                        .or(get(map, "servers"))
                        .map_or(self.root_mark.clone(), |n| n.mark.clone());
                    self.error(
                        &mark,
                        "primary_role",
                        format!("The primary_role {primary_role} isn't defined"),
                    );
                }
                Some(r)
                    if r.hosts.is_empty() && !self.has_error_under(&join("servers", &r.name)) =>
                {
                    let mark = r.mark.clone();
                    self.error(
                        &mark,
                        &join("servers", &r.name),
                        format!("No servers specified for the {} primary_role", r.name),
                    );
                }
                Some(_) => {}
            }
            if !allow_empty_roles {
                let empty: Vec<&Role> = roles
                    .iter()
                    .filter(|r| r.hosts.is_empty() && r.name != primary_role)
                    .filter(|r| !self.has_error_under(&join("servers", &r.name)))
                    .collect();
                for r in empty {
                    let mark = r.mark.clone();
                    self.error(&mark, &join("servers", &r.name), format!("No servers specified for the {} role. You can ignore this with allow_empty_roles: true", r.name));
                }
            }
        }

        let accessories = self.accessories(map, &roles);
        if !has_servers && accessories.is_empty() {
            let m = self.root_mark.clone();
            self.error(&m, "servers", "No servers or accessories specified");
        }

        let retain_containers = match self.opt_integer(map, "retain_containers", "") {
            None => 5,
            Some(n) if n < 1 => {
                let mark = get(map, "retain_containers")
                    .map_or(self.root_mark.clone(), |n| n.mark.clone());
                self.error(
                    &mark,
                    "retain_containers",
                    "Must retain at least 1 container",
                );
                5
            }
            Some(n) if n > MAX_RETAINED as i64 => {
                let mark = get(map, "retain_containers")
                    .map_or(self.root_mark.clone(), |n| n.mark.clone());
                self.error(
                    &mark,
                    "retain_containers",
                    format!("must be at most {MAX_RETAINED}"),
                );
                5
            }
            Some(n) => n as u32,
        };

        let minimum_version = self.opt_string(map, "minimum_version", "");
        if let Some(v) = &minimum_version
            && version_gt(v, KAMAL_COMPAT_VERSION)
        {
            let mark =
                get(map, "minimum_version").map_or(self.root_mark.clone(), |n| n.mark.clone());
            self.error(
                &mark,
                "minimum_version",
                format!("Current version is {KAMAL_COMPAT_VERSION}, minimum required is {v}"),
            );
        }

        let require_destination = self
            .opt_bool(map, "require_destination", "")
            .unwrap_or(false);
        if require_destination && destination.is_none() {
            let mark =
                get(map, "require_destination").map_or(self.root_mark.clone(), |n| n.mark.clone());
            self.error(
                &mark,
                "require_destination",
                "You must specify a destination (-d DEST)",
            );
        }

        let hooks_output = self.hooks_output(map);
        let ssh = get(map, "ssh").map(|n| self.ssh(n)).unwrap_or_default();
        // Kamal validates `builder` even when it is absent: an arch is required.
        let builder = match get(map, "builder") {
            Some(n) => self.builder(n, &registry),
            None => {
                let m = self.root_mark.clone();
                self.error(&m, "builder.arch", "Builder arch not set");
                Builder::default()
            }
        };
        let sshkit = get(map, "sshkit")
            .map(|n| self.sshkit(n))
            .unwrap_or_default();
        let boot = get(map, "boot").map(|n| self.boot(n)).unwrap_or_default();
        let aliases = get(map, "aliases")
            .map(|n| self.aliases(n))
            .unwrap_or_default();
        let output = get(map, "output")
            .map(|n| self.output(n))
            .unwrap_or_default();

        let config = Config {
            secret_refs: std::mem::take(&mut self.secret_refs),
            warnings: Vec::new(),
            service: service?,
            image: image?,
            destination: destination.map(str::to_string),
            labels,
            volumes,
            registry,
            roles,
            env,
            asset_path,
            hooks_path: self
                .opt_string(map, "hooks_path", "")
                .unwrap_or_else(|| ".kamal/hooks".into()),
            hooks_output,
            secrets_path: self
                .opt_string(map, "secrets_path", "")
                .unwrap_or_else(|| ".kamal/secrets".into()),
            error_pages_path: self.opt_string(map, "error_pages_path", ""),
            require_destination,
            primary_role,
            allow_empty_roles,
            retain_containers,
            minimum_version,
            readiness_delay: self
                .bounded(map, "readiness_delay", "", MAX_SECONDS)
                .unwrap_or(7),
            deploy_timeout: self
                .bounded(map, "deploy_timeout", "", MAX_SECONDS)
                .unwrap_or(30),
            drain_timeout: self
                .bounded(map, "drain_timeout", "", MAX_SECONDS)
                .unwrap_or(30),
            stop_timeout: self.bounded(map, "stop_timeout", "", MAX_SECONDS),
            run_directory: self.opt_string(map, "run_directory", ""),
            ssh,
            builder,
            accessories,
            sshkit,
            boot,
            logging,
            aliases,
            output,
            berth,
        };
        self.cross_checks(&config);
        Some(config)
    }

    fn cross_checks(&mut self, config: &Config) {
        // SSL through Let's Encrypt needs one host per role, and roles can't
        // share an SSL host.
        let mut ssl_hosts: Vec<(String, String)> = Vec::new();
        for role in &config.roles {
            let RoleProxy::On(proxy) = &role.proxy else {
                continue;
            };
            if proxy.ssl == Ssl::Auto && role.hosts.len() > 1 {
                self.error(&role.mark, &join("servers", &role.name), format!("SSL is only supported on a single server unless you provide custom certificates, found {} servers for role {}", role.hosts.len(), role.name));
            }
            if proxy.ssl != Ssl::Off {
                for h in &proxy.hosts {
                    if let Some((_, other)) = ssl_hosts.iter().find(|(host, _)| host == h) {
                        let msg = format!(
                            "Different roles can't share the same host for SSL: {h} (roles {other} and {})",
                            role.name
                        );
                        self.error(&role.mark, &join("servers", &role.name), msg);
                    }
                    ssl_hosts.push((h.clone(), role.name.clone()));
                }
            }
        }
        // One kamal-proxy per host: every role/accessory on a host must agree on `run`.
        for host in config.all_hosts() {
            let mut runs: Vec<&ProxyRun> = Vec::new();
            for role in config
                .roles
                .iter()
                .filter(|r| r.hosts.iter().any(|h| h.host == host))
            {
                if let RoleProxy::On(p) = &role.proxy
                    && let Some(run) = &p.run
                {
                    runs.push(run);
                }
            }
            for acc in config
                .accessories
                .iter()
                .filter(|a| a.hosts.contains(&host))
            {
                if let Some(run) = acc.proxy.as_ref().and_then(|p| p.run.as_ref()) {
                    runs.push(run);
                }
            }
            if runs.windows(2).any(|w| w[0] != w[1]) {
                let m = self.root_mark.clone();
                self.error(
                    &m,
                    "proxy.run",
                    format!("Conflicting proxy run configurations for host {host}"),
                );
            }
        }
        if config.registry.is_local()
            && let Some(remote) = &config.builder.remote
            && !remote.starts_with("ssh://")
        {
            let m = self.root_mark.clone();
            self.error(
                &m,
                "builder.remote",
                "Local registry with remote builder requires an SSH URL (e.g., ssh://user@host)",
            );
        }
    }

    fn berth(&mut self, map: &[(Key, Node)]) -> BerthSettings {
        fn valid_digest(d: &str) -> bool {
            d.strip_prefix("sha256:").is_some_and(|h| {
                h.len() == 64
                    && h.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
        }
        let mut settings = BerthSettings::default();
        let Some(node) = get(map, "x-berth") else {
            return settings;
        };
        if node.is_null() {
            return settings;
        }
        let Some(m) = self.map(
            node,
            "x-berth",
            &["version", "prune", "image_digest"],
            false,
        ) else {
            return settings;
        };
        settings.version = self.opt_string(m, "version", "x-berth");
        let digest_in_version = match settings.version.as_deref().map(|v| v.split_once('@')) {
            Some(Some((tag, digest))) => {
                let (tag, digest) = (tag.to_string(), digest.to_string());
                settings.version = Some(tag);
                Some(digest)
            }
            _ => None,
        };
        let digest = self.opt_string(m, "image_digest", "x-berth");
        for (key, d) in [("version", &digest_in_version), ("image_digest", &digest)] {
            if let Some(d) = d
                && !valid_digest(d)
            {
                let mark = get(m, key).map_or(node.mark.clone(), |n| n.mark.clone());
                self.error(
                    &mark,
                    &format!("x-berth.{key}"),
                    format!("{d:?} is not an image digest (sha256: and 64 lowercase hex digits)"),
                );
            }
        }
        if let (Some(a), Some(b)) = (&digest_in_version, &digest)
            && a != b
        {
            let mark = get(m, "image_digest").map_or(node.mark.clone(), |n| n.mark.clone());
            self.error(
                &mark,
                "x-berth.image_digest",
                "differs from the digest in x-berth.version",
            );
        }
        settings.image_digest = digest.or(digest_in_version);
        if let Some(v) = &settings.version
            && !valid_docker_tag(v)
        {
            let mark = get(m, "version").map_or(node.mark.clone(), |n| n.mark.clone());
            self.error(&mark, "x-berth.version", format!("{v:?} is not a valid image tag (letters, digits, `_`, `.`, `-`; at most 128; not starting with `.` or `-`)"));
        }
        settings.prune = self.opt_bool(m, "prune", "x-berth").unwrap_or(false);
        settings
    }

    fn roles(
        &mut self,
        map: &[(Key, Node)],
        root_proxy: Option<&Node>,
        root_labels: &Labels,
        root_logging: &Logging,
        primary: &str,
    ) -> Vec<Role> {
        let Some(servers) = get(map, "servers") else {
            return Vec::new();
        };
        let root_logging_node = get(map, "logging");
        let mut roles = Vec::new();
        let build = |d: &mut Self,
                     name: &str,
                     hosts: Vec<HostEntry>,
                     spec: Option<&[(Key, Node)]>,
                     mark: &Mark| {
            let path = join("servers", name);
            let get_spec = |k: &str| spec.and_then(|s| get(s, k));
            let role_proxy = get_spec("proxy");
            // Only `false` turns the proxy off for the primary role; any
            // other role needs `proxy:` set to something truthy.
            let running = match role_proxy.map(|n| &n.value) {
                Some(Value::Scalar(Scalar::Bool(false))) => false,
                None | Some(Value::Scalar(Scalar::Null)) => name == primary,
                Some(_) => true,
            };
            // Kamal: a role's `proxy` is `true`, `false` or a hash.
            if let Some(rp) = role_proxy
                && !matches!(
                    rp.value,
                    Value::Map(_) | Value::Scalar(Scalar::Bool(_)) | Value::Scalar(Scalar::Null)
                )
            {
                d.type_error(rp, &join(&path, "proxy"), "a hash");
            }
            let proxy = if running {
                if let Some(rp) = role_proxy
                    && matches!(rp.value, Value::Map(_))
                {
                    d.check_proxy(rp, &join(&path, "proxy"));
                }
                let role_node = role_proxy.filter(|n| matches!(n.value, Value::Map(_)));
                let merged = match (root_proxy, role_node) {
                    (Some(r), Some(o)) => deep_merge(r.clone(), o.clone()),
                    (Some(r), None) => r.clone(),
                    (None, Some(o)) => o.clone(),
                    (None, None) => Node {
                        value: Value::Map(Vec::new()),
                        mark: mark.clone(),
                    },
                };
                // Problems were reported on the unmerged blocks already.
                let before = d.errors.len();
                let spec = d.proxy(&merged, &join(&path, "proxy"));
                d.errors.truncate(before);
                spec.map_or(RoleProxy::Off, |s| RoleProxy::On(Box::new(s)))
            } else {
                if let Some(rp) = role_proxy
                    && !matches!(
                        rp.value,
                        Value::Scalar(Scalar::Bool(_)) | Value::Scalar(Scalar::Null)
                    )
                {
                    d.type_error(rp, &join(&path, "proxy"), "a boolean or a hash");
                }
                RoleProxy::Off
            };
            let mut labels = root_labels.clone();
            if let Some(l) = get_spec("labels") {
                for (k, v) in d.labels(l, &join(&path, "labels"), true) {
                    if let Some(slot) = labels.iter_mut().find(|(lk, _)| *lk == k) {
                        slot.1 = v;
                    } else {
                        labels.push((k, v));
                    }
                }
            }
            let logging = match (root_logging_node, get_spec("logging")) {
                (Some(r), Some(o)) if !o.is_null() => {
                    d.logging(o, &join(&path, "logging"));
                    let before = d.errors.len();
                    let merged =
                        d.logging(&deep_merge(r.clone(), o.clone()), &join(&path, "logging"));
                    d.errors.truncate(before);
                    merged
                }
                (None, Some(o)) => d.logging(o, &join(&path, "logging")),
                _ => root_logging.clone(),
            };
            let cmd = get_spec("cmd").and_then(|n| d.cmd(n, &join(&path, "cmd")));
            let (options, restart) = get_spec("options")
                .map(|n| d.docker_options(n, &join(&path, "options")))
                .unwrap_or_default();
            let stop_timeout = spec.and_then(|s| d.bounded(s, "stop_timeout", &path, MAX_SECONDS));
            let env = get_spec("env")
                .map(|n| d.env(n, &join(&path, "env"), false))
                .unwrap_or_default();
            let asset_path =
                get_spec("asset_path").and_then(|n| d.string(n, &join(&path, "asset_path")));
            Role {
                name: name.to_string(),
                hosts,
                cmd,
                options,
                restart,
                stop_timeout,
                logging,
                proxy,
                labels,
                env,
                asset_path,
                mark: mark.clone(),
            }
        };
        match &servers.value {
            Value::Scalar(Scalar::Null) => {}
            Value::Seq(_) => {
                let hosts = self.hosts(servers, "servers");
                roles.push(build(self, "web", hosts, None, &servers.mark));
            }
            Value::Map(entries) => {
                let mut sorted: Vec<&(Key, Node)> = entries.iter().collect();
                sorted.sort_by(|a, b| a.0.name.cmp(&b.0.name));
                for (key, node) in sorted {
                    let path = join("servers", &key.name);
                    if key.name.is_empty()
                        || !key
                            .name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                    {
                        self.error(&key.mark, &path, "role names can only include alphanumeric characters, hyphens, and underscores");
                    }
                    match &node.value {
                        Value::Seq(_) => {
                            let hosts = self.hosts(node, &path);
                            roles.push(build(self, &key.name, hosts, None, &key.mark));
                        }
                        Value::Map(_) => {
                            let Some(spec) = self.map(node, &path, ROLE_KEYS, false) else {
                                continue;
                            };
                            let hosts = match get(spec, "hosts") {
                                Some(h) if !h.is_null() => self.hosts(h, &join(&path, "hosts")),
                                _ => Vec::new(),
                            };
                            roles.push(build(self, &key.name, hosts, Some(spec), &key.mark));
                        }
                        Value::Scalar(Scalar::Null) => {
                            roles.push(build(self, &key.name, Vec::new(), None, &key.mark));
                        }
                        _ => self.type_error(node, &path, "an array or a hash"),
                    }
                }
            }
            _ => self.type_error(servers, "servers", "an array or a hash"),
        }
        roles
    }

    fn accessories(&mut self, map: &[(Key, Node)], roles: &[Role]) -> Vec<Accessory> {
        let Some(node) = get(map, "accessories") else {
            return Vec::new();
        };
        if node.is_null() {
            return Vec::new();
        }
        let Value::Map(entries) = &node.value else {
            self.type_error(node, "accessories", "a hash");
            return Vec::new();
        };
        let service = get(map, "service").and_then(|n| match &n.value {
            Value::Scalar(s) => Some(s.to_ruby_string()),
            _ => None,
        });
        let mut out = Vec::new();
        for (key, acc) in entries {
            let path = join("accessories", &key.name);
            let Some(m) = self.map(acc, &path, ACCESSORY_KEYS, false) else {
                continue;
            };
            // The name is a path component on the hosts (its env file).
            if !grammar::is_container_name(&key.name) {
                self.error(
                    &key.mark,
                    &path,
                    "accessory names can only include alphanumeric characters, `_`, `.` and `-`, and start with a letter or digit",
                );
            }
            let selectors: Vec<&str> = ["host", "hosts", "role", "roles", "tag", "tags"]
                .into_iter()
                .filter(|k| get(m, k).is_some())
                .collect();
            if selectors.len() != 1 {
                self.error(
                    &acc.mark,
                    &path,
                    "specify one of `host`, `hosts`, `role`, `roles`, `tag` or `tags`",
                );
            }
            let hosts = self.accessory_hosts(m, &path, roles, selectors.first().copied());
            let registry = get(m, "registry")
                .filter(|n| !n.is_null())
                .map(|n| self.registry(n, &join(&path, "registry")));
            let Some(image_name) = self.opt_string(m, "image", &path) else {
                self.error(
                    &acc.mark,
                    &join(&path, "image"),
                    "Missing required configuration for image",
                );
                continue;
            };
            let image = match registry.as_ref().and_then(|r| r.server.as_ref()) {
                Some(server) => format!("{server}/{image_name}"),
                None => image_name,
            };
            let service_name = self.opt_string(m, "service", &path).unwrap_or_else(|| {
                crate::kamal::accessory_container(service.as_deref().unwrap_or_default(), &key.name)
            });
            if let Some(n) = get(m, "service")
                && !grammar::is_container_name(&service_name)
            {
                self.error(
                    &n.mark,
                    &join(&path, "service"),
                    "is the accessory's container name: alphanumeric characters, `_`, `.` and `-`, starting with a letter or digit",
                );
            }
            let port = self.opt_string(m, "port", &path).map(|p| {
                if p.contains(':') {
                    p
                } else {
                    format!("{p}:{p}")
                }
            });
            let proxy = get(m, "proxy")
                .filter(|n| !n.is_null() && !matches!(n.value, Value::Map(ref e) if e.is_empty()))
                .and_then(|n| self.proxy(n, &join(&path, "proxy")));
            let (options, restart) = get(m, "options")
                .map(|n| self.docker_options(n, &join(&path, "options")))
                .unwrap_or_default();
            out.push(Accessory {
                name: key.name.clone(),
                service_name,
                image,
                registry,
                hosts,
                cmd: get(m, "cmd").and_then(|n| self.cmd(n, &join(&path, "cmd"))),
                port,
                labels: get(m, "labels")
                    .map(|n| self.labels(n, &join(&path, "labels"), true))
                    .unwrap_or_default(),
                options,
                restart,
                env: get(m, "env")
                    .map(|n| self.env(n, &join(&path, "env"), false))
                    .unwrap_or_default(),
                files: get(m, "files")
                    .map(|n| self.paths(n, &join(&path, "files")))
                    .unwrap_or_default(),
                directories: get(m, "directories")
                    .map(|n| self.paths(n, &join(&path, "directories")))
                    .unwrap_or_default(),
                volumes: self
                    .opt_string_list(m, "volumes", &path)
                    .unwrap_or_default(),
                network: self
                    .opt_string(m, "network", &path)
                    .unwrap_or_else(|| "kamal".into()),
                proxy,
                mark: key.mark.clone(),
            });
        }
        out
    }

    fn accessory_hosts(
        &mut self,
        m: &[(Key, Node)],
        path: &str,
        roles: &[Role],
        selector: Option<&str>,
    ) -> Vec<String> {
        let Some(selector) = selector else {
            return Vec::new();
        };
        let Some(node) = get(m, selector) else {
            return Vec::new();
        };
        let p = join(path, selector);
        let values = match selector {
            "host" | "role" | "tag" => self.string(node, &p).map(|s| vec![s]),
            _ => self.string_list(node, &p),
        }
        .unwrap_or_default();
        match selector {
            "host" | "hosts" => values,
            "role" | "roles" => {
                let mut hosts = Vec::new();
                for name in &values {
                    match roles.iter().find(|r| &r.name == name) {
                        Some(role) => hosts.extend(role.hosts.iter().map(|h| h.host.clone())),
                        None => self.error(&node.mark, &p, format!("unknown role {name}")),
                    }
                }
                hosts
            }
            _ => roles
                .iter()
                .flat_map(|r| r.hosts.iter())
                .filter(|h| h.tags.iter().any(|t| values.contains(t)))
                .map(|h| h.host.clone())
                .collect(),
        }
    }

    fn hooks_output(&mut self, map: &[(Key, Node)]) -> HooksOutput {
        let check = |d: &mut Self, node: &Node, path: &str, hook: Option<&str>| -> Option<String> {
            let level = match &node.value {
                Value::Scalar(Scalar::Str(s)) | Value::Scalar(Scalar::Symbol(s)) => {
                    s.trim_start_matches(':').to_string()
                }
                _ => {
                    d.type_error(node, path, "a string");
                    return None;
                }
            };
            if level != "quiet" && level != "verbose" {
                let context = hook.map(|h| format!(" for hook '{h}'")).unwrap_or_default();
                d.error(
                    &node.mark,
                    path,
                    format!(
                        "Invalid hooks_output '{level}'{context}, must be one of: quiet, verbose"
                    ),
                );
                return None;
            }
            Some(level)
        };
        match get(map, "hooks_output") {
            None => HooksOutput::Default,
            Some(n) => match &n.value {
                Value::Map(entries) => HooksOutput::PerHook(
                    entries
                        .iter()
                        .filter_map(|(k, v)| {
                            check(self, v, &join("hooks_output", &k.name), Some(&k.name))
                                .map(|l| (k.name.clone(), l))
                        })
                        .collect(),
                ),
                _ => check(self, n, "hooks_output", None)
                    .map_or(HooksOutput::Default, HooksOutput::All),
            },
        }
    }

    fn ssh(&mut self, node: &Node) -> Ssh {
        let mut ssh = Ssh::default();
        let Some(m) = self.map(node, "ssh", SSH_KEYS, false) else {
            return ssh;
        };
        if let Some(u) = self.opt_string(m, "user", "ssh") {
            if !grammar::is_user(&u)
                && let Some(n) = get(m, "user")
            {
                self.error(
                    &n.mark,
                    "ssh.user",
                    "should be a login name (letters, digits, `_`, `.` and `-`)",
                );
            }
            ssh.user = u;
        }
        if let Some(p) = self.opt_string(m, "port", "ssh") {
            if p.parse::<u16>().map_or(true, |n| n == 0) {
                let mark = get(m, "port").map_or(node.mark.clone(), |n| n.mark.clone());
                self.error(&mark, "ssh.port", format!("{p:?} is not a port number"));
            }
            ssh.port = p;
        }
        ssh.proxy = self.opt_string(m, "proxy", "ssh").map(|p| {
            if !grammar::is_jump(&p)
                && let Some(n) = get(m, "proxy")
            {
                self.error(
                    &n.mark,
                    "ssh.proxy",
                    "should be a jump host, `[user@]host[:port]`",
                );
            }
            if p.contains('@') {
                p
            } else {
                format!("root@{p}")
            }
        });
        ssh.proxy_command = self.opt_string(m, "proxy_command", "ssh");
        if self.untrusted
            && ssh.proxy_command.is_some()
            && let Some(n) = get(m, "proxy_command")
        {
            self.error(
                &n.mark,
                "ssh.proxy_command",
                "runs a command on berth's machine, which berth refuses for an untrusted repository (berth run, --untrusted); use ssh.proxy (a jump host)",
            );
        }
        if let Some(c) = &ssh.proxy_command
            && c.chars().any(char::is_control)
            && let Some(n) = get(m, "proxy_command")
        {
            self.error(
                &n.mark,
                "ssh.proxy_command",
                "must be one line without control characters",
            );
        }
        ssh.log_level = self.opt_string(m, "log_level", "ssh");
        ssh.keys_only = self.opt_bool(m, "keys_only", "ssh");
        ssh.keys = self.opt_string_list(m, "keys", "ssh").unwrap_or_default();
        self.config_words(m, "keys", &ssh.keys);
        ssh.key_data = self
            .opt_string_list(m, "key_data", "ssh")
            .unwrap_or_default();
        ssh.forward_agent = self.opt_bool(m, "forward_agent", "ssh");
        if ssh.forward_agent == Some(true)
            && let Some(n) = get(m, "forward_agent")
        {
            self.warnings.push(ConfigError {
                mark: n.mark.clone(),
                path: "ssh.forward_agent".into(),
                message: "berth never forwards an SSH agent to the hosts (what it runs there needs none), so `true` has no effect on berth".into(),
            });
        }
        if let Some(c) = get(m, "config") {
            ssh.config = match &c.value {
                Value::Scalar(Scalar::Bool(true)) => SshConfigFiles::Default,
                Value::Scalar(Scalar::Bool(false)) => SshConfigFiles::Ignore,
                Value::Scalar(Scalar::Str(s)) => {
                    let files = vec![s.clone()];
                    self.config_words(m, "config", &files);
                    SshConfigFiles::Files(files)
                }
                Value::Seq(_) => {
                    let files = self.string_list(c, "ssh.config").unwrap_or_default();
                    self.config_words(m, "config", &files);
                    SshConfigFiles::Files(files)
                }
                _ => {
                    self.type_error(c, "ssh.config", "a boolean, a string or an array");
                    SshConfigFiles::Default
                }
            };
            // An ssh_config can run commands (ProxyCommand, LocalCommand,
            // KnownHostsCommand, Match exec) on berth's machine.
            if self.untrusted && matches!(ssh.config, SshConfigFiles::Files(_)) {
                self.error(
                    &c.mark,
                    "ssh.config",
                    "an ssh_config file can run commands on berth's machine, which berth refuses for an untrusted repository (berth run, --untrusted); configure SSH for berth itself",
                );
            }
        }
        ssh
    }

    /// `ssh.keys` / `ssh.config` entries become quoted ssh_config words.
    fn config_words(&mut self, m: &[(Key, Node)], key: &str, values: &[String]) {
        for (i, v) in values.iter().enumerate() {
            if grammar::is_config_word(v) {
                continue;
            }
            let mark = match get(m, key).map(|n| &n.value) {
                Some(Value::Seq(items)) => items.get(i).map(|n| n.mark.clone()),
                _ => get(m, key).map(|n| n.mark.clone()),
            };
            if let Some(mark) = mark {
                self.error(
                    &mark,
                    &format!("ssh.{key}.{i}"),
                    "a path without quotes or control characters",
                );
            }
        }
    }

    fn builder(&mut self, node: &Node, registry: &Registry) -> Builder {
        let mut builder = Builder::default();
        let Some(m) = self.map(node, "builder", BUILDER_KEYS, false) else {
            return builder;
        };
        if let Some(a) = get(m, "arch") {
            if matches!(a.value, Value::Map(_)) {
                self.error(&a.mark, "builder.arch", "should be an array or a string");
            } else {
                builder.arch = self.string_or_list(a, "builder.arch").unwrap_or_default();
            }
        }
        if builder.arch.is_empty() && !self.has_error_under("builder.arch") {
            self.error(&node.mark, "builder.arch", "Builder arch not set");
        }
        builder.remote = self.opt_string(m, "remote", "builder");
        for key in [
            "context",
            "dockerfile",
            "target",
            "ssh",
            "driver",
            "provenance",
        ] {
            let _ = self.opt_string(m, key, "builder");
        }
        let _ = self.opt_string_list(m, "secrets", "builder");
        let local = self.opt_bool(m, "local", "builder");
        if let Some(sbom) = get(m, "sbom") {
            let _ = self.string(sbom, "builder.sbom");
        }
        if let Some(args) = get(m, "args") {
            let _ = self.arg_map(args, "builder.args");
        }
        if let Some(cache) = get(m, "cache")
            && let Some(cm) = self.map(cache, "builder.cache", &["type", "options", "image"], false)
        {
            if let Some(t) = self.opt_string(cm, "type", "builder.cache")
                && t != "gha"
                && t != "registry"
            {
                self.error(
                    &cache.mark,
                    "builder.cache.type",
                    format!("Invalid cache type: {t}"),
                );
            }
            let _ = self.opt_string(cm, "options", "builder.cache");
            let _ = self.opt_string(cm, "image", "builder.cache");
        }
        if let Some(pack) = get(m, "pack") {
            if let Some(pm) = self.map(pack, "builder.pack", &["builder", "buildpacks"], false) {
                let _ = self.opt_string(pm, "builder", "builder.pack");
                let _ = self.opt_string_list(pm, "buildpacks", "builder.pack");
            }
            if builder.arch.len() > 1 {
                self.error(
                    &pack.mark,
                    "builder.pack",
                    "buildpacks only support building for one arch",
                );
            }
        }
        if local == Some(false) && builder.remote.as_deref().is_none_or(str::is_empty) {
            self.error(
                &node.mark,
                "builder.local",
                "Cannot disable local builds, no remote is set",
            );
        }
        let _ = registry;
        builder
    }

    /// `output:` (Kamal 2.12): `otel.endpoint` and `file.path`, each
    /// required when its logger is named (Kamal's loggers raise without).
    fn output(&mut self, node: &Node) -> Output {
        let mut output = Output::default();
        if node.is_null() {
            return output;
        }
        let Some(m) = self.map(node, "output", &["otel", "file"], false) else {
            return output;
        };
        for (logger, key) in [("otel", "endpoint"), ("file", "path")] {
            let Some(n) = get(m, logger) else { continue };
            let path = join("output", logger);
            let Some(settings) = self.map(n, &path, &[key], false) else {
                continue;
            };
            let value = self.opt_string(settings, key, &path);
            if value.is_none() && get(settings, key).is_none_or(Node::is_null) {
                let message = match logger {
                    "otel" => "OTel endpoint is required",
                    _ => "file path is required",
                };
                self.error(&n.mark, &join(&path, key), message);
            }
            match logger {
                "otel" => output.otel_endpoint = value,
                _ => output.file_path = value,
            }
        }
        output
    }

    fn sshkit(&mut self, node: &Node) -> Sshkit {
        let keys = ["max_concurrent_starts", "pool_idle_timeout", "dns_retries"];
        let Some(m) = self.map(node, "sshkit", &keys, false) else {
            return Sshkit::default();
        };
        Sshkit {
            max_concurrent_starts: self
                .bounded(m, "max_concurrent_starts", "sshkit", 10_000)
                .map(|n| n as i64),
            pool_idle_timeout: self
                .bounded(m, "pool_idle_timeout", "sshkit", MAX_SECONDS)
                .map(|n| n as i64),
            dns_retries: self
                .bounded(m, "dns_retries", "sshkit", 100)
                .map(|n| n as i64),
        }
    }

    fn boot(&mut self, node: &Node) -> Boot {
        let mut boot = Boot::default();
        let Some(m) = self.map(node, "boot", &["limit", "wait", "parallel_roles"], false) else {
            return boot;
        };
        if let Some(l) = get(m, "limit") {
            boot.limit = match &l.value {
                Value::Scalar(Scalar::Int(n)) if *n > 0 => Some(BootLimit::Hosts(*n as u64)),
                Value::Scalar(Scalar::Str(s)) => {
                    match s.strip_suffix('%').map(str::parse::<u64>) {
                        Some(Ok(p)) if (1..=100).contains(&p) => Some(BootLimit::Percent(p)),
                        _ => {
                            match s.parse::<u64>() {
                                Ok(n) if n > 0 => Some(BootLimit::Hosts(n)),
                                _ => {
                                    self.error(&l.mark, "boot.limit", "should be a positive number of hosts or a percentage like 25%");
                                    None
                                }
                            }
                        }
                    }
                }
                _ => {
                    self.error(
                        &l.mark,
                        "boot.limit",
                        "should be a positive number of hosts or a percentage like 25%",
                    );
                    None
                }
            };
        }
        boot.wait = self.bounded(m, "wait", "boot", MAX_SECONDS);
        boot.parallel_roles = self.opt_bool(m, "parallel_roles", "boot").unwrap_or(false);
        boot
    }

    fn aliases(&mut self, node: &Node) -> Vec<(String, String)> {
        let Value::Map(entries) = &node.value else {
            self.type_error(node, "aliases", "a hash");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, value) in entries {
            let path = join("aliases", &key.name);
            if key.name.is_empty()
                || !key
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            {
                self.error(&key.mark, &path, format!("Invalid alias name: '{}'. Must only contain lowercase letters, alphanumeric, hyphens and underscores.", key.name));
            }
            if KAMAL_COMMANDS.contains(&key.name.as_str()) {
                self.error(
                    &key.mark,
                    &path,
                    format!("Alias '{}' conflicts with a built-in command.", key.name),
                );
            }
            if let Some(cmd) = self.string(value, &path) {
                out.push((key.name.clone(), cmd));
            }
        }
        out
    }
}

pub fn get<'n>(map: &'n [(Key, Node)], key: &str) -> Option<&'n Node> {
    map.iter().find(|(k, _)| k.name == key).map(|(_, v)| v)
}

fn opt_value(node: &Node) -> Option<OptValue> {
    match &node.value {
        Value::Scalar(Scalar::Bool(true)) | Value::Scalar(Scalar::Null) => Some(OptValue::Flag),
        Value::Scalar(s) => Some(OptValue::Value(s.to_ruby_string())),
        Value::Seq(items) => items
            .iter()
            .map(opt_value)
            .collect::<Option<Vec<_>>>()
            .map(OptValue::List),
        Value::Map(_) => None,
    }
}

/// Docker's tag grammar: `[\w][\w.-]{0,127}`.
pub fn valid_docker_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    tag.len() <= 128
        && (first.is_ascii_alphanumeric() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `a > b` for dotted versions (RubyGems-style, numeric segments).
fn version_gt(a: &str, b: &str) -> bool {
    let parse = |v: &str| -> Vec<u64> {
        v.trim_start_matches('v')
            .split('.')
            .map(|s| s.parse().unwrap_or(0))
            .collect()
    };
    let (a, b) = (parse(a), parse(b));
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0),
        );
        if x != y {
            return x > y;
        }
    }
    false
}

/// The allowed key nearest to a misspelt one (edit distance ≤ 2).
fn closest<'a>(key: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (levenshtein(key, a), *a))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
