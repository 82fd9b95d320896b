//! Targets, services and the state shared by the server's threads: routing a
//! request (host, then longest path prefix), host/path conflicts, the
//! health-gated deploy, drain, stop/resume/remove, `list`, and the state file
//! that routes are saved to and restored from.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::control::{decode_line, encode_line};
use crate::flags::{
    DeployOptions, parse_deploy_args, parse_no_args, parse_service_only, parse_stop_args,
};
use crate::log::{f_num, f_str, log_line};
use crate::proxy::health_check;
use crate::resolve::resolve_target;
use crate::values::format_go_duration;

const DEFAULT_STOP_MESSAGE: &str = "Service Unavailable";

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) struct Target {
    pub(crate) spec: String,
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

    pub(crate) fn connect(&self, timeout: Duration) -> io::Result<TcpStream> {
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
pub(crate) struct InFlight(pub(crate) Arc<Target>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(crate) struct Service {
    opts: Arc<DeployOptions>,
    /// The deploy arguments (service name and flags), persisted and re-parsed at start.
    args: Vec<String>,
    target: Arc<Target>,
    /// Some(message) when stopped.
    paused: Option<String>,
}

pub(crate) struct Shared {
    pub(crate) services: Mutex<BTreeMap<String, Service>>,
    pub(crate) deploy_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    pub(crate) state_path: PathBuf,
    pub(crate) debug: bool,
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

pub(crate) fn host_score(hosts: &[String], host: &str) -> Option<u8> {
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

pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

pub(crate) enum Route {
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
    pub(crate) fn debug(&self, msg: &str, fields: &[(String, String)]) {
        if self.debug {
            log_line("DEBUG", msg, fields);
        }
    }

    pub(crate) fn route(&self, host: &str, path: &str) -> Route {
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
        std::fs::rename(&tmp, &self.state_path)?;
        // What real kamal-proxy keeps beside (and berth reads to compare
        // route settings): its own JSON state, as `Router.saveStateSnapshot`
        // writes it.
        let real = self.state_path.with_file_name("kamal-proxy.state");
        let tmp = real.with_extension("state.tmp");
        std::fs::write(&tmp, real_state_json(services))?;
        std::fs::rename(&tmp, &real)
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

    pub(crate) fn deploy(&self, args: &[String]) -> Result<(), String> {
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

    pub(crate) fn remove(&self, args: &[String]) -> Result<(), String> {
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

    pub(crate) fn stop(&self, args: &[String]) -> Result<(), String> {
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

    pub(crate) fn resume(&self, args: &[String]) -> Result<(), String> {
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

    pub(crate) fn list(&self, args: &[String]) -> Result<Vec<String>, String> {
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

pub(crate) fn load_state(path: &Path) -> BTreeMap<String, Service> {
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

/// kamal-proxy's state file: a JSON list of services with their `options`
/// and `target_options` (durations in nanoseconds, as Go marshals them).
fn real_state_json(services: &BTreeMap<String, Service>) -> String {
    use crate::log::json_str;
    let list = |v: &[String]| {
        let items: Vec<String> = v.iter().map(|s| json_str(s)).collect();
        format!("[{}]", items.join(","))
    };
    let ns = |d: Duration| d.as_nanos().to_string();
    let opt = |v: &Option<String>| json_str(v.as_deref().unwrap_or(""));
    let mut out = Vec::new();
    for (name, s) in services {
        let o = &s.opts;
        let hosts = if o.hosts.is_empty() {
            vec![String::new()]
        } else {
            o.hosts.clone()
        };
        let prefixes = if o.path_prefixes.is_empty() {
            vec!["/".to_string()]
        } else {
            o.path_prefixes.clone()
        };
        out.push(format!(
            concat!(
                "{{\"name\":{},\"options\":{{\"hosts\":{},\"path_prefixes\":{},",
                "\"tls_enabled\":{},\"tls_certificate_path\":{},\"tls_private_key_path\":{},",
                "\"tls_redirect\":{},\"canonical_host\":\"\",\"acme_directory\":\"\",",
                "\"acme_cache_path\":{},\"error_page_path\":{},\"strip_prefix\":{},",
                "\"writer_affinity_timeout\":{},\"read_targets_accept_websockets\":false}},",
                "\"target_options\":{{\"health_check_config\":{{\"path\":{},\"port\":0,",
                "\"interval\":{},\"timeout\":{},\"host\":\"\"}},\"response_timeout\":{},",
                "\"buffer_requests\":{},\"buffer_responses\":{},\"max_memory_buffer_size\":{},",
                "\"max_request_body_size\":{},\"max_response_body_size\":{},",
                "\"log_request_headers\":{},\"log_response_headers\":{},",
                "\"forward_headers\":{},\"scope_cookie_paths\":false}},",
                "\"active_targets\":{},\"active_readers\":{},\"rollout_targets\":null,",
                "\"rollout_readers\":null,\"pause_controller\":{{\"state\":{}}},",
                "\"rollout_controller\":null}}"
            ),
            json_str(name),
            list(&hosts),
            list(&prefixes),
            o.tls,
            opt(&o.tls_certificate_path),
            opt(&o.tls_private_key_path),
            o.tls_redirect,
            opt(&o.tls_acme_cache_path),
            opt(&o.error_pages),
            o.strip_path_prefix,
            ns(o.writer_affinity_timeout),
            json_str(&o.health_check_path),
            ns(o.health_check_interval),
            ns(o.health_check_timeout),
            ns(o.target_timeout),
            o.buffer_requests,
            o.buffer_responses,
            o.buffer_memory,
            o.max_request_body,
            o.max_response_body,
            list(&o.log_request_headers),
            list(&o.log_response_headers),
            o.forward_headers,
            list(std::slice::from_ref(&s.target.spec)),
            list(&o.read_targets),
            // PauseStateStopped: this stand-in's pause is a stop with a message.
            if s.paused.is_some() { "2" } else { "0" },
        ));
    }
    format!("[{}]\n", out.join(","))
}
