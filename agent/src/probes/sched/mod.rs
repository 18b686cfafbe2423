//! Run-queue latency (kernel side: `agent-ebpf/src/sched.rs`): host-wide, per cgroup,
//! and per VM for vCPU threads; and run-queue saturation per CPU (time with a task
//! waiting), as a cumulative counter.

mod config;
mod registry;
mod tasks;

use agent_common::{
    hist::Histogram,
    names,
    sched::{
        CGROUP_V1_CPU, CGROUP_V2, DELAYED_COUNT, DELAYED_NONE, DELAYED_QUEUED_MINUS_RUNNABLE,
        RunqCpu, RunqTask, SchedLayout,
    },
    sparse::family,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
};

use super::{
    Layouts, Probe, ReadContext, Reading,
    attach::{AttachKind, Attached, Hook, ProgramSpec, Variant, attach_first},
    pins, sparse,
};
use crate::{
    aggregate::{Entity, EntityState, ExpHistogram, SeriesKey, TrackedCounter},
    attribution::cgroups::Hierarchy,
    kernel::{btf::Btf, schedstat},
};
pub use config::SchedConfig as Config;
pub use registry::PROBE_FAMILY;

pub const NAME: &str = "sched";
pub const FAMILY_HOST: &str = "sched.runqueue.latency";
pub const FAMILY_CGROUP: &str = "cgroup.runqueue.latency";
pub const FAMILY_VM: &str = "vm.vcpu.wait";
pub const FAMILY_SATURATED: &str = "sched.runqueue.saturated_time";

/// Offsets from BTF; an error rules the probe out with its reason.
pub struct SchedLayouts {
    layout: Result<SchedLayout, String>,
}

impl SchedLayouts {
    /// `saturation`: whether run-queue saturation is asked for (`[probes.sched]
    /// saturation`).
    pub fn resolve(btf: Option<&Btf>, hierarchy: Option<&Hierarchy>, saturation: bool) -> Self {
        let layout = match (btf, hierarchy) {
            (None, _) => Err("kernel BTF (/sys/kernel/btf/vmlinux) is missing".into()),
            (_, None) => Err("no cgroup hierarchy found in /proc/mounts".into()),
            (Some(btf), Some(h)) => layout(btf, h.v2, saturation),
        };
        Self { layout }
    }
}

impl SchedLayouts {
    /// Whether run-queue saturation is kept on this kernel.
    pub fn runq_kept(&self) -> bool {
        self.layout.as_ref().is_ok_and(|l| l.runq != 0)
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
        // The switch program and the one that forgets freed tasks; run-queue
        // saturation, when asked for, where the kernel lets BPF attach to its bare
        // tracepoint (the switch program does the rest).
        let runq = self.runq_kept();
        let programs = |[switch, free, nr_running]: [&'static str; 3], hook: fn(&'static str) -> Hook| {
            let mut p = vec![
                spec(switch, hook("sched_switch")),
                spec(free, hook("sched_process_free")),
            ];
            if runq {
                p.push(spec(nr_running, hook("sched_update_nr_running_tp")));
            }
            p
        };
        [
            Variant {
                kind: AttachKind::TpBtf,
                programs: programs(
                    [
                        names::PROG_SCHED_SWITCH_BTF,
                        names::PROG_RUNQ_TASK_FREE_BTF,
                        names::PROG_RUNQ_NR_RUNNING_BTF,
                    ],
                    Hook::TpBtf,
                ),
                unavailable: missing.clone(),
            },
            Variant {
                kind: AttachKind::RawTracepoint,
                programs: programs(
                    [
                        names::PROG_SCHED_SWITCH_RAW,
                        names::PROG_RUNQ_TASK_FREE_RAW,
                        names::PROG_RUNQ_NR_RUNNING_RAW,
                    ],
                    Hook::Raw,
                ),
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

fn layout(btf: &Btf, v2: bool, saturation: bool) -> Result<SchedLayout, String> {
    let off = |s: &str, m: &str| btf.member_offset(s, m).map_err(|e| e.to_string());
    let (delayed_mode, delayed_a, delayed_b) = if saturation {
        delayed_layout(btf)
    } else {
        (DELAYED_NONE, 0, 0)
    };
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
        task_run_delay: off("task_struct", "sched_info.run_delay")?,
        task_pcount: off("task_struct", "sched_info.pcount")?,
        task_start_time: off("task_struct", "start_time")?,
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
        rq_nr_running: off("rq", "nr_running")?,
        rq_curr: off("rq", "curr")?,
        rq_cpu: off("rq", "cpu")?,
        delayed_mode,
        delayed_a,
        delayed_b,
        runq: u32::from(saturation && runq_attachable(btf)),
    })
}

/// BPF can attach to bare tracepoints (no tracefs event) from 5.11; their BTF typedef
/// says the kernel offers this one.
fn runq_attachable(btf: &Btf) -> bool {
    let ok = btf.tracepoint_args("sched_update_nr_running_tp").is_some();
    if !ok {
        tracing::warn!(
            "run-queue saturation is not kept: this kernel does not let BPF attach to \
             sched_update_nr_running_tp (5.11+); run-queue latency still is"
        );
    }
    ok
}

/// How to tell sleepers kept queued by delayed dequeue (6.12+) from waiting tasks:
/// (mode, offset a, offset b) in `rq`, from the fields this kernel has.
fn delayed_layout(btf: &Btf) -> (u32, u32, u32) {
    let off = |m: &str| btf.member_offset("rq", m).ok();
    if let (Some(q), Some(r)) = (off("cfs.h_nr_queued"), off("cfs.h_nr_runnable")) {
        return (DELAYED_QUEUED_MINUS_RUNNABLE, q, r);
    }
    if let Some(d) = off("cfs.h_nr_delayed") {
        return (DELAYED_COUNT, d, 0);
    }
    if btf.member_offset("sched_entity", "sched_delayed").is_ok() {
        tracing::warn!(
            "this kernel delays the dequeue of sleeping tasks but keeps no count of them: \
             run-queue saturation counts such a sleeper as waiting until it is picked or \
             woken"
        );
    }
    (DELAYED_NONE, 0, 0)
}

pub struct SchedProbe {
    attached: Attached,
    host: Option<PerCpuArray<MapData, Histogram>>,
    runq: Option<Array<MapData, RunqCpu>>,
    tasks: Option<tasks::TaskMap>,
    /// The last saturated time reported per CPU: a read racing the kernel closing a
    /// period can see the total before the close and the period already closed; the
    /// counter never goes back (the difference is made up at the next read).
    saturated: Vec<u64>,
    /// `[probes.sched] schedstat_reference`: the host histogram's reads so far, when
    /// each is bracketed by reads of the kernel's run-delay total.
    bracketed: Option<u64>,
}

impl SchedProbe {
    pub fn attach(
        ebpf: &mut Ebpf,
        btf: Option<&aya::Btf>,
        layouts: &SchedLayouts,
        only: Option<AttachKind>,
        schedstat_reference: bool,
    ) -> Self {
        let variants = layouts.variants(only);
        // Programs attached afresh must not read what an earlier run left in a pinned
        // task map (a task's first sample would hold every wait since): unless they are
        // adopted running, the map starts empty.
        let adopting = pins::with(|pins| {
            pins.is_some_and(|p| {
                variants
                    .iter()
                    .any(|v| v.unavailable.is_none() && p.has_links(&v.program_names()))
            })
        });
        if !adopting
            && let Some(map) = ebpf.map_mut(names::MAP_RUNQ_TASKS)
            && let Ok(mut tasks) = HashMap::try_from(map)
        {
            tasks::forget_all(&mut tasks);
        }
        let attached = attach_first(ebpf, btf, &variants);
        let host = attached
            .kind
            .and_then(|_| ebpf.take_map(names::MAP_SCHED_LATENCY))
            .and_then(|m| PerCpuArray::try_from(m).ok());
        let runq = attached
            .kind
            .filter(|_| layouts.runq_kept())
            .and_then(|_| ebpf.take_map(names::MAP_RUNQ_SATURATION))
            .and_then(|m| Array::try_from(m).ok());
        let tasks = attached
            .kind
            .and_then(|_| ebpf.take_map(names::MAP_RUNQ_TASKS))
            .and_then(|m| HashMap::try_from(m).ok())
            .map(tasks::TaskMap::new);
        Self {
            attached,
            host,
            runq,
            tasks,
            saturated: Vec::new(),
            bracketed: schedstat_reference.then_some(0),
        }
    }

    /// Per online CPU: nanoseconds with at least one task waiting since the probe
    /// attached, the open period included up to now, as the kernel's records say.
    pub fn saturated_now(&self) -> Result<Vec<(u32, u64)>, String> {
        let Some(map) = &self.runq else {
            return Ok(Vec::new());
        };
        let cpus = aya::util::online_cpus()
            .map_err(|(path, e)| format!("reading the online CPUs ({path}): {e}"))?;
        let mut out = Vec::with_capacity(cpus.len());
        for cpu in cpus {
            let Ok(record) = map.get(&cpu, 0) else {
                continue; // beyond the map: counted by the kernel side
            };
            let now = crate::util::time::clock_nanos(libc::CLOCK_MONOTONIC) as u64;
            out.push((cpu, record.saturated_until(now)));
        }
        Ok(out)
    }

    /// What the switch program remembers of thread `tid`: its run_delay and arrival
    /// count once the last switch-in the program saw was accounted. Beside the kernel's
    /// own (`/proc/<tid>/schedstat`) it says which waits the program has not seen yet.
    pub fn remembered(&self, tid: u32) -> Option<RunqTask> {
        self.tasks.as_ref()?.get(tid)
    }

    /// Writes an entry into the task map as the switch program would, for tests that
    /// need one it cannot make (a thread whose free the kernel skipped).
    #[doc(hidden)]
    pub fn remember_for_test(&mut self, tid: u32, task: RunqTask) -> bool {
        self.tasks.as_mut().is_some_and(|t| t.insert(tid, task))
    }

    /// Deletes the task map's entries of threads that no longer exist (done every
    /// [`tasks::SWEEP_EVERY`] while reading); how many, or `None` when the host's threads
    /// cannot be looked up.
    pub fn sweep_tasks(&mut self, attribution: &mut crate::attribution::Attribution) -> Option<usize> {
        self.tasks.as_mut()?.sweep(attribution)
    }

    /// [`Self::saturated_now`], never below what was reported before. `snapshot`: a
    /// hand-over's read of another set's copy, which must not move this run's floor.
    fn read_saturated(&mut self, snapshot: bool) -> Result<Vec<(u32, u64)>, String> {
        let mut out = self.saturated_now()?;
        if snapshot {
            return Ok(out);
        }
        for (cpu, total) in &mut out {
            let i = *cpu as usize;
            if self.saturated.len() <= i {
                self.saturated.resize(i + 1, 0);
            }
            self.saturated[i] = (*total).max(self.saturated[i]);
            *total = self.saturated[i];
        }
        Ok(out)
    }
}

impl Probe for SchedProbe {
    fn name(&self) -> &'static str {
        NAME
    }

    /// The switch program's memory of each task would otherwise date from before the
    /// detach, and a task's first sample after the next attach would hold every wait
    /// in between.
    fn detached(&mut self) {
        if let Some(tasks) = &mut self.tasks {
            tasks.forget_all();
        }
    }

    fn attached(&self) -> &Attached {
        &self.attached
    }

    fn attached_mut(&mut self) -> &mut Attached {
        &mut self.attached
    }

    fn read_counters(
        &mut self,
        cx: &mut ReadContext<'_>,
        out: &mut Vec<TrackedCounter>,
    ) -> Result<(), String> {
        for (cpu, ns) in self.read_saturated(cx.snapshot)? {
            let key = SeriesKey::new(FAMILY_SATURATED, [("cpu", cpu.to_string())]);
            out.push(TrackedCounter::plain(key, ns));
        }
        Ok(())
    }

    fn read(&mut self, cx: &mut ReadContext<'_>, out: &mut Vec<Reading>) -> Result<(), String> {
        if !cx.snapshot
            && let Some(tasks) = &mut self.tasks
        {
            tasks.sweep_when_due(cx.attribution);
        }
        let Some(host) = &self.host else {
            return Ok(());
        };
        // The kernel's totals right before and after the map read: the map's sums and
        // counts lie between them (a hand-over's snapshot read is not a report's and is
        // not logged).
        let bracket = self.bracketed.filter(|_| !cx.snapshot);
        let before = bracket.map(|_| schedstat::read()).transpose()?;
        let per_cpu = host
            .get(&0, 0)
            .map_err(|e| format!("reading {}: {e}", names::MAP_SCHED_LATENCY))?;
        if let (Some(before), Some(n)) = (before, bracket) {
            let after = schedstat::read()?;
            let at_ns = crate::util::time::clock_nanos(libc::CLOCK_MONOTONIC);
            self.bracketed = Some(n + 1);
            tracing::info!(
                read = n + 1,
                before = before.run_delay,
                after = after.run_delay,
                slices_before = before.timeslices,
                slices_after = after.timeslices,
                at_ns,
                "schedstat bracket"
            );
        }
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
            let (labels, entity) = cx.attribution.vm(group as u32);
            out.push(Reading {
                key: SeriesKey::new(FAMILY_VM, labels),
                hist: hist.clone(),
                entity: Some(entity),
            });
        }
        Ok(())
    }
}
