//! The offline tests: one binary, no root, no fleet — property tests of
//! plan and render, the config corpus, golden files against real Kamal's
//! commands, the hostile-repository suite and the decode fuzz, the CLI, the
//! examples (validated by berth and by real Kamal), the Helm chart, the HTTP
//! server's limits. Green in seconds on any machine with the dev tools.
//!
//! The fleet tests (real hosts in network namespaces) are `tests/fleet`.

#[path = "../support/mod.rs"]
mod support;

mod chart;
mod cli_generate;
mod cli_history;
mod config_corpus;
mod decode_fuzz;
mod deleted_refs;
mod examples;
mod git_https;
mod golden;
mod hostile;
mod http_hardening;
mod kamal_fixtures;
mod plan_props;
mod render_props;
mod sops;
mod trust;
mod verify;
mod webhooks;
