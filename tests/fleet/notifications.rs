//! `berth run --notifications-file` against a real fleet: a revision whose
//! rollout fails sets a pending then a failure commit status (Gitea's API)
//! and sends a signed webhook, a good revision then sets success; a
//! receiver that never answers delays none of it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::controller::{Berth, push_version, serves, wait, workspace};
use crate::support::{Fleet, metric};

#[derive(Clone, Debug)]
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// An HTTP/1.1 server on 127.0.0.1 recording each request, answering 201.
struct Receiver {
    port: u16,
    log: Arc<Mutex<Vec<Request>>>,
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut words = line.split_whitespace();
    let (method, path) = (words.next()?.to_string(), words.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log: Arc<Mutex<Vec<Request>>> = Arc::default();
        let l = log.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                // One request per connection (`Connection: close`).
                if let Some(req) = read_request(&stream) {
                    l.lock().unwrap().push(req);
                    let _ = stream.write_all(
                        b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                    );
                }
            }
        });
        Receiver { port, log }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }

    /// The commit statuses set on `sha`, in order.
    fn states(&self, sha: &str) -> Vec<String> {
        self.requests()
            .iter()
            .filter(|r| r.path.ends_with(&format!("/statuses/{sha}")))
            .map(|r| r.json()["state"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

/// A port that accepts connections and never answers; how many it took.
fn black_hole() -> (u16, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(Mutex::new(0));
    let a = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
            *a.lock().unwrap() += 1;
        }
    });
    (port, accepted)
}

#[test]
fn a_failed_rollout_sets_a_failure_status_and_sends_a_signed_webhook_then_success() {
    let Some(fleet) = Fleet::up(1) else {
        return;
    };
    let (dir, work) = workspace(&fleet);
    let forge = Receiver::start();
    let hook = Receiver::start();
    let (silent, accepted) = black_hole();
    std::fs::write(dir.path().join("gitea-token"), "gitea-token-value\n").unwrap();
    std::fs::write(dir.path().join("hook-key"), "hook-key-value\n").unwrap();
    // Each request may take this long: a path that waited for the silent
    // receiver would be this late.
    let timeout = Duration::from_secs(90);
    let file = dir.path().join("notifications.yml");
    std::fs::write(
        &file,
        format!(
            "timeout: {}s\nattempts: 2\nproviders:\n  gitea:\n    type: gitea\n    url: {}\n    repository: acme/deploy\n    token_file: {}\n  ops:\n    type: webhook\n    url: {}/hooks/berth\n    secret_file: {}\n    events: [rollout_failed, deployed]\n  silent:\n    type: webhook\n    url: http://127.0.0.1:{silent}/\n    secret_file: {}\n",
            timeout.as_secs(),
            forge.base(),
            dir.path().join("gitea-token").display(),
            hook.base(),
            dir.path().join("hook-key").display(),
            dir.path().join("hook-key").display(),
        ),
    )
    .unwrap();
    let v1 = push_version(&work, &fleet, "v1");
    let started = Instant::now();
    let berth = Berth::start(
        &fleet,
        dir.path(),
        &[
            "--interval",
            "1s",
            "--notifications-file",
            file.to_str().unwrap(),
            "--external-url",
            "https://berth.example",
        ],
    );
    wait(Duration::from_secs(30), "v1", || {
        serves(&fleet, "demo v1\n")
    });
    wait(Duration::from_secs(10), "v1's statuses", || {
        forge.states(&v1) == ["pending", "success"]
    });

    // A version that never becomes healthy: pending, then failure.
    let bad = push_version(&work, &fleet, "unhealthy");
    wait(Duration::from_secs(60), "the failure status", || {
        forge.states(&bad).len() >= 2
    });
    assert_eq!(forge.states(&bad), ["pending", "failure"]);
    for r in forge.requests() {
        assert_eq!(r.method, "POST");
        assert!(
            r.path.starts_with("/api/v1/repos/acme/deploy/statuses/"),
            "{}",
            r.path
        );
        assert_eq!(r.header("authorization"), Some("token gitea-token-value"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v = r.json();
        assert_eq!(v["context"], "berth/demo");
        assert_eq!(v["target_url"], "https://berth.example/#demo");
    }
    let failure = forge
        .requests()
        .into_iter()
        .rfind(|r| r.path.ends_with(&bad))
        .unwrap();
    let description = failure.json()["description"].as_str().unwrap().to_string();
    assert!(
        description.starts_with("rollout of unhealthy failed"),
        "{description}"
    );
    assert!(description.chars().count() <= 140);

    // The webhook: signed with the operator's key, naming the commit.
    wait(Duration::from_secs(10), "the failure webhook", || {
        hook.requests()
            .iter()
            .any(|r| r.header("x-berth-event") == Some("rollout_failed"))
    });
    let r = hook
        .requests()
        .into_iter()
        .find(|r| r.header("x-berth-event") == Some("rollout_failed"))
        .unwrap();
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/hooks/berth");
    let expected = format!(
        "sha256={}",
        berth::server::hmac_hex(b"hook-key-value", &r.body)
    );
    assert_eq!(r.header("x-berth-signature"), Some(expected.as_str()));
    let v = r.json();
    assert_eq!(v["app"], "demo");
    assert_eq!(v["revision"], bad);
    assert_eq!(v["version"], "unhealthy");
    assert_eq!(v["event"]["kind"], "rollout_failed");
    // Only the events it asked for.
    assert!(hook.requests().iter().all(|r| matches!(
        r.header("x-berth-event"),
        Some("rollout_failed" | "deployed")
    )));

    // A good revision: pending, then success.
    let v2 = push_version(&work, &fleet, "v2");
    wait(Duration::from_secs(60), "v2", || {
        serves(&fleet, "demo v2\n")
    });
    wait(Duration::from_secs(10), "v2's statuses", || {
        forge.states(&v2) == ["pending", "success"]
    });
    // All of it while the silent receiver held every request it got.
    let elapsed = started.elapsed();
    assert!(
        *accepted.lock().unwrap() >= 1,
        "the silent receiver was never called"
    );
    assert!(
        elapsed < timeout,
        "took {elapsed:?}: something waited for the silent receiver"
    );
    eprintln!("three revisions notified in {elapsed:?} beside a receiver that never answers");

    let count = |labels: &str| {
        metric(
            &berth.metrics(),
            &format!("berth_notifications_total{{{labels}}}"),
        )
        .unwrap_or(0.0)
    };
    wait(Duration::from_secs(10), "the statuses counted", || {
        count("provider=\"gitea\",event=\"deployed\",result=\"sent\"") == 2.0
    });
    assert_eq!(
        count("provider=\"gitea\",event=\"rollout_failed\",result=\"sent\""),
        1.0
    );
    assert_eq!(
        count("provider=\"ops\",event=\"rollout_failed\",result=\"sent\""),
        1.0
    );
    assert_eq!(
        count("provider=\"silent\",event=\"deployed\",result=\"sent\""),
        0.0
    );
    let metrics = berth.metrics();
    let log = std::fs::read_to_string(dir.path().join(format!("berth-{}.log", berth.port)))
        .unwrap_or_default();
    for secret in ["gitea-token-value", "hook-key-value"] {
        assert!(!metrics.contains(secret), "{secret} in the metrics");
        assert!(!log.contains(secret), "{secret} in the log");
    }
    assert_eq!(berth.stop(), Some(0));
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}
