//! The detector's state as saved in the state directory: every series' window in
//! progress, baseline and alarm, and the open incidents. A restarted agent goes on
//! judging against the baselines it had learned (instead of learning again for
//! `baseline_windows` windows) and keeps its open alarms open under the same ids.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{Detector, incident::Incident, series::SeriesState};

/// Bumped when a saved detector state can no longer be read as it was written.
pub const FORMAT: u32 = 1;

#[derive(Serialize)]
struct SnapshotRef<'a> {
    format: u32,
    intervals: u64,
    series: &'a HashMap<String, SeriesState>,
    incidents: &'a [Incident],
}

#[derive(Deserialize)]
struct Snapshot {
    format: u32,
    intervals: u64,
    series: HashMap<String, SeriesState>,
    incidents: Vec<Incident>,
}

/// What a restore brought back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub series: usize,
    /// Series whose baseline had learned enough to be judged.
    pub judged: usize,
    pub open_alarms: Vec<String>,
}

impl Detector {
    /// The state to save.
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::to_value(SnapshotRef {
            format: FORMAT,
            intervals: self.intervals,
            series: &self.series,
            incidents: self.incidents.snapshot(),
        })
        .unwrap_or(serde_json::Value::Null)
    }

    /// Takes up a saved state in place of this detector's (a fresh one's).
    pub fn restore(&mut self, saved: serde_json::Value) -> Result<Restored, String> {
        let snapshot: Snapshot = serde_json::from_value(saved).map_err(|e| e.to_string())?;
        if snapshot.format != FORMAT {
            return Err(format!(
                "saved in format {}, this version reads {FORMAT}",
                snapshot.format
            ));
        }
        self.intervals = snapshot.intervals;
        self.series = snapshot.series;
        self.incidents.restore(snapshot.incidents);
        let judged = self
            .series
            .values()
            .filter(|s| !s.learning(&self.config))
            .count();
        Ok(Restored {
            series: self.series.len(),
            judged,
            open_alarms: self.open_alarms().map(|a| a.id.clone()).collect(),
        })
    }
}
