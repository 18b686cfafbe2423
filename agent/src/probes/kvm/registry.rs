//! The KVM family in the registry: `[probes.kvm]`, its metric families, budget and its
//! two probes (exits to userspace, and in-kernel exits where the CPU traces them).

use std::path::Path;

use aya::{Ebpf, EbpfLoader};

use super::{
    Config, ExitSource, FAMILY_EXIT, FAMILY_RUN, FAMILY_USERSPACE, KvmExitProbe, KvmLayouts,
    KvmUserspaceProbe, NAME_EXIT, NAME_USERSPACE, not_applicable,
};
use crate::{
    aggregate::budget::{LimitsConfig, Rule},
    catalog::{Family, Kind},
    kernel::module_btf::SYS_BTF_DIR,
    probes::{
        AttachKind, Kernel, Plan, Probe, ProbeFamily, Resolved, Setup, attach::Variant,
    },
};

pub static PROBE_FAMILY: Kvm = Kvm;

pub struct Kvm;

const VM_REASON: &[&str] = &["vm", "vm.uuid", "reason"];

const CATALOGUE: &[Family] = &[
    Family {
        name: "kvm.exit.userspace.latency",
        probe: "kvm",
        kind: Kind::Histogram,
        unit: "ns",
        labels: VM_REASON,
        description: "Time the VMM took to handle an exit to userspace, until the next \
                      KVM_RUN, per VM and reason",
    },
    Family {
        name: "kvm.run.duration",
        probe: "kvm",
        kind: Kind::Histogram,
        unit: "ns",
        labels: VM_REASON,
        description: "Duration of each KVM_RUN until it returned to the VMM, per VM and \
                      reason",
    },
    Family {
        name: "kvm.exit.latency",
        probe: "kvm_exit",
        kind: Kind::Histogram,
        unit: "ns",
        labels: &["vm", "vm.uuid", "isa", "reason"],
        description: "In-kernel KVM exit handling time, kvm_exit to kvm_entry, per VM and \
                      reason",
    },];

impl ProbeFamily for Kvm {
    fn name(&self) -> &'static str {
        NAME_USERSPACE
    }

    fn catalogue(&self) -> &'static [Family] {
        CATALOGUE
    }

    fn budget_rules(&self, limits: &LimitsConfig) -> Vec<Rule> {
        [FAMILY_USERSPACE, FAMILY_RUN, FAMILY_EXIT]
            .into_iter()
            .map(|f| Rule::per_vm(f, limits))
            .collect()
    }

    /// In-kernel exits fall back to classic tracepoints where no BTF says which
    /// arguments `kvm_exit` passes: a loadable kvm module without module BTF (5.10;
    /// `initstate` exists only for loadable modules, a built-in kvm is in vmlinux's
    /// BTF). Or where the configuration asks for them.
    fn needs_tracefs(&self, setup: &Setup<'_>) -> bool {
        let kvm = &setup.probes.kvm;
        let modular_without_btf = Path::new("/sys/module/kvm/initstate").exists()
            && !Path::new(SYS_BTF_DIR).join("kvm").exists();
        kvm.enabled
            && not_applicable(NAME_EXIT).is_none()
            && (kvm.attach == Some(AttachKind::Tracepoint) || modular_without_btf)
    }

    fn resolve(&self, setup: &Setup<'_>, kernel: &Kernel<'_>) -> Box<dyn Resolved> {
        let exit_applies = setup.probes.kvm.enabled && not_applicable(NAME_EXIT).is_none();
        let release = crate::kernel::release();
        let exit = exit_applies.then_some(ExitSource {
            btf_dir: Path::new(SYS_BTF_DIR),
            release: &release,
        });
        Box::new(Resolution {
            layouts: KvmLayouts::resolve(kernel.tracefs, kernel.btf, exit),
            config: setup.probes.kvm.clone(),
        })
    }
}

struct Resolution {
    layouts: KvmLayouts,
    config: Config,
}

impl Resolved for Resolution {
    fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        self.layouts.apply(loader);
    }

    fn plans(&self) -> Vec<Plan> {
        vec![
            Plan {
                probe: NAME_USERSPACE,
                enabled: self.config.enabled,
                forced: self.config.attach,
                kinds: &AttachKind::TRACEPOINTS,
                not_applicable: not_applicable(NAME_USERSPACE),
            },
            Plan {
                probe: NAME_EXIT,
                enabled: self.config.enabled,
                forced: self.config.attach,
                kinds: &AttachKind::TRACEPOINTS,
                not_applicable: not_applicable(NAME_EXIT),
            },
        ]
    }

    fn variants(&self, probe: &str, only: Option<AttachKind>) -> Vec<Variant> {
        match probe {
            NAME_EXIT => self.layouts.exit_variants(only),
            _ => self.layouts.userspace_variants(only),
        }
    }

    fn attach(&self, probe: &str, ebpf: &mut Ebpf, btf: Option<&aya::Btf>) -> Box<dyn Probe> {
        match probe {
            NAME_EXIT => Box::new(KvmExitProbe::attach(
                ebpf,
                btf,
                &self.layouts,
                self.config.attach,
            )),
            _ => Box::new(KvmUserspaceProbe::attach(
                ebpf,
                btf,
                &self.layouts,
                self.config.attach,
            )),
        }
    }
}
