//! The config corpus: every file in `tests/corpus/valid/` loads (and renders),
//! every file in `tests/corpus/invalid/` is rejected with exactly the errors
//! its `# expect:` lines name (line, column, key path, message).
//!
//! Header comments a corpus file may carry:
//! - `# destination: NAME` — load with that destination (`<name>.NAME.yml`
//!   beside it is the destination file);
//! - `# secrets: A B` — secrets available when rendering a valid config;
//! - `# expect: LINE:COL KEY.PATH: MESSAGE` — one expected error (the key path
//!   may be empty: `# expect: 3:1 : MESSAGE`); the file named is the one the
//!   error is in (`# expect-in: <file>` switches it for following lines).
//!
//! ERB sees a fixed environment: `BERTH_CORPUS_HOST=10.0.0.9`.

use std::path::{Path, PathBuf};

use berth::config::secrets::Secrets;
use berth::config::{self, LoadError, LoadOptions};
use berth::desired::{self, RenderOptions};

fn env(key: &str) -> Option<String> {
    (key == "BERTH_CORPUS_HOST").then(|| "10.0.0.9".to_string())
}

fn header(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            l.strip_prefix(&format!("# {key}:"))
                .map(|v| v.trim().to_string())
        })
        .collect()
}

/// Base files only: `name.yml`, not `name.dest.yml`.
fn corpus(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yml")
                && p.file_stem()
                    .is_some_and(|s| !s.to_string_lossy().contains('.'))
        })
        .collect();
    files.sort();
    files
}

fn load(file: &Path, text: &str) -> Result<config::Config, LoadError> {
    let destination = header(text, "destination").pop();
    config::load(&LoadOptions {
        config_file: file,
        destination: destination.as_deref(),
        env: &env,
        files: &berth::checkout::Checkout::unconfined(),
    })
}

#[test]
fn valid_configs_load_and_render() {
    let files = corpus("valid");
    assert!(files.len() >= 30, "only {} valid configs", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        match load(file, &text) {
            Err(e) => failures.push(format!("{}: rejected:\n{e}", file.display())),
            Ok(cfg) => {
                let keys: Vec<(String, String)> = header(&text, "secrets")
                    .iter()
                    .flat_map(|l| {
                        l.split_whitespace()
                            .map(|k| (k.to_string(), format!("value-of-{k}")))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let secrets = Secrets::from_pairs(keys);
                if let Err(e) = desired::render(
                    &cfg,
                    &RenderOptions {
                        version: "v1",
                        secrets: &secrets,
                        home: "/root",
                    },
                ) {
                    failures.push(format!("{}: does not render: {e}", file.display()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn invalid_configs_are_rejected_with_the_expected_errors() {
    let files = corpus("invalid");
    assert!(files.len() >= 60, "only {} invalid configs", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let mut expected = Vec::new();
        let mut in_file = file.clone();
        for line in text.lines() {
            if let Some(f) = line.strip_prefix("# expect-in:") {
                in_file = file.with_file_name(f.trim());
            } else if let Some(e) = line.strip_prefix("# expect:") {
                let e = e.trim();
                let (pos, rest) = e.split_once(' ').unwrap_or((e, ""));
                let rest = rest
                    .strip_prefix(": ")
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| rest.to_string());
                let rendered = if rest.is_empty() { String::new() } else { rest };
                expected.push(format!("{}:{pos}: {rendered}", in_file.display()));
            }
        }
        if expected.is_empty() {
            failures.push(format!("{}: no `# expect:` line", file.display()));
            continue;
        }
        match load(file, &text) {
            Ok(_) => failures.push(format!(
                "{}: accepted, expected:\n  {}",
                file.display(),
                expected.join("\n  ")
            )),
            Err(e) => {
                let got: Vec<String> = match &e {
                    LoadError::Invalid(errors) => errors.iter().map(ToString::to_string).collect(),
                    other => vec![other.to_string()],
                };
                for want in &expected {
                    if !got.contains(want) {
                        failures.push(format!(
                            "{}: missing error\n  want: {want}\n  got:  {}",
                            file.display(),
                            got.join("\n        ")
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
