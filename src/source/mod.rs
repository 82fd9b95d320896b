//! `source`: where the desired configuration comes from — a Git repository
//! (fetched with `git2` over `file://`, `ssh://` — a key file, and the host
//! key verified by [`known_hosts`] — or `https://` with a token, TLS against
//! the system's CAs and [`trust_ca_file`]'s) following a branch, the highest
//! tag matching a pattern, or a pinned commit; or a local directory
//! (development). Fetches prune, so the checkout's refs are the remote's. A
//! fetch that fails (unreachable, refused credentials, a deleted branch, the
//! followed tag deleted with only older ones left, a pinned commit no ref
//! holds) leaves the last good checkout in place: the fleet keeps its last
//! applied state. A force-pushed branch is followed. With a
//! [`verify::Trust`], a revision whose signature does not verify is not
//! checked out at all (the same: the last verified checkout stays). Also
//! where each app instance's checkout lives ([`instance_checkout`]).

pub mod index;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::known_hosts::{self, HostKey, Verdict};
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
        message: explain(&e),
        refused: None,
    }
}

/// libgit2's message, with what to do about it where libgit2 is terse.
fn explain(e: &git2::Error) -> String {
    let m = e.message();
    match e.class() {
        // libgit2 replaces the certificate callback's message with its own.
        git2::ErrorClass::Ssh if m.contains("hostkey") => {
            format!("{m} (the server's host key is not in the known_hosts file)")
        }
        git2::ErrorClass::Ssl if m.contains("hostname does not match") => {
            format!("{m} (TLS: the server's certificate is for another name)")
        }
        git2::ErrorClass::Ssl if m.contains("certificate is invalid") => format!(
            "{m} (TLS: not signed by a trusted CA, or expired; a private CA: --git-ca-file)"
        ),
        // libgit2 1.9 (openssl.c, verify_server_cert) ends this way when an
        // IP address URL meets a certificate with no IP in subjectAltName.
        git2::ErrorClass::Ssl if m.contains("received early EOF") => format!(
            "{m} (TLS: with an IP address in the URL, the certificate must list it as an \
             IP subjectAltName; or use the host name the certificate names)"
        ),
        _ => m.to_string(),
    }
}

/// `url` without a credential in its user-info (`https://user:token@…`,
/// `https://token@…`): one put in a URL never reaches an error, a log or
/// the API. An `ssh://` user name stays.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let host = &rest[at + 1..];
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None if scheme.starts_with("http") => format!("{scheme}://***@{host}"),
        None => url.to_string(),
    }
}

/// Trust the CA certificates in the PEM `file` for `https://` fetches, in
/// addition to the system's (`git -c http.sslCAInfo`, `GIT_SSL_CAINFO`;
/// OpenSSL's own `SSL_CERT_FILE` replaces the system's instead).
///
/// # Safety
/// libgit2 keeps this in process-global state without synchronisation:
/// call it before any fetch can run (`berth run` does, before its first
/// fetch and before it starts a thread).
pub unsafe fn trust_ca_file(file: &Path) -> Result<(), SourceError> {
    let what = format!("CA file {}", file.display());
    let text = std::fs::read_to_string(file).map_err(|e| SourceError {
        what: what.clone(),
        message: e.to_string(),
        refused: None,
    })?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(SourceError {
            what,
            message: "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
            refused: None,
        });
    }
    // SAFETY: the caller guarantees no fetch runs concurrently.
    unsafe { git2::opts::set_ssl_cert_file(file) }.map_err(fail(what))
}

/// The checkout directory of one app instance under `root`:
/// `instances/<app>` or `instances/<app>.<destination>`, each part with
/// every byte outside `[A-Za-z0-9_-]` written `%XX` (an empty part `%`).
/// Injective: `.` never occurs in an escaped part, so app `a` with
/// destination `b` (`a.b`) and app `a-b` never share a checkout, and no
/// name reaches outside `root`.
pub fn instance_checkout(root: &Path, app: &str, destination: Option<&str>) -> PathBuf {
    fn escape(s: &str) -> String {
        if s.is_empty() {
            return "%".into();
        }
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }
    let name = match destination {
        Some(d) => format!("{}.{}", escape(app), escape(d)),
        None => escape(app),
    };
    root.join("instances").join(name)
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
    /// The callbacks of one connection. libgit2 replaces a refused host
    /// key's reason with its own message: the reason is left in `refusal`.
    fn callbacks<'a>(
        &'a self,
        refusal: &'a std::cell::RefCell<Option<String>>,
    ) -> git2::RemoteCallbacks<'a> {
        let mut cb = git2::RemoteCallbacks::new();
        // libgit2 asks again each time the server refuses what it got (up
        // to its replay limit): the second ask is the refusal.
        let mut asked = 0;
        cb.credentials(move |_url, user, allowed| {
            // ssh:// without a user in the URL: libgit2 first asks for one.
            if allowed == git2::CredentialType::USERNAME {
                return git2::Cred::username(user.unwrap_or("git"));
            }
            asked += 1;
            if asked > 1 {
                return Err(git2::Error::from_str(if self.token.is_some() {
                    "authentication failed: the server refused the token (--git-token-file)"
                } else {
                    "authentication failed: the server refused the SSH key (--git-ssh-key)"
                }));
            }
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
                "authentication required: no credentials configured for this repository \
                 (--git-token-file for https://, --git-ssh-key for ssh://)",
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
            let key = match (hostkey.hostkey(), hostkey.hash_sha256()) {
                (Some(key), _) => HostKey::Raw(key),
                (None, Some(hash)) => HostKey::Sha256(hash),
                (None, None) => {
                    return Err(git2::Error::from_str(&format!(
                        "host key of {host}: libssh2 gave neither the key nor its SHA-256"
                    )));
                }
            };
            let reason = match known_hosts::check(&known, name, port, key) {
                Verdict::Known => {
                    return Ok(git2::CertificateCheckStatus::CertificateOk);
                }
                Verdict::Revoked => {
                    format!("the host key of {host} is marked @revoked in the known_hosts file")
                }
                Verdict::Unknown => format!(
                    "the host key of {host} is not in the known_hosts file (strict host key checking)"
                ),
            };
            *refusal.borrow_mut() = Some(reason.clone());
            Err(git2::Error::from_str(&reason))
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
        let shown = redact(url);
        let refusal = std::cell::RefCell::new(None);
        // A host key's refusal in its own words, not libgit2's.
        let failed = |what: String| {
            let refusal = &refusal;
            move |e: git2::Error| {
                let mut err = fail(what)(e);
                if let Some(reason) = refusal.borrow_mut().take() {
                    err.message = reason;
                }
                err
            }
        };
        let mut remote = repo
            .remote_anonymous(url)
            .map_err(fail(format!("remote {shown}")))?;
        // What the remote has: a deleted ref is an error, not a stale checkout.
        let advertised: Vec<String> = {
            let conn = remote
                .connect_auth(git2::Direction::Fetch, Some(auth.callbacks(&refusal)), None)
                .map_err(failed(format!("connect to {shown}")))?;
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
                        message: format!(
                            "{shown} has no branch {b} (deleted?): the last fetched revision stays"
                        ),
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
        fo.remote_callbacks(auth.callbacks(&refusal));
        fo.download_tags(git2::AutotagOption::None);
        // The local refs mirror the remote's: a deleted tag or branch is
        // gone here too, never followed from a stale copy.
        fo.prune(git2::FetchPrune::On);
        remote
            .fetch(&refspecs, Some(&mut fo), None)
            .map_err(failed(format!("fetch {shown}")))?;
        let target = match reference {
            GitRef::Branch(b) => format!("refs/remotes/origin/{b}"),
            GitRef::Tag(pattern) => highest_tag(&repo, pattern, &shown)?,
            GitRef::Commit(sha) => sha.clone(),
        };
        let commit = repo
            .revparse_single(&target)
            .and_then(|o| o.peel_to_commit())
            .map_err(fail(format!("resolve {target}")))?;
        if let GitRef::Commit(sha) = reference
            && !on_a_ref(&repo, commit.id())
        {
            return Err(SourceError {
                what: format!("commit {sha}"),
                message: format!(
                    "is on no branch or tag of {shown} any more (force-pushed away, or its \
                     branch or tag deleted): the last fetched revision stays"
                ),
                refused: None,
            });
        }
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
        if let GitRef::Tag(_) = reference {
            // Remembered beyond the tag itself, which a prune may remove.
            repo.reference_symbolic(FOLLOWED_TAG, &target, true, "berth: followed tag")
                .map_err(fail("record the followed tag"))?;
        }
        Ok(Revision {
            id: commit.id().to_string(),
            dir: checkout.clone(),
            verified,
        })
    }
}

/// The tag whose revision is checked out (a symbolic ref to it, kept when
/// the tag itself is deleted).
const FOLLOWED_TAG: &str = "refs/berth/followed-tag";

/// The highest tag matching `pattern` (version order), as a ref name. The
/// tag in use deleted with only older ones left is an error, not a
/// rollback: deleting a release tag is no deploy of the one before.
fn highest_tag(repo: &git2::Repository, pattern: &str, url: &str) -> Result<String, SourceError> {
    let names = repo.tag_names(Some(pattern)).map_err(fail("list tags"))?;
    let mut tags: Vec<&str> = names.iter().flatten().collect();
    tags.sort_by(|a, b| version_cmp(b, a));
    let followed = repo.find_reference(FOLLOWED_TAG).ok().and_then(|r| {
        r.symbolic_target()
            .map(|t| t.trim_start_matches("refs/tags/").to_string())
    });
    // Gone from the remote (the refs were pruned to its), not merely outside
    // a pattern changed since.
    let deleted = |t: &String| {
        !tags.contains(&t.as_str()) && repo.find_reference(&format!("refs/tags/{t}")).is_err()
    };
    if let Some(prev) = followed.filter(deleted) {
        let newer = tags
            .first()
            .filter(|t| version_cmp(t, &prev) == std::cmp::Ordering::Greater);
        if newer.is_none() {
            let left = match tags.first() {
                Some(t) => format!("the highest left, {t}, is older"),
                None => format!("no tag matches {pattern:?} any more"),
            };
            return Err(SourceError {
                what: format!("tag {prev}"),
                message: format!(
                    "{url} has no tag {prev} any more (deleted?), the one in use, and {left}: \
                     the last fetched revision stays; berth does not roll back on a deleted \
                     tag (push a newer tag matching {pattern:?}, or {prev} again)"
                ),
                refused: None,
            });
        }
    }
    match tags.first() {
        Some(tag) => Ok(format!("refs/tags/{tag}")),
        None => Err(SourceError {
            what: format!("tags matching {pattern:?}"),
            message: format!("none found in {url}"),
            refused: None,
        }),
    }
}

/// Is `id` a fetched branch's or tag's commit, or an ancestor of one?
fn on_a_ref(repo: &git2::Repository, id: git2::Oid) -> bool {
    let (Ok(refs), Ok(mut walk)) = (repo.references(), repo.revwalk()) else {
        return false;
    };
    let tips: Vec<git2::Oid> = refs
        .flatten()
        .filter(|r| {
            r.name().is_some_and(|n| {
                n.starts_with("refs/remotes/origin/") || n.starts_with("refs/tags/")
            })
        })
        .filter_map(|r| r.peel_to_commit().ok().map(|c| c.id()))
        .collect();
    if tips.contains(&id) {
        return true;
    }
    // One walk from every tip (not a merge-base per ref).
    for tip in tips {
        if walk.push(tip).is_err() {
            return false;
        }
    }
    walk.flatten().any(|c| c == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_order() {
        assert_eq!(
            version_cmp("v1.10.0", "v1.9.0"),
            std::cmp::Ordering::Greater
        );
        assert_eq!(version_cmp("v2", "v10"), std::cmp::Ordering::Less);
    }

    #[test]
    fn instance_checkouts_never_collide() {
        let root = Path::new("/c");
        let dir = |app, dest| instance_checkout(root, app, dest);
        // The collision of the old `<app>-<dest>` layout.
        assert_ne!(dir("a", Some("b")), dir("a-b", None));
        assert_eq!(dir("a", Some("b")), Path::new("/c/instances/a.b"));
        assert_eq!(dir("a-b", None), Path::new("/c/instances/a-b"));
        // Nothing a destination holds leaves `root`, or looks like another.
        assert_eq!(
            dir("a", Some("../x")),
            Path::new("/c/instances/a.%2E%2E%2Fx")
        );
        assert_ne!(dir("a", Some("")), dir("a", None));
        assert_ne!(dir("a", Some("b.c")), dir("a.b", Some("c")));
        assert_ne!(dir("a", Some("%2E")), dir("a", Some(".")));
        // Injective over a grid of tricky names.
        let names = [
            "a", "a-b", "b", "a.b", "b.c", "", "%", "%25", ".", "..", "a/b", "A",
        ];
        let mut seen = std::collections::BTreeMap::new();
        for app in names {
            for dest in names.iter().map(|d| Some(*d)).chain([None]) {
                let p = dir(app, dest);
                assert!(
                    p.starts_with("/c/instances/") && p.components().count() == 4,
                    "{p:?}"
                );
                if let Some(other) = seen.insert(p.clone(), (app, dest)) {
                    panic!("{p:?} for both {other:?} and {:?}", (app, dest));
                }
            }
        }
    }

    #[test]
    fn credentials_are_redacted_from_urls() {
        assert_eq!(
            redact("https://x-access-token:s3cret@git.example/o/r.git"),
            "https://x-access-token:***@git.example/o/r.git"
        );
        assert_eq!(
            redact("https://s3cret@git.example/o/r.git"),
            "https://***@git.example/o/r.git"
        );
        assert_eq!(redact("ssh://git@host/r"), "ssh://git@host/r");
        assert_eq!(
            redact("https://git.example/a@b/r.git"),
            "https://git.example/a@b/r.git"
        );
        assert_eq!(redact("/srv/repo"), "/srv/repo");
    }
}
