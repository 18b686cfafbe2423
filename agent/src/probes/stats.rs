//! Kernel BPF run-time statistics: how long each program ran and how often, so the
//! agent can report its own cost in nanoseconds per event.

use std::os::fd::OwnedFd;

use aya::Ebpf;
use serde::Serialize;

/// Cumulative run time and count of one program, as the kernel counts them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProgramRunStats {
    pub probe: &'static str,
    pub program: &'static str,
    pub run_time_ns: u64,
    pub run_count: u64,
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
    let info = ebpf.program(program)?.info().ok()?;
    Some(ProgramRunStats {
        probe,
        program,
        run_time_ns: info.run_time().as_nanos() as u64,
        run_count: info.run_count(),
    })
}
