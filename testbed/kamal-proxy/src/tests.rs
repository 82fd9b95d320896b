//! The stand-in's tests: durations, flags, DNS parsing against a fake server,
//! escaping, routing, and an in-process end-to-end run (deploy, switch, drain,
//! stop, list) over real sockets.

use std::io::{BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cli::run_cli;
use crate::control::{client_call, decode_line, encode_line};
use crate::flags::{RUN_FLAGS, parse_deploy_args, parse_flags, parse_no_args, parse_stop_args};
use crate::proxy::{pump, read_head, strip_port, strip_prefix_from};
use crate::resolve::{dns_query, parse_dns_answer};
use crate::server::{ServerConfig, start_server};
use crate::state::{host_score, lock, prefix_matches};
use crate::values::{format_go_duration, parse_go_duration};

fn sv(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn durations() {
    assert_eq!(parse_go_duration("30s").unwrap(), Duration::from_secs(30));
    assert_eq!(
        parse_go_duration("500ms").unwrap(),
        Duration::from_millis(500)
    );
    assert_eq!(parse_go_duration("1m").unwrap(), Duration::from_secs(60));
    assert_eq!(parse_go_duration("1m30s").unwrap(), Duration::from_secs(90));
    assert_eq!(
        parse_go_duration("1.5s").unwrap(),
        Duration::from_millis(1500)
    );
    assert_eq!(parse_go_duration("2h").unwrap(), Duration::from_secs(7200));
    assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
    assert_eq!(
        parse_go_duration("10us").unwrap(),
        Duration::from_micros(10)
    );
    for bad in ["", "30", "s", "1x", "-1s", "1..2s", "abc"] {
        assert!(parse_go_duration(bad).is_err(), "{bad} should fail");
    }
    assert_eq!(format_go_duration(Duration::from_secs(30)), "30s");
    assert_eq!(format_go_duration(Duration::from_secs(2)), "2s");
    assert_eq!(format_go_duration(Duration::from_secs(60)), "1m0s");
    assert_eq!(format_go_duration(Duration::from_millis(500)), "500ms");
    assert_eq!(format_go_duration(Duration::from_millis(1500)), "1.5s");
    assert_eq!(format_go_duration(Duration::from_secs(3725)), "1h2m5s");
}

#[test]
fn deploy_flags_both_forms() {
    let a = parse_deploy_args(&sv(&[
        "web",
        "--target=abc123:80",
        "--host",
        "a.example.com",
        "--host=b.example.com,c.example.com",
        "--deploy-timeout",
        "10s",
        "--drain-timeout=5s",
        "--health-check-interval=500ms",
        "--health-check-timeout",
        "2s",
        "--health-check-path=/health",
        "--tls",
        "--tls-redirect=false",
        "--buffer-requests",
        "--buffer-responses=true",
        "--buffer-memory=1024",
        "--max-request-body",
        "2048",
        "--max-response-body=4096",
        "--path-prefix=/api",
        "--path-prefix",
        "/v2/",
        "--strip-path-prefix=false",
        "--forward-headers",
        "--log-request-header=X-Request-Id",
        "--log-request-header",
        "Cache-Control",
        "--log-response-header=X-Runtime",
        "--error-pages=/errors",
        "--writer-affinity-timeout=1s",
        "--read-targets=def456:80",
        "--target-timeout=1m",
        "--tls-certificate-path=/c",
        "--tls-private-key-path",
        "/k",
        "--tls-acme-cache-path=/acme",
    ]))
    .unwrap();
    assert_eq!(a.service, "web");
    assert_eq!(a.target, "abc123:80");
    assert_eq!(
        a.hosts,
        sv(&["a.example.com", "b.example.com", "c.example.com"])
    );
    assert_eq!(a.deploy_timeout, Duration::from_secs(10));
    assert_eq!(a.drain_timeout, Duration::from_secs(5));
    assert_eq!(a.health_check_interval, Duration::from_millis(500));
    assert_eq!(a.health_check_timeout, Duration::from_secs(2));
    assert_eq!(a.health_check_path, "/health");
    assert!(a.tls && !a.tls_redirect && a.buffer_requests && a.buffer_responses);
    assert_eq!(
        (a.buffer_memory, a.max_request_body, a.max_response_body),
        (1024, 2048, 4096)
    );
    assert_eq!(a.path_prefixes, sv(&["/api", "/v2"]));
    assert!(!a.strip_path_prefix && a.forward_headers);
    assert_eq!(
        a.log_request_headers,
        sv(&["X-Request-Id", "Cache-Control"])
    );
    assert_eq!(a.log_response_headers, sv(&["X-Runtime"]));
    assert_eq!(a.error_pages.as_deref(), Some("/errors"));
    assert_eq!(a.writer_affinity_timeout, Duration::from_secs(1));
    assert_eq!(a.read_targets, sv(&["def456:80"]));
    assert_eq!(a.target_timeout, Duration::from_secs(60));
    assert_eq!(a.tls_certificate_path.as_deref(), Some("/c"));
    assert_eq!(a.tls_private_key_path.as_deref(), Some("/k"));
    assert_eq!(a.tls_acme_cache_path.as_deref(), Some("/acme"));

    let d = parse_deploy_args(&sv(&["web", "--target", "10.0.0.2:3000"])).unwrap();
    assert_eq!(d.deploy_timeout, Duration::from_secs(30));
    assert_eq!(d.drain_timeout, Duration::from_secs(30));
    assert_eq!(d.health_check_interval, Duration::from_secs(1));
    assert_eq!(d.health_check_timeout, Duration::from_secs(5));
    assert_eq!(d.health_check_path, "/up");
    assert!(!d.tls && d.hosts.is_empty() && d.strip_path_prefix);
}

#[test]
fn deploy_flags_rejected() {
    let e = parse_deploy_args(&sv(&["web", "--target=a:80", "--bogus=1"])).unwrap_err();
    assert_eq!(e, "unknown flag: --bogus");
    let e = parse_deploy_args(&sv(&["web", "--target=a:80", "--bogus"])).unwrap_err();
    assert_eq!(e, "unknown flag: --bogus");
    let e = parse_deploy_args(&sv(&["web", "--host=x"])).unwrap_err();
    assert!(e.contains("required flag(s) \"target\" not set"), "{e}");
    assert!(parse_deploy_args(&sv(&["--target=a:80"])).is_err());
    assert!(parse_deploy_args(&sv(&["web", "--target=a:80", "--tls=maybe"])).is_err());
    assert!(parse_deploy_args(&sv(&["web", "--target=a:80", "--deploy-timeout=30"])).is_err());
    assert!(parse_deploy_args(&sv(&["web", "--target=a"])).is_err());
    assert!(parse_deploy_args(&sv(&["web", "--target"])).is_err());
    assert!(parse_deploy_args(&sv(&["web", "--target=a:80", "-x"])).is_err());
    assert!(parse_stop_args(&sv(&["web", "--message=down", "--drain-timeout=1s"])).is_ok());
    assert!(parse_stop_args(&sv(&["web", "--other"])).is_err());
    assert!(parse_no_args(&sv(&["x"])).is_err());
    assert!(parse_flags(&sv(&["--debug", "--http-port=8080"]), RUN_FLAGS).is_ok());
    assert!(parse_flags(&sv(&["--http3"]), RUN_FLAGS).is_err());
}

#[test]
fn cli_rejects_unknown_flag_before_connecting() {
    assert_eq!(
        run_cli(&sv(&["deploy", "web", "--target=a:80", "--nope"])),
        1
    );
    assert_eq!(run_cli(&sv(&["frobnicate"])), 1);
    assert_eq!(run_cli(&sv(&["version"])), 0);
}

#[test]
fn escaping_roundtrip() {
    let f = sv(&["a\tb", "c\\d", "e\nf", ""]);
    assert_eq!(decode_line(&encode_line(&f)), f);
}

#[test]
fn dns_answer_parsing() {
    // Response for "ab" A 10.1.2.3 with a compressed name pointer.
    let mut r = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
    r.extend_from_slice(&[2, b'a', b'b', 0, 0, 1, 0, 1]);
    r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 1, 2, 3]);
    assert_eq!(parse_dns_answer(&r), Some(Ipv4Addr::new(10, 1, 2, 3)));
}

#[test]
fn dns_query_against_fake_server() {
    let srv = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = srv.local_addr().unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 512];
        let (n, from) = srv.recv_from(&mut buf).unwrap();
        let q = &buf[..n];
        // Echo header id and question, then one CNAME and one A answer.
        let mut r = q[..2].to_vec();
        r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0]);
        r.extend_from_slice(&q[12..]);
        r.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xC0, 12]);
        r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 172, 18, 0, 7]);
        srv.send_to(&r, from).unwrap();
    });
    let ip = dns_query(addr, "3f2a9c1d0b7e").unwrap();
    assert_eq!(ip, Some(Ipv4Addr::new(172, 18, 0, 7)));
}

#[test]
fn routing_helpers() {
    assert_eq!(strip_port("Example.com:8080"), "example.com");
    assert_eq!(strip_port("[::1]:80"), "::1");
    assert!(prefix_matches("/api", "/api"));
    assert!(prefix_matches("/api", "/api/x"));
    assert!(!prefix_matches("/api", "/apix"));
    assert_eq!(strip_prefix_from("/api/x?q=1", "/api"), "/x?q=1");
    assert_eq!(strip_prefix_from("/api?q=1", "/api"), "/?q=1");
    assert_eq!(strip_prefix_from("/api", "/api"), "/");
    assert_eq!(
        host_score(&sv(&["*.example.com"]), "a.example.com"),
        Some(1)
    );
    assert_eq!(host_score(&sv(&["*.example.com"]), "example.com"), None);
}

// ---- end-to-end ----

static SLOW_STARTED: AtomicUsize = AtomicUsize::new(0);

fn backend(body: &'static str, up_status: u16) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || serve_backend(s, body, up_status));
        }
    });
    addr
}

fn serve_backend(s: TcpStream, body: &'static str, up_status: u16) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let Ok(Some(head)) = read_head(&mut r) else {
        return;
    };
    let path = head
        .start
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let mut w = s;
    let (status, resp_body) = if path == "/up" {
        (up_status, "up".to_string())
    } else if path == "/slow" {
        SLOW_STARTED.fetch_add(1, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(800));
        (200, format!("{body} slow"))
    } else if path.starts_with("/echo") {
        let mut b = Vec::new();
        if let Ok(Some(cl)) = head.content_length() {
            pump(&mut r, &mut b, Some(cl)).unwrap();
        }
        let xff = head.get("x-forwarded-for").unwrap_or("").to_string();
        (200, format!("{path}|{}|{xff}", String::from_utf8_lossy(&b)))
    } else if path == "/chunked" {
        let _ = w.write_all(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        );
        return;
    } else {
        (200, body.to_string())
    };
    let _ = write!(
        w,
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{resp_body}",
        resp_body.len()
    );
}

fn dechunk(raw: &str) -> String {
    let mut out = String::new();
    let mut rest = raw;
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
}

fn http(addr: SocketAddr, method: &str, host: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head.to_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn get(addr: SocketAddr, host: &str, path: &str) -> (u16, String) {
    http(addr, "GET", host, path, "")
}

fn call(sock: &Path, args: &[&str]) -> Result<Vec<String>, String> {
    client_call(sock, &sv(args))
}

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!("kp-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn start(dir: &Path, sock: &str) -> (SocketAddr, PathBuf) {
    let socket_path = dir.join(sock);
    let srv = start_server(ServerConfig {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        socket_path: socket_path.clone(),
        state_path: dir.join("home/.config/kamal-proxy/state"),
        debug: false,
    })
    .unwrap();
    // Poll until the control socket answers.
    let deadline = Instant::now() + Duration::from_secs(5);
    while call(&socket_path, &["list"]).is_err() {
        assert!(Instant::now() < deadline, "server not ready");
        thread::sleep(Duration::from_millis(10));
    }
    (srv.http_addr, socket_path)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn end_to_end() {
    let v1 = backend("v1", 200);
    let v2 = backend("v2", 200);
    let bad = backend("bad", 503);
    let dir = temp_dir("e2e");
    let (proxy, sock) = start(&dir, "kp.sock");

    assert_eq!(get(proxy, "app.test", "/").0, 404);
    let t1 = format!("--target={v1}");
    call(
        &sock,
        &["deploy", "web", &t1, "--health-check-interval=50ms"],
    )
    .unwrap();
    assert_eq!(get(proxy, "app.test", "/"), (200, "v1".to_string()));
    assert_eq!(
        get(proxy, "app.test:8080", "/chunked"),
        (200, "hello world".to_string())
    );
    let (st, body) = http(proxy, "POST", "x", "/echo?a=1", "payload");
    assert_eq!(st, 200);
    assert!(body.starts_with("/echo?a=1|payload|127.0.0.1"), "{body}");

    // Continuous traffic during the v1 -> v2 switch.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let (st2, ok2, f2) = (stop.clone(), ok.clone(), failures.clone());
    let traffic = thread::spawn(move || {
        while !st2.load(Ordering::SeqCst) {
            let (code, body) = get(proxy, "app.test", "/");
            if code == 200 && (body == "v1" || body == "v2") {
                ok2.fetch_add(1, Ordering::SeqCst);
            } else {
                lock(&f2).push(format!("{code} {body}"));
            }
        }
    });
    wait_for("traffic before switch", || ok.load(Ordering::SeqCst) >= 20);

    // A slow in-flight request to v1 must complete: deploy waits for the drain.
    let slow = thread::spawn(move || get(proxy, "app.test", "/slow"));
    wait_for("slow request reached v1", || {
        SLOW_STARTED.load(Ordering::SeqCst) >= 1
    });
    let t2 = format!("--target={v2}");
    let started = Instant::now();
    call(
        &sock,
        &["deploy", "web", &t2, "--health-check-interval=50ms"],
    )
    .unwrap();
    let deploy_took = started.elapsed();
    assert_eq!(slow.join().unwrap(), (200, "v1 slow".to_string()));
    assert!(
        deploy_took >= Duration::from_millis(500),
        "deploy did not drain: {deploy_took:?}"
    );
    assert_eq!(get(proxy, "app.test", "/").1, "v2");

    let before = ok.load(Ordering::SeqCst);
    wait_for("traffic after switch", || {
        ok.load(Ordering::SeqCst) >= before + 20
    });

    // Unhealthy target: fails, v2 keeps serving.
    let tb = format!("--target={bad}");
    let e = call(
        &sock,
        &[
            "deploy",
            "web",
            &tb,
            "--deploy-timeout=2s",
            "--health-check-interval=100ms",
        ],
    )
    .unwrap_err();
    assert_eq!(
        e,
        "target failed to become healthy within configured timeout (2s)"
    );
    assert_eq!(get(proxy, "app.test", "/").1, "v2");

    stop.store(true, Ordering::SeqCst);
    traffic.join().unwrap();
    assert!(
        lock(&failures).is_empty(),
        "failures: {:?}",
        lock(&failures)
    );
    assert!(ok.load(Ordering::SeqCst) >= 40);

    // Host conflicts and host routing.
    let e = call(&sock, &["deploy", "other", &t1]).unwrap_err();
    assert_eq!(e, "host settings conflict with another service");
    call(
        &sock,
        &[
            "deploy",
            "other",
            &t1,
            "--host=b.example",
            "--health-check-interval=50ms",
        ],
    )
    .unwrap();
    assert_eq!(get(proxy, "B.example", "/").1, "v1");
    assert_eq!(get(proxy, "c.example", "/").1, "v2");

    // Path prefixes with stripping.
    call(
        &sock,
        &[
            "deploy",
            "api",
            &t1,
            "--host=b.example",
            "--path-prefix=/api",
            "--health-check-interval=50ms",
        ],
    )
    .unwrap();
    let (_, body) = get(proxy, "b.example", "/api/echo/x?q=1");
    assert!(body.starts_with("/echo/x?q=1|"), "{body}");

    let list = call(&sock, &["list"]).unwrap();
    assert!(list[0].starts_with("Service"), "{list:?}");
    assert!(
        list.iter()
            .any(|l| l.starts_with("web ") && l.contains("running") && l.contains(&v2.to_string()))
    );

    // Stop / resume.
    call(
        &sock,
        &["stop", "web", "--message=maintenance", "--drain-timeout=1s"],
    )
    .unwrap();
    assert_eq!(
        get(proxy, "app.test", "/"),
        (503, "maintenance\n".to_string())
    );
    assert!(
        call(&sock, &["list"])
            .unwrap()
            .iter()
            .any(|l| l.starts_with("web ") && l.contains("stopped"))
    );
    call(&sock, &["resume", "web"]).unwrap();
    assert_eq!(get(proxy, "app.test", "/").1, "v2");

    // Restart from persisted state.
    let (proxy2, sock2) = start(&dir, "kp2.sock");
    assert_eq!(get(proxy2, "app.test", "/").1, "v2");
    assert_eq!(get(proxy2, "b.example", "/").1, "v1");
    assert_eq!(call(&sock2, &["list"]).unwrap().len(), 4);

    // Remove.
    call(&sock, &["remove", "web"]).unwrap();
    assert_eq!(get(proxy, "app.test", "/").0, 404);
    assert_eq!(
        call(&sock, &["remove", "web"]).unwrap_err(),
        "service not found"
    );

    // Target that passes its health check and then goes away -> 502.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = l.local_addr().unwrap();
    let one_shot = thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        serve_backend(s, "gone", 200);
    });
    let tg = format!("--target={gone}");
    call(&sock, &["deploy", "gone", &tg, "--host=gone.test"]).unwrap();
    one_shot.join().unwrap();
    assert_eq!(get(proxy, "gone.test", "/").0, 502);
    let _ = std::fs::remove_dir_all(&dir);
}
