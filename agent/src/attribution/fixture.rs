//! Fixture trees for the device identity tests: a sysfs-like tree of real directories
//! and symlinks laid out as the kernel lays them out, a `/dev` and a Ceph state dir.

use std::{
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use super::devices::Roots;

pub struct Tree {
    dir: tempfile::TempDir,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn roots(&self) -> Roots {
        Roots {
            sys: self.path("sys"),
            dev: self.path("dev"),
            ceph: self.path("ceph"),
        }
    }

    /// Writes `rel` (from the tree's root), creating its directories.
    pub fn write(&self, rel: &str, text: &str) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A symlink at `rel` to `target`, taken as is (relative to the link, or absolute).
    pub fn link(&self, rel: &str, target: impl AsRef<Path>) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, path).unwrap();
    }

    /// A block device at `sys/devices/<devpath>`, with the kernel's relative
    /// `dev/block/MAJ:MIN` and `class/block/<name>` links to it. Returns its directory
    /// relative to the tree's root.
    fn block(&self, devpath: &str, number: &str, devtype: &str) -> String {
        let dir = format!("sys/devices/{devpath}");
        let name = devpath.rsplit('/').next().unwrap();
        let (major, minor) = number.split_once(':').unwrap();
        self.write(&format!("{dir}/dev"), &format!("{number}\n"));
        self.write(
            &format!("{dir}/uevent"),
            &format!("MAJOR={major}\nMINOR={minor}\nDEVNAME={name}\nDEVTYPE={devtype}\n"),
        );
        let target = format!("../../devices/{devpath}");
        self.link(&format!("sys/dev/block/{number}"), &target);
        self.link(&format!("sys/class/block/{name}"), &target);
        dir
    }

    /// A whole disk; `rotational` is its `queue/rotational` content.
    pub fn disk(&self, devpath: &str, number: &str, rotational: &str) -> String {
        let dir = self.block(devpath, number, "disk");
        self.write(&format!("{dir}/queue/rotational"), rotational);
        dir
    }

    /// Partition `name` of the disk at `disk_devpath`.
    pub fn partition(&self, disk_devpath: &str, name: &str, number: &str) -> String {
        let dir = self.block(&format!("{disk_devpath}/{name}"), number, "partition");
        let index = name.rsplit(|c: char| !c.is_ascii_digit()).next().unwrap();
        self.write(&format!("{dir}/partition"), index);
        dir
    }

    /// Hangs the disk at `disk_devpath` off its parent device, which belongs to
    /// `subsystem` (`bus/scsi`, `class/nvme`). The parent is the disk's directory's
    /// parent, above the `block/` directory some buses put disks in.
    pub fn parent(&self, disk_devpath: &str, subsystem: &str) -> PathBuf {
        let disk = self.path(&format!("sys/devices/{disk_devpath}"));
        let mut parent = disk.parent().unwrap();
        if parent.ends_with("block") {
            parent = parent.parent().unwrap();
        }
        let parent = parent.to_path_buf();
        std::fs::create_dir_all(self.path(&format!("sys/{subsystem}"))).unwrap();
        std::fs::create_dir_all(&parent).unwrap();
        std::os::unix::fs::symlink(
            self.path(&format!("sys/{subsystem}")),
            parent.join("subsystem"),
        )
        .unwrap();
        std::os::unix::fs::symlink(&parent, disk.join("device")).unwrap();
        parent
    }

    /// A device-mapper device `dm-<n>` built on `slaves` (directories relative to the
    /// tree's root).
    pub fn dm(&self, n: u32, dm_name: &str, uuid: &str, slaves: &[&str]) -> String {
        let dir = self.disk(&format!("virtual/block/dm-{n}"), &format!("253:{n}"), "0");
        self.write(&format!("{dir}/dm/name"), &format!("{dm_name}\n"));
        self.write(&format!("{dir}/dm/uuid"), &format!("{uuid}\n"));
        std::fs::create_dir_all(self.path(&format!("{dir}/slaves"))).unwrap();
        for slave in slaves {
            let name = slave.rsplit('/').next().unwrap();
            self.link(&format!("{dir}/slaves/{name}"), self.path(slave));
        }
        dir
    }
}

pub const NVME: &str = "pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1";
pub const SDB: &str = "pci0000:00/0000:00:05.0/host0/target0:0:1/0:0:1:0/block/sdb";
pub const SDC: &str = "pci0000:00/0000:00:05.0/host0/target0:0:2/0:0:2:0/block/sdc";
pub const FSID: &str = "5f3c2a10-8e4b-4d1a-9c7e-2b6d0f1e3a4c";

/// A Ceph storage node:
/// - `nvme0n1` (259:0, SSD) with `p1` (nothing), `p2` (under `dm-1`, OSD 12's block)
///   and `p3` (under `dm-2` and `dm-3`: the DB volumes of OSDs 12 and 3);
/// - `sdb` (8:16, spinning) under `dm-0`, OSD 3's block, in the plain layout through
///   `/dev/<vg>/<lv>`; `sdc` (8:32), OSD 5's block as a raw disk;
/// - OSD 12 in cephadm's layout, its block through `/dev/mapper/…` and its DB through
///   a `/dev` that exists in the tree (`/dev/ceph-db/db-12` → `../dm-2`).
///
/// Nothing under the tree's `dev/` exists except that one LV link and `dm-2`'s node (a
/// plain file, as a fixture cannot make device nodes): the other targets are named
/// through sysfs, as in a container without the host's `/dev`.
pub fn storage_node() -> Tree {
    let t = Tree::new();
    t.disk(NVME, "259:0", "0");
    t.parent(NVME, "class/nvme");
    t.write(
        "sys/devices/pci0000:00/0000:00:04.0/nvme/nvme0/model",
        "Samsung SSD 980 PRO 1TB                 \n",
    );
    t.partition(NVME, "nvme0n1p1", "259:1");
    let p2 = t.partition(NVME, "nvme0n1p2", "259:2");
    let p3 = t.partition(NVME, "nvme0n1p3", "259:3");
    let sdb = t.disk(SDB, "8:16", "1");
    t.parent(SDB, "bus/scsi");
    t.write(
        "sys/devices/pci0000:00/0000:00:05.0/host0/target0:0:1/0:0:1:0/model",
        "ST4000NM0035-1V4\n",
    );
    t.disk(SDC, "8:32", "1");
    t.parent(SDC, "bus/scsi");

    t.dm(0, "ceph--abc-osd--block--xyz", "LVM-Kx2aBcD", &[&sdb]);
    t.link("ceph/osd/ceph-3/block", "/dev/ceph-abc/osd-block-xyz");
    t.dm(3, "ceph--db-db--3", "LVM-Qw9", &[&p3]);
    t.link("ceph/osd/ceph-3/block.db", "/dev/ceph-db/db-3");

    t.dm(1, "ceph--def-osd--block--uvw", "LVM-Zz1", &[&p2]);
    t.dm(2, "ceph--db-db--12", "LVM-Yy2", &[&p3]);
    let osd12 = format!("ceph/{FSID}/osd.12");
    t.link(
        &format!("{osd12}/block"),
        "/dev/mapper/ceph--def-osd--block--uvw",
    );
    t.link(&format!("{osd12}/block.db"), "/dev/ceph-db/db-12");
    t.link("dev/ceph-db/db-12", "../dm-2");
    t.write("dev/dm-2", "");
    // cephadm keeps other daemons next to the OSDs.
    t.write(&format!("ceph/{FSID}/mon.a/keyring"), "");
    t.write("ceph/crash/posted/readme", "");

    t.link("ceph/osd/ceph-5/block", "/dev/sdc");
    t
}

/// Expected labels, written briefly.
pub fn labels(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|&(k, v)| (k, v.to_owned())).collect()
}

/// Kernel device number from `major`, `minor`, which must fit.
pub fn dev(major: u32, minor: u32) -> u32 {
    agent_common::dev::join(major, minor).expect("a device number that fits")
}

/// Runs `f`, returning its result and what it logged (debug and above), so tests can
/// check that what is ignored is said.
pub fn with_debug_log<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Buf {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let log = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    (out, log)
}
