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
}

impl Default for SchedConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            attach: None,
            cgroup: CgroupMode::Auto,
            saturation: false,
        }
    }
}
