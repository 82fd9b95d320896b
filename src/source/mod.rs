//! `source`: where the desired configuration comes from — a Git repository
//! (fetched with the `git` command over `file://`, `ssh://` — host keys
//! checked by the caller's `GIT_SSH_COMMAND` — or `https://` with a token
//! passed through git's environment, never its arguments) following a branch,
//! the highest tag matching a pattern, or a pinned commit; or a local
//! directory (development). A fetch that fails (unreachable, deleted ref)
//! leaves the last good checkout in place: the fleet keeps its last applied
//! state. A force-pushed branch is followed.

pub mod index;

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::secrets::Secret;

#[derive(Clone, Debug)]
pub enum Source {
    /// A working directory used as is (no revision: `local`).
    Dir(PathBuf),
    /// A Git repository, checked out into `checkout`.
    Git {
        url: String,
        reference: GitRef,
        checkout: PathBuf,
        /// For `https://`: sent as `Authorization: Basic` (`x-access-token`).
        token: Option<Secret>,
    },
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
}

#[derive(Debug, thiserror::Error)]
#[error("source {what}: {message}")]
pub struct SourceError {
    pub what: String,
    pub message: String,
}

fn git(dir: Option<&Path>, token: Option<&Secret>, args: &[&str]) -> Result<String, SourceError> {
    use base64::Engine;
    let mut cmd = Command::new("git");
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    if let Some(t) = token {
        // Through the environment: a token on the command line shows in `ps`.
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("x-access-token:{}", t.expose()));
        cmd.env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.extraHeader")
            .env(
                "GIT_CONFIG_VALUE_0",
                format!("Authorization: Basic {basic}"),
            );
    }
    let out = cmd
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| SourceError {
            what: format!("git {}", args.first().copied().unwrap_or("")),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(SourceError {
            what: format!("git {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
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
                token,
                ..
            } => Source::Git {
                url: url.clone(),
                reference: reference.clone(),
                checkout,
                token: token.clone(),
            },
        }
    }

    /// Bring the checkout to the reference and say which commit it is.
    pub fn fetch(&self) -> Result<Revision, SourceError> {
        let (url, reference, checkout, token) = match self {
            Source::Dir(d) => {
                return Ok(Revision {
                    id: "local".into(),
                    dir: d.clone(),
                });
            }
            Source::Git {
                url,
                reference,
                checkout,
                token,
            } => (url, reference, checkout, token),
        };
        let t = token.as_ref();
        if !checkout.join(".git").exists() {
            if let Some(parent) = checkout.parent() {
                std::fs::create_dir_all(parent).map_err(|e| SourceError {
                    what: format!("create {}", parent.display()),
                    message: e.to_string(),
                })?;
            }
            let dest = checkout.to_string_lossy().into_owned();
            git(None, t, &["clone", "--quiet", "--no-checkout", url, &dest])?;
        }
        let target = match reference {
            GitRef::Branch(branch) => {
                let refspec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
                git(
                    Some(checkout),
                    t,
                    &["fetch", "--quiet", "--prune", "origin", &refspec],
                )?;
                format!("refs/remotes/origin/{branch}")
            }
            GitRef::Tag(pattern) => {
                git(
                    Some(checkout),
                    t,
                    &[
                        "fetch",
                        "--quiet",
                        "--prune",
                        "--prune-tags",
                        "--force",
                        "--tags",
                        "origin",
                    ],
                )?;
                let tags = git(
                    Some(checkout),
                    t,
                    &["tag", "--list", pattern, "--sort=-version:refname"],
                )?;
                let Some(tag) = tags.lines().next() else {
                    return Err(SourceError {
                        what: format!("tags matching {pattern:?}"),
                        message: "none found".into(),
                    });
                };
                format!("refs/tags/{tag}")
            }
            GitRef::Commit(sha) => {
                git(Some(checkout), t, &["fetch", "--quiet", "origin", sha])?;
                sha.clone()
            }
        };
        git(
            Some(checkout),
            t,
            &["checkout", "--quiet", "--force", "--detach", &target],
        )?;
        let id = git(Some(checkout), t, &["rev-parse", "HEAD"])?;
        Ok(Revision {
            id,
            dir: checkout.clone(),
        })
    }
}
