//! Tests of the parent module.
use std::time::Duration;

use super::*;
use crate::attribution::fixture::{SDB, Tree, dev, labels, storage_node, with_debug_log};

#[test]
fn names_from_a_sysfs_tree_and_falls_back_to_the_number() {
    let t = Tree::new();
    // A plain directory rather than the kernel's link, and no parent device.
    t.write(
        "sys/dev/block/259:0/uevent",
        "MAJOR=259\nMINOR=0\nDEVNAME=nvme0n1\nDEVTYPE=disk\n",
    );
    let mut names = DeviceNames::new(t.roots());
    assert_eq!(names.lookup(dev(259, 0)).name, "nvme0n1");
    assert_eq!(names.lookup(dev(259, 0)).number, "259:0");
    assert_eq!(names.lookup(dev(259, 0)).kind, Kind::Nvme);
    assert_eq!(*names.lookup(dev(8, 16)), Device::unknown("8:16".into()));
    assert_eq!(
        names.lookup(dev(8, 16)).labels(),
        labels(&[("device.type", "other")])
    );
}

#[test]
fn a_partition_is_labelled_with_its_disk() {
    let t = storage_node();
    let mut names = DeviceNames::new(t.roots());
    let p1 = names.lookup(dev(259, 1)).clone();
    assert_eq!(
        (p1.name.as_str(), p1.number.as_str()),
        ("nvme0n1p1", "259:1")
    );
    assert_eq!(
        p1.labels(),
        labels(&[
            ("device.type", "nvme"),
            ("device.rotational", "false"),
            ("device.model", "Samsung SSD 980 PRO 1TB"),
            ("device.disk", "nvme0n1"),
        ])
    );
}

#[test]
fn osd_devices_carry_the_osd_from_the_volume_down_to_the_disk() {
    let t = storage_node();
    let mut names = DeviceNames::new(t.roots());
    let mut labels_of = |d| names.lookup(d).labels();
    assert_eq!(
        labels_of(dev(8, 16)),
        labels(&[
            ("device.type", "scsi"),
            ("device.rotational", "true"),
            ("device.model", "ST4000NM0035-1V4"),
            ("ceph.osd.id", "3"),
            ("ceph.osd.role", "block"),
        ])
    );
    assert_eq!(
        labels_of(dev(253, 0)),
        labels(&[
            ("device.type", "lvm"),
            ("device.rotational", "false"),
            ("dm.name", "ceph--abc-osd--block--xyz"),
            ("ceph.osd.id", "3"),
            ("ceph.osd.role", "block"),
        ])
    );
    assert_eq!(
        labels_of(dev(259, 0)),
        labels(&[
            ("device.type", "nvme"),
            ("device.rotational", "false"),
            ("device.model", "Samsung SSD 980 PRO 1TB"),
            ("ceph.osd.id", "3,12"),
            ("ceph.osd.role", "block,db"),
        ])
    );
    assert_eq!(
        labels_of(dev(259, 3)),
        labels(&[
            ("device.type", "nvme"),
            ("device.rotational", "false"),
            ("device.model", "Samsung SSD 980 PRO 1TB"),
            ("device.disk", "nvme0n1"),
            ("ceph.osd.id", "3,12"),
            ("ceph.osd.role", "db"),
        ])
    );
    assert_eq!(
        labels_of(dev(8, 32)),
        labels(&[
            ("device.type", "scsi"),
            ("device.rotational", "true"),
            ("ceph.osd.id", "5"),
            ("ceph.osd.role", "block"),
        ])
    );
}

#[test]
fn kinds_from_driver_directories_buses_and_names() {
    let t = Tree::new();
    t.disk("pci0000:00/0000:00:02.0/virtio1/block/vda", "254:0", "1");
    t.parent("pci0000:00/0000:00:02.0/virtio1/block/vda", "bus/virtio");
    // A bound loop device has loop/; an unbound one is known by its name.
    let loop0 = t.disk("virtual/block/loop0", "7:0", "1");
    t.write(&format!("{loop0}/loop/backing_file"), "/var/tmp/disk.img\n");
    t.disk("virtual/block/loop1", "7:1", "1");
    t.disk("virtual/block/zram0", "251:0", "0");
    t.disk("virtual/block/nbd0", "43:0", "1");
    let md = t.disk("virtual/block/md127", "9:127", "0");
    t.write(&format!("{md}/md/level"), "raid1\n");
    t.dm(4, "luks-5e2d", "CRYPT-LUKS2-5e2d", &[]);
    // A Xen virtual disk and an MMC card, known by their parent's bus.
    t.disk("vbd-51712/block/xvda", "202:0", "0");
    t.parent("vbd-51712/block/xvda", "bus/xen");
    t.disk("platform/mmc0/mmc0:0001/block/mmcblk0", "179:0", "0");
    t.parent("platform/mmc0/mmc0:0001/block/mmcblk0", "bus/mmc");
    t.disk("virtual/block/ram0", "1:0", "banana");

    let mut names = DeviceNames::new(t.roots());
    for (number, kind) in [
        (dev(254, 0), Kind::Virtio),
        (dev(7, 0), Kind::Loop),
        (dev(7, 1), Kind::Loop),
        (dev(251, 0), Kind::Zram),
        (dev(43, 0), Kind::Nbd),
        (dev(9, 127), Kind::Md),
        (dev(253, 4), Kind::Dm),
        (dev(202, 0), Kind::Xen),
        (dev(179, 0), Kind::Mmc),
        (dev(1, 0), Kind::Other),
    ] {
        let device = names.lookup(number);
        assert_eq!(device.kind, kind, "{}", device.name);
    }
    assert_eq!(
        names.lookup(dev(254, 0)).labels(),
        labels(&[("device.type", "virtio"), ("device.rotational", "true")])
    );
    assert_eq!(
        names.lookup(dev(253, 4)).labels(),
        labels(&[
            ("device.type", "dm"),
            ("device.rotational", "false"),
            ("dm.name", "luks-5e2d"),
        ])
    );
    // A garbage rotational flag is no label.
    assert_eq!(
        names.lookup(dev(1, 0)).labels(),
        labels(&[("device.type", "other")])
    );
}

/// Labels come in [`LABEL_KEYS`] order, and a device with everything has them all.
#[test]
fn label_keys_are_the_ones_labels_gives() {
    let device = Device {
        disk: Some("rbd1".into()),
        rotational: Some(false),
        model: Some("m".into()),
        dm_name: Some("d".into()),
        osd: Some(OsdUse {
            ids: [1].into(),
            roles: [crate::attribution::ceph::Role::Wal].into(),
        }),
        rbd: Some(RbdImage {
            pool: "p".into(),
            image: "i".into(),
            namespace: Some("n".into()),
            snapshot: Some("s".into()),
        }),
        ..Device::unknown("251:17".into())
    };
    let keys: Vec<&str> = device.labels().iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, LABEL_KEYS);
}

#[test]
fn rbd_devices_carry_pool_and_image() {
    let t = Tree::new();
    for (id, ns, snap) in [(0, "", "-"), (1, "tenant-a", "nightly")] {
        let disk = format!("rbd/{id}/block/rbd{id}");
        t.disk(&disk, &format!("251:{}", id * 16), "0");
        t.parent(&disk, "bus/rbd");
        let entry = format!("sys/devices/rbd/{id}");
        t.link(
            &format!("sys/bus/rbd/devices/{id}"),
            format!("../../../devices/rbd/{id}"),
        );
        for (file, text) in [
            ("pool", "volumes"),
            ("name", "volume-8d2e"),
            ("pool_ns", ns),
            ("snap", snap),
            ("major", "251"),
            ("minor", &(id * 16).to_string()),
        ] {
            t.write(&format!("{entry}/{file}"), &format!("{text}\n"));
        }
    }
    t.partition("rbd/1/block/rbd1", "rbd1p1", "251:17");
    // A stale entry for another major, and an unmapped rbd2 named like one.
    t.disk("rbd/2/block/rbd2", "250:32", "0");
    t.write("sys/bus/rbd/devices/2/major", "251\n");
    t.write("sys/bus/rbd/devices/2/pool", "volumes\n");
    t.write("sys/bus/rbd/devices/2/name", "other\n");
    t.disk("virtual/block/rbd3", "251:48", "0");

    let mut names = DeviceNames::new(t.roots());
    assert_eq!(
        names.lookup(dev(251, 0)).labels(),
        labels(&[
            ("device.type", "rbd"),
            ("device.rotational", "false"),
            ("rbd.pool", "volumes"),
            ("rbd.image", "volume-8d2e"),
        ])
    );
    assert_eq!(
        names.lookup(dev(251, 17)).labels(),
        labels(&[
            ("device.type", "rbd"),
            ("device.rotational", "false"),
            ("device.disk", "rbd1"),
            ("rbd.pool", "volumes"),
            ("rbd.image", "volume-8d2e"),
            ("rbd.namespace", "tenant-a"),
            ("rbd.snapshot", "nightly"),
        ])
    );
    for number in [dev(250, 32), dev(251, 48)] {
        assert_eq!(names.lookup(number).kind, Kind::Rbd);
        assert_eq!(names.lookup(number).rbd, None);
    }
}

#[test]
fn hostile_values_are_bounded_and_broken_trees_named_by_number() {
    let t = storage_node();
    let model = format!("\u{1b}[31m{}", "x".repeat(300));
    t.write(
        "sys/devices/pci0000:00/0000:00:04.0/nvme/nvme0/model",
        &model,
    );
    // A sysfs link loop and a dangling one.
    t.link("sys/dev/block/8:48", "8:48");
    t.link("sys/dev/block/8:64", "../../devices/gone");
    let mut names = DeviceNames::new(t.roots());
    let model = names.lookup(dev(259, 0)).labels()[2].1.clone();
    assert_eq!(model.chars().count(), crate::attribution::MAX_LABEL_CHARS);
    assert!(model.starts_with("\\u{1b}[31mxxx"), "{model}");
    for (number, text) in [(dev(8, 48), "8:48"), (dev(8, 64), "8:64")] {
        let (device, log) = with_debug_log(|| names.lookup(number).clone());
        assert_eq!(device, Device::unknown(text.into()));
        assert!(log.contains("block device not in sysfs"), "{log}");
    }
}

#[test]
fn an_identity_is_kept_for_the_refresh_period_then_read_again() {
    let t = storage_node();
    let mut names = DeviceNames::new(t.roots());
    assert_eq!(names.lookup(dev(8, 16)).rotational, Some(true));
    std::fs::write(t.path(&format!("sys/devices/{SDB}/queue/rotational")), "0").unwrap();
    names.forget();
    assert_eq!(names.lookup(dev(8, 16)).rotational, Some(true), "kept");
    let mut names = names.refreshed_every(Duration::ZERO);
    names.forget();
    assert_eq!(names.lookup(dev(8, 16)).rotational, Some(false));
}

/// A disk removed and another added under its number is a new identity at the next
/// interval, however recent the cached one.
#[test]
fn a_device_number_taken_by_another_disk_is_identified_again() {
    let t = storage_node();
    let mut names = DeviceNames::new(t.roots());
    let number = dev(8, 16);
    assert_eq!(names.lookup(number).name, "sdb");
    assert!(names.is_present(number));
    std::fs::remove_file(t.path("sys/dev/block/8:16")).unwrap();
    assert_eq!(names.lookup(number).name, "sdb", "the same interval");
    names.forget();
    assert!(!names.is_present(number));
    assert_eq!(names.lookup(number).name, "8:16", "removed");
    t.disk("virtual/block/loop9", "8:16", "0");
    names.forget();
    assert!(names.is_present(number));
    let device = names.lookup(number);
    assert_eq!((device.name.as_str(), device.kind), ("loop9", Kind::Loop));
    assert_eq!(device.rotational, Some(false));
}

/// The machine the tests run on: virtio, loop and zram disks are told apart (skipped
/// where `/sys` has no block devices, as in some containers).
#[test]
fn this_machines_disks() {
    let Ok(entries) = std::fs::read_dir("/sys/class/block") else {
        eprintln!("skipped: no /sys/class/block here");
        return;
    };
    let mut names = DeviceNames::new(Roots {
        sys: "/sys".into(),
        dev: "/dev".into(),
        ceph: "/var/lib/ceph".into(),
    });
    let mut checked = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let expected = kind_by_name(&name);
        if !matches!(expected, Kind::Virtio | Kind::Loop | Kind::Zram) {
            continue;
        }
        // Devices come and go (other tests make loop devices): skip those that went.
        let Some(number) = sysfs::number_of(&entry.path()) else {
            continue;
        };
        let device = names.lookup(number);
        if device.name != name {
            continue;
        }
        let disk_kind = device.disk.as_deref().map_or(expected, kind_by_name);
        assert_eq!(device.kind, disk_kind, "{name}: {device:?}");
        assert!(
            device
                .labels()
                .contains(&("device.type", disk_kind.as_str().to_owned()))
        );
        checked += 1;
    }
    if checked == 0 {
        eprintln!("skipped: no virtio, loop or zram disk here");
    }
}
