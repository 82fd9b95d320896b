//! A real local fleet for tests and the demo: N hosts, each a network
//! namespace with its own sshd, dockerd and home directory; an image registry;
//! a bare Git repo served over `file://` and `ssh://`; a client key and a
//! generated `known_hosts` so SSH runs with strict host-key checking.
//!
//! Testbeds live in numbered *slots* so several can run at once (tests run in
//! parallel): slot `S` owns the subnet `10.210.S.0/24`, the bridge `btS`, the
//! namespaces and veths `btShI`, and the directory `/var/tmp/berth-testbed/S`.
//! Everything is found again by those names, so [`down`] cleans up a slot even
//! when the process that made it was killed half-way, and [`up`] starts by
//! doing so. Slot 0 is the command-line testbed (`berth-testbed`); tests take
//! a free slot from 1 up, holding a lock file for as long as they use it.
//!
//! Host processes: `nsenter --net` into the namespace, then `unshare --mount`
//! so that sshd *and* dockerd see the host's own directory mounted on `/root`
//! (Kamal's env files, locks and `$(pwd)` bind mounts all resolve there).
//!
//! A crate of its own, not part of the `berth` library: berth's tests and
//! benches use it as a dev-dependency, so none of it ships in the controller.

pub mod build;
pub mod images;

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth::shell;

/// Where slots keep their files.
pub const ROOT: &str = "/var/tmp/berth-testbed";
/// The highest slot number (the subnet's third octet).
pub const MAX_SLOT: u8 = 250;

#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error("{what}: {detail}")]
    Step { what: String, detail: String },
    #[error("no free testbed slot (all of 1..={MAX_SLOT} are locked)")]
    NoSlot,
}

type Result<T> = std::result::Result<T, TestbedError>;

fn step(what: impl Into<String>, detail: impl ToString) -> TestbedError {
    TestbedError::Step {
        what: what.into(),
        detail: detail.to_string(),
    }
}

/// One test host.
#[derive(Debug, Clone)]
pub struct Host {
    /// `h1`, `h2`, ...
    pub name: String,
    pub addr: Ipv4Addr,
    /// Network namespace and root-side veth name.
    pub netns: String,
    pub dir: PathBuf,
}

impl Host {
    /// The host's own home, mounted on `/root` inside the host.
    pub fn home(&self) -> PathBuf {
        self.dir.join("home")
    }

    pub fn docker_socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// The host's listening sshd (every session's sshd is its child), for
    /// the benches' CPU accounting.
    pub fn sshd_pid(&self) -> Option<u32> {
        pid_from(&self.dir.join("sshd.pid"), "sshd")
    }

    /// The host's dockerd (its containerd is its child).
    pub fn dockerd_pid(&self) -> Option<u32> {
        pid_from(&self.dir.join("docker.pid"), "dockerd")
    }

    /// Run the docker CLI against this host's engine, from outside.
    pub fn docker(&self, args: &[&str]) -> Result<Output> {
        let sock = format!("unix://{}", self.docker_socket().display());
        Command::new("docker")
            .arg("-H")
            .arg(sock)
            .args(args)
            .output()
            .map_err(|e| step(format!("{}: docker {}", self.name, args.join(" ")), e))
    }

    /// Like [`Host::docker`], but fails unless the command succeeds; returns stdout.
    pub fn docker_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.docker(args)?;
        if !out.status.success() {
            return Err(step(
                format!("{}: docker {}", self.name, args.join(" ")),
                String::from_utf8_lossy(&out.stderr).trim(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Kill this host's sshd and every session it serves, as a crash would
    /// (the host stays up: dockerd and containers run on).
    pub fn kill_sshd(&self) -> Result<()> {
        let sshds = || -> Vec<u32> {
            netns_pids(&self.netns)
                .into_iter()
                .filter(|p| {
                    fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sshd")
                })
                .collect()
        };
        for p in sshds() {
            signal(p, "KILL");
        }
        poll(Instant::now() + Duration::from_secs(5), "sshd gone", || {
            sshds().is_empty() && !self.ssh_banner()
        })
    }

    /// Start sshd again, in the host's network and mount namespaces (found
    /// through its dockerd, which shares them).
    pub fn start_sshd(&self) -> Result<()> {
        let dockerd = pid_from(&self.dir.join("docker.pid"), "dockerd")
            .ok_or_else(|| step(&self.name, "dockerd is not running"))?;
        let d = path_str(&self.dir);
        let status = Command::new("nsenter")
            .args([
                "--target",
                &dockerd.to_string(),
                "--mount",
                "--net",
                "/usr/sbin/sshd",
                "-f",
            ])
            .arg(format!("{d}/sshd_config"))
            .arg("-E")
            .arg(format!("{d}/sshd.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| step(format!("{}: start sshd", self.name), e))?;
        if !status.success() {
            return Err(step(format!("{}: start sshd", self.name), status));
        }
        poll(
            Instant::now() + Duration::from_secs(5),
            "sshd answers",
            || self.ssh_banner(),
        )
    }

    fn docker_ping(&self) -> bool {
        docker_ping(&self.docker_socket())
    }

    fn ssh_banner(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(
            &SocketAddr::from((self.addr, 22)),
            Duration::from_millis(500),
        ) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 8];
        s.read_exact(&mut buf).is_ok() && buf.starts_with(b"SSH-2.0")
    }
}

/// A running testbed.
#[derive(Debug, Clone)]
pub struct Testbed {
    pub slot: u8,
    pub base: PathBuf,
    pub hosts: Vec<Host>,
}

impl Testbed {
    fn describe(slot: u8, n: usize) -> Testbed {
        let base = slot_dir(slot);
        let hosts = (1..=n)
            .map(|i| Host {
                name: format!("h{i}"),
                addr: Ipv4Addr::new(10, 210, slot, 10 + i as u8),
                netns: format!("bt{slot}h{i}"),
                dir: base.join("hosts").join(format!("h{i}")),
            })
            .collect();
        Testbed { slot, base, hosts }
    }

    /// The testbed that is up in `slot`, if its directory says so.
    pub fn attach(slot: u8) -> Result<Testbed> {
        let hosts_dir = slot_dir(slot).join("hosts");
        let n = fs::read_dir(&hosts_dir)
            .map_err(|e| {
                step(
                    format!("slot {slot} is not up ({})", hosts_dir.display()),
                    e,
                )
            })?
            .count();
        Ok(Testbed::describe(slot, n))
    }

    pub fn bridge_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 210, self.slot, 1)
    }

    /// The registry as hosts reach it, e.g. `10.210.3.1:5000`.
    pub fn registry(&self) -> String {
        format!("{}:5000", self.bridge_addr())
    }

    /// HOME for SSH clients (berth, Kamal, git): holds `.ssh/id_ed25519` and
    /// `.ssh/known_hosts` with every host's key.
    pub fn client_home(&self) -> PathBuf {
        self.base.join("client")
    }

    pub fn ssh_key(&self) -> PathBuf {
        self.client_home().join(".ssh/id_ed25519")
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.client_home().join(".ssh/known_hosts")
    }

    /// The bare Git repository.
    pub fn git_dir(&self) -> PathBuf {
        self.base.join("git/app.git")
    }

    pub fn git_file_url(&self) -> String {
        format!("file://{}", self.git_dir().display())
    }

    /// The same repository over SSH, served by the first host's sshd.
    pub fn git_ssh_url(&self) -> String {
        format!(
            "ssh://root@{}{}",
            self.hosts[0].addr,
            self.git_dir().display()
        )
    }

    /// `GIT_SSH_COMMAND` for the ssh:// URL, with strict host-key checking.
    pub fn git_ssh_command(&self) -> String {
        shell::join([
            "ssh",
            "-i",
            &self.ssh_key().to_string_lossy(),
            "-o",
            &format!("UserKnownHostsFile={}", self.known_hosts().display()),
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
    }

    /// Run a command on a host over real SSH, with strict host-key checking.
    pub fn ssh(&self, host: &Host, remote_command: &str) -> Result<Output> {
        self.ssh_command()
            .arg(format!("root@{}", host.addr))
            .arg(remote_command)
            .output()
            .map_err(|e| step(format!("ssh {}", host.name), e))
    }

    /// `ssh` with the testbed's key and strict host-key checking, options
    /// only: the caller adds more, then the destination.
    pub fn ssh_command(&self) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-i")
            .arg(self.ssh_key())
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.known_hosts().display()
            ))
            .args([
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
            ]);
        c
    }

    /// Every part answers: dockerd, sshd, registry.
    pub fn status(&self) -> Vec<(String, bool)> {
        let mut out = vec![(
            format!("registry {}", self.registry()),
            registry_ping(&self.registry()),
        )];
        for h in &self.hosts {
            out.push((format!("{} {} dockerd", h.name, h.addr), h.docker_ping()));
            out.push((format!("{} {} sshd", h.name, h.addr), h.ssh_banner()));
        }
        out
    }

    pub fn is_healthy(&self) -> bool {
        !self.hosts.is_empty() && self.status().iter().all(|(_, ok)| *ok)
    }
}

/// `/var/tmp/berth-testbed/<slot>`.
pub fn slot_dir(slot: u8) -> PathBuf {
    Path::new(ROOT).join(slot.to_string())
}

/// A slot held by this process until dropped (the lock is released by the
/// kernel if the process dies, so the next holder finds and cleans leftovers).
#[derive(Debug)]
pub struct SlotLock {
    pub slot: u8,
    _file: fs::File,
}

/// Take the first free slot in `1..=MAX_SLOT`.
pub fn lock_free_slot() -> Result<SlotLock> {
    fs::create_dir_all(ROOT).map_err(|e| step(format!("create {ROOT}"), e))?;
    for slot in 1..=MAX_SLOT {
        let path = Path::new(ROOT).join(format!("{slot}.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| step(format!("open {}", path.display()), e))?;
        if file.try_lock().is_ok() {
            return Ok(SlotLock { slot, _file: file });
        }
    }
    Err(TestbedError::NoSlot)
}

/// Bring up `n` hosts in `slot`. Idempotent: a healthy testbed of the same
/// size is left as it is; anything else in the slot is torn down first.
pub fn up(slot: u8, n: usize) -> Result<Testbed> {
    if n == 0 || n > 200 {
        return Err(step("up", format!("host count must be 1..=200, got {n}")));
    }
    if let Ok(tb) = Testbed::attach(slot)
        && tb.hosts.len() == n
        && tb.is_healthy()
    {
        return Ok(tb);
    }
    down(slot)?;
    let tb = Testbed::describe(slot, n);
    create(&tb).inspect_err(|_| {
        // Leave nothing half-made behind.
        let _ = down(slot);
    })?;
    Ok(tb)
}

fn create(tb: &Testbed) -> Result<()> {
    let slot = tb.slot;
    for d in ["client/.ssh", "registry/data", "git", "hosts"] {
        mkdir(&tb.base.join(d))?;
    }
    mkdir(Path::new("/run/sshd"))?;
    keygen(&tb.ssh_key(), "berth-testbed")?;
    let client_pub = read(&tb.ssh_key().with_extension("pub"))?;

    let br = format!("bt{slot}");
    run("ip", &["link", "add", &br, "type", "bridge"])?;
    run(
        "ip",
        &[
            "addr",
            "add",
            &format!("{}/24", tb.bridge_addr()),
            "dev",
            &br,
        ],
    )?;
    run("ip", &["link", "set", &br, "up"])?;

    start_registry(tb)?;

    let mut known_hosts = String::new();
    for (i, h) in tb.hosts.iter().enumerate() {
        mkdir(&h.home().join(".ssh"))?;
        mkdir(&h.dir.join("docker"))?;
        mkdir(&h.dir.join("exec"))?;
        write(&h.home().join(".ssh/authorized_keys"), &client_pub)?;
        let key = h.dir.join("ssh_host_ed25519_key");
        keygen(&key, &h.name)?;
        let host_pub = read(&key.with_extension("pub"))?;
        let mut parts = host_pub.split_whitespace();
        let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
            return Err(step("read host key", host_pub));
        };
        known_hosts.push_str(&format!("{} {kind} {blob}\n", h.addr));
        write(&h.dir.join("sshd_config"), &sshd_config(h))?;

        let ns = &h.netns;
        run("ip", &["netns", "add", ns])?;
        run(
            "ip",
            &[
                "link", "add", ns, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        )?;
        run("ip", &["link", "set", ns, "master", &br, "up"])?;
        run(
            "ip",
            &[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", h.addr),
                "dev",
                "eth0",
            ],
        )?;
        run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        run(
            "ip",
            &[
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &tb.bridge_addr().to_string(),
            ],
        )?;
        start_host(h, i)?;
    }
    write(&tb.known_hosts(), &known_hosts)?;

    let deadline = Instant::now() + Duration::from_secs(60);
    for h in &tb.hosts {
        poll(deadline, &format!("{} dockerd answers", h.name), || {
            h.docker_ping()
        })?;
        poll(deadline, &format!("{} sshd answers", h.name), || {
            h.ssh_banner()
        })?;
    }
    poll(deadline, "registry answers", || {
        registry_ping(&tb.registry())
    })?;

    run(
        "git",
        &[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            &path_str(&tb.git_dir()),
        ],
    )?;
    Ok(())
}

fn sshd_config(h: &Host) -> String {
    let d = h.dir.display();
    format!(
        "ListenAddress {addr}\n\
         Port 22\n\
         HostKey {d}/ssh_host_ed25519_key\n\
         PidFile {d}/sshd.pid\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\n\
         UsePAM no\n\
         StrictModes no\n\
         MaxSessions 100\n\
         MaxStartups 100:30:200\n\
         SetEnv DOCKER_HOST=unix://{d}/docker.sock\n\
         Subsystem sftp internal-sftp\n",
        addr = h.addr
    )
}

/// dockerd and sshd, inside the namespace and a private mount namespace that
/// puts the host's home on `/root`.
fn start_host(h: &Host, index: usize) -> Result<()> {
    let d = path_str(&h.dir);
    let dockerd = shell::join([
        "dockerd",
        "--data-root",
        &format!("{d}/docker"),
        "--exec-root",
        &format!("{d}/exec"),
        "--pidfile",
        &format!("{d}/docker.pid"),
        "--host",
        &format!("unix://{d}/docker.sock"),
        "--bip",
        &format!("172.30.{}.1/24", index + 1),
        "--insecure-registry",
        "10.210.0.0/16",
        "--shutdown-timeout",
        "10",
        "--log-level",
        "warn",
    ]);
    let script = format!(
        "mount --bind {home} /root && {{ {dockerd} >{log} 2>&1 & }} && exec /usr/sbin/sshd -f {cfg} -E {sshlog}",
        home = shell::quote(&path_str(&h.home())),
        log = shell::quote(&format!("{d}/dockerd.log")),
        cfg = shell::quote(&format!("{d}/sshd_config")),
        sshlog = shell::quote(&format!("{d}/sshd.log")),
    );
    let status = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", h.netns))
        .args([
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| step(format!("{}: start dockerd and sshd", h.name), e))?;
    if !status.success() {
        return Err(step(format!("{}: start dockerd and sshd", h.name), status));
    }
    Ok(())
}

fn start_registry(tb: &Testbed) -> Result<()> {
    let dir = tb.base.join("registry");
    let cfg = dir.join("config.yml");
    write(
        &cfg,
        &format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {}\n",
            dir.join("data").display(),
            tb.registry()
        ),
    )?;
    let log = fs::File::create(dir.join("registry.log")).map_err(|e| step("registry log", e))?;
    let log2 = log.try_clone().map_err(|e| step("registry log", e))?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| step("start docker-registry", e))?;
    write(&dir.join("registry.pid"), &child.id().to_string())?;
    // The registry outlives this process (the testbed CLI exits after `up`);
    // `down` stops it by its pid file.
    std::mem::forget(child);
    Ok(())
}

fn registry_ping(addr: &str) -> bool {
    let Ok(sa) = addr.parse::<SocketAddr>() else {
        return false;
    };
    let Ok(mut s) = TcpStream::connect_timeout(&sa, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200") || buf.starts_with("HTTP/1.0 200")
}

/// Tear down everything in `slot`, found by its naming conventions.
pub fn down(slot: u8) -> Result<()> {
    let base = slot_dir(slot);
    let hosts_dir = base.join("hosts");
    let host_dirs: Vec<PathBuf> = fs::read_dir(&hosts_dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    // dockerd first, gracefully: it stops its containers.
    let dockerds: Vec<u32> = host_dirs
        .iter()
        .filter_map(|d| pid_from(&d.join("docker.pid"), "dockerd"))
        .collect();
    for &pid in &dockerds {
        signal(pid, "TERM");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while dockerds.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(pid) = pid_from(&base.join("registry/registry.pid"), "docker-registry") {
        signal(pid, "KILL");
    }
    // Everything else in the namespaces (sshd, sessions, containerd, shims).
    let prefix = format!("bt{slot}h");
    for ns in netns_list().into_iter().filter(|n| n.starts_with(&prefix)) {
        for _ in 0..50 {
            let pids = netns_pids(&ns);
            if pids.is_empty() {
                break;
            }
            for p in pids {
                signal(p, "KILL");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = run("ip", &["netns", "del", &ns]);
    }
    for link in links()
        .into_iter()
        .filter(|l| l.starts_with(&prefix) || *l == format!("bt{slot}"))
    {
        let _ = run("ip", &["link", "del", &link]);
    }
    // Clients of the hosts just removed (an SSH master of a berth that was
    // killed) would otherwise wait out their idle timeout.
    for _ in 0..50 {
        let stray = slot_processes(slot);
        if stray.is_empty() {
            break;
        }
        for (pid, _) in stray {
            signal(pid, "KILL");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if base.exists() {
        fs::remove_dir_all(&base).map_err(|e| step(format!("remove {}", base.display()), e))?;
    }
    Ok(())
}

fn netns_list() -> Vec<String> {
    fs::read_dir("/var/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn netns_pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Interface names in the root namespace.
pub fn links() -> Vec<String> {
    fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Does the Docker engine on this unix socket answer `/_ping`?
pub fn docker_ping(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.") && buf.ends_with("OK")
}

/// Processes whose command line names a path in `slot`'s directory: its
/// daemons, and clients of its hosts (SSH masters a killed berth left).
pub fn slot_processes(slot: u8) -> Vec<(u32, String)> {
    let needle = format!("{}/", path_str(&slot_dir(slot)));
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (cmd.contains(&needle) && pid != std::process::id())
                .then(|| (pid, cmd.trim().to_string()))
        })
        .collect()
}

/// Namespaces, links and processes of `slot` still present (empty when clean).
pub fn leftovers(slot: u8) -> Vec<String> {
    let prefix = format!("bt{slot}h");
    let mut out: Vec<String> = netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .map(|n| format!("netns {n}"))
        .collect();
    out.extend(
        links()
            .into_iter()
            .filter(|l| l.starts_with(&prefix) || *l == format!("bt{slot}"))
            .map(|l| format!("link {l}")),
    );
    let base = path_str(&slot_dir(slot));
    out.extend(
        slot_processes(slot)
            .into_iter()
            .map(|(pid, cmd)| format!("process {pid}: {cmd}")),
    );
    if let Ok(m) = fs::read_to_string("/proc/self/mountinfo")
        && m.contains(&format!("{base}/"))
    {
        out.push("mount under the slot directory".into());
    }
    if slot_dir(slot).exists() {
        out.push(format!("directory {base}"));
    }
    out
}

fn pid_from(file: &Path, name: &str) -> Option<u32> {
    let pid: u32 = fs::read_to_string(file).ok()?.trim().parse().ok()?;
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    comm.trim()
        .starts_with(name.get(..15.min(name.len()))?)
        .then_some(pid)
}

fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Poll `cond` until it holds or the deadline passes.
pub fn poll(deadline: Instant, what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(step("timed out waiting", what));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(prog: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| step(format!("{prog} {}", args.join(" ")), e))?;
    if !out.status.success() {
        return Err(step(
            format!("{prog} {}", args.join(" ")),
            String::from_utf8_lossy(&out.stderr).trim(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An ed25519 key pair without a passphrase at `path` (+ `.pub`).
fn keygen(path: &Path, comment: &str) -> Result<String> {
    run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            comment,
            "-f",
            &path_str(path),
        ],
    )
}

fn mkdir(p: &Path) -> Result<()> {
    fs::create_dir_all(p).map_err(|e| step(format!("create {}", p.display()), e))
}

fn write(p: &Path, text: &str) -> Result<()> {
    fs::write(p, text).map_err(|e| step(format!("write {}", p.display()), e))
}

fn read(p: &Path) -> Result<String> {
    fs::read_to_string(p).map_err(|e| step(format!("read {}", p.display()), e))
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
