//! `cargo bench --bench rollout` (root): a version rollout by berth against
//! `kamal deploy --skip-push` on the same testbed, 3 and 10 hosts, proxy off,
//! `readiness_delay: 0`. Three rounds, the tools taking turns; prints the
//! first round (a version new to the hosts, pulls included) and the medians,
//! wall times and remote command counts with the ratios. Targets (issue 5):
//! ≤ 0.5× Kamal's wall time, ≤ 1/4 of its remote commands.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{Fleet, KAMAL_COMMON};

fn config(version: &str) -> String {
    format!(
        "service: demo\nimage: demo\nservers:\n  web:\n    hosts: {{hosts}}\n    proxy: false\nreadiness_delay: 0\nx-berth:\n  version: {version}\n{KAMAL_COMMON}"
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    println!(
        "{:>5} {:>7} {:>12} {:>12} {:>7} {:>14} {:>14} {:>7}",
        "hosts", "round", "kamal wall", "berth wall", "ratio", "kamal cmds", "berth cmds", "ratio"
    );
    for n in [3usize, 10] {
        let fleet = Fleet::up(n).expect("the benches need root (network namespaces)");
        let project = fleet.project(&config("v1"), "KAMAL_REGISTRY_PASSWORD=unused\n");
        let p = project.path();
        // Warm: the app runs v1 (Kamal's deploy). Then three rounds, the
        // tools taking turns, each rolling to the version the other did not
        // just deploy (v1 → v2 → v3 → v1 …), pulls included the first time
        // round; medians (this 2-core machine runs every host: noisy).
        fleet.kamal_ok(p, &["deploy", "--skip-push", "--version", "v1"]);
        let versions = ["v1", "v2", "v3"];
        let (mut kamal_walls, mut berth_walls) = (Vec::new(), Vec::new());
        let (mut kamal_cmds, mut berth_cmds) = (0, 0);
        let (mut kamal_first_cmds, mut berth_first_cmds) = (0, 0);
        for round in 0..3 {
            let to_kamal = versions[(2 * round + 1) % 3];
            let t = Instant::now();
            let log = fleet.kamal_ok(p, &["deploy", "--skip-push", "--version", to_kamal]);
            kamal_walls.push(t.elapsed());
            kamal_cmds = log.lines().filter(|l| l.contains(" Running ")).count();

            let to_berth = versions[(2 * round + 2) % 3];
            std::fs::write(
                p.join("config/deploy.yml"),
                config(to_berth)
                    .replace("{hosts}", &format!("[{}]", fleet.addrs().join(", ")))
                    .replace("{registry}", &fleet.tb.registry())
                    .replace("{key}", &fleet.tb.ssh_key().to_string_lossy()),
            )
            .unwrap();
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
            berth_cmds = err
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Applied ")?
                        .split(" with ")
                        .nth(1)?
                        .split(' ')
                        .next()?
                        .parse()
                        .ok()
                })
                .unwrap_or_else(|| panic!("berth prints its command count: {err}"));
            if round == 0 {
                (kamal_first_cmds, berth_first_cmds) = (kamal_cmds, berth_cmds);
            }
        }
        // The first round pulls a version new to the hosts; later rounds
        // find the images (and, for berth, a retained container to start).
        let (k1, b1) = (kamal_walls[0], berth_walls[0]);
        let (kamal_wall, berth_wall) = (median(kamal_walls), median(berth_walls));
        for (what, k, b, kc, bc) in [
            ("first", k1, b1, kamal_first_cmds, berth_first_cmds),
            ("median", kamal_wall, berth_wall, kamal_cmds, berth_cmds),
        ] {
            println!(
                "{n:>5} {what:>7} {:>9.2} s {:>9.2} s {:>6.2}x {:>14} {:>14} {:>6.2}x",
                k.as_secs_f64(),
                b.as_secs_f64(),
                b.as_secs_f64() / k.as_secs_f64(),
                kc,
                bc,
                bc as f64 / kc as f64,
            );
        }
    }
}
