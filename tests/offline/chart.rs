//! berth's Helm chart (`charts/berth`), checked by `scripts/check-chart.py`:
//! `helm lint --strict` (Helm's Go SDK), every rendered resource validated
//! against the Kubernetes schemas (strict), the PrometheusRule's PromQL parsed
//! by `promtool check rules`, the alert rules unit-tested with `promtool test
//! rules` (`charts/berth/tests/alerts-test.yaml`: each alert fires on its
//! input series and not on the others), the rendered `berth run` args parsed
//! by this build's berth CLI, and bad values refused.
//!
//! The script runs with the chart tools' interpreter:
//! `$BERTH_TOOLS_VENV/bin/python` (default `/opt/berth-tools-venv`, made by
//! `scripts/install-deps.sh`). A missing interpreter or promtool is a failure,
//! not a skip.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    let venv = std::env::var_os("BERTH_TOOLS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/berth-tools-venv"));
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-deps.sh (or set BERTH_TOOLS_VENV)",
        python.display()
    );
    python
}

/// Runs the check script (on `chart`, or the repository's chart), with the
/// berth binary this test was built with for the args check.
fn check_chart(chart: Option<&Path>) -> (Output, String) {
    let mut cmd = Command::new(python());
    cmd.arg(repo().join("scripts/check-chart.py"))
        .arg("--berth")
        .arg(env!("CARGO_BIN_EXE_berth"))
        .current_dir(repo());
    if let Some(chart) = chart {
        cmd.arg("--chart").arg(chart);
    }
    let out = cmd.output().expect("run scripts/check-chart.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// Replaces exactly one occurrence of `old` in `file`.
fn edit(file: &Path, old: &str, new: &str) {
    let text = fs::read_to_string(file).unwrap();
    assert_eq!(
        text.matches(old).count(),
        1,
        "{old:?} should occur once in {}",
        file.display()
    );
    fs::write(file, text.replacen(old, new, 1)).unwrap();
}

#[test]
fn chart_lints_renders_validates_and_its_alerts_fire() {
    let (out, text) = check_chart(None);
    assert!(
        out.status.success(),
        "scripts/check-chart.py failed ({}):\n{text}",
        out.status
    );
    // Every stage ran (not only "exit 0"): both values files, the schema
    // validation, promtool on the rules and on their unit tests, the negatives.
    for needle in [
        "[defaults] helm lint --strict: no errors or warnings",
        "[production] helm lint --strict: no errors or warnings",
        "[production] berth/templates/deployment.yaml Deployment/berth: valid against Kubernetes",
        "[production] berth/templates/prometheusrule.yaml PrometheusRule/berth: promtool check rules",
        "alerts-test.yaml: promtool test rules",
        "[production] berth/templates/deployment.yaml: args accepted by berth's CLI",
        "[negative] mode: bogus (schema enum): refused",
        "checks passed",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

/// The check is not a rubber stamp: a chart that breaks berth's contract or
/// passes berth a flag it does not have, and an alert test whose series no
/// longer make the alert fire, all fail it, naming the template or test file
/// and the reason.
#[test]
fn check_fails_on_a_broken_chart_and_a_broken_alert_test() {
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("berth");
    copy_dir(&repo().join("charts/berth"), &chart);
    // A writable root filesystem (the image contract says read-only)…
    edit(
        &chart.join("values.yaml"),
        "readOnlyRootFilesystem: true",
        "readOnlyRootFilesystem: false",
    );
    // …a flag berth does not have…
    edit(
        &chart.join("values.yaml"),
        "extraArgs: []",
        "extraArgs: [--no-such-flag]",
    );
    // …and an app that is in sync, where the test expects BerthAppOutOfSync.
    edit(
        &chart.join("tests/alerts-test.yaml"),
        "app=\"shop\",destination=\"production\"}'\n        values: '0x30'",
        "app=\"shop\",destination=\"production\"}'\n        values: '1x30'",
    );
    let (out, text) = check_chart(Some(&chart));
    assert_eq!(out.status.code(), Some(1), "expected exit 1:\n{text}");
    assert!(
        text.contains("berth/templates/deployment.yaml: expected readOnlyRootFilesystem: true"),
        "{text}"
    );
    assert!(
        text.contains("alerts-test.yaml: promtool test rules alerts-test.yaml failed")
            && text.contains("alertname: BerthAppOutOfSync"),
        "{text}"
    );
    assert!(
        text.contains("berth's CLI refuses the args")
            && text.contains("unexpected argument '--no-such-flag'"),
        "{text}"
    );
    assert!(text.contains("FAILED"), "{text}");
}
