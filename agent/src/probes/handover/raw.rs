//! Maps as bytes: what the hand-over needs that aya 0.14 does not offer for a map it
//! did not load (a pin of another build, a map created here): open, describe, create,
//! list keys, look up and update values, and lend one fd number another map.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use crate::kernel::bpf::syscall as bpf;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// Map types whose values are one per possible CPU (`bpf_map_type`).
const PERCPU_TYPES: [u32; 3] = [
    5,  // BPF_MAP_TYPE_PERCPU_HASH
    6,  // BPF_MAP_TYPE_PERCPU_ARRAY
    10, // BPF_MAP_TYPE_LRU_PERCPU_HASH
];
/// `BPF_MAP_TYPE_HASH`, for the fingerprint map.
pub const HASH: u32 = 1;

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this new fd; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

fn path_c(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Opens a pinned map.
pub fn open(path: &Path) -> io::Result<OwnedFd> {
    let c = path_c(path)?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    bpf(BPF_OBJ_GET, &mut attr).map(owned)
}

/// Pins a map.
pub fn pin(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    let c = path_c(path)?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// The start of `struct bpf_map_info`: what identifies a map's shape.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Info {
    pub map_type: u32,
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    pub name: [u8; 16],
}

impl Info {
    pub fn per_cpu(&self) -> bool {
        PERCPU_TYPES.contains(&self.map_type)
    }
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

pub fn info(fd: &OwnedFd) -> io::Result<Info> {
    let mut info = Info::default();
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<Info>() as u32,
        info: &mut info as *mut Info as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

#[repr(C)]
#[derive(Default)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// Creates a map of the shape `info` describes, `max_entries` large (no program ever
/// writes to it).
pub fn create(info: &Info, max_entries: u32, name: &str) -> io::Result<OwnedFd> {
    let mut map_name = [0u8; 16];
    for (d, s) in map_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let mut attr = CreateAttr {
        map_type: info.map_type,
        key_size: info.key_size,
        value_size: info.value_size,
        max_entries,
        map_flags: info.map_flags,
        map_name,
        ..Default::default()
    };
    bpf(BPF_MAP_CREATE, &mut attr).map(owned)
}

#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// One map as bytes: its fd, shape and the size of a value as the syscalls see it
/// (one 8-byte aligned slot per possible CPU for per-CPU maps).
pub struct RawMap {
    pub fd: OwnedFd,
    pub info: Info,
    value_len: usize,
}

impl RawMap {
    pub fn new(fd: OwnedFd, cpus: usize) -> io::Result<Self> {
        let info = info(&fd)?;
        let value_len = if info.per_cpu() {
            (info.value_size as usize).div_ceil(8) * 8 * cpus
        } else {
            info.value_size as usize
        };
        Ok(Self {
            fd,
            info,
            value_len,
        })
    }

    pub fn keys(&self) -> io::Result<Vec<Vec<u8>>> {
        let size = self.info.key_size as usize;
        let mut keys = Vec::new();
        let mut next = vec![0u8; size];
        let mut prev: Option<Vec<u8>> = None;
        loop {
            let mut attr = ElemAttr {
                map_fd: self.fd.as_raw_fd() as u32,
                _pad: 0,
                key: prev.as_ref().map_or(0, |k| k.as_ptr() as u64),
                value: next.as_mut_ptr() as u64,
                flags: 0,
            };
            match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
                Ok(_) => {
                    keys.push(next.clone());
                    prev = Some(next.clone());
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(keys),
                Err(e) => return Err(e),
            }
        }
    }

    /// The value of `key`, `None` when there is none.
    pub fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let mut value = vec![0u8; self.value_len];
        let mut attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            flags: 0,
        };
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(_) => Ok(Some(value)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets `key`'s value. A map that allocates its entries as they come (per-CPU,
    /// not preallocated) takes them from caches the kernel refills in the background:
    /// `ENOMEM` while they are empty is retried for a while: up to [`REFILL_WAIT`],
    /// since at load ~17 on two CPUs 200 retries 1 ms apart were not always enough
    /// (the upgrade test lost its whole hand-over to one such `ENOMEM`).
    pub fn set(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        assert_eq!(value.len(), self.value_len, "a value of the map's size");
        let mut attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            flags: 0,
        };
        let started = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            match bpf(BPF_MAP_UPDATE_ELEM, &mut attr) {
                Err(e)
                    if e.raw_os_error() == Some(libc::ENOMEM)
                        && started.elapsed() < REFILL_WAIT =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(50));
                }
                r => return r.map(drop),
            }
        }
    }
}

/// How long [`RawMap::set`] waits for the kernel to refill its allocation caches.
const REFILL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The fd numbers of this process that refer to the map with kernel id `id`.
pub fn fds_of(id: u32) -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<RawFd>().ok())
        .filter(|fd| {
            std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).is_ok_and(|s| {
                s.lines()
                    .any(|l| l.strip_prefix("map_id:").map(str::trim) == Some(&id.to_string()))
            })
        })
        .collect()
}

/// Fd numbers lent to other maps, given back on drop.
pub struct Lent {
    saved: Vec<(RawFd, OwnedFd)>,
}

impl Lent {
    /// Makes each of `fds` refer to `to` until dropped.
    pub fn lend(fds: &[RawFd], to: &OwnedFd) -> io::Result<Self> {
        let mut lent = Self { saved: Vec::new() };
        for &fd in fds {
            // SAFETY: dup of an fd this process holds returns a new fd only we own.
            let copy = unsafe { libc::dup(fd) };
            if copy < 0 {
                return Err(io::Error::last_os_error());
            }
            lent.saved.push((fd, owned(copy.into())));
            // SAFETY: replaces what `fd` refers to; its owner (an aya map) keeps using
            // the number, now for `to`, until `drop` restores it. Nothing else uses the
            // maps while they are lent (the start is single-threaded here).
            if unsafe { libc::dup3(to.as_raw_fd(), fd, libc::O_CLOEXEC) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(lent)
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        for (fd, original) in self.saved.drain(..) {
            // SAFETY: gives `fd` its original map back (see `lend`).
            if unsafe { libc::dup3(original.as_raw_fd(), fd, libc::O_CLOEXEC) } < 0 {
                tracing::error!(
                    fd,
                    "cannot give a map's fd back after the hand-over: {}",
                    io::Error::last_os_error()
                );
            }
        }
    }
}
