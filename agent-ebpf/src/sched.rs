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
//! task stays runnable) in the run queue's clock. At switch-in the last part of the
//! wait is `rq->clock - next->sched_info.last_queued`, exactly the delta
//! `sched_info_arrive()` adds to `/proc/<pid>/schedstat`'s run_delay right after the
//! tracepoint. Nothing runs on the wakeup path.
//!
//! A task moved to another CPU while it waits (the load balancer pulls waiting tasks)
//! has its wait so far added to run_delay at the dequeue (`sched_info_dequeue()`) and a
//! new `last_queued` on the new queue, so the last part alone is short. The program
//! therefore remembers per task (`RUNQ_TASKS`, by thread id) what run_delay and the
//! arrival count (`pcount`) will be once this arrival is accounted; at the next
//! switch-in the wait is run_delay's growth since then plus the new last part: the
//! kernel's own wait, every part included. An arrival count grown by more than one
//! means switch-ins the kernel did not run the program for: their waits are
//! in this sample, and their number is counted. A task seen for the first time gives
//! the last part alone. `sched_process_free` forgets a task; the agent sweeps out the
//! entries of tasks whose free the kernel skipped. The map never evicts a live task's
//! entry (a forgotten task's next sample would be its last part only, uncounted): when
//! it is full, the tasks it cannot remember are counted.
//!
//! Run-queue saturation (per CPU: time with at least one task queued and not running)
//! is kept from the kernel's own counts rather than from task events: at a change the
//! program reads `rq->nr_running` (the tasks queued, the running one included), the
//! sleepers delayed dequeue keeps queued (6.12+), and whether the current task is the
//! idle task, so each update stands on its own and nothing drifts. Two hooks, both run
//! with that run queue's lock held, which serialises the updates of one CPU's record
//! whichever CPU runs them:
//! - `sched_update_nr_running_tp(struct rq *rq, int count)` (a bare tracepoint, which
//!   BPF can attach to from 5.11; not attached on 5.10, where saturation is not kept),
//!   fired by `add_nr_running()`/`sub_nr_running()` after the count changed: every
//!   enqueue and dequeue (wakeups onto any CPU, new tasks, both ends of a migration,
//!   hotplug, bandwidth throttling);
//! - `sched_switch`, the latency program above, which already has the run queue and
//!   its clock: `rq->curr` changes without `nr_running` changing (a preempted task stays
//!   queued and now waits; the idle task hands over to a woken one).
//!
//! One change has no hook of its own: waking a task whose dequeue was delayed makes it
//! runnable again without changing `nr_running` (`requeue_delayed_entity()`). A program
//! on every wakeup cost ~150 ns (with ~90 ns more per switch, 18 % of a switch storm's
//! throughput), so instead the start is recovered when the task is switched in: its
//! `sched_info.last_queued` says since when it waited on this queue, and the CPU was
//! saturated at least since then (not before the record's last closed period ended).
//! Only a wait of such a task that ends by migration, not by running here, goes
//! unseen. All times are the run queue's clock (`rq->clock`, the base of
//! `last_queued`); `bpf_ktime_get_ns()` is read only to open a period, for the agent
//! to add the open part up to its own clock. Each CPU's record is a cache line of its
//! own: two CPUs switching never write the same line.
//!
//! The saturation work runs only when the agent asks for it (`SchedLayout::runq`); off,
//! the switch program costs what it did without it.

use agent_common::{
    counters,
    hist::Histogram,
    kvm::MAX_VCPU_THREADS,
    sched::{
        CGROUP_V2, DELAYED_COUNT, DELAYED_QUEUED_MINUS_RUNNABLE, RUNQ_MAX_CPUS, RUNQ_MAX_TASKS,
        RunqCpu, RunqTask, SchedLayout,
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
    DirectRead, KernelRead, ProbeRead, add_sample, count, count_by, global, now_ns, record_sparse,
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

/// Run-queue saturation per CPU, indexed by the run queue's CPU. Mmapable so the
/// kernel page-aligns the values: each 64-byte record is a cache line of its own.
#[map(name = "RUNQ_SATURATION")]
static RUNQ_SATURATION: Array<RunqCpu> = Array::with_max_entries(RUNQ_MAX_CPUS, BPF_F_MMAPABLE);

/// Per thread id: the task's `sched_info` totals after the last arrival the switch
/// program saw. Written only at that task's switch-in (one CPU at a time, under its run
/// queue's lock) and removed when the task is freed, or by the agent's sweep when the
/// kernel skipped that free.
#[map(name = "RUNQ_TASKS")]
static RUNQ_TASKS: HashMap<u32, RunqTask> = HashMap::with_max_entries(RUNQ_MAX_TASKS, 0);

/// `BPF_F_MMAPABLE` (5.5+).
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Tasks queued on `rq` and not running when `curr` runs: `nr_running`, less the
/// sleepers delayed dequeue keeps queued, less `curr` unless it is the idle task (pid 0,
/// not counted in `nr_running`).
#[inline(always)]
fn waiting<R: KernelRead>(rq: u64, curr: u64, l: &SchedLayout) -> Option<u32> {
    let queued = R::read::<u32>(rq, l.rq_nr_running)?;
    let delayed = match l.delayed_mode {
        DELAYED_COUNT => R::read::<u32>(rq, l.delayed_a)?,
        DELAYED_QUEUED_MINUS_RUNNABLE => {
            let q = R::read::<u32>(rq, l.delayed_a)?;
            let r = R::read::<u32>(rq, l.delayed_b)?;
            q.saturating_sub(r)
        }
        _ => 0,
    };
    let running = u32::from(R::read::<u32>(curr, l.task_pid)? != 0);
    Some(queued.saturating_sub(delayed).saturating_sub(running))
}

/// Updates CPU `cpu`'s record at `now` (its run queue's clock): `waiting` whether a
/// task waits after this change; `waited_since` the `last_queued` of a task switched in
/// by it (0: none), a wait the CPU was saturated through. The caller holds the run
/// queue's lock. Writes only when the record changes, so a CPU switching between tasks
/// that never wait keeps its line clean.
#[inline(always)]
fn runq_record(cpu: u32, now: u64, waiting: bool, waited_since: u64) {
    let Some(s) = RUNQ_SATURATION.get_ptr_mut(cpu) else {
        count(counters::RUNQ_UNRECORDED);
        return;
    };
    // SAFETY: an element of an array map, valid while the program runs; its writers
    // all hold this CPU's run-queue lock, so no two write it at once.
    let s = unsafe { &mut *s };
    let open = s.since_rq;
    let mut start = open;
    // A wait that began before the open period (or with none open) and after the last
    // closed one: its start had no hook (a delayed sleeper woken).
    if waited_since != 0 {
        let from = waited_since.max(s.closed_rq);
        if from < now && (start == 0 || from < start) {
            start = from;
        }
    }
    if start == 0 {
        if waiting {
            s.since_rq = now;
            s.since_ns = now_ns();
        }
        return;
    }
    if waiting {
        if start != open {
            s.since_ns = if open == 0 {
                now_ns().saturating_sub(now - start)
            } else {
                s.since_ns.saturating_sub(open - start)
            };
            s.since_rq = start;
        }
    } else {
        s.saturated_ns += now.saturating_sub(start);
        s.closed_rq = now;
        s.since_rq = 0;
        s.since_ns = 0;
    }
}

/// The run queue a task is queued on: `se.cfs_rq->rq` (set for tasks of every class,
/// the idle task included).
#[inline(always)]
fn task_rq<R: KernelRead>(task: u64, l: &SchedLayout) -> Option<u64> {
    R::read::<u64>(task, l.task_cfs_rq)
        .and_then(|cfs_rq| R::read::<u64>(cfs_rq, l.cfs_rq_rq))
        .filter(|&rq| rq != 0)
}

#[inline(always)]
fn on_switch<R: KernelRead>(next: u64) {
    let l = global(&SCHED_LAYOUT);
    let queued = R::read::<u64>(next, l.task_last_queued).unwrap_or(0);
    if queued == 0 && l.runq == 0 {
        return; // not waiting (the idle task, or sched_info off)
    }
    let Some(rq) = task_rq::<R>(next, &l) else {
        if l.runq != 0 {
            count(counters::RUNQ_UNRECORDED);
        }
        return;
    };
    let Some(now) = R::read::<u64>(rq, l.rq_clock) else {
        return;
    };
    if l.runq != 0 {
        // The switch runs on the run queue's own CPU.
        // SAFETY: the helper takes no arguments.
        let cpu = unsafe { bpf_get_smp_processor_id() };
        match waiting::<R>(rq, next, &l) {
            Some(w) => runq_record(cpu, now, w > 0, if queued <= now { queued } else { 0 }),
            None => count(counters::RUNQ_UNRECORDED),
        }
    }
    if queued == 0 || now < queued {
        return;
    }
    let wait = task_wait::<R>(next, &l, now - queued);

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

/// The wait of `task` that ends at this switch-in: the growth of its run_delay since
/// the last arrival the program saw, plus `last_part` (what `sched_info_arrive()` adds
/// after the tracepoint). So the parts the scheduler accounted when it moved the
/// waiting task between CPUs are in it, as are the waits of switch-ins the program did
/// not see (counted). A task not remembered gives `last_part` alone.
#[inline(always)]
fn task_wait<R: KernelRead>(task: u64, l: &SchedLayout, last_part: u64) -> u64 {
    let (Some(pid), Some(start_time), Some(run_delay), Some(pcount)) = (
        R::read::<u32>(task, l.task_pid),
        R::read::<u64>(task, l.task_start_time),
        R::read::<u64>(task, l.task_run_delay),
        R::read::<u64>(task, l.task_pcount),
    ) else {
        count(counters::RUNQ_TASKS_UNREMEMBERED);
        return last_part;
    };
    let after = RunqTask {
        start_time,
        run_delay: run_delay + last_part,
        pcount: pcount + 1,
    };
    let Some(seen) = RUNQ_TASKS.get_ptr_mut(pid) else {
        if RUNQ_TASKS.insert(pid, after, 0).is_err() {
            count(counters::RUNQ_TASKS_UNREMEMBERED);
        }
        return last_part;
    };
    // SAFETY: a value of the task map, valid while the program runs; only this task's
    // switch-in writes it, and a task is switched in on one CPU at a time.
    let seen = unsafe { &mut *seen };
    // Another task with this id (its predecessor's free was missed) starts afresh.
    let same = seen.start_time == start_time && run_delay >= seen.run_delay;
    let wait = if same && pcount >= seen.pcount {
        if pcount > seen.pcount {
            count_by(counters::RUNQ_SWITCH_INS_UNSEEN, pcount - seen.pcount);
        }
        run_delay - seen.run_delay + last_part
    } else {
        last_part
    };
    *seen = after;
    wait
}

/// Forgets a freed task, unless its thread id already belongs to a newer task.
#[inline(always)]
fn on_task_free<R: KernelRead>(task: u64) {
    let l = global(&SCHED_LAYOUT);
    let (Some(pid), Some(start_time)) = (
        R::read::<u32>(task, l.task_pid),
        R::read::<u64>(task, l.task_start_time),
    ) else {
        return;
    };
    // SAFETY: the value is copied out at once; a concurrent rewrite by the id's new
    // task changes its start time, which then does not match.
    if unsafe { RUNQ_TASKS.get(pid) }.is_some_and(|t| t.start_time == start_time) {
        let _ = RUNQ_TASKS.remove(pid);
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
    let (Some(cpu), Some(curr), Some(now)) = (
        R::read::<u32>(rq, l.rq_cpu),
        R::read::<u64>(rq, l.rq_curr),
        R::read::<u64>(rq, l.rq_clock),
    ) else {
        count(counters::RUNQ_UNRECORDED);
        return;
    };
    match waiting::<R>(rq, curr, &l) {
        Some(w) => runq_record(cpu, now, w > 0, 0),
        None => count(counters::RUNQ_UNRECORDED),
    }
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

// `sched_process_free(struct task_struct *p)`, fired from the RCU callback that frees
// the task (`delayed_put_task_struct()`); present since before 5.10, attached on 6.18
// and on every kernel of the matrix (5.10, 5.15, 6.1, 6.8, 6.12).
#[btf_tracepoint(function = "sched_process_free")]
pub fn runq_task_free_btf(ctx: BtfTracePointContext) -> i32 {
    let task: *const u8 = ctx.arg(0);
    on_task_free::<DirectRead>(task as u64);
    0
}

#[raw_tracepoint(tracepoint = "sched_process_free")]
pub fn runq_task_free_raw(ctx: RawTracePointContext) -> i32 {
    let task: u64 = ctx.arg(0);
    on_task_free::<ProbeRead>(task);
    0
}
