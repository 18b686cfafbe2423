//! Capacity: how close each resource is to saturation. Each interval derives
//! utilisation and saturation signals from the report (block devices) and from the
//! kernel's pressure stall accounting (host and cgroups).

mod config;
pub mod forecast;
pub mod knee;
pub mod psi;
pub mod signals;

use serde::Serialize;

pub use config::CapacityConfig;
pub use signals::Signal;

use crate::report::Report;

/// The capacity part of one report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CapacityReport {
    pub signals: Vec<Signal>,
    /// Cgroups with pressure beyond `capacity.max_cgroups`, not reported.
    pub cgroups_dropped: usize,
}

/// The capacity state the pipeline keeps between intervals.
pub struct Capacity {
    pressure: psi::Pressure,
}

impl Capacity {
    pub fn new(config: &CapacityConfig) -> Self {
        let cgroup_root = if config.cgroup_root.as_os_str().is_empty() {
            std::fs::read_to_string(config.proc_root.join("mounts"))
                .ok()
                .and_then(|m| psi::cgroup2_root(&m))
        } else {
            Some(config.cgroup_root.clone())
        };
        let mut pressure = psi::Pressure::new(&config.proc_root, cgroup_root, config.max_cgroups);
        // The first totals, so that the first report already has shares.
        pressure.update(0.0);
        Self { pressure }
    }

    /// The interval's signals.
    pub fn update(&mut self, report: &Report) -> CapacityReport {
        let (mut signals, _loads) = signals::block(report);
        let shares = self.pressure.update(report.interval_s * 1e6);
        signals.extend(signals::pressure(&shares));
        CapacityReport {
            signals,
            cgroups_dropped: self.pressure.cgroups_dropped,
        }
    }
}
