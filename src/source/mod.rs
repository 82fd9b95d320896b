//! `source`: where the desired configuration comes from — a Git repository
//! (fetched with `git2` over `file://`, `ssh://` — a key file, and the host
//! key verified against a known_hosts file — or `https://` with a token)
//! following a branch, the highest tag matching a pattern, or a pinned
//! commit; or a local directory (development). A fetch that fails (unreachable, deleted ref)
//! leaves the last good checkout in place: the fleet keeps its last applied
//! state. A force-pushed branch is followed. With a [`verify::Trust`], a
//! revision whose signature does not verify is not checked out at all (the
//! same: the last verified checkout stays).

pub mod index;
pub mod verify;

use std::path::PathBuf;
use std::sync::Arc;

use crate::secret::Secret;

#[derive(Clone, Debug)]
pub enum Source {
    /// A working directory used as is (no revision: `local`).
    Dir(PathBuf),
    /// A Git repository, checked out into `checkout`.
    Git {
        url: String,
        reference: GitRef,
        checkout: PathBuf,
        auth: GitAuth,
        /// Signatures required before a revision is checked out.
        trust: Option<Arc<verify::Trust>>,
    },
}

/// Credentials and host verification for fetching.
#[derive(Clone, Debug, Default)]
pub struct GitAuth {
    /// Private key for `ssh://` (the user comes from the URL, else `git`).
    pub ssh_key: Option<PathBuf>,
    /// known_hosts to verify `ssh://` host keys against (required for ssh).
    pub known_hosts: Option<PathBuf>,
    /// Token for `https://` (as `x-access-token`).
    pub token: Option<Secret>,
}

/// What to follow in a repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GitRef {
    Branch(String),
    /// The highest tag (version order) matching a glob, e.g. `v*`.
    Tag(String),
    /// A fixed commit.
    Commit(String),
}

/// A fetched state of the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revision {
    /// The commit (or `local` for a directory).
    pub id: String,
    /// The project root to read the Kamal config from.
    pub dir: PathBuf,
    /// The signature that made it trusted (`None`: no verification asked).
    pub verified: Option<verify::Verified>,
}

#[derive(Debug, thiserror::Error)]
#[error("source {what}: {message}")]
pub struct SourceError {
    pub what: String,
    pub message: String,
    /// Set when the fetched revision was refused by verification.
    pub refused: Option<verify::VerifyError>,
}

fn fail(what: impl Into<String>) -> impl FnOnce(git2::Error) -> SourceError {
    let what = what.into();
    move |e| SourceError {
        what,
        // libgit2 replaces the certificate callback's message with its own.
        message: if e.class() == git2::ErrorClass::Ssh && e.message().contains("hostkey") {
            format!(
                "{} (the server's host key is not in the known_hosts file)",
                e.message()
            )
        } else {
            e.message().to_string()
        },
        refused: None,
    }
}

/// Is a key listed for `host` (and `port`) in a known_hosts file? `matches`
/// gets each listed key blob of that host. Hashed entries (`|1|…`) are not
/// supported: list hosts in clear.
fn known_host_by(
    known_hosts: &str,
    host: &str,
    port: u16,
    matches: impl Fn(&[u8]) -> bool,
) -> bool {
    use base64::Engine;
    let name = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    known_hosts.lines().any(|line| {
        let mut parts = line.split_whitespace();
        let (Some(hosts), Some(_kind), Some(blob)) = (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        hosts.split(',').any(|h| h == name)
            && base64::engine::general_purpose::STANDARD
                .decode(blob)
                .is_ok_and(|b| matches(&b))
    })
}

/// Is the raw host key `key` listed for `host`?
pub fn known_host(known_hosts: &str, host: &str, port: u16, key: &[u8]) -> bool {
    known_host_by(known_hosts, host, port, |b| b == key)
}

/// Is a key whose SHA-256 is `sha256` listed for `host`?
pub fn known_host_hash(known_hosts: &str, host: &str, port: u16, sha256: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    known_host_by(known_hosts, host, port, |b| {
        Sha256::digest(b).as_slice() == sha256
    })
}

/// `a < b` in version order: digit runs compare as numbers (`v1.10 > v1.9`).
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<Result<u64, String>> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut digits = false;
        for c in s.chars() {
            if c.is_ascii_digit() != digits && !cur.is_empty() {
                out.push(if digits {
                    cur.parse().map_err(|_| cur.clone())
                } else {
                    Err(cur.clone())
                });
                cur.clear();
            }
            digits = c.is_ascii_digit();
            cur.push(c);
        }
        if !cur.is_empty() {
            out.push(if digits {
                cur.parse().map_err(|_| cur.clone())
            } else {
                Err(cur)
            });
        }
        out
    }
    parts(a).cmp(&parts(b))
}

impl GitAuth {
    fn callbacks(&self) -> git2::RemoteCallbacks<'_> {
        let mut cb = git2::RemoteCallbacks::new();
        cb.credentials(move |_url, user, allowed| {
            if allowed.contains(git2::CredentialType::SSH_KEY)
                && let Some(key) = &self.ssh_key
            {
                return git2::Cred::ssh_key(user.unwrap_or("git"), None, key, None);
            }
            if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT)
                && let Some(t) = &self.token
            {
                return git2::Cred::userpass_plaintext("x-access-token", t.expose());
            }
            Err(git2::Error::from_str(
                "no credentials configured for this repository",
            ))
        });
        cb.certificate_check(move |cert, host| {
            let Some(hostkey) = cert.as_hostkey() else {
                // TLS: libgit2 verifies it against the system's CAs.
                return Ok(git2::CertificateCheckStatus::CertificatePassthrough);
            };
            let known = self
                .known_hosts
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default();
            let (name, port) = match host.rsplit_once(':') {
                Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => {
                    (h, p.parse().unwrap_or(22))
                }
                _ => (host, 22),
            };
            let name = name.trim_matches(['[', ']']);
            // The raw key when libssh2 gives it, else its SHA-256.
            let ok = match (hostkey.hostkey(), hostkey.hash_sha256()) {
                (Some(key), _) => known_host(&known, name, port, key),
                (None, Some(hash)) => known_host_hash(&known, name, port, hash),
                (None, None) => false,
            };
            if ok {
                Ok(git2::CertificateCheckStatus::CertificateOk)
            } else {
                Err(git2::Error::from_str(&format!(
                    "host key of {host} is not in the known_hosts file (strict host key checking)"
                )))
            }
        });
        cb
    }
}

impl Source {
    /// The same repository and reference, checked out elsewhere (one
    /// checkout per app instance, so cycles never share a work tree).
    pub fn with_checkout(&self, checkout: PathBuf) -> Source {
        match self {
            Source::Dir(d) => Source::Dir(d.clone()),
            Source::Git {
                url,
                reference,
                auth,
                trust,
                ..
            } => Source::Git {
                url: url.clone(),
                reference: reference.clone(),
                checkout,
                auth: auth.clone(),
                trust: trust.clone(),
            },
        }
    }

    /// The same repository pinned to `commit` (a rollback); `None` for a
    /// directory, which has no revisions.
    pub fn pinned_to(&self, commit: &str) -> Option<Source> {
        match self {
            Source::Dir(_) => None,
            Source::Git {
                url,
                checkout,
                auth,
                trust,
                ..
            } => Some(Source::Git {
                url: url.clone(),
                reference: GitRef::Commit(commit.to_string()),
                checkout: checkout.clone(),
                auth: auth.clone(),
                trust: trust.clone(),
            }),
        }
    }

    /// Bring the checkout to the reference and say which commit it is.
    pub fn fetch(&self) -> Result<Revision, SourceError> {
        let (url, reference, checkout, auth, trust) = match self {
            Source::Dir(d) => {
                return Ok(Revision {
                    id: "local".into(),
                    dir: d.clone(),
                    verified: None,
                });
            }
            Source::Git {
                url,
                reference,
                checkout,
                auth,
                trust,
            } => (url, reference, checkout, auth, trust),
        };
        std::fs::create_dir_all(checkout).map_err(|e| SourceError {
            what: format!("create {}", checkout.display()),
            message: e.to_string(),
            refused: None,
        })?;
        let repo = match git2::Repository::open(checkout) {
            Ok(r) => r,
            Err(_) => git2::Repository::init(checkout).map_err(fail("init the checkout"))?,
        };
        let mut remote = repo
            .remote_anonymous(url)
            .map_err(fail(format!("remote {url}")))?;
        // What the remote has: a deleted ref is an error, not a stale checkout.
        let advertised: Vec<String> = {
            let conn = remote
                .connect_auth(git2::Direction::Fetch, Some(auth.callbacks()), None)
                .map_err(fail(format!("connect to {url}")))?;
            conn.list()
                .map_err(fail("list remote refs"))?
                .iter()
                .map(|h| h.name().to_string())
                .collect()
        };
        let refspecs: Vec<String> = match reference {
            GitRef::Branch(b) => {
                let name = format!("refs/heads/{b}");
                if !advertised.contains(&name) {
                    return Err(SourceError {
                        what: format!("branch {b}"),
                        message: format!("{url} has no branch {b} (deleted?)"),
                        refused: None,
                    });
                }
                vec![format!("+{name}:refs/remotes/origin/{b}")]
            }
            GitRef::Tag(_) => vec!["+refs/tags/*:refs/tags/*".into()],
            GitRef::Commit(_) => vec![
                "+refs/heads/*:refs/remotes/origin/*".into(),
                "+refs/tags/*:refs/tags/*".into(),
            ],
        };
        let mut fo = git2::FetchOptions::new();
        fo.remote_callbacks(auth.callbacks());
        fo.download_tags(git2::AutotagOption::None);
        remote
            .fetch(&refspecs, Some(&mut fo), None)
            .map_err(fail(format!("fetch {url}")))?;
        let target = match reference {
            GitRef::Branch(b) => format!("refs/remotes/origin/{b}"),
            GitRef::Tag(pattern) => {
                let names = repo.tag_names(Some(pattern)).map_err(fail("list tags"))?;
                let mut tags: Vec<&str> = names.iter().flatten().collect();
                tags.sort_by(|a, b| version_cmp(b, a));
                let Some(tag) = tags.first() else {
                    return Err(SourceError {
                        what: format!("tags matching {pattern:?}"),
                        message: "none found".into(),
                        refused: None,
                    });
                };
                format!("refs/tags/{tag}")
            }
            GitRef::Commit(sha) => sha.clone(),
        };
        let commit = repo
            .revparse_single(&target)
            .and_then(|o| o.peel_to_commit())
            .map_err(fail(format!("resolve {target}")))?;
        // Verified before anything is checked out: a refused revision
        // leaves the last verified checkout (and so the fleet) as it was.
        let verified = match trust {
            None => None,
            Some(trust) => {
                let tag = match reference {
                    GitRef::Tag(_) => repo
                        .refname_to_id(&target)
                        .ok()
                        .map(|id| (target.trim_start_matches("refs/tags/"), id)),
                    _ => None,
                };
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                match trust.check(&repo, commit.id(), tag, now) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        return Err(SourceError {
                            what: "verification".into(),
                            message: e.to_string(),
                            refused: Some(e),
                        });
                    }
                }
            }
        };
        let mut co = git2::build::CheckoutBuilder::new();
        co.force().remove_untracked(true);
        repo.checkout_tree(commit.as_object(), Some(&mut co))
            .map_err(fail("checkout"))?;
        repo.set_head_detached(commit.id())
            .map_err(fail("checkout"))?;
        Ok(Revision {
            id: commit.id().to_string(),
            dir: checkout.clone(),
            verified,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_order_and_known_hosts() {
        assert_eq!(
            version_cmp("v1.10.0", "v1.9.0"),
            std::cmp::Ordering::Greater
        );
        assert_eq!(version_cmp("v2", "v10"), std::cmp::Ordering::Less);
        let kh = "10.0.0.1 ssh-ed25519 AAAA\n[10.0.0.2]:2222,other ssh-ed25519 AQID\n";
        assert!(known_host(kh, "10.0.0.2", 2222, &[1, 2, 3]));
        assert!(!known_host(kh, "10.0.0.2", 22, &[1, 2, 3]));
        assert!(!known_host(kh, "10.0.0.3", 22, &[1, 2, 3]));
    }
}
