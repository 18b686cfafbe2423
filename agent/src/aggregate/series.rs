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
    pub counters: Vec<IntervalCounter>,
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
    /// The key of a series; also the number of its labels that describe its entity.
    fn of(key: &SeriesKey, entity: Option<EntityState>) -> (Self, usize) {
        match entity {
            None => (
                Self {
                    family: key.family,
                    entity: None,
                    labels: key.labels.clone(),
                },
                0,
            ),
            Some(state) => {
                let own = state.labels.min(key.labels.len());
                let delta_key = Self {
                    family: key.family,
                    entity: Some(state.entity),
                    labels: key.labels[own..].to_vec(),
                };
                (delta_key, own)
            }
        }
    }

    /// The key as saved before counters were kept by entity: all labels, no entity.
    fn unkeyed(&self, labels: &[(&'static str, String)]) -> Option<Self> {
        self.entity.map(|_| Self {
            family: self.family,
            entity: None,
            labels: labels.to_vec(),
        })
    }
}

/// A cumulative value the kernel keeps: a histogram, or a counter's total.
pub trait Cumulative: Clone + Default {
    /// What was added since `earlier`; a value that went backwards was reset.
    fn since(&self, earlier: &Self) -> Self;
    fn plus(&self, other: &Self) -> Self;
    fn is_zero(&self) -> bool;
}

impl Cumulative for ExpHistogram {
    fn since(&self, earlier: &Self) -> Self {
        ExpHistogram::since(self, earlier)
    }
    fn plus(&self, other: &Self) -> Self {
        let mut h = self.clone();
        h.merge(other);
        h
    }
    fn is_zero(&self) -> bool {
        self.is_empty()
    }
}

impl Cumulative for u64 {
    fn since(&self, earlier: &Self) -> Self {
        counter_delta(*self, *earlier)
    }
    fn plus(&self, other: &Self) -> Self {
        self + other
    }
    fn is_zero(&self) -> bool {
        *self == 0
    }
}

/// A series continued from an older pin set: `offset` is what the old map had counted
/// at the switch, `base` what the new map had counted of the same events then, and
/// `labels` the series' labels then (to report it while the new map has no entry).
#[derive(Clone, Debug)]
struct Carried<V> {
    base: V,
    offset: V,
    labels: Vec<(&'static str, String)>,
}

impl<V: Cumulative> Carried<V> {
    fn apply(&self, reading: &V) -> V {
        reading.since(&self.base).plus(&self.offset)
    }
}

/// A series as read at a hand-over: its key, its labels then, its cumulative value.
type Switched<V> = (DeltaKey, Vec<(&'static str, String)>, V);

/// Series read at a hand-over, by key: their labels then and their values.
type ByKey<V> = HashMap<DeltaKey, (Vec<(&'static str, String)>, V)>;

/// The last cumulative value and the carried part of every series of one kind.
struct Keyed<V> {
    previous: HashMap<DeltaKey, V>,
    carried: HashMap<DeltaKey, Carried<V>>,
}

impl<V> Default for Keyed<V> {
    fn default() -> Self {
        Self {
            previous: HashMap::new(),
            carried: HashMap::new(),
        }
    }
}

impl<V: Cumulative> Keyed<V> {
    /// See [`Delta::carry`]. Returns how many series continue a count of the old set.
    fn carry(&mut self, old: Vec<Switched<V>>, base: Vec<Switched<V>>) -> usize {
        let mut base: ByKey<V> = base.into_iter().map(|(k, l, v)| (k, (l, v))).collect();
        let mut old: ByKey<V> = old.into_iter().map(|(k, l, v)| (k, (l, v))).collect();
        // A series carried into the old set that its maps never counted is still
        // carried: its total is what the sets before counted.
        for (key, c) in &self.carried {
            old.entry(key.clone())
                .or_insert_with(|| (c.labels.clone(), V::default()));
        }
        let mut carried = HashMap::new();
        for (key, (labels, value)) in old {
            // Counted since the first set of the series' start time.
            let offset = match self.carried.get(&key) {
                Some(c) => c.apply(&value),
                None => value,
            };
            if offset.is_zero() {
                continue;
            }
            let base = base.remove(&key).map(|(_, v)| v).unwrap_or_default();
            carried.insert(
                key,
                Carried {
                    base,
                    offset,
                    labels,
                },
            );
        }
        let continued = carried.len();
        for (key, (labels, base)) in base.into_iter().filter(|(_, (_, v))| !v.is_zero()) {
            let offset = V::default();
            carried.insert(
                key,
                Carried {
                    base,
                    offset,
                    labels,
                },
            );
        }
        self.previous.retain(|k, _| carried.contains_key(k));
        self.carried = carried;
        continued
    }

    /// The interval's (delta, cumulative) of the series `key` whose map holds `reading`
    /// (`labels`, as reported, find a value saved before counters had entities).
    fn step(&mut self, key: DeltaKey, labels: &[(&'static str, String)], reading: V) -> (V, V) {
        if let Some(unkeyed) = key.unkeyed(labels)
            && !self.previous.contains_key(&key)
            && !self.carried.contains_key(&key)
        {
            if let Some(v) = self.previous.remove(&unkeyed) {
                self.previous.insert(key.clone(), v);
            }
            if let Some(c) = self.carried.remove(&unkeyed) {
                self.carried.insert(key.clone(), c);
            }
        }
        let cumulative = match self.carried.get(&key) {
            Some(c) => c.apply(&reading),
            None => reading,
        };
        let delta = match self.previous.get(&key) {
            Some(before) => cumulative.since(before),
            None => cumulative.clone(),
        };
        self.previous.insert(key, cumulative.clone());
        (delta, cumulative)
    }

    /// Carried series without a reading this time (`read`): the new set's maps have no
    /// entry for them (nothing happened to them since the switch), and their carried
    /// totals are reported all the same.
    fn unread(&self, read: &std::collections::HashSet<DeltaKey>) -> Vec<(DeltaKey, Carried<V>)> {
        self.carried
            .iter()
            .filter(|(k, c)| !read.contains(*k) && !c.offset.is_zero())
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect()
    }

    fn forget(&mut self, ended: &[Entity]) {
        self.previous
            .retain(|k, _| k.entity.is_none_or(|e| !ended.contains(&e)));
        self.carried
            .retain(|k, _| k.entity.is_none_or(|e| !ended.contains(&e)));
    }

    /// The carried series, to be saved, in a stable order.
    fn save_carried(&self) -> Vec<SavedCarried<V>> {
        let mut out: Vec<(&DeltaKey, &Carried<V>)> = self.carried.iter().collect();
        out.sort_by(|a, b| (a.0.family, &a.0.labels).cmp(&(b.0.family, &b.0.labels)));
        out.into_iter()
            .map(|(k, c)| SavedCarried {
                family: k.family.to_owned(),
                entity: k.entity,
                labels: save_labels(&k.labels),
                base: c.base.clone(),
                offset: c.offset.clone(),
                reported: save_labels(&c.labels),
            })
            .collect()
    }

    /// Takes up saved carried series. States saved before the labels at the switch
    /// were kept report the key's own.
    fn load_carried(&mut self, saved: Vec<SavedCarried<V>>) {
        self.carried = saved
            .into_iter()
            .map(|c| {
                let key = saved_key(&c.family, c.entity, c.labels);
                let labels = if c.reported.is_empty() {
                    key.labels.clone()
                } else {
                    load_labels(c.reported)
                };
                let carried = Carried {
                    base: c.base,
                    offset: c.offset,
                    labels,
                };
                (key, carried)
            })
            .collect();
    }
}

/// One cumulative kernel counter and, when it is about a kernel-keyed entity, that
/// entity as the probe found it.
#[derive(Clone, Debug)]
pub struct TrackedCounter {
    pub key: SeriesKey,
    pub total: u64,
    pub entity: Option<EntityState>,
}

impl TrackedCounter {
    /// A counter about no particular entity (a CPU, a configured group).
    pub fn plain(key: SeriesKey, total: u64) -> Self {
        Self {
            key,
            total,
            entity: None,
        }
    }
}

/// Remembers the last cumulative reading of every series (histograms and counters) to
/// produce interval deltas, by kernel key.
#[derive(Default)]
pub struct Delta {
    hists: Keyed<ExpHistogram>,
    counters: Keyed<u64>,
    identities: Identities,
}

fn saved_key(family: &str, entity: Option<Entity>, labels: super::saved::SavedLabels) -> DeltaKey {
    DeltaKey {
        family: intern(family),
        entity,
        labels: load_labels(labels),
    }
}

impl Delta {
    /// Continues the series of an older pin set's maps (see `crate::probes::handover`):
    /// `old` is what its maps held at the switch, `base` what this set's maps held of
    /// the same events then. Series in neither start again from zero (their maps were
    /// reset). A series only this set had counted at the switch is still taken from
    /// `base` on: those events are the old set's, counted there under another series
    /// (a completion whose issue came before this set's issue program was attached is
    /// `unmatched` here but recorded by the old set). A carried series is reported
    /// from then on whether or not this set's maps ever hold it (a cgroup, VM, device
    /// or group idle since the switch), until its entity ends. Returns how many
    /// histogram and counter series continue.
    pub fn carry(
        &mut self,
        old: Vec<TrackedReading>,
        base: Vec<TrackedReading>,
        old_counters: Vec<TrackedCounter>,
        base_counters: Vec<TrackedCounter>,
    ) -> (usize, usize) {
        let hists = |rs: Vec<TrackedReading>| {
            rs.into_iter()
                .map(|r| (DeltaKey::of(&r.key, r.entity).0, r.key.labels, r.hist))
                .collect()
        };
        let counters = |cs: Vec<TrackedCounter>| {
            cs.into_iter()
                .map(|c| (DeltaKey::of(&c.key, c.entity).0, c.key.labels, c.total))
                .collect()
        };
        (
            self.hists.carry(hists(old), hists(base)),
            self.counters
                .carry(counters(old_counters), counters(base_counters)),
        )
    }

    /// The carried series, to be saved.
    pub fn save_carried(&self) -> (Vec<SavedCarried>, Vec<SavedCarriedCounter>) {
        (self.hists.save_carried(), self.counters.save_carried())
    }

    /// Takes up saved carried series (with [`Self::load`]).
    pub fn with_carried(
        mut self,
        hists: Vec<SavedCarried>,
        counters: Vec<SavedCarriedCounter>,
    ) -> Self {
        self.hists.load_carried(hists);
        self.counters.load_carried(counters);
        self
    }

    /// The last readings, counter totals and identities, to be saved.
    pub fn save(
        &self,
    ) -> (
        Vec<SavedReading>,
        Vec<super::saved::SavedIdentity>,
        Vec<SavedCounter>,
    ) {
        let mut histograms: Vec<SavedReading> = self
            .hists
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
        let mut counters: Vec<SavedCounter> = self
            .counters
            .previous
            .iter()
            .map(|(k, &total)| SavedCounter {
                family: k.family.to_owned(),
                entity: k.entity,
                labels: save_labels(&k.labels),
                total,
            })
            .collect();
        counters.sort_by(|a, b| (&a.family, &a.labels).cmp(&(&b.family, &b.labels)));
        (histograms, self.identities.save(), counters)
    }

    /// Deltas computed against saved readings: the first one after a restart is what
    /// the kernel counted since the previous run's last report.
    pub fn load(
        histograms: Vec<SavedReading>,
        identities: Vec<super::saved::SavedIdentity>,
        counters: Vec<SavedCounter>,
    ) -> Self {
        let mut d = Self {
            identities: Identities::load(identities),
            ..Default::default()
        };
        d.hists.previous = histograms
            .into_iter()
            .map(|r| (saved_key(&r.family, r.entity, r.labels), r.hist))
            .collect();
        d.counters.previous = counters
            .into_iter()
            .map(|c| (saved_key(&c.family, c.entity, c.labels), c.total))
            .collect();
        d
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

    /// [`Self::collect`] without counters; a carried entity without readings is taken
    /// as gone.
    pub fn update_tracked(&mut self, readings: Vec<TrackedReading>) -> Collected {
        self.collect(readings, Vec::new(), |_| false)
    }

    /// Deltas since the previous call, sorted by key. A series seen for the first time
    /// counts from zero: the kernel maps are created empty when the agent starts, and
    /// an ended entity's entries are deleted. A series of an entity that is gone keeps
    /// the labels last resolved for it until it ends. A carried series this set's maps
    /// do not hold is reported at its carried total; `alive` says whether its entity,
    /// if no reading showed it, still exists.
    pub fn collect(
        &mut self,
        readings: Vec<TrackedReading>,
        counters: Vec<TrackedCounter>,
        mut alive: impl FnMut(Entity) -> bool,
    ) -> Collected {
        let mut seen: HashMap<Entity, bool> = HashMap::new();
        for state in readings
            .iter()
            .filter_map(|r| r.entity)
            .chain(counters.iter().filter_map(|c| c.entity))
        {
            *seen.entry(state.entity).or_default() |= state.alive;
        }
        let mut read = std::collections::HashSet::new();
        let mut series = Vec::with_capacity(readings.len());
        for r in readings {
            let (key, delta_key) = self.resolve(&r.key, r.entity);
            read.insert(delta_key.clone());
            let (delta, cumulative) = self.hists.step(delta_key, &key.labels, r.hist);
            series.push(IntervalSeries {
                key,
                delta,
                cumulative,
            });
        }
        let mut counted = Vec::with_capacity(counters.len());
        let mut read_counters = std::collections::HashSet::new();
        for c in counters {
            let (key, delta_key) = self.resolve(&c.key, c.entity);
            read_counters.insert(delta_key.clone());
            let (delta, total) = self.counters.step(delta_key, &key.labels, c.total);
            counted.push(IntervalCounter { key, delta, total });
        }
        for (delta_key, c) in self.hists.unread(&read) {
            let key = self.resolve_unread(&delta_key, &c.labels, &mut seen, &mut alive);
            let (delta, cumulative) = self.hists.step(delta_key, &key.labels, Default::default());
            series.push(IntervalSeries {
                key,
                delta,
                cumulative,
            });
        }
        for (delta_key, c) in self.counters.unread(&read_counters) {
            let key = self.resolve_unread(&delta_key, &c.labels, &mut seen, &mut alive);
            let (delta, total) = self.counters.step(delta_key, &key.labels, 0);
            counted.push(IntervalCounter { key, delta, total });
        }
        let ended = self.identities.close(&seen);
        if !ended.is_empty() {
            self.hists.forget(&ended);
            self.counters.forget(&ended);
        }
        series.sort_by(|a, b| a.key.cmp(&b.key));
        counted.sort_by(|a, b| a.key.cmp(&b.key));
        Collected {
            series,
            counters: counted,
            ended,
        }
    }

    /// The reported key of a series read now, and its delta key.
    fn resolve(&mut self, key: &SeriesKey, entity: Option<EntityState>) -> (SeriesKey, DeltaKey) {
        let (delta_key, _) = DeltaKey::of(key, entity);
        let key = match entity {
            None => key.clone(),
            Some(state) => {
                let labels = self.identities.labels(state, key.labels.clone());
                SeriesKey::new(key.family, labels)
            }
        };
        (key, delta_key)
    }

    /// The reported key of a carried series without a reading: its entity's labels as
    /// last resolved (those at the switch if none were), and its entity marked seen.
    fn resolve_unread(
        &mut self,
        key: &DeltaKey,
        labels: &[(&'static str, String)],
        seen: &mut HashMap<Entity, bool>,
        alive: &mut impl FnMut(Entity) -> bool,
    ) -> SeriesKey {
        let Some(entity) = key.entity else {
            return SeriesKey::new(key.family, labels.to_vec());
        };
        seen.entry(entity).or_insert_with(|| alive(entity));
        let own = labels.len().saturating_sub(key.labels.len());
        let mut labels = labels.to_vec();
        labels.truncate(own);
        labels.extend(key.labels.iter().cloned());
        let state = EntityState::new(entity, own, false);
        SeriesKey::new(key.family, self.identities.labels(state, labels))
    }
}

/// One counter series over one interval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IntervalCounter {
    pub key: SeriesKey,
    pub delta: u64,
    pub total: u64,
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

    /// Saved and taken up again, as by a restart.
    fn reload(d: &Delta) -> Delta {
        let (h, i, c) = d.save();
        let (ch, cc) = d.save_carried();
        Delta::load(h, i, c).with_carried(ch, cc)
    }

    fn counted(d: &mut Delta, counters: Vec<(SeriesKey, u64)>) -> Vec<IntervalCounter> {
        let counters = counters
            .into_iter()
            .map(|(k, t)| TrackedCounter::plain(k, t))
            .collect();
        d.collect(Vec::new(), counters, |_| true).counters
    }

    fn carry_counters(d: &mut Delta, old: Vec<(SeriesKey, u64)>, base: Vec<(SeriesKey, u64)>) {
        let plain = |v: Vec<(SeriesKey, u64)>| {
            v.into_iter()
                .map(|(k, t)| TrackedCounter::plain(k, t))
                .collect()
        };
        d.carry(Vec::new(), Vec::new(), plain(old), plain(base));
    }

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
        let mut d = reload(&before);
        let carried = d.carry(
            vec![tracked(&read, hist(&[5, 7]))],
            vec![tracked(&read, hist(&[1, 2]))],
            vec![],
            vec![],
        );
        assert_eq!(carried, (1, 0));
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
        let mut again = reload(&d);
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
        let mut c = Delta::default();
        counted(&mut c, vec![(key.clone(), 10)]);
        carry_counters(&mut c, vec![(key.clone(), 12)], vec![(key.clone(), 3)]);
        let first = counted(&mut c, vec![(key.clone(), 8)]);
        assert_eq!((first[0].delta, first[0].total), (7, 17));
        // Another switch: the second set read 9 (18 with the carry), the third 1.
        carry_counters(&mut c, vec![(key.clone(), 9)], vec![(key.clone(), 1)]);
        let next = counted(&mut c, vec![(key.clone(), 4)]);
        assert_eq!((next[0].delta, next[0].total), (4, 21));
        // Two more switches, the second from a set that never counted it (no entry):
        // the total carries on.
        carry_counters(&mut c, vec![(key.clone(), 4)], vec![]);
        assert_eq!(counted(&mut c, vec![(key.clone(), 0)])[0].total, 21);
        carry_counters(&mut c, vec![], vec![]);
        let last = counted(&mut c, vec![(key.clone(), 2)]);
        assert_eq!((last[0].delta, last[0].total), (2, 23));
    }

    /// An upgrade's new completion program runs before its issue program is attached:
    /// the completions it sees then find no issue and are counted `unmatched` by the
    /// new set alone, while the old set recorded them. Those events are the old set's:
    /// the new set's counts of them (its base) are not reported again.
    #[test]
    fn what_only_the_new_set_had_counted_at_the_switch_is_not_reported_again() {
        let unmatched = SeriesKey::new("u", [("cause", "unmatched".to_owned())]);
        let mut c = Delta::default();
        carry_counters(&mut c, vec![], vec![(unmatched.clone(), 26)]);
        assert!(
            counted(&mut c, vec![(unmatched.clone(), 26)])
                .iter()
                .all(|r| r.total == 0)
        );
        let later = counted(&mut c, vec![(unmatched.clone(), 27)]);
        assert_eq!((later[0].delta, later[0].total), (1, 1));
        // Saved and taken up again by a restart: still from the base.
        let mut again = reload(&c);
        assert_eq!(
            counted(&mut again, vec![(unmatched.clone(), 29)])[0].total,
            3
        );

        let read = SeriesKey::new("f", [("op", "read".to_owned())]);
        let mut d = Delta::default();
        let tracked = TrackedReading {
            key: read.clone(),
            hist: hist(&[2, 1]),
            entity: None,
        };
        assert_eq!(
            d.carry(vec![], vec![tracked], vec![], vec![]),
            (0, 0),
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
        let text = serde_json::to_string(&before.save()).unwrap();
        let (histograms, identities, counters) = serde_json::from_str(&text).unwrap();
        let mut after = Delta::load(histograms, identities, counters);
        // The kernel counted on while no agent ran: only that is the first delta, and
        // a VM gone meanwhile keeps the name the previous run resolved.
        let first =
            after.update_tracked(vec![plain(&[0, 5, 2]), vm_reading("pid:77", false, &[9])]);
        let (plain_series, vm) = (&first.series[0], &first.series[1]);
        assert_eq!(plain_series.delta.count(), 3);
        assert_eq!(plain_series.cumulative.count(), 7);
        assert_eq!(vm.key.label("vm"), Some("guest"));
        assert_eq!(vm.delta.count(), 4);

        let mut counters = Delta::default();
        let c = SeriesKey::new("c", [("dev", "7:0".to_owned())]);
        counted(&mut counters, vec![(c.clone(), 10)]);
        let mut again = reload(&counters);
        assert_eq!(counted(&mut again, vec![(c, 12)])[0].delta, 2);
    }

    fn cgroup(id: u64, name: &str, alive: bool, counts: &[u64]) -> TrackedReading {
        TrackedReading {
            key: SeriesKey::new("cgroup.runqueue.latency", [("cgroup", name.to_owned())]),
            hist: hist(counts),
            entity: Some(EntityState::new(Entity::Cgroup(id), 1, alive)),
        }
    }

    /// A cgroup whose waits ended before an upgrade has no entry in the new maps: its
    /// carried total is reported at every collection while it exists, and its series
    /// ends (two collections after) once it is gone; a restart keeps all that.
    #[test]
    fn a_carried_series_without_readings_is_reported_until_its_entity_ends() {
        let mut d = Delta::default();
        d.update_tracked(vec![cgroup(9, "/pod", true, &[4])]);
        d.carry(vec![cgroup(9, "/pod", true, &[6])], vec![], vec![], vec![]);
        let mut alive = true;
        let first = d.collect(vec![], vec![], |_| alive);
        assert_eq!(first.series.len(), 1);
        assert_eq!(first.series[0].key.label("cgroup"), Some("/pod"));
        assert_eq!(
            (
                first.series[0].delta.count(),
                first.series[0].cumulative.count()
            ),
            (2, 6)
        );
        let mut d = reload(&d);
        let again = d.collect(vec![], vec![], |_| alive);
        assert_eq!(
            (
                again.series[0].delta.count(),
                again.series[0].cumulative.count()
            ),
            (0, 6)
        );
        // Waits again under the new programs: on from the carried total.
        let more = d.collect(vec![cgroup(9, "/pod", true, &[3])], vec![], |_| alive);
        assert_eq!(more.series.len(), 1);
        assert_eq!(more.series[0].cumulative.count(), 9);
        // Removed: its labels stay until it ends, then nothing is reported.
        alive = false;
        let gone = d.collect(vec![cgroup(9, "id:9", false, &[3])], vec![], |_| alive);
        assert_eq!(gone.series[0].key.label("cgroup"), Some("/pod"));
        let last = d.collect(vec![cgroup(9, "id:9", false, &[3])], vec![], |_| alive);
        assert_eq!(last.ended, vec![Entity::Cgroup(9)]);
        assert!(d.collect(vec![], vec![], |_| alive).series.is_empty());

        // Carried and never read by the new set, then gone: ended too.
        let mut d = Delta::default();
        d.carry(vec![cgroup(5, "/job", true, &[2])], vec![], vec![], vec![]);
        assert_eq!(d.collect(vec![], vec![], |_| false).series.len(), 1);
        let end = d.collect(vec![], vec![], |_| false);
        assert_eq!(end.ended, vec![Entity::Cgroup(5)]);
        assert!(d.collect(vec![], vec![], |_| false).series.is_empty());
    }

    fn device_counter(name: &str, total: u64) -> TrackedCounter {
        TrackedCounter {
            key: SeriesKey::new(
                "block.io.unrecorded",
                [
                    ("device", name.to_owned()),
                    ("dev", "7:3".to_owned()),
                    ("cause", "unseen".to_owned()),
                ],
            ),
            total,
            entity: Some(EntityState::new(Entity::Device(0x700003), 2, true)),
        }
    }

    /// Counters are kept by the kernel's key: a device whose labels change (renamed,
    /// its model resolved late) continues its count, across a restart and an upgrade.
    #[test]
    fn a_counter_continues_by_device_number_when_its_labels_change() {
        let mut d = Delta::default();
        d.collect(vec![], vec![device_counter("loop3", 5)], |_| true);
        let mut d = reload(&d);
        let renamed = d.collect(vec![], vec![device_counter("disk-a", 7)], |_| true);
        assert_eq!(
            (renamed.counters[0].delta, renamed.counters[0].total),
            (2, 7)
        );
        // An upgrade: the old set had 9, the new one nothing; then its labels change
        // again while the new set has still counted nothing.
        d.carry(vec![], vec![], vec![device_counter("disk-a", 9)], vec![]);
        let mut d = reload(&d);
        let carried = d.collect(vec![], vec![device_counter("disk-b", 0)], |_| true);
        assert_eq!(carried.counters.len(), 1);
        assert_eq!(
            (carried.counters[0].delta, carried.counters[0].total),
            (2, 9)
        );
        assert_eq!(carried.counters[0].key.label("device"), Some("disk-b"));
        // A state saved before counters had entities: found by all its labels once.
        let mut old = Delta::load(
            vec![],
            vec![],
            vec![SavedCounter {
                family: "block.io.unrecorded".into(),
                entity: None,
                labels: save_labels(&device_counter("loop3", 0).key.labels),
                total: 5,
            }],
        );
        let first = old.collect(vec![], vec![device_counter("loop3", 8)], |_| true);
        assert_eq!(first.counters[0].delta, 3);
    }

    #[test]
    fn counters() {
        assert_eq!(counter_delta(10, 4), 6);
        assert_eq!(counter_delta(3, 4), 3);
    }

    #[test]
    fn counter_series_report_interval_increases() {
        let key = SeriesKey::new("f", [("error", "ioerr".to_owned())]);
        let mut d = Delta::default();
        assert_eq!(counted(&mut d, vec![(key.clone(), 3)])[0].delta, 3);
        let second = counted(&mut d, vec![(key.clone(), 7)]);
        assert_eq!((second[0].delta, second[0].total), (4, 7));
        assert_eq!(counted(&mut d, vec![(key, 7)])[0].delta, 0);
    }
}
