//! What the controller tells the rest of berth about what happened: one
//! [`Notice`] per event (a revision deployed, a rollout failed, drift seen
//! or healed, a host gone or back, a revision refused), sent on a bounded
//! broadcast channel ([`Events`]) that notifications and history read.
//!
//! Sending never waits: a subscriber that falls behind by more than
//! [`CAPACITY`] notices loses the oldest (and is told how many), so a slow
//! receiver can never hold up a cycle. Transitions, not states: each event
//! is sent once when it happens (a drift episode once, not every cycle).
//! Nothing secret is in a notice: unit names, hosts, revisions and the same
//! error text `last_error` shows.

use tokio::sync::broadcast;

use super::Drift;

/// Notices a subscriber may fall behind by before it loses the oldest.
pub const CAPACITY: usize = 1024;

/// One event of one app instance.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Notice {
    pub app: String,
    pub destination: Option<String>,
    /// The revision the event concerns (full commit id, or `local`).
    pub revision: Option<String>,
    /// The version `x-berth.version` declares at that revision, when known.
    pub version: Option<String>,
    pub at_unix: u64,
    pub event: Event,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A revision the fleet never converged to starts rolling out.
    RolloutStarted,
    /// The fleet converged to a new revision (applied, or nothing to do).
    Deployed,
    /// The rollout of a revision failed; it is parked until a new revision
    /// or a manual sync.
    RolloutFailed { error: String },
    /// The fleet stopped matching a revision it had converged to.
    DriftDetected { units: Vec<Drift> },
    /// berth reverted drift on the revision the fleet had converged to.
    Healed { units: Vec<Drift> },
    /// A unit was healed too often; berth leaves it alone for now.
    FlapLimit {
        host: String,
        unit: String,
        container: String,
        reason: String,
    },
    /// A host stopped answering berth's observation.
    HostDown { host: String },
    /// A host that was down answers again.
    HostUp { host: String },
    /// A revision is not applied: its signature does not verify, or its
    /// config, secrets or files are refused.
    RevisionRefused { reason: String },
}

impl Event {
    /// The event's name in notifications, metrics and history.
    pub fn as_str(&self) -> &'static str {
        match self {
            Event::RolloutStarted => "rollout_started",
            Event::Deployed => "deployed",
            Event::RolloutFailed { .. } => "rollout_failed",
            Event::DriftDetected { .. } => "drift_detected",
            Event::Healed { .. } => "healed",
            Event::FlapLimit { .. } => "flap_limit",
            Event::HostDown { .. } => "host_down",
            Event::HostUp { .. } => "host_up",
            Event::RevisionRefused { .. } => "revision_refused",
        }
    }
}

/// The channel every controller of one `berth run` sends on.
#[derive(Clone, Debug)]
pub struct Events {
    tx: broadcast::Sender<Notice>,
}

impl Default for Events {
    fn default() -> Events {
        Events {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Events {
    /// Send; never waits, and no subscriber is fine.
    pub fn send(&self, notice: Notice) {
        tracing::debug!(app = %notice.app, event = notice.event.as_str(), "event");
        let _ = self.tx.send(notice);
    }

    /// A receiver of every notice sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.tx.subscribe()
    }
}

/// Host up/down transitions between two observations (`before` empty: the
/// first, where only hosts found down are news).
pub fn host_transitions(
    before: &std::collections::BTreeMap<String, bool>,
    after: &std::collections::BTreeMap<String, bool>,
) -> Vec<Event> {
    let mut out = Vec::new();
    for (host, up) in after {
        match (before.get(host), up) {
            (Some(true) | None, false) => out.push(Event::HostDown { host: host.clone() }),
            (Some(false), true) => out.push(Event::HostUp { host: host.clone() }),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn hosts(v: &[(&str, bool)]) -> BTreeMap<String, bool> {
        v.iter().map(|(h, u)| (h.to_string(), *u)).collect()
    }

    #[test]
    fn hosts_going_down_and_coming_back_are_news_once() {
        let first = hosts(&[("a", true), ("b", false)]);
        assert_eq!(
            host_transitions(&BTreeMap::new(), &first),
            [Event::HostDown { host: "b".into() }]
        );
        assert!(host_transitions(&first, &first).is_empty());
        let later = hosts(&[("a", false), ("b", true)]);
        assert_eq!(
            host_transitions(&first, &later),
            [
                Event::HostDown { host: "a".into() },
                Event::HostUp { host: "b".into() }
            ]
        );
    }

    #[test]
    fn a_slow_subscriber_loses_the_oldest_and_never_blocks_the_sender() {
        let events = Events::default();
        let mut rx = events.subscribe();
        let notice = |n: usize| Notice {
            app: "demo".into(),
            destination: None,
            revision: Some(format!("r{n}")),
            version: None,
            at_unix: 0,
            event: Event::Deployed,
        };
        for n in 0..CAPACITY + 10 {
            events.send(notice(n));
        }
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(10))
        ));
        assert_eq!(rx.try_recv().unwrap().revision.as_deref(), Some("r10"));
    }
}
