//! `cargo bench --bench http`: berth's HTTP server (in-process, 127.0.0.1,
//! default limits) with 2,000 idle TCP connections open against it. Prints
//! the `/healthz` latency (fresh connection, request, response) as p50/p99/max
//! over 200 requests, first without idle connections, then with them (the
//! first request after the burst separately: it queues behind the
//! connections berth is still accepting). Target (issue 12): max < 100 ms.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::server::{self, ServerState, serve};

const IDLE: usize = 2_000;
const SAMPLES: usize = 200;

fn healthz(addr: SocketAddr) -> Duration {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    assert!(out.ends_with("\r\n\r\nok\n"), "{out}");
    t.elapsed()
}

fn report(what: &str, mut v: Vec<Duration>) {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
    println!(
        "/healthz {what}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} requests)",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
        v.len()
    );
}

fn main() {
    let fds = serve::raise_fd_limit().expect("fd limit");
    assert!(
        fds.is_none_or(|n| n > IDLE as u64 + 1_000),
        "needs an fd limit above {}, have {fds:?}",
        IDLE + 1_000
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let listener = runtime
        .block_on(async { serve::bind(SocketAddr::from(([127, 0, 0, 1], 0))) })
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let state = Arc::new(ServerState {
        apps: berth::controller::apps::Apps::new(),
        api_token: None,
        webhook_secret: None,
        notifications: None,
    });
    runtime.spawn(serve::serve(
        listener,
        server::router(state),
        serve::Limits::default(),
        stopped,
    ));

    report(
        "without idle connections",
        (0..SAMPLES).map(|_| healthz(addr)).collect(),
    );
    let t = Instant::now();
    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|_| TcpStream::connect(addr).expect("idle connect"))
        .collect();
    println!(
        "{IDLE} idle connections opened in {:.0} ms (cap {})",
        t.elapsed().as_secs_f64() * 1e3,
        serve::MAX_CONNECTIONS
    );
    println!(
        "/healthz right after the burst: {:.2} ms",
        healthz(addr).as_secs_f64() * 1e3
    );
    report(
        &format!("under {IDLE} idle connections"),
        (0..SAMPLES).map(|_| healthz(addr)).collect(),
    );
    drop(idle);
}
