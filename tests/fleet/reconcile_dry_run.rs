//! `berth reconcile --dry-run` on a real testbed, with real Kamal 2.11 as the
//! oracle: a fleet Kamal deployed is in sync; hand-made drift and config
//! changes yield exactly the expected actions; bad input fails cleanly.

use crate::support;

use std::path::Path;
use std::process::{Command, Output};

use berth_testbed as testbed;
use serde_json::Value;
use support::{Fleet, KAMAL_COMMON};

fn deploy_yml(hosts: &[String], greeting: &str, version: &str, extra: &str) -> String {
    format!(
        "service: demo\nimage: demo\nservers:\n  web:\n    hosts: [{}]\n  jobs:\n    hosts: [{}]\n    proxy: false\n\
         proxy:\n  app_port: 80\n  healthcheck:\n    path: /up\n    interval: 1\n\
         env:\n  clear:\n    GREETING: {greeting}\n  secret: [DB_PASSWORD]\n\
         accessories:\n  kv:\n    image: {{registry}}/kv:1\n    host: {}\n    volumes: [kv-data:/data]\n\
         readiness_delay: 0\ndrain_timeout: 2\nx-berth:\n  version: {version}\n{extra}{KAMAL_COMMON}",
        hosts.join(", "),
        hosts[0],
        hosts[hosts.len() - 1],
    )
}

struct Berth<'a> {
    fleet: &'a Fleet,
    project: &'a Path,
}

impl Berth<'_> {
    fn dry_run(&self, extra: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["reconcile", "--dry-run", "--known-hosts"])
            .arg(self.fleet.tb.known_hosts())
            .args(extra)
            .current_dir(self.project)
            .output()
            .unwrap()
    }

    /// (exit code, plan JSON).
    fn plan(&self, extra: &[&str]) -> (i32, Value) {
        let mut args = vec!["--output", "json"];
        args.extend_from_slice(extra);
        let out = self.dry_run(&args);
        let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), json)
    }
}

fn actions(plan: &Value) -> Vec<(String, String, String)> {
    plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["host"].as_str().unwrap().to_string(),
                a["kind"].as_str().unwrap().to_string(),
                a["container"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn write_config(project: &Path, fleet: &Fleet, yml: &str) {
    let yml = yml
        .replace("{registry}", &fleet.tb.registry())
        .replace("{key}", &fleet.tb.ssh_key().to_string_lossy());
    std::fs::write(project.join("config/deploy.yml"), yml).unwrap();
}

#[test]
fn dry_run_sees_what_kamal_deployed_and_every_kind_of_drift() {
    let Some(fleet) = Fleet::up(4) else {
        return;
    };
    let addrs = fleet.addrs();
    let three = addrs[..3].to_vec();
    let project = fleet.project(
        "",
        "KAMAL_REGISTRY_PASSWORD=unused\nDB_PASSWORD=first-secret\n",
    );
    let p = project.path();
    write_config(p, &fleet, &deploy_yml(&three, "hello", "v1", ""));
    fleet.kamal_use_stand_in_proxy(p);
    fleet.kamal_ok(p, &["deploy", "--skip-push", "--version", "v1"]);
    fleet.kamal_ok(p, &["accessory", "boot", "all"]);
    let berth = Berth {
        fleet: &fleet,
        project: p,
    };

    // Deployed by real Kamal: in sync.
    let out = berth.dry_run(&[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("No changes"));

    // The Engine API fast path and the docker CLI path observe the same.
    compare_probe_paths(&fleet, p);

    // A container stopped by hand: exactly one start, on that host.
    let h2 = fleet.host(1);
    h2.docker_ok(&["stop", "demo-web-v1"]).unwrap();
    let (code, plan) = berth.plan(&[]);
    assert_eq!(code, 2);
    assert_eq!(
        actions(&plan),
        [(addrs[1].clone(), "start".into(), "demo-web-v1".into())]
    );
    h2.docker_ok(&["start", "demo-web-v1"]).unwrap();

    // Removed by hand: exactly one create.
    let h3 = fleet.host(2);
    let id = h3
        .docker_ok(&["inspect", "-f", "{{.Id}}", "demo-web-v1"])
        .unwrap();
    h3.docker_ok(&["rm", "-f", "demo-web-v1"]).unwrap();
    let (code, plan) = berth.plan(&[]);
    assert_eq!(code, 2);
    assert_eq!(
        actions(&plan),
        [(addrs[2].clone(), "create".into(), "demo-web-v1".into())]
    );
    assert!(!id.is_empty());
    // Kamal puts it back (same version: a fresh boot of the role).
    fleet.kamal_ok(p, &["deploy", "--skip-push", "--version", "v1"]);
    assert_eq!(berth.dry_run(&[]).status.code(), Some(0));

    // A clear env change: replace that role's units only, naming the key.
    write_config(p, &fleet, &deploy_yml(&three, "changed", "v1", ""));
    let (code, plan) = berth.plan(&[]);
    assert_eq!(code, 2);
    let acts = actions(&plan);
    assert!(acts.iter().all(|(_, k, _)| k == "replace"), "{acts:?}");
    assert_eq!(
        acts.len(),
        4,
        "3 web + 1 jobs (the env is the app's): {acts:?}"
    );
    let text = String::from_utf8_lossy(&berth.dry_run(&[]).stdout).to_string();
    // The running value is never shown (a container does not say whether
    // it was a secret), the config's clear one is.
    assert!(
        text.contains("- env GREETING=(sensitive)") && text.contains("+ env GREETING=changed"),
        "{text}"
    );
    assert!(!text.contains("GREETING=hello"), "{text}");
    write_config(p, &fleet, &deploy_yml(&three, "hello", "v1", ""));

    // A secret change: replace, the key named, no value anywhere.
    std::fs::write(
        p.join(".kamal/secrets"),
        "KAMAL_REGISTRY_PASSWORD=unused\nDB_PASSWORD=second-secret\n",
    )
    .unwrap();
    let out = berth.dry_run(&[]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(text.contains("DB_PASSWORD"), "{text}");
    assert!(
        !text.contains("first-secret") && !text.contains("second-secret"),
        "{text}"
    );
    std::fs::write(
        p.join(".kamal/secrets"),
        "KAMAL_REGISTRY_PASSWORD=unused\nDB_PASSWORD=first-secret\n",
    )
    .unwrap();

    // A key moved from secret to clear: the running (secret) value is in no
    // output — text, JSON, stderr — only the new clear one.
    write_config(
        p,
        &fleet,
        &deploy_yml(&three, "hello", "v1", "")
            .replace("  secret: [DB_PASSWORD]\n", "")
            .replace(
                "    GREETING: hello\n",
                "    GREETING: hello\n    DB_PASSWORD: now-clear\n",
            ),
    );
    let text_out = berth.dry_run(&[]);
    let json_out = berth.dry_run(&["--output", "json"]);
    assert_eq!(text_out.status.code(), Some(2));
    for out in [&text_out, &json_out] {
        let all = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(all.contains("now-clear"), "{all}");
        assert!(!all.contains("first-secret"), "{all}");
    }
    write_config(p, &fleet, &deploy_yml(&three, "hello", "v1", ""));

    // A new host: created there only (its proxy and its app).
    write_config(
        p,
        &fleet,
        &deploy_yml(&addrs, "hello", "v1", "").replace(
            &format!("host: {}", addrs[3]),
            &format!("host: {}", addrs[2]),
        ),
    );
    let (code, plan) = berth.plan(&[]);
    assert_eq!(code, 2);
    let acts = actions(&plan);
    assert!(
        acts.iter().all(|(h, k, _)| *h == addrs[3] && k == "create"),
        "{acts:?}"
    );
    assert_eq!(acts.len(), 2, "{acts:?}");
    write_config(p, &fleet, &deploy_yml(&three, "hello", "v1", ""));

    // Version bump: replace everywhere, primary role host by host, then jobs.
    write_config(p, &fleet, &deploy_yml(&three, "hello", "v2", ""));
    let (code, plan) = berth.plan(&[]);
    assert_eq!(code, 2);
    let want: Vec<(String, String, String)> = three
        .iter()
        .map(|h| (h.clone(), "replace".to_string(), "demo-web-v2".to_string()))
        .chain([(
            addrs[0].clone(),
            "replace".to_string(),
            "demo-jobs-v2".to_string(),
        )])
        .collect();
    assert_eq!(actions(&plan), want);
    // Filters.
    let (_, plan) = berth.plan(&["--roles", "jobs"]);
    assert_eq!(actions(&plan).len(), 1);
    let (_, plan) = berth.plan(&["--hosts", &addrs[1]]);
    assert_eq!(
        actions(&plan),
        [(addrs[1].clone(), "replace".into(), "demo-web-v2".into())]
    );
    write_config(p, &fleet, &deploy_yml(&three, "hello", "v1", ""));

    // A host whose sshd is down: exit 1, the others still planned.
    let pid = std::fs::read_to_string(fleet.host(1).dir.join("sshd.pid")).unwrap();
    Command::new("kill").arg(pid.trim()).status().unwrap();
    testbed::poll(
        std::time::Instant::now() + std::time::Duration::from_secs(5),
        "sshd down",
        || std::net::TcpStream::connect((fleet.host(1).addr, 22)).is_err(),
    )
    .unwrap();
    h3.docker_ok(&["stop", "demo-web-v1"]).unwrap();
    let (code, plan) = berth.plan(&[]);
    assert_eq!(code, 1);
    assert_eq!(plan["unknown_hosts"][0]["host"], addrs[1].as_str());
    assert_eq!(
        actions(&plan),
        [(addrs[2].clone(), "start".into(), "demo-web-v1".into())]
    );
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}

#[test]
fn bad_input_fails_cleanly_before_touching_any_host() {
    let Some(fleet) = Fleet::bare(1) else {
        return;
    };
    let addr = fleet.addrs()[0].clone();
    let project = fleet.project("", "KAMAL_REGISTRY_PASSWORD=unused\nDB_PASSWORD=x\n");
    let p = project.path();
    let berth = Berth {
        fleet: &fleet,
        project: p,
    };

    // Malformed config: file:line, exit 1.
    std::fs::write(
        p.join("config/deploy.yml"),
        format!(
            "service: demo\nimage: demo\nservers:\n  web:\n    hostz: [{addr}]\n{KAMAL_COMMON}"
        )
        .replace("{key}", "/nonexistent"),
    )
    .unwrap();
    let out = berth.dry_run(&[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config/deploy.yml:5:5: servers.web.hostz"),
        "{err}"
    );

    // Unknown host key: strict checking refuses, nothing runs.
    write_config(
        p,
        &fleet,
        &deploy_yml(std::slice::from_ref(&addr), "hi", "v1", ""),
    );
    let empty = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["reconcile", "--dry-run", "--known-hosts"])
        .arg(empty.path())
        .current_dir(p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("host key verification failed"));
    // A one-shot run reaches hosts in process, and is as strict: another
    // key listed for the host is a changed key; the host's own key listed
    // and also `@revoked` is refused.
    let real = std::fs::read_to_string(fleet.tb.known_hosts()).unwrap();
    let line = real
        .lines()
        .find(|l| l.split(' ').next() == Some(addr.as_str()))
        .expect("the host's known_hosts line")
        .to_string();
    let other = tempfile::tempdir().unwrap();
    let other_key = other.path().join("k");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other_key)
        .status()
        .unwrap();
    assert!(made.success());
    let other_pub = std::fs::read_to_string(other_key.with_extension("pub")).unwrap();
    let mut other_pub = other_pub.split(' ').take(2).collect::<Vec<_>>().join(" ");
    other_pub.insert_str(0, &format!("{addr} "));
    for (known, says) in [
        (format!("{other_pub}\n"), "has CHANGED"),
        (
            format!("{line}\n@revoked {line}\n"),
            "host key verification failed",
        ),
    ] {
        let file = other.path().join("known_hosts");
        std::fs::write(&file, &known).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["reconcile", "--dry-run", "--known-hosts"])
            .arg(&file)
            .current_dir(p)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{known}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{known}: {err}");
    }

    // An unreachable bastion: a clear connection error.
    write_config(
        p,
        &fleet,
        &deploy_yml(std::slice::from_ref(&addr), "hi", "v1", "").replace(
            "ssh:\n",
            &format!("ssh:\n  proxy: root@10.210.{}.250\n", fleet.tb.slot),
        ),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "reconcile",
            "--dry-run",
            "--connect-timeout",
            "2",
            "--known-hosts",
        ])
        .arg(fleet.tb.known_hosts())
        .env("RUST_LOG", "berth=debug")
        .current_dir(p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect"), "{err}");
    // Through OpenSSH (a jump host is its to make), and the log says so.
    assert!(
        err.contains("hosts are reached through OpenSSH: a jump host or ProxyCommand"),
        "{err}"
    );
    // Nothing ran: no docker network was ever created on the host.
    let nets = fleet
        .host(0)
        .docker_ok(&["network", "ls", "--format", "{{.Name}}"])
        .unwrap();
    assert!(!nets.contains("kamal"));
}

/// Observe every host via the Engine API (curl on the host), via the docker
/// CLI, and via the Engine API directly (the forwarded socket), and require
/// identical observations.
fn compare_probe_paths(fleet: &Fleet, project: &Path) {
    use berth::observe::{self, probe};
    use berth::remote::{Connections, SshOptions};
    let (cfg, desired) =
        berth::cli::load_desired_for(&project.join("config/deploy.yml"), None).unwrap();
    let mut ssh = SshOptions::from_config(&cfg.ssh, None);
    ssh.known_hosts = Some(fleet.tb.known_hosts());
    // The config's key, whatever agent the tests run beside.
    ssh.agent = false;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conns = std::sync::Arc::new(Connections::new(ssh.clone()));
        let mut by_shell = Vec::new();
        for h in &desired.hosts {
            let mut req = observe::probe_request(&desired, &h.host);
            let fast = conns
                .call(&h.host, "berth_probe", probe::SCRIPT, &req.args())
                .await
                .unwrap();
            // The persistent shell and a command of its own answer alike.
            let alone = conns
                .run(
                    &h.host,
                    &berth::remote::call_argv("berth_probe", probe::SCRIPT, &req.args()),
                )
                .await
                .unwrap();
            // (Compared parsed: Docker lists mounts in no fixed order.)
            assert_eq!(
                probe::parse(&fast.stdout, &req).unwrap(),
                probe::parse(&alone.stdout, &req).unwrap()
            );
            assert_eq!(fast.status, alone.status);
            req.force_cli = true;
            let cli = conns
                .call(&h.host, "berth_probe", probe::SCRIPT, &req.args())
                .await
                .unwrap();
            assert!(
                fast.success() && cli.success(),
                "{} {}",
                fast.stderr,
                cli.stderr
            );
            let (a, b) = (
                probe::parse(&fast.stdout, &req).unwrap(),
                probe::parse(&cli.stdout, &req).unwrap(),
            );
            assert!(!a.containers.is_empty());
            assert_eq!(a, b, "{}", h.host);
            by_shell.push(observe::ObservedHost {
                host: h.host.clone(),
                state: observe::HostState::Reached(a),
            });
        }
        let by_shell = observe::Observed { hosts: by_shell };

        // Then the Engine API directly, through the forwarded socket: at
        // first contact as soon as the probe's first line names the socket
        // (listed, then inspected), then listed and inspected together. The
        // same observation as the shell's, and really used.
        let n = desired.hosts.len() as u64;
        let before = conns.engine_batches();
        assert_eq!(observe::observe(&desired, &conns, 8).await, by_shell);
        let first = conns.engine_batches() - before;
        assert_eq!(first, 2 * n, "listed, then inspected");
        assert_eq!(observe::observe(&desired, &conns, 8).await, by_shell);
        assert_eq!(
            conns.engine_batches() - before - first,
            n,
            "listed and inspected together"
        );
        // A one-shot run (`reconcile --dry-run`) observes the same.
        let mut once = ssh.clone();
        once.lifetime = berth::remote::Lifetime::OneShot;
        let once = std::sync::Arc::new(Connections::new(once));
        assert_eq!(observe::observe(&desired, &once, 8).await, by_shell);
        assert_eq!(once.engine_batches(), 2 * n);
        // Each host over one in-process connection, no OpenSSH master.
        assert_eq!(once.reached_in_process(), n as usize);
        assert_eq!(
            once.phase_times()
                .get(&berth::remote::Phase::Connect)
                .map(|t| t.count),
            Some(n as u32)
        );
        once.close().await;
        // An ssh_config naming what only OpenSSH applies: OpenSSH for every
        // host, the same observation.
        let cfg_dir = tempfile::tempdir().unwrap();
        let user_cfg = cfg_dir.path().join("ssh_config");
        std::fs::write(&user_cfg, "Host *\n  Port 22\n").unwrap();
        let mut by_openssh = ssh.clone();
        by_openssh.lifetime = berth::remote::Lifetime::OneShot;
        by_openssh.config_files = vec![user_cfg];
        let once = std::sync::Arc::new(Connections::new(by_openssh));
        assert_eq!(observe::observe(&desired, &once, 8).await, by_shell);
        assert_eq!(once.reached_in_process(), 0);
        once.close().await;
        // Drift shows at once, as a fresh shell probe sees it.
        fleet.host(0).docker_ok(&["stop", "demo-web-v1"]).unwrap();
        let drifted = observe::observe(&desired, &conns, 8).await;
        assert_ne!(drifted, by_shell);
        let fresh = std::sync::Arc::new(Connections::new(ssh.clone()));
        assert_eq!(observe::observe(&desired, &fresh, 8).await, drifted);
        fresh.close().await;
        fleet.host(0).docker_ok(&["start", "demo-web-v1"]).unwrap();
        // An Engine API that fails: the shell answers instead, alike.
        let broken = std::sync::Arc::new(Connections::new(ssh.clone()));
        for h in &desired.hosts {
            broken.engine_found(&h.host, "/nonexistent/docker.sock");
        }
        let again = observe::observe(&desired, &broken, 8).await;
        assert_eq!(again, observe::observe(&desired, &conns, 8).await);
        assert!(broken.engine_batches() >= n);
        broken.close().await;
        // A Docker engine that does not answer (its socket gone) once its
        // socket is known: that host is unknown, never empty; the others are
        // seen; then it is seen again. (A kept Engine API connection would
        // outlive the socket's name, so none is made beforehand.)
        let warm = std::sync::Arc::new(Connections::new(ssh.clone()));
        let sock = fleet.host(0).docker_socket();
        warm.engine_found(&fleet.addrs()[0], &sock.to_string_lossy());
        let away = sock.with_extension("away");
        std::fs::rename(&sock, &away).unwrap();
        let down = observe::observe(&desired, &warm, 8).await;
        std::fs::rename(&away, &sock).unwrap();
        for h in &down.hosts {
            let unknown = matches!(h.state, observe::HostState::Unreachable(_));
            assert_eq!(unknown, h.host == fleet.addrs()[0], "{h:?}");
        }
        assert_eq!(observe::observe(&desired, &warm, 8).await, again);
        warm.close().await;
        conns.close().await;
    });
}
