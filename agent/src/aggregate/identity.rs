//! Who a series is about, in the kernel's terms. The kernel keys its maps by a process
//! id, a cgroup id or a device number; the labels operators read (a VM's name, a
//! cgroup's path, a disk's model) are resolved from that key in userspace and can stop
//! resolving the moment the thing ends (the process exits, the cgroup is removed, the
//! disk is detached) while its last counts are still in the maps. Deltas are therefore
//! computed per kernel key, and the labels last resolved for a key are kept until the
//! key's series end.

use std::collections::HashMap;

use super::saved::{SavedIdentity, load_labels, save_labels};
use crate::attribution::Labels;

/// What the kernel keys an entity by.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Entity {
    /// A process, by tgid (a VM's VMM process).
    Process(u32),
    /// A cgroup of the scheduler's hierarchy, by id (its directory's inode).
    Cgroup(u64),
    /// A cgroup of the block I/O hierarchy: another id space on hybrid hosts.
    IoCgroup(u64),
    /// A block device, by device number as the block tracepoints encode it.
    Device(u32),
}

/// A reading's entity as the probe found it when it read the maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntityState {
    pub entity: Entity,
    /// How many leading labels of the series describe the entity (its name, uuid, …);
    /// the rest describe the sample (operation, exit reason, …).
    pub labels: usize,
    /// Whether the entity still exists: its labels were resolved just now.
    pub alive: bool,
}

impl EntityState {
    pub fn new(entity: Entity, labels: usize, alive: bool) -> Self {
        Self {
            entity,
            labels,
            alive,
        }
    }
}

/// How many collections in a row an entity must be found gone before its series end:
/// the first one reads what it did up to the moment it was seen gone, the second what
/// the kernel recorded after that read (a completion, an exit handled late), so the
/// map entries can be deleted with nothing left in them.
pub const GONE_READS_BEFORE_END: u32 = 2;

/// What is remembered of an entity between collections.
#[derive(Default)]
struct Known {
    /// Its own labels as last resolved.
    labels: Option<Labels>,
    /// Consecutive collections that found it gone.
    gone_reads: u32,
}

/// The labels last resolved for every entity, and which entities have ended.
#[derive(Default)]
pub struct Identities {
    known: HashMap<Entity, Known>,
}

impl Identities {
    pub fn save(&self) -> Vec<SavedIdentity> {
        let mut saved: Vec<SavedIdentity> = self
            .known
            .iter()
            .map(|(&entity, k)| SavedIdentity {
                entity,
                labels: k.labels.as_deref().map(save_labels),
                gone_reads: k.gone_reads,
            })
            .collect();
        saved.sort_by_key(|s| s.entity);
        saved
    }

    pub fn load(saved: Vec<SavedIdentity>) -> Self {
        Self {
            known: saved
                .into_iter()
                .map(|s| {
                    let known = Known {
                        labels: s.labels.map(load_labels),
                        gone_reads: s.gone_reads,
                    };
                    (s.entity, known)
                })
                .collect(),
        }
    }

    /// The labels to report for a series of `state.entity` whose probe resolved
    /// `labels` now: while alive, those (and they are remembered); once gone, the
    /// entity's part is the last one resolved, the sample's part is kept.
    pub fn labels(&mut self, state: EntityState, labels: Labels) -> Labels {
        let n = state.labels.min(labels.len());
        let known = self.known.entry(state.entity).or_default();
        if state.alive {
            known.labels = Some(labels[..n].to_vec());
            return labels;
        }
        match &known.labels {
            Some(own) => own
                .iter()
                .cloned()
                .chain(labels[n..].iter().cloned())
                .collect(),
            None => labels,
        }
    }

    /// Closes a collection in which `seen` entities had readings (with whether any
    /// reading found each alive). Returns the entities whose series end now: their
    /// last counts have just been reported, and their map entries can be deleted.
    /// Entities without readings (their entries are gone) are forgotten.
    pub fn close(&mut self, seen: &HashMap<Entity, bool>) -> Vec<Entity> {
        self.known.retain(|e, _| seen.contains_key(e));
        let mut ended = Vec::new();
        for (&entity, &alive) in seen {
            let known = self.known.entry(entity).or_default();
            if alive {
                known.gone_reads = 0;
                continue;
            }
            known.gone_reads += 1;
            if known.gone_reads >= GONE_READS_BEFORE_END {
                ended.push(entity);
            }
        }
        for e in &ended {
            self.known.remove(e);
        }
        ended.sort();
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&'static str, &str)]) -> Labels {
        pairs.iter().map(|&(k, v)| (k, v.to_owned())).collect()
    }

    #[test]
    fn a_gone_entity_keeps_its_last_labels_until_it_ends() {
        let vm = Entity::Process(4242);
        let mut ids = Identities::default();
        let alive = EntityState::new(vm, 2, true);
        let named = labels(&[("vm", "guest-a"), ("vm.uuid", "u"), ("reason", "io")]);
        assert_eq!(ids.labels(alive, named.clone()), named);
        assert!(ids.close(&HashMap::from([(vm, true)])).is_empty());

        let gone = EntityState::new(vm, 1, false);
        let fallback = labels(&[("vm", "pid:4242"), ("reason", "io")]);
        assert_eq!(
            ids.labels(gone, fallback.clone()),
            named,
            "first read after exit"
        );
        assert!(ids.close(&HashMap::from([(vm, false)])).is_empty());
        assert_eq!(ids.labels(gone, fallback.clone()), named, "the final read");
        assert_eq!(ids.close(&HashMap::from([(vm, false)])), vec![vm]);

        // Ended: a new process with the same pid starts afresh.
        assert_eq!(ids.labels(gone, fallback.clone()), fallback);
    }

    #[test]
    fn coming_back_alive_resets_the_countdown_and_missing_entities_are_forgotten() {
        let cg = Entity::Cgroup(7);
        let mut ids = Identities::default();
        ids.labels(EntityState::new(cg, 1, true), labels(&[("cgroup", "/a")]));
        assert!(ids.close(&HashMap::from([(cg, false)])).is_empty());
        assert!(ids.close(&HashMap::from([(cg, true)])).is_empty());
        assert!(ids.close(&HashMap::from([(cg, false)])).is_empty());
        // No readings at all: its entries were deleted elsewhere.
        assert!(ids.close(&HashMap::new()).is_empty());
        let fallback = labels(&[("cgroup", "id:7")]);
        assert_eq!(
            ids.labels(EntityState::new(cg, 1, false), fallback.clone()),
            fallback
        );
    }
}
