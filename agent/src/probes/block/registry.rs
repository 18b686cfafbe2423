//! The block family in the registry: `[probes.block]`, its metric families, budget and
//! probe.

use aya::{Ebpf, EbpfLoader};

use super::{
    BlockLayouts, BlockProbe, Config, FAMILY, FAMILY_CGROUP, FAMILY_DEPTH, FAMILY_DEVICE,
    FAMILY_QUEUE, FAMILY_SIZE, NAME, measured_with,
};
use crate::{
    aggregate::budget::{LimitsConfig, Rule},
    catalog::{Family, Kind},
    probes::{
        AttachKind, Kernel, Plan, Probe, ProbeFamily, Resolved, Setup, attach::Variant,
        outliers::OutliersConfig,
    },
};

pub static PROBE_FAMILY: Block = Block;

pub struct Block;

const BLOCK: &[&str] = &["device", "dev", "op"];

const CATALOGUE: &[Family] = &[
    Family {
        name: "block.io.latency",
        probe: "block",
        kind: Kind::Histogram,
        unit: "ns",
        labels: BLOCK,
        description: "Block I/O latency per device and operation: queue time plus device \
                      time, from insertion into the I/O scheduler (or issue to the driver \
                      for requests that bypass it) to completion",
    },
    Family {
        name: "block.io.queue.latency",
        probe: "block",
        kind: Kind::Histogram,
        unit: "ns",
        labels: BLOCK,
        description: "Time block requests waited in the I/O scheduler, insertion to issue; \
                      requests that bypassed the scheduler count as 0 (the zero bucket)",
    },
    Family {
        name: "block.io.device.latency",
        probe: "block",
        kind: Kind::Histogram,
        unit: "ns",
        labels: BLOCK,
        description: "Time the driver and device took per block request, issue to \
                      completion",
    },
    Family {
        name: "block.io.queue_depth",
        probe: "block",
        kind: Kind::Histogram,
        unit: "{request}",
        labels: &["device", "dev"],
        description: "Requests in flight on the device (issued to the driver, not yet \
                      completed) at each issue, the issued one included",
    },
    Family {
        name: "block.io.size",
        probe: "block",
        kind: Kind::Histogram,
        unit: "By",
        labels: BLOCK,
        description: "Size of each completed block request",
    },
    Family {
        name: "block.io.errors",
        probe: "block",
        kind: Kind::Counter,
        unit: "{request}",
        labels: &["device", "dev", "op", "error"],
        description: "Block requests that completed with an error, by error",
    },
    Family {
        name: "block.cgroup.io.latency",
        probe: "block",
        kind: Kind::Histogram,
        unit: "ns",
        labels: &["cgroup", "op"],
        description: "Block I/O latency (as block.io.latency) per cgroup that submitted \
                      the I/O; its counts are the cgroup's completed requests",
    },
];

impl ProbeFamily for Block {
    fn name(&self) -> &'static str {
        NAME
    }

    fn catalogue(&self) -> &'static [Family] {
        CATALOGUE
    }

    fn budget_rules(&self, limits: &LimitsConfig) -> Vec<Rule> {
        let mut rules: Vec<Rule> = [FAMILY, FAMILY_QUEUE, FAMILY_DEVICE, FAMILY_DEPTH, FAMILY_SIZE]
            .into_iter()
            .map(|f| Rule::per_device(f, limits))
            .collect();
        rules.push(Rule::per_cgroup(FAMILY_CGROUP, limits));
        rules
    }

    fn needs_tracefs(&self, setup: &Setup<'_>) -> bool {
        setup.probes.block.attach == Some(AttachKind::Tracepoint)
    }

    fn measured_with(&self, family: &str, kind: AttachKind) -> bool {
        measured_with(family, kind)
    }

    fn resolve(&self, setup: &Setup<'_>, kernel: &Kernel<'_>) -> Box<dyn Resolved> {
        let config = &setup.probes.block;
        Box::new(Resolution {
            layouts: BlockLayouts::resolve(
                kernel.btf,
                kernel.tracefs,
                config.kernel_timestamps,
                config.cgroups,
                setup.outliers_enabled,
            ),
            config: config.clone(),
            sys_root: setup.sys_root.to_path_buf(),
            outliers: setup.outliers.clone(),
        })
    }
}

struct Resolution {
    layouts: BlockLayouts,
    config: Config,
    sys_root: std::path::PathBuf,
    outliers: OutliersConfig,
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
            kinds: &AttachKind::CHAIN,
            not_applicable: None,
        }]
    }

    fn variants(&self, _probe: &str, only: Option<AttachKind>) -> Vec<Variant> {
        self.layouts.variants(only)
    }

    fn attach(&self, _probe: &str, ebpf: &mut Ebpf, btf: Option<&aya::Btf>) -> Box<dyn Probe> {
        Box::new(BlockProbe::attach(
            ebpf,
            btf,
            &self.layouts,
            self.config.attach,
            &self.sys_root,
            &self.outliers,
        ))
    }
}
