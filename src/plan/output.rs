//! Printing a plan: text like `terraform plan` (per host, `+` create,
//! `~` replace, `>` start, `-` remove, with line diffs of env and labels) and
//! a versioned JSON document (`berth.plan/v1`) for CI artifacts.

use std::fmt::Write;

use serde::Serialize;

use super::{Action, ActionKind, Change, Plan, Unit};

/// Counts for the summary line.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub create: usize,
    pub replace: usize,
    pub start: usize,
    pub remove: usize,
    pub stop: usize,
    pub other: usize,
    pub unknown_hosts: usize,
}

impl Summary {
    pub fn of(plan: &Plan) -> Summary {
        let mut s = Summary {
            unknown_hosts: plan.unknown_hosts.len(),
            ..Summary::default()
        };
        for a in &plan.actions {
            match a.kind {
                ActionKind::Create => s.create += 1,
                ActionKind::Replace | ActionKind::Reboot => s.replace += 1,
                ActionKind::Start => s.start += 1,
                ActionKind::Remove => s.remove += 1,
                ActionKind::Stop => s.stop += 1,
                ActionKind::WriteEnvFile | ActionKind::Route => s.other += 1,
            }
        }
        s
    }
}

fn unit_label(a: &Action) -> String {
    match &a.unit {
        Unit::App { role } => format!("app {role} {}", a.container),
        Unit::Accessory { name } => format!("accessory {name} {}", a.container),
        Unit::Proxy => "proxy kamal-proxy".into(),
        Unit::Orphan => format!("orphan {}", a.container),
    }
}

fn opt(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("(none)")
}

/// One line per reason; env and label changes as `-`/`+` line diffs.
fn reasons(out: &mut String, a: &Action) {
    let mut old_lines = String::new();
    let mut new_lines = String::new();
    for r in &a.reasons {
        match r {
            Change::Missing => {
                let _ = writeln!(out, "      (no such container)");
            }
            Change::State { status } => {
                let _ = writeln!(out, "      state: {status} → running");
            }
            Change::Version { from, to } => {
                let _ = writeln!(out, "      version: {from} → {to}");
            }
            Change::Image { from, to } => {
                let _ = writeln!(out, "      image: {from} → {to}");
            }
            Change::Label { key, from, to } => {
                if let Some(f) = from {
                    let _ = writeln!(old_lines, "label {key}={f}");
                }
                if let Some(t) = to {
                    let _ = writeln!(new_lines, "label {key}={t}");
                }
            }
            Change::Env { key, from, to } => {
                if let Some(f) = from {
                    let _ = writeln!(old_lines, "env {key}={f}");
                }
                if let Some(t) = to {
                    let _ = writeln!(new_lines, "env {key}={t}");
                }
                if from.is_some() && to.is_some() && from == to {
                    // Both sensitive: say which key without any value.
                    let _ = writeln!(out, "      env {key}: value changed (sensitive)");
                }
            }
            Change::Field { field, from, to } => {
                let _ = writeln!(out, "      {field}: {from} → {to}");
            }
            Change::Flag { flag, from, to } => {
                let unset = || "(not set)".to_string();
                let _ = writeln!(
                    out,
                    "      --{flag}: {} → {}",
                    from.clone().unwrap_or_else(unset),
                    to.clone().unwrap_or_else(unset)
                );
            }
            Change::EnvFile { path, missing } => {
                let _ = writeln!(
                    out,
                    "      env file {path}: {}",
                    if *missing {
                        "missing"
                    } else {
                        "content differs"
                    }
                );
            }
            Change::Route { service, from, to } => {
                let _ = writeln!(out, "      route {service}: {} → {to}", opt(from));
            }
            Change::RouteSetting {
                service,
                setting,
                from,
                to,
            } => {
                let _ = writeln!(out, "      route {service} --{setting}: {from} → {to}");
            }
            Change::Orphan { why, .. } => {
                let _ = writeln!(out, "      orphan: {why}");
            }
        }
    }
    if !old_lines.is_empty() || !new_lines.is_empty() {
        let diff = similar::TextDiff::from_lines(old_lines.as_str(), new_lines.as_str());
        for change in diff.iter_all_changes() {
            let sign = match change.tag() {
                similar::ChangeTag::Delete => '-',
                similar::ChangeTag::Insert => '+',
                similar::ChangeTag::Equal => ' ',
            };
            let _ = write!(out, "      {sign} {change}");
        }
    }
}

/// The human plan.
pub fn text(plan: &Plan) -> String {
    let mut out = String::new();
    let mut host: Option<&str> = None;
    let mut hosts: Vec<&str> = plan.actions.iter().map(|a| a.host.as_str()).collect();
    hosts.dedup();
    for a in &plan.actions {
        if host != Some(a.host.as_str()) {
            let _ = writeln!(out, "\nhost {}", a.host);
            host = Some(&a.host);
        }
        let _ = write!(
            out,
            "  {} {} ({})",
            a.kind.symbol(),
            unit_label(a),
            a.kind.describe()
        );
        if let Some(old) = &a.replaces
            && *old != a.container
        {
            let _ = write!(out, " replacing {old}");
        }
        out.push('\n');
        reasons(&mut out, a);
    }
    for (h, why) in &plan.unknown_hosts {
        let _ = writeln!(out, "\nhost {h}\n  ? unknown: {why}");
    }
    let mut notes = String::new();
    if !plan.notes.is_empty() {
        notes.push_str("\nnotes:\n");
        for n in &plan.notes {
            let _ = writeln!(notes, "  {n}");
        }
    }
    out.push_str(&notes);
    let s = Summary::of(plan);
    let _ = writeln!(
        out,
        "\nPlan: {} to create, {} to replace, {} to start, {} to stop, {} to remove, {} other{}.",
        s.create,
        s.replace,
        s.start,
        s.stop,
        s.remove,
        s.other,
        if s.unknown_hosts > 0 {
            format!("; {} host(s) unknown", s.unknown_hosts)
        } else {
            String::new()
        }
    );
    if plan.in_sync() {
        // What is kept as it is (orphans, locks) is still worth saying.
        out = format!("No changes. The fleet matches the configuration.\n{notes}");
    }
    out
}

#[derive(Serialize)]
struct JsonPlan<'a> {
    schema: &'static str,
    in_sync: bool,
    summary: Summary,
    actions: &'a [Action],
    unknown_hosts: Vec<JsonUnknown<'a>>,
    notes: &'a [String],
}

#[derive(Serialize)]
struct JsonUnknown<'a> {
    host: &'a str,
    reason: &'a str,
}

/// `berth.plan/v1`: `{schema, in_sync, summary{create,replace,start,stop,remove,other,unknown_hosts},
/// actions[{host, unit{type,role|name}, container, kind, replaces, reasons[{kind,…}]}],
/// unknown_hosts[{host, reason}], notes[]}`.
pub fn json(plan: &Plan) -> String {
    let doc = JsonPlan {
        schema: "berth.plan/v1",
        in_sync: plan.in_sync(),
        summary: Summary::of(plan),
        actions: &plan.actions,
        unknown_hosts: plan
            .unknown_hosts
            .iter()
            .map(|(h, r)| JsonUnknown { host: h, reason: r })
            .collect(),
        notes: &plan.notes,
    };
    serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::EnvValue;
    use crate::plan::UnitSpec;
    use crate::secret::fingerprint;

    fn env(value: &str, clear: bool) -> EnvValue {
        EnvValue {
            sha256: fingerprint(value),
            clear: clear.then(|| value.to_string()),
        }
    }

    /// A key moved from `secret` to `clear`: the probe keeps the running
    /// value in clear (the new config calls the key clear), yet neither the
    /// text nor the JSON plan shows it; the new clear value is shown.
    #[test]
    fn a_running_value_is_never_shown() {
        let mut want = UnitSpec::default();
        want.env.insert("DB".into(), env("now-clear", true));
        want.env.insert("TOKEN".into(), env("new-token", false));
        let mut have = UnitSpec::default();
        have.env.insert("DB".into(), env("old-secret", true));
        have.env.insert("TOKEN".into(), env("old-token", true));
        let plan = Plan {
            actions: vec![Action {
                host: "h".into(),
                unit: Unit::App { role: "web".into() },
                container: "demo-web-v1".into(),
                kind: ActionKind::Replace,
                replaces: None,
                reasons: want.diff(&have),
            }],
            ..Plan::default()
        };
        for shown in [text(&plan), json(&plan)] {
            assert!(shown.contains("now-clear"), "{shown}");
            for secret in ["old-secret", "old-token", "new-token"] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
        }
        assert!(text(&plan).contains("env TOKEN: value changed (sensitive)"));
    }
}
