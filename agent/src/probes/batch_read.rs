//! Reading a whole per-CPU hash map with `BPF_MAP_LOOKUP_BATCH`: a few syscalls per
//! map instead of two per key (get-next-key, then lookup), which is what reading the
//! sparse histogram map key by key cost at a storage node's cardinality (43 % of the
//! agent's CPU, thousands of entries every interval). aya 0.14 has no batch
//! operations, so this is a small wrapper over the map's fd. Kernels without batch
//! lookup for the map's type (before 5.6) are read key by key, the reason logged once.

use std::{
    marker::PhantomData,
    os::fd::{AsFd, AsRawFd},
    sync::Mutex,
};

use aya::{
    Pod,
    maps::{Map, MapData, PerCpuHashMap},
};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The kernel's internal "operation not supported" (not in libc): a map type without
/// batch operations.
const ENOTSUPP: i32 = 524;
/// Bytes of per-CPU values one call may return: a few hundred KiB keeps the buffers
/// small on many-CPU hosts and still reads most maps in one call.
const VALUES_PER_CALL: usize = 256 << 10;

/// `union bpf_attr`'s `batch` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A per-CPU hash map read whole each interval; other operations go through
/// [`PerCpuHash::map`] and [`PerCpuHash::map_mut`].
pub struct PerCpuHash<K, V> {
    map: Map,
    name: &'static str,
    cpus: usize,
    values_per_call: usize,
    /// Reusable buffers, and why batch lookup is not used (once it failed).
    state: Mutex<State>,
    _kv: PhantomData<(K, V)>,
}

#[derive(Default)]
struct State {
    keys: Vec<u64>,
    values: Vec<u64>,
    key_by_key: Option<String>,
}

impl<K: Pod, V: Pod> PerCpuHash<K, V> {
    /// `map` must be a (LRU) per-CPU hash map of `K` → `V`.
    pub fn new(map: Map, name: &'static str) -> Result<Self, String> {
        PerCpuHashMap::<&MapData, K, V>::try_from(&map)
            .map_err(|e| format!("{name} is not the per-CPU hash map expected: {e}"))?;
        let cpus = aya::util::nr_cpus().map_err(|(path, e)| format!("reading {path}: {e}"))?;
        Ok(Self {
            map,
            name,
            cpus,
            values_per_call: VALUES_PER_CALL,
            state: Mutex::default(),
            _kv: PhantomData,
        })
    }

    /// At most `bytes` of values per batch call (tests make it small, to cross many
    /// calls and hash buckets that do not fit in one).
    pub fn with_values_per_call(mut self, bytes: usize) -> Self {
        self.values_per_call = bytes;
        self
    }

    pub fn map(&self) -> PerCpuHashMap<&MapData, K, V> {
        PerCpuHashMap::try_from(&self.map).expect("checked in new")
    }

    pub fn map_mut(&mut self) -> PerCpuHashMap<&mut MapData, K, V> {
        PerCpuHashMap::try_from(&mut self.map).expect("checked in new")
    }

    /// Why the map is read key by key, if it is.
    pub fn key_by_key(&self) -> Option<String> {
        self.lock().key_by_key.clone()
    }

    /// Calls `f` with every entry: its key and its value on each possible CPU.
    pub fn for_each(&self, mut f: impl FnMut(K, &[V])) -> Result<(), String> {
        let mut state = self.lock();
        if state.key_by_key.is_none() {
            match self.batched(&mut state, &mut f) {
                Ok(()) => return Ok(()),
                Err(BatchError::Failed(e)) => return Err(format!("reading {}: {e}", self.name)),
                Err(BatchError::Unsupported(why)) => {
                    tracing::info!(map = self.name, "reading key by key: {why}");
                    state.key_by_key = Some(why);
                }
            }
        }
        drop(state);
        self.for_each_key_by_key(f)
    }

    /// [`Self::for_each`] through get-next-key and lookup, two syscalls per key: the
    /// fallback, and what tests check batches against.
    pub fn for_each_key_by_key(&self, mut f: impl FnMut(K, &[V])) -> Result<(), String> {
        for entry in self.map().iter() {
            let (key, per_cpu) = entry.map_err(|e| format!("reading {}: {e}", self.name))?;
            f(key, &per_cpu);
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every entry through `BPF_MAP_LOOKUP_BATCH`. Only a first call that the kernel
    /// refuses means "not supported": once entries were delivered, a fallback would
    /// deliver them twice, so a later failure is an error.
    fn batched(&self, state: &mut State, f: &mut impl FnMut(K, &[V])) -> Result<(), BatchError> {
        let fd = match &self.map {
            Map::PerCpuHashMap(data) | Map::PerCpuLruHashMap(data) => data.fd().as_fd(),
            _ => unreachable!("checked in new"),
        };
        // Per-CPU values are laid out 8-byte aligned, one after another, per key.
        let stride = size_of::<V>().next_multiple_of(8);
        let per_key = stride * self.cpus;
        let in_place = stride == size_of::<V>() && align_of::<V>() <= 8;
        // Keys are packed at their own size.
        let key_size = size_of::<K>();
        let mut chunk = (self.values_per_call / per_key).max(1);
        // The batch token is the hash bucket to resume from (a u32); room for a key
        // in case another map type ever needs one.
        let token_words = key_size.div_ceil(8).max(1);
        let mut tokens = vec![0u64; 2 * token_words];
        let mut per_cpu: Vec<V> = Vec::with_capacity(if in_place { 0 } else { self.cpus });
        let mut first = true;
        loop {
            state.keys.resize((chunk * key_size).div_ceil(8), 0);
            state.values.resize(chunk * per_key / 8, 0);
            let (in_token, out_token) = tokens.split_at_mut(token_words);
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { in_token.as_ptr() as u64 },
                out_batch: out_token.as_mut_ptr() as u64,
                keys: state.keys.as_mut_ptr() as u64,
                values: state.values.as_mut_ptr() as u64,
                count: chunk as u32,
                map_fd: fd.as_raw_fd() as u32,
                ..BatchAttr::default()
            };
            // SAFETY: the attr points at buffers of `count` keys and values (each
            // value `cpus` strides), and at tokens of at least 4 bytes, all alive for
            // the call; the kernel writes back only `count` and `out_batch`.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &mut attr as *mut BatchAttr,
                    size_of::<BatchAttr>(),
                )
            };
            let errno = (ret < 0).then(std::io::Error::last_os_error);
            let n = attr.count as usize;
            let keys = state.keys.as_ptr().cast::<u8>();
            let values = state.values.as_ptr().cast::<u8>();
            for i in 0..n.min(chunk) {
                // SAFETY: entry i lies within the buffers, whose contents the kernel
                // wrote; read_unaligned makes no assumption about K's or V's alignment.
                let key = unsafe { keys.add(i * key_size).cast::<K>().read_unaligned() };
                if in_place {
                    // SAFETY: the values buffer is 8-byte aligned (a Vec<u64>), entry
                    // i's values start at a multiple of 8 and are `cpus` values end to
                    // end (the stride is the size), all written by the kernel; V is
                    // Pod, so any bytes are a valid V. A block of big histograms is
                    // read where it lies instead of copied (megabytes per interval).
                    let per_cpu = unsafe {
                        std::slice::from_raw_parts(values.add(i * per_key).cast::<V>(), self.cpus)
                    };
                    f(key, per_cpu);
                    continue;
                }
                per_cpu.clear();
                for cpu in 0..self.cpus {
                    let at = i * per_key + cpu * stride;
                    // SAFETY: as above.
                    per_cpu.push(unsafe { values.add(at).cast::<V>().read_unaligned() });
                }
                f(key, &per_cpu);
            }
            match errno.as_ref().and_then(std::io::Error::raw_os_error) {
                None => {}
                // Every bucket has been read.
                Some(libc::ENOENT) => return Ok(()),
                // One hash bucket holds more entries than `chunk`: ask for more.
                Some(libc::ENOSPC) if n == 0 => {
                    chunk *= 2;
                    continue;
                }
                Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP) if first && n == 0 => {
                    let e = errno.expect("an errno");
                    return Err(BatchError::Unsupported(format!(
                        "the kernel has no batch lookup for this map type ({e})"
                    )));
                }
                Some(_) => {
                    let e = errno.expect("an errno");
                    return Err(BatchError::Failed(format!("batch lookup: {e}")));
                }
            }
            first = false;
            tokens.copy_within(token_words.., 0);
        }
    }
}

enum BatchError {
    /// Nothing was read: read key by key instead.
    Unsupported(String),
    /// Entries were delivered already: the reading fails.
    Failed(String),
}
