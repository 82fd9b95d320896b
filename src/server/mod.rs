//! `server`: HTTP for `berth run` — the status page at `/`, Prometheus `/metrics`, `/healthz`,
//! `/readyz` (ready once every app was observed), `/api/v1/apps` (status
//! JSON), token-protected `POST /api/v1/apps/{app}/sync|suspend|resume`, and
//! webhook receivers (GitHub and Gitea/Forgejo HMAC-SHA256, GitLab token),
//! compared in constant time, bodies capped at 1 MiB. An empty token or
//! secret never authenticates (`berth run` refuses one at start).
//!
//! [`serve`] puts the router on the network: header-read, idle and request
//! timeouts, and a connection cap that sheds idle connections so the health
//! endpoints keep answering.
//!
//! Metrics (every series also has `app` and `destination`):
//! - `berth_app_in_sync` 1/0
//! - `berth_drift_units{host,role,reason}` units to change
//! - `berth_reconcile_total{result}` counter (`in_sync`, `drifted`, `applied`, `suspended`, `error`)
//! - `berth_reconcile_duration_seconds` histogram
//! - `berth_host_up{host}` 1/0
//! - `berth_source_info{revision}` 1
//! - `berth_source_verified` 1/0 (with `--verify`), `berth_source_signer_info{fingerprint,signer}` 1
//! - `berth_last_apply_timestamp_seconds`, `berth_last_success_timestamp_seconds`

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hmac::{KeyInit, Mac};
use subtle::ConstantTimeEq;

use crate::controller::{AppStatus, BUCKETS, Controller};
use crate::secret::Secret;

pub mod serve;

pub struct ServerState {
    pub apps: Vec<Arc<Controller>>,
    /// Bearer token for the write API (none: the write API is disabled).
    pub api_token: Option<Secret>,
    /// Shared secret of the webhooks (none: webhooks are disabled).
    pub webhook_secret: Option<Secret>,
}

pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/apps", get(apps))
        .route("/api/v1/apps/{app}/{op}", post(app_op))
        .route("/webhooks/{kind}", post(webhook))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(announced_body_limit))
        .with_state(state)
}

/// The largest request body read (webhooks; the API reads none).
pub const BODY_LIMIT: usize = 1 << 20;

/// A body announced larger than [`BODY_LIMIT`] is refused before a byte of
/// it is read (a chunked one is cut at the limit while it is read).
async fn announced_body_limit(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let announced = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > BODY_LIMIT as u64) {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body larger than 1 MiB\n",
        )
            .into_response();
    }
    next.run(req).await
}

/// The status page: static HTML, CSS and JS (no build step) that renders
/// `/api/v1/apps` and refreshes itself.
async fn status_page() -> Response {
    (
        [
            ("content-type", "text/html; charset=utf-8"),
            // Everything is inline and same-origin; nothing else may load.
            (
                "content-security-policy",
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
            ),
        ],
        include_str!("status.html"),
    )
        .into_response()
}

async fn readyz(State(s): State<Arc<ServerState>>) -> Response {
    if s.apps.iter().all(|a| a.snapshot().observed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not every app was observed yet\n",
        )
            .into_response()
    }
}

async fn apps(State(s): State<Arc<ServerState>>) -> Response {
    let all: Vec<AppStatus> = s.apps.iter().map(|a| a.snapshot()).collect();
    axum::Json(serde_json::json!({ "schema": "berth.apps/v1", "apps": all })).into_response()
}

/// A secret that can authenticate: not empty, not only whitespace (the
/// empty string is what a forged request sends most easily).
fn usable(secret: &Secret) -> bool {
    !secret.expose().trim().is_empty()
}

fn bearer_ok(headers: &HeaderMap, token: &Option<Secret>) -> bool {
    let Some(token) = token.as_ref().filter(|t| usable(t)) else {
        return false;
    };
    let Some(given) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    bool::from(given.as_bytes().ct_eq(token.expose().as_bytes()))
}

async fn app_op(
    State(s): State<Arc<ServerState>>,
    Path((app, op)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !bearer_ok(&headers, &s.api_token) {
        return (StatusCode::UNAUTHORIZED, "unauthorized\n").into_response();
    }
    // An app with several destinations is one controller per destination.
    let targets: Vec<&Arc<Controller>> = s.apps.iter().filter(|a| a.spec.name == app).collect();
    if targets.is_empty() {
        return (StatusCode::NOT_FOUND, "no such app\n").into_response();
    }
    if !matches!(op.as_str(), "sync" | "suspend" | "resume") {
        return (StatusCode::NOT_FOUND, "no such operation\n").into_response();
    }
    for c in targets {
        match op.as_str() {
            "sync" => c.trigger(true),
            "suspend" => c.set_suspended(true),
            _ => {
                c.set_suspended(false);
                c.trigger(false);
            }
        }
    }
    (StatusCode::ACCEPTED, format!("{op} accepted\n")).into_response()
}

/// HMAC-SHA256 of `body` with `secret`, hex.
pub fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; an empty result never matches.
    let Ok(mut mac) = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Does this webhook request carry a valid signature (or token)?
pub fn webhook_authentic(kind: &str, headers: &HeaderMap, body: &[u8], secret: &Secret) -> bool {
    if !usable(secret) {
        return false;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let expected = hmac_hex(secret.expose().as_bytes(), body);
    let given = match kind {
        "github" => header("x-hub-signature-256").and_then(|v| v.strip_prefix("sha256=")),
        // Gitea signs in X-Gitea-Signature; Forgejo in X-Forgejo-Signature
        // and, for Gitea's receivers, the same in X-Gitea-Signature. Each
        // kind checks its own header when present: a bad one is not
        // rescued by the other.
        "gitea" => header("x-gitea-signature").or(header("x-forgejo-signature")),
        "forgejo" => header("x-forgejo-signature").or(header("x-gitea-signature")),
        "gitlab" => {
            return header("x-gitlab-token")
                .is_some_and(|t| bool::from(t.as_bytes().ct_eq(secret.expose().as_bytes())));
        }
        _ => None,
    };
    given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(expected.as_bytes())))
}

async fn webhook(
    State(s): State<Arc<ServerState>>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(secret) = &s.webhook_secret else {
        return (StatusCode::NOT_FOUND, "webhooks are not configured\n").into_response();
    };
    if !webhook_authentic(&kind, &headers, &body, secret) {
        return (StatusCode::UNAUTHORIZED, "bad signature\n").into_response();
    }
    // A push anywhere in the repo: every app from it re-fetches now.
    for a in &s.apps {
        a.trigger(false);
    }
    (StatusCode::ACCEPTED, "sync triggered\n").into_response()
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `app="…",destination="…"`: every series names its app instance (one app
/// may run several destinations; without the label their series collide).
fn instance(a: &AppStatus) -> String {
    format!(
        "app=\"{}\",destination=\"{}\"",
        label(&a.app),
        label(a.destination.as_deref().unwrap_or(""))
    )
}

/// The Prometheus text exposition of every app's status.
pub fn render_metrics(apps: &[AppStatus]) -> String {
    let mut out = String::new();
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        &mut out,
        "berth_app_in_sync",
        "gauge",
        "1 when every host runs what the repo declares.",
    );
    for a in apps {
        let _ = writeln!(
            out,
            "berth_app_in_sync{{{}}} {}",
            instance(a),
            u8::from(a.in_sync && a.observed)
        );
    }
    family(
        &mut out,
        "berth_drift_units",
        "gauge",
        "Units that differ from the repo.",
    );
    for a in apps {
        let mut counts: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
        for d in &a.drift {
            *counts.entry((&d.host, &d.role, &d.reason)).or_default() += 1;
        }
        for ((host, role, reason), n) in counts {
            let _ = writeln!(
                out,
                "berth_drift_units{{{},host=\"{}\",role=\"{}\",reason=\"{}\"}} {n}",
                instance(a),
                label(host),
                label(role),
                label(reason)
            );
        }
    }
    family(
        &mut out,
        "berth_reconcile_total",
        "counter",
        "Reconcile cycles by result.",
    );
    for a in apps {
        for (result, n) in &a.reconciles {
            let _ = writeln!(
                out,
                "berth_reconcile_total{{{},result=\"{}\"}} {n}",
                instance(a),
                label(result)
            );
        }
    }
    family(
        &mut out,
        "berth_reconcile_duration_seconds",
        "histogram",
        "Reconcile cycle duration.",
    );
    for a in apps {
        let i = instance(a);
        for (b, n) in BUCKETS.iter().zip(a.durations.buckets) {
            let _ = writeln!(
                out,
                "berth_reconcile_duration_seconds_bucket{{{i},le=\"{b}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "berth_reconcile_duration_seconds_bucket{{{i},le=\"+Inf\"}} {}\n\
             berth_reconcile_duration_seconds_sum{{{i}}} {}\n\
             berth_reconcile_duration_seconds_count{{{i}}} {}",
            a.durations.count, a.durations.sum, a.durations.count
        );
    }
    family(
        &mut out,
        "berth_host_up",
        "gauge",
        "1 when the host answered the last observation.",
    );
    for a in apps {
        for (host, up) in &a.hosts {
            let _ = writeln!(
                out,
                "berth_host_up{{{},host=\"{}\"}} {}",
                instance(a),
                label(host),
                u8::from(*up)
            );
        }
    }
    family(
        &mut out,
        "berth_source_info",
        "gauge",
        "The revision last fetched.",
    );
    for a in apps {
        if let Some(r) = &a.revision {
            let _ = writeln!(
                out,
                "berth_source_info{{{},revision=\"{}\"}} 1",
                instance(a),
                label(r)
            );
        }
    }
    family(
        &mut out,
        "berth_source_verified",
        "gauge",
        "With --verify: 1 when the newest revision's signature verified, 0 when it was refused.",
    );
    for a in apps {
        if let Some(v) = a.source_verified {
            let _ = writeln!(
                out,
                "berth_source_verified{{{}}} {}",
                instance(a),
                u8::from(v)
            );
        }
    }
    family(
        &mut out,
        "berth_source_signer_info",
        "gauge",
        "The key that signed the revision in use.",
    );
    for a in apps {
        if let Some(s) = &a.signature {
            let _ = writeln!(
                out,
                "berth_source_signer_info{{{},fingerprint=\"{}\",signer=\"{}\"}} 1",
                instance(a),
                label(&s.fingerprint),
                label(&s.signer)
            );
        }
    }
    for (name, help, value) in [
        (
            "berth_last_apply_timestamp_seconds",
            "When berth last changed the fleet.",
            (|a: &AppStatus| a.last_apply_unix) as fn(&AppStatus) -> Option<u64>,
        ),
        (
            "berth_last_success_timestamp_seconds",
            "When a reconcile cycle last completed without error.",
            |a: &AppStatus| a.last_success_unix,
        ),
    ] {
        family(&mut out, name, "gauge", help);
        for a in apps {
            if let Some(t) = value(a) {
                let _ = writeln!(out, "{name}{{{}}} {t}", instance(a));
            }
        }
    }
    out
}

async fn metrics(State(s): State<Arc<ServerState>>) -> Response {
    let all: Vec<AppStatus> = s.apps.iter().map(|a| a.snapshot()).collect();
    (
        [("content-type", "text/plain; version=0.0.4")],
        render_metrics(&all),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_signature_is_checked_in_constant_time_against_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let secret = Secret::new("s3cret");
        let body = br#"{"ref":"refs/heads/main"}"#;
        let mut h = HeaderMap::new();
        h.insert(
            "x-hub-signature-256",
            format!("sha256={}", hmac_hex(b"s3cret", body))
                .parse()
                .unwrap(),
        );
        assert!(webhook_authentic("github", &h, body, &secret));
        assert!(!webhook_authentic("github", &h, b"tampered", &secret));
        let mut forged = HeaderMap::new();
        forged.insert("x-hub-signature-256", "sha256=00".parse().unwrap());
        assert!(!webhook_authentic("github", &forged, body, &secret));
        assert!(!webhook_authentic(
            "github",
            &HeaderMap::new(),
            body,
            &secret
        ));
        let mut gl = HeaderMap::new();
        gl.insert("x-gitlab-token", "s3cret".parse().unwrap());
        assert!(webhook_authentic("gitlab", &gl, body, &secret));
    }

    #[test]
    fn an_empty_secret_never_authenticates() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        for empty in ["", " ", "\n\t "] {
            let secret = Secret::new(empty);
            // What a forger sends for an empty key: the empty token, the HMAC
            // under the empty (or that whitespace) key.
            let mut gl = HeaderMap::new();
            gl.insert("x-gitlab-token", empty.trim().parse().unwrap());
            assert!(!webhook_authentic("gitlab", &gl, body, &secret));
            for key in [empty.as_bytes(), b""] {
                let sig = hmac_hex(key, body);
                let mut gh = HeaderMap::new();
                gh.insert(
                    "x-hub-signature-256",
                    format!("sha256={sig}").parse().unwrap(),
                );
                assert!(!webhook_authentic("github", &gh, body, &secret));
                let mut gt = HeaderMap::new();
                gt.insert("x-gitea-signature", sig.parse().unwrap());
                assert!(!webhook_authentic("gitea", &gt, body, &secret));
            }
            // A header value holds no newline; spaces and tabs it can.
            let mut auth = HeaderMap::new();
            auth.insert(
                "authorization",
                axum::http::HeaderValue::from_str(&format!("Bearer {}", empty.replace('\n', "")))
                    .unwrap(),
            );
            assert!(!bearer_ok(&auth, &Some(secret)));
        }
        // The same requests under a real secret do authenticate.
        let secret = Secret::new("s3cret");
        let mut auth = HeaderMap::new();
        auth.insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(bearer_ok(&auth, &Some(secret.clone())));
        let mut gl = HeaderMap::new();
        gl.insert("x-gitlab-token", "s3cret".parse().unwrap());
        assert!(webhook_authentic("gitlab", &gl, body, &secret));
    }

    #[test]
    fn metrics_render_in_prometheus_text_format() {
        let st = AppStatus {
            app: "demo".into(),
            observed: true,
            in_sync: false,
            drift: vec![crate::controller::Drift {
                host: "10.0.0.1".into(),
                role: "web".into(),
                container: "demo-web-v1".into(),
                action: "start".into(),
                reason: "state".into(),
            }],
            durations: [0.2, 3.0].into_iter().fold(
                Default::default(),
                |mut h: crate::controller::Histogram, v| {
                    h.observe(v);
                    h
                },
            ),
            ..Default::default()
        };
        let text = render_metrics(&[st]);
        assert!(text.contains("berth_app_in_sync{app=\"demo\",destination=\"\"} 0"));
        assert!(text.contains("berth_drift_units{app=\"demo\",destination=\"\",host=\"10.0.0.1\",role=\"web\",reason=\"state\"} 1"));
        assert!(text.contains(
            "berth_reconcile_duration_seconds_bucket{app=\"demo\",destination=\"\",le=\"0.25\"} 1"
        ));
        assert!(
            text.contains(
                "berth_reconcile_duration_seconds_count{app=\"demo\",destination=\"\"} 2"
            )
        );
    }

    #[test]
    fn the_duration_histogram_stays_cumulative() {
        let mut st = AppStatus {
            app: "demo".into(),
            ..Default::default()
        };
        for i in 0..2500 {
            st.durations.observe(if i % 2 == 0 { 0.07 } else { 200.0 });
        }
        let text = render_metrics(&[st]);
        for line in [
            "berth_reconcile_duration_seconds_bucket{app=\"demo\",destination=\"\",le=\"0.05\"} 0",
            "berth_reconcile_duration_seconds_bucket{app=\"demo\",destination=\"\",le=\"0.1\"} 1250",
            "berth_reconcile_duration_seconds_bucket{app=\"demo\",destination=\"\",le=\"120\"} 1250",
            "berth_reconcile_duration_seconds_bucket{app=\"demo\",destination=\"\",le=\"+Inf\"} 2500",
            "berth_reconcile_duration_seconds_count{app=\"demo\",destination=\"\"} 2500",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn destinations_of_one_app_are_distinct_series() {
        let instance = |dest: &str| AppStatus {
            app: "shop".into(),
            destination: Some(dest.into()),
            observed: true,
            hosts: [("10.0.0.1".to_string(), true)].into(),
            revision: Some("abc".into()),
            reconciles: [("in_sync".to_string(), 1)].into(),
            last_apply_unix: Some(1),
            last_success_unix: Some(2),
            durations: {
                let mut h = crate::controller::Histogram::default();
                h.observe(0.1);
                h
            },
            ..Default::default()
        };
        let text = render_metrics(&[instance("staging"), instance("production")]);
        let samples: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.rsplit_once(' ').map(|(k, _)| k).unwrap_or(l))
            .collect();
        let unique: std::collections::BTreeSet<&str> = samples.iter().copied().collect();
        assert_eq!(unique.len(), samples.len(), "duplicate series in:\n{text}");
        assert!(text.contains(
            "berth_last_success_timestamp_seconds{app=\"shop\",destination=\"production\"} 2"
        ));
    }
}
