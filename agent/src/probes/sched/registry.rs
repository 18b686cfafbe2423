//! The scheduler family in the registry: `[probes.sched]`, its metric families, budget
//! and probe.

use aya::{Ebpf, EbpfLoader};

use super::{Config, FAMILY_CGROUP, FAMILY_VM, NAME, SchedLayouts, SchedProbe};
use crate::{
    aggregate::budget::{LimitsConfig, Rule},
    attribution::cgroup_hierarchy,
    catalog::{Family, Kind},
    probes::{
        AttachKind, Kernel, Plan, Probe, ProbeFamily, Resolved, Setup, attach::Variant,
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
    },];

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
        Box::new(Resolution {
            layouts: SchedLayouts::resolve(kernel.btf, hierarchy.as_ref()),
            config: config.clone(),
        })
    }
}

struct Resolution {
    layouts: SchedLayouts,
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
        Box::new(SchedProbe::attach(
            ebpf,
            btf,
            &self.layouts,
            self.config.attach,
        ))
    }
}
