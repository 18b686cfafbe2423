//! Every metric nodepulse exports: its name in reports, kind, unit, labels and meaning.
//! Each probe family lists its own (`probes/<family>/registry.rs`); the agent's own metrics
//! are here. The exporters take units and descriptions from here, and the
//! dashboards and fleet rules are checked against it (tests/deploy_files.rs); the
//! README's metrics table is kept in step by hand.

/// How a family's values add up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A distribution: exponential buckets, count and sum.
    Histogram,
    /// A monotonic count.
    Counter,
    /// A current value.
    Gauge,
}

/// One family of series that the probes produce.
#[derive(Debug)]
pub struct Family {
    /// Name in reports and the console; OTLP prefixes it with `nodepulse.`.
    pub name: &'static str,
    /// The probe family that produces it.
    pub probe: &'static str,
    pub kind: Kind,
    /// UCUM unit, as OTLP carries it.
    pub unit: &'static str,
    /// Labels every series of the family has (identity labels may add more, see
    /// README: Metrics).
    pub labels: &'static [&'static str],
    pub description: &'static str,
}

/// The agent's own metrics, under the names each exporter gives them.
#[derive(Debug)]
pub struct SelfMetric {
    pub otlp: &'static str,
    pub prometheus: &'static str,
    pub kind: Kind,
    pub unit: &'static str,
    pub labels: &'static [&'static str],
    pub description: &'static str,
}

pub const RUN_COUNT: SelfMetric = SelfMetric {
    otlp: "nodepulse.bpf.program.run_count",
    prometheus: "nodepulse_bpf_program_run_count_total",
    kind: Kind::Counter,
    unit: "{event}",
    labels: &["probe", "program"],
    description: "Times each kernel program ran since it was loaded (kernel BPF stats)",
};
pub const RUN_TIME: SelfMetric = SelfMetric {
    otlp: "nodepulse.bpf.program.run_time",
    // Prometheus takes seconds (the exporter divides); OTLP keeps the kernel's ns.
    prometheus: "nodepulse_bpf_program_run_time_seconds_total",
    kind: Kind::Counter,
    unit: "ns",
    labels: &["probe", "program"],
    description: "Kernel time each program used since it was loaded (kernel BPF stats)",
};
pub const PROBE_UP: SelfMetric = SelfMetric {
    otlp: "nodepulse.probe.up",
    prometheus: "nodepulse_probe_up",
    kind: Kind::Gauge,
    // Not "1": Prometheus' OTLP translation names a gauge in "1" `…_ratio`, and the
    // fleet rules (deploy/prometheus) query `nodepulse_probe_up` on both paths.
    unit: "{probe}",
    // `state` tells a probe that failed from one disabled or not applicable here.
    labels: &["probe", "attach", "state"],
    description: "1 if the probe is attached, 0 if not; state says why (up, down, disabled, \
                  not_applicable)",
};
pub const DROPPED: SelfMetric = SelfMetric {
    otlp: "nodepulse.dropped_events",
    prometheus: "nodepulse_dropped_events_total",
    kind: Kind::Counter,
    unit: "{event}",
    labels: &["reason"],
    description: "Events the kernel programs could not record, by reason",
};
pub const CPU_TIME: SelfMetric = SelfMetric {
    otlp: "process.cpu.time",
    prometheus: "nodepulse_process_cpu_seconds_total",
    kind: Kind::Counter,
    unit: "s",
    labels: &[],
    description: "CPU time the nodepulse process used since it started",
};
pub const MEMORY: SelfMetric = SelfMetric {
    otlp: "process.memory.usage",
    prometheus: "nodepulse_process_resident_memory_bytes",
    kind: Kind::Gauge,
    unit: "By",
    labels: &[],
    description: "Resident memory of the nodepulse process",
};

pub const ALARMS_OPEN: SelfMetric = SelfMetric {
    otlp: "nodepulse.alarms.open",
    prometheus: "nodepulse_alarms_open",
    kind: Kind::Gauge,
    unit: "{alarm}",
    labels: &[],
    description: "Regression alarms open now",
};

pub const AUDIT_FAILURES: SelfMetric = SelfMetric {
    otlp: "nodepulse.actions.audit.failures",
    prometheus: "nodepulse_actions_audit_failures_total",
    kind: Kind::Counter,
    unit: "{record}",
    labels: &[],
    description: "Action audit records not written (full disk, I/O error); none is ever half written",
};

/// OTLP only: the exporter's own outcome. The Prometheus names are those a collector's
/// Prometheus exporters give them.
pub const OTLP_BATCHES: SelfMetric = SelfMetric {
    otlp: "nodepulse.otlp.batches",
    prometheus: "nodepulse_otlp_batches_total",
    kind: Kind::Counter,
    unit: "{batch}",
    labels: &["signal", "outcome"],
    description: "Export batches by signal and outcome (dropped: queue full)",
};
pub const OTLP_BYTES: SelfMetric = SelfMetric {
    otlp: "nodepulse.otlp.bytes",
    prometheus: "nodepulse_otlp_bytes_total",
    kind: Kind::Counter,
    unit: "By",
    labels: &["signal"],
    description: "Bytes sent to the collector (compressed), retries included",
};

/// Every self metric.
pub const SELF_METRICS: &[&SelfMetric] = &[
    &RUN_COUNT,
    &RUN_TIME,
    &PROBE_UP,
    &DROPPED,
    &CPU_TIME,
    &MEMORY,
    &ALARMS_OPEN,
    &AUDIT_FAILURES,
    &OTLP_BATCHES,
    &OTLP_BYTES,
];

/// Every family the probes produce, each probe family's in turn.
pub fn families() -> impl Iterator<Item = &'static Family> {
    crate::probes::FAMILIES.iter().flat_map(|f| f.catalogue())
}

/// The families a probe produces.
pub fn families_of(probe: &str) -> impl Iterator<Item = &'static Family> {
    families().filter(move |f| f.probe == probe)
}

/// The family called `name`.
pub fn family(name: &str) -> Option<&'static Family> {
    families().find(|f| f.name == name)
}

/// For a configuration naming a family: `None` when nodepulse reports it, else what is
/// wrong and the names to choose from.
pub fn unknown_family(name: &str) -> Option<String> {
    if family(name).is_some() {
        return None;
    }
    let known: Vec<&str> = families().map(|f| f.name).collect();
    Some(format!(
        "names `{name}`, which is not a metric family nodepulse reports; use one of {} \
         (README: Metrics)",
        known.join(", ")
    ))
}

/// Unit of a family (`""` for one the catalogue does not know).
pub fn unit(name: &str) -> &'static str {
    family(name).map_or("", |f| f.unit)
}

/// Description of a family (`""` for one the catalogue does not know).
pub fn description(name: &str) -> &'static str {
    family(name).map_or("", |f| f.description)
}

/// OTLP name of a family: namespaced, since no semantic convention covers these.
pub fn otlp_name(family: &str) -> String {
    format!("nodepulse.{family}")
}

/// Prometheus name of a family, following the Prometheus conventions: the base unit as
/// a suffix (durations in seconds: the exporter converts nanoseconds), `_total` on
/// counters. `block.io.latency` → `nodepulse_block_io_latency_seconds`.
pub fn prometheus_name(family: &str) -> String {
    let (unit, kind) = self::family(family).map_or(("", Kind::Histogram), |f| (f.unit, f.kind));
    let suffix = match unit {
        "ns" | "s" => "_seconds",
        "By" => "_bytes",
        // Counts of things ({request}, {segment}) carry no unit suffix.
        _ => "",
    };
    let total = if kind == Kind::Counter { "_total" } else { "" };
    format!("nodepulse_{}{suffix}{total}", prometheus_label(family))
}

/// A valid Prometheus metric or label name: dots (and anything else outside
/// `[a-zA-Z0-9_]`) become underscores, and a leading digit gets an underscore before it.
pub fn prometheus_label(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// Every name a Prometheus server can query from nodepulse's scrape endpoint, with the
/// `_bucket`, `_count` and `_sum` series of histograms.
pub fn prometheus_series_names() -> Vec<String> {
    let mut out = Vec::new();
    for f in families() {
        let name = prometheus_name(f.name);
        if f.kind == Kind::Histogram {
            for suffix in ["_bucket", "_count", "_sum"] {
                out.push(format!("{name}{suffix}"));
            }
        }
        out.push(name);
    }
    out.extend(SELF_METRICS.iter().map(|m| m.prometheus.to_owned()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        assert_eq!(
            prometheus_name("block.io.latency"),
            "nodepulse_block_io_latency_seconds"
        );
        assert_eq!(
            prometheus_name("block.io.size"),
            "nodepulse_block_io_size_bytes"
        );
        assert_eq!(
            prometheus_name("block.io.errors"),
            "nodepulse_block_io_errors_total"
        );
        assert_eq!(
            prometheus_name("block.io.queue_depth"),
            "nodepulse_block_io_queue_depth"
        );
        assert_eq!(otlp_name("vm.vcpu.wait"), "nodepulse.vm.vcpu.wait");
        assert_eq!(prometheus_label("ceph.osd.id"), "ceph_osd_id");
        assert_eq!(prometheus_label("9lives"), "_9lives");
    }

    #[test]
    fn every_family_is_described_once() {
        let all: Vec<&Family> = families().collect();
        for (i, f) in all.iter().enumerate() {
            assert!(!f.description.is_empty() && !f.unit.is_empty(), "{f:?}");
            assert!(
                all[i + 1..].iter().all(|g| g.name != f.name),
                "{} listed twice",
                f.name
            );
        }
        let names = prometheus_series_names();
        assert!(names.contains(&"nodepulse_block_io_latency_seconds_bucket".to_owned()));
        assert!(names.contains(&"nodepulse_probe_up".to_owned()));
    }
}
