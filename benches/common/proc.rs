//! /proc accounting for the benches: CPU time and memory per process, read
//! from the kernel, never estimated. A process's CPU is its time on a CPU
//! (`schedstat`, in ns; else `utime + stime`, in clock ticks);
//! what its children used once they were waited for is `cutime + cstime`
//! (so a host's listening sshd accounts for every session it served and the
//! commands they ran); a live process tree is walked. SSH masters daemonize
//! (`ssh -f`) and so are nobody's children: the bench makes itself a child
//! subreaper, so that they become its children and it can wait for them and
//! count them ([`reap`]).
#![allow(dead_code)] // each bench uses a different subset

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Clock ticks per second of /proc's CPU fields.
fn tick_ms() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1000.0 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// One process as /proc/PID/stat shows it.
#[derive(Clone, Debug)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    /// `R`, `S`, `Z`, …
    pub state: char,
    /// Its own CPU, ms.
    pub cpu_ms: f64,
    /// Its waited-for children's, ms.
    pub children_ms: f64,
}

pub fn stat(pid: u32) -> Option<Proc> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let f: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let t = tick_ms();
    let state = f.first()?.chars().next()?;
    // Its own time on a CPU in ns (schedstat), where the kernel has it: a
    // master relaying one observation uses less than a clock tick. Only for
    // a live process of one thread: schedstat is its first thread's alone.
    let precise = (state != 'Z' && n(17) == 1.0)
        .then(|| std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok())
        .flatten()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ns| ns / 1e6);
    Some(Proc {
        pid,
        ppid: n(1) as u32,
        comm,
        state,
        // Fields 14-17 of stat: the 12th-15th after the name.
        cpu_ms: precise.unwrap_or((n(11) + n(12)) * t),
        children_ms: (n(13) + n(14)) * t,
    })
}

/// Every process now.
pub fn all() -> Vec<Proc> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(stat)
                .collect()
        })
        .unwrap_or_default()
}

/// A snapshot of the process table, for walking trees.
pub struct Table {
    procs: HashMap<u32, Proc>,
    children: HashMap<u32, Vec<u32>>,
}

impl Table {
    pub fn now() -> Table {
        let mut procs = HashMap::new();
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for p in all() {
            children.entry(p.ppid).or_default().push(p.pid);
            procs.insert(p.pid, p);
        }
        Table { procs, children }
    }

    /// CPU of `pid` and all its descendants, dead (waited for) or alive, ms.
    pub fn tree_cpu_ms(&self, pid: u32) -> f64 {
        let Some(p) = self.procs.get(&pid) else {
            return 0.0;
        };
        p.cpu_ms
            + p.children_ms
            + self
                .children
                .get(&pid)
                .map(|c| c.iter().map(|k| self.tree_cpu_ms(*k)).sum())
                .unwrap_or(0.0)
    }

    /// The children of `pid` named `comm`.
    pub fn children_named(&self, pid: u32, comm: &str) -> Vec<&Proc> {
        self.children
            .get(&pid)
            .map(|c| {
                c.iter()
                    .filter_map(|k| self.procs.get(k))
                    .filter(|p| p.comm == comm)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn has_children(&self, pid: u32) -> bool {
        self.children.get(&pid).is_some_and(|c| !c.is_empty())
    }
}

/// CPU the whole machine spent (every testbed host runs here, and whatever
/// else shares the machine), from /proc/stat, ms.
pub fn machine_cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: f64 = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .enumerate()
        // user, nice, system, irq, softirq, steal
        .filter(|(i, _)| [0, 1, 2, 5, 6, 7].contains(i))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum();
    ticks * tick_ms()
}

/// This process's own CPU (berth, when it runs in-process), ms.
pub fn own_cpu_ms() -> f64 {
    stat(std::process::id()).map_or(0.0, |p| p.cpu_ms)
}

/// CPU of this process's children that were waited for, ms.
pub fn children_cpu_ms() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

/// Orphaned descendants (daemonized SSH masters) become this process's
/// children, to be counted.
pub fn become_subreaper() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER");
}

/// Wait for this process's children named `comm` (masters left by a run
/// that closed them) to exit, and reap them: their CPU then counts in
/// [`children_cpu_ms`]. Returns how many.
pub fn reap(comm: &str, timeout: Duration) -> usize {
    let me = std::process::id();
    let deadline = Instant::now() + timeout;
    let mut reaped = 0;
    loop {
        let table = Table::now();
        let left = table.children_named(me, comm);
        if left.is_empty() {
            return reaped;
        }
        for p in left.iter().filter(|p| p.state == 'Z') {
            let mut status = 0;
            // SAFETY: waits for one specific child of ours.
            if unsafe { libc::waitpid(p.pid as i32, &mut status, libc::WNOHANG) } > 0 {
                reaped += 1;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} {comm} processes still running",
            left.len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reap every child of this process that has exited (no other waiter may
/// be running: no async runtime with children of its own).
pub fn reap_zombies() {
    let me = std::process::id();
    for p in all().iter().filter(|p| p.ppid == me && p.state == 'Z') {
        let mut status = 0;
        // SAFETY: waits for one specific, exited child of ours.
        unsafe { libc::waitpid(p.pid as i32, &mut status, libc::WNOHANG) };
    }
}

/// A child's own CPU and its waited-for children's, read once it exited but
/// before it is reaped (a zombie keeps its accounting), then reaped.
pub struct Finished {
    pub output: std::process::Output,
    pub wall: Duration,
    pub own_ms: f64,
    pub children_ms: f64,
}

/// Run `cmd` to completion, splitting its CPU from its children's.
pub fn run(cmd: &mut std::process::Command) -> Finished {
    use std::io::Read;
    use std::process::Stdio;
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    // SAFETY: waits for our own child without reaping it (WNOWAIT).
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
    assert_eq!(r, 0, "waitid");
    let wall = start.elapsed();
    let p = stat(pid).expect("a zombie's stat");
    let status = child.wait().expect("wait");
    Finished {
        output: std::process::Output {
            status,
            stdout: reader.join().unwrap_or_default(),
            stderr: err_reader.join().unwrap_or_default(),
        },
        wall,
        own_ms: p.cpu_ms,
        children_ms: p.children_ms,
    }
}

/// `Pss` and `Rss` of a process, kB (/proc/PID/smaps_rollup).
pub fn memory_kb(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    Some((field("Rss:")?, field("Pss:")?))
}
