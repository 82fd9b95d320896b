//! `berth run` when what it follows disappears from the repository — the
//! branch deleted, the tag in use deleted (only an older one left), the
//! pinned commit force-pushed off every branch: the revision stays (nothing
//! is planned or applied from anything else) and `/api/v1/apps` says why in
//! `last_error`, cycle after cycle. Over `file://`; the project's one host
//! is unreachable, so no root and no fleet.

use std::time::Duration;

use crate::git_https::{Work, app_state, berth_repo};
use crate::http_hardening::{Berth, poll, reconciles};
use crate::support::git;

/// berth following `follow` on `bare` until it reports `revision`; then
/// `delete` runs, and the error must contain `why` while the revision stays.
fn deleted_while_followed(
    bare: &std::path::Path,
    follow: &[&str],
    revision: &str,
    delete: impl FnOnce(),
    why: &str,
) {
    let (cmd, dir) = berth_repo(&format!("file://{}", bare.display()), None, follow);
    let berth = Berth::spawn(cmd, dir);
    let followed = poll(Duration::from_secs(30), || {
        (app_state(&berth).0.as_deref() == Some(revision)).then_some(())
    });
    assert!(
        followed.is_some(),
        "{:?}\n{}",
        app_state(&berth),
        berth.log()
    );
    delete();
    let err = poll(Duration::from_secs(30), || {
        app_state(&berth).1.filter(|e| e.contains(why))
    })
    .unwrap_or_else(|| panic!("{follow:?}: no {why:?} in {:?}", app_state(&berth)));
    assert!(err.contains("the last fetched revision stays"), "{err}");
    // Cycles go on failing the same way; the revision never moves.
    let before = reconciles(berth.addr);
    poll(Duration::from_secs(30), || {
        (reconciles(berth.addr) >= before + 2.0).then_some(())
    })
    .expect("no more cycles");
    let (rev, err, body) = app_state(&berth);
    assert_eq!(rev.as_deref(), Some(revision), "{body}");
    assert!(err.is_some_and(|e| e.contains(why)), "{body}");
}

#[test]
fn a_deleted_branch_tag_or_pinned_commit_keeps_the_revision_and_says_why() {
    let repo = tempfile::tempdir().unwrap();
    git(
        repo.path(),
        &["init", "-q", "--bare", "-b", "main", "repo.git"],
    );
    let bare = repo.path().join("repo.git");
    let work = Work::new(&bare);
    let w = &work.path;
    let first = work.commit("first");

    git(w, &["push", "-q", "origin", "HEAD:refs/heads/feature"]);
    deleted_while_followed(
        &bare,
        &["--branch", "feature"],
        &first,
        || {
            git(w, &["push", "-q", "origin", ":refs/heads/feature"]);
        },
        "has no branch feature (deleted?)",
    );

    git(w, &["tag", "v1"]);
    let second = work.commit("second");
    git(w, &["tag", "v2"]);
    git(w, &["push", "-q", "origin", "v1", "v2"]);
    deleted_while_followed(
        &bare,
        &["--tag", "v*"],
        &second,
        || {
            git(w, &["push", "-q", "origin", ":refs/tags/v2"]);
        },
        "has no tag v2 any more (deleted?), the one in use, and the highest left, v1, is older",
    );

    // A commit only the branch `side` holds.
    git(w, &["checkout", "-q", "-b", "side"]);
    std::fs::write(w.join("CHANGES"), "side").unwrap();
    git(w, &["commit", "-qam", "side"]);
    git(w, &["push", "-q", "origin", "side"]);
    let side = git(w, &["rev-parse", "HEAD"]);
    deleted_while_followed(
        &bare,
        &["--commit", &side],
        &side,
        || {
            let away = format!("{first}:refs/heads/side");
            git(w, &["push", "-q", "--force", "origin", &away]);
        },
        &format!("commit {side}: is on no branch or tag of file://"),
    );
}
