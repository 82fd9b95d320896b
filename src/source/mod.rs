//! `source`: where the desired configuration comes from — a Git branch
//! (fetched with the `git` command over `file://` or `ssh://`, host keys
//! checked by the caller's `GIT_SSH_COMMAND`) or a local directory
//! (development). A fetch that fails leaves the last good checkout in place:
//! the fleet keeps its last applied state.

pub mod index;

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Clone, Debug)]
pub enum Source {
    /// A working directory used as is (no revision: `local`).
    Dir(PathBuf),
    /// A branch of a Git repository, checked out into `checkout`.
    Git {
        url: String,
        branch: String,
        checkout: PathBuf,
    },
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

fn git(dir: Option<&Path>, args: &[&str]) -> Result<String, SourceError> {
    let mut cmd = Command::new("git");
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
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
    /// Bring the checkout to the branch's head and say which commit it is.
    /// Force-pushed branches are followed (the checkout is reset, not merged).
    pub fn fetch(&self) -> Result<Revision, SourceError> {
        match self {
            Source::Dir(d) => Ok(Revision {
                id: "local".into(),
                dir: d.clone(),
            }),
            Source::Git {
                url,
                branch,
                checkout,
            } => {
                if !checkout.join(".git").exists() {
                    if let Some(parent) = checkout.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| SourceError {
                            what: format!("create {}", parent.display()),
                            message: e.to_string(),
                        })?;
                    }
                    let dest = checkout.to_string_lossy().into_owned();
                    git(None, &["clone", "--quiet", "--no-checkout", url, &dest])?;
                }
                let refspec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
                git(
                    Some(checkout),
                    &["fetch", "--quiet", "--prune", "origin", &refspec],
                )?;
                let target = format!("refs/remotes/origin/{branch}");
                git(
                    Some(checkout),
                    &["checkout", "--quiet", "--force", "--detach", &target],
                )?;
                let id = git(Some(checkout), &["rev-parse", "HEAD"])?;
                Ok(Revision {
                    id,
                    dir: checkout.clone(),
                })
            }
        }
    }
}
