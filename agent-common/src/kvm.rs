//! KVM exits: the per-vCPU-thread record, and where the exit reason is read (the classic
//! tracepoint's record, or the vendor's vCPU struct), shared with the agent.

/// `isa` of the `kvm_exit` tracepoint (`KVM_ISA_VMX`, `KVM_ISA_SVM` in
/// arch/x86/kvm/trace.h): which vendor's exit reason table applies.
pub const ISA_VMX: u32 = 1;
pub const ISA_SVM: u32 = 2;

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

/// Where tp_btf and raw tracepoint programs read the exit reason when `kvm_exit` passes
/// only `(vcpu, isa)` (5.16 on): in the vendor's vCPU struct, which embeds the
/// `struct kvm_vcpu` the tracepoint hands over. Offsets from the module's BTF
/// (`kvm_amd`, `kvm_intel`); a vendor whose flag is 0 was not resolved.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvmExitReason {
    /// `struct vcpu_svm`: offset of its `vcpu`, of its `vmcb` pointer, and of
    /// `control.exit_code` in `struct vmcb`.
    pub svm_vcpu: u32,
    pub svm_vmcb: u32,
    pub svm_exit_code: u32,
    pub svm_ok: u32,
    /// `struct vcpu_vmx`: offset of its `vcpu` and of `exit_reason`.
    pub vmx_vcpu: u32,
    pub vmx_exit_reason: u32,
    pub vmx_ok: u32,
    pub _pad: u32,
}
plain_data!(KvmExitReason, 8 * 4);

impl KvmExitReason {
    pub const UNRESOLVED: Self = Self {
        svm_vcpu: 0,
        svm_vmcb: 0,
        svm_exit_code: 0,
        svm_ok: 0,
        vmx_vcpu: 0,
        vmx_exit_reason: 0,
        vmx_ok: 0,
        _pad: 0,
    };
}

/// Capacity of the per-vCPU-thread tables.
pub const MAX_VCPU_THREADS: u32 = 16_384;
