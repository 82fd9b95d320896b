//! `cargo bench --bench rollout` (root): a version rollout by berth against
//! `kamal deploy --skip-push` on the same testbed, 3 and 10 hosts, proxy off,
//! `readiness_delay: 0`. Prints wall times and remote command counts with the
//! ratios. Targets (issue 5): ≤ 0.5× Kamal's wall time, ≤ 1/4 of its remote
//! commands.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Instant;

use support::{Fleet, KAMAL_COMMON};

fn config(version: &str) -> String {
    format!(
        "service: demo\nimage: demo\nservers:\n  web:\n    hosts: {{hosts}}\n    proxy: false\nreadiness_delay: 0\nx-berth:\n  version: {version}\n{KAMAL_COMMON}"
    )
}

fn main() {
    println!(
        "{:>5} {:>12} {:>12} {:>7} {:>14} {:>14} {:>7}",
        "hosts", "kamal wall", "berth wall", "ratio", "kamal cmds", "berth cmds", "ratio"
    );
    for n in [3usize, 10] {
        let fleet = Fleet::up(n);
        let project = fleet.project(&config("v1"), "KAMAL_REGISTRY_PASSWORD=unused\n");
        let p = project.path();
        // Warm: the app runs v1 (Kamal's deploy). Each tool then rolls to a
        // version never deployed on these hosts, pull included.
        fleet.kamal_ok(p, &["deploy", "--skip-push", "--version", "v1"]);

        // Kamal: v1 → v2.
        let t = Instant::now();
        let log = fleet.kamal_ok(p, &["deploy", "--skip-push", "--version", "v2"]);
        let kamal_wall = t.elapsed();
        let kamal_cmds = log.lines().filter(|l| l.contains(" Running ")).count();

        // berth: v2 → v3.
        let yml = std::fs::read_to_string(p.join("config/deploy.yml"))
            .unwrap()
            .replace("version: v1", "version: v3");
        std::fs::write(p.join("config/deploy.yml"), yml).unwrap();
        let t = Instant::now();
        let out = Command::new("target/release/berth")
            .args(["reconcile", "--known-hosts"])
            .arg(fleet.tb.known_hosts())
            .arg("-c")
            .arg(p.join("config/deploy.yml"))
            .output()
            .expect("berth");
        let berth_wall = t.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        let berth_cmds: usize = err
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
        println!(
            "{n:>5} {:>9.2} s {:>9.2} s {:>6.2}x {:>14} {:>14} {:>6.2}x",
            kamal_wall.as_secs_f64(),
            berth_wall.as_secs_f64(),
            berth_wall.as_secs_f64() / kamal_wall.as_secs_f64(),
            kamal_cmds,
            berth_cmds,
            berth_cmds as f64 / kamal_cmds as f64,
        );
    }
}
