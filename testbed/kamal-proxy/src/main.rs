//! A std-only stand-in for basecamp/kamal-proxy.
//!
//! It implements, for real, the CLI contract used by Kamal 2.11
//! (`run`, `deploy`, `remove`, `stop`, `resume`, `list`, `version`), an HTTP/1.1
//! reverse proxy with host/path routing, a health-gated target switch and a drain
//! of in-flight requests to the previous target.
//!
//! Not implemented: TLS termination. The TLS flags are accepted, validated as
//! flags, stored and shown by `list`, but nothing listens on the HTTPS port.
//! Also not served: the metrics port. See README.md.

mod cli;
mod control;
mod flags;
mod log;
mod proxy;
mod resolve;
mod server;
mod state;
#[cfg(test)]
mod tests;
mod values;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(cli::run_cli(&args));
}
