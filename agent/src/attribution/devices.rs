//! Block device numbers → names, from sysfs (`/sys/dev/block/MAJ:MIN/uevent`). The sysfs
//! root is configurable so a container can read the host's through a mount, and tests
//! can use fixture trees.

use std::{collections::HashMap, path::PathBuf};

/// Kernel `dev_t` encoding used by the block tracepoints: `major << 20 | minor`.
pub fn split_dev(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & 0xf_ffff)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// `sda`, `nvme0n1`, `loop3`; the number itself when sysfs does not know it.
    pub name: String,
    /// `major:minor`.
    pub number: String,
}

pub struct DeviceNames {
    sys_root: PathBuf,
    cache: HashMap<u32, Device>,
}

impl DeviceNames {
    pub fn new(sys_root: PathBuf) -> Self {
        Self {
            sys_root,
            cache: HashMap::new(),
        }
    }

    /// Name of a device; looked up once, then cached. Device numbers are reused when a
    /// device goes away, so call [`Self::forget`] on that.
    pub fn lookup(&mut self, dev: u32) -> &Device {
        let root = &self.sys_root;
        self.cache.entry(dev).or_insert_with(|| {
            let (major, minor) = split_dev(dev);
            let number = format!("{major}:{minor}");
            let uevent = root.join(format!("dev/block/{number}/uevent"));
            let name = std::fs::read_to_string(&uevent)
                .ok()
                .and_then(|text| {
                    text.lines()
                        .find_map(|l| l.strip_prefix("DEVNAME="))
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| {
                    tracing::debug!(path = %uevent.display(), "no device name in sysfs");
                    number.clone()
                });
            Device { name, number }
        })
    }

    pub fn forget(&mut self) {
        self.cache.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_a_sysfs_tree_and_falls_back_to_the_number() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("dev/block/259:0");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("uevent"),
            "MAJOR=259\nMINOR=0\nDEVNAME=nvme0n1\nDEVTYPE=disk\n",
        )
        .unwrap();
        let mut names = DeviceNames::new(dir.path().to_path_buf());
        assert_eq!(names.lookup(259 << 20).name, "nvme0n1");
        assert_eq!(names.lookup(259 << 20).number, "259:0");
        assert_eq!(names.lookup((8 << 20) | 16).name, "8:16");
    }
}
