//! Signature verification of what `source` checks out, on real signed
//! commits and tags made by real `git` (`gpg.format=ssh` with keys from
//! `ssh-keygen`, and GnuPG): good signatures are applied; unsigned, wrong
//! key, key outside its validity window, a tampered commit, a signed tag on
//! an unsigned commit (`tag_and_head`) are refused with their reason, and
//! the last verified checkout stays.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use berth::source::verify::{Refusal, Trust, VerifyMode};
use berth::source::{GitRef, Source};
use support::{allowed_signer, git, git_signed, ssh_signing, ssh_signing_key};

struct Repo {
    dir: tempfile::TempDir,
    work: PathBuf,
    url: String,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        let url = format!("file://{}", work.display());
        Repo { dir, work, url }
    }

    /// A commit of `content`, signed with `signing` (`-S`) or not.
    fn commit(&self, content: &str, signing: Option<&[String]>) -> String {
        std::fs::write(self.work.join("version"), content).unwrap();
        git(&self.work, &["add", "-A"]);
        match signing {
            Some(s) => git_signed(&self.work, s, &["commit", "-q", "-S", "-m", content]),
            None => git(
                &self.work,
                &["-c", "commit.gpgsign=false", "commit", "-qm", content],
            ),
        };
        git(&self.work, &["rev-parse", "HEAD"])
    }

    fn source(&self, reference: GitRef, trust: Trust, name: &str) -> Source {
        Source::Git {
            url: self.url.clone(),
            reference,
            checkout: self.dir.path().join(name),
            auth: Default::default(),
            trust: Some(Arc::new(trust)),
        }
    }

    /// `commit` with a header added after signing, written as a new
    /// object (its signature now covers other bytes); the new id.
    fn tamper(&self, commit: &str) -> String {
        let raw = git(&self.work, &["cat-file", "commit", commit]) + "\n";
        let tampered = raw.replacen("\ngpgsig ", "\nencoding ISO-8859-1\ngpgsig ", 1);
        assert_ne!(tampered, raw);
        let obj = self.file(&tampered, &format!("tampered-{commit}"));
        let id = git(
            &self.work,
            &[
                "hash-object",
                "-t",
                "commit",
                "-w",
                "--literally",
                obj.to_str().unwrap(),
            ],
        );
        assert_ne!(id, commit);
        id
    }

    fn file(&self, text: &str, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

fn ssh_trust(mode: VerifyMode, allowed: &Path) -> Trust {
    Trust::load(mode, Some(allowed), None).unwrap()
}

fn refusal(source: &Source) -> Refusal {
    let err = source.fetch().unwrap_err();
    err.refused
        .unwrap_or_else(|| panic!("not refused by verification: {}", err.message))
        .reason
}

fn fingerprint(key: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(key.with_extension("pub"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

#[test]
fn ssh_signed_commits_are_applied_and_the_rest_refused() {
    let repo = Repo::new();
    let keys = repo.dir.path();
    let alice = ssh_signing_key(keys, "alice");
    let mallory = ssh_signing_key(keys, "mallory");
    let allowed = repo.file(
        &allowed_signer("alice@example.com", "namespaces=\"git\"", &alice),
        "allowed_signers",
    );
    let signed = repo.commit("v1", Some(&ssh_signing(&alice)));
    let source = repo.source(
        GitRef::Branch("main".into()),
        ssh_trust(VerifyMode::Head, &allowed),
        "head",
    );
    let r = source.fetch().unwrap();
    assert_eq!(r.id, signed);
    let v = r.verified.clone().unwrap();
    assert_eq!(v.fingerprint, fingerprint(&alice));
    assert_eq!(v.signer, "alice@example.com");
    let read = || std::fs::read_to_string(r.dir.join("version")).unwrap();

    // Unsigned on top: refused, naming the commit; the checkout stays.
    let unsigned = repo.commit("v2-unsigned", None);
    let err = source.fetch().unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("commit {unsigned} is not verified: not signed")),
        "{err}"
    );
    assert_eq!(read(), "v1");

    // A force-push to another unsigned commit changes nothing either.
    git(&repo.work, &["reset", "-q", "--hard", &signed]);
    repo.commit("v2-forced", None);
    assert_eq!(refusal(&source), Refusal::Unsigned);
    assert_eq!(read(), "v1");

    // Signed by a key that is not trusted.
    repo.commit("v3-mallory", Some(&ssh_signing(&mallory)));
    assert_eq!(
        refusal(&source),
        Refusal::UnknownSigner(fingerprint(&mallory))
    );
    assert_eq!(read(), "v1");

    // A header added after signing: the signed bytes differ.
    let good = repo.commit("v4", Some(&ssh_signing(&alice)));
    let tampered = repo.tamper(&good);
    git(&repo.work, &["update-ref", "refs/heads/main", &tampered]);
    assert!(
        matches!(refusal(&source), Refusal::BadSignature(_)),
        "{:?}",
        refusal(&source)
    );
    assert_eq!(read(), "v1");

    // Back to a good signature: applied.
    git(&repo.work, &["update-ref", "refs/heads/main", &good]);
    let r = source.fetch().unwrap();
    assert_eq!(r.id, good);
    assert_eq!(read(), "v4");

    // The key outside its validity window, or trusted for another namespace.
    for (options, want_window) in [
        ("valid-before=\"20200101\"", true),
        ("valid-after=\"29990101\"", true),
        ("namespaces=\"file\"", false),
    ] {
        let allowed = repo.file(&allowed_signer("alice", options, &alice), "as2");
        let s = repo.source(
            GitRef::Branch("main".into()),
            ssh_trust(VerifyMode::Head, &allowed),
            "window",
        );
        let why = refusal(&s);
        if want_window {
            assert!(
                matches!(why, Refusal::OutsideValidity(..)),
                "{options}: {why:?}"
            );
        } else {
            assert_eq!(
                why,
                Refusal::UnknownSigner(fingerprint(&alice)),
                "{options}"
            );
        }
    }
}

#[test]
fn tags_and_tag_and_head() {
    let repo = Repo::new();
    let alice = ssh_signing_key(repo.dir.path(), "alice");
    let allowed = repo.file(&allowed_signer("alice", "", &alice), "allowed_signers");
    let sign = ssh_signing(&alice);
    // A signed tag on an unsigned commit.
    let unsigned = repo.commit("v1", None);
    git_signed(&repo.work, &sign, &["tag", "-s", "v1.0.0", "-m", "release"]);
    let tag = |mode, name| repo.source(GitRef::Tag("v*".into()), ssh_trust(mode, &allowed), name);
    let r = tag(VerifyMode::Tag, "t1").fetch().unwrap();
    assert_eq!(r.id, unsigned);
    assert_eq!(r.verified.unwrap().fingerprint, fingerprint(&alice));
    let err = tag(VerifyMode::TagAndHead, "t2").fetch().unwrap_err();
    assert!(
        err.to_string().contains(&format!("commit {unsigned}")),
        "{err}"
    );
    assert_eq!(err.refused.unwrap().reason, Refusal::Unsigned);
    assert_eq!(refusal(&tag(VerifyMode::Head, "t3")), Refusal::Unsigned);

    // A signed commit under an unsigned (annotated, then lightweight) tag.
    let signed = repo.commit("v2", Some(&sign));
    git(&repo.work, &["tag", "-a", "v2.0.0", "-m", "unsigned tag"]);
    let err = tag(VerifyMode::TagAndHead, "t4").fetch().unwrap_err();
    assert!(err.to_string().contains("tag v2.0.0"), "{err}");
    assert_eq!(err.refused.unwrap().reason, Refusal::Unsigned);
    git(&repo.work, &["tag", "v3.0.0"]);
    let why = refusal(&tag(VerifyMode::Tag, "t5"));
    assert!(
        matches!(why, Refusal::Other(ref m) if m.contains("lightweight")),
        "{why:?}"
    );
    // Both signed: applied.
    git_signed(&repo.work, &sign, &["tag", "-s", "v4.0.0", "-m", "release"]);
    let r = tag(VerifyMode::TagAndHead, "t6").fetch().unwrap();
    assert_eq!(r.id, signed);
}

/// A GnuPG home with one key; (home, fingerprint). `faked` signs as of an
/// earlier date (for an expired key).
fn gpg_key(dir: &Path, name: &str, expire: &str, faked: Option<&str>) -> (PathBuf, String) {
    let home = dir.join(format!("gnupg-{name}"));
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let mut cmd = Command::new("gpg");
    cmd.env("GNUPGHOME", &home)
        .args(["--batch", "--passphrase", ""]);
    if let Some(t) = faked {
        cmd.args(["--faked-system-time", t]);
    }
    let out = cmd
        .args([
            "--quick-gen-key",
            &format!("{name} <{name}@example.com>"),
            "ed25519",
            "sign",
            expire,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("gpg")
        .env("GNUPGHOME", &home)
        .args(["--batch", "--with-colons", "--list-keys"])
        .output()
        .unwrap();
    let fpr = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix("fpr:")
                .map(|r| r.trim_matches(':').to_string())
        })
        .unwrap();
    (home, fpr)
}

fn export(home: &Path, fpr: &str) -> String {
    let out = Command::new("gpg")
        .env("GNUPGHOME", home)
        .args(["--batch", "--armor", "--export", fpr])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// `git -c …` signing with GnuPG through a wrapper that sets GNUPGHOME
/// (and a faked time).
fn gpg_signing(dir: &Path, home: &Path, fpr: &str, faked: Option<&str>) -> Vec<String> {
    let wrapper = dir.join(format!("gpg-{fpr}"));
    let faked = faked.map_or(String::new(), |t| format!("--faked-system-time {t} "));
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nGNUPGHOME='{}' exec gpg {faked}\"$@\"\n",
            home.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    vec![
        "-c".into(),
        "gpg.format=openpgp".into(),
        "-c".into(),
        format!("gpg.program={}", wrapper.display()),
        "-c".into(),
        format!("user.signingkey={fpr}"),
    ]
}

#[test]
fn openpgp_signed_commits() {
    let repo = Repo::new();
    let d = repo.dir.path();
    let (alice_home, alice) = gpg_key(d, "alice", "1y", None);
    let (eve_home, eve) = gpg_key(d, "eve", "1y", None);
    let (old_home, old) = gpg_key(d, "old", "1d", Some("20200101T000000"));
    let keyring = repo.file(
        &(export(&alice_home, &alice) + &export(&old_home, &old)),
        "keyring.asc",
    );
    let trust = || Trust::load(VerifyMode::Head, None, Some(&keyring)).unwrap();
    let source = repo.source(GitRef::Branch("main".into()), trust(), "pgp");

    let good = repo.commit("v1", Some(&gpg_signing(d, &alice_home, &alice, None)));
    let r = source.fetch().unwrap();
    assert_eq!(r.id, good);
    let v = r.verified.unwrap();
    assert_eq!(v.fingerprint, alice);
    assert_eq!(v.signer, "alice <alice@example.com>");

    // The same commit with a header added after signing.
    let tampered = repo.tamper(&good);
    git(&repo.work, &["update-ref", "refs/heads/main", &tampered]);
    assert_eq!(
        refusal(&source),
        Refusal::BadSignature(format!("does not verify with key {alice}"))
    );
    git(&repo.work, &["update-ref", "refs/heads/main", &good]);

    repo.commit("v2", Some(&gpg_signing(d, &eve_home, &eve, None)));
    assert!(
        matches!(refusal(&source), Refusal::UnknownSigner(ref f) if eve.ends_with(f.as_str())),
        "{:?}",
        refusal(&source)
    );

    // Signed in 2020 with a key that expired a day later.
    git(&repo.work, &["reset", "-q", "--hard", &good]);
    std::fs::write(repo.work.join("version"), "old").unwrap();
    git(&repo.work, &["add", "-A"]);
    support::git_env(
        &repo.work,
        &gpg_signing(d, &old_home, &old, Some("20200101T120000"))
            .iter()
            .map(String::as_str)
            .chain(["commit", "-q", "-S", "-m", "old"])
            .collect::<Vec<_>>(),
        &[("GIT_COMMITTER_DATE", "2020-01-01T12:00:00Z".into())],
    );
    assert!(
        matches!(refusal(&source), Refusal::OutsideValidity(ref f, _) if *f == old),
        "{:?}",
        refusal(&source)
    );
    assert_eq!(
        repo.source(GitRef::Branch("main".into()), trust(), "pgp2")
            .fetch()
            .ok(),
        None
    );
}

#[test]
fn bad_key_files_are_start_up_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("as");
    std::fs::write(&p, "alice ssh-ed25519 not-base64\n").unwrap();
    let err = Trust::load(VerifyMode::Head, Some(&p), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("{}:1: not an SSH public key", p.display())),
        "{err}"
    );
    std::fs::write(&p, "# nobody\n").unwrap();
    let err = Trust::load(VerifyMode::Head, Some(&p), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no trusted key"), "{err}");
    std::fs::write(&p, "not a keyring").unwrap();
    let err = Trust::load(VerifyMode::Head, None, Some(&p))
        .unwrap_err()
        .to_string();
    assert!(err.contains("OpenPGP"), "{err}");
}
