//! The testbed itself: real, isolated hosts that clean up after themselves.

use crate::support;

use std::process::Command;

use berth_testbed as testbed;
use support::Fleet;

#[test]
fn hosts_are_isolated_and_reachable_with_strict_host_keys() {
    let Some(fleet) = Fleet::bare(3) else {
        return;
    };
    let tb = &fleet.tb;
    assert!(tb.is_healthy(), "{:?}", tb.status());

    // Each host has its own home and its own docker engine, reached over SSH.
    let h1 = fleet.host(0);
    let h2 = fleet.host(1);
    let out = tb
        .ssh(
            h1,
            "echo h1 > ~/marker && docker info --format '{{.DockerRootDir}}'",
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&*h1.dir.to_string_lossy()));
    assert_eq!(
        std::fs::read_to_string(h1.home().join("marker")).unwrap(),
        "h1\n"
    );
    let out = tb.ssh(h2, "cat ~/marker").unwrap();
    assert!(!out.status.success(), "h2 must not see h1's home");

    // Strict host keys: a known_hosts with the wrong key is refused.
    let bad = tempfile::NamedTempFile::new().unwrap();
    let wrong = std::fs::read_to_string(h2.dir.join("ssh_host_ed25519_key.pub")).unwrap();
    std::fs::write(bad.path(), format!("{} {}", h1.addr, wrong)).unwrap();
    let out = Command::new("ssh")
        .arg("-i")
        .arg(tb.ssh_key())
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", bad.path().display()))
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
        .arg(format!("root@{}", h1.addr))
        .arg("true")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HOST IDENTIFICATION HAS CHANGED"));
}

#[test]
fn images_are_served_by_the_registry_and_behave() {
    let Some(fleet) = Fleet::up(2) else {
        return;
    };
    let h = fleet.host(1);
    let reg = fleet.tb.registry();
    h.docker_ok(&["pull", "-q", &format!("{reg}/demo:v2")])
        .unwrap();
    let labels = h
        .docker_ok(&[
            "image",
            "inspect",
            "-f",
            "{{.Config.Labels.service}}",
            &format!("{reg}/demo:v2"),
        ])
        .unwrap();
    assert_eq!(labels.trim(), "demo");
    let id = h
        .docker_ok(&["run", "-d", "--name", "probe", &format!("{reg}/demo:v2")])
        .unwrap();
    let ip = h
        .docker_ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", id.trim()])
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    testbed::poll(deadline, "demo serves", || {
        support::http_get_in(h, &format!("http://{}/up", ip.trim())).is_some()
    })
    .unwrap();
    assert_eq!(
        support::http_get_in(h, &format!("http://{}/", ip.trim())).as_deref(),
        Some("demo v2\n")
    );
    // SIGTERM stops it at once (no 10 s kill timeout).
    let t = std::time::Instant::now();
    h.docker_ok(&["stop", "probe"]).unwrap();
    assert!(t.elapsed().as_secs() < 5, "demo ignored SIGTERM");
    let code = h
        .docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", "probe"])
        .unwrap();
    assert_eq!(code.trim(), "0");

    // The crash image exits non-zero at start; the unhealthy one has no /up.
    h.docker_ok(&["run", "--name", "crash", &format!("{reg}/demo:crash")])
        .unwrap_err();
    let id = h
        .docker_ok(&["run", "-d", &format!("{reg}/demo:unhealthy")])
        .unwrap();
    let ip = h
        .docker_ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", id.trim()])
        .unwrap();
    testbed::poll(deadline, "unhealthy serves /", || {
        support::http_get_in(h, &format!("http://{}/", ip.trim())).is_some()
    })
    .unwrap();
    assert_eq!(
        support::http_get_in(h, &format!("http://{}/up", ip.trim())),
        None
    );
}

#[test]
fn git_repo_is_served_over_file_and_ssh() {
    let Some(fleet) = Fleet::bare(1) else {
        return;
    };
    let tb = &fleet.tb;
    let work = tempfile::tempdir().unwrap();
    let ssh = [("GIT_SSH_COMMAND", tb.git_ssh_command())];
    let git = |dir: &std::path::Path, args: &[&str]| support::git_env(dir, args, &ssh);
    git(work.path(), &["clone", "-q", &tb.git_file_url(), "a"]);
    let a = work.path().join("a");
    std::fs::write(a.join("file"), "one").unwrap();
    git(&a, &["add", "file"]);
    git(&a, &["commit", "-qm", "one"]);
    git(&a, &["push", "-q", "origin", "HEAD:main"]);
    git(work.path(), &["clone", "-q", &tb.git_ssh_url(), "b"]);
    assert_eq!(
        std::fs::read_to_string(work.path().join("b/file")).unwrap(),
        "one"
    );
}

#[test]
fn up_is_idempotent_and_repairs_a_half_dead_testbed_and_down_leaves_nothing() {
    if !support::needs_root("the testbed") {
        return;
    }
    let lock = testbed::lock_free_slot().unwrap();
    let slot = lock.slot;
    let tb = testbed::up(slot, 2).unwrap();
    let pid_file = tb.hosts[0].dir.join("docker.pid");
    let pid = std::fs::read_to_string(&pid_file).unwrap();

    // Up again: the same daemons stay.
    let again = testbed::up(slot, 2).unwrap();
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), pid);
    assert_eq!(again.hosts.len(), 2);

    // A container is running when things go wrong.
    let h = &tb.hosts[1];
    h.docker_ok(&[
        "run",
        "-d",
        "--name",
        "sleeper",
        "busybox-missing-image-is-fine",
    ])
    .ok();

    // Killed half-way: one dockerd dies. Up notices and rebuilds.
    Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .unwrap();
    testbed::poll(
        std::time::Instant::now() + std::time::Duration::from_secs(5),
        "dockerd gone",
        || !tb.is_healthy(),
    )
    .unwrap();
    let repaired = testbed::up(slot, 2).unwrap();
    assert!(repaired.is_healthy());
    assert_ne!(std::fs::read_to_string(&pid_file).unwrap(), pid);

    testbed::down(slot).unwrap();
    assert_eq!(testbed::leftovers(slot), Vec::<String>::new());
    // Down twice is fine.
    testbed::down(slot).unwrap();
}
