//! KVM exits: the per-vCPU-thread record and the classic tracepoint layout shared with
//! the agent.

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
plain_data!(VcpuPending, 3 * 8 + 4 * 4);

/// Offsets in the classic `kvm:kvm_exit` record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvmExitLayout {
    pub exit_reason: u32,
    pub isa: u32,
}
plain_data!(KvmExitLayout, 2 * 4);

impl KvmExitLayout {
    pub const UNRESOLVED: Self = Self {
        exit_reason: 0,
        isa: 0,
    };
}

/// Capacity of the per-vCPU-thread tables.
pub const MAX_VCPU_THREADS: u32 = 16_384;
