//! Run-queue latency and KVM exits: keys, layouts and family ids shared with the agent.

/// Offsets resolved from the running kernel's BTF, for the scheduler probe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedLayout {
    /// `task_struct`.`pid` (thread id) and `tgid` (process id)
    pub task_pid: u32,
    pub task_tgid: u32,
    /// `task_struct`.`sched_info.last_queued`: when the task was last enqueued, in the
    /// run queue's clock (`rq_clock()`), 0 once it runs
    pub task_last_queued: u32,
    /// `task_struct`.`se.cfs_rq`, `cfs_rq`.`rq`, `rq`.`clock`: the clock `last_queued`
    /// is measured against, as the scheduler itself reads it
    pub task_cfs_rq: u32,
    pub cfs_rq_rq: u32,
    pub rq_clock: u32,
    /// `task_struct`.`cgroups` → `css_set`
    pub task_cgroups: u32,
    /// `css_set`.`dfl_cgrp` (cgroup v2) or `css_set`.`subsys[cpu_cgrp_id]` (v1 cpu
    /// controller), then `cgroup_subsys_state`.`cgroup`
    pub css_set_cgroup: u32,
    pub css_cgroup: u32,
    /// `cgroup`.`kn` → `kernfs_node`.`id`: the cgroup id (its directory's inode number)
    pub cgroup_kn: u32,
    pub kn_id: u32,
    /// [`CGROUP_V2`] or [`CGROUP_V1_CPU`]
    pub cgroup_mode: u32,
}

pub const CGROUP_V2: u32 = 0;
pub const CGROUP_V1_CPU: u32 = 1;

impl SchedLayout {
    pub const UNRESOLVED: Self = Self {
        task_pid: 0,
        task_tgid: 0,
        task_last_queued: 0,
        task_cfs_rq: 0,
        cfs_rq_rq: 0,
        rq_clock: 0,
        task_cgroups: 0,
        css_set_cgroup: 0,
        css_cgroup: 0,
        cgroup_kn: 0,
        kn_id: 0,
        cgroup_mode: 0,
    };
}

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

/// Samples of one bucket and their sum: one map update records a whole sample, so a
/// failed insert loses count and sum together and the series stays consistent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SparseCell {
    pub count: u64,
    /// ns
    pub sum: u64,
}

/// Samples equal to zero.
pub const ZERO_SLOT: u32 = u32::MAX;

/// Capacity of the sparse map: series × populated buckets. Preallocated, so that an
/// insert never fails for want of memory in the middle of a burst of new buckets:
/// 16 bytes × CPUs per entry (256 KiB per CPU).
pub const SPARSE_MAX_ENTRIES: u32 = 16_384;

/// Pending exits of one vCPU thread, waiting for the matching entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuPending {
    /// Start of the current `KVM_RUN` (ktime), 0 when none seen.
    pub run_ns: u64,
    /// `kvm_userspace_exit` time (ktime), 0 when none pending.
    pub user_ns: u64,
    /// `kvm_exit` time (ktime), 0 when none pending.
    pub exit_ns: u64,
    pub user_reason: u32,
    /// `isa << 24 | exit reason`
    pub exit_reason: u32,
    pub tgid: u32,
    pub _pad: u32,
}

/// Offsets in the classic `kvm:kvm_exit` record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvmExitLayout {
    pub exit_reason: u32,
    pub isa: u32,
}

impl KvmExitLayout {
    pub const UNRESOLVED: Self = Self {
        exit_reason: 0,
        isa: 0,
    };
}

/// Capacity of the per-vCPU-thread tables.
pub const MAX_VCPU_THREADS: u32 = 16_384;
