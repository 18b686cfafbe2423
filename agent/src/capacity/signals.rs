//! Utilisation and saturation signals derived from one interval's report: per block
//! device busy fraction, IOPS and bytes/s per operation, in-flight depth; the host's
//! and cgroups' pressure stall shares.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    aggregate::ExpHistogram,
    probes::block::{FAMILY_BUSY, FAMILY_DEPTH, FAMILY_DEVICE, FAMILY_SIZE},
    report::Report,
};

/// One signal of one resource for the interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Signal {
    /// What saturates: `io:<device>`, `cpu`, `memory`, `io` (host pressure) or
    /// `<resource>:<cgroup path>`.
    pub resource: String,
    /// `busy`, `iops`, `bytes_per_s`, `depth_mean`, `depth_p99`, `pressure_some`,
    /// `pressure_full`.
    pub name: &'static str,
    pub labels: BTreeMap<&'static str, String>,
    pub value: f64,
    /// UCUM: `1` for fractions, `{request}/s`, `By/s`, `{request}`.
    pub unit: &'static str,
}

/// What the knee learner needs of a device per interval: load and tail latency.
#[derive(Clone, Debug, Default)]
pub struct DeviceLoad {
    pub iops: f64,
    pub busy: Option<f64>,
    /// Completions of the interval, all operations.
    pub requests: u64,
    /// p99 device latency over all operations, ns.
    pub p99_ns: Option<f64>,
}

/// Block device signals, and per device the load and latency of the interval.
pub fn block(report: &Report) -> (Vec<Signal>, BTreeMap<String, DeviceLoad>) {
    let mut out = Vec::new();
    let mut merged: BTreeMap<String, ExpHistogram> = BTreeMap::new();
    let mut loads: BTreeMap<String, DeviceLoad> = BTreeMap::new();
    let interval_s = report.interval_s;
    let device_of =
        |labels: &BTreeMap<&'static str, String>| labels.get("device").cloned().unwrap_or_default();
    let signal = |device: &str, name, op: Option<&String>, value, unit| {
        let mut labels = BTreeMap::from([("device", device.to_owned())]);
        if let Some(op) = op {
            labels.insert("op", op.clone());
        }
        Signal {
            resource: format!("io:{device}"),
            name,
            labels,
            value,
            unit,
        }
    };
    for c in &report.counters {
        if c.family == FAMILY_BUSY && interval_s > 0.0 {
            let device = device_of(&c.labels);
            let busy = (c.delta as f64 / (interval_s * 1e9)).min(1.0);
            loads.entry(device.clone()).or_default().busy = Some(busy);
            out.push(signal(&device, "busy", None, busy, "1"));
        }
    }
    for s in &report.series {
        let device = device_of(&s.labels);
        match s.family {
            FAMILY_DEVICE => {
                out.push(signal(
                    &device,
                    "iops",
                    s.labels.get("op"),
                    s.rate_per_s,
                    "{request}/s",
                ));
                let load = loads.entry(device.clone()).or_default();
                load.iops += s.rate_per_s;
                load.requests += s.count;
                merged
                    .entry(device)
                    .or_default()
                    .merge(&s.delta_histogram());
            }
            FAMILY_SIZE if interval_s > 0.0 => {
                let bps = s.sum as f64 / interval_s;
                out.push(signal(
                    &device,
                    "bytes_per_s",
                    s.labels.get("op"),
                    bps,
                    "By/s",
                ));
            }
            FAMILY_DEPTH => {
                if let Some(mean) = s.mean {
                    out.push(signal(&device, "depth_mean", None, mean, "{request}"));
                }
                if let Some(Some(p99)) = s.quantiles.get("p99") {
                    out.push(signal(&device, "depth_p99", None, *p99, "{request}"));
                }
            }
            _ => {}
        }
    }
    for (device, h) in merged {
        loads.entry(device).or_default().p99_ns = h.quantile(0.99);
    }
    (out, loads)
}

/// Pressure shares as signals.
pub fn pressure(shares: &[super::psi::Share]) -> Vec<Signal> {
    shares
        .iter()
        .map(|s| {
            let mut labels = BTreeMap::from([("resource", s.resource.to_owned())]);
            let resource = if s.scope == "host" {
                s.resource.to_owned()
            } else {
                labels.insert("cgroup", s.scope.clone());
                format!("{}:{}", s.resource, s.scope)
            };
            Signal {
                resource,
                name: if s.kind == "some" {
                    "pressure_some"
                } else {
                    "pressure_full"
                },
                labels,
                value: s.share,
                unit: "1",
            }
        })
        .collect()
}
