//! KVM exits, per VM and exit reason.
//!
//! Hooks (checked against Linux 6.1 – 6.18, x86):
//! - `kvm_userspace_exit(u32 reason, int errno)`: `KVM_RUN` returns to the VMM;
//! - `kvm_fpu(int load)`: `kvm_load_guest_fpu()` at the start of every `KVM_RUN`
//!   (load = 1), so userspace-exit → `kvm_fpu(1)` on the same thread is the time the
//!   VMM took to handle the exit (QEMU emulating I/O, MMIO, HLT, …), and
//!   `kvm_fpu(1)` → userspace-exit is how long that `KVM_RUN` lasted: one sample per
//!   exit, so its counts are the exits per reason;
//! - `kvm_exit` / `kvm_entry` (VMX and SVM only; PVM never fires them): in-kernel
//!   exit handling. `kvm_exit` passes `(exit_reason, vcpu, isa)` up to 5.15 and
//!   `(vcpu, isa)` from 5.16 (checked against the BTF of Debian 5.10, 6.1, 6.12 and
//!   Ubuntu 5.15, 6.8): the newer form's programs read the reason where the vendor's
//!   `get_exit_info()` does, `vcpu_svm->vmcb->control.exit_code` or
//!   `vcpu_vmx->exit_reason`, at offsets the agent takes from kvm_amd's / kvm_intel's
//!   BTF. Where no BTF tells which form a kernel has (5.10 has no module BTF), the
//!   release does, and the raw tracepoint reads the old form's argument 0; the classic
//!   tracepoint's record is read where neither can be used.
//!
//! Every thread seen exiting is a vCPU thread: it is entered in `VCPU_THREADS` so the
//! scheduler probe can attribute its run-queue wait to the VM.

use agent_common::{
    counters,
    kvm::{ISA_SVM, ISA_VMX, KvmExitLayout, KvmExitReason, MAX_VCPU_THREADS, VcpuPending},
    sparse::family,
};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::LruHashMap,
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};

use crate::{
    sched::{VCPU_FLAG, VCPU_THREADS},
    shared::{KernelRead, ProbeRead, count, global, now_ns, record_sparse},
};

/// Pending exits per vCPU thread. LRU: threads of VMs that are gone age out.
#[map(name = "VCPU_PENDING")]
static VCPU_PENDING: LruHashMap<u32, VcpuPending> =
    LruHashMap::with_max_entries(MAX_VCPU_THREADS, 0);

/// Offsets in the classic `kvm:kvm_exit` record, from its tracefs format file.
#[unsafe(no_mangle)]
static KVM_EXIT_LAYOUT: KvmExitLayout = KvmExitLayout::UNRESOLVED;

/// Offsets of the exit reason in the vendors' vCPU structs, from module BTF.
#[unsafe(no_mangle)]
static KVM_EXIT_REASON: KvmExitReason = KvmExitReason::UNRESOLVED;

/// A pointer from `VCPU_PENDING` as a reference.
///
/// # Safety
/// `p` must come from `VCPU_PENDING` for the current thread's id. Only that thread's
/// programs use its record, one event after another, so nothing else writes it. The LRU
/// map may evict it for another thread meanwhile; its element memory stays valid while
/// the program runs (RCU), so the worst case is one sample written into a record that
/// changed owner.
#[inline(always)]
unsafe fn own_record(p: *mut VcpuPending) -> &'static mut VcpuPending {
    // SAFETY: valid and unshared, as the caller guarantees.
    unsafe { &mut *p }
}

/// This thread's pending record, created (and the thread registered as a vCPU thread)
/// on first sight.
#[inline(always)]
fn pending(tid: u32, tgid: u32) -> Option<&'static mut VcpuPending> {
    if let Some(p) = VCPU_PENDING.get_ptr_mut(tid) {
        // SAFETY: the record of `tid`, the current thread.
        return Some(unsafe { own_record(p) });
    }
    let fresh = VcpuPending {
        tgid,
        ..VcpuPending::default()
    };
    let _ = VCPU_PENDING.insert(tid, fresh, BPF_NOEXIST as u64);
    let _ = VCPU_THREADS.insert(tid, tgid, 0);
    if let Some(flag) = VCPU_FLAG.get_ptr_mut(0) {
        // SAFETY: element 0 of an array map, valid while the program runs; CPUs that
        // race here all store the same aligned word.
        unsafe { *flag = 1 };
    }
    // SAFETY: the record of `tid`, the current thread.
    VCPU_PENDING
        .get_ptr_mut(tid)
        .map(|p| unsafe { own_record(p) })
}

#[inline(always)]
fn current() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    (id as u32, (id >> 32) as u32)
}

#[inline(always)]
fn on_userspace_exit(reason: u32, errno: i32) {
    if errno < 0 {
        return; // interrupted by a signal or failed: not an exit the VMM handles
    }
    let (tid, tgid) = current();
    let Some(p) = pending(tid, tgid) else {
        return;
    };
    let now = now_ns();
    if p.run_ns != 0 && now >= p.run_ns {
        record_sparse(family::KVM_RUN, tgid as u64, reason, now - p.run_ns);
    }
    p.run_ns = 0;
    p.user_reason = reason;
    p.user_ns = now;
}

#[inline(always)]
fn on_kvm_run(load: i32) {
    if load != 1 {
        return;
    }
    let (tid, tgid) = current();
    let Some(p) = pending(tid, tgid) else {
        return;
    };
    let now = now_ns();
    if p.user_ns != 0 && now >= p.user_ns {
        record_sparse(
            family::KVM_USERSPACE,
            p.tgid as u64,
            p.user_reason,
            now - p.user_ns,
        );
    }
    p.user_ns = 0;
    p.run_ns = now;
}

#[btf_tracepoint(function = "kvm_userspace_exit")]
pub fn kvm_user_exit_btf(ctx: BtfTracePointContext) -> i32 {
    on_userspace_exit(ctx.arg(0), ctx.arg(1));
    0
}

#[btf_tracepoint(function = "kvm_fpu")]
pub fn kvm_run_btf(ctx: BtfTracePointContext) -> i32 {
    on_kvm_run(ctx.arg(0));
    0
}

#[raw_tracepoint(tracepoint = "kvm_userspace_exit")]
pub fn kvm_user_exit_raw(ctx: RawTracePointContext) -> i32 {
    let reason: u64 = ctx.arg(0);
    let errno: u64 = ctx.arg(1);
    on_userspace_exit(reason as u32, errno as i32);
    0
}

#[raw_tracepoint(tracepoint = "kvm_fpu")]
pub fn kvm_run_raw(ctx: RawTracePointContext) -> i32 {
    let load: u64 = ctx.arg(0);
    on_kvm_run(load as i32);
    0
}

// Classic tracepoints: records are `common` (8 bytes) then the fields; these two have
// stable layouts (`u32 reason; int errno` and `u32 load`), checked by the agent against
// the format files before load.

#[tracepoint(category = "kvm", name = "kvm_userspace_exit")]
pub fn kvm_user_exit_tp(ctx: TracePointContext) -> i32 {
    // SAFETY: `read_at` copies from the record with bpf_probe_read, which fails rather
    // than faults; 8 and 12 are the fields' offsets in every kernel's format file.
    let reason: u32 = unsafe { ctx.read_at(8) }.unwrap_or(0);
    // SAFETY: as above.
    let errno: i32 = unsafe { ctx.read_at(12) }.unwrap_or(-1);
    on_userspace_exit(reason, errno);
    0
}

#[tracepoint(category = "kvm", name = "kvm_fpu")]
pub fn kvm_run_tp(ctx: TracePointContext) -> i32 {
    // SAFETY: a bpf_probe_read copy of the record's first field (offset 8).
    let load: u32 = unsafe { ctx.read_at(8) }.unwrap_or(0);
    on_kvm_run(load as i32);
    0
}

#[inline(always)]
fn on_exit(reason: u32, isa: u32) {
    let (tid, tgid) = current();
    if let Some(p) = pending(tid, tgid) {
        p.exit_reason = (isa << 24) | (reason & 0xff_ffff);
        p.exit_ns = now_ns();
    }
}

/// The exit reason the vendor's `get_exit_info()` reports, read from the vendor's
/// struct around `vcpu` (it embeds the `struct kvm_vcpu`). Read with
/// `bpf_probe_read_kernel`, since the container lies outside the BTF type the verifier
/// knows the pointer by.
#[inline(always)]
fn vcpu_exit_reason(vcpu: u64, isa: u32) -> Option<u32> {
    let l = global(&KVM_EXIT_REASON);
    if isa == ISA_SVM && l.svm_ok != 0 {
        let svm = vcpu.wrapping_sub(l.svm_vcpu as u64);
        let vmcb: u64 = ProbeRead::read(svm, l.svm_vmcb)?;
        // exit_code is a u32 (or the low half of a u64, little-endian).
        return ProbeRead::read(vmcb, l.svm_exit_code);
    }
    if isa == ISA_VMX && l.vmx_ok != 0 {
        let vmx = vcpu.wrapping_sub(l.vmx_vcpu as u64);
        return ProbeRead::read(vmx, l.vmx_exit_reason);
    }
    None
}

#[inline(always)]
fn on_exit_vcpu(vcpu: u64, isa: u32) {
    match vcpu_exit_reason(vcpu, isa) {
        Some(reason) => on_exit(reason, isa),
        // A vendor the agent found no layout for: the exit is not timed.
        None => count(counters::KVM_UNREAD_REASON),
    }
}

#[inline(always)]
fn on_entry() {
    let (tid, _) = current();
    let Some(p) = VCPU_PENDING.get_ptr_mut(tid) else {
        return;
    };
    // SAFETY: the record of `tid`, the current thread.
    let p = unsafe { own_record(p) };
    if p.exit_ns == 0 {
        // The first entry of a thread, or its exit was before attach.
        count(counters::KVM_UNMATCHED);
        return;
    }
    let now = now_ns();
    if now >= p.exit_ns {
        record_sparse(
            family::KVM_EXIT,
            p.tgid as u64,
            p.exit_reason,
            now - p.exit_ns,
        );
    }
    p.exit_ns = 0;
}

/// `kvm_exit(struct kvm_vcpu *vcpu, u32 isa)`, 5.16 on.
#[btf_tracepoint(function = "kvm_exit")]
pub fn kvm_exit_btf(ctx: BtfTracePointContext) -> i32 {
    let vcpu: *const u8 = ctx.arg(0);
    // Some kernels (Debian's 6.12.118) type every tp_btf pointer argument as maybe
    // NULL, and refuse arithmetic on it before a NULL check.
    if vcpu.is_null() {
        count(counters::KVM_UNREAD_REASON);
        return 0;
    }
    on_exit_vcpu(vcpu as u64, ctx.arg(1));
    0
}

/// `kvm_exit(unsigned int exit_reason, struct kvm_vcpu *vcpu, u32 isa)`, up to 5.15.
#[btf_tracepoint(function = "kvm_exit")]
pub fn kvm_exit_btf_reason(ctx: BtfTracePointContext) -> i32 {
    on_exit(ctx.arg(0), ctx.arg(2));
    0
}

#[btf_tracepoint(function = "kvm_entry")]
pub fn kvm_entry_btf(_ctx: BtfTracePointContext) -> i32 {
    on_entry();
    0
}

#[raw_tracepoint(tracepoint = "kvm_exit")]
pub fn kvm_exit_raw(ctx: RawTracePointContext) -> i32 {
    let vcpu: u64 = ctx.arg(0);
    let isa: u64 = ctx.arg(1);
    on_exit_vcpu(vcpu, isa as u32);
    0
}

/// `kvm_exit(unsigned int exit_reason, struct kvm_vcpu *vcpu, u32 isa)`, up to 5.15,
/// where BTF says so or (no BTF) the release does. Reading argument 2 makes the kernel
/// refuse the attach where `kvm_exit` has only two arguments (`bpf_probe_register()`
/// checks the program's furthest context read against the tracepoint's arguments),
/// and an `isa` that is neither VMX nor SVM means the arguments are not these: the
/// exit is not timed.
#[raw_tracepoint(tracepoint = "kvm_exit")]
pub fn kvm_exit_raw_reason(ctx: RawTracePointContext) -> i32 {
    let reason: u64 = ctx.arg(0);
    let isa = ctx.arg::<u64>(2) as u32;
    if isa != ISA_SVM && isa != ISA_VMX {
        count(counters::KVM_UNREAD_REASON);
        return 0;
    }
    on_exit(reason as u32, isa);
    0
}

#[raw_tracepoint(tracepoint = "kvm_entry")]
pub fn kvm_entry_raw(_ctx: RawTracePointContext) -> i32 {
    on_entry();
    0
}

#[tracepoint(category = "kvm", name = "kvm_exit")]
pub fn kvm_exit_tp(ctx: TracePointContext) -> i32 {
    let l = global(&KVM_EXIT_LAYOUT);
    // SAFETY: bpf_probe_read copies from the record, at offsets from its format file.
    let reason: u32 = unsafe { ctx.read_at(l.exit_reason as usize) }.unwrap_or(0);
    // SAFETY: as above.
    let isa: u32 = unsafe { ctx.read_at(l.isa as usize) }.unwrap_or(0);
    on_exit(reason, isa);
    0
}

#[tracepoint(category = "kvm", name = "kvm_entry")]
pub fn kvm_entry_tp(_ctx: TracePointContext) -> i32 {
    on_entry();
    0
}
