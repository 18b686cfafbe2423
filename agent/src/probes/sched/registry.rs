//! The scheduler family in the registry: `[probes.sched]`, its metric families, budget
//! and probe.

use super::{FAMILY_CGROUP, FAMILY_VM, NAME, SchedLayouts, SchedProbe};
use crate::{
    aggregate::budget::{LimitsConfig, Rule},
    attribution::cgroup_hierarchy,
    catalog::{Family, Kind},
    probes::{
        AttachKind, Kernel, OneProbe, Plan, ProbeFamily, Resolved, Setup,
    },
};

pub static PROBE_FAMILY: Sched = Sched;

pub struct Sched;

const VM: &[&str] = &["vm", "vm.uuid"];

const CATALOGUE: &[Family] = &[
    Family {
        name: "sched.runqueue.latency",
        probe: "sched",
        kind: Kind::Histogram,
        unit: "ns",
        labels: &[],
        description: "Time runnable tasks waited for a CPU, whole host",
    },
    Family {
        name: "cgroup.runqueue.latency",
        probe: "sched",
        kind: Kind::Histogram,
        unit: "ns",
        labels: &["cgroup"],
        description: "Time runnable tasks waited for a CPU, per cgroup",
    },
    Family {
        name: "vm.vcpu.wait",
        probe: "sched",
        kind: Kind::Histogram,
        unit: "ns",
        labels: VM,
        description: "Time vCPU threads waited for a host CPU, per VM",
    },
    Family {
        name: "sched.runqueue.saturated_time",
        probe: "sched",
        kind: Kind::Counter,
        unit: "ns",
        labels: &["cpu"],
        description: "Time the CPU had at least one task queued and not running; its rate \
                      is the CPU's run-queue saturation",
    },
];

impl ProbeFamily for Sched {
    fn name(&self) -> &'static str {
        NAME
    }

    fn catalogue(&self) -> &'static [Family] {
        CATALOGUE
    }

    fn budget_rules(&self, limits: &LimitsConfig) -> Vec<Rule> {
        vec![
            Rule::per_cgroup(FAMILY_CGROUP, limits),
            Rule::per_vm(FAMILY_VM, limits),
        ]
    }

    fn resolve(&self, setup: &Setup<'_>, kernel: &Kernel<'_>) -> Box<dyn Resolved> {
        let config = &setup.probes.sched;
        let hierarchy = cgroup_hierarchy(setup.attribution, config.cgroup);
        let only = config.attach;
        let reference = config.schedstat_reference;
        Box::new(OneProbe {
            plan: Plan {
                probe: NAME,
                enabled: config.enabled,
                forced: only,
                kinds: &AttachKind::TRACEPOINTS,
                not_applicable: None,
            },
            layouts: SchedLayouts::resolve(kernel.btf, hierarchy.as_ref(), config.saturation),
            attach: Box::new(move |layouts, ebpf, btf| {
                Box::new(SchedProbe::attach(ebpf, btf, layouts, only, reference))
            }),
        })
    }
}
