//! Outliers: single events far slower than their series' norm, sent through a BPF ring
//! buffer with their context so they can become spans (and exemplars).

/// Kinds of outlier events.
pub mod kind {
    pub const BLOCK: u32 = 1;
}

/// One outlier, as the kernel writes it to the ring buffer. Timestamps are
/// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC); the agent converts them to wall clock.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutlierEvent {
    pub kind: u32,
    /// Block: device number (`major << 20 | minor`).
    pub dev: u32,
    /// Block: operation class.
    pub op: u32,
    /// Task that dispatched the request (0 when unknown).
    pub pid: u32,
    pub tgid: u32,
    /// Block: bytes of the request.
    pub bytes: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Block: first sector.
    pub sector: u64,
    /// cgroup v2 id of the submitter (0 when unknown).
    pub cgroup: u64,
}
plain_data!(OutlierEvent, 6 * 4 + 4 * 8);

/// Thresholds the agent pushes to the kernel each interval.
pub mod threshold {
    /// Index in `OUTLIER_THRESHOLDS`: the smallest threshold of all (ns), a cheap first
    /// test before the per-device lookup. 0 disables outliers.
    pub const MIN: u32 = 0;
    /// Index in `OUTLIER_THRESHOLDS`: the threshold of devices without one of their
    /// own yet (ns; 0: none).
    pub const DEFAULT: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// Size of the ring buffer: at ~72 bytes an event, about 14 000 outliers per interval
/// before the kernel drops (and counts) the rest.
pub const RING_BYTES: u32 = 1 << 20;
