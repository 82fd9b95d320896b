//! `known_hosts`: is a server's SSH host key listed for it in a known_hosts
//! file (a Git server's for `source`, a fleet host's for `remote::direct`)?
//! Lines are parsed by the `ssh-key` crate (markers, hashed `|1|salt|hash`
//! names as `HashKnownHosts yes` writes them, pattern lists); matching
//! follows OpenSSH's `ssh`: the name is `host`, or `[host]:port` off port
//! 22, lower-cased; `*`/`?` globs, a matching `!` pattern rules its line
//! out; a `@revoked` key listed for the host is refused whatever else lists
//! it. `@cert-authority` lines are skipped (neither libssh2 nor
//! `remote::direct` accepts host certificates), and so are lines `ssh-key`
//! cannot parse (OpenSSH skips them too).

use hmac::{KeyInit, Mac};
use ssh_key::known_hosts::{Entry, HostPatterns, KnownHosts, Marker};

/// The server's host key as libssh2 hands it over: the raw key blob, or
/// only its SHA-256.
#[derive(Clone, Copy, Debug)]
pub enum HostKey<'a> {
    Raw(&'a [u8]),
    Sha256(&'a [u8]),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A line for the host lists this key.
    Known,
    /// A `@revoked` line for the host lists this key.
    Revoked,
    /// No line for the host lists it.
    Unknown,
}

/// The name OpenSSH looks `host` up by: lower-cased, `[host]:port` off 22.
fn lookup_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// The key algorithms (`ssh-ed25519`, ...) of the keys `known_hosts` lists
/// for `host` on `port`, revoked and CA lines left out: what an SSH client
/// asks the host for first, as OpenSSH does.
pub fn listed_algorithms(known_hosts: &str, host: &str, port: u16) -> Vec<String> {
    let name = lookup_name(host, port);
    KnownHosts::new(known_hosts)
        .flatten()
        .filter(|e| e.marker().is_none() && host_matches(e.host_patterns(), &name))
        .map(|e| e.public_key().algorithm().as_str().to_string())
        .collect()
}

/// What `known_hosts` says about `key` for `host` on `port`.
pub fn check(known_hosts: &str, host: &str, port: u16, key: HostKey<'_>) -> Verdict {
    let name = lookup_name(host, port);
    let mut verdict = Verdict::Unknown;
    for entry in KnownHosts::new(known_hosts).flatten() {
        if entry.marker() == Some(&Marker::CertAuthority)
            || !host_matches(entry.host_patterns(), &name)
            || !key_matches(&entry, key)
        {
            continue;
        }
        if entry.marker() == Some(&Marker::Revoked) {
            return Verdict::Revoked;
        }
        verdict = Verdict::Known;
    }
    verdict
}

fn key_matches(entry: &Entry, key: HostKey<'_>) -> bool {
    match key {
        HostKey::Raw(blob) => entry
            .public_key()
            .to_bytes()
            .is_ok_and(|listed| listed == blob),
        HostKey::Sha256(hash) => {
            entry
                .public_key()
                .fingerprint(ssh_key::HashAlg::Sha256)
                .as_bytes()
                == hash
        }
    }
}

/// OpenSSH's `match_hostname`: a positive match and no negated one; a
/// hashed name is HMAC-SHA1(salt, name).
fn host_matches(patterns: &HostPatterns, name: &str) -> bool {
    match patterns {
        HostPatterns::HashedName { salt, hash } => {
            let Ok(mut mac) = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(salt) else {
                return false;
            };
            mac.update(name.as_bytes());
            mac.verify_slice(hash).is_ok()
        }
        HostPatterns::Patterns(list) => {
            let mut positive = false;
            for p in list {
                match p.strip_prefix('!') {
                    Some(negated) if glob(&negated.to_ascii_lowercase(), name) => return false,
                    Some(_) => {}
                    None => positive |= glob(&p.to_ascii_lowercase(), name),
                }
            }
            positive
        }
    }
}

/// `*` any run, `?` any one character; everything else literal.
fn glob(pattern: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    // Iterative with one backtrack point: linear in practice, no recursion
    // on a hostile pattern.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == '?' || c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real keys (ssh-keygen -t ed25519), so `ssh-key` parses the lines.
    const A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIB9dG4kjRhQTtWTVzd2t27+t0DEHBPW7iOD23TUiYLio";
    const B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    fn blob(b64: &str) -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    }

    fn verdict(kh: &str, host: &str, port: u16, key: &str) -> Verdict {
        let raw = blob(key);
        let by_raw = check(kh, host, port, HostKey::Raw(&raw));
        // libssh2 may hand over only the SHA-256: the same answer.
        use sha2::Digest;
        let hash = sha2::Sha256::digest(&raw);
        assert_eq!(
            by_raw,
            check(kh, host, port, HostKey::Sha256(&hash)),
            "{kh}"
        );
        by_raw
    }

    #[test]
    fn plain_ported_and_patterned_names() {
        let kh = format!(
            "# a comment\n\n10.0.0.1 ssh-ed25519 {A}\n[10.0.0.2]:2222,other ssh-ed25519 {A} comment\n*.example.net,!bad.example.net ssh-ed25519 {A}\nGIT.Example.org ssh-ed25519 {A}\n"
        );
        assert_eq!(verdict(&kh, "10.0.0.1", 22, A), Verdict::Known);
        assert_eq!(verdict(&kh, "10.0.0.1", 22, B), Verdict::Unknown);
        assert_eq!(verdict(&kh, "10.0.0.2", 2222, A), Verdict::Known);
        assert_eq!(verdict(&kh, "10.0.0.2", 22, A), Verdict::Unknown);
        assert_eq!(verdict(&kh, "10.0.0.1", 2222, A), Verdict::Unknown);
        assert_eq!(verdict(&kh, "other", 22, A), Verdict::Known);
        assert_eq!(verdict(&kh, "git.example.net", 22, A), Verdict::Known);
        assert_eq!(verdict(&kh, "bad.example.net", 22, A), Verdict::Unknown);
        assert_eq!(verdict(&kh, "example.net", 22, A), Verdict::Unknown);
        assert_eq!(verdict(&kh, "git.example.org", 22, A), Verdict::Known);
        assert_eq!(verdict(&kh, "10.0.0.3", 22, A), Verdict::Unknown);
    }

    #[test]
    fn hashed_names_as_ssh_keygen_hashes_them() {
        // `ssh-keygen -H` of "10.0.0.1 …" and "[10.0.0.2]:2222 …" (salts fixed here).
        let hashed = |name: &str, salt: &[u8]| {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD;
            let mut mac = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(salt).unwrap();
            mac.update(name.as_bytes());
            let hash = mac.finalize().into_bytes();
            format!("|1|{}|{}", b64.encode(salt), b64.encode(hash))
        };
        let kh = format!(
            "{} ssh-ed25519 {A}\n{} ssh-ed25519 {B}\n",
            hashed("10.0.0.1", b"01234567890123456789"),
            hashed("[10.0.0.2]:2222", b"abcdefghijabcdefghij")
        );
        assert_eq!(verdict(&kh, "10.0.0.1", 22, A), Verdict::Known);
        assert_eq!(verdict(&kh, "10.0.0.1", 22, B), Verdict::Unknown);
        assert_eq!(verdict(&kh, "10.0.0.2", 2222, B), Verdict::Known);
        assert_eq!(verdict(&kh, "10.0.0.2", 22, B), Verdict::Unknown);
        assert_eq!(verdict(&kh, "10.0.0.3", 22, A), Verdict::Unknown);
    }

    #[test]
    fn revoked_wins_cert_authorities_and_garbage_are_skipped() {
        let kh = format!(
            "10.0.0.1 ssh-ed25519 {A}\n@revoked * ssh-ed25519 {A}\n@cert-authority * ssh-ed25519 {B}\nnot a line\n10.0.0.1 ssh-ed25519 !!!\n"
        );
        assert_eq!(verdict(&kh, "10.0.0.1", 22, A), Verdict::Revoked);
        // A CA's key is not a host key.
        assert_eq!(verdict(&kh, "10.0.0.1", 22, B), Verdict::Unknown);
        let kh = format!("@revoked 10.0.0.9 ssh-ed25519 {A}\n10.0.0.1 ssh-ed25519 {A}\n");
        assert_eq!(verdict(&kh, "10.0.0.1", 22, A), Verdict::Known);
    }

    #[test]
    fn the_algorithms_listed_for_a_host_are_its_lines_only() {
        let ecdsa = "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBBkltpuulGykrfuvabzYVg71fzloL9ut5wC+XiSR7/FY5RxM6/f10KR30aL0YYcIiUGcEudeBSmmAsj9vrggYLA=";
        let kh = format!(
            "10.0.0.1 ecdsa-sha2-nistp256 {ecdsa}\n@revoked 10.0.0.1 ssh-ed25519 {A}\n@cert-authority * ssh-ed25519 {B}\n[10.0.0.1]:2222 ssh-ed25519 {B}\n"
        );
        assert_eq!(
            listed_algorithms(&kh, "10.0.0.1", 22),
            ["ecdsa-sha2-nistp256"]
        );
        assert_eq!(listed_algorithms(&kh, "10.0.0.1", 2222), ["ssh-ed25519"]);
        assert!(listed_algorithms(&kh, "10.0.0.2", 22).is_empty());
    }

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("a*b?c", "axxbyc"));
        assert!(!glob("a*b?c", "axxbc"));
        assert!(glob("[*.example.net]:999", "[git.example.net]:999"));
        assert!(!glob("10.0.0.1", "10.0.0.10"));
        assert!(glob("*.*.*.*", "10.0.0.1"));
        // Patterns that make a recursive matcher backtrack exponentially.
        assert!(!glob(&"*a".repeat(50), &"a".repeat(40)));
        assert!(glob(&"*a".repeat(50), &"a".repeat(5000)));
    }
}
