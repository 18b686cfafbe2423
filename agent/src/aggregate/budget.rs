//! The cardinality budget: per labelled family, the entities (a cgroup, a VM, a device)
//! with the most samples in the interval keep their own series; the rest fold into one
//! `other` series per remaining label set (e.g. per exit reason), so the number of
//! series a node exports is bounded whatever runs on it.

use std::collections::{BTreeMap, HashMap};

use super::{ExpHistogram, IntervalSeries, SeriesKey};
use serde::Deserialize;

/// Which labels identify the entity of a family, and how many entities to keep.
#[derive(Clone, Debug)]
pub struct Rule {
    pub family: &'static str,
    /// The first is set to `other` when folding; the others are dropped.
    pub identity: &'static [&'static str],
    pub keep: usize,
}

pub const OTHER: &str = "other";

impl Rule {
    /// Keeps the `limits.max_devices` busiest block devices.
    pub fn per_device(family: &'static str, limits: &LimitsConfig) -> Self {
        Self {
            family,
            identity: &crate::attribution::devices::SERIES_IDENTITY,
            keep: limits.max_devices,
        }
    }

    /// Keeps the `limits.max_cgroups` busiest cgroups.
    pub fn per_cgroup(family: &'static str, limits: &LimitsConfig) -> Self {
        Self {
            family,
            identity: &["cgroup"],
            keep: limits.max_cgroups,
        }
    }

    /// Keeps the `limits.max_vms` busiest VMs.
    pub fn per_vm(family: &'static str, limits: &LimitsConfig) -> Self {
        Self {
            family,
            identity: crate::attribution::vms::SERIES_IDENTITY,
            keep: limits.max_vms,
        }
    }
}

/// Applies the rules to one interval's series. Families without a rule pass through.
/// The kept entities are chosen by their delta counts; folded series add their deltas
/// into `other`, whose cumulative value is the running sum of what was folded.
pub struct Budget {
    rules: Vec<Rule>,
    other_cumulative: HashMap<SeriesKey, ExpHistogram>,
}

impl Budget {
    pub fn new(rules: Vec<Rule>) -> Self {
        Self {
            rules,
            other_cumulative: HashMap::new(),
        }
    }

    /// New rules (a `[limits]` reload); the `other` series keep their cumulative
    /// values, which the exported start time still covers (a fresh sum would read as
    /// a counter reset).
    pub fn set_rules(&mut self, rules: Vec<Rule>) {
        self.rules = rules;
    }

    pub fn apply(&mut self, series: Vec<IntervalSeries>) -> Vec<IntervalSeries> {
        let mut out = Vec::with_capacity(series.len());
        let mut by_family: BTreeMap<&'static str, Vec<IntervalSeries>> = BTreeMap::new();
        for s in series {
            by_family.entry(s.key.family).or_default().push(s);
        }
        for (family, members) in by_family {
            match self.rules.iter().find(|r| r.family == family).cloned() {
                Some(rule) => out.extend(self.fold(&rule, members)),
                None => out.extend(members),
            }
        }
        out
    }

    fn fold(&mut self, rule: &Rule, members: Vec<IntervalSeries>) -> Vec<IntervalSeries> {
        let identity = |k: &SeriesKey| -> Vec<String> {
            rule.identity
                .iter()
                .map(|l| k.label(l).unwrap_or_default().to_owned())
                .collect()
        };
        // Samples per entity this interval; ties broken by name for stable output.
        let mut totals: HashMap<Vec<String>, u64> = HashMap::new();
        for s in &members {
            *totals.entry(identity(&s.key)).or_default() += s.delta.count();
        }
        if totals.len() <= rule.keep {
            return members;
        }
        let mut ranked: Vec<(Vec<String>, u64)> = totals.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let kept: Vec<Vec<String>> = ranked.into_iter().take(rule.keep).map(|(e, _)| e).collect();

        let mut out = Vec::new();
        let mut other: BTreeMap<SeriesKey, ExpHistogram> = BTreeMap::new();
        for s in members {
            if kept.contains(&identity(&s.key)) {
                out.push(s);
                continue;
            }
            let labels = s
                .key
                .labels
                .iter()
                .filter(|(k, _)| !rule.identity[1..].contains(k))
                .map(|(k, v)| {
                    let v = if *k == rule.identity[0] {
                        OTHER.to_owned()
                    } else {
                        v.clone()
                    };
                    (*k, v)
                })
                .collect::<Vec<_>>();
            other
                .entry(SeriesKey::new(rule.family, labels))
                .or_default()
                .merge(&s.delta);
        }
        for (key, delta) in other {
            let cumulative = self.other_cumulative.entry(key.clone()).or_default();
            cumulative.merge(&delta);
            out.push(IntervalSeries {
                key,
                delta,
                cumulative: cumulative.clone(),
            });
        }
        out
    }
}

/// Cardinality budget: per labelled family, the largest series (by samples in the
/// interval) are kept and the rest fold into one `other` series.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_devices: usize,
    pub max_cgroups: usize,
    pub max_vms: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_devices: 64,
            max_cgroups: 50,
            max_vms: 100,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(vm: &str, reason: &str, count: u64) -> IntervalSeries {
        let h = ExpHistogram::from_buckets(count * 1000, 0, [(80, count)]);
        IntervalSeries {
            key: SeriesKey::new(
                "kvm",
                [
                    ("vm", vm.to_owned()),
                    ("vm.uuid", format!("uuid-{vm}")),
                    ("reason", reason.to_owned()),
                ],
            ),
            delta: h.clone(),
            cumulative: h,
        }
    }

    fn rule(keep: usize) -> Budget {
        Budget::new(vec![Rule {
            family: "kvm",
            identity: &["vm", "vm.uuid"],
            keep,
        }])
    }

    #[test]
    fn keeps_the_busiest_and_folds_the_rest_per_remaining_labels() {
        let input = vec![
            series("a", "io", 100),
            series("b", "io", 5),
            series("b", "hlt", 7),
            series("c", "io", 50),
            series("d", "hlt", 1),
        ];
        let out = rule(2).apply(input);
        let find = |vm: &str, reason: &str| {
            out.iter()
                .find(|s| s.key.label("vm") == Some(vm) && s.key.label("reason") == Some(reason))
                .map(|s| s.delta.count())
        };
        assert_eq!(find("a", "io"), Some(100));
        assert_eq!(find("c", "io"), Some(50));
        assert_eq!(find("b", "io"), None);
        assert_eq!(find(OTHER, "io"), Some(5));
        assert_eq!(find(OTHER, "hlt"), Some(8));
        let other = out
            .iter()
            .find(|s| s.key.label("vm") == Some(OTHER))
            .unwrap();
        assert_eq!(
            other.key.label("vm.uuid"),
            None,
            "secondary identity labels dropped"
        );
        // Nothing lost.
        assert_eq!(out.iter().map(|s| s.delta.count()).sum::<u64>(), 163);
    }

    #[test]
    fn under_budget_passes_through_and_other_families_untouched() {
        let mut b = rule(10);
        let out = b.apply(vec![series("a", "io", 1), series("b", "io", 2)]);
        assert_eq!(out.len(), 2);
        let mut plain = series("a", "io", 3);
        plain.key.family = "block";
        assert_eq!(rule(1).apply(vec![plain.clone()])[0].key, plain.key);
    }

    #[test]
    fn other_accumulates_across_intervals() {
        let mut b = rule(1);
        b.apply(vec![series("a", "io", 10), series("b", "io", 3)]);
        let out = b.apply(vec![series("a", "io", 10), series("b", "io", 4)]);
        let other = out
            .iter()
            .find(|s| s.key.label("vm") == Some(OTHER))
            .unwrap();
        assert_eq!(other.delta.count(), 4);
        assert_eq!(other.cumulative.count(), 7);
    }

    #[test]
    fn new_rules_keep_the_other_series_cumulative() {
        let input = || {
            vec![
                series("a", "io", 100),
                series("b", "io", 5),
                series("c", "io", 3),
            ]
        };
        let other = |out: Vec<IntervalSeries>| {
            out.into_iter()
                .find(|s| s.key.label("vm") == Some(OTHER))
                .map(|s| (s.delta.count(), s.cumulative.count()))
        };
        let mut budget = rule(2);
        assert_eq!(other(budget.apply(input())), Some((3, 3)));
        budget.set_rules(rule(1).rules);
        assert_eq!(other(budget.apply(input())), Some((8, 11)));
    }
}
