//! Contextual novelty: the last few values, quantised to levels of the range the
//! series has shown, form contexts of growing length; the share of them never (or
//! not recently) seen is the novelty of a point. A daily pattern, or a new level
//! that persists, is seen again and stops being novel; a shape the series never
//! made is. Memory is a fixed ring of the most recent contexts.
//!
//! Saved state holds the recent levels, not the ring: the ring's hashes are
//! recomputed from them at the first point after a restore (a few hundred bytes a
//! series saved instead of ~130 KB of hashes that do not compress).

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::ScalarConfig;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Context {
    lo: f64,
    hi: f64,
    /// The range was given (the series' known bounds) and is not learned.
    #[serde(default)]
    fixed: bool,
    seen: u64,
    /// The last levels: enough of them to recompute the ring (`history_len`).
    recent: VecDeque<u8>,
    /// Contexts in arrival order (bounded) and how often each is in the ring; not
    /// saved, recomputed from `recent`.
    #[serde(skip)]
    ring: VecDeque<u64>,
    #[serde(skip)]
    counts: HashMap<u64, u32>,
}

/// Levels kept: every context in a full ring ends at one of them, and starts within them.
fn history_len(c: &ScalarConfig) -> usize {
    c.context_capacity.div_ceil(c.context_len) + c.context_len
}

impl Context {
    /// Quantises against `lo..=hi` from the start, without learning the range (where
    /// the series' bounds are known, as NAB tells every detector its file's).
    pub fn set_range(&mut self, lo: f64, hi: f64) {
        self.lo = lo;
        self.hi = hi;
        self.fixed = true;
    }

    /// Novelty of `x` in [0, 1]; learns it.
    pub fn observe(&mut self, x: f64, c: &ScalarConfig) -> f64 {
        if self.seen == 0 && !self.fixed {
            self.lo = x;
            self.hi = x;
        }
        if self.ring.is_empty() && !self.recent.is_empty() {
            self.rebuild(c);
        }
        self.seen += 1;
        // The range follows the series: it grows at once and shrinks slowly, so one
        // outlier does not squash every later value into one level for ever.
        let span = self.hi - self.lo;
        let decay = if self.fixed { 0.0 } else { c.range_decay };
        self.hi = x.max(self.hi - span * decay);
        self.lo = x.min(self.lo + span * decay);
        let span = (self.hi - self.lo).max(1e-12);
        let q = (((x - self.lo) / span) * c.levels as f64).floor() as i64;
        let q = q.clamp(0, c.levels as i64 - 1) as u8;
        self.recent.push_back(q);
        while self.recent.len() > history_len(c) {
            self.recent.pop_front();
        }
        let mut novel = 0;
        let mut judged = 0;
        let ending_here: Vec<u64> = keys(&self.recent, self.recent.len(), c).collect();
        for key in ending_here {
            judged += 1;
            if !self.counts.contains_key(&key) {
                novel += 1;
            }
            self.remember(key, c);
        }
        if (self.seen as usize) <= c.context_len || judged == 0 {
            return 0.0;
        }
        novel as f64 / judged as f64
    }

    /// The ring and counts as they were when `recent` was saved: the contexts that
    /// ended at each kept level, oldest first. When levels before the kept ones were
    /// seen, the first few contexts would be cut short: they are left out, and only
    /// fall outside a full ring anyway.
    fn rebuild(&mut self, c: &ScalarConfig) {
        let cut = self.seen as usize > self.recent.len();
        for end in 1..=self.recent.len() {
            if cut && end < c.context_len {
                continue;
            }
            for key in keys(&self.recent, end, c).collect::<Vec<_>>() {
                self.remember(key, c);
            }
        }
    }

    #[cfg(test)]
    pub(super) fn ring(&self) -> (&VecDeque<u64>, &HashMap<u64, u32>) {
        (&self.ring, &self.counts)
    }

    fn remember(&mut self, key: u64, c: &ScalarConfig) {
        *self.counts.entry(key).or_default() += 1;
        self.ring.push_back(key);
        while self.ring.len() > c.context_capacity {
            let old = self.ring.pop_front().expect("non-empty");
            if let Some(n) = self.counts.get_mut(&old) {
                *n -= 1;
                if *n == 0 {
                    self.counts.remove(&old);
                }
            }
        }
    }
}

/// The contexts ending at the level before `end` in `levels`: suffixes of length 1 to
/// `context_len` (FNV-1a over the suffix, with its length, so orders never collide).
fn keys(levels: &VecDeque<u8>, end: usize, c: &ScalarConfig) -> impl Iterator<Item = u64> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    levels
        .range(..end)
        .rev()
        .take(c.context_len)
        .enumerate()
        .map(move |(k, &level)| {
            h ^= level as u64 + 1;
            h = h.wrapping_mul(0x0100_0000_01b3);
            h ^ ((k as u64 + 1) << 56)
        })
}
