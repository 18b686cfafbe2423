//! Series identity and the per-interval delta of cumulative kernel readings.

use std::collections::HashMap;

use serde::Serialize;

use super::{
    ExpHistogram,
    identity::{Entity, EntityState, Identities},
    saved::{
        SavedCarried, SavedCarriedCounter, SavedCounter, SavedReading, load_labels, save_labels,
    },
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

impl DeltaKey {
    /// The key of a reading; also the number of its labels that describe its entity.
    fn of(r: &TrackedReading) -> (Self, usize) {
        match r.entity {
            None => (
                Self {
                    family: r.key.family,
                    entity: None,
                    labels: r.key.labels.clone(),
                },
                0,
            ),
            Some(state) => {
                let own = state.labels.min(r.key.labels.len());
                let key = Self {
                    family: r.key.family,
                    entity: Some(state.entity),
                    labels: r.key.labels[own..].to_vec(),
                };
                (key, own)
            }
        }
    }
}

/// A series continued from an older pin set: `offset` is what the old map had counted
/// at the switch, `base` what the new map had counted of the same events then.
#[derive(Clone, Debug)]
struct Carried {
    base: ExpHistogram,
    offset: ExpHistogram,
}

impl Carried {
    fn apply(&self, reading: &ExpHistogram) -> ExpHistogram {
        let mut h = reading.since(&self.base);
        h.merge(&self.offset);
        h
    }
}

/// Remembers the last cumulative reading of every series to produce interval deltas.
#[derive(Default)]
pub struct Delta {
    previous: HashMap<DeltaKey, ExpHistogram>,
    carried: HashMap<DeltaKey, Carried>,
    identities: Identities,
}

impl Delta {
    /// Continues the series of an older pin set's maps (see `crate::probes::handover`):
    /// `old` is what its maps held at the switch, `base` what this set's maps held of
    /// the same events then. Series in neither start again from zero (their maps were
    /// reset). A series only this set had counted at the switch is still taken from
    /// `base` on: those events are the old set's, counted there under another series
    /// (a completion whose issue came before this set's issue program was attached is
    /// `unmatched` here but recorded by the old set). Returns how many series continue.
    pub fn carry(&mut self, old: Vec<TrackedReading>, base: Vec<TrackedReading>) -> usize {
        let mut base: HashMap<DeltaKey, ExpHistogram> = base
            .into_iter()
            .map(|r| (DeltaKey::of(&r).0, r.hist))
            .collect();
        let mut old: HashMap<DeltaKey, ExpHistogram> = old
            .into_iter()
            .map(|r| (DeltaKey::of(&r).0, r.hist))
            .collect();
        // A series carried into the old set that its maps never counted is still
        // carried: its total is what the sets before counted.
        for key in self.carried.keys() {
            old.entry(key.clone()).or_default();
        }
        let mut carried = HashMap::new();
        for (key, hist) in old {
            // Counted since the first set of the series' start time.
            let offset = match self.carried.get(&key) {
                Some(c) => c.apply(&hist),
                None => hist,
            };
            if offset.is_empty() {
                continue;
            }
            let base = base.remove(&key).unwrap_or_default();
            carried.insert(key, Carried { base, offset });
        }
        let continued = carried.len();
        for (key, base) in base.into_iter().filter(|(_, h)| !h.is_empty()) {
            let offset = ExpHistogram::default();
            carried.insert(key, Carried { base, offset });
        }
        self.previous.retain(|k, _| carried.contains_key(k));
        self.carried = carried;
        continued
    }

    /// The carried series, to be saved.
    pub fn save_carried(&self) -> Vec<SavedCarried> {
        let mut out: Vec<SavedCarried> = self
            .carried
            .iter()
            .map(|(k, c)| SavedCarried {
                family: k.family.to_owned(),
                entity: k.entity,
                labels: save_labels(&k.labels),
                base: c.base.clone(),
                offset: c.offset.clone(),
            })
            .collect();
        out.sort_by(|a, b| (&a.family, &a.labels).cmp(&(&b.family, &b.labels)));
        out
    }

    /// Takes up saved carried series (with [`Self::load`]).
    pub fn with_carried(mut self, saved: Vec<SavedCarried>) -> Self {
        self.carried = saved
            .into_iter()
            .map(|c| {
                let key = DeltaKey {
                    family: intern(&c.family),
                    entity: c.entity,
                    labels: load_labels(c.labels),
                };
                let carried = Carried {
                    base: c.base,
                    offset: c.offset,
                };
                (key, carried)
            })
            .collect();
        self
    }

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
            carried: HashMap::new(),
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
                let (delta_key, _) = DeltaKey::of(&r);
                let key = match r.entity {
                    None => r.key,
                    Some(state) => {
                        *seen.entry(state.entity).or_default() |= state.alive;
                        let labels = self.identities.labels(state, r.key.labels);
                        SeriesKey::new(r.key.family, labels)
                    }
                };
                let cumulative = match self.carried.get(&delta_key) {
                    Some(c) => c.apply(&r.hist),
                    None => r.hist,
                };
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
            self.carried
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
    /// Series continued from an older pin set: (base, offset), as for histograms.
    carried: HashMap<SeriesKey, (u64, u64)>,
}

impl CounterDelta {
    /// Continues the counters of an older pin set's maps (see [`Delta::carry`]).
    pub fn carry(&mut self, old: Vec<(SeriesKey, u64)>, base: Vec<(SeriesKey, u64)>) -> usize {
        let carried = carry_totals(&self.carried, old, base);
        self.previous.retain(|k, _| carried.contains_key(k));
        self.carried = carried;
        self.carried.len()
    }

    pub fn save_carried(&self) -> Vec<SavedCarriedCounter> {
        let mut out: Vec<SavedCarriedCounter> = self
            .carried
            .iter()
            .map(|(k, &(base, offset))| SavedCarriedCounter {
                family: k.family.to_owned(),
                labels: save_labels(&k.labels),
                base,
                offset,
            })
            .collect();
        out.sort_by(|a, b| (&a.family, &a.labels).cmp(&(&b.family, &b.labels)));
        out
    }

    pub fn with_carried(mut self, saved: Vec<SavedCarriedCounter>) -> Self {
        self.carried = saved
            .into_iter()
            .map(|c| {
                let key = SeriesKey::new(intern(&c.family), load_labels(c.labels));
                (key, (c.base, c.offset))
            })
            .collect();
        self
    }

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
            carried: HashMap::new(),
        }
    }

    /// Increases since the previous call, sorted by key; totals count from the agent's
    /// start (kernel counters start at zero when the maps are created).
    pub fn update(&mut self, readings: Vec<(SeriesKey, u64)>) -> Vec<IntervalCounter> {
        let mut out: Vec<IntervalCounter> = readings
            .into_iter()
            .map(|(key, total)| {
                let total = carried_total(self.carried.get(&key).copied(), total);
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

/// A counter's total with what an older pin set had counted: (base, offset) from
/// [`carry_totals`].
pub fn carried_total(carried: Option<(u64, u64)>, now: u64) -> u64 {
    match carried {
        Some((base, offset)) => offset + now.saturating_sub(base),
        None => now,
    }
}

/// (base, offset) of every counter at the switch that either set had counted: its
/// offset what the old set had (including what was carried into it), its base what
/// the new set had counted of the same events. A counter only the new set had is
/// still counted from its base, as in [`Delta::carry`].
pub fn carry_totals<K: Clone + Eq + std::hash::Hash>(
    before: &HashMap<K, (u64, u64)>,
    old: Vec<(K, u64)>,
    base: Vec<(K, u64)>,
) -> HashMap<K, (u64, u64)> {
    let mut totals: HashMap<K, (u64, u64)> = HashMap::new();
    for (k, total) in old {
        totals.entry(k).or_default().1 = total;
    }
    // Carried into the old set and not counted by it since: still carried.
    for k in before.keys() {
        totals.entry(k.clone()).or_default();
    }
    for (k, b) in base {
        totals.entry(k).or_default().0 = b;
    }
    totals
        .into_iter()
        .map(|(k, (b, total))| {
            let offset = carried_total(before.get(&k).copied(), total);
            (k, (b, offset))
        })
        .filter(|&(_, (b, offset))| b != 0 || offset != 0)
        .collect()
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

    /// An upgrade: the old set counted 10 until its last save and 12 at the switch, the
    /// new set had seen 3 of those by then and counts 5 more afterwards: 7 in the first
    /// report. A series whose map was reset starts again.
    #[test]
    fn a_carried_series_continues_from_the_old_maps_and_a_reset_one_starts_again() {
        let read = SeriesKey::new("f", [("op", "read".to_owned())]);
        let write = SeriesKey::new("f", [("op", "write".to_owned())]);
        let tracked = |key: &SeriesKey, h| TrackedReading {
            key: key.clone(),
            hist: h,
            entity: None,
        };
        let mut before = Delta::default();
        before.update(vec![
            (read.clone(), hist(&[4, 6])),
            (write.clone(), hist(&[7])),
        ]);
        let (saved, identities) = before.save();
        let mut d = Delta::load(saved, identities);
        let carried = d.carry(
            vec![tracked(&read, hist(&[5, 7]))],
            vec![tracked(&read, hist(&[1, 2]))],
        );
        assert_eq!(carried, 1);
        let first = d.update(vec![
            (read.clone(), hist(&[3, 5])),
            (write.clone(), hist(&[2])),
        ]);
        // The old set's 2 since the save and the new set's 5 since the switch.
        assert_eq!(first[0].delta, hist(&[3, 4]));
        assert_eq!(first[0].cumulative, hist(&[7, 10]));
        assert_eq!(first[1].delta, hist(&[2]), "reset: from zero");
        let next = d.update(vec![(read.clone(), hist(&[3, 5]))]);
        assert_eq!(next[0].delta.count(), 0);
        let (saved, identities) = d.save();
        let mut again = Delta::load(saved, identities).with_carried(d.save_carried());
        let later = again.update(vec![(read.clone(), hist(&[4, 9]))]);
        assert_eq!(
            later[0].delta,
            hist(&[1, 4]),
            "carried across a restart too"
        );
        assert_eq!(later[0].cumulative, hist(&[8, 14]));
    }

    #[test]
    fn a_carried_counter_continues_and_carries_into_a_second_switch() {
        let key = SeriesKey::new("c", []);
        let mut c = CounterDelta::default();
        c.update(vec![(key.clone(), 10)]);
        c.carry(vec![(key.clone(), 12)], vec![(key.clone(), 3)]);
        let first = c.update(vec![(key.clone(), 8)]);
        assert_eq!((first[0].delta, first[0].total), (7, 17));
        // Another switch: the second set read 9 (18 with the carry), the third 1.
        c.carry(vec![(key.clone(), 9)], vec![(key.clone(), 1)]);
        let next = c.update(vec![(key.clone(), 4)]);
        assert_eq!((next[0].delta, next[0].total), (4, 21));
        // Two more switches, the second from a set that never counted it (no entry):
        // the total carries on.
        c.carry(vec![(key.clone(), 4)], vec![]);
        assert_eq!(c.update(vec![(key.clone(), 0)])[0].total, 21);
        c.carry(vec![], vec![]);
        let last = c.update(vec![(key.clone(), 2)]);
        assert_eq!((last[0].delta, last[0].total), (2, 23));
    }

    /// An upgrade's new completion program runs before its issue program is attached:
    /// the completions it sees then find no issue and are counted `unmatched` by the
    /// new set alone, while the old set recorded them. Those events are the old set's:
    /// the new set's counts of them (its base) are not reported again.
    #[test]
    fn what_only_the_new_set_had_counted_at_the_switch_is_not_reported_again() {
        let unmatched = SeriesKey::new("u", [("cause", "unmatched".to_owned())]);
        let mut c = CounterDelta::default();
        c.carry(vec![], vec![(unmatched.clone(), 26)]);
        assert!(
            c.update(vec![(unmatched.clone(), 26)])
                .iter()
                .all(|r| r.total == 0)
        );
        let later = c.update(vec![(unmatched.clone(), 27)]);
        assert_eq!((later[0].delta, later[0].total), (1, 1));
        // Saved and taken up again by a restart: still from the base.
        let mut again = CounterDelta::load(c.save()).with_carried(c.save_carried());
        assert_eq!(again.update(vec![(unmatched.clone(), 29)])[0].total, 3);

        let read = SeriesKey::new("f", [("op", "read".to_owned())]);
        let mut d = Delta::default();
        let tracked = TrackedReading {
            key: read.clone(),
            hist: hist(&[2, 1]),
            entity: None,
        };
        assert_eq!(
            d.carry(vec![], vec![tracked]),
            0,
            "nothing of the old set's"
        );
        let first = d.update(vec![(read.clone(), hist(&[5, 1]))]);
        assert_eq!(
            (first[0].delta.count(), first[0].cumulative.count()),
            (3, 3)
        );
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
