//! `remote::direct`: a one-shot run's SSH client inside berth's own process
//! (russh). `reconcile --dry-run` needs one shell and one Docker socket per
//! host, once; an OpenSSH master per host costs this machine more CPU than
//! the host's own sshd does (the observe bench prints both). Here a host
//! costs one TCP connection and no process.
//!
//! It is used only where it connects as OpenSSH with berth's ssh_config
//! would ([`Plan::for_options`] says why not otherwise): no jump host or
//! ProxyCommand, strict host keys, a user's or `ssh.config`'s ssh_config
//! holding only directives that change nothing here, no ssh-agent (OpenSSH
//! offers its keys first), and key files in OpenSSH's order whose first
//! usable one is ed25519 or ECDSA; keys are offered in that order up to the
//! first one OpenSSH would offer and this client cannot (RSA, a
//! certificate), so a host accepts the key OpenSSH would have used, with
//! the same `authorized_keys` options. Encrypted keys and keys others may
//! read are skipped, as OpenSSH in BatchMode skips them. Everything else
//! goes to OpenSSH, and so does any host whose key no known_hosts line
//! lists, that accepts none of the keys, or that speaks nothing in common
//! with russh: OpenSSH then decides and reports as it always has. A host
//! that cannot be reached at all is reported at once (OpenSSH would only
//! wait as long again).
//!
//! Host keys: accepted only if a line of the known_hosts files OpenSSH would
//! read lists the key for the host and no `@revoked` line does
//! ([`crate::known_hosts`], OpenSSH's matching). The host-key
//! algorithms those lines list are asked for first, as OpenSSH orders them,
//! so a host is never refused for showing a key type nobody recorded.
//!
//! Costs (observe bench, 2 cores): the key exchange (NIST P-256 first, the
//! cheapest for the host's sshd) and one signature per host, in process; no
//! `ssh` started, no control socket.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{Algorithm, EcdsaCurve, HashAlg, PrivateKey, PrivateKeyWithHashAlg};

use super::{Duplex, Lifetime, SshOptions};
use crate::known_hosts::{self, Verdict};

/// What a one-shot run connects with, decided once per connection set.
pub(super) struct Plan {
    user: String,
    port: u16,
    keys: Vec<Arc<PrivateKey>>,
    /// The known_hosts files OpenSSH would read, one after another (their
    /// lines are read one by one: a revoked line in any file still wins).
    known_hosts: Arc<str>,
    timeout: Duration,
}

/// Why a host is not reached in process.
#[derive(Debug)]
pub(super) enum Failure {
    /// Nothing answers (refused, unroutable, timed out): OpenSSH would fail
    /// the same way.
    Unreachable(String),
    /// OpenSSH may do what this client will not (an unlisted host key, a
    /// key it cannot use, an algorithm it lacks): ask it.
    UseOpenSsh(String),
}

/// A host's SSH connection, made in process.
pub(super) struct Session {
    handle: Handle<Checker>,
}

impl Plan {
    /// The plan for `o`, or why OpenSSH must connect instead. `home` is
    /// where `~/.ssh` is.
    pub(super) fn for_options(o: &SshOptions, home: Option<&Path>) -> Result<Plan, String> {
        if o.lifetime != Lifetime::OneShot {
            return Err("not a one-shot run".into());
        }
        if o.jump.is_some() || o.proxy_command.is_some() {
            return Err("a jump host or ProxyCommand is OpenSSH's".into());
        }
        if o.accept_new_host_keys {
            return Err("accepting new host keys is OpenSSH's".into());
        }
        // The files berth's ssh_config includes (see `ssh_config_file`).
        let mut configs: Vec<PathBuf> = o.config_files.clone();
        if o.use_ssh_config
            && configs.is_empty()
            && let Some(h) = home
            && h.join(".ssh/config").exists()
        {
            configs.push(h.join(".ssh/config"));
        }
        for c in &configs {
            let text = read_file(c).map_err(|e| e.to_string())?;
            inert_ssh_config(&text, o.known_hosts.is_some())
                .map_err(|d| format!("{}: `{d}` is OpenSSH's to apply", c.display()))?;
        }

        if o.agent {
            return Err("an ssh-agent (SSH_AUTH_SOCK) offers its keys first, to OpenSSH".into());
        }
        let keys = identities(o, home)?;

        let user_files: Vec<PathBuf> = match (&o.known_hosts, home) {
            (Some(f), _) => vec![f.clone()],
            (None, Some(h)) => vec![h.join(".ssh/known_hosts"), h.join(".ssh/known_hosts2")],
            (None, None) => Vec::new(),
        };
        // Every file ssh reads, or OpenSSH's: a file left out could be the
        // one with a host's `@revoked` line.
        let mut known: Vec<String> = Vec::new();
        for f in user_files.iter().map(PathBuf::as_path).chain([
            Path::new("/etc/ssh/ssh_known_hosts"),
            Path::new("/etc/ssh/ssh_known_hosts2"),
        ]) {
            match read_file(f) {
                Ok(text) => known.push(text),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(Plan {
            user: o.user.clone(),
            port: o.port,
            keys,
            known_hosts: known.join("\n").into(),
            timeout: o.connect_timeout,
        })
    }

    /// Connect to `host`, check its key, authenticate.
    pub(super) async fn connect(&self, host: &str) -> Result<Session, Failure> {
        let name = host.trim_matches(['[', ']']).to_string();
        let tcp = tokio::time::timeout(
            self.timeout,
            tokio::net::TcpStream::connect((name.as_str(), self.port)),
        )
        .await
        .map_err(|_| Failure::Unreachable("connection timed out".into()))?
        .map_err(|e| Failure::Unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);

        let verdict = Arc::new(std::sync::Mutex::new(None));
        let checker = Checker {
            host: name.clone(),
            port: self.port,
            known_hosts: self.known_hosts.clone(),
            verdict: verdict.clone(),
        };
        let config = Arc::new(client::Config {
            client_id: russh::SshId::Standard(format!(
                "SSH-2.0-berth_{}",
                env!("CARGO_PKG_VERSION")
            )),
            preferred: russh::Preferred {
                kex: Cow::Borrowed(KEX_ORDER),
                key: Cow::Owned(host_key_order(&self.known_hosts, &name, self.port)),
                ..russh::Preferred::default()
            },
            // As berth's ssh_config says (ServerAliveInterval 15, CountMax 3).
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 3,
            nodelay: true,
            ..client::Config::default()
        });
        let open = async {
            let mut handle = client::connect_stream(config, tcp, checker)
                .await
                .map_err(|e| {
                    let seen = *verdict.lock().unwrap_or_else(|p| p.into_inner());
                    Failure::UseOpenSsh(match seen {
                        Some(Verdict::Unknown) => "the host key is not listed".into(),
                        Some(Verdict::Revoked) => "the host key is revoked".into(),
                        _ => format!("key exchange: {e}"),
                    })
                })?;
            for key in &self.keys {
                let offer = PrivateKeyWithHashAlg::new(key.clone(), None);
                match handle
                    .authenticate_publickey(self.user.clone(), offer)
                    .await
                {
                    Ok(r) if r.success() => return Ok(Session { handle }),
                    Ok(_) => {}
                    Err(e) => return Err(Failure::UseOpenSsh(format!("authentication: {e}"))),
                }
            }
            Err(Failure::UseOpenSsh("no key was accepted".into()))
        };
        tokio::time::timeout(self.timeout, open)
            .await
            .map_err(|_| Failure::Unreachable("no SSH handshake in time".into()))?
    }
}

impl Session {
    /// `command` (one string for the remote shell, built by
    /// [`crate::shell::join`]) on a channel of its own: its stdin and stdout.
    pub(super) async fn exec(&self, command: &str) -> Result<Box<dyn Duplex>, String> {
        let channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| format!("cannot open a channel: {e}"))?;
        channel
            .exec(true, command)
            .await
            .map_err(|e| format!("cannot start the command: {e}"))?;
        Ok(Box::new(channel.into_stream()))
    }

    /// A connection to the host's unix socket at `path` (sshd's
    /// direct-streamlocal, what `ssh -L local:remote` asks for).
    pub(super) async fn unix_socket(&self, path: &str) -> Result<Box<dyn Duplex>, String> {
        let channel = self
            .handle
            .channel_open_direct_streamlocal(path)
            .await
            .map_err(|e| format!("cannot forward the Docker socket: {e}"))?;
        Ok(Box::new(channel.into_stream()))
    }

    pub(super) async fn close(&self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "")
            .await;
    }
}

/// As `kex_preference` orders OpenSSH's for a one-shot run: ML-KEM hybrid
/// (post-quantum) where the host has it (OpenSSH 9.9+), then NIST P-256,
/// OpenSSL's and so the cheapest for the host's sshd; the extension markers
/// (strict key exchange, against prefix truncation) as russh needs them.
const KEX_ORDER: &[russh::kex::Name] = &[
    russh::kex::MLKEM768X25519_SHA256,
    russh::kex::ECDH_SHA2_NISTP256,
    russh::kex::CURVE25519,
    russh::kex::CURVE25519_PRE_RFC_8731,
    russh::kex::ECDH_SHA2_NISTP384,
    russh::kex::ECDH_SHA2_NISTP521,
    russh::kex::DH_GEX_SHA256,
    russh::kex::DH_G16_SHA512,
    russh::kex::DH_G14_SHA256,
    russh::kex::EXTENSION_SUPPORT_AS_CLIENT,
    russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
];

/// Key types this client signs with (RSA is left to OpenSSH).
fn usable(a: Algorithm) -> bool {
    matches!(a, Algorithm::Ed25519 | Algorithm::Ecdsa { .. })
}

/// russh's host-key algorithms, those known_hosts lists for the host first
/// (OpenSSH's order otherwise).
fn host_key_order(known: &str, host: &str, port: u16) -> Vec<Algorithm> {
    let default: Vec<Algorithm> = vec![
        Algorithm::Ed25519,
        Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP256,
        },
        Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP384,
        },
        Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP521,
        },
        Algorithm::Rsa {
            hash: Some(HashAlg::Sha512),
        },
        Algorithm::Rsa {
            hash: Some(HashAlg::Sha256),
        },
    ];
    let listed = known_hosts::listed_algorithms(known, host, port);
    let is_listed = |a: &Algorithm| {
        let name = match a {
            // A listed `ssh-rsa` key serves either signature.
            Algorithm::Rsa { .. } => "ssh-rsa".to_string(),
            a => a.as_str().to_string(),
        };
        listed.contains(&name)
    };
    let (mut first, rest): (Vec<Algorithm>, Vec<Algorithm>) =
        default.into_iter().partition(is_listed);
    first.extend(rest);
    first
}

/// The host-key check, and what it found (read when the handshake fails).
struct Checker {
    host: String,
    port: u16,
    known_hosts: Arc<str>,
    verdict: Arc<std::sync::Mutex<Option<Verdict>>>,
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKey,
    ) -> Result<bool, Self::Error> {
        let verdict = match key.to_bytes() {
            Ok(blob) => known_hosts::check(
                &self.known_hosts,
                &self.host,
                self.port,
                known_hosts::HostKey::Raw(&blob),
            ),
            Err(_) => Verdict::Unknown,
        };
        *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(verdict);
        Ok(verdict == Verdict::Known)
    }
}

/// A file of the user's own (ssh_config, key, known_hosts) as berth reads
/// any file: regular files only, opened without blocking, capped.
fn read_file(path: &Path) -> Result<String, crate::checkout::FileError> {
    crate::checkout::Checkout::unconfined().read_text(path)
}

/// OpenSSH's default identities, in its order (`ssh_config(5)`,
/// IdentityFile), when berth's ssh_config names none.
const DEFAULT_IDENTITIES: &[&str] = &[
    "id_rsa",
    "id_ecdsa",
    "id_ecdsa_sk",
    "id_ed25519",
    "id_ed25519_sk",
    "id_xmss",
    "id_dsa",
];

/// The keys OpenSSH would offer, in its order (`ssh.keys`, then
/// `ssh.key_data`, as berth's ssh_config lists them; else its default
/// identities), up to the first one this client cannot offer as OpenSSH
/// would (an RSA key, a certificate beside a key, ...). A host that accepts
/// one of them is then authenticated with the key OpenSSH would have used:
/// per-key restrictions in `authorized_keys` (`restrict`, `command=`) apply
/// the same. Empty: OpenSSH's to connect.
fn identities(o: &SshOptions, home: Option<&Path>) -> Result<Vec<Arc<PrivateKey>>, String> {
    let files: Vec<PathBuf> = if o.keys.is_empty() && o.key_data.is_empty() {
        home.map(|h| {
            DEFAULT_IDENTITIES
                .iter()
                .map(|f| h.join(".ssh").join(f))
                .collect()
        })
        .unwrap_or_default()
    } else {
        o.keys.clone()
    };
    // Lazily, in OpenSSH's order: nothing after the first stop is read.
    let offered = files
        .iter()
        .map(|f| (f.display().to_string(), identity_file(f)))
        .chain(
            o.key_data
                .iter()
                .map(|k| ("ssh.key_data".to_string(), identity(k.expose().trim()))),
        );
    let mut keys = Vec::new();
    let mut stop = None;
    for (source, id) in offered {
        match id {
            Identity::Usable(k) => keys.push(k),
            Identity::Skipped => {}
            Identity::OpenSsh(why) => {
                stop = Some(format!("{source}: {why}"));
                break;
            }
        }
    }
    match (keys.is_empty(), stop) {
        (false, _) => Ok(keys),
        (true, Some(why)) => Err(why),
        (true, None) => Err("no unencrypted ed25519 or ECDSA key file".into()),
    }
}

/// What OpenSSH (in BatchMode) does with an identity, as far as this client
/// follows it.
enum Identity {
    /// Offered and signed with here.
    Usable(Arc<PrivateKey>),
    /// OpenSSH passes over it too: missing or unreadable, readable by
    /// others, encrypted (BatchMode asks for no passphrase).
    Skipped,
    /// OpenSSH would offer it and this client does not.
    OpenSsh(&'static str),
}

/// A key file: not one of this user's files that others may read (OpenSSH
/// ignores those: "UNPROTECTED PRIVATE KEY FILE").
fn identity_file(path: &Path) -> Identity {
    use std::os::unix::fs::MetadataExt;
    // OpenSSH offers `<key>-cert.pub` with the key: certificates are its
    // own, and so is the key beside one.
    let mut cert = path.as_os_str().to_owned();
    cert.push("-cert.pub");
    if Path::new(&cert).exists() {
        return Identity::OpenSsh("a certificate beside it is OpenSSH's");
    }
    let Ok(meta) = std::fs::metadata(path) else {
        return Identity::Skipped;
    };
    if meta.uid() == rustix::process::getuid().as_raw() && meta.mode() & 0o077 != 0 {
        return Identity::Skipped;
    }
    match read_file(path) {
        Ok(text) => identity(&text),
        // A FIFO, a huge file: OpenSSH's to judge.
        Err(_) => Identity::OpenSsh("a key file this client does not read"),
    }
}

fn identity(text: &str) -> Identity {
    // OpenSSH's own format tells an encrypted key and the key type apart
    // without a passphrase; any other format is OpenSSH's to read.
    match ssh_key::PrivateKey::from_openssh(text) {
        Ok(k) if k.is_encrypted() => Identity::Skipped,
        Ok(k)
            if !matches!(
                k.algorithm(),
                ssh_key::Algorithm::Ed25519 | ssh_key::Algorithm::Ecdsa { .. }
            ) =>
        {
            Identity::OpenSsh(
                "a key of a type this client does not sign with (RSA, DSA, a security key)",
            )
        }
        Ok(_) => match russh::keys::decode_secret_key(text, None) {
            Ok(k) if usable(k.algorithm()) => Identity::Usable(Arc::new(k)),
            _ => Identity::OpenSsh("a key this client cannot read"),
        },
        Err(_) => Identity::OpenSsh("a key format this client does not read"),
    }
}

/// Whether an ssh_config changes nothing this client does: only directives
/// that berth's own ssh_config sets first (the first value read wins) or
/// that concern what this client never does (X11, agents, GSSAPI,
/// passwords, multiplexing). `Match`, `Include` and anything else make it
/// OpenSSH's; the offending directive is returned.
fn inert_ssh_config(text: &str, known_hosts_set: bool) -> Result<(), String> {
    const INERT: &[&str] = &[
        "host",
        "sendenv",
        "hashknownhosts",
        "gssapiauthentication",
        "gssapidelegatecredentials",
        "forwardx11",
        "forwardx11trusted",
        "forwardagent",
        "addkeystoagent",
        "serveraliveinterval",
        "serveralivecountmax",
        "tcpkeepalive",
        "loglevel",
        "visualhostkey",
        "updatehostkeys",
        "checkhostip",
        "batchmode",
        "stricthostkeychecking",
        "passwordauthentication",
        "kbdinteractiveauthentication",
        "challengeresponseauthentication",
        "controlmaster",
        "controlpath",
        "controlpersist",
        "connecttimeout",
        "compression",
        "identitiesonly",
    ];
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let keyword = line
            .split(|c: char| c.is_whitespace() || c == '=')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let set_first = keyword == "userknownhostsfile" && known_hosts_set;
        if !INERT.contains(&keyword.as_str()) && !set_first {
            return Err(keyword);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_config_that_changes_nothing_here_is_applied_in_process() {
        let debian =
            "Host *\n    SendEnv LANG LC_*\n    HashKnownHosts yes\n    GSSAPIAuthentication yes\n";
        assert_eq!(inert_ssh_config(debian, false), Ok(()));
        assert_eq!(
            inert_ssh_config("# c\nHost *\n  StrictHostKeyChecking=no\n", false),
            Ok(())
        );
        for (text, directive) in [
            ("Host web\n  HostName 10.0.0.9\n", "hostname"),
            ("Host *\n  ProxyJump bastion\n", "proxyjump"),
            ("Match exec \"true\"\n", "match"),
            ("Include ~/.ssh/more\n", "include"),
            ("IdentityFile ~/.ssh/other\n", "identityfile"),
            ("Port=2222\n", "port"),
            ("UserKnownHostsFile /tmp/kh\n", "userknownhostsfile"),
        ] {
            assert_eq!(
                inert_ssh_config(text, false),
                Err(directive.into()),
                "{text}"
            );
        }
        // berth's own UserKnownHostsFile comes first and wins.
        assert_eq!(
            inert_ssh_config("UserKnownHostsFile /tmp/kh\n", true),
            Ok(())
        );
    }

    fn opts(dir: &Path) -> SshOptions {
        let mut o = SshOptions::from_config(&crate::config::Ssh::default(), None);
        o.lifetime = Lifetime::OneShot;
        o.agent = false;
        o.control_dir = dir.join("ctl");
        o
    }

    fn keygen(path: &Path, kind: &str, passphrase: &str) {
        let ok = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", kind, "-N", passphrase, "-f"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ssh-keygen");
    }

    #[test]
    fn what_openssh_would_do_differently_stays_openssh() {
        if std::process::Command::new("ssh-keygen")
            .arg("-?")
            .output()
            .is_err()
        {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path();
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        let key = home.join(".ssh/id_ed25519");
        keygen(&key, "ed25519", "");

        let o = opts(home);
        assert!(Plan::for_options(&o, Some(home)).is_ok());
        // A controller's connections are OpenSSH's.
        let mut p = o.clone();
        p.lifetime = Lifetime::Persistent;
        assert!(Plan::for_options(&p, Some(home)).is_err());
        for change in [
            |o: &mut SshOptions| o.jump = Some("bastion".into()),
            |o: &mut SshOptions| o.proxy_command = Some("nc %h %p".into()),
            |o: &mut SshOptions| o.accept_new_host_keys = true,
        ] {
            let mut c = o.clone();
            change(&mut c);
            assert!(Plan::for_options(&c, Some(home)).is_err());
        }
        // A user config naming a HostName.
        std::fs::write(home.join(".ssh/config"), "Host *\n  HostName x\n").unwrap();
        assert!(Plan::for_options(&o, Some(home)).is_err());
        let mut ignore = o.clone();
        ignore.use_ssh_config = false;
        assert!(Plan::for_options(&ignore, Some(home)).is_ok());
        std::fs::remove_file(home.join(".ssh/config")).unwrap();

        // A key others may read is ignored, as OpenSSH ignores it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Plan::for_options(&o, Some(home)).is_err());
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

        // An encrypted key, or an RSA one: OpenSSH's.
        let mut named = o.clone();
        let enc = home.join("enc");
        keygen(&enc, "ed25519", "secret words");
        named.keys = vec![enc];
        assert!(Plan::for_options(&named, Some(home)).is_err());
        let rsa = home.join("rsa");
        keygen(&rsa, "rsa", "");
        named.keys = vec![rsa.clone()];
        assert!(Plan::for_options(&named, Some(home)).is_err());
        // OpenSSH's order: a key it offers before any this client can
        // offer is OpenSSH's (the host might accept that one, with other
        // authorized_keys options); one it skips (encrypted) is not.
        named.keys = vec![rsa.clone(), key.clone()];
        assert!(Plan::for_options(&named, Some(home)).is_err());
        named.keys = vec![key.clone(), rsa.clone()];
        assert_eq!(
            Plan::for_options(&named, Some(home)).map(|p| p.keys.len()),
            Ok(1)
        );
        named.keys = vec![home.join("enc"), home.join("missing"), key.clone()];
        assert_eq!(
            Plan::for_options(&named, Some(home)).map(|p| p.keys.len()),
            Ok(1)
        );
        // The default identities: id_rsa comes first.
        std::fs::copy(&rsa, home.join(".ssh/id_rsa")).unwrap();
        assert!(Plan::for_options(&o, Some(home)).is_err());
        std::fs::remove_file(home.join(".ssh/id_rsa")).unwrap();
        // A certificate beside the key: OpenSSH offers it next.
        let cert = home.join(".ssh/id_ed25519-cert.pub");
        std::fs::write(&cert, "ssh-ed25519-cert-v01@openssh.com AAAA\n").unwrap();
        assert!(Plan::for_options(&o, Some(home)).is_err());
        std::fs::remove_file(&cert).unwrap();
        // Files read as berth reads any: a FIFO does not block, and a
        // known_hosts left unread (it might revoke the key) is OpenSSH's.
        let fifo = home.join("fifo");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let mut kh = o.clone();
        kh.known_hosts = Some(fifo.clone());
        assert!(Plan::for_options(&kh, Some(home)).is_err());
        kh.known_hosts = Some(home.join("no-such-file"));
        assert!(Plan::for_options(&kh, Some(home)).is_ok());
        named.keys = vec![fifo, key.clone()];
        assert!(Plan::for_options(&named, Some(home)).is_err());
        // An agent's keys come first for OpenSSH.
        let mut agent = o.clone();
        agent.agent = true;
        assert!(Plan::for_options(&agent, Some(home)).is_err());
        assert!(Plan::for_options(&o, Some(home)).is_ok());
    }

    #[test]
    fn host_key_types_listed_for_the_host_are_asked_for_first() {
        let kh = "h ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBBkltpuulGykrfuvabzYVg71fzloL9ut5wC+XiSR7/FY5RxM6/f10KR30aL0YYcIiUGcEudeBSmmAsj9vrggYLA=
";
        let order = host_key_order(kh, "h", 22);
        assert_eq!(
            order[0],
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256
            }
        );
        assert_eq!(order[1], Algorithm::Ed25519);
        // Another host's lines change nothing.
        assert_eq!(host_key_order(kh, "g", 22)[0], Algorithm::Ed25519);
    }
}
