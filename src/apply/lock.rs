//! `apply::lock`: Kamal's deploy lock, as berth takes and releases it.
//!
//! The lock is the directory `~/.kamal/lock-<svc>[-<dest>]` on the primary
//! host, taken with `mkdir` (atomic test-and-set) and holding `details`, the
//! base64 of `Locked by: … at …\nVersion: …\nMessage: …` — Kamal's format,
//! so `kamal lock status` reads berth's locks and berth reads Kamal's.
//! berth's details say `Locked by: berth (pid P on MACHINE, started S)`:
//! that is how a lock left by a berth that died is told apart from a
//! human's (never recovered) and released.

use super::scripts::{LOCK, LOCK_DETAILS, sh};
use super::{ApplyContext, ApplyError, ApplyReport, primary_host, strings};
use crate::plan::Plan;

fn this_machine() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The details berth writes: Kamal's three lines, naming this process.
fn details(version: &str) -> String {
    let ts = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    format!(
        "Locked by: berth (pid {} on {}, started {}) at {ts}\nVersion: {version}\nMessage: berth reconcile",
        std::process::id(),
        this_machine(),
        process_start(std::process::id()).unwrap_or_else(|| "unknown".into()),
    )
}

/// Who holds a berth lock: `Locked by: berth (pid P on M[, started S])`.
#[derive(Debug, PartialEq)]
struct LockOwner {
    pid: u32,
    machine: String,
    /// The process's identity beyond its pid (see [`process_start`]).
    started: Option<String>,
}

fn berth_lock_owner(details: &str) -> Option<LockOwner> {
    let rest = details
        .lines()
        .next()?
        .strip_prefix("Locked by: berth (pid ")?;
    let (pid, rest) = rest.split_once(" on ")?;
    let (inside, _) = rest.split_once(')')?;
    let (machine, started) = match inside.split_once(", started ") {
        Some((m, s)) => (m, Some(s.to_string())),
        None => (inside, None),
    };
    Some(LockOwner {
        pid: pid.parse().ok()?,
        machine: machine.to_string(),
        started,
    })
}

/// Boot id and start time of process `pid`: pids repeat (a container's
/// berth has the same small pid every time, and a restarted pod keeps its
/// hostname), this pair does not.
fn process_start(pid: u32) -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime), counted after the `(comm)` that may hold spaces.
    let start = stat.rsplit_once(')')?.1.split_whitespace().nth(19)?;
    Some(format!("{}:{start}", boot.trim().get(..8)?))
}

/// A lock left by a berth on this machine that is no longer running.
fn stale(owner: &LockOwner) -> bool {
    if owner.machine != this_machine() {
        return false;
    }
    let alive = std::fs::read_to_string(format!("/proc/{}/comm", owner.pid))
        .is_ok_and(|c| c.trim().starts_with("berth"));
    match &owner.started {
        Some(s) => !alive || process_start(owner.pid).as_ref() != Some(s),
        None => !alive,
    }
}

/// Take the lock on `host`; a stale berth lock is removed once and taken
/// again (recorded in `report`), anyone else's is [`ApplyError::Locked`].
pub(super) async fn acquire(
    ctx: &ApplyContext<'_>,
    host: &str,
    report: &mut ApplyReport,
) -> Result<(), ApplyError> {
    let dir = crate::kamal::lock_dir(&ctx.desired.service, ctx.desired.destination.as_deref());
    let details = details(&ctx.desired.version);
    let argv = sh(LOCK, "berth-lock", [dir.clone()]);
    for attempt in 0..2 {
        let out = ctx
            .conns
            .run_with_stdin(host, &argv, details.as_bytes())
            .await?;
        if out.success() {
            ctx.say(host, &format!("acquired the deploy lock ({dir})"));
            return Ok(());
        }
        let held = ctx
            .run(host, sh(LOCK_DETAILS, "berth-lock", [dir.clone()]))
            .await?;
        let held = held.stdout.trim().to_string();
        match berth_lock_owner(&held) {
            Some(owner) if attempt == 0 && stale(&owner) => {
                let msg = format!(
                    "recovering a stale deploy lock left by berth (pid {} on {}, no longer running): {}",
                    owner.pid,
                    owner.machine,
                    held.replace('\n', "; ")
                );
                ctx.say(host, &msg);
                report.recovered_lock = Some(msg);
                ctx.run_ok(
                    host,
                    "removing the stale lock",
                    strings(&["rm", "-r", &dir]),
                )
                .await?;
            }
            _ => {
                return Err(ApplyError::Locked {
                    host: host.to_string(),
                    details: if held.is_empty() {
                        "(no details)".into()
                    } else {
                        held
                    },
                });
            }
        }
    }
    Err(ApplyError::Locked {
        host: host.to_string(),
        details: "could not take the lock".into(),
    })
}

pub(super) async fn release(ctx: &ApplyContext<'_>, host: &str) -> Result<(), ApplyError> {
    let dir = crate::kamal::lock_dir(&ctx.desired.service, ctx.desired.destination.as_deref());
    ctx.run_ok(
        host,
        "releasing the deploy lock",
        strings(&["rm", "-r", &dir]),
    )
    .await?;
    Ok(())
}

/// With nothing to do, a deploy lock left by a berth that died is still
/// released (it would block every human and every later run).
pub async fn release_stale_lock(
    ctx: &ApplyContext<'_>,
    plan: &Plan,
) -> Result<Option<String>, ApplyError> {
    ctx.unknown_hosts.admit(plan)?;
    let Some(primary) = primary_host(ctx.desired) else {
        return Ok(None);
    };
    for (host, details) in &plan.locks {
        if *host != primary {
            continue;
        }
        if let Some(owner) = berth_lock_owner(details)
            && stale(&owner)
        {
            let msg = format!(
                "releasing a stale deploy lock left by berth (pid {} on {}, no longer running)",
                owner.pid, owner.machine
            );
            ctx.say(host, &msg);
            release(ctx, host).await?;
            return Ok(Some(msg));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn details(pid: u32, machine: &str, started: Option<&str>) -> String {
        match started {
            Some(s) => format!(
                "Locked by: berth (pid {pid} on {machine}, started {s}) at 2026-01-01T00:00:00Z\nVersion: v1"
            ),
            None => format!("Locked by: berth (pid {pid} on {machine}) at 2026-01-01T00:00:00Z"),
        }
    }

    #[test]
    fn lock_owners_parse_with_and_without_a_start_identity() {
        assert_eq!(
            berth_lock_owner(&details(7, "box", Some("ab12cd34:999"))),
            Some(LockOwner {
                pid: 7,
                machine: "box".into(),
                started: Some("ab12cd34:999".into())
            })
        );
        assert_eq!(
            berth_lock_owner(&details(7, "box", None)).map(|o| o.started),
            Some(None)
        );
        assert_eq!(berth_lock_owner("Locked by: alice at 2026"), None);
    }

    #[test]
    fn the_details_berth_writes_name_this_live_berth_in_kamals_format() {
        let written = super::details("v7");
        let lines: Vec<&str> = written.lines().collect();
        assert_eq!(lines.len(), 3, "{written}");
        assert_eq!(lines[1], "Version: v7");
        assert!(lines[2].starts_with("Message: "), "{written}");
        let owner = berth_lock_owner(&written).expect("berth's own details parse");
        assert_eq!(owner.pid, std::process::id());
        assert_eq!(owner.machine, this_machine());
        // The test binary is named `berth-…`: this berth is alive.
        assert!(!stale(&owner));
    }

    #[test]
    fn a_lock_is_stale_when_its_berth_is_gone_even_if_the_pid_came_back() {
        let me = std::process::id();
        let here = this_machine();
        let mine = process_start(me).expect("own start");
        let owner = |pid, machine: &str, started: Option<&str>| {
            berth_lock_owner(&details(pid, machine, started)).unwrap()
        };
        // The test binary is named `berth-…`: a live berth with this identity.
        assert!(!stale(&owner(me, &here, Some(&mine))));
        // Same pid, another start: a restarted container's berth got the
        // pid of the one that died holding the lock.
        assert!(stale(&owner(me, &here, Some("00000000:1"))));
        // Another machine's lock is never ours to judge.
        assert!(!stale(&owner(me, "elsewhere", Some("00000000:1"))));
        // A pid with no process (pid_max is below 2^22 + 1 by default).
        assert!(stale(&owner(4_194_305, &here, None)));
    }
}
