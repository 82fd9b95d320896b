//! A std-only stand-in for basecamp/kamal-proxy.
//!
//! It implements, for real, the CLI contract used by Kamal 2.11
//! (`run`, `deploy`, `remove`, `stop`, `resume`, `list`, `version`), an HTTP/1.1
//! reverse proxy with host/path routing, a health-gated target switch and a drain
//! of in-flight requests to the previous target.
//!
//! Not implemented: TLS termination. The TLS flags are accepted, validated as
//! flags, stored and shown by `list`, but nothing listens on the HTTPS port.
//! Also not served: the metrics port. See README.md.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket,
};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const VERSION: &str = "v0.9.2";
const DEFAULT_SOCKET: &str = "/tmp/kamal-proxy.sock";
const MAX_HEAD: u64 = 64 * 1024;
const DEFAULT_STOP_MESSAGE: &str = "Service Unavailable";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Logging
// ---------------------------------------------------------------------------

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m as u32, d as u32)
}

fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (y, m, dd) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        d.subsec_millis()
    )
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One JSON log line on stdout. Values in `fields` must already be JSON encoded.
fn log_line(level: &str, msg: &str, fields: &[(String, String)]) {
    let mut line = format!(
        "{{\"time\":{},\"level\":{},\"msg\":{}",
        json_str(&now_rfc3339()),
        json_str(level),
        json_str(msg)
    );
    for (k, v) in fields {
        line.push(',');
        line.push_str(&json_str(k));
        line.push(':');
        line.push_str(v);
    }
    line.push('}');
    if cfg!(test) {
        // Captured by the test harness (io::stdout() is not).
        println!("{line}");
        return;
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn f_str(k: &str, v: &str) -> (String, String) {
    (k.to_string(), json_str(v))
}

fn f_num(k: &str, v: impl std::fmt::Display) -> (String, String) {
    (k.to_string(), v.to_string())
}

// ---------------------------------------------------------------------------
// Go-style durations and booleans
// ---------------------------------------------------------------------------

fn parse_go_duration(input: &str) -> Result<Duration, String> {
    let err = || format!("time: invalid duration \"{input}\"");
    let s = input.strip_prefix('+').unwrap_or(input);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err());
    }
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_end];
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let mult: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(err()),
        };
        let (ip, fp) = num.split_once('.').unwrap_or((num, ""));
        if (ip.is_empty() && fp.is_empty()) || fp.contains('.') {
            return Err(err());
        }
        let ipv: u128 = if ip.is_empty() {
            0
        } else {
            ip.parse().map_err(|_| err())?
        };
        let mut fv: u128 = 0;
        let mut scale: u128 = 1;
        for c in fp.chars().take(18) {
            fv = fv * 10 + u128::from(c.to_digit(10).ok_or_else(err)?);
            scale *= 10;
        }
        let part = ipv
            .checked_mul(mult)
            .and_then(|v| v.checked_add(fv * mult / scale))
            .ok_or_else(err)?;
        total = total.checked_add(part).ok_or_else(err)?;
    }
    let ns = u64::try_from(total).map_err(|_| err())?;
    Ok(Duration::from_nanos(ns))
}

fn frac_unit(ns: u128, unit: u128) -> String {
    let whole = ns / unit;
    let frac = ns % unit;
    if frac == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let f = format!("{frac:0width$}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

/// Formats like Go's time.Duration.String() (e.g. "30s", "500ms", "1m0s").
fn format_go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}µs", frac_unit(ns, 1_000));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", frac_unit(ns, 1_000_000));
    }
    let total_secs = ns / 1_000_000_000;
    let h = total_secs / 3600;
    let m = (total_secs % 3600) / 60;
    let secs = frac_unit(ns % 60_000_000_000, 1_000_000_000);
    if h > 0 {
        format!("{h}h{m}m{secs}s")
    } else if m > 0 {
        format!("{m}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

fn parse_go_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!(
            "strconv.ParseBool: parsing {}: invalid syntax",
            json_str(v)
        )),
    }
}

// ---------------------------------------------------------------------------
// pflag-style flag parsing
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Bool,
    Value,
    /// Repeatable string slice; each occurrence may also be comma separated.
    Multi,
}

#[derive(Debug, Default)]
struct Parsed {
    positional: Vec<String>,
    values: Vec<(String, String)>,
}

impl Parsed {
    fn last(&self, name: &str) -> Option<&str> {
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

    fn bool_or(&self, name: &str, default: bool) -> Result<bool, String> {
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

fn parse_flags(args: &[String], specs: &[(&str, Kind)]) -> Result<Parsed, String> {
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

const RUN_FLAGS: &[(&str, Kind)] = &[
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
struct DeployOptions {
    service: String,
    target: String,
    hosts: Vec<String>,
    // TLS settings are stored only: this stand-in does not terminate TLS.
    tls: bool,
    tls_certificate_path: Option<String>,
    tls_private_key_path: Option<String>,
    tls_redirect: bool,
    tls_acme_cache_path: Option<String>,
    deploy_timeout: Duration,
    drain_timeout: Duration,
    health_check_interval: Duration,
    health_check_timeout: Duration,
    health_check_path: String,
    target_timeout: Duration,
    buffer_requests: bool,
    buffer_responses: bool,
    buffer_memory: u64,
    max_request_body: u64,
    max_response_body: u64,
    path_prefixes: Vec<String>,
    strip_path_prefix: bool,
    forward_headers: bool,
    log_request_headers: Vec<String>,
    log_response_headers: Vec<String>,
    error_pages: Option<String>,
    writer_affinity_timeout: Duration,
    read_targets: Vec<String>,
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

fn parse_deploy_args(args: &[String]) -> Result<DeployOptions, String> {
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

struct StopOptions {
    service: String,
    drain_timeout: Duration,
    message: Option<String>,
}

fn parse_stop_args(args: &[String]) -> Result<StopOptions, String> {
    let p = parse_flags(args, STOP_FLAGS)?;
    Ok(StopOptions {
        service: one_positional(&p)?,
        drain_timeout: p.duration_or("drain-timeout", Duration::from_secs(30))?,
        message: p.last("message").map(String::from),
    })
}

fn parse_service_only(args: &[String]) -> Result<String, String> {
    one_positional(&parse_flags(args, &[])?)
}

fn parse_no_args(args: &[String]) -> Result<(), String> {
    let p = parse_flags(args, &[])?;
    if !p.positional.is_empty() {
        return Err(format!("accepts 0 arg(s), received {}", p.positional.len()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Name resolution
// ---------------------------------------------------------------------------

fn split_host_port(spec: &str) -> Result<(String, u16), String> {
    let bad = || format!("invalid target {}: expected host:port", json_str(spec));
    if let Ok(sa) = spec.parse::<SocketAddr>() {
        return Ok((sa.ip().to_string(), sa.port()));
    }
    let (host, port) = spec.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

fn lookup_etc_hosts(name: &str) -> Option<IpAddr> {
    let text = std::fs::read_to_string("/etc/hosts").ok()?;
    let mut v6 = None;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else {
            continue;
        };
        if words.any(|w| w.eq_ignore_ascii_case(name)) {
            if ip.is_ipv4() {
                return Some(ip);
            }
            v6.get_or_insert(ip);
        }
    }
    v6
}

fn skip_dns_name(r: &[u8], mut p: usize) -> Option<usize> {
    loop {
        let l = *r.get(p)?;
        if l == 0 {
            return Some(p + 1);
        }
        if l & 0xC0 == 0xC0 {
            return Some(p + 2);
        }
        p += 1 + l as usize;
    }
}

fn parse_dns_answer(r: &[u8]) -> Option<Ipv4Addr> {
    if r.len() < 12 || r[3] & 0x0f != 0 {
        return None;
    }
    let qd = u16::from_be_bytes([r[4], r[5]]);
    let an = u16::from_be_bytes([r[6], r[7]]);
    let mut p = 12;
    for _ in 0..qd {
        p = skip_dns_name(r, p)? + 4;
    }
    for _ in 0..an {
        p = skip_dns_name(r, p)?;
        let h = r.get(p..p + 10)?;
        let typ = u16::from_be_bytes([h[0], h[1]]);
        let class = u16::from_be_bytes([h[2], h[3]]);
        let len = u16::from_be_bytes([h[8], h[9]]) as usize;
        p += 10;
        let data = r.get(p..p + len)?;
        if typ == 1 && class == 1 && len == 4 {
            return Some(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        p += len;
    }
    None
}

fn dns_query(server: SocketAddr, name: &str) -> io::Result<Option<Ipv4Addr>> {
    let bind = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    sock.connect(server)?;
    let id = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos()
        & 0xffff) as u16;
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Ok(None);
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 1, 0, 1]);
    sock.send(&q)?;
    let mut buf = [0u8; 1500];
    for _ in 0..4 {
        let n = sock.recv(&mut buf)?;
        if n < 12 || buf[0..2] != id.to_be_bytes() {
            continue;
        }
        return Ok(parse_dns_answer(&buf[..n]));
    }
    Ok(None)
}

/// Minimal DNS A-record lookup over UDP against /etc/resolv.conf nameservers
/// (Docker's embedded DNS answers container names and IDs).
fn dns_lookup(name: &str) -> Result<IpAddr, String> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut servers = Vec::new();
    let mut search = Vec::new();
    for line in conf.lines() {
        let mut w = line.split_whitespace();
        match w.next() {
            Some("nameserver") => {
                if let Some(ip) = w.next().and_then(|s| s.parse::<IpAddr>().ok()) {
                    servers.push(ip);
                }
            }
            Some("search") | Some("domain") => search.extend(w.map(String::from)),
            _ => {}
        }
    }
    if servers.is_empty() {
        servers.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let mut names = vec![name.to_string()];
    if !name.contains('.') {
        names.extend(search.iter().map(|d| format!("{name}.{d}")));
    }
    for n in &names {
        for s in &servers {
            if let Ok(Some(ip)) = dns_query(SocketAddr::new(*s, 53), n) {
                return Ok(IpAddr::V4(ip));
            }
        }
    }
    Err(format!("could not resolve host {}", json_str(name)))
}

fn resolve_target(spec: &str) -> Result<SocketAddr, String> {
    if let Ok(sa) = spec.parse::<SocketAddr>() {
        return Ok(sa);
    }
    let (host, port) = split_host_port(spec)?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if let Some(ip) = lookup_etc_hosts(&host) {
        return Ok(SocketAddr::new(ip, port));
    }
    if let Ok(addrs) = (host.as_str(), port).to_socket_addrs() {
        let addrs: Vec<SocketAddr> = addrs.collect();
        if let Some(a) = addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()) {
            return Ok(*a);
        }
    }
    dns_lookup(&host).map(|ip| SocketAddr::new(ip, port))
}

// ---------------------------------------------------------------------------
// Targets, services, shared state
// ---------------------------------------------------------------------------

struct Target {
    spec: String,
    addr: Mutex<Option<SocketAddr>>,
    in_flight: AtomicUsize,
}

impl Target {
    fn new(spec: &str) -> Self {
        Target {
            spec: spec.to_string(),
            addr: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn resolve(&self) -> io::Result<SocketAddr> {
        let a = resolve_target(&self.spec).map_err(io::Error::other)?;
        *lock(&self.addr) = Some(a);
        Ok(a)
    }

    fn connect(&self, timeout: Duration) -> io::Result<TcpStream> {
        let timeout = timeout.max(Duration::from_millis(1));
        let cached = *lock(&self.addr);
        match cached {
            Some(a) => match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => Ok(s),
                Err(e) => {
                    // The container may have been recreated with a new address.
                    let fresh = self.resolve().map_err(|_| e)?;
                    if fresh == a {
                        return TcpStream::connect_timeout(&a, timeout);
                    }
                    TcpStream::connect_timeout(&fresh, timeout)
                }
            },
            None => {
                let a = self.resolve()?;
                TcpStream::connect_timeout(&a, timeout)
            }
        }
    }
}

/// Decrements the in-flight counter of a target when dropped.
struct InFlight(Arc<Target>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Service {
    opts: Arc<DeployOptions>,
    /// The deploy arguments (service name and flags), persisted and re-parsed at start.
    args: Vec<String>,
    target: Arc<Target>,
    /// Some(message) when stopped.
    paused: Option<String>,
}

struct Shared {
    services: Mutex<BTreeMap<String, Service>>,
    deploy_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    state_path: PathBuf,
    debug: bool,
}

fn host_keys(opts: &DeployOptions) -> Vec<String> {
    if opts.hosts.is_empty() {
        vec![String::new()]
    } else {
        opts.hosts.clone()
    }
}

fn prefix_keys(opts: &DeployOptions) -> Vec<String> {
    if opts.path_prefixes.is_empty() {
        vec!["/".to_string()]
    } else {
        opts.path_prefixes.clone()
    }
}

fn check_conflict(
    services: &BTreeMap<String, Service>,
    opts: &DeployOptions,
) -> Result<(), String> {
    let hosts = host_keys(opts);
    let prefixes = prefix_keys(opts);
    for (name, s) in services {
        if *name == opts.service {
            continue;
        }
        let host_overlap = host_keys(&s.opts).iter().any(|h| hosts.contains(h));
        let prefix_overlap = prefix_keys(&s.opts).iter().any(|p| prefixes.contains(p));
        if host_overlap && prefix_overlap {
            return Err("host settings conflict with another service".into());
        }
    }
    Ok(())
}

fn host_score(hosts: &[String], host: &str) -> Option<u8> {
    if hosts.is_empty() {
        return Some(0);
    }
    let mut best = None;
    for h in hosts {
        if h == host {
            return Some(2);
        }
        if let Some(suffix) = h.strip_prefix("*.")
            && host.len() > suffix.len() + 1
            && host.ends_with(suffix)
            && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        {
            best = Some(1);
        }
    }
    best
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

enum Route {
    NotFound,
    Paused {
        service: String,
        message: String,
    },
    Forward {
        service: String,
        opts: Arc<DeployOptions>,
        prefix: Option<String>,
        guard: InFlight,
    },
}

impl Shared {
    fn debug(&self, msg: &str, fields: &[(String, String)]) {
        if self.debug {
            log_line("DEBUG", msg, fields);
        }
    }

    fn route(&self, host: &str, path: &str) -> Route {
        let services = lock(&self.services);
        let mut best: Option<(u8, usize, &Service, Option<&String>)> = None;
        for s in services.values() {
            let Some(hs) = host_score(&s.opts.hosts, host) else {
                continue;
            };
            let (plen, prefix) = if s.opts.path_prefixes.is_empty() {
                (0, None)
            } else {
                match s
                    .opts
                    .path_prefixes
                    .iter()
                    .filter(|p| prefix_matches(p, path))
                    .max_by_key(|p| p.len())
                {
                    Some(p) => (p.len(), Some(p)),
                    None => continue,
                }
            };
            if best.is_none_or(|b| (hs, plen) > (b.0, b.1)) {
                best = Some((hs, plen, s, prefix));
            }
        }
        let Some((_, _, s, prefix)) = best else {
            return Route::NotFound;
        };
        if let Some(msg) = &s.paused {
            return Route::Paused {
                service: s.opts.service.clone(),
                message: msg.clone(),
            };
        }
        // Incremented under the lock so that a concurrent switch+drain sees it.
        s.target.in_flight.fetch_add(1, Ordering::SeqCst);
        Route::Forward {
            service: s.opts.service.clone(),
            opts: s.opts.clone(),
            prefix: prefix.cloned(),
            guard: InFlight(s.target.clone()),
        }
    }

    fn save_state(&self, services: &BTreeMap<String, Service>) -> io::Result<()> {
        let mut out = String::from(
            "# kamal-proxy stand-in state v1: service<TAB>running|stopped<TAB>message<TAB>deploy args...\n",
        );
        for (name, s) in services {
            let mut fields = vec![
                name.clone(),
                if s.paused.is_some() {
                    "stopped"
                } else {
                    "running"
                }
                .to_string(),
                s.paused.clone().unwrap_or_default(),
            ];
            fields.extend(s.args.iter().cloned());
            out.push_str(&encode_line(&fields));
            out.push('\n');
        }
        if let Some(parent) = self.state_path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = self.state_path.with_extension("tmp");
        std::fs::write(&tmp, out)?;
        std::fs::rename(&tmp, &self.state_path)
    }

    fn persist(&self, services: &BTreeMap<String, Service>) {
        if let Err(e) = self.save_state(services) {
            log_line(
                "ERROR",
                "Unable to save state",
                &[
                    f_str("path", &self.state_path.display().to_string()),
                    f_str("error", &e.to_string()),
                ],
            );
        }
    }

    fn deploy_lock(&self, service: &str) -> Arc<Mutex<()>> {
        lock(&self.deploy_locks)
            .entry(service.to_string())
            .or_default()
            .clone()
    }

    fn wait_healthy(&self, target: &Target, opts: &DeployOptions) -> Result<(), String> {
        let deadline = Instant::now() + opts.deploy_timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt_timeout = opts.health_check_timeout.min(remaining);
            match health_check(target, &opts.health_check_path, attempt_timeout) {
                Ok(200) => return Ok(()),
                Ok(code) => self.debug(
                    "Healthcheck failed",
                    &[
                        f_str("service", &opts.service),
                        f_str("target", &target.spec),
                        f_num("status", code),
                    ],
                ),
                Err(e) => self.debug(
                    "Healthcheck failed",
                    &[
                        f_str("service", &opts.service),
                        f_str("target", &target.spec),
                        f_str("error", &e),
                    ],
                ),
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            thread::sleep(opts.health_check_interval.min(deadline - now));
            if Instant::now() >= deadline {
                break;
            }
        }
        Err(format!(
            "target failed to become healthy within configured timeout ({})",
            format_go_duration(opts.deploy_timeout)
        ))
    }

    fn drain(&self, service: &str, target: &Target, timeout: Duration) {
        let start = Instant::now();
        let deadline = start + timeout;
        while target.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        let left = target.in_flight.load(Ordering::SeqCst);
        log_line(
            "INFO",
            if left == 0 {
                "Target drained"
            } else {
                "Drain timed out"
            },
            &[
                f_str("service", service),
                f_str("target", &target.spec),
                f_num("in_flight", left),
                f_num("duration_ms", start.elapsed().as_millis()),
            ],
        );
    }

    fn deploy(&self, args: &[String]) -> Result<(), String> {
        let opts = parse_deploy_args(args)?;
        let dlock = self.deploy_lock(&opts.service);
        let _serialized = lock(&dlock);
        let existing = {
            let services = lock(&self.services);
            check_conflict(&services, &opts)?;
            services.get(&opts.service).map(|s| s.target.clone())
        };
        let target = match existing {
            Some(t) if t.spec == opts.target => t,
            _ => Arc::new(Target::new(&opts.target)),
        };
        log_line(
            "INFO",
            "Deploying",
            &[
                f_str("service", &opts.service),
                f_str("target", &opts.target),
                f_str("hosts", &opts.hosts.join(",")),
            ],
        );
        if let Err(e) = self.wait_healthy(&target, &opts) {
            log_line(
                "INFO",
                "Deploy failed",
                &[
                    f_str("service", &opts.service),
                    f_str("target", &opts.target),
                    f_str("error", &e),
                ],
            );
            return Err(e);
        }
        let opts = Arc::new(opts);
        let old = {
            let mut services = lock(&self.services);
            check_conflict(&services, &opts)?;
            let old = services.insert(
                opts.service.clone(),
                Service {
                    opts: opts.clone(),
                    args: args.to_vec(),
                    target: target.clone(),
                    paused: None,
                },
            );
            self.persist(&services);
            old.map(|s| s.target)
        };
        log_line(
            "INFO",
            "Deployed",
            &[
                f_str("service", &opts.service),
                f_str("target", &opts.target),
            ],
        );
        if let Some(old) = old
            && !Arc::ptr_eq(&old, &target)
        {
            self.drain(&opts.service, &old, opts.drain_timeout);
        }
        Ok(())
    }

    fn remove(&self, args: &[String]) -> Result<(), String> {
        let name = parse_service_only(args)?;
        let dlock = self.deploy_lock(&name);
        let _serialized = lock(&dlock);
        let mut services = lock(&self.services);
        if services.remove(&name).is_none() {
            return Err("service not found".into());
        }
        self.persist(&services);
        log_line("INFO", "Service removed", &[f_str("service", &name)]);
        Ok(())
    }

    fn stop(&self, args: &[String]) -> Result<(), String> {
        let o = parse_stop_args(args)?;
        let target = {
            let mut services = lock(&self.services);
            let s = services
                .get_mut(&o.service)
                .ok_or_else(|| "service not found".to_string())?;
            s.paused = Some(
                o.message
                    .clone()
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| DEFAULT_STOP_MESSAGE.to_string()),
            );
            let t = s.target.clone();
            self.persist(&services);
            t
        };
        log_line("INFO", "Service stopped", &[f_str("service", &o.service)]);
        self.drain(&o.service, &target, o.drain_timeout);
        Ok(())
    }

    fn resume(&self, args: &[String]) -> Result<(), String> {
        let name = parse_service_only(args)?;
        let mut services = lock(&self.services);
        let s = services
            .get_mut(&name)
            .ok_or_else(|| "service not found".to_string())?;
        s.paused = None;
        self.persist(&services);
        log_line("INFO", "Service resumed", &[f_str("service", &name)]);
        Ok(())
    }

    fn list(&self, args: &[String]) -> Result<Vec<String>, String> {
        parse_no_args(args)?;
        let services = lock(&self.services);
        let mut rows = vec![vec![
            "Service".to_string(),
            "Host".into(),
            "Path".into(),
            "Target".into(),
            "State".into(),
            "TLS".into(),
        ]];
        for (name, s) in services.iter() {
            rows.push(vec![
                name.clone(),
                if s.opts.hosts.is_empty() {
                    "*".into()
                } else {
                    s.opts.hosts.join(",")
                },
                if s.opts.path_prefixes.is_empty() {
                    "/".into()
                } else {
                    s.opts.path_prefixes.join(",")
                },
                s.target.spec.clone(),
                if s.paused.is_some() {
                    "stopped"
                } else {
                    "running"
                }
                .into(),
                if s.opts.tls { "yes" } else { "no" }.into(),
            ]);
        }
        Ok(tabulate(&rows))
    }
}

fn tabulate(rows: &[Vec<String>]) -> Vec<String> {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                line.push_str(cell);
                if c + 1 < r.len() {
                    let pad = widths[c] - cell.chars().count() + 2;
                    line.push_str(&" ".repeat(pad));
                }
            }
            line
        })
        .collect()
}

fn load_state(path: &Path) -> BTreeMap<String, Service> {
    let mut services = BTreeMap::new();
    let Ok(text) = std::fs::read_to_string(path) else {
        return services;
    };
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = decode_line(line);
        if fields.len() < 4 {
            continue;
        }
        let args = fields[3..].to_vec();
        match parse_deploy_args(&args) {
            Ok(opts) => {
                let paused = if fields[1] == "stopped" {
                    Some(fields[2].clone())
                } else {
                    None
                };
                let target = Arc::new(Target::new(&opts.target));
                services.insert(
                    opts.service.clone(),
                    Service {
                        opts: Arc::new(opts),
                        args,
                        target,
                        paused,
                    },
                );
            }
            Err(e) => log_line(
                "WARN",
                "Skipping invalid state entry",
                &[f_str("service", &fields[0]), f_str("error", &e)],
            ),
        }
    }
    services
}

// ---------------------------------------------------------------------------
// Control protocol: one request line of escaped, tab-separated args;
// response lines "D <escaped text>", then "OK" or "ERR <escaped message>".
// ---------------------------------------------------------------------------

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(o) => out.push(o),
            None => out.push('\\'),
        }
    }
    out
}

fn encode_line(fields: &[String]) -> String {
    fields
        .iter()
        .map(|f| escape(f))
        .collect::<Vec<_>>()
        .join("\t")
}

fn decode_line(line: &str) -> Vec<String> {
    line.split('\t').map(unescape).collect()
}

fn handle_control(shared: &Shared, stream: UnixStream) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    Read::take(&mut reader, 1024 * 1024).read_line(&mut line)?;
    let args = decode_line(line.trim_end_matches(['\n', '\r']));
    let rest = args.get(1..).unwrap_or(&[]);
    let result = match args.first().map(String::as_str) {
        Some("deploy") => shared.deploy(rest).map(|_| Vec::new()),
        Some("remove") => shared.remove(rest).map(|_| Vec::new()),
        Some("stop") => shared.stop(rest).map(|_| Vec::new()),
        Some("resume") => shared.resume(rest).map(|_| Vec::new()),
        Some("list") => shared.list(rest),
        Some(other) => Err(format!("unknown command {}", json_str(other))),
        None => Err("empty command".into()),
    };
    let mut out = BufWriter::new(stream);
    match result {
        Ok(lines) => {
            for l in lines {
                writeln!(out, "D {}", escape(&l))?;
            }
            writeln!(out, "OK")?;
        }
        Err(e) => writeln!(out, "ERR {}", escape(&e))?,
    }
    out.flush()
}

fn client_call(socket: &Path, args: &[String]) -> Result<Vec<String>, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "unable to connect to kamal-proxy at {} ({e}); is `kamal-proxy run` running?",
            socket.display()
        )
    })?;
    let mut req = encode_line(args);
    req.push('\n');
    stream
        .write_all(req.as_bytes())
        .map_err(|e| format!("unable to send command to kamal-proxy: {e}"))?;
    let reader = BufReader::new(stream);
    let mut lines = Vec::new();
    for line in reader.lines() {
        let line = line.map_err(|e| format!("error reading from kamal-proxy: {e}"))?;
        if let Some(d) = line.strip_prefix("D ") {
            lines.push(unescape(d));
        } else if line == "OK" {
            return Ok(lines);
        } else if let Some(e) = line.strip_prefix("ERR ") {
            return Err(unescape(e));
        }
    }
    Err("connection to kamal-proxy closed unexpectedly".into())
}

// ---------------------------------------------------------------------------
// HTTP/1.1 proxying
// ---------------------------------------------------------------------------

struct Head {
    start: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn is_chunked(&self) -> bool {
        self.all("transfer-encoding")
            .iter()
            .flat_map(|v| v.split(','))
            .next_back()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
    }

    fn content_length(&self) -> Result<Option<u64>, ()> {
        match self.get("content-length") {
            None => Ok(None),
            Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| ()),
        }
    }

    /// Header names listed in Connection plus the standard hop-by-hop headers.
    fn hop_by_hop(&self) -> Vec<String> {
        let mut hop: Vec<String> = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
            "proxy-authenticate",
            "proxy-authorization",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for v in self.all("connection") {
            hop.extend(v.split(',').map(|t| t.trim().to_lowercase()));
        }
        hop
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

fn read_line_limited<R: BufRead>(r: &mut R, limit: u64) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    let n = Read::take(&mut *r, limit).read_until(b'\n', &mut v)?;
    if n == 0 || !v.ends_with(b"\n") {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "truncated line",
        ));
    }
    Ok(v)
}

/// Reads a request or response head. Ok(None) on a clean EOF before any byte.
fn read_head<R: BufRead>(r: &mut R) -> io::Result<Option<Head>> {
    let mut total: u64 = 0;
    let mut start: Option<String> = None;
    let mut headers = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = Read::take(&mut *r, MAX_HEAD - total).read_until(b'\n', &mut line)?;
        if n == 0 {
            if total == 0 {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "truncated head",
            ));
        }
        total += n as u64;
        if !line.ends_with(b"\n") {
            return Err(invalid("head too large or truncated"));
        }
        let s = String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        if start.is_none() {
            if !s.is_empty() {
                start = Some(s);
            }
            continue;
        }
        if s.is_empty() {
            break;
        }
        let (k, v) = s.split_once(':').ok_or_else(|| invalid("bad header"))?;
        if k.is_empty() || k.contains(char::is_whitespace) {
            return Err(invalid("bad header name"));
        }
        headers.push((k.to_string(), v.trim().to_string()));
    }
    Ok(Some(Head {
        start: start.unwrap_or_default(),
        headers,
    }))
}

/// Copies from r to w, flushing after each read. `limit` None means until EOF.
fn pump<R: Read, W: Write>(r: &mut R, w: &mut W, limit: Option<u64>) -> io::Result<u64> {
    let mut buf = [0u8; 16 * 1024];
    let mut total: u64 = 0;
    loop {
        let want = match limit {
            Some(l) if total >= l => break,
            Some(l) => ((l - total) as usize).min(buf.len()),
            None => buf.len(),
        };
        let n = match r.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        w.flush()?;
        total += n as u64;
    }
    if let Some(l) = limit
        && total < l
    {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "body shorter than Content-Length",
        ));
    }
    Ok(total)
}

/// Copies one chunked body verbatim (including trailers) and returns the payload size.
fn copy_chunked<R: BufRead, W: Write>(r: &mut R, w: &mut W) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let line = read_line_limited(r, 8192)?;
        w.write_all(&line)?;
        let text = String::from_utf8_lossy(&line);
        let size_str = text.trim().split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size_str, 16).map_err(|_| invalid("bad chunk size"))?;
        if size == 0 {
            loop {
                let t = read_line_limited(r, 8192)?;
                w.write_all(&t)?;
                if t == b"\r\n" || t == b"\n" {
                    w.flush()?;
                    return Ok(total);
                }
            }
        }
        pump(r, w, Some(size))?;
        total += size;
        let crlf = read_line_limited(r, 8)?;
        if crlf != b"\r\n" && crlf != b"\n" {
            return Err(invalid("missing chunk terminator"));
        }
        w.write_all(&crlf)?;
        w.flush()?;
    }
}

fn simple_response<W: Write>(w: &mut W, status: u16, body: &str) -> io::Result<()> {
    let reason = reason_phrase(status);
    let body = format!("{body}\n");
    write!(
        w,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    w.flush()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Request Entity Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

fn strip_port(host: &str) -> String {
    let h = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match host.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        }
    };
    h.trim_end_matches('.').to_lowercase()
}

fn strip_prefix_from(target: &str, prefix: &str) -> String {
    let rest = target.get(prefix.len()..).unwrap_or("");
    if rest.is_empty() {
        "/".to_string()
    } else if rest.starts_with('?') {
        format!("/{rest}")
    } else {
        rest.to_string()
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[derive(Default)]
struct RequestLog {
    method: String,
    host: String,
    path: String,
    status: u16,
    service: String,
    target: String,
    req_headers: Vec<(String, String)>,
    resp_headers: Vec<(String, String)>,
    resp_bytes: u64,
    error: Option<String>,
}

fn header_log_key(prefix: &str, name: &str) -> String {
    format!("{prefix}_{}", name.to_lowercase().replace('-', "_"))
}

fn handle_http(shared: &Shared, client: TcpStream) {
    let start = Instant::now();
    let peer = client.peer_addr().ok();
    let _ = client.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = client.set_write_timeout(Some(Duration::from_secs(60)));
    let _ = client.set_nodelay(true);
    let Ok(read_half) = client.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = BufWriter::new(client);
    let mut log = RequestLog::default();
    match serve_request(shared, &mut reader, &mut writer, peer, &mut log) {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            if log.error.is_none() {
                log.error = Some(e.to_string());
            }
        }
    }
    let _ = writer.flush();
    let client = writer.get_ref();
    let _ = client.shutdown(Shutdown::Write);
    // Drain what the client may still send so closing does not reset the
    // connection before it has read the response.
    let _ = client.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = pump(
        &mut Read::take(&mut reader, 1024 * 1024),
        &mut io::sink(),
        None,
    );

    let mut fields = vec![
        f_str("host", &log.host),
        f_str("path", &log.path),
        f_str("method", &log.method),
        f_num("status", log.status),
        f_str("service", &log.service),
        f_str("target", &log.target),
        f_num("duration", start.elapsed().as_micros()),
        f_num("resp_content_length", log.resp_bytes),
        f_str(
            "client_addr",
            &peer.map(|p| p.ip().to_string()).unwrap_or_default(),
        ),
    ];
    for (k, v) in log.req_headers.iter().chain(log.resp_headers.iter()) {
        fields.push(f_str(k, v));
    }
    if let Some(e) = &log.error {
        fields.push(f_str("error", e));
    }
    log_line("INFO", "Request", &fields);
}

/// Serves one request. Returns Ok(false) when the client closed without a request.
fn serve_request<R: BufRead, W: Write>(
    shared: &Shared,
    reader: &mut R,
    writer: &mut W,
    peer: Option<SocketAddr>,
    log: &mut RequestLog,
) -> io::Result<bool> {
    let head = match read_head(reader) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(false),
        Err(e) => {
            log.status = 400;
            log.error = Some(e.to_string());
            simple_response(writer, 400, "Bad Request")?;
            return Ok(true);
        }
    };
    let mut parts = head.start.split_whitespace();
    let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) => (m.to_string(), t.to_string(), v.to_string()),
        _ => {
            log.status = 400;
            simple_response(writer, 400, "Bad Request")?;
            return Ok(true);
        }
    };
    log.method = method.clone();
    log.path = target.clone();
    if !version.starts_with("HTTP/1.") {
        log.status = 505;
        simple_response(writer, 505, "HTTP Version Not Supported")?;
        return Ok(true);
    }
    // Absolute-form request targets are reduced to origin-form.
    let target = match target.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(i) => rest[i..].to_string(),
            None => "/".to_string(),
        },
        None => target,
    };
    let host_header = head.get("host").unwrap_or("").to_string();
    log.host = host_header.clone();
    let host = strip_port(&host_header);
    let path_only = target.split('?').next().unwrap_or("").to_string();

    let (service, opts, prefix, _guard) = match shared.route(&host, &path_only) {
        Route::NotFound => {
            log.status = 404;
            simple_response(writer, 404, "Not Found")?;
            return Ok(true);
        }
        Route::Paused { service, message } => {
            log.status = 503;
            log.service = service;
            simple_response(writer, 503, &message)?;
            return Ok(true);
        }
        Route::Forward {
            service,
            opts,
            prefix,
            guard,
        } => (service, opts, prefix, guard),
    };
    log.service = service;
    log.target = opts.target.clone();
    for h in &opts.log_request_headers {
        log.req_headers
            .push((header_log_key("req", h), head.all(h).join(",")));
    }

    let chunked = head.is_chunked();
    let content_length = match head.content_length() {
        Ok(cl) => cl,
        Err(()) => {
            log.status = 400;
            simple_response(writer, 400, "Bad Request")?;
            return Ok(true);
        }
    };
    if opts.max_request_body > 0 && content_length.is_some_and(|cl| cl > opts.max_request_body) {
        log.status = 413;
        simple_response(writer, 413, "Request Entity Too Large")?;
        return Ok(true);
    }
    let has_body = chunked || content_length.is_some_and(|cl| cl > 0);
    let expect_continue = head
        .get("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));

    let forward_path = match (&prefix, opts.strip_path_prefix) {
        (Some(p), true) => strip_prefix_from(&target, p),
        _ => target.clone(),
    };

    // Build the upstream request head.
    let hop = head.hop_by_hop();
    let client_ip = peer.map(|p| p.ip().to_string()).unwrap_or_default();
    let mut up = format!("{method} {forward_path} HTTP/1.1\r\n");
    let mut xff: Option<String> = None;
    let mut xfp: Option<String> = None;
    let mut xfh: Option<String> = None;
    for (k, v) in &head.headers {
        let lk = k.to_lowercase();
        if hop.contains(&lk) || lk == "expect" || (chunked && lk == "content-length") {
            continue;
        }
        match lk.as_str() {
            "x-forwarded-for" => {
                if opts.forward_headers {
                    xff = Some(match xff {
                        Some(prev) => format!("{prev}, {v}"),
                        None => v.clone(),
                    });
                }
                continue;
            }
            "x-forwarded-proto" => {
                if opts.forward_headers {
                    xfp = Some(v.clone());
                }
                continue;
            }
            "x-forwarded-host" => {
                if opts.forward_headers {
                    xfh = Some(v.clone());
                }
                continue;
            }
            _ => {}
        }
        up.push_str(&format!("{k}: {v}\r\n"));
    }
    let xff = match xff {
        Some(prev) if !client_ip.is_empty() => format!("{prev}, {client_ip}"),
        Some(prev) => prev,
        None => client_ip.clone(),
    };
    up.push_str(&format!("X-Forwarded-For: {xff}\r\n"));
    up.push_str(&format!(
        "X-Forwarded-Proto: {}\r\n",
        xfp.unwrap_or_else(|| "http".into())
    ));
    up.push_str(&format!(
        "X-Forwarded-Host: {}\r\n",
        xfh.unwrap_or_else(|| host_header.clone())
    ));
    up.push_str("Connection: close\r\n\r\n");

    let target_ref = &_guard.0;
    let upstream = match target_ref.connect(opts.target_timeout.min(Duration::from_secs(10))) {
        Ok(s) => s,
        Err(e) => {
            log.status = 502;
            log.error = Some(format!("connect to {}: {e}", target_ref.spec));
            simple_response(writer, 502, "Bad Gateway")?;
            return Ok(true);
        }
    };
    let _ = upstream.set_nodelay(true);
    let _ = upstream.set_read_timeout(Some(opts.target_timeout.max(Duration::from_millis(1))));
    let _ = upstream.set_write_timeout(Some(opts.target_timeout.max(Duration::from_millis(1))));
    let up_read = upstream.try_clone()?;
    let mut up_writer = BufWriter::new(upstream);

    let sent: io::Result<()> = (|| {
        up_writer.write_all(up.as_bytes())?;
        up_writer.flush()?;
        if has_body {
            if expect_continue {
                writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
                writer.flush()?;
            }
            if chunked {
                copy_chunked(reader, &mut up_writer)?;
            } else if let Some(cl) = content_length {
                pump(reader, &mut up_writer, Some(cl))?;
            }
        }
        up_writer.flush()
    })();
    if let Err(e) = sent {
        log.status = 502;
        log.error = Some(format!("sending request: {e}"));
        simple_response(writer, 502, "Bad Gateway")?;
        return Ok(true);
    }

    let mut up_reader = BufReader::new(up_read);
    let resp = loop {
        match read_head(&mut up_reader) {
            Ok(Some(h)) => {
                let code: u16 = h
                    .start
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                if (100..200).contains(&code) && code != 101 {
                    continue; // discard interim responses
                }
                if code < 100 || !h.start.starts_with("HTTP/1.") {
                    log.status = 502;
                    log.error = Some("invalid response from target".into());
                    simple_response(writer, 502, "Bad Gateway")?;
                    return Ok(true);
                }
                break (h, code);
            }
            Ok(None) => {
                log.status = 502;
                log.error = Some("target closed connection without response".into());
                simple_response(writer, 502, "Bad Gateway")?;
                return Ok(true);
            }
            Err(e) => {
                let status = if is_timeout(&e) { 504 } else { 502 };
                log.status = status;
                log.error = Some(format!("reading response: {e}"));
                simple_response(writer, status, reason_phrase(status))?;
                return Ok(true);
            }
        }
    };
    let (rh, code) = resp;
    log.status = code;
    for h in &opts.log_response_headers {
        log.resp_headers
            .push((header_log_key("resp", h), rh.all(h).join(",")));
    }
    let resp_cl = rh.content_length().unwrap_or(None);
    if opts.buffer_responses
        && opts.max_response_body > 0
        && resp_cl.is_some_and(|cl| cl > opts.max_response_body)
    {
        log.status = 502;
        log.error = Some("response body too large".into());
        simple_response(writer, 502, "Bad Gateway")?;
        return Ok(true);
    }
    let reason = rh.start.splitn(3, ' ').nth(2).unwrap_or("");
    let mut out = format!("HTTP/1.1 {code} {reason}\r\n");
    let resp_hop = rh.hop_by_hop();
    let resp_chunked = rh.is_chunked();
    for (k, v) in &rh.headers {
        let lk = k.to_lowercase();
        if resp_hop.contains(&lk) && lk != "trailer" {
            continue;
        }
        if resp_chunked && lk == "content-length" {
            continue;
        }
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("Connection: close\r\n\r\n");
    writer.write_all(out.as_bytes())?;
    writer.flush()?;
    let no_body = method.eq_ignore_ascii_case("HEAD") || code == 204 || code == 304;
    let copied = if no_body {
        Ok(0)
    } else if resp_chunked {
        copy_chunked(&mut up_reader, writer)
    } else if let Some(cl) = resp_cl {
        pump(&mut up_reader, writer, Some(cl))
    } else {
        pump(&mut up_reader, writer, None)
    };
    match copied {
        Ok(n) => log.resp_bytes = n,
        Err(e) => log.error = Some(format!("copying response: {e}")),
    }
    Ok(true)
}

/// One health check attempt: GET path on the target, returns the status code.
fn health_check(target: &Target, path: &str, timeout: Duration) -> Result<u16, String> {
    let timeout = timeout.max(Duration::from_millis(1));
    let mut s = target.connect(timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let host = split_host_port(&target.spec)
        .map(|(h, _)| h)
        .unwrap_or_default();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kamal-proxy\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let line = read_line_limited(&mut r, 8192).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&line);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("invalid health check response: {}", text.trim()))
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

struct ServerConfig {
    http_addr: SocketAddr,
    socket_path: PathBuf,
    state_path: PathBuf,
    debug: bool,
}

#[cfg_attr(not(test), allow(dead_code))]
struct RunningServer {
    http_addr: SocketAddr,
}

fn start_server(cfg: ServerConfig) -> io::Result<RunningServer> {
    let services = load_state(&cfg.state_path);
    let restored = services.len();
    let shared = Arc::new(Shared {
        services: Mutex::new(services),
        deploy_locks: Mutex::new(HashMap::new()),
        state_path: cfg.state_path.clone(),
        debug: cfg.debug,
    });
    let http = TcpListener::bind(cfg.http_addr)?;
    let http_addr = http.local_addr()?;
    if let Some(parent) = cfg.socket_path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if cfg.socket_path.exists() {
        if UnixStream::connect(&cfg.socket_path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "another kamal-proxy is already listening on {}",
                    cfg.socket_path.display()
                ),
            ));
        }
        std::fs::remove_file(&cfg.socket_path)?;
    }
    let control = UnixListener::bind(&cfg.socket_path)?;

    let sh = shared.clone();
    thread::spawn(move || {
        for conn in http.incoming() {
            match conn {
                Ok(s) => {
                    let sh = sh.clone();
                    thread::spawn(move || handle_http(&sh, s));
                }
                Err(e) => {
                    log_line("WARN", "accept failed", &[f_str("error", &e.to_string())]);
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
    });
    let sh = shared.clone();
    thread::spawn(move || {
        for conn in control.incoming() {
            match conn {
                Ok(s) => {
                    let sh = sh.clone();
                    thread::spawn(move || {
                        if let Err(e) = handle_control(&sh, s) {
                            sh.debug(
                                "control connection error",
                                &[f_str("error", &e.to_string())],
                            );
                        }
                    });
                }
                Err(e) => {
                    log_line("WARN", "accept failed", &[f_str("error", &e.to_string())]);
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
    });
    log_line(
        "INFO",
        "Server started",
        &[
            f_str("http", &http_addr.to_string()),
            f_str("socket", &cfg.socket_path.display().to_string()),
            f_str("state", &cfg.state_path.display().to_string()),
            f_num("restored_services", restored),
        ],
    );
    Ok(RunningServer { http_addr })
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: i32) {
    STOP.store(true, Ordering::SeqCst);
}

unsafe extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
}

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

fn socket_path() -> PathBuf {
    match std::env::var("KAMAL_PROXY_SOCKET") {
        Ok(s) if !s.is_empty() => PathBuf::from(s),
        _ => PathBuf::from(DEFAULT_SOCKET),
    }
}

fn state_path() -> PathBuf {
    let home = match std::env::var("HOME") {
        Ok(h) if !h.is_empty() => h,
        _ => "/home/kamal-proxy".to_string(),
    };
    Path::new(&home).join(".config/kamal-proxy/state")
}

fn parse_port(p: &Parsed, name: &str, default: u16) -> Result<u16, String> {
    match p.last(name) {
        Some(v) => v
            .parse::<u16>()
            .map_err(|_| format!("invalid argument \"{v}\" for \"--{name}\" flag")),
        None => Ok(default),
    }
}

fn cmd_run(args: &[String]) -> Result<(), String> {
    let p = parse_flags(args, RUN_FLAGS)?;
    if !p.positional.is_empty() {
        return Err(format!(
            "unknown command {} for \"kamal-proxy run\"",
            json_str(&p.positional[0])
        ));
    }
    let debug = p.bool_or("debug", false)?;
    let http_port = parse_port(&p, "http-port", 80)?;
    // Accepted for compatibility; HTTPS (TLS termination) and metrics are not served.
    let _https_port = parse_port(&p, "https-port", 443)?;
    let _metrics_port = parse_port(&p, "metrics-port", 0)?;
    // SAFETY: installing an async-signal-safe handler that only stores an atomic.
    unsafe {
        signal(SIGTERM, on_signal);
        signal(SIGINT, on_signal);
    }
    let socket = socket_path();
    start_server(ServerConfig {
        http_addr: SocketAddr::from(([0, 0, 0, 0], http_port)),
        socket_path: socket.clone(),
        state_path: state_path(),
        debug,
    })
    .map_err(|e| format!("unable to start server: {e}"))?;
    while !STOP.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(50));
    }
    log_line("INFO", "Server stopping", &[]);
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

fn validate_client(cmd: &str, rest: &[String]) -> Result<(), String> {
    match cmd {
        "deploy" => parse_deploy_args(rest).map(|_| ()),
        "stop" => parse_stop_args(rest).map(|_| ()),
        "remove" | "resume" => parse_service_only(rest).map(|_| ()),
        "list" => parse_no_args(rest),
        _ => Err(format!("unknown command {}", json_str(cmd))),
    }
}

const USAGE: &str = "kamal-proxy (stand-in) - HTTP proxy for zero-downtime deployments

Usage:
  kamal-proxy [command]

Available Commands:
  run       Run the server
  deploy    Deploy a target host
  remove    Remove a service
  stop      Stop a service (respond 503)
  resume    Resume a stopped service
  list      List the services
  version   Show version
";

fn run_cli(args: &[String]) -> i32 {
    let cmd = args.first().map(String::as_str);
    let rest = args.get(1..).unwrap_or(&[]);
    let result = match cmd {
        Some("run") => cmd_run(rest),
        Some("version") | Some("--version") => {
            println!("{VERSION}");
            Ok(())
        }
        Some("help") | Some("--help") | Some("-h") => {
            print!("{USAGE}");
            Ok(())
        }
        None => {
            eprint!("{USAGE}");
            return 1;
        }
        Some(c @ ("deploy" | "remove" | "stop" | "resume" | "list")) => validate_client(c, rest)
            .and_then(|_| {
                let lines = client_call(&socket_path(), args)?;
                for l in lines {
                    println!("{l}");
                }
                Ok(())
            }),
        Some(other) => Err(format!(
            "unknown command {} for \"kamal-proxy\"",
            json_str(other)
        )),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e}");
            1
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(run_cli(&args));
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn sv(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(
            parse_go_duration("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_go_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_go_duration("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_go_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_go_duration("10us").unwrap(),
            Duration::from_micros(10)
        );
        for bad in ["", "30", "s", "1x", "-1s", "1..2s", "abc"] {
            assert!(parse_go_duration(bad).is_err(), "{bad} should fail");
        }
        assert_eq!(format_go_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_go_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_go_duration(Duration::from_secs(60)), "1m0s");
        assert_eq!(format_go_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_go_duration(Duration::from_secs(3725)), "1h2m5s");
    }

    #[test]
    fn deploy_flags_both_forms() {
        let a = parse_deploy_args(&sv(&[
            "web",
            "--target=abc123:80",
            "--host",
            "a.example.com",
            "--host=b.example.com,c.example.com",
            "--deploy-timeout",
            "10s",
            "--drain-timeout=5s",
            "--health-check-interval=500ms",
            "--health-check-timeout",
            "2s",
            "--health-check-path=/health",
            "--tls",
            "--tls-redirect=false",
            "--buffer-requests",
            "--buffer-responses=true",
            "--buffer-memory=1024",
            "--max-request-body",
            "2048",
            "--max-response-body=4096",
            "--path-prefix=/api",
            "--path-prefix",
            "/v2/",
            "--strip-path-prefix=false",
            "--forward-headers",
            "--log-request-header=X-Request-Id",
            "--log-request-header",
            "Cache-Control",
            "--log-response-header=X-Runtime",
            "--error-pages=/errors",
            "--writer-affinity-timeout=1s",
            "--read-targets=def456:80",
            "--target-timeout=1m",
            "--tls-certificate-path=/c",
            "--tls-private-key-path",
            "/k",
            "--tls-acme-cache-path=/acme",
        ]))
        .unwrap();
        assert_eq!(a.service, "web");
        assert_eq!(a.target, "abc123:80");
        assert_eq!(
            a.hosts,
            sv(&["a.example.com", "b.example.com", "c.example.com"])
        );
        assert_eq!(a.deploy_timeout, Duration::from_secs(10));
        assert_eq!(a.drain_timeout, Duration::from_secs(5));
        assert_eq!(a.health_check_interval, Duration::from_millis(500));
        assert_eq!(a.health_check_timeout, Duration::from_secs(2));
        assert_eq!(a.health_check_path, "/health");
        assert!(a.tls && !a.tls_redirect && a.buffer_requests && a.buffer_responses);
        assert_eq!(
            (a.buffer_memory, a.max_request_body, a.max_response_body),
            (1024, 2048, 4096)
        );
        assert_eq!(a.path_prefixes, sv(&["/api", "/v2"]));
        assert!(!a.strip_path_prefix && a.forward_headers);
        assert_eq!(
            a.log_request_headers,
            sv(&["X-Request-Id", "Cache-Control"])
        );
        assert_eq!(a.log_response_headers, sv(&["X-Runtime"]));
        assert_eq!(a.error_pages.as_deref(), Some("/errors"));
        assert_eq!(a.writer_affinity_timeout, Duration::from_secs(1));
        assert_eq!(a.read_targets, sv(&["def456:80"]));
        assert_eq!(a.target_timeout, Duration::from_secs(60));
        assert_eq!(a.tls_certificate_path.as_deref(), Some("/c"));
        assert_eq!(a.tls_private_key_path.as_deref(), Some("/k"));
        assert_eq!(a.tls_acme_cache_path.as_deref(), Some("/acme"));

        let d = parse_deploy_args(&sv(&["web", "--target", "10.0.0.2:3000"])).unwrap();
        assert_eq!(d.deploy_timeout, Duration::from_secs(30));
        assert_eq!(d.drain_timeout, Duration::from_secs(30));
        assert_eq!(d.health_check_interval, Duration::from_secs(1));
        assert_eq!(d.health_check_timeout, Duration::from_secs(5));
        assert_eq!(d.health_check_path, "/up");
        assert!(!d.tls && d.hosts.is_empty() && d.strip_path_prefix);
    }

    #[test]
    fn deploy_flags_rejected() {
        let e = parse_deploy_args(&sv(&["web", "--target=a:80", "--bogus=1"])).unwrap_err();
        assert_eq!(e, "unknown flag: --bogus");
        let e = parse_deploy_args(&sv(&["web", "--target=a:80", "--bogus"])).unwrap_err();
        assert_eq!(e, "unknown flag: --bogus");
        let e = parse_deploy_args(&sv(&["web", "--host=x"])).unwrap_err();
        assert!(e.contains("required flag(s) \"target\" not set"), "{e}");
        assert!(parse_deploy_args(&sv(&["--target=a:80"])).is_err());
        assert!(parse_deploy_args(&sv(&["web", "--target=a:80", "--tls=maybe"])).is_err());
        assert!(parse_deploy_args(&sv(&["web", "--target=a:80", "--deploy-timeout=30"])).is_err());
        assert!(parse_deploy_args(&sv(&["web", "--target=a"])).is_err());
        assert!(parse_deploy_args(&sv(&["web", "--target"])).is_err());
        assert!(parse_deploy_args(&sv(&["web", "--target=a:80", "-x"])).is_err());
        assert!(parse_stop_args(&sv(&["web", "--message=down", "--drain-timeout=1s"])).is_ok());
        assert!(parse_stop_args(&sv(&["web", "--other"])).is_err());
        assert!(parse_no_args(&sv(&["x"])).is_err());
        assert!(parse_flags(&sv(&["--debug", "--http-port=8080"]), RUN_FLAGS).is_ok());
        assert!(parse_flags(&sv(&["--http3"]), RUN_FLAGS).is_err());
    }

    #[test]
    fn cli_rejects_unknown_flag_before_connecting() {
        assert_eq!(
            run_cli(&sv(&["deploy", "web", "--target=a:80", "--nope"])),
            1
        );
        assert_eq!(run_cli(&sv(&["frobnicate"])), 1);
        assert_eq!(run_cli(&sv(&["version"])), 0);
    }

    #[test]
    fn escaping_roundtrip() {
        let f = sv(&["a\tb", "c\\d", "e\nf", ""]);
        assert_eq!(decode_line(&encode_line(&f)), f);
    }

    #[test]
    fn dns_answer_parsing() {
        // Response for "ab" A 10.1.2.3 with a compressed name pointer.
        let mut r = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        r.extend_from_slice(&[2, b'a', b'b', 0, 0, 1, 0, 1]);
        r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 1, 2, 3]);
        assert_eq!(parse_dns_answer(&r), Some(Ipv4Addr::new(10, 1, 2, 3)));
    }

    #[test]
    fn dns_query_against_fake_server() {
        let srv = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = srv.local_addr().unwrap();
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, from) = srv.recv_from(&mut buf).unwrap();
            let q = &buf[..n];
            // Echo header id and question, then one CNAME and one A answer.
            let mut r = q[..2].to_vec();
            r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0]);
            r.extend_from_slice(&q[12..]);
            r.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xC0, 12]);
            r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 172, 18, 0, 7]);
            srv.send_to(&r, from).unwrap();
        });
        let ip = dns_query(addr, "3f2a9c1d0b7e").unwrap();
        assert_eq!(ip, Some(Ipv4Addr::new(172, 18, 0, 7)));
    }

    #[test]
    fn routing_helpers() {
        assert_eq!(strip_port("Example.com:8080"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(!prefix_matches("/api", "/apix"));
        assert_eq!(strip_prefix_from("/api/x?q=1", "/api"), "/x?q=1");
        assert_eq!(strip_prefix_from("/api?q=1", "/api"), "/?q=1");
        assert_eq!(strip_prefix_from("/api", "/api"), "/");
        assert_eq!(
            host_score(&sv(&["*.example.com"]), "a.example.com"),
            Some(1)
        );
        assert_eq!(host_score(&sv(&["*.example.com"]), "example.com"), None);
    }

    // ---- end-to-end ----

    static SLOW_STARTED: AtomicUsize = AtomicUsize::new(0);

    fn backend(body: &'static str, up_status: u16) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        thread::spawn(move || {
            for s in l.incoming().flatten() {
                thread::spawn(move || serve_backend(s, body, up_status));
            }
        });
        addr
    }

    fn serve_backend(s: TcpStream, body: &'static str, up_status: u16) {
        let mut r = BufReader::new(s.try_clone().unwrap());
        let Ok(Some(head)) = read_head(&mut r) else {
            return;
        };
        let path = head
            .start
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        let mut w = s;
        let (status, resp_body) = if path == "/up" {
            (up_status, "up".to_string())
        } else if path == "/slow" {
            SLOW_STARTED.fetch_add(1, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(800));
            (200, format!("{body} slow"))
        } else if path.starts_with("/echo") {
            let mut b = Vec::new();
            if let Ok(Some(cl)) = head.content_length() {
                pump(&mut r, &mut b, Some(cl)).unwrap();
            }
            let xff = head.get("x-forwarded-for").unwrap_or("").to_string();
            (200, format!("{path}|{}|{xff}", String::from_utf8_lossy(&b)))
        } else if path == "/chunked" {
            let _ = w.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            );
            return;
        } else {
            (200, body.to_string())
        };
        let _ = write!(
            w,
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{resp_body}",
            resp_body.len()
        );
    }

    fn dechunk(raw: &str) -> String {
        let mut out = String::new();
        let mut rest = raw;
        loop {
            let (size, after) = rest.split_once("\r\n").unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if n == 0 {
                return out;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
    }

    fn http(addr: SocketAddr, method: &str, host: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = if head.to_lowercase().contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_string()
        };
        (status, body)
    }

    fn get(addr: SocketAddr, host: &str, path: &str) -> (u16, String) {
        http(addr, "GET", host, path, "")
    }

    fn call(sock: &Path, args: &[&str]) -> Result<Vec<String>, String> {
        client_call(sock, &sv(args))
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let d = std::env::temp_dir().join(format!("kp-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn start(dir: &Path, sock: &str) -> (SocketAddr, PathBuf) {
        let socket_path = dir.join(sock);
        let srv = start_server(ServerConfig {
            http_addr: "127.0.0.1:0".parse().unwrap(),
            socket_path: socket_path.clone(),
            state_path: dir.join("home/.config/kamal-proxy/state"),
            debug: false,
        })
        .unwrap();
        // Poll until the control socket answers.
        let deadline = Instant::now() + Duration::from_secs(5);
        while call(&socket_path, &["list"]).is_err() {
            assert!(Instant::now() < deadline, "server not ready");
            thread::sleep(Duration::from_millis(10));
        }
        (srv.http_addr, socket_path)
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn end_to_end() {
        let v1 = backend("v1", 200);
        let v2 = backend("v2", 200);
        let bad = backend("bad", 503);
        let dir = temp_dir("e2e");
        let (proxy, sock) = start(&dir, "kp.sock");

        assert_eq!(get(proxy, "app.test", "/").0, 404);
        let t1 = format!("--target={v1}");
        call(
            &sock,
            &["deploy", "web", &t1, "--health-check-interval=50ms"],
        )
        .unwrap();
        assert_eq!(get(proxy, "app.test", "/"), (200, "v1".to_string()));
        assert_eq!(
            get(proxy, "app.test:8080", "/chunked"),
            (200, "hello world".to_string())
        );
        let (st, body) = http(proxy, "POST", "x", "/echo?a=1", "payload");
        assert_eq!(st, 200);
        assert!(body.starts_with("/echo?a=1|payload|127.0.0.1"), "{body}");

        // Continuous traffic during the v1 -> v2 switch.
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::<String>::new()));
        let (st2, ok2, f2) = (stop.clone(), ok.clone(), failures.clone());
        let traffic = thread::spawn(move || {
            while !st2.load(Ordering::SeqCst) {
                let (code, body) = get(proxy, "app.test", "/");
                if code == 200 && (body == "v1" || body == "v2") {
                    ok2.fetch_add(1, Ordering::SeqCst);
                } else {
                    lock(&f2).push(format!("{code} {body}"));
                }
            }
        });
        wait_for("traffic before switch", || ok.load(Ordering::SeqCst) >= 20);

        // A slow in-flight request to v1 must complete: deploy waits for the drain.
        let slow = thread::spawn(move || get(proxy, "app.test", "/slow"));
        wait_for("slow request reached v1", || {
            SLOW_STARTED.load(Ordering::SeqCst) >= 1
        });
        let t2 = format!("--target={v2}");
        let started = Instant::now();
        call(
            &sock,
            &["deploy", "web", &t2, "--health-check-interval=50ms"],
        )
        .unwrap();
        let deploy_took = started.elapsed();
        assert_eq!(slow.join().unwrap(), (200, "v1 slow".to_string()));
        assert!(
            deploy_took >= Duration::from_millis(500),
            "deploy did not drain: {deploy_took:?}"
        );
        assert_eq!(get(proxy, "app.test", "/").1, "v2");

        let before = ok.load(Ordering::SeqCst);
        wait_for("traffic after switch", || {
            ok.load(Ordering::SeqCst) >= before + 20
        });

        // Unhealthy target: fails, v2 keeps serving.
        let tb = format!("--target={bad}");
        let e = call(
            &sock,
            &[
                "deploy",
                "web",
                &tb,
                "--deploy-timeout=2s",
                "--health-check-interval=100ms",
            ],
        )
        .unwrap_err();
        assert_eq!(
            e,
            "target failed to become healthy within configured timeout (2s)"
        );
        assert_eq!(get(proxy, "app.test", "/").1, "v2");

        stop.store(true, Ordering::SeqCst);
        traffic.join().unwrap();
        assert!(
            lock(&failures).is_empty(),
            "failures: {:?}",
            lock(&failures)
        );
        assert!(ok.load(Ordering::SeqCst) >= 40);

        // Host conflicts and host routing.
        let e = call(&sock, &["deploy", "other", &t1]).unwrap_err();
        assert_eq!(e, "host settings conflict with another service");
        call(
            &sock,
            &[
                "deploy",
                "other",
                &t1,
                "--host=b.example",
                "--health-check-interval=50ms",
            ],
        )
        .unwrap();
        assert_eq!(get(proxy, "B.example", "/").1, "v1");
        assert_eq!(get(proxy, "c.example", "/").1, "v2");

        // Path prefixes with stripping.
        call(
            &sock,
            &[
                "deploy",
                "api",
                &t1,
                "--host=b.example",
                "--path-prefix=/api",
                "--health-check-interval=50ms",
            ],
        )
        .unwrap();
        let (_, body) = get(proxy, "b.example", "/api/echo/x?q=1");
        assert!(body.starts_with("/echo/x?q=1|"), "{body}");

        let list = call(&sock, &["list"]).unwrap();
        assert!(list[0].starts_with("Service"), "{list:?}");
        assert!(list.iter().any(|l| l.starts_with("web ")
            && l.contains("running")
            && l.contains(&v2.to_string())));

        // Stop / resume.
        call(
            &sock,
            &["stop", "web", "--message=maintenance", "--drain-timeout=1s"],
        )
        .unwrap();
        assert_eq!(
            get(proxy, "app.test", "/"),
            (503, "maintenance\n".to_string())
        );
        assert!(
            call(&sock, &["list"])
                .unwrap()
                .iter()
                .any(|l| l.starts_with("web ") && l.contains("stopped"))
        );
        call(&sock, &["resume", "web"]).unwrap();
        assert_eq!(get(proxy, "app.test", "/").1, "v2");

        // Restart from persisted state.
        let (proxy2, sock2) = start(&dir, "kp2.sock");
        assert_eq!(get(proxy2, "app.test", "/").1, "v2");
        assert_eq!(get(proxy2, "b.example", "/").1, "v1");
        assert_eq!(call(&sock2, &["list"]).unwrap().len(), 4);

        // Remove.
        call(&sock, &["remove", "web"]).unwrap();
        assert_eq!(get(proxy, "app.test", "/").0, 404);
        assert_eq!(
            call(&sock, &["remove", "web"]).unwrap_err(),
            "service not found"
        );

        // Target that passes its health check and then goes away -> 502.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = l.local_addr().unwrap();
        let one_shot = thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            serve_backend(s, "gone", 200);
        });
        let tg = format!("--target={gone}");
        call(&sock, &["deploy", "gone", &tg, "--host=gone.test"]).unwrap();
        one_shot.join().unwrap();
        assert_eq!(get(proxy, "gone.test", "/").0, 502);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
