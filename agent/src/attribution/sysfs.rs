//! Reading the kernel's block device tree in sysfs. Every block device, disk or
//! partition, has a directory under `<sys>/devices/…` holding `dev` (`MAJ:MIN`) and
//! `uevent`; `<sys>/dev/block/MAJ:MIN` and `<sys>/class/block/<name>` are symlinks to
//! it, and a partition's directory sits inside its disk's.
//!
//! Everything here tolerates a missing or odd tree: it answers `None`, and says why in
//! a debug log when the answer is not simply "the file is not there".

use std::{
    collections::HashMap,
    io::{self, Read},
    path::{Path, PathBuf},
};

use agent_common::dev;

/// sysfs attributes are at most a page; anything longer is not what we expect.
const ATTR_LIMIT: u64 = 4096;

/// The trimmed content of a small text file; `None` when missing, unreadable, too long
/// or empty.
pub fn read_attr(path: &Path) -> Option<String> {
    let mut bytes = Vec::new();
    let read =
        std::fs::File::open(path).and_then(|f| f.take(ATTR_LIMIT + 1).read_to_end(&mut bytes));
    match read {
        Ok(_) if bytes.len() as u64 > ATTR_LIMIT => {
            tracing::debug!(path = %path.display(), "ignoring an oversized sysfs attribute");
            None
        }
        Ok(_) => {
            let text = String::from_utf8_lossy(&bytes);
            let text = text.trim();
            (!text.is_empty()).then(|| text.to_owned())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(error) => {
            tracing::debug!(path = %path.display(), %error, "cannot read sysfs attribute");
            None
        }
    }
}

/// The device number in a device directory's `dev` file.
pub fn number_of(dir: &Path) -> Option<u32> {
    let path = dir.join("dev");
    let text = read_attr(&path)?;
    let number = dev::parse(&text);
    if number.is_none() {
        tracing::debug!(path = %path.display(), "malformed device number");
    }
    number
}

/// The kernel's name for a device: `DEVNAME` in its `uevent`, else its directory's name.
pub fn kernel_name(dir: &Path) -> Option<String> {
    read_attr(&dir.join("uevent"))
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("DEVNAME="))
                .map(str::to_owned)
        })
        .or_else(|| Some(dir.file_name()?.to_string_lossy().into_owned()))
}

/// A partition's directory has a `partition` file (its number); a disk's has none.
pub fn is_partition(dir: &Path) -> bool {
    dir.join("partition").is_file()
}

/// The whole disk a device belongs to: the partition's parent directory, or the
/// device itself.
pub fn whole_disk(dir: &Path) -> &Path {
    match dir.parent() {
        Some(parent) if is_partition(dir) => parent,
        _ => dir,
    }
}

/// Resolves a symlink chain to a real directory; loops and dangling links give `None`
/// with a debug line.
fn canonical_dir(path: &Path) -> Option<PathBuf> {
    match std::fs::canonicalize(path) {
        Ok(dir) if dir.is_dir() => Some(dir),
        Ok(other) => {
            tracing::debug!(path = %path.display(), target = %other.display(), "not a sysfs directory");
            None
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(error) => {
            tracing::debug!(path = %path.display(), %error, "cannot resolve sysfs link");
            None
        }
    }
}

/// The block devices of one sysfs tree.
pub struct BlockTree<'a> {
    root: &'a Path,
    /// device-mapper name → device directory, read on first use.
    dm_names: Option<HashMap<String, PathBuf>>,
}

impl<'a> BlockTree<'a> {
    pub fn new(root: &'a Path) -> Self {
        Self {
            root,
            dm_names: None,
        }
    }

    /// The directory of device `dev` (kernel encoding).
    pub fn by_number(&self, dev: u32) -> Option<PathBuf> {
        let (major, minor) = dev::split(dev);
        canonical_dir(&self.root.join(format!("dev/block/{major}:{minor}")))
    }

    /// The directory of the device the kernel calls `name` (`sdb`, `dm-0`,
    /// `nvme0n1p2`).
    pub fn by_name(&self, name: &str) -> Option<PathBuf> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return None;
        }
        canonical_dir(&self.root.join("class/block").join(name))
    }

    /// The directory of the device-mapper device named `name` (`dm/name`, the name
    /// under `/dev/mapper/`).
    pub fn by_dm_name(&mut self, name: &str) -> Option<PathBuf> {
        let root = self.root;
        self.dm_names
            .get_or_insert_with(|| dm_names(root))
            .get(name)
            .cloned()
    }
}

/// Every device-mapper device's name, from `<sys>/class/block/*/dm/name`.
fn dm_names(root: &Path) -> HashMap<String, PathBuf> {
    let Ok(entries) = std::fs::read_dir(root.join("class/block")) else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let dir = canonical_dir(&entry.path())?;
            Some((read_attr(&dir.join("dm/name"))?, dir))
        })
        .collect()
}
