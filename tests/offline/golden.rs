//! berth's rendering against REAL Kamal 2.11: every scenario under
//! `tests/golden/` holds a config and `kamal.json`, the `docker run` /
//! `kamal-proxy deploy` argv and env files that real Kamal produced on a
//! testbed (regenerate with `scripts/capture-golden.sh`). berth must render
//! exactly the same commands and files.

use std::collections::BTreeMap;
use std::path::Path;

use berth::config::secrets::{Secrets, SecretsOptions};
use berth::config::{self, LoadOptions};
use berth::desired::{self, RenderOptions};

#[derive(serde::Deserialize)]
struct Golden {
    commands: Vec<Command>,
    env_files: BTreeMap<String, BTreeMap<String, String>>,
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

/// (host → sorted argv list, host → env files) as berth renders them.
type Rendered = (
    BTreeMap<String, Vec<Vec<String>>>,
    BTreeMap<String, BTreeMap<String, String>>,
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
    for h in &d.hosts {
        let list = cmds.entry(h.host.clone()).or_default();
        let host_files = files.entry(h.host.clone()).or_default();
        for app in &h.apps {
            list.push(app.run_argv(Some(&format!("{}-HOSTNAME", h.host))));
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
    (cmds, files)
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
    (cmds, g.env_files)
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
        let (want_cmds, want_files) = golden(dir);
        let (got_cmds, got_files) = render(dir);
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
