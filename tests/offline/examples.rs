//! Every example under `examples/` must keep working, checked three ways:
//!
//! - every Kamal project (any directory holding `config/deploy.yml`, found by
//!   walking, so a new example is covered without touching this file) and
//!   each of its destinations: `berth validate` and `berth render --output
//!   json` succeed, and REAL Kamal 2.11 (`kamal config`) accepts the same
//!   config and agrees with berth on roles, hosts, image and accessories;
//!   plus concrete facts per example (the workers role has no proxy, ...);
//! - `examples/multi-app/berth.yml` loads with the expected apps and policies;
//! - every `berth …` command in the CI examples uses a subcommand and flags
//!   that berth's `--help` lists.
//!
//! Real Kamal is `$BERTH_KAMAL`, else `/opt/kamal-venv/bin/kamal`
//! (scripts/install-deps.sh installs it); without it these tests fail.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use berth::config::yaml::{self, Node, Scalar, Value};
use berth::controller::Mode;
use serde_json::Value as Json;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn berth() -> Command {
    Command::new(env!("CARGO_BIN_EXE_berth"))
}

fn kamal_bin() -> PathBuf {
    let bin = support::kamal_bin();
    assert!(
        bin.is_file(),
        "real Kamal not found at {} (set BERTH_KAMAL or run scripts/install-deps.sh): \
         the examples are checked against it",
        bin.display()
    );
    bin
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A Kamal project found under `examples/`.
struct Project {
    /// Relative to `examples/`, e.g. `multi-app/storefront`.
    name: String,
    root: PathBuf,
    /// From `config/deploy.<dest>.yml`.
    destinations: Vec<String>,
}

fn find_projects(dir: &Path, out: &mut Vec<Project>) {
    if dir.join("config/deploy.yml").is_file() {
        let mut destinations: Vec<String> = std::fs::read_dir(dir.join("config"))
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().ok()?;
                let dest = name.strip_prefix("deploy.")?.strip_suffix(".yml")?;
                Some(dest.to_string())
            })
            .collect();
        destinations.sort();
        out.push(Project {
            name: dir
                .strip_prefix(examples_dir())
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            root: dir.to_path_buf(),
            destinations,
        });
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    entries.sort();
    for p in entries {
        let hidden = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if !hidden {
            find_projects(&p, out);
        }
    }
}

fn projects() -> Vec<Project> {
    let mut out = Vec::new();
    find_projects(&examples_dir(), &mut out);
    out
}

/// Environment variables a project reads: `$VAR` in `.kamal/secrets*` and
/// `ENV["VAR"]` / `ENV.fetch("VAR"…)` in its config files. Each gets a
/// distinctive value, so the test can check no secret value is printed.
fn referenced_env(root: &Path) -> BTreeMap<String, String> {
    let mut vars = BTreeSet::new();
    let mut files: Vec<PathBuf> = Vec::new();
    for sub in [".kamal", "config"] {
        if let Ok(rd) = std::fs::read_dir(root.join(sub)) {
            files.extend(rd.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
        }
    }
    for f in files {
        let Ok(body) = std::fs::read_to_string(&f) else {
            continue;
        };
        let mut rest = body.as_str();
        while let Some(i) = rest.find(['$', 'E']) {
            let after = &rest[i..];
            let name_start = if let Some(a) = after.strip_prefix("${") {
                Some(a)
            } else if let Some(a) = after.strip_prefix('$') {
                Some(a)
            } else if let Some(a) = after.strip_prefix("ENV[\"") {
                Some(a)
            } else {
                after.strip_prefix("ENV.fetch(\"")
            };
            if let Some(a) = name_start {
                let name: String = a
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    vars.insert(name);
                }
            }
            rest = &rest[i + 1..];
        }
    }
    vars.into_iter()
        .map(|v| {
            let value = format!("example-secret-value-of-{v}");
            (v, value)
        })
        .collect()
}

/// What berth rendered, in the terms Kamal's `config` also prints.
struct Rendered {
    json: Json,
    version: String,
    image: String,
    hosts: Vec<String>,
    roles: BTreeSet<String>,
    accessories: BTreeSet<String>,
}

impl Rendered {
    fn host(&self, host: &str) -> &Json {
        self.json["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host"] == host)
            .unwrap_or_else(|| panic!("no host {host} in {:#}", self.json))
    }

    /// Every rendered container of `role`, on any host.
    fn apps(&self, role: &str) -> Vec<&Json> {
        let apps: Vec<&Json> = self.json["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|h| h["apps"].as_array().unwrap())
            .filter(|a| a["role"] == role)
            .collect();
        assert!(!apps.is_empty(), "no {role} containers rendered");
        apps
    }

    fn hosts_of(&self, role: &str) -> Vec<String> {
        self.json["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| {
                h["apps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a["role"] == role)
            })
            .map(|h| h["host"].as_str().unwrap().to_string())
            .collect()
    }

    fn accessory(&self, name: &str) -> (&str, &Json) {
        self.json["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|h| {
                h["accessories"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|a| a["name"] == name)
                    .map(|a| (h["host"].as_str().unwrap(), a))
            })
            .unwrap_or_else(|| panic!("no accessory {name} rendered"))
    }
}

fn strings(v: &Json) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn has_pair(argv: &[String], flag: &str, value: &str) -> bool {
    argv.windows(2).any(|w| w[0] == flag && w[1] == value)
}

fn env_file_keys(unit: &Json) -> Vec<String> {
    strings(&unit["env_file"]["keys"])
}

fn dest_args(dest: Option<&str>) -> Vec<String> {
    dest.map(|d| vec!["-d".to_string(), d.to_string()])
        .unwrap_or_default()
}

fn berth_validate(p: &Project, dest: Option<&str>) -> Output {
    berth()
        .arg("validate")
        .args(dest_args(dest))
        .current_dir(&p.root)
        .envs(referenced_env(&p.root))
        .output()
        .unwrap()
}

fn berth_render(p: &Project, dest: Option<&str>) -> Rendered {
    let env = referenced_env(&p.root);
    let out = berth()
        .args(["render", "--output", "json"])
        .args(dest_args(dest))
        .current_dir(&p.root)
        .envs(&env)
        .output()
        .unwrap();
    let what = format!("{} {dest:?}: berth render", p.name);
    assert!(out.status.success(), "{what}: {}", text(&out));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    // Secret values are read (they decide the env files) but never shown.
    for (var, value) in &env {
        assert!(
            !stdout.contains(value.as_str()),
            "{what}: prints the value of {var}"
        );
    }
    let json: Json = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(json["schema"], "berth.render/v1", "{what}");
    assert_eq!(json["destination"].as_str(), dest, "{what}");
    let version = json["version"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no version (x-berth.version missing?)"))
        .to_string();
    assert!(!version.is_empty(), "{what}");
    let image = json["image"].as_str().unwrap().to_string();
    let mut hosts = Vec::new();
    let mut roles = BTreeSet::new();
    let mut accessories = BTreeSet::new();
    for h in json["hosts"].as_array().unwrap() {
        hosts.push(h["host"].as_str().unwrap().to_string());
        for a in h["apps"].as_array().unwrap() {
            roles.insert(a["role"].as_str().unwrap().to_string());
            assert_eq!(a["image"], image.as_str(), "{what}");
        }
        for a in h["accessories"].as_array().unwrap() {
            accessories.insert(a["name"].as_str().unwrap().to_string());
        }
    }
    assert!(!hosts.is_empty() && !roles.is_empty(), "{what}: {json:#}");
    Rendered {
        json,
        version,
        image,
        hosts,
        roles,
        accessories,
    }
}

fn kamal_config(p: &Project, dest: Option<&str>, version: Option<&str>) -> Output {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(kamal_bin());
    cmd.args(["config", "-c", "config/deploy.yml"])
        .args(dest_args(dest))
        .current_dir(&p.root)
        .env("HOME", home.path())
        .envs(referenced_env(&p.root));
    if let Some(v) = version {
        cmd.args(["--version", v]);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", kamal_bin().display()))
}

/// A key of Kamal's `config` output (`:roles:` is a Ruby symbol key).
fn kamal_get<'a>(doc: &'a Node, key: &str) -> &'a Node {
    let Value::Map(entries) = &doc.value else {
        panic!("kamal config: not a hash: {doc:?}")
    };
    entries
        .iter()
        .find(|(k, _)| k.name == key || k.name.strip_prefix(':') == Some(key))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("kamal config: no :{key}"))
}

fn scalar(n: &Node) -> String {
    match &n.value {
        Value::Scalar(s) => s.to_ruby_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn kamal_strings(n: &Node) -> Vec<String> {
    match &n.value {
        Value::Seq(items) => items.iter().map(scalar).collect(),
        other => panic!("not a list: {other:?}"),
    }
}

/// Real Kamal accepts the config and describes the same deployment.
fn check_against_kamal(p: &Project, dest: Option<&str>, r: &Rendered) {
    let what = format!("{} {dest:?}: kamal config", p.name);
    let out = kamal_config(p, dest, Some(&r.version));
    assert!(out.status.success(), "{what}: {}", text(&out));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let doc = yaml::parse(&stdout, Path::new("kamal-config.yml"))
        .unwrap_or_else(|e| panic!("{what}: {e}\n{stdout}"));
    let roles: BTreeSet<String> = kamal_strings(kamal_get(&doc, "roles"))
        .into_iter()
        .collect();
    assert_eq!(roles, r.roles, "{what}: roles");
    assert_eq!(
        kamal_strings(kamal_get(&doc, "hosts")),
        r.hosts,
        "{what}: hosts (role hosts then accessory hosts, in Kamal's order)"
    );
    assert_eq!(
        scalar(kamal_get(&doc, "absolute_image")),
        r.image,
        "{what}: image"
    );
    let accessories: BTreeSet<String> = match doc
        .get(":accessories")
        .or_else(|| doc.get("accessories"))
        .map(|n| &n.value)
    {
        Some(Value::Map(m)) => m.iter().map(|(k, _)| k.name.clone()).collect(),
        _ => BTreeSet::new(),
    };
    assert_eq!(accessories, r.accessories, "{what}: accessories");
}

/// Concrete facts about each example, so a change that renders something
/// else than the README says fails here.
fn check_example(name: &str, dest: Option<&str>, r: &Rendered) {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    match (name, dest) {
        ("demo", None) => {
            assert_eq!(r.hosts, s(&["10.210.0.11", "10.210.0.12", "10.210.0.13"]));
            assert_eq!(r.accessory("kv").0, "10.210.0.13");
            assert!(r.apps("workers")[0]["proxy_deploy"].is_null());
        }
        ("single-web", None) => {
            assert_eq!(r.hosts, s(&["203.0.113.10"]));
            assert_eq!(r.image, "ghcr.io/acme/blog:2024.06.3");
            let web = r.apps("web")[0];
            assert_eq!(web["container"], "blog-web-2024.06.3");
            let deploy = strings(&web["proxy_deploy"]);
            for arg in [
                "--host=blog.example.com",
                "--tls",
                "--health-check-path=/up",
                "--target=<container-id>:3000",
            ] {
                assert!(deploy.iter().any(|a| a == arg), "{arg} in {deploy:?}");
            }
            assert_eq!(env_file_keys(web), ["RAILS_MASTER_KEY"]);
            assert!(has_pair(
                &strings(&web["run"]),
                "--env",
                "RAILS_ENV=production"
            ));
            // ssh.user deploy: the proxy's apps-config lives in its home.
            let proxy = strings(&r.host("203.0.113.10")["proxy"]["run"]);
            assert!(
                proxy.iter().any(|a| a.starts_with("/home/deploy/.kamal/")),
                "{proxy:?}"
            );
        }
        ("web-workers-accessories", None) => {
            assert_eq!(r.hosts_of("web"), s(&["10.0.1.11", "10.0.1.12"]));
            assert_eq!(r.hosts_of("workers"), s(&["10.0.1.21", "10.0.1.22"]));
            for web in r.apps("web") {
                assert!(web["proxy_deploy"].is_array(), "web is proxied");
                assert_eq!(
                    env_file_keys(web),
                    ["RAILS_MASTER_KEY", "DATABASE_PASSWORD"]
                );
            }
            for w in r.apps("workers") {
                assert!(w["proxy_deploy"].is_null(), "workers have no proxy: {w:#}");
                assert_eq!(
                    strings(&w["cmd"]),
                    ["bin/jobs", "--queues", "default,mailers"]
                );
                let run = strings(&w["run"]);
                assert!(has_pair(&run, "--env", "JOB_CONCURRENCY=5"), "{run:?}");
                assert!(has_pair(&run, "--memory", "2g"), "{run:?}");
            }
            // No proxy on hosts that run no proxied role.
            assert!(r.host("10.0.1.21")["proxy"].is_null());
            assert_eq!(r.accessories, BTreeSet::from(["db".into(), "cache".into()]));
            let (host, db) = r.accessory("db");
            assert_eq!(host, "10.0.1.31");
            assert_eq!(db["container"], "shop-db");
            assert_eq!(db["image"], "postgres:16.3");
            assert_eq!(env_file_keys(db), ["POSTGRES_PASSWORD"]);
            let run = strings(&db["run"]);
            assert!(
                has_pair(&run, "--publish", "127.0.0.1:5432:5432"),
                "{run:?}"
            );
            assert!(
                has_pair(
                    &run,
                    "--volume",
                    "/root/shop-db/data:/var/lib/postgresql/data"
                ),
                "{run:?}"
            );
            let (host, cache) = r.accessory("cache");
            assert_eq!(host, "10.0.1.31");
            assert!(strings(&cache["run"]).ends_with(&s(&[
                "redis:7.2-alpine",
                "redis-server",
                "--maxmemory",
                "512mb",
                "--maxmemory-policy",
                "allkeys-lru"
            ])));
        }
        ("destinations", Some("staging")) => {
            assert_eq!(r.hosts, s(&["198.51.100.20"]));
            assert_eq!(r.version, "v2.8.0-rc.1");
            let web = r.apps("web")[0];
            assert_eq!(web["container"], "api-web-staging-v2.8.0-rc.1");
            assert!(has_pair(
                &strings(&web["run"]),
                "--label",
                "destination=staging"
            ));
            assert_eq!(env_file_keys(web), ["DATABASE_URL", "SENTRY_DSN"]);
            assert!(
                strings(&web["proxy_deploy"])
                    .iter()
                    .any(|a| a == "--host=api.staging.example.com")
            );
        }
        ("destinations", Some("production")) => {
            assert_eq!(r.version, "v2.7.4");
            assert_eq!(r.hosts_of("web"), s(&["203.0.113.21", "203.0.113.22"]));
            assert_eq!(r.hosts_of("jobs"), s(&["203.0.113.23"]));
            assert!(r.apps("jobs")[0]["proxy_deploy"].is_null());
            let deploy = strings(&r.apps("web")[0]["proxy_deploy"]);
            assert!(deploy.iter().any(|a| a == "--host=api.example.com"));
            assert!(!deploy.iter().any(|a| a == "--tls"), "{deploy:?}");
        }
        ("multi-app/storefront", Some("staging")) => {
            assert_eq!(r.hosts, s(&["198.51.100.30"]));
            assert_eq!(r.image, "ghcr.io/acme/storefront:4.12.0");
        }
        ("multi-app/storefront", Some("production")) => {
            assert_eq!(r.hosts, s(&["203.0.113.31", "203.0.113.32"]));
            assert_eq!(r.image, "ghcr.io/acme/storefront:4.11.2");
        }
        ("multi-app/reports", None) => {
            assert_eq!(r.hosts, s(&["10.20.0.5"]));
            assert!(r.apps("exporter")[0]["proxy_deploy"].is_null());
            assert!(r.apps("web")[0]["proxy_deploy"].is_array());
            assert_eq!(
                strings(&r.apps("exporter")[0]["cmd"]),
                [
                    "python",
                    "-m",
                    "reports.exporter",
                    "--schedule",
                    "0 3 * * *"
                ]
            );
        }
        // A new example: the generic checks (berth and Kamal agree) apply.
        _ => {}
    }
}

fn check_project(p: &Project) {
    let require_destination = std::fs::read_to_string(p.root.join("config/deploy.yml"))
        .unwrap()
        .lines()
        .any(|l| l.trim() == "require_destination: true");
    let mut variants: Vec<Option<&str>> = p.destinations.iter().map(|d| Some(d.as_str())).collect();
    if require_destination {
        // Both refuse to run without a destination.
        let out = berth_validate(p, None);
        assert!(
            !out.status.success() && text(&out).contains("You must specify a destination"),
            "{}: berth validate without -d: {}",
            p.name,
            text(&out)
        );
        let out = kamal_config(p, None, Some("v1"));
        assert!(
            !out.status.success(),
            "{}: kamal config without -d: {}",
            p.name,
            text(&out)
        );
    } else {
        variants.insert(0, None);
    }
    for dest in variants {
        let out = berth_validate(p, dest);
        assert!(
            out.status.success(),
            "{} {dest:?}: berth validate: {}",
            p.name,
            text(&out)
        );
        let rendered = berth_render(p, dest);
        check_against_kamal(p, dest, &rendered);
        check_example(&p.name, dest, &rendered);
    }
}

#[test]
fn every_example_project_is_valid_for_berth_and_kamal() {
    kamal_bin();
    let projects = projects();
    let names: BTreeSet<&str> = projects.iter().map(|p| p.name.as_str()).collect();
    for expected in [
        "demo",
        "single-web",
        "web-workers-accessories",
        "destinations",
        "multi-app/storefront",
        "multi-app/reports",
    ] {
        assert!(
            names.contains(expected),
            "{expected} not found in {names:?}"
        );
    }
    let dests: BTreeMap<&str, &[String]> = projects
        .iter()
        .map(|p| (p.name.as_str(), p.destinations.as_slice()))
        .collect();
    assert_eq!(dests["destinations"], ["production", "staging"]);
    // One thread per project: Kamal takes about a second per call.
    std::thread::scope(|s| {
        let handles: Vec<_> = projects
            .iter()
            .map(|p| (p.name.clone(), s.spawn(move || check_project(p))))
            .collect();
        let failed: Vec<String> = handles
            .into_iter()
            .filter_map(|(name, h)| h.join().is_err().then_some(name))
            .collect();
        assert!(failed.is_empty(), "examples failing: {failed:?}");
    });
}

#[test]
fn example_secrets_only_reference_environment_variables() {
    let mut checked = 0;
    for p in projects().iter().filter(|p| p.name != "demo") {
        for e in std::fs::read_dir(p.root.join(".kamal")).unwrap() {
            let path = e.unwrap().path();
            if !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("secrets"))
            {
                continue;
            }
            for (i, line) in std::fs::read_to_string(&path).unwrap().lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let ok = line.split_once('=').is_some_and(|(k, v)| {
                    let var = v
                        .strip_prefix("${")
                        .and_then(|v| v.strip_suffix('}'))
                        .or_else(|| v.strip_prefix('$'));
                    !k.is_empty()
                        && var.is_some_and(|v| {
                            !v.is_empty()
                                && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        })
                });
                assert!(
                    ok,
                    "{}:{}: `{line}`: example secrets must be KEY=$VARIABLE",
                    path.display(),
                    i + 1
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "only {checked} secret lines found");
}

#[test]
fn every_example_has_a_readme_and_is_indexed() {
    let index = std::fs::read_to_string(examples_dir().join("README.md")).unwrap();
    for e in std::fs::read_dir(examples_dir()).unwrap() {
        let path = e.unwrap().path();
        if !path.is_dir() {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            index.contains(&format!("]({name}/)")),
            "examples/README.md does not link {name}/"
        );
        if name != "demo" {
            assert!(
                path.join("README.md").is_file(),
                "examples/{name} has no README.md"
            );
        }
    }
}

#[test]
fn multi_app_index_loads() {
    let root = examples_dir().join("multi-app");
    let apps = berth::source::index::load(&root)
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("examples/multi-app/berth.yml");
    let by_name: BTreeMap<&str, _> = apps.iter().map(|a| (a.name.as_str(), a)).collect();
    assert_eq!(
        by_name.keys().copied().collect::<Vec<_>>(),
        ["reports", "storefront", "storefront-production"]
    );
    let staging = by_name["storefront"];
    assert_eq!(staging.path, Path::new("storefront"));
    assert_eq!(staging.destinations, ["staging"]);
    assert_eq!(staging.mode, Mode::Auto);
    assert!(staging.self_heal && !staging.suspended);
    let production = by_name["storefront-production"];
    assert_eq!(production.path, Path::new("storefront"));
    assert_eq!(production.destinations, ["production"]);
    assert_eq!(production.mode, Mode::Detect);
    let reports = by_name["reports"];
    assert_eq!(reports.path, Path::new("reports"));
    assert!(reports.destinations.is_empty());
    assert_eq!(reports.mode, Mode::Auto);
    assert!(!reports.self_heal);
    assert_eq!(reports.prune, Some(true));
    // Every app points at a Kamal project with the destinations it names.
    for a in &apps {
        let config = root.join(&a.path).join(&a.config);
        assert!(config.is_file(), "{}: {}", a.name, config.display());
        for d in &a.destinations {
            let file = config.with_file_name(format!("deploy.{d}.yml"));
            assert!(file.is_file(), "{}: {}", a.name, file.display());
        }
    }
}

// --- CI examples -------------------------------------------------------

fn parse_yaml(path: &Path) -> Node {
    let body = std::fs::read_to_string(path).unwrap();
    yaml::parse(&body, path).unwrap_or_else(|e| panic!("{e}"))
}

fn get<'a>(n: &'a Node, path: &[&str]) -> &'a Node {
    path.iter().fold(n, |n, k| {
        n.get(k)
            .unwrap_or_else(|| panic!("{}: no key {k} ({path:?})", n.mark))
    })
}

fn str_of(n: &Node) -> &str {
    match &n.value {
        Value::Scalar(Scalar::Str(s)) => s,
        other => panic!("{}: not a string: {other:?}", n.mark),
    }
}

fn seq(n: &Node) -> &[Node] {
    match &n.value {
        Value::Seq(items) => items,
        other => panic!("{}: not a list: {other:?}", n.mark),
    }
}

/// Split a shell line into words (quotes removed, no expansion).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            None => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// Every `berth …` command in a shell script, as its words up to the first
/// redirection or operator.
fn berth_commands(script: &str) -> Vec<Vec<String>> {
    let joined = script.replace("\\\n", " ");
    joined
        .lines()
        .map(words)
        .filter(|w| w.first().is_some_and(|w| w == "berth"))
        .map(|w| {
            w.into_iter()
                .skip(1)
                .take_while(|t| {
                    !(t.starts_with('>')
                        || t.starts_with("2>")
                        || t.starts_with('|')
                        || t.starts_with('&')
                        || t.starts_with(';'))
                })
                .collect()
        })
        .collect()
}

/// The subcommand and flags of a `berth …` command exist (per `--help`) and
/// literal values of flags with fixed choices are among them.
fn check_berth_command(origin: &str, cmd: &[String]) {
    let sub = cmd.first().filter(|t| !t.starts_with('-'));
    let mut help = berth();
    help.args(sub).arg("--help");
    let out = help.output().unwrap();
    assert!(
        out.status.success(),
        "{origin}: `berth {}`: no such subcommand: {}",
        cmd.join(" "),
        text(&out)
    );
    let help = String::from_utf8(out.stdout).unwrap();
    for (i, tok) in cmd.iter().enumerate() {
        if !tok.starts_with('-') {
            continue;
        }
        let flag = tok.split('=').next().unwrap();
        // The option's line in the help, e.g. `  -d, --destination <DESTINATION>  …`.
        let line = help.lines().find(|l| {
            let t = l.trim_start();
            if flag.starts_with("--") {
                t.starts_with(&format!("{flag} "))
                    || t.contains(&format!(", {flag} "))
                    || t == flag
                    || t.ends_with(&format!(", {flag}"))
            } else {
                t.starts_with(&format!("{flag},")) || t.starts_with(&format!("{flag} "))
            }
        });
        let Some(line) = line else {
            panic!(
                "{origin}: `berth {}`: {flag} is not an option of berth {}:\n{help}",
                cmd.join(" "),
                sub.map_or("", |s| s.as_str())
            );
        };
        // `[possible values: text, json]` in the option's own entry (its line
        // and the description lines up to the next option): a literal value
        // must be one of them.
        let mut entry = help.lines().skip_while(|l| *l != line);
        let first = entry.next().into_iter();
        let rest = entry.take_while(|l| !l.trim_start().starts_with('-'));
        if let Some(choices) = first
            .chain(rest)
            .find_map(|l| l.split_once("[possible values: ").map(|(_, c)| c))
        {
            let value = tok
                .split_once('=')
                .map(|(_, v)| v.to_string())
                .or_else(|| cmd.get(i + 1).cloned());
            if let Some(v) = value.filter(|v| !v.contains('$') && !v.starts_with('-')) {
                let choices: Vec<&str> = choices.trim_end_matches(']').split(", ").collect();
                assert!(
                    choices.contains(&v.as_str()),
                    "{origin}: {flag} {v}: not one of {choices:?}"
                );
            }
        }
    }
}

fn assert_plans_with_json(origin: &str, commands: &[Vec<String>]) {
    assert!(
        commands.iter().any(|c| c[0] == "reconcile"
            && c.iter().any(|t| t == "--dry-run")
            && c.windows(2).any(|w| w[0] == "--output" && w[1] == "json")
            && c.iter().any(|t| t == "--known-hosts")),
        "{origin}: no `berth reconcile --dry-run --output json --known-hosts …`: {commands:?}"
    );
}

#[test]
fn github_workflow_runs_berth_commands_that_exist() {
    let path = examples_dir().join("ci/berth-plan.yml");
    let wf = parse_yaml(&path);
    // `on:` (a YAML 1.1 boolean to some parsers; berth keeps keys as written).
    let on = wf
        .get("on")
        .or_else(|| wf.get("true"))
        .expect("workflow has `on:`");
    assert!(on.get("pull_request").is_some(), "runs on pull_request");
    assert_eq!(
        str_of(get(&wf, &["permissions", "pull-requests"])),
        "write",
        "needs to comment"
    );
    let steps = seq(get(&wf, &["jobs", "plan", "steps"]));
    let mut commands = Vec::new();
    for step in steps {
        if let Some(run) = step.get("run") {
            for c in berth_commands(str_of(run)) {
                check_berth_command(&format!("{}", run.mark), &c);
                commands.push(c);
            }
        }
    }
    assert!(commands.len() >= 4, "{commands:?}");
    assert_plans_with_json("berth-plan.yml", &commands);
    // The comment step posts the plan; only exit codes other than 0 and 2 fail.
    let comment = steps
        .iter()
        .find(|s| {
            s.get("uses")
                .is_some_and(|u| str_of(u).starts_with("actions/github-script@"))
        })
        .expect("a github-script step");
    let script = str_of(get(comment, &["with", "script"]));
    for needle in ["plan.json", "summary", "createComment", "updateComment"] {
        assert!(script.contains(needle), "comment script lacks {needle}");
    }
    let fail = steps
        .iter()
        .find(|s| s.get("run").is_some_and(|r| str_of(r).trim() == "exit 1"))
        .expect("a step failing the job on error");
    let cond = str_of(get(fail, &["if"]));
    assert!(
        cond.contains("!= '0'") && cond.contains("!= '2'"),
        "fails only on errors: {cond}"
    );
}

#[test]
fn gitlab_job_runs_berth_commands_that_exist() {
    let path = examples_dir().join("ci/gitlab-ci.yml");
    let ci = parse_yaml(&path);
    let job = get(&ci, &["berth-plan"]);
    let mut commands = Vec::new();
    for key in ["before_script", "script"] {
        for line in seq(get(job, &[key])) {
            for c in berth_commands(str_of(line)) {
                check_berth_command(&format!("{}", line.mark), &c);
                commands.push(c);
            }
        }
    }
    assert!(commands.len() >= 4, "{commands:?}");
    assert_plans_with_json("gitlab-ci.yml", &commands);
    let codes = seq(get(job, &["allow_failure", "exit_codes"]));
    assert_eq!(
        codes.iter().map(|n| n.value.clone()).collect::<Vec<_>>(),
        [Value::Scalar(Scalar::Int(2))],
        "changes pending (2) is a warning, errors fail"
    );
}

#[test]
fn berth_command_extraction() {
    let cmds = berth_commands(
        "set +e\nberth reconcile --dry-run \\\n  --output json -d \"$DEST\" > \"$out/plan.json\" 2> err\n  echo berth validate\nberth --version\n",
    );
    assert_eq!(
        cmds,
        [
            vec!["reconcile", "--dry-run", "--output", "json", "-d", "$DEST"],
            vec!["--version"]
        ]
    );
    // A flag berth does not have is caught.
    let bad = std::panic::catch_unwind(|| {
        check_berth_command("test", &["reconcile".into(), "--dry-runn".into()])
    });
    assert!(bad.is_err());
    let bad_value = std::panic::catch_unwind(|| {
        check_berth_command("test", &["render".into(), "--output".into(), "yaml".into()])
    });
    assert!(bad_value.is_err());
    check_berth_command(
        "test",
        &[
            "render".into(),
            "-d".into(),
            "x".into(),
            "--output=json".into(),
        ],
    );
}
