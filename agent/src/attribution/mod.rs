//! Giving kernel identifiers the names operators know: block devices (with their Ceph
//! OSD or RBD image), cgroups, VMs.

pub mod backing;
pub mod ceph;
pub mod cgroups;
pub mod devices;
pub mod rbd;
mod sysfs;
mod threads;
pub mod vms;

#[cfg(any(test, feature = "fuzzing"))]
pub mod fixture;

use std::path::PathBuf;

use serde::Deserialize;

/// Where the host's process, runtime, cgroup, device and Ceph trees are (a container
/// reads them through mounts).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttributionConfig {
    pub proc_root: PathBuf,
    /// libvirt keeps live domain XML under `<run_root>/libvirt/qemu/`.
    pub run_root: PathBuf,
    /// Root of the cgroup hierarchy whose ids the scheduler probe reports; empty means
    /// found from /proc/mounts (the cgroup2 mount, or the v1 cpu controller's).
    pub cgroup_root: PathBuf,
    /// Ceph's state directory: OSD data dirs `<ceph_root>/osd/ceph-<id>/` and cephadm's
    /// `<ceph_root>/<fsid>/osd.<id>/`, whose `block` links name the OSD's devices.
    pub ceph_root: PathBuf,
    /// Where the host's `/dev` is: the OSD links point into it (`/dev/<vg>/<lv>`,
    /// `/dev/mapper/…`). Without it, the link targets are still named through sysfs.
    pub dev_root: PathBuf,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            run_root: PathBuf::from("/run"),
            cgroup_root: PathBuf::new(),
            ceph_root: PathBuf::from("/var/lib/ceph"),
            dev_root: PathBuf::from("/dev"),
        }
    }
}

/// `auto`: the hierarchy holding the cpu controller: a v1 cpu mount when there is one
/// (hybrid hosts included), else cgroup v2.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupMode {
    #[default]
    Auto,
    V2,
    V1Cpu,
}

/// Everything the probes need to label their series, cached across intervals.
pub struct Attribution {
    pub devices: devices::DeviceNames,
    cgroups: Option<cgroups::CgroupNames>,
    /// Block I/O cgroups can live in another hierarchy (v1 blkio) than the scheduler's.
    io_cgroups: Option<cgroups::CgroupNames>,
    vms: vms::VmResolver,
    threads: threads::HostThreads,
}

impl Attribution {
    pub fn new(sys_root: PathBuf, config: &AttributionConfig, cgroup_mode: CgroupMode) -> Self {
        Self {
            devices: devices::DeviceNames::new(devices::Roots {
                sys: sys_root,
                dev: config.dev_root.clone(),
                ceph: config.ceph_root.clone(),
            }),
            cgroups: cgroup_hierarchy(config, cgroup_mode)
                .map(|h| cgroups::CgroupNames::new(h.root)),
            io_cgroups: cgroups::find_io_hierarchy(
                &std::fs::read_to_string("/proc/mounts").unwrap_or_default(),
            )
            .map(cgroups::CgroupNames::new),
            vms: vms::VmResolver::new(config.proc_root.clone(), config.run_root.clone()),
            threads: threads::HostThreads::new(config.proc_root.clone()),
        }
    }

    /// Whether thread `tid` (an id in the host's PID namespace, as the kernel programs
    /// see it) still exists; `None` when the process tree the agent reads is not the
    /// host's, and so cannot tell.
    pub fn thread_exists(&mut self, tid: u32) -> Option<bool> {
        self.threads.exists(tid)
    }

    pub fn cgroup_name(&mut self, id: u64) -> String {
        match &mut self.cgroups {
            Some(names) => names.name(id),
            None => format!("id:{id}"),
        }
    }

    /// Path of a scheduler cgroup while it exists, `None` once removed.
    pub fn cgroup_lookup(&mut self, id: u64) -> Option<String> {
        self.cgroups.as_mut()?.lookup(id)
    }

    /// Path of a block I/O cgroup while it exists, `None` once removed.
    pub fn io_cgroup_lookup(&mut self, id: u64) -> Option<String> {
        self.io_cgroups.as_mut()?.lookup(id)
    }

    /// Whether the process, cgroup or device the kernel keys by `entity` still exists.
    pub fn alive(&mut self, entity: crate::aggregate::Entity) -> bool {
        use crate::aggregate::Entity;
        match entity {
            Entity::Process(pid) => self.vm_running(pid),
            Entity::Cgroup(id) => self.cgroup_lookup(id).is_some(),
            Entity::IoCgroup(id) => self.io_cgroup_lookup(id).is_some(),
            Entity::Device(dev) => self.devices.is_present(dev),
        }
    }

    /// Whether the VMM process `pid` still runs.
    pub fn vm_running(&self, pid: u32) -> bool {
        self.vms.is_running(pid)
    }

    /// Path of a cgroup that submitted block I/O.
    pub fn io_cgroup_name(&mut self, id: u64) -> String {
        match &mut self.io_cgroups {
            Some(names) => names.name(id),
            None => format!("id:{id}"),
        }
    }

    /// Labels of the VM whose VMM process is `pid`, and that process as an entity
    /// (alive while it runs and its labels were read from it now).
    pub fn vm(&mut self, pid: u32) -> (Labels, crate::aggregate::EntityState) {
        use crate::aggregate::{Entity, EntityState};
        let vm = self.vms.lookup(pid);
        let entity = EntityState::new(Entity::Process(pid), vm.labels.len(), vm.running);
        (vm.labels, entity)
    }

    /// Called once per interval: forgets processes that exited, and has each device's
    /// sysfs directory looked at again (a hot-plugged disk can take a freed device
    /// number: one `stat` per device tells; re-reading its identity every interval
    /// was ~8 % of the agent's CPU at a storage node's 24 disks).
    pub fn refresh(&mut self) {
        self.vms.forget_exited();
        self.devices.forget();
    }
}

/// The cgroup hierarchy the scheduler probe reads ids from: the configured root, or
/// the one `/proc/mounts` shows for `mode`.
pub fn cgroup_hierarchy(
    config: &AttributionConfig,
    mode: CgroupMode,
) -> Option<cgroups::Hierarchy> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let found = cgroups::find_hierarchy(&mounts, mode);
    if config.cgroup_root.as_os_str().is_empty() {
        return found;
    }
    // A configured root keeps the version the mode (or the mounts) say.
    let v2 = match mode {
        CgroupMode::V2 => true,
        CgroupMode::V1Cpu => false,
        CgroupMode::Auto => found.is_none_or(|h| h.v2),
    };
    Some(cgroups::Hierarchy {
        v2,
        root: config.cgroup_root.clone(),
    })
}

/// Metric labels: (key, bounded value).
pub type Labels = Vec<(&'static str, String)>;

/// Longest label value, in characters; longer values are truncated.
pub use crate::util::text::MAX_LABEL_CHARS;

/// A label value from untrusted text (a command line, a file anyone with the right
/// privileges wrote): control, bidi and invisible characters escaped, at most
/// [`MAX_LABEL_CHARS`] characters.
fn bound_label(s: &str) -> String {
    crate::util::text::bounded(s)
}

/// `8-4-4-4-12` hex digits, the only form libvirt, QEMU and Ceph print.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}
