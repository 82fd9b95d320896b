//! The one remote command that observes a host, and the parsing of its output.
//!
//! The script is a constant; everything host- or config-specific is passed as
//! positional arguments (`L:<service label>`, `F:<env file>`, `K:<lock dir>`),
//! quoted by [`crate::shell`], so no config value is ever interpreted by the
//! remote shell. Env files are hashed *on the host* (`sha256sum`): their
//! contents never cross the wire. Container env values are hashed as soon as
//! they are parsed; only values of keys the caller declares clear are kept.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{EnvValue, HostObservation, ObservedContainer, ProxyRouteState};

/// The remote script. It reports the host's Docker socket (`@@socket`) on
/// its first line, for berth to use the Engine API directly
/// ([`crate::remote`]'s forwarded socket) while the rest runs. With `E` (the
/// Engine API is used directly) it skips the containers. Otherwise, when the host has `curl` and a unix Docker socket:
/// two `curl` calls to the Engine API (the service's containers by label,
/// then every container and image inspected in one call); else two docker
/// CLI calls (`ps`, then one `inspect` of containers *and* their images).
/// Plus `kamal-proxy list` only where a proxy is wanted and running (with
/// `E`: wanted; the listing says whether it runs), one `sha256sum` for all
/// env files, and the lock directory. Sections are introduced by `@@name`
/// lines. A Docker engine that does not answer fails the probe (exit 3):
/// such a host is unknown, never empty.
pub const SCRIPT: &str = include_str!("probe.sh");

/// What to ask a host about.
#[derive(Clone, Debug, Default)]
pub struct ProbeRequest {
    /// `service` label values: the app's and each accessory's.
    pub service_labels: Vec<String>,
    /// Env files (relative to the SSH user's home) whose hashes to report.
    pub env_files: Vec<String>,
    /// Kamal lock directories to check.
    pub lock_dirs: Vec<String>,
    /// Ask kamal-proxy for its routes (the host runs a proxied role).
    pub proxy: bool,
    /// Use the docker CLI even where `curl` or the Engine API directly
    /// could be used (tests compare them).
    pub force_cli: bool,
    /// Kamal's accessory env-file directory, the app's service and the
    /// accessories the config names: the others found there are reported.
    pub accessory_dir: Option<String>,
    pub service: String,
    pub known_accessories: Vec<String>,
    /// Env keys whose values may be kept in clear (the config's clear env);
    /// every other value is kept only as a hash.
    pub clear_keys: BTreeSet<String>,
}

impl ProbeRequest {
    /// `sh -c SCRIPT berth-probe ARGS…` as an argv.
    /// The script's arguments (see [`SCRIPT`]).
    pub fn args(&self) -> Vec<String> {
        let mut argv = Vec::new();
        argv.extend(self.service_labels.iter().map(|l| format!("L:{l}")));
        argv.extend(self.env_files.iter().map(|f| format!("F:{f}")));
        argv.extend(self.lock_dirs.iter().map(|d| format!("K:{d}")));
        if let Some(dir) = &self.accessory_dir {
            argv.push(format!("A:{dir}"));
            argv.push(format!("V:{}", self.service));
            argv.extend(self.known_accessories.iter().map(|n| format!("N:{n}")));
        }
        if self.proxy {
            argv.push("P".into());
            argv.push(format!("S:{}", crate::proxy_state::STATE_FILE));
        }
        if self.force_cli {
            argv.push("C".into());
        }
        argv
    }

    /// The arguments when the containers come from the Engine API directly.
    /// The probe's arguments beside an Engine API snapshot; `quiet_proxy`:
    /// the snapshot reads kamal-proxy's state, so no `kamal-proxy list`.
    pub fn engine_args(&self, quiet_proxy: bool) -> Vec<String> {
        let mut argv = self.args();
        argv.push("E".into());
        if quiet_proxy {
            argv.push("Q".into());
        }
        argv
    }

    /// The Engine API list paths: the service's containers by label, and
    /// kamal-proxy by name. Filters are JSON, percent-encoded whole.
    pub fn list_paths(&self) -> Vec<String> {
        let filters = self
            .service_labels
            .iter()
            .map(|l| serde_json::json!({ "label": [format!("service={l}")] }))
            .chain([serde_json::json!({ "name": ["^kamal-proxy$"] })]);
        filters
            .map(|f| {
                format!(
                    "/containers/json?all=1&filters={}",
                    crate::remote::percent_encode(&f.to_string())
                )
            })
            .collect()
    }
}

/// The host's Docker socket, as the probe reported it: on its first line
/// only (a later one could come from a file name on the host).
pub fn socket(out: &str) -> Option<&str> {
    out.lines().next()?.strip_prefix("@@socket ")
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("probe output is missing section @@{0} (is docker installed and running?)")]
    MissingSection(&'static str),
    #[error("cannot parse `docker {what}` output: {message}")]
    Json { what: &'static str, message: String },
    /// The proxy's routes are unknown: planning would take them for none.
    #[error("kamal-proxy is running but `kamal-proxy list` failed: {0}")]
    ProxyList(String),
    /// kamal-proxy runs, the probe was told not to list its routes, and its
    /// state file did not read through the Engine API: ask the probe.
    #[error("kamal-proxy is running but its state file did not read")]
    ProxyStateUnread,
}

fn section<'a>(
    out: &'a str,
    name: &'static str,
    next: &'static str,
) -> Result<&'a str, ProbeError> {
    let start_tag = format!("@@{name}\n");
    let start = out
        .find(&start_tag)
        .ok_or(ProbeError::MissingSection(name))?
        + start_tag.len();
    let end_tag = format!("@@{next}\n");
    let end = out[start..]
        .find(&end_tag)
        .map(|i| start + i)
        .ok_or(ProbeError::MissingSection(next))?;
    Ok(&out[start..end])
}

pub use crate::secret::fingerprint as hash;

/// Parse the output of a probe run with [`ProbeRequest::engine_args`], with
/// the containers the Engine API returned.
/// The Engine API path of kamal-proxy's state file (a tar of that file).
pub fn proxy_state_path() -> String {
    format!(
        "/containers/{}/archive?path={}",
        crate::kamal::PROXY_CONTAINER,
        crate::remote::percent_encode(crate::proxy_state::STATE_FILE)
    )
}

/// Routes and route settings from the state file fetched with the
/// snapshot: `Some` when kamal-proxy runs and its state reads (no file yet:
/// no routes); `None` when it does not parse.
#[allow(clippy::type_complexity)]
fn proxy_from_engine(
    text: &str,
) -> Option<(
    Vec<ProxyRouteState>,
    BTreeMap<String, crate::proxy_state::Settings>,
)> {
    let routes = crate::proxy_state::routes_from_state_file(text)?
        .into_iter()
        .map(|(service, target, state)| ProxyRouteState {
            service,
            target,
            state,
        })
        .collect();
    Some((routes, crate::proxy_state::from_state_file(text)?))
}

/// The state file's text from the snapshot's archive (no file: no routes).
fn state_text(body: Option<&Option<Vec<u8>>>) -> Option<String> {
    match body? {
        Some(tar) => std::str::from_utf8(crate::proxy_state::first_file_of_tar(tar)?)
            .ok()
            .map(str::to_string),
        None => Some("[]".to_string()),
    }
}

/// An observation from an Engine API snapshot and the probe beside it
/// (`kept`: kamal-proxy's state kept from an earlier cycle, instead of the
/// snapshot's), and the proxy state's text when it was read and parsed.
pub fn parse_engine(
    snapshot: crate::remote::Snapshot,
    out: &str,
    req: &ProbeRequest,
    kept: Option<&str>,
) -> Result<(HostObservation, Option<String>), ProbeError> {
    let proxy_running = snapshot.listed.iter().any(|c| {
        c.get("State").and_then(Value::as_str) == Some("running")
            && crate::docker_flags::strings(c.get("Names"))
                .iter()
                .any(|n| n == "/kamal-proxy")
    });
    let text = match kept {
        Some(t) => Some(t.to_string()),
        None => state_text(snapshot.others.first()),
    };
    let from_engine = (req.proxy && proxy_running)
        .then(|| text.as_deref().and_then(proxy_from_engine))
        .flatten();
    if req.proxy
        && proxy_running
        && from_engine.is_none()
        && section(out, "proxy", "lock")?.starts_with("@@proxy-unasked")
    {
        return Err(ProbeError::ProxyStateUnread);
    }
    let mut objects = snapshot.containers;
    objects.extend(snapshot.images);
    let mut observation = parse_with(objects, out, req, Some(proxy_running))?;
    let read = from_engine.is_some();
    if let Some((routes, settings)) = from_engine {
        observation.proxy_routes = Some(routes);
        observation.proxy_settings = Some(settings);
    }
    Ok((observation, text.filter(|_| read)))
}

/// Parse the probe's stdout.
pub fn parse(out: &str, req: &ProbeRequest) -> Result<HostObservation, ProbeError> {
    // Either `docker inspect`'s array or the Engine API's one object per line;
    // containers (they have `State`) and their images together.
    let text = section(out, "inspect", "proxy")?;
    let json_err = |e: serde_json::Error| ProbeError::Json {
        what: "inspect",
        message: e.to_string(),
    };
    let objects: Vec<Value> = if text.trim_start().starts_with('[') {
        match serde_json::from_str(text).map_err(json_err)? {
            Value::Array(a) => a,
            _ => Vec::new(),
        }
    } else {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(json_err))
            .collect::<Result<_, _>>()?
    };
    parse_with(objects, out, req, None)
}

/// The observation from inspected containers and images (`objects`) and the
/// probe's other sections. `proxy_running`: whether the Engine API listed
/// kamal-proxy running (`None`: the script itself told).
fn parse_with(
    objects: Vec<Value>,
    out: &str,
    req: &ProbeRequest,
    proxy_running: Option<bool>,
) -> Result<HostObservation, ProbeError> {
    let image_config: BTreeMap<String, &Value> = objects
        .iter()
        .filter(|o| o.get("State").is_none())
        .filter_map(|i| Some((i.get("Id")?.as_str()?.to_string(), i.get("Config")?)))
        .collect();

    let mut containers = Vec::new();
    for c in objects.iter().filter(|o| o.get("State").is_some()) {
        containers.push(container(c, &image_config, req));
    }
    containers.sort_by(|a, b| a.name.cmp(&b.name));

    let proxy_text = section(out, "proxy", "lock")?;
    let mut proxy_settings = None;
    let proxy_routes = if proxy_text.starts_with("@@proxy-absent")
        || proxy_text.starts_with("@@proxy-unasked")
        || proxy_running == Some(false)
    {
        None
    } else if let Some(end) = proxy_text.find("@@proxy-error") {
        let said: String = proxy_text[..end].trim().chars().take(300).collect();
        return Err(ProbeError::ProxyList(said));
    } else {
        let (list, state) = proxy_text
            .split_once("@@proxy-state\n")
            .unwrap_or((proxy_text, ""));
        proxy_settings = crate::proxy_state::from_state_file(state);
        Some(parse_proxy_list(list))
    };

    // `sha256sum` prints `<hash>  <path>` for the files that exist.
    let mut env_files: BTreeMap<String, Option<String>> =
        req.env_files.iter().map(|f| (f.clone(), None)).collect();
    for line in section(out, "files", "end")?.lines() {
        if let Some((h, path)) = line.split_once("  ") {
            env_files.insert(path.to_string(), Some(h.to_string()));
        }
    }
    let lock_text = section(out, "lock", "files")?;
    let lock = lock_text
        .lines()
        .find_map(|l| l.strip_prefix("held "))
        .map(decode_lock);
    // Names come from the host's file system: only accessory names count.
    let stray_accessories = lock_text
        .lines()
        .filter_map(|l| l.strip_prefix("stray ")?.split_once(' '))
        .filter(|(name, _)| crate::config::grammar::is_config_word(name))
        .map(|(name, status)| {
            (
                name.to_string(),
                (status != "missing").then(|| status.to_string()),
            )
        })
        .collect();
    Ok(HostObservation {
        containers,
        proxy_routes,
        proxy_settings,
        stray_accessories,
        env_files,
        lock,
    })
}

fn str_of(v: &Value, path: &[&str]) -> String {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(n) => cur = n,
            None => return String::new(),
        }
    }
    cur.as_str().unwrap_or_default().to_string()
}

fn map_of(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn container(
    c: &Value,
    images: &BTreeMap<String, &Value>,
    req: &ProbeRequest,
) -> ObservedContainer {
    let config = c.get("Config");
    let image_id = str_of(c, &["Image"]);
    let image_cfg = images.get(&image_id).copied();
    let image_labels = map_of(image_cfg.and_then(|i| i.get("Labels")));
    let image_env: BTreeSet<String> =
        crate::docker_flags::strings(image_cfg.and_then(|i| i.get("Env")))
            .into_iter()
            .collect();
    let image_cmd = crate::docker_flags::strings(image_cfg.and_then(|i| i.get("Cmd")));

    // Note which labels and env the image brings (same value as the image's):
    // the plan ignores them unless the config sets them too.
    let labels: BTreeMap<String, String> = map_of(config.and_then(|c| c.get("Labels")));
    let from_image_labels = labels
        .iter()
        .filter(|(k, v)| image_labels.get(*k) == Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    let mut env = BTreeMap::new();
    let mut from_image_env = BTreeSet::new();
    for entry in crate::docker_flags::strings(config.and_then(|c| c.get("Env"))) {
        let (k, v) = entry.split_once('=').unwrap_or((&entry, ""));
        if image_env.contains(&entry) {
            from_image_env.insert(k.to_string());
        }
        env.insert(
            k.to_string(),
            EnvValue {
                sha256: hash(v),
                clear: req.clear_keys.contains(k).then(|| v.to_string()),
            },
        );
    }
    let cmd = crate::docker_flags::strings(config.and_then(|c| c.get("Cmd")));
    let state = c.get("State");
    let host_config = c.get("HostConfig");
    let (flags, flags_from_image) = crate::docker_flags::observed(c, image_cfg);
    let restart = str_of(c, &["HostConfig", "RestartPolicy", "Name"]);
    let retries = host_config
        .and_then(|h| h.get("RestartPolicy"))
        .and_then(|r| r.get("MaximumRetryCount"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let mut networks: Vec<String> = c
        .get("NetworkSettings")
        .and_then(|n| n.get("Networks"))
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    networks.sort();
    ObservedContainer {
        id: str_of(c, &["Id"]),
        name: str_of(c, &["Name"]).trim_start_matches('/').to_string(),
        image: str_of(c, &["Config", "Image"]),
        image_id,
        labels,
        env,
        from_image: (from_image_labels, from_image_env),
        cmd: if cmd == image_cmd { None } else { Some(cmd) },
        image_cmd,
        flags,
        flags_from_image,
        volumes: crate::docker_flags::strings(host_config.and_then(|h| h.get("Binds"))),
        log_opts: map_of(
            host_config
                .and_then(|h| h.get("LogConfig"))
                .and_then(|l| l.get("Config")),
        ),
        // `on-failure:N` as `docker run --restart` names it.
        restart_policy: if restart == "on-failure" && retries > 0 {
            format!("{restart}:{retries}")
        } else {
            restart
        },
        networks,
        status: state.map(|s| str_of(s, &["Status"])).unwrap_or_default(),
        health: state
            .and_then(|s| s.get("Health"))
            .map(|h| str_of(h, &["Status"]))
            .filter(|s| !s.is_empty()),
        restart_count: c.get("RestartCount").and_then(Value::as_u64).unwrap_or(0),
        exit_code: state
            .and_then(|s| s.get("ExitCode"))
            .and_then(Value::as_i64)
            .unwrap_or(0),
    }
}

/// `kamal-proxy list`: a table whose first column is the service and whose
/// target column is `<host>:<port>`.
pub fn parse_proxy_list(text: &str) -> Vec<ProxyRouteState> {
    let mut routes = Vec::new();
    for line in text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("Service"))
        .skip(1)
    {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let Some(service) = cols.first() else {
            continue;
        };
        let target = cols
            .iter()
            .skip(1)
            .find(|c| {
                c.rsplit_once(':')
                    .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            })
            .map(|s| s.to_string());
        let state = cols
            .iter()
            .find(|c| matches!(**c, "running" | "stopped" | "paused"))
            .map(|s| s.to_string())
            .unwrap_or_default();
        routes.push(ProxyRouteState {
            service: service.to_string(),
            target,
            state,
        });
    }
    routes
}

/// Kamal's lock `details` file is base64 (wrapped, as Ruby's `encode64`
/// and `base64` write it) of "Locked by: …\nAt: …\nVersion: …\nMessage: …";
/// the probe sends the file itself base64-encoded again (`base64 -w0`), so
/// no byte of it can break the probe's framing. The user name may be UTF-8
/// (Kamal 2.12 writes it so); other bytes are shown replaced, not refused.
fn decode_lock(b64: &str) -> String {
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    engine
        .decode(b64.trim())
        .ok()
        .and_then(|file| {
            let inner: Vec<u8> = file
                .into_iter()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            engine.decode(inner).ok()
        })
        .map(|details| String::from_utf8_lossy(&details).trim().to_string())
        .unwrap_or_else(|| "held (details unreadable)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_proxy_listing_is_an_error_unless_the_proxy_is_not_running() {
        let out = "@@inspect\n@@proxy\nError response from daemon: not running\n@@proxy-error\n@@lock\n@@files\n@@end\n";
        let req = ProbeRequest::default();
        let err = parse(out, &req).unwrap_err().to_string();
        assert!(
            err.contains("`kamal-proxy list` failed: Error response from daemon"),
            "{err}"
        );
        let listed = |state: &str| crate::remote::Snapshot {
            listed: vec![
                serde_json::json!({"Id": "ab", "Names": ["/kamal-proxy"], "State": state}),
            ],
            ..Default::default()
        };
        assert!(parse_engine(listed("running"), out, &req, None).is_err());
        let (o, read) = parse_engine(listed("exited"), out, &req, None).unwrap();
        assert_eq!(o.proxy_routes, None);
        assert!(read.is_none());
    }

    /// With the state file in the snapshot, routes come from it and the
    /// shell's `kamal-proxy list` is not needed (it said "unasked").
    #[test]
    fn the_proxy_state_from_the_engine_api_gives_routes_and_settings() {
        let out = "@@inspect\n@@proxy\n@@proxy-unasked\n@@lock\n@@files\n@@end\n";
        let req = ProbeRequest {
            proxy: true,
            ..Default::default()
        };
        let state = br#"[{"name":"demo-web","options":{"hosts":[""],"path_prefixes":["/"],"tls_enabled":false},
            "target_options":{"health_check_config":{"path":"/up"}},"active_targets":["abc:80"],
            "pause_controller":{"state":2}}]"#;
        let mut tar = vec![0u8; 512];
        tar[124..136].copy_from_slice(format!("{:011o}\0", state.len()).as_bytes());
        tar[156] = b'0';
        tar.extend_from_slice(state);
        tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
        let snapshot = crate::remote::Snapshot {
            listed: vec![
                serde_json::json!({"Id": "ab", "Names": ["/kamal-proxy"], "State": "running"}),
            ],
            others: vec![Some(tar)],
            ..Default::default()
        };
        let (o, read) = parse_engine(snapshot, out, &req, None).unwrap();
        assert!(read.is_some());
        let routes = o.proxy_routes.unwrap();
        assert_eq!(routes[0].target.as_deref(), Some("abc:80"));
        assert_eq!(routes[0].state, "stopped");
        assert_eq!(
            o.proxy_settings.unwrap()["demo-web"]["health_check_path"],
            "/up"
        );
    }

    #[test]
    fn the_docker_socket_is_read_off_the_first_line_only() {
        assert_eq!(
            socket("@@socket /run/docker.sock\n@@inspect\n"),
            Some("/run/docker.sock")
        );
        // A name the host's files could print later is no socket.
        assert_eq!(
            socket("@@inspect\n@@lock\nstray x\n@@socket /tmp/evil.sock\n"),
            None
        );
        assert_eq!(socket(""), None);
        // The probe prints it first.
        let first = SCRIPT
            .lines()
            .find(|l| l.contains("echo") && !l.trim_start().starts_with('#'));
        assert!(first.is_some_and(|l| l.contains("@@socket")), "{first:?}");
    }

    #[test]
    fn a_running_proxy_whose_state_did_not_read_is_asked_again_never_taken_for_none() {
        let req = ProbeRequest {
            proxy: true,
            ..Default::default()
        };
        let running = || crate::remote::Snapshot {
            listed: vec![
                serde_json::json!({"Id": "ab", "Names": ["/kamal-proxy"], "State": "running"}),
            ],
            others: vec![Some(b"not a tar".to_vec())],
            ..Default::default()
        };
        // The routes were not listed either (`Q`): ask the whole probe.
        let unasked = "@@socket /s\n@@inspect\n@@proxy\n@@proxy-unasked\n@@lock\n@@files\n@@end\n";
        assert!(matches!(
            parse_engine(running(), unasked, &req, None),
            Err(ProbeError::ProxyStateUnread)
        ));
        // Listed: those routes.
        let listed = "@@inspect\n@@proxy\nService Host Path Target State TLS\ndemo-web * / abc:80 running no\n@@proxy-state\n@@lock\n@@files\n@@end\n";
        let (o, read) = parse_engine(running(), listed, &req, None).unwrap();
        assert_eq!(read, None);
        assert_eq!(o.proxy_routes.unwrap().len(), 1);
        // No proxy running: no routes, nothing to ask.
        let stopped = crate::remote::Snapshot::default();
        let (o, _) = parse_engine(stopped, unasked, &req, None).unwrap();
        assert_eq!(o.proxy_routes, None);
    }

    #[test]
    fn the_engine_api_is_asked_what_the_script_asks_curl() {
        let req = ProbeRequest {
            service_labels: vec!["demo".into(), "demo-kv".into()],
            ..Default::default()
        };
        let paths = req.list_paths();
        for label in &req.service_labels {
            let curl = format!(
                "/containers/json?all=1&filters=%7B%22label%22%3A%5B%22service%3D{label}%22%5D%7D"
            );
            assert!(SCRIPT.contains("filters=%7B%22label%22%3A%5B%22service%3D${a#L:}%22%5D%7D"));
            assert!(paths.contains(&curl), "{paths:?}");
        }
        let proxy =
            "/containers/json?all=1&filters=%7B%22name%22%3A%5B%22%5Ekamal-proxy%24%22%5D%7D";
        assert!(SCRIPT.contains(proxy));
        assert_eq!(paths.last().map(String::as_str), Some(proxy));
        // Nothing but unreserved characters and escapes on a request line.
        let hostile = ProbeRequest {
            service_labels: vec!["x\" HTTP/1.1\r\nHost: y".into()],
            ..Default::default()
        };
        assert!(!hostile.list_paths()[0].contains([' ', '\r', '\n', '"']));
    }

    #[test]
    fn a_kamal_lock_with_a_utf8_user_name_reads_as_written() {
        // As Kamal 2.12 writes it (`Base64.encode64`, wrapped at 60) and the
        // probe sends it (`base64 -w0` of the file).
        let details =
            "Locked by: Сергей Федоров at 2026-12-01T00:00:00Z\nVersion: v1\nMessage: Manual lock";
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(details);
        let wrapped: Vec<String> = b64
            .as_bytes()
            .chunks(60)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        let file = format!("{}\n", wrapped.join("\n"));
        assert!(wrapped.len() > 1);
        let sent = base64::engine::general_purpose::STANDARD.encode(file);
        assert_eq!(decode_lock(&sent), details);
        assert_eq!(decode_lock("%%%"), "held (details unreadable)");
    }

    #[test]
    fn parses_a_probe_output() {
        let out = r#"@@inspect
[{"Id":"abc","Name":"/demo-web-v1","Image":"sha256:1","Config":{"Image":"reg/demo:v1","Labels":{"service":"demo","role":"web","img":"x"},"Env":["PATH=/bin","KAMAL_VERSION=v1","DB_PASSWORD=hunter2"],"Cmd":["/bin/sh","-c","serve"]},
  "HostConfig":{"Binds":["/data:/data"],"RestartPolicy":{"Name":"unless-stopped"},"LogConfig":{"Config":{"max-size":"10m"}}},
  "State":{"Status":"running"},"RestartCount":0,"NetworkSettings":{"Networks":{"kamal":{}}}},
 {"Id":"sha256:1","Config":{"Labels":{"service":"demo","img":"x"},"Env":["PATH=/bin"],"Cmd":["/bin/sh","-c","serve"]}}]
@@proxy
Service    Host  Path  Target     State    TLS
demo-web   *     /     abc:80     running  no
@@lock
held VEc5amEyVmtJR0o1T2lCdFpRPT0K
@@files
0123  .kamal/apps/demo/env/roles/web.env
@@end
"#;
        let req = ProbeRequest {
            env_files: vec![
                ".kamal/apps/demo/env/roles/web.env".into(),
                ".kamal/apps/demo/env/roles/job.env".into(),
            ],
            clear_keys: ["KAMAL_VERSION".to_string()].into(),
            ..Default::default()
        };
        let o = parse(out, &req).unwrap();
        let c = &o.containers[0];
        assert_eq!(c.name, "demo-web-v1");
        // The image's labels are the image's; the container's `role` is not.
        assert_eq!(
            c.from_image.0.iter().collect::<Vec<_>>(),
            ["img", "service"]
        );
        assert_eq!(c.from_image.1.iter().collect::<Vec<_>>(), ["PATH"]);
        assert_eq!(c.env["KAMAL_VERSION"].clear.as_deref(), Some("v1"));
        assert_eq!(c.env["DB_PASSWORD"].clear, None);
        assert_eq!(c.env["DB_PASSWORD"].sha256, hash("hunter2"));
        assert!(!format!("{o:?}").contains("hunter2"));
        assert_eq!(c.cmd, None);
        let routes = o.proxy_routes.unwrap();
        assert_eq!(routes[0].service, "demo-web");
        assert_eq!(routes[0].target.as_deref(), Some("abc:80"));
        assert_eq!(o.env_files[".kamal/apps/demo/env/roles/job.env"], None);
        assert_eq!(
            o.env_files[".kamal/apps/demo/env/roles/web.env"].as_deref(),
            Some("0123")
        );
        assert_eq!(o.lock.as_deref(), Some("Locked by: me"));
    }

    #[test]
    fn a_truncated_output_is_an_error_not_an_empty_host() {
        assert!(parse("@@inspect\n[]\n", &ProbeRequest::default()).is_err());
    }
}
