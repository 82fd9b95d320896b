//! `source::verify`: whether a fetched revision may be applied — the
//! signature of the commit to apply (`head`), of the followed annotated tag
//! (`tag`), or both (`tag_and_head`), checked against trusted keys: an SSH
//! `allowed_signers` file (the format `ssh-keygen -Y verify` reads, checked
//! with RustCrypto's `ssh-key`) and/or an OpenPGP keyring (armored public
//! keys, checked with rPGP, the `pgp` crate: pure Rust, no system library,
//! maintained; sequoia-openpgp needs nettle or an experimental backend).
//!
//! The signature is taken from the object itself through `git2`
//! (`extract_signature`: the `gpgsig` / `gpgsig-sha256` header of a commit;
//! a tag's signature is the armored block its message ends with), never by
//! running `git` or `gpg`. Every result is kept per object id, so a
//! revision is verified once however many cycles see it (an object id
//! names its content: a tampered object is another id).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::types::KeyDetails;

/// What must be signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyMode {
    /// The commit to apply.
    Head,
    /// The followed annotated tag (`--tag` only).
    Tag,
    /// Both the tag and the commit it points to.
    TagAndHead,
}

/// A signature that verified.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Verified {
    /// `SHA256:…` of the SSH key, or the OpenPGP key's hex fingerprint.
    pub fingerprint: String,
    /// The allowed_signers principals, or the OpenPGP key's first user id.
    pub signer: String,
}

/// Why an object is not trusted. Never quotes a key or signature.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not signed")]
    Unsigned,
    #[error("signed by a key that is not trusted ({0})")]
    UnknownSigner(String),
    #[error("bad signature ({0})")]
    BadSignature(String),
    #[error("signed by {0}, outside its validity window ({1})")]
    OutsideValidity(String, String),
    #[error("signed by {0}, a revoked key")]
    Revoked(String),
    #[error("{0}")]
    Other(String),
}

/// A revision refused by verification.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{object} is not verified: {reason}")]
pub struct VerifyError {
    /// `commit <id>` or `tag <name> (<id>)`.
    pub object: String,
    pub reason: Refusal,
}

/// A start-up error in the trusted keys: file, line, what.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{}: {message}", file.display())]
    File { file: PathBuf, message: String },
    #[error("{}:{line}: {message}", file.display())]
    Line {
        file: PathBuf,
        line: usize,
        message: String,
    },
}

/// The options of an allowed_signers line.
#[derive(Default)]
struct Options {
    namespaces: Option<Vec<String>>,
    valid_after: Option<i64>,
    valid_before: Option<i64>,
    cert_authority: bool,
}

/// One line of an allowed_signers file.
#[derive(Clone, Debug)]
struct AllowedSigner {
    principals: String,
    namespaces: Option<Vec<String>>,
    valid_after: Option<i64>,
    valid_before: Option<i64>,
    cert_authority: bool,
    key: ssh_key::public::KeyData,
}

/// The trust policy of one repository.
pub struct Trust {
    pub mode: VerifyMode,
    ssh: Vec<AllowedSigner>,
    openpgp: Vec<SignedPublicKey>,
    /// Object id → result (bounded: cleared when it grows past 1024).
    cache: Mutex<HashMap<String, Result<Verified, Refusal>>>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("mode", &self.mode)
            .field("ssh_keys", &self.ssh.len())
            .field("openpgp_keys", &self.openpgp.len())
            .finish()
    }
}

const NAMESPACE: &str = "git";

impl Trust {
    /// Read the trusted keys (at least one file). Every problem is an error
    /// naming the file (and line): a key that silently did not load would
    /// refuse every deploy, or worse, a typo would widen trust.
    pub fn load(
        mode: VerifyMode,
        allowed_signers: Option<&Path>,
        openpgp_keyring: Option<&Path>,
    ) -> Result<Trust, KeysError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| KeysError::File {
                file: p.to_path_buf(),
                message: format!("cannot read: {e}"),
            })
        };
        let ssh = match allowed_signers {
            Some(p) => parse_allowed_signers(&read(p)?, p)?,
            None => Vec::new(),
        };
        let openpgp = match openpgp_keyring {
            Some(p) => {
                let text = read(p)?;
                let bad = |message: String| KeysError::File {
                    file: p.to_path_buf(),
                    message,
                };
                let mut out = Vec::new();
                // One armored block per key, as `gpg --export --armor` writes
                // them (the parser reads a single block).
                const BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
                let blocks: Vec<String> = text
                    .split(BEGIN)
                    .skip(1)
                    .map(|b| format!("{BEGIN}{b}"))
                    .collect();
                if blocks.is_empty() {
                    return Err(bad("not an armored OpenPGP keyring".into()));
                }
                let mut keys = Vec::new();
                for block in &blocks {
                    let (many, _) = SignedPublicKey::from_string_many(block)
                        .map_err(|e| bad(format!("not an armored OpenPGP keyring: {e}")))?;
                    keys.extend(many);
                }
                for k in keys {
                    let k = k.map_err(|e| bad(format!("unreadable key: {e}")))?;
                    k.verify_bindings().map_err(|e| {
                        bad(format!(
                            "key {:X}: its self-signatures do not verify: {e}",
                            k.fingerprint()
                        ))
                    })?;
                    out.push(k);
                }
                if out.is_empty() {
                    return Err(bad("holds no public key".into()));
                }
                out
            }
            None => Vec::new(),
        };
        if ssh.is_empty() && openpgp.is_empty() {
            return Err(KeysError::File {
                file: allowed_signers
                    .or(openpgp_keyring)
                    .unwrap_or(Path::new("(none)"))
                    .to_path_buf(),
                message: "no trusted key: verification would refuse every revision".into(),
            });
        }
        Ok(Trust {
            mode,
            ssh,
            openpgp,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Verify what the mode asks of `commit` (and of the tag object `tag`,
    /// when the source follows a tag). The result for the commit's verdict
    /// is what `Revision::verified` carries.
    pub fn check(
        &self,
        repo: &git2::Repository,
        commit: git2::Oid,
        tag: Option<(&str, git2::Oid)>,
        now: i64,
    ) -> Result<Verified, VerifyError> {
        let commit_obj = || format!("commit {commit}");
        let mut last = None;
        if matches!(self.mode, VerifyMode::Tag | VerifyMode::TagAndHead) {
            let Some((name, id)) = tag else {
                return Err(VerifyError {
                    object: commit_obj(),
                    reason: Refusal::Other("tag verification needs a followed tag".into()),
                });
            };
            let v = self
                .cached(&format!("tag:{id}"), || self.verify_tag(repo, id, now))
                .map_err(|reason| VerifyError {
                    object: format!("tag {name} ({id})"),
                    reason,
                })?;
            last = Some(v);
        }
        if matches!(self.mode, VerifyMode::Head | VerifyMode::TagAndHead) {
            let v = self
                .cached(&format!("commit:{commit}"), || {
                    self.verify_commit(repo, commit, now)
                })
                .map_err(|reason| VerifyError {
                    object: commit_obj(),
                    reason,
                })?;
            last = Some(v);
        }
        last.ok_or_else(|| VerifyError {
            object: commit_obj(),
            reason: Refusal::Other("nothing to verify".into()),
        })
    }

    fn cached(
        &self,
        key: &str,
        f: impl FnOnce() -> Result<Verified, Refusal>,
    ) -> Result<Verified, Refusal> {
        if let Some(r) = self.cache.lock().ok().and_then(|c| c.get(key).cloned()) {
            return r;
        }
        let r = f();
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= 1024 {
                c.clear();
            }
            c.insert(key.to_string(), r.clone());
        }
        r
    }

    fn verify_commit(
        &self,
        repo: &git2::Repository,
        id: git2::Oid,
        now: i64,
    ) -> Result<Verified, Refusal> {
        let commit = repo
            .find_commit(id)
            .map_err(|e| Refusal::Other(format!("cannot read the commit: {}", e.message())))?;
        let time = commit.committer().when().seconds();
        // SHA-1 repositories sign in `gpgsig`, SHA-256 ones in `gpgsig-sha256`.
        let extracted = repo
            .extract_signature(&id, None)
            .or_else(|_| repo.extract_signature(&id, Some("gpgsig-sha256")));
        let (sig, data) = match extracted {
            Ok(x) => x,
            Err(e) if e.code() == git2::ErrorCode::NotFound => return Err(Refusal::Unsigned),
            Err(e) => return Err(Refusal::Other(e.message().to_string())),
        };
        self.verify_signature(&sig, &data, time, now)
    }

    fn verify_tag(
        &self,
        repo: &git2::Repository,
        id: git2::Oid,
        now: i64,
    ) -> Result<Verified, Refusal> {
        let Ok(tag) = repo.find_tag(id) else {
            return Err(Refusal::Other(
                "a lightweight tag (no tag object) cannot be signed".into(),
            ));
        };
        let time = tag.tagger().map_or(0, |t| t.when().seconds());
        let odb = repo
            .odb()
            .map_err(|e| Refusal::Other(e.message().to_string()))?;
        let raw = odb
            .read(id)
            .map_err(|e| Refusal::Other(e.message().to_string()))?;
        let (data, sig) = split_tag_signature(raw.data()).ok_or(Refusal::Unsigned)?;
        self.verify_signature(sig, data, time, now)
    }

    /// `time`: when the object claims it was signed (committer or tagger
    /// time, as git passes to `ssh-keygen -Overify-time`); the key must be
    /// valid then and now.
    fn verify_signature(
        &self,
        sig: &[u8],
        data: &[u8],
        time: i64,
        now: i64,
    ) -> Result<Verified, Refusal> {
        if sig.starts_with(b"-----BEGIN SSH SIGNATURE-----") {
            self.verify_ssh(sig, data, time, now)
        } else if sig.starts_with(b"-----BEGIN PGP SIGNATURE-----") {
            self.verify_openpgp(sig, data, now)
        } else {
            Err(Refusal::Other(
                "an unsupported signature format (SSH and OpenPGP are)".into(),
            ))
        }
    }

    fn verify_ssh(
        &self,
        sig: &[u8],
        data: &[u8],
        time: i64,
        now: i64,
    ) -> Result<Verified, Refusal> {
        let sig = ssh_key::SshSig::from_pem(sig)
            .map_err(|e| Refusal::BadSignature(format!("unreadable SSH signature: {e}")))?;
        let key = sig.public_key().clone();
        let fp = key.fingerprint(ssh_key::HashAlg::Sha256).to_string();
        let entries: Vec<&AllowedSigner> = self
            .ssh
            .iter()
            .filter(|e| !e.cert_authority && e.key == key)
            .filter(|e| {
                e.namespaces
                    .as_ref()
                    .is_none_or(|n| n.iter().any(|n| n == NAMESPACE))
            })
            .collect();
        if entries.is_empty() {
            return Err(Refusal::UnknownSigner(fp));
        }
        ssh_key::PublicKey::from(key)
            .verify(NAMESPACE, data, &sig)
            .map_err(|e| Refusal::BadSignature(e.to_string()))?;
        let in_window = |e: &&&AllowedSigner, t: i64| {
            e.valid_after.is_none_or(|a| t >= a) && e.valid_before.is_none_or(|b| t < b)
        };
        let Some(entry) = entries
            .iter()
            .find(|e| in_window(e, time) && in_window(e, now))
        else {
            return Err(Refusal::OutsideValidity(
                fp,
                "valid-after/valid-before of its allowed_signers line, at the commit's time or now"
                    .into(),
            ));
        };
        Ok(Verified {
            fingerprint: fp,
            signer: entry.principals.clone(),
        })
    }

    fn verify_openpgp(&self, sig: &[u8], data: &[u8], now: i64) -> Result<Verified, Refusal> {
        let text = std::str::from_utf8(sig)
            .map_err(|_| Refusal::BadSignature("not ASCII armor".into()))?;
        let (sig, _) = DetachedSignature::from_string(text)
            .map_err(|e| Refusal::BadSignature(format!("unreadable OpenPGP signature: {e}")))?;
        let created = sig
            .signature
            .created()
            .map_or(0, |t| i64::from(t.as_secs()));
        let issuers: Vec<String> = sig
            .signature
            .issuer_fingerprint()
            .iter()
            .map(|f| format!("{f:X}"))
            .chain(
                sig.signature
                    .issuer_key_id()
                    .iter()
                    .map(|k| hex::encode_upper(k.as_ref())),
            )
            .collect();
        let sig = &sig;
        let mut bad = None;
        for key in &self.openpgp {
            let primary = format!("{:X}", key.fingerprint());
            let signer = key
                .details
                .users
                .first()
                .map(|u| String::from_utf8_lossy(u.id.id()).into_owned())
                .unwrap_or_default();
            // The primary key, then each subkey bound to it.
            let mut candidates: Vec<(String, Option<u64>, PgpKey<'_>)> = Vec::new();
            let expiry = key_expiry(key);
            candidates.push((primary.clone(), expiry, PgpKey::Primary(&key.primary_key)));
            for sub in &key.public_subkeys {
                if sub.verify_bindings(&key.primary_key).is_err() {
                    continue;
                }
                let sub_expiry = sub
                    .signatures
                    .iter()
                    .filter_map(|s| s.key_expiration_time())
                    .map(|d| u64::from(sub.key.created_at().as_secs()) + u64::from(d.as_secs()))
                    .max()
                    .or(expiry);
                candidates.push((
                    format!("{:X}", sub.key.fingerprint()),
                    sub_expiry,
                    PgpKey::Sub(&sub.key),
                ));
            }
            for (fp, expires, verifies) in candidates {
                if !issuers.is_empty() && !issuers.iter().any(|i| fp.ends_with(i.as_str())) {
                    continue;
                }
                let verifies = match verifies {
                    PgpKey::Primary(k) => sig.verify(k, data),
                    PgpKey::Sub(k) => sig.verify(k, data),
                };
                if verifies.is_err() {
                    // Another key may still be the signer (a signature
                    // naming no issuer is tried against every key).
                    bad = Some(primary.clone());
                    continue;
                }
                if !key.details.revocation_signatures.is_empty() {
                    return Err(Refusal::Revoked(primary));
                }
                if let Some(exp) = expires
                    && (created >= exp as i64 || now >= exp as i64)
                {
                    return Err(Refusal::OutsideValidity(
                        primary,
                        "the key has expired".into(),
                    ));
                }
                return Ok(Verified {
                    fingerprint: primary,
                    signer,
                });
            }
        }
        if let Some(key) = bad {
            return Err(Refusal::BadSignature(format!(
                "does not verify with key {key}"
            )));
        }
        Err(Refusal::UnknownSigner(
            issuers
                .first()
                .cloned()
                .unwrap_or_else(|| "no issuer".into()),
        ))
    }
}

/// A key a signature may be by: the primary key or a bound subkey.
enum PgpKey<'a> {
    Primary(&'a pgp::packet::PublicKey),
    Sub(&'a pgp::packet::PublicSubkey),
}

/// When a primary key expires: its newest user self-signature's key
/// expiration, from the key's creation. `None`: never.
fn key_expiry(key: &SignedPublicKey) -> Option<u64> {
    let sig = key
        .details
        .users
        .iter()
        .flat_map(|u| &u.signatures)
        .chain(&key.details.direct_signatures)
        .max_by_key(|s| s.created().map(|t| t.as_secs()))?;
    sig.key_expiration_time()
        .map(|d| u64::from(key.primary_key.created_at().as_secs()) + u64::from(d.as_secs()))
}

/// A tag object's signed part and its signature: the signature is the last
/// armored block starting a line (git's `parse_signed_buffer`).
fn split_tag_signature(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    let markers: [&[u8]; 2] = [
        b"-----BEGIN PGP SIGNATURE-----",
        b"-----BEGIN SSH SIGNATURE-----",
    ];
    let mut at = None;
    let mut start = 0;
    while start < raw.len() {
        if markers.iter().any(|m| raw[start..].starts_with(m)) {
            at = Some(start);
        }
        match raw[start..].iter().position(|&b| b == b'\n') {
            Some(n) => start += n + 1,
            None => break,
        }
    }
    at.map(|i| raw.split_at(i))
}

/// Parse an allowed_signers file: `principals [options] keytype base64
/// [comment]`, options `namespaces="…"`, `valid-after="…"`,
/// `valid-before="…"`, `cert-authority`.
fn parse_allowed_signers(text: &str, file: &Path) -> Result<Vec<AllowedSigner>, KeysError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let err = |message: String| KeysError::Line {
            file: file.to_path_buf(),
            line: i + 1,
            message,
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words = split_words(line).map_err(&err)?;
        let mut w = words.iter().map(String::as_str);
        let principals = w.next().unwrap_or_default().to_string();
        let mut next = w.next().ok_or_else(|| err("expected a key".into()))?;
        let mut entry = Options::default();
        if ssh_key::Algorithm::new(next).is_err() {
            for opt in split_options(next) {
                let (name, value) = match opt.split_once('=') {
                    Some((n, v)) => (n, Some(v.trim_matches('"'))),
                    None => (opt.as_str(), None),
                };
                match (name.to_ascii_lowercase().as_str(), value) {
                    ("cert-authority", None) => entry.cert_authority = true,
                    ("namespaces", Some(v)) => {
                        entry.namespaces = Some(v.split(',').map(str::to_string).collect());
                    }
                    ("valid-after", Some(v)) => {
                        entry.valid_after = Some(parse_time(v).map_err(&err)?);
                    }
                    ("valid-before", Some(v)) => {
                        entry.valid_before = Some(parse_time(v).map_err(&err)?);
                    }
                    _ => return Err(err(format!("unknown option {name:?}"))),
                }
            }
            next = w.next().ok_or_else(|| err("expected a key type".into()))?;
        }
        let blob = w.next().ok_or_else(|| err("expected the key".into()))?;
        let key = ssh_key::PublicKey::from_openssh(&format!("{next} {blob}"))
            .map_err(|e| err(format!("not an SSH public key: {e}")))?;
        out.push(AllowedSigner {
            principals,
            namespaces: entry.namespaces,
            valid_after: entry.valid_after,
            valid_before: entry.valid_before,
            cert_authority: entry.cert_authority,
            key: key.key_data().clone(),
        });
    }
    Ok(out)
}

/// Words separated by spaces, double quotes keeping spaces inside a word.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let (words, quoted) = split_unquoted(line, |c| c == ' ' || c == '\t');
    if quoted {
        return Err("unterminated quote".into());
    }
    Ok(words.into_iter().filter(|w| !w.is_empty()).collect())
}

/// Options separated by commas outside quotes.
fn split_options(s: &str) -> Vec<String> {
    split_unquoted(s, |c| c == ',').0
}

/// `s` split at the separators outside double quotes (the quotes kept);
/// whether a quote is left open.
fn split_unquoted(s: &str, sep: impl Fn(char) -> bool) -> (Vec<String>, bool) {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        if c == '"' {
            quoted = !quoted;
        }
        if !quoted && sep(c) {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    (out, quoted)
}

/// `YYYYMMDD[HHMM[SS]][Z]` as seconds since the epoch, in UTC (ssh-keygen
/// reads a time without `Z` as local time: berth's containers run in UTC).
fn parse_time(v: &str) -> Result<i64, String> {
    let d = v.strip_suffix(['Z', 'z']).unwrap_or(v);
    let bad = || format!("bad time {v:?} (YYYYMMDD[HHMM[SS]][Z])");
    if !d.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&d.len()) {
        return Err(bad());
    }
    let n = |a: usize, b: usize| d.get(a..b).map_or(Ok(0), str::parse::<i64>);
    let (y, m, day) = (
        n(0, 4).map_err(|_| bad())?,
        n(4, 6).map_err(|_| bad())?,
        n(6, 8).map_err(|_| bad())?,
    );
    let (hh, mm, ss) = (
        n(8, 10).map_err(|_| bad())?,
        n(10, 12).map_err(|_| bad())?,
        n(12, 14).map_err(|_| bad())?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return Err(bad());
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_lines() {
        assert_eq!(parse_time("19700101"), Ok(0));
        assert_eq!(parse_time("20240229123000Z"), Ok(1_709_209_800));
        assert!(parse_time("2024").is_err());
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
        let text = format!(
            "# c\nalice@example.com,bob namespaces=\"git,file\",valid-after=\"20200101\" {key} comment\n* cert-authority {key}\n"
        );
        let v = parse_allowed_signers(&text, Path::new("as")).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].principals, "alice@example.com,bob");
        assert_eq!(v[0].namespaces.as_deref().unwrap(), ["git", "file"]);
        assert_eq!(v[0].valid_after, Some(1_577_836_800));
        assert!(v[1].cert_authority);
        let err = parse_allowed_signers("a bogus=1 ssh-ed25519 AAAA\n", Path::new("as"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("as:1: unknown option"), "{err}");
    }

    #[test]
    fn tag_signature_is_the_last_block() {
        let raw = b"object x\ntag v1\n\nmsg\n-----BEGIN PGP SIGNATURE-----\nabc\n-----END PGP SIGNATURE-----\n";
        let (data, sig) = split_tag_signature(raw).unwrap();
        assert_eq!(data, b"object x\ntag v1\n\nmsg\n");
        assert!(sig.starts_with(b"-----BEGIN PGP"));
        assert!(split_tag_signature(b"object x\n\nno sig\n").is_none());
    }
}
