//! Contextual novelty: the last few values, quantised to levels of the range the
//! series has shown, form contexts of growing length; the share of them never (or
//! not recently) seen is the novelty of a point. A daily pattern, or a new level
//! that persists, is seen again and stops being novel; a shape the series never
//! made is. Memory is a fixed ring of the most recent contexts.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::ScalarConfig;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Context {
    lo: f64,
    hi: f64,
    seen: u64,
    recent: VecDeque<u8>,
    /// Contexts in arrival order (bounded) and how often each is in the ring.
    ring: VecDeque<u64>,
    counts: HashMap<u64, u32>,
}

impl Context {
    /// Novelty of `x` in [0, 1]; learns it.
    pub fn observe(&mut self, x: f64, c: &ScalarConfig) -> f64 {
        if self.seen == 0 {
            self.lo = x;
            self.hi = x;
        }
        self.seen += 1;
        // The range follows the series: it grows at once and shrinks slowly, so one
        // outlier does not squash every later value into one level for ever.
        let span = self.hi - self.lo;
        self.hi = x.max(self.hi - span * c.range_decay);
        self.lo = x.min(self.lo + span * c.range_decay);
        let span = (self.hi - self.lo).max(1e-12);
        let q = (((x - self.lo) / span) * c.levels as f64).floor() as i64;
        let q = q.clamp(0, c.levels as i64 - 1) as u8;
        self.recent.push_back(q);
        if self.recent.len() > c.context_len {
            self.recent.pop_front();
        }
        let mut novel = 0;
        let mut judged = 0;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let suffix: Vec<u8> = self.recent.iter().rev().copied().collect();
        for (k, level) in suffix.into_iter().enumerate() {
            // FNV-1a over the suffix, with its length, so orders never collide.
            h ^= level as u64 + 1;
            h = h.wrapping_mul(0x0100_0000_01b3);
            let key = h ^ ((k as u64 + 1) << 56);
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
