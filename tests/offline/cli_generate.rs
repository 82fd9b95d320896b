//! `berth completions` and `berth man`: the generated completion script and
//! man pages cover every subcommand `berth --help` lists, the bash script
//! really completes in bash, and `man --dir` writes one page per command.

use std::path::Path;
use std::process::{Command, Output};

fn berth(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout_ok(args: &[&str]) -> String {
    let out = berth(args);
    assert!(
        out.status.success(),
        "berth {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands `berth --help` lists (its `Commands:` section), without `help`.
fn subcommands() -> Vec<String> {
    let help = stdout_ok(&["--help"]);
    let names: Vec<String> = help
        .lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_string)
        .collect();
    for expected in [
        "validate",
        "render",
        "reconcile",
        "run",
        "completions",
        "man",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from --help: {names:?}"
        );
    }
    names
}

/// Run the bash completion function for `line` (the word under the cursor
/// last) with the script sourced; returns the candidates bash would offer.
fn bash_complete(script: &Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source '{}'\n\
         COMP_WORDS=({})\n\
         COMP_CWORD={}\n\
         COMP_LINE=\"${{COMP_WORDS[*]}}\"\n\
         COMP_POINT=${{#COMP_LINE}}\n\
         _berth berth \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script.display(),
        quoted.join(" "),
        words.len() - 1,
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bash failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completion_names_every_subcommand_and_completes_in_bash() {
    let script = stdout_ok(&["completions", "bash"]);
    for cmd in subcommands() {
        assert!(
            script.contains(&format!("berth__{cmd})")) || script.contains(&format!("berth,{cmd})")),
            "bash completion does not handle subcommand {cmd}"
        );
    }
    for flag in [
        "--dry-run",
        "--accept-new-host-keys",
        "--allow-secret-commands",
        "--webhook-secret-file",
        "--apps-file",
    ] {
        assert!(script.contains(flag), "bash completion lacks {flag}");
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.bash");
    std::fs::write(&path, &script).unwrap();

    let top = bash_complete(&path, &["berth", "re"]);
    assert_eq!(
        {
            let mut t = top.clone();
            t.sort();
            t
        },
        vec!["reconcile".to_string(), "render".to_string()],
        "berth re<TAB>"
    );
    assert_eq!(
        bash_complete(&path, &["berth", "reconcile", "--dry"]),
        vec!["--dry-run".to_string()],
        "berth reconcile --dry<TAB>"
    );
    let modes = bash_complete(&path, &["berth", "run", "--mode", ""]);
    assert!(
        modes.contains(&"auto".to_string()) && modes.contains(&"detect".to_string()),
        "berth run --mode <TAB>: {modes:?}"
    );
    let shells = bash_complete(&path, &["berth", "completions", ""]);
    for s in ["bash", "zsh", "fish", "elvish", "powershell"] {
        assert!(
            shells.iter().any(|c| c == s),
            "completions <TAB>: {shells:?}"
        );
    }
}

#[test]
fn every_shell_gets_a_script_and_an_unknown_shell_is_refused() {
    for (shell, marker) in [
        ("bash", "complete -F _berth"),
        ("zsh", "#compdef berth"),
        ("fish", "complete -c berth"),
        ("elvish", "edit:completion:arg-completer[berth]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let script = stdout_ok(&["completions", shell]);
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        assert!(script.contains("reconcile"), "{shell}: no reconcile");
    }
    let out = berth(&["completions", "tcsh"]);
    // A usage error is an error (1), never "changes pending" (2).
    assert_eq!(out.status.code(), Some(1), "usage error");
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tcsh"));
}

/// The page from its title on: clap_mangen puts only the definition of the
/// `Aq` (apostrophe) string before `.TH`, which the page's text uses.
fn from_title(page: &str) -> &str {
    let at = page.find(".TH ").expect("no .TH");
    for line in page[..at].lines() {
        assert!(
            line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq"),
            "unexpected line before .TH: {line:?}"
        );
    }
    &page[at..]
}

#[test]
fn man_prints_the_roff_page_of_berth() {
    let page = stdout_ok(&["man"]);
    let page = from_title(&page);
    let title = page.lines().next().unwrap();
    assert!(title.starts_with(".TH berth 1 "), "{title}");
    assert!(
        title.contains(&format!("\"berth {}\"", env!("CARGO_PKG_VERSION"))),
        "{title}"
    );
    assert!(page.contains(".SH NAME"));
    assert!(page.contains(".SH SUBCOMMANDS"));
    for cmd in subcommands() {
        assert!(
            page.contains(&format!("berth\\-{cmd}(1)")),
            "berth.1 does not document {cmd}"
        );
    }
    // The exit codes (after_help) are part of the page.
    assert!(page.contains("changes pending"));
}

#[test]
fn man_dir_writes_one_page_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("man1");
    let listed = stdout_ok(&["man", "--dir", out_dir.to_str().unwrap()]);

    let mut expected = vec!["berth.1".to_string()];
    expected.extend(subcommands().iter().map(|c| format!("berth-{c}.1")));
    expected.sort();
    let mut files: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, expected);

    let listed: Vec<&str> = listed.lines().collect();
    assert_eq!(listed.len(), expected.len(), "{listed:?}");
    assert_eq!(
        Path::new(listed[0]),
        out_dir.join("berth.1"),
        "top-level page first"
    );

    for f in &files {
        let page = std::fs::read_to_string(out_dir.join(f)).unwrap();
        let page = from_title(&page);
        let title = f.trim_end_matches(".1");
        assert!(
            page.starts_with(&format!(".TH {title} 1 ")),
            "{f}: {}",
            &page[..80.min(page.len())]
        );
    }
    let reconcile = std::fs::read_to_string(out_dir.join("berth-reconcile.1")).unwrap();
    for flag in [
        "\\-\\-dry\\-run",
        "\\-\\-known\\-hosts",
        "\\-\\-accept\\-new\\-host\\-keys",
    ] {
        assert!(reconcile.contains(flag), "berth-reconcile.1 lacks {flag}");
    }
    let run = std::fs::read_to_string(out_dir.join("berth-run.1")).unwrap();
    assert!(run.contains("\\-\\-webhook\\-secret\\-file"));
    assert!(run.contains("auto") && run.contains("detect"));
}

#[test]
fn man_dir_that_cannot_be_created_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let out = berth(&["man", "--dir", file.join("man1").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot create"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `berth render | head -1`: the reader closing the pipe is not a crash.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["render", "-c", "examples/demo/config/deploy.yml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before berth (still loading the config) writes.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
