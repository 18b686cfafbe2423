//! Block device numbers → what operators call the device: its name, the whole disk of
//! a partition, its kind, whether it spins, its model, and what it serves (a Ceph OSD,
//! an RBD image). Read from sysfs, `/dev` and Ceph's state directory, whose roots are
//! configurable so a container can read the host's through mounts, and tests can use
//! fixture trees.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use agent_common::dev;

use super::{
    Labels, bound_label,
    ceph::{OsdMap, OsdUse},
    rbd::{self, RbdImage},
    sysfs::{self, BlockTree},
};

/// What kind of block device, told from sysfs: the driver's own directories, the bus
/// the disk hangs off, its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Nvme,
    Scsi,
    Virtio,
    Xen,
    Loop,
    Rbd,
    Nbd,
    /// A device-mapper device that is not an LVM volume (dm-crypt, multipath, …).
    Dm,
    /// An LVM logical volume (a device-mapper device whose uuid LVM set).
    Lvm,
    Md,
    Zram,
    Mmc,
    Other,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Nvme => "nvme",
            Kind::Scsi => "scsi",
            Kind::Virtio => "virtio",
            Kind::Xen => "xen",
            Kind::Loop => "loop",
            Kind::Rbd => "rbd",
            Kind::Nbd => "nbd",
            Kind::Dm => "dm",
            Kind::Lvm => "lvm",
            Kind::Md => "md",
            Kind::Zram => "zram",
            Kind::Mmc => "mmc",
            Kind::Other => "other",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// `sda`, `nvme0n1`, `loop3`; the number itself when sysfs does not know it.
    pub name: String,
    /// `major:minor`.
    pub number: String,
    /// The whole disk's name, for a partition.
    pub disk: Option<String>,
    /// The whole disk's kind.
    pub kind: Kind,
    /// `queue/rotational` of the whole disk.
    pub rotational: Option<bool>,
    /// The whole disk's model (NVMe and SCSI report one), trimmed.
    pub model: Option<String>,
    /// device-mapper name (`/dev/mapper/<name>`).
    pub dm_name: Option<String>,
    /// The Ceph OSDs this device serves, directly or below a device-mapper volume.
    pub osd: Option<OsdUse>,
    /// The image a kernel RBD device maps.
    pub rbd: Option<RbdImage>,
}

impl Device {
    /// A device sysfs does not know: named by its number.
    fn unknown(number: String) -> Self {
        Self {
            name: number.clone(),
            number,
            disk: None,
            kind: Kind::Other,
            rotational: None,
            model: None,
            dm_name: None,
            osd: None,
            rbd: None,
        }
    }

    /// The identity attributes of this device's series, only those known:
    /// `device.type`, `device.rotational`, `device.model`, `device.disk` (partitions),
    /// `dm.name`, `ceph.osd.id`, `ceph.osd.role`, `rbd.pool`, `rbd.image`,
    /// `rbd.namespace`, `rbd.snapshot`. Values are bounded like every label.
    pub fn labels(&self) -> Labels {
        let mut labels = vec![("device.type", self.kind.as_str().to_owned())];
        if let Some(rotational) = self.rotational {
            labels.push(("device.rotational", rotational.to_string()));
        }
        let osd = self.osd.as_ref();
        let rbd = self.rbd.as_ref();
        let optional = [
            ("device.model", self.model.clone()),
            ("device.disk", self.disk.clone()),
            ("dm.name", self.dm_name.clone()),
            ("ceph.osd.id", osd.map(OsdUse::ids_label)),
            ("ceph.osd.role", osd.map(OsdUse::roles_label)),
            ("rbd.pool", rbd.map(|r| r.pool.clone())),
            ("rbd.image", rbd.map(|r| r.image.clone())),
            ("rbd.namespace", rbd.and_then(|r| r.namespace.clone())),
            ("rbd.snapshot", rbd.and_then(|r| r.snapshot.clone())),
        ];
        labels.extend(
            optional
                .into_iter()
                .filter_map(|(key, value)| Some((key, bound_label(&value?)))),
        );
        labels
    }
}

/// Every key [`Device::labels`] can give, in its order: the labels a cardinality budget
/// drops along with the device when it folds a device into `other`.
pub const LABEL_KEYS: &[&str] = SERIES_IDENTITY.split_at(2).1;

/// Every label that identifies a device's series: its name and number, then
/// [`LABEL_KEYS`]. Folding devices into `other` drops them all.
pub const SERIES_IDENTITY: [&str; 13] = [
    "device",
    "dev",
    "device.type",
    "device.rotational",
    "device.model",
    "device.disk",
    "dm.name",
    "ceph.osd.id",
    "ceph.osd.role",
    "rbd.pool",
    "rbd.image",
    "rbd.namespace",
    "rbd.snapshot",
];

/// Where the trees are: the host's `/sys`, `/dev` and `/var/lib/ceph` by default.
#[derive(Clone, Debug)]
pub struct Roots {
    pub sys: PathBuf,
    pub dev: PathBuf,
    pub ceph: PathBuf,
}

pub struct DeviceNames {
    sys_root: PathBuf,
    osds: OsdMap,
    cache: HashMap<u32, Cached>,
    /// This interval's stat of each device's sysfs directory (`None`: not there).
    seen: HashMap<u32, Option<NodeId>>,
    /// How long an identity is kept while its sysfs directory stays the same one:
    /// attributes that change in place (a model, `rotational`, an OSD taking the
    /// disk) are seen within this long.
    refresh_every: Duration,
}

/// Which sysfs directory a device number led to: a disk removed and another added
/// under the same number gets a new directory (kernfs gives each node a new inode
/// number, and its creation time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NodeId {
    ino: u64,
    ctime_ns: i128,
}

struct Cached {
    device: Device,
    node: Option<NodeId>,
    at: Instant,
}

/// As the Ceph OSD map's rescan: an identity is never older than the OSD it names.
const REFRESH_EVERY: Duration = Duration::from_secs(60);

/// Where `<sys>/dev/block/MAJ:MIN` leads (one `stat`, following the link).
fn node_of(sys_root: &Path, dev: u32) -> Option<NodeId> {
    let (major, minor) = dev::split(dev);
    let path = sys_root.join(format!("dev/block/{major}:{minor}"));
    let meta = std::fs::metadata(path).ok().filter(|m| m.is_dir())?;
    Some(NodeId {
        ino: meta.ino(),
        ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
    })
}

impl DeviceNames {
    pub fn new(roots: Roots) -> Self {
        Self {
            sys_root: roots.sys.clone(),
            osds: OsdMap::new(roots),
            cache: HashMap::new(),
            seen: HashMap::new(),
            refresh_every: REFRESH_EVERY,
        }
    }

    /// Identities kept at most `every` (tests: zero re-reads at every interval).
    pub fn refreshed_every(mut self, every: Duration) -> Self {
        self.refresh_every = every;
        self
    }

    /// Whether sysfs knows device `dev` now (a removed device keeps its cached
    /// identity until its number leads elsewhere). One `stat` per device and interval.
    pub fn is_present(&self, dev: u32) -> bool {
        match self.seen.get(&dev) {
            Some(node) => node.is_some(),
            None => node_of(&self.sys_root, dev).is_some(),
        }
    }

    /// Identity of a device: read once, then kept while its number leads to the same
    /// sysfs directory (device numbers are reused when a device goes away) and for at
    /// most the refresh period.
    pub fn lookup(&mut self, dev: u32) -> &Device {
        let node = self.node(dev);
        let stale = self.cache.get(&dev).is_none_or(|c| {
            c.node != node || (node.is_some() && c.at.elapsed() >= self.refresh_every)
        });
        if stale {
            let device = self.identify(dev);
            let at = Instant::now();
            self.cache.insert(dev, Cached { device, node, at });
        }
        &self.cache[&dev].device
    }

    /// A new interval: each device's directory is looked at again (once) when next
    /// asked for.
    pub fn forget(&mut self) {
        self.seen.clear();
    }

    /// The sysfs directory `dev` leads to, stat'ed once per interval.
    fn node(&mut self, dev: u32) -> Option<NodeId> {
        let root = &self.sys_root;
        *self.seen.entry(dev).or_insert_with(|| node_of(root, dev))
    }

    fn identify(&mut self, dev: u32) -> Device {
        let (major, minor) = dev::split(dev);
        let number = format!("{major}:{minor}");
        let Some(dir) = BlockTree::new(&self.sys_root).by_number(dev) else {
            tracing::debug!(number, "block device not in sysfs");
            return Device::unknown(number);
        };
        let name = sysfs::kernel_name(&dir).unwrap_or_else(|| number.clone());
        let disk_dir = sysfs::whole_disk(&dir);
        let disk_name = sysfs::kernel_name(disk_dir).unwrap_or_else(|| name.clone());
        let kind = kind_of(disk_dir, &disk_name);
        Device {
            disk: (disk_dir != dir).then(|| disk_name.clone()),
            kind,
            rotational: rotational(disk_dir),
            model: sysfs::read_attr(&disk_dir.join("device/model")),
            dm_name: sysfs::read_attr(&disk_dir.join("dm/name")),
            osd: self.osds.get(dev).cloned(),
            rbd: match kind {
                Kind::Rbd => rbd::image(&self.sys_root, &disk_name, major),
                _ => None,
            },
            name,
            number,
        }
    }
}

fn rotational(disk_dir: &Path) -> Option<bool> {
    let path = disk_dir.join("queue/rotational");
    match sysfs::read_attr(&path)?.as_str() {
        "0" => Some(false),
        "1" => Some(true),
        other => {
            tracing::debug!(path = %path.display(), value = %bound_label(other), "unexpected rotational flag");
            None
        }
    }
}

/// Tells a whole disk's kind, most specific evidence first:
/// 1. directories a driver adds to its own disks (`dm/`, `md/`, `loop/` while bound):
///    present only for that driver's devices;
/// 2. the bus or class of the device the disk hangs off (its `device/subsystem`): what
///    "kind" means, and independent of naming;
/// 3. the kernel's name, for virtual disks with no parent device (nbd, zram, an unbound
///    loop, rbd on old kernels). Drivers choose these names and udev cannot rename
///    kernel block devices, so the prefixes are stable.
fn kind_of(disk_dir: &Path, name: &str) -> Kind {
    if disk_dir.join("dm").is_dir() {
        let lvm =
            sysfs::read_attr(&disk_dir.join("dm/uuid")).is_some_and(|u| u.starts_with("LVM-"));
        return if lvm { Kind::Lvm } else { Kind::Dm };
    }
    if disk_dir.join("md").is_dir() {
        return Kind::Md;
    }
    if disk_dir.join("loop").is_dir() {
        return Kind::Loop;
    }
    let subsystem = std::fs::read_link(disk_dir.join("device/subsystem")).ok();
    let by_subsystem = match subsystem
        .as_deref()
        .and_then(Path::file_name)
        .and_then(|s| s.to_str())
    {
        // NVMe namespaces hang off their controller, or off the NVMe subsystem with
        // native multipathing.
        Some("nvme" | "nvme-subsystem") => Some(Kind::Nvme),
        Some("scsi") => Some(Kind::Scsi),
        Some("virtio") => Some(Kind::Virtio),
        Some("xen") => Some(Kind::Xen),
        Some("mmc") => Some(Kind::Mmc),
        Some("rbd") => Some(Kind::Rbd),
        _ => None,
    };
    by_subsystem.unwrap_or_else(|| kind_by_name(name))
}

fn kind_by_name(name: &str) -> Kind {
    const PREFIXES: [(&str, Kind); 12] = [
        ("nvme", Kind::Nvme),
        ("sd", Kind::Scsi),
        ("vd", Kind::Virtio),
        ("xvd", Kind::Xen),
        ("loop", Kind::Loop),
        ("rbd", Kind::Rbd),
        ("nbd", Kind::Nbd),
        ("dm-", Kind::Dm),
        ("md", Kind::Md),
        ("zram", Kind::Zram),
        ("mmcblk", Kind::Mmc),
        ("sr", Kind::Scsi),
    ];
    PREFIXES
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .map_or(Kind::Other, |&(_, kind)| kind)
}

#[cfg(test)]
mod tests;
