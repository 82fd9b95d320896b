//! Every key that reaches a host converges: walking keys of `kamal docs`
//! that change what runs (docker `options` of roles, accessories and the
//! proxy, a role's env, labels and logging, an accessory's `port`, the
//! proxy's host and route settings), each change is
//! made in the config; the plan must name exactly that change (one action,
//! its unit, the flag or route setting); berth applies it; the host shows it
//! (`docker inspect`, not berth's own reading); the next plan is empty.
//! Removing a setting is a change too. At the end real Kamal reads the fleet.

use crate::support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;

use berth_testbed as testbed;
use serde_json::Value;
use support::{Fleet, KAMAL_COMMON, http_get};

/// The config's variable parts, each a block of YAML lines.
#[derive(Clone, Default)]
struct Knobs {
    web: &'static str,
    jobs: &'static str,
    kv: &'static str,
    proxy: &'static str,
    run: &'static str,
    interval: &'static str,
}

fn config(fleet: &Fleet, k: &Knobs) -> String {
    let host = &fleet.addrs()[0];
    let reg = fleet.tb.registry();
    format!(
        "service: demo\nimage: demo\nservers:\n  web:\n    hosts: [{host}]\n{web}  jobs:\n    hosts: [{host}]\n    proxy: false\n{jobs}\
         proxy:\n  app_port: 80\n  healthcheck:\n    path: /up\n    interval: {interval}\n{proxy}  run:\n    registry: {reg}\n    version: {pv}\n{run}\
         env:\n  clear:\n    GREETING: hello\n  secret: [DB_PASSWORD]\n\
         accessories:\n  kv:\n    image: {reg}/kv:1\n    host: {host}\n    volumes: [kv-data:/data]\n{kv}\
         deploy_timeout: 20\ndrain_timeout: 2\nreadiness_delay: 0\nx-berth:\n  version: v1\n{common}",
        web = k.web,
        jobs = k.jobs,
        kv = k.kv,
        proxy = k.proxy,
        run = k.run,
        interval = if k.interval.is_empty() {
            "1"
        } else {
            k.interval
        },
        pv = testbed::images::PROXY_VERSION,
        common = common(fleet),
    )
}

/// The registry and SSH parts every config here shares, for this fleet.
fn common(fleet: &Fleet) -> String {
    KAMAL_COMMON
        .replace("{registry}", &fleet.tb.registry())
        .replace("{key}", &fleet.tb.ssh_key().to_string_lossy())
}

fn berth(fleet: &Fleet, p: &Path, extra: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("reconcile")
        .arg("--known-hosts")
        .arg(fleet.tb.known_hosts())
        .args(extra)
        .current_dir(p)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One change: the knobs after it, and what the plan must say.
struct Step {
    what: &'static str,
    knobs: fn(&mut Knobs),
    kind: &'static str,
    container: &'static str,
    /// The reasons' kind, and the flags or settings they may name (the first
    /// must be among them).
    reason: &'static str,
    keys: &'static [&'static str],
    /// `docker inspect -f` on the container after the apply, and a substring
    /// its output must hold.
    inspect: Option<(&'static str, &'static str)>,
}

const STEPS: &[Step] = &[
    Step {
        what: "servers.web.options.memory added",
        knobs: |k| k.web = "    options:\n      memory: 256m\n",
        kind: "replace",
        container: "demo-web-v1",
        reason: "flag",
        keys: &["memory", "memory-swap"],
        inspect: Some(("{{.HostConfig.Memory}}", "268435456")),
    },
    Step {
        what: "servers.web.options cap-add and init added",
        knobs: |k| {
            k.web = "    options:\n      memory: 256m\n      cap-add: NET_ADMIN\n      init: true\n"
        },
        kind: "replace",
        container: "demo-web-v1",
        reason: "flag",
        keys: &["cap-add", "init"],
        inspect: Some((
            "{{.HostConfig.CapAdd}} {{.HostConfig.Init}}",
            "NET_ADMIN] true",
        )),
    },
    Step {
        what: "servers.web.options.memory removed",
        knobs: |k| k.web = "    options:\n      cap-add: NET_ADMIN\n      init: true\n",
        kind: "replace",
        container: "demo-web-v1",
        reason: "flag",
        keys: &["memory", "memory-swap"],
        inspect: Some(("{{.HostConfig.Memory}}", "0")),
    },
    Step {
        what: "servers.jobs.options.ulimit added",
        knobs: |k| k.jobs = "    options:\n      ulimit: nofile=1024:2048\n",
        kind: "replace",
        container: "demo-jobs-v1",
        reason: "flag",
        keys: &["ulimit"],
        inspect: Some((
            "{{range .HostConfig.Ulimits}}{{.Name}}={{.Soft}}:{{.Hard}}{{end}}",
            "nofile=1024:2048",
        )),
    },
    Step {
        what: "servers.jobs.options.add-host added",
        knobs: |k| {
            k.jobs = "    options:\n      ulimit: nofile=1024:2048\n      add-host: db.internal:10.0.0.5\n"
        },
        kind: "replace",
        container: "demo-jobs-v1",
        reason: "flag",
        keys: &["add-host"],
        inspect: Some(("{{.HostConfig.ExtraHosts}}", "db.internal:10.0.0.5")),
    },
    Step {
        what: "servers.jobs.env.clear added",
        knobs: |k| k.jobs = "    options:\n      ulimit: nofile=1024:2048\n      add-host: db.internal:10.0.0.5\n    env:\n      clear:\n        MODE: fast\n",
        kind: "replace",
        container: "demo-jobs-v1",
        reason: "env",
        keys: &["MODE"],
        inspect: Some(("{{.Config.Env}}", "MODE=fast")),
    },
    Step {
        what: "servers.jobs.labels added",
        knobs: |k| k.jobs = "    options:\n      ulimit: nofile=1024:2048\n      add-host: db.internal:10.0.0.5\n    env:\n      clear:\n        MODE: fast\n    labels:\n      team: ops\n",
        kind: "replace",
        container: "demo-jobs-v1",
        reason: "label",
        keys: &["team"],
        inspect: Some(("{{index .Config.Labels \"team\"}}", "ops")),
    },
    Step {
        what: "servers.jobs.logging.options changed",
        knobs: |k| k.jobs = "    options:\n      ulimit: nofile=1024:2048\n      add-host: db.internal:10.0.0.5\n    env:\n      clear:\n        MODE: fast\n    labels:\n      team: ops\n    logging:\n      options:\n        max-size: 20m\n",
        kind: "replace",
        container: "demo-jobs-v1",
        reason: "field",
        keys: &["log options"],
        inspect: Some(("{{.HostConfig.LogConfig.Config}}", "max-size:20m")),
    },
    Step {
        what: "accessories.kv.port added",
        knobs: |k| k.kv = "    port: \"127.0.0.1:16379:6379\"\n",
        kind: "reboot",
        container: "demo-kv",
        reason: "flag",
        keys: &["publish"],
        inspect: Some((
            "{{json .HostConfig.PortBindings}}",
            "\"HostPort\":\"16379\"",
        )),
    },
    Step {
        what: "accessories.kv.options.memory added",
        knobs: |k| k.kv = "    port: \"127.0.0.1:16379:6379\"\n    options:\n      memory: 64m\n",
        kind: "reboot",
        container: "demo-kv",
        reason: "flag",
        keys: &["memory", "memory-swap"],
        inspect: Some(("{{.HostConfig.Memory}}", "67108864")),
    },
    Step {
        what: "proxy.healthcheck.interval changed",
        knobs: |k| k.interval = "2",
        kind: "route",
        container: "demo-web-v1",
        reason: "route_setting",
        keys: &["health-check-interval"],
        inspect: None,
    },
    Step {
        what: "proxy.response_timeout added",
        knobs: |k| k.proxy = "  response_timeout: 10\n",
        kind: "route",
        container: "demo-web-v1",
        reason: "route_setting",
        keys: &["target-timeout"],
        inspect: None,
    },
    Step {
        what: "proxy.buffering added",
        knobs: |k| {
            k.proxy =
                "  response_timeout: 10\n  buffering:\n    requests: false\n    memory: 2000000\n"
        },
        kind: "route",
        container: "demo-web-v1",
        reason: "route_setting",
        keys: &["buffer-requests", "buffer-memory"],
        // Kamal buffers requests by default: turning it off is the change.,
        inspect: None,
    },
    Step {
        what: "proxy.forward_headers set",
        knobs: |k| k.proxy = "  response_timeout: 10\n  forward_headers: false\n  buffering:\n    requests: false\n    memory: 2000000\n",
        kind: "route",
        container: "demo-web-v1",
        reason: "route_setting",
        keys: &["forward-headers"],
        inspect: None,
    },
    Step {
        what: "proxy.host set",
        knobs: |k| k.proxy = "  host: demo.test\n  response_timeout: 10\n  forward_headers: false\n  buffering:\n    requests: false\n    memory: 2000000\n",
        kind: "route",
        container: "demo-web-v1",
        reason: "route_setting",
        keys: &["host"],
        inspect: None,
    },
    Step {
        what: "proxy.run.options.memory added",
        knobs: |k| k.run = "    options:\n      memory: 512m\n",
        kind: "reboot",
        container: "kamal-proxy",
        reason: "flag",
        keys: &["memory", "memory-swap"],
        inspect: Some(("{{.HostConfig.Memory}}", "536870912")),
    },
];

fn reason_key(r: &Value) -> String {
    r.get("flag")
        .or_else(|| r.get("setting"))
        .or_else(|| r.get("field"))
        .or_else(|| r.get("key"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

#[test]
fn every_key_that_reaches_a_host_converges_and_kamal_agrees() {
    let Some(fleet) = Fleet::up(1) else {
        return;
    };
    let project = fleet.project("", "KAMAL_REGISTRY_PASSWORD=unused\nDB_PASSWORD=s3cret\n");
    let p = project.path();
    let write = |k: &Knobs| std::fs::write(p.join("config/deploy.yml"), config(&fleet, k)).unwrap();
    let mut knobs = Knobs::default();
    write(&knobs);
    let out = berth(&fleet, p, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = berth(&fleet, p, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    for step in STEPS {
        (step.knobs)(&mut knobs);
        write(&knobs);
        let out = berth(&fleet, p, &["--dry-run", "--output", "json"]);
        assert_eq!(out.status.code(), Some(2), "{}: {}", step.what, text(&out));
        let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
        let actions = plan["actions"].as_array().unwrap();
        assert_eq!(actions.len(), 1, "{}: {plan:#}", step.what);
        let a = &actions[0];
        assert_eq!(a["kind"], step.kind, "{}: {a:#}", step.what);
        assert_eq!(a["container"], step.container, "{}: {a:#}", step.what);
        let reasons = a["reasons"].as_array().unwrap();
        assert!(
            reasons.iter().all(|r| r["kind"] == step.reason),
            "{}: {a:#}",
            step.what
        );
        let named: BTreeSet<String> = reasons.iter().map(reason_key).collect();
        let allowed: BTreeSet<String> = step.keys.iter().map(|s| s.to_string()).collect();
        assert!(
            named.contains(step.keys[0]) && named.is_subset(&allowed),
            "{}: names {named:?}, expected {allowed:?}",
            step.what
        );

        let out = berth(&fleet, p, &[]);
        assert_eq!(out.status.code(), Some(0), "{}: {}", step.what, text(&out));
        if let Some((template, want)) = step.inspect {
            let got = fleet
                .host(0)
                .docker_ok(&["inspect", "-f", template, step.container])
                .unwrap();
            assert!(got.contains(want), "{}: inspect says {got:?}", step.what);
        }
        let out = berth(&fleet, p, &["--dry-run"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: not converged: {}",
            step.what,
            text(&out)
        );
    }

    // The proxy rebooted last still routes the app, and Kamal reads it all.
    let addr = format!("{}:80", fleet.addrs()[0]);
    assert_eq!(
        http_get(&addr, "/", Some("demo.test")).as_deref(),
        Ok("demo v1\n"),
        "the app is not served after the proxy reboot"
    );
    let details = fleet.kamal_ok(p, &["app", "details"]);
    assert!(
        details.contains("demo-web-v1") && details.contains("demo-jobs-v1"),
        "{details}"
    );
    let kv = fleet.kamal_ok(p, &["accessory", "details", "kv"]);
    assert!(kv.contains("demo-kv") && kv.contains("16379"), "{kv}");
    let proxy = fleet.kamal_ok(p, &["proxy", "details"]);
    assert!(proxy.contains("kamal-proxy"), "{proxy}");
}

/// A role and an accessory removed from the config are orphans with their
/// reason: kept (and noted) without `x-berth.prune`, removed with it — the
/// accessory's env file with it, its data volume kept.
#[test]
fn a_removed_role_and_accessory_are_orphans_and_prune_removes_them() {
    let Some(fleet) = Fleet::up(1) else {
        return;
    };
    let host = fleet.addrs()[0].clone();
    let reg = fleet.tb.registry();
    let common = common(&fleet);
    let yml = |jobs_and_kv: bool, prune: bool| {
        let mut y = format!(
            "service: demo\nimage: demo\nservers:\n  web:\n    hosts: [{host}]\n    proxy: false\n"
        );
        if jobs_and_kv {
            y.push_str(&format!("  jobs:\n    hosts: [{host}]\n    proxy: false\n"));
            y.push_str(&format!(
                "accessories:\n  kv:\n    image: {reg}/kv:1\n    host: {host}\n    volumes: [kv-data:/data]\n"
            ));
        }
        y.push_str(&format!(
            "drain_timeout: 2\nreadiness_delay: 0\nx-berth:\n  version: v1\n  prune: {prune}\n{common}"
        ));
        y
    };
    let project = fleet.project("", "KAMAL_REGISTRY_PASSWORD=unused\n");
    let p = project.path();
    let write = |y: String| std::fs::write(p.join("config/deploy.yml"), y).unwrap();
    write(yml(true, false));
    let out = berth(&fleet, p, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let env_file = fleet
        .host(0)
        .home()
        .join(".kamal/apps/demo/env/accessories/kv.env");
    assert!(env_file.exists());

    // Removed, prune off: nothing to do, but the plan says what it keeps.
    write(yml(false, false));
    let out = berth(&fleet, p, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for note in [
        "demo-jobs-v1 runs but role jobs is no longer in the config (kept",
        "demo-kv runs but accessory kv is no longer in the config (kept",
    ] {
        assert!(text(&out).contains(note), "{note}: {}", text(&out));
    }

    // Prune on: both are removed, each with its reason.
    write(yml(false, true));
    let out = berth(&fleet, p, &["--dry-run", "--output", "json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let removals: BTreeSet<(String, String)> = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            assert_eq!(a["kind"], "remove", "{a:#}");
            (
                a["container"].as_str().unwrap().to_string(),
                a["reasons"][0]["why"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("demo-jobs-v1", "role jobs is no longer in the config"),
        ("demo-kv", "accessory kv is no longer in the config"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(removals, expected);
    let out = berth(&fleet, p, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let names = fleet
        .host(0)
        .docker_ok(&["ps", "-a", "--format", "{{.Names}} {{.State}}"])
        .unwrap();
    assert!(!names.contains("demo-kv"), "{names}");
    assert!(!names.contains("demo-jobs-v1 running"), "{names}");
    assert!(names.contains("demo-web-v1 running"), "{names}");
    assert!(
        !env_file.exists(),
        "the removed accessory's env file stayed"
    );
    let volumes = fleet
        .host(0)
        .docker_ok(&["volume", "ls", "--format", "{{.Name}}"])
        .unwrap();
    assert!(
        volumes.lines().any(|v| v == "kv-data"),
        "data volume removed: {volumes}"
    );
    let out = berth(&fleet, p, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Seconds of the day of an audit line's `[2026-12-01T13:51:26Z]` stamp.
fn audit_seconds(line: &str) -> Option<i64> {
    let t = line.split_once('T')?.1;
    let mut parts = t.get(..8)?.split(':').map(|p| p.parse::<i64>().ok());
    Some(parts.next()?? * 3600 + parts.next()?? * 60 + parts.next()??)
}

/// `boot.wait` with `boot.limit`: berth waits between batches, as Kamal does
/// between its host groups (it used to be parsed and ignored).
#[test]
fn boot_wait_pauses_between_batches() {
    let Some(fleet) = Fleet::up(2) else {
        return;
    };
    let common = common(&fleet);
    let yml = format!(
        "service: demo\nimage: demo\nservers:\n  web:\n    hosts: [{}]\n    proxy: false\n\
         boot:\n  limit: 1\n  wait: 3\ndrain_timeout: 2\nreadiness_delay: 0\nx-berth:\n  version: v1\n{common}",
        fleet.addrs().join(", ")
    );
    let project = fleet.project(&yml, "KAMAL_REGISTRY_PASSWORD=unused\n");
    let p = project.path();
    let out = berth(&fleet, p, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("waiting 3 s before the next batch (boot.wait)"),
        "{}",
        text(&out)
    );
    let booted = |i: usize| {
        let log =
            std::fs::read_to_string(fleet.host(i).home().join(".kamal/demo-audit.log")).unwrap();
        log.lines()
            .find(|l| l.contains("Booted app version v1"))
            .and_then(audit_seconds)
            .unwrap_or_else(|| panic!("no boot in {log}"))
    };
    let gap = (booted(1) - booted(0)).rem_euclid(86_400);
    assert!(gap >= 3, "the second batch booted {gap} s after the first");
}

/// `ssh.key_data` (keys given as text) and `ssh.config` naming files are
/// used to reach hosts (both were parsed and ignored: with no other key,
/// the hosts were unreachable).
#[test]
fn ssh_key_data_and_config_files_reach_the_hosts() {
    let Some(fleet) = Fleet::up(1) else {
        return;
    };
    let key = std::fs::read_to_string(fleet.tb.ssh_key()).unwrap();
    let indented: String = key.lines().map(|l| format!("      {l}\n")).collect();
    let head = format!(
        "service: demo\nimage: demo\nservers:\n  web:\n    hosts: [{}]\n    proxy: false\n\
         x-berth:\n  version: v1\nregistry:\n  server: {}\n  username: test\n  password: [KAMAL_REGISTRY_PASSWORD]\n\
         builder:\n  arch: amd64\n",
        fleet.addrs()[0],
        fleet.tb.registry()
    );
    let cases = [
        (
            "key_data",
            format!(
                "ssh:\n  user: root\n  keys_only: true\n  config: false\n  key_data:\n    - |\n{indented}"
            ),
        ),
        (
            "config files",
            "ssh:\n  user: root\n  config: [ssh/extra_config]\n".to_string(),
        ),
    ];
    for (what, ssh) in cases {
        let project = fleet.project(&format!("{head}{ssh}"), "KAMAL_REGISTRY_PASSWORD=unused\n");
        let p = project.path();
        std::fs::create_dir_all(p.join("ssh")).unwrap();
        std::fs::write(
            p.join("ssh/extra_config"),
            format!(
                "IdentityFile \"{}\"\nIdentitiesOnly yes\n",
                fleet.tb.ssh_key().display()
            ),
        )
        .unwrap();
        let out = berth(&fleet, p, &["--dry-run"]);
        // Fresh host: reached, and everything is to be created.
        assert_eq!(out.status.code(), Some(2), "{what}: {}", text(&out));
        assert!(
            text(&out).contains("+ app web demo-web-v1"),
            "{what}: {}",
            text(&out)
        );
        assert!(
            !text(&out).contains("BEGIN OPENSSH"),
            "{what}: the key leaked"
        );
    }
}

/// The deploy lock lives on the config's primary host, where Kamal looks,
/// even when `--hosts` leaves that host out: a lock a human took with
/// `kamal lock acquire` stops `berth reconcile --hosts <other host>`.
#[test]
fn the_lock_is_taken_on_the_primary_host_whatever_hosts_are_selected() {
    let Some(fleet) = Fleet::up(2) else {
        return;
    };
    let addrs = fleet.addrs();
    let yml = format!(
        "service: demo\nimage: demo\nservers:\n  web:\n    hosts: [{}]\n    proxy: false\n  jobs:\n    hosts: [{}]\n    proxy: false\n\
         drain_timeout: 2\nreadiness_delay: 0\nx-berth:\n  version: v1\n{{common}}",
        addrs[0], addrs[1]
    );
    let common = common(&fleet);
    let project = fleet.project(
        &yml.replace("{common}", &common),
        "KAMAL_REGISTRY_PASSWORD=unused\n",
    );
    let p = project.path();
    fleet.kamal_ok(p, &["lock", "acquire", "-m", "maintenance window"]);
    assert!(fleet.host(0).home().join(".kamal/lock-demo").is_dir());

    let out = berth(&fleet, p, &["--hosts", &addrs[1]]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("maintenance window"), "{}", text(&out));
    let names = fleet
        .host(1)
        .docker_ok(&["ps", "-a", "--format", "{{.Names}}"])
        .unwrap();
    assert!(
        !names.contains("demo-jobs"),
        "deployed under a held lock: {names}"
    );

    fleet.kamal_ok(p, &["lock", "release"]);
    let out = berth(&fleet, p, &["--hosts", &addrs[1]]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !fleet.host(0).home().join(".kamal/lock-demo").exists(),
        "lock left behind"
    );
}
