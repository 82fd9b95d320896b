//! `berth run --repo https://…` against a real smart-HTTP Git server on
//! 127.0.0.1: `git http-backend` (fcgiwrap) behind nginx with TLS from a CA
//! made here by openssl, and basic auth for the token as GitHub takes it
//! (`x-access-token`). The right token fetches and follows the branch; a
//! wrong one is a clear error that never shows the token; a certificate for
//! another name, or from a CA berth was not given, is refused.
//!
//! No root: nginx runs in the foreground as this user (one process), on
//! ports of 127.0.0.1; both servers are killed when the test ends.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::http_hardening::{Berth, DEPLOY_YML, poll, project, request};
use crate::support::{free_port, git};

const TOKEN: &str = "ghs_right-token-4f1c2b";
const WRONG: &str = "ghs_wrong-token-9e8d7c";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `openssl <words>` in `dir` (no word holds a space).
fn openssl(dir: &Path, words: &str) {
    run(Command::new("openssl")
        .args(words.split_whitespace())
        .current_dir(dir));
}

/// nginx + fcgiwrap serving `repo.git`, TLS by a test CA, basic auth.
struct GitHttps {
    dir: tempfile::TempDir,
    servers: Vec<Child>,
    /// Its certificate names `localhost` (a DNS name: libgit2 1.9 reports
    /// an IP address missing from the certificate as "received early EOF").
    port: u16,
    /// Its certificate (same CA) names `git.invalid` only.
    wrong_name_port: u16,
}

impl GitHttps {
    fn start(token: &str) -> GitHttps {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["tmp", "git"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        const EC: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        openssl(
            d,
            &format!("req -x509 {EC} -keyout ca.key -out ca.pem -days 2 -subj /CN=berth-test-CA"),
        );
        for (name, san) in [("good", "DNS:localhost"), ("wrong", "DNS:git.invalid")] {
            openssl(
                d,
                &format!("req {EC} -keyout {name}.key -out {name}.csr -subj /CN={name}"),
            );
            std::fs::write(
                d.join(format!("{name}.ext")),
                format!(
                    "subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
                ),
            )
            .unwrap();
            openssl(
                d,
                &format!(
                    "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
                     -out {name}.pem -extfile {name}.ext"
                ),
            );
        }
        git(
            &d.join("git"),
            &["init", "-q", "--bare", "-b", "main", "repo.git"],
        );
        let server = GitHttps {
            dir,
            servers: Vec::new(),
            port: 0,
            wrong_name_port: 0,
        };
        server.set_token(token);
        server.serve()
    }

    /// fcgiwrap, then nginx on two free ports (again on other ports if
    /// another process took one meanwhile).
    fn serve(mut self) -> GitHttps {
        let d = self.dir.path().to_path_buf();
        let sock = d.join("fcgi.sock");
        self.servers.push(
            Command::new("fcgiwrap")
                .args(["-c", "4", "-s"])
                .arg(format!("unix:{}", sock.display()))
                // Its own process group: its preforked children go with it.
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.join("fcgiwrap.log")).unwrap())
                .spawn()
                .expect("fcgiwrap (scripts/install-deps.sh installs it)"),
        );
        assert!(
            poll(Duration::from_secs(10), || sock.exists().then_some(())).is_some(),
            "fcgiwrap made no socket"
        );
        for _ in 0..5 {
            (self.port, self.wrong_name_port) = (free_port(), free_port());
            std::fs::write(d.join("nginx.conf"), self.nginx_conf(&sock)).unwrap();
            let mut nginx = Command::new("nginx")
                .arg("-p")
                .arg(&d)
                .arg("-c")
                .arg(d.join("nginx.conf"))
                .arg("-e")
                .arg(d.join("error.log"))
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.join("nginx.stderr")).unwrap())
                .spawn()
                .expect("nginx (scripts/install-deps.sh installs it)");
            let up = poll(Duration::from_secs(10), || {
                if nginx.try_wait().unwrap().is_some() {
                    return Some(false);
                }
                [self.port, self.wrong_name_port]
                    .iter()
                    .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
                    .then_some(true)
            });
            if up == Some(true) {
                self.servers.push(nginx);
                return self;
            }
            let _ = nginx.kill();
            let _ = nginx.wait();
        }
        panic!(
            "nginx never served: {}",
            std::fs::read_to_string(d.join("error.log")).unwrap_or_default()
        );
    }

    fn nginx_conf(&self, sock: &Path) -> String {
        let d = self.dir.path().display();
        let server = |port: u16, cert: &str| {
            format!(
                "server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {d}/{cert}.pem;
    ssl_certificate_key {d}/{cert}.key;
    location / {{
        auth_basic \"git\";
        auth_basic_user_file {d}/htpasswd;
        fastcgi_pass unix:{sock};
        fastcgi_param SCRIPT_FILENAME /usr/lib/git-core/git-http-backend;
        fastcgi_param GIT_PROJECT_ROOT {d}/git;
        fastcgi_param GIT_HTTP_EXPORT_ALL \"\";
        fastcgi_param PATH_INFO $uri;
        fastcgi_param QUERY_STRING $query_string;
        fastcgi_param REQUEST_METHOD $request_method;
        fastcgi_param CONTENT_TYPE $content_type;
        fastcgi_param CONTENT_LENGTH $content_length;
        fastcgi_param REMOTE_USER $remote_user;
        fastcgi_param HTTP_GIT_PROTOCOL $http_git_protocol;
    }}
}}
",
                sock = sock.display()
            )
        };
        format!(
            "daemon off;
master_process off;
pid {d}/nginx.pid;
events {{ worker_connections 64; }}
http {{
access_log {d}/access.log;
client_body_temp_path {d}/tmp/body;
fastcgi_temp_path {d}/tmp/fastcgi;
proxy_temp_path {d}/tmp/proxy;
uwsgi_temp_path {d}/tmp/uwsgi;
scgi_temp_path {d}/tmp/scgi;
{}{}}}
",
            server(self.port, "good"),
            server(self.wrong_name_port, "wrong")
        )
    }

    /// The one accepted password of `x-access-token` (nginx reads the file
    /// on every request: a rotation takes effect at once).
    fn set_token(&self, token: &str) {
        use std::io::Write;
        let mut child = Command::new("openssl")
            .args(["passwd", "-5", "-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{token}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let hash = String::from_utf8(out.stdout).unwrap();
        std::fs::write(
            self.dir.path().join("htpasswd"),
            format!("x-access-token:{}\n", hash.trim()),
        )
        .unwrap();
    }

    fn url(&self, port: u16) -> String {
        format!("https://localhost:{port}/repo.git")
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn bare(&self) -> PathBuf {
        self.dir.path().join("git/repo.git")
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for GitHttps {
    fn drop(&mut self) {
        for s in self.servers.iter_mut().rev() {
            // The whole group (fcgiwrap's children, git http-backend).
            let group = rustix::process::Pid::from_child(s);
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            let _ = s.wait();
        }
    }
}

/// A clone of a bare repository (over the file system) holding the
/// unreachable-host project; `commit` pushes a change to `main`.
pub(crate) struct Work {
    _dir: tempfile::TempDir,
    pub(crate) path: PathBuf,
}

impl Work {
    pub(crate) fn new(bare: &Path) -> Work {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["clone", "-q", bare.to_str().unwrap(), "work"]);
        let path = dir.path().join("work");
        std::fs::create_dir_all(path.join("config")).unwrap();
        std::fs::create_dir_all(path.join(".kamal")).unwrap();
        std::fs::write(path.join("config/deploy.yml"), DEPLOY_YML).unwrap();
        std::fs::write(path.join(".kamal/secrets"), "KAMAL_REGISTRY_PASSWORD=x\n").unwrap();
        Work { _dir: dir, path }
    }

    pub(crate) fn commit(&self, message: &str) -> String {
        std::fs::write(self.path.join("CHANGES"), message).unwrap();
        git(&self.path, &["add", "-A"]);
        git(&self.path, &["commit", "-qm", message]);
        git(&self.path, &["push", "-q", "origin", "HEAD:main"]);
        git(&self.path, &["rev-parse", "HEAD"])
    }
}

/// `berth run --repo url` in a fresh project dir (its known_hosts, a
/// checkout of its own), with a token file holding `token`.
pub(crate) fn berth_repo(
    url: &str,
    token: Option<&str>,
    extra: &[&str],
) -> (Command, tempfile::TempDir) {
    let dir = project();
    let p = dir.path();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(["run", "--repo", url]);
    if let Some(token) = token {
        std::fs::write(p.join("git-token"), format!("{token}\n")).unwrap();
        cmd.arg("--git-token-file").arg(p.join("git-token"));
    }
    cmd.arg("--checkout")
        .arg(p.join("checkout"))
        .arg("--known-hosts")
        .arg(p.join("known_hosts"))
        .args(["--listen", "127.0.0.1:0", "--interval", "1s"])
        .args(extra)
        .env("HOME", p)
        .env_remove("GIT_SSL_CAINFO")
        .env_remove("SSL_CERT_FILE");
    (cmd, dir)
}

/// `cmd` run to its end (it must fail at start): its stderr.
fn start_error(mut cmd: Command) -> String {
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = out;
    let status = poll(Duration::from_secs(60), || out.try_wait().unwrap());
    if status.is_none() {
        let _ = out.kill();
    }
    let output = out.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{err}");
    eprintln!("start error: {err}");
    err
}

/// The app's `revision` and `last_error` in `/api/v1/apps`, and the body.
pub(crate) fn app_state(b: &Berth) -> (Option<String>, Option<String>, String) {
    let r = request(b.addr, "GET", "/api/v1/apps", "");
    let body = r.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let app = &v["apps"][0];
    let s = |k: &str| app[k].as_str().map(str::to_string);
    (s("revision"), s("last_error"), body.to_string())
}

#[test]
fn https_with_a_token_follows_the_branch_and_a_revoked_token_keeps_the_revision() {
    let server = GitHttps::start(TOKEN);
    let work = Work::new(&server.bare());
    let c1 = work.commit("first");
    let ca = server.ca().display().to_string();
    let (cmd, dir) = berth_repo(
        &server.url(server.port),
        Some(TOKEN),
        &["--git-ca-file", &ca],
    );
    let berth = Berth::spawn(cmd, dir);
    let revision = |want: &str| {
        poll(Duration::from_secs(30), || {
            (app_state(&berth).0.as_deref() == Some(want)).then_some(())
        })
        .is_some()
    };
    assert!(revision(&c1), "{:?}\n{}", app_state(&berth), berth.log());
    // A push is followed (the interval is 1 s).
    let c2 = work.commit("second");
    assert!(revision(&c2), "{:?}\n{}", app_state(&berth), berth.log());
    // The server saw the token as GitHub takes it, over the TLS port.
    let log = server.access_log();
    assert!(log.contains("x-access-token"), "{log}");

    // The token is revoked: each cycle fails clearly; the revision stays.
    server.set_token(WRONG);
    let err = poll(Duration::from_secs(30), || app_state(&berth).1)
        .unwrap_or_else(|| panic!("no error after the token changed\n{}", berth.log()));
    assert!(
        err.contains("authentication failed: the server refused the token"),
        "{err}"
    );
    eprintln!("last_error: {err}");
    let (rev, _, body) = app_state(&berth);
    assert_eq!(rev.as_deref(), Some(c2.as_str()), "{body}");
    for text in [&body, &berth.log()] {
        assert!(!text.contains(TOKEN), "the token leaked: {text}");
    }
    // Given back: followed again.
    server.set_token(TOKEN);
    let c3 = work.commit("third");
    assert!(revision(&c3), "{:?}\n{}", app_state(&berth), berth.log());
}

#[test]
fn a_wrong_or_missing_token_is_a_clear_start_error_without_the_token() {
    let server = GitHttps::start(TOKEN);
    Work::new(&server.bare()).commit("first");
    let url = server.url(server.port);
    // The CA from git's own variable this time.
    let (mut cmd, _dir) = berth_repo(&url, Some(WRONG), &[]);
    cmd.env("GIT_SSL_CAINFO", server.ca());
    let err = start_error(cmd);
    assert!(
        err.contains("authentication failed: the server refused the token") && err.contains(&url),
        "{err}"
    );
    assert!(!err.contains(WRONG), "the token leaked: {err}");
    // Without a token: the server asks, berth says what it lacks.
    let (mut cmd, _dir) = berth_repo(&url, None, &[]);
    cmd.env("GIT_SSL_CAINFO", server.ca());
    let err = start_error(cmd);
    assert!(
        err.contains("no credentials configured") && err.contains("--git-token-file"),
        "{err}"
    );
}

#[test]
fn a_certificate_for_another_name_or_from_an_unknown_ca_is_refused() {
    let server = GitHttps::start(TOKEN);
    Work::new(&server.bare()).commit("first");
    let ca = server.ca().display().to_string();
    // The right CA, the wrong name.
    let (cmd, _d1) = berth_repo(
        &server.url(server.wrong_name_port),
        Some(TOKEN),
        &["--git-ca-file", &ca],
    );
    let err = start_error(cmd);
    assert!(
        err.contains("hostname does not match certificate") && err.contains("for another name"),
        "{err}"
    );
    // The right certificate, reached by an IP address it does not list.
    let by_ip = format!("https://127.0.0.1:{}/repo.git", server.port);
    let (cmd, _d4) = berth_repo(&by_ip, Some(TOKEN), &["--git-ca-file", &ca]);
    let err = start_error(cmd);
    assert!(err.contains("IP subjectAltName"), "{err}");
    // The right name, a CA berth does not trust.
    let (cmd, _d2) = berth_repo(&server.url(server.port), Some(TOKEN), &[]);
    let err = start_error(cmd);
    assert!(
        err.contains("the SSL certificate is invalid") && err.contains("--git-ca-file"),
        "{err}"
    );
    // Neither refusal sent the token: nginx never logged a request.
    assert!(!server.access_log().contains("x-access-token"));
    // A CA file that is not one is a start error naming it.
    let (cmd, d3) = berth_repo(&server.url(server.port), Some(TOKEN), &[]);
    let not_pem = d3.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let mut cmd = cmd;
    cmd.arg("--git-ca-file").arg(&not_pem);
    let err = start_error(cmd);
    assert!(
        err.contains(&format!("CA file {}", not_pem.display())) && err.contains("no PEM"),
        "{err}"
    );
}
