//! Proof that the testbed is real enough: REAL Kamal 2.11 deploys the demo app
//! to a 3-host testbed, once without the proxy and once through the
//! kamal-proxy stand-in, with requests served throughout.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_testbed::{self as testbed, Host};
use support::{Fleet, KAMAL_COMMON, http_get, http_get_in};

fn container_ip(host: &Host, name: &str) -> String {
    host.docker_ok(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        name,
    ])
    .unwrap()
    .trim()
    .to_string()
}

fn running_names(host: &Host) -> Vec<String> {
    let out = host
        .docker_ok(&[
            "ps",
            "--filter",
            "label=service=demo",
            "--format",
            "{{.Names}}",
        ])
        .unwrap();
    let mut v: Vec<String> = out.lines().map(str::to_string).collect();
    v.sort();
    v
}

#[test]
fn kamal_deploys_without_proxy_and_its_cli_works_on_the_testbed() {
    let Some(fleet) = Fleet::up(3) else {
        return;
    };
    let project = fleet.project(
        &format!(
            "service: demo\nimage: demo\nservers:\n  web:\n    hosts: {{hosts}}\n    proxy: false\nreadiness_delay: 0\n{KAMAL_COMMON}"
        ),
        "KAMAL_REGISTRY_PASSWORD=unused\n",
    );
    let p = project.path();
    fleet.kamal_ok(p, &["deploy", "--skip-push", "--version", "v1"]);
    for h in &fleet.tb.hosts {
        assert_eq!(running_names(h), ["demo-web-v1"]);
        let ip = container_ip(h, "demo-web-v1");
        assert_eq!(
            http_get_in(h, &format!("http://{ip}/")).as_deref(),
            Some("demo v1\n")
        );
    }
    let details = fleet.kamal_ok(p, &["app", "details"]);
    for addr in fleet.addrs() {
        assert!(details.contains(&format!("App Host: {addr}")), "{details}");
    }
    assert_eq!(details.matches("demo-web-v1").count(), 3, "{details}");

    // The deploy lock, on the primary host's home.
    fleet.kamal_ok(p, &["lock", "acquire", "-m", "testing the lock"]);
    let status = fleet.kamal_ok(p, &["lock", "status"]);
    assert!(status.contains("testing the lock"), "{status}");
    let locked = fleet.kamal(p, &["deploy", "--skip-push", "--version", "v2"]);
    assert!(!locked.status.success(), "deploy must refuse while locked");
    fleet.kamal_ok(p, &["lock", "release"]);
    assert!(
        fleet
            .kamal_ok(p, &["lock", "status"])
            .contains("There is no deploy lock")
    );

    // A second version replaces the first; the old container is stopped.
    fleet.kamal_ok(p, &["deploy", "--skip-push", "--version", "v2"]);
    for h in &fleet.tb.hosts {
        assert_eq!(running_names(h), ["demo-web-v2"]);
        let ip = container_ip(h, "demo-web-v2");
        assert_eq!(
            http_get_in(h, &format!("http://{ip}/")).as_deref(),
            Some("demo v2\n")
        );
    }
    // Kamal's audit log landed in each host's own home.
    let audit = fleet.host(0).home().join(".kamal/demo-audit.log");
    let audit = std::fs::read_to_string(&audit).unwrap();
    assert!(audit.contains("[web] Booted app version v2"), "{audit}");

    fleet.kamal_ok(p, &["remove", "-y"]);
    for h in &fleet.tb.hosts {
        assert!(running_names(h).is_empty());
    }
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}

#[test]
fn kamal_switches_versions_through_the_stand_in_proxy_with_zero_failed_requests() {
    let Some(fleet) = Fleet::up(3) else {
        return;
    };
    let project = fleet.project(
        &format!(
            "service: demo\nimage: demo\nservers:\n  web:\n    hosts: {{hosts}}\nproxy:\n  app_port: 80\n  healthcheck:\n    path: /up\n    interval: 1\ndrain_timeout: 5\n{KAMAL_COMMON}"
        ),
        "KAMAL_REGISTRY_PASSWORD=unused\n",
    );
    let p = project.path();
    fleet.kamal_use_stand_in_proxy(p);
    fleet.kamal_ok(p, &["deploy", "--skip-push", "--version", "v1"]);
    let targets: Vec<String> = fleet.addrs().iter().map(|a| format!("{a}:80")).collect();
    for t in &targets {
        assert_eq!(
            http_get(t, "/", Some("demo.test")).as_deref(),
            Ok("demo v1\n")
        );
    }

    // Continuous requests against every host while Kamal rolls out v2.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let saw_v2 = Arc::new(AtomicUsize::new(0));
    let loaders: Vec<_> = targets
        .iter()
        .cloned()
        .map(|t| {
            let (stop, ok, failures, saw_v2) =
                (stop.clone(), ok.clone(), failures.clone(), saw_v2.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match http_get(&t, "/", Some("demo.test")) {
                        Ok(body) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if body == "demo v2\n" {
                                saw_v2.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => failures.lock().unwrap().push(format!("{t}: {e}")),
                    }
                }
            })
        })
        .collect();
    let deploy = fleet.kamal_ok(p, &["deploy", "--skip-push", "--version", "v2"]);
    // Keep the load on a little after the switch, until every host served v2.
    let deadline = Instant::now() + Duration::from_secs(10);
    testbed::poll(deadline, "v2 served", || {
        saw_v2.load(Ordering::Relaxed) >= 30
    })
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}\n{deploy}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "too few requests to prove anything"
    );
    assert!(deploy.contains("kamal-proxy deploy demo-web"), "{deploy}");
    for t in &targets {
        assert_eq!(
            http_get(t, "/", Some("demo.test")).as_deref(),
            Ok("demo v2\n")
        );
    }
    let details = fleet.kamal_ok(p, &["proxy", "details"]);
    assert!(details.matches("kamal-proxy").count() >= 3, "{details}");
    for h in &fleet.tb.hosts {
        assert_eq!(running_names(h), ["demo-web-v2"]);
    }
    assert_eq!(fleet.teardown(), Vec::<String>::new());
}
