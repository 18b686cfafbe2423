//! `[probes.sched]`.

use serde::Deserialize;

use crate::{
    attribution::CgroupMode,
    probes::attach::{AttachKind, attach_mode},
};

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedConfig {
    pub enabled: bool,
    #[serde(deserialize_with = "attach_mode")]
    pub attach: Option<AttachKind>,
    /// Which cgroup a task is counted in.
    pub cgroup: CgroupMode,
    /// Keep run-queue saturation per CPU (`sched.runqueue.saturated_time`, and the
    /// capacity signal from it): one more program on every enqueue and dequeue, and a
    /// little more work at every switch. Off by default.
    pub saturation: bool,
    /// Log the kernel's own run-delay total (`/proc/schedstat`, summed over CPUs) read
    /// right before and right after each read of the host-wide run-queue histogram:
    /// the waits reported between two reads lie between the kernel's growth over the
    /// inner and the outer pair of those reads. For checking the probe against the
    /// kernel (the kernel matrix does). Off by default.
    pub schedstat_reference: bool,
}

impl Default for SchedConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            attach: None,
            cgroup: CgroupMode::Auto,
            saturation: false,
            schedstat_reference: false,
        }
    }
}
