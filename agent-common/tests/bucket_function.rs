//! The kernel's bucket function against the OTLP exponential-histogram definition,
//! checked with exact integer arithmetic: value v is in bucket i iff
//! base^i < v <= base^(i+1), base = 2^(2^-SCALE), i.e. 2^i < v^8 <= 2^(i+1) at scale 3.

use agent_common::hist::{
    MAX_INDEX, MIN_INDEX, NUM_BUCKETS, SCALE, SUB_BUCKET_BOUNDS, SUB_BUCKETS, bucket_index,
    bucket_slot,
};
use num_bigint::BigUint;

/// Compares v^(2^SCALE) with 2^e for a possibly negative e: the sign of v^8 − 2^e.
fn cmp_pow(v: u64, e: i32) -> std::cmp::Ordering {
    let v8 = BigUint::from(v).pow(SUB_BUCKETS);
    if e >= 0 {
        v8.cmp(&(BigUint::from(1u8) << e as u32))
    } else {
        (v8 << (-e) as u32).cmp(&BigUint::from(1u8))
    }
}

/// The OTLP definition, checked exactly.
fn in_bucket(v: u64, i: i32) -> bool {
    use std::cmp::Ordering::*;
    cmp_pow(v, i) == Greater && cmp_pow(v, i + 1) != Greater
}

fn assert_exact(v: u64) {
    let i = bucket_index(v);
    assert!(in_bucket(v, i), "value {v} put in bucket {i}");
    assert!((MIN_INDEX..=MAX_INDEX).contains(&i));
    assert!(bucket_slot(v) < NUM_BUCKETS);
}

#[test]
fn scale_and_layout() {
    assert_eq!(SCALE, 3);
    assert_eq!(SUB_BUCKETS, 8);
    assert_eq!(NUM_BUCKETS, 513);
}

#[test]
fn one_is_the_top_of_bucket_minus_one() {
    assert_eq!(bucket_index(1), -1);
    assert_exact(1);
    assert_eq!(bucket_slot(1), 0);
}

#[test]
fn exact_powers_of_the_base_are_inclusive_upper_bounds() {
    // Integer powers of base = 2^(1/8) are the powers of two: 2^k = base^(8k) closes
    // bucket 8k − 1.
    for k in 0..64 {
        let v = 1u64 << k;
        assert_eq!(bucket_index(v), 8 * k - 1, "2^{k}");
        assert_exact(v);
        if v > 1 {
            assert_exact(v - 1);
            assert_exact(v + 1);
        }
        // From 16 up, the next integer is still in the first sub-bucket of the octave.
        if k >= 4 {
            assert_eq!(bucket_index(v + 1), 8 * k, "2^{k}+1");
        }
    }
}

#[test]
fn u64_max_is_in_the_last_bucket() {
    assert_eq!(bucket_index(u64::MAX), MAX_INDEX);
    assert_exact(u64::MAX);
    assert_eq!(bucket_slot(u64::MAX), NUM_BUCKETS - 1);
}

#[test]
fn sub_bucket_bounds_are_exact_floors() {
    // floor(2^63 · 2^(j/8)) is the largest t with t^8 <= 2^(504 + j).
    for (j, &t) in SUB_BUCKET_BOUNDS.iter().enumerate() {
        let e = 504 + j as i32 + 1;
        assert_ne!(
            cmp_pow(t, e),
            std::cmp::Ordering::Greater,
            "bound {j} too big"
        );
        assert_eq!(
            cmp_pow(t + 1, e),
            std::cmp::Ordering::Greater,
            "bound {j} too small"
        );
    }
}

#[test]
fn every_boundary_between_one_and_u64_max() {
    // For each bucket, the largest integer inside it and the smallest above it.
    for i in 0..MAX_INDEX {
        // Largest integer <= base^(i+1) = 2^((i+1)/8): integer 8th root of 2^(i+1).
        let top = BigUint::from(1u8) << (i + 1) as u32;
        let root = top.nth_root(8);
        let Ok(b) = u64::try_from(&root) else {
            continue;
        };
        if b == 0 {
            continue;
        }
        assert_exact(b);
        if b < u64::MAX {
            assert_exact(b + 1);
        }
    }
}

#[test]
fn many_values_across_the_range() {
    // Deterministic spread over all magnitudes.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let shift = (x >> 58) as u32; // 0..63
        let v = (x >> shift).max(1);
        assert_exact(v);
    }
}

#[test]
fn typical_latencies() {
    for v in [
        100,
        999,
        1000,
        1001,
        4096,
        12_345,
        1_000_000,
        1_000_000_000,
        60_000_000_000,
    ] {
        assert_exact(v);
    }
}
