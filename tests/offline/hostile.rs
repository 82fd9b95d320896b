//! The hostile-repository suite: generated repositories that try to run code
//! on berth's machine, exhaust its memory, hang it, read outside the checkout
//! or leak a secret through an error message. Every case runs the real
//! `berth` binary (`validate`, then `reconcile --dry-run --untrusted`, as a
//! CI job on pull requests does) and asserts:
//! - nothing was executed (marker files the payloads would create);
//! - the verdict: refused with a located error (`file:line:col: key`), or a
//!   documented acceptance (the value is only ever a quoted argv word);
//! - no secret value and no content of a refused file in the output, and no
//!   raw control character;
//! - peak RSS under [`MAX_RSS_KB`] and a bounded time ([`MAX_CASE`]).
//!
//! Needs no root and no fleet: hosts are `127.0.0.1` on a closed port, so an
//! accepted config fails to connect (exit 1) without reaching anything.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The documented bound (docs/security.md): any repository of at most 1 MB.
const MAX_RSS_KB: i64 = 64 * 1024;
/// A case that takes longer is hung, not slow: a valid config takes ~20 ms.
const MAX_CASE: Duration = Duration::from_secs(20);

/// The value the secrets files hold: must never be printed.
const SECRET: &str = "sk-live-4f9a2c77e1";

struct Outcome {
    code: Option<i32>,
    out: String,
    max_rss_kb: i64,
    elapsed: Duration,
}

/// Run berth in `dir`, with a wall-clock bound, and read its peak RSS.
///
/// The peak is the kernel's own figure (`ru_maxrss`), taken by GNU time
/// around berth: a child's `ru_maxrss` counts the memory of the process it
/// was spawned from until its `exec`, so measured from this test binary
/// (hundreds of MiB while other tests run) it would say nothing of berth.
fn berth(dir: &Path, args: &[&str], marker_dir: &Path) -> Outcome {
    let started = Instant::now();
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let rss_file = marker_dir.with_file_name(format!("rss-{run}"));
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-f", "%M", "-o"])
        .arg(&rss_file)
        .arg(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .current_dir(dir)
        .env("BERTH_MARKER_DIR", marker_dir)
        .env("HOME", marker_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // Reaped by `wait4` below.
    #[allow(clippy::zombie_processes)]
    let mut child = cmd.spawn().expect("spawn berth");
    let pid = child.id() as libc::pid_t;
    let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let readers = [
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = std::io::Read::read_to_end(&mut so, &mut s);
            s
        }),
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = std::io::Read::read_to_end(&mut se, &mut s);
            s
        }),
    ];
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        assert!(r == 0, "wait4 failed");
        if started.elapsed() > MAX_CASE {
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
            panic!("berth {args:?} in {} hung past {MAX_CASE:?}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // ssh processes berth left in its group (there should be none).
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let [o, e] = readers.map(|t| String::from_utf8_lossy(&t.join().unwrap()).into_owned());
    Outcome {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        out: format!("{o}{e}"),
        max_rss_kb: std::fs::read_to_string(&rss_file)
            .ok()
            .and_then(|t| t.lines().last()?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no peak RSS from /usr/bin/time for {args:?}")),
        elapsed: started.elapsed(),
    }
}

/// A repository under test.
struct Repo {
    root: tempfile::TempDir,
    markers: PathBuf,
}

impl Repo {
    fn new(deploy_yml: &str) -> Repo {
        let root = tempfile::tempdir().unwrap();
        let markers = root.path().join("markers");
        std::fs::create_dir_all(&markers).unwrap();
        let project = root.path().join("project");
        std::fs::create_dir_all(project.join("config")).unwrap();
        std::fs::create_dir_all(project.join(".kamal/hooks")).unwrap();
        let m = markers.display();
        std::fs::write(
            project.join(".kamal/secrets"),
            format!("DB_PASSWORD={SECRET}\nREGISTRY_PASSWORD={SECRET}\n"),
        )
        .unwrap();
        // A hook that would betray that hooks ran.
        for hook in ["pre-connect", "pre-deploy", "docker-setup"] {
            let p = project.join(".kamal/hooks").join(hook);
            std::fs::write(&p, format!("#!/bin/sh\ntouch {m}/hook-{hook}\n")).unwrap();
            std::os::unix::fs::PermissionsExt::set_mode(
                &mut std::fs::metadata(&p).unwrap().permissions(),
                0o755,
            );
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        let repo = Repo { root, markers };
        repo.write("config/deploy.yml", deploy_yml);
        repo
    }

    fn project(&self) -> PathBuf {
        self.root.path().join("project")
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.project().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&p);
        std::fs::write(p, text.replace("{M}", &self.markers.display().to_string())).unwrap();
    }

    fn symlink(&self, rel: &str, target: &str) {
        let p = self.project().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(target, p).unwrap();
    }

    fn fifo(&self, rel: &str) {
        let p = self.project().join(rel);
        let _ = std::fs::remove_file(&p);
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    fn markers(&self) -> Vec<String> {
        std::fs::read_dir(&self.markers)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

/// What a case must end in.
#[derive(Clone, Copy, Debug)]
enum Verdict {
    /// `validate` exits 1 with this text (after `file:line:col: `, when the
    /// error has a position), and reconcile refuses before connecting.
    Refused(&'static str),
    /// `validate` accepts it; reconcile fails only on the closed port.
    Accepted,
    /// Either, as long as nothing runs (generated payloads in free-text
    /// fields whose verdict depends on the field).
    Either,
}

const PORT_CLOSED: u16 = 1; // tcpmux: nothing listens on 127.0.0.1:1 here

fn base(extra_root: &str, role: &str) -> String {
    format!(
        "service: demo\nimage: demo\nservers:\n  web:\n    hosts: [127.0.0.1]\n{role}\
         registry:\n  server: localhost:5000\n  username: u\n  password: [REGISTRY_PASSWORD]\n\
         builder:\n  arch: amd64\nenv:\n  secret: [DB_PASSWORD]\n\
         ssh:\n  port: {PORT_CLOSED}\n  config: false\n\
         x-berth:\n  version: v1\n{extra_root}"
    )
}

/// The base config with one more `ssh:` line.
fn with_ssh(line: &str) -> String {
    base("", "").replace("  config: false\n", &format!("  config: false\n  {line}\n"))
}

struct Case {
    name: String,
    repo: Repo,
    verdict: Verdict,
    /// Arguments every command of the case gets (`-d staging`).
    args: Vec<&'static str>,
}

fn case(name: impl Into<String>, repo: Repo, verdict: Verdict) -> Case {
    Case {
        name: name.into(),
        repo,
        verdict,
        args: Vec::new(),
    }
}

/// Payloads that would do something if any parser on the way were a shell,
/// an ssh_config reader, a terminal or a path resolver.
fn payloads() -> Vec<(&'static str, String)> {
    vec![
        ("subst", "x$(touch${IFS}{M}/subst)".into()),
        ("backtick", "x`touch {M}/backtick`".into()),
        ("semicolon", "x;touch {M}/semicolon".into()),
        ("and", "x && touch {M}/and".into()),
        ("pipe", "x|touch {M}/pipe".into()),
        ("newline", "x\\ntouch {M}/newline".into()),
        ("quote-opt", "x' -oProxyCommand='touch {M}/quoteopt".into()),
        (
            "dquote-opt",
            "x\\\" -oProxyCommand=\\\"touch {M}/dquoteopt".into(),
        ),
        ("ssh-opt", "-oProxyCommand=touch {M}/sshopt".into()),
        ("escape", "x\\e]0;pwned\\a\\e[2J".into()),
        ("traversal", "../../../../etc/passwd".into()),
        ("long", "a".repeat(200_000)),
    ]
}

/// Where a payload can go, and what berth must do with it there: the
/// grammar fields refuse anything but their grammar.
/// A field: its name, its verdict, and the config with a payload in it.
type Field = (&'static str, Verdict, fn(&str) -> String);

fn fields() -> Vec<Field> {
    fn q(p: &str) -> String {
        format!("\"{p}\"")
    }
    vec![
        (
            "ssh.proxy",
            Verdict::Refused("ssh.proxy: should be a jump host"),
            |p| with_ssh(&format!("proxy: {}", q(p))),
        ),
        (
            "ssh.user",
            Verdict::Refused("ssh.user: should be a login name"),
            |p| with_ssh(&format!("user: {}", q(p))),
        ),
        ("ssh.keys", Verdict::Either, |p| {
            with_ssh(&format!("keys: [{}]", q(p)))
        }),
        ("host", Verdict::Refused("invalid host name"), |p| {
            base("", "").replace("hosts: [127.0.0.1]", &format!("hosts: [{}]", q(p)))
        }),
        (
            "accessory name",
            Verdict::Refused("accessory names can only include"),
            |p| {
                base(
                    &format!(
                        "accessories:\n  {}:\n    image: kv:1\n    host: 127.0.0.1\n",
                        q(p)
                    ),
                    "",
                )
            },
        ),
        (
            "accessory service",
            Verdict::Refused("is the accessory's container name"),
            |p| {
                base(
                    &format!(
                        "accessories:\n  kv:\n    image: kv:1\n    service: {}\n    host: 127.0.0.1\n",
                        q(p)
                    ),
                    "",
                )
            },
        ),
        ("role cmd", Verdict::Either, |p| {
            base("", &format!("    cmd: {}\n", q(p)))
        }),
        ("accessory cmd", Verdict::Either, |p| {
            base(
                &format!(
                    "accessories:\n  kv:\n    image: kv:1\n    host: 127.0.0.1\n    cmd: {}\n",
                    q(p)
                ),
                "",
            )
        }),
        ("env clear", Verdict::Accepted, |p| {
            base("", "").replace(
                "env:\n  secret: [DB_PASSWORD]\n",
                &format!("env:\n  clear:\n    A: {}\n  secret: [DB_PASSWORD]\n", q(p)),
            )
        }),
        ("label", Verdict::Accepted, |p| {
            base(&format!("labels:\n  team: {}\n", q(p)), "")
        }),
        ("volume", Verdict::Either, |p| {
            base(&format!("volumes: [{}]\n", q(p)), "")
        }),
        ("option", Verdict::Either, |p| {
            base("", &format!("    options:\n      memory: {}\n", q(p)))
        }),
        ("proxy host", Verdict::Either, |p| {
            base(&format!("proxy:\n  host: {}\n", q(p)), "")
        }),
        ("accessory file", Verdict::Either, |p| {
            base(
                &format!(
                    "accessories:\n  kv:\n    image: kv:1\n    host: 127.0.0.1\n    files: [{}]\n",
                    q(&format!("{p}:/etc/x"))
                ),
                "",
            )
        }),
        ("secrets_path", Verdict::Either, |p| {
            base(&format!("secrets_path: {}\n", q(p)), "")
        }),
    ]
}

fn generated() -> Vec<Case> {
    let mut cases = Vec::new();
    for (field, verdict, make) in fields() {
        for (pname, payload) in payloads() {
            // A 200 KB mapping key is not even YAML (keys stop at 1024).
            let verdict = match (field, pname) {
                ("accessory name", "long") => Verdict::Refused("invalid YAML"),
                _ => verdict,
            };
            cases.push(case(
                format!("{field} ← {pname}"),
                Repo::new(&make(&payload)),
                verdict,
            ));
        }
    }
    cases
}

/// The findings of the attack review, each a case of its own.
fn findings() -> Vec<Case> {
    let mut cases = Vec::new();
    // 1. Code execution through ssh.proxy (and the jump-host loop).
    cases.push(case(
        "ssh.proxy $(touch)",
        Repo::new(&with_ssh(
            "proxy: \"root@10.210.20.12$(touch${IFS}{M}/PWNED)\"",
        )),
        Verdict::Refused("ssh.proxy: should be a jump host"),
    ));
    // 2. The alias bomb, 9 levels × 9 wide, in an `x-` key.
    let mut bomb = String::from("x-a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..=9 {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        bomb.push_str(&format!("x-a{i}: &a{i} [{refs}]\n"));
    }
    cases.push(case(
        "alias bomb",
        Repo::new(&base(&bomb, "")),
        Verdict::Refused("expands to more than 100000 nodes"),
    ));
    let deep = |n: usize| format!("x-deep: {}{}\n", "[".repeat(n), "]".repeat(n));
    cases.push(case(
        "nesting 100 deep",
        Repo::new(&base(&deep(100), "")),
        Verdict::Refused("nested deeper than 64 levels"),
    ));
    cases.push(case(
        "nesting 10000 deep",
        Repo::new(&base(&deep(10_000), "")),
        Verdict::Refused("invalid YAML: recursion limit exceeded"),
    ));
    // 3. Unbounded reads: devices, FIFOs, large files, symlinks to them.
    cases.push(case(
        "secrets_path /dev/zero",
        Repo::new(&base("secrets_path: /dev/zero\n", "")),
        Verdict::Refused("resolves outside the repository"),
    ));
    for (rel, what) in [
        ("config/deploy.yml", "deploy.yml"),
        (".kamal/secrets", "secrets"),
        ("config/init.sql", "accessory file"),
    ] {
        let r = Repo::new(&base(
            "accessories:\n  db:\n    image: kv:1\n    host: 127.0.0.1\n    files: [config/init.sql:/docker-entrypoint-initdb.d/init.sql]\n",
            "",
        ));
        r.write("config/init.sql", "select 1;\n");
        r.symlink(rel, "/dev/zero");
        cases.push(case(
            format!("{what} → /dev/zero"),
            r,
            Verdict::Refused("resolves outside the repository"),
        ));
    }
    {
        let r = Repo::new(&base("", ""));
        r.write("zero", "");
        r.symlink("config/deploy.yml", "../zero");
        let inner = r.project().join("zero");
        std::fs::remove_file(&inner).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &inner).unwrap();
        cases.push(case(
            "deploy.yml → inside link → /dev/zero",
            r,
            Verdict::Refused("resolves outside the repository"),
        ));
    }
    {
        let r = Repo::new(&base("", ""));
        r.write("config/deploy.staging.yml", "");
        r.symlink("config/deploy.staging.yml", "/dev/zero");
        let mut c = case(
            "destination file → /dev/zero",
            r,
            Verdict::Refused("resolves outside"),
        );
        c.args = vec!["-d", "staging"];
        cases.push(c);
    }
    {
        let r = Repo::new(&base("", ""));
        r.fifo("config/deploy.yml");
        cases.push(case(
            "deploy.yml is a FIFO",
            r,
            Verdict::Refused("not a regular file (a FIFO)"),
        ));
    }
    {
        let r = Repo::new(&base("", ""));
        r.fifo(".kamal/secrets");
        cases.push(case(
            "secrets is a FIFO",
            r,
            Verdict::Refused("not a regular file (a FIFO)"),
        ));
    }
    {
        let big = format!("{}# {}\n", base("", ""), "x".repeat(2 << 20));
        cases.push(case(
            "deploy.yml of 2 MiB",
            Repo::new(&big),
            Verdict::Refused("larger than 1048576 bytes"),
        ));
    }
    {
        let r = Repo::new(&base("", ""));
        let mut text = String::from("A0=xxxxxxxxxxxxxxxx\n");
        for i in 1..48 {
            text.push_str(&format!("A{i}=${{A{}}}${{A{}}}\n", i - 1, i - 1));
        }
        text.push_str(&format!(
            "DB_PASSWORD={SECRET}\nREGISTRY_PASSWORD={SECRET}\n"
        ));
        r.write(".kamal/secrets", &text);
        cases.push(case(
            "secrets doubling bomb",
            r,
            Verdict::Refused("expands to more than"),
        ));
    }
    {
        // Each value under the bound, but every copy of it another MiB.
        let r = Repo::new(&base("", ""));
        let mut text = String::from("A0=xxxxxxxxxxxxxxxx\n");
        for i in 1..16 {
            text.push_str(&format!("A{i}=${{A{}}}${{A{}}}\n", i - 1, i - 1));
        }
        for i in 0..2000 {
            text.push_str(&format!("B{i}=$A15\n"));
        }
        text.push_str(&format!(
            "DB_PASSWORD={SECRET}\nREGISTRY_PASSWORD={SECRET}\n"
        ));
        r.write(".kamal/secrets", &text);
        cases.push(case(
            "secrets copies of a large value",
            r,
            Verdict::Refused("expands to more than"),
        ));
    }
    {
        // Nested anchored collections each keep a copy of all below them.
        let mut nest = format!("x-s: &s \"{}\"\nx-n: ", "y".repeat(30_000));
        for i in 0..60 {
            nest.push_str(&format!("&n{i} [*s, *s, "));
        }
        nest.push_str(&format!("z{}\n", "]".repeat(60)));
        cases.push(case(
            "nested anchors over aliases",
            Repo::new(&base(&nest, "")),
            Verdict::Refused("bytes of values"),
        ));
    }
    {
        // Under MAX_NODES, but each key was searched for linearly: 3.5 s.
        let mut many = String::from("x-many:\n");
        for i in 0..45_000 {
            many.push_str(&format!("  k{i}: {i}\n"));
        }
        cases.push(case(
            "45 000 mapping entries",
            Repo::new(&base(&many, "")),
            Verdict::Accepted,
        ));
    }
    // 4. Secret values in error messages.
    for bad in [
        format!("DB_PASSWORD='{SECRET}' -KEY={SECRET}\n"),
        format!("DB_PASSWORD={SECRET}\n  {SECRET}\n"),
        format!("DB_PASSWORD=\"{SECRET}\" {SECRET}\n"),
        format!("DB_PASSWORD=\"{SECRET}\n"),
    ] {
        let r = Repo::new(&base("", ""));
        r.write(".kamal/secrets", &bad);
        cases.push(case(
            "secrets syntax error",
            r,
            Verdict::Refused(".kamal/secrets:"),
        ));
    }
    // 5. Reads outside the checkout.
    for target in ["/proc/self/environ", "/etc/passwd", "../../outside"] {
        cases.push(case(
            format!("secrets_path {target}"),
            Repo::new(&base(&format!("secrets_path: {target}\n"), "")),
            if target.starts_with("../") {
                Verdict::Refused("secret 'DB_PASSWORD' not found")
            } else {
                Verdict::Refused("resolves outside the repository")
            },
        ));
        let r = Repo::new(&base("", ""));
        r.symlink(".kamal/secrets", target);
        cases.push(case(
            format!("secrets → {target}"),
            r,
            if target.starts_with("../") {
                // Nothing there: nothing read, so no secrets at all.
                Verdict::Refused("secret 'DB_PASSWORD' not found")
            } else {
                Verdict::Refused("resolves outside the repository")
            },
        ));
    }
    // 6. An accessory file outside is refused before any host (see also
    //    the fleet test in reconcile_apply.rs).
    cases.push(case(
        "accessory file outside",
        Repo::new(&base(
            "accessories:\n  db:\n    image: kv:1\n    host: 127.0.0.1\n    files: [/etc/passwd:/etc/x]\n",
            "",
        )),
        Verdict::Refused("accessories.db.files.0: /etc/passwd: resolves outside"),
    ));
    // 8. Unbounded durations.
    for key in ["readiness_delay", "deploy_timeout", "drain_timeout"] {
        cases.push(case(
            format!("{key} huge"),
            Repo::new(&base(&format!("{key}: 9223372036854775807\n"), "")),
            Verdict::Refused("must be at most 3600"),
        ));
    }
    cases.push(case(
        "boot.wait huge",
        Repo::new(&base("boot:\n  wait: 86400000\n", "")),
        Verdict::Refused("boot.wait: must be at most 3600"),
    ));
    cases.push(case(
        "healthcheck interval huge",
        Repo::new(&base(
            "proxy:\n  healthcheck:\n    interval: 99999999\n",
            "",
        )),
        Verdict::Refused("proxy.healthcheck.interval: must be at most 3600"),
    ));
    // 9. A line break in cmd.
    cases.push(case(
        "cmd with a line break",
        Repo::new(&base("", "    cmd: \"bin/jobs\\ntouch {M}/cmdnl\"\n")),
        Verdict::Refused("servers.web.cmd: a line break outside quotes"),
    ));
    // 10. validate says valid, reconcile refuses: missing secrets, commands.
    cases.push(case(
        "missing secret",
        Repo::new(&base("", "").replace("[DB_PASSWORD]", "[DB_PASSWORD, NOT_THERE]")),
        Verdict::Refused("env.secret.1: secret 'NOT_THERE' not found"),
    ));
    {
        let r = Repo::new(&base("", ""));
        r.write(
            ".kamal/secrets",
            &format!("DB_PASSWORD=$(touch {{M}}/secretcmd)\nREGISTRY_PASSWORD={SECRET}\n"),
        );
        cases.push(case(
            "secret command",
            r,
            Verdict::Refused("command substitution $(...) is disabled"),
        ));
    }
    cases.push(case(
        "proxy_command under --untrusted",
        Repo::new(&with_ssh("proxy_command: \"touch {M}/proxycmd\"")),
        Verdict::Refused("ssh.proxy_command: runs a command on berth's machine"),
    ));
    {
        // An included ssh_config could say `ProxyCommand touch …`.
        let r = Repo::new(&with_ssh("config: [ssh/evil]"));
        r.write("ssh/evil", "Host *\n  ProxyCommand touch {M}/sshconfig\n");
        cases.push(case(
            "ssh.config file under --untrusted",
            r,
            Verdict::Refused("ssh.config: an ssh_config file can run commands on berth's machine"),
        ));
    }
    {
        let r = Repo::new("");
        std::fs::write(
            r.project().join("config/deploy.yml"),
            b"service: demo\nimage: \xff\xfe\n",
        )
        .unwrap();
        cases.push(case(
            "invalid UTF-8",
            r,
            Verdict::Refused("deploy.yml:2: not valid UTF-8"),
        ));
    }
    cases
}

/// Control characters berth must never print raw (ESC, BEL, CR).
fn has_raw_control(s: &str) -> bool {
    s.chars().any(|c| c.is_control() && c != '\n' && c != '\t')
}

fn check(c: &Case) -> Result<(), String> {
    let dir = c.repo.project();
    let run = |args: &[&str]| {
        let args: Vec<&str> = args.iter().chain(&c.args).copied().collect();
        berth(&dir, &args, &c.repo.markers)
    };
    // As a CI job on pull requests runs them.
    let validate = run(&["validate", "--untrusted"]);
    let dry = run(&[
        "reconcile",
        "--dry-run",
        "--untrusted",
        "--connect-timeout",
        "2",
    ]);
    let render = run(&["render", "--untrusted"]);
    let fail = |why: String| {
        // Only a regular file, and its head: the case may have made it a
        // FIFO or a link to /dev/zero.
        let file = dir.join("config/deploy.yml");
        let mut deploy = Vec::new();
        if std::fs::symlink_metadata(&file).is_ok_and(|m| m.is_file()) {
            let _ = std::fs::File::open(&file).and_then(|f| {
                std::io::Read::read_to_end(&mut std::io::Read::take(f, 600), &mut deploy)
            });
        }
        let deploy = String::from_utf8_lossy(&deploy);
        Err(format!(
            "{}: {why}\n--- validate:\n{}--- deploy.yml (first 600 bytes):\n{}",
            c.name,
            validate.out,
            deploy.chars().take(600).collect::<String>()
        ))
    };
    for (what, o) in [
        ("validate", &validate),
        ("reconcile", &dry),
        ("render", &render),
    ] {
        if o.max_rss_kb > MAX_RSS_KB {
            return fail(format!("{what} peaked at {} KiB", o.max_rss_kb));
        }
        if o.out.contains(SECRET) {
            return fail(format!("{what} printed a secret value:\n{}", o.out));
        }
        if o.out.contains("root:x:0:0") || o.out.contains("PATH=") {
            return fail(format!("{what} quoted a file outside the repository"));
        }
        if has_raw_control(&o.out) {
            return fail(format!("{what} printed a raw control character"));
        }
        if o.code.is_none() {
            return fail(format!("{what} died of a signal"));
        }
    }
    if !c.repo.markers().is_empty() {
        return fail(format!("executed: {:?}", c.repo.markers()));
    }
    match c.verdict {
        Verdict::Refused(text) => {
            if validate.code != Some(1) || !validate.out.contains(text) {
                return fail(format!("validate should refuse with {text:?}"));
            }
            if dry.code != Some(1) || dry.out.contains("cannot connect") {
                return fail(format!(
                    "reconcile should refuse before connecting:\n{}",
                    dry.out
                ));
            }
            // Located: a config error names file:line (secrets: file:line).
            let located = validate.out.lines().next().is_some_and(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|n| n.parse::<u32>().is_ok())
            });
            let unlocated_ok = text.contains("resolves outside")
                || text.contains("regular file")
                || text.contains("larger than")
                || text.contains("disabled");
            if !located && !unlocated_ok {
                return fail("the error names no line".into());
            }
        }
        Verdict::Accepted => {
            if validate.code != Some(0) {
                return fail("validate should accept".into());
            }
            if dry.code != Some(1) {
                return fail(format!(
                    "reconcile should fail only to connect:\n{}",
                    dry.out
                ));
            }
        }
        Verdict::Either => {
            // Refused by validate ⇒ refused by reconcile before connecting.
            if validate.code == Some(1) && dry.out.contains("cannot connect") {
                return fail(format!("validate refused, reconcile went on:\n{}", dry.out));
            }
        }
    }
    let _ = (validate.elapsed, dry.elapsed);
    Ok(())
}

#[test]
fn hostile_repositories_are_refused_or_harmless() {
    let cases: Vec<Case> = findings().into_iter().chain(generated()).collect();
    assert!(cases.len() > 150, "{} cases", cases.len());
    let failures: Vec<String> = cases.iter().filter_map(|c| check(c).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// `berth run` on a hostile repository: the cycle fails with a clear
/// `last_error`, served by the unauthenticated API, that quotes neither the
/// secret nor the file it refused; nothing runs; the server stays up.
#[test]
fn berth_run_reports_a_hostile_revision_without_leaking_it() {
    let repo = Repo::new(&base("secrets_path: /etc/passwd\n", ""));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["run", "--app", "evil", "--interval", "10m", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--dir")
        .arg(repo.project())
        .env("HOME", &repo.markers)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let get = || -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET /api/v1/apps HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body)
    };
    let deadline = Instant::now() + MAX_CASE;
    let body = loop {
        if let Some(b) = get().filter(|b| b.contains("\"last_error\":\"")) {
            break b;
        }
        assert!(Instant::now() < deadline, "no last_error: {:?}", get());
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(body.contains("resolves outside the repository"), "{body}");
    assert!(
        !body.contains("root:x:0:0") && !body.contains(SECRET),
        "{body}"
    );
    assert!(repo.markers().is_empty());
}
