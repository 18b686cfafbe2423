//! Probes that outlive the agent. With `[agent] keep_attached`, every map, program and
//! link is pinned under `<bpffs>/nodepulse/<version>-<layout>/`: the kernel keeps
//! counting while the agent is down (restart, upgrade, crash) and the next start adopts
//! what it finds instead of starting from empty maps.
//!
//! - **Same layout** (same version, same eBPF object, same load-time configuration):
//!   the maps are reused (aya opens a pinned map instead of creating it) and the pinned
//!   links are kept: the programs that were running keep running, so nothing is lost
//!   or counted twice across the restart. Tracing links cannot be updated in place
//!   (`BPF_LINK_UPDATE` is for cgroup, XDP and tc links), so keeping them is the only
//!   hand-over without a gap or an overlap.
//! - **Another layout** (an upgrade, a rebuilt object, a configuration that changes
//!   map sizes or program globals): the new set is created and attached beside the
//!   old one, the old maps' counts are read at one instant with the new ones (see
//!   `super::handover`, which carries them into the series), then the old set is
//!   removed. Maps that changed are reset, each named in the log.
//!
//! bpffs holds only BPF objects, so what the agent must remember about them (start
//! time, last readings) lives in the state directory (`crate::state`).

use std::{
    cell::RefCell,
    collections::HashMap,
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use aya::programs::links::FdLink;
use thiserror::Error;

/// The agent's directory under bpffs.
pub const ROOT: &str = "nodepulse";
/// `statfs` type of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, Error)]
pub enum PinError {
    #[error(
        "{path} is not a bpf filesystem, so the probes cannot be kept attached across \
         restarts; mount it (`mount -t bpf bpf {path}`; a DaemonSet mounts the host's \
         /sys/fs/bpf), point [agent] bpffs at it, or set [agent] keep_attached = false"
    )]
    NotBpffs { path: String },
    #[error("cannot use the pin directory {path}: {error}")]
    Io { path: String, error: io::Error },
}

/// This run's pin set, and what it found pinned by earlier runs.
pub struct Pins {
    dir: PathBuf,
    name: String,
    /// Whether this layout's maps were already pinned (an earlier run of the same
    /// layout), so the kernel's counts continue.
    pub maps_adopted: bool,
    /// Pin sets of other layouts, removed once this run's probes are attached.
    stale: Vec<PathBuf>,
    /// Programs of adopted links (never loaded by this run), for their run-time stats.
    programs: HashMap<&'static str, OwnedFd>,
    /// Programs adopted (kept running from an earlier run) rather than attached.
    pub adopted: Vec<&'static str>,
}

impl Pins {
    /// Opens (creating it if needed) the pin directory of this layout, and finds the
    /// pin sets of other layouts.
    pub fn prepare(bpffs: &Path, layout: u64) -> Result<Self, PinError> {
        if !is_bpffs(bpffs) {
            return Err(PinError::NotBpffs {
                path: bpffs.display().to_string(),
            });
        }
        let root = bpffs.join(ROOT);
        // bpffs refuses names with a dot (reserved for its own `maps.debug`).
        let version = env!("CARGO_PKG_VERSION").replace('.', "_");
        let name = format!("{version}-{layout:016x}");
        let dir = root.join(&name);
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |error| PinError::Io { path, error }
        };
        let maps_adopted =
            std::fs::read_dir(dir.join("maps")).is_ok_and(|mut d| d.next().is_some());
        for sub in ["maps", "links", "progs"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(io(&dir))?;
        }
        let mut stale: Vec<PathBuf> = std::fs::read_dir(&root)
            .map_err(io(&root))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| *n != *name))
            .collect();
        stale.sort();
        Ok(Self {
            dir,
            name,
            maps_adopted,
            stale,
            programs: HashMap::new(),
            adopted: Vec::new(),
        })
    }

    /// `<version>-<layout>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where each of the object's maps is pinned (the `.rodata`/`.bss` sections are
    /// each program's own and are not shared).
    pub fn map_paths(&self, object: &[u8]) -> Vec<(String, PathBuf)> {
        let Ok(obj) = aya_obj::Object::parse(object) else {
            return Vec::new();
        };
        let mut paths: Vec<(String, PathBuf)> = obj
            .maps
            .keys()
            .filter(|name| !name.starts_with('.'))
            .map(|name| (name.clone(), self.dir.join("maps").join(name)))
            .collect();
        paths.sort();
        paths
    }

    fn link_path(&self, program: &str) -> PathBuf {
        self.dir.join("links").join(program)
    }

    fn prog_path(&self, program: &str) -> PathBuf {
        self.dir.join("progs").join(program)
    }

    /// When every program of a variant has a pinned link (an earlier run of this
    /// layout attached it), keeps them: the probe runs on without a gap. Returns
    /// whether it did.
    pub fn adopt(&mut self, probe_programs: &[&'static str]) -> bool {
        if !self.has_links(probe_programs) {
            return false;
        }
        for &program in probe_programs {
            match obj_get(&self.prog_path(program)) {
                Ok(fd) => {
                    self.programs.insert(program, fd);
                }
                Err(e) => tracing::debug!(program, "cannot open the pinned program: {e}"),
            }
        }
        self.adopted.extend_from_slice(probe_programs);
        true
    }

    /// Whether every one of `programs` has a pinned link and program: an earlier run
    /// of this layout left them running, and [`Self::adopt`] keeps them.
    pub fn has_links(&self, programs: &[&str]) -> bool {
        !programs.is_empty()
            && programs
                .iter()
                .all(|p| self.link_path(p).exists() && self.prog_path(p).exists())
    }

    /// Removes what an earlier, interrupted run may have left of a program before it
    /// is attached afresh, so that no older link runs beside the new one.
    pub fn clear(&mut self, program: &str) {
        for path in [self.link_path(program), self.prog_path(program)] {
            let _ = std::fs::remove_file(path);
        }
        self.programs.remove(program);
    }

    /// Pins a link this run attached, and its program (for the next run's stats).
    /// A link that cannot be pinned is detached (aya's pin consumes it): the attach
    /// fails with the reason rather than run unkept.
    pub fn keep(
        &mut self,
        program: &str,
        link: FdLink,
        pin_program: impl FnOnce(&Path) -> Result<(), String>,
    ) -> Result<(), String> {
        pin_program(&self.prog_path(program))?;
        let path = self.link_path(program);
        let _ = std::fs::remove_file(&path);
        link.pin(&path)
            .map(drop)
            .map_err(|e| format!("cannot pin {program}'s link at {}: {e}", path.display()))
    }

    /// The same for a program nodepulse loaded itself ([`super::module_prog`]): the
    /// program and its link are pinned by fd.
    pub fn keep_fds(
        &mut self,
        program: &str,
        prog: BorrowedFd<'_>,
        link: BorrowedFd<'_>,
    ) -> Result<(), String> {
        for (path, fd, what) in [
            (self.prog_path(program), prog, "program"),
            (self.link_path(program), link, "link"),
        ] {
            let _ = std::fs::remove_file(&path);
            obj_syscall(BPF_OBJ_PIN, &path, fd.as_raw_fd() as u32)
                .map_err(|e| format!("cannot pin {program}'s {what} at {}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// The fd of an adopted program, for its run-time stats.
    pub fn program_fd(&self, program: &str) -> Option<&OwnedFd> {
        self.programs.get(program)
    }

    /// Removes the pin sets of other layouts, once this run's probes are attached:
    /// their programs stop and their maps are freed. Returns their names.
    pub fn remove_stale(&mut self) -> Vec<String> {
        let mut removed = Vec::new();
        for dir in std::mem::take(&mut self.stale) {
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => removed.push(name),
                Err(e) => tracing::warn!(
                    "cannot remove the pins of {name} ({}): {e}; remove them with \
                     `nodepulse cleanup`",
                    dir.display()
                ),
            }
        }
        removed
    }

    /// Names of the other layouts' pin sets found at start.
    pub fn stale(&self) -> Vec<String> {
        self.stale
            .iter()
            .filter_map(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect()
    }
}

/// Removes every pin set under `<bpffs>/nodepulse` (detaching the kept probes and
/// freeing their maps). Returns the names removed; nothing pinned is not an error.
pub fn remove_all(bpffs: &Path) -> io::Result<Vec<String>> {
    let root = bpffs.join(ROOT);
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let path = entry?.path();
        std::fs::remove_dir_all(&path)?;
        removed.push(
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
    }
    std::fs::remove_dir(&root)?;
    removed.sort();
    Ok(removed)
}

/// A fingerprint of everything that shapes the kernel side: the eBPF object and the
/// load-time configuration (map sizes, program globals), in a stable hash (FNV-1a;
/// std's hasher may change between Rust releases).
pub fn layout(object: &[u8], load_config: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in object
        .iter()
        .chain([0u8].iter())
        .chain(load_config.as_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct of the right type; the path is a valid
    // NUL-terminated string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;

#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

fn obj_syscall(cmd: libc::c_long, path: &Path, fd: u32) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd,
        file_flags: 0,
    };
    // SAFETY: the bpf(2) syscall with a valid attr; the path outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &attr as *const ObjAttr,
            size_of::<ObjAttr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens a pinned object.
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let fd = obj_syscall(BPF_OBJ_GET, path, 0)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

thread_local! {
    /// The pin set of the start in progress. Families attach their probes through
    /// [`super::attach::attach_first`] from their own code; the pin set is a property
    /// of the whole start, so it is lent here for its duration rather than threaded
    /// through every family's signature.
    static SESSION: RefCell<Option<Pins>> = const { RefCell::new(None) };
}

/// Runs `f` (the attaching) with `pins` lent to [`with`], and returns them.
pub fn session<R>(pins: Option<Pins>, f: impl FnOnce() -> R) -> (R, Option<Pins>) {
    SESSION.with(|s| *s.borrow_mut() = pins);
    let r = f();
    (r, SESSION.with(|s| s.borrow_mut().take()))
}

/// The pin set of the start in progress, if the probes are to be kept attached.
pub fn with<R>(f: impl FnOnce(Option<&mut Pins>) -> R) -> R {
    SESSION.with(|s| f(s.borrow_mut().as_mut()))
}
