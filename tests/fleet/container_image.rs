//! berth's container image (`Dockerfile`), built by `scripts/build-image.sh`
//! the way a human builds it, then run as Kubernetes would run it — read-only
//! root filesystem, uid 10001, tmpfs for /tmp and /var/lib/berth, the fleet's
//! SSH key mounted root-owned 0440 with group 10001 (fsGroup) — against a real
//! testbed fleet: a one-shot `berth reconcile`, then the `berth run`
//! controller following a Git repository, scraped and stopped with SIGTERM.
//!
//! No image can be pulled here, so the build uses `--local-base`
//! (debian:bookworm-slim made with debootstrap) and a private dockerd in the
//! machine's own network namespace (`--network host` builds reach
//! deb.debian.org; the containers reach the testbed's bridge). Its state
//! lives in [`STATE`]; when the test ends the daemon is stopped and everything
//! there is removed except `docker/`, its data root, kept as a cache: the
//! imported base image and the last test image (so the next run skips
//! debootstrap and reuses the apt-get layer). `rm -rf /var/tmp/berth-image`
//! (daemon stopped) clears it.

use crate::support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_testbed as testbed;
use support::{Fleet, KAMAL_COMMON, free_port, git, metric, request};

/// The private build daemon's directory (kept across runs: see the module doc).
const STATE: &str = "/var/tmp/berth-image";
/// The image this test builds.
const TAG: &str = "berth:container-image-test";
/// The image contract's uid/gid.
const UID: u32 = 10001;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// The pid in `file` if that process is alive and its name starts with `comm`.
fn pid_of(file: &Path, comm: &str) -> Option<u32> {
    let pid: u32 = fs::read_to_string(file).ok()?.trim().parse().ok()?;
    let name = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (alive(pid) && name.trim().starts_with(comm)).then_some(pid)
}

/// Unmount whatever is mounted under `dir` (dockerd leaves its exec root's
/// `netns/default`, a bind mount of the machine's network namespace).
fn unmount_under(dir: &Path) {
    let prefix = format!("{}/", dir.display());
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    // Deepest first.
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount")
            .args(["--lazy", p])
            .stderr(Stdio::null())
            .status();
    }
}

fn kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// A dockerd of the test's own in the root network namespace, with no bridge
/// and no iptables rules (it must not disturb the machine or the testbeds).
struct BuildDaemon {
    child: Option<Child>,
    dir: PathBuf,
    /// Held while the daemon runs: a second run of this test waits for it.
    _lock: fs::File,
}

impl BuildDaemon {
    fn start() -> BuildDaemon {
        let dir = PathBuf::from(STATE);
        fs::create_dir_all(dir.join("docker")).unwrap();
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .unwrap();
        lock.lock().unwrap();
        // A daemon left by a run that was killed (we hold the lock, so it is
        // nobody's now): stop it, then its containerd, before starting ours.
        Self::stop_pid(&dir.join("docker.pid"), "dockerd");
        Self::stop_pid(&dir.join("exec/containerd/containerd.pid"), "containerd");
        unmount_under(&dir.join("exec"));
        for stale in ["exec", "docker.sock", "docker.pid"] {
            let p = dir.join(stale);
            let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
        }
        fs::create_dir_all(dir.join("exec")).unwrap();
        let log = fs::File::create(dir.join("dockerd.log")).unwrap();
        let d = dir.display();
        let child = Command::new("dockerd")
            .arg(format!("--data-root={d}/docker"))
            .arg(format!("--exec-root={d}/exec"))
            .arg(format!("--pidfile={d}/docker.pid"))
            .arg(format!("--host=unix://{d}/docker.sock"))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--shutdown-timeout=10",
                "--log-level=warn",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let mut daemon = BuildDaemon {
            child: Some(child),
            dir,
            _lock: lock,
        };
        let ready = testbed::poll(
            Instant::now() + Duration::from_secs(60),
            "build dockerd answers",
            || daemon.ping() || daemon.exited(),
        );
        assert!(
            ready.is_ok() && !daemon.exited(),
            "the build dockerd did not come up:\n{}",
            fs::read_to_string(daemon.dir.join("dockerd.log")).unwrap_or_default()
        );
        daemon
    }

    fn stop_pid(file: &Path, comm: &str) {
        if let Some(pid) = pid_of(file, comm) {
            kill(pid, "TERM");
            let gone = testbed::poll(
                Instant::now() + Duration::from_secs(30),
                &format!("stale {comm} exits"),
                || !alive(pid),
            );
            if gone.is_err() {
                kill(pid, "KILL");
            }
        }
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn ping(&self) -> bool {
        testbed::docker_ping(&self.socket())
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    /// `docker args`, panicking with its output unless it succeeds; stdout.
    fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {} failed:\n{}",
            args.join(" "),
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Remove every container (and its anonymous volumes), stop dockerd and
    /// remove its state except the data root; what was left behind (empty
    /// when clean).
    fn stop(mut self) -> Vec<String> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Vec<String> {
        let Some(mut child) = self.child.take() else {
            return Vec::new();
        };
        let mut left = Vec::new();
        if self.ping() {
            let ids = self.docker(&["ps", "-aq"]);
            let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                left.push(format!("containers {ids:?}"));
                self.docker(&[&["rm", "-f", "-v"][..], &ids].concat());
            }
            self.docker(&["volume", "prune", "-f"]);
        }
        kill(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() >= deadline {
                left.push("dockerd did not stop on SIGTERM within 30s".into());
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Its managed containerd exits with it; a killed dockerd may leave it.
        let containerd = self.dir.join("exec/containerd/containerd.pid");
        if let Some(pid) = pid_of(&containerd, "containerd") {
            left.push(format!("containerd {pid} outlived dockerd"));
            Self::stop_pid(&containerd, "containerd");
        }
        unmount_under(&self.dir.join("exec"));
        for p in ["exec", "docker.sock", "docker.pid", "dockerd.log"] {
            let p = self.dir.join(p);
            if fs::remove_dir_all(&p)
                .or_else(|_| fs::remove_file(&p))
                .is_err()
                && p.exists()
            {
                left.push(format!("{} not removed", p.display()));
            }
        }
        left
    }
}

impl Drop for BuildDaemon {
    fn drop(&mut self) {
        let left = self.shutdown();
        if !left.is_empty() {
            eprintln!("build dockerd shutdown: {left:?}");
        }
    }
}

/// `chown -R uid:uid`, without following symlinks.
fn chown_tree(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
    if fs::symlink_metadata(path).unwrap().is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid);
        }
    }
}

/// The Kamal project for the fleet, as a container sees it: no `ssh.keys`
/// (the host path of the testbed's key means nothing there), so ssh uses its
/// default identity, /home/berth/.ssh/id_ed25519, as the image contract says.
fn deploy_yml(fleet: &Fleet, version: &str) -> String {
    let common = KAMAL_COMMON.replace("  keys: [{key}]\n", "");
    assert_ne!(common, KAMAL_COMMON, "KAMAL_COMMON no longer sets ssh.keys");
    format!(
        "service: demo\nimage: demo\nservers:\n  web:\n    hosts: [{hosts}]\n    proxy: false\n\
         readiness_delay: 0\nx-berth:\n  version: {version}\n{common}",
        hosts = fleet.addrs().join(", "),
        common = common.replace("{registry}", &fleet.tb.registry()),
    )
}

/// Commit the project at `version` in `work` and push it to the testbed's
/// bare repository; the commit id.
fn push_version(work: &Path, fleet: &Fleet, version: &str) -> String {
    support::push_project(
        work,
        &deploy_yml(fleet, version),
        &format!("deploy {version}"),
    )
}

/// App containers of `demo` running on host `i`.
fn running(fleet: &Fleet, i: usize) -> Vec<String> {
    fleet
        .host(i)
        .docker_ok(&[
            "ps",
            "--filter",
            "label=service=demo",
            "--filter",
            "label=role=web",
            "--filter",
            "status=running",
            "--format",
            "{{.Names}}",
        ])
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_image_builds_and_its_berth_reconciles_a_fleet_read_only_as_uid_10001() {
    if !support::needs_root("the container image test") {
        return;
    }
    let daemon = BuildDaemon::start();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));

    // 1. Build: the base made locally when missing, the test's binary staged
    //    with the Dockerfile in a temporary context.
    let started = Instant::now();
    let out = Command::new(repo.join("scripts/build-image.sh"))
        .args([
            "--local-base",
            "--network",
            "host",
            "--tag",
            TAG,
            "--binary",
        ])
        .arg(env!("CARGO_BIN_EXE_berth"))
        .env("DOCKER_HOST", daemon.host())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-image.sh failed:\n{}",
        text(&out)
    );
    eprintln!("image built in {:.0?}", started.elapsed());
    // The previous run's image, now untagged.
    daemon.docker_ok(&["image", "prune", "-f"]);

    // 2. The image's contract.
    let config: serde_json::Value = serde_json::from_str(&daemon.docker_ok(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config}}",
        TAG,
    ]))
    .unwrap();
    assert_eq!(config["User"], "10001:10001");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["tini", "--", "berth"])
    );
    assert_eq!(
        config["Cmd"],
        serde_json::json!([
            "run",
            "--listen",
            "0.0.0.0:9090",
            "--checkout",
            "/var/lib/berth/checkout"
        ])
    );
    assert!(config["ExposedPorts"].get("9090/tcp").is_some(), "{config}");
    assert!(
        config["Volumes"].get("/var/lib/berth").is_some(),
        "{config}"
    );
    assert!(
        config["Env"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("HOME=/home/berth")),
        "{config}"
    );
    assert_eq!(
        config["Labels"]["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(config["Labels"]["org.opencontainers.image.title"], "berth");

    let id = daemon.docker_ok(&["run", "--rm", "--read-only", "--entrypoint", "id", TAG]);
    assert_eq!(
        id.trim(),
        "uid=10001(berth) gid=10001(berth) groups=10001(berth)"
    );
    let paths = daemon.docker_ok(&[
        "run",
        "--rm",
        "--read-only",
        "--entrypoint",
        "stat",
        TAG,
        "-c",
        "%n %u:%g %a",
        "/home/berth",
        "/home/berth/.ssh",
        "/var/lib/berth",
        "/usr/local/bin/berth",
    ]);
    assert_eq!(
        paths.lines().collect::<Vec<_>>(),
        [
            "/home/berth 10001:10001 755",
            "/home/berth/.ssh 10001:10001 700",
            "/var/lib/berth 10001:10001 1777",
            "/usr/local/bin/berth 0:0 755",
        ]
    );
    let ssh = daemon.docker(&[
        "run",
        "--rm",
        "--read-only",
        "--entrypoint",
        "ssh",
        TAG,
        "-V",
    ]);
    assert!(
        ssh.status.success() && text(&ssh).starts_with("OpenSSH_"),
        "{}",
        text(&ssh)
    );
    let git_v = daemon.docker_ok(&[
        "run",
        "--rm",
        "--read-only",
        "--entrypoint",
        "git",
        TAG,
        "--version",
    ]);
    assert!(git_v.starts_with("git version 2."), "{git_v}");
    let version = daemon.docker_ok(&["run", "--rm", "--read-only", TAG, "--version"]);
    assert_eq!(
        version.trim(),
        format!("berth {}", env!("CARGO_PKG_VERSION"))
    );
    let help = daemon.docker_ok(&["run", "--rm", "--read-only", TAG, "validate", "--help"]);
    assert!(help.contains("--config-file"), "{help}");

    // 3. A fleet, and the Kamal project in its bare Git repository.
    let Some(fleet) = Fleet::up(2) else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    // Bind-mount sources: the container's uid must be able to enter them.
    fs::set_permissions(s, fs::Permissions::from_mode(0o755)).unwrap();
    git(s, &["clone", "-q", &fleet.tb.git_file_url(), "work"]);
    let work = s.join("work");
    push_version(&work, &fleet, "v1");
    // The SSH key as Kubernetes mounts a Secret with fsGroup 10001.
    let key = s.join("id_ed25519");
    fs::copy(fleet.tb.ssh_key(), &key).unwrap();
    std::os::unix::fs::chown(&key, Some(0), Some(UID)).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o440)).unwrap();

    let key_mount = format!("{}:/home/berth/.ssh/id_ed25519:ro", key.display());
    let kh_mount = format!(
        "{}:/etc/berth/ssh/known_hosts:ro",
        fleet.tb.known_hosts().display()
    );
    let run_base = |extra: &[&str]| -> Vec<String> {
        [
            "run",
            "--network",
            "host",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--tmpfs",
            "/var/lib/berth",
            "--user",
            "10001",
            "-v",
            &key_mount,
            "-v",
            &kh_mount,
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    };

    // 4. One-shot reconcile of the project directory (mounted read-only).
    let project_mount = format!("{}:/project:ro", work.display());
    let mut args = run_base(&["--rm", "-v", &project_mount, "-w", "/project", TAG]);
    args.extend(["reconcile", "--known-hosts", "/etc/berth/ssh/known_hosts"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = daemon.docker(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "berth reconcile in the image:\n{}",
        text(&out)
    );
    for i in 0..2 {
        assert_eq!(running(&fleet, i), ["demo-web-v1"], "host {i}");
    }

    // 5. The controller, following a bare repository mounted read-only; a
    //    new version pushed before it starts is deployed by its first cycle.
    //    The repository belongs to the container's uid, as one a git-sync
    //    sidecar or a prepared volume holds: libgit2, like git's
    //    safe.directory, refuses to open a repository another uid owns
    //    ("repository path '/repo' is not owned by current user").
    let revision = push_version(&work, &fleet, "v2");
    let bare = s.join("repo.git");
    git(
        s,
        &[
            "clone",
            "-q",
            "--bare",
            &fleet.tb.git_file_url(),
            "repo.git",
        ],
    );
    chown_tree(&bare, UID);
    let port = free_port();
    let name = format!("berth-image-test-{}", std::process::id());
    let repo_mount = format!("{}:/repo:ro", bare.display());
    let listen = format!("127.0.0.1:{port}");
    let mut args = run_base(&["-d", "--name", &name, "-v", &repo_mount, TAG]);
    args.extend(
        [
            "run",
            "--repo",
            "file:///repo",
            "--app",
            "demo",
            "--interval",
            "10m",
            "--listen",
            &listen,
            "--checkout",
            "/var/lib/berth/checkout",
            "--known-hosts",
            "/etc/berth/ssh/known_hosts",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    daemon.docker_ok(&args);
    let logs = || text(&daemon.docker(&["logs", &name]));

    let ready = testbed::poll(Instant::now() + Duration::from_secs(60), "ready", || {
        request(port, "GET", "/readyz", &[], "").0 == 200
    });
    assert!(ready.is_ok(), "berth run never became ready:\n{}", logs());
    let synced_labels = "berth_app_in_sync{app=\"demo\",destination=\"\"}";
    let converged = testbed::poll(
        Instant::now() + Duration::from_secs(60),
        "v2 in sync",
        || {
            metric(&request(port, "GET", "/metrics", &[], "").1, synced_labels) == Some(1.0)
                && (0..2).all(|i| running(&fleet, i) == ["demo-web-v2"])
        },
    );
    let metrics = request(port, "GET", "/metrics", &[], "").1;
    assert!(
        converged.is_ok(),
        "berth run did not converge to v2:\n{metrics}\n{}",
        logs()
    );
    assert_eq!(
        metric(
            &metrics,
            &format!("berth_source_info{{app=\"demo\",destination=\"\",revision=\"{revision}\"}}")
        ),
        Some(1.0),
        "{metrics}"
    );
    for a in fleet.addrs() {
        assert_eq!(
            metric(
                &metrics,
                &format!("berth_host_up{{app=\"demo\",destination=\"\",host=\"{a}\"}}")
            ),
            Some(1.0),
            "{metrics}"
        );
    }
    // tini is PID 1 (it reaps the SSH masters berth daemonizes).
    let init = daemon.docker_ok(&["exec", &name, "cat", "/proc/1/comm"]);
    assert_eq!(init.trim(), "tini");

    // 6. SIGTERM through tini: berth stops at once, cleanly, lock released.
    let started = Instant::now();
    daemon.docker_ok(&["stop", "--time", "30", &name]);
    let took = started.elapsed();
    let code = daemon.docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", &name]);
    assert_eq!(code.trim(), "0", "exit code after docker stop:\n{}", logs());
    assert!(took < Duration::from_secs(10), "docker stop took {took:?}");
    assert!(!fleet.host(0).home().join(".kamal/lock-demo").exists());
    daemon.docker_ok(&["rm", "-v", &name]);

    assert_eq!(fleet.teardown(), Vec::<String>::new());
    assert_eq!(daemon.stop(), Vec::<String>::new());
}
