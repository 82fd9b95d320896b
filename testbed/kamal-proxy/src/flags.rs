//! pflag-style flag parsing (`--f=v` or `--f v`, booleans bare or `=true`,
//! repeatable flags with comma-separated values, unknown flags refused) and the
//! typed options of the commands Kamal runs: exactly the flags it sends.

use std::time::Duration;

use crate::log::json_str;
use crate::resolve::split_host_port;
use crate::values::{parse_go_bool, parse_go_duration};

#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Kind {
    Bool,
    Value,
    /// Repeatable string slice; each occurrence may also be comma separated.
    Multi,
}

#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub(crate) positional: Vec<String>,
    values: Vec<(String, String)>,
}

impl Parsed {
    pub(crate) fn last(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn multi(&self, name: &str) -> Vec<String> {
        self.values
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    pub(crate) fn bool_or(&self, name: &str, default: bool) -> Result<bool, String> {
        match self.last(name) {
            Some(v) => parse_go_bool(v),
            None => Ok(default),
        }
    }

    fn duration_or(&self, name: &str, default: Duration) -> Result<Duration, String> {
        match self.last(name) {
            Some(v) => parse_go_duration(v)
                .map_err(|e| format!("invalid argument \"{v}\" for \"--{name}\" flag: {e}")),
            None => Ok(default),
        }
    }

    fn u64_or(&self, name: &str, default: u64) -> Result<u64, String> {
        match self.last(name) {
            Some(v) => v.parse::<u64>().map_err(|_| {
                format!("invalid argument \"{v}\" for \"--{name}\" flag: strconv.ParseInt: parsing \"{v}\": invalid syntax")
            }),
            None => Ok(default),
        }
    }
}

pub(crate) fn parse_flags(args: &[String], specs: &[(&str, Kind)]) -> Result<Parsed, String> {
    let mut parsed = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            parsed.positional.extend(args[i + 1..].iter().cloned());
            break;
        }
        if let Some(body) = a.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let kind = specs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, k)| *k)
                .ok_or_else(|| format!("unknown flag: --{name}"))?;
            let value = match (kind, inline) {
                (Kind::Bool, Some(v)) => {
                    parse_go_bool(v).map_err(|e| {
                        format!("invalid argument \"{v}\" for \"--{name}\" flag: {e}")
                    })?;
                    v.to_string()
                }
                (Kind::Bool, None) => "true".to_string(),
                (_, Some(v)) => v.to_string(),
                (_, None) => {
                    i += 1;
                    args.get(i)
                        .cloned()
                        .ok_or_else(|| format!("flag needs an argument: --{name}"))?
                }
            };
            parsed.values.push((name.to_string(), value));
        } else if a.len() > 1 && a.starts_with('-') {
            let c = a.chars().nth(1).unwrap_or('-');
            return Err(format!("unknown shorthand flag: '{c}' in {a}"));
        } else {
            parsed.positional.push(a.clone());
        }
        i += 1;
    }
    Ok(parsed)
}

fn one_positional(p: &Parsed) -> Result<String, String> {
    if p.positional.len() != 1 {
        return Err(format!("accepts 1 arg(s), received {}", p.positional.len()));
    }
    let name = p.positional[0].clone();
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("invalid service name {}", json_str(&name)));
    }
    Ok(name)
}

const DEPLOY_FLAGS: &[(&str, Kind)] = &[
    ("target", Kind::Multi),
    ("host", Kind::Multi),
    ("tls", Kind::Bool),
    ("tls-certificate-path", Kind::Value),
    ("tls-private-key-path", Kind::Value),
    ("tls-redirect", Kind::Bool),
    ("tls-acme-cache-path", Kind::Value),
    ("deploy-timeout", Kind::Value),
    ("drain-timeout", Kind::Value),
    ("health-check-interval", Kind::Value),
    ("health-check-timeout", Kind::Value),
    ("health-check-path", Kind::Value),
    ("target-timeout", Kind::Value),
    ("buffer-requests", Kind::Bool),
    ("buffer-responses", Kind::Bool),
    ("buffer-memory", Kind::Value),
    ("max-request-body", Kind::Value),
    ("max-response-body", Kind::Value),
    ("path-prefix", Kind::Multi),
    ("strip-path-prefix", Kind::Bool),
    ("forward-headers", Kind::Bool),
    ("log-request-header", Kind::Multi),
    ("log-response-header", Kind::Multi),
    ("error-pages", Kind::Value),
    ("writer-affinity-timeout", Kind::Value),
    ("read-targets", Kind::Multi),
];

const STOP_FLAGS: &[(&str, Kind)] = &[("drain-timeout", Kind::Value), ("message", Kind::Value)];

pub(crate) const RUN_FLAGS: &[(&str, Kind)] = &[
    ("debug", Kind::Bool),
    ("metrics-port", Kind::Value),
    ("http-port", Kind::Value),
    ("https-port", Kind::Value),
];

/// Parsed deploy flags. Some fields (TLS, buffering sizes, error pages,
/// writer affinity, read targets) are validated and stored but have no effect
/// in this stand-in; they are persisted through the raw deploy args.
#[derive(Clone, Debug)]
#[allow(dead_code)]
pub(crate) struct DeployOptions {
    pub(crate) service: String,
    pub(crate) target: String,
    pub(crate) hosts: Vec<String>,
    // TLS settings are stored only: this stand-in does not terminate TLS.
    pub(crate) tls: bool,
    pub(crate) tls_certificate_path: Option<String>,
    pub(crate) tls_private_key_path: Option<String>,
    pub(crate) tls_redirect: bool,
    pub(crate) tls_acme_cache_path: Option<String>,
    pub(crate) deploy_timeout: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) health_check_interval: Duration,
    pub(crate) health_check_timeout: Duration,
    pub(crate) health_check_path: String,
    pub(crate) target_timeout: Duration,
    pub(crate) buffer_requests: bool,
    pub(crate) buffer_responses: bool,
    pub(crate) buffer_memory: u64,
    pub(crate) max_request_body: u64,
    pub(crate) max_response_body: u64,
    pub(crate) path_prefixes: Vec<String>,
    pub(crate) strip_path_prefix: bool,
    pub(crate) forward_headers: bool,
    pub(crate) log_request_headers: Vec<String>,
    pub(crate) log_response_headers: Vec<String>,
    pub(crate) error_pages: Option<String>,
    pub(crate) writer_affinity_timeout: Duration,
    pub(crate) read_targets: Vec<String>,
}

fn normalize_prefix(p: &str) -> String {
    let mut s = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    };
    while s.len() > 1 && s.ends_with('/') {
        s.pop();
    }
    s
}

fn validate_target(t: &str) -> Result<(), String> {
    split_host_port(t).map(|_| ())
}

pub(crate) fn parse_deploy_args(args: &[String]) -> Result<DeployOptions, String> {
    let p = parse_flags(args, DEPLOY_FLAGS)?;
    let service = one_positional(&p)?;
    let targets = p.multi("target");
    let target = match targets.as_slice() {
        [] => return Err("required flag(s) \"target\" not set".into()),
        [t] => t.clone(),
        _ => {
            return Err("multiple targets are not supported by this kamal-proxy stand-in".into());
        }
    };
    validate_target(&target)?;
    let read_targets = p.multi("read-targets");
    for t in &read_targets {
        validate_target(t)?;
    }
    let mut hosts: Vec<String> = p.multi("host").iter().map(|h| h.to_lowercase()).collect();
    hosts.dedup();
    let mut path_prefixes: Vec<String> = p
        .multi("path-prefix")
        .iter()
        .map(|s| normalize_prefix(s))
        .filter(|s| s != "/")
        .collect();
    path_prefixes.sort();
    path_prefixes.dedup();
    let tls = p.bool_or("tls", false)?;
    let mut health_check_path = p.last("health-check-path").unwrap_or("/up").to_string();
    if !health_check_path.starts_with('/') {
        health_check_path.insert(0, '/');
    }
    Ok(DeployOptions {
        service,
        target,
        hosts,
        tls,
        tls_certificate_path: p.last("tls-certificate-path").map(String::from),
        tls_private_key_path: p.last("tls-private-key-path").map(String::from),
        tls_redirect: p.bool_or("tls-redirect", true)?,
        tls_acme_cache_path: p.last("tls-acme-cache-path").map(String::from),
        deploy_timeout: p.duration_or("deploy-timeout", Duration::from_secs(30))?,
        drain_timeout: p.duration_or("drain-timeout", Duration::from_secs(30))?,
        health_check_interval: p.duration_or("health-check-interval", Duration::from_secs(1))?,
        health_check_timeout: p.duration_or("health-check-timeout", Duration::from_secs(5))?,
        health_check_path,
        target_timeout: p.duration_or("target-timeout", Duration::from_secs(30))?,
        buffer_requests: p.bool_or("buffer-requests", false)?,
        buffer_responses: p.bool_or("buffer-responses", false)?,
        buffer_memory: p.u64_or("buffer-memory", 1024 * 1024)?,
        max_request_body: p.u64_or("max-request-body", 0)?,
        max_response_body: p.u64_or("max-response-body", 0)?,
        path_prefixes,
        strip_path_prefix: p.bool_or("strip-path-prefix", true)?,
        forward_headers: p.bool_or("forward-headers", !tls)?,
        log_request_headers: p.multi("log-request-header"),
        log_response_headers: p.multi("log-response-header"),
        error_pages: p.last("error-pages").map(String::from),
        writer_affinity_timeout: p
            .duration_or("writer-affinity-timeout", Duration::from_secs(3))?,
        read_targets,
    })
}

pub(crate) struct StopOptions {
    pub(crate) service: String,
    pub(crate) drain_timeout: Duration,
    pub(crate) message: Option<String>,
}

pub(crate) fn parse_stop_args(args: &[String]) -> Result<StopOptions, String> {
    let p = parse_flags(args, STOP_FLAGS)?;
    Ok(StopOptions {
        service: one_positional(&p)?,
        drain_timeout: p.duration_or("drain-timeout", Duration::from_secs(30))?,
        message: p.last("message").map(String::from),
    })
}

pub(crate) fn parse_service_only(args: &[String]) -> Result<String, String> {
    one_positional(&parse_flags(args, &[])?)
}

pub(crate) fn parse_no_args(args: &[String]) -> Result<(), String> {
    let p = parse_flags(args, &[])?;
    if !p.positional.is_empty() {
        return Err(format!("accepts 0 arg(s), received {}", p.positional.len()));
    }
    Ok(())
}
