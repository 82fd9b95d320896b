//! Property tests of the pure planner: a fleet that runs exactly the desired
//! state plans to nothing, and applying any plan's actions to a (randomly
//! drifted) observed state yields a state whose plan is empty.

use berth::config::secrets::Secrets;
use berth::config::{self, LoadOptions};
use berth::desired::{self, Desired, RenderOptions};
use berth::observe::{EnvValue, HostState, Observed};
use berth::plan::{self, PlanOptions};
use proptest::prelude::*;

fn desired_for(
    hosts: usize,
    workers: bool,
    proxy: bool,
    accessory: bool,
    version: &str,
) -> Desired {
    let host_list: Vec<String> = (1..=hosts).map(|i| format!("10.9.0.{i}")).collect();
    let mut y = format!(
        "service: app\nimage: app\nregistry:\n  server: reg:5000\n  username: u\n  password: [PW]\nbuilder:\n  arch: amd64\n\
         env:\n  clear:\n    MODE: prod\n  secret: [DB_PASSWORD]\nservers:\n  web:\n    hosts: [{}]\n    proxy: {proxy}\n",
        host_list.join(", ")
    );
    if workers {
        y.push_str(&format!(
            "  workers:\n    hosts: [{}]\n    cmd: bin/jobs --queue default\n",
            host_list[0]
        ));
    }
    if accessory {
        y.push_str(&format!(
            "accessories:\n  db:\n    image: postgres:16\n    host: {}\n    env:\n      secret: [DB_PASSWORD]\n    volumes: [db:/var/lib/postgresql]\n",
            host_list[hosts - 1]
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deploy.yml");
    std::fs::write(&file, y).unwrap();
    let env = |_: &str| None;
    let cfg = config::load(&LoadOptions {
        config_file: &file,
        destination: None,
        env: &env,
        files: &berth::checkout::Checkout::unconfined(),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let secrets = Secrets::from_pairs([("PW", "x"), ("DB_PASSWORD", "s3cret")]);
    desired::render(
        &cfg,
        &RenderOptions {
            version,
            secrets: &secrets,
            home: "/root",
        },
    )
    .unwrap()
}

/// Ways a fleet drifts, applied to the observed state.
#[derive(Clone, Debug)]
enum Drift {
    Stop(usize),
    Remove(usize),
    ChangeEnv(usize),
    TamperEnvFile(usize),
    DropRoute(usize),
    /// kamal-proxy routes to a container that is not the desired one.
    RouteElsewhere(usize),
    OldVersionRunning(usize),
    Orphan(usize),
}

fn drift() -> impl Strategy<Value = Drift> {
    prop_oneof![
        (0..50usize).prop_map(Drift::Stop),
        (0..50usize).prop_map(Drift::Remove),
        (0..50usize).prop_map(Drift::ChangeEnv),
        (0..50usize).prop_map(Drift::TamperEnvFile),
        (0..50usize).prop_map(Drift::DropRoute),
        (0..50usize).prop_map(Drift::RouteElsewhere),
        (0..50usize).prop_map(Drift::OldVersionRunning),
        (0..50usize).prop_map(Drift::Orphan),
    ]
}

fn apply_drift(observed: &mut Observed, d: &Drift) {
    let n = observed.hosts.len();
    let pick = |i: usize| i % n;
    let host = match d {
        Drift::Stop(i)
        | Drift::Remove(i)
        | Drift::ChangeEnv(i)
        | Drift::TamperEnvFile(i)
        | Drift::DropRoute(i)
        | Drift::RouteElsewhere(i)
        | Drift::OldVersionRunning(i)
        | Drift::Orphan(i) => pick(*i),
    };
    let HostState::Reached(obs) = &mut observed.hosts[host].state else {
        return;
    };
    let count = obs.containers.len();
    if count == 0 {
        return;
    }
    match d {
        Drift::Stop(i) => obs.containers[i % count].status = "exited".into(),
        Drift::Remove(i) => {
            obs.containers.remove(i % count);
        }
        Drift::ChangeEnv(i) => {
            obs.containers[i % count].env.insert(
                "MODE".into(),
                EnvValue {
                    sha256: "0".repeat(64),
                    clear: Some("debug".into()),
                },
            );
        }
        Drift::TamperEnvFile(i) => {
            let keys: Vec<String> = obs.env_files.keys().cloned().collect();
            if !keys.is_empty() {
                obs.env_files
                    .insert(keys[i % keys.len()].clone(), Some("f".repeat(64)));
            }
        }
        Drift::DropRoute(i) => {
            if let Some(routes) = obs.proxy_routes.as_mut()
                && !routes.is_empty()
            {
                let len = routes.len();
                routes.remove(i % len);
            }
        }
        Drift::RouteElsewhere(i) => {
            if let Some(routes) = obs.proxy_routes.as_mut()
                && !routes.is_empty()
            {
                let len = routes.len();
                routes[i % len].target = Some("0ld0ld0ld0ld:80".into());
            }
        }
        Drift::OldVersionRunning(i) => {
            let c = &mut obs.containers[i % count];
            if let Some(prefix) = c.name.strip_suffix("-v2") {
                c.name = format!("{prefix}-v1");
                c.image = c.image.replace(":v2", ":v1");
            }
        }
        Drift::Orphan(i) => {
            let mut c = obs.containers[i % count].clone();
            c.name = format!("app-gone-v{i}");
            c.labels.insert("service".into(), "app".into());
            c.labels.insert("role".into(), "gone".into());
            obs.containers.push(c);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn a_fleet_running_the_desired_state_plans_to_nothing(hosts in 1..5usize, workers: bool, proxy: bool, accessory: bool) {
        let d = desired_for(hosts, workers, proxy, accessory, "v2");
        let observed = plan::observed_from_desired(&d);
        let p = plan::plan(&d, &observed, &PlanOptions { prune: true, orphans: true });
        prop_assert!(p.in_sync(), "{:#?}", p);
    }

    #[test]
    fn applying_a_plan_converges(
        hosts in 1..5usize, workers: bool, proxy: bool, accessory: bool, prune: bool,
        drifts in proptest::collection::vec(drift(), 0..8),
    ) {
        let d = desired_for(hosts, workers, proxy, accessory, "v2");
        let mut observed = plan::observed_from_desired(&d);
        for x in &drifts {
            apply_drift(&mut observed, x);
        }
        let opts = PlanOptions { prune, orphans: true };
        let p = plan::plan(&d, &observed, &opts);
        let after = plan::simulate(&d, &observed, &p);
        let again = plan::plan(&d, &after, &opts);
        prop_assert!(again.actions.is_empty(), "drifts {:?}\nfirst plan {:#?}\nsecond plan {:#?}", drifts, p.actions, again.actions);
    }
}

#[test]
fn a_version_bump_replaces_every_app_unit_in_rolling_order() {
    let v1 = desired_for(3, true, true, false, "v1");
    let v2 = desired_for(3, true, true, false, "v2");
    let observed = plan::observed_from_desired(&v1);
    let p = plan::plan(&v2, &observed, &PlanOptions::default());
    let order: Vec<(String, String)> = p
        .actions
        .iter()
        .map(|a| (a.host.clone(), a.container.clone()))
        .collect();
    assert_eq!(
        order,
        [
            ("10.9.0.1", "app-web-v2"),
            ("10.9.0.2", "app-web-v2"),
            ("10.9.0.3", "app-web-v2"),
            ("10.9.0.1", "app-workers-v2"),
        ]
        .map(|(h, c)| (h.to_string(), c.to_string()))
    );
    assert!(
        p.actions
            .iter()
            .all(|a| a.kind == plan::ActionKind::Replace)
    );
}

#[test]
fn an_env_change_replaces_only_that_roles_units_and_names_the_key_never_a_secret() {
    let d = desired_for(2, true, false, false, "v1");
    let mut observed = plan::observed_from_desired(&d);
    for h in &mut observed.hosts {
        if let HostState::Reached(o) = &mut h.state {
            for c in o.containers.iter_mut().filter(|c| c.name == "app-web-v1") {
                c.env.insert(
                    "DB_PASSWORD".into(),
                    EnvValue {
                        sha256: "1".repeat(64),
                        clear: None,
                    },
                );
            }
        }
    }
    let p = plan::plan(&d, &observed, &PlanOptions::default());
    assert_eq!(p.actions.len(), 2);
    assert!(p.actions.iter().all(|a| a.container == "app-web-v1"));
    let text = plan::output::text(&p);
    assert!(text.contains("DB_PASSWORD"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    let json = plan::output::json(&p);
    assert!(!json.contains("s3cret"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// `apply::schedule` over real plans of drifted fleets: every action
    /// once, stages in rollout order (roles as `desired.roles` ranks them),
    /// no batch over the limit, each host's actions in plan order.
    #[test]
    fn a_schedule_walks_every_planned_action_once_in_rollout_order(
        hosts in 1..5usize, workers: bool, proxy: bool, accessory: bool, prune: bool,
        drifts in proptest::collection::vec(drift(), 0..8), batch in 1..4usize,
    ) {
        use berth::apply::schedule::{schedule, Stage};
        use berth::plan::Unit;
        let d = desired_for(hosts, workers, proxy, accessory, "v2");
        let mut observed = plan::observed_from_desired(&d);
        for x in &drifts {
            apply_drift(&mut observed, x);
        }
        let p = plan::plan(&d, &observed, &PlanOptions { prune, orphans: true });
        let s = schedule(&p, batch);
        let index = |a: &plan::Action| p.actions.iter().position(|x| std::ptr::eq(x, a)).unwrap();
        let order: Vec<usize> = s.stages.iter().flat_map(|st| st.actions()).map(index).collect();
        let mut sorted = order.clone();
        sorted.sort();
        prop_assert_eq!(sorted, (0..p.actions.len()).collect::<Vec<_>>());
        let rank = |st: &Stage| match st {
            Stage::Prep { .. } => (0, 0),
            Stage::Accessory(_) => (1, 0),
            Stage::Proxy(_) => (2, 0),
            Stage::Batch { role, .. } => (3, d.roles.iter().position(|r| r == role).unwrap()),
            Stage::Orphan(_) => (4, 0),
            Stage::Finish { .. } => (5, 0),
        };
        let ranks: Vec<_> = s.stages.iter().map(rank).collect();
        prop_assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{:?}", ranks);
        for st in &s.stages {
            if let Stage::Batch { role, actions } = st {
                prop_assert!(!actions.is_empty() && actions.len() <= batch);
                let of_role = Unit::App { role: role.to_string() };
                prop_assert!(actions.iter().all(|a| a.unit == of_role));
            }
        }
        for h in &s.hosts {
            let planned: Vec<usize> = (0..p.actions.len()).filter(|&i| p.actions[i].host == *h).collect();
            let run: Vec<usize> = order.iter().copied().filter(|&i| p.actions[i].host == *h).collect();
            prop_assert_eq!(planned, run, "host {}", h);
        }
    }
}

/// A tag that moved between pulls: one role's hosts run `app:v1` as two
/// different images. The plan says so, naming the role and each image's
/// hosts; one image everywhere says nothing.
#[test]
fn a_moved_tag_is_reported_naming_the_hosts() {
    let d = desired_for(3, false, false, false, "v1");
    let mut observed = plan::observed_from_desired(&d);
    let set_id = |observed: &mut Observed, host: usize, id: &str| {
        if let HostState::Reached(o) = &mut observed.hosts[host].state {
            for c in &mut o.containers {
                if c.name == "app-web-v1" {
                    c.image_id = id.to_string();
                }
            }
        }
    };
    for h in 0..3 {
        set_id(&mut observed, h, "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    }
    let p = plan::plan(&d, &observed, &PlanOptions::default());
    assert!(p.in_sync() && p.notes.is_empty(), "{:?}", p.notes);
    set_id(&mut observed, 2, "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbb");
    let p = plan::plan(&d, &observed, &PlanOptions::default());
    assert_eq!(
        p.notes,
        [
            "role web: reg:5000/app:v1 is a different image on different hosts (the tag moved between pulls; pin a digest): sha256:aaaaaaaaaaaa on 10.9.0.1, 10.9.0.2; sha256:bbbbbbbbbbbb on 10.9.0.3"
        ]
    );
    assert!(plan::output::text(&p).contains("10.9.0.3"));
}

/// A berth killed mid-boot leaves the new container running in sync, its env
/// file half-written and kamal-proxy still routing to the old version, which
/// is still running: the next plan rewrites the env file *and* moves the route
/// before the old version is stopped (it used to plan only the env file, so
/// the stop took the host out of service and the run still reported success).
#[test]
fn a_drifted_env_file_and_route_are_both_repaired_before_the_old_version_stops() {
    let d = desired_for(1, false, true, false, "v2");
    let mut observed = plan::observed_from_desired(&d);
    let HostState::Reached(obs) = &mut observed.hosts[0].state else {
        unreachable!()
    };
    let web = obs
        .containers
        .iter()
        .find(|c| c.name == "app-web-v2")
        .unwrap()
        .clone();
    let mut old = web.clone();
    old.name = "app-web-v1".into();
    old.id = "0ld0ld0ld0ld".into();
    old.image = old.image.replace(":v2", ":v1");
    obs.containers.push(old);
    for f in obs.env_files.values_mut() {
        *f = Some("f".repeat(64));
    }
    let routes = obs.proxy_routes.as_mut().unwrap();
    routes[0].target = Some("0ld0ld0ld0ld:80".into());
    let opts = PlanOptions {
        prune: true,
        orphans: true,
    };
    let p = plan::plan(&d, &observed, &opts);
    let kinds: Vec<(&str, &str)> = p
        .actions
        .iter()
        .map(|a| (a.kind.as_str(), a.container.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("write_env_file", "app-web-v2"),
            ("route", "app-web-v2"),
            ("stop", "app-web-v1")
        ],
        "{p:#?}"
    );
    let after = plan::simulate(&d, &observed, &p);
    let again = plan::plan(&d, &after, &opts);
    assert!(again.actions.is_empty(), "{:#?}", again.actions);
}
