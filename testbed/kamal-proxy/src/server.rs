//! The server `run` starts: routes restored from the state file, the HTTP
//! listener and the control socket, a thread per connection.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::control::handle_control;
use crate::log::{f_num, f_str, log_line};
use crate::proxy::handle_http;
use crate::state::{Shared, load_state};

pub(crate) struct ServerConfig {
    pub(crate) http_addr: SocketAddr,
    pub(crate) socket_path: PathBuf,
    pub(crate) state_path: PathBuf,
    pub(crate) debug: bool,
}

#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct RunningServer {
    pub(crate) http_addr: SocketAddr,
}

pub(crate) fn start_server(cfg: ServerConfig) -> io::Result<RunningServer> {
    let services = load_state(&cfg.state_path);
    let restored = services.len();
    let shared = Arc::new(Shared {
        services: Mutex::new(services),
        deploy_locks: Mutex::new(HashMap::new()),
        state_path: cfg.state_path.clone(),
        debug: cfg.debug,
    });
    let http = TcpListener::bind(cfg.http_addr)?;
    let http_addr = http.local_addr()?;
    if let Some(parent) = cfg.socket_path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if cfg.socket_path.exists() {
        if UnixStream::connect(&cfg.socket_path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "another kamal-proxy is already listening on {}",
                    cfg.socket_path.display()
                ),
            ));
        }
        std::fs::remove_file(&cfg.socket_path)?;
    }
    let control = UnixListener::bind(&cfg.socket_path)?;

    let sh = shared.clone();
    thread::spawn(move || {
        for conn in http.incoming() {
            match conn {
                Ok(s) => {
                    let sh = sh.clone();
                    thread::spawn(move || handle_http(&sh, s));
                }
                Err(e) => {
                    log_line("WARN", "accept failed", &[f_str("error", &e.to_string())]);
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
    });
    let sh = shared.clone();
    thread::spawn(move || {
        for conn in control.incoming() {
            match conn {
                Ok(s) => {
                    let sh = sh.clone();
                    thread::spawn(move || {
                        if let Err(e) = handle_control(&sh, s) {
                            sh.debug(
                                "control connection error",
                                &[f_str("error", &e.to_string())],
                            );
                        }
                    });
                }
                Err(e) => {
                    log_line("WARN", "accept failed", &[f_str("error", &e.to_string())]);
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
    });
    log_line(
        "INFO",
        "Server started",
        &[
            f_str("http", &http_addr.to_string()),
            f_str("socket", &cfg.socket_path.display().to_string()),
            f_str("state", &cfg.state_path.display().to_string()),
            f_num("restored_services", restored),
        ],
    );
    Ok(RunningServer { http_addr })
}
