//! `config::sops`: `.kamal/secrets*` files encrypted with SOPS (dotenv
//! format, age recipients), decrypted in-process into the text `sops -d`
//! prints, which the secrets parser then reads as any secrets file.
//!
//! The format, as SOPS 3 writes it: each value `ENC[AES256_GCM,data:…,iv:…,
//! tag:…,type:str]`, AES-256-GCM under the file's data key with a 32-byte
//! nonce and the key's path (`KEY:`) as additional data; the data key
//! age-encrypted per recipient (`sops_age__list_N__map_enc`, armored, line
//! breaks written `\n`); `sops_mac`: the upper-hex SHA-512 of every value in
//! file order (only the encrypted ones with `sops_mac_only_encrypted`),
//! encrypted with `sops_lastmodified` as additional data. A file whose MAC
//! does not match is refused, so no value can be swapped, dropped or
//! reordered. Keys ending in `sops_unencrypted_suffix` stay in clear (and in
//! the MAC). Other SOPS selection options are refused, not guessed at.

use std::path::Path;
use std::str::FromStr;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::Engine;
use sha2::{Digest, Sha512};

use crate::secret::Secret;

/// age identities (`AGE-SECRET-KEY-1…` lines of an age key file, as
/// `age-keygen` writes it and `SOPS_AGE_KEY_FILE` names).
pub struct AgeKeys(Vec<age::x25519::Identity>);

impl std::fmt::Debug for AgeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgeKeys({} key(s))", self.0.len())
    }
}

impl AgeKeys {
    /// Read a key file; errors name the file and line, never a key.
    pub fn load(path: &Path) -> Result<AgeKeys, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            keys.push(age::x25519::Identity::from_str(line).map_err(|_| {
                format!(
                    "{}:{}: not an age secret key (AGE-SECRET-KEY-1…)",
                    path.display(),
                    i + 1
                )
            })?);
        }
        if keys.is_empty() {
            return Err(format!("{}: holds no age secret key", path.display()));
        }
        Ok(AgeKeys(keys))
    }
}

/// Why a SOPS file could not be decrypted. Never carries a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SopsError {
    /// The line, when one is at fault.
    pub line: Option<usize>,
    pub message: String,
}

fn at(line: usize, message: impl Into<String>) -> SopsError {
    SopsError {
        line: Some(line),
        message: message.into(),
    }
}

fn whole(message: impl Into<String>) -> SopsError {
    SopsError {
        line: None,
        message: message.into(),
    }
}

/// Is this secrets file SOPS-encrypted (it carries SOPS's metadata)?
pub fn is_sops(text: &str) -> bool {
    text.lines()
        .any(|l| l.starts_with("sops_mac=") || l.starts_with("sops_version="))
}

type Aes256Gcm32 = aes_gcm::AesGcm<aes_gcm::aes::Aes256, aes_gcm::aead::consts::U32>;

/// One `ENC[AES256_GCM,…]` value decrypted (`""` stays `""`, as in SOPS).
fn decrypt_value(enc: &str, key: &[u8], aad: &str) -> Result<(Vec<u8>, String), String> {
    if enc.is_empty() {
        return Ok((Vec::new(), "str".into()));
    }
    let inner = enc
        .strip_prefix("ENC[AES256_GCM,")
        .and_then(|r| r.strip_suffix(']'))
        .ok_or("not a SOPS encrypted value (ENC[AES256_GCM,…])")?;
    let mut parts = [None, None, None, None];
    for field in inner.split(',') {
        let (name, value) = field.split_once(':').ok_or("malformed ENC[…] value")?;
        let slot = ["data", "iv", "tag", "type"]
            .iter()
            .position(|n| *n == name)
            .ok_or("malformed ENC[…] value")?;
        parts[slot] = Some(value);
    }
    let [Some(data), Some(iv), Some(tag), Some(kind)] = parts else {
        return Err("malformed ENC[…] value".into());
    };
    let b64 = |s: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| "malformed ENC[…] value (base64)".to_string())
    };
    let (mut msg, iv, tag) = (b64(data)?, b64(iv)?, b64(tag)?);
    if iv.len() != 32 || tag.len() != 16 {
        return Err("unsupported ENC[…] value (SOPS writes 32-byte nonces)".into());
    }
    msg.extend_from_slice(&tag);
    let cipher = Aes256Gcm32::new_from_slice(key).map_err(|_| "bad data key length")?;
    let plain = cipher
        .decrypt(
            aes_gcm::Nonce::<aes_gcm::aead::consts::U32>::from_slice(&iv),
            Payload {
                msg: &msg,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| "does not decrypt (tampered, or another file's value)")?;
    Ok((plain, kind.to_string()))
}

/// Decrypt a SOPS dotenv file into the dotenv text `sops -d` prints.
pub fn decrypt(text: &str, keys: Option<&AgeKeys>) -> Result<Secret, SopsError> {
    let keys = keys.ok_or_else(|| {
        whole("encrypted with SOPS: give berth the age key (--age-key-file or SOPS_AGE_KEY_FILE)")
    })?;
    // SOPS's dotenv reader: one item per non-empty line, `\n` escapes.
    let mut items: Vec<(usize, Option<&str>, String)> = Vec::new();
    let mut meta: Vec<(usize, &str, String)> = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let n = i + 1;
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            items.push((n, None, comment.to_string()));
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| at(n, "expected KEY=value"))?;
        let v = v.replace("\\n", "\n");
        match k.strip_prefix("sops_") {
            Some(m) => meta.push((n, m, v)),
            None => items.push((n, Some(k), v)),
        }
    }
    let get = |name: &str| meta.iter().find(|(_, k, _)| *k == name);
    let mut unencrypted_suffix = None;
    let mut mac_only_encrypted = false;
    for (n, k, v) in &meta {
        match *k {
            "mac" | "lastmodified" | "version" => {}
            "unencrypted_suffix" => unencrypted_suffix = Some(v.as_str()),
            "mac_only_encrypted" => mac_only_encrypted = v == "true",
            k if k.starts_with("age__list_")
                || k.starts_with("pgp__list_")
                || k.starts_with("kms__list_")
                || k.starts_with("gcp_kms__list_")
                || k.starts_with("azure_kv__list_")
                || k.starts_with("hc_vault__list_") => {}
            other => {
                return Err(at(
                    *n,
                    format!("sops_{other}: this SOPS option is not supported by berth"),
                ));
            }
        }
    }
    // The data key: from the first age recipient one of our keys opens.
    let mut data_key = None;
    for (_, _, armored) in meta
        .iter()
        .filter(|(_, k, _)| k.starts_with("age__list_") && k.ends_with("__map_enc"))
    {
        let Ok(decryptor) = age::Decryptor::new(age::armor::ArmoredReader::new(armored.as_bytes()))
        else {
            continue;
        };
        let identities = keys.0.iter().map(|k| k as &dyn age::Identity);
        if let Ok(mut reader) = decryptor.decrypt(identities) {
            let mut key = Vec::new();
            if std::io::Read::read_to_end(&mut reader, &mut key).is_ok() && key.len() == 32 {
                data_key = Some(Secret::new(hex::encode(&key)));
                break;
            }
        }
    }
    let data_key = data_key.ok_or_else(|| {
        whole("none of the given age keys is a recipient of this file (wrong key?)")
    })?;
    let data_key = hex::decode(data_key.expose()).map_err(|_| whole("bad data key"))?;

    let mut hash = Sha512::new();
    if mac_only_encrypted {
        hash.update([
            0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47,
            0xbe, 0x0b, 0x0b, 0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81,
            0x76, 0xf2, 0x7d, 0x69,
        ]);
    }
    let mut out = String::new();
    for (n, key, value) in &items {
        let Some(key) = key else {
            // A comment: SOPS encrypts it under the path `:`; an old file's
            // clear comment is kept as it is.
            let shown = decrypt_value(value, &data_key, ":")
                .ok()
                .and_then(|(p, _)| String::from_utf8(p).ok())
                .unwrap_or_else(|| value.clone());
            out.push('#');
            out.push_str(&shown);
            out.push('\n');
            continue;
        };
        let encrypted = unencrypted_suffix.is_none_or(|s| !key.ends_with(s));
        let plain = if encrypted {
            let (p, kind) = decrypt_value(value, &data_key, &format!("{key}:"))
                .map_err(|m| at(*n, format!("{key}: {m}")))?;
            if !["str", "int", "float", "bool", "bytes"].contains(&kind.as_str()) {
                return Err(at(*n, format!("{key}: unsupported value type {kind:?}")));
            }
            String::from_utf8(p).map_err(|_| at(*n, format!("{key}: not UTF-8")))?
        } else {
            value.clone()
        };
        if !mac_only_encrypted || encrypted {
            hash.update(plain.as_bytes());
        }
        out.push_str(key);
        out.push('=');
        out.push_str(&plain.replace('\n', "\\n"));
        out.push('\n');
    }
    let (mac_line, _, mac) = get("mac")
        .ok_or_else(|| whole("no sops_mac: refusing a file whose integrity cannot be checked"))?;
    let (_, _, modified) = get("lastmodified").ok_or_else(|| whole("no sops_lastmodified"))?;
    let (stored, _) = decrypt_value(mac, &data_key, modified)
        .map_err(|m| at(*mac_line, format!("sops_mac: {m}")))?;
    let computed = hex::encode_upper(hash.finalize());
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        stored.as_slice(),
        computed.as_bytes(),
    )) {
        return Err(at(
            *mac_line,
            "sops_mac does not match the values: the file was changed after it was encrypted",
        ));
    }
    Ok(Secret::new(out))
}
