//! Delivery against real HTTP receivers on 127.0.0.1: what each provider
//! sends (method, path, headers, body) as its API documents it, retries,
//! give-ups, and that dead receivers delay nothing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};

use super::config::{Forge, Kind, Provider, Settings};
use super::{Notifier, Outcome};
use crate::controller::events::{Event, Events, Notice};
use crate::secret::Secret;

#[derive(Clone, Debug)]
struct Recorded {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// The `state` of each commit status request.
fn states(reqs: &[Recorded]) -> Vec<String> {
    reqs.iter()
        .map(|r| r.json()["state"].as_str().unwrap().to_string())
        .collect()
}

impl Recorded {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// An HTTP server recording every request; answers with the queued
/// statuses in turn, then `201`.
#[derive(Clone)]
struct Receiver {
    base: String,
    log: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
}

impl Receiver {
    async fn start(script: &[u16]) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let r = Receiver {
            base,
            log: Arc::default(),
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
        };
        let me = r.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let me = me.clone();
                async move {
                    me.log.lock().unwrap().push(Recorded {
                        method,
                        path: uri.path().to_string(),
                        headers,
                        body,
                    });
                    let code = me.script.lock().unwrap().pop_front().unwrap_or(201);
                    let mut resp = axum::response::Response::new(axum::body::Body::from("{}"));
                    *resp.status_mut() = StatusCode::from_u16(code).unwrap();
                    if code == 429 {
                        resp.headers_mut()
                            .insert("retry-after", "0".parse().unwrap());
                    }
                    resp
                }
            },
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        r
    }

    fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    /// Dispatch `events` through `n`; the `expect` requests they caused.
    async fn collect(&self, n: &Notifier, events: Vec<Event>, expect: usize) -> Vec<Recorded> {
        for e in events {
            n.dispatch(&notice(e));
        }
        assert_eq!(self.wait_for(expect, Duration::from_secs(5)).await, expect);
        self.requests()
    }

    /// Poll until `n` requests arrived (or `limit` passes); how many did.
    async fn wait_for(&self, n: usize, limit: Duration) -> usize {
        let end = Instant::now() + limit;
        while self.log.lock().unwrap().len() < n && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.log.lock().unwrap().len()
    }
}

/// A port that accepts connections and never answers them.
async fn black_hole() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    base
}

/// A port nothing listens on (connections are refused).
fn refused() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    base
}

fn settings(providers: Vec<Provider>) -> Settings {
    Settings {
        timeout: Duration::from_secs(2),
        attempts: 4,
        backoff: Duration::from_millis(20),
        queue: 64,
        providers,
    }
}

fn provider(name: &str, kind: Kind) -> Provider {
    Provider {
        name: name.into(),
        kind,
        events: None,
        apps: None,
    }
}

fn webhook(name: &str, base: &str) -> Provider {
    provider(
        name,
        Kind::Webhook {
            url: Secret::new(format!("{base}/hooks/berth")),
            key: Secret::new("hmac-key"),
        },
    )
}

fn status(name: &str, forge: Forge, base: &str, repository: &str) -> Provider {
    provider(
        name,
        Kind::Status {
            forge,
            base: base.into(),
            repository: repository.into(),
            token: Secret::new("forge-token"),
            context: None,
        },
    )
}

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

fn notice(event: Event) -> Notice {
    Notice {
        app: "shop".into(),
        destination: Some("production".into()),
        revision: Some(SHA.into()),
        version: Some("v2".into()),
        at_unix: 1_700_000_000,
        event,
    }
}

fn failed() -> Event {
    Event::RolloutFailed {
        error: "apply of 0123456: web-1 never became healthy".into(),
    }
}

#[tokio::test]
async fn the_generic_webhook_is_signed_json() {
    let rx = Receiver::start(&[]).await;
    let n = Notifier::start(
        &settings(vec![webhook("ops", &rx.base)]),
        Some("https://berth.example/".into()),
    )
    .unwrap();
    n.dispatch(&notice(failed()));
    assert_eq!(rx.wait_for(1, Duration::from_secs(5)).await, 1);
    let r = &rx.requests()[0];
    assert_eq!(r.method, Method::POST);
    assert_eq!(r.path, "/hooks/berth");
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.header("x-berth-event"), "rollout_failed");
    let expected = format!("sha256={}", crate::secret::hmac_hex(b"hmac-key", &r.body));
    assert_eq!(r.header("x-berth-signature"), expected);
    let v = r.json();
    assert_eq!(v["schema"], "berth.notification/v1");
    assert_eq!(v["app"], "shop");
    assert_eq!(v["destination"], "production");
    assert_eq!(v["revision"], SHA);
    assert_eq!(v["version"], "v2");
    assert_eq!(v["event"]["kind"], "rollout_failed");
    assert!(
        v["event"]["error"]
            .as_str()
            .unwrap()
            .contains("never became healthy")
    );
    assert_eq!(v["status_page"], "https://berth.example/#shop");
    assert!(
        v["summary"]
            .as_str()
            .unwrap()
            .starts_with("shop (production): rollout of v2")
    );
    assert!(!String::from_utf8_lossy(&r.body).contains("hmac-key"));
}

#[tokio::test]
async fn slack_gets_a_text_message() {
    let rx = Receiver::start(&[200]).await;
    let p = provider(
        "chat",
        Kind::Slack {
            url: Secret::new(format!("{}/services/T0/B0/secret", rx.base)),
        },
    );
    let n = Notifier::start(&settings(vec![p]), Some("https://berth.example".into())).unwrap();
    n.dispatch(&notice(Event::Deployed));
    assert_eq!(rx.wait_for(1, Duration::from_secs(5)).await, 1);
    let r = &rx.requests()[0];
    assert_eq!(r.method, Method::POST);
    assert_eq!(r.path, "/services/T0/B0/secret");
    assert_eq!(r.header("content-type"), "application/json");
    let v = r.json();
    assert_eq!(
        v["text"],
        format!(
            "shop (production): deployed v2 ({}) <https://berth.example/#shop|status>",
            &SHA[..12]
        )
    );
    assert_eq!(v.as_object().unwrap().len(), 1);
}

#[tokio::test]
async fn github_statuses_follow_the_rest_api() {
    let rx = Receiver::start(&[]).await;
    let n = Notifier::start(
        &settings(vec![status("gh", Forge::GitHub, &rx.base, "acme/deploy")]),
        Some("https://berth.example".into()),
    )
    .unwrap();
    let events = vec![
        Event::RolloutStarted,
        failed(),
        Event::RevisionRefused {
            reason: "unsigned".into(),
        },
        Event::Deployed,
        // No status for this one.
        Event::HostDown { host: "h".into() },
    ];
    let reqs = rx.collect(&n, events, 4).await;
    assert_eq!(states(&reqs), ["pending", "failure", "error", "success"]);
    for r in &reqs {
        assert_eq!(r.method, Method::POST);
        assert_eq!(r.path, format!("/repos/acme/deploy/statuses/{SHA}"));
        assert_eq!(r.header("authorization"), "Bearer forge-token");
        assert_eq!(r.header("accept"), "application/vnd.github+json");
        assert_eq!(r.header("x-github-api-version"), "2022-11-28");
        assert_eq!(r.header("content-type"), "application/json");
        let v = r.json();
        assert_eq!(v["context"], "berth/shop/production");
        assert_eq!(v["target_url"], "https://berth.example/#shop");
        assert!(v["description"].as_str().unwrap().chars().count() <= 140);
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["context", "description", "state", "target_url"]);
    }
    assert_eq!(reqs[3].json()["description"], "berth deployed v2");
}

#[tokio::test]
async fn gitlab_statuses_use_the_encoded_project_path_and_a_private_token() {
    let rx = Receiver::start(&[]).await;
    let n = Notifier::start(
        &settings(vec![status(
            "gl",
            Forge::GitLab,
            &rx.base,
            "group/sub/deploy",
        )]),
        None,
    )
    .unwrap();
    let events = vec![Event::RolloutStarted, failed(), Event::Deployed];
    let reqs = rx.collect(&n, events, 3).await;
    assert_eq!(states(&reqs), ["running", "failed", "success"]);
    for r in &reqs {
        assert_eq!(r.method, Method::POST);
        // axum shows the path as sent: the project is one encoded segment.
        assert_eq!(
            r.path,
            format!("/api/v4/projects/group%2Fsub%2Fdeploy/statuses/{SHA}")
        );
        assert_eq!(r.header("private-token"), "forge-token");
        assert_eq!(r.header("authorization"), "");
        let v = r.json();
        assert_eq!(v["name"], "berth/shop/production");
        // No status page address: no link.
        assert!(v.get("target_url").is_none());
    }
}

#[tokio::test]
async fn gitea_statuses_use_a_token_header() {
    let rx = Receiver::start(&[]).await;
    let mut p = status("tea", Forge::Gitea, &rx.base, "acme/deploy");
    if let Kind::Status { context, .. } = &mut p.kind {
        *context = Some("deploy/production".into());
    }
    let n = Notifier::start(&settings(vec![p]), Some("https://berth.example".into())).unwrap();
    let refused = Event::RevisionRefused {
        reason: "bad config".into(),
    };
    let reqs = rx
        .collect(&n, vec![Event::RolloutStarted, refused], 2)
        .await;
    assert_eq!(states(&reqs), ["pending", "error"]);
    for r in &reqs {
        assert_eq!(r.method, Method::POST);
        assert_eq!(r.path, format!("/api/v1/repos/acme/deploy/statuses/{SHA}"));
        assert_eq!(r.header("authorization"), "token forge-token");
        assert_eq!(r.json()["context"], "deploy/production");
        assert_eq!(r.json()["target_url"], "https://berth.example/#shop");
    }
    assert_eq!(reqs[1].json()["description"], "refused: bad config");
}

#[tokio::test]
async fn server_errors_and_429_are_retried_other_4xx_given_up() {
    let flaky = Receiver::start(&[503, 429, 500]).await;
    let gone = Receiver::start(&[404, 201]).await;
    let n = Notifier::start(
        &settings(vec![
            webhook("flaky", &flaky.base),
            webhook("gone", &gone.base),
        ]),
        None,
    )
    .unwrap();
    let stats = n.stats();
    n.dispatch(&notice(Event::Deployed));
    assert_eq!(flaky.wait_for(4, Duration::from_secs(5)).await, 4);
    let end = Instant::now() + Duration::from_secs(5);
    while (stats.count("flaky", "deployed", Outcome::Sent) == 0
        || stats.count("gone", "deployed", Outcome::Failed) == 0)
        && Instant::now() < end
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(stats.count("flaky", "deployed", Outcome::Sent), 1);
    // The 404 was final: one request, counted failed (its sender is done
    // with the job once it is counted).
    assert_eq!(stats.count("gone", "deployed", Outcome::Failed), 1);
    assert_eq!(gone.requests().len(), 1);
    // Every attempt carried the same signed body.
    let bodies: Vec<Bytes> = flaky.requests().into_iter().map(|r| r.body).collect();
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_receivers_delay_neither_the_dispatch_nor_other_providers() {
    let timeout = Duration::from_secs(2);
    let good = Receiver::start(&[]).await;
    let mut s = settings(vec![
        webhook("silent", &black_hole().await),
        webhook("refusing", &refused()),
        webhook("good", &good.base),
    ]);
    s.timeout = timeout;
    s.attempts = 2;
    let n = Notifier::start(&s, None).unwrap();
    let stats = n.stats();
    let start = Instant::now();
    for _ in 0..20 {
        n.dispatch(&notice(Event::Deployed));
    }
    let dispatch = start.elapsed();
    // Queuing is all a cycle pays: far below one request's timeout.
    assert!(
        dispatch < timeout / 20,
        "dispatching 20 notices took {dispatch:?}"
    );
    // The good receiver got everything before the silent one's first
    // request even timed out: nothing waited for it.
    assert_eq!(good.wait_for(20, timeout).await, 20);
    let delivered = start.elapsed();
    assert!(
        delivered < timeout,
        "the good receiver waited {delivered:?}"
    );
    // The refusing one is given up on after its attempts, each notice.
    let end = Instant::now() + Duration::from_secs(10);
    while stats.count("refusing", "deployed", Outcome::Failed) < 20 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(stats.count("refusing", "deployed", Outcome::Failed), 20);
    assert_eq!(stats.count("good", "deployed", Outcome::Sent), 20);
    assert_eq!(stats.count("silent", "deployed", Outcome::Sent), 0);
    eprintln!(
        "dispatch of 20 notices: {dispatch:?}; delivered to the good receiver after {delivered:?}"
    );
}

#[tokio::test]
async fn a_full_queue_drops_and_counts() {
    let mut s = settings(vec![webhook("silent", &black_hole().await)]);
    s.queue = 2;
    let n = Notifier::start(&s, None).unwrap();
    let start = Instant::now();
    for _ in 0..10 {
        n.dispatch(&notice(Event::Deployed));
    }
    assert!(start.elapsed() < Duration::from_millis(100));
    // At most one in flight and two queued.
    let dropped = n.stats().count("silent", "deployed", Outcome::Dropped);
    assert!((7..=8).contains(&dropped), "dropped {dropped}");
}

#[tokio::test]
async fn notices_flow_from_the_controllers_channel_filtered_per_provider() {
    let rx = Receiver::start(&[]).await;
    let mut only_failures = webhook("ops", &rx.base);
    only_failures.events = Some(vec!["rollout_failed".into()]);
    let mut other_app = webhook("other", &rx.base);
    other_app.apps = Some(vec!["billing".into()]);
    let n = Notifier::start(&settings(vec![only_failures, other_app]), None).unwrap();
    let events = Events::default();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(n.run(events.subscribe(), stop));
    events.send(notice(Event::Deployed));
    events.send(notice(failed()));
    assert_eq!(rx.wait_for(1, Duration::from_secs(5)).await, 1);
    assert_eq!(rx.requests()[0].header("x-berth-event"), "rollout_failed");
    stop_tx.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(rx.requests().len(), 1);
}
