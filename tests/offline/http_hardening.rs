//! `berth run`'s HTTP server against hostile clients, over real sockets on
//! 127.0.0.1: headers sent a byte at a time, idle keep-alive connections,
//! 2,000 idle sockets at the usual 1,024 fd limit, and empty secret files.
//!
//! Needs neither root nor a testbed: the project's one host is 127.0.0.1 on a
//! closed SSH port, so every cycle finds it unreachable and berth serves anyway.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth::server::serve;

pub(crate) const DEPLOY_YML: &str = "service: demo
image: demo
servers:
  web:
    hosts: [127.0.0.1]
    proxy: false
registry:
  server: 127.0.0.1:5999
  username: test
  password: [KAMAL_REGISTRY_PASSWORD]
builder:
  arch: amd64
ssh:
  user: root
  port: 9
  keys_only: true
  config: false
x-berth:
  version: v1
";

const TOKEN: &str = "api-token";

/// A project whose host is unreachable, plus an API token file and a
/// webhook secret file (`hook-secret`).
pub(crate) fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("proj/config")).unwrap();
    std::fs::create_dir_all(p.join("proj/.kamal")).unwrap();
    std::fs::write(p.join("proj/config/deploy.yml"), DEPLOY_YML).unwrap();
    std::fs::write(p.join("proj/.kamal/secrets"), "KAMAL_REGISTRY_PASSWORD=x\n").unwrap();
    std::fs::write(p.join("api-token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(p.join("webhook-secret"), "hook-secret\n").unwrap();
    std::fs::write(p.join("known_hosts"), "").unwrap();
    dir
}

/// `berth run --dir` on `dir`'s project, listening on a port of its own
/// choosing (read from its log: no race for a free port).
pub(crate) fn berth_command(dir: &Path, nofile: Option<u64>) -> Command {
    let bin = env!("CARGO_BIN_EXE_berth");
    let mut cmd = match nofile {
        // The usual limit, soft and hard (so berth cannot raise it).
        Some(n) => {
            let mut c = Command::new("sh");
            c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), bin]);
            c
        }
        None => Command::new(bin),
    };
    cmd.arg("run")
        .arg("--dir")
        .arg(dir.join("proj"))
        .arg("--checkout")
        .arg(dir.join("checkout"))
        .arg("--known-hosts")
        .arg(dir.join("known_hosts"))
        .args(["--listen", "127.0.0.1:0", "--interval", "10m"])
        .env("HOME", dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null());
    cmd
}

/// A running `berth run`, stopped (SIGTERM) when dropped.
pub(crate) struct Berth {
    child: Child,
    pub(crate) addr: SocketAddr,
    log: PathBuf,
    pub(crate) dir: tempfile::TempDir,
}

impl Berth {
    fn start(extra: &[&str], nofile: Option<u64>) -> Berth {
        let dir = project();
        let mut cmd = berth_command(dir.path(), nofile);
        cmd.arg("--api-token-file")
            .arg(dir.path().join("api-token"))
            .args(extra);
        Berth::spawn(cmd, dir)
    }

    /// `cmd` (a `berth run … --listen 127.0.0.1:0`) started, logging to
    /// `dir/berth.log`, once it serves.
    pub(crate) fn spawn(mut cmd: Command, dir: tempfile::TempDir) -> Berth {
        let log = dir.path().join("berth.log");
        let child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut b = Berth {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            dir,
        };
        b.addr = poll(Duration::from_secs(20), || {
            let log = b.log();
            let addr = log.split("address=").nth(1)?.split_whitespace().next()?;
            addr.parse().ok()
        })
        .unwrap_or_else(|| panic!("berth never served:\n{}", b.log()));
        b
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; the exit code, waited for at most `within`.
    fn stop(&mut self, within: Duration) -> Option<i32> {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let status = poll(within, || self.child.try_wait().unwrap());
        status.and_then(|s| s.code())
    }

    /// Open fds of the berth process.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.stop(Duration::from_secs(10));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = &self.dir;
    }
}

/// `f` until it gives a value or `within` passes (50 ms between tries).
pub(crate) fn poll<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.1 request on `s`, the response (head and body) once its
/// `content-length` bytes of body have arrived.
fn exchange(s: &mut TcpStream, method: &str, path: &str, headers: &str) -> String {
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: berth\r\nContent-Length: 0\r\n{headers}\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
        match s.read(&mut buf) {
            Ok(0) => panic!("connection closed mid-response: {text:?}"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading the response: {e} after {text:?}"),
        }
    }
}

/// A fresh connection, one request; the response.
pub(crate) fn request(addr: SocketAddr, method: &str, path: &str, headers: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting for {method} {path}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    exchange(&mut s, method, path, headers)
}

/// Read from `s` until the server closes it (EOF or reset), at most
/// `within`; how long that took, `None` if it stayed open. Data the server
/// sends is a failure: the client never finished a request.
fn wait_closed(
    s: &mut TcpStream,
    within: Duration,
    mut tick: impl FnMut(&mut TcpStream),
) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 512];
    while start.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(n) => panic!(
                "the server answered: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => tick(s),
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

pub(crate) fn reconciles(addr: SocketAddr) -> f64 {
    request(addr, "GET", "/metrics", "")
        .lines()
        .filter(|l| l.starts_with("berth_reconcile_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_slowloris_connection_is_closed_after_the_header_read_timeout() {
    let b = Berth::start(
        &[
            "--http-header-read-timeout",
            "1s",
            "--http-idle-timeout",
            "30s",
        ],
        None,
    );
    assert!(request(b.addr, "GET", "/healthz", "").ends_with("\r\n\r\nok\n"));
    let mut s = TcpStream::connect(b.addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: berth\r\nX-Slow: ")
        .unwrap();
    // A byte every 100 ms keeps the connection busy for the idle timer; only
    // the header-read timeout can end it.
    let closed = wait_closed(&mut s, Duration::from_secs(10), |s| {
        let _ = s.write_all(b"a");
    });
    let after = closed.expect("a slowloris connection was still open after 10 s");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(5),
        "closed after {after:?}, expected the 1 s header-read timeout"
    );
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let b = Berth::start(
        &[
            "--http-idle-timeout",
            "1s",
            "--http-header-read-timeout",
            "30s",
        ],
        None,
    );
    let mut s = TcpStream::connect(b.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Kept alive: two requests on one connection.
    for _ in 0..2 {
        let r = exchange(&mut s, "GET", "/healthz", "");
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok\n"), "{r}");
    }
    let closed = wait_closed(&mut s, Duration::from_secs(10), |_| {});
    let after = closed.expect("an idle connection was still open after 10 s");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(5),
        "closed after {after:?}, expected the 1 s idle timeout"
    );
}

#[test]
fn a_request_body_sent_a_byte_at_a_time_is_cut_at_the_request_timeout() {
    let b = Berth::start(
        &[
            "--http-request-timeout",
            "1s",
            "--http-idle-timeout",
            "30s",
            "--http-header-read-timeout",
            "30s",
        ],
        None,
    );
    let mut s = TcpStream::connect(b.addr).unwrap();
    s.write_all(b"POST /webhooks/github HTTP/1.1\r\nHost: berth\r\nContent-Length: 1000\r\n\r\n{")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while start.elapsed() < Duration::from_secs(10) && !got.ends_with(b"too long\n") {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                // A byte every 100 ms: never idle, never done.
                let _ = s.write_all(b" ");
            }
            Err(e) => panic!("{e}"),
        }
    }
    let after = start.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "after {after:?}: {text:?}"
    );
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(5),
        "answered after {after:?}, expected the 1 s request timeout"
    );
}

/// The soft fd limit of this process raised to its hard limit (2,000 client
/// sockets); the new limit.
fn raise_own_fd_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    )
    .unwrap();
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

#[test]
fn health_and_the_api_answer_under_2000_idle_connections_at_a_1024_fd_limit() {
    let own = raise_own_fd_limit();
    assert!(
        own >= 2_200,
        "this test needs a hard fd limit of 2,200, have {own}"
    );
    let mut b = Berth::start(&[], Some(1024));
    let before = poll(Duration::from_secs(10), || {
        Some(reconciles(b.addr)).filter(|n| *n >= 1.0)
    })
    .expect("no reconcile cycle");

    // A connect that times out is a server that stopped accepting: no
    // point in waiting for the rest. Not 2 s: while a loaded machine keeps
    // berth from accepting, the full backlog drops SYNs and the kernel
    // resends them after 1 s and then 3 s more; a server that stopped
    // accepting (the bug this guards) never completes one.
    let idle: Vec<TcpStream> = (0..2_000)
        .map_while(|_| TcpStream::connect_timeout(&b.addr, Duration::from_secs(10)).ok())
        .collect();
    // The first request queues behind the burst berth is still accepting
    // (and shedding); once it answers, every idle connection was accepted.
    let t = Instant::now();
    assert!(request(b.addr, "GET", "/healthz", "").ends_with("\r\n\r\nok\n"));
    let first = t.elapsed();
    // Bounds here tell "answers" from "starved" (before the fix the connect
    // timed out) on a loaded machine; the 100 ms target itself is measured
    // by `cargo bench --bench http`, not asserted in a timed test.
    assert!(
        first < Duration::from_secs(3),
        "/healthz took {first:?} after the burst"
    );
    assert_eq!(idle.len(), 2_000, "connections the kernel completed");
    // berth holds at most its cap of them, not the fd limit: 512, plus at
    // most 32 shed ones whose tasks have not closed them yet (accepting
    // waits for those), plus its own ~20.
    let fds = b.fds();
    let most = serve::MAX_CONNECTIONS + serve::MAX_CLOSING + 40;
    assert!(fds < most, "berth holds {fds} fds with 2,000 clients");
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        let r = request(b.addr, "GET", "/healthz", "");
        worst = worst.max(t.elapsed());
        assert!(r.ends_with("\r\n\r\nok\n"), "{r}");
    }
    eprintln!("/healthz: {first:?} behind a burst of 2,000 connections, then at most {worst:?}");
    assert!(
        worst < Duration::from_secs(3),
        "/healthz took {worst:?} under 2,000 idle connections"
    );
    let r = request(
        b.addr,
        "POST",
        "/api/v1/apps/demo/sync",
        &format!("Authorization: Bearer {TOKEN}\r\n"),
    );
    assert!(r.starts_with("HTTP/1.1 202"), "{r}");
    // The sync ran a cycle (the interval is 10 minutes).
    assert!(
        poll(Duration::from_secs(10), || {
            Some(()).filter(|_| reconciles(b.addr) > before)
        })
        .is_some(),
        "the sync request triggered no cycle"
    );
    // SIGTERM still stops it, clients connected or not.
    assert_eq!(b.stop(Duration::from_secs(10)), Some(0), "{}", b.log());
    drop(idle);
}

/// Run `cmd` (stderr to `log`) until it exits, 10 s at most (then killed):
/// its exit code (`None`: it did not exit) and the log.
fn exit_and_log(mut cmd: Command, log: &std::path::Path) -> (Option<Option<i32>>, String) {
    let mut child = cmd
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let status = poll(Duration::from_secs(10), || child.try_wait().unwrap());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    (
        status.map(|s| s.code()),
        std::fs::read_to_string(log).unwrap(),
    )
}

#[test]
fn empty_secret_files_are_refused_at_start() {
    let dir = project();
    let p = dir.path();
    for content in ["", " \n\t\n"] {
        let file = p.join("secret");
        std::fs::write(&file, content).unwrap();
        for flag in [
            "--webhook-secret-file",
            "--api-token-file",
            "--git-token-file",
        ] {
            let mut cmd = berth_command(p, None);
            if flag == "--git-token-file" {
                // An https repository would use it; nothing is fetched first.
                cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
                cmd.args(["run", "--repo", "https://127.0.0.1:9/none.git"])
                    .arg("--checkout")
                    .arg(p.join("checkout"))
                    .args(["--listen", "127.0.0.1:0"]);
            }
            cmd.arg(flag).arg(&file);
            let (code, err) = exit_and_log(cmd, &p.join("berth.log"));
            assert_eq!(code, Some(Some(1)), "{flag} {content:?}: {err}");
            assert!(
                err.contains(&format!("secret file {} is empty", file.display())),
                "{flag} {content:?}: {err}"
            );
            assert!(!err.contains("serving"), "{flag}: served anyway: {err}");
        }
    }
}

#[test]
fn a_bad_notifications_file_is_refused_at_start_naming_line_and_key() {
    let dir = project();
    let p = dir.path();
    std::fs::write(p.join("empty-token"), "\n").unwrap();
    std::fs::write(p.join("hmac"), "notify-hmac-key\n").unwrap();
    let file = p.join("notifications.yml");
    std::fs::write(
        &file,
        format!(
            "providers:\n  ops:\n    type: webhook\n    url: http://127.0.0.1:9/\n    secret_file: {}\n    evnts: [deployed]\n  forge:\n    type: gitea\n    url: http://127.0.0.1:9\n    repository: acme/deploy\n    token_file: {}\n",
            p.join("hmac").display(),
            p.join("empty-token").display()
        ),
    )
    .unwrap();
    let mut cmd = berth_command(p, None);
    cmd.arg("--notifications-file").arg(&file);
    let (code, err) = exit_and_log(cmd, &p.join("berth.log"));
    assert_eq!(code, Some(Some(1)), "{err}");
    let f = file.display();
    assert!(
        err.contains(&format!("{f}:6:5: providers.ops.evnts: unknown key")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{f}:11:17: providers.forge.token_file: secret file {} is empty",
            p.join("empty-token").display()
        )),
        "{err}"
    );
    assert!(!err.contains("notify-hmac-key"), "{err}");
    assert!(!err.contains("serving"), "served anyway: {err}");
}
