//! Series identity and the per-interval delta of cumulative kernel readings.

use std::collections::HashMap;

use serde::Serialize;

use super::ExpHistogram;

/// A metric family and its label set, e.g. `block.io.latency{device=sda,op=read}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SeriesKey {
    pub family: &'static str,
    pub labels: Vec<(&'static str, String)>,
}

impl SeriesKey {
    pub fn new(
        family: &'static str,
        labels: impl IntoIterator<Item = (&'static str, String)>,
    ) -> Self {
        Self {
            family,
            labels: labels.into_iter().collect(),
        }
    }

    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One series over one interval: what happened in it and the running total.
#[derive(Clone, Debug, Serialize)]
pub struct IntervalSeries {
    pub key: SeriesKey,
    pub delta: ExpHistogram,
    pub cumulative: ExpHistogram,
}

/// Remembers the last cumulative reading of every series to produce interval deltas.
#[derive(Default)]
pub struct Delta {
    previous: HashMap<SeriesKey, ExpHistogram>,
}

impl Delta {
    /// Deltas since the previous call, sorted by key. A series seen for the first time
    /// counts from zero: the kernel maps are created empty when the agent starts.
    pub fn update(&mut self, readings: Vec<(SeriesKey, ExpHistogram)>) -> Vec<IntervalSeries> {
        let mut out: Vec<IntervalSeries> = readings
            .into_iter()
            .map(|(key, cumulative)| {
                let delta = match self.previous.get(&key) {
                    Some(before) => cumulative.since(before),
                    None => cumulative.clone(),
                };
                self.previous.insert(key.clone(), cumulative.clone());
                IntervalSeries {
                    key,
                    delta,
                    cumulative,
                }
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }
}

/// One counter series over one interval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IntervalCounter {
    pub key: SeriesKey,
    pub delta: u64,
    pub total: u64,
}

/// Remembers the last reading of every kernel counter series to produce deltas.
#[derive(Default)]
pub struct CounterDelta {
    previous: HashMap<SeriesKey, u64>,
}

impl CounterDelta {
    /// Increases since the previous call, sorted by key; totals count from the agent's
    /// start (kernel counters start at zero when the maps are created).
    pub fn update(&mut self, readings: Vec<(SeriesKey, u64)>) -> Vec<IntervalCounter> {
        let mut out: Vec<IntervalCounter> = readings
            .into_iter()
            .map(|(key, total)| {
                let before = self.previous.insert(key.clone(), total).unwrap_or(0);
                IntervalCounter {
                    key,
                    delta: counter_delta(total, before),
                    total,
                }
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }
}

/// Increase of a monotonic kernel counter; a counter that went backwards was reset.
pub fn counter_delta(now: u64, before: u64) -> u64 {
    now.checked_sub(before).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(counts: &[u64]) -> ExpHistogram {
        ExpHistogram::from_dense(counts.iter().sum(), 0, counts)
    }

    #[test]
    fn first_reading_is_its_own_delta_then_differences() {
        let key = SeriesKey::new("f", [("op", "read".to_owned())]);
        let mut d = Delta::default();
        let first = d.update(vec![(key.clone(), hist(&[0, 3, 1]))]);
        assert_eq!(first[0].delta.count(), 4);
        let second = d.update(vec![(key.clone(), hist(&[0, 5, 1]))]);
        assert_eq!(second[0].delta.count(), 2);
        assert_eq!(second[0].cumulative.count(), 6);
        let third = d.update(vec![(key, hist(&[0, 5, 1]))]);
        assert!(third[0].delta.is_empty());
    }

    #[test]
    fn counters() {
        assert_eq!(counter_delta(10, 4), 6);
        assert_eq!(counter_delta(3, 4), 3);
    }

    #[test]
    fn counter_series_report_interval_increases() {
        let key = SeriesKey::new("f", [("error", "ioerr".to_owned())]);
        let mut d = CounterDelta::default();
        assert_eq!(d.update(vec![(key.clone(), 3)])[0].delta, 3);
        let second = d.update(vec![(key.clone(), 7)]);
        assert_eq!((second[0].delta, second[0].total), (4, 7));
        assert_eq!(d.update(vec![(key, 7)])[0].delta, 0);
    }
}
