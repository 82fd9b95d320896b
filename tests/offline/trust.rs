//! Trusting what is applied, from the command line: an unset `$VAR` in the
//! secrets is a warning naming file:line and the variable (Kamal's empty
//! value), and `--strict-secrets` refuses it.

use std::path::Path;
use std::process::{Command, Output};

fn project(secrets: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    std::fs::create_dir_all(dir.path().join(".kamal")).unwrap();
    std::fs::write(
        dir.path().join("config/deploy.yml"),
        "service: demo\nimage: demo\nservers: [10.0.0.1]\n\
         registry:\n  server: localhost:5000\n  username: u\n  password: [KAMAL_REGISTRY_PASSWORD]\n\
         builder:\n  arch: amd64\nenv:\n  secret: [DB_PASSWORD]\nx-berth:\n  version: v1\n",
    )
    .unwrap();
    std::fs::write(dir.path().join(".kamal/secrets"), secrets).unwrap();
    dir
}

fn berth(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .current_dir(dir)
        .env_remove("BERTH_TEST_UNSET_VAR")
        .env("BERTH_TEST_SET_VAR", "set-value")
        .output()
        .unwrap()
}

#[test]
fn an_unset_secret_variable_warns_and_strict_refuses() {
    let p = project(
        "KAMAL_REGISTRY_PASSWORD=$BERTH_TEST_SET_VAR\n# a comment\nDB_PASSWORD=\"pre-${BERTH_TEST_UNSET_VAR}\"\n",
    );
    for cmd in [&["validate"][..], &["render"][..]] {
        let out = berth(p.path(), cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{cmd:?}: {err}");
        assert!(
            err.contains(
                "warning: .kamal/secrets:3: DB_PASSWORD: $BERTH_TEST_UNSET_VAR is not set in berth's environment: its value is empty"
            ),
            "{cmd:?}: {err}"
        );
        assert!(!err.contains("set-value"), "{err}");

        let strict: Vec<&str> = cmd.iter().copied().chain(["--strict-secrets"]).collect();
        let out = berth(p.path(), &strict);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{strict:?}: {err}");
        assert!(
            err.contains(".kamal/secrets:3: DB_PASSWORD: $BERTH_TEST_UNSET_VAR is not set"),
            "{strict:?}: {err}"
        );
        assert!(out.stdout.is_empty() || cmd[0] == "validate", "{strict:?}");
    }
    // Everything set: no warning.
    let p = project("KAMAL_REGISTRY_PASSWORD=$BERTH_TEST_SET_VAR\nDB_PASSWORD=x\n");
    let out = berth(p.path(), &["validate", "--strict-secrets"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
}

/// `x-berth.image_digest` and `version: tag@sha256:…`: a digest must be
/// `sha256:` + 64 hex digits, and the two forms must agree.
#[test]
fn image_digest_pins_are_validated() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    for (x_berth, ok, message) in [
        (format!("  version: v1@{digest}\n"), true, ""),
        (
            format!("  version: v1\n  image_digest: {digest}\n"),
            true,
            "",
        ),
        (
            format!("  version: v1@{digest}\n  image_digest: {digest}\n"),
            true,
            "",
        ),
        (
            "  version: v1@sha256:xyz\n".to_string(),
            false,
            "x-berth.version: \"sha256:xyz\" is not an image digest",
        ),
        (
            "  version: v1\n  image_digest: latest\n".to_string(),
            false,
            "x-berth.image_digest: \"latest\" is not an image digest",
        ),
        (
            format!(
                "  version: v1@{digest}\n  image_digest: sha256:{}\n",
                "cd".repeat(32)
            ),
            false,
            "x-berth.image_digest: differs from the digest in x-berth.version",
        ),
    ] {
        let p = project("KAMAL_REGISTRY_PASSWORD=x\nDB_PASSWORD=y\n");
        let yml = std::fs::read_to_string(p.path().join("config/deploy.yml")).unwrap();
        std::fs::write(
            p.path().join("config/deploy.yml"),
            yml.replace("x-berth:\n  version: v1\n", &format!("x-berth:\n{x_berth}")),
        )
        .unwrap();
        let out = berth(p.path(), &["validate"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "{x_berth}: {err}");
        assert!(err.contains(message), "{x_berth}: {err}");
    }
}
