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
//!       flap_limit: {heals: 5, window: 5m}   # then a unit is left alone (default; false: none)
//! ```
//!
//! Defaults favour convergence (`auto` + `self_heal`), which is what a Git
//! repo declaring the truth means; `detect` and `suspended` are the escape
//! hatches. Errors name file, line, column and key, like the Kamal config's.

use std::path::{Path, PathBuf};

use crate::config::yaml::{self, Node, Scalar, Value};
use crate::policy::{FlapLimit, Mode};

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
    pub flap_limit: FlapLimit,
}

#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct IndexError(pub Vec<String>);

fn err(errors: &mut Vec<String>, node: &Node, path: &str, msg: &str) {
    errors.push(format!("{}: {path}: {msg}", node.mark));
}

fn boolean(node: &Node) -> Option<bool> {
    match &node.value {
        Value::Scalar(Scalar::Bool(b)) => Some(*b),
        _ => None,
    }
}

/// `flap_limit: {heals: 5, window: 5m}` (either key may be left out), or
/// `false` for none.
fn flap_limit(node: &Node) -> Result<FlapLimit, &'static str> {
    const SHAPE: &str =
        "should be false or a hash of heals (a count) and window (a duration: 300s, 5m)";
    if boolean(node) == Some(false) {
        return Ok(FlapLimit {
            heals: u32::MAX,
            window: std::time::Duration::ZERO,
        });
    }
    let Value::Map(entries) = &node.value else {
        return Err(SHAPE);
    };
    let mut limit = FlapLimit::default();
    for (k, v) in entries {
        match (k.name.as_str(), &v.value) {
            ("heals", Value::Scalar(Scalar::Int(n))) if *n > 0 => {
                limit.heals = u32::try_from(*n).map_err(|_| SHAPE)?;
            }
            ("window", _) => {
                let text = v.as_text().ok_or(SHAPE)?;
                let text = if text.bytes().all(|b| b.is_ascii_digit()) {
                    format!("{text}s")
                } else {
                    text
                };
                limit.window = humantime::parse_duration(&text).map_err(|_| SHAPE)?;
                if limit.window.is_zero() {
                    return Err(SHAPE);
                }
            }
            _ => return Err(SHAPE),
        }
    }
    Ok(limit)
}

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
                flap_limit: FlapLimit::default(),
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
                    "path" | "config" => match fv.as_text() {
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
                                match i.as_text() {
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
                                "mode" => match pv.as_text().as_deref() {
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
                                "flap_limit" => match flap_limit(pv) {
                                    Ok(l) => app.flap_limit = l,
                                    Err(msg) => err(&mut errors, pv, &pp, msg),
                                },
                                other => errors.push(format!(
                                    "{}: {pp}: unknown key {other:?} (expected mode, self_heal, prune, suspended, flap_limit)",
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
    fn a_flap_limit_is_a_count_and_a_window_or_none() {
        let apps = load_text(
            "apps:\n  a:\n  b:\n    policy:\n      flap_limit: {heals: 3, window: 10m}\n  c:\n    policy:\n      flap_limit: {window: 90}\n  d:\n    policy:\n      flap_limit: false\n",
        )
        .unwrap()
        .unwrap();
        let limit = |i: usize| {
            (
                apps[i].flap_limit.heals,
                apps[i].flap_limit.window.as_secs(),
            )
        };
        assert_eq!(limit(0), (5, 300));
        assert_eq!(limit(1), (3, 600));
        assert_eq!(limit(2), (5, 90));
        assert_eq!(limit(3).0, u32::MAX);
        for bad in [
            "{heals: 0}",
            "{heals: -1}",
            "{window: soon}",
            "{window: 0}",
            "{tries: 3}",
            "true",
        ] {
            let e = load_text(&format!(
                "apps:\n  a:\n    policy:\n      flap_limit: {bad}\n"
            ))
            .unwrap_err();
            assert!(
                e.to_string().contains(
                    "berth.yml:4:19: apps.a.policy.flap_limit: should be false or a hash"
                ),
                "{bad}: {e}"
            );
        }
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
