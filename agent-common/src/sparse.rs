//! The sparse histogram map: many series (per cgroup, per VM and exit reason, …), one
//! entry per populated bucket, shared by the probe families that record into it.

/// Families stored in the sparse histogram map.
pub mod family {
    /// Run-queue latency per cgroup; group = cgroup id.
    pub const SCHED_CGROUP: u32 = 1;
    /// Run-queue latency of vCPU threads per VM; group = VMM process id.
    pub const SCHED_VM: u32 = 2;
    /// Exits to the VMM in userspace, until the next KVM_RUN; group = VMM process id,
    /// detail = `KVM_EXIT_*` reason.
    pub const KVM_USERSPACE: u32 = 3;
    /// In-kernel exit handling, `kvm_exit` → `kvm_entry`; group = VMM process id,
    /// detail = `isa << 24 | exit reason` (isa 1 VMX, 2 SVM).
    pub const KVM_EXIT: u32 = 4;
    /// How long each `KVM_RUN` lasted (guest execution and in-kernel exits) before it
    /// returned to the VMM; group = VMM process id, detail = `KVM_EXIT_*` reason. Its
    /// counts are the exits to userspace per reason.
    pub const KVM_RUN: u32 = 5;
    /// Block I/O latency per submitting cgroup; group = cgroup id, detail = op.
    pub const BLOCK_CGROUP: u32 = 8;
    // 9 was reserved for TCP round-trip times, which went to a dense per-group map
    // (`TCP_RTT`): a hash lookup per segment cost ~80 ns more.
}

/// One bucket of one series in the sparse histogram map: only buckets that have
/// samples exist, so memory follows what happens rather than the bucket layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SparseKey {
    pub group: u64,
    pub family: u32,
    pub detail: u32,
    /// Slot in the OTLP layout (`hist::bucket_slot`), or [`ZERO_SLOT`].
    pub bucket: u32,
    pub _pad: u32,
}
plain_data!(SparseKey, 8 + 4 * 4);

/// Samples of one bucket and their sum: one map update records a whole sample, so a
/// failed insert loses count and sum together and the series stays consistent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SparseCell {
    pub count: u64,
    /// ns
    pub sum: u64,
}
plain_data!(SparseCell, 2 * 8);

/// Samples equal to zero.
pub const ZERO_SLOT: u32 = u32::MAX;

/// Capacity of the sparse map: series × populated buckets. Preallocated, so that an
/// insert never fails for want of memory in the middle of a burst of new buckets:
/// 16 bytes × CPUs per entry (256 KiB per CPU).
pub const SPARSE_MAX_ENTRIES: u32 = 16_384;
