//! Which Ceph OSD a block device serves. Each OSD's data directory —
//! `<ceph_root>/osd/<cluster>-<id>/` (ceph-volume, ceph-disk) or cephadm's
//! `<ceph_root>/<fsid>/osd.<id>/` — holds a `block` symlink to its main device and, when
//! split out, `block.db` and `block.wal`. The targets are device nodes as the host
//! names them: `/dev/ceph-<vg>/osd-block-<uuid>` (an LVM volume), `/dev/mapper/<name>`,
//! or a raw `/dev/sdX`.
//!
//! The block tracepoints mostly see the physical disks (device-mapper is bio-based and
//! passes requests down), so from each target we walk down the device-mapper stack
//! through sysfs `slaves/`, to partitions and their whole disks, and label all of them.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    io,
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::{Component, Path, PathBuf},
    time::{Duration, Instant},
};

use super::{
    devices::Roots,
    is_uuid,
    sysfs::{self, BlockTree},
};

/// The OSD map is a scan of a few directories and links; OSDs come and go rarely, so
/// it is rebuilt at most this often (a new OSD is labelled within a minute).
const RESCAN_EVERY: Duration = Duration::from_secs(60);

/// Bounds on following links (a loop must end) and on the device-mapper stack.
const MAX_LINK_HOPS: usize = 16;
const MAX_STACK_DEPTH: usize = 16;

/// What a device is to an OSD: the order is the order labels list them in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Block,
    Db,
    Wal,
}

impl Role {
    const LINKS: [(&'static str, Role); 3] = [
        ("block", Role::Block),
        ("block.db", Role::Db),
        ("block.wal", Role::Wal),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Block => "block",
            Role::Db => "db",
            Role::Wal => "wal",
        }
    }
}

/// The OSDs a device serves and as what. One NVMe often holds the DB of several OSDs,
/// so both are sets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OsdUse {
    pub ids: BTreeSet<u32>,
    pub roles: BTreeSet<Role>,
}

impl OsdUse {
    /// `3` or `1,2,12`: ids in numeric order.
    pub fn ids_label(&self) -> String {
        join(self.ids.iter().map(u32::to_string))
    }

    /// `block`, or `db,wal` for a device holding several kinds.
    pub fn roles_label(&self) -> String {
        join(self.roles.iter().map(|r| r.as_str().to_owned()))
    }
}

fn join(parts: impl Iterator<Item = String>) -> String {
    parts.collect::<Vec<_>>().join(",")
}

/// Device number (kernel encoding) → the OSDs it serves, rescanned now and then.
pub struct OsdMap {
    roots: Roots,
    devices: HashMap<u32, OsdUse>,
    scanned: Option<Instant>,
}

impl OsdMap {
    pub fn new(roots: Roots) -> Self {
        Self {
            roots,
            devices: HashMap::new(),
            scanned: None,
        }
    }

    pub fn get(&mut self, dev: u32) -> Option<&OsdUse> {
        if self.scanned.is_none_or(|t| t.elapsed() >= RESCAN_EVERY) {
            self.scanned = Some(Instant::now());
            self.devices = scan(&self.roots);
            tracing::debug!(
                ceph_root = %self.roots.ceph.display(),
                devices = self.devices.len(),
                "scanned Ceph OSDs"
            );
        }
        self.devices.get(&dev)
    }
}

/// Every device behind every OSD under `ceph_root`.
pub fn scan(roots: &Roots) -> HashMap<u32, OsdUse> {
    let mut devices: HashMap<u32, OsdUse> = HashMap::new();
    let mut tree = BlockTree::new(&roots.sys);
    for (id, dir) in osd_dirs(&roots.ceph) {
        for (file, role) in Role::LINKS {
            let link = dir.join(file);
            if std::fs::symlink_metadata(&link).is_err() {
                continue; // db and wal are optional; an OSD being created has none yet
            }
            let Some(top) = resolve_link(&link, &roots.dev, &mut tree) else {
                tracing::debug!(link = %link.display(), "OSD link names no known block device");
                continue;
            };
            for dev in stack_below(&top) {
                let entry = devices.entry(dev).or_default();
                entry.ids.insert(id);
                entry.roles.insert(role);
            }
        }
    }
    devices
}

/// OSD data directories and their ids, in both layouts.
fn osd_dirs(ceph_root: &Path) -> Vec<(u32, PathBuf)> {
    let mut dirs = Vec::new();
    // `<cluster>-<id>`: the cluster name is `ceph` unless configured otherwise.
    for (name, path) in subdirs(&ceph_root.join("osd")) {
        if let Some(id) = name.rsplit_once('-').and_then(|(_, id)| id.parse().ok()) {
            dirs.push((id, path));
        }
    }
    // cephadm keeps one directory per cluster, named by its fsid. Only those are
    // listed: siblings such as `crash/` can hold thousands of entries.
    for (name, cluster) in subdirs(ceph_root) {
        if !is_uuid(&name) {
            continue;
        }
        for (name, path) in subdirs(&cluster) {
            if let Some(id) = name.strip_prefix("osd.").and_then(|id| id.parse().ok()) {
                dirs.push((id, path));
            }
        }
    }
    dirs
}

/// Directory entries with UTF-8 names (broken entries are skipped).
fn subdirs(dir: &Path) -> Vec<(String, PathBuf)> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(error) => {
            tracing::debug!(dir = %dir.display(), %error, "cannot list Ceph directory");
            Vec::new()
        }
    }
}

/// The sysfs directory of the block device an OSD link points to.
///
/// On the host, following the links ends at a device node whose number we read. In a
/// container the host's `/dev` is at `dev_root` (absolute `/dev/…` targets are re-rooted
/// there), or not mounted at all; then the last path the links reached is named
/// through sysfs: `/dev/<name>`, `/dev/mapper/<dm name>`, `/dev/<vg>/<lv>`.
fn resolve_link(link: &Path, dev_root: &Path, tree: &mut BlockTree) -> Option<PathBuf> {
    let mut local = link.to_path_buf();
    // The path as the host names it, once a link has pointed into /dev.
    let mut host: Option<PathBuf> = None;
    for _ in 0..MAX_LINK_HOPS {
        let target = match std::fs::read_link(&local) {
            Ok(target) => target,
            // Not a link: the chain ended on a file (a device node, or a fixture's).
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                return device_node(&local, tree).or_else(|| by_host_path(host?, tree));
            }
            // Not under dev_root (no host /dev mounted): name it through sysfs.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return by_host_path(host?, tree),
            Err(error) => {
                tracing::debug!(path = %local.display(), %error, "cannot read OSD link");
                return None;
            }
        };
        let next = match (&host, target.is_absolute()) {
            (_, true) => normalize(&target),
            (Some(h), false) => normalize(&h.parent().unwrap_or(h).join(&target)),
            (None, false) => {
                // A relative link outside /dev: follow it where it is.
                local = normalize(&local.parent().unwrap_or(&local).join(&target));
                continue;
            }
        };
        local = match next.strip_prefix("/dev") {
            Ok(rest) => dev_root.join(rest),
            Err(_) => next.clone(),
        };
        host = Some(next);
    }
    tracing::debug!(link = %link.display(), "OSD link chain too long or looping");
    None
}

/// The sysfs directory of a real block device node, by its number.
fn device_node(path: &Path, tree: &BlockTree) -> Option<PathBuf> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.file_type().is_block_device() {
        return None;
    }
    let rdev = meta.rdev();
    tree.by_number(agent_common::dev::join(
        libc::major(rdev),
        libc::minor(rdev),
    )?)
}

/// Names a `/dev` path through sysfs.
fn by_host_path(host: PathBuf, tree: &mut BlockTree) -> Option<PathBuf> {
    let rest = host.strip_prefix("/dev").ok()?;
    let parts: Option<Vec<&str>> = rest.iter().map(|p| p.to_str()).collect();
    let found = match *parts.as_deref().unwrap_or_default() {
        [name] => tree.by_name(name),
        ["mapper", name] => tree.by_dm_name(name),
        // udev's /dev/disk/by-* links need the host's /dev to follow.
        ["disk", ..] => None,
        [vg, lv] => tree.by_dm_name(&lvm_dm_name(vg, lv)),
        _ => None,
    };
    if found.is_none() {
        tracing::debug!(path = %host.display(), "no block device of that name in sysfs");
    }
    found
}

/// The device-mapper name LVM gives a logical volume: `-` inside either name is
/// doubled, and a single `-` joins them (`ceph-abc`/`osd-block-1` →
/// `ceph--abc-osd--block--1`).
fn lvm_dm_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

/// `.` and `..` resolved lexically, as the kernel does for a link target that is
/// itself made of symlink-free `/dev` directories.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Device numbers of `top`, everything it is built on (`slaves/`, recursively), and the
/// whole disk of every partition among them.
fn stack_below(top: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    walk_down(top, &mut Vec::new(), &mut seen, &mut out);
    out
}

fn walk_down(dir: &Path, path: &mut Vec<PathBuf>, seen: &mut HashSet<PathBuf>, out: &mut Vec<u32>) {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        tracing::debug!(dir = %dir.display(), "dangling sysfs slave link");
        return;
    };
    if path.contains(&dir) || path.len() >= MAX_STACK_DEPTH {
        tracing::debug!(dir = %dir.display(), "device-mapper stack loops or is too deep");
        return;
    }
    // Reached twice without a loop (two volumes on one disk): already counted.
    if !seen.insert(dir.clone()) {
        return;
    }
    if let Some(dev) = sysfs::number_of(&dir) {
        out.push(dev);
    }
    let disk = sysfs::whole_disk(&dir);
    if disk != dir {
        if seen.insert(disk.to_path_buf()) {
            out.extend(sysfs::number_of(disk));
        }
        return; // partitions have no slaves
    }
    let Ok(entries) = std::fs::read_dir(dir.join("slaves")) else {
        return;
    };
    path.push(dir.clone());
    for entry in entries.flatten() {
        walk_down(&entry.path(), path, seen, out);
    }
    path.pop();
}

#[cfg(test)]
mod tests;
