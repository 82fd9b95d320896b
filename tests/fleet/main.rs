//! The fleet tests: real hosts (network namespaces with their own sshd and
//! dockerd), a real registry, real Git and real Kamal. One binary whose
//! tests run in parallel, each in a testbed slot of its own
//! (`berth_testbed::lock_free_slot`). They need root; without it each test
//! says so on stderr and returns, and the offline tests (`tests/offline`)
//! still run.

#[path = "../support/mod.rs"]
mod support;

mod container_image;
mod controller;
mod converge;
mod deleted_tag;
mod kamal212;
mod kamal_realism;
mod notifications;
mod reconcile_apply;
mod reconcile_dry_run;
mod source;
mod status_page;
mod testbed;

/// Without root, say once, loudly, that the fleet tests did not run.
#[test]
fn fleet_tests_need_root() {
    if !support::is_root() {
        eprintln!(
            "NOTE: the fleet tests need root (network namespaces): they were skipped; run `sudo scripts/test.sh`"
        );
    }
}
