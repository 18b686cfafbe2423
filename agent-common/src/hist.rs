//! The one histogram bucket layout used from kernel to exporter: the OpenTelemetry
//! exponential histogram at a fixed scale.
//!
//! At scale `s` the base is `2^(2^-s)` and bucket `i` holds values in `(base^i, base^(i+1)]`;
//! zero has a bucket of its own. The kernel computes the index, the agent exports it as
//! is: no re-bucketing, no approximation. Values are recorded in nanoseconds and stay in
//! nanoseconds, because converting to seconds would shift the boundaries by a
//! non-integer number of buckets.

/// OTLP exponential-histogram scale used everywhere: base = 2^(1/8) ≈ 1.0905, so a
/// bucket's width is at most 9 % of its value and its midpoint is within 4.5 %.
pub const SCALE: i32 = 3;

/// Buckets per power of two at [`SCALE`].
pub const SUB_BUCKETS: u32 = 1 << SCALE;

/// Index of the lowest bucket a non-zero `u64` can fall into: 1 lies in `(base^-1, 1]`.
pub const MIN_INDEX: i32 = -1;

/// Index of the highest bucket: `u64::MAX` lies in `(2^(63 + 7/8), 2^64]`.
pub const MAX_INDEX: i32 = 64 * SUB_BUCKETS as i32 - 1;

/// Number of dense bucket slots, `MIN_INDEX..=MAX_INDEX`.
pub const NUM_BUCKETS: usize = (MAX_INDEX - MIN_INDEX + 1) as usize;

/// `floor(2^63 · 2^(j/8))` for j = 1..=7: the sub-bucket boundaries of one power of two,
/// as 64-bit fixed point. A value normalised so that its top bit is bit 63 is compared
/// against these; since the true boundaries are irrational, `x > floor(b)` is exactly
/// `x > b` for an integer `x`. Checked with exact integer arithmetic in the tests.
pub const SUB_BUCKET_BOUNDS: [u64; 7] = [
    0x8b95_c1e3_ea8b_d6e6,
    0x9837_f051_8db8_a96f,
    0xa5fe_d6a9_b151_38ea,
    0xb504_f333_f9de_6484,
    0xc567_2a11_5506_dadd,
    0xd744_fcca_d69d_6af4,
    0xeac0_c6e7_dd24_392e,
];

/// OTLP bucket index of a non-zero value at [`SCALE`]. Exact for every `u64`; no floats,
/// no loops, so it runs in the kernel as well.
#[inline(always)]
pub fn bucket_index(value: u64) -> i32 {
    let msb = 63 - value.leading_zeros();
    let octave = (msb * SUB_BUCKETS) as i32;
    if value & (value - 1) == 0 {
        // An exact power of two is the inclusive upper bound of the bucket below it.
        return octave - 1;
    }
    let norm = value << (63 - msb);
    let b = &SUB_BUCKET_BOUNDS;
    let sub = if norm > b[3] {
        if norm > b[5] {
            if norm > b[6] { 7 } else { 6 }
        } else if norm > b[4] {
            5
        } else {
            4
        }
    } else if norm > b[1] {
        if norm > b[2] { 3 } else { 2 }
    } else if norm > b[0] {
        1
    } else {
        0
    };
    octave + sub
}

/// Position of a non-zero value's bucket in [`Histogram::buckets`].
#[inline(always)]
pub fn bucket_slot(value: u64) -> usize {
    (bucket_index(value) - MIN_INDEX) as usize
}

/// A cumulative latency histogram as the kernel keeps it, one per CPU per series.
/// The sample count is the sum of `zero_count` and all buckets.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Histogram {
    /// Sum of all recorded values, in nanoseconds.
    pub sum: u64,
    /// Samples equal to zero.
    pub zero_count: u64,
    /// `buckets[k]` counts samples in OTLP bucket `k + MIN_INDEX`.
    pub buckets: [u64; NUM_BUCKETS],
}
plain_data!(Histogram, (2 + NUM_BUCKETS) * 8);

impl Histogram {
    pub const ZERO: Self = Self {
        sum: 0,
        zero_count: 0,
        buckets: [0; NUM_BUCKETS],
    };
}

/// A histogram over a window of [`NUM_BUCKETS`]: `N` buckets from index `FIRST`, with
/// values outside clamped into the end buckets. For quantities whose range is known:
/// request sizes (512 B … 490 MB) and queue depths (1 … 60 000) need a few hundred
/// bytes instead of 4 KiB.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Window<const FIRST: i32, const N: usize> {
    pub sum: u64,
    pub zero_count: u64,
    /// `buckets[k]` counts samples in OTLP bucket `k + FIRST`.
    pub buckets: [u64; N],
}

impl<const FIRST: i32, const N: usize> Window<FIRST, N> {
    pub const ZERO: Self = Self {
        sum: 0,
        zero_count: 0,
        buckets: [0; N],
    };

    /// Position of a non-zero value's bucket, clamped into the window.
    #[inline(always)]
    pub fn slot(value: u64) -> usize {
        let i = bucket_index(value) - FIRST;
        if i < 0 {
            0
        } else if i as usize >= N {
            N - 1
        } else {
            i as usize
        }
    }
}

/// Request sizes: from the bucket ending at 512 B (one sector) up.
pub type SizeHistogram = Window<71, 160>;
/// Queue depths: every bucket from 1 up.
pub type DepthHistogram = Window<MIN_INDEX, 128>;

#[cfg(test)]
mod window_tests {
    use super::*;

    #[test]
    fn windows_place_values_and_clamp_the_rest() {
        assert_eq!(bucket_index(512), 71);
        assert_eq!(SizeHistogram::slot(512), 0);
        assert_eq!(SizeHistogram::slot(4096) as i32 + 71, bucket_index(4096));
        assert_eq!(SizeHistogram::slot(1), 0);
        assert_eq!(SizeHistogram::slot(u64::MAX), 159);
        // 1 is the inclusive top of bucket -1, the window's first.
        assert_eq!(DepthHistogram::slot(1), 0);
        assert_eq!(
            DepthHistogram::slot(32) as i32 + MIN_INDEX,
            bucket_index(32)
        );
        assert_eq!(DepthHistogram::slot(1 << 40), 127);
    }
}
