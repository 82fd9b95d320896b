//! `apply::schedule`: the rollout order, decided before a host is touched.
//!
//! Pure: a [`Plan`] and the boot batch size in, a [`Schedule`] out — the
//! stages the executor walks one after the other: prep on every host →
//! each accessory → each proxy → per role (in plan order: primary first),
//! batches of at most `boot.limit` actions run at once, the role's leftover
//! versions stopped last → each orphan → finish where the app booted.

use crate::plan::{Action, ActionKind, Plan, Unit};

/// What the executor does, in order.
#[derive(Debug, PartialEq)]
pub struct Schedule<'p> {
    /// Every host the plan touches, in plan order (the hooks' `KAMAL_HOSTS`).
    pub hosts: Vec<String>,
    pub stages: Vec<Stage<'p>>,
}

#[derive(Debug, PartialEq)]
pub enum Stage<'p> {
    /// On every host at once: the `kamal` network and registry login, and
    /// on `booting` hosts the image pulled, before anything is stopped.
    Prep {
        hosts: Vec<String>,
        booting: Vec<String>,
    },
    Accessory(&'p Action),
    Proxy(&'p Action),
    /// Actions of one role run at once, between its app-boot hooks.
    Batch {
        role: &'p str,
        actions: Vec<&'p Action>,
    },
    Orphan(&'p Action),
    /// On every host where the app booted, at once: `latest` tag, audit,
    /// prune.
    Finish {
        hosts: Vec<String>,
    },
}

impl Stage<'_> {
    /// The plan's actions this stage carries out.
    pub fn actions(&self) -> Vec<&Action> {
        match self {
            Stage::Accessory(a) | Stage::Proxy(a) | Stage::Orphan(a) => vec![*a],
            Stage::Batch { actions, .. } => actions.clone(),
            Stage::Prep { .. } | Stage::Finish { .. } => Vec::new(),
        }
    }
}

/// Hosts in first-appearance order, each once.
fn distinct_hosts<'p>(actions: impl Iterator<Item = &'p Action>) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    for a in actions {
        if !hosts.contains(&a.host) {
            hosts.push(a.host.clone());
        }
    }
    hosts
}

/// The stages of `plan`, app actions in batches of `boot_batch` (at least 1).
pub fn schedule(plan: &Plan, boot_batch: usize) -> Schedule<'_> {
    let hosts = distinct_hosts(plan.actions.iter());
    let booting = distinct_hosts(plan.actions.iter().filter(|a| {
        matches!(a.unit, Unit::App { .. })
            && matches!(a.kind, ActionKind::Create | ActionKind::Replace)
    }));
    let mut stages = vec![Stage::Prep {
        hosts: hosts.clone(),
        booting: booting.clone(),
    }];
    let of = |pick: fn(&Unit) -> bool| plan.actions.iter().filter(move |a| pick(&a.unit));
    stages.extend(of(|u| matches!(u, Unit::Accessory { .. })).map(Stage::Accessory));
    stages.extend(of(|u| matches!(u, Unit::Proxy)).map(Stage::Proxy));

    let mut roles: Vec<&str> = Vec::new();
    for a in &plan.actions {
        if let Unit::App { role } = &a.unit
            && !roles.contains(&role.as_str())
        {
            roles.push(role);
        }
    }
    let batch = boot_batch.max(1);
    for role in roles {
        // Leftover versions are stopped only after every other action of
        // the role: a route may still point at them until then.
        let (stops, others): (Vec<&Action>, Vec<&Action>) = plan
            .actions
            .iter()
            .filter(|a| matches!(&a.unit, Unit::App { role: r } if r == role))
            .partition(|a| a.kind == ActionKind::Stop);
        for list in [others, stops] {
            for chunk in list.chunks(batch) {
                stages.push(Stage::Batch {
                    role,
                    actions: chunk.to_vec(),
                });
            }
        }
    }

    stages.extend(of(|u| matches!(u, Unit::Orphan)).map(Stage::Orphan));
    stages.push(Stage::Finish { hosts: booting });
    Schedule { hosts, stages }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn action(host: usize, unit: Unit, kind: ActionKind, n: usize) -> Action {
        Action {
            host: format!("h{host}"),
            unit,
            container: format!("c{n}"),
            kind,
            replaces: None,
            reasons: Vec::new(),
        }
    }

    /// What one host plans, as `plan::plan` emits it: accessories and the
    /// proxy, per role its main actions (one on the container, or an
    /// env-file rewrite and a route for a container in sync) followed by
    /// the stops of leftover versions, then orphans.
    #[derive(Clone, Debug)]
    struct HostPlan {
        accessories: Vec<ActionKind>,
        proxy: Option<ActionKind>,
        /// Per role: the main actions, and how many leftovers to stop.
        roles: Vec<(Vec<ActionKind>, usize)>,
        orphans: usize,
    }

    fn main_actions() -> impl Strategy<Value = Vec<ActionKind>> {
        prop_oneof![
            Just(vec![]),
            Just(vec![ActionKind::Create]),
            Just(vec![ActionKind::Start]),
            Just(vec![ActionKind::Replace]),
            Just(vec![ActionKind::WriteEnvFile]),
            Just(vec![ActionKind::Route]),
            Just(vec![ActionKind::WriteEnvFile, ActionKind::Route]),
        ]
    }

    fn host_plan(roles: usize) -> impl Strategy<Value = HostPlan> {
        (
            proptest::collection::vec(
                prop_oneof![Just(ActionKind::Create), Just(ActionKind::Reboot)],
                0..3,
            ),
            proptest::option::of(prop_oneof![
                Just(ActionKind::Create),
                Just(ActionKind::Start)
            ]),
            proptest::collection::vec((main_actions(), 0..3usize), roles),
            0..3usize,
        )
            .prop_map(|(accessories, proxy, roles, orphans)| HostPlan {
                accessories,
                proxy,
                roles,
                orphans,
            })
    }

    /// A plan in `plan::plan`'s order, and the role order (primary first).
    fn planned(hosts: &[HostPlan]) -> (Plan, Vec<String>) {
        let role_names: Vec<String> = (0..hosts.first().map_or(0, |h| h.roles.len()))
            .map(|r| format!("r{r}"))
            .collect();
        let mut actions = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        for (i, h) in hosts.iter().enumerate() {
            for (j, k) in h.accessories.iter().enumerate() {
                let unit = Unit::Accessory {
                    name: format!("a{j}"),
                };
                actions.push(action(i, unit, *k, next()));
            }
        }
        for (i, h) in hosts.iter().enumerate() {
            if let Some(k) = h.proxy {
                actions.push(action(i, Unit::Proxy, k, next()));
            }
        }
        for (r, role) in role_names.iter().enumerate() {
            for (i, h) in hosts.iter().enumerate() {
                let (main, stops) = &h.roles[r];
                let unit = || Unit::App { role: role.clone() };
                for k in main {
                    actions.push(action(i, unit(), *k, next()));
                }
                for _ in 0..*stops {
                    actions.push(action(i, unit(), ActionKind::Stop, next()));
                }
            }
        }
        for (i, h) in hosts.iter().enumerate() {
            for _ in 0..h.orphans {
                actions.push(action(i, Unit::Orphan, ActionKind::Remove, next()));
            }
        }
        let plan = Plan {
            actions,
            ..Plan::default()
        };
        (plan, role_names)
    }

    fn fleet() -> impl Strategy<Value = Vec<HostPlan>> {
        (0..4usize).prop_flat_map(|roles| proptest::collection::vec(host_plan(roles), 0..7))
    }

    /// Where each stage kind falls in the rollout.
    fn rank(s: &Stage, roles: &[String]) -> (usize, usize) {
        match s {
            Stage::Prep { .. } => (0, 0),
            Stage::Accessory(_) => (1, 0),
            Stage::Proxy(_) => (2, 0),
            Stage::Batch { role, .. } => (3, roles.iter().position(|r| r == role).unwrap()),
            Stage::Orphan(_) => (4, 0),
            Stage::Finish { .. } => (5, 0),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn a_schedule_runs_the_plan_in_rollout_order(hosts in fleet(), batch in 0..5usize) {
            let (plan, roles) = planned(&hosts);
            let s = schedule(&plan, batch);
            let index = |a: &Action| plan.actions.iter().position(|x| std::ptr::eq(x, a)).unwrap();
            let order: Vec<usize> = s.stages.iter().flat_map(|st| st.actions()).map(index).collect();

            // Every action exactly once.
            let mut sorted = order.clone();
            sorted.sort();
            prop_assert_eq!(sorted, (0..plan.actions.len()).collect::<Vec<_>>());

            // Stages in the plan's order: prep, accessories, proxies, roles
            // primary first, orphans, finish.
            let ranks: Vec<(usize, usize)> = s.stages.iter().map(|st| rank(st, &roles)).collect();
            prop_assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{:?}", ranks);

            for st in &s.stages {
                if let Stage::Batch { role, actions } = st {
                    // No batch exceeds the limit, none is empty, each is one role's.
                    prop_assert!(!actions.is_empty() && actions.len() <= batch.max(1));
                    let of_role = Unit::App { role: role.to_string() };
                    prop_assert!(actions.iter().all(|a| a.unit == of_role), "{:?}", actions);
                }
            }

            // A host's actions keep their relative order.
            for h in &s.hosts {
                let planned: Vec<usize> = (0..plan.actions.len()).filter(|&i| plan.actions[i].host == *h).collect();
                let run: Vec<usize> = order.iter().copied().filter(|&i| plan.actions[i].host == *h).collect();
                prop_assert_eq!(planned, run, "host {}", h);
            }

            // Prep first, on every host the plan touches; finish last; the
            // app is pulled and finished exactly where it boots.
            let boots: Vec<String> = distinct_hosts(plan.actions.iter().filter(|a| {
                matches!(a.unit, Unit::App { .. }) && matches!(a.kind, ActionKind::Create | ActionKind::Replace)
            }));
            prop_assert_eq!(&s.hosts, &distinct_hosts(plan.actions.iter()));
            prop_assert_eq!(&s.stages[0], &Stage::Prep { hosts: s.hosts.clone(), booting: boots.clone() });
            prop_assert_eq!(s.stages.last(), Some(&Stage::Finish { hosts: boots }));
        }
    }

    #[test]
    fn leftover_stops_run_after_the_roles_boots_in_their_own_batches() {
        let web = || Unit::App { role: "web".into() };
        let plan = Plan {
            actions: vec![
                action(1, web(), ActionKind::Replace, 1),
                action(1, web(), ActionKind::Stop, 2),
                action(2, web(), ActionKind::Replace, 3),
                action(3, web(), ActionKind::Create, 4),
            ],
            ..Plan::default()
        };
        let s = schedule(&plan, 2);
        let batches: Vec<Vec<&str>> = s
            .stages
            .iter()
            .filter(|st| matches!(st, Stage::Batch { .. }))
            .map(|st| st.actions().iter().map(|a| a.container.as_str()).collect())
            .collect();
        assert_eq!(batches, [vec!["c1", "c3"], vec!["c4"], vec!["c2"]]);
    }
}
