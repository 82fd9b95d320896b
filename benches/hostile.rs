//! `cargo bench --bench hostile`: what hostile repositories cost berth. Each
//! repository is built in a temp dir and the release `berth` (the one cargo
//! builds for this bench, `target/release/berth`) runs `validate --untrusted`
//! and `reconcile --dry-run --untrusted --connect-timeout 2` in it, five
//! times each; printed: the median wall time and the peak RSS (`ru_maxrss`
//! from `wait4`, the kernel's figure, which also counts this bench's own
//! memory up to berth's `exec`: an upper bound) of the five, and the exit codes. Hosts
//! are `127.0.0.1` on closed port 1, so an accepted config fails to connect
//! without reaching anything. docs/security.md ("Measured: hostile
//! repositories") holds a run.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 5;

/// As tests/offline/hostile.rs: a valid config whose only host is a closed port.
fn base(extra_root: &str) -> String {
    format!(
        "service: demo\nimage: demo\nservers:\n  web:\n    hosts: [127.0.0.1]\n\
         registry:\n  server: localhost:5000\n  username: u\n  password: [REGISTRY_PASSWORD]\n\
         builder:\n  arch: amd64\nenv:\n  secret: [DB_PASSWORD]\n\
         ssh:\n  port: 1\n  config: false\n\
         x-berth:\n  version: v1\n{extra_root}"
    )
}

const SECRETS: &str = "DB_PASSWORD=bench\nREGISTRY_PASSWORD=bench\n";

struct Repo {
    name: &'static str,
    dir: tempfile::TempDir,
}

impl Repo {
    fn new(name: &'static str, deploy: &str) -> Repo {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("config")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join(".kamal")).expect("mkdir");
        let repo = Repo { name, dir };
        repo.write("config/deploy.yml", deploy);
        repo.write(".kamal/secrets", SECRETS);
        repo
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        let _ = std::fs::remove_file(&p);
        std::fs::write(p, text).expect("write");
    }

    fn symlink(&self, rel: &str, target: &str) {
        let p = self.path(rel);
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(target, p).expect("symlink");
    }

    fn fifo(&self, rel: &str) {
        let p = self.path(rel);
        let _ = std::fs::remove_file(&p);
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    }

    /// The size of deploy.yml, or its kind when it is not a file.
    fn deploy_size(&self) -> String {
        match std::fs::symlink_metadata(self.path("config/deploy.yml")) {
            Ok(m) if m.is_file() => format!("{}", m.len()),
            Ok(_) => "-".into(),
            Err(_) => "?".into(),
        }
    }
}

fn repos() -> Vec<Repo> {
    let mut repos = vec![Repo::new("baseline (valid)", &base(""))];
    let bomb = |levels: usize| {
        let mut y = String::from("x-a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..=levels {
            let refs = vec![format!("*a{}", i - 1); 9].join(", ");
            y.push_str(&format!("x-a{i}: &a{i} [{refs}]\n"));
        }
        base(&y)
    };
    repos.push(Repo::new("alias bomb 9x9", &bomb(9)));
    repos.push(Repo::new("alias bomb 9 wide, 7 levels", &bomb(7)));
    repos.push(Repo::new(
        "secrets_path: /dev/zero",
        &base("secrets_path: /dev/zero\n"),
    ));
    let r = Repo::new(".kamal/secrets -> /dev/zero", &base(""));
    r.symlink(".kamal/secrets", "/dev/zero");
    repos.push(r);
    let r = Repo::new("deploy.yml is a FIFO", "");
    r.fifo("config/deploy.yml");
    repos.push(r);
    // Just under the 1 MiB cap.
    let cap = berth::checkout::MAX_FILE_BYTES as usize;
    let mut comments = base("");
    while comments.len() + 80 < cap {
        comments.push_str(&format!("# {}\n", "c".repeat(76)));
    }
    repos.push(Repo::new("1 MiB deploy.yml of comments", &comments));
    let mut entries = base("x-many:\n");
    let mut i = 0;
    while entries.len() + 20 < cap {
        entries.push_str(&format!("  k{i}: {i}\n"));
        i += 1;
    }
    repos.push(Repo::new("1 MiB deploy.yml of mapping entries", &entries));
    // Under MAX_NODES (two nodes an entry), so the mapping is built.
    let mut entries = base("x-many:\n");
    for i in 0..45_000 {
        entries.push_str(&format!("  k{i}: {i}\n"));
    }
    repos.push(Repo::new(
        "45 000 mapping entries (under the bound)",
        &entries,
    ));
    let r = Repo::new("secrets doubling bomb", &base(""));
    let mut text = String::from("A0=xxxxxxxxxxxxxxxx\n");
    for i in 1..48 {
        text.push_str(&format!("A{i}=${{A{}}}${{A{}}}\n", i - 1, i - 1));
    }
    r.write(".kamal/secrets", &format!("{text}{SECRETS}"));
    repos.push(r);
    let r = Repo::new("secrets: 2000 copies of a 512 KiB value", &base(""));
    let mut text = String::from("A0=xxxxxxxxxxxxxxxx\n");
    for i in 1..16 {
        text.push_str(&format!("A{i}=${{A{}}}${{A{}}}\n", i - 1, i - 1));
    }
    for i in 0..2000 {
        text.push_str(&format!("B{i}=$A15\n"));
    }
    r.write(".kamal/secrets", &format!("{text}{SECRETS}"));
    repos.push(r);
    let mut nest = format!("x-s: &s \"{}\"\nx-n: ", "y".repeat(30_000));
    for i in 0..60 {
        nest.push_str(&format!("&n{i} [*s, *s, "));
    }
    nest.push_str(&format!("z{}\n", "]".repeat(60)));
    repos.push(Repo::new("60 nested anchors over aliases", &base(&nest)));
    // The root mapping is a level: 63 brackets make 64, the most accepted.
    let deep = |n: usize| base(&format!("x-deep: {}{}\n", "[".repeat(n), "]".repeat(n)));
    repos.push(Repo::new("nesting 64 levels (the bound)", &deep(63)));
    repos.push(Repo::new("nesting 100 levels", &deep(100)));
    repos
}

struct Run {
    elapsed: Duration,
    max_rss_kb: i64,
    code: i32,
}

/// Run berth in `dir` to its end; `wait4` gives the status and peak RSS.
fn berth(dir: &Path, args: &[&str]) -> Run {
    let started = Instant::now();
    // Reaped by `wait4` below, which also gives the peak RSS.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn berth");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    let elapsed = started.elapsed();
    // Anything berth left in its group (ssh), as tests/offline/hostile.rs does.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    drop(child);
    Run {
        elapsed,
        max_rss_kb: usage.ru_maxrss,
        code: if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        },
    }
}

/// Median wall time, peak RSS and the exit code (if all runs agree) of RUNS.
fn measure(dir: &Path, args: &[&str]) -> (Duration, i64, String) {
    let runs: Vec<Run> = (0..RUNS).map(|_| berth(dir, args)).collect();
    let mut times: Vec<Duration> = runs.iter().map(|r| r.elapsed).collect();
    times.sort();
    let rss = runs.iter().map(|r| r.max_rss_kb).max().unwrap_or(0);
    let code = if runs.iter().all(|r| r.code == runs[0].code) {
        runs[0].code.to_string()
    } else {
        "mixed".into()
    };
    (times[RUNS / 2], rss, code)
}

fn main() {
    let validate = ["validate", "--untrusted"];
    let reconcile = [
        "reconcile",
        "--dry-run",
        "--untrusted",
        "--connect-timeout",
        "2",
    ];
    let rows: Vec<[String; 6]> = repos()
        .iter()
        .map(|repo| {
            let (vt, vr, vc) = measure(repo.dir.path(), &validate);
            let (rt, rr, rc) = measure(repo.dir.path(), &reconcile);
            let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
            let mib = |kb: i64| format!("{:.1}", kb as f64 / 1024.0);
            [
                repo.name.to_string(),
                repo.deploy_size(),
                format!("{} / {}", ms(vt), mib(vr)),
                format!("{} / {}", ms(rt), mib(rr)),
                vc,
                rc,
            ]
        })
        .collect();
    let head = [
        "repository",
        "deploy.yml bytes",
        "validate ms / MiB",
        "reconcile ms / MiB",
        "validate exit",
        "reconcile exit",
    ];
    let width: Vec<usize> = (0..head.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([head[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[&str]| {
        let mut out = String::from("|");
        for (c, cell) in cells.iter().enumerate() {
            let pad = width[c] - cell.chars().count();
            if c == 0 {
                out.push_str(&format!(" {cell}{} |", " ".repeat(pad)));
            } else {
                out.push_str(&format!(" {}{cell} |", " ".repeat(pad)));
            }
        }
        out
    };
    println!(
        "berth {}: median of {RUNS} runs, peak RSS the highest of them",
        env!("CARGO_BIN_EXE_berth")
    );
    println!("{}", line(&head));
    let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
    println!(
        "{}",
        line(&rule.iter().map(String::as_str).collect::<Vec<_>>())
    );
    for r in &rows {
        println!(
            "{}",
            line(&r.iter().map(String::as_str).collect::<Vec<_>>())
        );
    }
}
