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
    /// Whether this reading had an entry of the series.
    seen: bool,
    sum: u64,
    zero: u64,
    buckets: Vec<(i32, u64)>,
}

/// Reads the sparse map, keeping what one reading needs from the last: each series'
/// grouping buffer (thousands of entries are grouped into a few hundred series every
/// interval), and the keys read, so that the entries of an ended series are deleted
/// without walking the map again key by key (two system calls per entry).
#[derive(Default)]
pub struct Reader {
    parts: HashMap<(u32, u64, u32), Parts>,
    keys: Vec<SparseKey>,
}

impl Reader {
    pub fn read(
        &mut self,
        map: &PerCpuHash<SparseKey, SparseCell>,
    ) -> Result<SparseSeries, String> {
        self.keys.clear();
        for p in self.parts.values_mut() {
            p.seen = false;
            p.sum = 0;
            p.zero = 0;
            p.buckets.clear();
        }
        let (parts, keys) = (&mut self.parts, &mut self.keys);
        map.for_each(|key, per_cpu| {
            keys.push(key);
            let count: u64 = per_cpu.iter().map(|c| c.count).sum();
            let sum: u64 = per_cpu.iter().map(|c| c.sum).sum();
            let p = parts
                .entry((key.family, key.group, key.detail))
                .or_default();
            p.seen = true;
            p.sum = p.sum.wrapping_add(sum);
            match key.bucket {
                ZERO_SLOT => p.zero = count,
                slot => p.buckets.push((slot as i32 + MIN_INDEX, count)),
            }
        })?;
        self.parts.retain(|_, p| p.seen);
        Ok(self
            .parts
            .iter()
            .map(|(&k, p)| {
                let hist = ExpHistogram::from_buckets(p.sum, p.zero, p.buckets.iter().copied());
                (k, hist)
            })
            .collect())
    }

    /// The keys the last reading returned.
    pub fn keys(&self) -> &[SparseKey] {
        &self.keys
    }
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
