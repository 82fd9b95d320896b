//! `berth history` reads the database `berth run` keeps, read-only: text
//! and JSON, newest first; without a database it says so and exits 1.

use std::process::Command;

use berth::history::{ActionRow, CycleRow, History, Instance, InstanceState, Retention};

fn berth(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cycle(version: &str, kind: &str, error: Option<&str>) -> CycleRow {
    CycleRow {
        id: 0,
        app: "shop".into(),
        destination: Some("production".into()),
        started_unix_ms: 1_780_000_000_000,
        ended_unix_ms: 1_780_000_001_250,
        trigger: "webhook".into(),
        revision: Some(format!("{}{}", &version[1..], "a".repeat(39))),
        version: Some(version.into()),
        result: if error.is_some() { "error" } else { "applied" }.into(),
        kind: kind.into(),
        error: error.map(str::to_string),
        actions: vec![ActionRow {
            unit: "web".into(),
            host: "10.0.0.7".into(),
            container: format!("shop-web-production-{version}"),
            kind: "replace".into(),
            reason: "version".into(),
        }],
    }
}

#[test]
fn berth_history_prints_what_berth_run_recorded_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap();
    let (code, _, err) = berth(&["history", "--state-dir", state]);
    assert_eq!(code, 1);
    assert!(err.contains("no history here"), "{err}");

    let history = History::open(dir.path(), Retention::default()).unwrap();
    history.record_cycle(cycle("v1", "deployed", None));
    history.record_cycle(cycle(
        "v2",
        "failed",
        Some("revision 2aaaaaaaaaaa: web: not healthy"),
    ));
    // Acknowledged after everything queued before it.
    history
        .save_state(
            &Instance::new("shop", Some("production")),
            &InstanceState::default(),
        )
        .unwrap();

    let (code, out, err) = berth(&["history", "--state-dir", state, "--app", "shop"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "== shop");
    assert!(
        lines[1].contains("shop/production")
            && lines[1].contains("error")
            && lines[1].contains("not healthy"),
        "{out}"
    );
    assert!(
        lines[2].contains("applied")
            && lines[2].contains("replace shop-web-production-v1 on 10.0.0.7 (version)")
            && lines[2].contains("1250ms"),
        "{out}"
    );

    let (code, out, _) = berth(&["history", "--state-dir", state, "--json"]);
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["schema"], "berth.history/v1");
    assert_eq!(doc["apps"][0]["cycles"][0]["kind"], "failed");
    assert_eq!(doc["apps"][0]["cycles"][1]["version"], "v1");
}
