//! Outliers from the kernel's ring buffer: drained each interval, given their context
//! (device, process, cgroup) and wall-clock times, ready to become spans; and the
//! per-device thresholds pushed back to the kernel.

use std::{collections::HashMap, time::Duration};

use agent_common::{
    names,
    outlier::{OutlierEvent, kind, threshold},
};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, RingBuf},
};
use serde::{Deserialize, Serialize};

use super::block;

use crate::{
    attribution::Attribution,
    settings::{Threshold, duration},
    util::{
        hex, random,
        time::{monotonic_to_wall_offset, wall},
    },
};

/// One exceptional event with its context, as exporters see it.
#[derive(Clone, Debug, Serialize)]
pub struct Outlier {
    /// The series it belongs to, for exemplars: family and the same labels.
    pub family: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub latency_ns: u64,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// Span identity, random.
    #[serde(serialize_with = "hex::serialize")]
    pub trace_id: [u8; 16],
    #[serde(serialize_with = "hex::serialize")]
    pub span_id: [u8; 8],
    /// Context attributes (OpenTelemetry names where a convention exists).
    pub attributes: Vec<(&'static str, String)>,
}

/// The maps of the outlier path.
pub struct Outliers {
    ring: RingBuf<MapData>,
    min: Array<MapData, u64>,
    block_thresholds: BpfHashMap<MapData, u32, u64>,
    /// The events of one drain, kept for the next: a busy interval brings thousands,
    /// and growing a new vector to that size each time was a tenth of the agent's
    /// allocation work.
    events: Vec<OutlierEvent>,
}

impl Outliers {
    pub fn take(ebpf: &mut Ebpf) -> Option<Self> {
        let ring = RingBuf::try_from(ebpf.take_map(names::MAP_OUTLIERS)?).ok()?;
        let min = Array::try_from(ebpf.take_map(names::MAP_OUTLIER_MIN)?).ok()?;
        let block_thresholds =
            BpfHashMap::try_from(ebpf.take_map(names::MAP_BLOCK_THRESHOLDS)?).ok()?;
        Some(Self {
            ring,
            min,
            block_thresholds,
            events: Vec::new(),
        })
    }

    /// Everything the kernel sent since the last call, the slowest `max` kept (the
    /// rest is read and counted as discarded, so the buffer never stays full).
    pub fn drain(&mut self, attribution: &mut Attribution, max: usize) -> (Vec<Outlier>, u64) {
        let to_wall = monotonic_to_wall_offset();
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        while let Some(item) = self.ring.next() {
            if let Some(event) = parse(&item) {
                events.push(event);
            }
        }
        let discarded = events.len().saturating_sub(max) as u64;
        if events.len() > max {
            events.select_nth_unstable_by_key(max, |e| {
                std::cmp::Reverse(e.end_ns.saturating_sub(e.start_ns))
            });
            events.truncate(max);
        }
        events.sort_by_key(|e| e.start_ns);
        let outliers = events
            .iter()
            .filter(|e| e.kind == kind::BLOCK)
            .map(|e| block_outlier(e, attribution, to_wall))
            .collect();
        self.events = events;
        (outliers, discarded)
    }

    /// Sets the per-device thresholds (ns), the threshold of devices without one
    /// (`default`, 0 for none) and the minimum the kernel tests first.
    pub fn set_block_thresholds(
        &mut self,
        thresholds: &HashMap<u32, u64>,
        default: u64,
    ) -> Result<(), String> {
        let stale: Vec<u32> = self
            .block_thresholds
            .keys()
            .filter_map(Result::ok)
            .filter(|dev| !thresholds.contains_key(dev))
            .collect();
        for dev in stale {
            let _ = self.block_thresholds.remove(&dev);
        }
        for (&dev, &ns) in thresholds {
            self.block_thresholds
                .insert(dev, ns, 0)
                .map_err(|e| format!("setting the outlier threshold of {dev}: {e}"))?;
        }
        // 0 means off in the kernel.
        let min = thresholds
            .values()
            .copied()
            .chain((default != 0).then_some(default))
            .min()
            .unwrap_or(0);
        self.min
            .set(threshold::DEFAULT, default, 0)
            .and_then(|()| self.min.set(threshold::MIN, min, 0))
            .map_err(|e| format!("setting the outlier thresholds: {e}"))
    }
}

fn parse(bytes: &[u8]) -> Option<OutlierEvent> {
    if bytes.len() < size_of::<OutlierEvent>() {
        return None;
    }
    // SAFETY: OutlierEvent is plain `#[repr(C)]` integers; the length is checked and
    // read_unaligned copes with the ring buffer's 8-byte alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<OutlierEvent>()) })
}

fn block_outlier(e: &OutlierEvent, attribution: &mut Attribution, to_wall: i128) -> Outlier {
    let device = attribution.devices.lookup(e.dev).clone();
    let op = block::op_name(e.op);
    let mut attributes = vec![
        ("disk.io.direction", op.to_owned()),
        ("nodepulse.block.bytes", e.bytes.to_string()),
        ("nodepulse.block.sector", e.sector.to_string()),
    ];
    if e.tgid != 0 {
        attributes.push(("process.pid", e.tgid.to_string()));
        attributes.push(("thread.id", e.pid.to_string()));
        if let Ok(comm) = std::fs::read_to_string(format!("/proc/{}/comm", e.tgid)) {
            attributes.push(("process.executable.name", comm.trim().to_owned()));
        }
    }
    if e.cgroup != 0 {
        attributes.push(("nodepulse.cgroup", attribution.cgroup_name(e.cgroup)));
    }
    Outlier {
        family: block::FAMILY_DEVICE,
        labels: vec![
            ("device", device.name),
            ("dev", device.number),
            ("op", op.to_owned()),
        ],
        latency_ns: e.end_ns.saturating_sub(e.start_ns),
        start_unix_nano: wall(e.start_ns, to_wall),
        end_unix_nano: wall(e.end_ns, to_wall),
        trace_id: random::bytes(),
        span_id: random::bytes(),
        attributes,
    }
}

/// Threshold for one device from the p99 of its last interval: twice the p99, never
/// below `min` — "far slower than the device's norm", a few per thousand at most.
pub fn auto_threshold(p99_ns: Option<f64>, min_ns: u64) -> u64 {
    p99_ns.map_or(min_ns, |p| ((2.0 * p) as u64).max(min_ns))
}

/// Exceptional events sent individually (as spans) through the kernel's ring buffer.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutliersConfig {
    /// Unset: on when OTLP export is (spans are where outliers go). Keeping each
    /// request's context costs ~100 ns per block I/O, so it is not paid for nothing.
    pub enabled: Option<bool>,
    /// A block request slower than this is an outlier; `auto` derives a threshold per
    /// device from its recent p99 (never below `block_min`).
    pub block_threshold: Threshold,
    #[serde(deserialize_with = "duration")]
    pub block_min: Duration,
    /// At most this many outliers are turned into spans per interval; the rest are
    /// counted.
    pub max_per_interval: usize,
}

impl Default for OutliersConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            block_threshold: Threshold::Auto,
            block_min: Duration::from_millis(1),
            max_per_interval: 200,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_threshold_is_twice_p99_with_a_floor() {
        assert_eq!(auto_threshold(Some(3_000_000.0), 1_000_000), 6_000_000);
        assert_eq!(auto_threshold(Some(100_000.0), 1_000_000), 1_000_000);
        assert_eq!(auto_threshold(None, 1_000_000), 1_000_000);
    }

    #[test]
    fn short_records_are_ignored() {
        assert!(parse(&[0u8; 8]).is_none());
        let e = OutlierEvent {
            kind: kind::BLOCK,
            dev: 7 << 20,
            start_ns: 5,
            end_ns: 9,
            ..Default::default()
        };
        let bytes: [u8; size_of::<OutlierEvent>()] = unsafe { std::mem::transmute(e) };
        assert_eq!(parse(&bytes), Some(e));
    }
}
