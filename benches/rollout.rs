//! `cargo bench --bench rollout` (root): a version rollout by berth against
//! `kamal deploy --skip-push` on the same testbed, proxy off,
//! `readiness_delay: 0`: 3 and 10 hosts (all at once), and one role across
//! 100 hosts with `boot.limit` 10 and 25% (`BERTH_BENCH_ROLLOUT=3,10,100:10`
//! for a choice: `hosts[:limit]`). Rounds, the tools taking turns (three;
//! two at 100 hosts, `BERTH_BENCH_ROUNDS` to change); prints the first round
//! (a version new to the hosts, pulls included) and the median of the others
//! (the images there, and for berth a retained container to start), wall
//! times and remote command counts with the ratios. Targets (issue 5):
//! ≤ 0.5× Kamal's wall time, ≤ 1/4 of its remote commands.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{Fleet, KAMAL_COMMON};

fn config(version: &str, limit: Option<&str>) -> String {
    // A count as a number, a percentage as a string (as Kamal reads them).
    let boot = limit.map_or(String::new(), |l| match l.parse::<u32>() {
        Ok(count) => format!("boot:\n  limit: {count}\n"),
        Err(_) => format!("boot:\n  limit: \"{l}\"\n"),
    });
    format!(
        "service: demo\nimage: demo\nservers:\n  web:\n    hosts: {{hosts}}\n    proxy: false\nreadiness_delay: 0\n{boot}x-berth:\n  version: {version}\n{KAMAL_COMMON}"
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    println!(
        "{:>5} {:>6} {:>7} {:>12} {:>12} {:>7} {:>14} {:>14} {:>7}",
        "hosts",
        "limit",
        "round",
        "kamal wall",
        "berth wall",
        "ratio",
        "kamal cmds",
        "berth cmds",
        "ratio"
    );
    // `hosts[:boot.limit]`, one fleet per size.
    let cases: Vec<(usize, Option<String>)> = std::env::var("BERTH_BENCH_ROLLOUT")
        .unwrap_or_else(|_| "3,10,100:10,100:25%".to_string())
        .split(',')
        .filter_map(|c| {
            let (n, limit) = match c.split_once(':') {
                Some((n, l)) => (n, Some(l.trim().to_string())),
                None => (c, None),
            };
            Some((n.trim().parse().ok()?, limit))
        })
        .collect();
    let mut sizes: Vec<usize> = cases.iter().map(|(n, _)| *n).collect();
    sizes.dedup();
    for n in sizes {
        let fleet = Fleet::up(n).expect("the benches need root (network namespaces)");
        let project = fleet.project(&config("v1", None), "KAMAL_REGISTRY_PASSWORD=unused\n");
        let p = project.path();
        fleet.kamal_ok(p, &["deploy", "--skip-push", "--version", "v1"]);
        let mut deployed = "v1";
        for (_, limit) in cases.iter().filter(|(m, _)| *m == n) {
            deployed = rollouts(&fleet, p, n, limit.as_deref(), deployed);
        }
    }
}

/// Rounds of rollouts on `n` hosts running `deployed`, the tools taking
/// turns, each rolling to the version the other did not just deploy
/// (v1 → v2 → v3 → v1 …); returns the version left running.
fn rollouts(
    fleet: &Fleet,
    p: &std::path::Path,
    n: usize,
    limit: Option<&str>,
    deployed: &'static str,
) -> &'static str {
    let rounds: usize = std::env::var("BERTH_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(if n > 10 { 2 } else { 3 });
    let write = |version: &str| {
        std::fs::write(
            p.join("config/deploy.yml"),
            config(version, limit)
                .replace("{hosts}", &format!("[{}]", fleet.addrs().join(", ")))
                .replace("{registry}", &fleet.tb.registry())
                .replace("{key}", &fleet.tb.ssh_key().to_string_lossy()),
        )
        .unwrap();
    };
    let versions = ["v1", "v2", "v3"];
    let start = versions.iter().position(|v| *v == deployed).unwrap_or(0);
    let (mut kamal_walls, mut berth_walls) = (Vec::new(), Vec::new());
    let (mut kamal_cmds, mut berth_cmds) = (Vec::new(), Vec::new());
    let mut last = deployed;
    for round in 0..rounds {
        let to_kamal = versions[(start + 2 * round + 1) % 3];
        write(to_kamal);
        let t = Instant::now();
        let log = fleet.kamal_ok(p, &["deploy", "--skip-push", "--version", to_kamal]);
        kamal_walls.push(t.elapsed());
        kamal_cmds.push(log.lines().filter(|l| l.contains(" Running ")).count());

        let to_berth = versions[(start + 2 * round + 2) % 3];
        write(to_berth);
        let t = Instant::now();
        let out = Command::new("target/release/berth")
            .args(["reconcile", "--known-hosts"])
            .arg(fleet.tb.known_hosts())
            .arg("-c")
            .arg(p.join("config/deploy.yml"))
            .output()
            .expect("berth");
        berth_walls.push(t.elapsed());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        berth_cmds.push(
            err.lines()
                .find_map(|l| {
                    l.strip_prefix("Applied ")?
                        .split(" with ")
                        .nth(1)?
                        .split(' ')
                        .next()?
                        .parse::<usize>()
                        .ok()
                })
                .unwrap_or_else(|| panic!("berth prints its command count: {err}")),
        );
        last = to_berth;
    }
    // The first round pulls a version new to the hosts; later rounds
    // find the images (and, for berth, a retained container to start).
    let mut lines = vec![(
        "first",
        kamal_walls[0],
        berth_walls[0],
        kamal_cmds[0],
        berth_cmds[0],
    )];
    if rounds > 1 {
        lines.push((
            "median",
            median(kamal_walls[1..].to_vec()),
            median(berth_walls[1..].to_vec()),
            kamal_cmds[rounds - 1],
            berth_cmds[rounds - 1],
        ));
    }
    for (what, k, b, kc, bc) in lines {
        println!(
            "{n:>5} {:>6} {what:>7} {:>9.2} s {:>9.2} s {:>6.2}x {:>14} {:>14} {:>6.2}x",
            limit.unwrap_or("-"),
            k.as_secs_f64(),
            b.as_secs_f64(),
            b.as_secs_f64() / k.as_secs_f64(),
            kc,
            bc,
            bc as f64 / kc as f64,
        );
    }
    last
}
