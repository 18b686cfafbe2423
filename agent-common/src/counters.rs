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

/// Switch-ins the run-queue program did not see, found at the task's next switch-in
/// it saw (the kernel's arrival count had grown by more than one): their waits are in
/// that next sample, which stands for all of them, so the samples are this many fewer
/// than the arrivals.
pub const RUNQ_SWITCH_INS_UNSEEN: u32 = 10;

/// Switch-ins of tasks the run-queue program could not remember (a failed insert into
/// its task map): their samples are the wait on the last queue only.
pub const RUNQ_TASKS_UNREMEMBERED: u32 = 11;

/// Size of the counters array; room for more probe families.
pub const COUNT: u32 = 16;

/// Human-readable names, indexed like the counters.
pub const NAMES: [(u32, &str); 12] = [
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
    (RUNQ_SWITCH_INS_UNSEEN, "runqueue_switch_ins_unseen"),
    (RUNQ_TASKS_UNREMEMBERED, "runqueue_tasks_unremembered"),
];
