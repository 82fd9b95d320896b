//! `cargo bench --bench observe` (root): berth's no-op dry-run against
//! `kamal details` on the same testbed, for 3, 10 and 30 hosts, after real
//! Kamal deployed the demo app (proxy off; `BERTH_BENCH_PROXY=1` for on). Prints both, the ratios (Kamal's
//! time over berth's, cold and warm), and per host and warm observation:
//! shell calls + Engine API batches, sent together, so one round trip; then
//! the CPU the whole machine (all hosts, berth, its SSH clients) spent per
//! host, and berth's own share.
//! Targets (issue 4): ≥ 20× faster than `kamal details`; ≤ 150 ms for 30
//! hosts with warm connections.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::cli::load_desired_for;
use berth::observe;
use berth::plan::{self, PlanOptions};
use berth::remote::{Connections, SshOptions};
use support::{Fleet, KAMAL_COMMON};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// CPU time the whole machine spent (every host of the testbed runs here),
/// from /proc/stat (user, nice, system, irq, softirq, steal), in ms.
fn machine_cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .enumerate()
        .filter(|(i, _)| [0, 1, 2, 5, 6, 7].contains(i))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    ticks * 10
}

/// CPU time of this process (berth's side), in ms.
fn own_cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    // utime and stime: fields 14 and 15 of stat, 12th and 13th after the name.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) * 10
}

fn main() {
    println!(
        "{:>5} {:>16} {:>16} {:>16} {:>8} {:>8} {:>15} {:>11} {:>9}",
        "hosts",
        "kamal details",
        "berth cold CLI",
        "berth warm",
        "cold",
        "warm",
        "trips/host",
        "cpu/host",
        "berth"
    );
    // `BERTH_BENCH_HOSTS=3,10` for fewer sizes.
    let sizes: Vec<usize> = std::env::var("BERTH_BENCH_HOSTS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![3, 10, 30]);
    // `BERTH_BENCH_PROXY=1`: web behind kamal-proxy (the stand-in), so every
    // observation also lists the proxy's routes (`docker exec`).
    let with_proxy = std::env::var("BERTH_BENCH_PROXY").is_ok_and(|v| v == "1");
    for n in sizes {
        let fleet = Fleet::up(n).expect("the benches need root (network namespaces)");
        let proxy = if with_proxy {
            "proxy:\n  app_port: 80\n  healthcheck:\n    path: /up\n    interval: 1\n"
        } else {
            "    proxy: false\n"
        };
        let project = fleet.project(
            &format!("service: demo\nimage: demo\nservers:\n  web:\n    hosts: {{hosts}}\n{proxy}readiness_delay: 0\nx-berth:\n  version: v1\n{KAMAL_COMMON}"),
            "KAMAL_REGISTRY_PASSWORD=unused\n",
        );
        let p = project.path();
        if with_proxy {
            fleet.kamal_use_stand_in_proxy(p);
        }
        fleet.kamal_ok(p, &["deploy", "--skip-push", "--version", "v1"]);

        let mut kamal = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            fleet.kamal_ok(p, &["details"]);
            kamal.push(t.elapsed());
        }
        let kamal = median(kamal);

        let mut cold = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let out = std::process::Command::new("target/release/berth")
                .args(["reconcile", "--dry-run", "--known-hosts"])
                .arg(fleet.tb.known_hosts())
                .arg("-c")
                .arg(p.join("config/deploy.yml"))
                .output()
                .expect("berth");
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
            cold.push(t.elapsed());
        }
        let cold = median(cold);

        let (cfg, desired) = load_desired_for(&p.join("config/deploy.yml"), None).expect("config");
        let mut ssh = SshOptions::from_config(&cfg.ssh, Some(PathBuf::from("/root")));
        ssh.known_hosts = Some(fleet.tb.known_hosts());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let (warm, trips, cpu) = rt.block_on(async {
            let conns = Arc::new(Connections::new(ssh));
            let first = observe::observe(&desired, &conns, 64).await;
            assert!(plan::plan(&desired, &first, &PlanOptions::default()).in_sync());
            // The first Engine API observation lists, then inspects (two
            // batches); from then on the listing and inspects go together.
            assert_eq!(observe::observe(&desired, &conns, 64).await, first);
            let (calls, batches) = (conns.commands_run(), conns.engine_batches());
            let mut times = Vec::new();
            let (cpu, own) = (machine_cpu_ms(), own_cpu_ms());
            for _ in 0..5 {
                let t = Instant::now();
                let o = observe::observe(&desired, &conns, 64).await;
                let p = plan::plan(&desired, &o, &PlanOptions::default());
                times.push(t.elapsed());
                assert!(p.in_sync());
                // The Engine API path sees what the shell probe saw.
                assert_eq!(o, first);
            }
            let per_host = |d: u64| d as f64 / 5.0 / n as f64;
            let cpu = (
                per_host(machine_cpu_ms() - cpu),
                per_host(own_cpu_ms() - own),
            );
            let trips = (
                per_host(conns.commands_run() - calls),
                per_host(conns.engine_batches() - batches),
            );
            conns.close().await;
            (median(times), trips, cpu)
        });
        println!(
            "{n:>5} {:>13.0} ms {:>13.0} ms {:>13.0} ms {:>7.1}x {:>7.1}x {:>9.1} + {:.1} {:>8.1} ms {:>6.2} ms",
            kamal.as_secs_f64() * 1000.0,
            cold.as_secs_f64() * 1000.0,
            warm.as_secs_f64() * 1000.0,
            kamal.as_secs_f64() / cold.as_secs_f64(),
            kamal.as_secs_f64() / warm.as_secs_f64(),
            trips.0,
            trips.1,
            cpu.0,
            cpu.1,
        );
        drop(fleet);
    }
}
