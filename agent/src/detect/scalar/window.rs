//! The agent's scalar points: one per cell of the wall clock's grid of `[detect]
//! min_window` (every :00 and :30 by default), whatever the report interval. Each point
//! is the time-weighted mean of the interval values in its cell (for a rate, the
//! events of the cell over its length). An agent at 1 s and one at 10 s then score the
//! same points, learn over the same time and raise after the same time; one point per
//! interval made a 1 s agent learn in 2½ minutes what a 10 s agent learned in 25, and
//! raise after 2 seconds of a shift that the 10 s agent needed 20 seconds to see.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PointWindow {
    /// Sum of value × interval length (ns) over the cell so far.
    weighted: f64,
    /// Length of the intervals added (ns).
    elapsed_ns: u64,
}

impl PointWindow {
    /// Adds the value of the interval of `interval_ns` ending at `now` (unix ns); returns
    /// the cell's point once the interval is the cell's last. An interval belongs to
    /// the cell holding its middle, and it is the last when the next one (as long)
    /// would have its middle in a later cell. The first point of a series, begun
    /// mid-cell, spans at least half a cell.
    pub fn add(&mut self, value: f64, now: u64, interval_ns: u64, cell_ns: u64) -> Option<f64> {
        let cell_ns = cell_ns.max(1);
        self.weighted += value * interval_ns as f64;
        self.elapsed_ns += interval_ns;
        let middle = now.saturating_sub(interval_ns / 2);
        let next_middle = now.saturating_add(interval_ns / 2);
        if next_middle / cell_ns == middle / cell_ns || self.elapsed_ns < cell_ns / 2 {
            return None;
        }
        let point = self.weighted / self.elapsed_ns.max(1) as f64;
        *self = Self::default();
        Some(point)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    /// Points of a series sampled every `interval` seconds from `start`, at a rate that
    /// is 10/s before t = 600 s and 40/s after.
    fn points(interval: u64, start: u64) -> Vec<(u64, f64)> {
        let mut w = PointWindow::default();
        let mut out = Vec::new();
        let mut t = start;
        while t < 1200 {
            t += interval;
            let rate = if t <= 600 { 10.0 } else { 40.0 };
            if let Some(p) = w.add(rate, 1_800_000_000 * S + t * S, interval * S, 30 * S) {
                out.push((t, p));
            }
        }
        out
    }

    #[test]
    fn agents_at_1_s_and_10_s_score_the_same_points() {
        let one = points(1, 3);
        let ten = points(10, 3);
        // One point per 30 s cell either way (the first one spans at least half a cell).
        assert!((38..=40).contains(&one.len()), "{}", one.len());
        assert_eq!(one.len(), ten.len(), "{one:?}\n{ten:?}");
        for ((t1, p1), (t10, p10)) in one.iter().zip(&ten) {
            assert!(t1.abs_diff(*t10) <= 5, "{t1} vs {t10}");
            assert!((p1 - p10).abs() <= 10.0, "{t1}: {p1} vs {p10}");
        }
        // The step is seen in the cells after it at its full height at both.
        assert!(one.iter().chain(&ten).all(|&(t, p)| t < 640 || p == 40.0));
    }

    #[test]
    fn a_point_is_the_time_weighted_mean_of_its_intervals() {
        let mut w = PointWindow::default();
        // Cell [30 s, 60 s): 10 s at 1/s, then 20 s at 4/s → 3/s.
        assert_eq!(w.add(1.0, 40 * S, 10 * S, 30 * S), None);
        assert_eq!(w.add(4.0, 60 * S, 20 * S, 30 * S), Some(3.0));
    }
}
