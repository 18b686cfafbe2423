//! Block I/O latency (kernel side: `agent-ebpf/src/block.rs`): per device and operation,
//! from `block_rq_issue` to `block_rq_complete`.

use std::path::Path;

use agent_common::{
    block::{BlockKey, OutlierLayout, RequestLayout, TracepointLayout, op},
    hist::Histogram,
    names,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuHashMap},
};

use super::{
    Probe, ReadContext, Reading,
    attach::{AttachKind, Attached, Hook, ProgramSpec, Variant, attach_first},
};
use crate::{
    aggregate::{ExpHistogram, SeriesKey},
    kernel::{btf::Btf, tracefs},
};

pub const NAME: &str = "block";
pub const FAMILY: &str = "block.io.latency";

/// Kernel layouts the programs need, resolved before the object is loaded. A layout
/// that cannot be resolved rules out the variants that need it, not the probe.
pub struct BlockLayouts {
    request: Result<RequestLayout, String>,
    tracepoints: Result<(TracepointLayout, TracepointLayout), String>,
    /// Context of outlier requests; `enabled == 0` turns outliers off in the kernel.
    outlier: OutlierLayout,
}

impl BlockLayouts {
    pub fn resolve(
        btf: Option<&Btf>,
        tracefs: Option<&Path>,
        kernel_timestamps: bool,
        outliers: bool,
    ) -> Self {
        let request = match btf {
            Some(btf) => request_layout(btf, kernel_timestamps).map_err(|e| e.to_string()),
            None => Err("kernel BTF (/sys/kernel/btf/vmlinux) is missing".into()),
        };
        let tracepoints = match tracefs {
            Some(root) => tracepoint_layouts(root).map_err(|e| e.to_string()),
            None => Err("tracefs is not mounted".into()),
        };
        let outlier = match (btf, outliers) {
            (Some(btf), true) => outlier_layout(btf).unwrap_or_else(|e| {
                tracing::info!("block outliers carry no sector or cgroup here: {e}");
                OutlierLayout::UNRESOLVED
            }),
            _ => OutlierLayout::UNRESOLVED,
        };
        Self {
            request,
            tracepoints,
            outlier,
        }
    }

    /// Sets the globals of the kernel programs; unresolved layouts stay zero and their
    /// variants are never loaded.
    pub fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
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
    pub fn variants(&self, only: Option<AttachKind>) -> Vec<Variant> {
        let request_missing = self.request.as_ref().err().cloned();
        let tp_missing = self.tracepoints.as_ref().err().cloned();
        let spec = |program, hook| ProgramSpec { program, hook };
        let all = [
            Variant {
                kind: AttachKind::TpBtf,
                programs: vec![
                    spec(
                        names::PROG_BLOCK_COMPLETE_BTF,
                        Hook::TpBtf("block_rq_complete"),
                    ),
                    spec(names::PROG_BLOCK_ISSUE_BTF, Hook::TpBtf("block_rq_issue")),
                ],
                unavailable: request_missing.clone(),
            },
            Variant {
                kind: AttachKind::RawTracepoint,
                programs: vec![
                    spec(
                        names::PROG_BLOCK_COMPLETE_RAW,
                        Hook::Raw("block_rq_complete"),
                    ),
                    spec(names::PROG_BLOCK_ISSUE_RAW, Hook::Raw("block_rq_issue")),
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
) -> Result<RequestLayout, crate::kernel::btf::BtfError> {
    let mut layout = RequestLayout {
        rq_q: btf.member_offset("request", "q")?,
        rq_cmd_flags: btf.member_offset("request", "cmd_flags")?,
        rq_data_len: btf.member_offset("request", "__data_len")?,
        rq_state: btf.member_offset("request", "state")?,
        rq_start_time_ns: btf.member_offset("request", "start_time_ns")?,
        q_disk: btf.member_offset("request_queue", "disk")?,
        disk_major: btf.member_offset("gendisk", "major")?,
        disk_first_minor: btf.member_offset("gendisk", "first_minor")?,
        ..RequestLayout::default()
    };
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

/// Where an outlier's sector and submitting cgroup are (`rq->bio->bi_blkg->blkcg`
/// needs CONFIG_BLK_CGROUP).
fn outlier_layout(btf: &Btf) -> Result<OutlierLayout, crate::kernel::btf::BtfError> {
    Ok(OutlierLayout {
        enabled: 1,
        rq_sector: btf.member_offset("request", "__sector")?,
        rq_bio: btf.member_offset("request", "bio")?,
        bio_blkg: btf.member_offset("bio", "bi_blkg")?,
        blkg_blkcg: btf.member_offset("blkcg_gq", "blkcg")?,
        blkcg_cgroup: btf.member_offset("blkcg", "css.cgroup")?,
        cgroup_kn: btf.member_offset("cgroup", "kn")?,
        kn_id: btf.member_offset("kernfs_node", "id")?,
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
            _pad: 0,
        })
    };
    Ok((layout("block_rq_issue")?, layout("block_rq_complete")?))
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

pub struct BlockProbe {
    attached: Attached,
    latency: Option<PerCpuHashMap<MapData, BlockKey, Histogram>>,
}

impl BlockProbe {
    pub fn attach(
        ebpf: &mut Ebpf,
        btf: Option<&aya::Btf>,
        layouts: &BlockLayouts,
        only: Option<AttachKind>,
    ) -> Self {
        let attached = attach_first(ebpf, btf, &layouts.variants(only));
        let latency = attached
            .kind
            .and_then(|_| ebpf.take_map(names::MAP_BLOCK_LATENCY))
            .and_then(|m| PerCpuHashMap::try_from(m).ok());
        Self { attached, latency }
    }

    /// Cumulative histogram per (device number, operation) as the kernel holds it.
    pub fn read_raw(&self) -> Result<Vec<(BlockKey, ExpHistogram)>, String> {
        let Some(map) = &self.latency else {
            return Ok(Vec::new());
        };
        map.iter()
            .map(|entry| {
                entry
                    .map(|(key, per_cpu)| (key, ExpHistogram::from_per_cpu(per_cpu.iter())))
                    .map_err(|e| format!("reading {}: {e}", names::MAP_BLOCK_LATENCY))
            })
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

    fn read(&mut self, cx: &mut ReadContext<'_>, out: &mut Vec<Reading>) -> Result<(), String> {
        for (key, hist) in self.read_raw()? {
            let dev = cx.attribution.devices.lookup(key.dev);
            out.push(Reading {
                key: SeriesKey::new(
                    FAMILY,
                    [
                        ("device", dev.name.clone()),
                        ("dev", dev.number.clone()),
                        ("op", op_name(key.op).to_owned()),
                    ],
                ),
                hist,
            });
        }
        Ok(())
    }
}
