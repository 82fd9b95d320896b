//! `policy`: what berth may do about a difference — the per-app settings
//! (`mode`, `self_heal`, `prune`, suspension) and the pure decision a
//! controller cycle takes from them ([`decide`]), with what it then reports
//! ([`Outcome`]).
//!
//! A leaf: `source::index` reads these settings from `berth.yml` and
//! `controller` acts on them, neither depends on the other through it.

/// What the controller may do about a difference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Apply: new revisions always; hand-made drift too when `self_heal`.
    Auto,
    /// Plan only: report drift (metrics, API), never touch a host.
    Detect,
}

/// Heals of one unit allowed within `window` before berth leaves it alone
/// (reported `flapping`) until the window passes, a new revision, or a
/// manual sync. Default 5 in 5 minutes, as doco-cd's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlapLimit {
    pub heals: u32,
    pub window: std::time::Duration,
}

impl Default for FlapLimit {
    fn default() -> FlapLimit {
        FlapLimit {
            heals: 5,
            window: std::time::Duration::from_secs(300),
        }
    }
}

/// One app instance's settings (`berth.yml`'s `policy:`, capped by the
/// command line), which a new revision of the index may change while the
/// app runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub mode: Mode,
    pub self_heal: bool,
    /// Overrides `x-berth.prune`.
    pub prune: Option<bool>,
    /// Observe and report only.
    pub suspended: bool,
    pub flap_limit: FlapLimit,
}

/// How a cycle that did not fail ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The fleet equals the revision.
    InSync,
    /// Differences berth may not (or not now) apply; or unknown hosts.
    Drifted,
    /// A plan was applied.
    Applied,
    /// Differences, and the app is suspended.
    Suspended,
}

impl Outcome {
    /// The name in metrics (`berth_reconcile_total{result}`), logs and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::InSync => "in_sync",
            Outcome::Drifted => "drifted",
            Outcome::Applied => "applied",
            Outcome::Suspended => "suspended",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything [`decide`] looks at, once a cycle has its plan.
#[derive(Clone, Copy, Debug)]
pub struct Situation<'a> {
    pub mode: Mode,
    pub self_heal: bool,
    pub suspended: bool,
    /// A manual sync asked for this cycle: retry even a failed revision.
    pub forced: bool,
    /// The revision this cycle rendered.
    pub revision: &'a str,
    /// The revision the fleet last converged to.
    pub settled: Option<&'a str>,
    /// A revision whose apply failed (not retried until new or forced).
    pub failed: Option<&'a str>,
    /// The plan has actions.
    pub has_actions: bool,
    /// Some hosts could not be observed.
    pub unknown_hosts: bool,
}

/// What the cycle does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Apply the plan.
    Apply,
    /// Touch nothing and report `outcome`; `settle`: record the revision as
    /// the one the fleet converged to.
    Report { outcome: Outcome, settle: bool },
}

/// The policy, as a pure function: a revision the fleet never converged to
/// is applied (once, if it fails, until a new revision or a manual sync);
/// hand-made drift on a settled revision only with `self_heal`; nothing in
/// `detect` mode or while suspended. An unknown host blocks neither the
/// others' convergence nor the report, but a fleet with one is not settled.
pub fn decide(s: &Situation<'_>) -> Decision {
    if !s.has_actions {
        return Decision::Report {
            outcome: if s.unknown_hosts {
                Outcome::Drifted
            } else {
                Outcome::InSync
            },
            settle: !s.unknown_hosts,
        };
    }
    let drifted = Decision::Report {
        outcome: Outcome::Drifted,
        settle: false,
    };
    if s.suspended {
        return Decision::Report {
            outcome: Outcome::Suspended,
            settle: false,
        };
    }
    let failed = s.failed == Some(s.revision);
    let new_revision = s.settled != Some(s.revision) && !failed;
    let allowed = match s.mode {
        Mode::Detect => false,
        Mode::Auto => s.self_heal || s.forced || new_revision,
    };
    if !allowed || (failed && !s.forced) {
        return drifted;
    }
    Decision::Apply
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the cycle's revision stands.
    #[derive(Clone, Copy, Debug)]
    enum Rev {
        /// Never converged to, never failed.
        New,
        /// The fleet converged to it (drift since is by hand).
        Settled,
        /// Its apply failed.
        Failed,
    }

    fn situation(
        mode: Mode,
        self_heal: bool,
        suspended: bool,
        forced: bool,
        rev: Rev,
        has_actions: bool,
        unknown_hosts: bool,
    ) -> Decision {
        decide(&Situation {
            mode,
            self_heal,
            suspended,
            forced,
            revision: "r2",
            settled: Some(if matches!(rev, Rev::Settled) {
                "r2"
            } else {
                "r1"
            }),
            failed: matches!(rev, Rev::Failed).then_some("r2"),
            has_actions,
            unknown_hosts,
        })
    }

    const APPLY: Decision = Decision::Apply;
    const DRIFTED: Decision = Decision::Report {
        outcome: Outcome::Drifted,
        settle: false,
    };
    const SUSPENDED: Decision = Decision::Report {
        outcome: Outcome::Suspended,
        settle: false,
    };

    /// The table of the policy with a plan that has actions: mode ×
    /// self_heal × suspended × forced × revision, every combination.
    #[test]
    fn every_policy_combination() {
        use Mode::{Auto, Detect};
        use Rev::{Failed, New, Settled};
        #[rustfmt::skip]
        let table = [
            // mode    heal   susp   forced rev      → decision
            (Auto,   false, false, false, New,     APPLY),
            (Auto,   false, false, false, Settled, DRIFTED),
            (Auto,   false, false, false, Failed,  DRIFTED),
            (Auto,   false, false, true,  New,     APPLY),
            (Auto,   false, false, true,  Settled, APPLY),
            (Auto,   false, false, true,  Failed,  APPLY),
            (Auto,   true,  false, false, New,     APPLY),
            (Auto,   true,  false, false, Settled, APPLY),
            (Auto,   true,  false, false, Failed,  DRIFTED),
            (Auto,   true,  false, true,  New,     APPLY),
            (Auto,   true,  false, true,  Settled, APPLY),
            (Auto,   true,  false, true,  Failed,  APPLY),
            (Detect, false, false, false, New,     DRIFTED),
            (Detect, false, false, false, Settled, DRIFTED),
            (Detect, false, false, false, Failed,  DRIFTED),
            (Detect, false, false, true,  New,     DRIFTED),
            (Detect, false, false, true,  Settled, DRIFTED),
            (Detect, false, false, true,  Failed,  DRIFTED),
            (Detect, true,  false, false, New,     DRIFTED),
            (Detect, true,  false, false, Settled, DRIFTED),
            (Detect, true,  false, false, Failed,  DRIFTED),
            (Detect, true,  false, true,  New,     DRIFTED),
            (Detect, true,  false, true,  Settled, DRIFTED),
            (Detect, true,  false, true,  Failed,  DRIFTED),
        ];
        for (mode, heal, susp, forced, rev, want) in table {
            for unknown in [false, true] {
                let got = situation(mode, heal, susp, forced, rev, true, unknown);
                assert_eq!(
                    got, want,
                    "{mode:?} heal={heal} forced={forced} {rev:?} unknown={unknown}"
                );
            }
        }
        // Suspended wins over everything, in every combination.
        for mode in [Auto, Detect] {
            for heal in [false, true] {
                for forced in [false, true] {
                    for rev in [New, Settled, Failed] {
                        assert_eq!(
                            situation(mode, heal, true, forced, rev, true, false),
                            SUSPENDED
                        );
                    }
                }
            }
        }
    }

    /// With nothing to do: in sync (and settled) unless a host is unknown,
    /// whatever the policy.
    #[test]
    fn no_actions_reports_in_sync_or_drifted() {
        for mode in [Mode::Auto, Mode::Detect] {
            for flags in 0..8u8 {
                let (heal, susp, forced) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
                for rev in [Rev::New, Rev::Settled, Rev::Failed] {
                    assert_eq!(
                        situation(mode, heal, susp, forced, rev, false, false),
                        Decision::Report {
                            outcome: Outcome::InSync,
                            settle: true
                        }
                    );
                    assert_eq!(
                        situation(mode, heal, susp, forced, rev, false, true),
                        Decision::Report {
                            outcome: Outcome::Drifted,
                            settle: false
                        }
                    );
                }
            }
        }
    }

    #[test]
    fn outcome_names_are_the_metric_labels() {
        let names: Vec<&str> = [
            Outcome::InSync,
            Outcome::Drifted,
            Outcome::Applied,
            Outcome::Suspended,
        ]
        .map(Outcome::as_str)
        .to_vec();
        assert_eq!(names, ["in_sync", "drifted", "applied", "suspended"]);
    }
}
