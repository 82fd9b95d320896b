//! `berth reconcile` converging real hosts, checked by berth's own dry-run and
//! by real Kamal 2.11: deploys, zero-downtime version bumps through the
//! kamal-proxy stand-in, drift made by `kamal deploy`, failing health, a
//! missing image, and berth killed with SIGKILL mid-rollout.

use crate::support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_testbed as testbed;
use support::{Fleet, KAMAL_COMMON, http_get};

fn config(fleet: &Fleet, version: &str, deploy_timeout: u64) -> String {
    format!(
        "service: demo\nimage: demo\nservers:\n  web:\n    hosts: [{hosts}]\n\
         proxy:\n  app_port: 80\n  healthcheck:\n    path: /up\n    interval: 1\n  run:\n    registry: {reg}\n    version: {pv}\n\
         env:\n  clear:\n    GREETING: hello\n  secret: [DB_PASSWORD]\n\
         accessories:\n  kv:\n    image: {reg}/kv:1\n    host: {first}\n    env:\n      clear:\n        KV_MODE: one\n    volumes: [kv-data:/data]\n\
         deploy_timeout: {deploy_timeout}\ndrain_timeout: 2\nreadiness_delay: 0\nx-berth:\n  version: {version}\n{common}",
        hosts = fleet.addrs().join(", "),
        first = fleet.addrs()[0],
        reg = fleet.tb.registry(),
        pv = testbed::images::PROXY_VERSION,
        common = KAMAL_COMMON
            .replace("{registry}", &fleet.tb.registry())
            .replace("{key}", &fleet.tb.ssh_key().to_string_lossy()),
    )
}

fn set_config(p: &Path, text: &str) {
    std::fs::write(p.join("config/deploy.yml"), text).unwrap();
}

fn berth(fleet: &Fleet, p: &Path, extra: &[&str]) -> Output {
    berth_cmd(fleet, p, extra).output().unwrap()
}

fn berth_cmd(fleet: &Fleet, p: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
    c.arg("reconcile")
        .arg("--known-hosts")
        .arg(fleet.tb.known_hosts())
        .args(extra)
        .current_dir(p);
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn serves(fleet: &Fleet, body: &str) -> bool {
    fleet
        .addrs()
        .iter()
        .all(|a| http_get(&format!("{a}:80"), "/", Some("demo.test")).as_deref() == Ok(body))
}

/// Continuous requests to every host, counting failures, until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(fleet: &Fleet) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = fleet
            .addrs()
            .into_iter()
            .map(|a| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match http_get(&format!("{a}:80"), "/", Some("demo.test")) {
                            Ok(_) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures.lock().unwrap().push(format!("{a}: {e}")),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            threads,
        }
    }

    /// Stop and return (successes, failures).
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failures.lock().unwrap().clone(),
        )
    }
}

#[test]
fn berth_deploys_rolls_versions_with_zero_failed_requests_and_kamal_agrees() {
    let Some(fleet) = Fleet::up(3) else {
        return;
    };
    let project = fleet.project("", "KAMAL_REGISTRY_PASSWORD=unused\nDB_PASSWORD=s3cret\n");
    let p = project.path();

    // Fresh hosts: berth deploys everything, then the fleet is in sync.
    set_config(p, &config(&fleet, "v1", 20));
    let out = berth(&fleet, p, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !text(&out).contains("s3cret"),
        "a secret leaked into the output"
    );
    assert_eq!(berth(&fleet, p, &["--dry-run"]).status.code(), Some(0));
    assert!(serves(&fleet, "demo v1\n"));
    // Real Kamal reads berth's fleet as its own.
    let version = fleet.kamal_ok(p, &["app", "version"]);
    assert_eq!(
        version.lines().filter(|l| l.trim() == "v1").count(),
        3,
        "{version}"
    );
    let details = fleet.kamal_ok(p, &["app", "details"]);
    assert_eq!(details.matches("demo-web-v1").count(), 3, "{details}");

    // A version bump through the proxy under continuous load: no failures.
    set_config(p, &config(&fleet, "v2", 20));
    let load = Load::start(&fleet);
    let out = berth(&fleet, p, &[]);
    let (ok, failures) = load.finish();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 30, "too few requests: {ok}");
    assert!(serves(&fleet, "demo v2\n"));
    assert_eq!(berth(&fleet, p, &["--dry-run"]).status.code(), Some(0));
    let audit =
        std::fs::read_to_string(fleet.host(0).home().join(".kamal/demo-audit.log")).unwrap();
    assert!(audit.contains("[web] Booted app version v2"), "{audit}");

    // Real `kamal deploy` of another version on top: berth sees the drift
    // back to the repo's version and converges it.
    fleet.kamal_ok(p, &["deploy", "--skip-push", "--version", "v3"]);
    assert!(serves(&fleet, "demo v3\n"));
    let out = berth(&fleet, p, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("demo-web-v3 → demo-web-v2"),
        "{}",
        text(&out)
    );
    let out = berth(&fleet, p, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(serves(&fleet, "demo v2\n"));

    // Self-healing beyond containers: a proxy route removed by hand is
    // restored, and an accessory whose spec changed is rebooted (Kamal never
    // does either on deploy).
    let h2 = fleet.host(1);
    h2.docker_ok(&["exec", "kamal-proxy", "kamal-proxy", "remove", "demo-web"])
        .unwrap();
    let out = berth(&fleet, p, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("route demo-web"), "{}", text(&out));
    set_config(
        p,
        &config(&fleet, "v2", 20).replace("KV_MODE: one", "KV_MODE: two"),
    );
    let out = berth(&fleet, p, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(serves(&fleet, "demo v2\n"));
    let env = fleet
        .host(0)
        .docker_ok(&[
            "inspect",
            "-f",
            "{{range .Config.Env}}{{println .}}{{end}}",
            "demo-kv",
        ])
        .unwrap();
    assert!(env.contains("KV_MODE=two"), "{env}");
    assert_eq!(berth(&fleet, p, &["--dry-run"]).status.code(), Some(0));
    set_config(p, &config(&fleet, "v2", 20));
    assert_eq!(berth(&fleet, p, &[]).status.code(), Some(0));

    // Hooks: a failing pre-deploy aborts before any host is touched ...
    let hooks = p.join(".kamal/hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let hook = |name: &str, body: &str| {
        use std::os::unix::fs::PermissionsExt;
        let f = hooks.join(name);
        std::fs::write(&f, body).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    hook("pre-deploy", "#!/bin/sh\necho 'not today' >&2\nexit 1\n");
    set_config(p, &config(&fleet, "v1", 20));
    let out = berth(&fleet, p, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("hook pre-deploy failed") && text(&out).contains("not today"),
        "{}",
        text(&out)
    );
    assert!(serves(&fleet, "demo v2\n"));
    // ... and every hook runs in order with Kamal's environment.
    let record = "#!/bin/sh\necho \"$(basename $0) $KAMAL_VERSION $KAMAL_HOSTS $KAMAL_SERVICE\" >> hooks.log\n";
    for name in ["pre-deploy", "pre-app-boot", "post-app-boot", "post-deploy"] {
        hook(name, record);
    }
    let out = berth(&fleet, p, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = std::fs::read_to_string(p.join("hooks.log")).unwrap();
    let names: Vec<&str> = log.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        names,
        ["pre-deploy", "pre-app-boot", "post-app-boot", "post-deploy"],
        "{log}"
    );
    assert!(
        log.lines()
            .all(|l| l.contains(" v1 ") && l.ends_with(" demo")),
        "{log}"
    );
    assert!(
        log.lines()
            .next()
            .unwrap()
            .contains(&fleet.addrs().join(",")),
        "{log}"
    );
    assert!(serves(&fleet, "demo v1\n"));
    std::fs::remove_dir_all(&hooks).unwrap();
    set_config(p, &config(&fleet, "v2", 20));
    assert_eq!(berth(&fleet, p, &[]).status.code(), Some(0));

    // A version whose health check never passes: exit 1 naming host and
    // reason; v2 keeps serving everywhere; no further batch rolled.
    set_config(p, &config(&fleet, "unhealthy", 3));
    let out = berth(&fleet, p, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("demo-web-unhealthy did not become healthy") && t.contains("10.210."),
        "{t}"
    );
    assert!(serves(&fleet, "demo v2\n"));

    // An image missing from the registry: a clear error, nothing stopped.
    set_config(p, &config(&fleet, "nope", 3));
    let out = berth(&fleet, p, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("cannot pull") && text(&out).contains("nothing was stopped"),
        "{}",
        text(&out)
    );
    assert!(serves(&fleet, "demo v2\n"));
    // Every run, failed ones too, closed its SSH masters on the way out.
    let masters: Vec<String> = testbed::slot_processes(fleet.tb.slot)
        .into_iter()
        .filter(|(_, cmd)| cmd.starts_with("ssh "))
        .map(|(_, cmd)| cmd)
        .collect();
    assert_eq!(masters, Vec::<String>::new());
    // And the lock was released each time: Kamal can take it.
    fleet.kamal_ok(p, &["lock", "acquire", "-m", "after berth"]);
    fleet.kamal_ok(p, &["lock", "release"]);
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}

#[test]
fn berth_killed_mid_rollout_converges_on_the_next_run_and_hosts_serve_throughout() {
    let Some(fleet) = Fleet::up(3) else {
        return;
    };
    let project = fleet.project("", "KAMAL_REGISTRY_PASSWORD=unused\nDB_PASSWORD=s3cret\n");
    let p = project.path();
    set_config(p, &config(&fleet, "v1", 20));
    assert_eq!(berth(&fleet, p, &[]).status.code(), Some(0));
    let load = Load::start(&fleet);

    // Kill at three points of a rollout: right after the lock, at the first
    // boot, and once the first host switched.
    let points = [
        "acquired the deploy lock",
        "booting demo-web-",
        "web: demo-web-",
    ];
    for (i, point) in points.iter().enumerate() {
        let version = ["v2", "v3", "v1"][i];
        // One host at a time, so a kill after the first switch lands
        // mid-rollout (the other hosts still take their turn).
        set_config(
            p,
            &config(&fleet, version, 20).replace(
                "readiness_delay: 0\n",
                "readiness_delay: 0\nboot:\n  limit: 1\n",
            ),
        );
        let mut child = berth_cmd(&fleet, p, &[])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut killed = false;
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if line.contains(point) {
                child.kill().unwrap(); // SIGKILL
                killed = true;
                break;
            }
        }
        child.wait().unwrap();
        assert!(killed, "never reached {point:?}");
        if i == 0 {
            // While berth's lock is held, real Kamal refuses to deploy.
            let out = fleet.kamal(p, &["deploy", "--skip-push", "--version", "v3"]);
            assert!(!out.status.success());
            assert!(text(&out).contains("Locked by: berth"), "{}", text(&out));
        }

        // The next run recovers berth's own stale lock and converges.
        let out = berth(&fleet, p, &[]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "after kill at {point:?}: {}",
            text(&out)
        );
        let t = text(&out);
        // Every kill point is after the lock was taken: the next run must
        // recognise berth's own stale lock (and say so), not fail on it.
        assert!(t.contains("stale deploy lock left by berth"), "{t}");
        // berth returned 0 only after every host's proxy switched, so the
        // new version must be served now; the bound is for a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(10);
        let served = testbed::poll(deadline, "new version served", || {
            serves(&fleet, &format!("demo {version}\n"))
        });
        if served.is_err() {
            // What each host serves and runs, to tell a berth that reported
            // convergence too early from a slow machine.
            let hosts: Vec<String> = fleet
                .tb
                .hosts
                .iter()
                .map(|h| {
                    let addr = h.addr.to_string();
                    format!(
                        "{addr}: {:?}; {:?}; route: {:?}",
                        http_get(&format!("{addr}:80"), "/", Some("demo.test")),
                        h.docker_ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]),
                        h.docker_ok(&["exec", "kamal-proxy", "kamal-proxy", "list"]),
                    )
                })
                .collect();
            panic!(
                "after kill at {point:?}, {version} not served:\n{}\nthe rerun said:\n{t}",
                hosts.join("\n")
            );
        }
        assert_eq!(berth(&fleet, p, &["--dry-run"]).status.code(), Some(0));
    }
    let (ok, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 30);

    // A lock held by a human is never taken.
    fleet.kamal_ok(p, &["lock", "acquire", "-m", "hands off"]);
    set_config(p, &config(&fleet, "v2", 20));
    let out = berth(&fleet, p, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("hands off"), "{}", text(&out));
    assert!(serves(&fleet, "demo v1\n"));
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}

#[test]
fn old_containers_and_their_images_are_pruned_beyond_retain_containers() {
    let Some(fleet) = Fleet::up(1) else {
        return;
    };
    let yml = |version: &str| {
        format!(
            "service: demo\nimage: demo\nservers:\n  web:\n    hosts: [{}]\n    proxy: false\nretain_containers: 1\nreadiness_delay: 0\nx-berth:\n  version: {version}\n{}",
            fleet.addrs()[0],
            KAMAL_COMMON
                .replace("{registry}", &fleet.tb.registry())
                .replace("{key}", &fleet.tb.ssh_key().to_string_lossy())
        )
    };
    let project = fleet.project("", "KAMAL_REGISTRY_PASSWORD=unused\n");
    let p = project.path();
    for v in ["v1", "v2", "v3"] {
        set_config(p, &yml(v));
        let out = berth(&fleet, p, &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let h = fleet.host(0);
    let containers = h
        .docker_ok(&["ps", "-a", "--format", "{{.Names}}"])
        .unwrap();
    let mut names: Vec<&str> = containers.lines().collect();
    names.sort();
    assert_eq!(
        names,
        ["demo-web-v2", "demo-web-v3"],
        "one old container retained"
    );
    let images = h
        .docker_ok(&[
            "image",
            "ls",
            "--filter",
            "label=service=demo",
            "--format",
            "{{.Tag}}",
        ])
        .unwrap();
    let mut tags: Vec<&str> = images.lines().collect();
    tags.sort();
    assert_eq!(
        tags,
        ["latest", "v2", "v3"],
        "v1's image is gone with its container"
    );
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}

/// `ssh.proxy` works: the target host's sshd admits only connections coming
/// from the jump host, and berth deploys to it (its ProxyJump is set for the
/// fleet host, not for the jump host itself, which would loop).
#[test]
fn berth_deploys_through_a_jump_host() {
    let Some(fleet) = Fleet::up(2) else {
        return;
    };
    let (jump, target) = (fleet.host(0), fleet.host(1));
    // Only the jump host may reach the target now.
    let cfg = target.dir.join("sshd_config");
    let mut sshd = std::fs::read_to_string(&cfg).unwrap();
    sshd.push_str(&format!("AllowUsers root@{}\n", jump.addr));
    std::fs::write(&cfg, sshd).unwrap();
    target.kill_sshd().unwrap();
    target.start_sshd().unwrap();
    let yml = |proxy: &str| {
        format!(
            "service: demo\nimage: demo\nservers:\n  web:\n    hosts: [{}]\n    proxy: false\nreadiness_delay: 0\nx-berth:\n  version: v1\n{}{proxy}",
            target.addr,
            KAMAL_COMMON
                .replace("{registry}", &fleet.tb.registry())
                .replace("{key}", &fleet.tb.ssh_key().to_string_lossy())
        )
    };
    let project = fleet.project("", "KAMAL_REGISTRY_PASSWORD=unused\n");
    let p = project.path();
    // Directly, the target refuses berth.
    set_config(p, &yml(""));
    let direct = berth(&fleet, p, &["--dry-run"]);
    assert_eq!(direct.status.code(), Some(1), "{}", text(&direct));
    assert!(
        text(&direct).contains("cannot connect"),
        "{}",
        text(&direct)
    );
    // Through the jump host it deploys.
    set_config(p, &yml(&format!("  proxy: root@{}\n", jump.addr)));
    let out = berth(&fleet, p, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let running = target.docker_ok(&["ps", "--format", "{{.Names}}"]).unwrap();
    assert_eq!(running.trim(), "demo-web-v1");
    let again = berth(&fleet, p, &["--dry-run"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}

/// A revision whose accessory file cannot be read is refused before any host
/// is touched: the running accessory stays up (it used to be removed, then
/// the file refused).
#[test]
fn a_refused_accessory_file_leaves_the_running_accessory_alone() {
    let Some(fleet) = Fleet::up(1) else {
        return;
    };
    let host = fleet.addrs()[0].clone();
    let yml = |mode: &str| {
        format!(
            "service: demo\nimage: demo\nservers:\n  web:\n    hosts: [{host}]\n    proxy: false\nreadiness_delay: 0\n\
             accessories:\n  kv:\n    image: {reg}/kv:1\n    host: {host}\n    env:\n      clear:\n        KV_MODE: {mode}\n    files: [config/kv.conf:/etc/kv.conf]\n\
             x-berth:\n  version: v1\n{}",
            KAMAL_COMMON
                .replace("{registry}", &fleet.tb.registry())
                .replace("{key}", &fleet.tb.ssh_key().to_string_lossy()),
            reg = fleet.tb.registry(),
        )
    };
    let project = fleet.project("", "KAMAL_REGISTRY_PASSWORD=unused\n");
    let p = project.path();
    std::fs::write(p.join("config/kv.conf"), "mode=one\n").unwrap();
    set_config(p, &yml("one"));
    let out = berth(&fleet, p, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let h = fleet.host(0);
    let id = || {
        h.docker_ok(&["ps", "-q", "--filter", "name=^demo-kv$"])
            .unwrap()
            .trim()
            .to_string()
    };
    let before = id();
    assert!(!before.is_empty());
    // The next revision changes the accessory (a reboot) and links its file
    // outside the repository.
    std::fs::remove_file(p.join("config/kv.conf")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", p.join("config/kv.conf")).unwrap();
    set_config(p, &yml("two"));
    let out = berth(&fleet, p, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("accessories.kv.files.0: config/kv.conf: resolves outside"),
        "{}",
        text(&out)
    );
    assert_eq!(id(), before, "the accessory kept running, untouched");
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}

/// `x-berth.version: tag@sha256:…` pulls the digest, not the tag: pinned
/// to v2's digest, "v1" runs v2's image; a pin the registry does not have
/// boots nothing and leaves the running version alone.
#[test]
fn a_pinned_digest_is_what_runs_and_an_unknown_one_boots_nothing() {
    let Some(fleet) = Fleet::up(1) else {
        return;
    };
    let h = fleet.host(0);
    let reg = fleet.tb.registry();
    let inspect = |r: &str, f: &str| h.docker_ok(&["image", "inspect", "-f", f, r]).unwrap();
    h.docker_ok(&["pull", "-q", &format!("{reg}/demo:v2")])
        .unwrap();
    let repo_digest = inspect(&format!("{reg}/demo:v2"), "{{index .RepoDigests 0}}");
    let digest = repo_digest.trim().split_once('@').unwrap().1.to_string();
    let v2_id = inspect(&format!("{reg}/demo:v2"), "{{.Id}}");
    h.docker_ok(&["rmi", &format!("{reg}/demo:v2")]).unwrap();
    let yml = |x_berth: &str| {
        format!(
            "service: demo\nimage: demo\nservers:\n  web:\n    hosts: [{}]\n    proxy: false\nreadiness_delay: 0\nx-berth:\n{x_berth}{}",
            fleet.addrs()[0],
            KAMAL_COMMON
                .replace("{registry}", &reg)
                .replace("{key}", &fleet.tb.ssh_key().to_string_lossy())
        )
    };
    let project = fleet.project("", "KAMAL_REGISTRY_PASSWORD=unused\n");
    let p = project.path();
    set_config(p, &yml(&format!("  version: v1@{digest}\n")));
    let out = berth(&fleet, p, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let running = h
        .docker_ok(&["inspect", "-f", "{{.Image}}", "demo-web-v1"])
        .unwrap();
    assert_eq!(running.trim(), v2_id.trim(), "the pin decides, not the tag");

    let nobody = format!("sha256:{}", "0".repeat(64));
    set_config(
        p,
        &yml(&format!("  version: v2\n  image_digest: {nobody}\n")),
    );
    let out = berth(&fleet, p, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("pull"), "{}", text(&out));
    let names = h
        .docker_ok(&["ps", "-a", "--format", "{{.Names}} {{.State}}"])
        .unwrap();
    assert_eq!(names.trim(), "demo-web-v1 running", "nothing booted");
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}
