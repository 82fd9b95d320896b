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
//! - `berth_flapping_units{host,role}` units at their flap limit, left alone
//! - `berth_reconcile_total{result}` counter (`in_sync`, `drifted`, `applied`, `suspended`, `error`)
//! - `berth_reconcile_duration_seconds` histogram
//! - `berth_host_up{host}` 1/0
//! - `berth_source_info{revision}` 1
//! - `berth_source_verified` 1/0 (with `--verify`), `berth_source_signer_info{fingerprint,signer}` 1
//! - `berth_last_apply_timestamp_seconds`, `berth_last_success_timestamp_seconds`
//!
//! And, without `app`: `berth_index_valid` 1/0 (the newest `berth.yml` is in
//! use), `berth_index_apps`, `berth_index_removed_apps`, and (with
//! `--notifications-file`) `berth_notifications_total{provider,event,result}`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use subtle::ConstantTimeEq;

use crate::controller::apps::Apps;
use crate::controller::{AppStatus, Controller, Trigger};
use crate::secret::Secret;

pub mod metrics;
pub mod serve;

pub struct ServerState {
    /// The app instances (the index may add and remove them while berth runs).
    pub apps: Arc<Apps>,
    /// Bearer token for the write API (none: the write API is disabled).
    pub api_token: Option<Secret>,
    /// Shared secret of the webhooks (none: webhooks are disabled).
    pub webhook_secret: Option<Secret>,
    /// Delivery counts of the notifications (none: no notifications file).
    pub notifications: Option<Arc<crate::notify::Stats>>,
}

pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/apps", get(apps))
        .route("/api/v1/apps/{app}/history", get(history))
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
    if s.apps.ready() {
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
    let all: Vec<AppStatus> = s.apps.controllers().iter().map(|a| a.snapshot()).collect();
    axum::Json(serde_json::json!({
        "schema": "berth.apps/v1",
        "apps": all,
        "index": s.apps.index_status(),
    }))
    .into_response()
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
    body: Bytes,
) -> Response {
    if !bearer_ok(&headers, &s.api_token) {
        return (StatusCode::UNAUTHORIZED, "unauthorized\n").into_response();
    }
    // An app with several destinations is one controller per destination.
    let targets: Vec<Arc<Controller>> = s
        .apps
        .controllers()
        .into_iter()
        .filter(|a| a.spec.name == app)
        .collect();
    if targets.is_empty() {
        return (StatusCode::NOT_FOUND, "no such app\n").into_response();
    }
    if !matches!(op.as_str(), "sync" | "suspend" | "resume" | "rollback") {
        return (StatusCode::NOT_FOUND, "no such operation\n").into_response();
    }
    if op == "rollback" {
        return rollback(&s, &app, targets, &body).await;
    }
    // Suspensions are persisted before the answer: they survive a restart.
    let persisted = tokio::task::spawn_blocking(move || {
        for c in targets {
            match op.as_str() {
                "sync" => c.trigger(true),
                "suspend" => c.suspend(true)?,
                _ => {
                    c.suspend(false)?;
                    c.trigger(false);
                }
            }
        }
        Ok::<_, crate::history::HistoryError>(op)
    })
    .await;
    match persisted {
        Ok(Ok(op)) => (StatusCode::ACCEPTED, format!("{op} accepted\n")).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response(),
    }
}

/// `POST /api/v1/apps/{app}/rollback {"revision": "<commit>"}`: apply a
/// revision the history says was deployed, and stop following the ref
/// until a resume (Argo CD turns automated sync off for a rollback alike).
async fn rollback(
    s: &ServerState,
    app: &str,
    targets: Vec<Arc<Controller>>,
    body: &[u8],
) -> Response {
    let Some(history) = s.apps.history().cloned() else {
        return (
            StatusCode::CONFLICT,
            "rollback needs the history (--state-dir)\n",
        )
            .into_response();
    };
    let revision = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("revision")?.as_str().map(str::to_string));
    let Some(revision) = revision else {
        return (
            StatusCode::BAD_REQUEST,
            "expected {\"revision\": \"<commit>\"}\n",
        )
            .into_response();
    };
    let app = app.to_string();
    let done = tokio::task::spawn_blocking(move || {
        let Some(full) = history.deployed_revision(&app, &revision)? else {
            return Ok(None);
        };
        for c in &targets {
            c.roll_back(&full)?;
        }
        Ok::<_, crate::history::HistoryError>(Some(full))
    })
    .await;
    match done {
        Ok(Ok(Some(full))) => (
            StatusCode::ACCEPTED,
            format!("rollback to {full} accepted; the branch is followed again after a resume\n"),
        )
            .into_response(),
        Ok(Ok(None)) => (
            StatusCode::NOT_FOUND,
            "no such deployed revision in the history of this app\n",
        )
            .into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response(),
    }
}

#[derive(serde::Deserialize)]
struct HistoryQuery {
    limit: Option<u32>,
    before: Option<i64>,
    destination: Option<String>,
}

/// `GET /api/v1/apps/{app}/history?limit=&before=&destination=`: cycles
/// newest first (`before`: the last page's smallest id) and drift episodes.
async fn history(
    State(s): State<Arc<ServerState>>,
    Path(app): Path<String>,
    axum::extract::Query(q): axum::extract::Query<HistoryQuery>,
) -> Response {
    let Some(history) = s.apps.history().cloned() else {
        return (StatusCode::NOT_FOUND, "no history kept (--state-dir)\n").into_response();
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let read = tokio::task::spawn_blocking(move || {
        let dest = q.destination.as_deref();
        let cycles = history.cycles(&app, dest, limit, q.before)?;
        let episodes = history.episodes(&app, dest, limit)?;
        Ok::<_, crate::history::HistoryError>(serde_json::json!({
            "schema": "berth.history/v1",
            "app": app,
            "cycles": cycles,
            "episodes": episodes,
        }))
    })
    .await;
    match read {
        Ok(Ok(doc)) => axum::Json(doc).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response(),
    }
}

/// HMAC-SHA256 of `body` with `secret`, hex (webhooks in, notifications out).
pub use crate::secret::hmac_hex;

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
    // A push anywhere in the repo: the index and every app re-fetch now.
    s.apps.trigger_all(Trigger::Webhook);
    (StatusCode::ACCEPTED, "sync triggered\n").into_response()
}

/// The scrape of every app instance, the index, the notifier and the
/// process, in the format the scraper accepts ([`metrics`]).
pub fn scrape(s: &ServerState) -> metrics::Scrape {
    metrics::Scrape {
        apps: s.apps.controllers().iter().map(|a| a.snapshot()).collect(),
        index: s.apps.index_status(),
        notifications: s.notifications.as_ref().map(|stats| {
            stats
                .counts()
                .into_iter()
                .map(|(p, e, r, n)| (p, e.to_string(), r.to_string(), n))
                .collect()
        }),
        process: metrics::Process::current(),
    }
}

async fn metrics(State(s): State<Arc<ServerState>>, headers: HeaderMap) -> Response {
    let accept = headers.get("accept").and_then(|v| v.to_str().ok());
    let (content_type, body) = metrics::render(scrape(&s), metrics::wants_openmetrics(accept));
    ([("content-type", content_type)], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The classic text exposition of `apps` alone.
    fn render_metrics(apps: &[AppStatus]) -> String {
        metrics::render(
            metrics::Scrape {
                apps: apps.to_vec(),
                ..Default::default()
            },
            false,
        )
        .1
    }

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
            "berth_reconcile_duration_seconds_bucket{le=\"0.25\",app=\"demo\",destination=\"\"} 1"
        ));
        assert!(
            text.contains(
                "berth_reconcile_duration_seconds_count{app=\"demo\",destination=\"\"} 2"
            )
        );
    }

    /// prometheus-client writes `le` first; label order carries no meaning.
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
            "berth_reconcile_duration_seconds_bucket{le=\"0.05\",app=\"demo\",destination=\"\"} 0",
            "berth_reconcile_duration_seconds_bucket{le=\"0.1\",app=\"demo\",destination=\"\"} 1250",
            "berth_reconcile_duration_seconds_bucket{le=\"120.0\",app=\"demo\",destination=\"\"} 1250",
            "berth_reconcile_duration_seconds_bucket{le=\"+Inf\",app=\"demo\",destination=\"\"} 2500",
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

    #[test]
    fn notification_counts_render_as_one_counter_family() {
        let stats = crate::notify::Stats::default();
        use crate::notify::Outcome;
        stats.add("ops", "deployed", Outcome::Sent);
        stats.add("ops", "deployed", Outcome::Sent);
        stats.add("gitea", "rollout_failed", Outcome::Failed);
        stats.add("gitea", "rollout_started", Outcome::Dropped);
        let text = metrics::render(
            metrics::Scrape {
                notifications: Some(
                    stats
                        .counts()
                        .into_iter()
                        .map(|(p, e, r, n)| (p, e.to_string(), r.to_string(), n))
                        .collect(),
                ),
                ..Default::default()
            },
            false,
        )
        .1;
        assert!(text.contains(
            "# HELP berth_notifications_total Notifications by provider, event and result (sent, failed, dropped).\n# TYPE berth_notifications_total counter\n"
        ), "{text}");
        for line in [
            "berth_notifications_total{provider=\"ops\",event=\"deployed\",result=\"sent\"} 2",
            "berth_notifications_total{provider=\"gitea\",event=\"rollout_failed\",result=\"failed\"} 1",
            "berth_notifications_total{provider=\"gitea\",event=\"rollout_started\",result=\"dropped\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn openmetrics_is_negotiated_and_both_formats_carry_the_same_samples() {
        assert!(metrics::wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.1"
        )));
        assert!(!metrics::wants_openmetrics(Some("text/plain")));
        assert!(!metrics::wants_openmetrics(Some(
            "application/openmetrics-text;q=0"
        )));
        assert!(!metrics::wants_openmetrics(None));
        let scrape = || metrics::Scrape {
            apps: vec![AppStatus {
                app: "demo".into(),
                reconciles: [("applied".to_string(), 3)].into(),
                ..Default::default()
            }],
            process: metrics::Process::current(),
            ..Default::default()
        };
        let (om_type, om) = metrics::render(scrape(), true);
        let (text_type, text) = metrics::render(scrape(), false);
        assert!(om_type.starts_with("application/openmetrics-text"));
        assert!(text_type.starts_with("text/plain; version=0.0.4"));
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(!text.contains("# EOF"));
        assert!(om.contains("# TYPE berth_reconcile counter\n"), "{om}");
        assert!(
            text.contains("# TYPE berth_reconcile_total counter\n"),
            "{text}"
        );
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .filter(|l| !l.starts_with("process_"))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(samples(&om), samples(&text));
        for line in [
            "berth_reconcile_total{app=\"demo\",destination=\"\",result=\"applied\"} 3",
            &format!(
                "berth_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
            "berth_index_valid 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
        };
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = value("process_start_time_seconds");
        assert!(
            start > now - 3600.0 && start <= now + 1.0,
            "{start} vs {now}"
        );
        assert!(value("process_cpu_seconds_total") >= 0.0);
    }
}
