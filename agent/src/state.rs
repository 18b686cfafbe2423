//! What outlives the agent, in `[agent] state_dir`: the start of its cumulative series,
//! the last readings its deltas were computed against, and the detector's baselines and
//! open alarms. Saved after every interval (a killed agent loses at most the interval
//! it was in, which the next start then reports) and at exit; read at start.
//!
//! With the probes kept attached (`crate::probes::pins`), the kernel's maps survive the
//! agent, so the saved readings and start time continue them exactly: the first report
//! after a restart holds what the kernel counted since the last report before it. The
//! readings are only used with the same pin set they were taken from.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::aggregate::saved::SavedReadings;

/// The file in the state directory: gzip-compressed JSON (`zcat` shows it). At 1,000
/// series the JSON is ~2.8 MB, rewritten every interval; compressed, a fraction of it.
pub const FILE: &str = "state.json.gz";
/// The uncompressed file earlier versions wrote; read when there is no [`FILE`].
const PLAIN: &str = "state.json";
/// Bumped when a saved state can no longer be read as written.
pub const FORMAT: u32 = 1;

#[derive(Debug, Error)]
pub enum StateError {
    #[error(
        "cannot use the state directory {path}: {error}; create it writable for the agent \
         ([agent] state_dir; the systemd unit's StateDirectory and the DaemonSet's hostPath \
         do) or set state_dir = \"\" to keep nothing"
    )]
    Dir { path: String, error: io::Error },
    #[error("cannot read the saved state {path}: {error}")]
    Read { path: String, error: String },
}

/// Cumulative run time of one program, as last read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedProgram {
    pub run_time_ns: u64,
    pub run_count: u64,
    pub recursion_misses: u64,
}

/// Everything saved.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Saved {
    pub format: u32,
    /// The agent version that wrote it.
    pub version: String,
    /// The pin set (`<version>-<layout>`) the readings were taken from; `None` when the
    /// probes were not kept attached (the readings then die with the agent's maps).
    pub pins: Option<String>,
    /// Start of the cumulative series (unix ns).
    pub start_unix_nano: u64,
    pub saved_unix_nano: u64,
    /// Whether it was written at a clean exit (else the agent was killed or crashed
    /// after writing it).
    pub clean_exit: bool,
    pub readings: SavedReadings,
    /// Drop counters' last totals, by name.
    pub drops: BTreeMap<String, u64>,
    /// Drop counters continued from an older pin set: (base, offset), by name.
    #[serde(default)]
    pub drops_carried: BTreeMap<String, (u64, u64)>,
    /// Programs' last run-time totals, by name.
    pub programs: BTreeMap<String, SavedProgram>,
    /// The detector's state (`crate::detect::snapshot`).
    pub detector: Option<serde_json::Value>,
}

/// The state directory.
pub struct StateDir {
    dir: PathBuf,
    /// The sequence number of the last save committed (renamed into place), and of the
    /// last one prepared: a save committed late (by the console's writer thread) never
    /// replaces a newer one.
    committed: std::sync::Arc<std::sync::Mutex<u64>>,
    prepared: std::sync::atomic::AtomicU64,
}

/// A save written to its own temporary file, not yet in place (see
/// [`StateDir::prepare`]); dropped uncommitted, the file is removed.
pub struct PendingSave {
    seq: u64,
    tmp: PathBuf,
    dir: PathBuf,
    committed: std::sync::Arc<std::sync::Mutex<u64>>,
}

impl PendingSave {
    /// Puts the save in place, unless a later one is there already.
    pub fn commit(self) -> io::Result<()> {
        let mut last = self.committed.lock().unwrap_or_else(|e| e.into_inner());
        if self.seq <= *last {
            return Ok(());
        }
        std::fs::rename(&self.tmp, self.dir.join(FILE))?;
        *last = self.seq;
        drop(last);
        // An earlier version's uncompressed state is superseded.
        match std::fs::remove_file(self.dir.join(PLAIN)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl Drop for PendingSave {
    fn drop(&mut self) {
        // Gone after a commit; still there when a later save won or nothing committed.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

impl StateDir {
    /// Opens the directory (creating it), checking that the agent can write there.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let err = |error| StateError::Dir {
            path: dir.display().to_string(),
            error,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let probe = dir.join(".writable");
        std::fs::write(&probe, b"").map_err(err)?;
        let _ = std::fs::remove_file(probe);
        // Saves a killed run prepared and never committed.
        for entry in std::fs::read_dir(dir).map_err(err)?.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{FILE}.tmp"))
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            committed: Default::default(),
            prepared: Default::default(),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The state a running agent saved in `dir`, read only (`nodepulse check`): neither
    /// the directory is created nor an unreadable file moved aside.
    pub fn peek(dir: &Path) -> Result<Option<Saved>, StateError> {
        let state = Self {
            dir: dir.to_path_buf(),
        };
        let Some((path, bytes)) = state.last_saved()? else {
            return Ok(None);
        };
        decode::<Saved>(&bytes)
            .map(Some)
            .map_err(|error| StateError::Read {
                path: path.display().to_string(),
                error,
            })
    }

    /// The saved state; `None` when nothing was saved. A file that cannot be read is
    /// moved aside (`<file>.unreadable`) so the agent starts afresh instead of failing
    /// on every start.
    pub fn load(&self) -> Result<Option<Saved>, StateError> {
        let Some((path, bytes)) = self.last_saved()? else {
            return Ok(None);
        };
        let parsed = decode::<Saved>(&bytes).and_then(|s| {
            if s.format == FORMAT {
                Ok(s)
            } else {
                Err(format!(
                    "written in format {} by nodepulse {}, this version reads format {FORMAT}",
                    s.format, s.version
                ))
            }
        });
        parsed.map(Some).map_err(|error| {
            let mut aside = path.clone().into_os_string();
            aside.push(".unreadable");
            let _ = std::fs::rename(&path, &aside);
            StateError::Read {
                path: format!("{} (moved to {})", path.display(), aside.display()),
                error,
            }
        })
    }

    /// The file to read, with its bytes: [`FILE`], or [`PLAIN`] alone. With both (an
    /// upgrade, a rollback that wrote plain JSON, an upgrade again) the one saved last,
    /// by its `saved_unix_nano` (else its mtime): the other is stale, and the next save
    /// replaces both.
    fn last_saved(&self) -> Result<Option<(PathBuf, Vec<u8>)>, StateError> {
        let read = |name: &str| {
            let path = self.dir.join(name);
            match std::fs::read(&path) {
                Ok(bytes) => Ok(Some((path, bytes))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(StateError::Read {
                    path: path.display().to_string(),
                    error: e.to_string(),
                }),
            }
        };
        Ok(match (read(FILE)?, read(PLAIN)?) {
            (Some(gz), Some(plain)) if saved_later(&plain, &gz) => Some(plain),
            (gz, plain) => gz.or(plain),
        })
    }

    /// Writes the state atomically (a temporary file renamed over the old one),
    /// compressed (gzip's fastest level: the JSON of histograms and baselines shrinks
    /// several times for a few ms); with `sync`, flushed to disk first (at exit; every
    /// interval would cost an fsync).
    pub fn save(&self, saved: &Saved, sync: bool) -> io::Result<()> {
        self.prepare(saved, sync)?.commit()
    }

    /// [`Self::save`] up to the rename: [`PendingSave::commit`] puts it in place (once
    /// the report it goes with has left, see `crate::export::Exporter::export_then`).
    pub fn prepare(&self, saved: &Saved, sync: bool) -> io::Result<PendingSave> {
        let seq = self
            .prepared
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let tmp = self.dir.join(format!("{FILE}.tmp.{seq}"));
        let pending = PendingSave {
            seq,
            tmp,
            dir: self.dir.clone(),
            committed: self.committed.clone(),
        };
        let file = std::fs::File::create(&pending.tmp)?;
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        // The encoder gets large blocks, not serde's many small writes (each a call
        // into the compressor).
        let mut out = io::BufWriter::with_capacity(1 << 16, gz);
        serde_json::to_writer(&mut out, saved)?;
        let gz = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        let file = gz.finish()?;
        if sync {
            file.sync_all()?;
        }
        Ok(pending)
    }
}

/// Whether `a` was saved after `b` (files as read: path and bytes).
fn saved_later(a: &(PathBuf, Vec<u8>), b: &(PathBuf, Vec<u8>)) -> bool {
    #[derive(Deserialize)]
    struct Stamp {
        saved_unix_nano: Option<u64>,
    }
    let stamp = |bytes: &[u8]| decode::<Stamp>(bytes).ok().and_then(|s| s.saved_unix_nano);
    let mtime = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    match (stamp(&a.1), stamp(&b.1)) {
        (Some(a), Some(b)) => a > b,
        _ => mtime(&a.0) > mtime(&b.0),
    }
}

/// A saved state, gzip-compressed or (as earlier versions wrote it) plain JSON.
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        serde_json::from_reader(io::BufReader::new(flate2::read::GzDecoder::new(bytes)))
            .map_err(|e| e.to_string())
    } else {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// How this start continues the previous run.
pub struct Resume {
    /// Start of the cumulative series: the previous run's when the counts continue.
    pub start_unix_nano: u64,
    /// The previous run's state; its readings only when the counts continue.
    pub saved: Option<Saved>,
    /// Whether the kernel's counts continue from the previous run (same pin set, or
    /// an older one whose counts this start read and carries).
    pub counts_continue: bool,
    /// The counts continue across a switch of pin sets: the carry still has to be
    /// applied (`crate::probes::handover`).
    pub handed_over: bool,
}

impl Resume {
    /// Decides from the saved state and this start's pin set (`name`, and whether its
    /// maps were found pinned) and the older set this start read at the switch, if any
    /// (`handed_over_from`), saying why in the log.
    pub fn decide(
        saved: Option<Saved>,
        pins: Option<(&str, bool)>,
        handed_over_from: Option<&str>,
        now: u64,
    ) -> Self {
        let Some(saved) = saved else {
            if let Some((name, true)) = pins {
                tracing::warn!(
                    pins = name,
                    "pinned maps found but no saved readings: the first report carries                      everything counted since they were created"
                );
            }
            return Self {
                start_unix_nano: now,
                saved: None,
                counts_continue: false,
                handed_over: false,
            };
        };
        let how = if saved.clean_exit {
            "exited cleanly"
        } else {
            "did not exit cleanly (killed or crashed): its last interval is in the first report"
        };
        tracing::info!(
            version = saved.version,
            started = %crate::util::time::rfc3339(saved.start_unix_nano),
            saved = %crate::util::time::rfc3339(saved.saved_unix_nano),
            "previous run {how}"
        );
        let mut handed_over = false;
        let continues = match (pins, saved.pins.as_deref()) {
            (Some((now_pins, true)), Some(then)) if now_pins == then => true,
            (Some(_), Some(then)) if handed_over_from == Some(then) => {
                handed_over = true;
                true
            }
            (Some((now_pins, _)), Some(then)) => {
                tracing::warn!(
                    previous = then,
                    now = now_pins,
                    "the kernel maps were replaced (another version or layout) and the \
                     previous run's maps were not read at the switch: cumulative series \
                     start again with a new start time"
                );
                false
            }
            (None, Some(_)) | (Some(_), None) | (None, None) => {
                tracing::info!(
                    "counts start afresh ([agent] keep_attached is off now or was off                      then): the kernel's maps did not outlive the previous run"
                );
                false
            }
        };
        let mut saved = saved;
        if !continues {
            saved.readings = SavedReadings::default();
            saved.drops.clear();
            saved.drops_carried.clear();
            saved.programs.clear();
        }
        Self {
            start_unix_nano: if continues {
                saved.start_unix_nano
            } else {
                now
            },
            saved: Some(saved),
            counts_continue: continues,
            handed_over,
        }
    }
}

/// Removes the saved state (`nodepulse cleanup`); returns the files removed.
pub fn remove(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    // Saves prepared by a killed run and never committed.
    let pending: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{FILE}.tmp.")))
        .collect();
    for name in [
        FILE.to_owned(),
        format!("{FILE}.tmp"),
        format!("{FILE}.unreadable"),
        PLAIN.to_owned(),
        format!("{PLAIN}.unreadable"),
    ]
    .into_iter()
    .chain(pending)
    {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved() -> Saved {
        Saved {
            format: FORMAT,
            version: "test".into(),
            pins: Some("0.1.0-00".into()),
            start_unix_nano: 42,
            saved_unix_nano: 43,
            clean_exit: true,
            readings: SavedReadings::default(),
            drops: BTreeMap::from([("block_series_map_full".into(), 3)]),
            drops_carried: BTreeMap::new(),
            programs: BTreeMap::new(),
            detector: None,
        }
    }

    #[test]
    fn saves_and_loads_and_moves_an_unreadable_file_aside() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("sub")).unwrap();
        assert!(state.load().unwrap().is_none(), "nothing saved yet");
        state.save(&saved(), true).unwrap();
        let back = state.load().unwrap().unwrap();
        assert_eq!(back.start_unix_nano, 42);
        assert_eq!(back.drops["block_series_map_full"], 3);

        std::fs::write(state.path(), b"{not json").unwrap();
        let err = state.load().unwrap_err().to_string();
        assert!(err.contains("moved to"), "{err}");
        assert!(state.load().unwrap().is_none(), "starts afresh after that");
        assert_eq!(remove(&dir.path().join("sub")).unwrap().len(), 1);
    }

    /// A save is in place only once committed; a save committed after a newer one (by
    /// the console's writer thread) does not replace it; uncommitted ones leave no file.
    #[test]
    fn a_prepared_save_is_in_place_only_when_committed_and_never_over_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let at = |start| Saved {
            start_unix_nano: start,
            ..saved()
        };
        let first = state.prepare(&at(1), false).unwrap();
        assert!(
            state.load().unwrap().is_none(),
            "not in place before the commit"
        );
        let second = state.prepare(&at(2), false).unwrap();
        let third = state.prepare(&at(3), false).unwrap();
        second.commit().unwrap();
        assert_eq!(state.load().unwrap().unwrap().start_unix_nano, 2);
        first.commit().unwrap();
        assert_eq!(state.load().unwrap().unwrap().start_unix_nano, 2, "older");
        drop(third);
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(files.len(), 1, "only the state file: {files:?}");
        // A killed run's uncommitted save is cleared at the next open.
        std::mem::forget(state.prepare(&at(4), false).unwrap());
        StateDir::open(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// The state of 1,000 learned series (readings and detector), as the pipeline saves
    /// it every interval: its size and the time to build and write it.
    #[test]
    fn a_thousand_series_state_stays_small_when_written() {
        use crate::{
            aggregate::{ExpHistogram, saved::SavedReading},
            detect::{DetectConfig, Detector},
        };
        const SERIES: usize = 1000;
        let labels: Vec<BTreeMap<String, String>> = (0..SERIES)
            .map(|i| {
                BTreeMap::from([
                    ("device".to_owned(), format!("nvme{}n1", i / 3)),
                    ("dev".to_owned(), format!("259:{i}")),
                    (
                        "op".to_owned(),
                        ["read", "write", "flush"][i % 3].to_owned(),
                    ),
                ])
            })
            .collect();
        // A latency spread over ~40 buckets (10 µs to 1 ms at scale 3), 1,500 samples an
        // interval: enough for the default windows to close and baselines to fill.
        let interval = |shift: i32| {
            ExpHistogram::from_buckets(
                0,
                0,
                (0..40).map(|b| (106 + b + shift, 20 + 40 * (20 - (b - 20).abs()) as u64 / 10)),
            )
        };
        let config = DetectConfig::default();
        // Intervals of 10 s until every default baseline has learned (its period and its
        // windows), with a margin.
        let windows =
            (config.baseline_windows as u64 + 5) * config.min_window.as_secs().div_ceil(10);
        let steps = windows.max(config.learning_period.as_secs() / 10 + 10);
        let mut detector = Detector::new(config, "n");
        let mut t = 1_000_000_000_000u64;
        for step in 0..steps as i32 {
            t += 10_000_000_000;
            let h = interval(step % 3);
            detector.update(
                t,
                10_000_000_000,
                labels.iter().map(|l| ("block.io.latency", l.clone(), &h)),
            );
        }
        assert_eq!(detector.learning().count(), 0, "every baseline learned");
        let cumulative = ExpHistogram::from_buckets(
            0,
            0,
            (0..60).map(|b| (100 + b, 1_000_000_000 + b as u64 * 7_777_777)),
        );
        let histograms = labels
            .iter()
            .map(|l| SavedReading {
                family: "block.io.latency".into(),
                entity: None,
                labels: l.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                hist: cumulative.clone(),
            })
            .collect();

        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let started = std::time::Instant::now();
        let mut s = saved();
        s.readings.histograms = histograms;
        s.detector = Some(detector.snapshot());
        let snapshot = started.elapsed();
        state.save(&s, false).unwrap();
        let took = started.elapsed();
        let size = std::fs::metadata(state.path()).unwrap().len();
        let readings = serde_json::to_vec(&s.readings).unwrap().len();
        let json = serde_json::to_vec(&s).unwrap().len();
        eprintln!(
            "state of {SERIES} series: {json} bytes of JSON ({readings} of readings), \
             {size} bytes written, built and written in {took:?} (detector snapshot {snapshot:?})"
        );
        let back = state.load().unwrap().unwrap();
        assert_eq!(back.readings.histograms.len(), SERIES);
        assert!(size < 1 << 20, "{size} bytes");
    }

    #[test]
    fn an_earlier_versions_plain_state_is_read_then_superseded() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        std::fs::write(
            dir.path().join(PLAIN),
            serde_json::to_vec(&saved()).unwrap(),
        )
        .unwrap();
        assert_eq!(state.load().unwrap().unwrap().start_unix_nano, 42);
        state.save(&saved(), false).unwrap();
        assert!(!dir.path().join(PLAIN).exists());
        assert!(
            std::fs::read(state.path())
                .unwrap()
                .starts_with(&[0x1f, 0x8b])
        );
        assert_eq!(state.load().unwrap().unwrap().start_unix_nano, 42);
    }

    #[test]
    fn another_format_is_refused_with_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let mut old = saved();
        old.format = FORMAT + 1;
        state.save(&old, false).unwrap();
        let err = state.load().unwrap_err().to_string();
        assert!(err.contains("format"), "{err}");
    }

    #[test]
    fn of_a_plain_and_a_compressed_state_the_last_saved_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let write_plain = |start, saved_at| {
            let mut plain = saved();
            plain.start_unix_nano = start;
            plain.saved_unix_nano = saved_at;
            std::fs::write(dir.path().join(PLAIN), serde_json::to_vec(&plain).unwrap()).unwrap();
        };
        // Compressed saved at 43; a rollback then wrote plain JSON at 50.
        state.save(&saved(), false).unwrap();
        write_plain(7, 50);
        assert_eq!(state.load().unwrap().unwrap().start_unix_nano, 7);
        // A plain file older than the compressed one is stale.
        write_plain(7, 40);
        assert_eq!(state.load().unwrap().unwrap().start_unix_nano, 42);
        // Without stamps, the newer file by mtime.
        std::fs::write(dir.path().join(PLAIN), b"{}").unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(state.path())
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(
            state.load().is_err(),
            "the newer, unstamped plain file is read"
        );
        // The first save leaves only the compressed file.
        state.save(&saved(), false).unwrap();
        assert!(!dir.path().join(PLAIN).exists());
        assert_eq!(state.load().unwrap().unwrap().start_unix_nano, 42);
    }
}
