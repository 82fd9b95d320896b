//! `cargo bench --bench controller` (root): `berth run` keeping a fleet of 30
//! and of 100 hosts (`BERTH_BENCH_HOSTS=30` for fewer) in sync: one app with
//! a proxied web role on every host and an accessory on the first. Prints
//! the drift-detection latency — from a `docker stop` by hand (of a web
//! container, every fourth time of the accessory) to `berth_app_in_sync` 0
//! on `/metrics` of `berth run --mode detect` — as p50/p95 over 20 drifts
//! (each healed by hand before the next; back to back, and on a settled
//! controller), the mean cycle time, and the memory in steady state of the
//! controller and of its ssh processes (one ControlMaster per host, found
//! by their control sockets in berth's directory): RSS and PSS from
//! /proc/PID/smaps_rollup, summed, and per host. A pod's memory limit must
//! hold both (`charts/berth`'s defaults are derived from these figures).
//! Targets (issues 6 and 13): p95 ≤ 1 s, berth's own RSS ≤ 40 MB.
//!
//! Last, the no-op cycle with the history database on and off.
//!
//! First, without a fleet, what signature verification (`--verify`) adds
//! to a cycle: the source step of a no-op cycle (a fetch of an unchanged
//! `file://` branch) with and without it, and one verification of a new
//! SSH-signed revision. `BERTH_BENCH_VERIFY_ONLY=1` stops after that.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "common/proc.rs"]
mod proc;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_testbed as testbed;
use support::{Fleet, KAMAL_COMMON};

fn get(port: u16, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn in_sync(port: u16) -> Option<f64> {
    get(port, "/metrics").lines().find_map(|l| {
        l.strip_prefix("berth_app_in_sync{app=\"bench\",destination=\"\"} ")?
            .trim()
            .parse()
            .ok()
    })
}

/// `berth_reconcile_duration_seconds` sum and count.
fn cycle_seconds(port: u16) -> (f64, f64) {
    let text = get(port, "/metrics");
    let value = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{name}{{app=\"bench\",destination=\"\"}} "))?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    };
    (
        value("berth_reconcile_duration_seconds_sum"),
        value("berth_reconcile_duration_seconds_count"),
    )
}

/// Until no cycle has run for 2 s.
fn wait_settled(port: u16) {
    let mut last = cycle_seconds(port).1;
    let mut since = Instant::now();
    let start = Instant::now();
    while since.elapsed() < Duration::from_secs(2) {
        // A controller whose own cycles wake it again never settles.
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the controller never settles"
        );
        std::thread::sleep(Duration::from_millis(100));
        let now = cycle_seconds(port).1;
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
}

/// The ssh processes serving berth `pid`: their command lines name its
/// control directory (`berth-ssh-<pid>`).
fn ssh_children_of(pid: u32) -> Vec<u32> {
    let needle = format!("berth-ssh-{pid}/");
    proc::all()
        .into_iter()
        .filter(|p| p.comm == "ssh")
        .filter(|p| {
            std::fs::read(format!("/proc/{}/cmdline", p.pid))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .map(|p| p.pid)
        .collect()
}

/// Median of `runs` timings of `f`.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut v: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    v[v.len() / 2]
}

/// The source step of a cycle with and without `--verify head`.
fn verification_cost() {
    use berth::source::verify::{Trust, VerifyMode};
    use berth::source::{GitRef, Source};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let work = d.join("work");
    std::fs::create_dir(&work).unwrap();
    support::git(&work, &["init", "-q", "-b", "main"]);
    let key = support::ssh_signing_key(d, "deployer");
    std::fs::write(
        d.join("allowed_signers"),
        support::allowed_signer("deployer", "", &key),
    )
    .unwrap();
    let sign = support::ssh_signing(&key);
    let commit = |n: usize| {
        std::fs::write(work.join("version"), n.to_string()).unwrap();
        support::git(&work, &["add", "-A"]);
        support::git_signed(&work, &sign, &["commit", "-q", "-S", "-m", "bump"]);
    };
    commit(0);
    let source = |trust: Option<Arc<Trust>>, name: &str| Source::Git {
        url: format!("file://{}", work.display()),
        reference: GitRef::Branch("main".into()),
        checkout: d.join(name),
        auth: Default::default(),
        trust,
    };
    let trust =
        || Arc::new(Trust::load(VerifyMode::Head, Some(&d.join("allowed_signers")), None).unwrap());
    let plain = source(None, "plain");
    let verified = source(Some(trust()), "verified");
    plain.fetch().unwrap();
    verified.fetch().unwrap();
    let runs = 50;
    let off = median(runs, || {
        plain.fetch().unwrap();
    });
    let on = median(runs, || {
        verified.fetch().unwrap();
    });
    // A new revision each time: one real verification per fetch (each into
    // a checkout of its own, the same commit for both).
    let (mut fresh_plain, mut fresh) = (Vec::new(), Vec::new());
    for i in 1..=21 {
        commit(i);
        for (trust, times, name) in [
            (None, &mut fresh_plain, "plain"),
            (Some(trust()), &mut fresh, "verified"),
        ] {
            let s = source(trust, &format!("fresh-{name}-{i}"));
            let t = Instant::now();
            s.fetch().unwrap();
            times.push(t.elapsed());
        }
    }
    fresh_plain.sort();
    fresh.sort();
    let (fresh_plain, fresh) = (fresh_plain[10], fresh[10]);
    println!(
        "source step of a no-op cycle (fetch of an unchanged branch, median of {runs}): {:.2} ms without --verify, {:.2} ms with --verify head (verification cached per object id); first fetch of a new revision: {:.2} ms without, {:.2} ms with one SSH signature verified",
        off.as_secs_f64() * 1000.0,
        on.as_secs_f64() * 1000.0,
        fresh_plain.as_secs_f64() * 1000.0,
        fresh.as_secs_f64() * 1000.0,
    );
}

fn main() {
    verification_cost();
    if std::env::var_os("BERTH_BENCH_VERIFY_ONLY").is_some() {
        return;
    }
    let sizes: Vec<usize> = std::env::var("BERTH_BENCH_HOSTS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![30, 100]);
    for n in sizes {
        controller(n);
    }
}

fn controller(n: usize) {
    let fleet = Fleet::up(n).expect("the benches need root (network namespaces)");
    let first = fleet.addrs()[0].clone();
    let project = fleet.project(
        &format!(
            "service: demo\nimage: demo\nservers:\n  web:\n    hosts: {{hosts}}\nreadiness_delay: 0\n\
             proxy:\n  app_port: 80\n  healthcheck:\n    path: /up\n    interval: 1\n  run:\n    registry: {{registry}}\n    version: {pv}\n\
             accessories:\n  kv:\n    image: {{registry}}/kv:1\n    host: {first}\n\
             x-berth:\n  version: v1\n{KAMAL_COMMON}",
            pv = testbed::images::PROXY_VERSION,
        ),
        "KAMAL_REGISTRY_PASSWORD=unused\n",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Deployed by a one-shot reconcile; then the controller in detect mode:
    // a drift stays until the bench heals it, so the gauge cannot flip back
    // (healed by the controller) before the bench reads it.
    let berth = std::path::absolute("target/release/berth").unwrap();
    let deploy = Command::new(&berth)
        .args(["reconcile", "--known-hosts"])
        .arg(fleet.tb.known_hosts())
        .current_dir(project.path())
        .output()
        .expect("berth reconcile");
    assert!(
        deploy.status.success(),
        "{}",
        String::from_utf8_lossy(&deploy.stderr)
    );
    let mut child = berth_run(&berth, &fleet, project.path(), port, "10m")
        .spawn()
        .expect("berth run");
    testbed::poll(
        Instant::now() + Duration::from_secs(120),
        "fleet deployed and in sync",
        || in_sync(port) == Some(1.0),
    )
    .unwrap();
    wait_settled(port); // event streams attach after the first cycles
    // Two rounds of 20 drifts: back to back (each right after the last was
    // healed, so it may land while the controller still confirms the heal),
    // and settled (after the cycles have stopped for 2 s).
    let mut rounds = Vec::new();
    for settled in [false, true] {
        let mut latencies = Vec::new();
        for i in 0..20 {
            if settled {
                wait_settled(port);
            }
            let (host, container) = if i % 4 == 3 {
                (fleet.host(0), "demo-kv")
            } else {
                (fleet.host(i % n), "demo-web-v1")
            };
            host.docker_ok(&["stop", "-t", "0", container]).unwrap();
            let t = Instant::now();
            testbed::poll(
                Instant::now() + Duration::from_secs(10),
                "drift seen",
                || in_sync(port) == Some(0.0),
            )
            .unwrap();
            latencies.push(t.elapsed());
            host.docker_ok(&["start", container]).unwrap();
            testbed::poll(Instant::now() + Duration::from_secs(30), "healed", || {
                in_sync(port) == Some(1.0)
            })
            .unwrap();
        }
        latencies.sort();
        rounds.push(latencies);
    }
    // Steady state: a few quiet seconds, then memory.
    std::thread::sleep(Duration::from_secs(3));
    let (rss, pss) = proc::memory_kb(child.id()).unwrap_or_default();
    let ssh = ssh_children_of(child.id());
    let (ssh_rss, ssh_pss) = ssh
        .iter()
        .filter_map(|p| proc::memory_kb(*p))
        .fold((0, 0), |(r, p), (r2, p2)| (r + r2, p + p2));
    let ms = |l: &[Duration], q: f64| {
        l[((l.len() as f64 * q).ceil() as usize).saturating_sub(1)].as_secs_f64() * 1000.0
    };
    let fds = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .map(|d| d.count())
        .unwrap_or(0);
    let (sum, count) = cycle_seconds(port);
    let mb = |kb: u64| kb as f64 / 1024.0;
    println!(
        "controller, {n} hosts (web behind kamal-proxy, an accessory; load {}): drift detection back to back p50 {:.0} ms, p95 {:.0} ms; settled p50 {:.0} ms, p95 {:.0} ms; 20 drifts each (target p95 <= 1000 ms); mean cycle {:.0} ms over {count} cycles",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        ms(&rounds[0], 0.5),
        ms(&rounds[0], 0.95),
        ms(&rounds[1], 0.5),
        ms(&rounds[1], 0.95),
        sum / count.max(1.0) * 1000.0,
    );
    println!(
        "  memory in steady state: berth RSS {:.1} MB (target <= 40 MB), PSS {:.1} MB; its {} ssh processes RSS {:.1} MB, PSS {:.1} MB ({:.2} MB RSS, {:.2} MB PSS per host); berth + ssh PSS {:.1} MB; berth holds {fds} file descriptors ({:.1} per host)",
        mb(rss),
        mb(pss),
        ssh.len(),
        mb(ssh_rss),
        mb(ssh_pss),
        mb(ssh_rss) / n as f64,
        mb(ssh_pss) / n as f64,
        mb(pss + ssh_pss),
        fds as f64 / n as f64,
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    history_cost(&berth, &fleet, project.path());
}

/// `berth run --mode detect` of the bench's project on `port`, output
/// discarded.
fn berth_run(
    berth: &std::path::Path,
    fleet: &Fleet,
    project: &std::path::Path,
    port: u16,
    interval: &str,
) -> Command {
    let mut cmd = Command::new(berth);
    cmd.args([
        "run",
        "--app",
        "bench",
        "--mode",
        "detect",
        "--interval",
        interval,
    ])
    .arg("--listen")
    .arg(format!("127.0.0.1:{port}"))
    .arg("--dir")
    .arg(project)
    .arg("--known-hosts")
    .arg(fleet.tb.known_hosts())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    cmd
}

/// The no-op cycle with the history database on and off (`--no-history`):
/// a no-op cycle writes nothing, so the two should not differ. Each run:
/// `berth run --mode detect --interval 500ms` on the settled fleet, the mean
/// cycle over the cycles of 15 s after the first ones.
fn history_cost(berth: &std::path::Path, fleet: &Fleet, project: &std::path::Path) {
    let mut means = Vec::new();
    for history in [true, false] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let state = tempfile::tempdir().unwrap();
        let mut cmd = berth_run(berth, fleet, project, port, "500ms");
        cmd.arg("--checkout").arg(state.path().join("checkout"));
        if history {
            cmd.arg("--state-dir").arg(state.path().join("state"));
        } else {
            cmd.arg("--no-history");
        }
        let mut child = cmd.spawn().expect("berth run");
        testbed::poll(Instant::now() + Duration::from_secs(120), "in sync", || {
            in_sync(port) == Some(1.0)
        })
        .unwrap();
        // Past the first cycles (connections, event streams).
        testbed::poll(Instant::now() + Duration::from_secs(60), "5 cycles", || {
            cycle_seconds(port).1 >= 5.0
        })
        .unwrap();
        let (s0, c0) = cycle_seconds(port);
        std::thread::sleep(Duration::from_secs(15));
        let (s1, c1) = cycle_seconds(port);
        means.push(((s1 - s0) / (c1 - c0).max(1.0) * 1000.0, c1 - c0));
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
    println!(
        "no-op cycle, {} hosts: history on {:.1} ms (mean of {} cycles), off {:.1} ms (mean of {} cycles)",
        fleet.addrs().len(),
        means[0].0,
        means[0].1,
        means[1].0,
        means[1].1
    );
}
