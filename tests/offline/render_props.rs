//! Property: any string placed in any single-valued string field of a config
//! either renders to one argv element unchanged (and survives the trip
//! through `shell::join` and a real `sh` unchanged) or is rejected with an
//! error. Never split, never interpreted.

use std::path::Path;
use std::process::Command;

use berth::config::secrets::Secrets;
use berth::config::{self, LoadOptions};
use berth::desired::{self, RenderOptions};
use berth::shell;
use proptest::prelude::*;

/// A YAML double-quoted scalar holding exactly `s`.
fn yaml_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if (c as u32) <= 0xFFFF => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push_str(&format!("\\U{:08X}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// Which field the value goes into, and the argv element it must become.
#[derive(Debug, Clone, Copy)]
enum Field {
    Label,
    EnvClear,
    Volume,
    RoleOption,
    LogOption,
    ProxyHost,
    HealthcheckPath,
    Image,
    AccessoryEnv,
}

const FIELDS: &[Field] = &[
    Field::Label,
    Field::EnvClear,
    Field::Volume,
    Field::RoleOption,
    Field::LogOption,
    Field::ProxyHost,
    Field::HealthcheckPath,
    Field::Image,
    Field::AccessoryEnv,
];

fn config_with(field: Field, v: &str) -> (String, String) {
    let q = yaml_quote(v);
    let blank = v.trim().is_empty();
    let (extra, role_extra, image, expected) = match field {
        Field::Label => (
            format!("labels:\n  k: {q}\n"),
            String::new(),
            "app".to_string(),
            if blank { "k".into() } else { format!("k={v}") },
        ),
        Field::EnvClear => (
            format!("env:\n  clear:\n    K: {q}\n"),
            String::new(),
            "app".into(),
            if blank { "K".into() } else { format!("K={v}") },
        ),
        Field::Volume => (
            format!("volumes:\n  - {q}\n"),
            String::new(),
            "app".into(),
            v.to_string(),
        ),
        Field::RoleOption => (
            String::new(),
            format!("    options:\n      memory: {q}\n"),
            "app".into(),
            v.to_string(),
        ),
        Field::LogOption => (
            format!("logging:\n  options:\n    max-size: {q}\n"),
            String::new(),
            "app".into(),
            if blank {
                "max-size".into()
            } else {
                format!("max-size={v}")
            },
        ),
        Field::ProxyHost => (
            format!("proxy:\n  hosts:\n    - {q}\n"),
            String::new(),
            "app".into(),
            format!("--host={v}"),
        ),
        Field::HealthcheckPath => (
            format!("proxy:\n  healthcheck:\n    path: {q}\n"),
            String::new(),
            "app".into(),
            format!("--health-check-path={v}"),
        ),
        Field::Image => (
            String::new(),
            String::new(),
            q.clone(),
            format!("reg.example:5000/{v}:v1"),
        ),
        Field::AccessoryEnv => (
            format!(
                "accessories:\n  db:\n    image: db:1\n    host: 10.0.0.1\n    env:\n      clear:\n        K: {q}\n"
            ),
            String::new(),
            "app".into(),
            if blank { "K".into() } else { format!("K={v}") },
        ),
    };
    let yaml = format!(
        "service: demo\nimage: {image}\nregistry:\n  server: reg.example:5000\n  username: u\n  password: p\nservers:\n  web:\n    hosts:\n      - 10.0.0.1\n{role_extra}{extra}"
    );
    (yaml, expected)
}

/// Run the quoted command line through a real `sh` and get the argv back.
fn through_sh(argv: &[String]) -> Vec<String> {
    let line = format!("printf '%s\\0' {}", shell::join(argv));
    let out = Command::new("sh")
        .arg("-c")
        .arg(&line)
        .output()
        .expect("sh runs");
    assert!(out.status.success(), "sh failed on {line:?}");
    let text = String::from_utf8(out.stdout).expect("utf8");
    let mut items: Vec<String> = text.split('\0').map(str::to_string).collect();
    items.pop();
    items
}

fn check(field: Field, value: &str) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("deploy.yml");
    let (yaml, expected) = config_with(field, value);
    std::fs::write(&file, &yaml).expect("write");
    let env = |_: &str| None;
    let Ok(cfg) = config::load(&LoadOptions {
        config_file: &file,
        destination: None,
        env: &env,
        files: &berth::checkout::Checkout::unconfined(),
    }) else {
        return Ok(()); // rejected with an error: allowed
    };
    let secrets = Secrets::load(
        Path::new(&dir.path().join(".kamal/secrets")),
        &berth::config::secrets::SecretsOptions {
            destination: None,
            commands: berth::config::secrets::Commands::Refuse,
            files: &berth::checkout::Checkout::unconfined(),
            age_keys: None,
            env: &env,
        },
    )
    .expect("no secrets files is fine");
    let Ok(d) = desired::render(
        &cfg,
        &RenderOptions {
            version: "v1",
            secrets: &secrets,
            home: "/root",
        },
    ) else {
        return Ok(());
    };
    let host = &d.hosts[0];
    let mut argvs: Vec<Vec<String>> = host
        .apps
        .iter()
        .map(|a| a.run_argv(Some("h-0123456789ab")))
        .collect();
    argvs.extend(
        host.apps
            .iter()
            .filter_map(|a| a.proxy.as_ref().map(|p| p.deploy_argv("abc"))),
    );
    argvs.extend(host.accessories.iter().map(|a| a.run_argv.clone()));
    prop_assert!(
        argvs.iter().any(|argv| argv.contains(&expected)),
        "{field:?}: {expected:?} is not one argv element of {argvs:?}"
    );
    for argv in &argvs {
        prop_assert_eq!(&through_sh(argv), argv);
    }
    Ok(())
}

fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^\u{0}]{0,40}",
        "[ '\"$`\\\\;&|<>(){}*?~#!\n\t=,:a-z-]{0,24}",
        Just("$(touch /tmp/berth-pwned)".to_string()),
        Just("`id`".to_string()),
        Just("a b".to_string()),
        Just("-rf".to_string()),
        Just("${HOME}".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn any_value_renders_unchanged_or_is_rejected(field in prop::sample::select(FIELDS), value in nasty_string()) {
        check(field, &value)?;
    }
}

#[test]
fn an_injection_attempt_stays_one_argument() {
    check(Field::EnvClear, "x; touch /tmp/berth-pwned").expect("holds");
    check(Field::Label, "$(id)").expect("holds");
    assert!(!Path::new("/tmp/berth-pwned").exists());
}
