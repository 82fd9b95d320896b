//! `source` against real bare repositories (`file://`): branches (with a
//! force-push), tag patterns, pinned commits, and failures that keep the last
//! good checkout.

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

#[test]
fn branches_tags_commits_and_failures() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    git(d, &["init", "-q", "--bare", "-b", "main", "repo.git"]);
    let url = format!("file://{}", d.join("repo.git").display());
    git(d, &["clone", "-q", &url, "work"]);
    let work = d.join("work");
    let c1 = commit(&work, "v1");
    git(&work, &["tag", "v1.9.0"]);
    let c2 = commit(&work, "v2");
    git(&work, &["tag", "v1.10.0"]);
    git(&work, &["push", "-q", "--tags", "origin", "HEAD:main"]);

    let source = |reference: GitRef, name: &str| Source::Git {
        url: url.clone(),
        reference,
        checkout: d.join(name),
        auth: Default::default(),
        trust: None,
    };
    let read =
        |r: &berth::source::Revision| std::fs::read_to_string(r.dir.join("version")).unwrap();

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
fn ssh_repositories_need_a_known_host_key() {
    let Some(fleet) = support::Fleet::bare(1) else {
        return;
    };
    let tb = &fleet.tb;
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["clone", "-q", &tb.git_file_url(), "work"]);
    let work = dir.path().join("work");
    let c = commit(&work, "over ssh");
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    let source = |known_hosts: &Path, name: &str| Source::Git {
        url: tb.git_ssh_url(),
        reference: GitRef::Branch("main".into()),
        checkout: dir.path().join(name),
        auth: berth::source::GitAuth {
            ssh_key: Some(tb.ssh_key()),
            known_hosts: Some(known_hosts.to_path_buf()),
            token: None,
        },
        trust: None,
    };
    let r = source(&tb.known_hosts(), "ok").fetch().unwrap();
    assert_eq!(r.id, c);
    assert_eq!(
        std::fs::read_to_string(r.dir.join("version")).unwrap(),
        "over ssh"
    );
    // An unknown host key is refused.
    let empty = dir.path().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let err = source(&empty, "refused").fetch().unwrap_err();
    assert!(err.to_string().contains("known_hosts"), "{err}");
}
