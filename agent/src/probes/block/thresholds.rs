//! Per-device outlier thresholds, set in the kernel after every interval: fixed, or
//! twice the device time p99 of the device's slowest operation in the interval.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use super::FAMILY_DEVICE;
use crate::{
    probes::{
        Interval,
        outliers::{OutliersConfig, auto_threshold},
    },
    settings::Threshold,
};

pub struct OutlierThresholds {
    threshold: Threshold,
    min: Duration,
    /// Threshold (ns) per device number, pushed to the kernel each interval.
    per_device: HashMap<u32, u64>,
    round: HashSet<u32>,
}

impl OutlierThresholds {
    pub fn new(config: &OutliersConfig) -> Self {
        Self {
            threshold: config.block_threshold,
            min: config.block_min,
            per_device: HashMap::new(),
            round: HashSet::new(),
        }
    }

    /// Updates the thresholds from the interval's device times and hands them to the
    /// kernel. Devices idle this interval keep their threshold; with no series yet
    /// (the first call) every device gets the default, so outliers count from the
    /// first request on.
    pub fn update(&mut self, interval: &mut Interval<'_>) {
        for s in interval
            .series
            .iter()
            .filter(|s| s.family == FAMILY_DEVICE && s.count > 0)
        {
            let Some(dev) = s.labels.get("dev").and_then(|d| agent_common::dev::parse(d)) else {
                continue;
            };
            let ns = match self.threshold {
                Threshold::Fixed(d) => d.as_nanos() as u64,
                Threshold::Auto => auto_threshold(
                    s.quantiles.get("p99").copied().flatten(),
                    self.min.as_nanos() as u64,
                ),
            };
            let entry = self.per_device.entry(dev).or_insert(0);
            // Several operations per device: keep the largest threshold of this round.
            *entry = if self.round.insert(dev) {
                ns
            } else {
                (*entry).max(ns)
            };
        }
        self.round.clear();
        if let Some(o) = &mut interval.outliers
            && let Err(e) = o.set_block_thresholds(&self.per_device, self.default())
        {
            tracing::warn!("{e}");
        }
    }

    /// Threshold of a device without a history: the fixed one, or the floor of `auto`.
    fn default(&self) -> u64 {
        match self.threshold {
            Threshold::Fixed(d) => d.as_nanos() as u64,
            Threshold::Auto => self.min.as_nanos() as u64,
        }
    }
}
