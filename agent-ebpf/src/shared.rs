//! Helpers every probe family uses: recording into a per-CPU histogram and counting
//! events that could not be recorded.

use agent_common::{
    counters,
    hist::{Histogram, NUM_BUCKETS, bucket_slot},
};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap},
};

/// Events the probes had to drop, indexed by `agent_common::counters`.
#[map(name = "PROBE_COUNTERS")]
static PROBE_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);

/// Template for a new series; lives in a global section so its address is a valid map
/// value for `bpf_map_update_elem` (the 4 KiB value would not fit on the BPF stack).
static EMPTY_HISTOGRAM: Histogram = Histogram::ZERO;

#[inline(always)]
pub fn count(counter: u32) {
    if let Some(c) = PROBE_COUNTERS.get_ptr_mut(counter) {
        // Per-CPU slot: no other CPU writes it, so a plain add is enough.
        unsafe { *c += 1 };
    }
}

/// Adds one sample (nanoseconds) to this CPU's histogram for `key`, creating the series
/// on first use. Returns false when the map is full.
#[inline(always)]
pub fn record<K>(map: &PerCpuHashMap<K, Histogram>, key: &K, value: u64) -> bool {
    let hist = match map.get_ptr_mut(key) {
        Some(h) => h,
        None => {
            // Losing a race with another CPU's insert is fine: the lookup below finds it.
            // By reference on purpose: by value would copy 4 KiB onto the BPF stack.
            #[allow(clippy::needless_borrows_for_generic_args)]
            let _ = map.insert(key, &EMPTY_HISTOGRAM, BPF_NOEXIST as u64);
            match map.get_ptr_mut(key) {
                Some(h) => h,
                None => return false,
            }
        }
    };
    let hist = unsafe { &mut *hist };
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
    true
}
