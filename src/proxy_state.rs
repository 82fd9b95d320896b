//! `proxy_state`: a kamal-proxy service's route settings in one normalized
//! form, read from the `kamal-proxy deploy` flags berth would send and from
//! the state file kamal-proxy keeps (`~/.config/kamal-proxy/kamal-proxy.state`
//! in the `kamal-proxy-config` volume: a JSON list of services with their
//! `options` and `target_options`). A leaf: `desired` renders the flags,
//! `observe` reads the file, `plan` compares the two.
//!
//! The defaults are kamal-proxy v0.9's (`internal/cmd/deploy.go`): health
//! check `/up` every 1 s with a 5 s timeout, a 30 s target timeout, a 1 MiB
//! memory buffer, `strip-path-prefix` and `tls-redirect` on, and
//! `forward-headers` on unless TLS is. `deploy-timeout` and `drain-timeout`
//! act during a deploy only and are not stored, so they are not compared.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::docker_flags::strings;

/// Where kamal-proxy keeps its state, inside its container.
pub const STATE_FILE: &str = "/home/kamal-proxy/.config/kamal-proxy/kamal-proxy.state";

/// Setting name → value, for one service.
pub type Settings = BTreeMap<&'static str, String>;

const SECOND_NS: i64 = 1_000_000_000;

/// The settings `kamal-proxy deploy <service> --target=… <flags>` stores.
pub fn from_deploy_flags(flags: &[String]) -> Settings {
    let mut hosts = Vec::new();
    let mut prefixes = Vec::new();
    let mut req_headers = Vec::new();
    let mut resp_headers = Vec::new();
    let mut s = Settings::new();
    let mut tls = false;
    let mut forward: Option<bool> = None;
    let mut set = |k: &'static str, v: String| {
        s.insert(k, v);
    };
    set("tls_certificate_path", String::new());
    set("tls_private_key_path", String::new());
    set("tls_redirect", "true".into());
    set("strip_prefix", "true".into());
    set("error_page_path", String::new());
    set("health_check_path", "/up".into());
    set("health_check_interval", SECOND_NS.to_string());
    set("health_check_timeout", (5 * SECOND_NS).to_string());
    set("response_timeout", (30 * SECOND_NS).to_string());
    set("buffer_requests", "false".into());
    set("buffer_responses", "false".into());
    set("max_memory_buffer_size", (1 << 20).to_string());
    set("max_request_body_size", "0".into());
    set("max_response_body_size", "0".into());
    for f in flags {
        let Some(f) = f.strip_prefix("--") else {
            continue;
        };
        let (k, v) = f.split_once('=').unwrap_or((f, "true"));
        let dur = |v: &str| {
            crate::docker_flags::go_duration_ns(v).map_or_else(|| v.to_string(), |n| n.to_string())
        };
        match k {
            "host" => hosts.extend(v.split(',').map(str::to_string)),
            "path-prefix" => prefixes.extend(v.split(',').map(str::to_string)),
            "tls" => tls = v == "true",
            "tls-certificate-path" => set("tls_certificate_path", v.into()),
            "tls-private-key-path" => set("tls_private_key_path", v.into()),
            "tls-redirect" => set("tls_redirect", v.into()),
            "strip-path-prefix" => set("strip_prefix", v.into()),
            "error-pages" => set("error_page_path", v.into()),
            "health-check-path" => set("health_check_path", v.into()),
            "health-check-interval" => set("health_check_interval", dur(v)),
            "health-check-timeout" => set("health_check_timeout", dur(v)),
            "target-timeout" => set("response_timeout", dur(v)),
            "buffer-requests" => set("buffer_requests", v.into()),
            "buffer-responses" => set("buffer_responses", v.into()),
            "buffer-memory" => set("max_memory_buffer_size", v.into()),
            "max-request-body" => set("max_request_body_size", v.into()),
            "max-response-body" => set("max_response_body_size", v.into()),
            "forward-headers" => forward = Some(v == "true"),
            "log-request-header" => req_headers.extend(v.split(',').map(str::to_string)),
            "log-response-header" => resp_headers.extend(v.split(',').map(str::to_string)),
            _ => {}
        }
    }
    set("hosts", hosts.join(","));
    set("path_prefixes", normalize_prefixes(&prefixes).join(","));
    set("tls_enabled", tls.to_string());
    set("forward_headers", forward.unwrap_or(!tls).to_string());
    set("log_request_headers", req_headers.join(","));
    set("log_response_headers", resp_headers.join(","));
    s
}

/// kamal-proxy's `NormalizePathPrefixes`: `/` when none, each `/<trimmed>`.
fn normalize_prefixes(prefixes: &[String]) -> Vec<String> {
    if prefixes.is_empty() {
        return vec!["/".into()];
    }
    prefixes
        .iter()
        .map(|p| format!("/{}", p.trim_matches('/')))
        .collect()
}

/// Service name → settings, from the state file's JSON. `None`: not JSON
/// of that shape (an older or unknown kamal-proxy): nothing is compared.
pub fn from_state_file(text: &str) -> Option<BTreeMap<String, Settings>> {
    let services: Vec<Value> = serde_json::from_str(text.trim()).ok()?;
    let mut out = BTreeMap::new();
    for svc in services {
        let name = svc.get("name")?.as_str()?.to_string();
        let o = svc.get("options")?;
        let t = svc.get("target_options")?;
        let s_of = |v: &Value, k: &str| match v.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Bool(b)) => b.to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        let h = t.get("health_check_config").unwrap_or(&Value::Null);
        let mut s = Settings::new();
        // kamal-proxy stores "no host" as one empty host.
        let hosts: Vec<String> = strings(o.get("hosts"))
            .into_iter()
            .filter(|h| !h.is_empty())
            .collect();
        s.insert("hosts", hosts.join(","));
        s.insert(
            "path_prefixes",
            normalize_prefixes(&strings(o.get("path_prefixes"))).join(","),
        );
        for (key, from) in [
            ("tls_enabled", "tls_enabled"),
            ("tls_certificate_path", "tls_certificate_path"),
            ("tls_private_key_path", "tls_private_key_path"),
            ("tls_redirect", "tls_redirect"),
            ("strip_prefix", "strip_prefix"),
            ("error_page_path", "error_page_path"),
        ] {
            s.insert(key, s_of(o, from));
        }
        s.insert("health_check_path", s_of(h, "path"));
        s.insert("health_check_interval", s_of(h, "interval"));
        s.insert("health_check_timeout", s_of(h, "timeout"));
        for key in [
            "response_timeout",
            "buffer_requests",
            "buffer_responses",
            "max_memory_buffer_size",
            "max_request_body_size",
            "max_response_body_size",
            "forward_headers",
        ] {
            s.insert(key, s_of(t, key));
        }
        s.insert(
            "log_request_headers",
            strings(t.get("log_request_headers")).join(","),
        );
        s.insert(
            "log_response_headers",
            strings(t.get("log_response_headers")).join(","),
        );
        out.insert(name, s);
    }
    Some(out)
}

/// A route as kamal-proxy's state file has it: service, its active target
/// (`<container>:<port>`), and `running`, `paused` or `stopped`.
pub fn routes_from_state_file(text: &str) -> Option<Vec<(String, Option<String>, String)>> {
    let services: Vec<Value> = serde_json::from_str(text.trim()).ok()?;
    services
        .iter()
        .map(|svc| {
            let name = svc.get("name")?.as_str()?.to_string();
            let target = strings(svc.get("active_targets")).into_iter().next();
            let state = match svc
                .get("pause_controller")
                .and_then(|p| p.get("state"))
                .and_then(Value::as_u64)
            {
                Some(1) => "paused",
                Some(2) => "stopped",
                _ => "running",
            };
            Some((name, target, state.to_string()))
        })
        .collect()
}

/// The first regular file of a tar stream (what the Engine API's
/// `/containers/{id}/archive` returns for one file), bounded by the stream.
pub fn first_file_of_tar(tar: &[u8]) -> Option<&[u8]> {
    let mut at = 0;
    while at + 512 <= tar.len() {
        let header = &tar[at..at + 512];
        if header.iter().all(|b| *b == 0) {
            return None;
        }
        let size_field = std::str::from_utf8(&header[124..136]).ok()?;
        let size =
            usize::from_str_radix(size_field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
                .ok()?;
        let body = at + 512;
        let end = body.checked_add(size)?;
        if end > tar.len() {
            return None;
        }
        if matches!(header[156], b'0' | 0) {
            return Some(&tar[body..end]);
        }
        // Other entries (a PAX header, say): skip, padded to 512.
        at = body + size.div_ceil(512) * 512;
    }
    None
}

/// A setting's name as the `kamal-proxy deploy` flag a user knows.
pub fn flag_name(setting: &str) -> &'static str {
    match setting {
        "hosts" => "host",
        "path_prefixes" => "path-prefix",
        "tls_enabled" => "tls",
        "tls_certificate_path" => "tls-certificate-path",
        "tls_private_key_path" => "tls-private-key-path",
        "tls_redirect" => "tls-redirect",
        "strip_prefix" => "strip-path-prefix",
        "error_page_path" => "error-pages",
        "health_check_path" => "health-check-path",
        "health_check_interval" => "health-check-interval",
        "health_check_timeout" => "health-check-timeout",
        "response_timeout" => "target-timeout",
        "buffer_requests" => "buffer-requests",
        "buffer_responses" => "buffer-responses",
        "max_memory_buffer_size" => "buffer-memory",
        "max_request_body_size" => "max-request-body",
        "max_response_body_size" => "max-response-body",
        "forward_headers" => "forward-headers",
        "log_request_headers" => "log-request-header",
        "log_response_headers" => "log-response-header",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_the_state_file_agree_on_defaults_and_changes() {
        let flags: Vec<String> = [
            "--host=app.example.com",
            "--tls",
            "--deploy-timeout=30s",
            "--health-check-path=/healthz",
            "--target-timeout=10s",
            "--buffer-requests",
            "--buffer-responses=false",
            "--buffer-memory=2000000",
            "--log-request-header=Cache-Control",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let want = from_deploy_flags(&flags);
        assert_eq!(want["forward_headers"], "false", "TLS turns it off");
        let state = r#"[{"name":"demo-web","options":{"hosts":["app.example.com"],"path_prefixes":["/"],
          "tls_enabled":true,"tls_certificate_path":"","tls_private_key_path":"","tls_redirect":true,
          "strip_prefix":true,"error_page_path":""},
          "target_options":{"health_check_config":{"path":"/healthz","port":0,"interval":1000000000,"timeout":5000000000,"host":""},
          "response_timeout":10000000000,"buffer_requests":true,"buffer_responses":false,
          "max_memory_buffer_size":2000000,"max_request_body_size":0,"max_response_body_size":0,
          "log_request_headers":["Cache-Control"],"log_response_headers":null,"forward_headers":false},
          "active_targets":["abc:80"]}]"#;
        let have = from_state_file(state).unwrap();
        assert_eq!(have["demo-web"], want);
        let mut changed = flags.clone();
        changed.push("--health-check-interval=3s".into());
        assert_ne!(from_deploy_flags(&changed), have["demo-web"]);
        assert!(from_state_file("# not json").is_none());
        let routes = routes_from_state_file(state).unwrap();
        assert_eq!(
            routes,
            vec![(
                "demo-web".to_string(),
                Some("abc:80".to_string()),
                "running".to_string()
            )]
        );
    }

    #[test]
    fn a_tar_of_one_file_yields_it() {
        let mut tar = vec![0u8; 512];
        tar[..5].copy_from_slice(b"state");
        tar[124..136].copy_from_slice(b"00000000005\0");
        tar[156] = b'0';
        tar.extend_from_slice(b"hello");
        tar.resize(2048, 0);
        assert_eq!(first_file_of_tar(&tar), Some(&b"hello"[..]));
        assert_eq!(first_file_of_tar(&tar[..515]), None, "a cut stream");
        assert_eq!(first_file_of_tar(&[0; 1024]), None);
    }
}
