//! The attach fallback chain: BTF tracepoint → raw tracepoint → classic tracepoint →
//! fentry → kprobe. A probe family lists its variants; the first whose programs all load
//! and attach wins, and every failed attempt is kept with its reason.

use std::{fmt, path::Path};

use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, FEntry, KProbe, Program, RawTracePoint, TracePoint, links::FdLink},
};
use serde::{Deserialize, Deserializer, Serialize, de};

use crate::kernel::module_btf::{self, TracepointBtf};

/// How a program is hooked into the kernel, cheapest dispatch first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachKind {
    TpBtf,
    RawTracepoint,
    Tracepoint,
    Fentry,
    Kprobe,
}

impl AttachKind {
    pub const CHAIN: [AttachKind; 5] = [
        AttachKind::TpBtf,
        AttachKind::RawTracepoint,
        AttachKind::Tracepoint,
        AttachKind::Fentry,
        AttachKind::Kprobe,
    ];

    /// The tracepoint kinds, for families without a function-entry fallback.
    pub const TRACEPOINTS: [AttachKind; 3] = [
        AttachKind::TpBtf,
        AttachKind::RawTracepoint,
        AttachKind::Tracepoint,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttachKind::TpBtf => "tp_btf",
            AttachKind::RawTracepoint => "raw_tracepoint",
            AttachKind::Tracepoint => "tracepoint",
            AttachKind::Fentry => "fentry",
            AttachKind::Kprobe => "kprobe",
        }
    }
}

impl fmt::Display for AttachKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A probe with nothing to set but whether it runs and how it attaches.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    pub enabled: bool,
    #[serde(deserialize_with = "attach_mode")]
    pub attach: Option<AttachKind>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            attach: None,
        }
    }
}

/// `attach = "auto"` (`None`: walk the fallback chain) or the one kind to use.
pub fn attach_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<AttachKind>, D::Error> {
    struct Mode;
    impl de::Visitor<'_> for Mode {
        type Value = Option<AttachKind>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("enum AttachMode")
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            const CHOICES: &[&str] = &[
                "auto",
                "tp_btf",
                "raw_tracepoint",
                "tracepoint",
                "fentry",
                "kprobe",
            ];
            if text == "auto" {
                return Ok(None);
            }
            AttachKind::CHAIN
                .into_iter()
                .find(|k| k.as_str() == text)
                .map(Some)
                .ok_or_else(|| E::unknown_variant(text, CHOICES))
        }
    }
    d.deserialize_str(Mode)
}

/// Where one program goes.
#[derive(Clone, Copy, Debug)]
pub enum Hook {
    /// BTF tracepoint name, e.g. `block_rq_issue`.
    TpBtf(&'static str),
    /// BTF tracepoint of a kernel module (module, tracepoint), e.g. `("kvm", "kvm_fpu")`:
    /// its type is in the module's own BTF unless the module is built in.
    ModuleTpBtf(&'static str, &'static str),
    /// Raw tracepoint name.
    Raw(&'static str),
    /// Classic tracepoint category and name.
    Tracepoint(&'static str, &'static str),
    /// Kernel function for fentry.
    Fentry(&'static str),
    /// Kernel function for kprobe.
    Kprobe(&'static str),
}

/// A program of the eBPF object and its hook.
#[derive(Clone, Copy, Debug)]
pub struct ProgramSpec {
    pub program: &'static str,
    pub hook: Hook,
}

/// One way of attaching a probe family: all its programs, attached in order (the
/// completion side first, so that every recorded start has its end observed).
#[derive(Clone, Debug)]
pub struct Variant {
    pub kind: AttachKind,
    pub programs: Vec<ProgramSpec>,
    /// Why this variant cannot be used here, found before trying (missing layout, …).
    pub unavailable: Option<String>,
}

impl Variant {
    pub fn program_names(&self) -> Vec<&'static str> {
        self.programs.iter().map(|p| p.program).collect()
    }
}

/// A failed attempt, kept for `check`, logs and self-metrics.
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    pub kind: AttachKind,
    pub error: String,
}

/// Outcome of walking the chain.
#[derive(Clone, Debug, Serialize)]
pub struct Attached {
    pub kind: Option<AttachKind>,
    /// Programs attached, by name, for BPF run-time stats.
    pub programs: Vec<&'static str>,
    pub failures: Vec<Attempt>,
}

/// Tries `variants` in order and keeps the first that attaches completely; a partially
/// attached variant is unloaded before the next is tried.
pub fn attach_first(ebpf: &mut Ebpf, btf: Option<&Btf>, variants: &[Variant]) -> Attached {
    let mut failures = Vec::new();
    for variant in variants {
        if let Some(why) = &variant.unavailable {
            failures.push(Attempt {
                kind: variant.kind,
                error: why.clone(),
            });
            continue;
        }
        let names = variant.program_names();
        // An earlier run of this layout left the variant attached: it keeps running.
        if super::pins::with(|pins| pins.is_some_and(|p| p.adopt(&names))) {
            return Attached {
                kind: Some(variant.kind),
                programs: names,
                failures,
            };
        }
        let mut loaded = Vec::new();
        let result = variant.programs.iter().try_for_each(|spec| {
            loaded.push(spec.program);
            attach_one(ebpf, btf, spec)
        });
        match result {
            Ok(()) => {
                return Attached {
                    kind: Some(variant.kind),
                    programs: loaded,
                    failures,
                };
            }
            Err(error) => {
                for name in loaded {
                    unload(ebpf, name);
                    super::pins::with(|pins| pins.map(|p| p.clear(name)));
                }
                failures.push(Attempt {
                    kind: variant.kind,
                    error: explain(variant.kind, error),
                });
            }
        }
    }
    Attached {
        kind: None,
        programs: Vec::new(),
        failures,
    }
}

fn attach_one(ebpf: &mut Ebpf, btf: Option<&Btf>, spec: &ProgramSpec) -> Result<(), String> {
    let name = spec.program;
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} is missing from the eBPF object (build bug)"))?;
    let need_btf = || {
        btf.ok_or_else(|| {
            format!(
                "the kernel has no BTF of its own ({}): tp_btf and fentry need it ([agent] \
                 btf serves struct offsets only)",
                crate::kernel::btf::VMLINUX_BTF
            )
        })
    };
    let e = |e: aya::programs::ProgramError| format!("{name}: {}", short_error_chain(&e));
    let pinning = super::pins::with(|pins| {
        pins.map(|p| {
            p.clear(name);
            true
        })
        .unwrap_or(false)
    });
    // With pinning, the link leaves the program's keeping for bpffs', and the program
    // is pinned beside it, so that the next run can adopt both.
    let keep = |link: FdLink, pin_program: &mut dyn FnMut(&Path) -> Result<(), String>| {
        super::pins::with(|pins| match pins {
            Some(p) => p.keep(name, link, pin_program),
            None => Ok(()),
        })
    };
    let pin_error = |e: aya::pin::PinError| format!("{name}: cannot pin the program: {e}");
    match spec.hook {
        Hook::TpBtf(tp) => {
            let p: &mut BtfTracePoint = program.try_into().map_err(e)?;
            p.load(tp, need_btf()?).map_err(e)?;
            let id = p.attach().map_err(e)?;
            if pinning {
                let link = FdLink::from(p.take_link(id).map_err(e)?);
                keep(link, &mut |path| p.pin(path).map_err(pin_error))?;
            }
        }
        Hook::ModuleTpBtf(module, tp) => {
            let dir = Path::new(module_btf::SYS_BTF_DIR);
            let (module, type_id) = match module_btf::locate_tracepoint(dir, module, tp) {
                // Built in: vmlinux's id, and no BTF object fd (the kernel's default).
                Ok(TracepointBtf::Vmlinux { type_id }) => (None, type_id),
                Ok(TracepointBtf::Module { module, type_id }) => (Some(module), type_id),
                Err(error) => return Err(format!("{name}: {error}")),
            };
            super::module_prog::with(|m| {
                let m =
                    m.ok_or_else(|| format!("{name}: no module program session (build bug)"))?;
                let (prog, link) = m
                    .attach(name, module.as_deref(), type_id)
                    .map_err(|e| format!("{name}: {e}"))?;
                super::pins::with(|pins| match pins {
                    Some(p) => p.keep_fds(name, prog, link),
                    None => Ok(()),
                })
            })?;
        }
        Hook::Raw(tp) => {
            let p: &mut RawTracePoint = program.try_into().map_err(e)?;
            p.load().map_err(e)?;
            let id = p.attach(tp).map_err(e)?;
            if pinning {
                let link = FdLink::from(p.take_link(id).map_err(e)?);
                keep(link, &mut |path| p.pin(path).map_err(pin_error))?;
            }
        }
        Hook::Tracepoint(category, tp) => {
            let p: &mut TracePoint = program.try_into().map_err(e)?;
            p.load().map_err(e)?;
            let id = p.attach(category, tp).map_err(e)?;
            if pinning {
                let link = FdLink::try_from(p.take_link(id).map_err(e)?).map_err(|_| {
                    format!(
                        "{name}: this kernel attaches tracepoints without a BPF link \
                         (before 5.15), which cannot be pinned; set [agent] \
                         keep_attached = false"
                    )
                })?;
                keep(link, &mut |path| p.pin(path).map_err(pin_error))?;
            }
        }
        Hook::Fentry(func) => {
            let p: &mut FEntry = program.try_into().map_err(e)?;
            p.load(func, need_btf()?).map_err(e)?;
            let id = p.attach().map_err(e)?;
            if pinning {
                let link = FdLink::from(p.take_link(id).map_err(e)?);
                keep(link, &mut |path| p.pin(path).map_err(pin_error))?;
            }
        }
        Hook::Kprobe(func) => {
            let p: &mut KProbe = program.try_into().map_err(e)?;
            p.load().map_err(e)?;
            let id = p.attach(func, 0).map_err(e)?;
            if pinning {
                let link = FdLink::try_from(p.take_link(id).map_err(e)?).map_err(|_| {
                    format!(
                        "{name}: this kernel attaches kprobes without a BPF link, which \
                         cannot be pinned; set [agent] keep_attached = false"
                    )
                })?;
                keep(link, &mut |path| p.pin(path).map_err(pin_error))?;
            }
        }
    }
    Ok(())
}

/// Unloading detaches too. Errors are ignored: the program may never have loaded.
pub fn unload(ebpf: &mut Ebpf, name: &str) {
    super::module_prog::with(|m| m.map(|m| m.remove(name)));
    let Some(program) = ebpf.program_mut(name) else {
        return;
    };
    let _ = match program {
        Program::BtfTracePoint(p) => p.unload(),
        Program::RawTracePoint(p) => p.unload(),
        Program::TracePoint(p) => p.unload(),
        Program::FEntry(p) => p.unload(),
        Program::KProbe(p) => p.unload(),
        _ => Ok(()),
    };
}

/// The error and its causes, shortened: verifier logs run to hundreds of lines.
pub fn short_error_chain(e: &dyn std::error::Error) -> String {
    let mut s = crate::util::error::error_chain(e);
    // Keep the tail, which names the problem.
    if s.len() > 600 {
        let cut = s.len() - 500;
        let cut = (cut..s.len())
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(cut);
        s = format!("{} … {}", &s[..80.min(cut)], &s[cut..]);
    }
    s
}

/// Adds the likely cause and fix to common failures.
fn explain(kind: AttachKind, error: String) -> String {
    use crate::kernel::{self, Capability};
    let caps = kernel::effective_capabilities();
    let privileged = [Capability::Bpf, Capability::Perfmon]
        .iter()
        .all(|&c| kernel::has_capability(caps, c));
    let refused = error.contains("Operation not permitted");
    let hint = if refused && !privileged {
        Some("needs CAP_BPF and CAP_PERFMON (or root)")
    } else if refused && matches!(kind, AttachKind::Fentry) {
        Some(
            "the kernel refused it although CAP_BPF and CAP_PERFMON are held: fentry needs \
             ftrace direct calls (CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS) and a traceable \
             function",
        )
    } else if kind == AttachKind::Kprobe
        && !Path::new("/sys/bus/event_source/devices/kprobe").exists()
    {
        Some("kprobes are not available in this kernel (CONFIG_KPROBES is unset)")
    } else if kind == AttachKind::Tracepoint && crate::kernel::tracefs::find().is_none() {
        Some("tracefs is not mounted: mount -t tracefs tracefs /sys/kernel/tracing")
    } else {
        None
    };
    match hint {
        Some(h) => format!("{h} ({error})"),
        None => error,
    }
}
