//! Block I/O latency: issue → completion of each request, per device and operation.
//!
//! Hooks (checked against Linux 6.1 – 6.18):
//! - `block_rq_issue(struct request *rq)`, fired by `blk_mq_start_request()` when the
//!   driver takes the request;
//! - `block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes)`,
//!   fired by `blk_update_request()` and `blk_complete_request()`.
//!
//! Five program variants share one body, tried in this order: BTF tracepoints (cheapest
//! dispatch), raw tracepoints (no BTF needed to attach), classic tracepoints (keyed by
//! device and sector because the record carries no request pointer), fentry and kprobe
//! on the functions that fire those tracepoints.
//!
//! Where the issue time comes from, cheapest first:
//! 1. The kernel's own: when a queue collects I/O statistics (writeback throttling turns
//!    that on for most disks), `blk_mq_start_request()` stamps `rq->io_start_time_ns`
//!    right after `block_rq_issue` and sets `RQF_STATS`. The issue program then does
//!    nothing but check the queue flag, and the completion reads the stamp. Reading
//!    the clock (~55 ns in a VM) is the largest cost of an issue, so this halves it.
//! 2. Ours: issue writes its clock into a direct-mapped array slot chosen by hashing
//!    the request pointer; completion reads and clears it. Array lookups are inlined by
//!    the verifier, so there is no hashing helper and no delete.
//!
//! A completion that finds neither (in flight before attach, or evicted from the
//! table) is counted, never turned into a latency.

use agent_common::{
    block::{
        BlockKey, INFLIGHT_SLOTS, InflightSlot, MQ_RQ_IDLE, OutlierLayout, REQ_OP_MASK,
        RequestLayout, TracepointLayout, inflight_slot, op_from_req_op, op_from_rwbs,
    },
    counters,
    hist::Histogram,
    names::BLOCK_LATENCY_MAX_SERIES,
    outlier::{OutlierEvent, kind},
};
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, fentry, kprobe, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, PerCpuHashMap},
    programs::{
        BtfTracePointContext, FEntryContext, ProbeContext, RawTracePointContext, TracePointContext,
    },
};

use crate::shared::{
    DirectRead, KernelRead, ProbeRead, count, default_threshold, emit_outlier, maybe_outlier,
    record,
};

/// Latency histograms per (device, operation). Not preallocated: a series costs
/// memory on every CPU, so only devices that do I/O should pay for it.
#[map(name = "BLOCK_LATENCY")]
static BLOCK_LATENCY: PerCpuHashMap<BlockKey, Histogram> =
    PerCpuHashMap::with_max_entries(BLOCK_LATENCY_MAX_SERIES, BPF_F_NO_PREALLOC);

#[map(name = "BLOCK_INFLIGHT")]
static BLOCK_INFLIGHT: Array<InflightSlot> = Array::with_max_entries(INFLIGHT_SLOTS, 0);

/// Field offsets and flag values resolved by the agent from the running kernel's BTF
/// before load. Read-only, so the verifier treats them as constants.
#[unsafe(no_mangle)]
static REQUEST_LAYOUT: RequestLayout = RequestLayout::UNRESOLVED;

/// Offsets for outlier context, resolved from BTF; disabled when outliers are off.
#[unsafe(no_mangle)]
static OUTLIER_LAYOUT: OutlierLayout = OutlierLayout::UNRESOLVED;

/// Outlier threshold (ns) per device, pushed by the agent each interval.
#[map(name = "BLOCK_THRESHOLDS")]
static BLOCK_THRESHOLDS: HashMap<u32, u64> = HashMap::with_max_entries(1024, 0);

/// Record offsets parsed by the agent from the tracepoints' tracefs `format` files.
#[unsafe(no_mangle)]
static TP_ISSUE_LAYOUT: TracepointLayout = TracepointLayout::UNRESOLVED;
#[unsafe(no_mangle)]
static TP_COMPLETE_LAYOUT: TracepointLayout = TracepointLayout::UNRESOLVED;

#[inline(always)]
fn layout() -> RequestLayout {
    unsafe { core::ptr::read_volatile(&REQUEST_LAYOUT) }
}

/// Whole-disk device number (`MKDEV(disk->major, disk->first_minor)`, the device the
/// block tracepoints report) and operation class of a request.
#[inline(always)]
fn request_dev_op<R: KernelRead>(rq: u64, l: &RequestLayout) -> Option<(u32, u32)> {
    let cmd_flags: u32 = R::read(rq, l.rq_cmd_flags)?;
    let q: u64 = R::read(rq, l.rq_q)?;
    let disk: u64 = R::read(q, l.q_disk)?;
    let dev = if disk == 0 {
        0
    } else {
        let major: u32 = R::read(disk, l.disk_major)?;
        let minor: u32 = R::read(disk, l.disk_first_minor)?;
        (major << 20) | (minor & 0xf_ffff)
    };
    Some((dev, op_from_req_op(cmd_flags)))
}

/// Whether `blk_mq_start_request()` is about to stamp this request itself: the queue
/// collects statistics and the request is not a driver passthrough.
#[inline(always)]
fn kernel_will_stamp<R: KernelRead>(rq: u64, l: &RequestLayout) -> bool {
    if l.kernel_stamps == 0 {
        return false;
    }
    let (Some(q), Some(cmd_flags)) = (
        R::read::<u64>(rq, l.rq_q),
        R::read::<u32>(rq, l.rq_cmd_flags),
    ) else {
        return false;
    };
    let op = cmd_flags & REQ_OP_MASK;
    if op == l.req_op_drv_in || op == l.req_op_drv_out {
        return false;
    }
    R::read::<u64>(q, l.q_queue_flags).is_some_and(|f| f & (1 << l.queue_flag_stats) != 0)
}

/// The kernel's issue stamp, if it set one for this request.
#[inline(always)]
fn kernel_stamp<R: KernelRead>(rq: u64, l: &RequestLayout) -> Option<u64> {
    if l.kernel_stamps == 0 {
        return None;
    }
    let flags: u32 = R::read(rq, l.rq_rq_flags)?;
    if flags & l.rqf_stats == 0 {
        return None;
    }
    R::read::<u64>(rq, l.rq_io_start_time_ns).filter(|&t| t != 0)
}

/// What the issue side left for the completion: its timestamp (0 when the kernel
/// stamps the request) and who dispatched it.
struct Issued {
    key: BlockKey,
    issued_ns: u64,
    pid_tgid: u64,
}

#[inline(always)]
fn on_issue(index: u32, id: u64, dev: u32, op: u32, issued_ns: u64, pid_tgid: u64) {
    let Some(slot) = BLOCK_INFLIGHT.get_ptr_mut(index) else {
        return;
    };
    let slot = unsafe { &mut *slot };
    // The same request issued again (a requeue) simply restarts its clock.
    if slot.id != 0 && (slot.id != id || slot.dev != dev) {
        count(counters::BLOCK_SLOT_COLLISION);
    }
    slot.issued_ns = issued_ns;
    slot.dev = dev;
    slot.op = op;
    slot.pid_tgid = pid_tgid;
    slot.id = id;
}

/// Takes the issue record of a request out of the table. `dev` is `None` when the id
/// alone identifies the request (a request pointer).
#[inline(always)]
fn take_issued(index: u32, id: u64, dev: Option<u32>) -> Option<Issued> {
    let slot = BLOCK_INFLIGHT.get_ptr_mut(index)?;
    let slot = unsafe { &mut *slot };
    if slot.id != id || dev.is_some_and(|d| d != slot.dev) {
        return None;
    }
    let issued = Issued {
        key: BlockKey {
            dev: slot.dev,
            op: slot.op,
        },
        issued_ns: slot.issued_ns,
        pid_tgid: slot.pid_tgid,
    };
    // Clear both: an empty slot must never match a later completion (sector 0 is a
    // valid id for classic tracepoints).
    slot.id = 0;
    slot.issued_ns = 0;
    Some(issued)
}

#[inline(always)]
fn record_latency(key: &BlockKey, start: u64, now: u64) {
    if now < start {
        count(counters::BLOCK_UNMATCHED);
    } else if !record(&BLOCK_LATENCY, key, now - start) {
        count(counters::BLOCK_SERIES_FULL);
    }
}

/// Issue of a request known by pointer; `id` is that pointer as a number.
#[inline(always)]
fn issue_request<R: KernelRead>(rq: u64, id: u64) {
    let l = layout();
    let outliers = outlier_layout().enabled != 0;
    if kernel_will_stamp::<R>(rq, &l) {
        // The kernel times it; only who dispatched it is worth keeping, for outliers.
        if outliers {
            let pid_tgid = bpf_get_current_pid_tgid();
            on_issue(inflight_slot(id, 0), id, 0, 0, 0, pid_tgid);
        }
        return;
    }
    if let Some((dev, op)) = request_dev_op::<R>(rq, &l) {
        let pid_tgid = if outliers {
            bpf_get_current_pid_tgid()
        } else {
            0
        };
        let now = unsafe { bpf_ktime_get_ns() };
        // Found by pointer alone: completion does not read the device again.
        on_issue(inflight_slot(id, 0), id, dev, op, now, pid_tgid);
    }
}

/// Completion of a request known by pointer, for `nr_bytes` of it.
#[inline(always)]
fn complete_request<R: KernelRead>(rq: u64, id: u64, nr_bytes: u32) {
    let l = layout();
    let left = R::read::<u32>(rq, l.rq_data_len);
    // A request completed in parts fires once per part; like the kernel's own
    // accounting, count it once, when its last bytes complete.
    if left.is_some_and(|left| nr_bytes < left) {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let stamp = kernel_stamp::<R>(rq, &l);
    // With the kernel's stamp and outliers off, the issue side left nothing in the
    // table: skip reading a slot that is most likely not in cache.
    let issued = if stamp.is_none() || outlier_layout().enabled != 0 {
        take_issued(inflight_slot(id, 0), id, None)
    } else {
        None
    };
    let (key, start, pid_tgid) = if let Some(stamp) = stamp {
        let Some((dev, op)) = request_dev_op::<R>(rq, &l) else {
            return;
        };
        let pid_tgid = issued.map_or(0, |i| i.pid_tgid);
        (BlockKey { dev, op }, stamp, pid_tgid)
    } else {
        match issued.filter(|i| i.issued_ns != 0) {
            Some(i) => (i.key, i.issued_ns, i.pid_tgid),
            None => {
                complete_unissued::<R>(rq, &l, now);
                return;
            }
        }
    };
    record_latency(&key, start, now);
    if maybe_outlier(now.saturating_sub(start)) {
        block_outlier::<R>(rq, &key, start, now, pid_tgid, left.unwrap_or(nr_bytes));
    }
}

#[inline(always)]
fn outlier_layout() -> OutlierLayout {
    unsafe { core::ptr::read_volatile(&OUTLIER_LAYOUT) }
}

/// Sends a request slower than its device's threshold to the agent, with its context.
#[inline(always)]
fn block_outlier<R: KernelRead>(
    rq: u64,
    key: &BlockKey,
    start: u64,
    end: u64,
    pid_tgid: u64,
    bytes: u32,
) {
    let threshold = unsafe { BLOCK_THRESHOLDS.get(key.dev) }
        .copied()
        .unwrap_or_else(default_threshold);
    if threshold == 0 || end - start < threshold {
        return;
    }
    let o = outlier_layout();
    let (sector, cgroup) = if o.enabled != 0 {
        let sector = R::read::<u64>(rq, o.rq_sector).unwrap_or(0);
        let cgroup = R::read::<u64>(rq, o.rq_bio)
            .filter(|&bio| bio != 0)
            .and_then(|bio| R::read::<u64>(bio, o.bio_blkg))
            .filter(|&blkg| blkg != 0)
            .and_then(|blkg| R::read::<u64>(blkg, o.blkg_blkcg))
            .and_then(|blkcg| R::read::<u64>(blkcg, o.blkcg_cgroup))
            .and_then(|cgroup| R::read::<u64>(cgroup, o.cgroup_kn))
            .and_then(|kn| R::read::<u64>(kn, o.kn_id))
            .unwrap_or(0);
        (sector, cgroup)
    } else {
        (0, 0)
    };
    emit_outlier(&OutlierEvent {
        kind: kind::BLOCK,
        dev: key.dev,
        op: key.op,
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        bytes,
        start_ns: start,
        end_ns: end,
        sector,
        cgroup,
    });
}

/// A completion with no issue record. Requests that never reached the driver — a
/// data-less pre-flush write finished by the flush machinery, a request failed before
/// dispatch — are still accounted by the kernel as completed, so they are measured
/// from allocation (`start_time_ns`), their whole life. Requests that did reach the
/// driver (in flight before attach, or evicted from the table) are only counted.
#[inline(always)]
fn complete_unissued<R: KernelRead>(rq: u64, l: &RequestLayout, now: u64) {
    let state: u32 = R::read(rq, l.rq_state).unwrap_or(u32::MAX);
    let started: u64 = R::read(rq, l.rq_start_time_ns).unwrap_or(0);
    if state != MQ_RQ_IDLE || started == 0 {
        count(counters::BLOCK_UNMATCHED);
        return;
    }
    match request_dev_op::<R>(rq, l) {
        Some((dev, op)) => record_latency(&BlockKey { dev, op }, started, now),
        None => count(counters::BLOCK_UNMATCHED),
    }
}

/// A BTF-typed request pointer as a plain number the verifier lets us hash. It forbids
/// arithmetic on trusted pointers except pointer − pointer, which (with CAP_PERFMON)
/// yields a scalar; subtracting the address of a map keeps the identity unique and
/// stable for the program's lifetime. black_box stops LLVM from folding the subtraction
/// into the hash multiply.
#[inline(always)]
fn btf_request_id(rq: *const u8) -> u64 {
    let base = &BLOCK_INFLIGHT as *const _ as *const u8;
    core::hint::black_box((rq as u64).wrapping_sub(base as u64))
}

#[btf_tracepoint(function = "block_rq_issue")]
pub fn block_rq_issue_btf(ctx: BtfTracePointContext) -> i32 {
    let rq: *const u8 = ctx.arg(0);
    issue_request::<DirectRead>(rq as u64, btf_request_id(rq));
    0
}

#[btf_tracepoint(function = "block_rq_complete")]
pub fn block_rq_complete_btf(ctx: BtfTracePointContext) -> i32 {
    let rq: *const u8 = ctx.arg(0);
    let nr_bytes: u32 = ctx.arg(2);
    complete_request::<DirectRead>(rq as u64, btf_request_id(rq), nr_bytes);
    0
}

#[raw_tracepoint(tracepoint = "block_rq_issue")]
pub fn block_rq_issue_raw(ctx: RawTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(0);
    issue_request::<ProbeRead>(rq, rq);
    0
}

#[raw_tracepoint(tracepoint = "block_rq_complete")]
pub fn block_rq_complete_raw(ctx: RawTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(0);
    let nr_bytes: u64 = ctx.arg(2);
    complete_request::<ProbeRead>(rq, rq, nr_bytes as u32);
    0
}

/// Device, start sector and operation from a classic `block_rq_*` record.
#[inline(always)]
fn tracepoint_fields(ctx: &TracePointContext, l: &TracepointLayout) -> Option<(u32, u64, u32)> {
    unsafe {
        let dev: u32 = ctx.read_at(l.dev as usize).ok()?;
        let sector: u64 = ctx.read_at(l.sector as usize).ok()?;
        let rwbs: [u8; 2] = ctx.read_at(l.rwbs as usize).ok()?;
        Some((dev, sector, op_from_rwbs(rwbs[0], rwbs[1])))
    }
}

#[tracepoint(category = "block", name = "block_rq_issue")]
pub fn block_rq_issue_tp(ctx: TracePointContext) -> i32 {
    let l = unsafe { core::ptr::read_volatile(&TP_ISSUE_LAYOUT) };
    if let Some((dev, sector, op)) = tracepoint_fields(&ctx, &l) {
        // Sector 0 with a device is still a valid identity (flushes all use it: two
        // concurrent flushes on one device share a slot, as in every sector-keyed tool).
        let now = unsafe { bpf_ktime_get_ns() };
        on_issue(inflight_slot(sector, dev), sector, dev, op, now, 0);
    }
    0
}

#[tracepoint(category = "block", name = "block_rq_complete")]
pub fn block_rq_complete_tp(ctx: TracePointContext) -> i32 {
    let l = unsafe { core::ptr::read_volatile(&TP_COMPLETE_LAYOUT) };
    if let Some((dev, sector, _)) = tracepoint_fields(&ctx, &l) {
        let now = unsafe { bpf_ktime_get_ns() };
        match take_issued(inflight_slot(sector, dev), sector, Some(dev))
            .filter(|i| i.issued_ns != 0)
        {
            Some(i) => record_latency(&i.key, i.issued_ns, now),
            // No request pointer here to tell a never-issued request from one in
            // flight before attach: both are only counted.
            None => count(counters::BLOCK_UNMATCHED),
        }
    }
    0
}

// Function hooks, for kernels whose block tracepoints cannot be used. Completion is
// hooked at `blk_update_request()`, which fires `block_rq_complete` itself; batched
// completions (`blk_complete_request()`, static and usually inlined) are missed and
// show up as unmatched requests.

#[fentry(function = "blk_mq_start_request")]
pub fn block_rq_issue_fentry(ctx: FEntryContext) -> i32 {
    let rq: *const u8 = ctx.arg(0);
    issue_request::<DirectRead>(rq as u64, btf_request_id(rq));
    0
}

#[fentry(function = "blk_update_request")]
pub fn block_rq_complete_fentry(ctx: FEntryContext) -> i32 {
    let rq: *const u8 = ctx.arg(0);
    let nr_bytes: u32 = ctx.arg(2);
    complete_request::<DirectRead>(rq as u64, btf_request_id(rq), nr_bytes);
    0
}

#[kprobe]
pub fn block_rq_issue_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(rq) = ctx.arg::<u64>(0) {
        issue_request::<ProbeRead>(rq, rq);
    }
    0
}

#[kprobe]
pub fn block_rq_complete_kprobe(ctx: ProbeContext) -> u32 {
    if let (Some(rq), Some(nr_bytes)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(2)) {
        complete_request::<ProbeRead>(rq, rq, nr_bytes as u32);
    }
    0
}
