//! `berth validate` agrees with real Kamal on every config in Kamal's own
//! `test/fixtures` (copied from v2.12.0 into `tests/kamal-fixtures/fixtures`,
//! MIT, see its ORIGIN.md) and on berth's cases for what 2.12 changed
//! (`tests/kamal-fixtures/berth`). What Kamal 2.12 and 2.11 said about each
//! is `tests/kamal-fixtures/expect.json`, captured by
//! `scripts/capture-kamal-fixtures.sh`; this test needs no Kamal.
//!
//! Each case runs in the project layout the capture used: the fixture as
//! `config/deploy.yml`, its destination files beside it, Kamal's
//! `test/fixtures/files`, and `.kamal/secrets-common` naming the secrets
//! the fixtures use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(serde::Deserialize)]
struct Verdicts {
    #[serde(rename = "2.12")]
    v212: String,
    #[serde(rename = "2.11")]
    v211: String,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kamal-fixtures")
}

/// `(accepted, output)` of `berth validate` on one case.
fn berth_validate(case: &str) -> (bool, String) {
    let (stem, dest) = match case.split_once('@') {
        Some((s, d)) => (s, Some(d)),
        None => (case, None),
    };
    let (dir, stem) = match stem.strip_prefix("berth/") {
        Some(s) => (root().join("berth"), s),
        None => (root().join("fixtures"), stem),
    };
    let project = tempfile::tempdir().unwrap();
    let p = project.path();
    std::fs::create_dir_all(p.join("config")).unwrap();
    std::fs::create_dir_all(p.join(".kamal")).unwrap();
    std::fs::create_dir_all(p.join("test/fixtures/files")).unwrap();
    std::fs::copy(dir.join(format!("{stem}.yml")), p.join("config/deploy.yml")).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(d) = name
            .strip_prefix(&format!("{stem}."))
            .and_then(|r| r.strip_suffix(".yml"))
        {
            std::fs::copy(dir.join(&name), p.join(format!("config/deploy.{d}.yml"))).unwrap();
        }
    }
    for entry in std::fs::read_dir(root().join("fixtures/files")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            p.join("test/fixtures/files").join(entry.file_name()),
        )
        .unwrap();
    }
    std::fs::copy(
        root().join("secrets-common"),
        p.join(".kamal/secrets-common"),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.current_dir(p)
        .args(["validate", "--app-version", "v1"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    if let Some(d) = dest {
        cmd.args(["-d", d]);
    }
    let out = cmd.output().expect("run berth");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Whether one of berth's error lines says what Kamal's `path/to/key:
/// message` says: the same message, at that key (berth's `path.to.key`) or
/// under it (berth names an unknown key itself: `output.syslog`).
fn says_the_same(out: &str, kamal_error: &str) -> bool {
    let Some((_, message)) = kamal_error.split_once("): ") else {
        return false;
    };
    let Some((path, text)) = message.split_once(": ") else {
        return false;
    };
    let path = path.replace('/', ".");
    out.lines().any(|l| {
        l.split_once(&format!(": {path}"))
            .is_some_and(|(_, rest)| rest.starts_with(':') || rest.starts_with('.'))
            && l.contains(&format!(": {text}"))
    })
}

#[test]
fn berth_validate_agrees_with_kamal_on_its_fixtures() {
    let text = std::fs::read_to_string(root().join("expect.json")).unwrap();
    let cases: BTreeMap<String, Verdicts> = serde_json::from_str(&text).unwrap();
    let fixtures = cases.keys().filter(|c| !c.starts_with("berth/")).count();
    assert!(fixtures >= 49, "only {fixtures} fixture cases");
    let mut failures = Vec::new();
    let mut checked_211 = 0;
    let mut refused_since_211 = Vec::new();
    for (case, want) in &cases {
        let (accepted, out) = berth_validate(case);
        let kamal_212 = want.v212 == "ok";
        if accepted != kamal_212 {
            failures.push(format!(
                "{case}: Kamal 2.12 says {:?}, berth {}:\n{out}",
                want.v212,
                if accepted { "accepts" } else { "rejects" }
            ));
        }
        // A config 2.11 accepts still validates, unless 2.12 itself refuses
        // it now (`restart: false` in options: 2.11 ignored it).
        if want.v211 == "ok" {
            if kamal_212 {
                checked_211 += 1;
            } else {
                refused_since_211.push(case.as_str());
            }
        }
        // berth's own cases are written to get Kamal's very message.
        if case.starts_with("berth/")
            && !kamal_212
            && want.v212.contains("ConfigurationError")
            && !says_the_same(&out, &want.v212)
        {
            failures.push(format!(
                "{case}: berth does not say what Kamal 2.12 says ({:?}):\n{out}",
                want.v212
            ));
        }
    }
    assert!(checked_211 >= 44, "2.11-accepted cases: {checked_211}");
    assert_eq!(refused_since_211, ["berth/restart_false"]);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_fixtures_need_no_ruby_to_validate_and_warn_where_berth_skips_some() {
    // Kamal's fixtures put Ruby under `builder.arch`: berth goes on with a
    // warning naming file:line:col and the key.
    let (accepted, out) = berth_validate("deploy_with_remote_builder");
    assert!(accepted, "{out}");
    assert!(
        out.contains(
            "warning: config/deploy.yml:39:9: builder.arch: ERB `<%= Kamal::Utils.docker_arch"
        ),
        "{out}"
    );
    // String literals are evaluated: the registry user is `my-user`.
    let (accepted, out) = berth_validate("deploy.erb");
    assert!(accepted, "{out}");
    assert!(!out.contains("warning"), "{out}");
}
