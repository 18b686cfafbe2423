//! Run-queue latency and saturation: the kernel layout the agent resolves at load time,
//! and the per-CPU saturation record.

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
    /// `task_struct`.`sched_info.run_delay` and `.pcount`: the kernel's total wait and
    /// arrivals of the task, and `task_struct`.`start_time`, which tells a task from an
    /// earlier one with the same thread id
    pub task_run_delay: u32,
    pub task_pcount: u32,
    pub task_start_time: u32,
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
    /// `rq`.`nr_running` (tasks queued, the running one included), `rq`.`curr`, and
    /// `rq`.`cpu`: whether a CPU has a task waiting, and which CPU's record to update
    pub rq_nr_running: u32,
    pub rq_curr: u32,
    pub rq_cpu: u32,
    /// Sleeping tasks the scheduler keeps queued (delayed dequeue, 6.12+) are in
    /// `nr_running` but do not wait: [`DELAYED_NONE`], [`DELAYED_COUNT`]
    /// (`rq.cfs.h_nr_delayed` at `delayed_a`, 6.13) or [`DELAYED_QUEUED_MINUS_RUNNABLE`]
    /// (`rq.cfs.h_nr_queued` − `rq.cfs.h_nr_runnable`, 6.14+)
    pub delayed_mode: u32,
    pub delayed_a: u32,
    pub delayed_b: u32,
    /// 1 when run-queue saturation is kept: asked for, and the kernel lets BPF attach
    /// to the bare tracepoint `sched_update_nr_running_tp` (5.11+). 0: the switch
    /// program does no saturation work.
    pub runq: u32,
}
plain_data!(SchedLayout, 22 * 4);

pub const DELAYED_NONE: u32 = 0;
pub const DELAYED_COUNT: u32 = 1;
pub const DELAYED_QUEUED_MINUS_RUNNABLE: u32 = 2;

/// Run-queue saturation of one CPU: time with at least one task queued and not
/// running. One cache line, so CPUs never write each other's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunqCpu {
    /// Closed saturated periods since the probe attached, in nanoseconds of the run
    /// queue's clock.
    pub saturated_ns: u64,
    /// Start of the open saturated period in `bpf_ktime_get_ns()` (CLOCK_MONOTONIC)
    /// nanoseconds, 0 when none: what the agent adds up to its own clock.
    pub since_ns: u64,
    /// The same start in the run queue's clock (`rq->clock`), 0 when none.
    pub since_rq: u64,
    /// End of the last closed period, in the run queue's clock: a wait found later
    /// is not counted again before it.
    pub closed_rq: u64,
    pub _pad: [u64; 4],
}
plain_data!(RunqCpu, 8 * 8);

impl RunqCpu {
    /// Saturated time up to `now_ns` (CLOCK_MONOTONIC), the open period included.
    pub fn saturated_until(&self, now_ns: u64) -> u64 {
        let open = if self.since_ns != 0 {
            now_ns.saturating_sub(self.since_ns)
        } else {
            0
        };
        self.saturated_ns + open
    }
}

/// What the run-queue probe remembers of a task (by thread id) between the switch-ins
/// it sees: the task's `sched_info` totals once the last seen arrival is accounted
/// (`sched_info_arrive()` runs right after the tracepoint). The next switch-in's wait is
/// the kernel's run-delay growth since then, parts accounted at a migration included.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunqTask {
    /// `task_struct.start_time`: a thread id reused by a new task is not this one.
    pub start_time: u64,
    /// `sched_info.run_delay` after that arrival (ns).
    pub run_delay: u64,
    /// `sched_info.pcount` (arrivals) after it: a larger count at the next switch-in
    /// means switch-ins the program did not see.
    pub pcount: u64,
}
plain_data!(RunqTask, 3 * 8);

/// Tasks the run-queue probe remembers (an LRU map: the least recently switched-in
/// task is forgotten first, and then falls back to its last queue's wait once).
pub const RUNQ_MAX_TASKS: u32 = 65_536;

/// CPUs the saturation map has room for; a CPU numbered beyond is counted
/// (`counters::RUNQ_UNRECORDED`), not recorded.
pub const RUNQ_MAX_CPUS: u32 = 1024;

pub const CGROUP_V2: u32 = 0;
pub const CGROUP_V1_CPU: u32 = 1;

impl SchedLayout {
    pub const UNRESOLVED: Self = Self {
        task_pid: 0,
        task_tgid: 0,
        task_last_queued: 0,
        task_run_delay: 0,
        task_pcount: 0,
        task_start_time: 0,
        task_cfs_rq: 0,
        cfs_rq_rq: 0,
        rq_clock: 0,
        task_cgroups: 0,
        css_set_cgroup: 0,
        css_cgroup: 0,
        cgroup_kn: 0,
        kn_id: 0,
        cgroup_mode: 0,
        rq_nr_running: 0,
        rq_curr: 0,
        rq_cpu: 0,
        delayed_mode: DELAYED_NONE,
        delayed_a: 0,
        delayed_b: 0,
        runq: 0,
    };
}
