//! KVM exits per VM and reason (kernel side: `agent-ebpf/src/kvm.rs`): time the VMM
//! spends handling exits to userspace (every KVM host), and in-kernel exit handling
//! (VMX/SVM hosts).

pub mod exit_reason;
mod registry;
pub mod reasons;

use std::path::Path;

use agent_common::{kvm::KvmExitLayout, names, sparse::family};
use aya::{Ebpf, EbpfLoader};

use super::{
    Probe, ReadContext, Reading,
    attach::{AttachKind, Attached, Hook, ProgramSpec, Variant, attach_first},
    sparse,
};
use crate::{
    aggregate::{EntityState, SeriesKey},
    kernel::{btf::Btf, tracefs},
};
use exit_reason::ExitArgs;
pub use registry::PROBE_FAMILY;
/// Nothing to set but whether it runs and how it attaches.
pub type Config = super::attach::ProbeConfig;

pub const NAME_USERSPACE: &str = "kvm";
pub const NAME_EXIT: &str = "kvm_exit";
pub const FAMILY_USERSPACE: &str = "kvm.exit.userspace.latency";
pub const FAMILY_RUN: &str = "kvm.run.duration";
pub const FAMILY_EXIT: &str = "kvm.exit.latency";

/// Why a KVM probe cannot apply to this host, if it cannot: in-kernel exits are only
/// traced by VMX and SVM (a PVM or software-only KVM never fires `kvm_exit`).
pub fn not_applicable(probe: &str) -> Option<&'static str> {
    if probe != NAME_EXIT {
        return None;
    }
    if !Path::new("/dev/kvm").exists() {
        return Some("no /dev/kvm: this is not a KVM host");
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hardware = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    (!hardware).then_some(
        "the CPU shows neither vmx nor svm, so KVM runs guests without them and \
         kvm_exit/kvm_entry never fire here; exits to userspace are still measured",
    )
}

/// What the variants need: for the classic tracepoints, their records' layouts from
/// tracefs; for the in-kernel exit's tp_btf and raw tracepoint programs, where the exit
/// reason is, from BTF.
pub struct KvmLayouts {
    /// The userspace-exit and KVM_RUN records have the layout the programs assume.
    classic_ok: Result<(), String>,
    exit: Result<KvmExitLayout, String>,
    exit_args: Result<ExitArgs, String>,
}

/// Where the form of `kvm_exit` is read: the kernel's BTF directory (normally
/// [`crate::kernel::module_btf::SYS_BTF_DIR`]) and, where BTF cannot say, its release
/// (`uname -r`).
pub struct ExitSource<'a> {
    pub btf_dir: &'a Path,
    pub release: &'a str,
}

impl KvmLayouts {
    /// `exit` is given only when the in-kernel exit probe applies (it reads module BTF,
    /// which a host without VMX/SVM does not need).
    pub fn resolve(
        tracefs: Option<&Path>,
        vmlinux: Option<&Btf>,
        exit: Option<ExitSource<'_>>,
    ) -> Self {
        let exit_args = if let Some(ExitSource { btf_dir, release }) = exit {
            let args = exit_reason::resolve(btf_dir, vmlinux, release);
            if let Ok(ExitArgs::ReasonByRelease { btf }) = &args {
                tracing::info!(
                    release,
                    "kvm_exit: {btf}, so its arguments are judged by the release: before \
                     5.16 they are (exit_reason, vcpu, isa), and the raw tracepoint reads the \
                     reason from argument 0 (the kernel refuses the program at attach if \
                     kvm_exit has fewer arguments)"
                );
            }
            args
        } else {
            Err("in-kernel exits are not traced on this host".to_owned())
        };
        let Some(root) = tracefs else {
            let why = "tracefs is not mounted".to_owned();
            return Self {
                classic_ok: Err(why.clone()),
                exit: Err(why),
                exit_args,
            };
        };
        let fixed = || -> Result<(), tracefs::TracefsError> {
            let f = tracefs::Format::read(root, "kvm", "kvm_userspace_exit")?;
            let g = tracefs::Format::read(root, "kvm", "kvm_fpu")?;
            let expected = [
                (f.offset("reason", 4)?, 8),
                (f.offset("errno", 4)?, 12),
                (g.offset("load", 4)?, 8),
            ];
            if expected.iter().all(|(got, want)| got == want) {
                Ok(())
            } else {
                Err(tracefs::TracefsError::NoField {
                    tracepoint: "kvm:kvm_userspace_exit".into(),
                    field: "reason/errno/load at the expected offsets".into(),
                })
            }
        };
        let exit = || -> Result<KvmExitLayout, tracefs::TracefsError> {
            let f = tracefs::Format::read(root, "kvm", "kvm_exit")?;
            Ok(KvmExitLayout {
                exit_reason: f.offset("exit_reason", 4)?,
                isa: f.offset("isa", 4)?,
            })
        };
        Self {
            classic_ok: fixed().map_err(|e| e.to_string()),
            exit: exit().map_err(|e| e.to_string()),
            exit_args,
        }
    }

    pub fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        if let Ok(layout) = &self.exit {
            loader.override_global(names::GLOBAL_KVM_EXIT_LAYOUT, layout, true);
        }
        if let Ok(ExitArgs::Vcpu(reason)) = &self.exit_args {
            loader.override_global(names::GLOBAL_KVM_EXIT_REASON, reason, true);
        }
    }

    /// Exits to userspace: the KVM_RUN side first, so every recorded exit is closed.
    pub fn userspace_variants(&self, only: Option<AttachKind>) -> Vec<Variant> {
        let spec = |program, hook| ProgramSpec { program, hook };
        [
            Variant {
                kind: AttachKind::TpBtf,
                programs: vec![
                    spec(names::PROG_KVM_RUN_BTF, Hook::ModuleTpBtf("kvm", "kvm_fpu")),
                    spec(
                        names::PROG_KVM_USER_EXIT_BTF,
                        Hook::ModuleTpBtf("kvm", "kvm_userspace_exit"),
                    ),
                ],
                unavailable: None,
            },
            Variant {
                kind: AttachKind::RawTracepoint,
                programs: vec![
                    spec(names::PROG_KVM_RUN_RAW, Hook::Raw("kvm_fpu")),
                    spec(
                        names::PROG_KVM_USER_EXIT_RAW,
                        Hook::Raw("kvm_userspace_exit"),
                    ),
                ],
                unavailable: None,
            },
            Variant {
                kind: AttachKind::Tracepoint,
                programs: vec![
                    spec(names::PROG_KVM_RUN_TP, Hook::Tracepoint("kvm", "kvm_fpu")),
                    spec(
                        names::PROG_KVM_USER_EXIT_TP,
                        Hook::Tracepoint("kvm", "kvm_userspace_exit"),
                    ),
                ],
                unavailable: self.classic_ok.clone().err(),
            },
        ]
        .into_iter()
        .filter(|v| only.is_none_or(|k| k == v.kind))
        .collect()
    }

    /// In-kernel exits: tp_btf and raw tracepoint where BTF says which arguments
    /// `kvm_exit` passes (and so which program reads them), else the classic
    /// tracepoint, whose record holds the reason. The entry side first.
    pub fn exit_variants(&self, only: Option<AttachKind>) -> Vec<Variant> {
        let spec = |program, hook| ProgramSpec { program, hook };
        let (exit_btf, exit_raw) = match &self.exit_args {
            Ok(ExitArgs::Reason | ExitArgs::ReasonByRelease { .. }) => (
                names::PROG_KVM_EXIT_BTF_REASON,
                names::PROG_KVM_EXIT_RAW_REASON,
            ),
            _ => (names::PROG_KVM_EXIT_BTF, names::PROG_KVM_EXIT_RAW),
        };
        let classic = "the classic kvm:kvm_exit record, which holds the reason, is read instead";
        let raw = self
            .exit_args
            .as_ref()
            .err()
            .map(|why| format!("{why}: {classic}"));
        let typed = match &self.exit_args {
            Ok(ExitArgs::ReasonByRelease { btf }) => Some(format!(
                "{btf}: tp_btf needs kvm_exit's type; the raw tracepoint reads its arguments \
                 by the release instead"
            )),
            _ => raw.clone(),
        };
        [
            Variant {
                kind: AttachKind::TpBtf,
                programs: vec![
                    spec(
                        names::PROG_KVM_ENTRY_BTF,
                        Hook::ModuleTpBtf("kvm", "kvm_entry"),
                    ),
                    spec(exit_btf, Hook::ModuleTpBtf("kvm", "kvm_exit")),
                ],
                unavailable: typed,
            },
            Variant {
                kind: AttachKind::RawTracepoint,
                programs: vec![
                    spec(names::PROG_KVM_ENTRY_RAW, Hook::Raw("kvm_entry")),
                    spec(exit_raw, Hook::Raw("kvm_exit")),
                ],
                unavailable: raw,
            },
            Variant {
                kind: AttachKind::Tracepoint,
                programs: vec![
                    spec(
                        names::PROG_KVM_ENTRY_TP,
                        Hook::Tracepoint("kvm", "kvm_entry"),
                    ),
                    spec(names::PROG_KVM_EXIT_TP, Hook::Tracepoint("kvm", "kvm_exit")),
                ],
                unavailable: self.exit.as_ref().err().cloned(),
            },
        ]
        .into_iter()
        .filter(|v| only.is_none_or(|k| k == v.kind))
        .collect()
    }
}

/// Exits to the VMM in userspace.
pub struct KvmUserspaceProbe {
    attached: Attached,
}

impl KvmUserspaceProbe {
    pub fn attach(
        ebpf: &mut Ebpf,
        btf: Option<&aya::Btf>,
        layouts: &KvmLayouts,
        only: Option<AttachKind>,
    ) -> Self {
        Self {
            attached: attach_first(ebpf, btf, &layouts.userspace_variants(only)),
        }
    }
}

impl Probe for KvmUserspaceProbe {
    fn name(&self) -> &'static str {
        NAME_USERSPACE
    }

    fn attached(&self) -> &Attached {
        &self.attached
    }

    fn attached_mut(&mut self) -> &mut Attached {
        &mut self.attached
    }

    fn read(&mut self, cx: &mut ReadContext<'_>, out: &mut Vec<Reading>) -> Result<(), String> {
        for (kernel_family, name) in [
            (family::KVM_USERSPACE, FAMILY_USERSPACE),
            (family::KVM_RUN, FAMILY_RUN),
        ] {
            for (group, reason, hist) in sparse::family(cx.sparse, kernel_family) {
                let (mut labels, entity) = vm(cx, group);
                labels.push(("reason", reasons::userspace(reason)));
                out.push(Reading {
                    key: SeriesKey::new(name, labels),
                    hist: hist.clone(),
                    entity: Some(entity),
                });
            }
        }
        Ok(())
    }
}

/// In-kernel exit handling on VMX/SVM.
pub struct KvmExitProbe {
    attached: Attached,
}

impl KvmExitProbe {
    pub fn attach(
        ebpf: &mut Ebpf,
        btf: Option<&aya::Btf>,
        layouts: &KvmLayouts,
        only: Option<AttachKind>,
    ) -> Self {
        let mut attached = attach_first(ebpf, btf, &layouts.exit_variants(only));
        if let Ok(ExitArgs::ReasonByRelease { .. }) = &layouts.exit_args {
            for f in &mut attached.failures {
                if f.kind == AttachKind::RawTracepoint && f.error.contains("Invalid argument") {
                    f.error.push_str(
                        " (the kernel refuses a raw tracepoint program that reads past the \
                         tracepoint's arguments: this kvm_exit has fewer than the three its \
                         release implies, as a backport of 5.16's (vcpu, isa) would)",
                    );
                }
            }
        }
        Self { attached }
    }
}

impl Probe for KvmExitProbe {
    fn name(&self) -> &'static str {
        NAME_EXIT
    }

    fn attached(&self) -> &Attached {
        &self.attached
    }

    fn attached_mut(&mut self) -> &mut Attached {
        &mut self.attached
    }

    fn read(&mut self, cx: &mut ReadContext<'_>, out: &mut Vec<Reading>) -> Result<(), String> {
        for (group, detail, hist) in sparse::family(cx.sparse, family::KVM_EXIT) {
            let (isa, reason) = (detail >> 24, detail & 0xff_ffff);
            let (mut labels, entity) = vm(cx, group);
            labels.push(("isa", reasons::isa_name(isa).to_owned()));
            labels.push(("reason", reasons::in_kernel(isa, reason)));
            out.push(Reading {
                key: SeriesKey::new(FAMILY_EXIT, labels),
                hist: hist.clone(),
                entity: Some(entity),
            });
        }
        Ok(())
    }
}

/// The labels of the VM whose VMM process is `group`, and that process as an entity.
fn vm(cx: &mut ReadContext<'_>, group: u64) -> (Vec<(&'static str, String)>, EntityState) {
    cx.attribution.vm(group as u32)
}
