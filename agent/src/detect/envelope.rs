//! The node's normal, window by window: how high each rule's quantile has gone in the
//! windows a series has shown over the baseline's horizon. The baseline holds the
//! series' average distribution; the envelope holds its ordinary excursions. A busy
//! shared node moves whole windows (a neighbour's build raises run-queue latency, their
//! I/O on the same disk a loop device's reads), and these recur: a window whose
//! quantile stays at a level the series has already reached in several windows of the
//! horizon shows nothing new, however far it lies from the average.

use serde::{Deserialize, Serialize};

use super::rules::RULES;
use crate::aggregate::ExpHistogram;

/// Decayed weight of windows at or above a level before that level is the node's
/// normal: two windows within a half-life of each other (1 + 0.5). One window at a
/// level can be the start of a regression; the same level reached again, in another
/// episode or a longer one, is something the node does.
pub const SEEN_WINDOWS: f64 = 1.5;

/// Weights below this are dropped (a level seen once, about eight half-lives ago).
const FORGOTTEN: f64 = 0.004;

/// Per rule, the decayed count of windows by the bucket (at the histograms' scale)
/// their quantile fell in.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Envelope {
    levels: [Vec<(i32, f64)>; 3],
    /// Windows noted.
    pub windows: u32,
}

/// Where a window's quantiles lie: one bucket per rule (`None`: in the zero bucket or
/// an empty window).
pub type Levels = [Option<i32>; 3];

/// The bucket of each rule's quantile in `window`.
pub fn levels_of(window: &ExpHistogram) -> Levels {
    let mut out = [None; 3];
    for (slot, (q, _)) in RULES.iter().enumerate() {
        out[slot] = window.quantile(*q).and_then(bucket_of_ns);
    }
    out
}

/// The bucket holding `ns` (the histograms' OTLP index at scale 3: bucket i holds
/// (base^i, base^(i+1)]), `None` for zero.
pub fn bucket_of_ns(ns: f64) -> Option<i32> {
    (ns > 0.0).then(|| (ns.log2() * f64::from(agent_common::hist::SUB_BUCKETS)).ceil() as i32 - 1)
}

impl Envelope {
    /// Notes one window's levels; older windows decay with `half_life` (in windows, the
    /// baseline's), so the envelope spans the same horizon as the baseline.
    pub fn note(&mut self, levels: &Levels, half_life: f64) {
        let decay = 0.5f64.powf(1.0 / half_life);
        for (slot, level) in levels.iter().enumerate() {
            let entries = &mut self.levels[slot];
            for (_, w) in entries.iter_mut() {
                *w *= decay;
            }
            entries.retain(|&(_, w)| w >= FORGOTTEN);
            if let Some(b) = level {
                match entries.binary_search_by_key(b, |&(i, _)| i) {
                    Ok(i) => entries[i].1 += 1.0,
                    Err(i) => entries.insert(i, (*b, 1.0)),
                }
            }
        }
        self.windows += 1;
    }

    /// Decayed windows whose rule-`slot` quantile was at `ns`'s bucket or above.
    pub fn seen_at_or_above(&self, slot: usize, ns: f64) -> f64 {
        let Some(b) = bucket_of_ns(ns) else {
            return self.levels[slot].iter().map(|&(_, w)| w).sum();
        };
        self.levels[slot]
            .iter()
            .filter(|&&(i, _)| i >= b)
            .map(|&(_, w)| w)
            .sum()
    }

    /// The highest level (upper bound of its bucket, ns) the rule's quantile has
    /// reached in at least `SEEN_WINDOWS` windows' weight; 0 when none.
    pub fn level_ns(&self, slot: usize) -> f64 {
        let mut above = 0.0;
        for &(i, w) in self.levels[slot].iter().rev() {
            above += w;
            if above >= SEEN_WINDOWS {
                return crate::aggregate::histogram::bucket_upper(i);
            }
        }
        0.0
    }

    /// Whether a window whose rule-`slot` quantile is `ns` stays within the normal.
    pub fn contains(&self, slot: usize, ns: f64) -> bool {
        self.seen_at_or_above(slot, ns) >= SEEN_WINDOWS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_level_is_normal_once_seen_in_two_windows_and_is_forgotten_over_the_horizon() {
        let mut e = Envelope::default();
        let level = |b: i32| [Some(b), Some(b + 8), Some(b + 16)];
        for _ in 0..50 {
            e.note(&level(100), 10.0);
        }
        let ns = |b: i32| crate::aggregate::histogram::bucket_lower(b) * 1.01;
        assert!(e.contains(0, ns(100)) && !e.contains(0, ns(101)));
        // One window at +20 buckets: not yet the node's normal; a second makes it so.
        e.note(&level(120), 10.0);
        assert!(!e.contains(0, ns(120)));
        e.note(&level(120), 10.0);
        assert!(e.contains(0, ns(119)) && e.contains(0, ns(120)));
        assert!(!e.contains(0, ns(121)));
        assert_eq!(
            e.level_ns(0),
            crate::aggregate::histogram::bucket_upper(120)
        );
        // Ten half-lives later it is forgotten.
        for _ in 0..100 {
            e.note(&level(100), 10.0);
        }
        assert!(!e.contains(0, ns(120)), "{e:?}");
    }

    #[test]
    fn levels_are_the_buckets_of_the_quantiles() {
        let h = ExpHistogram::from_buckets(0, 0, [(100, 50), (110, 40), (120, 10)]);
        let l = levels_of(&h);
        assert_eq!(l, [Some(100), Some(110), Some(120)]);
        assert_eq!(
            bucket_of_ns(crate::aggregate::histogram::bucket_lower(77) * 1.001),
            Some(77)
        );
        assert_eq!(
            bucket_of_ns(crate::aggregate::histogram::bucket_lower(78)),
            Some(77)
        );
        assert_eq!(bucket_of_ns(0.0), None);
    }
}
