//! tp_btf programs on a kernel module's tracepoints (kvm's), loaded by nodepulse itself.
//!
//! The kernel looks a tp_btf program's `attach_btf_id` up in vmlinux's BTF unless
//! `attach_btf_obj_fd` names another BTF object; a module's tracepoint typedef lives in
//! the module's split BTF ([`crate::kernel::module_btf`]). aya 0.14 never sets that fd
//! for tracing programs (its issue #301), so these programs are loaded here: the object
//! is parsed again, its map references are pointed at the maps aya already created
//! (fds kept from load time, `.rodata` included, so globals set before load hold), and
//! the program is loaded with `BPF_PROG_LOAD` (tracing, `BPF_TRACE_RAW_TP`) and attached
//! with `BPF_RAW_TRACEPOINT_OPEN`, which gives a BPF link. A built-in module's
//! tracepoints go the same way with vmlinux's type id and no BTF object fd: one path
//! for both, so the host's own KVM tests exercise this loader too.
//!
//! Everything else the agent does with a program by name (run-time stats, unload on
//! fallback or SIGHUP disable, pinning and adoption with `keep_attached`) reaches these
//! through [`with`] and [`ModulePrograms::program_fd`].

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use aya::{Ebpf, maps::Map};
use aya_obj::generated::{bpf_attach_type, bpf_insn, bpf_prog_type};

use crate::kernel::module_btf;

/// A program loaded and attached here: dropping it detaches it (unless its link is
/// pinned).
struct Attached {
    program: OwnedFd,
    _link: OwnedFd,
}

/// The object's maps as aya created them, and the module programs attached.
#[derive(Default)]
pub struct ModulePrograms {
    object: &'static [u8],
    /// Duplicates of aya's map fds by map name, taken at load time: the agent later
    /// takes some maps out of the object, and a SIGHUP re-enable still needs them.
    maps: HashMap<String, OwnedFd>,
    attached: HashMap<&'static str, Attached>,
}

impl ModulePrograms {
    /// Keeps the fds of every map of `ebpf`, loaded from `object`.
    pub fn new(ebpf: &Ebpf, object: &'static [u8]) -> Self {
        let maps = ebpf
            .maps()
            .filter_map(|(name, map)| {
                let fd = map_fd(map)?.try_clone_to_owned().ok()?;
                Some((name.to_owned(), fd))
            })
            .collect();
        Self {
            object,
            maps,
            attached: HashMap::new(),
        }
    }

    /// Loads `program` as tp_btf on the tracepoint whose typedef is `type_id` in
    /// `module`'s BTF (vmlinux's for `None`, a built-in module), and attaches it.
    /// Returns the program's and the link's fds.
    pub fn attach(
        &mut self,
        program: &'static str,
        module: Option<&str>,
        type_id: u32,
    ) -> Result<(BorrowedFd<'_>, BorrowedFd<'_>), String> {
        self.attached.remove(program);
        let (insns, license) = self.instructions(program)?;
        let btf = match module {
            Some(module) => Some(module_btf::object_fd(module).map_err(|e| e.to_string())?),
            None => None,
        };
        let prog = prog_load(program, &insns, &license, type_id, btf.as_ref())?;
        let link = raw_tracepoint_open(prog.as_fd())
            .map_err(|e| format!("BPF_RAW_TRACEPOINT_OPEN failed: {e}"))?;
        let a = self.attached.entry(program).or_insert(Attached {
            program: prog,
            _link: link,
        });
        Ok((a.program.as_fd(), a._link.as_fd()))
    }

    /// Detaches and unloads `program` if it was attached here.
    pub fn remove(&mut self, program: &str) {
        self.attached.remove(program);
    }

    /// The fd of a program attached here, for its run-time stats.
    pub fn program_fd(&self, program: &str) -> Option<&OwnedFd> {
        self.attached.get(program).map(|a| &a.program)
    }

    /// The program's instructions with map references resolved to aya's maps and
    /// calls linked, and the object's license.
    fn instructions(&self, program: &str) -> Result<(Vec<bpf_insn>, CString), String> {
        let mut obj = aya_obj::Object::parse(self.object)
            .map_err(|e| format!("cannot parse the eBPF object: {e}"))?;
        let text_sections: HashSet<usize> = obj.functions.keys().map(|&(s, _)| s).collect();
        let maps = obj.maps.clone();
        let mut with_fds = Vec::new();
        for (name, map) in &maps {
            let fd = self.maps.get(name).ok_or_else(|| {
                format!("map {name} of the eBPF object was not created by the loader")
            })?;
            with_fds.push((name.as_str(), fd.as_raw_fd(), map));
        }
        obj.relocate_maps(with_fds.into_iter(), &text_sections)
            .map_err(|e| format!("cannot relocate map references: {e}"))?;
        obj.relocate_calls(&text_sections)
            .map_err(|e| format!("cannot link calls: {e}"))?;
        let key = obj
            .programs
            .get(program)
            .ok_or_else(|| format!("program {program} is missing from the eBPF object"))?
            .function_key();
        let insns = obj.functions[&key].instructions.clone();
        Ok((insns, obj.license))
    }
}

/// The fd of an aya map, for the map types the object uses.
fn map_fd(map: &Map) -> Option<BorrowedFd<'_>> {
    let data = match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuHashMap(m)
        | Map::PerCpuLruHashMap(m)
        | Map::RingBuf(m)
        | Map::PerfEventArray(m)
        | Map::Queue(m)
        | Map::Stack(m)
        | Map::Unsupported(m) => m,
        _ => return None,
    };
    Some(data.fd().as_fd())
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;

/// `bpf_attr` for BPF_PROG_LOAD, up to `attach_btf_obj_fd` (5.11).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_btf_obj_fd: u32,
    _pad: u32,
}

/// `bpf_attr` for BPF_RAW_TRACEPOINT_OPEN.
#[repr(C)]
struct RawTpAttr {
    name: u64,
    prog_fd: u32,
    _pad: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    let fd = crate::kernel::bpf::syscall(cmd, attr)?;
    // SAFETY: both commands return a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads a tracing program for the raw tracepoint whose typedef is `type_id` in BTF
/// object `btf` (vmlinux's when `None`). A rejection is retried with the verifier's log, whose tail is returned.
fn prog_load(
    name: &str,
    insns: &[bpf_insn],
    license: &CString,
    type_id: u32,
    btf: Option<&OwnedFd>,
) -> Result<OwnedFd, String> {
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let mut attr = ProgLoadAttr {
        prog_type: bpf_prog_type::BPF_PROG_TYPE_TRACING as u32,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        expected_attach_type: bpf_attach_type::BPF_TRACE_RAW_TP as u32,
        attach_btf_id: type_id,
        attach_btf_obj_fd: btf.map_or(0, |fd| fd.as_raw_fd() as u32),
        ..ProgLoadAttr::default()
    };
    let first = match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => return Ok(fd),
        Err(e) => e,
    };
    let mut log = vec![0u8; 1 << 20];
    attr.log_level = 1;
    attr.log_size = log.len() as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    if let Ok(fd) = bpf(BPF_PROG_LOAD, &mut attr) {
        return Ok(fd);
    }
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    let tail: Vec<&str> = text.lines().rev().take(4).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!(
        "BPF_PROG_LOAD (tp_btf, BTF type {type_id}) failed: {first}; verifier: {}",
        tail.join(" / ")
    ))
}

/// Attaches a tp_btf program (the tracepoint is its `attach_btf_id`, so no name).
fn raw_tracepoint_open(prog: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut attr = RawTpAttr {
        name: 0,
        prog_fd: prog.as_raw_fd() as u32,
        _pad: 0,
    };
    bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr)
}

thread_local! {
    /// The module programs of the start, SIGHUP or check in progress, lent like the
    /// pin set ([`super::pins::session`]): families attach through
    /// [`super::attach::attach_first`], which reaches them here.
    static SESSION: RefCell<Option<ModulePrograms>> = const { RefCell::new(None) };
}

/// Runs `f` with `programs` lent to [`with`], and returns them.
pub fn session<R>(programs: ModulePrograms, f: impl FnOnce() -> R) -> (R, ModulePrograms) {
    SESSION.with(|s| *s.borrow_mut() = Some(programs));
    let r = f();
    (
        r,
        SESSION.with(|s| s.borrow_mut().take()).unwrap_or_default(),
    )
}

/// The module programs of the session in progress (`None` outside one).
pub fn with<R>(f: impl FnOnce(Option<&mut ModulePrograms>) -> R) -> R {
    SESSION.with(|s| f(s.borrow_mut().as_mut()))
}
