//! `berth run` against a real bare Git repo and a real fleet: a pushed version
//! bump is deployed by polling and by a signed webhook; forged webhooks are
//! refused; drift shows in metrics and the status API, and is healed or only
//! reported depending on the mode; SIGTERM stops cleanly with the lock free.

use crate::support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_testbed as testbed;
use support::{Fleet, KAMAL_COMMON, free_port, http_get, metric, request};

fn git(dir: &Path, args: &[&str]) {
    support::git(dir, args);
}

/// A scratch directory holding berth's webhook secret (`hook-secret`) and
/// API token (`api-token`), and `work`, a clone of the testbed's repository.
pub(crate) fn workspace(fleet: &Fleet) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("webhook-secret"), "hook-secret\n").unwrap();
    std::fs::write(dir.path().join("api-token"), "api-token\n").unwrap();
    git(
        dir.path(),
        &["clone", "-q", &fleet.tb.git_file_url(), "work"],
    );
    let work = dir.path().join("work");
    (dir, work)
}

/// Push `version` of the demo app; the commit id.
pub(crate) fn push_version(work: &Path, fleet: &Fleet, version: &str) -> String {
    let yml = format!(
        "service: demo\nimage: demo\nservers:\n  web:\n    hosts: [{hosts}]\n\
         proxy:\n  app_port: 80\n  healthcheck:\n    path: /up\n    interval: 1\n  run:\n    registry: {reg}\n    version: {pv}\n\
         drain_timeout: 2\ndeploy_timeout: 5\nreadiness_delay: 0\nx-berth:\n  version: {version}\n{common}",
        hosts = fleet.addrs().join(", "),
        reg = fleet.tb.registry(),
        pv = testbed::images::PROXY_VERSION,
        common = KAMAL_COMMON
            .replace("{registry}", &fleet.tb.registry())
            .replace("{key}", &fleet.tb.ssh_key().to_string_lossy()),
    );
    support::push_project(work, &yml, &format!("deploy {version}"))
}

pub(crate) struct Berth {
    pub(crate) child: Child,
    pub(crate) port: u16,
}

impl Berth {
    pub(crate) fn start(fleet: &Fleet, dir: &Path, extra: &[&str]) -> Berth {
        let b = Berth::spawn(fleet, dir, extra);
        b.wait_ready(dir);
        b
    }

    pub(crate) fn spawn(fleet: &Fleet, dir: &Path, extra: &[&str]) -> Berth {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args([
                "run",
                "--repo",
                &fleet.tb.git_file_url(),
                "--app",
                "demo",
                "--listen",
            ])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--checkout")
            .arg(dir.join(format!("checkout-{port}")))
            .arg("--known-hosts")
            .arg(fleet.tb.known_hosts())
            .arg("--webhook-secret-file")
            .arg(dir.join("webhook-secret"))
            .arg("--api-token-file")
            .arg(dir.join("api-token"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("berth-{port}.log"))).unwrap())
            .spawn()
            .unwrap();
        Berth { child, port }
    }

    pub(crate) fn wait_ready(&self, dir: &Path) {
        let port = self.port;
        let ready = testbed::poll(Instant::now() + Duration::from_secs(30), "ready", || {
            request(port, "GET", "/readyz", &[], "").0 == 200
        });
        if ready.is_err() {
            let log =
                std::fs::read_to_string(dir.join(format!("berth-{port}.log"))).unwrap_or_default();
            panic!("berth run never became ready:\n{log}");
        }
    }

    pub(crate) fn metrics(&self) -> String {
        request(self.port, "GET", "/metrics", &[], "").1
    }

    /// `/api/v1/apps`, as text.
    pub(crate) fn apps(&self) -> String {
        request(self.port, "GET", "/api/v1/apps", &[], "").1
    }

    /// Ask for a sync of `app` with the API token; the HTTP status.
    pub(crate) fn sync(&self, app: &str) -> u16 {
        request(
            self.port,
            "POST",
            &format!("/api/v1/apps/{app}/sync"),
            &[("Authorization", "Bearer api-token".into())],
            "",
        )
        .0
    }

    /// Cycles of `app` (no destination) that ended with `result`.
    pub(crate) fn reconciles(&self, app: &str, result: &str) -> f64 {
        metric(
            &self.metrics(),
            &format!("berth_reconcile_total{{app=\"{app}\",destination=\"\",result=\"{result}\"}}"),
        )
        .unwrap_or(0.0)
    }

    /// SIGTERM; the exit status. A clean stop leaves no SSH control
    /// directory (sockets, ssh_config) behind.
    pub(crate) fn stop(mut self) -> Option<i32> {
        let pid = self.child.id();
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        let code = self.child.wait().unwrap().code();
        let control = std::env::temp_dir().join(format!("berth-ssh-{pid}"));
        assert!(!control.exists(), "{} left behind", control.display());
        code
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `docker events` processes running for this fleet's hosts (found by the
/// `DOCKER_HOST` their SSH sessions get).
fn docker_events_processes(fleet: &Fleet) -> Vec<u32> {
    let marker = format!("/berth-testbed/{}/", fleet.tb.slot);
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_events = args.first().is_some_and(|a| a.ends_with(b"docker"))
            && args.get(1) == Some(&&b"events"[..]);
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if is_events && String::from_utf8_lossy(&environ).contains(&marker) {
            found.push(pid);
        }
    }
    found
}

pub(crate) fn wait(limit: Duration, what: &str, cond: impl FnMut() -> bool) {
    testbed::poll(Instant::now() + limit, what, cond).unwrap();
}

pub(crate) fn serves(fleet: &Fleet, body: &str) -> bool {
    fleet
        .addrs()
        .iter()
        .all(|a| http_get(&format!("{a}:80"), "/", Some("demo.test")).as_deref() == Ok(body))
}

#[test]
fn berth_run_follows_the_repo_and_reports_drift() {
    let Some(fleet) = Fleet::up(3) else {
        return;
    };
    let (dir, work) = workspace(&fleet);
    push_version(&work, &fleet, "v1");

    // A long poll interval: only the first cycle, webhooks and syncs act.
    let berth = Berth::start(&fleet, dir.path(), &["--interval", "10m"]);
    wait(Duration::from_secs(30), "v1 deployed", || {
        serves(&fleet, "demo v1\n")
    });
    wait(Duration::from_secs(10), "in sync", || {
        metric(
            &berth.metrics(),
            "berth_app_in_sync{app=\"demo\",destination=\"\"}",
        ) == Some(1.0)
    });
    let m = berth.metrics();
    for a in fleet.addrs() {
        assert_eq!(
            metric(
                &m,
                &format!("berth_host_up{{app=\"demo\",destination=\"\",host=\"{a}\"}}")
            ),
            Some(1.0),
            "{m}"
        );
    }
    assert!(
        m.contains("berth_source_info{app=\"demo\",destination=\"\",revision=\""),
        "{m}"
    );

    // A forged webhook: 401, nothing happens.
    push_version(&work, &fleet, "v2");
    let body = r#"{"ref":"refs/heads/main"}"#;
    let (code, _) = request(
        berth.port,
        "POST",
        "/webhooks/github",
        &[("X-Hub-Signature-256", "sha256=deadbeef".into())],
        body,
    );
    assert_eq!(code, 401);
    let (code, _) = request(berth.port, "POST", "/webhooks/github", &[], body);
    assert_eq!(code, 401);
    std::thread::sleep(Duration::from_secs(2)); // nothing may happen: a negative check needs time
    assert!(serves(&fleet, "demo v1\n"));

    // A signed webhook: the push is live within seconds.
    let sig = berth::server::hmac_hex(b"hook-secret", body.as_bytes());
    let t = Instant::now();
    let (code, _) = request(
        berth.port,
        "POST",
        "/webhooks/github",
        &[("X-Hub-Signature-256", format!("sha256={sig}"))],
        body,
    );
    assert_eq!(code, 202);
    wait(Duration::from_secs(15), "v2 deployed", || {
        serves(&fleet, "demo v2\n")
    });
    eprintln!("webhook to served: {:?}", t.elapsed());

    // The write API wants the bearer token.
    assert_eq!(
        request(berth.port, "POST", "/api/v1/apps/demo/sync", &[], "").0,
        401
    );
    assert_eq!(berth.sync("demo"), 202);
    assert_eq!(berth.stop(), Some(0));
    // The lock is free after a clean stop.
    assert!(!fleet.host(0).home().join(".kamal/lock-demo").exists());

    // Detect mode: drift made by hand is reported (seen through the docker
    // event stream, not a poll: the interval is 10 minutes), not healed.
    let detect = Berth::start(
        &fleet,
        dir.path(),
        &["--interval", "10m", "--mode", "detect"],
    );
    let in_sync = |b: &Berth| {
        metric(
            &b.metrics(),
            "berth_app_in_sync{app=\"demo\",destination=\"\"}",
        )
    };
    wait(Duration::from_secs(10), "in sync", || {
        in_sync(&detect) == Some(1.0)
    });
    // The event streams attach right after the first cycle: wait until
    // every host's Docker engine has a listener.
    wait(Duration::from_secs(10), "event streams attached", || {
        fleet.tb.hosts.iter().all(|h| {
            h.docker_ok(&["info", "--format", "{{.NEventsListener}}"])
                .is_ok_and(|n| n.trim().parse::<u32>().is_ok_and(|n| n >= 1))
        })
    });
    // They come from the Engine API through the SSH connections: no
    // `docker events` process runs on the hosts.
    assert_eq!(docker_events_processes(&fleet), Vec::<u32>::new());
    fleet.host(1).docker_ok(&["stop", "demo-web-v2"]).unwrap();
    let t = Instant::now();
    wait(Duration::from_secs(10), "drift seen", || {
        in_sync(&detect) == Some(0.0)
    });
    let seen = t.elapsed();
    eprintln!("drift seen after {seen:?}");
    assert!(seen < Duration::from_secs(3), "drift took {seen:?} to show");
    let apps = detect.apps();
    assert!(
        apps.contains("demo-web-v2") && apps.contains("\"action\":\"start\""),
        "{apps}"
    );
    assert!(
        metric(
            &detect.metrics(),
            &format!(
                "berth_drift_units{{app=\"demo\",destination=\"\",host=\"{}\",role=\"web\",reason=\"state\"}}",
                fleet.addrs()[1]
            )
        ) == Some(1.0)
    );
    // A cycle more (asked for), and still not healed.
    let drifted = detect.reconciles("demo", "drifted");
    assert_eq!(detect.sync("demo"), 202);
    wait(Duration::from_secs(15), "another cycle", || {
        detect.reconciles("demo", "drifted") > drifted
    });
    assert!(
        fleet
            .host(1)
            .docker_ok(&["inspect", "-f", "{{.State.Status}}", "demo-web-v2"])
            .unwrap()
            .trim()
            == "exited"
    );
    assert_eq!(detect.stop(), Some(0));

    // Auto with self-heal: it is started again and the gauge returns to 1.
    let heal = Berth::start(&fleet, dir.path(), &["--interval", "1s"]);
    wait(Duration::from_secs(15), "healed", || {
        metric(
            &heal.metrics(),
            "berth_app_in_sync{app=\"demo\",destination=\"\"}",
        ) == Some(1.0)
    });
    assert!(serves(&fleet, "demo v2\n"));
    assert_eq!(heal.stop(), Some(0));
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}

#[test]
fn one_repo_many_apps_with_their_own_policy_an_apps_file_and_the_detect_cap() {
    let Some(fleet) = Fleet::up(2) else {
        return;
    };
    let (dir, work) = workspace(&fleet);
    two_projects(&fleet, &work);
    std::fs::write(
        work.join("berth.yml"),
        "apps:\n  shop:\n    path: shop\n  cache:\n    path: cache\n    policy:\n      mode: detect\n",
    )
    .unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-qm", "two apps"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);

    let berth = Berth::start(&fleet, dir.path(), &["--interval", "10m"]);
    let m = |b: &Berth, app: &str| {
        metric(
            &b.metrics(),
            &format!("berth_app_in_sync{{app=\"{app}\",destination=\"\"}}"),
        )
    };
    wait(Duration::from_secs(30), "shop deployed and in sync", || {
        m(&berth, "shop") == Some(1.0)
    });
    // `detect`: the cache app is planned, reported, and left alone.
    assert_eq!(m(&berth, "cache"), Some(0.0));
    let running = fleet
        .host(1)
        .docker_ok(&["ps", "--format", "{{.Names}}"])
        .unwrap();
    assert!(!running.contains("kv-web-1"), "{running}");
    let apps = berth.apps();
    assert!(
        apps.contains("\"app\":\"shop\"") && apps.contains("\"app\":\"cache\""),
        "{apps}"
    );
    assert!(
        apps.contains("kv-web-1"),
        "the cache app's plan is visible: {apps}"
    );
    assert_eq!(berth.stop(), Some(0));

    // `--apps-file` (a ConfigMap in Kubernetes) replaces the repo's
    // berth.yml: only its apps, with its policies.
    let apps_file = dir.path().join("apps.yml");
    std::fs::write(&apps_file, "apps:\n  kv-only:\n    path: cache\n").unwrap();
    let berth = Berth::start(
        &fleet,
        dir.path(),
        &[
            "--interval",
            "10m",
            "--apps-file",
            &apps_file.display().to_string(),
        ],
    );
    wait(Duration::from_secs(30), "kv-only deployed", || {
        m(&berth, "kv-only") == Some(1.0)
    });
    let apps = berth.apps();
    assert!(!apps.contains("\"app\":\"shop\""), "{apps}");
    assert_eq!(berth.stop(), Some(0));

    // `--mode detect` caps every berth.yml policy: drift is reported, not healed.
    let berth = Berth::start(
        &fleet,
        dir.path(),
        &["--interval", "1s", "--mode", "detect"],
    );
    wait(Duration::from_secs(30), "shop observed in sync", || {
        m(&berth, "shop") == Some(1.0)
    });
    drift_is_reported_and_left(&fleet, &berth);
    assert_eq!(berth.stop(), Some(0));
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}

/// Two Kamal projects in the clone `work` (not committed): `shop/` (service
/// demo v1 on the first host) and `cache/` (kv 1 on the second), no proxy.
fn two_projects(fleet: &Fleet, work: &Path) {
    let common = KAMAL_COMMON
        .replace("{registry}", &fleet.tb.registry())
        .replace("{key}", &fleet.tb.ssh_key().to_string_lossy());
    for (path, service, host, version) in [
        ("shop", "demo", &fleet.addrs()[0], "v1"),
        ("cache", "kv", &fleet.addrs()[1], "1"),
    ] {
        let yml = format!(
            "service: {service}\nimage: {service}\nservers:\n  web:\n    hosts: [{host}]\n    proxy: false\nreadiness_delay: 0\nx-berth:\n  version: {version}\n{common}"
        );
        std::fs::create_dir_all(work.join(path).join("config")).unwrap();
        std::fs::create_dir_all(work.join(path).join(".kamal")).unwrap();
        std::fs::write(work.join(path).join("config/deploy.yml"), yml).unwrap();
        std::fs::write(
            work.join(path).join(".kamal/secrets"),
            "KAMAL_REGISTRY_PASSWORD=unused\n",
        )
        .unwrap();
    }
}

/// With the shop app in `detect` mode: its container stopped by hand is
/// reported, cycle after cycle, and left stopped.
fn drift_is_reported_and_left(fleet: &Fleet, berth: &Berth) {
    let in_sync = || {
        metric(
            &berth.metrics(),
            "berth_app_in_sync{app=\"shop\",destination=\"\"}",
        )
    };
    fleet.host(0).docker_ok(&["stop", "demo-web-v1"]).unwrap();
    wait(Duration::from_secs(30), "the drift reported", || {
        in_sync() == Some(0.0)
    });
    let seen = berth.reconciles("shop", "drifted");
    wait(Duration::from_secs(30), "more cycles", || {
        berth.reconciles("shop", "drifted") >= seen + 2.0
    });
    let state = fleet
        .host(0)
        .docker_ok(&["inspect", "-f", "{{.State.Running}}", "demo-web-v1"])
        .unwrap();
    assert_eq!(state.trim(), "false", "detect mode healed the drift");
}

/// Write `berth.yml` into the clone `work`, commit and push it.
fn push_index(work: &Path, index: &str, message: &str) {
    std::fs::write(work.join("berth.yml"), index).unwrap();
    git(work, &["add", "-A"]);
    git(work, &["commit", "-qm", message]);
    git(work, &["push", "-q", "origin", "HEAD:main"]);
}

#[test]
fn a_merged_berth_yml_is_followed_live_and_a_broken_one_keeps_the_last_good_apps() {
    let Some(fleet) = Fleet::up(2) else {
        return;
    };
    let (dir, work) = workspace(&fleet);
    two_projects(&fleet, &work);
    push_index(&work, "apps:\n  shop:\n    path: shop\n", "one app");

    let mut berth = Berth::start(&fleet, dir.path(), &["--interval", "1s"]);
    let in_sync = |b: &Berth, app: &str| {
        metric(
            &b.metrics(),
            &format!("berth_app_in_sync{{app=\"{app}\",destination=\"\"}}"),
        )
    };
    let index_valid = |b: &Berth| metric(&b.metrics(), "berth_index_valid");
    let index = |b: &Berth| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&b.apps()).unwrap()["index"].clone()
    };
    let listed = |b: &Berth| -> Vec<String> {
        let doc: serde_json::Value = serde_json::from_str(&b.apps()).unwrap();
        doc["apps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["app"].as_str().unwrap().to_string())
            .collect()
    };
    wait(Duration::from_secs(30), "shop deployed", || {
        in_sync(&berth, "shop") == Some(1.0)
    });
    assert_eq!(listed(&berth), ["shop"]);
    assert_eq!(index_valid(&berth), Some(1.0));

    // A merged commit adds an app: the running berth deploys it.
    push_index(
        &work,
        "apps:\n  shop:\n    path: shop\n  cache:\n    path: cache\n",
        "add the cache app",
    );
    wait(
        Duration::from_secs(60),
        "cache deployed without a restart",
        || in_sync(&berth, "cache") == Some(1.0),
    );
    assert!(berth.child.try_wait().unwrap().is_none(), "berth restarted");
    let running = fleet
        .host(1)
        .docker_ok(&["ps", "--format", "{{.Names}}"])
        .unwrap();
    assert!(running.contains("kv-web-1"), "{running}");
    assert_eq!(listed(&berth), ["shop", "cache"]);

    // A broken berth.yml: reported with its line and key, both apps keep running.
    push_index(
        &work,
        "apps:\n  shop:\n    path: shop\n    polcy:\n      mode: detect\n",
        "a typo",
    );
    wait(Duration::from_secs(30), "the broken index reported", || {
        index_valid(&berth) == Some(0.0)
    });
    let error = index(&berth)["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("berth.yml:4:5: apps.shop.polcy: unknown key"),
        "{error}"
    );
    assert_eq!(listed(&berth), ["shop", "cache"]);
    let cycles = berth.reconciles("cache", "in_sync");
    wait(
        Duration::from_secs(30),
        "the cache app's loop still runs",
        || berth.reconciles("cache", "in_sync") >= cycles + 2.0,
    );

    // Fixed, with the cache app dropped and shop's policy changed: the cache
    // loop stops and its host is left as it is; shop only reports drift now.
    push_index(
        &work,
        "apps:\n  shop:\n    path: shop\n    policy:\n      mode: detect\n",
        "drop cache, shop detect-only",
    );
    wait(Duration::from_secs(30), "the fixed index in use", || {
        index_valid(&berth) == Some(1.0) && listed(&berth) == ["shop"]
    });
    assert_eq!(index(&berth)["removed"], serde_json::json!(["cache"]));
    assert_eq!(
        metric(&berth.metrics(), "berth_index_removed_apps"),
        Some(1.0)
    );
    let state = fleet
        .host(1)
        .docker_ok(&["inspect", "-f", "{{.State.Running}}", "kv-web-1"])
        .unwrap();
    assert_eq!(
        state.trim(),
        "true",
        "a removed app's containers are left running"
    );
    let apps = berth.apps();
    assert!(apps.contains("\"mode\":\"detect\""), "{apps}");
    drift_is_reported_and_left(&fleet, &berth);
    let log = std::fs::read_to_string(dir.path().join(format!("berth-{}.log", berth.port)))
        .unwrap_or_default();
    assert!(
        log.contains("app no longer in the index"),
        "the removal is logged: {log}"
    );
    assert_eq!(berth.stop(), Some(0));
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}

#[test]
fn an_unreachable_host_is_reported_the_others_converge_and_it_recovers() {
    let Some(fleet) = Fleet::up(3) else {
        return;
    };
    let (dir, work) = workspace(&fleet);
    push_version(&work, &fleet, "v1");
    let berth = Berth::start(&fleet, dir.path(), &["--interval", "1s"]);
    let in_sync = |b: &Berth| {
        metric(
            &b.metrics(),
            "berth_app_in_sync{app=\"demo\",destination=\"\"}",
        )
    };
    wait(Duration::from_secs(30), "in sync", || {
        in_sync(&berth) == Some(1.0)
    });

    // sshd dies on h2: berth_host_up drops, a new version still reaches h1 and h3.
    let h2 = fleet.host(1);
    let up = |b: &Berth, h: &str| {
        metric(
            &b.metrics(),
            &format!("berth_host_up{{app=\"demo\",destination=\"\",host=\"{h}\"}}"),
        )
    };
    h2.kill_sshd().unwrap();
    wait(Duration::from_secs(15), "h2 down", || {
        up(&berth, &h2.addr.to_string()) == Some(0.0)
    });
    push_version(&work, &fleet, "v2");
    let others: Vec<String> = [0, 2].iter().map(|i| fleet.addrs()[*i].clone()).collect();
    wait(Duration::from_secs(30), "h1 and h3 on v2", || {
        others.iter().all(|a| {
            http_get(&format!("{a}:80"), "/", Some("demo.test")).as_deref() == Ok("demo v2\n")
        })
    });
    assert_eq!(in_sync(&berth), Some(0.0), "a host is unknown: not in sync");
    assert_eq!(
        http_get(&format!("{}:80", h2.addr), "/", Some("demo.test")).as_deref(),
        Ok("demo v1\n"),
        "h2 keeps serving its version while unreachable"
    );

    // sshd back: berth reconnects by itself and converges h2 too.
    h2.start_sshd().unwrap();
    wait(Duration::from_secs(30), "recovered", || {
        in_sync(&berth) == Some(1.0)
    });
    assert!(serves(&fleet, "demo v2\n"));
    assert_eq!(up(&berth, &h2.addr.to_string()), Some(1.0));

    // SIGTERM in the middle of a rollout: the cycle finishes, every host
    // serves, the lock is released.
    push_version(&work, &fleet, "v3");
    wait(Duration::from_secs(30), "rollout started", || {
        fleet.addrs().iter().any(|a| {
            http_get(&format!("{a}:80"), "/", Some("demo.test")).as_deref() == Ok("demo v3\n")
        })
    });
    assert_eq!(berth.stop(), Some(0));
    for a in fleet.addrs() {
        let body = http_get(&format!("{a}:80"), "/", Some("demo.test")).unwrap();
        assert!(body == "demo v3\n" || body == "demo v2\n", "{a}: {body}");
    }
    assert!(
        !fleet.host(0).home().join(".kamal/lock-demo").exists(),
        "lock left behind"
    );
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}

#[test]
fn readiness_waits_for_a_first_observation_and_metrics_parse() {
    let Some(fleet) = Fleet::up(1) else {
        return;
    };
    let (dir, work) = workspace(&fleet);
    // A broken config: the app is never observed, so berth is not ready.
    std::fs::create_dir_all(work.join("config")).unwrap();
    std::fs::write(
        work.join("config/deploy.yml"),
        "service: demo\nimage: demo\nservrs: []\n",
    )
    .unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-qm", "broken"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    let berth = Berth::spawn(
        &fleet,
        dir.path(),
        &["--interval", "10m", "--log-format", "json"],
    );
    wait(Duration::from_secs(20), "the error is reported", || {
        berth.apps().contains("servrs")
    });
    assert_eq!(request(berth.port, "GET", "/readyz", &[], "").0, 503);
    assert_eq!(request(berth.port, "GET", "/healthz", &[], "").0, 200);
    assert!(berth.reconciles("demo", "error") >= 1.0);

    // The fix lands (webhook): ready, in sync.
    push_version(&work, &fleet, "v1");
    let body = "{}";
    let sig = berth::server::hmac_hex(b"hook-secret", body.as_bytes());
    assert_eq!(
        request(
            berth.port,
            "POST",
            "/webhooks/github",
            &[("X-Hub-Signature-256", format!("sha256={sig}"))],
            body
        )
        .0,
        202
    );
    berth.wait_ready(dir.path());
    wait(Duration::from_secs(20), "in sync", || {
        metric(
            &berth.metrics(),
            "berth_app_in_sync{app=\"demo\",destination=\"\"}",
        ) == Some(1.0)
    });

    // The exposition parses as Prometheus text, with the documented families.
    let text = berth.metrics();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("valid exposition");
    let names: std::collections::BTreeSet<&str> =
        scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for family in [
        "berth_app_in_sync",
        "berth_reconcile_total",
        "berth_reconcile_duration_seconds",
        "berth_host_up",
        "berth_source_info",
        "berth_last_apply_timestamp_seconds",
        "berth_last_success_timestamp_seconds",
    ] {
        assert!(names.contains(family), "{family} missing from {names:?}");
    }
    // A scraper that asks for OpenMetrics gets it: counters declared
    // without `_total`, the process metrics, the build, `# EOF`.
    let om = request(
        berth.port,
        "GET",
        "/metrics",
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3"
                .into(),
        )],
        "",
    )
    .1;
    for part in [
        "# TYPE berth_reconcile counter\n",
        "\nprocess_resident_memory_bytes ",
        "\nprocess_cpu_seconds_total ",
        "\nberth_build_info{version=",
    ] {
        assert!(om.contains(part), "{part} missing from\n{om}");
    }
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(
        text.contains("# TYPE berth_reconcile_total counter\n"),
        "{text}"
    );
    let port = berth.port;
    assert_eq!(berth.stop(), Some(0));
    // Logs are JSON, one object per line, and never carry a secret.
    let log = std::fs::read_to_string(dir.path().join(format!("berth-{port}.log"))).unwrap();
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON log line"))
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["message"] == "reconciled" && e["result"] == "applied"),
        "{log}"
    );
    assert!(
        events.iter().any(|e| e["message"] == "reconcile failed"),
        "{log}"
    );
    assert!(!log.contains("unused"), "a secret value reached the logs");
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}

#[test]
fn directory_mode_reacts_to_file_changes() {
    let Some(fleet) = Fleet::up(1) else {
        return;
    };
    let project = fleet.project(
        &format!("service: demo\nimage: demo\nservers:\n  web:\n    hosts: {{hosts}}\n    proxy: false\nreadiness_delay: 0\nx-berth:\n  version: v1\n{KAMAL_COMMON}"),
        "KAMAL_REGISTRY_PASSWORD=unused\n",
    );
    let p = project.path();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["run", "--app", "local", "--interval", "10m", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--dir")
        .arg(p)
        .arg("--known-hosts")
        .arg(fleet.tb.known_hosts())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let running = |name: &str| {
        fleet
            .host(0)
            .docker_ok(&["ps", "--format", "{{.Names}}"])
            .unwrap()
            .lines()
            .any(|l| l == name)
    };
    wait(Duration::from_secs(30), "v1 running", || {
        running("demo-web-v1")
    });
    // An edit in the working directory is applied without waiting for a poll.
    let yml = std::fs::read_to_string(p.join("config/deploy.yml"))
        .unwrap()
        .replace("version: v1", "version: v2");
    std::fs::write(p.join("config/deploy.yml"), yml).unwrap();
    wait(Duration::from_secs(20), "v2 running", || {
        running("demo-web-v2")
    });
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}

#[test]
fn a_failed_rollout_is_not_retried_until_a_new_revision() {
    let Some(fleet) = Fleet::up(1) else {
        return;
    };
    let (dir, work) = workspace(&fleet);
    push_version(&work, &fleet, "v1");
    let berth = Berth::start(&fleet, dir.path(), &["--interval", "1s"]);
    wait(Duration::from_secs(30), "v1", || {
        serves(&fleet, "demo v1\n")
    });

    // A version that never becomes healthy (within the 5 s deploy timeout).
    push_version(&work, &fleet, "unhealthy");
    let audit = fleet.host(0).home().join(".kamal/demo-audit.log");
    let boots = || {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            // A retry starts the container the failed boot left stopped.
            .filter(|l| {
                l.contains("Booted app version unhealthy")
                    || l.contains("Started app version unhealthy")
            })
            .count()
    };
    wait(Duration::from_secs(60), "the failed boot", || boots() == 1);
    wait(Duration::from_secs(30), "the failure reported", || {
        berth.reconciles("demo", "error") >= 1.0
    });
    // Several more cycles pass (the interval is 1 s): they report drift and
    // do not boot the same failing revision again.
    wait(Duration::from_secs(30), "later cycles", || {
        berth.reconciles("demo", "drifted") >= 3.0
    });
    assert_eq!(boots(), 1, "the failed revision was retried");
    assert!(serves(&fleet, "demo v1\n"));
    // A manual sync retries it on purpose.
    assert_eq!(berth.sync("demo"), 202);
    wait(Duration::from_secs(60), "retried on request", || {
        boots() == 2
    });
    assert_eq!(berth.stop(), Some(0));
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}

#[test]
fn a_container_that_exits_at_once_is_healed_five_times_then_left_alone_as_flapping() {
    let Some(fleet) = Fleet::up(1) else {
        return;
    };
    let (dir, work) = workspace(&fleet);
    // The container exits 3 at start while `flag/crash` exists; docker's
    // restart policy is off, so only berth restarts it.
    let flag = dir.path().join("flag");
    std::fs::create_dir_all(&flag).unwrap();
    let yml = format!(
        "service: demo\nimage: demo\nservers:\n  web:\n    hosts: [{host}]\n    proxy: false\n\
         \x20   cmd: sh -c 'if [ -e /flag/crash ]; then echo crashing >&2; exit 3; fi; exec httpd -f -p 80 -h /www'\n\
         \x20   options:\n      restart: \"no\"\nvolumes:\n  - {flag}:/flag\n\
         readiness_delay: 0\ndeploy_timeout: 1\nx-berth:\n  version: v1\n{common}",
        host = fleet.addrs()[0],
        flag = flag.display(),
        common = KAMAL_COMMON
            .replace("{registry}", &fleet.tb.registry())
            .replace("{key}", &fleet.tb.ssh_key().to_string_lossy()),
    );
    support::push_project(&work, &yml, "v1");
    let berth = Berth::start(&fleet, dir.path(), &["--interval", "1s"]);
    let in_sync = || {
        metric(
            &berth.metrics(),
            "berth_app_in_sync{app=\"demo\",destination=\"\"}",
        )
    };
    wait(Duration::from_secs(30), "deployed", || {
        in_sync() == Some(1.0)
    });
    let flapping = || -> serde_json::Value {
        let doc: serde_json::Value = serde_json::from_str(&berth.apps()).unwrap();
        doc["apps"][0]["flapping"].clone()
    };
    let since = fleet
        .host(0)
        .docker_ok(&["info", "-f", "{{.SystemTime}}"])
        .unwrap();
    let starts = || {
        let until = fleet
            .host(0)
            .docker_ok(&["info", "-f", "{{.SystemTime}}"])
            .unwrap();
        fleet
            .host(0)
            .docker_ok(&[
                "events",
                "--since",
                since.trim(),
                "--until",
                until.trim(),
                "--filter",
                "container=demo-web-v1",
                "--filter",
                "event=start",
                "--format",
                "{{.Time}}",
            ])
            .unwrap()
            .lines()
            .count()
    };

    std::fs::write(flag.join("crash"), "").unwrap();
    fleet.host(0).docker_ok(&["stop", "demo-web-v1"]).unwrap();
    wait(Duration::from_secs(90), "reported flapping", || {
        flapping().as_array().is_some_and(|f| !f.is_empty())
    });
    let reason = flapping()[0]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains("healed 5 times in 5m")
            && reason.contains("container exited")
            && reason.contains("last exit code 3"),
        "{reason}"
    );
    assert_eq!(
        metric(
            &berth.metrics(),
            &format!(
                "berth_flapping_units{{app=\"demo\",destination=\"\",host=\"{}\",role=\"web\"}}",
                fleet.addrs()[0]
            )
        ),
        Some(1.0)
    );
    assert!(berth.apps().contains("\"state\":\"flapping\""));
    // Left alone: more cycles, no more starts.
    let seen = berth.reconciles("demo", "drifted");
    wait(Duration::from_secs(30), "more cycles", || {
        berth.reconciles("demo", "drifted") >= seen + 3.0
    });
    assert_eq!(starts(), 5, "healed exactly five times");

    // A manual sync lifts it: with the cause gone, the heal takes.
    std::fs::remove_file(flag.join("crash")).unwrap();
    assert_eq!(berth.sync("demo"), 202);
    wait(Duration::from_secs(30), "healed by the sync", || {
        in_sync() == Some(1.0) && flapping() == serde_json::json!([])
    });
    let state = fleet
        .host(0)
        .docker_ok(&["inspect", "-f", "{{.State.Running}}", "demo-web-v1"])
        .unwrap();
    assert_eq!(state.trim(), "true");
    assert_eq!(berth.stop(), Some(0));
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}

#[test]
fn a_deploy_lock_held_by_someone_else_is_waited_for_then_the_revision_rolls() {
    let Some(fleet) = Fleet::up(1) else {
        return;
    };
    let (dir, work) = workspace(&fleet);
    push_version(&work, &fleet, "v1");
    let berth = Berth::start(&fleet, dir.path(), &["--interval", "1s"]);
    wait(Duration::from_secs(30), "v1", || {
        serves(&fleet, "demo v1\n")
    });

    // Someone holds Kamal's lock while a new revision arrives.
    fleet.kamal_ok(&work, &["lock", "acquire", "-m", "hands off"]);
    push_version(&work, &fleet, "v2");
    wait(Duration::from_secs(30), "waiting reported", || {
        let s = berth.apps();
        s.contains("waiting") && s.contains("hands off")
    });
    assert!(
        serves(&fleet, "demo v1\n"),
        "nothing touched under the lock"
    );

    // Released: the revision rolls on its own, no sync needed.
    fleet.kamal_ok(&work, &["lock", "release"]);
    wait(Duration::from_secs(60), "v2 after the release", || {
        serves(&fleet, "demo v2\n")
    });
    // The cycle that rolled it ends with the waiting error cleared.
    wait(Duration::from_secs(30), "the error cleared", || {
        !berth.apps().contains("hands off")
    });
    assert_eq!(berth.stop(), Some(0));
    drop(dir);
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}

#[test]
fn berth_run_never_copies_files_from_outside_the_repository_nor_runs_its_commands() {
    let Some(fleet) = Fleet::up(1) else {
        return;
    };
    let (dir, work) = workspace(&fleet);
    // A commit naming berth's own SSH key as an accessory file.
    let yml = format!(
        "service: demo\nimage: demo\nservers:\n  web:\n    hosts: [{host}]\n    proxy: false\n\
         accessories:\n  kv:\n    image: {reg}/kv:1\n    host: {host}\n    files:\n      - {key}:/data/key\n\
         x-berth:\n  version: v1\n{common}",
        host = fleet.addrs()[0],
        reg = fleet.tb.registry(),
        key = fleet.tb.ssh_key().display(),
        common = KAMAL_COMMON
            .replace("{registry}", &fleet.tb.registry())
            .replace("{key}", &fleet.tb.ssh_key().to_string_lossy()),
    );
    support::push_project(&work, &yml, "exfiltrate");
    // Refused when the revision is loaded, before any host is observed (so
    // the app is never ready).
    let berth = Berth::spawn(&fleet, dir.path(), &["--interval", "1s"]);
    let refused = testbed::poll(
        Instant::now() + Duration::from_secs(60),
        "the refusal reported",
        || {
            berth.apps().contains("accessories.kv.files.0")
                && berth.apps().contains("resolves outside the repository")
        },
    );
    assert!(refused.is_ok(), "{}", berth.apps());
    let copied = fleet.host(0).home().join("demo-kv/data/key").exists();
    assert!(!copied, "the key reached the host");

    // Nor does it run a command the repository names for SSH.
    let marker = dir.path().join("proxy-command-ran");
    let yml = std::fs::read_to_string(work.join("config/deploy.yml"))
        .unwrap()
        .replace(
            &format!("      - {}:/data/key\n", fleet.tb.ssh_key().display()),
            "      - config/deploy.yml:/data/cfg\n",
        )
        + &format!("  proxy_command: touch {}\n", marker.display());
    std::fs::write(work.join("config/deploy.yml"), yml).unwrap();
    git(&work, &["commit", "-qam", "proxy command"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    let refused = testbed::poll(
        Instant::now() + Duration::from_secs(60),
        "the proxy_command refused",
        || berth.apps().contains("ssh.proxy_command: runs a command"),
    );
    assert!(refused.is_ok(), "{}", berth.apps());
    assert!(!marker.exists(), "the repository's command ran");
    assert_eq!(berth.stop(), Some(0));
    drop(dir);
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}

/// Docker events wake an app that has an accessory. dockerd ANDs label
/// filters, and the watcher used to put every service label (the app's and
/// the accessory's) into one filter, so no event ever matched and drift was
/// seen only at the poll interval.
#[test]
fn drift_on_an_app_with_an_accessory_is_seen_through_docker_events() {
    let Some(fleet) = Fleet::up(1) else {
        return;
    };
    let (dir, work) = workspace(&fleet);
    let host = fleet.addrs()[0].clone();
    let yml = format!(
        "service: demo\nimage: demo\nservers:\n  web:\n    hosts: [{host}]\nreadiness_delay: 0\n\
         proxy:\n  app_port: 80\n  healthcheck:\n    path: /up\n    interval: 1\n  run:\n    registry: {reg}\n    version: {pv}\n\
         accessories:\n  kv:\n    image: {reg}/kv:1\n    host: {host}\n\
         x-berth:\n  version: v1\n{common}",
        reg = fleet.tb.registry(),
        pv = testbed::images::PROXY_VERSION,
        common = KAMAL_COMMON
            .replace("{registry}", &fleet.tb.registry())
            .replace("{key}", &fleet.tb.ssh_key().to_string_lossy()),
    );
    support::push_project(&work, &yml, "web and an accessory");
    // Deploy once, then watch in detect mode with a poll too long to matter.
    let deploy = Berth::start(&fleet, dir.path(), &["--interval", "10m"]);
    let in_sync = |b: &Berth| {
        metric(
            &b.metrics(),
            "berth_app_in_sync{app=\"demo\",destination=\"\"}",
        )
    };
    wait(Duration::from_secs(60), "deployed and in sync", || {
        in_sync(&deploy) == Some(1.0)
    });
    assert_eq!(deploy.stop(), Some(0));
    let detect = Berth::start(
        &fleet,
        dir.path(),
        &["--interval", "10m", "--mode", "detect"],
    );
    wait(Duration::from_secs(20), "in sync", || {
        in_sync(&detect) == Some(1.0)
    });
    // Two streams: the app's containers, and kamal-proxy's.
    wait(Duration::from_secs(10), "event streams attached", || {
        fleet
            .host(0)
            .docker_ok(&["info", "--format", "{{.NEventsListener}}"])
            .is_ok_and(|n| n.trim().parse::<u32>().is_ok_and(|n| n >= 2))
    });
    // Drift on the app's own container and on the accessory's.
    for (container, unit) in [("demo-web-v1", "web"), ("demo-kv", "accessory:kv")] {
        fleet.host(0).docker_ok(&["stop", container]).unwrap();
        let t = Instant::now();
        wait(Duration::from_secs(10), "drift seen", || {
            in_sync(&detect) == Some(0.0)
        });
        let seen = t.elapsed();
        eprintln!("{container}: drift seen after {seen:?}");
        assert!(
            seen < Duration::from_secs(5),
            "{container}: drift took {seen:?}"
        );
        assert!(detect.apps().contains(unit), "{}", detect.apps());
        fleet.host(0).docker_ok(&["start", container]).unwrap();
        wait(Duration::from_secs(10), "in sync again", || {
            in_sync(&detect) == Some(1.0)
        });
    }
    // A route removed by hand inside kamal-proxy: no container changes, the
    // proxy's exec events tell (berth's own `kamal-proxy list` does not).
    fleet
        .host(0)
        .docker_ok(&["exec", "kamal-proxy", "kamal-proxy", "remove", "demo-web"])
        .unwrap();
    let t = Instant::now();
    wait(Duration::from_secs(10), "route drift seen", || {
        in_sync(&detect) == Some(0.0)
    });
    let seen = t.elapsed();
    eprintln!("route: drift seen after {seen:?}");
    assert!(seen < Duration::from_secs(5), "route: drift took {seen:?}");
    assert!(
        detect.apps().contains("\"action\":\"route\""),
        "{}",
        detect.apps()
    );
    assert_eq!(detect.stop(), Some(0));
    drop(dir);
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}

#[test]
fn only_signed_revisions_are_applied_and_a_refusal_is_reported() {
    let Some(fleet) = Fleet::up(2) else {
        return;
    };
    let (dir, work) = workspace(&fleet);
    let key = support::ssh_signing_key(dir.path(), "deployer");
    let allowed = dir.path().join("allowed_signers");
    std::fs::write(
        &allowed,
        support::allowed_signer("deployer@example.com", "namespaces=\"git\"", &key),
    )
    .unwrap();
    let sign = |on: bool| {
        git(&work, &["config", "gpg.format", "ssh"]);
        git(&work, &["config", "user.signingkey", key.to_str().unwrap()]);
        git(
            &work,
            &[
                "config",
                "commit.gpgsign",
                if on { "true" } else { "false" },
            ],
        );
    };
    sign(true);
    push_version(&work, &fleet, "v1");
    let allowed_arg = allowed.to_string_lossy().to_string();
    let berth = Berth::start(
        &fleet,
        dir.path(),
        &[
            "--interval",
            "1s",
            "--verify",
            "head",
            "--allowed-signers",
            &allowed_arg,
        ],
    );
    let verified = |b: &Berth| {
        metric(
            &b.metrics(),
            "berth_source_verified{app=\"demo\",destination=\"\"}",
        )
    };
    wait(Duration::from_secs(40), "signed v1 deployed", || {
        serves(&fleet, "demo v1\n")
    });
    assert_eq!(verified(&berth), Some(1.0));
    assert!(
        berth.metrics().contains(
            "berth_source_signer_info{app=\"demo\",destination=\"\",fingerprint=\"SHA256:"
        ),
        "{}",
        berth.metrics()
    );

    // An unsigned version bump on top: refused, the fleet keeps serving v1.
    sign(false);
    push_version(&work, &fleet, "v2");
    let unsigned = support::git(&work, &["rev-parse", "HEAD"]);
    wait(Duration::from_secs(20), "unsigned v2 refused", || {
        verified(&berth) == Some(0.0)
    });
    let apps: serde_json::Value = serde_json::from_str(&berth.apps()).unwrap();
    let app = &apps["apps"][0];
    let refusal = app["source_refusal"].as_str().unwrap_or_default();
    assert!(
        refusal.contains(&format!("commit {unsigned} is not verified: not signed")),
        "{app}"
    );
    assert_eq!(app["signature"]["signer"], "deployer@example.com", "{app}");
    assert!(
        app["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("not signed")
    );
    // Polled every second: give it cycles to do something wrong.
    let before = berth.reconciles("demo", "error");
    wait(Duration::from_secs(20), "more refused cycles", || {
        berth.reconciles("demo", "error") >= before + 3.0
    });
    assert!(serves(&fleet, "demo v1\n"));
    let log =
        std::fs::read_to_string(dir.path().join(format!("berth-{}.log", berth.port))).unwrap();
    assert!(log.contains(&format!("commit {unsigned}")), "{log}");

    // Signed, but a secret references a variable berth's environment lacks:
    // refused with file:line and the variable; nothing changes on a host.
    // (The tree still holds the unsigned commit's v2: only the secrets
    // stop this signed commit from deploying it.)
    sign(true);
    std::fs::write(
        work.join(".kamal/secrets"),
        "KAMAL_REGISTRY_PASSWORD=unused\nAPI_KEY=$BERTH_TEST_NEVER_SET\n",
    )
    .unwrap();
    git(&work, &["commit", "-qam", "reference an unset variable"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    wait(Duration::from_secs(20), "unset variable refused", || {
        berth
            .apps()
            .contains(".kamal/secrets:2: API_KEY: $BERTH_TEST_NEVER_SET is not set")
    });
    assert_eq!(verified(&berth), Some(1.0));
    assert!(serves(&fleet, "demo v1\n"));

    // A signed bump with everything set: deployed (the testbed has demo:v1..v3).
    push_version(&work, &fleet, "v3");
    let deployed = testbed::poll(Instant::now() + Duration::from_secs(40), "v3", || {
        serves(&fleet, "demo v3\n")
    });
    if deployed.is_err() {
        let log = std::fs::read_to_string(dir.path().join(format!("berth-{}.log", berth.port)))
            .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        panic!(
            "signed v3 not deployed: {}\n{}",
            berth.apps(),
            tail.join("\n")
        );
    }
    assert_eq!(berth.stop(), Some(0));
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}
