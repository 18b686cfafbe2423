//! Run-queue latency: how long a runnable task waited for a CPU, host-wide, per cgroup,
//! and per VM for vCPU threads.
//!
//! Hook (checked against Linux 6.1 – 6.18): `sched_switch(bool preempt,
//! struct task_struct *prev, struct task_struct *next, unsigned int prev_state)`, fired
//! by `__schedule()` after the run queue's clock was updated and before
//! `sched_info_switch()` accounts the wait.
//!
//! No wakeup hook and no timestamp map: the scheduler already records when a task was
//! queued (`sched_info.last_queued`, set on wakeup, on new tasks and when a preempted
//! task stays runnable) in the run queue's clock. At switch-in the wait is
//! `rq->clock - next->sched_info.last_queued`, exactly the delta the kernel adds to
//! `/proc/<pid>/schedstat`'s run_delay. One program, no helper call, no map update on
//! the wakeup path. A task migrated while waiting is measured from its arrival on the
//! queue it runs from, as sched_info itself accounts each queue.

use agent_common::{
    hist::Histogram,
    kvm::MAX_VCPU_THREADS,
    sched::{CGROUP_V2, SchedLayout},
    sparse::family,
};
use aya_ebpf::{
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext},
};

use crate::shared::{DirectRead, KernelRead, ProbeRead, add_sample, global, record_sparse};

/// Host-wide histogram: one entry, per CPU.
#[map(name = "SCHED_LATENCY")]
static SCHED_LATENCY: PerCpuArray<Histogram> = PerCpuArray::with_max_entries(1, 0);

/// Offsets resolved by the agent from the running kernel's BTF before load.
#[unsafe(no_mangle)]
static SCHED_LAYOUT: SchedLayout = SchedLayout::UNRESOLVED;

/// vCPU thread id → VMM process id, filled by the KVM probe when a thread runs a vCPU.
#[map(name = "VCPU_THREADS")]
pub static VCPU_THREADS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_VCPU_THREADS, 0);

/// [0] becomes 1 once any vCPU thread was seen: until then the per-switch lookup in
/// `VCPU_THREADS` is skipped (an inlined array read instead of a hash lookup).
#[map(name = "VCPU_FLAG")]
pub static VCPU_FLAG: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
fn on_switch<R: KernelRead>(next: u64) {
    let l = global(&SCHED_LAYOUT);
    let Some(queued) = R::read::<u64>(next, l.task_last_queued) else {
        return;
    };
    if queued == 0 {
        return; // not waiting (the idle task, or sched_info off)
    }
    let Some(now) = R::read::<u64>(next, l.task_cfs_rq)
        .and_then(|cfs_rq| R::read::<u64>(cfs_rq, l.cfs_rq_rq))
        .and_then(|rq| R::read::<u64>(rq, l.rq_clock))
    else {
        return;
    };
    if now < queued {
        return;
    }
    let wait = now - queued;

    if let Some(h) = SCHED_LATENCY.get_ptr_mut(0) {
        // SAFETY: this CPU's element of a per-CPU array, valid while the program runs
        // and written by no other CPU.
        add_sample(unsafe { &mut *h }, wait);
    }
    if let Some(cgroup) = cgroup_id::<R>(next, &l) {
        record_sparse(family::SCHED_CGROUP, cgroup, 0, wait);
    }
    if VCPU_FLAG.get(0).is_some_and(|&f| f != 0)
        && let Some(pid) = R::read::<u32>(next, l.task_pid)
        // SAFETY: the value may be updated meanwhile by the KVM probe; it is copied out
        // at once, and a u32 load is never torn.
        && let Some(&vmm) = unsafe { VCPU_THREADS.get(pid) }
    {
        record_sparse(family::SCHED_VM, vmm as u64, 0, wait);
    }
}

/// The task's cgroup id: `cgroups->dfl_cgrp->kn->id` (v2), or the cpu controller's
/// cgroup (`cgroups->subsys[cpu_cgrp_id]->cgroup->kn->id`) on v1 hosts.
#[inline(always)]
fn cgroup_id<R: KernelRead>(task: u64, l: &SchedLayout) -> Option<u64> {
    let css_set: u64 = R::read(task, l.task_cgroups)?;
    let mut cgroup: u64 = R::read(css_set, l.css_set_cgroup)?;
    if l.cgroup_mode != CGROUP_V2 {
        cgroup = R::read(cgroup, l.css_cgroup)?;
    }
    let kn: u64 = R::read(cgroup, l.cgroup_kn)?;
    R::read(kn, l.kn_id)
}

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf(ctx: BtfTracePointContext) -> i32 {
    let next: *const u8 = ctx.arg(2);
    on_switch::<DirectRead>(next as u64);
    0
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_raw(ctx: RawTracePointContext) -> i32 {
    let next: u64 = ctx.arg(2);
    on_switch::<ProbeRead>(next);
    0
}
