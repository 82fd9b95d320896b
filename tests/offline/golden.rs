//! berth's rendering against REAL Kamal (2.11, and 2.12 where the scenario
//! says `kamal=2.12`): every scenario under `tests/golden/` holds a config
//! and `kamal.json`, the `docker run` / `kamal-proxy deploy` argv and env
//! files that real Kamal produced on a testbed, and with `redeploy=` the
//! `docker stop` it ran on the old containers (regenerate with
//! `scripts/capture-golden.sh`). berth must render exactly the same.

use std::collections::BTreeMap;
use std::path::Path;

use berth::config::secrets::{Secrets, SecretsOptions};
use berth::config::{self, LoadOptions};
use berth::desired::{self, RenderOptions};

#[derive(serde::Deserialize)]
struct Golden {
    kamal: String,
    commands: Vec<Command>,
    #[serde(default)]
    stops: Vec<Stop>,
    env_files: BTreeMap<String, BTreeMap<String, String>>,
}

/// `docker stop …` as Kamal ran it on `container` (the scenario's version).
#[derive(serde::Deserialize)]
struct Stop {
    host: String,
    container: String,
    argv: Vec<String>,
}

#[derive(serde::Deserialize)]
struct Command {
    host: String,
    argv: Vec<String>,
}

fn scenario_value(dir: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("scenario")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
}

/// (host → sorted argv list, host → env files, (host, container) → `docker
/// stop` argv) as berth renders them.
type Rendered = (
    BTreeMap<String, Vec<Vec<String>>>,
    BTreeMap<String, BTreeMap<String, String>>,
    BTreeMap<(String, String), Vec<String>>,
);

fn render(dir: &Path) -> Rendered {
    let destination = scenario_value(dir, "destination");
    let version = scenario_value(dir, "version").expect("scenario version");
    let env = |_: &str| None;
    let cfg = config::load(&LoadOptions {
        config_file: &dir.join("config/deploy.yml"),
        destination: destination.as_deref(),
        env: &env,
        files: &berth::checkout::Checkout::unconfined(),
    })
    .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let secrets = Secrets::load(
        &dir.join(".kamal/secrets"),
        &SecretsOptions {
            destination: destination.as_deref(),
            commands: berth::config::secrets::Commands::Refuse,
            files: &berth::checkout::Checkout::unconfined(),
            age_keys: None,
            env: &env,
        },
    )
    .expect("secrets");
    let with_accessories = scenario_value(dir, "accessories").is_some();
    // `proxy=run`: the proxy boots from `proxy.run` (a plain `docker run`
    // Kamal logs); with `kamal proxy boot_config` it boots from files on the
    // host through `xargs`, which the golden log cannot show as argv.
    let with_proxy_run = scenario_value(dir, "proxy").as_deref() == Some("run");
    let d = desired::render(
        &cfg,
        &RenderOptions {
            version: &version,
            secrets: &secrets,
            home: "/root",
        },
    )
    .expect("render");
    let mut cmds: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    let mut files: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut stops = BTreeMap::new();
    for h in &d.hosts {
        let list = cmds.entry(h.host.clone()).or_default();
        let host_files = files.entry(h.host.clone()).or_default();
        for app in &h.apps {
            list.push(app.run_argv(Some(&format!("{}-HOSTNAME", h.host))));
            // Kamal pipes the container in (`| xargs docker stop …`).
            let mut stop = app.stop_argv("");
            stop.pop();
            stops.insert((h.host.clone(), app.container_name.clone()), stop);
            if let Some(route) = &app.proxy {
                list.push(route.deploy_argv("CONTAINER_ID"));
            }
            host_files.insert(
                app.env_file.path.clone(),
                app.env_file.contents.expose().to_string(),
            );
        }
        if with_proxy_run && let Some(proxy) = &h.proxy {
            list.push(proxy.run_argv.clone());
        }
        if with_accessories {
            for acc in &h.accessories {
                list.push(acc.run_argv.clone());
                host_files.insert(
                    acc.env_file.path.clone(),
                    acc.env_file.contents.expose().to_string(),
                );
            }
        }
        list.sort();
    }
    cmds.retain(|_, v| !v.is_empty());
    files.retain(|_, v| !v.is_empty());
    (cmds, files, stops)
}

fn golden(dir: &Path) -> Rendered {
    let text = std::fs::read_to_string(dir.join("kamal.json")).expect("kamal.json");
    let g: Golden = serde_json::from_str(&text).expect("golden json");
    let mut cmds: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    for c in g.commands {
        // Kamal leaves `$PWD` to the remote shell; berth runs no shell and
        // renders the home directory (root's, on the testbed) itself.
        let argv = c
            .argv
            .iter()
            .map(|a| a.replace("$PWD/", "/root/"))
            .collect();
        cmds.entry(c.host).or_default().push(argv);
    }
    for v in cmds.values_mut() {
        v.sort();
    }
    let stops = g
        .stops
        .into_iter()
        .map(|s| ((s.host, s.container), s.argv))
        .collect();
    (cmds, g.env_files, stops)
}

fn kamal_of(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("kamal.json")).expect("kamal.json");
    let g: Golden = serde_json::from_str(&text).expect("golden json");
    g.kamal
}

#[test]
fn berth_renders_what_real_kamal_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut scenarios: Vec<_> = std::fs::read_dir(&root)
        .expect("tests/golden")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("kamal.json").exists())
        .collect();
    scenarios.sort();
    assert!(
        scenarios.len() >= 8,
        "golden scenarios missing: {scenarios:?}"
    );
    let mut failures = Vec::new();
    for dir in &scenarios {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let (want_cmds, want_files, want_stops) = golden(dir);
        let (got_cmds, got_files, mut got_stops) = render(dir);
        if want_stops.is_empty() {
            got_stops.clear();
        }
        if want_stops != got_stops {
            failures.push(format!(
                "{name}: docker stop differs\nkamal: {want_stops:#?}\nberth: {got_stops:#?}"
            ));
        }
        let wanted =
            scenario_value(dir, "kamal").map_or("2.11.0".to_string(), |v| format!("{v}.0"));
        if kamal_of(dir) != wanted {
            failures.push(format!(
                "{name}: captured from Kamal {}, the scenario says {wanted}",
                kamal_of(dir)
            ));
        }
        if want_cmds != got_cmds {
            let (want, got) = (format!("{want_cmds:#?}"), format!("{got_cmds:#?}"));
            let diff = similar::TextDiff::from_lines(want.as_str(), got.as_str())
                .unified_diff()
                .header("kamal", "berth")
                .to_string();
            failures.push(format!("{name}: commands differ\n{diff}"));
        }
        if want_files != got_files {
            failures.push(format!(
                "{name}: env files differ\nkamal: {want_files:#?}\nberth: {got_files:#?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
