//! `[probes.tcp]`.

use serde::Deserialize;

use super::groups::{self, PortGroup};
use crate::probes::attach::{AttachKind, attach_mode};

/// The storage network probe: TCP round-trip times and retransmissions per peer port
/// group.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpConfig {
    pub enabled: bool,
    #[serde(deserialize_with = "attach_mode")]
    pub attach: Option<AttachKind>,
    /// Named port sets; a connection counts in the group of its remote port, else of
    /// its local port. Default: Ceph's monitor and OSD ports.
    pub groups: Vec<PortGroup>,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            attach: None,
            groups: groups::ceph_defaults(),
        }
    }
}
