//! `source` against real bare repositories (`file://`): branches (with a
//! force-push), tag patterns, pinned commits, and failures that keep the last
//! good checkout — a deleted branch, a deleted tag in use, a pinned commit
//! no ref holds any more; and over `ssh://` to a testbed host's real sshd,
//! its host key checked against plain, hashed (`ssh-keygen -H`) and
//! `@revoked` known_hosts lines.

use crate::support;

use std::path::Path;

use berth::source::{GitRef, Source};
use support::git;

fn commit(work: &Path, content: &str) -> String {
    std::fs::write(work.join("version"), content).unwrap();
    git(work, &["add", "-A"]);
    git(work, &["commit", "-qm", content]);
    git(work, &["rev-parse", "HEAD"])
}

/// A bare repository `d/repo.git` and its clone `d/work`: (URL, clone).
fn bare_and_clone(d: &Path) -> (String, std::path::PathBuf) {
    git(d, &["init", "-q", "--bare", "-b", "main", "repo.git"]);
    let url = format!("file://{}", d.join("repo.git").display());
    git(d, &["clone", "-q", &url, "work"]);
    (url, d.join("work"))
}

/// `url` followed at `reference`, checked out into `d/name`.
fn file_source(url: &str, d: &Path, reference: GitRef, name: &str) -> Source {
    Source::Git {
        url: url.to_string(),
        reference,
        checkout: d.join(name),
        auth: Default::default(),
        trust: None,
    }
}

/// The `version` file of a fetched revision.
fn read(r: &berth::source::Revision) -> String {
    std::fs::read_to_string(r.dir.join("version")).unwrap()
}

#[test]
fn branches_tags_commits_and_failures() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (url, work) = bare_and_clone(d);
    let c1 = commit(&work, "v1");
    git(&work, &["tag", "v1.9.0"]);
    let c2 = commit(&work, "v2");
    git(&work, &["tag", "v1.10.0"]);
    git(&work, &["push", "-q", "--tags", "origin", "HEAD:main"]);

    let source = |reference: GitRef, name: &str| file_source(&url, d, reference, name);

    // A branch, then a force-push that rewrites it.
    let branch = source(GitRef::Branch("main".into()), "b");
    let r = branch.fetch().unwrap();
    assert_eq!((r.id.as_str(), read(&r).as_str()), (c2.as_str(), "v2"));
    git(&work, &["reset", "-q", "--hard", &c1]);
    let c3 = commit(&work, "v3");
    git(&work, &["push", "-q", "--force", "origin", "HEAD:main"]);
    let r = branch.fetch().unwrap();
    assert_eq!((r.id.as_str(), read(&r).as_str()), (c3.as_str(), "v3"));

    // The highest tag in version order (1.10 > 1.9), and a pinned commit.
    let r = source(GitRef::Tag("v1.*".into()), "t").fetch().unwrap();
    assert_eq!(r.id, c2);
    let r = source(GitRef::Commit(c1.clone()), "c").fetch().unwrap();
    assert_eq!((r.id.as_str(), read(&r).as_str()), (c1.as_str(), "v1"));
    let err = source(GitRef::Tag("release-*".into()), "none")
        .fetch()
        .unwrap_err();
    assert!(err.to_string().contains("none found"), "{err}");

    // A deleted branch: an error, and the last checkout stays as it was.
    git(&work, &["push", "-q", "origin", "HEAD:refs/heads/gone"]);
    let gone = source(GitRef::Branch("gone".into()), "g");
    let before = gone.fetch().unwrap();
    git(&work, &["push", "-q", "origin", ":refs/heads/gone"]);
    assert!(gone.fetch().is_err());
    assert_eq!(read(&before), "v3");
}

#[test]
fn deleted_tags_and_unreachable_pinned_commits_keep_the_revision() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (url, work) = bare_and_clone(d);
    let source = |reference: GitRef, name: &str| file_source(&url, d, reference, name);
    let push_tag = |tag: &str| {
        git(
            &work,
            &["push", "-q", "origin", &format!("refs/tags/{tag}")],
        )
    };
    let delete_tag = |tag: &str| {
        git(&work, &["tag", "-d", tag]);
        git(
            &work,
            &["push", "-q", "origin", &format!(":refs/tags/{tag}")],
        );
    };

    let c1 = commit(&work, "v1");
    git(&work, &["tag", "v1.0"]);
    let c2 = commit(&work, "v2");
    git(&work, &["tag", "v2.0"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    push_tag("v1.0");
    push_tag("v2.0");
    let tags = source(GitRef::Tag("v*".into()), "t");
    assert_eq!(tags.fetch().unwrap().id, c2);

    // The tag in use is deleted, only an older one left: no rollback, an
    // error that says so, the checkout as it was.
    delete_tag("v2.0");
    let err = tags.fetch().unwrap_err().to_string();
    assert!(
        err.contains("has no tag v2.0 any more (deleted?)")
            && err.contains("the highest left, v1.0, is older")
            && err.contains("the last fetched revision stays"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(d.join("t/version")).unwrap(), "v2");
    // It stays refused (nothing remembered it away), until a newer tag.
    assert!(tags.fetch().is_err());
    let c3 = commit(&work, "v3");
    git(&work, &["tag", "v3.0"]);
    push_tag("v3.0");
    let r = tags.fetch().unwrap();
    assert_eq!((r.id.as_str(), read(&r).as_str()), (c3.as_str(), "v3"));
    // Another pattern on the same checkout: the tag in use still exists,
    // so an "older" tag of the new pattern is followed, no deletion reported.
    git(&work, &["tag", "release-1", &c1]);
    push_tag("release-1");
    let other = file_source(&url, d, GitRef::Tag("release-*".into()), "t");
    assert_eq!(other.fetch().unwrap().id, c1);
    assert_eq!(tags.fetch().unwrap().id, c3);
    // An older tag deleted: pruned here too, nothing else changes.
    delete_tag("v1.0");
    assert_eq!(tags.fetch().unwrap().id, c3);
    let local = git(&d.join("t"), &["tag", "-l"]);
    assert_eq!(local, "release-1\nv3.0", "tags are fetched with pruning");
    // Every matching tag deleted: an error, the checkout kept.
    delete_tag("v3.0");
    let err = tags.fetch().unwrap_err().to_string();
    assert!(err.contains("no tag matches \"v*\" any more"), "{err}");
    assert_eq!(std::fs::read_to_string(d.join("t/version")).unwrap(), "v3");
    // A fresh checkout (no tag in use) reports that none matches.
    let err = source(GitRef::Tag("v*".into()), "fresh")
        .fetch()
        .unwrap_err();
    assert!(err.to_string().contains("none found"), "{err}");

    // A pinned commit only a side branch holds: followed while it is
    // there; force-pushed away, an error and the checkout kept.
    git(&work, &["checkout", "-q", "-b", "side"]);
    let side = commit(&work, "side");
    git(&work, &["push", "-q", "origin", "side"]);
    let pinned = source(GitRef::Commit(side.clone()), "c");
    assert_eq!(read(&pinned.fetch().unwrap()), "side");
    git(
        &work,
        &[
            "push",
            "-q",
            "--force",
            "origin",
            &format!("{c1}:refs/heads/side"),
        ],
    );
    let err = pinned.fetch().unwrap_err().to_string();
    assert!(
        err.contains(&format!("commit {side}")) && err.contains("is on no branch or tag"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("c/version")).unwrap(),
        "side"
    );
    // Pushed back (on another branch): followed again.
    git(&work, &["push", "-q", "origin", "side:refs/heads/again"]);
    assert_eq!(pinned.fetch().unwrap().id, side);
    // A commit an existing branch holds deep in its history is fine.
    assert_eq!(
        source(GitRef::Commit(c1), "old").fetch().unwrap().id.len(),
        40
    );
}

#[test]
fn ssh_repositories_need_a_known_host_key_plain_or_hashed_and_not_revoked() {
    let Some(fleet) = support::Fleet::bare(1) else {
        return;
    };
    let tb = &fleet.tb;
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["clone", "-q", &tb.git_file_url(), "work"]);
    let work = dir.path().join("work");
    let c = commit(&work, "over ssh");
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    let source = |known_hosts: &str, name: &str| {
        let file = dir.path().join(format!("known_hosts.{name}"));
        std::fs::write(&file, known_hosts).unwrap();
        Source::Git {
            url: tb.git_ssh_url(),
            reference: GitRef::Branch("main".into()),
            checkout: dir.path().join(name),
            auth: berth::source::GitAuth {
                ssh_key: Some(tb.ssh_key()),
                known_hosts: Some(file),
                token: None,
            },
            trust: None,
        }
        .fetch()
    };
    // The testbed's file: `<addr> ssh-ed25519 <key>` per host.
    let plain = std::fs::read_to_string(tb.known_hosts()).unwrap();
    let r = source(&plain, "plain").unwrap();
    assert_eq!(r.id, c);
    assert_eq!(
        std::fs::read_to_string(r.dir.join("version")).unwrap(),
        "over ssh"
    );
    // The same, hashed by OpenSSH (Debian's and Ubuntu's default).
    let hashed_file = dir.path().join("to-hash");
    std::fs::write(&hashed_file, &plain).unwrap();
    let out = std::process::Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&hashed_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hashed = std::fs::read_to_string(&hashed_file).unwrap();
    assert!(
        hashed.starts_with("|1|") && !hashed.contains(&fleet.host(0).addr.to_string()),
        "{hashed}"
    );
    assert_eq!(source(&hashed, "hashed").unwrap().id, c);

    // An unknown host key is refused, and so is another key for the host.
    let err = source("", "empty").unwrap_err();
    assert!(
        err.to_string().contains("is not in the known_hosts file"),
        "{err}"
    );
    let (host, key) = plain
        .lines()
        .find(|l| l.starts_with(&format!("{} ", fleet.host(0).addr)))
        .and_then(|l| l.split_once(' '))
        .unwrap();
    let other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    let err = source(&format!("{host} {other}\n"), "wrong").unwrap_err();
    assert!(
        err.to_string().contains("is not in the known_hosts file"),
        "{err}"
    );
    // No user in the URL: `git`, which this sshd does not let in with the key.
    let git_user = Source::Git {
        url: tb.git_ssh_url().replace("ssh://root@", "ssh://"),
        reference: GitRef::Branch("main".into()),
        checkout: dir.path().join("as-git"),
        auth: berth::source::GitAuth {
            ssh_key: Some(tb.ssh_key()),
            known_hosts: Some(tb.known_hosts()),
            token: None,
        },
        trust: None,
    };
    let err = git_user.fetch().unwrap_err().to_string();
    assert!(
        err.contains("authentication failed: the server refused the SSH key"),
        "{err}"
    );
    // Revoked: refused even beside the line that lists it (plain or hashed).
    for (name, listed) in [("revoked", &plain), ("revoked-hashed", &hashed)] {
        let err = source(&format!("{listed}@revoked * {key}\n"), name).unwrap_err();
        assert!(
            err.to_string()
                .contains("is marked @revoked in the known_hosts file"),
            "{name}: {err}"
        );
        assert!(!dir.path().join(name).join("version").exists());
    }
}
