//! Switching from the pin set of another layout (an upgrade, a downgrade, a
//! configuration that changed program globals or map sizes) without losing what the
//! old programs counted while the agent was down.
//!
//! Order: the new programs are attached beside the old ones first (make before
//! break), so every event from then on is seen by both sets. With both running, each
//! count-holding map entry is read old and new at one instant: new, old, new again,
//! until the two new readings are equal (no event touched the entry between them, so
//! the old reading is exactly "everything before" and the new one "what the new set
//! had counted of it": the same events). The old set is then removed. The pipeline
//! reports the old reading plus what the new map counts beyond the new reading: every
//! event once, none lost to a gap, none counted by both sets. An entry that never
//! settles (after [`TRIES`] attempts) is taken at the last new reading and named in
//! the log: events between the two readings are then lost, at most the difference.
//!
//! Readings go through the probes' own code: each map's fd number is lent, for the
//! read, to a private copy (old or new values), see [`raw::Lent`].
//!
//! A map is carried only when the old set's map has the same type, key and value
//! sizes and the same fingerprint ([`identity`]); the others are reset, each named
//! with its reason.

pub mod identity;
pub mod raw;

use std::{os::fd::AsRawFd, path::Path, time::Duration};

use super::{Collection, Probes, Reading};
use crate::aggregate::TrackedCounter;
use identity::Holds;

/// Attempts at reading one entry at a quiet instant.
const TRIES: usize = 200;
/// Between the old reading and the second new one: longer than the time between the
/// old and the new program handling one event (both run in the same tracepoint call).
const SETTLE: Duration = Duration::from_micros(20);

/// What the old set had counted at the switch, and what the new set had counted of
/// the same events then.
#[derive(Debug, Default)]
pub struct Handover {
    /// The old pin set's name (`<version>-<layout>`).
    pub from: String,
    pub old: Counts,
    pub base: Counts,
    /// Maps whose counts continue.
    pub carried: Vec<&'static str>,
    /// Maps reset, with the reason.
    pub reset: Vec<(&'static str, String)>,
    /// Entries that never settled: (map, entries).
    pub unsettled: Vec<(&'static str, usize)>,
    /// Entries read, and the readings repeated because an event came between.
    pub entries: usize,
    pub repeated: usize,
    /// How long reading both sets took.
    pub took: std::time::Duration,
}

/// Cumulative readings of the probes' maps.
#[derive(Debug, Default)]
pub struct Counts {
    pub readings: Vec<Reading>,
    pub counters: Vec<TrackedCounter>,
    pub drops: Vec<(&'static str, u64)>,
}

impl From<Collection> for Counts {
    fn from(c: Collection) -> Self {
        Self {
            readings: c.readings,
            counters: c.counters,
            drops: c.drops,
        }
    }
}

/// One count-holding map of this run, with copies of its old and new values.
struct Copies {
    fds: Vec<i32>,
    old: raw::RawMap,
    base: raw::RawMap,
}

/// Reads the old set `from` (in `old_dir`) and this run's (`new_dir`) at one instant;
/// `probes` must have attached their programs already.
pub fn take(
    probes: &mut Probes,
    from: &str,
    old_dir: &Path,
    new_dir: &Path,
) -> Result<Handover, String> {
    let started = std::time::Instant::now();
    let cpus = aya::util::nr_cpus().map_err(|(path, e)| format!("reading {path}: {e}"))?;
    let fingerprints = identity::read(old_dir);
    let mut handover = Handover {
        from: from.to_owned(),
        ..Default::default()
    };
    let mut copies = Vec::new();
    for kind in identity::maps() {
        if kind.holds != Holds::Counts {
            continue;
        }
        let open = |dir: &Path| {
            raw::open(&dir.join("maps").join(kind.name)).and_then(|fd| raw::RawMap::new(fd, cpus))
        };
        let Ok(new) = open(new_dir) else { continue };
        let own = new.fd.as_raw_fd();
        let fds: Vec<i32> = raw::fds_of(new.info.id)
            .into_iter()
            .filter(|&fd| fd != own)
            .collect();
        if fds.is_empty() {
            // No probe reads it (its family is off): nothing to carry.
            continue;
        }
        let copy = |name: &str| {
            raw::create(&new.info, new.info.max_entries, name)
                .and_then(|fd| raw::RawMap::new(fd, cpus))
                .map_err(|e| format!("cannot create a copy of {}: {e}", kind.name))
        };
        let (old_copy, base_copy) = (copy("np_old")?, copy("np_base")?);
        let why = match open(old_dir) {
            Err(e) => Some(format!("not in the old set ({e})")),
            Ok(old) => {
                let fingerprint = fingerprints
                    .as_ref()
                    .and_then(|f| f.get(kind.name).copied());
                match identity::mismatch(&old.info, &new.info, fingerprint, kind.fingerprint) {
                    Some(why) => Some(why),
                    None => {
                        let read = copy_at_one_instant(&old, &new, &old_copy, &base_copy)
                            .map_err(|e| format!("reading {}: {e}", kind.name))?;
                        if read.unsettled > 0 {
                            handover.unsettled.push((kind.name, read.unsettled));
                        }
                        handover.entries += read.entries;
                        handover.repeated += read.repeated;
                        None
                    }
                }
            }
        };
        match why {
            Some(why) => handover.reset.push((kind.name, why)),
            None => handover.carried.push(kind.name),
        }
        copies.push(Copies {
            fds,
            old: old_copy,
            base: base_copy,
        });
    }
    handover.old = read_lent(probes, &copies, |c| &c.old)?;
    handover.base = read_lent(probes, &copies, |c| &c.base)?;
    handover.took = started.elapsed();
    Ok(handover)
}

/// What reading one map at one instant per entry took.
struct Read {
    entries: usize,
    repeated: usize,
    unsettled: usize,
}

/// Copies every entry of `old` and `new` into `old_copy` and `base_copy` as read at
/// one instant for that entry.
fn copy_at_one_instant(
    old: &raw::RawMap,
    new: &raw::RawMap,
    old_copy: &raw::RawMap,
    base_copy: &raw::RawMap,
) -> std::io::Result<Read> {
    let mut keys = old.keys()?;
    keys.extend(new.keys()?);
    keys.sort();
    keys.dedup();
    let mut read = Read {
        entries: keys.len(),
        repeated: 0,
        unsettled: 0,
    };
    for key in &keys {
        let mut settled = false;
        let (mut o, mut n) = (None, None);
        for attempt in 0..TRIES {
            read.repeated += usize::from(attempt > 0);
            let before = new.get(key)?;
            o = old.get(key)?;
            std::thread::sleep(SETTLE);
            n = new.get(key)?;
            if before == n {
                settled = true;
                break;
            }
        }
        read.unsettled += usize::from(!settled);
        if let Some(o) = o {
            // An old map with more entries than the new one holds: those that do not
            // fit are lost, and said so.
            if let Err(e) = old_copy.set(key, &o) {
                tracing::warn!("an old entry does not fit into the new map ({e}): lost");
            }
        }
        if let Some(n) = n {
            base_copy.set(key, &n)?;
        }
    }
    Ok(read)
}

/// The probes' readings with every copied map's fd numbers lent to `which` copy.
fn read_lent(
    probes: &mut Probes,
    copies: &[Copies],
    which: impl Fn(&Copies) -> &raw::RawMap,
) -> Result<Counts, String> {
    let lent = copies
        .iter()
        .map(|c| raw::Lent::lend(&c.fds, &which(c).fd))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot lend a map's fd: {e}"))?;
    let mut out = Collection::default();
    probes.read_counts(&mut out, true);
    drop(lent);
    if let Some((probe, e)) = out.errors.first() {
        return Err(format!("{probe}: {e}"));
    }
    Ok(out.into())
}
