//! The last readings as saved in the state directory. A restarted agent that adopts
//! the kernel's pinned maps computes its first deltas against what the previous run
//! last reported, so each count is reported once: the interval in flight at the
//! restart is neither lost nor counted twice.

use serde::{Deserialize, Serialize};

use super::{ExpHistogram, identity::Entity};
use crate::util::intern::intern;

/// Labels as they are written (names become static again on reading).
pub type SavedLabels = Vec<(String, String)>;

pub fn save_labels(labels: &[(&'static str, String)]) -> SavedLabels {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

pub fn load_labels(labels: SavedLabels) -> Vec<(&'static str, String)> {
    labels.into_iter().map(|(k, v)| (intern(&k), v)).collect()
}

/// The last cumulative reading of one series, by kernel key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedReading {
    pub family: String,
    pub entity: Option<Entity>,
    pub labels: SavedLabels,
    pub hist: ExpHistogram,
}

/// What was known of an entity: its last labels and how long it has been gone.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedIdentity {
    pub entity: Entity,
    pub labels: Option<SavedLabels>,
    pub gone_reads: u32,
}

/// The last total of one counter series, by kernel key (as for histograms).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedCounter {
    pub family: String,
    /// Absent in states of earlier versions, which kept counters by all their labels.
    #[serde(default)]
    pub entity: Option<Entity>,
    pub labels: SavedLabels,
    pub total: u64,
}

/// A series continued from an older pin set's map (see `crate::probes::handover`):
/// reported as `offset` plus what the map counted beyond `base`. `V` is a histogram or
/// a counter's total.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SavedCarried<V = ExpHistogram> {
    pub family: String,
    #[serde(default)]
    pub entity: Option<Entity>,
    pub labels: SavedLabels,
    pub base: V,
    pub offset: V,
    /// All its labels at the switch, to report it while the new maps have no entry
    /// (absent in states of earlier versions).
    #[serde(default)]
    pub reported: SavedLabels,
}

/// A counter series continued from an older pin set's map.
pub type SavedCarriedCounter = SavedCarried<u64>;

/// Everything the interval deltas are computed against.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SavedReadings {
    pub histograms: Vec<SavedReading>,
    pub identities: Vec<SavedIdentity>,
    pub counters: Vec<SavedCounter>,
    /// Series continued across an upgrade (absent in states of earlier versions).
    #[serde(default)]
    pub carried: Vec<SavedCarried>,
    #[serde(default)]
    pub carried_counters: Vec<SavedCarriedCounter>,
}
