//! `/metrics` through the `prometheus-client` crate: one [`Scrape`] (a
//! `Collector`) built from the app instances' snapshots at each scrape, so
//! nothing is kept twice and a removed instance's series are gone at once.
//!
//! `prometheus-client` (the Prometheus project's own Rust client, OpenMetrics
//! first) over the older `prometheus` crate: it is maintained by the
//! Prometheus org, encodes OpenMetrics natively and takes scrape-time
//! collectors, which is what berth's metrics are (views of `AppStatus`).
//!
//! The format is negotiated: OpenMetrics 1.0 when the scraper accepts it
//! (Prometheus asks for it first), else the classic text format 0.0.4 with
//! the same samples. Every documented name and label is kept; counters are
//! declared without `_total` in OpenMetrics and with it in 0.0.4, as each
//! format wants. Process metrics follow the Prometheus client conventions
//! (`process_*`, read from `/proc/self`), and `berth_build_info` names the
//! version.

use std::collections::BTreeMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::controller::apps::IndexStatus;
use crate::controller::{AppStatus, BUCKETS};

/// `application/openmetrics-text` (with `# EOF`).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format.
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Everything one scrape shows.
#[derive(Debug, Default)]
pub struct Scrape {
    pub apps: Vec<AppStatus>,
    pub index: IndexStatus,
    /// `(provider, event, result, count)`; `None`: no notifications set up.
    pub notifications: Option<Vec<(String, String, String, u64)>>,
    /// Read from `/proc/self` (none where there is no procfs).
    pub process: Option<Process>,
}

/// The process, as Prometheus clients report it.
#[derive(Debug, Default, Clone)]
pub struct Process {
    pub cpu_seconds: f64,
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub start_time_seconds: f64,
}

impl Process {
    /// This process, from `/proc/self/stat`, `/proc/stat` and `/proc/self/fd`.
    pub fn current() -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The fields after the command name (which may hold spaces).
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
        let ticks = rustix::param::clock_ticks_per_second().max(1) as f64;
        let page = rustix::param::page_size() as u64;
        let boot: f64 = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        Some(Process {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            resident_memory_bytes: field(24)? * page,
            virtual_memory_bytes: field(23)?,
            // The directory's own handle is one of them.
            open_fds: open_fds.saturating_sub(1),
            max_fds,
            start_time_seconds: boot + field(22)? as f64 / ticks,
        })
    }
}

type Labels = Vec<(&'static str, String)>;

fn instance(a: &AppStatus) -> Labels {
    vec![
        ("app", a.app.clone()),
        ("destination", a.destination.clone().unwrap_or_default()),
    ]
}

fn with(mut labels: Labels, more: &[(&'static str, &str)]) -> Labels {
    labels.extend(more.iter().map(|(k, v)| (*k, v.to_string())));
    labels
}

fn gauges<V: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, V)>,
) -> std::fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        if labels.is_empty() {
            // `name 1`, not `name{} 1`.
            family.encode_gauge(&v)?;
        } else {
            family.encode_family(&labels)?.encode_gauge(&v)?;
        }
    }
    Ok(())
}

/// `name` without `_total`: the encoder adds it to the samples.
fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> std::fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        family
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let apps = &self.apps;
        gauges(
            &mut enc,
            "berth_app_in_sync",
            "1 when every host runs what the repo declares.",
            apps.iter()
                .map(|a| (instance(a), u8::from(a.in_sync && a.observed) as u64)),
        )?;
        let mut drift = Vec::new();
        let mut flapping = Vec::new();
        for a in apps {
            let mut counts: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
            for d in &a.drift {
                *counts.entry((&d.host, &d.role, &d.reason)).or_default() += 1;
            }
            for ((host, role, reason), n) in counts {
                drift.push((
                    with(
                        instance(a),
                        &[("host", host), ("role", role), ("reason", reason)],
                    ),
                    n,
                ));
            }
            let mut counts: BTreeMap<(&str, &str), u64> = BTreeMap::new();
            for f in &a.flapping {
                *counts.entry((&f.host, &f.unit)).or_default() += 1;
            }
            for ((host, role), n) in counts {
                flapping.push((with(instance(a), &[("host", host), ("role", role)]), n));
            }
        }
        gauges(
            &mut enc,
            "berth_drift_units",
            "Units that differ from the repo.",
            drift,
        )?;
        gauges(
            &mut enc,
            "berth_flapping_units",
            "Units healed up to their flap limit and left alone for now.",
            flapping,
        )?;
        counters(
            &mut enc,
            "berth_reconcile",
            "Reconcile cycles by result.",
            apps.iter().flat_map(|a| {
                a.reconciles
                    .iter()
                    .map(|(result, n)| (with(instance(a), &[("result", result)]), *n))
            }),
        )?;
        {
            let mut family = enc.encode_descriptor(
                "berth_reconcile_duration_seconds",
                "Reconcile cycle duration.",
                None,
                MetricType::Histogram,
            )?;
            for a in apps {
                // The encoder accumulates: per-bucket counts, then +Inf.
                let mut below = 0;
                let mut buckets: Vec<(f64, u64)> = BUCKETS
                    .iter()
                    .zip(a.durations.buckets)
                    .map(|(le, cumulative)| {
                        let n = cumulative - below;
                        below = cumulative;
                        (*le, n)
                    })
                    .collect();
                buckets.push((f64::MAX, a.durations.count - below));
                let labels = instance(a);
                family
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(
                        a.durations.sum,
                        a.durations.count,
                        &buckets,
                        None,
                    )?;
            }
        }
        gauges(
            &mut enc,
            "berth_host_up",
            "1 when the host answered the last observation.",
            apps.iter().flat_map(|a| {
                a.hosts
                    .iter()
                    .map(|(host, up)| (with(instance(a), &[("host", host)]), u64::from(*up)))
            }),
        )?;
        gauges(
            &mut enc,
            "berth_source_info",
            "The revision last fetched.",
            apps.iter().filter_map(|a| {
                let r = a.revision.as_deref()?;
                Some((with(instance(a), &[("revision", r)]), 1u64))
            }),
        )?;
        gauges(
            &mut enc,
            "berth_source_verified",
            "With --verify: 1 when the newest revision's signature verified, 0 when it was refused.",
            apps.iter()
                .filter_map(|a| Some((instance(a), u64::from(a.source_verified?)))),
        )?;
        gauges(
            &mut enc,
            "berth_source_signer_info",
            "The key that signed the revision in use.",
            apps.iter().filter_map(|a| {
                let s = a.signature.as_ref()?;
                Some((
                    with(
                        instance(a),
                        &[("fingerprint", &s.fingerprint), ("signer", &s.signer)],
                    ),
                    1u64,
                ))
            }),
        )?;
        gauges(
            &mut enc,
            "berth_last_apply_timestamp_seconds",
            "When berth last changed the fleet.",
            apps.iter()
                .filter_map(|a| Some((instance(a), a.last_apply_unix?))),
        )?;
        gauges(
            &mut enc,
            "berth_last_success_timestamp_seconds",
            "When a reconcile cycle last completed without error.",
            apps.iter()
                .filter_map(|a| Some((instance(a), a.last_success_unix?))),
        )?;
        let index = &self.index;
        gauges(
            &mut enc,
            "berth_index_valid",
            "1 when the newest index (berth.yml at the followed revision, or --apps-file) is in use; 0 while it does not load and the last good set of apps runs.",
            [(Labels::new(), u64::from(index.error.is_none()))],
        )?;
        gauges(
            &mut enc,
            "berth_index_apps",
            "App instances running (one per app and destination).",
            [(Labels::new(), apps.len() as u64)],
        )?;
        gauges(
            &mut enc,
            "berth_index_removed_apps",
            "App instances the index stopped listing while berth ran: their hosts were left as they are.",
            [(Labels::new(), index.removed.len() as u64)],
        )?;
        if let Some(counts) = &self.notifications {
            counters(
                &mut enc,
                "berth_notifications",
                "Notifications by provider, event and result (sent, failed, dropped).",
                counts.iter().map(|(provider, event, result, n)| {
                    (
                        vec![
                            ("provider", provider.clone()),
                            ("event", event.clone()),
                            ("result", result.clone()),
                        ],
                        *n,
                    )
                }),
            )?;
        }
        gauges(
            &mut enc,
            "berth_build_info",
            "berth's version (always 1).",
            [(
                vec![("version", env!("CARGO_PKG_VERSION").to_string())],
                1u64,
            )],
        )?;
        if let Some(p) = &self.process {
            let mut cpu = enc.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                MetricType::Counter,
            )?;
            cpu.encode_counter::<NoLabelSet, _, u64>(&p.cpu_seconds, None)?;
            for (name, help, v) in [
                (
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes.",
                    p.resident_memory_bytes as f64,
                ),
                (
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes.",
                    p.virtual_memory_bytes as f64,
                ),
                (
                    "process_open_fds",
                    "Number of open file descriptors.",
                    p.open_fds as f64,
                ),
                (
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    p.start_time_seconds,
                ),
            ] {
                gauges(&mut enc, name, help, [(Labels::new(), v)])?;
            }
            if let Some(max) = p.max_fds {
                gauges(
                    &mut enc,
                    "process_max_fds",
                    "Maximum number of open file descriptors.",
                    [(Labels::new(), max)],
                )?;
            }
        }
        Ok(())
    }
}

/// The exposition of `scrape`, and its content type: OpenMetrics when
/// `openmetrics`, else the classic text format.
pub fn render(scrape: Scrape, openmetrics: bool) -> (&'static str, String) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    if openmetrics {
        return (OPENMETRICS, out);
    }
    (TEXT, classic_text(&out))
}

/// OpenMetrics → text format 0.0.4: no `# EOF`, no `# UNIT`, and a
/// counter's family named as its `_total` samples are.
fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Whether the scraper's `Accept` asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            let mut params = part.split(';').map(str::trim);
            params.next() == Some("application/openmetrics-text")
                && !params.any(|p| p.replace(' ', "") == "q=0")
        })
    })
}
