//! What each provider sends for a notice: pure, so every header and body
//! field is tested against the documented API without a network.

use crate::controller::events::{Event, Notice};
use crate::secret::Secret;

use super::config::{Forge, Kind, Provider};

/// One HTTP `POST`, JSON. `url` and header values may be credentials (a
/// Slack URL, a token): held as [`Secret`]s, so a `Debug` never shows them.
#[derive(Debug)]
pub struct Request {
    pub url: Secret,
    pub headers: Vec<(&'static str, Secret)>,
    pub body: Vec<u8>,
}

/// A status description's length: the forges document "a short
/// description" and show about this much; the full error is on the status
/// page and in the webhook.
pub const DESCRIPTION_MAX: usize = 140;

/// `text` cut to `max` characters, an ellipsis marking the cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut s: String = text.chars().take(max - 1).collect();
    s.push('…');
    s
}

/// A full commit id (SHA-1 or SHA-256 repositories): the only thing a
/// commit status can be set on. `local` (`--dir`) and tags are not.
fn commit_id(revision: Option<&str>) -> Option<&str> {
    revision.filter(|r| {
        (r.len() == 40 || r.len() == 64)
            && r.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// `app` or `app (destination)`.
fn instance(n: &Notice) -> String {
    match &n.destination {
        Some(d) => format!("{} ({d})", n.app),
        None => n.app.clone(),
    }
}

/// The status page's address for this notice's app, when berth knows its
/// public address (`--external-url`).
pub fn page_link(external_url: Option<&str>, n: &Notice) -> Option<String> {
    external_url.map(|u| format!("{}/#{}", u.trim_end_matches('/'), n.app))
}

/// One line for people: what happened, to which app, at which revision.
pub fn summary(n: &Notice) -> String {
    let rev = n.revision.as_deref().map(|r| &r[..r.len().min(12)]);
    let at = match (&n.version, rev) {
        (Some(v), Some(r)) => format!(" {v} ({r})"),
        (Some(v), None) => format!(" {v}"),
        (None, Some(r)) => format!(" {r}"),
        (None, None) => String::new(),
    };
    let units = |u: &[crate::controller::Drift]| {
        let names: Vec<String> = u
            .iter()
            .take(5)
            .map(|d| format!("{}@{}", d.container, d.host))
            .collect();
        let more = u.len().saturating_sub(5);
        if more > 0 {
            format!("{} and {more} more", names.join(", "))
        } else {
            names.join(", ")
        }
    };
    let who = instance(n);
    match &n.event {
        Event::RolloutStarted => format!("{who}: rolling out{at}"),
        Event::Deployed => format!("{who}: deployed{at}"),
        Event::RolloutFailed { error } => format!("{who}: rollout of{at} failed: {error}"),
        Event::DriftDetected { units: u } => format!("{who}: drift detected at{at}: {}", units(u)),
        Event::Healed { units: u } => format!("{who}: healed drift at{at}: {}", units(u)),
        Event::FlapLimit {
            host,
            unit,
            container,
            reason,
        } => format!(
            "{who}: {unit} ({container}) on {host} restarts too often, left alone: {reason}"
        ),
        Event::HostDown { host } => format!("{who}: host {host} is down"),
        Event::HostUp { host } => format!("{who}: host {host} is up again"),
        Event::RevisionRefused { reason } => format!("{who}: revision{at} refused: {reason}"),
    }
}

/// Slack treats `&`, `<` and `>` as markup (`<!channel>`, `<url|text>`):
/// escaped, so text from a commit (an error message) cannot ping or link.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The commit status state a forge's API takes for this event; `None`:
/// the event sets no status.
pub fn status_state(forge: Forge, event: &Event) -> Option<&'static str> {
    Some(match (forge, event) {
        // GitLab's `pending` is "queued"; a rollout in progress is `running`.
        (Forge::GitLab, Event::RolloutStarted) => "running",
        (_, Event::RolloutStarted) => "pending",
        (_, Event::Deployed) => "success",
        (Forge::GitLab, Event::RolloutFailed { .. } | Event::RevisionRefused { .. }) => "failed",
        (_, Event::RolloutFailed { .. }) => "failure",
        // Not applied at all: GitHub's and Gitea's `error`.
        (_, Event::RevisionRefused { .. }) => "error",
        _ => return None,
    })
}

fn status_description(n: &Notice) -> String {
    let v = n.version.as_deref().unwrap_or("this revision");
    clip(
        &match &n.event {
            Event::RolloutStarted => format!("berth is rolling out {v}"),
            Event::Deployed => format!("berth deployed {v}"),
            Event::RolloutFailed { error } => format!("rollout of {v} failed: {error}"),
            Event::RevisionRefused { reason } => format!("refused: {reason}"),
            _ => String::new(),
        },
        DESCRIPTION_MAX,
    )
}

/// The request `provider` sends for `n`; `None` when it sends nothing (an
/// event without a commit status, a revision that is not a commit).
pub fn request(provider: &Provider, n: &Notice, external_url: Option<&str>) -> Option<Request> {
    let link = page_link(external_url, n);
    let json = ("content-type", Secret::new("application/json"));
    match &provider.kind {
        Kind::Webhook { url, key } => {
            let mut v = serde_json::to_value(n).ok()?;
            if let serde_json::Value::Object(m) = &mut v {
                m.insert("schema".into(), "berth.notification/v1".into());
                m.insert("summary".into(), summary(n).into());
                m.insert("status_page".into(), link.into());
            }
            let body = serde_json::to_vec(&v).ok()?;
            let signature = format!(
                "sha256={}",
                crate::secret::hmac_hex(key.expose().as_bytes(), &body)
            );
            Some(Request {
                url: url.clone(),
                headers: vec![
                    json,
                    ("x-berth-event", Secret::new(n.event.as_str())),
                    ("x-berth-signature", Secret::new(signature)),
                ],
                body,
            })
        }
        Kind::Slack { url } => {
            let mut text = slack_escape(&summary(n));
            if let Some(l) = &link {
                text.push_str(&format!(" <{l}|status>"));
            }
            Some(Request {
                url: url.clone(),
                headers: vec![json],
                body: serde_json::to_vec(&serde_json::json!({ "text": text })).ok()?,
            })
        }
        Kind::Status {
            forge,
            base,
            repository,
            token,
            context,
        } => {
            let state = status_state(*forge, &n.event)?;
            let sha = commit_id(n.revision.as_deref())?;
            let context = context.clone().unwrap_or_else(|| match &n.destination {
                Some(d) => format!("berth/{}/{d}", n.app),
                None => format!("berth/{}", n.app),
            });
            let description = status_description(n);
            let mut body = serde_json::json!({
                "state": state,
                "description": description,
            });
            if let Some(l) = link {
                body["target_url"] = l.into();
            }
            let (url, auth) = match forge {
                Forge::GitHub => {
                    body["context"] = context.into();
                    (
                        format!("{base}/repos/{repository}/statuses/{sha}"),
                        ("authorization", format!("Bearer {}", token.expose())),
                    )
                }
                Forge::GitLab => {
                    body["name"] = context.into();
                    // A project path is one URL-encoded segment.
                    let project = repository.replace('/', "%2F");
                    (
                        format!("{base}/api/v4/projects/{project}/statuses/{sha}"),
                        ("private-token", token.expose().to_string()),
                    )
                }
                Forge::Gitea => {
                    body["context"] = context.into();
                    (
                        format!("{base}/api/v1/repos/{repository}/statuses/{sha}"),
                        ("authorization", format!("token {}", token.expose())),
                    )
                }
            };
            let mut headers = vec![json, (auth.0, Secret::new(auth.1))];
            if *forge == Forge::GitHub {
                headers.push(("accept", Secret::new("application/vnd.github+json")));
                headers.push(("x-github-api-version", Secret::new("2022-11-28")));
            } else {
                headers.push(("accept", Secret::new("application/json")));
            }
            Some(Request {
                url: Secret::new(url),
                headers,
                body: serde_json::to_vec(&body).ok()?,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn notice(event: Event) -> Notice {
        Notice {
            app: "shop".into(),
            destination: Some("production".into()),
            revision: Some("0123456789abcdef0123456789abcdef01234567".into()),
            version: Some("v2".into()),
            at_unix: 1_700_000_000,
            event,
        }
    }

    #[test]
    fn states_follow_each_forges_documented_set() {
        let failed = Event::RolloutFailed { error: "x".into() };
        let refused = Event::RevisionRefused { reason: "x".into() };
        for forge in [Forge::GitHub, Forge::Gitea] {
            assert_eq!(status_state(forge, &Event::RolloutStarted), Some("pending"));
            assert_eq!(status_state(forge, &Event::Deployed), Some("success"));
            assert_eq!(status_state(forge, &failed), Some("failure"));
            assert_eq!(status_state(forge, &refused), Some("error"));
        }
        assert_eq!(
            status_state(Forge::GitLab, &Event::RolloutStarted),
            Some("running")
        );
        assert_eq!(
            status_state(Forge::GitLab, &Event::Deployed),
            Some("success")
        );
        assert_eq!(status_state(Forge::GitLab, &failed), Some("failed"));
        assert_eq!(status_state(Forge::GitLab, &refused), Some("failed"));
        let host = Event::HostDown { host: "h".into() };
        assert_eq!(status_state(Forge::GitHub, &host), None);
    }

    #[test]
    fn no_status_for_a_revision_that_is_not_a_commit() {
        let p = Provider {
            name: "gh".into(),
            kind: Kind::Status {
                forge: Forge::GitHub,
                base: "https://api.github.com".into(),
                repository: "a/b".into(),
                token: Secret::new("t"),
                context: None,
            },
            events: None,
            apps: None,
        };
        let mut n = notice(Event::Deployed);
        assert!(request(&p, &n, None).is_some());
        n.revision = Some("local".into());
        assert!(request(&p, &n, None).is_none());
        n.revision = Some("../../x/0123456789abcdef0123456789abcdef0".into());
        assert!(request(&p, &n, None).is_none());
    }

    #[test]
    fn descriptions_are_clipped_to_140_characters() {
        let n = notice(Event::RolloutFailed {
            error: "é".repeat(500),
        });
        let d = status_description(&n);
        assert_eq!(d.chars().count(), DESCRIPTION_MAX);
        assert!(d.ends_with('…'));
    }

    #[test]
    fn slack_text_cannot_ping_or_link() {
        let n = notice(Event::RevisionRefused {
            reason: "<!channel> <https://evil.example|click>".into(),
        });
        let p = Provider {
            name: "chat".into(),
            kind: Kind::Slack {
                url: Secret::new("https://hooks.slack.example/x"),
            },
            events: None,
            apps: None,
        };
        let r = request(&p, &n, Some("https://berth.example")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let text = v["text"].as_str().unwrap();
        assert!(text.contains("&lt;!channel&gt;"), "{text}");
        assert!(!text.contains("<!channel>"), "{text}");
        assert!(
            text.ends_with(" <https://berth.example/#shop|status>"),
            "{text}"
        );
        // The request's Debug shows no URL (the URL is the credential).
        assert!(!format!("{r:?}").contains("hooks.slack"));
    }
}
