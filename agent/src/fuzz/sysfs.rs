//! Sysfs, Ceph and cgroup trees: each input is a script of file writes and symlinks
//! applied to the storage-node fixture (NVMe, SCSI, device-mapper, rbd, Ceph OSD links
//! in both layouts, a cgroup tree), kept inside the tree; then device naming, the Ceph
//! scan and cgroup naming walk it.

use std::cell::RefCell;

use crate::attribution::{
    ceph,
    cgroups::CgroupNames,
    devices::DeviceNames,
    fixture::{NVME, SDB, Tree, dev, storage_node},
};

pub(super) fn seeds() -> Vec<Vec<u8>> {
    let nvme = format!("sys/devices/{NVME}");
    let sdb = format!("sys/devices/{SDB}");
    [
        format!("{nvme}/dev=259:0\n{nvme}/uevent=MAJOR=259\nMINOR=0\nDEVTYPE=disk\n"),
        format!("{nvme}/queue/rotational=0\n{sdb}/queue/rotational=1\n{nvme}/nvme0n1p2/partition=2\n"),
        "sys/devices/virtual/block/dm-0/dm/name=ceph--abc-osd--block--xyz\nsys/devices/virtual/block/dm-0/dm/uuid=LVM-Kx2aBcD\n".into(),
        format!("sys/devices/virtual/block/dm-0/slaves/sdb->../../../../{SDB}\nsys/dev/block/8:16->../../devices/{SDB}\n"),
        "ceph/osd/ceph-3/block->/dev/ceph-abc/osd-block-xyz\nceph/osd/ceph-7/block.db->/dev/mapper/x\ndev/ceph-db/db-12->../dm-2\n".into(),
        "sys/bus/rbd/devices/0->../../../devices/rbd/0\nsys/devices/rbd/0/pool=volumes\nsys/devices/rbd/0/name=v\nsys/devices/rbd/0/major=251\nsys/devices/rbd/0/minor=0\n".into(),
        "sys/dev/block/8:48->8:48\nsys/class/block/sdq->../../devices/virtual/block/sdq\nsys/devices/virtual/block/sdq/dev=65:0\n".into(),
        "cgroup/kubepods.slice/kubepods-pod1.slice/cri-containerd-ab.scope/cgroup.procs=1\ncgroup/machine.slice/machine-qemu\\x2d1\\x2dvm.scope/x=\ncgroup/loop->..\n".into(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

thread_local! {
    /// The tree inputs write into, and how many inputs it has had.
    static TREE: RefCell<(Tree, usize)> = RefCell::new((storage_node(), 0));
}

pub(super) fn trees(script: &[u8]) {
    let numbers = [
        dev(259, 0),
        dev(259, 2),
        dev(8, 16),
        dev(8, 32),
        dev(8, 48),
        dev(253, 0),
        dev(253, 2),
        dev(251, 0),
        dev(65, 0),
    ];
    TREE.with_borrow_mut(|(tree, inputs)| {
        // A fresh storage node now and then, so mutations pile up but do not drown it.
        *inputs += 1;
        if *inputs % 50 == 0 {
            *tree = storage_node();
        }
        let t = &*tree;
        let root = std::fs::canonicalize(t.path("")).unwrap();
        for line in String::from_utf8_lossy(script).lines() {
            apply_line(t, &root, line);
        }
        let mut names = DeviceNames::new(t.roots());
        for n in numbers {
            let _ = names.lookup(n).labels();
        }
        let _ = ceph::scan(&t.roots());
        // Cgroup directories named by whoever created them, found by inode number.
        let cgroups = t.path("cgroup");
        let mut names = CgroupNames::new(cgroups.clone());
        for dir in walkdir_ids(&cgroups) {
            let _ = names.name(dir);
        }
    });
}

/// Whether `rel` is a plain relative path (no `..`, `.`, root or NUL): where a sysfs
/// script may write.
fn plain_relative(rel: &str) -> bool {
    !rel.is_empty()
        && !rel.contains('\0')
        && std::path::Path::new(rel)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// Whether a link target stays inside the tree, counted by name from the link's own
/// directory (at `depth` below the root): relative with no more `..` than that, or an
/// absolute `/dev/…` name (the probes map those to the tree's `dev`).
fn contained_target(target: &str, depth: usize) -> bool {
    if target.contains('\0') {
        return false;
    }
    if let Some(rest) = target.strip_prefix("/dev/") {
        return !rest.split('/').any(|c| c == "..");
    }
    let mut d = depth as i64;
    for c in target.split('/') {
        match c {
            ".." => d -= 1,
            "" | "." => {}
            _ => d += 1,
        }
        if d < 0 || target.starts_with('/') {
            return false;
        }
    }
    true
}

/// Applies one line of a sysfs script to `tree`: `rel=value` writes a file,
/// `rel->target` makes a symlink. Nothing is written outside the tree (a path whose
/// real parent lies elsewhere through earlier links is skipped).
fn apply_line(tree: &Tree, root: &std::path::Path, line: &str) {
    let (rel, link, value) = match (line.split_once("->"), line.split_once('=')) {
        (Some((rel, target)), _) => (rel, true, target),
        (None, Some((rel, value))) => (rel, false, value),
        _ => return,
    };
    if !plain_relative(rel) {
        return;
    }
    let path = tree.path(rel);
    let Some(parent) = path.parent() else { return };
    // The deepest existing ancestor must really be inside the tree.
    let existing = parent.ancestors().find(|a| a.exists()).unwrap_or(root);
    if !std::fs::canonicalize(existing).is_ok_and(|real| real.starts_with(root)) {
        return;
    }
    if std::fs::create_dir_all(parent).is_err()
        || !std::fs::canonicalize(parent).is_ok_and(|real| real.starts_with(root))
    {
        return;
    }
    let _ = std::fs::remove_file(&path);
    if link {
        let depth = std::path::Path::new(rel).components().count() - 1;
        if contained_target(value, depth) {
            let _ = std::os::unix::fs::symlink(value, &path);
        }
    } else {
        let _ = std::fs::write(&path, value);
    }
}

/// Inode numbers (cgroup ids) of the directories under `root`, a few levels deep.
fn walkdir_ids(root: &std::path::Path) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut ids = Vec::new();
    let mut dirs = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if let Ok(meta) = std::fs::symlink_metadata(&path)
                && meta.is_dir()
                && depth < 8
            {
                ids.push(meta.ino());
                dirs.push((path, depth + 1));
            }
        }
    }
    ids
}
