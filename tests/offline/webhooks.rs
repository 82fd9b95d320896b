//! `berth run`'s webhook receivers over a real socket: Gitea's and
//! Forgejo's signatures (`X-Gitea-Signature`, `X-Forgejo-Signature`: the
//! bare hex HMAC-SHA256 of the body, computed here by `openssl dgst`, not by
//! berth) good, forged and empty; and the 1 MiB body limit of every kind
//! (GitHub, GitLab, Gitea, Forgejo): a body of exactly 1 MiB is read and
//! authenticated, one byte more is 413 — announced by Content-Length (no
//! body needed to refuse it) or sent chunked.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::http_hardening::{Berth, berth_command, poll, project, reconciles};

const SECRET: &str = "hook-secret";
const LIMIT: usize = 1 << 20;

fn berth_with_webhooks() -> Berth {
    let dir = project();
    let mut cmd = berth_command(dir.path(), None);
    cmd.arg("--webhook-secret-file")
        .arg(dir.path().join("webhook-secret"));
    Berth::spawn(cmd, dir)
}

/// The hex HMAC-SHA256 of `body` under `key`, by OpenSSL.
fn hmac(key: &str, body: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-r", "-hmac", key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let body = body.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&body));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// How a request's body is framed.
enum Framing<'a> {
    /// `Content-Length` and these bytes.
    Body(&'a [u8]),
    /// `Content-Length: n`, and no byte of the body sent.
    AnnouncedOnly(usize),
    /// `Transfer-Encoding: chunked`, `n` bytes in 64 KiB chunks.
    Chunked(usize),
}

/// POST `path` with `headers`; the response's status code (0: none). The
/// body is written by a thread of its own while the response is read, and
/// write errors are ignored: a server may answer (and close) before it has
/// read everything.
fn post(addr: SocketAddr, path: &str, headers: &[(&str, String)], framing: Framing<'_>) -> u16 {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let (length, body): (Option<usize>, Vec<u8>) = match framing {
        Framing::Body(b) => (Some(b.len()), b.to_vec()),
        Framing::AnnouncedOnly(n) => (Some(n), Vec::new()),
        Framing::Chunked(n) => {
            head.push_str("Transfer-Encoding: chunked\r\n");
            let mut out = Vec::new();
            let mut left = n;
            while left > 0 {
                let k = left.min(64 << 10);
                out.extend_from_slice(format!("{k:x}\r\n").as_bytes());
                out.extend(std::iter::repeat_n(b'x', k));
                out.extend_from_slice(b"\r\n");
                left -= k;
            }
            out.extend_from_slice(b"0\r\n\r\n");
            (None, out)
        }
    };
    if let Some(n) = length {
        head.push_str(&format!("Content-Length: {n}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&body);
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The status line is all that is needed.
    while !got.windows(2).any(|w| w == b"\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    String::from_utf8_lossy(&got)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The request headers that authenticate `body` for `kind`.
fn signed(kind: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    let sig = hmac(SECRET, body);
    match kind {
        "github" => vec![("X-Hub-Signature-256", format!("sha256={sig}"))],
        "gitlab" => vec![("X-Gitlab-Token", SECRET.to_string())],
        "gitea" => vec![("X-Gitea-Signature", sig)],
        // What Forgejo sends: its header, and Gitea's for compatibility.
        "forgejo" => vec![
            ("X-Forgejo-Signature", sig.clone()),
            ("X-Gitea-Signature", sig),
        ],
        other => panic!("{other}"),
    }
}

#[test]
fn gitea_and_forgejo_signatures_good_forged_and_empty() {
    let b = berth_with_webhooks();
    let body = br#"{"ref":"refs/heads/main","after":"0123456789abcdef"}"#;
    let good = hmac(SECRET, body);
    let forged = hmac("not-the-secret", body);
    let other_body = hmac(SECRET, b"another body");
    let refused: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("gitea", vec![("X-Gitea-Signature", forged.clone())]),
        ("gitea", vec![("X-Gitea-Signature", other_body.clone())]),
        ("gitea", vec![("X-Gitea-Signature", String::new())]),
        ("gitea", vec![]),
        // GitHub's framing is not Gitea's.
        (
            "gitea",
            vec![("X-Gitea-Signature", format!("sha256={good}"))],
        ),
        ("gitea", vec![("X-Gitea-Signature", good.to_uppercase())]),
        ("forgejo", vec![("X-Forgejo-Signature", forged.clone())]),
        ("forgejo", vec![("X-Forgejo-Signature", String::new())]),
        ("forgejo", vec![]),
        // A forged Forgejo header is not rescued by a good Gitea one.
        (
            "forgejo",
            vec![
                ("X-Forgejo-Signature", forged.clone()),
                ("X-Gitea-Signature", good.clone()),
            ],
        ),
        // Nor a Gitea delivery by a Forgejo header beside a forged one.
        (
            "gitea",
            vec![
                ("X-Gitea-Signature", forged.clone()),
                ("X-Forgejo-Signature", good.clone()),
            ],
        ),
        // A signature for another kind's receiver.
        ("github", vec![("X-Gitea-Signature", good.clone())]),
    ];
    let cycles = poll(Duration::from_secs(20), || {
        Some(reconciles(b.addr)).filter(|n| *n >= 1.0)
    })
    .expect("no first cycle");
    for (kind, headers) in &refused {
        let code = post(
            b.addr,
            &format!("/webhooks/{kind}"),
            headers,
            Framing::Body(body),
        );
        assert_eq!(code, 401, "{kind} {headers:?}");
    }
    // Nothing was triggered (the interval is 10 minutes).
    assert_eq!(reconciles(b.addr), cycles);
    let accepted: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("gitea", vec![("X-Gitea-Signature", good.clone())]),
        ("forgejo", signed("forgejo", body)),
        // Forgejo's header alone, on either receiver.
        ("forgejo", vec![("X-Forgejo-Signature", good.clone())]),
        ("gitea", vec![("X-Forgejo-Signature", good.clone())]),
    ];
    for (i, (kind, headers)) in accepted.iter().enumerate() {
        let code = post(
            b.addr,
            &format!("/webhooks/{kind}"),
            headers,
            Framing::Body(body),
        );
        assert_eq!(code, 202, "{kind} {headers:?}");
        // Each one runs a cycle.
        let want = cycles + 1.0 + i as f64;
        assert!(
            poll(Duration::from_secs(20), || {
                (reconciles(b.addr) >= want).then_some(())
            })
            .is_some(),
            "{kind}: no cycle after an authentic webhook"
        );
    }
}

#[test]
fn every_webhook_kind_reads_1_mib_and_refuses_a_byte_more() {
    let b = berth_with_webhooks();
    let full = vec![b'x'; LIMIT];
    let over = vec![b'x'; LIMIT + 1];
    for kind in ["github", "gitlab", "gitea", "forgejo"] {
        let path = format!("/webhooks/{kind}");
        let cases = [
            (
                "a 1 MiB body",
                signed(kind, &full),
                Framing::Body(&full),
                202,
            ),
            // Signed or not, a larger body is not read, let alone checked.
            ("1 MiB + 1", signed(kind, &over), Framing::Body(&over), 413),
            (
                "1 MiB + 1 announced",
                signed(kind, &over),
                Framing::AnnouncedOnly(LIMIT + 1),
                413,
            ),
            (
                "1 MiB + 1 chunked",
                signed(kind, &over),
                Framing::Chunked(LIMIT + 1),
                413,
            ),
            (
                "64 MiB announced, unsigned",
                vec![],
                Framing::AnnouncedOnly(64 << 20),
                413,
            ),
        ];
        for (what, headers, framing, want) in cases {
            assert_eq!(
                post(b.addr, &path, &headers, framing),
                want,
                "{kind}: {what}"
            );
        }
    }
    // The server is still up and answers.
    assert!(reconciles(b.addr) >= 1.0);
}
