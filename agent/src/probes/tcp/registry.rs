//! The TCP family in the registry: `[probes.tcp]` (checked port groups), its metric
//! families and probe.

use super::{NAME, TcpLayouts, TcpProbe, groups::port_table};
use crate::{
    catalog::{Family, Kind},
    probes::{
        AttachKind, Kernel, OneProbe, Plan, ProbeFamily, ProbesConfig, Resolved, Setup,
    },
    settings::ConfigError,
};

pub static PROBE_FAMILY: Tcp = Tcp;

pub struct Tcp;

const CATALOGUE: &[Family] = &[
    Family {
        name: "net.tcp.rtt",
        probe: "tcp",
        kind: Kind::Histogram,
        unit: "ns",
        labels: &["peer.group"],
        description: "TCP round-trip time per peer port group: the kernel's latest RTT \
                      sample (RACK), one per segment received while data is in flight",
    },
    Family {
        name: "net.tcp.retransmits",
        probe: "tcp",
        kind: Kind::Counter,
        unit: "{packet}",
        labels: &["peer.group"],
        description: "TCP packets retransmitted per peer port group (a GSO packet \
                      retransmitted at once counts once)",
    },];

impl ProbeFamily for Tcp {
    fn name(&self) -> &'static str {
        NAME
    }

    fn catalogue(&self) -> &'static [Family] {
        CATALOGUE
    }

    fn validate(&self, probes: &ProbesConfig) -> Result<(), ConfigError> {
        port_table(&probes.tcp.groups)
            .map(drop)
            .map_err(|problem| ConfigError::Invalid {
                key: "probes.tcp.groups",
                problem,
            })
    }

    fn resolve(&self, setup: &Setup<'_>, kernel: &Kernel<'_>) -> Box<dyn Resolved> {
        let config = &setup.probes.tcp;
        let (only, groups) = (config.attach, config.groups.clone());
        Box::new(OneProbe {
            plan: Plan {
                probe: NAME,
                enabled: config.enabled,
                forced: only,
                kinds: &AttachKind::TRACEPOINTS,
                not_applicable: None,
            },
            layouts: TcpLayouts::resolve(kernel.btf, &groups),
            attach: Box::new(move |layouts, ebpf, btf| {
                Box::new(TcpProbe::attach(ebpf, btf, layouts, only, &groups))
            }),
        })
    }
}
