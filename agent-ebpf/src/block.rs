//! Block I/O: where each request's time goes (queue, device, total), how deep the
//! device queues run, request sizes, errors, and the cgroups that submit the I/O.
//!
//! Hooks (checked against Linux 6.1 – 6.18):
//! - `block_rq_insert(struct request *rq)`, fired when a request enters the I/O
//!   scheduler or a dispatch list (`blk_mq_insert_request()` and friends); requests the
//!   block layer issues directly never fire it;
//! - `block_rq_issue(struct request *rq)`, fired by `blk_mq_start_request()` when the
//!   driver takes the request;
//! - `block_rq_requeue(struct request *rq)`, fired when the driver gives a request back
//!   (it is inserted and issued again later);
//! - `block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes)`,
//!   fired by `blk_update_request()` and `blk_complete_request()`.
//!
//! Program variants share one body, tried in this order: BTF tracepoints (cheapest
//! dispatch), raw tracepoints (no BTF needed to attach), classic tracepoints (keyed by
//! device and sector because the record carries no request pointer), fentry and kprobe
//! on the functions that fire issue and completion. Only the first two hook insertion
//! and requeue; the others measure device time and depth alone.
//!
//! Where the issue time comes from, cheapest first:
//! 1. The kernel's own: when a queue collects I/O statistics (writeback throttling turns
//!    that on for most disks), `blk_mq_start_request()` stamps `rq->io_start_time_ns`
//!    right after `block_rq_issue` and sets `RQF_STATS`; completion reads the stamp.
//!    Reading the clock (~55 ns in a VM) is the largest cost of an issue.
//! 2. Ours: issue writes its clock into the request's slot of a direct-mapped array
//!    (chosen by hashing the request pointer); completion reads and clears it. Array
//!    lookups are inlined by the verifier: no hashing helper, no delete.
//!
//! In-flight accounting is exact: a device's count goes up once per request at issue,
//! and down once, decided by the request's slot. The request's own events (completion,
//! requeue, its next issue or insertion) are ordered by the block layer; a third party
//! (another request's issue or completion, the agent's sweep) may release a request
//! whose completion the kernel made without running the program only under the slot's
//! release lock, so two CPUs never release one request (see [`release_lost`]). An
//! issued request is never evicted by another: a request finding both ways of its
//! bucket issued is not tracked. Requests in flight at attach never went up, so their
//! completions, which find no slot, never go down.

use agent_common::{
    block::{
        BLOCK_DEPTH_MAX_DEVICES, BLOCK_ERROR_MAX_SERIES, BlockErrorKey, BlockHistograms, BlockKey,
        DeviceDepth, DeviceReconcile, INFLIGHT_SLOTS, InflightSlot, MQ_RQ_IDLE, OutlierLayout,
        RECENT_ISSUES, REQ_OP_MASK, RequestLayout, SLOT_LOCKS, SWEEP_SLOTS, TracepointLayout,
        inflight_slot, op, op_from_req_op, op_from_rwbs, slot_state,
    },
    counters, dev,
    names::BLOCK_LATENCY_MAX_SERIES,
    names::BLOCK_LATENCY_SPILL_SERIES,
    outlier::{OutlierEvent, kind},
    sparse::family,
};
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, fentry, kprobe, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, PerCpuHashMap},
    programs::{
        BtfTracePointContext, FEntryContext, ProbeContext, RawTracePointContext, TracePointContext,
    },
};

use crate::shared::{
    DirectRead, KernelRead, ProbeRead, add_sample, add_window, add_window_shared, atomic_add,
    count, default_threshold, emit_outlier, get_or_insert, global, maybe_outlier, now_ns,
    record_sparse,
};

/// Queue, device and total latency histograms per (device, operation). Not
/// preallocated: a series costs memory on every CPU, so only devices that do I/O
/// should pay for it.
#[map(name = "BLOCK_LATENCY")]
static BLOCK_LATENCY: PerCpuHashMap<BlockKey, BlockHistograms> =
    PerCpuHashMap::with_max_entries(BLOCK_LATENCY_MAX_SERIES, BPF_F_NO_PREALLOC);

/// Preallocated: where a series' samples go while its `BLOCK_LATENCY` entry cannot be
/// created (per-CPU memory for a new entry is allocated without sleeping and can
/// fail, typically for a new device's first requests). The agent reads both maps and
/// creates the missing entries from userspace, where allocation may sleep.
#[map(name = "BLOCK_LATENCY_SPILL")]
static BLOCK_LATENCY_SPILL: PerCpuHashMap<BlockKey, BlockHistograms> =
    PerCpuHashMap::with_max_entries(BLOCK_LATENCY_SPILL_SERIES, 0);

#[map(name = "BLOCK_INFLIGHT")]
static BLOCK_INFLIGHT: Array<InflightSlot> = Array::with_max_entries(INFLIGHT_SLOTS, 0);

/// Release locks of in-flight slots, held by slot index while a request is released
/// by anyone but its own completion. An insert that fails when the key exists is
/// atomic on every kernel (under the bucket's lock), where BPF's compare-and-swap
/// needs 5.12. Preallocated: taking a lock never allocates.
#[map(name = "BLOCK_SLOT_LOCKS")]
static BLOCK_SLOT_LOCKS: HashMap<u32, u32> = HashMap::with_max_entries(SLOT_LOCKS, 0);

/// Requests in flight per device and the depth at each issue: one lookup per event.
#[map(name = "BLOCK_DEPTH")]
static BLOCK_DEPTH: HashMap<u32, DeviceDepth> =
    HashMap::with_max_entries(BLOCK_DEPTH_MAX_DEVICES, 0);

/// The agent's comparison of each device's counts with the kernel's (written by the
/// agent alone; here so that it is pinned with the counts it compares).
#[map(name = "BLOCK_RECONCILE")]
static BLOCK_RECONCILE: HashMap<u32, DeviceReconcile> =
    HashMap::with_max_entries(BLOCK_DEPTH_MAX_DEVICES, 0);

const OP_COUNT: usize = op::COUNT;

/// Template for a new device (1 KiB: too large for the BPF stack).
static EMPTY_DEPTH: DeviceDepth = DeviceDepth::ZERO;

/// Completions with an error per (device, operation, status); only errors pay for it.
#[map(name = "BLOCK_ERRORS")]
static BLOCK_ERRORS: HashMap<BlockErrorKey, u64> =
    HashMap::with_max_entries(BLOCK_ERROR_MAX_SERIES + UPGRADE_TEST_EXTRA, 0);

/// One more error series in the upgrade test's build: another map layout, as an
/// upgrade that resized a map would have (see the `test-upgrade-layout` feature).
const UPGRADE_TEST_EXTRA: u32 = if cfg!(feature = "test-upgrade-layout") {
    1
} else {
    0
};

/// Field offsets and flag values resolved by the agent from the running kernel's BTF
/// before load. Read-only, so the verifier treats them as constants.
#[unsafe(no_mangle)]
static REQUEST_LAYOUT: RequestLayout = RequestLayout::UNRESOLVED;

/// Whether outliers are on; set by the agent before load.
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

/// Template for a new series (13 KiB: too large for the BPF stack).
static EMPTY_BLOCK: BlockHistograms = BlockHistograms::ZERO;

#[inline(always)]
fn layout() -> RequestLayout {
    global(&REQUEST_LAYOUT)
}

#[inline(always)]
fn outliers_on() -> bool {
    global(&OUTLIER_LAYOUT).enabled != 0
}

/// Whole-disk device number (`MKDEV(disk->major, disk->first_minor)`, the device the
/// block tracepoints report) and operation class of a request.
#[inline(always)]
fn request_dev_op<R: KernelRead>(rq: u64, l: &RequestLayout) -> Option<(u32, u32)> {
    let cmd_flags: u32 = R::read(rq, l.rq_cmd_flags)?;
    let disk: u64 = if l.rq_disk != 0 {
        R::read(rq, l.rq_disk)?
    } else {
        let q: u64 = R::read(rq, l.rq_q)?;
        R::read(q, l.q_disk)?
    };
    let dev = if disk == 0 {
        0
    } else {
        let major: u32 = R::read(disk, l.disk_major)?;
        let minor: u32 = R::read(disk, l.disk_first_minor)?;
        // The kernel's MKDEV; a minor read wrongly cannot spill into the major.
        (major << dev::MINOR_BITS) | (minor & dev::MINOR_MASK)
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

// ---------------------------------------------------------------------------------------
// In-flight counts per device.
// ---------------------------------------------------------------------------------------

/// The device's in-flight entry, created empty when it has none yet; `None` only when
/// the map is full.
#[inline(always)]
fn device_depth(dev: u32) -> Option<*mut DeviceDepth> {
    if let Some(p) = BLOCK_DEPTH.get_ptr_mut(dev) {
        return Some(p);
    }
    // Losing a race with another CPU's insert is fine: the lookup finds it.
    // By reference on purpose: by value would copy 1 KiB onto the BPF stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let _ = BLOCK_DEPTH.insert(dev, &EMPTY_DEPTH, BPF_NOEXIST as u64);
    BLOCK_DEPTH.get_ptr_mut(dev)
}

/// One more request in flight on `dev`, and the count including it (and any other
/// CPU's concurrent change) recorded as that issue's queue depth. `started_ns`: when
/// the kernel started the request (0 unknown), where a busy period it opens begins;
/// `slot`: its index in the in-flight table.
#[inline(always)]
fn depth_up(dev: u32, started_ns: u64, slot: u32) {
    let Some(d) = device_depth(dev) else {
        return;
    };
    // SAFETY: `d` points at the device's value in a preallocated hash map, which stays
    // valid while the program runs (the agent never deletes devices). Other CPUs use
    // the same value at the same time: they change it only with XADD (`in_flight`,
    // `add_window_shared`), so no plain write races.
    let d = unsafe { &mut *d };
    // SAFETY: a reference, so valid and aligned; an aligned word, never torn.
    let before = unsafe { core::ptr::read_volatile(&d.in_flight) };
    if (1..=RELEASE_CHECK_MAX).contains(&before) {
        // Counted busy while a new request arrives: a request whose completion was
        // not seen would keep the period open across the idle time before this one.
        release_freed(d, dev);
    }
    atomic_add(&mut d.in_flight, 1);
    remember_issue(d, slot);
    // SAFETY: a reference, so valid and aligned; volatile, so read after the add.
    if unsafe { core::ptr::read_volatile(&d.in_flight) } == 1 {
        // A busy period begins, as the kernel's io_ticks counts it: when the request
        // started (before plugging and the scheduler, where it can wait long under CPU
        // contention), but not before the last completion, which ended the previous
        // period. Racing with a completion that ends another on a different CPU can
        // misplace a few hundred nanoseconds, never more.
        let now = now_ns();
        // SAFETY: as above; an aligned word, never torn.
        let done = unsafe { core::ptr::read_volatile(&d.last_done_ns) };
        let mut since = if started_ns != 0 && started_ns < now {
            started_ns
        } else {
            now
        };
        if since < done && done <= now {
            since = done;
        }
        d.busy_since_ns = since;
    }
    record_depth(d);
}

/// Records the current count as the depth of an issue.
#[inline(always)]
fn record_depth(d: &mut DeviceDepth) {
    // SAFETY: a reference, so valid and aligned; volatile, so the count is read after
    // the add (other CPUs' concurrent adds may be in it).
    let depth = unsafe { core::ptr::read_volatile(&d.in_flight) };
    // A transiently negative count (a decrement racing an eviction) is no depth.
    if depth != 0 && depth < 1 << 32 {
        add_window_shared(&mut d.depth, depth);
    }
}

/// Counts a completion of class `op` the device's series could not record, on the
/// device itself (so the agent can set it against the kernel's own count, per
/// operation) and in the global drops. A device the probe has no entry for yet gets
/// one: a completion in flight since before attach is its first event.
#[inline(always)]
fn device_drop(dev: u32, op: u32, counter: u32) {
    count(counter);
    let Some(d) = device_depth(dev) else {
        return;
    };
    // SAFETY: a live value of a preallocated map (see `depth_up`); its counters are
    // only changed by atomic adds, so the shared reference races with nothing.
    let d = unsafe { &mut *d };
    let per_op = if counter == counters::BLOCK_COMPLETION_UNSEEN {
        &mut d.completions_unseen
    } else {
        &mut d.completions_unmatched
    };
    let i = if (op as usize) < OP_COUNT {
        op as usize
    } else {
        OP_COUNT - 1
    };
    if let Some(field) = per_op.get_mut(i) {
        atomic_add(field, 1);
    }
}

/// One request fewer in flight on `dev` (it was counted by [`depth_up`]): it completed
/// (or was requeued) at `now`, as the program saw.
#[inline(always)]
fn depth_down(dev: u32, now: u64) {
    if let Some(d) = BLOCK_DEPTH.get_ptr_mut(dev) {
        // SAFETY: a live value of a preallocated map (see `depth_up`); an aligned word,
        // never torn; racing CPUs leave one of their own completion times.
        unsafe { core::ptr::write_volatile(&mut (*d).last_done_ns, now) };
        let left = leave(d, |_| now);
        if (1..=RELEASE_CHECK_MAX).contains(&left) {
            // Requests still counted after a completion: those whose completion was
            // not seen end their period now, not when found later.
            release_freed(d, dev);
        }
    }
}

/// Requests counted in flight up to which an issue or a completion looks for freed
/// ones among the device's last issues (few: a device that keeps more in flight is
/// busy anyway, and the look costs a few reads of requests).
const RELEASE_CHECK_MAX: u64 = 2;

/// Notes `slot` as the device's latest issue, in turn over [`RECENT_ISSUES`] entries.
/// Unlocked: two CPUs issuing at once may write one entry, and one of the two issues
/// is then not looked at early (the sweep or its next issue still release it).
#[inline(always)]
fn remember_issue(d: &mut DeviceDepth, slot: u32) {
    // SAFETY: an aligned word of a live map value (see `depth_up`), never torn.
    let next = unsafe { core::ptr::read_volatile(&d.recent_next) };
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(&mut d.recent_next, next.wrapping_add(1)) };
    if let Some(entry) = d.recent.get_mut((next as usize) & (RECENT_ISSUES - 1)) {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(entry, slot.wrapping_add(1)) };
    }
}

/// Whether the kernel has freed request `rq` (its reference count is 0 and it is
/// idle): a request still counted in flight then had its completion skipped. See
/// `block_sweep` for why the reference count, not the state alone.
#[inline(always)]
fn freed(rq: u64, l: &RequestLayout) -> bool {
    ProbeRead::read::<u32>(rq, l.rq_ref) == Some(0)
        && ProbeRead::read::<u32>(rq, l.rq_state) == Some(MQ_RQ_IDLE)
}

/// Releases, among `dev`'s last issues, the requests still `ISSUED` that the kernel
/// has freed: each is counted as an unseen completion and leaves the in-flight count,
/// ending at the last completion seen or its own issue a busy period it alone kept
/// open. The request in hand is never among them (it holds its reference).
#[inline(always)]
fn release_freed(d: *mut DeviceDepth, dev: u32) {
    let l = layout();
    if l.rq_ref == 0 {
        return;
    }
    for k in 0..RECENT_ISSUES {
        // SAFETY: an aligned word of a live map value (see `depth_up`), never torn.
        let entry = unsafe { (*d).recent.get(k).map(|e| core::ptr::read_volatile(e)) };
        let Some(entry) = entry.filter(|&e| e != 0) else {
            continue;
        };
        release_if_freed(entry - 1, Some(dev), &l);
    }
}

/// Releases the request in slot `index` (of `dev`, if given) if it is still `ISSUED`
/// and the kernel has freed it. Returns whether it did.
#[inline(always)]
fn release_if_freed(index: u32, dev: Option<u32>, l: &RequestLayout) -> bool {
    let Some(slot) = slot_at(index) else {
        return false;
    };
    let seen = Occupancy::of(slot);
    if seen.state != slot_state::ISSUED || dev.is_some_and(|d| seen.dev != d) || seen.rq == 0 {
        return false;
    }
    // Freed after `seen` was read: a completion the program ran for that occupancy
    // emptied the slot before the kernel freed the request, so [`release_lost`]'s
    // second look, which comes after this one, finds it gone.
    if !freed(seen.rq, l) {
        return false;
    }
    release_lost(index, &seen)
}

/// What identifies one occupancy of a slot: a new issue changes `generation`.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Occupancy {
    state: u32,
    generation: u32,
    dev: u32,
    id: u64,
    rq: u64,
}

impl Occupancy {
    #[inline(always)]
    fn of(slot: &InflightSlot) -> Self {
        // SAFETY: aligned words of a live map value (see `slot_at`), never torn;
        // volatile, so each look reads the slot again.
        unsafe {
            Self {
                state: core::ptr::read_volatile(&slot.state),
                generation: core::ptr::read_volatile(&slot.generation),
                dev: core::ptr::read_volatile(&slot.dev),
                id: core::ptr::read_volatile(&slot.id),
                rq: core::ptr::read_volatile(&slot.rq),
            }
        }
    }
}

/// Tries for a slot's release lock this many times: its holder keeps it for a few
/// reads and writes.
const LOCK_TRIES: u32 = 4;

/// Releases occupancy `seen` of slot `index`, a request whose completion the kernel
/// made without running the program (the caller knows it: the request was freed
/// since `seen` was read, or is being issued or inserted again). Under the slot's
/// release lock, and only if the slot still holds that very occupancy: of two CPUs
/// releasing one request (two issues each finding it freed, or its own next issue and
/// the sweep), the second finds it gone. Its own completion takes no lock: it never
/// runs once the request is freed or issued again. Counted as an unseen completion,
/// and the request leaves its device's in-flight count. Returns whether it released
/// it (false: gone already, or the lock stayed busy; its holder then decides).
#[inline(always)]
fn release_lost(index: u32, seen: &Occupancy) -> bool {
    let mut locked = false;
    for _ in 0..LOCK_TRIES {
        if BLOCK_SLOT_LOCKS
            .insert(index, 0, BPF_NOEXIST as u64)
            .is_ok()
        {
            locked = true;
            break;
        }
    }
    if !locked {
        return false;
    }
    let mut released = false;
    if let Some(slot) = slot_at(index)
        && Occupancy::of(slot) == *seen
    {
        let (issued_ns, op) = (slot.issued_ns, slot.op);
        // The identity first: an issue that finds the slot empty may take it at once.
        slot.id = 0;
        slot.state = slot_state::EMPTY;
        depth_release(seen.dev, issued_ns);
        device_drop(seen.dev, op, counters::BLOCK_COMPLETION_UNSEEN);
        released = true;
    }
    let _ = BLOCK_SLOT_LOCKS.remove(index);
    released
}

/// One request fewer in flight on `dev` whose completion the program never saw (it was
/// issued at `issued_ns`): if that empties the device, the busy period ends at the last
/// completion seen or at this request's issue, whichever is later. Ending it now would
/// count as busy all the idle time since the lost completion (up to a whole interval,
/// when the sweep releases it); ending it there misses at most the lost request's own
/// device time.
#[inline(always)]
fn depth_release(dev: u32, issued_ns: u64) {
    if let Some(d) = BLOCK_DEPTH.get_ptr_mut(dev) {
        let _ = leave(d, |d| {
            // SAFETY: a live value (see `depth_up`); an aligned word, never torn.
            let done = unsafe { core::ptr::read_volatile(&(*d).last_done_ns) };
            let end = if done > issued_ns { done } else { issued_ns };
            let now = now_ns();
            if end > now { now } else { end }
        });
    }
}

/// Takes one request off `d`'s count; when none is left the busy period ends at
/// `end(d)` (the kernel's io_ticks, in nanoseconds).
#[inline(always)]
fn leave(d: *mut DeviceDepth, end: impl FnOnce(*mut DeviceDepth) -> u64) -> u64 {
    // SAFETY: a live value of a preallocated map (see `depth_up`); only the field's
    // address is taken, for an atomic add.
    atomic_add(unsafe { &mut (*d).in_flight }, u64::MAX);
    // SAFETY: the same live value; the fields are aligned words (never torn), read
    // after the add; the busy time itself only grows by atomic adds.
    let (left, since) = unsafe {
        (
            core::ptr::read_volatile(&(*d).in_flight),
            core::ptr::read_volatile(&(*d).busy_since_ns),
        )
    };
    if left == 0 {
        let end = end(d);
        if since != 0 && end > since {
            // SAFETY: as above, an atomic add to a field of the live value.
            atomic_add(unsafe { &mut (*d).busy_ns }, end - since);
        }
    }
    left
}

// ---------------------------------------------------------------------------------------
// The in-flight table.
// ---------------------------------------------------------------------------------------

/// The slot at `index`, shared by every CPU.
///
/// The table's hot path is deliberately not locked (raw and classic tracepoint and
/// kprobe programs cannot take a `bpf_spin_lock`, and 5.10 has no compare-and-swap):
/// one request's own events are ordered by the block layer (it is issued before it
/// completes, and completes before it is freed and issued again), so they do not race
/// with each other; releases by anyone else take the slot's release lock
/// ([`release_lost`]), and an issued slot is never taken by another request. Two
/// requests claiming one empty slot at the same instant (a hash collision within the
/// few hundred nanoseconds the programs run) can still leave it mixing their fields:
/// both went up, one goes down (an in-flight count one too high, a sample with a
/// wrong time).
#[inline(always)]
fn slot_at(index: u32) -> Option<&'static mut InflightSlot> {
    BLOCK_INFLIGHT.get_ptr_mut(index).map(|p| {
        // SAFETY: `p` is an element of a preallocated array map, valid for as long as
        // the program runs. The reference is not exclusive across CPUs: the race this
        // allows is the one stated above, on plain aligned words, with no memory
        // safety at stake (BPF has no allocation to corrupt and the verifier bounds
        // every access to the element).
        unsafe { &mut *p }
    })
}

/// Whether a slot holds request `id`. A request pointer is an identity on its own; a
/// start sector (classic tracepoints) only together with its device.
#[inline(always)]
fn holds(slot: &InflightSlot, id: u64, dev: Option<u32>) -> bool {
    slot.id == id && dev.is_none_or(|d| slot.dev == d)
}

/// Whether a slot is in use by request `id`.
#[inline(always)]
fn in_use_by(slot: &InflightSlot, id: u64, dev: Option<u32>) -> bool {
    slot.state != slot_state::EMPTY && holds(slot, id, dev)
}

/// The slot in use by request `id` in its two-way bucket (`index` and its neighbour).
/// Two ways: a pair of busy requests whose pointers hash alike (a birthday collision
/// among a few hundred tags) would otherwise keep evicting each other.
#[inline(always)]
fn find(index: u32, id: u64, dev: Option<u32>) -> Option<&'static mut InflightSlot> {
    let a = slot_at(index & !1)?;
    if in_use_by(a, id, dev) {
        return Some(a);
    }
    let b = slot_at(index | 1)?;
    in_use_by(b, id, dev).then_some(b)
}

/// The slot for request `id`: the one it uses, else an empty one, else one holding a
/// request not yet issued (a waiting or stale insertion). `None` when both hold other
/// requests, issued: evicting one would race with its completion on another CPU, and
/// both would take its count down.
#[inline(always)]
fn slot_for(index: u32, id: u64, dev: Option<u32>) -> Option<(u32, &'static mut InflightSlot)> {
    let (ia, ib) = (index & !1, index | 1);
    let a = slot_at(ia)?;
    let b = slot_at(ib)?;
    if in_use_by(a, id, dev) {
        return Some((ia, a));
    }
    if in_use_by(b, id, dev) {
        return Some((ib, b));
    }
    for state in [slot_state::EMPTY, slot_state::INSERTED] {
        if a.state == state {
            return Some((ia, a));
        }
        if b.state == state {
            return Some((ib, b));
        }
    }
    None
}

/// Makes room in a slot ([`slot_for`]: empty or inserted) for request `id`: another
/// request's insertion time is lost.
#[inline(always)]
fn claim(slot: &mut InflightSlot, id: u64, dev: Option<u32>) {
    if slot.state == slot_state::INSERTED && !holds(slot, id, dev) {
        count(counters::BLOCK_INSERT_EVICTED);
    }
}

/// A request (known by pointer) enters the scheduler: remember when, for its queue time.
#[inline(always)]
fn on_insert(index: u32, id: u64) {
    let Some((at, slot)) = slot_for(index, id, None) else {
        // Both ways hold issued requests: its queue time is lost.
        count(counters::BLOCK_INSERT_EVICTED);
        return;
    };
    if slot.state == slot_state::ISSUED && slot.id == id {
        // Inserted again with neither completion nor requeue seen: as at a second
        // issue, the kernel completed it without running the completion program (a
        // requeue is far rarer than a completion). It is no longer in flight. Not
        // released (another CPU is releasing it): its issue tries again.
        if !release_lost(at, &Occupancy::of(slot)) {
            return;
        }
    } else {
        claim(slot, id, None);
    }
    slot.inserted_ns = now_ns();
    slot.issued_ns = 0;
    slot.state = slot_state::INSERTED;
    slot.id = id;
}

/// What the issue side tells [`on_issue`].
struct Issue {
    dev: u32,
    op: u32,
    /// 0 when the kernel stamps the request itself.
    issued_ns: u64,
    pid_tgid: u64,
    /// Bytes of the request; `None` where the hook cannot see them.
    bytes: Option<u32>,
    /// Allocation time of the request (0 unknown): an insertion stamp older than this
    /// belongs to an earlier request at the same address.
    allocated_ns: u64,
    /// The request's address; 0 where the hook has none.
    rq: u64,
}

/// A request reaches the driver: count it in flight, record the depth, keep what its
/// completion needs. `by_device`: the id is a sector, unique only per device.
#[inline(always)]
fn on_issue(index: u32, id: u64, i: &Issue, by_device: bool) {
    let dev = by_device.then_some(i.dev);
    let Some((at, slot)) = slot_for(index, id, dev) else {
        untracked(i.dev);
        return;
    };
    let same = holds(slot, id, dev);
    let mut inserted_ns = 0;
    if same && slot.state == slot_state::ISSUED {
        // Issued again with neither completion nor requeue seen: the kernel completed
        // the previous issue without running the completion program (it skips BPF
        // programs in some contexts without counting a recursion miss). The lost
        // completion is counted on its device, and the previous issue leaves the count
        // (ending a busy period it alone kept open) before this one enters it. If
        // another CPU holds the slot's release lock, this issue is not tracked.
        if !release_lost(at, &Occupancy::of(slot)) && Occupancy::of(slot).state != slot_state::EMPTY
        {
            untracked(i.dev);
            return;
        }
    } else if same && slot.state == slot_state::INSERTED && slot.inserted_ns >= i.allocated_ns {
        inserted_ns = slot.inserted_ns;
    } else {
        claim(slot, id, dev);
    }
    depth_up(i.dev, i.allocated_ns, at);
    slot.inserted_ns = inserted_ns;
    // The kernel's stamp comes from the submitter's plug-cached clock when it
    // dispatches from inside a plug, which can be older than the insertion: a queued
    // request needs an exact issue time.
    slot.issued_ns = if inserted_ns != 0 && i.issued_ns == 0 {
        now_ns()
    } else {
        i.issued_ns
    };
    slot.pid_tgid = i.pid_tgid;
    slot.dev = i.dev;
    slot.op = i.op;
    slot.bytes = i.bytes.unwrap_or(u32::MAX);
    slot.rq = i.rq;
    slot.generation = slot.generation.wrapping_add(1);
    slot.state = slot_state::ISSUED;
    slot.id = id;
}

/// An issue the table has no slot for (both ways of its bucket hold other requests in
/// flight): counted as a collision, and its depth recorded without counting it in
/// flight, since its completion will find no slot to take it out again.
#[inline(always)]
fn untracked(dev: u32) {
    count(counters::BLOCK_SLOT_COLLISION);
    if let Some(d) = BLOCK_DEPTH.get_ptr_mut(dev) {
        // SAFETY: a live value of a preallocated map (see `depth_up`); an aligned word,
        // never torn.
        let depth = unsafe { core::ptr::read_volatile(&(*d).in_flight) }.wrapping_add(1);
        if depth < 1 << 32 {
            // SAFETY: as above; the window is only changed by atomic adds.
            add_window_shared(unsafe { &mut (*d).depth }, depth);
        }
    }
}

/// The driver gave the request (known by pointer) back: it leaves the in-flight count
/// until reissued.
#[inline(always)]
fn on_requeue(index: u32, id: u64) {
    let Some(slot) = find(index, id, None) else {
        return;
    };
    if slot.state == slot_state::ISSUED {
        depth_down(slot.dev, now_ns());
        slot.state = slot_state::EMPTY;
        slot.id = 0;
    }
}

/// What the table knew of a completing request.
#[derive(Clone, Copy)]
struct Issued {
    /// Whether the request was in the table, issued; all else is zero when not.
    found: bool,
    key: BlockKey,
    inserted_ns: u64,
    issued_ns: u64,
    pid_tgid: u64,
    bytes: u32,
}

/// No issued request: every field defined. An `Option<Issued>` leaves its payload
/// undefined when `None`, and LLVM hoists loads of it above the check; 5.15's verifier
/// (unlike 6.3 and later for privileged programs) rejects such a read of uninitialised
/// stack, and the whole tp_btf block probe with it.
const NOT_ISSUED: Issued = Issued {
    found: false,
    key: BlockKey { dev: 0, op: 0 },
    inserted_ns: 0,
    issued_ns: 0,
    pid_tgid: 0,
    bytes: 0,
};

/// Takes a completing request out of the table; `found` when it was issued (and
/// counted in flight, which this undoes).
#[inline(always)]
fn take_issued(index: u32, id: u64, dev: Option<u32>, now: u64) -> Issued {
    let Some(slot) = find(index, id, dev) else {
        return NOT_ISSUED;
    };
    let issued = slot.state == slot_state::ISSUED;
    let out = Issued {
        found: true,
        key: BlockKey {
            dev: slot.dev,
            op: slot.op,
        },
        inserted_ns: slot.inserted_ns,
        issued_ns: slot.issued_ns,
        pid_tgid: slot.pid_tgid,
        bytes: slot.bytes,
    };
    // Clear the identity too: an empty slot must never match a later completion
    // (sector 0 is a valid id for classic tracepoints).
    slot.state = slot_state::EMPTY;
    slot.id = 0;
    if !issued {
        return NOT_ISSUED;
    }
    depth_down(out.key.dev, now);
    out
}

// ---------------------------------------------------------------------------------------
// The sweep: completions the kernel made without running the completion program.
// ---------------------------------------------------------------------------------------

/// Releases the slots of `dev` in `[first, first + SWEEP_SLOTS)` still `ISSUED` for a
/// request the kernel has freed since, as the agent finds them when the kernel says
/// the device is idle. Such a slot is a completion the program never saw: its request
/// was not issued again since (that would have released it), so nothing else ever
/// would. Arguments: first slot, device. A request is freed when its reference count
/// (`rq->ref`, 1 from allocation) is 0: `blk_mq_free_request()` and batched completion
/// set `MQ_RQ_IDLE` and then drop the last reference. A request being issued holds its
/// reference from allocation on, so it is never taken for freed, however long it
/// takes between `block_rq_issue` and being marked in flight; nor is one allocated
/// again and waiting (plug cache, scheduler), which its next issue or insertion
/// releases. Returns how many were released.
#[raw_tracepoint(tracepoint = "block_rq_complete")]
pub fn block_sweep(ctx: RawTracePointContext) -> i32 {
    let first: u64 = ctx.arg(0);
    let dev: u64 = ctx.arg(1);
    let l = layout();
    if l.rq_ref == 0 {
        return -1;
    }
    // No program needs the agent's own map; a lookup keeps it in the object.
    if BLOCK_RECONCILE.get_ptr(dev as u32).is_none() {
        core::hint::black_box(0);
    }
    let mut released = 0;
    for k in 0..SWEEP_SLOTS {
        // The busy period a released request alone kept open ends at the last
        // completion seen or its issue (0 when unknown: then the last completion).
        if release_if_freed((first as u32).wrapping_add(k), Some(dev as u32), &l) {
            released += 1;
        }
    }
    released
}

// ---------------------------------------------------------------------------------------
// Recording.
// ---------------------------------------------------------------------------------------

/// One completed request: its three latencies, its size and, when the request itself
/// can be read, its cgroup's latency.
#[inline(always)]
fn record_request<R: KernelRead>(
    request: Option<(u64, &RequestLayout)>,
    key: &BlockKey,
    queue: u64,
    device: u64,
    bytes: Option<u32>,
) {
    let total = queue + device;
    let series = get_or_insert(&BLOCK_LATENCY, key, &EMPTY_BLOCK)
        .or_else(|| get_or_insert(&BLOCK_LATENCY_SPILL, key, &EMPTY_BLOCK));
    match series {
        Some(h) => {
            add_sample(&mut h.queue, queue);
            add_sample(&mut h.device, device);
            add_sample(&mut h.total, total);
            if let Some(bytes) = bytes {
                add_window(&mut h.size, bytes as u64);
            }
        }
        None => count(counters::BLOCK_SERIES_FULL),
    }
    if let Some((rq, l)) = request
        && let Some(cgroup) = submitter_cgroup::<R>(rq, l)
    {
        record_sparse(family::BLOCK_CGROUP, cgroup, key.op, total);
    }
}

/// The cgroup that submitted the request's I/O, from its first bio's blkg.
#[inline(always)]
fn submitter_cgroup<R: KernelRead>(rq: u64, l: &RequestLayout) -> Option<u64> {
    if l.cgroup_io == 0 {
        return None;
    }
    let bio = R::read::<u64>(rq, l.rq_bio).filter(|&b| b != 0)?;
    let blkg = R::read::<u64>(bio, l.bio_blkg).filter(|&b| b != 0)?;
    let blkcg = R::read::<u64>(blkg, l.blkg_blkcg)?;
    let cgroup = R::read::<u64>(blkcg, l.blkcg_cgroup)?;
    let kn = R::read::<u64>(cgroup, l.cgroup_kn)?;
    R::read::<u64>(kn, l.kn_id).filter(|&id| id != 0)
}

/// Counts a completion with an error. Rare, so a shared hash map is fine.
#[inline(always)]
fn count_error(dev: u32, op: u32, status: u32) {
    let key = BlockErrorKey {
        dev,
        op,
        status,
        _pad: 0,
    };
    if let Some(p) = BLOCK_ERRORS.get_ptr_mut(key) {
        atomic_add(p, 1);
    } else if BLOCK_ERRORS.insert(key, 1, BPF_NOEXIST as u64).is_err()
        && let Some(p) = BLOCK_ERRORS.get_ptr_mut(key)
    {
        atomic_add(p, 1);
    }
}

// ---------------------------------------------------------------------------------------
// Request-pointer hooks (tp_btf, raw_tp, fentry, kprobe).
// ---------------------------------------------------------------------------------------

/// Issue of a request known by pointer; `id` is that pointer as a number.
#[inline(always)]
fn issue_request<R: KernelRead>(rq: u64, id: u64) {
    let l = layout();
    let Some((dev, op)) = request_dev_op::<R>(rq, &l) else {
        return;
    };
    let issued_ns = if kernel_will_stamp::<R>(rq, &l) {
        0
    } else {
        now_ns()
    };
    let issue = Issue {
        dev,
        op,
        issued_ns,
        pid_tgid: if outliers_on() {
            bpf_get_current_pid_tgid()
        } else {
            0
        },
        bytes: R::read::<u32>(rq, l.rq_data_len),
        allocated_ns: R::read::<u64>(rq, l.rq_start_time_ns).unwrap_or(0),
        rq,
    };
    on_issue(inflight_slot(id, 0), id, &issue, false);
}

/// Completion of a request known by pointer, for `nr_bytes` of it.
#[inline(always)]
fn complete_request<R: KernelRead>(rq: u64, id: u64, status: u32, nr_bytes: u32) {
    let l = layout();
    let left = R::read::<u32>(rq, l.rq_data_len);
    // A request completed in parts fires once per part; like the kernel's own
    // accounting, count it once, when its last bytes complete.
    if left.is_some_and(|left| nr_bytes < left) {
        return;
    }
    let now = now_ns();
    let i = take_issued(inflight_slot(id, 0), id, None, now);
    if status != 0 {
        if i.found {
            count_error(i.key.dev, i.key.op, status);
        } else if let Some((dev, op)) = request_dev_op::<R>(rq, &l) {
            count_error(dev, op, status);
        }
    }
    if !i.found {
        complete_unissued::<R>(rq, &l, now, nr_bytes);
        return;
    }
    let issued = match i.issued_ns {
        0 => kernel_stamp::<R>(rq, &l).unwrap_or(0),
        ours => ours,
    };
    if issued == 0 || now < issued {
        device_drop(i.key.dev, i.key.op, counters::BLOCK_UNMATCHED);
        return;
    }
    let queue = if i.inserted_ns != 0 && issued >= i.inserted_ns {
        issued - i.inserted_ns
    } else {
        0
    };
    let bytes = (i.bytes != u32::MAX).then_some(i.bytes);
    record_request::<R>(Some((rq, &l)), &i.key, queue, now - issued, bytes);
    if maybe_outlier(now - issued) {
        block_outlier::<R>(
            rq,
            &l,
            &i.key,
            issued,
            now,
            i.pid_tgid,
            bytes.unwrap_or(nr_bytes),
        );
    }
}

/// A completion with no issue record. Requests that never reached the driver — a
/// data-less pre-flush write finished by the flush machinery, a request failed before
/// dispatch — are still accounted by the kernel as completed, so they are measured
/// from allocation (`start_time_ns`): all of it queue time, none device time. Requests
/// that did reach the driver (in flight before attach, or evicted from the table) are
/// only counted, except a write ended a second time by the flush machinery (below).
#[inline(always)]
fn complete_unissued<R: KernelRead>(rq: u64, l: &RequestLayout, now: u64, nr_bytes: u32) {
    let state: u32 = R::read(rq, l.rq_state).unwrap_or(u32::MAX);
    let started: u64 = R::read(rq, l.rq_start_time_ns).unwrap_or(0);
    let Some((dev, op)) = request_dev_op::<R>(rq, l) else {
        return;
    };
    // A write with data that needs a flush after it (FUA on a device without FUA, as
    // loop: O_SYNC and O_DSYNC direct writes) fires the completion twice: when its data
    // completes (recorded then: its slot was taken) and again, with nothing left, when
    // the flush machinery ends the whole sequence (`blk_flush_complete_seq()` →
    // `blk_mq_end_request()`), which is where the kernel counts it, once. Counted
    // unmatched, every such write was counted twice (found by the comparison with
    // the kernel's count: 2,000 of 2,000 fio `--sync=1` writes on loop).
    if state != MQ_RQ_IDLE
        && op == op::WRITE
        && nr_bytes == 0
        && R::read::<u32>(rq, l.rq_data_len) == Some(0)
    {
        return;
    }
    if state != MQ_RQ_IDLE || started == 0 || now < started {
        device_drop(dev, op, counters::BLOCK_UNMATCHED);
        return;
    }
    let bytes = R::read::<u32>(rq, l.rq_data_len);
    record_request::<R>(
        Some((rq, l)),
        &BlockKey { dev, op },
        now - started,
        0,
        bytes,
    );
}

/// Sends a request slower than its device's threshold to the agent, with its context.
#[inline(always)]
fn block_outlier<R: KernelRead>(
    rq: u64,
    l: &RequestLayout,
    key: &BlockKey,
    start: u64,
    end: u64,
    pid_tgid: u64,
    bytes: u32,
) {
    if !outliers_on() {
        return;
    }
    // SAFETY: the agent may replace the value meanwhile; it is copied out at once, and
    // a u64 load is never torn. The preallocated element stays valid while in use.
    let threshold = unsafe { BLOCK_THRESHOLDS.get(key.dev) }
        .copied()
        .unwrap_or_else(default_threshold);
    if threshold == 0 || end - start < threshold {
        return;
    }
    let sector = R::read::<u64>(rq, l.rq_sector).unwrap_or(0);
    let cgroup = submitter_cgroup::<R>(rq, l).unwrap_or(0);
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

#[btf_tracepoint(function = "block_rq_insert")]
pub fn block_rq_insert_btf(ctx: BtfTracePointContext) -> i32 {
    let rq: *const u8 = ctx.arg(0);
    let id = btf_request_id(rq);
    on_insert(inflight_slot(id, 0), id);
    0
}

#[btf_tracepoint(function = "block_rq_issue")]
pub fn block_rq_issue_btf(ctx: BtfTracePointContext) -> i32 {
    let rq: *const u8 = ctx.arg(0);
    issue_request::<DirectRead>(rq as u64, btf_request_id(rq));
    0
}

#[btf_tracepoint(function = "block_rq_requeue")]
pub fn block_rq_requeue_btf(ctx: BtfTracePointContext) -> i32 {
    let rq: *const u8 = ctx.arg(0);
    let id = btf_request_id(rq);
    on_requeue(inflight_slot(id, 0), id);
    0
}

#[btf_tracepoint(function = "block_rq_complete")]
pub fn block_rq_complete_btf(ctx: BtfTracePointContext) -> i32 {
    let rq: *const u8 = ctx.arg(0);
    // blk_status_t is a u8.
    let status: u64 = ctx.arg(1);
    let nr_bytes: u32 = ctx.arg(2);
    complete_request::<DirectRead>(
        rq as u64,
        btf_request_id(rq),
        (status & 0xff) as u32,
        nr_bytes,
    );
    0
}

// Kernels up to 5.10 pass `block_rq_complete` an int errno (`blk_status_to_errno()`),
// not the `blk_status_t`; 5.11 passes the status. These variants record it as the
// classic tracepoint does, `0x100 | errno`, which the agent names like the status it
// came from. Chosen by the agent from the type of the tracepoint's argument in BTF.

/// `0x100 | errno` from a negative errno; 0 stays 0 (success).
#[inline(always)]
fn errno_status(errno: i32) -> u32 {
    if errno == 0 {
        0
    } else {
        (errno.wrapping_neg() as u32 & 0xff) | 0x100
    }
}

#[btf_tracepoint(function = "block_rq_complete")]
pub fn block_rq_complete_btf_errno(ctx: BtfTracePointContext) -> i32 {
    let rq: *const u8 = ctx.arg(0);
    let errno: i32 = ctx.arg(1);
    let nr_bytes: u32 = ctx.arg(2);
    complete_request::<DirectRead>(rq as u64, btf_request_id(rq), errno_status(errno), nr_bytes);
    0
}

#[raw_tracepoint(tracepoint = "block_rq_complete")]
pub fn block_rq_complete_raw_errno(ctx: RawTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(0);
    let errno: u64 = ctx.arg(1);
    let nr_bytes: u64 = ctx.arg(2);
    complete_request::<ProbeRead>(rq, rq, errno_status(errno as i32), nr_bytes as u32);
    0
}

// Kernels up to 5.10 pass the queue first to the request tracepoints
// (`block_rq_insert/issue/requeue(struct request_queue *q, struct request *rq)`; 5.11
// dropped `q`). A tracing program may not read an argument the tracepoint does not
// have, so these are separate programs, chosen by the agent from the tracepoint's BTF.
// Checked on Debian's 5.10.0-46 under `cargo xtask vmtest`.

#[btf_tracepoint(function = "block_rq_insert")]
pub fn block_rq_insert_btf_q(ctx: BtfTracePointContext) -> i32 {
    let rq: *const u8 = ctx.arg(1);
    let id = btf_request_id(rq);
    on_insert(inflight_slot(id, 0), id);
    0
}

#[btf_tracepoint(function = "block_rq_issue")]
pub fn block_rq_issue_btf_q(ctx: BtfTracePointContext) -> i32 {
    let rq: *const u8 = ctx.arg(1);
    issue_request::<DirectRead>(rq as u64, btf_request_id(rq));
    0
}

#[btf_tracepoint(function = "block_rq_requeue")]
pub fn block_rq_requeue_btf_q(ctx: BtfTracePointContext) -> i32 {
    let rq: *const u8 = ctx.arg(1);
    let id = btf_request_id(rq);
    on_requeue(inflight_slot(id, 0), id);
    0
}

#[raw_tracepoint(tracepoint = "block_rq_insert")]
pub fn block_rq_insert_raw_q(ctx: RawTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(1);
    on_insert(inflight_slot(rq, 0), rq);
    0
}

#[raw_tracepoint(tracepoint = "block_rq_issue")]
pub fn block_rq_issue_raw_q(ctx: RawTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(1);
    issue_request::<ProbeRead>(rq, rq);
    0
}

#[raw_tracepoint(tracepoint = "block_rq_requeue")]
pub fn block_rq_requeue_raw_q(ctx: RawTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(1);
    on_requeue(inflight_slot(rq, 0), rq);
    0
}

#[raw_tracepoint(tracepoint = "block_rq_insert")]
pub fn block_rq_insert_raw(ctx: RawTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(0);
    on_insert(inflight_slot(rq, 0), rq);
    0
}

#[raw_tracepoint(tracepoint = "block_rq_issue")]
pub fn block_rq_issue_raw(ctx: RawTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(0);
    issue_request::<ProbeRead>(rq, rq);
    0
}

#[raw_tracepoint(tracepoint = "block_rq_requeue")]
pub fn block_rq_requeue_raw(ctx: RawTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(0);
    on_requeue(inflight_slot(rq, 0), rq);
    0
}

#[raw_tracepoint(tracepoint = "block_rq_complete")]
pub fn block_rq_complete_raw(ctx: RawTracePointContext) -> i32 {
    let rq: u64 = ctx.arg(0);
    let status: u64 = ctx.arg(1);
    let nr_bytes: u64 = ctx.arg(2);
    complete_request::<ProbeRead>(rq, rq, (status & 0xff) as u32, nr_bytes as u32);
    0
}

/// Device, start sector and operation from a classic `block_rq_*` record.
#[inline(always)]
fn tracepoint_fields(ctx: &TracePointContext, l: &TracepointLayout) -> Option<(u32, u64, u32)> {
    // SAFETY: `read_at` copies from the record with bpf_probe_read, which fails rather
    // than faults; the offsets come from the tracepoint's own format file.
    unsafe {
        let dev: u32 = ctx.read_at(l.dev as usize).ok()?;
        let sector: u64 = ctx.read_at(l.sector as usize).ok()?;
        let rwbs: [u8; 2] = ctx.read_at(l.rwbs as usize).ok()?;
        Some((dev, sector, op_from_rwbs(rwbs[0], rwbs[1])))
    }
}

#[tracepoint(category = "block", name = "block_rq_issue")]
pub fn block_rq_issue_tp(ctx: TracePointContext) -> i32 {
    let l = global(&TP_ISSUE_LAYOUT);
    if let Some((dev, sector, op)) = tracepoint_fields(&ctx, &l) {
        // Sector 0 with a device is still a valid identity (flushes all use it: two
        // concurrent flushes on one device share a slot, as in every sector-keyed tool).
        let issue = Issue {
            dev,
            op,
            issued_ns: now_ns(),
            pid_tgid: 0,
            bytes: None,
            allocated_ns: 0,
            rq: 0,
        };
        on_issue(inflight_slot(sector, dev), sector, &issue, true);
    }
    0
}

#[tracepoint(category = "block", name = "block_rq_complete")]
pub fn block_rq_complete_tp(ctx: TracePointContext) -> i32 {
    let l = global(&TP_COMPLETE_LAYOUT);
    if let Some((dev, sector, op)) = tracepoint_fields(&ctx, &l) {
        let now = now_ns();
        // SAFETY: a bpf_probe_read copy from the record, at the format file's offset.
        if let Ok(status) = unsafe { ctx.read_at::<i32>(l.error as usize) }
            && status != 0
        {
            // The record carries the errno the status maps to; negated, it is the
            // same for every status of one errno.
            count_error(dev, op, (-status) as u32 | 0x100);
        }
        let i = take_issued(inflight_slot(sector, dev), sector, Some(dev), now);
        if i.found && i.issued_ns != 0 && now >= i.issued_ns {
            record_request::<ProbeRead>(None, &i.key, 0, now - i.issued_ns, None);
        } else {
            // No request pointer here to tell a never-issued request from one in
            // flight before attach: both are only counted.
            device_drop(dev, op, counters::BLOCK_UNMATCHED);
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
    let status: u64 = ctx.arg(1);
    let nr_bytes: u32 = ctx.arg(2);
    complete_request::<DirectRead>(
        rq as u64,
        btf_request_id(rq),
        (status & 0xff) as u32,
        nr_bytes,
    );
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
    if let (Some(rq), Some(status), Some(nr_bytes)) =
        (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2))
    {
        complete_request::<ProbeRead>(rq, rq, (status & 0xff) as u32, nr_bytes as u32);
    }
    0
}
