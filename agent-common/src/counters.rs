//! Indices into the per-CPU `PROBE_COUNTERS` array: events the kernel programs could not
//! record as samples. The agent reports their deltas as self-metrics.

/// A completion without a matching issue record: in flight before attach, or evicted.
pub const BLOCK_UNMATCHED: u32 = 0;
/// An issue that overwrote another in-flight request's slot (that request is lost).
pub const BLOCK_SLOT_COLLISION: u32 = 1;
/// A sample dropped because the histogram map was full (too many devices × operations).
pub const BLOCK_SERIES_FULL: u32 = 2;

/// A sample dropped because the sparse histogram map (cgroups, VMs) was full.
pub const SPARSE_FULL: u32 = 3;
/// A KVM entry whose exit was not seen (in flight at attach, or the table was full).
pub const KVM_UNMATCHED: u32 = 4;

/// An outlier the ring buffer had no room for.
pub const OUTLIER_RING_FULL: u32 = 5;

/// An insertion stamp overwritten before its request was issued: by another request
/// hashing to the same slot (that request's queue time reads as 0), or left behind by
/// a request merged into another one in the scheduler (harmless).
pub const BLOCK_INSERT_EVICTED: u32 = 6;

/// A request issued again while its previous issue was still recorded as in flight:
/// the kernel completed it without running the completion program (the tracepoint
/// fired, the program did not), so its latency sample is lost.
pub const BLOCK_COMPLETION_UNSEEN: u32 = 7;

/// A `kvm_exit` whose reason could not be read from the vCPU (an ISA the agent found
/// no vendor layout for, or a failed read): that exit is not timed.
pub const KVM_UNREAD_REASON: u32 = 8;

/// A run-queue change the saturation record missed: a kernel field that could not be
/// read, or a CPU numbered beyond `sched::RUNQ_MAX_CPUS`.
pub const RUNQ_UNRECORDED: u32 = 9;

/// Size of the counters array; room for more probe families.
pub const COUNT: u32 = 16;

/// Human-readable names, indexed like the counters.
pub const NAMES: [(u32, &str); 10] = [
    (BLOCK_UNMATCHED, "block_unmatched_completions"),
    (BLOCK_SLOT_COLLISION, "block_inflight_collisions"),
    (BLOCK_SERIES_FULL, "block_series_map_full"),
    (SPARSE_FULL, "sparse_map_full"),
    (KVM_UNMATCHED, "kvm_unmatched_entries"),
    (OUTLIER_RING_FULL, "outlier_ring_full"),
    (BLOCK_INSERT_EVICTED, "block_insertions_evicted"),
    (BLOCK_COMPLETION_UNSEEN, "block_completions_unseen"),
    (KVM_UNREAD_REASON, "kvm_exit_reasons_unread"),
    (RUNQ_UNRECORDED, "runqueue_changes_unrecorded"),
];
