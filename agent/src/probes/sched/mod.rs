//! Run-queue latency (kernel side: `agent-ebpf/src/sched.rs`): host-wide, per cgroup,
//! and per VM for vCPU threads.

mod config;
mod registry;

use agent_common::{
    hist::Histogram,
    names,
    sched::{CGROUP_V1_CPU, CGROUP_V2, SchedLayout},
    sparse::family,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
};

use super::{
    Layouts, Probe, ReadContext, Reading,
    attach::{AttachKind, Attached, Hook, ProgramSpec, Variant, attach_first},
    sparse,
};
use crate::{
    aggregate::{Entity, EntityState, ExpHistogram, SeriesKey},
    attribution::cgroups::Hierarchy,
    kernel::btf::Btf,
};
pub use config::SchedConfig as Config;
pub use registry::PROBE_FAMILY;

pub const NAME: &str = "sched";
pub const FAMILY_HOST: &str = "sched.runqueue.latency";
pub const FAMILY_CGROUP: &str = "cgroup.runqueue.latency";
pub const FAMILY_VM: &str = "vm.vcpu.wait";

/// Offsets from BTF; an error rules the probe out with its reason.
pub struct SchedLayouts {
    layout: Result<SchedLayout, String>,
}

impl SchedLayouts {
    pub fn resolve(btf: Option<&Btf>, hierarchy: Option<&Hierarchy>) -> Self {
        let layout = match (btf, hierarchy) {
            (None, _) => Err("kernel BTF (/sys/kernel/btf/vmlinux) is missing".into()),
            (_, None) => Err("no cgroup hierarchy found in /proc/mounts".into()),
            (Some(btf), Some(h)) => layout(btf, h.v2),
        };
        Self { layout }
    }
}

impl Layouts for SchedLayouts {
    fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        if let Ok(layout) = &self.layout {
            loader.override_global(names::GLOBAL_SCHED_LAYOUT, layout, true);
        }
    }

    fn variants(&self, only: Option<AttachKind>) -> Vec<Variant> {
        let missing = self.layout.as_ref().err().cloned();
        let spec = |program, hook| ProgramSpec { program, hook };
        let no_tracepoint = "the classic sched_switch record has no task pointer to read \
                             the scheduler's enqueue time from"
            .to_owned();
        [
            Variant {
                kind: AttachKind::TpBtf,
                programs: vec![spec(
                    names::PROG_SCHED_SWITCH_BTF,
                    Hook::TpBtf("sched_switch"),
                )],
                unavailable: missing.clone(),
            },
            Variant {
                kind: AttachKind::RawTracepoint,
                programs: vec![spec(
                    names::PROG_SCHED_SWITCH_RAW,
                    Hook::Raw("sched_switch"),
                )],
                unavailable: missing,
            },
            Variant {
                kind: AttachKind::Tracepoint,
                programs: vec![],
                unavailable: Some(no_tracepoint),
            },
        ]
        .into_iter()
        .filter(|v| only.is_none_or(|k| k == v.kind))
        .collect()
    }
}

fn layout(btf: &Btf, v2: bool) -> Result<SchedLayout, String> {
    let off = |s: &str, m: &str| btf.member_offset(s, m).map_err(|e| e.to_string());
    let css_set_cgroup = if v2 {
        off("css_set", "dfl_cgrp")?
    } else {
        let cpu = btf
            .enum_value("cpu_cgrp_id")
            .ok_or("enumerator cpu_cgrp_id not in BTF (no cpu controller)")?;
        off("css_set", "subsys")? + 8 * cpu as u32
    };
    Ok(SchedLayout {
        task_pid: off("task_struct", "pid")?,
        task_tgid: off("task_struct", "tgid")?,
        task_last_queued: off("task_struct", "sched_info.last_queued")
            .map_err(|e| format!("{e} (the kernel needs CONFIG_SCHED_INFO)"))?,
        task_cfs_rq: off("task_struct", "se.cfs_rq")?,
        cfs_rq_rq: off("cfs_rq", "rq")
            .map_err(|e| format!("{e} (the kernel needs CONFIG_FAIR_GROUP_SCHED)"))?,
        rq_clock: off("rq", "clock")?,
        task_cgroups: off("task_struct", "cgroups")?,
        css_set_cgroup,
        css_cgroup: off("cgroup_subsys_state", "cgroup")?,
        cgroup_kn: off("cgroup", "kn")?,
        kn_id: off("kernfs_node", "id")?,
        cgroup_mode: if v2 { CGROUP_V2 } else { CGROUP_V1_CPU },
    })
}

pub struct SchedProbe {
    attached: Attached,
    host: Option<PerCpuArray<MapData, Histogram>>,
}

impl SchedProbe {
    pub fn attach(
        ebpf: &mut Ebpf,
        btf: Option<&aya::Btf>,
        layouts: &SchedLayouts,
        only: Option<AttachKind>,
    ) -> Self {
        let attached = attach_first(ebpf, btf, &layouts.variants(only));
        let host = attached
            .kind
            .and_then(|_| ebpf.take_map(names::MAP_SCHED_LATENCY))
            .and_then(|m| PerCpuArray::try_from(m).ok());
        Self { attached, host }
    }
}

impl Probe for SchedProbe {
    fn name(&self) -> &'static str {
        NAME
    }

    fn attached(&self) -> &Attached {
        &self.attached
    }

    fn attached_mut(&mut self) -> &mut Attached {
        &mut self.attached
    }

    fn read(&mut self, cx: &mut ReadContext<'_>, out: &mut Vec<Reading>) -> Result<(), String> {
        let Some(host) = &self.host else {
            return Ok(());
        };
        let per_cpu = host
            .get(&0, 0)
            .map_err(|e| format!("reading {}: {e}", names::MAP_SCHED_LATENCY))?;
        out.push(Reading::plain(
            SeriesKey::new(FAMILY_HOST, []),
            ExpHistogram::from_per_cpu(per_cpu.iter()),
        ));
        for (group, _, hist) in sparse::family(cx.sparse, family::SCHED_CGROUP) {
            let (name, alive) = match cx.attribution.cgroup_lookup(group) {
                Some(name) => (name, true),
                None => (cx.attribution.cgroup_name(group), false),
            };
            out.push(Reading {
                key: SeriesKey::new(FAMILY_CGROUP, [("cgroup", name)]),
                hist: hist.clone(),
                entity: Some(EntityState::new(Entity::Cgroup(group), 1, alive)),
            });
        }
        for (group, _, hist) in sparse::family(cx.sparse, family::SCHED_VM) {
            let pid = group as u32;
            let labels = cx.attribution.vm_labels(pid);
            let entity = EntityState::new(
                Entity::Process(pid),
                labels.len(),
                cx.attribution.vm_running(pid),
            );
            out.push(Reading {
                key: SeriesKey::new(FAMILY_VM, labels),
                hist: hist.clone(),
                entity: Some(entity),
            });
        }
        Ok(())
    }
}
