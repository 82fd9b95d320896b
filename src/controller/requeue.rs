//! What a cycle can fail with ([`CycleError`]), why a cycle ran
//! ([`Trigger`]), and when the next one runs ([`Requeue`]): the error policy
//! in one place, as kube-runtime's `error_policy`.

use std::time::Duration;

use crate::policy::Outcome;

/// Why a cycle could not finish. The message is what `last_error` shows
/// (served unauthenticated: never a secret, never a refused file's content).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CycleError {
    /// The source could not be fetched; the last checkout stays.
    #[error("{0}")]
    Source(String),
    /// The revision is refused (config, secrets, files): nothing touched.
    #[error("revision {revision}: {message}")]
    Revision { revision: String, message: String },
    /// Someone else holds Kamal's deploy lock: retried with the backoff,
    /// the revision is not parked.
    #[error("revision {revision}: waiting: {message}")]
    Locked { revision: String, message: String },
    /// The apply failed: the revision is parked until a new one or a sync.
    #[error("revision {revision}: {message}")]
    Apply { revision: String, message: String },
    /// Anything else (a task that panicked, a login that cannot be built).
    #[error("{0}")]
    Internal(String),
}

/// What started a cycle, recorded in its tracing span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The loop's first cycle.
    Start,
    /// The poll interval elapsed.
    Interval,
    /// Right after an apply: observe again to confirm.
    Confirm,
    /// The backoff after an error elapsed.
    Backoff,
    /// A signed webhook arrived.
    Webhook,
    /// `POST /api/v1/apps/{app}/sync`: retries even a failed revision.
    Sync,
    /// Docker events from a host (debounced).
    Event,
    /// Files changed in a `--dir` source.
    Files,
    /// A new revision of `berth.yml` changed the app's policy.
    Policy,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Interval => "interval",
            Trigger::Confirm => "confirm",
            Trigger::Backoff => "backoff",
            Trigger::Webhook => "webhook",
            Trigger::Sync => "sync",
            Trigger::Event => "event",
            Trigger::Files => "files",
            Trigger::Policy => "policy",
        }
    }
}

/// The longest wait after an error.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Applies in a row confirmed at once before falling back to the interval,
/// so a plan that never converges cannot loop hot.
pub const CONFIRMS: u32 = 3;

/// The loop's memory between cycles for scheduling the next one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Requeue {
    backoff: Duration,
    applies_in_a_row: u32,
}

impl Requeue {
    /// How long to wait before the next cycle (before jitter), and what
    /// will have triggered it if nothing wakes the loop sooner.
    pub fn next(
        &mut self,
        result: &Result<Outcome, CycleError>,
        interval: Duration,
    ) -> (Duration, Trigger) {
        match result {
            Ok(Outcome::Applied) if self.applies_in_a_row < CONFIRMS => {
                self.applies_in_a_row += 1;
                self.backoff = Duration::ZERO;
                (Duration::ZERO, Trigger::Confirm)
            }
            Ok(_) => {
                self.applies_in_a_row = 0;
                self.backoff = Duration::ZERO;
                (interval, Trigger::Interval)
            }
            Err(_) => {
                self.applies_in_a_row = 0;
                self.backoff = (self.backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                (self.backoff.min(interval), Trigger::Backoff)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn err() -> Result<Outcome, CycleError> {
        Err(CycleError::Source("down".into()))
    }

    #[test]
    fn errors_back_off_exponentially_up_to_the_cap_and_the_interval() {
        let mut r = Requeue::default();
        let waits: Vec<u64> = (0..12)
            .map(|_| r.next(&err(), Duration::from_secs(3600)).0.as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        // Never longer than the interval.
        assert_eq!(r.next(&err(), MIN), (MIN, Trigger::Backoff));
        // A success resets it.
        assert_eq!(r.next(&Ok(Outcome::InSync), MIN), (MIN, Trigger::Interval));
        assert_eq!(r.next(&err(), MIN).0, Duration::from_secs(1));
    }

    #[test]
    fn applies_are_confirmed_at_once_a_few_times_then_wait() {
        let mut r = Requeue::default();
        for _ in 0..CONFIRMS {
            assert_eq!(
                r.next(&Ok(Outcome::Applied), MIN),
                (Duration::ZERO, Trigger::Confirm)
            );
        }
        assert_eq!(r.next(&Ok(Outcome::Applied), MIN), (MIN, Trigger::Interval));
        // In sync again: the count starts over.
        r.next(&Ok(Outcome::InSync), MIN);
        assert_eq!(r.next(&Ok(Outcome::Applied), MIN).1, Trigger::Confirm);
        // An error between applies starts it over too.
        r.next(&err(), MIN);
        assert_eq!(r.next(&Ok(Outcome::Applied), MIN).1, Trigger::Confirm);
    }

    #[test]
    fn messages_are_what_last_error_showed() {
        let e = CycleError::Locked {
            revision: "abc".into(),
            message: "locked by kamal".into(),
        };
        assert_eq!(e.to_string(), "revision abc: waiting: locked by kamal");
        let e = CycleError::Apply {
            revision: "abc".into(),
            message: "health check failed".into(),
        };
        assert_eq!(e.to_string(), "revision abc: health check failed");
    }
}
