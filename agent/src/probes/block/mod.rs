//! Block I/O (kernel side: `agent-ebpf/src/block.rs`): per device and operation, the
//! queue, device and total latency of each request, its size, the queue depth at
//! issue, errors, and latency per submitting cgroup.

mod config;
mod registry;
mod sweep;
mod thresholds;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use agent_common::{
    block::{
        BlockErrorKey, BlockHistograms, BlockKey, DeviceDepth, OutlierLayout, RequestLayout,
        TracepointLayout, op,
    },
    names,
    sparse::family,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuValues},
};

use super::{
    Layouts, Probe, ReadContext, Reading,
    batch_read::PerCpuHash,
    attach::{AttachKind, Attached, Hook, ProgramSpec, Variant, attach_first},
    sparse,
};
use crate::{
    aggregate::{Entity, EntityState, ExpHistogram, SeriesKey},
    kernel::{btf::Btf, tracefs},
    probes::{Interval, outliers::OutliersConfig},
};
pub use config::BlockConfig as Config;
pub use registry::PROBE_FAMILY;
use thresholds::OutlierThresholds;

pub const NAME: &str = "block";
/// Queue + device time.
pub const FAMILY: &str = "block.io.latency";
pub const FAMILY_QUEUE: &str = "block.io.queue.latency";
pub const FAMILY_DEVICE: &str = "block.io.device.latency";
pub const FAMILY_DEPTH: &str = "block.io.queue_depth";
pub const FAMILY_SIZE: &str = "block.io.size";
pub const FAMILY_ERRORS: &str = "block.io.errors";
/// Completions the kernel made that the probe could not record, per device and cause:
/// `unseen` (the completion program did not run), `unmatched` (no issue record).
pub const FAMILY_UNRECORDED: &str = "block.io.unrecorded";
pub const FAMILY_BUSY: &str = "block.io.busy_time";
pub const FAMILY_CGROUP: &str = "block.cgroup.io.latency";

/// Kernel layouts the programs need, resolved before the object is loaded. A layout
/// that cannot be resolved rules out the variants that need it, not the probe.
pub struct BlockLayouts {
    request: Result<RequestLayout, String>,
    tracepoints: Result<(TracepointLayout, TracepointLayout), String>,
    /// `enabled == 0` turns outliers off in the kernel.
    outlier: OutlierLayout,
    /// Whether `block_rq_insert/issue/requeue` pass the queue before the request.
    queue_first: bool,
    /// Whether `block_rq_complete` passes an int errno rather than a `blk_status_t`.
    complete_errno: bool,
}

impl BlockLayouts {
    pub fn resolve(
        btf: Option<&Btf>,
        tracefs: Option<&Path>,
        kernel_timestamps: bool,
        cgroups: bool,
        outliers: bool,
    ) -> Self {
        let request = match btf {
            Some(btf) => request_layout(btf, kernel_timestamps, cgroups).map_err(|e| e.to_string()),
            None => Err("kernel BTF (/sys/kernel/btf/vmlinux) is missing".into()),
        };
        let tracepoints = match tracefs {
            Some(root) => tracepoint_layouts(root).map_err(|e| e.to_string()),
            None => Err("tracefs is not mounted".into()),
        };
        let outlier = OutlierLayout {
            enabled: outliers.into(),
        };
        // Up to 5.10 the request tracepoints are `(q, rq)`: two arguments, not one.
        let queue_first = btf.and_then(|b| b.tracepoint_args("block_rq_issue")) == Some(2);
        // Up to 5.10 the completion's error is `int` (an errno), from 5.11 `blk_status_t`.
        let complete_errno =
            btf.and_then(|b| b.tracepoint_arg_type("block_rq_complete", 1)) == Some("int");
        Self {
            request,
            tracepoints,
            outlier,
            queue_first,
            complete_errno,
        }
    }
}

impl Layouts for BlockLayouts {
    /// Sets the globals of the kernel programs; unresolved layouts stay zero and their
    /// variants are never loaded.
    fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        if let Ok(layout) = &self.request {
            loader.override_global(names::GLOBAL_REQUEST_LAYOUT, layout, true);
        }
        if let Ok((issue, complete)) = &self.tracepoints {
            loader.override_global(names::GLOBAL_TP_ISSUE_LAYOUT, issue, true);
            loader.override_global(names::GLOBAL_TP_COMPLETE_LAYOUT, complete, true);
        }
        loader.override_global(names::GLOBAL_OUTLIER_LAYOUT, &self.outlier, true);
    }

    /// The fallback chain, or just `only` when the configuration forces one kind.
    fn variants(&self, only: Option<AttachKind>) -> Vec<Variant> {
        let request_missing = self.request.as_ref().err().cloned();
        let tp_missing = self.tracepoints.as_ref().err().cloned();
        let spec = |program, hook| ProgramSpec { program, hook };
        // The programs taking the request from the second argument (up to 5.10).
        let q = |one, queue_first| if self.queue_first { queue_first } else { one };
        // The completion programs reading an errno (up to 5.10).
        let e = |status, errno| if self.complete_errno { errno } else { status };
        let all = [
            Variant {
                kind: AttachKind::TpBtf,
                // Completion first: nothing is left in the table by an issue whose
                // completion is not yet hooked.
                programs: vec![
                    spec(
                        e(
                            names::PROG_BLOCK_COMPLETE_BTF,
                            names::PROG_BLOCK_COMPLETE_BTF_ERRNO,
                        ),
                        Hook::TpBtf("block_rq_complete"),
                    ),
                    spec(
                        q(names::PROG_BLOCK_REQUEUE_BTF, names::PROG_BLOCK_REQUEUE_BTF_Q),
                        Hook::TpBtf("block_rq_requeue"),
                    ),
                    spec(
                        q(names::PROG_BLOCK_ISSUE_BTF, names::PROG_BLOCK_ISSUE_BTF_Q),
                        Hook::TpBtf("block_rq_issue"),
                    ),
                    spec(
                        q(names::PROG_BLOCK_INSERT_BTF, names::PROG_BLOCK_INSERT_BTF_Q),
                        Hook::TpBtf("block_rq_insert"),
                    ),
                ],
                unavailable: request_missing.clone(),
            },
            Variant {
                kind: AttachKind::RawTracepoint,
                programs: vec![
                    spec(
                        e(
                            names::PROG_BLOCK_COMPLETE_RAW,
                            names::PROG_BLOCK_COMPLETE_RAW_ERRNO,
                        ),
                        Hook::Raw("block_rq_complete"),
                    ),
                    spec(
                        q(names::PROG_BLOCK_REQUEUE_RAW, names::PROG_BLOCK_REQUEUE_RAW_Q),
                        Hook::Raw("block_rq_requeue"),
                    ),
                    spec(
                        q(names::PROG_BLOCK_ISSUE_RAW, names::PROG_BLOCK_ISSUE_RAW_Q),
                        Hook::Raw("block_rq_issue"),
                    ),
                    spec(
                        q(names::PROG_BLOCK_INSERT_RAW, names::PROG_BLOCK_INSERT_RAW_Q),
                        Hook::Raw("block_rq_insert"),
                    ),
                ],
                unavailable: request_missing.clone(),
            },
            Variant {
                kind: AttachKind::Tracepoint,
                programs: vec![
                    spec(
                        names::PROG_BLOCK_COMPLETE_TP,
                        Hook::Tracepoint("block", "block_rq_complete"),
                    ),
                    spec(
                        names::PROG_BLOCK_ISSUE_TP,
                        Hook::Tracepoint("block", "block_rq_issue"),
                    ),
                ],
                unavailable: tp_missing,
            },
            Variant {
                kind: AttachKind::Fentry,
                programs: vec![
                    spec(
                        names::PROG_BLOCK_COMPLETE_FENTRY,
                        Hook::Fentry("blk_update_request"),
                    ),
                    spec(
                        names::PROG_BLOCK_ISSUE_FENTRY,
                        Hook::Fentry("blk_mq_start_request"),
                    ),
                ],
                unavailable: request_missing.clone(),
            },
            Variant {
                kind: AttachKind::Kprobe,
                programs: vec![
                    spec(
                        names::PROG_BLOCK_COMPLETE_KPROBE,
                        Hook::Kprobe("blk_update_request"),
                    ),
                    spec(
                        names::PROG_BLOCK_ISSUE_KPROBE,
                        Hook::Kprobe("blk_mq_start_request"),
                    ),
                ],
                unavailable: request_missing,
            },
        ];
        all.into_iter()
            .filter(|v| only.is_none_or(|k| k == v.kind))
            .collect()
    }
}

fn request_layout(
    btf: &Btf,
    kernel_timestamps: bool,
    cgroups: bool,
) -> Result<RequestLayout, crate::kernel::btf::BtfError> {
    let mut layout = RequestLayout {
        rq_q: btf.member_offset("request", "q")?,
        rq_cmd_flags: btf.member_offset("request", "cmd_flags")?,
        rq_data_len: btf.member_offset("request", "__data_len")?,
        rq_state: btf.member_offset("request", "state")?,
        rq_start_time_ns: btf.member_offset("request", "start_time_ns")?,
        disk_major: btf.member_offset("gendisk", "major")?,
        disk_first_minor: btf.member_offset("gendisk", "first_minor")?,
        rq_sector: btf.member_offset("request", "__sector")?,
        // Only the sweep needs it, and it says so when it is missing.
        rq_ref: btf.member_offset("request", "ref").unwrap_or(0),
        ..RequestLayout::default()
    };
    // The request's disk: `q->disk` since 5.16, `rq->rq_disk` before (5.10, 5.15).
    match btf.member_offset("request_queue", "disk") {
        Ok(q_disk) => layout.q_disk = q_disk,
        Err(new) => {
            layout.rq_disk = btf.member_offset("request", "rq_disk").map_err(|_| new)?;
        }
    }
    match cgroup_chain(btf) {
        Ok(chain) => layout = chain(layout, cgroups),
        Err(e) => tracing::info!("block: no I/O cgroups on this kernel ({e})"),
    }
    if !kernel_timestamps {
        return Ok(layout);
    }
    match kernel_stamps(btf) {
        Ok(stamps) => {
            layout = RequestLayout {
                kernel_stamps: 1,
                ..stamps(layout)
            }
        }
        Err(why) => tracing::info!(
            "block: the kernel's issue timestamps are unusable here ({why}); \
             every request is timed by the probe"
        ),
    }
    Ok(layout)
}

/// Where the kernel keeps its own issue timestamp (`io_start_time_ns`, set right after
/// `block_rq_issue` when the queue collects I/O statistics, as writeback throttling
/// makes most queues do): the fields and the flag values, which are enums since 6.9.
fn kernel_stamps(btf: &Btf) -> Result<impl Fn(RequestLayout) -> RequestLayout, String> {
    let enumerator = |name: &str| {
        btf.enum_value(name)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| format!("enumerator {name} not in BTF"))
    };
    let offset = |s: &str, m: &str| btf.member_offset(s, m).map_err(|e| e.to_string());
    let q_queue_flags = offset("request_queue", "queue_flags")?;
    let queue_flag_stats = enumerator("QUEUE_FLAG_STATS")?;
    let rq_rq_flags = offset("request", "rq_flags")?;
    let rqf_stats_bit = enumerator("__RQF_STATS")?;
    let rq_io_start_time_ns = offset("request", "io_start_time_ns")?;
    let req_op_drv_in = enumerator("REQ_OP_DRV_IN")?;
    let req_op_drv_out = enumerator("REQ_OP_DRV_OUT")?;
    if queue_flag_stats >= 64 || rqf_stats_bit >= 32 {
        return Err("flag bits out of range".into());
    }
    Ok(move |l: RequestLayout| RequestLayout {
        q_queue_flags,
        queue_flag_stats,
        rq_rq_flags,
        rqf_stats: 1 << rqf_stats_bit,
        rq_io_start_time_ns,
        req_op_drv_in,
        req_op_drv_out,
        ..l
    })
}

/// Where the cgroup that submitted a request is (`rq->bio->bi_blkg->blkcg`, needs
/// CONFIG_BLK_CGROUP): for per-cgroup I/O and outliers.
fn cgroup_chain(
    btf: &Btf,
) -> Result<impl Fn(RequestLayout, bool) -> RequestLayout, crate::kernel::btf::BtfError> {
    let rq_bio = btf.member_offset("request", "bio")?;
    let bio_blkg = btf.member_offset("bio", "bi_blkg")?;
    let blkg_blkcg = btf.member_offset("blkcg_gq", "blkcg")?;
    let blkcg_cgroup = btf.member_offset("blkcg", "css.cgroup")?;
    let cgroup_kn = btf.member_offset("cgroup", "kn")?;
    let kn_id = btf.member_offset("kernfs_node", "id")?;
    Ok(move |l: RequestLayout, on: bool| RequestLayout {
        cgroup_io: on.into(),
        rq_bio,
        bio_blkg,
        blkg_blkcg,
        blkcg_cgroup,
        cgroup_kn,
        kn_id,
        ..l
    })
}

fn tracepoint_layouts(
    root: &Path,
) -> Result<(TracepointLayout, TracepointLayout), tracefs::TracefsError> {
    let layout = |name| -> Result<TracepointLayout, tracefs::TracefsError> {
        let f = tracefs::Format::read(root, "block", name)?;
        Ok(TracepointLayout {
            dev: f.offset("dev", 4)?,
            sector: f.offset("sector", 8)?,
            rwbs: f.offset("rwbs", 0)?,
            error: 0,
        })
    };
    let complete = tracefs::Format::read(root, "block", "block_rq_complete")?;
    Ok((
        layout("block_rq_issue")?,
        TracepointLayout {
            error: complete.offset("error", 4)?,
            ..layout("block_rq_complete")?
        },
    ))
}

pub fn op_name(op: u32) -> &'static str {
    match op {
        op::READ => "read",
        op::WRITE => "write",
        op::FLUSH => "flush",
        op::DISCARD => "discard",
        _ => "other",
    }
}

/// Whether an attach kind hooks scheduler insertion (and requeues).
fn hooks_insertion(kind: AttachKind) -> bool {
    matches!(kind, AttachKind::TpBtf | AttachKind::RawTracepoint)
}

/// Whether `family` is measured when its probe attaches with `kind`: without the
/// insertion hook there is no queue time, so no total either; the sizes and the
/// submitting cgroup need the request pointer classic tracepoints lack.
pub fn measured_with(family: &str, kind: AttachKind) -> bool {
    match family {
        FAMILY | FAMILY_QUEUE => hooks_insertion(kind),
        FAMILY_SIZE | FAMILY_CGROUP => kind != AttachKind::Tracepoint,
        _ => true,
    }
}

/// The `blk_status_t` a completion errno came from: the inverse of the kernel's
/// `blk_status_to_errno()` (block/blk-core.c, `blk_errors[]`), which gives each status
/// its own errno, so the label does not depend on which one the hook saw.
fn status_of_errno(errno: i32) -> Option<u32> {
    Some(match errno {
        libc::EOPNOTSUPP => 1,
        libc::ETIMEDOUT => 2,
        libc::ENOSPC => 3,
        libc::ENOLINK => 4,
        libc::EREMOTEIO => 5,
        libc::EBADE => 6,
        libc::ENODATA => 7,
        libc::EILSEQ => 8,
        libc::ENOMEM => 9,
        libc::EIO => 10,
        libc::EREMCHG => 11,
        libc::EAGAIN => 12,
        libc::EBUSY => 13,
        libc::ETOOMANYREFS => 14,
        libc::EOVERFLOW => 15,
        libc::ENODEV => 16,
        libc::ETIME => 17,
        _ => return None,
    })
}

/// Name of a completion status: `blk_status_t` (include/linux/blk_types.h; stable
/// numbers since 4.13), or `0x100 | errno` from hooks that see the errno (classic
/// tracepoints; BTF and raw tracepoints up to 5.10), named as the status it maps from.
pub fn error_name(status: u32) -> String {
    let status = match status {
        s if s & 0x100 != 0 => match status_of_errno((s & 0xff) as i32) {
            Some(s) => s,
            None => return format!("errno_{}", s & 0xff),
        },
        s => s,
    };
    let name = match status {
        1 => "notsupp",
        2 => "timeout",
        3 => "nospc",
        4 => "transport",
        5 => "target",
        6 => "resv_conflict",
        7 => "medium",
        8 => "protection",
        9 => "resource",
        10 => "ioerr",
        11 => "dm_requeue",
        12 => "again",
        13 => "dev_resource",
        14 => "zone_open_resource",
        15 => "zone_active_resource",
        16 => "offline",
        17 => "duration_limit",
        s => return format!("status_{s}"),
    };
    name.to_owned()
}

/// Busy time up to `now` (kernel monotonic ns): the closed periods, plus the open one
/// while requests are in flight. A count the probe lost track of (negative, or absurdly
/// large) opens no period.
pub fn busy_until(d: &DeviceDepth, now: u64) -> u64 {
    let open = d.in_flight != 0 && d.in_flight < 1 << 32 && d.busy_since_ns != 0;
    d.busy_ns + if open { now.saturating_sub(d.busy_since_ns) } else { 0 }
}

pub struct BlockProbe {
    attached: Attached,
    /// Where sysfs lists the block devices whose series are created ahead of use.
    sys_root: PathBuf,
    latency: Option<PerCpuHash<BlockKey, BlockHistograms>>,
    /// Samples of series whose `latency` entry the kernel could not create.
    spill: Option<PerCpuHash<BlockKey, BlockHistograms>>,
    /// The `latency` series read last: only missing ones are created.
    known: BTreeSet<BlockKey>,
    depth: Option<HashMap<MapData, u32, DeviceDepth>>,
    errors: Option<HashMap<MapData, BlockErrorKey, u64>>,
    thresholds: OutlierThresholds,
    /// Releases requests whose completion the program never saw, once their device is
    /// idle; `None` with classic tracepoints (no request to ask).
    sweep: Option<sweep::Sweep>,
    /// The depth map as [`Probe::read`] found it, for [`Probe::read_counters`] in the
    /// same collection.
    depth_read: Option<DepthReading>,
    /// The devices [`Probe::read`] labelled, for [`Probe::read_counters`].
    devices: DeviceMemo,
}

/// Each device's labels and entity, looked up once per collection: a busy disk has a
/// dozen series, and telling whether sysfs still has it is a path walk.
#[derive(Default)]
struct DeviceMemo(std::collections::HashMap<u32, (Labels, EntityState)>);

type Labels = Vec<(&'static str, String)>;

impl DeviceMemo {
    fn get(
        &mut self,
        cx: &mut ReadContext<'_>,
        dev: u32,
    ) -> (Labels, EntityState) {
        self.0
            .entry(dev)
            .or_insert_with(|| {
                let labels = device_labels(cx, dev);
                let entity = device_entity(cx, dev, &labels);
                (labels, entity)
            })
            .clone()
    }
}

/// The depth map's entries and the monotonic clock just before they were read.
#[derive(Default)]
struct DepthReading {
    now: u64,
    entries: Vec<(u32, DeviceDepth)>,
}

fn depths(r: &DepthReading) -> Vec<(u32, u64, ExpHistogram)> {
    r.entries
        .iter()
        .map(|(dev, d)| (*dev, d.in_flight, ExpHistogram::from_windows([&d.depth])))
        .collect()
}

fn busy(r: &DepthReading) -> Vec<(u32, u64)> {
    r.entries
        .iter()
        .map(|(dev, d)| (*dev, busy_until(d, r.now)))
        .collect()
}

fn unrecorded(r: &DepthReading) -> Vec<(u32, u64, u64)> {
    r.entries
        .iter()
        .map(|(dev, d)| (*dev, d.completions_unseen, d.completions_unmatched))
        .collect()
}

/// Every (device, operation) series' histograms, in key order.
pub type BlockReadings = Vec<(BlockKey, BlockReading)>;

/// Cumulative histograms of one (device, operation) series as the kernel holds them.
#[derive(Clone, Debug, Default)]
pub struct BlockReading {
    pub queue: ExpHistogram,
    pub device: ExpHistogram,
    pub total: ExpHistogram,
    pub size: ExpHistogram,
}

impl BlockProbe {
    pub fn attach(
        ebpf: &mut Ebpf,
        btf: Option<&aya::Btf>,
        layouts: &BlockLayouts,
        only: Option<AttachKind>,
        sys_root: &Path,
        outliers: &OutliersConfig,
    ) -> Self {
        let attached = attach_first(ebpf, btf, &layouts.variants(only));
        let up = attached.kind.is_some();
        let mut take = |name| up.then(|| ebpf.take_map(name)).flatten();
        let mut per_cpu_hash = |name| {
            take(name).and_then(|m| {
                PerCpuHash::new(m, name)
                    .inspect_err(|e| tracing::warn!("{e}"))
                    .ok()
            })
        };
        let latency = per_cpu_hash(names::MAP_BLOCK_LATENCY);
        let spill = per_cpu_hash(names::MAP_BLOCK_LATENCY_SPILL);
        let depth = take(names::MAP_BLOCK_DEPTH).and_then(|m| HashMap::try_from(m).ok());
        let errors = take(names::MAP_BLOCK_ERRORS).and_then(|m| HashMap::try_from(m).ok());
        let sweep = match attached.kind {
            Some(kind) if kind != AttachKind::Tracepoint => match layouts
                .request
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|l| sweep::Sweep::load(ebpf, l))
            {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(
                        "block: in-flight counts of requests whose completion the kernel \
                         made without running the probe are released only when the \
                         request is issued again ({e})"
                    );
                    None
                }
            },
            _ => None,
        };
        let mut probe = Self {
            attached,
            sys_root: sys_root.to_path_buf(),
            latency,
            spill,
            known: BTreeSet::new(),
            depth,
            errors,
            thresholds: OutlierThresholds::new(outliers),
            sweep,
            depth_read: None,
            devices: DeviceMemo::default(),
        };
        probe.create_series();
        probe
    }

    /// Creates the read, write and flush series of every disk that has done I/O, from
    /// process context. The kernel's own insert runs in atomic context and fails while
    /// the BPF allocator refills its per-CPU caches, losing the first samples of a
    /// burst; done here, only devices that appear between two readings depend on it.
    fn create_series(&mut self) {
        let Some(latency) = &mut self.latency else {
            return;
        };
        let Ok(cpus) = aya::util::nr_cpus() else {
            return;
        };
        // Series that spilled: the kernel could not create them itself.
        let spilled: Vec<BlockKey> = self
            .spill
            .as_ref()
            .map(|m| m.map().keys().filter_map(Result::ok).collect())
            .unwrap_or_default();
        let known = &self.known;
        // A disk whose series all exist needs no look at its I/O counts.
        let busy = busy_disks(&self.sys_root, |dev| {
            [op::READ, op::WRITE, op::FLUSH]
                .iter()
                .all(|&op| known.contains(&BlockKey { dev, op }))
        })
        .into_iter()
        .flat_map(|dev| [op::READ, op::WRITE, op::FLUSH].map(|op| BlockKey { dev, op }))
        .collect::<Vec<_>>();
        let mut map = latency.map_mut();
        for key in busy.into_iter().chain(spilled) {
            // Known from the last reading, or there now (one lookup per series
            // copies its histograms on every CPU: only for the new ones).
            if self.known.contains(&key) || map.get(&key, 0).is_ok() {
                continue;
            }
            let zero = PerCpuValues::try_from(vec![BlockHistograms::ZERO; cpus]);
            if let Err(e) = zero.map(|z| map.insert(key, z, 0)) {
                tracing::debug!(key.dev, key.op, "cannot create a block series: {e}");
            }
        }
    }

    /// Whether the attached variant hooks scheduler insertion: only then are queue
    /// times (and totals beyond device time) measured.
    pub fn times_queues(&self) -> bool {
        self.attached.kind.is_some_and(hooks_insertion)
    }

    /// Cumulative histograms per (device number, operation) as the kernel holds them:
    /// the main map's entry and, for a series that spilled, its spill entry added.
    pub fn read_raw(&self) -> Result<BlockReadings, String> {
        self.read_raw_noting_series().map(|(readings, _)| readings)
    }

    /// [`Self::read_raw`], and the keys of the main map.
    fn read_raw_noting_series(
        &self,
    ) -> Result<(BlockReadings, BTreeSet<BlockKey>), String> {
        let mut out: BTreeMap<BlockKey, BlockReading> = BTreeMap::new();
        let mut known = BTreeSet::new();
        for (map, main) in [(&self.latency, true), (&self.spill, false)] {
            let Some(map) = map else { continue };
            map.for_each(|key, per_cpu| {
                if main {
                    known.insert(key);
                }
                let r = out.entry(key).or_default();
                r.queue.merge_owned(ExpHistogram::from_per_cpu(
                    per_cpu.iter().map(|h| &h.queue),
                ));
                r.device.merge_owned(ExpHistogram::from_per_cpu(
                    per_cpu.iter().map(|h| &h.device),
                ));
                r.total.merge_owned(ExpHistogram::from_per_cpu(
                    per_cpu.iter().map(|h| &h.total),
                ));
                r.size
                    .merge_owned(ExpHistogram::from_windows(per_cpu.iter().map(|h| &h.size)));
            })?;
        }
        Ok((out.into_iter().collect(), known))
    }

    /// Per device number: completions the kernel made that the probe could not record,
    /// (unseen, unmatched).
    pub fn read_unrecorded(&self) -> Result<Vec<(u32, u64, u64)>, String> {
        Ok(unrecorded(&self.read_depth_map(false)?))
    }

    /// Per device number: the requests in flight now, as the probe counts them, and
    /// the cumulative queue depth histogram.
    pub fn read_depths(&self) -> Result<Vec<(u32, u64, ExpHistogram)>, String> {
        Ok(depths(&self.read_depth_map(true)?))
    }

    /// The depth map, read once, after releasing the requests of idle devices whose
    /// completion the program never saw (with `sweep`; without, nothing is written: a
    /// hand-over reads copies of the maps, whose in-flight counts are not the live
    /// ones). Its entries hold the depth histograms, busy times and unrecorded
    /// completions alike: one reading per interval serves all three families.
    fn read_depth_map(&self, sweep: bool) -> Result<DepthReading, String> {
        let Some(map) = &self.depth else {
            return Ok(DepthReading::default());
        };
        let read = || -> Result<DepthReading, String> {
            // The clock before the entries: a busy period is never extended past them.
            let now = crate::util::time::clock_nanos(libc::CLOCK_MONOTONIC) as u64;
            let entries = map
                .iter()
                .map(|e| e.map_err(|e| format!("reading {}: {e}", names::MAP_BLOCK_DEPTH)))
                .collect::<Result<_, _>>()?;
            Ok(DepthReading { now, entries })
        };
        let reading = read()?;
        let Some(sweeper) = self.sweep.as_ref().filter(|_| sweep) else {
            return Ok(reading);
        };
        // A count below 2^32 is a count; above, a decrement racing an eviction.
        let mut swept = false;
        for (dev, d) in &reading.entries {
            if d.in_flight != 0 && d.in_flight < 1 << 32 {
                swept = true;
                if let Err(e) = sweeper.run_if_idle(&self.sys_root, *dev) {
                    tracing::warn!("block: {e}");
                }
            }
        }
        // Read again when the sweep may have written to the map.
        if swept { read() } else { Ok(reading) }
    }

    /// Per device number: nanoseconds with at least one request in flight since the
    /// probe attached, the current busy period included up to now (the probe's own
    /// `io_ticks`, at nanosecond rather than jiffy resolution).
    pub fn read_busy(&self) -> Result<Vec<(u32, u64)>, String> {
        Ok(busy(&self.read_depth_map(false)?))
    }

    /// Requests in flight now, per device number, as the probe counts them.
    pub fn in_flight(&self) -> Vec<(u32, u64)> {
        self.read_depths()
            .unwrap_or_default()
            .into_iter()
            .map(|(dev, n, _)| (dev, n))
            .collect()
    }
}

impl Probe for BlockProbe {
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
        if !cx.snapshot {
            self.create_series();
        }
        let queues = self.times_queues();
        let (readings, known) = self.read_raw_noting_series()?;
        self.known = known;
        let mut devices = DeviceMemo::default();
        for (key, r) in readings {
            let (device, entity) = devices.get(cx, key.dev);
            let labels = |op: u32| {
                let mut l = device.clone();
                l.push(("op", op_name(op).to_owned()));
                l
            };
            let mut push = |family, hist| {
                out.push(Reading {
                    key: SeriesKey::new(family, labels(key.op)),
                    hist,
                    entity: Some(entity),
                })
            };
            push(FAMILY_DEVICE, r.device);
            if queues {
                push(FAMILY_QUEUE, r.queue);
                push(FAMILY, r.total);
            }
            if !r.size.is_empty() {
                push(FAMILY_SIZE, r.size);
            }
        }
        let depth_read = self.read_depth_map(!cx.snapshot)?;
        for (dev, _, hist) in depths(&depth_read) {
            let (device, entity) = devices.get(cx, dev);
            out.push(Reading {
                key: SeriesKey::new(FAMILY_DEPTH, device),
                hist,
                entity: Some(entity),
            });
        }
        self.depth_read = Some(depth_read);
        self.devices = devices;
        for (cgroup, op, hist) in sparse::family(cx.sparse, family::BLOCK_CGROUP) {
            let (name, alive) = match cx.attribution.io_cgroup_lookup(cgroup) {
                Some(name) => (name, true),
                None => (cx.attribution.io_cgroup_name(cgroup), false),
            };
            out.push(Reading {
                key: SeriesKey::new(
                    FAMILY_CGROUP,
                    [("cgroup", name), ("op", op_name(op).to_owned())],
                ),
                hist: hist.clone(),
                entity: Some(EntityState::new(Entity::IoCgroup(cgroup), 1, alive)),
            });
        }
        Ok(())
    }

    fn on_interval(&mut self, interval: &mut Interval<'_>) {
        self.thresholds.update(interval);
    }

    fn read_counters(
        &mut self,
        cx: &mut ReadContext<'_>,
        out: &mut Vec<(SeriesKey, u64)>,
    ) -> Result<(), String> {
        let depth_read = match self.depth_read.take() {
            Some(r) => r,
            None => self.read_depth_map(false)?,
        };
        let mut devices = std::mem::take(&mut self.devices);
        for (dev, busy_ns) in busy(&depth_read) {
            out.push((SeriesKey::new(FAMILY_BUSY, devices.get(cx, dev).0), busy_ns));
        }
        for (dev, unseen, unmatched) in unrecorded(&depth_read) {
            for (cause, n) in [("unseen", unseen), ("unmatched", unmatched)] {
                let mut labels = devices.get(cx, dev).0;
                labels.push(("cause", cause.to_owned()));
                out.push((SeriesKey::new(FAMILY_UNRECORDED, labels), n));
            }
        }
        let Some(map) = &self.errors else {
            return Ok(());
        };
        for entry in map.iter() {
            let (key, n) =
                entry.map_err(|e| format!("reading {}: {e}", names::MAP_BLOCK_ERRORS))?;
            let mut labels = devices.get(cx, key.dev).0;
            labels.push(("op", op_name(key.op).to_owned()));
            labels.push(("error", error_name(key.status)));
            out.push((SeriesKey::new(FAMILY_ERRORS, labels), n));
        }
        Ok(())
    }

    fn forget(&mut self, ended: &[Entity]) {
        let gone: Vec<u32> = ended
            .iter()
            .filter_map(|e| match e {
                Entity::Device(dev) => Some(*dev),
                _ => None,
            })
            .collect();
        if gone.is_empty() {
            return;
        }
        self.known.retain(|k| !gone.contains(&k.dev));
        for map in [&mut self.latency, &mut self.spill].into_iter().flatten() {
            let mut map = map.map_mut();
            let keys: Vec<BlockKey> = map
                .keys()
                .filter_map(Result::ok)
                .filter(|k| gone.contains(&k.dev))
                .collect();
            for key in keys {
                let _ = map.remove(&key);
            }
        }
        if let Some(map) = &mut self.depth {
            for dev in &gone {
                let _ = map.remove(dev);
            }
        }
        if let Some(map) = &mut self.errors {
            let keys: Vec<BlockErrorKey> = map
                .keys()
                .filter_map(Result::ok)
                .filter(|k| gone.contains(&k.dev))
                .collect();
            for key in keys {
                let _ = map.remove(&key);
            }
        }
    }
}

/// Device numbers (kernel encoding) of the whole disks in `<sys_root>/block` that have
/// completed any I/O since boot, leaving out those `skip` says need no look.
fn busy_disks(sys_root: &Path, skip: impl Fn(u32) -> bool) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(sys_root.join("block")) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let path = e.path();
            let number = std::fs::read_to_string(path.join("dev")).ok()?;
            let dev = agent_common::dev::parse(number.trim())?;
            if skip(dev) {
                return None;
            }
            let stat = std::fs::read_to_string(path.join("stat")).ok()?;
            let mut f = stat
                .split_whitespace()
                .map(|v| v.parse::<u64>().unwrap_or(0));
            let reads = f.next()?;
            let writes = f.nth(3)?;
            (reads + writes != 0).then_some(dev)
        })
        .collect()
}

/// A device as an entity: its labels are all of `labels`, and it lives while sysfs
/// knows it.
fn device_entity(cx: &ReadContext<'_>, dev: u32, labels: &[(&'static str, String)]) -> EntityState {
    EntityState::new(
        Entity::Device(dev),
        labels.len(),
        cx.attribution.devices.is_present(dev),
    )
}

/// `device`, `dev` and the identity labels (type, model, Ceph OSD, RBD image) of a
/// device number.
fn device_labels(cx: &mut ReadContext<'_>, dev: u32) -> Vec<(&'static str, String)> {
    let d = cx.attribution.devices.lookup(dev);
    let mut labels = vec![("device", d.name.clone()), ("dev", d.number.clone())];
    labels.extend(d.labels());
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `blk_errors[]` as the kernel lists it (block/blk-core.c): status, errno.
    const BLK_ERRORS: [(u32, i32); 17] = [
        (1, libc::EOPNOTSUPP),
        (2, libc::ETIMEDOUT),
        (3, libc::ENOSPC),
        (4, libc::ENOLINK),
        (5, libc::EREMOTEIO),
        (6, libc::EBADE),
        (7, libc::ENODATA),
        (8, libc::EILSEQ),
        (9, libc::ENOMEM),
        (10, libc::EIO),
        (11, libc::EREMCHG),
        (12, libc::EAGAIN),
        (13, libc::EBUSY),
        (14, libc::ETOOMANYREFS),
        (15, libc::EOVERFLOW),
        (16, libc::ENODEV),
        (17, libc::ETIME),
    ];

    #[test]
    fn an_errno_is_named_as_the_status_it_came_from() {
        for (status, errno) in BLK_ERRORS {
            let from_errno = error_name(0x100 | errno as u32);
            assert_eq!(from_errno, error_name(status), "errno {errno}");
            assert!(!from_errno.starts_with("status_"), "{from_errno}");
        }
        assert_eq!(error_name(0x100 | libc::EIO as u32), "ioerr");
        assert_eq!(error_name(10), "ioerr");
        assert_eq!(error_name(0x100 | libc::EOPNOTSUPP as u32), "notsupp");
    }

    #[test]
    fn no_two_errnos_share_a_status_and_others_keep_their_number() {
        let mut seen = std::collections::HashSet::new();
        for errno in 1..256 {
            if let Some(status) = status_of_errno(errno) {
                assert!(seen.insert(status), "status {status} from two errnos");
            }
        }
        assert_eq!(seen.len(), BLK_ERRORS.len());
        assert_eq!(error_name(0x100 | libc::EPERM as u32), "errno_1");
        assert_eq!(error_name(200), "status_200");
    }
}
