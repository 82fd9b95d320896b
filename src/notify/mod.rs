//! `notify`: tells people and forges what happened. Reads the controllers'
//! [`Notice`]s (`controller::events`) and delivers them to the operator's
//! providers: a generic webhook (JSON, `X-Berth-Signature:
//! sha256=<HMAC-SHA256 of the body>`), a Slack-compatible incoming webhook
//! (`{"text": …}`), and commit statuses on the deployed commit for GitHub,
//! GitLab and Gitea/Forgejo (`rollout_started` → pending (GitLab: running),
//! `deployed` → success, `rollout_failed` → failure (GitLab: failed),
//! `revision_refused` → error (GitLab: failed)), each linking to the status
//! page when `--external-url` gives its public address.
//!
//! The APIs, as documented (checked with the docs search, December 2026):
//! - GitHub "Create a commit status": `POST /repos/{owner}/{repo}/statuses/{sha}`,
//!   body `state` (error, failure, pending, success), `target_url`,
//!   `description`, `context` (docs.github.com REST "commit statuses", via
//!   the OpenAPI description's `ReposCreateCommitStatusRequest`); headers
//!   `Accept: application/vnd.github+json`, `X-GitHub-Api-Version:
//!   2022-11-28`, `Authorization: Bearer` (docs.github.com "Getting started
//!   with the REST API"). Descriptions are kept to 140 characters.
//! - GitLab "Set the pipeline status of a commit": `POST
//!   /api/v4/projects/{id or URL-encoded path}/statuses/{sha}`, `state`
//!   (pending, running, success, failed, canceled), `name` (alias
//!   `context`), `target_url`, `description`; `PRIVATE-TOKEN` header.
//! - Gitea/Forgejo: `POST /api/v1/repos/{owner}/{repo}/statuses/{sha}`,
//!   `CreateStatusOption` {`state` (pending, success, error, failure,
//!   warning), `target_url`, `description`, `context`};
//!   `Authorization: token …` (docs.gitea.com "API Usage").
//! - Slack incoming webhooks: `POST` of `{"text": …}` as
//!   `application/json` (docs.slack.dev "Incoming webhooks"); `&`, `<`, `>`
//!   escaped so text from a commit cannot mention `@channel` or link.
//!
//! Security: the repository is untrusted, so nothing here comes from it.
//! Providers, their endpoints and their secret files are the operator's
//! (`--notifications-file`, [`config`]), secrets read once at start (empty
//! refused); a commit can only cause notices about itself, sent where the
//! operator said. Redirects are not followed (a receiver cannot bounce a
//! token elsewhere). Secrets are [`Secret`](crate::secret::Secret)s; logs,
//! metrics and errors name the provider, the event and the HTTP status,
//! never a URL, a header or a body (reqwest's errors are stripped of the URL).
//!
//! Delivery never blocks a cycle: [`Notifier::dispatch`] only `try_send`s
//! into each provider's bounded queue (full: dropped, counted); one task per
//! provider sends in order (a pending status before its outcome), each
//! request with a timeout, retrying timeouts, connection errors, 429 and
//! 5xx with exponential backoff (honouring a `Retry-After` up to 30 s) and
//! giving up at once on any other answer. A dead or slow receiver only
//! delays its own queue. Counted as
//! `berth_notifications_total{provider,event,result}` (sent, failed, dropped).
//!
//! HTTP client: `reqwest` (0.12, rustls with ring, webpki and system roots):
//! maintained, async on the runtime berth already runs, built on the hyper
//! already in the tree, and TLS without OpenSSL; hyper-util's bare client
//! would need the TLS connector, timeouts and redirects written by hand.

pub mod config;
pub mod providers;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};

use crate::controller::events::Notice;

pub use config::{Provider, Settings};

/// What became of one notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Sent,
    Failed,
    Dropped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Failed => "failed",
            Outcome::Dropped => "dropped",
        }
    }
}

/// `berth_notifications_total`'s counts: (provider, event, outcome) → n.
#[derive(Debug, Default)]
pub struct Stats {
    counts: Mutex<BTreeMap<(String, &'static str, Outcome), u64>>,
}

impl Stats {
    pub(crate) fn add(&self, provider: &str, event: &'static str, outcome: Outcome) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *c.entry((provider.to_string(), event, outcome)).or_default() += 1;
    }

    /// Every count so far, ordered.
    pub fn counts(&self) -> Vec<(String, &'static str, &'static str, u64)> {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.iter()
            .map(|((p, e, o), n)| (p.clone(), *e, o.as_str(), *n))
            .collect()
    }

    /// The count of one series (0 when never counted).
    pub fn count(&self, provider: &str, event: &str, outcome: Outcome) -> u64 {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.iter()
            .filter(|((p, e, o), _)| p == provider && *e == event && *o == outcome)
            .map(|(_, n)| *n)
            .sum()
    }
}

struct Job {
    event: &'static str,
    request: providers::Request,
}

struct Lane {
    provider: Provider,
    tx: mpsc::Sender<Job>,
}

/// The providers of one `berth run`, each with its queue and sender task.
pub struct Notifier {
    lanes: Vec<Lane>,
    external_url: Option<String>,
    stats: Arc<Stats>,
}

impl Notifier {
    /// Start one sender task per provider (on the current Tokio runtime).
    pub fn start(settings: &Settings, external_url: Option<String>) -> anyhow::Result<Notifier> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {}", e.without_url()))?;
        let stats = Arc::new(Stats::default());
        let mut lanes = Vec::new();
        for p in &settings.providers {
            let (tx, rx) = mpsc::channel(settings.queue);
            tokio::spawn(send_loop(
                p.name.clone(),
                rx,
                client.clone(),
                Retry {
                    attempts: settings.attempts,
                    backoff: settings.backoff,
                },
                stats.clone(),
            ));
            lanes.push(Lane {
                provider: p.clone(),
                tx,
            });
        }
        Ok(Notifier {
            lanes,
            external_url,
            stats,
        })
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Queue `n` for every provider that wants it; never waits.
    pub fn dispatch(&self, n: &Notice) {
        let event = n.event.as_str();
        for lane in &self.lanes {
            if !lane.provider.wants(&n.app, event) {
                continue;
            }
            let Some(request) = providers::request(&lane.provider, n, self.external_url.as_deref())
            else {
                continue;
            };
            if lane.tx.try_send(Job { event, request }).is_err() {
                tracing::warn!(provider = %lane.provider.name, event, "notification queue full: dropped");
                self.stats.add(&lane.provider.name, event, Outcome::Dropped);
            }
        }
    }

    /// Dispatch every notice from `rx` until the channel closes or `stop`
    /// turns true.
    pub async fn run(
        self,
        mut rx: broadcast::Receiver<Notice>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                got = rx.recv() => match got {
                    Ok(n) => self.dispatch(&n),
                    Err(broadcast::error::RecvError::Lagged(k)) => {
                        tracing::warn!(lost = k, "notifications fell behind the controllers: notices lost");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = stop.changed() => {
                    if *stop.borrow() {
                        return;
                    }
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Retry {
    attempts: u32,
    backoff: Duration,
}

/// The longest wait between two attempts (a `Retry-After` included).
const MAX_WAIT: Duration = Duration::from_secs(30);

async fn send_loop(
    provider: String,
    mut rx: mpsc::Receiver<Job>,
    client: reqwest::Client,
    retry: Retry,
    stats: Arc<Stats>,
) {
    while let Some(job) = rx.recv().await {
        let outcome = deliver(&client, &job.request, retry, &provider, job.event).await;
        stats.add(&provider, job.event, outcome);
    }
}

/// Send one request, retrying what a retry can mend.
async fn deliver(
    client: &reqwest::Client,
    req: &providers::Request,
    retry: Retry,
    provider: &str,
    event: &str,
) -> Outcome {
    let mut wait = retry.backoff;
    for attempt in 1..=retry.attempts.max(1) {
        let mut b = client.post(req.url.expose()).body(req.body.clone());
        for (name, value) in &req.headers {
            b = b.header(*name, value.expose());
        }
        let next = match b.send().await {
            Ok(resp) if resp.status().is_success() => {
                tracing::debug!(
                    provider,
                    event,
                    status = resp.status().as_u16(),
                    "notification sent"
                );
                return Outcome::Sent;
            }
            Ok(resp) => {
                let status = resp.status();
                if status.as_u16() != 429 && !status.is_server_error() {
                    tracing::warn!(
                        provider,
                        event,
                        status = status.as_u16(),
                        "notification refused; not retried"
                    );
                    return Outcome::Failed;
                }
                tracing::warn!(
                    provider,
                    event,
                    status = status.as_u16(),
                    attempt,
                    "notification failed"
                );
                resp.headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs)
            }
            Err(e) => {
                // Without the URL: it may be the credential (Slack).
                tracing::warn!(provider, event, attempt, error = %e.without_url(), "notification failed");
                None
            }
        };
        if attempt < retry.attempts {
            tokio::time::sleep(next.unwrap_or(wait).min(MAX_WAIT)).await;
            wait = (wait * 2).min(MAX_WAIT);
        }
    }
    Outcome::Failed
}

#[cfg(test)]
mod tests;
