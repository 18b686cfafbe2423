//! `nodepulse check`: what this node supports and what is missing, in plain words, with
//! an exit code scripts can use (0 ready, 1 something an enabled probe needs is missing).

use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    config::Config,
    kernel::{self, Capability, tracefs},
    probes::{
        AttachKind, Loaded,
        attach::{Variant, attach_first, unload},
        block, kvm, sched, stats, tcp,
    },
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    /// Works, with less than the best (a fallback, an optional feature missing).
    Warn,
    /// Something an enabled probe needs is missing.
    Fail,
}

#[derive(Clone, Debug, Serialize)]
pub struct Item {
    pub what: String,
    pub verdict: Verdict,
    pub detail: String,
}

/// Per attach kind: whether the probe's programs load and attach here.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeCheck {
    pub probe: &'static str,
    pub enabled: bool,
    /// Why the probe cannot apply to this host, if so (not a failure).
    pub not_applicable: Option<&'static str>,
    /// The kind `nodepulse run` would use.
    pub chosen: Option<AttachKind>,
    pub kinds: Vec<(AttachKind, Result<(), String>)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub items: Vec<Item>,
    pub probes: Vec<ProbeCheck>,
}

impl CheckReport {
    pub fn exit_code(&self) -> i32 {
        let failed = self.items.iter().any(|i| i.verdict == Verdict::Fail)
            || self
                .probes
                .iter()
                .any(|p| p.enabled && p.not_applicable.is_none() && p.chosen.is_none());
        i32::from(failed)
    }

    pub fn render(&self) -> String {
        let mut t = String::new();
        for i in &self.items {
            let mark = match i.verdict {
                Verdict::Ok => "ok  ",
                Verdict::Warn => "warn",
                Verdict::Fail => "FAIL",
            };
            let _ = writeln!(t, "[{mark}] {:<12} {}", i.what, i.detail);
        }
        for p in &self.probes {
            if let Some(why) = p.not_applicable {
                let _ = writeln!(t, "[ok  ] probe {:<8} not applicable here: {why}", p.probe);
                continue;
            }
            if !p.enabled {
                let _ = writeln!(
                    t,
                    "[ok  ] probe {:<8} disabled in the configuration",
                    p.probe
                );
                continue;
            }
            match p.chosen {
                Some(kind) => {
                    let _ = writeln!(t, "[ok  ] probe {:<8} attaches via {kind}", p.probe);
                    let families: Vec<&str> = crate::catalog::families_of(p.probe)
                        .map(|f| f.name)
                        .filter(|&f| crate::probes::block::measured_with(f, kind))
                        .collect();
                    let _ = writeln!(t, "         {:<15} {}", "reports", families.join(", "));
                }
                None => {
                    let _ = writeln!(t, "[FAIL] probe {:<8} cannot attach by any method", p.probe);
                }
            }
            for (kind, result) in &p.kinds {
                let line = match result {
                    Ok(()) => "works".to_owned(),
                    Err(e) => format!("no: {e}"),
                };
                let _ = writeln!(t, "         {:<15} {line}", kind.as_str());
            }
        }
        let verdict = match self.exit_code() {
            0 => "ready: every enabled probe can attach",
            _ => "NOT ready: see FAIL lines above",
        };
        let _ = writeln!(t, "{verdict}");
        t
    }
}

pub fn run(config: &Config) -> CheckReport {
    let mut items = vec![Item {
        what: "kernel".into(),
        verdict: Verdict::Ok,
        detail: kernel::release(),
    }];
    items.push(if kernel::btf_present() {
        Item {
            what: "BTF".into(),
            verdict: Verdict::Ok,
            detail: format!("{} present", kernel::btf::VMLINUX_BTF),
        }
    } else {
        Item {
            what: "BTF".into(),
            verdict: Verdict::Warn,
            detail: "no /sys/kernel/btf/vmlinux: tp_btf, raw tracepoint and fentry programs \
                     cannot find kernel struct offsets; only classic tracepoints will work"
                .into(),
        }
    });
    items.push(match tracefs::find() {
        Some(p) => Item {
            what: "tracefs".into(),
            verdict: Verdict::Ok,
            detail: format!("mounted at {}", p.display()),
        },
        None => Item {
            what: "tracefs".into(),
            verdict: Verdict::Ok,
            detail: "not mounted; only classic tracepoints need it and nodepulse mounts it \
                     then (needs CAP_SYS_ADMIN)"
                .into(),
        },
    });
    items.push(Item {
        what: "bpffs".into(),
        verdict: Verdict::Ok,
        detail: if kernel::bpffs_mounted() {
            "mounted (nodepulse pins nothing there)".into()
        } else {
            "not mounted; not needed, nodepulse pins nothing".into()
        },
    });
    let caps = kernel::effective_capabilities();
    for cap in Capability::ALL {
        let has = kernel::has_capability(caps, cap);
        items.push(Item {
            what: cap.name().into(),
            verdict: match (has, cap.required()) {
                (true, _) => Verdict::Ok,
                (false, true) => Verdict::Fail,
                (false, false) => Verdict::Warn,
            },
            detail: format!(
                "{} — to {}",
                if has { "held" } else { "MISSING" },
                cap.why()
            ),
        });
    }

    items.push(Item {
        what: "detector".into(),
        verdict: Verdict::Ok,
        detail: crate::detect::learning_statement(&config.detect),
    });

    let mut probes = Vec::new();
    // Classic tracepoints are tried too: mount tracefs for the check as the agent would
    // when it needs them (and unmount it afterwards if it was not there).
    let _tracefs = tracefs::find_or_mount()
        .ok()
        .and_then(|(_, mounted)| mounted);
    match Loaded::load(config) {
        Err(e) => items.push(Item {
            what: "load".into(),
            verdict: Verdict::Fail,
            detail: e.to_string(),
        }),
        Ok(mut loaded) => {
            let bpf_stats = stats::BpfStats::enable();
            items.push(Item {
                what: "BPF stats".into(),
                verdict: if bpf_stats.unavailable.is_none() {
                    Verdict::Ok
                } else {
                    Verdict::Warn
                },
                detail: bpf_stats
                    .unavailable
                    .clone()
                    .unwrap_or_else(|| "per-program run time and count available".into()),
            });
            probes.extend(check_probes(&mut loaded, config));
        }
    }
    CheckReport { items, probes }
}

/// Tries every kind of every probe's chain on its own, then detaches.
fn check_probes(loaded: &mut Loaded, config: &Config) -> Vec<ProbeCheck> {
    let p = &config.probes;
    let tracepoints = [
        AttachKind::TpBtf,
        AttachKind::RawTracepoint,
        AttachKind::Tracepoint,
    ];
    let plans: [(&'static str, bool, Option<AttachKind>, &[AttachKind]); 5] = [
        (
            block::NAME,
            p.block.enabled,
            p.block.attach.kind(),
            &AttachKind::CHAIN,
        ),
        (
            sched::NAME,
            p.sched.enabled,
            p.sched.attach.kind(),
            &tracepoints,
        ),
        (
            kvm::NAME_USERSPACE,
            p.kvm.enabled,
            p.kvm.attach.kind(),
            &tracepoints,
        ),
        (
            kvm::NAME_EXIT,
            p.kvm.enabled,
            None,
            &[AttachKind::Tracepoint],
        ),
        (tcp::NAME, p.tcp.enabled, p.tcp.attach.kind(), &tracepoints),
    ];
    plans
        .into_iter()
        .map(|(probe, enabled, forced, kinds)| {
            let mut results = Vec::new();
            for &kind in kinds {
                let variants = match probe {
                    block::NAME => loaded.block_layouts.variants(Some(kind)),
                    sched::NAME => loaded.sched_layouts.variants(Some(kind)),
                    kvm::NAME_USERSPACE => loaded.kvm_layouts.userspace_variants(Some(kind)),
                    tcp::NAME => loaded.tcp_layouts.variants(Some(kind)),
                    _ => loaded.kvm_layouts.exit_variants(),
                };
                results.push((kind, try_attach(loaded, &variants)));
            }
            let allowed = |k: AttachKind| forced.is_none_or(|only| only == k);
            let chosen = results
                .iter()
                .find(|(k, r)| r.is_ok() && allowed(*k))
                .map(|(k, _)| *k);
            ProbeCheck {
                probe,
                enabled,
                not_applicable: kvm::not_applicable(probe),
                chosen,
                kinds: results,
            }
        })
        .collect()
}

fn try_attach(loaded: &mut Loaded, variants: &[Variant]) -> Result<(), String> {
    let attached = attach_first(&mut loaded.ebpf, loaded.btf.as_ref(), variants);
    for program in &attached.programs {
        unload(&mut loaded.ebpf, program);
    }
    match attached.kind {
        Some(_) => Ok(()),
        None => Err(attached
            .failures
            .first()
            .map_or_else(|| "not offered".into(), |f| f.error.clone())),
    }
}
