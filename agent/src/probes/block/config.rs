//! `[probes.block]`.

use serde::Deserialize;

use crate::probes::attach::{AttachKind, attach_mode};

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlockConfig {
    pub enabled: bool,
    #[serde(deserialize_with = "attach_mode")]
    pub attach: Option<AttachKind>,
    /// Use the kernel's own issue timestamp where the queue keeps one.
    pub kernel_timestamps: bool,
    /// Latency and counts per cgroup that submitted the I/O.
    pub cgroups: bool,
}

impl Default for BlockConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            attach: None,
            kernel_timestamps: true,
            cgroups: true,
        }
    }
}
