//! Facts about the running kernel and this process's privileges, read from the places
//! the kernel publishes them.

pub mod bpf;
pub mod btf;
pub mod btf_file;
pub mod module_btf;
pub mod schedstat;
pub mod tracefs;

use std::path::Path;

/// `uname -r`.
pub fn release() -> String {
    // SAFETY: uname(2) fills a plain struct; zeroed is a valid initial value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `/etc/hostname`-style node name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn btf_present() -> bool {
    Path::new(btf::VMLINUX_BTF).exists()
}

pub fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(2) == Some("bpf"))
        })
        .unwrap_or(false)
}

/// Linux capabilities nodepulse cares about, with why it needs each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    SysAdmin = 21,
    SysResource = 24,
    Perfmon = 38,
    Bpf = 39,
}

impl Capability {
    pub const ALL: [Capability; 4] = [
        Capability::Bpf,
        Capability::Perfmon,
        Capability::SysAdmin,
        Capability::SysResource,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Capability::SysAdmin => "CAP_SYS_ADMIN",
            Capability::SysResource => "CAP_SYS_RESOURCE",
            Capability::Perfmon => "CAP_PERFMON",
            Capability::Bpf => "CAP_BPF",
        }
    }

    pub fn why(self) -> &'static str {
        match self {
            Capability::Bpf => "create maps and load programs",
            Capability::Perfmon => "attach tracing programs and read kernel memory",
            Capability::SysAdmin => {
                "enable kernel BPF run-time stats, mount tracefs, and find a module's BTF \
                 (modular KVM by tp_btf) (optional)"
            }
            Capability::SysResource => "raise RLIMIT_MEMLOCK on kernels before 5.11 (optional)",
        }
    }

    pub fn required(self) -> bool {
        matches!(self, Capability::Bpf | Capability::Perfmon)
    }
}

/// Effective capability mask of this process (`CapEff` in `/proc/self/status`).
pub fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub fn has_capability(mask: u64, cap: Capability) -> bool {
    mask & (1 << cap as u32) != 0
}

/// The required capabilities (CAP_BPF, CAP_PERFMON) missing from `mask`.
pub fn missing_required(mask: u64) -> Vec<Capability> {
    Capability::ALL
        .into_iter()
        .filter(|&c| c.required() && !has_capability(mask, c))
        .collect()
}

/// What to tell an operator when the kernel refused a BPF operation: the required
/// capabilities this process lacks and how to grant them, or, when it holds them, the
/// likely other cause.
pub fn privilege_hint(mask: u64) -> String {
    let missing = missing_required(mask);
    if missing.is_empty() {
        return "CAP_BPF and CAP_PERFMON are held, so something else refused: a seccomp \
                profile or security module denying bpf(2) or perf_event_open(2) (see \
                README: Permissions)"
            .into();
    }
    let names: Vec<&str> = missing.iter().map(|c| c.name()).collect();
    let add: Vec<String> = missing
        .iter()
        .map(|c| format!("--cap-add={}", c.name()))
        .collect();
    format!(
        "missing {}: grant {} (systemd: AmbientCapabilities=CAP_BPF CAP_PERFMON; \
         Kubernetes: securityContext.capabilities.add; podman: {}) or run as root \
         (see README: Permissions)",
        names.join(" and "),
        if missing.len() == 1 { "it" } else { "them" },
        add.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BPF: u64 = 1 << 39;
    const PERFMON: u64 = 1 << 38;

    #[test]
    fn the_hint_names_exactly_the_missing_capabilities() {
        let h = privilege_hint(BPF);
        assert!(h.starts_with("missing CAP_PERFMON: grant it"), "{h}");
        assert!(h.contains("--cap-add=CAP_PERFMON)"), "{h}");
        let h = privilege_hint(0);
        assert!(
            h.starts_with("missing CAP_BPF and CAP_PERFMON: grant them"),
            "{h}"
        );
        let h = privilege_hint(BPF | PERFMON);
        assert!(h.starts_with("CAP_BPF and CAP_PERFMON are held"), "{h}");
    }
}
