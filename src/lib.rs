//! berth: a GitOps reconciliation controller for Kamal 2 deployments.
//!
//! The pipeline is the architecture:
//! `source → config → desired → observe → plan → apply`, driven by `controller`
//! and exposed by `server`. Each module owns one stage; see ARCHITECTURE.md.

pub mod apply;
pub mod checkout;
pub mod cli;
pub mod config;
pub mod controller;
pub mod desired;
pub mod observe;
pub mod plan;
pub mod policy;
pub mod remote;
pub mod server;
pub mod shell;
pub mod source;
pub mod testbed;
