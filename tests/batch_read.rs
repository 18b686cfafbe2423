//! Reading a per-CPU hash map in batches (root, real kernel): every entry and every
//! CPU's value exactly once, the same as key by key, across many calls and through hash
//! buckets too full for one call.

use std::{
    collections::BTreeMap,
    os::fd::{FromRawFd, OwnedFd},
};

use aya::maps::{Map, MapData, PerCpuValues};
use nodepulse::probes::batch_read::PerCpuHash;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;

/// A per-CPU hash map of u32 → u32 made by the kernel: both sizes below the 8 bytes the
/// kernel pads each CPU's value to, so the layout is tested too.
fn create_map(max_entries: u32) -> Map {
    // map_type, key_size, value_size, max_entries, map_flags; the rest of bpf_attr zero.
    let mut attr = [0u32; 16];
    attr[..5].copy_from_slice(&[BPF_MAP_TYPE_PERCPU_HASH, 4, 4, max_entries, 0]);
    // SAFETY: attr is a zeroed bpf_attr prefix that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_mut_ptr(),
            size_of_val(&attr),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the kernel just returned this fd, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    Map::from_map_data(MapData::from_fd(fd).unwrap()).unwrap()
}

type Entries = BTreeMap<u32, Vec<u32>>;

fn filled(entries: u32) -> (PerCpuHash<u32, u32>, Entries) {
    let cpus = aya::util::nr_cpus().unwrap();
    let mut map =
        PerCpuHash::<u32, u32>::new(create_map((entries + entries / 3).max(1)), "TEST").unwrap();
    let mut expected = Entries::new();
    for key in 0..entries {
        let per_cpu: Vec<u32> = (0..cpus as u32).map(|cpu| key * 1000 + cpu + 1).collect();
        map.map_mut()
            .insert(key, PerCpuValues::try_from(per_cpu.clone()).unwrap(), 0)
            .unwrap();
        expected.insert(key, per_cpu);
    }
    (map, expected)
}

fn read(map: &PerCpuHash<u32, u32>, batched: bool) -> Entries {
    let mut got = Entries::new();
    let mut record = |key, per_cpu: &[u32]| {
        let before = got.insert(key, per_cpu.to_vec());
        assert!(before.is_none(), "key {key} delivered twice");
    };
    if batched {
        map.for_each(&mut record).unwrap();
    } else {
        map.for_each_key_by_key(&mut record).unwrap();
    }
    got
}

#[test]
fn batches_read_every_entry_and_cpu_once_like_key_by_key() {
    require_root!();
    let (map, expected) = filled(3000);
    let batched = read(&map, true);
    assert_eq!(
        map.key_by_key(),
        None,
        "this kernel has batch lookup (5.6+)"
    );
    assert_eq!(batched.len(), expected.len());
    assert!(
        batched == expected,
        "batched read differs from what was written"
    );
    assert!(read(&map, false) == expected, "key-by-key read differs");
}

#[test]
fn small_batches_cross_calls_and_full_buckets_exactly() {
    require_root!();
    let (map, expected) = filled(3000);
    // One entry's values per call: most calls end mid-map, and a bucket holding two
    // entries does not fit (ENOSPC) until the batch grows.
    let map = map.with_values_per_call(1);
    assert!(read(&map, true) == expected);
    // An empty map is read without error.
    let (empty, _) = filled(0);
    assert!(read(&empty, true).is_empty());
}
