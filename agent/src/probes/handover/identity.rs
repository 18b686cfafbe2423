//! Which maps of an older pin set hold the same thing as this build's. A map's shape
//! as the kernel sees it (type, key and value sizes) does not say what its bytes mean,
//! so each pin set also pins a small map of fingerprints: per map, a hash of its key
//! and value types (names and sizes) and of a revision to bump when a type's meaning
//! changes without its name or size changing.

use std::{collections::BTreeMap, path::Path};

use agent_common::{
    block::{BlockErrorKey, BlockHistograms, BlockKey, DeviceDepth, DeviceReconcile, InflightSlot},
    hist::Histogram,
    kvm::VcpuPending,
    names,
    sched::{RunqCpu, RunqTask},
    sparse::{SparseCell, SparseKey},
};

use super::raw;

/// Where a pin set keeps its fingerprints (`<set>/fingerprints`).
pub const FILE: &str = "fingerprints";
/// A map name as the fingerprint map's key (the kernel's own name field has 16 bytes,
/// too few for `BLOCK_LATENCY_SPILL`).
type Name = [u8; 32];

/// What a map holds, for the hand-over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holds {
    /// Cumulative counts (histograms, counters) the agent reports: carried over when
    /// the old map holds the same thing.
    Counts,
    /// The programs' working state (request slots, start times, thresholds, the
    /// outlier ring): the new programs keep their own; nothing to carry.
    State,
}

/// One map of this build: its name, what it holds and its fingerprint.
pub struct MapKind {
    pub name: &'static str,
    pub holds: Holds,
    pub fingerprint: u64,
}

fn kind<K, V>(name: &'static str, holds: Holds, revision: u32) -> MapKind {
    let text = format!(
        "{}:{}/{}:{}/{revision}",
        std::any::type_name::<K>(),
        size_of::<K>(),
        std::any::type_name::<V>(),
        size_of::<V>()
    );
    MapKind {
        name,
        holds,
        fingerprint: super::super::pins::layout(text.as_bytes(), ""),
    }
}

/// The upgrade test's build changes what `BLOCK_ERRORS` holds (as an upgrade that
/// changed a value's meaning would): it must be reset, not carried.
const ERRORS_REVISION: u32 = if cfg!(feature = "test-upgrade-layout") {
    1
} else {
    0
};

/// Every map of the eBPF object (a unit test checks that none is missing). Bump a
/// revision when a key or value type keeps its name and size but changes meaning.
pub fn maps() -> Vec<MapKind> {
    use Holds::{Counts, State};
    vec![
        kind::<BlockKey, BlockHistograms>(names::MAP_BLOCK_LATENCY, Counts, 0),
        kind::<BlockKey, BlockHistograms>(names::MAP_BLOCK_LATENCY_SPILL, Counts, 0),
        kind::<u32, DeviceDepth>(names::MAP_BLOCK_DEPTH, Counts, 0),
        kind::<BlockErrorKey, u64>(names::MAP_BLOCK_ERRORS, Counts, ERRORS_REVISION),
        kind::<u32, DeviceReconcile>(names::MAP_BLOCK_RECONCILE, Counts, 0),
        kind::<u32, InflightSlot>(names::MAP_BLOCK_INFLIGHT, State, 0),
        kind::<u32, u32>(names::MAP_BLOCK_SLOT_LOCKS, State, 0),
        kind::<u32, u64>(names::MAP_BLOCK_THRESHOLDS, State, 0),
        kind::<u32, Histogram>(names::MAP_SCHED_LATENCY, Counts, 0),
        kind::<u32, u32>(names::MAP_VCPU_THREADS, State, 0),
        kind::<u32, u32>(names::MAP_VCPU_FLAG, State, 0),
        kind::<u32, VcpuPending>(names::MAP_VCPU_PENDING, State, 0),
        kind::<u32, RunqCpu>(names::MAP_RUNQ_SATURATION, Counts, 0),
        kind::<u32, RunqTask>(names::MAP_RUNQ_TASKS, State, 0),
        kind::<u32, u64>(names::MAP_PROBE_COUNTERS, Counts, 0),
        kind::<SparseKey, SparseCell>(names::MAP_SPARSE_HIST, Counts, 0),
        kind::<(), ()>(names::MAP_OUTLIERS, State, 0),
        kind::<u32, u64>(names::MAP_OUTLIER_MIN, State, 0),
        kind::<u32, u8>(names::MAP_TCP_PORT_GROUPS, State, 0),
        kind::<u32, Histogram>(names::MAP_TCP_RTT, Counts, 0),
        kind::<u32, u64>(names::MAP_TCP_RETRANSMITS, Counts, 0),
    ]
}

fn key(name: &str) -> Name {
    let mut k = [0u8; size_of::<Name>()];
    for (d, s) in k.iter_mut().zip(name.bytes()) {
        *d = s;
    }
    k
}

/// Pins this build's fingerprints in the pin set `dir` (kept if already there: the
/// same layout is the same build).
pub fn pin(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(FILE);
    if path.exists() {
        return Ok(());
    }
    let maps = maps();
    let shape = raw::Info {
        map_type: raw::HASH,
        key_size: size_of::<Name>() as u32,
        value_size: 8,
        ..Default::default()
    };
    let fd = raw::create(&shape, maps.len() as u32, "np_fingerprint")?;
    let map = raw::RawMap::new(fd, 1)?;
    for m in &maps {
        map.set(&key(m.name), &m.fingerprint.to_ne_bytes())?;
    }
    raw::pin(&map.fd, &path)
}

/// The fingerprints an older pin set recorded; `None` when it recorded none (a build
/// from before the hand-over carried counts).
pub fn read(dir: &Path) -> Option<BTreeMap<String, u64>> {
    let map = raw::RawMap::new(raw::open(&dir.join(FILE)).ok()?, 1).ok()?;
    let mut out = BTreeMap::new();
    for k in map.keys().ok()? {
        let value = map.get(&k).ok()??;
        let name = String::from_utf8_lossy(&k)
            .trim_end_matches('\0')
            .to_owned();
        out.insert(name, u64::from_ne_bytes(value.get(..8)?.try_into().ok()?));
    }
    Some(out)
}

/// Why a map of the old set cannot be carried into this one, if it cannot.
pub fn mismatch(
    old: &raw::Info,
    new: &raw::Info,
    old_fingerprint: Option<u64>,
    new_fingerprint: u64,
) -> Option<String> {
    if old.map_type != new.map_type {
        return Some(format!("map type {} became {}", old.map_type, new.map_type));
    }
    if old.key_size != new.key_size || old.value_size != new.value_size {
        return Some(format!(
            "key/value size {}/{} became {}/{}",
            old.key_size, old.value_size, new.key_size, new.value_size
        ));
    }
    match old_fingerprint {
        None => Some("the old set recorded no fingerprint for it".into()),
        Some(f) if f != new_fingerprint => {
            Some("its key or value type changed (layout fingerprint differs)".into())
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_map_of_the_object_has_a_kind_and_a_fingerprint() {
        let object = aya_obj::Object::parse(crate::probes::EBPF_OBJECT).unwrap();
        let kinds = maps();
        for kind in &kinds {
            assert!(
                kind.name.len() <= size_of::<Name>(),
                "{} is too long",
                kind.name
            );
        }
        for name in object.maps.keys().filter(|n| !n.starts_with('.')) {
            assert!(
                kinds.iter().any(|k| k.name == name),
                "map {name} has no entry in handover::identity::maps()"
            );
        }
        assert_ne!(
            kind::<u32, u64>("a", Holds::Counts, 0).fingerprint,
            kind::<u32, u64>("a", Holds::Counts, 1).fingerprint,
            "a revision changes it"
        );
    }

    #[test]
    fn a_map_is_carried_only_with_the_same_shape_and_fingerprint() {
        let info = raw::Info {
            map_type: 5,
            key_size: 8,
            value_size: 64,
            max_entries: 10,
            ..Default::default()
        };
        let bigger = raw::Info {
            max_entries: 11,
            ..info
        };
        assert_eq!(
            mismatch(&info, &bigger, Some(1), 1),
            None,
            "resized: carried"
        );
        let wider = raw::Info {
            value_size: 72,
            ..info
        };
        assert!(
            mismatch(&info, &wider, Some(1), 1)
                .unwrap()
                .contains("64 became")
        );
        assert!(
            mismatch(&info, &info, Some(2), 1)
                .unwrap()
                .contains("fingerprint")
        );
        assert!(
            mismatch(&info, &info, None, 1)
                .unwrap()
                .contains("no fingerprint")
        );
    }
}
