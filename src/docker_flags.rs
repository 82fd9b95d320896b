//! `docker_flags`: the `docker run` flags berth compares between the argv it
//! would run and the container `docker inspect` shows, in one normalized
//! form both sides produce (a leaf: `plan` reads the desired side off an
//! argv, `observe` the observed side off inspect JSON).
//!
//! Each flag maps to the inspect field Docker stores it in, normalized the
//! way dockerd stores it (sizes in bytes, CPUs in nano-CPUs, durations in
//! nanoseconds, capabilities as `CAP_X`, ports as `ip:host:container/proto`),
//! with Docker's own defaults read as "not set" (a 64 MiB `/dev/shm`, a swap
//! limit of twice the memory limit, `ipc` private or shareable, `runc`). So a
//! container that runs exactly the argv compares equal, and any flag added,
//! changed or removed in the config shows up as a difference.
//!
//! Fields an image can set too (user, workdir, entrypoint, stop signal,
//! health check) are compared only when the config declares them or the
//! container's value is not the image's. Flags that are not container
//! properties (`--pull`, `--platform`, …) are ignored; flags berth cannot
//! read back from inspect are [`uncompared`] and `berth validate` says so.
//! Flags `plan::UnitSpec` compares itself (labels, env, volumes, log
//! options, restart, network) are not here.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// Normalized flag values: flag name (without `--`) → sorted values.
pub type Flags = BTreeMap<String, Vec<String>>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Arity {
    Value,
    Bool,
}

/// How the observed value is read.
type Inspect = fn(&Value) -> Vec<String>;
/// How a desired value is normalized (one flag occurrence → entries).
type Parse = fn(&str) -> Vec<String>;

struct Flag {
    name: &'static str,
    short: Option<&'static str>,
    aliases: &'static [&'static str],
    arity: Arity,
    parse: Parse,
    inspect: Inspect,
    /// The image's value of the same field, for fields an image sets.
    image: Option<Inspect>,
    /// Compared only when the config declares it: its default is the
    /// daemon's configuration, which berth cannot see.
    declared_only: bool,
    /// The container's values are the image's plus the flag's (`--expose`):
    /// the image's are taken away rather than compared.
    adds_to_image: bool,
}

const fn value(name: &'static str, parse: Parse, inspect: Inspect) -> Flag {
    Flag {
        name,
        short: None,
        aliases: &[],
        arity: Arity::Value,
        parse,
        inspect,
        image: None,
        declared_only: false,
        adds_to_image: false,
    }
}

const fn boolean(name: &'static str, inspect: Inspect) -> Flag {
    Flag {
        name,
        short: None,
        aliases: &[],
        arity: Arity::Bool,
        parse: |_| vec!["true".into()],
        inspect,
        image: None,
        declared_only: false,
        adds_to_image: false,
    }
}

impl Flag {
    const fn short(mut self, s: &'static str) -> Flag {
        self.short = Some(s);
        self
    }
    const fn aliases(mut self, a: &'static [&'static str]) -> Flag {
        self.aliases = a;
        self
    }
    const fn image(mut self, f: Inspect) -> Flag {
        self.image = Some(f);
        self
    }
    const fn adds_to_image(mut self, f: Inspect) -> Flag {
        self.image = Some(f);
        self.adds_to_image = true;
        self
    }
    const fn declared_only(mut self) -> Flag {
        self.declared_only = true;
        self
    }
    fn matches(&self, flag: &str) -> bool {
        let long = flag.strip_prefix("--");
        long == Some(self.name)
            || long.is_some_and(|l| self.aliases.contains(&l))
            || self
                .short
                .is_some_and(|s| flag.strip_prefix('-') == Some(s))
    }
}

// --- reading inspect JSON ---------------------------------------------------

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, p| cur.get(p))
}

fn hc<'a>(c: &'a Value, key: &str) -> Option<&'a Value> {
    at(c, &["HostConfig", key])
}

fn cfg<'a>(c: &'a Value, key: &str) -> Option<&'a Value> {
    at(c, &["Config", key])
}

/// A number other than 0 (and other than `skip`).
fn num(v: Option<&Value>) -> Vec<String> {
    match v.and_then(Value::as_i64) {
        Some(0) | None => Vec::new(),
        Some(n) => vec![n.to_string()],
    }
}

fn text(v: Option<&Value>) -> Vec<String> {
    match v.and_then(Value::as_str) {
        Some("") | None => Vec::new(),
        Some(s) => vec![s.to_string()],
    }
}

fn truth(v: Option<&Value>) -> Vec<String> {
    if v.and_then(Value::as_bool) == Some(true) {
        vec!["true".into()]
    } else {
        Vec::new()
    }
}

/// A JSON array's strings (anything else: none).
pub fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `{k: v}` as `k=v` entries.
fn pairs(v: Option<&Value>, sep: char) -> Vec<String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}{sep}{}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

fn health<'a>(c: &'a Value, key: &str) -> Option<&'a Value> {
    at(c, &["Config", "Healthcheck", key])
}

fn image_health<'a>(i: &'a Value, key: &str) -> Option<&'a Value> {
    at(i, &["Healthcheck", key])
}

/// `CMD-SHELL cmd` as the command; other test forms as JSON.
fn health_cmd(test: Option<&Value>) -> Vec<String> {
    let t = strings(test);
    match t.first().map(String::as_str) {
        Some("CMD-SHELL") if t.len() == 2 => vec![t[1].clone()],
        Some("NONE") | None => Vec::new(),
        Some(_) => vec![serde_json::to_string(&t).unwrap_or_default()],
    }
}

fn port_bindings(c: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(m) = hc(c, "PortBindings").and_then(Value::as_object) {
        for (port, bindings) in m {
            for b in bindings.as_array().into_iter().flatten() {
                let ip = b.get("HostIp").and_then(Value::as_str).unwrap_or("");
                let host = b.get("HostPort").and_then(Value::as_str).unwrap_or("");
                out.push(format!("{ip}:{host}:{port}"));
            }
        }
    }
    out
}

/// Ports exposed by `--expose`: the container's, minus the image's and the
/// published ones (both are exposed too).
fn exposed(c: &Value) -> Vec<String> {
    let published: BTreeSet<String> = hc(c, "PortBindings")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    cfg(c, "ExposedPorts")
        .and_then(Value::as_object)
        .map(|m| {
            m.keys()
                .filter(|p| !published.contains(*p))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn network_field(c: &Value, f: impl Fn(&str, &Value) -> Vec<String>) -> Vec<String> {
    at(c, &["NetworkSettings", "Networks"])
        .and_then(Value::as_object)
        .map(|m| m.iter().flat_map(|(_, n)| f(id_of(c), n)).collect())
        .unwrap_or_default()
}

fn id_of(c: &Value) -> &str {
    c.get("Id").and_then(Value::as_str).unwrap_or("")
}

// --- normalizing desired values ---------------------------------------------

fn same(v: &str) -> Vec<String> {
    vec![v.to_string()]
}

/// Docker's `RAMInBytes`: `512m`, `1.5g`, `1024`, binary units.
fn bytes(v: &str) -> Option<i64> {
    let s = v.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let s = s.strip_suffix('i').unwrap_or(s);
    let (digits, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], Some(c)),
        _ => (s, None),
    };
    let shift = match unit {
        None => 0,
        Some('k') => 10,
        Some('m') => 20,
        Some('g') => 30,
        Some('t') => 40,
        Some('p') => 50,
        Some(_) => return None,
    };
    let n: f64 = digits.trim().parse().ok()?;
    (n >= 0.0).then(|| (n * (1u64 << shift) as f64) as i64)
}

fn size(v: &str) -> Vec<String> {
    match bytes(v) {
        Some(0) => Vec::new(),
        Some(n) => vec![n.to_string()],
        None => same(v),
    }
}

fn integer(v: &str) -> Vec<String> {
    match v.trim().parse::<i64>() {
        Ok(0) => Vec::new(),
        Ok(n) => vec![n.to_string()],
        Err(_) => same(v),
    }
}

/// `--cpus 1.5` as nano-CPUs.
fn nano_cpus(v: &str) -> Vec<String> {
    match v.trim().parse::<f64>() {
        Ok(0.0) => Vec::new(),
        Ok(n) => vec![((n * 1e9).round() as i64).to_string()],
        Err(_) => same(v),
    }
}

/// A Go duration (`1m30s`, `500ms`) in nanoseconds.
pub fn go_duration_ns(v: &str) -> Option<i64> {
    let mut rest = v.trim();
    if rest == "0" {
        return Some(0);
    }
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..n_end].parse().ok()?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[u_end..];
        total += n * unit;
    }
    Some(total as i64)
}

fn duration(v: &str) -> Vec<String> {
    match go_duration_ns(v) {
        Some(0) => Vec::new(),
        Some(n) => vec![n.to_string()],
        None => same(v),
    }
}

fn capability(v: &str) -> Vec<String> {
    let up = v.trim().to_ascii_uppercase();
    if up == "ALL" || up.starts_with("CAP_") {
        vec![up]
    } else {
        vec![format!("CAP_{up}")]
    }
}

/// `[ip:][host:]container[/proto]`, port ranges expanded pairwise.
fn publish(v: &str) -> Vec<String> {
    let (spec, proto) = match v.rsplit_once('/') {
        Some((s, p)) => (s, p),
        None => (v, "tcp"),
    };
    let (ip, rest) = if let Some(r) = spec.strip_prefix('[') {
        match r.split_once("]:") {
            Some((ip, rest)) => (ip, rest),
            None => return same(v),
        }
    } else {
        match spec.matches(':').count() {
            2 => spec.split_once(':').unwrap_or(("", spec)),
            _ => ("", spec),
        }
    };
    let (host, container) = rest.rsplit_once(':').unwrap_or(("", rest));
    let range = |r: &str| -> Option<(u32, u32)> {
        match r.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => {
                let n = r.parse().ok()?;
                Some((n, n))
            }
        }
    };
    let Some((c0, c1)) = range(container) else {
        return same(v);
    };
    let hosts = if host.is_empty() {
        None
    } else {
        match range(host) {
            Some(h) if h.1 - h.0 == c1 - c0 => Some(h.0),
            _ => return same(v),
        }
    };
    (c0..=c1)
        .map(|c| {
            let h = hosts
                .map(|h0| (h0 + c - c0).to_string())
                .unwrap_or_default();
            format!("{ip}:{h}:{c}/{proto}")
        })
        .collect()
}

fn expose(v: &str) -> Vec<String> {
    let (p, proto) = v.rsplit_once('/').unwrap_or((v, "tcp"));
    match p.split_once('-') {
        Some((a, b)) => match (a.parse::<u32>(), b.parse::<u32>()) {
            (Ok(a), Ok(b)) if a <= b => (a..=b).map(|n| format!("{n}/{proto}")).collect(),
            _ => same(v),
        },
        None => vec![format!("{p}/{proto}")],
    }
}

/// `name=soft[:hard]` as `name=soft:hard`.
fn ulimit(v: &str) -> Vec<String> {
    match v.split_once('=') {
        Some((name, limits)) => {
            let (soft, hard) = limits.split_once(':').unwrap_or((limits, limits));
            vec![format!("{name}={soft}:{hard}")]
        }
        None => same(v),
    }
}

/// `host[:container][:perms]`.
fn device(v: &str) -> Vec<String> {
    let parts: Vec<&str> = v.split(':').collect();
    let perms = |p: &str| p.chars().all(|c| matches!(c, 'r' | 'w' | 'm'));
    let (host, container, mode) = match parts.as_slice() {
        [h] => (*h, *h, "rwm"),
        [h, p] if perms(p) => (*h, *h, *p),
        [h, c] => (*h, *c, "rwm"),
        [h, c, p] => (*h, *c, *p),
        _ => return same(v),
    };
    vec![format!("{host}:{container}:{mode}")]
}

fn tmpfs(v: &str) -> Vec<String> {
    let (path, opts) = v.split_once(':').unwrap_or((v, ""));
    vec![format!("{path}:{opts}")]
}

fn extra_host(v: &str) -> Vec<String> {
    // Newer CLIs accept `name=ip` and store `name:ip`.
    match v.split_once('=') {
        Some((n, ip)) if !n.contains(':') => vec![format!("{n}:{ip}")],
        _ => same(v),
    }
}

/// `--mount` CSV as `type=…,source=…,target=…[,readonly]`.
fn mount(v: &str) -> Vec<String> {
    let (mut kind, mut source, mut target, mut ro) = ("volume", "", "", false);
    for field in v.split(',') {
        let (k, val) = field.split_once('=').unwrap_or((field, ""));
        match k.trim() {
            "type" => kind = val,
            "source" | "src" => source = val,
            "target" | "destination" | "dst" => target = val,
            "readonly" | "ro" => ro = matches!(val, "" | "true" | "1"),
            _ => {}
        }
    }
    vec![mount_entry(kind, source, target, ro)]
}

fn mount_entry(kind: &str, source: &str, target: &str, ro: bool) -> String {
    let mut s = format!("type={kind},source={source},target={target}");
    if ro {
        s.push_str(",readonly");
    }
    s
}

fn mounts(c: &Value) -> Vec<String> {
    hc(c, "Mounts")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|m| {
                    let s = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("");
                    mount_entry(
                        s("Type"),
                        s("Source"),
                        s("Target"),
                        m.get("ReadOnly").and_then(Value::as_bool) == Some(true),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `seccomp=<file>` is sent as the file's JSON: compare only the named
/// profiles.
fn security_opt(v: &str) -> Vec<String> {
    match v.split_once(['=', ':']) {
        Some(("seccomp", p)) if p != "unconfined" => Vec::new(),
        _ => same(v),
    }
}

// --- the table ----------------------------------------------------------------

const FLAGS: &[Flag] = &[
    value("memory", size, |c| num(hc(c, "Memory"))).short("m"),
    value("memory-reservation", size, |c| {
        num(hc(c, "MemoryReservation"))
    }),
    value(
        "memory-swap",
        |v| {
            if v.trim() == "-1" {
                vec!["-1".into()]
            } else {
                size(v)
            }
        },
        |c| num(hc(c, "MemorySwap")),
    ),
    value("memory-swappiness", integer, |c| {
        match hc(c, "MemorySwappiness").and_then(Value::as_i64) {
            Some(-1) | None => Vec::new(),
            Some(n) => vec![n.to_string()],
        }
    }),
    value("cpus", nano_cpus, |c| num(hc(c, "NanoCpus"))),
    value("cpu-shares", integer, |c| num(hc(c, "CpuShares"))).short("c"),
    value("cpu-period", integer, |c| num(hc(c, "CpuPeriod"))),
    value("cpu-quota", integer, |c| num(hc(c, "CpuQuota"))),
    value("cpuset-cpus", same, |c| text(hc(c, "CpusetCpus"))),
    value("cpuset-mems", same, |c| text(hc(c, "CpusetMems"))),
    value("blkio-weight", integer, |c| num(hc(c, "BlkioWeight"))),
    value(
        "pids-limit",
        |v| match v.trim().parse::<i64>() {
            Ok(n) if n <= 0 => Vec::new(),
            _ => integer(v),
        },
        |c| match hc(c, "PidsLimit").and_then(Value::as_i64) {
            Some(n) if n > 0 => vec![n.to_string()],
            _ => Vec::new(),
        },
    ),
    value("shm-size", size, |c| {
        match hc(c, "ShmSize").and_then(Value::as_i64) {
            // dockerd's default /dev/shm.
            Some(67_108_864) | Some(0) | None => Vec::new(),
            Some(n) => vec![n.to_string()],
        }
    }),
    value("oom-score-adj", integer, |c| num(hc(c, "OomScoreAdj"))),
    value("cgroup-parent", same, |c| text(hc(c, "CgroupParent"))),
    value("runtime", same, |c| {
        match hc(c, "Runtime").and_then(Value::as_str) {
            Some("runc") | Some("") | None => Vec::new(),
            Some(r) => vec![r.to_string()],
        }
    }),
    value("pid", same, |c| text(hc(c, "PidMode"))),
    value(
        "ipc",
        |v| match v {
            "private" | "shareable" => Vec::new(),
            _ => same(v),
        },
        |c| match hc(c, "IpcMode").and_then(Value::as_str) {
            // The daemon's default is one of these two.
            Some("private") | Some("shareable") | Some("") | None => Vec::new(),
            Some(m) => vec![m.to_string()],
        },
    ),
    value("uts", same, |c| text(hc(c, "UTSMode"))),
    value("userns", same, |c| text(hc(c, "UsernsMode"))),
    value("user", same, |c| text(cfg(c, "User")))
        .short("u")
        .image(|i| text(i.get("User"))),
    value("workdir", same, |c| text(cfg(c, "WorkingDir")))
        .short("w")
        .image(|i| text(i.get("WorkingDir"))),
    value(
        "entrypoint",
        |v| if v.is_empty() { Vec::new() } else { same(v) },
        |c| {
            let e = strings(cfg(c, "Entrypoint"));
            if e.is_empty() { e } else { vec![e.join(" ")] }
        },
    )
    .image(|i| {
        let e = strings(i.get("Entrypoint"));
        if e.is_empty() { e } else { vec![e.join(" ")] }
    }),
    value("stop-signal", same, |c| text(cfg(c, "StopSignal"))).image(|i| text(i.get("StopSignal"))),
    value("stop-timeout", integer, |c| {
        match cfg(c, "StopTimeout").and_then(Value::as_i64) {
            Some(n) => vec![n.to_string()],
            None => Vec::new(),
        }
    }),
    value("domainname", same, |c| text(cfg(c, "Domainname"))),
    value("publish", publish, port_bindings).short("p"),
    value("expose", expose, exposed).adds_to_image(|i| {
        i.get("ExposedPorts")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }),
    value("add-host", extra_host, |c| strings(hc(c, "ExtraHosts"))),
    value("dns", same, |c| strings(hc(c, "Dns"))),
    value("dns-search", same, |c| strings(hc(c, "DnsSearch"))),
    value("dns-option", same, |c| strings(hc(c, "DnsOptions"))).aliases(&["dns-opt"]),
    value("cap-add", capability, |c| {
        strings(hc(c, "CapAdd"))
            .iter()
            .flat_map(|s| capability(s))
            .collect()
    }),
    value("cap-drop", capability, |c| {
        strings(hc(c, "CapDrop"))
            .iter()
            .flat_map(|s| capability(s))
            .collect()
    }),
    value("security-opt", security_opt, |c| {
        strings(hc(c, "SecurityOpt"))
            .iter()
            .flat_map(|s| security_opt(s))
            .collect()
    }),
    value("sysctl", same, |c| pairs(hc(c, "Sysctls"), '=')),
    value("ulimit", ulimit, |c| {
        hc(c, "Ulimits")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|u| {
                        format!(
                            "{}={}:{}",
                            u.get("Name").and_then(Value::as_str).unwrap_or(""),
                            u.get("Soft").and_then(Value::as_i64).unwrap_or(0),
                            u.get("Hard").and_then(Value::as_i64).unwrap_or(0)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }),
    value("device", device, |c| {
        hc(c, "Devices")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|d| {
                        let s = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("");
                        format!(
                            "{}:{}:{}",
                            s("PathOnHost"),
                            s("PathInContainer"),
                            s("CgroupPermissions")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }),
    value("group-add", same, |c| strings(hc(c, "GroupAdd"))),
    value("tmpfs", tmpfs, |c| pairs(hc(c, "Tmpfs"), ':')),
    value("mount", mount, mounts),
    value("volumes-from", same, |c| strings(hc(c, "VolumesFrom"))),
    value("volume-driver", same, |c| text(hc(c, "VolumeDriver"))),
    value("storage-opt", same, |c| pairs(hc(c, "StorageOpt"), '=')),
    value("ip", same, |c| {
        network_field(c, |_, n| text(at(n, &["IPAMConfig", "IPv4Address"])))
    }),
    value("ip6", same, |c| {
        network_field(c, |_, n| text(at(n, &["IPAMConfig", "IPv6Address"])))
    }),
    value("network-alias", same, |c| {
        // dockerd adds the name, the hostname and the short id itself.
        let name = c
            .get("Name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim_start_matches('/')
            .to_string();
        let hostname = text(cfg(c, "Hostname"));
        network_field(c, |id, n| {
            strings(n.get("Aliases"))
                .into_iter()
                .filter(|a| {
                    *a != name
                        && !hostname.contains(a)
                        && !(a.len() >= 12 && id.starts_with(a.as_str()))
                })
                .collect()
        })
    })
    .aliases(&["net-alias"]),
    value("log-driver", same, |c| {
        text(at(c, &["HostConfig", "LogConfig", "Type"]))
    })
    .declared_only(),
    value("health-cmd", same, |c| health_cmd(health(c, "Test")))
        .image(|i| health_cmd(image_health(i, "Test"))),
    value("health-interval", duration, |c| num(health(c, "Interval")))
        .image(|i| num(image_health(i, "Interval"))),
    value("health-timeout", duration, |c| num(health(c, "Timeout")))
        .image(|i| num(image_health(i, "Timeout"))),
    value("health-start-period", duration, |c| {
        num(health(c, "StartPeriod"))
    })
    .image(|i| num(image_health(i, "StartPeriod"))),
    value("health-retries", integer, |c| num(health(c, "Retries")))
        .image(|i| num(image_health(i, "Retries"))),
    boolean("no-healthcheck", |c| {
        if strings(health(c, "Test")).first().map(String::as_str) == Some("NONE") {
            vec!["true".into()]
        } else {
            Vec::new()
        }
    }),
    boolean("init", |c| truth(hc(c, "Init"))),
    boolean("privileged", |c| truth(hc(c, "Privileged"))),
    boolean("read-only", |c| truth(hc(c, "ReadonlyRootfs"))),
    boolean("oom-kill-disable", |c| truth(hc(c, "OomKillDisable"))),
    boolean("publish-all", |c| truth(hc(c, "PublishAllPorts"))).short("P"),
    boolean("rm", |c| truth(hc(c, "AutoRemove"))),
    boolean("tty", |c| truth(cfg(c, "Tty"))).short("t"),
    boolean("interactive", |c| truth(cfg(c, "OpenStdin"))).short("i"),
];

/// Flags `plan::UnitSpec` compares itself, or that Kamal sets per boot.
const HANDLED: &[&str] = &[
    "--label",
    "-l",
    "--env",
    "-e",
    "--env-file",
    "--volume",
    "-v",
    "--log-opt",
    "--restart",
    "--network",
    "--net",
    "--name",
    "--detach",
    "-d",
    "--hostname",
    "-h",
];

/// `docker run` flags that change nothing in the container.
const NO_EFFECT: &[&str] = &[
    "--pull",
    "--platform",
    "--quiet",
    "-q",
    "--disable-content-trust",
    "--sig-proxy",
    "--detach-keys",
    "--cidfile",
];

/// Flags without a value (so the next word is not theirs).
const BARE: &[&str] = &[
    "--detach",
    "-d",
    "--quiet",
    "-q",
    "--disable-content-trust",
    "--sig-proxy",
];

fn find(flag: &str) -> Option<&'static Flag> {
    FLAGS.iter().find(|f| f.matches(flag))
}

/// Whether `flag` (as it appears in an argv) takes no value.
pub fn is_bare(flag: &str) -> bool {
    BARE.contains(&flag) || find(flag).is_some_and(|f| f.arity == Arity::Bool)
}

/// What one flag of an argv means to the comparison.
pub enum Reading {
    /// Compared by `UnitSpec` itself.
    Handled,
    /// Not a container property.
    NoEffect,
    /// Compared here.
    Compared,
    /// berth cannot read it back from `docker inspect`.
    Uncompared,
}

pub fn reading(flag: &str) -> Reading {
    if HANDLED.contains(&flag) {
        Reading::Handled
    } else if NO_EFFECT.contains(&flag) {
        Reading::NoEffect
    } else if find(flag).is_some() {
        Reading::Compared
    } else {
        Reading::Uncompared
    }
}

/// The desired flags of an argv's `(flag, value)` pairs, and the flags berth
/// does not compare.
pub fn desired<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> (Flags, Vec<String>) {
    let mut flags = Flags::new();
    let mut uncompared = Vec::new();
    for (flag, value) in pairs {
        match (reading(flag), find(flag)) {
            (Reading::Compared, Some(f)) => {
                // An explicitly default value reads as unset, as inspect shows it.
                let entries = (f.parse)(value);
                let slot = flags.entry(f.name.to_string()).or_default();
                slot.extend(entries);
            }
            (Reading::Uncompared, _) => uncompared.push(flag.to_string()),
            _ => {}
        }
    }
    // dockerd: a memory limit without a swap limit gets twice as much swap.
    if !flags.contains_key("memory-swap")
        && let Some(m) = flags
            .get("memory")
            .and_then(|v| v.first())
            .and_then(|m| m.parse::<i64>().ok())
    {
        flags.insert("memory-swap".into(), vec![(m * 2).to_string()]);
    }
    flags.retain(|_, v| !v.is_empty());
    for v in flags.values_mut() {
        v.sort();
    }
    (flags, uncompared)
}

/// The observed flags of a container (inspect JSON), and those whose value
/// is the image's own (`image`: the image's `Config`).
pub fn observed(container: &Value, image: Option<&Value>) -> (Flags, BTreeSet<String>) {
    let mut flags = Flags::new();
    let mut from_image = BTreeSet::new();
    for f in FLAGS {
        let mut v = (f.inspect)(container);
        if f.adds_to_image
            && let (Some(img), Some(i)) = (f.image, image)
        {
            let own = img(i);
            v.retain(|x| !own.contains(x));
        }
        if v.is_empty() {
            continue;
        }
        v.sort();
        if f.declared_only {
            from_image.insert(f.name.to_string());
        } else if let (false, Some(img), Some(i)) = (f.adds_to_image, f.image, image) {
            let mut iv = img(i);
            iv.sort();
            if iv == v {
                from_image.insert(f.name.to_string());
            }
        }
        flags.insert(f.name.to_string(), v);
    }
    (flags, from_image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(argv: &[(&str, &str)]) -> Flags {
        desired(argv.iter().copied()).0
    }

    #[test]
    fn sizes_cpus_and_durations_read_as_dockerd_stores_them() {
        assert_eq!(bytes("512m"), Some(536_870_912));
        assert_eq!(bytes("1.5g"), Some(1_610_612_736));
        assert_eq!(bytes("1024"), Some(1024));
        assert_eq!(bytes("2GB"), Some(2_147_483_648));
        assert_eq!(bytes("lots"), None);
        assert_eq!(nano_cpus("1.5"), vec!["1500000000"]);
        assert_eq!(go_duration_ns("1m30s"), Some(90_000_000_000));
        assert_eq!(go_duration_ns("500ms"), Some(500_000_000));
        assert_eq!(go_duration_ns("3x"), None);
    }

    #[test]
    fn a_memory_limit_implies_the_daemons_swap_limit() {
        let f = d(&[("--memory", "1g")]);
        assert_eq!(f["memory"], vec!["1073741824"]);
        assert_eq!(f["memory-swap"], vec!["2147483648"]);
        let c = json!({"HostConfig": {"Memory": 1073741824i64, "MemorySwap": 2147483648i64}});
        assert_eq!(observed(&c, None).0, f);
    }

    #[test]
    fn ports_caps_ulimits_and_devices_normalize_on_both_sides() {
        let f = d(&[
            ("--publish", "8080:80"),
            ("-p", "127.0.0.1:53:53/udp"),
            ("--publish", "9000-9001:9000-9001"),
            ("--cap-add", "net_admin"),
            ("--ulimit", "nofile=1024"),
            ("--device", "/dev/fuse"),
            ("--init", ""),
        ]);
        let c = json!({
            "HostConfig": {
                "PortBindings": {
                    "80/tcp": [{"HostIp": "", "HostPort": "8080"}],
                    "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "53"}],
                    "9000/tcp": [{"HostIp": "", "HostPort": "9000"}],
                    "9001/tcp": [{"HostIp": "", "HostPort": "9001"}]
                },
                "CapAdd": ["CAP_NET_ADMIN"],
                "Ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 1024}],
                "Devices": [{"PathOnHost": "/dev/fuse", "PathInContainer": "/dev/fuse", "CgroupPermissions": "rwm"}],
                "Init": true,
                "ShmSize": 67108864,
                "IpcMode": "private",
                "Runtime": "runc"
            },
            "Config": {"ExposedPorts": {"80/tcp": {}, "53/udp": {}, "9000/tcp": {}, "9001/tcp": {}}}
        });
        assert_eq!(observed(&c, None).0, f);
    }

    #[test]
    fn image_set_fields_are_told_apart() {
        let c = json!({"Config": {"User": "app", "WorkingDir": "/srv"}});
        let image = json!({"User": "app", "WorkingDir": "/"});
        let (flags, from_image) = observed(&c, Some(&image));
        assert!(from_image.contains("user"));
        assert!(!from_image.contains("workdir"));
        assert_eq!(flags["workdir"], vec!["/srv"]);
    }

    #[test]
    fn unknown_flags_are_reported_and_no_op_flags_ignored() {
        let (_, uncompared) = desired([("--gpus", "all"), ("--pull", "always")]);
        assert_eq!(uncompared, vec!["--gpus"]);
        assert!(is_bare("--init") && is_bare("-d") && !is_bare("--memory"));
    }
}
