//! Loading the kernel programs, attaching each probe family through its fallback chain,
//! and reading what they recorded. One probe family per module.

pub mod attach;
pub mod block;
pub mod stats;

use std::path::PathBuf;

use agent_common::{counters, names};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
};
use serde::Serialize;
use thiserror::Error;

use crate::{
    aggregate::{ExpHistogram, SeriesKey},
    attribution::devices::DeviceNames,
    config::ProbesConfig,
    kernel::{btf::Btf, tracefs},
};
pub use attach::{AttachKind, Attached, Attempt};
use stats::ProgramRunStats;

/// The kernel programs, built by `build.rs` from `agent-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// One cumulative histogram read from the kernel, with its labels.
#[derive(Clone, Debug)]
pub struct Reading {
    pub key: SeriesKey,
    pub hist: ExpHistogram,
}

/// What every probe family offers the pipeline.
pub trait Probe {
    fn name(&self) -> &'static str;
    fn attached(&self) -> &Attached;
    /// Appends the current cumulative histograms.
    fn read(&mut self, devices: &mut DeviceNames, out: &mut Vec<Reading>) -> Result<(), String>;
}

/// Attach state of one probe family, for the console, self-metrics and `check`.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeStatus {
    pub probe: &'static str,
    /// `None` when disabled in the configuration.
    pub attached: Option<Attached>,
}

impl ProbeStatus {
    pub fn is_up(&self) -> bool {
        self.attached.as_ref().is_some_and(|a| a.kind.is_some())
    }
}

#[derive(Debug, Error)]
pub enum StartError {
    #[error(
        "cannot load nodepulse's kernel programs: {0}\n\
         nodepulse needs CAP_BPF and CAP_PERFMON (or root); run it as root, or grant them \
         (see README: Permissions)"
    )]
    NotPermitted(String),
    #[error("cannot load nodepulse's kernel programs: {0}")]
    Load(String),
}

/// Everything the kernel side recorded in one reading.
#[derive(Debug, Default)]
pub struct Collection {
    pub readings: Vec<Reading>,
    /// Cumulative run time and count of each attached program.
    pub programs: Vec<ProgramRunStats>,
    /// Cumulative counts of events the probes had to drop, by name.
    pub drops: Vec<(&'static str, u64)>,
    /// Probes whose maps could not be read this time.
    pub errors: Vec<(&'static str, String)>,
}

/// The loaded object and the probes attached from it. Dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    probes: Vec<Box<dyn Probe>>,
    statuses: Vec<ProbeStatus>,
    counters: Option<PerCpuArray<MapData, u64>>,
    stats: stats::BpfStats,
    devices: DeviceNames,
}

impl Probes {
    /// Loads the object and attaches every enabled probe; a probe that cannot attach is
    /// reported and the others keep running.
    pub fn start(config: &ProbesConfig, sys_root: PathBuf) -> Result<Self, StartError> {
        let Loaded {
            mut ebpf,
            btf,
            block_layouts,
        } = Loaded::load(config)?;
        let stats = stats::BpfStats::enable();

        let mut probes: Vec<Box<dyn Probe>> = Vec::new();
        let mut statuses = Vec::new();
        if config.block.enabled {
            let only = config.block.attach.kind();
            let probe = block::BlockProbe::attach(&mut ebpf, btf.as_ref(), &block_layouts, only);
            log_attach(probe.name(), probe.attached());
            statuses.push(ProbeStatus {
                probe: block::NAME,
                attached: Some(probe.attached().clone()),
            });
            probes.push(Box::new(probe));
        } else {
            statuses.push(ProbeStatus {
                probe: block::NAME,
                attached: None,
            });
        }

        let counters = ebpf
            .take_map(names::MAP_PROBE_COUNTERS)
            .and_then(|m| PerCpuArray::try_from(m).ok());
        drop(btf);
        // Parsing the kernel's BTF twice (ours and aya's) peaks at tens of MiB that
        // glibc keeps unless asked; give it back now that loading is done.
        // SAFETY: malloc_trim only releases free heap memory.
        unsafe { libc::malloc_trim(0) };
        Ok(Self {
            ebpf,
            probes,
            statuses,
            counters,
            stats,
            devices: DeviceNames::new(sys_root),
        })
    }

    pub fn statuses(&self) -> &[ProbeStatus] {
        &self.statuses
    }

    /// Whether kernel BPF run-time statistics are on, and if not, why.
    pub fn bpf_stats(&self) -> &stats::BpfStats {
        &self.stats
    }

    /// Reads every attached probe's maps, the drop counters and the programs' run times.
    pub fn collect(&mut self) -> Collection {
        let mut out = Collection::default();
        for probe in &mut self.probes {
            if let Err(e) = probe.read(&mut self.devices, &mut out.readings) {
                out.errors.push((probe.name(), e));
            }
            for &program in &probe.attached().programs {
                if let Some(s) = stats::read(&self.ebpf, probe.name(), program) {
                    out.programs.push(s);
                }
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
        out
    }
}

/// The eBPF object loaded into the kernel (maps created, no program loaded yet), with
/// what is needed to load its programs.
pub struct Loaded {
    pub ebpf: Ebpf,
    /// aya's view of the kernel BTF, for tp_btf and fentry programs.
    pub btf: Option<aya::Btf>,
    pub block_layouts: block::BlockLayouts,
}

impl Loaded {
    pub fn load(config: &ProbesConfig) -> Result<Self, StartError> {
        raise_memlock_limit();
        let kernel_btf = Btf::from_sys_fs()
            .inspect_err(|e| tracing::warn!("kernel BTF unusable: {e}"))
            .ok();
        let btf = aya::Btf::from_sys_fs().ok();
        // Classic tracepoints need tracefs; mount it only when they are the likely choice.
        let forced_tracepoint = config.block.attach.kind() == Some(AttachKind::Tracepoint);
        let tracefs = if forced_tracepoint || kernel_btf.is_none() {
            tracefs::find_or_mount()
                .inspect_err(|e| tracing::warn!("{e}"))
                .ok()
        } else {
            tracefs::find()
        };
        let block_layouts = block::BlockLayouts::resolve(
            kernel_btf.as_ref(),
            tracefs.as_deref(),
            config.block.kernel_timestamps,
        );

        let mut loader = EbpfLoader::new();
        loader.btf(btf.as_ref());
        block_layouts.apply(&mut loader);
        let ebpf = loader.load(EBPF_OBJECT).map_err(|e| {
            let msg = attach::error_chain(&e);
            if msg.contains("Operation not permitted") || msg.contains("EPERM") {
                StartError::NotPermitted(msg)
            } else {
                StartError::Load(msg)
            }
        })?;
        drop(loader);
        Ok(Self {
            ebpf,
            btf,
            block_layouts,
        })
    }
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
