//! Reading the sparse histogram map (one entry per populated bucket of each series)
//! back into one histogram per series.

use std::collections::HashMap;

use super::batch_read::PerCpuHash;
use crate::aggregate::ExpHistogram;
use agent_common::{
    hist::MIN_INDEX,
    sparse::{SparseCell, SparseKey, ZERO_SLOT},
};

/// (family, group, detail) → cumulative histogram.
pub type SparseSeries = HashMap<(u32, u64, u32), ExpHistogram>;

#[derive(Default)]
struct Parts {
    sum: u64,
    zero: u64,
    buckets: Vec<(i32, u64)>,
}

pub fn read(map: &PerCpuHash<SparseKey, SparseCell>) -> Result<SparseSeries, String> {
    let mut parts: HashMap<(u32, u64, u32), Parts> = HashMap::new();
    map.for_each(|key, per_cpu| {
        let count: u64 = per_cpu.iter().map(|c| c.count).sum();
        let sum: u64 = per_cpu.iter().map(|c| c.sum).sum();
        let p = parts
            .entry((key.family, key.group, key.detail))
            .or_default();
        p.sum = p.sum.wrapping_add(sum);
        match key.bucket {
            ZERO_SLOT => p.zero = count,
            slot => p.buckets.push((slot as i32 + MIN_INDEX, count)),
        }
    })?;
    Ok(parts
        .into_iter()
        .map(|(k, p)| (k, ExpHistogram::from_buckets(p.sum, p.zero, p.buckets)))
        .collect())
}

/// The series of one family: (group, detail) → histogram.
pub fn family(
    series: &SparseSeries,
    family: u32,
) -> impl Iterator<Item = (u64, u32, &ExpHistogram)> {
    series
        .iter()
        .filter(move |((f, _, _), _)| *f == family)
        .map(|(&(_, group, detail), h)| (group, detail, h))
}
