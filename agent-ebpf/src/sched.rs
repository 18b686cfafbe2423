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
//!
//! Run-queue saturation (per CPU: time with at least one task queued and not running)
//! is kept from the kernel's own counts rather than from task events: at every change
//! of a run queue the program reads `rq->nr_running` (the tasks queued, the running one
//! included) and whether `rq->curr` is the idle task, so each update stands on its own
//! and nothing drifts. Changes come from three hooks, all run with that run queue's
//! lock held, which serialises the updates of one CPU's record whichever CPU runs them:
//! - `sched_update_nr_running_tp(struct rq *rq, int count)` (a bare tracepoint, which
//!   BPF can attach to from 5.11; not attached on 5.10, where saturation is not kept),
//!   fired by `add_nr_running()`/`sub_nr_running()` after the count changed: every
//!   enqueue and dequeue (wakeups onto any CPU, new tasks, both ends of a migration,
//!   hotplug moving tasks off a dying CPU, bandwidth throttling);
//! - `sched_switch`: `rq->curr` changes without `nr_running` changing (a preempted task
//!   stays queued and now waits; the idle task hands over to a woken one);
//! - `sched_wakeup(struct task_struct *p)`, only on kernels with delayed dequeue: waking
//!   a task whose dequeue was delayed makes it runnable again without changing
//!   `nr_running` (`requeue_delayed_entity()`).

use agent_common::{
    counters,
    hist::Histogram,
    kvm::MAX_VCPU_THREADS,
    sched::{
        CGROUP_V2, DELAYED_COUNT, DELAYED_QUEUED_MINUS_RUNNABLE, RUNQ_MAX_CPUS, RunqCpu,
        SchedLayout,
    },
    sparse::family,
};
use aya_ebpf::{
    helpers::bpf_get_smp_processor_id,
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext},
};

use crate::shared::{
    DirectRead, KernelRead, ProbeRead, add_sample, count, global, now_ns, record_sparse,
};

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

/// Run-queue saturation per CPU, indexed by the run queue's CPU.
#[map(name = "RUNQ_SATURATION")]
static RUNQ_SATURATION: Array<RunqCpu> = Array::with_max_entries(RUNQ_MAX_CPUS, 0);

/// Updates CPU `cpu`'s saturation record from its run queue `rq`, whose current task is
/// `curr`. The caller holds the run queue's lock (every hook here runs under it).
#[inline(always)]
fn runq_update<R: KernelRead>(rq: u64, cpu: u32, curr: u64, l: &SchedLayout) {
    let Some(queued) = R::read::<u32>(rq, l.rq_nr_running) else {
        count(counters::RUNQ_UNRECORDED);
        return;
    };
    // Sleepers kept queued by delayed dequeue are counted in nr_running, not waiting.
    let delayed = match l.delayed_mode {
        DELAYED_COUNT => R::read::<u32>(rq, l.delayed_a).unwrap_or(0),
        DELAYED_QUEUED_MINUS_RUNNABLE => {
            let q = R::read::<u32>(rq, l.delayed_a).unwrap_or(0);
            let r = R::read::<u32>(rq, l.delayed_b).unwrap_or(0);
            q.saturating_sub(r)
        }
        _ => 0,
    };
    // The idle task (pid 0) is not counted in nr_running; any other current task is.
    let running = match R::read::<u32>(curr, l.task_pid) {
        Some(0) => 0,
        _ => 1,
    };
    let waiting = queued.saturating_sub(delayed).saturating_sub(running);
    let Some(s) = RUNQ_SATURATION.get_ptr_mut(cpu) else {
        count(counters::RUNQ_UNRECORDED);
        return;
    };
    // SAFETY: an element of an array map, valid while the program runs; its writers
    // all hold this CPU's run-queue lock, so no two write it at once.
    let s = unsafe { &mut *s };
    let now = now_ns();
    if waiting > 0 {
        if s.since_ns == 0 {
            s.since_ns = now;
        }
    } else if s.since_ns != 0 {
        s.saturated_ns += now.saturating_sub(s.since_ns);
        s.since_ns = 0;
    }
    s.waiting = waiting;
}

/// The run queue a task is queued on: `se.cfs_rq->rq` (set for tasks of every class).
#[inline(always)]
fn task_rq<R: KernelRead>(task: u64, l: &SchedLayout) -> Option<u64> {
    R::read::<u64>(task, l.task_cfs_rq).and_then(|cfs_rq| R::read::<u64>(cfs_rq, l.cfs_rq_rq))
}

#[inline(always)]
fn on_switch<R: KernelRead>(prev: u64, next: u64) {
    let l = global(&SCHED_LAYOUT);
    // The switch runs on the run queue's own CPU.
    // SAFETY: the helper takes no arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let rq = task_rq::<R>(next, &l)
        .or_else(|| task_rq::<R>(prev, &l))
        .filter(|&rq| rq != 0);
    if l.runq != 0 {
        match rq {
            Some(rq) => runq_update::<R>(rq, cpu, next, &l),
            None => count(counters::RUNQ_UNRECORDED),
        }
    }
    let Some(queued) = R::read::<u64>(next, l.task_last_queued) else {
        return;
    };
    if queued == 0 {
        return; // not waiting (the idle task, or sched_info off)
    }
    let Some(now) = rq.and_then(|rq| R::read::<u64>(rq, l.rq_clock)) else {
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

#[inline(always)]
fn on_nr_running<R: KernelRead>(rq: u64) {
    let l = global(&SCHED_LAYOUT);
    let (Some(cpu), Some(curr)) = (R::read::<u32>(rq, l.rq_cpu), R::read::<u64>(rq, l.rq_curr))
    else {
        count(counters::RUNQ_UNRECORDED);
        return;
    };
    runq_update::<R>(rq, cpu, curr, &l);
}

#[inline(always)]
fn on_wakeup<R: KernelRead>(task: u64) {
    let l = global(&SCHED_LAYOUT);
    match task_rq::<R>(task, &l) {
        Some(rq) if rq != 0 => on_nr_running::<R>(rq),
        _ => count(counters::RUNQ_UNRECORDED),
    }
}

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf(ctx: BtfTracePointContext) -> i32 {
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    on_switch::<DirectRead>(prev as u64, next as u64);
    0
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_raw(ctx: RawTracePointContext) -> i32 {
    let prev: u64 = ctx.arg(1);
    let next: u64 = ctx.arg(2);
    on_switch::<ProbeRead>(prev, next);
    0
}

// `sched_update_nr_running_tp(struct rq *rq, int count)`: a bare tracepoint (no tracefs
// event), attachable from 5.11, checked against 6.1 – 6.18.
#[btf_tracepoint(function = "sched_update_nr_running_tp")]
pub fn runq_nr_running_btf(ctx: BtfTracePointContext) -> i32 {
    let rq: *const u8 = ctx.arg(0);
    on_nr_running::<DirectRead>(rq as u64);
    0
}

#[raw_tracepoint(tracepoint = "sched_update_nr_running_tp")]
pub fn runq_nr_running_raw(ctx: RawTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(0);
    on_nr_running::<ProbeRead>(rq);
    0
}

// `sched_wakeup(struct task_struct *p)`, fired from `ttwu_do_wakeup()` with the task's
// run queue locked; attached only where delayed dequeue exists (6.12+).
#[btf_tracepoint(function = "sched_wakeup")]
pub fn runq_wakeup_btf(ctx: BtfTracePointContext) -> i32 {
    let task: *const u8 = ctx.arg(0);
    on_wakeup::<DirectRead>(task as u64);
    0
}

#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn runq_wakeup_raw(ctx: RawTracePointContext) -> i32 {
    let task: u64 = ctx.arg(0);
    on_wakeup::<ProbeRead>(task);
    0
}
