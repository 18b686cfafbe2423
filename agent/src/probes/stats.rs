//! Kernel BPF run-time statistics: how long each program ran and how often, so the
//! agent can report its own cost in nanoseconds per event.

use std::os::fd::{AsFd, OwnedFd};

use aya::Ebpf;
use serde::Serialize;

/// Cumulative run time and count of one program, as the kernel counts them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProgramRunStats {
    pub probe: &'static str,
    pub program: &'static str,
    pub run_time_ns: u64,
    pub run_count: u64,
    /// Times the kernel skipped the program because it was already running on that
    /// CPU (an interrupt arriving in the middle of it): events lost, counted here.
    pub recursion_misses: u64,
}

/// BPF_ENABLE_STATS keeps run-time accounting on while its fd is open, without changing
/// the `kernel.bpf_stats_enabled` sysctl for everyone else.
pub struct BpfStats {
    _fd: Option<OwnedFd>,
    /// Why no numbers will come, if so.
    pub unavailable: Option<String>,
}

impl BpfStats {
    pub fn enable() -> Self {
        match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => Self {
                _fd: Some(fd),
                unavailable: None,
            },
            Err(e) if sysctl_enabled() => {
                tracing::debug!("BPF_ENABLE_STATS failed ({e}); the sysctl has stats on");
                Self {
                    _fd: None,
                    unavailable: None,
                }
            }
            Err(e) => {
                let why = format!(
                    "kernel BPF stats are off and BPF_ENABLE_STATS failed ({e}); grant \
                     CAP_SYS_ADMIN or set sysctl kernel.bpf_stats_enabled=1"
                );
                tracing::warn!("{why}");
                Self {
                    _fd: None,
                    unavailable: Some(why),
                }
            }
        }
    }
}

fn sysctl_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1")
}

pub fn read(ebpf: &Ebpf, probe: &'static str, program: &'static str) -> Option<ProgramRunStats> {
    let p = ebpf.program(program)?;
    let info = p.info().ok()?;
    let recursion_misses = p
        .fd()
        .ok()
        .and_then(|fd| recursion_misses(fd.as_fd()))
        .unwrap_or(0);
    Some(ProgramRunStats {
        probe,
        program,
        run_time_ns: info.run_time().as_nanos() as u64,
        run_count: info.run_count(),
        recursion_misses,
    })
}

/// The same from a program's fd: a program adopted from an earlier run (kept attached
/// through its pinned link) is not loaded by this one.
pub fn read_fd(
    fd: &OwnedFd,
    probe: &'static str,
    program: &'static str,
) -> Option<ProgramRunStats> {
    let info = prog_info(fd.as_fd())?;
    Some(ProgramRunStats {
        probe,
        program,
        run_time_ns: info.run_time_ns,
        run_count: info.run_cnt,
        recursion_misses: info.recursion_misses,
    })
}

/// `bpf_prog_info.recursion_misses` (Linux 5.12+), read with BPF_OBJ_GET_INFO_BY_FD.
fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> Option<u64> {
    prog_info(fd).map(|info| info.recursion_misses)
}

/// The kernel's `bpf_prog_info` of a program (fields the kernel does not know stay 0).
fn prog_info(fd: std::os::fd::BorrowedFd<'_>) -> Option<aya_obj::generated::bpf_prog_info> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain C struct of integers and pointers-as-integers; zero is valid.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<aya_obj::generated::bpf_prog_info>() as u32,
        info: &mut info as *mut _ as u64,
    };
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // SAFETY: the bpf(2) syscall with a valid attr pointing at a buffer of the stated size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoAttr,
            size_of::<InfoAttr>(),
        )
    };
    (rc == 0).then_some(info)
}
