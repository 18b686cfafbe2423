//! `nodepulse view`: a recording as one self-contained HTML page (heatmaps of each
//! series' distribution over time with its quantiles and rate, alarms as spans, probe
//! states and the agent's cost), readable offline; the same page served live by the
//! HTTP server. `data` boils the recording down, `capacity` replays it through the
//! capacity learning, `html` wraps it with the page's script and style (`assets/`).

pub mod capacity;
pub mod data;
pub mod html;
pub mod live;

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::Path,
};

use thiserror::Error;

use crate::{
    capacity::{CapacityConfig, replay::CapacityReplayError},
    detect::{
        DetectConfig,
        replay::{ReplayError, replay_timed},
    },
};

/// Columns per series unless told otherwise: a day at 10 s becomes one-minute columns.
pub const DEFAULT_COLUMNS: usize = 1440;

#[derive(Debug, Error)]
pub enum ViewError {
    #[error(transparent)]
    Recording(#[from] ReplayError),
    #[error(transparent)]
    Capacity(#[from] CapacityReplayError),
    #[error("cannot read {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
}

pub struct Options {
    pub max_columns: usize,
    /// Run the detector over the recording and show its alarms instead of the
    /// recorded ones.
    pub detect: Option<DetectConfig>,
    /// Replay the recording's capacity signals with this configuration, each second
    /// read as `stretch` (≥ 1) seconds; `None`: no capacity section.
    pub capacity: Option<(CapacityConfig, f64)>,
}

/// Reads a recording file into the page's data.
pub fn read_file(path: &Path, options: &Options) -> Result<data::View, ViewError> {
    let name = path.display().to_string();
    let open = || {
        File::open(path)
            .map(BufReader::new)
            .map_err(|source| ViewError::Open {
                path: name.clone(),
                source,
            })
    };
    // A first pass counts the reports, so that columns can be closed as they fill.
    let mut reports = 0;
    for line in open()?.lines() {
        let line = line.map_err(|source| ViewError::Open {
            path: name.clone(),
            source,
        })?;
        reports += usize::from(!line.trim().is_empty());
    }
    let replayed = match &options.detect {
        Some(config) => Some(replay_timed(&name, open()?, config)?),
        None => None,
    };
    let mut view = data::read(
        &name,
        open()?,
        reports,
        data::Options {
            max_columns: options.max_columns,
            replayed,
        },
    )?;
    if let Some((config, stretch)) = &options.capacity {
        view.capacity = capacity::read(&name, open()?, config, *stretch)?;
    }
    Ok(view)
}
