//! Run-queue latency: the kernel layout the agent resolves at load time.

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
plain_data!(SchedLayout, 12 * 4);

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
