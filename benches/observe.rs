//! `cargo bench --bench observe` (root): berth's no-op dry-run against
//! `kamal details` on the same testbed, for 10, 30, 50 and 100 hosts
//! (`BERTH_BENCH_HOSTS=10,30` for fewer), after real Kamal deployed the demo
//! app (proxy off; `BERTH_BENCH_PROXY=1` for on). The tools take turns, three
//! rounds; medians.
//!
//! Prints per size: Kamal's wall time, berth's cold one-shot `reconcile
//! --dry-run` (a process of its own, as CI runs it) and its warm observation
//! (connections kept, as the controller), the ratios (Kamal's time over
//! berth's), and per warm observation the round trips per host (shell calls
//! + Engine API batches, sent together: one round trip).
//!
//! Then where the time goes, from /proc (`common/proc.rs`), per host: the
//! CPU of the client (berth or Kamal itself; berth's `ssh` processes, the
//! daemonized ControlMasters included), of the hosts' sshd (every session,
//! and what the probe ran there) and of their dockerd, and of the whole
//! machine, for: the tools as above; berth's cold path in-process (the same
//! code, `Lifetime::OneShot`), with its phases timed per host (connection up
//! = TCP + key exchange + authentication, in berth's process where
//! `remote::direct` applies, as here, else an OpenSSH ControlMaster; a
//! channel for the host's shell; the probe's call; the Engine API snapshot;
//! closing), and how many hosts were reached in process; and
//! the floor any process-based SSH client pays: `ssh -G` (the process, no
//! network) and `ssh HOST true` (spawn, key exchange, authentication, one
//! session) with curve25519 and with NIST P-256, all hosts at once.
//!
//! The cold and warm plans are asserted identical (the JSON the CLI printed
//! and the one the warm observation gives).
//! Targets (issues 4 and 16): warm ≥ 20× faster than `kamal details`; cold
//! ≥ 6× at 10 hosts and ≥ 2× at 50.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "common/proc.rs"]
mod proc;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::cli::load_desired_for;
use berth::observe;
use berth::plan::{self, PlanOptions};
use berth::remote::{Connections, Lifetime, Phase, SshOptions};
use support::{Fleet, KAMAL_COMMON};

/// Hosts observed at once: `reconcile`'s default `--parallel`, and what the
/// warm figures have always been measured with.
const CLI_PARALLEL: usize = 32;
const WARM_PARALLEL: usize = 64;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The testbed's daemons whose CPU is the hosts' side.
struct Daemons {
    sshd: Vec<u32>,
    dockerd: Vec<u32>,
}

/// CPU counters at one moment, ms.
#[derive(Clone, Copy, Default)]
struct Cpu {
    /// This process (berth, in-process).
    own: f64,
    /// Children waited for (a CLI run and everything it waited for, `ssh`
    /// masters reaped).
    children: f64,
    /// `ssh` masters still running (warm connections).
    ssh_live: f64,
    sshd: f64,
    dockerd: f64,
    machine: f64,
}

impl Cpu {
    fn now(d: &Daemons) -> Cpu {
        let own = proc::own_cpu_ms();
        let children = proc::children_cpu_ms();
        let machine = proc::machine_cpu_ms();
        let t = proc::Table::now();
        let me = std::process::id();
        Cpu {
            own,
            children,
            ssh_live: t
                .children_named(me, "ssh")
                .iter()
                .map(|p| t.tree_cpu_ms(p.pid))
                .sum(),
            sshd: d.sshd.iter().map(|p| t.tree_cpu_ms(*p)).sum(),
            dockerd: d.dockerd.iter().map(|p| t.tree_cpu_ms(*p)).sum(),
            machine,
        }
    }

    fn minus(self, o: Cpu) -> Cpu {
        Cpu {
            own: self.own - o.own,
            children: self.children - o.children,
            ssh_live: self.ssh_live - o.ssh_live,
            sshd: self.sshd - o.sshd,
            dockerd: self.dockerd - o.dockerd,
            machine: self.machine - o.machine,
        }
    }
}

/// One scenario's figures: wall (median) and CPU per host (mean), ms.
#[derive(Default)]
struct Row {
    walls: Vec<Duration>,
    client: f64,
    ssh: Option<f64>,
    sshd: f64,
    dockerd: f64,
    machine: f64,
    runs: f64,
}

impl Row {
    fn add(&mut self, wall: Duration, client: f64, ssh: Option<f64>, cpu: Cpu) {
        self.walls.push(wall);
        self.client += client;
        self.ssh = ssh.map(|s| s + self.ssh.unwrap_or(0.0));
        self.sshd += cpu.sshd;
        self.dockerd += cpu.dockerd;
        self.machine += cpu.machine;
        self.runs += 1.0;
    }

    fn wall(&self) -> Duration {
        median(self.walls.clone())
    }

    fn print(&self, what: &str, client: &str, n: usize) {
        let per = |v: f64| v / self.runs / n as f64;
        println!(
            "  {what:<34} {:>8.0} ms  {client:>5} {:>6.1}  {:>7}  {:>8.1}  {:>8.1}  {:>8.1}",
            self.wall().as_secs_f64() * 1000.0,
            per(self.client),
            self.ssh
                .map_or("-".to_string(), |s| format!("{:.1}", per(s))),
            per(self.sshd),
            per(self.dockerd),
            per(self.machine),
        );
    }
}

/// Until every session on the hosts has ended (their sshd processes are
/// then counted in their listeners').
fn hosts_settled(d: &Daemons) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let t = proc::Table::now();
        if d.sshd.iter().all(|p| !t.has_children(*p)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("sessions on the hosts did not end");
}

/// `n` plain `ssh HOST true` (or `ssh -G HOST`), all at once.
fn plain_ssh(fleet: &Fleet, kex: &str, only_parse: bool) -> Duration {
    let t = Instant::now();
    let children: Vec<_> = fleet
        .addrs()
        .iter()
        .map(|a| {
            let mut c = fleet.tb.ssh_command();
            c.args([
                "-F",
                "none",
                "-o",
                &format!("KexAlgorithms={kex}"),
                "-l",
                "root",
            ]);
            if only_parse {
                c.arg("-G");
            }
            c.arg(a).arg("true");
            c.stdout(std::process::Stdio::null())
                .spawn()
                .expect("spawn ssh")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().expect("ssh").success());
    }
    t.elapsed()
}

fn main() {
    proc::become_subreaper();
    // `BERTH_BENCH_HOSTS=10,30` for fewer sizes.
    let sizes: Vec<usize> = std::env::var("BERTH_BENCH_HOSTS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 30, 50, 100]);
    // `BERTH_BENCH_PROXY=1`: web behind kamal-proxy (the stand-in), so every
    // observation also reads the proxy's routes.
    let with_proxy = std::env::var("BERTH_BENCH_PROXY").is_ok_and(|v| v == "1");
    let mut summary = Vec::new();
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
        let daemons = Daemons {
            sshd: fleet.tb.hosts.iter().filter_map(|h| h.sshd_pid()).collect(),
            dockerd: fleet
                .tb
                .hosts
                .iter()
                .filter_map(|h| h.dockerd_pid())
                .collect(),
        };
        assert_eq!(daemons.sshd.len(), n);
        assert_eq!(daemons.dockerd.len(), n);
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

        // The tools take turns: Kamal, then berth's cold CLI.
        let (mut kamal, mut cold) = (Row::default(), Row::default());
        let mut cold_plan = String::new();
        for _ in 0..3 {
            hosts_settled(&daemons);
            let before = Cpu::now(&daemons);
            let run = proc::run(
                Command::new(support::kamal_bin())
                    .arg("details")
                    .current_dir(p)
                    .env("HOME", fleet.tb.client_home()),
            );
            assert!(run.output.status.success(), "kamal details");
            hosts_settled(&daemons);
            let cpu = Cpu::now(&daemons).minus(before);
            kamal.add(run.wall, cpu.children, None, cpu);

            let before = Cpu::now(&daemons);
            let run = proc::run(
                Command::new("target/release/berth")
                    .args([
                        "reconcile",
                        "--dry-run",
                        "--output",
                        "json",
                        "--known-hosts",
                    ])
                    .arg(fleet.tb.known_hosts())
                    .arg("-c")
                    .arg(p.join("config/deploy.yml"))
                    // The keys the config names, as on a CI runner.
                    .env_remove("SSH_AUTH_SOCK"),
            );
            assert_eq!(
                run.output.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&run.output.stderr)
            );
            // Its masters, daemonized, are this process's to reap.
            proc::reap("ssh", Duration::from_secs(10));
            hosts_settled(&daemons);
            let cpu = Cpu::now(&daemons).minus(before);
            cold.add(run.wall, run.own_ms, Some(cpu.children - run.own_ms), cpu);
            cold_plan = String::from_utf8_lossy(&run.output.stdout).into_owned();
        }

        let (cfg, desired) = load_desired_for(&p.join("config/deploy.yml"), None).expect("config");
        let mut ssh = SshOptions::from_config(&cfg.ssh, Some(PathBuf::from("/root")));
        ssh.known_hosts = Some(fleet.tb.known_hosts());
        ssh.agent = false;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();

        // The cold path in-process, phases timed.
        let mut in_process = Row::default();
        let mut reached_in_process = 0;
        let mut phases = std::collections::BTreeMap::<Phase, (u32, Duration, Duration)>::new();
        for _ in 0..3 {
            hosts_settled(&daemons);
            let before = Cpu::now(&daemons);
            let t = Instant::now();
            let mut once = ssh.clone();
            once.lifetime = Lifetime::OneShot;
            let conns = Arc::new(Connections::new(once));
            let observed = rt.block_on(observe::observe(&desired, &conns, CLI_PARALLEL));
            let p = plan::plan(&desired, &observed, &PlanOptions::default());
            assert!(p.in_sync());
            reached_in_process = conns.reached_in_process();
            rt.block_on(conns.close());
            let wall = t.elapsed();
            proc::reap("ssh", Duration::from_secs(10));
            hosts_settled(&daemons);
            let cpu = Cpu::now(&daemons).minus(before);
            in_process.add(wall, cpu.own, Some(cpu.children), cpu);
            for (phase, time) in conns.phase_times() {
                let e = phases.entry(phase).or_default();
                e.0 += time.count;
                e.1 += time.total;
                e.2 = e.2.max(time.max);
            }
        }

        // The floor of any process-based client.
        let mut floors = Vec::new();
        for (what, kex, only_parse) in [
            (
                "ssh -G HOST (process, no network)",
                "curve25519-sha256",
                true,
            ),
            ("ssh HOST true, curve25519", "curve25519-sha256", false),
            ("ssh HOST true, NIST P-256", "ecdh-sha2-nistp256", false),
        ] {
            let mut row = Row::default();
            for _ in 0..3 {
                hosts_settled(&daemons);
                let before = Cpu::now(&daemons);
                let wall = plain_ssh(&fleet, kex, only_parse);
                hosts_settled(&daemons);
                let cpu = Cpu::now(&daemons).minus(before);
                row.add(wall, 0.0, Some(cpu.children), cpu);
            }
            floors.push((what, row));
        }

        // Warm: connections kept, as the controller does.
        let (warm, trips, warm_row) = rt.block_on(async {
            let conns = Arc::new(Connections::new(ssh));
            let first = observe::observe(&desired, &conns, WARM_PARALLEL).await;
            let first_plan = plan::plan(&desired, &first, &PlanOptions::default());
            assert!(first_plan.in_sync());
            // Cold and warm see alike: the same plan, byte for byte.
            assert_eq!(
                cold_plan.trim_end(),
                plan::output::json(&first_plan),
                "the cold CLI's plan differs from the warm one"
            );
            assert_eq!(
                observe::observe(&desired, &conns, WARM_PARALLEL).await,
                first
            );
            let (calls, batches) = (conns.commands_run(), conns.engine_batches());
            let mut row = Row::default();
            let mut times = Vec::new();
            for _ in 0..5 {
                let before = Cpu::now(&daemons);
                let t = Instant::now();
                let o = observe::observe(&desired, &conns, WARM_PARALLEL).await;
                let p = plan::plan(&desired, &o, &PlanOptions::default());
                let wall = t.elapsed();
                let cpu = Cpu::now(&daemons).minus(before);
                times.push(wall);
                row.add(wall, cpu.own, Some(cpu.ssh_live + cpu.children), cpu);
                assert!(p.in_sync());
                assert_eq!(o, first);
            }
            let per_host = |d: u64| d as f64 / 5.0 / n as f64;
            let trips = (
                per_host(conns.commands_run() - calls),
                per_host(conns.engine_batches() - batches),
            );
            conns.close().await;
            (median(times), trips, row)
        });
        drop(rt);
        proc::reap("ssh", Duration::from_secs(10));

        let (k, c) = (kamal.wall(), cold.wall());
        println!(
            "\n{n} hosts (load before: {}){}",
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            if with_proxy { ", proxy on" } else { "" }
        );
        println!(
            "  kamal details {:.0} ms · berth cold CLI {:.0} ms ({:.1}x) · berth warm {:.0} ms ({:.1}x) · warm trips/host {:.1} shell + {:.1} Engine API",
            k.as_secs_f64() * 1000.0,
            c.as_secs_f64() * 1000.0,
            k.as_secs_f64() / c.as_secs_f64(),
            warm.as_secs_f64() * 1000.0,
            k.as_secs_f64() / warm.as_secs_f64(),
            trips.0,
            trips.1,
        );
        println!(
            "  {:<34} {:>11}  {:>12}  {:>7}  {:>8}  {:>8}  {:>8}",
            "CPU per host, ms", "wall", "client", "ssh", "sshd", "dockerd", "machine"
        );
        kamal.print("kamal details", "kamal", n);
        cold.print("berth reconcile --dry-run (CLI)", "berth", n);
        in_process.print("berth cold, in-process", "berth", n);
        for (what, row) in &floors {
            row.print(what, "", n);
        }
        warm_row.print("berth warm observation", "berth", n);
        println!(
            "  cold: {reached_in_process} of {n} hosts reached in process (no ssh process; the CLI row's ssh column is then clock-tick rounding)"
        );
        let phase_text: Vec<String> = phases
            .iter()
            .map(|(phase, (count, total, max))| {
                format!(
                    "{phase:?} {:.1} / {:.1}",
                    total.as_secs_f64() * 1000.0 / f64::from((*count).max(1)),
                    max.as_secs_f64() * 1000.0
                )
            })
            .collect();
        println!(
            "  cold phases, ms per host (mean / max): {}",
            phase_text.join(" · ")
        );
        summary.push((n, k, c, warm));
        drop(fleet);
        // The testbed's daemons, started after this process became a
        // subreaper, were its children.
        proc::reap_zombies();
    }
    println!(
        "\n{:>5} {:>14} {:>15} {:>11} {:>7} {:>7}",
        "hosts", "kamal details", "berth cold CLI", "berth warm", "cold", "warm"
    );
    for (n, k, c, w) in summary {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{n:>5} {:>11.0} ms {:>12.0} ms {:>8.0} ms {:>6.1}x {:>6.1}x",
            ms(k),
            ms(c),
            ms(w),
            ms(k) / ms(c),
            ms(k) / ms(w)
        );
    }
}
