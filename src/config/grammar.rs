//! Strict grammars for the config values that reach an `ssh_config`, a
//! command line or a path on a host.
//!
//! Everything the repository says is untrusted; most values reach hosts only
//! as quoted argv words (see `shell`), but a few are read by other parsers
//! with their own metacharacters: OpenSSH runs a `ProxyJump` through
//! `/bin/sh`, `ssh_config` splits on whitespace and quotes, Docker takes a
//! container name as a path component on the host. Those values must match
//! a grammar first, here, so `validate` refuses them with file:line.

/// A host name (RFC 1123 labels), an IPv4 address, or an IPv6 address (bare
/// or in brackets).
pub fn is_host(s: &str) -> bool {
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    if s.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A login name: POSIX portable characters, not starting with `-`.
pub fn is_user(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A TCP port, 1..=65535.
pub fn is_port(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u16>().is_ok_and(|p| p > 0)
}

/// A jump host, `[user@]host[:port]` (an IPv6 address in brackets). The
/// whole grammar of `ssh.proxy`: nothing else is passed to OpenSSH, which
/// runs a ProxyJump through `/bin/sh`.
pub fn is_jump(s: &str) -> bool {
    jump_host(s).is_some()
}

/// The host a jump host names (an IPv6 address without its brackets), if
/// `s` is of the grammar of [`is_jump`].
pub fn jump_host(s: &str) -> Option<&str> {
    let rest = match s.split_once('@') {
        Some((user, rest)) if is_user(user) => rest,
        Some(_) => return None,
        None => s,
    };
    let (host, port) = if let Some(after) = rest.strip_prefix('[') {
        let (inner, tail) = after.split_once(']')?;
        let port = match tail {
            "" => None,
            t => Some(t.strip_prefix(':')?),
        };
        inner.parse::<std::net::Ipv6Addr>().ok()?;
        (inner, port)
    } else {
        let (host, port) = match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        };
        if !is_host(host) || host.contains(':') {
            return None;
        }
        (host, port)
    };
    port.is_none_or(is_port).then_some(host)
}

/// A value written as one quoted `ssh_config` word (an `IdentityFile`
/// path): no control characters, no double quote.
pub fn is_config_word(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_control() || c == '"')
}

/// A Docker container name (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`): also a path
/// component on the host (env files, accessory directories), so neither
/// `/` nor a leading `.` can pass.
pub fn is_container_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.len() <= 128
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A relative path on a host that stays below its base: no `..` component,
/// no control characters.
pub fn is_contained_path(s: &str) -> bool {
    !s.chars().any(char::is_control) && !s.split('/').any(|c| c == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "10.0.0.1",
            "web-1.example.com",
            "::1",
            "[fe80::1]",
            "db_1",
            "localhost",
        ] {
            assert!(is_host(ok), "{ok}");
        }
        for bad in [
            "",
            "-oProxyCommand=x",
            "a b",
            "a;b",
            "a$(id)",
            "a'b",
            "host:22",
            "a..b",
            "[zz]",
            "x\n",
        ] {
            assert!(!is_host(bad), "{bad:?}");
        }
    }

    #[test]
    fn jump_hosts() {
        for ok in [
            "root@10.210.0.12",
            "bastion.example.com",
            "deploy@bastion:2222",
            "root@[fe80::1]:22",
            "[::1]",
        ] {
            assert!(is_jump(ok), "{ok}");
        }
        for bad in [
            "root@10.210.20.12$(touch${IFS}PWNED)",
            "root@host -oProxyCommand=x",
            "-J@x",
            "@host",
            "root@host:0",
            "root@host:99999",
            "root@host:22:22",
            "a@b@c",
            "root@`id`",
            "root@host,other",
            "root@host\nProxyCommand x",
            "",
        ] {
            assert!(!is_jump(bad), "{bad:?}");
        }
    }

    #[test]
    fn jump_host_names() {
        assert_eq!(jump_host("root@10.0.0.1:2222"), Some("10.0.0.1"));
        assert_eq!(jump_host("bastion"), Some("bastion"));
        assert_eq!(jump_host("root@[fe80::1]:22"), Some("fe80::1"));
        assert_eq!(jump_host("root@host:0"), None);
    }

    #[test]
    fn users_words_names_paths() {
        assert!(is_user("deploy") && is_user("app.user-1"));
        assert!(!is_user("-l") && !is_user("a b") && !is_user("a@b") && !is_user(""));
        assert!(is_config_word("~/.ssh/id_ed25519 key"));
        assert!(!is_config_word("a\"b") && !is_config_word("a\nIdentityFile x"));
        assert!(is_container_name("demo-db") && is_container_name("app_1.x"));
        for bad in ["", "../x", ".hidden", "a/b", "a b", "-x", "x\u{1b}"] {
            assert!(!is_container_name(bad), "{bad:?}");
        }
        assert!(is_contained_path("/etc/mysql/my.cnf"));
        assert!(!is_contained_path("/../../etc/cron.d/x"));
    }
}
