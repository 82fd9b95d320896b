//! The flap limit, as a pure tracker: when each unit (a container on a
//! host) was last healed, and which units have reached their
//! [`FlapLimit`] — at most `heals` heal attempts in any `window` — and are
//! left alone until the oldest attempt ages out of the window, a new
//! revision or a manual sync ([`Heals::reset`]).
//!
//! An attempt counts whether or not the heal took: a container that exits
//! at once may look running when `start` returns, or never; either way it
//! is restarted again and again (each of its exits wakes the loop through
//! docker events). Memory: at most `heals` instants per unit healed within
//! the window; units whose attempts aged out are dropped.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use crate::policy::FlapLimit;

/// A unit: `(host, container)`.
pub type UnitKey = (String, String);

#[derive(Debug, Default)]
pub struct Heals {
    attempts: BTreeMap<UnitKey, VecDeque<Instant>>,
    /// Units reported flapping (so that reaching the limit is news once).
    flapping: BTreeSet<UnitKey>,
}

impl Heals {
    /// Forget every attempt (a new revision, a manual sync).
    pub fn reset(&mut self) {
        self.attempts.clear();
        self.flapping.clear();
    }

    fn prune(&mut self, limit: FlapLimit, now: Instant) {
        for times in self.attempts.values_mut() {
            while times
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= limit.window)
            {
                times.pop_front();
            }
        }
        self.attempts.retain(|_, t| !t.is_empty());
    }

    /// The units at their limit now: berth leaves them alone.
    pub fn at_limit(&mut self, limit: FlapLimit, now: Instant) -> BTreeSet<UnitKey> {
        self.prune(limit, now);
        let at: BTreeSet<UnitKey> = self
            .attempts
            .iter()
            .filter(|(_, t)| t.len() >= limit.heals as usize)
            .map(|(k, _)| k.clone())
            .collect();
        self.flapping.retain(|k| at.contains(k));
        at
    }

    /// Of `at_limit`, the units not reported flapping before (marked now).
    pub fn newly_flapping(&mut self, at_limit: &BTreeSet<UnitKey>) -> Vec<UnitKey> {
        at_limit
            .iter()
            .filter(|k| self.flapping.insert((*k).clone()))
            .cloned()
            .collect()
    }

    /// A heal of `unit` is about to run.
    pub fn record(&mut self, unit: UnitKey, limit: FlapLimit, now: Instant) {
        let times = self.attempts.entry(unit).or_default();
        times.push_back(now);
        // Only the newest `heals` matter.
        while times.len() > limit.heals.min(1024) as usize {
            times.pop_front();
        }
    }

    /// Heal attempts of `unit` within the window (for its reason).
    pub fn count(&self, unit: &UnitKey) -> usize {
        self.attempts.get(unit).map_or(0, VecDeque::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn unit(c: &str) -> UnitKey {
        ("10.0.0.1".into(), c.into())
    }

    #[test]
    fn five_heals_in_the_window_then_left_alone_until_the_oldest_ages_out() {
        let limit = FlapLimit::default();
        let t0 = Instant::now();
        let mut h = Heals::default();
        for i in 0..5 {
            let now = t0 + Duration::from_secs(i * 10);
            assert!(h.at_limit(limit, now).is_empty(), "heal {i} allowed");
            h.record(unit("web"), limit, now);
        }
        let now = t0 + Duration::from_secs(60);
        let at = h.at_limit(limit, now);
        assert_eq!(at, BTreeSet::from([unit("web")]));
        assert_eq!(h.newly_flapping(&at), [unit("web")]);
        assert!(h.newly_flapping(&at).is_empty(), "news once");
        assert_eq!(h.count(&unit("web")), 5);
        // Another unit is not held back by this one.
        h.record(unit("worker"), limit, now);
        assert_eq!(h.at_limit(limit, now), BTreeSet::from([unit("web")]));
        // The first attempt ages out at 300 s: one more heal is allowed.
        let later = t0 + Duration::from_secs(300);
        assert!(h.at_limit(limit, later).is_empty());
        h.record(unit("web"), limit, later);
        assert_eq!(
            h.at_limit(limit, later),
            BTreeSet::from([unit("web")]),
            "still 5 within the last 300 s"
        );
        // Flapping again after leaving it is news again.
        let at = h.at_limit(limit, later);
        assert_eq!(h.newly_flapping(&at), [unit("web")]);
    }

    #[test]
    fn a_reset_forgets_and_a_disabled_limit_never_holds_back() {
        let limit = FlapLimit {
            heals: 2,
            window: Duration::from_secs(60),
        };
        let now = Instant::now();
        let mut h = Heals::default();
        h.record(unit("web"), limit, now);
        h.record(unit("web"), limit, now);
        assert_eq!(h.at_limit(limit, now).len(), 1);
        h.reset();
        assert!(h.at_limit(limit, now).is_empty());
        let none = FlapLimit {
            heals: u32::MAX,
            window: Duration::ZERO,
        };
        for _ in 0..50 {
            h.record(unit("web"), none, now);
        }
        assert!(h.at_limit(none, now).is_empty());
    }
}
