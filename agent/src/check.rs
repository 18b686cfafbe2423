//! `nodepulse check`: what this node supports and what is missing, in plain words, with
//! an exit code scripts can use (0 ready, 1 something an enabled probe needs is missing).

use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    config::Config,
    kernel::{self, Capability, tracefs},
    probes::{
        AttachKind, FAMILIES, Loaded, Setup,
        attach::{Variant, attach_first, unload},
        module_prog, stats,
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
    /// The metric families it reports when attached via `chosen`.
    #[serde(skip)]
    pub reports: Vec<&'static str>,
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
                    let _ = writeln!(t, "         {:<15} {}", "reports", p.reports.join(", "));
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

/// `[agent] btf`: which file serves the kernel's types, and what it cannot replace.
fn btf_file_item(path: &std::path::Path) -> Item {
    match kernel::btf_file::open(path) {
        Err(e) => Item {
            what: "BTF".into(),
            verdict: Verdict::Fail,
            detail: e.to_string(),
        },
        Ok(file) => Item {
            what: "BTF".into(),
            verdict: if file.kernel_has_own {
                Verdict::Ok
            } else {
                Verdict::Warn
            },
            detail: format!(
                "read from {} ([agent] btf){}",
                path.display(),
                if file.kernel_has_own {
                    format!(
                        ", identical to the kernel's own {}",
                        kernel::btf::VMLINUX_BTF
                    )
                } else {
                    format!(
                        "; the kernel has no {} of its own: struct offsets come from the \
                         file, tp_btf and fentry cannot attach",
                        kernel::btf::VMLINUX_BTF
                    )
                }
            ),
        },
    }
}

pub fn run(config: &Config) -> CheckReport {
    let mut items = vec![Item {
        what: "kernel".into(),
        verdict: Verdict::Ok,
        detail: kernel::release(),
    }];
    items.push(if !config.agent.btf.as_os_str().is_empty() {
        btf_file_item(&config.agent.btf)
    } else if kernel::btf_present() {
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

    if !config.actions.rules.is_empty() {
        items.push(audit_log_item(&config.actions.audit_log));
        let (verdict, detail) = match crate::actions::run_cgroup::containment() {
            Ok(how) => (Verdict::Ok, how),
            Err(why) => (Verdict::Warn, why),
        };
        items.push(Item {
            what: "action containment".into(),
            verdict,
            detail,
        });
    }
    items.push(Item {
        what: "detector".into(),
        verdict: Verdict::Ok,
        detail: crate::detect::learning_statement(&config.detect),
    });
    if let Some(item) = learning_item(config) {
        items.push(item);
    }

    let mut probes = Vec::new();
    // Classic tracepoints are tried too: mount tracefs for the check as the agent would
    // when it needs them (and unmount it afterwards if it was not there).
    let _tracefs = tracefs::find_or_mount()
        .ok()
        .and_then(|(_, mounted)| mounted);
    match Loaded::load(&Setup::from(config)) {
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
            probes.extend(check_probes(&mut loaded));
        }
    }
    CheckReport { items, probes }
}

/// What `run` would still fail on after the configuration parsed and validated, found
/// without attaching anything: an endpoint address taken by another process, an audit
/// log that cannot be written. Each entry says what is wrong and what to do.
/// Which series the agent's last saved state lists as still learning, and until when
/// (only with `[agent] state_dir`, where a running agent saves its detector).
fn learning_item(config: &Config) -> Option<Item> {
    let dir = &config.agent.state_dir;
    if dir.as_os_str().is_empty() || !config.detect.enabled {
        return None;
    }
    let what = "detector learning".to_owned();
    let saved = match crate::state::StateDir::peek(dir) {
        Ok(Some(saved)) => saved,
        Ok(None) => {
            return Some(Item {
                what,
                verdict: Verdict::Ok,
                detail: format!(
                    "no state saved in {} yet: every series learns from the agent's start",
                    dir.display()
                ),
            });
        }
        Err(e) => {
            return Some(Item {
                what,
                verdict: Verdict::Warn,
                detail: e.to_string(),
            });
        }
    };
    let at = crate::util::time::rfc3339(saved.saved_unix_nano);
    let Some(detector) = saved.detector else {
        return Some(Item {
            what,
            verdict: Verdict::Ok,
            detail: format!("the state saved at {at} holds no detector state"),
        });
    };
    let detail = match crate::detect::snapshot::learning_in(detector, &config.detect) {
        Err(e) => format!("the detector state saved at {at} cannot be read: {e}"),
        Ok((names, _)) if names.is_empty() => {
            format!("as saved at {at}: no series is still learning")
        }
        Ok((names, until)) => {
            const SHOWN: usize = 10;
            let more = names.len().saturating_sub(SHOWN);
            format!(
                "as saved at {at}: {} series still learning{}: {}{}",
                names.len(),
                until.map_or(String::new(), |t| format!(
                    " until {}",
                    crate::util::time::rfc3339(t)
                )),
                names[..names.len().min(SHOWN)].join(", "),
                if more > 0 {
                    format!(", {more} more")
                } else {
                    String::new()
                }
            )
        }
    };
    Some(Item {
        what,
        verdict: Verdict::Ok,
        detail,
    })
}

pub fn config_preflight(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    let endpoints = [
        (
            "prometheus",
            config.prometheus.enabled,
            &config.prometheus.listen,
        ),
        ("health", config.health.enabled, &config.health.listen),
        ("view", config.view.enabled, &config.view.listen),
    ];
    for (table, enabled, listen) in endpoints {
        let Ok(addr) = listen.parse::<std::net::SocketAddr>() else {
            continue; // validation already named it
        };
        if enabled && let Err(e) = std::net::TcpListener::bind(addr) {
            problems.push(format!(
                "[{table}] listen {addr}: cannot bind it now ({e}); choose a free address"
            ));
        }
    }
    if !config.actions.rules.is_empty() {
        let item = audit_log_item(&config.actions.audit_log);
        if item.verdict == Verdict::Fail {
            problems.push(format!("actions.audit_log: {}", item.detail));
        }
    }
    problems
}

/// Below this, the audit log's filesystem is as good as full.
const AUDIT_MIN_FREE: u64 = 1 << 20;

/// Whether action audit records can be written: the log opens for appending, and its
/// filesystem has room.
pub(crate) fn audit_log_item(path: &std::path::Path) -> Item {
    let item = |verdict, detail: String| Item {
        what: "audit log".into(),
        verdict,
        detail,
    };
    let shown = path.display();
    if let Err(e) = std::fs::OpenOptions::new().append(true).open(path) {
        let creatable = e.kind() == std::io::ErrorKind::NotFound
            && path.parent().is_some_and(|dir| {
                !dir.exists() || std::fs::metadata(dir).is_ok_and(|m| !m.permissions().readonly())
            });
        if !creatable {
            return item(
                Verdict::Fail,
                format!("cannot append to {shown}: {e}; set actions.audit_log to a writable path"),
            );
        }
    }
    match crate::actions::audit::free_bytes(path) {
        Ok(free) if free < AUDIT_MIN_FREE => item(
            Verdict::Fail,
            format!(
                "{shown}: its filesystem is full ({free} bytes free); records would be \
                 refused (whole, never torn): free space there"
            ),
        ),
        Ok(free) => item(
            Verdict::Ok,
            format!("{shown} writable, {} MiB free", free >> 20),
        ),
        Err(e) => item(
            Verdict::Warn,
            format!("{shown}: cannot tell free space: {e}"),
        ),
    }
}

/// Tries every kind of every probe's chain on its own, then detaches.
fn check_probes(loaded: &mut Loaded) -> Vec<ProbeCheck> {
    let families = std::mem::take(&mut loaded.families);
    let mut checks = Vec::new();
    for (family, resolved) in FAMILIES.iter().zip(&families) {
        for plan in resolved.plans() {
            let results: Vec<_> = plan
                .kinds
                .iter()
                .map(|&kind| {
                    let variants = resolved.variants(plan.probe, Some(kind));
                    (kind, try_attach(loaded, &variants))
                })
                .collect();
            let allowed = |k: AttachKind| plan.forced.is_none_or(|only| only == k);
            let chosen = results
                .iter()
                .find(|(k, r)| r.is_ok() && allowed(*k))
                .map(|(k, _)| *k);
            let reports = chosen.map_or_else(Vec::new, |kind| {
                crate::catalog::families_of(plan.probe)
                    .map(|f| f.name)
                    .filter(|f| family.measured_with(f, kind))
                    .collect()
            });
            checks.push(ProbeCheck {
                probe: plan.probe,
                enabled: plan.enabled,
                not_applicable: plan.not_applicable,
                chosen,
                kinds: results,
                reports,
            });
        }
    }
    loaded.families = families;
    checks
}

fn try_attach(loaded: &mut Loaded, variants: &[Variant]) -> Result<(), String> {
    let modules = std::mem::take(&mut loaded.modules);
    let (attached, modules) = module_prog::session(modules, || {
        let attached = attach_first(&mut loaded.ebpf, loaded.btf.as_ref(), variants);
        for program in &attached.programs {
            unload(&mut loaded.ebpf, program);
        }
        attached
    });
    loaded.modules = modules;
    match attached.kind {
        Some(_) => Ok(()),
        None => Err(attached
            .failures
            .first()
            .map_or_else(|| "not offered".into(), |f| f.error.clone())),
    }
}
