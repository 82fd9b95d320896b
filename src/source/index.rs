//! `berth.yml`: the optional index at a repository's root listing the apps
//! it holds, for one berth to manage many apps from one repo.
//!
//! ```yaml
//! apps:
//!   shop:                           # the app's name in metrics and the API
//!     path: shop                    # directory holding the Kamal project (default ".")
//!     config: config/deploy.yml     # inside `path` (default)
//!     destinations: [staging, production]   # one app instance each (default: none)
//!     policy:
//!       mode: auto                  # auto | detect            (default auto)
//!       self_heal: true             # revert hand-made drift   (default true)
//!       prune: false                # overrides x-berth.prune  (default: x-berth's)
//!       suspended: false            # observe only, never act  (default false)
//! ```
//!
//! Defaults favour convergence (`auto` + `self_heal`), which is what a Git
//! repo declaring the truth means; `detect` and `suspended` are the escape
//! hatches. Errors name file, line, column and key, like the Kamal config's.

use std::path::{Path, PathBuf};

use crate::config::yaml::{self, Node, Scalar, Value};
use crate::policy::Mode;

#[derive(Clone, Debug, PartialEq)]
pub struct IndexApp {
    pub name: String,
    pub path: PathBuf,
    pub config: PathBuf,
    pub destinations: Vec<String>,
    pub mode: Mode,
    pub self_heal: bool,
    pub prune: Option<bool>,
    pub suspended: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct IndexError(pub Vec<String>);

fn err(errors: &mut Vec<String>, node: &Node, path: &str, msg: &str) {
    errors.push(format!("{}: {path}: {msg}", node.mark));
}

fn string(node: &Node) -> Option<String> {
    match &node.value {
        Value::Scalar(Scalar::Str(s)) => Some(s.clone()),
        Value::Scalar(s @ (Scalar::Int(_) | Scalar::Symbol(_))) => Some(s.to_ruby_string()),
        _ => None,
    }
}

fn boolean(node: &Node) -> Option<bool> {
    match &node.value {
        Value::Scalar(Scalar::Bool(b)) => Some(*b),
        _ => None,
    }
}

/// Read `<root>/berth.yml`; `Ok(None)` when there is none.
/// Read `<root>/berth.yml` from the checkout (confined, capped: it is
/// repository content like any other); `Ok(None)` when there is none.
pub fn load(root: &Path) -> Result<Option<Vec<IndexApp>>, IndexError> {
    let file = root.join("berth.yml");
    let read = crate::checkout::Checkout::untrusted(root).and_then(|c| c.read_text(&file));
    match read {
        Ok(text) => parse(&text, &file).map(Some),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(IndexError(vec![e.to_string()])),
    }
}

/// An index kept outside the repository (`berth run --apps-file`, e.g. a
/// Kubernetes ConfigMap): it must exist.
pub fn load_file(file: &Path) -> Result<Vec<IndexApp>, IndexError> {
    // The operator's own file, not the repository's: regular and capped all the same.
    let text = crate::checkout::Checkout::unconfined()
        .read_text(file)
        .map_err(|e| IndexError(vec![e.to_string()]))?;
    parse(&text, file)
}

fn parse(text: &str, file: &Path) -> Result<Vec<IndexApp>, IndexError> {
    let tree = yaml::parse(text, file).map_err(|e| IndexError(vec![e.to_string()]))?;
    let mut errors = Vec::new();
    let mut apps = Vec::new();
    let Value::Map(top) = &tree.value else {
        err(
            &mut errors,
            &tree,
            "berth.yml",
            "should be a hash with `apps:`",
        );
        return Err(IndexError(errors));
    };
    for (k, v) in top {
        if k.name != "apps" {
            errors.push(format!(
                "{}: {}: unknown key (expected `apps`)",
                k.mark, k.name
            ));
            continue;
        }
        let Value::Map(entries) = &v.value else {
            err(
                &mut errors,
                v,
                "apps",
                "should be a hash of app name → settings",
            );
            continue;
        };
        for (name, spec) in entries {
            let p = format!("apps.{}", name.name);
            let valid_name = !name.name.is_empty()
                && name
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_name {
                errors.push(format!(
                    "{}: {p}: app names are letters, digits, - and _",
                    name.mark
                ));
            }
            let mut app = IndexApp {
                name: name.name.clone(),
                path: PathBuf::from("."),
                config: PathBuf::from("config/deploy.yml"),
                destinations: Vec::new(),
                mode: Mode::Auto,
                self_heal: true,
                prune: None,
                suspended: false,
            };
            let fields = match &spec.value {
                Value::Map(f) => f.as_slice(),
                Value::Scalar(Scalar::Null) => &[],
                _ => {
                    err(&mut errors, spec, &p, "should be a hash");
                    continue;
                }
            };
            for (fk, fv) in fields {
                let fp = format!("{p}.{}", fk.name);
                match fk.name.as_str() {
                    "path" | "config" => match string(fv) {
                        Some(s) if !s.starts_with('/') && !s.split('/').any(|c| c == "..") => {
                            if fk.name == "path" {
                                app.path = PathBuf::from(s);
                            } else {
                                app.config = PathBuf::from(s);
                            }
                        }
                        _ => err(&mut errors, fv, &fp, "should be a relative path inside the repository"),
                    },
                    "destinations" => match &fv.value {
                        Value::Seq(items) => {
                            for i in items {
                                match string(i) {
                                    Some(d) => app.destinations.push(d),
                                    None => err(&mut errors, i, &fp, "should be a list of destination names"),
                                }
                            }
                        }
                        _ => err(&mut errors, fv, &fp, "should be a list of destination names"),
                    },
                    "policy" => {
                        let Value::Map(pol) = &fv.value else {
                            err(&mut errors, fv, &fp, "should be a hash");
                            continue;
                        };
                        for (pk, pv) in pol {
                            let pp = format!("{fp}.{}", pk.name);
                            match pk.name.as_str() {
                                "mode" => match string(pv).as_deref() {
                                    Some("auto") => app.mode = Mode::Auto,
                                    Some("detect") => app.mode = Mode::Detect,
                                    _ => err(&mut errors, pv, &pp, "should be auto or detect"),
                                },
                                "self_heal" | "prune" | "suspended" => match boolean(pv) {
                                    Some(b) if pk.name == "self_heal" => app.self_heal = b,
                                    Some(b) if pk.name == "prune" => app.prune = Some(b),
                                    Some(b) => app.suspended = b,
                                    None => err(&mut errors, pv, &pp, "should be true or false"),
                                },
                                other => errors.push(format!(
                                    "{}: {pp}: unknown key {other:?} (expected mode, self_heal, prune, suspended)",
                                    pk.mark
                                )),
                            }
                        }
                    }
                    other => errors.push(format!(
                        "{}: {fp}: unknown key {other:?} (expected path, config, destinations, policy)",
                        fk.mark
                    )),
                }
            }
            apps.push(app);
        }
    }
    if apps.is_empty() && errors.is_empty() {
        errors.push(format!("{}: apps: no app listed", file.display()));
    }
    if errors.is_empty() {
        Ok(apps)
    } else {
        Err(IndexError(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Option<Vec<IndexApp>>, IndexError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("berth.yml"), text).unwrap();
        load(dir.path())
    }

    #[test]
    fn defaults_and_overrides() {
        let apps = load_text(
            "apps:\n  shop:\n    path: shop\n    destinations: [staging, production]\n    policy:\n      mode: detect\n      prune: true\n  blog:\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(apps[0].path, PathBuf::from("shop"));
        assert_eq!(apps[0].destinations, ["staging", "production"]);
        assert_eq!(apps[0].mode, Mode::Detect);
        assert_eq!(apps[0].prune, Some(true));
        assert!(apps[0].self_heal);
        assert_eq!(apps[1].config, PathBuf::from("config/deploy.yml"));
        assert_eq!(apps[1].mode, Mode::Auto);
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = load_text("apps:\n  shop:\n    path: ../etc\n    policy:\n      mode: yolo\n      self_heel: true\n").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("berth.yml:3:11: apps.shop.path: should be a relative path"),
            "{text}"
        );
        assert!(
            text.contains("berth.yml:5:13: apps.shop.policy.mode: should be auto or detect"),
            "{text}"
        );
        assert!(
            text.contains("berth.yml:6:7: apps.shop.policy.self_heel: unknown key"),
            "{text}"
        );
        assert!(load(tempfile::tempdir().unwrap().path()).unwrap().is_none());
    }
}
