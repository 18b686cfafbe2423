//! Which numbers of a report the scalar detector watches (`[detect.scalar]`): the
//! event rate of histogram families, the rate of counters and the interval mean of
//! histogram families that are not latencies. The agent's pipeline and the replay of
//! recordings take them from their reports through here, so a replay scores what the
//! agent scored.

use std::collections::BTreeMap;

use super::ScalarConfig;

/// One number of one series for one interval, for the scalar detector.
#[derive(Clone, Debug)]
pub struct ScalarInput {
    /// The family and what of it: `block.io.latency:rate` (events per second),
    /// `block.io.queue_depth:mean`.
    pub family: String,
    pub labels: BTreeMap<String, String>,
    pub unit: &'static str,
    pub value: f64,
    /// Only a rise is an anomaly: counters (errors, retransmits, busy time) and means
    /// (depth, size) falling below what is expected harm no one. An event rate is
    /// judged both ways: a device whose IOPS fall to nothing has stopped serving.
    pub rises_only: bool,
}

impl ScalarConfig {
    /// The rate and the mean of a histogram series that are watched. `labels` is called
    /// only for a watched number (a storage node has hundreds of series).
    pub fn series_inputs(
        &self,
        family: &str,
        rate_per_s: f64,
        mean: Option<f64>,
        labels: impl Fn() -> BTreeMap<String, String>,
    ) -> impl Iterator<Item = ScalarInput> {
        let unit = crate::catalog::unit(family);
        let rate = Self::watches(&self.rate_families, family).then(|| ScalarInput {
            family: format!("{family}:rate"),
            labels: labels(),
            unit: "/s",
            value: rate_per_s,
            rises_only: false,
        });
        let mean = mean
            .filter(|_| self.watches_mean(family, unit))
            .map(|value| ScalarInput {
                family: format!("{family}:mean"),
                labels: labels(),
                unit,
                value,
                rises_only: true,
            });
        rate.into_iter().chain(mean)
    }

    /// The rate of a counter series, when watched.
    pub fn counter_input(
        &self,
        family: &str,
        rate_per_s: f64,
        labels: impl FnOnce() -> BTreeMap<String, String>,
    ) -> Option<ScalarInput> {
        Self::watches(&self.counter_families, family).then(|| ScalarInput {
            family: format!("{family}:rate"),
            labels: labels(),
            unit: "/s",
            value: rate_per_s,
            rises_only: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_default_only_error_counters_are_watched_and_only_their_rises() {
        let c = ScalarConfig::default();
        let none = BTreeMap::new;
        assert_eq!(
            c.series_inputs("block.io.latency", 500.0, Some(3e5), none)
                .count(),
            0
        );
        assert_eq!(
            c.series_inputs("block.io.queue_depth", 500.0, Some(4.0), none)
                .count(),
            0
        );
        for watched in ["block.io.errors", "net.tcp.retransmits"] {
            let input = c.counter_input(watched, 2.0, none).expect(watched);
            assert_eq!(input.family, format!("{watched}:rate"));
            assert!(input.rises_only);
        }
        // The agent's own accounting and utilisation move with the load, not with a fault.
        for unwatched in [
            "block.io.unrecorded",
            "block.io.overcounted",
            "block.io.busy_time",
        ] {
            assert!(
                c.counter_input(unwatched, 2.0, none).is_none(),
                "{unwatched}"
            );
        }
    }

    #[test]
    fn named_families_give_rates_both_ways_and_means_of_non_latencies() {
        let c = ScalarConfig {
            rate_families: vec!["*".into()],
            mean_families: vec!["*".into()],
            ..ScalarConfig::default()
        };
        let labels = || BTreeMap::from([("device".to_owned(), "sda".to_owned())]);
        let latency: Vec<_> = c
            .series_inputs("block.io.latency", 500.0, Some(3e5), labels)
            .collect();
        assert_eq!(
            latency.len(),
            1,
            "a latency's mean is the latency detector's"
        );
        assert_eq!(
            (latency[0].family.as_str(), latency[0].rises_only),
            ("block.io.latency:rate", false)
        );
        let depth: Vec<_> = c
            .series_inputs("block.io.queue_depth", 500.0, Some(4.0), labels)
            .collect();
        assert_eq!(depth.len(), 2);
        assert_eq!(depth[1].family, "block.io.queue_depth:mean");
        assert_eq!((depth[1].value, depth[1].rises_only), (4.0, true));
        assert_eq!(depth[1].labels, labels());
    }
}
