//! `secret`: the [`Secret`] type, which never prints its value, and the
//! SHA-256 fingerprints berth compares values by (env files on hosts are
//! compared by hash, never read back). A leaf: `config` reads secrets,
//! `source`, `apply` and `server` hold them, `plan` compares fingerprints.

use std::fmt;

use sha2::{Digest, Sha256};

/// SHA-256 of `value`, hex.
pub fn fingerprint(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// HMAC-SHA256 of `body` with `key`, hex: what webhooks are signed with,
/// both the ones berth receives and the ones it sends.
pub fn hmac_hex(key: &[u8], body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    // HMAC takes keys of any length; an empty result never matches.
    let Ok(mut mac) = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A secret value. `Debug` and `Display` print `(sensitive)`; only
/// [`Secret::expose`] gives the value, so every place that leaks it is greppable.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for writing it where it belongs (an env file on a host).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A SHA-256 of the value, hex: lets berth tell whether a secret changed
    /// without ever storing or printing it.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(sensitive)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(sensitive)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "(sensitive) (sensitive)");
        assert_eq!(s.fingerprint(), fingerprint("hunter2"));
        assert_eq!(s.fingerprint().len(), 64);
    }
}
