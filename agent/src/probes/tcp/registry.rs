//! The TCP family in the registry: `[probes.tcp]` (checked port groups), its metric
//! families and probe.

use aya::{Ebpf, EbpfLoader};

use super::{Config, NAME, TcpLayouts, TcpProbe, groups::port_table};
use crate::{
    catalog::{Family, Kind},
    probes::{
        AttachKind, Kernel, Plan, Probe, ProbeFamily, ProbesConfig, Resolved, Setup,
        attach::Variant,
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
        Box::new(Resolution {
            layouts: TcpLayouts::resolve(kernel.btf, &config.groups),
            config: config.clone(),
        })
    }
}

struct Resolution {
    layouts: TcpLayouts,
    config: Config,
}

impl Resolved for Resolution {
    fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        self.layouts.apply(loader);
    }

    fn plans(&self) -> Vec<Plan> {
        vec![Plan {
            probe: NAME,
            enabled: self.config.enabled,
            forced: self.config.attach,
            kinds: &AttachKind::TRACEPOINTS,
            not_applicable: None,
        }]
    }

    fn variants(&self, _probe: &str, only: Option<AttachKind>) -> Vec<Variant> {
        self.layouts.variants(only)
    }

    fn attach(&self, _probe: &str, ebpf: &mut Ebpf, btf: Option<&aya::Btf>) -> Box<dyn Probe> {
        Box::new(TcpProbe::attach(
            ebpf,
            btf,
            &self.layouts,
            self.config.attach,
            &self.config.groups,
        ))
    }
}
