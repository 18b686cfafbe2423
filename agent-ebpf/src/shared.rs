//! Helpers every probe family uses: recording into a per-CPU histogram and counting
//! events that could not be recorded.

use agent_common::{
    counters,
    hist::{Histogram, NUM_BUCKETS, Window, bucket_slot},
    outlier::{OutlierEvent, RING_BYTES, threshold},
    sparse::{SPARSE_MAX_ENTRIES, SparseCell, SparseKey, ZERO_SLOT},
};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::map,
    maps::{Array, PerCpuArray, PerCpuHashMap, RingBuf},
};

/// Events the probes had to drop, indexed by `agent_common::counters`.
#[map(name = "PROBE_COUNTERS")]
static PROBE_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);

/// Histograms with many series (per cgroup, per VM and exit reason), one entry per
/// populated bucket: memory follows the buckets in use, not series × 513 buckets.
#[map(name = "SPARSE_HIST")]
static SPARSE_HIST: PerCpuHashMap<SparseKey, SparseCell> =
    PerCpuHashMap::with_max_entries(SPARSE_MAX_ENTRIES, 0);

/// Outlier events for the agent to turn into spans.
#[map(name = "OUTLIERS")]
static OUTLIERS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// [`threshold::MIN`]: the lowest threshold of any series (ns), a sample below it is
/// never an outlier; [`threshold::DEFAULT`]: for series without their own. Pushed by
/// the agent at start and each interval.
#[map(name = "OUTLIER_MIN")]
pub static OUTLIER_THRESHOLDS: Array<u64> = Array::with_max_entries(threshold::COUNT, 0);

/// Whether `value` (ns) might be an outlier: one inlined array read.
#[inline(always)]
pub fn maybe_outlier(value: u64) -> bool {
    OUTLIER_THRESHOLDS
        .get(threshold::MIN)
        .is_some_and(|&min| min != 0 && value >= min)
}

/// Threshold of a series without one of its own (0: none).
#[inline(always)]
pub fn default_threshold() -> u64 {
    OUTLIER_THRESHOLDS
        .get(threshold::DEFAULT)
        .copied()
        .unwrap_or(0)
}

/// Sends an outlier to the agent, counting it when the ring buffer is full.
#[inline(always)]
pub fn emit_outlier(event: &OutlierEvent) {
    match OUTLIERS.reserve::<OutlierEvent>(0) {
        Some(mut entry) => {
            entry.write(*event);
            entry.submit(0);
        }
        None => count(counters::OUTLIER_RING_FULL),
    }
}

/// Adds `v` to a map value every CPU may update at once (BPF's XADD). The programs
/// are built for BPF v1, where XADD returns nothing: read the value afterwards when
/// needed (it may then include other CPUs' concurrent adds).
#[inline(always)]
pub fn atomic_add(p: *mut u64, v: u64) {
    use core::intrinsics::{AtomicOrdering, atomic_xadd};
    // SAFETY: callers pass a pointer to a live, 8-byte aligned map value or a field of
    // one (map values outlive the program); XADD is the one write other CPUs may make
    // to it at the same time, and it is atomic.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v);
    }
}

#[inline(always)]
pub fn count(counter: u32) {
    count_by(counter, 1);
}

#[inline(always)]
pub fn count_by(counter: u32, n: u64) {
    if let Some(c) = PROBE_COUNTERS.get_ptr_mut(counter) {
        // SAFETY: `c` is this CPU's value in a per-CPU array, valid while the program
        // runs; no other CPU writes it and the program is not re-entered on this CPU,
        // so a plain add is enough.
        unsafe { *c += n };
    }
}

/// This CPU's value for `key`, created from `empty` on first use; `None` when the map
/// is full. `empty` lives in a global section: large values do not fit on the BPF
/// stack, and its address is a valid map value for `bpf_map_update_elem`.
#[inline(always)]
// The result points into the map's per-CPU storage, not into `empty`.
#[allow(clippy::mut_from_ref)]
pub fn get_or_insert<K, V>(
    map: &PerCpuHashMap<K, V>,
    key: &K,
    empty: &'static V,
) -> Option<&'static mut V> {
    let value = match map.get_ptr_mut(key) {
        Some(v) => v,
        None => {
            // Losing a race with another CPU's insert is fine: the lookup below finds it.
            let _ = map.insert(key, empty, BPF_NOEXIST as u64);
            map.get_ptr_mut(key)?
        }
    };
    // SAFETY: `value` is this CPU's value for `key`, which the map keeps alive for the
    // program's run (BPF programs cannot free map values they hold); other CPUs have
    // their own copies, so the mutable reference is not shared.
    Some(unsafe { &mut *value })
}

/// Adds one sample to a histogram this CPU owns.
#[inline(always)]
pub fn add_sample(hist: &mut Histogram, value: u64) {
    hist.sum += value;
    if value == 0 {
        hist.zero_count += 1;
    } else {
        // black_box keeps the bounds check: LLVM proves it redundant, but the verifier
        // cannot follow the leading-zeros arithmetic and needs to see it.
        let slot = core::hint::black_box(bucket_slot(value));
        if slot < NUM_BUCKETS {
            hist.buckets[slot] += 1;
        }
    }
}

/// Adds one sample to a windowed histogram this CPU owns.
#[inline(always)]
pub fn add_window<const FIRST: i32, const N: usize>(h: &mut Window<FIRST, N>, value: u64) {
    h.sum += value;
    if value == 0 {
        h.zero_count += 1;
    } else {
        // black_box keeps the bounds check the verifier needs (see add_sample).
        let slot = core::hint::black_box(Window::<FIRST, N>::slot(value));
        if slot < N {
            h.buckets[slot] += 1;
        }
    }
}

/// Adds one sample to a windowed histogram all CPUs update.
#[inline(always)]
pub fn add_window_shared<const FIRST: i32, const N: usize>(h: &mut Window<FIRST, N>, value: u64) {
    atomic_add(&mut h.sum, value);
    if value == 0 {
        atomic_add(&mut h.zero_count, 1);
    } else {
        let slot = core::hint::black_box(Window::<FIRST, N>::slot(value));
        if slot < N {
            atomic_add(&mut h.buckets[slot], 1);
        }
    }
}

/// Adds one sample (ns) to the sparse series (`family`, `group`, `detail`): one
/// lookup, and an insert the first time this CPU sees the bucket.
#[inline(always)]
pub fn record_sparse(family: u32, group: u64, detail: u32, value: u64) {
    let key = SparseKey {
        group,
        family,
        detail,
        bucket: if value == 0 {
            ZERO_SLOT
        } else {
            bucket_slot(value) as u32
        },
        _pad: 0,
    };
    let add = |cell: *mut SparseCell| {
        // SAFETY: `cell` is this CPU's value in a per-CPU hash map, valid for the
        // program's run and written by no other CPU.
        unsafe {
            (*cell).count += 1;
            (*cell).sum += value;
        }
    };
    if let Some(cell) = SPARSE_HIST.get_ptr_mut(key) {
        add(cell);
        return;
    }
    let first = SparseCell {
        count: 1,
        sum: value,
    };
    if SPARSE_HIST.insert(key, first, BPF_NOEXIST as u64).is_ok() {
        return;
    }
    // Another CPU created the bucket meanwhile (its insert set only its own value).
    match SPARSE_HIST.get_ptr_mut(key) {
        Some(cell) => add(cell),
        None => count(counters::SPARSE_FULL),
    }
}

/// How fields of kernel structs are read. BTF-typed pointers (tp_btf, fentry) can be
/// dereferenced directly: the verifier checks each load against the kernel's BTF and
/// turns it into a fault-tolerant load, far cheaper than a helper call. Other program
/// types see plain numbers and must use `bpf_probe_read_kernel`.
pub trait KernelRead {
    fn read<T: Copy>(base: u64, offset: u32) -> Option<T>;
}

pub struct DirectRead;
impl KernelRead for DirectRead {
    #[inline(always)]
    fn read<T: Copy>(base: u64, offset: u32) -> Option<T> {
        // SAFETY: only used with BTF-typed pointers (tp_btf, fentry): the verifier
        // checks each such load against the kernel's types and turns it into a load
        // that yields 0 instead of faulting. Offsets come from read-only globals, so
        // the verifier sees constants.
        Some(unsafe { *((base as *const u8).add(offset as usize) as *const T) })
    }
}

pub struct ProbeRead;
impl KernelRead for ProbeRead {
    #[inline(always)]
    fn read<T: Copy>(base: u64, offset: u32) -> Option<T> {
        // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-tolerant
        // accessor into a value it returns: a wrong address is an error, never a fault.
        unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T).ok() }
    }
}

/// The monotonic clock (ns), as the kernel's tracepoints and `ktime_get_ns()` see it.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: the helper takes no arguments and only reads the clock.
    unsafe { bpf_ktime_get_ns() }
}

/// A global the agent sets before load (a layout, a switch), read as the program runs:
/// a volatile load, so the compiler does not fold in the placeholder it was built with.
#[inline(always)]
pub fn global<T: Copy>(value: &T) -> T {
    // SAFETY: `value` is a reference, hence valid, aligned and initialised.
    unsafe { core::ptr::read_volatile(value) }
}
