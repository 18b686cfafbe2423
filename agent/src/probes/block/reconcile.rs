//! The probe's counts set against the kernel's own, per device and operation, every
//! interval: `/sys/block/<disk>/stat` counts each completed request once (partitions
//! are added to their disk by the kernel itself), and the probe has recorded it, or
//! counted it as unrecorded (unseen, unmatched). What is left over is a completion the
//! probe never saw at all (its issue was skipped too, so no slot was left to find):
//! `block.io.unrecorded{cause=unaccounted}`. The other sign, the probe holding more
//! than the kernel completed, is a double count: `block.io.overcounted`.
//!
//! When the two are compared matters. The kernel counts a request after the
//! completion tracepoint, a lost completion is counted as unseen only when its request
//! is issued again or swept, and the maps are read one after the other; so the counts
//! agree only at a quiet instant. A device is compared when its stat reads the same
//! before and after the probe's maps were read (no completion in between), and neither
//! the kernel nor the probe has a request of it in flight (every lost completion with
//! a slot has been swept into `unseen`, and nothing is half-way). Requests in flight
//! at an interval's end are then simply not part of either count yet. The difference
//! is kept as two monotonic totals whose difference follows it: a device busy at every
//! reading is compared at its next idle one, and nothing is lost meanwhile.

use std::{collections::BTreeMap, path::Path};

use agent_common::block::{DeviceReconcile, STAT_GROUPS};

/// A disk's completed requests per stat group and its requests in flight, from
/// `/sys/block/<disk>/stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStat {
    pub completed: [u64; STAT_GROUPS],
    pub in_flight: u64,
}

impl DiskStat {
    /// Parses a `stat` file: reads (field 1), writes (5), in flight (9), discards
    /// (12, since 4.18) and flushes (16, since 5.5); a kernel without the later fields
    /// counts none of those.
    pub fn parse(text: &str) -> Option<Self> {
        let f: Vec<u64> = text
            .split_whitespace()
            .map(|v| v.parse::<u64>())
            .collect::<Result<_, _>>()
            .ok()?;
        if f.len() < 11 {
            return None;
        }
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        Some(Self {
            completed: [at(0), at(4), at(11), at(15)],
            in_flight: at(8),
        })
    }
}

/// Every whole disk under `<sys_root>/block`, by device number.
pub fn read_disks(sys_root: &Path) -> BTreeMap<u32, DiskStat> {
    let Ok(dir) = std::fs::read_dir(sys_root.join("block")) else {
        return BTreeMap::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let path = e.path();
            let number = std::fs::read_to_string(path.join("dev")).ok()?;
            let dev = agent_common::dev::parse(number.trim())?;
            let stat = DiskStat::parse(&std::fs::read_to_string(path.join("stat")).ok()?)?;
            Some((dev, stat))
        })
        .collect()
}

/// Where a device's comparison begins when it has none yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The kernel's counts read just before the programs were attached to fresh maps:
    /// everything since is the probe's to see.
    Attach([u64; STAT_GROUPS]),
    /// A disk that appeared after that: the kernel and the probe both count from 0.
    New,
    /// Neither is known (maps adopted from an earlier run that had not compared the
    /// device, or the device's counts were dropped when it went away): from the first
    /// quiet reading, taking the two as equal then.
    FirstQuiet,
}

/// What the probe holds for one device at a reading: completions per stat group
/// (recorded, unseen and unmatched) and the requests it counts in flight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Probed {
    pub counted: [u64; STAT_GROUPS],
    pub in_flight: u64,
}

/// One device's comparison at a reading; `before` and `after` are its stat read on
/// both sides of the probe's maps. Returns the new state when it changed.
pub fn compare(
    state: Option<DeviceReconcile>,
    start: Start,
    before: &DiskStat,
    after: &DiskStat,
    probed: &Probed,
) -> Option<DeviceReconcile> {
    let quiet = before == after && after.in_flight == 0 && probed.in_flight == 0;
    let mut s = match (state, start) {
        (Some(s), _) => s,
        (None, Start::Attach(kernel)) => DeviceReconcile {
            kernel_seen: kernel,
            ..Default::default()
        },
        (None, Start::New) => DeviceReconcile::default(),
        (None, Start::FirstQuiet) => {
            return quiet.then(|| DeviceReconcile {
                kernel_seen: after.completed,
                probe_seen: probed.counted,
                ..Default::default()
            });
        }
    };
    let started = s;
    if !quiet {
        return (state.is_none()).then_some(s);
    }
    for g in 0..STAT_GROUPS {
        let (kernel, probe) = (after.completed[g], probed.counted[g]);
        let (last_kernel, last_probe) = (s.kernel_seen[g], s.probe_seen[g]);
        s.kernel_seen[g] = kernel;
        s.probe_seen[g] = probe;
        if kernel < last_kernel || probe < last_probe {
            // A new disk under the same number, or the probe's counts dropped: both
            // sides begin again here; the totals so far stay.
            continue;
        }
        let step = i128::from(kernel - last_kernel) - i128::from(probe - last_probe);
        if step > 0 {
            s.unaccounted[g] += step as u64;
        } else if step < 0 {
            s.overcounted[g] += (-step) as u64;
        }
    }
    (state.is_none() || s != started).then_some(s)
}

/// An older pin set's comparison `old_state`, continued in this set's counts at a
/// hand-over: `old` is what the old set had counted at the switch, `base` what this
/// set had counted of the same events then. The reports go on from `old` by what this
/// set counts beyond `base`, so the comparison does the same: the kernel's side is
/// where the old set's last quiet reading left it plus what the old set counted since
/// (taken as right until the next quiet reading says otherwise), the probe's side is
/// `base`. The next quiet reading then judges everything since the old set's last one
/// against what was reported, across the switch. Both sides are lowered by the same
/// amount (only differences count) so that neither is above what it will read next,
/// which `compare` would take for a new disk. Totals start at zero: the old set's are
/// carried with its counts.
pub fn continued(
    old_state: &DeviceReconcile,
    old: [u64; STAT_GROUPS],
    base: [u64; STAT_GROUPS],
) -> DeviceReconcile {
    let mut s = DeviceReconcile::default();
    for g in 0..STAT_GROUPS {
        let kernel = old_state.kernel_seen[g] + old[g].saturating_sub(old_state.probe_seen[g]);
        let lower = kernel.min(base[g]);
        s.kernel_seen[g] = kernel - lower;
        s.probe_seen[g] = base[g] - lower;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(completed: [u64; 4], in_flight: u64) -> DiskStat {
        DiskStat {
            completed,
            in_flight,
        }
    }

    fn probed(counted: [u64; 4], in_flight: u64) -> Probed {
        Probed {
            counted,
            in_flight,
        }
    }

    #[test]
    fn parses_the_kernels_stat_file() {
        let text = "  100  2  800  5  40  0  320  7  3  12  12  6  0  48  1  9  4\n";
        assert_eq!(DiskStat::parse(text), Some(stat([100, 40, 6, 9], 3)));
        // 4.17 and older: eleven fields, no discards or flushes.
        let old = "1 0 8 1 2 0 16 1 0 2 2\n";
        assert_eq!(DiskStat::parse(old), Some(stat([1, 2, 0, 0], 0)));
        assert_eq!(DiskStat::parse("1 2 x"), None);
        assert_eq!(DiskStat::parse(""), None);
    }

    #[test]
    fn completions_the_probe_never_saw_are_unaccounted_once() {
        let k = stat([110, 5, 0, 1], 0);
        let s = compare(
            None,
            Start::Attach([100, 5, 0, 0]),
            &k,
            &k,
            &probed([7, 0, 0, 1], 0),
        )
        .unwrap();
        assert_eq!(s.unaccounted, [3, 0, 0, 0]);
        assert_eq!(s.overcounted, [0; 4]);
        // Read again with nothing new: nothing moves, nothing to write.
        assert_eq!(compare(Some(s), Start::New, &k, &k, &probed([7, 0, 0, 1], 0)), None);
        // The probe later counts 2 more for no new kernel completion (a double count:
        // a quiet reading leaves nothing of the probe's to be counted later): the
        // difference is 1 now, and both totals show how it got there.
        let s = compare(Some(s), Start::New, &k, &k, &probed([9, 0, 0, 1], 0)).unwrap();
        assert_eq!((s.unaccounted[0], s.overcounted[0]), (3, 2));
    }

    /// An upgrade: the old set last compared at 100 kernel completions (its own count
    /// 90), counted 150 by the switch; the new set had counted 4 of the same events
    /// then (unmatched: its completion program ran before its issue program). After
    /// the switch the kernel completes 60 more and the new set counts 61: the switch
    /// counted one twice, and the next quiet reading says so.
    #[test]
    fn a_comparison_continues_across_a_hand_over_and_finds_a_double_count() {
        let old = DeviceReconcile {
            kernel_seen: [100, 0, 0, 0],
            probe_seen: [90, 0, 0, 0],
            unaccounted: [7, 0, 0, 0],
            overcounted: [0; 4],
        };
        let s = continued(&old, [150, 0, 0, 0], [4, 0, 0, 0]);
        assert_eq!(s.unaccounted, [0; 4], "the old totals are carried, not repeated");
        let k = stat([220, 0, 0, 0], 0);
        let s = compare(Some(s), Start::FirstQuiet, &k, &k, &probed([65, 0, 0, 0], 0)).unwrap();
        assert_eq!((s.unaccounted[0], s.overcounted[0]), (0, 1));
        // Exact across the switch: nothing found.
        let s = continued(&old, [150, 0, 0, 0], [4, 0, 0, 0]);
        let s = compare(Some(s), Start::FirstQuiet, &k, &k, &probed([64, 0, 0, 0], 0));
        assert_eq!(s.map(|s| (s.unaccounted[0], s.overcounted[0])), Some((0, 0)));
    }

    #[test]
    fn a_double_count_is_shown_not_clamped_and_both_totals_follow_the_difference() {
        let k = stat([10, 0, 0, 0], 0);
        let s = compare(None, Start::New, &k, &k, &probed([12, 0, 0, 0], 0)).unwrap();
        assert_eq!((s.unaccounted[0], s.overcounted[0]), (0, 2));
        let k = stat([20, 0, 0, 0], 0);
        let s = compare(Some(s), Start::New, &k, &k, &probed([19, 0, 0, 0], 0)).unwrap();
        // Difference now +1: up by 3 from -2.
        assert_eq!((s.unaccounted[0], s.overcounted[0]), (3, 2));
    }

    #[test]
    fn nothing_is_compared_while_anything_is_in_flight_or_completing() {
        let base = compare(
            None,
            Start::New,
            &stat([0; 4], 0),
            &stat([0; 4], 0),
            &probed([0; 4], 0),
        )
        .unwrap();
        let busy = [
            // The kernel has a request in flight.
            (stat([5, 0, 0, 0], 1), stat([5, 0, 0, 0], 1), probed([5, 0, 0, 0], 0)),
            // The probe still counts one in flight (a lost completion not swept yet).
            (stat([5, 0, 0, 0], 0), stat([5, 0, 0, 0], 0), probed([4, 0, 0, 0], 1)),
            // A completion between the two readings of the stat.
            (stat([5, 0, 0, 0], 0), stat([6, 0, 0, 0], 0), probed([5, 0, 0, 0], 0)),
        ];
        for (before, after, p) in busy {
            assert_eq!(compare(Some(base), Start::New, &before, &after, &p), None);
        }
    }

    #[test]
    fn a_device_of_unknown_history_starts_at_its_first_quiet_reading() {
        let (busy, quiet) = (stat([50, 3, 0, 0], 2), stat([52, 3, 0, 0], 0));
        assert_eq!(
            compare(None, Start::FirstQuiet, &busy, &busy, &probed([9, 1, 0, 0], 2)),
            None
        );
        let s = compare(None, Start::FirstQuiet, &quiet, &quiet, &probed([11, 1, 0, 0], 0))
            .unwrap();
        assert_eq!(s.kernel_seen, [52, 3, 0, 0]);
        assert_eq!(s.probe_seen, [11, 1, 0, 0]);
        assert_eq!((s.unaccounted, s.overcounted), ([0; 4], [0; 4]));
    }

    #[test]
    fn a_counter_that_went_back_starts_that_group_again_keeping_the_totals() {
        let k = stat([10, 0, 0, 0], 0);
        let s = compare(None, Start::New, &k, &k, &probed([8, 0, 0, 0], 0)).unwrap();
        assert_eq!(s.unaccounted[0], 2);
        // The disk was replaced: its count restarts at 3.
        let k = stat([3, 0, 0, 0], 0);
        let s = compare(Some(s), Start::New, &k, &k, &probed([9, 0, 0, 0], 0)).unwrap();
        assert_eq!((s.kernel_seen[0], s.probe_seen[0]), (3, 9));
        let k = stat([5, 0, 0, 0], 0);
        let s = compare(Some(s), Start::New, &k, &k, &probed([11, 0, 0, 0], 0)).unwrap();
        // Both moved by 2 since: the difference is the 2 from before, unchanged.
        assert_eq!((s.unaccounted[0], s.overcounted[0]), (2, 0));
    }
}
