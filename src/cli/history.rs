//! `berth history`: what `berth run` did, read from its history database
//! (read-only, so it works beside a running berth): cycles that did
//! something, failed or saw a new revision, and drift episodes, newest
//! first. Exit 0, or 1 when there is no database.

use std::path::PathBuf;

use anyhow::Context;

use crate::history::{self, CycleRow, EpisodeRow};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `berth run`'s `--state-dir`.
    #[arg(long, env = "BERTH_STATE_DIR", default_value = "/var/tmp/berth/state")]
    pub state_dir: PathBuf,
    /// Only this app (default: every app).
    #[arg(long)]
    pub app: Option<String>,
    /// Only this destination of the app.
    #[arg(short = 'd', long, requires = "app")]
    pub destination: Option<String>,
    /// Cycles (and episodes) per app.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// `berth.history/v1` JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn time(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
}

fn short(rev: &Option<String>) -> &str {
    rev.as_deref()
        .map(|r| r.get(..12).unwrap_or(r))
        .unwrap_or("-")
}

fn instance(app: &str, dest: &Option<String>) -> String {
    match dest {
        Some(d) => format!("{app}/{d}"),
        None => app.to_string(),
    }
}

fn cycle_line(c: &CycleRow) -> String {
    let what = match (&c.error, c.actions.is_empty()) {
        (Some(e), _) => e.clone(),
        (None, true) => String::new(),
        (None, false) => c
            .actions
            .iter()
            .map(|a| format!("{} {} on {} ({})", a.kind, a.container, a.host, a.reason))
            .collect::<Vec<_>>()
            .join("; "),
    };
    format!(
        "{}  {:<20} {:<8} {:<9} {:<12} {:<10} {:>6}ms  {what}",
        time(c.started_unix_ms / 1000),
        instance(&c.app, &c.destination),
        c.trigger,
        c.result,
        short(&c.revision),
        c.version.as_deref().unwrap_or("-"),
        c.ended_unix_ms.saturating_sub(c.started_unix_ms),
    )
}

fn episode_line(e: &EpisodeRow) -> String {
    let end = match (e.ended_unix, &e.ended_by) {
        (Some(t), Some(by)) => format!("{by} {}", time(t)),
        _ => "ongoing".into(),
    };
    format!(
        "{}  {:<20} drift: {}  → {end}",
        time(e.first_seen_unix),
        instance(&e.app, &e.destination),
        e.units.join(", ")
    )
}

pub fn run(args: &Args) -> anyhow::Result<super::ExitStatus> {
    let conn = history::History::open_read_only(&args.state_dir)
        .with_context(|| "no history here (is this `berth run`'s --state-dir?)")?;
    let apps: Vec<String> = match &args.app {
        Some(a) => vec![a.clone()],
        None => {
            let mut stmt = conn.prepare(
                "SELECT app FROM cycles UNION SELECT app FROM instances UNION SELECT app FROM episodes ORDER BY app",
            )?;
            stmt.query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        }
    };
    let dest = args.destination.as_deref();
    let mut doc = Vec::new();
    for app in &apps {
        let cycles = history::load_cycles(&conn, app, dest, args.limit, None)?;
        let episodes = history::load_episodes(&conn, app, dest, args.limit)?;
        if args.json {
            doc.push(serde_json::json!({"app": app, "cycles": cycles, "episodes": episodes}));
            continue;
        }
        println!("== {app}");
        if cycles.is_empty() && episodes.is_empty() {
            println!("  (nothing recorded)");
        }
        for c in &cycles {
            println!("  {}", super::printable(&cycle_line(c)));
        }
        for e in &episodes {
            println!("  {}", super::printable(&episode_line(e)));
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"schema": "berth.history/v1", "apps": doc})
            )?
        );
    }
    Ok(super::ExitStatus::Success)
}
