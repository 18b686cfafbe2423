//! Utilisation and saturation signals derived from one interval's report: per block
//! device busy fraction, IOPS and bytes/s per operation, in-flight depth; run-queue
//! saturation per CPU and host-wide; vCPU wait as a share of run time per VM; the
//! host's and cgroups' pressure stall shares.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    aggregate::{ExpHistogram, budget::OTHER},
    probes::{
        block::{FAMILY_BUSY, FAMILY_DEPTH, FAMILY_DEVICE, FAMILY_SIZE},
        kvm::FAMILY_RUN,
        sched::{FAMILY_SATURATED, FAMILY_VM},
    },
    report::Report,
};

/// One signal of one resource for the interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Signal {
    /// What saturates: `io:<device>`, `cpu`, `cpu:<n>`, `vm:<name>`, `memory`, `io`
    /// (host pressure) or `<resource>:<cgroup path>`.
    pub resource: String,
    /// `busy`, `iops`, `bytes_per_s`, `depth_mean`, `depth_p99`, `runqueue_saturation`,
    /// `vcpu_wait_share`, `pressure_some`, `pressure_full`.
    pub name: &'static str,
    pub labels: BTreeMap<&'static str, String>,
    pub value: f64,
    /// UCUM: `1` for fractions, `{request}/s`, `By/s`, `{request}`.
    pub unit: &'static str,
}

impl Signal {
    /// A block device's signal, of one operation (`op`) or of the whole device.
    pub fn device(
        device: &str,
        name: &'static str,
        op: Option<&str>,
        value: f64,
        unit: &'static str,
    ) -> Self {
        let mut labels = BTreeMap::from([("device", device.to_owned())]);
        if let Some(op) = op {
            labels.insert("op", op.to_owned());
        }
        Self {
            resource: format!("io:{device}"),
            name,
            labels,
            value,
            unit,
        }
    }
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

/// Per device, the interval's load and p99 from its latency series (all operations):
/// what the agent takes from its report and a replay from a recording.
#[derive(Default)]
pub struct Loads {
    loads: BTreeMap<String, DeviceLoad>,
    merged: BTreeMap<String, ExpHistogram>,
}

impl Loads {
    /// One `FAMILY_DEVICE` series: its rate, completions and latency histogram.
    pub fn add(&mut self, device: &str, rate_per_s: f64, count: u64, latency: &ExpHistogram) {
        let load = self.loads.entry(device.to_owned()).or_default();
        load.iops += rate_per_s;
        load.requests += count;
        self.merged
            .entry(device.to_owned())
            .or_default()
            .merge(latency);
    }

    pub fn busy(&mut self, device: &str, busy: f64) {
        self.loads.entry(device.to_owned()).or_default().busy = Some(busy);
    }

    pub fn finish(mut self) -> BTreeMap<String, DeviceLoad> {
        for (device, h) in self.merged {
            self.loads.entry(device).or_default().p99_ns = h.quantile(0.99);
        }
        self.loads
    }
}

/// Block device signals, and per device the load and latency of the interval.
pub fn block(report: &Report) -> (Vec<Signal>, BTreeMap<String, DeviceLoad>) {
    let mut out = Vec::new();
    let mut loads = Loads::default();
    let interval_s = report.interval_s;
    let device_of =
        |labels: &BTreeMap<&'static str, String>| labels.get("device").cloned().unwrap_or_default();
    let signal = |device: &str, name, op: Option<&String>, value, unit| {
        Signal::device(device, name, op.map(String::as_str), value, unit)
    };
    for c in &report.counters {
        if c.family == FAMILY_BUSY && interval_s > 0.0 {
            let device = device_of(&c.labels);
            let busy = (c.delta as f64 / (interval_s * 1e9)).min(1.0);
            loads.busy(&device, busy);
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
                loads.add(&device, s.rate_per_s, s.count, &s.delta_histogram());
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
    (out, loads.finish())
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

/// Run-queue saturation: per CPU, the share of the interval with a task waiting; for
/// the host (`cpu`, no `cpu` label), the mean over the CPUs (CPU-seconds saturated per
/// CPU-second). Per-CPU signals for the `max_cpus` most saturated CPUs only; returns
/// how many more were left out.
pub fn runqueue(report: &Report, max_cpus: usize) -> (Vec<Signal>, usize) {
    let interval_ns = report.interval_s * 1e9;
    if interval_ns <= 0.0 {
        return (Vec::new(), 0);
    }
    let mut cpus: Vec<(String, f64)> = report
        .counters
        .iter()
        .filter(|c| c.family == FAMILY_SATURATED)
        .map(|c| {
            let cpu = c.labels.get("cpu").cloned().unwrap_or_default();
            (cpu, (c.delta as f64 / interval_ns).min(1.0))
        })
        .collect();
    if cpus.is_empty() {
        return (Vec::new(), 0);
    }
    let host = cpus.iter().map(|c| c.1).sum::<f64>() / cpus.len() as f64;
    let mut out = vec![Signal {
        resource: "cpu".into(),
        name: "runqueue_saturation",
        labels: BTreeMap::new(),
        value: host,
        unit: "1",
    }];
    // Most saturated first; ties by CPU number, so the choice is stable.
    cpus.sort_by(|a, b| {
        b.1.total_cmp(&a.1)
            .then(a.0.parse::<u32>().ok().cmp(&b.0.parse::<u32>().ok()))
    });
    let dropped = cpus.len().saturating_sub(max_cpus);
    out.extend(cpus.into_iter().take(max_cpus).map(|(cpu, value)| Signal {
        resource: format!("cpu:{cpu}"),
        name: "runqueue_saturation",
        labels: BTreeMap::from([("cpu", cpu)]),
        value,
        unit: "1",
    }));
    (out, dropped)
}

/// vCPU wait as a share of run time, per VM: the time its vCPU threads waited for a
/// host CPU (`vm.vcpu.wait`) over the time spent in `KVM_RUN` (`kvm.run.duration`, all
/// exit reasons) in the interval: the steal the guest feels. A VM whose runs did not
/// return in the interval has no share; the budget's `other` VM is skipped (its two
/// families fold different VMs).
pub fn vcpu_wait(report: &Report) -> Vec<Signal> {
    let mut by_vm: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for s in &report.series {
        let slot = match s.family {
            FAMILY_VM => 0,
            FAMILY_RUN => 1,
            _ => continue,
        };
        let Some(vm) = s.labels.get("vm").filter(|v| v.as_str() != OTHER) else {
            continue;
        };
        let uuid = s.labels.get("vm.uuid").cloned().unwrap_or_default();
        let e = by_vm.entry((vm.clone(), uuid)).or_default();
        if slot == 0 {
            e.0 += s.sum;
        } else {
            e.1 += s.sum;
        }
    }
    by_vm
        .into_iter()
        .filter(|(_, (_, run))| *run > 0)
        .map(|((vm, uuid), (wait, run))| {
            let mut labels = BTreeMap::from([("vm", vm.clone())]);
            if !uuid.is_empty() {
                labels.insert("vm.uuid", uuid);
            }
            Signal {
                resource: format!("vm:{vm}"),
                name: "vcpu_wait_share",
                labels,
                value: wait as f64 / run as f64,
                unit: "1",
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        aggregate::{IntervalCounter, IntervalSeries, SeriesKey},
        report::{CounterReport, SeriesReport},
    };

    fn counter(family: &'static str, labels: &[(&'static str, &str)], delta: u64) -> CounterReport {
        let key = SeriesKey::new(family, labels.iter().map(|(k, v)| (*k, (*v).to_owned())));
        CounterReport::new(
            &IntervalCounter {
                key,
                delta,
                total: delta,
            },
            10.0,
        )
    }

    fn series(family: &'static str, labels: &[(&'static str, &str)], sum: u64) -> SeriesReport {
        let key = SeriesKey::new(family, labels.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let h = ExpHistogram::from_dense(sum, 0, &[1]);
        SeriesReport::new(
            &IntervalSeries {
                key,
                delta: h.clone(),
                cumulative: h,
            },
            10.0,
        )
    }

    #[test]
    fn runqueue_saturation_per_cpu_and_host_within_the_cpu_budget() {
        let mut report = crate::report::sample();
        report.interval_s = 10.0;
        report.counters = [10_000_000_000, 2_500_000_000, 0, 5_000_000_000]
            .iter()
            .enumerate()
            .map(|(cpu, &ns)| counter(FAMILY_SATURATED, &[("cpu", &cpu.to_string())], ns))
            .collect();
        let (signals, dropped) = runqueue(&report, 2);
        let got: Vec<(&str, f64)> = signals
            .iter()
            .map(|s| (s.resource.as_str(), s.value))
            .collect();
        // Host: the mean over all four CPUs; then the two most saturated.
        assert_eq!(got, [("cpu", 0.4375), ("cpu:0", 1.0), ("cpu:3", 0.5)]);
        assert_eq!(dropped, 2);
        assert!(
            signals
                .iter()
                .all(|s| s.name == "runqueue_saturation" && s.unit == "1")
        );
        assert_eq!(signals[1].labels["cpu"], "0");
        assert!(!signals[0].labels.contains_key("cpu"));
        // A delta a little over the interval (read timing) is still one whole interval.
        report.counters = vec![counter(FAMILY_SATURATED, &[("cpu", "0")], 10_000_000_100)];
        assert_eq!(runqueue(&report, 16).0[0].value, 1.0);
        report.counters.clear();
        assert_eq!(runqueue(&report, 16), (Vec::new(), 0));
    }

    #[test]
    fn vcpu_wait_share_is_wait_over_run_time_per_vm() {
        let mut report = crate::report::sample();
        let vm = |name: &'static str| [("vm", name), ("vm.uuid", "u-1")];
        let run = |name: &'static str, reason: &'static str| {
            [("vm", name), ("vm.uuid", "u-1"), ("reason", reason)]
        };
        report.series = vec![
            series(FAMILY_VM, &vm("web"), 300),
            series(FAMILY_RUN, &run("web", "io"), 800),
            series(FAMILY_RUN, &run("web", "hlt"), 200),
            // Waited, but no run returned in the interval: no share.
            series(FAMILY_VM, &vm("stuck"), 50),
            // The budget's fold: different VMs in each family.
            series(FAMILY_VM, &vm(OTHER), 10),
            series(FAMILY_RUN, &run(OTHER, "io"), 10),
        ];
        let s = vcpu_wait(&report);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].resource, "vm:web");
        assert_eq!(s[0].name, "vcpu_wait_share");
        assert_eq!(s[0].value, 0.3);
        assert_eq!(s[0].labels["vm.uuid"], "u-1");
    }
}
