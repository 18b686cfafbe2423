//! Loading the kernel programs, attaching each probe family through its fallback chain,
//! and reading what they recorded. One probe family per folder, named once in
//! [`FAMILIES`] (see [`family::ProbeFamily`] for what a family provides).

pub mod attach;
pub mod batch_read;
pub mod family;
pub mod handover;
pub mod module_prog;
pub mod outliers;
pub mod pins;
pub mod sparse;
pub mod stats;

/// Declares the probe families: their modules, `[probes]` (one section per family, of
/// the type the family names `Config`) and [`FAMILIES`]. Each module provides `Config`
/// and a `PROBE_FAMILY` implementing [`ProbeFamily`].
macro_rules! families {
    ($($family:ident),+ $(,)?) => {
        $(pub mod $family;)+

        /// `[probes]`: one section per family.
        #[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct ProbesConfig {
            $(pub $family: $family::Config,)+
        }

        /// Every probe family, in attach and report order.
        pub static FAMILIES: &[&dyn ProbeFamily] = &[$(&$family::PROBE_FAMILY),+];

        impl ProbesConfig {
            /// Whether the family whose section is `[probes.<name>]` is enabled.
            pub fn enabled(&self, name: &str) -> bool {
                match name {
                    $(stringify!($family) => self.$family.enabled,)+
                    _ => false,
                }
            }

            /// Sets the `enabled` of the family whose section is `[probes.<name>]`.
            pub fn set_enabled(&mut self, name: &str, on: bool) {
                match name {
                    $(stringify!($family) => self.$family.enabled = on,)+
                    _ => {}
                }
            }

            /// A copy with every family's `enabled` taken from `other`.
            pub fn with_enabled_of(&self, other: &Self) -> Self {
                let mut c = self.clone();
                $(c.$family.enabled = other.$family.enabled;)+
                c
            }

            /// A copy with every family enabled: what shapes the kernel side whichever
            /// probes run (SIGHUP attaches and detaches probes without a new layout).
            pub fn shape(&self) -> Self {
                let mut c = self.clone();
                $(c.$family.enabled = true;)+
                c
            }
        }
    };
}

// Adding a probe family: its folder under probes/ and one name here.
families! {
    block,
    sched,
    kvm,
    tcp,
}

use std::any::Any;

use agent_common::{
    counters, names,
    sparse::{SparseCell, SparseKey, family as kernel_family},
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
};
use serde::Serialize;
use thiserror::Error;

use crate::{
    aggregate::{
        Entity, EntityState, ExpHistogram, SeriesKey, TrackedCounter,
        budget::{LimitsConfig, Rule},
    },
    attribution::Attribution,
    kernel::{btf::Btf, btf_file, tracefs},
    report::SeriesReport,
};
pub use attach::{AttachKind, Attached, Attempt};
pub use family::{Interval, Kernel, Layouts, OneProbe, Plan, ProbeFamily, Resolved, Setup};
use stats::ProgramRunStats;

/// The kernel programs, built by `build.rs` from `agent-ebpf`.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// One cumulative histogram read from the kernel, with its labels.
#[derive(Clone, Debug)]
pub struct Reading {
    pub key: SeriesKey,
    pub hist: ExpHistogram,
    /// The kernel-keyed entity the series is about (VM, cgroup, device), if any.
    pub entity: Option<EntityState>,
}

impl Reading {
    /// A series about no particular entity (host-wide, or a configured group).
    pub fn plain(key: SeriesKey, hist: ExpHistogram) -> Self {
        Self {
            key,
            hist,
            entity: None,
        }
    }
}

/// What a probe reads with besides its own maps.
pub struct ReadContext<'a> {
    pub attribution: &'a mut Attribution,
    /// The shared sparse histogram map, read once per interval for all probes.
    pub sparse: &'a sparse::SparseSeries,
    /// Reading copies of the maps for a hand-over (`handover`): write nothing.
    pub snapshot: bool,
}

/// What every attached probe offers the pipeline. (`Any`: a test or a family may reach
/// its own probe's type through [`Probes::get`].)
pub trait Probe: Any {
    fn name(&self) -> &'static str;
    fn attached(&self) -> &Attached;
    /// Set when a probe detached by SIGHUP is attached again.
    fn attached_mut(&mut self) -> &mut Attached;
    /// Appends the current cumulative histograms.
    fn read(&mut self, cx: &mut ReadContext<'_>, out: &mut Vec<Reading>) -> Result<(), String>;
    /// Appends the current cumulative counters, for families that count rather than
    /// measure.
    fn read_counters(
        &mut self,
        _cx: &mut ReadContext<'_>,
        _out: &mut Vec<TrackedCounter>,
    ) -> Result<(), String> {
        Ok(())
    }
    /// Acts on the interval's report (block sets its outlier thresholds from it).
    fn on_interval(&mut self, _interval: &mut Interval<'_>) {}
    /// Deletes what the probe's own maps hold for entities whose series ended.
    fn forget(&mut self, _ended: &[Entity]) {}
    /// Its programs were detached (SIGHUP disabled the probe): what they keep from one
    /// event to the next goes stale while they do not run.
    fn detached(&mut self) {}
}

/// Attach state of one probe family, for the console, self-metrics and `check`.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeStatus {
    pub probe: &'static str,
    /// `None` when disabled in the configuration or not applicable here.
    pub attached: Option<Attached>,
    /// Why a probe is not running although enabled (it cannot apply to this host).
    pub not_applicable: Option<&'static str>,
}

impl ProbeStatus {
    pub fn is_up(&self) -> bool {
        self.attached.as_ref().is_some_and(|a| a.kind.is_some())
    }
}

#[derive(Debug, Error)]
pub enum StartError {
    #[error("cannot load nodepulse's kernel programs: {error}\n{hint}")]
    NotPermitted { error: String, hint: String },
    /// Every enabled probe that applies here failed to attach: nothing to report.
    #[error("no probe could attach: {reasons}\n{hint}")]
    NothingAttached { reasons: String, hint: String },
    #[error("cannot load nodepulse's kernel programs: {0}")]
    Load(String),
    #[error("{0}")]
    Pins(#[from] pins::PinError),
    #[error("{0}")]
    Btf(String),
}

/// Everything the kernel side recorded in one reading.
#[derive(Debug, Default)]
pub struct Collection {
    pub readings: Vec<Reading>,
    /// Cumulative counter series.
    pub counters: Vec<TrackedCounter>,
    /// Cumulative run time and count of each attached program.
    pub programs: Vec<ProgramRunStats>,
    /// Cumulative counts of events the probes had to drop, by name.
    pub drops: Vec<(&'static str, u64)>,
    /// Probes whose maps could not be read this time.
    pub errors: Vec<(&'static str, String)>,
    /// Outliers sent by the kernel since the last reading, and how many were read but
    /// not kept (beyond `outliers.max_per_interval`).
    pub outliers: Vec<outliers::Outlier>,
    pub outliers_discarded: u64,
}

impl Collection {
    /// The counter series as (key, total).
    pub fn counter_pairs(&self) -> Vec<(SeriesKey, u64)> {
        self.counters
            .iter()
            .map(|c| (c.key.clone(), c.total))
            .collect()
    }
}

/// The loaded object and the probes attached from it. Dropping it detaches everything.
pub struct Probes {
    // Field order is drop order: programs detach before tracefs is unmounted.
    ebpf: Ebpf,
    probes: Vec<Box<dyn Probe>>,
    statuses: Vec<ProbeStatus>,
    counters: Option<PerCpuArray<MapData, u64>>,
    sparse: Option<batch_read::PerCpuHash<SparseKey, SparseCell>>,
    sparse_reader: sparse::Reader,
    stats: stats::BpfStats,
    attribution: Attribution,
    outliers: Option<outliers::Outliers>,
    max_outliers: usize,
    /// Programs on module tracepoints that nodepulse loaded itself (kvm by tp_btf).
    modules: module_prog::ModulePrograms,
    /// The pin set when the probes are kept attached across restarts.
    pins: Option<pins::Pins>,
    /// Each family resolved at start, for probes that SIGHUP attaches later.
    families: Vec<Box<dyn Resolved>>,
    /// Probes that SIGHUP detached, with the maps they took from the object, for a
    /// later re-enable (a map can be taken from the object only once).
    parked: Vec<Box<dyn Probe>>,
    /// Whether tracefs was there at start: families resolved without it cannot attach
    /// classic tracepoints later.
    tracefs_at_start: bool,
    /// What the pin set of another layout had counted, read at the switch to this one.
    handover: Option<handover::Handover>,
    _tracefs: Option<tracefs::Mounted>,
}

/// What [`Probes::set_enabled`] changed.
#[derive(Debug, Default)]
pub struct Toggled {
    pub attached: Vec<&'static str>,
    pub detached: Vec<&'static str>,
    /// Enabled, and tried, but no variant attached (the reasons are logged); parked,
    /// so the next SIGHUP that enables them tries again.
    pub failed: Vec<&'static str>,
    /// The families of `failed`.
    pub failed_families: Vec<&'static str>,
}

impl Probes {
    /// Loads the object and attaches every enabled probe; a probe that cannot attach is
    /// reported and the others keep running.
    pub fn start<'a>(setup: impl Into<Setup<'a>>) -> Result<Self, StartError> {
        let setup = setup.into();
        let pins = match setup.bpffs {
            Some(bpffs) => Some(pins::Pins::prepare(bpffs, load_layout(&setup))?),
            None => None,
        };
        let Loaded {
            mut ebpf,
            btf,
            families,
            modules,
            tracefs,
            tracefs_found,
        } = Loaded::load_with(&setup, pins.as_ref())?;
        let stats = stats::BpfStats::enable();

        let (((probes, statuses), modules), pins) = pins::session(pins, || {
            module_prog::session(modules, || attach_all(&families, &mut ebpf, btf.as_ref()))
        });

        nothing_attached(&statuses)?;
        let counters = ebpf
            .take_map(names::MAP_PROBE_COUNTERS)
            .and_then(|m| PerCpuArray::try_from(m).ok());
        let sparse = ebpf.take_map(names::MAP_SPARSE_HIST).and_then(|m| {
            batch_read::PerCpuHash::new(m, names::MAP_SPARSE_HIST)
                .inspect_err(|e| tracing::warn!("{e}"))
                .ok()
        });
        let outliers = outliers::Outliers::take(&mut ebpf).filter(|_| setup.outliers_enabled);
        // Parsing the kernel's BTF twice (ours and aya's) peaks at tens of MiB that
        // glibc keeps unless asked; give it back now that loading is done. (musl, the
        // static build's libc, returns freed memory by itself.)
        // SAFETY: malloc_trim only releases free heap memory.
        #[cfg(target_env = "gnu")]
        unsafe {
            libc::malloc_trim(0)
        };
        let mut probes = Self {
            ebpf,
            probes,
            statuses,
            counters,
            sparse,
            sparse_reader: sparse::Reader::default(),
            stats,
            attribution: Attribution::new(
                setup.sys_root.to_path_buf(),
                setup.attribution,
                setup.probes.sched.cgroup,
            ),
            outliers,
            max_outliers: setup.outliers.max_per_interval,
            modules,
            pins,
            families,
            parked: Vec::new(),
            tracefs_at_start: tracefs_found,
            handover: None,
            _tracefs: tracefs,
        };
        probes.switch_pins();
        Ok(probes)
    }

    /// Says what was adopted; with pin sets of other layouts, reads what they counted
    /// (see [`handover`]) and removes them, saying what that resets.
    fn switch_pins(&mut self) {
        let Some(pins) = &self.pins else { return };
        if let Err(e) = handover::identity::pin(pins.dir()) {
            tracing::warn!(
                "cannot pin the maps' fingerprints ({e}): the next upgrade resets every \
                 cumulative series"
            );
        }
        log_adopted(pins);
        let stale = pins.stale();
        if stale.is_empty() {
            return;
        }
        // The newest other set is the one the last run used (names sort by version).
        let from = stale.last().cloned().unwrap_or_default();
        let dir = pins.dir().to_path_buf();
        let old = dir.with_file_name(&from);
        self.handover = handover::take(self, &from, &old, &dir)
            .inspect_err(|e| tracing::warn!(old = from, "cannot read the old pin set: {e}"))
            .ok();
        let pins = self.pins.as_mut().expect("checked above");
        tracing::info!(
            old = ?stale,
            new = pins.name(),
            "pins of another version or map layout found (an upgrade or a configuration \
             change): the new probes were attached beside them; what the old maps counted \
             was read, and the old pins are now removed"
        );
        let removed = pins.remove_stale();
        tracing::info!(removed = ?removed, "old pins removed, their programs detached");
    }

    /// The older pin set this start read at the switch, if any.
    pub fn handover_from(&self) -> Option<&str> {
        self.handover.as_ref().map(|h| h.from.as_str())
    }

    /// What the pin set of another layout counted until the switch, once.
    pub fn take_handover(&mut self) -> Option<handover::Handover> {
        self.handover.take()
    }

    /// SIGHUP: attaches the probes `config` enables that are not running and detaches
    /// those it disables; the others are not touched, so their counts go on. A
    /// detached probe's maps are kept (its series pause), and a re-enabled one
    /// continues from them. With pins, a detached probe's pins go (nothing of it runs
    /// while disabled) and a re-enabled one is pinned again.
    pub fn set_enabled(&mut self, config: &ProbesConfig) -> Toggled {
        let pins = self.pins.take();
        let modules = std::mem::take(&mut self.modules);
        let ((toggled, modules), pins) = pins::session(pins, || {
            module_prog::session(modules, || self.toggle(config))
        });
        self.pins = pins;
        self.modules = modules;
        // Report order is attach order.
        let order = |p: &dyn Probe| {
            self.statuses
                .iter()
                .position(|s| s.probe == p.name())
                .unwrap_or(usize::MAX)
        };
        self.probes.sort_by_key(|p| order(p.as_ref()));
        toggled
    }

    fn toggle(&mut self, config: &ProbesConfig) -> Toggled {
        let mut toggled = Toggled::default();
        // The kernel's BTF is parsed only when something attaches (tens of MiB).
        let mut btf: Option<Option<aya::Btf>> = None;
        for (def, family) in FAMILIES.iter().zip(&self.families) {
            let on = config.enabled(def.name());
            for plan in family.plans() {
                let running = self.probes.iter().position(|p| p.name() == plan.probe);
                let Some(status) = self.statuses.iter_mut().find(|s| s.probe == plan.probe) else {
                    continue;
                };
                match (on, running) {
                    (false, Some(i)) => {
                        let mut probe = self.probes.remove(i);
                        for &program in &probe.attached().programs {
                            attach::unload(&mut self.ebpf, program);
                            pins::with(|pins| pins.map(|p| p.clear(program)));
                        }
                        probe.detached();
                        tracing::info!(probe = plan.probe, "probe detached (disabled)");
                        if probe.attached().kind.is_some() {
                            self.parked.push(probe);
                        }
                        status.attached = None;
                        toggled.detached.push(plan.probe);
                    }
                    // A parked failure, disabled: no longer reported as failing.
                    (false, None) => status.attached = None,
                    (true, None) if plan.not_applicable.is_none() => {
                        let btf = btf
                            .get_or_insert_with(|| aya::Btf::from_sys_fs().ok())
                            .as_ref();
                        let parked = self.parked.iter().position(|p| p.name() == plan.probe);
                        let probe = match parked {
                            Some(i) => {
                                let mut probe = self.parked.remove(i);
                                let variants = family.variants(plan.probe, plan.forced);
                                *probe.attached_mut() =
                                    attach::attach_first(&mut self.ebpf, btf, &variants);
                                probe
                            }
                            None => family.attach(plan.probe, &mut self.ebpf, btf),
                        };
                        log_attach(probe.name(), probe.attached());
                        status.attached = Some(probe.attached().clone());
                        if probe.attached().kind.is_some() {
                            toggled.attached.push(plan.probe);
                            self.probes.push(probe);
                        } else {
                            // Not running: the next SIGHUP that enables it tries again.
                            toggled.failed.push(plan.probe);
                            if !toggled.failed_families.contains(&def.name()) {
                                toggled.failed_families.push(def.name());
                            }
                            self.parked.push(probe);
                        }
                    }
                    _ => {}
                }
            }
        }
        if btf.is_some() {
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim only releases free heap memory.
            unsafe {
                libc::malloc_trim(0)
            };
        }
        toggled
    }

    /// Whether SIGHUP can attach the family `[probes.<name>]`: KVM's exits are
    /// classic tracepoints, resolved at start only when tracefs was there.
    pub fn attachable_later(&self, name: &str) -> bool {
        name != "kvm" || self.tracefs_at_start
    }

    /// The pin set, when the probes are kept attached across restarts.
    pub fn pins(&self) -> Option<&pins::Pins> {
        self.pins.as_ref()
    }

    pub fn statuses(&self) -> &[ProbeStatus] {
        &self.statuses
    }

    /// Deletes every map entry of entities whose series ended (their last counts were
    /// read and reported), so the maps do not fill with the dead and a reused pid or
    /// cgroup id starts from zero.
    pub fn forget(&mut self, ended: &[Entity]) {
        if ended.is_empty() {
            return;
        }
        if let Some(map) = &mut self.sparse {
            let mut map = map.map_mut();
            // The keys of the reading that ended them: an entry made since comes back
            // in the next reading as a series of an ended entity, and goes then.
            let dead: Vec<SparseKey> = self
                .sparse_reader
                .keys()
                .iter()
                .filter(|k| sparse_entity(k).is_some_and(|e| ended.contains(&e)))
                .copied()
                .collect();
            for key in &dead {
                if let Err(e) = map.remove(key) {
                    tracing::debug!(key.family, key.group, "cannot delete a sparse entry: {e}");
                }
            }
            tracing::debug!(entities = ?ended, entries = dead.len(), "series ended");
        }
        for probe in &mut self.probes {
            probe.forget(ended);
        }
    }

    /// The attached probe of type `P`, for what only its family offers.
    pub fn get<P: Probe>(&self) -> Option<&P> {
        self.probes
            .iter()
            .find_map(|p| (p.as_ref() as &dyn Any).downcast_ref::<P>())
    }

    /// [`Self::get`], to change what only its family offers.
    pub fn get_mut<P: Probe>(&mut self) -> Option<&mut P> {
        self.probes
            .iter_mut()
            .find_map(|p| (p.as_mut() as &mut dyn Any).downcast_mut::<P>())
    }

    /// Whether `entity` still exists (a carried series without readings asks).
    pub fn alive(&mut self, entity: Entity) -> bool {
        self.attribution.alive(entity)
    }

    /// Hands the interval's report to every probe (see [`Probe::on_interval`]).
    pub fn on_interval(&mut self, series: &[SeriesReport]) {
        for probe in &mut self.probes {
            probe.on_interval(&mut Interval {
                series,
                outliers: self.outliers.as_mut(),
            });
        }
    }

    /// Whether kernel BPF run-time statistics are on, and if not, why.
    pub fn bpf_stats(&self) -> &stats::BpfStats {
        &self.stats
    }

    /// Reads every attached probe's maps, the drop counters and the programs' run times.
    pub fn collect(&mut self) -> Collection {
        let mut out = Collection::default();
        if let Some(o) = &mut self.outliers {
            (out.outliers, out.outliers_discarded) =
                o.drain(&mut self.attribution, self.max_outliers);
        }
        self.read_counts(&mut out, false);
        for probe in &self.probes {
            for &program in &probe.attached().programs {
                let adopted = self.pins.as_ref().and_then(|p| p.program_fd(program));
                let own = adopted.or_else(|| self.modules.program_fd(program));
                let read = match own {
                    Some(fd) => stats::read_fd(fd, probe.name(), program),
                    None => stats::read(&self.ebpf, probe.name(), program),
                };
                if let Some(s) = read {
                    out.programs.push(s);
                }
            }
        }
        out
    }

    /// Reads the counts (histograms, counter series, drop counters) into `out`; a
    /// `snapshot` read (of map copies, for a hand-over) writes nothing to the maps.
    fn read_counts(&mut self, out: &mut Collection, snapshot: bool) {
        self.attribution.refresh();
        let sparse = match &self.sparse {
            Some(map) => self.sparse_reader.read(map).unwrap_or_else(|e| {
                out.errors.push(("sparse", e));
                Default::default()
            }),
            None => Default::default(),
        };
        let mut cx = ReadContext {
            attribution: &mut self.attribution,
            sparse: &sparse,
            snapshot,
        };
        for probe in &mut self.probes {
            if let Err(e) = probe
                .read(&mut cx, &mut out.readings)
                .and_then(|()| probe.read_counters(&mut cx, &mut out.counters))
            {
                out.errors.push((probe.name(), e));
            }
        }
        if let Some(c) = &self.counters {
            for (index, name) in counters::NAMES {
                let total = c
                    .get(&index, 0)
                    .map(|per_cpu| per_cpu.iter().sum::<u64>())
                    .unwrap_or(0);
                out.drops.push((name, total));
            }
        }
    }
}

/// Attaches every enabled probe of every family (the pin set, if any, is lent through
/// [`pins::session`]).
fn attach_all(
    families: &[Box<dyn Resolved>],
    ebpf: &mut Ebpf,
    btf: Option<&aya::Btf>,
) -> (Vec<Box<dyn Probe>>, Vec<ProbeStatus>) {
    let mut probes: Vec<Box<dyn Probe>> = Vec::new();
    let mut statuses = Vec::new();
    for family in families {
        for plan in family.plans() {
            let mut status = ProbeStatus {
                probe: plan.probe,
                attached: None,
                not_applicable: None,
            };
            if !plan.enabled {
                // An earlier run of this layout may have left it attached (the layout
                // does not depend on which probes run): it must not keep counting.
                for variant in family.variants(plan.probe, None) {
                    for spec in &variant.programs {
                        pins::with(|pins| pins.map(|p| p.clear(spec.program)));
                    }
                }
                statuses.push(status);
                continue;
            }
            if let Some(why) = plan.not_applicable {
                tracing::info!(probe = plan.probe, "not applicable on this host: {why}");
                status.not_applicable = Some(why);
                statuses.push(status);
                continue;
            }
            let probe = family.attach(plan.probe, ebpf, btf);
            log_attach(probe.name(), probe.attached());
            status.attached = Some(probe.attached().clone());
            statuses.push(status);
            probes.push(probe);
        }
    }
    (probes, statuses)
}

/// What shapes the kernel side besides the object: the probes' configuration (map
/// sizes, globals, which programs attach) and the outliers'.
fn load_layout(setup: &Setup<'_>) -> u64 {
    let config = format!(
        "{:?}|{:?}|{}",
        setup.probes.shape(),
        setup.outliers,
        setup.outliers_enabled
    );
    pins::layout(EBPF_OBJECT, &config)
}

/// Says whether this layout's maps and probes were adopted from an earlier run.
fn log_adopted(pins: &pins::Pins) {
    if pins.maps_adopted {
        tracing::info!(
            pins = %pins.dir().display(),
            adopted = ?pins.adopted,
            "continuing the kernel's counts from pinned maps; adopted probes kept running \
             while the agent was down"
        );
    } else {
        tracing::info!(
            pins = %pins.dir().display(),
            "probes pinned: they stay attached across restarts"
        );
    }
}

/// The entity a sparse map entry counts for.
fn sparse_entity(key: &SparseKey) -> Option<Entity> {
    match key.family {
        kernel_family::SCHED_CGROUP => Some(Entity::Cgroup(key.group)),
        kernel_family::BLOCK_CGROUP => Some(Entity::IoCgroup(key.group)),
        kernel_family::SCHED_VM
        | kernel_family::KVM_USERSPACE
        | kernel_family::KVM_EXIT
        | kernel_family::KVM_RUN => Some(Entity::Process(key.group as u32)),
        _ => None,
    }
}

/// The eBPF object loaded into the kernel (maps created, no program loaded yet), with
/// what is needed to load its programs.
pub struct Loaded {
    pub ebpf: Ebpf,
    /// aya's view of the kernel BTF, for tp_btf and fentry programs.
    pub btf: Option<aya::Btf>,
    /// Each family resolved against this kernel, in [`FAMILIES`] order.
    pub families: Vec<Box<dyn Resolved>>,
    /// What loading programs on module tracepoints needs (the maps' fds).
    pub modules: module_prog::ModulePrograms,
    /// Set when nodepulse mounted tracefs itself (unmounted on drop).
    pub tracefs: Option<tracefs::Mounted>,
    /// Whether tracefs was found (or mounted) at all.
    pub tracefs_found: bool,
}

impl Loaded {
    pub fn load(setup: &Setup<'_>) -> Result<Self, StartError> {
        Self::load_with(setup, None)
    }

    /// Loads the object; with `pins`, every map is opened from its pin when an earlier
    /// run of the same layout left one, else created and pinned.
    pub fn load_with(setup: &Setup<'_>, pins: Option<&pins::Pins>) -> Result<Self, StartError> {
        raise_memlock_limit();
        // tp_btf and fentry name type ids of the BTF the kernel holds itself: `btf` is
        // always the kernel's own, even with `[agent] btf` (which equals it when the
        // kernel has one, see kernel::btf_file).
        let btf = aya::Btf::from_sys_fs().ok();
        let (kernel_btf, loader_btf) = match setup.btf {
            Some(path) => {
                let file = btf_file::open(path).map_err(|e| StartError::Btf(e.to_string()))?;
                tracing::info!(
                    path = %path.display(),
                    kernel_has_own = file.kernel_has_own,
                    "kernel BTF read from [agent] btf"
                );
                (Some(file.layouts), Some(file.loader))
            }
            None => (
                Btf::from_sys_fs()
                    .inspect_err(|e| tracing::warn!("kernel BTF unusable: {e}"))
                    .ok(),
                btf.clone(),
            ),
        };
        // Classic tracepoints need tracefs: without BTF every family falls back to them,
        // otherwise only those that are forced to or have no other way.
        let needs_tracefs = kernel_btf.is_none() || FAMILIES.iter().any(|f| f.needs_tracefs(setup));
        let (tracefs, mounted) = if needs_tracefs {
            match tracefs::find_or_mount() {
                Ok((path, mounted)) => (Some(path), mounted),
                Err(e) => {
                    tracing::warn!("{e}");
                    (None, None)
                }
            }
        } else {
            (tracefs::find(), None)
        };
        let kernel = Kernel {
            btf: kernel_btf.as_ref(),
            tracefs: tracefs.as_deref(),
        };
        let families: Vec<Box<dyn Resolved>> =
            FAMILIES.iter().map(|f| f.resolve(setup, &kernel)).collect();
        let tracefs_found = tracefs.is_some();
        drop(kernel_btf);

        let map_paths = pins.map(|p| p.map_paths(EBPF_OBJECT)).unwrap_or_default();
        let mut loader = EbpfLoader::new();
        loader.btf(loader_btf.as_ref());
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        for family in &families {
            family.apply(&mut loader);
        }
        let ebpf = loader.load(EBPF_OBJECT).map_err(|e| {
            let msg = attach::short_error_chain(&e);
            if msg.contains("Operation not permitted") || msg.contains("EPERM") {
                StartError::NotPermitted {
                    error: msg,
                    hint: crate::kernel::privilege_hint(crate::kernel::effective_capabilities()),
                }
            } else {
                StartError::Load(msg)
            }
        })?;
        drop(loader);
        let modules = module_prog::ModulePrograms::new(&ebpf, EBPF_OBJECT);
        Ok(Self {
            ebpf,
            btf,
            families,
            modules,
            tracefs: mounted,
            tracefs_found,
        })
    }
}

/// The cardinality budget of every family's labelled metric families.
pub fn budget_rules(limits: &LimitsConfig) -> Vec<Rule> {
    FAMILIES
        .iter()
        .flat_map(|f| f.budget_rules(limits))
        .collect()
}

fn log_attach(probe: &str, attached: &Attached) {
    for f in &attached.failures {
        tracing::warn!(probe, via = %f.kind, "cannot attach: {}", f.error);
    }
    match attached.kind {
        Some(kind) => tracing::info!(probe, via = %kind, "probe attached"),
        None => tracing::error!(
            probe,
            "probe could not attach by any method; the other probes keep running \
             (run `nodepulse check` for details)"
        ),
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones to the cgroup.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct; failure only matters on old kernels.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK (fine on kernels >= 5.11)");
    }
}

/// An error when probes were meant to run and none did, naming each failure and, when
/// the kernel refused, the missing capability.
fn nothing_attached(statuses: &[ProbeStatus]) -> Result<(), StartError> {
    let tried: Vec<&ProbeStatus> = statuses.iter().filter(|s| s.attached.is_some()).collect();
    if tried.is_empty() || tried.iter().any(|s| s.is_up()) {
        return Ok(());
    }
    let reasons: Vec<String> = tried
        .iter()
        .map(|s| {
            let first = s
                .attached
                .as_ref()
                .and_then(|a| a.failures.first())
                .map_or_else(|| "no attach kind offered".into(), |f| f.error.clone());
            format!("{}: {first}", s.probe)
        })
        .collect();
    let reasons = reasons.join("; ");
    let hint = if reasons.contains("Operation not permitted") || reasons.contains("CAP_") {
        crate::kernel::privilege_hint(crate::kernel::effective_capabilities())
    } else {
        "run `nodepulse check` to see what this kernel supports".into()
    };
    Err(StartError::NothingAttached { reasons, hint })
}
