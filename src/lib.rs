//! berth: a GitOps reconciliation controller for Kamal 2 deployments.
//!
//! The pipeline is the architecture:
//! `source → config → desired → observe → plan → apply`, driven by `controller`
//! and exposed by `server`; `notify` tells people and forges what happened.
//! Each module owns one stage; see ARCHITECTURE.md.

pub mod apply;
pub mod checkout;
pub mod cli;
pub mod config;
pub mod controller;
pub mod desired;
pub mod docker_flags;
pub mod history;
pub mod kamal;
pub mod known_hosts;
pub mod notify;
pub mod observe;
pub mod plan;
pub mod policy;
pub mod proxy_state;
pub mod remote;
pub mod secret;
pub mod server;
pub mod shell;
pub mod source;

/// The pipeline's direction, enforced: a module may use only modules of a
/// lower layer (ARCHITECTURE.md, "Layering"). Read from the sources' `use
/// crate::…` lines and `crate::…::` paths, so a new back-edge fails here.
#[cfg(test)]
mod layering {
    /// Layer of each top-level module; leaves first.
    const LAYERS: &[(&str, u8)] = &[
        ("shell", 0),
        ("checkout", 0),
        ("docker_flags", 0),
        ("kamal", 0),
        ("known_hosts", 0),
        ("secret", 0),
        ("policy", 0),
        ("config", 1),
        ("proxy_state", 1),
        ("history", 1),
        ("source", 2),
        ("desired", 2),
        ("remote", 2),
        ("observe", 3),
        ("plan", 4),
        ("apply", 5),
        ("controller", 6),
        ("notify", 7),
        ("server", 8),
        ("cli", 9),
    ];

    fn layer(module: &str) -> Option<u8> {
        LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
    }

    /// `(file, used module)` for every `crate::<module>` in `src/<dir>`.
    fn uses(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                uses(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for (i, _) in text.match_indices("crate::") {
                    let rest = &text[i + "crate::".len()..];
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    // `use crate::{a, b}` lists modules in braces.
                    if name.is_empty() && rest.starts_with('{') {
                        let inner = &rest[1..rest.find('}').unwrap_or(rest.len())];
                        for m in inner.split(',') {
                            let m = m.trim().split("::").next().unwrap_or("").to_string();
                            out.push((p.clone(), m));
                        }
                    } else {
                        out.push((p.clone(), name));
                    }
                }
            }
        }
    }

    #[test]
    fn no_module_uses_one_above_or_beside_it() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = Vec::new();
        uses(&src, &mut found);
        let mut violations = Vec::new();
        for (file, used) in &found {
            let rel = file.strip_prefix(&src).unwrap();
            let own = rel
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .unwrap_or("")
                .trim_end_matches(".rs")
                .to_string();
            if matches!(own.as_str(), "lib" | "main" | "bin") || *used == own || used.is_empty() {
                continue;
            }
            let (Some(from), Some(to)) = (layer(&own), layer(used)) else {
                violations.push(format!("{}: {own} or {used} has no layer", rel.display()));
                continue;
            };
            if to >= from {
                violations.push(format!(
                    "{}: {own} (layer {from}) uses {used} (layer {to})",
                    rel.display()
                ));
            }
        }
        violations.sort();
        violations.dedup();
        assert!(violations.is_empty(), "{}", violations.join("\n"));
        // The scan sees real edges (it would pass vacuously otherwise).
        assert!(found.iter().any(|(_, m)| m == "desired"));
    }
}
