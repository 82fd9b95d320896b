//! The operator's notifications file (`berth run --notifications-file`, a
//! ConfigMap in the chart): which providers exist, where they send, and the
//! files their secrets are read from — once, at start. Never the
//! repository's: a commit must not choose where an operator secret goes.
//!
//! ```yaml
//! timeout: 10s          # per request (default 10s)
//! attempts: 4           # per notification, 429/5xx/timeouts retried (default 4)
//! backoff: 1s           # first retry's wait, doubled each time, at most 30s (default 1s)
//! queue: 256            # per provider; a full queue drops (default 256)
//! providers:
//!   ops:                              # the name in metrics and logs
//!     type: webhook                   # webhook | slack | github | gitlab | gitea | forgejo
//!     url: https://hooks.example.com/berth   # or url_file: (when the URL is a credential)
//!     secret_file: /etc/berth/notify/ops-hmac   # X-Berth-Signature key (required)
//!     events: [rollout_failed, deployed]        # default: every event
//!     apps: [shop]                              # default: every app
//!   chat:
//!     type: slack
//!     url_file: /etc/berth/notify/slack-url     # the incoming webhook URL is the secret
//!   statuses:
//!     type: github                    # commit statuses on the deployed commit
//!     repository: acme/deploy         # owner/repo (gitlab: project: id or group/path)
//!     url: https://api.github.com     # default for github; gitlab: https://gitlab.com; gitea: required
//!     token_file: /etc/berth/notify/github-token
//!     context: berth                  # default berth/<app>[/<destination>]
//! ```
//!
//! Errors name file:line:col and the key, like `berth.yml`'s; a secret file
//! that cannot be read or is empty is an error naming the file, never its
//! content.

use std::path::Path;
use std::time::Duration;

use crate::config::yaml::{self, Key, Node, Scalar, Value};
use crate::secret::Secret;

/// Every event a provider may ask for (`controller::events::Event::as_str`).
pub const EVENTS: &[&str] = &[
    "rollout_started",
    "deployed",
    "rollout_failed",
    "drift_detected",
    "healed",
    "flap_limit",
    "host_down",
    "host_up",
    "revision_refused",
];

#[derive(Clone, Debug)]
pub struct Settings {
    pub timeout: Duration,
    pub attempts: u32,
    pub backoff: Duration,
    pub queue: usize,
    pub providers: Vec<Provider>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            timeout: Duration::from_secs(10),
            attempts: 4,
            backoff: Duration::from_secs(1),
            queue: 256,
            providers: Vec::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Provider {
    pub name: String,
    pub kind: Kind,
    /// Events it receives (`None`: all).
    pub events: Option<Vec<String>>,
    /// Apps it hears about (`None`: all).
    pub apps: Option<Vec<String>>,
}

/// A forge's commit-status API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forge {
    GitHub,
    GitLab,
    /// Gitea and Forgejo (one API).
    Gitea,
}

#[derive(Clone, Debug)]
pub enum Kind {
    /// JSON body, `X-Berth-Signature: sha256=<HMAC-SHA256 of the body>`.
    Webhook { url: Secret, key: Secret },
    /// A Slack-compatible incoming webhook (`{"text": …}`).
    Slack { url: Secret },
    /// Commit statuses. `base`: the API root (GitHub) or the instance
    /// (GitLab, Gitea); `repository`: `owner/repo`, or GitLab's project id
    /// or path; `context`: the status's name (`None`: per app instance).
    Status {
        forge: Forge,
        base: String,
        repository: String,
        token: Secret,
        context: Option<String>,
    },
}

impl Provider {
    pub fn wants(&self, app: &str, event: &str) -> bool {
        self.events
            .as_ref()
            .is_none_or(|e| e.iter().any(|x| x == event))
            && self
                .apps
                .as_ref()
                .is_none_or(|a| a.iter().any(|x| x == app))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

/// Read and check the operator's notifications file, and every secret file
/// it names.
pub fn load(file: &Path) -> Result<Settings, ConfigError> {
    // The operator's file: regular and capped like any other.
    let text = crate::checkout::Checkout::unconfined()
        .read_text(file)
        .map_err(|e| ConfigError(vec![e.to_string()]))?;
    parse(&text, file, &read_secret_file)
}

/// A secret file's content, trimmed; empty refused (an HMAC under the empty
/// key, or an empty token, is what anyone can produce).
fn read_secret_file(p: &Path) -> Result<Secret, String> {
    let text = crate::checkout::Checkout::unconfined()
        .read_text(p)
        .map_err(|e| e.to_string())?;
    let v = text.trim();
    if v.is_empty() {
        return Err(format!("secret file {} is empty", p.display()));
    }
    Ok(Secret::new(v))
}

fn strings(node: &Node) -> Option<Vec<String>> {
    match &node.value {
        Value::Seq(items) => items.iter().map(Node::as_text).collect(),
        _ => None,
    }
}

/// An `http(s)://host…` URL without spaces or a fragment; `None` otherwise.
fn http_url(s: &str) -> Option<String> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))?;
    let ok = !rest.is_empty()
        && !rest.starts_with('/')
        && !s.contains(|c: char| c.is_whitespace() || c.is_control() || c == '#');
    ok.then(|| s.to_string())
}

pub(crate) fn parse(
    text: &str,
    file: &Path,
    secret: &dyn Fn(&Path) -> Result<Secret, String>,
) -> Result<Settings, ConfigError> {
    let tree = yaml::parse(text, file).map_err(|e| ConfigError(vec![e.to_string()]))?;
    from_tree(&tree, secret)
}

fn from_tree(
    tree: &Node,
    secret: &dyn Fn(&Path) -> Result<Secret, String>,
) -> Result<Settings, ConfigError> {
    let mut errors = Vec::new();
    let mut settings = Settings::default();
    let Value::Map(top) = &tree.value else {
        return Err(ConfigError(vec![format!(
            "{}: should be a hash with `providers:`",
            tree.mark
        )]));
    };
    let duration = |errors: &mut Vec<String>, k: &Key, v: &Node| -> Option<Duration> {
        match v.as_text().and_then(|s| humantime::parse_duration(&s).ok()) {
            Some(d) if !d.is_zero() => Some(d),
            _ => {
                errors.push(format!(
                    "{}: {}: should be a duration (`10s`, `500ms`)",
                    v.mark, k.name
                ));
                None
            }
        }
    };
    let count = |errors: &mut Vec<String>, k: &Key, v: &Node, max: i64| -> Option<i64> {
        match &v.value {
            Value::Scalar(Scalar::Int(n)) if (1..=max).contains(n) => Some(*n),
            _ => {
                errors.push(format!(
                    "{}: {}: should be a whole number from 1 to {max}",
                    v.mark, k.name
                ));
                None
            }
        }
    };
    for (k, v) in top {
        match k.name.as_str() {
            "timeout" => {
                if let Some(d) = duration(&mut errors, k, v) {
                    settings.timeout = d;
                }
            }
            "backoff" => {
                if let Some(d) = duration(&mut errors, k, v) {
                    settings.backoff = d;
                }
            }
            "attempts" => {
                if let Some(n) = count(&mut errors, k, v, 10) {
                    settings.attempts = n as u32;
                }
            }
            "queue" => {
                if let Some(n) = count(&mut errors, k, v, 100_000) {
                    settings.queue = n as usize;
                }
            }
            "providers" => match &v.value {
                Value::Map(entries) => {
                    for (name, spec) in entries {
                        if let Some(p) = provider(name, spec, &mut errors, secret) {
                            settings.providers.push(p);
                        }
                    }
                }
                _ => errors.push(format!(
                    "{}: providers: should be a hash of provider name → settings",
                    v.mark
                )),
            },
            other => errors.push(format!(
                "{}: {other}: unknown key (expected timeout, attempts, backoff, queue, providers)",
                k.mark
            )),
        }
    }
    if errors.is_empty() {
        Ok(settings)
    } else {
        Err(ConfigError(errors))
    }
}

fn provider(
    name: &Key,
    spec: &Node,
    errors: &mut Vec<String>,
    secret: &dyn Fn(&Path) -> Result<Secret, String>,
) -> Option<Provider> {
    let p = format!("providers.{}", name.name);
    let before = errors.len();
    if name.name.is_empty()
        || !name
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        errors.push(format!(
            "{}: {p}: provider names are letters, digits, - and _",
            name.mark
        ));
    }
    let Value::Map(fields) = &spec.value else {
        errors.push(format!("{}: {p}: should be a hash", spec.mark));
        return None;
    };
    let field = |key: &str| fields.iter().find(|(k, _)| k.name == key);
    let allowed: &[&str] = &[
        "type",
        "url",
        "url_file",
        "secret_file",
        "token_file",
        "repository",
        "project",
        "context",
        "events",
        "apps",
    ];
    for (k, _) in fields {
        if !allowed.contains(&k.name.as_str()) {
            errors.push(format!(
                "{}: {p}.{}: unknown key (expected {})",
                k.mark,
                k.name,
                allowed.join(", ")
            ));
        }
    }
    // A plain string field, its node kept for the error's position.
    let text = |errors: &mut Vec<String>, key: &str| -> Option<(String, &Node)> {
        let (_, v) = field(key)?;
        match v.as_text() {
            Some(s) if !s.trim().is_empty() => Some((s, v)),
            _ => {
                errors.push(format!(
                    "{}: {p}.{key}: should be a non-empty string",
                    v.mark
                ));
                None
            }
        }
    };
    let missing = |errors: &mut Vec<String>, what: &str| {
        errors.push(format!("{}: {p}: {what}", spec.mark));
    };
    let secret_at = |errors: &mut Vec<String>, key: &str| -> Option<Secret> {
        let (path, node) = text(errors, key)?;
        match secret(Path::new(&path)) {
            Ok(s) => Some(s),
            Err(e) => {
                errors.push(format!("{}: {p}.{key}: {e}", node.mark));
                None
            }
        }
    };
    let url_at = |errors: &mut Vec<String>, key: &str| -> Option<String> {
        let (s, node) = text(errors, key)?;
        let u = http_url(&s);
        if u.is_none() {
            errors.push(format!(
                "{}: {p}.{key}: should be an http:// or https:// URL",
                node.mark
            ));
        }
        u
    };
    let kind_name = match text(errors, "type") {
        Some((t, _)) => t,
        None => {
            if field("type").is_none() {
                missing(
                    errors,
                    "needs type: (webhook, slack, github, gitlab, gitea or forgejo)",
                );
            }
            return None;
        }
    };
    // Either the URL itself, or a file holding it (when it is a credential).
    let endpoint = |errors: &mut Vec<String>| -> Option<Secret> {
        match (field("url"), field("url_file")) {
            (Some(_), Some((k, _))) => {
                errors.push(format!(
                    "{}: {p}.url_file: give url or url_file, not both",
                    k.mark
                ));
                None
            }
            (Some(_), None) => url_at(errors, "url").map(Secret::new),
            (None, Some((_, node))) => {
                let s = secret_at(errors, "url_file")?;
                if http_url(s.expose()).is_none() {
                    errors.push(format!(
                        "{}: {p}.url_file: the file does not hold an http:// or https:// URL",
                        node.mark
                    ));
                    return None;
                }
                Some(s)
            }
            (None, None) => {
                missing(errors, "needs url: or url_file:");
                None
            }
        }
    };
    let kind = match kind_name.as_str() {
        "webhook" => {
            let url = endpoint(errors);
            if field("secret_file").is_none() {
                missing(errors, "needs secret_file: (the key of X-Berth-Signature)");
            }
            let key = secret_at(errors, "secret_file");
            url.zip(key).map(|(url, key)| Kind::Webhook { url, key })
        }
        "slack" => {
            if field("url").is_some() {
                let (k, _) = field("url")?;
                errors.push(format!(
                    "{}: {p}.url: a Slack webhook URL is a credential: give url_file",
                    k.mark
                ));
                return None;
            }
            endpoint(errors).map(|url| Kind::Slack { url })
        }
        "github" | "gitlab" | "gitea" | "forgejo" => {
            let forge = match kind_name.as_str() {
                "github" => Forge::GitHub,
                "gitlab" => Forge::GitLab,
                _ => Forge::Gitea,
            };
            let base = match (field("url"), forge) {
                (Some(_), _) => url_at(errors, "url"),
                (None, Forge::GitHub) => Some("https://api.github.com".into()),
                (None, Forge::GitLab) => Some("https://gitlab.com".into()),
                (None, Forge::Gitea) => {
                    missing(errors, "needs url: (the Gitea/Forgejo instance)");
                    None
                }
            };
            let repo_key = if forge == Forge::GitLab {
                "project"
            } else {
                "repository"
            };
            let repository = match text(errors, repo_key) {
                Some((r, node)) => {
                    let parts: Vec<&str> = r.split('/').collect();
                    let segment_ok = |s: &&str| {
                        !s.is_empty()
                            && *s != "."
                            && *s != ".."
                            && s.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                    };
                    let ok = match forge {
                        // `owner/repo`.
                        Forge::GitHub | Forge::Gitea => {
                            parts.len() == 2 && parts.iter().all(segment_ok)
                        }
                        // A numeric id, or `group[/subgroup…]/project`.
                        Forge::GitLab => parts.iter().all(segment_ok),
                    };
                    if !ok {
                        errors.push(format!(
                            "{}: {p}.{repo_key}: should be {}",
                            node.mark,
                            if forge == Forge::GitLab {
                                "a project id or its path (group/project)"
                            } else {
                                "owner/repository"
                            }
                        ));
                    }
                    ok.then_some(r)
                }
                None => {
                    if field(repo_key).is_none() {
                        missing(errors, &format!("needs {repo_key}:"));
                    }
                    None
                }
            };
            if field("token_file").is_none() {
                missing(errors, "needs token_file:");
            }
            let token = secret_at(errors, "token_file");
            let context = match field("context") {
                Some(_) => text(errors, "context").map(|(c, _)| Some(c)),
                None => Some(None),
            };
            (|| {
                Some(Kind::Status {
                    forge,
                    base: base?.trim_end_matches('/').to_string(),
                    repository: repository?,
                    token: token?,
                    context: context?,
                })
            })()
        }
        other => {
            let (_, node) = field("type")?;
            errors.push(format!(
                "{}: {p}.type: unknown provider type {other:?} (expected webhook, slack, github, gitlab, gitea, forgejo)",
                node.mark
            ));
            return None;
        }
    };
    let list = |errors: &mut Vec<String>, key: &str| -> Option<Vec<String>> {
        let (_, v) = field(key)?;
        let l = strings(v);
        if l.is_none() {
            errors.push(format!("{}: {p}.{key}: should be a list of names", v.mark));
        }
        l
    };
    let events = list(errors, "events");
    if let (Some(ev), Some((_, node))) = (&events, field("events")) {
        for e in ev {
            if !EVENTS.contains(&e.as_str()) {
                errors.push(format!(
                    "{}: {p}.events: unknown event {e:?} (expected {})",
                    node.mark,
                    EVENTS.join(", ")
                ));
            }
        }
    }
    let apps = list(errors, "apps");
    if errors.len() > before {
        return None;
    }
    Some(Provider {
        name: name.name.clone(),
        kind: kind?,
        events,
        apps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(p: &Path) -> Result<Secret, String> {
        match p.to_str() {
            Some("/s/empty") => Err("secret file /s/empty is empty".into()),
            Some(p) if p == "/s/slack" || p.ends_with("/url") => {
                Ok(Secret::new("https://hooks.slack.example/T/B/x"))
            }
            Some(p) => Ok(Secret::new(format!("value-of-{p}"))),
            None => Err("?".into()),
        }
    }

    fn parse_str(text: &str) -> Result<Settings, ConfigError> {
        parse(text, Path::new("notify.yml"), &secrets)
    }

    #[test]
    fn a_full_file_parses_with_defaults() {
        let s = parse_str(
            "timeout: 2s\nproviders:\n  ops:\n    type: webhook\n    url: http://127.0.0.1:1/x\n    secret_file: /s/k\n    events: [deployed]\n  chat:\n    type: slack\n    url_file: /s/slack\n  gh:\n    type: github\n    repository: acme/deploy\n    token_file: /s/t\n  gl:\n    type: gitlab\n    project: group/sub/proj\n    token_file: /s/t\n  tea:\n    type: forgejo\n    url: https://code.example/\n    repository: acme/deploy\n    token_file: /s/t\n    context: berth/prod\n",
        )
        .unwrap();
        assert_eq!(s.timeout, Duration::from_secs(2));
        assert_eq!(s.attempts, 4);
        assert_eq!(s.providers.len(), 5);
        assert!(s.providers[0].wants("any", "deployed"));
        assert!(!s.providers[0].wants("any", "healed"));
        match &s.providers[2].kind {
            Kind::Status { forge, base, .. } => {
                assert_eq!(*forge, Forge::GitHub);
                assert_eq!(base, "https://api.github.com");
            }
            k => panic!("{k:?}"),
        }
        match &s.providers[4].kind {
            Kind::Status { forge, base, .. } => {
                assert_eq!(*forge, Forge::Gitea);
                assert_eq!(base, "https://code.example");
            }
            k => panic!("{k:?}"),
        }
        // Secrets never print.
        assert!(!format!("{s:?}").contains("value-of"));
        assert!(!format!("{s:?}").contains("hooks.slack"));
    }

    #[test]
    fn errors_name_line_and_key_and_never_a_secret() {
        let e = parse_str(
            "providers:\n  ops:\n    type: webhook\n    url: ftp://x\n    secret_file: /s/empty\n  chat:\n    type: slack\n    url: https://hooks.slack.example/T/B/x\n  gh:\n    type: github\n    repository: ../etc\n    token_file: /s/t\n    events: [deployd]\n  x:\n    type: pager\n  y:\n    type: gitea\n    repository: a/b\n    token_file: /s/t\n    colour: red\nretries: 3\n",
        )
        .unwrap_err()
        .to_string();
        for want in [
            "notify.yml:4:10: providers.ops.url: should be an http:// or https:// URL",
            "notify.yml:5:18: providers.ops.secret_file: secret file /s/empty is empty",
            "notify.yml:8:5: providers.chat.url: a Slack webhook URL is a credential: give url_file",
            "notify.yml:11:17: providers.gh.repository: should be owner/repository",
            "notify.yml:13:13: providers.gh.events: unknown event \"deployd\"",
            "notify.yml:15:11: providers.x.type: unknown provider type \"pager\"",
            "providers.y: needs url: (the Gitea/Forgejo instance)",
            "notify.yml:20:5: providers.y.colour: unknown key",
            "notify.yml:21:1: retries: unknown key",
        ] {
            assert!(e.contains(want), "missing {want:?} in\n{e}");
        }
        assert!(!e.contains("value-of"), "{e}");
    }

    /// The examples people copy: the reference in docs/operations.md and
    /// the chart's production values.
    #[test]
    fn the_documented_examples_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let ops = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
        let start = ops.find("# /etc/berth/notifications.yml\n").unwrap();
        let block = &ops[start..start + ops[start..].find("```").unwrap()];
        let s = parse_str(block).unwrap();
        assert_eq!(s.providers.len(), 5);
        let chart = root.join("charts/berth/examples/production-values.yaml");
        let text = std::fs::read_to_string(&chart).unwrap();
        let tree = yaml::parse(&text, &chart).unwrap();
        let s = from_tree(tree.get("notifications").unwrap(), &secrets).unwrap();
        assert_eq!(s.providers.len(), 2);
    }

    #[test]
    fn a_webhook_needs_its_signing_key() {
        let e = parse_str("providers:\n  ops:\n    type: webhook\n    url: http://x/\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("providers.ops: needs secret_file:"), "{e}");
    }
}
