//! `berth run --tag` on a real fleet when the tag in use is deleted from the
//! repository: the fleet stays on it (no rollback to the older tag that is
//! now the highest), `/api/v1/apps` says why cycle after cycle, and a newer
//! tag — here on the old commit, the way to roll back — is deployed.

use std::time::Duration;

use crate::controller::{Berth, push_version, serves, wait, workspace};
use crate::support::{Fleet, git};

#[test]
fn a_deleted_tag_in_use_keeps_the_fleet_on_it_and_a_newer_tag_moves_it() {
    let Some(fleet) = Fleet::up(1) else {
        return;
    };
    let (dir, work) = workspace(&fleet);
    let v1 = push_version(&work, &fleet, "v1");
    git(&work, &["tag", "deploy-1"]);
    push_version(&work, &fleet, "v2");
    git(&work, &["tag", "deploy-2"]);
    git(&work, &["push", "-q", "origin", "deploy-1", "deploy-2"]);
    let berth = Berth::start(
        &fleet,
        dir.path(),
        &["--tag", "deploy-*", "--interval", "1s"],
    );
    wait(Duration::from_secs(60), "deploy-2 (v2) deployed", || {
        serves(&fleet, "demo v2\n")
    });

    git(&work, &["push", "-q", "origin", ":refs/tags/deploy-2"]);
    wait(Duration::from_secs(30), "the deletion reported", || {
        berth
            .apps()
            .contains("has no tag deploy-2 any more (deleted?)")
    });
    // Cycles go on (1 s apart), failing the same way; v2 keeps running.
    let before = berth.reconciles("demo", "error");
    wait(Duration::from_secs(30), "more cycles", || {
        berth.reconciles("demo", "error") >= before + 3.0
    });
    assert!(serves(&fleet, "demo v2\n"), "rolled back on a deleted tag");
    assert!(
        berth
            .apps()
            .contains("the highest left, deploy-1, is older")
    );

    // Rolling back is a new tag on the old commit.
    git(&work, &["tag", "deploy-3", &v1]);
    git(&work, &["push", "-q", "origin", "deploy-3"]);
    wait(Duration::from_secs(60), "deploy-3 (v1) deployed", || {
        serves(&fleet, "demo v1\n")
    });
    wait(Duration::from_secs(10), "the error cleared", || {
        berth.apps().contains("\"last_error\":null")
    });
    assert_eq!(berth.stop(), Some(0));
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}
