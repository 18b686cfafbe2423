//! The BTF of kernel modules. With `CONFIG_DEBUG_INFO_BTF_MODULES` (5.11+) the kernel
//! publishes each loaded module's types as `/sys/kernel/btf/<module>`, in *split* BTF:
//! a type section whose ids continue after vmlinux's last id, and a string section whose
//! offsets continue after vmlinux's strings (a name may point into either). A tp_btf
//! program on a module's tracepoint (kvm's) names the `btf_trace_<tracepoint>` typedef by
//! its id in that numbering, and the module's BTF object by an fd found through the bpf
//! syscall ([`object_fd`]). Format: Documentation/bpf/btf.rst, "split BTF".

use std::{
    io,
    os::fd::{FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use thiserror::Error;

use super::bpf::syscall as bpf;
use super::btf::{BtfError, KIND_TYPEDEF, kind_data_len, sections, u32_at};

/// Where the kernel publishes vmlinux's and every module's BTF.
pub const SYS_BTF_DIR: &str = "/sys/kernel/btf";

#[derive(Debug, Error)]
pub enum ModuleBtfError {
    #[error(
        "{path} is absent: this kernel publishes no BTF for module {module} (built without \
         CONFIG_DEBUG_INFO_BTF_MODULES, or older than 5.11), or the module is not loaded"
    )]
    NoModuleBtf { module: String, path: String },
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: BtfError },
    #[error("{path} has no typedef {typedef}: module {module} has no tracepoint {tracepoint}")]
    NoTracepoint {
        module: String,
        tracepoint: String,
        typedef: String,
        path: String,
    },
    #[error(
        "finding module {module}'s BTF object needs CAP_SYS_ADMIN (BPF_BTF_GET_NEXT_ID and \
         BPF_BTF_GET_FD_BY_ID are refused without it)"
    )]
    NeedsSysAdmin { module: String },
    #[error("the kernel holds no BTF object named {module} (all were listed)")]
    NoObject { module: String },
    #[error("{what} failed: {error}")]
    Syscall {
        what: &'static str,
        error: io::Error,
    },
}

/// Where a tracepoint's `btf_trace_<tracepoint>` typedef lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TracepointBtf {
    /// In vmlinux (the module is built in), at this type id.
    Vmlinux { type_id: u32 },
    /// In the module's split BTF, at this type id.
    Module { module: String, type_id: u32 },
}

/// Calls `f(index, kind, name_offset)` for every type record (index 0 is the first record,
/// type id 1 in a base BTF) until it returns true. Returns the index it stopped at, or
/// the number of records.
fn walk(types: &[u8], mut f: impl FnMut(u32, u32, u32) -> bool) -> Result<u32, BtfError> {
    let (mut pos, mut index) = (0, 0);
    while pos < types.len() {
        let name = u32_at(types, pos)?;
        let info = u32_at(types, pos + 4)?;
        let kind = (info >> 24) & 0x1f;
        if f(index, kind, name) {
            return Ok(index);
        }
        pos += 12 + kind_data_len(kind, (info & 0xffff) as usize);
        index += 1;
    }
    if pos != types.len() {
        return Err(BtfError::Malformed("type section ends inside a record"));
    }
    Ok(index)
}

fn string_at(strings: &[u8], off: usize) -> Option<&[u8]> {
    let rest = strings.get(off..)?;
    Some(&rest[..rest.iter().position(|&b| b == 0)?])
}

/// The id of typedef `name` in split BTF `split` over base BTF `base`, if it has one.
pub fn split_typedef_id(base: &[u8], split: &[u8], name: &str) -> Result<Option<u32>, BtfError> {
    let base = sections(base)?;
    let base_types = walk(base.types, |_, _, _| false)?;
    let own = sections(split)?;
    let found = walk(own.types, |_, kind, off| {
        if kind != KIND_TYPEDEF {
            return false;
        }
        // Offsets below the base's string section length name a base string.
        let off = off as usize;
        let text = match off.checked_sub(base.strings.len()) {
            None => string_at(base.strings, off),
            Some(own_off) => string_at(own.strings, own_off),
        };
        text == Some(name.as_bytes())
    })?;
    let count = walk(own.types, |_, _, _| false)?;
    // Split ids continue after the base's last id (base ids are 1..=base_types).
    Ok((found < count).then_some(base_types + found + 1))
}

/// The id of typedef `name` in base BTF `data`, if it has one.
fn typedef_id(data: &[u8], name: &str) -> Result<Option<u32>, BtfError> {
    let s = sections(data)?;
    let count = walk(s.types, |_, _, _| false)?;
    let found = walk(s.types, |_, kind, off| {
        kind == KIND_TYPEDEF && string_at(s.strings, off as usize) == Some(name.as_bytes())
    })?;
    Ok((found < count).then_some(found + 1))
}

/// Finds tracepoint `tracepoint`'s BTF: in vmlinux when `module` is built in, else in
/// the module's split BTF under `dir` (normally [`SYS_BTF_DIR`]).
pub fn locate_tracepoint(
    dir: &Path,
    module: &str,
    tracepoint: &str,
) -> Result<TracepointBtf, ModuleBtfError> {
    let typedef = format!("btf_trace_{tracepoint}");
    let read = |path: PathBuf| {
        std::fs::read(&path).map_err(|source| {
            let path = path.display().to_string();
            if source.kind() == io::ErrorKind::NotFound {
                ModuleBtfError::NoModuleBtf {
                    module: module.to_owned(),
                    path,
                }
            } else {
                ModuleBtfError::Read {
                    error: BtfError::Read {
                        path: path.clone(),
                        source,
                    },
                    path,
                }
            }
        })
    };
    let malformed = |path: &Path| {
        let path = path.display().to_string();
        move |error| ModuleBtfError::Read { path, error }
    };
    let vmlinux_path = dir.join("vmlinux");
    let vmlinux = read(vmlinux_path.clone())?;
    if let Some(type_id) = typedef_id(&vmlinux, &typedef).map_err(malformed(&vmlinux_path))? {
        return Ok(TracepointBtf::Vmlinux { type_id });
    }
    let module_path = dir.join(module);
    let split = read(module_path.clone())?;
    match split_typedef_id(&vmlinux, &split, &typedef).map_err(malformed(&module_path))? {
        Some(type_id) => Ok(TracepointBtf::Module {
            module: module.to_owned(),
            type_id,
        }),
        None => Err(ModuleBtfError::NoTracepoint {
            module: module.to_owned(),
            tracepoint: tracepoint.to_owned(),
            typedef,
            path: module_path.display().to_string(),
        }),
    }
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;
const BPF_BTF_GET_NEXT_ID: libc::c_long = 23;

/// `bpf_attr` for BPF_BTF_GET_NEXT_ID (`start_id`) and BPF_BTF_GET_FD_BY_ID (`btf_id`).
#[repr(C)]
struct IdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// `struct bpf_btf_info` (the name fields are 5.11+, as module BTF is).
#[repr(C)]
#[derive(Default)]
struct BtfInfo {
    btf: u64,
    btf_size: u32,
    id: u32,
    name: u64,
    name_len: u32,
    kernel_btf: u32,
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// An fd of the kernel's BTF object of `module`, for `attach_btf_obj_fd`: the BTF
/// objects are listed by id and the one the kernel names `module` is kept.
pub fn object_fd(module: &str) -> Result<OwnedFd, ModuleBtfError> {
    let syscall = |what| {
        move |error: io::Error| {
            if error.raw_os_error() == Some(libc::EPERM) {
                ModuleBtfError::NeedsSysAdmin {
                    module: module.to_owned(),
                }
            } else {
                ModuleBtfError::Syscall { what, error }
            }
        }
    };
    let mut id = 0;
    loop {
        let mut attr = IdAttr {
            id,
            next_id: 0,
            open_flags: 0,
        };
        match bpf(BPF_BTF_GET_NEXT_ID, &mut attr) {
            Ok(_) => id = attr.next_id,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(ModuleBtfError::NoObject {
                    module: module.to_owned(),
                });
            }
            Err(e) => return Err(syscall("BPF_BTF_GET_NEXT_ID")(e)),
        }
        let mut attr = IdAttr {
            id,
            next_id: 0,
            open_flags: 0,
        };
        let fd = match bpf(BPF_BTF_GET_FD_BY_ID, &mut attr) {
            // SAFETY: BPF_BTF_GET_FD_BY_ID returned a new fd that nothing else owns.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd as i32) },
            // Freed between the two calls (a program's BTF): go on.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(syscall("BPF_BTF_GET_FD_BY_ID")(e)),
        };
        let mut name = [0u8; 64];
        let mut info = BtfInfo {
            name: name.as_mut_ptr() as u64,
            name_len: name.len() as u32,
            ..BtfInfo::default()
        };
        let mut attr = InfoAttr {
            bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
            info_len: size_of::<BtfInfo>() as u32,
            info: &mut info as *mut BtfInfo as u64,
        };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map_err(syscall("BPF_OBJ_GET_INFO_BY_FD"))?;
        let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        if info.kernel_btf != 0 && &name[..len] == module.as_bytes() {
            return Ok(fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::btf::VMLINUX_BTF;

    /// A split BTF over `base`: one typedef named `name` (its name in the split's own
    /// strings), before it a `const` whose name offset points into the base strings, as
    /// the kernel's deduplicated module BTF does.
    fn split_over(base: &[u8], name: &str) -> Vec<u8> {
        let base_strings = sections(base).unwrap().strings.len() as u32;
        let strings = format!("\0{name}\0").into_bytes();
        let mut t = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| t.extend(w.to_le_bytes()));
        push(&[0, 10 << 24, 1]); // const int (base id 1)
        push(&[0, (4 << 24) | 1, 4]); // struct with one member
        push(&[1, 1, 0]);
        push(&[base_strings + 1, KIND_TYPEDEF << 24, 1]); // the typedef
        let mut data = vec![0x9f, 0xeb, 1, 0];
        for w in [24, 0, t.len() as u32, t.len() as u32, strings.len() as u32] {
            data.extend(w.to_le_bytes());
        }
        data.extend(&t);
        data.extend(&strings);
        data
    }

    #[test]
    fn split_ids_continue_after_the_base() {
        let base = crate::kernel::btf::tests::sample();
        // The sample has 6 types: the split's third record is id 9.
        let split = split_over(&base, "btf_trace_x");
        assert_eq!(
            split_typedef_id(&base, &split, "btf_trace_x").unwrap(),
            Some(9)
        );
        assert_eq!(
            split_typedef_id(&base, &split, "btf_trace_y").unwrap(),
            None
        );
        // A typedef named by a base string ("int" is base string 1) is found too.
        let mut by_base = split.clone();
        let typedef_name = 24 + 12 + 12 + 12; // header, const, struct, member
        by_base[typedef_name..typedef_name + 4].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(split_typedef_id(&base, &by_base, "int").unwrap(), Some(9));
        assert!(split_typedef_id(&base, b"not btf, clearly not btf", "x").is_err());
        let mut cut = split.clone();
        cut[12..16].copy_from_slice(&20u32.to_le_bytes()); // types end inside a record
        assert!(split_typedef_id(&base, &cut, "btf_trace_x").is_err());
    }

    /// On the running kernel's own vmlinux BTF: the split numbering is counted from
    /// its real type count (checked against aya's reading of the same file).
    #[test]
    fn numbers_split_ids_after_the_running_kernels_types() {
        let Ok(vmlinux) = std::fs::read(VMLINUX_BTF) else {
            eprintln!("SKIPPED: {VMLINUX_BTF} absent on this machine");
            return;
        };
        let s = sections(&vmlinux).unwrap();
        let last = walk(s.types, |_, _, _| false).unwrap();
        let split = split_over(&vmlinux, "btf_trace_nodepulse_test");
        let id = split_typedef_id(&vmlinux, &split, "btf_trace_nodepulse_test").unwrap();
        assert_eq!(id, Some(last + 3));
        // The walk numbers base types as aya does.
        let aya = aya::Btf::parse(&vmlinux, aya::Endianness::default()).unwrap();
        let index = walk(s.types, |_, kind, off| {
            kind == KIND_TYPEDEF
                && string_at(s.strings, off as usize) == Some(b"btf_trace_sched_switch")
        })
        .unwrap();
        let by_aya = aya
            .id_by_type_name_kind("btf_trace_sched_switch", aya_obj::btf::BtfKind::Typedef)
            .unwrap();
        assert_eq!(index + 1, by_aya);
        assert!(index < last);
    }

    /// Every module BTF the running kernel publishes is read as split BTF over vmlinux,
    /// and the tracepoints of built-in kvm are found in vmlinux.
    #[test]
    fn reads_the_running_kernels_module_btf() {
        let dir = Path::new(SYS_BTF_DIR);
        let Ok(vmlinux) = std::fs::read(dir.join("vmlinux")) else {
            eprintln!("SKIPPED: {VMLINUX_BTF} absent on this machine");
            return;
        };
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n != "vmlinux") {
                let split = std::fs::read(&path).unwrap();
                split_typedef_id(&vmlinux, &split, "btf_trace_nodepulse_none")
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
        let found = locate_tracepoint(dir, "kvm", "kvm_fpu");
        if Path::new("/sys/module/kvm").exists() {
            let aya = aya::Btf::parse(&vmlinux, aya::Endianness::default()).unwrap();
            let builtin = aya
                .id_by_type_name_kind("btf_trace_kvm_fpu", aya_obj::btf::BtfKind::Typedef)
                .ok();
            match found.unwrap() {
                TracepointBtf::Vmlinux { type_id } => assert_eq!(Some(type_id), builtin),
                TracepointBtf::Module { module, type_id } => {
                    assert_eq!((module.as_str(), builtin), ("kvm", None));
                    assert!(
                        type_id > walk(sections(&vmlinux).unwrap().types, |_, _, _| false).unwrap()
                    );
                }
            }
        }
        let err = locate_tracepoint(dir, "nodepulse_no_module", "x").unwrap_err();
        assert!(
            err.to_string().contains("CONFIG_DEBUG_INFO_BTF_MODULES"),
            "{err}"
        );
    }
}
