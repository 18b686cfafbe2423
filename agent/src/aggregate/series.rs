//! Series identity and the per-interval delta of cumulative kernel readings.

use std::collections::HashMap;

use serde::Serialize;

use super::{
    ExpHistogram,
    identity::{Entity, EntityState, Identities},
    saved::{SavedCounter, SavedReading, load_labels, save_labels},
};
use crate::util::intern::intern;

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
        // Every label value, whatever its source, is safe to show: the attribution
        // modules bound theirs already; cgroup paths and the like are escaped here but
        // not cut (two long paths differing only at the end must stay two series).
        Self {
            family,
            labels: labels
                .into_iter()
                .map(|(k, v)| match crate::util::text::escape(&v) {
                    std::borrow::Cow::Borrowed(_) => (k, v),
                    std::borrow::Cow::Owned(safe) => (k, safe),
                })
                .collect(),
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

/// A cumulative reading and, when the series is about a kernel-keyed entity, that
/// entity as the probe found it.
#[derive(Clone, Debug)]
pub struct TrackedReading {
    pub key: SeriesKey,
    pub hist: ExpHistogram,
    pub entity: Option<EntityState>,
}

/// One collection's interval series, and the entities whose series ended with it.
#[derive(Debug, Default)]
pub struct Collected {
    pub series: Vec<IntervalSeries>,
    /// Entities gone long enough that their last counts are in `series`: their kernel
    /// map entries can be deleted, and their series are not reported again.
    pub ended: Vec<Entity>,
}

/// What a delta is kept against: the kernel's key, not the labels resolved for it
/// (a VM's name stops resolving when its process exits; its counts are still there).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct DeltaKey {
    family: &'static str,
    entity: Option<Entity>,
    /// The labels that do not describe the entity (all of them without one).
    labels: Vec<(&'static str, String)>,
}

/// Remembers the last cumulative reading of every series to produce interval deltas.
#[derive(Default)]
pub struct Delta {
    previous: HashMap<DeltaKey, ExpHistogram>,
    identities: Identities,
}

impl Delta {
    /// The last readings and identities, to be saved.
    pub fn save(&self) -> (Vec<SavedReading>, Vec<super::saved::SavedIdentity>) {
        let mut histograms: Vec<SavedReading> = self
            .previous
            .iter()
            .map(|(k, hist)| SavedReading {
                family: k.family.to_owned(),
                entity: k.entity,
                labels: save_labels(&k.labels),
                hist: hist.clone(),
            })
            .collect();
        histograms.sort_by(|a, b| (&a.family, &a.labels).cmp(&(&b.family, &b.labels)));
        (histograms, self.identities.save())
    }

    /// Deltas computed against saved readings: the first one after a restart is what
    /// the kernel counted since the previous run's last report.
    pub fn load(
        histograms: Vec<SavedReading>,
        identities: Vec<super::saved::SavedIdentity>,
    ) -> Self {
        Self {
            previous: histograms
                .into_iter()
                .map(|r| {
                    let key = DeltaKey {
                        family: intern(&r.family),
                        entity: r.entity,
                        labels: load_labels(r.labels),
                    };
                    (key, r.hist)
                })
                .collect(),
            identities: Identities::load(identities),
        }
    }

    /// Deltas since the previous call, sorted by key, for series without an entity.
    pub fn update(&mut self, readings: Vec<(SeriesKey, ExpHistogram)>) -> Vec<IntervalSeries> {
        self.update_tracked(
            readings
                .into_iter()
                .map(|(key, hist)| TrackedReading {
                    key,
                    hist,
                    entity: None,
                })
                .collect(),
        )
        .series
    }

    /// Deltas since the previous call, sorted by key. A series seen for the first time
    /// counts from zero: the kernel maps are created empty when the agent starts, and
    /// an ended entity's entries are deleted. A series of an entity that is gone keeps
    /// the labels last resolved for it until it ends.
    pub fn update_tracked(&mut self, readings: Vec<TrackedReading>) -> Collected {
        let mut seen: HashMap<Entity, bool> = HashMap::new();
        let mut out: Vec<IntervalSeries> = readings
            .into_iter()
            .map(|r| {
                let (delta_key, key) = match r.entity {
                    None => (
                        DeltaKey {
                            family: r.key.family,
                            entity: None,
                            labels: r.key.labels.clone(),
                        },
                        r.key,
                    ),
                    Some(state) => {
                        *seen.entry(state.entity).or_default() |= state.alive;
                        let own = state.labels.min(r.key.labels.len());
                        let delta_key = DeltaKey {
                            family: r.key.family,
                            entity: Some(state.entity),
                            labels: r.key.labels[own..].to_vec(),
                        };
                        let labels = self.identities.labels(state, r.key.labels);
                        (delta_key, SeriesKey::new(r.key.family, labels))
                    }
                };
                let cumulative = r.hist;
                let delta = match self.previous.get(&delta_key) {
                    Some(before) => cumulative.since(before),
                    None => cumulative.clone(),
                };
                self.previous.insert(delta_key, cumulative.clone());
                IntervalSeries {
                    key,
                    delta,
                    cumulative,
                }
            })
            .collect();
        let ended = self.identities.close(&seen);
        if !ended.is_empty() {
            self.previous
                .retain(|k, _| k.entity.is_none_or(|e| !ended.contains(&e)));
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Collected { series: out, ended }
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
    pub fn save(&self) -> Vec<SavedCounter> {
        let mut saved: Vec<SavedCounter> = self
            .previous
            .iter()
            .map(|(k, &total)| SavedCounter {
                family: k.family.to_owned(),
                labels: save_labels(&k.labels),
                total,
            })
            .collect();
        saved.sort_by(|a, b| (&a.family, &a.labels).cmp(&(&b.family, &b.labels)));
        saved
    }

    pub fn load(saved: Vec<SavedCounter>) -> Self {
        Self {
            previous: saved
                .into_iter()
                .map(|c| {
                    let key = SeriesKey::new(intern(&c.family), load_labels(c.labels));
                    (key, c.total)
                })
                .collect(),
        }
    }

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
    #[test]
    fn label_values_are_escaped_for_people_whatever_their_source() {
        let path = "/kubepods/pod-\u{202e}gpj.exe/\u{1b}[2J";
        let key = super::SeriesKey::new("f", [("cgroup", path.to_owned())]);
        assert_eq!(
            key.label("cgroup"),
            Some("/kubepods/pod-\\u{202e}gpj.exe/\\u{1b}[2J")
        );
        // Long paths are not cut: two that differ only at the end stay two series.
        let long = format!("/{}", "a".repeat(300));
        let key = super::SeriesKey::new("f", [("cgroup", long.clone())]);
        assert_eq!(key.label("cgroup"), Some(long.as_str()));
    }

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

    fn vm_reading(name: &str, alive: bool, counts: &[u64]) -> TrackedReading {
        TrackedReading {
            key: SeriesKey::new(
                "kvm.exit.userspace.latency",
                [("vm", name.to_owned()), ("reason", "io".to_owned())],
            ),
            hist: hist(counts),
            entity: Some(EntityState::new(Entity::Process(77), 1, alive)),
        }
    }

    #[test]
    fn an_exited_process_is_counted_once_under_its_name_then_ends() {
        let mut d = Delta::default();
        let first = d.update_tracked(vec![vm_reading("guest", true, &[5])]);
        assert_eq!(first.series[0].delta.count(), 5);
        // Exited mid-interval: its name no longer resolves, its counts grew.
        let second = d.update_tracked(vec![vm_reading("pid:77", false, &[9])]);
        assert_eq!(second.series[0].key.label("vm"), Some("guest"));
        assert_eq!(second.series[0].delta.count(), 4, "not all 9 again");
        assert!(second.ended.is_empty());
        let third = d.update_tracked(vec![vm_reading("pid:77", false, &[10])]);
        assert_eq!(third.series[0].key.label("vm"), Some("guest"));
        assert_eq!(
            third.series[0].delta.count(),
            1,
            "counted after the first read"
        );
        assert_eq!(third.ended, vec![Entity::Process(77)]);
        // Its entries are deleted; a new process with the same pid starts from zero.
        let reuse = d.update_tracked(vec![vm_reading("other", true, &[2])]);
        assert_eq!(reuse.series[0].delta.count(), 2);
        assert_eq!(reuse.series[0].key.label("vm"), Some("other"));
    }

    #[test]
    fn saved_readings_continue_the_deltas_of_the_previous_run() {
        let key = SeriesKey::new("f", [("op", "read".to_owned())]);
        let plain = |counts: &[u64]| TrackedReading {
            key: key.clone(),
            hist: hist(counts),
            entity: None,
        };
        let mut before = Delta::default();
        before.update_tracked(vec![plain(&[0, 3, 1]), vm_reading("guest", true, &[5])]);
        let (histograms, identities) = before.save();
        let text = serde_json::to_string(&(histograms, identities)).unwrap();
        let (histograms, identities) = serde_json::from_str(&text).unwrap();
        let mut after = Delta::load(histograms, identities);
        // The kernel counted on while no agent ran: only that is the first delta, and
        // a VM gone meanwhile keeps the name the previous run resolved.
        let first =
            after.update_tracked(vec![plain(&[0, 5, 2]), vm_reading("pid:77", false, &[9])]);
        let (plain_series, vm) = (&first.series[0], &first.series[1]);
        assert_eq!(plain_series.delta.count(), 3);
        assert_eq!(plain_series.cumulative.count(), 7);
        assert_eq!(vm.key.label("vm"), Some("guest"));
        assert_eq!(vm.delta.count(), 4);

        let mut counters = CounterDelta::default();
        let c = SeriesKey::new("c", [("dev", "7:0".to_owned())]);
        counters.update(vec![(c.clone(), 10)]);
        let mut again = CounterDelta::load(counters.save());
        assert_eq!(again.update(vec![(c, 12)])[0].delta, 2);
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
