//! Block I/O latency: keys, in-flight records and the kernel layouts the agent resolves
//! at load time (DESIGN.md: never hard-code kernel struct offsets).

use crate::hist::{DepthHistogram, Histogram, SizeHistogram};

/// Operation classes nodepulse reports for block requests.
pub mod op {
    pub const READ: u32 = 0;
    pub const WRITE: u32 = 1;
    pub const FLUSH: u32 = 2;
    pub const DISCARD: u32 = 3;
    pub const OTHER: u32 = 4;
    pub const COUNT: usize = 5;
}

/// `REQ_OP_MASK` from `include/linux/blk_types.h`: the low 8 bits of `cmd_flags`.
pub const REQ_OP_MASK: u32 = 0xff;

/// Maps a kernel `REQ_OP_*` value to an [`op`] class. Secure erase counts as discard and
/// write-zeroes as write, as `/sys/block/*/stat` does.
#[inline(always)]
pub fn op_from_req_op(req_op: u32) -> u32 {
    match req_op & REQ_OP_MASK {
        0 => op::READ,
        1 | 9 => op::WRITE, // REQ_OP_WRITE, REQ_OP_WRITE_ZEROES
        2 => op::FLUSH,
        3 | 5 => op::DISCARD, // REQ_OP_DISCARD, REQ_OP_SECURE_ERASE
        _ => op::OTHER,
    }
}

/// Maps the first characters of a tracepoint's `rwbs` string (see `blk_fill_rwbs`) to an
/// [`op`] class. A leading `F` is a pre-flush flag unless nothing but flags follows it.
#[inline(always)]
pub fn op_from_rwbs(c0: u8, c1: u8) -> u32 {
    let c = if c0 == b'F' {
        match c1 {
            b'W' | b'R' | b'D' | b'N' => c1,
            _ => b'F',
        }
    } else {
        c0
    };
    match c {
        b'R' => op::READ,
        b'W' => op::WRITE,
        b'F' => op::FLUSH,
        b'D' => op::DISCARD,
        _ => op::OTHER,
    }
}

/// Key of a block latency histogram: whole-disk device number in the kernel's encoding
/// (`major << 20 | minor`, as the block tracepoints report it) and [`op`] class.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    pub dev: u32,
    pub op: u32,
}
plain_data!(BlockKey, 2 * 4);

/// Latency histograms of one (device, operation) series, all recorded at completion
/// for the same requests, so that `total = queue + device` holds request by request.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockHistograms {
    /// Insertion into the I/O scheduler → issue to the driver; 0 when the request
    /// bypassed the scheduler (never inserted).
    pub queue: Histogram,
    /// Issue → completion.
    pub device: Histogram,
    /// Queue + device.
    pub total: Histogram,
    /// Bytes per request.
    pub size: SizeHistogram,
}
plain_data!(BlockHistograms, 3 * size_of::<Histogram>() + (2 + 160) * 8);

impl BlockHistograms {
    pub const ZERO: Self = Self {
        queue: Histogram::ZERO,
        device: Histogram::ZERO,
        total: Histogram::ZERO,
        size: SizeHistogram::ZERO,
    };
}

/// Per device, shared by all CPUs (a request may complete on another CPU than the
/// one that issued it), so updated with atomic adds: the requests in flight now, and
/// the distribution of that count at each issue.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DeviceDepth {
    pub in_flight: u64,
    pub depth: DepthHistogram,
    /// Completions the kernel made without the completion program running, per
    /// [`op`] class: found when the same request is issued again while its previous
    /// issue is still recorded, or by the sweep.
    pub completions_unseen: [u64; op::COUNT],
    /// Completions the program saw without an issue record (in flight before attach,
    /// or the issue program did not run), per [`op`] class.
    pub completions_unmatched: [u64; op::COUNT],
    /// Nanoseconds (kernel monotonic clock) the device had at least one request
    /// started and not completed, up to the start of the current busy period: the
    /// probe's own io_ticks, with the kernel's definition (a request counts from when
    /// the kernel started it, before any plug or scheduler queue).
    pub busy_ns: u64,
    /// When the current busy period began; meaningful while `in_flight` is non-zero.
    pub busy_since_ns: u64,
    /// When the program last saw a request of the device complete: where a busy period
    /// ends when the count only reaches 0 by releasing requests whose completions the
    /// program never saw (their true end is unknown, and no earlier than this).
    pub last_done_ns: u64,
    /// In-flight table indices + 1 of the device's last issued requests (0: none),
    /// written in turn: where an event that finds requests still counted in flight
    /// looks for ones the kernel has already freed (their completion was not seen), so
    /// that such a request ends its busy period at once rather than when released
    /// later.
    pub recent: [u32; RECENT_ISSUES],
    /// The next entry of `recent` to write.
    pub recent_next: u64,
}
plain_data!(
    DeviceDepth,
    8 + (2 + 128) * 8 + 2 * op::COUNT * 8 + 3 * 8 + RECENT_ISSUES * 4 + 8
);

/// How many of a device's last issues [`DeviceDepth::recent`] keeps (even: no padding).
pub const RECENT_ISSUES: usize = 8;

impl DeviceDepth {
    pub const ZERO: Self = Self {
        in_flight: 0,
        depth: DepthHistogram::ZERO,
        completions_unseen: [0; op::COUNT],
        completions_unmatched: [0; op::COUNT],
        busy_ns: 0,
        busy_since_ns: 0,
        last_done_ns: 0,
        recent: [0; RECENT_ISSUES],
        recent_next: 0,
    };
}

/// The kernel's completed-request groups of `/sys/block/<dev>/stat`, in its order:
/// read, write, discard, flush.
pub const STAT_GROUPS: usize = 4;

/// The stat group of an [`op`] class; `None` for `other` (zone management and driver
/// operations, which the kernel counts by direction or not at all).
pub const fn stat_group(op: u32) -> Option<usize> {
    match op {
        op::READ => Some(0),
        op::WRITE => Some(1),
        op::DISCARD => Some(2),
        op::FLUSH => Some(3),
        _ => None,
    }
}

/// Per device, written by the agent only (the programs never touch it): how the
/// probe's counts stand against the kernel's own completed counts. Kept in a map so
/// that it lives and is pinned with the counts it is computed from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceReconcile {
    /// The kernel's completed counts per stat group at the last comparison (or where
    /// it began).
    pub kernel_seen: [u64; STAT_GROUPS],
    /// The probe's completions per stat group (recorded, unseen and unmatched) then.
    pub probe_seen: [u64; STAT_GROUPS],
    /// Completions the kernel made that the probe neither recorded nor counted.
    pub unaccounted: [u64; STAT_GROUPS],
    /// Completions the probe recorded or counted beyond the kernel's: double counts.
    pub overcounted: [u64; STAT_GROUPS],
}
plain_data!(DeviceReconcile, 4 * STAT_GROUPS * 8);

/// Where a request is in its life, as the in-flight table knows it.
pub mod slot_state {
    pub const EMPTY: u32 = 0;
    /// Inserted into the scheduler, not issued yet: `inserted_ns` is set.
    pub const INSERTED: u32 = 1;
    /// Issued to the driver and counted in its device's in-flight count.
    pub const ISSUED: u32 = 2;
}

/// One slot of the direct-mapped in-flight table: a request seen at insertion or
/// issue, waiting for its completion. `id` is the request pointer (BTF and raw
/// tracepoints) or the start sector (classic tracepoints, where `dev` disambiguates).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct InflightSlot {
    pub id: u64,
    /// When the request entered the scheduler; 0 when it bypassed it.
    pub inserted_ns: u64,
    /// Our issue timestamp; 0 when the kernel stamps the request itself.
    pub issued_ns: u64,
    /// `bpf_get_current_pid_tgid()` at issue: the task that dispatched the request,
    /// for outlier events.
    pub pid_tgid: u64,
    pub dev: u32,
    pub op: u32,
    /// Bytes of the request at issue.
    pub bytes: u32,
    /// [`slot_state`].
    pub state: u32,
    /// Address of the request (`struct request *`), 0 where the hook has none (classic
    /// tracepoints): lets [`SWEEP_SLOTS`]' sweep ask the request itself whether it is
    /// still in flight.
    pub rq: u64,
    /// Bumped by each issue into the slot: tells a request's occupancy from a later
    /// one at the same address (one released under the slot's lock must be the one
    /// found lost).
    pub generation: u32,
    pub _pad: u32,
}
plain_data!(InflightSlot, 6 * 8 + 4 * 4);

/// Release locks of the in-flight table held at once: one per CPU releasing a lost
/// request (and any program nested on it), with room for large hosts.
pub const SLOT_LOCKS: u32 = 1024;

/// Slots the sweep program looks at per run (a bounded loop the verifier walks once
/// per iteration); the agent runs it over the whole table in steps of this.
pub const SWEEP_SLOTS: u32 = 256;

/// Key of the I/O error counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockErrorKey {
    pub dev: u32,
    pub op: u32,
    /// `blk_status_t` of the completion.
    pub status: u32,
    pub _pad: u32,
}
plain_data!(BlockErrorKey, 4 * 4);

/// Error-counter series the kernel keeps at most (device × operation × status).
pub const BLOCK_ERROR_MAX_SERIES: u32 = 1024;

/// Devices whose in-flight requests are counted.
pub const BLOCK_DEPTH_MAX_DEVICES: u32 = 1024;

/// log2 of the in-flight table's size. 65 536 slots (2 MiB) keep collisions rare
/// while thousands of requests are in flight; a collision loses one sample and is counted.
pub const INFLIGHT_SLOTS_LOG2: u32 = 16;
pub const INFLIGHT_SLOTS: u32 = 1 << INFLIGHT_SLOTS_LOG2;

/// Slot of a request identity: Fibonacci hashing spreads the regularly spaced request
/// pointers of a tag set over the whole table with one multiply.
#[inline(always)]
pub fn inflight_slot(id: u64, dev: u32) -> u32 {
    let mixed = (id ^ ((dev as u64) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> (64 - INFLIGHT_SLOTS_LOG2)) as u32
}

/// Offsets inside `struct request` and friends, and kernel constants, resolved from the
/// running kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestLayout {
    /// `struct request`.`q`
    pub rq_q: u32,
    /// `struct request`.`cmd_flags`
    pub rq_cmd_flags: u32,
    /// `struct request`.`__data_len`: bytes still to complete
    pub rq_data_len: u32,
    /// `struct request`.`state` (`enum mq_rq_state`: 0 idle, 1 in flight, 2 complete)
    pub rq_state: u32,
    /// `struct request`.`start_time_ns`: allocation time, ktime, 0 when not recorded
    pub rq_start_time_ns: u32,
    /// `struct request_queue`.`disk`
    pub q_disk: u32,
    /// `struct gendisk`.`major`
    pub disk_major: u32,
    /// `struct gendisk`.`first_minor`
    pub disk_first_minor: u32,
    /// Non-zero when the fields below were all found: the kernel's own issue
    /// timestamp can then replace ours (see `agent-ebpf/src/block.rs`).
    pub kernel_stamps: u32,
    /// `struct request_queue`.`queue_flags`
    pub q_queue_flags: u32,
    /// Bit number `QUEUE_FLAG_STATS` in `queue_flags`
    pub queue_flag_stats: u32,
    /// `struct request`.`rq_flags`
    pub rq_rq_flags: u32,
    /// `RQF_STATS` mask in `rq_flags`
    pub rqf_stats: u32,
    /// `struct request`.`io_start_time_ns`
    pub rq_io_start_time_ns: u32,
    /// `REQ_OP_DRV_IN` and `REQ_OP_DRV_OUT`: passthrough requests get no timestamp
    pub req_op_drv_in: u32,
    pub req_op_drv_out: u32,
    /// Non-zero when the cgroup chain below was found and per-cgroup I/O is on.
    pub cgroup_io: u32,
    /// `struct request`.`bio` → `bio`.`bi_blkg` → `blkcg_gq`.`blkcg` →
    /// `blkcg`.`css.cgroup` → `cgroup`.`kn` → `kernfs_node`.`id`: the cgroup that
    /// submitted the I/O (needs CONFIG_BLK_CGROUP)
    pub rq_bio: u32,
    pub bio_blkg: u32,
    pub blkg_blkcg: u32,
    pub blkcg_cgroup: u32,
    pub cgroup_kn: u32,
    pub kn_id: u32,
    /// `struct request`.`__sector`, for outliers
    pub rq_sector: u32,
    /// `struct request`.`rq_disk` on kernels that keep the disk in the request (up to
    /// 5.15; removed in 5.16 for `request_queue`.`disk`); 0 elsewhere, and then the
    /// disk is read through `rq_q` and `q_disk`. Never 0 when present: `q` comes first.
    pub rq_disk: u32,
    /// `struct request`.`ref` (`refcount_t` on older kernels, `atomic_t` on newer:
    /// an `int` either way): 1 from allocation, 0 once the request is freed. 0 when not found
    /// (never a real offset: `q` comes first); the sweep then cannot run.
    pub rq_ref: u32,
}
plain_data!(RequestLayout, 26 * 4);

impl RequestLayout {
    /// Placeholder the kernel object is built with; the agent overrides it before load.
    pub const UNRESOLVED: Self = Self {
        rq_q: 0,
        rq_cmd_flags: 0,
        rq_data_len: 0,
        rq_state: 0,
        rq_start_time_ns: 0,
        q_disk: 0,
        disk_major: 0,
        disk_first_minor: 0,
        kernel_stamps: 0,
        q_queue_flags: 0,
        queue_flag_stats: 0,
        rq_rq_flags: 0,
        rqf_stats: 0,
        rq_io_start_time_ns: 0,
        req_op_drv_in: 0,
        req_op_drv_out: 0,
        cgroup_io: 0,
        rq_bio: 0,
        bio_blkg: 0,
        blkg_blkcg: 0,
        blkcg_cgroup: 0,
        cgroup_kn: 0,
        kn_id: 0,
        rq_sector: 0,
        rq_disk: 0,
        rq_ref: 0,
    };
}

/// `MQ_RQ_IDLE`: the request never reached `blk_mq_start_request()`.
pub const MQ_RQ_IDLE: u32 = 0;

/// Offsets of the fields nodepulse reads from the classic `block:block_rq_issue` and
/// `block:block_rq_complete` records, parsed from their tracefs `format` files.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracepointLayout {
    pub dev: u32,
    pub sector: u32,
    pub rwbs: u32,
    /// `error` (an errno, completion records only; 0 elsewhere)
    pub error: u32,
}
plain_data!(TracepointLayout, 4 * 4);

impl TracepointLayout {
    pub const UNRESOLVED: Self = Self {
        dev: 0,
        sector: 0,
        rwbs: 0,
        error: 0,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rwbs_strings_map_to_operations() {
        let op = |s: &[u8]| op_from_rwbs(s[0], *s.get(1).unwrap_or(&0));
        assert_eq!(op(b"R"), op::READ);
        assert_eq!(op(b"RA"), op::READ);
        assert_eq!(op(b"WS"), op::WRITE);
        assert_eq!(op(b"FWS"), op::WRITE); // write with pre-flush
        assert_eq!(op(b"F"), op::FLUSH);
        assert_eq!(op(b"FF"), op::FLUSH);
        assert_eq!(op(b"D"), op::DISCARD);
        assert_eq!(op(b"DE"), op::DISCARD);
        assert_eq!(op(b"N"), op::OTHER);
    }

    #[test]
    fn request_ops_map_to_operations() {
        assert_eq!(op_from_req_op(0), op::READ);
        assert_eq!(op_from_req_op(1 | 1 << 11), op::WRITE); // flags above the op bits
        assert_eq!(op_from_req_op(2), op::FLUSH);
        assert_eq!(op_from_req_op(3), op::DISCARD);
        assert_eq!(op_from_req_op(9), op::WRITE);
        assert_eq!(op_from_req_op(34), op::OTHER);
    }

    #[test]
    fn slots_stay_in_the_table_and_spread() {
        let mut seen = [false; 64];
        for i in 0..4096u64 {
            let s = inflight_slot(0xffff_8880_1234_0000 + i * 384, 0);
            assert!(s < INFLIGHT_SLOTS);
            seen[(s >> (super::INFLIGHT_SLOTS_LOG2 - 6)) as usize] = true;
        }
        assert!(
            seen.iter().all(|&b| b),
            "regularly spaced pointers must cover the table"
        );
    }
}

/// Whether the kernel programs send outliers (0: off), set by the agent before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutlierLayout {
    pub enabled: u32,
}
plain_data!(OutlierLayout, 4);

impl OutlierLayout {
    pub const UNRESOLVED: Self = Self { enabled: 0 };
}
