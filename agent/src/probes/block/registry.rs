//! The block family in the registry: `[probes.block]`, its metric families, budget and
//! probe.

use super::{
    BlockLayouts, BlockProbe, FAMILY, FAMILY_CGROUP, FAMILY_DEPTH, FAMILY_DEVICE,
    FAMILY_QUEUE, FAMILY_SIZE, NAME, measured_with,
};
use crate::{
    aggregate::budget::{LimitsConfig, Rule},
    catalog::{Family, Kind},
    probes::{
        AttachKind, Kernel, OneProbe, Plan, ProbeFamily, Resolved, Setup,
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
        name: "block.io.busy_time",
        probe: "block",
        kind: Kind::Counter,
        unit: "ns",
        labels: &["device", "dev"],
        description: "Time the device had at least one request started and not completed \
                      (the kernel's io_ticks, in nanoseconds); its rate is the busy fraction",
    },
    Family {
        name: "block.io.unrecorded",
        probe: "block",
        kind: Kind::Counter,
        unit: "{request}",
        labels: &["device", "dev", "op", "cause"],
        description: "Block requests the kernel completed without a recorded sample, by cause: \
                      unseen (the kernel did not run the completion program), unmatched \
                      (no issue record), unaccounted (neither recorded nor counted: the \
                      kernel's completed count in /sys/block/<disk>/stat beyond the probe's, \
                      compared whenever the device is idle at a reading)",
    },
    Family {
        name: "block.io.overcounted",
        probe: "block",
        kind: Kind::Counter,
        unit: "{request}",
        labels: &["device", "dev", "op"],
        description: "Block requests the probe recorded or counted beyond the kernel's own \
                      completed count (/sys/block/<disk>/stat): double counts",
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
        let (only, sys_root, outliers) = (
            config.attach,
            setup.sys_root.to_path_buf(),
            setup.outliers.clone(),
        );
        Box::new(OneProbe {
            plan: Plan {
                probe: NAME,
                enabled: config.enabled,
                forced: only,
                kinds: &AttachKind::CHAIN,
                not_applicable: None,
            },
            layouts: BlockLayouts::resolve(
                kernel.btf,
                kernel.tracefs,
                config.kernel_timestamps,
                config.cgroups,
                setup.outliers_enabled,
            ),
            attach: Box::new(move |layouts, ebpf, btf| {
                Box::new(BlockProbe::attach(
                    ebpf, btf, layouts, only, &sys_root, &outliers,
                ))
            }),
        })
    }
}
