//! A config using what Kamal 2.12 added converges on real hosts: the
//! restart policy from `options` is the containers' policy (the retry count
//! of `on-failure:N` included) and reads back as in sync, and
//! `stop_timeout` is how long the old container gets before SIGKILL; a
//! Kamal lock taken by a user with a UTF-8 name reads as written.

use crate::support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Fleet, KAMAL_COMMON};

fn yml(fleet: &Fleet, version: &str) -> String {
    // `jobs` ignores SIGTERM: stopping it takes its whole stop_timeout.
    format!(
        "service: demo\nimage: demo\nstop_timeout: 2\nservers:\n  web:\n    hosts: [{a}]\n    proxy: false\n    options:\n      restart: on-failure:3\n\
         \x20 jobs:\n    hosts: [{b}]\n    cmd: sh -c 'trap \"\" TERM; httpd -f -p 80 -h /www & wait'\n    stop_timeout: 1\n    options:\n      restart: always\n\
         accessories:\n  kv:\n    image: {reg}/kv:1\n    host: {b}\n    options:\n      restart: \"no\"\n\
         output:\n  file:\n    path: /nonexistent/kamal-output\n\
         readiness_delay: 0\nx-berth:\n  version: {version}\n{common}  forward_agent: false\n",
        a = fleet.addrs()[0],
        b = fleet.addrs()[1],
        reg = fleet.tb.registry(),
        common = KAMAL_COMMON
            .replace("{registry}", &fleet.tb.registry())
            .replace("{key}", &fleet.tb.ssh_key().to_string_lossy()),
    )
}

fn reconcile(fleet: &Fleet, p: &Path, extra: &[&str]) -> (Option<i32>, String) {
    reconcile_in(fleet, p, extra, &[])
}

/// `berth reconcile` with extra environment.
fn reconcile_in(
    fleet: &Fleet,
    p: &Path,
    extra: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("reconcile")
        .arg("--known-hosts")
        .arg(fleet.tb.known_hosts())
        .args(extra)
        .envs(env.iter().copied())
        .current_dir(p)
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_kamal_212_config_converges_with_its_restart_policies_and_stop_timeouts() {
    let Some(fleet) = Fleet::up(2) else {
        return;
    };
    let project = fleet.project("", "KAMAL_REGISTRY_PASSWORD=unused\n");
    let p = project.path();
    std::fs::write(p.join("config/deploy.yml"), yml(&fleet, "v1")).unwrap();
    let (code, out) = reconcile(&fleet, p, &[]);
    assert_eq!(code, Some(0), "{out}");

    let policy = |host: usize, name: &str| {
        fleet
            .host(host)
            .docker_ok(&[
                "inspect",
                "-f",
                "{{.HostConfig.RestartPolicy.Name}} {{.HostConfig.RestartPolicy.MaximumRetryCount}}",
                name,
            ])
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(policy(0, "demo-web-v1"), "on-failure 3");
    assert_eq!(policy(1, "demo-jobs-v1"), "always 0");
    assert_eq!(policy(1, "demo-kv"), "no 0");

    // Deployed as the config says, it reads back as in sync.
    let (code, out) = reconcile(&fleet, p, &["--dry-run"]);
    assert_eq!(code, Some(0), "in sync after the apply:\n{out}");

    // The next version: `jobs` v1 ignores SIGTERM, so its stop takes its
    // stop_timeout (1 s) and ends in SIGKILL; with the default
    // (drain_timeout, 30 s without the proxy) the rollout would take longer
    // than the bound below.
    std::fs::write(p.join("config/deploy.yml"), yml(&fleet, "v2")).unwrap();
    let started = Instant::now();
    let (code, out) = reconcile(&fleet, p, &[]);
    let took = started.elapsed();
    assert_eq!(code, Some(0), "{out}");
    assert!(
        took < Duration::from_secs(20),
        "rollout took {took:?}:\n{out}"
    );
    let exited = fleet
        .host(1)
        .docker_ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            "demo-jobs-v1",
        ])
        .unwrap();
    assert_eq!(exited.trim(), "exited 137", "killed after its stop_timeout");
    let (code, out) = reconcile(&fleet, p, &["--dry-run"]);
    assert_eq!(code, Some(0), "in sync after the rollout:\n{out}");

    // A deploy lock Kamal took for a user with a UTF-8 name (Kamal 2.12
    // reads such names right) shows in the plan as written. Kamal 2.11 (the
    // CI oracle) takes it from a config it knows, under a UTF-8 locale.
    let kamal_project = fleet.project(
        &format!(
            "service: demo\nimage: demo\nservers:\n  web:\n    hosts: [{}]\n    proxy: false\n{}",
            fleet.addrs()[0],
            KAMAL_COMMON
                .replace("{registry}", &fleet.tb.registry())
                .replace("{key}", &fleet.tb.ssh_key().to_string_lossy())
        ),
        "KAMAL_REGISTRY_PASSWORD=unused\n",
    );
    let kamal = |args: &[&str]| {
        let out = Command::new(support::kamal_bin())
            .args(args)
            .current_dir(kamal_project.path())
            .env("HOME", fleet.tb.client_home())
            .env("VERSION", "v1")
            .env("LANG", "C.UTF-8")
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "user.name")
            .env("GIT_CONFIG_VALUE_0", "Сергей Федоров")
            .output()
            .unwrap();
        assert!(out.status.success(), "kamal {args:?}: {out:?}");
    };
    kamal(&["lock", "acquire", "-m", "hands off"]);
    let (code, out) = reconcile(&fleet, p, &["--dry-run", "--output", "json"]);
    assert_eq!(code, Some(0), "{out}");
    let plan: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let notes = plan["notes"].to_string();
    assert!(
        notes.contains("deploy lock held: Locked by: Сергей Федоров at "),
        "{notes}"
    );
    assert!(notes.contains("Message: hands off"), "{notes}");
    kamal(&["lock", "release"]);
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}

/// berth never forwards an SSH agent, even with `ssh.forward_agent: true`
/// (a warning says so) and an agent running: the host's sshd, logging every
/// channel request, sees `exec` requests but no `auth-agent-req@openssh.com`.
#[test]
fn no_ssh_agent_reaches_the_hosts_whatever_forward_agent_says() {
    let Some(fleet) = Fleet::up(1) else {
        return;
    };
    let h = fleet.host(0);
    let cfg = h.dir.join("sshd_config");
    let mut sshd = std::fs::read_to_string(&cfg).unwrap();
    sshd.push_str("LogLevel DEBUG1\n");
    std::fs::write(&cfg, sshd).unwrap();
    h.kill_sshd().unwrap();
    h.start_sshd().unwrap();
    let agent_dir = tempfile::tempdir().unwrap();
    let sock = agent_dir.path().join("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "ssh-agent did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let yml = |forward: bool| {
        format!(
            "service: demo\nimage: demo\nservers:\n  web:\n    hosts: [{}]\n    proxy: false\nreadiness_delay: 0\nx-berth:\n  version: v1\n{}  forward_agent: {forward}\n",
            h.addr,
            KAMAL_COMMON
                .replace("{registry}", &fleet.tb.registry())
                .replace("{key}", &fleet.tb.ssh_key().to_string_lossy())
        )
    };
    let project = fleet.project("", "KAMAL_REGISTRY_PASSWORD=unused\n");
    let p = project.path();
    let requests = || {
        std::fs::read_to_string(h.dir.join("sshd.log"))
            .unwrap_or_default()
            .matches("auth-agent-req@openssh.com")
            .count()
    };
    let dry_run = |extra: &[&str]| {
        let args: Vec<&str> = ["--dry-run"].iter().chain(extra).copied().collect();
        reconcile_in(
            &fleet,
            p,
            &args,
            &[
                ("SSH_AUTH_SOCK", sock.as_os_str()),
                ("RUST_LOG", "berth=debug".as_ref()),
            ],
        )
    };

    for forward in [false, true] {
        std::fs::write(p.join("config/deploy.yml"), yml(forward)).unwrap();
        for extra in [&[][..], &["--untrusted"][..]] {
            let (code, out) = dry_run(extra);
            assert_eq!(code, Some(2), "{out}");
            // With an agent, OpenSSH connects (it offers the agent's keys
            // first), and still forwards none.
            assert!(
                out.contains("reached through OpenSSH: an ssh-agent (SSH_AUTH_SOCK)"),
                "{out}"
            );
            assert_eq!(
                out.contains("warning: config/deploy.yml:")
                    && out.contains("ssh.forward_agent: berth never forwards"),
                forward,
                "{out}"
            );
        }
    }
    let log = std::fs::read_to_string(h.dir.join("sshd.log")).unwrap();
    assert!(
        log.contains("req exec"),
        "sshd logs channel requests:\n{log}"
    );
    assert_eq!(requests(), 0, "an agent was forwarded:\n{log}");
    agent.kill().unwrap();
    agent.wait().unwrap();
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}
