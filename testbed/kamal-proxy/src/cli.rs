//! The command line: `run` (ports, socket and state paths, SIGTERM/SIGINT),
//! the client commands (validated before connecting to the server), `version`
//! and the usage text.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crate::control::client_call;
use crate::flags::{
    Parsed, RUN_FLAGS, parse_deploy_args, parse_flags, parse_no_args, parse_service_only,
    parse_stop_args,
};
use crate::log::{json_str, log_line};
use crate::server::{ServerConfig, start_server};

const VERSION: &str = "v0.9.2";
const DEFAULT_SOCKET: &str = "/tmp/kamal-proxy.sock";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: i32) {
    STOP.store(true, Ordering::SeqCst);
}

unsafe extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
}

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

pub(crate) fn socket_path() -> PathBuf {
    match std::env::var("KAMAL_PROXY_SOCKET") {
        Ok(s) if !s.is_empty() => PathBuf::from(s),
        _ => PathBuf::from(DEFAULT_SOCKET),
    }
}

pub(crate) fn state_path() -> PathBuf {
    let home = match std::env::var("HOME") {
        Ok(h) if !h.is_empty() => h,
        _ => "/home/kamal-proxy".to_string(),
    };
    Path::new(&home).join(".config/kamal-proxy/state")
}

fn parse_port(p: &Parsed, name: &str, default: u16) -> Result<u16, String> {
    match p.last(name) {
        Some(v) => v
            .parse::<u16>()
            .map_err(|_| format!("invalid argument \"{v}\" for \"--{name}\" flag")),
        None => Ok(default),
    }
}

fn cmd_run(args: &[String]) -> Result<(), String> {
    let p = parse_flags(args, RUN_FLAGS)?;
    if !p.positional.is_empty() {
        return Err(format!(
            "unknown command {} for \"kamal-proxy run\"",
            json_str(&p.positional[0])
        ));
    }
    let debug = p.bool_or("debug", false)?;
    let http_port = parse_port(&p, "http-port", 80)?;
    // Accepted for compatibility; HTTPS (TLS termination) and metrics are not served.
    let _https_port = parse_port(&p, "https-port", 443)?;
    let _metrics_port = parse_port(&p, "metrics-port", 0)?;
    // SAFETY: installing an async-signal-safe handler that only stores an atomic.
    unsafe {
        signal(SIGTERM, on_signal);
        signal(SIGINT, on_signal);
    }
    let socket = socket_path();
    start_server(ServerConfig {
        http_addr: SocketAddr::from(([0, 0, 0, 0], http_port)),
        socket_path: socket.clone(),
        state_path: state_path(),
        debug,
    })
    .map_err(|e| format!("unable to start server: {e}"))?;
    while !STOP.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(50));
    }
    log_line("INFO", "Server stopping", &[]);
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

fn validate_client(cmd: &str, rest: &[String]) -> Result<(), String> {
    match cmd {
        "deploy" => parse_deploy_args(rest).map(|_| ()),
        "stop" => parse_stop_args(rest).map(|_| ()),
        "remove" | "resume" => parse_service_only(rest).map(|_| ()),
        "list" => parse_no_args(rest),
        _ => Err(format!("unknown command {}", json_str(cmd))),
    }
}

const USAGE: &str = "kamal-proxy (stand-in) - HTTP proxy for zero-downtime deployments

Usage:
  kamal-proxy [command]

Available Commands:
  run       Run the server
  deploy    Deploy a target host
  remove    Remove a service
  stop      Stop a service (respond 503)
  resume    Resume a stopped service
  list      List the services
  version   Show version
";

pub(crate) fn run_cli(args: &[String]) -> i32 {
    let cmd = args.first().map(String::as_str);
    let rest = args.get(1..).unwrap_or(&[]);
    let result = match cmd {
        Some("run") => cmd_run(rest),
        Some("version") | Some("--version") => {
            println!("{VERSION}");
            Ok(())
        }
        Some("help") | Some("--help") | Some("-h") => {
            print!("{USAGE}");
            Ok(())
        }
        None => {
            eprint!("{USAGE}");
            return 1;
        }
        Some(c @ ("deploy" | "remove" | "stop" | "resume" | "list")) => validate_client(c, rest)
            .and_then(|_| {
                let lines = client_call(&socket_path(), args)?;
                for l in lines {
                    println!("{l}");
                }
                Ok(())
            }),
        Some(other) => Err(format!(
            "unknown command {} for \"kamal-proxy\"",
            json_str(other)
        )),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e}");
            1
        }
    }
}
