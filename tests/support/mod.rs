//! Integration-test fixtures: a [`Fleet`] is a real testbed in a slot of its
//! own (so tests run in parallel), with the test images pushed to its
//! registry, torn down on drop. Helpers run real Kamal against it.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use berth_testbed::{self as testbed, Host, SlotLock, Testbed, images};

pub struct Fleet {
    pub tb: Testbed,
    _lock: SlotLock,
}

impl Fleet {
    /// `n` hosts plus the test images (and the kamal-proxy stand-in image).
    /// `None` (the test skips, saying so) without root.
    pub fn up(n: usize) -> Option<Fleet> {
        if !needs_root("fleet tests") {
            return None;
        }
        let lock = testbed::lock_free_slot().expect("testbed slot");
        let tb = testbed::up(lock.slot, n).unwrap_or_else(|e| panic!("testbed up: {e}"));
        let fleet = Fleet { tb, _lock: lock };
        images::push(
            &fleet.tb,
            &images::ImageSet {
                proxy_binary: Some(proxy_binary()),
            },
        )
        .unwrap_or_else(|e| panic!("testbed images: {e}"));
        Some(fleet)
    }

    /// Hosts only, no images.
    pub fn bare(n: usize) -> Option<Fleet> {
        if !needs_root("fleet tests") {
            return None;
        }
        let lock = testbed::lock_free_slot().expect("testbed slot");
        let tb = testbed::up(lock.slot, n).unwrap_or_else(|e| panic!("testbed up: {e}"));
        Some(Fleet { tb, _lock: lock })
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.tb.hosts[i]
    }

    pub fn addrs(&self) -> Vec<String> {
        self.tb.hosts.iter().map(|h| h.addr.to_string()).collect()
    }

    /// A project directory with `config/deploy.yml` and `.kamal/secrets`.
    /// `{registry}`, `{key}` and `{hosts}` (a YAML flow list) are filled in.
    pub fn project(&self, deploy_yml: &str, secrets: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        std::fs::create_dir_all(dir.path().join(".kamal")).unwrap();
        let yml = deploy_yml
            .replace("{registry}", &self.tb.registry())
            .replace("{key}", &self.tb.ssh_key().to_string_lossy())
            .replace("{hosts}", &format!("[{}]", self.addrs().join(", ")));
        std::fs::write(dir.path().join("config/deploy.yml"), yml).unwrap();
        std::fs::write(dir.path().join(".kamal/secrets"), secrets).unwrap();
        dir
    }

    /// Run real Kamal 2.11 in `project`, as a user whose HOME holds the
    /// testbed's client key and known_hosts.
    pub fn kamal(&self, project: &Path, args: &[&str]) -> Output {
        Command::new(kamal_bin())
            .args(args)
            .current_dir(project)
            .env("HOME", self.tb.client_home())
            .env("VERSION", "v1")
            .output()
            .expect("run kamal")
    }

    /// `kamal proxy boot_config set` pointing Kamal at the kamal-proxy
    /// stand-in in the testbed's registry.
    pub fn kamal_use_stand_in_proxy(&self, project: &Path) {
        let reg = self.tb.registry();
        self.kamal_ok(
            project,
            &[
                "proxy",
                "boot_config",
                "set",
                "--registry",
                &reg,
                "--repository",
                images::PROXY_REPOSITORY,
                "--image-version",
                images::PROXY_VERSION,
            ],
        );
    }

    /// Like [`Fleet::kamal`], panicking with Kamal's output unless it succeeds.
    pub fn kamal_ok(&self, project: &Path, args: &[&str]) -> String {
        let out = self.kamal(project, args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "kamal {} failed:\n{text}",
            args.join(" ")
        );
        text
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Err(e) = testbed::down(self.tb.slot) {
            eprintln!("testbed down (slot {}): {e}", self.tb.slot);
        }
    }
}

/// Whether `what` can run: true as root; otherwise it is skipped, and this
/// says so on stderr rather than failing on a missing privilege.
pub fn needs_root(what: &str) -> bool {
    if is_root() {
        return true;
    }
    eprintln!("skipped: {what} need root (network namespaces, dockerd)");
    false
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Real Kamal: `$BERTH_KAMAL`, else the venv scripts/install-deps.sh makes.
pub fn kamal_bin() -> PathBuf {
    std::env::var_os("BERTH_KAMAL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/kamal-venv/bin/kamal"))
}

/// The kamal-proxy stand-in, built once per test binary as a static binary
/// for this machine's triple (as scripts/build-standin.sh does), in the
/// workspace's target directory.
pub fn proxy_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(|d| root.join(d))
            .unwrap_or_else(|| root.join("target"));
        let triple = host_triple();
        let status = Command::new(option_env!("CARGO").unwrap_or("cargo"))
            .args(["build", "--quiet", "--release", "-p", "kamal-proxy-standin"])
            .args(["--target", &triple, "--target-dir"])
            .arg(&target_dir)
            .arg("--manifest-path")
            .arg(root.join("Cargo.toml"))
            .env("RUSTFLAGS", "-Ctarget-feature=+crt-static")
            .status()
            .expect("cargo build kamal-proxy stand-in");
        assert!(status.success(), "building the kamal-proxy stand-in failed");
        target_dir.join(triple).join("release/kamal-proxy")
    })
}

/// The triple rustc builds for by default: the `host:` line of `rustc -vV`.
fn host_triple() -> String {
    let out = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .arg("-vV")
        .output()
        .expect("rustc -vV");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .unwrap_or_else(|| panic!("no host line in rustc -vV:\n{text}"))
        .trim()
        .to_string()
}

/// HTTP GET from inside a host's network namespace (where container IPs and
/// the host's published ports are reachable), via curl.
pub fn http_get_in(host: &Host, url: &str) -> Option<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", host.netns))
        .args(["curl", "-sf", "--max-time", "5", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// HTTP/1.0 GET from the machine (root namespace): `Ok(body)` on 200,
/// `Err` naming what went wrong otherwise.
pub fn http_get(addr: &str, path: &str, host_header: Option<&str>) -> Result<String, String> {
    let (status, body) = exchange(addr, "GET", path, host_header.unwrap_or(addr), &[], "")?;
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(body)
    } else {
        Err(format!("{status}: {}", body.trim()))
    }
}

/// One HTTP/1.0 exchange with `addr`: (status line, body).
fn exchange(
    addr: &str,
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, String)],
    body: &str,
) -> Result<(String, String), String> {
    use std::io::{Read, Write};
    use std::time::Duration;
    let sa: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP response: {text:?}"))?;
    Ok((
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}

impl Fleet {
    /// Tear down now and return whatever was left behind (empty when clean).
    pub fn teardown(self) -> Vec<String> {
        let slot = self.tb.slot;
        drop(self);
        testbed::leftovers(slot)
    }
}

/// The deploy.yml head every Kamal test uses: the testbed's registry and SSH.
pub const KAMAL_COMMON: &str = "registry:
  server: {registry}
  username: test
  password: [KAMAL_REGISTRY_PASSWORD]
builder:
  arch: amd64
ssh:
  user: root
  keys_only: true
  keys: [{key}]
  config: false
";

/// Run `git` in `dir` with a fixed author and extra environment; panics
/// with git's stderr on failure; returns stdout, trimmed.
pub fn git_env(dir: &Path, args: &[&str], env: &[(&str, String)]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "dev")
        .env("GIT_AUTHOR_EMAIL", "dev@example.test")
        .env("GIT_COMMITTER_NAME", "dev")
        .env("GIT_COMMITTER_EMAIL", "dev@example.test")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// [`git_env`] without extra environment.
pub fn git(dir: &Path, args: &[&str]) -> String {
    git_env(dir, args, &[])
}

/// A free TCP port on 127.0.0.1 (for a server a test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A raw HTTP/1.0 request to 127.0.0.1:`port`; (status, body), status 0
/// when nothing answers.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, String) {
    match exchange(
        &format!("127.0.0.1:{port}"),
        method,
        path,
        "berth",
        headers,
        body,
    ) {
        Ok((status, body)) => (
            status
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
            body,
        ),
        Err(_) => (0, String::new()),
    }
}

/// The value of the sample `name{labels}` in a Prometheus text exposition.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

/// Write a Kamal project (`config/deploy.yml`, `.kamal/secrets`) into the
/// clone `work`, commit it and push it to its origin's `main`; the commit id.
pub fn push_project(work: &Path, deploy_yml: &str, message: &str) -> String {
    std::fs::create_dir_all(work.join("config")).unwrap();
    std::fs::create_dir_all(work.join(".kamal")).unwrap();
    std::fs::write(work.join("config/deploy.yml"), deploy_yml).unwrap();
    std::fs::write(
        work.join(".kamal/secrets"),
        "KAMAL_REGISTRY_PASSWORD=unused\n",
    )
    .unwrap();
    git(work, &["add", "-A"]);
    git(work, &["commit", "-qm", message]);
    git(work, &["push", "-q", "origin", "HEAD:main"]);
    git(work, &["rev-parse", "HEAD"])
}

/// A new ed25519 SSH key `dir/name` (no passphrase) for signing commits;
/// its private key path.
pub fn ssh_signing_key(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .output()
        .expect("run ssh-keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    key
}

/// An allowed_signers line for `key` (its `.pub` beside it).
pub fn allowed_signer(principal: &str, options: &str, key: &Path) -> String {
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let mut words = public.split_whitespace();
    let (kind, blob) = (words.next().unwrap(), words.next().unwrap());
    format!("{principal} {options} {kind} {blob}\n").replace("  ", " ")
}

/// `git -c …` arguments that sign with the SSH key `key` (`-S`, `tag -s`).
pub fn ssh_signing(key: &Path) -> Vec<String> {
    vec![
        "-c".into(),
        "gpg.format=ssh".into(),
        "-c".into(),
        format!("user.signingkey={}", key.display()),
    ]
}

/// `git <signing…> <args…>` in `dir`.
pub fn git_signed(dir: &Path, signing: &[String], args: &[&str]) -> String {
    let all: Vec<&str> = signing
        .iter()
        .map(String::as_str)
        .chain(args.iter().copied())
        .collect();
    git(dir, &all)
}
